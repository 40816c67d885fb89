//! Reservation operations: a cart is all-or-nothing: every SKU's hold is placed
//! concurrently; if any is rejected, the ones placed are undone (released as
//! `CartAborted`) before the rejection is answered. A cart of several SKUs logs
//! `CartPlaced` after its holds; a fulfil, release, extend or expiry of several SKUs logs
//! `OpBegun` first, so recovery can tell a whole request from a cut one.
//!
//! What a concurrent reader can observe while a cart is in flight: a hold already placed on
//! one SKU of the cart is visible (it lowers that SKU's ATP) before the cart is decided; if the
//! cart is then rejected, that hold is released. ATP is therefore never over-promised, but
//! may briefly be under-stated by an in-flight cart.
//!
//! Operations on one reservation (fulfil, release, extend, expire) are serialised by the
//! index entry's `busy` flag: a concurrent second one answers `ReservationBusy` (16,
//! retriable), except while the expiry holds the entry: the reservation is past its expiry
//! and being released, so fulfil, release and extend answer `ReservationExpired` (15).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;

use crate::domain::limits::{MAX_HOLD_DURATION_MS, MAX_LINES_PER_RESERVATION, MAX_QTY};
use crate::domain::{
    Event, HoldLine, Rejection, ReleaseReason, ReservationId, SkuCommand, SkuId, SkuState, TimeMs,
};

use super::actor::SkuReply;
use super::api::{Failure, Outcome, ReserveRequest};
use super::coordinator::*;
use super::delivery::*;
use super::journal::{LogRecord, RecordBody};
use super::{Core, Counters, ResEntry};

/// How a fulfil request maps onto the reservation's SKUs.
pub(super) struct FulfilPlan {
    /// Per SKU: units, or `None` for everything still held.
    pub per_sku: Vec<(SkuId, Option<u32>)>,
    /// Units still held per SKU afterwards (when not closing).
    pub remaining: Vec<(SkuId, u32)>,
    /// The whole reservation ends.
    pub closes: bool,
}

/// The cart's lines grouped by SKU (limits checked), in the order holds are placed.
pub(super) fn group_lines(r: &ReserveRequest) -> Result<Vec<(SkuId, Vec<HoldLine>)>, Rejection> {
    crate::domain::cart::group_lines(&r.lines, r.ttl_ms, |l| (&l.sku, l.qty, &l.location))
}

/// Checks a reserve's reservation id and channel: its index entry, busy and not yet
/// committed, to enter with the frame's others (`ReservationIndex::begin_many`: a second
/// reservation with the same id is refused).
pub(super) fn new_reservation(
    catalog: &crate::domain::Catalog,
    r: &ReserveRequest,
    now: TimeMs,
) -> Result<ResEntry, Rejection> {
    if r.reservation == 0 {
        // 0 is what an unset id looks like in most clients: refused, like request id 0.
        return Err(Rejection::invalid("reservation id must be non-zero"));
    }
    catalog.channel(&r.channel)?;
    Ok(ResEntry {
        channel: r.channel.clone(),
        lines: Vec::new(),
        expires_at_ms: now.saturating_add(r.ttl_ms),
        busy: true,
        expiring: false,
        committed: false,
    })
}

/// The hold one SKU of the cart is asked to place.
pub(super) fn hold_command(
    r: &ReserveRequest,
    lines: Vec<HoldLine>,
    expires_at_ms: TimeMs,
    cart_skus: u16,
) -> SkuCommand {
    SkuCommand::Hold {
        reservation: r.reservation,
        channel: r.channel.clone(),
        lines,
        allow_split: r.allow_split,
        expires_at_ms,
        cart_skus,
    }
}

