//! The journal: what the engine writes before it acknowledges. A [`LogRecord`] is one
//! SKU's events for one request (or one catalog event), encoded with the fixed codec.
//! The SKU actor appends its record *before* applying the events, inside the same handler,
//! so each SKU's order in the log is exactly its apply order; a request is acknowledged only
//! once its highest sequence number is durable.
//!
//! `Memory` assigns sequence numbers and is "durable" at once: for the in-process benches and
//! tests of the engine alone. `Wal` is the sled write-ahead log with group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::domain::{CatalogEvent, Event, RequestId, ReservationId, SkuCommand, SkuId, TimeMs};
use crate::wal::{Wal, WalError};

use super::EngineError;

/// What a record is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordBody {
    /// Events of one SKU.
    Sku {
        /// The SKU.
        sku: SkuId,
        /// Its events, in apply order.
        events: Vec<Event>,
    },
    /// A catalog change.
    Catalog(CatalogEvent),
    /// A reservation operation spanning several SKUs (fulfil, release, extend, expire)
    /// begins: the command each SKU will be sent. Written before any SKU's part, so a
    /// recovery that finds it with parts missing finishes the operation (roll forward):
    /// once one SKU has sold or released its units the others must follow.
    OpBegun {
        /// The reservation.
        reservation: ReservationId,
        /// Each SKU's command, in the order they are sent.
        parts: Vec<(SkuId, SkuCommand)>,
    },
    /// Every SKU of a multi-SKU cart holds it. Written after the last hold and before the
    /// answer: a cart whose holds are in the log without this record was never
    /// acknowledged, and recovery releases its holds (roll back).
    CartPlaced {
        /// The reservation.
        reservation: ReservationId,
    },
}

/// One log record (format version 1; the WAL frames it with a version byte and checksum).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the engine accepted the request.
    pub at_ms: TimeMs,
    /// The request id (0 for engine-initiated changes: expiry, cart undo, recovery).
    pub request: RequestId,
    /// Fingerprint of the request's command (for idempotency after restart).
    pub fingerprint: u64,
    /// The change.
    pub body: RecordBody,
}

/// Where records go.
#[derive(Debug)]
pub enum Journal {
    /// No persistence: sequence numbers only.
    Memory {
        /// Last assigned sequence number.
        seq: AtomicU64,
    },
    /// The sled write-ahead log.
    Wal(Arc<Wal>),
}

impl Journal {
    /// A memory journal starting after `last_seq`.
    pub fn memory(last_seq: u64) -> Self {
        Journal::Memory {
            seq: AtomicU64::new(last_seq),
        }
    }

    /// Appends a record and returns its sequence number (not yet durable). With
    /// `must`, the log's back-pressure bound does not apply (see [`Wal::append_unbounded`]):
    /// the record finishes work already begun.
    pub fn append(&self, rec: &LogRecord, must: bool) -> Result<u64, EngineError> {
        match self {
            Journal::Memory { seq } => {
                let _ = rec;
                Ok(seq.fetch_add(1, Ordering::Relaxed) + 1)
            }
            Journal::Wal(wal) => {
                let bytes = Self::encode(rec)?;
                let r = if must {
                    wal.append_unbounded(bytes)
                } else {
                    wal.append(bytes)
                };
                r.map_err(Self::error)
            }
        }
    }

    /// The engine's view of a log error: back-pressure is retriable, a closed log is a
    /// shutdown, an oversized record a limit; the rest stops writes (fail-stop).
    pub fn error(e: WalError) -> EngineError {
        match e {
            WalError::Backpressure { .. } => EngineError::Overloaded(e.to_string()),
            WalError::Closed => EngineError::ShuttingDown,
            WalError::RecordTooLarge { .. } => EngineError::Limit(e.to_string()),
            other => EngineError::Storage(other.to_string()),
        }
    }

    /// Waits until every record up to `seq` is durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), EngineError> {
        match self {
            Journal::Memory { .. } => {
                let _ = seq;
                Ok(())
            }
            Journal::Wal(wal) => wal.wait_durable(seq).await.map_err(Self::error),
        }
    }

    /// The last sequence number assigned.
    pub fn last_seq(&self) -> u64 {
        match self {
            Journal::Memory { seq } => seq.load(Ordering::Relaxed),
            Journal::Wal(wal) => wal.last_assigned_seq(),
        }
    }

    /// Stops the log writer after flushing what is pending (no-op in memory).
    pub fn shutdown(&self) {
        if let Journal::Wal(wal) = self {
            wal.shutdown();
        }
    }

    /// Encodes a record with the fixed codec.
    pub fn encode(rec: &LogRecord) -> Result<Vec<u8>, EngineError> {
        codec::encode(rec).map_err(|e| EngineError::Storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_back_pressure_is_a_retriable_overload_not_a_storage_failure() {
        let e = Journal::error(WalError::Backpressure {
            pending_records: 10,
            max_pending_records: 10,
        });
        assert!(matches!(e, EngineError::Overloaded(_)) && e.is_retriable());
        assert_eq!(Journal::error(WalError::Closed), EngineError::ShuttingDown);
        let failed = Journal::error(WalError::Failed("disk full".into()));
        assert!(matches!(failed, EngineError::Storage(_)) && !failed.is_retriable());
        let big = Journal::error(WalError::RecordTooLarge { len: 2, max: 1 });
        assert!(matches!(big, EngineError::Limit(_)) && !big.is_retriable());
    }
}
