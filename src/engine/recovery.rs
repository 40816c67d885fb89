//! Recovery: rebuilds the engine's state from the latest checkpoint plus the log records
//! after it, through the same `SkuState::apply` and `Catalog::apply` as the live path.
//!
//! The checkpoint is fuzzy (taken while reservations continue), so replay is idempotent per
//! entity: a record is applied to a SKU only if its sequence number is above that SKU's
//! `last_seq` (likewise for the catalog). This module is pure: it reads decoded bytes and
//! returns state; the WAL (sled) and the actors live elsewhere.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Seeded fast hasher for the replay maps (SipHash showed in the recovery profile).
type Fast = foldhash::fast::RandomState;

use crate::codec;
use crate::domain::{
    Catalog, Event, HalfLives, ReleaseReason, RequestId, ReservationId, SkuCommand, SkuId,
    SkuState, TimeMs, VelocityV6,
};

use super::api::{Change, Outcome};
use super::journal::{LogRecord, RecordBody};
use super::EngineError;
use crate::feed::{self, hub::Slot, FeedBody, FeedRecord};

/// Checkpoint format version. 4 added each SKU's demand velocity (`SkuState::velocity`);
/// 5 the stockout projections: the catalog's thresholds (`Catalog::stockout_hours`) and
/// each SKU's raised flags (`SkuState::stockout`); 6 each SKU's raised region stockout
/// flags (`SkuState::region_stockout`) and rebalance recommendation
/// (`SkuState::rebalance`); 7 stores each SKU's velocity scaled to one epoch
/// (`Velocity`: an epoch and a latest time per SKU, no time per entry).
pub const CHECKPOINT_VERSION: u32 = 7;

/// The format before the velocity's epoch, still read: each SKU's velocity entries carry
/// their own time ([`VelocityV6`]) and are brought to one epoch when read.
pub const CHECKPOINT_VERSION_DECAYED_VELOCITY: u32 = 6;

/// A SKU in a version 6 checkpoint: [`SkuState`] with its velocity in the old form.
#[derive(Serialize, Deserialize)]
pub struct SkuStateV6 {
    /// The SKU.
    pub sku: SkuId,
    /// Its buckets.
    pub buckets: Vec<crate::domain::Bucket>,
    /// Its holds.
    pub holds: HashMap<ReservationId, crate::domain::Hold, Fast>,
    /// Its last applied sequence number.
    pub last_seq: u64,
    /// Its velocity, each entry decayed to its own time.
    pub velocity: VelocityV6,
    /// Its raised stockout flags per channel.
    pub stockout: Vec<crate::domain::ChannelId>,
    /// Its raised stockout flags per region.
    pub region_stockout: Vec<String>,
    /// Its raised rebalance recommendation.
    pub rebalance: Option<Box<crate::domain::RaisedRebalance>>,
}

/// A version 6 checkpoint.
#[derive(Serialize, Deserialize)]
pub struct CheckpointStateV6 {
    /// 6.
    pub version: u32,
    /// Locations and channels (as today).
    pub catalog: Catalog,
    /// Every SKU.
    pub skus: Vec<SkuStateV6>,
    /// Remembered request ids.
    pub idempotency: Vec<IdemRecord>,
}

impl From<CheckpointStateV6> for CheckpointState {
    fn from(c: CheckpointStateV6) -> Self {
        let skus = c
            .skus
            .into_iter()
            .map(|s| SkuState {
                holds: s.holds,
                buckets: s.buckets,
                last_seq: s.last_seq,
                velocity: s.velocity.into(),
                stockout: s.stockout,
                region_stockout: s.region_stockout,
                rebalance: s.rebalance,
                ..SkuState::new(s.sku)
            })
            .collect();
        CheckpointState {
            version: CHECKPOINT_VERSION,
            catalog: c.catalog,
            skus,
            idempotency: c.idempotency,
        }
    }
}

/// The format before region stockouts and raised recommendations, still read: its SKUs
/// start with neither (the records replayed after it raise them again).
pub const CHECKPOINT_VERSION_NO_REBALANCE: u32 = 5;

/// A SKU in a version 5 checkpoint: [`SkuState`] without its region flags and
/// recommendation.
#[derive(Serialize, Deserialize)]
pub struct SkuStateV5 {
    /// The SKU.
    pub sku: SkuId,
    /// Its buckets.
    pub buckets: Vec<crate::domain::Bucket>,
    /// Its holds.
    pub holds: HashMap<ReservationId, crate::domain::Hold, Fast>,
    /// Its last applied sequence number.
    pub last_seq: u64,
    /// Its velocity (the old form).
    pub velocity: VelocityV6,
    /// Its raised stockout flags per channel.
    pub stockout: Vec<crate::domain::ChannelId>,
}

/// A version 5 checkpoint.
#[derive(Serialize, Deserialize)]
pub struct CheckpointStateV5 {
    /// 5.
    pub version: u32,
    /// Locations and channels (as today).
    pub catalog: Catalog,
    /// Every SKU.
    pub skus: Vec<SkuStateV5>,
    /// Remembered request ids.
    pub idempotency: Vec<IdemRecord>,
}