/// A frame's reserves whose holds are placed and durable, and whose expiries are queued
/// already: committed with their units per SKU, free for fulfil, release and extend from
/// now on.
pub(super) fn commit_reservations(core: &Core, placed: &mut [(ReservationId, Vec<(SkuId, u32)>)]) {
    let n = placed.len() as u64;
    core.reservations.commit_many(placed);
    core.counters
        .reservations_placed
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

pub(super) fn held_by(events: &[Event]) -> u32 {
    events
        .iter()
        .map(|e| match e {
            Event::HoldPlaced { allocations, .. } => allocations.iter().map(|a| a.qty).sum(),
            _ => 0,
        })
        .sum()
}

/// Releases a reservation's holds on `skus` (engine-initiated, request id 0), logging
/// failures: cart undo and recovery of carts a crash left half-placed.
pub(crate) async fn release_holds(
    core: &Arc<Core>,
    reservation: ReservationId,
    skus: &[SkuId],
    reason: ReleaseReason,
) {
    let now = core.clock.now_ms();
    let calls = skus.iter().map(|sku| {
        let cmd = SkuCommand::Release {
            reservation,
            reason,
        };
        let op = sku_op(cmd, (0, 0), core, now, Admit::Finish);
        async move {
            (
                sku.clone(),
                call(core, sku, op, false, Delivery::Wait).await,
            )
        }
    });
    for (sku, r) in join_all(calls).await {
        if !matches!(r, Ok(SkuReply::Done { .. })) {
            tracing::error!(%sku, reservation = %format!("{reservation:032x}"), "cart undo failed: {r:?}");
        }
    }
}

/// Who takes a reservation's index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// A client's fulfil, release or extend.
    Request,
    /// The expiry of a reservation past its expiry time.
    Expiry,
}

/// Marks a committed reservation busy and returns a copy of its entry. Taken already: the
/// expiry has it (`ReservationExpired`: it is past its expiry and being released), or a
/// request has it or it is still being placed (`ReservationBusy`, retriable).
pub(super) fn lock_reservation(
    core: &Core,
    id: ReservationId,
    by: Holder,
) -> Result<ResEntry, Rejection> {
    let mut e = core
        .reservations
        .get_mut(&id)
        .ok_or(Rejection::ReservationNotFound(id))?;
    if e.busy && e.expiring {
        return Err(Rejection::ReservationExpired(id));
    }
    if !e.committed || e.busy {
        return Err(Rejection::ReservationBusy(id));
    }
    e.busy = true;
    e.expiring = by == Holder::Expiry;
    Ok(e.clone())
}

pub(super) fn unlock_reservation(core: &Core, id: ReservationId, lines: Option<Vec<(SkuId, u32)>>) {
    if let Some(mut e) = core.reservations.get_mut(&id) {
        if let Some(l) = lines {
            e.lines = l;
        }
        e.busy = false;
        e.expiring = false;
    }
}

pub(super) fn end_reservation(core: &Core, id: ReservationId, entry: &ResEntry) {
    core.expiry.remove(entry.expires_at_ms, id);
    core.reservations.remove(&id);
}

/// Logs a record that changes no SKU (a group marker) and gives the feed its empty slot.
pub(super) fn log_marker(
    core: &Core,
    (request, fingerprint): (u128, u64),
    now: TimeMs,
    body: RecordBody,
    admit: Admit,
) -> Result<u64, Failure> {
    let rec = LogRecord {
        at_ms: now,
        request,
        fingerprint,
        body,
    };
    let seq = core.journal.append(&rec, admit == Admit::Finish)?;
    core.feed.push(seq, None);
    Ok(seq)
}

/// Sends one command per SKU of a reservation (waiting for mailbox room) and collects.
/// With several SKUs, `OpBegun` is logged first, so that recovery finishes the operation
/// on every SKU if a crash cuts it after some of them.
pub(super) async fn fan_out(
    core: &Arc<Core>,
    reservation: ReservationId,
    targets: Vec<(SkuId, SkuCommand)>,
    request: u128,
    fp: u64,
    now: TimeMs,
) -> (Done, Option<Failure>) {
    if targets.len() > 1 {
        let body = RecordBody::OpBegun {
            reservation,
            parts: targets.clone(),
        };
        // Nothing is done yet: back-pressure may refuse the operation here.
        if let Err(f) = log_marker(core, (request, fp), now, body, Admit::New) {
            return (Vec::new(), Some(f));
        }
    }
    let calls = targets.into_iter().map(|(sku, cmd)| {
        let op = sku_op(cmd, (request, fp), core, now, Admit::Finish);
        async move {
            let r = call(core, &sku, op, false, Delivery::Wait).await;
            (sku, r)
        }
    });
    collect(join_all(calls).await)
}

