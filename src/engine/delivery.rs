//! Mailbox delivery: how the engine's request code reaches a SKU actor. One op is sent with
//! `try_send` (new work: a full mailbox answers `Busy`) or `send` (work that must finish:
//! it waits for room), re-sent when the actor passivated under it, and its reply collected.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::domain::{Event, Rejection, SkuCommand, SkuId, TimeMs};

use super::actor::{SkuMsg, SkuOp, SkuReply};
use super::api::Failure;
use super::{Core, Counters, EngineError};

/// How to deliver to a SKU whose mailbox is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Refuse with `Busy` (new work: reserves, stock changes, reads).
    Try,
    /// Wait for room (work that must finish: fulfil, release, extend, expire, undo).
    Wait,
}

/// What `try_send` did with an op.
pub(super) enum Sent {
    Queued,
    Full,
    /// The actor had stopped (passivated): the op comes back to be re-sent.
    Closed(SkuOp),
}

/// Changes committed by SKU actors: (sku, seq, events).
pub(super) type Done = Vec<(SkuId, u64, Vec<Event>)>;

/// Most times one op is re-sent because its actor passivated under it.
pub(super) const MAX_REDELIVERIES: usize = 8;

/// Sends `op` to `sku`'s actor and waits for its reply.
pub(super) async fn call(
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

pub(super) fn limit_to_rejection(e: EngineError) -> Failure {
    match e {
        EngineError::Limit(m) => Rejection::InvalidRequest(m).into(),
        other => other.into(),
    }
}

/// Whether a SKU command's record may be refused by the log's back-pressure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// New work: refused (retriable) when the log is over its pending bound.
    New,
    /// Finishes work already begun (other parts, undo, expiry): always logged.
    Finish,
}

pub(super) fn sku_op(
    cmd: SkuCommand,
    (request, fingerprint): (u128, u64),
    core: &Core,
    now_ms: TimeMs,
    admit: Admit,
) -> SkuOp {
    SkuOp::Command {
        cmd,
        request,
        fingerprint,
        catalog: core.catalog(),
        now_ms,
        must_log: admit == Admit::Finish,
    }
}

/// Collects `Done` replies into changes; the first non-`Done` becomes the failure.
pub(super) fn collect(results: Vec<(SkuId, Result<SkuReply, Failure>)>) -> (Done, Option<Failure>) {
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
