//! The JSON events of docs/events.md against their schema, docs/events.schema.json: the real
//! server on port 0, changes of every kind made through the real client, the feed followed
//! with the real `Subscriber`, every item turned into its envelope by
//! `omnistock::events::envelope` (what `ctl tail --json` prints) and validated with the
//! `jsonschema` crate. Also: the schema is a valid draft 2020-12 schema, it refuses what the
//! envelope must never be (a numeric reservation id, a type whose data does not match), and
//! every example in docs/events.md is valid.

mod common;
use common::rid;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use omnistock::client::{Client, ClientConfig, ClientError, Subscriber};
use omnistock::engine::{Engine, EngineConfig};
use omnistock::events::{envelope, types};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig};
use serde_json::{json, Value};

const SOURCE: &str = "omnistock://test";

fn schema_json() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/events.schema.json"
    ))
    .expect("docs/events.schema.json");
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    let schema = schema_json();
    jsonschema::meta::validate(&schema).expect("a valid JSON Schema");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

/// The schema's complaints about `event`, one per line (empty: valid).
fn errors(v: &jsonschema::Validator, event: &Value) -> String {
    v.iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn setup(c: &Client) {
    common::wire_catalog(c).await;
    low_stock(c, 3).await;
}

async fn low_stock(c: &Client, threshold: u32) -> u64 {
    c.apply(Op::SetLowStock(SetLowStock {
        request_id: rid(),
        channel: "web".into(),
        sku: None,
        threshold,
    }))
    .await
    .unwrap()
    .seq
}

async fn adjust(c: &Client, sku: &str, delta: i64) -> u64 {
    common::wire_adjust(c, sku, delta).await
}

async fn reserve(
    c: &Client,
    res: u128,
    lines: &[(&str, u32)],
    ttl_ms: u64,
) -> Result<Reserved, ClientError> {
    c.reserve(Reserve {
        request_id: rid(),
        reservation: res,
        channel: "web".into(),
        lines: lines
            .iter()
            .map(|(sku, qty)| WireLine {
                sku: (*sku).into(),
                qty: *qty,
                location: None,
            })
            .collect(),
        allow_split: false,
        ttl_ms,
    })
    .await
}

async fn release(c: &Client, res: u128) -> u64 {
    c.release(Release {
        request_id: rid(),
        reservation: res,
    })
    .await
    .unwrap()
    .seq
}

/// Every kind of change the feed knows, each at least once; returns the last seq.
async fn changes_of_every_kind(c: &Client) -> u64 {
    let big = u128::MAX - 1; // a reservation id far above 2^53
    adjust(c, "TEE", 8).await; // 2 -> 10: leaves the band (1..=3) upwards
    reserve(c, 1, &[("TEE", 1)], 600_000).await.unwrap(); // 10 -> 9: a plain change
    reserve(c, big, &[("TEE", 6)], 600_000).await.unwrap(); // 9 -> 3: low
    c.extend(Extend {
        request_id: rid(),
        reservation: big,
        ttl_ms: 900_000,
    })
    .await
    .unwrap();
    c.fulfill(Fulfill {
        request_id: rid(),
        reservation: 1,
        lines: None,
    })
    .await
    .unwrap();
    release(c, big).await; // 3 -> 9: low cleared
    reserve(c, 3, &[("TEE", 9)], 600_000).await.unwrap(); // 9 -> 0: out
    release(c, 3).await; // 0 -> 9: back
                         // Expiry: a short hold, released by the expiry driver.
    reserve(c, 4, &[("TEE", 1)], 50).await.unwrap();
    // Oversold: hold 3 of 5, then lose 4 on hand; then receive again.
    adjust(c, "OVR", 5).await;
    reserve(c, 5, &[("OVR", 3)], 600_000).await.unwrap();
    adjust(c, "OVR", -4).await;
    adjust(c, "OVR", 5).await;
    // A cart whose second line cannot be held: the first line's hold is undone.
    adjust(c, "A-OK", 5).await;
    adjust(c, "Z-LOW", 1).await;
    let refused = reserve(c, 6, &[("A-OK", 1), ("Z-LOW", 2)], 600_000).await;
    assert!(refused.is_err(), "{refused:?}");
    // A stockout projection: a 24 h threshold, 5 of 20 units held at once (3.47/h: 4.3 h
    // to zero): projected; a restock to 1,015 (293 h): cleared.
    c.apply(Op::SetStockoutThreshold(SetStockoutThreshold {
        request_id: rid(),
        channel: "web".into(),
        hours: 24,
    }))
    .await
    .unwrap();
    // The same projection in region FR (the region of wh, threshold 24 h from web), and a
    // rebalance recommendation from region DE, where 500 STK sit unsold; the restock
    // clears the region's projection and withdraws the recommendation (resolved).
    c.apply(Op::UpsertLocation(UpsertLocation {
        request_id: rid(),
        location: WireLocation {
            id: "de".into(),
            kind: WireLocationKind::Warehouse,
            region: "DE".into(),
        },
    }))
    .await
    .unwrap();
    c.apply(Op::Adjust(Adjust {
        request_id: rid(),
        sku: "STK".into(),
        location: "de".into(),
        delta: 500,
        reason: WireAdjustReason::Receipt,
        reference: String::new(),
    }))
    .await
    .unwrap();
    adjust(c, "STK", 20).await;
    reserve(c, 7, &[("STK", 5)], 600_000).await.unwrap();
    adjust(c, "STK", 1_000).await;
    // A catalog change.
    low_stock(c, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_the_server_emits_is_valid_against_the_schema_and_every_type_occurs() {
    let engine = Arc::new(
        Engine::start_in_memory(EngineConfig {
            arbiters: 2,
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let server = Server::bind(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        },
        engine.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().to_string();
    let stop = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    let c = Client::connect(ClientConfig::new(addr.clone()))
        .await
        .unwrap();
    setup(&c).await;
    adjust(&c, "TEE", 2).await; // something for the snapshot
    let request = |coalesce_ms| Subscribe {
        name: String::new(),
        start: start::SNAPSHOT,
        from_seq: 0,
        channels: vec![],
        skus: vec![],
        sku_prefix: String::new(),
        kinds: kinds::ALL,
        coalesce_ms,
    };
    let mut sub = Subscriber::subscribe(ClientConfig::new(addr.clone()), request(0))
        .await
        .unwrap();
    let mut coalesced = Subscriber::subscribe(ClientConfig::new(addr.clone()), request(10))
        .await
        .unwrap();
    let last = changes_of_every_kind(&c).await;

    let v = validator();
    let mut seen = BTreeSet::new();
    let mut ids = HashSet::new();
    let mut previous_seq = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The expiry comes last (50 ms after its hold), so wait for it as well as for `last`.
    while sub.position() < last || sub.in_snapshot() || !seen.contains(types::RESERVATION_EXPIRED) {
        let items = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("not every type within 10 s; seen {seen:?}"))
            .unwrap();
        for item in &items {
            let Some(e) = envelope(item, SOURCE) else {
                continue;
            };
            let j = serde_json::to_value(&e).unwrap();
            let complaints = errors(&v, &j);
            assert!(complaints.is_empty(), "{j}\n{complaints}");
            assert!(ids.insert(e.id.clone()), "duplicate id {}", e.id);
            if let Some(seq) = e.seq {
                assert!(seq >= previous_seq, "out of order: {j}");
                previous_seq = seq;
                assert!(e.id.starts_with(&format!("{seq}:")), "{j}");
            }
            seen.insert(e.event_type.clone());
        }
    }
    let all: BTreeSet<String> = types::ALL.iter().map(|t| t.to_string()).collect();
    assert_eq!(seen, all, "every type of docs/events.md occurred");

    // The coalesced subscriber's events are valid too, and some were merged.
    let mut merged = 0;
    while coalesced.position() < last || coalesced.in_snapshot() {
        let items = tokio::time::timeout_at(deadline, coalesced.next())
            .await
            .expect("the coalesced subscriber caught up")
            .unwrap();
        for e in items.iter().filter_map(|i| envelope(i, SOURCE)) {
            let j = serde_json::to_value(&e).unwrap();
            let complaints = errors(&v, &j);
            assert!(complaints.is_empty(), "{j}\n{complaints}");
            merged += usize::from(j["data"]["coalesced"] == json!(true));
        }
    }
    assert!(merged > 0, "no coalesced event to validate");

    sub.close().await;
    coalesced.close().await;
    stop.shutdown();
    let _ = task.await;
    engine.shutdown();
}

/// A valid event to break in the next test.
fn reservation_event() -> Value {
    json!({
        "specversion": "1.0",
        "omnistockversion": 1,
        "id": "7:reservation:fffffffffffffffffffffffffffffffe:placed",
        "source": SOURCE,
        "type": "omnistock.reservation.placed",
        "time": "2026-12-01T10:00:00.000Z",
        "subject": "TEE",
        "datacontenttype": "application/json",
        "seq": 7,
        "data": {
            "reservation": "fffffffffffffffffffffffffffffffe",
            "kind": "placed",
            "qty": 2,
            "expires_at": "2026-12-01T10:10:00.000Z"
        }
    })
}

#[test]
fn the_schema_refuses_what_an_event_must_never_be() {
    let v = validator();
    let good = reservation_event();
    assert_eq!(errors(&v, &good), "", "the base case is valid");
    type Break = fn(&mut Value);
    let broken: [(&str, Break); 9] = [
        ("a numeric reservation id", |e| {
            e["data"]["reservation"] = json!(u64::MAX)
        }),
        ("a short hex id", |e| e["data"]["reservation"] = json!("2a")),
        ("a numeric kind", |e| e["data"]["kind"] = json!(1)),
        ("a kind that is not the type's", |e| {
            e["data"]["kind"] = json!("released")
        }),
        ("a placed reservation without expiry", |e| {
            e["data"].as_object_mut().unwrap().remove("expires_at");
        }),
        ("a time in Unix ms", |e| {
            e["time"] = json!(1_700_000_000_000u64)
        }),
        ("a time without milliseconds", |e| {
            e["time"] = json!("2026-12-01T10:00:00Z")
        }),
        ("the Rust-tagged shape", |e| {
            *e = json!({"Reservation": {"seq": 7, "kind": 1}})
        }),
        ("an unknown type", |e| {
            e["type"] = json!("omnistock.stock.lowish")
        }),
    ];
    for (what, f) in broken {
        let mut e = good.clone();
        f(&mut e);
        assert!(!v.is_valid(&e), "the schema accepted {what}: {e}");
    }
    let mut atp = json!({
        "specversion": "1.0", "omnistockversion": 1, "id": "9:atp:web", "source": SOURCE,
        "type": "omnistock.stock.low_cleared", "time": "2026-12-01T10:00:00.000Z",
        "subject": "TEE", "datacontenttype": "application/json", "seq": 9,
        "data": {"channel": "web", "previous": 2, "atp": 9, "cause": "adjust",
                 "transition": "low_stock_cleared", "coalesced": false}
    });
    assert_eq!(errors(&v, &atp), "");
    atp["data"]["transition"] = json!("none");
    assert!(
        !v.is_valid(&atp),
        "a type that disagrees with data.transition"
    );
    atp["data"]["transition"] = json!(4);
    assert!(!v.is_valid(&atp), "a numeric transition");
}

#[test]
fn every_example_in_the_events_doc_is_valid_and_every_type_has_one() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md"))
        .expect("docs/events.md");
    let v = validator();
    let mut types_shown = BTreeSet::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```json\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("a closed code block");
        let example: Value = serde_json::from_str(&body[..end])
            .unwrap_or_else(|e| panic!("example is not JSON ({e}):\n{}", &body[..end]));
        let complaints = errors(&v, &example);
        assert!(complaints.is_empty(), "{example}\n{complaints}");
        types_shown.insert(example["type"].as_str().unwrap().to_string());
        rest = &body[end..];
    }
    let all: BTreeSet<String> = types::ALL.iter().map(|t| t.to_string()).collect();
    assert_eq!(types_shown, all, "one example per type");
}