/// Per-SKU fulfil amounts, validated against what the reservation holds.
pub(super) fn fulfil_plan(
    entry: &ResEntry,
    lines: Option<Vec<(SkuId, u32)>>,
) -> Result<FulfilPlan, Rejection> {
    let Some(lines) = lines else {
        let all = entry.lines.iter().map(|(s, _)| (s.clone(), None)).collect();
        return Ok(FulfilPlan {
            per_sku: all,
            remaining: Vec::new(),
            closes: true,
        });
    };
    if lines.is_empty() || lines.len() > MAX_LINES_PER_RESERVATION {
        return Err(Rejection::invalid(format!(
            "fulfil 1..={MAX_LINES_PER_RESERVATION} lines, or the whole reservation"
        )));
    }
    let mut want: BTreeMap<SkuId, u64> = BTreeMap::new();
    for (sku, q) in lines {
        if q == 0 || q > MAX_QTY {
            return Err(Rejection::invalid(format!(
                "fulfil qty must be 1..={MAX_QTY}"
            )));
        }
        *want.entry(sku).or_default() += u64::from(q);
    }
    let mut remaining = entry.lines.clone();
    for (sku, q) in &want {
        let Some(r) = remaining.iter_mut().find(|(s, _)| s == sku) else {
            return Err(Rejection::invalid(format!(
                "sku {sku} is not in the reservation"
            )));
        };
        if *q > u64::from(r.1) {
            return Err(Rejection::ExceedsHold {
                sku: sku.clone(),
                held: r.1,
                requested: u32::try_from(*q).unwrap_or(u32::MAX),
            });
        }
        r.1 -= u32::try_from(*q).unwrap_or(u32::MAX);
    }
    if remaining.iter().all(|(_, q)| *q == 0) {
        // Everything left is being fulfilled: close the whole reservation.
        let all = entry.lines.iter().map(|(s, _)| (s.clone(), None)).collect();
        return Ok(FulfilPlan {
            per_sku: all,
            remaining: Vec::new(),
            closes: true,
        });
    }
    let per_sku = want
        .into_iter()
        .map(|(s, q)| (s, Some(u32::try_from(q).unwrap_or(u32::MAX))))
        .collect();
    Ok(FulfilPlan {
        per_sku,
        remaining,
        closes: false,
    })
}

pub(super) async fn fulfill(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    id: ReservationId,
    lines: Option<Vec<(SkuId, u32)>>,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let entry = lock_reservation(core, id, Holder::Request)?;
    if entry.expires_at_ms <= now {
        unlock_reservation(core, id, None);
        return Err(Rejection::ReservationExpired(id).into());
    }
    let FulfilPlan {
        per_sku: plan,
        remaining,
        closes: whole,
    } = match fulfil_plan(&entry, lines) {
        Ok(p) => p,
        Err(r) => {
            unlock_reservation(core, id, None);
            return Err(r.into());
        }
    };
    let targets = plan
        .into_iter()
        .map(|(sku, qty)| {
            (
                sku,
                SkuCommand::Fulfill {
                    reservation: id,
                    qty,
                },
            )
        })
        .collect();
    let (done, failure) = fan_out(core, id, targets, request, fp, now).await;
    let remaining = if whole { None } else { Some(remaining) };
    let r = finish_reservation_op(core, id, &entry, done, failure, remaining).await;
    if whole && r.is_ok() {
        Counters::bump(&core.counters.reservations_fulfilled);
    }
    r
}

