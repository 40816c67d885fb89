//! Group-commit throughput: N concurrent appenders, each appending a 48-byte payload
//! and waiting until it is durable (fsynced) before appending the next, as the engine's
//! actors do. Reports durable records per second (criterion "elem/s").
//!
//! Between samples the log is truncated with an empty checkpoint (outside the timed
//! region) so the sled database does not grow without bound during a long run.

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its figures in docs/benchmarks.md were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use omnistock::wal::{Wal, WalConfig};

const PAYLOAD_BYTES: usize = 48;

fn open_wal(dir: &std::path::Path) -> Arc<Wal> {
    Arc::new(Wal::open(WalConfig::new(dir)).expect("open WAL"))
}

fn truncate(wal: &Wal) {
    let start = wal.durable_seq() + 1;
    wal.write_checkpoint(start, &[]).expect("checkpoint");
}

/// `tasks` tokio tasks share `records` appends; returns the wall time.
fn run_async(rt: &tokio::runtime::Runtime, wal: &Arc<Wal>, tasks: u64, records: u64) -> Duration {
    let per_task = records.div_ceil(tasks);
    let started = Instant::now();
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let wal = Arc::clone(wal);
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let seq = wal.append(vec![7u8; PAYLOAD_BYTES]).expect("append");
                        wal.wait_durable(seq).await.expect("durable");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
    });
    started.elapsed()
}

/// `threads` OS threads share `records` appends, waiting with the blocking API.
fn run_threads(wal: &Arc<Wal>, threads: u64, records: u64) -> Duration {
    let per_thread = records.div_ceil(threads);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    let seq = wal.append(vec![7u8; PAYLOAD_BYTES]).expect("append");
                    wal.wait_durable_blocking(seq).expect("durable");
                }
            });
        }
    });
    started.elapsed()
}

fn group_commit_async(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path());
    let mut group = c.benchmark_group("wal_group_commit_async");
    group.throughput(Throughput::Elements(1));
    for tasks in [1u64, 64, 1024, 4096] {
        group.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let elapsed = run_async(&rt, &wal, tasks, iters.max(tasks));
                truncate(&wal);
                // Scale to exactly `iters` records when rounding added a few.
                elapsed.mul_f64(iters as f64 / (iters.max(tasks).div_ceil(tasks) * tasks) as f64)
            });
        });
    }
    group.finish();
}

fn group_commit_threads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_wal(dir.path());
    let mut group = c.benchmark_group("wal_group_commit_threads");
    group.throughput(Throughput::Elements(1));
    let threads = 64u64;
    group.bench_with_input(
        BenchmarkId::from_parameter(threads),
        &threads,
        |b, &threads| {
            b.iter_custom(|iters| {
                let records = iters.max(threads).div_ceil(threads) * threads;
                let elapsed = run_threads(&wal, threads, records);
                truncate(&wal);
                elapsed.mul_f64(iters as f64 / records as f64)
            });
        },
    );
    group.finish();
}

criterion_group!(benches, group_commit_async, group_commit_threads);
criterion_main!(benches);
