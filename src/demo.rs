//! `omnistock demo`: the README's "run it" command. Starts the durable engine and the TCP
//! server on loopback (data in a temporary directory unless `--data-dir`), loads a demo
//! retailer (two warehouses, two stores, a dark store, marketplace-fulfilled stock; channels
//! web-fr, web-com, pos, amazon, zalando, tmall; 10,000 SKUs) through the protocol, runs a
//! short checkout simulation through the real server with [`omnistock::sim`], the code the
//! load generator is built on (live progress, end-of-run checks), shows how a few SKUs' ATP
//! per channel changed, prints throughput and latency, the SKUs most at risk and, after a
//! short regional campaign, a rebalance recommendation, then keeps serving until Ctrl-C so
//! `omnistock ctl` can be tried
//! against it. Needs no configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use omnistock::client::Client;
use omnistock::engine::{Engine, PersistConfig};
use omnistock::protocol::WireSku;
use omnistock::server::{Server, ServerConfig};
use omnistock::sim::{
    self, sku_name, CartLines, CatalogSpec, LoadConfig, Progress, TargetSpec, WorkloadKind,
};

/// Flags of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Address of the binary protocol (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Address of the admin endpoint: Prometheus metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9878")]
    admin_listen: SocketAddr,
    /// Keep the data here [default: a temporary directory removed at exit].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds of checkout simulation (1..=600).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// SKUs in the demo catalog (1..=1,000,000).
    #[arg(long, default_value_t = 10_000)]
    skus: u32,
    /// Connections of the simulation (1..=1000), each with 8 checkouts in flight.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Exit after the simulation instead of serving until Ctrl-C.
    #[arg(long)]
    no_serve: bool,
}

/// SKUs shown in the before/after table: the three most popular (Zipf ranks 1-3) and one
/// from the long tail.
fn shown_skus(skus: u32) -> Vec<String> {
    let mut v: Vec<u32> = vec![0, 1, 2, 42.min(skus - 1)];
    v.retain(|&i| i < skus);
    v.dedup();
    v.into_iter().map(sku_name).collect()
}

async fn read(client: &Client, skus: &[String]) -> anyhow::Result<Vec<WireSku>> {
    let got = client.get_skus(skus.to_vec()).await?;
    got.skus
        .into_iter()
        .zip(skus)
        .map(|(s, name)| s.with_context(|| format!("{name} missing from the server")))
        .collect()
}

fn table(before: &[WireSku], after: &[WireSku], channels: &[String]) {
    print!("{:<12}", "ATP");
    for c in channels {
        print!(" {c:>11}");
    }
    println!("  on hand / reserved");
    for (b, a) in before.iter().zip(after) {
        print!("{:<12}", b.sku);
        for c in channels {
            let atp = |s: &WireSku| {
                s.channels
                    .iter()
                    .find(|(id, _)| id == c)
                    .map_or(0, |(_, v)| *v)
            };
            print!(" {:>11}", format!("{} -> {}", atp(b), atp(a)));
        }
        let sum = |s: &WireSku| {
            (
                s.buckets.iter().map(|x| u64::from(x.on_hand)).sum::<u64>(),
                s.buckets.iter().map(|x| u64::from(x.reserved)).sum::<u64>(),
            )
        };
        let ((oh0, r0), (oh1, r1)) = (sum(b), sum(a));
        println!("  {oh0}/{r0} -> {oh1}/{r1}");
    }
}

