//! The TCP server: accepts connections into their pools (`Admission`: a pending pool for
//! connections before their `Hello`, whose oldest member is evicted when it is full; the
//! `max_connections` slots, taken only by a connection whose `Hello` was accepted; a count
//! per source IP), runs one task per connection (see `conn`) and shuts down gracefully: stop accepting, stop reading, finish
//! the requests in flight, close. Flushing the log is the caller's last step
//! ([`Engine::shutdown`](crate::engine::Engine::shutdown)) because the engine may outlive
//! one server (tests) and `shutdown` blocks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use omnistock::engine::{Engine, EngineConfig};
//! use omnistock::server::{Server, ServerConfig};
//!
//! let engine = Arc::new(Engine::start_in_memory(EngineConfig::default())?);
//! let mut config = ServerConfig::default();
//! config.listen = "127.0.0.1:0".parse()?;
//! let server = Server::bind(config, engine.clone()).await?;
//! let stop = server.shutdown_handle();
//! let running = tokio::spawn(server.run());
//! stop.shutdown();
//! running.await?;
//! engine.shutdown();
//! # Ok(()) }
//! ```

mod budget;
mod config;
mod conn;
pub mod convert;
mod dispatch;
mod feed_source;
mod heavy;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

pub use config::{ServerConfig, ServerError};
pub use conn::{role_of_token, CONNECTION_OVERHEAD_BYTES};

use crate::engine::Engine;
use dispatch::Ctx;

/// Counters of the server; `crate::metrics` exports them at scrape time.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now (handshaken or not).
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Handshakes refused for a missing or unknown token.
    pub auth_refused: AtomicU64,
    /// Handshakes refused unchecked because their source had too many failed ones.
    pub auth_throttled: AtomicU64,
    /// Connections closed for a malformed or oversized frame.
    pub protocol_errors: AtomicU64,
    /// Connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// Connections closed because the client did not read: nothing written within
    /// `write_timeout`, or more than `max_output_bytes` queued for it.
    pub slow_readers_closed: AtomicU64,
    /// Connections refused because `max_connections_per_source` were open from its IP.
    pub source_refused: AtomicU64,
    /// Connections that have not completed their `Hello` yet (their own pool).
    pub handshakes_pending: AtomicU64,
    /// Pending handshakes closed to make room for a newer one (`max_pending_handshakes`).
    pub handshakes_evicted: AtomicU64,
    /// TLS port: connections whose first bytes were plaintext (refused with 112).
    pub tls_plaintext_refused: AtomicU64,
    /// TLS port: TLS handshakes that failed (bad certificate, no client certificate, ...).
    pub tls_handshake_failures: AtomicU64,
    /// TLS port: TLS handshakes not done within `handshake_timeout`.
    pub tls_handshake_timeouts: AtomicU64,
    /// Plaintext port: connections that started a TLS handshake (closed).
    pub tls_on_plain_port: AtomicU64,
    /// Bytes all connections hold or have reserved now: answers and pushes not yet
    /// written, partial frames being read, and for each request in flight its body and an
    /// estimate of its answer (what `max_connections_memory_bytes` limits).
    pub connection_buffered_bytes: AtomicU64,
    /// The highest `connection_buffered_bytes` has been since start.
    pub connection_buffered_bytes_peak: AtomicU64,
    /// Request frames answered busy, unrun, because connection memory was over its budget
    /// (and their connection held other answers or requests, or the request was large).
    pub memory_busy: AtomicU64,
    /// Connections closed because a large frame they had begun found no room under
    /// `max_connections_memory_bytes` before its `frame_timeout`.
    pub memory_closed: AtomicU64,
    /// Request frames processed.
    pub requests: AtomicU64,
    /// Request frames that ran in one engine call together with other pipelined frames of
    /// their connection (read back to back).
    pub frames_grouped: AtomicU64,
    /// Operations processed.
    pub operations: AtomicU64,
    /// Connections that yielded with request frames still to take (their turn ended, not
    /// their pipeline): the more there are, the fewer frames each takes per turn
    /// (`conn::frames_per_turn`).
    pub busy_connections: AtomicU64,
    /// The places busy connections take turns in (`conn::BUSY_LANE_PERMITS`).
    pub(crate) busy_lane: conn::BusyLane,
}

