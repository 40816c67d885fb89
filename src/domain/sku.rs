//! The SKU state machine: per-location buckets and the holds of active reservations.
//!
//! `decide(&self, cmd, catalog, now_ms)` validates a command against the current state and
//! returns the events it causes, or a [`Rejection`]; it never mutates. `apply(&mut self,
//! event, seq)` folds one event in and cannot fail. The live path (actor), recovery (log
//! replay) and tests all go through this one `apply`.
//!
//! ATP(location) = on_hand - reserved - safety_stock (may be negative when oversold);
//! ATP(channel) = min(cap, sum over the channel's locations of max(0, ATP(location)) - buffer),
//! never below 0. A reservation never takes a bucket's ATP below zero; an adjustment may
//! (stock really was lost), which leaves the SKU flagged oversold until stock returns.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Channel};
use super::event::{Allocation, Event, ReleaseReason, StockState};
use super::ids::{ChannelId, LocationId, ReservationId, SkuId, TimeMs};
use super::limits::{
    MAX_BUCKETS_PER_SKU, MAX_HOLDS_PER_SKU, MAX_HOLD_DURATION_MS, MAX_LINES_PER_RESERVATION,
    MAX_QTY, MAX_REFERENCE_BYTES,
};
use super::rejection::Rejection;

/// Why sellable stock was adjusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdjustReason {
    /// Goods received.
    Receipt,
    /// Loss, theft.
    Shrinkage,
    /// Written off as damaged.
    Damage,
    /// A customer return put back on sale.
    ReturnToStock,
    /// A correction of an earlier mistake.
    Correction,
}

/// Stock of one SKU at one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The location.
    pub location: LocationId,
    /// Sellable units physically there.
    pub on_hand: u32,
    /// Units held by active reservations (equals the sum of the holds' allocations here).
    pub reserved: u32,
    /// Units never promised (display stock, shrinkage margin).
    pub safety_stock: u32,
    /// Damaged units (not sellable).
    pub damaged: u32,
    /// Units in quality control (not sellable yet).
    pub quality_control: u32,
    /// Units expected to arrive.
    pub incoming: u32,
    /// When they are expected (0 = unknown).
    pub incoming_eta_ms: TimeMs,
}

impl Bucket {
    fn new(location: LocationId) -> Self {
        Bucket {
            location,
            on_hand: 0,
            reserved: 0,
            safety_stock: 0,
            damaged: 0,
            quality_control: 0,
            incoming: 0,
            incoming_eta_ms: 0,
        }
    }

    /// Raw ATP, negative when the bucket is oversold or under its safety stock.
    pub fn atp(&self) -> i64 {
        i64::from(self.on_hand) - i64::from(self.reserved) - i64::from(self.safety_stock)
    }

    /// ATP as exposed: never below zero.
    pub fn atp_exposed(&self) -> u32 {
        u32::try_from(self.atp().max(0)).unwrap_or(MAX_QTY)
    }

    /// More is held than is on hand.
    pub fn oversold(&self) -> bool {
        self.reserved > self.on_hand
    }

    fn state_qty(&mut self, s: StockState) -> &mut u32 {
        match s {
            StockState::Sellable => &mut self.on_hand,
            StockState::Damaged => &mut self.damaged,
            StockState::QualityControl => &mut self.quality_control,
        }
    }
}

/// The part of a reservation that lives on one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The reservation's channel.
    pub channel: ChannelId,
    /// When it expires.
    pub expires_at_ms: TimeMs,
    /// How many SKUs the whole cart spans.
    pub cart_skus: u16,
    /// Units still held, per location, in sourcing order.
    pub allocations: Vec<Allocation>,
}

impl Hold {
    /// Units still held.
    pub fn held(&self) -> u32 {
        self.allocations.iter().map(|a| a.qty).sum()
    }
}

/// One line of a hold request for this SKU (a cart's lines are grouped by SKU first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLine {
    /// Index of the line in the client's request, for rejections.
    pub line: u16,
    /// Units.
    pub qty: u32,
    /// A location to take them from, or `None` to source by channel priority.
    pub location: Option<LocationId>,
}

