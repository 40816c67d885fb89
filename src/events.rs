//! The feed as JSON events: one versioned envelope, in the spirit of CloudEvents 1.0, per
//! item of the stock-change feed (docs/events.md, schema docs/events.schema.json).
//!
//! Why it exists: the binary feed (docs/protocol.md section 11) needs bincode and numeric
//! tables to read; marketplace adapters, ad-pausing automation and analytics are written in
//! every language and want a JSON object with a `type` to route on and names instead of
//! numbers. This module is that one mapping, kept pure (no IO, no clock: every time comes
//! from the item) and built from the wire items ([`PushItem`]) because they are what every
//! reader of the feed holds after filtering and coalescing: `ctl tail --json`, the SSE feed
//! (`http/events.rs`) and the webhook sender (`webhooks/`) render the same items the same way.
//!
//! Decisions (docs/events.md explains them for users):
//! - `id` is a string, unique per `source`: one log record can yield several events (one
//!   per channel whose ATP changed, an oversold flip, a reservation change), so the log
//!   sequence alone does not identify an event. The id is `<seq>:` followed by what the
//!   event is about (`42:atp:web`), so a duplicate delivery carries the same id.
//! - `seq`, the log sequence number, is its own attribute and a JSON number, as in every
//!   other `ctl --json` output (u64; exact in JSON parsers up to 2^53, about 285 years at a
//!   million records a second).
//! - 128-bit reservation ids are 32 lowercase hex digits, never JSON numbers.
//! - `cause`, `transition` and `kind` are names (the protocol's table names in snake case).

use serde::Serialize;

use crate::protocol::{
    cause, lifecycle, rebalance_reason, stockout_reason, transition, PushItem, WireRebalanceEvent,
    WireRegionStockout, WireStockout,
};

/// CloudEvents `specversion` of every envelope.
pub const SPEC_VERSION: &str = "1.0";

/// `omnistockversion`: the version of the omnistock part of the envelope (`seq` and the
/// `data` layout of every type). Removing or renaming a field, or changing its meaning,
/// raises it; adding a field or a type does not.
pub const EVENT_VERSION: u32 = 1;

/// `datacontenttype` of every envelope.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// The latest time [`rfc3339_ms`] writes (9999-12-31T23:59:59.999Z): RFC 3339 has four
/// digits for the year, so later times are clamped to it.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// Event types (`type`).
pub mod types {
    /// A channel's ATP changed without crossing a threshold.
    pub const ATP_CHANGED: &str = "omnistock.atp.changed";
    /// A channel's ATP went from above 0 to 0.
    pub const STOCK_OUT: &str = "omnistock.stock.out";
    /// A channel's ATP went from 0 to above 0.
    pub const STOCK_BACK: &str = "omnistock.stock.back";
    /// A channel's ATP entered the low-stock band from above it.
    pub const STOCK_LOW: &str = "omnistock.stock.low";
    /// A channel's ATP left the low-stock band upwards.
    pub const STOCK_LOW_CLEARED: &str = "omnistock.stock.low_cleared";
    /// The SKU became oversold.
    pub const STOCK_OVERSOLD: &str = "omnistock.stock.oversold";
    /// The SKU is no longer oversold.
    pub const STOCK_OVERSOLD_CLEARED: &str = "omnistock.stock.oversold_cleared";
    /// Units were held for a reservation.
    pub const RESERVATION_PLACED: &str = "omnistock.reservation.placed";
    /// Held units were sold.
    pub const RESERVATION_FULFILLED: &str = "omnistock.reservation.fulfilled";
    /// The client released held units.
    pub const RESERVATION_RELEASED: &str = "omnistock.reservation.released";
    /// Held units were released at expiry.
    pub const RESERVATION_EXPIRED: &str = "omnistock.reservation.expired";
    /// A reservation's expiry moved.
    pub const RESERVATION_EXTENDED: &str = "omnistock.reservation.extended";
    /// Held units were returned because the cart was aborted or recovery released it.
    pub const RESERVATION_UNDONE: &str = "omnistock.reservation.undone";
    /// The catalog changed: ATP of many SKUs may have moved without per-SKU events.
    pub const CATALOG_CHANGED: &str = "omnistock.catalog.changed";
    /// A snapshot entry: a channel's current ATP.
    pub const ATP_SNAPSHOT: &str = "omnistock.atp.snapshot";
    /// The snapshot is complete; changes after its `seq` follow.
    pub const SNAPSHOT_END: &str = "omnistock.snapshot.end";
    /// The SKU's projected hours to zero on a channel fell under the channel's threshold.
    pub const STOCKOUT_PROJECTED: &str = "omnistock.stock.stockout_projected";
    /// A raised stockout projection cleared.
    pub const STOCKOUT_CLEARED: &str = "omnistock.stock.stockout_cleared";
    /// A rebalance recommendation of the SKU was raised.
    pub const REBALANCE_RECOMMENDED: &str = "omnistock.rebalance.recommended";
    /// A raised rebalance recommendation was withdrawn (applied or resolved).
    pub const REBALANCE_WITHDRAWN: &str = "omnistock.rebalance.withdrawn";
    /// The SKU's projected hours to zero in a region fell under the region's threshold.
    pub const REGION_STOCKOUT_PROJECTED: &str = "omnistock.stock.region_stockout_projected";
    /// A raised region stockout projection cleared.
    pub const REGION_STOCKOUT_CLEARED: &str = "omnistock.stock.region_stockout_cleared";

