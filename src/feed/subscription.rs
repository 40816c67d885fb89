//! One subscriber: validates a `SUBSCRIBE`, decides where it starts (live, snapshot, replay
//! from the ring, or the position stored under its name) — [`plan`] — then streams `Push`
//! frames until it unsubscribes, disconnects, or lags — [`serve`], the async shell around
//! the pure lifecycle machine of `crate::subscriber`, which decides every step; this file
//! only carries them out (reads the ring, renders frames, runs the timers).
//!
//! Back-pressure, in order: the output's budget (the connection's [`Port`]) and its bounded
//! queue: one push at a time is outstanding, the next is rendered once the previous one has
//! been handed over and the output has room; when the subscriber falls more than
//! `max_lag_records` behind, its ATP changes are coalesced (latest per SKU x channel,
//! bounded by `max_coalesce_pairs`) until it is within half of that again; when the ring no
//! longer holds its position, or its output takes nothing for `stall_timeout`, it gets
//! `Lagged { resume_from_seq }` and the connection is closed. None of this waits inside
//! the engine.
//!
//! A `Push` frame never splits the items of one sequence number, and every round ends with
//! `Position`, so the highest sequence number of a processed frame is a safe resume point.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::domain::{Catalog, ChannelId, SkuId, SkuView};
use crate::protocol::{self, kinds, start, started, FrameKind, PushBatch, PushItem};
use crate::protocol::{Subscribe, Subscribed, WireSnapshotEntry};

use crate::subscriber::{Action, Answer, Input, Limits, Machine, Reason, Start};

use super::hub::{Hub, Inbox, Route, Slot};
use super::{Coalescer, FeedBody, Filter, FrameBuf};

/// What a subscription reads from the engine. `feed/` does not import the engine (the
/// engine imports `feed/` for its hub and records), so the server implements this for
/// `Engine` and hands the engine in as a `Source`.
pub trait Source: Send + Sync + 'static {
    /// The current catalog.
    fn catalog(&self) -> Arc<Catalog>;
    /// The feed's hub (staging, ring, subscriber cursors).
    fn feed(&self) -> &Arc<Hub>;
    /// The position stored under a subscription name, if any.
    fn feed_position(&self, name: &str) -> Option<u64>;
    /// The highest sequence number the log has assigned.
    fn last_seq(&self) -> u64;
    /// The known SKU ids starting with `prefix`, sorted.
    fn sku_ids(&self, prefix: &str) -> Vec<SkuId>;
    /// A SKU's current view (waiting for room in its mailbox): `Ok(None)` when the engine
    /// rejects the read (an unknown SKU), `Err` with the reason when it is stopped or failed.
    fn sku_view(&self, sku: &SkuId)
        -> impl Future<Output = Result<Option<SkuView>, String>> + Send;
    /// Waits until `seq` is durable; `Err` with the reason when the engine stopped or failed.
    fn wait_durable(&self, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// Limits of one subscription.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    /// Records behind the head before ATP changes are coalesced.
    pub max_lag_records: u64,
    /// Most SKU x channel pairs (and other items) held while coalescing.
    pub max_coalesce_pairs: usize,
    /// A frame that cannot be queued for this long disconnects the subscriber.
    pub stall_timeout: Duration,
    /// Most items per `Push` frame (a frame may exceed it to keep one sequence number whole).
    pub max_items_per_frame: usize,
    /// Most bytes per `Push` frame, header included (the server's `max_frame_bytes`): a
    /// batch of items over it is cut between items into several frames.
    pub max_frame_bytes: usize,
    /// A `Position` is sent at least this often while records pass that match nothing.
    pub position_interval: Duration,
    /// Most SKUs in a `skus` filter.
    pub max_filter_skus: usize,
    /// With nothing sent for this long, a `Position` item is sent anyway (announced in
    /// `Subscribed.heartbeat_ms`); `None`: no heartbeat (the HTTP stream and webhooks have
    /// their own).
    pub heartbeat: Option<Duration>,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            max_lag_records: 100_000,
            max_coalesce_pairs: 100_000,
            stall_timeout: Duration::from_secs(10),
            max_items_per_frame: 1024,
            max_frame_bytes: crate::protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            position_interval: Duration::from_secs(1),
            max_filter_skus: 10_000,
            heartbeat: None,
        }
    }
}

/// Smallest and largest `coalesce_ms`.
pub const COALESCE_MS_RANGE: std::ops::RangeInclusive<u32> = 10..=60_000;
/// Records read from the ring per lock.
const READ_CHUNK: usize = 1024;
/// SKUs read per snapshot step.
const SNAPSHOT_CHUNK: usize = 256;

/// A subscription request that failed validation: answered `InvalidRequest` (12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// A validated subscription, ready to run.
#[derive(Debug)]
pub struct Plan {
    filter: Filter,
    coalesce: Option<Duration>,
    snapshot: bool,
    /// Events after this follow (after the snapshot, if any).
    cursor: u64,
    /// The answer to send before the first push.
    pub answer: Subscribed,
}

/// Names under this prefix hold the positions of the server's webhook endpoints
/// (`webhooks/`): a client may read them (`start = RESUME`) but not `ACK` them, which would
/// skip events an endpoint has not delivered.
pub const RESERVED_NAME_PREFIX: &str = "webhook.";

/// Names under this prefix hold the position of the server's NATS bridge (`nats/`),
/// reserved as [`RESERVED_NAME_PREFIX`] is.
pub const RESERVED_NATS_PREFIX: &str = "nats.";

