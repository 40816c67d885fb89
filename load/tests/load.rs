//! The load generator against a real server on 127.0.0.1:0: short runs of each workload
//! pass their end-of-run checks, the checker catches discrepancies it is shown, the Redis
//! target works when `redis-server` is installed (required in CI through
//! `OMNISTOCK_REQUIRE_REDIS=1`), and the binary refuses bad flags and remote targets.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{new_request_id, Client, ClientConfig};
use omnistock::engine::{Engine, EngineConfig, PersistConfig};
use omnistock::protocol::{Adjust, Op, WireAdjustReason};
use omnistock::server::{Server, ServerConfig, ShutdownHandle};
use omnistock_load::{
    self as loadgen, check, CartLines, CatalogSpec, LoadConfig, RedisTarget, TargetSpec,
    WorkloadKind,
};

struct TestServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    async fn start(durable: bool) -> TestServer {
        let config = EngineConfig {
            arbiters: 1,
            ..EngineConfig::default()
        };
        let (engine, dir) = if durable {
            let dir = tempfile::tempdir().unwrap();
            let mut pc = PersistConfig::new(dir.path());
            pc.engine = config;
            (Engine::open(pc).await.unwrap(), Some(dir))
        } else {
            (Engine::start_in_memory(config).unwrap(), None)
        };
        let engine = Arc::new(engine);
        let cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        };
        let server = Server::bind(cfg, engine.clone()).await.unwrap();
        TestServer {
            addr: server.local_addr(),
            stop: server.shutdown_handle(),
            task: tokio::spawn(server.run()),
            engine,
            _dir: dir,
        }
    }

    fn target(&self) -> TargetSpec {
        TargetSpec::Omnistock {
            addr: self.addr.to_string(),
            token: String::new(),
            tls: None,
        }
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.task.await.unwrap();
        let e = self.engine;
        tokio::task::spawn_blocking(move || e.shutdown())
            .await
            .unwrap();
    }
}

fn short(cfg: &mut LoadConfig, seconds: f64) {
    cfg.connections = 4;
    cfg.depth = 4;
    cfg.warmup = Duration::from_millis(300);
    cfg.duration = Duration::from_secs_f64(seconds);
}