    /// Every type, in the order of docs/events.md.
    pub const ALL: [&str; 22] = [
        ATP_CHANGED,
        STOCK_OUT,
        STOCK_BACK,
        STOCK_LOW,
        STOCK_LOW_CLEARED,
        STOCK_OVERSOLD,
        STOCK_OVERSOLD_CLEARED,
        RESERVATION_PLACED,
        RESERVATION_FULFILLED,
        RESERVATION_RELEASED,
        RESERVATION_EXPIRED,
        RESERVATION_EXTENDED,
        RESERVATION_UNDONE,
        CATALOG_CHANGED,
        ATP_SNAPSHOT,
        SNAPSHOT_END,
        STOCKOUT_PROJECTED,
        STOCKOUT_CLEARED,
        REBALANCE_RECOMMENDED,
        REBALANCE_WITHDRAWN,
        REGION_STOCKOUT_PROJECTED,
        REGION_STOCKOUT_CLEARED,
    ];
}

/// One event: CloudEvents 1.0 attributes in JSON structured mode, plus the `seq` and
/// `omnistockversion` extension attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// Always [`SPEC_VERSION`].
    pub specversion: &'static str,
    /// Always [`EVENT_VERSION`].
    pub omnistockversion: u32,
    /// Unique per `source`: `<seq>:` and what the event is about.
    pub id: String,
    /// The server, as a URI reference (given by the caller).
    pub source: String,
    /// One of [`types`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the engine accepted the change (RFC 3339, UTC, milliseconds); absent for
    /// snapshot types, which describe a current value, not a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The SKU; absent for catalog and snapshot-end events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always [`DATA_CONTENT_TYPE`].
    pub datacontenttype: &'static str,
    /// The log sequence number: every change up to it that matches the subscription was
    /// sent once this event's `seq` group is complete. Absent for snapshot entries (their
    /// SKU's last change is `data.last_seq`, not a position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What happened.
    pub data: Data,
}

/// The `data` of an event; its shape follows from `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Data {
    /// `omnistock.atp.changed` and `omnistock.stock.{out,back,low,low_cleared}`.
    Atp(AtpData),
    /// `omnistock.stock.oversold` and `omnistock.stock.oversold_cleared`.
    Oversold(OversoldData),
    /// `omnistock.reservation.*`.
    Reservation(ReservationData),
    /// `omnistock.atp.snapshot`.
    Snapshot(SnapshotData),
    /// `omnistock.stock.stockout_projected` and `omnistock.stock.stockout_cleared`.
    Stockout(StockoutData),
    /// `omnistock.rebalance.recommended` and `omnistock.rebalance.withdrawn`.
    Rebalance(RebalanceData),
    /// `omnistock.stock.region_stockout_projected` and `..._cleared`.
    RegionStockout(RegionStockoutData),
    /// `omnistock.catalog.changed` and `omnistock.snapshot.end`: `{}`.
    Empty(EmptyData),
}

