//! Targets other than an omnistock server: a store that can only hold carts (the load
//! crate's Redis comparison target, load/src/redis.rs). The driver runs the same admission,
//! ledger, tallies and checks against it as against omnistock; the target only knows how to
//! connect, stock the catalog, hold a batch of carts atomically per cart, and read its stock
//! back. omnistock itself links no client of such a store.

use std::fmt;

use futures::future::BoxFuture;

use super::catalog::CatalogSpec;
use super::check::Snapshot;
use super::workload::Line;
use super::LoadError;

/// One cart to hold: its lines merged per SKU (each SKU once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cart {
    /// Reservation id.
    pub reservation: u128,
    /// Lines, one per SKU.
    pub lines: Vec<Line>,
    /// Channel id.
    pub channel: String,
}

/// A reservation-only target (see the module documentation).
pub trait ReserveTarget: Send + Sync + fmt::Debug {
    /// Its name in reports and flags (`redis`).
    fn name(&self) -> &'static str;
    /// Its address or URL, as given.
    fn addr(&self) -> &str;
    /// `host:port` of the address, for the loopback-only rule; the error names the flag.
    fn host_port(&self) -> Result<String, LoadError>;
    /// Stocks the catalog's SKUs (total stock over its locations, nothing reserved);
    /// returns the operations sent.
    fn load_catalog<'a>(&'a self, spec: &'a CatalogSpec) -> BoxFuture<'a, Result<u64, LoadError>>;
    /// Opens `n` connections, each able to carry many requests in flight.
    fn connect(&self, n: u32) -> BoxFuture<'_, Result<Vec<Box<dyn ReserveConn>>, LoadError>>;
}

/// One connection of a [`ReserveTarget`].
pub trait ReserveConn: Send {
    /// Another handle on the same connection (the depth loops share it).
    fn share(&self) -> Box<dyn ReserveConn>;
    /// Holds each cart for `ttl_ms` if every line has the stock, else changes nothing; one
    /// answer per cart (`true`: held), in order, in one round trip.
    fn reserve<'a>(
        &'a mut self,
        carts: &'a [Cart],
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<bool>, LoadError>>;
    /// Reads SKUs `0..skus` (`None`: unknown SKU).
    fn snapshot(&mut self, skus: u32) -> BoxFuture<'_, Result<Snapshot, LoadError>>;
}
