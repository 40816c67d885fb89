//! Stock-change feed for marketplace adapters and automation: what subscribers receive.
//!
//! This module is pure (no tokio, no actix, no clock): [`derive`] turns one log record's
//! events, with the SKU's channel ATPs before it, into a [`FeedRecord`] (ATP changes per
//! channel with threshold transitions, the oversold flag, reservation lifecycle);
//! [`Filter`] selects what one subscriber asked for and renders it as wire items; and
//! [`Coalescer`] keeps only the latest ATP per SKU x channel for coalesced delivery and for
//! subscribers catching up. The SKU actor, recovery and tests all call the same `derive`, so
//! the events a subscriber replays after a restart are the ones it would have seen live.
//!
//! [`hub`] (tokio) orders the records by sequence number, publishes them once durable and
//! keeps a bounded ring for resumption; [`subscription`] serves one subscriber.

pub mod hub;
pub mod subscription;

use std::collections::{HashMap, HashSet};

use crate::domain::{
    Catalog, Channel, ChannelId, Event, LocationId, RebalanceWithdrawReason, ReleaseReason,
    ReservationId, SkuId, SkuState, StockoutClearReason, TimeMs,
};
use crate::protocol::{
    cause, kinds, lifecycle, rebalance_reason, stockout_reason, transition, FrameKind, PushItem,
    WireAtp, WireOversold, WireRebalanceEvent, WireRegionStockout, WireReservationEvent,
    WireStockout,
};

/// ATP of one SKU on one channel changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtpChange {
    /// The channel.
    pub channel: ChannelId,
    /// ATP before.
    pub previous: u32,
    /// ATP after.
    pub atp: u32,
    /// See [`crate::protocol::transition`].
    pub transition: u8,
}

/// A reservation's part on one SKU changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationChange {
    /// The reservation.
    pub reservation: ReservationId,
    /// See [`crate::protocol::lifecycle`].
    pub kind: u8,
    /// Units concerned.
    pub qty: u32,
    /// Expiry, for placed and extended.
    pub expires_at_ms: TimeMs,
}

/// A stockout projection of the SKU on one channel was raised or cleared (from the
/// record's `StockoutProjected` / `StockoutCleared` events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockoutChange {
    /// The channel.
    pub channel: ChannelId,
    /// Raised (true) or cleared.
    pub projected: bool,
    /// The channel's threshold, hours (0: removed).
    pub threshold_hours: u32,
    /// Hours to zero, thousandths (`None`: no demand).
    pub hours_milli: Option<u64>,
    /// Units held per hour, thousandths.
    pub per_hour_milli: u64,
    /// The channel's ATP.
    pub atp: u32,
    /// See [`crate::protocol::stockout_reason`].
    pub reason: u8,
}

/// A rebalance recommendation of the SKU was raised or withdrawn (the record's
/// `RebalanceRecommended` / `RebalanceWithdrawn` events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebalanceChange {
    /// Its id.
    pub id: u128,
    /// Raised (true) or withdrawn.
    pub recommended: bool,
    /// See [`crate::protocol::rebalance_reason`].
    pub reason: u8,
    /// The short region.
    pub short_region: String,
    /// The donor region (empty when withdrawn).
    pub donor_region: String,
    /// Donor location (empty when withdrawn).
    pub from: String,
    /// Receiving location (empty when withdrawn).
    pub to: String,
    /// Units (0 when withdrawn).
    pub qty: u32,
    /// Short region's cover, hours in thousandths (0 when withdrawn).
    pub short_cover_milli: u64,
    /// Donor region's cover, hours in thousandths (`u64::MAX`: no demand, or withdrawn).
    pub donor_cover_milli: u64,
}

/// A stockout projection of the SKU in one region was raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStockoutChange {
    /// The region code.
    pub region: String,
    /// Raised (true) or cleared.
    pub projected: bool,
    /// The region's threshold, hours (0: none).
    pub threshold_hours: u32,
    /// Hours to zero, thousandths (`None`: no demand).
    pub hours_milli: Option<u64>,
    /// Units held per hour, thousandths.
    pub per_hour_milli: u64,
    /// The region's ATP.
    pub atp: u32,
    /// See [`crate::protocol::stockout_reason`].
    pub reason: u8,
}

/// What one log record means to subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedBody {
    /// A SKU changed.
    Sku {
        /// The SKU.
        sku: SkuId,
        /// See [`crate::protocol::cause`].
        cause: u8,
        /// Channels whose ATP changed.
        atp: Vec<AtpChange>,
        /// The new oversold flag, if it changed.
        oversold: Option<bool>,
        /// Reservation lifecycle.
        reservations: Vec<ReservationChange>,
        /// Stockout projections raised or cleared (empty for almost every record).
        stockout: Vec<StockoutChange>,
        /// Rebalance recommendations raised or withdrawn (empty for almost every record).
        rebalance: Vec<RebalanceChange>,
        /// Region stockout projections raised or cleared (empty for almost every record).
        region_stockout: Vec<RegionStockoutChange>,
    },
    /// The catalog changed.
    Catalog,
}