/// Commands to one SKU (imperative).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkuCommand {
    /// Hold units for a reservation.
    Hold {
        /// The reservation.
        reservation: ReservationId,
        /// Its channel.
        channel: ChannelId,
        /// This SKU's lines of the cart.
        lines: Vec<HoldLine>,
        /// Whether one line may be sourced from several locations.
        allow_split: bool,
        /// Expiry time.
        expires_at_ms: TimeMs,
        /// SKUs in the whole cart.
        cart_skus: u16,
    },
    /// Sell held units: `qty` of them, or everything still held (`None`, closes the hold).
    Fulfill {
        /// The reservation.
        reservation: ReservationId,
        /// Units, or all.
        qty: Option<u32>,
    },
    /// Give held units back.
    Release {
        /// The reservation.
        reservation: ReservationId,
        /// Why.
        reason: ReleaseReason,
    },
    /// Move a hold's expiry.
    Extend {
        /// The reservation.
        reservation: ReservationId,
        /// New expiry.
        expires_at_ms: TimeMs,
    },
    /// Release a hold whose expiry time has passed (engine-driven).
    Expire {
        /// The reservation.
        reservation: ReservationId,
    },
    /// Change sellable on hand by a signed delta.
    Adjust {
        /// Where.
        location: LocationId,
        /// Signed change, non-zero.
        delta: i64,
        /// Why.
        reason: AdjustReason,
        /// Free reference.
        reference: String,
    },
    /// Set sellable on hand, optionally only if it currently equals `expected`.
    SetOnHand {
        /// Where.
        location: LocationId,
        /// New value.
        on_hand: u32,
        /// Compare-and-set guard.
        expected: Option<u32>,
        /// Free reference.
        reference: String,
    },
    /// Move units between stock states at one location.
    Move {
        /// Where.
        location: LocationId,
        /// From.
        from: StockState,
        /// To.
        to: StockState,
        /// How many.
        qty: u32,
    },
    /// Move unreserved sellable units between locations.
    Transfer {
        /// From.
        from: LocationId,
        /// To.
        to: LocationId,
        /// How many.
        qty: u32,
        /// Free reference.
        reference: String,
    },
    /// Set safety stock at a location.
    SetSafetyStock {
        /// Where.
        location: LocationId,
        /// Units.
        qty: u32,
    },
    /// Set expected receipts at a location.
    SetIncoming {
        /// Where.
        location: LocationId,
        /// Units.
        qty: u32,
        /// Expected arrival (0 = unknown).
        eta_ms: TimeMs,
    },
}

/// One SKU's authoritative state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuState {
    /// The SKU.
    pub sku: SkuId,
    /// Buckets sorted by location id.
    pub buckets: Vec<Bucket>,
    /// Active holds by reservation id.
    pub holds: HashMap<ReservationId, Hold, RandomState>,
    /// Log sequence number of the last applied event (0 = none); makes replay idempotent.
    pub last_seq: u64,
}

/// A read-only picture of one SKU, as answered to `get`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuView {
    /// The SKU.
    pub sku: SkuId,
    /// Buckets (with their ATP computable by the reader: on_hand - reserved - safety).
    pub buckets: Vec<Bucket>,
    /// ATP per channel of the catalog, never below 0.
    pub channels: Vec<(ChannelId, u32)>,
    /// Some bucket holds more than it has on hand.
    pub oversold: bool,
    /// Active holds.
    pub holds: u32,
    /// Log sequence number of the last change.
    pub last_seq: u64,
}

fn check_qty(qty: u32, what: &str) -> Result<(), Rejection> {
    if qty == 0 || qty > MAX_QTY {
        return Err(Rejection::invalid(format!("{what} must be 1..={MAX_QTY}")));
    }
    Ok(())
}

