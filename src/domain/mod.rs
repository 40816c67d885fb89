//! The pure domain: identifiers, the catalog (locations and channels), the SKU state
//! machine, commands, events and rejections.
//!
//! Architecture invariant: nothing in `domain/` knows actix, tokio, sled, sockets or the
//! clock. Time arrives as a parameter (`now_ms`), so the live path, recovery and replay all
//! run the same code and tests can replay whole histories deterministically.

pub mod cart;
pub mod catalog;
pub mod event;
pub mod explain;
pub mod ids;
pub mod limits;
pub mod rebalance;
pub mod rejection;
pub mod sku;
pub mod velocity;

pub use catalog::{
    Catalog, CatalogCommand, CatalogEvent, CatalogRef, Channel, ChannelIndex, InUse, Location,
    LocationKind, LocationUse, LowStock, LowStockSource, References, StockoutThreshold,
};
pub use event::{
    Allocation, Event, RebalanceWithdrawReason, ReleaseReason, StockState, StockoutClearReason,
};
pub use explain::{AtpExplanation, ChannelHolds, LocationPart, LowStockInForce};
pub use ids::{ChannelId, LocationId, RequestId, ReservationId, SkuId, TimeMs};
pub use rebalance::{
    LocationStock, Plan, RaisedRebalance, RebalanceList, RebalancePolicy, Recommendation,
    RegionStock, StockoutWatch, Transition,
};
pub use rejection::{Rejection, RejectionCode};
pub use sku::{AdjustReason, Bucket, ChannelSum, Hold, HoldLine, SkuCommand, SkuState, SkuView};
pub use velocity::{
    AtRisk, AtRiskList, AtRiskRegion, AtRiskRegionList, ChannelVelocity, DemandKind, HalfLives,
    RegionVelocity, SkuVelocity, SumsV6, TopN, Velocity, VelocityV6, WindowRate,
};
