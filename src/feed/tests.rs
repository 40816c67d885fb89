//! Unit tests of the pure feed pieces: transitions, filters, coalescing.

use super::*;
use crate::domain::{CatalogCommand, Channel, Location, LocationKind, LowStock};

fn cat() -> Catalog {
    let mut c = Catalog::default();
    let mut seq = 0;
    let mut apply = |c: &mut Catalog, cmd: CatalogCommand| {
        seq += 1;
        let ev = c.decide(&cmd).expect("valid");
        c.apply(&ev, seq);
    };
    for l in ["a", "b"] {
        apply(
            &mut c,
            CatalogCommand::UpsertLocation(Location {
                id: LocationId::new(l).expect("id"),
                kind: LocationKind::Store,
                region: "FR".into(),
            }),
        );
    }
    for (ch, locs) in [("web", vec!["a", "b"]), ("pos", vec!["b"])] {
        apply(
            &mut c,
            CatalogCommand::UpsertChannel(Channel {
                id: ChannelId::new(ch).expect("id"),
                locations: locs
                    .iter()
                    .map(|l| LocationId::new(l).expect("id"))
                    .collect(),
                buffer: 0,
                cap: None,
            }),
        );
    }
    apply(
        &mut c,
        CatalogCommand::SetLowStock(LowStock {
            channel: ChannelId::new("web").expect("id"),
            sku: None,
            threshold: 5,
        }),
    );
    c
}

#[test]
fn transitions_follow_the_bands() {
    let cases = [
        (3, 0, 5, transition::OUT_OF_STOCK),
        (0, 3, 5, transition::BACK_IN_STOCK),
        (0, 9, 5, transition::BACK_IN_STOCK),
        (9, 5, 5, transition::LOW_STOCK),
        (9, 1, 5, transition::LOW_STOCK),
        (5, 4, 5, transition::NONE),              // already low
        (4, 9, 5, transition::LOW_STOCK_CLEARED), // leaving the band upwards
        (5, 6, 5, transition::LOW_STOCK_CLEARED), // from its top edge, by one unit
        (1, 9, 5, transition::LOW_STOCK_CLEARED),
        (0, 6, 5, transition::BACK_IN_STOCK), // from 0 straight above: back in stock wins
        (4, 5, 5, transition::NONE),          // still in the band
        (6, 9, 5, transition::NONE),          // above it all along
        (3, 4, 0, transition::NONE),          // no threshold, no band
        (9, 8, 5, transition::NONE),
        (9, 1, 0, transition::NONE), // no threshold
        (1, 0, 0, transition::OUT_OF_STOCK),
    ];
    for (prev, now, low, want) in cases {
        assert_eq!(
            transition_of(prev, now, low),
            want,
            "{prev} -> {now} (low {low})"
        );
    }
}

#[test]
fn catalog_index_lists_the_channels_of_a_location_and_follows_changes() {
    let mut c = cat();
    let names = |c: &Catalog, l: &str| {
        let mut v: Vec<String> = c
            .channels_of(&LocationId::new(l).expect("id"))
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&c, "a"), ["web"]);
    assert_eq!(names(&c, "b"), ["pos", "web"]);
    let ev = c
        .decide(&CatalogCommand::UpsertChannel(Channel {
            id: ChannelId::new("pos").expect("id"),
            locations: vec![LocationId::new("a").expect("id")],
            buffer: 0,
            cap: None,
        }))
        .expect("valid");
    c.apply(&ev, 99);
    assert_eq!(names(&c, "a"), ["pos", "web"]);
    assert_eq!(names(&c, "b"), ["web"]);
}

