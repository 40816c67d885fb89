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
//! A subscriber that filters on SKUs or a SKU prefix is *routed*: at each publication the
//! publisher looks each record's SKU up once in an index (SKU -> subscribers, prefix ->
//! subscribers) and appends the record's sequence number to the inbox of every subscriber
//! it matches, then wakes only those (and, every [`WAKE_EVERY_RECORDS`] published records,
//! the others, so their position moves on). A routed subscriber reads only its own records
//! from the ring instead of testing every record; one that follows every SKU reads the
//! ring from its cursor and is woken at each publication. An inbox holds at most
//! [`INBOX_CAPACITY`] sequence numbers: past that it is emptied and its subscriber reads
//! the ring from its cursor over that stretch, as an unrouted one does.
//!
//! A slow subscriber only reads the ring at its own pace: nothing here waits for a
//! subscriber, so reservations never slow down because of one. Memory is bounded by the
//! ring (`retention_records`) plus the staging vector (records appended but not yet
//! durable, bounded by what the log accepts before a group commit).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};

use super::{FeedBody, FeedRecord};
use crate::domain::SkuId;

/// Default records kept for resumption: about 450 B each while no subscriber has read it,
/// about 800 B once one has (its encoded items): 450–800 MB at the default.
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
    /// The routing index; the publisher holds it over a whole publication (routing, ring,
    /// head, wake-ups) so a subscriber that joins sees a publication entirely before or
    /// entirely after.
    routes: Mutex<Routes>,
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
            routes: Mutex::new(Routes::new(last_seq)),
            stats: HubStats::default(),
        }
    }

    /// Recovery: the records derived from the log after the checkpoint (durable, in order,
    /// contiguous, the last one being `last_seq`), so subscribers can resume across a restart.
    pub fn load(&self, records: VecDeque<(u64, Slot)>, last_seq: u64) {
        let mut routes = self.routes.lock();
        routes.routed_upto = routes.routed_upto.max(last_seq);
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
        drop(routes);
    }

    /// Stages the record of `seq` (every appended sequence number, exactly once).
    pub fn push(&self, seq: u64, slot: Slot) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let mut staging = self.staging.lock();
        staging.push((seq, slot));
        // The publisher takes the whole vector under this lock: only the push that finds
        // it empty has to wake it (the others join what it will take).
        let first = staging.len() == 1;
        drop(staging);
        if first {
            self.staged.notify_one();
        }
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

    /// Calls `f(seq, slot)` for each of `seqs` (ascending, published) under the ring's read
    /// lock, until `f` returns false. Returns how many were visited, or `Err(first_seq)` if
    /// the ring no longer holds the first of them.
    pub fn visit_seqs(
        &self,
        seqs: impl IntoIterator<Item = u64>,
        mut f: impl FnMut(u64, &Slot) -> bool,
    ) -> Result<usize, u64> {
        let ring = self.ring.read();
        let mut n = 0;
        for seq in seqs {
            if seq < ring.first_seq {
                return Err(ring.first_seq);
            }
            let Some(slot) = usize::try_from(seq - ring.first_seq)
                .ok()
                .and_then(|i| ring.entries.get(i))
            else {
                break;
            };
            n += 1;
            if !f(seq, slot) {
                break;
            }
        }
        Ok(n)
    }

    /// Registers a subscriber's cursor (for the lag metric) and, with a `route`, its inbox
    /// (see the module documentation); removed by [`Hub::leave`].
    pub fn join(&self, cursor: u64, route: Option<Route>) -> Joining {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(AtomicU64::new(cursor));
        self.subscribers.lock().insert(id, c.clone());
        let inbox = route.map(|r| self.routes.lock().add(id, r));
        Joining {
            id,
            cursor: c,
            inbox,
        }
    }

    /// Unregisters a subscriber.
    pub fn leave(&self, id: u64) {
        self.subscribers.lock().remove(&id);
        self.routes.lock().remove(id);
    }

    /// Routed subscribers (tests and the `omnistock_feed_routed_subscribers` view).
    pub fn routed(&self) -> usize {
        self.routes.lock().inboxes.iter().flatten().count()
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
        // The staged slots not yet published: position i is sequence number head + 1 + i
        // (`None`: not staged yet). Actors stage nearly in order, so this holds a short
        // window: the records appended but not yet all staged.
        let mut reorder: VecDeque<Option<Slot>> = VecDeque::new();
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
            let head = self.head();
            for (seq, slot) in batch {
                let Some(at) = seq.checked_sub(head + 1) else {
                    // Every sequence number is staged once, after the head: not expected.
                    tracing::error!(seq, head, "feed: a record staged twice or late, dropped");
                    continue;
                };
                let at = usize::try_from(at).unwrap_or(usize::MAX);
                if at >= reorder.len() {
                    reorder.resize(at + 1, None);
                }
                reorder[at] = Some(slot);
            }
            let ready = reorder.iter().take_while(|s| s.is_some()).count();
            let run: Vec<Slot> = reorder.drain(..ready).flatten().collect();
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
        let mut routes = self.routes.lock();
        routes.route(head, &run);
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
        routes.wake(head + n);
    }
}