/// Whether `n` is a position the server keeps for itself (a webhook endpoint's or the NATS
/// bridge's): clients may read it but not `ACK` it.
pub fn is_reserved_name(n: &str) -> bool {
    n.starts_with(RESERVED_NAME_PREFIX) || n.starts_with(RESERVED_NATS_PREFIX)
}

/// Whether `n` is a valid subscription name: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a `SUBSCRIBE` and decides where it starts.
pub fn plan<S: Source>(
    engine: &S,
    cfg: &SubscriptionConfig,
    s: &Subscribe,
) -> Result<Plan, Invalid> {
    let bad = |m: String| Err(Invalid(m));
    if s.kinds == 0 || s.kinds & !kinds::ALL != 0 {
        return bad(format!(
            "kinds {:#x}: a non-empty set of 1, 2, 4, 8",
            s.kinds
        ));
    }
    if s.coalesce_ms != 0 && !COALESCE_MS_RANGE.contains(&s.coalesce_ms) {
        return bad(format!(
            "coalesce_ms {} must be 0 or 10..=60000",
            s.coalesce_ms
        ));
    }
    if !s.name.is_empty() && !valid_name(&s.name) {
        return bad("name must be 1..=64 bytes of [A-Za-z0-9._-]".into());
    }
    if s.skus.len() > cfg.max_filter_skus {
        let m = cfg.max_filter_skus;
        return bad(format!("{} skus in the filter; at most {m}", s.skus.len()));
    }
    let catalog = engine.catalog();
    let mut channels = HashSet::new();
    for c in &s.channels {
        let id = ChannelId::new(c).map_err(|r| Invalid(r.to_string()))?;
        if !catalog.channels.contains_key(&id) {
            return bad(format!("unknown channel {c:?}"));
        }
        channels.insert(id);
    }
    let mut skus = HashSet::new();
    for k in &s.skus {
        skus.insert(SkuId::new(k).map_err(|r| Invalid(r.to_string()))?);
    }
    if s.sku_prefix.len() > crate::domain::limits::MAX_SKU_ID_BYTES {
        return bad("sku_prefix is longer than a SKU id may be".into());
    }
    let filter = Filter {
        channels,
        skus,
        sku_prefix: s.sku_prefix.clone(),
        kinds: s.kinds,
    };
    let hub = engine.feed();
    let head = hub.head();
    let retained = hub.retained_from();
    let name = (!s.name.is_empty()).then(|| s.name.clone());
    let (from, note) = match s.start {
        start::LIVE => (Some(head), String::new()),
        start::SNAPSHOT => (None, "snapshot requested".to_string()),
        start::AFTER => (Some(s.from_seq), String::new()),
        start::RESUME => match &name {
            None => return bad("start RESUME needs a name".into()),
            Some(n) => match engine.feed_position(n) {
                Some(p) => (Some(p), String::new()),
                None => (None, format!("no position stored under {n:?}: snapshot")),
            },
        },
        other => return bad(format!("start {other} is not 0..=3")),
    };
    let (snapshot, cursor, start_kind, note) = match from {
        // Acknowledged but not yet published is fine: the stream starts when it is.
        Some(f) if f > head.max(engine.last_seq()) => {
            return bad(format!(
                "from_seq {f} is ahead of the log's last sequence number {}",
                engine.last_seq()
            ))
        }
        Some(f) if f + 1 >= retained => (false, f, started::REPLAY, note),
        Some(f) => (
            true,
            head,
            started::SNAPSHOT,
            format!(
                "from_seq {f} is older than the log keeps (oldest {retained}): snapshot, then live"
            ),
        ),
        None => (true, head, started::SNAPSHOT, note),
    };
    let start_kind = if start_kind == started::REPLAY && cursor >= head {
        started::LIVE
    } else {
        start_kind
    };
    Ok(Plan {
        filter,
        coalesce: (s.coalesce_ms > 0).then(|| Duration::from_millis(u64::from(s.coalesce_ms))),
        snapshot,
        cursor,
        answer: Subscribed {
            start: start_kind,
            from_seq: cursor,
            head_seq: head,
            retained_from_seq: retained,
            note,
            heartbeat_ms: cfg
                .heartbeat
                .map_or(0, |h| u32::try_from(h.as_millis()).unwrap_or(u32::MAX)),
        },
    })
}

/// How a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Unsubscribed or the connection closed.
    Stopped,
    /// Disconnected for lagging (the `Lagged` item was queued if the socket allowed it).
    Lagged {
        /// Where to resume.
        resume_from_seq: u64,
    },
    /// The engine is shutting down or failed.
    EngineGone(String),
}

/// A request to a subscription shell ([`serve`]).
#[derive(Debug)]
pub enum Command {
    /// A SUBSCRIBE, planned by the caller (`Err`: it failed validation).
    Subscribe {
        /// Its correlation id (push frames carry it too).
        corr: u64,
        /// Where it starts and what it selects.
        plan: Result<Box<Plan>, Invalid>,
    },
    /// An UNSUBSCRIBE.
    Unsubscribe {
        /// Its correlation id.
        corr: u64,
    },
}

/// What a subscription shell needs from where its frames go (a connection, or a plain
/// queue for the server's own followers).
pub trait Port: Send + Sync + 'static {
    /// The response frame answering request `corr` (`subscribed`: the SUBSCRIBE answer's
    /// body); `None` where there are no requests (a follower).
    fn answer(
        &self,
        corr: u64,
        answer: &Answer,
        subscribed: Option<&Subscribed>,
    ) -> Option<Vec<u8>>;
    /// Whether the next push may be produced now (the connection's output under half its
    /// budget); looked at again every [`ROOM_RECHECK`] while it is not.
    fn has_room(&self) -> bool;
    /// `n` bytes of frames are now held for the output (counted until written).
    fn held(&self, n: usize);
    /// `n` bytes held were dropped unwritten.
    fn released(&self, n: usize);
    /// A stream started (true) or ended (false): a connection with one is not idle.
    fn streaming(&self, _live: bool) {}
}

