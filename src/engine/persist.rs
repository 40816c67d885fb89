//! The durable engine: opening a data directory (checkpoint + log replay through the same
//! `apply`), releasing what the crash left half-done, and taking checkpoints so the log
//! stays proportional to live state.
//!
//! Checkpoints are fuzzy and do not pause reservations: the start sequence is read first,
//! then the request epoch is flipped and the previous epoch drained (so every request whose
//! records fall below the start has finished and recorded its idempotency outcome), then the
//! catalog, every SKU (active ones through their actor, passive ones from compact bytes) and
//! the idempotency table are copied. Replay skips, per SKU, records at or below its
//! `last_seq`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use crate::codec;
use crate::wal::{Durability, FaultInjector, Init, Wal, WalConfig};

use super::actor::{SkuOp, SkuReply};
use super::history::{self, HistoryPage, HistoryRetention};
use super::journal::Journal;
use super::reads;
use super::recovery::{self, CheckpointState, IdemRecord, CHECKPOINT_VERSION};
use super::{Clock, Core, Engine, EngineConfig, EngineError, SystemClock};

/// Settings of a durable engine.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Engine settings.
    pub engine: EngineConfig,
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// `Sync` (default): acknowledge after the flush. `Relaxed`: flush every N ms.
    pub durability: Durability,
    /// Take a checkpoint once this many records were logged since the last one.
    /// Default 1,000,000.
    pub checkpoint_every_records: u64,
    /// How often the checkpoint task looks at the log. Default 1 s.
    pub checkpoint_poll: Duration,
    /// Test hook: makes the log's storage calls fail on demand. `None` in production.
    pub wal_fault: Option<Arc<FaultInjector>>,
    /// Test hook: the clock to use instead of the system clock (a `ManualClock` drives
    /// expiry deterministically across restarts). `None` in production.
    pub clock: Option<Arc<dyn Clock>>,
    /// Whether a missing or empty `data_dir` may be initialised as a new, empty inventory.
    /// Default true (tests, embedded use); `omnistock serve` sets it from `--init`.
    pub init: bool,
    /// How much SKU history to keep (enforced after each checkpoint).
    pub history: HistoryRetention,
    /// Records the log holds waiting for its writer before new requests are refused as
    /// back-pressure (`Overloaded`, wire 13). Default
    /// [`crate::wal::DEFAULT_MAX_PENDING_RECORDS`] (1,000,000).
    pub max_pending_records: usize,
}

impl PersistConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PersistConfig {
            engine: EngineConfig::default(),
            data_dir: data_dir.into(),
            durability: Durability::Sync,
            checkpoint_every_records: 1_000_000,
            checkpoint_poll: Duration::from_secs(1),
            wal_fault: None,
            clock: None,
            init: true,
            history: HistoryRetention::default(),
            max_pending_records: crate::wal::DEFAULT_MAX_PENDING_RECORDS,
        }
    }
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Replay after a restart starts here.
    pub start_seq: u64,
    /// SKUs written.
    pub skus: usize,
    /// Bytes of state written.
    pub bytes: usize,
    /// How long it took.
    pub duration: Duration,
}

fn storage(e: impl std::fmt::Display) -> EngineError {
    EngineError::Storage(e.to_string())
}

