//! The reservation index: reservation id -> its entry (channel, lines, expiry, whether an
//! operation holds it), sharded by id ([`super::shards`]). A request frame enters its
//! reserves ([`ReservationIndex::begin_many`]) and commits the placed ones
//! ([`ReservationIndex::commit_many`]) one shard at a time; other operations take one
//! shard's lock for one entry. A guard returned here holds its shard: drop it before the
//! next call on the index.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use parking_lot::{MappedMutexGuard, MutexGuard};

use crate::domain::{ReservationId, SkuId};

use super::shards::Shards;
use super::ResEntry;

type Map = HashMap<ReservationId, ResEntry, foldhash::fast::RandomState>;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct ReservationIndex {
    shards: Shards<Map>,
}

impl ReservationIndex {
    /// The entry of `id`, its shard locked while the guard lives.
    pub(crate) fn get_mut(&self, id: &ReservationId) -> Option<MappedMutexGuard<'_, ResEntry>> {
        MutexGuard::try_map(self.shards.lock(*id), |m| m.get_mut(id)).ok()
    }

    /// What `f` reads of the entry of `id`.
    pub(crate) fn read<R>(&self, id: &ReservationId, f: impl FnOnce(&ResEntry) -> R) -> Option<R> {
        self.shards.lock(*id).get(id).map(f)
    }

    /// Removes the entry of `id`.
    pub(crate) fn remove(&self, id: &ReservationId) -> Option<ResEntry> {
        self.shards.lock(*id).remove(id)
    }

    /// The entry of `id` (made by `make` if there is none), changed by `f`.
    pub(crate) fn upsert(
        &self,
        id: ReservationId,
        make: impl FnOnce() -> ResEntry,
        f: impl FnOnce(&mut ResEntry),
    ) {
        f(self.shards.lock(id).entry(id).or_insert_with(make));
    }

    /// Entries.
    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        self.shards.each(|m| n += m.len());
        n
    }

    /// `f` on every entry, one shard locked at a time (`f` must not call the index).
    pub(crate) fn for_each(&self, mut f: impl FnMut(ReservationId, &ResEntry)) {
        self.shards.each(|m| m.iter().for_each(|(id, e)| f(*id, e)));
    }

    /// For each item with a reservation id (`id(item)`), in slice order, takes its entry
    /// out of `entry(item)` into the index if the id is free. Where the id is taken (by an
    /// entry already there or an earlier item), the entry is left in the item, and the
    /// entry in the index as it was.
    pub(crate) fn begin_many<I>(
        &self,
        items: &mut [I],
        id: impl Fn(&I) -> Option<ReservationId>,
        entry: impl Fn(&mut I) -> &mut Option<ResEntry>,
    ) {
        self.shards.grouped(items, id, |m, key, item| {
            if let Entry::Vacant(v) = m.entry(key) {
                if let Some(e) = entry(item).take() {
                    v.insert(e);
                }
            }
        });
    }

    /// Each reservation of `placed` committed with its lines (taken: all its holds placed
    /// and durable) and no longer busy.
    pub(crate) fn commit_many(&self, placed: &mut [(ReservationId, Vec<(SkuId, u32)>)]) {
        self.shards.grouped(
            placed,
            |p| Some(p.0),
            |m, id, p| {
                if let Some(e) = m.get_mut(&id) {
                    e.lines = std::mem::take(&mut p.1);
                    e.busy = false;
                    e.committed = true;
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChannelId;

    fn entry(expires_at_ms: u64) -> ResEntry {
        ResEntry {
            channel: ChannelId::new("web").unwrap(),
            lines: Vec::new(),
            expires_at_ms,
            busy: true,
            expiring: false,
            committed: false,
        }
    }

    /// Enters `(id, entry)` items: whether each was entered.
    fn begin(index: &ReservationIndex, new: Vec<(ReservationId, ResEntry)>) -> Vec<bool> {
        let mut items: Vec<(ReservationId, Option<ResEntry>)> =
            new.into_iter().map(|(id, e)| (id, Some(e))).collect();
        index.begin_many(&mut items, |i| Some(i.0), |i| &mut i.1);
        items.iter().map(|i| i.1.is_none()).collect()
    }

    #[test]
    fn begin_many_enters_free_ids_once_in_order() {
        let index = ReservationIndex::default();
        assert_eq!(begin(&index, vec![(7, entry(1))]), vec![true]);
        let ids = [7u128, 8, 8, 1 << 100, 9];
        let got = begin(
            &index,
            ids.iter()
                .map(|&id| (id, entry(id as u64 % 1000)))
                .collect(),
        );
        assert_eq!(got, vec![false, true, false, true, true]);
        assert_eq!(index.len(), 4);
        assert_eq!(
            index.read(&7, |e| e.expires_at_ms),
            Some(1),
            "kept as it was"
        );
        assert_eq!(
            index.read(&8, |e| e.expires_at_ms),
            Some(8),
            "the first one"
        );
    }

    #[test]
    fn commit_many_commits_what_is_there() {
        let index = ReservationIndex::default();
        begin(&index, vec![(1, entry(5)), (2, entry(5))]);
        let sku = SkuId::new("A").unwrap();
        index.commit_many(&mut [(1, vec![(sku.clone(), 3)]), (3, vec![(sku.clone(), 1)])]);
        let one = index.read(&1, |e| (e.busy, e.committed, e.lines.clone()));
        assert_eq!(one, Some((false, true, vec![(sku, 3)])));
        assert_eq!(
            index.read(&2, |e| (e.busy, e.committed)),
            Some((true, false))
        );
        assert!(index.read(&3, |_| ()).is_none(), "not entered: not made");
        let mut seen = Vec::new();
        index.for_each(|id, _| seen.push(id));
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2]);
        assert!(index.remove(&1).is_some());
        assert!(index.get_mut(&1).is_none());
    }
}
