//! Crash test: a child process (this test binary, re-run with `--ignored crash_child`) runs
//! a durable engine under concurrent adjusts, carts, fulfils and releases, printing `SEND`
//! before and `ACK` after every acknowledged operation. The parent kills it with SIGKILL at
//! a random moment, reopens the data directory in process and checks: every acknowledged
//! operation is present, nothing unacknowledged is half-applied (carts whole or absent),
//! on-hand stock is explained by adjustments and fulfilments, reserved equals the sum of
//! holds, no oversell. Cycles continue on the same directory (recovery of a recovery).
//! OMNISTOCK_CRASH_CYCLES sets the number of cycles (default 20).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Proc, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use omnistock::domain::{
    AdjustReason, CatalogCommand, Channel, Location, LocationKind, SkuCommand,
};
use omnistock::engine::{Command, Engine, PersistConfig, Request, ReserveLine, ReserveRequest};
use parking_lot::Mutex;
use rand::prelude::*;

const DIR_ENV: &str = "OMNISTOCK_CRASH_DIR";
const CYCLE_ENV: &str = "OMNISTOCK_CRASH_CYCLE";
const SKUS: usize = 8;

fn persist(dir: &str) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    c.checkpoint_every_records = 3_000;
    c.checkpoint_poll = Duration::from_millis(50);
    c
}

async fn setup(e: &Engine) {
    let loc = Location {
        id: loc("wh"),
        kind: LocationKind::Warehouse,
        region: "FR".into(),
    };
    let ch = Channel {
        id: chan("web"),
        locations: vec![loc.id.clone()],
        buffer: 0,
        cap: None,
    };
    // Fixed request ids: on a restart the same requests replay their original outcome.
    e.execute(Request {
        id: 1,
        command: Command::Catalog(CatalogCommand::UpsertLocation(loc)),
    })
    .await
    .expect("location");
    e.execute(Request {
        id: 2,
        command: Command::Catalog(CatalogCommand::UpsertChannel(ch)),
    })
    .await
    .expect("channel");
}