impl From<CheckpointStateV5> for CheckpointStateV6 {
    fn from(c: CheckpointStateV5) -> Self {
        let skus = c
            .skus
            .into_iter()
            .map(|s| SkuStateV6 {
                sku: s.sku,
                buckets: s.buckets,
                holds: s.holds,
                last_seq: s.last_seq,
                velocity: s.velocity,
                stockout: s.stockout,
                region_stockout: Vec::new(),
                rebalance: None,
            })
            .collect();
        CheckpointStateV6 {
            version: CHECKPOINT_VERSION_DECAYED_VELOCITY,
            catalog: c.catalog,
            skus,
            idempotency: c.idempotency,
        }
    }
}

impl From<CheckpointStateV5> for CheckpointState {
    fn from(c: CheckpointStateV5) -> Self {
        CheckpointStateV6::from(c).into()
    }
}

/// The format before stockout projections, still read: no thresholds, no flags (the
/// release before had neither).
pub const CHECKPOINT_VERSION_NO_STOCKOUT: u32 = 4;

/// The catalog as formats 3 and 4 store it: [`Catalog`] without `stockout_hours`.
#[derive(Serialize, Deserialize)]
pub struct CatalogV4 {
    /// Locations.
    pub locations: std::collections::BTreeMap<crate::domain::LocationId, crate::domain::Location>,
    /// Channels.
    pub channels: std::collections::BTreeMap<crate::domain::ChannelId, crate::domain::Channel>,
    /// Last applied sequence number.
    pub last_seq: u64,
    /// Locations in creation order.
    pub location_order: Vec<crate::domain::LocationId>,
    /// Low-stock thresholds per channel.
    pub low_stock: std::collections::BTreeMap<crate::domain::ChannelId, u32>,
    /// Per-SKU low-stock overrides.
    pub low_stock_sku: std::collections::BTreeMap<
        SkuId,
        std::collections::BTreeMap<crate::domain::ChannelId, u32>,
    >,
}

impl From<CatalogV4> for Catalog {
    fn from(c: CatalogV4) -> Self {
        Catalog {
            locations: c.locations,
            channels: c.channels,
            last_seq: c.last_seq,
            location_order: c.location_order,
            low_stock: c.low_stock,
            low_stock_sku: c.low_stock_sku,
            ..Catalog::default()
        }
    }
}

/// A SKU in a version 4 checkpoint: [`SkuState`] without its stockout flags.
#[derive(Serialize, Deserialize)]
pub struct SkuStateV4 {
    /// The SKU.
    pub sku: SkuId,
    /// Its buckets.
    pub buckets: Vec<crate::domain::Bucket>,
    /// Its holds.
    pub holds: HashMap<ReservationId, crate::domain::Hold, Fast>,
    /// Its last applied sequence number.
    pub last_seq: u64,
    /// Its velocity (the old form).
    pub velocity: VelocityV6,
}

/// A version 4 checkpoint.
#[derive(Serialize, Deserialize)]
pub struct CheckpointStateV4 {
    /// 4.
    pub version: u32,
    /// Locations and channels.
    pub catalog: CatalogV4,
    /// Every SKU.
    pub skus: Vec<SkuStateV4>,
    /// Remembered request ids.
    pub idempotency: Vec<IdemRecord>,
}

impl From<CheckpointStateV4> for CheckpointStateV5 {
    fn from(c: CheckpointStateV4) -> Self {
        let skus = c
            .skus
            .into_iter()
            .map(|s| SkuStateV5 {
                sku: s.sku,
                buckets: s.buckets,
                holds: s.holds,
                last_seq: s.last_seq,
                velocity: s.velocity,
                stockout: Vec::new(),
            })
            .collect();
        CheckpointStateV5 {
            version: CHECKPOINT_VERSION_NO_REBALANCE,
            catalog: c.catalog.into(),
            skus,
            idempotency: c.idempotency,
        }
    }
}

impl From<CheckpointStateV4> for CheckpointState {
    fn from(c: CheckpointStateV4) -> Self {
        CheckpointStateV5::from(c).into()
    }
}

/// The format before velocity, still read (a checkpoint written by the previous release):
/// its SKUs start without velocity, which the records replayed after it rebuild (demand
/// older than the checkpoint is not in the log any more, so it is lost once, at the upgrade).
pub const CHECKPOINT_VERSION_NO_VELOCITY: u32 = 3;

/// A SKU in a version 3 checkpoint: [`SkuState`] without its velocity.
#[derive(Serialize, Deserialize)]
pub struct SkuStateV3 {
    /// The SKU.
    pub sku: SkuId,
    /// Its buckets.
    pub buckets: Vec<crate::domain::Bucket>,
    /// Its holds.
    pub holds: HashMap<ReservationId, crate::domain::Hold, Fast>,
    /// Its last applied sequence number.
    pub last_seq: u64,
}

