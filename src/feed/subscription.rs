//! One subscriber: validates a `SUBSCRIBE`, decides where it starts (live, snapshot, replay
//! from the ring, or the position stored under its name), then streams `Push` frames into
//! the connection's writer until it unsubscribes, disconnects, or lags.
//!
//! Back-pressure, in order: the connection's bounded writer queue and socket; when the
//! subscriber falls more than `max_lag_records` behind, its ATP changes are coalesced
//! (latest per SKU x channel, bounded by `max_coalesce_pairs`) until it catches up; when the
//! ring no longer holds its position, or a frame cannot be queued within `stall_timeout`,
//! it gets `Lagged { resume_from_seq }` and the connection is closed. None of this waits
//! inside the engine.
//!
//! A `Push` frame never splits the items of one sequence number, and every round ends with
//! `Position`, so the highest sequence number of a processed frame is a safe resume point.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::domain::{Catalog, ChannelId, SkuId, SkuView};
use crate::protocol::{self, kinds, start, started, Frame, FrameKind, PushBatch, PushItem};
use crate::protocol::{Subscribe, Subscribed, WireSnapshotEntry};

use super::hub::Hub;
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

struct Out<'a> {
    tx: &'a mpsc::Sender<Vec<u8>>,
    corr: u64,
    cfg: &'a SubscriptionConfig,
    hub: &'a Hub,
    /// The last position the subscriber was told (all items up to it were queued).
    told: u64,
    /// When the last frame was queued (for the heartbeat).
    last_sent: tokio::time::Instant,
}

impl Out<'_> {
    /// Queues `items` as frames of at most `max_items_per_frame` items, never splitting
    /// items of one sequence number (so every frame stays well under the frame limit).
    async fn send(&mut self, mut items: Vec<PushItem>) -> Result<(), Ended> {
        let max = self.cfg.max_items_per_frame.max(1);
        while items.len() > max {
            let mut cut = max;
            let seq = item_seq(&items[cut - 1]);
            while cut < items.len() && item_seq(&items[cut]) == seq {
                cut += 1;
            }
            let rest = items.split_off(cut);
            self.send_frame(items).await?;
            items = rest;
        }
        self.send_frame(items).await
    }

    /// Queues one frame; `Lagged` if the subscriber stalled.
    async fn send_frame(&mut self, items: Vec<PushItem>) -> Result<(), Ended> {
        if items.is_empty() {
            return Ok(());
        }
        let pos = items.iter().rev().find_map(|i| match i {
            PushItem::Position { seq } | PushItem::SnapshotEnd { seq } => Some(*seq),
            _ => None,
        });
        let mut buf = FrameBuf::default();
        for i in &items {
            buf.push(i);
        }
        self.queue(&mut buf, pos).await
    }

    /// Queues the items collected in `buf` as one frame, after a `Position { seq }` item
    /// when `position` is given.
    async fn send_buf(&mut self, buf: &mut FrameBuf, position: Option<u64>) -> Result<(), Ended> {
        if let Some(seq) = position {
            buf.push(&PushItem::Position { seq });
        }
        self.queue(buf, position).await
    }

    async fn queue(&mut self, buf: &mut FrameBuf, position: Option<u64>) -> Result<(), Ended> {
        if buf.is_empty() {
            return Ok(());
        }
        let n = buf.count;
        let max_payload = self
            .cfg
            .max_frame_bytes
            .saturating_sub(crate::protocol::frame::FRAME_OVERHEAD_BYTES);
        for payload in buf.take_payloads(max_payload) {
            let frame = Frame::new(FrameKind::Push, self.corr, payload);
            match tokio::time::timeout(self.cfg.stall_timeout, self.tx.send(frame.encode())).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Ended::Stopped),
                Err(_) => {
                    return Err(self.lagged("no frame could be queued within the stall timeout"))
                }
            }
        }
        metrics::counter!(crate::metrics::SUBSCRIPTION_EVENTS_SENT_TOTAL).increment(n);
        self.last_sent = tokio::time::Instant::now();
        if let Some(p) = position {
            self.told = p;
        }
        Ok(())
    }

    fn lagged(&self, why: &str) -> Ended {
        let item = PushItem::Lagged {
            resume_from_seq: self.told,
            message: format!("lagged: {why}; resume from seq {}", self.told),
        };
        if let Ok(f) =
            protocol::frame_of(FrameKind::Push, self.corr, &PushBatch { items: vec![item] })
        {
            let _ = self.tx.try_send(f.encode());
        }
        self.hub.stats.lagged.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "lagged")
            .increment(1);
        Ended::Lagged {
            resume_from_seq: self.told,
        }
    }
}

