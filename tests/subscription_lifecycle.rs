//! The subscription lifecycle through the real server, as a property: SUBSCRIBE,
//! UNSUBSCRIBE, ACK, PING and a close, written over one raw connection in any order and in
//! writes of any grouping, while another connection publishes changes. Against a model that
//! knows only the rules: every request is answered exactly once (SUBSCRIBE and UNSUBSCRIBE
//! with the status the order implies), a subscription's pushes come after its answer and
//! before the answer of the UNSUBSCRIBE that ends it, its changes are in order and without a
//! gap from its start position up to the last position it was told, and after a close the
//! connection and its subscriber are gone. (The pure machine has its own property test in
//! src/subscriber.rs; this one tests the shell and the connection around it.)

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omnistock::client::{Client, ClientConfig};
use omnistock::engine::{Engine, EngineConfig};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig, ServerStats};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
enum Step {
    /// SUBSCRIBE after `back` records before the newest.
    Subscribe {
        back: u64,
    },
    Unsubscribe,
    /// ACK of the newest published position under a name.
    Ack,
    Ping,
    /// Write what is buffered.
    Flush,
    /// `n` changes on the other connection (after writing what is buffered).
    Publish(u8),
    /// Write what is buffered and close the connection's sending side.
    Close,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..6).prop_map(|back| Step::Subscribe { back }),
        3 => Just(Step::Unsubscribe),
        1 => Just(Step::Ack),
        1 => Just(Step::Ping),
        2 => Just(Step::Flush),
        3 => (1u8..6).prop_map(Step::Publish),
        1 => Just(Step::Close),
    ]
}

struct World {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    engine: Arc<Engine>,
    publisher: Client,
    /// Every change published, by sequence number (the SKU's web ATP changes once each).
    published: Mutex<BTreeSet<u64>>,
}

fn rid() -> u128 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn world() -> World {
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::bind(cfg, engine.clone()).await.unwrap();
    let (addr, stats) = (server.local_addr(), server.stats());
    tokio::spawn(server.run());
    let publisher = Client::connect(ClientConfig::new(addr.to_string()))
        .await
        .unwrap();
    publisher
        .apply(Op::UpsertLocation(UpsertLocation {
            request_id: rid(),
            location: WireLocation {
                id: "wh".into(),
                kind: WireLocationKind::Warehouse,
                region: "FR".into(),
            },
        }))
        .await
        .unwrap();
    publisher
        .apply(Op::UpsertChannel(UpsertChannel {
            request_id: rid(),
            channel: WireChannel {
                id: "web".into(),
                locations: vec!["wh".into()],
                buffer: 0,
                cap: None,
            },
        }))
        .await
        .unwrap();
    let w = World {
        addr,
        stats,
        engine,
        publisher,
        published: Mutex::new(BTreeSet::new()),
    };
    publish(&w, 8).await;
    w
}

async fn publish(w: &World, n: u8) {
    let ops: Vec<Op> = (0..n)
        .map(|_| {
            Op::Adjust(Adjust {
                request_id: rid(),
                sku: "L".into(),
                location: "wh".into(),
                delta: 1,
                reason: WireAdjustReason::Receipt,
                reference: String::new(),
            })
        })
        .collect();
    let res = w.publisher.batch(&ops).await.unwrap();
    let mut p = w.published.lock().unwrap();
    for r in res {
        assert_eq!(r.status, 0);
        p.insert(decode_payload::<Applied>(&r.body).unwrap().seq);
    }
}

fn request(corr: u64, op: Op) -> Vec<u8> {
    let ops = vec![op.to_raw().unwrap()];
    frame_of(FrameKind::Request, corr, &RequestBatch { ops })
        .unwrap()
        .encode()
}

/// What the model expects of one request.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// SUBSCRIBE accepted, from this position.
    Subscribed,
    /// Refused 12 (already subscribed, or nothing to unsubscribe).
    Refused,
    /// UNSUBSCRIBE that ends the subscription of `corr`.
    Ends(u64),
    Ok,
}

