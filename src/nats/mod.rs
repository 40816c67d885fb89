//! The NATS JetStream bridge: `omnistock serve` publishes the feed's JSON events
//! (docs/events.md) to a JetStream stream, in log order, at least once, from a durable
//! position (docs/adapters.md, "From NATS JetStream").
//!
//! Why it is built this way: like a webhook endpoint (`webhooks/`), the bridge is a named
//! subscription run inside the server. Its filter is a `SUBSCRIBE` (validated by
//! `feed::subscription::plan`, streamed by `feed::subscription::run`), its position is
//! stored with `Engine::ack_position` under `nats.<stream>` (a reserved name clients cannot
//! `ACK`), and the position moves only once JetStream has acknowledged every event before
//! it. Each message carries `Nats-Msg-Id` = the event id, so an event published again after
//! a restart is dropped by JetStream's duplicate window, and `Nats-Expected-Last-Msg-Id` =
//! the previous event's id (except the first of a run), so an event lost in a reconnect
//! cannot be overtaken by a later one: the later one is refused and the run starts again
//! from the last acknowledged position (strict order in the stream).
//!
//! Limits: one bridge per server; [`QUEUE_FRAMES`] push frames queued; at most
//! `max_in_flight` publishes awaiting their acknowledgement; each publish acknowledged
//! within `ack_timeout`, else the run starts again after a back-off.

mod bridge;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::Engine;
use crate::protocol::kinds;
use crate::webhooks::{in_range, millis};

/// Prefix of the name the bridge's position is stored under (reserved: clients cannot `ACK`
/// it).
pub const POSITION_PREFIX: &str = crate::feed::subscription::RESERVED_NATS_PREFIX;
/// Push frames queued between the bridge's subscription and its publisher.
pub const QUEUE_FRAMES: usize = 16;
/// Longest stream name (the position is `nats.<stream>`, a subscription name is at most
/// 64 bytes; JetStream advises short names).
pub const MAX_STREAM_NAME_BYTES: usize = 32;
/// Longest subject prefix.
pub const MAX_SUBJECT_PREFIX_BYTES: usize = 64;
/// Longest URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest token.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// Range of `max_in_flight`.
pub const IN_FLIGHT_RANGE: std::ops::RangeInclusive<usize> = 1..=4096;
/// Range of `ack_timeout_ms`.
pub const ACK_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=60_000;
/// Range of both back-off bounds, in milliseconds.
pub const BACKOFF_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=600_000;
/// Range of `duplicate_window_ms` (used when the bridge creates the stream).
pub const DUPLICATE_WINDOW_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;
/// Range of `max_bytes` (used when the bridge creates the stream).
pub const MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1 << 20..=1 << 50;
/// The channel token of the subject of an event that has no channel (reservations,
/// oversold flips, catalog changes, snapshot ends): not a valid channel id, so it cannot
/// collide with one.
pub const NO_CHANNEL_TOKEN: &str = "~";