/// What a routed subscriber is routed by (a [`super::Filter`]'s SKUs, else its prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The SKUs of the set.
    Skus(Vec<SkuId>),
    /// SKUs starting with this prefix (not empty).
    Prefix(Box<str>),
}

/// Most sequence numbers an inbox holds (8 bytes each); past it the subscriber reads the
/// ring over that stretch instead.
pub const INBOX_CAPACITY: usize = 8192;

/// A routed subscriber is woken at least once per this many published records, even when
/// none of them matched it (its position moves on; well under the lag before coalescing).
pub const WAKE_EVERY_RECORDS: u64 = 4096;

/// What [`Hub::join`] registered.
#[derive(Debug)]
pub struct Joining {
    /// The subscriber's id (for [`Hub::leave`]).
    pub id: u64,
    /// Its cursor, for the lag metric.
    pub cursor: Arc<AtomicU64>,
    /// Its inbox, when routed.
    pub inbox: Option<Arc<Inbox>>,
}

/// The sequence numbers routed to one subscriber, and its wake-up.
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

#[derive(Debug)]
struct InboxState {
    /// Matching sequence numbers after `scan_upto`, ascending.
    seqs: Vec<u64>,
    /// Up to here the subscriber reads the ring (what was published before it joined, or
    /// the stretch an overflow emptied); after it, every matching record is in `seqs`.
    scan_upto: u64,
    /// The head when the subscriber was last woken.
    woken_at: u64,
    /// Routed to since the last wake-up.
    fresh: bool,
}

impl Inbox {
    /// Appends the routed sequence numbers to `out` and returns the position up to which
    /// the subscriber must read the ring itself: every matching record after it is in `out`
    /// (or routed later).
    pub fn drain(&self, out: &mut VecDeque<u64>) -> u64 {
        let mut st = self.state.lock();
        out.extend(st.seqs.drain(..));
        st.scan_upto
    }

    /// Resolves at the next wake-up (one given before the call counts).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// The routing index (see the module documentation).
struct Routes {
    /// Publications up to here are routed.
    routed_upto: u64,
    /// Slots; `None` where a subscriber left.
    inboxes: Vec<Option<(u64, Arc<Inbox>)>>,
    /// Sequence numbers matched in the publication being routed, per slot.
    pending: Vec<Vec<u64>>,
    free: Vec<usize>,
    by_sku: HashMap<SkuId, Vec<usize>>,
    by_prefix: HashMap<Box<str>, Vec<usize>>,
    /// The distinct lengths of `by_prefix`'s keys.
    prefix_lens: Vec<usize>,
    /// Slot by subscriber id, and what it is routed by.
    slots: HashMap<u64, (usize, Route)>,
    /// Slots matched by the current record (scratch).
    hits: Vec<usize>,
    /// [`INBOX_CAPACITY`] (smaller in tests).
    capacity: usize,
}

impl Routes {
    fn new(last_seq: u64) -> Routes {
        Routes {
            routed_upto: last_seq,
            inboxes: Vec::new(),
            pending: Vec::new(),
            free: Vec::new(),
            by_sku: HashMap::new(),
            by_prefix: HashMap::new(),
            prefix_lens: Vec::new(),
            slots: HashMap::new(),
            hits: Vec::new(),
            capacity: INBOX_CAPACITY,
        }
    }

