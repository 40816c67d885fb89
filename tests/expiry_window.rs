//! Requests on a reservation while its expiry is running (docs/protocol.md section 8).
//!
//! The expiry takes the reservation's index entry while it releases the holds on its SKUs.
//! The window is entered on purpose, not by timing: the engine runs one actor arbiter, a
//! test task blocks that arbiter's thread, and the expiry is polled exactly once, so it
//! has taken the reservation and is waiting for a SKU actor that cannot run until the test
//! lets the thread go. In that window a FULFIL, EXTEND or RELEASE with a fresh request id
//! answers 15 `reservation_expired` (the reservation is past its expiry and being
//! released), not 16; a request on a reservation that another *request* holds answers 16
//! (retry), and a resend of a request id still in flight answers 16 and, once done, the
//! original outcome.

mod common;

use std::pin::pin;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::Poll;

use common::*;
use omnistock::domain::{Rejection, ReservationId};
use omnistock::engine::{
    Command, Engine, EngineConfig, EngineError, Failure, ManualClock, Outcome, PersistConfig,
    Request,
};
use omnistock::wal::FaultInjector;

const T0: u64 = 1_000_000;

/// An engine on a manual clock with one arbiter (every SKU actor on one thread) and no
/// expiry driver (the test runs `expire_due`).
async fn engine() -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let cfg = EngineConfig {
        arbiters: 1,
        expiry_driver: false,
        ..EngineConfig::default()
    };
    let e = Engine::start_in_memory_with_clock(cfg, clock.clone()).expect("engine");
    small_catalog(&e).await;
    for s in ["A", "B"] {
        adjust(&e, s, "wh-a", 10).await.unwrap();
    }
    (e, clock)
}

/// Blocks the engine's only arbiter thread until the returned sender is dropped or sent
/// to; returns once the thread is blocked, so no SKU actor runs from then on.
fn block_arbiter(e: &Engine) -> mpsc::Sender<()> {
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    assert!(e.spawn_on_arbiter(0, async move {
        blocked_tx.send(()).expect("test waits");
        // Blocking the thread on purpose: the actors on it wait until the test says.
        let _ = release_rx.recv();
    }));
    blocked_rx.recv().expect("arbiter blocked");
    release_tx
}