/// One log record's meaning for the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedRecord {
    /// Its log sequence number.
    pub seq: u64,
    /// When the engine accepted it.
    pub at_ms: TimeMs,
    /// What changed.
    pub body: FeedBody,
    /// Its wire items, encoded once by the first subscriber that needs them and copied by
    /// every other one (see [`Filter::render_bytes`]).
    pub encoded: EncodedCache,
}

impl FeedRecord {
    /// A record (its wire encoding is computed on first use).
    pub fn new(seq: u64, at_ms: TimeMs, body: FeedBody) -> Self {
        FeedRecord {
            seq,
            at_ms,
            body,
            encoded: EncodedCache::default(),
        }
    }
}

/// The wire items of a record, encoded: one buffer and where each item ends.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// End of the i-th ATP item; the first starts at 0.
    atp_ends: Vec<usize>,
    /// End of the oversold item (equal to the last ATP end when there is none).
    oversold_end: usize,
    /// End of the reservation items (they are selected all together).
    reservations_end: usize,
    /// End of the i-th stockout item; the first starts at `reservations_end`.
    stockout_ends: Vec<usize>,
    /// End of the rebalance items (selected all together); they start at the last
    /// stockout end (or `reservations_end`).
    rebalance_end: usize,
    /// End of the region stockout items (selected all together); they start at
    /// `rebalance_end`.
    region_end: usize,
}

/// A lazily filled [`Encoded`]; ignored by equality and cloned empty (it is a cache).
/// Boxed: most records in the ring are never encoded (no subscriber reads them), and the
/// 104 bytes inline would put every record in a larger size class.
#[derive(Debug, Default)]
pub struct EncodedCache(std::sync::OnceLock<Box<Encoded>>);

impl Clone for EncodedCache {
    fn clone(&self) -> Self {
        EncodedCache::default()
    }
}
impl PartialEq for EncodedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EncodedCache {}

/// Push items being collected into one frame payload (a `PushBatch`: a `u64` count, then the
/// items), so that cached item bytes can be appended without decoding or re-encoding. Room
/// for the frame's header is kept in front, so a payload that fits one frame becomes that
/// frame in place ([`FrameBuf::take_frames`]: no copy of the items).
#[derive(Debug)]
pub struct FrameBuf {
    /// Room for the frame header, 8 bytes for the count, then the items.
    bytes: Vec<u8>,
    /// Items so far.
    pub count: u64,
    /// Where each unit (one item, or a record's reservation items together) ends in
    /// `bytes` and how many items it holds: a payload over the frame limit is cut between
    /// units.
    ends: Vec<(usize, u64)>,
}

/// Bytes in front of a [`FrameBuf`]'s payload: the frame's length prefix and header.
const FRAME_HEAD: usize = crate::protocol::frame::FRAME_OVERHEAD_BYTES;

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf::with_capacity(0)
    }
}

impl FrameBuf {
    /// An empty buffer with room for about `bytes` bytes of items (no reallocation while a
    /// frame of the size of a subscriber's last one is rendered).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut b = Vec::with_capacity(FRAME_HEAD + 8 + bytes);
        b.resize(FRAME_HEAD + 8, 0);
        FrameBuf {
            bytes: b,
            count: 0,
            ends: Vec::new(),
        }
    }

    /// Appends one item.
    pub fn push(&mut self, item: &PushItem) {
        if crate::codec::encode_into(item, &mut self.bytes).is_ok() {
            self.count += 1;
            self.ends.push((self.bytes.len(), 1));
        }
    }

    /// Appends `n` items already encoded (their bytes as `encode_into` wrote them).
    pub fn push_encoded(&mut self, items: &[u8], n: u64) {
        self.bytes.extend_from_slice(items);
        self.count += n;
        self.ends.push((self.bytes.len(), n));
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of items held.
    pub fn items_len(&self) -> usize {
        self.bytes.len() - FRAME_HEAD - 8
    }

    /// The finished `PushBatch` payload; the buffer is left empty for reuse.
    pub fn take_payload(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.bytes);
        out.drain(..FRAME_HEAD);
        out[..8].copy_from_slice(&self.count.to_le_bytes());
        *self = FrameBuf::default();
        out
    }

    /// The items as frames of `kind` and `correlation` whose `PushBatch` payloads are at
    /// most `max_payload` bytes each, cut between items, in order (one frame when they
    /// fit, built in place: the common case copies nothing). An item that alone is over
    /// the limit goes in a frame of its own: items are bounded by the id limits, a few
    /// hundred bytes, and `max_frame_bytes` is at least 256. The buffer is left empty.
    pub fn take_frames(
        &mut self,
        kind: FrameKind,
        correlation: u64,
        max_payload: usize,
    ) -> Vec<Vec<u8>> {
        let head = |b: &mut [u8], count: u64| {
            let len =
                u32::try_from(b.len() - crate::protocol::frame::LENGTH_BYTES).unwrap_or(u32::MAX);
            b[..4].copy_from_slice(&len.to_le_bytes());
            b[4] = kind as u8;
            b[5..FRAME_HEAD].copy_from_slice(&correlation.to_le_bytes());
            b[FRAME_HEAD..FRAME_HEAD + 8].copy_from_slice(&count.to_le_bytes());
        };
        if self.bytes.len() - FRAME_HEAD <= max_payload {
            let mut out = std::mem::take(&mut self.bytes);
            head(&mut out, self.count);
            *self = FrameBuf::default();
            return vec![out];
        }
        let mut out = Vec::new();
        let (mut start, mut count) = (FRAME_HEAD + 8, 0u64);
        let mut part = vec![0u8; FRAME_HEAD + 8];
        for &(end, n) in &self.ends {
            if count > 0 && part.len() - FRAME_HEAD + (end - start) > max_payload {
                head(&mut part, count);
                out.push(std::mem::replace(&mut part, vec![0u8; FRAME_HEAD + 8]));
                count = 0;
            }
            part.extend_from_slice(&self.bytes[start..end]);
            count += n;
            start = end;
        }
        if count > 0 {
            head(&mut part, count);
            out.push(part);
        }
        *self = FrameBuf::default();
        out
    }
}

