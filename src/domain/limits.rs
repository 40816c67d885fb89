//! Every domain limit as a named constant, in one place, so the protocol, the docs and the
//! tests agree on them. Quantities are `u32`; sums are computed in `i64`/`u64` with checked
//! arithmetic so no limit can be crossed by overflow.

/// Largest quantity any single bucket field (on hand, reserved, damaged, ...) may hold,
/// and largest quantity of one request line. 10^9 keeps every sum over
/// [`MAX_LOCATIONS_PER_CHANNEL`] buckets far inside `i64`.
pub const MAX_QTY: u32 = 1_000_000_000;

/// Longest SKU identifier in bytes (printable ASCII, no spaces).
pub const MAX_SKU_ID_BYTES: usize = 64;

/// Longest location or channel identifier in bytes.
pub const MAX_NAME_BYTES: usize = 32;

/// Longest free-text reference (document id, reason note) attached to a stock change.
pub const MAX_REFERENCE_BYTES: usize = 128;

/// Longest region code (e.g. `FR`, `US-CA`).
pub const MAX_REGION_BYTES: usize = 16;

/// Most lines one reservation (cart) may carry.
pub const MAX_LINES_PER_RESERVATION: usize = 100;

/// Most locations one channel may source from.
pub const MAX_LOCATIONS_PER_CHANNEL: usize = 64;

/// Most locations in the catalog.
pub const MAX_LOCATIONS: usize = 10_000;

/// Most channels in the catalog.
pub const MAX_CHANNELS: usize = 1_000;

/// Most distinct location ids the catalog numbers over its life: a deleted location keeps
/// its number (SKUs may still carry its empty buckets), so creating and deleting new ids
/// forever would grow the numbering without this bound. Re-creating a deleted id reuses it.
pub const MAX_LOCATION_NUMBERS: usize = 10 * MAX_LOCATIONS;

/// Most channel ids named in the facts of an `InUse` (17) rejection of a location delete
/// (the count names them all).
pub const MAX_IN_USE_CHANNELS: usize = 32;

/// Most location buckets one SKU may have.
pub const MAX_BUCKETS_PER_SKU: usize = 256;

/// Most simultaneous holds (active reservations) on one SKU. A flash sale on one SKU with
/// 100K open carts stays far below it; beyond it reserves are rejected, not queued.
pub const MAX_HOLDS_PER_SKU: usize = 1_000_000;

/// Longest a hold may live before it expires: 7 days.
pub const MAX_HOLD_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most per-SKU low-stock threshold overrides in the catalog (the catalog is copied whole on
/// every change, so this bounds the cost of a catalog change).
pub const MAX_LOW_STOCK_OVERRIDES: usize = 100_000;

/// Most named (durable) feed subscriptions whose positions the server stores.
pub const MAX_NAMED_SUBSCRIPTIONS: usize = 10_000;

/// Latest time a client may name (an ETA), in ms since the epoch: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// Most hours a stockout-projection threshold may be (one year); 0 is "none".
pub const MAX_STOCKOUT_HOURS: u32 = 8_760;