fn op_ok(r: &loadgen::Report, op: &str) -> u64 {
    r.ops.iter().find(|o| o.op == op).map_or(0, |o| o.ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_with_fulfil_release_expire_and_restock_passes_its_checks() {
    let s = TestServer::start(true).await;
    // Little stock and Zipf popularity, so the hot SKUs sell out and rejections happen.
    let spec = CatalogSpec::generic(200, 2, 2, 30).unwrap();
    loadgen::load_catalog(&s.target(), &spec).await.unwrap();
    let mut w = loadgen::preset(WorkloadKind::Restock, &spec);
    w.cart_lines = CartLines::parse("1-3").unwrap();
    w.zipf = Some(1.0);
    w.expire_ttl_ms = 300;
    let mut cfg = LoadConfig::new(s.target(), w);
    short(&mut cfg, 2.0);
    cfg.batch = 3;
    let out = loadgen::run(cfg).await.unwrap();
    let r = &out.report;
    let c = r.check.as_ref().unwrap();
    assert!(c.passed(), "{}", r.human());
    assert!(c.holds_range && c.skus_checked == 200, "{}", r.human());
    for op in ["reserve", "fulfill", "release", "adjust"] {
        assert!(op_ok(r, op) > 0, "no {op} acknowledged: {}", r.human());
    }
    assert!(
        r.rejections.contains_key("reserve: insufficient_stock"),
        "{}",
        r.human()
    );
    let expiring: u64 = (0..200)
        .filter_map(|i| out.ledger.sku(i))
        .map(|l| l.expiring)
        .sum();
    assert!(expiring > 0, "no reservation was left to expire");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_beside_the_load_receive_every_change_and_time_it() {
    let s = TestServer::start(true).await;
    let spec = CatalogSpec::generic(100, 2, 2, 1_000_000).unwrap();
    loadgen::load_catalog(&s.target(), &spec).await.unwrap();
    let w = loadgen::preset(WorkloadKind::Reserve, &spec);
    let mut cfg = LoadConfig::new(s.target(), w);
    short(&mut cfg, 1.5);
    cfg.subscribers = 3;
    let out = loadgen::run(cfg).await.unwrap();
    let r = &out.report;
    assert!(r.check.as_ref().unwrap().passed(), "{}", r.human());
    let f = r.feed.as_ref().expect("feed report");
    let reserves = op_ok(r, "reserve");
    // Each reserve changes the ATP of both channels of its SKU (every subscriber gets both);
    // events of the warm-up's tail may be counted, so allow a little over.
    assert!(f.events >= 3 * 2 * reserves * 9 / 10, "{}", r.human());
    assert!(f.timed > 0 && f.p99_us > 0, "{}", r.human());
    assert_eq!(f.lagged, 0, "{}", r.human());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_of_one_sku_to_a_thousand_clients_sells_exactly_the_stock() {
    let s = TestServer::start(false).await;
    let spec = CatalogSpec::generic(1, 2, 1, 100).unwrap();
    loadgen::load_catalog(&s.target(), &spec).await.unwrap();
    let w = loadgen::preset(WorkloadKind::FlashSale, &spec);
    let mut cfg = LoadConfig::new(s.target(), w);
    short(&mut cfg, 1.5);
    cfg.connections = 10;
    cfg.depth = 100;
    cfg.warmup = Duration::ZERO;
    let out = loadgen::run(cfg).await.unwrap();
    let r = &out.report;
    let c = r.check.as_ref().unwrap();
    assert!(c.passed(), "{}", r.human());
    let l = out.ledger.sku(0).copied().unwrap();
    assert_eq!(
        (l.reserved, l.fulfilled, l.open),
        (200, 200, 0),
        "{}",
        r.human()
    );
    assert_eq!((c.units_taken, c.units_available), (200, 200));
    let after = out.after.unwrap().skus[0].unwrap();
    assert_eq!(
        (after.on_hand, after.reserved, after.oversold),
        (0, 0, false)
    );
    assert!(r.ops[0].rejected > 0, "{}", r.human());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_a_fabricated_ledger_and_a_change_it_was_not_told_about() {
    let s = TestServer::start(false).await;
    let spec = CatalogSpec::generic(20, 1, 1, 1_000).unwrap();
    loadgen::load_catalog(&s.target(), &spec).await.unwrap();
    let mut w = loadgen::preset(WorkloadKind::Checkout, &spec);
    w.expire_pct = 0; // no expiry: the holds check is exact
    let mut cfg = LoadConfig::new(s.target(), w);
    short(&mut cfg, 1.0);
    cfg.max_flows = Some(400);
    let out = loadgen::run(cfg).await.unwrap();
    let (before, after) = (out.before.unwrap(), out.after.unwrap());
    let c = check(&before, &out.ledger, &after, false);
    assert!(c.passed() && !c.holds_range, "{}", c.human());

    // A fulfilment the server never acknowledged.
    let mut fake = out.ledger.clone();
    fake.sku_mut(3).fulfilled += 1;
    let c = check(&before, &fake, &after, false);
    assert_eq!(c.failure_count, 1, "{}", c.human());
    assert!(
        c.failures[0].starts_with("SKU-0000003: conservation"),
        "{}",
        c.human()
    );

    // A hold the server does not have.
    let mut fake = out.ledger.clone();
    fake.sku_mut(4).open += 2;
    let c = check(&before, &fake, &after, false);
    assert!(
        c.failures[0].starts_with("SKU-0000004: holds"),
        "{}",
        c.human()
    );

    // The server changes behind the generator's back.
    let client = Client::connect(ClientConfig::new(s.addr.to_string()))
        .await
        .unwrap();
    client
        .apply(Op::Adjust(Adjust {
            request_id: new_request_id(),
            sku: "SKU-0000005".into(),
            location: "loc-000".into(),
            delta: -1,
            reason: WireAdjustReason::Shrinkage,
            reference: "not in the ledger".into(),
        }))
        .await
        .unwrap();
    let later = loadgen::check::snapshot(&client, 20).await.unwrap();
    let c = check(&before, &out.ledger, &later, false);
    assert_eq!(c.failure_count, 1, "{}", c.human());
    assert!(
        c.failures[0].starts_with("SKU-0000005: conservation"),
        "{}",
        c.human()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_is_respected_and_bounded_by_ops() {
    let s = TestServer::start(false).await;
    let spec = CatalogSpec::generic(50, 1, 1, 10_000).unwrap();
    loadgen::load_catalog(&s.target(), &spec).await.unwrap();
    let w = loadgen::preset(WorkloadKind::Reserve, &spec);
    let mut cfg = LoadConfig::new(s.target(), w);
    short(&mut cfg, 1.0);
    cfg.warmup = Duration::ZERO;
    cfg.rate = Some(500.0);
    let t = Instant::now();
    let out = loadgen::run(cfg.clone()).await.unwrap();
    let n = out.report.ops[0].count;
    // 500/s for 1 s: exactly the 500 flows scheduled before the deadline are sent.
    assert_eq!(n, 500);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(out.report.check.unwrap().passed());
    cfg.rate = None;
    cfg.max_flows = Some(123);
    // Same seed, same server: reservation ids must not collide with the first run's.
    let out = loadgen::run(cfg).await.unwrap();
    assert_eq!(out.report.ops[0].count, 123);
    assert_eq!(out.report.ops[0].ok, 123, "{}", out.report.human());
    s.stop().await;
}

/// A `redis-server` child on a free port with its own directory, killed on drop.
struct RedisServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn start_redis() -> Option<RedisServer> {
    let Some(bin) = redis_server_binary() else {
        assert!(
            std::env::var("OMNISTOCK_REQUIRE_REDIS").as_deref() != Ok("1"),
            "OMNISTOCK_REQUIRE_REDIS=1 but redis-server is not on PATH"
        );
        eprintln!("redis-server not installed: Redis target not exercised");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir.path())
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let server = RedisServer {
        child,
        url: format!("redis://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_target_reserves_with_the_lua_script_and_passes_its_checks() {
    let Some(redis) = start_redis() else { return };
    let target = RedisTarget::spec(redis.url.clone());
    // Reserve workload: 3-line carts, batched and pipelined.
    let spec = CatalogSpec::generic(100, 2, 2, 1_000).unwrap();
    let mut w = loadgen::preset(WorkloadKind::Reserve, &spec);
    w.cart_lines = CartLines::fixed(3);
    // Redis answers BUSY while it loads; the catalog load retries until the deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = loadgen::load_catalog(&target, &spec).await {
        assert!(Instant::now() < deadline, "redis catalog: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut cfg = LoadConfig::new(target.clone(), w);
    short(&mut cfg, 1.0);
    cfg.batch = 4;
    let out = loadgen::run(cfg).await.unwrap();
    let r = &out.report;
    assert!(r.check.as_ref().unwrap().passed(), "{}", r.human());
    assert!(op_ok(r, "reserve") > 0, "{}", r.human());

    // Flash sale: one SKU, 2 x 50 units, 400 clients: exactly the stock is held.
    let spec = CatalogSpec::generic(1, 2, 1, 50).unwrap();
    loadgen::load_catalog(&target, &spec).await.unwrap();
    let mut w = loadgen::preset(WorkloadKind::FlashSale, &spec);
    w.fulfil_pct = 0;
    let mut cfg = LoadConfig::new(target, w);
    short(&mut cfg, 1.0);
    cfg.depth = 100;
    let out = loadgen::run(cfg).await.unwrap();
    let r = &out.report;
    assert!(r.check.as_ref().unwrap().passed(), "{}", r.human());
    assert_eq!(out.ledger.sku(0).unwrap().reserved, 100);
    drop(redis);
}

#[test]
fn load_binary_refuses_bad_flags_and_remote_targets() {
    let bin = env!("CARGO_BIN_EXE_omnistock-load");
    // Its help describes the load generator, not the engine (the root package's description).
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.starts_with("Load generator for omnistock"), "{help}");
    assert!(
        !help.contains("Real-time authoritative inventory"),
        "{help}"
    );
    for (args, needle) in [
        (vec!["--workload", "nope"], "--workload"),
        (vec!["--cart-lines", "0"], "--cart-lines"),
        (vec!["--fulfil", "80", "--release", "30"], "at most 100"),
        (vec!["--depth", "0"], "--depth"),
        (vec!["--addr", "192.0.2.1:7878"], "not a loopback address"),
        (
            vec!["--cert", "/nonexistent/c.pem"],
            "--cert and --key go together",
        ),
        (
            vec![
                "--cert",
                "/nonexistent/c.pem",
                "--key",
                "/nonexistent/c.key",
            ],
            "need --ca-file",
        ),
        (
            vec![
                "--ca-file",
                "/nonexistent/ca.pem",
                "--cert",
                "/nonexistent/c.pem",
                "--key",
                "/nonexistent/c.key",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            vec![
                "--target",
                "redis",
                "--workload",
                "checkout",
                "--fulfil",
                "50",
            ],
            "reservations only",
        ),
    ] {
        let out = Command::new(bin).arg("run").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
