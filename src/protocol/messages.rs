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
    /// The operation's body. Encoded as bincode encodes a `Vec<u8>` (u64 length, bytes),
    /// but (de)serialized as one byte string rather than element by element.
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
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

/// A [`Reserve`] body decoded without copying its strings (the same bytes on the wire):
/// what the server decodes a `RESERVE` into, so that its ids go straight to the engine's
/// shared ids instead of through a `String` each.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ReserveRef<'a> {
    /// Idempotency key, non-zero.
    pub request_id: u128,
    /// Client-chosen reservation id.
    pub reservation: u128,
    /// Selling channel.
    #[serde(borrow)]
    pub channel: &'a str,
    /// Lines.
    #[serde(borrow)]
    pub lines: Vec<WireLineRef<'a>>,
    /// May one line be sourced from several locations.
    pub allow_split: bool,
    /// Hold time in ms.
    pub ttl_ms: u64,
}

/// A [`WireLine`] borrowing its strings (see [`ReserveRef`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WireLineRef<'a> {
    /// SKU id.
    #[serde(borrow)]
    pub sku: &'a str,
    /// Units (1..=10^9).
    pub qty: u32,
    /// Location to take them from, or `None` for the channel's sourcing order.
    #[serde(borrow)]
    pub location: Option<&'a str>,
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

/// Explain one channel's ATP for one SKU (`EXPLAIN_ATP`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainAtp {
    /// SKU id.
    pub sku: String,
    /// Channel id.
    pub channel: String,
}

/// Demand velocity and projected stockout of one SKU on every channel (`VELOCITY`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetVelocity {
    /// SKU id.
    pub sku: String,
}

/// The SKUs of one channel whose projected stockout comes first (`AT_RISK`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRiskQuery {
    /// Channel id.
    pub channel: String,
    /// Velocity window to rank by: 0 (shortest half-life) .. 2.
    pub window: u8,
    /// Most SKUs to return: 1..=1000.
    pub limit: u32,
}

/// The SKUs whose projected stockout in one region comes first (`AT_RISK_REGION`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRiskRegionQuery {
    /// Region code (a location's `region` in the catalog).
    pub region: String,
    /// Velocity window to rank by: 0 (shortest half-life) .. 2.
    pub window: u8,
    /// Most SKUs to return: 1..=1000.
    pub limit: u32,
}

/// Rebalance recommendations (`REBALANCE_LIST`): of one SKU or ranked over every SKU.
/// Thresholds in whole hours; `None` takes the default (docs/intelligence.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceQuery {
    /// Only this SKU (at most one recommendation); `None`: every SKU, least cover first.
    pub sku: Option<String>,
    /// Only recommendations whose short region is this one.
    pub region: Option<String>,
    /// Most recommendations to return: 1..=1000.
    pub limit: u32,
    /// A region is short under this many hours of cover [default 72].
    pub near_hours: Option<u32>,
    /// A region may give from this many hours of cover [default 336]; above `near_hours`.
    pub surplus_hours: Option<u32>,
    /// Velocity window of the projection: 0..=2 [default 1].
    pub window: Option<u8>,
}

/// One page of the known SKU ids starting with a prefix (`LIST_SKUS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSkus {
    /// Only ids starting with this (empty: every SKU); at most 64 bytes.
    pub prefix: String,
    /// Start after this id (exclusive): the previous page's `next_after`; `None` from the
    /// start. Need not be a known SKU.
    pub after: Option<String>,
    /// Most ids to return: 1..=1000.
    pub limit: u32,
}

/// One page of the open reservations holding units of a SKU (`LIST_RESERVATIONS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReservations {
    /// SKU id.
    pub sku: String,
    /// Start after this reservation id (exclusive): the previous page's `next_after`.
    pub after: Option<u128>,
    /// Most reservations to return: 1..=1000.
    pub limit: u32,
}

/// One page of a SKU's durable history, oldest first (`SKU_HISTORY`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuHistory {
    /// SKU id.
    pub sku: String,
    /// Start at this seq (inclusive; 0 = from the oldest kept): the previous page's
    /// `next.0`.
    pub from_seq: u64,
    /// Start at this event of `from_seq`'s record (the previous page's `next.1`; 0 else).
    pub from_index: u16,
    /// Most events to return: 1..=1000.
    pub limit: u32,
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
    /// ATP of the bucket (on_hand - shortfall - reserved - safety), may be negative.
    pub atp: i64,
    /// Units sold that were not on hand, owed back by the next arrivals (0 unless oversold).
    pub shortfall: u32,
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
    /// Some bucket holds more than on hand, or has a shortfall.
    pub oversold: bool,
    /// Active holds.
    pub holds: u32,
    /// Sequence number of the last change.
    pub last_seq: u64,
}