/// Runs a planned subscription until `stop` turns true, the writer closes, or it lags.
pub async fn run<S: Source>(
    engine: Arc<S>,
    cfg: SubscriptionConfig,
    plan: Plan,
    corr: u64,
    tx: mpsc::Sender<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) -> Ended {
    let hub = engine.feed().clone();
    let (id, cursor_gauge) = hub.join(plan.cursor);
    metrics::gauge!(crate::metrics::SUBSCRIBERS).increment(1.0);
    let mut out = Out {
        tx: &tx,
        corr,
        cfg: &cfg,
        hub: &hub,
        told: plan.cursor,
        last_sent: tokio::time::Instant::now(),
    };
    let r = stream(&*engine, &plan, &mut out, &cursor_gauge, &mut stop).await;
    hub.leave(id);
    metrics::gauge!(crate::metrics::SUBSCRIBERS).decrement(1.0);
    let ended = match r {
        Ok(()) => Ended::Stopped,
        Err(e) => e,
    };
    if ended == Ended::Stopped {
        metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "closed")
            .increment(1);
    } else if let Ended::EngineGone(_) = ended {
        metrics::counter!(crate::metrics::SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => "error")
            .increment(1);
    }
    ended
}

async fn stream<S: Source>(
    engine: &S,
    plan: &Plan,
    out: &mut Out<'_>,
    cursor_gauge: &std::sync::atomic::AtomicU64,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Ended> {
    let hub = engine.feed();
    let mut watch = hub.watch();
    let skip = if plan.snapshot {
        snapshot(engine, plan, out).await?
    } else {
        HashMap::new()
    };
    let mut cursor = plan.cursor;
    // Every-change mode appends cached item bytes to `buf`; coalescing collects `items`.
    let mut buf = FrameBuf::default();
    let mut items: Vec<PushItem> = Vec::new();
    let mut coalescer = Coalescer::new(out.cfg.max_coalesce_pairs);
    let mut catching_up = false;
    let mut last_flush = tokio::time::Instant::now();
    let tick = plan.coalesce.unwrap_or(out.cfg.position_interval);
    let max_items = out.cfg.max_items_per_frame.max(1) as u64;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let lag = hub.head().saturating_sub(cursor);
        if plan.coalesce.is_none() {
            if !catching_up && lag > out.cfg.max_lag_records {
                catching_up = true;
            } else if catching_up && lag <= out.cfg.max_lag_records / 2 {
                catching_up = false;
            }
        }
        let coalescing = plan.coalesce.is_some() || catching_up;
        let visited = hub.visit_after(cursor, READ_CHUNK, |seq, slot| {
            cursor = seq;
            let Some(rec) = slot else { return true };
            if !skip.is_empty() {
                if let FeedBody::Sku { sku, .. } = &rec.body {
                    if skip.get(sku).is_some_and(|s| *s >= seq) {
                        return true;
                    }
                }
            }
            if coalescing {
                plan.filter.render(rec, &mut items, Some(&mut coalescer));
                true
            } else {
                plan.filter.render_bytes(rec, &mut buf);
                // A frame ends after a whole record, at about `max_items_per_frame` items.
                buf.count < max_items
            }
        });
        let got = match visited {
            Ok(n) => n,
            Err(first_seq) => {
                let why = format!(
                    "the feed no longer holds seq {} (oldest {first_seq})",
                    cursor + 1
                );
                return Err(out.lagged(&why));
            }
        };
        cursor_gauge.store(cursor, Ordering::Relaxed);
        // The visit stopped for a full frame: more records may be waiting already.
        let frame_full = buf.count >= max_items;
        let due = last_flush.elapsed() >= tick;
        let full = coalescer.len() + items.len() >= out.cfg.max_coalesce_pairs;
        // Coalesced changes go out when due, when the coalescer is full, once a catching-up
        // subscriber has read everything, and as soon as it stops catching up (before the
        // every-change items that follow them).
        let left_over = !coalescing && (!coalescer.is_empty() || !items.is_empty());
        if left_over || (coalescing && (full || due || (catching_up && got == 0))) {
            let merged = coalescer.take_merged();
            if merged > 0 {
                metrics::counter!(crate::metrics::SUBSCRIPTION_COALESCED_TOTAL).increment(merged);
            }
            let only_transitions = plan.filter.kinds & kinds::ATP == 0;
            let mut batch = coalescer.drain(&engine.catalog(), only_transitions);
            batch.append(&mut items);
            batch.sort_by_key(item_seq);
            // The position is only complete when nothing rendered after it is pending.
            if buf.is_empty() && (!batch.is_empty() || out.told < cursor) {
                batch.push(PushItem::Position { seq: cursor });
            }
            out.send(batch).await?;
            last_flush = tokio::time::Instant::now();
        }
        // The heartbeat: a Position even when it has not moved, once nothing was sent for
        // `heartbeat` (pending coalesced changes are not due yet: the position stays theirs).
        let beat = out
            .cfg
            .heartbeat
            .is_some_and(|h| out.last_sent.elapsed() >= h)
            && coalescer.is_empty()
            && items.is_empty();
        if !buf.is_empty() || (!coalescing && due && out.told < cursor) || beat {
            out.send_buf(&mut buf, Some(cursor)).await?;
            last_flush = tokio::time::Instant::now();
        }
        if got == READ_CHUNK || frame_full {
            continue; // more is ready
        }
        let mut wait = tick.saturating_sub(last_flush.elapsed());
        // Only while a heartbeat can go out: with coalesced changes pending it cannot (their
        // flush is the next frame), and waking for it would spin until that flush.
        if let Some(h) = out
            .cfg
            .heartbeat
            .filter(|_| coalescer.is_empty() && items.is_empty())
        {
            wait = wait.min(h.saturating_sub(out.last_sent.elapsed()));
        }
        tokio::select! {
            r = watch.changed() => if r.is_err() { return Err(Ended::EngineGone("feed stopped".into())) },
            r = stop.changed() => if r.is_err() || *stop.borrow() { return Ok(()) },
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
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

/// Sends current ATP for the filter, then `SnapshotEnd { seq: cursor }`. Returns the SKUs
/// whose value already includes changes after the cursor (their live events up to that
/// sequence number are skipped, so nothing is counted twice).
async fn snapshot<S: Source>(
    engine: &S,
    plan: &Plan,
    out: &mut Out<'_>,
) -> Result<HashMap<SkuId, u64>, Ended> {
    let mut skip = HashMap::new();
    let f = &plan.filter;
    if f.kinds & (kinds::ATP | kinds::THRESHOLDS) != 0 {
        let ids: Vec<SkuId> = if f.skus.is_empty() {
            engine.sku_ids(&f.sku_prefix)
        } else {
            let mut v: Vec<SkuId> = f.skus.iter().filter(|s| f.wants_sku(s)).cloned().collect();
            v.sort();
            v
        };
        for chunk in ids.chunks(SNAPSHOT_CHUNK) {
            let mut items = Vec::new();
            let mut max_seq = 0;
            for sku in chunk {
                let view = match engine.sku_view(sku).await {
                    Ok(Some(v)) => v,
                    Ok(None) => continue, // unknown SKU
                    Err(e) => return Err(Ended::EngineGone(e)),
                };
                max_seq = max_seq.max(view.last_seq);
                if view.last_seq > plan.cursor {
                    skip.insert(sku.clone(), view.last_seq);
                }
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
            }
            // Never show a value a crash could take back.
            engine
                .wait_durable(max_seq)
                .await
                .map_err(Ended::EngineGone)?;
            out.send(items).await?;
        }
    }
    out.send(vec![PushItem::SnapshotEnd { seq: plan.cursor }])
        .await?;
    Ok(skip)
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
    stop: watch::Sender<bool>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
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
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(engine, cfg, plan, 0, tx, stopped));
    Ok(Follower { frames, task, stop })
}