/// Common tail of fulfil/release: report, then end or unlock the reservation.
/// `remaining: None` ends it; `Some(lines)` keeps it with those lines.
pub(super) async fn finish_reservation_op(
    core: &Arc<Core>,
    id: ReservationId,
    entry: &ResEntry,
    done: Done,
    failure: Option<Failure>,
    remaining: Option<Vec<(SkuId, u32)>>,
) -> Result<Outcome, Failure> {
    if let Some(f) = failure {
        // A SKU disagreed with the index (should not happen: ops on a reservation are
        // serialised). Keep the reservation so it can still be released or expire.
        tracing::error!(reservation = %format!("{id:032x}"), "reservation op partly failed: {f}");
        unlock_reservation(core, id, None);
        if !done.is_empty() {
            committed(core, done, 0).await?;
        }
        return Err(f);
    }
    match remaining {
        None => end_reservation(core, id, entry),
        Some(lines) => unlock_reservation(core, id, Some(lines)),
    }
    committed(core, done, 0).await
}

/// The same command for every SKU the reservation holds (release, extend, expire).
pub(super) fn every_sku(entry: &ResEntry, cmd: SkuCommand) -> Vec<(SkuId, SkuCommand)> {
    entry
        .lines
        .iter()
        .map(|(sku, _)| (sku.clone(), cmd.clone()))
        .collect()
}

pub(super) async fn release(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    id: ReservationId,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let entry = lock_reservation(core, id, Holder::Request)?;
    let targets = every_sku(
        &entry,
        SkuCommand::Release {
            reservation: id,
            reason: ReleaseReason::Client,
        },
    );
    let (done, failure) = fan_out(core, id, targets, request, fp, now).await;
    let r = finish_reservation_op(core, id, &entry, done, failure, None).await;
    if r.is_ok() {
        Counters::bump(&core.counters.reservations_released);
    }
    r
}

pub(super) async fn extend(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    id: ReservationId,
    ttl_ms: u64,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    check_extend_ttl(ttl_ms)?;
    let entry = lock_reservation(core, id, Holder::Request)?;
    if entry.expires_at_ms <= now {
        unlock_reservation(core, id, None);
        return Err(Rejection::ReservationExpired(id).into());
    }
    let new_expiry = now.saturating_add(ttl_ms);
    let targets = every_sku(
        &entry,
        SkuCommand::Extend {
            reservation: id,
            expires_at_ms: new_expiry,
        },
    );
    let (done, failure) = fan_out(core, id, targets, request, fp, now).await;
    if failure.is_none() {
        core.expiry.remove(entry.expires_at_ms, id);
        if let Some(mut e) = core.reservations.get_mut(&id) {
            e.expires_at_ms = new_expiry;
        }
        core.expiry.insert(new_expiry, id);
    }
    finish_reservation_op(core, id, &entry, done, failure, Some(entry.lines.clone())).await
}

/// An extension's new hold duration must be 1..=`MAX_HOLD_DURATION_MS`.
pub(super) fn check_extend_ttl(ttl_ms: u64) -> Result<(), Rejection> {
    if ttl_ms == 0 || ttl_ms > MAX_HOLD_DURATION_MS {
        return Err(Rejection::invalid(format!(
            "ttl_ms must be 1..={MAX_HOLD_DURATION_MS}"
        )));
    }
    Ok(())
}

/// Rebuilds the reservation index and expiry queue from recovered SKU holds.
pub(crate) fn index_holds(core: &Core, skus: &[SkuState]) {
    for s in skus {
        for (id, h) in &s.holds {
            let make = || ResEntry {
                channel: h.channel.clone(),
                lines: Vec::new(),
                expires_at_ms: h.expires_at_ms,
                busy: false,
                expiring: false,
                committed: true,
            };
            core.reservations
                .upsert(*id, make, |e| e.lines.push((s.sku.clone(), h.held())));
        }
    }
    core.reservations
        .for_each(|id, e| core.expiry.insert(e.expires_at_ms, id));
}
