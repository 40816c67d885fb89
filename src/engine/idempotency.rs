//! The idempotency table: request id -> (fingerprint of the command, outcome).
//!
//! Only accepted requests are remembered: a rejected request changed nothing, so a retry is
//! simply evaluated again. The table is bounded by entry count and by age (both settings,
//! see `EngineConfig`); the oldest entries are forgotten first. A request id that is still
//! being processed answers `InProgress` (retriable) to a concurrent duplicate.
//!
//! The table is sharded by request id (`shards`), each shard one map and its eviction
//! order under one lock. A request frame enters its ids ([`IdempotencyTable::begin_many`])
//! and records their outcomes ([`IdempotencyTable::complete_many`]) one shard at a time:
//! one lock per shard and frame rather than one (or three: entry, order, eviction) per
//! request.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::domain::{Rejection, RequestId, TimeMs};

use super::api::Outcome;
use super::shards::{Shards, SHARDS};

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

/// One shard: its entries and their eviction order (accepted ids, oldest first).
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<RequestId, Entry_, foldhash::fast::RandomState>,
    order: VecDeque<(TimeMs, RequestId)>,
}

/// Remembered request ids (bounded).
#[derive(Debug)]
pub struct IdempotencyTable {
    shards: Shards<Shard>,
    max_per_shard: usize,
    retention_ms: u64,
}

impl Shard {
    fn begin(&mut self, id: RequestId, fingerprint: u64) -> Result<Begin, Rejection> {
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

    fn abort(&mut self, id: RequestId) {
        if let Entry::Occupied(o) = self.map.entry(id) {
            if matches!(o.get().state, State::InFlight) {
                o.remove();
            }
        }
    }

    /// Records an accepted request's outcome (the entry `begin` put in place, completed
    /// where it is), then forgets the oldest entries past the shard's bounds.
    fn complete(
        &mut self,
        (id, fingerprint, outcome): (RequestId, u64, Arc<Outcome>),
        now_ms: TimeMs,
        max_entries: usize,
        oldest_kept: TimeMs,
    ) {
        let done = Entry_ {
            fingerprint,
            state: State::Done(outcome),
        };
        match self.map.entry(id) {
            Entry::Occupied(mut o) => *o.get_mut() = done,
            Entry::Vacant(v) => {
                v.insert(done);
            }
        }
        self.order.push_back((now_ms, id));
        while let Some(&(t, old)) = self.order.front() {
            if self.order.len() <= max_entries && t >= oldest_kept {
                break;
            }
            self.order.pop_front();
            if let Entry::Occupied(o) = self.map.entry(old) {
                if matches!(o.get().state, State::Done(_)) {
                    o.remove();
                }
            }
        }
    }
}

impl IdempotencyTable {
    /// An empty table keeping at most `max_entries` ids for at most `retention_ms`.
    pub fn new(max_entries: usize, retention_ms: u64) -> Self {
        IdempotencyTable {
            shards: Shards::default(),
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
            retention_ms,
        }
    }

    /// Starts a request: new, a replay of an accepted one, or a rejection (one request
    /// at a time: the tests' form of [`begin_many`](Self::begin_many)).
    #[cfg(test)]
    pub fn begin(&self, id: RequestId, fingerprint: u64) -> Result<Begin, Rejection> {
        self.shards.lock(id).begin(id, fingerprint)
    }

    /// Starts each request of `items` (`key(item)`: its id and fingerprint) as
    /// [`begin`](Self::begin) would one after the other (a repeated id is `InProgress`
    /// after its first), one lock per shard, and gives `set` each one's answer.
    pub fn begin_many<I>(
        &self,
        items: &mut [I],
        key: impl Fn(&I) -> (RequestId, u64),
        mut set: impl FnMut(&mut I, Result<Begin, Rejection>),
    ) {
        self.shards.grouped(
            items,
            |item| Some(key(item).0),
            |shard, id, item| {
                let fp = key(item).1;
                set(item, shard.begin(id, fp));
            },
        );
    }

    /// Forgets an in-flight request that was rejected or failed.
    pub fn abort(&self, id: RequestId) {
        self.shards.lock(id).abort(id);
    }

    /// Records the outcome of an accepted request at time `now_ms`, evicting old entries.
    pub fn complete(&self, id: RequestId, fingerprint: u64, outcome: Arc<Outcome>, now_ms: TimeMs) {
        let oldest_kept = now_ms.saturating_sub(self.retention_ms);
        self.shards.lock(id).complete(
            (id, fingerprint, outcome),
            now_ms,
            self.max_per_shard,
            oldest_kept,
        );
    }