    fn add(&mut self, id: u64, route: Route) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState {
                seqs: Vec::new(),
                scan_upto: self.routed_upto,
                woken_at: self.routed_upto,
                fresh: false,
            }),
            notify: Notify::new(),
        });
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.inboxes.push(None);
                self.pending.push(Vec::new());
                self.inboxes.len() - 1
            }
        };
        self.inboxes[slot] = Some((id, inbox.clone()));
        match &route {
            Route::Skus(skus) => {
                for sku in skus {
                    self.by_sku.entry(sku.clone()).or_default().push(slot);
                }
            }
            Route::Prefix(p) => {
                self.by_prefix.entry(p.clone()).or_default().push(slot);
                if !self.prefix_lens.contains(&p.len()) {
                    self.prefix_lens.push(p.len());
                }
            }
        }
        self.slots.insert(id, (slot, route));
        inbox
    }

    fn remove(&mut self, id: u64) {
        let Some((slot, route)) = self.slots.remove(&id) else {
            return;
        };
        let unlist = |v: &mut Vec<usize>| v.retain(|s| *s != slot);
        match route {
            Route::Skus(skus) => {
                for sku in &skus {
                    if let Some(v) = self.by_sku.get_mut(sku) {
                        unlist(v);
                        if v.is_empty() {
                            self.by_sku.remove(sku);
                        }
                    }
                }
            }
            Route::Prefix(p) => {
                if let Some(v) = self.by_prefix.get_mut(&p) {
                    unlist(v);
                    if v.is_empty() {
                        self.by_prefix.remove(&p);
                        self.prefix_lens = self.by_prefix.keys().map(|k| k.len()).collect();
                        self.prefix_lens.sort_unstable();
                        self.prefix_lens.dedup();
                    }
                }
            }
        }
        self.inboxes[slot] = None;
        self.pending[slot].clear();
        self.free.push(slot);
    }

    /// Routes the records after `head` into the inboxes they match.
    fn route(&mut self, head: u64, run: &[Slot]) {
        let end = head + run.len() as u64;
        if self.slots.is_empty() {
            self.routed_upto = end;
            return;
        }
        let mut hits = std::mem::take(&mut self.hits);
        for (i, slot) in run.iter().enumerate() {
            let seq = head + 1 + i as u64;
            let Some(rec) = slot else { continue };
            hits.clear();
            match &rec.body {
                // Every subscriber is told of a catalog change.
                FeedBody::Catalog => hits.extend(
                    self.inboxes
                        .iter()
                        .enumerate()
                        .filter_map(|(s, i)| i.as_ref().map(|_| s)),
                ),
                FeedBody::Sku { sku, .. } => {
                    if let Some(v) = self.by_sku.get(sku) {
                        hits.extend_from_slice(v);
                    }
                    let name = sku.as_str();
                    for &len in &self.prefix_lens {
                        if let Some(v) = name.get(..len).and_then(|p| self.by_prefix.get(p)) {
                            hits.extend_from_slice(v);
                        }
                    }
                }
            }
            // A subscriber is listed once per record: by its SKU set or by its prefix.
            for &s in &hits {
                self.pending[s].push(seq);
            }
        }
        self.hits = hits;
        for (slot, pending) in self.pending.iter_mut().enumerate() {
            if pending.is_empty() {
                continue;
            }
            if let Some((_, inbox)) = &self.inboxes[slot] {
                let mut st = inbox.state.lock();
                if st.seqs.len() + pending.len() > self.capacity {
                    // Overflow: the subscriber reads the ring over this stretch itself.
                    st.seqs.clear();
                    st.scan_upto = end;
                } else {
                    st.seqs.extend_from_slice(pending);
                }
                st.fresh = true;
            }
            pending.clear();
        }
        self.routed_upto = end;
    }

    /// Wakes the inboxes that received records, and those not woken for
    /// [`WAKE_EVERY_RECORDS`], now that the head is `head`.
    fn wake(&mut self, head: u64) {
        for (_, inbox) in self.inboxes.iter().flatten() {
            let mut st = inbox.state.lock();
            if st.fresh || head >= st.woken_at + WAKE_EVERY_RECORDS {
                st.woken_at = head;
                st.fresh = false;
                drop(st);
                inbox.notify.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The routing index against a model that knows only what each subscriber asked for:
    //! a subscriber that reads the ring up to its inbox's `scan_upto` (testing each record
    //! itself, as an unrouted subscriber does) and its inbox after it receives exactly the
    //! matching records after the position it joined at, in order, once each — whatever
    //! the joins, leaves, overflows and publications in between.

    use super::*;
    use proptest::prelude::*;

    const SKUS: [&str; 6] = ["A-1", "A-2", "AB-1", "B-1", "B-22", "C"];

    #[derive(Clone, Debug)]
    enum Op {
        /// A subscriber routed by a prefix (`Ok`) or a SKU set (`Err`), from the head.
        Join(Result<&'static str, Vec<&'static str>>),
        Leave(usize),
        /// A publication: SKU indices (`None`: a catalog record; `Some(None)`: a record
        /// that means nothing to subscribers).
        Publish(Vec<Option<Option<usize>>>),
        Read(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::sample::select(vec!["A", "A-", "AB", "B-", "B-2", "C", "Z"])
                .prop_map(|p| Op::Join(Ok(p))),
            prop::sample::subsequence(SKUS.to_vec(), 1..4).prop_map(|s| Op::Join(Err(s))),
            (0..8usize).prop_map(Op::Leave),
            prop::collection::vec(
                prop_oneof![
                    8 => (0..SKUS.len()).prop_map(|i| Some(Some(i))),
                    1 => Just(Some(None)),
                    1 => Just(None),
                ],
                1..12
            )
            .prop_map(Op::Publish),
            (0..8usize).prop_map(Op::Read),
            (0..8usize).prop_map(Op::Read),
        ]
    }

    struct Sub {
        id: u64,
        route: Result<&'static str, Vec<&'static str>>,
        inbox: Arc<Inbox>,
        /// Where reading stands, and what it has read.
        cursor: u64,
        scan_upto: u64,
        queue: VecDeque<u64>,
        got: Vec<u64>,
        /// The model: what it must receive.
        want: Vec<u64>,
    }

    fn matches(
        route: &Result<&'static str, Vec<&'static str>>,
        rec: &Option<Option<usize>>,
    ) -> bool {
        match (rec, route) {
            (None, _) => true, // catalog
            (Some(None), _) => false,
            (Some(Some(i)), Ok(p)) => SKUS[*i].starts_with(p),
            (Some(Some(i)), Err(set)) => set.contains(&SKUS[*i]),
        }
    }

    fn slot(seq: u64, rec: &Option<Option<usize>>) -> Slot {
        let body = match rec {
            None => FeedBody::Catalog,
            Some(None) => return None,
            Some(Some(i)) => FeedBody::Sku {
                sku: SkuId::new(SKUS[*i]).expect("id"),
                cause: 0,
                atp: vec![],
                oversold: None,
                reservations: vec![],
                stockout: vec![],
                rebalance: vec![],
                region_stockout: vec![],
            },
        };
        Some(Arc::new(FeedRecord::new(seq, 0, body)))
    }

    /// What a subscriber reads up to the head: the ring up to `scan_upto`, tested record
    /// by record; its inbox after it.
    fn read(hub: &Hub, recs: &HashMap<u64, Option<Option<usize>>>, s: &mut Sub) {
        let head = hub.head();
        let scan_upto = s.inbox.drain(&mut s.queue);
        if scan_upto > s.scan_upto {
            s.scan_upto = scan_upto;
            s.queue.retain(|q| *q > scan_upto);
        }
        while s.cursor < head.min(s.scan_upto) {
            let mut seen = Vec::new();
            let n = hub
                .visit_after(s.cursor, 4, |seq, _| {
                    seen.push(seq);
                    true
                })
                .expect("retained");
            for seq in seen.into_iter().filter(|q| *q <= s.scan_upto) {
                if matches(&s.route, &recs[&seq]) {
                    s.got.push(seq);
                }
                s.cursor = seq;
            }
            assert!(n > 0);
        }
        let routed: Vec<u64> = s.queue.drain(..).collect();
        let visited = hub
            .visit_seqs(routed.iter().copied(), |seq, slot| {
                assert!(
                    slot.is_some() && seq > s.cursor,
                    "routed {seq}, a record, after the cursor"
                );
                s.got.push(seq);
                true
            })
            .expect("retained");
        assert_eq!(visited, routed.len(), "every routed record is published");
        s.cursor = s.cursor.max(head);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn routed_subscribers_get_exactly_their_records(
            ops in prop::collection::vec(op(), 1..60),
            capacity in 1usize..16,
        ) {
            let hub = Hub::new(0, 1_000_000);
            hub.routes.lock().capacity = capacity;
            let mut recs: HashMap<u64, Option<Option<usize>>> = HashMap::new();
            let mut subs: Vec<Sub> = Vec::new();
            for op in ops {
                match op {
                    Op::Join(route) => {
                        let r = match &route {
                            Ok(p) => Route::Prefix((*p).into()),
                            Err(set) => Route::Skus(set.iter().map(|s| SkuId::new(s).expect("id")).collect()),
                        };
                        let head = hub.head();
                        let j = hub.join(head, Some(r));
                        let inbox = j.inbox.expect("routed");
                        let mut q = VecDeque::new();
                        let scan_upto = inbox.drain(&mut q);
                        prop_assert!(q.is_empty());
                        subs.push(Sub { id: j.id, route, inbox, cursor: head, scan_upto, queue: q, got: vec![], want: vec![] });
                    }
                    Op::Leave(i) => {
                        if !subs.is_empty() {
                            let s = subs.remove(i % subs.len());
                            hub.leave(s.id);
                        }
                    }
                    Op::Publish(batch) => {
                        let head = hub.head();
                        let run: Vec<Slot> = batch.iter().enumerate().map(|(i, r)| slot(head + 1 + i as u64, r)).collect();
                        for (i, r) in batch.iter().enumerate() {
                            let seq = head + 1 + i as u64;
                            recs.insert(seq, *r);
                            for s in subs.iter_mut() {
                                if matches(&s.route, r) {
                                    s.want.push(seq);
                                }
                            }
                        }
                        hub.publish(head, run);
                    }
                    Op::Read(i) => {
                        if !subs.is_empty() {
                            let n = subs.len();
                            read(&hub, &recs, &mut subs[i % n]);
                        }
                    }
                }
            }
            for s in subs.iter_mut() {
                read(&hub, &recs, s);
                prop_assert_eq!(&s.got, &s.want, "subscriber {:?}", s.route);
            }
            prop_assert_eq!(hub.routed(), subs.len());
        }
    }

    #[test]
    fn a_routed_subscriber_is_woken_for_its_records_and_every_so_many_others() {
        let hub = Hub::new(0, 1_000_000);
        let j = hub.join(0, Some(Route::Prefix("A".into())));
        let inbox = j.inbox.expect("routed");
        let woken = |inbox: &Inbox| {
            let n = inbox.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable()
        };
        let others = |head: u64, n: u64| -> Vec<Slot> {
            (0..n).map(|i| slot(head + 1 + i, &Some(Some(3)))).collect()
        };
        hub.publish(0, others(0, 10));
        assert!(
            !woken(&inbox),
            "nothing of its own, and under WAKE_EVERY_RECORDS"
        );
        hub.publish(10, vec![slot(11, &Some(Some(0)))]);
        assert!(woken(&inbox), "its own record");
        hub.publish(11, others(11, WAKE_EVERY_RECORDS));
        assert!(woken(&inbox), "WAKE_EVERY_RECORDS others");
    }

    /// The publisher against the simplest model: whatever order the slots are staged in
    /// (each sequence number once, some in several batches), it publishes exactly the
    /// contiguous run after the head that is staged and durable, in sequence order.
    #[test]
    fn the_publisher_puts_shuffled_slots_in_order_and_waits_for_durability() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        proptest!(ProptestConfig::with_cases(64), |(
            n in 1..60u64,
            seed in any::<u64>(),
            durable_upto in 0..70u64,
            batches in 1..5usize,
        )| {
            rt.block_on(async {
                let hub = Arc::new(Hub::new(100, 1000));
                // A deterministic shuffle of 101..=100+n.
                let mut seqs: Vec<u64> = (101..=100 + n).collect();
                let mut x = seed | 1;
                for i in (1..seqs.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    seqs.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let durable_to = 100 + durable_upto;
                let publisher = tokio::spawn(hub.clone().run_publisher(
                    move |seq| async move {
                        if seq <= durable_to { Ok(()) } else {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                    },
                    || true,
                ));
                let per = seqs.len().div_ceil(batches);
                for chunk in seqs.chunks(per) {
                    for &seq in chunk {
                        hub.push(seq, slot(seq, &Some(Some((seq % 6) as usize))));
                    }
                    tokio::task::yield_now().await;
                }
                // What must be published: 101..=min(100+n, durable) (the publisher waits
                // for the whole run it has; a run past the durable bound waits whole).
                for _ in 0..200 {
                    tokio::task::yield_now().await;
                }
                let head = hub.head();
                publisher.abort();
                let mut got = Vec::new();
                hub.visit_after(100, usize::MAX, |seq, slot| {
                    got.push((seq, slot.as_ref().map(|r| r.seq)));
                    true
                })
                .expect("ring");
                let want: Vec<(u64, Option<u64>)> =
                    (101..=head).map(|s| (s, Some(s))).collect();
                prop_assert_eq!(got, want);
                prop_assert!(head <= 100 + n);
                if 100 + n <= durable_to {
                    prop_assert_eq!(head, 100 + n);
                } else {
                    prop_assert!(head <= durable_to);
                }
                Ok(())
            })?;
        });
    }
}
