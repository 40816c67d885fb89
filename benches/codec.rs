//! The codec alone: encoding and decoding what crosses the wire and what goes to the log —
//! a batch of 256 single-line reservations (request frame), its response, one log record,
//! and a feed frame of 256 ATP changes.

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its figures in docs/benchmarks.md were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use omnistock::domain::{Allocation, ChannelId, Event, LocationId, SkuId};
use omnistock::engine::journal::{LogRecord, RecordBody};
use omnistock::protocol::*;

fn reserve(i: u128) -> RawOp {
    Op::Reserve(Reserve {
        request_id: i + 1,
        reservation: i + 1_000_000,
        channel: "web-fr".into(),
        lines: vec![WireLine {
            sku: format!("SKU-{:07}", i % 10_000),
            qty: 1,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 600_000,
    })
    .to_raw()
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let batch = RequestBatch {
        ops: (0..256).map(reserve).collect(),
    };
    let request = frame_of(FrameKind::Request, 7, &batch).unwrap().encode();
    g.throughput(Throughput::Elements(256));
    g.bench_function("request_256_reserves_encode", |b| {
        b.iter(|| {
            black_box(
                frame_of(FrameKind::Request, 7, black_box(&batch))
                    .unwrap()
                    .encode(),
            )
        })
    });
    g.bench_function("request_256_reserves_parse_and_decode", |b| {
        b.iter(|| {
            let (f, _) = Frame::parse(black_box(&request), usize::MAX)
                .unwrap()
                .unwrap();
            let batch: RequestBatch = decode_payload(&f.payload).unwrap();
            for op in &batch.ops {
                black_box(Op::from_raw(op).unwrap());
            }
        })
    });
    let reserved = encode_payload(&Reserved {
        seq: 123_456,
        expires_at_ms: 1_800_000_000_000,
        allocations: vec![WireAllocation {
            sku: "SKU-0000042".into(),
            location: "wh-paris".into(),
            qty: 1,
        }],
    })
    .unwrap();
    let response = ResponseBatch {
        results: (0..256)
            .map(|_| OpResult {
                status: 0,
                message: String::new(),
                body: reserved.clone(),
            })
            .collect(),
    };
    g.bench_function("response_256_reserves_encode", |b| {
        b.iter(|| {
            black_box(
                frame_of(FrameKind::Response, 7, black_box(&response))
                    .unwrap()
                    .encode(),
            )
        })
    });
    let record = LogRecord {
        at_ms: 1_800_000_000_000,
        request: 42,
        fingerprint: 7,
        body: RecordBody::Sku {
            sku: SkuId::new("SKU-0000042").unwrap(),
            events: vec![Event::HoldPlaced {
                reservation: 9,
                channel: ChannelId::new("web-fr").unwrap(),
                expires_at_ms: 1_800_000_600_000,
                cart_skus: 1,
                allocations: vec![Allocation {
                    location: LocationId::new("wh-paris").unwrap(),
                    qty: 1,
                }],
            }],
        },
    };
    let bytes = omnistock::codec::encode(&record).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("log_record_encode", |b| {
        b.iter(|| black_box(omnistock::codec::encode(black_box(&record)).unwrap()))
    });
    g.bench_function("log_record_decode", |b| {
        b.iter(|| black_box(omnistock::codec::decode::<LogRecord>(black_box(&bytes)).unwrap()))
    });
    let push = PushBatch {
        items: (0..256u64)
            .map(|i| {
                PushItem::Atp(WireAtp {
                    seq: 1_000 + i,
                    at_ms: 1_800_000_000_000,
                    sku: format!("SKU-{:07}", i),
                    channel: "amazon".into(),
                    previous: 10,
                    atp: 9,
                    cause: cause::RESERVE,
                    transition: transition::NONE,
                    coalesced: false,
                })
            })
            .collect(),
    };
    let push_bytes = encode_payload(&push).unwrap();
    g.throughput(Throughput::Elements(256));
    g.bench_function("push_256_atp_encode", |b| {
        b.iter(|| black_box(encode_payload(black_box(&push)).unwrap()))
    });
    g.bench_function("push_256_atp_decode", |b| {
        b.iter(|| black_box(decode_payload::<PushBatch>(black_box(&push_bytes)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
