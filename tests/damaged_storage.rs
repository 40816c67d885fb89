//! Damaged or missing data directories, through the real binaries: a truncated sled `db`
//! is reported as corrupt (exit 1, naming the file) by `check` and `serve` instead of a
//! panic inside sled; an emptied directory is not silently started as an empty inventory
//! (`serve` refuses it without `--init`); a directory whose identity file survived but
//! whose database is gone is refused; a directory from before identity files is adopted.

mod common;
use common::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

fn serve_cmd(dir: &Path, port: u16, init: bool) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("OMNISTOCK_INIT")
        .env_remove("RUST_BACKTRACE");
    if init {
        cmd.arg("--init");
    }
    cmd
}

/// Starts `serve` and waits until it listens.
fn serve(dir: &Path, port: u16, init: bool) -> Child {
    let mut child = serve_cmd(dir, port, init)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve exited with {status} instead of listening");
        }
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Runs `serve` on a directory it must refuse: returns its output once it exited.
fn serve_refused(dir: &Path, init: bool) -> Output {
    let mut child = serve_cmd(dir, free_port(), init)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on {} instead of refusing it", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ctl(port: u16, args: &[&str]) -> String {
    let o = Command::new(BIN)
        .args(["ctl", "--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .output()
        .expect("run ctl");
    assert!(o.status.success(), "ctl {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

fn stop(mut child: Child) {
    // SAFETY: sending SIGTERM to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM, got {status}");
}

fn check(dir: &Path) -> Output {
    Command::new(BIN)
        .arg("check")
        .arg(dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A data directory with data in it, made once: `serve --init`, a catalog and stock
/// adjustments through `ctl`, then bulk SKUs through the load generator's catalog loader
/// (`omnistock::sim::load_catalog`, what `omnistock-load catalog` runs) so the sled
/// `db` spans several of its 512 KiB segments (a truncation then cuts into the segment
/// chain, which is what made sled panic), then SIGTERM.
fn fixture() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        let server = serve(&data, port, true);
        ctl(port, &["add-location", "wh-a", "--region", "FR"]);
        ctl(port, &["add-channel", "web", "--locations", "wh-a"]);
        for sku in ["TEE", "CAP", "MUG"] {
            ctl(port, &["adjust", sku, "wh-a", "7", "--reason", "receipt"]);
        }
        // `omnistock-load catalog --skus 5000`: 2 locations, 2 channels, 1,000 units each.
        let target = omnistock::sim::TargetSpec::Omnistock {
            addr: format!("127.0.0.1:{port}"),
            token: String::new(),
            tls: None,
        };
        let spec = omnistock::sim::CatalogSpec::generic(5_000, 2, 2, 1_000).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(omnistock::sim::load_catalog(&target, &spec))
            .unwrap();
        stop(server);
        assert!(
            data.join("omnistock.id").is_file(),
            "--init wrote the identity"
        );
        assert!(
            data.join("omnistock.durable").is_file(),
            "shutdown wrote the mark"
        );
        let db = std::fs::metadata(data.join("db")).unwrap().len();
        assert!(db > 2 * 512 * 1024, "db spans several segments: {db} bytes");
        (dir, data)
    })
    .1
}

/// A private copy of the fixture.
fn copy_of_fixture() -> (tempfile::TempDir, PathBuf) {
    let src = fixture();
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("data");
    copy_dir(src, &dst);
    (dir, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

fn truncate(file: &Path, percent: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len * percent / 100).unwrap();
}

fn assert_corrupt_db(what: &str, o: &Output) {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {out}\n{err}");
    assert!(
        err.contains("data directory corrupt") && err.contains("/db"),
        "{what} names the damage and the file: {err}"
    );
    assert!(!err.contains("panicked"), "{what} must not panic: {err}");
}

#[test]
fn the_intact_fixture_checks_ok_and_reports_its_identity() {
    let (_keep, dir) = copy_of_fixture();
    let o = check(&dir);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let id = std::fs::read_to_string(dir.join("omnistock.id")).unwrap();
    let id = id
        .lines()
        .find_map(|l| l.strip_prefix("id = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("an id line");
    assert!(out.contains(&format!("identity: {id}")), "{out}");
    assert!(out.contains("ok: replayed"), "{out}");
}

#[test]
fn a_truncated_db_is_corrupt_for_check_and_serve_not_a_panic() {
    for percent in [50, 75] {
        let (_keep, dir) = copy_of_fixture();
        truncate(&dir.join("db"), percent);
        assert_corrupt_db(&format!("check, db at {percent}%"), &check(&dir));
        assert_corrupt_db(
            &format!("serve, db at {percent}%"),
            &serve_refused(&dir, false),
        );
        assert_corrupt_db(
            &format!("serve --init, db at {percent}%"),
            &serve_refused(&dir, true),
        );
    }
}

#[test]
fn an_emptied_directory_is_refused_until_serve_init() {
    let (_keep, dir) = copy_of_fixture();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }
    let o = check(&dir);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "check: not initialised: {err}");
    assert!(err.contains("is empty"), "{err}");

    let o = serve_refused(&dir, false);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("is empty") && err.contains("--init"),
        "says why and what to do: {err}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "left untouched"
    );

    let port = free_port();
    let server = serve(&dir, port, true);
    let info = ctl(port, &["--json", "locations"]);
    assert!(!info.contains("wh-a"), "a new, empty inventory: {info}");
    stop(server);
    assert!(dir.join("omnistock.id").is_file());
    // Initialised now: serve without --init opens it.
    let server = serve(&dir, port, false);
    stop(server);
    assert!(check(&dir).status.success());
}

#[test]
fn a_missing_directory_is_refused_without_init() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-mounted/data");
    let o = serve_refused(&missing, false);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("is missing") && err.contains("--init"),
        "{err}"
    );
    assert!(!missing.exists(), "nothing was created");
    assert_eq!(check(&missing).status.code(), Some(3));
}

#[test]
fn an_identity_without_its_db_is_refused_even_with_init() {
    for (what, damage) in [
        (
            "deleted",
            (|p: &Path| std::fs::remove_file(p).unwrap()) as fn(&Path),
        ),
        ("emptied", |p: &Path| truncate(p, 0)),
    ] {
        let (_keep, dir) = copy_of_fixture();
        damage(&dir.join("db"));
        let o = check(&dir);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(4), "check, db {what}: {err}");
        assert!(err.contains("lost its log"), "{err}");
        for init in [false, true] {
            let o = serve_refused(&dir, init);
            let (_, err) = text(&o);
            assert!(!o.status.success(), "db {what}, --init {init}: {err}");
            assert!(
                err.contains("lost its log") && err.contains("omnistock.id says"),
                "db {what}, --init {init}: {err}"
            );
        }
    }
}

