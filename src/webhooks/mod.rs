//! Webhooks: `omnistock serve` POSTs the feed's JSON events (docs/events.md) to configured
//! HTTP endpoints, signed, at least once, from a durable per-endpoint position
//! (docs/webhooks.md).
//!
//! Why it is built this way: an endpoint is a *named subscription* run inside the server.
//! Its filter and coalescing window are a `SUBSCRIBE` (validated by
//! `feed::subscription::plan`, streamed by `feed::subscription::run`, as SSE does), its
//! position is stored with `Engine::ack_position` under `webhook.<name>` in the log's
//! `positions` tree (the same store as `ACK`), and the position only moves once the
//! receiver has answered 2xx for everything before it. So a restart resumes from the ring
//! (or, older than the ring, from a snapshot, as `SUBSCRIBE` does), and a duplicate carries
//! the same event id because ids come from the log record.
//!
//! Limits: [`MAX_ENDPOINTS`] endpoints; per endpoint a queue of [`QUEUE_FRAMES`] push
//! frames, a batch of at most `max_batch_events` events and `max_batch_bytes` bytes, a
//! request timeout, `max_attempts` consecutive failures before the endpoint is
//! dead-lettered (paused, position kept; [`Resumer`] — SIGHUP in `serve` — or a restart
//! resumes it).

mod endpoint;
pub mod sign;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::Engine;
use crate::protocol::kinds;

/// Most endpoints one server delivers to (each holds a task, a subscription and a
/// connection pool).
pub const MAX_ENDPOINTS: usize = 64;
/// Longest endpoint name: the position is stored as `webhook.<name>`, and a subscription
/// name is at most 64 bytes.
pub const MAX_NAME_BYTES: usize = 56;
/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Shortest secret accepted (HMAC-SHA256 keys shorter than this are guessable).
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted.
pub const MAX_SECRET_BYTES: usize = 1024;
/// Push frames queued between an endpoint's subscription and its sender.
pub const QUEUE_FRAMES: usize = 16;
/// Range of `max_batch_events`.
pub const BATCH_EVENTS_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;
/// Range of `max_batch_bytes` (a single event larger than it still goes out, alone).
pub const BATCH_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=4 * 1024 * 1024;
/// Range of `max_attempts`.
pub const ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
/// Range of the request timeout, in milliseconds.
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=120_000;
/// Range of both back-off bounds, in milliseconds.
pub const BACKOFF_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=3_600_000;
/// Prefix of the name an endpoint's position is stored under (reserved: clients cannot
/// `ACK` it).
pub const POSITION_PREFIX: &str = crate::feed::subscription::RESERVED_NAME_PREFIX;
/// `type` of the event sent once when an endpoint is added.
pub const TEST_EVENT_TYPE: &str = "omnistock.webhook.test";

/// One endpoint, validated by [`EndpointConfig::validate`].
#[derive(Clone)]
pub struct EndpointConfig {
    /// 1..=56 bytes of `[A-Za-z0-9._-]`: the metric label and the position's name.
    pub name: String,
    /// `https://...`, or `http://` to a loopback host.
    pub url: String,
    /// The HMAC-SHA256 key (never logged).
    pub secret: Vec<u8>,
    /// Channel ids (empty: every channel), as `SUBSCRIBE`.
    pub channels: Vec<String>,
    /// SKU ids (empty: every SKU, or those under `prefix`), as `SUBSCRIBE`.
    pub skus: Vec<String>,
    /// Only SKUs starting with this.
    pub prefix: String,
    /// `protocol::kinds` bits.
    pub kinds: u8,
    /// 0: every change; 10..=60000: the latest ATP per SKU x channel that often.
    pub coalesce_ms: u32,
    /// Consecutive failed attempts of one batch before the endpoint is dead-lettered.
    pub max_attempts: u32,
    /// One request, connect to answer head.
    pub request_timeout: Duration,
    /// First retry delay (doubled per failure, with jitter).
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Most events per request.
    pub max_batch_events: usize,
    /// Most body bytes per request.
    pub max_batch_bytes: usize,
    /// Extra trusted roots for this endpoint's `https` URL (PEM `ca_file`: a private CA),
    /// beside the webpki (Mozilla) roots.
    pub ca_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("channels", &self.channels)
            .field("skus", &self.skus)
            .field("prefix", &self.prefix)
            .field("kinds", &self.kinds)
            .field("coalesce_ms", &self.coalesce_ms)
            .field("max_attempts", &self.max_attempts)
            .field("ca_certs", &self.ca_certs.len())
            .finish_non_exhaustive()
    }
}

