//! Memory per SKU with 4 locations at 1M SKUs (override with OMNISTOCK_MEM_SKUS), active and
//! passive, measured as process RSS growth (glibc `malloc_trim` before each reading so freed
//! actor memory is returned). Prints a table; not a criterion bench.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use omnistock::domain::*;
use omnistock::engine::*;

fn rss_bytes() -> u64 {
    unsafe {
        libc::malloc_trim(0);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("rss");
    pages * 4096
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("OMNISTOCK_MEM_SKUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = EngineConfig {
            passivate_after: Duration::from_secs(3),
            idempotency_max_entries: 1,
            ..EngineConfig::default()
        };
        let e = Engine::start_in_memory(cfg).unwrap();
        let locs = ["wh-paris", "st-lyon", "ds-nice", "mk-amazon"];
        for (i, l) in locs.iter().enumerate() {
            e.execute(Request {
                id: i as u128 + 1,
                command: Command::Catalog(CatalogCommand::UpsertLocation(Location {
                    id: LocationId::new(l).unwrap(),
                    kind: LocationKind::Warehouse,
                    region: "FR".into(),
                })),
            })
            .await
            .unwrap();
        }
        let base = rss_bytes();
        let t = Instant::now();
        let reqs = (0..n).flat_map(|i| {
            locs.iter().enumerate().map(move |(j, l)| Request {
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
        let load_s = t.elapsed().as_secs_f64();
        let active = rss_bytes();
        let st = e.stats();
        println!(
            "loaded {n} SKUs x 4 locations in {load_s:.1}s; active actors {}",
            st.active_skus
        );
        while e.stats().active_skus > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let passive = rss_bytes();
        let st = e.stats();
        println!("| state | RSS growth | bytes per SKU |");
        println!("|---|---|---|");
        println!(
            "| active (actor + state) | {} MiB | {} |",
            (active - base) >> 20,
            (active - base) / n as u64
        );
        println!(
            "| passive (compact) | {} MiB | {} |",
            (passive.saturating_sub(base)) >> 20,
            passive.saturating_sub(base) / n as u64
        );
        println!(
            "compact state bytes per passive SKU (payload only): {}",
            st.passive_bytes / n
        );
    });
}
