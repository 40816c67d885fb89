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

/// Builds a frame carrying `payload` encoded.
pub fn frame_of<T: serde::Serialize>(
    kind: FrameKind,
    correlation: u64,
    payload: &T,
) -> Result<Frame, ProtocolError> {
    Ok(Frame::new(kind, correlation, encode_payload(payload)?))
}

/// Builds an `OpResult` for a failure.
pub fn failed(status: u16, message: impl Into<String>) -> OpResult {
    OpResult {
        status,
        message: message.into(),
        body: Vec::new(),
    }
}
