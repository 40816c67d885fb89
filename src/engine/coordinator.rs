//! The coordinator: turns an engine [`Request`] into messages to SKU actors and collects
//! their answers. A cart is all-or-nothing: every SKU's hold is placed concurrently; if any
//! is rejected, the ones placed are undone (released as `CartAborted`) before the rejection
//! is answered. A request is acknowledged only once its highest log sequence is durable.
//!
//! What a concurrent reader can observe while a cart is in flight: a hold already placed on
//! one SKU of the cart is visible (it lowers that SKU's ATP) before the cart is decided; if the
//! cart is then rejected, that hold is released. ATP is therefore never over-promised, but
//! may briefly be under-stated by an in-flight cart.
//!
//! Operations on one reservation (fulfil, release, extend, expire) are serialised by the
//! index entry's `busy` flag: a concurrent second one answers `InProgress` (retriable).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::oneshot;
use xxhash_rust::xxh3::xxh3_64;

use crate::codec;
use crate::domain::limits::{MAX_HOLD_DURATION_MS, MAX_LINES_PER_RESERVATION, MAX_QTY};
use crate::domain::{
    Event, HoldLine, Rejection, ReleaseReason, ReservationId, SkuCommand, SkuId, SkuState, SkuView,
    TimeMs,
};

use super::actor::{SkuMsg, SkuOp, SkuReply};
use super::api::{Change, Command, Failure, Outcome, Request, ReserveRequest};
use super::idempotency::Begin;
use super::journal::{LogRecord, RecordBody};
use super::{Core, Counters, EngineError, ResEntry};

/// How to deliver to a SKU whose mailbox is full.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Refuse with `Busy` (new work: reserves, stock changes, reads).
    Try,
    /// Wait for room (work that must finish: fulfil, release, extend, expire, undo).
    Wait,
}

/// What `try_send` did with an op.
enum Sent {
    Queued,
    Full,
    /// The actor had stopped (passivated): the op comes back to be re-sent.
    Closed(SkuOp),
}

/// Changes committed by SKU actors: (sku, seq, events).
type Done = Vec<(SkuId, u64, Vec<Event>)>;

/// How a fulfil request maps onto the reservation's SKUs.
struct FulfilPlan {
    /// Per SKU: units, or `None` for everything still held.
    per_sku: Vec<(SkuId, Option<u32>)>,
    /// Units still held per SKU afterwards (when not closing).
    remaining: Vec<(SkuId, u32)>,
    /// The whole reservation ends.
    closes: bool,
}

/// Most times one op is re-sent because its actor passivated under it.
const MAX_REDELIVERIES: usize = 8;

/// Sends `op` to `sku`'s actor and waits for its reply.
async fn call(
    core: &Arc<Core>,
    sku: &SkuId,
    mut op: SkuOp,
    create: bool,
    delivery: Delivery,
) -> Result<SkuReply, Failure> {
    for _ in 0..MAX_REDELIVERIES {
        let (tx, rx) = oneshot::channel();
        let msg = SkuMsg { op, reply: tx };
        let kept = (delivery == Delivery::Wait).then(|| msg.op.clone());
        match delivery {
            Delivery::Try => {
                let sent = core
                    .registry
                    .with_addr(core, sku, create, |a| match a.try_send(msg) {
                        Ok(()) => Sent::Queued,
                        Err(actix::dev::SendError::Full(_)) => Sent::Full,
                        Err(actix::dev::SendError::Closed(m)) => Sent::Closed(m.op),
                    })
                    .map_err(limit_to_rejection)?;
                match sent {
                    None => return Err(Rejection::UnknownSku(sku.clone()).into()),
                    Some(Sent::Queued) => {}
                    Some(Sent::Full) => {
                        Counters::bump(&core.counters.mailbox_full);
                        return Err(Rejection::Busy.into());
                    }
                    Some(Sent::Closed(back)) => {
                        op = back;
                        continue;
                    }
                }
            }
            Delivery::Wait => {
                let req = core
                    .registry
                    .with_addr(core, sku, create, |a| a.send(msg))
                    .map_err(limit_to_rejection)?
                    .ok_or_else(|| Rejection::UnknownSku(sku.clone()))?;
                let _ = req.await;
            }
        }
        match rx.await {
            Ok(SkuReply::Moved(back)) => op = back,
            Ok(reply) => return Ok(reply),
            // Dropped unhandled by an actor that was stopping: nothing was applied.
            Err(_) => match kept {
                Some(k) => op = k,
                None => return Err(Rejection::Busy.into()),
            },
        }
    }
    Err(Rejection::Busy.into())
}

