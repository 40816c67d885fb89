//! Replay: folding the events a SKU emitted rebuilds its state exactly, and the invariants
//! hold after every step, for random command sequences on the pure state machine.

use omnistock::domain::*;
use omnistock::feed::{self, FeedBody};
use omnistock::protocol::transition;
use proptest::prelude::*;

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    let locs = ["l1", "l2", "l3"];
    for (i, l) in locs.iter().enumerate() {
        let ev = c
            .decide(&CatalogCommand::UpsertLocation(Location {
                id: LocationId::new(l).unwrap(),
                kind: LocationKind::Store,
                region: "FR".into(),
            }))
            .unwrap();
        c.apply(&ev, i as u64 + 1);
    }
    let ev = c
        .decide(&CatalogCommand::UpsertChannel(Channel {
            id: ChannelId::new("ch").unwrap(),
            locations: locs.iter().map(|l| LocationId::new(l).unwrap()).collect(),
            buffer: 1,
            cap: Some(50),
        }))
        .unwrap();
    c.apply(&ev, 4);
    c
}

fn command() -> impl Strategy<Value = (SkuCommand, u64)> {
    let loc = (0..3usize).prop_map(|i| LocationId::new(["l1", "l2", "l3"][i]).unwrap());
    let state = prop_oneof![
        Just(StockState::Sellable),
        Just(StockState::Damaged),
        Just(StockState::QualityControl)
    ];
    let cmd = prop_oneof![
        (loc.clone(), -10i64..30).prop_map(|(location, delta)| SkuCommand::Adjust {
            location,
            delta,
            reason: AdjustReason::Correction,
            reference: "r".into()
        }),
        (loc.clone(), 0u32..40, prop::option::of(0u32..10)).prop_map(
            |(location, on_hand, expected)| SkuCommand::SetOnHand {
                location,
                on_hand,
                expected,
                reference: String::new()
            }
        ),
        (loc.clone(), state.clone(), state, 1u32..5).prop_map(|(location, from, to, qty)| {
            SkuCommand::Move {
                location,
                from,
                to,
                qty,
            }
        }),
        (loc.clone(), loc.clone(), 1u32..5).prop_map(|(from, to, qty)| SkuCommand::Transfer {
            from,
            to,
            qty,
            reference: String::new()
        }),
        (loc.clone(), 0u32..4)
            .prop_map(|(location, qty)| SkuCommand::SetSafetyStock { location, qty }),
        (loc.clone(), 0u32..9, 0u64..99).prop_map(|(location, qty, eta_ms)| {
            SkuCommand::SetIncoming {
                location,
                qty,
                eta_ms,
            }
        }),
        (
            0u128..6,
            prop::collection::vec((1u32..6, prop::option::of(loc)), 1..3),
            any::<bool>(),
            1u64..100
        )
            .prop_map(|(reservation, lines, allow_split, ttl)| SkuCommand::Hold {
                reservation,
                channel: ChannelId::new("ch").unwrap(),
                lines: lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, (qty, location))| HoldLine {
                        line: i as u16,
                        qty,
                        location
                    })
                    .collect(),
                allow_split,
                expires_at_ms: 1_000 + ttl,
                cart_skus: 1,
            }),
        (0u128..6, prop::option::of(1u32..4))
            .prop_map(|(reservation, qty)| SkuCommand::Fulfill { reservation, qty }),
        (0u128..6).prop_map(|reservation| SkuCommand::Release {
            reservation,
            reason: ReleaseReason::Client
        }),
        (0u128..6).prop_map(|reservation| SkuCommand::Expire { reservation }),
        (0u128..6, 1u64..100).prop_map(|(reservation, t)| SkuCommand::Extend {
            reservation,
            expires_at_ms: 1_000 + t
        }),
    ];
    (cmd, 900u64..1_100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn folding_emitted_events_rebuilds_the_state_exactly(cmds in prop::collection::vec(command(), 1..80)) {
        let cat = catalog();
        let sku = SkuId::new("S").unwrap();
        let mut live = SkuState::new(sku.clone());
        let mut log: Vec<(u64, u64, Event)> = Vec::new();
        for (i, (cmd, now)) in cmds.iter().enumerate() {
            let seq = i as u64 + 10;
            if let Ok(events) = live.decide(cmd, &cat, *now) {
                for e in events {
                    live.apply(&e, seq, *now);
                    log.push((seq, *now, e));
                }
            }
            prop_assert_eq!(live.check_invariants(), Ok(()), "after {:?}", cmd);
            for b in &live.buckets {
                prop_assert!(b.on_hand <= limits::MAX_QTY);
            }
        }
        let mut replayed = SkuState::new(sku);
        for (seq, at_ms, e) in &log {
            replayed.apply(e, *seq, *at_ms);
        }
        prop_assert_eq!(replayed, live);
    }

    #[test]
    fn a_hold_never_takes_a_bucket_below_zero_atp(cmds in prop::collection::vec(command(), 1..80)) {
        let cat = catalog();
        let mut s = SkuState::new(SkuId::new("S").unwrap());
        for (i, (cmd, now)) in cmds.iter().enumerate() {
            let before: Vec<i64> = s.buckets.iter().map(Bucket::atp).collect();
            if let Ok(events) = s.decide(cmd, &cat, *now) {
                let is_hold = matches!(cmd, SkuCommand::Hold { .. });
                for e in &events {
                    s.apply(e, i as u64 + 1, *now);
                }
                if is_hold {
                    for (b, was) in s.buckets.iter().zip(before) {
                        prop_assert!(b.atp() >= 0 || b.atp() >= was, "hold took {} below zero", b.location);
                    }
                }
            }
        }
    }

    /// The feed (what subscribers receive) tells the truth: for every record, a channel's
    /// ATP item exists exactly when its ATP changed, its `previous` is the value before and
    /// its `atp` the value after, the transition follows from them, and the oversold flag is
    /// reported exactly when it flips. The same `derive` serves the actor and recovery.
    #[test]
    fn feed_items_are_exactly_the_channel_atp_changes(cmds in prop::collection::vec(command(), 1..80), low in 0u32..6) {
        let mut cat = catalog();
        let ch = ChannelId::new("ch").unwrap();
        let ev = cat.decide(&CatalogCommand::SetLowStock(LowStock { channel: ch.clone(), sku: None, threshold: low })).unwrap();
        cat.apply(&ev, 5);
        let channel = cat.channels.get(&ch).unwrap().clone();
        let mut s = SkuState::new(SkuId::new("S").unwrap());
        for (i, (cmd, now)) in cmds.iter().enumerate() {
            let Ok(events) = s.decide(cmd, &cat, *now) else { continue };
            let seq = i as u64 + 10;
            let (atp_before, oversold_before) = (s.channel_atp(&channel), s.oversold());
            let before = feed::before(&cat, &s, &events);
            for e in &events {
                s.apply(e, seq, *now);
            }
            let rec = feed::derive(&cat, before, &s, &events, seq, *now);
            prop_assert_eq!(rec.seq, seq);
            let FeedBody::Sku { atp, oversold, .. } = rec.body else { panic!("sku record") };
            let after = s.channel_atp(&channel);
            if after == atp_before {
                prop_assert!(atp.is_empty(), "no change but {:?}", atp);
            } else {
                prop_assert_eq!(atp.len(), 1);
                prop_assert_eq!(atp[0].previous, atp_before);
                prop_assert_eq!(atp[0].atp, after);
                let t = atp[0].transition;
                let expected = if atp_before > 0 && after == 0 { transition::OUT_OF_STOCK }
                    else if atp_before == 0 && after > 0 { transition::BACK_IN_STOCK }
                    else if low > 0 && after <= low && atp_before > low { transition::LOW_STOCK }
                    else if low > 0 && atp_before <= low && after > low { transition::LOW_STOCK_CLEARED }
                    else { transition::NONE };
                prop_assert_eq!(t, expected);
            }
            prop_assert_eq!(oversold, (s.oversold() != oversold_before).then_some(s.oversold()));
        }
    }
}