/// One location's part in an explained ATP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAtpPart {
    /// Location (in the channel's sourcing order).
    pub location: String,
    /// Sellable on hand.
    pub on_hand: u32,
    /// Reserved by open holds of any channel.
    pub reserved: u32,
    /// Safety stock.
    pub safety_stock: u32,
    /// Damaged (shown, not subtracted: not part of on hand).
    pub damaged: u32,
    /// In quality control (shown, not subtracted).
    pub quality_control: u32,
    /// Units sold that were not on hand.
    pub shortfall: u32,
    /// on_hand - shortfall - reserved - safety_stock, may be negative.
    pub atp: i64,
    /// What the location adds to the channel's sum: max(0, atp).
    pub contribution: u32,
}

/// The open holds of one channel on the explained SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChannelHolds {
    /// The holds' channel.
    pub channel: String,
    /// Open holds.
    pub holds: u32,
    /// Units they hold, anywhere.
    pub units: u64,
    /// Of those, units at the explained channel's locations.
    pub units_here: u64,
}

/// Where a low-stock threshold comes from (`u32` on the wire: 0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireLowStockSource {
    /// No threshold.
    None,
    /// The channel's threshold.
    Channel,
    /// The SKU's override on the channel.
    Sku,
}

/// Result of `EXPLAIN_ATP`: `sum - withheld_by_buffer - withheld_by_cap = atp`, and `atp`
/// is the ATP `GET_SKU` shows for the channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAtpExplanation {
    /// SKU.
    pub sku: String,
    /// Channel.
    pub channel: String,
    /// One part per location of the channel, in sourcing order.
    pub locations: Vec<WireAtpPart>,
    /// Sum of the parts' contributions.
    pub sum: u64,
    /// The channel's buffer.
    pub buffer: u32,
    /// Units the buffer withheld: min(buffer, sum).
    pub withheld_by_buffer: u64,
    /// The channel's cap, if any.
    pub cap: Option<u32>,
    /// Units the cap withheld.
    pub withheld_by_cap: u64,
    /// The channel's ATP.
    pub atp: u32,
    /// Open holds on the SKU by channel, sorted by channel id.
    pub holds: Vec<WireChannelHolds>,
    /// The low-stock threshold in force (0: none).
    pub low_stock_threshold: u32,
    /// Where it comes from.
    pub low_stock_source: WireLowStockSource,
    /// Whether the ATP is in the low-stock band 1..=threshold.
    pub low_stock: bool,
    /// Sequence number of the SKU's last change.
    pub last_seq: u64,
}

/// One velocity window of a SKU x channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireWindowRate {
    /// The window's half-life.
    pub half_life_ms: u64,
    /// Units held (reservations placed) per hour, decayed.
    pub held_per_hour: f64,
    /// Units fulfilled per hour, decayed.
    pub fulfilled_per_hour: f64,
    /// `atp / held_per_hour`: hours until the channel's ATP is gone; `None` without demand.
    pub hours_to_zero: Option<f64>,
}

/// Velocity and projected stockout of one SKU x channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireChannelVelocity {
    /// Channel.
    pub channel: String,
    /// The channel's ATP now.
    pub atp: u32,
    /// One per window, shortest half-life first.
    pub windows: Vec<WireWindowRate>,
}

/// Velocity and projected stockout of one SKU x region (a location's region).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireRegionVelocity {
    /// Region code.
    pub region: String,
    /// Sum of the exposed ATP of the SKU's locations in the region.
    pub atp: u32,
    /// One per window, shortest half-life first.
    pub windows: Vec<WireWindowRate>,
}

/// Result of `VELOCITY`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireVelocity {
    /// SKU.
    pub sku: String,
    /// One per channel of the catalog, by channel id.
    pub channels: Vec<WireChannelVelocity>,
    /// One per region where the SKU has a bucket or had demand, by region code.
    pub regions: Vec<WireRegionVelocity>,
}

/// One SKU of an at-risk list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireAtRiskSku {
    /// SKU.
    pub sku: String,
    /// Its velocity and projection on the listed channel (all windows).
    pub velocity: WireChannelVelocity,
}

/// Result of `AT_RISK`: soonest projected stockout first (ties by SKU id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireAtRisk {
    /// Channel.
    pub channel: String,
    /// The window ranked by.
    pub window: u8,
    /// The SKUs, at most `limit`.
    pub skus: Vec<WireAtRiskSku>,
}

/// One SKU of a region's at-risk list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireAtRiskRegionSku {
    /// SKU.
    pub sku: String,
    /// Its velocity and projection in the listed region (all windows).
    pub velocity: WireRegionVelocity,
}

/// Result of `AT_RISK_REGION`: soonest projected stockout first (ties by SKU id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireAtRiskRegion {
    /// Region.
    pub region: String,
    /// The window ranked by.
    pub window: u8,
    /// The SKUs, at most `limit`.
    pub skus: Vec<WireAtRiskRegionSku>,
}

