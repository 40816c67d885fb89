//! The catalog: locations and channels. A channel lists, in sourcing priority order, the
//! locations it may sell from, with a safety buffer and an optional cap on what it exposes.
//! The catalog is small and changes rarely, so the engine shares it as an immutable
//! snapshot (`Arc<Catalog>`) and replaces it whole on change (copy-on-write).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{ChannelId, LocationId, ReservationId, SkuId};
use super::limits::{
    MAX_CHANNELS, MAX_IN_USE_CHANNELS, MAX_LOCATIONS, MAX_LOCATIONS_PER_CHANNEL,
    MAX_LOCATION_NUMBERS, MAX_LOW_STOCK_OVERRIDES, MAX_QTY, MAX_REGION_BYTES, MAX_STOCKOUT_HOURS,
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
    /// Delete a location: refused (`InUse`) while a channel sources it or a SKU holds
    /// anything there (see [`References`]).
    DeleteLocation(LocationId),
    /// Delete a channel: refused (`InUse`) while a reservation on it is open.
    DeleteChannel(ChannelId),
    /// Set the stockout-projection threshold of a channel (docs/intelligence.md).
    SetStockoutThreshold(StockoutThreshold),
}

/// What the SKUs and the reservation index say still refers to a catalog entry a delete
/// names. The engine gathers it (it needs every SKU, so it is not in the catalog) and hands
/// it to [`Catalog::decide_delete`], which adds what the catalog itself knows (the channels
/// sourcing a location) and decides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct References {
    /// SKUs with on hand, damaged, quality control, incoming or a shortfall at the location.
    pub skus_with_stock: u64,
    /// SKUs with units reserved (held by open reservations) at the location.
    pub skus_with_holds: u64,
    /// SKUs with a safety stock entry (non-zero) at the location.
    pub skus_with_safety_stock: u64,
    /// One of the SKUs counted above (the smallest id), to start looking from.
    pub example_sku: Option<SkuId>,
    /// Open reservations on the channel.
    pub reservations: u64,
    /// One of them (the smallest id).
    pub example_reservation: Option<ReservationId>,
}

/// How one SKU refers to one location (see [`References`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocationUse {
    /// On hand, damaged, quality control, incoming or a shortfall there.
    pub stock: bool,
    /// Units reserved there.
    pub holds: bool,
    /// A safety stock entry there.
    pub safety_stock: bool,
}

impl LocationUse {
    /// Whether the SKU refers to the location at all.
    pub fn any(&self) -> bool {
        self.stock || self.holds || self.safety_stock
    }
}

impl References {
    /// Counts one SKU's use of the location.
    pub fn add_sku(&mut self, sku: &SkuId, u: LocationUse) {
        if !u.any() {
            return;
        }
        self.skus_with_stock += u64::from(u.stock);
        self.skus_with_holds += u64::from(u.holds);
        self.skus_with_safety_stock += u64::from(u.safety_stock);
        if self.example_sku.as_ref().is_none_or(|e| sku < e) {
            self.example_sku = Some(sku.clone());
        }
    }

    /// Counts one open reservation on the channel.
    pub fn add_reservation(&mut self, id: ReservationId) {
        self.reservations += 1;
        if self.example_reservation.is_none_or(|e| id < e) {
            self.example_reservation = Some(id);
        }
    }

    /// Adds what another part of the scan counted.
    pub fn merge(&mut self, other: References) {
        self.skus_with_stock += other.skus_with_stock;
        self.skus_with_holds += other.skus_with_holds;
        self.skus_with_safety_stock += other.skus_with_safety_stock;
        self.reservations += other.reservations;
        if let Some(s) = other.example_sku {
            if self.example_sku.as_ref().is_none_or(|e| s < *e) {
                self.example_sku = Some(s);
            }
        }
        if let Some(r) = other.example_reservation {
            if self.example_reservation.is_none_or(|e| r < e) {
                self.example_reservation = Some(r);
            }
        }
    }
}

/// The catalog entry a delete names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CatalogRef {
    /// A location.
    Location(LocationId),
    /// A channel.
    Channel(ChannelId),
}

impl std::fmt::Display for CatalogRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogRef::Location(l) => write!(f, "location {l}"),
            CatalogRef::Channel(c) => write!(f, "channel {c}"),
        }
    }
}

