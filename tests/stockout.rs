//! Stockout projection (issue 15, docs/intelligence.md): the per SKU x channel "stockout
//! projected" flag, raised and cleared by events `decide` appends to the request's record.
//!
//! - Pure: the flag after every step equals a two-state model written from the docs (enter
//!   when the channel's hours to zero, read from the state *after* the step, fall under the
//!   threshold `T`; clear above `1.25 T` or without demand; nothing else); an event is
//!   emitted exactly when the flag flips; folding the logged events rebuilds the same flags.
//! - Engine on a manual clock: a hold raises the flag; restarts (log only, checkpoint plus
//!   log) and passivation keep it; the re-projection clears it by decay alone once the
//!   hours pass `1.25 T`, and not before; removing the threshold clears it.
//! - Real server on port 0: `SET_STOCKOUT_THRESHOLD` and `ctl set-stockout-threshold` /
//!   `ctl channels`; a subscriber of the stockout kind receives `stockout projected` under
//!   steady demand before ATP reaches 0, then `cleared` when the SKU is restocked.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use omnistock::client::{Client, ClientConfig, ClientError, Subscriber};
use omnistock::domain::*;
use omnistock::engine::{Command, Engine, ManualClock, PersistConfig};
use omnistock::protocol::{
    kinds, start, stockout_reason, Op, PushItem, SetStockoutThreshold, Subscribe,
};
use omnistock::server::{Server, ServerConfig};
use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const T0: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;

// ---------------------------------------------------------------------------------------
// Pure: the flags against a model.

/// Locations l1, l2; channel ch (both, buffer 1); threshold `hours` on ch (0: none).
fn catalog(hours: u32) -> Catalog {
    let mut c = Catalog::default();
    let mut seq = 0;
    let mut apply = |c: &mut Catalog, cmd: CatalogCommand| {
        seq += 1;
        let ev = c.decide(&cmd).expect("catalog command");
        c.apply(&ev, seq);
    };
    for l in ["l1", "l2"] {
        apply(
            &mut c,
            CatalogCommand::UpsertLocation(Location {
                id: loc(l),
                kind: LocationKind::Store,
                region: "FR".into(),
            }),
        );
    }
    apply(
        &mut c,
        CatalogCommand::UpsertChannel(Channel {
            id: chan("ch"),
            locations: vec![loc("l1"), loc("l2")],
            buffer: 1,
            cap: None,
        }),
    );
    apply(
        &mut c,
        CatalogCommand::SetStockoutThreshold(StockoutThreshold {
            channel: chan("ch"),
            hours,
        }),
    );
    c
}