/// A [`Port`] over a plain queue: no requests, no budget but the queue's bound.
struct QueuePort;

impl Port for QueuePort {
    fn answer(&self, _: u64, _: &Answer, _: Option<&Subscribed>) -> Option<Vec<u8>> {
        None
    }
    fn has_room(&self) -> bool {
        true
    }
    fn held(&self, _: usize) {}
    fn released(&self, _: usize) {}
}

/// How often a shell waiting for its port's room looks again.
pub const ROOM_RECHECK: Duration = Duration::from_millis(10);

/// Most records in one push (the machine's `max_records_per_push`): one read of the ring.
const PUSH_RECORDS: u64 = READ_CHUNK as u64;

/// The frames of `items`, at most `max_items_per_frame` items (never splitting the items
/// of one sequence number) and `max_frame_bytes` each; the position each frame tells.
fn frames_of(cfg: &SubscriptionConfig, corr: u64, mut items: Vec<PushItem>) -> Vec<Framed> {
    let max = cfg.max_items_per_frame.max(1);
    let mut out = Vec::new();
    while !items.is_empty() {
        let mut cut = max.min(items.len());
        if cut < items.len() {
            let seq = item_seq(&items[cut - 1]);
            while cut < items.len() && item_seq(&items[cut]) == seq {
                cut += 1;
            }
        }
        let rest = items.split_off(cut);
        let pos = items.iter().rev().find_map(|i| match i {
            PushItem::Position { seq } | PushItem::SnapshotEnd { seq } => Some(*seq),
            _ => None,
        });
        let mut buf = FrameBuf::default();
        for i in &items {
            buf.push(i);
        }
        out.extend(payload_frames(cfg, corr, &mut buf, pos));
        items = rest;
    }
    out
}

/// The frames of the items collected in `buf` (cut to `max_frame_bytes`); the last one
/// tells `pos`.
fn payload_frames(
    cfg: &SubscriptionConfig,
    corr: u64,
    buf: &mut FrameBuf,
    pos: Option<u64>,
) -> Vec<Framed> {
    if buf.is_empty() {
        return Vec::new();
    }
    metrics::counter!(crate::metrics::SUBSCRIPTION_EVENTS_SENT_TOTAL).increment(buf.count);
    let max_payload = cfg
        .max_frame_bytes
        .saturating_sub(crate::protocol::frame::FRAME_OVERHEAD_BYTES);
    let frames = buf.take_frames(FrameKind::Push, corr, max_payload);
    let n = frames.len();
    frames
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Framed {
            bytes,
            tells: pos.filter(|_| i + 1 == n),
            stream: true,
        })
        .collect()
}

/// A frame the shell holds for the output.
struct Framed {
    bytes: Vec<u8>,
    /// The position the subscriber has once it has this frame.
    tells: Option<u64>,
    /// Part of the stream (not an answer): its hand-over counts as progress of the stream.
    stream: bool,
}

/// A snapshot being sent, a chunk of SKUs at a time.
struct SnapshotRun {
    ids: Vec<SkuId>,
    next: usize,
    at: u64,
}

/// One chunk's snapshot items and the SKUs whose value is past the cursor.
type SnapshotChunk = Result<(Vec<PushItem>, Vec<(SkuId, u64)>), String>;

/// The stream of an accepted SUBSCRIBE: what renders the machine's push ranges.
struct Live {
    corr: u64,
    filter: Arc<Filter>,
    /// SKUs whose snapshot value already includes changes up to the sequence number.
    skip: HashMap<SkuId, u64>,
    coalescer: Coalescer,
    /// Where rendering stands (the machine's `from` of the next push).
    cursor: u64,
    /// The last position rendered into a frame.
    rendered: u64,
    /// The last position handed to the output (a `Lagged` notice resumes here).
    told: u64,
    snapshot: Option<SnapshotRun>,
    tick: Duration,
    joined: Joined,
    /// Its records as routed by the hub (a filter on SKUs or a prefix), else `None`: it
    /// reads every record of the ring.
    routed: Option<Routed>,
    /// Bytes of items in its last frame: the room the next one starts with.
    frame_hint: usize,
}

/// Most room a frame starts with ([`Live::frame_hint`]).
const FRAME_HINT_MAX: usize = 64 * 1024;

/// A routed subscriber's side of its inbox (src/feed/hub.rs).
struct Routed {
    inbox: Arc<Inbox>,
    /// Routed sequence numbers not rendered yet, ascending.
    queue: VecDeque<u64>,
    /// Up to here the ring is read record by record (see [`Inbox::drain`]).
    scan_upto: u64,
}

/// What a filter is routed by: its SKU set, else its prefix; `None` for every SKU.
fn route_of(f: &Filter) -> Option<Route> {
    if !f.skus.is_empty() {
        Some(Route::Skus(f.skus.iter().cloned().collect()))
    } else if !f.sku_prefix.is_empty() {
        Some(Route::Prefix(f.sku_prefix.as_str().into()))
    } else {
        None
    }
}

/// A subscriber registered with the hub (for the lag metric), unregistered on drop.
struct Joined {
    hub: Arc<Hub>,
    id: u64,
    cursor: Arc<std::sync::atomic::AtomicU64>,
}

