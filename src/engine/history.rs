//! The durable SKU history (issue 15, docs/history-design.md): every SKU event with its
//! time, request id, seq, reason and reference, kept beyond checkpoints and restarts.
//!
//! Nothing happens on the request path. At each checkpoint, before the log below its
//! start is truncated, [`derive`] decodes the log records the history does not cover yet
//! and writes their SKU events into the WAL's `history` tree (one key per event, keyed by
//! SKU, seq and index, so writing an event twice is harmless), then moves the tree's
//! `upto` marker; only then is the checkpoint written and the log cut. A crash anywhere
//! leaves the log records, the history items, or both, and readers take seqs below `upto`
//! from the tree and the rest from the log, so no event is missing or doubled.
//! [`read_page`] is that merge (the online `SKU_HISTORY` answer and `omnistock dump` use
//! it), [`prune`] the bounded retention pass run after each checkpoint.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::domain::{Event, RequestId, TimeMs};
use crate::wal::{HistoryItem, PruneReport, Wal};

use super::journal::RecordBody;
use super::recovery;
use super::EngineError;

/// Most events one history page may ask for (`SKU_HISTORY`'s `limit`).
pub const MAX_HISTORY_PAGE: u32 = 1000;

/// Most log records one online history read decodes from the log tail (the records since
/// the latest checkpoint, not yet in the history tree). A page that reaches it ends early
/// with a cursor at the next record, so one read costs at most this many record decodes
/// (~0.3-0.5 s at the ~230-350K records/s recovery replays) however long the tail is.
pub const TAIL_RECORDS_PER_READ: u64 = 100_000;

/// Keys one retention pass looks at (it finishes the SKU in progress): bounded work per
/// checkpoint; a backlog (a lowered limit) drains over several checkpoints.
pub const PRUNE_KEYS_PER_PASS: u64 = 100_000;

/// Default of [`HistoryRetention::max_events_per_sku`].
pub const DEFAULT_MAX_EVENTS_PER_SKU: u64 = 100_000;

/// Items written to the tree per call while deriving (bounds the memory of a checkpoint's
/// derivation whatever the interval's length).
const DERIVE_CHUNK: usize = 4096;

const DAY_MS: u64 = 86_400_000;

/// How much history to keep; enforced at checkpoint time by [`prune`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention {
    /// Keep at most this many events per SKU, the newest; 0 = no count limit. Default
    /// [`DEFAULT_MAX_EVENTS_PER_SKU`].
    pub max_events_per_sku: u64,
    /// Drop events older than this many days (by their record's time against the engine
    /// clock at the checkpoint); 0 = no age limit (default).
    pub retention_days: u32,
}

impl Default for HistoryRetention {
    fn default() -> Self {
        HistoryRetention {
            max_events_per_sku: DEFAULT_MAX_EVENTS_PER_SKU,
            retention_days: 0,
        }
    }
}

/// One event of a SKU's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Log sequence number of its record.
    pub seq: u64,
    /// Its position among the record's events (a record may hold several).
    pub index: u16,
    /// When the engine accepted it.
    pub at_ms: TimeMs,
    /// The request id (0: engine-initiated, e.g. expiry).
    pub request: RequestId,
    /// The event (reason codes and references included).
    pub event: Event,
}

impl HistoryEntry {
    /// Where this entry is: the cursor a page starting at it takes.
    pub fn cursor(&self) -> (u64, u16) {
        (self.seq, self.index)
    }
}

/// One page of a SKU's history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The events, in (seq, index) order.
    pub entries: Vec<HistoryEntry>,
    /// Where the next page starts, when this one was cut (by its limit or the tail-scan
    /// bound); `None`: nothing more is durable now.
    pub next: Option<(u64, u16)>,
    /// The first seq the history covers (1 unless the directory predates it; retention
    /// may have dropped older events of a SKU since).
    pub base: u64,
}

/// The body of a history value: what the event's log record says besides time and seq.
#[derive(Serialize, Deserialize)]
struct Stored {
    request: RequestId,
    event: Event,
}

