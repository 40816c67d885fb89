//! The catalog: locations and channels. A channel lists, in sourcing priority order, the
//! locations it may sell from, with a safety buffer and an optional cap on what it exposes.
//! The catalog is small and changes rarely, so the engine shares it as an immutable
//! snapshot (`Arc<Catalog>`) and replaces it whole on change (copy-on-write).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{ChannelId, LocationId, SkuId};
use super::limits::{
    MAX_CHANNELS, MAX_LOCATIONS, MAX_LOCATIONS_PER_CHANNEL, MAX_LOW_STOCK_OVERRIDES, MAX_QTY,
    MAX_REGION_BYTES, MAX_STOCKOUT_HOURS,
};
use super::rejection::Rejection;

/// What kind of place a location is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LocationKind {
    /// A distribution centre.
    Warehouse,
    /// A physical store (stock also sold at the till).
    Store,
    /// A micro-fulfilment site for quick commerce.
    DarkStore,
    /// Stock held by a marketplace (e.g. Amazon FBA).
    MarketplaceFulfilled,
    /// Stock shipped directly by a supplier.
    Dropship,
}

/// A stock location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Its id.
    pub id: LocationId,
    /// Its kind.
    pub kind: LocationKind,
    /// Region code, e.g. `FR` or `US-CA`.
    pub region: String,
}

/// A sales channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Its id.
    pub id: ChannelId,
    /// Locations it sells from, highest sourcing priority first.
    pub locations: Vec<LocationId>,
    /// Units held back from this channel (per SKU) as a safety buffer.
    pub buffer: u32,
    /// Most units the channel may expose per SKU, if capped.
    pub cap: Option<u32>,
}

impl Channel {
    /// Position of `loc` in the sourcing order, if the channel sells from it.
    pub fn priority_of(&self, loc: &LocationId) -> Option<usize> {
        self.locations.iter().position(|l| l == loc)
    }
}

/// Commands that change the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// Create or replace a location.
    UpsertLocation(Location),
    /// Create or replace a channel.
    UpsertChannel(Channel),
    /// Set the low-stock threshold of a channel, or of one SKU on a channel.
    SetLowStock(LowStock),
    /// Set the stockout-projection threshold of a channel (docs/intelligence.md).
    SetStockoutThreshold(StockoutThreshold),
}

/// A stockout-projection threshold: a SKU on `channel` whose projected hours to zero fall
/// under `hours` raises "stockout projected" (cleared above `hours x 1.25`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockoutThreshold {
    /// The channel.
    pub channel: ChannelId,
    /// Hours, `1..=MAX_STOCKOUT_HOURS`; 0 removes the threshold (which clears every
    /// projection on the channel as the SKUs are next evaluated).
    pub hours: u32,
}

/// A low-stock threshold: a channel's ATP in `1..=threshold` is "low stock".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStock {
    /// The channel.
    pub channel: ChannelId,
    /// A SKU overriding the channel's threshold, or `None` for the channel's own.
    pub sku: Option<SkuId>,
    /// Units; 0 removes the threshold (or the SKU's override).
    pub threshold: u32,
}

/// Where the low-stock threshold of a SKU on a channel comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LowStockSource {
    /// No threshold: no low-stock transitions.
    None,
    /// The channel's own threshold.
    Channel,
    /// The SKU's override on the channel.
    Sku,
}

/// Whether a channel's ATP lies in the low-stock band `1..=threshold` (threshold 0: never).
pub fn in_low_stock_band(atp: u32, threshold: u32) -> bool {
    atp > 0 && atp <= threshold
}

/// Events of the catalog (past tense); the catalog is a fold over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogEvent {
    /// A location was created or replaced.
    LocationUpserted(Location),
    /// A channel was created or replaced.
    ChannelUpserted(Channel),
    /// A low-stock threshold was set.
    LowStockSet(LowStock),
    /// A stockout-projection threshold was set (0: removed).
    StockoutThresholdSet(StockoutThreshold),
}

/// Channels by location: derived from the channels, built on first use after each change.
/// Never serialized, and ignored by equality (it is a cache of `channels`).
#[derive(Clone, Debug, Default)]
pub struct ChannelIndex(std::sync::OnceLock<ChannelsByLocation>);

/// The channel index's map (foldhash: it is read for every SKU change the feed derives).
#[derive(Clone, Debug, Default)]
struct ChannelsByLocation {
    /// Per location: the ids of the channels that sell from it, and their positions in
    /// `channels`.
    at: std::collections::HashMap<
        LocationId,
        (Vec<ChannelId>, Vec<usize>),
        foldhash::fast::RandomState,
    >,
    /// Every channel, in id order (a copy: positions instead of map lookups by id).
    channels: Vec<Channel>,
}

impl PartialEq for ChannelIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ChannelIndex {}