fn limit_to_rejection(e: EngineError) -> Failure {
    match e {
        EngineError::Limit(m) => Rejection::InvalidRequest(m).into(),
        other => other.into(),
    }
}

/// The fingerprint of a command, stable across versions of the process (xxh3 of its bytes).
pub(crate) fn fingerprint(cmd: &Command) -> u64 {
    codec::encode(cmd).map_or(0, |b| xxh3_64(&b))
}

/// Entry point for every mutating request.
pub(crate) async fn execute(
    core: &Arc<Core>,
    req: Request,
    fp: u64,
) -> Result<Arc<Outcome>, Failure> {
    if req.id == 0 {
        return Err(Rejection::invalid("request id must be non-zero").into());
    }
    if let Begin::Replay(o) = core.idem.begin(req.id, fp)? {
        return Ok(o);
    }
    let epoch = core.enter_epoch();
    let result = run_new(core, req, fp).await;
    core.exit_epoch(epoch);
    result
}

async fn run_new(core: &Arc<Core>, req: Request, fp: u64) -> Result<Arc<Outcome>, Failure> {
    let now = core.clock.now_ms();
    let result = match req.command {
        Command::Reserve(r) => reserve(core, req.id, fp, r, now).await,
        Command::Fulfill { reservation, lines } => {
            fulfill(core, req.id, fp, reservation, lines, now).await
        }
        Command::Release { reservation } => release(core, req.id, fp, reservation, now).await,
        Command::Extend {
            reservation,
            ttl_ms,
        } => extend(core, req.id, fp, reservation, ttl_ms, now).await,
        Command::Stock { sku, command } => stock(core, req.id, fp, sku, command, now).await,
        Command::Catalog(c) => catalog(core, req.id, fp, c, now).await,
    };
    match result {
        Ok(outcome) => {
            let o = Arc::new(outcome);
            core.idem.complete(req.id, fp, o.clone(), now);
            Ok(o)
        }
        Err(e) => {
            core.idem.abort(req.id);
            Err(e)
        }
    }
}

fn sku_op(cmd: SkuCommand, request: u128, fingerprint: u64, core: &Core, now_ms: TimeMs) -> SkuOp {
    SkuOp::Command {
        cmd,
        request,
        fingerprint,
        catalog: core.catalog(),
        now_ms,
    }
}

/// Collects `Done` replies into changes; the first non-`Done` becomes the failure.
fn collect(results: Vec<(SkuId, Result<SkuReply, Failure>)>) -> (Done, Option<Failure>) {
    let mut done = Vec::new();
    let mut failure = None;
    for (sku, r) in results {
        match r {
            Ok(SkuReply::Done { seq, events }) => done.push((sku, seq, events)),
            Ok(SkuReply::Rejected(rej)) => {
                failure.get_or_insert(Failure::Rejected(rej));
            }
            Ok(SkuReply::Failed(e)) => failure = Some(Failure::Error(e)),
            Ok(other) => {
                failure.get_or_insert(Failure::Error(EngineError::Corrupt(format!(
                    "unexpected actor reply {other:?}"
                ))));
            }
            Err(f) => {
                if failure.is_none() || matches!(f, Failure::Error(_)) {
                    failure = Some(f);
                }
            }
        }
    }
    (done, failure)
}