/// One rebalance recommendation: a `TRANSFER` of `qty` units of `sku` from `from` (in
/// the donor region) to `to` (in the short region), to be sent with request id `id` and
/// reference `reference` (`rebalance:<id as 32 hex digits>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireRecommendation {
    /// Recommendation id: the transfer's request id.
    pub id: u128,
    /// SKU.
    pub sku: String,
    /// The SKU's `last_seq` the recommendation was computed on (a change gives a new id).
    pub basis_seq: u64,
    /// The region short of cover.
    pub short_region: String,
    /// The region giving.
    pub donor_region: String,
    /// Donor location.
    pub from: String,
    /// Receiving location.
    pub to: String,
    /// Units to move (at least 1, at most the donor location's exposed ATP).
    pub qty: u32,
    /// Hours of cover of the short region now.
    pub short_cover_hours: f64,
    /// Hours of cover of the short region after the transfer.
    pub short_cover_after_hours: f64,
    /// Hours of cover of the donor region now (`None`: no demand there).
    pub donor_cover_hours: Option<f64>,
    /// Hours of cover of the donor region after (`None`: no demand there).
    pub donor_cover_after_hours: Option<f64>,
    /// The transfer's reference.
    pub reference: String,
}

/// Result of `REBALANCE_LIST`: least cover of the short region first (ties by SKU id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireRebalance {
    /// The threshold in force (hours).
    pub near_hours: u32,
    /// The threshold in force (hours).
    pub surplus_hours: u32,
    /// The window in force.
    pub window: u8,
    /// The recommendations, at most `limit`.
    pub recommendations: Vec<WireRecommendation>,
    /// Whether recommendations were left out to stay within `max_frame_bytes`.
    pub truncated: bool,
}

/// Result of `LIST_SKUS`: ids in byte order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSkuList {
    /// At most `limit` ids, fewer when the page reached the byte bound (protocol.md).
    pub skus: Vec<String>,
    /// `Some(last id)` when more ids follow: the next page's `after`; `None` at the end.
    pub next_after: Option<String>,
}

/// One reservation's hold on the listed SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSkuHold {
    /// Reservation id.
    pub reservation: u128,
    /// The reservation's channel.
    pub channel: String,
    /// When it expires (server clock, ms since the epoch).
    pub expires_at_ms: u64,
    /// Units of this SKU still held, per location in sourcing order.
    pub allocations: Vec<(String, u32)>,
}

/// Result of `LIST_RESERVATIONS`: by reservation id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSkuReservations {
    /// SKU.
    pub sku: String,
    /// At most `limit` holds, fewer when the page reached the byte bound (protocol.md).
    pub reservations: Vec<WireSkuHold>,
    /// `Some(last id)` when more follow: the next page's `after`; `None` at the end.
    pub next_after: Option<u128>,
}

/// Kinds of [`WireHistoryEvent::kind`] (one per domain event).
pub mod history_kind {
    /// Units held for a reservation (`channel`, `reservation`, `allocations`, `expires_at_ms`).
    pub const HOLD_PLACED: u8 = 1;
    /// Held units sold (`reservation`, `allocations`; `reason` `closed` or `open`).
    pub const HOLD_FULFILLED: u8 = 2;
    /// A hold released (`reservation`, `allocations`, `reason`: `client`, `expired`,
    /// `cart_aborted`, `recovery`).
    pub const HOLD_RELEASED: u8 = 3;
    /// A hold's expiry moved (`reservation`, `expires_at_ms`).
    pub const HOLD_EXTENDED: u8 = 4;
    /// Sellable on hand changed by `quantity` (`location`, `reason`: `receipt`,
    /// `shrinkage`, `damage`, `return_to_stock`, `correction`; `reference`).
    pub const STOCK_ADJUSTED: u8 = 5;
    /// Sellable on hand set to `quantity` from `previous` (`location`, `reference`).
    pub const ON_HAND_SET: u8 = 6;
    /// `quantity` units moved between states (`location`; `reason` `FROM->TO` of
    /// `sellable`, `damaged`, `quality_control`).
    pub const STOCK_MOVED: u8 = 7;
    /// `quantity` sellable units moved from `location` to `to_location` (`reference`).
    pub const TRANSFERRED: u8 = 8;
    /// Safety stock of `location` set to `quantity`.
    pub const SAFETY_STOCK_SET: u8 = 9;
    /// Expected receipts at `location` set to `quantity`, due `expires_at_ms` (0 unknown).
    pub const INCOMING_SET: u8 = 10;
    /// A stockout projected on a channel (`channel`; `quantity` the channel's ATP;
    /// `reason` "HOURS h to zero at RATE/h, threshold T h").
    pub const STOCKOUT_PROJECTED: u8 = 11;
    /// A raised stockout projection cleared (`channel`; `quantity` the ATP; `reason`
    /// `recovered`, `no_demand` or `threshold_removed`).
    pub const STOCKOUT_CLEARED: u8 = 12;
    /// A rebalance recommendation raised (`location` the donor, `to_location` the
    /// receiving location, `quantity` the units; `reference` `rebalance:<id>`; `reason`
    /// "FROM->TO" regions).
    pub const REBALANCE_RECOMMENDED: u8 = 13;
    /// A raised rebalance recommendation withdrawn (`reference` `rebalance:<id>`; `reason`
    /// `applied` or `resolved`).
    pub const REBALANCE_WITHDRAWN: u8 = 14;
    /// A stockout projected in a region (`location` empty, `channel` empty, `to_location`
    /// the region code; `quantity` the region's ATP; `reason` as `STOCKOUT_PROJECTED`).
    pub const REGION_STOCKOUT_PROJECTED: u8 = 15;
    /// A raised region stockout projection cleared (`to_location` the region; `reason` as
    /// `STOCKOUT_CLEARED`).
    pub const REGION_STOCKOUT_CLEARED: u8 = 16;

