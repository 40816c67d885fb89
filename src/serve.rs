//! `omnistock serve`: binds the HTTP endpoint (admin paths and the `/v1` API), opens the durable engine (recovery), runs the
//! TCP server and the webhook deliveries (docs/webhooks.md) until SIGTERM/SIGINT, then shuts down gracefully (not ready, stop accepting,
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

/// SIGINT and SIGTERM handlers, installed before anything listens: a signal that comes
/// during start-up (recovery, binding) is then a clean stop once the server runs, never the
/// default action that kills the process.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs both handlers (inside a tokio runtime).
    pub(crate) fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// Resolves on SIGINT or SIGTERM (also one that came before this call).
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn signal() -> anyhow::Result<()> {
    Signals::install()?.wait().await;
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

/// Resumes dead-lettered webhook endpoints at each SIGHUP (docs/webhooks.md); returns only
/// if the handler cannot be installed.
async fn resume_on_sighup(resumer: omnistock::webhooks::Resumer) -> anyhow::Error {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => return anyhow::Error::new(e).context("SIGHUP handler"),
    };
    while hup.recv().await.is_some() {
        let resumed = resumer.resume_dead_lettered();
        tracing::info!(?resumed, "SIGHUP: dead-lettered webhook endpoints resumed");
    }
    anyhow::anyhow!("SIGHUP handler closed")
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
        let resumer = webhooks.resumer();
        let nats = match s.nats {
            Some(cfg) => Some(
                omnistock::nats::Nats::start(engine.clone(), cfg)
                    .map_err(|m| anyhow::anyhow!("invalid setting {m}"))?,
            ),
            None => None,
        };
        let waited = tokio::select! {
            () = signals.wait() => Ok(()),
            e = resume_on_sighup(resumer) => Err(e),
        };
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