#[test]
fn per_sku_low_stock_overrides_the_channel_and_zero_removes_it() {
    let mut c = cat();
    let web = ChannelId::new("web").expect("id");
    let sku = SkuId::new("X").expect("id");
    assert_eq!(c.low_stock_of(&sku, &web), 5);
    for (t, want) in [(9, 9), (0, 5)] {
        let ev = c
            .decide(&CatalogCommand::SetLowStock(LowStock {
                channel: web.clone(),
                sku: Some(sku.clone()),
                threshold: t,
            }))
            .expect("valid");
        c.apply(&ev, 100);
        assert_eq!(c.low_stock_of(&sku, &web), want);
    }
    assert!(
        c.low_stock_sku.is_empty(),
        "a removed override leaves nothing behind"
    );
    let unknown = c.decide(&CatalogCommand::SetLowStock(LowStock {
        channel: ChannelId::new("nope").expect("id"),
        sku: None,
        threshold: 1,
    }));
    assert!(matches!(
        unknown,
        Err(crate::domain::Rejection::UnknownChannel(_))
    ));
}

fn change(ch: &str, previous: u32, atp: u32) -> AtpChange {
    AtpChange {
        channel: ChannelId::new(ch).expect("id"),
        previous,
        atp,
        transition: transition_of(previous, atp, 5),
    }
}

fn record(seq: u64, sku: &str, changes: Vec<AtpChange>) -> FeedRecord {
    FeedRecord::new(
        seq,
        1,
        FeedBody::Sku {
            sku: SkuId::new(sku).expect("id"),
            cause: cause::RESERVE,
            atp: changes,
            oversold: None,
            reservations: vec![ReservationChange {
                reservation: 7,
                kind: lifecycle::PLACED,
                qty: 1,
                expires_at_ms: 9,
            }],
            stockout: Vec::new(),
            rebalance: Vec::new(),
            region_stockout: Vec::new(),
        },
    )
}

#[test]
fn filters_select_skus_channels_and_kinds() {
    let rec = record(3, "SHOE-1", vec![change("web", 9, 8), change("pos", 1, 0)]);
    let render = |f: &Filter| {
        let mut out = Vec::new();
        f.render(&rec, &mut out, None);
        out
    };
    let all = Filter {
        kinds: kinds::ALL,
        ..Filter::default()
    };
    assert_eq!(render(&all).len(), 3);
    let pos_only = Filter {
        channels: [ChannelId::new("pos").expect("id")].into(),
        kinds: kinds::ATP,
        ..Filter::default()
    };
    assert!(matches!(&render(&pos_only)[..], [PushItem::Atp(a)] if a.channel == "pos"));
    let thresholds = Filter {
        kinds: kinds::THRESHOLDS,
        ..Filter::default()
    };
    // web 9 -> 8 is no transition; pos 1 -> 0 is out of stock.
    assert!(
        matches!(&render(&thresholds)[..], [PushItem::Atp(a)] if a.transition == transition::OUT_OF_STOCK)
    );
    let other_prefix = Filter {
        sku_prefix: "HAT".into(),
        kinds: kinds::ALL,
        ..Filter::default()
    };
    assert!(render(&other_prefix).is_empty());
    let listed = Filter {
        skus: [SkuId::new("SHOE-1").expect("id")].into(),
        kinds: kinds::RESERVATIONS,
        ..Filter::default()
    };
    assert!(matches!(&render(&listed)[..], [PushItem::Reservation(r)] if r.reservation == 7));
}

#[test]
fn coalescing_keeps_first_previous_and_latest_value_and_drops_round_trips() {
    let c = cat();
    let mut co = Coalescer::new(10);
    let f = Filter {
        kinds: kinds::ATP,
        ..Filter::default()
    };
    let mut out = Vec::new();
    f.render(
        &record(1, "A", vec![change("web", 9, 8)]),
        &mut out,
        Some(&mut co),
    );
    f.render(
        &record(2, "B", vec![change("web", 3, 2)]),
        &mut out,
        Some(&mut co),
    );
    f.render(
        &record(3, "A", vec![change("web", 8, 4)]),
        &mut out,
        Some(&mut co),
    );
    f.render(
        &record(4, "B", vec![change("web", 2, 3)]),
        &mut out,
        Some(&mut co),
    );
    assert!(out.is_empty(), "ATP changes went to the coalescer");
    assert_eq!(co.take_merged(), 2);
    let drained = co.drain(&c, false);
    assert_eq!(drained.len(), 1, "B went 3 -> 2 -> 3: nothing to say");
    let PushItem::Atp(a) = &drained[0] else {
        panic!("atp")
    };
    assert_eq!((a.sku.as_str(), a.previous, a.atp, a.seq), ("A", 9, 4, 3));
    assert_eq!(
        a.transition,
        transition::LOW_STOCK,
        "recomputed from 9 -> 4"
    );
    assert!(a.coalesced);
    assert!(co.is_empty());
}

