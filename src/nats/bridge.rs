//! The bridge's task: connect (with back-off), create or check the stream, then publish a
//! subscription's events from the stored position, pipelined up to `max_in_flight`, the
//! position advancing only past events JetStream has acknowledged.
//!
//! A run is one subscription after the acknowledged position. Any failure (a refused or
//! unacknowledged publish, a lost connection) ends the run: what was in flight is dropped,
//! and after a back-off the next run starts again after the last acknowledged position.
//! Events published twice this way carry the same `Nats-Msg-Id`, and JetStream drops them
//! within its duplicate window.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::Publish, stream};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use rand::Rng;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::events::envelope;
use crate::feed::subscription::{self, Ended, FollowFilter, Invalid};
use crate::metrics::{
    NATS_CONNECTED, NATS_EVENTS_PUBLISHED_TOTAL, NATS_LAG_RECORDS, NATS_PUBLISH_FAILED_TOTAL,
};
use crate::protocol::{self, Frame, PushBatch, PushItem};
use crate::webhooks::sign::backoff;

use super::{subject, NatsConfig, Status, QUEUE_FRAMES};

/// The acknowledged position is stored at most this often while events flow (and always at
/// shutdown): each store is a durable log write; a crash republishes at most this much,
/// which the duplicate window drops.
const STORE_INTERVAL: Duration = Duration::from_millis(200);
/// Longest wait for a TCP connection to NATS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A filter the catalog refuses (an unknown channel) is checked again this often.
const REPLAN_INTERVAL: Duration = Duration::from_secs(5);

/// The bridge's status, shared with [`super::Nats::status`].
#[derive(Default)]
pub(super) struct State {
    status: AtomicU8,
}

impl State {
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            0 => Status::Connecting,
            1 => Status::Publishing,
            2 => Status::Retrying,
            _ => Status::Stopped,
        }
    }

    fn set(&self, s: Status) {
        let v = match s {
            Status::Connecting => 0,
            Status::Publishing => 1,
            Status::Retrying => 2,
            Status::Stopped => 3,
        };
        self.status.store(v, Ordering::Release);
    }
}

/// Why a run stopped.
enum Halt {
    /// Shutdown, or the engine stopped.
    Stopping,
    /// Something failed; retry after a back-off.
    Failed(String),
}

/// One entry of the pipeline, completed in order.
enum Done {
    /// JetStream's answer to a publish.
    Acked(Result<jetstream::publish::PublishAck, String>),
    /// Every event up to this sequence number was published before it.
    Reached(u64),
}

