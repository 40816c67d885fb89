//! Unit tests of the envelope mapping: types, ids, names, times, and the exact JSON.

use super::*;
use crate::protocol::{WireAtp, WireOversold, WireReservationEvent, WireSnapshotEntry};

const SRC: &str = "omnistock://127.0.0.1:7878";

fn atp(t: u8) -> PushItem {
    PushItem::Atp(WireAtp {
        seq: 42,
        at_ms: 1_700_000_000_000,
        sku: "TEE".into(),
        channel: "web".into(),
        previous: 3,
        atp: 0,
        cause: cause::RESERVE,
        transition: t,
        coalesced: false,
    })
}

fn reservation(kind: u8) -> PushItem {
    PushItem::Reservation(WireReservationEvent {
        seq: 42,
        at_ms: 1_000,
        sku: "TEE".into(),
        reservation: u128::MAX,
        kind,
        qty: 2,
        expires_at_ms: 61_000,
    })
}

fn ev(item: &PushItem) -> Envelope {
    envelope(item, SRC).expect("an event")
}

#[test]
fn times_are_rfc3339_utc_with_milliseconds_and_clamped_to_year_9999() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    assert_eq!(rfc3339_ms(MAX_TIME_MS), "9999-12-31T23:59:59.999Z");
    assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
}

#[test]
fn each_transition_has_its_own_type_and_name() {
    let cases = [
        (transition::NONE, types::ATP_CHANGED, "none"),
        (transition::OUT_OF_STOCK, types::STOCK_OUT, "out_of_stock"),
        (
            transition::BACK_IN_STOCK,
            types::STOCK_BACK,
            "back_in_stock",
        ),
        (transition::LOW_STOCK, types::STOCK_LOW, "low_stock"),
        (
            transition::LOW_STOCK_CLEARED,
            types::STOCK_LOW_CLEARED,
            "low_stock_cleared",
        ),
        // A value from a newer server: still an ATP change, named but not guessed.
        (9, types::ATP_CHANGED, "unknown_9"),
    ];
    for (t, want_type, want_name) in cases {
        let e = ev(&atp(t));
        assert_eq!(e.event_type, want_type, "transition {t}");
        let Data::Atp(d) = &e.data else {
            panic!("atp data")
        };
        assert_eq!(d.transition, want_name);
        assert_eq!(d.cause, "reserve");
        assert_eq!(e.id, "42:atp:web");
        assert_eq!(e.subject.as_deref(), Some("TEE"));
        assert_eq!(e.seq, Some(42));
    }
}

#[test]
fn each_lifecycle_kind_has_its_own_type_and_only_placed_and_extended_an_expiry() {
    let cases = [
        (lifecycle::PLACED, types::RESERVATION_PLACED, true),
        (lifecycle::FULFILLED, types::RESERVATION_FULFILLED, false),
        (lifecycle::RELEASED, types::RESERVATION_RELEASED, false),
        (lifecycle::EXPIRED, types::RESERVATION_EXPIRED, false),
        (lifecycle::EXTENDED, types::RESERVATION_EXTENDED, true),
        (lifecycle::UNDONE, types::RESERVATION_UNDONE, false),
    ];
    for (k, want_type, has_expiry) in cases {
        let e = ev(&reservation(k));
        assert_eq!(e.event_type, want_type);
        let Data::Reservation(d) = &e.data else {
            panic!("reservation data")
        };
        assert_eq!(d.reservation, "ffffffffffffffffffffffffffffffff");
        assert_eq!(d.expires_at.is_some(), has_expiry, "{want_type}");
        assert_eq!(
            e.id,
            format!("42:reservation:ffffffffffffffffffffffffffffffff:{}", d.kind)
        );
        assert_eq!(e.event_type, format!("omnistock.reservation.{}", d.kind));
    }
    let newer = ev(&reservation(9));
    assert_eq!(newer.event_type, "omnistock.reservation.unknown_9");
    assert!(!types::ALL.contains(&newer.event_type.as_str()));
}

