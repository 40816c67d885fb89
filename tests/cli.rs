//! The binaries as a user runs them: `omnistock serve` on a free loopback port with a data
//! directory, driven by `omnistock ctl`; exit statuses carry the protocol status; SIGTERM
//! stops the server cleanly (exit 0) and the data survives a restart; `check` and `dump`
//! read the directory afterwards.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new(BIN)
        .args([
            "serve",
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
