//! docs/adapters.md, run as written: its curl commands against the real `omnistock serve`
//! (SSE, and the resume with `Last-Event-ID`), its nats-py consumer against a real
//! `nats-server -js` fed by the bridge, and its Python webhook receiver as a real process
//! receiving real, signed webhooks (and refusing a forged one).
//!
//! Without python3, curl, nats-server or nats-py the parts that need them skip, unless
//! `OMNISTOCK_REQUIRE_NATS=1` (.ci/run), where they fail.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{free_port, wire_adjust, wire_catalog};
use omnistock::client::{Client, ClientConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const WAIT: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "adapters-admin-token";
const ADAPTER_TOKEN: &str = "adapters-adapter-token";

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/adapters.md"))
        .expect("docs/adapters.md")
}

/// The code blocks of docs/adapters.md in `lang`, in order.
fn blocks(lang: &str) -> Vec<String> {
    let open = format!("```{lang}\n");
    doc()
        .split(&open)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or("").to_string())
        .collect()
}

/// Whether `cmd --version` runs; if not, fails under `OMNISTOCK_REQUIRE_NATS=1`.
fn have(cmd: &str, args: &[&str]) -> bool {
    let ok = std::process::Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("OMNISTOCK_REQUIRE_NATS").as_deref() != Ok("1"),
            "OMNISTOCK_REQUIRE_NATS=1 but `{cmd} {args:?}` fails (.ci/run installs it)"
        );
        eprintln!("SKIPPED: `{cmd} {args:?}` fails");
    }
    ok
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

struct Serve {
    _child: tokio::process::Child,
    port: u16,
    admin: u16,
}

async fn serve(dir: &Path, config: &str, env: &[(&str, &str)]) -> Serve {
    let (port, admin) = (free_port(), free_port());
    let path = dir.join("omnistock.toml");
    let tokens = format!(
        "[[tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n\
         [[tokens]]\ntoken = \"{ADAPTER_TOKEN}\"\nrole = \"adapter\"\n"
    );
    std::fs::write(&path, format!("{tokens}{config}")).unwrap();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start serve");
    wait_port(port, "omnistock").await;
    wait_port(admin, "omnistock's HTTP endpoint").await;
    Serve {
        _child: child,
        port,
        admin,
    }
}

impl Serve {
    async fn client(&self) -> Client {
        Client::connect(ClientConfig::new(format!("127.0.0.1:{}", self.port)).token(ADMIN_TOKEN))
            .await
            .expect("connect")
    }
}

/// A child whose stdout lines are read as they come.
struct Lines {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(mut cmd: tokio::process::Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start");
        let out = child.stdout.take().unwrap();
        Lines {
            _child: child,
            lines: BufReader::new(out).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `ok`; that line.
    async fn until(&mut self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {:?}", self.seen))
                .expect("read")
                .unwrap_or_else(|| panic!("ended before {what}; got {:?}", self.seen));
            self.seen.push(line.clone());
            if ok(&line) {
                return line;
            }
        }
    }
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

fn sh(script: &str, env: &[(&str, String)]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("bash");
    c.args(["-c", script]);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_examples_follow_and_resume_the_feed() {
    if !have("curl", &["--version"]) {
        return;
    }
    let sh_blocks = blocks("sh");
    assert_eq!(sh_blocks.len(), 2, "two curl examples in docs/adapters.md");
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path(), "", &[]).await;
    let c = s.client().await;
    wire_catalog(&c).await;
    let env = vec![
        ("OMNISTOCK_TOKEN", ADAPTER_TOKEN.to_string()),
        ("OMNISTOCK_HTTP", format!("127.0.0.1:{}", s.admin)),
    ];
    let mut follow = Lines::spawn(sh(&sh_blocks[0], &env));
    // The stream starts live: write once the server counts it open.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !scrape(s.admin)
        .await
        .contains("\nomnistock_http_event_streams 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the curl stream never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seq = wire_adjust(&c, "SKU-1", 5).await;
    let id = format!("{seq}:atp:web");
    follow
        .until(&format!("id: {id}"), |l| l == format!("id: {id}"))
        .await;
    let data = follow
        .until("its data line", |l| l.starts_with("data: "))
        .await;
    let event: serde_json::Value = serde_json::from_str(&data["data: ".len()..]).unwrap();
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["type"], "omnistock.stock.back");
    // The documented sample output has the same shape as the real one.
    let sample = doc()
        .lines()
        .find(|l| l.starts_with("data: {"))
        .expect("a sample data line")
        .to_string();
    let sample: serde_json::Value = serde_json::from_str(&sample["data: ".len()..]).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&sample), keys(&event));
    assert_eq!(keys(&sample["data"]), keys(&event["data"]));
    assert_eq!(sample["data"]["cause"], event["data"]["cause"]);
    assert_eq!(sample["data"]["transition"], event["data"]["transition"]);

