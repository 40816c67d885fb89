//! Online backup and restore on the real binary: `omnistock serve` on a loopback port,
//! `BACKUP` through the client and `omnistock backup`, `restore`, `check` (also `check
//! --addr` and `dump --addr` against the running server), a server started on the restored
//! directory.
//!
//! The state comparison is against the source's own log: the source runs with checkpoints
//! off, so after it stops its log holds every record; replaying that log up to the backup's
//! seq S (the same `recovery::recover` a restart uses) is the source's state at S, and the
//! restored directory's state (its checkpoint plus its log) must equal it SKU by SKU
//! (buckets, holds, last seq), with the same catalog and the same remembered requests.

mod common;
use common::free_port;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig, ClientError};
use omnistock::domain::HalfLives;
use omnistock::engine::recovery::{self, Recovered};
use omnistock::protocol::*;
use omnistock::wal::{Init, Wal, WalConfig};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const SKUS: usize = 24;

fn serve_cmd(dir: &Path, port: u16, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir)
    .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
    // The comparison replays the source's whole log: no checkpoint may truncate it.
    .args(["--checkpoint-every-records", "0"])
    .args(extra);
    c
}

fn wait_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let mut child = serve_cmd(dir, port, extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    wait_listening(port, &mut child);
    child
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

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run omnistock")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn client(port: u16, token: &str) -> Client {
    let mut cfg = ClientConfig::new(format!("127.0.0.1:{port}")).token(token.to_string());
    cfg.request_timeout = Duration::from_secs(120);
    Client::connect(cfg).await.expect("connect")
}

fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::Status { status, .. } | ClientError::Refused { status, .. } => Some(*status),
        _ => None,
    }
}

fn sku_name(i: usize) -> String {
    format!("SKU-{i:03}")
}

async fn setup_catalog(c: &Client) {
    let _: Applied = c
        .apply(Op::UpsertLocation(UpsertLocation {
            request_id: 1,
            location: WireLocation {
                id: "wh".into(),
                kind: WireLocationKind::Warehouse,
                region: "FR".into(),
            },
        }))
        .await
        .expect("location");
    let _: Applied = c
        .apply(Op::UpsertChannel(UpsertChannel {
            request_id: 2,
            channel: WireChannel {
                id: "web".into(),
                locations: vec!["wh".into()],
                buffer: 0,
                cap: None,
            },
        }))
        .await
        .expect("channel");
    for i in 0..SKUS {
        c.apply(Op::Adjust(Adjust {
            request_id: 100 + i as u128,
            sku: sku_name(i),
            location: "wh".into(),
            delta: 100_000,
            reason: WireAdjustReason::Receipt,
            reference: String::new(),
        }))
        .await
        .expect("stock");
    }
}

fn reserve_op(task: u64, n: u64) -> Reserve {
    let id = (u128::from(task + 1) << 64) | u128::from(n + 1);
    let a = (task as usize * 7 + n as usize) % SKUS;
    let b = (a + 1 + n as usize % 5) % SKUS;
    let mut lines = vec![WireLine {
        sku: sku_name(a),
        qty: 1 + (n % 3) as u32,
        location: None,
    }];
    // Every third cart holds two SKUs: a multi-SKU cart may be cut by S.
    if n.is_multiple_of(3) {
        lines.push(WireLine {
            sku: sku_name(b),
            qty: 1,
            location: None,
        });
    }
    Reserve {
        request_id: id,
        reservation: id,
        channel: "web".into(),
        lines,
        allow_split: false,
        ttl_ms: 3_600_000,
    }
}

/// Reserves (and now and then releases) until `stop`; every acknowledged reserve with its
/// answer.
async fn load(port: u16, task: u64, stop: Arc<AtomicBool>) -> Vec<(Reserve, Reserved)> {
    let c = client(port, "").await;
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < 20_000 {
        let r = reserve_op(task, n);
        n += 1;
        if let Ok(ans) = c.reserve(r.clone()).await {
            if n.is_multiple_of(4) {
                let _ = c
                    .release(Release {
                        request_id: r.request_id | (1 << 62),
                        reservation: r.reservation,
                    })
                    .await;
            }
            acked.push((r, ans));
        }
    }
    acked
}

