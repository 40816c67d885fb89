//! Webhooks against a real receiver (axum on 127.0.0.1:0) that checks every request's
//! `Omnistock-Signature` with the documented verification and records events by id:
//! the test event when an endpoint is added, every event of the feed delivered (duplicates
//! only with the same id and the same content) through a receiver outage (500s, retried with
//! back-off) and a restart of the durable engine while the receiver was down (the position
//! survived: nothing lost, no second test event); dead-lettering after `max_attempts`
//! failures with the position kept, resumed in place (SIGHUP's `Resumer`) and by a restart; a filter and a
//! coalescing window per endpoint; the per-endpoint metrics in a scrape that passes promtool.

mod common;
use common::free_port;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{adjust, exec, reserve_cmd, small_catalog};
use omnistock::engine::{Engine, EngineConfig, PersistConfig};
use omnistock::events::envelope;
use omnistock::feed::subscription::{self, SubscriptionConfig};
use omnistock::protocol::{self, kinds, start, Frame, PushBatch, PushItem, Subscribe};
use omnistock::webhooks::{sign, EndpointConfig, Status, Webhooks, WebhooksConfig};
use parking_lot::Mutex;
use serde_json::Value;

const SECRET: &[u8] = b"test-secret-0123456789abcdef";
const SOURCE: &str = "omnistock://webhooks-test";
const WAIT: Duration = Duration::from_secs(20);

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Every event by id, with every copy received (duplicates allowed, same content).
    events: Mutex<BTreeMap<String, Vec<Value>>>,
    /// Order of first arrival.
    order: Mutex<Vec<String>>,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    /// Answer 500 to the next this many (well signed) requests.
    fail_next: AtomicU32,
    /// Answer 500 to every request while set.
    down: AtomicBool,
    failed: AtomicU64,
    /// Events per request, largest seen.
    largest_batch: AtomicU64,
}

impl Seen {
    fn ids(&self) -> HashSet<String> {
        self.events.lock().keys().cloned().collect()
    }
    fn of_type(&self, t: &str) -> Vec<Value> {
        self.events
            .lock()
            .values()
            .filter(|v| v[0]["type"] == t)
            .map(|v| v[0].clone())
            .collect()
    }
}

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = headers
        .get("omnistock-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sign::verify(SECRET, header, &body, now, 300).is_err() {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let down = seen.down.load(Ordering::SeqCst);
    let fail = seen
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if down || fail {
        seen.failed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let events: Vec<Value> = serde_json::from_slice(&body).expect("the body is a JSON array");
    seen.largest_batch
        .fetch_max(events.len() as u64, Ordering::SeqCst);
    let mut all = seen.events.lock();
    for e in events {
        let id = e["id"].as_str().expect("an id").to_string();
        let copies = all.entry(id.clone()).or_default();
        if let Some(first) = copies.first() {
            assert_eq!(first, &e, "a duplicate of {id} differs from the first copy");
        } else {
            seen.order.lock().push(id);
        }
        copies.push(e);
    }
    StatusCode::OK
}

/// A receiver on 127.0.0.1:0; its URL.
async fn receiver() -> (Arc<Seen>, String) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, format!("http://{addr}/hook"))
}

fn persist(dir: &std::path::Path) -> PersistConfig {
    let mut pc = PersistConfig::new(dir);
    pc.engine = EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    };
    pc
}

/// An endpoint that retries fast (tests must not wait minutes for back-off).
fn endpoint(name: &str, url: &str) -> EndpointConfig {
    let mut e = EndpointConfig::new(name, url, SECRET);
    e.backoff_initial = Duration::from_millis(5);
    e.backoff_max = Duration::from_millis(40);
    e.max_attempts = 1000;
    e.max_batch_events = 7;
    e.request_timeout = Duration::from_secs(5);
    e
}