    /// The kind's name (`ctl history`, JSON), `unknown` for a number this build lacks.
    pub fn name(kind: u8) -> &'static str {
        match kind {
            HOLD_PLACED => "hold_placed",
            HOLD_FULFILLED => "hold_fulfilled",
            HOLD_RELEASED => "hold_released",
            HOLD_EXTENDED => "hold_extended",
            STOCK_ADJUSTED => "stock_adjusted",
            ON_HAND_SET => "on_hand_set",
            STOCK_MOVED => "stock_moved",
            TRANSFERRED => "transferred",
            SAFETY_STOCK_SET => "safety_stock_set",
            INCOMING_SET => "incoming_set",
            STOCKOUT_PROJECTED => "stockout_projected",
            STOCKOUT_CLEARED => "stockout_cleared",
            REBALANCE_RECOMMENDED => "rebalance_recommended",
            REBALANCE_WITHDRAWN => "rebalance_withdrawn",
            REGION_STOCKOUT_PROJECTED => "region_stockout_projected",
            REGION_STOCKOUT_CLEARED => "region_stockout_cleared",
            _ => "unknown",
        }
    }
}

/// One event of a SKU's history. Fields a kind does not use are empty, 0 or `None`
/// (see [`history_kind`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHistoryEvent {
    /// Log sequence number of the event's record.
    pub seq: u64,
    /// The event's position among its record's events of this SKU.
    pub index: u16,
    /// When the engine accepted it (Unix ms).
    pub at_ms: u64,
    /// The request that caused it (0: the engine itself, e.g. expiry or recovery).
    pub request_id: u128,
    /// See [`history_kind`].
    pub kind: u8,
    /// Units (signed for `STOCK_ADJUSTED`; the total of `allocations` for holds).
    pub quantity: i64,
    /// On hand before (`ON_HAND_SET`).
    pub previous: Option<u32>,
    /// The location (stock events; the source of a transfer).
    pub location: String,
    /// The destination of a transfer.
    pub to_location: String,
    /// The reservation's channel (`HOLD_PLACED`).
    pub channel: String,
    /// The reservation (hold events).
    pub reservation: Option<u128>,
    /// Units per location (hold events), in sourcing order.
    pub allocations: Vec<(String, u32)>,
    /// Why, as a stable lowercase name (see [`history_kind`]).
    pub reason: String,
    /// The client's free reference (adjust, set on hand, transfer).
    pub reference: String,
    /// Expiry (`HOLD_PLACED`, `HOLD_EXTENDED`) or ETA (`INCOMING_SET`), Unix ms.
    pub expires_at_ms: u64,
}

impl WireHistoryEvent {
    /// Its encoded size in bytes (the fixed codec: strings and vectors with an 8-byte
    /// length, options with a 1-byte tag), for cutting a page at the frame limit.
    pub fn encoded_len(&self) -> usize {
        let string = |s: &String| 8 + s.len();
        8 + 2
            + 8
            + 16
            + 1
            + 8
            + 1
            + self.previous.map_or(0, |_| 4)
            + string(&self.location)
            + string(&self.to_location)
            + string(&self.channel)
            + 1
            + self.reservation.map_or(0, |_| 16)
            + 8
            + self
                .allocations
                .iter()
                .map(|(l, _)| string(l) + 4)
                .sum::<usize>()
            + string(&self.reason)
            + string(&self.reference)
            + 8
    }
}

/// Result of `SKU_HISTORY`: events oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSkuHistory {
    /// SKU.
    pub sku: String,
    /// The first seq the server's history covers (1 unless the data directory predates
    /// the history; retention may have dropped older events since).
    pub base_seq: u64,
    /// At most `limit` events, fewer when their encoded bytes would pass
    /// `max_frame_bytes` less 160 and the SKU id's length, or the server's bound on log
    /// records read per request was reached.
    pub events: Vec<WireHistoryEvent>,
    /// `Some((seq, index))` when the page was cut: the next page's `from_seq` and
    /// `from_index`. `None`: no more events are durable now.
    pub next: Option<(u64, u16)>,
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
    /// The channels with a stockout-projection threshold (`SET_STOCKOUT_THRESHOLD`), by
    /// id. Appended after the first release (as `Subscribed.heartbeat_ms` was).
    pub stockout_thresholds: Vec<WireStockoutThreshold>,
}