/// A SKU's channel ATPs (and oversold flag) before a record, for the channels it touches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Before<'c> {
    /// The first [`BEFORE_INLINE`] channels (no allocation for nearly every record),
    /// then the rest.
    inline: [Option<(&'c Channel, u32)>; BEFORE_INLINE],
    more: Vec<(&'c Channel, u32)>,
    oversold: bool,
}

/// Channels [`Before`] keeps inline.
const BEFORE_INLINE: usize = 8;

impl<'c> Before<'c> {
    fn push(&mut self, entry: (&'c Channel, u32)) {
        match self.inline.iter_mut().find(|e| e.is_none()) {
            Some(free) => *free = Some(entry),
            None => self.more.push(entry),
        }
    }

    fn atp(&self) -> impl Iterator<Item = (&'c Channel, u32)> + '_ {
        self.inline
            .iter()
            .map_while(|e| *e)
            .chain(self.more.iter().copied())
    }
}

/// Locations [`Touched`] keeps inline: a record names one or two (a transfer two, a
/// split hold a few), so this allocates nothing for nearly every record.
const TOUCHED_INLINE: usize = 4;

/// The distinct locations a record's events name, in the order first named.
struct Touched<'a> {
    inline: [Option<&'a LocationId>; TOUCHED_INLINE],
    n: usize,
    more: Vec<&'a LocationId>,
}

impl<'a> Touched<'a> {
    fn iter(&self) -> impl Iterator<Item = &'a LocationId> + '_ {
        self.inline[..self.n]
            .iter()
            .flatten()
            .copied()
            .chain(self.more.iter().copied())
    }

    fn len(&self) -> usize {
        self.n + self.more.len()
    }

    fn add(&mut self, l: &'a LocationId) {
        if self.iter().any(|x| x == l) {
            return;
        }
        if self.n < TOUCHED_INLINE {
            self.inline[self.n] = Some(l);
            self.n += 1;
        } else {
            self.more.push(l);
        }
    }
}

fn touched_locations(events: &[Event]) -> Touched<'_> {
    let mut out = Touched {
        inline: [None; TOUCHED_INLINE],
        n: 0,
        more: Vec::new(),
    };
    for e in events {
        match e {
            Event::HoldPlaced { allocations, .. }
            | Event::HoldFulfilled { allocations, .. }
            | Event::HoldReleased { allocations, .. } => {
                for a in allocations {
                    out.add(&a.location);
                }
            }
            Event::HoldExtended { .. }
            | Event::StockoutProjected { .. }
            | Event::StockoutCleared { .. }
            | Event::RebalanceRecommended { .. }
            | Event::RebalanceWithdrawn { .. }
            | Event::RegionStockoutProjected { .. }
            | Event::RegionStockoutCleared { .. } => {}
            Event::StockAdjusted { location, .. }
            | Event::OnHandSet { location, .. }
            | Event::StockMoved { location, .. }
            | Event::SafetyStockSet { location, .. }
            | Event::IncomingSet { location, .. } => out.add(location),
            Event::Transferred { from, to, .. } => {
                out.add(from);
                out.add(to);
            }
        }
    }
    out
}

/// Channel ATPs of `state` for the channels that sell from a location `events` touch. Call
/// before applying `events`.
pub fn before<'c>(catalog: &'c Catalog, state: &SkuState, events: &[Event]) -> Before<'c> {
    let mut out = Before {
        oversold: state.oversold(),
        ..Before::default()
    };
    let locations = touched_locations(events);
    // With one location (most records) every channel comes once; with several, a channel
    // selling from two of them is taken once, told apart by its position.
    let mut seen: Vec<usize> = Vec::new();
    for loc in locations.iter() {
        for (i, ch) in catalog.channels_at(loc) {
            if locations.len() > 1 {
                if seen.contains(&i) {
                    continue;
                }
                seen.push(i);
            }
            out.push((ch, state.channel_atp(ch)));
        }
    }
    out
}

/// The transition of a channel's ATP from `previous` to `atp` given a low-stock threshold
/// (0: none). The low-stock band is `1..=low_stock`; out of stock and back in stock win
/// over entering or leaving it, so each change has at most one transition.
pub fn transition_of(previous: u32, atp: u32, low_stock: u32) -> u8 {
    let in_band = |v: u32| crate::domain::catalog::in_low_stock_band(v, low_stock);
    if previous > 0 && atp == 0 {
        transition::OUT_OF_STOCK
    } else if previous == 0 && atp > 0 {
        transition::BACK_IN_STOCK
    } else if in_band(atp) && previous > low_stock {
        transition::LOW_STOCK
    } else if in_band(previous) && atp > low_stock {
        // An ads-pauser that paused on LOW_STOCK resumes on this.
        transition::LOW_STOCK_CLEARED
    } else {
        transition::NONE
    }
}

fn cause_of(events: &[Event]) -> u8 {
    match events.first() {
        Some(Event::HoldPlaced { .. }) | None => cause::RESERVE,
        Some(Event::HoldFulfilled { .. }) => cause::FULFILL,
        Some(Event::HoldReleased { reason, .. }) => match reason {
            ReleaseReason::Client => cause::RELEASE,
            ReleaseReason::Expired => cause::EXPIRY,
            ReleaseReason::CartAborted => cause::CART_ABORT,
            ReleaseReason::Recovery => cause::RECOVERY,
        },
        Some(Event::HoldExtended { .. }) => cause::EXTEND,
        Some(Event::StockAdjusted { .. }) => cause::ADJUST,
        Some(Event::OnHandSet { .. }) => cause::SET_ON_HAND,
        Some(Event::StockMoved { .. }) => cause::MOVE,
        Some(Event::Transferred { .. }) => cause::TRANSFER,
        Some(Event::SafetyStockSet { .. }) => cause::SAFETY_STOCK,
        Some(Event::IncomingSet { .. }) => cause::INCOMING,
        // A record of projections only: the engine's re-projection (decay).
        Some(
            Event::StockoutProjected { .. }
            | Event::StockoutCleared { .. }
            | Event::RebalanceRecommended { .. }
            | Event::RebalanceWithdrawn { .. }
            | Event::RegionStockoutProjected { .. }
            | Event::RegionStockoutCleared { .. },
        ) => cause::REPROJECT,
    }
}

fn reservation_changes(events: &[Event]) -> Vec<ReservationChange> {
    let sum = |a: &[crate::domain::Allocation]| a.iter().map(|x| x.qty).sum::<u32>();
    events
        .iter()
        .filter_map(|e| {
            Some(match e {
                Event::HoldPlaced {
                    reservation,
                    expires_at_ms,
                    allocations,
                    ..
                } => ReservationChange {
                    reservation: *reservation,
                    kind: lifecycle::PLACED,
                    qty: sum(allocations),
                    expires_at_ms: *expires_at_ms,
                },
                Event::HoldFulfilled {
                    reservation,
                    allocations,
                    ..
                } => ReservationChange {
                    reservation: *reservation,
                    kind: lifecycle::FULFILLED,
                    qty: sum(allocations),
                    expires_at_ms: 0,
                },
                Event::HoldReleased {
                    reservation,
                    allocations,
                    reason,
                } => ReservationChange {
                    reservation: *reservation,
                    kind: match reason {
                        ReleaseReason::Client => lifecycle::RELEASED,
                        ReleaseReason::Expired => lifecycle::EXPIRED,
                        ReleaseReason::CartAborted | ReleaseReason::Recovery => lifecycle::UNDONE,
                    },
                    qty: sum(allocations),
                    expires_at_ms: 0,
                },
                Event::HoldExtended {
                    reservation,
                    expires_at_ms,
                } => ReservationChange {
                    reservation: *reservation,
                    kind: lifecycle::EXTENDED,
                    qty: 0,
                    expires_at_ms: *expires_at_ms,
                },
                _ => return None,
            })
        })
        .collect()
}

/// The events at the end of a record that are projections (`decide` appends them after
/// the request's own events).
fn projections(events: &[Event]) -> &[Event] {
    let n = events
        .iter()
        .rev()
        .take_while(|e| crate::domain::sku::is_projection(e))
        .count();
    &events[events.len() - n..]
}

fn clear_reason(r: StockoutClearReason) -> u8 {
    match r {
        StockoutClearReason::Recovered => stockout_reason::RECOVERED,
        StockoutClearReason::NoDemand => stockout_reason::NO_DEMAND,
        StockoutClearReason::ThresholdRemoved => stockout_reason::THRESHOLD_REMOVED,
    }
}

fn rebalance_changes(projected: &[Event]) -> Vec<RebalanceChange> {
    projected
        .iter()
        .filter_map(|e| match e {
            Event::RebalanceRecommended {
                id,
                to_region,
                from_region,
                from,
                to,
                qty,
                to_cover_milli,
                from_cover_milli,
                ..
            } => Some(RebalanceChange {
                id: *id,
                recommended: true,
                reason: rebalance_reason::NONE,
                short_region: to_region.clone(),
                donor_region: from_region.clone(),
                from: from.to_string(),
                to: to.to_string(),
                qty: *qty,
                short_cover_milli: *to_cover_milli,
                donor_cover_milli: from_cover_milli.unwrap_or(u64::MAX),
            }),
            Event::RebalanceWithdrawn {
                id,
                to_region,
                reason,
            } => Some(RebalanceChange {
                id: *id,
                recommended: false,
                reason: match reason {
                    RebalanceWithdrawReason::Applied => rebalance_reason::APPLIED,
                    RebalanceWithdrawReason::Resolved => rebalance_reason::RESOLVED,
                },
                short_region: to_region.clone(),
                donor_region: String::new(),
                from: String::new(),
                to: String::new(),
                qty: 0,
                short_cover_milli: 0,
                donor_cover_milli: u64::MAX,
            }),
            _ => None,
        })
        .collect()
}

fn region_changes(projected: &[Event]) -> Vec<RegionStockoutChange> {
    projected
        .iter()
        .filter_map(|e| match e {
            Event::RegionStockoutProjected {
                region,
                threshold_hours,
                hours_milli,
                per_hour_milli,
                atp,
            } => Some(RegionStockoutChange {
                region: region.clone(),
                projected: true,
                threshold_hours: *threshold_hours,
                hours_milli: Some(*hours_milli),
                per_hour_milli: *per_hour_milli,
                atp: *atp,
                reason: stockout_reason::NONE,
            }),
            Event::RegionStockoutCleared {
                region,
                threshold_hours,
                hours_milli,
                per_hour_milli,
                atp,
                reason,
            } => Some(RegionStockoutChange {
                region: region.clone(),
                projected: false,
                threshold_hours: *threshold_hours,
                hours_milli: *hours_milli,
                per_hour_milli: *per_hour_milli,
                atp: *atp,
                reason: clear_reason(*reason),
            }),
            _ => None,
        })
        .collect()
}

fn stockout_changes(projected: &[Event]) -> Vec<StockoutChange> {
    projected
        .iter()
        .filter_map(|e| match e {
            Event::StockoutProjected {
                channel,
                threshold_hours,
                hours_milli,
                per_hour_milli,
                atp,
            } => Some(StockoutChange {
                channel: channel.clone(),
                projected: true,
                threshold_hours: *threshold_hours,
                hours_milli: Some(*hours_milli),
                per_hour_milli: *per_hour_milli,
                atp: *atp,
                reason: stockout_reason::NONE,
            }),
            Event::StockoutCleared {
                channel,
                threshold_hours,
                hours_milli,
                per_hour_milli,
                atp,
                reason,
            } => Some(StockoutChange {
                channel: channel.clone(),
                projected: false,
                threshold_hours: *threshold_hours,
                hours_milli: *hours_milli,
                per_hour_milli: *per_hour_milli,
                atp: *atp,
                reason: clear_reason(*reason),
            }),
            _ => None,
        })
        .collect()
}

/// The feed record of one SKU record: `before` was taken with [`before`] on the state
/// before `events`, `after` is the state once they are applied.
pub fn derive(
    catalog: &Catalog,
    before: Before<'_>,
    after: &SkuState,
    events: &[Event],
    seq: u64,
    at_ms: TimeMs,
) -> FeedRecord {
    let mut atp = Vec::new();
    for (ch, previous) in before.atp() {
        let now = after.channel_atp(ch);
        if now != previous {
            let t = transition_of(previous, now, catalog.low_stock_of(&after.sku, &ch.id));
            atp.push(AtpChange {
                channel: ch.id.clone(),
                previous,
                atp: now,
                transition: t,
            });
        }
    }
    let oversold_now = after.oversold();
    let projected = projections(events);
    FeedRecord::new(
        seq,
        at_ms,
        FeedBody::Sku {
            sku: after.sku.clone(),
            cause: cause_of(events),
            atp,
            oversold: (oversold_now != before.oversold).then_some(oversold_now),
            reservations: reservation_changes(events),
            stockout: stockout_changes(projected),
            rebalance: rebalance_changes(projected),
            region_stockout: region_changes(projected),
        },
    )
}

/// Appends `PushItem::Atp` of change `c` as the fixed codec writes it (the variant's
/// index, then the fields of `WireAtp` in declaration order; see `codec::put_u64`).
fn put_atp(out: &mut Vec<u8>, rec: &FeedRecord, sku: &str, c: &AtpChange, cause: u8) {
    use crate::codec::{put_str, put_u64, put_variant};
    put_variant(out, 0);
    put_u64(out, rec.seq);
    put_u64(out, rec.at_ms);
    put_str(out, sku);
    put_str(out, c.channel.as_str());
    out.extend_from_slice(&c.previous.to_le_bytes());
    out.extend_from_slice(&c.atp.to_le_bytes());
    out.extend_from_slice(&[cause, c.transition, u8::from(false)]);
}

/// Appends `PushItem::Reservation` of `r` as the fixed codec writes it (see [`put_atp`]).
fn put_reservation(out: &mut Vec<u8>, rec: &FeedRecord, sku: &str, r: &ReservationChange) {
    use crate::codec::{put_str, put_u64, put_variant};
    put_variant(out, 2);
    put_u64(out, rec.seq);
    put_u64(out, rec.at_ms);
    put_str(out, sku);
    out.extend_from_slice(&r.reservation.to_le_bytes());
    out.push(r.kind);
    out.extend_from_slice(&r.qty.to_le_bytes());
    put_u64(out, r.expires_at_ms);
}

/// Encodes every wire item of a record once, in the order `Filter::render` emits them.
fn encode_record(rec: &FeedRecord) -> Encoded {
    let all = Filter {
        kinds: kinds::ALL,
        ..Filter::default()
    };
    // About one reserve's record (two ATP items and a reservation's); grown if larger.
    let mut e = Encoded {
        bytes: Vec::with_capacity(256),
        atp_ends: Vec::with_capacity(4),
        ..Encoded::default()
    };
    let mut items = Vec::new();
    all.render_into(rec, &mut items, AtpSink::Encoded(&mut e));
    for item in &items {
        let _ = crate::codec::encode_into(item, &mut e.bytes);
        match item {
            PushItem::Atp(_) | PushItem::Catalog { .. } => {
                e.atp_ends.push(e.bytes.len());
                e.oversold_end = e.bytes.len();
                e.reservations_end = e.bytes.len();
            }
            PushItem::Oversold(_) => {
                e.oversold_end = e.bytes.len();
                e.reservations_end = e.bytes.len();
            }
            PushItem::Stockout(_) => e.stockout_ends.push(e.bytes.len()),
            PushItem::Rebalance(_) => e.rebalance_end = e.bytes.len(),
            PushItem::RegionStockout(_) => e.region_end = e.bytes.len(),
            _ => e.reservations_end = e.bytes.len(),
        }
    }
    let stockout_end = e
        .stockout_ends
        .last()
        .copied()
        .unwrap_or(e.reservations_end);
    e.rebalance_end = e.rebalance_end.max(stockout_end);
    e.region_end = e.region_end.max(e.rebalance_end);
    e
}

/// What one subscriber asked for. Validated by the caller (ids checked, kinds non-empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Channels (empty = all).
    pub channels: HashSet<ChannelId>,
    /// SKUs (empty = all).
    pub skus: HashSet<SkuId>,
    /// SKU prefix (empty = none).
    pub sku_prefix: String,
    /// Bit set of [`crate::protocol::kinds`].
    pub kinds: u8,
}

