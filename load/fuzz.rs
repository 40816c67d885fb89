//! `omnistock-fuzz`: a deterministic, seeded mutation fuzzer for the binary protocol on
//! stable Rust (cargo-fuzz needs nightly). It starts from valid frames of every opcode
//! (a Hello, and one Request per operation, SUBSCRIBE, UNSUBSCRIBE and ACK included, plus a
//! batch of several) and mutates them: bit flips, byte inserts and deletes, edits of the
//! frame's length field and of other length-like words (0, 1, ±1, u32::MAX, u64::MAX),
//! splices of two frames, duplicated chunks and truncation.
//!
//! Half the mutants keep the frame and batch intact around mutated operation bodies (and
//! now and then opcodes), so that they reach the operation decoders: the server answers
//! those per operation instead of closing the connection.
//!
//! * `omnistock-fuzz decode --frames N --seed S`: feeds each mutant to the frame parser and
//!   the payload decoders in process (`Frame::parse`, `decode_request::<Hello>` /
//!   `<RequestBatch>`, `Op::from_raw`, the server's `convert` functions), asserting no panic
//!   (a panic aborts the run with the seed and the mutant's index) and bounded allocation:
//!   no single allocation during a decode over `--max-alloc-bytes` (default 4 MiB, four
//!   times the default frame limit), whatever length the mutant announces.
//! * `omnistock-fuzz server --frames N --seed S --server-bin PATH`: starts
//!   `omnistock serve` on a free loopback port with a fresh data directory and sends the
//!   mutants over TCP from `--connections` concurrent connections, each a Hello (valid,
//!   or now and then mutated) followed by a pipelined batch of `--batch` frames (mostly
//!   mutants, some valid), reading what comes back until the server closes or 200 ms pass.
//!   Beside it, a normal client pings every 100 ms; a ping not answered within
//!   `--hang-secs` (default 5) counts as a hang. At the end the server must still answer,
//!   then stop on SIGTERM with exit 0, and its stderr must not contain "panicked".
//!
//! Exit status 0 when every check held, 1 otherwise (the summary says which), 2 on bad
//! arguments. The same seed gives the same mutants (the server run's interleaving across
//! connections is the scheduler's).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig};
use omnistock::protocol::{self, messages::*, Frame, FrameKind, Op, RequestBatch};
use omnistock::server::convert;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- allocation accounting -------------------------------------------------------------

/// The system allocator, noting the largest single allocation while `TRACK` is set.
struct Counting;

