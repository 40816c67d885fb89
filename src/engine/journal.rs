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

use crate::codec::{self, put_str, put_u64, put_variant};
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

    /// Encodes a record with the fixed codec. A SKU record (nearly every record: holds,
    /// sales, releases) is written field by field into a buffer of its exact size, the
    /// bytes serde would write (`direct_encoding_is_the_codecs`); the rest go through serde.
    pub fn encode(rec: &LogRecord) -> Result<Vec<u8>, EngineError> {
        match &rec.body {
            RecordBody::Sku { sku, events } => {
                let mut out = Vec::with_capacity(sku_record_len(sku, events));
                put_u64(&mut out, rec.at_ms);
                out.extend_from_slice(&rec.request.to_le_bytes());
                put_u64(&mut out, rec.fingerprint);
                put_variant(&mut out, 0);
                put_str(&mut out, sku.as_str());
                put_u64(&mut out, events.len() as u64);
                for e in events {
                    put_event(&mut out, e)?;
                }
                Ok(out)
            }
            _ => codec::encode(rec).map_err(|e| EngineError::Storage(e.to_string())),
        }
    }
}

// Written in the fixed codec's layout (`codec::put_u64` and the rest).

fn put_allocations(out: &mut Vec<u8>, allocations: &[crate::domain::Allocation]) {
    put_u64(out, allocations.len() as u64);
    for a in allocations {
        put_str(out, a.location.as_str());
        out.extend_from_slice(&a.qty.to_le_bytes());
    }
}

fn allocations_len(allocations: &[crate::domain::Allocation]) -> usize {
    8 + allocations
        .iter()
        .map(|a| 8 + a.location.as_str().len() + 4)
        .sum::<usize>()
}

/// Bytes of a SKU record's encoding, a close upper bound for events written by serde.
fn sku_record_len(sku: &SkuId, events: &[Event]) -> usize {
    let head = 8 + 16 + 8 + 4 + 8 + sku.as_str().len() + 8;
    head + events
        .iter()
        .map(|e| match e {
            Event::HoldPlaced {
                channel,
                allocations,
                ..
            } => 4 + 16 + 8 + channel.as_str().len() + 8 + 2 + allocations_len(allocations),
            Event::HoldFulfilled { allocations, .. } => 4 + 16 + allocations_len(allocations) + 1,
            Event::HoldReleased { allocations, .. } => 4 + 16 + allocations_len(allocations) + 4,
            Event::HoldExtended { .. } => 4 + 16 + 8,
            _ => 64,
        })
        .sum::<usize>()
}

/// One event as serde writes it; the reservation events field by field (their variant
/// indexes are their places in [`Event`]), the others through serde.
fn put_event(out: &mut Vec<u8>, e: &Event) -> Result<(), EngineError> {
    match e {
        Event::HoldPlaced {
            reservation,
            channel,
            expires_at_ms,
            cart_skus,
            allocations,
        } => {
            put_variant(out, 0);
            out.extend_from_slice(&reservation.to_le_bytes());
            put_str(out, channel.as_str());
            put_u64(out, *expires_at_ms);
            out.extend_from_slice(&cart_skus.to_le_bytes());
            put_allocations(out, allocations);
        }
        Event::HoldFulfilled {
            reservation,
            allocations,
            closed,
        } => {
            put_variant(out, 1);
            out.extend_from_slice(&reservation.to_le_bytes());
            put_allocations(out, allocations);
            out.push(u8::from(*closed));
        }
        Event::HoldReleased {
            reservation,
            allocations,
            reason,
        } => {
            put_variant(out, 2);
            out.extend_from_slice(&reservation.to_le_bytes());
            put_allocations(out, allocations);
            codec::encode_into(reason, out).map_err(|e| EngineError::Storage(e.to_string()))?;
        }
        Event::HoldExtended {
            reservation,
            expires_at_ms,
        } => {
            put_variant(out, 3);
            out.extend_from_slice(&reservation.to_le_bytes());
            put_u64(out, *expires_at_ms);
        }
        other => codec::encode_into(other, out).map_err(|e| EngineError::Storage(e.to_string()))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Allocation, ChannelId, LocationId, ReleaseReason};

    fn allocations(parts: &[(&str, u32)]) -> Vec<Allocation> {
        parts
            .iter()
            .map(|(l, q)| Allocation {
                location: LocationId::new(l).expect("location"),
                qty: *q,
            })
            .collect()
    }

    #[test]
    fn direct_encoding_is_the_codecs() {
        let placed = Event::HoldPlaced {
            reservation: u128::MAX - 7,
            channel: ChannelId::new("web-fr").expect("channel"),
            expires_at_ms: 1_234_567,
            cart_skus: 3,
            allocations: allocations(&[("wh-a", 2), ("store-long-name-b", 1_000_000_000)]),
        };
        let events = vec![
            vec![placed.clone()],
            vec![],
            vec![Event::HoldPlaced {
                reservation: 1,
                channel: ChannelId::new("w").expect("channel"),
                expires_at_ms: 0,
                cart_skus: u16::MAX,
                allocations: vec![],
            }],
            vec![Event::HoldFulfilled {
                reservation: 5,
                allocations: allocations(&[("wh-a", 1)]),
                closed: true,
            }],
            vec![Event::HoldFulfilled {
                reservation: 5,
                allocations: allocations(&[]),
                closed: false,
            }],
            vec![
                Event::HoldReleased {
                    reservation: 6,
                    allocations: allocations(&[("wh-a", 4), ("wh-b", 9)]),
                    reason: ReleaseReason::CartAborted,
                },
                Event::HoldReleased {
                    reservation: 7,
                    allocations: allocations(&[("wh-a", 4)]),
                    reason: ReleaseReason::Recovery,
                },
            ],
            vec![
                Event::HoldExtended {
                    reservation: 8,
                    expires_at_ms: u64::MAX,
                },
                placed,
            ],
        ];
        for (i, events) in events.into_iter().enumerate() {
            let rec = LogRecord {
                at_ms: 1_700_000_000_000 + i as u64,
                request: (i as u128) << 70 | 3,
                fingerprint: u64::MAX - i as u64,
                body: RecordBody::Sku {
                    sku: SkuId::new("SKU-0042").expect("sku"),
                    events,
                },
            };
            let want = codec::encode(&rec).expect("serde");
            assert_eq!(Journal::encode(&rec).expect("direct"), want, "{rec:?}");
            let back: LogRecord = codec::decode(&want).expect("decode");
            assert_eq!(back, rec);
        }
        let catalog = LogRecord {
            at_ms: 1,
            request: 2,
            fingerprint: 3,
            body: RecordBody::CartPlaced { reservation: 4 },
        };
        assert_eq!(
            Journal::encode(&catalog).expect("serde path"),
            codec::encode(&catalog).expect("serde")
        );
    }

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
