//! The expiry queue: reservations ordered by expiry time. A driver task sleeps exactly until
//! the earliest deadline (re-armed when an earlier one arrives) and then expires what is due,
//! so a hold is released within milliseconds of its expiry time, not by a periodic sweep.
//!
//! Sharded by reservation id: every reserve inserts and every fulfil/release removes a
//! deadline, from all connection threads at once; one shared lock would serialise them.
//! Each shard keeps its deadlines by millisecond (a B-tree of `u64` keys, each with the
//! few reservations due then): the reserves of one frame share their expiry millisecond,
//! so an insert is mostly a lookup and a push, not a B-tree insert of a 24-byte key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::domain::{ReservationId, TimeMs};

/// Shards of the queue (a power of two).
const SHARDS: usize = 16;

/// Deadlines of active reservations.
#[derive(Debug)]
pub struct ExpiryQueue {
    shards: Vec<Mutex<Shard>>,
    /// The deadline the driver is sleeping until (`u64::MAX`: none).
    armed_ms: AtomicU64,
    wake: Arc<Notify>,
}

impl Default for ExpiryQueue {
    fn default() -> Self {
        ExpiryQueue {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            armed_ms: AtomicU64::new(u64::MAX),
            wake: Arc::new(Notify::new()),
        }
    }
}

fn shard_of(id: ReservationId) -> usize {
    ((id ^ (id >> 64)) as usize).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)
}

/// One shard: the reservations due at each millisecond (a bucket holds each id once, and
/// is removed when it empties).
#[derive(Debug, Default)]
struct Shard {
    by_ms: BTreeMap<TimeMs, Vec<ReservationId>>,
    len: usize,
}

