//! The binaries as a user runs them: `omnistock serve` on a free loopback port with a data
//! directory, driven by `omnistock ctl`; exit statuses carry the protocol status; SIGTERM
//! stops the server cleanly (exit 0) and the data survives a restart; `check` and `dump`
//! read the directory afterwards.

mod common;
use common::free_port;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

fn serve(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new(BIN)
        .args([
            "serve",
            "--init",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn ctl(port: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .output()
        .expect("run ctl")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "ctl failed: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn stop(mut child: Child) {
    // SAFETY: sending SIGTERM to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "serve exits 0 on SIGTERM, got {status}");
            return;
        }
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_and_ctl_round_trip_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    ok(ctl(port, &["ping"]));
    ok(ctl(port, &["add-location", "wh-a", "--region", "FR"]));
    ok(ctl(port, &["add-channel", "web", "--locations", "wh-a"]));
    ok(ctl(
        port,
        &["adjust", "SKU-1", "wh-a", "5", "--reason", "receipt"],
    ));
    ok(ctl(
        port,
        &[
            "reserve",
            "--channel",
            "web",
            "--line",
            "SKU-1:2",
            "--id",
            "42",
        ],
    ));
    let short = ctl(port, &["reserve", "--channel", "web", "--line", "SKU-1:9"]);
    assert_eq!(
        short.status.code(),
        Some(1),
        "exit status = InsufficientStock code"
    );
    let json = ok(ctl(port, &["--json", "get", "SKU-1"]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert!(json.contains("wh-a"), "{v}");
    stop(server);

    let server = serve(dir.path(), port);
    let json = ok(ctl(port, &["--json", "reservation", "42"]));
    assert!(
        json.contains("SKU-1"),
        "reservation survived the restart: {json}"
    );
    stop(server);

    let check = Command::new(BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("ok: replayed"));
    let dump = Command::new(BIN)
        .arg("dump")
        .arg(dir.path())
        .args(["--sku", "SKU-1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains("StockAdjusted") && text.contains("HoldPlaced"),
        "{text}"
    );
}

/// `GET path` on the admin endpoint: (status, body); `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[test]
fn serve_answers_health_and_metrics_on_the_admin_address_set_by_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("OMNISTOCK_DATA_DIR", dir.path().join("data"))
        .env("OMNISTOCK_INIT", "true")
        .env("OMNISTOCK_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("OMNISTOCK_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = http_get(admin, "/readyz") {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(ctl(port, &["ping"]));
    assert_eq!(http_get(admin, "/healthz").map(|r| r.0), Some(200));
    let (status, metrics) = http_get(admin, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(metrics.contains("\nomnistock_ready 1\n"), "{metrics}");
    assert!(
        metrics.contains(r#"omnistock_requests_total{op="ping",status="ok"} 1"#),
        "{metrics}"
    );
    stop(child);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn an_invalid_setting_stops_serve_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("omnistock.toml");
    std::fs::write(&config, "[limits]\nmax_in_flight = 0\n").unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--max-connections", "0"], vec![], "max_connections"),
        (
            vec![],
            vec![("OMNISTOCK_DURABILITY", "sometimes")],
            "durability",
        ),
        (
            vec![],
            vec![("OMNISTOCK_MAX_FRAME_BYTES", "lots")],
            "--max-frame-bytes",
        ),
        (
            vec!["--config", config.to_str().unwrap()],
            vec![],
            "max_in_flight",
        ),
    ];
    for (args, env, setting) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .args(["--data-dir", data.to_str().unwrap()])
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .expect("run serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started");
        assert!(err.contains(setting), "{args:?} {env:?}: {err}");
    }
    assert!(!data.exists(), "nothing was opened");
}

#[test]
fn serve_help_documents_every_setting_with_its_default_and_environment_variable() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '<']).next().unwrap_or_default().to_string())
        .filter(|f| f != "help")
        .collect::<Vec<_>>();
    assert!(flags.len() >= 20, "{help}");
    // Each option's text runs until the next option; it must name a default and its variable.
    let mut chunks = help.split("\n      --").skip(1);
    for flag in &flags {
        let chunk = chunks.next().unwrap_or_default();
        assert!(chunk.starts_with(flag.as_str()), "{flag}: {chunk}");
        let var = format!("OMNISTOCK_{}", flag.to_uppercase().replace('-', "_"));
        let var = if flag == "token" {
            "OMNISTOCK_TOKENS".into()
        } else {
            var
        };
        assert!(chunk.contains(&format!("[env: {var}=")), "{flag}: {chunk}");
        assert!(
            chunk.contains("[default: ") || flag == "config",
            "{flag} documents no default: {chunk}"
        );
    }
}

#[test]
fn the_example_config_in_docs_operations_md_starts_a_server() {
    let ops = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let toml = ops
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block in docs/operations.md");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("omnistock.toml");
    std::fs::write(&config, toml).unwrap();
    let (port, admin) = (free_port(), free_port());
    // The example listens on a non-loopback address; the flags move it to loopback here.
    let child = Command::new(BIN)
        .args(["serve", "--init", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(admin, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "never ready with the example config"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pinged = Command::new(BIN)
        .args(["ctl", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--token", "ops-secret", "ping"])
        .output()
        .unwrap();
    assert!(pinged.status.success(), "{pinged:?}");
    stop(child);
}

#[test]
fn ctl_tail_prints_changes_from_a_position_one_line_each_with_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    ok(ctl(port, &["add-location", "wh-a", "--region", "FR"]));
    ok(ctl(port, &["add-channel", "web", "--locations", "wh-a"]));
    ok(ctl(port, &["low-stock", "web", "3"]));
    let adjusted = ok(ctl(
        port,
        &[
            "--json", "adjust", "TEE", "wh-a", "5", "--reason", "receipt",
        ],
    ));
    let seq = serde_json::from_str::<serde_json::Value>(&adjusted).unwrap()["seq"]
        .as_u64()
        .expect("seq");
    let from = (seq - 1).to_string();
    ok(ctl(
        port,
        &["reserve", "--channel", "web", "--line", "TEE:2"],
    ));
    ok(ctl(
        port,
        &["reserve", "--channel", "web", "--line", "TEE:3"],
    ));
    // Replayed from the log: every change after the catalog was set up.
    let out = ok(ctl(
        port,
        &[
            "tail",
            "--channel",
            "web",
            "--sku",
            "TEE",
            "--from",
            &from,
            "--count",
            "3",
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("TEE web atp 0 -> 5 (adjust)") && lines[0].contains("BACK-IN-STOCK"),
        "{out}"
    );
    assert!(
        lines[1].contains("atp 5 -> 3 (reserve)") && lines[1].contains("LOW-STOCK"),
        "{out}"
    );
    assert!(
        lines[2].contains("atp 3 -> 0 (reserve)") && lines[2].contains("OUT-OF-STOCK"),
        "{out}"
    );
    // --json: one event envelope (docs/events.md) per line, valid against its schema.
    let json = ok(ctl(
        port,
        &[
            "--json", "tail", "--sku", "TEE", "--from", &from, "--count", "3",
        ],
    ));
    let events = valid_events(&json);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "omnistock.stock.back",
            "omnistock.stock.low",
            "omnistock.stock.out"
        ],
        "{json}"
    );
    let v = &events[0];
    assert_eq!(v["data"]["atp"], 5, "{v}");
    assert_eq!(v["data"]["cause"], "adjust", "{v}");
    assert_eq!(v["subject"], "TEE", "{v}");
    assert_eq!(v["seq"], seq, "{v}");
    assert_eq!(v["source"], format!("omnistock://127.0.0.1:{port}"), "{v}");
    // Leaving the low-stock band upwards: 0 -> 2 is back in stock (inside the band), then
    // 2 -> 6 clears low stock, in the human form and as an event.
    ok(ctl(
        port,
        &["adjust", "TEE", "wh-a", "2", "--reason", "receipt"],
    ));
    ok(ctl(
        port,
        &["adjust", "TEE", "wh-a", "4", "--reason", "receipt"],
    ));
    let human = ok(ctl(
        port,
        &[
            "tail",
            "--kinds",
            "thresholds",
            "--from",
            &from,
            "--count",
            "5",
        ],
    ));
    assert!(
        human
            .lines()
            .nth(4)
            .is_some_and(|l| l.contains("atp 2 -> 6 (adjust)") && l.contains("LOW-STOCK-CLEARED")),
        "{human}"
    );
    let json = ok(ctl(
        port,
        &[
            "--json",
            "tail",
            "--kinds",
            "thresholds",
            "--from",
            &from,
            "--count",
            "5",
            "--source",
            "urn:example:inventory",
        ],
    ));
    let events = valid_events(&json);
    assert_eq!(events[4]["type"], "omnistock.stock.low_cleared", "{json}");
    assert_eq!(events[4]["source"], "urn:example:inventory", "{json}");
    // A bad filter is a clear error with the protocol status as exit code.
    let bad = ctl(port, &["tail", "--channel", "nope", "--count", "1"]);
    assert_eq!(bad.status.code(), Some(12), "{:?}", bad);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown channel"));
    stop(server);
}

/// Each line of `out` as JSON, checked against docs/events.schema.json.
fn valid_events(out: &str) -> Vec<serde_json::Value> {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/events.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let v = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    out.lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            let complaints: Vec<String> = v.iter_errors(&e).map(|x| x.to_string()).collect();
            assert!(complaints.is_empty(), "{l}: {complaints:?}");
            e
        })
        .collect()
}

fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .arg("ctl")
        .args(args)
        .env_remove("OMNISTOCK_ADDR")
        .envs(env.iter().copied())
        .output()
        .expect("run ctl")
}

fn json_of(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {o:?}"))
}

/// A catalog with one location, one channel and `qty` units of `sku`.
fn stock(port: u16, sku: &str, qty: &str) {
    ok(ctl(port, &["add-location", "wh-a", "--region", "FR"]));
    ok(ctl(port, &["add-channel", "web", "--locations", "wh-a"]));
    ok(ctl(
        port,
        &["adjust", sku, "wh-a", qty, "--reason", "receipt"],
    ));
}

fn is_hex_id(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[test]
fn ctl_json_reserve_prints_its_ids_as_strings_and_a_script_can_fulfil_and_release_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    stock(port, "TEE", "10");
    let before = json_of(&ctl(port, &["--json", "get", "TEE"]))["last_seq"]
        .as_u64()
        .expect("last_seq");

    let reserved = json_of(&ctl(
        port,
        &["--json", "reserve", "--channel", "web", "--line", "TEE:2"],
    ));
    let id = reserved["reservation"].clone();
    assert!(
        is_hex_id(&id),
        "reservation id as 32 hex digits: {reserved}"
    );
    assert!(is_hex_id(&reserved["request_id"]), "{reserved}");
    assert_eq!(reserved["allocations"][0]["qty"], 2, "{reserved}");
    let id = id.as_str().unwrap().to_string();
    let fulfilled = json_of(&ctl(port, &["--json", "fulfil", &id]));
    assert_eq!(fulfilled["reservation"], id.as_str(), "{fulfilled}");
    assert!(fulfilled["seq"].as_u64().is_some(), "{fulfilled}");

    // Human output: `key: value` lines and tables, the same id form; no Rust Debug.
    let text = ok(ctl(
        port,
        &["reserve", "--channel", "web", "--line", "TEE:3"],
    ));
    assert!(
        !text.contains('{') && text.contains("allocations:"),
        "{text}"
    );
    let second = text
        .lines()
        .find_map(|l| l.strip_prefix("reservation:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no reservation line: {text}"));
    assert!(is_hex_id(&serde_json::json!(second)), "{text}");
    let shown = ok(ctl(port, &["reservation", &second]));
    assert!(shown.contains(&format!("reservation: {second}")), "{shown}");
    assert!(shown.contains("TEE") && !shown.contains('{'), "{shown}");
    // Every input form names the same reservation: 0x-hex here.
    let hex = format!("0x{}", second.trim_start_matches('0'));
    let released = json_of(&ctl(port, &["--json", "release", &hex]));
    assert_eq!(released["reservation"], second.as_str(), "{released}");
    let gone = ctl(port, &["--json", "reservation", &second]);
    assert_eq!(gone.status.code(), Some(6), "{gone:?}");
    assert_eq!(json_of(&gone)["error"]["name"], "reservation_not_found");

    // The feed names reservations with the same string.
    let tail = ok(ctl(
        port,
        &[
            "--json",
            "tail",
            "--kinds",
            "reservations",
            "--from",
            &before.to_string(),
            "--count",
            "4",
        ],
    ));
    let events: Vec<serde_json::Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 4, "{tail}");
    let ids: Vec<&serde_json::Value> = events.iter().map(|e| &e["data"]["reservation"]).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "omnistock.reservation.placed",
            "omnistock.reservation.fulfilled",
            "omnistock.reservation.placed",
            "omnistock.reservation.released"
        ],
        "{tail}"
    );
    valid_events(&tail);
    assert!(ids.iter().all(|v| is_hex_id(v)), "{tail}");
    assert_eq!(ids[0], &serde_json::json!(id), "{tail}");
    assert_eq!(ids[3], &serde_json::json!(second), "{tail}");
    let human = ok(ctl(
        port,
        &[
            "tail",
            "--kinds",
            "reservations",
            "--from",
            &before.to_string(),
            "--count",
            "1",
        ],
    ));
    assert!(
        human.contains(&format!("reservation {id} placed qty 2")),
        "{human}"
    );
    stop(server);
}

