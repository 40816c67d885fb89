//! A request frame as the unit of work. The requests of one frame are checked and entered
//! in the idempotency table together, in one checkpoint epoch, with one catalog snapshot.
//! Every reserve (a cart of any number of SKUs), every stock command, and every fulfil,
//! release or extend of a reservation of one SKU is sent to its actors with a slot each in
//! one shared reply buffer (`delivery::deliver_all`: one message per SKU for all its ops
//! of the frame): no future, oneshot or wake-up per operation. The frame waits once for
//! all the replies, logs the `CartPlaced` marker of each whole cart of several SKUs, undoes
//! the holds of refused carts, and waits once for the log (its highest sequence). The
//! other requests (fulfil, release, extend of reservations of several SKUs, which log
//! `OpBegun` first, and catalog writes) run beside them on the general path
//! (`coordinator::run_new`).
//!
//! This path keeps every guarantee of a request on its own: acknowledged only once its
//! records are durable, a cart all or nothing (a refused one is undone before it is
//! answered; a whole one of several SKUs is closed by its marker), a resend replays the
//! same outcome. Requests of one frame on the same SKU reach its actor in frame order.
//! An operation on a reservation of one SKU refused before its SKU changed it (a full
//! mailbox: `Busy`) leaves the reservation as it was.

use std::sync::Arc;

use futures::future::join_all;

use crate::domain::{Catalog, Rejection, ReleaseReason, ReservationId, SkuCommand, SkuId, TimeMs};

use super::actor::SkuOp;
use super::api::{Change, Command, Failure, Outcome, Request};
use super::catalog_writes::{delete_target, touches};
use super::coordinator::{run_new, stock_op};
use super::delivery::{collect, deliver_all, sku_op_with, Admit, Done};
use super::idempotency::Begin;
use super::journal::RecordBody;
use super::reservations::{
    check_extend_ttl, commit_reservations, fulfil_plan, group_lines, held_by, hold_command,
    lock_reservation, log_marker, new_reservation, release_holds, unlock_reservation, Holder,
};
use super::{Core, Counters, EngineError, ResEntry};

/// A request's answer.
pub(crate) type Answer = Result<Arc<Outcome>, Failure>;

/// A request the frame sends to its SKUs' actors itself.
struct Direct {
    id: u128,
    fp: u64,
    /// One op per SKU (a cart's SKUs in id order).
    ops: Vec<(SkuId, SkuOp)>,
    /// Whether the SKUs may be created (stock commands) or must exist (holds).
    create: bool,
    kind: Kind,
    /// A reserve's index entry, entered with the frame's others (`enter_reservations`).
    new_entry: Option<ResEntry>,
}

/// What a direct request is, for what follows its actors' answers.
enum Kind {
    /// A stock command: nothing to record besides its outcome.
    Stock,
    /// A reserve: its id and expiry (its index entry is in place, busy, once the frame's
    /// reserves are entered).
    Reserve(ReservationId, TimeMs),
    /// A fulfil, release or extend of a reservation of one SKU (its index entry locked,
    /// busy): there is no group to open, so it goes straight to the SKU like a reserve.
    /// (Reservations of several SKUs log `OpBegun` first: the general path.)
    OnReservation(ReservationId, TimeMs, After),
}

/// What a reservation's index entry becomes once its operation is done.
enum After {
    /// Fulfilled: the reservation ends (`None`) or keeps these lines.
    Fulfilled(Option<Vec<(SkuId, u32)>>),
    Released,
    /// Extended to this expiry.
    Extended(TimeMs),
}

/// What the frame does with one request.
enum Route {
    /// Answered without an actor: a bad request id, a replay, a conflict, a rejection.
    Answered(Answer),
    Direct(Direct),
    General(Request),
    /// A catalog delete: after the rest of the frame, outside its epoch.
    Exclusive(Request),
}

/// Runs a frame's requests (each with its fingerprint); answers in request order. Catalog
/// deletes run after the others, one at a time, outside the frame's epoch
/// ([`run_exclusive`]).
pub(crate) async fn execute_frame(core: &Arc<Core>, reqs: Vec<(Request, u64)>) -> Vec<Answer> {
    let epoch = core.enter_epoch();
    let (mut out, exclusive) = run_frame(core, reqs).await;
    core.exit_epoch(epoch);
    for (i, req, fp) in exclusive {
        out[i] = Some(run_exclusive(core, req, fp).await);
    }
    out.into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(EngineError::Corrupt("a request of the frame was not answered".into()).into())
            })
        })
        .collect()
}

