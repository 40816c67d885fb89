//! Memory per SKU with 4 locations at 1M SKUs (override with OMNISTOCK_MEM_SKUS), active and
//! passive, measured as process RSS growth. Before each reading mimalloc is told to return
//! freed memory (`mi_collect(true)`), so passivated actors' memory is not counted.
//! Active: every SKU keeps its actor (passivation after 1 h). Passive: a second engine whose
//! SKUs passivate 1 s after their last use; read once none is active. Prints a table; not a
//! criterion bench.

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its figures in docs/benchmarks.md were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use omnistock::domain::*;
use omnistock::engine::*;

const LOCS: [&str; 4] = ["wh-paris", "st-lyon", "ds-nice", "mk-amazon"];

fn rss_bytes() -> u64 {
    // SAFETY: mi_collect only returns free pages to the OS.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("rss");
    pages * 4096
}

async fn load(e: &Engine, n: usize) {
    for (i, l) in LOCS.iter().enumerate() {
        let loc = Location {
            id: LocationId::new(l).unwrap(),
            kind: LocationKind::Warehouse,
            region: "FR".into(),
        };
        e.execute(Request {
            id: i as u128 + 1,
            command: Command::Catalog(CatalogCommand::UpsertLocation(loc)),
        })
        .await
        .unwrap();
    }
    let reqs = (0..n).flat_map(|i| {
        LOCS.iter().enumerate().map(move |(j, l)| Request {
            id: 1_000 + (i * 4 + j) as u128,
            command: Command::Stock {
                sku: SkuId::new(&format!("SKU-{i:08}")).unwrap(),
                command: SkuCommand::Adjust {
                    location: LocationId::new(l).unwrap(),
                    delta: 10 + j as i64,
                    reason: AdjustReason::Receipt,
                    reference: String::new(),
                },
            },
        })
    });
    stream::iter(reqs)
        .map(|r| e.execute(r))
        .buffer_unordered(512)
        .for_each(|r| async move {
            r.unwrap();
        })
        .await;
}

fn measure(n: usize, passivate_after: Duration) -> (u64, EngineStats) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = EngineConfig {
            passivate_after,
            idempotency_max_entries: 1,
            ..EngineConfig::default()
        };
        let base = rss_bytes();
        let e = Engine::start_in_memory(cfg).unwrap();
        let t = Instant::now();
        load(&e, n).await;
        eprintln!(
            "loaded {n} SKUs x 4 locations in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        if passivate_after < Duration::from_secs(60) {
            while e.stats().active_skus > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let grown = rss_bytes().saturating_sub(base);
        let st = e.stats();
        e.shutdown();
        (grown, st)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("OMNISTOCK_MEM_SKUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("| state | SKUs | active actors | RSS growth | bytes per SKU |");
    println!("|---|---|---|---|---|");
    let (grown, st) = measure(n, Duration::from_secs(3600));
    println!(
        "| active (actor + state) | {} | {} | {} MiB | {} |",
        st.skus,
        st.active_skus,
        grown >> 20,
        grown / n as u64
    );
    let (grown, st) = measure(n, Duration::from_secs(1));
    println!(
        "| passive (compact) | {} | {} | {} MiB | {} |",
        st.skus,
        st.active_skus,
        grown >> 20,
        grown / n as u64
    );
    println!(
        "compact state payload per passive SKU: {} bytes",
        st.passive_bytes / n
    );
}