/// A version 3 checkpoint.
#[derive(Serialize, Deserialize)]
pub struct CheckpointStateV3 {
    /// 3.
    pub version: u32,
    /// Locations and channels.
    pub catalog: CatalogV4,
    /// Every SKU.
    pub skus: Vec<SkuStateV3>,
    /// Remembered request ids.
    pub idempotency: Vec<IdemRecord>,
}

impl From<CheckpointStateV3> for CheckpointState {
    fn from(c: CheckpointStateV3) -> Self {
        let skus = c
            .skus
            .into_iter()
            .map(|s| SkuState {
                holds: s.holds,
                buckets: s.buckets,
                last_seq: s.last_seq,
                ..SkuState::new(s.sku)
            })
            .collect();
        CheckpointState {
            version: CHECKPOINT_VERSION,
            catalog: c.catalog.into(),
            skus,
            idempotency: c.idempotency,
        }
    }
}

/// One remembered request in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    /// When it was accepted.
    pub at_ms: TimeMs,
    /// Its id.
    pub id: RequestId,
    /// Its command's fingerprint.
    pub fingerprint: u64,
    /// Its outcome.
    pub outcome: Outcome,
}

/// Everything a checkpoint holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Format version ([`CHECKPOINT_VERSION`]).
    pub version: u32,
    /// Locations and channels.
    pub catalog: Catalog,
    /// Every SKU (reservations are their holds; the index is rebuilt from them).
    pub skus: Vec<SkuState>,
    /// Remembered request ids, oldest first.
    pub idempotency: Vec<IdemRecord>,
}

/// What recovery rebuilt.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Locations and channels.
    pub catalog: Catalog,
    /// Every SKU.
    pub skus: Vec<SkuState>,
    /// Accepted requests to remember, oldest first.
    pub idempotency: Vec<IdemRecord>,
    /// Records recovery decided itself, already applied to `skus` (and counted in
    /// `idempotency`), to be appended to the log at `last_seq + 1, + 2, ...` before the
    /// engine serves: the missing parts of multi-SKU operations a crash cut (roll
    /// forward), and the release of carts that were never acknowledged (roll back).
    pub completions: Vec<LogRecord>,
    /// Multi-SKU operations finished by `completions` (roll forward).
    pub rolled_forward: usize,
    /// Unacknowledged multi-SKU carts released by `completions` (roll back).
    pub rolled_back: usize,
    /// Records replayed after the checkpoint.
    pub records_replayed: u64,
    /// Records skipped because the checkpoint already contained them.
    pub records_skipped: u64,
    /// Highest sequence number seen.
    pub last_seq: u64,
    /// Feed records of the last records replayed (at most the retention asked for),
    /// contiguous up to `last_seq`: subscribers resume from them after a restart.
    pub feed: VecDeque<(u64, Slot)>,
}

/// The SKU a change is about (catalog changes sort first).
fn change_sku(c: &Change) -> Option<&SkuId> {
    match c {
        Change::Sku { sku, .. } => Some(sku),
        Change::Catalog(_) => None,
    }
}

/// Decodes a checkpoint of the current version, of version 6 (the velocity without its
/// epoch), of version 5 (without region stockouts
/// and raised recommendations), of version 4 (without stockout
/// projections) or of version 3 (without velocity either). The
/// version is the first field, a fixed-width little-endian `u32`, so it is read first and
/// decides the layout.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointState, EngineError> {
    let bad = |e: String| EngineError::Corrupt(format!("checkpoint does not decode: {e}"));
    let version = bytes
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| bad("shorter than its version".into()))?;
    let c: CheckpointState = match version {
        CHECKPOINT_VERSION => codec::decode_large(bytes).map_err(|e| bad(e.to_string()))?,
        CHECKPOINT_VERSION_DECAYED_VELOCITY => codec::decode_large::<CheckpointStateV6>(bytes)
            .map_err(|e| bad(e.to_string()))?
            .into(),
        CHECKPOINT_VERSION_NO_REBALANCE => codec::decode_large::<CheckpointStateV5>(bytes)
            .map_err(|e| bad(e.to_string()))?
            .into(),
        CHECKPOINT_VERSION_NO_STOCKOUT => codec::decode_large::<CheckpointStateV4>(bytes)
            .map_err(|e| bad(e.to_string()))?
            .into(),
        CHECKPOINT_VERSION_NO_VELOCITY => codec::decode_large::<CheckpointStateV3>(bytes)
            .map_err(|e| bad(e.to_string()))?
            .into(),
        v => {
            return Err(EngineError::Corrupt(format!(
                "checkpoint version {v} is not supported (expected {CHECKPOINT_VERSION}, \
                 {CHECKPOINT_VERSION_DECAYED_VELOCITY}, {CHECKPOINT_VERSION_NO_REBALANCE}, \
                 {CHECKPOINT_VERSION_NO_STOCKOUT} or {CHECKPOINT_VERSION_NO_VELOCITY})"
            )))
        }
    };
    debug_assert_eq!(c.version, CHECKPOINT_VERSION);
    Ok(c)
}

