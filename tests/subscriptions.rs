//! Named subscriptions listed and deleted over the binary protocol (`LIST_SUBSCRIPTIONS`
//! 0x0504, `DELETE_SUBSCRIPTION` 0x0505) on the real `omnistock serve`: names in order,
//! paged, with their lag; delete is admin-only, durable across a restart, and answers
//! `subscription_not_found` (20) for a name with no stored position.

mod common;

use common::{serve_with_tokens, wire_adjust, wire_catalog};
use omnistock::client::{Client, ClientConfig, ClientError, Subscriber};
use omnistock::protocol::{kinds, start, Subscribe};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const ADMIN: &str = "subs-admin-token";
const ADAPTER: &str = "subs-adapter-token";

async fn serve(data: &std::path::Path) -> (tokio::process::Child, u16) {
    let (child, port, _) = serve_http(data).await;
    (child, port)
}

async fn serve_http(data: &std::path::Path) -> (tokio::process::Child, u16, u16) {
    serve_with_tokens(data, &format!("{ADMIN}:admin,{ADAPTER}:adapter"), &[]).await
}

fn cfg(port: u16, token: &str) -> ClientConfig {
    ClientConfig::new(format!("127.0.0.1:{port}")).token(token)
}

async fn ack_name(port: u16, name: &str) -> u64 {
    let sub = Subscriber::subscribe(
        cfg(port, ADAPTER),
        Subscribe {
            name: name.into(),
            start: start::LIVE,
            from_seq: 0,
            channels: vec![],
            skus: vec![],
            sku_prefix: String::new(),
            kinds: kinds::ALL,
            coalesce_ms: 0,
        },
    )
    .await
    .expect("subscribe");
    sub.ack().await.expect("ack");
    sub.position()
}

fn status(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, .. } => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_positions_are_listed_in_pages_and_deleted_durably_by_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, port) = serve(&data).await;
    let admin = Client::connect(cfg(port, ADMIN)).await.unwrap();
    wire_catalog(&admin).await;
    wire_adjust(&admin, "SKU-1", 1).await;
    let b = ack_name(port, "b-sub").await;
    let a = ack_name(port, "a-sub").await;
    let head = wire_adjust(&admin, "SKU-1", 1).await;

    let adapter = Client::connect(cfg(port, ADAPTER)).await.unwrap();
    let all = adapter.subscriptions("", 0).await.unwrap();
    let names: Vec<&str> = all.items.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a-sub", "b-sub"], "in name order");
    assert!(!all.more);
    assert_eq!(all.items[0].position, a);
    assert_eq!(all.items[1].position, b);
    // The feed's head may trail the durable seq by a moment; the lag is measured from it.
    assert!(all.items[0].lag_records <= head - a);

    let first = adapter.subscriptions("", 1).await.unwrap();
    assert_eq!(first.items.len(), 1);
    assert!(first.more);
    let second = adapter
        .subscriptions(&first.items[0].name, 1)
        .await
        .unwrap();
    assert_eq!(second.items[0].name, "b-sub");
    assert!(!second.more);

    // Adapters may list, not delete (104 forbidden); admins delete; twice is 20.
    assert_eq!(
        status(adapter.delete_subscription("a-sub").await.unwrap_err()),
        104
    );
    admin.delete_subscription("a-sub").await.unwrap();
    assert_eq!(
        status(admin.delete_subscription("a-sub").await.unwrap_err()),
        20
    );
    assert_eq!(
        status(admin.delete_subscription("never-stored").await.unwrap_err()),
        20
    );
    let left = adapter.subscriptions("", 0).await.unwrap();
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].name, "b-sub");

    // Durable: after a restart the deleted name stays gone, the other stays.
    drop((admin, adapter));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let mut child = child;
    child.wait().await.unwrap();
    let (_child, port) = serve(&data).await;
    let adapter = Client::connect(cfg(port, ADAPTER)).await.unwrap();
    let after = adapter.subscriptions("", 0).await.unwrap();
    let names: Vec<&str> = after.items.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b-sub"]);
    assert_eq!(after.items[0].position, b);
}

async fn ctl(port: u16, token: &str, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(BIN)
        .args([
            "ctl",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--token",
            token,
        ])
        .args(args)
        .output()
        .await
        .expect("run ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_and_deletes_subscriptions_with_json_and_stable_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, port) = serve(&dir.path().join("data")).await;
    let admin = Client::connect(cfg(port, ADMIN)).await.unwrap();
    wire_catalog(&admin).await;
    let pos = ack_name(port, "ads-pauser").await;
    let (code, out) = ctl(port, ADAPTER, &["--json", "subscriptions"]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["subscriptions"][0]["name"], "ads-pauser");
    assert_eq!(v["subscriptions"][0]["position"], pos);
    let (code, out) = ctl(port, ADAPTER, &["subscriptions"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("name") && out.contains("ads-pauser"), "{out}");
    // An adapter may not delete (104), an admin may; the second time is 20.
    let (code, _) = ctl(port, ADAPTER, &["delete-subscription", "ads-pauser"]).await;
    assert_eq!(code, 104);
    let (code, out) = ctl(
        port,
        ADMIN,
        &["--json", "delete-subscription", "ads-pauser"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["deleted"], "ads-pauser");
    let (code, _) = ctl(port, ADMIN, &["delete-subscription", "ads-pauser"]).await;
    assert_eq!(code, 20);
    let (_, out) = ctl(port, ADAPTER, &["--json", "subscriptions"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["subscriptions"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lists_and_deletes_subscriptions_with_roles() {
    use common::http::send;
    let dir = tempfile::tempdir().unwrap();
    let (_child, port, http) = serve_http(&dir.path().join("data")).await;
    let admin = Client::connect(cfg(port, ADMIN)).await.unwrap();
    wire_catalog(&admin).await;
    let pos = ack_name(port, "shop.a").await;
    let bearer = |t: &str| format!("Bearer {t}");
    let (adapter_auth, admin_auth) = (bearer(ADAPTER), bearer(ADMIN));
    let adapter_h = [("Authorization", adapter_auth.as_str())];
    let admin_h = [("Authorization", admin_auth.as_str())];
    let addr = format!("127.0.0.1:{http}").parse().unwrap();
    let list = send(addr, "GET", "/v1/subscriptions", &adapter_h).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let v = list.json();
    assert_eq!(v["items"][0]["name"], "shop.a");
    assert_eq!(v["items"][0]["position"], pos);
    assert_eq!(v["more"], false);
    let path = "/v1/subscriptions/shop.a";
    assert_eq!(send(addr, "DELETE", path, &adapter_h).await.status, 403);
    assert_eq!(send(addr, "DELETE", path, &[]).await.status, 401);
    assert_eq!(send(addr, "DELETE", path, &admin_h).await.status, 204);
    let gone = send(addr, "DELETE", path, &admin_h).await;
    assert_eq!(
        (gone.status, gone.code().as_str()),
        (404, "unknown_subscription")
    );
    let v = send(addr, "GET", "/v1/subscriptions", &admin_h)
        .await
        .json();
    assert_eq!(v["items"], serde_json::json!([]));
}