#[test]
fn ctl_json_errors_are_objects_with_the_status_as_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    stock(port, "TEE", "5");
    let short = ctl(
        port,
        &[
            "--json",
            "reserve",
            "--channel",
            "web",
            "--line",
            "TEE:9",
            "--request-id",
            "42",
        ],
    );
    assert_eq!(short.status.code(), Some(1), "{short:?}");
    let e = &json_of(&short)["error"];
    assert_eq!(e["status"], 1, "{e}");
    assert_eq!(e["name"], "insufficient_stock", "{e}");
    assert_eq!(e["retriable"], false, "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("TEE")),
        "{e}"
    );
    assert_eq!(e["details"]["available"], 5, "{e}");
    assert_eq!(e["request_id"], "0000000000000000000000000000002a", "{e}");
    assert!(short.stderr.is_empty(), "{short:?}");
    // Without --json: one line on stderr naming the status, nothing on stdout.
    let short = ctl(port, &["reserve", "--channel", "web", "--line", "TEE:9"]);
    assert_eq!(short.status.code(), Some(1));
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.starts_with("error: insufficient_stock (1): "), "{err}");
    assert!(short.stdout.is_empty(), "{short:?}");
    stop(server);
}

#[test]
fn ctl_client_side_failures_have_their_own_exit_codes() {
    let dead = free_port(); // bound then released: nothing listens there
    let refused = ctl(dead, &["ping"]);
    assert_eq!(refused.status.code(), Some(69), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("unavailable") && err.contains(&dead.to_string()),
        "{err}"
    );
    let refused = ctl(dead, &["--json", "ping"]);
    assert_eq!(refused.status.code(), Some(69), "{refused:?}");
    let e = &json_of(&refused)["error"];
    assert_eq!(e["name"], "unavailable", "{e}");
    assert_eq!(e["status"], serde_json::Value::Null, "{e}");
    assert_eq!(e["retriable"], true, "{e}");

    // Usage errors exit 64, clap's own and ctl's, and come before connecting.
    for args in [
        &["reserve", "--line", "TEE:1"][..],
        &["release", "not-an-id"],
        &["frobnicate"],
        &[],
        &["reserve", "--channel", "web", "--line", "TEE"],
        &["adjust", "TEE", "wh-a", "1", "--reason", "gift"],
    ] {
        let out = ctl(dead, args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: {out:?}");
    }
    let out = ctl(dead, &["--json", "frobnicate"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(json_of(&out)["error"]["name"], "usage", "{out:?}");
    let help = ctl(dead, &["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("reserve") && help.contains("Exit codes"),
        "{help}"
    );
}

#[test]
fn ctl_reads_its_address_from_omnistock_addr_with_a_default_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    let addr = format!("127.0.0.1:{port}");
    let pinged = ctl_env(&["--json", "ping"], &[("OMNISTOCK_ADDR", &addr)]);
    assert!(pinged.status.success(), "{pinged:?}");
    assert!(json_of(&pinged)["server_time_ms"].as_u64().is_some());
    // --addr wins over the variable.
    let dead = format!("127.0.0.1:{}", free_port());
    let pinged = ctl_env(
        &["--addr", &addr, "ping"],
        &[("OMNISTOCK_ADDR", dead.as_str())],
    );
    assert!(pinged.status.success(), "{pinged:?}");
    let refused = ctl_env(&["ping"], &[("OMNISTOCK_ADDR", dead.as_str())]);
    assert_eq!(refused.status.code(), Some(69), "{refused:?}");
    stop(server);
    // A host without a port means port 7878 (whatever listens there on this machine).
    let out = ctl_env(&["--json", "ping"], &[("OMNISTOCK_ADDR", "127.0.0.1")]);
    if !out.status.success() {
        let e = &json_of(&out)["error"];
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("127.0.0.1:7878")),
            "{out:?}"
        );
    }
}

#[test]
fn ctl_pointed_at_something_else_says_it_is_not_an_omnistock_server() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            let _ = s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            // Until the client hangs up, so the answer is not lost to a reset.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        }
    });
    let out = ctl(port, &["ping"]);
    assert_eq!(out.status.code(), Some(76), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this is not an omnistock server") && err.contains("HTTP/1.1 400"),
        "{err}"
    );
    let out = ctl(port, &["--json", "ping"]);
    assert_eq!(out.status.code(), Some(76), "{out:?}");
    assert_eq!(json_of(&out)["error"]["name"], "not_omnistock", "{out:?}");
    http.join().unwrap();
}

