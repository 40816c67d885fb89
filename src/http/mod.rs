//! The HTTP endpoint (`--admin-listen`, default 127.0.0.1:9878): the operational paths
//! `GET /metrics` (Prometheus text format), `GET /healthz` (200 while the process runs) and
//! `GET /readyz` (200 once recovery is done and the log is writable, 503 with the reason
//! otherwise), and the JSON API under `/v1` (docs/openapi.json): reads of a SKU, of ATP for
//! a list or prefix of SKUs and of a reservation, and the change feed as Server-Sent Events
//! (`GET /v1/events`). The API asks for the same tokens and roles as the binary port.
//!
//! axum routes and extracts; hyper speaks HTTP/1.1 underneath. The accept loop is ours, not
//! `axum::serve`, because probes must answer under a connection flood (a liveness probe
//! that cannot connect restarts a healthy server): at most [`MAX_CONNECTIONS`] connections
//! are served at once, and when all are taken, the oldest one still waiting for its request
//! head after [`EVICTABLE_AFTER`] is closed to make room (a real client sends its request
//! at once; a silent one is a squatter). When none can be closed, new connections wait in
//! the kernel's accept queue (checked again every [`ACCEPT_RECHECK`]) instead of being
//! closed unanswered. At most `max_connections_per_source` (default 64) are open from one
//! source IP, loopback included unless told otherwise (the binary port's
//! [`SourceLimit`](crate::server::SourceLimit)); beyond, `429` at once. One request per connection (`Connection: close`, as before axum): a
//! connection is "reading" until its one request head is in, then it is answered, so an
//! idle keep-alive connection can never hold a place. A request head is at most
//! [`MAX_REQUEST_BYTES`] and must arrive within [`READ_TIMEOUT`]; an answer must be written
//! within [`WRITE_TIMEOUT`]. Event streams are the long-lived exception: at most
//! `max_event_streams` (default [`DEFAULT_MAX_EVENT_STREAMS`], well under
//! [`MAX_CONNECTIONS`], so probes always find places), each ended and closed when it lags.
//!
//! It is bound before the engine is opened, so `/healthz` and `/readyz` answer during
//! recovery (the API answers 503 `not_ready` then). Scrapes run collection and rendering on
//! the blocking pool (collection reads sled), never on the runtime's worker threads.

mod api;
mod auth;
mod events;
mod pool;
mod routes;
mod sources;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::feed::subscription::SubscriptionConfig;
use crate::protocol::Role;
use crate::server::{AuthThrottle, SourceLimit};

pub use routes::{routes, Route};
pub use sources::{resident_memory_bytes, NotReady, Sources};

use pool::{Pool, Slot};

/// Largest request head (request line and headers) accepted; larger gets 431. hyper's
/// smallest read buffer, and what the hand-written server allowed before.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time an answer (other than an event stream) has to be written once its request is in.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection still without its whole request head after this long may be closed to make
/// room for a new one when all [`MAX_CONNECTIONS`] are taken (a real client sends its head
/// within a round trip; 500 ms let 1,000 squatters keep a probe in the accept queue).
pub const EVICTABLE_AFTER: Duration = Duration::from_millis(100);
/// Default of [`HttpConfig::max_connections_per_source`]: a quarter of the places, so that
/// squatters from one address leave three quarters to everyone else.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = MAX_CONNECTIONS / 4;
/// How often a full pool with nobody to evict looks again (new connections wait meanwhile
/// in the accept queue).
pub const ACCEPT_RECHECK: Duration = Duration::from_millis(10);
/// How often histogram samples are folded in even when nobody scrapes (bounds memory).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Default of [`HttpConfig::max_event_streams`].
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 64;
/// Default of [`HttpConfig::heartbeat`].
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Smallest and largest heartbeat interval, in milliseconds.
pub const HEARTBEAT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// Settings of the HTTP endpoint. `Default` is what `omnistock serve` uses unless told.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Token → role, the binary port's own (`ServerConfig::tokens`). Empty: on a loopback
    /// listen address every client is admin, as on the binary port; on any other address
    /// the `/v1` API refuses every request (403 `tokens_required`), while `/metrics`,
    /// `/healthz` and `/readyz` stay open to scrapers and probes.
    pub tokens: HashMap<String, Role>,
    /// An event stream with nothing to send for this long sends a `: heartbeat` comment.
    /// Default 15 s ([`HEARTBEAT_MS_RANGE`]).
    pub heartbeat: Duration,
    /// Most event streams open at once; beyond, 503 `too_many_streams`. Default 64, at most
    /// half of [`MAX_CONNECTIONS`].
    pub max_event_streams: usize,
    /// The feed's limits (lag before coalescing, stall timeout, SKUs per filter), the
    /// binary port's own (`ServerConfig::subscription`).
    pub subscription: SubscriptionConfig,
    /// The `source` of every event envelope (docs/events.md), default
    /// `omnistock://127.0.0.1:7878`; `omnistock serve` gives the binary port's address, so
    /// the same change has the same (`source`, `id`) on SSE and in `ctl tail --json`.
    pub source: String,
    /// TLS on the endpoint (`tls_cert` and `tls_key`, the binary port's certificate;
    /// client certificates are not asked for here: the API has its tokens, and probes
    /// and scrapers rarely carry one). `None` (default): plain HTTP. The TLS handshake
    /// must finish within [`READ_TIMEOUT`], and a connection in its handshake is
    /// "reading" (evictable from a full pool) like one waiting for its request head.
    pub tls: Option<crate::tls::ServerTls>,
    /// Most connections open at once from one source IP (event streams included); beyond,
    /// a new connection gets `429 Too Many Requests` at once and is closed, counted in
    /// `omnistock_http_source_limit_refusals_total`. Default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_SOURCE`] (64), 1..=[`MAX_CONNECTIONS`].
    pub max_connections_per_source: usize,
    /// Whether `max_connections_per_source` applies to loopback sources too. Default true:
    /// probes and scrapers often come from the host itself, and so may squatters.
    pub per_source_limit_on_loopback: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            tokens: HashMap::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
            subscription: SubscriptionConfig::default(),
            source: "omnistock://127.0.0.1:7878".into(),
            tls: None,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            per_source_limit_on_loopback: true,
        }
    }
}

