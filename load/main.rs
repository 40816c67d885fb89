//! `omnistock-load`: the load generator binary. It only parses flags and calls the
//! `omnistock_load` library (catalog loader, driver, report, checks, the Redis target); load/README.md documents
//! every flag. Exit status: 0 when the run's checks pass, 1 on an error, 2 on a bad flag,
//! 3 when an end-of-run check fails.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use omnistock_load::{
    self as loadgen, CartLines, CatalogSpec, LoadConfig, LoadError, Progress, RedisTarget,
    TargetSpec, WorkloadKind,
};

/// Load generator for omnistock (and Redis, for comparison). Targets 127.0.0.1 only.
// The doc comment, not a bare `about`: the help's first line stays this sentence (the package
// description, load/Cargo.toml, is longer).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the catalog (unless --no-catalog), run a workload, report, check.
    Run(Box<RunArgs>),
    /// Only create the catalog (locations, channels, stock), batched through the protocol.
    Catalog(Box<CatalogArgs>),
}

#[derive(Args)]
struct TargetArgs {
    /// omnistock or redis.
    #[arg(long, default_value = "omnistock")]
    target: String,
    /// omnistock server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,
    /// omnistock auth token (the catalog loader needs an admin token).
    #[arg(long, default_value = "")]
    token: String,
    /// Speak TLS to omnistock (needs --ca-file).
    #[arg(long)]
    tls: bool,
    /// PEM CA file of the server's certificate (implies --tls).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Name the server's certificate must be for [default: the host of --addr].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// PEM client certificate chain, for a server started with --tls-client-ca (with
    /// --key; needs --ca-file).
    #[arg(long, value_name = "FILE")]
    cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// Redis URL for --target redis (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[derive(Args)]
struct CatalogFlags {
    /// SKUs SKU-0000000.. [default: 10000; flash-sale: 1].
    #[arg(long)]
    skus: Option<u32>,
    /// Locations loc-000.. (1..=64).
    #[arg(long, default_value_t = 2)]
    locations: u32,
    /// Channels ch-000.., each sourcing from every location (1..=1000).
    #[arg(long, default_value_t = 2)]
    channels: u32,
    /// Units of each SKU at each location [default: reserve 1000000, checkout and restock
    /// 1000, flash-sale 5000].
    #[arg(long)]
    stock: Option<u32>,
}

#[derive(Args)]
struct CatalogArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    catalog: CatalogFlags,
    /// Workload whose default --skus/--stock to use.
    #[arg(long, default_value = "checkout")]
    workload: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    catalog: CatalogFlags,
    /// Use the catalog already on the target (same SKU names) instead of loading it.
    #[arg(long)]
    no_catalog: bool,
    /// reserve, checkout, flash-sale or restock.
    #[arg(long, default_value = "checkout")]
    workload: String,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: u32,
    /// Requests in flight per connection (pipeline depth).
    #[arg(long, default_value_t = 1)]
    depth: u32,
    /// Logical clients in total: sets --depth to ceil(clients / connections) [flash-sale
    /// default: 1000].
    #[arg(long)]
    clients: Option<u32>,
    /// Operations per request frame (batch size).
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds: run but not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many flows (checkouts + receipts), or at the deadline.
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop: flows per second, latency measured from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Lines per cart: N, A-B (uniform) or N:WEIGHT,N:WEIGHT,...
    #[arg(long, default_value = "1")]
    cart_lines: String,
    /// Units per line.
    #[arg(long, default_value_t = 1)]
    qty: u32,
    /// SKU popularity Zipf exponent (absent: uniform).
    #[arg(long)]
    zipf: Option<f64>,
    /// Percent of reservations fulfilled [preset].
    #[arg(long)]
    fulfil: Option<u32>,
    /// Percent of reservations released [preset].
    #[arg(long)]
    release: Option<u32>,
    /// Percent of reservations left to expire [preset].
    #[arg(long)]
    expire: Option<u32>,
    /// Percent of flows that are stock receipts [preset].
    #[arg(long)]
    restock: Option<u32>,
    /// Units per receipt.
    #[arg(long, default_value_t = 5)]
    restock_qty: u32,
    /// Hold time of reservations not meant to expire, ms.
    #[arg(long, default_value_t = 600_000)]
    ttl_ms: u64,
    /// Hold time of reservations left to expire, ms.
    #[arg(long, default_value_t = 1_000)]
    expire_ttl_ms: u64,
    /// Seed of the flow generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Feed subscribers beside the load (omnistock only): each receives every ATP change;
    /// the report gives acknowledgement-to-subscriber latency and events per second.
    #[arg(long, default_value_t = 0)]
    subscribers: u32,
    /// Comma-separated SKU prefixes the subscribers filter on, round robin (e.g.
    /// SKU-00000,...,SKU-00009 gives each a tenth of 100,000 SKUs); default every SKU.
    #[arg(long, value_delimiter = ',')]
    subscriber_prefixes: Vec<String>,
    /// Print the final report as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Skip the end-of-run checks.
    #[arg(long)]
    no_check: bool,
}

/// The TLS settings of `--tls`, `--ca-file`, `--server-name`, `--cert` and `--key`.
fn client_tls(t: &TargetArgs) -> Result<Option<omnistock::tls::ClientTls>, LoadError> {
    let cert_key = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err(LoadError::Config("--cert and --key go together".into())),
    };
    let wanted = t.tls || t.ca_file.is_some() || cert_key.is_some();
    match &t.ca_file {
        Some(ca) => omnistock::tls::ClientTls::new(ca, t.server_name.clone(), cert_key)
            .map(Some)
            .map_err(|e| LoadError::Config(format!("TLS: {e}"))),
        None if wanted => Err(LoadError::Config(
            "--tls, --cert and --key need --ca-file FILE (the CA of the server's certificate)"
                .into(),
        )),
        None => Ok(None),
    }
}

