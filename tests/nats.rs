//! The NATS JetStream bridge end to end: a real `nats-server -js` on a free port with a
//! temporary store, the real `omnistock serve --nats-url` binary, and a reader of the
//! stream (async-nats). Events arrive in log order with their subjects and
//! `Nats-Msg-Id`s, and none is lost across kill -9 and SIGTERM restarts of omnistock and a
//! restart of nats-server.
//!
//! Without `nats-server` on PATH the tests skip, unless `OMNISTOCK_REQUIRE_NATS=1` (as
//! .ci/run sets it), where they fail.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::{free_port, wire_adjust, wire_catalog};
use futures::StreamExt;
use omnistock::client::{Client, ClientConfig};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const WAIT: Duration = Duration::from_secs(30);

/// `nats-server` if installed; `None` (skip) unless the tests are required.
fn nats_server_bin() -> Option<&'static str> {
    let found = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("nats-server");
    }
    assert!(
        std::env::var("OMNISTOCK_REQUIRE_NATS").as_deref() != Ok("1"),
        "OMNISTOCK_REQUIRE_NATS=1 but nats-server is not on PATH (.ci/run installs it)"
    );
    eprintln!("SKIPPED: nats-server is not on PATH (set OMNISTOCK_REQUIRE_NATS=1 to fail instead)");
    None
}

async fn wait_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A nats-server with JetStream on `port`, storing under `store`.
async fn start_nats(bin: &str, port: u16, store: &Path) -> tokio::process::Child {
    let child = tokio::process::Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    wait_port(port, "nats-server").await;
    child
}

struct Omnistock {
    child: tokio::process::Child,
    port: u16,
    admin: u16,
}

/// `omnistock serve` on fresh ports over `data`, bridging to NATS on `nats_port`.
async fn start_omnistock(data: &Path, config: &Path, nats_port: u16) -> Omnistock {
    let (port, admin) = (free_port(), free_port());
    let child = tokio::process::Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--nats-url", &format!("nats://127.0.0.1:{nats_port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    wait_port(port, "omnistock").await;
    Omnistock { child, port, admin }
}

impl Omnistock {
    async fn client(&self) -> Client {
        Client::connect(ClientConfig::new(format!("127.0.0.1:{}", self.port)))
            .await
            .expect("connect")
    }

    /// Stops it with `sig` and waits for the exit.
    async fn stop(mut self, sig: i32) {
        signal(&self.child, sig);
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("omnistock exits")
            .unwrap();
        if sig == libc::SIGTERM {
            assert!(status.success(), "SIGTERM exit: {status}");
        }
    }
}

fn signal(child: &tokio::process::Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id().expect("running") as i32, sig);
    }
}

/// One message of the stream.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    msg_id: String,
    event: serde_json::Value,
}

/// Every message of `stream` on the NATS server at `port`, in stream order (none while
/// the stream does not exist).
async fn read_stream(port: u16, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client);
    // Not there (yet): nothing stored.
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let n = s.info().await.expect("stream info").state.messages;
    let c = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut out = Vec::new();
    while (out.len() as u64) < n {
        let m = tokio::time::timeout(WAIT, msgs.next())
            .await
            .expect("the stream's messages arrive")
            .expect("more messages")
            .expect("a message");
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id,
            event: serde_json::from_slice(&m.payload).expect("a JSON event"),
        });
    }
    out
}