/// A channel's stockout-projection threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStockoutThreshold {
    /// The channel.
    pub channel: String,
    /// Hours (1..=8760).
    pub hours: u32,
}

/// `SET_LOW_STOCK` body: the low-stock threshold of a channel, or of one SKU on a channel
/// (overriding the channel's). A channel's ATP in `1..=threshold` is "low stock"; 0 turns
/// low-stock events off (for the SKU override: falls back to the channel's threshold).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLowStock {
    /// Idempotency key.
    pub request_id: u128,
    /// The channel.
    pub channel: String,
    /// A SKU to override the channel's threshold for, or `None` for the channel's own.
    pub sku: Option<String>,
    /// Units; 0 = none (channel) or "use the channel's" (SKU override).
    pub threshold: u32,
}

/// `DELETE_LOCATION` body: delete a location nothing refers to (docs/protocol.md 7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteLocation {
    /// Idempotency key.
    pub request_id: u128,
    /// The location's id.
    pub location: String,
}

/// `DELETE_CHANNEL` body: delete a channel no open reservation is on (docs/protocol.md 7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteChannel {
    /// Idempotency key.
    pub request_id: u128,
    /// The channel's id.
    pub channel: String,
}

/// What an `InUseFacts` is about.
pub mod in_use_kind {
    /// A location (`DELETE_LOCATION`).
    pub const LOCATION: u8 = 1;
    /// A channel (`DELETE_CHANNEL`).
    pub const CHANNEL: u8 = 2;
}

/// Facts of an `InUse` (17) rejection, carried in [`OpResult::body`]: what still refers to
/// the location or channel a delete named. Counts that do not apply to the kind are 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUseFacts {
    /// [`in_use_kind`]: 1 location, 2 channel.
    pub kind: u8,
    /// The id the delete named.
    pub id: String,
    /// Channels listing the location as a source, in id order (at most 32).
    pub channels: Vec<String>,
    /// How many channels list the location as a source (all of them).
    pub channels_total: u32,
    /// SKUs with on hand, damaged, quality control, incoming or a shortfall there.
    pub skus_with_stock: u64,
    /// SKUs with units reserved there.
    pub skus_with_holds: u64,
    /// SKUs with a safety stock entry there.
    pub skus_with_safety_stock: u64,
    /// The smallest id among those SKUs (empty: none).
    pub example_sku: String,
    /// Open reservations on the channel.
    pub reservations: u64,
    /// The smallest of their ids (0: none).
    pub example_reservation: u128,
}

/// `SET_STOCKOUT_THRESHOLD` body: the stockout-projection threshold of a channel. A SKU
/// whose projected hours to zero on the channel (its ATP over the held rate of the 1 h
/// velocity window) fall under `hours` gets a "stockout projected" feed item; it clears
/// above `hours x 1.25`, without demand, or when the threshold is removed. 0 = none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStockoutThreshold {
    /// Idempotency key.
    pub request_id: u128,
    /// The channel.
    pub channel: String,
    /// Hours, 1..=8760; 0 removes the threshold.
    pub hours: u32,
}

/// Where a subscription starts (`Subscribe::start`).
pub mod start {
    /// Live: events after the last published sequence number, nothing older.
    pub const LIVE: u8 = 0;
    /// A snapshot of current ATP for the filter, then live.
    pub const SNAPSHOT: u8 = 1;
    /// Every event after `from_seq` (replayed from the log), then live; a snapshot first if
    /// the log no longer holds `from_seq + 1`.
    pub const AFTER: u8 = 2;
    /// After the position last acknowledged under `name` (snapshot if none is stored).
    pub const RESUME: u8 = 3;
}

/// Event kinds a subscription asks for (`Subscribe::kinds`, a bit set).
pub mod kinds {
    /// Every ATP change per channel (`PushItem::Atp`).
    pub const ATP: u8 = 1;
    /// Threshold transitions only: ATP items whose `transition` is not 0, and oversold flags.
    pub const THRESHOLDS: u8 = 2;
    /// Reservation lifecycle: placed, fulfilled, released, expired, extended.
    pub const RESERVATIONS: u8 = 4;
    /// Stockout projections: projected and cleared (`PushItem::Stockout`). Added after the
    /// first release: a subscriber that does not ask for it never receives the item.
    pub const STOCKOUT: u8 = 8;
    /// Rebalance recommendations: recommended and withdrawn (`PushItem::Rebalance`).
    pub const REBALANCE: u8 = 16;
    /// Stockout projections per SKU x region (`PushItem::RegionStockout`): a bit of its
    /// own so a subscriber built before it, asking for `STOCKOUT`, never receives an item
    /// it cannot decode.
    pub const REGION_STOCKOUT: u8 = 32;
    /// Every kind.
    pub const ALL: u8 = ATP | THRESHOLDS | RESERVATIONS | STOCKOUT | REBALANCE | REGION_STOCKOUT;
}

