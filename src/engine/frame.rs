//! A request frame as the unit of work. The requests of one frame are checked and entered
//! in the idempotency table together, in one checkpoint epoch, with one catalog snapshot.
//! Every request that touches one SKU (a one-SKU reserve, a stock command) is sent to its
//! actor with a slot in one shared reply buffer (`delivery::deliver_all`): no future,
//! oneshot or wake-up per operation. The frame then waits once for all of them and once
//! for the log (its highest sequence). The other requests (carts of several SKUs, fulfil,
//! release, extend, catalog writes) run beside them on the general path
//! (`coordinator::run_new`), which logs their group markers.
//!
//! The single-SKU path keeps the general path's guarantees: acknowledged only once its
//! record is durable, a resend replays the same outcome, a one-SKU reserve is one record
//! (no marker needed: it is whole or absent in the log). Requests of one frame on the same
//! SKU reach its actor in frame order.

use std::sync::Arc;

use futures::future::join_all;

use crate::domain::{Catalog, Rejection, ReservationId, SkuId, TimeMs};

use super::actor::{SkuOp, SkuReply};
use super::api::{Change, Command, Failure, Outcome, Request};
use super::coordinator::{run_new, stock_op};
use super::delivery::{deliver_all, sku_op_with, Admit};
use super::idempotency::Begin;
use super::reservations::{
    begin_reservation, finish_reservation, group_lines, held_by, hold_command,
};
use super::{Core, EngineError};

/// A request's answer.
pub(crate) type Answer = Result<Arc<Outcome>, Failure>;

/// A request that is one op on one SKU's actor.
struct Single {
    id: u128,
    fp: u64,
    sku: SkuId,
    op: SkuOp,
    /// Whether the SKU may be created (stock commands) or must exist (holds).
    create: bool,
    /// For a one-SKU reserve: its id and expiry (its index entry is in place, busy).
    reserve: Option<(ReservationId, TimeMs)>,
}

/// What the frame does with one request.
enum Route {
    /// Answered without an actor: a bad request id, a replay, a conflict, a rejection.
    Answered(Answer),
    Single(Box<Single>),
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
    let mut singles = Vec::new();
    let mut general = Vec::new();
    for (i, (req, fp)) in reqs.into_iter().enumerate() {
        match route(core, &catalog, req, fp, now) {
            Route::Answered(a) => out[i] = Some(a),
            Route::Single(s) => singles.push((i, *s)),
            Route::General(req) => general.push((i, req, fp)),
        }
    }
    let general = join_all(
        general
            .into_iter()
            .map(|(i, req, fp)| async move { (i, run_new(core, req, fp).await) }),
    );
    let (general, singles) = futures::join!(general, run_singles(core, singles, now));
    for (i, a) in general.into_iter().chain(singles) {
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
            match single(core, catalog, req, fp, now) {
                Ok(route) => route,
                Err(r) => {
                    core.idem.abort(id);
                    Route::Answered(Err(r.into()))
                }
            }
        }
    }
}

/// The single-SKU op of a request, or the request back for the general path.
fn single(
    core: &Core,
    catalog: &Arc<Catalog>,
    req: Request,
    fp: u64,
    now: TimeMs,
) -> Result<Route, Rejection> {
    let id = req.id;
    match req.command {
        Command::Reserve(r) if r.lines.iter().all(|l| l.sku == r.lines[0].sku) => {
            let mut groups = group_lines(&r)?;
            let (sku, lines) = match (groups.pop(), groups.is_empty()) {
                (Some(g), true) => g,
                _ => return Err(Rejection::invalid("a one-SKU cart has one group")),
            };
            let expires_at_ms = begin_reservation(core, catalog, &r, now)?;
            let cmd = hold_command(&r, lines, expires_at_ms, 1);
            Ok(Route::Single(Box::new(Single {
                id,
                fp,
                sku,
                op: sku_op_with(cmd, (id, fp), catalog.clone(), now, Admit::New),
                create: false,
                reserve: Some((r.reservation, expires_at_ms)),
            })))
        }
        Command::Stock { sku, command } => {
            let op = stock_op(catalog, (id, fp), &sku, command, now)?;
            Ok(Route::Single(Box::new(Single {
                id,
                fp,
                sku,
                op,
                create: true,
                reserve: None,
            })))
        }
        command => Ok(Route::General(Request { id, command })),
    }
}

/// Delivers the single-SKU ops together, waits once for the log, and completes each.
async fn run_singles(
    core: &Arc<Core>,
    singles: Vec<(usize, Single)>,
    now: TimeMs,
) -> Vec<(usize, Answer)> {
    if singles.is_empty() {
        return Vec::new();
    }
    let mut ops = Vec::with_capacity(singles.len());
    let mut create = Vec::with_capacity(singles.len());
    let mut meta = Vec::with_capacity(singles.len());
    for (i, s) in singles {
        ops.push((s.sku, s.op));
        create.push(s.create);
        meta.push((i, s.id, s.fp, s.reserve));
    }
    let replies = deliver_all(core, ops, &create).await;
    let highest = replies
        .iter()
        .filter_map(|(_, r)| match r {
            Ok(SkuReply::Done { seq, .. }) => Some(*seq),
            _ => None,
        })
        .max();
    let durable = match highest {
        Some(seq) => core.journal.wait_durable(seq).await,
        None => Ok(()),
    };
    meta.into_iter()
        .zip(replies)
        .map(|((i, id, fp, reserve), (sku, reply))| {
            let answer = complete(core, (id, fp), reserve, sku, reply, &durable, now);
            (i, answer)
        })
        .collect()
}

/// Turns one single-SKU reply into the request's answer, and records it (index entry,
/// expiry, idempotency) or forgets it.
fn complete(
    core: &Core,
    (id, fp): (u128, u64),
    reserve: Option<(ReservationId, TimeMs)>,
    sku: SkuId,
    reply: Result<SkuReply, Failure>,
    durable: &Result<(), EngineError>,
    now: TimeMs,
) -> Answer {
    let failure: Failure = match (reply, durable) {
        (Ok(SkuReply::Done { seq, events }), Ok(())) => {
            if let Some((reservation, expires_at_ms)) = reserve {
                let lines = vec![(sku.clone(), held_by(&events))];
                finish_reservation(core, reservation, lines, expires_at_ms);
            }
            let changes = events
                .into_iter()
                .map(|event| Change::Sku {
                    sku: sku.clone(),
                    event,
                })
                .collect();
            let outcome = Arc::new(Outcome { seq, changes });
            core.idem.complete(id, fp, outcome.clone(), now);
            return Ok(outcome);
        }
        (Ok(SkuReply::Done { .. }), Err(e)) => e.clone().into(),
        (Ok(SkuReply::Rejected(r)), _) => r.into(),
        (Ok(SkuReply::Failed(e)), _) => e.into(),
        (Ok(other), _) => EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into(),
        (Err(f), _) => f,
    };
    if let Some((reservation, _)) = reserve {
        core.reservations.remove(&reservation);
    }
    core.idem.abort(id);
    Err(failure)
}