fn target(t: &TargetArgs) -> Result<TargetSpec, LoadError> {
    match t.target.as_str() {
        "omnistock" => Ok(TargetSpec::Omnistock {
            addr: t.addr.clone(),
            token: t.token.clone(),
            tls: client_tls(t)?,
        }),
        "redis" => Ok(RedisTarget::spec(t.redis_url.clone())),
        other => Err(LoadError::Config(format!(
            "--target {other:?}: expected omnistock or redis"
        ))),
    }
}

fn spec(kind: WorkloadKind, c: &CatalogFlags) -> Result<CatalogSpec, LoadError> {
    let (skus, stock) = match kind {
        WorkloadKind::Reserve => (10_000, 1_000_000),
        WorkloadKind::Checkout | WorkloadKind::Restock => (10_000, 1_000),
        WorkloadKind::FlashSale => (1, 5_000),
    };
    CatalogSpec::generic(
        c.skus.unwrap_or(skus),
        c.locations,
        c.channels,
        c.stock.unwrap_or(stock),
    )
}

fn seconds(flag: &str, s: f64) -> Result<Duration, LoadError> {
    if !(s.is_finite() && (0.0..=3_600.0).contains(&s)) {
        return Err(LoadError::Config(format!(
            "--{flag} must be 0..=3600 seconds"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

fn config(a: &RunArgs) -> Result<(LoadConfig, CatalogSpec), LoadError> {
    let kind = WorkloadKind::parse(&a.workload)?;
    let target = target(&a.target)?;
    let spec = spec(kind, &a.catalog)?;
    let mut w = loadgen::preset(kind, &spec);
    let redis = matches!(target, TargetSpec::Other(_));
    // Redis runs reservations only: the presets' follow-ups default to 0 there.
    let share = |flag: Option<u32>, preset: u32| flag.unwrap_or(if redis { 0 } else { preset });
    w.fulfil_pct = share(a.fulfil, w.fulfil_pct);
    w.release_pct = share(a.release, w.release_pct);
    w.expire_pct = share(a.expire, w.expire_pct);
    w.restock_pct = share(a.restock, w.restock_pct);
    w.restock_qty = a.restock_qty;
    w.cart_lines = CartLines::parse(&a.cart_lines)?;
    w.qty = a.qty;
    w.zipf = a.zipf;
    w.ttl_ms = a.ttl_ms;
    w.expire_ttl_ms = a.expire_ttl_ms;
    let mut cfg = LoadConfig::new(target, w);
    cfg.connections = a.connections;
    cfg.depth = a.depth;
    let clients = a
        .clients
        .or((kind == WorkloadKind::FlashSale).then_some(1_000));
    if let Some(n) = clients {
        if n == 0 {
            return Err(LoadError::Config("--clients must be at least 1".into()));
        }
        cfg.depth = n.div_ceil(a.connections.max(1));
    }
    cfg.batch = a.batch;
    cfg.duration = seconds("duration", a.duration)?;
    cfg.warmup = seconds("warmup", a.warmup)?;
    cfg.max_flows = a.ops;
    cfg.rate = a.rate;
    cfg.seed = a.seed;
    cfg.subscribers = a.subscribers;
    cfg.subscriber_prefixes = a.subscriber_prefixes.clone();
    cfg.check = !a.no_check;
    cfg.progress = match (a.quiet, a.json) {
        (true, _) => Progress::Off,
        (false, true) => Progress::Stderr,
        (false, false) => Progress::Stdout,
    };
    cfg.validate()?;
    Ok((cfg, spec))
}

async fn run(a: RunArgs) -> Result<bool, LoadError> {
    let (cfg, spec) = config(&a)?;
    let say = |s: String| {
        if a.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    if !a.no_catalog {
        let c = loadgen::load_catalog(&cfg.target, &spec).await?;
        say(format!(
            "catalog: {} SKUs x {} locations, {} channels: {} operations in {:.2}s",
            spec.skus,
            spec.locations.len(),
            spec.channels.len(),
            c.operations,
            c.seconds
        ));
    }
    let out = loadgen::run(cfg).await?;
    if a.json {
        let j = serde_json::to_string_pretty(&out.report)
            .map_err(|e| LoadError::Config(format!("report as JSON: {e}")))?;
        println!("{j}");
    } else {
        print!("{}", out.report.human());
    }
    Ok(out.report.check.as_ref().is_none_or(|c| c.passed()))
}

async fn catalog(a: CatalogArgs) -> Result<bool, LoadError> {
    let kind = WorkloadKind::parse(&a.workload)?;
    let target = target(&a.target)?;
    let spec = spec(kind, &a.catalog)?;
    let c = loadgen::load_catalog(&target, &spec).await?;
    println!(
        "catalog: {} SKUs x {} locations, {} channels: {} operations in {:.2}s",
        spec.skus,
        spec.locations.len(),
        spec.channels.len(),
        c.operations,
        c.seconds
    );
    Ok(true)
}

/// mimalloc, as in the server binary (src/main.rs): the generator's tasks allocate on one
/// thread and free on another too, and its numbers are compared with the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if let Err(e) = omnistock::disable_transparent_huge_pages() {
        eprintln!("note: transparent huge pages stay on ({e}); the generator may be slower");
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match cli.command {
            Cmd::Run(a) => run(*a).await,
            Cmd::Catalog(a) => catalog(*a).await,
        }
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: an end-of-run check failed (see FAILED lines above)");
            ExitCode::from(3)
        }
        Err(e @ LoadError::Config(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
