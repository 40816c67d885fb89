//! Deleting a location (`DELETE_LOCATION` 0x0306) or a channel (`DELETE_CHANNEL` 0x0307):
//! refused with `in_use` (17) and facts that say what still refers to it, accepted when
//! nothing does; deletes racing reserves and stock commands never leave a hold or stock on
//! a deleted entry; deleted stays deleted across a restart, a checkpoint and a kill -9;
//! a resend with the same request id answers the same; re-creating works. In process
//! (the engine) and on the real `omnistock serve` (the wire, ctl).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use omnistock::client::{Client, ClientConfig, ClientError, Rejection as Wire};
use omnistock::domain::{CatalogCommand, CatalogRef, Location, LocationKind, Rejection};
use omnistock::engine::{Command, Engine, EngineConfig, Failure, PersistConfig, Request};
use omnistock::protocol::*;

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const ADMIN: &str = "catdel-admin-token";
const CHECKOUT: &str = "catdel-checkout-token";

fn delete_location(l: &str) -> Command {
    Command::Catalog(CatalogCommand::DeleteLocation(loc(l)))
}
fn delete_channel(c: &str) -> Command {
    Command::Catalog(CatalogCommand::DeleteChannel(chan(c)))
}
fn upsert_location(l: &str) -> Command {
    Command::Catalog(CatalogCommand::UpsertLocation(Location {
        id: loc(l),
        kind: LocationKind::Store,
        region: "FR".into(),
    }))
}
fn upsert_channel(c: &str, locs: &[&str]) -> Command {
    Command::Catalog(CatalogCommand::UpsertChannel(omnistock::domain::Channel {
        id: chan(c),
        locations: locs.iter().map(|l| loc(l)).collect(),
        buffer: 0,
        cap: None,
    }))
}

fn in_use(r: Result<Arc<omnistock::engine::Outcome>, Failure>) -> Box<omnistock::domain::InUse> {
    match r {
        Err(Failure::Rejected(Rejection::InUse(u))) => u,
        other => panic!("expected in_use, got {other:?}"),
    }
}

/// Holds on `channel` in the SKU's state.
async fn holds_on(e: &Engine, s: &str, channel: &str) -> usize {
    let st = e.sku_state(&sku(s)).await.unwrap();
    st.holds
        .values()
        .filter(|h| h.channel.as_str() == channel)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_delete_racing_reserves_never_leaves_a_hold_on_the_deleted_channel() {
    let e = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&e).await;
    adjust(&e, "R", "wh-a", 100_000).await.unwrap();
    let (mut deleted, mut refused) = (0, 0);
    for round in 0..24u128 {
        let ch = format!("race{round}");
        exec(&e, upsert_channel(&ch, &["wh-a"])).await.unwrap();
        let reserves: Vec<_> = (0..24u128)
            .map(|i| {
                let (e, ch) = (e.clone(), ch.clone());
                tokio::spawn(async move {
                    let id = 1_000_000 + round * 1000 + i;
                    exec(&e, reserve_cmd(id, &ch, &[("R", 1)], 600_000)).await
                })
            })
            .collect();
        // A different head start each round, so the delete lands before, among and after
        // the reserves.
        for _ in 0..(round % 8) * 3 {
            tokio::task::yield_now().await;
        }
        let del = exec(&e, delete_channel(&ch)).await;
        let mut placed = 0u64;
        for t in reserves {
            match t.await.unwrap() {
                Ok(_) => placed += 1,
                Err(Failure::Rejected(Rejection::UnknownChannel(_) | Rejection::Busy)) => {}
                Err(other) => panic!("reserve answered {other:?}"),
            }
        }
        match del {
            Ok(_) => {
                deleted += 1;
                // Nothing was open when it went: every reserve that got through was refused.
                assert_eq!(
                    placed, 0,
                    "round {round}: a reserve was placed on a deleted channel"
                );
                assert_eq!(holds_on(&e, "R", &ch).await, 0);
                let r = exec(&e, reserve_cmd(9_000_000 + round, &ch, &[("R", 1)], 60_000)).await;
                assert!(matches!(
                    r,
                    Err(Failure::Rejected(Rejection::UnknownChannel(_)))
                ));
            }
            Err(Failure::Rejected(Rejection::InUse(u))) => {
                refused += 1;
                assert_eq!(u.target, CatalogRef::Channel(chan(&ch)));
                // Counted after every reserve that began before it had finished.
                assert!(u.refs.reservations >= 1 && u.refs.reservations <= placed);
                assert!(u.refs.example_reservation.is_some());
                // Release them all: then it goes.
                for i in 0..24u128 {
                    let id = 1_000_000 + round * 1000 + i;
                    if e.reservation(id).is_some() {
                        exec(&e, Command::Release { reservation: id })
                            .await
                            .unwrap();
                    }
                }
                exec(&e, delete_channel(&ch)).await.unwrap();
                assert_eq!(holds_on(&e, "R", &ch).await, 0);
            }
            Err(other) => panic!("delete answered {other:?}"),
        }
        assert!(!e.catalog().channels.contains_key(&chan(&ch)));
    }
    eprintln!("channel deletes racing reserves: {deleted} accepted, {refused} refused");
    assert_eq!(deleted + refused, 24);
}

