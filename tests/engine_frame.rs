//! The request frame as the engine's unit of work (`Engine::execute_frame`): the answers
//! of a frame mixing one-SKU reserves, stock commands, carts of several SKUs, fulfils,
//! duplicates and bad requests are each what the request alone would have answered, in
//! request order, with requests on one SKU applied in frame order.

mod common;

use std::sync::Arc;

use common::*;
use omnistock::domain::Rejection;
use omnistock::engine::{Command, Engine, EngineConfig, Failure, Outcome, Request};

fn engine() -> Engine {
    Engine::start_in_memory(EngineConfig {
        expiry_driver: false,
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn req(command: Command) -> (Request, u64) {
    let fp = command_fp(&command);
    (Request { id: rid(), command }, fp)
}

/// Any stable fingerprint of the command's content (the server hashes wire bytes).
fn command_fp(c: &Command) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{c:?}").hash(&mut h);
    h.finish()
}

fn on_hand(s: &omnistock::domain::SkuState) -> u32 {
    s.buckets.iter().map(|b| b.on_hand).sum()
}

fn rejection(r: &Result<Arc<Outcome>, Failure>) -> &Rejection {
    match r {
        Err(Failure::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_mixed_frame_answers_each_request_in_order_and_applies_one_sku_in_frame_order() {
    let e = engine();
    small_catalog(&e).await;
    adjust(&e, "A", "wh-a", 3).await.unwrap(); // web ATP 2
    adjust(&e, "B", "wh-a", 5).await.unwrap(); // web ATP 4
    let frame = vec![
        // 0: a one-SKU reserve takes A's two units.
        req(reserve_cmd(100, "web", &[("A", 2)], 60_000)),
        // 1: the next one on A finds nothing left (applied after 0).
        req(reserve_cmd(101, "web", &[("A", 1)], 60_000)),
        // 2: a stock command on A after both: +4 units.
        req(adjust_cmd("A", "wh-a", 4)),
        // 3: a cart of two SKUs on the general path.
        req(reserve_cmd(102, "web", &[("B", 1), ("C", 1)], 60_000)),
        // 4: request id 0 is refused.
        (
            Request {
                id: 0,
                command: adjust_cmd("A", "wh-a", 1),
            },
            1,
        ),
        // 5: an unknown SKU in a one-SKU reserve.
        req(reserve_cmd(103, "web", &[("NOPE", 1)], 60_000)),
        // 6: a reservation id already used earlier in the frame.
        req(reserve_cmd(100, "web", &[("B", 1)], 60_000)),
        // 7: a zero ttl, refused before any actor.
        req(reserve_cmd(104, "web", &[("B", 1)], 0)),
        // 8, 9: reservation id 0, for one SKU and for a cart.
        req(reserve_cmd(0, "web", &[("B", 1)], 60_000)),
        req(reserve_cmd(0, "web", &[("A", 1), ("B", 1)], 60_000)),
    ];
    let answers = e.execute_frame(frame).await;
    assert_eq!(answers.len(), 10);
    for zero in &answers[8..] {
        assert!(
            matches!(rejection(zero), Rejection::InvalidRequest(m) if m.contains("reservation id")),
            "{zero:?}"
        );
    }
    let placed = answers[0].as_ref().expect("reserve 100");
    assert!(placed.seq > 0);
    assert!(matches!(
        rejection(&answers[1]),
        Rejection::InsufficientStock { available: 0, .. }
    ));
    assert!(answers[2].is_ok(), "{:?}", answers[2]);
    // C has no stock: the cart is refused whole, and B keeps its units.
    assert!(matches!(
        rejection(&answers[3]),
        Rejection::InsufficientStock { .. } | Rejection::UnknownSku(_)
    ));
    assert!(matches!(
        rejection(&answers[4]),
        Rejection::InvalidRequest(_)
    ));
    assert!(matches!(rejection(&answers[5]), Rejection::UnknownSku(_)));
    assert!(matches!(
        rejection(&answers[6]),
        Rejection::ReservationExists(100)
    ));
    assert!(matches!(
        rejection(&answers[7]),
        Rejection::InvalidRequest(_)
    ));

    let a = e.sku_state(&sku("A")).await.unwrap();
    let b = e.sku_state(&sku("B")).await.unwrap();
    assert_eq!(on_hand(&a), 7, "3 + 4");
    assert_eq!(a.reserved_total(), 2, "reservation 100 only");
    assert_eq!(b.reserved_total(), 0, "the refused cart left nothing on B");
    let r = e.reservation(100).expect("reservation 100 indexed");
    assert_eq!(r.lines, vec![(sku("A"), 2)]);
    assert!(e.reservation(101).is_none());
    assert!(e.reservation(102).is_none());
}

#[tokio::test]
async fn a_resent_frame_replays_every_accepted_request_and_applies_nothing_twice() {
    let e = engine();
    small_catalog(&e).await;
    adjust(&e, "A", "wh-a", 10).await.unwrap();
    adjust(&e, "B", "wh-a", 10).await.unwrap();
    let frame = vec![
        req(reserve_cmd(200, "web", &[("A", 2)], 60_000)),
        req(adjust_cmd("A", "wh-a", 1)),
        req(reserve_cmd(201, "web", &[("A", 50)], 60_000)),
        // A cart of two SKUs placed beside them (closed by its marker).
        req(reserve_cmd(202, "web", &[("B", 3), ("A", 1)], 60_000)),
    ];
    let first = e.execute_frame(frame.clone()).await;
    let again = e.execute_frame(frame).await;
    let cart = e.reservation(202).expect("cart 202 indexed");
    assert_eq!(cart.lines, vec![(sku("A"), 1), (sku("B"), 3)]);
    for i in [0, 1, 3] {
        let (a, b) = (first[i].as_ref().unwrap(), again[i].as_ref().unwrap());
        assert_eq!(a, b, "request {i} replays its outcome");
    }
    // The rejected one is evaluated again (nothing was remembered), still rejected.
    assert!(first[2].is_err() && again[2].is_err());
    let a = e.sku_state(&sku("A")).await.unwrap();
    assert_eq!(a.reserved_total(), 3, "2 for 200 and 1 for the cart");
    let b = e.sku_state(&sku("B")).await.unwrap();
    assert_eq!(b.reserved_total(), 3);
}

#[tokio::test]
async fn the_same_request_id_twice_in_one_frame_is_in_progress_the_second_time() {
    let e = engine();
    small_catalog(&e).await;
    adjust(&e, "A", "wh-a", 10).await.unwrap();
    let one = req(adjust_cmd("A", "wh-a", 1));
    let answers = e.execute_frame(vec![one.clone(), one]).await;
    assert!(answers[0].is_ok());
    assert!(matches!(rejection(&answers[1]), Rejection::InProgress(_)));
    let a = e.sku_state(&sku("A")).await.unwrap();
    assert_eq!(on_hand(&a), 11);
}

#[tokio::test]
async fn a_frame_reaches_skus_that_passivated_under_it() {
    let e = engine();
    small_catalog(&e).await;
    let skus: Vec<String> = (0..64).map(|i| format!("P{i}")).collect();
    for s in &skus {
        adjust(&e, s, "wh-a", 5).await.unwrap();
    }
    // Passivation is asynchronous: the frame below races it on every SKU.
    e.passivate_all_now();
    let frame: Vec<_> = skus
        .iter()
        .enumerate()
        .map(|(i, s)| {
            req(reserve_cmd(
                300 + i as u128,
                "web",
                &[(s.as_str(), 1)],
                60_000,
            ))
        })
        .collect();
    let answers = e.execute_frame(frame).await;
    for (i, a) in answers.iter().enumerate() {
        match a {
            Ok(_) => {}
            // Retriable and nothing applied: the only other acceptable answer.
            Err(Failure::Rejected(Rejection::Busy)) => {
                assert!(e.reservation(300 + i as u128).is_none())
            }
            other => panic!("sku {i}: {other:?}"),
        }
    }
    let placed = answers.iter().filter(|a| a.is_ok()).count();
    let mut held = 0;
    for s in &skus {
        held += e.sku_state(&sku(s)).await.unwrap().reserved_total();
    }
    assert_eq!(
        held as usize, placed,
        "one unit held per placed reservation"
    );
}

/// Fulfil, release and extend of one-SKU reservations go to their SKU with the frame (no
/// `OpBegun`); those of several SKUs take the general path. Both end in the same index and
/// stock, and a resent frame replays every outcome.
#[tokio::test]
async fn operations_on_reservations_in_one_frame_update_index_stock_and_expiry() {
    let clock = Arc::new(omnistock::engine::ManualClock::new(1_000_000));
    let e = Engine::start_in_memory_with_clock(
        EngineConfig {
            expiry_driver: false,
            ..EngineConfig::default()
        },
        clock.clone(),
    )
    .expect("engine");
    small_catalog(&e).await;
    adjust(&e, "A", "wh-a", 20).await.unwrap();
    adjust(&e, "B", "wh-a", 20).await.unwrap();
    for (id, lines) in [
        (300, vec![("A", 2)]),
        (301, vec![("A", 3)]),
        (302, vec![("A", 4)]),
        (303, vec![("A", 5)]),
        (304, vec![("A", 1), ("B", 2)]),
        (305, vec![("A", 2)]),
    ] {
        exec(&e, reserve_cmd(id, "web", &lines, 60_000))
            .await
            .unwrap();
    }
    let fulfil = |reservation, lines| Command::Fulfill { reservation, lines };
    let frame = vec![
        // 0: whole fulfil of a one-SKU reservation.
        req(fulfil(300, None)),
        // 1: partial fulfil (1 of 3): it stays open with 2.
        req(fulfil(301, Some(vec![(sku("A"), 1)]))),
        // 2: release.
        req(Command::Release { reservation: 302 }),
        // 3: extend to 10 minutes from now.
        req(Command::Extend {
            reservation: 303,
            ttl_ms: 600_000,
        }),
        // 4: a second operation on 300 in the same frame: it is busy.
        req(Command::Release { reservation: 300 }),
        // 5: 301 again: busy with request 1.
        req(fulfil(301, Some(vec![(sku("A"), 1)]))),
        // 6: a two-SKU reservation fulfilled on the general path beside them.
        req(fulfil(304, None)),
        // 7: an unknown reservation.
        req(Command::Release { reservation: 399 }),
        // 8: more than the hold: refused, the reservation stays as it was.
        req(fulfil(305, Some(vec![(sku("A"), 9)]))),
    ];
    let first = e.execute_frame(frame.clone()).await;
    for i in [0, 1, 2, 3, 6] {
        assert!(first[i].is_ok(), "request {i}: {:?}", first[i]);
    }
    assert!(matches!(
        rejection(&first[4]),
        Rejection::ReservationBusy(300)
    ));
    assert!(matches!(
        rejection(&first[5]),
        Rejection::ReservationBusy(301)
    ));
    assert!(matches!(
        rejection(&first[8]),
        Rejection::ExceedsHold { held: 2, .. }
    ));
    assert_eq!(e.reservation(305).unwrap().lines, vec![(sku("A"), 2)]);
    assert!(matches!(
        rejection(&first[7]),
        Rejection::ReservationNotFound(399)
    ));
    assert!(e.reservation(300).is_none() && e.reservation(302).is_none());
    assert!(e.reservation(304).is_none());
    assert_eq!(e.reservation(301).unwrap().lines, vec![(sku("A"), 2)]);
    assert_eq!(e.reservation(303).unwrap().expires_at_ms, 1_600_000);
    let a = e.sku_state(&sku("A")).await.unwrap();
    assert_eq!(on_hand(&a), 20 - 2 - 1 - 1, "300, 1 of 301, A of 304 sold");
    assert_eq!(a.reserved_total(), 2 + 5 + 2, "301's rest, 303 and 305");
    let b = e.sku_state(&sku("B")).await.unwrap();
    assert_eq!((on_hand(&b), b.reserved_total()), (18, 0));

    // The resend replays the accepted ones (same outcomes), applying nothing twice.
    let again = e.execute_frame(frame).await;
    for i in [0, 1, 2, 3, 6] {
        assert_eq!(
            first[i].as_ref().unwrap(),
            again[i].as_ref().unwrap(),
            "{i}"
        );
    }
    let a = e.sku_state(&sku("A")).await.unwrap();
    // Request 5, refused as busy the first time, now runs: one more unit of 301 sold.
    assert!(again[5].is_ok(), "{:?}", again[5]);
    assert_eq!((on_hand(&a), a.reserved_total()), (15, 8));

    // Expiry follows the extension: 301 and 305 (60 s) expire, 303 (now 10 min) does not.
    clock.advance(61_000);
    assert_eq!(e.expire_due().await, 2);
    assert!(e.reservation(301).is_none() && e.reservation(305).is_none());
    assert!(e.reservation(303).is_some());
    clock.advance(600_000);
    assert_eq!(e.expire_due().await, 1);
    let a = e.sku_state(&sku("A")).await.unwrap();
    assert_eq!((on_hand(&a), a.reserved_total()), (15, 0));
}

/// A frame's ops on one SKU travel in one message (at most 256 ops each), in frame order:
/// ops before the one that creates a SKU still find no SKU, those after it find it, and
/// a SKU's ops spread over several messages apply in frame order.
#[tokio::test]
async fn ops_on_one_sku_apply_in_frame_order_across_messages() {
    let e = engine();
    small_catalog(&e).await;
    let mut frame = vec![
        req(reserve_cmd(500, "web", &[("NEW", 1)], 60_000)),
        req(reserve_cmd(501, "web", &[("NEW", 1)], 60_000)),
        req(adjust_cmd("NEW", "wh-a", 5)),
        req(reserve_cmd(502, "web", &[("NEW", 2)], 60_000)),
    ];
    // 600 receipts of one unit on A (three messages), then a reserve of all web's ATP
    // (600 less its buffer of 1) that only succeeds if every receipt came before it.
    for _ in 0..600 {
        frame.push(req(adjust_cmd("A", "wh-a", 1)));
    }
    frame.push(req(reserve_cmd(503, "web", &[("A", 599)], 60_000)));
    let answers = e.execute_frame(frame).await;
    assert!(matches!(rejection(&answers[0]), Rejection::UnknownSku(_)));
    assert!(matches!(rejection(&answers[1]), Rejection::UnknownSku(_)));
    assert!(
        answers[2].is_ok() && answers[3].is_ok(),
        "{:?}",
        &answers[2..4]
    );
    assert!(answers[4..604].iter().all(|a| a.is_ok()));
    assert!(answers[604].is_ok(), "{:?}", answers[604]);
    let n = e.sku_state(&sku("NEW")).await.unwrap();
    assert_eq!((on_hand(&n), n.reserved_total()), (5, 2));
    let a = e.sku_state(&sku("A")).await.unwrap();
    assert_eq!((on_hand(&a), a.reserved_total()), (600, 599));
}

/// An engine whose SKU A sold out: `units` received at ds-c, all held by `reservation` on
/// `store` (which sells from ds-c then wh-a with no buffer).
async fn sold_out_engine(units: u32, reservation: u128) -> Engine {
    let e = engine();
    small_catalog(&e).await;
    adjust(&e, "A", "ds-c", i64::from(units)).await.unwrap();
    let placed = e
        .execute_frame(vec![req(reserve_cmd(
            reservation,
            "store",
            &[("A", units)],
            60_000,
        ))])
        .await;
    assert!(placed[0].is_ok(), "{:?}", placed[0]);
    e
}

/// A SKU that sold out refuses new holds without its actor (`sold_out_refusals`), with the
/// actor's answer; a stock command earlier in the same frame is still applied first, and a
/// release makes the SKU sell again.
#[tokio::test]
async fn a_sold_out_sku_refuses_new_holds_itself_and_sells_again_once_stock_returns() {
    let e = sold_out_engine(3, 100).await;
    let before = e.stats().sold_out_refusals;
    let answers = e
        .execute_frame(vec![
            req(reserve_cmd(101, "store", &[("A", 1)], 60_000)),
            req(reserve_cmd(102, "web", &[("A", 2)], 60_000)),
        ])
        .await;
    for (a, requested) in answers.iter().zip([1, 2]) {
        assert_eq!(
            rejection(a),
            &Rejection::InsufficientStock {
                line: 0,
                sku: sku("A"),
                requested,
                available: 0
            }
        );
    }
    assert_eq!(
        e.stats().sold_out_refusals - before,
        2,
        "both refused without the actor"
    );
    assert!(e.reservation(101).is_none() && e.reservation(102).is_none());
    // A receipt then a hold in one frame: one message to the actor, in frame order.
    let answers = e
        .execute_frame(vec![
            req(adjust_cmd("A", "ds-c", 1)),
            req(reserve_cmd(103, "store", &[("A", 1)], 60_000)),
        ])
        .await;
    assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
    assert_eq!(e.stats().sold_out_refusals - before, 2);
    // Sold out again; a release brings 3 units back, and the next hold is placed.
    let released = exec(&e, Command::Release { reservation: 100 }).await;
    assert!(released.is_ok(), "{released:?}");
    let answers = e
        .execute_frame(vec![req(reserve_cmd(104, "store", &[("A", 3)], 60_000))])
        .await;
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    let a = e.sku_state(&sku("A")).await.unwrap();
    assert_eq!((on_hand(&a), a.reserved_total()), (4, 4), "103 and 104");
}

/// A hold on a sold-out SKU sent while a command to that SKU is still queued is not
/// refused ahead of it: it waits its turn in the mailbox, as before the sold-out path.
#[tokio::test]
async fn a_sold_out_sku_does_not_refuse_a_hold_ahead_of_a_queued_command() {
    let e = sold_out_engine(1, 200).await;
    let before = e.stats().sold_out_refusals;
    // Two calls at once: the receipt's message is sent first (`join!` polls in order), so
    // the hold finds a command queued ahead of it and goes to the actor behind it.
    let (receipt, hold) = futures::join!(
        e.execute_frame(vec![req(adjust_cmd("A", "ds-c", 2))]),
        e.execute_frame(vec![req(reserve_cmd(201, "store", &[("A", 2)], 60_000))]),
    );
    assert!(receipt[0].is_ok(), "{:?}", receipt[0]);
    assert!(
        hold[0].is_ok(),
        "the hold waited for the receipt: {:?}",
        hold[0]
    );
    assert_eq!(e.stats().sold_out_refusals, before);
}
