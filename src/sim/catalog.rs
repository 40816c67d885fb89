//! The catalog loader: creates locations, channels and stock through the protocol, in
//! batched request frames with several frames in flight, so a 1M-SKU catalog loads in
//! seconds. Stock is *set* (set-on-hand), not added, so loading twice leaves the same
//! catalog. Two shapes: a generic one (`--skus N --locations M --channels K`) and the demo
//! retailer of `omnistock demo` (warehouses, stores, a dark store, marketplace-fulfilled
//! stock; web-fr, web-com, pos, amazon, zalando, tmall). The Redis target gets the same
//! SKUs as one hash per SKU (`on_hand`, `reserved`).

use std::time::Instant;

use futures::stream::{self, TryStreamExt};
use serde::Serialize;

use super::workload::sku_name;
use super::LoadError;
use crate::client::{new_request_id, Client};
use crate::protocol::{
    status, Op, SetOnHand, UpsertChannel, UpsertLocation, WireChannel, WireLocation,
    WireLocationKind,
};

/// Most SKUs the loader creates.
pub const MAX_SKUS: u32 = 10_000_000;
/// Most locations of the generic catalog (a channel sources from at most 64).
pub const MAX_LOCATIONS: u32 = 64;
/// Most channels of the generic catalog.
pub const MAX_CHANNELS: u32 = 1_000;
/// Operations per request frame while loading.
const LOAD_BATCH_OPS: usize = 1_000;
/// Request frames in flight while loading.
const LOAD_FRAMES_IN_FLIGHT: usize = 8;

/// How much stock each SKU gets at each location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Stock {
    /// The same quantity everywhere.
    PerLocation(u32),
    /// The demo's varied quantities (1..=40 per location).
    Demo,
}

/// A catalog to create.
#[derive(Clone, Debug, Serialize)]
pub struct CatalogSpec {
    /// Locations.
    pub locations: Vec<WireLocation>,
    /// Channels.
    pub channels: Vec<WireChannel>,
    /// SKUs `SKU-0000000` .. this many.
    pub skus: u32,
    /// Stock per SKU and location.
    pub stock: Stock,
}

impl CatalogSpec {
    /// `locations` warehouses `loc-000..`, `channels` channels `ch-000..` each sourcing from
    /// every location (rotated, so channels prefer different locations), buffer 0, no cap,
    /// and `stock` units of each SKU at each location.
    pub fn generic(
        skus: u32,
        locations: u32,
        channels: u32,
        stock: u32,
    ) -> Result<CatalogSpec, LoadError> {
        if !(1..=MAX_SKUS).contains(&skus) {
            return Err(LoadError::Config(format!("--skus must be 1..={MAX_SKUS}")));
        }
        if !(1..=MAX_LOCATIONS).contains(&locations) {
            return Err(LoadError::Config(format!(
                "--locations must be 1..={MAX_LOCATIONS}"
            )));
        }
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(LoadError::Config(format!(
                "--channels must be 1..={MAX_CHANNELS}"
            )));
        }
        if stock > 1_000_000_000 {
            return Err(LoadError::Config("--stock must be at most 10^9".into()));
        }
        let locs: Vec<String> = (0..locations).map(|i| format!("loc-{i:03}")).collect();
        let n = locs.len();
        Ok(CatalogSpec {
            locations: locs
                .iter()
                .map(|id| WireLocation {
                    id: id.clone(),
                    kind: WireLocationKind::Warehouse,
                    region: "XX".into(),
                })
                .collect(),
            channels: (0..channels as usize)
                .map(|c| WireChannel {
                    id: format!("ch-{c:03}"),
                    locations: (0..n).map(|j| locs[(c + j) % n].clone()).collect(),
                    buffer: 0,
                    cap: None,
                })
                .collect(),
            skus,
            stock: Stock::PerLocation(stock),
        })
    }

    /// The demo retailer: 6 locations and 6 channels (with buffers and marketplace caps).
    pub fn demo(skus: u32) -> Result<CatalogSpec, LoadError> {
        if !(1..=MAX_SKUS).contains(&skus) {
            return Err(LoadError::Config(format!("--skus must be 1..={MAX_SKUS}")));
        }
        use WireLocationKind::*;
        let locations = [
            ("wh-paris", Warehouse, "FR"),
            ("wh-newark", Warehouse, "US-NJ"),
            ("st-lyon", Store, "FR"),
            ("st-soho", Store, "US-NY"),
            ("ds-paris-11", DarkStore, "FR"),
            ("mk-amazon-us", MarketplaceFulfilled, "US"),
        ];
        let channels: [(&str, &[&str], u32, Option<u32>); 6] = [
            ("web-fr", &["ds-paris-11", "wh-paris", "st-lyon"], 1, None),
            ("web-com", &["wh-newark", "st-soho"], 1, None),
            ("pos", &["st-lyon", "st-soho"], 0, None),
            ("amazon", &["mk-amazon-us", "wh-newark"], 2, Some(50)),
            ("zalando", &["wh-paris"], 2, Some(30)),
            ("tmall", &["wh-paris", "wh-newark"], 3, Some(20)),
        ];
        Ok(CatalogSpec {
            locations: locations
                .iter()
                .map(|(id, kind, region)| WireLocation {
                    id: (*id).into(),
                    kind: *kind,
                    region: (*region).into(),
                })
                .collect(),
            channels: channels
                .iter()
                .map(|(id, locs, buffer, cap)| WireChannel {
                    id: (*id).into(),
                    locations: locs.iter().map(|l| (*l).to_string()).collect(),
                    buffer: *buffer,
                    cap: *cap,
                })
                .collect(),
            skus,
            stock: Stock::Demo,
        })
    }

    /// Units of SKU `sku` at location index `loc`.
    pub fn stock_of(&self, sku: u32, loc: usize) -> u32 {
        match self.stock {
            Stock::PerLocation(q) => q,
            // Varied but deterministic: 1..=40.
            Stock::Demo => ((u64::from(sku) * 7 + loc as u64 * 13) % 40 + 1) as u32,
        }
    }

    /// Units of SKU `sku` over all locations.
    pub fn total_stock_of(&self, sku: u32) -> u64 {
        (0..self.locations.len())
            .map(|l| u64::from(self.stock_of(sku, l)))
            .sum()
    }

    /// Location ids.
    pub fn location_ids(&self) -> Vec<String> {
        self.locations.iter().map(|l| l.id.clone()).collect()
    }

    /// Channel ids.
    pub fn channel_ids(&self) -> Vec<String> {
        self.channels.iter().map(|c| c.id.clone()).collect()
    }
}

