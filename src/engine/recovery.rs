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
    Catalog, Event, ReleaseReason, RequestId, ReservationId, SkuId, SkuState, TimeMs,
};

use super::api::{Change, Outcome};
use super::journal::{LogRecord, RecordBody};
use super::EngineError;
use crate::feed::{self, hub::Slot, FeedBody, FeedRecord};

/// Checkpoint format version.
pub const CHECKPOINT_VERSION: u32 = 3;

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
    /// Carts whose holds are not all present (crash mid-cart): release them.
    pub incomplete: Vec<(ReservationId, Vec<SkuId>)>,
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

/// Decodes a checkpoint.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointState, EngineError> {
    let c: CheckpointState = codec::decode_large(bytes)
        .map_err(|e| EngineError::Corrupt(format!("checkpoint does not decode: {e}")))?;
    if c.version != CHECKPOINT_VERSION {
        return Err(EngineError::Corrupt(format!(
            "checkpoint version {} is not supported (expected {CHECKPOINT_VERSION})",
            c.version
        )));
    }
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
    /// Records from here on are derived for the feed (none of them is in the checkpoint).
    feed_start: u64,
    feed_retention: usize,
    feed: VecDeque<(u64, Slot)>,
}

impl Replay {
    /// Applies one record; false if the checkpoint already contained it.
    fn record(&mut self, seq: u64, rec: LogRecord) -> bool {
        let changes: Vec<Change> = match rec.body {
            RecordBody::Catalog(ev) => {
                if seq <= self.catalog.last_seq {
                    return false;
                }
                self.catalog.apply(&ev, seq);
                self.keep_feed(seq, || FeedRecord::new(seq, rec.at_ms, FeedBody::Catalog));
                vec![Change::Catalog(ev)]
            }
            RecordBody::Sku { sku, events } => {
                let state = self
                    .skus
                    .entry(sku.clone())
                    .or_insert_with(|| SkuState::new(sku.clone()));
                if seq <= state.last_seq {
                    return false;
                }
                let derive = seq >= self.feed_start;
                let before = derive.then(|| feed::before(&self.catalog, state, &events));
                for e in &events {
                    state.apply(e, seq);
                }
                if let Some(b) = before {
                    let f = feed::derive(&self.catalog, b, state, &events, seq, rec.at_ms);
                    self.keep_feed(seq, || f);
                }
                for e in &events {
                    self.track_cart(e, rec.request);
                }
                events
                    .into_iter()
                    .map(|event| Change::Sku {
                        sku: sku.clone(),
                        event,
                    })
                    .collect()
            }
        };
        if rec.request == 0 {
            return true;
        }
        let entry = self.idem.entry(rec.request).or_insert_with(|| {
            self.idem_order.push(rec.request);
            IdemRecord {
                at_ms: rec.at_ms,
                id: rec.request,
                fingerprint: rec.fingerprint,
                outcome: Outcome {
                    seq,
                    changes: Vec::new(),
                },
            }
        });
        entry.outcome.seq = entry.outcome.seq.max(seq);
        entry.outcome.changes.extend(changes);
        true
    }

    fn keep_feed(&mut self, seq: u64, f: impl FnOnce() -> FeedRecord) {
        if seq < self.feed_start || self.feed_retention == 0 {
            return;
        }
        self.feed.push_back((seq, Some(Arc::new(f()))));
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
/// The feed records of the last `feed_retention` records are derived on the way.
pub fn recover<E: std::fmt::Display>(
    checkpoint: Option<CheckpointState>,
    records: impl Iterator<Item = Result<(u64, Vec<u8>), E>>,
    feed_retention: usize,
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
        skus: cp.skus.into_iter().map(|s| (s.sku.clone(), s)).collect(),
        idem: HashMap::default(),
        idem_order: Vec::new(),
        cart_request: HashMap::default(),
        aborted_requests: HashSet::default(),
    };
    for rec in cp.idempotency {
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
    // A cart is complete when every one of its SKUs holds it.
    let mut holders: HashMap<ReservationId, (u16, Vec<SkuId>), Fast> = HashMap::default();
    for s in r.skus.values() {
        for (id, h) in &s.holds {
            let e = holders.entry(*id).or_insert((h.cart_skus, Vec::new()));
            e.1.push(s.sku.clone());
        }
    }
    let incomplete: Vec<(ReservationId, Vec<SkuId>)> = holders
        .into_iter()
        .filter(|(_, (n, skus))| skus.len() < usize::from(*n))
        .map(|(id, (_, skus))| (id, skus))
        .collect();
    for (id, _) in &incomplete {
        if let Some(req) = r.cart_request.get(id) {
            r.aborted_requests.insert(*req);
        }
    }
    let idempotency = r
        .idem_order
        .iter()
        .filter(|id| !r.aborted_requests.contains(id))
        .filter_map(|id| r.idem.remove(id))
        .collect();
    // Positions with no feed meaning between derived records are impossible (every record
    // at or after `feed_start` is derived), so `feed` is contiguous.
    let feed = std::mem::take(&mut r.feed);
    let mut skus: Vec<SkuState> = r.skus.into_values().collect();
    skus.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(Recovered {
        catalog: r.catalog,
        skus,
        idempotency,
        incomplete,
        records_replayed: replayed,
        records_skipped: skipped,
        last_seq,
        feed,
    })
}
