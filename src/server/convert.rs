//! Conversions between wire messages and engine/domain types. They live in `server/`, not
//! `protocol/`, so the protocol stays pure data a client can use without the engine. Wire ids
//! are strings: they are validated here, and a bad one becomes the engine's own
//! `InvalidRequest` rejection, so the client sees the same status (12) as for any other
//! malformed request.

use crate::domain::{
    AdjustReason, AtRisk, AtRiskRegion, AtpExplanation, Catalog, CatalogCommand, Channel,
    ChannelId, ChannelVelocity, Event, Location, LocationId, LocationKind, LowStock,
    LowStockSource, RebalancePolicy, Recommendation, RegionVelocity, Rejection, SkuCommand, SkuId,
    SkuVelocity, SkuView, StockState, StockoutThreshold, WindowRate,
};
use crate::engine::{Change, Command, Outcome, ReservationView, ReserveLine, ReserveRequest};
use crate::protocol::messages::*;

fn sku(s: &str) -> Result<SkuId, Rejection> {
    SkuId::new(s)
}
fn loc(s: &str) -> Result<LocationId, Rejection> {
    LocationId::new(s)
}

impl From<WireAdjustReason> for AdjustReason {
    fn from(r: WireAdjustReason) -> Self {
        match r {
            WireAdjustReason::Receipt => AdjustReason::Receipt,
            WireAdjustReason::Shrinkage => AdjustReason::Shrinkage,
            WireAdjustReason::Damage => AdjustReason::Damage,
            WireAdjustReason::ReturnToStock => AdjustReason::ReturnToStock,
            WireAdjustReason::Correction => AdjustReason::Correction,
        }
    }
}

impl From<WireStockState> for StockState {
    fn from(s: WireStockState) -> Self {
        match s {
            WireStockState::Sellable => StockState::Sellable,
            WireStockState::Damaged => StockState::Damaged,
            WireStockState::QualityControl => StockState::QualityControl,
        }
    }
}

impl From<WireLocationKind> for LocationKind {
    fn from(k: WireLocationKind) -> Self {
        match k {
            WireLocationKind::Warehouse => LocationKind::Warehouse,
            WireLocationKind::Store => LocationKind::Store,
            WireLocationKind::DarkStore => LocationKind::DarkStore,
            WireLocationKind::MarketplaceFulfilled => LocationKind::MarketplaceFulfilled,
            WireLocationKind::Dropship => LocationKind::Dropship,
        }
    }
}

impl From<LocationKind> for WireLocationKind {
    fn from(k: LocationKind) -> Self {
        match k {
            LocationKind::Warehouse => WireLocationKind::Warehouse,
            LocationKind::Store => WireLocationKind::Store,
            LocationKind::DarkStore => WireLocationKind::DarkStore,
            LocationKind::MarketplaceFulfilled => WireLocationKind::MarketplaceFulfilled,
            LocationKind::Dropship => WireLocationKind::Dropship,
        }
    }
}