/// `SUBSCRIBE` body: start a stream of stock changes on this connection. The server answers
/// [`Subscribed`], then sends `Push` frames with the SUBSCRIBE request's correlation id.
/// One subscription per connection; other operations still work on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Empty: anonymous. Otherwise a durable name (1..=64 bytes of `[A-Za-z0-9._-]`): `ACK`
    /// stores positions under it and `start = RESUME` continues from there.
    pub name: String,
    /// See [`start`].
    pub start: u8,
    /// For `start = AFTER`: the last sequence number the subscriber has seen.
    pub from_seq: u64,
    /// Channels to receive (empty = every channel).
    pub channels: Vec<String>,
    /// SKUs to receive (empty = every SKU, or those matching `sku_prefix`).
    pub skus: Vec<String>,
    /// Only SKUs starting with this prefix (empty = no prefix filter).
    pub sku_prefix: String,
    /// See [`kinds`]; 0 is invalid.
    pub kinds: u8,
    /// 0: every change. Otherwise coalesced: the latest ATP per SKU x channel at most every
    /// `coalesce_ms` milliseconds (10..=60000).
    pub coalesce_ms: u32,
}

/// What a subscription does first (`Subscribed::start`).
pub mod started {
    /// Live from `from_seq`.
    pub const LIVE: u8 = 0;
    /// A snapshot, then events after `from_seq`.
    pub const SNAPSHOT: u8 = 1;
    /// Replay from the log after `from_seq`, then live.
    pub const REPLAY: u8 = 2;
}

/// Answer to `SUBSCRIBE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// See [`started`].
    pub start: u8,
    /// Events with a sequence number above this follow (after the snapshot, if any).
    pub from_seq: u64,
    /// The last sequence number published when the subscription began.
    pub head_seq: u64,
    /// The oldest sequence number a later `AFTER` start can still replay from
    /// (`from_seq >= retained_from_seq - 1` replays; older gets a snapshot).
    pub retained_from_seq: u64,
    /// Why a snapshot is sent, if one is (e.g. `from_seq` older than the log keeps).
    pub note: String,
    /// A subscription that has sent nothing for this long sends a `Position` item (the
    /// heartbeat: a quiet server is told from a dead one), in ms; 0 = no heartbeat.
    pub heartbeat_ms: u32,
}

/// `ACK` body: remember `seq` as the position of the named subscription `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The subscription name.
    pub name: String,
    /// Every event up to this sequence number was processed.
    pub seq: u64,
}

/// Most names `LIST_SUBSCRIPTIONS` answers at once (and the default of `limit = 0`).
pub const MAX_LIST_SUBSCRIPTIONS: u32 = 1000;

/// `LIST_SUBSCRIPTIONS` body: the stored named positions whose names sort after `after`
/// (empty: from the first), at most `limit` (0: [`MAX_LIST_SUBSCRIPTIONS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSubscriptions {
    /// Start after this name (the last name of the previous page).
    pub after: String,
    /// Most names to answer; 0 or over [`MAX_LIST_SUBSCRIPTIONS`] is that many.
    pub limit: u32,
}

/// One stored named position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSubscription {
    /// The name.
    pub name: String,
    /// The stored position (the last sequence number processed).
    pub position: u64,
    /// The feed's head minus `position`, in log records.
    pub lag_records: u64,
}

/// Answer to `LIST_SUBSCRIPTIONS`: names in byte order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriptions {
    /// This page.
    pub items: Vec<WireSubscription>,
    /// Whether names follow the last one (ask again with `after` = its name).
    pub more: bool,
}

/// `DELETE_SUBSCRIPTION` body: forget the position stored under `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSubscription {
    /// The name.
    pub name: String,
}

/// `BACKUP` body: write a backup into `to`, a new directory on the server's machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Absolute path on the server's machine; it must not exist or be an empty directory,
    /// and its parent must exist. At most [`MAX_BACKUP_PATH_BYTES`] bytes.
    pub to: String,
}

/// Longest `Backup::to` the server accepts, in bytes (Linux's `PATH_MAX`).
pub const MAX_BACKUP_PATH_BYTES: usize = 4096;

/// Result of `BACKUP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBackup {
    /// The backup is the state after this log seq (S).
    pub as_of_seq: u64,
    /// Start seq of the checkpoint in it; its log holds the records from here to S.
    pub checkpoint_start_seq: u64,
    /// SKUs in its checkpoint.
    pub skus: u64,
    /// Bytes of the backup directory on disk.
    pub bytes: u64,
    /// Log records in it after the checkpoint.
    pub log_records: u64,
    /// Start to finish, milliseconds.
    pub duration_ms: u64,
    /// The directory written.
    pub dir: String,
}

