//! Rejections: the normal "no" answers of the domain, each with a stable numeric code
//! (documented in docs/protocol.md; never renumbered) and the facts a caller needs to act
//! (which line, how much was available). A rejection leaves state untouched.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::catalog::InUse;
use super::ids::{ChannelId, LocationId, ReservationId, SkuId};

/// Stable numeric codes. `0` is success on the wire; codes below 100 are rejections
/// (business answers), 100 and above are errors (see the protocol's status table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum RejectionCode {
    /// Not enough available-to-promise stock for a line.
    InsufficientStock = 1,
    /// The SKU has never been stocked.
    UnknownSku = 2,
    /// The location is not in the catalog.
    UnknownLocation = 3,
    /// The channel is not in the catalog.
    UnknownChannel = 4,
    /// A line names a location the channel may not sell from.
    LocationNotInChannel = 5,
    /// No active reservation with that id.
    ReservationNotFound = 6,
    /// A reservation with that id is already active (or in flight) with other content.
    ReservationExists = 7,
    /// The request id was already used for a request with different content.
    IdempotencyConflict = 8,
    /// Compare-and-set failed: the current value is not the expected one.
    CompareFailed = 9,
    /// Fulfilling more than the reservation holds.
    ExceedsHold = 10,
    /// The change would take a quantity below zero or above the limit.
    QuantityOutOfRange = 11,
    /// The request is malformed or breaks a documented limit.
    InvalidRequest = 12,
    /// The SKU's mailbox is full: retry after a short back-off.
    Busy = 13,
    /// The hold has not reached its expiry time (internal; expiry raced with an extend).
    NotExpired = 14,
    /// The reservation's expiry time has passed; it is being released.
    ReservationExpired = 15,
    /// The same request id is still being processed, or another request on the same
    /// reservation is: retry after a short back-off.
    InProgress = 16,
    /// A delete of a location or channel that something still refers to (facts: what).
    InUse = 17,
    /// The server runs with `--intelligence off`: velocity, at-risk and rebalance reads are
    /// not served (nothing is recorded for them).
    IntelligenceOff = 19,
    /// No position is stored under that subscription name.
    SubscriptionNotFound = 20,
}

/// A business rejection with its facts.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Rejection {
    /// Not enough ATP for line `line` (index in the request).
    #[error(
        "insufficient stock for line {line} ({sku}): requested {requested}, available {available}"
    )]
    InsufficientStock {
        /// Index of the failing line in the request.
        line: u16,
        /// The SKU of that line.
        sku: SkuId,
        /// Units requested for that SKU (lines naming the same SKU are summed).
        requested: u32,
        /// Units that were available to this request.
        available: u32,
    },
    /// The SKU has never been stocked.
    #[error("unknown sku {0}")]
    UnknownSku(SkuId),
    /// The location is not in the catalog.
    #[error("unknown location {0}")]
    UnknownLocation(LocationId),
    /// The channel is not in the catalog.
    #[error("unknown channel {0}")]
    UnknownChannel(ChannelId),
    /// The location is not one the channel sells from.
    #[error("location {location} is not a source of channel {channel}")]
    LocationNotInChannel {
        /// The location named by the line.
        location: LocationId,
        /// The reservation's channel.
        channel: ChannelId,
    },
    /// No active reservation with that id.
    #[error("reservation {0:032x} not found")]
    ReservationNotFound(ReservationId),
    /// A reservation with that id already exists.
    #[error("reservation {0:032x} already exists")]
    ReservationExists(ReservationId),
    /// The request id was used before with other content.
    #[error("request id {0:032x} was already used for a different request")]
    IdempotencyConflict(u128),
    /// Compare-and-set failed.
    #[error("compare-and-set failed: expected {expected}, actual {actual}")]
    CompareFailed {
        /// The value the caller expected.
        expected: u32,
        /// The value found.
        actual: u32,
    },
    /// Fulfilling more than held.
    #[error("cannot fulfill {requested} of {sku}: reservation holds {held}")]
    ExceedsHold {
        /// The SKU.
        sku: SkuId,
        /// Units still held.
        held: u32,
        /// Units asked for.
        requested: u32,
    },
    /// A quantity would leave its range.
    #[error("{what}: {have} available, change of {change} would leave 0..={max}")]
    QuantityOutOfRange {
        /// Which quantity.
        what: String,
        /// Its current value.
        have: u32,
        /// The signed change asked for.
        change: i64,
        /// The upper limit.
        max: u32,
    },
    /// Malformed or over a limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Mailbox full; retriable.
    #[error("busy: the sku's mailbox is full, retry")]
    Busy,
    /// Not yet expired (internal).
    #[error("reservation {0:032x} has not expired")]
    NotExpired(ReservationId),
    /// Past its expiry time.
    #[error("reservation {0:032x} has expired")]
    ReservationExpired(ReservationId),
    /// Same request id still in flight; retriable.
    #[error("request {0:032x} is still in progress, retry")]
    InProgress(u128),
    /// Another request on the same reservation is in flight, or the reservation is still
    /// being placed (code 16, like a resend in flight); retriable.
    #[error("reservation {0:032x} has another request in progress, retry")]
    ReservationBusy(ReservationId),
    /// A delete refused: something still refers to the location or channel.
    #[error("{0}")]
    InUse(Box<InUse>),
    /// No position is stored under this subscription name.
    #[error("no position is stored under the subscription name {0:?}")]
    SubscriptionNotFound(String),
    /// Demand intelligence is switched off (`--intelligence off`): nothing to answer from.
    #[error(
        "demand intelligence is off on this server (--intelligence off): velocity, at-risk \
         and rebalance reads are not served"
    )]
    IntelligenceOff,
}

impl Rejection {
    /// Shorthand for [`Rejection::InvalidRequest`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Rejection::InvalidRequest(msg.into())
    }

    /// The stable numeric code.
    pub fn code(&self) -> RejectionCode {
        use RejectionCode as C;
        match self {
            Rejection::InsufficientStock { .. } => C::InsufficientStock,
            Rejection::UnknownSku(_) => C::UnknownSku,
            Rejection::UnknownLocation(_) => C::UnknownLocation,
            Rejection::UnknownChannel(_) => C::UnknownChannel,
            Rejection::LocationNotInChannel { .. } => C::LocationNotInChannel,
            Rejection::ReservationNotFound(_) => C::ReservationNotFound,
            Rejection::ReservationExists(_) => C::ReservationExists,
            Rejection::IdempotencyConflict(_) => C::IdempotencyConflict,
            Rejection::CompareFailed { .. } => C::CompareFailed,
            Rejection::ExceedsHold { .. } => C::ExceedsHold,
            Rejection::QuantityOutOfRange { .. } => C::QuantityOutOfRange,
            Rejection::InvalidRequest(_) => C::InvalidRequest,
            Rejection::Busy => C::Busy,
            Rejection::NotExpired(_) => C::NotExpired,
            Rejection::ReservationExpired(_) => C::ReservationExpired,
            Rejection::InProgress(_) | Rejection::ReservationBusy(_) => C::InProgress,
            Rejection::InUse(_) => C::InUse,
            Rejection::SubscriptionNotFound(_) => C::SubscriptionNotFound,
            Rejection::IntelligenceOff => C::IntelligenceOff,
        }
    }

    /// Whether retrying the same request later may succeed without any other change.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Rejection::Busy | Rejection::InProgress(_) | Rejection::ReservationBusy(_)
        )
    }
}
