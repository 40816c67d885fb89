//! End-to-end tests of the TCP server: a real server on 127.0.0.1:0 with an in-memory or
//! durable engine, driven through the client library and through raw sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use omnistock::client::{Client, ClientConfig, ClientError, Rejection};
use omnistock::engine::{Engine, EngineConfig, PersistConfig};
use omnistock::protocol::ops::opcode;
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig, ServerStats, ShutdownHandle};
use omnistock::wal::FaultInjector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct TestServer {
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<ServerStats>,
    fault: Arc<FaultInjector>,
    _dir: Option<tempfile::TempDir>,
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    }
}

async fn serve(
    engine: Engine,
    dir: Option<tempfile::TempDir>,
    fault: Arc<FaultInjector>,
    f: impl FnOnce(&mut ServerConfig),
) -> TestServer {
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
        stats: server.stats(),
        task: tokio::spawn(server.run()),
        engine,
        fault,
        _dir: dir,
    }
}

async fn start(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let e = Engine::start_in_memory(engine_config()).unwrap();
    serve(e, None, Arc::new(FaultInjector::new()), f).await
}

async fn start_durable(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let fault = Arc::new(FaultInjector::new());
    let mut pc = PersistConfig::new(dir.path());
    pc.engine = engine_config();
    pc.wal_fault = Some(fault.clone());
    let e = Engine::open(pc).await.unwrap();
    serve(e, Some(dir), fault, f).await
}

