//! Reads: a SKU's view, explained ATP, velocity or whole state, answered from compact bytes
//! for a passive SKU (without activating it) or by its actor; the at-risk list of a channel
//! over every SKU.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::domain::{
    AtRisk, AtRiskList, AtpExplanation, Catalog, ChannelId, Rejection, SkuId, SkuState,
    SkuVelocity, SkuView, TimeMs,
};

use super::actor::{SkuOp, SkuReply};
use super::api::Failure;
use super::delivery::*;
use super::{Core, EngineError};

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

/// Explains `channel`'s ATP for `sku` with the same catalog snapshot the SKU is read with.
/// An unknown channel is rejected before the SKU is looked up (no actor is asked).
pub(crate) async fn explain(
    core: &Arc<Core>,
    sku: &SkuId,
    channel: &ChannelId,
) -> Result<AtpExplanation, Failure> {
    let catalog = core.catalog();
    catalog.channel(channel)?;
    if let Some(s) = core.registry.passive_state(sku, &catalog)? {
        return Ok(s.explain(&catalog, channel)?);
    }
    let op = SkuOp::Explain {
        catalog,
        channel: channel.clone(),
    };
    match call(core, sku, op, false, Delivery::Try).await? {
        SkuReply::Explained(e) => Ok(*e),
        SkuReply::Rejected(r) => Err(r.into()),
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

/// The velocity of `channel` on `state`, or of every channel and region (a passive SKU is
/// read with the same function).
pub(crate) fn velocities(
    state: &SkuState,
    catalog: &Catalog,
    channel: Option<&ChannelId>,
    now_ms: TimeMs,
) -> Result<SkuVelocity, Rejection> {
    match channel {
        Some(c) => Ok(SkuVelocity {
            channels: vec![state.channel_velocity(catalog, c, now_ms)?],
            regions: Vec::new(),
        }),
        None => Ok(SkuVelocity {
            channels: state.velocities(catalog, now_ms),
            regions: state.region_velocities(catalog, now_ms),
        }),
    }
}

/// The demand velocity and projected stockout of `sku` at `now_ms` on every channel of the
/// catalog and in every region where it has stock or had demand. Does not activate a
/// passive SKU.
pub(crate) async fn velocity(
    core: &Arc<Core>,
    sku: &SkuId,
    now_ms: TimeMs,
) -> Result<SkuVelocity, Failure> {
    let catalog = core.catalog();
    if let Some(s) = core.registry.passive_state(sku, &catalog)? {
        return Ok(velocities(&s, &catalog, None, now_ms)?);
    }
    let op = SkuOp::Velocity {
        catalog,
        channel: None,
        now_ms,
    };
    match call(core, sku, op, false, Delivery::Try).await? {
        SkuReply::Velocity(v) => Ok(*v),
        SkuReply::Rejected(r) => Err(r.into()),
        other => Err(EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into()),
    }
}

/// Most active SKUs asked for their velocity at once while an at-risk list is built.
const AT_RISK_CONCURRENCY: usize = 256;

/// The `limit` SKUs whose stockout on `channel` comes first in window `window`, at `now_ms`,
/// over every SKU (passive ones from their compact bytes, active ones by their actor,
/// waiting for mailbox room, 256 at a time, each answer offered as it comes): O(SKUs) work,
/// memory O(limit + active SKUs' ids). An unknown
/// channel, a window or limit out of range are refused before any SKU is read.
pub(crate) async fn at_risk(
    core: &Arc<Core>,
    channel: &ChannelId,
    window: usize,
    limit: usize,
    now_ms: TimeMs,
) -> Result<Vec<AtRisk>, Failure> {
    let catalog = core.catalog();
    catalog.channel(channel)?;
    let mut list = AtRiskList::new(window, limit).map_err(Rejection::invalid)?;
    let mut active = Vec::new();
    let mut failed = None;
    core.registry
        .for_each_slot(&catalog, |sku, slot| match slot {
            Ok(state) => match state.channel_velocity(&catalog, channel, now_ms) {
                Ok(v) => list.offer(sku, v),
                Err(r) => failed = Some(r),
            },
            Err(_) => active.push(sku.clone()),
        })?;
    if let Some(r) = failed {
        return Err(r.into());
    }
    let mut answers = stream::iter(active)
        .map(|sku| {
            let core = core.clone();
            let op = SkuOp::Velocity {
                catalog: catalog.clone(),
                channel: Some(channel.clone()),
                now_ms,
            };
            async move { (call(&core, &sku, op, false, Delivery::Wait).await, sku) }
        })
        .buffer_unordered(AT_RISK_CONCURRENCY);
    while let Some((answer, sku)) = answers.next().await {
        match answer {
            Ok(SkuReply::Velocity(mut v)) if v.channels.len() == 1 => {
                list.offer(&sku, v.channels.remove(0))
            }
            // Removed between the listing and the question: not at risk.
            Err(Failure::Rejected(Rejection::UnknownSku(_))) => {}
            Ok(SkuReply::Rejected(r)) => return Err(r.into()),
            Ok(other) => {
                return Err(
                    EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into(),
                )
            }
            Err(e) => return Err(e),
        }
    }
    Ok(list.into_vec())
}
