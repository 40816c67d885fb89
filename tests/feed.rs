//! Stock-change subscriptions end to end: the real server on port 0, the real client's
//! `Subscriber`, TCP in between. Ordering, resumption without gap or duplicate (also across a
//! restart), snapshot when the log no longer holds the position, each threshold transition,
//! coalescing, and a stalled subscriber disconnected while reservations keep flowing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use omnistock::client::{Client, ClientConfig, ClientError, Subscriber};
use omnistock::engine::{Engine, EngineConfig, PersistConfig};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig, ShutdownHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TestServer {
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn stop(self) {
        self.stop.shutdown();
        let _ = self.task.await;
        self.engine.shutdown();
    }
}

fn engine_config(retention: usize) -> EngineConfig {
    EngineConfig {
        arbiters: 2,
        feed_retention_records: retention,
        ..EngineConfig::default()
    }
}

async fn serve(engine: Engine, f: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let engine = Arc::new(engine);
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    f(&mut cfg);
    let server = Server::bind(cfg, engine.clone()).await.unwrap();
    TestServer {
        addr: server.local_addr(),
        stop: server.shutdown_handle(),
        task: tokio::spawn(server.run()),
        engine,
    }
}

async fn start(retention: usize) -> TestServer {
    serve(
        Engine::start_in_memory(engine_config(retention)).unwrap(),
        |_| {},
    )
    .await
}

async fn start_durable(dir: &std::path::Path, retention: usize) -> TestServer {
    let mut pc = PersistConfig::new(dir);
    pc.engine = engine_config(retention);
    serve(Engine::open(pc).await.unwrap(), |_| {}).await
}

