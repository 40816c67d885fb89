//! The write-ahead log: every acknowledged inventory change is appended here, and made
//! durable, before the engine replies; on restart the engine rebuilds its in-memory
//! state from the latest checkpoint plus a replay of the log after it.
//!
//! This module owns the public WAL API ([`Wal`], [`WalConfig`], [`WalError`]) and the
//! lifecycle glue (open, shutdown). The work lives in submodules: [`record`] (on-disk
//! byte layout), `writer` (group commit on one OS thread), `checkpoint` (snapshot
//! storage and log truncation) and `recovery` (open-time validation, replay). Payloads
//! are opaque bytes: the WAL never decodes them, so the engine's record types can
//! evolve without touching this module. Storage is a sled database at
//! [`WalConfig::dir`] with four trees, `log`, `checkpoint`, `positions` (named
//! subscriptions' acknowledged feed positions) and `history` (each SKU's events, derived
//! from the log at checkpoint time so they outlive its truncation; see `history`);
//! nothing else may write to that database. Each `log` value holds a *group* of consecutive records (format
//! version 2, see [`record`]): sled costs microseconds per key, so packing up to
//! [`WalConfig::max_group_records`] records into one value is what makes the log fast.
//! Groups are invisible in the API: seqs, replay and stats are per record.
//!
//! Durability contract: in [`Durability::Sync`] (the default) `wait_durable(seq)`
//! returns only after the batch containing `seq` has been fsynced. Failures are
//! fail-stop: after the first write or flush error every pending and later operation
//! reports [`WalError::Failed`], and a record whose wait reported `Failed` has an
//! *unknown* outcome (it may or may not reappear on replay); it is never reported
//! durable.
#![deny(missing_docs)]

pub mod backup;
mod checkpoint;
mod guard;
mod history;
pub mod identity;
pub mod record;
mod recovery;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

pub use checkpoint::Checkpoint;
pub use history::{HistoryItem, HistoryMarks, PruneReport};
pub use identity::{DirState, Identity, Init};
pub use recovery::ReplayIter;
pub use writer::FaultInjector;

/// Default for [`WalConfig::max_record_bytes`]: 1 MiB. Domain records are tens of
/// bytes; anything near this size is a bug upstream, and sled keeps whole values in
/// memory.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Default for [`WalConfig::max_batch_records`]: 8192 records per sled batch and fsync.
/// Large enough to amortise the fsync (~0.3-1.5 ms here) many times over. sled applies a
/// batch at ~3-7 us per *key* (group) while holding its process-wide write lock; with
/// the default group size a full batch is 32 keys, so it blocks other sled writers for
/// well under a millisecond.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 8192;

/// Default for [`WalConfig::max_group_records`]: 256 records per sled value. Measured
/// raw sled throughput is ~3.0M records/s at 64 records per value and ~3.8M at 256
/// (versus ~200K with one record per value); larger groups gain little more and make
/// every value (and a torn tail) bigger.
pub const DEFAULT_MAX_GROUP_RECORDS: usize = 256;

/// Default for [`WalConfig::max_group_bytes`]: [`LOG_GROUP_BYTES`] (6 KiB) of encoded group
/// per sled value: small enough that sled never stores a log leaf as a blob file. A single
/// record larger than this is stored as a group of one.
pub const DEFAULT_MAX_GROUP_BYTES: usize = LOG_GROUP_BYTES;

/// The size a log group stays under: 6 KiB (checkpoint chunks stay at
/// [`SLED_VALUE_BYTES`]).
///
/// Why larger than [`SLED_VALUE_BYTES`]: sled charges per key (~19K instructions to insert
/// a group, plus a node split every ~11 groups), so a larger group costs less per record
/// (docs/benchmarks.md "Instructions per durable reserve in the actor and the log").
/// Why not larger: a sled leaf holds at most 17 values before it splits, and a leaf that
/// falls under 4 is merged with its neighbour, so a leaf holds at most 20 values; 20
/// groups of 6 KiB with their keys and headers (~123 KB) stay under the blob threshold of
/// `segment_size / 4 - 20` (131,052 bytes with the default 512 KiB segments), so a log leaf
/// is never a blob file (see [`SLED_VALUE_BYTES`]); 7 KiB would not be.
pub const LOG_GROUP_BYTES: usize = 6 * 1024;

/// The size every sled value of ours stays under (log groups, checkpoint chunks): 4 KiB.
///
/// Why: sled 0.34 writes any page fragment over `segment_size / 4 - 20` bytes (131,052
/// with the default 512 KiB segments) as a separate file in `blobs/`, and a leaf page
/// holds up to 17 values. A blob replaced by a newer version is removed only when its
/// segment is retired, from a list kept in memory (`deferred_rm_blob`): a kill -9 loses
/// that list and nothing collects the file afterwards (sled issue #786). With 1 MiB
/// checkpoint chunks and 256 KiB groups, every checkpoint and most log leaves were blobs:
/// 100 kill -9 cycles of tests/crash.rs left 89 MB of files for about 4 MB of live data, and
/// recovery grew with them (docs/benchmarks.md "Longer crash run"). 17 values of 4 KiB plus
/// their keys stay near 70 KB, inside the log's segments, which sled reuses.
pub const SLED_VALUE_BYTES: usize = 4 * 1024;