/// Asks a running server to stop. Cloneable; `shutdown` is idempotent.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Stop accepting, finish in-flight requests, close connections; `run` then returns.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    ctx: Arc<Ctx>,
    admission: Arc<Admission>,
    local_addr: SocketAddr,
    shutdown_tx: Arc<watch::Sender<bool>>,
}

/// Decrements the open-connection gauge when a connection task ends (even by panic).
struct OpenGuard(Arc<ServerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// Validates `config` and binds its listen address (port 0 picks a free port).
    pub async fn bind(config: ServerConfig, engine: Arc<Engine>) -> Result<Server, ServerError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        if config.tokens.is_empty() {
            tracing::warn!(%local_addr, "no auth tokens configured: every client is admin (loopback only)");
        }
        let (tx, _) = watch::channel(false);
        let config = Arc::new(config);
        let stats = Arc::new(ServerStats::default());
        Ok(Server {
            listener,
            admission: Arc::new(Admission::new(config.clone(), stats.clone())),
            ctx: Arc::new(Ctx {
                engine,
                budget: Arc::new(budget::Budget::new(
                    stats.clone(),
                    config.max_connections_memory_bytes,
                    config.max_frame_bytes,
                )),
                config,
                stats,
                heavy: Arc::new(heavy::HeavyReads::start().map_err(ServerError::Thread)?),
            }),
            local_addr,
            shutdown_tx: Arc::new(tx),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.ctx.stats.clone()
    }

    /// A handle that stops [`run`](Server::run).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.shutdown_tx.clone(),
        }
    }

    /// Serves until the shutdown handle fires, then waits for every connection to finish
    /// its in-flight requests and close.
    pub async fn run(self) {
        let mut stop = self.shutdown_tx.subscribe();
        let mut conns = JoinSet::new();
        let stats = self.ctx.stats.clone();
        tracing::info!(addr = %self.local_addr, "serving");
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((sock, peer)) => self.admit(sock, peer.ip(), &mut conns),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(self.listener);
        tracing::info!(
            open = stats.connections_open.load(Ordering::Relaxed),
            "draining connections"
        );
        let deadline = self.ctx.config.shutdown_timeout;
        let drained = tokio::time::timeout(deadline, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = stats.connections_open.load(Ordering::Relaxed),
                deadline_ms = deadline.as_millis() as u64,
                "connections still open at the shutdown deadline: dropped"
            );
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
        tracing::info!("server stopped");
    }

    /// Admits an accepted socket into the handshake pool, or refuses it (per-source limit).
    /// `max_connections` is checked when the `Hello` is complete (see `conn::handshake`), so
    /// sockets that never send one take no slot of an authenticated client.
    fn admit(&self, sock: tokio::net::TcpStream, ip: IpAddr, conns: &mut JoinSet<()>) {
        let stats = &self.ctx.stats;
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(stats.clone());
        let source = match self.admission.enter_source(ip) {
            Ok(s) => s,
            Err(msg) => {
                stats.source_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%ip, "connection refused: per-source limit");
                conns.spawn(async move {
                    conn::refuse_connection(sock, msg).await;
                    drop(guard);
                });
                return;
            }
        };
        let admitted = Admitted {
            pending: self.admission.enter_pending(),
            source,
            admission: self.admission.clone(),
            ip,
        };
        let n = stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let ctx = self.ctx.clone();
        let stop = self.shutdown_tx.subscribe();
        if ctx.config.connections_on_arbiters {
            // Run the connection on an actor thread: its requests, the SKU actors' replies
            // and its socket IO then need no cross-thread wake-up. The socket is moved to
            // that thread's reactor. The JoinSet task only waits for it (shutdown drains).
            if let Ok(std_sock) = sock.into_std() {
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let engine = ctx.engine.clone();
                let i = usize::try_from(n).unwrap_or(0);
                let spawned = engine.spawn_on_arbiter(i, async move {
                    if let Ok(sock) = tokio::net::TcpStream::from_std(std_sock) {
                        conn::serve(sock, ctx, stop, admitted).await;
                    }
                    drop(done_tx);
                });
                conns.spawn(async move {
                    if spawned {
                        let _ = done_rx.await;
                    }
                    drop(guard);
                });
            }
            return;
        }
        conns.spawn(async move {
            conn::serve(sock, ctx, stop, admitted).await;
            drop(guard);
        });
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, inside this statement.
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