/// What caused a change (`WireAtp::cause`).
pub mod cause {
    /// A reservation placed holds.
    pub const RESERVE: u8 = 1;
    /// Held units were sold.
    pub const FULFILL: u8 = 2;
    /// The client released a reservation.
    pub const RELEASE: u8 = 3;
    /// A reservation expired.
    pub const EXPIRY: u8 = 4;
    /// A cart line was undone because another line was rejected.
    pub const CART_ABORT: u8 = 5;
    /// Recovery released a cart a crash left half-placed.
    pub const RECOVERY: u8 = 6;
    /// Stock adjusted by a delta.
    pub const ADJUST: u8 = 7;
    /// On hand set to a value.
    pub const SET_ON_HAND: u8 = 8;
    /// Units moved between sellable, damaged, quality control.
    pub const MOVE: u8 = 9;
    /// Units transferred between locations.
    pub const TRANSFER: u8 = 10;
    /// Safety stock changed.
    pub const SAFETY_STOCK: u8 = 11;
    /// Expected receipts changed.
    pub const INCOMING: u8 = 12;
    /// A reservation's expiry moved.
    pub const EXTEND: u8 = 13;
    /// The engine re-evaluated stockout projections (decay alone; no stock changed).
    pub const REPROJECT: u8 = 14;
}

/// Threshold transitions (`WireAtp::transition`).
pub mod transition {
    /// None.
    pub const NONE: u8 = 0;
    /// ATP went from above 0 to 0.
    pub const OUT_OF_STOCK: u8 = 1;
    /// ATP went from 0 to above 0.
    pub const BACK_IN_STOCK: u8 = 2;
    /// ATP entered `1..=threshold` from above it (or from 0: then `BACK_IN_STOCK` wins).
    pub const LOW_STOCK: u8 = 3;
    /// ATP left `1..=threshold` upwards (from 0 straight above it: `BACK_IN_STOCK`). Added
    /// after the first release: a reader that does not know it sees an ATP change.
    pub const LOW_STOCK_CLEARED: u8 = 4;
}

/// Reservation lifecycle kinds (`WireReservationEvent::kind`).
pub mod lifecycle {
    /// Units held.
    pub const PLACED: u8 = 1;
    /// Held units sold.
    pub const FULFILLED: u8 = 2;
    /// Released by the client.
    pub const RELEASED: u8 = 3;
    /// Released at expiry.
    pub const EXPIRED: u8 = 4;
    /// Expiry moved.
    pub const EXTENDED: u8 = 5;
    /// Undone: cart aborted or recovery.
    pub const UNDONE: u8 = 6;
}

/// ATP of one SKU on one channel changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAtp {
    /// Log sequence number of the change.
    pub seq: u64,
    /// When the engine accepted it (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: String,
    /// The channel.
    pub channel: String,
    /// ATP before.
    pub previous: u32,
    /// ATP after.
    pub atp: u32,
    /// See [`cause`] (of the latest change when coalesced).
    pub cause: u8,
    /// See [`transition`].
    pub transition: u8,
    /// Whether several changes were merged into this one (coalesced mode or catching up).
    pub coalesced: bool,
}

/// The SKU's oversold flag changed (some location holds more than it has, or has a shortfall).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireOversold {
    /// Log sequence number.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: String,
    /// The new flag.
    pub oversold: bool,
}

/// A reservation's part on one SKU changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReservationEvent {
    /// Log sequence number.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: String,
    /// The reservation.
    pub reservation: u128,
    /// See [`lifecycle`].
    pub kind: u8,
    /// Units concerned (held, sold or returned; 0 for `EXTENDED`).
    pub qty: u32,
    /// Expiry (for `PLACED` and `EXTENDED`; else 0).
    pub expires_at_ms: u64,
}

/// Current ATP of one SKU on one channel, in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSnapshotEntry {
    /// The SKU's last change (events of this SKU up to here are in the value).
    pub seq: u64,
    /// The SKU.
    pub sku: String,
    /// The channel.
    pub channel: String,
    /// ATP.
    pub atp: u32,
    /// The SKU's oversold flag.
    pub oversold: bool,
}

/// One item of a `Push` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushItem {
    /// 0: an ATP change.
    Atp(WireAtp),
    /// 1: the oversold flag changed.
    Oversold(WireOversold),
    /// 2: reservation lifecycle.
    Reservation(WireReservationEvent),
    /// 3: the catalog changed (channel sourcing, buffer, cap or thresholds): ATP of many
    /// SKUs may have changed without per-SKU events; re-read or re-subscribe with a snapshot.
    Catalog {
        /// Log sequence number.
        seq: u64,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// 4: snapshot entry.
    Snapshot(WireSnapshotEntry),
    /// 5: the snapshot is complete; events after `seq` follow.
    SnapshotEnd {
        /// The position the live stream continues from.
        seq: u64,
    },
    /// 6: every event up to `seq` matching the filter has been sent (acknowledge this).
    Position {
        /// The position.
        seq: u64,
    },
    /// 7: the subscriber fell too far behind; the server closes the connection after this.
    Lagged {
        /// Subscribe again with `start = AFTER` and this `from_seq`.
        resume_from_seq: u64,
        /// Why.
        message: String,
    },
    /// 8: a stockout projection of one SKU x channel was raised or cleared (kind bit
    /// [`kinds::STOCKOUT`]).
    Stockout(WireStockout),
    /// 9: a rebalance recommendation of one SKU was raised or withdrawn (kind bit
    /// [`kinds::REBALANCE`]).
    Rebalance(WireRebalanceEvent),
    /// 10: a stockout projection of one SKU x region was raised or cleared (kind bit
    /// [`kinds::REGION_STOCKOUT`]).
    RegionStockout(WireRegionStockout),
}

