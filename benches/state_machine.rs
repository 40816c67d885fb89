//! The pure SKU state machine alone: ns per reserve, fulfil and release (decide + apply).

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its figures in docs/benchmarks.md were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use omnistock::domain::*;

fn setup() -> (Catalog, SkuState) {
    let mut c = Catalog::default();
    for (i, l) in ["wh", "st", "ds", "mk"].iter().enumerate() {
        let ev = c
            .decide(&CatalogCommand::UpsertLocation(Location {
                id: LocationId::new(l).unwrap(),
                kind: LocationKind::Warehouse,
                region: "FR".into(),
            }))
            .unwrap();
        c.apply(&ev, i as u64 + 1);
    }
    let ev = c
        .decide(&CatalogCommand::UpsertChannel(Channel {
            id: ChannelId::new("web").unwrap(),
            locations: ["wh", "st", "ds", "mk"]
                .iter()
                .map(|l| LocationId::new(l).unwrap())
                .collect(),
            buffer: 2,
            cap: None,
        }))
        .unwrap();
    c.apply(&ev, 10);
    let mut s = SkuState::new(SkuId::new("SKU-1").unwrap());
    for l in ["wh", "st", "ds", "mk"] {
        let cmd = SkuCommand::Adjust {
            location: LocationId::new(l).unwrap(),
            delta: 100_000_000,
            reason: AdjustReason::Receipt,
            reference: String::new(),
        };
        for e in s.decide(&cmd, &c, 0).unwrap() {
            s.apply(&e, 11, 1);
        }
    }
    (c, s)
}

fn hold(id: u128) -> SkuCommand {
    SkuCommand::Hold {
        reservation: id,
        channel: ChannelId::new("web").unwrap(),
        lines: vec![HoldLine {
            line: 0,
            qty: 1,
            location: None,
        }],
        allow_split: false,
        expires_at_ms: 10_000,
        cart_skus: 1,
    }
}

/// Keeps the hold map small and stable: drops every hold once there are over 1,000.
fn keep_holds_small(s: &mut SkuState) {
    if s.holds.len() > 1000 {
        s.holds.clear();
        for bk in &mut s.buckets {
            bk.reserved = 0;
        }
    }
}

fn bench(c: &mut Criterion) {
    let (cat, base) = setup();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reserve", |b| {
        let mut s = base.clone();
        let mut id = 0u128;
        b.iter(|| {
            id += 1;
            let ev = s.decide(&hold(id), &cat, 1).unwrap();
            for e in &ev {
                s.apply(e, 1, 1);
            }
            keep_holds_small(&mut s);
            black_box(&s);
        })
    });
    g.bench_function("reserve_then_fulfil", |b| {
        let mut s = base.clone();
        let mut id = 0u128;
        b.iter(|| {
            id += 1;
            for e in s.decide(&hold(id), &cat, 1).unwrap() {
                s.apply(&e, 1, 1);
            }
            let f = SkuCommand::Fulfill {
                reservation: id,
                qty: None,
            };
            for e in s.decide(&f, &cat, 1).unwrap() {
                s.apply(&e, 2, 1);
            }
        })
    });
    g.bench_function("reserve_then_release", |b| {
        let mut s = base.clone();
        let mut id = 0u128;
        b.iter(|| {
            id += 1;
            for e in s.decide(&hold(id), &cat, 1).unwrap() {
                s.apply(&e, 1, 1);
            }
            let r = SkuCommand::Release {
                reservation: id,
                reason: ReleaseReason::Client,
            };
            for e in s.decide(&r, &cat, 1).unwrap() {
                s.apply(&e, 2, 1);
            }
        })
    });
    // What the feed adds to every reserve in the actor: channel ATPs before, the feed record
    // after (ATP change with transition, lifecycle item), boxed for the hub.
    g.bench_function("reserve_with_feed_record", |b| {
        let mut s = base.clone();
        let mut id = 0u128;
        b.iter(|| {
            id += 1;
            let ev = s.decide(&hold(id), &cat, 1).unwrap();
            let before = omnistock::feed::before(&cat, &s, &ev);
            for e in &ev {
                s.apply(e, 1, 1);
            }
            let rec = omnistock::feed::derive(&cat, before, &s, &ev, id as u64, 1);
            black_box(std::sync::Arc::new(rec));
            keep_holds_small(&mut s);
        })
    });
    g.bench_function("channel_atp_4_locations", |b| {
        let ch = cat.channels.values().next().unwrap();
        b.iter_batched(
            || (),
            |_| black_box(base.channel_atp(ch)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
