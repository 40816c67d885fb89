//! Events: the past-tense facts of a SKU's history. They are what the write-ahead log stores,
//! what subscribers receive and what `SkuState::apply` folds; replaying a SKU's events
//! rebuilds its state exactly. Quantities are fixed-width integers.

use serde::{Deserialize, Serialize};

use super::ids::{ChannelId, LocationId, RequestId, ReservationId, TimeMs};
use super::sku::AdjustReason;

/// Units of a hold taken from one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Where the units are held.
    pub location: LocationId,
    /// How many units.
    pub qty: u32,
}

/// Why a hold was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The client released it (cart abandoned, order cancelled).
    Client,
    /// Its expiry time passed.
    Expired,
    /// Another line of the same cart was rejected, so this line was undone.
    CartAborted,
    /// Recovery found a cart that was never acknowledged (crash mid-cart).
    Recovery,
}

/// Non-sellable and sellable states a unit can be in at a location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StockState {
    /// Sellable on hand.
    Sellable,
    /// Damaged, not sellable.
    Damaged,
    /// In quality control, not sellable yet.
    QualityControl,
}

/// Why a stockout projection cleared (`Event::StockoutCleared`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StockoutClearReason {
    /// The hours to zero rose above the threshold x 1.25: stock arrived, or demand slowed
    /// (decay alone: the re-projection task, docs/intelligence.md).
    Recovered,
    /// No demand left in the window: nothing projects a stockout.
    NoDemand,
    /// The channel's threshold was removed.
    ThresholdRemoved,
}

impl StockoutClearReason {
    /// Why a projection cleared, from the threshold now in force (0: removed) and the
    /// projected hours to zero (`None`: no demand).
    pub fn of(threshold_hours: u32, hours_to_zero: Option<f64>) -> Self {
        if threshold_hours == 0 {
            StockoutClearReason::ThresholdRemoved
        } else if hours_to_zero.is_none() {
            StockoutClearReason::NoDemand
        } else {
            StockoutClearReason::Recovered
        }
    }
}

/// Why a raised rebalance recommendation was withdrawn (`Event::RebalanceWithdrawn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RebalanceWithdrawReason {
    /// A `TRANSFER` with the recommendation's reference (`rebalance:<id>`) was applied.
    Applied,
    /// The short region is no longer short, or no region can give any more (hysteresis:
    /// docs/intelligence.md).
    Resolved,
}

