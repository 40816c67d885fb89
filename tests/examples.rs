//! The examples of examples/ run against a real server on 127.0.0.1:0: their code is
//! included here as modules (their `main` only parses `std::env` and calls the functions
//! tested), so what a reader copies is what was run. `cargo test` also builds them as
//! programs, and `.ci/run` builds them without the `server` feature.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use omnistock::client::{Client, ClientConfig};
use omnistock::engine::{Engine, EngineConfig, PersistConfig};
use omnistock::server::{Server, ServerConfig, ShutdownHandle};

#[allow(dead_code)]
#[path = "../examples/checkout.rs"]
mod checkout;
#[allow(dead_code)]
#[path = "../examples/feed_consumer.rs"]
mod feed_consumer;

struct TestServer {
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        arbiters: 2,
        ..EngineConfig::default()
    }
}

impl TestServer {
    async fn start() -> TestServer {
        let engine = Engine::start_in_memory(engine_config()).unwrap();
        TestServer::serve(engine, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A durable engine on `dir`, listening on `listen`.
    async fn durable(dir: &std::path::Path, listen: SocketAddr) -> TestServer {
        let mut pc = PersistConfig::new(dir);
        pc.engine = engine_config();
        TestServer::serve(Engine::open(pc).await.unwrap(), listen).await
    }

    async fn serve(engine: Engine, listen: SocketAddr) -> TestServer {
        let engine = Arc::new(engine);
        let cfg = ServerConfig {
            listen,
            ..ServerConfig::default()
        };
        let server = Server::bind(cfg, engine.clone()).await.unwrap();
        TestServer {
            addr: server.local_addr(),
            stop: server.shutdown_handle(),
            task: tokio::spawn(server.run()),
            engine,
        }
    }

    async fn stop(self) {
        self.stop.shutdown();
        let _ = self.task.await;
        self.engine.shutdown();
    }
}

/// Location `wh`, channel `web` selling from it, and `stock` units of each SKU there.
async fn stocked(addr: SocketAddr, stock: &[(&str, i64)]) -> Client {
    let c = Client::connect(ClientConfig::new(addr.to_string()))
        .await
        .unwrap();
    common::wire_catalog(&c).await;
    for (sku, qty) in stock {
        adjust(&c, sku, *qty).await;
    }
    c
}

async fn adjust(c: &Client, sku: &str, delta: i64) -> u64 {
    common::wire_adjust(c, sku, delta).await
}

async fn on_hand(c: &Client, sku: &str) -> (u32, u32) {
    let s = c.get_sku(sku).await.unwrap();
    let b = &s.buckets[0];
    (b.on_hand, b.reserved)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn order(addr: SocketAddr, lines: &[&str]) -> checkout::Order {
    let mut a = args(&["--channel", "web"]);
    a.extend(args(lines));
    checkout::parse_args(a, Some(addr.to_string()), None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_reserves_and_fulfils_a_cart() {
    let s = TestServer::start().await;
    let c = stocked(s.addr, &[("TEE", 5), ("CAP", 2)]).await;
    let mut out = Vec::new();
    let r = checkout::checkout(&order(s.addr, &["TEE=3", "CAP=1", "TEE=1"]), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let checkout::Outcome::Fulfilled { reservation, lines } = r else {
        panic!("{r:?}\n{text}")
    };
    assert_eq!(lines, [("TEE".to_string(), 4), ("CAP".to_string(), 1)]);
    assert!(text.contains("reserved 4 x TEE at wh"), "{text}");
    assert!(text.contains("fulfilled reservation"), "{text}");
    // Sold: on hand down, nothing left held, the reservation gone.
    assert_eq!(on_hand(&c, "TEE").await, (1, 0));
    assert_eq!(on_hand(&c, "CAP").await, (1, 0));
    assert_eq!(
        c.get_reservation(reservation).await.unwrap_err().status(),
        Some(6)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_with_short_lines_takes_what_is_available() {
    let s = TestServer::start().await;
    let c = stocked(s.addr, &[("TEE", 2), ("CAP", 1), ("MUG", 1)]).await;
    // MUG sold out before this customer.
    adjust(&c, "MUG", -1).await;
    let mut out = Vec::new();
    let r = checkout::checkout(&order(s.addr, &["TEE=5", "CAP=1", "MUG=3"]), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("short: TEE wanted 5, available 2"), "{text}");
    assert!(text.contains("short: MUG wanted 3, available 0"), "{text}");
    let checkout::Outcome::Fulfilled { lines, .. } = r else {
        panic!("{r:?}\n{text}")
    };
    assert_eq!(lines, [("TEE".to_string(), 2), ("CAP".to_string(), 1)]);
    assert_eq!(on_hand(&c, "TEE").await, (0, 0));
    // Nothing left at all: no reservation, nothing sold.
    let mut out = Vec::new();
    let r = checkout::checkout(&order(s.addr, &["TEE=1", "MUG=1"]), &mut out)
        .await
        .unwrap();
    assert_eq!(r, checkout::Outcome::NothingAvailable);
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("nothing of the cart is available on web"));
    s.stop().await;
}

#[test]
fn the_examples_refuse_bad_arguments_with_a_reason() {
    let bad = |a: &[&str]| checkout::parse_args(args(a), None, None).unwrap_err();
    assert!(bad(&["TEE=1"]).contains("--channel is required"));
    assert!(bad(&["--channel", "web"]).contains("no SKU=QTY line"));
    assert!(bad(&["--channel", "web", "TEE"]).contains("a line is SKU=QTY"));
    assert!(bad(&["--channel", "web", "TEE=0"]).contains("above 0"));
    assert!(bad(&["--channel", "web", "TEE=-2"]).contains("above 0"));
    assert!(bad(&["--channel", "web", "=2"]).contains("the SKU is empty"));
    assert!(bad(&["--channel"]).contains("--channel needs a value"));
    assert!(bad(&["--bogus"]).contains("unknown flag --bogus"));
    let o = checkout::parse_args(args(&["--channel", "web", "A=1"]), None, Some("t".into()));
    assert_eq!(o.unwrap().addr, "127.0.0.1:7878");

    let bad = |a: &[&str]| feed_consumer::parse_args(args(a), None, None).unwrap_err();
    assert!(bad(&["--after", "x"]).contains("a sequence number"));
    assert!(bad(&["--until", "-1"]).contains("a sequence number"));
    assert!(bad(&["--after", "3", "--name", "n"]).contains("exclude each other"));
    assert!(bad(&["extra"]).contains("unexpected argument"));
}

fn seqs_printed(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("seq "))
        .filter(|l| l.contains(" on web: "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

async fn consume(addr: SocketAddr, a: &[&str]) -> (u64, String) {
    let o = feed_consumer::parse_args(args(a), Some(addr.to_string()), None).unwrap();
    let mut out = Vec::new();
    let pos = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        feed_consumer::consume(&o, &mut out),
    )
    .await
    .expect("the consumer reached --until")
    .unwrap();
    (pos, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_consumer_resumes_from_a_position_without_gap_or_duplicate() {
    let s = TestServer::start().await;
    let c = stocked(s.addr, &[("TEE", 100)]).await;
    let start = adjust(&c, "TEE", 1).await;
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(adjust(&c, "TEE", -1).await);
    }
    let until = first[4].to_string();
    let (pos, text) = consume(s.addr, &["--after", &start.to_string(), "--until", &until]).await;
    assert_eq!(seqs_printed(&text), first, "{text}");
    assert_eq!(pos, first[4]);
    assert!(text.ends_with(&format!("position {pos}\n")), "{text}");
    assert!(
        text.contains(&format!("seq {} TEE on web: 101 -> 100", first[0])),
        "{text}"
    );

    // Later changes, consumed from the position printed: only they, each once.
    let mut second = Vec::new();
    for _ in 0..3 {
        second.push(adjust(&c, "TEE", 2).await);
    }
    let until = second[2].to_string();
    let (_, text) = consume(s.addr, &["--after", &pos.to_string(), "--until", &until]).await;
    assert_eq!(seqs_printed(&text), second, "{text}");

    // Named: the server keeps the position between runs.
    let until = second[2].to_string();
    let (_, text) = consume(s.addr, &["--name", "shop", "--until", &until]).await;
    assert!(text.contains("snapshot TEE on web: 102"), "{text}");
    let third = adjust(&c, "TEE", -1).await;
    let (_, text) = consume(s.addr, &["--name", "shop", "--until", &third.to_string()]).await;
    assert_eq!(seqs_printed(&text), [third], "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_consumer_resumes_by_itself_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::durable(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = s.addr;
    let c = stocked(addr, &[("TEE", 100)]).await;
    let start = adjust(&c, "TEE", 1).await;
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(adjust(&c, "TEE", -1).await);
    }
    // The consumer runs until a position only reached after the restart: 3 more changes.
    let until = sent[2] + 3;
    let o = feed_consumer::parse_args(
        args(&["--after", &start.to_string(), "--until", &until.to_string()]),
        Some(addr.to_string()),
        None,
    )
    .unwrap();
    let consumer = tokio::spawn(async move {
        let mut out = Vec::new();
        let r = feed_consumer::consume(&o, &mut out).await;
        (r, String::from_utf8(out).unwrap())
    });
    // Let it read the first changes, then stop the server under it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(c);
    s.stop().await;
    let s = TestServer::durable(dir.path(), addr).await;
    let c = Client::connect(ClientConfig::new(addr.to_string()))
        .await
        .unwrap();
    for _ in 0..3 {
        sent.push(adjust(&c, "TEE", -1).await);
    }
    assert_eq!(sent[5], until, "the log continued without a gap");
    let (r, text) = tokio::time::timeout(std::time::Duration::from_secs(20), consumer)
        .await
        .expect("the consumer finished after the restart")
        .unwrap();
    assert_eq!(r.unwrap(), until, "{text}");
    assert!(text.contains("resuming after seq"), "{text}");
    assert_eq!(seqs_printed(&text), sent, "each change once:\n{text}");
    s.stop().await;
}
