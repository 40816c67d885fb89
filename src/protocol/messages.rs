//! Wire messages: the bincode payloads of each frame kind and of each operation. They mirror
//! the engine's types but are owned here so the wire format is documented, stable and
//! independent of internal refactors (ids are plain strings on the wire; the server
//! validates them and answers `InvalidRequest` (12) for bad ones).
//!
//! Field order is the encoding order (bincode 2, fixed-width little-endian integers,
//! strings and sequences with a `u64` length, `Option` as a `u8` tag, enums as a `u32`
//! variant index). Never reorder fields; add new operations instead.

use serde::{Deserialize, Serialize};

/// Magic bytes opening the `Hello` payload.
pub const MAGIC: [u8; 4] = *b"OMNI";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// `Hello` payload (client → server, first frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be `b"OMNI"`.
    pub magic: [u8; 4],
    /// Must be 1.
    pub version: u16,
    /// Free client name (logs).
    pub client_name: String,
    /// Auth token; empty when the server runs without tokens.
    pub token: String,
}

/// `Welcome` payload (server → client): the server's version and limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version (1).
    pub version: u16,
    /// Server name.
    pub server_name: String,
    /// Largest frame length value the server accepts.
    pub max_frame_bytes: u32,
    /// Most operations in one request frame.
    pub max_batch_ops: u32,
    /// Most lines in one reservation.
    pub max_lines_per_reservation: u32,
    /// Most request frames in flight per connection before the server stops reading.
    pub max_in_flight: u32,
}

/// `Error` payload (server → client, then close).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Status code (100+).
    pub status: u16,
    /// Human-readable reason.
    pub message: String,
}

/// One operation of a request: an opcode and its bincode-encoded body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawOp {
    /// Opcode (see [`super::ops::opcode`]).
    pub opcode: u16,
    /// The operation's body.
    pub body: Vec<u8>,
}

/// `Request` payload: independent operations, answered in the same order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBatch {
    /// The operations.
    pub ops: Vec<RawOp>,
}

/// The result of one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// 0 = ok, 1..=99 rejection, 100+ error.
    pub status: u16,
    /// Empty on success; the reason otherwise.
    pub message: String,
    /// On success the operation's result body; on some rejections their facts (see docs).
    pub body: Vec<u8>,
}

/// `Response` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseBatch {
    /// One result per operation, in request order (or one `TOO_MANY_OPERATIONS` result).
    pub results: Vec<OpResult>,
}

/// Facts of an `InsufficientStock` (1) rejection, carried in [`OpResult::body`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsufficientFacts {
    /// Index of the failing line.
    pub line: u16,
    /// Its SKU.
    pub sku: String,
    /// Units requested for that SKU.
    pub requested: u32,
    /// Units available to the request.
    pub available: u32,
}

/// Facts of a `CompareFailed` (9) rejection, carried in [`OpResult::body`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareFacts {
    /// Value the caller expected.
    pub expected: u32,
    /// Value found.
    pub actual: u32,
}

// ---- operation bodies ----------------------------------------------------------------

/// An operation without parameters (ping, server info, list locations, list channels).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// One reservation line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLine {
    /// SKU id.
    pub sku: String,
    /// Units (1..=10^9).
    pub qty: u32,
    /// Location to take them from, or `None` for the channel's sourcing order.
    pub location: Option<String>,
}

/// Reserve a cart (all lines or none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    /// Idempotency key, non-zero.
    pub request_id: u128,
    /// Client-chosen reservation id.
    pub reservation: u128,
    /// Selling channel.
    pub channel: String,
    /// Lines.
    pub lines: Vec<WireLine>,
    /// May one line be sourced from several locations.
    pub allow_split: bool,
    /// Hold time in ms.
    pub ttl_ms: u64,
}

/// Fulfil a reservation whole or per SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfill {
    /// Idempotency key.
    pub request_id: u128,
    /// The reservation.
    pub reservation: u128,
    /// `None`: everything; else units per SKU.
    pub lines: Option<Vec<(String, u32)>>,
}

/// Release a reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Idempotency key.
    pub request_id: u128,
    /// The reservation.
    pub reservation: u128,
}

/// Extend a reservation: new expiry `ttl_ms` from now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extend {
    /// Idempotency key.
    pub request_id: u128,
    /// The reservation.
    pub reservation: u128,
    /// New hold time in ms.
    pub ttl_ms: u64,
}

/// Why stock was adjusted (`u32` variant index on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireAdjustReason {
    /// 0: goods received.
    Receipt,
    /// 1: loss, theft.
    Shrinkage,
    /// 2: damaged.
    Damage,
    /// 3: customer return.
    ReturnToStock,
    /// 4: correction.
    Correction,
}

/// A unit's state at a location (`u32` variant index on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireStockState {
    /// 0: sellable on hand.
    Sellable,
    /// 1: damaged.
    Damaged,
    /// 2: in quality control.
    QualityControl,
}

/// Change sellable on hand by a signed delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjust {
    /// Idempotency key.
    pub request_id: u128,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// Signed change, non-zero.
    pub delta: i64,
    /// Why.
    pub reason: WireAdjustReason,
    /// Free reference (≤ 128 bytes).
    pub reference: String,
}