/// Decodes one log record.
pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<LogRecord, EngineError> {
    codec::decode(bytes)
        .map_err(|e| EngineError::Corrupt(format!("log record {seq} does not decode: {e}")))
}

struct Replay {
    catalog: Catalog,
    skus: HashMap<SkuId, SkuState, Fast>,
    idem: HashMap<RequestId, IdemRecord, Fast>,
    idem_order: Vec<RequestId>,
    /// Multi-SKU cart reservation -> the request that placed it (to forget aborted carts).
    cart_request: HashMap<ReservationId, RequestId, Fast>,
    aborted_requests: HashSet<RequestId, Fast>,
    /// Multi-SKU carts whose holds are in the log but whose `CartPlaced` is not (yet):
    /// reservation -> (request, at_ms).
    tentative_carts: HashMap<ReservationId, (RequestId, TimeMs), Fast>,
    /// Multi-SKU reservation operations begun (`OpBegun`) whose parts are not all in the log.
    pending_ops: HashMap<ReservationId, PendingOp, Fast>,
    /// Requests whose outcome the checkpoint holds.
    checkpointed_requests: HashSet<RequestId, Fast>,
    /// Records from here on are derived for the feed (none of them is in the checkpoint).
    feed_start: u64,
    feed_retention: usize,
    feed: VecDeque<(u64, Slot)>,
    /// Velocity windows of every SKU (a checkpoint made with others is forgotten).
    half_lives: HalfLives,
}

/// A multi-SKU reservation operation whose parts are not all logged yet.
struct PendingOp {
    begun_seq: u64,
    at_ms: TimeMs,
    request: RequestId,
    fingerprint: u64,
    /// The parts not logged yet.
    missing: Vec<(SkuId, SkuCommand)>,
}

/// The reservation an event ends or changes (not a placement).
fn touched_reservation(e: &Event) -> Option<ReservationId> {
    match e {
        Event::HoldFulfilled { reservation, .. }
        | Event::HoldReleased { reservation, .. }
        | Event::HoldExtended { reservation, .. } => Some(*reservation),
        _ => None,
    }
}

impl Replay {
    /// Follows the multi-SKU groups: carts placed or not, operations begun and their parts.
    /// Runs for every record, also the ones the checkpoint already contains (a part is
    /// present in the log whether or not it must be applied again).
    fn track_groups(&mut self, seq: u64, rec: &LogRecord) {
        match &rec.body {
            RecordBody::OpBegun { reservation, parts } => {
                self.pending_ops.insert(
                    *reservation,
                    PendingOp {
                        begun_seq: seq,
                        at_ms: rec.at_ms,
                        request: rec.request,
                        fingerprint: rec.fingerprint,
                        missing: parts.clone(),
                    },
                );
            }
            RecordBody::CartPlaced { reservation } => {
                self.tentative_carts.remove(reservation);
            }
            RecordBody::Sku { sku, events } => {
                for e in events {
                    if let Event::HoldPlaced {
                        reservation,
                        cart_skus,
                        ..
                    } = e
                    {
                        if *cart_skus > 1 {
                            self.tentative_carts
                                .insert(*reservation, (rec.request, rec.at_ms));
                        } else {
                            // A new reservation with this id: an earlier cart of the id ended.
                            self.tentative_carts.remove(reservation);
                        }
                    }
                    let Some(r) = touched_reservation(e) else {
                        continue;
                    };
                    if let Some(p) = self.pending_ops.get_mut(&r) {
                        p.missing.retain(|(s, _)| s != sku);
                        if p.missing.is_empty() {
                            self.pending_ops.remove(&r);
                        }
                    }
                }
            }
            RecordBody::Catalog(_) => {}
        }
    }

    /// Remembers `changes` as (part of) the outcome of `request` (not 0).
    fn remember(
        &mut self,
        seq: u64,
        at_ms: TimeMs,
        request: RequestId,
        fingerprint: u64,
        changes: Vec<Change>,
    ) {
        // A request the checkpoint remembers had finished before its copy: its outcome
        // there is whole, and its records in the log would only repeat changes.
        if request == 0 || self.checkpointed_requests.contains(&request) {
            return;
        }
        let entry = self.idem.entry(request).or_insert_with(|| {
            self.idem_order.push(request);
            IdemRecord {
                at_ms,
                id: request,
                fingerprint,
                outcome: Outcome {
                    seq,
                    changes: Vec::new(),
                },
            }
        });
        entry.outcome.seq = entry.outcome.seq.max(seq);
        entry.outcome.changes.extend(changes);
    }