/// Reserve-and-release loops on a channel while it is deleted (the delete retried while in
/// use): every reserve that was placed is logged before the delete, none after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_deleted_under_a_stream_of_reserves_has_no_reserve_after_its_record() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let e = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&e).await;
    adjust(&e, "Q", "wh-a", 100_000).await.unwrap();
    let next = Arc::new(AtomicU64::new(50_000_000));
    for round in 0..8 {
        let ch = format!("stream{round}");
        exec(&e, upsert_channel(&ch, &["wh-a"])).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let loops: Vec<_> = (0..8)
            .map(|_| {
                let (e, ch, stop, next) = (e.clone(), ch.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for _ in 0..2_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let id = u128::from(next.fetch_add(1, Ordering::Relaxed));
                        match exec(&e, reserve_cmd(id, &ch, &[("Q", 1)], 600_000)).await {
                            Ok(o) => {
                                seqs.push(o.seq);
                                exec(&e, Command::Release { reservation: id })
                                    .await
                                    .unwrap();
                            }
                            Err(Failure::Rejected(Rejection::UnknownChannel(_))) => break,
                            Err(Failure::Rejected(Rejection::Busy)) => {
                                tokio::task::yield_now().await
                            }
                            Err(other) => panic!("reserve answered {other:?}"),
                        }
                    }
                    seqs
                })
            })
            .collect();
        let mut deleted_at = None;
        // A head start for the reserves.
        tokio::time::sleep(Duration::from_millis(2)).await;
        for _ in 0..2_000 {
            match exec(&e, delete_channel(&ch)).await {
                Ok(o) => {
                    deleted_at = Some(o.seq);
                    break;
                }
                Err(Failure::Rejected(Rejection::InUse(_))) => tokio::task::yield_now().await,
                Err(other) => panic!("delete answered {other:?}"),
            }
        }
        stop.store(true, Ordering::SeqCst);
        let mut placed = Vec::new();
        for l in loops {
            placed.extend(l.await.unwrap());
        }
        let Some(d) = deleted_at else {
            // Never free in 2,000 tries: nothing to check this round (no timing assumed).
            continue;
        };
        eprintln!(
            "round {round}: {} reserves placed, deleted at seq {d}",
            placed.len()
        );
        let late: Vec<u64> = placed.iter().copied().filter(|s| *s > d).collect();
        assert!(
            late.is_empty(),
            "round {round}: reserves logged after the delete at {d}: {late:?}"
        );
        assert_eq!(holds_on(&e, "Q", &ch).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_location_delete_racing_stock_commands_never_leaves_stock_at_the_deleted_location() {
    let e = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&e).await;
    let (mut deleted, mut refused) = (0, 0);
    for round in 0..16u32 {
        let l = format!("loc{round}");
        exec(&e, upsert_location(&l)).await.unwrap();
        let adjusts: Vec<_> = (0..16u32)
            .map(|i| {
                let (e, l) = (e.clone(), l.clone());
                tokio::spawn(async move { adjust(&e, &format!("S{}", i % 4), &l, 1).await })
            })
            .collect();
        for _ in 0..(round % 8) * 3 {
            tokio::task::yield_now().await;
        }
        let del = exec(&e, delete_location(&l)).await;
        let mut applied = 0u64;
        for t in adjusts {
            match t.await.unwrap() {
                Ok(_) => applied += 1,
                Err(Failure::Rejected(Rejection::UnknownLocation(_) | Rejection::Busy)) => {}
                Err(other) => panic!("adjust answered {other:?}"),
            }
        }
        let stocked = |e: Arc<Engine>, l: String| async move {
            let mut n = 0;
            for s in 0..4 {
                if let Ok(st) = e.sku_state(&sku(&format!("S{s}"))).await {
                    n += st
                        .buckets
                        .iter()
                        .filter(|b| b.location.as_str() == l && b.on_hand > 0)
                        .count();
                }
            }
            n
        };
        match del {
            Ok(_) => {
                deleted += 1;
                assert_eq!(
                    applied, 0,
                    "round {round}: stock landed at a deleted location"
                );
                assert_eq!(stocked(e.clone(), l.clone()).await, 0);
            }
            Err(Failure::Rejected(Rejection::InUse(u))) => {
                refused += 1;
                assert!(u.refs.skus_with_stock >= 1 && u.refs.skus_with_stock <= 4);
                assert!(applied >= 1);
                assert!(stocked(e.clone(), l.clone()).await >= 1);
            }
            Err(other) => panic!("delete answered {other:?}"),
        }
    }
    eprintln!("location deletes racing receipts: {deleted} accepted, {refused} refused");
}

