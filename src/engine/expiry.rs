//! The expiry queue: reservations ordered by expiry time. A driver task sleeps exactly until
//! the earliest deadline (re-armed when an earlier one arrives) and then expires what is due,
//! so a hold is released within milliseconds of its expiry time, not by a periodic sweep.
//!
//! Sharded by reservation id: every reserve inserts and every fulfil/release removes a
//! deadline, from all connection threads at once; one shared lock would serialise them.

use std::collections::BTreeSet;
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
    shards: Vec<Mutex<BTreeSet<(TimeMs, ReservationId)>>>,
    /// The deadline the driver is sleeping until (`u64::MAX`: none).
    armed_ms: AtomicU64,
    wake: Arc<Notify>,
}

impl Default for ExpiryQueue {
    fn default() -> Self {
        ExpiryQueue {
            shards: (0..SHARDS).map(|_| Mutex::new(BTreeSet::new())).collect(),
            armed_ms: AtomicU64::new(u64::MAX),
            wake: Arc::new(Notify::new()),
        }
    }
}

fn shard_of(id: ReservationId) -> usize {
    ((id ^ (id >> 64)) as usize).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)
}

impl ExpiryQueue {
    /// Adds a deadline; wakes the driver if it is earlier than the one it sleeps until.
    pub fn insert(&self, at_ms: TimeMs, id: ReservationId) {
        self.shards[shard_of(id)].lock().insert((at_ms, id));
        if at_ms < self.armed_ms.load(Ordering::Acquire) {
            self.armed_ms.fetch_min(at_ms, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// Removes a deadline (reservation ended or extended).
    pub fn remove(&self, at_ms: TimeMs, id: ReservationId) {
        self.shards[shard_of(id)].lock().remove(&(at_ms, id));
    }

    /// The earliest deadline; the driver records it as the one it will sleep until.
    pub fn next_deadline(&self) -> Option<TimeMs> {
        let next = self
            .shards
            .iter()
            .filter_map(|s| s.lock().first().map(|(t, _)| *t))
            .min();
        self.armed_ms
            .store(next.unwrap_or(u64::MAX), Ordering::Release);
        next
    }

    /// Takes up to `max` reservations due at `now_ms`.
    pub fn take_due(&self, now_ms: TimeMs, max: usize) -> Vec<ReservationId> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut s = s.lock();
            while out.len() < max {
                match s.first() {
                    Some(&(t, id)) if t <= now_ms => {
                        s.pop_first();
                        out.push(id);
                    }
                    _ => break,
                }
            }
        }
        out
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
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
}
