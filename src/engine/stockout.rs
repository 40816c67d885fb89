//! Stockout re-projection (docs/intelligence.md): the set of SKUs with a raised "stockout
//! projected" flag, and the task that re-evaluates them at a bounded rate.
//!
//! A projection is raised and cleared by events `decide` appends to a SKU's own records,
//! so a SKU that keeps selling or is restocked clears itself. One whose demand simply
//! stops has no record any more, yet its held rate decays and its hours to zero grow past
//! the clearing band: only time changed. The task sends such SKUs a `Reproject` command
//! (decide at the clock's now; its events are only projections, none when nothing changed,
//! and then nothing is logged), so the cleared event follows the decay within a bounded,
//! documented delay instead of waiting for the SKU's next sale.
//!
//! Bounds: at most [`MAX_WATCHED_SKUS`] SKUs are watched (beyond that a raised SKU is not
//! watched and clears only with its next record; counted by `overflowed`), at most
//! [`REPROJECT_BATCH`] of them re-evaluated per round, one round every
//! [`REPROJECT_INTERVAL_MS`], round robin in SKU order. A cleared event therefore comes at
//! most `REPROJECT_INTERVAL_MS x ceil(watched / REPROJECT_BATCH)` after the projection
//! crosses the band (5 s up to 1,000 watched SKUs, 500 s at the 100,000 cap).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use parking_lot::Mutex;

use crate::domain::{Event, Rejection, SkuCommand, SkuId, SkuState};

use super::actor::SkuReply;
use super::delivery::{call, sku_op, Admit, Delivery};
use super::Core;

/// Most SKUs the re-projection task watches at once.
pub const MAX_WATCHED_SKUS: usize = 100_000;

/// Most SKUs re-evaluated in one round.
pub const REPROJECT_BATCH: usize = 1_000;

/// Time between two rounds, in ms.
pub const REPROJECT_INTERVAL_MS: u64 = 5_000;

/// The SKUs with a raised projection, and where the round robin stands.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    inner: Mutex<WatchedInner>,
    /// Raised SKUs not watched because the set was full (since start).
    pub overflowed: AtomicU64,
}

#[derive(Debug, Default)]
struct WatchedInner {
    skus: BTreeSet<SkuId>,
    /// The last SKU of the previous round (the next round starts after it).
    cursor: Option<SkuId>,
}

impl Watched {
    /// Follows `state` after a record with projection events: watched while a projection
    /// (per channel or region) or a rebalance recommendation is raised.
    pub fn follow(&self, state: &SkuState) {
        let mut w = self.inner.lock();
        if !state.watch_needed() {
            w.skus.remove(&state.sku);
        } else if !w.skus.contains(&state.sku) {
            if w.skus.len() >= MAX_WATCHED_SKUS {
                drop(w);
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            w.skus.insert(state.sku.clone());
        }
    }

    /// Stops watching `sku` (it is gone).
    fn forget(&self, sku: &SkuId) {
        self.inner.lock().skus.remove(sku);
    }

    /// SKUs watched now.
    pub fn len(&self) -> usize {
        self.inner.lock().skus.len()
    }

    /// The next `max` SKUs after the cursor, wrapping around once.
    fn next_round(&self, max: usize) -> Vec<SkuId> {
        let mut w = self.inner.lock();
        let mut out: Vec<SkuId> = match &w.cursor {
            Some(c) => w
                .skus
                .range::<SkuId, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                .take(max)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if out.len() < max {
            let first = out.first().cloned();
            for s in w.skus.iter() {
                if out.len() >= max || Some(s) == first.as_ref() || out.contains(s) {
                    break;
                }
                out.push(s.clone());
            }
        }
        w.cursor = out.last().cloned();
        out
    }
}

/// Whether an event is a projection (`decide` appends them after a request's own events).
pub(crate) fn is_projection(e: &Event) -> bool {
    crate::domain::sku::is_projection(e)
}

/// One round: re-evaluates up to [`REPROJECT_BATCH`] watched SKUs at the clock's now, in a
/// request epoch like client requests. Returns how many logged a projection change.
pub(crate) async fn reproject_round(core: &Arc<Core>) -> usize {
    let skus = core.stockout.next_round(REPROJECT_BATCH);
    if skus.is_empty() {
        return 0;
    }
    let now = core.clock.now_ms();
    let epoch = core.enter_epoch();
    let calls = skus.into_iter().map(|sku| async move {
        let op = sku_op(SkuCommand::Reproject, (0, 0), core, now, Admit::New);
        let r = call(core, &sku, op, false, Delivery::Try).await;
        (sku, r)
    });
    let results = join_all(calls).await;
    core.exit_epoch(epoch);
    let mut changed = 0;
    for (sku, r) in results {
        match r {
            Ok(SkuReply::Done { seq, .. }) if seq > 0 => changed += 1,
            Ok(SkuReply::Rejected(Rejection::UnknownSku(_))) => core.stockout.forget(&sku),
            // Busy, back-pressure, storage: the SKU stays watched, the next pass retries.
            _ => {}
        }
    }
    changed
}

/// Runs a round every [`REPROJECT_INTERVAL_MS`]. Holds the core only weakly between rounds,
/// so a shut-down engine is released at once.
pub(crate) async fn stockout_driver(weak: std::sync::Weak<Core>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(REPROJECT_INTERVAL_MS)).await;
        let Some(core) = weak.upgrade() else { return };
        reproject_round(&core).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, raised: bool) -> SkuState {
        let mut s = SkuState::new(SkuId::new(id).unwrap());
        if raised {
            s.stockout
                .push(crate::domain::ChannelId::new("web").unwrap());
        }
        s
    }

    #[test]
    fn rounds_go_round_robin_over_the_watched_skus() {
        let w = Watched::default();
        for id in ["a", "b", "c", "d", "e"] {
            w.follow(&state(id, true));
        }
        let ids = |v: Vec<SkuId>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(w.next_round(2)), ["a", "b"]);
        assert_eq!(ids(w.next_round(2)), ["c", "d"]);
        // Wraps around, never repeating a SKU in one round.
        assert_eq!(ids(w.next_round(2)), ["e", "a"]);
        assert_eq!(ids(w.next_round(10)), ["b", "c", "d", "e", "a"]);
        // Cleared: not watched any more.
        w.follow(&state("c", false));
        assert_eq!(w.len(), 4);
        assert_eq!(ids(w.next_round(10)), ["b", "d", "e", "a"]);
        w.forget(&SkuId::new("a").unwrap());
        assert_eq!(ids(w.next_round(10)), ["b", "d", "e"]);
    }
}