impl HttpConfig {
    /// Checks every setting; the error names the first bad one (`setting: reason`).
    pub fn validate(&self) -> Result<(), String> {
        let ms = u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX);
        if !HEARTBEAT_MS_RANGE.contains(&ms) {
            return Err(format!(
                "http_heartbeat_ms: must be {}..={}",
                HEARTBEAT_MS_RANGE.start(),
                HEARTBEAT_MS_RANGE.end()
            ));
        }
        if !(1..=MAX_CONNECTIONS / 2).contains(&self.max_event_streams) {
            return Err(format!(
                "http_max_event_streams: must be 1..={}",
                MAX_CONNECTIONS / 2
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections_per_source) {
            return Err(format!(
                "http_max_connections_per_source: must be 1..={MAX_CONNECTIONS}"
            ));
        }
        if self.source.is_empty() || self.source.len() > 256 {
            return Err("http source: must be 1..=256 bytes".into());
        }
        Ok(())
    }
}

/// What every handler reads.
pub(crate) struct AppState {
    pub sources: Arc<Sources>,
    pub metrics: PrometheusHandle,
    pub config: HttpConfig,
    /// Whether the listen address is loopback (no tokens is allowed only there).
    pub loopback: bool,
    /// Event streams open now.
    pub streams: AtomicUsize,
    /// Places for prefix reads ([`api::MAX_CONCURRENT_PREFIX_READS`]).
    pub prefix_reads: tokio::sync::Semaphore,
    /// Failed authentications per source IP.
    pub auth_throttle: AuthThrottle,
}

/// The peer's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerIp(pub std::net::IpAddr);

/// A connection's deadline, which handlers move: set to [`WRITE_TIMEOUT`] once the request
/// is in, lifted while an event stream runs, set again when the stream ends (what it had
/// queued must be written by then, or the connection is dropped).
pub(crate) struct ConnDeadline {
    tx: watch::Sender<Option<Instant>>,
}

impl ConnDeadline {
    /// The connection must be done by `at` (`None`: no deadline).
    pub fn set(&self, at: Option<Instant>) {
        self.tx.send_replace(at);
    }
}

/// A bound HTTP endpoint, ready to [`run`](HttpServer::run).
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<AppState>,
}

