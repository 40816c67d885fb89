//! The omnistock binary protocol, as pure data: frames parsed from and written to byte
//! buffers, the bincode payload of every frame kind and operation, opcodes, roles and status
//! codes. No sockets and no tokio here: `server/` and `client/` own the IO, so the protocol
//! can be tested byte by byte and reused by any transport. docs/protocol.md is the
//! byte-level specification; the golden tests in `tests/protocol_golden.rs` pin it.

pub mod frame;
pub mod messages;
pub mod ops;
pub mod status;

use thiserror::Error;

pub use frame::{Frame, FrameError, FrameKind, DEFAULT_MAX_FRAME_BYTES};
pub use messages::*;
pub use ops::{opcode, Op, Role};

use crate::codec;

/// A payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Encoding failed.
    #[error("encode: {0}")]
    Encode(String),
    /// The bytes are not a valid payload.
    #[error("decode: {0}")]
    Decode(String),
    /// A frame could not be parsed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Encodes a payload with the wire configuration.
pub fn encode_payload<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ProtocolError> {
    codec::encode(v).map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// Decodes a payload with the wire configuration (trailing bytes are an error).
pub fn decode_payload<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ProtocolError> {
    codec::decode(b).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// Decodes what a peer sent (the server's `Hello` and request batches) with a decode
/// limit that scales with the payload's length ([`codec::decode_bounded`]).
pub fn decode_request<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ProtocolError> {
    codec::decode_bounded(b).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// Decodes a `Request` payload: as [`decode_request`] does, with its layout (u64 count,
/// then per op a u16 opcode and its body as u64 length and bytes, nothing after) read
/// directly when it is well formed; anything else goes to the codec, which words the error.
pub fn decode_request_batch(b: &[u8]) -> Result<RequestBatch, ProtocolError> {
    request_batch_direct(b).map_or_else(|| decode_request(b), Ok)
}

fn request_batch_direct(b: &[u8]) -> Option<RequestBatch> {
    // Each op takes at least 10 bytes (opcode, body length).
    let ops = list_direct(b, 10, |r| {
        let (opcode, r) = r.split_first_chunk::<2>()?;
        let (body, r) = split_bytes(r)?;
        let op = messages::RawOp {
            opcode: u16::from_le_bytes(*opcode),
            body: body.to_vec(),
        };
        Some((op, r))
    })?;
    Some(RequestBatch { ops })
}

/// A u64 count, then that many items read by `item` (each at least `min_item` bytes, so a
/// count the rest cannot hold is refused before anything is allocated), nothing after.
fn list_direct<'a, T>(
    b: &'a [u8],
    min_item: usize,
    mut item: impl FnMut(&'a [u8]) -> Option<(T, &'a [u8])>,
) -> Option<Vec<T>> {
    let (count, mut rest) = b.split_first_chunk::<8>()?;
    let n = usize::try_from(u64::from_le_bytes(*count)).ok()?;
    if n > rest.len() / min_item {
        return None;
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let (x, r) = item(rest)?;
        items.push(x);
        rest = r;
    }
    rest.is_empty().then_some(items)
}

/// Decodes a `Response` payload: its layout (u64 count, then per result a u16 status, the
/// message as u64 length and UTF-8 bytes, the body as u64 length and bytes, nothing after)
/// read directly when it is well formed; anything else goes to the codec, which words the
/// error. The client decodes every answer with it.
pub fn decode_response_batch(b: &[u8]) -> Result<ResponseBatch, ProtocolError> {
    response_batch_direct(b).map_or_else(|| decode_payload(b), Ok)
}

fn response_batch_direct(b: &[u8]) -> Option<ResponseBatch> {
    // Each result takes at least 18 bytes (status, message and body lengths).
    let results = list_direct(b, 18, |r| {
        let (status, r) = r.split_first_chunk::<2>()?;
        let (message, r) = split_bytes(r)?;
        let (body, r) = split_bytes(r)?;
        let result = messages::OpResult {
            status: u16::from_le_bytes(*status),
            message: std::str::from_utf8(message).ok()?.to_owned(),
            body: body.to_vec(),
        };
        Some((result, r))
    })?;
    Some(ResponseBatch { results })
}

/// A u64 length and that many bytes, and what follows.
fn split_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, r) = b.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    (len <= r.len()).then(|| r.split_at(len))
}

/// Builds a frame carrying `payload` encoded.
pub fn frame_of<T: serde::Serialize>(
    kind: FrameKind,
    correlation: u64,
    payload: &T,
) -> Result<Frame, ProtocolError> {
    Ok(Frame::new(kind, correlation, encode_payload(payload)?))
}

