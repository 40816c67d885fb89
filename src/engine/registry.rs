//! The SKU registry: SKU id -> its actor (active) or its compact state (passive).
//!
//! A cold SKU costs only its compact bytes (varint bincode). On first use it is activated:
//! decoded and given an actor on one of the arbiters (round-robin, one arbiter per core).
//! Idleness is tracked without a timer per actor: each actor stores the sweeper's tick on
//! every message; one sweeper task (`sweep_idle`) asks actors idle for a whole
//! `passivate_after` to passivate. The actor re-checks and, under the registry's shard lock,
//! swaps its slot back to compact bytes, so no message can reach a stale actor unnoticed (a
//! late message is answered `Moved` and the caller looks the SKU up again).
//!
//! Mailbox bound: all callers `try_send` through the one `Addr` stored here (never a clone),
//! because actix tracks "mailbox full" per sender handle; a clone would be a fresh sender that
//! is never refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, ArbiterHandle, Handler, Message};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::codec;
use crate::domain::{Bucket, Catalog, Hold, ReservationId, SkuId, SkuState, Velocity};

use super::actor::{ActorShared, Counted, ReplyTo, SkuActor, SkuMsg, SkuOp};
use super::{Core, EngineError};

/// An active SKU's actor.
pub(crate) struct ActiveSlot {
    addr: Addr<SkuActor>,
    generation: u64,
    /// The sweep tick of the actor's last message (written by the actor, read by the
    /// sweeper) and its sold-out flag.
    shared: Arc<ActorShared>,
}

impl ActiveSlot {
    /// Whether a new hold may be refused without a message: the SKU sold out at its last
    /// change ([`ActorShared::sells_nothing`]) and no command is queued ahead of it.
    pub(crate) fn refuses_holds(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) == 0
            && self.shared.sells_nothing.load(Ordering::Acquire)
    }

    /// `try_send`s `msg` to the actor, counting it in [`ActorShared::queued`] while in
    /// flight if it carries a command (the actor counts it out once handled; a refused
    /// send is counted out here).
    pub(crate) fn try_send<M>(&self, msg: M) -> Result<(), actix::dev::SendError<M>>
    where
        M: Message<Result = ()> + Counted + Send + 'static,
        SkuActor: Handler<M>,
    {
        let counted = msg.has_command();
        if counted {
            self.shared.queued.fetch_add(1, Ordering::AcqRel);
        }
        let sent = self.addr.try_send(msg);
        if counted && sent.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// [`ActiveSlot::try_send`] that waits for room. A send that fails later means the
    /// actor stopped, and its count with it. A waiting send dropped before the mailbox took
    /// it stays counted: this actor then sends every hold to its mailbox (the safe side)
    /// until it passivates and a new actor starts from 0.
    pub(crate) fn send(&self, msg: SkuMsg) -> actix::dev::Request<SkuActor, SkuMsg> {
        if msg.has_command() {
            self.shared.queued.fetch_add(1, Ordering::AcqRel);
        }
        self.addr.send(msg)
    }

    /// Counts an answer given for the actor as its activity (the idle sweeper's tick).
    pub(crate) fn touch(&self, tick: u64) {
        self.shared.last_tick.store(tick, Ordering::Relaxed);
    }
}

/// Where a SKU lives. Boxed both ways so a registry entry stays small: most SKUs are passive.
pub(crate) enum Slot {
    /// It has an actor.
    Active(Box<ActiveSlot>),
    /// Only its compact state (buckets, holds, last seq, velocity; the id is the map key).
    Passive(Box<[u8]>),
}

/// SKU id -> slot.
pub(crate) struct Registry {
    map: DashMap<SkuId, Slot, foldhash::fast::RandomState>,
    arbiters: Vec<ArbiterHandle>,
    next_generation: AtomicU64,
    active: AtomicU64,
    /// Idle-sweep counter (see `sweep_idle`).
    tick: AtomicU64,
}

/// Re-points a decoded state's location ids at the catalog's shared ones.
fn intern(state: &mut SkuState, catalog: &Catalog) {
    for b in &mut state.buckets {
        if let Some(l) = catalog.location_id(b.location.as_str()) {
            b.location = l.clone();
        }
    }
    for h in state.holds.values_mut() {
        for a in &mut h.allocations {
            if let Some(l) = catalog.location_id(a.location.as_str()) {
                a.location = l.clone();
            }
        }
    }
}

