//! The engine's request and answer types: what the TCP protocol, the tests and the load
//! generator send and receive. Every mutating request carries a client-chosen request id
//! (idempotency key); every answer is an [`Outcome`] (the committed events), a
//! [`Rejection`] or an [`EngineError`](super::EngineError), wrapped in [`Failure`].

use serde::{Deserialize, Serialize};

use crate::domain::{
    CatalogCommand, CatalogEvent, ChannelId, Event, LocationId, Rejection, RequestId,
    ReservationId, SkuCommand, SkuId,
};

use super::EngineError;

/// One line of a reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveLine {
    /// The SKU.
    pub sku: SkuId,
    /// Units.
    pub qty: u32,
    /// Take them from this location, or `None` to source by the channel's priority.
    pub location: Option<LocationId>,
}

/// Reserve a cart: every line or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    /// Client-chosen reservation id.
    pub reservation: ReservationId,
    /// The channel selling.
    pub channel: ChannelId,
    /// Lines; lines naming the same SKU are summed before the check.
    pub lines: Vec<ReserveLine>,
    /// May one line be sourced from several locations.
    pub allow_split: bool,
    /// Hold time from now, in ms (at most `MAX_HOLD_DURATION_MS`).
    pub ttl_ms: u64,
}

/// A mutating command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Reserve a cart.
    Reserve(ReserveRequest),
    /// Fulfil a reservation whole (`lines: None`) or some units of some SKUs.
    Fulfill {
        /// The reservation.
        reservation: ReservationId,
        /// Per SKU units to fulfil, or everything.
        lines: Option<Vec<(SkuId, u32)>>,
    },
    /// Release a reservation whole.
    Release {
        /// The reservation.
        reservation: ReservationId,
    },
    /// Give a reservation a new expiry, `ttl_ms` from now.
    Extend {
        /// The reservation.
        reservation: ReservationId,
        /// New hold time from now.
        ttl_ms: u64,
    },
    /// A stock command on one SKU: `Adjust`, `SetOnHand`, `Move`, `Transfer`,
    /// `SetSafetyStock` or `SetIncoming` (reservation commands are refused here).
    Stock {
        /// The SKU.
        sku: SkuId,
        /// The command.
        command: SkuCommand,
    },
    /// Create or update a location or channel.
    Catalog(CatalogCommand),
}

/// A mutating request: an idempotency key and a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen, non-zero. Same id and same command: the original outcome is returned.
    /// Same id, different command: `IdempotencyConflict`.
    pub id: RequestId,
    /// What to do.
    pub command: Command,
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// An event of one SKU.
    Sku {
        /// The SKU.
        sku: SkuId,
        /// The event.
        event: Event,
    },
    /// A catalog event.
    Catalog(CatalogEvent),
}

/// The answer to an accepted request: its changes, durable at and below `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Highest log sequence number of the request's changes.
    pub seq: u64,
    /// The changes, in the order they were applied.
    pub changes: Vec<Change>,
}

/// Why a request did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// A normal business answer (stable code, state unchanged).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A failure of the engine (storage, shutdown): writes stop.
    #[error(transparent)]
    Error(#[from] EngineError),
}

impl Failure {
    /// The rejection, if this is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Failure::Rejected(r) => Some(r),
            Failure::Error(_) => None,
        }
    }
}