/// Why a rebalance recommendation was withdrawn (`WireRebalanceEvent::reason`).
pub mod rebalance_reason {
    /// Not withdrawn: the item says "recommended".
    pub const NONE: u8 = 0;
    /// A transfer with its reference was applied.
    pub const APPLIED: u8 = 1;
    /// The short region is no longer short, or no region can give any more.
    pub const RESOLVED: u8 = 2;
}

/// A rebalance recommendation of one SKU was raised (`recommended`) or withdrawn. The
/// location, quantity and cover fields are those of the recommendation when raised; a
/// withdrawal carries only the id, the short region and the reason (the rest empty or 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRebalanceEvent {
    /// Log sequence number.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: String,
    /// Recommendation id: the transfer's request id (`REBALANCE_LIST` shows the same).
    pub id: u128,
    /// true: recommended; false: withdrawn.
    pub recommended: bool,
    /// See [`rebalance_reason`] (0 when recommended).
    pub reason: u8,
    /// The region short of cover.
    pub short_region: String,
    /// The region giving (empty when withdrawn).
    pub donor_region: String,
    /// Donor location (empty when withdrawn).
    pub from: String,
    /// Receiving location (empty when withdrawn).
    pub to: String,
    /// Units (0 when withdrawn).
    pub qty: u32,
    /// Hours of cover of the short region, thousandths (0 when withdrawn).
    pub short_cover_milli: u64,
    /// Hours of cover of the donor region, thousandths; `u64::MAX` without demand there
    /// (and when withdrawn).
    pub donor_cover_milli: u64,
    /// The transfer's reference, `rebalance:<32 hex digits>`.
    pub reference: String,
}

/// A stockout projection of one SKU x region changed: hours to zero (the exposed ATP of
/// the SKU's locations in the region over their summed held rate, window 1) fell under
/// the region's threshold (the smallest of the channels selling from the region), or
/// rose above threshold x 1.25, or demand stopped, or no threshold is left (cleared).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRegionStockout {
    /// Log sequence number.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: String,
    /// The region code.
    pub region: String,
    /// true: projected; false: cleared.
    pub projected: bool,
    /// The region's threshold, hours (0: none any more).
    pub threshold_hours: u32,
    /// Hours to zero, thousandths; `u64::MAX` without demand.
    pub hours_milli: u64,
    /// Units held per hour in the region, thousandths.
    pub per_hour_milli: u64,
    /// The region's ATP (exposed, no channel buffer or cap).
    pub atp: u32,
    /// See [`stockout_reason`] (0 when projected).
    pub reason: u8,
    /// The velocity window (1 = 1 h by default).
    pub window: u8,
}

/// Why a stockout projection cleared (`WireStockout::reason`).
pub mod stockout_reason {
    /// Not cleared: the item says "projected".
    pub const NONE: u8 = 0;
    /// The hours to zero rose above the threshold x 1.25 (restock, or demand slowed).
    pub const RECOVERED: u8 = 1;
    /// No demand left in the window.
    pub const NO_DEMAND: u8 = 2;
    /// The channel's threshold was removed.
    pub const THRESHOLD_REMOVED: u8 = 3;
}

/// A stockout projection of one SKU x channel changed: hours to zero (ATP over the held
/// rate of the 1 h window) fell under the channel's threshold (`projected`), or rose above
/// threshold x 1.25, or demand stopped, or the threshold was removed (cleared).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStockout {
    /// Log sequence number.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: String,
    /// The channel.
    pub channel: String,
    /// true: projected; false: cleared.
    pub projected: bool,
    /// The channel's threshold, hours (0: removed).
    pub threshold_hours: u32,
    /// Hours to zero, thousandths; `u64::MAX` when there is no demand (no projection).
    pub hours_milli: u64,
    /// Units held per hour in the window, thousandths.
    pub per_hour_milli: u64,
    /// The channel's ATP.
    pub atp: u32,
    /// See [`stockout_reason`] (0 when projected).
    pub reason: u8,
    /// The velocity window (0..=2, shortest half-life first; 1 = 1 h by default).
    pub window: u8,
}

/// `Push` frame payload (server → subscriber).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushBatch {
    /// Items in sequence order.
    pub items: Vec<PushItem>,
}