/// Why a delete was refused: what still refers to the entry (the facts of rejection 17).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUse {
    /// The entry the delete named.
    pub target: CatalogRef,
    /// Channels that list the location as a source, in id order (at most
    /// [`MAX_IN_USE_CHANNELS`] of them; `channels_total` counts them all).
    pub channels: Vec<ChannelId>,
    /// How many channels list the location as a source.
    pub channels_total: u32,
    /// What the SKUs and reservations say.
    pub refs: References,
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is in use:", self.target)?;
        let mut parts = Vec::new();
        if self.channels_total > 0 {
            let names: Vec<&str> = self.channels.iter().map(|c| c.as_str()).collect();
            let more = self.channels_total as usize
                - self.channels.len().min(self.channels_total as usize);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            parts.push(format!(
                "a source of {} channel(s) ({}{tail})",
                self.channels_total,
                names.join(", ")
            ));
        }
        let r = &self.refs;
        if r.skus_with_stock > 0 {
            parts.push(format!("{} SKU(s) hold stock there", r.skus_with_stock));
        }
        if r.skus_with_holds > 0 {
            parts.push(format!(
                "{} SKU(s) have units reserved there",
                r.skus_with_holds
            ));
        }
        if r.skus_with_safety_stock > 0 {
            parts.push(format!(
                "{} SKU(s) have a safety stock there",
                r.skus_with_safety_stock
            ));
        }
        if let Some(s) = &r.example_sku {
            parts.push(format!("e.g. SKU {s}"));
        }
        if r.reservations > 0 {
            parts.push(format!("{} open reservation(s)", r.reservations));
        }
        if let Some(id) = r.example_reservation {
            parts.push(format!("e.g. reservation {id:032x}"));
        }
        write!(f, " {}", parts.join("; "))
    }
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
    /// A location was deleted (nothing referred to it; its number stays reserved for it).
    LocationDeleted(LocationId),
    /// A channel was deleted (no reservation was open on it), with its low-stock thresholds.
    ChannelDeleted(ChannelId),
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
    /// Locations in creation order: a stable small number per location id, used by the
    /// engine's compact in-memory encoding of passive SKUs. A deleted location keeps its
    /// place (SKUs may still carry its empty buckets) and gets it back when re-created.
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