/// What woke the publishing loop.
enum Step {
    Stop,
    Done(Done),
    Frame(Option<Vec<u8>>),
    Store,
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

pub(super) struct Task {
    pub engine: Arc<Engine>,
    pub state: Arc<State>,
    pub stop: watch::Receiver<bool>,
    pub cfg: NatsConfig,
}

impl Task {
    pub async fn run(mut self) {
        let stream = self.cfg.stream.clone();
        metrics::counter!(NATS_EVENTS_PUBLISHED_TOTAL, "stream" => stream.clone()).increment(0);
        metrics::counter!(NATS_PUBLISH_FAILED_TOTAL, "stream" => stream.clone()).increment(0);
        metrics::gauge!(NATS_CONNECTED, "stream" => stream.clone()).set(0.0);
        let mut position = match self.engine.feed_position(&self.cfg.position_name()) {
            Some(p) => p,
            None => {
                // A new bridge publishes what happens from now on.
                let head = self.engine.feed().head();
                self.store(head).await;
                tracing::info!(stream = %stream, "NATS bridge added: publishing events after seq {head}");
                head
            }
        };
        let mut stored = position;
        let mut attempt = 0u32;
        let mut client = None;
        // The stream is checked again after any failure: a NATS server that came back
        // without its store, or an operator's change, shows there.
        let mut stream_checked = true;
        while !*self.stop.borrow() {
            let outcome = match &client {
                Some(c) if !stream_checked => {
                    let js = self.context(c);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        r = self.ensure_stream(&js) => match r {
                            Ok(()) => {
                                stream_checked = true;
                                continue;
                            }
                            Err(m) => Err(Halt::Failed(m)),
                        },
                        _ = stop.wait_for(|s| *s) => Err(Halt::Stopping),
                    }
                }
                Some(c) => {
                    self.publish_run(c, &mut position, &mut stored, &mut attempt)
                        .await
                }
                None => match self.connect().await {
                    Ok(c) => {
                        client = Some(c);
                        continue;
                    }
                    Err(h) => Err(h),
                },
            };
            match outcome {
                Ok(()) => {} // the subscription lagged: again from `position`
                Err(Halt::Stopping) => break,
                Err(Halt::Failed(why)) => {
                    stream_checked = false;
                    metrics::counter!(NATS_PUBLISH_FAILED_TOTAL, "stream" => stream.clone())
                        .increment(1);
                    attempt = attempt.saturating_add(1);
                    let wait = backoff(
                        attempt,
                        self.cfg.backoff_initial,
                        self.cfg.backoff_max,
                        rand::thread_rng().gen::<f64>(),
                    );
                    tracing::warn!(stream = %stream, attempt, "NATS bridge: {why}; retrying in {wait:?} after seq {position}");
                    self.state.set(Status::Retrying);
                    self.report_lag(position);
                    if self.sleep(wait).await.is_err() {
                        break;
                    }
                }
            }
        }
        if position > stored {
            self.store(position).await;
        }
        if let Some(c) = client {
            // Nothing unacknowledged is left to flush; close the connection cleanly.
            let _ = tokio::time::timeout(self.cfg.ack_timeout, c.drain()).await;
        }
        metrics::gauge!(NATS_CONNECTED, "stream" => stream).set(0.0);
        self.state.set(Status::Stopped);
    }

