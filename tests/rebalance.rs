//! Regional rebalancing through the real server (port 0) on a manual clock: steady web-fr
//! demand drains region FR while DE holds stock nobody buys; the per-region at-risk list
//! projects FR's stockout while its ATP is still above 0; `REBALANCE_LIST` recommends a
//! transfer from DE to FR of the quantity docs/intelligence.md gives (the same from the
//! actors and from passive SKUs' compact bytes); `ctl rebalance apply` sends it as a
//! TRANSFER with the recommendation id as request id, a resend returns the first answer and
//! moves nothing more, a second `ctl rebalance apply` is refused (exit 65), and FR's
//! projection clears (hours to zero above the near threshold). With a 72 h stockout
//! threshold on web-fr, a subscriber receives "stockout projected" while web-fr's ATP is
//! above 0 and "stockout cleared" (recovered) from the applied transfer's own record; the
//! `AT_RISK_REGION` and `VELOCITY` answers say the same. Also: the rejections and roles of the new
//! operations, and a server with `intelligence` off answering 19 to every intelligence read
//! while recording nothing.

mod common;

use std::sync::Arc;

use common::{next_rebalance, next_region_stockout, next_stockout, rid};
use omnistock::client::{Client, ClientConfig, ClientError, Subscriber};
use omnistock::engine::{Engine, EngineConfig, ManualClock};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");
const T0: u64 = 1_800_000_000_000;
const MINUTE: u64 = 60_000;
/// The default policy's thresholds (docs/intelligence.md).
const NEAR_HOURS: f64 = 72.0;
const SURPLUS_HOURS: f64 = 336.0;
const SKU: &str = "TEE";

struct Running {
    addr: String,
    stop: omnistock::server::ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
    engine: Arc<Engine>,
}

async fn serve(config: EngineConfig, clock: &Arc<ManualClock>) -> Running {
    let engine = Arc::new(Engine::start_in_memory_with_clock(config, clock.clone()).unwrap());
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    cfg.tokens.insert("adm".into(), Role::Admin);
    cfg.tokens.insert("chk".into(), Role::Checkout);
    cfg.tokens.insert("ada".into(), Role::Adapter);
    let server = Server::bind(cfg, engine.clone()).await.unwrap();
    let addr = server.local_addr().to_string();
    let stop = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    Running {
        addr,
        stop,
        task,
        engine,
    }
}

impl Running {
    async fn client(&self, token: &str) -> Client {
        Client::connect(ClientConfig::new(self.addr.clone()).token(token))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.task.await.unwrap();
        self.engine.shutdown();
    }
}

