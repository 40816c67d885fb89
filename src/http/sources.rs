//! [`Sources`]: what a scrape and `/readyz` read, filled in as the process starts (the
//! engine once recovery is done, the server's counters once it is bound), and readiness.
//! At each scrape the engine's, the log's and the server's own relaxed counters are copied
//! into the recorder, and the process's own series (`process_*`, `metrics-process`) are
//! read. It lives here, not in `crate::metrics`, so that `metrics` stays a leaf every
//! module may record through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ::metrics::{counter, gauge};
use tokio::sync::watch;

use crate::engine::{Engine, EngineError};
use crate::metrics::{
    AUTH_FAILURES_TOTAL, AUTH_THROTTLED_TOTAL, BUSY_CONNECTIONS, CONNECTIONS,
    CONNECTIONS_ACCEPTED_TOTAL, CONNECTIONS_REFUSED_TOTAL, CONNECTION_BUFFERED_BYTES,
    EXPIRY_PENDING, FRAMES_GROUPED_TOTAL, HANDSHAKES_EVICTED_TOTAL, HANDSHAKES_PENDING,
    IDEMPOTENCY_ENTRIES, IDLE_DISCONNECTS_TOTAL, MAILBOX_FULL_TOTAL, MEMORY_BUDGET_BUSY_TOTAL,
    MEMORY_BUDGET_DISCONNECTS_TOTAL, PASSIVE_STATE_BYTES, PROCESS_RESIDENT_MEMORY_BYTES,
    PROTOCOL_ERRORS_TOTAL, READY, REQUEST_FRAMES_TOTAL, RESERVATIONS, RESERVATIONS_ENDED_TOTAL,
    RESERVATIONS_PLACED_TOTAL, SKUS, SKUS_OVERSOLD, SLOW_READER_DISCONNECTS_TOTAL,
    SOLD_OUT_REFUSALS_TOTAL, SOURCE_LIMIT_REFUSALS_TOTAL, STOCKOUT_WATCHED_SKUS,
    STOCKOUT_WATCH_OVERFLOW_TOTAL, SUBSCRIBER_LAG_MAX_EVENTS, SUBSCRIPTION_LAG_RECORDS,
    TLS_HANDSHAKE_FAILURES_TOTAL, WAL_DISK_BYTES, WAL_FAILED, WAL_LOG_RECORDS, WAL_RECORDS_TOTAL,
    WAL_WRITTEN_BYTES_TOTAL,
};
use crate::server::ServerStats;

/// Why the process is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The engine is still recovering (or has not been opened).
    Recovering,
    /// Shutdown has begun.
    ShuttingDown,
    /// The log has failed; writes are refused.
    LogFailed(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Recovering => f.write_str("recovering"),
            NotReady::ShuttingDown => f.write_str("shutting down"),
            NotReady::LogFailed(m) => write!(f, "log failed: {m}"),
        }
    }
}

/// What health checks and scrapes read, filled in as the process starts: the engine once
/// recovery is done, the server's counters once it is bound. Shared with the admin
/// endpoint before the engine exists, so `/readyz` can answer 503 during recovery.
pub struct Sources {
    engine: OnceLock<Arc<Engine>>,
    server: OnceLock<Arc<ServerStats>>,
    stopping: AtomicBool,
    /// Turns true with [`set_stopping`](Sources::set_stopping): event streams end then,
    /// before the engine stops (they hold it).
    stop_streams: watch::Sender<bool>,
}

impl Sources {
    /// Empty: not ready, nothing to read but the process.
    pub fn new() -> Arc<Sources> {
        Arc::new(Sources {
            engine: OnceLock::new(),
            server: OnceLock::new(),
            stopping: AtomicBool::new(false),
            stop_streams: watch::channel(false).0,
        })
    }

    /// The engine, once recovery is done (`None` before: the API answers 503).
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// Turns true when shutdown begins: event streams watch it.
    pub(crate) fn streams_stop(&self) -> watch::Receiver<bool> {
        self.stop_streams.subscribe()
    }

    /// The engine, once recovery is done: from now on the process may be ready.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The server's counters.
    pub fn set_server(&self, stats: Arc<ServerStats>) {
        let _ = self.server.set(stats);
    }

    /// Shutdown has begun: not ready from now on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.end_streams();
    }

    /// Ends every event stream (and refuses new ones), ready or not: shutdown, or the HTTP
    /// endpoint stopping.
    pub(crate) fn end_streams(&self) {
        self.stop_streams.send_replace(true);
    }

    /// `Ok` when recovery is done, the log is writable and shutdown has not begun.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(NotReady::ShuttingDown);
        }
        let Some(engine) = self.engine.get() else {
            return Err(NotReady::Recovering);
        };
        match engine.writable() {
            Ok(()) => Ok(()),
            Err(EngineError::ShuttingDown) => Err(NotReady::ShuttingDown),
            Err(e) => Err(NotReady::LogFailed(e.to_string())),
        }
    }

    /// Copies the engine's, the log's and the server's counters into the recorder and reads
    /// the process's memory. Called at each scrape (off the async threads: it reads sled).
    pub fn collect(&self) {
        if let Some(e) = self.engine.get() {
            collect_engine(e);
        }
        if let Some(s) = self.server.get() {
            collect_server(s);
        }
        gauge!(READY).set(if self.ready().is_ok() { 1.0 } else { 0.0 });
        if let Some(rss) = resident_memory_bytes() {
            gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(rss as f64);
        }
        crate::metrics::collect_process();
    }
}

