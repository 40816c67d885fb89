//! On-disk encoding of the WAL log: the sled key and the value of one *group* of
//! consecutive records.
//!
//! A sled value holds a group rather than a single record because sled costs a few
//! microseconds per key however small the value; packing many records into one value
//! is what lets group commit exceed a million records per second. Layout (format
//! version 2):
//!
//! - key: the group's first seq as a big-endian `u64`, so sled's lexicographic key
//!   order is seq order and replay is a range scan;
//! - value: `[version: u8 = 2][count: u16 LE][crc32: u32 LE]` followed by `count`
//!   records, each `[len: u32 LE][payload: len bytes]`. Record `i` has seq
//!   `first_seq + i`.
//!
//! The CRC covers the first seq (8 bytes LE) and everything after the CRC, so a group
//! written under (or moved to) the wrong key is detected. `count` sits before the CRC
//! and is not covered by it; it is protected structurally instead: every record takes
//! at least 4 bytes, so a damaged count can never consume the record section exactly
//! and decoding refuses it. Version 1 (one record per value) is not readable: it was
//! never deployed, and it is reported as an unknown version like any other.
//!
//! This module owns the byte layout and nothing else: it is pure (no I/O, no locks) so
//! that the layout can be pinned by golden-byte tests and reused by offline tools that
//! read a data directory without starting a writer.

use std::fmt;

/// Version byte written at the start of every group value. Bumped only when the layout
/// after it changes; decoding refuses versions it does not know rather than guessing.
pub const FORMAT_VERSION: u8 = 2;

/// Bytes in front of the first record: version byte, 2-byte count, 4-byte CRC.
pub const HEADER_LEN: usize = 1 + 2 + 4;

/// Bytes in front of each payload inside a group: its length as a `u32` LE.
pub const LEN_PREFIX_LEN: usize = 4;

/// Length of an encoded key: the group's first seq as a big-endian `u64`.
pub const KEY_LEN: usize = 8;

/// Most records one group can hold: the count field is a `u16`.
pub const MAX_GROUP_RECORDS: usize = u16::MAX as usize;

/// Largest payload a group can hold: the length prefix is a `u32`.
pub const MAX_PAYLOAD_LEN: usize = u32::MAX as usize;

/// Offset of the CRC inside a group value (after version and count).
const CRC_OFFSET: usize = 3;

