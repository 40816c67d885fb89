//! The durable SKU history in the sled tree `history`: one key per event, so a SKU's
//! history outlives the log records it was derived from (a checkpoint truncates those).
//!
//! The WAL still does not decode payloads: the engine derives the items from log records
//! at checkpoint time and hands them over as (SKU id, seq, index, time, opaque body); this
//! module only orders, checks and prunes them. Key `[sku_len: u8][sku bytes][seq: u64
//! BE][index: u16 BE]` (a SKU id is 1..=64 bytes), so one SKU's events are one contiguous
//! range in (seq, index) order and a page is one range scan. Value `[version: u8 = 1]
//! [at_ms: u64 LE][crc32: u32 LE][body]`, the CRC over the key, `at_ms` (LE) and the body,
//! so a damaged value is reported ([`WalError::Corrupt`]), never decoded wrongly, and a
//! value moved under another key fails too. `at_ms` sits outside the body so that
//! retention by age can be enforced without decoding it.
//!
//! Two marker keys start with byte 0 (no SKU key does): `upto`, the seq below which every
//! log record's events are in the tree (written *after* the items it covers are flushed,
//! and before the log below it is truncated), and `base`, the first seq the tree has ever
//! covered (1 for a directory created with history; the checkpoint start for a directory
//! upgraded from a binary without it). Readers take items below `upto` from here and the
//! rest from the log, so an item a crashed derivation wrote at or above `upto` is never
//! read twice: the next derivation writes the same key with the same bytes again.
//!
//! Writes and removals are single-key operations, not `apply_batch`: a sled batch takes the
//! process-wide lock the WAL writer needs (see `checkpoint::remove_log_below`).
//!
//! Every value is small, under 4 KiB (so sled keeps it inside its segments, never as a
//! blob file): an event's body is bounded by the domain limits, at most 64 allocations of
//! a 32-byte location id and a 128-byte reference, under 3 KiB with the header.

use std::ops::Bound;
use std::path::Path;

use super::WalError;

/// Name of the sled tree.
pub(crate) const HISTORY_TREE: &str = "history";
/// Marker: every log record below this seq has its events in the tree.
const UPTO_KEY: &[u8] = b"\0upto";
/// Marker: the first seq the tree covers.
const BASE_KEY: &[u8] = b"\0base";
/// Version byte of a value.
const VALUE_VERSION: u8 = 1;
/// Version, `at_ms`, CRC.
const VALUE_HEADER: usize = 1 + 8 + 4;
/// Longest SKU id the key layout takes (the domain allows 64 bytes).
pub const MAX_SKU_BYTES: usize = 255;

/// One event of one SKU as the history tree stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The SKU id's bytes (1..=255; the engine's ids are at most 64).
    pub sku: String,
    /// Log seq of the record the event came from.
    pub seq: u64,
    /// Position of the event among that record's events of this SKU.
    pub index: u16,
    /// When the record was accepted (Unix ms); retention by age reads it.
    pub at_ms: u64,
    /// The engine's encoding of the event (opaque here).
    pub body: Vec<u8>,
}

/// The two markers (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryMarks {
    /// First seq the history covers.
    pub base: u64,
    /// Every record below this seq has its events in the tree; the log holds the rest.
    pub upto: u64,
}

/// What one bounded pruning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Keys looked at.
    pub examined: u64,
    /// Keys removed.
    pub removed: u64,
    /// The SKU the next pass continues after; `None`: this pass reached the end.
    pub next_after: Option<String>,
}

fn storage(op: &'static str) -> impl FnOnce(sled::Error) -> WalError {
    move |source| WalError::Storage { op, source }
}

fn sku_prefix(sku: &str) -> Result<Vec<u8>, WalError> {
    let bytes = sku.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SKU_BYTES {
        return Err(WalError::InvalidArgument(format!(
            "history SKU id of {} bytes: must be 1..={MAX_SKU_BYTES}",
            bytes.len()
        )));
    }
    let mut key = Vec::with_capacity(1 + bytes.len() + 10);
    key.push(bytes.len() as u8);
    key.extend_from_slice(bytes);
    Ok(key)
}

