//! Through the actors, in process (in-memory journal): reservations per second for
//! single-line reserves and 3-line carts, uniform and Zipf-skewed SKU popularity.
//! Requests are issued from one driver task with a window of concurrent requests, the way
//! the TCP server issues them for pipelined clients.

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its figures in docs/benchmarks.md were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::stream::{self, StreamExt};
use omnistock::domain::*;
use omnistock::engine::*;
use rand::prelude::*;
use rand_distr::Zipf;

const SKUS: usize = 10_000;
const WINDOW: usize = 1024;
const DRIVERS: usize = 4;

async fn setup() -> Arc<Engine> {
    let e = Engine::start_in_memory(EngineConfig::default()).unwrap();
    e.execute(Request {
        id: 1,
        command: Command::Catalog(CatalogCommand::UpsertLocation(Location {
            id: LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            region: "FR".into(),
        })),
    })
    .await
    .unwrap();
    let mut id = 1_000u128;
    e.execute(Request {
        id,
        command: Command::Catalog(CatalogCommand::UpsertChannel(Channel {
            id: ChannelId::new("web").unwrap(),
            locations: vec![LocationId::new("wh").unwrap()],
            buffer: 0,
            cap: None,
        })),
    })
    .await
    .unwrap();
    for i in 0..SKUS {
        id += 1;
        e.execute(Request {
            id,
            command: Command::Stock {
                sku: SkuId::new(&format!("SKU-{i}")).unwrap(),
                command: SkuCommand::Adjust {
                    location: LocationId::new("wh").unwrap(),
                    delta: 900_000_000,
                    reason: AdjustReason::Receipt,
                    reference: String::new(),
                },
            },
        })
        .await
        .unwrap();
    }
    Arc::new(e)
}

fn pick(rng: &mut StdRng, zipf: Option<&Zipf<f64>>) -> usize {
    match zipf {
        Some(z) => (z.sample(rng) as usize - 1).min(SKUS - 1),
        None => rng.gen_range(0..SKUS),
    }
}

async fn run(e: &Arc<Engine>, n: u64, lines: usize, zipf: bool, base: &mut u128) -> Duration {
    let z = Zipf::new(SKUS as u64, 1.0).unwrap();
    let mut rng = StdRng::seed_from_u64(*base as u64);
    let reqs: Vec<Request> = (0..n)
        .map(|_| {
            *base += 1;
            let ls = (0..lines)
                .map(|_| ReserveLine {
                    sku: SkuId::new(&format!("SKU-{}", pick(&mut rng, zipf.then_some(&z))))
                        .unwrap(),
                    qty: 1,
                    location: None,
                })
                .collect();
            Request {
                id: *base,
                command: Command::Reserve(ReserveRequest {
                    reservation: *base,
                    channel: ChannelId::new("web").unwrap(),
                    lines: ls,
                    allow_split: false,
                    ttl_ms: 3_600_000,
                }),
            }
        })
        .collect();
    // Split over DRIVERS tasks on the multi-threaded runtime, like connection tasks.
    let per = reqs.len().div_ceil(DRIVERS).max(1);
    let mut chunks = Vec::new();
    let mut reqs = reqs;
    while !reqs.is_empty() {
        let rest = reqs.split_off(per.min(reqs.len()));
        chunks.push(std::mem::replace(&mut reqs, rest));
    }
    let t = Instant::now();
    let on_arbiters = std::env::var_os("ON_ARBITERS").is_some();
    let tasks: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let e = e.clone();
            let e2 = e.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let work = async move {
                stream::iter(chunk)
                    .map(|r| e.execute(r))
                    .buffer_unordered(WINDOW / DRIVERS)
                    .for_each(|r| async move {
                        if let Err(f) = r {
                            assert!(matches!(f, Failure::Rejected(Rejection::Busy)), "{f}");
                        }
                    })
                    .await;
                let _ = tx.send(());
            };
            if on_arbiters {
                assert!(e2.spawn_on_arbiter(i, work));
            } else {
                tokio::spawn(work);
            }
            rx
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = t.elapsed();
    // Untimed: release everything so memory is recycled and each sample starts alike.
    let first = *base - u128::from(n) + 1;
    stream::iter(first..=*base)
        .map(|id| {
            e.execute(Request {
                id: id + (1u128 << 100),
                command: Command::Release { reservation: id },
            })
        })
        .buffer_unordered(WINDOW)
        .for_each(|_| async {})
        .await;
    elapsed
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(setup());
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    let mut base = 10_000_000u128;
    for (name, lines, zipf) in [
        ("reserve_1_line_uniform", 1, false),
        ("reserve_1_line_zipf", 1, true),
        ("reserve_3_line_cart_uniform", 3, false),
        ("reserve_3_line_cart_zipf", 3, true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(run(&e, iters, lines, zipf, &mut base)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
