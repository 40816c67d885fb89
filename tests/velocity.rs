//! Demand velocity and projected stockout through the engine: a durable engine on a manual
//! clock takes holds and fulfilments at known times; its velocity must equal, bit for bit,
//! the pure [`Velocity`] fed the same demand at the same times; after a restart rebuilt
//! from the log alone, and again from a checkpoint plus the records after it, and after
//! passivation, the velocity is the same; the at-risk list ranks SKUs by hours to zero and
//! refuses bad input. Through the real server: `VELOCITY` and `AT_RISK` answers, their
//! rejections and roles, and `ctl velocity` / `ctl at-risk` (text, `--json`, exit codes).

mod common;

use std::sync::Arc;

use common::*;
use omnistock::client::{Client, ClientConfig, ClientError};
use omnistock::domain::{ChannelVelocity, DemandKind, Rejection, Velocity};
use omnistock::engine::{Command, Engine, EngineConfig, Failure, ManualClock, PersistConfig};
use omnistock::server::{Server, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const T0: u64 = 1_800_000_000_000;
const MINUTE: u64 = 60_000;

fn cfg(dir: &std::path::Path, clock: &Arc<ManualClock>) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    c.checkpoint_every_records = 0; // checkpoints only when the test asks
    c.clock = Some(clock.clone());
    c.engine.arbiters = 1;
    c
}

async fn reopen(dir: &std::path::Path, clock: &Arc<ManualClock>, e: Engine) -> Engine {
    e.shutdown();
    drop(e);
    Engine::open(cfg(dir, clock)).await.expect("reopen")
}

/// The engine's velocity of `s` on `channel`.
async fn velocity_of(e: &Engine, s: &str, channel: &str) -> ChannelVelocity {
    let all = e.velocity(&sku(s)).await.expect("velocity");
    all.channels
        .into_iter()
        .find(|v| v.channel.as_str() == channel)
        .expect("every catalog channel is listed")
}

/// What the engine and the pure model do for one step of demand.
struct Demand {
    model: Velocity,
    next_reservation: u128,
}

