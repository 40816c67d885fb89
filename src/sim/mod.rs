//! The checkout simulation over the client: workloads, the catalog loader, the driver
//! (connections, pipelining, batching, open-loop rate, warm-up, progress line), the report,
//! the end-of-run checks and feed subscribers, against an omnistock server or a
//! [`ReserveTarget`] plugged in from outside. `omnistock demo` runs it; the load generator
//! (the `omnistock-load` crate under load/: its flags, the Redis comparison target and its
//! tests) is built on it, so what the benchmarks measure is what the demo shows and the
//! tests check. It uses only the client, never the engine: the server binary links no load
//! generator crate (no Redis client).
//!
//! ```no_run
//! # async fn demo() -> Result<(), omnistock::sim::LoadError> {
//! use std::time::Duration;
//! use omnistock::sim::{self, CatalogSpec, LoadConfig, TargetSpec};
//!
//! let spec = CatalogSpec::generic(1_000, 2, 2, 1_000)?;
//! let target = TargetSpec::Omnistock { addr: "127.0.0.1:7878".into(), token: String::new(), tls: None };
//! sim::load_catalog(&target, &spec).await?;
//! let mut cfg = LoadConfig::new(target, sim::preset(sim::WorkloadKind::Checkout, &spec));
//! cfg.duration = Duration::from_secs(5);
//! let out = sim::run(cfg).await?;
//! println!("{}", out.report.human());
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod check;
mod driver;
pub mod feed;
pub mod report;
pub mod target;
pub mod workload;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use catalog::{CatalogSpec, LoadedCatalog, Stock};
pub use check::{check, CheckReport, Ledger, SkuFacts, SkuLedger, Snapshot};
pub use driver::{run, RunOutcome};
pub use report::Report;
pub use target::{Cart, ReserveConn, ReserveTarget};
pub use workload::{sku_name, CartLines, Workload, WorkloadKind};

use crate::client::{Client, ClientConfig, ClientError};

/// Why a load run could not run (a failed *check* is not an error: see [`CheckReport`]).
#[derive(Debug, Error)]
pub enum LoadError {
    /// A setting is invalid; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// The target could not be reached.
    #[error("connect: {0}")]
    Connect(String),
    /// An omnistock call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A call to a [`ReserveTarget`] failed.
    #[error("{target}: {message}")]
    Target {
        /// The target's name (`redis`).
        target: &'static str,
        /// What failed.
        message: String,
    },
    /// The catalog could not be created.
    #[error("catalog: {0}")]
    Catalog(String),
}

/// What to load.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// An omnistock server.
    Omnistock {
        /// `host:port`, loopback only.
        addr: String,
        /// Auth token (empty without tokens); the catalog loader needs the admin role.
        token: String,
        /// TLS to the server (`--tls --ca-file`); `None`: plain TCP.
        tls: Option<crate::tls::ClientTls>,
    },
    /// A reservation-only target (reserve and flash-sale workloads): the load crate's Redis.
    Other(Arc<dyn ReserveTarget>),
}

impl TargetSpec {
    /// `omnistock`, or the other target's name (`redis`).
    pub fn name(&self) -> &'static str {
        match self {
            TargetSpec::Omnistock { .. } => "omnistock",
            TargetSpec::Other(t) => t.name(),
        }
    }

    /// The address or URL.
    pub fn addr(&self) -> &str {
        match self {
            TargetSpec::Omnistock { addr, .. } => addr,
            TargetSpec::Other(t) => t.addr(),
        }
    }

    /// Refuses anything but a loopback address: load runs only ever target this machine.
    pub fn require_loopback(&self) -> Result<(), LoadError> {
        let hostport = match self {
            TargetSpec::Omnistock { addr, .. } => addr.clone(),
            TargetSpec::Other(t) => t.host_port()?,
        };
        let addrs: Vec<SocketAddr> = hostport
            .to_socket_addrs()
            .map_err(|e| LoadError::Config(format!("target {hostport:?}: {e}")))?
            .collect();
        let loopback = |ip: IpAddr| ip.is_loopback();
        if addrs.is_empty() || !addrs.iter().all(|a| loopback(a.ip())) {
            return Err(LoadError::Config(format!(
                "target {hostport:?} is not a loopback address: load runs only target this machine (127.0.0.1)"
            )));
        }
        Ok(())
    }

    /// A connected omnistock client.
    pub async fn omnistock_client(&self) -> Result<Client, LoadError> {
        match self {
            TargetSpec::Omnistock { addr, token, tls } => {
                let mut c = ClientConfig::new(addr.clone()).token(token.clone());
                c.tls = tls.clone();
                c.client_name = "omnistock-load".into();
                Client::connect(c)
                    .await
                    .map_err(|e| LoadError::Connect(format!("omnistock {addr}: {e}")))
            }
            TargetSpec::Other(_) => Err(LoadError::Config("not an omnistock target".into())),
        }
    }
}

/// Where the progress line goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nowhere.
    Off,
    /// Standard output.
    Stdout,
    /// Standard error (when stdout carries JSON).
    Stderr,
}

/// Most connections.
pub const MAX_CONNECTIONS: u32 = 10_000;
/// Most requests in flight per connection (the server's default in-flight limit).
pub const MAX_DEPTH: u32 = 1_024;
/// Most operations per request frame (the server's default batch limit).
pub const MAX_BATCH: u32 = 8_190;
/// Longest run (warm-up + measured), so a run always stops by itself.
pub const MAX_RUN: Duration = Duration::from_secs(3_600);