static TRACK: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only reads the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc`; `ptr` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---- the corpus --------------------------------------------------------------------------

fn ops() -> Vec<Op> {
    let line = |sku: &str, qty, location: Option<&str>| WireLine {
        sku: sku.into(),
        qty,
        location: location.map(str::to_string),
    };
    vec![
        Op::Ping,
        Op::ServerInfo,
        Op::Reserve(Reserve {
            request_id: 11,
            reservation: 21,
            channel: "web".into(),
            lines: vec![line("A", 2, None), line("B", 1, Some("wh-a"))],
            allow_split: true,
            ttl_ms: 60_000,
        }),
        Op::Fulfill(Fulfill {
            request_id: 12,
            reservation: 21,
            lines: Some(vec![("A".into(), 1)]),
        }),
        Op::Release(Release {
            request_id: 13,
            reservation: 21,
        }),
        Op::Extend(Extend {
            request_id: 14,
            reservation: 21,
            ttl_ms: 30_000,
        }),
        Op::Adjust(Adjust {
            request_id: 15,
            sku: "A".into(),
            location: "wh-a".into(),
            delta: 10,
            reason: WireAdjustReason::Receipt,
            reference: "po-1".into(),
        }),
        Op::SetOnHand(SetOnHand {
            request_id: 16,
            sku: "A".into(),
            location: "wh-a".into(),
            on_hand: 5,
            expected: Some(10),
            reference: String::new(),
        }),
        Op::Move(MoveStock {
            request_id: 17,
            sku: "A".into(),
            location: "wh-a".into(),
            from: WireStockState::Sellable,
            to: WireStockState::Damaged,
            qty: 1,
        }),
        Op::Transfer(Transfer {
            request_id: 18,
            sku: "A".into(),
            from: "wh-a".into(),
            to: "st-b".into(),
            qty: 1,
            reference: "t".into(),
        }),
        Op::SetSafetyStock(SetSafetyStock {
            request_id: 19,
            sku: "A".into(),
            location: "wh-a".into(),
            qty: 2,
        }),
        Op::SetIncoming(SetIncoming {
            request_id: 20,
            sku: "A".into(),
            location: "wh-a".into(),
            qty: 7,
            eta_ms: 1_700_000_000_000,
        }),
        Op::UpsertLocation(UpsertLocation {
            request_id: 22,
            location: WireLocation {
                id: "wh-a".into(),
                kind: WireLocationKind::Warehouse,
                region: "eu".into(),
            },
        }),
        Op::UpsertChannel(UpsertChannel {
            request_id: 23,
            channel: WireChannel {
                id: "web".into(),
                locations: vec!["wh-a".into(), "st-b".into()],
                buffer: 1,
                cap: Some(100),
            },
        }),
        Op::ListLocations,
        Op::ListChannels,
        Op::GetSku(GetSku { sku: "A".into() }),
        Op::GetSkus(GetSkus {
            skus: vec!["A".into(), "B".into()],
        }),
        Op::GetReservation(GetReservation { reservation: 21 }),
        Op::ExplainAtp(ExplainAtp {
            sku: "A".into(),
            channel: "web".into(),
        }),
        Op::Velocity(GetVelocity { sku: "A".into() }),
        Op::AtRisk(AtRiskQuery {
            channel: "web".into(),
            window: 0,
            limit: 10,
        }),
        Op::AtRiskRegion(AtRiskRegionQuery {
            region: "eu".into(),
            window: 1,
            limit: 10,
        }),
        Op::RebalanceList(RebalanceQuery {
            sku: Some("A".into()),
            region: Some("eu".into()),
            limit: 10,
            near_hours: Some(24),
            surplus_hours: None,
            window: Some(1),
        }),
        Op::SetLowStock(SetLowStock {
            request_id: 24,
            channel: "web".into(),
            sku: None,
            threshold: 3,
        }),
        // Ids the fuzz catalog does not have: the delete path runs (and answers 3 / 4)
        // without taking the catalog the other operations use away.
        Op::DeleteLocation(DeleteLocation {
            request_id: 25,
            location: "fuzz-gone".into(),
        }),
        Op::DeleteChannel(DeleteChannel {
            request_id: 26,
            channel: "fuzz-gone".into(),
        }),
        Op::SetStockoutThreshold(SetStockoutThreshold {
            request_id: 25,
            channel: "web".into(),
            hours: 24,
        }),
        Op::Subscribe(Subscribe {
            name: "fuzz".into(),
            start: start::LIVE,
            from_seq: 0,
            channels: vec!["web".into()],
            skus: vec![],
            sku_prefix: "A".into(),
            kinds: kinds::ALL,
            coalesce_ms: 0,
        }),
        Op::Unsubscribe,
        Op::Ack(Ack {
            name: "fuzz".into(),
            seq: 1,
        }),
        Op::ListSkus(ListSkus {
            prefix: "A".into(),
            after: Some("A".into()),
            limit: 10,
        }),
        Op::ListReservations(ListReservations {
            sku: "A".into(),
            after: Some(21),
            limit: 10,
        }),
        Op::ListSubscriptions(ListSubscriptions {
            after: "f".into(),
            limit: 10,
        }),
        Op::DeleteSubscription(DeleteSubscription {
            name: "fuzz".into(),
        }),
        // Refused (no such parent; the server mode's backup_dir is its temporary directory).
        Op::Backup(Backup {
            to: "/nonexistent/omnistock-fuzz-backup".into(),
        }),
        Op::SkuHistory(SkuHistory {
            sku: "A".into(),
            from_seq: 1,
            from_index: 0,
            limit: 10,
        }),
    ]
}

fn request_frame(corr: u64, ops: &[Op]) -> Vec<u8> {
    let batch = RequestBatch {
        ops: ops.iter().map(|o| o.to_raw().expect("encodes")).collect(),
    };
    protocol::frame_of(FrameKind::Request, corr, &batch)
        .expect("encodes")
        .encode()
}

fn hello_frame() -> Vec<u8> {
    let h = Hello {
        magic: protocol::MAGIC,
        version: protocol::PROTOCOL_VERSION,
        client_name: "omnistock-fuzz".into(),
        token: String::new(),
    };
    protocol::frame_of(FrameKind::Hello, 0, &h)
        .expect("encodes")
        .encode()
}

/// Valid frames: the Hello first, then one Request per operation, then a batch of all.
fn corpus() -> Vec<Vec<u8>> {
    let ops = ops();
    let mut c = vec![hello_frame()];
    for (i, op) in ops.iter().enumerate() {
        c.push(request_frame(i as u64 + 1, std::slice::from_ref(op)));
    }
    c.push(request_frame(1000, &ops));
    c
}

// ---- mutation ----------------------------------------------------------------------------

const INTERESTING_U32: [u32; 8] = [0, 1, 8, 9, 10, 0x7fff_ffff, 0xffff_fffe, 0xffff_ffff];

/// One to four mutations of `base` (splices take from `other`).
fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..9) {
            // Bit flip.
            0 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                m[i] ^= 1 << rng.gen_range(0..8);
            }
            // Byte insert (random or a copy of a neighbour).
            1 => {
                let i = rng.gen_range(0..=m.len());
                for _ in 0..rng.gen_range(1..=8) {
                    m.insert(i, rng.gen());
                }
            }
            // Byte delete.
            2 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                let n = rng.gen_range(1..=8).min(m.len() - i);
                m.drain(i..i + n);
            }
            // The frame's length field: interesting values, or off by a little.
            3 if m.len() >= 4 => {
                let v = if rng.gen_bool(0.5) {
                    INTERESTING_U32[rng.gen_range(0..INTERESTING_U32.len())]
                } else {
                    let len = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                    len.wrapping_add(rng.gen_range(0..5)).wrapping_sub(2)
                };
                m[..4].copy_from_slice(&v.to_le_bytes());
            }
            // A length-like word inside the payload (bincode lengths are u64 LE).
            4 if m.len() >= 22 => {
                let i = rng.gen_range(13..m.len() - 8);
                let v: u64 = match rng.gen_range(0..4) {
                    0 => u64::MAX,
                    1 => u64::from(u32::MAX),
                    2 => rng.gen_range(0..64),
                    _ => 1 << rng.gen_range(20..40),
                };
                m[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            // Splice: our head, the other frame's tail.
            5 if !m.is_empty() && !other.is_empty() => {
                let a = rng.gen_range(0..m.len());
                let b = rng.gen_range(0..other.len());
                m.truncate(a);
                m.extend_from_slice(&other[b..]);
            }
            // Duplicate a chunk.
            6 if !m.is_empty() => {
                let a = rng.gen_range(0..m.len());
                let b = rng.gen_range(a..=m.len().min(a + 64));
                let chunk = m[a..b].to_vec();
                let at = rng.gen_range(0..=m.len());
                m.splice(at..at, chunk);
            }
            // Truncate.
            7 if !m.is_empty() => {
                let n = rng.gen_range(0..m.len());
                m.truncate(n);
            }
            // The kind byte, or the opcode right after the batch's op count.
            8 if m.len() > 4 => {
                if rng.gen_bool(0.5) {
                    m[4] = rng.gen_range(0..10);
                } else if m.len() >= 23 {
                    // frame header 13 + ops length 8: the first opcode (u16 LE).
                    let op: u16 = rng.gen_range(0..0x0800);
                    m[21..23].copy_from_slice(&op.to_le_bytes());
                }
            }
            _ => {}
        }
    }
    m
}

/// The `i`-th mutant of the run with `seed`: deterministic.
struct Mutants {
    rng: StdRng,
    corpus: Vec<Vec<u8>>,
    /// Every operation, encoded (opcode and body).
    raw_ops: Vec<RawOp>,
}

impl Mutants {
    fn new(seed: u64) -> Mutants {
        Mutants {
            rng: StdRng::seed_from_u64(seed),
            corpus: corpus(),
            raw_ops: ops().iter().map(|o| o.to_raw().expect("encodes")).collect(),
        }
    }

    /// A well-formed frame and batch around one to three operations whose bodies (and,
    /// one in eight, opcodes) are mutated: reaches the operation decoders behind an
    /// intact envelope, which the server answers per operation instead of closing.
    fn body_mutant(&mut self, corr: u64) -> Vec<u8> {
        let n = self.rng.gen_range(1..=3);
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let a = self.rng.gen_range(0..self.raw_ops.len());
            let b = self.rng.gen_range(0..self.raw_ops.len());
            let mut op = self.raw_ops[a].clone();
            op.body = mutate(&mut self.rng, &op.body, &self.raw_ops[b].body);
            if self.rng.gen_ratio(1, 8) {
                op.opcode = self.raw_ops[b].opcode ^ (1 << self.rng.gen_range(0..16));
            }
            ops.push(op);
        }
        protocol::frame_of(FrameKind::Request, corr, &RequestBatch { ops })
            .expect("encodes")
            .encode()
    }

    fn next(&mut self) -> Vec<u8> {
        let a = self.rng.gen_range(0..self.corpus.len());
        let b = self.rng.gen_range(0..self.corpus.len());
        let (base, other) = (&self.corpus[a], &self.corpus[b]);
        mutate(&mut self.rng, base, other)
    }

    fn valid(&mut self) -> Vec<u8> {
        // Not the Hello (index 0).
        let i = self.rng.gen_range(1..self.corpus.len());
        self.corpus[i].clone()
    }
}

// ---- decode mode -------------------------------------------------------------------------

/// Runs every decoder the server runs on a frame's bytes; what they return is ignored,
/// only panics and allocations matter.
fn decode_all(bytes: &[u8], max_frame: usize) -> Outcome {
    let frame = match Frame::parse(bytes, max_frame) {
        Ok(Some((f, _))) => f,
        Ok(None) => return Outcome::Partial,
        Err(_) => return Outcome::FrameError,
    };
    if frame.kind == FrameKind::Hello || frame.payload.starts_with(&protocol::MAGIC) {
        let _ = protocol::decode_request::<Hello>(&frame.payload);
    }
    let Ok(batch) = protocol::decode_request::<RequestBatch>(&frame.payload) else {
        return Outcome::PayloadError;
    };
    let mut decoded = 0;
    // No engine in process: ids resolve against an empty catalog (all new, as the
    // server resolves ids it does not know).
    let catalog = omnistock::domain::Catalog::default();
    let ids = convert::SharedIds {
        engine: None,
        catalog: &catalog,
    };
    for raw in &batch.ops {
        if raw.opcode == protocol::opcode::RESERVE {
            // The server's in-place decode of a reserve, beside the owned one below.
            if let Ok(r) = protocol::ops::decode_reserve_ref(&raw.body) {
                drop(convert::reserve_command_ref(&r, &ids));
            }
        }
        let Ok(Some(op)) = Op::from_raw(raw) else {
            continue;
        };
        decoded += 1;
        let _ = op.request_id();
        match &op {
            Op::Reserve(r) => drop(convert::reserve_command(r)),
            Op::Fulfill(f) => drop(convert::fulfill_command(f)),
            Op::Adjust(a) => drop(convert::adjust_command(a, &ids)),
            Op::SetOnHand(a) => drop(convert::set_on_hand_command(a, &ids)),
            Op::Move(a) => drop(convert::move_command(a, &ids)),
            Op::Transfer(a) => drop(convert::transfer_command(a, &ids)),
            Op::SetSafetyStock(a) => drop(convert::safety_command(a, &ids)),
            Op::SetIncoming(a) => drop(convert::incoming_command(a, &ids)),
            Op::UpsertLocation(u) => drop(convert::location_command(u)),
            Op::UpsertChannel(u) => drop(convert::channel_command(u, &ids)),
            Op::SetLowStock(u) => drop(convert::low_stock_command(u)),
            Op::DeleteLocation(d) => drop(convert::delete_location_command(d)),
            Op::DeleteChannel(d) => drop(convert::delete_channel_command(d)),
            Op::SetStockoutThreshold(u) => drop(convert::stockout_threshold_command(u)),
            Op::ExplainAtp(e) => drop(convert::explain_ids(e)),
            _ => {}
        }
    }
    if decoded > 0 {
        Outcome::Decoded
    } else {
        Outcome::OpsRejected
    }
}

/// Which decoder made the largest allocation for `bytes` (run again, stage by stage).
fn stage_of_largest(bytes: &[u8]) -> &'static str {
    let measure = |f: &dyn Fn()| {
        LARGEST.store(0, Ordering::Relaxed);
        TRACK.store(true, Ordering::Relaxed);
        f();
        TRACK.store(false, Ordering::Relaxed);
        LARGEST.load(Ordering::Relaxed)
    };
    let parse = measure(&|| drop(Frame::parse(bytes, protocol::DEFAULT_MAX_FRAME_BYTES)));
    let Ok(Some((frame, _))) = Frame::parse(bytes, protocol::DEFAULT_MAX_FRAME_BYTES) else {
        return "Frame::parse";
    };
    let p = &frame.payload;
    let stages: [(&'static str, usize); 4] = [
        ("Frame::parse", parse),
        (
            "decode_request::<Hello>",
            measure(&|| drop(protocol::decode_request::<Hello>(p))),
        ),
        (
            "decode_request::<RequestBatch>",
            measure(&|| drop(protocol::decode_request::<RequestBatch>(p))),
        ),
        (
            "Op::from_raw / convert",
            measure(&|| {
                if let Ok(b) = protocol::decode_request::<RequestBatch>(p) {
                    for raw in &b.ops {
                        drop(Op::from_raw(raw));
                    }
                }
            }),
        ),
    ];
    stages.iter().max_by_key(|s| s.1).map_or("?", |s| s.0)
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Partial,
    FrameError,
    PayloadError,
    OpsRejected,
    Decoded,
}

fn run_decode(a: &Args) -> bool {
    let start = Instant::now();
    let mut m = Mutants::new(a.seed);
    let mut counts = [0u64; 5];
    let mut largest = 0usize;
    let mut over = 0u64;
    for i in 0..a.frames {
        let bytes = if i % 2 == 0 {
            m.next()
        } else {
            m.body_mutant(i)
        };
        LARGEST.store(0, Ordering::Relaxed);
        TRACK.store(true, Ordering::Relaxed);
        let r = std::panic::catch_unwind(|| decode_all(&bytes, protocol::DEFAULT_MAX_FRAME_BYTES));
        TRACK.store(false, Ordering::Relaxed);
        let got = LARGEST.load(Ordering::Relaxed);
        largest = largest.max(got);
        if got > a.max_alloc_bytes {
            over += 1;
            eprintln!(
                "mutant {i} (seed {}): one allocation of {got} bytes (limit {}) in {}, input \
                 {} bytes: {bytes:02x?}",
                a.seed,
                a.max_alloc_bytes,
                stage_of_largest(&bytes),
                bytes.len()
            );
        }
        match r {
            Ok(o) => counts[o as usize] += 1,
            Err(_) => {
                eprintln!("mutant {i} (seed {}) panicked: {bytes:02x?}", a.seed);
                return false;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "decode: {} mutants, seed {}, {secs:.1} s ({:.0}/s): partial {}, frame error {}, \
         payload error {}, every op rejected {}, some op decoded {}; panics 0; largest \
         single allocation {largest} bytes (limit {}), over the limit {over}",
        a.frames,
        a.seed,
        a.frames as f64 / secs,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        a.max_alloc_bytes
    );
    over == 0
}

// ---- server mode -------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    frames: AtomicU64,
    connections: AtomicU64,
    answers: AtomicU64,
    bytes_back: AtomicU64,
    responses: AtomicU64,
    errors: AtomicU64,
    other_frames: AtomicU64,
    pings: AtomicU64,
    hangs: AtomicU64,
    ping_errors: AtomicU64,
    slowest_ping_us: AtomicU64,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// One connection: a Hello (one in 16 mutated), a pipelined batch, reads until close or
/// 200 ms of silence.
async fn one_connection(addr: SocketAddr, mut m: Mutants, batch: usize, stats: &Stats) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut out = if m.rng.gen_ratio(1, 16) {
        let other = m.corpus[1].clone();
        mutate(&mut m.rng, &hello_frame(), &other)
    } else {
        hello_frame()
    };
    for i in 0..batch {
        // A quarter valid, a half with mutated operations in an intact frame (answered
        // per operation), a quarter mutated anywhere (usually the connection's last).
        let f = match m.rng.gen_range(0..4) {
            0 => m.valid(),
            1 | 2 => m.body_mutant(i as u64 + 1),
            _ => m.next(),
        };
        out.extend_from_slice(&f);
    }
    stats.frames.fetch_add(batch as u64 + 1, Ordering::Relaxed);
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut back = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    stats.bytes_back.fetch_add(n as u64, Ordering::Relaxed);
                    stats.answers.fetch_add(1, Ordering::Relaxed);
                    back.extend_from_slice(&buf[..n]);
                }
            }
        }
        back
    };
    let ((), back) = tokio::join!(write, read);
    // What the server answered, frame by frame: a Response per request frame it ran, an
    // Error for a connection-level refusal (then it closed).
    let mut at = 0;
    while let Ok(Some((f, used))) = Frame::parse(&back[at..], usize::MAX) {
        at += used;
        let counter = match f.kind {
            FrameKind::Response => &stats.responses,
            FrameKind::Error => &stats.errors,
            _ => &stats.other_frames,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn pinger(addr: SocketAddr, hang: Duration, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut cfg = ClientConfig::new(addr.to_string());
    cfg.client_name = "fuzz-pinger".into();
    cfg.request_timeout = hang;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = tokio::time::timeout(hang, Client::connect(cfg.clone()))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let t = Instant::now();
        let ok = match &client {
            Some(c) => tokio::time::timeout(hang, c.ping()).await,
            None => Ok(Err(omnistock::client::ClientError::Timeout)),
        };
        let us = t.elapsed().as_micros() as u64;
        stats.pings.fetch_add(1, Ordering::Relaxed);
        stats.slowest_ping_us.fetch_max(us, Ordering::Relaxed);
        match ok {
            Ok(Ok(_)) => {}
            Err(_) | Ok(Err(omnistock::client::ClientError::Timeout)) => {
                stats.hangs.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
            Ok(Err(_)) => {
                stats.ping_errors.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_server(a: &Args) -> bool {
    let Some(bin) = a.server_bin.clone().or_else(|| {
        let me = std::env::current_exe().ok()?;
        Some(me.with_file_name("omnistock"))
    }) else {
        eprintln!("--server-bin: cannot find the omnistock binary");
        return false;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stderr_path = dir.path().join("serve.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = match Command::new(&bin)
        .args(["serve", "--init", "--listen", &addr.to_string()])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // A mutant that decodes as BACKUP must not make the server write outside its
        // temporary directory.
        .arg("--backup-dir")
        .arg(dir.path())
        .args([
            "--durability",
            "relaxed",
            "--per-source-limit-on-loopback",
            "false",
        ])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", bin.display());
            return false;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            eprintln!("omnistock serve did not listen on {addr}");
            let _ = child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let (frames, batch, conns, seed) = (a.frames, a.batch, a.connections, a.seed);
    let hang = Duration::from_secs(a.hang_secs);
    let alive_at_end = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let ping = tokio::spawn(pinger(addr, hang, stats.clone(), stop.clone()));
        let next = Arc::new(AtomicU64::new(0));
        let per_conn = batch as u64 + 1;
        let total_conns = frames.div_ceil(per_conn);
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (stats, next) = (stats.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total_conns {
                        break;
                    }
                    let m = Mutants::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    one_connection(addr, m, batch, &stats).await;
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = ping.await;
        // The server still answers a normal client.
        let c = Client::connect(ClientConfig::new(addr.to_string())).await;
        match c {
            Ok(c) => c.ping().await.is_ok(),
            Err(_) => false,
        }
    });
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: sending SIGTERM to the child we started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let exit = child.wait().expect("wait for serve");
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let panicked = log.contains("panicked");
    let s = &stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "server: {} frames on {} connections ({} concurrent, {} frames each after the \
         Hello), seed {seed}, {secs:.1} s ({:.0} frames/s); back: {} bytes in {} reads, \
         {} Response frames (request frames run), {} Error frames (connection-level \
         refusals), {} Welcome/Push frames; normal client: {} pings, {} hangs (no answer within {} s), {} errors, \
         slowest {:.1} ms; alive at the end: {alive_at_end}; exit on SIGTERM: {exit}; \
         \"panicked\" in stderr: {panicked}",
        get(&s.frames),
        get(&s.connections),
        conns,
        batch,
        get(&s.frames) as f64 / secs,
        get(&s.bytes_back),
        get(&s.answers),
        get(&s.responses),
        get(&s.errors),
        get(&s.other_frames),
        get(&s.pings),
        get(&s.hangs),
        a.hang_secs,
        get(&s.ping_errors),
        get(&s.slowest_ping_us) as f64 / 1000.0,
    );
    if panicked {
        eprintln!("{log}");
    }
    alive_at_end && exit.success() && !panicked && get(&s.hangs) == 0 && get(&s.ping_errors) == 0
}

// ---- arguments ---------------------------------------------------------------------------

struct Args {
    mode: String,
    frames: u64,
    seed: u64,
    max_alloc_bytes: usize,
    connections: usize,
    batch: usize,
    hang_secs: u64,
    server_bin: Option<std::path::PathBuf>,
}

const USAGE: &str = "usage: omnistock-fuzz decode|server [--frames N (100000)] [--seed S (1)] \
    [--max-alloc-bytes B (4194304)] [--connections N (32)] [--batch N (16)] \
    [--hang-secs S (5)] [--server-bin PATH (omnistock beside this binary)]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or("no mode")?;
    if mode != "decode" && mode != "server" {
        return Err(format!("mode {mode:?}: decode or server"));
    }
    let mut a = Args {
        mode,
        frames: 100_000,
        seed: 1,
        max_alloc_bytes: 4 << 20,
        connections: 32,
        batch: 16,
        hang_secs: 5,
        server_bin: None,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} {v:?}: not a number"))
        };
        match flag.as_str() {
            "--frames" => a.frames = num(&v)?,
            "--seed" => a.seed = num(&v)?,
            "--max-alloc-bytes" => a.max_alloc_bytes = num(&v)? as usize,
            "--connections" => a.connections = (num(&v)? as usize).clamp(1, 1000),
            "--batch" => a.batch = (num(&v)? as usize).clamp(1, 1000),
            "--hang-secs" => a.hang_secs = num(&v)?.max(1),
            "--server-bin" => a.server_bin = Some(v.into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // A panic in a decoder is reported by `run_decode` with its mutant; keep the default
    // hook's message too (it names the place).
    let ok = match a.mode.as_str() {
        "decode" => run_decode(&a),
        _ => run_server(&a),
    };
    std::process::exit(if ok { 0 } else { 1 });
}
