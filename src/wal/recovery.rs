//! Reading the log back: the open-time validation scan (torn-tail handling, gap and
//! corruption detection) and the replay iterator.
//!
//! The rule both share is "never silently skip": a record that fails its CRC, or a seq
//! that is not exactly one more than the previous, stops recovery with
//! `WalError::Corrupt` naming the data directory and seq, because replaying around a
//! hole would silently lose acknowledged inventory changes. The single exception is a
//! damaged *last* record: only the newest write can have been torn by a crash, and it
//! was never acknowledged (acknowledgement follows the flush that would have completed
//! it), so dropping it loses nothing that was promised.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checkpoint;
use super::record;
use super::WalError;

fn storage(op: &'static str) -> impl FnOnce(sled::Error) -> WalError {
    move |source| WalError::Storage { op, source }
}

fn corrupt(dir: &Path, seq: u64, reason: String) -> WalError {
    WalError::Corrupt {
        dir: dir.to_path_buf(),
        seq,
        reason,
    }
}

/// What the open-time scan found, after repairs.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) torn_tail_dropped: Option<u64>,
    pub(crate) stale_records_removed: u64,
    pub(crate) records: u64,
    pub(crate) first_seq: Option<u64>,
    pub(crate) last_seq: Option<u64>,
}

/// Validates the log from `floor` (the checkpoint's start seq, or 1) upwards and
/// repairs the two benign leftovers of a crash: records below `floor` whose truncation
/// was interrupted, and a torn last record.
pub(crate) fn recover_log(log: &sled::Tree, dir: &Path, floor: u64) -> Result<Recovered, WalError> {
    let stale_records_removed = checkpoint::remove_log_below(log, floor)?;
    let mut recovered = scan(log, dir, floor)?;
    recovered.stale_records_removed = stale_records_removed;
    if let Some(seq) = recovered.torn_tail_dropped {
        tracing::warn!(
            dir = %dir.display(),
            seq,
            "WAL: dropping torn last record (failed its checksum; it was never acknowledged)"
        );
        log.remove(record::encode_key(seq))
            .map_err(storage("remove torn tail"))?;
        log.flush()
            .map_err(storage("flush after removing torn tail"))?;
    }
    Ok(recovered)
}

/// Checks every record from `floor`: contiguous seqs starting exactly at `floor`, and
/// a valid header and CRC everywhere except possibly the last record.
fn scan(log: &sled::Tree, dir: &Path, floor: u64) -> Result<Recovered, WalError> {
    let mut out = Recovered::default();
    let mut expected = floor;
    let mut iter = log.range(record::encode_key(floor)..);
    while let Some(item) = iter.next() {
        let (key, value) = item.map_err(storage("scan log"))?;
        let seq = record::decode_key(&key).map_err(|e| {
            corrupt(
                dir,
                expected,
                format!("undecodable key {:02x?}: {e}", &key[..]),
            )
        })?;
        if seq != expected {
            let reason = gap_reason(expected, seq, expected == floor);
            return Err(corrupt(dir, expected, reason));
        }
        if let Err(e) = record::decode_value(seq, &value) {
            if iter.next().is_none() {
                out.torn_tail_dropped = Some(seq);
                break;
            }
            let reason = format!("{e}; it is not the last record, so it is not a torn write");
            return Err(corrupt(dir, seq, reason));
        }
        out.first_seq.get_or_insert(seq);
        out.last_seq = Some(seq);
        out.records += 1;
        expected += 1;
    }
    Ok(out)
}

fn gap_reason(expected: u64, found: u64, at_log_start: bool) -> String {
    if at_log_start {
        format!(
            "log should start at seq {expected} (checkpoint start, or 1 without a checkpoint) \
             but starts at seq {found}: records {expected}..={} are missing",
            found - 1
        )
    } else {
        format!(
            "sequence gap: expected seq {expected}, next record is seq {found}: \
             records {expected}..={} are missing",
            found - 1
        )
    }
}

/// Iterator returned by [`super::Wal::replay_from`]: records in seq order, each
/// re-verified, ending at the durable seq observed when the iterator was created.
///
/// Fused after the first error. Holds its own handle on the sled tree, so it may
/// outlive the borrow of the `Wal` it came from.
pub struct ReplayIter {
    inner: Option<sled::Iter>,
    dir: Arc<PathBuf>,
    expected: u64,
    end: u64,
    pending_error: Option<WalError>,
}

impl ReplayIter {
    /// Replays `from..=end`; `floor` is the lowest seq the log still promises to hold.
    pub(crate) fn new(
        log: &sled::Tree,
        dir: Arc<PathBuf>,
        from: u64,
        end: u64,
        floor: u64,
    ) -> Self {
        let from = from.max(1);
        if from < floor {
            return Self::failed(
                dir,
                WalError::Truncated {
                    requested: from,
                    first_available: floor,
                },
            );
        }
        // Bounded by the durable seq: a batch being applied right now may be visible
        // out of order (sled applies a batch's keys in hash order), and must not look
        // like a gap.
        let inner =
            (from <= end).then(|| log.range(record::encode_key(from)..=record::encode_key(end)));
        Self {
            inner,
            dir,
            expected: from,
            end,
            pending_error: None,
        }
    }

    fn failed(dir: Arc<PathBuf>, error: WalError) -> Self {
        Self {
            inner: None,
            dir,
            expected: 0,
            end: 0,
            pending_error: Some(error),
        }
    }

    fn decode(
        &self,
        item: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<(u64, Vec<u8>), WalError> {
        let (key, value) = item.map_err(storage("replay log"))?;
        let seq = record::decode_key(&key)
            .map_err(|e| corrupt(&self.dir, self.expected, format!("undecodable key: {e}")))?;
        if seq != self.expected {
            let reason = gap_reason(self.expected, seq, false);
            return Err(corrupt(&self.dir, self.expected, reason));
        }
        let payload = record::decode_value(seq, &value)
            .map_err(|e| corrupt(&self.dir, seq, e.to_string()))?;
        Ok((seq, payload.to_vec()))
    }
}

impl Iterator for ReplayIter {
    type Item = Result<(u64, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.pending_error.take() {
            return Some(Err(error));
        }
        let inner = self.inner.as_mut()?;
        let Some(item) = inner.next() else {
            self.inner = None;
            if self.expected <= self.end {
                let reason = format!(
                    "log ends before seq {}, which was acknowledged durable",
                    self.end
                );
                return Some(Err(corrupt(&self.dir, self.expected, reason)));
            }
            return None;
        };
        let decoded = self.decode(item);
        match &decoded {
            Ok(_) => self.expected += 1,
            Err(_) => self.inner = None,
        }
        Some(decoded)
    }
}