impl Joined {
    fn new(hub: &Arc<Hub>, cursor: u64, route: Option<Route>) -> (Joined, Option<Routed>) {
        let j = hub.join(cursor, route);
        metrics::gauge!(crate::metrics::SUBSCRIBERS).increment(1.0);
        let routed = j.inbox.map(|inbox| Routed {
            scan_upto: inbox.drain(&mut VecDeque::new()),
            inbox,
            queue: VecDeque::new(),
        });
        let joined = Joined {
            hub: hub.clone(),
            id: j.id,
            cursor: j.cursor,
        };
        (joined, routed)
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.hub.leave(self.id);
        metrics::gauge!(crate::metrics::SUBSCRIBERS).decrement(1.0);
    }
}

impl Live {
    /// Renders the records after `from` up to `to` into frames (see [`Action::SendPush`]);
    /// `Err(first_seq)` when the ring no longer holds them.
    fn push<S: Source>(
        &mut self,
        engine: &S,
        cfg: &SubscriptionConfig,
        (from, to, coalesce): (u64, u64, bool),
    ) -> Result<Vec<Framed>, u64> {
        // The machine's ranges are contiguous: `from` is where rendering stands.
        let _ = from;
        let hub = engine.feed();
        let max_items = cfg.max_items_per_frame.max(1) as u64;
        let mut frames = Vec::new();
        let mut buf = FrameBuf::with_capacity(self.frame_hint);
        let mut items: Vec<PushItem> = Vec::new();
        if let Some(r) = self.routed.as_mut() {
            let scan_upto = r.inbox.drain(&mut r.queue);
            if scan_upto > r.scan_upto {
                // The inbox overflowed: that stretch is read from the ring.
                r.scan_upto = scan_upto;
                r.queue.retain(|s| *s > scan_upto);
            }
        }
        // A routed subscriber's own records match its SKU filter when its route is the whole
        // filter (a SKU set without a prefix, or a prefix alone).
        let route_is_filter = self.filter.skus.is_empty() || self.filter.sku_prefix.is_empty();
        while self.cursor < to {
            let (filter, skip) = (&self.filter, &self.skip);
            let own_records = route_is_filter
                && self
                    .routed
                    .as_ref()
                    .is_some_and(|r| self.cursor >= r.scan_upto);
            let coalescer = &mut self.coalescer;
            let mut cursor = self.cursor;
            let mut full = false;
            let mut render = |seq: u64, slot: &Slot| {
                cursor = seq;
                let Some(rec) = slot else { return true };
                if let FeedBody::Sku { sku, .. } = &rec.body {
                    if skip.get(sku).is_some_and(|s| *s >= seq) {
                        return true;
                    }
                }
                if coalesce {
                    filter.render(rec, &mut items, Some(&mut *coalescer));
                    full = coalescer.len() + items.len() >= cfg.max_coalesce_pairs;
                } else {
                    filter.render_bytes_of(rec, &mut buf, own_records);
                    full = buf.count >= max_items;
                }
                !full
            };
            let visited = match self.routed.as_mut() {
                Some(r) if self.cursor >= r.scan_upto => {
                    // Only this subscriber's records: the rest of the range matches nothing.
                    while r.queue.front().is_some_and(|s| *s <= self.cursor) {
                        r.queue.pop_front();
                    }
                    let upto = r.queue.partition_point(|s| *s <= to).min(READ_CHUNK);
                    let n = hub.visit_seqs(r.queue.iter().take(upto).copied(), &mut render)?;
                    r.queue.drain(..n);
                    if !full && n == upto && r.queue.front().is_none_or(|s| *s > to) {
                        cursor = to;
                    }
                    n.max(usize::from(cursor > self.cursor))
                }
                routed => {
                    let end = routed.map_or(to, |r| r.scan_upto.min(to));
                    let want = usize::try_from(end - self.cursor).unwrap_or(usize::MAX);
                    hub.visit_after(self.cursor, want.min(READ_CHUNK), &mut render)?
                }
            };
            self.cursor = cursor;
            if full || visited == 0 {
                frames.extend(self.flush(engine, cfg, &mut buf, &mut items));
            }
            if visited == 0 {
                break; // not published after all: tell no further than read
            }
        }
        self.joined.cursor.store(self.cursor, Ordering::Relaxed);
        frames.extend(self.flush(engine, cfg, &mut buf, &mut items));
        if coalesce && self.rendered < self.cursor {
            // A coalesced round tells its position even when nothing in it matched (an
            // every-change subscriber is told at the next tick instead).
            let at = self.cursor;
            frames.extend(self.position(cfg, at, false));
        }
        Ok(frames)
    }

    /// The frames of what was rendered, ending at `Position { cursor }`; in coalesced mode
    /// the position alone when it moved.
    fn flush<S: Source>(
        &mut self,
        engine: &S,
        cfg: &SubscriptionConfig,
        buf: &mut FrameBuf,
        items: &mut Vec<PushItem>,
    ) -> Vec<Framed> {
        let at = self.cursor;
        if !buf.is_empty() {
            buf.push(&PushItem::Position { seq: at });
            self.rendered = at;
            // The next frame is given room for as many bytes as this one (bounded).
            self.frame_hint = buf.items_len().min(FRAME_HINT_MAX);
            let frames = payload_frames(cfg, self.corr, buf, Some(at));
            *buf = FrameBuf::with_capacity(self.frame_hint);
            return frames;
        }
        if self.coalescer.is_empty() && items.is_empty() {
            return Vec::new();
        }
        let merged = self.coalescer.take_merged();
        if merged > 0 {
            metrics::counter!(crate::metrics::SUBSCRIPTION_COALESCED_TOTAL).increment(merged);
        }
        let only_transitions = self.filter.kinds & kinds::ATP == 0;
        let mut batch = self.coalescer.drain(&engine.catalog(), only_transitions);
        batch.append(items);
        batch.sort_by_key(item_seq);
        batch.push(PushItem::Position { seq: at });
        self.rendered = at;
        frames_of(cfg, self.corr, batch)
    }

