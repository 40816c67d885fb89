//! Online backup (`BACKUP`, `omnistock backup`): a complete data directory of the state as
//! of one log seq, written while requests continue.
//!
//! The snapshot is the checkpoint's own (`persist::capture`: the same fuzzy copy of the
//! catalog, every SKU and the idempotency table, the same short request-epoch drain, no
//! pause of reservations beyond it); the WAL then copies it with the log records from its
//! start seq up to the last one assigned when it was complete, the feed positions and the
//! identity into the target (`crate::wal::backup`). Replaying those records over the fuzzy
//! snapshot gives exactly the state after the backup's last seq. The checkpoint lock is
//! held throughout, so no checkpoint truncates the log under the copy (a checkpoint due
//! meanwhile waits; requests do not). One backup at a time: a second one is refused
//! [`BackupError::Busy`] at once rather than queued.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wal::backup::{check_target, BackupWritten};
use crate::wal::WalError;

use super::journal::Journal;
use super::persist::capture;
use super::{Engine, EngineError};

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup is the state after this log seq.
    pub as_of_seq: u64,
    /// Start seq of the checkpoint in it (records from here to `as_of_seq` are in its log).
    pub checkpoint_start_seq: u64,
    /// SKUs in its checkpoint.
    pub skus: usize,
    /// Bytes of the backup directory on disk.
    pub bytes: u64,
    /// Log records in it after the checkpoint.
    pub log_records: u64,
    /// Where it is.
    pub dir: PathBuf,
    /// Start to rename.
    pub duration: Duration,
}

/// Why a backup was not written. Nothing of the source changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Another backup is running. Retriable once it has finished.
    #[error("a backup is already running; one at a time")]
    Busy,
    /// The target path may not receive a backup. Not retriable with the same path.
    #[error("{0}")]
    Refused(String),
    /// Writing the backup failed (the target's disk, permissions, a source read).
    /// Whatever was staged is removed; retriable once the cause is fixed.
    #[error("{0}")]
    Failed(String),
    /// The engine cannot back up: no data directory (an in-memory engine), shutting down,
    /// or its log has failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl BackupError {
    /// Whether the same backup (to a fresh target) may succeed later.
    pub fn retriable(&self) -> bool {
        match self {
            BackupError::Busy | BackupError::Failed(_) => true,
            BackupError::Refused(_) => false,
            BackupError::Engine(e) => {
                matches!(e, EngineError::ShuttingDown | EngineError::Overloaded(_))
            }
        }
    }
}

fn of_wal(e: WalError) -> BackupError {
    match e {
        WalError::BackupTarget { .. } => BackupError::Refused(e.to_string()),
        WalError::Failed(_) | WalError::Closed => {
            BackupError::Engine(EngineError::Storage(e.to_string()))
        }
        other => BackupError::Failed(other.to_string()),
    }
}

/// Clears the running flag however the backup ends (an error, or the request's task
/// dropped mid-way: the blocking copy then finishes on its own, still holding the WAL's
/// checkpoint lock, so neither a checkpoint nor the next backup's copy overlaps it).
struct Running<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Engine {
    /// Writes a backup of the whole state into `target`, a new directory on this machine
    /// (see [`check_target`] for what is refused). Returns once the backup is complete and
    /// durable. Logged at each step; `omnistock_backup_*` metrics record the outcome.
    pub async fn backup(&self, target: PathBuf) -> Result<BackupReport, BackupError> {
        let t0 = Instant::now();
        self.writable()?;
        let Journal::Wal(wal) = &self.core.journal else {
            return Err(EngineError::Storage("backups need a data directory".into()).into());
        };
        if self
            .core
            .backup_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(BackupError::Busy);
        }
        let _running = Running(&self.core.backup_running);
        check_target(&target, wal.dir()).map_err(of_wal)?;
        let result = self.write_backup(wal, &target, t0).await;
        match &result {
            Ok(r) => {
                crate::metrics::backup_done(r.duration, r.bytes);
                tracing::info!(
                    dir = %r.dir.display(),
                    as_of_seq = r.as_of_seq,
                    skus = r.skus,
                    bytes = r.bytes,
                    ms = r.duration.as_millis() as u64,
                    "backup written"
                );
            }
            Err(e) => {
                if matches!(e, BackupError::Failed(_) | BackupError::Engine(_)) {
                    crate::metrics::backup_failed();
                }
                tracing::warn!(target = %target.display(), "backup failed: {e}");
            }
        }
        result
    }

    async fn write_backup(
        &self,
        wal: &Arc<crate::wal::Wal>,
        target: &std::path::Path,
        t0: Instant,
    ) -> Result<BackupReport, BackupError> {
        let core = &self.core;
        let lock = core.checkpoint_lock.lock().await;
        tracing::info!(target = %target.display(), "backup: taking the snapshot");
        let (start_seq, bytes, skus) = capture(core, wal).await?;
        // Every record the snapshot reflects was assigned by now.
        let up_to = wal.last_assigned_seq();
        tracing::info!(
            start_seq,
            up_to,
            skus,
            state_bytes = bytes.len(),
            ms = t0.elapsed().as_millis() as u64,
            "backup: snapshot taken, copying"
        );
        let now_ms = core.clock.now_ms();
        let (wal2, target2) = (wal.clone(), target.to_path_buf());
        let written: BackupWritten = tokio::task::spawn_blocking(move || {
            // The backup's log starts at its checkpoint's start, so the SKU history of the
            // records below it must be in the history tree it copies: derive them now, as
            // the next checkpoint would (the source's tree then covers more than its own
            // checkpoint: readers take those seqs from the tree, the log keeps them too).
            let derived = super::history::derive(&wal2, start_seq).map_err(|e| {
                crate::wal::WalError::Backup {
                    path: target2.clone(),
                    reason: format!("deriving the SKU history: {e}"),
                }
            })?;
            tracing::info!(derived, "backup: SKU history derived up to seq {start_seq}");
            wal2.write_backup(&target2, start_seq, &bytes, up_to, now_ms, |line| {
                tracing::info!("{line}")
            })
        })
        .await
        .map_err(|e| BackupError::Failed(format!("backup task: {e}")))?
        .map_err(of_wal)?;
        drop(lock);
        Ok(BackupReport {
            as_of_seq: written.manifest.as_of_seq,
            checkpoint_start_seq: written.manifest.checkpoint_start_seq,
            skus,
            bytes: written.bytes,
            log_records: written.manifest.log_records,
            dir: written.dir,
            duration: t0.elapsed(),
        })
    }
}
