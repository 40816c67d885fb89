//! The admin HTTP endpoint (`--admin-listen`, default 127.0.0.1:9878): `GET /metrics`
//! (Prometheus text format), `GET /healthz` (200 while the process runs) and `GET /readyz`
//! (200 once recovery is done and the log is writable, 503 with the reason otherwise).
//!
//! A deliberately small HTTP/1.1 server on tokio rather than a framework: three read-only
//! paths, one request per connection (`Connection: close`), a request head of at most
//! [`MAX_REQUEST_BYTES`] read within [`READ_TIMEOUT`], the answer written within
//! [`WRITE_TIMEOUT`], 404 for other paths, 405 for methods other than GET and HEAD, 400 for
//! anything that is not HTTP.
//!
//! Probes must answer under a connection flood (a liveness probe that cannot connect
//! restarts a healthy server). So: at most [`MAX_CONNECTIONS`] connections are served at
//! once, and when all are taken, the oldest one still waiting for its request head after
//! [`EVICTABLE_AFTER`] is closed to make room (a real client sends its request at once; a
//! silent one is a squatter). When none can be closed, new connections wait in the kernel's
//! accept queue (checked again every [`ACCEPT_RECHECK`]) instead of being closed unanswered:
//! answers take microseconds, so the queue drains fast. It is bound before the engine is opened, so `/healthz` and `/readyz`
//! answer during recovery. Scrapes run collection and rendering on the blocking pool
//! (collection reads sled), never on the runtime's worker threads.
//!
//! [`Sources`] is what a scrape and `/readyz` read: the engine's, the log's and the server's
//! own counters, copied into the recorder at each scrape, and readiness. It lives here, not in
//! `crate::metrics`, so that `metrics` stays a leaf every module may record through.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::engine::{Engine, EngineError};
use crate::metrics::{
    AUTH_FAILURES_TOTAL, AUTH_THROTTLED_TOTAL, CONNECTIONS, CONNECTIONS_ACCEPTED_TOTAL,
    CONNECTIONS_REFUSED_TOTAL, CONNECTION_BUFFERED_BYTES, EXPIRY_PENDING, HANDSHAKES_EVICTED_TOTAL,
    HANDSHAKES_PENDING, IDEMPOTENCY_ENTRIES, IDLE_DISCONNECTS_TOTAL, MAILBOX_FULL_TOTAL,
    MEMORY_BUDGET_BUSY_TOTAL, PASSIVE_STATE_BYTES, PROCESS_RESIDENT_MEMORY_BYTES,
    PROTOCOL_ERRORS_TOTAL, READY, REQUEST_FRAMES_TOTAL, RESERVATIONS, RESERVATIONS_ENDED_TOTAL,
    RESERVATIONS_PLACED_TOTAL, SKUS, SKUS_OVERSOLD, SLOW_READER_DISCONNECTS_TOTAL,
    SOURCE_LIMIT_REFUSALS_TOTAL, SUBSCRIBER_LAG_MAX_EVENTS, WAL_DISK_BYTES, WAL_FAILED,
    WAL_LOG_RECORDS, WAL_RECORDS_TOTAL, WAL_WRITTEN_BYTES_TOTAL,
};
use crate::server::ServerStats;

/// Largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the answer has to be written.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most admin connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection still without its whole request head after this long may be closed to make
/// room for a new one when all [`MAX_CONNECTIONS`] are taken.
pub const EVICTABLE_AFTER: Duration = Duration::from_millis(500);
/// How often a full pool with nobody to evict looks again (new connections wait meanwhile
/// in the accept queue).
pub const ACCEPT_RECHECK: Duration = Duration::from_millis(10);
/// How often histogram samples are folded in even when nobody scrapes (bounds memory).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A bound admin endpoint, ready to [`run`](AdminServer::run).
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    sources: Arc<Sources>,
    metrics: PrometheusHandle,
}