    /// A `Position { at }` frame, unless `at` was rendered already and `force` is false.
    fn position(&mut self, cfg: &SubscriptionConfig, at: u64, force: bool) -> Vec<Framed> {
        if !force && self.rendered >= at {
            return Vec::new();
        }
        self.rendered = at;
        frames_of(cfg, self.corr, vec![PushItem::Position { seq: at }])
    }
}

/// The shell's state besides the machine.
struct Shell<P: Port> {
    port: P,
    tx: mpsc::Sender<Vec<u8>>,
    /// Frames for the output, in order (answers and pushes alike), counted in the port.
    pending: VecDeque<Framed>,
    live: Option<Live>,
    /// Output outstanding for the machine: it is told `OutputDrained` once `pending` is
    /// empty, no snapshot chunk is being read and the port has room.
    busy: bool,
    /// When the stream last made progress (a frame handed over, or output begun): a stream
    /// with output waiting longer than `stall_timeout` lags.
    progress: Instant,
    /// When a stream frame was last handed over (for the heartbeat).
    last_sent: Instant,
    /// The SUBSCRIBE being answered (its plan, until the machine has accepted it).
    planned: Option<(u64, Box<Plan>)>,
    /// Why the subscriber lags (for its `Lagged` notice).
    why: String,
}

impl<P: Port> Shell<P> {
    fn queue(&mut self, frames: Vec<Framed>) {
        for f in frames {
            self.port.held(f.bytes.len());
            self.pending.push_back(f);
        }
    }

    fn drop_pending(&mut self) {
        for f in self.pending.drain(..) {
            self.port.released(f.bytes.len());
        }
    }

    /// Whether the machine may be told `OutputDrained`.
    fn drained(&self) -> bool {
        self.busy
            && self.pending.is_empty()
            && self.live.as_ref().is_none_or(|l| l.snapshot.is_none())
            && self.port.has_room()
    }

    /// Whether the stream waits for its output (the stall clock runs).
    fn waiting(&self) -> bool {
        self.busy && (!self.pending.is_empty() || !self.port.has_room())
    }
}

/// Serves the subscription requests of one connection: each [`Command`] and each change
/// of the feed, the output and the clock goes into the pure [`Machine`] (src/subscriber.rs),
/// whose actions this carries out, in order, into `tx` (answers and pushes in one queue, so
/// an answer is always behind the pushes before it and before those after it). Returns
/// when `cmds` closes (the connection is done: `Ended::Stopped`), when `tx` closes, when
/// the subscriber lagged or the feed stopped. It never waits for anything but inside its
/// one `select!`, so a close is seen at once.
pub async fn serve<S: Source, P: Port>(
    engine: Arc<S>,
    cfg: SubscriptionConfig,
    mut cmds: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Vec<u8>>,
    port: P,
) -> Ended {
    let hub = engine.feed().clone();
    let mut watch = hub.watch();
    let mut machine = Machine::new(Limits {
        max_lag_records: cfg.max_lag_records,
        max_records_per_push: PUSH_RECORDS,
    });
    let now = Instant::now();
    let mut sh = Shell {
        port,
        tx,
        pending: VecDeque::new(),
        live: None,
        busy: false,
        progress: now,
        last_sent: now,
        planned: None,
        why: String::new(),
    };
    let mut tick_at = now;
    // The select below borrows no part of `sh`: its handlers change it.
    let tx = sh.tx.clone();
    let mut chunk: Option<Pin<Box<dyn Future<Output = SnapshotChunk> + Send>>> = None;
    let ended = loop {
        let mut input = None;
        if sh.drained() {
            sh.busy = false;
            input = Some(Input::OutputDrained);
        } else if chunk.is_none() && sh.pending.is_empty() && sh.port.has_room() {
            chunk = next_chunk(&engine, &cfg, &mut sh);
        }
        let input = match input {
            Some(i) => i,
            None => {
                let streaming = sh.live.is_some();
                // A routed stream is woken by its inbox, not by every publication.
                let inbox = sh
                    .live
                    .as_ref()
                    .and_then(|l| l.routed.as_ref())
                    .map(|r| r.inbox.clone());
                let beat_at = cfg.heartbeat.map(|h| sh.last_sent + h);
                let stall_at = sh.progress + cfg.stall_timeout;
                let waiting = sh.waiting() && chunk.is_none();
                tokio::select! {
                    biased;
                    c = cmds.recv() => match c {
                        None => Input::Close,
                        Some(Command::Unsubscribe { corr }) => Input::Unsubscribe { corr },
                        Some(Command::Subscribe { corr, plan }) => {
                            // What was published since the plan was made counts too (the
                            // watch is marked seen first: a later publication wakes it).
                            watch.borrow_and_update();
                            let head = hub.head();
                            let start = plan
                                .as_deref()
                                .map(|p| Start { published: head.max(p.answer.head_seq), ..start_of(p) })
                                .map_err(|e| e.0.clone());
                            sh.planned = plan.ok().map(|p| (corr, p));
                            Input::Subscribe { corr, start }
                        }
                    },
                    permit = tx.reserve(), if !sh.pending.is_empty() => {
                        let Ok(permit) = permit else { break Ended::Stopped };
                        if let Some(f) = sh.pending.pop_front() {
                            if f.stream {
                                sh.progress = Instant::now();
                                sh.last_sent = sh.progress;
                            }
                            if let (Some(p), Some(l)) = (f.tells, sh.live.as_mut()) {
                                l.told = p;
                            }
                            permit.send(f.bytes);
                        }
                        continue;
                    }
                    r = async {
                        match chunk.as_mut() {
                            Some(c) => c.await,
                            None => std::future::pending().await,
                        }
                    }, if chunk.is_some() => {
                        chunk = None;
                        match r {
                            Ok((items, skip)) => {
                                if let Some(l) = sh.live.as_mut() {
                                    l.skip.extend(skip);
                                    let frames = frames_of(&cfg, l.corr, items);
                                    sh.queue(frames);
                                }
                                sh.progress = Instant::now();
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "subscription snapshot failed");
                                Input::SourceGone
                            }
                        }
                    }
                    _ = tokio::time::sleep(ROOM_RECHECK), if sh.busy && sh.pending.is_empty() && !sh.port.has_room() => continue,
                    r = watch.changed(), if inbox.is_none() => match r {
                        Ok(()) => Input::Published { upto: *watch.borrow_and_update() },
                        Err(_) => Input::SourceGone,
                    },
                    () = async {
                        match inbox.as_deref() {
                            Some(i) => i.notified().await,
                            None => std::future::pending().await,
                        }
                    }, if inbox.is_some() => Input::Published { upto: hub.head() },
                    _ = tokio::time::sleep_until(stall_at), if streaming && waiting => {
                        sh.why = "no frame could be queued within the stall timeout".into();
                        let resume_from = sh.live.as_ref().map_or(0, |l| l.told);
                        Input::Lagging { resume_from }
                    }
                    _ = sleep_until_opt(beat_at), if streaming && beat_at.is_some() => {
                        sh.last_sent = Instant::now();
                        Input::HeartbeatDue
                    }
                    _ = tokio::time::sleep_until(tick_at), if streaming => {
                        let tick = sh.live.as_ref().map_or(cfg.position_interval, |l| l.tick);
                        tick_at = Instant::now() + tick;
                        if inbox.is_some() {
                            // What was published since the last wake-up matched nothing:
                            // the position moves on with the tick.
                            let upto = hub.head();
                            if let Some(e) = apply(&engine, &cfg, &mut machine, &mut sh, &mut chunk, &mut tick_at, Input::Published { upto }) {
                                break e;
                            }
                        }
                        Input::Tick
                    }
                }
            }
        };
        if let Some(e) = apply(
            &engine,
            &cfg,
            &mut machine,
            &mut sh,
            &mut chunk,
            &mut tick_at,
            input,
        ) {
            break e;
        }
    };
    if sh.live.take().is_some() {
        // Ended by the output closing (a close while streaming is counted at StopStream).
        sh.port.streaming(false);
        if ended == Ended::Stopped {
            metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "closed")
                .increment(1);
        }
    }
    if ended == Ended::Stopped {
        flush(&mut sh).await;
    }
    sh.drop_pending();
    ended
}