/// The bridge's settings (`[nats]`), validated by [`NatsConfig::validate`].
#[derive(Clone)]
pub struct NatsConfig {
    /// `nats://host:port` (or `tls://`); several separated by commas.
    pub url: String,
    /// The JetStream stream: 1..=32 bytes of `[A-Za-z0-9_-]`.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<channel>.<type without "omnistock.">`.
    pub subject_prefix: String,
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
    /// A token for the NATS server (never logged).
    pub token: Option<String>,
    /// A NATS `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// Most publishes awaiting their acknowledgement.
    pub max_in_flight: usize,
    /// Longest wait for one acknowledgement.
    pub ack_timeout: Duration,
    /// First retry delay (doubled per failure, with jitter); also the reconnect delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// The duplicate window of a stream the bridge creates.
    pub duplicate_window: Duration,
    /// The byte limit of a stream the bridge creates (oldest messages discarded).
    pub max_bytes: u64,
    /// The `source` of every event (the HTTP endpoint's, so ids match SSE's and webhooks').
    pub source: String,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("channels", &self.channels)
            .field("skus", &self.skus)
            .field("prefix", &self.prefix)
            .field("kinds", &self.kinds)
            .field("coalesce_ms", &self.coalesce_ms)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("credentials_file", &self.credentials_file)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// A bridge to `url` with the documented defaults: stream `OMNISTOCK`, subjects under
    /// `omnistock`, every change, 256 in flight, 5 s acknowledgement timeout, back-off from
    /// 500 ms to 30 s, a created stream keeping 2 minutes of ids and 1 GiB.
    pub fn new(url: &str) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            stream: "OMNISTOCK".into(),
            subject_prefix: "omnistock".into(),
            channels: Vec::new(),
            skus: Vec::new(),
            prefix: String::new(),
            kinds: kinds::ALL,
            coalesce_ms: 0,
            token: None,
            credentials_file: None,
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            max_bytes: 1 << 30,
            source: String::new(),
        }
    }

    /// Checks every field; the error names the field (`stream: ...`).
    pub fn validate(&self) -> Result<(), String> {
        check_url(&self.url).map_err(|m| format!("url: {m}"))?;
        let s = &self.stream;
        if s.is_empty()
            || s.len() > MAX_STREAM_NAME_BYTES
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(format!(
                "stream: {s:?} must be 1..={MAX_STREAM_NAME_BYTES} bytes of [A-Za-z0-9_-]"
            ));
        }
        let p = &self.subject_prefix;
        if p.is_empty()
            || p.len() > MAX_SUBJECT_PREFIX_BYTES
            || p.split('.').any(|t| {
                t.is_empty()
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            })
        {
            return Err(format!(
                "subject_prefix: {p:?} must be 1..={MAX_SUBJECT_PREFIX_BYTES} bytes: \
                 tokens of [A-Za-z0-9_-] separated by dots"
            ));
        }
        if self.kinds == 0 || self.kinds & !kinds::ALL != 0 {
            return Err(
                "kinds: a non-empty list of atp, thresholds, reservations, stockout, rebalance, region_stockout, all".into(),
            );
        }
        let c = self.coalesce_ms;
        if c != 0 && !crate::feed::subscription::COALESCE_MS_RANGE.contains(&c) {
            return Err(format!("coalesce_ms: {c} must be 0 or 10..=60000"));
        }
        if self.prefix.len() > crate::domain::limits::MAX_SKU_ID_BYTES {
            return Err("prefix: longer than a SKU id may be".into());
        }
        if let Some(t) = &self.token {
            if t.is_empty() || t.len() > MAX_TOKEN_BYTES {
                return Err(format!("token: must be 1..={MAX_TOKEN_BYTES} bytes"));
            }
            if self.credentials_file.is_some() {
                return Err("token: give a token or a credentials_file, not both".into());
            }
        }
        in_range("max_in_flight", self.max_in_flight, IN_FLIGHT_RANGE)?;
        in_range(
            "ack_timeout_ms",
            millis(self.ack_timeout),
            ACK_TIMEOUT_MS_RANGE,
        )?;
        in_range(
            "backoff_initial_ms",
            millis(self.backoff_initial),
            BACKOFF_MS_RANGE,
        )?;
        in_range("backoff_max_ms", millis(self.backoff_max), BACKOFF_MS_RANGE)?;
        if self.backoff_max < self.backoff_initial {
            return Err("backoff_max_ms: smaller than backoff_initial_ms".into());
        }
        in_range(
            "duplicate_window_ms",
            millis(self.duplicate_window),
            DUPLICATE_WINDOW_MS_RANGE,
        )?;
        in_range("max_bytes", self.max_bytes, MAX_BYTES_RANGE)?;
        Ok(())
    }

    /// The name its position is stored under (`nats.<stream>`).
    pub fn position_name(&self) -> String {
        format!("{POSITION_PREFIX}{}", self.stream)
    }

    /// The stream's subjects (`<subject_prefix>.>`).
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Checks a server list: one or more `nats://` or `tls://` URLs (or `host:port`),
/// separated by commas, with a host and no user or password (use `token` or
/// `credentials_file`: the URL is logged).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("longer than {MAX_URL_BYTES} bytes"));
    }
    if url.trim().is_empty() {
        return Err("empty".into());
    }
    for one in url.split(',').map(str::trim) {
        let rest = match one.split_once("://") {
            Some(("nats" | "tls", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!("{one:?}: scheme {scheme:?} is not nats or tls"))
            }
            None => one,
        };
        if rest.contains('@') {
            return Err(format!(
                "{one:?} has a user or password; use token, token_env or credentials_file"
            ));
        }
        let host = rest.split(['/', '?']).next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') || host.contains(char::is_whitespace) {
            return Err(format!("{one:?} has no host (nats://host:4222)"));
        }
        one.parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("{one:?} is not a NATS server address: {e}"))?;
    }
    Ok(())
}

/// The subject of an event: `<prefix>.<channel>.<type without "omnistock.">`, with `.` in
/// a channel id written `%2E` (a dot separates subject tokens) and [`NO_CHANNEL_TOKEN`] for
/// an event without a channel. `omnistock.atp.changed` on channel `web` under the default
/// prefix is `omnistock.web.atp.changed`; `omnistock.reservation.placed` is
/// `omnistock.~.reservation.placed`.
pub fn subject(prefix: &str, channel: Option<&str>, event_type: &str) -> String {
    let kind = event_type.strip_prefix("omnistock.").unwrap_or(event_type);
    let channel = match channel {
        Some(c) => c.replace('.', "%2E"),
        None => NO_CHANNEL_TOKEN.to_string(),
    };
    format!("{prefix}.{channel}.{kind}")
}

