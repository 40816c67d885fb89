//! `omnistock simulate`: a bounded in-process checkout simulation. It builds a demo catalog
//! (warehouses, stores, a dark store, marketplace-fulfilled stock; six channels), stocks N
//! SKUs, then runs checkouts (reserve a cart, then fulfil, release or let it expire) for a
//! fixed duration with a progress line every second, and ends with throughput, latency
//! percentiles and an audit that no SKU was oversold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use omnistock::domain::{
    AdjustReason, CatalogCommand, Channel, ChannelId, Location, LocationId, LocationKind,
    Rejection, SkuCommand, SkuId,
};
use omnistock::engine::{
    Command, Engine, EngineConfig, Failure, PersistConfig, Request, ReserveLine, ReserveRequest,
};

/// Flags of `simulate`.
#[derive(clap::Args)]
pub struct Args {
    /// SKUs in the demo catalog (1..=1,000,000).
    #[arg(long, default_value_t = 10_000)]
    skus: u32,
    /// How long to run checkouts, in seconds (1..=600).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent checkout tasks (1..=4096).
    #[arg(long, default_value_t = 256)]
    tasks: u32,
    /// Run durably with the write-ahead log in this directory (default: in memory only).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

const LOCATIONS: [(&str, LocationKind, &str); 6] = [
    ("wh-paris", LocationKind::Warehouse, "FR"),
    ("wh-newark", LocationKind::Warehouse, "US-NJ"),
    ("st-lyon", LocationKind::Store, "FR"),
    ("st-soho", LocationKind::Store, "US-NY"),
    ("ds-paris-11", LocationKind::DarkStore, "FR"),
    ("mk-amazon-us", LocationKind::MarketplaceFulfilled, "US"),
];

const CHANNELS: [(&str, &[&str], u32, Option<u32>); 6] = [
    ("web-fr", &["ds-paris-11", "wh-paris", "st-lyon"], 1, None),
    ("web-com", &["wh-newark", "st-soho"], 1, None),
    ("pos", &["st-lyon", "st-soho"], 0, None),
    ("amazon", &["mk-amazon-us", "wh-newark"], 2, Some(50)),
    ("zalando", &["wh-paris"], 2, Some(30)),
    ("tmall", &["wh-paris", "wh-newark"], 3, Some(20)),
];

static REQ: AtomicU64 = AtomicU64::new(1);
fn rid() -> u128 {
    u128::from(REQ.fetch_add(1, Ordering::Relaxed))
}

async fn exec(e: &Engine, command: Command) -> Result<(), Failure> {
    e.execute(Request { id: rid(), command }).await.map(|_| ())
}

async fn load_catalog(e: &Engine, skus: u32) -> anyhow::Result<()> {
    for (id, kind, region) in LOCATIONS {
        let loc = Location {
            id: LocationId::new(id)?,
            kind,
            region: region.into(),
        };
        exec(e, Command::Catalog(CatalogCommand::UpsertLocation(loc))).await?;
    }
    for (id, locs, buffer, cap) in CHANNELS {
        let ch = Channel {
            id: ChannelId::new(id)?,
            locations: locs
                .iter()
                .map(|l| LocationId::new(l))
                .collect::<Result<_, _>>()?,
            buffer,
            cap,
        };
        exec(e, Command::Catalog(CatalogCommand::UpsertChannel(ch))).await?;
    }
    for i in 0..skus {
        let sku = SkuId::new(&format!("SKU-{i:07}"))?;
        for (j, (loc, _, _)) in LOCATIONS.iter().enumerate() {
            let command = SkuCommand::Adjust {
                location: LocationId::new(loc)?,
                delta: i64::from((i * 7 + j as u32 * 13) % 40 + 1),
                reason: AdjustReason::Receipt,
                reference: "initial-load".into(),
            };
            exec(
                e,
                Command::Stock {
                    sku: sku.clone(),
                    command,
                },
            )
            .await?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    insufficient: AtomicU64,
    busy: AtomicU64,
}

async fn checkout_task(
    e: Arc<Engine>,
    n: u32,
    skus: u32,
    deadline: Instant,
    c: Arc<Counters>,
    lat: Arc<parking_lot::Mutex<Vec<u32>>>,
) {
    let mut x = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut local = Vec::new();
    while Instant::now() < deadline {
        let lines = (next() % 3 + 1) as usize;
        let channel = CHANNELS[(next() % 6) as usize].0;
        let res = rid();
        let cart = (0..lines)
            .map(|_| ReserveLine {
                sku: SkuId::new(&format!("SKU-{:07}", next() % u64::from(skus))).expect("valid"),
                qty: 1,
                location: None,
            })
            .collect();
        let t = Instant::now();
        let r = exec(
            &e,
            Command::Reserve(ReserveRequest {
                reservation: res,
                channel: ChannelId::new(channel).expect("valid"),
                lines: cart,
                allow_split: true,
                ttl_ms: 200,
            }),
        )
        .await;
        local.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        match r {
            Ok(()) => {
                c.ok.fetch_add(1, Ordering::Relaxed);
                match next() % 10 {
                    0..=5 => drop(
                        exec(
                            &e,
                            Command::Fulfill {
                                reservation: res,
                                lines: None,
                            },
                        )
                        .await,
                    ),
                    6..=8 => drop(exec(&e, Command::Release { reservation: res }).await),
                    _ => {} // left to expire
                }
            }
            Err(Failure::Rejected(Rejection::InsufficientStock { .. })) => {
                c.insufficient.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::Rejected(Rejection::Busy)) => {
                c.busy.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    lat.lock().extend(local);
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs the simulation.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(1..=1_000_000).contains(&args.skus)
        || !(1..=600).contains(&args.seconds)
        || !(1..=4096).contains(&args.tasks)
    {
        bail!("--skus 1..=1000000, --seconds 1..=600, --tasks 1..=4096");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let e = Arc::new(match &args.data_dir {
            Some(dir) => {
                println!("durable mode: write-ahead log in {}", dir.display());
                Engine::open(PersistConfig::new(dir)).await?
            }
            None => Engine::start_in_memory(EngineConfig::default())?,
        });
        let t = Instant::now();
        load_catalog(&e, args.skus).await?;
        println!("catalog: {} locations, {} channels, {} SKUs stocked in {:.2}s", LOCATIONS.len(), CHANNELS.len(), args.skus, t.elapsed().as_secs_f64());
        let c = Arc::new(Counters::default());
        let lat = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let tasks: Vec<_> = (0..args.tasks)
            .map(|n| tokio::spawn(checkout_task(e.clone(), n, args.skus, deadline, c.clone(), lat.clone())))
            .collect();
        let start = Instant::now();
        let mut last = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ok = c.ok.load(Ordering::Relaxed);
            println!("[{:>3.0}s] carts reserved {:>9} (+{}/s), out of stock {}, busy {}, active reservations {}", start.elapsed().as_secs_f64(), ok, ok - last, c.insufficient.load(Ordering::Relaxed), c.busy.load(Ordering::Relaxed), e.stats().reservations);
            last = ok;
        }
        for t in tasks {
            t.await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let mut l = std::mem::take(&mut *lat.lock());
        l.sort_unstable();
        println!("reserve attempts {} in {secs:.1}s = {:.0}/s; latency us p50 {} p99 {} p99.9 {}", l.len(), l.len() as f64 / secs, percentile(&l, 0.5), percentile(&l, 0.99), percentile(&l, 0.999));
        let r = audit(&e, args.skus).await;
        e.shutdown();
        r
    })
}

async fn audit(e: &Engine, skus: u32) -> anyhow::Result<()> {
    let mut oversold = 0;
    for i in 0..skus {
        let s = e
            .sku_state(&SkuId::new(&format!("SKU-{i:07}"))?)
            .await
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        if let Err(msg) = s.check_invariants() {
            bail!("invariant broken: {msg}");
        }
        if s.oversold() {
            oversold += 1;
        }
    }
    println!("audit: {skus} SKUs checked, reserved == sum of holds everywhere, oversold SKUs: {oversold}");
    if oversold > 0 {
        bail!("{oversold} SKUs oversold");
    }
    Ok(())
}
