//! docs/openapi.json against the server: its paths and methods are exactly the routes the
//! router is built from (`omnistock::http::routes`, the table the router itself folds), every
//! documented route is served (not the 404 fallback) and no other method is, and the real
//! answers of the running endpoint (a SKU, ATP by list and prefix, a reservation, errors)
//! are valid against the document's schemas.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::http::{get, send, Sse};
use common::{adjust, exec, reserve_cmd, small_catalog};
use omnistock::engine::{Engine, EngineConfig};
use omnistock::http::{routes, HttpConfig, HttpServer, Sources};
use serde_json::{json, Value};

fn document() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

/// A validator for `#/components/schemas/<name>` of the document.
fn schema(doc: &Value, name: &str) -> jsonschema::Validator {
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

fn assert_valid(v: &jsonschema::Validator, name: &str, instance: &Value) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {instance}: {errors:?}");
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_router() {
    let doc = document();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let served: BTreeSet<(String, String)> = routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let listed = documented(&doc);
    let missing: Vec<_> = served.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "served but not in docs/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in docs/openapi.json but not served: {extra:?}"
    );
    // Every path parameter of a template is declared, and only those.
    for (path, item) in doc["paths"].as_object().unwrap() {
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for op in item.as_object().unwrap().values() {
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(in_path, declared, "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_and_answers_as_documented() {
    let doc = document();
    let engine = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&engine).await;
    adjust(&engine, "sku-1", "wh-a", 10).await.unwrap();
    adjust(&engine, "sku-2", "st-b", 4).await.unwrap();
    let res: u128 = 0x1234;
    exec(
        &engine,
        reserve_cmd(res, "web", &[("sku-1", 2), ("sku-2", 1)], 60_000),
    )
    .await
    .unwrap();
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

    engine.ack_position("probe", 1).await.unwrap();
    for (method, path) in documented(&doc) {
        let concrete = path
            .replace("{sku}", "sku-1")
            .replace("{id}", &format!("{res:032x}"))
            .replace("{name}", "probe")
            .replace("/v1/atp", "/v1/atp?skus=sku-1");
        if method == "delete" {
            let a = send(addr, "DELETE", &concrete, &[]).await;
            assert_eq!(a.status, 204, "{path}: {}", a.body);
            let again = send(addr, "DELETE", &concrete, &[]).await;
            assert_eq!(again.status, 404, "{path}");
            assert_eq!(again.code(), "unknown_subscription");
            assert_valid(&schema(&doc, "Error"), "Error", &again.json());
            for other in ["GET", "POST", "PUT"] {
                let a = send(addr, other, &concrete, &[]).await;
                assert_eq!(a.status, 405, "{other} {path}");
            }
            continue;
        }
        assert_eq!(method, "get");
        if path == "/v1/events" {
            let s = Sse::open(addr, &concrete, &[]).await;
            assert_eq!(s.status, 200, "{path}");
        } else {
            let a = get(addr, &concrete, &[]).await;
            assert_eq!(a.status, 200, "{path}: {}", a.body);
        }
        // Methods the document does not list are refused.
        for other in ["POST", "PUT", "DELETE"] {
            let a = send(addr, other, &concrete, &[]).await;
            assert_eq!(a.status, 405, "{other} {path}");
        }
    }
    // Not in the document: the fallback.
    assert_eq!(get(addr, "/v1/skus", &[]).await.code(), "no_route");
    assert_eq!(get(addr, "/v2/atp", &[]).await.status, 404);

    engine.ack_position("probe-2", 1).await.unwrap();
    let answers = [
        ("Sku", "/v1/skus/sku-1".to_string()),
        ("Atp", "/v1/atp?skus=sku-1,sku-2,nope".to_string()),
        ("Atp", "/v1/atp?prefix=sku-&limit=1".to_string()),
        ("Reservation", format!("/v1/reservations/{res:032x}")),
        ("Subscriptions", "/v1/subscriptions?limit=1".to_string()),
        ("Error", "/v1/subscriptions?limit=x".to_string()),
        ("Error", "/v1/skus/nope".to_string()),
        ("Error", "/v1/reservations/42".to_string()),
        ("Error", "/v1/atp?limit=5000&prefix=x".to_string()),
        ("Error", "/v1/events?kinds=nothing".to_string()),
        ("Error", "/v1/nothing".to_string()),
    ];
    for (name, path) in answers {
        let a = get(addr, &path, &[]).await;
        assert_valid(&schema(&doc, name), name, &a.json());
    }
    // The schemas refuse what the answers must never be.
    let sku = schema(&doc, "Sku");
    assert!(!sku.is_valid(&json!({"sku": "a"})));
    let error = schema(&doc, "Error");
    assert!(!error.is_valid(&json!({"code": "some_new_code", "message": "x"})));
}