/// Default for [`WalConfig::max_pending_records`]: 1,000,000 records waiting for the
/// writer. Beyond this `append` returns [`WalError::Backpressure`] so a stalled disk
/// turns into a retriable error instead of unbounded memory growth.
pub const DEFAULT_MAX_PENDING_RECORDS: usize = 1_000_000;

/// Default for [`WalConfig::checkpoint_chunk_bytes`]: [`SLED_VALUE_BYTES`] per sled value,
/// so a snapshot is never one huge sled value nor a leaf of blob files (a 100 MB checkpoint
/// is 25,600 chunks).
pub const CHECKPOINT_CHUNK_BYTES: usize = SLED_VALUE_BYTES;

/// Default for [`WalConfig::sled_cache_capacity_bytes`]: 64 MiB. The WAL is written far
/// more than it is read, so sled's default 1 GiB page cache would mostly hold records
/// that are only read again at the next restart.
pub const DEFAULT_SLED_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// How long [`Wal::open`] keeps retrying, in milliseconds, while sled reports the data
/// directory's lock as held. Default: 5000 ms. sled releases the lock of a dropped
/// handle asynchronously (its I/O threads and epoch-deferred frees keep the file open
/// for a moment), so reopening in the same process right after dropping a `Wal` can
/// race it; a lock held by another live process still fails once this runs out.
pub const OPEN_LOCK_RETRY_MS: u64 = 5000;

/// Name of the sled tree holding log records.
const LOG_TREE: &str = "log";
/// Name of the sled tree holding checkpoints.
const CHECKPOINT_TREE: &str = "checkpoint";
/// Name of the sled tree holding the acknowledged positions of named subscriptions.
const POSITIONS_TREE: &str = "positions";

/// When `wait_durable` may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `wait_durable(seq)` returns after the batch holding `seq` is fsynced: nothing
    /// acknowledged is lost on power failure.
    #[default]
    Sync,
    /// `wait_durable(seq)` returns once `seq` is written into sled (in memory); the
    /// writer fsyncs at most `flush_interval_ms` after the oldest unflushed write.
    /// Up to `flush_interval_ms` of acknowledged work can be lost on power loss, a
    /// kernel crash, or a process crash (sled buffers writes in process memory until
    /// they are flushed).
    Relaxed {
        /// Longest time a written record stays unflushed, in milliseconds (>= 1).
        flush_interval_ms: u64,
    },
}

/// Configuration for [`Wal::open`]. Build with [`WalConfig::new`] and override fields.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Data directory of the sled database (created if missing).
    pub dir: PathBuf,
    /// When waiters are released; see [`Durability`].
    pub durability: Durability,
    /// Largest accepted payload; default [`DEFAULT_MAX_RECORD_BYTES`].
    pub max_record_bytes: usize,
    /// Most records per sled batch and fsync; default [`DEFAULT_MAX_BATCH_RECORDS`].
    pub max_batch_records: usize,
    /// Most records per group (one sled value), 1..=65535; default
    /// [`DEFAULT_MAX_GROUP_RECORDS`].
    pub max_group_records: usize,
    /// Most encoded bytes per group, except that a single larger record forms a group
    /// of its own; default [`DEFAULT_MAX_GROUP_BYTES`].
    pub max_group_bytes: usize,
    /// Most records queued for the writer; default [`DEFAULT_MAX_PENDING_RECORDS`].
    pub max_pending_records: usize,
    /// Size of each checkpoint chunk value; default [`CHECKPOINT_CHUNK_BYTES`].
    pub checkpoint_chunk_bytes: usize,
    /// sled page-cache size; default [`DEFAULT_SLED_CACHE_CAPACITY_BYTES`].
    pub sled_cache_capacity_bytes: u64,
    /// Test hook making the writer's storage calls fail; `None` in production.
    pub fault: Option<Arc<FaultInjector>>,
    /// Whether a missing or empty directory may be initialised; default [`Init::Allow`].
    pub init: Init,
    /// How long open waits for sled's directory lock before answering
    /// [`WalError::Locked`]; default [`OPEN_LOCK_RETRY_MS`] (a handle of this process being
    /// torn down). The offline tools (`check`, `dump`) wait less: another process holding
    /// the lock is a running server, which does not let go.
    pub lock_wait_ms: u64,
}

