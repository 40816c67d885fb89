//! Online backups: a complete data directory, written while the server keeps running, that
//! `omnistock serve --data-dir`, `check` and `restore` open like any other.
//!
//! A backup holds a checkpoint the engine captured with its ordinary checkpoint code (so
//! whatever state checkpoints carry, backups carry), the log groups from that checkpoint's
//! start seq up to the seq the backup is *as of*, the named subscriptions' positions, the
//! source's identity file, a durable mark and, last, a manifest ([`MANIFEST_FILE`]). The
//! log groups are copied byte for byte (their CRCs included): the checkpoint is fuzzy, so
//! replaying them on top of it is what makes the backup exactly the state after its last
//! record, like a restart after a crash at that point.
//!
//! Crash safety: everything is written into a hidden staging directory beside the target
//! (`.NAME.partial-RANDOM`), fsynced, the manifest written last, and only then renamed onto
//! the target. A crash leaves at most a staging directory without a manifest, which
//! `restore` refuses and the operator deletes; never a target that looks complete.

use std::fs;
use std::path::{Path, PathBuf};

use super::checkpoint;
use super::identity;
use super::record;
use super::{Wal, WalError, LOG_TREE, POSITIONS_TREE};

/// Name of the manifest a complete backup holds (written last, before the rename).
pub const MANIFEST_FILE: &str = "omnistock.backup";

/// Version of the manifest format.
const MANIFEST_FORMAT: u32 = 1;

/// sled page cache of the backup's own database: it is written once, sequentially.
const BACKUP_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// What a finished backup holds, as its manifest says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The backup is the state after this log seq (0: an empty log).
    pub as_of_seq: u64,
    /// Start seq of the checkpoint inside it.
    pub checkpoint_start_seq: u64,
    /// Log records copied after the checkpoint (those at or above its start seq).
    pub log_records: u64,
    /// Bytes of checkpoint state.
    pub state_bytes: u64,
    /// The source directory's identity id.
    pub source_id: String,
    /// When it finished, ms since the Unix epoch (the server's clock).
    pub finished_at_ms: u64,
}

/// Reads `dir/omnistock.backup`: `Ok(None)` when there is none (not a finished backup).
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, WalError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(WalError::Backup {
                path,
                reason: format!("cannot read it: {e}"),
            })
        }
    };
    let m: Manifest = toml::from_str(&text).map_err(|e| WalError::Backup {
        path: path.clone(),
        reason: format!("not a valid backup manifest: {e}"),
    })?;
    if m.format != MANIFEST_FORMAT {
        return Err(WalError::Backup {
            path,
            reason: format!(
                "manifest format {} is not supported (this version knows {MANIFEST_FORMAT})",
                m.format
            ),
        });
    }
    Ok(Some(m))
}