fn open_ro(dir: &Path) -> Wal {
    let mut cfg = WalConfig::new(dir);
    cfg.init = Init::RefuseReadOnly;
    Wal::open(cfg).expect("open the log read-only")
}

/// The state of `dir` (checkpoint + log), stopping after seq `up_to`.
fn state_of(dir: &Path, up_to: u64) -> Recovered {
    let wal = open_ro(dir);
    let cp = wal.latest_checkpoint().expect("checkpoint");
    let start = cp.as_ref().map_or(1, |c| c.start_seq);
    let state = cp.map(|c| recovery::decode_checkpoint(&c.state).expect("decode checkpoint"));
    let records = wal
        .replay_from(start)
        .take_while(|r| !matches!(r, Ok((seq, _)) if *seq > up_to));
    recovery::recover(state, records, 0, HalfLives::default(), 0, |_, _| {}).expect("recover")
}

type Comparable = (
    BTreeMap<String, String>,
    String,
    BTreeMap<u128, String>,
    u64,
);

fn comparable(r: &Recovered) -> Comparable {
    let skus = r
        .skus
        .iter()
        .map(|s| {
            let mut holds: Vec<_> = s.holds.iter().collect();
            holds.sort_by_key(|h| *h.0);
            (
                s.sku.to_string(),
                format!(
                    "last_seq {} buckets {:?} holds {holds:?}",
                    s.last_seq, s.buckets
                ),
            )
        })
        .collect();
    let idem = r
        .idempotency
        .iter()
        .map(|i| (i.id, format!("{} {:?}", i.fingerprint, i.outcome)))
        .collect();
    // Every field but the derived channel index (a lazily built cache).
    let c = &r.catalog;
    let catalog = format!(
        "{:?} {:?} {} {:?} {:?} {:?}",
        c.locations, c.channels, c.last_seq, c.location_order, c.low_stock, c.low_stock_sku
    );
    (skus, catalog, idem, r.last_seq)
}

/// Every history event of `sku` the server answers, page by page.
async fn history_of(c: &Client, sku: &str) -> Vec<WireHistoryEvent> {
    let (mut out, mut from) = (Vec::new(), (0, 0));
    loop {
        let page = c.sku_history(sku, from, 1000).await.expect("history");
        out.extend(page.events);
        match page.next {
            Some(next) => from = next,
            None => return out,
        }
    }
}

