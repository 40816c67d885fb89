//! The HTTP API on the real HTTP endpoint on 127.0.0.1:0 with an engine behind it: JSON reads
//! (a SKU, ATP by list and by prefix with paging, a reservation) and their errors with
//! stable codes, tokens and roles as on the binary port, and the change feed as Server-Sent
//! Events: every event's data valid against docs/events.schema.json with `id:` its envelope
//! id, a reconnect with `Last-Event-ID` (cut in the middle of one log record's events)
//! returning exactly the missed events, heartbeats on a quiet stream, the stream limit, and
//! a client that does not read dropped like a lagging binary subscriber.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::http::{get, Sse, SseEvent};
use common::{adjust, exec, reserve_cmd, small_catalog};
use omnistock::domain::{CatalogCommand, Location, LocationKind};
use omnistock::engine::{Command, Engine, EngineConfig};
use omnistock::feed::subscription::SubscriptionConfig;
use omnistock::http::{HttpConfig, HttpServer, Sources};
use omnistock::protocol::Role;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

struct Api {
    addr: SocketAddr,
    engine: Arc<Engine>,
    sources: Arc<Sources>,
}

async fn start_with(config: HttpConfig, listen: &str) -> Api {
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).expect("engine"));
    small_catalog(&engine).await;
    published(&engine).await;
    let sources = Sources::new();
    sources.set_engine(engine.clone());
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let http = HttpServer::bind(listen.parse().unwrap(), sources.clone(), handle, config)
        .await
        .expect("bind");
    let port = http.local_addr().port();
    tokio::spawn(http.run(std::future::pending()));
    Api {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        engine,
        sources,
    }
}

/// Waits until the feed has published everything acknowledged so far. The setup's catalog
/// writes are acknowledged when durable, and the feed publishes them a moment later: a LIVE
/// stream opened before that begins with those catalog events, which tests counting
/// `catalog.changed` events or expecting none took for their own (the cause of rare
/// failures of two of them).
async fn published(engine: &Engine) {
    while engine.feed().head() < engine.last_seq() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn start(config: HttpConfig) -> Api {
    start_with(config, "127.0.0.1:0").await
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/events.schema.json"
    ))
    .expect("docs/events.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

/// Checks an SSE event against the schema and its id against the envelope's; the envelope.
fn checked(v: &jsonschema::Validator, e: &SseEvent) -> Value {
    let json: Value = serde_json::from_str(&e.data).expect("data is JSON");
    let errors: Vec<String> = v.iter_errors(&json).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{json}: {errors:?}");
    assert_eq!(
        e.id.as_deref(),
        json["id"].as_str(),
        "id: is the envelope id"
    );
    json
}

/// Events of `s` until (and including) the first of type `until`.
async fn events_until(v: &jsonschema::Validator, s: &mut Sse, until: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let e = s.next_event(WAIT).await.expect("an event in time");
        let json = checked(v, &e);
        let done = json["type"] == until;
        out.push(json);
        if done {
            return out;
        }
    }
}

/// Waits for the stream's opening comment: the subscription exists from then on.
async fn subscribed(s: &mut Sse) -> String {
    assert_eq!(s.status, 200);
    let first = s.next(WAIT).await.expect("the opening comment");
    let c = first.comments.join(" ");
    assert!(c.starts_with("subscribed"), "{first:?}");
    c
}