// postmortem: SIGTERM never completed while a client had stopped reading with its queue
// full: no shutdown deadline, and the read loop waited for every in-flight answer to be
// queued. Now answers get a bounded time to be queued and the server a deadline.
#[test]
fn sigterm_stops_within_the_deadline_while_a_client_has_stopped_reading() {
    use omnistock::protocol::{frame_of, FrameKind, Hello, Op, RequestBatch, MAGIC};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .env("OMNISTOCK_SHUTDOWN_TIMEOUT_MS", "2000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    let hello = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "non-reader".into(),
        token: String::new(),
    };
    s.write_all(&frame_of(FrameKind::Hello, 0, &hello).unwrap().encode())
        .unwrap();
    // Pipeline pings and never read, until the socket buffers are full (a write blocks).
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let ping = Op::Ping.to_raw().unwrap();
    let mut sent = 0usize;
    for corr in 1..=2_000_000u64 {
        let f = frame_of(
            FrameKind::Request,
            corr,
            &RequestBatch {
                ops: vec![ping.clone()],
            },
        )
        .unwrap()
        .encode();
        if s.write_all(&f).is_err() {
            break;
        }
        sent += f.len();
    }
    assert!(
        sent > 64 * 1024,
        "the client filled the buffers ({sent} bytes)"
    );
    let t0 = Instant::now();
    // SAFETY: sending SIGTERM to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve did not stop within 30 s with a non-reading client");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean stop: {status}");
    // The 2 s deadline plus the writer's 5 s drain, with room for a busy machine.
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    drop(s);
}