/// What loading did.
#[derive(Clone, Debug, Serialize)]
pub struct LoadedCatalog {
    /// Operations sent.
    pub operations: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

async fn send_all(client: &Client, ops: Vec<Op>) -> Result<u64, LoadError> {
    let n = ops.len() as u64;
    let chunks: Vec<Vec<Op>> = ops.chunks(LOAD_BATCH_OPS).map(<[Op]>::to_vec).collect();
    stream::iter(chunks.into_iter().map(Ok::<_, LoadError>))
        .try_for_each_concurrent(LOAD_FRAMES_IN_FLIGHT, |chunk| async move {
            let results = client.batch(&chunk).await?;
            if let Some((i, r)) = results
                .iter()
                .enumerate()
                .find(|(_, r)| r.status != status::OK)
            {
                return Err(LoadError::Catalog(format!(
                    "{:?} answered status {} ({}): {}",
                    chunk.get(i).map(Op::opcode),
                    r.status,
                    status::name(r.status),
                    r.message
                )));
            }
            Ok(())
        })
        .await?;
    Ok(n)
}

/// Creates the catalog on an omnistock server (the client needs the admin role).
pub async fn load(client: &Client, spec: &CatalogSpec) -> Result<LoadedCatalog, LoadError> {
    let t = Instant::now();
    let mut operations = 0;
    let locations = spec
        .locations
        .iter()
        .map(|l| {
            Op::UpsertLocation(UpsertLocation {
                request_id: new_request_id(),
                location: l.clone(),
            })
        })
        .collect();
    operations += send_all(client, locations).await?;
    let channels = spec
        .channels
        .iter()
        .map(|c| {
            Op::UpsertChannel(UpsertChannel {
                request_id: new_request_id(),
                channel: c.clone(),
            })
        })
        .collect();
    operations += send_all(client, channels).await?;
    // Stock in slices of SKUs so a large catalog never builds every op at once.
    let per_slice = 100_000u32;
    let mut first = 0;
    while first < spec.skus {
        let last = first.saturating_add(per_slice).min(spec.skus);
        let mut ops = Vec::with_capacity(((last - first) as usize) * spec.locations.len());
        for sku in first..last {
            let name = sku_name(sku);
            for (j, l) in spec.locations.iter().enumerate() {
                ops.push(Op::SetOnHand(SetOnHand {
                    request_id: new_request_id(),
                    sku: name.clone(),
                    location: l.id.clone(),
                    on_hand: spec.stock_of(sku, j),
                    expected: None,
                    reference: "omnistock-load catalog".into(),
                }));
            }
        }
        operations += send_all(client, ops).await?;
        first = last;
    }
    Ok(LoadedCatalog {
        operations,
        seconds: t.elapsed().as_secs_f64(),
    })
}