    /// Connects and creates or checks the stream.
    async fn connect(&mut self) -> Result<async_nats::Client, Halt> {
        self.state.set(Status::Connecting);
        let (lo, hi) = (self.cfg.backoff_initial, self.cfg.backoff_max);
        let label = self.cfg.stream.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .name(concat!("omnistock/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(CONNECT_TIMEOUT)
            // After the first connection, async-nats reconnects by itself; with our bounds.
            .reconnect_delay_callback(move |n| {
                backoff(
                    u32::try_from(n).unwrap_or(u32::MAX).max(1),
                    lo,
                    hi,
                    rand::thread_rng().gen::<f64>(),
                )
            })
            .event_callback(move |e| {
                let label = label.clone();
                async move {
                    tracing::info!(stream = %label, "NATS connection: {e}");
                    match e {
                        async_nats::Event::Connected => {
                            metrics::gauge!(NATS_CONNECTED, "stream" => label).set(1.0);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            metrics::gauge!(NATS_CONNECTED, "stream" => label).set(0.0);
                        }
                        _ => {}
                    }
                }
            });
        if let Some(t) = &self.cfg.token {
            opts = opts.token(t.clone());
        }
        if let Some(p) = &self.cfg.credentials_file {
            opts = opts.credentials_file(p).await.map_err(|e| {
                Halt::Failed(format!("reading credentials_file {}: {e}", p.display()))
            })?;
        }
        let mut stop = self.stop.clone();
        let client = tokio::select! {
            c = opts.connect(self.cfg.url.as_str()) => c
                .map_err(|e| Halt::Failed(format!("connecting to {}: {e}", self.cfg.url)))?,
            _ = stop.wait_for(|s| *s) => return Err(Halt::Stopping),
        };
        let js = self.context(&client);
        tokio::select! {
            r = self.ensure_stream(&js) => r.map_err(Halt::Failed)?,
            _ = stop.wait_for(|s| *s) => return Err(Halt::Stopping),
        }
        metrics::gauge!(NATS_CONNECTED, "stream" => self.cfg.stream.clone()).set(1.0);
        tracing::info!(stream = %self.cfg.stream, url = %self.cfg.url, "NATS bridge connected");
        Ok(client)
    }

    fn context(&self, client: &async_nats::Client) -> jetstream::Context {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.cfg.ack_timeout);
        js
    }

    /// Creates the stream, or checks that an existing one takes the bridge's subjects. An
    /// existing stream is never changed (its other settings are the operator's).
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), String> {
        let name = &self.cfg.stream;
        let wanted = self.cfg.stream_subjects();
        match js.get_stream(name).await {
            Ok(mut s) => {
                let info = s
                    .info()
                    .await
                    .map_err(|e| format!("reading stream {name}: {e}"))?;
                let subjects = &info.config.subjects;
                if !subjects.iter().any(|x| *x == wanted || x == ">") {
                    return Err(format!(
                        "stream {name} exists with subjects {subjects:?}, which do not include \
                         {wanted:?}; omnistock does not change an existing stream: add the \
                         subject to it, or set nats.stream to another name"
                    ));
                }
                if info.config.duplicate_window < self.cfg.duplicate_window {
                    tracing::warn!(stream = %name, "existing stream's duplicate_window {:?} is shorter than nats.duplicate_window_ms {:?}: events republished after a longer outage are stored twice (same Nats-Msg-Id)", info.config.duplicate_window, self.cfg.duplicate_window);
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                js.create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![wanted],
                    storage: stream::StorageType::File,
                    retention: stream::RetentionPolicy::Limits,
                    discard: stream::DiscardPolicy::Old,
                    duplicate_window: self.cfg.duplicate_window,
                    max_bytes: i64::try_from(self.cfg.max_bytes).unwrap_or(i64::MAX),
                    description: Some("omnistock events (docs/adapters.md)".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating stream {name}: {e}"))?;
                tracing::info!(stream = %name, "NATS stream created");
                Ok(())
            }
            Err(e) => Err(format!("looking up stream {name}: {e}")),
        }
    }

    /// One subscription after `position`, published until it ends or fails.
    async fn publish_run(
        &mut self,
        client: &async_nats::Client,
        position: &mut u64,
        stored: &mut u64,
        attempt: &mut u32,
    ) -> Result<(), Halt> {
        let js = self.context(client);
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
                tracing::warn!(stream = %self.cfg.stream, "NATS bridge filter refused: {m}; checking again in {REPLAN_INTERVAL:?}");
                return self.sleep(REPLAN_INTERVAL).await;
            }
        };
        let rx = &mut follower.frames;
        self.state.set(Status::Publishing);
        let label = self.cfg.stream.clone();
        let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut items: VecDeque<PushItem> = VecDeque::new();
        let mut last_id: Option<String> = None;
        let mut last_store = tokio::time::Instant::now();
        let mut stop = self.stop.clone();
        let mut ended = false;
        loop {
            while inflight.len() < self.cfg.max_in_flight {
                let Some(item) = items.pop_front() else { break };
                if let Some(p) = self.publish(&js, &item, &mut last_id).await? {
                    inflight.push_back(p);
                }
                if let PushItem::SnapshotEnd { seq } = item {
                    // A snapshot's end is a position too, once everything before it is
                    // acknowledged.
                    inflight.push_back(Box::pin(async move { Done::Reached(seq) }));
                }
            }
            if ended && items.is_empty() && inflight.is_empty() {
                break;
            }
            let room = items.is_empty() && inflight.len() < self.cfg.max_in_flight && !ended;
            let step = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => Step::Stop,
                Some(done) = inflight.next(), if !inflight.is_empty() => Step::Done(done),
                frame = rx.recv(), if room => Step::Frame(frame),
                _ = tokio::time::sleep(STORE_INTERVAL), if *position > *stored => Step::Store,
            };
            match step {
                Step::Stop => {
                    // Give what is in flight its acknowledgement, then stop.
                    let drained = tokio::time::timeout(self.cfg.ack_timeout, async {
                        while let Some(d) = inflight.next().await {
                            match d {
                                Done::Acked(Ok(_)) => {}
                                Done::Acked(Err(_)) => break,
                                Done::Reached(seq) => *position = seq.max(*position),
                            }
                        }
                    });
                    let _ = drained.await;
                    return Err(Halt::Stopping);
                }
                Step::Done(Done::Acked(Ok(ack))) => {
                    if !ack.duplicate {
                        metrics::counter!(NATS_EVENTS_PUBLISHED_TOTAL, "stream" => label.clone())
                            .increment(1);
                    }
                    *attempt = 0;
                }
                Step::Done(Done::Acked(Err(e))) => return Err(Halt::Failed(e)),
                Step::Done(Done::Reached(seq)) => {
                    *position = seq.max(*position);
                    if *position > *stored && last_store.elapsed() >= STORE_INTERVAL {
                        self.store(*position).await;
                        *stored = *position;
                        last_store = tokio::time::Instant::now();
                    }
                    self.report_lag(*position);
                }
                Step::Frame(Some(f)) => items.extend(decode(&f)),
                Step::Frame(None) => ended = true,
                Step::Store => {
                    self.store(*position).await;
                    *stored = *position;
                    last_store = tokio::time::Instant::now();
                }
            }
        }
        match (&mut follower.task).await {
            Ok(Ended::EngineGone(e)) => {
                tracing::warn!(stream = %self.cfg.stream, "NATS bridge stopped: {e}");
                Err(Halt::Stopping)
            }
            Ok(Ended::Stopped) | Err(_) => Err(Halt::Stopping),
            Ok(Ended::Lagged { .. }) => Ok(()),
        }
    }

    /// Sends one item: an event is published (its acknowledgement awaited in the
    /// pipeline), a position becomes a marker; bookkeeping items are dropped.
    async fn publish(
        &self,
        js: &jetstream::Context,
        item: &PushItem,
        last_id: &mut Option<String>,
    ) -> Result<Option<Pending>, Halt> {
        if let PushItem::Position { seq } = item {
            let seq = *seq;
            return Ok(Some(Box::pin(async move { Done::Reached(seq) })));
        }
        let Some(env) = envelope(item, &self.cfg.source) else {
            return Ok(None);
        };
        let channel = match item {
            PushItem::Atp(a) => Some(a.channel.as_str()),
            PushItem::Snapshot(s) => Some(s.channel.as_str()),
            PushItem::Stockout(s) => Some(s.channel.as_str()),
            _ => None,
        };
        let subject = subject(&self.cfg.subject_prefix, channel, &env.event_type);
        let json = serde_json::to_vec(&env)
            .map_err(|e| Halt::Failed(format!("encoding event {}: {e}", env.id)))?;
        let mut p = Publish::build()
            .payload(Bytes::from(json))
            .message_id(&env.id)
            .header("Content-Type", crate::events::DATA_CONTENT_TYPE);
        if let Some(prev) = last_id.as_deref() {
            p = p.expected_last_message_id(prev);
        }
        let ack = js
            .send_publish(subject, p)
            .await
            .map_err(|e| Halt::Failed(format!("publishing {}: {e}", env.id)))?;
        let id = env.id;
        *last_id = Some(id.clone());
        Ok(Some(Box::pin(async move {
            match ack.await {
                Ok(a) => Done::Acked(Ok(a)),
                Err(e) => Done::Acked(Err(format!("event {id} not acknowledged: {e}"))),
            }
        })))
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
            // The position stays behind: events after it are published again (the
            // duplicate window drops them).
            tracing::warn!(stream = %self.cfg.stream, "storing the NATS position {seq} failed: {e:?}");
        }
    }

    fn report_lag(&self, position: u64) {
        let lag = self.engine.feed().head().saturating_sub(position);
        metrics::gauge!(NATS_LAG_RECORDS, "stream" => self.cfg.stream.clone()).set(lag as f64);
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn decode(bytes: &[u8]) -> Vec<PushItem> {
    match Frame::parse(bytes, u32::MAX as usize) {
        Ok(Some((frame, _))) => match protocol::decode_payload::<PushBatch>(&frame.payload) {
            Ok(b) => b.items,
            Err(e) => {
                tracing::error!("undecodable push frame: {e}");
                Vec::new()
            }
        },
        _ => Vec::new(),
    }
}