/// A catalog delete (its id entered in the idempotency table): it waits for every request
/// in flight to finish (`catalog_writes`), so it runs in no epoch, its own frame's included,
/// and holds the checkpoint lock instead, until its outcome is recorded: no checkpoint can
/// fall between its log record and its idempotency entry, and no two drains overlap.
async fn run_exclusive(core: &Arc<Core>, req: Request, fp: u64) -> Answer {
    let _no_checkpoint = core.checkpoint_lock.lock().await;
    run_new(core, req, fp).await
}

/// The answers of a frame's requests (catalog deletes not yet), and its catalog deletes.
type FrameRun = (Vec<Option<Answer>>, Vec<(usize, Request, u64)>);

async fn run_frame(core: &Arc<Core>, reqs: Vec<(Request, u64)>) -> FrameRun {
    let now = core.clock.now_ms();
    // After the epoch entry: a delete that marked its entry before flipping the epoch
    // this frame entered is seen here (`catalog_writes`). And before the catalog snapshot:
    // a delete lifts its mark only after publishing the catalog without its entry, so a
    // frame that finds no mark reads that catalog (read the other way round, a snapshot
    // from before the delete could meet the lifted mark: a hold on a deleted channel).
    let closing = core.closing.get();
    let catalog = core.catalog();
    let mut out: Vec<Option<Answer>> = (0..reqs.len()).map(|_| None).collect();
    let mut direct = Vec::with_capacity(reqs.len());
    let mut general = Vec::new();
    let mut exclusive = Vec::new();
    let mut entering = Vec::with_capacity(reqs.len());
    for (i, (req, fp)) in reqs.into_iter().enumerate() {
        if closing
            .as_ref()
            .is_some_and(|c| touches(c, &catalog, &req.command))
        {
            // Before the idempotency table: nothing to undo, a resend runs it again.
            out[i] = Some(Err(Rejection::Busy.into()));
        } else if req.id == 0 {
            out[i] = Some(Err(Rejection::invalid("request id must be non-zero").into()));
        } else {
            // Until `begin_many` answers: a retriable refusal, never a go-ahead.
            let unanswered = Err(Rejection::InProgress(req.id));
            entering.push((i, req, fp, unanswered));
        }
    }
    // The frame's ids entered together: one lock per idempotency shard.
    core.idem
        .begin_many(&mut entering, |e| (e.1.id, e.2), |e, begun| e.3 = begun);
    for (i, req, fp, begun) in entering {
        match route(core, &catalog, req, fp, begun, now) {
            Route::Answered(a) => out[i] = Some(a),
            Route::Direct(d) => direct.push((i, d)),
            Route::General(req) => general.push((i, req, fp)),
            Route::Exclusive(req) => exclusive.push((i, req, fp)),
        }
    }
    enter_reservations(core, &mut direct, &mut out);
    let general = join_all(
        general
            .into_iter()
            .map(|(i, req, fp)| async move { (i, run_new(core, req, fp).await) }),
    );
    let (general, direct) = futures::join!(general, run_direct(core, direct, now));
    for (i, a) in general.into_iter().chain(direct) {
        out[i] = Some(a);
    }
    (out, exclusive)
}

/// The frame's reserves entered in the index together (one lock per shard), in frame
/// order: a reserve whose reservation id is taken (by a reservation in the index or an
/// earlier reserve of the frame) is refused, and its request id forgotten.
fn enter_reservations(core: &Core, direct: &mut Vec<(usize, Direct)>, out: &mut [Option<Answer>]) {
    let reserve = |(_, d): &(usize, Direct)| match d.kind {
        Kind::Reserve(reservation, _) => Some(reservation),
        _ => None,
    };
    core.reservations
        .begin_many(direct, reserve, |(_, d)| &mut d.new_entry);
    // An entry still in its request: the id was taken.
    direct.retain(|(i, d)| {
        let (Kind::Reserve(reservation, _), Some(_)) = (&d.kind, &d.new_entry) else {
            return true;
        };
        let reservation = *reservation;
        core.idem.abort(d.id);
        out[*i] = Some(Err(Rejection::ReservationExists(reservation).into()));
        false
    });
}

