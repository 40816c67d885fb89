//! One endpoint's delivery task: the test event (once, when no position is stored), then a
//! subscription from the stored position into a bounded queue, its events batched and
//! POSTed, each batch retried with back-off until the receiver answers 2xx or
//! `max_attempts` consecutive attempts failed (dead-lettered: paused, position kept, until
//! [`State::resume`] or a restart).
//!
//! The position moves only on a `Position` / `SnapshotEnd` item whose preceding events were
//! all delivered, and is stored with `Engine::ack_position` (durable before it returns), so
//! after a crash everything after the stored position is sent again with the same ids.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::events::envelope;
use crate::feed::subscription::{self, Ended, FollowFilter, Invalid};
use crate::metrics::{
    WEBHOOK_DEAD_LETTERED, WEBHOOK_EVENTS_DELIVERED_TOTAL, WEBHOOK_LAG_RECORDS,
    WEBHOOK_REQUESTS_FAILED_TOTAL,
};
use crate::protocol::{self, Frame, PushBatch, PushItem};

use super::sign::{backoff, signature, SIGNATURE_HEADER};
use super::{EndpointConfig, Status, QUEUE_FRAMES, TEST_EVENT_TYPE};

/// The HTTP client every endpoint shares (connection pools per host).
pub(super) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The part of an answer's body read (then the connection is not reused).
const MAX_ANSWER_BODY_BYTES: usize = 64 * 1024;
/// Time given to read an answer's body after its head.
const ANSWER_BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// An idle pooled connection is closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// A filter the catalog refuses (an unknown channel) is checked again this often.
const REPLAN_INTERVAL: Duration = Duration::from_secs(5);
/// The lag gauge of a dead-lettered endpoint is refreshed this often.
const LAG_REFRESH: Duration = Duration::from_secs(1);
/// An idle endpoint's position (moved by `Position` items only) is stored at most this often.
const IDLE_STORE_INTERVAL: Duration = Duration::from_secs(1);

/// HTTPS trusting the webpki (Mozilla) roots plus `extra_roots` (an endpoint's `ca_file`;
/// no system trust store is read), or plain HTTP (which the configuration allows only to
/// loopback).
pub(super) fn client(extra_roots: &[rustls::pki_types::CertificateDer<'static>]) -> HttpClient {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Checked when the configuration was read (`super::read_ca_file`).
    let (_added, _ignored) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("invariant: ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(https)
}

/// An endpoint's status, shared with [`super::Webhooks::status`].
pub(super) struct State {
    pub name: String,
    status: AtomicU8,
    /// Wakes a dead-lettered endpoint ([`State::resume`]).
    resume: tokio::sync::Notify,
}

impl State {
    pub fn new(name: String) -> State {
        State {
            name,
            status: AtomicU8::new(0),
            resume: tokio::sync::Notify::new(),
        }
    }

    /// Resumes the endpoint if it is dead-lettered; whether it was.
    pub fn resume(&self) -> bool {
        if self.status() != Status::DeadLettered {
            return false;
        }
        // A permit is kept if the task is between setting the status and waiting.
        self.resume.notify_one();
        true
    }

    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            0 => Status::Running,
            1 => Status::Retrying,
            2 => Status::DeadLettered,
            _ => Status::Stopped,
        }
    }

    fn set(&self, s: Status) {
        let v = match s {
            Status::Running => 0,
            Status::Retrying => 1,
            Status::DeadLettered => 2,
            Status::Stopped => 3,
        };
        self.status.store(v, Ordering::Release);
    }
}

/// Why a delivery loop stopped.
enum Halt {
    /// Shutdown.
    Stopping,
    /// `max_attempts` consecutive failures.
    DeadLettered,
}

pub(super) struct Task {
    pub engine: Arc<Engine>,
    pub client: HttpClient,
    pub source: String,
    pub state: Arc<State>,
    pub stop: watch::Receiver<bool>,
    pub cfg: EndpointConfig,
}