async fn simulate(addr: SocketAddr, a: &Args) -> anyhow::Result<()> {
    let target = TargetSpec::Omnistock {
        addr: addr.to_string(),
        token: String::new(),
        tls: None,
    };
    let spec = CatalogSpec::demo(a.skus)?;
    let loaded = sim::load_catalog(&target, &spec).await?;
    println!(
        "catalog: {} locations, {} channels, {} SKUs stocked through the protocol ({} operations in {:.2}s)",
        spec.locations.len(),
        spec.channels.len(),
        spec.skus,
        loaded.operations,
        loaded.seconds
    );
    let client = target.omnistock_client().await?;
    let shown = shown_skus(a.skus);
    let before = read(&client, &shown).await?;
    // The checkout preset (the report names it), with receipts mixed in below.
    let mut w = sim::preset(WorkloadKind::Checkout, &spec);
    w.zipf = Some(1.0);
    w.cart_lines = CartLines::parse("1:60,2:25,3:15")?;
    w.fulfil_pct = 60;
    w.release_pct = 25;
    // Nothing kept open: once the simulation stops, the holds left to expire go away within
    // two seconds, which `omnistock ctl get` shows.
    w.expire_pct = 15;
    w.restock_pct = 5;
    w.expire_ttl_ms = 2_000;
    let mut cfg = LoadConfig::new(target, w);
    cfg.connections = a.connections;
    cfg.depth = 8;
    cfg.duration = Duration::from_secs(a.seconds);
    cfg.warmup = Duration::ZERO;
    cfg.progress = Progress::Stdout;
    println!(
        "checkouts for {}s: {} connections x 8 in flight; carts of 1-3 lines, Zipf(1.0) popularity; 60% fulfilled, 25% released, 15% left to expire (2 s); 5% receipts",
        a.seconds, a.connections
    );
    let out = sim::run(cfg).await?;
    let after = read(&client, &shown).await?;
    println!();
    println!("ATP per channel before -> after the simulation:");
    table(&before, &after, &spec.channel_ids());
    println!();
    print!("{}", out.report.human());
    if !out.report.check.as_ref().is_some_and(|c| c.passed()) {
        bail!("the end-of-run check failed");
    }
    at_risk(&client, "web-fr").await?;
    regional(&client, a.skus).await
}

/// Units the regional campaign receives at the US warehouse, and web-fr orders of one unit
/// it then places: France sells out while New Jersey holds weeks of cover.
const CAMPAIGN_STOCK: i64 = 20_000;
const CAMPAIGN_ORDERS: u32 = 40;

/// The end of the demo's run (after the simulation; the client only): a regional campaign
/// on one long-tail SKU (stock received in US-NJ, a burst of web-fr orders drains FR), the
/// SKUs most at risk in FR, and the rebalance recommendation it leads to, with the ctl line
/// that applies it (docs/intelligence.md).
async fn regional(client: &Client, skus: u32) -> anyhow::Result<()> {
    use omnistock::client::new_request_id;
    use omnistock::protocol::{Adjust, Op, RebalanceQuery, Reserve, WireAdjustReason, WireLine};
    let sku = sku_name(skus - 1);
    client
        .apply(Op::Adjust(Adjust {
            request_id: new_request_id(),
            sku: sku.clone(),
            location: "wh-newark".into(),
            delta: CAMPAIGN_STOCK,
            reason: WireAdjustReason::Receipt,
            reference: "demo: regional campaign stock".into(),
        }))
        .await?;
    let mut placed = 0;
    for _ in 0..CAMPAIGN_ORDERS {
        let r = client
            .reserve(Reserve {
                request_id: new_request_id(),
                reservation: new_request_id(),
                channel: "web-fr".into(),
                lines: vec![WireLine {
                    sku: sku.clone(),
                    qty: 1,
                    location: None,
                }],
                allow_split: false,
                ttl_ms: 600_000,
            })
            .await;
        // FR running out is the point: the last orders may find nothing left.
        if r.is_ok() {
            placed += 1;
        }
    }
    println!();
    println!(
        "regional campaign on {sku}: {CAMPAIGN_STOCK} units received at wh-newark (US-NJ), \
         {placed} web-fr orders drain FR"
    );
    let list = client.at_risk_region("FR", 1, 5).await?;
    println!("SKUs most at risk in region FR (projected stockout at the last hour's pace):");
    println!("  sku          atp   held/h  hours to zero");
    for s in &list.skus {
        let w = &s.velocity.windows[1];
        let hours = w.hours_to_zero.map_or("-".into(), |h| format!("{h:.1}"));
        println!(
            "  {:<11} {:>4} {:>8.1} {:>14}",
            s.sku, s.velocity.atp, w.held_per_hour, hours
        );
    }
    let rec = client
        .rebalance(RebalanceQuery {
            sku: Some(sku.clone()),
            region: None,
            limit: 1,
            near_hours: None,
            surplus_hours: None,
            window: None,
        })
        .await?;
    match rec.recommendations.first() {
        Some(r) => {
            let donor = match (r.donor_cover_hours, r.donor_cover_after_hours) {
                (Some(b), Some(a)) => format!("{} cover {b:.1} h -> {a:.1} h", r.donor_region),
                _ => format!("{} has no demand", r.donor_region),
            };
            println!(
                "rebalance recommendation {:032x}: move {} x {} from {} ({}) to {} ({}); \
                 {} cover {:.1} h -> {:.1} h, {donor}",
                r.id,
                r.qty,
                r.sku,
                r.from,
                r.donor_region,
                r.to,
                r.short_region,
                r.short_region,
                r.short_cover_hours,
                r.short_cover_after_hours,
            );
        }
        None => println!("no rebalance recommendation for {sku} (no region has weeks of cover)"),
    }
    Ok(())
}