impl Engine {
    /// Opens (or creates) a durable engine in `cfg.data_dir`: latest checkpoint, then replay
    /// of the log after it, then release of carts a crash left half-placed and of holds that
    /// expired while the process was down. Returns only when recovery is complete.
    pub async fn open(cfg: PersistConfig) -> Result<Engine, EngineError> {
        let t0 = Instant::now();
        let dir = cfg.data_dir.display().to_string();
        let mut wal_cfg = WalConfig::new(&cfg.data_dir);
        wal_cfg.durability = cfg.durability;
        wal_cfg.fault = cfg.wal_fault.clone();
        wal_cfg.max_pending_records = cfg.max_pending_records;
        wal_cfg.init = if cfg.init { Init::Allow } else { Init::Refuse };
        let wal = Wal::open(wal_cfg).map_err(|e| EngineError::Startup(format!("{dir}: {e}")))?;
        let checkpoint = match wal
            .latest_checkpoint()
            .map_err(|e| EngineError::Corrupt(format!("{dir}: {e}")))?
        {
            Some(c) => {
                tracing::info!(
                    start_seq = c.start_seq,
                    bytes = c.state.len(),
                    "loading checkpoint"
                );
                Some((c.start_seq, recovery::decode_checkpoint(&c.state)?))
            }
            None => None,
        };
        let start_seq = checkpoint.as_ref().map_or(1, |c| c.0);
        let rec = recovery::recover(
            checkpoint.map(|c| c.1),
            wal.replay_from(start_seq),
            cfg.engine.feed_retention_records,
            cfg.engine.velocity_half_lives,
            1_000_000,
            |n, seq| tracing::info!(records = n, seq, "recovery: replaying log"),
        )
        .map_err(|e| match e {
            EngineError::Corrupt(m) => EngineError::Corrupt(format!("{dir}: {m}")),
            other => other,
        })?;
        tracing::info!(
            skus = rec.skus.len(),
            replayed = rec.records_replayed,
            skipped = rec.records_skipped,
            rolled_forward = rec.rolled_forward,
            rolled_back = rec.rolled_back,
            "recovery: state rebuilt"
        );
        // What recovery decided itself (finishing cut operations, releasing unacknowledged
        // carts) is logged at the positions it was derived for, before anything else.
        for (i, c) in rec.completions.iter().enumerate() {
            let want = rec.last_seq + 1 + i as u64;
            let seq = wal
                .append_unbounded(Journal::encode(c)?)
                .map_err(Journal::error)?;
            if seq != want {
                return Err(EngineError::Corrupt(format!(
                    "{dir}: recovery record logged at {seq}, expected {want}"
                )));
            }
        }
        let last_seq = rec.last_seq + rec.completions.len() as u64;
        tracing::info!(
            since_checkpoint = last_seq.saturating_sub(start_seq - 1),
            "records a restart would replay"
        );
        let engine = Engine::start_with(
            cfg.engine.clone(),
            cfg.clock.clone().unwrap_or_else(|| Arc::new(SystemClock)),
            Journal::Wal(Arc::new(wal)),
            rec.catalog,
            rec.skus,
        )?;
        engine
            .core
            .checkpoint_start
            .store(start_seq, std::sync::atomic::Ordering::Relaxed);
        engine
            .core
            .replayed_at_open
            .store(rec.records_replayed, std::sync::atomic::Ordering::Relaxed);
        *engine.core.history_retention.lock() = cfg.history;
        engine
            .core
            .feed
            .load(rec.feed, last_seq.max(engine.core.journal.last_seq()));
        if let Journal::Wal(wal) = &engine.core.journal {
            for (name, seq) in wal.positions().map_err(storage)? {
                engine.core.positions.insert(name, seq);
            }
        }
        for r in rec.idempotency {
            let IdemRecord {
                at_ms,
                id,
                fingerprint,
                outcome,
            } = r;
            engine
                .core
                .idem
                .complete(id, fingerprint, Arc::new(outcome), at_ms);
        }
        let expired = engine.expire_due().await;
        // Ready means the log is writable: what recovery wrote itself (finished operations,
        // released carts, expired holds) must be durable before `open` returns.
        let last = engine.core.journal.last_seq();
        engine.core.journal.wait_durable(last).await?;
        engine.start_background_tasks()?;
        crate::metrics::recovery_done(t0.elapsed(), rec.records_replayed);
        tracing::info!(
            expired,
            rolled_forward = rec.rolled_forward,
            rolled_back = rec.rolled_back,
            duration_ms = t0.elapsed().as_millis() as u64,
            "recovery done: ready"
        );
        if cfg.checkpoint_every_records > 0 {
            // A process that lives shorter than a checkpoint takes (a crash or deploy loop)
            // would otherwise never finish one, and every restart would replay more: with
            // `every` records or more to replay, the first thing is a checkpoint, so a restart
            // replays at most `every` records plus what one lifetime logged, whatever the
            // crash pattern. A failure is logged and counted like the background task's;
            // the log stays the authority.
            let since = engine.core.records_since_checkpoint();
            if since >= cfg.checkpoint_every_records {
                match self::checkpoint(&engine.core).await {
                    Ok(r) => tracing::info!(
                        start_seq = r.start_seq,
                        replayed_since_last = since,
                        ms = r.duration.as_millis() as u64,
                        "recovery: checkpoint written before serving"
                    ),
                    Err(e) => {
                        crate::metrics::checkpoint_failed();
                        tracing::error!("recovery: checkpoint before serving failed: {e}");
                    }
                }
            }
            let core = Arc::downgrade(&engine.core);
            let task = tokio::spawn(checkpoint_task(
                core,
                cfg.checkpoint_every_records,
                cfg.checkpoint_poll,
            ));
            engine.tasks.lock().push(task);
        }
        Ok(engine)
    }