/// A bucket in compact form: the location as its stable catalog number.
#[derive(serde::Serialize, serde::Deserialize)]
struct CompactBucket {
    location: u32,
    on_hand: u32,
    reserved: u32,
    safety_stock: u32,
    damaged: u32,
    quality_control: u32,
    incoming: u32,
    incoming_eta_ms: u64,
    shortfall: u32,
}

type Holds = std::collections::HashMap<ReservationId, Hold, foldhash::fast::RandomState>;

/// The compact form of a passive SKU: no id (it is the map key), locations as numbers.
#[derive(serde::Deserialize)]
struct Compact {
    buckets: Vec<CompactBucket>,
    holds: Holds,
    last_seq: u64,
    velocity: Velocity,
    /// Channels with a raised stockout projection.
    stockout: Vec<crate::domain::ChannelId>,
    /// Regions with a raised stockout projection.
    region_stockout: Vec<String>,
    /// The raised rebalance recommendation.
    rebalance: Option<Box<crate::domain::RaisedRebalance>>,
}

/// [`Compact`] for encoding, borrowing the holds.
#[derive(serde::Serialize)]
struct CompactRef<'a> {
    buckets: Vec<CompactBucket>,
    holds: &'a Holds,
    last_seq: u64,
    velocity: &'a Velocity,
    stockout: &'a [crate::domain::ChannelId],
    region_stockout: &'a [String],
    rebalance: &'a Option<Box<crate::domain::RaisedRebalance>>,
}