/// A channel's ATP changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AtpData {
    /// The channel.
    pub channel: String,
    /// ATP before (before the first merged change when `coalesced`).
    pub previous: u32,
    /// ATP after.
    pub atp: u32,
    /// What made the change (the latest one when `coalesced`): [`cause_name`].
    pub cause: String,
    /// [`transition_name`]; also told by `type`.
    pub transition: String,
    /// Whether several changes were merged into this event.
    pub coalesced: bool,
}

/// The SKU's oversold flag changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OversoldData {
    /// The new flag.
    pub oversold: bool,
}

/// A reservation's part on the SKU changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReservationData {
    /// The reservation id: 32 lowercase hex digits.
    pub reservation: String,
    /// [`lifecycle_name`]; also told by `type`.
    pub kind: String,
    /// Units held, sold or returned; 0 for `extended`.
    pub qty: u32,
    /// The expiry (RFC 3339) for `placed` and `extended`; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A channel's current ATP, in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotData {
    /// The channel.
    pub channel: String,
    /// Current ATP.
    pub atp: u32,
    /// The SKU's oversold flag.
    pub oversold: bool,
    /// The SKU's last change (its events up to here are in the value); not a position.
    pub last_seq: u64,
}

/// A fixed-point value in thousandths, written as a JSON number (`12345` -> `12.345`): the
/// feed carries rates and hours in thousandths so that events compare exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Milli(pub u64);

impl Serialize for Milli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / 1000.0)
    }
}

/// A stockout projection of the SKU on a channel was raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StockoutData {
    /// The channel.
    pub channel: String,
    /// Hours until the channel's ATP is gone at the current pace; `null` without demand.
    pub hours: Option<Milli>,
    /// Units held per hour in the window (the demand velocity the projection uses).
    pub velocity_per_hour: Milli,
    /// The channel's ATP.
    pub atp: u32,
    /// The channel's threshold in hours (0: it was removed).
    pub threshold_hours: u32,
    /// The velocity window: 0, 1 or 2 (shortest half-life first; 1 is 1 h by default).
    pub window: u8,
    /// Why it cleared (`recovered`, `no_demand`, `threshold_removed`); absent when projected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The name of a [`stockout_reason`] value; `unknown_<n>` for one this version does not know.
pub fn stockout_reason_name(r: u8) -> String {
    let name = match r {
        stockout_reason::NONE => "none",
        stockout_reason::RECOVERED => "recovered",
        stockout_reason::NO_DEMAND => "no_demand",
        stockout_reason::THRESHOLD_REMOVED => "threshold_removed",
        n => return format!("unknown_{n}"),
    };
    name.into()
}

fn stockout_data(s: &WireStockout) -> StockoutData {
    StockoutData {
        channel: s.channel.clone(),
        hours: (s.hours_milli != u64::MAX).then_some(Milli(s.hours_milli)),
        velocity_per_hour: Milli(s.per_hour_milli),
        atp: s.atp,
        threshold_hours: s.threshold_hours,
        window: s.window,
        reason: (!s.projected).then(|| stockout_reason_name(s.reason)),
    }
}