/// Locks a mutex, taking the data of a poisoned one (the maps below stay consistent: every
/// update is one map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection pools: pending handshakes (their own, smaller pool, oldest evicted when
/// full), established connections (`max_connections`) and connections per source IP.
/// std `Mutex`, not tokio's: each is held for one map operation, never across an await.
pub(crate) struct Admission {
    config: Arc<ServerConfig>,
    stats: Arc<ServerStats>,
    established: AtomicU64,
    next_id: AtomicU64,
    /// Pending handshakes by admission order (oldest first), each with its eviction signal.
    pending: Mutex<BTreeMap<u64, Arc<Notify>>>,
    /// Open connections per source IP (`max_connections_per_source`).
    sources: Arc<SourceLimit>,
    /// Failed handshakes (unknown token) per source IP in its current window.
    auth_failures: AuthThrottle,
}

/// Failed handshakes a source may make in one [`AUTH_FAILURE_WINDOW`] before its handshakes
/// are refused for the rest of the window (token guessing, 11,700 tries/s from one thread
/// before, becomes 20 a minute).
pub const AUTH_FAILURES_PER_SOURCE: u32 = 20;
/// The window of [`AUTH_FAILURES_PER_SOURCE`].
pub const AUTH_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Most sources whose failures are remembered at once (a bound on the table's memory:
/// about 64 B each); beyond it, windows that have ended are dropped first, and a new
/// source is counted only once there is room.
const MAX_AUTH_SOURCES: usize = 65_536;

/// One source's failed handshakes since `started`.
#[derive(Debug, Clone, Copy)]
struct AuthWindow {
    started: std::time::Instant,
    failures: u32,
}

/// Failed authentications per source IP: after [`AUTH_FAILURES_PER_SOURCE`] in one
/// [`AUTH_FAILURE_WINDOW`] the source is refused unchecked until its window ends; at most
/// [`MAX_AUTH_SOURCES`] sources remembered. The binary port has one, the HTTP API its own
/// (the HTTP endpoint starts before the server exists).
#[derive(Debug, Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, AuthWindow>>,
}