/// How long a closing shell may take to hand what it holds to the output.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Hands what the shell holds (answers of requests read before the close, and the pushes
/// before them) to the output, in order, for at most [`CLOSE_FLUSH`]; the rest is dropped.
/// A client that closes its side after a SUBSCRIBE and an UNSUBSCRIBE still gets both
/// answers; one that does not read cannot hold the close.
async fn flush<P: Port>(sh: &mut Shell<P>) {
    let until = Instant::now() + CLOSE_FLUSH;
    while let Some(f) = sh.pending.pop_front() {
        let n = f.bytes.len();
        if !matches!(
            tokio::time::timeout_at(until, sh.tx.send(f.bytes)).await,
            Ok(Ok(()))
        ) {
            sh.port.released(n);
            return;
        }
    }
}

/// Steps the machine with `input` and carries out its actions (and those of what they
/// feed back); `Some` when the shell is done.
fn apply<S: Source, P: Port>(
    engine: &Arc<S>,
    cfg: &SubscriptionConfig,
    machine: &mut Machine,
    sh: &mut Shell<P>,
    chunk: &mut Option<Pin<Box<dyn Future<Output = SnapshotChunk> + Send>>>,
    tick_at: &mut Instant,
    input: Input,
) -> Option<Ended> {
    let mut next = Some(input);
    while let Some(input) = next.take() {
        for action in machine.step(input) {
            match act(engine, cfg, sh, chunk, tick_at, action) {
                None => {}
                Some(Flow::Done(e)) => return Some(e),
                Some(Flow::Feed(i)) => {
                    next = Some(i);
                    break;
                }
            }
        }
    }
    None
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The machine's view of a plan.
fn start_of(p: &Plan) -> Start {
    Start {
        from: p.cursor,
        snapshot: p.snapshot,
        coalesced: p.coalesce.is_some(),
        published: p.answer.head_seq,
    }
}

/// The next snapshot chunk to read, if a snapshot is under way; once every chunk is
/// read, its end marker is queued and the snapshot is over.
fn next_chunk<S: Source>(
    engine: &Arc<S>,
    cfg: &SubscriptionConfig,
    sh: &mut Shell<impl Port>,
) -> Option<Pin<Box<dyn Future<Output = SnapshotChunk> + Send>>> {
    let live = sh.live.as_mut()?;
    let run = live.snapshot.as_mut()?;
    if run.next < run.ids.len() {
        let end = (run.next + SNAPSHOT_CHUNK).min(run.ids.len());
        let ids = run.ids[run.next..end].to_vec();
        run.next = end;
        let (engine, filter, at) = (engine.clone(), live.filter.clone(), run.at);
        return Some(Box::pin(snapshot_chunk(engine, filter, ids, at)));
    }
    let at = run.at;
    live.snapshot = None;
    live.rendered = at;
    let frames = frames_of(cfg, live.corr, vec![PushItem::SnapshotEnd { seq: at }]);
    sh.queue(frames);
    None
}

/// What the shell does after an action.
enum Flow {
    /// The shell is done.
    Done(Ended),
    /// Tell the machine this (the action found the subscriber lagging).
    Feed(Input),
}

/// Carries out one action; `None`: the next one.
fn act<S: Source, P: Port>(
    engine: &Arc<S>,
    cfg: &SubscriptionConfig,
    sh: &mut Shell<P>,
    chunk: &mut Option<Pin<Box<dyn Future<Output = SnapshotChunk> + Send>>>,
    tick_at: &mut Instant,
    action: Action,
) -> Option<Flow> {
    match action {
        Action::SendAnswer { corr, answer } => {
            let planned = sh.planned.take().filter(|(c, _)| *c == corr);
            if answer == Answer::Subscribed {
                if let Some((_, plan)) = planned.as_ref() {
                    let tick = plan.coalesce.unwrap_or(cfg.position_interval);
                    *tick_at = Instant::now() + tick;
                    let (joined, routed) =
                        Joined::new(engine.feed(), plan.cursor, route_of(&plan.filter));
                    sh.live = Some(Live {
                        corr,
                        filter: Arc::new(plan.filter.clone()),
                        skip: HashMap::new(),
                        coalescer: Coalescer::new(cfg.max_coalesce_pairs),
                        cursor: plan.cursor,
                        rendered: plan.cursor,
                        told: plan.cursor,
                        snapshot: None,
                        tick,
                        joined,
                        routed,
                        frame_hint: 0,
                    });
                    sh.port.streaming(true);
                    sh.last_sent = Instant::now();
                }
            }
            let subscribed = planned.as_ref().map(|(_, p)| &p.answer);
            if let Some(bytes) = sh.port.answer(corr, &answer, subscribed) {
                sh.queue(vec![Framed {
                    bytes,
                    tells: None,
                    stream: false,
                }]);
            }
        }
        Action::SendSnapshot { at } => {
            sh.busy = true;
            sh.progress = Instant::now();
            let live = sh.live.as_mut()?;
            live.snapshot = Some(SnapshotRun {
                ids: snapshot_ids(engine.as_ref(), &live.filter),
                next: 0,
                at,
            });
        }
        Action::SendPush { from, to, coalesce } => {
            sh.busy = true;
            sh.progress = Instant::now();
            let live = sh.live.as_mut()?;
            match live.push(engine.as_ref(), cfg, (from, to, coalesce)) {
                Ok(frames) => sh.queue(frames),
                Err(first_seq) => {
                    sh.why = format!(
                        "the feed no longer holds seq {} (oldest {first_seq})",
                        live.cursor + 1
                    );
                    return Some(Flow::Feed(Input::Lagging {
                        resume_from: live.told,
                    }));
                }
            }
        }
        Action::SendPosition { at } | Action::SendHeartbeat { at } => {
            sh.busy = true;
            sh.progress = Instant::now();
            let force = matches!(action, Action::SendHeartbeat { .. });
            let frames = sh.live.as_mut()?.position(cfg, at, force);
            sh.queue(frames);
        }
        Action::StopStream => {
            *chunk = None;
            sh.busy = false;
            if sh.live.take().is_some() {
                sh.port.streaming(false);
                metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "closed")
                    .increment(1);
            }
        }
        Action::Drop { reason } => {
            return Some(match reason {
                Reason::Lagged { .. } => Flow::Done(lagged(engine.feed(), sh)),
                Reason::SourceGone => {
                    metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "error")
                        .increment(1);
                    Flow::Done(Ended::EngineGone("feed stopped".into()))
                }
            });
        }
        Action::Finish => return Some(Flow::Done(Ended::Stopped)),
    }
    None
}