/// `GET path` with a bearer token: (status, body).
fn http_get_as(port: u16, path: &str, token: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[test]
fn serve_gives_the_http_api_its_tokens_and_heartbeat_setting() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--token", "ops:admin", "--token", "feed:adapter"])
        .args(["--http-heartbeat-ms", "200"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(admin, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = http_get(admin, "/v1/skus/nope").unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_get_as(admin, "/v1/skus/nope", "feed").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"unknown_sku\""), "{body}");
    // The feed with the adapter token: its opening comment, then heartbeats at 200 ms.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer feed\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches(": heartbeat").count() < 2 {
        let n = s.read(&mut buf).expect("heartbeats arrive");
        assert!(n > 0, "closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains(": subscribed start=live"), "{seen}");
    // SIGTERM with the stream open: the stream ends, the process exits 0.
    stop(child);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the server closed the stream");
}

/// `ctl skus` pages through the known SKU ids of a real server: by prefix, `--after` the
/// previous page's `next_after`, at most `--limit`; JSON and text; bad bounds refused.
#[test]
fn ctl_skus_pages_through_the_ids_by_prefix_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    stock(port, "TEE-M", "5");
    for sku in ["TEE-S", "CAP", "TEE-L", "TEE-XL", "MUG"] {
        ok(ctl(
            port,
            &["adjust", sku, "wh-a", "1", "--reason", "receipt"],
        ));
    }
    // Every TEE- id, two a page, following next_after.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["--json", "skus", "--prefix", "TEE-", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let o = ctl(port, &args);
        assert!(o.status.success(), "{o:?}");
        let v = json_of(&o);
        let page: Vec<String> = v["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= 2, "{v}");
        seen.extend(page.clone());
        pages += 1;
        match v["next_after"].as_str() {
            Some(n) => {
                assert_eq!(Some(n), page.last().map(String::as_str), "{v}");
                after = Some(n.to_string());
            }
            None => {
                assert!(v["next_after"].is_null(), "{v}");
                break;
            }
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, ["TEE-L", "TEE-M", "TEE-S", "TEE-XL"]);
    assert_eq!(pages, 2);

    // Text: one id a line, then the end; with more to come, the next page's flag.
    let all = ok(ctl(port, &["skus"]));
    assert_eq!(
        all,
        "CAP\nMUG\nTEE-L\nTEE-M\nTEE-S\nTEE-XL\n(6 SKUs, end of list)\n"
    );
    let first = ok(ctl(port, &["skus", "--limit", "1"]));
    assert_eq!(first, "CAP\nnext: --after CAP\n");
    // A cursor need not be a known SKU.
    let v = json_of(&ctl(port, &["--json", "skus", "--after", "N"]));
    assert_eq!(v["skus"][0], "TEE-L", "{v}");
    let none = json_of(&ctl(port, &["--json", "skus", "--prefix", "ZZ"]));
    assert_eq!(none["skus"].as_array().unwrap().len(), 0, "{none}");
    assert!(none["next_after"].is_null(), "{none}");

    // Bounds: a limit out of range is a usage error; a prefix longer than an id is 12.
    assert_eq!(ctl(port, &["skus", "--limit", "0"]).status.code(), Some(64));
    assert_eq!(
        ctl(port, &["skus", "--limit", "1001"]).status.code(),
        Some(64)
    );
    let long = "A".repeat(65);
    let o = ctl(port, &["--json", "skus", "--prefix", &long]);
    assert_eq!(o.status.code(), Some(12), "{o:?}");
    assert_eq!(json_of(&o)["error"]["name"], "invalid_request", "{o:?}");
    stop(server);
}

/// A `LIST_SKUS` page also stops at the server's frame bound (`max_frame_bytes` less 160,
/// each id counted as its length + 8): with 256-byte frames only one 60-byte id fits a page,
/// and `next_after` still leads through every id.
#[test]
fn ctl_skus_pages_are_bounded_by_the_frame_size() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--max-frame-bytes", "256", "--data-dir"])
        .arg(dir.path())
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.try_wait().unwrap() {
            panic!("serve exited with {status}");
        }
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids: Vec<String> = (0..3).map(|i| format!("{i}{}", "X".repeat(59))).collect();
    stock(port, &ids[0], "1");
    for id in &ids[1..] {
        ok(ctl(
            port,
            &["adjust", id, "wh-a", "1", "--reason", "receipt"],
        ));
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut args = vec!["--json", "skus", "--limit", "1000"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let v = json_of(&ctl(port, &args));
        let page = v["skus"].as_array().unwrap();
        assert!(page.len() <= 1, "one 60-byte id fits a 256-byte frame: {v}");
        seen.extend(page.iter().map(|s| s.as_str().unwrap().to_string()));
        match v["next_after"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    stop(server);
}

/// `ctl reservations SKU` lists the open reservations holding a SKU on a real server, by id,
/// paged with `--after`; a released one is gone; an unknown SKU exits 2.
#[test]
fn ctl_reservations_lists_the_open_holds_of_a_sku_paged_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    stock(port, "TEE", "10");
    ok(ctl(
        port,
        &["adjust", "CAP", "wh-a", "5", "--reason", "receipt"],
    ));
    let mut ids: Vec<String> = (1..=3)
        .map(|q| {
            let line = format!("TEE:{q}");
            let r = json_of(&ctl(
                port,
                &["--json", "reserve", "--channel", "web", "--line", &line],
            ));
            r["reservation"].as_str().unwrap().to_string()
        })
        .collect();
    // A cart on another SKU is not listed under TEE.
    ok(ctl(
        port,
        &["reserve", "--channel", "web", "--line", "CAP:1"],
    ));

    let all = json_of(&ctl(port, &["--json", "reservations", "TEE"]));
    assert_eq!(all["sku"], "TEE", "{all}");
    assert!(all["next_after"].is_null(), "{all}");
    let list = all["reservations"].as_array().unwrap();
    let listed: Vec<String> = list
        .iter()
        .map(|r| r["reservation"].as_str().unwrap().to_string())
        .collect();
    let mut by_id = ids.clone();
    by_id.sort();
    assert_eq!(listed, by_id, "{all}");
    let total: u64 = list
        .iter()
        .map(|r| {
            assert_eq!(r["channel"], "web", "{r}");
            assert_eq!(r["allocations"][0][0], "wh-a", "{r}");
            assert!(r["expires_at_ms"].as_u64().is_some(), "{r}");
            r["allocations"][0][1].as_u64().unwrap()
        })
        .sum();
    assert_eq!(total, 6, "1 + 2 + 3 held: {all}");

    // Two pages of two.
    let p1 = json_of(&ctl(
        port,
        &["--json", "reservations", "TEE", "--limit", "2"],
    ));
    assert_eq!(p1["reservations"].as_array().unwrap().len(), 2, "{p1}");
    let next = p1["next_after"].as_str().expect("more follow").to_string();
    assert_eq!(next, by_id[1]);
    let p2 = json_of(&ctl(
        port,
        &[
            "--json",
            "reservations",
            "TEE",
            "--limit",
            "2",
            "--after",
            &next,
        ],
    ));
    assert_eq!(
        p2["reservations"][0]["reservation"],
        by_id[2].as_str(),
        "{p2}"
    );
    assert!(p2["next_after"].is_null(), "{p2}");

    // Text: a table with the ids as strings.
    let text = ok(ctl(port, &["reservations", "TEE"]));
    assert!(text.contains("reservations: 3"), "{text}");
    assert!(ids.iter().all(|id| text.contains(id.as_str())), "{text}");

    // Released: no longer listed.
    let gone = ids.remove(0);
    ok(ctl(port, &["release", &gone]));
    let after = json_of(&ctl(port, &["--json", "reservations", "TEE"]));
    assert_eq!(
        after["reservations"].as_array().unwrap().len(),
        2,
        "{after}"
    );
    assert!(!after.to_string().contains(&gone), "{after}");

    let unknown = ctl(port, &["--json", "reservations", "NOPE"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert_eq!(
        ctl(port, &["reservations", "TEE", "--limit", "0"])
            .status
            .code(),
        Some(64)
    );
    stop(server);
}