fn persist(dir: &std::path::Path) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    c.checkpoint_every_records = 0;
    // Idle SKUs go passive quickly: the delete's scan reads them from compact bytes.
    c.engine.passivate_after = Duration::from_millis(40);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_stays_deleted_across_a_checkpoint_and_a_restart_and_passive_skus_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(persist(dir.path())).await.unwrap();
    small_catalog(&e).await;
    exec(&e, upsert_location("gone")).await.unwrap();
    adjust(&e, "P", "gone", 3).await.unwrap();
    // Wait until P is passive (bounded).
    for _ in 0..200 {
        if e.stats().active_skus == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = in_use(exec(&e, delete_location("gone")).await);
    assert_eq!(
        (u.refs.skus_with_stock, u.refs.example_sku.clone()),
        (1, Some(sku("P")))
    );
    adjust(&e, "P", "gone", -3).await.unwrap();
    let del = Request {
        id: 4242,
        command: delete_location("gone"),
    };
    let first = e.execute(del.clone()).await.unwrap();
    exec(&e, delete_channel("store")).await.unwrap();
    // The empty bucket stays in the state, hidden from reads.
    assert!(e
        .sku_state(&sku("P"))
        .await
        .unwrap()
        .buckets
        .iter()
        .any(|b| b.location.as_str() == "gone"));
    assert!(e.get(&sku("P")).await.unwrap().buckets.is_empty());
    e.checkpoint().await.unwrap();
    e.shutdown();
    drop(e);
    let e = Engine::open(persist(dir.path())).await.unwrap();
    let c = e.catalog();
    assert!(!c.locations.contains_key(&loc("gone")));
    assert!(!c.channels.contains_key(&chan("store")));
    assert_eq!(
        e.execute(del.clone()).await.unwrap(),
        first,
        "a resend answers the same"
    );
    // After the checkpoint, in the log: replayed on the next start.
    exec(&e, delete_location("ds-c")).await.unwrap();
    e.shutdown();
    drop(e);
    let e = Engine::open(persist(dir.path())).await.unwrap();
    assert!(!e.catalog().locations.contains_key(&loc("ds-c")));
    assert!(!e.catalog().locations.contains_key(&loc("gone")));
    let r = adjust(&e, "P", "gone", 1).await;
    assert!(matches!(
        r,
        Err(Failure::Rejected(Rejection::UnknownLocation(_)))
    ));
    // Re-created: its old number, its empty bucket back, stock works again.
    exec(&e, upsert_location("gone")).await.unwrap();
    adjust(&e, "P", "gone", 2).await.unwrap();
    let v = e.get(&sku("P")).await.unwrap();
    assert_eq!(v.buckets.len(), 1);
    assert_eq!(
        (v.buckets[0].location.as_str(), v.buckets[0].on_hand),
        ("gone", 2)
    );
    exec(&e, upsert_channel("store", &["gone"])).await.unwrap();
    exec(&e, reserve_cmd(77, "store", &[("P", 1)], 60_000))
        .await
        .unwrap();
    e.shutdown();
}