impl Shard {
    /// Adds `ids`, due at the same millisecond (each once).
    fn insert_all(&mut self, at_ms: TimeMs, ids: impl ExactSizeIterator<Item = ReservationId>) {
        let bucket = self.by_ms.entry(at_ms).or_default();
        bucket.reserve(ids.len());
        for id in ids {
            if !bucket.contains(&id) {
                bucket.push(id);
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, at_ms: TimeMs, id: ReservationId) {
        if let Some(bucket) = self.by_ms.get_mut(&at_ms) {
            if let Some(i) = bucket.iter().position(|&x| x == id) {
                bucket.swap_remove(i);
                self.len -= 1;
                if bucket.is_empty() {
                    self.by_ms.remove(&at_ms);
                }
            }
        }
    }

    fn first(&self) -> Option<TimeMs> {
        self.by_ms.first_key_value().map(|(t, _)| *t)
    }

    /// Moves ids due at `now_ms` into `out` until it holds `max`.
    fn take_due(&mut self, now_ms: TimeMs, max: usize, out: &mut Vec<ReservationId>) {
        while out.len() < max {
            let Some(mut e) = self.by_ms.first_entry() else {
                return;
            };
            if *e.key() > now_ms {
                return;
            }
            let bucket = e.get_mut();
            let n = bucket.len().min(max - out.len());
            out.extend(bucket.drain(bucket.len() - n..));
            self.len -= n;
            if bucket.is_empty() {
                e.remove();
            }
        }
    }
}

impl ExpiryQueue {
    /// Adds a deadline; wakes the driver if it is earlier than the one it sleeps until.
    pub fn insert(&self, at_ms: TimeMs, id: ReservationId) {
        self.shards[shard_of(id)]
            .lock()
            .insert_all(at_ms, std::iter::once(id));
        self.arm(at_ms);
    }

    /// Wakes the driver if `at_ms` is earlier than the deadline it sleeps until.
    fn arm(&self, at_ms: TimeMs) {
        if at_ms < self.armed_ms.load(Ordering::Acquire) {
            self.armed_ms.fetch_min(at_ms, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// [`ExpiryQueue::insert`] of many deadlines (a frame's reserves): one lock per shard
    /// and one lookup per shard and run of equal milliseconds instead of one each (a
    /// frame's reserves share their `now`, so mostly their expiry).
    pub fn insert_many(&self, items: &[(TimeMs, ReservationId)]) {
        if let [(at_ms, id)] = items {
            // An unpipelined client's frame: no sort, no scratch vector.
            return self.insert(*at_ms, *id);
        }
        let Some(earliest) = items.iter().map(|&(at, _)| at).min() else {
            return;
        };
        // By shard, keeping their order (a counting sort: no comparison sort per frame).
        let mut starts = [0usize; SHARDS + 1];
        for &(_, id) in items {
            starts[shard_of(id) + 1] += 1;
        }
        for s in 0..SHARDS {
            starts[s + 1] += starts[s];
        }
        let mut next = starts;
        let mut by_shard = vec![(0, 0); items.len()];
        for &item in items {
            let s = shard_of(item.1);
            by_shard[next[s]] = item;
            next[s] += 1;
        }
        for s in 0..SHARDS {
            let run = &by_shard[starts[s]..starts[s + 1]];
            if run.is_empty() {
                continue;
            }
            let mut shard = self.shards[s].lock();
            for same_ms in run.chunk_by(|a, b| a.0 == b.0) {
                shard.insert_all(same_ms[0].0, same_ms.iter().map(|&(_, id)| id));
            }
        }
        self.arm(earliest);
    }

    /// Removes a deadline (reservation ended or extended).
    pub fn remove(&self, at_ms: TimeMs, id: ReservationId) {
        self.shards[shard_of(id)].lock().remove(at_ms, id);
    }

    /// The earliest deadline; the driver records it as the one it will sleep until.
    pub fn next_deadline(&self) -> Option<TimeMs> {
        let next = self.shards.iter().filter_map(|s| s.lock().first()).min();
        self.armed_ms
            .store(next.unwrap_or(u64::MAX), Ordering::Release);
        next
    }

    /// Takes up to `max` reservations due at `now_ms`.
    pub fn take_due(&self, now_ms: TimeMs, max: usize) -> Vec<ReservationId> {
        let mut out = Vec::new();
        for s in &self.shards {
            if out.len() >= max {
                break;
            }
            s.lock().take_due(now_ms, max, &mut out);
        }
        out
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len).sum()
    }

    /// The notifier woken when a new earliest deadline is inserted.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_due_deadlines() {
        let q = ExpiryQueue::default();
        q.insert(30, 3);
        q.insert(10, 1);
        q.insert(20, 2);
        assert_eq!(q.next_deadline(), Some(10));
        let mut due = q.take_due(20, 10);
        due.sort();
        assert_eq!(due, vec![1, 2]);
        q.remove(30, 3);
        assert_eq!(q.next_deadline(), None);
        assert_eq!(q.len(), 0);
    }

    /// The queue against a model (a set of (deadline, id) pairs): any sequence of inserts
    /// (repeats included), removes, takes of what is due and looks at the next deadline.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Clone, Debug)]
        enum Step {
            Insert(TimeMs, ReservationId),
            /// A frame's deadlines at once (repeats and mixed deadlines included).
            InsertMany(Vec<(TimeMs, ReservationId)>),
            Remove(TimeMs, ReservationId),
            Take(TimeMs, usize),
            Next,
        }

        fn step() -> impl Strategy<Value = Step> {
            // Few deadlines and ids, so that buckets, repeats and removals collide.
            let t = 0..8u64;
            let id = (0..24u128).prop_map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
            prop_oneof![
                4 => (t.clone(), id.clone()).prop_map(|(t, i)| Step::Insert(t, i)),
                2 => proptest::collection::vec((t.clone(), id.clone()), 0..12)
                    .prop_map(Step::InsertMany),
                2 => (t.clone(), id).prop_map(|(t, i)| Step::Remove(t, i)),
                1 => (t, 0..6usize).prop_map(|(t, m)| Step::Take(t, m)),
                1 => Just(Step::Next),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]
            #[test]
            fn agrees_with_a_set(steps in proptest::collection::vec(step(), 0..80)) {
                let q = ExpiryQueue::default();
                let mut m: BTreeSet<(TimeMs, ReservationId)> = BTreeSet::new();
                for s in steps {
                    match s {
                        Step::Insert(t, i) => { q.insert(t, i); m.insert((t, i)); }
                        Step::InsertMany(items) => {
                            m.extend(items.iter().copied());
                            q.insert_many(&items);
                        }
                        Step::Remove(t, i) => { q.remove(t, i); m.remove(&(t, i)); }
                        Step::Take(now, max) => {
                            let got = q.take_due(now, max);
                            let due = m.iter().filter(|(t, _)| *t <= now).count();
                            prop_assert_eq!(got.len(), due.min(max));
                            for id in got {
                                // each taken id was due, and is gone from the model
                                let k = *m.iter().find(|(t, i)| *i == id && *t <= now).expect("due");
                                m.remove(&k);
                            }
                        }
                        Step::Next => {
                            prop_assert_eq!(q.next_deadline(), m.first().map(|(t, _)| *t));
                        }
                    }
                    prop_assert_eq!(q.len(), m.len());
                }
            }
        }
    }
}