/// Queues the `Lagged` notice if the output takes it now (what was pending for the stream
/// is dropped: the subscriber resumes from the last position handed over) and counts.
fn lagged<P: Port>(hub: &Hub, sh: &mut Shell<P>) -> Ended {
    let why = std::mem::take(&mut sh.why);
    let told = sh.live.as_ref().map_or(0, |l| l.told);
    let corr = sh.live.as_ref().map_or(0, |l| l.corr);
    sh.live = None;
    sh.port.streaming(false);
    sh.drop_pending();
    let item = PushItem::Lagged {
        resume_from_seq: told,
        message: format!("lagged: {why}; resume from seq {told}"),
    };
    if let Ok(f) = protocol::frame_of(FrameKind::Push, corr, &PushBatch { items: vec![item] }) {
        let bytes = f.encode();
        let n = bytes.len();
        sh.port.held(n);
        if sh.tx.try_send(bytes).is_err() {
            sh.port.released(n);
        }
    }
    hub.stats.lagged.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "lagged")
        .increment(1);
    Ended::Lagged {
        resume_from_seq: told,
    }
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a planned subscription into `tx` until `stop` turns true, `tx` closes, or it lags
/// (the HTTP event stream, webhooks and the NATS bridge: no requests, no answers).
pub async fn run<S: Source>(
    engine: Arc<S>,
    cfg: SubscriptionConfig,
    plan: Plan,
    corr: u64,
    tx: mpsc::Sender<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) -> Ended {
    let (cmd_tx, cmds) = mpsc::channel(1);
    let subscribe = Command::Subscribe {
        corr,
        plan: Ok(Box::new(plan)),
    };
    if cmd_tx.try_send(subscribe).is_err() {
        return Ended::Stopped;
    }
    let shell = serve(engine, cfg, cmds, tx, QueuePort);
    tokio::pin!(shell);
    tokio::select! {
        e = &mut shell => e,
        () = stopped(&mut stop) => {
            // A close: the shell sees it at once and returns.
            drop(cmd_tx);
            shell.await
        }
    }
}

