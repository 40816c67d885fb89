//! Checkpoint storage in the sled tree `checkpoint`, and the removals that follow a
//! checkpoint (old log groups, old checkpoint chunks).
//!
//! A checkpoint is written as chunks keyed `[b'C'][id: u64 BE][index: u32 BE]` and then
//! one header under the fixed key `b"H"` naming the id, start seq, length, chunk count
//! and whole-state CRC. The header is inserted only after the chunks are flushed, and a
//! single-key insert is atomic in sled, so a crash at any point leaves either the old
//! header (pointing at old chunks, which are deleted only after the new header is
//! flushed) or the new one: never a header pointing at missing chunks. Chunks keep each
//! sled value at most [`super::CHECKPOINT_CHUNK_BYTES`], because sled holds a whole
//! value in memory and rewrites it as one blob. Removals are single-key deletes, not
//! batches: sled's `apply_batch` holds a process-wide write lock that would stall the
//! WAL writer for the whole removal.

use std::path::Path;

use super::record;
use super::WalError;

/// Key of the single header record naming the current checkpoint.
pub(crate) const HEADER_KEY: &[u8] = b"H";
/// First byte of every chunk key; sorts before `H`, so chunks form one prefix range.
const CHUNK_PREFIX: u8 = b'C';
/// Version byte at the start of the header value.
const HEADER_VERSION: u8 = 1;
/// Encoded header: version, id, start seq, total length, chunk count, state CRC, header CRC.
const HEADER_LEN: usize = 1 + 8 + 8 + 8 + 4 + 4 + 4;
/// Chunk key: prefix, checkpoint id, chunk index.
const CHUNK_KEY_LEN: usize = 1 + 8 + 4;

/// A recovered checkpoint: the state bytes exactly as the engine passed them to
/// [`super::Wal::write_checkpoint`], and the seq replay must start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record with a lower seq is reflected in `state`; replay from here.
    pub start_seq: u64,
    /// The opaque snapshot bytes.
    pub state: Vec<u8>,
}

/// The header record describing the current checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) start_seq: u64,
    pub(crate) total_len: u64,
    pub(crate) chunk_count: u32,
    pub(crate) state_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = HEADER_VERSION;
        out[1..9].copy_from_slice(&self.id.to_le_bytes());
        out[9..17].copy_from_slice(&self.start_seq.to_le_bytes());
        out[17..25].copy_from_slice(&self.total_len.to_le_bytes());
        out[25..29].copy_from_slice(&self.chunk_count.to_le_bytes());
        out[29..33].copy_from_slice(&self.state_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[..33]);
        out[33..37].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let bytes: &[u8; HEADER_LEN] = bytes
            .try_into()
            .map_err(|_| format!("header is {} bytes, expected {HEADER_LEN}", bytes.len()))?;
        if bytes[0] != HEADER_VERSION {
            return Err(format!("unknown header version {}", bytes[0]));
        }
        let stored_crc = u32_at(bytes, 33);
        let computed_crc = crc32fast::hash(&bytes[..33]);
        if stored_crc != computed_crc {
            return Err(format!(
                "header CRC mismatch: stored {stored_crc:#010x}, computed {computed_crc:#010x}"
            ));
        }
        Ok(Self {
            id: u64_at(bytes, 1),
            start_seq: u64_at(bytes, 9),
            total_len: u64_at(bytes, 17),
            chunk_count: u32_at(bytes, 25),
            state_crc: u32_at(bytes, 29),
        })
    }
}