    /// Decides `cmd` on `sku` at `at_ms`, applies it at `seq` and returns the record to
    /// append, or `None` (with a warning) when the SKU refuses: then the live engine had
    /// refused it too, and the state stays as the live engine left it.
    fn complete(
        &mut self,
        seq: u64,
        at_ms: TimeMs,
        request: RequestId,
        fingerprint: u64,
        sku: &SkuId,
        cmd: &SkuCommand,
    ) -> Option<LogRecord> {
        let Some(state) = self.skus.get_mut(sku) else {
            tracing::warn!(%sku, "recovery: a multi-SKU operation names a SKU that does not exist");
            return None;
        };
        let events = match state.decide(cmd, &self.catalog, at_ms) {
            Ok(ev) => ev,
            Err(r) => {
                tracing::warn!(%sku, "recovery: finishing a cut operation was refused: {r}");
                return None;
            }
        };
        let before = feed::before(&self.catalog, state, &events);
        for e in &events {
            state.apply(e, seq, at_ms);
        }
        let f = feed::derive(&self.catalog, before, state, &events, seq, at_ms);
        self.keep_feed(seq, || f);
        let changes = events
            .iter()
            .map(|event| Change::Sku {
                sku: sku.clone(),
                event: event.clone(),
            })
            .collect();
        self.remember(seq, at_ms, request, fingerprint, changes);
        Some(LogRecord {
            at_ms,
            request,
            fingerprint,
            body: RecordBody::Sku {
                sku: sku.clone(),
                events,
            },
        })
    }

    /// Applies one record; false if the checkpoint already contained it.
    fn record(&mut self, seq: u64, rec: LogRecord) -> bool {
        self.track_groups(seq, &rec);
        let (fresh, changes): (bool, Vec<Change>) = match rec.body {
            RecordBody::OpBegun { .. } | RecordBody::CartPlaced { .. } => {
                // Markers: nothing to apply, nothing for subscribers (but the position).
                self.keep_slot(seq, None);
                return true;
            }
            RecordBody::Catalog(ev) => {
                let fresh = seq > self.catalog.last_seq;
                if fresh {
                    self.catalog.apply(&ev, seq);
                    self.keep_feed(seq, || FeedRecord::new(seq, rec.at_ms, FeedBody::Catalog));
                }
                (fresh, vec![Change::Catalog(ev)])
            }
            RecordBody::Sku { sku, events } => {
                let state = self.skus.entry(sku.clone()).or_insert_with(|| {
                    let mut s = SkuState::new(sku.clone());
                    s.velocity.configure(self.half_lives);
                    s
                });
                // Already in the checkpoint's state (fuzzy checkpoint): not applied again,
                // but still part of its request's outcome and cart history below.
                let fresh = seq > state.last_seq;
                if fresh {
                    let derive = seq >= self.feed_start;
                    let before = derive.then(|| feed::before(&self.catalog, state, &events));
                    for e in &events {
                        state.apply(e, seq, rec.at_ms);
                    }
                    if let Some(b) = before {
                        let f = feed::derive(&self.catalog, b, state, &events, seq, rec.at_ms);
                        self.keep_feed(seq, || f);
                    }
                }
                for e in &events {
                    self.track_cart(e, rec.request);
                }
                let changes = events
                    .into_iter()
                    .map(|event| Change::Sku {
                        sku: sku.clone(),
                        event,
                    })
                    .collect();
                (fresh, changes)
            }
        };
        self.remember(seq, rec.at_ms, rec.request, rec.fingerprint, changes);
        fresh
    }

    fn keep_feed(&mut self, seq: u64, f: impl FnOnce() -> FeedRecord) {
        if seq < self.feed_start || self.feed_retention == 0 {
            return;
        }
        self.keep_slot(seq, Some(Arc::new(f())));
    }

    fn keep_slot(&mut self, seq: u64, slot: Slot) {
        if seq < self.feed_start || self.feed_retention == 0 {
            return;
        }
        self.feed.push_back((seq, slot));
        if self.feed.len() > self.feed_retention {
            self.feed.pop_front();
        }
    }

    fn track_cart(&mut self, e: &Event, request: RequestId) {
        match e {
            Event::HoldPlaced {
                reservation,
                cart_skus,
                ..
            } if *cart_skus > 1 => {
                self.cart_request.insert(*reservation, request);
            }
            Event::HoldReleased {
                reservation,
                reason: ReleaseReason::CartAborted | ReleaseReason::Recovery,
                ..
            } => {
                if let Some(r) = self.cart_request.get(reservation) {
                    self.aborted_requests.insert(*r);
                }
            }
            _ => {}
        }
    }
}