impl AuthThrottle {
    /// How long `ip` must still wait before its credentials are checked again, if it made
    /// [`AUTH_FAILURES_PER_SOURCE`] failed attempts in its current window.
    pub fn blocked(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let m = lock(&self.failures);
        let w = m.get(&ip)?;
        let left = AUTH_FAILURE_WINDOW.checked_sub(w.started.elapsed())?;
        (w.failures >= AUTH_FAILURES_PER_SOURCE).then_some(left)
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = std::time::Instant::now();
        let mut m = lock(&self.failures);
        if m.len() >= MAX_AUTH_SOURCES && !m.contains_key(&ip) {
            m.retain(|_, w| now.duration_since(w.started) < AUTH_FAILURE_WINDOW);
            if m.len() >= MAX_AUTH_SOURCES {
                return;
            }
        }
        let w = m.entry(ip).or_insert(AuthWindow {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= AUTH_FAILURE_WINDOW {
            *w = AuthWindow {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

impl Admission {
    fn new(config: Arc<ServerConfig>, stats: Arc<ServerStats>) -> Admission {
        let sources = SourceLimit::new(
            config.max_connections_per_source,
            config.per_source_limit_on_loopback,
        );
        Admission {
            config,
            stats,
            established: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            sources,
            auth_failures: AuthThrottle::default(),
        }
    }

    /// How long `ip` must still wait before its handshakes are checked again, if it made
    /// [`AUTH_FAILURES_PER_SOURCE`] failed ones in its current window.
    pub(crate) fn auth_blocked(&self, ip: IpAddr) -> Option<std::time::Duration> {
        self.auth_failures.blocked(ip)
    }

    /// Counts a failed handshake from `ip`.
    pub(crate) fn auth_failed(&self, ip: IpAddr) {
        self.auth_failures.failed(ip)
    }

    /// Counts a connection from `ip`, or says why it is refused.
    fn enter_source(&self, ip: IpAddr) -> Result<Option<SourceGuard>, String> {
        self.sources.enter(ip).map_err(|max| {
            format!(
                "{max} connections open from {ip}; at most {max} per source \
                 (max_connections_per_source)"
            )
        })
    }

    /// Enters the handshake pool; when it is full, the oldest pending handshake is told to
    /// close (a client that sends its `Hello` at once is never the oldest for long).
    fn enter_pending(self: &Arc<Self>) -> PendingTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut pending = lock(&self.pending);
        while pending.len() >= self.config.max_pending_handshakes {
            let Some((_, oldest)) = pending.pop_first() else {
                break;
            };
            // `notify_one` keeps a permit: the connection sees it even if not waiting yet.
            oldest.notify_one();
            self.stats
                .handshakes_evicted
                .fetch_add(1, Ordering::Relaxed);
        }
        pending.insert(id, evicted.clone());
        self.stats
            .handshakes_pending
            .store(pending.len() as u64, Ordering::Relaxed);
        PendingTicket {
            admission: self.clone(),
            id,
            evicted,
        }
    }

    /// Takes a `max_connections` slot for a connection whose `Hello` was accepted; `None`
    /// when all are taken.
    pub(crate) fn establish(self: &Arc<Self>) -> Option<Established> {
        let max = self.config.max_connections as u64;
        self.established
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Established(self.clone()))
    }
}

/// What an admitted connection holds: its place in the handshake pool (until its `Hello`
/// is accepted) and its count against its source.
pub(crate) struct Admitted {
    pub pending: PendingTicket,
    pub source: Option<SourceGuard>,
    pub admission: Arc<Admission>,
    /// The peer's address (failed handshakes are counted by it).
    pub ip: IpAddr,
}

/// A place in the handshake pool; leaving it (drop) frees the place.
pub(crate) struct PendingTicket {
    admission: Arc<Admission>,
    id: u64,
    evicted: Arc<Notify>,
}

impl PendingTicket {
    /// Resolves when this handshake was evicted to make room for a newer one.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        let mut pending = lock(&self.admission.pending);
        pending.remove(&self.id);
        self.admission
            .stats
            .handshakes_pending
            .store(pending.len() as u64, Ordering::Relaxed);
    }
}

/// A `max_connections` slot, freed on drop.
pub(crate) struct Established(Arc<Admission>);

impl Drop for Established {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections per source IP, at most `max` each: the binary port's
/// (`max_connections_per_source`) and the HTTP endpoint's (`http_max_connections_per_source`)
/// are two of these. Loopback sources are exempt unless `on_loopback`. Only sources with
/// connections open are remembered, so the map is bounded by the open connections. std
/// `Mutex`: held for one map operation, never across an await.
#[derive(Debug)]
pub struct SourceLimit {
    max: usize,
    on_loopback: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceLimit {
    /// At most `max` connections per source IP; loopback sources too if `on_loopback`.
    pub fn new(max: usize, on_loopback: bool) -> Arc<SourceLimit> {
        Arc::new(SourceLimit {
            max,
            on_loopback,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `ip` (`None`: a source the limit does not apply to);
    /// `Err(max)` when `max` are open from it already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Option<SourceGuard>, usize> {
        if ip.is_loopback() && !self.on_loopback {
            return Ok(None);
        }
        let mut open = lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return Err(self.max);
        }
        *n += 1;
        Ok(Some(SourceGuard {
            limit: self.clone(),
            ip,
        }))
    }

    /// Connections counted from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.open).get(&ip).copied().unwrap_or(0)
    }
}

/// One connection counted against its source IP, uncounted on drop.
#[derive(Debug)]
pub struct SourceGuard {
    limit: Arc<SourceLimit>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.limit.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SourceLimit;
    use std::net::IpAddr;

    #[test]
    fn a_source_gets_at_most_its_limit_and_its_place_back_when_one_closes() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let lo: IpAddr = "127.0.0.2".parse().unwrap();
        let limit = SourceLimit::new(2, false);
        let g1 = limit.enter(a).unwrap();
        let _g2 = limit.enter(a).unwrap();
        assert_eq!(limit.enter(a).err(), Some(2));
        assert!(
            limit.enter(b).unwrap().is_some(),
            "another source has its own"
        );
        assert!(limit.enter(lo).unwrap().is_none(), "loopback exempt here");
        drop(g1);
        assert_eq!(limit.open_from(a), 1);
        assert!(limit.enter(a).is_ok());
        let strict = SourceLimit::new(1, true);
        let _g = strict.enter(lo).unwrap();
        assert_eq!(
            strict.enter(lo).err(),
            Some(1),
            "loopback counted when asked"
        );
    }
}