async fn client(s: &TestServer, token: &str) -> Client {
    Client::connect(ClientConfig::new(s.addr.to_string()).token(token))
        .await
        .unwrap()
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
fn rid() -> u128 {
    u128::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn adjust(sku: &str, loc: &str, delta: i64) -> Op {
    Op::Adjust(Adjust {
        request_id: rid(),
        sku: sku.into(),
        location: loc.into(),
        delta,
        reason: WireAdjustReason::Receipt,
        reference: "po-1".into(),
    })
}

fn reserve(res: u128, channel: &str, lines: &[(&str, u32, Option<&str>)]) -> Reserve {
    Reserve {
        request_id: rid(),
        reservation: res,
        channel: channel.into(),
        lines: lines
            .iter()
            .map(|(s, q, l)| WireLine {
                sku: (*s).into(),
                qty: *q,
                location: l.map(String::from),
            })
            .collect(),
        allow_split: false,
        ttl_ms: 600_000,
    }
}

/// Locations wh-a, st-b; channel web (wh-a, st-b), channel solo (st-b).
async fn catalog(c: &Client) {
    for (id, kind) in [
        ("wh-a", WireLocationKind::Warehouse),
        ("st-b", WireLocationKind::Store),
    ] {
        c.apply(Op::UpsertLocation(UpsertLocation {
            request_id: rid(),
            location: WireLocation {
                id: id.into(),
                kind,
                region: "FR".into(),
            },
        }))
        .await
        .unwrap();
    }
    for (id, locs) in [("web", vec!["wh-a", "st-b"]), ("solo", vec!["st-b"])] {
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

fn st(e: ClientError) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("expected a status, got {e:?}"))
}

// ---- raw socket helpers ----------------------------------------------------------------

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let len = u32::from_le_bytes(len) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    let mut all = (len as u32).to_le_bytes().to_vec();
    all.extend(body);
    Frame::parse(&all, usize::MAX).unwrap().map(|(f, _)| f)
}

async fn send(s: &mut TcpStream, f: &Frame) {
    s.write_all(&f.encode()).await.unwrap();
}

fn hello(token: &str) -> Frame {
    frame_of(
        FrameKind::Hello,
        0,
        &Hello {
            magic: MAGIC,
            version: 1,
            client_name: "raw".into(),
            token: token.into(),
        },
    )
    .unwrap()
}

async fn raw(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    send(&mut s, &hello(token)).await;
    let w = read_frame(&mut s).await.unwrap();
    assert_eq!(w.kind, FrameKind::Welcome);
    s
}

fn request(corr: u64, ops: &[Op]) -> Frame {
    let ops = ops.iter().map(|o| o.to_raw().unwrap()).collect();
    frame_of(FrameKind::Request, corr, &RequestBatch { ops }).unwrap()
}

fn error_of(f: &Frame) -> ErrorFrame {
    assert_eq!(f.kind, FrameKind::Error, "expected an error frame");
    decode_payload(&f.payload).unwrap()
}

async fn expect_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "connection should be closed");
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trips() {
    let s = start(|_| {}).await;
    let c = client(&s, "").await;
    let w = c.welcome().await.unwrap();
    assert_eq!(
        (w.version, w.max_batch_ops, w.max_in_flight),
        (1, 8190, 1024)
    );
    assert!(c.ping().await.unwrap().server_time_ms > 0);
    catalog(&c).await;
    let info = c.server_info().await.unwrap();
    assert_eq!((info.protocol_version, info.connections), (1, 1));

    let locs = c.locations().await.unwrap().locations;
    assert_eq!(
        locs.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["st-b", "wh-a"]
    );
    assert_eq!(c.channels().await.unwrap().channels.len(), 2);

    c.apply(adjust("A", "wh-a", 10)).await.unwrap();
    let set = |expected| {
        Op::SetOnHand(SetOnHand {
            request_id: rid(),
            sku: "A".into(),
            location: "st-b".into(),
            on_hand: 5,
            expected,
            reference: String::new(),
        })
    };
    c.apply(set(None)).await.unwrap();
    let e = c.apply(set(Some(99))).await.unwrap_err();
    let ClientError::Status {
        status: 9,
        ref body,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(
        decode_payload::<CompareFacts>(body).unwrap(),
        CompareFacts {
            expected: 99,
            actual: 5
        }
    );
    assert_eq!(
        e.rejection(),
        Some(Rejection::CompareFailed(Some(CompareFacts {
            expected: 99,
            actual: 5
        })))
    );
    c.apply(Op::Move(MoveStock {
        request_id: rid(),
        sku: "A".into(),
        location: "wh-a".into(),
        from: WireStockState::Sellable,
        to: WireStockState::Damaged,
        qty: 1,
    }))
    .await
    .unwrap();
    c.apply(Op::Transfer(Transfer {
        request_id: rid(),
        sku: "A".into(),
        from: "wh-a".into(),
        to: "st-b".into(),
        qty: 1,
        reference: "t".into(),
    }))
    .await
    .unwrap();
    c.apply(Op::SetSafetyStock(SetSafetyStock {
        request_id: rid(),
        sku: "A".into(),
        location: "wh-a".into(),
        qty: 2,
    }))
    .await
    .unwrap();
    c.apply(Op::SetIncoming(SetIncoming {
        request_id: rid(),
        sku: "A".into(),
        location: "wh-a".into(),
        qty: 7,
        eta_ms: 123,
    }))
    .await
    .unwrap();

    let v = c.get_sku("A").await.unwrap();
    let wh = v.buckets.iter().find(|b| b.location == "wh-a").unwrap();
    assert_eq!(
        (
            wh.on_hand,
            wh.damaged,
            wh.safety_stock,
            wh.incoming,
            wh.incoming_eta_ms,
            wh.atp
        ),
        (8, 1, 2, 7, 123, 6)
    );
    assert_eq!(
        v.channels,
        vec![("solo".to_string(), 6), ("web".to_string(), 12)]
    );
    assert!(!v.oversold);

    let r = c
        .reserve(reserve(1, "web", &[("A", 3, Some("st-b"))]))
        .await
        .unwrap();
    assert_eq!(
        r.allocations,
        vec![WireAllocation {
            sku: "A".into(),
            location: "st-b".into(),
            qty: 3
        }]
    );
    let g = c.get_reservation(1).await.unwrap();
    assert_eq!(
        (g.channel.as_str(), g.lines.clone()),
        ("web", vec![("A".to_string(), 3)])
    );
    c.extend(Extend {
        request_id: rid(),
        reservation: 1,
        ttl_ms: 1_000_000,
    })
    .await
    .unwrap();
    assert!(c.get_reservation(1).await.unwrap().expires_at_ms > g.expires_at_ms);
    let f = c
        .fulfill(Fulfill {
            request_id: rid(),
            reservation: 1,
            lines: Some(vec![("A".into(), 1)]),
        })
        .await
        .unwrap();
    assert!(f.seq > r.seq);
    c.release(Release {
        request_id: rid(),
        reservation: 1,
    })
    .await
    .unwrap();
    assert_eq!(st(c.get_reservation(1).await.unwrap_err()), 6);

    let many = c.get_skus(vec!["A".into(), "NOPE".into()]).await.unwrap();
    assert!(many.skus[0].is_some() && many.skus[1].is_none());
    // More than 16 SKUs run on the heavy reads' thread: the same answer, in the order asked.
    let names: Vec<String> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                "A".into()
            } else {
                format!("NOPE-{i}")
            }
        })
        .collect();
    let many = c.get_skus(names).await.unwrap();
    assert_eq!(many.skus.len(), 40);
    for (i, s) in many.skus.iter().enumerate() {
        match s {
            Some(v) => assert!(i % 2 == 0 && v.sku == "A", "{i}: {}", v.sku),
            None => assert!(i % 2 == 1, "{i}: A is known"),
        }
    }
    s.stop.shutdown();
    s.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_reaches_the_client() {
    let s = start_durable(|c| c.max_lines_per_reservation = 3).await;
    let c = client(&s, "").await;
    catalog(&c).await;
    c.apply(adjust("A", "wh-a", 2)).await.unwrap();

    let e = c
        .reserve(reserve(10, "web", &[("A", 5, None)]))
        .await
        .unwrap_err();
    let ClientError::Status {
        status: 1,
        body,
        rejection,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    let facts: InsufficientFacts = decode_payload(&body).unwrap();
    assert_eq!(
        (
            facts.line,
            facts.sku.as_str(),
            facts.requested,
            facts.available
        ),
        (0, "A", 5, 2)
    );
    // The typed form carries the same facts.
    assert_eq!(rejection, Rejection::InsufficientStock(Some(facts)));
    assert!(!rejection.is_retriable());
    assert_eq!(
        st(c.reserve(reserve(11, "web", &[("NOPE", 1, None)]))
            .await
            .unwrap_err()),
        2
    );
    assert_eq!(st(c.get_sku("NOPE").await.unwrap_err()), 2);
    assert_eq!(st(c.apply(adjust("A", "nowhere", 1)).await.unwrap_err()), 3);
    assert_eq!(
        st(c.reserve(reserve(12, "tv", &[("A", 1, None)]))
            .await
            .unwrap_err()),
        4
    );
    c.apply(adjust("A", "st-b", 1)).await.unwrap();
    assert_eq!(
        st(c.reserve(reserve(13, "solo", &[("A", 1, Some("wh-a"))]))
            .await
            .unwrap_err()),
        5
    );
    assert_eq!(
        st(c.release(Release {
            request_id: rid(),
            reservation: 999
        })
        .await
        .unwrap_err()),
        6
    );
    c.reserve(reserve(14, "web", &[("A", 1, None)]))
        .await
        .unwrap();
    assert_eq!(
        st(c.reserve(reserve(14, "web", &[("A", 1, None)]))
            .await
            .unwrap_err()),
        7
    );
    let mut same = reserve(15, "web", &[("A", 1, None)]);
    c.reserve(same.clone()).await.unwrap();
    same.reservation = 16;
    assert_eq!(st(c.reserve(same).await.unwrap_err()), 8);
    assert_eq!(
        st(c.fulfill(Fulfill {
            request_id: rid(),
            reservation: 14,
            lines: Some(vec![("A".into(), 5)])
        })
        .await
        .unwrap_err()),
        10
    );
    assert_eq!(
        st(c.apply(adjust("A", "wh-a", -100)).await.unwrap_err()),
        11
    );
    assert_eq!(st(c.get_sku("bad sku").await.unwrap_err()), 12);
    let bad_region = Op::UpsertLocation(UpsertLocation {
        request_id: rid(),
        location: WireLocation {
            id: "x".into(),
            kind: WireLocationKind::Dropship,
            region: String::new(),
        },
    });
    assert_eq!(st(c.apply(bad_region).await.unwrap_err()), 12);
    let four = [
        ("A", 1, None),
        ("A", 1, None),
        ("A", 1, None),
        ("A", 1, None),
    ];
    assert_eq!(
        st(c.reserve(reserve(17, "web", &four)).await.unwrap_err()),
        status::LIMIT_EXCEEDED
    );

    // Undecodable, misplaced, reserved and unknown operations, per operation.
    let raw = |opcode, body| RawOp { opcode, body };
    let res = c
        .raw_batch(vec![
            raw(opcode::SUBSCRIBE, vec![]),
            raw(opcode::UNSUBSCRIBE, vec![]),
            raw(opcode::ACK, vec![]),
            raw(opcode::SKU_HISTORY, vec![]),
            raw(0x7777, vec![]),
            raw(opcode::GET_SKU, vec![1, 2, 3]),
            raw(opcode::PING, vec![]),
        ])
        .await
        .unwrap();
    let codes: Vec<u16> = res.iter().map(|r| r.status).collect();
    // SUBSCRIBE/ACK with no body: 102; UNSUBSCRIBE inside a larger batch: 12 (it must come
    // alone); SKU_HISTORY with no body: 102 (it is implemented now); unknown: 106.
    assert_eq!(codes, [102, 12, 102, 102, 106, 102, 0]);

    // 16 InProgress: the same request id while the first is waiting for the log.
    c.apply(adjust("A", "wh-a", 5)).await.unwrap();
    s.fault.stall_writes();
    let first = reserve(20, "web", &[("A", 1, Some("wh-a"))]);
    let c2 = c.clone();
    let f1 = first.clone();
    let pending = tokio::spawn(async move { c2.batch(&[Op::Reserve(f1)]).await });
    let fault = s.fault.clone();
    tokio::task::spawn_blocking(move || fault.wait_until_writer_stalled())
        .await
        .unwrap();
    let other = client(&s, "").await;
    let again = other.batch(&[Op::Reserve(first)]).await.unwrap();
    assert_eq!(again[0].status, 16);
    s.fault.resume_writes();
    assert_eq!(pending.await.unwrap().unwrap()[0].status, 0);

    // 100 storage failure, then 101 shutting down.
    s.fault.fail_now();
    assert_eq!(st(c.apply(adjust("A", "wh-a", 1)).await.unwrap_err()), 100);
    s.stop.shutdown();
    s.task.await.unwrap();
    s.engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_responses_come_back_out_of_order() {
    let s = start_durable(|_| {}).await;
    let c = client(&s, "").await;
    catalog(&c).await;
    c.apply(adjust("A", "wh-a", 10)).await.unwrap();
    let mut sock = raw(s.addr, "").await;
    s.fault.stall_writes();
    send(
        &mut sock,
        &request(7, &[Op::Reserve(reserve(1, "web", &[("A", 1, None)]))]),
    )
    .await;
    let fault = s.fault.clone();
    tokio::task::spawn_blocking(move || fault.wait_until_writer_stalled())
        .await
        .unwrap();
    send(&mut sock, &request(8, &[Op::Ping])).await;
    let first = read_frame(&mut sock).await.unwrap();
    assert_eq!((first.kind, first.correlation), (FrameKind::Response, 8));
    s.fault.resume_writes();
    let second = read_frame(&mut sock).await.unwrap();
    assert_eq!(second.correlation, 7);
    let r: ResponseBatch = decode_payload(&second.payload).unwrap();
    assert_eq!(r.results[0].status, 0);

    // And many concurrent client calls multiplexed on one connection.
    let calls = (0..200).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.get_sku("A").await.map(|v| v.sku) })
    });
    for h in calls {
        assert_eq!(h.await.unwrap().unwrap(), "A");
    }
}