/// Decodes a passive SKU's compact bytes.
pub(crate) fn decode_passive(
    sku: &SkuId,
    bytes: &[u8],
    catalog: &Catalog,
) -> Result<SkuState, EngineError> {
    let corrupt = |m: String| EngineError::Corrupt(format!("passive state of {sku}: {m}"));
    let c: Compact = codec::decode_compact(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut buckets = Vec::with_capacity(c.buckets.len());
    for b in c.buckets {
        let location = usize::try_from(b.location)
            .ok()
            .and_then(|i| catalog.location_order.get(i))
            .ok_or_else(|| corrupt(format!("location number {}", b.location)))?
            .clone();
        buckets.push(Bucket {
            location,
            on_hand: b.on_hand,
            reserved: b.reserved,
            safety_stock: b.safety_stock,
            damaged: b.damaged,
            quality_control: b.quality_control,
            incoming: b.incoming,
            incoming_eta_ms: b.incoming_eta_ms,
            shortfall: b.shortfall,
        });
    }
    let mut s = SkuState {
        sku: sku.clone(),
        buckets,
        holds: c.holds,
        last_seq: c.last_seq,
        velocity: c.velocity,
        stockout: c.stockout,
        region_stockout: c.region_stockout,
        rebalance: c.rebalance,
    };
    intern(&mut s, catalog);
    Ok(s)
}

fn encode_passive(state: &SkuState, catalog: &Catalog) -> Result<Box<[u8]>, EngineError> {
    let corrupt = |m: String| EngineError::Corrupt(format!("passive state of {}: {m}", state.sku));
    let mut buckets = Vec::with_capacity(state.buckets.len());
    for b in &state.buckets {
        let location = catalog
            .location_number(&b.location)
            .ok_or_else(|| corrupt(format!("unknown location {}", b.location)))?;
        buckets.push(CompactBucket {
            location,
            on_hand: b.on_hand,
            reserved: b.reserved,
            safety_stock: b.safety_stock,
            damaged: b.damaged,
            quality_control: b.quality_control,
            incoming: b.incoming,
            incoming_eta_ms: b.incoming_eta_ms,
            shortfall: b.shortfall,
        });
    }
    let c = CompactRef {
        buckets,
        holds: &state.holds,
        last_seq: state.last_seq,
        velocity: &state.velocity,
        stockout: &state.stockout,
        region_stockout: &state.region_stockout,
        rebalance: &state.rebalance,
    };
    codec::encode_compact(&c)
        .map(Vec::into_boxed_slice)
        .map_err(|e| corrupt(e.to_string()))
}

impl Registry {
    pub(crate) fn new(arbiters: Vec<ArbiterHandle>) -> Self {
        Registry {
            map: DashMap::default(),
            arbiters,
            next_generation: AtomicU64::new(1),
            active: AtomicU64::new(0),
            tick: AtomicU64::new(0),
        }
    }

    /// The registry's own copy of the id `s` when that SKU is known: a reference count
    /// instead of a new allocation, and no validation (a key was valid when inserted).
    pub(crate) fn interned(&self, s: &str) -> Option<SkuId> {
        self.map.get(s).map(|e| e.key().clone())
    }

    /// Number of SKUs known.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The arbiters hosting SKU actors.
    pub(crate) fn arbiters(&self) -> &[ArbiterHandle] {
        &self.arbiters
    }

    /// Number of SKUs with an actor.
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Inserts a SKU as passive (recovery, bulk load). Replaces what was there.
    pub(crate) fn insert_passive(
        &self,
        state: &SkuState,
        catalog: &Catalog,
    ) -> Result<(), EngineError> {
        let bytes = encode_passive(state, catalog)?;
        if let Some(Slot::Active(_)) = self.map.insert(state.sku.clone(), Slot::Passive(bytes)) {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn start(&self, core: &Arc<Core>, mut state: SkuState) -> Slot {
        // `--intelligence`: not stored in compact bytes or checkpoints, so set on every
        // state that gets an actor (new, activated, recovered).
        state.velocity.set_recording(core.config.intelligence);
        state.intern_locations(&core.catalog());
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let arbiter = &self.arbiters[(generation as usize) % self.arbiters.len()];
        let core = core.clone();
        let shared = Arc::new(ActorShared::new(&state, self.tick()));
        let theirs = shared.clone();
        let addr = SkuActor::start_in_arbiter(arbiter, move |_| {
            SkuActor::new(state, core, generation, theirs)
        });
        self.active.fetch_add(1, Ordering::Relaxed);
        Slot::Active(Box::new(ActiveSlot {
            addr,
            generation,
            shared,
        }))
    }

    /// The idle sweeper's current tick.
    pub(crate) fn tick(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }

    /// One idle sweep: advances the tick and asks every actor idle for at least
    /// `idle_ticks` sweeps to passivate (it re-checks, so a message racing the sweep wins).
    /// A full mailbox just means the actor is not idle: skipped.
    pub(crate) fn sweep_idle(&self, idle_ticks: u64) -> usize {
        let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let mut asked = 0;
        for r in self.map.iter() {
            if let Slot::Active(a) = r.value() {
                let last = a.shared.last_tick.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= idle_ticks {
                    let (tx, _rx) = tokio::sync::oneshot::channel();
                    let op = SkuOp::Passivate { tick: last };
                    if a.try_send(SkuMsg {
                        op,
                        reply: ReplyTo::One(tx),
                    })
                    .is_ok()
                    {
                        asked += 1;
                    }
                }
            }
        }
        asked
    }

    /// Runs `f` with the SKU's active slot (its actor's address and shared flags),
    /// activating it if passive and creating it if absent and `create` is set.
    /// `Ok(None)`: unknown SKU.
    pub(crate) fn with_active<R>(
        &self,
        core: &Arc<Core>,
        sku: &SkuId,
        create: bool,
        f: impl FnOnce(&ActiveSlot) -> R,
    ) -> Result<Option<R>, EngineError> {
        if let Some(slot) = self.map.get(sku) {
            if let Slot::Active(a) = &*slot {
                return Ok(Some(f(a)));
            }
        }
        // Counted before taking the shard lock: `len` locks every shard (would deadlock).
        let full = create && self.map.len() >= core.config.max_skus;
        match self.map.entry(sku.clone()) {
            Entry::Occupied(mut o) => {
                if let Slot::Passive(bytes) = o.get() {
                    let state = decode_passive(sku, bytes, &core.catalog())?;
                    let slot = self.start(core, state);
                    o.insert(slot);
                }
                match o.get() {
                    Slot::Active(a) => Ok(Some(f(a))),
                    Slot::Passive(_) => unreachable!("invariant: activated just above"),
                }
            }
            Entry::Vacant(v) => {
                if !create {
                    return Ok(None);
                }
                if full {
                    return Err(EngineError::Limit(format!(
                        "at most {} SKUs (max_skus)",
                        core.config.max_skus
                    )));
                }
                let mut state = SkuState::new(sku.clone());
                state.velocity.configure(core.config.velocity_half_lives);
                let slot = v.insert(self.start(core, state));
                match &*slot {
                    Slot::Active(a) => Ok(Some(f(a))),
                    Slot::Passive(_) => unreachable!("invariant: inserted active"),
                }
            }
        }
    }

    /// The state of a passive SKU without activating it; `Ok(None)` if active or unknown.
    pub(crate) fn passive_state(
        &self,
        sku: &SkuId,
        catalog: &Catalog,
    ) -> Result<Option<SkuState>, EngineError> {
        match self.map.get(sku).as_deref() {
            Some(Slot::Passive(bytes)) => decode_passive(sku, bytes, catalog).map(Some),
            _ => Ok(None),
        }
    }

    /// Called by an idle actor: swaps its slot to compact bytes if it is still the one
    /// registered (same generation). Err: it was not (or encoding failed) — stay active.
    pub(crate) fn passivate(
        &self,
        state: &SkuState,
        generation: u64,
        catalog: &Catalog,
    ) -> Result<(), EngineError> {
        let mut slot = self
            .map
            .get_mut(&state.sku)
            .ok_or_else(|| EngineError::Corrupt("passivating an unknown sku".into()))?;
        match &*slot {
            Slot::Active(a) if a.generation == generation => {
                *slot = Slot::Passive(encode_passive(state, catalog)?);
                self.active.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(EngineError::Corrupt("stale actor".into())),
        }
    }

    /// Every SKU: its address if active, else its decoded state (checkpoints, iteration).
    pub(crate) fn for_each_slot(
        &self,
        catalog: &Catalog,
        mut f: impl FnMut(&SkuId, Result<SkuState, Addr<SkuActor>>),
    ) -> Result<(), EngineError> {
        for r in self.map.iter() {
            match r.value() {
                Slot::Active(a) => f(r.key(), Err(a.addr.clone())),
                Slot::Passive(bytes) => f(r.key(), Ok(decode_passive(r.key(), bytes, catalog)?)),
            }
        }
        Ok(())
    }

    /// Ids of every SKU starting with `prefix` (unordered).
    pub(crate) fn ids(&self, prefix: &str) -> Vec<SkuId> {
        self.map
            .iter()
            .filter(|r| r.key().as_str().starts_with(prefix))
            .map(|r| r.key().clone())
            .collect()
    }

    /// One page of the ids starting with `prefix`: see [`page_of`].
    pub(crate) fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<SkuId>, bool) {
        page_of(
            self.map.iter().map(|r| r.key().clone()),
            prefix,
            after,
            limit,
        )
    }

    /// Bytes of compact state held by passive SKUs (for memory accounting).
    pub(crate) fn passive_bytes(&self) -> usize {
        self.map
            .iter()
            .map(|r| match r.value() {
                Slot::Passive(b) => b.len(),
                Slot::Active(_) => 0,
            })
            .sum()
    }
}

/// The `limit` smallest ids of `ids` that start with `prefix` and sort after `after`, in
/// order, and whether more such ids follow. One pass over `ids`, holding at most
/// `limit + 1` of them (a bounded max-heap): a page costs memory by its size, not by the
/// number of SKUs the server knows.
pub(crate) fn page_of(
    ids: impl Iterator<Item = SkuId>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<SkuId>, bool) {
    let mut heap: std::collections::BinaryHeap<SkuId> =
        std::collections::BinaryHeap::with_capacity(limit.saturating_add(1).min(1024));
    for id in ids {
        let s = id.as_str();
        if !s.starts_with(prefix) || after.is_some_and(|a| s <= a) {
            continue;
        }
        if heap.len() <= limit {
            heap.push(id);
        } else if heap.peek().is_some_and(|top| id < *top) {
            heap.pop();
            heap.push(id);
        }
    }
    let mut page = heap.into_sorted_vec();
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against the obvious model: filter, sort, skip up to `after`, take `limit`.
        #[test]
        fn a_page_is_the_sorted_filtered_slice_after_the_cursor(
            names in proptest::collection::hash_set("[ab]{1,4}", 0..40),
            prefix in "[ab]{0,2}",
            after in proptest::option::of("[ab]{1,4}"),
            limit in 0usize..12,
        ) {
            let ids: Vec<SkuId> = names.iter().map(|n| SkuId::new(n).unwrap()).collect();
            let mut model: Vec<String> = names
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .filter(|n| after.as_ref().is_none_or(|a| n.as_str() > a.as_str()))
                .cloned()
                .collect();
            model.sort();
            let (page, more) = page_of(ids.into_iter(), &prefix, after.as_deref(), limit);
            let got: Vec<String> = page.iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(&got[..], &model[..limit.min(model.len())]);
            prop_assert_eq!(more, model.len() > limit);
        }
    }
}