#[test]
fn coalescer_reports_full_at_its_bound() {
    let mut co = Coalescer::new(2);
    for (i, s) in ["A", "B"].iter().enumerate() {
        co.add(
            &SkuId::new(s).expect("id"),
            &change("web", 1, 2),
            1,
            i as u64,
            0,
        );
    }
    assert!(co.is_full());
}

#[test]
fn cached_bytes_are_exactly_the_encoded_items_for_every_filter() {
    let mut rec = record(3, "SHOE-1", vec![change("web", 9, 8), change("pos", 1, 0)]);
    if let FeedBody::Sku {
        oversold,
        reservations,
        ..
    } = &mut rec.body
    {
        *oversold = Some(true);
        // Written field by field too (`put_reservation`), after the oversold item.
        *reservations = vec![
            ReservationChange {
                reservation: u128::MAX - 7,
                kind: crate::protocol::lifecycle::PLACED,
                qty: 3,
                expires_at_ms: 1_234_567,
            },
            ReservationChange {
                reservation: 9,
                kind: crate::protocol::lifecycle::RELEASED,
                qty: 1,
                expires_at_ms: 0,
            },
        ];
    }
    let catalog = FeedRecord::new(4, 2, FeedBody::Catalog);
    let channel = |c: &str| [ChannelId::new(c).expect("id")].into();
    let filters = [
        Filter {
            kinds: kinds::ALL,
            ..Filter::default()
        },
        Filter {
            kinds: kinds::ATP,
            ..Filter::default()
        },
        Filter {
            kinds: kinds::THRESHOLDS,
            ..Filter::default()
        },
        Filter {
            kinds: kinds::RESERVATIONS,
            ..Filter::default()
        },
        Filter {
            kinds: kinds::ALL,
            channels: channel("pos"),
            ..Filter::default()
        },
        Filter {
            kinds: kinds::ATP | kinds::RESERVATIONS,
            channels: channel("web"),
            ..Filter::default()
        },
        Filter {
            kinds: kinds::ALL,
            sku_prefix: "HAT".into(),
            ..Filter::default()
        },
    ];
    for f in &filters {
        for r in [&rec, &catalog] {
            let mut items = Vec::new();
            f.render(r, &mut items, None);
            let want = crate::codec::encode(&crate::protocol::PushBatch { items }).expect("encode");
            let mut buf = FrameBuf::default();
            f.render_bytes(r, &mut buf);
            assert_eq!(buf.take_payload(), want, "{f:?} on record {}", r.seq);
        }
    }
}

/// Adjusts `sku` at location `a` (channel web sells from a and b, low-stock threshold 5)
/// and returns the web ATP change the feed derives.
fn derive_adjust(state: &mut SkuState, c: &Catalog, delta: i64, seq: u64) -> Option<AtpChange> {
    let cmd = crate::domain::SkuCommand::Adjust {
        location: LocationId::new("a").expect("id"),
        delta,
        reason: crate::domain::AdjustReason::Correction,
        reference: String::new(),
    };
    let events = state.decide(&cmd, c, 1_000).expect("adjust accepted");
    let before = before(c, state, &events);
    for e in &events {
        state.apply(e, seq, 1_000);
    }
    let FeedBody::Sku { atp, .. } = derive(c, before, state, &events, seq, 1_000).body else {
        panic!("a SKU record")
    };
    atp.into_iter()
        .find(|a| a.channel == ChannelId::new("web").expect("id"))
}