/// A rebalance recommendation of the SKU was raised or withdrawn. A withdrawal carries
/// the id, reference, short region and reason only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RebalanceData {
    /// The recommendation id: 32 lowercase hex digits (`ctl rebalance apply ID`).
    pub id: String,
    /// The transfer's reference, `rebalance:<id>`.
    pub reference: String,
    /// The region short of cover.
    pub short_region: String,
    /// The region giving; absent when withdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub donor_region: Option<String>,
    /// Donor location; absent when withdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Receiving location; absent when withdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Units recommended when raised; absent when withdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qty: Option<u32>,
    /// Hours of cover of the short region when raised; absent when withdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_cover_hours: Option<Milli>,
    /// Hours of cover of the donor region when raised; `null` without demand there;
    /// absent when withdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub donor_cover_hours: Option<Option<Milli>>,
    /// Why it was withdrawn (`applied`, `resolved`); absent when recommended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The name of a [`rebalance_reason`] value; `unknown_<n>` for one this version does not
/// know.
pub fn rebalance_reason_name(r: u8) -> String {
    let name = match r {
        rebalance_reason::NONE => "none",
        rebalance_reason::APPLIED => "applied",
        rebalance_reason::RESOLVED => "resolved",
        n => return format!("unknown_{n}"),
    };
    name.into()
}

fn rebalance_data(r: &WireRebalanceEvent) -> RebalanceData {
    let raised = |v| r.recommended.then_some(v);
    RebalanceData {
        id: format!("{:032x}", r.id),
        reference: r.reference.clone(),
        short_region: r.short_region.clone(),
        donor_region: raised(r.donor_region.clone()),
        from: raised(r.from.clone()),
        to: raised(r.to.clone()),
        qty: r.recommended.then_some(r.qty),
        short_cover_hours: r.recommended.then_some(Milli(r.short_cover_milli)),
        donor_cover_hours: r
            .recommended
            .then_some((r.donor_cover_milli != u64::MAX).then_some(Milli(r.donor_cover_milli))),
        reason: (!r.recommended).then(|| rebalance_reason_name(r.reason)),
    }
}

/// A stockout projection of the SKU in a region was raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegionStockoutData {
    /// The region code.
    pub region: String,
    /// Hours until the region's ATP is gone at the current pace; `null` without demand.
    pub hours: Option<Milli>,
    /// Units held per hour in the region in the window.
    pub velocity_per_hour: Milli,
    /// The region's ATP (its locations' exposed ATP).
    pub atp: u32,
    /// The region's threshold in hours (0: none any more).
    pub threshold_hours: u32,
    /// The velocity window (1 is 1 h by default).
    pub window: u8,
    /// Why it cleared (`recovered`, `no_demand`, `threshold_removed`); absent when projected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn region_stockout_data(s: &WireRegionStockout) -> RegionStockoutData {
    RegionStockoutData {
        region: s.region.clone(),
        hours: (s.hours_milli != u64::MAX).then_some(Milli(s.hours_milli)),
        velocity_per_hour: Milli(s.per_hour_milli),
        atp: s.atp,
        threshold_hours: s.threshold_hours,
        window: s.window,
        reason: (!s.projected).then(|| stockout_reason_name(s.reason)),
    }
}

/// No data (`{}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EmptyData {}

/// The name of a [`cause`] value; `unknown_<n>` for a value this version does not know.
pub fn cause_name(c: u8) -> String {
    let name = match c {
        cause::RESERVE => "reserve",
        cause::FULFILL => "fulfill",
        cause::RELEASE => "release",
        cause::EXPIRY => "expiry",
        cause::CART_ABORT => "cart_abort",
        cause::RECOVERY => "recovery",
        cause::ADJUST => "adjust",
        cause::SET_ON_HAND => "set_on_hand",
        cause::MOVE => "move",
        cause::TRANSFER => "transfer",
        cause::SAFETY_STOCK => "safety_stock",
        cause::INCOMING => "incoming",
        cause::EXTEND => "extend",
        cause::REPROJECT => "reproject",
        n => return format!("unknown_{n}"),
    };
    name.into()
}