async fn ctl(addr: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(["ctl", "--addr", addr, "--token", "adm"])
        .args(args)
        .output()
        .await
        .expect("run ctl")
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

fn st(e: ClientError) -> u16 {
    e.status().unwrap_or_else(|| panic!("no status: {e}"))
}

/// Locations fr-1 (FR) and de-1 (DE); channels web-fr (fr-1) and web-de (de-1).
async fn catalog(c: &Client) {
    for (id, region) in [("fr-1", "FR"), ("de-1", "DE")] {
        c.apply(Op::UpsertLocation(UpsertLocation {
            request_id: rid(),
            location: WireLocation {
                id: id.into(),
                kind: WireLocationKind::Warehouse,
                region: region.into(),
            },
        }))
        .await
        .unwrap();
    }
    for (id, loc) in [("web-fr", "fr-1"), ("web-de", "de-1")] {
        c.apply(Op::UpsertChannel(UpsertChannel {
            request_id: rid(),
            channel: WireChannel {
                id: id.into(),
                locations: vec![loc.into()],
                buffer: 0,
                cap: None,
            },
        }))
        .await
        .unwrap();
    }
}

async fn receive(c: &Client, sku: &str, location: &str, delta: i64) {
    c.apply(Op::Adjust(Adjust {
        request_id: rid(),
        sku: sku.into(),
        location: location.into(),
        delta,
        reason: WireAdjustReason::Receipt,
        reference: String::new(),
    }))
    .await
    .unwrap();
}

async fn order(c: &Client, sku: &str, channel: &str) -> Result<Reserved, ClientError> {
    c.reserve(Reserve {
        request_id: rid(),
        reservation: rid(),
        channel: channel.into(),
        lines: vec![WireLine {
            sku: sku.into(),
            qty: 1,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 24 * 3_600_000,
    })
    .await
}

fn on_hand(s: &WireSku, location: &str) -> u32 {
    s.buckets
        .iter()
        .find(|b| b.location == location)
        .map_or(0, |b| b.on_hand)
}

fn region<'a>(v: &'a WireVelocity, code: &str) -> &'a WireRegionVelocity {
    v.regions
        .iter()
        .find(|r| r.region == code)
        .unwrap_or_else(|| panic!("region {code} in {v:?}"))
}

fn default_query(region: Option<&str>) -> RebalanceQuery {
    RebalanceQuery {
        sku: None,
        region: region.map(str::to_string),
        limit: 10,
        near_hours: None,
        surplus_hours: None,
        window: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_demand_drains_a_region_and_the_recommended_transfer_clears_its_projection() {
    let clock = Arc::new(ManualClock::new(T0));
    let config = EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    };
    let srv = serve(config, &clock).await;
    let c = srv.client("adm").await;
    catalog(&c).await;
    // The channel's stockout threshold at the policy's "near" (72 h), and an adapter
    // listening for stockout items of the SKU: the feed tells what the reads show.
    c.apply(Op::SetStockoutThreshold(SetStockoutThreshold {
        request_id: rid(),
        channel: "web-fr".into(),
        hours: NEAR_HOURS as u32,
    }))
    .await
    .unwrap();
    let mut sub = Subscriber::subscribe(
        ClientConfig::new(srv.addr.clone()).token("ada"),
        Subscribe {
            name: String::new(),
            start: start::LIVE,
            from_seq: 0,
            channels: vec![],
            skus: vec![SKU.into()],
            sku_prefix: String::new(),
            kinds: kinds::STOCKOUT,
            coalesce_ms: 0,
        },
    )
    .await
    .unwrap();
    // One for the SKU's rebalance recommendations, one for its region projections.
    let follow = |kinds: u8| {
        Subscriber::subscribe(
            ClientConfig::new(srv.addr.clone()).token("ada"),
            Subscribe {
                name: String::new(),
                start: start::LIVE,
                from_seq: 0,
                channels: vec![],
                skus: vec![SKU.into()],
                sku_prefix: String::new(),
                kinds,
                coalesce_ms: 0,
            },
        )
    };
    let mut rebalances = follow(kinds::REBALANCE).await.unwrap();
    let mut regions = follow(kinds::REGION_STOCKOUT).await.unwrap();
    receive(&c, SKU, "fr-1", 60).await;
    receive(&c, SKU, "de-1", 20_000).await;
    // A second SKU sells in FR but has no donor (no stock elsewhere): at risk, no plan.
    receive(&c, "CAP", "fr-1", 55).await;

    // Steady demand: one web-fr order every 2 minutes. The projection must arrive while
    // FR still has stock; stop at 10 units left.
    let mut projected_at_atp = None;
    loop {
        order(&c, SKU, "web-fr").await.unwrap();
        order(&c, "CAP", "web-fr").await.unwrap();
        clock.advance(2 * MINUTE);
        let fr = c.at_risk_region("FR", 1, 10).await.unwrap();
        let mine = fr
            .skus
            .iter()
            .find(|s| s.sku == SKU)
            .expect("TEE has demand in FR");
        let hours = mine.velocity.windows[1].hours_to_zero.unwrap();
        if projected_at_atp.is_none() && hours < NEAR_HOURS {
            projected_at_atp = Some(mine.velocity.atp);
        }
        if mine.velocity.atp <= 10 {
            break;
        }
    }
    let atp = projected_at_atp.expect("a stockout projection under 72 h");
    assert!(atp > 0, "projected before ATP reached 0 (at {atp})");
    // The feed said so too, while web-fr still had units to promise.
    let projected = next_stockout(&mut sub).await;
    assert!(projected.projected, "{projected:?}");
    assert_eq!(
        (projected.sku.as_str(), projected.channel.as_str()),
        (SKU, "web-fr")
    );
    assert!(
        projected.atp > 0,
        "stockout projected before ATP reached 0: {projected:?}"
    );
    assert!(projected.hours_milli < 72_000, "{projected:?}");
    // The region list ranks by hours: CAP (5 units left at the same pace) is nearer.
    let fr = c.at_risk_region("FR", 1, 10).await.unwrap();
    let ranked: Vec<&str> = fr.skus.iter().map(|s| s.sku.as_str()).collect();
    assert_eq!(ranked, ["CAP", "TEE"]);
    assert_eq!((fr.region.as_str(), fr.window), ("FR", 1));
    // DE has no demand: no SKU is at risk there.
    assert!(c.at_risk_region("DE", 1, 10).await.unwrap().skus.is_empty());

    // The recommendation: DE (no demand, 20,000 units) gives FR up to 336 h of cover.
    let v = c.velocity(SKU).await.unwrap();
    let (fr_atp, fr_rate) = {
        let r = region(&v, "FR");
        (f64::from(r.atp), r.windows[1].held_per_hour)
    };
    assert_eq!(fr_atp, 10.0);
    assert!(region(&v, "FR").windows[1].hours_to_zero.unwrap() < NEAR_HOURS);
    let list = c.rebalance(default_query(Some("FR"))).await.unwrap();
    assert_eq!(
        (
            list.near_hours,
            list.surplus_hours,
            list.window,
            list.truncated
        ),
        (72, 336, 1, false)
    );
    assert_eq!(list.recommendations.len(), 1, "{list:?}");
    let rec = list.recommendations[0].clone();
    assert_eq!(rec.sku, SKU);
    assert_eq!(
        (rec.short_region.as_str(), rec.donor_region.as_str()),
        ("FR", "DE")
    );
    assert_eq!((rec.from.as_str(), rec.to.as_str()), ("de-1", "fr-1"));
    let want = (fr_rate * SURPLUS_HOURS - fr_atp).floor();
    assert_eq!(
        f64::from(rec.qty),
        want,
        "donor without demand: r_s x 336 - A_s"
    );
    assert!(rec.qty < 20_000);
    assert_eq!(rec.short_cover_hours, fr_atp / fr_rate);
    assert!(rec.short_cover_after_hours >= SURPLUS_HOURS - 1.0 / fr_rate);
    assert_eq!(rec.donor_cover_hours, None);
    assert_eq!(rec.reference, format!("rebalance:{:032x}", rec.id));
    // The feed raised the same recommendation once, in the record that projected the
    // stockout, with the id the list shows; FR's own projection came in that record too
    // (FR's threshold is web-fr's, the only channel selling from it).
    let fr_item = next_region_stockout(&mut regions).await;
    assert!(fr_item.projected, "{fr_item:?}");
    assert_eq!(
        (
            fr_item.region.as_str(),
            fr_item.threshold_hours,
            fr_item.seq
        ),
        ("FR", 72, projected.seq)
    );
    assert!(
        fr_item.atp > 0 && fr_item.hours_milli < 72_000,
        "{fr_item:?}"
    );
    let raised = next_rebalance(&mut rebalances).await;
    assert!(raised.recommended, "{raised:?}");
    assert_eq!(raised.seq, projected.seq, "raised with the projection");
    assert_eq!(raised.id, rec.id, "the feed's id is the list's");
    assert_eq!(
        (
            raised.short_region.as_str(),
            raised.donor_region.as_str(),
            raised.from.as_str(),
            raised.to.as_str()
        ),
        ("FR", "DE", "de-1", "fr-1")
    );
    assert_eq!(raised.reference, rec.reference);
    assert_eq!(raised.donor_cover_milli, u64::MAX, "DE has no demand");
    assert!(
        raised.qty > 0 && raised.short_cover_milli < 72_000,
        "{raised:?}"
    );
    // Unfiltered: the same one (CAP has no donor); DE is nobody's short region.
    assert_eq!(c.rebalance(default_query(None)).await.unwrap(), list);
    assert!(c
        .rebalance(default_query(Some("DE")))
        .await
        .unwrap()
        .recommendations
        .is_empty());
    // One SKU: the same recommendation; CAP has none.
    let one = RebalanceQuery {
        sku: Some(SKU.into()),
        ..default_query(None)
    };
    assert_eq!(c.rebalance(one.clone()).await.unwrap(), list);
    let cap = RebalanceQuery {
        sku: Some("CAP".into()),
        ..default_query(None)
    };
    assert!(c.rebalance(cap).await.unwrap().recommendations.is_empty());
    // Thresholds from the request: a donor fills FR up to 500 h of cover instead of 336.
    let longer = RebalanceQuery {
        surplus_hours: Some(500),
        ..default_query(None)
    };
    let longer = c.rebalance(longer).await.unwrap();
    assert_eq!(longer.surplus_hours, 500);
    let q = longer.recommendations[0].qty;
    assert_eq!(f64::from(q), (fr_rate * 500.0 - fr_atp).floor());
    assert_eq!(
        longer.recommendations[0].id, rec.id,
        "same state and locations, same id"
    );

    // Passive SKUs answer from their compact bytes: the same list, same id.
    assert!(srv.engine.passivate_all_now() > 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while srv.engine.stats().active_skus > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SKUs did not passivate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(c.rebalance(default_query(None)).await.unwrap(), list);
    assert_eq!(c.rebalance(one.clone()).await.unwrap(), list);
    assert_eq!(srv.engine.stats().active_skus, 0, "reads do not activate");

    // ctl rebalance: the id as 32 hex digits in JSON and in the table.
    let hex = format!("{:032x}", rec.id);
    let o = ctl(&srv.addr, &["--json", "rebalance", "--region", "FR"]).await;
    assert!(o.status.success(), "{o:?}");
    let j = json_of(&o);
    assert_eq!(j["recommendations"][0]["id"], hex.as_str());
    assert_eq!(j["recommendations"][0]["donor_region"], "DE");
    assert_eq!(j["recommendations"][0]["qty"], rec.qty);
    let o = ctl(&srv.addr, &["rebalance"]).await;
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains(&hex) && text.contains("de-1"), "{text}");
    // ctl at-risk --region.
    let o = ctl(&srv.addr, &["--json", "at-risk", "--region", "FR"]).await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_of(&o)["skus"][1]["sku"], SKU);

    // Apply through ctl: a TRANSFER with the recommendation id as request id.
    let before = c.get_sku(SKU).await.unwrap();
    let o = ctl(
        &srv.addr,
        &["--json", "rebalance", "apply", &hex, "--sku", SKU],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let j = json_of(&o);
    assert_eq!(j["applied"][0]["request_id"], hex.as_str());
    assert_eq!(j["applied"][0]["reference"], rec.reference.as_str());
    let seq = j["applied"][0]["seq"].as_u64().unwrap();
    let after = c.get_sku(SKU).await.unwrap();
    assert_eq!(on_hand(&after, "fr-1"), on_hand(&before, "fr-1") + rec.qty);
    assert_eq!(on_hand(&after, "de-1"), on_hand(&before, "de-1") - rec.qty);
    // The same transfer sent again (a retry): the first answer, nothing moves.
    let again = c.apply_rebalance(&rec).await.unwrap();
    assert_eq!(again.seq, seq);
    assert_eq!(c.get_sku(SKU).await.unwrap(), after);
    // ctl apply again: the SKU moved on, so the recommendation is refused, clearly.
    let o = ctl(
        &srv.addr,
        &["--json", "rebalance", "apply", &hex, "--sku", SKU],
    )
    .await;
    assert_eq!(o.status.code(), Some(65), "{o:?}");
    let j = json_of(&o);
    assert_eq!(j["error"]["name"], "recommendation_not_found");
    assert!(j["error"]["message"].as_str().unwrap().contains(&hex));
    assert_eq!(c.get_sku(SKU).await.unwrap(), after);

    // The transfer's own record cleared the projection on the feed (its hours are far above
    // 72 h x 1.25 now)...
    let cleared = next_stockout(&mut sub).await;
    assert!(!cleared.projected, "{cleared:?}");
    assert_eq!(cleared.seq, seq, "cleared by the transfer's record");
    assert_eq!(cleared.reason, stockout_reason::RECOVERED, "{cleared:?}");
    // ...withdrew the recommendation (applied) and cleared FR's projection; nothing was
    // raised in between (the orders after the first projection did not raise it again).
    let withdrawn = next_rebalance(&mut rebalances).await;
    assert!(!withdrawn.recommended, "{withdrawn:?}");
    assert_eq!(
        (withdrawn.id, withdrawn.seq, withdrawn.reason),
        (rec.id, seq, rebalance_reason::APPLIED)
    );
    let fr_item = next_region_stockout(&mut regions).await;
    assert!(!fr_item.projected, "{fr_item:?}");
    assert_eq!(
        (fr_item.seq, fr_item.reason),
        (seq, stockout_reason::RECOVERED)
    );
    // ...and the reads agree: FR's hours to zero are above the threshold again, and FR
    // needs no more transfers.
    let v = c.velocity(SKU).await.unwrap();
    let fr = region(&v, "FR");
    assert!(fr.windows[1].hours_to_zero.unwrap() > NEAR_HOURS, "{fr:?}");
    assert!(c
        .rebalance(default_query(Some("FR")))
        .await
        .unwrap()
        .recommendations
        .is_empty());
    let fr = c.at_risk_region("FR", 1, 1).await.unwrap();
    assert_eq!(
        fr.skus[0].sku, "CAP",
        "TEE is no longer the nearest stockout"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_and_region_at_risk_refuse_bad_input_and_checkout_tokens() {
    let clock = Arc::new(ManualClock::new(T0));
    let srv = serve(
        EngineConfig {
            arbiters: 1,
            ..EngineConfig::default()
        },
        &clock,
    )
    .await;
    let c = srv.client("adm").await;
    catalog(&c).await;
    receive(&c, SKU, "fr-1", 5).await;
    // Unknown region: 12 (a typo would list nothing); window or limit out of range: 12.
    assert_eq!(st(c.at_risk_region("XX", 1, 10).await.unwrap_err()), 12);
    assert_eq!(st(c.at_risk_region("FR", 3, 10).await.unwrap_err()), 12);
    assert_eq!(st(c.at_risk_region("FR", 1, 0).await.unwrap_err()), 12);
    assert_eq!(st(c.at_risk_region("FR", 1, 1_001).await.unwrap_err()), 12);
    let bad = |f: fn(&mut RebalanceQuery)| {
        let mut q = default_query(None);
        f(&mut q);
        q
    };
    for q in [
        bad(|q| q.region = Some("XX".into())),
        bad(|q| q.limit = 0),
        bad(|q| q.limit = 1_001),
        bad(|q| q.window = Some(3)),
        bad(|q| q.near_hours = Some(0)),
        bad(|q| {
            q.near_hours = Some(400);
            q.surplus_hours = Some(400)
        }),
        bad(|q| q.sku = Some("bad id!".into())),
    ] {
        assert_eq!(st(c.rebalance(q.clone()).await.unwrap_err()), 12, "{q:?}");
    }
    let unknown = bad(|q| q.sku = Some("NOPE".into()));
    assert_eq!(st(c.rebalance(unknown).await.unwrap_err()), 2);
    // Adapters may list; checkout services may not scan every SKU.
    let ada = srv.client("ada").await;
    assert!(ada.rebalance(default_query(None)).await.is_ok());
    assert!(ada.at_risk_region("FR", 1, 10).await.is_ok());
    let chk = srv.client("chk").await;
    assert_eq!(
        st(chk.rebalance(default_query(None)).await.unwrap_err()),
        status::FORBIDDEN
    );
    assert_eq!(
        st(chk.at_risk_region("FR", 1, 10).await.unwrap_err()),
        status::FORBIDDEN
    );
    // ctl: usage errors before connecting; a bad region is the server's 12.
    let o = ctl(&srv.addr, &["at-risk"]).await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let o = ctl(&srv.addr, &["at-risk", "web-fr", "--region", "FR"]).await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let o = ctl(&srv.addr, &["rebalance", "apply"]).await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let o = ctl(&srv.addr, &["--json", "rebalance", "--region", "XX"]).await;
    assert_eq!(o.status.code(), Some(12), "{o:?}");
    assert_eq!(json_of(&o)["error"]["name"], "invalid_request");
    // Nothing to apply: --all applies none and says so.
    let o = ctl(&srv.addr, &["--json", "rebalance", "apply", "--all"]).await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_of(&o)["applied"], serde_json::json!([]));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_intelligence_off_nothing_is_recorded_and_the_reads_answer_19() {
    let clock = Arc::new(ManualClock::new(T0));
    let srv = serve(
        EngineConfig {
            arbiters: 1,
            intelligence: false,
            ..EngineConfig::default()
        },
        &clock,
    )
    .await;
    let c = srv.client("adm").await;
    catalog(&c).await;
    receive(&c, SKU, "fr-1", 50).await;
    for _ in 0..5 {
        order(&c, SKU, "web-fr")
            .await
            .expect("reservations still work");
        clock.advance(MINUTE);
    }
    assert_eq!(st(c.velocity(SKU).await.unwrap_err()), 19);
    assert_eq!(st(c.at_risk("web-fr", 1, 10).await.unwrap_err()), 19);
    assert_eq!(st(c.at_risk_region("FR", 1, 10).await.unwrap_err()), 19);
    assert_eq!(st(c.rebalance(default_query(None)).await.unwrap_err()), 19);
    assert_eq!(
        omnistock::client::Rejection::from_status(19, &[]).map(|r| r.name()),
        Some("intelligence_off")
    );
    // Nothing was recorded in the SKU's state.
    let state = srv
        .engine
        .sku_state(&omnistock::domain::SkuId::new(SKU).unwrap())
        .await
        .unwrap();
    assert!(state.velocity.channels().is_empty() && state.velocity.locations().is_empty());
    assert_eq!(state.buckets[0].reserved, 5);
    // ctl: exit code 19, the name under --json.
    let o = ctl(&srv.addr, &["--json", "velocity", SKU]).await;
    assert_eq!(o.status.code(), Some(19), "{o:?}");
    assert_eq!(json_of(&o)["error"]["name"], "intelligence_off");
    srv.stop().await;
}