/// Commands at non-decreasing times: receipts, holds, fulfilments, releases, expiries.
fn steps() -> impl Strategy<Value = Vec<(SkuCommand, u64)>> {
    let l = (0..2usize).prop_map(|i| loc(["l1", "l2"][i]));
    let cmd = prop_oneof![
        (l.clone(), -5i64..40).prop_map(|(location, delta)| SkuCommand::Adjust {
            location,
            delta,
            reason: AdjustReason::Receipt,
            reference: String::new(),
        }),
        (0u128..8, 1u32..8).prop_map(|(reservation, qty)| SkuCommand::Hold {
            reservation,
            channel: chan("ch"),
            lines: vec![HoldLine {
                line: 0,
                qty,
                location: None,
            }],
            allow_split: true,
            expires_at_ms: 0, // set from the step's time below
            cart_skus: 1,
        }),
        (0u128..8).prop_map(|reservation| SkuCommand::Fulfill {
            reservation,
            qty: None,
        }),
        (0u128..8).prop_map(|reservation| SkuCommand::Release {
            reservation,
            reason: ReleaseReason::Client,
        }),
        Just(SkuCommand::Reproject),
        Just(SkuCommand::Reproject),
        Just(SkuCommand::Reproject),
    ];
    // Mostly gaps of minutes (a projection crosses the band [T, 1.25 T] by decay in about
    // 20 minutes of the 1 h window, so steps land inside it), sometimes hours.
    let gap = prop_oneof![4 => 0u64..10 * 60_000, 1 => 0u64..3 * HOUR];
    prop::collection::vec((cmd, gap), 1..80).prop_map(|v| {
        let mut t = T0;
        v.into_iter()
            .map(|(mut c, gap)| {
                t += gap;
                if let SkuCommand::Hold { expires_at_ms, .. } = &mut c {
                    *expires_at_ms = t + 100 * HOUR;
                }
                (c, t)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The flag after each accepted step is the model's, read from the state after the
    /// step; an event is appended exactly when it flips; folding the logged events again
    /// rebuilds the same state, flags included.
    #[test]
    fn the_flag_follows_the_model_and_replay_rebuilds_it(hours in 1u32..48, steps in steps()) {
        let cat = catalog(hours);
        let ch = chan("ch");
        let t = f64::from(hours);
        let mut s = SkuState::new(sku("S"));
        let mut model_on = false;
        let mut log = Vec::new();
        for (i, (cmd, now)) in steps.iter().enumerate() {
            let Ok(events) = s.decide(cmd, &cat, *now) else { continue };
            let seq = i as u64 + 10;
            for e in &events {
                s.apply(e, seq, *now);
                log.push((seq, *now, e.clone()));
            }
            // The model: the 1 h window's projection of the state after the step.
            let v = s.channel_velocity(&cat, &ch, *now).expect("channel");
            let h = v.windows[1].hours_to_zero;
            let want = match h {
                None => false,
                Some(h) if model_on => h <= t * 1.25,
                Some(h) => h < t,
            };
            let projected = events.iter().filter(|e| matches!(e, Event::StockoutProjected { .. })).count();
            let cleared = events.iter().filter(|e| matches!(e, Event::StockoutCleared { .. })).count();
            prop_assert_eq!(s.stockout_projected(&ch), want, "after {:?} at {}: hours {:?}", cmd, now, h);
            prop_assert_eq!((projected, cleared), match (model_on, want) {
                (false, true) => (1, 0),
                (true, false) => (0, 1),
                _ => (0, 0),
            });
            for e in &events {
                if let Event::StockoutProjected { hours_milli, atp, threshold_hours, .. } = e {
                    prop_assert_eq!(*threshold_hours, hours);
                    prop_assert_eq!(*atp, v.atp);
                    let h = h.expect("a projection has hours");
                    prop_assert!((*hours_milli as f64 / 1000.0 - h).abs() <= 0.0005 + h * 1e-12);
                }
            }
            model_on = want;
        }
        let mut replayed = SkuState::new(sku("S"));
        for (seq, at, e) in &log {
            replayed.apply(e, *seq, *at);
        }
        prop_assert_eq!(replayed, s);
    }

    /// Without a threshold nothing is projected and decide emits only the command's events.
    #[test]
    fn without_a_threshold_no_projection_event_is_ever_emitted(steps in steps()) {
        let cat = catalog(0);
        let mut s = SkuState::new(sku("S"));
        for (i, (cmd, now)) in steps.iter().enumerate() {
            let Ok(events) = s.decide(cmd, &cat, *now) else { continue };
            let projections = events
                .iter()
                .filter(|e| matches!(e, Event::StockoutProjected { .. } | Event::StockoutCleared { .. }))
                .count();
            prop_assert_eq!(projections, 0);
            for e in &events {
                s.apply(e, i as u64 + 1, *now);
            }
            prop_assert!(s.stockout.is_empty());
        }
    }
}

/// A value inside the band `[T, 1.25 T]` after the flag is raised yields no event, however
/// often the SKU is re-projected; above the band it clears once.
#[test]
fn no_flapping_inside_the_band() {
    let cat = catalog(24);
    let ch = chan("ch");
    let mut s = SkuState::new(sku("S"));
    let step = |s: &mut SkuState, cmd: SkuCommand, now: u64| -> Vec<Event> {
        let events = s.decide(&cmd, &cat, now).expect("accepted");
        for e in &events {
            s.apply(e, s.last_seq + 1, now);
        }
        events
    };
    step(
        &mut s,
        SkuCommand::Adjust {
            location: loc("l1"),
            delta: 101,
            reason: AdjustReason::Receipt,
            reference: String::new(),
        },
        T0,
    );
    // 10 units held at T0: 10 ln 2 = 6.93/h; ATP 100 - 10 = 90 (buffer 1): 13 h < 24.
    let ev = step(
        &mut s,
        SkuCommand::Hold {
            reservation: 1,
            channel: ch.clone(),
            lines: vec![HoldLine {
                line: 0,
                qty: 10,
                location: None,
            }],
            allow_split: false,
            expires_at_ms: T0 + 100 * HOUR,
            cart_skus: 1,
        },
        T0,
    );
    // The channel's projection, then the region's (its ATP is l1's 91, without the
    // channel's buffer: 13.1 h; its threshold is the channel's).
    assert!(
        matches!(
            ev.as_slice(),
            [
                ..,
                Event::StockoutProjected {
                    atp: 90,
                    threshold_hours: 24,
                    ..
                },
                Event::RegionStockoutProjected {
                    atp: 91,
                    threshold_hours: 24,
                    ..
                }
            ]
        ),
        "{ev:?}"
    );
    assert!(s.stockout_projected(&ch));
    // hours(t) = 90 / (6.93 * 2^-t): 24 h at t = 0.88 h, 30 h at t = 1.2 h. Re-project
    // every minute from 0.9 h to 1.19 h: inside the band, nothing.
    let hours_at =
        |t: u64| 90.0 / (10.0 * std::f64::consts::LN_2 * (-(t as f64) / HOUR as f64).exp2());
    let mut t = 54 * 60_000;
    while t < 71 * 60_000 {
        assert!((24.0..=30.0).contains(&hours_at(t)), "{}", hours_at(t));
        assert_eq!(step(&mut s, SkuCommand::Reproject, T0 + t), vec![]);
        t += 60_000;
    }
    assert!(s.stockout_projected(&ch));
    // Past 1.25 T: cleared, once, as recovered (the region too: 91 units, same band).
    let ev = step(&mut s, SkuCommand::Reproject, T0 + 73 * 60_000);
    assert!(
        matches!(
            ev.as_slice(),
            [
                Event::StockoutCleared {
                    reason: StockoutClearReason::Recovered,
                    ..
                },
                Event::RegionStockoutCleared {
                    reason: StockoutClearReason::Recovered,
                    ..
                }
            ]
        ),
        "{ev:?}"
    );
    assert!(s.region_stockout.is_empty());
    assert!(!s.stockout_projected(&ch));
    assert_eq!(
        step(&mut s, SkuCommand::Reproject, T0 + 80 * 60_000),
        vec![]
    );
}

// ---------------------------------------------------------------------------------------
// Engine on a manual clock.

fn cfg(dir: &std::path::Path, clock: &Arc<ManualClock>) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    c.checkpoint_every_records = 0;
    c.clock = Some(clock.clone());
    c.engine.arbiters = 1;
    // The test drives the re-projection itself (`reproject_stockouts`) on its clock.
    c.engine.expiry_driver = false;
    c
}

async fn reopen(dir: &std::path::Path, clock: &Arc<ManualClock>, e: Engine) -> Engine {
    e.shutdown();
    drop(e);
    Engine::open(cfg(dir, clock)).await.expect("reopen")
}

async fn set_threshold(e: &Engine, channel: &str, hours: u32) {
    exec(
        e,
        Command::Catalog(CatalogCommand::SetStockoutThreshold(StockoutThreshold {
            channel: chan(channel),
            hours,
        })),
    )
    .await
    .expect("threshold");
}

async fn flag(e: &Engine, s: &str) -> bool {
    e.sku_state(&sku(s))
        .await
        .expect("state")
        .stockout_projected(&chan("web"))
}

/// The regions with a raised stockout projection for SKU `s`.
async fn region_flags(e: &Engine, s: &str) -> Vec<String> {
    e.sku_state(&sku(s)).await.expect("state").region_stockout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_by_a_hold_kept_by_restarts_and_passivation_cleared_by_decay_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = Engine::open(cfg(dir.path(), &clock)).await.unwrap();
    small_catalog(&e).await;
    set_threshold(&e, "web", 24).await;
    adjust(&e, "A", "wh-a", 101).await.unwrap();
    adjust(&e, "B", "wh-a", 1_000).await.unwrap();
    // A: 10 held at T0 -> 6.93/h against ATP 90 (101 - 10 - buffer 1): 13 h.
    let out = exec(&e, reserve_cmd(1, "web", &[("A", 10)], 100 * HOUR))
        .await
        .unwrap();
    let projected: Vec<_> = out
        .changes
        .iter()
        .filter_map(|c| match c {
            omnistock::engine::Change::Sku {
                event: Event::StockoutProjected { atp, .. },
                ..
            } => Some(*atp),
            _ => None,
        })
        .collect();
    assert_eq!(
        projected,
        [90],
        "the projection is in the reserve's own record"
    );
    // B: the same hold against 989 units: 143 h, nothing.
    exec(&e, reserve_cmd(2, "web", &[("B", 10)], 100 * HOUR))
        .await
        .unwrap();
    assert!(flag(&e, "A").await && !flag(&e, "B").await);
    // Region FR too (wh-a's region; its threshold is web's): 91 units, 13.1 h.
    assert_eq!(region_flags(&e, "A").await, ["FR"]);
    assert!(region_flags(&e, "B").await.is_empty());
    assert_eq!(e.stockout_watched(), 1);
    assert_eq!(
        (
            e.stats().stockout_watched,
            e.stats().stockout_watch_overflow
        ),
        (1, 0)
    );

    // Restart from the log alone, then from a checkpoint: the flag is in the state.
    let e = reopen(dir.path(), &clock, e).await;
    assert!(flag(&e, "A").await);
    assert_eq!(region_flags(&e, "A").await, ["FR"], "replayed from the log");
    assert_eq!(e.stockout_watched(), 1, "recovery watches the raised SKUs");
    e.checkpoint().await.expect("checkpoint");
    let e = reopen(dir.path(), &clock, e).await;
    assert!(flag(&e, "A").await);
    assert_eq!(
        region_flags(&e, "A").await,
        ["FR"],
        "kept by the checkpoint"
    );
    assert_eq!(e.stockout_watched(), 1);
    // Passive: the compact bytes keep the flag.
    let before = e.sku_state(&sku("A")).await.unwrap();
    e.passivate_all_now();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.stats().active_skus > 0 {
        assert!(std::time::Instant::now() < deadline, "did not passivate");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(e.sku_state(&sku("A")).await.unwrap(), before);

    // One hour without demand: 3.47/h, 26 h: inside the band, nothing logged.
    clock.advance(HOUR);
    assert_eq!(e.reproject_stockouts().await, 0);
    assert!(flag(&e, "A").await);
    // Two hours: 1.73/h, 52 h > 30 h: cleared by decay alone.
    clock.advance(HOUR);
    assert_eq!(e.reproject_stockouts().await, 1);
    assert!(!flag(&e, "A").await);
    assert!(
        region_flags(&e, "A").await.is_empty(),
        "the region decays too"
    );
    assert_eq!(e.stockout_watched(), 0);
    assert_eq!(e.reproject_stockouts().await, 0, "nothing left to watch");
    // The clearing is a logged record: a restart replays it.
    let e = reopen(dir.path(), &clock, e).await;
    assert!(!flag(&e, "A").await);
    assert_eq!(e.stockout_watched(), 0);

    // Removing the threshold clears a raised projection (through the re-projection).
    exec(&e, reserve_cmd(3, "web", &[("A", 50)], 100 * HOUR))
        .await
        .unwrap();
    assert!(flag(&e, "A").await);
    set_threshold(&e, "web", 0).await;
    assert_eq!(e.reproject_stockouts().await, 1);
    let st = e.sku_state(&sku("A")).await.unwrap();
    assert!(st.stockout.is_empty());
    e.shutdown();
}

// ---------------------------------------------------------------------------------------
// The real server.

async fn ctl(addr: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(["ctl", "--addr", addr])
        .args(args)
        .output()
        .await
        .expect("run ctl")
}

async fn reserve(c: &Client, res: u128, sku: &str, qty: u32) -> Result<u64, ClientError> {
    use omnistock::protocol::{Reserve, WireLine};
    c.reserve(Reserve {
        request_id: rid(),
        reservation: res,
        channel: "web".into(),
        lines: vec![WireLine {
            sku: sku.into(),
            qty,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 3_600_000,
    })
    .await
    .map(|r| r.seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_told_before_atp_runs_out_and_when_a_restock_clears_it() {
    let engine = Arc::new(Engine::start_in_memory(Default::default()).unwrap());
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
    wire_catalog(&c).await;

    // ctl: set, shown by `channels` (text and JSON), bad values refused.
    let out = ctl(&addr, &["set-stockout-threshold", "web", "24"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = ctl(&addr, &["--json", "channels"]).await;
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        j["stockout_thresholds"],
        serde_json::json!([{"channel": "web", "hours": 24}])
    );
    let out = ctl(&addr, &["channels"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stockout_h") && text.contains("24"), "{text}");
    let out = ctl(&addr, &["--json", "set-stockout-threshold", "web", "9000"]).await;
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout)
        .or_else(|_| serde_json::from_slice(&out.stderr))
        .expect("a JSON error");
    assert!(err.to_string().contains("8760"), "{err}");
    let unknown = c
        .apply(Op::SetStockoutThreshold(SetStockoutThreshold {
            request_id: rid(),
            channel: "nope".into(),
            hours: 5,
        }))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");

    let mut sub = Subscriber::subscribe(
        ClientConfig::new(addr.clone()),
        Subscribe {
            name: String::new(),
            start: start::LIVE,
            from_seq: 0,
            channels: vec![],
            skus: vec!["TEE".into()],
            sku_prefix: String::new(),
            kinds: kinds::STOCKOUT,
            coalesce_ms: 0,
        },
    )
    .await
    .unwrap();
    wire_adjust(&c, "TEE", 100).await;
    // Steady demand of 5 units a hold: after n holds, about 5n ln 2 per hour against
    // 100 - 5n: 27 h after the first, 13 h after the second (< 24).
    let mut res = 0;
    let mut atp = 100;
    let projected = loop {
        res += 1;
        reserve(&c, res, "TEE", 5).await.expect("reserve");
        atp -= 5;
        if res == 2 {
            break next_stockout(&mut sub).await;
        }
    };
    assert!(projected.projected, "{projected:?}");
    assert_eq!(
        (projected.sku.as_str(), projected.channel.as_str()),
        ("TEE", "web")
    );
    assert_eq!(projected.atp, atp);
    assert!(projected.atp > 0, "told before ATP reaches 0");
    assert_eq!((projected.threshold_hours, projected.window), (24, 1));
    let hours = projected.hours_milli as f64 / 1000.0;
    assert!(hours > 10.0 && hours < 24.0, "{hours}");
    let rate = projected.per_hour_milli as f64 / 1000.0;
    assert!(
        (rate * hours - f64::from(atp)).abs() < 0.1,
        "{rate} x {hours}"
    );
    let json = omnistock::events::envelope(&PushItem::Stockout(projected.clone()), "test")
        .expect("an event");
    assert_eq!(json.event_type, "omnistock.stock.stockout_projected");
    // More demand keeps it raised: no second event (checked below: the next one is the
    // clearing).
    res += 1;
    reserve(&c, res, "TEE", 5).await.expect("reserve");

    // A restock: 10,085 units at ~10/h is ~1,000 h: cleared, recovered.
    wire_adjust(&c, "TEE", 10_000).await;
    let cleared = next_stockout(&mut sub).await;
    assert!(!cleared.projected, "{cleared:?}");
    assert_eq!(cleared.reason, stockout_reason::RECOVERED);
    assert_eq!(cleared.atp, 10_085);
    assert!(cleared.hours_milli > 30_000 && cleared.hours_milli != u64::MAX);

    sub.close().await;
    stop.shutdown();
    let _ = task.await;
    engine.shutdown();
}

/// `omnistock serve` on `data`, no tokens; its port once it listens.
async fn serve(data: &std::path::Path) -> (tokio::process::Child, u16) {
    let (port, http) = (free_port(), free_port());
    let child = tokio::process::Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    for _ in 0..1500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("serve did not listen");
}

/// The projection is part of the reserve's record: acknowledged, then `kill -9`, the
/// restarted server replays the same item at the same seq, and its recovered state has the
/// flag raised (a restock then clears it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_acknowledged_before_kill_9_is_in_the_log_and_the_state_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = serve(dir.path()).await;
    let addr = format!("127.0.0.1:{port}");
    let c = Client::connect(ClientConfig::new(addr.clone()))
        .await
        .unwrap();
    wire_catalog(&c).await;
    c.apply(Op::SetStockoutThreshold(SetStockoutThreshold {
        request_id: rid(),
        channel: "web".into(),
        hours: 24,
    }))
    .await
    .unwrap();
    wire_adjust(&c, "TEE", 100).await;
    reserve(&c, 1, "TEE", 5).await.unwrap();
    let raised_at = reserve(&c, 2, "TEE", 5).await.unwrap();
    drop(c);
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;

    let (_child, port) = serve(dir.path()).await;
    let addr = format!("127.0.0.1:{port}");
    let mut sub = Subscriber::subscribe(
        ClientConfig::new(addr.clone()),
        Subscribe {
            name: String::new(),
            start: start::AFTER,
            from_seq: 0,
            channels: vec!["web".into()],
            skus: vec![],
            sku_prefix: String::new(),
            kinds: kinds::STOCKOUT,
            coalesce_ms: 0,
        },
    )
    .await
    .unwrap();
    let replayed = next_stockout(&mut sub).await;
    assert!(replayed.projected, "{replayed:?}");
    assert_eq!((replayed.seq, replayed.atp), (raised_at, 90));
    let c = Client::connect(ClientConfig::new(addr)).await.unwrap();
    wire_adjust(&c, "TEE", 10_000).await;
    let cleared = next_stockout(&mut sub).await;
    assert!(!cleared.projected, "{cleared:?}");
    assert_eq!(cleared.reason, stockout_reason::RECOVERED);
    sub.close().await;
}