    /// The log's group-commit counters, for a durable engine.
    pub fn wal_stats(&self) -> Option<&crate::wal::WalStats> {
        match &self.core.journal {
            Journal::Wal(wal) => Some(wal.stats()),
            Journal::Memory { .. } => None,
        }
    }

    /// Whether the engine accepts writes: `Err` once it is shutting down or its log has
    /// failed (fail-stop). Readiness checks use it.
    pub fn writable(&self) -> Result<(), EngineError> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        match &self.core.journal {
            Journal::Wal(wal) => match wal.failure() {
                Some(m) => Err(EngineError::Storage(m.to_string())),
                None => Ok(()),
            },
            Journal::Memory { .. } => Ok(()),
        }
    }

    /// Size of the log, for a durable engine.
    pub fn log_stats(&self) -> Option<crate::wal::LogStats> {
        match &self.core.journal {
            Journal::Wal(wal) => Some(wal.log_stats()),
            Journal::Memory { .. } => None,
        }
    }

    /// One page of `sku`'s durable history (docs/history-design.md): its events from
    /// `from` (seq, index; inclusive) on, oldest first, at most `limit` (1..=1000), across
    /// checkpoints and restarts as far as retention keeps them. Reads the history tree
    /// and the log since the last checkpoint (at most
    /// [`history::TAIL_RECORDS_PER_READ`] records of it per call) off the async threads,
    /// holding checkpoints back meanwhile.
    pub async fn history(
        &self,
        sku: &crate::domain::SkuId,
        from: (u64, u16),
        limit: u32,
    ) -> Result<HistoryPage, EngineError> {
        let Journal::Wal(wal) = &self.core.journal else {
            return Err(EngineError::Storage(
                "history needs a data directory".into(),
            ));
        };
        if !(1..=history::MAX_HISTORY_PAGE).contains(&limit) {
            return Err(EngineError::Limit(format!(
                "history limit {limit}: must be 1..={}",
                history::MAX_HISTORY_PAGE
            )));
        }
        let (wal, sku) = (wal.clone(), sku.clone());
        // No checkpoint may move the marker or truncate the log under the read.
        let _no_checkpoint = self.core.checkpoint_lock.lock().await;
        tokio::task::spawn_blocking(move || {
            history::read_page(
                &wal,
                sku.as_str(),
                from,
                limit as usize,
                history::TAIL_RECORDS_PER_READ,
            )
        })
        .await
        .map_err(storage)?
    }

    /// Records a restart would replay: those logged since the latest checkpoint.
    pub fn records_since_checkpoint(&self) -> u64 {
        self.core.records_since_checkpoint()
    }

    /// Log records the recovery that opened this engine replayed (bounded by the checkpoint
    /// interval plus one process lifetime's records, whatever the crash pattern).
    pub fn records_replayed_at_open(&self) -> u64 {
        self.core
            .replayed_at_open
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a checkpoint now and truncates the log below it.
    pub async fn checkpoint(&self) -> Result<CheckpointReport, EngineError> {
        let r = checkpoint(&self.core).await;
        if r.is_err() {
            crate::metrics::checkpoint_failed();
        }
        r
    }
}

