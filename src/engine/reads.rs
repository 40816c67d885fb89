//! Reads: a SKU's view, explained ATP or whole state, answered from compact bytes for a passive SKU
//! (without activating it) or by its actor.

use std::sync::Arc;

use crate::domain::{AtpExplanation, ChannelId, SkuId, SkuState, SkuView};

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