/// The name of a [`transition`] value; `unknown_<n>` for a value this version does not know.
pub fn transition_name(t: u8) -> String {
    let name = match t {
        transition::NONE => "none",
        transition::OUT_OF_STOCK => "out_of_stock",
        transition::BACK_IN_STOCK => "back_in_stock",
        transition::LOW_STOCK => "low_stock",
        transition::LOW_STOCK_CLEARED => "low_stock_cleared",
        n => return format!("unknown_{n}"),
    };
    name.into()
}

/// The name of a [`lifecycle`] value; `unknown_<n>` for a value this version does not know.
pub fn lifecycle_name(k: u8) -> String {
    let name = match k {
        lifecycle::PLACED => "placed",
        lifecycle::FULFILLED => "fulfilled",
        lifecycle::RELEASED => "released",
        lifecycle::EXPIRED => "expired",
        lifecycle::EXTENDED => "extended",
        lifecycle::UNDONE => "undone",
        n => return format!("unknown_{n}"),
    };
    name.into()
}

/// The `type` of an ATP change with this transition (an unknown transition is a plain
/// ATP change: the value is still right).
fn atp_type(t: u8) -> &'static str {
    match t {
        transition::OUT_OF_STOCK => types::STOCK_OUT,
        transition::BACK_IN_STOCK => types::STOCK_BACK,
        transition::LOW_STOCK => types::STOCK_LOW,
        transition::LOW_STOCK_CLEARED => types::STOCK_LOW_CLEARED,
        _ => types::ATP_CHANGED,
    }
}

/// The `type` of a reservation change of this kind (`omnistock.reservation.unknown_<n>` for
/// a kind this version does not know).
fn reservation_type(k: u8) -> String {
    let t = match k {
        lifecycle::PLACED => types::RESERVATION_PLACED,
        lifecycle::FULFILLED => types::RESERVATION_FULFILLED,
        lifecycle::RELEASED => types::RESERVATION_RELEASED,
        lifecycle::EXPIRED => types::RESERVATION_EXPIRED,
        lifecycle::EXTENDED => types::RESERVATION_EXTENDED,
        lifecycle::UNDONE => types::RESERVATION_UNDONE,
        n => return format!("omnistock.reservation.unknown_{n}"),
    };
    t.into()
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds: `2023-11-14T22:13:20.000Z`.
/// Times after 9999 are written as [`MAX_TIME_MS`].
pub fn rfc3339_ms(ms: u64) -> String {
    let ms = ms.min(MAX_TIME_MS);
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The attributes that differ between events.
struct Head<'a> {
    seq: Option<u64>,
    id: String,
    event_type: String,
    at_ms: Option<u64>,
    subject: Option<&'a str>,
}

impl Head<'_> {
    fn with(self, source: &str, data: Data) -> Envelope {
        Envelope {
            specversion: SPEC_VERSION,
            omnistockversion: EVENT_VERSION,
            id: self.id,
            source: source.to_string(),
            event_type: self.event_type,
            time: self.at_ms.map(rfc3339_ms),
            subject: self.subject.map(str::to_string),
            datacontenttype: DATA_CONTENT_TYPE,
            seq: self.seq,
            data,
        }
    }
}

