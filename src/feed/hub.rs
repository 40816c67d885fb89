//! The feed hub: puts the feed records of every log record in sequence order, publishes
//! them once they are durable, and keeps the last `retention_records` of them in a ring so a
//! subscriber can resume from a sequence number without a gap or a duplicate.
//!
//! SKU actors on several threads append to the log in sequence order but finish at slightly
//! different times, so each pushes `(seq, record)` into a staging vector (one short lock)
//! and a publisher task reorders them, waits until the highest contiguous sequence number
//! is durable, moves the records into the ring and advances a watch channel that wakes the
//! subscribers. Every sequence number is pushed exactly once, with `None` when it means
//! nothing to subscribers, so the publisher can tell a gap from a record not pushed yet.
//!
//! A slow subscriber only reads the ring at its own pace: nothing here waits for a
//! subscriber, so reservations never slow down because of one. Memory is bounded by the
//! ring (`retention_records`) plus the staging vector (records appended but not yet
//! durable, bounded by what the log accepts before a group commit).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};

use super::FeedRecord;

/// Default records kept for resumption (about 650 B each once a subscriber has read it: ~650 MB at the default).
pub const DEFAULT_RETENTION_RECORDS: usize = 1_000_000;

/// One published position of the ring: the record of that sequence number, if it means
/// anything to subscribers.
pub type Slot = Option<Arc<FeedRecord>>;

struct Ring {
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    entries: VecDeque<Slot>,
}

/// Counters of the hub that tests and tools read directly (the rest are Prometheus
/// counters, src/metrics.rs).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Subscribers disconnected because they lagged.
    pub lagged: AtomicU64,
}

/// See the module documentation.
pub struct Hub {
    staging: Mutex<Vec<(u64, Slot)>>,
    staged: Notify,
    enabled: AtomicBool,
    ring: RwLock<Ring>,
    head_tx: watch::Sender<u64>,
    retention: usize,
    subscribers: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    next_subscriber: AtomicU64,
    /// Counters.
    pub stats: HubStats,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("head", &self.head())
            .field("retained_from", &self.retained_from())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose next record is `last_seq + 1`, keeping at most `retention` records.
    pub fn new(last_seq: u64, retention: usize) -> Hub {
        Hub {
            staging: Mutex::new(Vec::new()),
            staged: Notify::new(),
            enabled: AtomicBool::new(true),
            ring: RwLock::new(Ring {
                first_seq: last_seq + 1,
                entries: VecDeque::new(),
            }),
            head_tx: watch::channel(last_seq).0,
            retention: retention.max(1),
            subscribers: Mutex::new(HashMap::new()),
            next_subscriber: AtomicU64::new(1),
            stats: HubStats::default(),
        }
    }

    /// Recovery: the records derived from the log after the checkpoint (durable, in order,
    /// contiguous, the last one being `last_seq`), so subscribers can resume across a restart.
    pub fn load(&self, records: VecDeque<(u64, Slot)>, last_seq: u64) {
        let mut ring = self.ring.write();
        match records.front() {
            Some((first, _)) if first + records.len() as u64 - 1 == last_seq => {
                ring.first_seq = *first;
                ring.entries = records.into_iter().map(|(_, s)| s).collect();
            }
            _ => {
                ring.first_seq = last_seq + 1;
                ring.entries.clear();
            }
        }
        drop(ring);
        self.head_tx.send_replace(last_seq);
    }

    /// Stages the record of `seq` (every appended sequence number, exactly once).
    pub fn push(&self, seq: u64, slot: Slot) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.staging.lock().push((seq, slot));
        self.staged.notify_one();
    }

    /// Stops staging (no publisher will run): nothing is kept.
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.staging.lock().clear();
    }

    /// The last published sequence number.
    pub fn head(&self) -> u64 {
        *self.head_tx.borrow()
    }

    /// The oldest sequence number the ring still holds (head + 1 when empty).
    pub fn retained_from(&self) -> u64 {
        self.ring.read().first_seq
    }

    /// A receiver woken at each publication.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// Calls `f(seq, slot)` for up to `max` published records after `cursor`, in order,
    /// under the ring's read lock (no reference count is touched), until `f` returns false.
    /// Returns how many were visited, or `Err(first_seq)` if the ring no longer holds
    /// `cursor + 1`. Keep `f` short: the publisher waits for the lock.
    pub fn visit_after(
        &self,
        cursor: u64,
        max: usize,
        mut f: impl FnMut(u64, &Slot) -> bool,
    ) -> Result<usize, u64> {
        let ring = self.ring.read();
        if cursor + 1 < ring.first_seq {
            return Err(ring.first_seq);
        }
        let start = usize::try_from(cursor + 1 - ring.first_seq).unwrap_or(usize::MAX);
        let mut n = 0;
        for (i, slot) in ring.entries.iter().skip(start).take(max).enumerate() {
            n += 1;
            if !f(cursor + 1 + i as u64, slot) {
                break;
            }
        }
        Ok(n)
    }

    /// Registers a subscriber's cursor (for the lag metric); removed by [`Hub::leave`].
    pub fn join(&self, cursor: u64) -> (u64, Arc<AtomicU64>) {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(AtomicU64::new(cursor));
        self.subscribers.lock().insert(id, c.clone());
        (id, c)
    }

    /// Unregisters a subscriber.
    pub fn leave(&self, id: u64) {
        self.subscribers.lock().remove(&id);
    }

    /// Connected subscribers.
    pub fn subscribers(&self) -> usize {
        self.subscribers.lock().len()
    }

    /// The largest backlog of any subscriber, in records.
    pub fn max_lag(&self) -> u64 {
        let head = self.head();
        self.subscribers
            .lock()
            .values()
            .map(|c| head.saturating_sub(c.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    }

    /// The publisher: orders staged records, waits for durability of each contiguous run
    /// with `durable(seq)`, publishes. Returns when `durable` fails (the log stopped: fail
    /// stop) or `alive()` turns false.
    pub async fn run_publisher<F, Fut>(self: Arc<Self>, durable: F, alive: impl Fn() -> bool)
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut reorder: BTreeMap<u64, Slot> = BTreeMap::new();
        loop {
            // The timeout only bounds how long a stopped engine keeps this task alive.
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                self.staged.notified(),
            )
            .await;
            if !alive() {
                return;
            }
            let batch = std::mem::take(&mut *self.staging.lock());
            reorder.extend(batch);
            let head = self.head();
            let mut run: Vec<Slot> = Vec::new();
            while let Some(entry) = reorder.first_entry() {
                if *entry.key() != head + 1 + run.len() as u64 {
                    break;
                }
                run.push(entry.remove());
            }
            if run.is_empty() {
                continue;
            }
            let end = head + run.len() as u64;
            if let Err(e) = durable(end).await {
                tracing::error!(error = %e, seq = end, "feed stopped: the log failed");
                return;
            }
            self.publish(head, run);
            // More may have been staged while waiting.
            self.staged.notify_one();
        }
    }

    fn publish(&self, head: u64, run: Vec<Slot>) {
        let n = run.len() as u64;
        let mut ring = self.ring.write();
        if ring.entries.is_empty() {
            ring.first_seq = head + 1;
        }
        ring.entries.extend(run);
        while ring.entries.len() > self.retention {
            ring.entries.pop_front();
            ring.first_seq += 1;
        }
        drop(ring);
        self.head_tx.send_replace(head + n);
    }
}