/// Rebuilds state from an optional checkpoint and the records after it (in sequence order).
/// `progress` is called every `progress_every` records with (records so far, last seq).
/// The feed records of the last `feed_retention` records are derived on the way. Every SKU's
/// demand velocity uses `half_lives` (one the checkpoint holds with other half-lives is
/// forgotten, then rebuilt from the records after it).
pub fn recover<E: std::fmt::Display>(
    checkpoint: Option<CheckpointState>,
    records: impl Iterator<Item = Result<(u64, Vec<u8>), E>>,
    feed_retention: usize,
    half_lives: HalfLives,
    progress_every: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<Recovered, EngineError> {
    let cp = checkpoint.unwrap_or(CheckpointState {
        version: CHECKPOINT_VERSION,
        catalog: Catalog::default(),
        skus: Vec::new(),
        idempotency: Vec::new(),
    });
    // Records at or below the highest seq the fuzzy checkpoint holds may be skipped for
    // some entity, so their "before" is unknown: the feed starts after it.
    let feed_start = cp
        .skus
        .iter()
        .map(|s| s.last_seq)
        .chain([cp.catalog.last_seq])
        .max()
        .unwrap_or(0)
        + 1;
    let mut r = Replay {
        feed_start,
        feed_retention,
        feed: VecDeque::new(),
        catalog: cp.catalog,
        skus: cp
            .skus
            .into_iter()
            .map(|mut s| {
                s.velocity.configure(half_lives);
                (s.sku.clone(), s)
            })
            .collect(),
        half_lives,
        idem: HashMap::default(),
        idem_order: Vec::new(),
        cart_request: HashMap::default(),
        aborted_requests: HashSet::default(),
        tentative_carts: HashMap::default(),
        pending_ops: HashMap::default(),
        checkpointed_requests: HashSet::default(),
    };
    for rec in cp.idempotency {
        r.checkpointed_requests.insert(rec.id);
        r.idem_order.push(rec.id);
        r.idem.insert(rec.id, rec);
    }
    let (mut replayed, mut skipped, mut last_seq) = (0u64, 0u64, 0u64);
    for item in records {
        let (seq, bytes) = item.map_err(|e| EngineError::Corrupt(e.to_string()))?;
        if seq <= last_seq {
            return Err(EngineError::Corrupt(format!(
                "log record {seq} out of order after {last_seq}"
            )));
        }
        last_seq = seq;
        let rec = decode_record(seq, &bytes)?;
        if r.record(seq, rec) {
            replayed += 1;
        } else {
            skipped += 1;
        }
        if progress_every > 0 && (replayed + skipped) % progress_every == 0 {
            progress(replayed + skipped, seq);
        }
    }
    finish(r, replayed, skipped, last_seq)
}

fn finish(
    mut r: Replay,
    replayed: u64,
    skipped: u64,
    last_seq: u64,
) -> Result<Recovered, EngineError> {
    let mut completions = Vec::new();
    let mut next_seq = last_seq + 1;
    // Roll forward: an operation begun on several SKUs is finished on the ones the crash
    // cut off, with the commands it logged and the time it was accepted.
    let mut pending: Vec<PendingOp> = std::mem::take(&mut r.pending_ops).into_values().collect();
    pending.sort_by_key(|p| p.begun_seq);
    let rolled_forward = pending.len();
    for p in pending {
        for (sku, cmd) in &p.missing {
            if let Some(rec) = r.complete(next_seq, p.at_ms, p.request, p.fingerprint, sku, cmd) {
                completions.push(rec);
                next_seq += 1;
            }
        }
    }
    // Roll back: a cart whose `CartPlaced` is missing was never acknowledged.
    let mut tentative: Vec<(ReservationId, (RequestId, TimeMs))> =
        std::mem::take(&mut r.tentative_carts).into_iter().collect();
    tentative.sort_by_key(|t| t.0);
    let rolled_back = tentative.len();
    for (id, (request, at_ms)) in tentative {
        r.aborted_requests.insert(request);
        let mut holders: Vec<SkuId> = r
            .skus
            .values()
            .filter(|s| s.holds.contains_key(&id))
            .map(|s| s.sku.clone())
            .collect();
        holders.sort();
        let cmd = SkuCommand::Release {
            reservation: id,
            reason: ReleaseReason::Recovery,
        };
        for sku in holders {
            if let Some(rec) = r.complete(next_seq, at_ms, 0, 0, &sku, &cmd) {
                completions.push(rec);
                next_seq += 1;
            }
        }
    }
    let mut idempotency: Vec<IdemRecord> = r
        .idem_order
        .iter()
        .filter(|id| !r.aborted_requests.contains(id))
        .filter_map(|id| r.idem.remove(id))
        .collect();
    // One defined order for an outcome's changes, live and recovered: by SKU, each SKU's
    // events in apply order (the coordinator sends to SKUs in that order).
    for rec in &mut idempotency {
        rec.outcome
            .changes
            .sort_by(|a, b| change_sku(a).cmp(&change_sku(b)));
    }
    // Positions with no feed meaning between derived records are impossible (every record
    // at or after `feed_start` is derived), so `feed` is contiguous.
    let feed = std::mem::take(&mut r.feed);
    let mut skus: Vec<SkuState> = r.skus.into_values().collect();
    skus.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(Recovered {
        catalog: r.catalog,
        skus,
        idempotency,
        completions,
        rolled_forward,
        rolled_back,
        records_replayed: replayed,
        records_skipped: skipped,
        last_seq,
        feed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Bucket, LocationId};

    /// A version 3 checkpoint of one SKU "A": 5 units at "wh", safety stock 1, last seq 7.
    fn v3_state() -> CheckpointStateV3 {
        let mut s = SkuState::new(SkuId::new("A").expect("id"));
        let receipt = Event::StockAdjusted {
            location: LocationId::new("wh").expect("id"),
            delta: 5,
            reason: crate::domain::AdjustReason::Receipt,
            reference: String::new(),
        };
        s.apply(&receipt, 7, 1_000);
        let mut buckets: Vec<Bucket> = s.buckets;
        buckets[0].safety_stock = 1;
        CheckpointStateV3 {
            version: CHECKPOINT_VERSION_NO_VELOCITY,
            catalog: v4_catalog(),
            skus: vec![SkuStateV3 {
                sku: s.sku,
                buckets,
                holds: HashMap::default(),
                last_seq: 7,
            }],
            idempotency: Vec::new(),
        }
    }

    /// A format 3/4 catalog: one location "wh" and a low-stock threshold on "web".
    fn v4_catalog() -> CatalogV4 {
        let wh = LocationId::new("wh").expect("id");
        let web = crate::domain::ChannelId::new("web").expect("id");
        CatalogV4 {
            locations: [(
                wh.clone(),
                crate::domain::Location {
                    id: wh.clone(),
                    kind: crate::domain::LocationKind::Warehouse,
                    region: "FR".into(),
                },
            )]
            .into(),
            channels: [(
                web.clone(),
                crate::domain::Channel {
                    id: web.clone(),
                    locations: vec![wh.clone()],
                    buffer: 0,
                    cap: None,
                },
            )]
            .into(),
            last_seq: 2,
            location_order: vec![wh],
            low_stock: [(web, 3)].into(),
            low_stock_sku: Default::default(),
        }
    }

    #[test]
    fn a_version_4_checkpoint_is_read_without_thresholds_or_flags() {
        let web = crate::domain::ChannelId::new("web").expect("id");
        let v3 = v3_state();
        let s = &v3.skus[0];
        let velocity = VelocityV6 {
            half_lives: HalfLives::default(),
            channels: vec![crate::domain::SumsV6 {
                key: web.clone(),
                last_ms: 5_000,
                held: [3.0; 3],
                fulfilled: [0.0; 3],
            }],
            locations: Vec::new(),
        };
        let v4 = CheckpointStateV4 {
            version: CHECKPOINT_VERSION_NO_STOCKOUT,
            catalog: v4_catalog(),
            skus: vec![SkuStateV4 {
                sku: s.sku.clone(),
                buckets: s.buckets.clone(),
                holds: HashMap::default(),
                last_seq: 7,
                velocity: velocity.clone(),
            }],
            idempotency: Vec::new(),
        };
        let bytes = codec::encode(&v4).expect("encode");
        let c = decode_checkpoint(&bytes).expect("v4 decodes");
        assert_eq!(c.version, CHECKPOINT_VERSION);
        assert_eq!(c.catalog.low_stock_of(&s.sku, &web), 3);
        assert_eq!(c.catalog.channels.len(), 1);
        assert!(c.catalog.stockout_hours.is_empty());
        let s = &c.skus[0];
        assert_eq!((s.sku.as_str(), s.last_seq), ("A", 7));
        let mut want = crate::domain::Velocity::default();
        want.record(&web, crate::domain::DemandKind::Held, 3, 5_000);
        assert_eq!(s.velocity, want);
        assert!(s.stockout.is_empty());
    }

    #[test]
    fn a_version_5_checkpoint_is_read_without_region_flags_or_recommendations() {
        let web = crate::domain::ChannelId::new("web").expect("id");
        let s = &v3_state().skus[0];
        let mut catalog: Catalog = v4_catalog().into();
        catalog.stockout_hours.insert(web.clone(), 24);
        let v5 = CheckpointStateV5 {
            version: CHECKPOINT_VERSION_NO_REBALANCE,
            catalog: catalog.clone(),
            skus: vec![SkuStateV5 {
                sku: s.sku.clone(),
                buckets: s.buckets.clone(),
                holds: HashMap::default(),
                last_seq: 7,
                velocity: VelocityV6::default(),
                stockout: vec![web.clone()],
            }],
            idempotency: Vec::new(),
        };
        let bytes = codec::encode(&v5).expect("encode");
        let c = decode_checkpoint(&bytes).expect("v5 decodes");
        assert_eq!(c.version, CHECKPOINT_VERSION);
        assert_eq!(c.catalog.stockout_hours_of(&web), Some(24));
        let s = &c.skus[0];
        assert_eq!((s.sku.as_str(), s.last_seq), ("A", 7));
        assert_eq!(s.stockout, [web]);
        assert!(s.region_stockout.is_empty() && s.rebalance.is_none());
    }

    /// Format 6: velocity entries decayed to their own times. Read, they are brought to
    /// one epoch (the latest entry's time) and give the same rates at every later time as
    /// the old form's `sum * 2^(-(now - last_ms) / h)`, to rounding; the other parts of
    /// the SKU are kept as they were.
    #[test]
    fn a_version_6_checkpoint_is_read_with_its_velocity_brought_to_one_epoch() {
        let web = crate::domain::ChannelId::new("web").expect("id");
        let store = crate::domain::ChannelId::new("store").expect("id");
        let wh = LocationId::new("wh").expect("id");
        let s = &v3_state().skus[0];
        fn old<K>(key: K, last_ms: u64, held: f64, fulfilled: f64) -> crate::domain::SumsV6<K> {
            crate::domain::SumsV6 {
                key,
                last_ms,
                held: [held, held * 0.9, held * 0.8],
                fulfilled: [fulfilled; 3],
            }
        }
        let velocity = VelocityV6 {
            half_lives: HalfLives::default(),
            channels: vec![
                old(store.clone(), 9_000_000, 2.0, 0.0),
                old(web.clone(), 5_000_000, 7.0, 1.5),
            ],
            locations: vec![old(wh.clone(), 3_000_000, 9.0, 1.5)],
        };
        let v6 = CheckpointStateV6 {
            version: CHECKPOINT_VERSION_DECAYED_VELOCITY,
            catalog: v4_catalog().into(),
            skus: vec![SkuStateV6 {
                sku: s.sku.clone(),
                buckets: s.buckets.clone(),
                holds: HashMap::default(),
                last_seq: 7,
                velocity: velocity.clone(),
                stockout: vec![web.clone()],
                region_stockout: vec!["FR".into()],
                rebalance: None,
            }],
            idempotency: Vec::new(),
        };
        let bytes = codec::encode(&v6).expect("encode");
        let c = decode_checkpoint(&bytes).expect("v6 decodes");
        assert_eq!(c.version, CHECKPOINT_VERSION);
        let got = &c.skus[0];
        assert_eq!(
            (got.last_seq, &got.stockout[..], &got.region_stockout[..]),
            (7, &[web.clone()][..], &["FR".to_string()][..])
        );
        assert_eq!(
            (got.velocity.epoch_ms(), got.velocity.latest_ms()),
            (9_000_000, 9_000_000)
        );
        let hl = HalfLives::default().ms();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
        for now in [9_000_000, 9_000_001, 12_345_678, 200_000_000] {
            for e in &velocity.channels {
                let r = got.velocity.rates(&e.key, 10, now);
                for (w, &h) in hl.iter().enumerate() {
                    let d = (-((now - e.last_ms) as f64) / h as f64).exp2();
                    let per_hour = |x: f64| x * d * std::f64::consts::LN_2 / h as f64 * 3_600_000.0;
                    assert!(
                        close(r.windows[w].held_per_hour, per_hour(e.held[w])),
                        "{now} {w}"
                    );
                    assert!(close(
                        r.windows[w].fulfilled_per_hour,
                        per_hour(e.fulfilled[w])
                    ));
                }
            }
            let r = got.velocity.region_rates("FR", [&wh], 10, now);
            let e = &velocity.locations[0];
            for (w, &h) in hl.iter().enumerate() {
                let d = (-((now - e.last_ms) as f64) / h as f64).exp2();
                let want = e.held[w] * d * std::f64::consts::LN_2 / h as f64 * 3_600_000.0;
                assert!(close(r.windows[w].held_per_hour, want), "{now} {w}");
            }
        }
    }

    #[test]
    fn a_version_3_checkpoint_is_read_with_empty_velocity() {
        let bytes = codec::encode(&v3_state()).expect("encode");
        let c = decode_checkpoint(&bytes).expect("v3 decodes");
        assert_eq!(c.version, CHECKPOINT_VERSION);
        let s = &c.skus[0];
        assert_eq!((s.sku.as_str(), s.last_seq), ("A", 7));
        assert_eq!((s.buckets[0].on_hand, s.buckets[0].safety_stock), (5, 1));
        assert!(s.velocity.channels().is_empty());
    }

    #[test]
    fn a_current_checkpoint_round_trips_with_its_velocity_and_others_are_refused() {
        let mut cp: CheckpointState = v3_state().into();
        let web = crate::domain::ChannelId::new("web").expect("id");
        cp.skus[0]
            .velocity
            .record(&web, crate::domain::DemandKind::Held, 3, 5_000);
        // Format 5: the thresholds and the raised flags are kept.
        cp.catalog.stockout_hours.insert(web.clone(), 24);
        cp.skus[0].stockout.push(web.clone());
        // Format 6: the region flags and the raised recommendation too.
        cp.skus[0].region_stockout.push("FR".into());
        let here = crate::domain::LocationId::new("here").expect("id");
        cp.skus[0].rebalance = Some(Box::new(crate::domain::RaisedRebalance {
            id: 42,
            basis_seq: 6,
            to_region: "FR".into(),
            from_region: "DE".into(),
            from: here.clone(),
            to: here,
            qty: 3,
        }));
        let mut bytes = codec::encode(&cp).expect("encode");
        assert_eq!(decode_checkpoint(&bytes).expect("decodes"), cp);
        bytes[..4].copy_from_slice(&9u32.to_le_bytes());
        let e = decode_checkpoint(&bytes).expect_err("version 9");
        assert!(e.to_string().contains("version 9 is not supported"), "{e}");
        assert!(decode_checkpoint(&[4, 0]).is_err());
    }
}
