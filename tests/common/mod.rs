//! Shared test helpers: a small catalog and request builders.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use omnistock::domain::{
    AdjustReason, CatalogCommand, Channel, ChannelId, Location, LocationId, LocationKind,
    SkuCommand, SkuId,
};
use omnistock::engine::{Command, Engine, Failure, Outcome, Request, ReserveLine, ReserveRequest};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh non-zero request id.
pub fn rid() -> u128 {
    u128::from(NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

pub fn sku(s: &str) -> SkuId {
    SkuId::new(s).expect("valid sku")
}
pub fn loc(s: &str) -> LocationId {
    LocationId::new(s).expect("valid location")
}
pub fn chan(s: &str) -> ChannelId {
    ChannelId::new(s).expect("valid channel")
}

/// Locations wh-a, st-b, ds-c; channels web (wh-a, st-b; buffer 1) and store (ds-c, wh-a; cap 5).
pub async fn small_catalog(e: &Engine) {
    for (id, kind) in [
        ("wh-a", LocationKind::Warehouse),
        ("st-b", LocationKind::Store),
        ("ds-c", LocationKind::DarkStore),
    ] {
        exec(
            e,
            Command::Catalog(CatalogCommand::UpsertLocation(Location {
                id: loc(id),
                kind,
                region: "FR".into(),
            })),
        )
        .await
        .expect("location");
    }
    for (id, locs, buffer, cap) in [
        ("web", vec!["wh-a", "st-b"], 1, None),
        ("store", vec!["ds-c", "wh-a"], 0, Some(5)),
    ] {
        exec(
            e,
            Command::Catalog(CatalogCommand::UpsertChannel(Channel {
                id: chan(id),
                locations: locs.into_iter().map(loc).collect(),
                buffer,
                cap,
            })),
        )
        .await
        .expect("channel");
    }
}

pub async fn exec(e: &Engine, command: Command) -> Result<Arc<Outcome>, Failure> {
    e.execute(Request { id: rid(), command }).await
}

pub async fn adjust(e: &Engine, s: &str, l: &str, delta: i64) -> Result<Arc<Outcome>, Failure> {
    exec(e, adjust_cmd(s, l, delta)).await
}

/// A stock receipt (or, negative, a removal) of `delta` units of `s` at `l`.
pub fn adjust_cmd(s: &str, l: &str, delta: i64) -> Command {
    Command::Stock {
        sku: sku(s),
        command: SkuCommand::Adjust {
            location: loc(l),
            delta,
            reason: AdjustReason::Receipt,
            reference: "test".into(),
        },
    }
}

pub fn reserve_cmd(res: u128, channel: &str, lines: &[(&str, u32)], ttl_ms: u64) -> Command {
    Command::Reserve(ReserveRequest {
        reservation: res,
        channel: chan(channel),
        lines: lines
            .iter()
            .map(|(s, q)| ReserveLine {
                sku: sku(s),
                qty: *q,
                location: None,
            })
            .collect(),
        allow_split: true,
        ttl_ms,
    })
}
pub mod http;

/// Over the protocol: location `wh` (a warehouse in FR) and channel `web` selling from it.
pub async fn wire_catalog(c: &omnistock::client::Client) {
    use omnistock::protocol::*;
    c.apply(Op::UpsertLocation(UpsertLocation {
        request_id: rid(),
        location: WireLocation {
            id: "wh".into(),
            kind: WireLocationKind::Warehouse,
            region: "FR".into(),
        },
    }))
    .await
    .expect("location wh");
    c.apply(Op::UpsertChannel(UpsertChannel {
        request_id: rid(),
        channel: WireChannel {
            id: "web".into(),
            locations: vec!["wh".into()],
            buffer: 0,
            cap: None,
        },
    }))
    .await
    .expect("channel web");
}

/// Over the protocol: a receipt of `delta` units of `sku` at `wh`; its sequence number.
pub async fn wire_adjust(c: &omnistock::client::Client, sku: &str, delta: i64) -> u64 {
    use omnistock::protocol::*;
    c.apply(Op::Adjust(Adjust {
        request_id: rid(),
        sku: sku.into(),
        location: "wh".into(),
        delta,
        reason: WireAdjustReason::Receipt,
        reference: String::new(),
    }))
    .await
    .expect("adjust")
    .seq
}

/// A port for a server process a test starts on 127.0.0.1. Ports handed out by one test
/// binary never repeat (its tests run in parallel: two asking the kernel for a free port at
/// once could be given the same one, and one test would then talk to the other's server),
/// and they lie below Linux's ephemeral range (32768+), so outgoing connections do not take
/// them either. Each is checked free when handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 10_000) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let port = base + n;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts the real `omnistock serve --init` on `data` (binary port and admin port free on
/// 127.0.0.1, `--token TOKENS`, then `extra`), silent, killed when the child is dropped;
/// returns it and both ports once both listen.
pub async fn serve_with_tokens(
    data: &std::path::Path,
    tokens: &str,
    extra: &[&str],
) -> (tokio::process::Child, u16, u16) {
    let (port, http) = (free_port(), free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_omnistock"))
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{http}")])
        .args(["--token", tokens])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    for _ in 0..1500 {
        let up = |p: u16| async move {
            tokio::net::TcpStream::connect(("127.0.0.1", p))
                .await
                .is_ok()
        };
        if up(port).await && up(http).await {
            return (child, port, http);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("serve did not listen");
}

/// The next stockout item of `sub` (items of other kinds are skipped), within 10 s.
pub async fn next_stockout(
    sub: &mut omnistock::client::Subscriber,
) -> omnistock::protocol::WireStockout {
    use omnistock::protocol::PushItem;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let items = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("a stockout item within 10 s")
            .expect("feed");
        if let Some(s) = items.into_iter().find_map(|i| match i {
            PushItem::Stockout(s) => Some(s),
            _ => None,
        }) {
            return s;
        }
    }
}

/// The next push item of `sub` that `pick` selects (others are skipped), within 10 s.
pub async fn next_item<T>(
    sub: &mut omnistock::client::Subscriber,
    pick: impl Fn(omnistock::protocol::PushItem) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let items = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("an item within 10 s")
            .expect("feed");
        if let Some(t) = items.into_iter().find_map(&pick) {
            return t;
        }
    }
}

/// The next rebalance item of `sub`, within 10 s.
pub async fn next_rebalance(
    sub: &mut omnistock::client::Subscriber,
) -> omnistock::protocol::WireRebalanceEvent {
    next_item(sub, |i| match i {
        omnistock::protocol::PushItem::Rebalance(r) => Some(r),
        _ => None,
    })
    .await
}

/// The next region stockout item of `sub`, within 10 s.
pub async fn next_region_stockout(
    sub: &mut omnistock::client::Subscriber,
) -> omnistock::protocol::WireRegionStockout {
    next_item(sub, |i| match i {
        omnistock::protocol::PushItem::RegionStockout(s) => Some(s),
        _ => None,
    })
    .await
}
