//! Durable engine, in process: single-line reserves per second with every acknowledgement
//! waiting for the group-committed log flush, acknowledgement latency, recovery speed
//! (records replayed per second) and disk bytes per live SKU before and after a checkpoint.
//! Prints a table; not a criterion bench. Sizes: OMNISTOCK_DURABLE_SKUS (default 100,000),
//! OMNISTOCK_DURABLE_RESERVES (default 1,000,000), OMNISTOCK_DURABLE_WINDOW (default 4096).

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its figures in docs/benchmarks.md were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use omnistock::domain::*;
use omnistock::engine::*;
use parking_lot::Mutex;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cfg(dir: &std::path::Path) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    c.checkpoint_every_records = 0;
    c
}

async fn load(e: &Engine, skus: u64) {
    let loc = Location {
        id: LocationId::new("wh").unwrap(),
        kind: LocationKind::Warehouse,
        region: "FR".into(),
    };
    e.execute(Request {
        id: 1,
        command: Command::Catalog(CatalogCommand::UpsertLocation(loc)),
    })
    .await
    .unwrap();
    let ch = Channel {
        id: ChannelId::new("web").unwrap(),
        locations: vec![LocationId::new("wh").unwrap()],
        buffer: 0,
        cap: None,
    };
    e.execute(Request {
        id: 2,
        command: Command::Catalog(CatalogCommand::UpsertChannel(ch)),
    })
    .await
    .unwrap();
    stream::iter(0..skus)
        .map(|i| {
            e.execute(Request {
                id: 10 + u128::from(i),
                command: Command::Stock {
                    sku: SkuId::new(&format!("SKU-{i:08}")).unwrap(),
                    command: SkuCommand::Adjust {
                        location: LocationId::new("wh").unwrap(),
                        delta: 100_000_000,
                        reason: AdjustReason::Receipt,
                        reference: String::new(),
                    },
                },
            })
        })
        .buffer_unordered(4096)
        .for_each(|r| async move {
            r.unwrap();
        })
        .await;
}

async fn reserves(e: Arc<Engine>, skus: u64, n: u64, window: usize) -> (f64, Histogram<u64>) {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let drivers = 4u64;
    let t = Instant::now();
    let tasks: Vec<_> = (0..drivers)
        .map(|d| {
            let (e, hist) = (e.clone(), hist.clone());
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).unwrap();
                let ids = (0..n / drivers).map(move |i| (d << 40) | i);
                let mut x = d + 1;
                let results: Vec<u64> = stream::iter(ids)
                    .map(|i| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let sku = SkuId::new(&format!("SKU-{:08}", (x >> 33) % skus)).unwrap();
                        let e = e.clone();
                        async move {
                            let t = Instant::now();
                            let id = 1_000_000_000 + u128::from(i);
                            let r = e
                                .execute(Request {
                                    id,
                                    command: Command::Reserve(ReserveRequest {
                                        reservation: id,
                                        channel: ChannelId::new("web").unwrap(),
                                        lines: vec![ReserveLine {
                                            sku,
                                            qty: 1,
                                            location: None,
                                        }],
                                        allow_split: false,
                                        ttl_ms: 3_600_000,
                                    }),
                                })
                                .await;
                            assert!(
                                r.is_ok() || matches!(r, Err(Failure::Rejected(Rejection::Busy))),
                                "{r:?}"
                            );
                            t.elapsed().as_micros() as u64
                        }
                    })
                    .buffer_unordered(window / drivers as usize)
                    .collect()
                    .await;
                for us in results {
                    local.record(us.max(1)).unwrap();
                }
                hist.lock().add(local).unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let h = hist.lock().clone();
    (n as f64 / secs, h)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let skus = env("OMNISTOCK_DURABLE_SKUS", 100_000);
    let n = env("OMNISTOCK_DURABLE_RESERVES", 1_000_000);
    let window = env("OMNISTOCK_DURABLE_WINDOW", 4096) as usize;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = Arc::new(Engine::open(cfg(dir.path())).await.unwrap());
        let t = Instant::now();
        load(&e, skus).await;
        println!("loaded {skus} SKUs (durable adjusts) in {:.1}s", t.elapsed().as_secs_f64());
        let (rate, h) = reserves(e.clone(), skus, n, window).await;
        println!("| measure | value |\n|---|---|");
        println!("| durable single-line reserves/s (window {window}) | {rate:.0} |");
        println!("| ack latency p50 / p99 / p99.9 (us) | {} / {} / {} |", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999));
        let stats = e.log_stats().unwrap();
        println!("| log records / disk bytes before checkpoint | {} / {} |", stats.records, stats.approx_disk_bytes);
        let records = stats.records;
        let e = Arc::into_inner(e).expect("sole owner");
        e.shutdown();
        drop(e);
        let t = Instant::now();
        let e = Engine::open(cfg(dir.path())).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!("| recovery of {records} records, {skus} SKUs (no checkpoint) | {secs:.2}s = {:.0} records/s |", records as f64 / secs);
        let cp = e.checkpoint().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = e.log_stats().unwrap();
        println!("| checkpoint: {} SKUs, {} bytes, took | {} ms |", cp.skus, cp.bytes, cp.duration.as_millis());
        println!("| disk bytes after checkpoint (per live SKU) | {} ({}) |", after.approx_disk_bytes, after.approx_disk_bytes / skus.max(1));
        e.shutdown();
        drop(e);
        let t = Instant::now();
        let e = Engine::open(cfg(dir.path())).await.unwrap();
        println!("| recovery from checkpoint ({skus} SKUs, {} holds) | {:.2}s |", e.stats().reservations, t.elapsed().as_secs_f64());
        e.shutdown();
    });
}
