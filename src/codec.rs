//! The one bincode configuration used on the wire and on disk: fixed-width little-endian
//! integers, a decode limit, trailing bytes rejected. Also the compact (varint) form used
//! for passive SKUs in memory, which never leaves the process.

use bincode::config::{self, Configuration, Fixint, LittleEndian, Varint};
use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;
use thiserror::Error;

/// Largest value the fixed codec will decode (protects against hostile length prefixes).
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;

const FIXED: Configuration<LittleEndian, Fixint, bincode::config::Limit<MAX_DECODE_BYTES>> =
    config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_DECODE_BYTES>();

const COMPACT: Configuration<LittleEndian, Varint> = config::standard();

/// Largest checkpoint the codec will decode (64 GiB): checkpoints hold the whole state.
pub const MAX_CHECKPOINT_BYTES: usize = 1 << 36;

const LARGE: Configuration<LittleEndian, Fixint, bincode::config::Limit<MAX_CHECKPOINT_BYTES>> =
    config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_CHECKPOINT_BYTES>();

/// A value could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// Encoding failed (a value over a limit).
    #[error("encode: {0}")]
    Encode(String),
    /// The bytes are not a valid value (the callers say what was being decoded).
    #[error("{0}")]
    Decode(String),
    /// A value decoded but bytes were left over.
    #[error("{0} byte(s) after the end of the value")]
    Trailing(usize),
}

/// Bytes reserved up front by [`encode`]: most log records and operation results fit, so
/// the buffer is not regrown four or five times from empty (bincode's own `encode_to_vec`
/// starts from an empty `Vec`: ~1.5K instructions per reserve went to regrowing).
const ENCODE_CAPACITY_BYTES: usize = 160;

/// Encodes with the fixed wire/disk configuration.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(ENCODE_CAPACITY_BYTES);
    encode_into(v, &mut out)?;
    Ok(out)
}

/// Encodes with the fixed configuration, appending to `out`.
pub fn encode_into<T: Serialize>(v: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(v, out, FIXED)
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// What went wrong, in words for a client or an operator (bincode's own text is Rust
/// `Debug` output such as `UnexpectedEnd { additional: 2 }`).
fn plain(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as D;
    match e {
        D::UnexpectedEnd { additional } => {
            format!("the bytes end {additional} byte(s) before the value does")
        }
        D::LimitExceeded => "a length is over the decode limit".into(),
        D::InvalidBooleanValue(b) => format!("{b} is not a boolean (0 or 1)"),
        D::UnexpectedVariant {
            found, type_name, ..
        } => {
            format!("{found} is not a variant of {type_name}")
        }
        D::Utf8 { .. } => "a string is not valid UTF-8".into(),
        D::InvalidCharEncoding(_) => "a character is not valid UTF-8".into(),
        D::OutsideUsizeRange(n) => format!("a length of {n} does not fit in memory"),
        other => other.to_string(),
    }
}

/// Decodes a whole buffer with `config`; trailing bytes are an error.
fn decode_whole<'de, T: Deserialize<'de>, C: bincode::config::Config>(
    bytes: &'de [u8],
    config: C,
) -> Result<T, CodecError> {
    let (v, used) = bincode::serde::borrow_decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Decode(plain(&e)))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(v)
}

// Writers of the fixed codec's layout, for the few values written field by field on hot
// paths (log records, feed items): bincode, fixed-width little-endian, so integers as
// themselves, a `bool` as one byte, a string or a vector as a u64 length then its items,
// an enum variant as its u32 index then its fields in declaration order. Each caller has a
// test that its bytes are the codec's.

/// Appends `v` as the fixed codec writes a u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends an enum variant's index as the fixed codec writes it.
pub fn put_variant(out: &mut Vec<u8>, index: u32) {
    out.extend_from_slice(&index.to_le_bytes());
}

/// Appends a string as the fixed codec writes it: its u64 length, then its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Decodes one value from the start of `bytes` with the fixed configuration, and how many
/// bytes it took (for a caller reading a sequence of values itself).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, FIXED)
        .map_err(|e| CodecError::Decode(plain(&e)))
}

