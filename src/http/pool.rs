//! The places of the HTTP endpoint: at most [`MAX_CONNECTIONS`] connections served at once;
//! when all are taken, the oldest one still waiting for its request head after
//! [`EVICTABLE_AFTER`] gives its place to the newcomer (a silent connection is a squatter:
//! a real client sends its request at once). std `Mutex`: held for a map operation, never
//! across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::{lock, EVICTABLE_AFTER, MAX_CONNECTIONS};

/// The connections being served.
#[derive(Default)]
pub(crate) struct Pool {
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    /// Connections holding a place (evicted ones no longer do).
    active: usize,
    next_id: u64,
    /// Those still reading their request head, oldest first: when they came, and the
    /// signal that closes them.
    reading: BTreeMap<u64, (Instant, Arc<Notify>)>,
}

impl PoolInner {
    fn oldest_evictable(&self) -> bool {
        self.reading
            .first_key_value()
            .is_some_and(|(_, (since, _))| since.elapsed() >= EVICTABLE_AFTER)
    }
}

/// A place in the pool; freed on drop unless it was taken away by eviction.
pub(crate) struct Slot {
    pool: Arc<Pool>,
    id: u64,
    /// Notified when this connection is evicted (only ever while it is reading).
    pub evicted: Arc<Notify>,
    /// Its request head was read before any eviction: it keeps its place to the end.
    answered: AtomicBool,
    /// Its request head was read, before or after an eviction: it is answered either way
    /// (evicted while its request already waited unread, on a machine too busy to poll it
    /// within [`EVICTABLE_AFTER`], it was no squatter). Its place was passed on: such a
    /// connection is one over the limit until its answer is written.
    head_in: AtomicBool,
}

impl Pool {
    /// Whether a new connection would find a place (free, or by eviction).
    pub fn has_room(&self) -> bool {
        let p = lock(&self.inner);
        p.active < MAX_CONNECTIONS || p.oldest_evictable()
    }

    /// A place for a new connection, evicting the oldest silent one if all are taken.
    pub fn enter(self: &Arc<Self>) -> Option<Slot> {
        let mut p = lock(&self.inner);
        if p.active >= MAX_CONNECTIONS {
            if !p.oldest_evictable() {
                return None;
            }
            // Its place passes to the new connection: `active` stays.
            let (_, (_, signal)) = p.reading.pop_first()?;
            signal.notify_one();
        } else {
            p.active += 1;
        }
        let id = p.next_id;
        p.next_id += 1;
        let evicted = Arc::new(Notify::new());
        p.reading.insert(id, (Instant::now(), evicted.clone()));
        Some(Slot {
            pool: self.clone(),
            id,
            evicted,
            answered: AtomicBool::new(false),
            head_in: AtomicBool::new(false),
        })
    }
}

impl Slot {
    /// The request head is in: this connection is answered, never evicted. `false` when it
    /// was evicted just before (its `evicted` signal closes it).
    pub fn head_read(&self) -> bool {
        self.head_in.store(true, Ordering::Relaxed);
        let mut p = lock(&self.pool.inner);
        let still = p.reading.remove(&self.id).is_some();
        if still {
            self.answered.store(true, Ordering::Relaxed);
        }
        still
    }

    /// Its request head was read (whether or not it was evicted first).
    pub fn head_in(&self) -> bool {
        self.head_in.load(Ordering::Relaxed)
    }

    /// Still waiting for its request head (and so evictable).
    pub fn is_reading(&self) -> bool {
        lock(&self.pool.inner).reading.contains_key(&self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = lock(&self.pool.inner);
        let was_reading = p.reading.remove(&self.id).is_some();
        // Neither reading nor answered: evicted, and its place already passed on.
        if was_reading || self.answered.load(Ordering::Relaxed) {
            p.active = p.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pool_evicts_only_a_connection_silent_for_long_enough() {
        let pool = Arc::new(Pool::default());
        let mut slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| pool.enter().unwrap())
            .collect();
        // All fresh: nobody to evict.
        assert!(!pool.has_room());
        assert!(pool.enter().is_none());
        // One answered connection frees its place when it ends.
        assert!(slots[1].head_read());
        slots.remove(1);
        assert!(pool.has_room());
        let newcomer = pool.enter().expect("the freed place");
        assert!(!pool.has_room());
        drop(newcomer);
        assert!(pool.has_room());
    }
}