impl EndpointConfig {
    /// An endpoint with the documented defaults: every change, 10 attempts, 10 s timeout,
    /// back-off from 500 ms to 5 min, batches of 100 events or 256 KiB.
    pub fn new(name: &str, url: &str, secret: &[u8]) -> EndpointConfig {
        EndpointConfig {
            name: name.into(),
            url: url.into(),
            secret: secret.to_vec(),
            channels: Vec::new(),
            skus: Vec::new(),
            prefix: String::new(),
            kinds: kinds::ALL,
            coalesce_ms: 0,
            max_attempts: 10,
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            max_batch_events: 100,
            max_batch_bytes: 256 * 1024,
            ca_certs: Vec::new(),
        }
    }

    /// Checks every field; the error names the field (`url: ...`). Channels are checked
    /// against the catalog when the endpoint starts (they may be created after start-up).
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > MAX_NAME_BYTES
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "name {n:?} must be 1..={MAX_NAME_BYTES} bytes of [A-Za-z0-9._-]"
            ));
        }
        check_url(&self.url).map_err(|m| format!("url: {m}"))?;
        if self.secret.is_empty() {
            return Err("secret: empty".into());
        }
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&self.secret.len()) {
            return Err(format!(
                "secret: {} bytes; it must be {MIN_SECRET_BYTES}..={MAX_SECRET_BYTES} \
                 (e.g. openssl rand -hex 32)",
                self.secret.len()
            ));
        }
        if self.kinds == 0 || self.kinds & !kinds::ALL != 0 {
            return Err(
                "kinds: a non-empty list of atp, thresholds, reservations, stockout, all".into(),
            );
        }
        let c = self.coalesce_ms;
        if c != 0 && !crate::feed::subscription::COALESCE_MS_RANGE.contains(&c) {
            return Err(format!("coalesce_ms: {c} must be 0 or 10..=60000"));
        }
        in_range("max_attempts", self.max_attempts, ATTEMPTS_RANGE)?;
        in_range(
            "max_batch_events",
            self.max_batch_events,
            BATCH_EVENTS_RANGE,
        )?;
        in_range("max_batch_bytes", self.max_batch_bytes, BATCH_BYTES_RANGE)?;
        in_range("timeout_ms", millis(self.request_timeout), TIMEOUT_MS_RANGE)?;
        in_range(
            "backoff_initial_ms",
            millis(self.backoff_initial),
            BACKOFF_MS_RANGE,
        )?;
        in_range("backoff_max_ms", millis(self.backoff_max), BACKOFF_MS_RANGE)?;
        if self.backoff_max < self.backoff_initial {
            return Err("backoff_max_ms: smaller than backoff_initial_ms".into());
        }
        if self.prefix.len() > crate::domain::limits::MAX_SKU_ID_BYTES {
            return Err("prefix: longer than a SKU id may be".into());
        }
        Ok(())
    }

    /// The name its position is stored under (`webhook.<name>`).
    pub fn position_name(&self) -> String {
        format!("{POSITION_PREFIX}{}", self.name)
    }
}

/// A duration in whole ms (saturating), as settings show it.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `Ok` when `v` is in `r`, else the message naming `field` and the range.
pub(crate) fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    r: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if r.contains(&v) {
        Ok(())
    } else {
        Err(format!("{field}: {v} must be {}..={}", r.start(), r.end()))
    }
}