/// An HTTP answer.
struct Answer {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Answer {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let allow = if self.allow {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        sources: Arc<Sources>,
        metrics: PrometheusHandle,
    ) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("admin endpoint {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        Ok(AdminServer {
            listener,
            local_addr,
            shared: Arc::new(Shared { sources, metrics }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop` resolves, then waits for the connections being answered.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let pool = Arc::new(Pool::default());
        let mut conns = JoinSet::new();
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        tracing::info!(addr = %self.local_addr, "admin endpoint: /metrics /healthz /readyz");
        loop {
            let room = pool.has_room();
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(ACCEPT_RECHECK), if !room => {}
                _ = upkeep.tick() => {
                    let m = self.shared.metrics.clone();
                    // Folding samples takes a lock in the exporter: keep it off the workers.
                    drop(tokio::task::spawn_blocking(move || m.run_upkeep()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.listener.accept(), if room => match accepted {
                    Ok((sock, _)) => {
                        // No room after all (the evictable one finished meanwhile): close.
                        let Some(slot) = pool.enter() else { continue };
                        let shared = self.shared.clone();
                        conns.spawn(async move {
                            serve_one(sock, &shared, &slot).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        while conns.join_next().await.is_some() {}
    }
}

/// Locks a mutex, taking the data of a poisoned one (each update is one map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The admin connections being served. std `Mutex`: held for a map operation, never
/// across an await.
#[derive(Default)]
struct Pool {
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    /// Connections holding a place (evicted ones no longer do).
    active: usize,
    next_id: u64,
    /// Those still reading their request head, oldest first: when they came, and the
    /// signal that closes them.
    reading: BTreeMap<u64, (Instant, Arc<Notify>)>,
}

impl PoolInner {
    fn oldest_evictable(&self) -> bool {
        self.reading
            .first_key_value()
            .is_some_and(|(_, (since, _))| since.elapsed() >= EVICTABLE_AFTER)
    }
}

/// A place in the pool; freed on drop unless it was taken away by eviction.
struct Slot {
    pool: Arc<Pool>,
    id: u64,
    evicted: Arc<Notify>,
    /// Its request head was read before any eviction: it keeps its place to the end.
    answered: AtomicBool,
}

impl Pool {
    fn has_room(&self) -> bool {
        let p = lock(&self.inner);
        p.active < MAX_CONNECTIONS || p.oldest_evictable()
    }

    /// A place for a new connection, evicting the oldest silent one if all are taken.
    fn enter(self: &Arc<Self>) -> Option<Slot> {
        let mut p = lock(&self.inner);
        if p.active >= MAX_CONNECTIONS {
            if !p.oldest_evictable() {
                return None;
            }
            // Its place passes to the new connection: `active` stays.
            let (_, (_, signal)) = p.reading.pop_first()?;
            signal.notify_one();
        } else {
            p.active += 1;
        }
        let id = p.next_id;
        p.next_id += 1;
        let evicted = Arc::new(Notify::new());
        p.reading.insert(id, (Instant::now(), evicted.clone()));
        Some(Slot {
            pool: self.clone(),
            id,
            evicted,
            answered: AtomicBool::new(false),
        })
    }
}

impl Slot {
    /// The request head is in: this connection is answered, never evicted.
    fn head_read(&self) -> bool {
        let mut p = lock(&self.pool.inner);
        let still = p.reading.remove(&self.id).is_some();
        self.answered.store(still, Ordering::Relaxed);
        still
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = lock(&self.pool.inner);
        let was_reading = p.reading.remove(&self.id).is_some();
        // Neither reading nor answered: evicted, and its place already passed on.
        if was_reading || self.answered.load(Ordering::Relaxed) {
            p.active = p.active.saturating_sub(1);
        }
    }
}

/// Reads one request head, answers it, closes. Closed without an answer when evicted
/// while still reading.
async fn serve_one(mut sock: TcpStream, shared: &Shared, slot: &Slot) {
    let read = tokio::time::timeout(READ_TIMEOUT, read_head(&mut sock));
    let head = tokio::select! {
        r = read => r,
        _ = slot.evicted.notified() => return,
    };
    if !slot.head_read() {
        return; // evicted just as its request arrived
    }
    let head = match head {
        Ok(Ok(h)) => h,
        Ok(Err(HeadError::TooLarge)) => {
            let a = Answer::text(
                431,
                "Request Header Fields Too Large",
                "request too large\n",
            );
            return write(&mut sock, &a, false).await;
        }
        // Closed, failed or timed out before a whole request arrived: nothing to answer.
        Ok(Err(HeadError::Io)) | Err(_) => return,
    };
    let (answer, head_only) = match parse_request_line(&head) {
        None => (Answer::text(400, "Bad Request", "bad request\n"), false),
        Some((method, path)) => {
            let head_only = method == "HEAD";
            (route(method, path, shared).await, head_only)
        }
    };
    write(&mut sock, &answer, head_only).await;
}

async fn write(sock: &mut TcpStream, a: &Answer, head_only: bool) {
    let bytes = a.encode(head_only);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        if sock.write_all(&bytes).await.is_ok() {
            let _ = sock.shutdown().await;
        }
    })
    .await;
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads until the blank line ending the request head, never more than the limit.
async fn read_head(sock: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// `(method, path without query)` of an HTTP/1.x request line.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let head = std::str::from_utf8(head).ok()?;
    let line = head.split("\r\n").next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split('?').next()?;
    if !path.starts_with('/') {
        return None;
    }
    Some((method, path))
}

async fn route(method: &str, path: &str, shared: &Shared) -> Answer {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return Answer::text(
            404,
            "Not Found",
            "not found: try /metrics, /healthz, /readyz\n",
        );
    }
    if method != "GET" && method != "HEAD" {
        let mut a = Answer::text(405, "Method Not Allowed", "method not allowed\n");
        a.allow = true;
        return a;
    }
    match path {
        "/healthz" => Answer::text(200, "OK", "ok\n"),
        "/readyz" => match shared.sources.ready() {
            Ok(()) => Answer::text(200, "OK", "ready\n"),
            Err(why) => Answer::text(503, "Service Unavailable", format!("not ready: {why}\n")),
        },
        _ => scrape(shared).await,
    }
}

async fn scrape(shared: &Shared) -> Answer {
    let (sources, handle) = (shared.sources.clone(), shared.metrics.clone());
    let rendered = tokio::task::spawn_blocking(move || {
        sources.collect();
        handle.render()
    })
    .await;
    match rendered {
        Ok(body) => Answer {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body,
            allow: false,
        },
        Err(e) => Answer::text(
            500,
            "Internal Server Error",
            format!("scrape failed: {e}\n"),
        ),
    }
}

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
#[derive(Default)]
pub struct Sources {
    engine: OnceLock<Arc<Engine>>,
    server: OnceLock<Arc<ServerStats>>,
    stopping: AtomicBool,
}

impl Sources {
    /// Empty: not ready, nothing to read but the process.
    pub fn new() -> Arc<Sources> {
        Arc::new(Sources::default())
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
    }
}

fn collect_engine(e: &Engine) {
    let s = e.stats();
    let passive = (s.skus as u64).saturating_sub(s.active_skus);
    gauge!(SKUS, "state" => "active").set(s.active_skus as f64);
    gauge!(SKUS, "state" => "passive").set(passive as f64);
    gauge!(SKUS_OVERSOLD).set(s.oversold_skus as f64);
    gauge!(PASSIVE_STATE_BYTES).set(s.passive_bytes as f64);
    gauge!(RESERVATIONS).set(s.reservations as f64);
    gauge!(IDEMPOTENCY_ENTRIES).set(s.idempotency_entries as f64);
    gauge!(EXPIRY_PENDING).set(s.expiry_pending as f64);
    gauge!(SUBSCRIBER_LAG_MAX_EVENTS).set(e.feed().max_lag() as f64);
    counter!(RESERVATIONS_PLACED_TOTAL).absolute(s.reservations_placed);
    counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => "fulfilled").absolute(s.reservations_fulfilled);
    counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => "released").absolute(s.reservations_released);
    counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => "expired").absolute(s.reservations_expired);
    counter!(MAILBOX_FULL_TOTAL).absolute(s.mailbox_full);
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
    counter!(SLOW_READER_DISCONNECTS_TOTAL).absolute(read(&s.slow_readers_closed));
    counter!(SOURCE_LIMIT_REFUSALS_TOTAL).absolute(read(&s.source_refused));
    counter!(AUTH_THROTTLED_TOTAL).absolute(read(&s.auth_throttled));
    gauge!(HANDSHAKES_PENDING).set(read(&s.handshakes_pending) as f64);
    counter!(HANDSHAKES_EVICTED_TOTAL).absolute(read(&s.handshakes_evicted));
    gauge!(CONNECTION_BUFFERED_BYTES).set(read(&s.connection_buffered_bytes) as f64);
    counter!(MEMORY_BUDGET_BUSY_TOTAL).absolute(read(&s.memory_busy));
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
    fn request_lines_parse_or_are_refused() {
        fn ok(s: &str) -> Option<(&str, &str)> {
            parse_request_line(s.as_bytes())
        }
        assert_eq!(ok("GET /metrics HTTP/1.1"), Some(("GET", "/metrics")));
        assert_eq!(
            ok("HEAD /readyz?x=1 HTTP/1.0\r\nHost: a"),
            Some(("HEAD", "/readyz"))
        );
        assert_eq!(ok("GET /metrics"), None);
        assert_eq!(ok("GET /metrics HTTP/2 extra"), None);
        assert_eq!(ok("GET /metrics SPDY/3"), None);
        assert_eq!(ok("GET  HTTP/1.1"), None);
        assert_eq!(ok("GET metrics HTTP/1.1"), None);
        assert_eq!(parse_request_line(&[0xff, 0xfe]), None);
    }

    #[test]
    fn head_ends_at_the_blank_line() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"),
            Some(20)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn answers_carry_length_and_close() {
        let a = Answer::text(404, "Not Found", "nope\n");
        let s = String::from_utf8(a.encode(false)).expect("utf-8");
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("Content-Length: 5\r\n") && s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nnope\n"));
        let head = String::from_utf8(a.encode(true)).expect("utf-8");
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(resident_memory_bytes().is_some_and(|b| b > 0));
    }
}