#[test]
fn every_item_that_is_an_event_has_a_listed_type_and_distinct_id() {
    let items = [
        atp(transition::NONE),
        PushItem::Oversold(WireOversold {
            seq: 42,
            at_ms: 1,
            sku: "TEE".into(),
            oversold: true,
        }),
        reservation(lifecycle::PLACED),
        PushItem::Catalog { seq: 42, at_ms: 1 },
        PushItem::Snapshot(WireSnapshotEntry {
            seq: 42,
            sku: "TEE".into(),
            channel: "web".into(),
            atp: 4,
            oversold: false,
        }),
        PushItem::SnapshotEnd { seq: 42 },
    ];
    let mut ids = std::collections::HashSet::new();
    for item in &items {
        let e = ev(item);
        assert!(types::ALL.contains(&e.event_type.as_str()), "{e:?}");
        assert!(ids.insert(e.id.clone()), "duplicate id {}", e.id);
        assert!(e.id.starts_with("42:"), "{}", e.id);
    }
    assert!(envelope(&PushItem::Position { seq: 42 }, SRC).is_none());
    let lagged = PushItem::Lagged {
        resume_from_seq: 1,
        message: "slow".into(),
    };
    assert!(envelope(&lagged, SRC).is_none());
}

#[test]
fn the_json_is_exactly_the_documented_shape() {
    let json = serde_json::to_string(&ev(&atp(transition::OUT_OF_STOCK))).expect("json");
    assert_eq!(
        json,
        r#"{"specversion":"1.0","omnistockversion":1,"id":"42:atp:web","source":"omnistock://127.0.0.1:7878","type":"omnistock.stock.out","time":"2023-11-14T22:13:20.000Z","subject":"TEE","datacontenttype":"application/json","seq":42,"data":{"channel":"web","previous":3,"atp":0,"cause":"reserve","transition":"out_of_stock","coalesced":false}}"#
    );
    let snap = ev(&PushItem::Snapshot(WireSnapshotEntry {
        seq: 5,
        sku: "TEE".into(),
        channel: "web".into(),
        atp: 4,
        oversold: false,
    }));
    let v = serde_json::to_value(&snap).expect("json");
    assert!(v.get("time").is_none() && v.get("seq").is_none(), "{v}");
    assert_eq!(v["data"]["last_seq"], 5);
    let end = serde_json::to_value(ev(&PushItem::SnapshotEnd { seq: 9 })).expect("json");
    assert_eq!(end["data"], serde_json::json!({}));
    assert!(end.get("subject").is_none(), "{end}");
}

fn stockout(projected: bool, hours_milli: u64, reason: u8) -> PushItem {
    PushItem::Stockout(WireStockout {
        seq: 42,
        at_ms: 1_700_000_000_000,
        sku: "TEE".into(),
        channel: "web".into(),
        projected,
        threshold_hours: 24,
        hours_milli,
        per_hour_milli: 6_931,
        atp: 90,
        reason,
        window: 1,
    })
}

#[test]
fn stockout_items_are_events_with_fixed_point_numbers_and_a_reason_only_when_cleared() {
    let json = serde_json::to_string(&ev(&stockout(true, 12_985, 0))).expect("json");
    assert_eq!(
        json,
        r#"{"specversion":"1.0","omnistockversion":1,"id":"42:stockout:web:projected","source":"omnistock://127.0.0.1:7878","type":"omnistock.stock.stockout_projected","time":"2023-11-14T22:13:20.000Z","subject":"TEE","datacontenttype":"application/json","seq":42,"data":{"channel":"web","hours":12.985,"velocity_per_hour":6.931,"atp":90,"threshold_hours":24,"window":1}}"#
    );
    let cleared = ev(&stockout(false, u64::MAX, stockout_reason::NO_DEMAND));
    assert_eq!(cleared.event_type, types::STOCKOUT_CLEARED);
    assert_eq!(cleared.id, "42:stockout:web:cleared");
    let v = serde_json::to_value(&cleared).expect("json");
    assert!(v["data"]["hours"].is_null(), "{v}");
    assert_eq!(v["data"]["reason"], "no_demand");
    for (r, name) in [
        (stockout_reason::RECOVERED, "recovered"),
        (stockout_reason::THRESHOLD_REMOVED, "threshold_removed"),
        (9, "unknown_9"),
    ] {
        let v = serde_json::to_value(ev(&stockout(false, 40_000, r))).expect("json");
        assert_eq!(v["data"]["reason"], name);
    }
    assert!(types::ALL.contains(&types::STOCKOUT_PROJECTED));
}