impl WalConfig {
    /// Defaults for everything but the data directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            durability: Durability::Sync,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_group_records: DEFAULT_MAX_GROUP_RECORDS,
            max_group_bytes: DEFAULT_MAX_GROUP_BYTES,
            max_pending_records: DEFAULT_MAX_PENDING_RECORDS,
            checkpoint_chunk_bytes: CHECKPOINT_CHUNK_BYTES,
            sled_cache_capacity_bytes: DEFAULT_SLED_CACHE_CAPACITY_BYTES,
            fault: None,
            init: Init::Allow,
            lock_wait_ms: OPEN_LOCK_RETRY_MS,
        }
    }

    fn validate(&self) -> Result<(), WalError> {
        let bad = |what: &str| {
            Err(WalError::InvalidConfig(format!(
                "{what} must be at least 1"
            )))
        };
        if self.max_record_bytes == 0 {
            return bad("max_record_bytes");
        }
        if self.max_batch_records == 0 {
            return bad("max_batch_records");
        }
        if self.max_pending_records == 0 {
            return bad("max_pending_records");
        }
        if self.max_group_records == 0 {
            return bad("max_group_records");
        }
        if self.max_group_bytes == 0 {
            return bad("max_group_bytes");
        }
        // The group header stores the count as a u16 and each length as a u32.
        if self.max_group_records > record::MAX_GROUP_RECORDS {
            return Err(WalError::InvalidConfig(format!(
                "max_group_records must be at most {}",
                record::MAX_GROUP_RECORDS
            )));
        }
        if self.max_record_bytes > record::MAX_PAYLOAD_LEN {
            return Err(WalError::InvalidConfig(format!(
                "max_record_bytes must be at most {}",
                record::MAX_PAYLOAD_LEN
            )));
        }
        if self.checkpoint_chunk_bytes == 0 {
            return bad("checkpoint_chunk_bytes");
        }
        if let Durability::Relaxed {
            flush_interval_ms: 0,
        } = self.durability
        {
            return bad("Durability::Relaxed flush_interval_ms");
        }
        Ok(())
    }
}

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The payload exceeds [`WalConfig::max_record_bytes`]. Not retriable.
    #[error("WAL record of {len} bytes exceeds the {max} byte limit")]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Too many records are waiting for the writer. Retriable: back off and retry, or
    /// shed load; the disk is slower than the offered load.
    #[error("WAL backpressure: {pending_records} records pending (limit {max_pending_records})")]
    Backpressure {
        /// Records queued when the append was refused.
        pending_records: usize,
        /// Configured limit.
        max_pending_records: usize,
    },
    /// A write or flush failed; the WAL is permanently failed (fail-stop) until the
    /// process reopens it. The outcome of records not yet durable is unknown.
    #[error("WAL failed (fail-stop): {0}")]
    Failed(String),
    /// The WAL was shut down; no more appends are accepted.
    #[error("WAL is shut down")]
    Closed,
    /// A log group is damaged or records are missing somewhere other than the tail. Recovery
    /// refuses to skip it: acknowledged changes would silently vanish.
    #[error(
        "data directory corrupt: {}: the log is damaged at record seq {seq}: {reason}. \
         Refusing to skip it; restore the directory from a backup or repair it by hand",
        dir.join(identity::DB_FILE).display()
    )]
    Corrupt {
        /// Data directory of the damaged log.
        dir: PathBuf,
        /// First seq of the damaged group (or the first missing seq).
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The latest checkpoint's header or state fails its checks.
    #[error(
        "data directory corrupt: {}: the latest checkpoint is damaged: {reason}",
        dir.join(identity::DB_FILE).display()
    )]
    CorruptCheckpoint {
        /// Data directory of the damaged checkpoint.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `replay_from` asked for records already removed by a checkpoint.
    #[error(
        "WAL records from seq {requested} were truncated by a checkpoint; \
         the log starts at seq {first_available}: load the checkpoint first"
    )]
    Truncated {
        /// Seq the caller asked for.
        requested: u64,
        /// Lowest seq the log still holds.
        first_available: u64,
    },
    /// A wait named a seq that `append` never returned.
    #[error("WAL seq {seq} was never assigned (last assigned seq is {last_assigned})")]
    SeqNotAssigned {
        /// Seq waited for.
        seq: u64,
        /// Highest seq assigned so far.
        last_assigned: u64,
    },
    /// A call's arguments are inconsistent with the log (e.g. checkpoint bounds).
    #[error("invalid WAL call: {0}")]
    InvalidArgument(String),
    /// [`WalConfig`] has an unusable value.
    #[error("invalid WAL config: {0}")]
    InvalidConfig(String),
    /// Another process (a running server, or a `check`/`dump`) holds the data directory's
    /// lock. Not corrupt; retriable once that process ends. A running server's state is
    /// read through the protocol (`omnistock ctl`), not from its directory.
    #[error(
        "data directory {} is in use by another process (a running omnistock server, or a \
         check or dump) holding its lock. check and dump read a directory exclusively: stop \
         the server first, or read a running server's state with omnistock ctl",
        dir.display()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// sled returned an error outside the writer thread (open, read, checkpoint).
    #[error("WAL storage error during {op}: {source}")]
    Storage {
        /// What the WAL was doing.
        op: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A file of the data directory is damaged: sled panicked reading it, the log ends
    /// before a seq that was durable at the last clean shutdown, or the identity file is
    /// malformed. Not retriable: restore the directory from a backup.
    #[error("data directory corrupt: {}: {reason}", file.display())]
    CorruptFile {
        /// The data directory.
        dir: PathBuf,
        /// The damaged file (or the directory itself).
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory has an identity file (or sled's other files) but its database is
    /// missing or empty: the log was deleted or lost. Refused whatever [`Init`] says;
    /// starting anyway would be a new, empty inventory.
    #[error(
        "data directory {} lost its log: {}{what}. Refusing to start an empty inventory; \
         restore the directory from a backup",
        dir.display(),
        id.as_ref().map(|id| format!("{} says {id} but ", identity::IDENTITY_FILE)).unwrap_or_default()
    )]
    LostLog {
        /// The data directory.
        dir: PathBuf,
        /// The id in its identity file, if it has one.
        id: Option<String>,
        /// What is missing.
        what: String,
    },
    /// The directory is missing or empty (no identity file, no database) and
    /// [`WalConfig::init`] does not allow creating one: a volume that failed to mount
    /// looks like this.
    #[error(
        "data directory {} is {state}: no {} and no database. If the volume holding it \
         failed to mount, mount it; to create a new, empty inventory there, start once \
         with `omnistock serve --init`",
        dir.display(),
        identity::IDENTITY_FILE
    )]
    NotInitialised {
        /// The data directory.
        dir: PathBuf,
        /// "missing" or "empty".
        state: &'static str,
    },
    /// Writing the identity file or the durable mark failed.
    #[error("could not write {}: {reason}", path.display())]
    Identity {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A backup's target may not receive one (relative, not empty, inside the data
    /// directory, no parent...). Nothing was written. Not retriable with the same target.
    #[error("backup target {} refused: {reason}", target.display())]
    BackupTarget {
        /// The target asked for.
        target: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Writing (or reading) a backup's files failed: the backup's side, not the log's;
    /// the source directory is unchanged and whatever was staged is removed. Retriable
    /// once the cause (space, permissions) is fixed.
    #[error("backup failed at {}: {reason}", path.display())]
    Backup {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The writer thread could not be started.
    #[error("could not start the WAL writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Counters the engine exports as metrics at scrape time. Besides these, the writer
/// thread records its batch size and flush latency histograms through `crate::metrics`
/// (once per batch, off the request path). All are monotonic except `flush_latency_max_us` (a running max) and
/// `last_batch_records` (a gauge).
#[derive(Debug, Default)]
pub struct WalStats {
    /// Batches committed (one `apply_batch` each).
    pub batches: AtomicU64,
    /// Records committed.
    pub records: AtomicU64,
    /// Groups (sled values) committed; each holds one or more records.
    pub groups: AtomicU64,
    /// Encoded group bytes committed (headers, length prefixes and payloads).
    pub written_bytes: AtomicU64,
    /// Sum of `apply_batch` durations (encoding excluded), in microseconds.
    pub apply_latency_total_us: AtomicU64,
    /// sled flushes (fsyncs) performed by the writer.
    pub flushes: AtomicU64,
    /// Sum of flush durations, in microseconds.
    pub flush_latency_total_us: AtomicU64,
    /// Longest single flush, in microseconds.
    pub flush_latency_max_us: AtomicU64,
    /// Records in the most recent batch.
    pub last_batch_records: AtomicU64,
}

/// What [`Wal::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// First seq of a damaged last group that was removed (never acknowledged), if any.
    pub torn_tail_dropped: Option<u64>,
    /// Records in groups wholly below the checkpoint, left by an interrupted
    /// truncation, now removed.
    pub stale_records_removed: u64,
    /// Valid records in the log at or above the checkpoint's start seq.
    pub records: u64,
    /// Lowest such seq.
    pub first_seq: Option<u64>,
    /// Highest such seq; appends continue after it.
    pub last_seq: Option<u64>,
    /// Start seq of the latest checkpoint, if one exists.
    pub checkpoint_start_seq: Option<u64>,
}

/// A point-in-time view of the log's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records currently stored (`last_seq - first_seq + 1`; includes any not yet
    /// truncated below the checkpoint, and the records below the checkpoint's start
    /// seq that share a group with it: truncation removes whole groups only).
    pub records: u64,
    /// Lowest stored record seq.
    pub first_seq: Option<u64>,
    /// Highest stored record seq (may briefly exceed `durable_seq` while a batch
    /// commits).
    pub last_seq: Option<u64>,
    /// Highest seq acknowledged to waiters.
    pub durable_seq: u64,
    /// Highest seq known fsynced (below `durable_seq` only in relaxed mode).
    pub flushed_seq: u64,
    /// sled's on-disk size (data file plus blobs), in bytes; 0 if it cannot be read.
    pub approx_disk_bytes: u64,
}

/// Waits for durability without holding the [`Wal`] (see [`Wal::durability_waiter`]).
#[derive(Clone)]
pub struct DurabilityWaiter(Arc<writer::Shared>);

impl std::fmt::Debug for DurabilityWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurabilityWaiter").finish_non_exhaustive()
    }
}

