//! `omnistock serve`: binds the HTTP endpoint (admin paths and the `/v1` API), opens the durable engine (recovery), runs the
//! TCP server and the webhook deliveries (docs/webhooks.md) until SIGTERM/SIGINT (SIGHUP: re-read the TLS files, resume
//! dead-lettered webhooks), then shuts down gracefully (not ready, stop accepting,
//! finish in-flight requests, flush the log). Settings: see `settings`.
//!
//! Order matters for operations: the admin endpoint comes first so `/healthz` answers and
//! `/readyz` says 503 while recovery runs; the engine is handed to it only once `Engine::open`
//! has returned, which is when `/readyz` turns 200.

use std::sync::Arc;

use anyhow::Context;
use omnistock::engine::Engine;
use omnistock::http::{HttpConfig, HttpServer, Sources};
use omnistock::metrics;
use omnistock::server::Server;
use omnistock::webhooks::Webhooks;

use crate::settings;

pub use settings::Args;

/// SIGINT, SIGTERM and SIGHUP handlers, installed before anything listens: a signal that
/// comes during start-up (recovery, binding) is then a clean stop (or a reload) once the
/// server runs, never the default action that kills the process.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime).
    pub(crate) fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Waits for SIGINT or SIGTERM, running `on_hangup` at each SIGHUP meanwhile; an error
    /// if the SIGHUP handler is gone.
    async fn wait_running(&mut self, on_hangup: impl Fn()) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.int.recv() => return Ok(()),
                _ = self.term.recv() => return Ok(()),
                up = self.hup.recv() => match up {
                    Some(()) => on_hangup(),
                    None => anyhow::bail!("SIGHUP handler closed"),
                },
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
/// (SIGHUP keeps its default action here: it is handled only by `serve`.)
pub(crate) async fn signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// The HTTP endpoint (metrics, health, readiness, the `/v1` API) running beside a server.
pub(crate) struct Admin {
    /// What scrapes and readiness read; hand it the engine and the server when they exist.
    pub sources: Arc<Sources>,
    /// The bound address.
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Installs the metrics recorder and starts the HTTP endpoint on `listen` (before recovery,
/// so `/healthz` answers and `/readyz` says 503 while it runs).
pub(crate) async fn start_admin(
    listen: std::net::SocketAddr,
    config: HttpConfig,
) -> anyhow::Result<Admin> {
    let handle = metrics::install().context("installing the metrics recorder")?;
    let sources = Sources::new();
    let admin = HttpServer::bind(listen, sources.clone(), handle, config)
        .await
        .with_context(|| format!("HTTP endpoint on {listen}"))?;
    let addr = admin.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(admin.run(async move {
        let _ = stopped.await;
    }));
    Ok(Admin {
        sources,
        addr,
        stop,
        task,
    })
}

/// Stops in the order operations rely on: not ready, the server (finishing requests in
/// flight; it must stop before the engine, whose threads run its connections), the engine
/// (flushing the log), then the admin endpoint.
pub(crate) async fn shut_down(
    admin: Admin,
    server: omnistock::server::ShutdownHandle,
    running: tokio::task::JoinHandle<()>,
    engine: Arc<Engine>,
) -> anyhow::Result<()> {
    admin.sources.set_stopping();
    server.shutdown();
    running.await.context("server task")?;
    // Read before the engine stops (then every write answers "shutting down").
    let log_failed = match engine.writable() {
        Err(omnistock::engine::EngineError::Storage(m)) => Some(m),
        _ => None,
    };
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .context("engine shutdown")?;
    let _ = admin.stop.send(());
    admin.task.await.context("admin task")?;
    // A stop after a log failure is not a clean stop: exit non-zero so a supervisor sees it.
    match log_failed {
        Some(m) => anyhow::bail!("stopped after a log failure (writes had stopped): {m}"),
        None => Ok(()),
    }
}

/// What `serve` does at SIGHUP: re-read the TLS files of each port that has TLS (the
/// identity in use stays when they are bad: docs/operations.md) and resume dead-lettered
/// webhook endpoints (docs/webhooks.md).
struct OnHangup {
    /// The TLS identity of each port (`binary`, `http`) that runs TLS.
    tls: Vec<(&'static str, omnistock::tls::ServerTls)>,
    resumer: omnistock::webhooks::Resumer,
}

impl OnHangup {
    fn run(&self) {
        for (port, tls) in &self.tls {
            let ok = reload_tls(port, tls);
            metrics::tls_reload(port, ok);
        }
        let resumed = self.resumer.resume_dead_lettered();
        tracing::info!(?resumed, "SIGHUP: dead-lettered webhook endpoints resumed");
    }
}

/// Re-reads one port's TLS files; logs the outcome (an error names the file). Whether the
/// new identity is in use.
fn reload_tls(port: &'static str, tls: &omnistock::tls::ServerTls) -> bool {
    let cert = tls.files().cert.display().to_string();
    match tls.reload() {
        Ok(()) => {
            tracing::info!(port, %cert, "SIGHUP: TLS certificate reloaded, used for new handshakes");
            true
        }
        Err(e) => {
            tracing::error!(
                port,
                error = %e,
                "SIGHUP: TLS reload failed, the certificate in use stays"
            );
            false
        }
    }
}

/// Runs `omnistock serve`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let s = settings::resolve(args)?;
    settings::init_logging(s.log_format, &s.log_filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let mut signals = Signals::install()?;
        let tls: Vec<_> = [("binary", &s.server.tls), ("http", &s.http.tls)]
            .into_iter()
            .filter_map(|(port, t)| t.clone().map(|t| (port, t)))
            .collect();
        let admin = start_admin(s.admin_listen, s.http.clone()).await?;
        let sources = admin.sources.clone();
        let data_dir = s.persist.data_dir.clone();
        let engine = Arc::new(
            Engine::open(s.persist)
                .await
                .with_context(|| format!("opening {}", data_dir.display()))?,
        );
        sources.set_engine(engine.clone());
        let server = Server::bind(s.server, engine.clone()).await?;
        sources.set_server(server.stats());
        let stop = server.shutdown_handle();
        let running = tokio::spawn(server.run());
        let webhooks = Webhooks::start(engine.clone(), s.webhooks)
            .map_err(|m| anyhow::anyhow!("invalid setting {m}"))?;
        let on_hangup = OnHangup {
            tls,
            resumer: webhooks.resumer(),
        };
        let nats = match s.nats {
            Some(cfg) => Some(
                omnistock::nats::Nats::start(engine.clone(), cfg)
                    .map_err(|m| anyhow::anyhow!("invalid setting {m}"))?,
            ),
            None => None,
        };
        let waited = signals.wait_running(|| on_hangup.run()).await;
        tracing::info!("shutting down: finishing requests in flight");
        // Deliveries stop first: they read the engine, and their positions are stored.
        webhooks.shutdown().await;
        if let Some(n) = nats {
            n.shutdown().await;
        }
        shut_down(admin, stop, running, engine).await?;
        tracing::info!("log flushed, bye");
        waited
    })
}