fn item_seq(i: &PushItem) -> u64 {
    match i {
        PushItem::Atp(a) => a.seq,
        PushItem::Oversold(o) => o.seq,
        PushItem::Reservation(r) => r.seq,
        PushItem::Stockout(s) => s.seq,
        PushItem::Rebalance(r) => r.seq,
        PushItem::RegionStockout(s) => s.seq,
        PushItem::Catalog { seq, .. }
        | PushItem::SnapshotEnd { seq }
        | PushItem::Position { seq } => *seq,
        PushItem::Snapshot(s) => s.seq,
        PushItem::Lagged {
            resume_from_seq, ..
        } => *resume_from_seq,
    }
}
/// The SKUs a snapshot covers (none when the filter wants neither ATP nor thresholds).
fn snapshot_ids<S: Source>(engine: &S, f: &Filter) -> Vec<SkuId> {
    if f.kinds & (kinds::ATP | kinds::THRESHOLDS) == 0 {
        return Vec::new();
    }
    if f.skus.is_empty() {
        return engine.sku_ids(&f.sku_prefix);
    }
    let mut v: Vec<SkuId> = f.skus.iter().filter(|s| f.wants_sku(s)).cloned().collect();
    v.sort();
    v
}

/// The current ATP of `ids` for the filter, once durable (never a value a crash could
/// take back), and the SKUs whose value already includes changes after `cursor` (their
/// live events up to that sequence number are skipped, so nothing is counted twice).
async fn snapshot_chunk<S: Source>(
    engine: Arc<S>,
    f: Arc<Filter>,
    ids: Vec<SkuId>,
    cursor: u64,
) -> SnapshotChunk {
    let mut items = Vec::new();
    let mut skip = Vec::new();
    let mut max_seq = 0;
    for sku in ids {
        let Some(view) = engine.sku_view(&sku).await? else {
            continue; // unknown SKU
        };
        max_seq = max_seq.max(view.last_seq);
        for (ch, atp) in &view.channels {
            if f.wants_channel(ch) {
                items.push(PushItem::Snapshot(WireSnapshotEntry {
                    seq: view.last_seq,
                    sku: sku.to_string(),
                    channel: ch.to_string(),
                    atp: *atp,
                    oversold: view.oversold,
                }));
            }
        }
        if view.last_seq > cursor {
            skip.push((sku, view.last_seq));
        }
    }
    engine.wait_durable(max_seq).await?;
    Ok((items, skip))
}

/// What a follower inside the server (a webhook endpoint, the NATS bridge) selects.
#[derive(Clone, Debug, Default)]
pub struct FollowFilter {
    /// Channels (empty = all).
    pub channels: Vec<String>,
    /// SKUs (empty = all).
    pub skus: Vec<String>,
    /// SKU prefix (empty = none).
    pub prefix: String,
    /// Bit set of [`kinds`].
    pub kinds: u8,
    /// 0, or the coalescing window in ms.
    pub coalesce_ms: u32,
}

/// A subscription followed inside the server: its push frames arrive on `frames`; it ends
/// when this is dropped (its stop signal is set) or by itself (`task`'s result).
pub struct Follower {
    /// Encoded push frames, in order.
    pub frames: mpsc::Receiver<Vec<u8>>,
    /// The subscription's task.
    pub task: tokio::task::JoinHandle<Ended>,
    /// Closed on drop: the shell sees its connection closed and returns.
    _commands: mpsc::Sender<Command>,
}

/// Starts following every change after `from_seq` that `filter` selects, as webhooks and
/// the NATS bridge do: never coalesced for being behind (a receiver that was down gets each
/// event it missed; the ring bounds how far, older is a snapshot), and a receiver being
/// retried may hold the stream for up to an hour before it is simply started again from
/// its delivered position. At most `queue_frames` frames wait in `frames`.
pub fn follow<S: Source + Send + Sync + 'static>(
    engine: Arc<S>,
    from_seq: u64,
    filter: &FollowFilter,
    queue_frames: usize,
) -> Result<Follower, Invalid> {
    let sub = Subscribe {
        name: String::new(),
        start: start::AFTER,
        from_seq,
        channels: filter.channels.clone(),
        skus: filter.skus.clone(),
        sku_prefix: filter.prefix.clone(),
        kinds: filter.kinds,
        coalesce_ms: filter.coalesce_ms,
    };
    let cfg = SubscriptionConfig {
        max_lag_records: u64::MAX,
        stall_timeout: Duration::from_secs(3600),
        ..SubscriptionConfig::default()
    };
    let plan = plan(engine.as_ref(), &cfg, &sub)?;
    let (tx, frames) = mpsc::channel(queue_frames);
    let (commands, cmds) = mpsc::channel(1);
    let subscribe = Command::Subscribe {
        corr: 0,
        plan: Ok(Box::new(plan)),
    };
    // A new channel of one: there is room.
    let _ = commands.try_send(subscribe);
    let task = tokio::spawn(serve(engine, cfg, cmds, tx, QueuePort));
    Ok(Follower {
        frames,
        task,
        _commands: commands,
    })
}