async fn client(s: &TestServer) -> Client {
    Client::connect(ClientConfig::new(s.addr.to_string()))
        .await
        .unwrap()
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
fn rid() -> u128 {
    u128::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Locations wh, st; channel web (wh, st), channel shop (st).
async fn catalog(c: &Client) {
    for id in ["wh", "st"] {
        c.apply(Op::UpsertLocation(UpsertLocation {
            request_id: rid(),
            location: WireLocation {
                id: id.into(),
                kind: WireLocationKind::Warehouse,
                region: "FR".into(),
            },
        }))
        .await
        .unwrap();
    }
    for (id, locs) in [("web", vec!["wh", "st"]), ("shop", vec!["st"])] {
        c.apply(Op::UpsertChannel(UpsertChannel {
            request_id: rid(),
            channel: WireChannel {
                id: id.into(),
                locations: locs.into_iter().map(String::from).collect(),
                buffer: 0,
                cap: None,
            },
        }))
        .await
        .unwrap();
    }
}

async fn adjust(c: &Client, sku: &str, loc: &str, delta: i64) -> u64 {
    c.apply(Op::Adjust(Adjust {
        request_id: rid(),
        sku: sku.into(),
        location: loc.into(),
        delta,
        reason: WireAdjustReason::Receipt,
        reference: String::new(),
    }))
    .await
    .unwrap()
    .seq
}

/// A single-line reservation on channel web.
fn reserve_body(res: u128, sku: &str, qty: u32) -> Reserve {
    Reserve {
        request_id: rid(),
        reservation: res,
        channel: "web".into(),
        lines: vec![WireLine {
            sku: sku.into(),
            qty,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 600_000,
    }
}

async fn reserve(c: &Client, res: u128, sku: &str, qty: u32) -> Result<Reserved, ClientError> {
    c.reserve(reserve_body(res, sku, qty)).await
}

async fn release(c: &Client, res: u128) {
    c.release(Release {
        request_id: rid(),
        reservation: res,
    })
    .await
    .unwrap();
}

fn request(start_kind: u8, from_seq: u64) -> Subscribe {
    Subscribe {
        name: String::new(),
        start: start_kind,
        from_seq,
        channels: vec![],
        skus: vec![],
        sku_prefix: String::new(),
        kinds: kinds::ATP,
        coalesce_ms: 0,
    }
}

async fn subscribe(s: &TestServer, req: Subscribe) -> Subscriber {
    Subscriber::subscribe(ClientConfig::new(s.addr.to_string()), req)
        .await
        .unwrap()
}

/// Items until the subscriber's position reaches `seq` (5 s deadline).
async fn until(sub: &mut Subscriber, seq: u64) -> Vec<PushItem> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sub.position() < seq || sub.in_snapshot() {
        let items = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("position {} never reached {seq}", sub.position()))
            .unwrap();
        out.extend(items);
    }
    out
}

fn atps(items: &[PushItem]) -> Vec<&WireAtp> {
    items
        .iter()
        .filter_map(|i| match i {
            PushItem::Atp(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// (seq, sku, channel) of every ATP item: the identity of an event.
fn keys(items: &[PushItem]) -> Vec<(u64, String, String)> {
    atps(items)
        .into_iter()
        .map(|a| (a.seq, a.sku.clone(), a.channel.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_sequence_order_and_match_the_acknowledged_changes() {
    let s = start(100_000).await;
    let c = client(&s).await;
    catalog(&c).await;
    let mut sub = subscribe(&s, request(start::LIVE, 0)).await;
    for k in 0..8 {
        adjust(&c, &format!("S{k}"), "wh", 1000).await;
    }
    // 8 tasks reserving concurrently on 8 SKUs across both arbiters.
    let mut tasks = Vec::new();
    for t in 0..8u128 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50u128 {
                let r = reserve(&c, t * 1000 + i + 1, &format!("S{t}"), 1)
                    .await
                    .unwrap();
                seqs.push(r.seq);
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let last = *acked.iter().max().unwrap();
    let items = until(&mut sub, last).await;
    let seqs: Vec<u64> = atps(&items).iter().map(|a| a.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in order: {seqs:?}"
    );
    let web: Vec<u64> = atps(&items)
        .iter()
        .filter(|a| a.channel == "web" && a.cause == cause::RESERVE)
        .map(|a| a.seq)
        .collect();
    acked.sort_unstable();
    assert_eq!(
        web, acked,
        "one web ATP change per acknowledged reservation"
    );
    // Each SKU's ATP goes 1000, 999, ... with previous = the last value sent.
    let mut last_atp: BTreeMap<String, u32> = BTreeMap::new();
    for a in atps(&items).iter().filter(|a| a.channel == "web") {
        if let Some(p) = last_atp.get(&a.sku) {
            assert_eq!(a.previous, *p, "{a:?}");
        }
        last_atp.insert(a.sku.clone(), a.atp);
    }
    assert!(last_atp.values().all(|v| *v == 950), "{last_atp:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_dropped_connection_has_no_gap_and_no_duplicate() {
    let s = start(100_000).await;
    let c = client(&s).await;
    catalog(&c).await;
    let head = adjust(&c, "A", "wh", 500).await;
    let mut all = Vec::new();
    let mut sub = subscribe(&s, request(start::AFTER, head)).await;
    let mut last = head;
    for round in 0..4u128 {
        for i in 0..25u128 {
            last = reserve(&c, round * 100 + i + 1, "A", 1).await.unwrap().seq;
        }
        // Read part of it, drop the connection, change more, resume.
        let got = until(&mut sub, last - 10).await;
        all.extend(got);
        for i in 50..60u128 {
            last = reserve(&c, round * 100 + i + 1, "A", 1).await.unwrap().seq;
        }
        sub.resume().await.unwrap();
        assert_eq!(sub.subscribed().start, started::REPLAY);
    }
    all.extend(until(&mut sub, last).await);
    let k = keys(&all);
    let mut dedup = k.clone();
    dedup.dedup();
    assert_eq!(k, dedup, "duplicates after resuming");
    let web: Vec<u64> = k.iter().filter(|x| x.2 == "web").map(|x| x.0).collect();
    assert_eq!(web.len(), 4 * 35, "every reservation exactly once");
    let atp: Vec<u32> = atps(&all)
        .iter()
        .filter(|a| a.channel == "web")
        .map(|a| a.atp)
        .collect();
    assert_eq!(
        atp,
        (360..500).rev().collect::<Vec<u32>>(),
        "no gap in the ATP series"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_a_server_restart_replays_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_durable(dir.path(), 100_000).await;
    let c = client(&s).await;
    catalog(&c).await;
    let from = adjust(&c, "R", "wh", 100).await;
    let mut expected = Vec::new();
    for i in 0..20u128 {
        expected.push(reserve(&c, i + 1, "R", 1).await.unwrap().seq);
    }
    release(&c, 3).await;
    drop(c);
    s.stop().await;

    let s = start_durable(dir.path(), 100_000).await;
    let c = client(&s).await;
    let after_restart = reserve(&c, 99, "R", 2).await.unwrap().seq;
    let mut sub = subscribe(&s, request(start::AFTER, from)).await;
    assert_eq!(
        sub.subscribed().start,
        started::REPLAY,
        "{:?}",
        sub.subscribed()
    );
    let items = until(&mut sub, after_restart).await;
    let web: Vec<&WireAtp> = atps(&items)
        .into_iter()
        .filter(|a| a.channel == "web")
        .collect();
    let reserve_seqs: Vec<u64> = web
        .iter()
        .filter(|a| a.cause == cause::RESERVE && a.seq < after_restart)
        .map(|a| a.seq)
        .collect();
    assert_eq!(
        reserve_seqs, expected,
        "every pre-restart reservation replayed once"
    );
    let causes: Vec<u8> = web.iter().map(|a| a.cause).collect();
    assert_eq!(causes.iter().filter(|c| **c == cause::RELEASE).count(), 1);
    assert_eq!(web.last().map(|a| (a.previous, a.atp)), Some((81, 79)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_older_than_the_feed_keeps_gets_a_snapshot_then_live() {
    let s = start(16).await;
    let c = client(&s).await;
    catalog(&c).await;
    adjust(&c, "P1", "wh", 40).await;
    adjust(&c, "P2", "st", 7).await;
    let mut last = 0;
    for i in 0..40u128 {
        if let Ok(r) = reserve(&c, i + 1, "P1", 1).await {
            last = r.seq;
        }
    }
    // Publication follows the acknowledgement by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.engine.feed().head() < last {
        assert!(tokio::time::Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let retained = s.engine.feed().retained_from();
    assert!(
        retained > 2,
        "the ring must have dropped old records ({retained})"
    );
    let mut sub = subscribe(&s, request(start::AFTER, 1)).await;
    let sb = sub.subscribed().clone();
    assert_eq!(sb.start, started::SNAPSHOT);
    assert!(sb.note.contains("older than the log keeps"), "{}", sb.note);
    let items = until(&mut sub, sb.from_seq).await;
    let snap: BTreeMap<(String, String), u32> = items
        .iter()
        .filter_map(|i| match i {
            PushItem::Snapshot(e) => Some(((e.sku.clone(), e.channel.clone()), e.atp)),
            _ => None,
        })
        .collect();
    assert_eq!(snap.get(&("P1".into(), "web".into())), Some(&0));
    assert_eq!(snap.get(&("P2".into(), "web".into())), Some(&7));
    assert_eq!(snap.get(&("P2".into(), "shop".into())), Some(&7));
    assert!(items
        .iter()
        .any(|i| matches!(i, PushItem::SnapshotEnd { .. })));
    // Then live.
    let seq = adjust(&c, "P2", "st", 1).await;
    let live = until(&mut sub, seq).await;
    let got: Vec<(String, u32, u32)> = atps(&live)
        .iter()
        .map(|a| (a.channel.clone(), a.previous, a.atp))
        .collect();
    assert_eq!(got, [("shop".into(), 7, 8), ("web".into(), 7, 8)]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_transition_is_reported_once() {
    let s = start(100_000).await;
    let c = client(&s).await;
    catalog(&c).await;
    let low = |channel: &str, sku: Option<&str>, threshold| {
        Op::SetLowStock(SetLowStock {
            request_id: rid(),
            channel: channel.into(),
            sku: sku.map(String::from),
            threshold,
        })
    };
    c.apply(low("web", None, 3)).await.unwrap();
    // A per-SKU override wins over the channel's threshold.
    c.apply(low("web", Some("OV"), 8)).await.unwrap();
    let mut req = request(start::LIVE, 0);
    req.kinds = kinds::THRESHOLDS;
    req.channels = vec!["web".into()];
    let mut sub = subscribe(&s, req).await;

    adjust(&c, "T", "wh", 5).await; // 0 -> 5: back in stock
    reserve(&c, 1, "T", 1).await.unwrap(); // 5 -> 4: nothing
    reserve(&c, 2, "T", 1).await.unwrap(); // 4 -> 3: low stock
    reserve(&c, 3, "T", 3).await.unwrap(); // 3 -> 0: out of stock
    release(&c, 3).await; // 0 -> 3: back in stock
    adjust(&c, "OV", "wh", 10).await; // 0 -> 10: back in stock
    reserve(&c, 4, "OV", 2).await.unwrap(); // 10 -> 8: low stock (override 8)
                                            // Oversold: hold 3 units, then lose 4 of the 5 on hand.
    adjust(&c, "X", "wh", 5).await; // back in stock
    reserve(&c, 5, "X", 3).await.unwrap(); // 5 -> 2: low stock
    let last = c
        .apply(Op::Adjust(Adjust {
            request_id: rid(),
            sku: "X".into(),
            location: "wh".into(),
            delta: -4,
            reason: WireAdjustReason::Shrinkage,
            reference: String::new(),
        }))
        .await
        .unwrap()
        .seq; // 2 -> 0 out of stock, and oversold
    let items = until(&mut sub, last).await;
    let got: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            PushItem::Atp(a) => Some(format!(
                "{} {}->{} t{}",
                a.sku, a.previous, a.atp, a.transition
            )),
            PushItem::Oversold(o) => Some(format!("{} oversold {}", o.sku, o.oversold)),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            "T 0->5 t2",
            "T 4->3 t3",
            "T 3->0 t1",
            "T 0->3 t2",
            "OV 0->10 t2",
            "OV 10->8 t3",
            "X 0->5 t2",
            "X 5->2 t3",
            "X 2->0 t1",
            "X oversold true",
        ]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_mode_sends_the_latest_value_per_sku_and_channel() {
    let s = start(100_000).await;
    let c = client(&s).await;
    catalog(&c).await;
    let stocked = adjust(&c, "C", "wh", 1000).await;
    let mut req = request(start::AFTER, stocked);
    req.coalesce_ms = 300;
    req.channels = vec!["web".into()];
    let mut sub = subscribe(&s, req).await;
    let mut last = 0;
    for i in 0..200u128 {
        last = reserve(&c, i + 1, "C", 1).await.unwrap().seq;
    }
    let items = until(&mut sub, last).await;
    let a = atps(&items);
    assert!(
        a.len() < 20,
        "200 changes within a few coalescing windows must collapse, got {}",
        a.len()
    );
    assert!(a.iter().any(|x| x.coalesced));
    assert_eq!(a.first().map(|x| x.previous), Some(1000));
    assert_eq!(a.last().map(|x| x.atp), Some(800));
    for w in a.windows(2) {
        assert_eq!(w[0].atp, w[1].previous, "consecutive values chain");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_disconnected_while_reservations_keep_flowing() {
    let engine = Engine::start_in_memory(engine_config(2_000)).unwrap();
    let s = serve(engine, |cfg| {
        cfg.subscription.max_lag_records = 100;
        cfg.subscription.max_coalesce_pairs = 100;
        cfg.subscription.stall_timeout = Duration::from_millis(500);
    })
    .await;
    let c = client(&s).await;
    catalog(&c).await;
    for k in 0..500 {
        adjust(&c, &format!("L{k:03}"), "wh", 1_000_000).await;
    }
    // A raw subscriber that never reads: its socket buffers fill, then the server's queue.
    // A small receive buffer (so a small window) makes them fill after a few hundred KB
    // whatever the machine's speed: with the kernel's autotuned buffers (megabytes on
    // loopback) a slow, loaded machine could spend the whole 20 s below them.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut raw = sock.connect(s.addr).await.unwrap();
    raw.set_nodelay(true).unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        client_name: "stalled".into(),
        token: String::new(),
    };
    raw.write_all(&frame_of(FrameKind::Hello, 0, &hello).unwrap().encode())
        .await
        .unwrap();
    let mut sub_req = request(start::LIVE, 0);
    sub_req.kinds = kinds::ALL;
    let op = Op::Subscribe(sub_req).to_raw().unwrap();
    let req = frame_of(FrameKind::Request, 7, &RequestBatch { ops: vec![op] }).unwrap();
    raw.write_all(&req.encode()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.engine.feed().subscribers() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Reservations keep being acknowledged while the subscriber is stuck; every one of 500
    // SKUs changes, so coalescing cannot keep the backlog small.
    let t0 = std::time::Instant::now();
    let mut done = 0u64;
    let mut disconnected = false;
    let mut r = 0u128;
    while t0.elapsed() < Duration::from_secs(20) {
        let mut ops = Vec::new();
        for k in 0..500 {
            r += 1;
            ops.push(Op::Reserve(reserve_body(r, &format!("L{k:03}"), 1)));
        }
        let res = c.batch(&ops).await.unwrap();
        assert!(res.iter().all(|x| x.status == status::OK));
        done += 500;
        if s.engine.feed().subscribers() == 0 {
            disconnected = true;
            break;
        }
    }
    assert!(
        disconnected,
        "the stalled subscriber was never dropped ({done} reservations)"
    );
    assert!(
        s.engine
            .feed()
            .stats
            .lagged
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Reservations still flow after the disconnect.
    let more = reserve(&c, r + 1, "L000", 1).await.unwrap();
    assert!(more.seq > 0);
    // What the stalled client finally reads ends with the Lagged notice, then end of stream.
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the server must close the stalled connection");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscription_resumes_from_its_acknowledged_position_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_durable(dir.path(), 100_000).await;
    let c = client(&s).await;
    catalog(&c).await;
    let first = adjust(&c, "N", "wh", 10).await;
    let mut req = request(start::RESUME, 0);
    req.name = "amazon-eu".into();
    let mut sub = subscribe(&s, req.clone()).await;
    assert_eq!(
        sub.subscribed().start,
        started::SNAPSHOT,
        "nothing stored yet"
    );
    until(&mut sub, first).await;
    let acked = adjust(&c, "N", "wh", 1).await;
    until(&mut sub, acked).await;
    sub.ack().await.unwrap();
    sub.close().await;
    let missed = adjust(&c, "N", "wh", 2).await;
    drop(c);
    s.stop().await;

    let s = start_durable(dir.path(), 100_000).await;
    let mut sub = subscribe(&s, req).await;
    assert_eq!(
        sub.subscribed().start,
        started::REPLAY,
        "{:?}",
        sub.subscribed()
    );
    assert_eq!(sub.subscribed().from_seq, acked);
    let items = until(&mut sub, missed).await;
    let got: Vec<(u64, u32, u32)> = atps(&items)
        .iter()
        .filter(|a| a.channel == "web")
        .map(|a| (a.seq, a.previous, a.atp))
        .collect();
    assert_eq!(got, [(missed, 11, 13)]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_with_a_clear_status() {
    let s = start(100).await;
    let c = client(&s).await;
    catalog(&c).await;
    let cfg = || ClientConfig::new(s.addr.to_string());
    let status_of = |r: Result<Subscriber, ClientError>| r.err().and_then(|e| e.status());
    let mut r = request(start::LIVE, 0);
    r.channels = vec!["nope".into()];
    assert_eq!(status_of(Subscriber::subscribe(cfg(), r).await), Some(12));
    let mut r = request(start::LIVE, 0);
    r.kinds = 0;
    assert_eq!(status_of(Subscriber::subscribe(cfg(), r).await), Some(12));
    let mut r = request(start::LIVE, 0);
    r.coalesce_ms = 5;
    assert_eq!(status_of(Subscriber::subscribe(cfg(), r).await), Some(12));
    let r = request(start::AFTER, 1_000_000);
    assert_eq!(status_of(Subscriber::subscribe(cfg(), r).await), Some(12));
    let r = request(start::RESUME, 0);
    assert_eq!(status_of(Subscriber::subscribe(cfg(), r).await), Some(12));
    let mut r = request(9, 0);
    r.name = "x".into();
    assert_eq!(status_of(Subscriber::subscribe(cfg(), r).await), Some(12));
    // ACK: a name SUBSCRIBE would refuse, or a seq ahead of the log.
    let ack = |name: &str, seq| {
        Op::Ack(Ack {
            name: name.into(),
            seq,
        })
    };
    let res = c
        .batch(&[
            ack("", 1),
            ack("a b", 1),
            ack("ok", 1_000_000),
            ack("ok", 1),
        ])
        .await
        .unwrap();
    let codes: Vec<u16> = res.iter().map(|r| r.status).collect();
    assert_eq!(codes, [12, 12, 12, 0]);
    assert_eq!(s.engine.feed_position("ok"), Some(1));
    s.stop().await;
}

// postmortem: the first version dropped what it had coalesced when a subscriber stopped
// catching up in a round with nothing new to coalesce (the flush only ran while still
// coalescing), and its next Position skipped past those changes: a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_by_a_burst_gets_it_coalesced_then_every_change_again_without_a_gap() {
    let engine = Engine::start_in_memory(engine_config(100_000)).unwrap();
    let s = serve(engine, |cfg| cfg.subscription.max_lag_records = 50).await;
    let c = client(&s).await;
    catalog(&c).await;
    let mut last = 0;
    for k in 0..4 {
        last = adjust(&c, &format!("B{k}"), "wh", 1_000).await;
    }
    let mut req = request(start::AFTER, last);
    req.channels = vec!["web".into()];
    let mut sub = subscribe(&s, req).await;
    // One request of 400 reservations: published in one go, 400 records past the cursor.
    let ops: Vec<Op> = (0..400u128)
        .map(|i| Op::Reserve(reserve_body(i + 1, &format!("B{}", i % 4), 1)))
        .collect();
    let res = c.batch(&ops).await.unwrap();
    assert!(res.iter().all(|r| r.status == status::OK));
    // The subscriber has caught up with the burst before the single changes come (on a
    // busy machine it could otherwise still be behind when they arrive, and rightly
    // coalesce them too).
    let mut items = until(&mut sub, s.engine.last_seq()).await;
    // Then single changes: every change again.
    for i in 0..8u128 {
        last = reserve(&c, 1_000 + i, &format!("B{}", i % 4), 1)
            .await
            .unwrap()
            .seq;
    }
    items.extend(until(&mut sub, last).await);
    let a = atps(&items);
    assert!(a.iter().any(|x| x.coalesced), "the burst was coalesced");
    assert!(a.len() < 400, "the burst's changes collapsed: {}", a.len());
    let tail: Vec<bool> = a.iter().rev().take(8).map(|x| x.coalesced).collect();
    assert_eq!(tail, [false; 8], "every change again after catching up");
    // No gap: each SKU's values chain from 1000 down to 1000 - 100 - 2.
    let mut by_sku: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for x in &a {
        by_sku
            .entry(x.sku.clone())
            .or_default()
            .push((x.previous, x.atp));
    }
    for (sku, v) in by_sku {
        assert_eq!(v.first().map(|p| p.0), Some(1000), "{sku}: {v:?}");
        for w in v.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{sku}: {v:?}");
        }
        assert_eq!(v.last().map(|p| p.1), Some(898), "{sku}: {v:?}");
    }
    s.stop().await;
}

/// More than a frame's worth of changes published at once all arrive without waiting for
/// further publications (the position interval is set to a minute, so a subscriber that
/// waited for the next publication or tick would miss the 5 s deadline of `until`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_beyond_one_frame_arrive_without_waiting_for_the_next_publication() {
    let engine = Engine::start_in_memory(engine_config(100_000)).unwrap();
    let s = serve(engine, |cfg| {
        cfg.subscription.position_interval = Duration::from_secs(60);
        cfg.subscription.max_items_per_frame = 64;
    })
    .await;
    let c = client(&s).await;
    catalog(&c).await;
    let mut last = 0;
    for k in 0..10 {
        last = adjust(&c, &format!("F{k}"), "wh", 1_000).await;
    }
    let mut sub = subscribe(&s, request(start::AFTER, last)).await;
    let ops: Vec<Op> = (0..1_000u128)
        .map(|i| Op::Reserve(reserve_body(i + 1, &format!("F{}", i % 10), 1)))
        .collect();
    let res = c.batch(&ops).await.unwrap();
    let last = res
        .iter()
        .map(|r| decode_payload::<Reserved>(&r.body).unwrap().seq)
        .max()
        .unwrap();
    let items = until(&mut sub, last).await;
    assert_eq!(atps(&items).len(), 1_000, "one web change per reservation");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_as_a_stream_ends_after_a_disconnect_and_continues_after_resume() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let s = start_durable(dir.path(), 100_000).await;
    let addr = s.addr;
    let c = client(&s).await;
    catalog(&c).await;
    let head = adjust(&c, "T", "wh", 100).await;
    let mut sub = subscribe(&s, request(start::AFTER, head)).await;
    let mut sent = Vec::new();
    for i in 0..5u128 {
        sent.push(reserve(&c, i + 1, "T", 1).await.unwrap().seq);
    }
    let wait = Duration::from_secs(5);
    let mut got = Vec::new();
    while sub.position() < sent[4] {
        let items = tokio::time::timeout(wait, StreamExt::next(&mut sub))
            .await
            .expect("a frame in time")
            .expect("the stream has not ended")
            .unwrap();
        got.extend(items);
    }
    drop(c);
    s.stop().await;
    // Whatever was in flight, then the disconnect once, then the end of the stream.
    loop {
        match tokio::time::timeout(wait, StreamExt::next(&mut sub)).await {
            Ok(Some(Ok(items))) => got.extend(items),
            Ok(Some(Err(e))) => {
                assert_eq!(e, ClientError::Disconnected);
                break;
            }
            other => panic!("expected the disconnect, got {other:?}"),
        }
    }
    let end = tokio::time::timeout(wait, StreamExt::next(&mut sub)).await;
    assert!(matches!(end, Ok(None)), "{end:?}");

    // The same address again: resume() reconnects and the stream continues.
    let mut pc = PersistConfig::new(dir.path());
    pc.engine = engine_config(100_000);
    let s = serve(Engine::open(pc).await.unwrap(), |cfg| cfg.listen = addr).await;
    let c = client(&s).await;
    for i in 5..10u128 {
        sent.push(reserve(&c, i + 1, "T", 1).await.unwrap().seq);
    }
    sub.resume().await.unwrap();
    while sub.position() < sent[9] {
        let items = tokio::time::timeout(wait, StreamExt::next(&mut sub))
            .await
            .expect("a frame in time")
            .expect("the stream continues after resume")
            .unwrap();
        got.extend(items);
    }
    let reserves: Vec<u64> = atps(&got)
        .into_iter()
        .filter(|a| a.channel == "web" && a.cause == cause::RESERVE)
        .map(|a| a.seq)
        .collect();
    assert_eq!(
        reserves, sent,
        "every reservation once, across the disconnect"
    );
    s.stop().await;
}

/// A quiet subscription still receives a frame every `heartbeat_ms` (announced in the
/// answer): a `Position` at its unchanged position, in live and in coalesced mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_receives_a_heartbeat_position_at_the_announced_interval() {
    let s = serve(
        Engine::start_in_memory(engine_config(10_000)).unwrap(),
        |cfg| cfg.subscription.heartbeat = Some(Duration::from_millis(200)),
    )
    .await;
    let c = client(&s).await;
    catalog(&c).await;
    let last = adjust(&c, "HB", "wh", 5).await;
    for coalesce_ms in [0, 50] {
        let mut req = request(start::LIVE, 0);
        req.coalesce_ms = coalesce_ms;
        let mut sub = subscribe(&s, req).await;
        assert_eq!(sub.subscribed().heartbeat_ms, 200);
        let from = sub.subscribed().from_seq;
        assert!(from >= last);
        // Three heartbeats in a row, each one Position at the same (unchanged) position.
        for _ in 0..3 {
            let items = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("no heartbeat within 5 s")
                .unwrap();
            assert_eq!(
                items,
                vec![PushItem::Position { seq: from }],
                "coalesce_ms {coalesce_ms}"
            );
        }
        drop(sub);
    }
    s.stop().await;
}