/// Frames written back to back are read together and run as one engine call: each still
/// gets its own answer (a frame over `max_batch_ops` is refused alone), and requests on one
/// SKU apply in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_frames_read_together_run_as_one_call_and_answer_each() {
    let s = start_durable(|c| c.max_batch_ops = 4).await;
    let c = client(&s, "").await;
    catalog(&c).await;
    let mut sock = raw(s.addr, "").await;
    let frames = [
        request(1, &[adjust("A", "wh-a", 5)]),
        request(2, &[Op::Reserve(reserve(1, "web", &[("A", 2, None)]))]),
        request(3, &[Op::Reserve(reserve(2, "web", &[("A", 4, None)]))]),
        request(4, &[Op::Ping, Op::Ping, Op::Ping, Op::Ping, Op::Ping]),
        request(
            5,
            &[Op::Reserve(reserve(3, "web", &[("A", 3, None)])), Op::Ping],
        ),
        request(6, &[Op::Ping]),
    ];
    let before = s
        .stats
        .frames_grouped
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut bytes = Vec::new();
    for f in &frames {
        bytes.extend(f.encode());
    }
    sock.write_all(&bytes).await.unwrap();
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..frames.len() {
        let f = read_frame(&mut sock).await.unwrap();
        assert_eq!(f.kind, FrameKind::Response);
        let r: ResponseBatch = decode_payload(&f.payload).unwrap();
        let codes: Vec<u16> = r.results.iter().map(|r| r.status).collect();
        assert!(answers.insert(f.correlation, codes).is_none());
    }
    let want: std::collections::BTreeMap<u64, Vec<u16>> = [
        (1, vec![0]),
        (2, vec![0]),
        (3, vec![1]),
        (4, vec![status::TOO_MANY_OPERATIONS]),
        (5, vec![0, 0]),
        (6, vec![0]),
    ]
    .into();
    assert_eq!(answers, want, "answers by correlation");
    let grouped = s
        .stats
        .frames_grouped
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    assert!(grouped >= 2, "{grouped} frames ran grouped");
    let v = c.get_sku("A").await.unwrap();
    let wh = v.buckets.iter().find(|b| b.location == "wh-a").unwrap();
    assert_eq!((wh.on_hand, wh.reserved), (5, 5), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_has_one_result_per_operation_in_order() {
    let s = start(|_| {}).await;
    let c = client(&s, "").await;
    catalog(&c).await;
    c.apply(adjust("A", "wh-a", 3)).await.unwrap();
    let res = c
        .batch(&[
            Op::Reserve(reserve(1, "web", &[("A", 2, None)])),
            Op::Reserve(reserve(2, "web", &[("A", 50, None)])),
            Op::GetSku(GetSku { sku: "NOPE".into() }),
            Op::Ping,
            Op::Release(Release {
                request_id: rid(),
                reservation: 77,
            }),
        ])
        .await
        .unwrap();
    let codes: Vec<u16> = res.iter().map(|r| r.status).collect();
    assert_eq!(codes, [0, 1, 2, 0, 6]);
    assert!(res[1].message.contains("insufficient"));
    let r: Reserved = omnistock::client::decode_result(res[0].clone()).unwrap();
    assert_eq!(r.allocations[0].qty, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_operations_and_bad_tokens_are_refused() {
    let s = start(|c| {
        c.tokens.insert("adm".into(), Role::Admin);
        c.tokens.insert("chk".into(), Role::Checkout);
        c.tokens.insert("adp".into(), Role::Adapter);
    })
    .await;
    let admin = client(&s, "adm").await;
    catalog(&admin).await;
    admin.apply(adjust("A", "wh-a", 5)).await.unwrap();

    let chk = client(&s, "chk").await;
    let r = chk
        .reserve(reserve(1, "web", &[("A", 1, None)]))
        .await
        .unwrap();
    assert_eq!(r.allocations.len(), 1);
    chk.get_sku("A").await.unwrap();
    assert_eq!(
        st(chk.apply(adjust("A", "wh-a", 1)).await.unwrap_err()),
        status::FORBIDDEN
    );
    chk.release(Release {
        request_id: rid(),
        reservation: 1,
    })
    .await
    .unwrap();

    let adp = client(&s, "adp").await;
    adp.get_sku("A").await.unwrap();
    assert_eq!(
        st(adp
            .reserve(reserve(2, "web", &[("A", 1, None)]))
            .await
            .unwrap_err()),
        status::FORBIDDEN
    );
    let sub = adp
        .raw_batch(vec![RawOp {
            opcode: opcode::SUBSCRIBE,
            body: vec![],
        }])
        .await
        .unwrap();
    // An adapter may subscribe: an empty body gets past the role check to a decode error.
    assert_eq!(sub[0].status, status::PROTOCOL_ERROR);
    let up = chk
        .raw_batch(vec![RawOp {
            opcode: opcode::SUBSCRIBE,
            body: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(up[0].status, status::FORBIDDEN);

    for bad in ["", "wrong"] {
        let e = Client::connect(ClientConfig::new(s.addr.to_string()).token(bad)).await;
        let e = e.err().expect("refused");
        assert_eq!(e.status(), Some(status::UNAUTHORIZED));
        assert_eq!(e.rejection(), Some(Rejection::Unauthorized), "typed too");
    }
    assert_eq!(
        s.stats
            .auth_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    admin.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_refuses_a_non_loopback_bind() {
    let e = Arc::new(Engine::start_in_memory(engine_config()).unwrap());
    let mut cfg = ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let err = Server::bind(cfg.clone(), e.clone())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("tokens"), "{err}");
    cfg.tokens.insert("t".into(), Role::Admin);
    // Tokens off loopback travel only over TLS, unless explicitly allowed in plaintext.
    let err = Server::bind(cfg.clone(), e.clone())
        .await
        .err()
        .expect("must refuse plaintext tokens");
    assert!(
        err.to_string().contains("--insecure-plaintext-tokens"),
        "{err}"
    );
    cfg.insecure_plaintext_tokens = true;
    assert!(Server::bind(cfg, e).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_refused() {
    let s = start(|_| {}).await;
    let cases: Vec<(Frame, u16)> = vec![
        (
            frame_of(
                FrameKind::Hello,
                0,
                &Hello {
                    magic: *b"NOPE",
                    version: 1,
                    client_name: String::new(),
                    token: String::new(),
                },
            )
            .unwrap(),
            status::PROTOCOL_ERROR,
        ),
        (
            frame_of(
                FrameKind::Hello,
                0,
                &Hello {
                    magic: MAGIC,
                    version: 2,
                    client_name: String::new(),
                    token: String::new(),
                },
            )
            .unwrap(),
            status::UNSUPPORTED_VERSION,
        ),
        (request(1, &[Op::Ping]), status::PROTOCOL_ERROR),
    ];
    for (f, code) in cases {
        let mut sock = TcpStream::connect(s.addr).await.unwrap();
        send(&mut sock, &f).await;
        assert_eq!(error_of(&read_frame(&mut sock).await.unwrap()).status, code);
        expect_closed(&mut sock).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_connection() {
    let s = start(|c| c.max_frame_bytes = 4096).await;
    let good = client(&s, "").await;
    // Oversized: a 4 GiB length prefix is refused without being allocated.
    let mut a = raw(s.addr, "").await;
    a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert_eq!(
        error_of(&read_frame(&mut a).await.unwrap()).status,
        status::LIMIT_EXCEEDED
    );
    expect_closed(&mut a).await;
    // Too short a length.
    let mut b = raw(s.addr, "").await;
    b.write_all(&[2, 0, 0, 0, 3, 0]).await.unwrap();
    assert_eq!(
        error_of(&read_frame(&mut b).await.unwrap()).status,
        status::PROTOCOL_ERROR
    );
    // Truncated: half a frame, then the client goes away.
    let mut t = raw(s.addr, "").await;
    let f = request(1, &[Op::Ping]).encode();
    t.write_all(&f[..f.len() / 2]).await.unwrap();
    drop(t);
    // A request whose payload is not a batch.
    let mut d = raw(s.addr, "").await;
    send(&mut d, &Frame::new(FrameKind::Request, 5, vec![0xff; 40])).await;
    let e = read_frame(&mut d).await.unwrap();
    assert_eq!(
        (e.correlation, error_of(&e).status),
        (5, status::PROTOCOL_ERROR)
    );
    // Random garbage of many shapes, each on its own connection.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..40 {
        let mut g = raw(s.addr, "").await;
        let n = 1 + (seed % 300) as usize;
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = g.write_all(&bytes).await;
        drop(g);
    }
    // The well-behaved client never noticed.
    assert!(good.ping().await.is_ok());
    assert!(
        s.stats
            .protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let s = start_durable(|_| {}).await;
    let c = client(&s, "").await;
    catalog(&c).await;
    c.apply(adjust("A", "wh-a", 100)).await.unwrap();
    s.fault.stall_writes();
    let calls: Vec<_> = (0..20u128)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.reserve(reserve(100 + i, "web", &[("A", 1, None)])).await })
        })
        .collect();
    let fault = s.fault.clone();
    tokio::task::spawn_blocking(move || fault.wait_until_writer_stalled())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.stop.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!s.task.is_finished(), "must wait for requests in flight");
    s.fault.resume_writes();
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .unwrap()
        .unwrap();
    let mut ok = 0;
    for h in calls {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                matches!(e, ClientError::Disconnected | ClientError::Connect(_)),
                "{e:?}"
            ),
        }
    }
    assert!(ok >= 1);
    // New connections are refused after shutdown.
    assert!(TcpStream::connect(s.addr).await.is_err());
    let v = s
        .engine
        .get(&omnistock::domain::SkuId::new("A").unwrap())
        .await
        .unwrap();
    assert_eq!(v.buckets.iter().map(|b| b.reserved).sum::<u32>(), ok);
    let engine = s.engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap();
}

/// A proxy that drops the first connection right after the server's first response passes
/// through the server→client direction (before forwarding it), then forwards faithfully.
async fn dropping_proxy(upstream: SocketAddr) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut down, _) = l.accept().await.unwrap();
            let mut up = TcpStream::connect(upstream).await.unwrap();
            let drop_it = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let c2s = tokio::io::copy(&mut dr, &mut uw);
                let s2c = async {
                    let mut frames = 0;
                    loop {
                        let Some(f) = read_frame_half(&mut ur).await else {
                            break;
                        };
                        frames += 1;
                        if drop_it && frames == 2 {
                            break; // the response to the first request is lost
                        }
                        if dw.write_all(&f.encode()).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! { _ = c2s => {}, _ = s2c => {} }
            });
        }
    });
    addr
}

