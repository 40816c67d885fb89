//! The admin endpoint as Prometheus and an orchestrator see it: the real server and admin
//! endpoint on 127.0.0.1:0 with a durable engine, wired as `omnistock serve` wires them,
//! scraped over HTTP. Every metric of `omnistock::metrics` is listed, series move with
//! traffic, `/readyz` is 503 while recovery runs (held deterministically at recovery's own
//! log write) and after a log failure, 200 otherwise; the scrape passes
//! `promtool check metrics` and docs/alerts.yml passes `promtool check rules`.
//!
//! promtool comes from Debian's `prometheus` package (`.ci/run` installs it and sets
//! OMNISTOCK_REQUIRE_PROMTOOL=1, so CI fails without it; elsewhere the promtool checks are
//! skipped with a notice).
//!
//! The recorder is process-global, so the tests in this file take one lock and each reads
//! counters as differences.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig};
use omnistock::engine::{Engine, EngineConfig, PersistConfig};
use omnistock::http::{HttpConfig, HttpServer, Sources};
use omnistock::metrics;
use omnistock::protocol::{kinds, start, Fulfill, Release, Reserve, Role, Subscribe, WireLine};
use omnistock::server::{Server, ServerConfig, ShutdownHandle};
use omnistock::wal::FaultInjector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Admin {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    async fn start(sources: Arc<Sources>) -> Admin {
        let handle = metrics::install().expect("recorder");
        let admin = HttpServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            sources,
            handle,
            HttpConfig::default(),
        )
        .await
        .expect("bind admin");
        let addr = admin.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(admin.run(async move {
            let _ = rx.await;
        }));
        Admin {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

/// One HTTP request on its own connection: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8(out).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_string())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name{labels}` exactly as rendered), 0 if absent.
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var("OMNISTOCK_REQUIRE_PROMTOOL").ok().as_deref() != Some("1"),
        "OMNISTOCK_REQUIRE_PROMTOOL=1 but promtool is not on PATH (apt-get install prometheus)"
    );
    eprintln!("NOTICE: promtool not on PATH; skipping the promtool checks (CI requires them)");
    None
}

