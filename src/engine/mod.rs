//! The engine: one actix actor per SKU, a registry that activates and passivates them, the
//! cart coordinator, the reservation index, idempotency, exact expiry and the journal.
//!
//! [`Engine`] is the one public async API; the TCP server, the tests and the load generator
//! all use it. Actors run on their own actix system thread with one arbiter per core; the
//! async API works from any tokio runtime (replies come back over oneshot channels).
//!
//! Architecture invariant: `engine/` is the only module that knows actix.

mod actor;
mod api;
mod backup;
mod catalog_writes;
pub mod clock;
mod coordinator;
mod delivery;
mod expiry;
mod expiry_driver;
mod frame;
pub mod history;
mod idempotency;
pub mod journal;
mod persist;
mod reads;
pub mod recovery;
mod registry;
mod reservation_index;
mod reservations;
mod shards;
mod stockout;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Arbiter, System};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use thiserror::Error;

use crate::domain::{Catalog, ChannelId, ReservationId, SkuId, SkuState, TimeMs};

pub use api::{Change, Command, Failure, Outcome, Request, ReserveLine, ReserveRequest};
pub use backup::{BackupError, BackupReport};
pub use clock::{Clock, ManualClock, SystemClock};
use expiry::ExpiryQueue;
pub use history::{HistoryEntry, HistoryPage, HistoryRetention};
use idempotency::IdempotencyTable;
use journal::Journal;
pub use persist::{CheckpointReport, PersistConfig};
use registry::Registry;

/// A failure of the engine itself (not a business rejection).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EngineError {
    /// The log could not be written or flushed: writes are stopped, reads continue.
    #[error("storage failure, writes stopped: {0}")]
    Storage(String),
    /// Stored or in-memory data failed a consistency check.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A configured capacity limit was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// The engine is shutting down.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// The log has more records waiting for the disk than it accepts: nothing was
    /// changed; retry after a back-off (the disk is slower than the offered load).
    #[error("overloaded, retry later: {0}")]
    Overloaded(String),
    /// The engine could not start.
    #[error("engine start failed: {0}")]
    Startup(String),
}

impl EngineError {
    /// Whether the same request may succeed if sent again later (with the same request id).
    pub fn is_retriable(&self) -> bool {
        matches!(self, EngineError::ShuttingDown | EngineError::Overloaded(_))
    }
}

/// Engine settings. Every field has a documented default (`EngineConfig::default()`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Actix arbiters (threads) for SKU actors. Default: one per core.
    pub arbiters: usize,
    /// Messages a SKU's mailbox holds before callers get `Busy`. Default 1024.
    pub mailbox_capacity: usize,
    /// Idle time after which a SKU actor passivates to compact state. Default 60 s.
    pub passivate_after: Duration,
    /// Most SKUs the engine accepts. Default 50,000,000.
    pub max_skus: usize,
    /// Most remembered request ids (idempotency). Default 1,000,000.
    pub idempotency_max_entries: usize,
    /// Longest a request id is remembered. Default 24 h.
    pub idempotency_retention_ms: u64,
    /// Run the expiry driver task and the stockout re-projection task (tests with a manual
    /// clock call `expire_due` and `reproject_stockouts` instead). Default true.
    pub expiry_driver: bool,
    /// Most reservations expired concurrently in one driver round. Default 1024.
    pub expiry_batch: usize,
    /// Feed records kept in memory for subscribers to resume from (about 450 B each while no subscriber has read it, about 800 B once one has: 450–800 MB at the default).
    pub feed_retention_records: usize,
    /// Half-lives of the demand-velocity windows (docs/intelligence.md). Default 15 min,
    /// 1 h, 24 h. Changing them forgets the velocity built with the old ones: it is rebuilt
    /// from the demand recorded after the restart.
    pub velocity_half_lives: crate::domain::HalfLives,
    /// Demand intelligence (docs/intelligence.md): on records velocity in every SKU's
    /// `apply`; off records nothing, forgets the sums of every SKU it starts or activates,
    /// and the velocity, at-risk and rebalance reads answer `IntelligenceOff` (19).
    /// Default on.
    pub intelligence: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            arbiters: std::thread::available_parallelism().map_or(2, |n| n.get()),
            mailbox_capacity: 1024,
            passivate_after: Duration::from_secs(60),
            max_skus: 50_000_000,
            idempotency_max_entries: 1_000_000,
            idempotency_retention_ms: 24 * 3600 * 1000,
            expiry_driver: true,
            expiry_batch: 1024,
            feed_retention_records: crate::feed::hub::DEFAULT_RETENTION_RECORDS,
            velocity_half_lives: crate::domain::HalfLives::default(),
            intelligence: true,
        }
    }
}

