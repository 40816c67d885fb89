//! The durable SKU history (issue 15, `SKU_HISTORY` 0x0601, docs/history-design.md).
//!
//! On the real `omnistock serve`: events before a checkpoint and after it, then kill -9
//! and a restart: the SKU's history is complete and in order with its reasons, references
//! and request ids, pages of any size cover it exactly once, roles are enforced, and the
//! offline `dump` and `check` read the same history. In process: a crash between writing
//! the history and truncating the log (and one in the middle of writing it) neither loses
//! nor doubles an event; retention by count and by age drops exactly what it should; a
//! property test runs random events, checkpoints, restarts and crash points against a
//! model that is a list of events per SKU.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{rid, serve_with_tokens, wire_catalog};
use omnistock::client::{Client, ClientConfig, ClientError};
use omnistock::domain::{AdjustReason, Event, SkuCommand};
use omnistock::engine::{history, Command, Engine, ManualClock, PersistConfig, Request};
use omnistock::protocol::{history_kind, Adjust, Op, WireAdjustReason, WireHistoryEvent};
use omnistock::wal::{Init, Wal, WalConfig};
use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const ADMIN: &str = "hist-admin-token";
const ADAPTER: &str = "hist-adapter-token";
const CHECKOUT: &str = "hist-checkout-token";

async fn serve(data: &std::path::Path) -> (tokio::process::Child, u16, u16) {
    let tokens = format!("{ADMIN}:admin,{ADAPTER}:adapter,{CHECKOUT}:checkout");
    serve_with_tokens(data, &tokens, &["--checkpoint-every-records", "25"]).await
}

fn cfg(port: u16, token: &str) -> ClientConfig {
    ClientConfig::new(format!("127.0.0.1:{port}")).token(token)
}

