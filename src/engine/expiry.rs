//! The expiry queue: reservations ordered by expiry time. A driver task sleeps exactly until
//! the earliest deadline (re-armed when an earlier one arrives) and then expires what is due,
//! so a hold is released within milliseconds of its expiry time, not by a periodic sweep.

use std::collections::BTreeSet;

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::domain::{ReservationId, TimeMs};

/// Deadlines of active reservations.
#[derive(Debug, Default)]
pub struct ExpiryQueue {
    set: Mutex<BTreeSet<(TimeMs, ReservationId)>>,
    wake: Arc<Notify>,
}

impl ExpiryQueue {
    /// Adds a deadline; wakes the driver if it is the new earliest.
    pub fn insert(&self, at_ms: TimeMs, id: ReservationId) {
        let earliest = {
            let mut s = self.set.lock();
            s.insert((at_ms, id));
            s.first() == Some(&(at_ms, id))
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Removes a deadline (reservation ended or extended).
    pub fn remove(&self, at_ms: TimeMs, id: ReservationId) {
        self.set.lock().remove(&(at_ms, id));
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<TimeMs> {
        self.set.lock().first().map(|(t, _)| *t)
    }

    /// Takes up to `max` reservations due at `now_ms`.
    pub fn take_due(&self, now_ms: TimeMs, max: usize) -> Vec<ReservationId> {
        let mut s = self.set.lock();
        let mut out = Vec::new();
        while out.len() < max {
            match s.first() {
                Some(&(t, id)) if t <= now_ms => {
                    s.pop_first();
                    out.push(id);
                }
                _ => break,
            }
        }
        out
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.set.lock().len()
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
    fn takes_only_due_deadlines_in_order() {
        let q = ExpiryQueue::default();
        q.insert(30, 3);
        q.insert(10, 1);
        q.insert(20, 2);
        assert_eq!(q.next_deadline(), Some(10));
        assert_eq!(q.take_due(20, 10), vec![1, 2]);
        q.remove(30, 3);
        assert_eq!(q.next_deadline(), None);
    }
}