fn check_reference(r: &str) -> Result<(), Rejection> {
    if r.len() > MAX_REFERENCE_BYTES || r.chars().any(|c| c.is_control()) {
        return Err(Rejection::invalid(format!(
            "reference must be at most {MAX_REFERENCE_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn out_of_range(what: String, have: u32, change: i64) -> Rejection {
    Rejection::QuantityOutOfRange {
        what,
        have,
        change,
        max: MAX_QTY,
    }
}

/// `base + delta` if it stays within `0..=MAX_QTY`.
fn add_in_range(base: u32, delta: i64) -> Option<u32> {
    let v = i64::from(base).checked_add(delta)?;
    if (0..=i64::from(MAX_QTY)).contains(&v) {
        u32::try_from(v).ok()
    } else {
        None
    }
}

impl SkuState {
    /// An empty SKU (no buckets, no holds).
    pub fn new(sku: SkuId) -> Self {
        SkuState {
            sku,
            buckets: Vec::new(),
            holds: HashMap::default(),
            last_seq: 0,
        }
    }

    /// The bucket at `loc`, if any.
    pub fn bucket(&self, loc: &LocationId) -> Option<&Bucket> {
        // Linear: a SKU has few buckets and interned ids compare by pointer first.
        self.buckets.iter().find(|b| b.location == *loc)
    }

    fn bucket_mut(&mut self, loc: &LocationId) -> &mut Bucket {
        match self.buckets.binary_search_by(|b| b.location.cmp(loc)) {
            Ok(i) => &mut self.buckets[i],
            Err(i) => {
                self.buckets.insert(i, Bucket::new(loc.clone()));
                &mut self.buckets[i]
            }
        }
    }

    /// Exposed ATP of a location (0 if no bucket).
    pub fn location_atp(&self, loc: &LocationId) -> u32 {
        self.bucket(loc).map_or(0, Bucket::atp_exposed)
    }

    /// ATP of a channel: sum of its locations' exposed ATP, minus its buffer, capped, >= 0.
    pub fn channel_atp(&self, ch: &Channel) -> u32 {
        let sum: u64 = ch
            .locations
            .iter()
            .map(|l| u64::from(self.location_atp(l)))
            .sum();
        let after_buffer = sum.saturating_sub(u64::from(ch.buffer));
        let capped = ch
            .cap
            .map_or(after_buffer, |c| after_buffer.min(u64::from(c)));
        u32::try_from(capped).unwrap_or(u32::MAX)
    }

    /// Whether any bucket holds more than it has on hand.
    pub fn oversold(&self) -> bool {
        self.buckets.iter().any(Bucket::oversold)
    }

    /// Total units on hand (sellable) across locations.
    pub fn on_hand_total(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(b.on_hand)).sum()
    }

    /// Total units reserved across locations.
    pub fn reserved_total(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(b.reserved)).sum()
    }

    /// A read-only view with ATP for every channel in `catalog`.
    pub fn view(&self, catalog: &Catalog) -> SkuView {
        SkuView {
            sku: self.sku.clone(),
            buckets: self.buckets.clone(),
            channels: catalog
                .channels
                .values()
                .map(|c| (c.id.clone(), self.channel_atp(c)))
                .collect(),
            oversold: self.oversold(),
            holds: u32::try_from(self.holds.len()).unwrap_or(u32::MAX),
            last_seq: self.last_seq,
        }
    }

    /// Validates `cmd` at time `now_ms` and returns the events it causes.
    pub fn decide(
        &self,
        cmd: &SkuCommand,
        catalog: &Catalog,
        now_ms: TimeMs,
    ) -> Result<Vec<Event>, Rejection> {
        match cmd {
            SkuCommand::Hold {
                reservation,
                channel,
                lines,
                allow_split,
                expires_at_ms,
                cart_skus,
            } => {
                let ch = catalog.channel(channel)?;
                self.check_new_hold(*reservation, lines, *expires_at_ms, now_ms)?;
                let allocations = self.source(ch, lines, *allow_split)?;
                Ok(vec![Event::HoldPlaced {
                    reservation: *reservation,
                    channel: channel.clone(),
                    expires_at_ms: *expires_at_ms,
                    cart_skus: (*cart_skus).max(1),
                    allocations,
                }])
            }
            SkuCommand::Fulfill { reservation, qty } => {
                self.decide_fulfill(*reservation, *qty, now_ms)
            }
            SkuCommand::Release {
                reservation,
                reason,
            } => {
                let hold = self.hold(*reservation)?;
                Ok(vec![Event::HoldReleased {
                    reservation: *reservation,
                    allocations: hold.allocations.clone(),
                    reason: *reason,
                }])
            }
            SkuCommand::Extend {
                reservation,
                expires_at_ms,
            } => {
                let hold = self.hold(*reservation)?;
                if hold.expires_at_ms <= now_ms {
                    return Err(Rejection::ReservationExpired(*reservation));
                }
                check_expiry(*expires_at_ms, now_ms)?;
                Ok(vec![Event::HoldExtended {
                    reservation: *reservation,
                    expires_at_ms: *expires_at_ms,
                }])
            }
            SkuCommand::Expire { reservation } => {
                let hold = self.hold(*reservation)?;
                if hold.expires_at_ms > now_ms {
                    return Err(Rejection::NotExpired(*reservation));
                }
                Ok(vec![Event::HoldReleased {
                    reservation: *reservation,
                    allocations: hold.allocations.clone(),
                    reason: ReleaseReason::Expired,
                }])
            }
            other => self.decide_stock(other, catalog),
        }
    }

    fn hold(&self, reservation: ReservationId) -> Result<&Hold, Rejection> {
        self.holds
            .get(&reservation)
            .ok_or(Rejection::ReservationNotFound(reservation))
    }

    fn check_new_hold(
        &self,
        reservation: ReservationId,
        lines: &[HoldLine],
        expires_at_ms: TimeMs,
        now_ms: TimeMs,
    ) -> Result<(), Rejection> {
        if lines.is_empty() || lines.len() > MAX_LINES_PER_RESERVATION {
            return Err(Rejection::invalid(format!(
                "a reservation has 1..={MAX_LINES_PER_RESERVATION} lines"
            )));
        }
        for l in lines {
            check_qty(l.qty, "line quantity")?;
        }
        check_expiry(expires_at_ms, now_ms)?;
        if self.holds.contains_key(&reservation) {
            return Err(Rejection::ReservationExists(reservation));
        }
        if self.holds.len() >= MAX_HOLDS_PER_SKU {
            return Err(Rejection::invalid(format!(
                "sku {} already has {MAX_HOLDS_PER_SKU} active holds",
                self.sku
            )));
        }
        Ok(())
    }

    /// Chooses locations for this SKU's lines of a reservation, or rejects.
    fn source(
        &self,
        ch: &Channel,
        lines: &[HoldLine],
        allow_split: bool,
    ) -> Result<Vec<Allocation>, Rejection> {
        let total: u64 = lines.iter().map(|l| u64::from(l.qty)).sum();
        let first_line = lines.first().map_or(0, |l| l.line);
        let channel_atp = self.channel_atp(ch);
        if total > u64::from(channel_atp) {
            return Err(self.insufficient(first_line, total, channel_atp));
        }
        // Working copy of what each of the channel's locations can still give.
        let mut avail: Vec<u32> = ch.locations.iter().map(|l| self.location_atp(l)).collect();
        let mut taken: Vec<u32> = vec![0; ch.locations.len()];
        for l in lines.iter() {
            let Some(loc) = &l.location else { continue };
            let i = ch
                .priority_of(loc)
                .ok_or_else(|| Rejection::LocationNotInChannel {
                    location: loc.clone(),
                    channel: ch.id.clone(),
                })?;
            if avail[i] < l.qty {
                let asked = u64::from(taken[i]) + u64::from(l.qty);
                return Err(self.insufficient(l.line, asked, avail[i] + taken[i]));
            }
            avail[i] -= l.qty;
            taken[i] += l.qty;
        }
        let unplaced: Vec<&HoldLine> = lines.iter().filter(|l| l.location.is_none()).collect();
        let mut rest: u32 = unplaced.iter().map(|l| l.qty).sum();
        if let Some(first) = unplaced.first() {
            if allow_split {
                for i in 0..avail.len() {
                    let t = avail[i].min(rest);
                    avail[i] -= t;
                    taken[i] += t;
                    rest -= t;
                }
                if rest > 0 {
                    let left: u32 = avail.iter().sum();
                    return Err(self.insufficient(first.line, u64::from(rest), left));
                }
            } else {
                let Some(i) = avail.iter().position(|a| *a >= rest) else {
                    let best = avail.iter().copied().max().unwrap_or(0);
                    return Err(self.insufficient(first.line, u64::from(rest), best));
                };
                avail[i] -= rest;
                taken[i] += rest;
            }
        }
        Ok(ch
            .locations
            .iter()
            .zip(taken)
            .filter(|(_, q)| *q > 0)
            .map(|(l, qty)| Allocation {
                location: l.clone(),
                qty,
            })
            .collect())
    }

    fn insufficient(&self, line: u16, requested: u64, available: u32) -> Rejection {
        Rejection::InsufficientStock {
            line,
            sku: self.sku.clone(),
            requested: u32::try_from(requested).unwrap_or(u32::MAX),
            available,
        }
    }

    fn decide_fulfill(
        &self,
        reservation: ReservationId,
        qty: Option<u32>,
        now_ms: TimeMs,
    ) -> Result<Vec<Event>, Rejection> {
        let hold = self.hold(reservation)?;
        if hold.expires_at_ms <= now_ms {
            return Err(Rejection::ReservationExpired(reservation));
        }
        let held = hold.held();
        let want = match qty {
            None => held,
            Some(q) => {
                check_qty(q, "fulfil quantity")?;
                if q > held {
                    return Err(Rejection::ExceedsHold {
                        sku: self.sku.clone(),
                        held,
                        requested: q,
                    });
                }
                q
            }
        };
        let mut rest = want;
        let mut allocations = Vec::new();
        for a in &hold.allocations {
            let t = a.qty.min(rest);
            if t > 0 {
                allocations.push(Allocation {
                    location: a.location.clone(),
                    qty: t,
                });
                rest -= t;
            }
        }
        // A single-SKU hold closes when emptied; a cart's line stays (at zero) until the
        // whole reservation ends, so recovery can still see every line of the cart.
        let closed = qty.is_none() || (want == held && hold.cart_skus <= 1);
        Ok(vec![Event::HoldFulfilled {
            reservation,
            allocations,
            closed,
        }])
    }

    fn known_bucket_room(&self, loc: &LocationId, catalog: &Catalog) -> Result<(), Rejection> {
        catalog.require_location(loc)?;
        if self.bucket(loc).is_none() && self.buckets.len() >= MAX_BUCKETS_PER_SKU {
            return Err(Rejection::invalid(format!(
                "sku {} already has {MAX_BUCKETS_PER_SKU} locations",
                self.sku
            )));
        }
        Ok(())
    }

    fn decide_stock(&self, cmd: &SkuCommand, catalog: &Catalog) -> Result<Vec<Event>, Rejection> {
        let ev = match cmd {
            SkuCommand::Adjust {
                location,
                delta,
                reason,
                reference,
            } => {
                self.known_bucket_room(location, catalog)?;
                check_reference(reference)?;
                let have = self.bucket(location).map_or(0, |b| b.on_hand);
                if *delta == 0 || add_in_range(have, *delta).is_none() {
                    return Err(out_of_range(format!("on_hand at {location}"), have, *delta));
                }
                Event::StockAdjusted {
                    location: location.clone(),
                    delta: *delta,
                    reason: *reason,
                    reference: reference.clone(),
                }
            }
            SkuCommand::SetOnHand {
                location,
                on_hand,
                expected,
                reference,
            } => {
                self.known_bucket_room(location, catalog)?;
                check_reference(reference)?;
                let previous = self.bucket(location).map_or(0, |b| b.on_hand);
                if let Some(e) = expected {
                    if *e != previous {
                        return Err(Rejection::CompareFailed {
                            expected: *e,
                            actual: previous,
                        });
                    }
                }
                if *on_hand > MAX_QTY {
                    return Err(Rejection::invalid(format!("on_hand must be <= {MAX_QTY}")));
                }
                Event::OnHandSet {
                    location: location.clone(),
                    previous,
                    on_hand: *on_hand,
                    reference: reference.clone(),
                }
            }
            SkuCommand::Move {
                location,
                from,
                to,
                qty,
            } => self.decide_move(location, *from, *to, *qty, catalog)?,
            SkuCommand::Transfer {
                from,
                to,
                qty,
                reference,
            } => self.decide_transfer(from, to, *qty, reference, catalog)?,
            SkuCommand::SetSafetyStock { location, qty } => {
                self.known_bucket_room(location, catalog)?;
                if *qty > MAX_QTY {
                    return Err(Rejection::invalid(format!("safety stock <= {MAX_QTY}")));
                }
                Event::SafetyStockSet {
                    location: location.clone(),
                    qty: *qty,
                }
            }
            SkuCommand::SetIncoming {
                location,
                qty,
                eta_ms,
            } => {
                self.known_bucket_room(location, catalog)?;
                if *qty > MAX_QTY {
                    return Err(Rejection::invalid(format!("incoming <= {MAX_QTY}")));
                }
                Event::IncomingSet {
                    location: location.clone(),
                    qty: *qty,
                    eta_ms: *eta_ms,
                }
            }
            SkuCommand::Hold { .. }
            | SkuCommand::Fulfill { .. }
            | SkuCommand::Release { .. }
            | SkuCommand::Extend { .. }
            | SkuCommand::Expire { .. } => {
                return Err(Rejection::invalid("not a stock command"));
            }
        };
        Ok(vec![ev])
    }

    fn decide_move(
        &self,
        location: &LocationId,
        from: StockState,
        to: StockState,
        qty: u32,
        catalog: &Catalog,
    ) -> Result<Event, Rejection> {
        self.known_bucket_room(location, catalog)?;
        check_qty(qty, "move quantity")?;
        if from == to {
            return Err(Rejection::invalid("move needs two different stock states"));
        }
        let mut b = self
            .bucket(location)
            .cloned()
            .unwrap_or_else(|| Bucket::new(location.clone()));
        let have = *b.state_qty(from);
        if have < qty {
            return Err(out_of_range(
                format!("{from:?} at {location}"),
                have,
                -i64::from(qty),
            ));
        }
        let target = *b.state_qty(to);
        if add_in_range(target, i64::from(qty)).is_none() {
            return Err(out_of_range(
                format!("{to:?} at {location}"),
                target,
                i64::from(qty),
            ));
        }
        Ok(Event::StockMoved {
            location: location.clone(),
            from,
            to,
            qty,
        })
    }

    fn decide_transfer(
        &self,
        from: &LocationId,
        to: &LocationId,
        qty: u32,
        reference: &str,
        catalog: &Catalog,
    ) -> Result<Event, Rejection> {
        self.known_bucket_room(from, catalog)?;
        self.known_bucket_room(to, catalog)?;
        check_qty(qty, "transfer quantity")?;
        check_reference(reference)?;
        if from == to {
            return Err(Rejection::invalid("transfer needs two different locations"));
        }
        let src = self.bucket(from);
        // Held units stay where they are: only unreserved sellable units can move.
        let free = src.map_or(0, |b| b.on_hand.saturating_sub(b.reserved));
        if free < qty {
            return Err(out_of_range(
                format!("unreserved on_hand at {from}"),
                free,
                -i64::from(qty),
            ));
        }
        let dst = self.bucket(to).map_or(0, |b| b.on_hand);
        if add_in_range(dst, i64::from(qty)).is_none() {
            return Err(out_of_range(
                format!("on_hand at {to}"),
                dst,
                i64::from(qty),
            ));
        }
        Ok(Event::Transferred {
            from: from.clone(),
            to: to.clone(),
            qty,
            reference: reference.to_string(),
        })
    }

    /// Folds one event in. Cannot fail: `decide` validated it before it was logged, and the
    /// arithmetic saturates rather than panics so a bug can never crash an actor thread
    /// (tests check the invariants after every step instead).
    pub fn apply(&mut self, ev: &Event, seq: u64) {
        match ev {
            Event::HoldPlaced {
                reservation,
                channel,
                expires_at_ms,
                cart_skus,
                allocations,
            } => {
                for a in allocations {
                    let b = self.bucket_mut(&a.location);
                    b.reserved = b.reserved.saturating_add(a.qty);
                }
                self.holds.insert(
                    *reservation,
                    Hold {
                        channel: channel.clone(),
                        expires_at_ms: *expires_at_ms,
                        cart_skus: *cart_skus,
                        allocations: allocations.clone(),
                    },
                );
            }
            Event::HoldFulfilled {
                reservation,
                allocations,
                closed,
            } => self.apply_fulfilled(*reservation, allocations, *closed),
            Event::HoldReleased {
                reservation,
                allocations,
                ..
            } => {
                for a in allocations {
                    let b = self.bucket_mut(&a.location);
                    b.reserved = b.reserved.saturating_sub(a.qty);
                }
                self.holds.remove(reservation);
            }
            Event::HoldExtended {
                reservation,
                expires_at_ms,
            } => {
                if let Some(h) = self.holds.get_mut(reservation) {
                    h.expires_at_ms = *expires_at_ms;
                }
            }
            other => self.apply_stock(other),
        }
        self.last_seq = self.last_seq.max(seq);
    }

    fn apply_fulfilled(&mut self, reservation: ReservationId, allocs: &[Allocation], closed: bool) {
        for a in allocs {
            let b = self.bucket_mut(&a.location);
            b.reserved = b.reserved.saturating_sub(a.qty);
            b.on_hand = b.on_hand.saturating_sub(a.qty);
        }
        if closed {
            self.holds.remove(&reservation);
        } else if let Some(h) = self.holds.get_mut(&reservation) {
            for a in allocs {
                if let Some(x) = h.allocations.iter_mut().find(|x| x.location == a.location) {
                    x.qty = x.qty.saturating_sub(a.qty);
                }
            }
        }
    }

    fn apply_stock(&mut self, ev: &Event) {
        match ev {
            Event::StockAdjusted {
                location, delta, ..
            } => {
                let b = self.bucket_mut(location);
                b.on_hand = add_in_range(b.on_hand, *delta).unwrap_or(b.on_hand);
            }
            Event::OnHandSet {
                location, on_hand, ..
            } => self.bucket_mut(location).on_hand = *on_hand,
            Event::StockMoved {
                location,
                from,
                to,
                qty,
            } => {
                let b = self.bucket_mut(location);
                let f = b.state_qty(*from);
                *f = f.saturating_sub(*qty);
                let t = b.state_qty(*to);
                *t = t.saturating_add(*qty);
            }
            Event::Transferred { from, to, qty, .. } => {
                let f = self.bucket_mut(from);
                f.on_hand = f.on_hand.saturating_sub(*qty);
                let t = self.bucket_mut(to);
                t.on_hand = t.on_hand.saturating_add(*qty);
            }
            Event::SafetyStockSet { location, qty } => {
                self.bucket_mut(location).safety_stock = *qty;
            }
            Event::IncomingSet {
                location,
                qty,
                eta_ms,
            } => {
                let b = self.bucket_mut(location);
                b.incoming = *qty;
                b.incoming_eta_ms = *eta_ms;
            }
            Event::HoldPlaced { .. }
            | Event::HoldFulfilled { .. }
            | Event::HoldReleased { .. }
            | Event::HoldExtended { .. } => {}
        }
    }

    /// Checks the state's invariants: every bucket's `reserved` equals the sum of the holds'
    /// allocations there, quantities are within limits, buckets are sorted and unique.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held: HashMap<&LocationId, u64> = HashMap::new();
        for h in self.holds.values() {
            for a in &h.allocations {
                *held.entry(&a.location).or_default() += u64::from(a.qty);
            }
        }
        for w in self.buckets.windows(2) {
            if w[0].location >= w[1].location {
                return Err(format!("{}: buckets not sorted/unique", self.sku));
            }
        }
        for b in &self.buckets {
            let h = held.remove(&b.location).unwrap_or(0);
            if u64::from(b.reserved) != h {
                return Err(format!(
                    "{} at {}: reserved {} but holds sum to {h}",
                    self.sku, b.location, b.reserved
                ));
            }
            if b.on_hand > MAX_QTY || b.damaged > MAX_QTY || b.quality_control > MAX_QTY {
                return Err(format!(
                    "{} at {}: quantity over limit",
                    self.sku, b.location
                ));
            }
        }
        if let Some((loc, _)) = held.into_iter().find(|(_, q)| *q > 0) {
            return Err(format!("{}: holds at {loc} without a bucket", self.sku));
        }
        Ok(())
    }
}

fn check_expiry(expires_at_ms: TimeMs, now_ms: TimeMs) -> Result<(), Rejection> {
    if expires_at_ms <= now_ms || expires_at_ms - now_ms > MAX_HOLD_DURATION_MS {
        return Err(Rejection::invalid(format!(
            "expiry must be in the future and at most {MAX_HOLD_DURATION_MS} ms ahead"
        )));
    }
    Ok(())
}