impl DurabilityWaiter {
    /// Same as [`Wal::wait_durable`].
    pub async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        self.0.wait_durable(seq).await
    }
}

/// The write-ahead log. Share it as `Arc<Wal>`; every method takes `&self`.
pub struct Wal {
    shared: Arc<writer::Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    db: sled::Db,
    log: sled::Tree,
    checkpoints: sled::Tree,
    history: sled::Tree,
    dir: Arc<PathBuf>,
    config: WalConfig,
    report: OpenReport,
    /// Lowest seq the log promises to hold (checkpoint start, or 1).
    replay_floor: AtomicU64,
    /// Serialises checkpoint writes and reads, so a read never sees chunks vanish.
    checkpoint_lock: Mutex<()>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("durable_seq", &self.durable_seq())
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

fn storage(op: &'static str) -> impl FnOnce(sled::Error) -> WalError {
    move |source| WalError::Storage { op, source }
}

/// sled's own "corrupted data" error, from reading the database in `dir`, as
/// [`WalError::CorruptFile`] naming the file; other errors unchanged.
pub(crate) fn name_corrupt_file(dir: &std::path::Path, error: WalError) -> WalError {
    match error {
        WalError::Storage {
            op,
            source: source @ sled::Error::Corruption { .. },
        } => WalError::CorruptFile {
            dir: dir.to_path_buf(),
            file: dir.join(identity::DB_FILE),
            reason: format!("sled reports it corrupt during {op}: {source}"),
        },
        other => other,
    }
}

/// The error for a sled panic caught while `doing` something with the database in `dir`.
pub(crate) fn sled_panicked(dir: &std::path::Path, doing: &str, panic: String) -> WalError {
    WalError::CorruptFile {
        dir: dir.to_path_buf(),
        file: dir.join(identity::DB_FILE),
        reason: format!("sled failed an internal check {doing}: {panic}"),
    }
}

/// sled reports a held directory lock as an `Other` I/O error with this text.
fn is_lock_contention(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"))
}

/// Opens the sled database, retrying for up to `lock_wait_ms` while its lock is still
/// held (by a handle that is being torn down); a lock still held then is
/// [`WalError::Locked`].
fn open_sled(
    dir: &std::path::Path,
    cache_capacity_bytes: u64,
    lock_wait_ms: u64,
) -> Result<sled::Db, WalError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity_bytes);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(lock_wait_ms);
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_contention(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) if is_lock_contention(&e) => {
                return Err(WalError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(storage("open sled database")(e)),
        }
    }
}