fn rejection(r: Result<Arc<Outcome>, Failure>) -> Rejection {
    match r {
        Err(Failure::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn fulfil(reservation: ReservationId) -> Command {
    Command::Fulfill {
        reservation,
        lines: None,
    }
}

fn extend(reservation: ReservationId) -> Command {
    Command::Extend {
        reservation,
        ttl_ms: 60_000,
    }
}

fn release(reservation: ReservationId) -> Command {
    Command::Release { reservation }
}

/// FULFIL, EXTEND and RELEASE with fresh ids while the expiry of `res` runs answer 15;
/// afterwards the reservation is gone (6) and its units are back.
async fn requests_while_expiring_answer_expired(lines: &[(&str, u32)]) {
    let (e, clock) = engine().await;
    let res = 7;
    exec(&e, reserve_cmd(res, "web", lines, 1_000))
        .await
        .unwrap();
    clock.advance(1_000);
    let release_arbiter = block_arbiter(&e);
    let mut expiry = pin!(e.expire_due());
    // One poll: the expiry takes the reservation and waits for its SKUs' actors.
    assert!(futures::poll!(expiry.as_mut()).is_pending());
    for command in [fulfil(res), extend(res), release(res)] {
        let what = format!("{command:?}");
        let r = exec(&e, command).await;
        assert_eq!(rejection(r), Rejection::ReservationExpired(res), "{what}");
    }
    drop(release_arbiter);
    assert_eq!(expiry.await, 1);
    assert!(e.reservation(res).is_none());
    for command in [fulfil(res), release(res)] {
        let r = exec(&e, command).await;
        assert_eq!(rejection(r), Rejection::ReservationNotFound(res));
    }
    for (s, _) in lines {
        let st = e.sku_state(&sku(s)).await.unwrap();
        assert_eq!(st.buckets.iter().map(|b| b.reserved).sum::<u32>(), 0, "{s}");
    }
}

#[tokio::test]
async fn fulfil_extend_release_while_a_one_sku_expiry_runs_answer_expired_not_in_progress() {
    requests_while_expiring_answer_expired(&[("A", 2)]).await;
}

#[tokio::test]
async fn fulfil_extend_release_while_a_two_sku_expiry_runs_answer_expired_not_in_progress() {
    requests_while_expiring_answer_expired(&[("A", 2), ("B", 1)]).await;
}

/// A resend of the expiring reservation's own fulfil (same id, same content) while the
/// first attempt is in flight answers 16 with the request id; another request on the same
/// reservation answers 16 with the reservation id; once the first is done, the resend
/// returns its outcome (the same value) and changes nothing.
async fn requests_while_a_request_runs_answer_in_progress(lines: &[(&str, u32)]) {
    let (e, _clock) = engine().await;
    let res = 8;
    exec(&e, reserve_cmd(res, "web", lines, 60_000))
        .await
        .unwrap();
    let release_arbiter = block_arbiter(&e);
    let first = Request {
        id: rid(),
        command: fulfil(res),
    };
    let mut running = pin!(e.execute(first.clone()));
    assert!(futures::poll!(running.as_mut()).is_pending());
    let resend = e.execute(first.clone()).await;
    assert_eq!(rejection(resend), Rejection::InProgress(first.id));
    for command in [fulfil(res), extend(res), release(res)] {
        let what = format!("{command:?}");
        let r = rejection(exec(&e, command).await);
        assert_eq!(r, Rejection::ReservationBusy(res), "{what}");
        assert_eq!(r.code() as u16, 16, "{what}");
        assert!(r.is_retriable(), "{what}");
    }
    drop(release_arbiter);
    let outcome = running.await.expect("the first fulfil");
    let again = e.execute(first).await.expect("resend after it finished");
    assert_eq!(again, outcome, "the resend returns the original outcome");
    assert!(e.reservation(res).is_none());
}

#[tokio::test]
async fn a_resend_or_another_request_while_a_one_sku_fulfil_runs_answers_in_progress() {
    requests_while_a_request_runs_answer_in_progress(&[("A", 2)]).await;
}

#[tokio::test]
async fn a_resend_or_another_request_while_a_two_sku_fulfil_runs_answers_in_progress() {
    requests_while_a_request_runs_answer_in_progress(&[("A", 2), ("B", 1)]).await;
}

/// A request that holds a reservation past its expiry time keeps it from the expiry, which
/// looks again later; requests beside it answer 16, not 15 (the first may still extend it).
#[tokio::test]
async fn an_extend_in_flight_past_the_expiry_time_holds_off_the_expiry() {
    let (e, clock) = engine().await;
    let res = 9;
    exec(&e, reserve_cmd(res, "web", &[("A", 2)], 1_000))
        .await
        .unwrap();
    clock.advance(999);
    let release_arbiter = block_arbiter(&e);
    let mut extending = pin!(exec(&e, extend(res)));
    assert!(futures::poll!(extending.as_mut()).is_pending());
    clock.advance(1);
    let mut expiry = pin!(e.expire_due());
    // The expiry finds the entry taken and re-queues it a millisecond later: done at once.
    assert_eq!(futures::poll!(expiry.as_mut()), Poll::Ready(0));
    let r = exec(&e, fulfil(res)).await;
    assert_eq!(rejection(r), Rejection::ReservationBusy(res));
    drop(release_arbiter);
    extending.await.expect("extended");
    clock.advance(1);
    assert_eq!(
        e.expire_due().await,
        0,
        "extended to a minute from T0 + 999"
    );
    assert_eq!(e.reservation(res).unwrap().expires_at_ms, T0 + 999 + 60_000);
}

/// A multi-SKU expiry logs its group's first record like a request, so log back-pressure
/// can refuse it before anything expired. Its deadline was already taken off the queue: it
/// must be put back and tried again, or the hold would never expire (until a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_the_log_refuses_for_back_pressure_is_tried_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fault = Arc::new(FaultInjector::new());
    let mut p = PersistConfig::new(dir.path());
    p.engine = EngineConfig {
        arbiters: 1,
        expiry_driver: false,
        ..EngineConfig::default()
    };
    p.checkpoint_every_records = 0;
    p.clock = Some(clock.clone());
    p.wal_fault = Some(fault.clone());
    p.max_pending_records = 4;
    let e = Arc::new(Engine::open(p).await.unwrap());
    small_catalog(&e).await;
    for s in ["A", "B"] {
        adjust(&e, s, "wh-a", 10).await.unwrap();
    }
    let res = 10;
    exec(&e, reserve_cmd(res, "web", &[("A", 2), ("B", 1)], 1_000))
        .await
        .unwrap();
    clock.advance(1_000);

    // Stall the log's writer and fill its queue until a request is refused as overloaded.
    fault.stall_writes();
    let mut accepted = Vec::new();
    let mut refused = false;
    'fill: for _ in 0..100 {
        let before = e.last_seq();
        let e2 = e.clone();
        let h = tokio::spawn(async move { adjust(&e2, "C", "wh-a", 1).await });
        // Either its record is in the log's queue (it then waits for the writer) or it was
        // answered at once: look until one of the two (bounded; no outcome depends on time).
        for _ in 0..20_000 {
            if e.last_seq() > before {
                accepted.push(h);
                continue 'fill;
            }
            if h.is_finished() {
                let r = h.await.unwrap();
                assert!(
                    matches!(r, Err(Failure::Error(EngineError::Overloaded(_)))),
                    "{r:?}"
                );
                refused = true;
                break 'fill;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("the adjust neither queued nor answered in 20,000 looks");
    }
    assert!(refused, "the log never pushed back");

    // The expiry is refused too: nothing expired, the reservation is still there.
    assert_eq!(e.expire_due().await, 0);
    assert!(e.reservation(res).is_some());
    let r = exec(&e, fulfil(res)).await;
    assert_eq!(rejection(r), Rejection::ReservationExpired(res));

    fault.resume_writes();
    for h in accepted {
        h.await.unwrap().expect("queued adjust");
    }
    // Tried again, a moment later.
    clock.advance(100);
    assert_eq!(e.expire_due().await, 1);
    assert!(e.reservation(res).is_none());
    for s in ["A", "B"] {
        let st = e.sku_state(&sku(s)).await.unwrap();
        assert_eq!(st.buckets.iter().map(|b| b.reserved).sum::<u32>(), 0, "{s}");
    }
    let e = Arc::try_unwrap(e).ok().expect("the only handle");
    tokio::task::spawn_blocking(move || e.shutdown())
        .await
        .unwrap();
}