impl HttpServer {
    /// Checks `config` and binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        sources: Arc<Sources>,
        metrics: PrometheusHandle,
        config: HttpConfig,
    ) -> std::io::Result<HttpServer> {
        config
            .validate()
            .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidInput, m))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("HTTP endpoint {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        // Listed in every scrape from the start, refusals or not.
        ::metrics::counter!(crate::metrics::HTTP_SOURCE_LIMIT_REFUSALS_TOTAL).increment(0);
        if config.tls.is_some() {
            for reason in ["handshake", "timeout"] {
                ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL, "port" => "http", "reason" => reason)
                    .increment(0);
            }
        }
        if config.tokens.is_empty() && !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "no auth tokens configured and the HTTP endpoint is not on loopback: the /v1 API refuses every request");
        }
        Ok(HttpServer {
            listener,
            local_addr,
            state: Arc::new(AppState {
                sources,
                metrics,
                loopback: local_addr.ip().is_loopback(),
                config,
                streams: AtomicUsize::new(0),
                prefix_reads: tokio::sync::Semaphore::new(api::MAX_CONCURRENT_PREFIX_READS),
                auth_throttle: AuthThrottle::default(),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop` resolves, then waits for the connections being answered (event
    /// streams end when shutdown begins, see [`Sources::set_stopping`]).
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let pool = Arc::new(Pool::default());
        let sources = SourceLimit::new(
            self.state.config.max_connections_per_source,
            self.state.config.per_source_limit_on_loopback,
        );
        let router = routes::router(self.state.clone());
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        tracing::info!(addr = %self.local_addr, "HTTP endpoint: /metrics /healthz /readyz /v1");
        loop {
            let room = pool.has_room();
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(ACCEPT_RECHECK), if !room => {}
                _ = upkeep.tick() => {
                    let m = self.state.metrics.clone();
                    // Folding samples takes a lock in the exporter: keep it off the workers.
                    drop(tokio::task::spawn_blocking(move || m.run_upkeep()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.listener.accept(), if room => match accepted {
                    Ok((sock, peer)) => {
                        // Over its source's limit: refused before it takes a place.
                        let source = match sources.enter(peer.ip()) {
                            Ok(g) => g,
                            Err(max) => {
                                refuse_source(sock, peer.ip(), max);
                                continue;
                            }
                        };
                        // No room after all (the evictable one finished meanwhile): close.
                        let Some(slot) = pool.enter() else { continue };
                        let (router, stopped) = (router.clone(), stopped_rx.clone());
                        let tls = self.state.config.tls.clone();
                        conns.spawn(async move {
                            serve_one(sock, tls, PeerIp(peer.ip()), router, slot, stopped).await;
                            drop(source);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        stopped_tx.send_replace(true);
        // Event streams would otherwise run on; other answers end by their deadline.
        self.state.sources.end_streams();
        while conns.join_next().await.is_some() {}
    }
}

/// Refuses a connection over its source's limit: a `429` written if the socket takes it at
/// once (a fresh socket does), then closed. No task and no wait: a flood of these costs an
/// accept, one write and a close each.
fn refuse_source(sock: TcpStream, ip: std::net::IpAddr, max: usize) {
    ::metrics::counter!(crate::metrics::HTTP_SOURCE_LIMIT_REFUSALS_TOTAL).increment(1);
    tracing::debug!(%ip, "HTTP connection refused: per-source limit");
    let body = format!(
        "{max} connections open from {ip}; at most {max} per source \
         (http_max_connections_per_source)\n"
    );
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.try_write(answer.as_bytes());
}

/// Serves one connection's one request. Closed without an answer when evicted while still
/// reading, when the server stops before its request is in, or at its deadline.
async fn serve_one(
    sock: TcpStream,
    tls: Option<crate::tls::ServerTls>,
    peer: PeerIp,
    router: axum::Router,
    slot: Slot,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        return serve_conn(sock, peer, router, slot, stopped).await;
    };
    let accepted = tokio::select! {
        r = tokio::time::timeout(READ_TIMEOUT, tls.accept(sock)) => r,
        _ = slot.evicted.notified() => return,
        _ = stopped.changed() => return,
    };
    let failed = |reason: &'static str| {
        ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL, "port" => "http", "reason" => reason)
            .increment(1);
    };
    match accepted {
        Ok(Ok(s)) => serve_conn(s, peer, router, slot, stopped).await,
        Ok(Err(e)) => {
            failed("handshake");
            tracing::debug!(ip = %peer.0, error = %e, "HTTP endpoint: TLS handshake failed");
        }
        Err(_) => failed("timeout"),
    }
}

/// Serves one request on a connection, plain or TLS.
async fn serve_conn<IO>(
    sock: IO,
    peer: PeerIp,
    router: axum::Router,
    slot: Slot,
    mut stopped: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (deadline_tx, mut deadline) = watch::channel(None::<Instant>);
    let conn_deadline = Arc::new(ConnDeadline { tx: deadline_tx });
    let slot = Arc::new(slot);
    let svc_slot = slot.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // The head is in: from now on this connection is answered, never evicted.
        svc_slot.head_read();
        conn_deadline.set(Some(Instant::now() + WRITE_TIMEOUT));
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(conn_deadline.clone());
        req.extensions_mut().insert(peer);
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(sock), service);
    tokio::pin!(conn);
    let mut deadline_open = true;
    loop {
        let at = *deadline.borrow_and_update();
        let reading = slot.is_reading();
        tokio::select! {
            // The connection first: a request that was already in when the connection was
            // evicted is read and answered (a busy machine, not a squatter).
            biased;
            _ = &mut conn => return,
            // Checked again once notified: the poll of `conn` just above, in this same
            // turn, may have read the head (the condition was evaluated before it).
            _ = slot.evicted.notified(), if !slot.head_in() => {
                if !slot.head_in() {
                    return;
                }
            }
            r = stopped.changed(), if reading => if r.is_err() || *stopped.borrow() { return },
            _ = tokio::time::sleep_until(at.unwrap_or_else(Instant::now)), if at.is_some() => return,
            // Its sender lives as long as the service: closed only as the connection ends.
            r = deadline.changed(), if deadline_open => deadline_open = r.is_ok(),
        }
    }
}

/// Locks a mutex, taking the data of a poisoned one (each update is one map operation).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
