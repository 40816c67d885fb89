//! The idempotency table: request id -> (fingerprint of the command, outcome).
//!
//! Only accepted requests are remembered: a rejected request changed nothing, so a retry is
//! simply evaluated again. The table is bounded by entry count and by age (both settings,
//! see `EngineConfig`); the oldest entries are forgotten first. A request id that is still
//! being processed answers `InProgress` (retriable) to a concurrent duplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::domain::{Rejection, RequestId, TimeMs};

use super::api::Outcome;

#[derive(Debug)]
enum State {
    InFlight,
    Done(Arc<Outcome>),
}

#[derive(Debug)]
struct Entry_ {
    fingerprint: u64,
    state: State,
}

/// What `begin` found.
#[derive(Debug)]
pub enum Begin {
    /// First time: go ahead, then `complete` or `abort`.
    New,
    /// Seen and accepted before with the same content: here is the original outcome.
    Replay(Arc<Outcome>),
}

/// Remembered request ids (bounded).
///
/// The eviction order is kept in [`SHARDS`] queues (by request id), each bounded to its
/// share of `max_entries`, so concurrent completions do not contend on one lock.
#[derive(Debug)]
pub struct IdempotencyTable {
    map: DashMap<RequestId, Entry_, foldhash::fast::RandomState>,
    order: Vec<Mutex<VecDeque<(TimeMs, RequestId)>>>,
    max_per_shard: usize,
    retention_ms: u64,
}

/// Shards of the eviction order (a power of two).
const SHARDS: usize = 16;

fn shard_of(id: RequestId) -> usize {
    ((id ^ (id >> 64)) as usize).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)
}

impl IdempotencyTable {
    /// An empty table keeping at most `max_entries` ids for at most `retention_ms`.
    pub fn new(max_entries: usize, retention_ms: u64) -> Self {
        IdempotencyTable {
            map: DashMap::default(),
            order: (0..SHARDS).map(|_| Mutex::new(VecDeque::new())).collect(),
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
            retention_ms,
        }
    }

    /// Starts a request: new, a replay of an accepted one, or a rejection.
    pub fn begin(&self, id: RequestId, fingerprint: u64) -> Result<Begin, Rejection> {
        match self.map.entry(id) {
            Entry::Vacant(v) => {
                v.insert(Entry_ {
                    fingerprint,
                    state: State::InFlight,
                });
                Ok(Begin::New)
            }
            Entry::Occupied(o) => {
                let e = o.get();
                if e.fingerprint != fingerprint {
                    return Err(Rejection::IdempotencyConflict(id));
                }
                match &e.state {
                    State::InFlight => Err(Rejection::InProgress(id)),
                    State::Done(out) => Ok(Begin::Replay(out.clone())),
                }
            }
        }
    }

    /// Forgets an in-flight request that was rejected or failed.
    pub fn abort(&self, id: RequestId) {
        self.map
            .remove_if(&id, |_, e| matches!(e.state, State::InFlight));
    }

    /// Records the outcome of an accepted request at time `now_ms`, evicting old entries.
    pub fn complete(&self, id: RequestId, fingerprint: u64, outcome: Arc<Outcome>, now_ms: TimeMs) {
        // The entry `begin` put in place, completed where it is (one lookup, no new entry).
        match self.map.get_mut(&id) {
            Some(mut e) => {
                e.fingerprint = fingerprint;
                e.state = State::Done(outcome);
            }
            None => {
                self.map.insert(
                    id,
                    Entry_ {
                        fingerprint,
                        state: State::Done(outcome),
                    },
                );
            }
        }
        let mut order = self.order[shard_of(id)].lock();
        order.push_back((now_ms, id));
        let oldest_kept = now_ms.saturating_sub(self.retention_ms);
        while let Some(&(t, old)) = order.front() {
            if order.len() <= self.max_per_shard && t >= oldest_kept {
                break;
            }
            order.pop_front();
            self.map
                .remove_if(&old, |_, e| matches!(e.state, State::Done(_)));
        }
    }

    /// Number of remembered (accepted) ids.
    pub fn len(&self) -> usize {
        self.order.iter().map(|o| o.lock().len()).sum()
    }

    /// All remembered entries, oldest first: (time, id, fingerprint, outcome). For checkpoints.
    pub fn entries(&self) -> Vec<(TimeMs, RequestId, u64, Arc<Outcome>)> {
        let mut all: Vec<(TimeMs, RequestId)> = self
            .order
            .iter()
            .flat_map(|o| o.lock().iter().copied().collect::<Vec<_>>())
            .collect();
        all.sort_unstable();
        all.into_iter()
            .filter_map(|(t, id)| {
                let e = self.map.get(&id)?;
                match &e.state {
                    State::Done(o) => Some((t, id, e.fingerprint, o.clone())),
                    State::InFlight => None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seq: u64) -> Arc<Outcome> {
        Arc::new(Outcome {
            seq,
            changes: vec![],
        })
    }

    #[test]
    fn same_id_same_content_replays_and_other_content_conflicts() {
        let t = IdempotencyTable::new(10, 1000);
        assert!(matches!(t.begin(1, 7), Ok(Begin::New)));
        assert_eq!(t.begin(1, 7).unwrap_err(), Rejection::InProgress(1));
        t.complete(1, 7, outcome(5), 0);
        match t.begin(1, 7) {
            Ok(Begin::Replay(o)) => assert_eq!(o.seq, 5),
            other => panic!("expected replay, got {other:?}"),
        }
        assert_eq!(
            t.begin(1, 8).unwrap_err(),
            Rejection::IdempotencyConflict(1)
        );
    }

    #[test]
    fn aborted_request_can_be_retried() {
        let t = IdempotencyTable::new(10, 1000);
        assert!(matches!(t.begin(2, 1), Ok(Begin::New)));
        t.abort(2);
        assert!(matches!(t.begin(2, 1), Ok(Begin::New)));
    }

    #[test]
    fn table_is_bounded_by_count_and_age() {
        let t = IdempotencyTable::new(SHARDS * 2, 100);
        for id in 1..=2000u128 {
            assert!(matches!(t.begin(id, 0), Ok(Begin::New)));
            t.complete(id, 0, outcome(id as u64), 10);
        }
        assert!(t.len() <= SHARDS * 2, "bounded: {}", t.len());
        assert!(matches!(t.begin(1, 0), Ok(Begin::New)), "oldest evicted");
        t.abort(1);
        assert!(
            matches!(t.begin(2000, 0), Ok(Begin::Replay(_))),
            "newest kept"
        );
        let id = 5000u128;
        assert!(matches!(t.begin(id, 0), Ok(Begin::New)));
        t.complete(id, 0, outcome(1), 500);
        let shard = shard_of(id);
        assert_eq!(
            t.order[shard].lock().len(),
            1,
            "entries older than retention evicted"
        );
    }
}
