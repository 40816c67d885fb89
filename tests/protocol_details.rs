//! Issue 12, finding 8, re-checked on the real `omnistock` binary: the details that need a
//! process of their own. (The others have their tests beside the code they concern: Push
//! frames within `max_frame_bytes` in tests/server_limits.rs, decode errors in words in
//! src/codec.rs, ADJUST of 0 and an ETA past 9999-12-31 in tests/engine_behaviour.rs, a
//! FULFIL at the moment of expiry there too.)

mod common;
use common::free_port;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig};
use omnistock::protocol::messages::*;
use omnistock::protocol::{decode_payload, frame_of, Frame, FrameKind, Op, MAGIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

/// `omnistock serve` on a free port; `limit_file_bytes` sets RLIMIT_FSIZE on it (with
/// SIGXFSZ ignored, a write past it fails with EFBIG, as on a full disk).
/// Its data directory is `dir/data`, its stderr goes to `dir/serve.log`.
fn serve(dir: &std::path::Path, port: u16, limit_file_bytes: Option<u64>) -> Child {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(limit) = limit_file_bytes {
        // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGTERM, then the exit status and what the server wrote on stderr.
fn stop(mut child: Child, dir: &std::path::Path) -> (std::process::ExitStatus, String) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
            return (status, err);
        }
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn client(port: u16) -> Client {
    Client::connect(ClientConfig::new(format!("127.0.0.1:{port}")))
        .await
        .expect("connect")
}

async fn location(c: &Client) {
    let op = Op::UpsertLocation(UpsertLocation {
        request_id: 1,
        location: WireLocation {
            id: "wh".into(),
            kind: WireLocationKind::Warehouse,
            region: "FR".into(),
        },
    });
    assert_eq!(c.batch(&[op]).await.unwrap()[0].status, 0);
}

/// `n` changes of SKU `D` at `wh`, request ids from `first`, in frames of 1,000; the
/// statuses.
async fn changes(c: &Client, first: u128, n: u32) -> Vec<u16> {
    let ops: Vec<Op> = (0..n)
        .map(|i| {
            Op::SetOnHand(SetOnHand {
                request_id: first + u128::from(i),
                sku: "D".into(),
                location: "wh".into(),
                on_hand: 1 + i % 2,
                expected: None,
                reference: "a reference long enough to make every line of the dump longer".into(),
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for chunk in ops.chunks(1000) {
        match c.batch(chunk).await {
            Ok(r) => statuses.extend(r.iter().map(|r| r.status)),
            Err(_) => statuses.push(u16::MAX),
        }
    }
    statuses
}

// postmortem: `omnistock dump … | head` panicked on the broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_into_a_pipe_closed_early_ends_quietly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port, None);
    let c = client(port).await;
    location(&c).await;
    assert!(changes(&c, 100, 3000).await.iter().all(|&s| s == 0));
    drop(c);
    let (status, err) = stop(server, dir.path());
    assert!(status.success(), "{status}: {err}");
    let mut dump = Command::new(BIN)
        .arg("dump")
        .arg(dir.path().join("data"))
        .args(["--sku", "D"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What `head -c 100` does: read a little, then close the pipe.
    let mut out = dump.stdout.take().unwrap();
    let mut first = [0u8; 100];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let o = dump.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
}

// postmortem: after a disk-full failure, SIGTERM logged "log flushed, bye" and exited 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_log_failed_exits_non_zero_naming_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port, Some(4 << 20));
    let c = client(port).await;
    location(&c).await;
    // Write until the log fails (at most 200,000 changes, a few MB each 10,000).
    let mut failed = false;
    for round in 0..200u128 {
        let statuses = changes(&c, 1_000 + round * 1_000, 1_000).await;
        if statuses.iter().any(|&s| s != 0) {
            assert!(
                statuses
                    .iter()
                    .all(|&s| s == 0 || s == 100 || s == u16::MAX),
                "a write past the file limit is a storage failure (100): {statuses:?}"
            );
            failed = true;
            break;
        }
    }
    assert!(failed, "the log never failed under a 4 MiB file limit");
    drop(c);
    let (status, err) = stop(server, dir.path());
    assert!(
        !status.success(),
        "a stop after a log failure exits non-zero: {err}"
    );
    assert!(err.contains("log failure"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

// postmortem: error messages carried Rust Debug text (`decode: decode: UnexpectedEnd {
// additional: 2 }`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_request_payload_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port, None);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "t".into(),
        token: String::new(),
    };
    s.write_all(&frame_of(FrameKind::Hello, 0, &hello).unwrap().encode())
        .await
        .unwrap();
    // A request whose payload says one operation and ends two bytes into it.
    let bad = Frame::new(FrameKind::Request, 7, vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    s.write_all(&bad.encode()).await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await;
    let mut at = 0;
    let mut messages = Vec::new();
    while let Ok(Some((f, used))) = Frame::parse(&back[at..], usize::MAX) {
        at += used;
        if f.kind == FrameKind::Error {
            let e: ErrorFrame = decode_payload(&f.payload).unwrap();
            assert_eq!(e.status, 102);
            messages.push(e.message);
        }
    }
    assert_eq!(messages.len(), 1, "one error frame: {messages:?}");
    let m = &messages[0];
    assert!(
        !m.contains('{') && !m.contains("UnexpectedEnd") && !m.contains("decode: decode"),
        "{m}"
    );
    let (status, err) = stop(server, dir.path());
    assert!(status.success(), "{status}: {err}");
}