    // Resume after `id`: the next change, not `id` again.
    let next = wire_adjust(&c, "SKU-2", 3).await;
    let mut env2 = env.clone();
    env2.push(("LAST_ID", id.clone()));
    let mut resumed = Lines::spawn(sh(&sh_blocks[1], &env2));
    let first = resumed.until("an id line", |l| l.starts_with("id: ")).await;
    assert_eq!(first, format!("id: {next}:atp:web"));
}

async fn start_nats(port: u16, store: &Path) -> tokio::process::Child {
    let child = tokio::process::Command::new("nats-server")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_nats_consumer_receives_the_bridged_events() {
    if !have("nats-server", &["--version"]) || !have("python3", &["-c", "import nats"]) {
        return;
    }
    let python = blocks("python");
    let consumer = python
        .iter()
        .find(|b| b.contains("import nats"))
        .expect("the nats-py consumer in docs/adapters.md");
    let toml = blocks("toml");
    let nats_toml = toml
        .iter()
        .find(|b| b.starts_with("[nats]"))
        .expect("the [nats] example");
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let _nats = start_nats(nats_port, &dir.path().join("nats")).await;
    // The documented [nats] section as written, at this test's port.
    let config = nats_toml.replace("127.0.0.1:4222", &format!("127.0.0.1:{nats_port}"));
    let s = serve(dir.path(), &config, &[]).await;
    let c = s.client().await;
    wire_catalog(&c).await;
    let seq = wire_adjust(&c, "SKU-1", 5).await;
    // The stream exists once the bridge has connected; the consumer binds to it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = loop {
        let mut p = Lines::spawn({
            let mut c = tokio::process::Command::new("python3");
            c.args(["-c", consumer])
                .env("NATS_URL", format!("nats://127.0.0.1:{nats_port}"));
            c
        });
        // nats-py fails fast if the stream is not there yet: start it again.
        match tokio::time::timeout(Duration::from_secs(10), p.lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                p.seen.push(l);
                break p;
            }
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the consumer printed nothing"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let want = format!("omnistock.web.stock.back {seq}:atp:web SKU-1 5");
    if out.seen[0] != want {
        out.until(&want, |l| l == want).await;
    }
    // A later transition arrives too (the consumer keeps following).
    let out_seq = wire_adjust(&c, "SKU-1", -5).await;
    let want = format!("omnistock.web.stock.out {out_seq}:atp:web SKU-1 0");
    out.until(&want, |l| l == want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_webhook_receiver_verifies_real_webhooks() {
    if !have("python3", &["--version"]) || !have("curl", &["--version"]) {
        return;
    }
    let python = blocks("python");
    let receiver = python
        .iter()
        .find(|b| b.contains("BaseHTTPRequestHandler"))
        .expect("the webhook receiver in docs/adapters.md");
    let toml = blocks("toml");
    let hook_toml = toml
        .iter()
        .find(|b| b.starts_with("[[webhooks]]"))
        .expect("the [[webhooks]] example");
    let secret = "adapters-test-secret-0123456789abcdef";
    let hook_port = free_port();
    let mut recv = Lines::spawn({
        let mut c = tokio::process::Command::new("python3");
        c.args(["-c", receiver])
            .env("OMNISTOCK_WEBHOOK_SECRET", secret)
            .env("PORT", hook_port.to_string());
        c
    });
    wait_port(hook_port, "the Python receiver").await;
    // A forged request is refused (401) and prints nothing.
    let forged = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Omnistock-Signature: t=1,v1=00", "--data", "[]"])
        .arg(format!("http://127.0.0.1:{hook_port}/hook"))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forged.stdout), "401");

    let dir = tempfile::tempdir().unwrap();
    let config = hook_toml.replace("127.0.0.1:8080", &format!("127.0.0.1:{hook_port}"));
    let s = serve(dir.path(), &config, &[("OMNISTOCK_WEBHOOK_SECRET", secret)]).await;
    recv.until("the test event", |l| l.contains("omnistock.webhook.test"))
        .await;
    let c = s.client().await;
    wire_catalog(&c).await;
    let seq = wire_adjust(&c, "SKU-9", 2).await;
    let want = format!("{seq}:atp:web omnistock.stock.back SKU-9");
    recv.until(&want, |l| l == want).await;
}
