//! Reads: a SKU's view, explained ATP, velocity or whole state, answered from compact bytes
//! for a passive SKU (without activating it) or by its actor; and the lists over every SKU
//! (at risk per channel or per region, rebalance recommendations), all built by one scan
//! ([`scan`]) that asks each SKU a pure [`Probe`] and keeps a bounded selection.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::domain::{
    AtRisk, AtRiskList, AtRiskRegion, AtRiskRegionList, AtpExplanation, Catalog, ChannelId,
    ChannelVelocity, RebalanceList, RebalancePolicy, Recommendation, RegionVelocity, Rejection,
    SkuId, SkuState, SkuVelocity, SkuView, TimeMs,
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

/// Most active SKUs asked at once while a list over every SKU is built.
const SCAN_CONCURRENCY: usize = 256;

/// What a list over every SKU asks each SKU: a pure function of its state, run on the
/// passive SKU's decoded bytes or inside its actor (the same code either way).
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// Velocity and projection on one channel.
    Channel(ChannelId),
    /// Velocity and projection in one region.
    Region(String),
    /// The rebalance recommendation under a policy.
    Rebalance(RebalancePolicy),
}

/// A SKU's answer to a [`Probe`].
#[derive(Debug)]
pub(crate) enum Probed {
    /// For [`Probe::Channel`].
    Channel(ChannelVelocity),
    /// For [`Probe::Region`]: `None` when the SKU has neither stock nor demand there.
    Region(Option<RegionVelocity>),
    /// For [`Probe::Rebalance`]: `None` when no transfer is worth making.
    Rebalance(Option<Recommendation>),
}

impl Probe {
    /// Runs the probe on one SKU's state.
    pub(crate) fn run(
        &self,
        state: &SkuState,
        catalog: &Catalog,
        now_ms: TimeMs,
    ) -> Result<Probed, Rejection> {
        Ok(match self {
            Probe::Channel(c) => Probed::Channel(state.channel_velocity(catalog, c, now_ms)?),
            Probe::Region(r) => Probed::Region(
                state
                    .region_velocities(catalog, now_ms)
                    .into_iter()
                    .find(|v| v.region == *r),
            ),
            Probe::Rebalance(p) => Probed::Rebalance(state.rebalance(catalog, p, now_ms)),
        })
    }
}

/// Asks every SKU `probe` at `now_ms` and hands each answer to `sink` as it comes: passive
/// SKUs from their compact bytes (not activated), active ones through their mailbox
/// (waiting for room), [`SCAN_CONCURRENCY`] at a time. O(SKUs) work, memory O(active SKUs'
/// ids) plus what `sink` keeps. A SKU removed between the listing and the question is
/// skipped; a rejection of the probe (an unknown channel) stops the scan.
async fn scan(
    core: &Arc<Core>,
    catalog: &Arc<Catalog>,
    probe: &Probe,
    now_ms: TimeMs,
    mut sink: impl FnMut(&SkuId, Probed),
) -> Result<(), Failure> {
    let mut active = Vec::new();
    let mut failed = None;
    core.registry
        .for_each_slot(catalog, |sku, slot| match slot {
            Ok(state) => match probe.run(&state, catalog, now_ms) {
                Ok(p) => sink(sku, p),
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
            let op = SkuOp::Probe {
                catalog: catalog.clone(),
                probe: probe.clone(),
                now_ms,
            };
            async move { (call(&core, &sku, op, false, Delivery::Wait).await, sku) }
        })
        .buffer_unordered(SCAN_CONCURRENCY);
    while let Some((answer, sku)) = answers.next().await {
        match answer {
            Ok(SkuReply::Probed(p)) => sink(&sku, *p),
            // Removed between the listing and the question: nothing to list.
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
    Ok(())
}

/// The `limit` SKUs whose stockout on `channel` comes first in window `window`, at `now_ms`,
/// over every SKU ([`scan`]). An unknown channel, a window or limit out of range are
/// refused before any SKU is read.
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
    let probe = Probe::Channel(channel.clone());
    scan(core, &catalog, &probe, now_ms, |sku, p| {
        if let Probed::Channel(v) = p {
            list.offer(sku, v)
        }
    })
    .await?;
    Ok(list.into_vec())
}

/// Refuses a region no location of the catalog is in (a typo would list nothing).
fn known_region(catalog: &Catalog, region: &str) -> Result<(), Rejection> {
    if catalog.locations.values().any(|l| l.region == region) {
        return Ok(());
    }
    Err(Rejection::invalid(format!(
        "no location of the catalog is in region {region:?}"
    )))
}

/// The `limit` SKUs whose stockout in `region` (its locations' exposed ATP against their
/// summed demand) comes first in window `window`, over every SKU ([`scan`]). A region no
/// location is in, a window or limit out of range are refused before any SKU is read.
pub(crate) async fn at_risk_region(
    core: &Arc<Core>,
    region: &str,
    window: usize,
    limit: usize,
    now_ms: TimeMs,
) -> Result<Vec<AtRiskRegion>, Failure> {
    let catalog = core.catalog();
    known_region(&catalog, region)?;
    let mut list = AtRiskRegionList::new(window, limit).map_err(Rejection::invalid)?;
    let probe = Probe::Region(region.to_string());
    scan(core, &catalog, &probe, now_ms, |sku, p| {
        if let Probed::Region(Some(v)) = p {
            list.offer(sku, v)
        }
    })
    .await?;
    Ok(list.into_vec())
}

/// Rebalance recommendations under `policy` at `now_ms`: of one SKU (at most one; an
/// unknown SKU is refused), or the `limit` with the least cover over every SKU
/// ([`scan`]); with `region`, only those whose short region is that one (a region no
/// location is in is refused).
pub(crate) async fn rebalance(
    core: &Arc<Core>,
    sku: Option<&SkuId>,
    region: Option<&str>,
    policy: RebalancePolicy,
    limit: usize,
    now_ms: TimeMs,
) -> Result<Vec<Recommendation>, Failure> {
    let catalog = core.catalog();
    if let Some(r) = region {
        known_region(&catalog, r)?;
    }
    let mut list =
        RebalanceList::new(region.map(str::to_string), limit).map_err(Rejection::invalid)?;
    let probe = Probe::Rebalance(policy);
    match sku {
        Some(sku) => {
            let p = match core.registry.passive_state(sku, &catalog)? {
                Some(s) => probe.run(&s, &catalog, now_ms)?,
                None => {
                    let op = SkuOp::Probe {
                        catalog: catalog.clone(),
                        probe,
                        now_ms,
                    };
                    match call(core, sku, op, false, Delivery::Try).await? {
                        SkuReply::Probed(p) => *p,
                        SkuReply::Rejected(r) => return Err(r.into()),
                        other => {
                            return Err(EngineError::Corrupt(format!(
                                "unexpected actor reply {other:?}"
                            ))
                            .into())
                        }
                    }
                }
            };
            if let Probed::Rebalance(Some(r)) = p {
                list.offer(r);
            }
        }
        None => {
            scan(core, &catalog, &probe, now_ms, |_, p| {
                if let Probed::Rebalance(Some(r)) = p {
                    list.offer(r)
                }
            })
            .await?
        }
    }
    Ok(list.into_vec())
}