/// Set sellable on hand, optionally compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetOnHand {
    /// Idempotency key.
    pub request_id: u128,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// New value.
    pub on_hand: u32,
    /// Only if the current value equals this.
    pub expected: Option<u32>,
    /// Free reference.
    pub reference: String,
}

/// Move units between stock states at one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStock {
    /// Idempotency key.
    pub request_id: u128,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// From state.
    pub from: WireStockState,
    /// To state.
    pub to: WireStockState,
    /// Units.
    pub qty: u32,
}

/// Move unreserved sellable units between locations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Idempotency key.
    pub request_id: u128,
    /// SKU.
    pub sku: String,
    /// From location.
    pub from: String,
    /// To location.
    pub to: String,
    /// Units.
    pub qty: u32,
    /// Free reference.
    pub reference: String,
}

/// Set safety stock at a location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSafetyStock {
    /// Idempotency key.
    pub request_id: u128,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// Units.
    pub qty: u32,
}

/// Set expected receipts at a location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetIncoming {
    /// Idempotency key.
    pub request_id: u128,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// Units.
    pub qty: u32,
    /// Expected arrival, ms since the epoch (0 = unknown).
    pub eta_ms: u64,
}

/// Kind of location (`u32` variant index on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireLocationKind {
    /// 0
    Warehouse,
    /// 1
    Store,
    /// 2
    DarkStore,
    /// 3
    MarketplaceFulfilled,
    /// 4
    Dropship,
}

/// A location (upsert body and list element).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLocation {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: WireLocationKind,
    /// Region code.
    pub region: String,
}

/// A channel (upsert body and list element).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChannel {
    /// Id.
    pub id: String,
    /// Locations in sourcing priority order.
    pub locations: Vec<String>,
    /// Safety buffer per SKU.
    pub buffer: u32,
    /// Cap per SKU.
    pub cap: Option<u32>,
}

/// Upsert a location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertLocation {
    /// Idempotency key.
    pub request_id: u128,
    /// The location.
    pub location: WireLocation,
}

/// Upsert a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertChannel {
    /// Idempotency key.
    pub request_id: u128,
    /// The channel.
    pub channel: WireChannel,
}

/// Read one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSku {
    /// SKU id.
    pub sku: String,
}

/// Read several SKUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSkus {
    /// SKU ids (at most the batch limit).
    pub skus: Vec<String>,
}

/// Read one reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReservation {
    /// The reservation.
    pub reservation: u128,
}

// ---- result bodies -------------------------------------------------------------------

/// Result of ping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Server wall clock, ms since the epoch.
    pub server_time_ms: u64,
}

/// Result of server info.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server name.
    pub server_name: String,
    /// Crate version.
    pub server_version: String,
    /// Protocol version.
    pub protocol_version: u16,
    /// SKUs known.
    pub skus: u64,
    /// Active reservations.
    pub reservations: u64,
    /// Open connections.
    pub connections: u64,
}

/// Units of a hold at one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAllocation {
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// Units.
    pub qty: u32,
}

/// Result of reserve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// Log sequence number at which it is durable.
    pub seq: u64,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: u64,
    /// Where each SKU's units were taken.
    pub allocations: Vec<WireAllocation>,
}

/// Result of every other mutating operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Log sequence number at which the change is durable.
    pub seq: u64,
    /// Number of events the change produced.
    pub changes: u32,
}

/// One SKU bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBucket {
    /// Location.
    pub location: String,
    /// Sellable on hand.
    pub on_hand: u32,
    /// Reserved.
    pub reserved: u32,
    /// Safety stock.
    pub safety_stock: u32,
    /// Damaged.
    pub damaged: u32,
    /// In quality control.
    pub quality_control: u32,
    /// Incoming.
    pub incoming: u32,
    /// Incoming ETA (0 = unknown).
    pub incoming_eta_ms: u64,
    /// ATP of the bucket, may be negative.
    pub atp: i64,
}

/// Result of get SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSku {
    /// SKU.
    pub sku: String,
    /// Buckets by location id.
    pub buckets: Vec<WireBucket>,
    /// ATP per channel.
    pub channels: Vec<(String, u32)>,
    /// Some bucket holds more than on hand.
    pub oversold: bool,
    /// Active holds.
    pub holds: u32,
    /// Sequence number of the last change.
    pub last_seq: u64,
}

/// Result of get many SKUs: `None` for an unknown SKU, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSkus {
    /// One entry per requested SKU.
    pub skus: Vec<Option<WireSku>>,
}

/// Result of get reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReservation {
    /// Id.
    pub reservation: u128,
    /// Channel.
    pub channel: String,
    /// Expiry.
    pub expires_at_ms: u64,
    /// Units still held per SKU.
    pub lines: Vec<(String, u32)>,
}

/// Result of list locations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locations {
    /// Sorted by id.
    pub locations: Vec<WireLocation>,
}

/// Result of list channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channels {
    /// Sorted by id.
    pub channels: Vec<WireChannel>,
}
