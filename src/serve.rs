//! `omnistock serve`: opens the durable engine, runs the TCP server until SIGTERM/SIGINT,
//! then shuts down gracefully (stop accepting, finish in-flight requests, flush the log).
//! Settings come from an optional TOML file, overridden by flags; an invalid setting is an
//! error naming it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use omnistock::engine::{Engine, PersistConfig};
use omnistock::protocol::Role;
use omnistock::server::{Server, ServerConfig};
use serde::Deserialize;

/// Flags of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Address of the binary protocol [default: 127.0.0.1:7878].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory of the write-ahead log and checkpoints [default: ./omnistock-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the admin HTTP endpoint [default: 127.0.0.1:9878]. Accepted and validated
    /// now; the metrics endpoint arrives with the metrics issue.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// An auth token and its role (checkout, adapter, admin); repeatable. Without any, the
    /// server accepts every client as admin, and only on a loopback address.
    #[arg(long = "token", value_name = "TOKEN:ROLE")]
    tokens: Vec<String>,
    /// TOML settings file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The TOML file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    admin_listen: Option<String>,
    #[serde(default)]
    tokens: Vec<FileToken>,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    token: String,
    role: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_batch_ops: Option<usize>,
    max_lines_per_reservation: Option<usize>,
    idle_timeout_ms: Option<u64>,
}

fn parse_addr(setting: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("invalid setting {setting}: {s:?} is not an ip:port address"))
}

fn add_token(cfg: &mut ServerConfig, token: &str, role: &str) -> anyhow::Result<()> {
    let Some(r) = Role::parse(role) else {
        bail!("invalid setting token: role {role:?} must be checkout, adapter or admin");
    };
    if token.is_empty() {
        bail!("invalid setting token: empty token");
    }
    cfg.tokens.insert(token.to_string(), r);
    Ok(())
}

/// Server config, data dir and admin address from file and flags.
fn settings(args: Args) -> anyhow::Result<(ServerConfig, PathBuf, SocketAddr)> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let mut cfg = ServerConfig::default();
    if let Some(l) = &file.listen {
        cfg.listen = parse_addr("listen", l)?;
    }
    let mut admin = parse_addr("admin_listen", "127.0.0.1:9878")?;
    if let Some(a) = &file.admin_listen {
        admin = parse_addr("admin_listen", a)?;
    }
    for t in &file.tokens {
        add_token(&mut cfg, &t.token, &t.role)?;
    }
    let l = &file.limits;
    cfg.max_connections = l.max_connections.unwrap_or(cfg.max_connections);
    cfg.max_in_flight = l.max_in_flight.unwrap_or(cfg.max_in_flight);
    cfg.max_frame_bytes = l.max_frame_bytes.unwrap_or(cfg.max_frame_bytes);
    cfg.max_batch_ops = l.max_batch_ops.unwrap_or(cfg.max_batch_ops);
    cfg.max_lines_per_reservation = l
        .max_lines_per_reservation
        .unwrap_or(cfg.max_lines_per_reservation);
    if let Some(ms) = l.idle_timeout_ms {
        cfg.idle_timeout = Duration::from_millis(ms);
    }
    // Flags override the file.
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(a) = args.admin_listen {
        admin = a;
    }
    for t in &args.tokens {
        let Some((token, role)) = t.rsplit_once(':') else {
            bail!("invalid setting --token {t:?}: expected TOKEN:ROLE");
        };
        add_token(&mut cfg, token, role)?;
    }
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./omnistock-data"));
    cfg.validate()?;
    Ok((cfg, data_dir, admin))
}

/// Resolves on SIGINT or SIGTERM.
async fn signal() -> anyhow::Result<()> {
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
    let (cfg, data_dir, admin) = settings(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let engine = Arc::new(
            Engine::open(PersistConfig::new(&data_dir))
                .await
                .with_context(|| format!("opening {}", data_dir.display()))?,
        );
        tracing::info!(%admin, "admin endpoint reserved (metrics arrive with the metrics issue)");
        let server = Server::bind(cfg, engine.clone()).await?;
        let stop = server.shutdown_handle();
        let running = tokio::spawn(server.run());
        let waited = signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        stop.shutdown();
        running.await.context("server task")?;
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .context("engine shutdown")?;
        tracing::info!("log flushed, bye");
        waited
    })
}