/// The engine command of a reserve body.
pub fn reserve_command(r: &Reserve) -> Result<Command, Rejection> {
    let lines = r
        .lines
        .iter()
        .map(|l| {
            Ok(ReserveLine {
                sku: sku(&l.sku)?,
                qty: l.qty,
                location: l.location.as_deref().map(loc).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, Rejection>>()?;
    Ok(Command::Reserve(ReserveRequest {
        reservation: r.reservation,
        channel: ChannelId::new(&r.channel)?,
        lines,
        allow_split: r.allow_split,
        ttl_ms: r.ttl_ms,
    }))
}

/// Ids of a request body resolved to the engine's shared copies where they exist: a
/// known SKU from the registry, a channel or location from the catalog snapshot (a
/// reference count each instead of an allocation and a validation); an unknown one is
/// validated and allocated as [`SkuId::new`] would, with the same rejection when invalid.
pub struct SharedIds<'a> {
    /// The engine (its SKU registry); `None` (the fuzzer, in process): every SKU id new.
    pub engine: Option<&'a crate::engine::Engine>,
    /// The catalog snapshot of the frame.
    pub catalog: &'a Catalog,
}

impl SharedIds<'_> {
    fn sku(&self, s: &str) -> Result<SkuId, Rejection> {
        match self.engine {
            Some(e) => e.sku_id(s),
            None => SkuId::new(s),
        }
    }
    fn channel(&self, s: &str) -> Result<ChannelId, Rejection> {
        match self.catalog.channels.get_key_value(s) {
            Some((id, _)) => Ok(id.clone()),
            None => ChannelId::new(s),
        }
    }
    fn location(&self, s: &str) -> Result<LocationId, Rejection> {
        match self.catalog.locations.get_key_value(s) {
            Some((id, _)) => Ok(id.clone()),
            None => LocationId::new(s),
        }
    }
}

/// The engine command of a reserve body decoded in place ([`ReserveRef`]): the same
/// command, and the same first rejection, as [`reserve_command`] of the owned body.
pub fn reserve_command_ref(r: &ReserveRef<'_>, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let lines = r
        .lines
        .iter()
        .map(|l| {
            Ok(ReserveLine {
                sku: ids.sku(l.sku)?,
                qty: l.qty,
                location: l.location.map(|s| ids.location(s)).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, Rejection>>()?;
    Ok(Command::Reserve(ReserveRequest {
        reservation: r.reservation,
        channel: ids.channel(r.channel)?,
        lines,
        allow_split: r.allow_split,
        ttl_ms: r.ttl_ms,
    }))
}

/// The engine command of a fulfil body.
pub fn fulfill_command(f: &Fulfill) -> Result<Command, Rejection> {
    let lines = match &f.lines {
        None => None,
        Some(v) => Some(
            v.iter()
                .map(|(s, q)| Ok((sku(s)?, *q)))
                .collect::<Result<Vec<_>, Rejection>>()?,
        ),
    };
    Ok(Command::Fulfill {
        reservation: f.reservation,
        lines,
    })
}

fn stock(ids: &SharedIds<'_>, s: &str, command: SkuCommand) -> Result<Command, Rejection> {
    Ok(Command::Stock {
        sku: ids.sku(s)?,
        command,
    })
}

/// The engine command of a stock body (adjust).
pub fn adjust_command(a: &Adjust, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = SkuCommand::Adjust {
        location: ids.location(&a.location)?,
        delta: a.delta,
        reason: a.reason.into(),
        reference: a.reference.clone(),
    };
    stock(ids, &a.sku, c)
}

/// The engine command of a set-on-hand body.
pub fn set_on_hand_command(a: &SetOnHand, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = SkuCommand::SetOnHand {
        location: ids.location(&a.location)?,
        on_hand: a.on_hand,
        expected: a.expected,
        reference: a.reference.clone(),
    };
    stock(ids, &a.sku, c)
}

/// The engine command of a move body.
pub fn move_command(a: &MoveStock, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = SkuCommand::Move {
        location: ids.location(&a.location)?,
        from: a.from.into(),
        to: a.to.into(),
        qty: a.qty,
    };
    stock(ids, &a.sku, c)
}

/// The engine command of a transfer body.
pub fn transfer_command(a: &Transfer, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = SkuCommand::Transfer {
        from: ids.location(&a.from)?,
        to: ids.location(&a.to)?,
        qty: a.qty,
        reference: a.reference.clone(),
    };
    stock(ids, &a.sku, c)
}

/// The engine command of a set-safety-stock body.
pub fn safety_command(a: &SetSafetyStock, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = SkuCommand::SetSafetyStock {
        location: ids.location(&a.location)?,
        qty: a.qty,
    };
    stock(ids, &a.sku, c)
}

/// The engine command of a set-incoming body.
pub fn incoming_command(a: &SetIncoming, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = SkuCommand::SetIncoming {
        location: ids.location(&a.location)?,
        qty: a.qty,
        eta_ms: a.eta_ms,
    };
    stock(ids, &a.sku, c)
}

/// The engine command of an upsert-location body.
pub fn location_command(u: &UpsertLocation) -> Result<Command, Rejection> {
    Ok(Command::Catalog(CatalogCommand::UpsertLocation(Location {
        id: loc(&u.location.id)?,
        kind: u.location.kind.into(),
        region: u.location.region.clone(),
    })))
}

/// The engine command of an upsert-channel body.
pub fn channel_command(u: &UpsertChannel, ids: &SharedIds<'_>) -> Result<Command, Rejection> {
    let c = &u.channel;
    Ok(Command::Catalog(CatalogCommand::UpsertChannel(Channel {
        id: ChannelId::new(&c.id)?,
        // The catalog's own location ids: SKU buckets, channels and the events sourced
        // from them then share one allocation per location and compare by pointer.
        locations: c
            .locations
            .iter()
            .map(|l| ids.location(l))
            .collect::<Result<_, _>>()?,
        buffer: c.buffer,
        cap: c.cap,
    })))
}

/// The engine command of a set-low-stock body.
pub fn low_stock_command(u: &SetLowStock) -> Result<Command, Rejection> {
    Ok(Command::Catalog(CatalogCommand::SetLowStock(LowStock {
        channel: ChannelId::new(&u.channel)?,
        sku: u.sku.as_deref().map(SkuId::new).transpose()?,
        threshold: u.threshold,
    })))
}

/// The engine command of a delete-location body.
pub fn delete_location_command(d: &DeleteLocation) -> Result<Command, Rejection> {
    Ok(Command::Catalog(CatalogCommand::DeleteLocation(loc(
        &d.location
    )?)))
}

/// The engine command of a delete-channel body.
pub fn delete_channel_command(d: &DeleteChannel) -> Result<Command, Rejection> {
    Ok(Command::Catalog(CatalogCommand::DeleteChannel(
        ChannelId::new(&d.channel)?,
    )))
}

/// The wire facts of an `InUse` (17) rejection.
pub fn in_use_facts(u: &crate::domain::InUse) -> InUseFacts {
    let (kind, id) = match &u.target {
        crate::domain::CatalogRef::Location(l) => (in_use_kind::LOCATION, l.to_string()),
        crate::domain::CatalogRef::Channel(c) => (in_use_kind::CHANNEL, c.to_string()),
    };
    InUseFacts {
        kind,
        id,
        channels: u.channels.iter().map(ToString::to_string).collect(),
        channels_total: u.channels_total,
        skus_with_stock: u.refs.skus_with_stock,
        skus_with_holds: u.refs.skus_with_holds,
        skus_with_safety_stock: u.refs.skus_with_safety_stock,
        example_sku: u
            .refs
            .example_sku
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
        reservations: u.refs.reservations,
        example_reservation: u.refs.example_reservation.unwrap_or(0),
    }
}

/// The engine command of a set-stockout-threshold body.
pub fn stockout_threshold_command(u: &SetStockoutThreshold) -> Result<Command, Rejection> {
    Ok(Command::Catalog(CatalogCommand::SetStockoutThreshold(
        StockoutThreshold {
            channel: ChannelId::new(&u.channel)?,
            hours: u.hours,
        },
    )))
}

/// [`Reserved`] borrowing the outcome's strings: the same bytes on the wire (serde writes
/// a `&str` as it writes a `String`), without two `String`s per allocation on the reserve
/// path. `reserved_view_encodes_as_reserved` holds the two to the same bytes.
#[derive(serde::Serialize)]
pub struct ReservedView<'a> {
    seq: u64,
    expires_at_ms: u64,
    allocations: Vec<AllocationView<'a>>,
}

#[derive(serde::Serialize)]
struct AllocationView<'a> {
    sku: &'a str,
    location: &'a str,
    qty: u32,
}

/// The reserve result of an outcome, borrowed (see [`ReservedView`]).
pub fn reserved_view(o: &Outcome) -> ReservedView<'_> {
    let mut expires_at_ms = 0;
    let mut allocations = Vec::new();
    for ch in &o.changes {
        if let Change::Sku {
            sku,
            event:
                Event::HoldPlaced {
                    expires_at_ms: e,
                    allocations: a,
                    ..
                },
        } = ch
        {
            expires_at_ms = *e;
            allocations.extend(a.iter().map(|a| AllocationView {
                sku: sku.as_str(),
                location: a.location.as_str(),
                qty: a.qty,
            }));
        }
    }
    ReservedView {
        seq: o.seq,
        expires_at_ms,
        allocations,
    }
}

/// The encoded [`Reserved`] body of an outcome, written straight from its holds into one
/// buffer of the exact size (the fixed codec's layout: `seq` and `expires_at_ms` as u64 LE,
/// the allocations as a u64 count then per allocation the SKU and location as u64 length +
/// bytes and the quantity as u32 LE). The reserve answer is built once per operation;
/// `reserved_bytes_are_the_encoding_of_reserved` holds it to `codec::encode` of
/// [`reserved_of`].
pub fn reserved_bytes(o: &Outcome) -> Vec<u8> {
    let holds = || {
        o.changes.iter().filter_map(|ch| match ch {
            Change::Sku {
                sku,
                event:
                    Event::HoldPlaced {
                        expires_at_ms,
                        allocations,
                        ..
                    },
            } => Some((sku, *expires_at_ms, allocations)),
            _ => None,
        })
    };
    let mut expires_at_ms = 0;
    let (mut count, mut len) = (0u64, 24usize);
    for (sku, e, allocations) in holds() {
        expires_at_ms = e;
        for a in allocations {
            count += 1;
            len += 8 + sku.as_str().len() + 8 + a.location.as_str().len() + 4;
        }
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&o.seq.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for (sku, _, allocations) in holds() {
        for a in allocations {
            for s in [sku.as_str(), a.location.as_str()] {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out.extend_from_slice(&a.qty.to_le_bytes());
        }
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// The reserve result of an accepted reservation's outcome.
pub fn reserved_of(o: &Outcome) -> Reserved {
    let v = reserved_view(o);
    Reserved {
        seq: v.seq,
        expires_at_ms: v.expires_at_ms,
        allocations: v
            .allocations
            .iter()
            .map(|a| WireAllocation {
                sku: a.sku.to_string(),
                location: a.location.to_string(),
                qty: a.qty,
            })
            .collect(),
    }
}

/// The result of any other accepted mutating request.
pub fn applied_of(o: &Outcome) -> Applied {
    Applied {
        seq: o.seq,
        changes: u32::try_from(o.changes.len()).unwrap_or(u32::MAX),
    }
}

/// A SKU view on the wire.
pub fn sku_of(v: &SkuView) -> WireSku {
    WireSku {
        sku: v.sku.to_string(),
        buckets: v
            .buckets
            .iter()
            .map(|b| WireBucket {
                location: b.location.to_string(),
                on_hand: b.on_hand,
                reserved: b.reserved,
                safety_stock: b.safety_stock,
                damaged: b.damaged,
                quality_control: b.quality_control,
                incoming: b.incoming,
                incoming_eta_ms: b.incoming_eta_ms,
                atp: b.atp(),
                shortfall: b.shortfall,
            })
            .collect(),
        channels: v
            .channels
            .iter()
            .map(|(c, q)| (c.to_string(), *q))
            .collect(),
        oversold: v.oversold,
        holds: v.holds,
        last_seq: v.last_seq,
    }
}

fn windows_of(windows: &[WindowRate]) -> Vec<WireWindowRate> {
    windows
        .iter()
        .map(|w| WireWindowRate {
            half_life_ms: w.half_life_ms,
            held_per_hour: w.held_per_hour,
            fulfilled_per_hour: w.fulfilled_per_hour,
            hours_to_zero: w.hours_to_zero,
        })
        .collect()
}

/// A SKU x channel's velocity on the wire.
pub fn channel_velocity_of(v: &ChannelVelocity) -> WireChannelVelocity {
    WireChannelVelocity {
        channel: v.channel.to_string(),
        atp: v.atp,
        windows: windows_of(&v.windows),
    }
}

/// A SKU x region's velocity on the wire.
pub fn region_velocity_of(r: &RegionVelocity) -> WireRegionVelocity {
    WireRegionVelocity {
        region: r.region.clone(),
        atp: r.atp,
        windows: windows_of(&r.windows),
    }
}

/// The result of `VELOCITY`.
pub fn velocity_of(sku: &SkuId, v: &SkuVelocity) -> WireVelocity {
    WireVelocity {
        sku: sku.to_string(),
        channels: v.channels.iter().map(channel_velocity_of).collect(),
        regions: v.regions.iter().map(region_velocity_of).collect(),
    }
}

/// The result of `AT_RISK_REGION`.
pub fn at_risk_region_of(region: &str, window: u8, list: &[AtRiskRegion]) -> WireAtRiskRegion {
    WireAtRiskRegion {
        region: region.to_string(),
        window,
        skus: list
            .iter()
            .map(|a| WireAtRiskRegionSku {
                sku: a.sku.to_string(),
                velocity: region_velocity_of(&a.velocity),
            })
            .collect(),
    }
}

/// The policy of a `REBALANCE_LIST` query: absent thresholds take the defaults; a bad
/// combination is `InvalidRequest` with the reason.
pub fn rebalance_policy(q: &RebalanceQuery) -> Result<RebalancePolicy, Rejection> {
    let d = RebalancePolicy::default();
    RebalancePolicy::new(
        q.near_hours.map_or(d.near_hours, f64::from),
        q.surplus_hours.map_or(d.surplus_hours, f64::from),
        q.window.map_or(d.window, usize::from),
    )
    .map_err(Rejection::invalid)
}

/// One recommendation on the wire.
pub fn recommendation_of(r: &Recommendation) -> WireRecommendation {
    WireRecommendation {
        id: r.id,
        sku: r.sku.to_string(),
        basis_seq: r.basis_seq,
        short_region: r.plan.to_region.clone(),
        donor_region: r.plan.from_region.clone(),
        from: r.plan.from.to_string(),
        to: r.plan.to.to_string(),
        qty: r.plan.qty,
        short_cover_hours: r.plan.to_cover_hours.0,
        short_cover_after_hours: r.plan.to_cover_hours.1,
        donor_cover_hours: r.plan.from_cover_hours.0,
        donor_cover_after_hours: r.plan.from_cover_hours.1,
        reference: r.reference(),
    }
}

/// Encoded size of a [`WireRecommendation`] (fixed-width codec): 7 strings (8-byte length
/// each), id 16, basis 8, qty 4, two f64 16, two optional f64 at most 18.
pub fn recommendation_bytes(w: &WireRecommendation) -> usize {
    let strings = [
        &w.sku,
        &w.short_region,
        &w.donor_region,
        &w.from,
        &w.to,
        &w.reference,
    ];
    strings.iter().map(|s| 8 + s.len()).sum::<usize>() + 16 + 8 + 4 + 16 + 18
}

/// The result of `AT_RISK`.
pub fn at_risk_of(channel: &ChannelId, window: u8, list: &[AtRisk]) -> WireAtRisk {
    WireAtRisk {
        channel: channel.to_string(),
        window,
        skus: list
            .iter()
            .map(|a| WireAtRiskSku {
                sku: a.sku.to_string(),
                velocity: channel_velocity_of(&a.velocity),
            })
            .collect(),
    }
}

/// The ids of an `EXPLAIN_ATP` body, validated (a bad one: `InvalidRequest`).
pub fn explain_ids(e: &ExplainAtp) -> Result<(SkuId, ChannelId), Rejection> {
    Ok((sku(&e.sku)?, ChannelId::new(&e.channel)?))
}

/// An explained ATP on the wire.
pub fn explanation_of(e: &AtpExplanation) -> WireAtpExplanation {
    WireAtpExplanation {
        sku: e.sku.to_string(),
        channel: e.channel.to_string(),
        locations: e
            .locations
            .iter()
            .map(|p| WireAtpPart {
                location: p.location.to_string(),
                on_hand: p.on_hand,
                reserved: p.reserved,
                safety_stock: p.safety_stock,
                damaged: p.damaged,
                quality_control: p.quality_control,
                shortfall: p.shortfall,
                atp: p.atp,
                contribution: p.contribution,
            })
            .collect(),
        sum: e.sum.sum,
        buffer: e.buffer,
        withheld_by_buffer: e.sum.withheld_by_buffer,
        cap: e.cap,
        withheld_by_cap: e.sum.withheld_by_cap,
        atp: e.sum.atp,
        holds: e
            .holds
            .iter()
            .map(|h| WireChannelHolds {
                channel: h.channel.to_string(),
                holds: h.holds,
                units: h.units,
                units_here: h.units_here,
            })
            .collect(),
        low_stock_threshold: e.low_stock.threshold,
        low_stock_source: match e.low_stock.source {
            LowStockSource::None => WireLowStockSource::None,
            LowStockSource::Channel => WireLowStockSource::Channel,
            LowStockSource::Sku => WireLowStockSource::Sku,
        },
        low_stock: e.low_stock.low,
        last_seq: e.last_seq,
    }
}

/// A reservation on the wire.
pub fn reservation_of(r: &ReservationView) -> WireReservation {
    WireReservation {
        reservation: r.reservation,
        channel: r.channel.to_string(),
        expires_at_ms: r.expires_at_ms,
        lines: r.lines.iter().map(|(s, q)| (s.to_string(), *q)).collect(),
    }
}

/// The catalog's locations on the wire.
pub fn locations_of(c: &Catalog) -> Locations {
    Locations {
        locations: c
            .locations
            .values()
            .map(|l| WireLocation {
                id: l.id.to_string(),
                kind: l.kind.into(),
                region: l.region.clone(),
            })
            .collect(),
    }
}

/// The catalog's channels on the wire.
pub fn channels_of(c: &Catalog) -> Channels {
    Channels {
        channels: c
            .channels
            .values()
            .map(|ch| WireChannel {
                id: ch.id.to_string(),
                locations: ch.locations.iter().map(|l| l.to_string()).collect(),
                buffer: ch.buffer,
                cap: ch.cap,
            })
            .collect(),
        stockout_thresholds: c
            .stockout_hours
            .iter()
            .map(|(ch, hours)| WireStockoutThreshold {
                channel: ch.to_string(),
                hours: *hours,
            })
            .collect(),
    }
}

/// A page of stored named positions (`positions` sorted by name): those after `after`
/// (empty: from the first), at most `limit` (0 or over the maximum: the maximum), each with
/// its lag behind `head`; `more` when names follow.
pub fn subscriptions_page(
    positions: &[(String, u64)],
    head: u64,
    after: &str,
    limit: u32,
) -> Subscriptions {
    let max = MAX_LIST_SUBSCRIPTIONS as usize;
    let limit = match limit as usize {
        0 => max,
        n => n.min(max),
    };
    let start = positions.partition_point(|(n, _)| !after.is_empty() && n.as_str() <= after);
    let rest = &positions[start..];
    let items = rest
        .iter()
        .take(limit)
        .map(|(name, position)| WireSubscription {
            name: name.clone(),
            position: *position,
            lag_records: head.saturating_sub(*position),
        })
        .collect();
    Subscriptions {
        items,
        more: rest.len() > limit,
    }
}

fn adjust_reason_name(r: AdjustReason) -> &'static str {
    match r {
        AdjustReason::Receipt => "receipt",
        AdjustReason::Shrinkage => "shrinkage",
        AdjustReason::Damage => "damage",
        AdjustReason::ReturnToStock => "return_to_stock",
        AdjustReason::Correction => "correction",
    }
}

fn state_name(s: StockState) -> &'static str {
    match s {
        StockState::Sellable => "sellable",
        StockState::Damaged => "damaged",
        StockState::QualityControl => "quality_control",
    }
}

/// One history entry on the wire (`SKU_HISTORY`): the event flattened into the fields
/// `protocol::history_kind` documents per kind.
pub fn history_event_of(e: &crate::engine::HistoryEntry) -> WireHistoryEvent {
    use crate::domain::{Allocation, ReleaseReason};
    use crate::protocol::history_kind as k;
    let allocations = |a: &[Allocation]| -> Vec<(String, u32)> {
        a.iter().map(|a| (a.location.to_string(), a.qty)).collect()
    };
    let total = |a: &[Allocation]| a.iter().map(|a| i64::from(a.qty)).sum::<i64>();
    let mut w = WireHistoryEvent {
        seq: e.seq,
        index: e.index,
        at_ms: e.at_ms,
        request_id: e.request,
        kind: 0,
        quantity: 0,
        previous: None,
        location: String::new(),
        to_location: String::new(),
        channel: String::new(),
        reservation: None,
        allocations: Vec::new(),
        reason: String::new(),
        reference: String::new(),
        expires_at_ms: 0,
    };
    match &e.event {
        Event::HoldPlaced {
            reservation,
            channel,
            expires_at_ms,
            allocations: a,
            ..
        } => {
            w.kind = k::HOLD_PLACED;
            w.reservation = Some(*reservation);
            w.channel = channel.to_string();
            w.expires_at_ms = *expires_at_ms;
            w.quantity = total(a);
            w.allocations = allocations(a);
        }
        Event::HoldFulfilled {
            reservation,
            allocations: a,
            closed,
        } => {
            w.kind = k::HOLD_FULFILLED;
            w.reservation = Some(*reservation);
            w.quantity = total(a);
            w.allocations = allocations(a);
            w.reason = if *closed { "closed" } else { "open" }.into();
        }
        Event::HoldReleased {
            reservation,
            allocations: a,
            reason,
        } => {
            w.kind = k::HOLD_RELEASED;
            w.reservation = Some(*reservation);
            w.quantity = total(a);
            w.allocations = allocations(a);
            w.reason = match reason {
                ReleaseReason::Client => "client",
                ReleaseReason::Expired => "expired",
                ReleaseReason::CartAborted => "cart_aborted",
                ReleaseReason::Recovery => "recovery",
            }
            .into();
        }
        Event::HoldExtended {
            reservation,
            expires_at_ms,
        } => {
            w.kind = k::HOLD_EXTENDED;
            w.reservation = Some(*reservation);
            w.expires_at_ms = *expires_at_ms;
        }
        Event::StockAdjusted {
            location,
            delta,
            reason,
            reference,
        } => {
            w.kind = k::STOCK_ADJUSTED;
            w.location = location.to_string();
            w.quantity = *delta;
            w.reason = adjust_reason_name(*reason).into();
            w.reference = reference.clone();
        }
        Event::OnHandSet {
            location,
            previous,
            on_hand,
            reference,
        } => {
            w.kind = k::ON_HAND_SET;
            w.location = location.to_string();
            w.previous = Some(*previous);
            w.quantity = i64::from(*on_hand);
            w.reference = reference.clone();
        }
        Event::StockMoved {
            location,
            from,
            to,
            qty,
        } => {
            w.kind = k::STOCK_MOVED;
            w.location = location.to_string();
            w.quantity = i64::from(*qty);
            w.reason = format!("{}->{}", state_name(*from), state_name(*to));
        }
        Event::Transferred {
            from,
            to,
            qty,
            reference,
        } => {
            w.kind = k::TRANSFERRED;
            w.location = from.to_string();
            w.to_location = to.to_string();
            w.quantity = i64::from(*qty);
            w.reference = reference.clone();
        }
        Event::StockoutProjected {
            channel,
            threshold_hours,
            hours_milli,
            per_hour_milli,
            atp,
        } => {
            w.kind = k::STOCKOUT_PROJECTED;
            w.channel = channel.to_string();
            w.quantity = i64::from(*atp);
            w.reason = projection_text(*hours_milli, *per_hour_milli, *threshold_hours);
        }
        Event::StockoutCleared {
            channel,
            atp,
            reason,
            ..
        } => {
            w.kind = k::STOCKOUT_CLEARED;
            w.channel = channel.to_string();
            w.quantity = i64::from(*atp);
            w.reason = clear_reason_name(*reason).into();
        }
        Event::RebalanceRecommended {
            id,
            to_region,
            from_region,
            from,
            to,
            qty,
            ..
        } => {
            w.kind = k::REBALANCE_RECOMMENDED;
            w.location = from.to_string();
            w.to_location = to.to_string();
            w.quantity = i64::from(*qty);
            w.reference = crate::domain::rebalance::reference_of(*id);
            w.reason = format!("{from_region}->{to_region}");
        }
        Event::RebalanceWithdrawn { id, reason, .. } => {
            w.kind = k::REBALANCE_WITHDRAWN;
            w.reference = crate::domain::rebalance::reference_of(*id);
            w.reason = match reason {
                crate::domain::RebalanceWithdrawReason::Applied => "applied",
                crate::domain::RebalanceWithdrawReason::Resolved => "resolved",
            }
            .into();
        }
        Event::RegionStockoutProjected {
            region,
            threshold_hours,
            hours_milli,
            per_hour_milli,
            atp,
        } => {
            w.kind = k::REGION_STOCKOUT_PROJECTED;
            w.to_location = region.clone();
            w.quantity = i64::from(*atp);
            w.reason = projection_text(*hours_milli, *per_hour_milli, *threshold_hours);
        }
        Event::RegionStockoutCleared {
            region,
            atp,
            reason,
            ..
        } => {
            w.kind = k::REGION_STOCKOUT_CLEARED;
            w.to_location = region.clone();
            w.quantity = i64::from(*atp);
            w.reason = clear_reason_name(*reason).into();
        }
        Event::SafetyStockSet { location, qty } => {
            w.kind = k::SAFETY_STOCK_SET;
            w.location = location.to_string();
            w.quantity = i64::from(*qty);
        }
        Event::IncomingSet {
            location,
            qty,
            eta_ms,
        } => {
            w.kind = k::INCOMING_SET;
            w.location = location.to_string();
            w.quantity = i64::from(*qty);
            w.expires_at_ms = *eta_ms;
        }
    }
    w
}

fn clear_reason_name(r: crate::domain::StockoutClearReason) -> &'static str {
    match r {
        crate::domain::StockoutClearReason::Recovered => "recovered",
        crate::domain::StockoutClearReason::NoDemand => "no_demand",
        crate::domain::StockoutClearReason::ThresholdRemoved => "threshold_removed",
    }
}

/// The history line of a raised stockout projection (channel or region).
fn projection_text(hours_milli: u64, per_hour_milli: u64, threshold_hours: u32) -> String {
    format!(
        "{:.1} h to zero at {:.2}/h, threshold {threshold_hours} h",
        hours_milli as f64 / 1000.0,
        per_hour_milli as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Allocation, LocationId, SkuId};

    #[test]
    fn rebalance_and_region_stockout_events_have_their_history_kinds() {
        use crate::protocol::history_kind as k;
        let entry = |event: Event| crate::engine::HistoryEntry {
            seq: 5,
            index: 1,
            at_ms: 9,
            request: 0,
            event,
        };
        let l = |s: &str| LocationId::new(s).expect("location");
        let w = history_event_of(&entry(Event::RebalanceRecommended {
            id: 0xab,
            basis_seq: 4,
            to_region: "FR".into(),
            from_region: "DE".into(),
            from: l("de-1"),
            to: l("fr-1"),
            qty: 12,
            to_cover_milli: 1_000,
            from_cover_milli: None,
        }));
        assert_eq!((w.kind, k::name(w.kind)), (13, "rebalance_recommended"));
        assert_eq!(
            (w.location.as_str(), w.to_location.as_str(), w.quantity),
            ("de-1", "fr-1", 12)
        );
        assert_eq!(w.reference, format!("rebalance:{:032x}", 0xab));
        assert_eq!(w.reason, "DE->FR");
        let w = history_event_of(&entry(Event::RebalanceWithdrawn {
            id: 0xab,
            to_region: "FR".into(),
            reason: crate::domain::RebalanceWithdrawReason::Applied,
        }));
        assert_eq!(
            (w.kind, k::name(w.kind), w.reason.as_str()),
            (14, "rebalance_withdrawn", "applied")
        );
        let w = history_event_of(&entry(Event::RegionStockoutProjected {
            region: "FR".into(),
            threshold_hours: 24,
            hours_milli: 12_500,
            per_hour_milli: 2_000,
            atp: 25,
        }));
        assert_eq!((w.kind, k::name(w.kind)), (15, "region_stockout_projected"));
        assert_eq!((w.to_location.as_str(), w.quantity), ("FR", 25));
        assert_eq!(w.reason, "12.5 h to zero at 2.00/h, threshold 24 h");
        let w = history_event_of(&entry(Event::RegionStockoutCleared {
            region: "FR".into(),
            threshold_hours: 0,
            hours_milli: None,
            per_hour_milli: 0,
            atp: 25,
            reason: crate::domain::StockoutClearReason::ThresholdRemoved,
        }));
        assert_eq!((w.kind, k::name(w.kind)), (16, "region_stockout_cleared"));
        assert_eq!(w.reason, "threshold_removed");
    }

    #[test]
    fn reserved_view_encodes_as_reserved() {
        let hold = |sku: &str, locs: &[(&str, u32)]| Change::Sku {
            sku: SkuId::new(sku).expect("sku"),
            event: Event::HoldPlaced {
                reservation: 9,
                channel: crate::domain::ChannelId::new("web").expect("channel"),
                expires_at_ms: 1_234,
                cart_skus: 2,
                allocations: locs
                    .iter()
                    .map(|(l, q)| Allocation {
                        location: LocationId::new(l).expect("location"),
                        qty: *q,
                    })
                    .collect(),
            },
        };
        let o = Outcome {
            seq: 77,
            changes: vec![
                hold("A", &[("wh-a", 2), ("st-b", 1)]),
                hold("B", &[("wh-a", 5)]),
            ],
        };
        assert_eq!(
            crate::protocol::encode_payload(&reserved_view(&o)).expect("view"),
            crate::protocol::encode_payload(&reserved_of(&o)).expect("owned")
        );
    }

    #[test]
    fn reserved_bytes_are_the_encoding_of_reserved() {
        let hold = |sku: &str, expires_at_ms: u64, locs: &[(&str, u32)]| Change::Sku {
            sku: SkuId::new(sku).expect("sku"),
            event: Event::HoldPlaced {
                reservation: 9,
                channel: crate::domain::ChannelId::new("web").expect("channel"),
                expires_at_ms,
                cart_skus: 2,
                allocations: locs
                    .iter()
                    .map(|(l, q)| Allocation {
                        location: LocationId::new(l).expect("location"),
                        qty: *q,
                    })
                    .collect(),
            },
        };
        let other = Change::Sku {
            sku: SkuId::new("C").expect("sku"),
            event: Event::HoldExtended {
                reservation: 9,
                expires_at_ms: 5,
            },
        };
        let cases = [
            Outcome {
                seq: 77,
                changes: vec![
                    hold("A", 1_234, &[("wh-a", 2), ("st-b", 1)]),
                    other.clone(),
                    hold("BB-long-sku-id", 1_234, &[("wh-a", 1_000_000_000)]),
                ],
            },
            Outcome {
                seq: u64::MAX,
                changes: vec![hold("A", u64::MAX, &[])],
            },
            Outcome {
                seq: 0,
                changes: vec![other],
            },
            Outcome {
                seq: 3,
                changes: vec![],
            },
        ];
        for o in &cases {
            let want = crate::protocol::encode_payload(&reserved_of(o)).expect("owned");
            assert_eq!(reserved_bytes(o), want, "{o:?}");
            let back: Reserved = crate::protocol::decode_payload(&want).expect("decode");
            assert_eq!(back, reserved_of(o));
        }
    }

    #[test]
    fn subscription_pages_follow_names_and_say_when_more_follow() {
        let p: Vec<(String, u64)> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i as u64))
            .collect();
        let names = |s: &Subscriptions| s.items.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        let all = subscriptions_page(&p, 5, "", 0);
        assert_eq!(
            (names(&all), all.more),
            (vec!["a".into(), "b".into(), "c".into()], false)
        );
        assert_eq!(all.items[2].lag_records, 3);
        let first = subscriptions_page(&p, 5, "", 2);
        assert_eq!(
            (names(&first), first.more),
            (vec!["a".into(), "b".into()], true)
        );
        let next = subscriptions_page(&p, 5, "b", 2);
        assert_eq!((names(&next), next.more), (vec!["c".into()], false));
        // `after` need not be a stored name; a position ahead of the head lags 0.
        assert_eq!(names(&subscriptions_page(&p, 0, "aa", 0)), vec!["b", "c"]);
        assert_eq!(subscriptions_page(&p, 0, "", 0).items[1].lag_records, 0);
        assert!(subscriptions_page(&p, 5, "c", 0).items.is_empty());
    }
}