impl Demand {
    /// Holds `qty` of `s` on web at the clock's now and, when `fulfil`, fulfils it whole.
    async fn order(&mut self, e: &Engine, clock: &ManualClock, s: &str, qty: u32, fulfil: bool) {
        self.next_reservation += 1;
        let res = self.next_reservation;
        exec(e, reserve_cmd(res, "web", &[(s, qty)], 3_600_000))
            .await
            .expect("reserve");
        let now = clock.now();
        self.model.record(&chan("web"), DemandKind::Held, qty, now);
        if fulfil {
            exec(
                e,
                Command::Fulfill {
                    reservation: res,
                    lines: None,
                },
            )
            .await
            .expect("fulfil");
            self.model
                .record(&chan("web"), DemandKind::Fulfilled, qty, now);
        }
    }
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for ManualClock {
    fn now(&self) -> u64 {
        omnistock::engine::Clock::now_ms(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velocity_equals_the_model_live_after_replay_after_a_checkpoint_and_when_passive() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = Engine::open(cfg(dir.path(), &clock)).await.unwrap();
    small_catalog(&e).await;
    adjust(&e, "A", "wh-a", 1_000).await.unwrap();
    let mut d = Demand {
        model: Velocity::default(),
        next_reservation: 0,
    };
    // Ten orders of 3, one a minute, every other one shipped.
    for i in 0..10 {
        d.order(&e, &clock, "A", 3, i % 2 == 0).await;
        clock.advance(MINUTE);
    }
    let now = clock.now();
    // web sells from wh-a and st-b with buffer 1: 1000 - 30 held = 970, minus 1.
    let live = velocity_of(&e, "A", "web").await;
    assert_eq!(live, d.model.rates(&chan("web"), 969, now));
    assert!(live.windows[0].held_per_hour > live.windows[2].held_per_hour);
    assert!(live.windows[0].fulfilled_per_hour > 0.0);
    // store has no demand: zero rates, no projection.
    let store = velocity_of(&e, "A", "store").await;
    assert!(store.windows.iter().all(|w| w.hours_to_zero.is_none()));
    // Region FR (every location of the catalog): the units taken at wh-a, against the
    // region's ATP (970 at wh-a, no channel buffer).
    let regions = e.velocity(&sku("A")).await.unwrap().regions;
    assert_eq!(regions.len(), 1);
    assert_eq!((regions[0].region.as_str(), regions[0].atp), ("FR", 970));
    for (r, c) in regions[0].windows.iter().zip(live.windows) {
        assert_eq!(
            (r.held_per_hour, r.fulfilled_per_hour),
            (c.held_per_hour, c.fulfilled_per_hour)
        );
        assert_eq!(r.hours_to_zero, Some(970.0 / c.held_per_hour));
    }

    // Restart without a checkpoint: rebuilt from the log's records and their times.
    let e = reopen(dir.path(), &clock, e).await;
    assert_eq!(velocity_of(&e, "A", "web").await, live);

    // More demand, a checkpoint in the middle of it, more demand, restart: checkpoint plus
    // the records after it.
    for i in 0..4 {
        d.order(&e, &clock, "A", 2, i == 0).await;
        clock.advance(5 * MINUTE);
        if i == 1 {
            e.checkpoint().await.expect("checkpoint");
        }
    }
    let now = clock.now();
    let want = d.model.rates(&chan("web"), 969 - 8, now);
    assert_eq!(velocity_of(&e, "A", "web").await, want);
    let state = e.sku_state(&sku("A")).await.unwrap();
    let all = e.velocity(&sku("A")).await.unwrap();
    let e = reopen(dir.path(), &clock, e).await;
    assert_eq!(e.sku_state(&sku("A")).await.unwrap(), state);
    assert_eq!(velocity_of(&e, "A", "web").await, want);
    assert_eq!(e.velocity(&sku("A")).await.unwrap(), all);

    // A passive SKU keeps its velocity in its compact bytes and is read without activation
    // (a receipt at ds-c, outside web, activates A first).
    adjust(&e, "A", "ds-c", 5).await.unwrap();
    assert_eq!(velocity_of(&e, "A", "web").await, want);
    assert_eq!(e.passivate_all_now(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.stats().active_skus > 0 {
        assert!(std::time::Instant::now() < deadline, "A did not passivate");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(velocity_of(&e, "A", "web").await, want);
    assert_eq!(e.stats().active_skus, 0);

    // An hour without demand: the 1 h window halves.
    clock.advance(3_600_000);
    let later = velocity_of(&e, "A", "web").await;
    let ratio = later.windows[1].held_per_hour / want.windows[1].held_per_hour;
    assert!((ratio - 0.5).abs() < 1e-12, "{ratio}");
    e.shutdown();
}

fn rejection(f: Failure) -> Rejection {
    match f {
        Failure::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// SKUs A, B, C, D with 100 units at wh-a; at one time A gets 10 held units, B 40, C 5,
/// D none (and E is on the store channel only).
async fn ranked_scenario(e: &Engine, clock: &ManualClock) {
    small_catalog(e).await;
    for s in ["A", "B", "C", "D", "E"] {
        adjust(e, s, "wh-a", 100).await.unwrap();
    }
    let mut d = Demand {
        model: Velocity::default(),
        next_reservation: 1_000,
    };
    for (s, qty) in [("A", 10), ("B", 40), ("C", 5)] {
        d.order(e, clock, s, qty, false).await;
    }
    exec(e, reserve_cmd(2_000, "store", &[("E", 4)], 3_600_000))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_risk_ranks_by_hours_to_zero_and_refuses_bad_input() {
    let clock = Arc::new(ManualClock::new(T0));
    let e = Engine::start_in_memory_with_clock(
        EngineConfig {
            arbiters: 1,
            ..EngineConfig::default()
        },
        clock.clone(),
    )
    .unwrap();
    ranked_scenario(&e, &clock).await;
    clock.advance(MINUTE);
    // Hours to zero ~ ATP / held: B 59/40, A 89/10, C 94/5; D has no demand.
    let names = |v: &[omnistock::domain::AtRisk]| -> Vec<String> {
        v.iter().map(|a| a.sku.as_str().to_string()).collect()
    };
    for window in 0..3 {
        let list = e.at_risk(&chan("web"), window, 10).await.unwrap();
        assert_eq!(names(&list), ["B", "A", "C"], "window {window}");
        let hours: Vec<f64> = list
            .iter()
            .map(|a| a.velocity.windows[window].hours_to_zero.unwrap())
            .collect();
        assert!(hours.windows(2).all(|h| h[0] <= h[1]), "{hours:?}");
    }
    assert_eq!(
        names(&e.at_risk(&chan("web"), 1, 2).await.unwrap()),
        ["B", "A"]
    );
    assert_eq!(
        names(&e.at_risk(&chan("store"), 1, 5).await.unwrap()),
        ["E"]
    );
    // Passive SKUs are ranked from their compact bytes, the same way.
    e.passivate_all_now();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.stats().active_skus > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SKUs did not passivate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        names(&e.at_risk(&chan("web"), 1, 10).await.unwrap()),
        ["B", "A", "C"]
    );
    // Bad input.
    let unknown = e.at_risk(&chan("nope"), 1, 10).await.unwrap_err();
    assert!(matches!(rejection(unknown), Rejection::UnknownChannel(_)));
    for (window, limit) in [(3, 10), (1, 0), (1, 1_001)] {
        let r = rejection(e.at_risk(&chan("web"), window, limit).await.unwrap_err());
        assert!(matches!(r, Rejection::InvalidRequest(_)), "{r:?}");
    }
    let r = rejection(e.velocity(&sku("NOPE")).await.unwrap_err());
    assert!(matches!(r, Rejection::UnknownSku(_)), "{r:?}");
    e.shutdown();
}

fn st(e: ClientError) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("expected a status, got {e:?}"))
}

async fn ctl(addr: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(["ctl", "--addr", addr])
        .args(args)
        .output()
        .await
        .expect("run ctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velocity_and_at_risk_through_the_server_and_ctl() {
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Arc::new(
        Engine::start_in_memory_with_clock(
            EngineConfig {
                arbiters: 1,
                ..EngineConfig::default()
            },
            clock.clone(),
        )
        .unwrap(),
    );
    ranked_scenario(&engine, &clock).await;
    clock.advance(MINUTE);
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    cfg.tokens
        .insert("adm".into(), omnistock::protocol::Role::Admin);
    cfg.tokens
        .insert("chk".into(), omnistock::protocol::Role::Checkout);
    let server = Server::bind(cfg, engine.clone()).await.unwrap();
    let addr = server.local_addr().to_string();
    let stop = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    let c = Client::connect(ClientConfig::new(addr.clone()).token("adm"))
        .await
        .unwrap();

    let v = c.velocity("B").await.unwrap();
    assert_eq!(v.sku, "B");
    let chans: Vec<&str> = v.channels.iter().map(|c| c.channel.as_str()).collect();
    assert_eq!(chans, ["store", "web"]);
    let web = &v.channels[1];
    let own = velocity_of(&engine, "B", "web").await;
    assert_eq!(web.atp, own.atp);
    assert_eq!(web.windows.len(), 3);
    for (w, o) in web.windows.iter().zip(own.windows) {
        assert_eq!(
            (w.half_life_ms, w.held_per_hour, w.hours_to_zero),
            (o.half_life_ms, o.held_per_hour, o.hours_to_zero)
        );
    }
    // B's 40 units were taken at wh-a, region FR, whose ATP is B's 60 there.
    assert_eq!(v.regions.len(), 1);
    assert_eq!((v.regions[0].region.as_str(), v.regions[0].atp), ("FR", 60));
    assert_eq!(
        v.regions[0].windows[1].held_per_hour,
        web.windows[1].held_per_hour
    );
    let list = c.at_risk("web", 1, 2).await.unwrap();
    let skus: Vec<&str> = list.skus.iter().map(|s| s.sku.as_str()).collect();
    assert_eq!(
        (list.channel.as_str(), list.window, skus),
        ("web", 1, vec!["B", "A"])
    );
    assert_eq!(list.skus[0].velocity, *web);

    // Rejections: unknown SKU 2, unknown channel 4, bad id / window / limit 12.
    assert_eq!(st(c.velocity("NOPE").await.unwrap_err()), 2);
    assert_eq!(st(c.velocity("bad id!").await.unwrap_err()), 12);
    assert_eq!(st(c.at_risk("nope", 1, 10).await.unwrap_err()), 4);
    assert_eq!(st(c.at_risk("web", 3, 10).await.unwrap_err()), 12);
    assert_eq!(st(c.at_risk("web", 1, 0).await.unwrap_err()), 12);
    assert_eq!(st(c.at_risk("web", 1, 1_001).await.unwrap_err()), 12);
    // A checkout token reads one SKU's velocity but may not scan every SKU.
    let chk = Client::connect(ClientConfig::new(addr.clone()).token("chk"))
        .await
        .unwrap();
    assert!(chk.velocity("B").await.is_ok());
    let forbidden = chk.at_risk("web", 1, 10).await.unwrap_err();
    assert_eq!(
        forbidden.status(),
        Some(omnistock::protocol::status::FORBIDDEN)
    );

    // ctl velocity --json: the same numbers.
    let o = ctl(&addr, &["--token", "adm", "--json", "velocity", "B"]).await;
    assert!(o.status.success(), "{o:?}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["sku"], "B");
    assert_eq!(j["channels"][1]["channel"], "web");
    assert_eq!(j["channels"][1]["atp"], web.atp);
    assert_eq!(
        j["channels"][1]["windows"][1]["held_per_hour"].as_f64(),
        Some(web.windows[1].held_per_hour)
    );
    assert!(j["channels"][0]["windows"][0]["hours_to_zero"].is_null());
    // ctl velocity: a table per channel and window.
    let o = ctl(&addr, &["--token", "adm", "velocity", "B"]).await;
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    let header = text.lines().nth(1).unwrap();
    assert!(header.starts_with("channel"), "{text}");
    for col in ["atp", "half_life", "held/h", "fulfilled/h", "hours_to_zero"] {
        assert!(header.contains(col), "{col} in {header}");
    }
    let web_1h = text
        .lines()
        .find(|l| l.starts_with("web") && l.contains(" 1h "))
        .unwrap_or_else(|| panic!("web 1h row in\n{text}"));
    let hours = format!("{:.1}", web.windows[1].hours_to_zero.unwrap());
    assert!(web_1h.ends_with(&hours), "{web_1h} ends with {hours}");

    // ctl at-risk: ranked, with --limit and --window; JSON parsed.
    let o = ctl(
        &addr,
        &["--token", "adm", "--json", "at-risk", "web", "--limit", "3"],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ranked: Vec<&str> = j["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sku"].as_str().unwrap())
        .collect();
    assert_eq!(ranked, ["B", "A", "C"]);
    assert_eq!(j["window"], 1);
    let o = ctl(
        &addr,
        &["--token", "adm", "at-risk", "web", "--window", "0"],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("ranked_by_window: 0"), "{text}");
    let first = text
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap();
    assert!(first.contains(" B "), "{text}");
    // Exit codes: an unknown channel is its status; a limit out of range a usage error.
    let o = ctl(&addr, &["--token", "adm", "at-risk", "nope"]).await;
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let o = ctl(
        &addr,
        &["--token", "adm", "at-risk", "web", "--limit", "1001"],
    )
    .await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let o = ctl(&addr, &["--token", "adm", "velocity", "NOPE"]).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    stop.shutdown();
    task.await.unwrap();
    engine.shutdown();
}
