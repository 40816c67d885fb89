//! Explained ATP end to end: a real server on 127.0.0.1:0 (in-memory engine) with stock
//! across three locations, safety stock, a channel with a buffer and a cap, a low-stock
//! threshold and holds from two channels; `EXPLAIN_ATP` through the client must show each
//! part and an ATP equal to `GET_SKU`'s for every channel, unknown ids are rejected with
//! their codes, and `omnistock ctl explain --json` prints the same numbers.

use std::sync::Arc;

use omnistock::client::{Client, ClientConfig, ClientError};
use omnistock::engine::{Engine, EngineConfig};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
fn rid() -> u128 {
    u128::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

async fn apply(c: &Client, op: Op) {
    c.apply(op).await.unwrap();
}

fn adjust(sku: &str, loc: &str, delta: i64) -> Op {
    Op::Adjust(Adjust {
        request_id: rid(),
        sku: sku.into(),
        location: loc.into(),
        delta,
        reason: WireAdjustReason::Receipt,
        reference: String::new(),
    })
}

fn safety(sku: &str, loc: &str, qty: u32) -> Op {
    Op::SetSafetyStock(SetSafetyStock {
        request_id: rid(),
        sku: sku.into(),
        location: loc.into(),
        qty,
    })
}

fn channel(id: &str, locs: &[&str], buffer: u32, cap: Option<u32>) -> Op {
    Op::UpsertChannel(UpsertChannel {
        request_id: rid(),
        channel: WireChannel {
            id: id.into(),
            locations: locs.iter().map(|l| (*l).to_string()).collect(),
            buffer,
            cap,
        },
    })
}

async fn reserve(c: &Client, channel: &str, sku: &str, qty: u32, loc: &str) {
    c.reserve(Reserve {
        request_id: rid(),
        reservation: rid(),
        channel: channel.into(),
        lines: vec![WireLine {
            sku: sku.into(),
            qty,
            location: Some(loc.into()),
        }],
        allow_split: false,
        ttl_ms: 600_000,
    })
    .await
    .unwrap();
}

/// Locations wh (warehouse), st (store), dk (dark store). Channels: web sells from wh, st,
/// dk with buffer 2 and cap 14; pos sells from st; dark from dk with buffer 1.
/// TEE: wh 12 received, 1 of them moved to damaged, safety 2; st 8, safety 1; dk 1,
/// safety 3 (under its safety stock: contributes 0). Holds: web 3 at wh and 1 at st, pos 2
/// at st. Web's low-stock threshold is 20.
async fn scenario(c: &Client) {
    for (id, kind) in [
        ("wh", WireLocationKind::Warehouse),
        ("st", WireLocationKind::Store),
        ("dk", WireLocationKind::DarkStore),
    ] {
        let loc = WireLocation {
            id: id.into(),
            kind,
            region: "FR".into(),
        };
        let op = Op::UpsertLocation(UpsertLocation {
            request_id: rid(),
            location: loc,
        });
        apply(c, op).await;
    }
    apply(c, channel("web", &["wh", "st", "dk"], 2, Some(14))).await;
    apply(c, channel("pos", &["st"], 0, None)).await;
    apply(c, channel("dark", &["dk"], 1, None)).await;
    apply(c, adjust("TEE", "wh", 12)).await;
    apply(c, adjust("TEE", "st", 8)).await;
    apply(c, adjust("TEE", "dk", 1)).await;
    apply(c, safety("TEE", "wh", 2)).await;
    apply(c, safety("TEE", "st", 1)).await;
    apply(c, safety("TEE", "dk", 3)).await;
    apply(
        c,
        Op::Move(MoveStock {
            request_id: rid(),
            sku: "TEE".into(),
            location: "wh".into(),
            from: WireStockState::Sellable,
            to: WireStockState::Damaged,
            qty: 1,
        }),
    )
    .await;
    apply(
        c,
        Op::SetLowStock(SetLowStock {
            request_id: rid(),
            channel: "web".into(),
            sku: None,
            threshold: 20,
        }),
    )
    .await;
    reserve(c, "web", "TEE", 3, "wh").await;
    reserve(c, "web", "TEE", 1, "st").await;
    reserve(c, "pos", "TEE", 2, "st").await;
}

/// (location, on_hand, reserved, safety, damaged, atp, contribution)
type Part = (String, u32, u32, u32, u32, i64, u32);

fn parts(e: &WireAtpExplanation) -> Vec<Part> {
    e.locations
        .iter()
        .map(|p| {
            (
                p.location.clone(),
                p.on_hand,
                p.reserved,
                p.safety_stock,
                p.damaged,
                p.atp,
                p.contribution,
            )
        })
        .collect()
}

fn holds(e: &WireAtpExplanation) -> Vec<(String, u32, u64, u64)> {
    e.holds
        .iter()
        .map(|h| (h.channel.clone(), h.holds, h.units, h.units_here))
        .collect()
}

fn st(e: ClientError) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("expected a status, got {e:?}"))
}

