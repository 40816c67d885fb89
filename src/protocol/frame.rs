//! Frames: the unit the server and client exchange. A frame is a `u32` little-endian length
//! (of everything after it), a `u8` kind, a `u64` little-endian correlation id and a payload.
//!
//! Parsing is pure: [`Frame::parse`] looks at a byte buffer and answers `Ok(None)` when the
//! frame is not complete yet, an error when it can never become valid (too large, too
//! short), and the frame plus the bytes it used otherwise. The length is checked against the
//! limit *before* anything is allocated, so a hostile length prefix costs nothing.

use thiserror::Error;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of kind + correlation id: the smallest valid length value.
pub const HEADER_BYTES: usize = 1 + 8;
/// Bytes a frame adds to its payload (length prefix, kind, correlation). A payload of at
/// most `max_frame_bytes - FRAME_OVERHEAD_BYTES` fits the limit however it is counted.
pub const FRAME_OVERHEAD_BYTES: usize = LENGTH_BYTES + HEADER_BYTES;
/// Default largest length value (bytes after the prefix): 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → server, first frame: magic, version, name, token.
    Hello = 1,
    /// Server → client: answer to `Hello` (version, server name, limits).
    Welcome = 2,
    /// Client → server: a batch of operations.
    Request = 3,
    /// Server → client: the results of one `Request`, same correlation id.
    Response = 4,
    /// Server → client: a connection-level error; the server closes the connection after it.
    Error = 5,
    /// Server → client: subscription items (`PushBatch`), with the SUBSCRIBE request's
    /// correlation id.
    Push = 6,
}

impl FrameKind {
    /// The kind with this byte, if any.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Request,
            4 => FrameKind::Response,
            5 => FrameKind::Error,
            6 => FrameKind::Push,
            _ => return None,
        })
    }
}

/// A frame that can never be parsed: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The length prefix is over the configured limit.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length prefix is smaller than kind + correlation id.
    #[error("frame length {0} is shorter than the 9-byte header")]
    TooShort(usize),
    /// The kind byte is not a known kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// Client-chosen id echoed by the server on the matching response.
    pub correlation: u64,
    /// The payload (bincode, see docs/protocol.md).
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame.
    pub fn new(kind: FrameKind, correlation: u64, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            correlation,
            payload,
        }
    }

    /// Parses the frame at the start of `buf`: `Ok(None)` if more bytes are needed,
    /// `Ok(Some((frame, used)))` once complete. `max` bounds the length value.
    pub fn parse(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(len) = Self::peek_len(buf, max)? else {
            return Ok(None);
        };
        let total = LENGTH_BYTES + len;
        if buf.len() < total {
            return Ok(None);
        }
        let body = &buf[LENGTH_BYTES..total];
        let kind = FrameKind::from_u8(body[0]).ok_or(FrameError::UnknownKind(body[0]))?;
        let mut corr = [0u8; 8];
        corr.copy_from_slice(&body[1..HEADER_BYTES]);
        let frame = Frame::new(
            kind,
            u64::from_le_bytes(corr),
            body[HEADER_BYTES..].to_vec(),
        );
        Ok(Some((frame, total)))
    }

    /// Reads and checks the length prefix only: `Ok(None)` if fewer than 4 bytes are there.
    /// Lets a reader reserve exactly the frame's size, never more than `max`.
    pub fn peek_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = buf.get(..LENGTH_BYTES) else {
            return Ok(None);
        };
        let mut b = [0u8; LENGTH_BYTES];
        b.copy_from_slice(prefix);
        // u32 always fits usize on the 32/64-bit targets we build for.
        let len = u32::from_le_bytes(b) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if len < HEADER_BYTES {
            return Err(FrameError::TooShort(len));
        }
        Ok(Some(len))
    }

    /// Appends the encoded frame to `out`. Payloads over `u32::MAX - 9` bytes cannot be
    /// framed; callers keep payloads under the frame limit (checked by [`Frame::encoded_len`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(HEADER_BYTES + self.payload.len()).unwrap_or(u32::MAX);
        out.reserve(LENGTH_BYTES + HEADER_BYTES + self.payload.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.correlation.to_le_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The length value this frame will carry (what `max` is compared with).
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_incomplete() {
        let f = Frame::new(FrameKind::Request, 7, vec![1, 2, 3]);
        let b = f.encode();
        assert_eq!(b.len(), 4 + 9 + 3);
        for cut in 0..b.len() {
            assert_eq!(Frame::parse(&b[..cut], 100), Ok(None));
        }
        assert_eq!(Frame::parse(&b, 100), Ok(Some((f, b.len()))));
    }

    #[test]
    fn oversized_short_and_unknown_are_errors() {
        let b = u32::MAX.to_le_bytes();
        assert!(matches!(
            Frame::parse(&b, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            Frame::parse(&3u32.to_le_bytes(), 1024),
            Err(FrameError::TooShort(3))
        );
        let mut b = 9u32.to_le_bytes().to_vec();
        b.push(99);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(Frame::parse(&b, 1024), Err(FrameError::UnknownKind(99)));
    }
}