fn refused(target: &Path, reason: impl Into<String>) -> WalError {
    WalError::BackupTarget {
        target: target.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks that `target` may receive a backup of the data directory `source` (a new data
/// directory must be created there): an absolute path of valid UTF-8, whose parent is an
/// existing directory, which does not exist or is an empty directory, and which is neither
/// inside `source` nor contains it. Returns the parent directory. Costs a few `stat`s: the
/// engine calls it before it takes a snapshot, so a refusal costs nothing.
pub fn check_target(target: &Path, source: &Path) -> Result<PathBuf, WalError> {
    if !target.is_absolute() {
        return Err(refused(
            target,
            "the path must be absolute (it is a path on the server's machine)",
        ));
    }
    if target.to_str().is_none() {
        return Err(refused(target, "the path is not valid UTF-8"));
    }
    let (Some(parent), Some(_)) = (target.parent(), target.file_name()) else {
        return Err(refused(
            target,
            "the path has no parent directory or no name",
        ));
    };
    let parent = fs::canonicalize(parent).map_err(|e| {
        refused(
            target,
            format!(
                "its parent directory {} is not usable: {e}",
                parent.display()
            ),
        )
    })?;
    if !parent.is_dir() {
        return Err(refused(target, "its parent is not a directory"));
    }
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refused(target, format!("cannot inspect it: {e}"))),
        Ok(m) if !m.is_dir() => {
            return Err(refused(target, "it exists and is not a directory"));
        }
        Ok(_) => {
            let mut entries = fs::read_dir(target)
                .map_err(|e| refused(target, format!("cannot list it: {e}")))?;
            if entries.next().is_some() {
                return Err(refused(
                    target,
                    "it exists and is not empty (a backup never overwrites)",
                ));
            }
        }
    }
    let source = fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let name = target.file_name().map(PathBuf::from).unwrap_or_default();
    let resolved = parent.join(name);
    if resolved.starts_with(&source) || source.starts_with(&resolved) {
        return Err(refused(
            target,
            format!(
                "it is inside the data directory {} or contains it",
                source.display()
            ),
        ));
    }
    Ok(parent)
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> WalError {
    let path = path.to_path_buf();
    let what = what.to_owned();
    move |e| WalError::Backup {
        path,
        reason: format!("{what}: {e}"),
    }
}

fn sled_io(path: &Path, what: &'static str) -> impl FnOnce(sled::Error) -> WalError {
    let path = path.to_path_buf();
    move |e| WalError::Backup {
        path,
        reason: format!("{what}: {e}"),
    }
}

/// fsyncs every regular file under `dir` and every directory, bottom up: sled's own flush
/// covers its data, this covers the small files and the directory entries.
fn sync_tree(dir: &Path) -> Result<(), WalError> {
    for entry in fs::read_dir(dir).map_err(io(dir, "list the staging directory"))? {
        let entry = entry.map_err(io(dir, "list the staging directory"))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path, "inspect"))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path, "fsync"))?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync the directory"))
}

/// What [`Wal::write_backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupWritten {
    /// The manifest of the finished backup.
    pub manifest: Manifest,
    /// Bytes of the finished backup directory on disk (all its files).
    pub bytes: u64,
    /// Where it is (the target).
    pub dir: PathBuf,
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

