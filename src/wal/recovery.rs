//! Reading the log back: the open-time validation scan (torn-tail handling, gap and
//! corruption detection) and the replay iterator.
//!
//! The log is a chain of groups (see [`super::record`]): each group's first seq must be
//! exactly the previous group's first seq plus its record count. The rule both readers
//! share is "never silently skip": a group that fails its checks, or a group that does
//! not continue the chain, stops recovery with `WalError::Corrupt` naming the data
//! directory and the group's first seq (or the first missing seq), because replaying
//! around a hole would silently lose acknowledged inventory changes. The single
//! exception is a damaged *last* group: only the newest write can have been torn by a
//! crash, and none of its records was acknowledged (acknowledgement follows the flush
//! that would have completed it), so dropping it loses nothing that was promised.
//!
//! A seq to start from (the checkpoint's start seq, or a `replay_from` argument) may
//! fall inside a group, because truncation removes whole groups only; both readers
//! therefore start at the group *containing* that seq and skip its earlier records.

use std::collections::VecDeque;
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

impl Recovered {
    /// Counts the records of a valid group (`first`, `count`) at or above `floor`.
    fn count_group(&mut self, first: u64, count: u64, floor: u64) {
        let last = first + count - 1;
        if last < floor {
            return;
        }
        let lowest = first.max(floor);
        self.first_seq.get_or_insert(lowest);
        self.last_seq = Some(last);
        self.records += last - lowest + 1;
    }
}

/// Validates the log from `floor` (the checkpoint's start seq, or 1) upwards and
/// repairs the two benign leftovers of a crash: groups below `floor` whose truncation
/// was interrupted, and a torn last group.
pub(crate) fn recover_log(log: &sled::Tree, dir: &Path, floor: u64) -> Result<Recovered, WalError> {
    let stale_records_removed = checkpoint::remove_log_below(log, floor)?;
    let mut recovered = scan(log, dir, floor)?;
    recovered.stale_records_removed = stale_records_removed;
    if let Some(seq) = recovered.torn_tail_dropped {
        tracing::warn!(
            dir = %dir.display(),
            seq,
            "WAL: dropping torn last group (failed its checks; it was never acknowledged)"
        );
        log.remove(record::encode_key(seq))
            .map_err(storage("remove torn tail"))?;
        log.flush()
            .map_err(storage("flush after removing torn tail"))?;
    }
    Ok(recovered)
}

/// Key to start a range scan at so that the group holding `seq` is included: the
/// greatest key <= `seq`, or `seq` itself when there is none (the log starts later,
/// which the chain check then reports).
fn group_start_key(log: &sled::Tree, seq: u64) -> Result<sled::IVec, WalError> {
    let at_or_below = log
        .range(..=record::encode_key(seq))
        .keys()
        .next_back()
        .transpose()
        .map_err(storage("find group holding seq"))?;
    Ok(at_or_below.unwrap_or_else(|| sled::IVec::from(&record::encode_key(seq)[..])))
}

/// Checks that a group starting at `first` continues the chain: it starts exactly at
/// `next_first` (the previous group's end), or, for the first group read, at or below
/// `start` (the seq reading began at). `at_log_start` only picks the wording.
fn check_chain(
    dir: &Path,
    first: u64,
    next_first: Option<u64>,
    start: u64,
    at_log_start: bool,
) -> Result<(), WalError> {
    match next_first {
        Some(expected) if first != expected => {
            Err(corrupt(dir, expected, gap_reason(expected, first, false)))
        }
        None if first > start => Err(corrupt(dir, start, gap_reason(start, first, at_log_start))),
        _ => Ok(()),
    }
}

/// Decodes the key of a stored group; `expected` names the error's position.
fn group_first_seq(dir: &Path, key: &[u8], expected: u64) -> Result<u64, WalError> {
    record::decode_key(key)
        .map_err(|e| corrupt(dir, expected, format!("undecodable key {:02x?}: {e}", key)))
}

/// Checks every group from the one holding `floor`: a contiguous chain reaching down to
/// `floor`, and valid groups everywhere except possibly the last one.
fn scan(log: &sled::Tree, dir: &Path, floor: u64) -> Result<Recovered, WalError> {
    let mut out = Recovered::default();
    let mut next_first: Option<u64> = None;
    let mut iter = log.range(group_start_key(log, floor)?..);
    while let Some(item) = iter.next() {
        let (key, value) = item.map_err(storage("scan log"))?;
        let first = group_first_seq(dir, &key, next_first.unwrap_or(floor))?;
        check_chain(dir, first, next_first, floor, true)?;
        let count = match record::decode_group(first, &value) {
            Ok(payloads) => payloads.len() as u64,
            Err(e) => {
                if iter.next().is_none() {
                    out.torn_tail_dropped = Some(first);
                    break;
                }
                let reason = format!("{e}; it is not the last group, so it is not a torn write");
                return Err(corrupt(dir, first, reason));
            }
        };
        out.count_group(first, count, floor);
        // Cannot overflow: decode_group checked that first + count fits.
        next_first = Some(first + count);
    }
    Ok(out)
}