impl Filter {
    /// Whether events of `sku` are wanted.
    pub fn wants_sku(&self, sku: &SkuId) -> bool {
        (self.skus.is_empty() || self.skus.contains(sku))
            && sku.as_str().starts_with(&self.sku_prefix)
    }

    /// Whether ATP of `channel` is wanted.
    pub fn wants_channel(&self, channel: &ChannelId) -> bool {
        self.channels.is_empty() || self.channels.contains(channel)
    }

    /// Like [`Filter::render`] without coalescing, appending the record's cached wire bytes
    /// (encoded once per record, whichever subscriber asks first) instead of building items.
    pub fn render_bytes(&self, rec: &FeedRecord, out: &mut FrameBuf) {
        self.render_bytes_of(rec, out, false)
    }

    /// [`Filter::render_bytes`] of a record whose SKU is known to be wanted when
    /// `sku_wanted` (a routed subscriber's own record: the hub matched it already, and
    /// reading the SKU's id again would cost a cache miss per record and subscriber).
    pub fn render_bytes_of(&self, rec: &FeedRecord, out: &mut FrameBuf, sku_wanted: bool) {
        let (sku, changes, oversold) = match &rec.body {
            FeedBody::Catalog => (None, &[][..], None),
            FeedBody::Sku {
                sku, atp, oversold, ..
            } => (Some(sku), &atp[..], *oversold),
        };
        if let Some(sku) = sku {
            debug_assert!(
                !sku_wanted || self.wants_sku(sku),
                "routed to a subscriber it does not match"
            );
            if !sku_wanted && !self.wants_sku(sku) {
                return;
            }
        }
        let e = rec.encoded.0.get_or_init(|| Box::new(encode_record(rec)));
        if sku.is_none() {
            // Catalog: one item, always sent.
            out.push_encoded(&e.bytes[..e.reservations_end], 1);
            return;
        }
        let mut start = 0;
        for (c, end) in changes.iter().zip(&e.atp_ends) {
            if self.wants_atp_change(c) {
                out.push_encoded(&e.bytes[start..*end], 1);
            }
            start = *end;
        }
        if oversold.is_some() && self.kinds & (kinds::THRESHOLDS | kinds::ATP) != 0 {
            out.push_encoded(&e.bytes[start..e.oversold_end], 1);
        }
        if self.kinds & kinds::RESERVATIONS != 0 {
            if let FeedBody::Sku { reservations, .. } = &rec.body {
                let n = reservations.len() as u64;
                if n > 0 {
                    out.push_encoded(&e.bytes[e.oversold_end..e.reservations_end], n);
                }
            }
        }
        if self.kinds & kinds::STOCKOUT != 0 {
            if let FeedBody::Sku { stockout, .. } = &rec.body {
                let mut start = e.reservations_end;
                for (c, end) in stockout.iter().zip(&e.stockout_ends) {
                    if self.wants_channel(&c.channel) {
                        out.push_encoded(&e.bytes[start..*end], 1);
                    }
                    start = *end;
                }
            }
        }
        if let FeedBody::Sku {
            rebalance,
            region_stockout,
            ..
        } = &rec.body
        {
            // Neither is about a channel: selected by kind alone, each all together.
            let stockout_end = e
                .stockout_ends
                .last()
                .copied()
                .unwrap_or(e.reservations_end);
            if self.kinds & kinds::REBALANCE != 0 && !rebalance.is_empty() {
                let n = rebalance.len() as u64;
                out.push_encoded(&e.bytes[stockout_end..e.rebalance_end], n);
            }
            if self.kinds & kinds::REGION_STOCKOUT != 0 && !region_stockout.is_empty() {
                let n = region_stockout.len() as u64;
                out.push_encoded(&e.bytes[e.rebalance_end..e.region_end], n);
            }
        }
    }