/// A change to one SKU's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Units were held for a reservation.
    HoldPlaced {
        /// The reservation.
        reservation: ReservationId,
        /// Its channel.
        channel: ChannelId,
        /// When it expires.
        expires_at_ms: TimeMs,
        /// How many SKUs the whole cart spans (recovery uses it to find unfinished carts).
        cart_skus: u16,
        /// Where the units were taken from.
        allocations: Vec<Allocation>,
    },
    /// Held units were sold: on hand and reserved both drop.
    HoldFulfilled {
        /// The reservation.
        reservation: ReservationId,
        /// Units fulfilled per location.
        allocations: Vec<Allocation>,
        /// Whether the hold is gone afterwards (otherwise it stays, possibly at zero units,
        /// until the reservation is released, fulfilled whole or expires).
        closed: bool,
    },
    /// A hold was released: reserved drops, units are available again.
    HoldReleased {
        /// The reservation.
        reservation: ReservationId,
        /// Units returned per location.
        allocations: Vec<Allocation>,
        /// Why.
        reason: ReleaseReason,
    },
    /// A hold's expiry time changed.
    HoldExtended {
        /// The reservation.
        reservation: ReservationId,
        /// The new expiry.
        expires_at_ms: TimeMs,
    },
    /// Sellable on hand changed by a signed delta.
    StockAdjusted {
        /// Where.
        location: LocationId,
        /// Signed change.
        delta: i64,
        /// Why.
        reason: AdjustReason,
        /// Free reference (document id).
        reference: String,
    },
    /// Sellable on hand was set to an absolute value (cycle count, WMS sync).
    OnHandSet {
        /// Where.
        location: LocationId,
        /// Value before.
        previous: u32,
        /// Value after.
        on_hand: u32,
        /// Free reference.
        reference: String,
    },
    /// Units moved between sellable and non-sellable states at one location.
    StockMoved {
        /// Where.
        location: LocationId,
        /// From this state.
        from: StockState,
        /// To this state.
        to: StockState,
        /// How many.
        qty: u32,
    },
    /// Sellable units moved between locations.
    Transferred {
        /// From.
        from: LocationId,
        /// To.
        to: LocationId,
        /// How many.
        qty: u32,
        /// Free reference.
        reference: String,
    },
    /// Safety stock of a location changed.
    SafetyStockSet {
        /// Where.
        location: LocationId,
        /// New safety stock.
        qty: u32,
    },
    /// Expected receipts at a location changed.
    IncomingSet {
        /// Where.
        location: LocationId,
        /// Units expected.
        qty: u32,
        /// Expected arrival (0 = unknown).
        eta_ms: TimeMs,
    },
    /// The projected hours to zero of the SKU on a channel fell under the channel's
    /// threshold (the 1 h window, docs/intelligence.md). Emitted by `decide` after the
    /// request's own events, in the same record; `apply` raises the SKU's flag. Rates and
    /// hours are in thousandths (fixed point: events are compared exactly in replay).
    StockoutProjected {
        /// The channel.
        channel: ChannelId,
        /// Its threshold, hours.
        threshold_hours: u32,
        /// Hours to zero, thousandths.
        hours_milli: u64,
        /// Units held per hour, thousandths.
        per_hour_milli: u64,
        /// The channel's ATP after the request.
        atp: u32,
    },
    /// A raised stockout projection cleared; `apply` lowers the flag.
    StockoutCleared {
        /// The channel.
        channel: ChannelId,
        /// Its threshold, hours (0: removed).
        threshold_hours: u32,
        /// Hours to zero, thousandths (`None`: no demand).
        hours_milli: Option<u64>,
        /// Units held per hour, thousandths.
        per_hour_milli: u64,
        /// The channel's ATP.
        atp: u32,
        /// Why.
        reason: StockoutClearReason,
    },
    /// A rebalance recommendation was raised (docs/intelligence.md): appended by `decide`
    /// after the stockout projections when a plan appears; `apply` keeps it in
    /// `SkuState::rebalance` until a `RebalanceWithdrawn` with the same id.
    RebalanceRecommended {
        /// Stable id: the transfer's request id (`rebalance:<id>` its reference).
        id: RequestId,
        /// The SKU's `last_seq` before the record that raised it.
        basis_seq: u64,
        /// The region short of cover.
        to_region: String,
        /// The region giving.
        from_region: String,
        /// Donor location.
        from: LocationId,
        /// Receiving location.
        to: LocationId,
        /// Units recommended when raised (an apply re-reads the current quantity).
        qty: u32,
        /// Hours of cover of the short region when raised, thousandths.
        to_cover_milli: u64,
        /// Hours of cover of the donor region when raised, thousandths (`None`: no demand).
        from_cover_milli: Option<u64>,
    },
    /// The raised recommendation `id` was withdrawn; `apply` forgets it.
    RebalanceWithdrawn {
        /// Its id.
        id: RequestId,
        /// Its short region.
        to_region: String,
        /// Why.
        reason: RebalanceWithdrawReason,
    },
    /// The projected hours to zero of the SKU in a region (its locations' exposed ATP over
    /// their summed held rate) fell under the region's threshold: the smallest threshold of
    /// the channels selling from a location of the region. Like `StockoutProjected`.
    RegionStockoutProjected {
        /// The region code.
        region: String,
        /// Its threshold, hours.
        threshold_hours: u32,
        /// Hours to zero, thousandths.
        hours_milli: u64,
        /// Units held per hour in the region, thousandths.
        per_hour_milli: u64,
        /// The region's ATP after the request.
        atp: u32,
    },
    /// A raised region stockout projection cleared.
    RegionStockoutCleared {
        /// The region code.
        region: String,
        /// Its threshold, hours (0: none any more).
        threshold_hours: u32,
        /// Hours to zero, thousandths (`None`: no demand).
        hours_milli: Option<u64>,
        /// Units held per hour, thousandths.
        per_hour_milli: u64,
        /// The region's ATP.
        atp: u32,
        /// Why.
        reason: StockoutClearReason,
    },
}