impl Wal {
    /// Writes a backup of this log into the new directory `target`: `state` as its
    /// checkpoint starting at `start_seq`, the log records from `start_seq` up to at least
    /// `up_to` (whole groups: the last one copied may end a little later; the manifest says
    /// where), the stored feed positions (none above the backup's last seq), the identity
    /// file, a durable mark and the manifest. See the module documentation for the staging
    /// directory and the rename.
    ///
    /// `up_to` must cover every record `state` reflects (the engine passes the last seq
    /// assigned once its snapshot was complete). The caller must keep checkpoints from
    /// truncating the log during the copy (the engine holds its checkpoint lock); the WAL's
    /// own checkpoint lock is held too. Blocking: run it on a blocking thread. `progress` is
    /// called with a line for the server log at each step.
    pub fn write_backup(
        &self,
        target: &Path,
        start_seq: u64,
        state: &[u8],
        up_to: u64,
        finished_at_ms: u64,
        mut progress: impl FnMut(&str),
    ) -> Result<BackupWritten, WalError> {
        let parent = check_target(target, &self.dir)?;
        let _no_truncation = self.checkpoint_lock.lock();
        let floor = self.replay_floor.load(std::sync::atomic::Ordering::Acquire);
        if start_seq < floor || start_seq > up_to.saturating_add(1) {
            return Err(WalError::InvalidArgument(format!(
                "backup start seq {start_seq} must be in {floor}..={}",
                up_to.saturating_add(1)
            )));
        }
        let source_id =
            identity::read(&self.dir)?
                .map(|i| i.id)
                .ok_or_else(|| WalError::Backup {
                    path: self.dir.join(identity::IDENTITY_FILE),
                    reason: "the source directory has no identity file".into(),
                })?;
        // Records the state reflects must be durable before a backup claims them.
        if up_to > 0 {
            self.shared.wait_durable_blocking(up_to)?;
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(".{name}.partial-{:016x}", rand::random::<u64>()));
        fs::create_dir(&staging).map_err(io(&staging, "create the staging directory"))?;
        progress(&format!("backup: writing into {}", staging.display()));
        let result = self.fill_staging(
            &staging,
            start_seq,
            state,
            up_to,
            source_id,
            finished_at_ms,
            &mut progress,
        );
        let manifest = match result {
            Ok(m) => m,
            Err(e) => {
                // A failed backup leaves nothing behind (best effort: the manifest is
                // missing anyway, so what a failed removal leaves is refused by restore).
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // rename(2) replaces an empty directory atomically; a non-empty one (created since
        // the check) makes it fail, and the staging directory is removed.
        if let Err(e) = fs::rename(&staging, target) {
            let _ = fs::remove_dir_all(&staging);
            return Err(io(target, "rename the staging directory onto the target")(
                e,
            ));
        }
        fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io(&parent, "fsync the parent directory"))?;
        let bytes = dir_bytes(target);
        progress(&format!(
            "backup: done, as of seq {}, {bytes} bytes in {}",
            manifest.as_of_seq,
            target.display()
        ));
        Ok(BackupWritten {
            manifest,
            bytes,
            dir: target.to_path_buf(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_staging(
        &self,
        staging: &Path,
        start_seq: u64,
        state: &[u8],
        up_to: u64,
        source_id: String,
        finished_at_ms: u64,
        progress: &mut impl FnMut(&str),
    ) -> Result<Manifest, WalError> {
        // No background flusher: the one flush below is explicit, and without the thread
        // the database (and its lock) is gone as soon as it is dropped, so `check` can open
        // the finished backup at once.
        let db = sled::Config::new()
            .path(staging)
            .cache_capacity(BACKUP_CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(sled_io(staging, "create the backup database"))?;
        let out_log = db
            .open_tree(LOG_TREE)
            .map_err(sled_io(staging, "open the log tree"))?;
        let out_cp = db
            .open_tree(super::CHECKPOINT_TREE)
            .map_err(sled_io(staging, "open the checkpoint tree"))?;
        let out_pos = db
            .open_tree(POSITIONS_TREE)
            .map_err(sled_io(staging, "open the positions tree"))?;
        let out_history = db
            .open_tree(super::history::HISTORY_TREE)
            .map_err(sled_io(staging, "open the history tree"))?;
        checkpoint::write(
            &out_cp,
            staging,
            start_seq,
            state,
            self.config.checkpoint_chunk_bytes,
        )?;
        progress(&format!(
            "backup: checkpoint written ({} bytes, starts at seq {start_seq})",
            state.len()
        ));
        // The durable SKU history, as it is: its events and markers. The engine derived
        // it up to `start_seq` first (where this backup's log begins); no checkpoint derives
        // or prunes meanwhile: the caller holds the checkpoint lock.
        let floor = self.replay_floor.load(std::sync::atomic::Ordering::Acquire);
        let marks = super::history::marks(&self.history, floor)?;
        if marks.upto < start_seq {
            return Err(WalError::InvalidArgument(format!(
                "the history is derived below seq {} only; a backup from seq {start_seq} needs it up to there",
                marks.upto
            )));
        }
        let mut events = 0u64;
        for item in self.history.iter() {
            let (key, value) = item.map_err(super::storage("read history for backup"))?;
            out_history
                .insert(key, value)
                .map_err(sled_io(staging, "write a history event"))?;
            events += 1;
            if events.is_multiple_of(100_000) {
                progress(&format!("backup: {events} history entries copied"));
            }
        }
        progress(&format!(
            "backup: history copied ({events} entries, derived below seq {})",
            marks.upto
        ));
        // The group holding `start_seq` may begin below it (truncation keeps whole groups);
        // replay skips its earlier records, as in the source.
        let from = match self
            .log
            .range(..=record::encode_key(start_seq))
            .next_back()
            .transpose()
            .map_err(super::storage("scan log for backup"))?
        {
            Some((key, _)) => record::decode_key(&key).unwrap_or(start_seq),
            None => start_seq,
        };
        let mut last = start_seq.saturating_sub(1);
        let mut groups = 0u64;
        for item in self.log.range(record::encode_key(from)..) {
            let (key, value) = item.map_err(super::storage("read log for backup"))?;
            let first = record::decode_key(&key).map_err(|e| WalError::Corrupt {
                dir: self.dir.to_path_buf(),
                seq: from,
                reason: e.to_string(),
            })?;
            if first > up_to {
                break;
            }
            let count = record::peek_count(&value).map_or(1, u64::from);
            let end = first + count - 1;
            if end < start_seq {
                continue;
            }
            out_log
                .insert(key, value)
                .map_err(sled_io(staging, "write a log group"))?;
            last = last.max(end);
            groups += 1;
            if groups.is_multiple_of(1024) {
                progress(&format!("backup: {groups} log groups copied (seq {end})"));
            }
        }
        // The last group copied may hold records past `up_to`: they are in sled, so they
        // were appended; they are in the backup only once durable.
        if last > up_to {
            self.shared.wait_durable_blocking(last)?;
        }
        let as_of = last;
        for (name, seq) in self.positions()? {
            // A position past the backup's end would skip records a server started on the
            // backup logs under the same seqs later.
            out_pos
                .insert(name.as_bytes(), &seq.min(as_of).to_le_bytes())
                .map_err(sled_io(staging, "write a feed position"))?;
        }
        db.flush()
            .map_err(sled_io(staging, "flush the backup database"))?;
        drop((out_log, out_cp, out_pos, out_history, db));
        progress(&format!(
            "backup: {} log records copied in {groups} groups (as of seq {as_of})",
            as_of + 1 - start_seq
        ));
        identity::write_copy(staging, &source_id)?;
        identity::write_durable_mark(staging, as_of)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            as_of_seq: as_of,
            checkpoint_start_seq: start_seq,
            log_records: as_of + 1 - start_seq,
            state_bytes: state.len() as u64,
            source_id,
            finished_at_ms,
        };
        sync_tree(staging)?;
        let text = toml::to_string(&manifest).map_err(|e| WalError::Backup {
            path: staging.join(MANIFEST_FILE),
            reason: e.to_string(),
        })?;
        identity::write_atomically(
            staging,
            MANIFEST_FILE,
            &format!("# omnistock backup: complete (written last)\n{text}"),
        )?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalConfig;

    fn payload(seq: u64) -> Vec<u8> {
        format!("record-{seq}").into_bytes()
    }

    /// A log of 100 records in groups of at most 8 (one batch each: appended one by one and
    /// waited for), a position above and one below the backup's end.
    fn source(dir: &Path) -> Wal {
        let mut cfg = WalConfig::new(dir);
        cfg.max_group_records = 8;
        let wal = Wal::open(cfg).expect("open");
        for chunk in 0..25 {
            let mut last = 0;
            for i in 0..4 {
                last = wal.append(payload(chunk * 4 + i + 1)).expect("append");
            }
            wal.wait_durable_blocking(last).expect("durable");
        }
        wal.store_position("low", 10).expect("position");
        wal.store_position("high", 100).expect("position");
        wal
    }

    #[test]
    fn a_backup_holds_the_state_and_the_records_from_its_start_to_its_end() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wal = source(&tmp.path().join("src"));
        // As the engine does before a backup: the history derived up to its start.
        wal.mark_history(1, 42).expect("mark");
        let target = tmp.path().join("bak");
        // Start inside a group (groups of 4 start at 1, 5, 9, ...): 42 is in 41..=44.
        let written = wal
            .write_backup(&target, 42, b"state", 60, 7, |_| {})
            .expect("backup");
        let m = &written.manifest;
        // Whole groups: the one holding 60 (57..=60) ends at 60.
        assert_eq!((m.checkpoint_start_seq, m.as_of_seq), (42, 60));
        assert_eq!(m.log_records, 19);
        assert_eq!(m.state_bytes, 5);
        assert_eq!(m.finished_at_ms, 7);
        assert_eq!(read_manifest(&target).expect("read"), Some(m.clone()));
        let source_id = identity::read(&tmp.path().join("src"))
            .expect("id")
            .expect("some");
        assert_eq!(m.source_id, source_id.id);
        drop(wal);

        let backup = Wal::open(WalConfig::new(&target)).expect("the backup opens as a log");
        let cp = backup
            .latest_checkpoint()
            .expect("read")
            .expect("a checkpoint");
        assert_eq!((cp.start_seq, cp.state.as_slice()), (42, &b"state"[..]));
        let records: Vec<_> = backup
            .replay_from(42)
            .collect::<Result<Vec<_>, _>>()
            .expect("replay");
        let want: Vec<_> = (42..=60).map(|s| (s, payload(s))).collect();
        assert_eq!(records, want);
        assert_eq!(
            backup.last_assigned_seq(),
            60,
            "appends continue after the end"
        );
        let mut positions = backup.positions().expect("positions");
        positions.sort();
        // A position past the backup's end is lowered to it.
        assert_eq!(
            positions,
            [("high".to_string(), 60), ("low".to_string(), 10)]
        );
        assert_eq!(identity::read(&target).expect("id"), Some(source_id));
        assert!(staging_leftovers(tmp.path()).is_empty());
    }

    /// postmortem: backups first had no history tree: a server restored from one had lost
    /// every SKU event below the backup's start (in the tree, or derived for it).
    #[test]
    fn a_backup_holds_the_history_tree_and_refuses_a_history_short_of_its_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wal = source(&tmp.path().join("src"));
        let item = |seq: u64| crate::wal::HistoryItem {
            sku: "A".into(),
            seq,
            index: 0,
            at_ms: seq * 10,
            body: payload(seq),
        };
        wal.put_history(&[item(3), item(11)]).expect("put");
        wal.mark_history(1, 20).expect("mark");
        let e = wal
            .write_backup(&tmp.path().join("short"), 42, b"state", 60, 7, |_| {})
            .expect_err("history derived below 20 only");
        assert!(e.to_string().contains("history"), "{e}");
        // What the engine derives for a backup from 42: the events of records below 42.
        wal.put_history(&[item(30)]).expect("put");
        wal.mark_history(1, 42).expect("mark");
        let target = tmp.path().join("bak");
        wal.write_backup(&target, 42, b"state", 60, 7, |_| {})
            .expect("backup");
        drop(wal);

        let backup = Wal::open(WalConfig::new(&target)).expect("the backup opens as a log");
        let marks = backup.history_marks().expect("marks");
        assert_eq!((marks.base, marks.upto), (1, 42));
        let items = backup.history_page("A", (0, 0), 42, 10).expect("page");
        assert_eq!(items, vec![item(3), item(11), item(30)]);
    }

    fn staging_leftovers(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .map(|e| e.path())
            .collect()
    }

    #[test]
    fn targets_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        let wal = source(&src);
        let full = tmp.path().join("full");
        fs::create_dir(&full).expect("mkdir");
        fs::write(full.join("keep"), b"x").expect("write");
        for bad in [
            PathBuf::from("relative"),
            full.clone(),
            full.join("keep"),
            tmp.path().join("missing/parent"),
            src.clone(),
            src.join("inside"),
            tmp.path().to_path_buf(),
            PathBuf::from("/"),
        ] {
            let e = wal
                .write_backup(&bad, 42, b"s", 60, 0, |_| {})
                .expect_err("refused");
            assert!(matches!(e, WalError::BackupTarget { .. }), "{bad:?}: {e}");
        }
        assert_eq!(fs::read(full.join("keep")).expect("kept"), b"x");
        // Bounds: below the log's floor is fine only from 1; beyond the end is refused.
        let e = wal
            .write_backup(&tmp.path().join("b"), 70, b"s", 60, 0, |_| {})
            .expect_err("start after the end");
        assert!(matches!(e, WalError::InvalidArgument(_)), "{e}");
        assert!(staging_leftovers(tmp.path()).is_empty());
        assert!(!tmp.path().join("b").exists());
    }
}
