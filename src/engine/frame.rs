//! A request frame as the unit of work. The requests of one frame are checked and entered
//! in the idempotency table together, in one checkpoint epoch, with one catalog snapshot.
//! Every reserve (a cart of any number of SKUs) and every stock command is sent to its
//! actors with a slot each in one shared reply buffer (`delivery::deliver_all`): no future,
//! oneshot or wake-up per operation. The frame waits once for all the replies, logs the
//! `CartPlaced` marker of each whole cart of several SKUs, undoes the holds of refused
//! carts, and waits once for the log (its highest sequence). The other requests (fulfil,
//! release, extend, catalog writes) run beside them on the general path
//! (`coordinator::run_new`).
//!
//! This path keeps every guarantee of a request on its own: acknowledged only once its
//! records are durable, a cart all or nothing (a refused one is undone before it is
//! answered; a whole one of several SKUs is closed by its marker), a resend replays the
//! same outcome. Requests of one frame on the same SKU reach its actor in frame order.

use std::sync::Arc;

use futures::future::join_all;

use crate::domain::{Catalog, Rejection, ReleaseReason, ReservationId, SkuId, TimeMs};

use super::actor::SkuOp;
use super::api::{Change, Command, Failure, Outcome, Request};
use super::coordinator::{run_new, stock_op};
use super::delivery::{collect, deliver_all, sku_op_with, Admit, Done};
use super::idempotency::Begin;
use super::journal::RecordBody;
use super::reservations::{
    begin_reservation, finish_reservation, group_lines, held_by, hold_command, log_marker,
    release_holds,
};
use super::{Core, EngineError};

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
    /// For a reserve: its id and expiry (its index entry is in place, busy).
    reserve: Option<(ReservationId, TimeMs)>,
}

/// What the frame does with one request.
enum Route {
    /// Answered without an actor: a bad request id, a replay, a conflict, a rejection.
    Answered(Answer),
    Direct(Direct),
    General(Request),
}

/// Runs a frame's requests (each with its fingerprint); answers in request order.
pub(crate) async fn execute_frame(core: &Arc<Core>, reqs: Vec<(Request, u64)>) -> Vec<Answer> {
    let epoch = core.enter_epoch();
    let out = run_frame(core, reqs).await;
    core.exit_epoch(epoch);
    out
}

async fn run_frame(core: &Arc<Core>, reqs: Vec<(Request, u64)>) -> Vec<Answer> {
    let now = core.clock.now_ms();
    let catalog = core.catalog();
    let mut out: Vec<Option<Answer>> = (0..reqs.len()).map(|_| None).collect();
    let mut direct = Vec::with_capacity(reqs.len());
    let mut general = Vec::new();
    for (i, (req, fp)) in reqs.into_iter().enumerate() {
        match route(core, &catalog, req, fp, now) {
            Route::Answered(a) => out[i] = Some(a),
            Route::Direct(d) => direct.push((i, d)),
            Route::General(req) => general.push((i, req, fp)),
        }
    }
    let general = join_all(
        general
            .into_iter()
            .map(|(i, req, fp)| async move { (i, run_new(core, req, fp).await) }),
    );
    let (general, direct) = futures::join!(general, run_direct(core, direct, now));
    for (i, a) in general.into_iter().chain(direct) {
        out[i] = Some(a);
    }
    out.into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(EngineError::Corrupt("a request of the frame was not answered".into()).into())
            })
        })
        .collect()
}

/// Checks a request id, enters it in the idempotency table, and picks its path.
fn route(core: &Core, catalog: &Arc<Catalog>, req: Request, fp: u64, now: TimeMs) -> Route {
    if req.id == 0 {
        return Route::Answered(Err(Rejection::invalid("request id must be non-zero").into()));
    }
    match core.idem.begin(req.id, fp) {
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
            let expires_at_ms = begin_reservation(core, catalog, &r, now)?;
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
                reserve: Some((r.reservation, expires_at_ms)),
            }))
        }
        Command::Stock { sku, command } => {
            let op = stock_op(catalog, (id, fp), &sku, command, now)?;
            Ok(Route::Direct(Direct {
                id,
                fp,
                ops: vec![(sku, op)],
                create: true,
                reserve: None,
            }))
        }
        command => Ok(Route::General(Request { id, command })),
    }
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
        meta.push((i, d.id, d.fp, d.reserve, d.ops.len()));
        create.extend(std::iter::repeat_n(d.create, d.ops.len()));
        ops.extend(d.ops);
    }
    let mut replies = deliver_all(core, ops, &create).await.into_iter();
    let mut placed: Vec<Placed> = Vec::with_capacity(meta.len());
    let mut undo = Vec::new();
    for &(_, id, fp, reserve, n) in &meta {
        let (done, failure) = collect(replies.by_ref().take(n).collect());
        placed.push(match (failure, reserve) {
            (Some(f), Some((reservation, _))) if !done.is_empty() => {
                // The holds the refused cart had placed are released before it is answered.
                undo.push((
                    reservation,
                    done.into_iter().map(|d| d.0).collect::<Vec<_>>(),
                ));
                Err(f)
            }
            (Some(f), _) => Err(f),
            (None, Some((reservation, _))) if n > 1 => {
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
    meta.into_iter()
        .zip(placed)
        .map(|((i, id, fp, reserve, _), p)| {
            (i, complete(core, (id, fp), reserve, p, &durable, now))
        })
        .collect()
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

/// Turns a direct request's result into its answer, and records it (index entry, expiry,
/// idempotency) or forgets it.
fn complete(
    core: &Core,
    (id, fp): (u128, u64),
    reserve: Option<(ReservationId, TimeMs)>,
    placed: Placed,
    durable: &Result<(), EngineError>,
    now: TimeMs,
) -> Answer {
    let failure: Failure = match (placed, durable) {
        (Ok((done, _)), Ok(())) => {
            let seq = done.iter().map(|d| d.1).max().unwrap_or(0);
            if let Some((reservation, expires_at_ms)) = reserve {
                let lines = done
                    .iter()
                    .map(|(sku, _, ev)| (sku.clone(), held_by(ev)))
                    .collect();
                finish_reservation(core, reservation, lines, expires_at_ms);
            }
            let mut changes = Vec::with_capacity(done.iter().map(|d| d.2.len()).sum());
            for (sku, _, events) in done {
                changes.extend(events.into_iter().map(|event| Change::Sku {
                    sku: sku.clone(),
                    event,
                }));
            }
            let outcome = Arc::new(Outcome { seq, changes });
            core.idem.complete(id, fp, outcome.clone(), now);
            return Ok(outcome);
        }
        (Ok(_), Err(e)) => e.clone().into(),
        (Err(f), _) => f,
    };
    if let Some((reservation, _)) = reserve {
        core.reservations.remove(&reservation);
    }
    core.idem.abort(id);
    Err(failure)
}