fn collect_engine(e: &Engine) {
    let s = e.stats();
    let passive = (s.skus as u64).saturating_sub(s.active_skus);
    gauge!(SKUS, "state" => "active").set(s.active_skus as f64);
    gauge!(SKUS, "state" => "passive").set(passive as f64);
    gauge!(SKUS_OVERSOLD).set(s.oversold_skus as f64);
    gauge!(STOCKOUT_WATCHED_SKUS).set(s.stockout_watched as f64);
    counter!(STOCKOUT_WATCH_OVERFLOW_TOTAL).absolute(s.stockout_watch_overflow);
    gauge!(PASSIVE_STATE_BYTES).set(s.passive_bytes as f64);
    gauge!(RESERVATIONS).set(s.reservations as f64);
    gauge!(IDEMPOTENCY_ENTRIES).set(s.idempotency_entries as f64);
    gauge!(EXPIRY_PENDING).set(s.expiry_pending as f64);
    gauge!(SUBSCRIBER_LAG_MAX_EVENTS).set(e.feed().max_lag() as f64);
    // One series per stored name: the label set is bounded by MAX_NAMED_SUBSCRIPTIONS
    // (ACK refuses a new name past it).
    let head = e.feed().head();
    for (name, seq) in e.feed_positions() {
        gauge!(SUBSCRIPTION_LAG_RECORDS, "name" => name).set(head.saturating_sub(seq) as f64);
    }
    counter!(RESERVATIONS_PLACED_TOTAL).absolute(s.reservations_placed);
    counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => "fulfilled").absolute(s.reservations_fulfilled);
    counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => "released").absolute(s.reservations_released);
    counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => "expired").absolute(s.reservations_expired);
    counter!(MAILBOX_FULL_TOTAL).absolute(s.mailbox_full);
    counter!(SOLD_OUT_REFUSALS_TOTAL).absolute(s.sold_out_refusals);
    if let Some(w) = e.wal_stats() {
        counter!(WAL_RECORDS_TOTAL).absolute(w.records.load(Ordering::Relaxed));
        counter!(WAL_WRITTEN_BYTES_TOTAL).absolute(w.written_bytes.load(Ordering::Relaxed));
    }
    if let Some(l) = e.log_stats() {
        gauge!(WAL_LOG_RECORDS).set(l.records as f64);
        gauge!(WAL_DISK_BYTES).set(l.approx_disk_bytes as f64);
    }
    let failed = matches!(e.writable(), Err(EngineError::Storage(_)));
    gauge!(WAL_FAILED).set(if failed { 1.0 } else { 0.0 });
}

fn collect_server(s: &ServerStats) {
    let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge!(CONNECTIONS).set(read(&s.connections_open) as f64);
    counter!(CONNECTIONS_ACCEPTED_TOTAL).absolute(read(&s.connections_accepted));
    counter!(CONNECTIONS_REFUSED_TOTAL).absolute(read(&s.connections_refused));
    counter!(AUTH_FAILURES_TOTAL).absolute(read(&s.auth_refused));
    counter!(PROTOCOL_ERRORS_TOTAL).absolute(read(&s.protocol_errors));
    counter!(IDLE_DISCONNECTS_TOTAL).absolute(read(&s.idle_closed));
    counter!(FRAMES_GROUPED_TOTAL).absolute(read(&s.frames_grouped));
    counter!(SLOW_READER_DISCONNECTS_TOTAL).absolute(read(&s.slow_readers_closed));
    counter!(SOURCE_LIMIT_REFUSALS_TOTAL).absolute(read(&s.source_refused));
    counter!(AUTH_THROTTLED_TOTAL).absolute(read(&s.auth_throttled));
    gauge!(HANDSHAKES_PENDING).set(read(&s.handshakes_pending) as f64);
    counter!(HANDSHAKES_EVICTED_TOTAL).absolute(read(&s.handshakes_evicted));
    for (reason, n) in [
        ("plaintext", &s.tls_plaintext_refused),
        ("handshake", &s.tls_handshake_failures),
        ("timeout", &s.tls_handshake_timeouts),
        ("tls_on_plaintext_port", &s.tls_on_plain_port),
    ] {
        counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "port" => "binary", "reason" => reason)
            .absolute(read(n));
    }
    gauge!(CONNECTION_BUFFERED_BYTES).set(read(&s.connection_buffered_bytes) as f64);
    gauge!(BUSY_CONNECTIONS).set(read(&s.busy_connections) as f64);
    counter!(MEMORY_BUDGET_BUSY_TOTAL).absolute(read(&s.memory_busy));
    counter!(MEMORY_BUDGET_DISCONNECTS_TOTAL).absolute(read(&s.memory_closed));
    counter!(REQUEST_FRAMES_TOTAL).absolute(read(&s.requests));
}

/// Resident set size from /proc/self/status (`VmRSS`, in kB); `None` where there is no
/// procfs (the gauge is then simply not updated).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(resident_memory_bytes().is_some_and(|b| b > 0));
    }
}