    fn wants_atp_change(&self, c: &AtpChange) -> bool {
        self.wants_channel(&c.channel)
            && (self.kinds & kinds::ATP != 0
                || (self.kinds & kinds::THRESHOLDS != 0 && c.transition != transition::NONE))
    }

    /// Appends the wire items of `rec` this filter selects. ATP changes go to `atp` when it
    /// is given (coalescing), else to `out` with everything else.
    pub fn render(&self, rec: &FeedRecord, out: &mut Vec<PushItem>, atp: Option<&mut Coalescer>) {
        self.render_into(rec, out, atp.map_or(AtpSink::Items, AtpSink::Coalescer));
    }

    /// [`Filter::render`], with the ATP changes sent where `atp` says.
    fn render_into(&self, rec: &FeedRecord, out: &mut Vec<PushItem>, mut atp: AtpSink<'_>) {
        let (seq, at_ms) = (rec.seq, rec.at_ms);
        let (sku, cause, changes, oversold, reservations, stockout, rebalance, regions) =
            match &rec.body {
                FeedBody::Catalog => {
                    out.push(PushItem::Catalog { seq, at_ms });
                    return;
                }
                FeedBody::Sku {
                    sku,
                    cause,
                    atp,
                    oversold,
                    reservations,
                    stockout,
                    rebalance,
                    region_stockout,
                } => (
                    sku,
                    *cause,
                    atp,
                    *oversold,
                    reservations,
                    stockout,
                    rebalance,
                    region_stockout,
                ),
            };
        if !self.wants_sku(sku) {
            return;
        }
        for c in changes.iter().filter(|c| self.wants_atp_change(c)) {
            match &mut atp {
                AtpSink::Encoded(e) => {
                    put_atp(&mut e.bytes, rec, sku.as_str(), c, cause);
                    e.atp_ends.push(e.bytes.len());
                }
                AtpSink::Coalescer(co) => co.add(sku, c, cause, seq, at_ms),
                AtpSink::Items => out.push(PushItem::Atp(WireAtp {
                    seq,
                    at_ms,
                    sku: sku.to_string(),
                    channel: c.channel.to_string(),
                    previous: c.previous,
                    atp: c.atp,
                    cause,
                    transition: c.transition,
                    coalesced: false,
                })),
            }
        }
        if let Some(flag) = oversold {
            if self.kinds & (kinds::THRESHOLDS | kinds::ATP) != 0 {
                let item = PushItem::Oversold(WireOversold {
                    seq,
                    at_ms,
                    sku: sku.to_string(),
                    oversold: flag,
                });
                match &mut atp {
                    AtpSink::Encoded(e) => {
                        let _ = crate::codec::encode_into(&item, &mut e.bytes);
                    }
                    _ => out.push(item),
                }
            }
        }
        if let AtpSink::Encoded(e) = &mut atp {
            e.oversold_end = e.bytes.len();
            for r in reservations {
                put_reservation(&mut e.bytes, rec, sku.as_str(), r);
            }
            e.reservations_end = e.bytes.len();
        } else if self.kinds & kinds::RESERVATIONS != 0 {
            for r in reservations {
                out.push(PushItem::Reservation(WireReservationEvent {
                    seq,
                    at_ms,
                    sku: sku.to_string(),
                    reservation: r.reservation,
                    kind: r.kind,
                    qty: r.qty,
                    expires_at_ms: r.expires_at_ms,
                }));
            }
        }
        if self.kinds & kinds::STOCKOUT != 0 {
            for c in stockout.iter().filter(|c| self.wants_channel(&c.channel)) {
                out.push(PushItem::Stockout(WireStockout {
                    seq,
                    at_ms,
                    sku: sku.to_string(),
                    channel: c.channel.to_string(),
                    projected: c.projected,
                    threshold_hours: c.threshold_hours,
                    hours_milli: c.hours_milli.unwrap_or(u64::MAX),
                    per_hour_milli: c.per_hour_milli,
                    atp: c.atp,
                    reason: c.reason,
                    window: crate::domain::sku::STOCKOUT_WINDOW as u8,
                }));
            }
        }
        if self.kinds & kinds::REBALANCE != 0 {
            for r in rebalance {
                out.push(PushItem::Rebalance(WireRebalanceEvent {
                    seq,
                    at_ms,
                    sku: sku.to_string(),
                    id: r.id,
                    recommended: r.recommended,
                    reason: r.reason,
                    short_region: r.short_region.clone(),
                    donor_region: r.donor_region.clone(),
                    from: r.from.clone(),
                    to: r.to.clone(),
                    qty: r.qty,
                    short_cover_milli: r.short_cover_milli,
                    donor_cover_milli: r.donor_cover_milli,
                    reference: crate::domain::rebalance::reference_of(r.id),
                }));
            }
        }
        if self.kinds & kinds::REGION_STOCKOUT != 0 {
            for r in regions {
                out.push(PushItem::RegionStockout(WireRegionStockout {
                    seq,
                    at_ms,
                    sku: sku.to_string(),
                    region: r.region.clone(),
                    projected: r.projected,
                    threshold_hours: r.threshold_hours,
                    hours_milli: r.hours_milli.unwrap_or(u64::MAX),
                    per_hour_milli: r.per_hour_milli,
                    atp: r.atp,
                    reason: r.reason,
                    window: crate::domain::sku::STOCKOUT_WINDOW as u8,
                }));
            }
        }
    }
}