async fn run_case(w: &World, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut s = TcpStream::connect(w.addr).await.unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "lifecycle".into(),
        token: String::new(),
    };
    s.write_all(&frame_of(FrameKind::Hello, 0, &hello).unwrap().encode())
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut buf = Vec::new();
    let mut expect: Vec<(u64, Expect)> = Vec::new();
    let mut active: Option<u64> = None;
    let mut corr = 0u64;
    let mut closed = false;
    for st in steps {
        corr += 1;
        match st {
            Step::Subscribe { back } => {
                let head = *w.published.lock().unwrap().last().unwrap_or(&0);
                let sub = Subscribe {
                    name: String::new(),
                    start: start::AFTER,
                    from_seq: head.saturating_sub(back),
                    channels: vec![],
                    skus: vec![],
                    sku_prefix: String::new(),
                    kinds: kinds::ATP,
                    coalesce_ms: 0,
                };
                buf.extend(request(corr, Op::Subscribe(sub)));
                if active.is_none() {
                    active = Some(corr);
                    expect.push((corr, Expect::Subscribed));
                } else {
                    expect.push((corr, Expect::Refused));
                }
            }
            Step::Unsubscribe => {
                buf.extend(request(corr, Op::Unsubscribe));
                match active.take() {
                    Some(c) => expect.push((corr, Expect::Ends(c))),
                    None => expect.push((corr, Expect::Refused)),
                }
            }
            Step::Ack => {
                let head = *w.published.lock().unwrap().last().unwrap_or(&0);
                let ack = Ack {
                    name: "lifecycle".into(),
                    seq: head,
                };
                buf.extend(request(corr, Op::Ack(ack)));
                expect.push((corr, Expect::Ok));
            }
            Step::Ping => {
                buf.extend(request(corr, Op::Ping));
                expect.push((corr, Expect::Ok));
            }
            Step::Flush => {
                wr.write_all(&std::mem::take(&mut buf)).await.unwrap();
            }
            Step::Publish(n) => {
                wr.write_all(&std::mem::take(&mut buf)).await.unwrap();
                publish(w, n).await;
            }
            Step::Close => {
                closed = true;
                break;
            }
        }
    }
    if !closed {
        // A last PING: once it is answered, so is everything before it.
        corr += 1;
        buf.extend(request(corr, Op::Ping));
        expect.push((corr, Expect::Ok));
    }
    wr.write_all(&buf).await.unwrap();
    if closed {
        wr.shutdown().await.unwrap();
    }
    // Read until every request is answered (and, after a close, to the end of stream).
    let mut back = Vec::new();
    let mut frames = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let mut at = 0;
            while let Ok(Some((f, used))) = Frame::parse(&back[at..], usize::MAX) {
                at += used;
                frames.push(f);
            }
            back.drain(..at);
            let answered = frames
                .iter()
                .filter(|f| f.kind == FrameKind::Response)
                .count();
            if !closed && answered >= expect.len() {
                return;
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => back.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let in_time = tokio::time::timeout(Duration::from_secs(20), read).await;
    prop_assert!(in_time.is_ok(), "the connection hung: {expect:?}");
    drop(wr);
    drop(rd);

    // Every request answered exactly once, as the order implies.
    let mut answered_at: HashMap<u64, usize> = HashMap::new();
    let mut from_of: HashMap<u64, u64> = HashMap::new();
    for (i, f) in frames.iter().enumerate() {
        if f.kind != FrameKind::Response {
            prop_assert!(
                f.kind == FrameKind::Push || (i == 0 && f.kind == FrameKind::Welcome),
                "frame {:?}",
                f.kind
            );
            continue;
        }
        prop_assert!(
            answered_at.insert(f.correlation, i).is_none(),
            "answered twice: {}",
            f.correlation
        );
        let r: ResponseBatch = decode_payload(&f.payload).unwrap();
        let want = expect.iter().find(|(c, _)| *c == f.correlation);
        prop_assert!(want.is_some(), "an answer to nothing: {}", f.correlation);
        let (_, want) = want.unwrap();
        let status = r.results[0].status;
        match want {
            Expect::Refused => prop_assert_eq!(status, 12),
            Expect::Subscribed => {
                prop_assert_eq!(status, 0);
                let sub: Subscribed = decode_payload(&r.results[0].body).unwrap();
                from_of.insert(f.correlation, sub.from_seq);
            }
            Expect::Ends(_) | Expect::Ok => prop_assert_eq!(status, 0, "{:?}", r.results[0]),
        }
    }
    prop_assert_eq!(answered_at.len(), expect.len(), "unanswered: {:?}", expect);

    // Each subscription's pushes: after its answer, before the answer that ends it, in
    // order, and gapless from its start up to the last position it was told.
    let published = w.published.lock().unwrap().clone();
    for (c, from) in &from_of {
        let begin = answered_at[c];
        let end = expect
            .iter()
            .find(|(_, e)| *e == Expect::Ends(*c))
            .map(|(u, _)| answered_at[u]);
        let mut seqs = Vec::new();
        let mut told = *from;
        for (i, f) in frames.iter().enumerate() {
            if f.kind != FrameKind::Push || f.correlation != *c {
                continue;
            }
            prop_assert!(i > begin, "a push before the SUBSCRIBE answer");
            prop_assert!(
                end.is_none_or(|e| i < e),
                "a push after the UNSUBSCRIBE answer"
            );
            let batch: PushBatch = decode_payload(&f.payload).unwrap();
            for item in batch.items {
                match item {
                    PushItem::Atp(a) => seqs.push(a.seq),
                    PushItem::Position { seq } => {
                        prop_assert!(seq >= told, "position went back");
                        told = seq;
                    }
                    other => prop_assert!(false, "unexpected item {other:?}"),
                }
            }
        }
        prop_assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
        let want: Vec<u64> = published
            .iter()
            .copied()
            .filter(|s| *s > *from && *s <= told)
            .collect();
        let got: Vec<u64> = seqs.iter().copied().filter(|s| *s <= told).collect();
        prop_assert_eq!(got, want, "from {} told {}", from, told);
    }

    // The connection and its subscriber are gone (the publisher's connection stays).
    let gone = async {
        while w.stats.connections_open.load(Ordering::Relaxed) > 1
            || w.engine.feed().subscribers() > 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let gone = tokio::time::timeout(Duration::from_secs(10), gone).await;
    prop_assert!(
        gone.is_ok(),
        "the connection or its subscriber stayed after the close"
    );
    Ok(())
}

#[test]
fn any_order_of_requests_publications_and_close_keeps_the_lifecycle_rules() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world());
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..24), |steps| {
        rt.block_on(run_case(&w, steps))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