#[test]
fn a_directory_from_before_identity_files_is_adopted() {
    let (_keep, dir) = copy_of_fixture();
    std::fs::remove_file(dir.join("omnistock.id")).unwrap();
    std::fs::remove_file(dir.join("omnistock.durable")).unwrap();
    let o = check(&dir);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("identity: none"), "{out}");
    assert!(!dir.join("omnistock.id").exists(), "check writes nothing");

    let port = free_port();
    let server = serve(&dir, port, false);
    let json = ctl(port, &["--json", "get", "TEE"]);
    assert!(json.contains("wh-a"), "the data is still there: {json}");
    stop(server);
    assert!(
        dir.join("omnistock.id").is_file(),
        "adopted: identity written"
    );
    assert!(check(&dir).status.success());
}

#[test]
fn without_the_durable_mark_a_truncated_db_never_panics() {
    // Directories from before `omnistock.durable`: sled rolls a truncated db back to an
    // older state silently (exit 0, a known limit, docs/operations.md) or fails; it must
    // never take the process down.
    for percent in (10..=90).step_by(10) {
        let (_keep, dir) = copy_of_fixture();
        std::fs::remove_file(dir.join("omnistock.durable")).unwrap();
        truncate(&dir.join("db"), percent);
        let o = check(&dir);
        let (out, err) = text(&o);
        assert!(
            matches!(o.status.code(), Some(0 | 1)) && !err.contains("panicked"),
            "db at {percent}%: {:?}\n{out}\n{err}",
            o.status
        );
    }
}

/// `check`, `dump` and a second `serve` on a directory a running server holds: each says in
/// one line that it is in use (no raw sled error, not twice), `check` exits 5, and the
/// server keeps running and answering; once it stopped, `check` passes.
#[test]
fn a_directory_a_running_server_holds_is_in_use_not_corrupt() {
    let (_keep, dir) = copy_of_fixture();
    let port = free_port();
    let server = serve(&dir, port, false);

    let started = Instant::now();
    let o = check(&dir);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(5), "check: in use: {err}");
    assert!(err.contains("is in use by another process"), "{err}");
    assert_eq!(
        err.matches("in use").count(),
        1,
        "said once, without sled's own text repeated: {err}"
    );
    assert!(!err.contains("could not acquire lock"), "{err}");
    // Not serve's 5 s wait (a generous bound: this is not a performance assertion, it
    // tells the short tool wait from the server's).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let o = Command::new(BIN)
        .args(["dump", "--sku"])
        .arg("SKU-1")
        .arg(&dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "dump: {err}");
    assert!(err.contains("is in use by another process"), "{err}");

    let o = serve_refused(&dir, false);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("is in use by another process"), "{err}");

    // The running server was not disturbed.
    let info = ctl(port, &["--json", "locations"]);
    assert!(info.contains("wh-a"), "{info}");
    stop(server);
    assert!(check(&dir).status.success(), "{:?}", text(&check(&dir)));
}