impl Task {
    pub async fn run(mut self) {
        let label = self.cfg.name.clone();
        metrics::gauge!(WEBHOOK_DEAD_LETTERED, "endpoint" => label.clone()).set(0.0);
        metrics::counter!(WEBHOOK_EVENTS_DELIVERED_TOTAL, "endpoint" => label.clone()).increment(0);
        metrics::counter!(WEBHOOK_REQUESTS_FAILED_TOTAL, "endpoint" => label.clone()).increment(0);
        // A resumed dead letter starts again from the kept position.
        while let Halt::DeadLettered = self.deliver_all().await {
            if !self.dead_lettered().await {
                break;
            }
            tracing::info!(endpoint = %self.cfg.name, "webhook resumed");
            metrics::gauge!(WEBHOOK_DEAD_LETTERED, "endpoint" => label.clone()).set(0.0);
            self.state.set(Status::Running);
        }
        self.state.set(Status::Stopped);
    }

    /// Test event (new endpoint), then subscriptions from the stored position until
    /// shutdown or a dead letter.
    async fn deliver_all(&mut self) -> Halt {
        let name = self.cfg.position_name();
        let mut position = match self.engine.feed_position(&name) {
            Some(p) => p,
            None => {
                let head = self.engine.feed().head();
                let body = test_event(&self.source, &self.cfg.name, head, now_ms());
                if let Err(h) = self.post_until_done(Bytes::from(body), 1).await {
                    return h;
                }
                tracing::info!(endpoint = %self.cfg.name, "webhook added: test event delivered");
                self.store(head).await;
                head
            }
        };
        loop {
            match self.follow(&mut position).await {
                Ok(()) => {} // the subscription ended (lagged): again from `position`
                Err(h) => return h,
            }
            if *self.stop.borrow() {
                return Halt::Stopping;
            }
        }
    }

    /// One subscription after `position`, until it ends; `position` follows deliveries.
    async fn follow(&mut self, position: &mut u64) -> Result<(), Halt> {
        let filter = FollowFilter {
            channels: self.cfg.channels.clone(),
            skus: self.cfg.skus.clone(),
            prefix: self.cfg.prefix.clone(),
            kinds: self.cfg.kinds,
            coalesce_ms: self.cfg.coalesce_ms,
        };
        // Ends the subscription however this returns (its stop signal is set on drop).
        let mut follower = match subscription::follow(
            self.engine.clone(),
            *position,
            &filter,
            QUEUE_FRAMES,
        ) {
            Ok(f) => f,
            Err(Invalid(m)) => {
                tracing::warn!(endpoint = %self.cfg.name, "webhook filter refused: {m}; checking again in {REPLAN_INTERVAL:?}");
                return self.sleep(REPLAN_INTERVAL).await;
            }
        };
        let rx = &mut follower.frames;
        let mut batch = Batch::default();
        let mut last_store = tokio::time::Instant::now();
        let mut stop = self.stop.clone();
        loop {
            let frame = tokio::select! {
                f = rx.recv() => f,
                _ = stop.wait_for(|s| *s) => return Err(Halt::Stopping),
            };
            let Some(frame) = frame else { break };
            for item in decode(&frame) {
                match item {
                    PushItem::Position { seq } | PushItem::SnapshotEnd { seq } => {
                        if let PushItem::SnapshotEnd { .. } = item {
                            self.add(&mut batch, &item).await?;
                        }
                        let delivered = !batch.is_empty();
                        self.flush(&mut batch).await?;
                        if seq > *position {
                            *position = seq;
                            if delivered || last_store.elapsed() >= IDLE_STORE_INTERVAL {
                                self.store(seq).await;
                                last_store = tokio::time::Instant::now();
                            }
                        }
                        self.report_lag(*position);
                    }
                    PushItem::Lagged { .. } => {}
                    other => self.add(&mut batch, &other).await?,
                }
            }
        }
        self.flush(&mut batch).await?;
        match (&mut follower.task).await {
            Ok(Ended::EngineGone(e)) => {
                tracing::warn!(endpoint = %self.cfg.name, "webhook stopped: {e}");
                Err(Halt::Stopping)
            }
            Ok(Ended::Stopped) | Err(_) => Err(Halt::Stopping),
            Ok(Ended::Lagged { .. }) => Ok(()),
        }
    }