/// Points `ch`'s location ids at `locations`' own keys (those it has).
fn intern_channel(locations: &BTreeMap<LocationId, Location>, ch: &mut Channel) {
    for loc in &mut ch.locations {
        if let Some((shared, _)) = locations.get_key_value(loc.as_str()) {
            *loc = shared.clone();
        }
    }
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

    /// Validates a catalog command against the current catalog. A delete is decided as
    /// [`Catalog::decide_delete`] with no references from SKUs or reservations: the engine
    /// gathers those and calls `decide_delete` itself.
    pub fn decide(&self, cmd: &CatalogCommand) -> Result<CatalogEvent, Rejection> {
        self.decide_delete(cmd, &References::default())
    }

    /// Validates a catalog command, a delete with what the SKUs and reservations say
    /// still refers to its entry (`refs`). The rule of "in use" (docs/protocol.md 7.1):
    /// a location is in use while a channel lists it as a source or any SKU has on hand,
    /// reserved, damaged, quality-control, incoming, shortfall or safety stock there; a
    /// channel while any reservation on it is open. Unknown entries: `UnknownLocation` /
    /// `UnknownChannel`.
    pub fn decide_delete(
        &self,
        cmd: &CatalogCommand,
        refs: &References,
    ) -> Result<CatalogEvent, Rejection> {
        match cmd {
            CatalogCommand::DeleteLocation(id) => {
                self.require_location(id)?;
                let sourcing: Vec<&ChannelId> = self
                    .channels
                    .values()
                    .filter(|c| c.locations.contains(id))
                    .map(|c| &c.id)
                    .collect();
                let used =
                    refs.skus_with_stock + refs.skus_with_holds + refs.skus_with_safety_stock;
                if sourcing.is_empty() && used == 0 {
                    return Ok(CatalogEvent::LocationDeleted(id.clone()));
                }
                Err(Rejection::InUse(Box::new(InUse {
                    target: CatalogRef::Location(id.clone()),
                    channels: sourcing
                        .iter()
                        .take(MAX_IN_USE_CHANNELS)
                        .map(|c| (*c).clone())
                        .collect(),
                    channels_total: u32::try_from(sourcing.len()).unwrap_or(u32::MAX),
                    refs: References {
                        reservations: 0,
                        example_reservation: None,
                        ..refs.clone()
                    },
                })))
            }
            CatalogCommand::DeleteChannel(id) => {
                self.channel(id)?;
                if refs.reservations == 0 {
                    return Ok(CatalogEvent::ChannelDeleted(id.clone()));
                }
                Err(Rejection::InUse(Box::new(InUse {
                    target: CatalogRef::Channel(id.clone()),
                    channels: Vec::new(),
                    channels_total: 0,
                    refs: References {
                        reservations: refs.reservations,
                        example_reservation: refs.example_reservation,
                        ..References::default()
                    },
                })))
            }
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
                if !self.location_order.contains(&loc.id)
                    && self.location_order.len() >= MAX_LOCATION_NUMBERS
                {
                    return Err(Rejection::invalid(format!(
                        "at most {MAX_LOCATION_NUMBERS} distinct location ids over the \
                         catalog's life (a deleted id keeps its number; re-create it instead)"
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

    /// The stockout-projection threshold of `region` in hours, if it has one: the smallest
    /// threshold among the channels with one that sell from a location of the region (a
    /// region is as urgent as the most urgent channel it sources). No allocation; visits
    /// each thresholded channel's locations.
    pub fn region_stockout_hours(&self, region: &str) -> Option<u32> {
        self.stockout_hours
            .iter()
            .filter(|(c, _)| {
                self.channels.get(*c).is_some_and(|ch| {
                    ch.locations.iter().any(|l| {
                        self.locations
                            .get(l)
                            .is_some_and(|loc| loc.region == region)
                    })
                })
            })
            .map(|(_, h)| *h)
            .min()
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

    /// Makes every channel's location ids the catalog's own copies (the keys of
    /// `locations`), as [`Catalog::apply`] does for an upserted channel: a catalog decoded
    /// from a checkpoint has a copy per mention. Equal ids compare by pointer then.
    pub fn intern_ids(&mut self) {
        let Catalog {
            locations,
            channels,
            ..
        } = self;
        for ch in channels.values_mut() {
            intern_channel(locations, ch);
        }
        self.index = ChannelIndex::default();
    }

    /// Applies an event. Cannot fail: events were validated by `decide` before logging.
    pub fn apply(&mut self, ev: &CatalogEvent, seq: u64) {
        match ev {
            CatalogEvent::LocationUpserted(loc) => {
                // A re-created location takes back its old number.
                if self.locations.insert(loc.id.clone(), loc.clone()).is_none()
                    && !self.location_order.contains(&loc.id)
                {
                    self.location_order.push(loc.id.clone());
                }
            }
            CatalogEvent::LocationDeleted(id) => {
                // `location_order` keeps it: SKUs may still carry its empty buckets.
                self.locations.remove(id);
            }
            CatalogEvent::ChannelDeleted(id) => {
                self.channels.remove(id);
                self.low_stock.remove(id);
                self.low_stock_sku.retain(|_, m| {
                    m.remove(id);
                    !m.is_empty()
                });
            }
            CatalogEvent::ChannelUpserted(ch) => {
                // Re-use the catalog's own location ids so every bucket shares them.
                let mut ch = ch.clone();
                intern_channel(&self.locations, &mut ch);
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::domain::RejectionCode;

    fn loc(s: &str) -> LocationId {
        LocationId::new(s).unwrap()
    }
    fn chan(s: &str) -> ChannelId {
        ChannelId::new(s).unwrap()
    }
    fn location(s: &str) -> Location {
        Location {
            id: loc(s),
            kind: LocationKind::Warehouse,
            region: "FR".into(),
        }
    }
    fn channel(s: &str, locs: &[&str]) -> Channel {
        Channel {
            id: chan(s),
            locations: locs.iter().map(|l| loc(l)).collect(),
            buffer: 0,
            cap: None,
        }
    }
    fn run(c: &mut Catalog, cmd: CatalogCommand, refs: &References) -> Result<(), Rejection> {
        let ev = c.decide_delete(&cmd, refs)?;
        let seq = c.last_seq + 1;
        c.apply(&ev, seq);
        Ok(())
    }

    #[test]
    fn ids_are_interned_by_apply_and_after_a_decode() {
        let mut c = Catalog::default();
        c.apply(&CatalogEvent::LocationUpserted(location("wh")), 1);
        c.apply(&CatalogEvent::ChannelUpserted(channel("web", &["wh"])), 2);
        let key = c.location_id("wh").unwrap().clone();
        assert!(c.channels[&chan("web")].locations[0].shares(&key));
        // A catalog decoded from bytes (a checkpoint) has a copy of each id per mention.
        let mut d = c.clone();
        d.channels.insert(chan("web"), channel("web", &["wh"]));
        let key = d.location_id("wh").unwrap().clone();
        assert!(!d.channels[&chan("web")].locations[0].shares(&key));
        d.intern_ids();
        assert!(d.channels[&chan("web")].locations[0].shares(&key));
        assert_eq!(d.channels_at(&key).count(), 1);
        assert_eq!(d, c);
    }

    #[test]
    fn a_location_is_in_use_while_a_channel_sources_it_or_a_sku_refers_to_it() {
        let mut c = Catalog::default();
        let none = References::default();
        run(
            &mut c,
            CatalogCommand::UpsertLocation(location("wh")),
            &none,
        )
        .unwrap();
        run(
            &mut c,
            CatalogCommand::UpsertChannel(channel("web", &["wh"])),
            &none,
        )
        .unwrap();
        let Err(Rejection::InUse(u)) = c.decide(&CatalogCommand::DeleteLocation(loc("wh"))) else {
            panic!("a sourced location was deleted")
        };
        assert_eq!(u.target, CatalogRef::Location(loc("wh")));
        assert_eq!(
            (u.channels.clone(), u.channels_total),
            (vec![chan("web")], 1)
        );
        assert!(
            u.to_string().contains("a source of 1 channel(s) (web)"),
            "{u}"
        );
        run(&mut c, CatalogCommand::DeleteChannel(chan("web")), &none).unwrap();
        let mut refs = References::default();
        refs.add_sku(
            &SkuId::new("B").unwrap(),
            LocationUse {
                safety_stock: true,
                ..LocationUse::default()
            },
        );
        refs.add_sku(
            &SkuId::new("A").unwrap(),
            LocationUse {
                stock: true,
                ..LocationUse::default()
            },
        );
        refs.add_sku(&SkuId::new("0").unwrap(), LocationUse::default());
        let Err(Rejection::InUse(u)) =
            c.decide_delete(&CatalogCommand::DeleteLocation(loc("wh")), &refs)
        else {
            panic!("a location with stock was deleted")
        };
        assert_eq!(u.channels_total, 0);
        assert_eq!(
            (
                u.refs.skus_with_stock,
                u.refs.skus_with_safety_stock,
                u.refs.skus_with_holds
            ),
            (1, 1, 0)
        );
        // The smallest SKU that refers to it (a SKU of zeros does not).
        assert_eq!(u.refs.example_sku, Some(SkuId::new("A").unwrap()));
        run(&mut c, CatalogCommand::DeleteLocation(loc("wh")), &none).unwrap();
        assert!(c.locations.is_empty());
        assert_eq!(
            c.decide(&CatalogCommand::DeleteLocation(loc("wh")))
                .unwrap_err()
                .code(),
            RejectionCode::UnknownLocation
        );
    }

    #[test]
    fn a_channel_is_in_use_while_a_reservation_is_open_and_its_thresholds_go_with_it() {
        let mut c = Catalog::default();
        let none = References::default();
        run(
            &mut c,
            CatalogCommand::UpsertLocation(location("wh")),
            &none,
        )
        .unwrap();
        run(
            &mut c,
            CatalogCommand::UpsertChannel(channel("web", &["wh"])),
            &none,
        )
        .unwrap();
        let sku = SkuId::new("A").unwrap();
        for s in [None, Some(sku.clone())] {
            let low = LowStock {
                channel: chan("web"),
                sku: s,
                threshold: 3,
            };
            run(&mut c, CatalogCommand::SetLowStock(low), &none).unwrap();
        }
        let mut refs = References::default();
        refs.add_reservation(9);
        refs.add_reservation(4);
        let Err(Rejection::InUse(u)) =
            c.decide_delete(&CatalogCommand::DeleteChannel(chan("web")), &refs)
        else {
            panic!("a channel with open reservations was deleted")
        };
        assert_eq!(
            (u.refs.reservations, u.refs.example_reservation),
            (2, Some(4))
        );
        assert_eq!(u.code_check(), 17);
        run(&mut c, CatalogCommand::DeleteChannel(chan("web")), &none).unwrap();
        assert!(c.channels.is_empty() && c.low_stock.is_empty() && c.low_stock_sku.is_empty());
        assert_eq!(c.low_stock_of(&sku, &chan("web")), 0);
        assert_eq!(
            c.decide(&CatalogCommand::DeleteChannel(chan("web")))
                .unwrap_err()
                .code(),
            RejectionCode::UnknownChannel
        );
        // Re-created, it starts without the old thresholds.
        run(
            &mut c,
            CatalogCommand::UpsertChannel(channel("web", &["wh"])),
            &none,
        )
        .unwrap();
        assert_eq!(c.low_stock_of(&sku, &chan("web")), 0);
    }

    impl InUse {
        fn code_check(&self) -> u16 {
            Rejection::InUse(Box::new(self.clone())).code() as u16
        }
    }

    /// A step of the model test: which pool entry, and for deletes what the SKUs and
    /// reservations say (in use or not).
    #[derive(Clone, Debug)]
    enum Step {
        UpsertLocation(usize),
        UpsertChannel(usize, Vec<usize>),
        DeleteLocation(usize, bool),
        DeleteChannel(usize, bool),
    }

    const LOCS: [&str; 4] = ["l0", "l1", "l2", "l3"];
    const CHANS: [&str; 3] = ["c0", "c1", "c2"];

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..LOCS.len()).prop_map(Step::UpsertLocation),
            (
                0..CHANS.len(),
                proptest::collection::vec(0..LOCS.len(), 1..3)
            )
                .prop_map(|(c, l)| Step::UpsertChannel(c, l)),
            (0..LOCS.len(), any::<bool>()).prop_map(|(l, u)| Step::DeleteLocation(l, u)),
            (0..CHANS.len(), any::<bool>()).prop_map(|(c, u)| Step::DeleteChannel(c, u)),
        ]
    }

    proptest! {
        /// Against a model of sets: what exists, which deletes are refused and with which
        /// code; a location's number never changes once given (re-creation takes it back).
        #[test]
        fn deletes_follow_the_in_use_rule(steps in proptest::collection::vec(step(), 1..60)) {
            let mut c = Catalog::default();
            let mut locs: BTreeSet<&str> = BTreeSet::new();
            let mut chans: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            let mut numbers: BTreeMap<&str, u32> = BTreeMap::new();
            for s in steps {
                let (cmd, refs, expected): (CatalogCommand, References, Result<(), u16>) = match s {
                    Step::UpsertLocation(l) => {
                        locs.insert(LOCS[l]);
                        (CatalogCommand::UpsertLocation(location(LOCS[l])), References::default(), Ok(()))
                    }
                    Step::UpsertChannel(ch, ls) => {
                        let mut ids: Vec<&str> = Vec::new();
                        for l in ls {
                            if !ids.contains(&LOCS[l]) {
                                ids.push(LOCS[l]);
                            }
                        }
                        let e = match ids.iter().find(|l| !locs.contains(*l)) {
                            Some(_) => Err(3),
                            None => {
                                chans.insert(CHANS[ch], ids.clone());
                                Ok(())
                            }
                        };
                        (CatalogCommand::UpsertChannel(channel(CHANS[ch], &ids)), References::default(), e)
                    }
                    Step::DeleteLocation(l, used) => {
                        let id = LOCS[l];
                        let mut refs = References::default();
                        if used {
                            refs.add_sku(&SkuId::new("S").unwrap(), LocationUse { holds: true, ..LocationUse::default() });
                        }
                        let e = if !locs.contains(id) {
                            Err(3)
                        } else if used || chans.values().any(|ls| ls.contains(&id)) {
                            Err(17)
                        } else {
                            locs.remove(id);
                            Ok(())
                        };
                        (CatalogCommand::DeleteLocation(loc(id)), refs, e)
                    }
                    Step::DeleteChannel(ch, open) => {
                        let id = CHANS[ch];
                        let mut refs = References::default();
                        if open {
                            refs.add_reservation(1);
                        }
                        let e = if !chans.contains_key(id) {
                            Err(4)
                        } else if open {
                            Err(17)
                        } else {
                            chans.remove(id);
                            Ok(())
                        };
                        (CatalogCommand::DeleteChannel(chan(id)), refs, e)
                    }
                };
                let got = run(&mut c, cmd.clone(), &refs).map_err(|r| r.code() as u16);
                prop_assert_eq!(got, expected, "{:?}", cmd);
                let have: BTreeSet<&str> = c.locations.keys().map(|l| l.as_str()).collect();
                prop_assert_eq!(&have, &locs);
                let have: BTreeMap<&str, Vec<&str>> = c
                    .channels
                    .values()
                    .map(|ch| (ch.id.as_str(), ch.locations.iter().map(|l| l.as_str()).collect()))
                    .collect();
                prop_assert_eq!(&have, &chans);
                let distinct: BTreeSet<&LocationId> = c.location_order.iter().collect();
                prop_assert_eq!(distinct.len(), c.location_order.len());
                for l in &locs {
                    let n = c.location_number(&loc(l)).unwrap();
                    prop_assert_eq!(*numbers.entry(l).or_insert(n), n);
                }
            }
        }
    }
}