/// Waits until the request's records (and `marker`, a record that closes the request's
/// group in the log, or 0) are durable, then builds its outcome.
async fn committed(
    core: &Core,
    done: Vec<(SkuId, u64, Vec<Event>)>,
    marker: u64,
) -> Result<Outcome, Failure> {
    let seq = done.iter().map(|d| d.1).max().unwrap_or(0);
    core.journal.wait_durable(seq.max(marker)).await?;
    let changes = done
        .into_iter()
        .flat_map(|(sku, _, events)| {
            events.into_iter().map(move |event| Change::Sku {
                sku: sku.clone(),
                event,
            })
        })
        .collect();
    Ok(Outcome { seq, changes })
}

fn group_lines(r: &ReserveRequest) -> Result<Vec<(SkuId, Vec<HoldLine>)>, Rejection> {
    if r.lines.is_empty() || r.lines.len() > MAX_LINES_PER_RESERVATION {
        return Err(Rejection::invalid(format!(
            "a reservation has 1..={MAX_LINES_PER_RESERVATION} lines"
        )));
    }
    if r.ttl_ms == 0 || r.ttl_ms > MAX_HOLD_DURATION_MS {
        return Err(Rejection::invalid(format!(
            "ttl_ms must be 1..={MAX_HOLD_DURATION_MS}"
        )));
    }
    if let [l] = r.lines.as_slice() {
        // The common one-line cart: no map.
        l.sku.check()?;
        if l.qty == 0 || l.qty > MAX_QTY {
            return Err(Rejection::invalid(format!(
                "line 0: qty must be 1..={MAX_QTY}"
            )));
        }
        let line = HoldLine {
            line: 0,
            qty: l.qty,
            location: l.location.clone(),
        };
        return Ok(vec![(l.sku.clone(), vec![line])]);
    }
    let mut groups: BTreeMap<SkuId, Vec<HoldLine>> = BTreeMap::new();
    for (i, l) in r.lines.iter().enumerate() {
        l.sku.check()?;
        if l.qty == 0 || l.qty > MAX_QTY {
            return Err(Rejection::invalid(format!(
                "line {i}: qty must be 1..={MAX_QTY}"
            )));
        }
        groups.entry(l.sku.clone()).or_default().push(HoldLine {
            line: u16::try_from(i).unwrap_or(u16::MAX),
            qty: l.qty,
            location: l.location.clone(),
        });
    }
    Ok(groups.into_iter().collect())
}

async fn reserve(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    r: ReserveRequest,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let groups = group_lines(&r)?;
    core.catalog().channel(&r.channel)?;
    let expires_at_ms = now.saturating_add(r.ttl_ms);
    match core.reservations.entry(r.reservation) {
        dashmap::mapref::entry::Entry::Occupied(_) => {
            return Err(Rejection::ReservationExists(r.reservation).into())
        }
        dashmap::mapref::entry::Entry::Vacant(v) => {
            v.insert(ResEntry {
                channel: r.channel.clone(),
                lines: Vec::new(),
                expires_at_ms,
                busy: true,
                committed: false,
            });
        }
    }
    let cart_skus = u16::try_from(groups.len()).unwrap_or(u16::MAX);
    let calls = groups.iter().map(|(sku, lines)| {
        let cmd = SkuCommand::Hold {
            reservation: r.reservation,
            channel: r.channel.clone(),
            lines: lines.clone(),
            allow_split: r.allow_split,
            expires_at_ms,
            cart_skus,
        };
        let op = sku_op(cmd, request, fp, core, now);
        async move { (sku.clone(), call(core, sku, op, false, Delivery::Try).await) }
    });
    let (done, failure) = collect(join_all(calls).await);
    if let Some(f) = failure {
        // Undo the holds the rejected cart had placed.
        let placed: Vec<SkuId> = done.iter().map(|d| d.0.clone()).collect();
        release_holds(core, r.reservation, &placed, ReleaseReason::CartAborted).await;
        core.reservations.remove(&r.reservation);
        return Err(f);
    }
    let lines = done
        .iter()
        .map(|(sku, _, ev)| (sku.clone(), held_by(ev)))
        .collect();
    // A cart of several SKUs is several records: `CartPlaced` after the last hold tells
    // recovery it was complete (and may have been acknowledged).
    let marker = if groups.len() > 1 {
        let body = RecordBody::CartPlaced {
            reservation: r.reservation,
        };
        match log_marker(core, request, fp, now, body) {
            Ok(seq) => seq,
            Err(e) => {
                core.reservations.remove(&r.reservation);
                return Err(e);
            }
        }
    } else {
        0
    };
    let outcome = committed(core, done, marker).await;
    if outcome.is_err() {
        core.reservations.remove(&r.reservation);
        return outcome;
    }
    if let Some(mut e) = core.reservations.get_mut(&r.reservation) {
        e.lines = lines;
        e.busy = false;
        e.committed = true;
    }
    core.expiry.insert(expires_at_ms, r.reservation);
    Counters::bump(&core.counters.reservations_placed);
    outcome
}