/// Locations and channels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// All locations by id.
    pub locations: BTreeMap<LocationId, Location>,
    /// All channels by id.
    pub channels: BTreeMap<ChannelId, Channel>,
    /// Log sequence number of the last event applied (0 before any).
    pub last_seq: u64,
    /// Locations in creation order: a stable small number per location (locations are never
    /// removed), used by the engine's compact in-memory encoding of passive SKUs.
    pub location_order: Vec<LocationId>,
    /// Low-stock threshold per channel (absent = none).
    pub low_stock: BTreeMap<ChannelId, u32>,
    /// Per-SKU overrides of the low-stock threshold, by SKU then channel.
    pub low_stock_sku: BTreeMap<SkuId, BTreeMap<ChannelId, u32>>,
    /// Stockout-projection threshold per channel, in hours (absent = none). Added in
    /// checkpoint format 5.
    pub stockout_hours: BTreeMap<ChannelId, u32>,
    /// Derived: which channels sell from each location.
    #[serde(skip)]
    pub index: ChannelIndex,
}

impl Catalog {
    /// The shared id of a known location (so buckets share one allocation per location).
    pub fn location_id(&self, name: &str) -> Option<&LocationId> {
        self.locations.get_key_value(name).map(|(k, _)| k)
    }

    /// The stable number of a location (its position in creation order).
    pub fn location_number(&self, id: &LocationId) -> Option<u32> {
        self.location_order
            .iter()
            .position(|l| l == id)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// Looks a channel up, or rejects with `UnknownChannel`.
    pub fn channel(&self, id: &ChannelId) -> Result<&Channel, Rejection> {
        self.channels
            .get(id)
            .ok_or_else(|| Rejection::UnknownChannel(id.clone()))
    }

    /// Channels that sell from `loc` (empty if none).
    pub fn channels_of(&self, loc: &LocationId) -> &[ChannelId] {
        self.by_location()
            .at
            .get(loc)
            .map_or(&[], |(ids, _)| ids.as_slice())
    }

    /// The channels that sell from `loc`, each with a position unique to it in this
    /// catalog (so callers can tell channels apart without comparing ids).
    pub fn channels_at(&self, loc: &LocationId) -> impl Iterator<Item = (usize, &Channel)> {
        let index = self.by_location();
        let at = index.at.get(loc).map_or(&[][..], |(_, at)| at.as_slice());
        at.iter().map(|&i| (i, &index.channels[i]))
    }

    fn by_location(&self) -> &ChannelsByLocation {
        self.index.0.get_or_init(|| {
            let mut m = ChannelsByLocation {
                channels: self.channels.values().cloned().collect(),
                ..ChannelsByLocation::default()
            };
            for (i, ch) in m.channels.iter().enumerate() {
                for l in &ch.locations {
                    let e = m.at.entry(l.clone()).or_default();
                    e.0.push(ch.id.clone());
                    e.1.push(i);
                }
            }
            m
        })
    }

    /// The low-stock threshold of `sku` on `channel`: the SKU's override, else the
    /// channel's, else 0 (none).
    pub fn low_stock_of(&self, sku: &SkuId, channel: &ChannelId) -> u32 {
        self.low_stock_in_force(sku, channel).0
    }

    /// The low-stock threshold of `sku` on `channel` and where it comes from.
    pub fn low_stock_in_force(&self, sku: &SkuId, channel: &ChannelId) -> (u32, LowStockSource) {
        if self.low_stock.is_empty() && self.low_stock_sku.is_empty() {
            // The common catalog without thresholds: no map lookups per feed record.
            return (0, LowStockSource::None);
        }
        if let Some(t) = self.low_stock_sku.get(sku).and_then(|m| m.get(channel)) {
            (*t, LowStockSource::Sku)
        } else if let Some(t) = self.low_stock.get(channel) {
            (*t, LowStockSource::Channel)
        } else {
            (0, LowStockSource::None)
        }
    }

    /// Rejects an unknown location.
    pub fn require_location(&self, id: &LocationId) -> Result<(), Rejection> {
        if self.locations.contains_key(id) {
            Ok(())
        } else {
            Err(Rejection::UnknownLocation(id.clone()))
        }
    }

    /// Validates a catalog command against the current catalog.
    pub fn decide(&self, cmd: &CatalogCommand) -> Result<CatalogEvent, Rejection> {
        match cmd {
            CatalogCommand::UpsertLocation(loc) => {
                loc.id.check()?;
                if loc.region.is_empty()
                    || loc.region.len() > MAX_REGION_BYTES
                    || !loc
                        .region
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(Rejection::invalid(format!(
                        "region {:?} must be 1..={MAX_REGION_BYTES} bytes of [A-Za-z0-9-]",
                        loc.region
                    )));
                }
                if !self.locations.contains_key(&loc.id) && self.locations.len() >= MAX_LOCATIONS {
                    return Err(Rejection::invalid(format!(
                        "at most {MAX_LOCATIONS} locations"
                    )));
                }
                Ok(CatalogEvent::LocationUpserted(loc.clone()))
            }
            CatalogCommand::UpsertChannel(ch) => {
                self.check_channel(ch)?;
                Ok(CatalogEvent::ChannelUpserted(ch.clone()))
            }
            CatalogCommand::SetLowStock(l) => {
                self.channel(&l.channel)?;
                if l.threshold > MAX_QTY {
                    return Err(Rejection::invalid(format!(
                        "low-stock threshold is at most {MAX_QTY}"
                    )));
                }
                if let Some(sku) = &l.sku {
                    sku.check()?;
                    let overrides: usize = self.low_stock_sku.values().map(BTreeMap::len).sum();
                    let known = self
                        .low_stock_sku
                        .get(sku)
                        .is_some_and(|m| m.contains_key(&l.channel));
                    if l.threshold > 0 && !known && overrides >= MAX_LOW_STOCK_OVERRIDES {
                        return Err(Rejection::invalid(format!(
                            "at most {MAX_LOW_STOCK_OVERRIDES} per-SKU low-stock overrides"
                        )));
                    }
                }
                Ok(CatalogEvent::LowStockSet(l.clone()))
            }
            CatalogCommand::SetStockoutThreshold(t) => {
                self.channel(&t.channel)?;
                if t.hours > MAX_STOCKOUT_HOURS {
                    return Err(Rejection::invalid(format!(
                        "stockout threshold is 0 (none) or 1..={MAX_STOCKOUT_HOURS} hours"
                    )));
                }
                Ok(CatalogEvent::StockoutThresholdSet(t.clone()))
            }
        }
    }