/// A load run's settings.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// What to load.
    pub target: TargetSpec,
    /// What to send.
    pub workload: Workload,
    /// Connections. Default 50.
    pub connections: u32,
    /// Requests in flight per connection (concurrent flows). Default 1.
    pub depth: u32,
    /// Flows per request frame. Default 1.
    pub batch: u32,
    /// Measured time. Default 10 s.
    pub duration: Duration,
    /// Warm-up before it (run, not measured). Default 1 s.
    pub warmup: Duration,
    /// Stop after this many flows (checkouts and receipts), if set.
    pub max_flows: Option<u64>,
    /// Open loop: this many flows per second, latency measured from the intended send time.
    pub rate: Option<f64>,
    /// Progress line every second.
    pub progress: Progress,
    /// Run the end-of-run checks. Default true.
    pub check: bool,
    /// Seed of the flow generators.
    pub seed: u64,
    /// Feed subscribers running beside the load (omnistock only): every ATP change, live;
    /// the report gives their acknowledgement-to-arrival latency. Default 0.
    pub subscribers: u32,
    /// SKU prefixes the subscribers filter on, assigned round robin (empty: every SKU).
    pub subscriber_prefixes: Vec<String>,
}

impl LoadConfig {
    /// Defaults for `target` and `workload`.
    pub fn new(target: TargetSpec, workload: Workload) -> LoadConfig {
        LoadConfig {
            target,
            workload,
            connections: 50,
            depth: 1,
            batch: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            max_flows: None,
            rate: None,
            progress: Progress::Off,
            check: true,
            seed: 1,
            subscribers: 0,
            subscriber_prefixes: Vec::new(),
        }
    }

    /// Checks ranges and target support; the error names the flag.
    pub fn validate(&self) -> Result<(), LoadError> {
        const MAX_SUBSCRIBERS: u32 = 1_000;
        let cfg = |m: String| Err(LoadError::Config(m));
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return cfg(format!("--connections must be 1..={MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return cfg(format!("--depth must be 1..={MAX_DEPTH}"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return cfg(format!("--batch must be 1..={MAX_BATCH}"));
        }
        if self.duration.is_zero() || self.duration + self.warmup > MAX_RUN {
            return cfg(format!(
                "--duration must be positive and --warmup + --duration at most {} s",
                MAX_RUN.as_secs()
            ));
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && (1.0..=100_000_000.0).contains(&r)) {
                return cfg("--rate must be 1..=100000000 flows per second".into());
            }
        }
        if self.max_flows == Some(0) {
            return cfg("--ops must be at least 1".into());
        }
        if self.subscribers > MAX_SUBSCRIBERS {
            return cfg(format!("--subscribers must be 0..={MAX_SUBSCRIBERS}"));
        }
        if let TargetSpec::Other(t) = &self.target {
            if self.subscribers > 0 {
                return cfg(format!(
                    "--subscribers needs --target omnistock ({} has no feed)",
                    t.name()
                ));
            }
        }
        self.workload.validate()?;
        if let TargetSpec::Other(t) = &self.target {
            let w = &self.workload;
            if w.fulfil_pct + w.release_pct + w.expire_pct + w.restock_pct > 0 {
                return cfg(format!(
                    "--target {} runs reservations only: use --workload reserve or flash-sale (no --fulfil, --release, --expire, --restock)",
                    t.name()
                ));
            }
        }
        self.target.require_loopback()
    }
}

/// The workload preset `kind` over the catalog `spec`: reserve (kept open, long TTL),
/// checkout (60% fulfilled, 30% released, 10% left to expire after 1 s), flash-sale (every
/// reservation fulfilled) and restock (checkout plus 10% receipts of 5 units).
pub fn preset(kind: WorkloadKind, spec: &CatalogSpec) -> Workload {
    let (fulfil_pct, release_pct, expire_pct, restock_pct) = match kind {
        WorkloadKind::Reserve => (0, 0, 0, 0),
        WorkloadKind::Checkout => (60, 30, 10, 0),
        WorkloadKind::FlashSale => (100, 0, 0, 0),
        WorkloadKind::Restock => (60, 30, 10, 10),
    };
    Workload {
        kind,
        skus: spec.skus,
        channels: spec.channel_ids(),
        zipf: None,
        cart_lines: CartLines::fixed(1),
        qty: 1,
        fulfil_pct,
        release_pct,
        expire_pct,
        restock_pct,
        restock_qty: 5,
        locations: spec.location_ids(),
        ttl_ms: 600_000,
        expire_ttl_ms: 1_000,
    }
}

/// Creates the catalog on the target (omnistock: locations, channels, stock through the
/// protocol; another target: its own way, e.g. Redis's one stock hash per SKU).
pub async fn load_catalog(
    target: &TargetSpec,
    spec: &CatalogSpec,
) -> Result<LoadedCatalog, LoadError> {
    target.require_loopback()?;
    match target {
        TargetSpec::Omnistock { .. } => {
            let client = target.omnistock_client().await?;
            catalog::load(&client, spec).await
        }
        TargetSpec::Other(other) => {
            let t = std::time::Instant::now();
            let operations = other.load_catalog(spec).await?;
            Ok(LoadedCatalog {
                operations,
                seconds: t.elapsed().as_secs_f64(),
            })
        }
    }
}