fn u64_at(bytes: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn u32_at(bytes: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

pub(crate) fn chunk_key(id: u64, index: u32) -> [u8; CHUNK_KEY_LEN] {
    let mut key = [0u8; CHUNK_KEY_LEN];
    key[0] = CHUNK_PREFIX;
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..13].copy_from_slice(&index.to_be_bytes());
    key
}

fn chunk_id(key: &[u8]) -> Option<u64> {
    let raw: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

fn storage(op: &'static str) -> impl FnOnce(sled::Error) -> WalError {
    move |source| WalError::Storage { op, source }
}

fn corrupt(dir: &Path, reason: String) -> WalError {
    WalError::CorruptCheckpoint {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Reads and verifies the current header, if a checkpoint has ever completed.
pub(crate) fn read_header(tree: &sled::Tree, dir: &Path) -> Result<Option<Header>, WalError> {
    let Some(raw) = tree
        .get(HEADER_KEY)
        .map_err(storage("read checkpoint header"))?
    else {
        return Ok(None);
    };
    Header::decode(&raw)
        .map(Some)
        .map_err(|reason| corrupt(dir, reason))
}

/// Reassembles the state `header` describes and checks its length and CRC.
pub(crate) fn read_state(
    tree: &sled::Tree,
    dir: &Path,
    header: &Header,
) -> Result<Checkpoint, WalError> {
    let total_len = usize::try_from(header.total_len)
        .map_err(|_| corrupt(dir, format!("state length {} too large", header.total_len)))?;
    let mut state = Vec::with_capacity(total_len);
    for index in 0..header.chunk_count {
        let chunk = tree
            .get(chunk_key(header.id, index))
            .map_err(storage("read checkpoint chunk"))?
            .ok_or_else(|| {
                corrupt(
                    dir,
                    format!(
                        "checkpoint {} chunk {index} of {} is missing",
                        header.id, header.chunk_count
                    ),
                )
            })?;
        state.extend_from_slice(&chunk);
    }
    if state.len() != total_len {
        let reason = format!(
            "checkpoint {} has {} bytes, header says {total_len}",
            header.id,
            state.len()
        );
        return Err(corrupt(dir, reason));
    }
    let crc = crc32fast::hash(&state);
    if crc != header.state_crc {
        let reason = format!(
            "checkpoint {} state CRC mismatch: stored {:#010x}, computed {crc:#010x}",
            header.id, header.state_crc
        );
        return Err(corrupt(dir, reason));
    }
    Ok(Checkpoint {
        start_seq: header.start_seq,
        state,
    })
}

/// An id above both the current header's and any chunk's (including orphans left by
/// a crash mid-checkpoint), so new chunks never mix with old ones.
fn next_id(tree: &sled::Tree, current: Option<&Header>) -> Result<u64, WalError> {
    let last_chunk = tree
        .scan_prefix([CHUNK_PREFIX])
        .keys()
        .next_back()
        .transpose()
        .map_err(storage("scan checkpoint chunks"))?;
    let max_chunk_id = last_chunk.as_deref().and_then(chunk_id).unwrap_or(0);
    let header_id = current.map_or(0, |h| h.id);
    Ok(max_chunk_id.max(header_id) + 1)
}

/// Writes `state` as a new checkpoint starting at `start_seq`: chunks, flush, header,
/// flush. Returns the new header; old chunks are still present afterwards.
pub(crate) fn write(
    tree: &sled::Tree,
    dir: &Path,
    start_seq: u64,
    state: &[u8],
    chunk_bytes: usize,
) -> Result<Header, WalError> {
    let current = read_header(tree, dir)?;
    let id = next_id(tree, current.as_ref())?;
    let mut chunk_count = 0u32;
    for chunk in state.chunks(chunk_bytes) {
        tree.insert(chunk_key(id, chunk_count), chunk)
            .map_err(storage("write checkpoint chunk"))?;
        chunk_count = chunk_count
            .checked_add(1)
            .ok_or_else(|| WalError::InvalidArgument("checkpoint has too many chunks".into()))?;
    }
    // Chunks must be on disk before a header can point at them.
    tree.flush().map_err(storage("flush checkpoint chunks"))?;
    let header = Header {
        id,
        start_seq,
        total_len: state.len() as u64,
        chunk_count,
        state_crc: crc32fast::hash(state),
    };
    tree.insert(HEADER_KEY, &header.encode()[..])
        .map_err(storage("write checkpoint header"))?;
    tree.flush().map_err(storage("flush checkpoint header"))?;
    Ok(header)
}

/// Removes every chunk not belonging to checkpoint `keep_id`: the previous checkpoint
/// and orphans from one that crashed before its header was written.
pub(crate) fn remove_chunks_except(tree: &sled::Tree, keep_id: u64) -> Result<u64, WalError> {
    let mut removed = 0u64;
    for key in tree.scan_prefix([CHUNK_PREFIX]).keys() {
        let key = key.map_err(storage("scan checkpoint chunks"))?;
        if chunk_id(&key) != Some(keep_id) {
            tree.remove(key)
                .map_err(storage("remove old checkpoint chunk"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes log groups whose records all have seqs below `below_seq`, lowest first, and
/// returns how many records they held. A group straddling `below_seq` stays: groups are
/// never rewritten, and replay skips the records in it below its start seq.
///
/// One `remove` per key rather than `apply_batch`: a sled batch holds a process-wide
/// write lock for its whole duration (measured ~26 ms per 4096 removals here), which
/// would stall the WAL writer's own `apply_batch`; single removes only take that lock
/// shared, so truncating a large log never blocks appends for more than one removal.
/// Atomicity is not needed: whatever a crash leaves below the checkpoint's start seq is
/// removed again at the next open.
pub(crate) fn remove_log_below(log: &sled::Tree, below_seq: u64) -> Result<u64, WalError> {
    // Groups are contiguous, so every group below `below_seq` except the last one ends
    // before the next group's first seq, i.e. below `below_seq`; only the last one can
    // straddle, and not even that one if a group starts exactly at `below_seq`.
    let boundary_group = log
        .contains_key(record::encode_key(below_seq))
        .map_err(storage("scan log for truncation"))?;
    let mut removed = 0u64;
    let mut groups = log.range(..record::encode_key(below_seq)).peekable();
    while let Some(item) = groups.next() {
        let (key, value) = item.map_err(storage("scan log for truncation"))?;
        let is_last = groups.peek().is_none();
        if is_last && !boundary_group && may_straddle(&key, &value, below_seq) {
            break;
        }
        log.remove(&key).map_err(storage("truncate log"))?;
        removed += record::peek_count(&value).map_or(1, u64::from);
    }
    Ok(removed)
}

/// Whether the group stored as (`key`, `value`) may hold seqs at or above `seq`. An
/// undecodable group is kept (answer `true`): recovery then reports it, rather than
/// truncation silently deleting records that might still be needed.
fn may_straddle(key: &[u8], value: &[u8], seq: u64) -> bool {
    match (record::decode_key(key), record::peek_count(value)) {
        (Ok(first), Some(count)) => first.saturating_add(u64::from(count)) > seq,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = Header {
            id: 3,
            start_seq: 1_000,
            total_len: 5_000_000,
            chunk_count: 5,
            state_crc: 0xAABB_CCDD,
        };
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes), Ok(header));
        let mut damaged = bytes;
        damaged[10] ^= 0x40;
        assert!(Header::decode(&damaged)
            .expect_err("flipped bit must be caught")
            .contains("CRC"));
        assert!(Header::decode(&bytes[..20]).is_err());
    }

    #[test]
    fn chunk_keys_sort_by_id_then_index_and_below_header() {
        assert!(chunk_key(1, 9) < chunk_key(2, 0));
        assert!(chunk_key(2, 0) < chunk_key(2, 1));
        assert!(chunk_key(u64::MAX, u32::MAX)[..] < *HEADER_KEY);
        assert_eq!(chunk_id(&chunk_key(42, 7)), Some(42));
    }
}