async fn ctl(addr: String, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(["ctl", "--addr", &addr])
        .args(args)
        .output()
        .await
        .expect("run ctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_every_part_and_the_atp_get_sku_shows() {
    let engine = Arc::new(
        Engine::start_in_memory(EngineConfig {
            arbiters: 1,
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::bind(cfg, engine.clone()).await.unwrap();
    let addr = server.local_addr().to_string();
    let stop = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    let c = Client::connect(ClientConfig::new(addr.clone()))
        .await
        .unwrap();
    scenario(&c).await;

    let e = c.explain_atp("TEE", "web").await.unwrap();
    let p = |l: &str, on_hand, reserved, safety, damaged, atp, adds| -> Part {
        (l.into(), on_hand, reserved, safety, damaged, atp, adds)
    };
    assert_eq!(
        parts(&e),
        vec![
            p("wh", 11, 3, 2, 1, 6, 6),
            p("st", 8, 3, 1, 0, 4, 4),
            p("dk", 1, 0, 3, 0, -2, 0),
        ]
    );
    // 6 + 4 + 0 = 10, minus the buffer 2 = 8, under the cap 14.
    let arithmetic = (
        e.sum,
        e.buffer,
        e.withheld_by_buffer,
        e.cap,
        e.withheld_by_cap,
        e.atp,
    );
    assert_eq!(arithmetic, (10, 2, 2, Some(14), 0, 8));
    // pos's 2 units at st are part of web's st reserved.
    let want = vec![("pos".to_string(), 1, 2, 2), ("web".to_string(), 2, 4, 4)];
    assert_eq!(holds(&e), want);
    assert_eq!(
        (e.low_stock_threshold, e.low_stock_source, e.low_stock),
        (20, WireLowStockSource::Channel, true)
    );

    // Every channel's explained ATP is the ATP GET_SKU shows for it.
    let v = c.get_sku("TEE").await.unwrap();
    assert_eq!(v.channels.len(), 3);
    for (ch, atp) in &v.channels {
        let e = c.explain_atp("TEE", ch).await.unwrap();
        assert_eq!(e.atp, *atp, "channel {ch}");
        assert_eq!(
            e.sum - e.withheld_by_buffer - e.withheld_by_cap,
            u64::from(e.atp)
        );
        assert_eq!(e.last_seq, v.last_seq);
    }
    let pos = c.explain_atp("TEE", "pos").await.unwrap();
    assert_eq!(
        (pos.atp, pos.low_stock_source),
        (4, WireLowStockSource::None)
    );
    let dark = c.explain_atp("TEE", "dark").await.unwrap();
    assert_eq!((dark.sum, dark.withheld_by_buffer, dark.atp), (0, 0, 0));

    // Rejections with the existing codes.
    assert_eq!(st(c.explain_atp("NOPE", "web").await.unwrap_err()), 2);
    assert_eq!(st(c.explain_atp("TEE", "nope").await.unwrap_err()), 4);
    assert_eq!(st(c.explain_atp("NOPE", "nope").await.unwrap_err()), 4);
    assert_eq!(st(c.explain_atp("TEE", "bad id!").await.unwrap_err()), 12);

    // A passive SKU is explained from its compact state, with the same answer.
    assert_eq!(engine.passivate_all_now(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.stats().active_skus > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "TEE did not passivate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(c.explain_atp("TEE", "web").await.unwrap(), e);
    assert_eq!(
        engine.stats().active_skus,
        0,
        "explain does not activate a passive SKU"
    );

    // ctl explain --json: the same numbers, parsed.
    let o = ctl(addr.clone(), &["--json", "explain", "TEE", "web"]).await;
    assert!(o.status.success(), "{o:?}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["sku"], "TEE");
    assert_eq!(j["channel"], "web");
    assert_eq!(j["atp"], 8);
    assert_eq!(j["atp"], serde_json::json!(v.channels[2].1));
    assert_eq!(
        (
            &j["sum"],
            &j["withheld_by_buffer"],
            &j["cap"],
            &j["withheld_by_cap"]
        ),
        (
            &serde_json::json!(10),
            &serde_json::json!(2),
            &serde_json::json!(14),
            &serde_json::json!(0)
        )
    );
    assert_eq!(j["locations"][2]["location"], "dk");
    assert_eq!(j["locations"][2]["atp"], -2);
    assert_eq!(j["locations"][2]["contribution"], 0);
    assert_eq!(j["holds"][0]["channel"], "pos");
    assert_eq!(j["holds"][0]["units_here"], 2);
    assert_eq!(j["low_stock_source"], "channel");
    assert_eq!(j["low_stock"], true);
    let sum: u64 = j["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["contribution"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 10);

    // The readable form names the parts and the arithmetic.
    let o = ctl(addr.clone(), &["explain", "TEE", "web"]).await;
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    for needle in [
        "channel:  web",
        "buffer:    2 (withheld 2)",
        "cap:       14 (withheld 0)",
        "atp:       8",
        "low_stock: 20 (channel), LOW-STOCK",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }

    // An unknown channel: exit code = status 4; under --json an error object.
    let o = ctl(addr.clone(), &["--json", "explain", "TEE", "nope"]).await;
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["error"]["name"], "unknown_channel");
    let o = ctl(addr, &["explain", "NOPE", "web"]).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    stop.shutdown();
    task.await.unwrap();
    engine.shutdown();
}