/// What the bridge is doing, for tests and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Connecting to NATS or checking the stream.
    Connecting,
    /// Publishing (or waiting for events).
    Publishing,
    /// Waiting to retry after a failure.
    Retrying,
    /// Stopped.
    Stopped,
}

/// The running bridge. Stop it with [`Nats::shutdown`] before the engine stops.
pub struct Nats {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: Arc<bridge::State>,
}

impl Nats {
    /// Validates `config` and starts the bridge's task on the current runtime (it connects
    /// in the background, retrying with back-off while NATS is unreachable).
    pub fn start(engine: Arc<Engine>, config: NatsConfig) -> Result<Nats, String> {
        config.validate().map_err(|m| format!("nats.{m}"))?;
        let (stop, stopped) = watch::channel(false);
        let state = Arc::new(bridge::State::default());
        let task = bridge::Task {
            engine,
            state: state.clone(),
            stop: stopped,
            cfg: config,
        };
        Ok(Nats {
            stop,
            task: tokio::spawn(task.run()),
            state,
        })
    }

    /// The bridge's status.
    pub fn status(&self) -> Status {
        self.state.status()
    }

    /// Stops publishing: publishes in flight are given `ack_timeout` to be acknowledged, the
    /// position reached is stored, and the connection is flushed and closed.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_channel_and_type() {
        let s = |c, t| subject("omnistock", c, t);
        assert_eq!(
            s(Some("web"), "omnistock.atp.changed"),
            "omnistock.web.atp.changed"
        );
        assert_eq!(
            s(Some("web.fr"), "omnistock.stock.out"),
            "omnistock.web%2Efr.stock.out"
        );
        assert_eq!(
            s(None, "omnistock.reservation.placed"),
            "omnistock.~.reservation.placed"
        );
        assert_eq!(
            subject("a.b", Some("c"), "omnistock.stock.low"),
            "a.b.c.stock.low"
        );
        // Every subject has the same number of tokens under one prefix.
        for t in crate::events::types::ALL {
            assert_eq!(s(Some("x.y"), t).split('.').count(), 4, "{t}");
            assert_eq!(s(None, t).split('.').count(), 4, "{t}");
        }
    }

    #[test]
    fn urls_are_nats_or_tls_with_a_host_and_no_password() {
        for good in [
            "nats://127.0.0.1:4222",
            "tls://nats.example.com:4222",
            "nats://a:4222, nats://b:4222",
            "localhost:4222",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("http://a:4222", "not nats or tls"),
            ("nats://u:p@a:4222", "user or password"),
            ("nats://:4222", "no host"),
            ("nats://a:4222,", "no host"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let ok = || NatsConfig::new("nats://127.0.0.1:4222");
        assert_eq!(ok().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut NatsConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.url = "http://x".into()), "url"),
            (Box::new(|c| c.stream = String::new()), "stream"),
            (Box::new(|c| c.stream = "a.b".into()), "stream"),
            (Box::new(|c| c.stream = "s".repeat(33)), "stream"),
            (
                Box::new(|c| c.subject_prefix = "a..b".into()),
                "subject_prefix",
            ),
            (
                Box::new(|c| c.subject_prefix = "a.*".into()),
                "subject_prefix",
            ),
            (
                Box::new(|c| c.subject_prefix = "a.>".into()),
                "subject_prefix",
            ),
            (Box::new(|c| c.kinds = 0), "kinds"),
            (Box::new(|c| c.coalesce_ms = 5), "coalesce_ms"),
            (Box::new(|c| c.prefix = "p".repeat(65)), "prefix"),
            (Box::new(|c| c.token = Some(String::new())), "token"),
            (
                Box::new(|c| {
                    c.token = Some("t".into());
                    c.credentials_file = Some("x.creds".into());
                }),
                "token",
            ),
            (Box::new(|c| c.max_in_flight = 0), "max_in_flight"),
            (
                Box::new(|c| c.ack_timeout = Duration::ZERO),
                "ack_timeout_ms",
            ),
            (
                Box::new(|c| c.backoff_initial = Duration::ZERO),
                "backoff_initial_ms",
            ),
            (
                Box::new(|c| c.backoff_max = Duration::from_millis(100)),
                "backoff_max_ms",
            ),
            (
                Box::new(|c| c.duplicate_window = Duration::from_millis(10)),
                "duplicate_window_ms",
            ),
            (Box::new(|c| c.max_bytes = 10), "max_bytes"),
        ];
        for (change, field) in cases {
            let mut c = ok();
            change(&mut c);
            let m = c.validate().unwrap_err();
            assert!(m.starts_with(field), "{field}: {m}");
        }
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let mut c = NatsConfig::new("nats://a:4222");
        c.token = Some("sup3r-secret".into());
        assert!(!format!("{c:?}").contains("sup3r"));
    }
}