fn promtool_check_metrics(text: &str) {
    let Some(bin) = promtool() else { return };
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Running {
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

async fn start_server(engine: Arc<Engine>, sources: &Sources) -> Running {
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    cfg.tokens.insert("admin-token".into(), Role::Admin);
    let server = Server::bind(cfg, engine.clone()).await.unwrap();
    sources.set_server(server.stats());
    Running {
        addr: server.local_addr(),
        stop: server.shutdown_handle(),
        task: tokio::spawn(server.run()),
        engine,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.shutdown();
        self.task.await.unwrap();
        let e = self.engine;
        tokio::task::spawn_blocking(move || e.shutdown())
            .await
            .unwrap();
    }
}

fn persist(dir: &std::path::Path) -> PersistConfig {
    let mut pc = PersistConfig::new(dir);
    pc.engine = EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    };
    pc
}

fn reserve(res: u128, qty: u32) -> Reserve {
    Reserve {
        request_id: common::rid(),
        reservation: res,
        channel: "web".into(),
        lines: vec![WireLine {
            sku: "A".into(),
            qty,
            location: None,
        }],
        allow_split: true,
        ttl_ms: 600_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_lists_every_metric_moves_with_traffic_and_passes_promtool() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources::new();
    let admin = Admin::start(sources.clone()).await;
    let engine = Arc::new(Engine::open(persist(dir.path())).await.unwrap());
    sources.set_engine(engine.clone());
    common::small_catalog(&engine).await;
    common::adjust(&engine, "A", "wh-a", 10).await.unwrap();
    let srv = start_server(engine.clone(), &sources).await;

    let before = scrape(admin.addr).await;
    // Per-webhook-endpoint series exist once an endpoint is configured: tests/webhooks.rs.
    // The NATS bridge's series exist once `[nats]` is configured: tests/nats.rs.
    for name in metrics::names().filter(|n| {
        !metrics::PER_WEBHOOK_ENDPOINT.contains(n) && !metrics::PER_NATS_STREAM.contains(n)
    }) {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} missing from the scrape:\n{before}"
        );
    }
    let c = Client::connect(ClientConfig::new(srv.addr.to_string()).token("admin-token"))
        .await
        .unwrap();
    let mut sub = omnistock::client::Subscriber::subscribe(
        ClientConfig::new(srv.addr.to_string()).token("admin-token"),
        Subscribe {
            name: String::new(),
            start: start::LIVE,
            from_seq: 0,
            channels: vec![],
            skus: vec![],
            sku_prefix: String::new(),
            kinds: kinds::ALL,
            coalesce_ms: 0,
        },
    )
    .await
    .unwrap();
    for res in 1..=3 {
        c.reserve(reserve(res, 1)).await.unwrap();
    }
    c.reserve(reserve(9, 1000)).await.unwrap_err(); // insufficient stock
    c.fulfill(Fulfill {
        request_id: common::rid(),
        reservation: 1,
        lines: None,
    })
    .await
    .unwrap();
    c.release(Release {
        request_id: common::rid(),
        reservation: 2,
    })
    .await
    .unwrap();
    let bad = Client::connect(ClientConfig::new(srv.addr.to_string()).token("wrong")).await;
    assert!(bad.is_err(), "a wrong token is refused");
    // The subscriber sees the last change, so its events are counted by now.
    let last = engine.last_seq();
    while sub.position() < last {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
    }
    // A stored name has its lag: the head (which the subscriber reached) minus its position.
    engine.ack_position("lag-probe", 1).await.unwrap();

    let after = scrape(admin.addr).await;
    assert_eq!(
        value(
            &after,
            r#"omnistock_subscription_lag_records{name="lag-probe"}"#
        ),
        (last - 1) as f64
    );
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta(r#"omnistock_requests_total{op="reserve",status="ok"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"omnistock_requests_total{op="reserve",status="insufficient_stock"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"omnistock_request_duration_seconds_count{op="reserve"}"#),
        4.0
    );
    assert_eq!(delta("omnistock_reservations_placed_total"), 3.0);
    assert_eq!(
        delta(r#"omnistock_reservations_ended_total{outcome="fulfilled"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"omnistock_reservations_ended_total{outcome="released"}"#),
        1.0
    );
    assert_eq!(value(&after, "omnistock_reservations"), 1.0);
    assert_eq!(value(&after, r#"omnistock_skus{state="active"}"#), 1.0);
    assert!(delta("omnistock_wal_records_total") >= 5.0, "{after}");
    assert!(delta("omnistock_wal_written_bytes_total") > 0.0);
    assert!(delta("omnistock_wal_flush_duration_seconds_count") >= 1.0);
    assert!(delta("omnistock_wal_batch_records_count") >= 1.0);
    assert_eq!(delta("omnistock_connections_accepted_total"), 3.0);
    assert_eq!(delta("omnistock_auth_failures_total"), 1.0);
    assert_eq!(value(&after, "omnistock_subscribers"), 1.0);
    // 3 placed + 1 fulfilled + 1 released, each one reservation item and a web ATP change.
    assert!(
        delta("omnistock_subscription_events_sent_total") >= 10.0,
        "{after}"
    );
    sub.close().await;
    // The refused connection closes on its own schedule: poll until only the client's is open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(admin.addr).await, "omnistock_connections") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "open connections never settled at 1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(value(&after, "omnistock_ready"), 1.0);
    assert_eq!(value(&after, "omnistock_wal_failed"), 0.0);
    assert!(value(&after, "omnistock_process_resident_memory_bytes") > 1e6);
    // The standard process series (metrics-process), each in the scrape and in docs/metrics.md.
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    for name in metrics::PROCESS_STANDARD {
        assert!(
            after.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} is not in the scrape"
        );
        assert!(
            md.contains(&format!("`{name}`")),
            "docs/metrics.md lacks {name}"
        );
    }
    assert!(value(&after, "process_open_fds") >= 3.0);
    assert!(value(&after, "process_max_fds") >= value(&after, "process_open_fds"));
    assert!(value(&after, "process_resident_memory_bytes") > 1e6);
    assert!(value(&after, "process_start_time_seconds") > 1.6e9);
    assert!(value(&after, "process_threads") >= 2.0);
    // Latency buckets from 10 us to 1 s, not a summary.
    assert!(
        after.contains(r#"omnistock_request_duration_seconds_bucket{op="reserve",le="0.00001"}"#)
    );
    assert!(after.contains(r#"omnistock_request_duration_seconds_bucket{op="reserve",le="1"}"#));
    promtool_check_metrics(&after);

    // Stock counted away below what is held: the SKU is oversold until restocked.
    common::adjust(&engine, "A", "wh-a", -9).await.unwrap(); // 9 on hand, 1 held
    assert_eq!(
        value(&scrape(admin.addr).await, "omnistock_skus_oversold"),
        1.0
    );
    common::adjust(&engine, "A", "wh-a", 10).await.unwrap();
    assert_eq!(
        value(&scrape(admin.addr).await, "omnistock_skus_oversold"),
        0.0
    );

    // A checkpoint is timed and empties the log since the last one.
    assert!(value(&after, "omnistock_wal_log_records") >= 5.0);
    engine.checkpoint().await.unwrap();
    let m = scrape(admin.addr).await;
    assert_eq!(
        value(&m, "omnistock_checkpoint_duration_seconds_count")
            - value(&after, "omnistock_checkpoint_duration_seconds_count"),
        1.0
    );
    assert!(value(&m, "omnistock_checkpoint_bytes") > 0.0);
    assert!(value(&m, "omnistock_wal_log_records") < value(&after, "omnistock_wal_log_records"));

    assert_eq!(http(admin.addr, "GET", "/healthz").await.0, 200);
    assert_eq!(http(admin.addr, "HEAD", "/metrics").await.0, 200);
    assert_eq!(http(admin.addr, "GET", "/nope").await.0, 404);
    assert_eq!(http(admin.addr, "POST", "/metrics").await.0, 405);
    assert_eq!(http(admin.addr, "GARBAGE", "").await.0, 400);
    // The HTTP endpoint counts its own answers by route template and status, and its streams.
    let mut stream = TcpStream::connect(admin.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(http(admin.addr, "GET", "/v1/skus/nope").await.0, 404);
    let m = scrape(admin.addr).await;
    for (series, at_least) in [
        (
            r#"omnistock_http_requests_total{route="/metrics",status="200"}"#,
            2.0,
        ),
        (
            r#"omnistock_http_requests_total{route="/metrics",status="405"}"#,
            1.0,
        ),
        (
            r#"omnistock_http_requests_total{route="/healthz",status="200"}"#,
            1.0,
        ),
        (
            r#"omnistock_http_requests_total{route="/v1/skus/{sku}",status="404"}"#,
            1.0,
        ),
        (
            r#"omnistock_http_requests_total{route="/v1/events",status="200"}"#,
            1.0,
        ),
        (
            r#"omnistock_http_requests_total{route="other",status="404"}"#,
            1.0,
        ),
    ] {
        assert!(value(&m, series) >= at_least, "{series} in\n{m}");
    }
    assert_eq!(value(&m, "omnistock_http_event_streams"), 1.0);
    drop(stream);
    c.disconnect().await;
    srv.stop().await;
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_during_recovery_and_after_a_log_failure_200_in_between() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // A first run leaves a hold that expires while the process is down, so the next
    // recovery must write (release it) before it is done.
    let mut first = persist(dir.path());
    first.engine.expiry_driver = false;
    let e = Engine::open(first).await.unwrap();
    common::small_catalog(&e).await;
    common::adjust(&e, "A", "wh-a", 5).await.unwrap();
    common::exec(&e, common::reserve_cmd(77, "web", &[("A", 1)], 1))
        .await
        .unwrap();
    let expires_at = e.reservation(77).expect("placed").expires_at_ms;
    tokio::task::spawn_blocking(move || e.shutdown())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while omnistock::engine::Clock::now_ms(&omnistock::engine::SystemClock) <= expires_at {
        assert!(Instant::now() < deadline, "clock did not pass the expiry");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Second run: the log writer is stalled, so recovery's release cannot become durable.
    let sources = Sources::new();
    let admin = Admin::start(sources.clone()).await;
    let fault = Arc::new(FaultInjector::new());
    fault.stall_writes();
    let mut second = persist(dir.path());
    second.wal_fault = Some(fault.clone());
    let opening = tokio::spawn(Engine::open(second));
    let f = fault.clone();
    tokio::task::spawn_blocking(move || f.wait_until_writer_stalled())
        .await
        .unwrap();
    let (status, body) = http(admin.addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: recovering\n"));
    assert_eq!(http(admin.addr, "GET", "/healthz").await.0, 200);
    assert_eq!(value(&scrape(admin.addr).await, "omnistock_ready"), 0.0);
    assert!(!opening.is_finished(), "recovery is held at its write");

    fault.resume_writes();
    let engine = Arc::new(opening.await.unwrap().unwrap());
    sources.set_engine(engine.clone());
    assert_eq!(http(admin.addr, "GET", "/readyz").await.0, 200);
    let m = scrape(admin.addr).await;
    assert_eq!(value(&m, "omnistock_ready"), 1.0);
    assert_eq!(
        value(
            &m,
            r#"omnistock_reservations_ended_total{outcome="expired"}"#
        ),
        1.0,
        "the recovery released the hold that expired while down"
    );
    assert!(value(&m, "omnistock_recovery_records") >= 3.0);

    // The log fails: not ready, and the gauge says why.
    fault.fail_now();
    common::adjust(&engine, "A", "wh-a", 1).await.unwrap_err();
    let (status, body) = http(admin.addr, "GET", "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: log failed"), "{body}");
    assert_eq!(
        value(&scrape(admin.addr).await, "omnistock_wal_failed"),
        1.0
    );

    sources.set_stopping();
    let (status, body) = http(admin.addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap();
    admin.stop().await;
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(bin) = promtool() else { return };
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.yml");
    let out = Command::new(bin)
        .args(["check", "rules", rules])
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dashboard's queries, with Grafana's variables substituted, as recording rules, so
/// promtool parses every PromQL expression of the dashboard.
#[test]
fn dashboard_queries_parse() {
    let Some(bin) = promtool() else { return };
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dash).expect("valid JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            n += 1;
            rules.push_str(&format!(
                "      - record: dashboard:q{n}\n        expr: {}\n",
                serde_json::Value::String(expr)
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new(bin)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_and_dashboard_use_only_exported_metrics() {
    let names: Vec<&str> = metrics::names().collect();
    for file in [
        "docs/alerts.yml",
        "docs/grafana-dashboard.json",
        "docs/metrics.md",
    ] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect(file);
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("process_") {
                assert!(
                    metrics::PROCESS_STANDARD.contains(&word),
                    "{file} names {word}, which is not a process series we export"
                );
            }
            let Some(rest) = word.strip_prefix("omnistock_") else {
                continue;
            };
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .filter(|b| names.contains(b))
                .unwrap_or(word);
            assert!(
                names.contains(&base) || rest.is_empty(),
                "{file} names {word}, which src/metrics.rs does not export"
            );
        }
    }
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    for name in &names {
        assert!(
            md.contains(&format!("`{name}`")),
            "docs/metrics.md lacks {name}"
        );
    }
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dash).expect("dashboard is valid JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 10));
}