/// Picks a request's path given what the idempotency table said of its id.
fn route(
    core: &Core,
    catalog: &Arc<Catalog>,
    req: Request,
    fp: u64,
    begun: Result<Begin, Rejection>,
    now: TimeMs,
) -> Route {
    match begun {
        Err(r) => Route::Answered(Err(r.into())),
        Ok(Begin::Replay(o)) => Route::Answered(Ok(o)),
        Ok(Begin::New) => {
            let id = req.id;
            match direct(core, catalog, req, fp, now) {
                Ok(route) => route,
                Err(r) => {
                    core.idem.abort(id);
                    Route::Answered(Err(r.into()))
                }
            }
        }
    }
}

/// The actor ops of a reserve or stock command, or the request back for the general path.
fn direct(
    core: &Core,
    catalog: &Arc<Catalog>,
    req: Request,
    fp: u64,
    now: TimeMs,
) -> Result<Route, Rejection> {
    let id = req.id;
    match req.command {
        Command::Reserve(r) => {
            let groups = group_lines(&r)?;
            let entry = new_reservation(catalog, &r, now)?;
            let expires_at_ms = entry.expires_at_ms;
            let cart_skus = u16::try_from(groups.len()).unwrap_or(u16::MAX);
            let ops = groups
                .into_iter()
                .map(|(sku, lines)| {
                    let cmd = hold_command(&r, lines, expires_at_ms, cart_skus);
                    let op = sku_op_with(cmd, (id, fp), catalog.clone(), now, Admit::New);
                    (sku, op)
                })
                .collect();
            Ok(Route::Direct(Direct {
                id,
                fp,
                ops,
                create: false,
                kind: Kind::Reserve(r.reservation, expires_at_ms),
                new_entry: Some(entry),
            }))
        }
        Command::Stock { sku, command } => {
            let op = stock_op(catalog, (id, fp), &sku, command, now)?;
            Ok(Route::Direct(Direct {
                id,
                fp,
                ops: vec![(sku, op)],
                create: true,
                kind: Kind::Stock,
                new_entry: None,
            }))
        }
        Command::Catalog(c) if delete_target(&c).is_some() => Ok(Route::Exclusive(Request {
            id,
            command: Command::Catalog(c),
        })),
        command => match one_sku_op(core, &command, now)? {
            Some((entry, reservation, sku, cmd, after)) => {
                let op = sku_op_with(cmd, (id, fp), catalog.clone(), now, Admit::Finish);
                Ok(Route::Direct(Direct {
                    id,
                    fp,
                    ops: vec![(sku, op)],
                    create: false,
                    kind: Kind::OnReservation(reservation, entry.expires_at_ms, after),
                    new_entry: None,
                }))
            }
            None => Ok(Route::General(Request { id, command })),
        },
    }
}

/// A locked reservation of one SKU, the command for its SKU, and what its entry becomes.
type OnOne = (ResEntry, ReservationId, SkuId, SkuCommand, After);

/// A fulfil, release or extend of a committed reservation of one SKU, its entry locked:
/// the entry, the SKU's command and what the entry becomes (`None`: not such a request, or
/// a reservation of several SKUs, for the general path). Its record must be logged (it
/// finishes what the reservation began), as on the general path.
fn one_sku_op(core: &Core, command: &Command, now: TimeMs) -> Result<Option<OnOne>, Rejection> {
    let reservation = match command {
        Command::Fulfill { reservation, .. }
        | Command::Release { reservation }
        | Command::Extend { reservation, .. } => *reservation,
        _ => return Ok(None),
    };
    if !one_sku(core, reservation) {
        return Ok(None);
    }
    if let Command::Extend { ttl_ms, .. } = command {
        check_extend_ttl(*ttl_ms)?;
    }
    let entry = lock_reservation(core, reservation, Holder::Request)?;
    let expired = entry.expires_at_ms <= now && !matches!(command, Command::Release { .. });
    let planned = match command {
        _ if expired => Err(Rejection::ReservationExpired(reservation)),
        Command::Fulfill { lines, .. } => fulfil_plan(&entry, lines.clone()).and_then(|plan| {
            let [(sku, qty)]: [(SkuId, Option<u32>); 1] = plan
                .per_sku
                .try_into()
                .map_err(|_| Rejection::invalid("a fulfil of one SKU planned several"))?;
            let after = After::Fulfilled((!plan.closes).then_some(plan.remaining));
            Ok((sku, SkuCommand::Fulfill { reservation, qty }, after))
        }),
        Command::Release { .. } => Ok((
            entry.lines[0].0.clone(),
            SkuCommand::Release {
                reservation,
                reason: ReleaseReason::Client,
            },
            After::Released,
        )),
        Command::Extend { ttl_ms, .. } => {
            let new_expiry = now.saturating_add(*ttl_ms);
            Ok((
                entry.lines[0].0.clone(),
                SkuCommand::Extend {
                    reservation,
                    expires_at_ms: new_expiry,
                },
                After::Extended(new_expiry),
            ))
        }
        _ => unreachable!("invariant: only fulfil, release and extend get here"),
    };
    let (sku, cmd, after) = planned.inspect_err(|_| unlock_reservation(core, reservation, None))?;
    Ok(Some((entry, reservation, sku, cmd, after)))
}

