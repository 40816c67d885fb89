//! `omnistock serve`: binds the admin endpoint, opens the durable engine (recovery), runs the
//! TCP server until SIGTERM/SIGINT, then shuts down gracefully (not ready, stop accepting,
//! finish in-flight requests, flush the log). Settings: see `settings`.
//!
//! Order matters for operations: the admin endpoint comes first so `/healthz` answers and
//! `/readyz` says 503 while recovery runs; the engine is handed to it only once `Engine::open`
//! has returned, which is when `/readyz` turns 200.

use std::sync::Arc;

use anyhow::Context;
use omnistock::admin::AdminServer;
use omnistock::engine::Engine;
use omnistock::metrics::{self, Sources};
use omnistock::server::Server;

use crate::settings::{self, LogFormat};

pub use settings::Args;

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("SIGINT handler")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Runs `omnistock serve`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let s = settings::resolve(args)?;
    crate::init_logging(s.log_format == LogFormat::Json, &s.log_filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let handle = metrics::install().context("installing the metrics recorder")?;
        let sources = Sources::new();
        let admin = AdminServer::bind(s.admin_listen, sources.clone(), handle).await?;
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin.run(async move {
            let _ = admin_stopped.await;
        }));
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
        let waited = signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        sources.set_stopping();
        stop.shutdown();
        running.await.context("server task")?;
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .context("engine shutdown")?;
        let _ = admin_stop.send(());
        admin_task.await.context("admin task")?;
        tracing::info!("log flushed, bye");
        waited
    })
}