    /// The stockout-projection threshold of `channel` in hours, if it has one.
    pub fn stockout_hours_of(&self, channel: &ChannelId) -> Option<u32> {
        self.stockout_hours.get(channel).copied()
    }

    fn check_channel(&self, ch: &Channel) -> Result<(), Rejection> {
        ch.id.check()?;
        if ch.locations.is_empty() || ch.locations.len() > MAX_LOCATIONS_PER_CHANNEL {
            return Err(Rejection::invalid(format!(
                "a channel sells from 1..={MAX_LOCATIONS_PER_CHANNEL} locations"
            )));
        }
        for (i, loc) in ch.locations.iter().enumerate() {
            self.require_location(loc)?;
            if ch.locations[..i].contains(loc) {
                return Err(Rejection::invalid(format!(
                    "location {loc} listed twice in channel {}",
                    ch.id
                )));
            }
        }
        if ch.buffer > MAX_QTY || ch.cap.is_some_and(|c| c > MAX_QTY) {
            return Err(Rejection::invalid(format!(
                "channel buffer and cap are at most {MAX_QTY}"
            )));
        }
        if !self.channels.contains_key(&ch.id) && self.channels.len() >= MAX_CHANNELS {
            return Err(Rejection::invalid(format!(
                "at most {MAX_CHANNELS} channels"
            )));
        }
        Ok(())
    }

    /// Applies an event. Cannot fail: events were validated by `decide` before logging.
    pub fn apply(&mut self, ev: &CatalogEvent, seq: u64) {
        match ev {
            CatalogEvent::LocationUpserted(loc) => {
                if self.locations.insert(loc.id.clone(), loc.clone()).is_none() {
                    self.location_order.push(loc.id.clone());
                }
            }
            CatalogEvent::ChannelUpserted(ch) => {
                // Re-use the catalog's own location ids so every bucket shares them.
                let mut ch = ch.clone();
                for loc in &mut ch.locations {
                    if let Some(shared) = self.location_id(loc.as_str()) {
                        *loc = shared.clone();
                    }
                }
                self.channels.insert(ch.id.clone(), ch);
            }
            CatalogEvent::LowStockSet(l) => match &l.sku {
                None if l.threshold == 0 => {
                    self.low_stock.remove(&l.channel);
                }
                None => {
                    self.low_stock.insert(l.channel.clone(), l.threshold);
                }
                Some(sku) => {
                    let m = self.low_stock_sku.entry(sku.clone()).or_default();
                    if l.threshold == 0 {
                        m.remove(&l.channel);
                    } else {
                        m.insert(l.channel.clone(), l.threshold);
                    }
                    if m.is_empty() {
                        self.low_stock_sku.remove(sku);
                    }
                }
            },
            CatalogEvent::StockoutThresholdSet(t) => {
                if t.hours == 0 {
                    self.stockout_hours.remove(&t.channel);
                } else {
                    self.stockout_hours.insert(t.channel.clone(), t.hours);
                }
            }
        }
        self.index = ChannelIndex::default();
        self.last_seq = self.last_seq.max(seq);
    }
}