/// Waits until the stream holds an event with each id in `ids`; the stream then.
async fn wait_for_ids(port: u16, stream: &str, ids: &[String]) -> Vec<Stored> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = read_stream(port, stream).await;
        let have: HashSet<&str> = got.iter().map(|m| m.msg_id.as_str()).collect();
        let missing: Vec<&String> = ids.iter().filter(|i| !have.contains(i.as_str())).collect();
        if missing.is_empty() {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing from the stream: {missing:?}\nstream: {:?}",
            got.iter().map(|m| &m.msg_id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What every stored message must be: its id once, `Nats-Msg-Id` = the event's id, the
/// subject from channel and type, and log order.
fn check_stream(stored: &[Stored]) {
    let mut seen = HashSet::new();
    let mut last_seq = 0u64;
    for m in stored {
        let id = m.event["id"].as_str().expect("id");
        assert_eq!(m.msg_id, id, "Nats-Msg-Id is the event id");
        assert!(seen.insert(id.to_string()), "{id} stored twice");
        let seq = m.event["seq"].as_u64().expect("seq");
        assert!(seq >= last_seq, "{id} after seq {last_seq}: out of order");
        last_seq = seq;
        let ty = m.event["type"].as_str().unwrap();
        let kind = ty.strip_prefix("omnistock.").unwrap();
        let channel = m.event["data"]["channel"].as_str().unwrap_or("~");
        assert_eq!(m.subject, format!("omnistock.{channel}.{kind}"), "{id}");
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("omnistock.toml");
    std::fs::write(
        &config,
        "[nats]\nack_timeout_ms = 1000\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n\
         max_in_flight = 8\n",
    )
    .unwrap();
    config
}

/// Receipts of SKU-`i` for `i` in `range`, through `o`; the ids of their ATP events.
async fn adjust_range(o: &Omnistock, range: std::ops::Range<u32>) -> Vec<String> {
    let c = o.client().await;
    let mut ids = Vec::new();
    for i in range {
        let seq = wire_adjust(&c, &format!("SKU-{}", i % 5), 1).await;
        ids.push(format!("{seq}:atp:web"));
    }
    ids
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_in_order_across_restarts_of_omnistock_and_nats() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, store) = (dir.path().join("data"), dir.path().join("nats"));
    let config = write_config(dir.path());
    let nats_port = free_port();
    let mut nats = start_nats(bin, nats_port, &store).await;

    let o = start_omnistock(&data, &config, nats_port).await;
    wire_catalog(&o.client().await).await;
    let mut expected = adjust_range(&o, 0..10).await;
    let first = wait_for_ids(nats_port, "OMNISTOCK", &expected).await;
    check_stream(&first);
    // The catalog's changes are there too, with the no-channel subject.
    assert!(first
        .iter()
        .any(|m| m.subject == "omnistock.~.catalog.changed"));
    assert!(first
        .iter()
        .any(|m| m.subject == "omnistock.web.stock.back"));
    let metrics = scrape(o.admin).await;
    assert!(
        metrics.contains(r#"omnistock_nats_connected{stream="OMNISTOCK"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("omnistock_nats_events_published_total{stream=\"OMNISTOCK\"}"));
    // The bridge's stored position has its per-name lag series.
    assert!(
        metrics.contains("omnistock_subscription_lag_records{name=\"nats.OMNISTOCK\"}"),
        "{metrics}"
    );

    // kill -9 right after acknowledged writes: the bridge may not have published them.
    expected.extend(adjust_range(&o, 10..20).await);
    o.stop(libc::SIGKILL).await;
    let o = start_omnistock(&data, &config, nats_port).await;
    expected.extend(adjust_range(&o, 20..25).await);
    check_stream(&wait_for_ids(nats_port, "OMNISTOCK", &expected).await);

    // SIGTERM: the position reached is stored on the way out.
    expected.extend(adjust_range(&o, 25..35).await);
    o.stop(libc::SIGTERM).await;
    let o = start_omnistock(&data, &config, nats_port).await;
    expected.extend(adjust_range(&o, 35..40).await);
    check_stream(&wait_for_ids(nats_port, "OMNISTOCK", &expected).await);

    // nats-server down while writes go on, then back with the same store.
    signal_nats(&nats, libc::SIGKILL);
    let _ = nats.wait().await;
    expected.extend(adjust_range(&o, 40..50).await);
    // Down for longer than ack_timeout_ms: the publishes in flight fail and the bridge
    // retries from its acknowledged position.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats = start_nats(bin, nats_port, &store).await;
    expected.extend(adjust_range(&o, 50..55).await);
    let all = wait_for_ids(nats_port, "OMNISTOCK", &expected).await;
    check_stream(&all);
    // The bridge counted the outage.
    let metrics = scrape(o.admin).await;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("omnistock_nats_publish_failures_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{metrics}");
    o.stop(libc::SIGTERM).await;
    drop(nats);
}

fn signal_nats(child: &tokio::process::Child, sig: i32) {
    signal(child, sig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_without_the_subjects_is_not_changed_and_is_reported() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let _nats = start_nats(bin, nats_port, &dir.path().join("nats")).await;
    let client = async_nats::connect(format!("127.0.0.1:{nats_port}"))
        .await
        .unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "OMNISTOCK".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let config = write_config(dir.path());
    let o = start_omnistock(&dir.path().join("data"), &config, nats_port).await;
    wire_catalog(&o.client().await).await;
    adjust_range(&o, 0..1).await;
    // It keeps retrying (counted), and the stream keeps its subjects.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = scrape(o.admin).await;
        let failing = m
            .lines()
            .any(|l| l.starts_with("omnistock_nats_publish_failures_total{") && !l.ends_with(" 0"));
        if failing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = js.get_stream("OMNISTOCK").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.config.subjects, vec!["other.>".to_string()]);
    assert_eq!(info.state.messages, 0);
    o.stop(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_that_comes_back_without_the_stream_gets_it_created_again() {
    let Some(bin) = nats_server_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let nats_port = free_port();
    let mut nats = start_nats(bin, nats_port, &dir.path().join("nats-a")).await;
    let o = start_omnistock(&dir.path().join("data"), &config, nats_port).await;
    wire_catalog(&o.client().await).await;
    let before = adjust_range(&o, 0..3).await;
    wait_for_ids(nats_port, "OMNISTOCK", &before).await;
    signal(&nats, libc::SIGKILL);
    let _ = nats.wait().await;
    // Another store: the stream is gone.
    nats = start_nats(bin, nats_port, &dir.path().join("nats-b")).await;
    let after = adjust_range(&o, 3..6).await;
    let stream = wait_for_ids(nats_port, "OMNISTOCK", &after).await;
    check_stream(&stream);
    o.stop(libc::SIGTERM).await;
    drop(nats);
}