/// A reservation as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    /// The reservation.
    pub reservation: ReservationId,
    /// Its channel.
    pub channel: ChannelId,
    /// When it expires.
    pub expires_at_ms: TimeMs,
    /// Units still held per SKU.
    pub lines: Vec<(SkuId, u32)>,
}

/// Reservation index entry.
#[derive(Debug, Clone)]
pub(crate) struct ResEntry {
    pub channel: ChannelId,
    pub lines: Vec<(SkuId, u32)>,
    pub expires_at_ms: TimeMs,
    /// An operation on this reservation is in flight (or it is still being placed).
    pub busy: bool,
    /// The operation in flight is its expiry (`busy` too): another request on it answers
    /// `ReservationExpired`, not `ReservationBusy`.
    pub expiring: bool,
    /// All its holds were placed and acknowledged.
    pub committed: bool,
}

/// State shared by the engine, its actors and its tasks.
pub(crate) struct Core {
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub journal: Journal,
    pub registry: Registry,
    catalog: RwLock<Arc<Catalog>>,
    pub catalog_write: tokio::sync::Mutex<()>,
    /// The catalog entry a running delete checks: requests naming it answer `Busy`
    /// (`catalog_writes`).
    pub closing: catalog_writes::ClosingMark,
    pub reservations: reservation_index::ReservationIndex,
    pub idem: IdempotencyTable,
    pub expiry: ExpiryQueue,
    /// One checkpoint at a time.
    pub checkpoint_lock: tokio::sync::Mutex<()>,
    /// Set while a backup runs (`backup`): one at a time, a second one is refused.
    pub backup_running: std::sync::atomic::AtomicBool,
    /// The stock-change feed (ordered, durable, resumable).
    pub feed: Arc<crate::feed::hub::Hub>,
    /// Acknowledged positions of named subscriptions (persisted in the WAL when durable).
    pub positions: DashMap<String, u64>,
    /// Request epochs (see `persist`): the current epoch and in-flight requests per epoch.
    epoch: AtomicUsize,
    epoch_inflight: [AtomicU64; 2],
    /// Monotonic counters read by [`Engine::stats`] (exported as metrics at scrape time).
    pub counters: Counters,
    /// Where a replay would start now: the latest checkpoint's start sequence (1 without
    /// one). Checkpoints are due by the records logged since, across restarts.
    pub checkpoint_start: AtomicU64,
    /// Log records replayed by the recovery that opened this engine (0 for a new one).
    pub replayed_at_open: AtomicU64,
    /// History retention, applied after each checkpoint (set by `Engine::open`).
    pub history_retention: Mutex<history::HistoryRetention>,
    /// Where the next retention pass continues (the SKU after which it starts).
    pub history_prune_after: Mutex<Option<String>>,
    /// SKUs with a raised stockout projection, for the re-projection task.
    pub stockout: stockout::Watched,
}