    /// Adds one item's event to the batch, sending the batch first when it would overflow.
    async fn add(&mut self, batch: &mut Batch, item: &PushItem) -> Result<(), Halt> {
        let Some(env) = envelope(item, &self.source) else {
            return Ok(());
        };
        let json = match serde_json::to_vec(&env) {
            Ok(j) => j,
            Err(e) => {
                // Serializing plain structs of strings and numbers cannot fail; if it ever
                // did, skipping silently would lose an event, so say so loudly.
                tracing::error!(endpoint = %self.cfg.name, id = %env.id, "unencodable event skipped: {e}");
                return Ok(());
            }
        };
        if !batch.is_empty()
            && (batch.count >= self.cfg.max_batch_events
                || batch.body.len() + json.len() + 2 > self.cfg.max_batch_bytes)
        {
            self.flush(batch).await?;
        }
        batch.push(&json);
        Ok(())
    }

    async fn flush(&mut self, batch: &mut Batch) -> Result<(), Halt> {
        if batch.is_empty() {
            return Ok(());
        }
        let (body, n) = batch.take();
        self.post_until_done(body, n).await
    }

    /// POSTs `body` until a 2xx, waiting between attempts; dead-letters after
    /// `max_attempts` consecutive failures.
    async fn post_until_done(&mut self, body: Bytes, events: usize) -> Result<(), Halt> {
        let label = self.cfg.name.clone();
        let mut stop = self.stop.clone();
        let mut attempt = 1u32;
        loop {
            let outcome = tokio::select! {
                r = self.post(body.clone(), attempt) => r,
                _ = stop.wait_for(|s| *s) => return Err(Halt::Stopping),
            };
            match outcome {
                Ok(()) => {
                    metrics::counter!(WEBHOOK_EVENTS_DELIVERED_TOTAL, "endpoint" => label)
                        .increment(events as u64);
                    self.state.set(Status::Running);
                    return Ok(());
                }
                Err(why) => {
                    metrics::counter!(WEBHOOK_REQUESTS_FAILED_TOTAL, "endpoint" => label.clone())
                        .increment(1);
                    if attempt >= self.cfg.max_attempts {
                        tracing::error!(endpoint = %self.cfg.name, attempts = attempt,
                            "webhook dead-lettered after {attempt} consecutive failures (last: {why}); \
                             its position is kept: restart omnistock to resume");
                        return Err(Halt::DeadLettered);
                    }
                    let wait = backoff(
                        attempt,
                        self.cfg.backoff_initial,
                        self.cfg.backoff_max,
                        rand::thread_rng().gen::<f64>(),
                    );
                    tracing::warn!(endpoint = %self.cfg.name, attempt, "webhook delivery failed: {why}; retrying in {wait:?}");
                    self.state.set(Status::Retrying);
                    let stored = self.engine.feed_position(&self.cfg.position_name());
                    self.report_lag(stored.unwrap_or(0));
                    self.sleep(wait).await?;
                    attempt += 1;
                }
            }
        }
    }

    /// One request: 2xx is delivered, anything else (status, timeout, connection) a failure.
    async fn post(&self, body: Bytes, attempt: u32) -> Result<(), String> {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let req = hyper::Request::post(self.cfg.url.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("omnistock/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, signature(&self.cfg.secret, t, &body))
            .header("omnistock-attempt", attempt.to_string())
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        let resp =
            match tokio::time::timeout(self.cfg.request_timeout, self.client.request(req)).await {
                Err(_) => return Err(format!("no answer within {:?}", self.cfg.request_timeout)),
                Ok(Err(e)) => return Err(format!("request failed: {e}")),
                Ok(Ok(resp)) => resp,
            };
        let status = resp.status();
        // Read (a bounded part of) the answer's body so the connection can go back to the
        // pool; what it says does not matter, and failing to read it changes nothing.
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BODY_BYTES);
        let _ = tokio::time::timeout(ANSWER_BODY_TIMEOUT, body.collect()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }

    async fn sleep(&mut self, d: Duration) -> Result<(), Halt> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.stop.wait_for(|s| *s) => Err(Halt::Stopping),
        }
    }

    async fn store(&self, seq: u64) {
        if let Err(e) = self
            .engine
            .ack_position(&self.cfg.position_name(), seq)
            .await
        {
            // The position stays behind: events after it are sent again (at least once).
            tracing::warn!(endpoint = %self.cfg.name, "storing the webhook position {seq} failed: {e:?}");
        }
    }