/// The checkpoints the server has completed, from its `/metrics`.
async fn checkpoints(http: u16) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await else {
        return 0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    text.lines()
        .find(|l| l.starts_with("omnistock_checkpoint_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the test expects of one event: (request id, kind, quantity, reason, reference).
type Expected = (u128, u8, i64, String, String);

// Shrinkage (-1) comes third: after the first two added stock.
const REASONS: [(WireAdjustReason, &str); 3] = [
    (WireAdjustReason::Receipt, "receipt"),
    (WireAdjustReason::Correction, "correction"),
    (WireAdjustReason::Shrinkage, "shrinkage"),
];

/// `n` adjusts of `sku`, each with its own reason and reference; what to expect of them.
async fn adjusts(c: &Client, sku: &str, first: usize, n: usize) -> Vec<Expected> {
    let mut out = Vec::new();
    for i in first..first + n {
        let (reason, name) = REASONS[i % REASONS.len()];
        let delta = if reason == WireAdjustReason::Shrinkage {
            -1
        } else {
            i as i64 + 1
        };
        let request_id = rid() + (1 << 100);
        c.apply(Op::Adjust(Adjust {
            request_id,
            sku: sku.into(),
            location: "wh".into(),
            delta,
            reason,
            reference: format!("doc-{i}"),
        }))
        .await
        .expect("adjust");
        out.push((
            request_id,
            history_kind::STOCK_ADJUSTED,
            delta,
            name.to_owned(),
            format!("doc-{i}"),
        ));
    }
    out
}

fn expected_of(e: &WireHistoryEvent) -> Expected {
    (
        e.request_id,
        e.kind,
        e.quantity,
        e.reason.clone(),
        e.reference.clone(),
    )
}

/// The whole history of `sku` in pages of `limit`, checking that the cursors move on.
async fn all_pages(c: &Client, sku: &str, limit: u32) -> Vec<WireHistoryEvent> {
    let mut out: Vec<WireHistoryEvent> = Vec::new();
    let mut from = (0, 0);
    for _ in 0..10_000 {
        let page = c.sku_history(sku, from, limit).await.expect("history page");
        assert_eq!(page.sku, sku);
        assert_eq!(page.base_seq, 1, "a new directory has history from seq 1");
        assert!(page.events.len() <= limit as usize);
        out.extend(page.events);
        match page.next {
            Some(next) => {
                assert!(next > from, "the cursor moves on: {next:?} after {from:?}");
                from = next;
            }
            None => return out,
        }
    }
    panic!("history of {sku} did not end");
}

async fn check_history(c: &Client, sku: &str, want: &[Expected]) {
    for limit in [1, 7, 1000] {
        let got = all_pages(c, sku, limit).await;
        let seqs: Vec<(u64, u16)> = got.iter().map(|e| (e.seq, e.index)).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seqs, sorted, "in order, each once (limit {limit})");
        let got: Vec<Expected> = got.iter().map(expected_of).collect();
        assert_eq!(got, want, "history of {sku} with pages of {limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_complete_across_a_checkpoint_and_a_kill_9_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, port, http) = serve(&data).await;
    let admin = Client::connect(cfg(port, ADMIN)).await.unwrap();
    wire_catalog(&admin).await;
    // Interleaved with another SKU's events, which H-1's history must not show.
    let mut want = adjusts(&admin, "H-1", 0, 20).await;
    let other = adjusts(&admin, "H-2", 100, 10).await;
    want.extend(adjusts(&admin, "H-1", 20, 5).await);
    // 37 records logged; the checkpoint task (every 25, polled each second) cuts the log.
    let mut waited = 0;
    while checkpoints(http).await == 0 {
        waited += 1;
        assert!(waited < 300, "no checkpoint within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    want.extend(adjusts(&admin, "H-1", 25, 6).await);
    let adapter = Client::connect(cfg(port, ADAPTER)).await.unwrap();
    check_history(&adapter, "H-1", &want).await;
    check_history(&adapter, "H-2", &other).await;
    let page = adapter.sku_history("H-1", (0, 0), 1000).await.unwrap();
    let first = &page.events[0];
    assert_eq!((first.location.as_str(), first.index), ("wh", 0));
    assert!(first.at_ms > 1_600_000_000_000, "a wall-clock time");
    // Checkout does not read history (104); bad limits are 12; an unknown SKU has none.
    let checkout = Client::connect(cfg(port, CHECKOUT)).await.unwrap();
    let status = |e: ClientError| match e {
        ClientError::Status { status, .. } => status,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(
        status(checkout.sku_history("H-1", (0, 0), 10).await.unwrap_err()),
        104
    );
    for limit in [0, 1001] {
        assert_eq!(
            status(adapter.sku_history("H-1", (0, 0), limit).await.unwrap_err()),
            12
        );
    }
    let none = adapter.sku_history("NOPE", (0, 0), 10).await.unwrap();
    assert!(none.events.is_empty() && none.next.is_none());
    drop((admin, adapter, checkout));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (mut child, port, _) = serve(&data).await;
    let adapter = Client::connect(cfg(port, ADAPTER)).await.unwrap();
    check_history(&adapter, "H-1", &want).await;
    check_history(&adapter, "H-2", &other).await;
    // The JSON form of ctl: ids as strings, the reason and reference of each event.
    let out = std::process::Command::new(BIN)
        .args([
            "ctl",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--token",
            ADAPTER,
        ])
        .args(["--json", "history", "H-1", "--limit", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    assert_eq!(v["events"][0]["reference"], "doc-0");
    assert_eq!(v["events"][0]["kind"], "stock_adjusted");
    assert_eq!(
        v["events"][0]["request_id"],
        format!("{:032x}", want[0].0),
        "request id as 32 hex digits"
    );
    assert_eq!(v["next"]["from"], page.events[3].seq);
    drop(adapter);
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // Offline: dump prints the same history; check counts the derived part.
    let dump = std::process::Command::new(BIN)
        .arg("dump")
        .arg(&data)
        .args(["--sku", "H-1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("seq=")).collect();
    assert_eq!(lines.len(), want.len(), "{text}");
    for (line, w) in lines.iter().zip(&want) {
        assert!(line.contains(&format!("request={:032x}", w.0)), "{line}");
        assert!(line.contains(&format!("reference: \"{}\"", w.4)), "{line}");
    }
    assert!(text.contains(&format!("# {} events", want.len())), "{text}");
    let check = std::process::Command::new(BIN)
        .arg("check")
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    let derived_below: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("history: ")?
                .split("derived below seq ")
                .nth(1)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no history line: {text}"));
    assert!(
        derived_below > 25,
        "a checkpoint derived the history: {text}"
    );
}

// ---- in process ------------------------------------------------------------------------

fn persist(dir: &std::path::Path, clock: &Arc<ManualClock>) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    // Checkpoints only when the test asks.
    c.checkpoint_every_records = 0;
    c.clock = Some(clock.clone());
    c
}

async fn open(c: &PersistConfig) -> Engine {
    Engine::open(c.clone()).await.expect("open")
}

async fn setup(e: &Engine) {
    common::small_catalog(e).await;
}

/// An adjust of `sku` at wh-a by `delta` with `reference`; its request id.
async fn adjust(e: &Engine, sku: &str, delta: i64, reference: &str) -> u128 {
    let id = rid();
    e.execute(Request {
        id,
        command: Command::Stock {
            sku: common::sku(sku),
            command: SkuCommand::Adjust {
                location: common::loc("wh-a"),
                delta,
                reason: AdjustReason::Receipt,
                reference: reference.into(),
            },
        },
    })
    .await
    .expect("adjust");
    id
}

/// The whole history of `sku` through the engine, in pages of `limit`: (request, reference).
async fn history_of(e: &Engine, sku: &str, limit: u32) -> Vec<(u128, String)> {
    let sku = common::sku(sku);
    let mut out = Vec::new();
    let mut from = (0, 0);
    loop {
        let page = e.history(&sku, from, limit).await.expect("history");
        for h in page.entries {
            let Event::StockAdjusted { reference, .. } = h.event else {
                panic!("only adjusts here: {:?}", h.event);
            };
            out.push((h.request, reference));
        }
        match page.next {
            Some(n) => {
                assert!(n > from);
                from = n;
            }
            None => return out,
        }
    }
}

fn wal_of(dir: &std::path::Path) -> Wal {
    let mut c = WalConfig::new(dir);
    c.init = Init::Refuse;
    Wal::open(c).expect("open the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_writing_history_and_truncating_the_log_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = persist(dir.path(), &clock);
    let e = open(&cfg).await;
    setup(&e).await;
    let mut want = Vec::new();
    for i in 0..12 {
        want.push((adjust(&e, "A", 1, &format!("a{i}")).await, format!("a{i}")));
    }
    e.shutdown();
    drop(e);

    // The checkpoint's first step alone (history written and marked), then "crash": the
    // log still holds every record the history now holds too.
    let wal = wal_of(dir.path());
    let upto = wal.last_assigned_seq() + 1;
    assert!(history::derive(&wal, upto).unwrap() >= 12);
    assert_eq!(wal.history_marks().unwrap().upto, upto);
    assert_eq!(wal.replay_floor(), 1, "nothing truncated");
    drop(wal);
    let e = open(&cfg).await;
    assert_eq!(history_of(&e, "A", 5).await, want);
    for i in 12..15 {
        want.push((adjust(&e, "A", 1, &format!("a{i}")).await, format!("a{i}")));
    }
    e.shutdown();
    drop(e);

    // A crash in the middle of writing: items at and above the marker are in the tree
    // (written), the marker still below them (the mark step never ran).
    let wal = wal_of(dir.path());
    let marks = wal.history_marks().unwrap();
    let end = wal.last_assigned_seq() + 1;
    history::derive(&wal, end).unwrap();
    wal.mark_history(marks.base, marks.upto).unwrap();
    drop(wal);
    let e = open(&cfg).await;
    assert_eq!(history_of(&e, "A", 4).await, want, "no event twice");
    // The next checkpoint writes those items again (same keys) and truncates the log.
    e.checkpoint().await.unwrap();
    assert_eq!(history_of(&e, "A", 3).await, want);
    want.push((adjust(&e, "A", 1, "tail").await, "tail".into()));
    e.checkpoint().await.unwrap();
    assert_eq!(history_of(&e, "A", 1000).await, want);
    e.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_only_events_beyond_the_count_and_older_than_the_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(10 * 86_400_000));
    let mut cfg = persist(dir.path(), &clock);
    cfg.history.max_events_per_sku = 4;
    cfg.history.retention_days = 1;
    let e = open(&cfg).await;
    setup(&e).await;
    // B: 2 events, then 3 two days later (the age limit drops the first two); A: 10
    // events (the count limit keeps 4); C: 1 event, kept.
    let mut b = Vec::new();
    for i in 0..2 {
        b.push((adjust(&e, "B", 1, &format!("b{i}")).await, format!("b{i}")));
    }
    clock.advance(2 * 86_400_000);
    for i in 2..5 {
        b.push((adjust(&e, "B", 1, &format!("b{i}")).await, format!("b{i}")));
    }
    let mut a = Vec::new();
    for i in 0..10 {
        a.push((adjust(&e, "A", 1, &format!("a{i}")).await, format!("a{i}")));
    }
    let c = vec![(adjust(&e, "C", 1, "c0").await, "c0".to_string())];
    // Before a checkpoint nothing is dropped: retention runs at checkpoint time.
    assert_eq!(history_of(&e, "A", 1000).await, a);
    e.checkpoint().await.unwrap();
    assert_eq!(history_of(&e, "A", 3).await, a[6..].to_vec());
    assert_eq!(history_of(&e, "B", 3).await, b[2..].to_vec());
    assert_eq!(history_of(&e, "C", 3).await, c);
    // Across a restart, and with later events (kept: 4 newest again at the next one).
    e.shutdown();
    drop(e);
    let e = open(&cfg).await;
    assert_eq!(history_of(&e, "A", 2).await, a[6..].to_vec());
    for i in 10..12 {
        a.push((adjust(&e, "A", 1, &format!("a{i}")).await, format!("a{i}")));
    }
    assert_eq!(history_of(&e, "A", 2).await, a[6..].to_vec(), "tail shown");
    e.checkpoint().await.unwrap();
    assert_eq!(history_of(&e, "A", 2).await, a[8..].to_vec());
    e.shutdown();
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    /// An adjust of SKU `0..3`.
    Adjust(u8),
    /// A checkpoint.
    Checkpoint,
    /// Shutdown and reopen.
    Restart,
    /// Shutdown, the history derived and marked (the checkpoint's first step) and a crash
    /// before the log is truncated; then reopen.
    CrashAfterHistory,
    /// Shutdown, the history derived but its marker left where it was (a crash while
    /// writing the items); then reopen.
    CrashWhileWriting,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..3).prop_map(Step::Adjust),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Restart),
        1 => Just(Step::CrashAfterHistory),
        1 => Just(Step::CrashWhileWriting),
    ]
}

async fn run_model(steps: Vec<Step>, limit: u32) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = persist(dir.path(), &clock);
    let mut e = Some(open(&cfg).await);
    setup(e.as_ref().unwrap()).await;
    // The model: each SKU's events (request id, reference) in order.
    let mut model: Vec<Vec<(u128, String)>> = vec![Vec::new(); 3];
    for (i, s) in steps.into_iter().enumerate() {
        let engine = e.as_ref().unwrap();
        match s {
            Step::Adjust(k) => {
                let reference = format!("r{i}");
                let id = adjust(engine, &format!("S{k}"), 1, &reference).await;
                model[usize::from(k)].push((id, reference));
            }
            Step::Checkpoint => {
                engine.checkpoint().await.unwrap();
            }
            Step::Restart | Step::CrashAfterHistory | Step::CrashWhileWriting => {
                let engine = e.take().unwrap();
                engine.shutdown();
                drop(engine);
                if !matches!(s, Step::Restart) {
                    let wal = wal_of(dir.path());
                    let marks = wal.history_marks().unwrap();
                    history::derive(&wal, wal.last_assigned_seq() + 1).unwrap();
                    if matches!(s, Step::CrashWhileWriting) {
                        wal.mark_history(marks.base, marks.upto).unwrap();
                    }
                }
                e = Some(open(&cfg).await);
            }
        }
    }
    let engine = e.take().unwrap();
    for (k, want) in model.iter().enumerate() {
        let got = history_of(&engine, &format!("S{k}"), limit).await;
        prop_assert_eq!(&got, want, "SKU S{} with pages of {}", k, limit);
    }
    engine.shutdown();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn history_equals_the_model_through_checkpoints_restarts_and_crashes(
        steps in proptest::collection::vec(step(), 1..28),
        limit in 1u32..6,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_model(steps, limit))?;
    }
}

/// Disk cost of the history per event (docs/history-design.md, "Cost per event"): N
/// adjusts over 100 SKUs, then a checkpoint derives them; prints sled's size on disk before
/// and after and the history tree's own bytes. A measurement, run by hand:
/// `cargo test --release --test history -- --ignored --nocapture measure`
/// (OMNISTOCK_HISTORY_EVENTS sets N, default 100,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_history_bytes_per_event() {
    let n: usize = std::env::var("OMNISTOCK_HISTORY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut cfg = persist(dir.path(), &clock);
    cfg.history.max_events_per_sku = 0;
    let e = Arc::new(open(&cfg).await);
    setup(&e).await;
    e.checkpoint().await.unwrap();
    let disk = |e: &Engine| e.log_stats().unwrap().approx_disk_bytes;
    let empty = disk(&e);
    // Before: the events in the log only (what the log costs anyway).
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    for w in 0..32 {
        let e = e.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut i = w;
            while i < n {
                adjust(&e, &format!("SKU-{:05}", i % 100), 1, &format!("PO-{i:08}")).await;
                i += 32;
            }
            let _ = tx.send(()).await;
        });
    }
    drop(tx);
    while rx.recv().await.is_some() {}
    let logged = disk(&e);
    let t = std::time::Instant::now();
    e.checkpoint().await.unwrap();
    let took = t.elapsed();
    let after = disk(&e);
    e.shutdown();
    drop(e);
    let wal = wal_of(dir.path());
    let (events, bytes) = wal.history_size().unwrap();
    assert_eq!(events, n as u64, "every event derived once");
    println!(
        "{n} events over 100 SKUs: sled on disk {empty} bytes before, {logged} with them in \
         the log, {after} after the checkpoint moved them to the history ({:.1} bytes/event \
         over the empty directory); history keys+values {bytes} bytes ({:.1} bytes/event); \
         that checkpoint (derivation included) took {took:?}",
        after.saturating_sub(empty) as f64 / n as f64,
        bytes as f64 / n as f64
    );
}
