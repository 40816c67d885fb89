//! Tables keyed by a client's 128-bit id (request ids, reservation ids), split into
//! [`SHARDS`] shards by id, each under its own lock; and the grouping that lets a request
//! frame visit each shard once ([`Shards::grouped`]) instead of taking a lock per request.
//!
//! Both tables that use it (the idempotency table, the reservation index) are large and
//! their lookups miss the cache. Under one lock, a frame's consecutive lookups overlap;
//! with a lock instruction between each two (a full fence on x86), each would wait for
//! the one before. Shards keep two threads' frames apart most of the time.

use parking_lot::{Mutex, MutexGuard};

/// Shards of a table (a power of two).
pub(crate) const SHARDS: usize = 16;

/// The shard of `id` (both halves mixed: clients choose ids, some only one half).
pub(crate) fn shard_of(id: u128) -> usize {
    ((id ^ (id >> 64)) as usize).wrapping_mul(0x9E37_79B9) >> 7 & (SHARDS - 1)
}

/// Marks an item that has no shard (no id for this table) in [`by_shard`]'s input.
const NO_SHARD: u8 = u8::MAX;

/// The positions `0..shards.len()` grouped by their shard (`shards[i]`, or [`NO_SHARD`]:
/// left out), each group in position order: shard `s`'s positions are
/// `order[ends[s - 1]..ends[s]]` (from 0 for shard 0). A counting sort: two passes and one
/// allocation.
fn by_shard(shards: &[u8]) -> (Vec<u32>, [u32; SHARDS]) {
    let mut ends = [0u32; SHARDS];
    for &s in shards {
        if s != NO_SHARD {
            ends[s as usize] += 1;
        }
    }
    let mut start = 0;
    for e in ends.iter_mut() {
        start += *e;
        *e = start - *e;
    }
    // `ends` now holds each group's start; filling moves it to the group's end.
    let mut order = vec![0u32; start as usize];
    for (i, &s) in shards.iter().enumerate() {
        if s != NO_SHARD {
            let e = &mut ends[s as usize];
            order[*e as usize] = i as u32;
            *e += 1;
        }
    }
    (order, ends)
}

/// [`SHARDS`] values of `T`, each under a lock.
#[derive(Debug)]
pub(crate) struct Shards<T> {
    shards: Box<[Mutex<T>]>,
}

impl<T: Default> Default for Shards<T> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<T> Shards<T> {
    /// The shard of `id`, locked.
    pub(crate) fn lock(&self, id: u128) -> MutexGuard<'_, T> {
        self.shards[shard_of(id)].lock()
    }

    /// Shard `s` (`0..SHARDS`), locked.
    #[cfg(test)]
    pub(crate) fn lock_shard(&self, s: usize) -> MutexGuard<'_, T> {
        self.shards[s].lock()
    }

    /// Every shard in turn, each locked while `f` looks at it (never two at once).
    pub(crate) fn each(&self, mut f: impl FnMut(&mut T)) {
        for s in self.shards.iter() {
            f(&mut s.lock());
        }
    }

    /// Calls `f(shard, id, item)` for each item of `items` with an id (`id(item)`; `None`:
    /// not for this table), the shard being that of its id, locked once for all its items,
    /// which come in slice order (so a repeated id is seen in order). Never holds two
    /// shards at once. One item (an unpipelined request's frame) takes its shard directly,
    /// without grouping.
    pub(crate) fn grouped<I>(
        &self,
        items: &mut [I],
        id: impl Fn(&I) -> Option<u128>,
        mut f: impl FnMut(&mut T, u128, &mut I),
    ) {
        if let [item] = items {
            if let Some(key) = id(item) {
                f(&mut self.lock(key), key, item);
            }
            return;
        }
        // One id look-up per item, then the counting sort over the shard numbers.
        let shards: Vec<u8> = items
            .iter()
            .map(|item| id(item).map_or(NO_SHARD, |key| shard_of(key) as u8))
            .collect();
        let (order, ends) = by_shard(&shards);
        let mut start = 0;
        for (s, &end) in ends.iter().enumerate() {
            let group = &order[start as usize..end as usize];
            start = end;
            if group.is_empty() {
                continue;
            }
            let mut shard = self.shards[s].lock();
            for &i in group {
                let item = &mut items[i as usize];
                if let Some(key) = id(item) {
                    f(&mut shard, key, item);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_shard_groups_every_position_once_in_order() {
        let ids: Vec<u128> = (0..300u128).map(|i| i * 7919 + (i << 70)).collect();
        // Every seventh position has no shard: left out.
        let shards: Vec<u8> = (0..ids.len())
            .map(|i| {
                if i % 7 == 3 {
                    NO_SHARD
                } else {
                    shard_of(ids[i]) as u8
                }
            })
            .collect();
        let (order, ends) = by_shard(&shards);
        let mut seen: Vec<bool> = (0..ids.len()).map(|i| i % 7 == 3).collect();
        let mut start = 0;
        for (s, &end) in ends.iter().enumerate() {
            let group = &order[start as usize..end as usize];
            assert!(group.windows(2).all(|w| w[0] < w[1]), "position order");
            for &i in group {
                assert_eq!(shard_of(ids[i as usize]), s);
                assert!(!seen[i as usize]);
                seen[i as usize] = true;
            }
            start = end;
        }
        assert!(seen.iter().all(|&s| s));
        let kept = shards.iter().filter(|&&s| s != NO_SHARD).count();
        assert_eq!(start as usize, kept);
        assert_eq!(kept, 300 - 43);
        assert!(by_shard(&[]).0.is_empty());
    }

    #[test]
    fn grouped_visits_each_position_under_its_shard() {
        let t: Shards<Vec<usize>> = Shards::default();
        let ids: Vec<u128> = vec![5, 1 << 64, 5, 77, 3 << 90, 77, 12];
        // Items without an id (0 here) are skipped.
        let mut items: Vec<(usize, u128)> = ids.iter().copied().enumerate().collect();
        items.insert(3, (99, 0));
        items.push((98, 0));
        t.grouped(
            &mut items,
            |&(_, id)| (id != 0).then_some(id),
            |shard, _, item| shard.push(item.0),
        );
        let mut all = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            assert!(t.lock(id).contains(&i));
        }
        t.each(|shard| {
            assert!(shard.windows(2).all(|w| w[0] < w[1]));
            all.extend(shard.iter().copied());
        });
        all.sort_unstable();
        assert_eq!(all, (0..ids.len()).collect::<Vec<_>>());
        let s = shard_of(5);
        assert_eq!(t.lock_shard(s).iter().filter(|&&i| ids[i] == 5).count(), 2);
        // One item: its shard directly.
        let one: Shards<Vec<usize>> = Shards::default();
        one.grouped(
            &mut [(7usize, 77u128)],
            |&(_, id)| Some(id),
            |shard, _, item| shard.push(item.0),
        );
        assert_eq!(*one.lock(77), vec![7]);
        one.grouped(
            &mut [(8usize, 0u128)],
            |_| None,
            |shard, _, item| shard.push(item.0),
        );
        let mut n = 0;
        one.each(|s| n += s.len());
        assert_eq!(n, 1, "an item without an id: nothing");
    }
}