/// Whether a committed reservation holds exactly one SKU (its operations then need no
/// `OpBegun` group). A reservation's number of SKUs never changes once it is committed.
fn one_sku(core: &Core, reservation: ReservationId) -> bool {
    core.reservations
        .read(&reservation, |e| e.committed && e.lines.len() == 1)
        .unwrap_or(false)
}

/// A direct request once its actors answered: its changes and the sequence of its closing
/// marker (0 without one), or why it failed.
type Placed = Result<(Done, u64), Failure>;

/// Delivers the direct requests' ops together, closes or undoes each cart, waits once for
/// the log, and completes each request.
async fn run_direct(
    core: &Arc<Core>,
    direct: Vec<(usize, Direct)>,
    now: TimeMs,
) -> Vec<(usize, Answer)> {
    if direct.is_empty() {
        return Vec::new();
    }
    let mut ops = Vec::with_capacity(direct.len());
    let mut create = Vec::with_capacity(direct.len());
    let mut meta = Vec::with_capacity(direct.len());
    for (i, d) in direct {
        meta.push((i, d.id, d.fp, d.kind, d.ops.len()));
        create.extend(std::iter::repeat_n(d.create, d.ops.len()));
        ops.extend(d.ops);
    }
    let mut replies = deliver_all(core, ops, &create).await.into_iter();
    let mut placed: Vec<Placed> = Vec::with_capacity(meta.len());
    let mut undo = Vec::new();
    for (_, id, fp, kind, n) in &meta {
        let (id, fp, n) = (*id, *fp, *n);
        let (done, failure) = collect(replies.by_ref().take(n).collect());
        let reserve = match kind {
            Kind::Reserve(reservation, _) => Some(*reservation),
            _ => None,
        };
        placed.push(match (failure, reserve) {
            (Some(f), Some(reservation)) if !done.is_empty() => {
                // The holds the refused cart had placed are released before it is answered.
                undo.push((
                    reservation,
                    done.into_iter().map(|d| d.0).collect::<Vec<_>>(),
                ));
                Err(f)
            }
            (Some(f), _) => Err(f),
            (None, Some(reservation)) if n > 1 => {
                close_cart(core, (id, fp), reservation, now).map(|marker| (done, marker))
            }
            (None, _) => Ok((done, 0)),
        });
    }
    let undone = undo.iter().map(|(reservation, skus)| {
        release_holds(core, *reservation, skus, ReleaseReason::CartAborted)
    });
    join_all(undone).await;
    let highest = placed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|(done, marker)| done.iter().map(|d| d.1).max().unwrap_or(0).max(*marker))
        .max();
    let durable = match highest {
        Some(seq) if seq > 0 => core.journal.wait_durable(seq).await,
        _ => Ok(()),
    };
    if durable.is_ok() {
        // Every placed reserve's expiry at once, before any of them can be fulfilled,
        // released or extended (`complete` marks them committed): a deadline is never
        // removed before it is queued.
        let due: Vec<(TimeMs, ReservationId)> = meta
            .iter()
            .zip(&placed)
            .filter_map(|((_, _, _, kind, _), p)| match (kind, p) {
                (Kind::Reserve(reservation, expires_at_ms), Ok(_)) => {
                    Some((*expires_at_ms, *reservation))
                }
                _ => None,
            })
            .collect();
        core.expiry.insert_many(&due);
    }
    let mut accepted = Vec::with_capacity(meta.len());
    let mut committed = Vec::with_capacity(meta.len());
    let answers = meta
        .into_iter()
        .zip(placed)
        .map(|((i, id, fp, kind, _), p)| {
            let answer = complete(core, id, kind, p, &durable, &mut committed);
            if let Ok(outcome) = &answer {
                accepted.push((id, fp, Some(outcome.clone())));
            }
            (i, answer)
        })
        .collect();
    // Before any answer leaves: a fulfil finds its reservation, a resend its outcome.
    commit_reservations(core, &mut committed);
    core.idem.complete_many(&mut accepted, now);
    answers
}