/// Relaxed atomic counters the engine bumps as things happen (a reservation's start and
/// end, a full mailbox, a SKU turning oversold); `crate::metrics` reads them at scrape
/// time, so the request path records no metric itself.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub reservations_placed: AtomicU64,
    pub reservations_fulfilled: AtomicU64,
    pub reservations_released: AtomicU64,
    pub reservations_expired: AtomicU64,
    pub mailbox_full: AtomicU64,
    /// New holds refused from the command alone because their SKU sold out (`delivery`).
    pub sold_out_refusals: AtomicU64,
    /// SKUs whose state is oversold now (a gauge: actors add or remove themselves).
    pub oversold_skus: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl Core {
    /// The current catalog snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    fn set_catalog(&self, c: Arc<Catalog>) {
        *self.catalog.write() = c;
    }

    /// Records logged since the latest checkpoint's start (what a restart would replay).
    pub fn records_since_checkpoint(&self) -> u64 {
        let start = self.checkpoint_start.load(Ordering::Relaxed);
        (self.journal.last_seq() + 1).saturating_sub(start)
    }

    /// The expiry driver's wake-up notifier.
    pub fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.expiry.wake_handle()
    }

    /// Registers a mutating request in the current epoch; pass the result to `exit_epoch`.
    pub fn enter_epoch(&self) -> usize {
        let e = self.epoch.load(Ordering::SeqCst) & 1;
        self.epoch_inflight[e].fetch_add(1, Ordering::SeqCst);
        e
    }

    /// Ends a request registered by `enter_epoch`.
    pub fn exit_epoch(&self, e: usize) {
        self.epoch_inflight[e].fetch_sub(1, Ordering::SeqCst);
    }

    /// Starts a new epoch and waits until every request of the previous one has finished.
    pub async fn drain_epoch(&self) -> Result<(), EngineError> {
        if self.drain_epoch_within(Duration::from_secs(30)).await {
            Ok(())
        } else {
            Err(EngineError::Storage(
                "requests did not finish within 30 s; checkpoint abandoned".into(),
            ))
        }
    }

    /// Starts a new epoch and waits at most `wait` until every request of the previous
    /// one has finished; whether they did. One drainer at a time: callers hold the
    /// checkpoint lock (checkpoints, catalog deletes).
    pub async fn drain_epoch_within(&self, wait: Duration) -> bool {
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        let deadline = std::time::Instant::now() + wait;
        while self.epoch_inflight[old].load(Ordering::SeqCst) > 0 {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

/// Statistics for memory accounting and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStats {
    /// SKUs known.
    pub skus: usize,
    /// SKUs with an actor.
    pub active_skus: u64,
    /// Active reservations.
    pub reservations: usize,
    /// Pending expiry deadlines.
    pub expiry_pending: usize,
    /// Remembered request ids.
    pub idempotency_entries: usize,
    /// Bytes of compact state of passive SKUs.
    pub passive_bytes: usize,
    /// Reservations placed (committed) since start.
    pub reservations_placed: u64,
    /// Reservations ended by a whole fulfilment since start.
    pub reservations_fulfilled: u64,
    /// Reservations released by a client since start.
    pub reservations_released: u64,
    /// Reservations expired since start.
    pub reservations_expired: u64,
    /// Requests answered `Busy` because a SKU's mailbox was full, since start.
    pub mailbox_full: u64,
    /// Holds refused without their SKU's actor because the SKU sold out, since start.
    pub sold_out_refusals: u64,
    /// SKUs oversold now (on hand below reserved, or a shortfall, at some location).
    pub oversold_skus: u64,
    /// SKUs with a raised stockout projection watched by the re-projection task.
    pub stockout_watched: usize,
    /// Raised projections not watched because the watch set was full, since start.
    pub stockout_watch_overflow: u64,
}

/// Sweeps per `passivate_after`: an actor idle for this many sweeps is passivated, so the
/// idle time before passivation is between `passivate_after` and 1.25 x that.
const SWEEPS_PER_IDLE_PERIOD: u32 = 4;

/// Asks idle actors to passivate, every `passivate_after / SWEEPS_PER_IDLE_PERIOD`. One
/// task for all actors instead of a timer in every actor (a timer costs ~126 B per active
/// SKU and is polled on every message). Holds the core only weakly between sweeps.
async fn idle_sweeper(weak: std::sync::Weak<Core>) {
    loop {
        let interval = match weak.upgrade() {
            Some(core) => {
                (core.config.passivate_after / SWEEPS_PER_IDLE_PERIOD).max(Duration::from_millis(1))
            }
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(core) = weak.upgrade() else { return };
        core.registry.sweep_idle(u64::from(SWEEPS_PER_IDLE_PERIOD));
    }
}

/// Publishes the feed in sequence order once durable. Holds the core only weakly, and waits
/// for durability through a handle that does not keep the log open (a task being aborted
/// at shutdown must not hold the sled directory lock).
async fn feed_publisher(weak: std::sync::Weak<Core>) {
    let Some((hub, waiter)) = weak.upgrade().map(|c| {
        let waiter = match &c.journal {
            Journal::Wal(wal) => Some(wal.durability_waiter()),
            Journal::Memory { .. } => None,
        };
        (c.feed.clone(), waiter)
    }) else {
        return;
    };
    let durable = |seq: u64| {
        let waiter = waiter.clone();
        async move {
            match waiter {
                Some(w) => w.wait_durable(seq).await.map_err(|e| e.to_string()),
                None => Ok(()),
            }
        }
    };
    let alive = || weak.strong_count() > 0;
    hub.run_publisher(durable, alive).await;
}

/// The in-process inventory engine.
pub struct Engine {
    core: Arc<Core>,
    system: System,
    actors_thread: Mutex<Option<JoinHandle<()>>>,
    /// The actor threads, stopped and joined at shutdown so every actor (and its reference
    /// to the core, hence to the log) is gone when `shutdown` returns.
    arbiters: Mutex<Vec<Arbiter>>,
    /// Background tasks (expiry driver, checkpoints), aborted at shutdown. They hold only a
    /// `Weak` reference to the core between rounds.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set by `shutdown`: new requests answer `ShuttingDown`.
    stopping: std::sync::atomic::AtomicBool,
}

fn start_actor_system(n: usize) -> Result<(System, Vec<Arbiter>, JoinHandle<()>), EngineError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("omnistock-actors".into())
        .spawn(move || {
            let sys = System::new();
            let arbiters: Vec<Arbiter> =
                sys.block_on(async { (0..n).map(|_| Arbiter::new()).collect() });
            let _ = tx.send((System::current(), arbiters));
            let _ = sys.run();
        })
        .map_err(|e| EngineError::Startup(format!("actor thread: {e}")))?;
    let (system, arbiters) = rx
        .recv()
        .map_err(|_| EngineError::Startup("actor system did not start".into()))?;
    Ok((system, arbiters, thread))
}

impl Engine {
    /// Starts an engine with an in-memory journal (no durability) and the system clock.
    /// Must be called within a tokio runtime when `config.expiry_driver` is set.
    pub fn start_in_memory(config: EngineConfig) -> Result<Engine, EngineError> {
        Self::start_with_driver(
            config,
            Arc::new(SystemClock),
            Journal::memory(0),
            Catalog::default(),
            Vec::new(),
        )
    }

    fn start_with_driver(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        journal: Journal,
        catalog: Catalog,
        skus: Vec<SkuState>,
    ) -> Result<Engine, EngineError> {
        let e = Self::start_with(config, clock, journal, catalog, skus)?;
        e.start_background_tasks()?;
        Ok(e)
    }

    /// Starts an engine from recovered parts (without the expiry driver).
    pub(crate) fn start_with(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        journal: Journal,
        mut catalog: Catalog,
        mut skus: Vec<SkuState>,
    ) -> Result<Engine, EngineError> {
        // A recovered catalog's channels carry their own copies of the location ids.
        catalog.intern_ids();
        if !config.intelligence {
            // Off: the recovered sums would only go stale in the passive bytes.
            for s in &mut skus {
                s.velocity.set_recording(false);
            }
        }
        if config.arbiters == 0 || config.mailbox_capacity == 0 || config.expiry_batch == 0 {
            return Err(EngineError::Startup(
                "arbiters, mailbox_capacity and expiry_batch must be at least 1".into(),
            ));
        }
        let (system, arbiters, thread) = start_actor_system(config.arbiters)?;
        let (last_seq, feed_retention) = (journal.last_seq(), config.feed_retention_records);
        let handles = arbiters.iter().map(Arbiter::handle).collect();
        let core = Arc::new(Core {
            idem: IdempotencyTable::new(
                config.idempotency_max_entries,
                config.idempotency_retention_ms,
            ),
            config,
            clock,
            journal,
            registry: Registry::new(handles),
            catalog: RwLock::new(Arc::new(catalog)),
            catalog_write: tokio::sync::Mutex::new(()),
            closing: catalog_writes::ClosingMark::default(),
            reservations: Default::default(),
            expiry: ExpiryQueue::default(),
            checkpoint_lock: tokio::sync::Mutex::new(()),
            backup_running: std::sync::atomic::AtomicBool::new(false),
            feed: Arc::new(crate::feed::hub::Hub::new(last_seq, feed_retention)),
            positions: DashMap::new(),
            epoch: AtomicUsize::new(0),
            epoch_inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            counters: Counters::default(),
            checkpoint_start: AtomicU64::new(1),
            replayed_at_open: AtomicU64::new(0),
            history_retention: Mutex::new(history::HistoryRetention::default()),
            history_prune_after: Mutex::new(None),
            stockout: stockout::Watched::default(),
        });
        let catalog = core.catalog();
        for s in &skus {
            core.registry.insert_passive(s, &catalog)?;
            if s.oversold() {
                Counters::bump(&core.counters.oversold_skus);
            }
            if s.watch_needed() {
                core.stockout.follow(s);
            }
        }
        reservations::index_holds(&core, &skus);
        let engine = Engine {
            core,
            system,
            actors_thread: Mutex::new(Some(thread)),
            arbiters: Mutex::new(arbiters),
            tasks: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(engine)
    }

    /// Starts the background tasks: the idle sweeper (passivation) and, if configured, the
    /// expiry driver. Called once the engine's state is complete: after recovery, so
    /// recovery's own expiry pass is not raced by the driver.
    pub(crate) fn start_background_tasks(&self) -> Result<(), EngineError> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            if self.core.config.expiry_driver {
                return Err(EngineError::Startup(
                    "the expiry driver needs a tokio runtime".into(),
                ));
            }
            tracing::warn!("no tokio runtime: idle SKUs will not be passivated, no feed");
            self.core.feed.disable();
            return Ok(());
        };
        let mut tasks = self.tasks.lock();
        tasks.push(rt.spawn(idle_sweeper(Arc::downgrade(&self.core))));
        tasks.push(rt.spawn(feed_publisher(Arc::downgrade(&self.core))));
        if self.core.config.expiry_driver {
            let core = Arc::downgrade(&self.core);
            tasks.push(rt.spawn(expiry_driver::expiry_driver(core)));
            let core = Arc::downgrade(&self.core);
            tasks.push(rt.spawn(stockout::stockout_driver(core)));
        }
        Ok(())
    }

    /// Uses `clock` instead of the system clock (tests).
    pub fn start_in_memory_with_clock(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        Self::start_with_driver(
            config,
            clock,
            Journal::memory(0),
            Catalog::default(),
            Vec::new(),
        )
    }

    /// Executes a mutating request: reserve, fulfil, release, extend, stock or catalog.
    pub async fn execute(&self, req: Request) -> Result<Arc<Outcome>, Failure> {
        let fp = coordinator::fingerprint(&req.command);
        self.execute_fingerprinted(req, fp).await
    }

    /// [`Engine::execute`] with the idempotency fingerprint computed by the caller (the
    /// server hashes the operation's wire bytes instead of re-encoding the command). A
    /// request id must always be sent through the same path.
    pub async fn execute_fingerprinted(
        &self,
        req: Request,
        fingerprint: u64,
    ) -> Result<Arc<Outcome>, Failure> {
        let mut answers = self.execute_frame(vec![(req, fingerprint)]).await;
        answers.pop().unwrap_or_else(|| {
            Err(EngineError::Corrupt("a frame of one request had no answer".into()).into())
        })
    }

    /// Runs the requests of one request frame together, each with its fingerprint (see
    /// [`Engine::execute_fingerprinted`]): one checkpoint epoch, one reply buffer for the
    /// single-SKU requests, one durability wait. Answers in request order; each request is
    /// still atomic and idempotent on its own.
    pub async fn execute_frame(
        &self,
        reqs: Vec<(Request, u64)>,
    ) -> Vec<Result<Arc<Outcome>, Failure>> {
        if let Err(e) = self.check_running() {
            return reqs.iter().map(|_| Err(e.clone().into())).collect();
        }
        frame::execute_frame(&self.core, reqs).await
    }

    fn check_running(&self) -> Result<(), EngineError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// Reads one SKU: buckets, ATP per channel, oversold flag. Does not activate a passive SKU.
    pub async fn get(&self, sku: &SkuId) -> Result<crate::domain::SkuView, Failure> {
        self.check_running()?;
        reads::get(&self.core, sku).await
    }

    /// Explains `channel`'s ATP for `sku`: each location's part, the buffer and cap, open
    /// holds by channel, the low-stock threshold; its ATP equals the one [`Engine::get`]
    /// shows for the channel. Unknown channel or SKU: rejected. Does not activate a passive
    /// SKU.
    pub async fn explain(
        &self,
        sku: &SkuId,
        channel: &crate::domain::ChannelId,
    ) -> Result<crate::domain::AtpExplanation, Failure> {
        self.check_running()?;
        reads::explain(&self.core, sku, channel).await
    }

    /// Demand velocity and projected stockout of `sku` on every channel of the catalog and in
    /// every region where it has a bucket or had demand, at
    /// the engine clock's now (docs/intelligence.md). Unknown SKU: rejected. Does not
    /// activate a passive SKU.
    pub async fn velocity(&self, sku: &SkuId) -> Result<crate::domain::SkuVelocity, Failure> {
        self.check_running()?;
        self.check_intelligence()?;
        reads::velocity(&self.core, sku, self.core.clock.now_ms()).await
    }

    /// The `limit` (1..=1000) SKUs whose projected stockout on `channel` comes first in
    /// velocity window `window` (0: shortest half-life), soonest first; SKUs without demand
    /// there are left out. Reads every SKU (operator query, not for the request path).
    pub async fn at_risk(
        &self,
        channel: &ChannelId,
        window: usize,
        limit: usize,
    ) -> Result<Vec<crate::domain::AtRisk>, Failure> {
        self.check_running()?;
        self.check_intelligence()?;
        reads::at_risk(&self.core, channel, window, limit, self.core.clock.now_ms()).await
    }

    /// The `limit` (1..=1000) SKUs whose projected stockout in `region` (the exposed ATP of
    /// its locations against their summed demand) comes first in window `window`, soonest
    /// first; SKUs without demand there are left out; a region no location of the catalog
    /// is in is refused. Reads every SKU, like [`Engine::at_risk`].
    pub async fn at_risk_region(
        &self,
        region: &str,
        window: usize,
        limit: usize,
    ) -> Result<Vec<crate::domain::AtRiskRegion>, Failure> {
        self.check_running()?;
        self.check_intelligence()?;
        let now = self.core.clock.now_ms();
        reads::at_risk_region(&self.core, region, window, limit, now).await
    }

    /// Rebalance recommendations under `policy` (docs/intelligence.md): of `sku` alone (at
    /// most one; unknown SKU refused) or the `limit` (1..=1000) with the least cover over
    /// every SKU; with `region`, only those whose short region it is. Apply one as a
    /// `SkuCommand::Transfer` whose request id is the recommendation's id.
    pub async fn rebalance(
        &self,
        sku: Option<&SkuId>,
        region: Option<&str>,
        policy: crate::domain::RebalancePolicy,
        limit: usize,
    ) -> Result<Vec<crate::domain::Recommendation>, Failure> {
        self.check_running()?;
        self.check_intelligence()?;
        let now = self.core.clock.now_ms();
        reads::rebalance(&self.core, sku, region, policy, limit, now).await
    }

    /// Refuses the intelligence reads when it is switched off (nothing was recorded).
    fn check_intelligence(&self) -> Result<(), Failure> {
        if self.core.config.intelligence {
            return Ok(());
        }
        Err(crate::domain::Rejection::IntelligenceOff.into())
    }

    /// Like [`Engine::get`] but waits for mailbox room instead of answering `Busy` (feed
    /// snapshots, which must not skip a SKU).
    pub async fn get_waiting(&self, sku: &SkuId) -> Result<crate::domain::SkuView, Failure> {
        self.check_running()?;
        reads::get_waiting(&self.core, sku).await
    }

    /// The SKU id `s`, validated: the engine's shared copy when the SKU is known (no
    /// allocation), else a new one (`InvalidRequest` when `s` is not a valid id).
    pub fn sku_id(&self, s: &str) -> Result<SkuId, crate::domain::Rejection> {
        match self.core.registry.interned(s) {
            Some(id) => Ok(id),
            None => SkuId::new(s),
        }
    }

    /// Every known SKU id starting with `prefix`, sorted.
    pub fn sku_ids(&self, prefix: &str) -> Vec<SkuId> {
        let mut v = self.core.registry.ids(prefix);
        v.sort();
        v
    }

    /// One page of the SKU ids starting with `prefix`, sorted: the first `limit` after
    /// `after` (exclusive; `None` from the start), and whether more follow (then the last
    /// id is the next page's `after`). Memory by `limit`, not by the SKU count; time one
    /// pass over the known SKUs.
    pub fn sku_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> (Vec<SkuId>, bool) {
        self.core.registry.page(prefix, after, limit)
    }

    /// The stock-change feed.
    pub fn feed(&self) -> &Arc<crate::feed::hub::Hub> {
        &self.core.feed
    }

    /// The last sequence number the log assigned (published to the feed shortly after it
    /// is durable).
    pub fn last_seq(&self) -> u64 {
        self.core.journal.last_seq()
    }

    /// Waits until every log record up to `seq` is durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), EngineError> {
        self.core.journal.wait_durable(seq).await
    }

    /// The acknowledged feed position of the named subscription `name`.
    pub fn feed_position(&self, name: &str) -> Option<u64> {
        self.core.positions.get(name).map(|p| *p)
    }

    /// Every stored feed position, by subscription name (at most
    /// `MAX_NAMED_SUBSCRIPTIONS`), sorted by name.
    pub fn feed_positions(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .core
            .positions
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        v.sort_unstable();
        v
    }

    /// Forgets the position stored under `name` (durably, with a data directory);
    /// `SubscriptionNotFound` when none is. A connection streaming under that name goes
    /// on (its stream does not read the stored position after it started), and its next
    /// `ACK` stores the name again.
    pub async fn delete_position(&self, name: &str) -> Result<(), Failure> {
        self.check_running()?;
        if !self.core.positions.contains_key(name) {
            return Err(crate::domain::Rejection::SubscriptionNotFound(name.to_string()).into());
        }
        if let journal::Journal::Wal(wal) = &self.core.journal {
            let (wal, n) = (wal.clone(), name.to_string());
            tokio::task::spawn_blocking(move || wal.delete_position(&n))
                .await
                .map_err(|e| EngineError::Storage(e.to_string()))?
                .map_err(|e| EngineError::Storage(e.to_string()))?;
        }
        self.core.positions.remove(name);
        Ok(())
    }

    /// Stores the acknowledged feed position of `name` (durably, with a data directory).
    /// A position may only move forward and never past the published head.
    pub async fn ack_position(&self, name: &str, seq: u64) -> Result<(), Failure> {
        self.check_running()?;
        if !crate::feed::subscription::valid_name(name) {
            return Err(crate::domain::Rejection::invalid(
                "subscription name must be 1..=64 bytes of [A-Za-z0-9._-]",
            )
            .into());
        }
        let head = self.core.journal.last_seq();
        if seq > head {
            return Err(crate::domain::Rejection::invalid(format!(
                "seq {seq} is ahead of the log's last sequence number {head}"
            ))
            .into());
        }
        if self.feed_position(name).is_some_and(|p| p >= seq) {
            return Ok(());
        }
        if !self.core.positions.contains_key(name)
            && self.core.positions.len() >= crate::domain::limits::MAX_NAMED_SUBSCRIPTIONS
        {
            return Err(crate::domain::Rejection::invalid(format!(
                "at most {} named subscriptions",
                crate::domain::limits::MAX_NAMED_SUBSCRIPTIONS
            ))
            .into());
        }
        if let journal::Journal::Wal(wal) = &self.core.journal {
            let (wal, n) = (wal.clone(), name.to_string());
            tokio::task::spawn_blocking(move || wal.store_position(&n, seq))
                .await
                .map_err(|e| EngineError::Storage(e.to_string()))?
                .map_err(|e| EngineError::Storage(e.to_string()))?;
        }
        let mut p = self.core.positions.entry(name.to_string()).or_insert(0);
        *p = (*p).max(seq);
        Ok(())
    }

    /// A copy of one SKU's full state (tests, audits). Does not activate a passive SKU.
    pub async fn sku_state(&self, sku: &SkuId) -> Result<SkuState, Failure> {
        reads::sku_state(&self.core, sku).await
    }

    /// An active reservation.
    pub fn reservation(&self, id: ReservationId) -> Option<ReservationView> {
        self.core.reservations.read(&id, |e| {
            e.committed.then(|| ReservationView {
                reservation: id,
                channel: e.channel.clone(),
                expires_at_ms: e.expires_at_ms,
                lines: e.lines.clone(),
            })
        })?
    }

    /// The catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.core.catalog()
    }

    /// Expires every reservation due at the clock's now; returns how many expired.
    pub async fn expire_due(&self) -> usize {
        if self.check_running().is_err() {
            return 0;
        }
        expiry_driver::expire_due(&self.core).await
    }

    /// Re-evaluates the stockout projections of up to 1,000 watched SKUs (those with a
    /// raised projection) at the clock's now, as the re-projection task does every 5 s
    /// (docs/intelligence.md); returns how many logged a change (a cleared projection).
    pub async fn reproject_stockouts(&self) -> usize {
        if self.check_running().is_err() {
            return 0;
        }
        stockout::reproject_round(&self.core).await
    }

    /// SKUs with a raised stockout projection that the re-projection task watches.
    pub fn stockout_watched(&self) -> usize {
        self.core.stockout.len()
    }

    /// Test hook: asks every active SKU actor to passivate now, as the idle sweep does after
    /// `passivate_after`; returns how many were asked. Passivation is asynchronous (an actor
    /// that receives a message first stays active): watch `stats().active_skus`.
    #[doc(hidden)]
    pub fn passivate_all_now(&self) -> usize {
        self.core.registry.sweep_idle(0)
    }

    /// Number of actor arbiters (threads).
    pub fn arbiter_count(&self) -> usize {
        self.core.registry.arbiters().len()
    }

    /// Runs `fut` on actor arbiter `i % arbiter_count()`, the thread that also runs a share of
    /// the SKU actors: replies from those actors then need no cross-thread wake-up. Returns
    /// false if the arbiter has stopped. The server spreads connection tasks this way.
    pub fn spawn_on_arbiter<F>(&self, i: usize, fut: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let arbiters = self.core.registry.arbiters();
        arbiters[i % arbiters.len()].spawn(fut)
    }

    /// Counts for memory accounting and metrics.
    pub fn stats(&self) -> EngineStats {
        let c = &self.core.counters;
        EngineStats {
            skus: self.core.registry.len(),
            active_skus: self.core.registry.active(),
            reservations: self.core.reservations.len(),
            expiry_pending: self.core.expiry.len(),
            idempotency_entries: self.core.idem.len(),
            passive_bytes: self.core.registry.passive_bytes(),
            reservations_placed: c.reservations_placed.load(Ordering::Relaxed),
            reservations_fulfilled: c.reservations_fulfilled.load(Ordering::Relaxed),
            reservations_released: c.reservations_released.load(Ordering::Relaxed),
            reservations_expired: c.reservations_expired.load(Ordering::Relaxed),
            mailbox_full: c.mailbox_full.load(Ordering::Relaxed),
            sold_out_refusals: c.sold_out_refusals.load(Ordering::Relaxed),
            oversold_skus: c.oversold_skus.load(Ordering::Relaxed),
            stockout_watched: self.core.stockout.len(),
            stockout_watch_overflow: self.core.stockout.overflowed.load(Ordering::Relaxed),
        }
    }

    /// Stops the expiry driver and the actor system. Idempotent.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        // The last reference may be dropped on an actor thread (a connection served there):
        // a thread cannot join itself, so then the threads are only told to stop.
        let on_actor_thread = actix::Arbiter::try_current().is_some();
        if let Some(t) = self.actors_thread.lock().take() {
            for a in self.arbiters.lock().drain(..) {
                a.stop();
                if !on_actor_thread {
                    let _ = a.join();
                }
            }
            self.system.stop();
            if !on_actor_thread {
                let _ = t.join();
            }
            self.core.journal.shutdown();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
