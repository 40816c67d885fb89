//! A non-zero status as a typed value: one variant per stable code of docs/protocol.md
//! (section 8), the facts the protocol defines for it decoded, and whether a retry of the
//! same request can help. The numbers themselves stay in `protocol::status`; this is the
//! client's view of them, so a caller matches on `Rejection::InsufficientStock(..)` instead
//! of comparing with `1`. `ClientError::Status` carries one beside the raw status.

use crate::protocol::{self, status, CompareFacts, InUseFacts, InsufficientFacts};

/// What a non-zero status means. Codes `1..=99` are the engine's rejections (business
/// answers: nothing was changed), `100` and above errors of the server or of the request.
/// A code this client does not know (a newer server) is [`Rejection::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// 1: not enough available-to-promise stock for a line. The facts (which line, how
    /// much was available) are `None` only if the server sent none.
    InsufficientStock(Option<InsufficientFacts>),
    /// 2: the SKU has never been stocked.
    UnknownSku,
    /// 3: the location is not in the catalog.
    UnknownLocation,
    /// 4: the channel is not in the catalog.
    UnknownChannel,
    /// 5: a line names a location the channel does not sell from.
    LocationNotInChannel,
    /// 6: no active reservation with that id.
    ReservationNotFound,
    /// 7: a reservation with that id exists with other content.
    ReservationExists,
    /// 8: the request id was used for a different request.
    IdempotencyConflict,
    /// 9: a set-on-hand compare-and-set failed (expected and actual value, if sent).
    CompareFailed(Option<CompareFacts>),
    /// 10: fulfilling more than the reservation holds.
    ExceedsHold,
    /// 11: the change would take a quantity out of 0..=10^9.
    QuantityOutOfRange,
    /// 12: malformed or over a domain limit.
    InvalidRequest,
    /// 13: back-pressure (a full SKU mailbox, the log's queue, the server's memory budget);
    /// nothing was changed. Retriable.
    Busy,
    /// 14: internal (expiry raced an extend); not expected on the wire.
    NotExpired,
    /// 15: the reservation's expiry time has passed (FULFIL, EXTEND), or the expiry is
    /// releasing it (also RELEASE).
    ReservationExpired,
    /// 16: the first attempt with this request id is still running, or another request on
    /// the same reservation is. Retriable.
    InProgress,
    /// 17: a delete of a location or channel that something still refers to; the facts
    /// say what (channels sourcing it, SKUs holding stock or holds there, open
    /// reservations), `None` only if the server sent none. Not retriable as such: the
    /// references must go first.
    InUse(Option<Box<InUseFacts>>),
    /// 19: the server runs with `--intelligence off` (velocity, at-risk, rebalance reads).
    IntelligenceOff,
    /// 20: no position is stored under that subscription name.
    SubscriptionNotFound,
    /// 21: `BACKUP` refused its target path (relative, not empty, ...). Nothing written.
    BackupRefused,
    /// 22: `BACKUP` failed writing (the target's disk, permissions); may succeed once the
    /// cause is fixed.
    BackupFailed,
    /// 100: the log could not be written or data is corrupt; writes are stopped.
    StorageFailure,
    /// 101: the server or engine is shutting down. Retriable (later, or elsewhere).
    ShuttingDown,
    /// 102: a frame, payload or body was malformed.
    ProtocolError,
    /// 103: missing or unknown auth token.
    Unauthorized,
    /// 104: this connection's role may not run the operation.
    Forbidden,
    /// 105: the opcode is reserved for a later version.
    NotImplemented,
    /// 106: the opcode is unknown.
    UnknownOperation,
    /// 107: more operations in one request than the server's batch limit.
    TooManyOperations,
    /// 108: a configured limit was exceeded.
    LimitExceeded,
    /// 109: the connection was idle too long.
    IdleTimeout,
    /// 110: the server failed to build an answer (the operation may have been applied).
    InternalError,
    /// 111: the client's protocol version is not supported.
    UnsupportedVersion,
    /// A code this client does not know.
    Other(u16),
}

impl Rejection {
    /// The typed form of a non-zero `status` and its result `body` (where the protocol
    /// defines facts for the status, they are decoded from it; undecodable facts are
    /// `None`). `None` for status 0, which is success.
    pub fn from_status(status: u16, body: &[u8]) -> Option<Rejection> {
        use Rejection as R;
        Some(match status {
            status::OK => return None,
            1 => R::InsufficientStock(protocol::decode_payload(body).ok()),
            2 => R::UnknownSku,
            3 => R::UnknownLocation,
            4 => R::UnknownChannel,
            5 => R::LocationNotInChannel,
            6 => R::ReservationNotFound,
            7 => R::ReservationExists,
            8 => R::IdempotencyConflict,
            9 => R::CompareFailed(protocol::decode_payload(body).ok()),
            10 => R::ExceedsHold,
            11 => R::QuantityOutOfRange,
            status::INVALID_REQUEST => R::InvalidRequest,
            13 => R::Busy,
            14 => R::NotExpired,
            15 => R::ReservationExpired,
            16 => R::InProgress,
            17 => R::InUse(protocol::decode_payload(body).ok().map(Box::new)),
            19 => R::IntelligenceOff,
            20 => R::SubscriptionNotFound,
            status::BACKUP_REFUSED => R::BackupRefused,
            status::BACKUP_FAILED => R::BackupFailed,
            status::STORAGE_FAILURE => R::StorageFailure,
            status::SHUTTING_DOWN => R::ShuttingDown,
            status::PROTOCOL_ERROR => R::ProtocolError,
            status::UNAUTHORIZED => R::Unauthorized,
            status::FORBIDDEN => R::Forbidden,
            status::NOT_IMPLEMENTED => R::NotImplemented,
            status::UNKNOWN_OPERATION => R::UnknownOperation,
            status::TOO_MANY_OPERATIONS => R::TooManyOperations,
            status::LIMIT_EXCEEDED => R::LimitExceeded,
            status::IDLE_TIMEOUT => R::IdleTimeout,
            status::INTERNAL_ERROR => R::InternalError,
            status::UNSUPPORTED_VERSION => R::UnsupportedVersion,
            other => R::Other(other),
        })
    }