fn say(out: &Mutex<std::io::Stdout>, line: String) {
    let mut o = out.lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

async fn child_task(e: Arc<Engine>, cycle: u64, task: u64, out: Arc<Mutex<std::io::Stdout>>) {
    let mut rng = StdRng::seed_from_u64(cycle * 1000 + task);
    let mut mine: Vec<u128> = Vec::new();
    for n in 0u64.. {
        let req = (u128::from(cycle) << 64) | (u128::from(task) << 40) | u128::from(n + 1);
        let (line, command) = match rng.gen_range(0..10) {
            0..=2 => {
                let s = rng.gen_range(0..SKUS);
                let q = rng.gen_range(1..6);
                (
                    format!("adj {s} {q}"),
                    Command::Stock {
                        sku: sku(&format!("S{s}")),
                        command: SkuCommand::Adjust {
                            location: loc("wh"),
                            delta: q,
                            reason: AdjustReason::Receipt,
                            reference: format!("c{cycle}"),
                        },
                    },
                )
            }
            3..=6 => {
                let k = rng.gen_range(1..=3);
                let mut picked: Vec<usize> = (0..SKUS).collect();
                picked.shuffle(&mut rng);
                let lines: Vec<(usize, u32)> = picked[..k]
                    .iter()
                    .map(|s| (*s, rng.gen_range(1..3)))
                    .collect();
                let desc: Vec<String> = lines.iter().map(|(s, q)| format!("{s}:{q}")).collect();
                mine.push(req);
                (
                    format!("res {req} {}", desc.join(",")),
                    Command::Reserve(ReserveRequest {
                        reservation: req,
                        channel: chan("web"),
                        lines: lines
                            .iter()
                            .map(|(s, q)| ReserveLine {
                                sku: sku(&format!("S{s}")),
                                qty: *q,
                                location: None,
                            })
                            .collect(),
                        allow_split: false,
                        ttl_ms: 3_600_000,
                    }),
                )
            }
            _ if !mine.is_empty() => {
                let r = mine.swap_remove(rng.gen_range(0..mine.len()));
                if rng.gen_bool(0.5) {
                    (
                        format!("ful {r}"),
                        Command::Fulfill {
                            reservation: r,
                            lines: None,
                        },
                    )
                } else {
                    (format!("rel {r}"), Command::Release { reservation: r })
                }
            }
            _ => continue,
        };
        say(&out, format!("SEND {req} {line}"));
        if e.execute(Request { id: req, command }).await.is_ok() {
            say(&out, format!("ACK {req}"));
        }
    }
}

/// Entry point of the child process; does nothing unless started by the parent.
#[test]
#[ignore = "run by crash_recovery_keeps_every_acknowledged_operation as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var(CYCLE_ENV)
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let e = Arc::new(Engine::open(persist(&dir)).await.expect("open"));
        setup(&e).await;
        let out = Arc::new(Mutex::new(std::io::stdout()));
        say(&out, "READY".into());
        let tasks: Vec<_> = (0..8)
            .map(|t| tokio::spawn(child_task(e.clone(), cycle, t, out.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[derive(Default)]
struct Seen {
    sent: HashMap<u128, String>,
    acked: HashSet<u128>,
}

fn run_child(dir: &str, cycle: u64, kill_after: Duration) -> Seen {
    let exe = std::env::current_exe().unwrap();
    let mut child = Proc::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(CYCLE_ENV, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Seen::default();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test crash_child ... " without a newline before the test runs.
            if line.ends_with("READY") {
                let _ = tx.send(());
            } else if let Some(rest) = line.strip_prefix("SEND ") {
                let (id, op) = rest.split_once(' ').unwrap();
                seen.sent.insert(id.parse().unwrap(), op.to_string());
            } else if let Some(id) = line.strip_prefix("ACK ") {
                seen.acked.insert(id.parse().unwrap());
            }
        }
        seen
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    if ready.is_ok() {
        std::thread::sleep(kill_after);
    }
    // Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    ready.expect("child became ready within 60 s");
    reader.join().unwrap()
}

#[derive(Default, Debug)]
struct Book {
    adj_acked: i64,
    adj_sent: i64,
    ful_acked: i64,
    ful_sent: i64,
}

async fn verify(dir: &str, all: &Seen) {
    let e = Engine::open(persist(dir)).await.expect("reopen after kill");
    let mut book: Vec<Book> = (0..SKUS).map(|_| Book::default()).collect();
    let mut carts: HashMap<u128, Vec<(usize, u32)>> = HashMap::new();
    for (id, op) in &all.sent {
        if let Some(rest) = op.strip_prefix("res ") {
            let (_, lines) = rest.split_once(' ').unwrap();
            let l = lines.split(',').map(|x| {
                let (s, q) = x.split_once(':').unwrap();
                (s.parse().unwrap(), q.parse().unwrap())
            });
            carts.insert(*id, l.collect());
        }
    }
    let mut ended_acked = HashSet::new();
    let mut ended_sent = HashSet::new();
    for (id, op) in &all.sent {
        let acked = all.acked.contains(id);
        let parts: Vec<&str> = op.split(' ').collect();
        match parts[0] {
            "adj" => {
                let (s, q): (usize, i64) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
                book[s].adj_sent += q;
                if acked {
                    book[s].adj_acked += q;
                }
            }
            "ful" | "rel" => {
                let r: u128 = parts[1].parse().unwrap();
                ended_sent.insert(r);
                if acked {
                    ended_acked.insert(r);
                }
                if parts[0] == "ful" {
                    for (s, q) in &carts[&r] {
                        book[*s].ful_sent += i64::from(*q);
                        if acked {
                            book[*s].ful_acked += i64::from(*q);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (s, b) in book.iter().enumerate() {
        let st = e.sku_state(&sku(&format!("S{s}"))).await;
        let Ok(st) = st else {
            assert_eq!(b.adj_acked, 0, "S{s} lost with acknowledged adjustments");
            continue;
        };
        st.check_invariants().unwrap();
        assert!(!st.oversold(), "S{s} oversold");
        let on_hand = st.on_hand_total() as i64;
        assert!(
            on_hand >= b.adj_acked - b.ful_sent && on_hand <= b.adj_sent - b.ful_acked,
            "S{s}: on_hand {on_hand} not explained by {b:?}"
        );
    }
    for (id, lines) in &carts {
        let view = e.reservation(*id);
        if all.acked.contains(id) && !ended_sent.contains(id) {
            let v = view.unwrap_or_else(|| panic!("acknowledged reservation {id} lost"));
            assert_eq!(v.lines.len(), lines.len(), "reservation {id} is whole");
        } else if ended_acked.contains(id) {
            assert!(
                view.is_none(),
                "reservation {id} ended (acknowledged) but present"
            );
        } else if let Some(v) = view {
            assert_eq!(
                v.lines.len(),
                lines.len(),
                "unacknowledged reservation {id} half-applied"
            );
        }
    }
    e.shutdown();
}

#[test]
fn crash_recovery_keeps_every_acknowledged_operation() {
    let cycles: u64 = std::env::var("OMNISTOCK_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let mut all = Seen::default();
    let mut rng = StdRng::seed_from_u64(7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for cycle in 1..=cycles {
        let kill_after = Duration::from_millis(rng.gen_range(20..400));
        let seen = run_child(&path, cycle, kill_after);
        assert!(
            !seen.acked.is_empty() || cycle > 1,
            "child acknowledged nothing"
        );
        eprintln!(
            "cycle {cycle}: killed after {kill_after:?}: {} sent, {} acknowledged",
            seen.sent.len(),
            seen.acked.len()
        );
        all.sent.extend(seen.sent);
        all.acked.extend(seen.acked);
        rt.block_on(verify(&path, &all));
    }
}