// ---- the real server ---------------------------------------------------------------------

async fn serve(data: &std::path::Path, extra: &[&str]) -> (tokio::process::Child, u16, u16) {
    serve_with_tokens(data, &format!("{ADMIN}:admin,{CHECKOUT}:checkout"), extra).await
}

async fn client(port: u16, token: &str) -> Client {
    Client::connect(ClientConfig::new(format!("127.0.0.1:{port}")).token(token))
        .await
        .expect("connect")
}

/// kill -9, and wait for the process to be gone (its directory lock with it).
async fn kill9(mut child: tokio::process::Child) {
    child.kill().await.expect("kill -9");
}

fn facts(r: Result<Applied, ClientError>) -> InUseFacts {
    match r {
        Err(ClientError::Status {
            status: 17,
            rejection: Wire::InUse(Some(f)),
            ..
        }) => *f,
        other => panic!("expected in_use with facts, got {other:?}"),
    }
}

fn status(r: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match r {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

async fn location(c: &Client, id: &str) {
    c.apply(Op::UpsertLocation(UpsertLocation {
        request_id: rid(),
        location: WireLocation {
            id: id.into(),
            kind: WireLocationKind::Warehouse,
            region: "FR".into(),
        },
    }))
    .await
    .expect("location");
}

async fn channel(c: &Client, id: &str, locs: &[&str]) {
    c.apply(Op::UpsertChannel(UpsertChannel {
        request_id: rid(),
        channel: WireChannel {
            id: id.into(),
            locations: locs.iter().map(|l| l.to_string()).collect(),
            buffer: 0,
            cap: None,
        },
    }))
    .await
    .expect("channel");
}

fn reserve(id: u128, channel: &str, sku: &str) -> Reserve {
    Reserve {
        request_id: rid(),
        reservation: id,
        channel: channel.into(),
        lines: vec![WireLine {
            sku: sku.into(),
            qty: 1,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 600_000,
    }
}

async fn set_on_hand(
    c: &Client,
    sku: &str,
    location: &str,
    on_hand: u32,
) -> Result<Applied, ClientError> {
    c.apply(Op::SetOnHand(SetOnHand {
        request_id: rid(),
        sku: sku.into(),
        location: location.into(),
        on_hand,
        expected: None,
        reference: String::new(),
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_server_deletes_are_refused_in_use_with_the_reason_then_accepted_and_survive_kill_9()
{
    let dir = tempfile::tempdir().unwrap();
    let (child, port, _) = serve(dir.path(), &[]).await;
    let c = client(port, ADMIN).await;
    for l in ["wh", "st", "ds"] {
        location(&c, l).await;
    }
    channel(&c, "web", &["wh"]).await;
    channel(&c, "shop", &["st", "wh"]).await;
    set_on_hand(&c, "A", "wh", 10).await.unwrap();
    c.reserve(reserve(501, "web", "A")).await.unwrap();

    // A channel with an open reservation.
    let f = facts(c.delete_channel(rid(), "web").await);
    assert_eq!((f.kind, f.id.as_str()), (in_use_kind::CHANNEL, "web"));
    assert_eq!((f.reservations, f.example_reservation), (1, 501));
    // A location two channels source, with stock and a hold.
    let f = facts(c.delete_location(rid(), "wh").await);
    assert_eq!((f.kind, f.id.as_str()), (in_use_kind::LOCATION, "wh"));
    assert_eq!(
        (f.channels.clone(), f.channels_total),
        (vec!["shop".to_string(), "web".to_string()], 2)
    );
    assert_eq!(
        (f.skus_with_stock, f.skus_with_holds, f.example_sku.as_str()),
        (1, 1, "A")
    );
    // The checkout role may not delete.
    let checkout = client(port, CHECKOUT).await;
    assert_eq!(
        status(checkout.delete_channel(rid(), "web").await),
        status::FORBIDDEN
    );
    assert_eq!(
        status(checkout.delete_location(rid(), "ds").await),
        status::FORBIDDEN
    );
    // Unknown ids: 3 and 4.
    assert_eq!(status(c.delete_location(rid(), "nowhere").await), 3);
    assert_eq!(status(c.delete_channel(rid(), "nothing").await), 4);

    c.release(Release {
        request_id: rid(),
        reservation: 501,
    })
    .await
    .unwrap();
    let del_web = rid();
    let first = c.delete_channel(del_web, "web").await.unwrap();
    // A resend with the same request id: the same bytes.
    let op = Op::DeleteChannel(DeleteChannel {
        request_id: del_web,
        channel: "web".into(),
    });
    let again = c.batch(std::slice::from_ref(&op)).await.unwrap();
    let once_more = c.batch(std::slice::from_ref(&op)).await.unwrap();
    assert_eq!(again, once_more);
    assert_eq!(decode_payload::<Applied>(&again[0].body).unwrap(), first);
    assert_eq!(status(c.reserve(reserve(502, "web", "A")).await), 4);

    // Still sourced by shop and stocked.
    let f = facts(c.delete_location(rid(), "wh").await);
    assert_eq!(
        (f.channels.clone(), f.skus_with_stock, f.skus_with_holds),
        (vec!["shop".to_string()], 1, 0)
    );
    channel(&c, "shop", &["st"]).await;
    let f = facts(c.delete_location(rid(), "wh").await);
    assert_eq!((f.channels_total, f.skus_with_stock), (0, 1));
    // A safety stock entry alone keeps a location.
    c.apply(Op::SetSafetyStock(SetSafetyStock {
        request_id: rid(),
        sku: "B".into(),
        location: "ds".into(),
        qty: 2,
    }))
    .await
    .unwrap();
    let f = facts(c.delete_location(rid(), "ds").await);
    assert_eq!(
        (
            f.skus_with_safety_stock,
            f.skus_with_stock,
            f.example_sku.as_str()
        ),
        (1, 0, "B")
    );
    // Only empty buckets: it goes.
    set_on_hand(&c, "A", "wh", 0).await.unwrap();
    let del_wh = rid();
    let wh = c.delete_location(del_wh, "wh").await.unwrap();
    assert_eq!(status(set_on_hand(&c, "A", "wh", 1).await), 3);
    assert!(
        c.get_sku("A").await.unwrap().buckets.is_empty(),
        "a deleted location's empty bucket is not shown"
    );

    kill9(child).await;
    let (child, port, _) = serve(dir.path(), &[]).await;
    let c = client(port, ADMIN).await;
    let ids: Vec<String> = c
        .locations()
        .await
        .unwrap()
        .locations
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, ["ds", "st"]);
    let ids: Vec<String> = c
        .channels()
        .await
        .unwrap()
        .channels
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["shop"]);
    assert_eq!(status(c.reserve(reserve(503, "web", "A")).await), 4);
    // The resend after the restart still answers the original outcome, not 3.
    assert_eq!(c.delete_location(del_wh, "wh").await.unwrap(), wh);
    // Re-created, both work again.
    location(&c, "wh").await;
    channel(&c, "web", &["wh"]).await;
    set_on_hand(&c, "A", "wh", 4).await.unwrap();
    c.reserve(reserve(504, "web", "A")).await.unwrap();
    kill9(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_server_a_delete_survives_a_checkpoint_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port, http) = serve(dir.path(), &["--checkpoint-every-records", "1"]).await;
    let c = client(port, ADMIN).await;
    location(&c, "wh").await;
    location(&c, "old").await;
    channel(&c, "web", &["wh"]).await;
    channel(&c, "tmp", &["wh"]).await;
    c.delete_channel(rid(), "tmp").await.unwrap();
    let del = c.delete_location(rid(), "old").await.unwrap();
    // Wait (bounded) until a checkpoint covers the deletes: no record left to replay.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let mut covered = false;
    for _ in 0..150 {
        let m = common::http::get(addr, "/metrics", &[]).await.body;
        if m.lines().any(|l| l == "omnistock_wal_log_records 0") {
            covered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(covered, "no checkpoint within 15 s");
    kill9(child).await;
    let check = std::process::Command::new(BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    let start: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("checkpoint: starts at seq "))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint in {out}"));
    assert!(
        start > del.seq,
        "checkpoint at {start}, delete at {}",
        del.seq
    );
    let (child, port, _) = serve(dir.path(), &[]).await;
    let c = client(port, ADMIN).await;
    let ids: Vec<String> = c
        .locations()
        .await
        .unwrap()
        .locations
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, ["wh"]);
    let ids: Vec<String> = c
        .channels()
        .await
        .unwrap()
        .channels
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["web"]);
    location(&c, "old").await;
    channel(&c, "tmp", &["old"]).await;
    kill9(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_delete_location_and_channel_text_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port, _) = serve(dir.path(), &[]).await;
    let c = client(port, ADMIN).await;
    location(&c, "wh").await;
    location(&c, "spare").await;
    channel(&c, "web", &["wh"]).await;
    let addr = format!("127.0.0.1:{port}");
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["ctl", "--addr", &addr, "--token", ADMIN])
            .args(args)
            .output()
            .expect("ctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = ctl(&["delete-location", "wh"]);
    assert_eq!(code, Some(17));
    assert!(
        err.contains("error: in_use (17): location wh is in use: a source of 1 channel(s) (web)"),
        "{err}"
    );
    let (code, out, _) = ctl(&["--json", "delete-location", "wh"]);
    assert_eq!(code, Some(17));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["error"]["name"], "in_use");
    assert_eq!(j["error"]["retriable"], false);
    assert_eq!(j["error"]["details"]["kind"], "location");
    assert_eq!(
        j["error"]["details"]["channels"],
        serde_json::json!(["web"])
    );
    assert_eq!(
        j["error"]["details"]["example_reservation"],
        serde_json::Value::Null
    );
    set_on_hand(&c, "A", "wh", 5).await.unwrap();
    c.reserve(reserve(0xabc, "web", "A")).await.unwrap();
    let (code, out, _) = ctl(&["--json", "delete-channel", "web"]);
    assert_eq!(code, Some(17));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["error"]["details"]["reservations"], 1);
    assert_eq!(
        j["error"]["details"]["example_reservation"],
        "00000000000000000000000000000abc"
    );
    let (code, _, err) = ctl(&["delete-channel", "web"]);
    assert_eq!(code, Some(17));
    assert!(
        err.contains("channel web is in use: 1 open reservation(s)"),
        "{err}"
    );
    let (code, out, _) = ctl(&["--json", "--request-id", "0x77", "delete-location", "spare"]);
    assert_eq!(code, Some(0));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["deleted"], "location");
    assert_eq!(j["id"], "spare");
    assert_eq!(j["request_id"], "00000000000000000000000000000077");
    let seq = j["seq"].as_u64().unwrap();
    // The same request id again: the same answer, not unknown_location.
    let (code, out, _) = ctl(&["--request-id", "0x77", "delete-location", "spare"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("deleted") && out.contains("location spare") && out.contains(&seq.to_string()),
        "{out}"
    );
    let (code, out, _) = ctl(&["--json", "delete-location", "spare"]);
    assert_eq!(code, Some(3));
    assert!(out.contains("unknown_location"), "{out}");
    let (code, _, _) = ctl(&["delete-channel", "nope"]);
    assert_eq!(code, Some(4));
    kill9(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_a_reserve_and_a_delete_of_its_channel_runs_the_delete_last() {
    let e = Engine::start_in_memory(EngineConfig::default()).unwrap();
    small_catalog(&e).await;
    adjust(&e, "F", "wh-a", 10).await.unwrap();
    exec(&e, upsert_channel("solo", &["wh-a"])).await.unwrap();
    let frame = vec![
        (
            Request {
                id: rid(),
                command: delete_channel("solo"),
            },
            1,
        ),
        (
            Request {
                id: rid(),
                command: reserve_cmd(61, "solo", &[("F", 1)], 60_000),
            },
            2,
        ),
    ];
    let answers = e.execute_frame(frame).await;
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    match &answers[0] {
        Err(Failure::Rejected(Rejection::InUse(u))) => assert_eq!(u.refs.reservations, 1),
        other => panic!("{other:?}"),
    }
}