/// Parses a comma-free list of kind names (`atp`, `thresholds`, `reservations`, `all`)
/// into `protocol::kinds` bits; an empty list is every kind.
pub fn kinds_of(names: &[String]) -> Result<u8, String> {
    if names.is_empty() {
        return Ok(kinds::ALL);
    }
    let mut k = 0;
    for n in names {
        k |= match n.as_str() {
            "atp" => kinds::ATP,
            "thresholds" => kinds::THRESHOLDS,
            "reservations" => kinds::RESERVATIONS,
            "stockout" => kinds::STOCKOUT,
            "rebalance" => kinds::REBALANCE,
            "region_stockout" => kinds::REGION_STOCKOUT,
            "all" => kinds::ALL,
            other => {
                return Err(format!(
                    "kinds: {other:?} is not atp, thresholds, reservations, stockout, \
                     rebalance, region_stockout or all"
                ))
            }
        };
    }
    Ok(k)
}

/// Checks a URL: `https://host[:port]/...`, or `http://` only to a loopback host
/// (`localhost`, 127.0.0.0/8, `[::1]`), since a plain-HTTP request carries the events in
/// clear text; no user name or password in it (the secret signs; credentials do not belong
/// in a URL that is logged).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("longer than {MAX_URL_BYTES} bytes"));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("{url:?} has no scheme (https://...)"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} has a user or password; the signature authenticates omnistock"
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "{url:?}: plain http only to a loopback host (localhost, 127.0.0.1, [::1]); use https"
        )),
        other => Err(format!("{url:?}: scheme {other:?} is not http or https")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Most certificates in one `ca_file`.
pub const MAX_CA_CERTS: usize = 100;

/// Reads a PEM file of CA certificates (`ca_file`): at least one, at most
/// [`MAX_CA_CERTS`], each one a certificate rustls can use as a trust anchor.
pub fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    if certs.len() > MAX_CA_CERTS {
        return Err(format!("{shown}: more than {MAX_CA_CERTS} certificates"));
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(certs.iter().cloned());
    if ignored > 0 {
        return Err(format!(
            "{shown}: {ignored} certificate(s) cannot be parsed"
        ));
    }
    Ok(certs)
}

/// Every endpoint of one server.
#[derive(Clone, Debug, Default)]
pub struct WebhooksConfig {
    /// The endpoints (names unique, at most [`MAX_ENDPOINTS`]).
    pub endpoints: Vec<EndpointConfig>,
    /// The `source` of every event (the HTTP endpoint's, so ids match SSE's).
    pub source: String,
}

impl WebhooksConfig {
    /// Checks every endpoint and the set (count, unique names); the error names the endpoint.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(format!(
                "{} endpoints; at most {MAX_ENDPOINTS}",
                self.endpoints.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate()
                .map_err(|m| format!("webhooks[{i}] ({:?}): {m}", e.name))?;
            if !names.insert(e.name.as_str()) {
                return Err(format!("webhooks[{i}]: name {:?} is used twice", e.name));
            }
        }
        Ok(())
    }
}

/// Running deliveries: one task per endpoint. Stop them with [`Webhooks::shutdown`] before
/// the engine stops.
pub struct Webhooks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    states: Vec<Arc<endpoint::State>>,
}

/// Resumes dead-lettered endpoints from their kept positions; cheap to clone.
#[derive(Clone)]
pub struct Resumer(Vec<Arc<endpoint::State>>);

impl Resumer {
    /// Resumes every dead-lettered endpoint; the names of those resumed.
    pub fn resume_dead_lettered(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|s| s.resume())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Resumes the endpoint `name` if it is dead-lettered; whether it was.
    pub fn resume(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name && s.resume())
    }
}

/// What an endpoint is doing, for tests and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Delivering (or waiting for events).
    Running,
    /// Retrying a failed batch.
    Retrying,
    /// Paused after `max_attempts` consecutive failures; its position is kept.
    DeadLettered,
    /// Stopped (shutdown or the engine went away).
    Stopped,
}

impl Webhooks {
    /// Validates `config` and starts one delivery task per endpoint on the current runtime.
    pub fn start(engine: Arc<Engine>, config: WebhooksConfig) -> Result<Webhooks, String> {
        config.validate()?;
        let shared = endpoint::client(&[]);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut states = Vec::new();
        for ep in config.endpoints {
            let state = Arc::new(endpoint::State::new(ep.name.clone()));
            states.push(state.clone());
            // An endpoint with its own CA gets its own client (and pool).
            let client = if ep.ca_certs.is_empty() {
                shared.clone()
            } else {
                endpoint::client(&ep.ca_certs)
            };
            let task = endpoint::Task {
                engine: engine.clone(),
                client,
                source: config.source.clone(),
                state,
                stop: stopped.clone(),
                cfg: ep,
            };
            tasks.push(tokio::spawn(task.run()));
        }
        Ok(Webhooks {
            stop,
            tasks,
            states,
        })
    }