/// Decodes a whole buffer with the fixed configuration; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_whole(bytes, FIXED)
}

/// How many bytes of decoded (in-memory) form [`decode_bounded`] allows per input byte.
pub const BOUNDED_EXPANSION: usize = 32;

/// Like [`decode`], but the decode limit (what lengths inside may claim) scales with the
/// input: `BOUNDED_EXPANSION` x its length, rounded up to 4 KiB, 64 KiB or 1 MiB, else
/// [`MAX_DECODE_BYTES`]. A short input announcing a long string or vector is refused
/// before anything of that size is allocated (with [`decode`] a 49-byte input could make
/// it allocate up to 16 MiB). For what a peer sends (the server's requests), whose types
/// decode to at most a few times their encoded size; not for values with vectors of
/// small optional items (`Vec<Option<_>>`, a byte each when `None`). `T` may borrow from
/// `bytes` (`&str` fields: no copy of the strings).
pub fn decode_bounded<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    let want = bytes.len().saturating_mul(BOUNDED_EXPANSION);
    let base = config::standard()
        .with_little_endian()
        .with_fixed_int_encoding();
    if want <= 4 << 10 {
        decode_whole(bytes, base.with_limit::<{ 4 << 10 }>())
    } else if want <= 64 << 10 {
        decode_whole(bytes, base.with_limit::<{ 64 << 10 }>())
    } else if want <= 1 << 20 {
        decode_whole(bytes, base.with_limit::<{ 1 << 20 }>())
    } else {
        decode_whole(bytes, FIXED)
    }
}

/// Decodes a checkpoint-sized value (same layout as [`decode`], larger limit).
pub fn decode_large<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_whole(bytes, LARGE)
}

/// Encodes in the compact in-memory form (varints).
pub fn encode_compact<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(v, COMPACT).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes the compact in-memory form.
pub fn decode_compact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_whole(bytes, COMPACT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_encoding_is_little_endian_fixed_width() {
        assert_eq!(encode(&0x0102_0304u32).unwrap(), vec![4, 3, 2, 1]);
        assert_eq!(encode(&1u64).unwrap(), vec![1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            encode(&"ab").unwrap(),
            vec![2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']
        );
    }

    #[test]
    fn a_short_input_cannot_claim_a_long_string_under_the_bounded_limit() {
        // 8 length bytes saying 14 MB, then 3 bytes: refused by the limit, not by running
        // out of bytes after allocating the string.
        let mut b = (14_000_000u64).to_le_bytes().to_vec();
        b.extend_from_slice(b"abc");
        let e = decode_bounded::<String>(&b).unwrap_err().to_string();
        assert_eq!(e, "a length is over the decode limit");
        let e = decode::<String>(&b).unwrap_err().to_string();
        assert!(e.starts_with("the bytes end"), "{e}");
        // What fits decodes the same either way.
        let v = vec!["a".to_string(); 3000];
        let bytes = encode(&v).unwrap();
        assert_eq!(decode_bounded::<Vec<String>>(&bytes).unwrap(), v);
    }

    #[test]
    fn decode_errors_read_as_words_not_rust_debug_text() {
        let short = decode::<(u32, u32)>(&[1, 0, 0, 0, 2, 0])
            .unwrap_err()
            .to_string();
        assert_eq!(short, "the bytes end 2 byte(s) before the value does");
        let bad_bool = decode::<bool>(&[7]).unwrap_err().to_string();
        assert_eq!(bad_bool, "7 is not a boolean (0 or 1)");
    }

    #[test]
    fn trailing_bytes_and_huge_lengths_are_rejected() {
        assert!(matches!(
            decode::<u32>(&[1, 0, 0, 0, 9]),
            Err(CodecError::Trailing(1))
        ));
        // A string claiming 2^40 bytes must fail without allocating it.
        let mut b = (1u64 << 40).to_le_bytes().to_vec();
        b.extend_from_slice(b"xx");
        assert!(decode::<String>(&b).is_err());
    }
}