/// Takes a checkpoint whenever `every` records were logged since the latest one, counted
/// from that checkpoint's start sequence, not from this process's start: a process that
/// restarts often (a crash or deploy loop) still checkpoints, so recovery time stays
/// bounded by the interval.
async fn checkpoint_task(weak: std::sync::Weak<Core>, every: u64, poll: Duration) {
    loop {
        tokio::time::sleep(poll).await;
        let Some(core) = weak.upgrade() else { return };
        if core.records_since_checkpoint() < every {
            continue;
        }
        match checkpoint(&core).await {
            Ok(r) => {
                tracing::info!(
                    start_seq = r.start_seq,
                    skus = r.skus,
                    bytes = r.bytes,
                    ms = r.duration.as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(e) => {
                crate::metrics::checkpoint_failed();
                tracing::error!("checkpoint failed: {e}");
            }
        }
    }
}

/// Most SKU snapshots requested from actors at once during a checkpoint.
const CHECKPOINT_CONCURRENCY: usize = 256;

pub(crate) async fn checkpoint(core: &Arc<Core>) -> Result<CheckpointReport, EngineError> {
    let t0 = Instant::now();
    let Journal::Wal(wal) = &core.journal else {
        return Err(EngineError::Storage(
            "checkpoints need a data directory".into(),
        ));
    };
    let _one_at_a_time = core.checkpoint_lock.lock().await;
    let (start_seq, bytes, n) = capture(core, wal).await?;
    let len = bytes.len();
    let wal = wal.clone();
    let retention = *core.history_retention.lock();
    let prune_after = core.history_prune_after.lock().clone();
    let now_ms = core.clock.now_ms();
    let (derived, pruned) = tokio::task::spawn_blocking(move || {
        // The history takes the events of the records the checkpoint is about to cut
        // away before the cut (a crash in between leaves both: readers de-duplicate).
        let derived = history::derive(&wal, start_seq)?;
        wal.write_checkpoint(start_seq, &bytes).map_err(storage)?;
        let pruned = history::prune(&wal, retention, now_ms, prune_after.as_deref())?;
        Ok::<_, EngineError>((derived, pruned))
    })
    .await
    .map_err(storage)??;
    *core.history_prune_after.lock() = pruned.next_after;
    tracing::debug!(
        derived,
        pruned = pruned.removed,
        examined = pruned.examined,
        "history derived and pruned"
    );
    crate::metrics::checkpoint_done(t0.elapsed(), len);
    core.checkpoint_start
        .store(start_seq, std::sync::atomic::Ordering::Relaxed);
    Ok(CheckpointReport {
        start_seq,
        skus: n,
        bytes: len,
        duration: t0.elapsed(),
    })
}

/// A fuzzy snapshot of the whole state as checkpoint bytes: (start seq, encoded
/// [`CheckpointState`], SKU count). Every record below the start seq is reflected in it
/// (some above it may be too). The caller holds `checkpoint_lock`. Checkpoints and backups
/// (`super::backup`) share it, so state added to checkpoints is in backups too.
pub(crate) async fn capture(
    core: &Arc<Core>,
    wal: &Arc<Wal>,
) -> Result<(u64, Vec<u8>, usize), EngineError> {
    let start_seq = wal.last_assigned_seq() + 1;
    core.drain_epoch().await?;
    let catalog = {
        let _w = core.catalog_write.lock().await;
        (*core.catalog()).clone()
    };
    let mut passive = Vec::new();
    let mut active = Vec::new();
    core.registry
        .for_each_slot(&catalog, |sku, slot| match slot {
            Ok(state) => passive.push(state),
            Err(_) => active.push(sku.clone()),
        })?;
    let snapshots: Vec<_> = stream::iter(active)
        .map(|sku| {
            let core = core.clone();
            async move { reads::call_wait(&core, &sku, SkuOp::Snapshot).await }
        })
        .buffer_unordered(CHECKPOINT_CONCURRENCY)
        .collect()
        .await;
    let mut skus = passive;
    for s in snapshots {
        match s {
            Ok(SkuReply::State(st)) => skus.push(*st),
            other => {
                return Err(EngineError::Corrupt(format!(
                    "checkpoint snapshot: {other:?}"
                )))
            }
        }
    }
    let idempotency = core
        .idem
        .entries()
        .into_iter()
        .map(|(at_ms, id, fingerprint, o)| IdemRecord {
            at_ms,
            id,
            fingerprint,
            outcome: (*o).clone(),
        })
        .collect();
    let n = skus.len();
    let state = CheckpointState {
        version: CHECKPOINT_VERSION,
        catalog,
        skus,
        idempotency,
    };
    let bytes = codec::encode(&state).map_err(storage)?;
    Ok((start_seq, bytes, n))
}
