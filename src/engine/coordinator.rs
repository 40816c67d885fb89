//! The general request path: a request the frame path (`frame.rs`) does not send to its
//! SKUs itself (fulfil, release, extend, catalog writes) comes here once its id is checked
//! and entered in the idempotency table, inside the frame's checkpoint epoch, and goes to
//! its operation's module: reservations (`reservations.rs`) or catalog writes
//! (`catalog_writes.rs`). The stock-command checks (`stock_op`) serve the frame. A request
//! is acknowledged only once its highest log sequence is durable (`committed`).

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::codec;
use crate::domain::{Event, Rejection, SkuCommand, SkuId, TimeMs};

use super::actor::SkuOp;
use super::api::{Change, Command, Failure, Outcome, Request};
use super::catalog_writes::catalog;
use super::delivery::*;
use super::reservations::*;
use super::{Core, EngineError};

/// The fingerprint of a command, stable across versions of the process (xxh3 of its bytes).
pub(crate) fn fingerprint(cmd: &Command) -> u64 {
    codec::encode(cmd).map_or(0, |b| xxh3_64(&b))
}

/// Runs a new request (its id checked and entered in the idempotency table, inside a
/// checkpoint epoch: see `frame`) and completes or forgets its idempotency entry.
pub(super) async fn run_new(
    core: &Arc<Core>,
    req: Request,
    fp: u64,
) -> Result<Arc<Outcome>, Failure> {
    let now = core.clock.now_ms();
    let result = match req.command {
        // The frame sends every reserve to its SKUs itself (`frame.rs`).
        // The frame sends every reserve and stock command to its SKUs itself (`frame.rs`).
        Command::Reserve(_) | Command::Stock { .. } => Err(EngineError::Corrupt(
            "a reserve or stock command reached the general request path".into(),
        )
        .into()),
        Command::Fulfill { reservation, lines } => {
            fulfill(core, req.id, fp, reservation, lines, now).await
        }
        Command::Release { reservation } => release(core, req.id, fp, reservation, now).await,
        Command::Extend {
            reservation,
            ttl_ms,
        } => extend(core, req.id, fp, reservation, ttl_ms, now).await,
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

/// Waits until the request's records (and `marker`, a record that closes the request's
/// group in the log, or 0) are durable, then builds its outcome.
pub(super) async fn committed(
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

/// A stock command checked (SKU id, the locations it names) and ready for its actor.
pub(super) fn stock_op(
    catalog: &Arc<crate::domain::Catalog>,
    (request, fp): (u128, u64),
    sku: &SkuId,
    cmd: SkuCommand,
    now: TimeMs,
) -> Result<SkuOp, Rejection> {
    sku.check()?;
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
        _ => {
            return Err(Rejection::invalid(
                "reservation commands are not stock commands",
            ))
        }
    }
    Ok(sku_op_with(
        cmd,
        (request, fp),
        catalog.clone(),
        now,
        Admit::New,
    ))
}