/// What [`Wal::open_storage`] opened: the database, its two trees, the checkpoint header
/// and the validated log.
type OpenedStorage = (
    sled::Db,
    sled::Tree,
    sled::Tree,
    Option<checkpoint::Header>,
    recovery::Recovered,
);

impl Wal {
    /// sled's open and everything open reads from it (run under the panic guard).
    fn open_storage(config: &WalConfig) -> Result<OpenedStorage, WalError> {
        let db = open_sled(
            &config.dir,
            config.sled_cache_capacity_bytes,
            config.lock_wait_ms,
        )?;
        let log = db.open_tree(LOG_TREE).map_err(storage("open log tree"))?;
        let checkpoints = db
            .open_tree(CHECKPOINT_TREE)
            .map_err(storage("open checkpoint tree"))?;
        let header = checkpoint::read_header(&checkpoints, &config.dir)?;
        let floor = header.map_or(1, |h| h.start_seq.max(1));
        let recovered = recovery::recover_log(&log, &config.dir, floor)?;
        Ok((db, log, checkpoints, header, recovered))
    }

    /// Opens (or creates) the WAL in `config.dir`, validates the log (see
    /// [`OpenReport`] for the repairs it may make) and starts the writer thread.
    ///
    /// Reads every group once to check it, so opening costs about as much as a
    /// replay of the log since the last checkpoint.
    ///
    /// Before sled touches the directory, its identity file decides (see [`Init`] and
    /// [`identity::inspect`]): a missing or empty directory is initialised or refused
    /// ([`WalError::NotInitialised`]), a directory whose database is gone is refused
    /// ([`WalError::LostLog`]), one from before identity files is adopted. sled's open
    /// and the validation scan run under a panic guard: a damaged file is
    /// [`WalError::CorruptFile`], never a panic. A log that ends before the seq recorded
    /// durable at the last clean shutdown or checkpoint (sled silently rolls a truncated
    /// `db` back to an older state) is [`WalError::CorruptFile`] too.
    pub fn open(config: WalConfig) -> Result<Wal, WalError> {
        config.validate()?;
        let dir = config.dir.clone();
        let state = identity::inspect(&dir)?;
        let new = matches!(state, DirState::Missing | DirState::Empty);
        if new && config.init != Init::Allow {
            let state = if state == DirState::Missing {
                "missing"
            } else {
                "empty"
            };
            return Err(WalError::NotInitialised { dir, state });
        }
        let mark = match state {
            DirState::Identified(_) => identity::read_durable_mark(&dir)?,
            _ => None,
        };
        let opened = guard::guarded(|| Self::open_storage(&config)).map_err(|panic| {
            let db_file = dir.join(identity::DB_FILE);
            let size = std::fs::metadata(&db_file)
                .map(|m| format!("{} bytes", m.len()))
                .unwrap_or_else(|e| e.to_string());
            WalError::CorruptFile {
                dir: dir.clone(),
                file: db_file,
                reason: format!(
                    "sled failed an internal check reading it ({size}; truncated or overwritten?): {panic}"
                ),
            }
        })?
        .map_err(|e| name_corrupt_file(&dir, e))?;
        let (db, log, checkpoints, header, recovered) = opened;
        let history = guard::guarded(|| db.open_tree(history::HISTORY_TREE))
            .map_err(|panic| sled_panicked(&dir, "opening the history tree", panic))?
            .map_err(storage("open history tree"))?;
        let floor = header.map_or(1, |h| h.start_seq.max(1));
        let next_seq = recovered.last_seq.map_or(floor, |last| last + 1);
        // A torn last group is the one damage a crash may leave; its records may reach the
        // mark, so the check only applies to a log whose every group is intact.
        if let (Some(mark), None) = (mark, recovered.torn_tail_dropped) {
            if next_seq - 1 < mark {
                return Err(WalError::CorruptFile {
                    file: dir.join(identity::DB_FILE),
                    reason: format!(
                        "the log ends at seq {} but seq {mark} was durable at the last clean \
                         shutdown or checkpoint ({}): the db was truncated or rolled back",
                        next_seq - 1,
                        identity::DURABLE_MARK_FILE
                    ),
                    dir,
                });
            }
        }
        if let (Some(mark), Some(_)) = (mark, recovered.torn_tail_dropped) {
            // The torn group was removed from the log just now: lower the mark with it, or
            // the next open would take the missing group for a truncation.
            if next_seq - 1 < mark {
                identity::write_durable_mark(&dir, next_seq - 1)?;
            }
        }
        match state {
            DirState::Missing | DirState::Empty => {
                db.flush().map_err(storage("flush new database"))?;
                let id = identity::write_new(&dir)?;
                tracing::info!(dir = %dir.display(), id = %id.id, "initialised a new data directory");
            }
            DirState::Unidentified if config.init != Init::RefuseReadOnly => {
                let id = identity::write_new(&dir)?;
                tracing::warn!(
                    dir = %dir.display(),
                    id = %id.id,
                    "data directory has a database but no {}: adopted it (it predates identity files) and wrote one",
                    identity::IDENTITY_FILE
                );
            }
            DirState::Unidentified | DirState::Identified(_) => {}
        }
        let report = OpenReport {
            torn_tail_dropped: recovered.torn_tail_dropped,
            stale_records_removed: recovered.stale_records_removed,
            records: recovered.records,
            first_seq: recovered.first_seq,
            last_seq: recovered.last_seq,
            checkpoint_start_seq: header.map(|h| h.start_seq),
        };
        let shared = Arc::new(writer::Shared::new(next_seq));
        let handle = Self::spawn_writer(&config, &shared, &log)?;
        Ok(Wal {
            shared,
            writer: Mutex::new(Some(handle)),
            db,
            log,
            checkpoints,
            history,
            dir: Arc::new(config.dir.clone()),
            config,
            report,
            replay_floor: AtomicU64::new(floor),
            checkpoint_lock: Mutex::new(()),
        })
    }