/// Where [`Filter::render_into`] sends a record's ATP changes.
enum AtpSink<'a> {
    /// Wire items, with the rest.
    Items,
    /// Merged per SKU x channel.
    Coalescer(&'a mut Coalescer),
    /// Written field by field into a record's cached bytes, with its oversold and
    /// reservation items (`encode_record`): the bytes the codec writes for them
    /// (`cached_bytes_are_exactly_the_encoded_items_for_every_filter`), without building
    /// the items and their strings. The other items still go to `out`.
    Encoded(&'a mut Encoded),
}

#[derive(Debug)]
struct Pending {
    previous: u32,
    atp: u32,
    cause: u8,
    seq: u64,
    at_ms: TimeMs,
    merged: u32,
}

/// The latest ATP per SKU x channel since the last drain, bounded by `max_pairs`.
#[derive(Debug)]
pub struct Coalescer {
    pending: HashMap<(SkuId, ChannelId), Pending>,
    max_pairs: usize,
    merged_total: u64,
}

impl Coalescer {
    /// An empty coalescer holding at most `max_pairs` SKU x channel pairs.
    pub fn new(max_pairs: usize) -> Self {
        Coalescer {
            pending: HashMap::new(),
            max_pairs,
            merged_total: 0,
        }
    }

    /// Whether it holds as many pairs as it may.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max_pairs
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Changes merged into an earlier one since the last call (for metrics).
    pub fn take_merged(&mut self) -> u64 {
        std::mem::take(&mut self.merged_total)
    }

    /// Records a change; the first `previous` and the latest `atp` are kept.
    pub fn add(&mut self, sku: &SkuId, c: &AtpChange, cause: u8, seq: u64, at_ms: TimeMs) {
        match self.pending.get_mut(&(sku.clone(), c.channel.clone())) {
            Some(p) => {
                p.atp = c.atp;
                p.cause = cause;
                p.seq = seq;
                p.at_ms = at_ms;
                p.merged += 1;
                self.merged_total += 1;
            }
            None => {
                self.pending.insert(
                    (sku.clone(), c.channel.clone()),
                    Pending {
                        previous: c.previous,
                        atp: c.atp,
                        cause,
                        seq,
                        at_ms,
                        merged: 0,
                    },
                );
            }
        }
    }

    /// Everything held, as wire items in sequence order; transitions are recomputed from the
    /// first previous and the latest value, so a round trip through zero shows none.
    /// Pairs whose value came back to where it started are dropped, and with
    /// `only_transitions` (a subscriber of thresholds only) so are those showing none.
    pub fn drain(&mut self, catalog: &Catalog, only_transitions: bool) -> Vec<PushItem> {
        let mut v: Vec<((SkuId, ChannelId), Pending)> = self.pending.drain().collect();
        v.retain(|(_, p)| p.atp != p.previous);
        if only_transitions {
            v.retain(|((sku, ch), p)| {
                transition_of(p.previous, p.atp, catalog.low_stock_of(sku, ch)) != transition::NONE
            });
        }
        v.sort_by_key(|(_, p)| p.seq);
        v.into_iter()
            .map(|((sku, ch), p)| {
                let t = transition_of(p.previous, p.atp, catalog.low_stock_of(&sku, &ch));
                PushItem::Atp(WireAtp {
                    seq: p.seq,
                    at_ms: p.at_ms,
                    sku: sku.to_string(),
                    channel: ch.to_string(),
                    previous: p.previous,
                    atp: p.atp,
                    cause: p.cause,
                    transition: t,
                    coalesced: p.merged > 0,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