/// The key of (`sku`, `seq`, `index`).
pub(crate) fn key(sku: &str, seq: u64, index: u16) -> Result<Vec<u8>, WalError> {
    let mut key = sku_prefix(sku)?;
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    Ok(key)
}

/// (SKU, seq, index) of a key, or `None` for a marker or a malformed key.
fn decode_key(key: &[u8]) -> Option<(&str, u64, u16)> {
    let len = usize::from(*key.first()?);
    if len == 0 || key.len() != 1 + len + 10 {
        return None;
    }
    let sku = std::str::from_utf8(&key[1..1 + len]).ok()?;
    let seq = u64::from_be_bytes(key[1 + len..1 + len + 8].try_into().ok()?);
    let index = u16::from_be_bytes(key[1 + len + 8..].try_into().ok()?);
    Some((sku, seq, index))
}

fn crc(key: &[u8], at_ms: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(&at_ms.to_le_bytes());
    h.update(body);
    h.finalize()
}

pub(crate) fn encode_value(key: &[u8], at_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEADER + body.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&at_ms.to_le_bytes());
    v.extend_from_slice(&crc(key, at_ms, body).to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// `at_ms` of a value without checking it (pruning by age; a damaged value is reported
/// by the reads).
fn peek_at_ms(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(1..9)?.try_into().ok()?))
}