async fn new_location(e: &Engine, id: &str) {
    exec(
        e,
        Command::Catalog(CatalogCommand::UpsertLocation(Location {
            id: common::loc(id),
            kind: LocationKind::Store,
            region: "FR".into(),
        })),
    )
    .await
    .expect("location");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sku_reads_as_json_and_bad_input_gets_a_stable_code() {
    let api = start(HttpConfig::default()).await;
    adjust(&api.engine, "sku-1", "wh-a", 10).await.unwrap();
    let a = get(api.addr, "/v1/skus/sku-1", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let j = a.json();
    assert_eq!(j["sku"], "sku-1");
    assert_eq!(j["oversold"], false);
    let atp: HashMap<String, u64> = j["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["channel"].as_str().unwrap().to_string(),
                c["atp"].as_u64().unwrap(),
            )
        })
        .collect();
    // web: 10 at wh-a minus a buffer of 1; store: capped at 5.
    assert_eq!(atp, HashMap::from([("web".into(), 9), ("store".into(), 5)]));
    let b = &j["buckets"][0];
    assert_eq!(
        (
            b["location"].as_str(),
            b["on_hand"].as_u64(),
            b["atp"].as_i64()
        ),
        (Some("wh-a"), Some(10), Some(10))
    );
    assert!(j["last_seq"].as_u64().unwrap() > 0);

    let unknown = get(api.addr, "/v1/skus/nope", &[]).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "unknown_sku".into())
    );
    // A space is not allowed in a SKU id.
    let bad = get(api.addr, "/v1/skus/a%20b", &[]).await;
    assert_eq!((bad.status, bad.code()), (400, "bad_sku".into()));
    let long = format!("/v1/skus/{}", "x".repeat(65));
    assert_eq!(get(api.addr, &long, &[]).await.code(), "bad_sku");
    // A SKU id with a slash, percent-encoded in the path.
    adjust(&api.engine, "a/b", "wh-a", 1).await.unwrap();
    assert_eq!(
        get(api.addr, "/v1/skus/a%2Fb", &[]).await.json()["sku"],
        "a/b"
    );

    let no_route = get(api.addr, "/v1/nothing", &[]).await;
    assert_eq!((no_route.status, no_route.code()), (404, "no_route".into()));
    assert_eq!(get(api.addr, "/nothing", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_reads_a_list_or_a_prefix_in_bounded_pages() {
    let api = start(HttpConfig::default()).await;
    for s in ["p-1", "p-2", "p-3", "q-1"] {
        adjust(&api.engine, s, "wh-a", 3).await.unwrap();
    }
    let a = get(api.addr, "/v1/atp?skus=p-2,q-1,zz", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    let skus: Vec<&str> = j["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["p-2", "q-1"]);
    assert_eq!(j["unknown"], serde_json::json!(["zz"]));
    assert_eq!(
        j["skus"][0]["channels"][0]["atp"].as_u64().unwrap()
            + j["skus"][0]["channels"][1]["atp"].as_u64().unwrap(),
        2 + 3
    );

    // Pages of 2 under prefix p-.
    let page1 = get(api.addr, "/v1/atp?prefix=p-&limit=2", &[]).await.json();
    let names = |j: &Value| -> Vec<String> {
        j["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sku"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page1), ["p-1", "p-2"]);
    assert_eq!(page1["next_after"], "p-2");
    let page2 = get(api.addr, "/v1/atp?prefix=p-&limit=2&after=p-2", &[])
        .await
        .json();
    assert_eq!(names(&page2), ["p-3"]);
    assert!(page2.get("next_after").is_none(), "{page2}");

    for (q, code) in [
        ("/v1/atp?prefix=p-&limit=0", "bad_limit"),
        ("/v1/atp?prefix=p-&limit=1001", "bad_limit"),
        ("/v1/atp?prefix=p-&limit=x", "bad_query"),
        ("/v1/atp", "bad_query"),
        ("/v1/atp?skus=a&prefix=p", "bad_query"),
        ("/v1/atp?skus=a&limit=3", "bad_query"),
        ("/v1/atp?skus=a,,b", "bad_sku"),
        ("/v1/atp?sku=a", "bad_query"),
    ] {
        let a = get(api.addr, q, &[]).await;
        assert_eq!(
            (a.status, a.code()),
            (400, code.to_string()),
            "{q}: {}",
            a.body
        );
    }
    let many = format!("/v1/atp?skus={}", vec!["s"; 1001].join(","));
    assert_eq!(get(api.addr, &many, &[]).await.code(), "too_many_skus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_reads_by_its_32_hex_digit_id() {
    let api = start(HttpConfig::default()).await;
    adjust(&api.engine, "sku-1", "wh-a", 10).await.unwrap();
    let id: u128 = 0xfeed_0000_0000_0000_0000_0000_0000_0042;
    exec(&api.engine, reserve_cmd(id, "web", &[("sku-1", 2)], 60_000))
        .await
        .expect("reserved");
    let a = get(api.addr, &format!("/v1/reservations/{id:032x}"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["reservation"], format!("{id:032x}"));
    assert_eq!(j["channel"], "web");
    assert_eq!(j["lines"], serde_json::json!([{"sku": "sku-1", "qty": 2}]));
    assert!(j["expires_at"].as_str().unwrap().ends_with('Z'));

    for bad in [
        "42",
        "0x42",
        "zz000000000000000000000000000042",
        &format!("{id:033x}"),
    ] {
        let a = get(api.addr, &format!("/v1/reservations/{bad}"), &[]).await;
        assert_eq!(
            (a.status, a.code()),
            (400, "bad_reservation_id".into()),
            "{bad}"
        );
    }
    let none = get(api.addr, &format!("/v1/reservations/{:032x}", 7), &[]).await;
    assert_eq!(
        (none.status, none.code()),
        (404, "unknown_reservation".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_are_the_binary_ports() {
    let tokens = HashMap::from([
        ("tok-checkout".to_string(), Role::Checkout),
        ("tok-adapter".to_string(), Role::Adapter),
    ]);
    let api = start(HttpConfig {
        tokens,
        ..HttpConfig::default()
    })
    .await;
    adjust(&api.engine, "sku-1", "wh-a", 1).await.unwrap();
    let missing = get(api.addr, "/v1/skus/sku-1", &[]).await;
    assert_eq!(
        (missing.status, missing.code()),
        (401, "unauthorized".into())
    );
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = get(
        api.addr,
        "/v1/skus/sku-1",
        &[("Authorization", "Bearer tok-nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    // Reads: every role.
    for t in ["Bearer tok-checkout", "Bearer tok-adapter"] {
        assert_eq!(
            get(api.addr, "/v1/skus/sku-1", &[("Authorization", t)])
                .await
                .status,
            200
        );
    }
    // Events: not for checkout.
    let refused = get(
        api.addr,
        "/v1/events",
        &[("Authorization", "Bearer tok-checkout")],
    )
    .await;
    assert_eq!((refused.status, refused.code()), (403, "forbidden".into()));
    let mut s = Sse::open(
        api.addr,
        "/v1/events",
        &[("Authorization", "Bearer tok-adapter")],
    )
    .await;
    subscribed(&mut s).await;
    // Probes and scrapes need no token.
    assert_eq!(get(api.addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(api.addr, "/metrics", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_off_loopback_the_api_is_off_and_probes_still_answer() {
    let api = start_with(HttpConfig::default(), "0.0.0.0:0").await;
    let a = get(api.addr, "/v1/skus/sku-1", &[]).await;
    assert_eq!((a.status, a.code()), (403, "tokens_required".into()));
    assert_eq!(
        get(api.addr, "/v1/events", &[]).await.code(),
        "tokens_required"
    );
    assert_eq!(get(api.addr, "/healthz", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_not_ready_before_the_engine_is_open() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let http = HttpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Sources::new(),
        handle,
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let addr = http.local_addr();
    tokio::spawn(http.run(std::future::pending()));
    let a = get(addr, "/v1/skus/sku-1", &[]).await;
    assert_eq!((a.status, a.code()), (503, "not_ready".into()));
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(get(addr, "/v1/events", &[]).await.code(), "not_ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_with_last_event_id_returns_exactly_the_missed_events() {
    let v = validator();
    let api = start(HttpConfig::default()).await;
    let path = "/v1/events?skus=sku-r";
    // The reference sees everything; `a` is cut off and resumes as `b`.
    let mut reference = Sse::open(api.addr, path, &[]).await;
    subscribed(&mut reference).await;
    assert_eq!(reference.header("content-type"), Some("text/event-stream"));
    let mut a = Sse::open(api.addr, path, &[]).await;
    subscribed(&mut a).await;

    let e = &api.engine;
    let res: u128 = 0xabc;
    adjust(e, "sku-r", "wh-a", 10).await.unwrap(); // web 0 -> 9, store 0 -> 5
    exec(e, reserve_cmd(res, "web", &[("sku-r", 2)], 60_000))
        .await
        .unwrap();
    adjust(e, "sku-r", "wh-a", 5).await.unwrap();
    adjust(e, "sku-other", "wh-a", 5).await.unwrap(); // filtered out
    new_location(e, "marker-1").await;
    // The first adjust's record gives two events (one per channel): cut between them.
    let first = a.next_event(WAIT).await.expect("first event");
    let got = checked(&v, &first);
    assert_eq!(got["type"], "omnistock.stock.back");
    let last_seen = first.id.clone().expect("an id");
    drop(a);

    // Missed while away.
    adjust(e, "sku-r", "wh-a", -3).await.unwrap();
    exec(e, Command::Release { reservation: res })
        .await
        .unwrap();
    new_location(e, "marker-2").await;

    let mut all = events_until(&v, &mut reference, "omnistock.catalog.changed").await;
    all.extend(events_until(&v, &mut reference, "omnistock.catalog.changed").await);
    let cut = all
        .iter()
        .position(|j| j["id"] == last_seen.as_str())
        .unwrap_or_else(|| panic!("{last_seen} not seen by the reference: {all:?}"));
    assert_eq!(cut, 0);
    assert_eq!(
        all[1]["seq"], all[0]["seq"],
        "the cut is inside one record's events"
    );
    for t in [
        "omnistock.reservation.placed",
        "omnistock.reservation.released",
        "omnistock.atp.changed",
    ] {
        assert!(all.iter().any(|j| j["type"] == t), "no {t} in {all:?}");
    }

    let mut b = Sse::open(api.addr, path, &[("Last-Event-ID", &last_seen)]).await;
    let hello = subscribed(&mut b).await;
    assert!(hello.contains("start=replay"), "{hello}");
    let mut resumed = events_until(&v, &mut b, "omnistock.catalog.changed").await;
    resumed.extend(events_until(&v, &mut b, "omnistock.catalog.changed").await);
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&resumed),
        ids(&all[cut + 1..]),
        "exactly the missed events"
    );
    assert_eq!(resumed, all[cut + 1..].to_vec());

    // The same resume through the query parameter (for clients that cannot set headers).
    let q = format!("{path}&last_event_id={}", last_seen.replace(':', "%3A"));
    let mut c = Sse::open(api.addr, &q, &[]).await;
    subscribed(&mut c).await;
    let again = events_until(&v, &mut c, "omnistock.catalog.changed").await;
    assert_eq!(
        ids(&again),
        ids(&all[cut + 1..])
            .into_iter()
            .take(again.len())
            .collect::<Vec<_>>()
    );

    // A malformed or future id is refused with a code.
    let bad = get(api.addr, path, &[("Last-Event-ID", "yesterday")]).await;
    assert_eq!((bad.status, bad.code()), (400, "bad_last_event_id".into()));
    let ahead = get(api.addr, path, &[("Last-Event-ID", "999999:atp:web")]).await;
    assert_eq!(
        (ahead.status, ahead.code()),
        (400, "invalid_subscription".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_filters_snapshot_and_heartbeat_as_subscribe_does() {
    let v = validator();
    let api = start(HttpConfig {
        heartbeat: Duration::from_millis(200),
        ..HttpConfig::default()
    })
    .await;
    adjust(&api.engine, "f-1", "wh-a", 4).await.unwrap();
    adjust(&api.engine, "g-1", "wh-a", 4).await.unwrap();
    // A snapshot of the prefix on one channel, then live reservations only.
    let mut s = Sse::open(
        api.addr,
        "/v1/events?prefix=f-&channels=web&kinds=atp,reservations&start=snapshot",
        &[],
    )
    .await;
    subscribed(&mut s).await;
    let snap = events_until(&v, &mut s, "omnistock.snapshot.end").await;
    assert_eq!(snap.len(), 2, "{snap:?}");
    assert_eq!(
        (
            snap[0]["subject"].as_str(),
            snap[0]["data"]["channel"].as_str(),
            snap[0]["data"]["atp"].as_u64()
        ),
        (Some("f-1"), Some("web"), Some(3))
    );
    // Quiet: heartbeats.
    let quiet = s.next(WAIT).await.expect("a heartbeat");
    assert_eq!(quiet.comments, ["heartbeat"], "{quiet:?}");
    adjust(&api.engine, "g-1", "wh-a", 1).await.unwrap(); // other prefix
    exec(
        &api.engine,
        reserve_cmd(0x77, "store", &[("f-1", 1)], 60_000),
    )
    .await
    .unwrap();
    // The hold at wh-a moves web's ATP too (same record): both kinds, f-1 only, web only.
    let live = events_until(&v, &mut s, "omnistock.reservation.placed").await;
    for j in &live {
        assert_eq!(j["subject"], "f-1", "{live:?}");
        if j["type"] == "omnistock.atp.changed" {
            assert_eq!(j["data"]["channel"], "web", "{live:?}");
        }
    }
    for (q, code) in [
        ("/v1/events?kinds=everything", "bad_query"),
        ("/v1/events?channels=nowhere", "invalid_subscription"),
        ("/v1/events?coalesce_ms=5", "invalid_subscription"),
        ("/v1/events?start=yesterday", "bad_query"),
        ("/v1/events?colour=red", "bad_query"),
    ] {
        let a = get(api.addr, q, &[]).await;
        assert_eq!(
            (a.status, a.code()),
            (400, code.to_string()),
            "{q}: {}",
            a.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_dropped_and_its_place_freed() {
    let api = start(HttpConfig {
        max_event_streams: 1,
        subscription: SubscriptionConfig {
            stall_timeout: Duration::from_millis(300),
            max_items_per_frame: 64,
            ..SubscriptionConfig::default()
        },
        ..HttpConfig::default()
    })
    .await;
    // A small receive window, and nothing read: the server's queue fills.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(api.addr).await.unwrap();
    let mut slow = Sse::open_on(stream, "/v1/events", &[]).await;
    assert_eq!(slow.status, 200);
    // One stream at most: a second is refused while the first lives.
    let second = get(api.addr, "/v1/events", &[]).await;
    assert_eq!(
        (second.status, second.code()),
        (503, "too_many_streams".into())
    );

    let mut produced = 0u64;
    for round in 0..40 {
        let batch: Vec<_> = (0..500)
            .map(|i| {
                (
                    omnistock::engine::Request {
                        id: common::rid(),
                        command: common::adjust_cmd(&format!("s-{round}-{i}"), "wh-a", 2),
                    },
                    0,
                )
            })
            .collect();
        for r in api.engine.execute_frame(batch).await {
            r.expect("adjusted");
            produced += 2; // web 0 -> 1, store 0 -> 2
        }
    }
    // The feed gives up on it (its queue stayed full for the stall timeout).
    let hub = api.engine.feed().clone();
    let lag = async {
        while hub.stats.lagged.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), lag)
        .await
        .expect("the stream lags");
    // Now read: the stream was cut, and what arrived is less than what happened.
    let mut events = 0u64;
    let mut lagged = false;
    let read_all = async {
        while let Some(e) = slow.next(WAIT).await {
            if e.event.as_deref() == Some("lagged") {
                lagged = true;
            } else if !e.data.is_empty() {
                events += 1;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the stream ends");
    assert!(slow.ended(), "closed by the server");
    assert!(
        events < produced,
        "{events} of {produced} events: never dropped"
    );
    eprintln!("slow client: {events} of {produced} events, lagged notice: {lagged}");
    // Its place is free again.
    let mut again = Sse::open(api.addr, "/v1/events", &[]).await;
    subscribed(&mut again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_guessing_tokens_is_refused_unchecked_for_the_window() {
    let api = start(HttpConfig {
        tokens: HashMap::from([("tok-admin".to_string(), Role::Admin)]),
        ..HttpConfig::default()
    })
    .await;
    for i in 0..20 {
        let guess = format!("Bearer guess-{i}");
        let a = get(api.addr, "/v1/atp?prefix=", &[("Authorization", &guess)]).await;
        assert_eq!(a.status, 401, "attempt {i}");
    }
    // Now even the right token is not looked at until the window ends.
    let a = get(
        api.addr,
        "/v1/atp?prefix=",
        &[("Authorization", "Bearer tok-admin")],
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (429, "auth_throttled".into()),
        "{}",
        a.body
    );
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Probes are not behind credentials.
    assert_eq!(get(api.addr, "/healthz", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_event_streams_before_the_engine_stops() {
    let api = start(HttpConfig::default()).await;
    let mut s = Sse::open(api.addr, "/v1/events", &[]).await;
    subscribed(&mut s).await;
    api.sources.set_stopping();
    let end = async { while s.next(WAIT).await.is_some() {} };
    tokio::time::timeout(WAIT, end)
        .await
        .expect("the stream ends");
    assert!(s.ended());
    // New streams are refused from then on (answered, not hung).
    let late = get(api.addr, "/v1/events", &[]).await;
    assert_eq!((late.status, late.code()), (503, "unavailable".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_endpoint_ends_its_streams_and_returns() {
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).expect("engine"));
    let sources = Sources::new();
    sources.set_engine(engine);
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let http = HttpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        sources,
        handle,
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let addr = http.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(http.run(async move {
        let _ = stopped.await;
    }));
    let mut s = Sse::open(addr, "/v1/events", &[]).await;
    subscribed(&mut s).await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .expect("run returns with a stream open")
        .unwrap();
    while s.next(WAIT).await.is_some() {}
    assert!(s.ended());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_older_than_the_ring_gets_a_snapshot_then_live() {
    let v = validator();
    let engine = Arc::new(
        Engine::start_in_memory(EngineConfig {
            feed_retention_records: 8,
            ..EngineConfig::default()
        })
        .expect("engine"),
    );
    small_catalog(&engine).await;
    published(&engine).await;
    let sources = Sources::new();
    sources.set_engine(engine.clone());
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let http = HttpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        sources,
        handle,
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let addr = http.local_addr();
    tokio::spawn(http.run(std::future::pending()));
    let mut s = Sse::open(addr, "/v1/events?skus=old-1", &[]).await;
    subscribed(&mut s).await;
    adjust(&engine, "old-1", "wh-a", 3).await.unwrap();
    let first = s.next_event(WAIT).await.expect("an event");
    checked(&v, &first);
    drop(s);
    // Far more records than the ring keeps.
    for _ in 0..40 {
        adjust(&engine, "old-2", "wh-a", 1).await.unwrap();
    }
    adjust(&engine, "old-1", "wh-a", 1).await.unwrap();
    // Published, so the ring has moved past `first` when `b` asks for it.
    published(&engine).await;
    let id = first.id.unwrap();
    let mut b = Sse::open(addr, "/v1/events?skus=old-1", &[("Last-Event-ID", &id)]).await;
    let hello = subscribed(&mut b).await;
    assert!(hello.contains("start=snapshot"), "{hello}");
    let snap = events_until(&v, &mut b, "omnistock.snapshot.end").await;
    let atp: Vec<(String, u64)> = snap
        .iter()
        .filter(|j| j["type"] == "omnistock.atp.snapshot")
        .map(|j| {
            let d = &j["data"];
            (
                d["channel"].as_str().unwrap().to_string(),
                d["atp"].as_u64().unwrap(),
            )
        })
        .collect();
    // 4 units at wh-a: web shows 3 (buffer 1), store 4 (cap 5).
    assert_eq!(atp.len(), 2, "{snap:?}");
    assert!(
        atp.contains(&("web".into(), 3)) && atp.contains(&("store".into(), 4)),
        "{atp:?}"
    );
    // Then live.
    adjust(&engine, "old-1", "wh-a", 1).await.unwrap();
    let live = checked(&v, &b.next_event(WAIT).await.expect("a live event"));
    assert_eq!(live["subject"], "old-1");
    assert_ne!(live["type"], "omnistock.atp.snapshot");
}