    /// A handle that resumes dead-lettered endpoints (`serve` calls it on SIGHUP).
    pub fn resumer(&self) -> Resumer {
        Resumer(self.states.clone())
    }

    /// The status of the endpoint `name`, if configured.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.states
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.status())
    }

    /// Stops every delivery (a request in flight is abandoned: its events are sent again
    /// after the restart, with the same ids) and waits for the tasks.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> EndpointConfig {
        EndpointConfig::new("shop", "https://hooks.example.com/omnistock", &[7; 32])
    }

    #[test]
    fn urls_must_be_https_or_loopback_http() {
        for good in [
            "https://hooks.example.com/x?y=1",
            "https://10.0.0.1:8443/",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://[::1]:80/",
            "http://127.8.9.10/",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("http://hooks.example.com/", "plain http only to a loopback"),
            ("http://10.0.0.1/", "plain http only to a loopback"),
            ("ftp://example.com/", "is not http or https"),
            ("hooks.example.com/x", "is not a URL"),
            ("/just/a/path", "no scheme"),
            ("https://user:pw@example.com/", "user or password"),
            ("not a url", "is not a URL"),
            ("", "is not a URL"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_url(&format!("https://a.example/{}", "x".repeat(3000))).is_err());
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(ok().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut EndpointConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|e| e.name = String::new()), "name"),
            (Box::new(|e| e.name = "a b".into()), "name"),
            (Box::new(|e| e.name = "x".repeat(57)), "name"),
            (Box::new(|e| e.url = "http://example.com/".into()), "url"),
            (Box::new(|e| e.secret.clear()), "secret: empty"),
            (Box::new(|e| e.secret = b"short".to_vec()), "secret"),
            (Box::new(|e| e.kinds = 0), "kinds"),
            (Box::new(|e| e.coalesce_ms = 5), "coalesce_ms"),
            (Box::new(|e| e.max_attempts = 0), "max_attempts"),
            (Box::new(|e| e.max_batch_events = 0), "max_batch_events"),
            (Box::new(|e| e.max_batch_bytes = 10), "max_batch_bytes"),
            (
                Box::new(|e| e.request_timeout = Duration::ZERO),
                "timeout_ms",
            ),
            (
                Box::new(|e| e.backoff_initial = Duration::ZERO),
                "backoff_initial_ms",
            ),
            (
                Box::new(|e| e.backoff_max = Duration::from_millis(100)),
                "backoff_max_ms",
            ),
            (Box::new(|e| e.prefix = "p".repeat(65)), "prefix"),
        ];
        for (change, field) in cases {
            let mut e = ok();
            change(&mut e);
            let m = e.validate().unwrap_err();
            assert!(m.starts_with(field), "{field}: {m}");
        }
        let twice = WebhooksConfig {
            endpoints: vec![ok(), ok()],
            source: String::new(),
        };
        assert!(twice.validate().unwrap_err().contains("used twice"));
        let many = WebhooksConfig {
            endpoints: (0..=MAX_ENDPOINTS)
                .map(|i| EndpointConfig::new(&format!("e{i}"), "https://a.example/", &[1; 16]))
                .collect(),
            source: String::new(),
        };
        assert!(many.validate().unwrap_err().contains("at most 64"));
    }

    #[test]
    fn the_secret_is_never_in_debug_output() {
        let e = EndpointConfig::new("shop", "https://a.example/", b"sup3r-secret-value!!");
        assert!(!format!("{e:?}").contains("sup3r"));
    }

    #[test]
    fn kinds_are_named() {
        assert_eq!(kinds_of(&[]), Ok(kinds::ALL));
        assert_eq!(
            kinds_of(&["atp".into(), "reservations".into()]),
            Ok(kinds::ATP | kinds::RESERVATIONS)
        );
        assert!(kinds_of(&["stock".into()]).unwrap_err().contains("stock"));
    }
}