async fn read_frame_half<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let n = u32::from_le_bytes(len) as usize;
    let mut all = len.to_vec();
    all.resize(4 + n, 0);
    r.read_exact(&mut all[4..]).await.ok()?;
    Frame::parse(&all, usize::MAX).ok()?.map(|(f, _)| f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_a_dropped_connection_returns_the_original_outcome() {
    let s = start(|_| {}).await;
    let admin = client(&s, "").await;
    catalog(&admin).await;
    admin.apply(adjust("A", "wh-a", 5)).await.unwrap();
    let proxy = dropping_proxy(s.addr).await;
    let c = Client::connect(ClientConfig::new(proxy.to_string()))
        .await
        .unwrap();
    // The first attempt is applied, its answer lost; the retry carries the same request id.
    let r = c
        .reserve(reserve(1, "web", &[("A", 2, None)]))
        .await
        .unwrap();
    assert_eq!(r.allocations[0].qty, 2);
    let v = admin.get_sku("A").await.unwrap();
    assert_eq!(v.buckets[0].reserved, 2, "applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservation_and_shutting_down_reach_the_client() {
    let clock = Arc::new(omnistock::engine::ManualClock::new(1_000_000));
    let cfg = EngineConfig {
        expiry_driver: false,
        ..engine_config()
    };
    let e = Engine::start_in_memory_with_clock(cfg, clock.clone()).unwrap();
    // The engine is shut down under a running server below (`serve` never does that: it
    // stops the server first). Connections on the tokio pool outlive the actor threads and
    // can answer 101; connections on the actor threads would just be dropped.
    let s = serve(e, None, Arc::new(FaultInjector::new()), |c| {
        c.connections_on_arbiters = false;
    })
    .await;
    let c = client(&s, "").await;
    catalog(&c).await;
    c.apply(adjust("A", "wh-a", 5)).await.unwrap();
    let mut r = reserve(77, "web", &[("A", 1, None)]);
    r.ttl_ms = 1_000;
    c.reserve(r).await.unwrap();
    clock.advance(1_000);
    let expired = c
        .fulfill(Fulfill {
            request_id: rid(),
            reservation: 77,
            lines: None,
        })
        .await
        .unwrap_err();
    assert_eq!(st(expired), 15, "ReservationExpired");
    s.engine.shutdown();
    let down = c.apply(adjust("A", "wh-a", 1)).await.unwrap_err();
    assert_eq!(st(down), 101, "ShuttingDown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sku_mailbox_answers_busy() {
    let cfg = EngineConfig {
        mailbox_capacity: 1,
        ..engine_config()
    };
    let e = Engine::start_in_memory(cfg).unwrap();
    let s = serve(e, None, Arc::new(FaultInjector::new()), |_| {}).await;
    let c = client(&s, "").await;
    catalog(&c).await;
    c.apply(adjust("A", "wh-a", 1_000_000)).await.unwrap();
    let ops: Vec<Op> = (0..2_000u128)
        .map(|i| Op::Reserve(reserve(10_000 + i, "web", &[("A", 1, None)])))
        .collect();
    let res = c.batch(&ops).await.unwrap();
    let busy = res.iter().filter(|r| r.status == 13).count();
    let ok = res.iter().filter(|r| r.status == 0).count();
    assert_eq!(busy + ok, ops.len(), "only ok or busy");
    assert!(
        busy > 0,
        "a mailbox of 1 refuses some of 2,000 concurrent operations"
    );
    let view = c.get_sku("A").await.unwrap();
    let reserved: u32 = view.buckets.iter().map(|b| b.reserved).sum();
    assert_eq!(
        reserved as usize, ok,
        "exactly the accepted ones hold stock"
    );
}