    /// The stable numeric code (docs/protocol.md, section 8).
    pub fn status(&self) -> u16 {
        use Rejection as R;
        match self {
            R::InsufficientStock(_) => 1,
            R::UnknownSku => 2,
            R::UnknownLocation => 3,
            R::UnknownChannel => 4,
            R::LocationNotInChannel => 5,
            R::ReservationNotFound => 6,
            R::ReservationExists => 7,
            R::IdempotencyConflict => 8,
            R::CompareFailed(_) => 9,
            R::ExceedsHold => 10,
            R::QuantityOutOfRange => 11,
            R::InvalidRequest => status::INVALID_REQUEST,
            R::Busy => 13,
            R::NotExpired => 14,
            R::ReservationExpired => 15,
            R::InProgress => 16,
            R::InUse(_) => 17,
            R::IntelligenceOff => 19,
            R::SubscriptionNotFound => 20,
            R::BackupRefused => status::BACKUP_REFUSED,
            R::BackupFailed => status::BACKUP_FAILED,
            R::StorageFailure => status::STORAGE_FAILURE,
            R::ShuttingDown => status::SHUTTING_DOWN,
            R::ProtocolError => status::PROTOCOL_ERROR,
            R::Unauthorized => status::UNAUTHORIZED,
            R::Forbidden => status::FORBIDDEN,
            R::NotImplemented => status::NOT_IMPLEMENTED,
            R::UnknownOperation => status::UNKNOWN_OPERATION,
            R::TooManyOperations => status::TOO_MANY_OPERATIONS,
            R::LimitExceeded => status::LIMIT_EXCEEDED,
            R::IdleTimeout => status::IDLE_TIMEOUT,
            R::InternalError => status::INTERNAL_ERROR,
            R::UnsupportedVersion => status::UNSUPPORTED_VERSION,
            R::Other(s) => *s,
        }
    }

    /// The status's short stable name (`insufficient_stock`, `busy`, ...).
    pub fn name(&self) -> &'static str {
        status::name(self.status())
    }

    /// Whether the same request (same request id) may succeed if sent again later,
    /// unchanged: `Busy`, `InProgress` and `ShuttingDown`. The others need a change first
    /// (a restock for `InsufficientStock`) or never will.
    pub fn is_retriable(&self) -> bool {
        status::is_retriable(self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_code_has_its_own_variant_and_round_trips() {
        for s in (1..=17).chain(19..=22).chain(100..=111) {
            let r = Rejection::from_status(s, &[]).expect("non-zero");
            assert_eq!(r.status(), s);
            assert_ne!(r, Rejection::Other(s), "{s} has no variant");
            assert_eq!(r.name(), status::name(s));
            assert_ne!(r.name(), "unknown_status");
        }
        assert_eq!(Rejection::from_status(0, &[]), None);
        assert_eq!(Rejection::from_status(57, &[]), Some(Rejection::Other(57)));
        assert_eq!(Rejection::Other(57).status(), 57);
    }

    #[test]
    fn only_back_pressure_in_progress_and_shutdown_are_retriable() {
        let retriable: Vec<u16> = (1..=200)
            .filter(|s| Rejection::from_status(*s, &[]).is_some_and(|r| r.is_retriable()))
            .collect();
        assert_eq!(retriable, [13, 16, status::SHUTTING_DOWN]);
    }

    #[test]
    fn facts_are_decoded_for_insufficient_stock_and_compare_failed() {
        let facts = InsufficientFacts {
            line: 2,
            sku: "TEE".into(),
            requested: 9,
            available: 5,
        };
        let body = protocol::encode_payload(&facts).unwrap();
        assert_eq!(
            Rejection::from_status(1, &body),
            Some(Rejection::InsufficientStock(Some(facts)))
        );
        let cmp = CompareFacts {
            expected: 3,
            actual: 4,
        };
        let body = protocol::encode_payload(&cmp).unwrap();
        assert_eq!(
            Rejection::from_status(9, &body),
            Some(Rejection::CompareFailed(Some(cmp)))
        );
        let in_use = InUseFacts {
            kind: protocol::in_use_kind::LOCATION,
            id: "wh-a".into(),
            channels: vec!["web".into()],
            channels_total: 1,
            skus_with_stock: 3,
            skus_with_holds: 1,
            skus_with_safety_stock: 0,
            example_sku: "TEE".into(),
            reservations: 0,
            example_reservation: 0,
        };
        let body = protocol::encode_payload(&in_use).unwrap();
        let r = Rejection::from_status(17, &body).unwrap();
        assert_eq!(r, Rejection::InUse(Some(Box::new(in_use))));
        assert!(!r.is_retriable());
        assert_eq!(r.name(), "in_use");
        assert_eq!(
            Rejection::from_status(17, &[9]),
            Some(Rejection::InUse(None))
        );
        // Missing or broken facts are not invented.
        assert_eq!(
            Rejection::from_status(1, &[1, 2]),
            Some(Rejection::InsufficientStock(None))
        );
        assert_eq!(
            Rejection::from_status(9, &[]),
            Some(Rejection::CompareFailed(None))
        );
    }
}