#[test]
fn a_backup_under_reserve_load_restores_to_the_sources_state_at_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let bak = tmp.path().join("bak");
    let restored = tmp.path().join("restored");
    let port = free_port();
    let server = serve(&src, port, &["--init"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (backup, acked, source_history) = rt.block_on(async {
        let c = client(port, "").await;
        setup_catalog(&c).await;
        // A named subscription's stored position: part of what a restart needs.
        let acked = c
            .batch(&[Op::Ack(Ack {
                name: "erp".into(),
                seq: 3,
            })])
            .await
            .expect("ack");
        assert_eq!(acked[0].status, 0, "{acked:?}");
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|t| tokio::spawn(load(port, t, stop.clone())))
            .collect();
        // Let the load run, then back up in the middle of it.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let admin = client(port, "").await;
        let backup = admin
            .backup(bak.to_str().unwrap())
            .await
            .expect("backup under load");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        let history = history_of(&admin, &sku_name(0)).await;
        (backup, acked, history)
    });
    // check --addr with the default scratch directory, which it removes afterwards.
    let o = run(&["check", "--addr", &format!("127.0.0.1:{port}"), "--json"]);
    assert!(o.status.success(), "check --addr: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["check"], "ok", "{v}");
    let scratch = v["backup"]["dir"].as_str().expect("dir").to_string();
    assert!(scratch.contains("omnistock-check-"), "{scratch}");
    assert!(!Path::new(&scratch).exists(), "{scratch} is removed");
    stop(server);
    let s = backup.as_of_seq;
    let before: Vec<_> = acked.iter().filter(|(_, a)| a.seq <= s).collect();
    let after = acked.iter().filter(|(_, a)| a.seq > s).count();
    // The load really ran on both sides of the backup.
    assert!(before.len() > 20, "{} reserves before S={s}", before.len());
    assert!(
        after > 0,
        "no reserve after S={s}: the backup did not run under load"
    );
    assert!(backup.skus as usize >= SKUS, "{backup:?}");
    assert!(
        backup.bytes > 0 && backup.checkpoint_start_seq <= s + 1,
        "{backup:?}"
    );

    // restore: verifies, copies, prints what it restored.
    let o = run(&[
        "restore",
        "--from",
        bak.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "restore: {}", text(&o));
    assert!(
        text(&o).contains(&format!("as of seq {s}")),
        "restore says what it restored: {}",
        text(&o)
    );
    assert!(
        !restored.join("omnistock.backup").exists(),
        "a restored directory is no backup"
    );
    let o = run(&["check", restored.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "check of the restored directory: {}",
        text(&o)
    );

    // Equal state: the restored directory against the source's log replayed to S.
    let want = comparable(&state_of(&src, s));
    let got = comparable(&state_of(&restored, u64::MAX));
    assert_eq!(got.3, s, "the restored log ends at S");
    assert_eq!(want.1, got.1, "catalog");
    assert_eq!(want.0.len(), got.0.len(), "SKU count");
    for (sku, w) in &want.0 {
        assert_eq!(Some(w), got.0.get(sku), "SKU {sku} at S={s}");
    }
    assert_eq!(want.2, got.2, "remembered requests at S");
    assert_eq!(want, got);

    // A server started on the restored directory answers resends of requests acknowledged
    // before S with the very answers the source gave.
    let port2 = free_port();
    let server2 = serve(&restored, port2, &[]);
    rt.block_on(async {
        let c = client(port2, "").await;
        for (r, answer) in before.iter().step_by(before.len() / 20 + 1) {
            let again = c.reserve(r.clone()).await.expect("resend");
            assert_eq!(&again, answer, "resend of {:032x}", r.request_id);
        }
        let subs = c.subscriptions("", 0).await.expect("subscriptions");
        let erp: Vec<_> = subs.items.iter().filter(|s| s.name == "erp").collect();
        assert_eq!(erp.len(), 1, "{subs:?}");
        assert_eq!(erp[0].position, 3, "{subs:?}");
        // The SKU's history up to S is whole on the restored server (the backup's log
        // starts at its checkpoint: the events below it come from the copied history).
        let upto_s = |h: Vec<WireHistoryEvent>| -> Vec<WireHistoryEvent> {
            h.into_iter().filter(|e| e.seq <= s).collect()
        };
        let want = upto_s(source_history.clone());
        assert!(!want.is_empty(), "history of {}: {want:?}", sku_name(0));
        assert_eq!(upto_s(history_of(&c, &sku_name(0)).await), want);
    });
    stop(server2);
}

#[test]
fn refusals_bad_paths_existing_dirs_a_second_backup_and_non_admin_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let port = free_port();
    let root = tmp.path().to_str().unwrap();
    let server = serve(
        &src,
        port,
        &[
            "--init",
            "--token",
            "ops:admin",
            "--token",
            "shop:checkout",
            "--backup-dir",
            root,
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = client(port, "ops").await;
        setup_catalog(&admin).await;
        let refused = |r: Result<WireBackup, ClientError>| match r {
            Err(e) => status_of(&e),
            Ok(b) => panic!("backup accepted: {b:?}"),
        };
        // Relative: the path is the server's, never resolved against anyone's cwd.
        assert_eq!(refused(admin.backup("relative/dir").await), Some(21));
        assert_eq!(refused(admin.backup("").await), Some(21));
        // Existing, not empty.
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"keep").unwrap();
        assert_eq!(
            refused(admin.backup(full.to_str().unwrap()).await),
            Some(21)
        );
        assert_eq!(std::fs::read(full.join("x")).unwrap(), b"keep");
        // A file, a missing parent, the data directory itself and a path inside it.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"f").unwrap();
        assert_eq!(
            refused(admin.backup(file.to_str().unwrap()).await),
            Some(21)
        );
        let orphan = tmp.path().join("no/such/parent");
        assert_eq!(
            refused(admin.backup(orphan.to_str().unwrap()).await),
            Some(21)
        );
        assert_eq!(refused(admin.backup(src.to_str().unwrap()).await), Some(21));
        let inside = src.join("b");
        assert_eq!(
            refused(admin.backup(inside.to_str().unwrap()).await),
            Some(21)
        );
        // Outside the server's --backup-dir.
        let outside =
            std::env::temp_dir().join(format!("omnistock-outside-{}", std::process::id()));
        assert_eq!(
            refused(admin.backup(outside.to_str().unwrap()).await),
            Some(21)
        );
        assert!(!outside.exists());
        let long = format!("/{}", "x".repeat(5000));
        assert_eq!(refused(admin.backup(&long).await), Some(21));
        // Only admin.
        let shop = client(port, "shop").await;
        let e = shop
            .backup(tmp.path().join("b1").to_str().unwrap())
            .await
            .expect_err("checkout may not back up");
        assert_eq!(status_of(&e), Some(104));
        assert!(!tmp.path().join("b1").exists());
        // Two at once (one frame, run side by side): one is written, the other busy.
        let (b2, b3) = (tmp.path().join("b2"), tmp.path().join("b3"));
        let results = admin
            .batch(&[
                Op::Backup(Backup {
                    to: b2.to_str().unwrap().into(),
                }),
                Op::Backup(Backup {
                    to: b3.to_str().unwrap().into(),
                }),
            ])
            .await
            .expect("batch");
        let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [0, 13], "{results:?}");
        assert!(b2.join("omnistock.backup").is_file());
        assert!(!b3.exists(), "the busy one wrote nothing");
        // An existing empty directory is fine; afterwards it is a backup.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let b = admin
            .backup(empty.to_str().unwrap())
            .await
            .expect("into an empty dir");
        assert_eq!(b.skus as usize, SKUS);
        // And no leftovers of the refused ones beside them.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    });

    // The same through the command line, with --json and the status as exit code.
    let addr = format!("127.0.0.1:{port}");
    let to = tmp.path().join("cli");
    let o = run(&[
        "backup",
        "--addr",
        &addr,
        "--token",
        "ops",
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["as_of_seq"].as_u64().is_some(), "{v}");
    assert_eq!(v["skus"].as_u64(), Some(SKUS as u64), "{v}");
    let o = run(&[
        "backup", "--addr", &addr, "--token", "ops", "--to", "rel", "--json",
    ]);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json error");
    assert_eq!(v["error"]["name"], "backup_refused", "{v}");
    let o = run(&[
        "backup", "--addr", &addr, "--token", "shop", "--to", "/tmp/x", "--json",
    ]);
    assert_eq!(o.status.code(), Some(104), "{}", text(&o));

    // check --addr and dump --addr against the running server, with a scratch directory
    // inside --backup-dir.
    let scratch = tmp.path().join("scratch");
    let scratch = scratch.to_str().unwrap();
    let o = run(&[
        "check",
        "--addr",
        &addr,
        "--token",
        "ops",
        "--scratch",
        scratch,
    ]);
    assert!(o.status.success(), "check --addr: {}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("as_of_seq") && out.contains("ok: replayed"),
        "{out}"
    );
    assert!(
        !Path::new(scratch).exists(),
        "the scratch backup is removed"
    );
    let o = run(&[
        "dump",
        "--addr",
        &addr,
        "--token",
        "ops",
        "--sku",
        "SKU-003",
        "--scratch",
        scratch,
    ]);
    assert!(o.status.success(), "dump --addr: {}", text(&o));
    assert!(text(&o).contains("on_hand 100000"), "{}", text(&o));
    assert!(
        !Path::new(scratch).exists(),
        "the scratch backup is removed"
    );
    let o = run(&["check", "--addr", &addr, "--token", "shop"]);
    assert_eq!(o.status.code(), Some(104), "{}", text(&o));
    // The default scratch (under the system temporary directory) is outside --backup-dir.
    let o = run(&["check", "--addr", &addr, "--token", "ops"]);
    assert_eq!(o.status.code(), Some(21), "{}", text(&o));
    stop(server);

    // restore refuses a non-empty target and a directory that is not a finished backup.
    let full = tmp.path().join("full");
    let o = run(&[
        "restore",
        "--from",
        tmp.path().join("cli").to_str().unwrap(),
        "--data-dir",
        full.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "restore",
        "--from",
        src.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("not a complete backup"),
        "{}",
        text(&o)
    );
    assert!(!tmp.path().join("r").exists());
}

/// Entries of `parent` that are backup staging directories.
fn staging_dirs(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
        .map(|e| e.path())
        .collect()
}

#[test]
fn a_kill_9_during_a_backup_leaves_the_source_sound_and_no_backup_restore_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut interrupted = 0;
    for cycle in 0..3 {
        let port = free_port();
        let init: &[&str] = if cycle == 0 { &["--init"] } else { &[] };
        let mut server = serve_cmd(&src, port, init)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        wait_listening(port, &mut server);
        let stderr = server.stderr.take().unwrap();
        // Kill -9 the moment the server says the backup started writing.
        let pid = server.id() as i32;
        let watcher = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("backup: writing into") {
                    // SAFETY: SIGKILL to our own child process.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    return true;
                }
            }
            false
        });
        let target = tmp.path().join(format!("bak{cycle}"));
        rt.block_on(async {
            let c = client(port, "").await;
            if cycle == 0 {
                setup_catalog(&c).await;
            }
            // Some log to copy.
            for n in 0..500 {
                let _ = c.reserve(reserve_op(10 + cycle, n)).await;
            }
            let r = c.backup(target.to_str().unwrap()).await;
            assert!(r.is_err(), "the server was killed during the backup: {r:?}");
        });
        assert!(watcher.join().unwrap(), "the backup started");
        let _ = server.wait();
        // The source is sound after the kill.
        let o = run(&["check", src.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "check of the source after kill -9: {}",
            text(&o)
        );
        // Whatever the kill left is refused by restore: the target never looks complete
        // before the rename, and a staging directory has no manifest.
        let mut candidates = staging_dirs(tmp.path());
        interrupted += candidates.len();
        if target.exists() {
            candidates.push(target.clone());
        }
        for dir in candidates {
            if dir.join("omnistock.backup").is_file() {
                // Complete (the kill came after the rename): then it must restore.
                let into = tmp.path().join(format!("complete{cycle}"));
                let o = run(&[
                    "restore",
                    "--from",
                    dir.to_str().unwrap(),
                    "--data-dir",
                    into.to_str().unwrap(),
                ]);
                assert!(o.status.success(), "{}", text(&o));
                continue;
            }
            let into = tmp.path().join(format!("half{cycle}"));
            let o = run(&[
                "restore",
                "--from",
                dir.to_str().unwrap(),
                "--data-dir",
                into.to_str().unwrap(),
            ]);
            assert!(
                !o.status.success(),
                "restore accepted a half backup {dir:?}"
            );
            assert!(text(&o).contains("not a complete backup"), "{}", text(&o));
            assert!(!into.exists());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    assert!(interrupted > 0, "no kill landed inside a backup in 3 tries");
}