fn start(engine: &Arc<Engine>, endpoints: Vec<EndpointConfig>) -> Webhooks {
    Webhooks::start(
        engine.clone(),
        WebhooksConfig {
            endpoints,
            source: SOURCE.into(),
        },
    )
    .expect("valid webhooks")
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ids a subscription with this filter yields after `after` up to the log's end now:
/// what the endpoint must deliver (an independent reader of the same feed).
async fn expected_ids(engine: &Arc<Engine>, after: u64, mut sub: Subscribe) -> Vec<String> {
    sub.start = start::AFTER;
    sub.from_seq = after;
    let until = engine.last_seq();
    let cfg = SubscriptionConfig::default();
    let plan = subscription::plan(engine.as_ref(), &cfg, &sub).expect("plan");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(subscription::run(engine.clone(), cfg, plan, 0, tx, stop));
    let mut ids = Vec::new();
    let mut position = after;
    while position < until {
        let frame = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the feed moves")
            .expect("open");
        let (f, _) = Frame::parse(&frame, usize::MAX).unwrap().unwrap();
        for item in protocol::decode_payload::<PushBatch>(&f.payload)
            .unwrap()
            .items
        {
            match item {
                PushItem::Position { seq } => position = seq,
                other => ids.extend(envelope(&other, SOURCE).map(|e| e.id)),
            }
        }
    }
    // Stopped, not aborted: an aborted subscription never leaves the hub.
    stop_tx.send_replace(true);
    drop(rx);
    task.await.unwrap();
    ids
}

fn all_kinds() -> Subscribe {
    Subscribe {
        name: String::new(),
        start: start::AFTER,
        from_seq: 0,
        channels: vec![],
        skus: vec![],
        sku_prefix: String::new(),
        kinds: kinds::ALL,
        coalesce_ms: 0,
    }
}

/// Receipts, a reservation and its release: events of every family.
async fn traffic(engine: &Engine, n: u128) {
    for i in 0..3 {
        adjust(engine, "A", "wh-a", 5 + i).await.unwrap();
        adjust(engine, "B", "ds-c", 2).await.unwrap();
    }
    exec(engine, reserve_cmd(n, "web", &[("A", 2)], 600_000))
        .await
        .unwrap();
    exec(
        engine,
        omnistock::engine::Command::Release { reservation: n },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_through_an_outage_and_a_restart_with_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(persist(dir.path())).await.unwrap());
    small_catalog(&engine).await;
    let (seen, url) = receiver().await;
    let hooks = start(&engine, vec![endpoint("all", &url)]);

    // Added: the test event first, at the head it starts from.
    wait_for("the test event", || {
        !seen.of_type("omnistock.webhook.test").is_empty()
    })
    .await;
    let test = seen.of_type("omnistock.webhook.test");
    let from = test[0]["seq"].as_u64().unwrap();
    assert_eq!(test[0]["id"], format!("{from}:webhook_test:all"));
    assert_eq!(test[0]["source"], SOURCE);
    assert_eq!(test[0]["data"]["endpoint"], "all");
    wait_for("the position stored", || {
        engine.feed_position("webhook.all") >= Some(from)
    })
    .await;

    // Live traffic, then an outage of five 500s in the middle of more traffic.
    traffic(&engine, 1).await;
    seen.fail_next.store(5, Ordering::SeqCst);
    traffic(&engine, 2).await;
    let expected = expected_ids(&engine, from, all_kinds()).await;
    assert!(expected.len() >= 15, "{expected:?}");
    wait_for("every event through the outage", || {
        let ids = seen.ids();
        expected.iter().all(|e| ids.contains(e))
    })
    .await;
    assert_eq!(
        seen.failed.load(Ordering::SeqCst),
        5,
        "five 500s, each retried"
    );
    assert!(
        seen.largest_batch.load(Ordering::SeqCst) <= 7,
        "max_batch_events holds"
    );
    // In log order: ids begin with their seq, and first arrivals never go back in seq.
    let seqs: Vec<u64> = seen
        .order
        .lock()
        .iter()
        .map(|id| id.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    let last = engine.last_seq();
    wait_for("the position after the last event", || {
        engine.feed_position("webhook.all") == Some(last)
    })
    .await;

    // The receiver goes down; changes happen; omnistock restarts while it is down.
    seen.down.store(true, Ordering::SeqCst);
    let before_restart = engine.last_seq();
    traffic(&engine, 3).await;
    wait_for("retries during the outage", || {
        seen.failed.load(Ordering::SeqCst) >= 8
    })
    .await;
    assert_eq!(hooks.status("all"), Some(Status::Retrying));
    hooks.shutdown().await;
    // Stopped deliveries leave the feed as any subscriber does (no cursor left behind).
    wait_for("the subscription gone", || engine.feed().subscribers() == 0).await;
    let missed = expected_ids(&engine, before_restart, all_kinds()).await;
    assert!(!missed.is_empty());
    let e2 = engine.clone();
    tokio::task::spawn_blocking(move || e2.shutdown())
        .await
        .unwrap();
    drop(engine);

    let engine = Arc::new(Engine::open(persist(dir.path())).await.unwrap());
    assert_eq!(
        engine.feed_position("webhook.all"),
        Some(before_restart),
        "the delivered position survived the restart"
    );
    seen.down.store(false, Ordering::SeqCst);
    let hooks = start(&engine, vec![endpoint("all", &url)]);
    wait_for("the events missed while down", || {
        let ids = seen.ids();
        missed.iter().all(|e| ids.contains(e))
    })
    .await;
    // A restart with a stored position sends no second test event.
    assert_eq!(seen.of_type("omnistock.webhook.test").len(), 1);
    // Nothing the receiver got is outside the feed, and no signature was refused.
    let all = expected_ids(&engine, from, all_kinds()).await;
    let got = seen.ids();
    let extra: Vec<_> = got
        .iter()
        .filter(|id| !all.contains(id) && !id.contains("webhook_test"))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
    assert!(all.iter().all(|id| got.contains(id)));
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    hooks.shutdown().await;
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_is_dead_lettered_after_max_attempts_and_resumes_in_place_or_by_restart() {
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&engine).await;
    let (seen, url) = receiver().await;
    let mut ep = endpoint("flaky", &url);
    ep.max_attempts = 3;
    let hooks = start(&engine, vec![ep.clone()]);
    wait_for("the test event", || {
        !seen.of_type("omnistock.webhook.test").is_empty()
    })
    .await;
    let from = seen.of_type("omnistock.webhook.test")[0]["seq"]
        .as_u64()
        .unwrap();
    wait_for("the position stored", || {
        engine.feed_position("webhook.flaky") >= Some(from)
    })
    .await;

    seen.down.store(true, Ordering::SeqCst);
    traffic(&engine, 1).await;
    wait_for("dead-lettered", || {
        hooks.status("flaky") == Some(Status::DeadLettered)
    })
    .await;
    assert_eq!(
        seen.failed.load(Ordering::SeqCst),
        3,
        "exactly max_attempts attempts"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.failed.load(Ordering::SeqCst),
        3,
        "paused: no more attempts"
    );
    let kept = engine.feed_position("webhook.flaky");
    assert!(
        kept >= Some(from) && kept < Some(engine.last_seq()),
        "position kept: {kept:?}"
    );

    // Resumed in place (what SIGHUP does in serve): the receiver is back.
    let resumer = hooks.resumer();
    assert!(!resumer.resume("no-such-endpoint"));
    seen.down.store(false, Ordering::SeqCst);
    assert_eq!(resumer.resume_dead_lettered(), vec!["flaky".to_string()]);
    let expected = expected_ids(&engine, from, all_kinds()).await;
    wait_for("the events held back", || {
        let ids = seen.ids();
        expected.iter().all(|e| ids.contains(e))
    })
    .await;
    wait_for("running again", || {
        hooks.status("flaky") == Some(Status::Running)
    })
    .await;
    assert!(
        !resumer.resume("flaky"),
        "only a dead-lettered endpoint resumes"
    );
    let last = engine.last_seq();
    wait_for("the position after them", || {
        engine.feed_position("webhook.flaky") >= Some(last)
    })
    .await;

    // Dead-lettered again, then resumed by restarting the deliveries (a restart of serve).
    seen.down.store(true, Ordering::SeqCst);
    let failed = seen.failed.load(Ordering::SeqCst);
    traffic(&engine, 2).await;
    wait_for("dead-lettered again", || {
        hooks.status("flaky") == Some(Status::DeadLettered)
    })
    .await;
    assert_eq!(seen.failed.load(Ordering::SeqCst), failed + 3);
    seen.down.store(false, Ordering::SeqCst);
    hooks.shutdown().await;
    let hooks = start(&engine, vec![ep]);
    let expected = expected_ids(&engine, last, all_kinds()).await;
    assert!(!expected.is_empty());
    wait_for("the events held back the second time", || {
        let ids = seen.ids();
        expected.iter().all(|e| ids.contains(e))
    })
    .await;
    assert_eq!(hooks.status("flaky"), Some(Status::Running));
    assert_eq!(seen.of_type("omnistock.webhook.test").len(), 1);
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_receiver_and_dead_letters() {
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&engine).await;
    let (seen, url) = receiver().await;
    let mut ep = EndpointConfig::new("wrong", &url, b"not-the-receivers-secret");
    ep.backoff_initial = Duration::from_millis(1);
    ep.backoff_max = Duration::from_millis(2);
    ep.max_attempts = 2;
    let hooks = start(&engine, vec![ep]);
    wait_for("dead-lettered", || {
        hooks.status("wrong") == Some(Status::DeadLettered)
    })
    .await;
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 2);
    assert!(seen.ids().is_empty());
    assert_eq!(
        engine.feed_position("webhook.wrong"),
        None,
        "no test event, no position"
    );
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_url_speaks_tls_so_a_plain_http_receiver_never_sees_a_request() {
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    let (seen, url) = receiver().await;
    let mut ep = endpoint("tls", &url.replace("http://", "https://"));
    ep.max_attempts = 2;
    let hooks = start(&engine, vec![ep]);
    wait_for("dead-lettered", || {
        hooks.status("tls") == Some(Status::DeadLettered)
    })
    .await;
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        0,
        "no plain request was sent"
    );
    assert_eq!(engine.feed_position("webhook.tls"), None);
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_coalescing_are_per_endpoint_and_metrics_are_per_endpoint() {
    let handle = omnistock::metrics::install().expect("recorder");
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&engine).await;
    let (web_seen, web_url) = receiver().await;
    let (co_seen, co_url) = receiver().await;
    let mut web = endpoint("web-atp", &web_url);
    web.channels = vec!["web".into()];
    web.kinds = kinds::ATP;
    let mut co = endpoint("coalesced-a", &co_url);
    co.skus = vec!["A".into()];
    co.coalesce_ms = 200;
    let hooks = start(&engine, vec![web, co]);
    wait_for("both test events", || {
        web_seen.of_type("omnistock.webhook.test").len() == 1
            && co_seen.of_type("omnistock.webhook.test").len() == 1
    })
    .await;
    let from = engine.feed().head();
    wait_for("positions", || {
        engine.feed_position("webhook.web-atp").is_some()
            && engine.feed_position("webhook.coalesced-a").is_some()
    })
    .await;
    let from_web = engine.feed_position("webhook.web-atp").unwrap();
    for _ in 0..20 {
        adjust(&engine, "A", "wh-a", 1).await.unwrap();
    }
    adjust(&engine, "B", "wh-a", 4).await.unwrap();
    exec(&engine, reserve_cmd(1, "web", &[("A", 1)], 600_000))
        .await
        .unwrap();
    let mut web_sub = all_kinds();
    web_sub.channels = vec!["web".into()];
    web_sub.kinds = kinds::ATP;
    let expected = expected_ids(&engine, from_web, web_sub).await;
    wait_for("the web endpoint's events", || {
        let ids = web_seen.ids();
        expected.iter().all(|e| ids.contains(e))
    })
    .await;
    for e in web_seen.events.lock().values() {
        let e = &e[0];
        if e["type"] == "omnistock.webhook.test" {
            continue;
        }
        assert_eq!(e["data"]["channel"], "web", "{e}");
        assert!(
            e["type"].as_str().unwrap().starts_with("omnistock.atp.")
                || e["type"].as_str().unwrap().starts_with("omnistock.stock."),
            "{e}"
        );
    }
    assert!(web_seen.ids().iter().any(|id| id.contains(":atp:web")));
    // Coalesced: only SKU A, the final ATP per channel, fewer events than changes.
    let last = engine.last_seq();
    wait_for("the coalesced endpoint's final values", || {
        engine.feed_position("webhook.coalesced-a") >= Some(last)
    })
    .await;
    let co_events: Vec<Value> = co_seen
        .events
        .lock()
        .values()
        .map(|v| v[0].clone())
        .filter(|e| e["type"] != "omnistock.webhook.test")
        .collect();
    assert!(!co_events.is_empty());
    assert!(
        co_events.iter().all(|e| e["subject"] == "A"),
        "{co_events:?}"
    );
    let atp_web: Vec<&Value> = co_events
        .iter()
        .filter(|e| e["type"] == "omnistock.atp.changed" && e["data"]["channel"] == "web")
        .collect();
    assert!(atp_web.len() < 20, "coalesced: {}", atp_web.len());
    assert!(co_events.iter().any(|e| e["data"]["coalesced"] == true));
    let _ = from;

    // Metrics by endpoint, in a scrape promtool accepts.
    let text = handle.render();
    for name in omnistock::metrics::PER_WEBHOOK_ENDPOINT {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
    }
    let delivered = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"omnistock_webhook_events_delivered_total{endpoint="web-atp"} "#)
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("delivered series");
    assert!(delivered >= expected.len() as f64 + 1.0, "{delivered}");
    assert!(text.contains(r#"omnistock_webhook_dead_lettered{endpoint="coalesced-a"} 0"#));
    assert!(text.contains(r#"omnistock_webhook_lag_records{endpoint="web-atp"}"#));
    promtool_check(&text);
    hooks.shutdown().await;
}

fn promtool_check(text: &str) {
    let found = Process::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("OMNISTOCK_REQUIRE_PROMTOOL").ok().as_deref() != Some("1"),
            "OMNISTOCK_REQUIRE_PROMTOOL=1 but promtool is not on PATH"
        );
        eprintln!("NOTICE: promtool not on PATH; skipping promtool check metrics");
        return;
    }
    let mut child = Process::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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

/// The Python receiver of docs/webhooks.md, run as written: it accepts what omnistock
/// signs and refuses a changed body, another secret and an old timestamp.
#[test]
fn the_documented_python_verification_accepts_our_signature_and_refuses_tampering() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks.md"))
        .expect("docs/webhooks.md");
    let snippet = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a python block in docs/webhooks.md");
    if Process::new("python3").arg("--version").output().is_err() {
        eprintln!("NOTICE: python3 not on PATH; skipping the documented receiver");
        return;
    }
    let script = format!(
        "{snippet}\nimport sys\nsecret, header = sys.argv[1].encode(), sys.argv[2]\n\
         body = sys.stdin.buffer.read()\nprint(verify(secret, header, body))\n"
    );
    let run = |secret: &str, header: &str, body: &[u8]| -> String {
        let mut child = Process::new("python3")
            .args(["-c", &script, secret, header])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let secret = std::str::from_utf8(SECRET).unwrap();
    let body = br#"[{"id":"42:atp:web","type":"omnistock.atp.changed"}]"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = sign::signature(SECRET, now, body);
    assert_eq!(run(secret, &header, body), "True");
    assert_eq!(run(secret, &header, br#"[{"id":"42:atp:web"}]"#), "False");
    assert_eq!(run("another-secret-0123456789", &header, body), "False");
    let old = sign::signature(SECRET, now - 3600, body);
    assert_eq!(run(secret, &old, body), "False");
    assert_eq!(run(secret, "garbage", body), "False");
}

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

async fn ctl(port: u16, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::process::Command::new(BIN)
        .args(["ctl", "--addr", &format!("127.0.0.1:{port}")])
        .args(&args)
        .output()
        .await
        .expect("run ctl");
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn signal(child: &tokio::process::Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id().expect("running") as i32, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_its_configured_webhooks_and_sighup_resumes_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, url) = receiver().await;
    let config = dir.path().join("omnistock.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"cli\"\nurl = \"{url}\"\nsecret_env = \"OMNISTOCK_TEST_HOOK_SECRET\"\n\
             max_attempts = 2\nbackoff_initial_ms = 5\nbackoff_max_ms = 20\nkinds = [\"atp\", \"thresholds\"]\n"
        ),
    )
    .unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env(
            "OMNISTOCK_TEST_HOOK_SECRET",
            std::str::from_utf8(SECRET).unwrap(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    wait_for("the test event from serve", || {
        seen.of_type("omnistock.webhook.test").len() == 1
    })
    .await;
    assert_eq!(
        seen.of_type("omnistock.webhook.test")[0]["data"]["endpoint"],
        "cli"
    );
    assert_eq!(
        seen.of_type("omnistock.webhook.test")[0]["source"],
        format!("omnistock://127.0.0.1:{port}")
    );
    ctl(port, &["add-location", "wh-a", "--region", "FR"]).await;
    ctl(port, &["add-channel", "web", "--locations", "wh-a"]).await;
    ctl(
        port,
        &["adjust", "SKU-1", "wh-a", "5", "--reason", "receipt"],
    )
    .await;
    let subject = |s: &Seen, sku: &str| {
        s.events
            .lock()
            .values()
            .any(|v| v[0]["subject"] == sku && v[0]["type"] == "omnistock.stock.back")
    };
    wait_for("SKU-1's event", || subject(&seen, "SKU-1")).await;

    // Down: two failures dead-letter it; SIGHUP after the receiver is back resumes it.
    seen.down.store(true, Ordering::SeqCst);
    ctl(
        port,
        &["adjust", "SKU-2", "wh-a", "3", "--reason", "receipt"],
    )
    .await;
    wait_for("two failures", || seen.failed.load(Ordering::SeqCst) == 2).await;
    let mut dead = String::new();
    for _ in 0..200 {
        dead = scrape(admin).await;
        if dead.contains(r#"omnistock_webhook_dead_lettered{endpoint="cli"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        dead.contains(r#"omnistock_webhook_dead_lettered{endpoint="cli"} 1"#),
        "{dead}"
    );
    assert_eq!(
        seen.failed.load(Ordering::SeqCst),
        2,
        "paused after max_attempts"
    );
    assert!(!subject(&seen, "SKU-2"));
    seen.down.store(false, Ordering::SeqCst);
    signal(&child, libc::SIGHUP);
    wait_for("SKU-2's event after SIGHUP", || subject(&seen, "SKU-2")).await;
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);

    // A client may resume from an endpoint's position but not move it (it would skip
    // events the endpoint has not delivered).
    let client = omnistock::client::ClientConfig::new(format!("127.0.0.1:{port}"));
    let mut resume = all_kinds();
    resume.name = "webhook.cli".into();
    resume.start = start::RESUME;
    let sub = omnistock::client::Subscriber::subscribe(client, resume)
        .await
        .expect("RESUME from a webhook position");
    match sub.ack().await {
        Err(omnistock::client::ClientError::Status { status, .. }) => assert_eq!(status, 12),
        other => panic!("ACK of a webhook position: {other:?}"),
    }
    sub.close().await;

    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");
}

#[test]
fn an_invalid_webhook_stops_serve_naming_the_entry_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (entry, field) in [
        (
            "url = \"http://hooks.example.com/\"\nsecret = \"0123456789abcdef\"",
            "url",
        ),
        (
            "url = \"https://hooks.example.com/\"\nsecret = \"short\"",
            "secret",
        ),
        ("url = \"https://hooks.example.com/\"", "secret: missing"),
    ] {
        let config = dir.path().join("omnistock.toml");
        std::fs::write(&config, format!("[[webhooks]]\nname = \"shop\"\n{entry}\n")).unwrap();
        let out = Process::new(BIN)
            .args(["serve", "--data-dir", data.to_str().unwrap(), "--config"])
            .arg(&config)
            .output()
            .expect("run serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{entry}: started");
        assert!(
            err.contains("webhooks[0]") && err.contains(field),
            "{entry}: {err}"
        );
    }
    assert!(!data.exists(), "nothing was opened");
}

/// A private CA and a certificate for 127.0.0.1 / localhost signed by it, made with the
/// openssl command (PEM files in `dir`): (ca.pem, leaf.pem, leaf.key).
fn private_ca(
    dir: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    if Process::new("openssl").arg("version").output().is_err() {
        eprintln!("NOTICE: openssl not on PATH; skipping the private-CA https test");
        return None;
    }
    let p = |n: &str| dir.join(n);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Process::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=omnistock test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    Some((p("ca.pem"), p("leaf.pem"), p("leaf.key")))
}

/// The receiver of [`receiver`] behind TLS with `cert`/`key`; its https URL.
async fn tls_receiver(cert: &std::path::Path, key: &std::path::Path) -> (Arc<Seen>, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tower::ServiceExt;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (seen, format!("https://localhost:{}/hook", addr.port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_receiver_of_a_private_ca_needs_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = private_ca(dir.path()) else {
        return;
    };
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    let (seen, url) = tls_receiver(&cert, &key).await;
    // Without the CA: the certificate is not trusted, nothing reaches the receiver.
    let mut untrusted = endpoint("no-ca", &url);
    untrusted.max_attempts = 2;
    // With it: delivered over TLS.
    let mut trusted = endpoint("with-ca", &url);
    trusted.ca_certs = omnistock::webhooks::read_ca_file(&ca).expect("a CA file");
    let hooks = start(&engine, vec![untrusted, trusted]);
    wait_for("the test event over https", || {
        seen.of_type("omnistock.webhook.test").len() == 1
    })
    .await;
    assert_eq!(
        seen.of_type("omnistock.webhook.test")[0]["data"]["endpoint"],
        "with-ca"
    );
    wait_for("the untrusted one dead-lettered", || {
        hooks.status("no-ca") == Some(Status::DeadLettered)
    })
    .await;
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1,
        "only the trusting endpoint got through"
    );
    hooks.shutdown().await;
    // A ca_file that is not PEM certificates is refused by name.
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let e = omnistock::webhooks::read_ca_file(&dir.path().join("bad.pem")).unwrap_err();
    assert!(
        e.contains("bad.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    assert!(omnistock::webhooks::read_ca_file(&dir.path().join("missing.pem")).is_err());
}