fn gap_reason(expected: u64, found: u64, at_log_start: bool) -> String {
    if found < expected {
        format!(
            "groups overlap: expected a group starting at seq {expected}, \
             next group starts at seq {found}"
        )
    } else if at_log_start {
        format!(
            "log should start at seq {expected} (checkpoint start, or 1 without a checkpoint) \
             but starts at seq {found}: records {expected}..={} are missing",
            found - 1
        )
    } else {
        format!(
            "sequence gap: expected seq {expected}, next group starts at seq {found}: \
             records {expected}..={} are missing",
            found - 1
        )
    }
}

/// Iterator returned by [`super::Wal::replay_from`]: records in seq order, each group
/// re-verified when it is reached, ending at the durable seq observed when the
/// iterator was created.
///
/// Fused after the first error. Holds its own handle on the sled tree, so it may
/// outlive the borrow of the `Wal` it came from.
pub struct ReplayIter {
    inner: Option<sled::Iter>,
    dir: Arc<PathBuf>,
    /// Next seq to yield.
    expected: u64,
    /// First seq the next group must have; `None` until the first group is read, which
    /// may start below `expected` (replay can begin inside a group).
    next_first: Option<u64>,
    end: u64,
    /// Decoded records of the current group that are still to be yielded.
    buffered: VecDeque<(u64, Vec<u8>)>,
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
            let error = WalError::Truncated {
                requested: from,
                first_available: floor,
            };
            return Self::failed(dir, error);
        }
        let mut iter = Self {
            inner: None,
            dir,
            expected: from,
            next_first: None,
            end,
            buffered: VecDeque::new(),
            pending_error: None,
        };
        if from <= end {
            // Bounded by the durable seq: a batch being applied right now may be visible
            // out of order (sled applies a batch's keys in hash order), and must not look
            // like a gap. Groups never straddle batches, so no group crosses `end`.
            match group_start_key(log, from) {
                Ok(start) => {
                    let end_key = sled::IVec::from(&record::encode_key(end)[..]);
                    iter.inner = Some(log.range(start..=end_key));
                }
                Err(error) => iter.pending_error = Some(error),
            }
        }
        iter
    }

    fn failed(dir: Arc<PathBuf>, error: WalError) -> Self {
        Self {
            inner: None,
            dir,
            expected: 0,
            next_first: None,
            end: 0,
            buffered: VecDeque::new(),
            pending_error: Some(error),
        }
    }

    /// Verifies the next group and buffers its records in `expected..=end`.
    fn load_group(&mut self, item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(), WalError> {
        let (key, value) = item.map_err(storage("replay log"))?;
        let want = self.next_first.unwrap_or(self.expected);
        let first = group_first_seq(&self.dir, &key, want)?;
        check_chain(&self.dir, first, self.next_first, self.expected, false)?;
        let payloads = record::decode_group(first, &value)
            .map_err(|e| corrupt(&self.dir, first, e.to_string()))?;
        let count = payloads.len() as u64;
        for (seq, payload) in (first..).zip(payloads) {
            if seq >= self.expected && seq <= self.end {
                self.buffered.push_back((seq, payload.to_vec()));
            }
        }
        // Cannot overflow: decode_group checked that first + count fits.
        self.next_first = Some(first + count);
        self.expected = self.expected.max(first + count);
        Ok(())
    }
}

impl Iterator for ReplayIter {
    type Item = Result<(u64, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.pending_error.take() {
            return Some(Err(error));
        }
        loop {
            if let Some(record) = self.buffered.pop_front() {
                return Some(Ok(record));
            }
            let inner = self.inner.as_mut()?;
            let item = match super::guard::guarded(|| inner.next()) {
                Ok(item) => item,
                Err(panic) => {
                    self.inner = None;
                    let doing = "replaying the log";
                    return Some(Err(super::sled_panicked(&self.dir, doing, panic)));
                }
            };
            let Some(item) = item else {
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
            if let Err(error) = self.load_group(item) {
                self.inner = None;
                return Some(Err(super::name_corrupt_file(&self.dir, error)));
            }
        }
    }
}