fn storage(e: impl std::fmt::Display) -> EngineError {
    EngineError::Storage(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt(e.to_string())
}

/// Writes the SKU events of every log record below `upto` that the history does not hold
/// yet into the history tree, then moves its marker to `upto`. Blocking; the caller holds
/// the checkpoint lock and calls it before the checkpoint that truncates the log below
/// `upto`. Returns the number of events written.
pub fn derive(wal: &Wal, upto: u64) -> Result<u64, EngineError> {
    if upto > 1 {
        // Records below the bound must be in sled (the mark's flush makes them durable).
        wal.wait_durable_blocking(upto - 1).map_err(storage)?;
    }
    let marks = wal.history_marks().map_err(corrupt)?;
    let floor = wal.replay_floor();
    if marks.upto < floor {
        // A binary without history truncated the log in between: those events are gone.
        tracing::warn!(
            from = marks.upto,
            to = floor,
            "history has a gap: records truncated by a checkpoint that did not derive them"
        );
    }
    let from = marks.upto.max(floor);
    if from >= upto {
        return Ok(0);
    }
    let mut buf = Vec::with_capacity(DERIVE_CHUNK);
    let mut events = 0u64;
    let mut last = from - 1;
    for r in wal.replay_from(from) {
        let (seq, bytes) = r.map_err(corrupt)?;
        if seq >= upto {
            break;
        }
        last = seq;
        let rec = recovery::decode_record(seq, &bytes)?;
        let RecordBody::Sku { sku, events: evs } = rec.body else {
            continue;
        };
        for (i, event) in evs.into_iter().enumerate() {
            let index = u16::try_from(i)
                .map_err(|_| corrupt(format!("log record {seq} has over 65535 events")))?;
            let body = codec::encode(&Stored {
                request: rec.request,
                event,
            })
            .map_err(storage)?;
            buf.push(HistoryItem {
                sku: sku.as_str().to_owned(),
                seq,
                index,
                at_ms: rec.at_ms,
                body,
            });
            if buf.len() == DERIVE_CHUNK {
                wal.put_history(&buf).map_err(storage)?;
                events += buf.len() as u64;
                buf.clear();
            }
        }
    }
    if last != upto - 1 {
        return Err(corrupt(format!(
            "history: the log ends at seq {last}, before the checkpoint bound {upto}"
        )));
    }
    wal.put_history(&buf).map_err(storage)?;
    events += buf.len() as u64;
    wal.mark_history(from, upto).map_err(storage)?;
    Ok(events)
}

/// One page of `sku`'s history from `from` (seq, index; inclusive) on, at most `limit`
/// events, oldest first: the history tree below its `upto` marker, then the log from
/// there, decoding at most `tail_budget` log records. The caller keeps checkpoints out
/// while it runs (the checkpoint lock online; the offline tool holds the directory).
pub fn read_page(
    wal: &Wal,
    sku: &str,
    from: (u64, u16),
    limit: usize,
    tail_budget: u64,
) -> Result<HistoryPage, EngineError> {
    let marks = wal.history_marks().map_err(corrupt)?;
    let floor = wal.replay_floor();
    let from = from.max((marks.base, 0));
    let mut entries = Vec::new();
    for item in wal
        .history_page(sku, from, marks.upto, limit.saturating_add(1))
        .map_err(corrupt)?
    {
        let stored: Stored = codec::decode(&item.body).map_err(|e| {
            corrupt(format!(
                "history event {sku} seq {} index {} does not decode: {e}",
                item.seq, item.index
            ))
        })?;
        entries.push(HistoryEntry {
            seq: item.seq,
            index: item.index,
            at_ms: item.at_ms,
            request: stored.request,
            event: stored.event,
        });
    }
    let mut next = None;
    if entries.len() > limit {
        next = entries.pop().map(|e| e.cursor());
        return Ok(HistoryPage {
            entries,
            next,
            base: marks.base,
        });
    }
    let tail_from = from.0.max(marks.upto).max(floor);
    'records: for (scanned, r) in (0u64..).zip(wal.replay_from(tail_from)) {
        let (seq, bytes) = r.map_err(corrupt)?;
        if scanned == tail_budget {
            next = Some((seq, 0));
            break;
        }
        let rec = recovery::decode_record(seq, &bytes)?;
        let RecordBody::Sku { sku: s, events } = rec.body else {
            continue;
        };
        if s.as_str() != sku {
            continue;
        }
        for (i, event) in events.into_iter().enumerate() {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            if (seq, index) < from {
                continue;
            }
            if entries.len() == limit {
                next = Some((seq, index));
                break 'records;
            }
            entries.push(HistoryEntry {
                seq,
                index,
                at_ms: rec.at_ms,
                request: rec.request,
                event,
            });
        }
    }
    Ok(HistoryPage {
        entries,
        next,
        base: marks.base,
    })
}

/// One bounded retention pass after SKU `after` (see [`Wal::prune_history`]); the age
/// limit is measured back from `now_ms`.
pub(crate) fn prune(
    wal: &Wal,
    retention: HistoryRetention,
    now_ms: u64,
    after: Option<&str>,
) -> Result<PruneReport, EngineError> {
    let older_than_ms = match retention.retention_days {
        0 => 0,
        // Nothing can be that old yet (a clock near the epoch in tests).
        days => now_ms.saturating_sub(u64::from(days) * DAY_MS),
    };
    wal.prune_history(
        after,
        PRUNE_KEYS_PER_PASS,
        retention.max_events_per_sku,
        older_than_ms,
    )
    .map_err(storage)
}