#[test]
fn leaving_the_low_stock_band_upwards_is_derived_as_low_stock_cleared() {
    let c = cat();
    let mut s = SkuState::new(SkuId::new("TEE").expect("id"));
    let steps = [
        (3, 0, 3, transition::BACK_IN_STOCK),
        (6, 3, 9, transition::LOW_STOCK_CLEARED), // entered the band from 0, left it
        (1, 9, 10, transition::NONE),
        (-6, 10, 4, transition::LOW_STOCK),
        (-1, 4, 3, transition::NONE),
        (3, 3, 6, transition::LOW_STOCK_CLEARED),
        (-6, 6, 0, transition::OUT_OF_STOCK),
        (7, 0, 7, transition::BACK_IN_STOCK),
    ];
    for (i, (delta, previous, atp, want)) in steps.into_iter().enumerate() {
        let change = derive_adjust(&mut s, &c, delta, i as u64 + 10).expect("web changed");
        assert_eq!(
            (change.previous, change.atp, change.transition),
            (previous, atp, want),
            "step {i}: adjust {delta}"
        );
    }
    // A thresholds-only subscriber receives it: it is what tells an ads-pauser to resume.
    let rec = record(20, "TEE", vec![change("web", 4, 9)]);
    let mut out = Vec::new();
    Filter {
        kinds: kinds::THRESHOLDS,
        ..Filter::default()
    }
    .render(&rec, &mut out, None);
    assert!(
        matches!(&out[..], [PushItem::Atp(a)] if a.transition == transition::LOW_STOCK_CLEARED),
        "{out:?}"
    );
}

/// `FrameBuf::take_frames` against the plain encoding: whatever the items and the limit,
/// the frames parse as `Push` frames of the correlation id whose payloads decode to the
/// items, in order, each payload within the limit unless it holds a single item.
#[test]
fn frames_built_in_place_carry_exactly_the_items_within_the_limit() {
    use crate::protocol::{Frame, FrameKind, PushBatch};
    use proptest::prelude::*;
    proptest!(ProptestConfig::with_cases(200), |(
        skus in prop::collection::vec("[A-Z]{1,40}", 0..40),
        max_payload in 40usize..2000,
        corr in any::<u64>(),
    )| {
        let items: Vec<PushItem> = skus
            .iter()
            .enumerate()
            .map(|(i, s)| PushItem::Atp(WireAtp {
                seq: i as u64,
                at_ms: 7,
                sku: s.clone(),
                channel: "web".into(),
                previous: 0,
                atp: i as u32,
                cause: 0,
                transition: 0,
                coalesced: false,
            }))
            .collect();
        let mut buf = FrameBuf::with_capacity(items.len());
        for i in &items {
            buf.push(i);
        }
        let frames = buf.take_frames(FrameKind::Push, corr, max_payload);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(frames.is_empty(), false, "one frame at least, even of no item");
        let mut got = Vec::new();
        for f in &frames {
            let (frame, used) = Frame::parse(f, usize::MAX).expect("frame").expect("whole");
            prop_assert_eq!(used, f.len());
            prop_assert_eq!(frame.kind, FrameKind::Push);
            prop_assert_eq!(frame.correlation, corr);
            let batch: PushBatch = crate::codec::decode(&frame.payload).expect("payload");
            prop_assert!(frame.payload.len() <= max_payload || batch.items.len() == 1);
            got.extend(batch.items);
        }
        prop_assert_eq!(got, items);
    });
}
/// The ring keeps up to `retention_records` of these (a million by default), most of them
/// never encoded: the encoding lives behind its own box, so a record's allocation stays
/// in the 192-byte size class (it was 288 bytes with the encoding inline, the 320 class).
#[test]
fn a_feed_record_stays_small_until_encoded() {
    assert!(
        std::mem::size_of::<super::FeedRecord>() <= 176,
        "FeedRecord is {} bytes",
        std::mem::size_of::<super::FeedRecord>()
    );
    assert!(std::mem::size_of::<super::EncodedCache>() <= 16);
}