/// The payload length of a `Response` frame carrying `results` (the fixed codec's
/// encoding of [`ResponseBatch`]: a u64 count, then per result its u16 status, its message
/// and its body as u64 length + bytes).
pub fn response_payload_len(results: &[OpResult]) -> usize {
    8 + results
        .iter()
        .map(|r| 2 + 8 + r.message.len() + 8 + r.body.len())
        .sum::<usize>()
}

/// The encoded `Response` frame of `results` with correlation id `corr`: the bytes of
/// `frame_of(FrameKind::Response, corr, &ResponseBatch { results }).encode()`, written
/// into one buffer of the exact size (no payload buffer grown and then copied into the
/// frame). The caller checks the frame limit with [`response_payload_len`] first.
pub fn encode_response_frame(corr: u64, results: &[OpResult]) -> Vec<u8> {
    let payload = response_payload_len(results);
    let len = u32::try_from(frame::HEADER_BYTES + payload).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(frame::FRAME_OVERHEAD_BYTES + payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(FrameKind::Response as u8);
    out.extend_from_slice(&corr.to_le_bytes());
    out.extend_from_slice(&(results.len() as u64).to_le_bytes());
    for r in results {
        out.extend_from_slice(&r.status.to_le_bytes());
        out.extend_from_slice(&(r.message.len() as u64).to_le_bytes());
        out.extend_from_slice(r.message.as_bytes());
        out.extend_from_slice(&(r.body.len() as u64).to_le_bytes());
        out.extend_from_slice(&r.body);
    }
    out
}

/// Builds an `OpResult` for a failure.
pub fn failed(status: u16, message: impl Into<String>) -> OpResult {
    OpResult {
        status,
        message: message.into(),
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decode_push_batch` gives what the codec gives, and refuses what it refuses: a batch
    /// of ATP items and others, cut at every byte, with a bad bool, a bad UTF-8 string and
    /// a count larger than the bytes.
    #[test]
    fn push_batches_decode_as_the_codec_decodes_them() {
        let atp = |seq: u64, sku: &str, coalesced| {
            PushItem::Atp(WireAtp {
                seq,
                at_ms: 1_700_000_000_000 + seq,
                sku: sku.into(),
                channel: "web".into(),
                previous: 7,
                atp: 6,
                cause: 1,
                transition: 3,
                coalesced,
            })
        };
        let batch = PushBatch {
            items: vec![
                atp(5, "SKU-1", false),
                PushItem::Oversold(WireOversold {
                    seq: 5,
                    at_ms: 9,
                    sku: "SKU-1".into(),
                    oversold: true,
                }),
                atp(6, "SKU-\u{e9}", true),
                PushItem::Position { seq: 6 },
                atp(7, "", false),
            ],
        };
        let bytes = crate::codec::encode(&batch).unwrap();
        assert_eq!(ops::decode_push_batch(&bytes).unwrap(), batch);
        // The borrowed items are the same items, their ATP strings pointing into `bytes`.
        let refs = ops::decode_push_refs(&bytes).unwrap();
        let owned = ops::PushItemRef::all_owned(refs.clone());
        assert_eq!(owned, batch.items);
        match &refs[0] {
            ops::PushItemRef::Atp(a) => {
                assert!(bytes.as_ptr_range().contains(&a.sku.as_ptr()));
                assert_eq!((a.sku, a.channel), ("SKU-1", "web"));
            }
            other => panic!("expected an ATP item, got {other:?}"),
        }
        assert!(matches!(
            &refs[1],
            ops::PushItemRef::Other(PushItem::Oversold(_))
        ));
        let empty = crate::codec::encode(&PushBatch { items: vec![] }).unwrap();
        assert_eq!(ops::decode_push_batch(&empty).unwrap().items, vec![]);
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            assert!(ops::decode_body::<PushBatch>(part).is_err(), "cut {cut}");
            assert!(ops::decode_push_batch(part).is_err(), "cut {cut}");
            assert!(ops::decode_push_refs(part).is_err(), "cut {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ops::decode_push_batch(&trailing).is_err());
        // The first item's `coalesced` byte (the last of its 4 + 8 + 8 + (8 + 5) + (8 + 3)
        // + 4 + 4 + 1 + 1 + 1 bytes, after the 8-byte count) as 2, then its SKU's first
        // byte as an invalid UTF-8 byte.
        let mut bad_bool = bytes.clone();
        bad_bool[8 + 54] = 2;
        assert!(ops::decode_body::<PushBatch>(&bad_bool).is_err());
        assert!(ops::decode_push_batch(&bad_bool).is_err());
        let mut bad_utf8 = bytes.clone();
        bad_utf8[8 + 4 + 16 + 8] = 0xff;
        assert!(ops::decode_body::<PushBatch>(&bad_utf8).is_err());
        assert!(ops::decode_push_batch(&bad_utf8).is_err());
        let mut huge = bytes;
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ops::decode_push_batch(&huge).is_err());
    }

    #[test]
    fn a_response_frame_written_directly_is_the_encoded_response_batch() {
        let cases: Vec<Vec<OpResult>> = vec![
            vec![],
            vec![failed(status::OK, "")],
            vec![
                OpResult {
                    status: status::OK,
                    message: String::new(),
                    body: vec![1, 2, 3, 255],
                },
                failed(status::INTERNAL_ERROR, "a message with \u{e9}"),
                OpResult {
                    status: u16::MAX,
                    message: "m".into(),
                    body: vec![0; 300],
                },
            ],
        ];
        for results in cases {
            let want = frame_of(
                FrameKind::Response,
                0x0102_0304_0506_0708,
                &ResponseBatch {
                    results: results.clone(),
                },
            )
            .expect("frame");
            let got = encode_response_frame(0x0102_0304_0506_0708, &results);
            assert_eq!(got, want.encode());
            assert_eq!(response_payload_len(&results), want.payload.len());
        }
    }

    /// `direct` reads `value`'s encoding as the codec does. Damaged (`how` 1: one byte
    /// changed to `byte` at `at`, 2: cut at `at`, 3: `byte` added after the end), it
    /// accepts only what the codec accepts, as the same value, and `full` (the direct
    /// reading, else the codec) gives the codec's answer.
    fn reads_as_the_codec<T: PartialEq + std::fmt::Debug + serde::Serialize>(
        value: T,
        direct: impl Fn(&[u8]) -> Option<T>,
        full: impl Fn(&[u8]) -> Option<T>,
        codec: impl Fn(&[u8]) -> Option<T>,
        (how, at, byte): (u8, proptest::sample::Index, u8),
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut b = encode_payload(&value).unwrap();
        if how == 0 {
            proptest::prop_assert_eq!(direct(&b), Some(value));
            return Ok(());
        }
        match how {
            1 => {
                let i = at.index(b.len());
                b[i] = byte;
            }
            2 => b.truncate(at.index(b.len())),
            _ => b.push(byte),
        }
        if let Some(d) = direct(&b) {
            proptest::prop_assert_eq!(Some(d), codec(&b));
        }
        proptest::prop_assert_eq!(full(&b), codec(&b));
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// The request batch read directly is the codec's reading of the same bytes, for
        /// every encoded batch; of damaged bytes it accepts only what the codec accepts,
        /// as the same batch.
        #[test]
        fn request_batch_read_directly_as_the_codec_reads_it(
            ops in proptest::collection::vec(
                (proptest::prelude::any::<u16>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                0..8,
            ),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
            how in 0..4u8,
        ) {
            let batch = RequestBatch {
                ops: ops.into_iter().map(|(opcode, body)| RawOp { opcode, body }).collect(),
            };
            reads_as_the_codec(
                batch,
                request_batch_direct,
                |b| decode_request_batch(b).ok(),
                |b| decode_request::<RequestBatch>(b).ok(),
                (how, at, byte),
            )?;
        }

        /// The same for the response batch the client reads directly: every encoded batch
        /// as the codec reads it; of damaged bytes (a changed byte, such as one that makes
        /// a message invalid UTF-8, a cut, a byte after the end) only what the codec
        /// accepts, as the same batch.
        #[test]
        fn response_batch_read_directly_as_the_codec_reads_it(
            results in proptest::collection::vec(
                (
                    proptest::prelude::any::<u16>(),
                    "[a-z\u{e9}\u{4e2d} ]{0,12}",
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                ),
                0..8,
            ),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
            how in 0..4u8,
        ) {
            let batch = ResponseBatch {
                results: results
                    .into_iter()
                    .map(|(status, message, body)| OpResult { status, message, body })
                    .collect(),
            };
            reads_as_the_codec(
                batch,
                response_batch_direct,
                |b| decode_response_batch(b).ok(),
                |b| decode_payload::<ResponseBatch>(b).ok(),
                (how, at, byte),
            )?;
        }
    }
}