/// Logs the `CartPlaced` marker of a cart of several SKUs whose holds are all placed (it
/// must be logged: never refused by back-pressure). Returns its sequence.
fn close_cart(
    core: &Core,
    id: (u128, u64),
    reservation: ReservationId,
    now: TimeMs,
) -> Result<u64, Failure> {
    let body = RecordBody::CartPlaced { reservation };
    log_marker(core, id, now, body, Admit::Finish)
}

/// Turns a direct request's result into its answer, and records it in the index or
/// forgets it (and its idempotency entry). The caller records what is accepted: the
/// outcome, and a placed reserve's lines (pushed to `committed`).
fn complete(
    core: &Core,
    id: u128,
    kind: Kind,
    placed: Placed,
    durable: &Result<(), EngineError>,
    committed: &mut Vec<(ReservationId, Vec<(SkuId, u32)>)>,
) -> Answer {
    let failure: Failure = match (placed, durable) {
        (Ok((done, _)), durable) => {
            match kind {
                // Its expiry was queued by `run_direct`.
                Kind::Reserve(reservation, _) if durable.is_ok() => {
                    let lines = done
                        .iter()
                        .map(|(sku, _, ev)| (sku.clone(), held_by(ev)))
                        .collect();
                    committed.push((reservation, lines));
                }
                Kind::Reserve(reservation, _) => {
                    core.reservations.remove(&reservation);
                }
                // Applied by its SKU whatever the log says next: the index follows the SKU.
                Kind::OnReservation(reservation, expires_at_ms, after) => {
                    reservation_done(core, reservation, expires_at_ms, after)
                }
                Kind::Stock => {}
            }
            if let Err(e) = durable {
                core.idem.abort(id);
                return Err(e.clone().into());
            }
            let seq = done.iter().map(|d| d.1).max().unwrap_or(0);
            let mut changes = Vec::with_capacity(done.iter().map(|d| d.2.len()).sum());
            for (sku, _, events) in done {
                changes.extend(events.into_iter().map(|event| Change::Sku {
                    sku: sku.clone(),
                    event,
                }));
            }
            return Ok(Arc::new(Outcome { seq, changes }));
        }
        (Err(f), _) => f,
    };
    match kind {
        Kind::Reserve(reservation, _) => {
            core.reservations.remove(&reservation);
        }
        // Refused before its SKU changed (busy mailbox, back-pressure): still open.
        Kind::OnReservation(reservation, ..) => unlock_reservation(core, reservation, None),
        Kind::Stock => {}
    }
    core.idem.abort(id);
    Err(failure)
}

/// The index entry and the expiry queue after a fulfil, release or extend of one SKU.
fn reservation_done(core: &Core, id: ReservationId, expires_at_ms: TimeMs, after: After) {
    match after {
        After::Fulfilled(None) => {
            core.expiry.remove(expires_at_ms, id);
            core.reservations.remove(&id);
            Counters::bump(&core.counters.reservations_fulfilled);
        }
        After::Fulfilled(Some(lines)) => unlock_reservation(core, id, Some(lines)),
        After::Released => {
            core.expiry.remove(expires_at_ms, id);
            core.reservations.remove(&id);
            Counters::bump(&core.counters.reservations_released);
        }
        After::Extended(new_expiry) => {
            core.expiry.remove(expires_at_ms, id);
            if let Some(mut e) = core.reservations.get_mut(&id) {
                e.expires_at_ms = new_expiry;
            }
            core.expiry.insert(new_expiry, id);
            unlock_reservation(core, id, None);
        }
    }
}