fn decode_item(dir: &Path, key: &[u8], value: &[u8]) -> Result<HistoryItem, WalError> {
    let corrupt = |seq: u64, reason: String| WalError::Corrupt {
        dir: dir.to_path_buf(),
        seq,
        reason: format!("history value: {reason}"),
    };
    let Some((sku, seq, index)) = decode_key(key) else {
        return Err(corrupt(0, format!("malformed key {key:02x?}")));
    };
    if value.len() < VALUE_HEADER {
        return Err(corrupt(seq, format!("{} bytes, too short", value.len())));
    }
    if value[0] != VALUE_VERSION {
        return Err(corrupt(seq, format!("unknown version {}", value[0])));
    }
    let at_ms = peek_at_ms(value).unwrap_or(0);
    let stored = u32::from_le_bytes([value[9], value[10], value[11], value[12]]);
    let body = &value[VALUE_HEADER..];
    let computed = crc(key, at_ms, body);
    if stored != computed {
        return Err(corrupt(
            seq,
            format!(
                "CRC mismatch for {sku} index {index}: stored {stored:#010x}, computed {computed:#010x}"
            ),
        ));
    }
    Ok(HistoryItem {
        sku: sku.to_owned(),
        seq,
        index,
        at_ms,
        body: body.to_vec(),
    })
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, WalError> {
    let Some(v) = tree.get(key).map_err(storage("read history marker"))? else {
        return Ok(None);
    };
    let raw: [u8; 8] = v[..].try_into().map_err(|_| {
        WalError::InvalidArgument(format!("history marker of {} bytes, expected 8", v.len()))
    })?;
    Ok(Some(u64::from_le_bytes(raw)))
}

/// The markers; a tree without them (a directory from before history) covers nothing
/// yet: both are `floor`, the log's first seq.
pub(crate) fn marks(tree: &sled::Tree, floor: u64) -> Result<HistoryMarks, WalError> {
    let upto = read_u64(tree, UPTO_KEY)?.unwrap_or(floor);
    let base = read_u64(tree, BASE_KEY)?.unwrap_or(upto);
    Ok(HistoryMarks { base, upto })
}

/// Inserts `items` (no flush). Idempotent: the same event has the same key and bytes.
pub(crate) fn put(tree: &sled::Tree, items: &[HistoryItem]) -> Result<(), WalError> {
    for item in items {
        let key = key(&item.sku, item.seq, item.index)?;
        let value = encode_value(&key, item.at_ms, &item.body);
        tree.insert(key, value).map_err(storage("write history"))?;
    }
    Ok(())
}

/// Makes everything put so far durable, then records `upto` (and `base` the first time)
/// and flushes again: the marker never reaches the disk before the items it covers.
pub(crate) fn mark(tree: &sled::Tree, base: u64, upto: u64) -> Result<(), WalError> {
    tree.flush().map_err(storage("flush history"))?;
    if tree
        .get(BASE_KEY)
        .map_err(storage("read history marker"))?
        .is_none()
    {
        tree.insert(BASE_KEY, &base.to_le_bytes())
            .map_err(storage("write history marker"))?;
    }
    tree.insert(UPTO_KEY, &upto.to_le_bytes())
        .map_err(storage("write history marker"))?;
    tree.flush().map_err(storage("flush history marker"))?;
    Ok(())
}

/// At most `limit` items of `sku` from (`from_seq`, `from_index`) on (inclusive) and below
/// `below_seq`, in order, each one's CRC checked.
pub(crate) fn page(
    tree: &sled::Tree,
    dir: &Path,
    sku: &str,
    from: (u64, u16),
    below_seq: u64,
    limit: usize,
) -> Result<Vec<HistoryItem>, WalError> {
    if from.0 >= below_seq {
        return Ok(Vec::new());
    }
    let start = key(sku, from.0, from.1)?;
    let end = key(sku, below_seq, 0)?;
    let mut out = Vec::new();
    for kv in tree.range(start..end).take(limit) {
        let (k, v) = kv.map_err(storage("read history"))?;
        out.push(decode_item(dir, &k, &v)?);
    }
    Ok(out)
}

/// One bounded pruning pass: SKU by SKU after `after` (from the first SKU when `None`),
/// removes the events beyond the newest `keep_newest` of each SKU (0: no count limit) and
/// those older than `older_than_ms` (0: no age limit). Stops after the SKU during which
/// `budget` keys were examined; a SKU is always finished, so one pass examines at most
/// `budget` plus one SKU's events.
pub(crate) fn prune(
    tree: &sled::Tree,
    after: Option<&str>,
    budget: u64,
    keep_newest: u64,
    older_than_ms: u64,
) -> Result<PruneReport, WalError> {
    let mut report = PruneReport::default();
    if keep_newest == 0 && older_than_ms == 0 {
        return Ok(report);
    }
    // Marker keys start with 0; SKU keys with their length, 1..=255.
    let mut from: Bound<Vec<u8>> = match after {
        Some(sku) => {
            let mut last = sku_prefix(sku)?;
            last.extend_from_slice(&[0xFF; 10]);
            Bound::Excluded(last)
        }
        None => Bound::Included(vec![1]),
    };
    loop {
        let next = tree
            .range((from.clone(), Bound::Unbounded))
            .keys()
            .next()
            .transpose()
            .map_err(storage("scan history"))?;
        let Some(first) = next else {
            report.next_after = None;
            return Ok(report);
        };
        let Some((sku, _, _)) = decode_key(&first) else {
            // Not a key this module writes: skip it rather than loop on it.
            from = Bound::Excluded(first.to_vec());
            continue;
        };
        let sku = sku.to_owned();
        let prefix = sku_prefix(&sku)?;
        let mut newer = 0u64;
        for kv in tree.scan_prefix(&prefix).rev() {
            let (k, v) = kv.map_err(storage("scan history"))?;
            report.examined += 1;
            let too_many = keep_newest > 0 && newer >= keep_newest;
            let too_old = older_than_ms > 0 && peek_at_ms(&v).is_some_and(|t| t < older_than_ms);
            if too_many || too_old {
                tree.remove(&k).map_err(storage("prune history"))?;
                report.removed += 1;
            } else {
                newer += 1;
            }
        }
        let mut last = prefix;
        last.extend_from_slice(&[0xFF; 10]);
        from = Bound::Excluded(last);
        if report.examined >= budget {
            report.next_after = Some(sku);
            return Ok(report);
        }
    }
}

/// Keys in the tree and their encoded bytes (keys plus values), for the cost measurement
/// and `check`. One pass over the tree.
pub(crate) fn size(tree: &sled::Tree) -> Result<(u64, u64), WalError> {
    let mut n = 0u64;
    let mut bytes = 0u64;
    for kv in tree.range(vec![1u8]..) {
        let (k, v) = kv.map_err(storage("scan history"))?;
        n += 1;
        bytes += (k.len() + v.len()) as u64;
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sku_then_seq_then_index_and_after_markers() {
        let a = key("A", 5, 0).expect("key");
        assert!(key("A", 5, 1).expect("key") > a);
        assert!(key("A", 6, 0).expect("key") > key("A", 5, u16::MAX).expect("key"));
        assert!(a[..] > *UPTO_KEY && a[..] > *BASE_KEY);
        assert_eq!(decode_key(&a), Some(("A", 5, 0)));
        assert_eq!(decode_key(UPTO_KEY), None);
        assert!(key("", 1, 0).is_err());
        assert!(key(&"x".repeat(256), 1, 0).is_err());
    }

    #[test]
    fn a_damaged_or_moved_value_is_reported() {
        let dir = Path::new("/nowhere");
        let k = key("SKU", 7, 2).expect("key");
        let v = encode_value(&k, 1_000, b"body");
        let item = decode_item(dir, &k, &v).expect("intact");
        assert_eq!((item.seq, item.index, item.at_ms), (7, 2, 1_000));
        assert_eq!(item.body, b"body");
        let mut damaged = v.clone();
        damaged[14] ^= 1;
        assert!(decode_item(dir, &k, &damaged).is_err());
        let other = key("SKU", 8, 2).expect("key");
        assert!(decode_item(dir, &other, &v).is_err());
        assert!(decode_item(dir, &k, &v[..5]).is_err());
    }

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        db.open_tree(HISTORY_TREE).expect("tree")
    }

    fn item(sku: &str, seq: u64, at_ms: u64) -> HistoryItem {
        HistoryItem {
            sku: sku.into(),
            seq,
            index: 0,
            at_ms,
            body: vec![seq as u8],
        }
    }

    #[test]
    fn pages_stop_below_the_bound_and_pruning_keeps_the_newest() {
        let t = tree();
        let items: Vec<_> = (1..=10)
            .flat_map(|s| [item("A", s, s * 100), item("BB", s, s * 100)])
            .collect();
        put(&t, &items).expect("put");
        mark(&t, 1, 9).expect("mark");
        assert_eq!(
            marks(&t, 1).expect("marks"),
            HistoryMarks { base: 1, upto: 9 }
        );
        let dir = Path::new("/nowhere");
        let seqs = |v: Vec<HistoryItem>| v.iter().map(|i| i.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(page(&t, dir, "A", (3, 0), 9, 100).expect("page")),
            vec![3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            seqs(page(&t, dir, "A", (3, 1), 9, 2).expect("page")),
            vec![4, 5]
        );
        // Count limit 4, age limit: before 300 (seqs 1 and 2) for both SKUs; budget 1
        // still finishes the first SKU.
        let r = prune(&t, None, 1, 4, 300).expect("prune");
        assert_eq!((r.examined, r.removed), (10, 6));
        assert_eq!(r.next_after.as_deref(), Some("A"));
        let r = prune(&t, r.next_after.as_deref(), 1, 4, 300).expect("prune");
        assert_eq!(
            (r.examined, r.removed, r.next_after),
            (10, 6, Some("BB".into()))
        );
        let r = prune(&t, Some("BB"), 1, 4, 300).expect("prune");
        assert_eq!(r, PruneReport::default());
        assert_eq!(
            seqs(page(&t, dir, "BB", (0, 0), 100, 100).expect("page")),
            vec![7, 8, 9, 10]
        );
        assert_eq!(size(&t).expect("size").0, 8);
    }
}