/// Why a stored key or value could not be decoded, or a group could not be encoded.
/// Kept separate from `WalError` because the record layer does not know the data
/// directory or whether the group is the log's last one; the caller adds that context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The key is not exactly [`KEY_LEN`] bytes.
    BadKeyLength {
        /// Length actually found.
        len: usize,
    },
    /// The value is shorter than [`HEADER_LEN`].
    Truncated {
        /// Length actually found.
        len: usize,
    },
    /// The version byte is not [`FORMAT_VERSION`].
    UnknownVersion {
        /// Version byte actually found.
        version: u8,
    },
    /// The stored CRC does not match the one computed over first seq and records.
    CrcMismatch {
        /// CRC stored in the group header.
        stored: u32,
        /// CRC computed from the key's seq and the stored record section.
        computed: u32,
    },
    /// A group with zero records (never written; a count of 0 is damage).
    EmptyGroup,
    /// The record section does not hold exactly `count` length-prefixed records.
    BadLayout {
        /// Record count stored in the header.
        count: u16,
    },
    /// `first_seq + count` does not fit in a `u64`.
    SeqOverflow {
        /// The group's first seq.
        first_seq: u64,
        /// Records in the group.
        count: usize,
    },
    /// Encoding refused more than [`MAX_GROUP_RECORDS`] records in one group.
    TooManyRecords {
        /// Records offered.
        count: usize,
    },
    /// Encoding refused a payload longer than [`MAX_PAYLOAD_LEN`].
    PayloadTooLarge {
        /// Payload length.
        len: usize,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadKeyLength { len } => write!(f, "key is {len} bytes, expected {KEY_LEN}"),
            Self::Truncated { len } => write!(
                f,
                "value is {len} bytes, shorter than the {HEADER_LEN}-byte group header"
            ),
            Self::UnknownVersion { version } => write!(
                f,
                "unknown format version {version} (expected {FORMAT_VERSION})"
            ),
            Self::CrcMismatch { stored, computed } => write!(
                f,
                "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            Self::EmptyGroup => write!(f, "group header says it holds 0 records"),
            Self::BadLayout { count } => write!(
                f,
                "record section does not hold exactly the {count} records the header names"
            ),
            Self::SeqOverflow { first_seq, count } => write!(
                f,
                "group of {count} records starting at seq {first_seq} runs past the largest seq"
            ),
            Self::TooManyRecords { count } => write!(
                f,
                "{count} records do not fit one group (at most {MAX_GROUP_RECORDS})"
            ),
            Self::PayloadTooLarge { len } => write!(
                f,
                "payload of {len} bytes does not fit a group (at most {MAX_PAYLOAD_LEN})"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

/// Encodes `seq` as a sled key whose byte order sorts like the number.
pub fn encode_key(seq: u64) -> [u8; KEY_LEN] {
    seq.to_be_bytes()
}

/// Decodes a key written by [`encode_key`].
pub fn decode_key(key: &[u8]) -> Result<u64, RecordError> {
    let bytes: [u8; KEY_LEN] = key
        .try_into()
        .map_err(|_| RecordError::BadKeyLength { len: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

/// CRC32 (IEEE) over `first_seq` as 8 little-endian bytes followed by `records` (the
/// bytes after the CRC field).
pub fn group_crc(first_seq: u64, records: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&first_seq.to_le_bytes());
    hasher.update(records);
    hasher.finalize()
}

/// How many of the leading `payloads` form the next group: at most `max_records`
/// (clamped to 1..=[`MAX_GROUP_RECORDS`]) and at most `max_bytes` of encoded value,
/// but always at least one record, so a payload larger than `max_bytes` becomes a group
/// of its own rather than being split. Returns 0 only for an empty slice.
pub fn next_group_len<P: AsRef<[u8]>>(
    payloads: &[P],
    max_records: usize,
    max_bytes: usize,
) -> usize {
    let max_records = max_records.clamp(1, MAX_GROUP_RECORDS);
    let mut bytes = HEADER_LEN;
    let mut taken = 0;
    for payload in payloads.iter().take(max_records) {
        let size = LEN_PREFIX_LEN.saturating_add(payload.as_ref().len());
        if taken > 0 && bytes.saturating_add(size) > max_bytes {
            break;
        }
        bytes = bytes.saturating_add(size);
        taken += 1;
    }
    taken
}

/// Appends the encoded group value for `payloads` (seqs `first_seq..`) to `out`.
///
/// Takes an output buffer rather than returning a `Vec` so the writer thread can reuse
/// one scratch buffer for a whole batch instead of allocating per group. On error
/// `out` is left as it was.
pub fn encode_group_into<P: AsRef<[u8]>>(
    first_seq: u64,
    payloads: &[P],
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let count = u16::try_from(payloads.len()).map_err(|_| RecordError::TooManyRecords {
        count: payloads.len(),
    })?;
    if count == 0 {
        return Err(RecordError::EmptyGroup);
    }
    if first_seq.checked_add(u64::from(count)).is_none() {
        return Err(RecordError::SeqOverflow {
            first_seq,
            count: payloads.len(),
        });
    }
    let mut body_len = 0usize;
    for payload in payloads {
        let len = payload.as_ref().len();
        if len > MAX_PAYLOAD_LEN {
            return Err(RecordError::PayloadTooLarge { len });
        }
        body_len = body_len.saturating_add(LEN_PREFIX_LEN + len);
    }
    let start = out.len();
    out.reserve(HEADER_LEN.saturating_add(body_len));
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&count.to_le_bytes());
    // Placeholder: the CRC covers the records, which are not written yet.
    out.extend_from_slice(&[0; 4]);
    for payload in payloads {
        let payload = payload.as_ref();
        // Checked above: every length fits a u32.
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
    let crc = group_crc(first_seq, &out[start + HEADER_LEN..]);
    let crc_at = start + CRC_OFFSET;
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Returns the encoded group value for `payloads` (seqs `first_seq..`).
pub fn encode_group<P: AsRef<[u8]>>(
    first_seq: u64,
    payloads: &[P],
) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    encode_group_into(first_seq, payloads, &mut out)?;
    Ok(out)
}

/// The record count a group value's header claims, *without* verifying the CRC; `None`
/// if the value is too short, of another version, or claims 0 records. For cheap
/// bookkeeping (log size, truncation) where a wrong answer is caught by the next full
/// [`decode_group`].
pub fn peek_count(value: &[u8]) -> Option<u16> {
    if value.len() < HEADER_LEN || value[0] != FORMAT_VERSION {
        return None;
    }
    let count = u16::from_le_bytes([value[1], value[2]]);
    (count > 0).then_some(count)
}

/// Checks version, CRC and layout of a stored group value (read under key
/// `first_seq`) and returns its payloads; payload `i` has seq `first_seq + i`.
pub fn decode_group(first_seq: u64, value: &[u8]) -> Result<Vec<&[u8]>, RecordError> {
    if value.len() < HEADER_LEN {
        return Err(RecordError::Truncated { len: value.len() });
    }
    let version = value[0];
    if version != FORMAT_VERSION {
        return Err(RecordError::UnknownVersion { version });
    }
    let count = u16::from_le_bytes([value[1], value[2]]);
    if count == 0 {
        return Err(RecordError::EmptyGroup);
    }
    let stored = u32::from_le_bytes([value[3], value[4], value[5], value[6]]);
    let records = &value[HEADER_LEN..];
    let computed = group_crc(first_seq, records);
    if stored != computed {
        return Err(RecordError::CrcMismatch { stored, computed });
    }
    if first_seq.checked_add(u64::from(count)).is_none() {
        return Err(RecordError::SeqOverflow {
            first_seq,
            count: usize::from(count),
        });
    }
    split_records(records, count)
}

/// Splits a CRC-checked record section into exactly `count` payloads.
fn split_records(mut rest: &[u8], count: u16) -> Result<Vec<&[u8]>, RecordError> {
    let bad = RecordError::BadLayout { count };
    let mut payloads = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (prefix, tail) = rest
            .split_at_checked(LEN_PREFIX_LEN)
            .ok_or_else(|| bad.clone())?;
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let len = usize::try_from(len).map_err(|_| bad.clone())?;
        let (payload, tail) = tail.split_at_checked(len).ok_or_else(|| bad.clone())?;
        payloads.push(payload);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Golden bytes for a group at seq 1 holding "abc" and an empty payload. The CRC
    /// was computed independently (Python: `zlib.crc32(struct.pack('<Q', 1) +
    /// struct.pack('<I', 3) + b'abc' + struct.pack('<I', 0))` = 0x2267CBAB), so a
    /// change to the CRC input, its endianness or the layout breaks this test.
    #[test]
    fn golden_bytes_for_one_group() {
        let value = encode_group(1, &[&b"abc"[..], &b""[..]]).expect("encode");
        assert_eq!(
            value,
            [0x02, 0x02, 0x00, 0xAB, 0xCB, 0x67, 0x22, 3, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0]
        );
        assert_eq!(encode_key(1), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(decode_group(1, &value), Ok(vec![&b"abc"[..], &b""[..]]));
        assert_eq!(peek_count(&value), Some(2));
    }

    #[test]
    fn key_order_is_seq_order() {
        let keys: Vec<[u8; 8]> = [1u64, 255, 256, 65_536, u64::MAX]
            .iter()
            .map(|s| encode_key(*s))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(decode_key(&encode_key(0xDEAD_BEEF)), Ok(0xDEAD_BEEF));
        assert_eq!(
            decode_key(&[1, 2, 3]),
            Err(RecordError::BadKeyLength { len: 3 })
        );
    }

    #[test]
    fn decode_rejects_damage() {
        let value = encode_group(7, &[&b"payload"[..], &b"more"[..]]).expect("encode");
        assert_eq!(
            decode_group(7, &value[..3]),
            Err(RecordError::Truncated { len: 3 })
        );
        for version in [1u8, 3, 0xFF] {
            let mut wrong_version = value.clone();
            wrong_version[0] = version;
            assert_eq!(
                decode_group(7, &wrong_version),
                Err(RecordError::UnknownVersion { version })
            );
            assert_eq!(peek_count(&wrong_version), None);
        }
        let mut flipped = value.clone();
        flipped[HEADER_LEN + LEN_PREFIX_LEN] ^= 0x01;
        assert!(matches!(
            decode_group(7, &flipped),
            Err(RecordError::CrcMismatch { .. })
        ));
        // The count is outside the CRC; a damaged count cannot fit the records.
        let mut recounted = value.clone();
        recounted[1] = 1;
        assert_eq!(
            decode_group(7, &recounted),
            Err(RecordError::BadLayout { count: 1 })
        );
        recounted[1] = 0;
        assert_eq!(decode_group(7, &recounted), Err(RecordError::EmptyGroup));
        // The same bytes under a different key must not decode: the CRC covers seq.
        assert!(matches!(
            decode_group(8, &value),
            Err(RecordError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn version_1_record_is_refused() {
        // A version-1 value: [1][crc u32][payload]. Must be an error, never a panic.
        let v1 = [1u8, 0xFC, 0xF6, 0x6C, 0x60, b'a', b'b', b'c'];
        assert_eq!(
            decode_group(1, &v1),
            Err(RecordError::UnknownVersion { version: 1 })
        );
    }

    #[test]
    fn encode_refuses_unencodable_groups() {
        let none: [&[u8]; 0] = [];
        assert_eq!(encode_group(1, &none), Err(RecordError::EmptyGroup));
        let many = vec![&b""[..]; MAX_GROUP_RECORDS + 1];
        assert_eq!(
            encode_group(1, &many),
            Err(RecordError::TooManyRecords {
                count: MAX_GROUP_RECORDS + 1
            })
        );
        assert!(matches!(
            encode_group(u64::MAX, &[&b"x"[..]]),
            Err(RecordError::SeqOverflow { .. })
        ));
    }

    #[test]
    fn group_split_respects_record_and_byte_caps() {
        let small = vec![vec![0u8; 10]; 10];
        assert_eq!(next_group_len(&small, 4, usize::MAX), 4);
        assert_eq!(next_group_len(&small, 100, usize::MAX), 10);
        // Header 7 + 3 * (4 + 10) = 49 bytes fits 50; a fourth record would not.
        assert_eq!(next_group_len(&small, 100, 50), 3);
        // A record larger than the byte cap is a group of one, never split.
        let big = vec![vec![0u8; 1000], vec![0u8; 1]];
        assert_eq!(next_group_len(&big, 100, 50), 1);
        assert_eq!(next_group_len(&big[1..], 100, 50), 1);
        let none: [Vec<u8>; 0] = [];
        assert_eq!(next_group_len(&none, 100, 50), 0);
        assert_eq!(next_group_len(&small, 0, 50), 1, "max_records clamps to 1");
    }

    fn payloads_strategy(max_len: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..max_len), 1..20)
    }

    proptest! {
        #[test]
        fn round_trip(seq in 0..u64::MAX - 64, payloads in payloads_strategy(512)) {
            let value = encode_group(seq, &payloads).expect("encode");
            let body: usize = payloads.iter().map(|p| LEN_PREFIX_LEN + p.len()).sum();
            prop_assert_eq!(value.len(), HEADER_LEN + body);
            let expected: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(decode_group(seq, &value), Ok(expected));
            prop_assert_eq!(peek_count(&value), Some(payloads.len() as u16));
            prop_assert_eq!(decode_key(&encode_key(seq)), Ok(seq));
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            seq in 0..u64::MAX - 64,
            payloads in payloads_strategy(64),
            bit in any::<proptest::sample::Index>(),
        ) {
            let mut value = encode_group(seq, &payloads).expect("encode");
            let bit = bit.index(value.len() * 8);
            value[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_group(seq, &value).is_err());
        }
    }
}