    fn spawn_writer(
        config: &WalConfig,
        shared: &Arc<writer::Shared>,
        log: &sled::Tree,
    ) -> Result<JoinHandle<()>, WalError> {
        let writer = writer::Writer {
            shared: Arc::clone(shared),
            log: log.clone(),
            dir: config.dir.clone(),
            durability: config.durability,
            max_batch_records: config.max_batch_records,
            group_limits: writer::GroupLimits {
                max_records: config.max_group_records,
                max_bytes: config.max_group_bytes,
            },
            fault: config.fault.clone(),
        };
        std::thread::Builder::new()
            .name("wal-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(WalError::Spawn)
    }

    /// The data directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// What open found and repaired.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Queues `payload` and returns its seq (1, 2, 3, ... with no gaps). Never blocks
    /// on I/O; call [`Wal::wait_durable`] before acknowledging the change.
    ///
    /// Errors: [`WalError::RecordTooLarge`], [`WalError::Backpressure`] (retriable),
    /// [`WalError::Failed`], [`WalError::Closed`].
    pub fn append(&self, payload: Vec<u8>) -> Result<u64, WalError> {
        if payload.len() > self.config.max_record_bytes {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: self.config.max_record_bytes,
            });
        }
        self.shared.append(payload, self.config.max_pending_records)
    }

    /// [`Wal::append`] without the pending-records bound: for records that finish work
    /// already begun (the other parts of a multi-SKU operation, the undo of a refused cart,
    /// expiry, recovery's own records), which back-pressure must not cut in half. Their
    /// number is bounded by the requests in flight.
    pub fn append_unbounded(&self, payload: Vec<u8>) -> Result<u64, WalError> {
        if payload.len() > self.config.max_record_bytes {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: self.config.max_record_bytes,
            });
        }
        self.shared.append(payload, usize::MAX)
    }

    /// Resolves once `seq` is durable (see [`Durability`]). Returns
    /// [`WalError::Failed`] if the WAL failed before `seq` became durable, and
    /// [`WalError::SeqNotAssigned`] for a seq `append` never returned. A seq that was
    /// durable before a failure still reports `Ok`. Cheap with many waiters: all are
    /// woken once per batch.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        self.shared.wait_durable(seq).await
    }

    /// A handle that waits for durability like [`Wal::wait_durable`] without keeping the
    /// WAL (its sled database and directory lock) alive: for long-lived background tasks.
    pub fn durability_waiter(&self) -> DurabilityWaiter {
        DurabilityWaiter(Arc::clone(&self.shared))
    }

    /// Blocking form of [`Wal::wait_durable`] for threads outside an async runtime.
    /// Do not call it on an async executor thread.
    pub fn wait_durable_blocking(&self, seq: u64) -> Result<(), WalError> {
        self.shared.wait_durable_blocking(seq)
    }

    /// Highest seq that [`Wal::wait_durable`] has released (0 if none).
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq()
    }

    /// Highest seq `append` has returned (or recovered at open; 0 if none).
    pub fn last_assigned_seq(&self) -> u64 {
        self.shared.last_assigned()
    }

    /// Why the log stopped accepting writes (fail-stop), or `None` while it is healthy.
    pub fn failure(&self) -> Option<&str> {
        self.shared.failure()
    }

    /// Group-commit counters for metrics export.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Current log size and progress. Storage read errors degrade to `None`/0 here
    /// (this is a monitoring call); they surface as errors from the other methods.
    pub fn log_stats(&self) -> LogStats {
        // Group headers are read without their CRC: this is a size estimate, and a
        // damaged group is reported by replay and open, not here.
        let first_seq = self
            .log
            .first()
            .ok()
            .flatten()
            .and_then(|(key, _)| record::decode_key(&key).ok());
        let last_seq = self.log.last().ok().flatten().and_then(|(key, value)| {
            let first = record::decode_key(&key).ok()?;
            let count = record::peek_count(&value).map_or(1, u64::from);
            Some(first.saturating_add(count - 1))
        });
        let records = match (first_seq, last_seq) {
            (Some(first), Some(last)) if last >= first => last - first + 1,
            _ => 0,
        };
        LogStats {
            records,
            first_seq,
            last_seq,
            durable_seq: self.shared.durable_seq(),
            flushed_seq: self.shared.flushed_seq(),
            approx_disk_bytes: self.db.size_on_disk().unwrap_or(0),
        }
    }

    /// Records with seq >= `seq`, in order, up to the durable seq at the time of the
    /// call; `seq` may fall inside a group, whose earlier records are skipped. Each
    /// group is re-verified; damage or a gap yields [`WalError::Corrupt`], and a
    /// `seq` below the latest checkpoint yields [`WalError::Truncated`]. Meant for
    /// recovery: do not run it concurrently with [`Wal::write_checkpoint`], whose
    /// truncation could remove records the iterator has not reached yet.
    pub fn replay_from(&self, seq: u64) -> ReplayIter {
        let floor = self.replay_floor.load(Ordering::Acquire);
        let end = self.shared.durable_seq();
        ReplayIter::new(&self.log, Arc::clone(&self.dir), seq, end, floor)
    }

    /// The latest complete checkpoint, with its whole-state CRC verified.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, WalError> {
        let _serialised = self.checkpoint_lock.lock();
        guard::guarded(
            || match checkpoint::read_header(&self.checkpoints, &self.dir)? {
                Some(header) => {
                    checkpoint::read_state(&self.checkpoints, &self.dir, &header).map(Some)
                }
                None => Ok(None),
            },
        )
        .map_err(|panic| sled_panicked(&self.dir, "reading the checkpoint", panic))?
    }

    /// Stores `state` as the new checkpoint and then removes what it supersedes: log
    /// groups whose records are all below `covers_up_to_seq_exclusive` (a group
    /// straddling it stays; replay skips its earlier records) and the previous
    /// checkpoint.
    ///
    /// The checkpoint is *fuzzy*: the engine reads `covers_up_to_seq_exclusive` first
    /// and captures `state` afterwards, so `state` reflects every record below it and
    /// possibly some at or above it. Replay from `start_seq` therefore re-applies
    /// records the state may already contain, which the engine makes idempotent per
    /// entity (each SKU remembers the last seq it applied). The caller must ensure
    /// every record below the bound is reflected in `state`.
    ///
    /// Blocking (waits for `covers_up_to_seq_exclusive - 1` to be durable, writes and
    /// fsyncs): run it on a blocking thread, not an async executor. A storage error
    /// here trips fail-stop like a writer error, because a failed fsync may have
    /// discarded log pages too.
    pub fn write_checkpoint(
        &self,
        covers_up_to_seq_exclusive: u64,
        state: &[u8],
    ) -> Result<(), WalError> {
        let start_seq = covers_up_to_seq_exclusive;
        self.shared.check_running()?;
        let _serialised = self.checkpoint_lock.lock();
        self.check_checkpoint_bounds(start_seq)?;
        // Records below the bound must be in sled before truncation runs, or one
        // committed afterwards would survive below the new floor.
        self.shared.wait_durable_blocking(start_seq - 1)?;
        let header = checkpoint::write(
            &self.checkpoints,
            &self.dir,
            start_seq,
            state,
            self.config.checkpoint_chunk_bytes,
        )
        .map_err(|e| self.trip(e))?;
        self.replay_floor.store(start_seq, Ordering::Release);
        let removed_records =
            checkpoint::remove_log_below(&self.log, start_seq).map_err(|e| self.trip(e))?;
        let removed_chunks = checkpoint::remove_chunks_except(&self.checkpoints, header.id)
            .map_err(|e| self.trip(e))?;
        self.write_durable_mark(start_seq - 1);
        tracing::debug!(
            start_seq,
            state_bytes = state.len(),
            removed_records,
            removed_chunks,
            "WAL checkpoint written"
        );
        Ok(())
    }

    fn check_checkpoint_bounds(&self, start_seq: u64) -> Result<(), WalError> {
        let floor = self.replay_floor.load(Ordering::Acquire);
        let next_seq = self.shared.last_assigned() + 1;
        if start_seq == 0 || start_seq < floor || start_seq > next_seq {
            return Err(WalError::InvalidArgument(format!(
                "checkpoint start seq {start_seq} must be in {floor}..={next_seq} \
                 (current checkpoint start ..= next seq to be assigned)"
            )));
        }
        Ok(())
    }

    /// Records `seq` (known flushed) in the durable mark, never lowering it. Best effort:
    /// a failure only weakens the truncation check of the next open, so it is logged.
    fn write_durable_mark(&self, seq: u64) {
        if seq == 0 || self.config.init == Init::RefuseReadOnly {
            return;
        }
        let result = identity::read_durable_mark(&self.dir).and_then(|old| {
            if old.is_some_and(|old| old >= seq) {
                return Ok(());
            }
            identity::write_durable_mark(&self.dir, seq)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the durable seq");
        }
    }

    /// Storage errors in checkpointing are treated like writer errors: fail-stop.
    fn trip(&self, error: WalError) -> WalError {
        if let WalError::Storage { .. } = error {
            self.shared.fail(format!(
                "checkpoint in {} failed: {error}",
                self.dir.display()
            ));
        }
        error
    }

    /// Lowest seq the log promises to hold: the latest checkpoint's start, or 1.
    pub fn replay_floor(&self) -> u64 {
        self.replay_floor.load(Ordering::Acquire)
    }

    /// The history tree's markers (`base`: first seq covered; `upto`: records below it
    /// are in the tree, the rest in the log). Without markers (a directory from before
    /// the history) both are the log's floor.
    pub fn history_marks(&self) -> Result<HistoryMarks, WalError> {
        let floor = self.replay_floor();
        guard::guarded(|| history::marks(&self.history, floor))
            .map_err(|panic| sled_panicked(&self.dir, "reading the history markers", panic))?
    }

    /// Stores derived history items (not flushed; [`Wal::mark_history`] flushes). Same
    /// event, same key and bytes: writing them again is harmless. Blocking; a storage
    /// error trips fail-stop like a checkpoint's.
    pub fn put_history(&self, items: &[HistoryItem]) -> Result<(), WalError> {
        self.shared.check_running()?;
        history::put(&self.history, items).map_err(|e| self.trip(e))
    }

    /// Flushes the items put so far, then records that every record below `upto` is in
    /// the history (and `base` as its first seq if none is recorded yet), and flushes.
    /// Call it before the checkpoint truncating the log below `upto`.
    pub fn mark_history(&self, base: u64, upto: u64) -> Result<(), WalError> {
        self.shared.check_running()?;
        history::mark(&self.history, base, upto).map_err(|e| self.trip(e))
    }

    /// At most `limit` stored history items of `sku` from (`seq`, `index`) on, below
    /// `below_seq`, in order; a damaged value is [`WalError::Corrupt`].
    pub fn history_page(
        &self,
        sku: &str,
        from: (u64, u16),
        below_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryItem>, WalError> {
        guard::guarded(|| history::page(&self.history, &self.dir, sku, from, below_seq, limit))
            .map_err(|panic| sled_panicked(&self.dir, "reading the history", panic))?
    }

    /// One bounded retention pass over the history (see [`PruneReport`]): after SKU
    /// `after`, drops events beyond each SKU's newest `keep_newest` (0: no count limit)
    /// and those older than `older_than_ms` (0: no age limit); stops once `budget` keys
    /// were examined, at the end of a SKU. Single removes: never stalls the writer.
    pub fn prune_history(
        &self,
        after: Option<&str>,
        budget: u64,
        keep_newest: u64,
        older_than_ms: u64,
    ) -> Result<PruneReport, WalError> {
        self.shared.check_running()?;
        guard::guarded(|| history::prune(&self.history, after, budget, keep_newest, older_than_ms))
            .map_err(|panic| sled_panicked(&self.dir, "pruning the history", panic))?
            .map_err(|e| self.trip(e))
    }

    /// Events stored in the history tree and their encoded bytes (keys plus values,
    /// before sled's own overhead). One pass over the tree: for `check` and measurements.
    pub fn history_size(&self) -> Result<(u64, u64), WalError> {
        guard::guarded(|| history::size(&self.history))
            .map_err(|panic| sled_panicked(&self.dir, "reading the history", panic))?
    }

    /// Stores the acknowledged feed position of subscription `name` and flushes it.
    /// Blocking (one fsync): call it off the async threads.
    pub fn store_position(&self, name: &str, seq: u64) -> Result<(), WalError> {
        let tree = self
            .db
            .open_tree(POSITIONS_TREE)
            .map_err(storage("open positions tree"))?;
        tree.insert(name.as_bytes(), &seq.to_le_bytes())
            .map_err(storage("store position"))?;
        tree.flush().map_err(storage("flush position"))?;
        Ok(())
    }

    /// Forgets the feed position of subscription `name` and flushes; whether one was
    /// stored. Blocking (one fsync): call it off the async threads.
    pub fn delete_position(&self, name: &str) -> Result<bool, WalError> {
        let tree = self
            .db
            .open_tree(POSITIONS_TREE)
            .map_err(storage("open positions tree"))?;
        let had = tree
            .remove(name.as_bytes())
            .map_err(storage("delete position"))?
            .is_some();
        tree.flush().map_err(storage("flush position"))?;
        Ok(had)
    }

    /// Every stored feed position, by subscription name.
    pub fn positions(&self) -> Result<Vec<(String, u64)>, WalError> {
        guard::guarded(|| self.read_positions())
            .map_err(|panic| sled_panicked(&self.dir, "reading feed positions", panic))?
    }

    fn read_positions(&self) -> Result<Vec<(String, u64)>, WalError> {
        let tree = self
            .db
            .open_tree(POSITIONS_TREE)
            .map_err(storage("open positions tree"))?;
        let mut out = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(storage("read positions"))?;
            let (Ok(name), Ok(bytes)) =
                (String::from_utf8(k.to_vec()), <[u8; 8]>::try_from(&v[..]))
            else {
                tracing::warn!("ignoring a malformed stored feed position");
                continue;
            };
            out.push((name, u64::from_le_bytes(bytes)));
        }
        Ok(out)
    }

    /// Stops accepting appends, lets the writer commit everything already appended,
    /// and joins it. Idempotent; also run by `Drop`. Reads (replay, checkpoints,
    /// stats) keep working until the `Wal` is dropped.
    pub fn shutdown(&self) {
        self.shared.begin_shutdown();
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("WAL writer thread panicked before shutdown");
            } else if self.shared.failure().is_none() {
                self.write_durable_mark(self.shared.flushed_seq());
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}
