//! The TCP server: accepts connections, enforces the connection limit, runs one task per
//! connection (see `conn`) and shuts down gracefully: stop accepting, stop reading, finish
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

mod config;
mod conn;
pub mod convert;
mod dispatch;
mod feed_source;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{ServerConfig, ServerError};

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
    /// Connections closed for a malformed or oversized frame.
    pub protocol_errors: AtomicU64,
    /// Connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// Connections closed because the client did not read within `write_timeout`.
    pub slow_readers_closed: AtomicU64,
    /// Request frames processed.
    pub requests: AtomicU64,
    /// Operations processed.
    pub operations: AtomicU64,
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
        Ok(Server {
            listener,
            ctx: Arc::new(Ctx {
                engine,
                config: Arc::new(config),
                stats: Arc::new(ServerStats::default()),
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
                    Ok((sock, _peer)) => self.admit(sock, &mut conns),
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

    fn admit(&self, sock: tokio::net::TcpStream, conns: &mut JoinSet<()>) {
        let stats = &self.ctx.stats;
        let open = stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(stats.clone());
        let max = self.ctx.config.max_connections as u64;
        if open >= max {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            let msg = format!("{max} connections open; at most {max}");
            conns.spawn(async move {
                conn::refuse_connection(sock, msg).await;
                drop(guard);
            });
            return;
        }
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
                        conn::serve(sock, ctx, stop).await;
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
            conn::serve(sock, ctx, stop).await;
            drop(guard);
        });
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, inside this statement.
    let _ = rx.wait_for(|s| *s).await.is_ok();
}