fn held_by(events: &[Event]) -> u32 {
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
        let op = sku_op(cmd, 0, 0, core, now);
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

/// Marks a committed reservation busy and returns a copy of its entry.
fn lock_reservation(core: &Core, id: ReservationId) -> Result<ResEntry, Rejection> {
    let mut e = core
        .reservations
        .get_mut(&id)
        .ok_or(Rejection::ReservationNotFound(id))?;
    if !e.committed || e.busy {
        return Err(Rejection::InProgress(id));
    }
    e.busy = true;
    Ok(e.clone())
}

fn unlock_reservation(core: &Core, id: ReservationId, lines: Option<Vec<(SkuId, u32)>>) {
    if let Some(mut e) = core.reservations.get_mut(&id) {
        if let Some(l) = lines {
            e.lines = l;
        }
        e.busy = false;
    }
}

fn end_reservation(core: &Core, id: ReservationId, entry: &ResEntry) {
    core.expiry.remove(entry.expires_at_ms, id);
    core.reservations.remove(&id);
}

/// Logs a record that changes no SKU (a group marker) and gives the feed its empty slot.
fn log_marker(
    core: &Core,
    request: u128,
    fingerprint: u64,
    now: TimeMs,
    body: RecordBody,
) -> Result<u64, Failure> {
    let rec = LogRecord {
        at_ms: now,
        request,
        fingerprint,
        body,
    };
    let seq = core.journal.append(&rec)?;
    core.feed.push(seq, None);
    Ok(seq)
}

/// Sends one command per SKU of a reservation (waiting for mailbox room) and collects.
/// With several SKUs, `OpBegun` is logged first, so that recovery finishes the operation
/// on every SKU if a crash cuts it after some of them.
async fn fan_out(
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
        if let Err(f) = log_marker(core, request, fp, now, body) {
            return (Vec::new(), Some(f));
        }
    }
    let calls = targets.into_iter().map(|(sku, cmd)| {
        let op = sku_op(cmd, request, fp, core, now);
        async move {
            let r = call(core, &sku, op, false, Delivery::Wait).await;
            (sku, r)
        }
    });
    collect(join_all(calls).await)
}