    fn report_lag(&self, position: u64) {
        let lag = self.engine.feed().head().saturating_sub(position);
        metrics::gauge!(WEBHOOK_LAG_RECORDS, "endpoint" => self.cfg.name.clone()).set(lag as f64);
    }

    /// Paused: the gauge says so and the lag keeps growing visibly, until resumed (true) or
    /// shutdown (false).
    async fn dead_lettered(&mut self) -> bool {
        self.state.set(Status::DeadLettered);
        metrics::gauge!(WEBHOOK_DEAD_LETTERED, "endpoint" => self.cfg.name.clone()).set(1.0);
        let position = self
            .engine
            .feed_position(&self.cfg.position_name())
            .unwrap_or(0);
        let state = self.state.clone();
        loop {
            self.report_lag(position);
            tokio::select! {
                _ = state.resume.notified() => return true,
                r = self.sleep(LAG_REFRESH) => if r.is_err() { return false },
            }
        }
    }
}

/// Events collected for one request: a JSON array built as they come.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    count: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn push(&mut self, json: &[u8]) {
        self.body.push(if self.count == 0 { b'[' } else { b',' });
        self.body.extend_from_slice(json);
        self.count += 1;
    }

    /// The array (closed) and its event count; the batch is empty after.
    fn take(&mut self) -> (Bytes, usize) {
        self.body.push(b']');
        let n = std::mem::take(&mut self.count);
        (Bytes::from(std::mem::take(&mut self.body)), n)
    }
}

fn decode(bytes: &[u8]) -> Vec<PushItem> {
    match Frame::parse(bytes, u32::MAX as usize) {
        Ok(Some((frame, _))) => match protocol::decode_payload::<PushBatch>(&frame.payload) {
            Ok(b) => b.items,
            Err(e) => {
                // The frame came from our own encoder: this is a bug, not a peer's fault.
                tracing::error!("undecodable push frame: {e}");
                Vec::new()
            }
        },
        _ => Vec::new(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The body of the test event sent when an endpoint is added: an array of one envelope of
/// type [`TEST_EVENT_TYPE`] with the same attributes as every event (docs/webhooks.md).
pub(super) fn test_event(source: &str, endpoint: &str, head: u64, now_ms: u64) -> Vec<u8> {
    let v = serde_json::json!([{
        "specversion": crate::events::SPEC_VERSION,
        "omnistockversion": crate::events::EVENT_VERSION,
        "id": format!("{head}:webhook_test:{endpoint}"),
        "source": source,
        "type": TEST_EVENT_TYPE,
        "time": crate::events::rfc3339_ms(now_ms),
        "datacontenttype": crate::events::DATA_CONTENT_TYPE,
        "seq": head,
        "data": {
            "endpoint": endpoint,
            "message": "omnistock will deliver events after this seq to this endpoint",
        },
    }]);
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_json_array_of_its_events() {
        let mut b = Batch::default();
        assert!(b.is_empty());
        b.push(br#"{"id":"1:a"}"#);
        b.push(br#"{"id":"2:b"}"#);
        let (body, n) = b.take();
        assert_eq!(n, 2);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[1]["id"], "2:b");
        assert!(b.is_empty());
        b.push(b"{}");
        assert_eq!(&b.take().0[..], b"[{}]");
    }

    #[test]
    fn the_test_event_is_an_envelope() {
        let body = test_event("omnistock://h:1", "shop", 42, 0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["type"], TEST_EVENT_TYPE);
        assert_eq!(v[0]["id"], "42:webhook_test:shop");
        assert_eq!(v[0]["seq"], 42);
        assert_eq!(v[0]["time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_test_event_is_valid_against_the_event_schema() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/events.schema.json"
        ))
        .expect("docs/events.schema.json");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema compiles");
        let body = test_event("omnistock://h:1", "shop", 42, 1_764_633_600_000);
        let events: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let errors: Vec<String> = v.iter_errors(&events[0]).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        // The schema holds the test event to its shape: without its data it is refused.
        let mut bad = events[0].clone();
        bad["data"] = serde_json::json!({});
        assert!(!v.is_valid(&bad));
    }
}