/// The event of one feed item, with `source` as its source; `None` for bookkeeping items
/// (`Position`, `Lagged`), which are not events.
pub fn envelope(item: &PushItem, source: &str) -> Option<Envelope> {
    let (head, data) = match item {
        PushItem::Atp(a) => (
            Head {
                seq: Some(a.seq),
                id: format!("{}:atp:{}", a.seq, a.channel),
                event_type: atp_type(a.transition).into(),
                at_ms: Some(a.at_ms),
                subject: Some(&a.sku),
            },
            Data::Atp(AtpData {
                channel: a.channel.clone(),
                previous: a.previous,
                atp: a.atp,
                cause: cause_name(a.cause),
                transition: transition_name(a.transition),
                coalesced: a.coalesced,
            }),
        ),
        PushItem::Oversold(o) => (
            Head {
                seq: Some(o.seq),
                id: format!("{}:oversold", o.seq),
                event_type: if o.oversold {
                    types::STOCK_OVERSOLD
                } else {
                    types::STOCK_OVERSOLD_CLEARED
                }
                .into(),
                at_ms: Some(o.at_ms),
                subject: Some(&o.sku),
            },
            Data::Oversold(OversoldData {
                oversold: o.oversold,
            }),
        ),
        PushItem::Reservation(r) => {
            let kind = lifecycle_name(r.kind);
            let has_expiry = matches!(r.kind, lifecycle::PLACED | lifecycle::EXTENDED);
            (
                Head {
                    seq: Some(r.seq),
                    id: format!("{}:reservation:{:032x}:{kind}", r.seq, r.reservation),
                    event_type: reservation_type(r.kind),
                    at_ms: Some(r.at_ms),
                    subject: Some(&r.sku),
                },
                Data::Reservation(ReservationData {
                    reservation: format!("{:032x}", r.reservation),
                    kind,
                    qty: r.qty,
                    expires_at: has_expiry.then(|| rfc3339_ms(r.expires_at_ms)),
                }),
            )
        }
        PushItem::Catalog { seq, at_ms } => (
            Head {
                seq: Some(*seq),
                id: format!("{seq}:catalog"),
                event_type: types::CATALOG_CHANGED.into(),
                at_ms: Some(*at_ms),
                subject: None,
            },
            Data::Empty(EmptyData {}),
        ),
        PushItem::Snapshot(s) => (
            Head {
                seq: None,
                id: format!("{}:snapshot:{}", s.seq, s.channel),
                event_type: types::ATP_SNAPSHOT.into(),
                at_ms: None,
                subject: Some(&s.sku),
            },
            Data::Snapshot(SnapshotData {
                channel: s.channel.clone(),
                atp: s.atp,
                oversold: s.oversold,
                last_seq: s.seq,
            }),
        ),
        PushItem::SnapshotEnd { seq } => (
            Head {
                seq: Some(*seq),
                id: format!("{seq}:snapshot_end"),
                event_type: types::SNAPSHOT_END.into(),
                at_ms: None,
                subject: None,
            },
            Data::Empty(EmptyData {}),
        ),
        PushItem::Stockout(s) => (
            Head {
                seq: Some(s.seq),
                id: format!(
                    "{}:stockout:{}:{}",
                    s.seq,
                    s.channel,
                    if s.projected { "projected" } else { "cleared" }
                ),
                event_type: if s.projected {
                    types::STOCKOUT_PROJECTED
                } else {
                    types::STOCKOUT_CLEARED
                }
                .into(),
                at_ms: Some(s.at_ms),
                subject: Some(&s.sku),
            },
            Data::Stockout(stockout_data(s)),
        ),
        PushItem::Rebalance(r) => (
            Head {
                seq: Some(r.seq),
                id: format!(
                    "{}:rebalance:{:032x}:{}",
                    r.seq,
                    r.id,
                    if r.recommended {
                        "recommended"
                    } else {
                        "withdrawn"
                    }
                ),
                event_type: if r.recommended {
                    types::REBALANCE_RECOMMENDED
                } else {
                    types::REBALANCE_WITHDRAWN
                }
                .into(),
                at_ms: Some(r.at_ms),
                subject: Some(&r.sku),
            },
            Data::Rebalance(rebalance_data(r)),
        ),
        PushItem::RegionStockout(s) => (
            Head {
                seq: Some(s.seq),
                id: format!(
                    "{}:region_stockout:{}:{}",
                    s.seq,
                    s.region,
                    if s.projected { "projected" } else { "cleared" }
                ),
                event_type: if s.projected {
                    types::REGION_STOCKOUT_PROJECTED
                } else {
                    types::REGION_STOCKOUT_CLEARED
                }
                .into(),
                at_ms: Some(s.at_ms),
                subject: Some(&s.sku),
            },
            Data::RegionStockout(region_stockout_data(s)),
        ),
        PushItem::Position { .. } | PushItem::Lagged { .. } => return None,
    };
    Some(head.with(source, data))
}

#[cfg(test)]
mod tests;