/// The SKUs whose projected stockout on `channel` comes first (1 h window), from the
/// demand the simulation just placed (docs/intelligence.md).
async fn at_risk(client: &Client, channel: &str) -> anyhow::Result<()> {
    let list = client.at_risk(channel, 1, 5).await?;
    println!();
    println!("SKUs most at risk on {channel} (projected stockout at the last hour's pace):");
    println!("  sku          atp   held/h  hours to zero");
    for s in &list.skus {
        let w = &s.velocity.windows[1];
        let hours = w.hours_to_zero.map_or("-".into(), |h| format!("{h:.1}"));
        println!(
            "  {:<11} {:>4} {:>8.1} {:>14}",
            s.sku, s.velocity.atp, w.held_per_hour, hours
        );
    }
    Ok(())
}

/// Runs `omnistock demo`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if !(1..=600).contains(&a.seconds) {
        bail!("--seconds must be 1..=600");
    }
    if !(1..=1_000_000).contains(&a.skus) {
        bail!("--skus must be 1..=1000000");
    }
    if !(1..=1_000).contains(&a.connections) {
        bail!("--connections must be 1..=1000");
    }
    if !a.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the demo serves without auth tokens, so only on a loopback address",
            a.listen
        );
    }
    let temp;
    let dir = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("omnistock-demo-")
                .tempdir()
                .context("creating a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let http = omnistock::http::HttpConfig {
            source: format!("omnistock://{}", a.listen),
            ..Default::default()
        };
        let admin = crate::serve::start_admin(a.admin_listen, http)
            .await
            .context("in use? try --admin-listen 127.0.0.1:0")?;
        let (admin_addr, sources) = (admin.addr, admin.sources.clone());
        let engine = Arc::new(
            Engine::open(PersistConfig::new(&dir))
                .await
                .with_context(|| format!("opening {}", dir.display()))?,
        );
        sources.set_engine(engine.clone());
        let cfg = ServerConfig {
            listen: a.listen,
            ..ServerConfig::default()
        };
        let server = Server::bind(cfg, engine.clone()).await.with_context(|| {
            format!(
                "cannot listen on {} (in use? try --listen 127.0.0.1:0)",
                a.listen
            )
        })?;
        let addr = server.local_addr();
        sources.set_server(server.stats());
        let stop = server.shutdown_handle();
        let running = tokio::spawn(server.run());
        println!(
            "omnistock demo: serving on {addr}, data in {}",
            dir.display()
        );
        let result = simulate(addr, &a).await;
        if result.is_ok() {
            let exe = std::env::current_exe()
                .map_or_else(|_| "omnistock".into(), |p| p.display().to_string());
            println!();
            println!("metrics: http://{admin_addr}/metrics (also /healthz, /readyz)");
            println!("HTTP API: curl http://{admin_addr}/v1/skus/SKU-0000042   (docs/openapi.json)");
            println!("  curl -N 'http://{admin_addr}/v1/events?kinds=thresholds'   # the feed as Server-Sent Events");
            println!("try it (in another terminal):");
            println!("  {exe} ctl --addr {addr} get SKU-0000042");
            println!("  {exe} ctl --addr {addr} reserve --channel web-fr --line SKU-0000042:1");
            println!("  {exe} ctl --addr {addr} tail --channel amazon --kinds thresholds   # live stock alerts");
            println!("  {exe} ctl --addr {addr} velocity SKU-0000000   # demand per hour and hours to zero");
            println!("  {exe} ctl --addr {addr} at-risk web-fr --limit 20   # the soonest stockouts");
            println!("  {exe} ctl --addr {addr} at-risk --region FR   # the same per region");
            println!("  {exe} ctl --addr {addr} rebalance   # transfers that even out regional cover");
            println!("  {exe} ctl --addr {addr} rebalance apply --all   # send them as TRANSFERs");
        }
        let waited = if result.is_ok() && !a.no_serve {
            println!("serving until Ctrl-C");
            crate::serve::signal().await
        } else {
            Ok(())
        };
        crate::serve::shut_down(admin, stop, running, engine).await?;
        result.and(waited)
    })
}