    /// [`complete`](Self::complete) for each `(id, fingerprint, outcome)` (the outcomes
    /// taken), one lock per shard.
    pub fn complete_many(
        &self,
        done: &mut [(RequestId, u64, Option<Arc<Outcome>>)],
        now_ms: TimeMs,
    ) {
        let oldest_kept = now_ms.saturating_sub(self.retention_ms);
        self.shards.grouped(
            done,
            |d| Some(d.0),
            |shard, id, d| {
                if let Some(outcome) = d.2.take() {
                    shard.complete((id, d.1, outcome), now_ms, self.max_per_shard, oldest_kept);
                }
            },
        );
    }

    /// Number of remembered (accepted) ids.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.shards.each(|s| n += s.order.len());
        n
    }

    /// All remembered entries, oldest first: (time, id, fingerprint, outcome). For checkpoints.
    pub fn entries(&self) -> Vec<(TimeMs, RequestId, u64, Arc<Outcome>)> {
        let mut all = Vec::new();
        self.shards.each(|shard| {
            all.extend(shard.order.iter().filter_map(|&(t, id)| {
                let e = shard.map.get(&id)?;
                match &e.state {
                    State::Done(o) => Some((t, id, e.fingerprint, o.clone())),
                    State::InFlight => None,
                }
            }))
        });
        all.sort_unstable_by_key(|&(t, id, ..)| (t, id));
        all
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
        let shard = super::super::shards::shard_of(id);
        assert_eq!(
            t.shards.lock_shard(shard).order.len(),
            1,
            "entries older than retention evicted"
        );
    }

    #[test]
    fn a_frame_is_answered_as_its_requests_one_by_one() {
        // The same history entered one request at a time and as frames of begin_many /
        // complete_many: the same answers, in request order, repeated ids included.
        let one = IdempotencyTable::new(1000, 10_000);
        let many = IdempotencyTable::new(1000, 10_000);
        let frames: Vec<Vec<(RequestId, u64)>> = vec![
            vec![(1, 1), (2, 1), (1, 1), (17, 3), (33, 4)],
            vec![(1, 1), (1, 2), (2, 1), (5, 5), (5, 5), (17, 3)],
            vec![(33, 4), (33, 9), (5, 5), (6, 6)],
        ];
        let show = |r: &Result<Begin, Rejection>| match r {
            Ok(Begin::New) => "new".to_string(),
            Ok(Begin::Replay(o)) => format!("replay {}", o.seq),
            Err(e) => format!("{e:?}"),
        };
        for (f, frame) in frames.iter().enumerate() {
            let singles: Vec<String> = frame
                .iter()
                .map(|&(id, fp)| show(&one.begin(id, fp)))
                .collect();
            let mut items: Vec<(RequestId, u64, String)> = frame
                .iter()
                .map(|&(id, fp)| (id, fp, String::new()))
                .collect();
            many.begin_many(&mut items, |i| (i.0, i.1), |i, b| i.2 = show(&b));
            let batch: Vec<String> = items.into_iter().map(|i| i.2).collect();
            assert_eq!(singles, batch, "frame {f}");
            // Complete every new one of even id, abort the others.
            let mut done = Vec::new();
            for (&(id, fp), answer) in frame.iter().zip(&singles) {
                if answer == "new" {
                    if id % 2 == 0 {
                        one.complete(id, fp, outcome(id as u64 * 10), f as u64);
                        done.push((id, fp, Some(outcome(id as u64 * 10))));
                    } else {
                        one.abort(id);
                        many.abort(id);
                    }
                }
            }
            many.complete_many(&mut done, f as u64);
        }
        assert_eq!(one.len(), many.len());
        let key = |t: &IdempotencyTable| {
            t.entries()
                .into_iter()
                .map(|(t, id, fp, o)| (t, id, fp, o.seq))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&one), key(&many));
        assert!(!key(&many).is_empty());
    }

    #[test]
    fn complete_many_evicts_by_count_and_age() {
        let t = IdempotencyTable::new(SHARDS, 100);
        let ids: Vec<RequestId> = (1..=500u128).collect();
        let mut begun: Vec<(RequestId, bool)> = ids.iter().map(|&id| (id, false)).collect();
        t.begin_many(
            &mut begun,
            |b| (b.0, 0),
            |b, r| b.1 = matches!(r, Ok(Begin::New)),
        );
        assert!(begun.iter().all(|b| b.1));
        let mut done: Vec<_> = ids.iter().map(|&id| (id, 0, Some(outcome(1)))).collect();
        t.complete_many(&mut done, 10);
        assert!(t.len() <= SHARDS, "bounded by count: {}", t.len());
        t.complete_many(&mut [(1000, 0, Some(outcome(2)))], 500);
        // Age is enforced as a shard is written: 1000's shard forgot its older entry.
        assert_eq!(
            t.shards.lock(1000).order.len(),
            1,
            "older than the retention: forgotten"
        );
        assert!(matches!(t.begin(1000, 0), Ok(Begin::Replay(_))));
    }
}