/// Per-SKU fulfil amounts, validated against what the reservation holds.
fn fulfil_plan(
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

async fn fulfill(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    id: ReservationId,
    lines: Option<Vec<(SkuId, u32)>>,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let entry = lock_reservation(core, id)?;
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
async fn finish_reservation_op(
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

async fn release(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    id: ReservationId,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let entry = lock_reservation(core, id)?;
    let targets = entry
        .lines
        .iter()
        .map(|(sku, _)| {
            (
                sku.clone(),
                SkuCommand::Release {
                    reservation: id,
                    reason: ReleaseReason::Client,
                },
            )
        })
        .collect();
    let (done, failure) = fan_out(core, id, targets, request, fp, now).await;
    let r = finish_reservation_op(core, id, &entry, done, failure, None).await;
    if r.is_ok() {
        Counters::bump(&core.counters.reservations_released);
    }
    r
}

async fn extend(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    id: ReservationId,
    ttl_ms: u64,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    if ttl_ms == 0 || ttl_ms > MAX_HOLD_DURATION_MS {
        return Err(
            Rejection::invalid(format!("ttl_ms must be 1..={MAX_HOLD_DURATION_MS}")).into(),
        );
    }
    let entry = lock_reservation(core, id)?;
    if entry.expires_at_ms <= now {
        unlock_reservation(core, id, None);
        return Err(Rejection::ReservationExpired(id).into());
    }
    let new_expiry = now.saturating_add(ttl_ms);
    let targets = entry
        .lines
        .iter()
        .map(|(sku, _)| {
            (
                sku.clone(),
                SkuCommand::Extend {
                    reservation: id,
                    expires_at_ms: new_expiry,
                },
            )
        })
        .collect();
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

/// Expires one due reservation. Returns whether it expired.
async fn expire_one(core: &Arc<Core>, id: ReservationId, now: TimeMs) -> bool {
    let entry = match lock_reservation(core, id) {
        Ok(e) => e,
        Err(Rejection::InProgress(_)) => {
            // Another op holds it; look again in a millisecond.
            core.expiry.insert(now + 1, id);
            return false;
        }
        Err(_) => return false,
    };
    if entry.expires_at_ms > now {
        unlock_reservation(core, id, None);
        return false;
    }
    let targets = entry
        .lines
        .iter()
        .map(|(sku, _)| (sku.clone(), SkuCommand::Expire { reservation: id }))
        .collect();
    let (_done, failure) = fan_out(core, id, targets, 0, 0, now).await;
    if let Some(f) = failure {
        tracing::error!(reservation = %format!("{id:032x}"), "expiry failed: {f}");
        unlock_reservation(core, id, None);
        return false;
    }
    core.reservations.remove(&id);
    Counters::bump(&core.counters.reservations_expired);
    true
}

/// Expires everything due now, in rounds of `expiry_batch`.
pub(crate) async fn expire_due(core: &Arc<Core>) -> usize {
    let mut n = 0;
    loop {
        let now = core.clock.now_ms();
        let due = core.expiry.take_due(now, core.config.expiry_batch);
        if due.is_empty() {
            return n;
        }
        // In a request epoch, like client requests: a checkpoint waits for expiries in flight.
        let epoch = core.enter_epoch();
        let results = join_all(due.into_iter().map(|id| expire_one(core, id, now))).await;
        core.exit_epoch(epoch);
        n += results.into_iter().filter(|x| *x).count();
    }
}

/// Sleeps until the earliest deadline (or until an earlier one is added), then expires.
/// Holds the core only weakly between rounds, so a shut-down engine is released at once.
pub(crate) async fn expiry_driver(weak: std::sync::Weak<Core>) {
    loop {
        let (wait, changed) = {
            let Some(core) = weak.upgrade() else { return };
            expire_due(&core).await;
            let now = core.clock.now_ms();
            match core.expiry.next_deadline() {
                Some(t) if t <= now => continue,
                Some(t) => (
                    Some(std::time::Duration::from_millis(t - now)),
                    core.wake_handle(),
                ),
                None => (None, core.wake_handle()),
            }
        };
        match wait {
            Some(w) => {
                tokio::select! {
                    _ = tokio::time::sleep(w) => {}
                    _ = changed.notified() => {}
                }
            }
            None => changed.notified().await,
        }
    }
}

async fn stock(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    sku: SkuId,
    cmd: SkuCommand,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    sku.check()?;
    let catalog = core.catalog();
    match &cmd {
        SkuCommand::Adjust { location, .. }
        | SkuCommand::SetOnHand { location, .. }
        | SkuCommand::Move { location, .. }
        | SkuCommand::SetSafetyStock { location, .. }
        | SkuCommand::SetIncoming { location, .. } => catalog.require_location(location)?,
        SkuCommand::Transfer { from, to, .. } => {
            catalog.require_location(from)?;
            catalog.require_location(to)?;
        }
        _ => return Err(Rejection::invalid("reservation commands are not stock commands").into()),
    }
    let op = sku_op(cmd, request, fp, core, now);
    let reply = call(core, &sku, op, true, Delivery::Try).await;
    let (done, failure) = collect(vec![(sku, reply)]);
    if let Some(f) = failure {
        return Err(f);
    }
    committed(core, done, 0).await
}

async fn catalog(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    cmd: crate::domain::CatalogCommand,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let _serialised = core.catalog_write.lock().await;
    let current = core.catalog();
    let event = current.decide(&cmd)?;
    let rec = LogRecord {
        at_ms: now,
        request,
        fingerprint: fp,
        body: RecordBody::Catalog(event.clone()),
    };
    let seq = core.journal.append(&rec)?;
    let mut next = (*current).clone();
    next.apply(&event, seq);
    core.set_catalog(Arc::new(next));
    core.feed.push(
        seq,
        Some(Arc::new(crate::feed::FeedRecord::new(
            seq,
            now,
            crate::feed::FeedBody::Catalog,
        ))),
    );
    core.journal.wait_durable(seq).await?;
    Ok(Outcome {
        seq,
        changes: vec![Change::Catalog(event)],
    })
}

pub(crate) async fn get(core: &Arc<Core>, sku: &SkuId) -> Result<SkuView, Failure> {
    let catalog = core.catalog();
    if let Some(s) = core.registry.passive_state(sku, &catalog)? {
        return Ok(s.view(&catalog));
    }
    match call(core, sku, SkuOp::View { catalog }, false, Delivery::Try).await? {
        SkuReply::View(v) => Ok(v),
        other => Err(EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into()),
    }
}

pub(crate) async fn get_waiting(core: &Arc<Core>, sku: &SkuId) -> Result<SkuView, Failure> {
    let catalog = core.catalog();
    if let Some(s) = core.registry.passive_state(sku, &catalog)? {
        return Ok(s.view(&catalog));
    }
    match call(core, sku, SkuOp::View { catalog }, false, Delivery::Wait).await? {
        SkuReply::View(v) => Ok(v),
        other => Err(EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into()),
    }
}

/// Sends `op` waiting for mailbox room (checkpoints).
pub(crate) async fn call_wait(
    core: &Arc<Core>,
    sku: &SkuId,
    op: SkuOp,
) -> Result<SkuReply, Failure> {
    call(core, sku, op, false, Delivery::Wait).await
}

pub(crate) async fn sku_state(core: &Arc<Core>, sku: &SkuId) -> Result<SkuState, Failure> {
    if let Some(s) = core.registry.passive_state(sku, &core.catalog())? {
        return Ok(s);
    }
    match call(core, sku, SkuOp::Snapshot, false, Delivery::Wait).await? {
        SkuReply::State(s) => Ok(*s),
        other => Err(EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into()),
    }
}

/// Rebuilds the reservation index and expiry queue from recovered SKU holds.
pub(crate) fn index_holds(core: &Core, skus: &[SkuState]) {
    for s in skus {
        for (id, h) in &s.holds {
            let mut e = core.reservations.entry(*id).or_insert_with(|| ResEntry {
                channel: h.channel.clone(),
                lines: Vec::new(),
                expires_at_ms: h.expires_at_ms,
                busy: false,
                committed: true,
            });
            e.lines.push((s.sku.clone(), h.held()));
        }
    }
    for r in core.reservations.iter() {
        core.expiry.insert(r.expires_at_ms, *r.key());
    }
}
