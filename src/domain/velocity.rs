//! Demand velocity: per SKU x channel, exponentially decayed rates of units *held*
//! (reservations placed) and units *fulfilled*, over a few configurable half-lives, and the
//! projected stockout they imply (hours until the channel's ATP reaches zero).
//!
//! Pure, like the rest of `domain/`: time arrives as `at_ms` / `now_ms`. [`Velocity`] lives in
//! [`SkuState`](super::SkuState) and is folded by the same `SkuState::apply` that serves the
//! live path, recovery and replay, with the record's `at_ms`; so replaying a SKU's records
//! rebuilds its velocity exactly (same floating-point operations in the same order).
//!
//! For each window `w` with half-life `h`, a decayed sum `S` of units is kept as of
//! `last_ms`: an event of `q` units at `t >= last_ms` makes `S = S * 2^(-(t - last_ms)/h) + q`.
//! The rate is `S * ln 2 / h` (units per ms; shown per hour): for a constant rate `r` of
//! demand, `S` tends to `r * h / ln 2`, so the estimate tends to `r`. Reading at `now`
//! decays without changing the state. An event older than `last_ms` (requests of one SKU
//! accepted with slightly different clocks) counts at `last_ms`: nothing decays backwards.
//!
//! Why held units and not fulfilled ones drive the projection: a hold is what takes ATP
//! down; a fulfilment sells units already held and leaves ATP unchanged. Fulfilled rates are
//! kept beside them (a campaign shows in holds before it ships). Releases are not
//! subtracted: the projection errs early, never late.
//!
//! The same sums are kept per SKU x location ([`LocationDemand`]); a region is read by adding
//! up its locations' decayed sums (exact: the sums are linear).
//!
//! Memory: one [`ChannelDemand`] per SKU x channel with demand, 72 bytes (channel id 16,
//! `last_ms` 8, 2 x 3 x `f64` 48), the same per SKU x location with demand, plus 80 per SKU
//! in its state (two `Vec`s, the half-lives and the on/off switch, padded).
//! An entry whose longest-window sums have decayed below [`FORGET_BELOW_UNITS`] is dropped
//! the next time the SKU records demand (about 20 longest half-lives after its last demand).

use serde::{Deserialize, Serialize};

use super::ids::{ChannelId, LocationId, SkuId, TimeMs};

/// Number of windows (half-lives). Their lengths are configurable, their number is not.
pub const WINDOWS: usize = 3;

/// Shortest half-life accepted: 1 minute.
pub const MIN_HALF_LIFE_MS: u64 = 60_000;

/// Longest half-life accepted: 30 days.
pub const MAX_HALF_LIFE_MS: u64 = 30 * 24 * 3_600_000;

/// A SKU x channel whose longest-window sums (held and fulfilled) are below this many units
/// is forgotten when the SKU next records demand.
pub const FORGET_BELOW_UNITS: f64 = 1e-6;

/// Most SKUs one at-risk list may return.
pub const MAX_AT_RISK_LIMIT: usize = 1_000;

const MS_PER_HOUR: f64 = 3_600_000.0;

/// The half-lives of the windows, shortest first. Default 15 min, 1 h, 24 h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HalfLives {
    ms: [u64; WINDOWS],
}

impl Default for HalfLives {
    fn default() -> Self {
        HalfLives {
            ms: [15 * 60_000, 3_600_000, 24 * 3_600_000],
        }
    }
}

impl HalfLives {
    /// Half-lives in ms: each in `MIN_HALF_LIFE_MS..=MAX_HALF_LIFE_MS`, strictly increasing.
    pub fn new(ms: [u64; WINDOWS]) -> Result<HalfLives, String> {
        if let Some(bad) = ms
            .iter()
            .find(|h| !(MIN_HALF_LIFE_MS..=MAX_HALF_LIFE_MS).contains(h))
        {
            return Err(format!(
                "half-life {bad} ms is outside {MIN_HALF_LIFE_MS}..={MAX_HALF_LIFE_MS} ms"
            ));
        }
        if ms.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("half-lives {ms:?} ms must be strictly increasing"));
        }
        Ok(HalfLives { ms })
    }

    /// The half-lives in ms, shortest first.
    pub fn ms(&self) -> [u64; WINDOWS] {
        self.ms
    }
}

/// What a unit of demand was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DemandKind {
    /// Units held by a reservation placed.
    Held,
    /// Units of a hold sold.
    Fulfilled,
}

/// The decayed sums of one SKU x `key` (a channel, or a location) as of `last_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sums<K> {
    /// The channel or location.
    pub key: K,
    /// When the sums were last brought up to date.
    pub last_ms: TimeMs,
    /// Decayed units held, per window.
    pub held: [f64; WINDOWS],
    /// Decayed units fulfilled, per window.
    pub fulfilled: [f64; WINDOWS],
}

/// The sums of one SKU x channel.
pub type ChannelDemand = Sums<ChannelId>;

/// The sums of one SKU x location (regions add their locations' sums up when read).
pub type LocationDemand = Sums<LocationId>;

/// Equal when the bits are equal: replay must rebuild exactly what the live path built,
/// and bit equality makes `Eq` lawful for floats.
impl<K: PartialEq> PartialEq for Sums<K> {
    fn eq(&self, o: &Self) -> bool {
        let bits = |a: &[f64; WINDOWS]| a.map(f64::to_bits);
        self.key == o.key
            && self.last_ms == o.last_ms
            && bits(&self.held) == bits(&o.held)
            && bits(&self.fulfilled) == bits(&o.fulfilled)
    }
}

impl<K: Eq> Eq for Sums<K> {}

/// `2^(-dt/h)`: the weight left after `dt_ms`.
fn decay(dt_ms: u64, half_life_ms: u64) -> f64 {
    (-(dt_ms as f64) / half_life_ms as f64).exp2()
}

/// Decayed (held, fulfilled) sums per window.
type Pair = ([f64; WINDOWS], [f64; WINDOWS]);

const ZERO: Pair = ([0.0; WINDOWS], [0.0; WINDOWS]);

impl<K: Ord + Clone> Sums<K> {
    fn new(key: K, at_ms: TimeMs) -> Self {
        Sums {
            key,
            last_ms: at_ms,
            held: [0.0; WINDOWS],
            fulfilled: [0.0; WINDOWS],
        }
    }

    /// The sums decayed to `now_ms` (not before `last_ms`).
    fn decayed(&self, hl: &HalfLives, now_ms: TimeMs) -> Pair {
        let dt = now_ms.saturating_sub(self.last_ms);
        if dt == 0 {
            return (self.held, self.fulfilled);
        }
        let mut held = self.held;
        let mut fulfilled = self.fulfilled;
        for w in 0..WINDOWS {
            let f = decay(dt, hl.ms[w]);
            held[w] *= f;
            fulfilled[w] *= f;
        }
        (held, fulfilled)
    }

    /// Adds `qty` of `kind` to the entry of `key` in `list` (sorted by key) at `at_ms`,
    /// then drops the entries of `list` faded below [`FORGET_BELOW_UNITS`].
    fn record(
        list: &mut Vec<Sums<K>>,
        hl: &HalfLives,
        key: &K,
        kind: DemandKind,
        qty: u32,
        at_ms: TimeMs,
    ) {
        let i = match list.binary_search_by(|c| c.key.cmp(key)) {
            Ok(i) => i,
            Err(i) => {
                list.insert(i, Sums::new(key.clone(), at_ms));
                i
            }
        };
        let c = &mut list[i];
        let now = at_ms.max(c.last_ms);
        (c.held, c.fulfilled) = c.decayed(hl, now);
        c.last_ms = now;
        let sums = match kind {
            DemandKind::Held => &mut c.held,
            DemandKind::Fulfilled => &mut c.fulfilled,
        };
        for s in sums.iter_mut() {
            *s += f64::from(qty);
        }
        // An entry is at least half of what it held (>= 1 unit) at its last demand until
        // one longest half-life has passed: only older ones can have faded, and only they
        // cost a decay here.
        let longest = hl.ms.iter().copied().max().unwrap_or(0);
        list.retain(|c| {
            if now.saturating_sub(c.last_ms) < longest {
                return true;
            }
            let (h, f) = c.decayed(hl, now);
            h[WINDOWS - 1] >= FORGET_BELOW_UNITS || f[WINDOWS - 1] >= FORGET_BELOW_UNITS
        });
    }

    /// The decayed sums of `key` in `list` at `now_ms` (zero when absent).
    fn of(list: &[Sums<K>], hl: &HalfLives, key: &K, now_ms: TimeMs) -> Pair {
        list.binary_search_by(|c| c.key.cmp(key))
            .map_or(ZERO, |i| list[i].decayed(hl, now_ms))
    }
}

/// One SKU's demand: its half-lives, one entry per channel with demand and one per
/// location with demand, each sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Velocity {
    half_lives: HalfLives,
    channels: Vec<ChannelDemand>,
    locations: Vec<LocationDemand>,
    /// Recording is switched off (`--intelligence off`): no demand is recorded and the sums
    /// are empty. A setting of the process, like the half-lives, but not stored: every
    /// state the engine starts or activates is switched by its configuration
    /// ([`Velocity::set_recording`]), so no checkpoint or compact byte changes.
    #[serde(skip)]
    off: bool,
}

/// Rates of one window, in units per hour, and the stockout they project.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRate {
    /// The window's half-life.
    pub half_life_ms: u64,
    /// Units held per hour.
    pub held_per_hour: f64,
    /// Units fulfilled per hour.
    pub fulfilled_per_hour: f64,
    /// `atp / held_per_hour`; `None` when nothing is held (no stockout in sight).
    pub hours_to_zero: Option<f64>,
}

/// The velocity and projected stockout of one SKU x channel at one time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelVelocity {
    /// The channel.
    pub channel: ChannelId,
    /// The channel's ATP.
    pub atp: u32,
    /// One per window, shortest half-life first.
    pub windows: [WindowRate; WINDOWS],
}

/// Hours until `atp` units are gone at `per_hour`; `None` without demand.
pub fn hours_to_zero(atp: u32, per_hour: f64) -> Option<f64> {
    (per_hour > 0.0).then(|| f64::from(atp) / per_hour)
}

/// The velocity and projected stockout of one SKU x region at one time: the sums of the
/// region's locations, against their ATP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionVelocity {
    /// The region code.
    pub region: String,
    /// Sum of the exposed ATP of the SKU's locations in the region (no channel buffer or cap:
    /// a region is not a channel).
    pub atp: u32,
    /// One per window, shortest half-life first.
    pub windows: [WindowRate; WINDOWS],
}

/// One SKU's velocity: by channel and by region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkuVelocity {
    /// By channel.
    pub channels: Vec<ChannelVelocity>,
    /// By region.
    pub regions: Vec<RegionVelocity>,
}

impl Velocity {
    /// The half-lives this SKU's sums were made with.
    pub fn half_lives(&self) -> HalfLives {
        self.half_lives
    }

    /// Channels with demand, sorted by id.
    pub fn channels(&self) -> &[ChannelDemand] {
        &self.channels
    }

    /// Locations with demand, sorted by id.
    pub fn locations(&self) -> &[LocationDemand] {
        &self.locations
    }

    /// Uses `hl` from now on. Sums made with other half-lives mean something else, so a
    /// change forgets them (they are rebuilt from the demand recorded after it).
    pub fn configure(&mut self, hl: HalfLives) {
        if self.half_lives != hl {
            self.half_lives = hl;
            self.channels.clear();
            self.locations.clear();
        }
    }

    /// Switches recording on or off. Off forgets every sum (they would only go stale: the
    /// demand while off is not recorded, so they could not be trusted when switched on
    /// again) and makes [`Velocity::record`] and [`Velocity::record_at`] do nothing.
    pub fn set_recording(&mut self, on: bool) {
        self.off = !on;
        if !on {
            self.channels = Vec::new();
            self.locations = Vec::new();
        }
    }

    /// Whether demand is recorded (the default).
    pub fn is_recording(&self) -> bool {
        !self.off
    }

    /// Records `qty` units of `kind` on `channel` at `at_ms`.
    pub fn record(&mut self, channel: &ChannelId, kind: DemandKind, qty: u32, at_ms: TimeMs) {
        if qty > 0 && !self.off {
            Sums::record(
                &mut self.channels,
                &self.half_lives,
                channel,
                kind,
                qty,
                at_ms,
            );
        }
    }

    /// Records `qty` units of `kind` taken at `location` at `at_ms`.
    pub fn record_at(&mut self, location: &LocationId, kind: DemandKind, qty: u32, at_ms: TimeMs) {
        if qty > 0 && !self.off {
            Sums::record(
                &mut self.locations,
                &self.half_lives,
                location,
                kind,
                qty,
                at_ms,
            );
        }
    }

    fn windows(&self, (held, fulfilled): Pair, atp: u32) -> [WindowRate; WINDOWS] {
        let hl = self.half_lives;
        std::array::from_fn(|w| {
            let per_hour = |sum: f64| sum * std::f64::consts::LN_2 / hl.ms[w] as f64 * MS_PER_HOUR;
            let held_per_hour = per_hour(held[w]);
            WindowRate {
                half_life_ms: hl.ms[w],
                held_per_hour,
                fulfilled_per_hour: per_hour(fulfilled[w]),
                hours_to_zero: hours_to_zero(atp, held_per_hour),
            }
        })
    }

    /// An upper bound of [`Velocity::held_per_hour_after`] at any time: the same sum
    /// without its decay (which only shrinks it; IEEE arithmetic is monotone, so the bound
    /// holds for the computed values too). No `exp2`.
    pub fn held_per_hour_bound(&self, channel: &ChannelId, extra: u32, window: usize) -> f64 {
        let w = window.min(WINDOWS - 1);
        let held = match self.channels.binary_search_by(|c| c.key.cmp(channel)) {
            Ok(i) => self.channels[i].held[w],
            Err(_) => 0.0,
        };
        let held = if extra > 0 {
            held + f64::from(extra)
        } else {
            held
        };
        held * std::f64::consts::LN_2 / self.half_lives.ms[w] as f64 * MS_PER_HOUR
    }

    /// The held rate (units/h) of `channel` in `window` at `at_ms` once `extra` more units
    /// are held at `at_ms`: what [`Velocity::record`] then [`Velocity::rates`] would give,
    /// without changing anything (the stockout projection of a request not yet applied).
    pub fn held_per_hour_after(
        &self,
        channel: &ChannelId,
        extra: u32,
        at_ms: TimeMs,
        window: usize,
    ) -> f64 {
        let w = window.min(WINDOWS - 1);
        let held = match self.channels.binary_search_by(|c| c.key.cmp(channel)) {
            // `record` brings the sums to the later of the two times, never backwards.
            Ok(i) => {
                let c = &self.channels[i];
                c.decayed(&self.half_lives, at_ms.max(c.last_ms)).0[w]
            }
            Err(_) => 0.0,
        };
        let held = if extra > 0 {
            held + f64::from(extra)
        } else {
            held
        };
        held * std::f64::consts::LN_2 / self.half_lives.ms[w] as f64 * MS_PER_HOUR
    }

    /// [`Velocity::held_per_hour_bound`] of a location (the region projection).
    pub fn held_at_per_hour_bound(&self, location: &LocationId, extra: u32, window: usize) -> f64 {
        let w = window.min(WINDOWS - 1);
        let held = match self.locations.binary_search_by(|c| c.key.cmp(location)) {
            Ok(i) => self.locations[i].held[w],
            Err(_) => 0.0,
        };
        self.per_hour(held, extra, w)
    }

    /// [`Velocity::held_per_hour_after`] of a location: what [`Velocity::record_at`] then
    /// [`Velocity::region_rates`] would give for it alone, without changing anything.
    pub fn held_at_per_hour_after(
        &self,
        location: &LocationId,
        extra: u32,
        at_ms: TimeMs,
        window: usize,
    ) -> f64 {
        let w = window.min(WINDOWS - 1);
        let held = match self.locations.binary_search_by(|c| c.key.cmp(location)) {
            Ok(i) => {
                let c = &self.locations[i];
                c.decayed(&self.half_lives, at_ms.max(c.last_ms)).0[w]
            }
            Err(_) => 0.0,
        };
        self.per_hour(held, extra, w)
    }

    fn per_hour(&self, held: f64, extra: u32, w: usize) -> f64 {
        let held = if extra > 0 {
            held + f64::from(extra)
        } else {
            held
        };
        held * std::f64::consts::LN_2 / self.half_lives.ms[w] as f64 * MS_PER_HOUR
    }

    /// The rates of `channel` at `now_ms` with `atp` units left (zero rates without demand).
    pub fn rates(&self, channel: &ChannelId, atp: u32, now_ms: TimeMs) -> ChannelVelocity {
        let sums = Sums::of(&self.channels, &self.half_lives, channel, now_ms);
        ChannelVelocity {
            channel: channel.clone(),
            atp,
            windows: self.windows(sums, atp),
        }
    }

    /// The rates of `region` at `now_ms`: the sums of `locations` (the region's) added up,
    /// with `atp` units left there.
    pub fn region_rates<'a>(
        &self,
        region: &str,
        locations: impl IntoIterator<Item = &'a LocationId>,
        atp: u32,
        now_ms: TimeMs,
    ) -> RegionVelocity {
        let mut total = ZERO;
        for l in locations {
            let (h, f) = Sums::of(&self.locations, &self.half_lives, l, now_ms);
            for w in 0..WINDOWS {
                total.0[w] += h[w];
                total.1[w] += f[w];
            }
        }
        RegionVelocity {
            region: region.to_string(),
            atp,
            windows: self.windows(total, atp),
        }
    }
}

/// The `limit` best items offered, by a key (smaller first) then by SKU id: a bounded
/// selection (memory `limit`, whatever the number offered), shared by the at-risk lists
/// (per channel and per region) and the rebalance list. Items with a NaN key are refused
/// by the callers (a key is hours of cover or `f64::INFINITY`).
#[derive(Debug)]
pub struct TopN<T> {
    limit: usize,
    kept: Vec<(f64, SkuId, T)>,
}

impl<T> TopN<T> {
    /// An empty selection; `limit` in `1..=MAX_AT_RISK_LIMIT`.
    pub fn new(limit: usize) -> Result<TopN<T>, String> {
        if !(1..=MAX_AT_RISK_LIMIT).contains(&limit) {
            return Err(format!("limit {limit} is not in 1..={MAX_AT_RISK_LIMIT}"));
        }
        Ok(TopN {
            limit,
            kept: Vec::with_capacity(limit + 1),
        })
    }

    /// Offers `item` of `sku` ranked by `key`; `item` is only built when it is kept.
    pub fn offer(&mut self, key: f64, sku: &SkuId, item: impl FnOnce() -> T) {
        let at = self
            .kept
            .partition_point(|(k, s, _)| k.total_cmp(&key).then_with(|| s.cmp(sku)).is_lt());
        if at < self.limit {
            self.kept.insert(at, (key, sku.clone(), item()));
            self.kept.truncate(self.limit);
        }
    }

    /// The items, smallest key first.
    pub fn into_vec(self) -> Vec<T> {
        self.kept.into_iter().map(|(_, _, t)| t).collect()
    }
}

/// One SKU of an at-risk list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AtRisk {
    /// The SKU.
    pub sku: SkuId,
    /// Its velocity and projection on the listed channel.
    pub velocity: ChannelVelocity,
}

/// The `limit` SKUs of one channel whose stockout comes first in window `window`: a bounded
/// selection (memory `limit`, whatever the number of SKUs offered), soonest first, ties by
/// SKU id. SKUs without demand in the window (no projection) are not at risk and are left out.
#[derive(Debug)]
pub struct AtRiskList {
    window: usize,
    top: TopN<AtRisk>,
}

/// Checks an at-risk window.
fn check_window(window: usize) -> Result<(), String> {
    if window >= WINDOWS {
        return Err(format!("window {window} is not one of 0..{WINDOWS}"));
    }
    Ok(())
}

impl AtRiskList {
    /// An empty list; `window` below [`WINDOWS`], `limit` in `1..=MAX_AT_RISK_LIMIT`.
    pub fn new(window: usize, limit: usize) -> Result<AtRiskList, String> {
        check_window(window)?;
        Ok(AtRiskList {
            window,
            top: TopN::new(limit)?,
        })
    }

    /// Offers one SKU's velocity on the channel.
    pub fn offer(&mut self, sku: &SkuId, velocity: ChannelVelocity) {
        if let Some(h) = velocity.windows[self.window].hours_to_zero {
            self.top.offer(h, sku, || AtRisk {
                sku: sku.clone(),
                velocity,
            });
        }
    }

    /// The list, soonest stockout first.
    pub fn into_vec(self) -> Vec<AtRisk> {
        self.top.into_vec()
    }
}

/// One SKU of a region's at-risk list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AtRiskRegion {
    /// The SKU.
    pub sku: SkuId,
    /// Its velocity and projection in the listed region.
    pub velocity: RegionVelocity,
}

/// [`AtRiskList`] for one region: the `limit` SKUs whose stockout in the region (its
/// locations' exposed ATP against their summed demand) comes first, ties by SKU id;
/// SKUs without demand there are left out.
#[derive(Debug)]
pub struct AtRiskRegionList {
    window: usize,
    top: TopN<AtRiskRegion>,
}

impl AtRiskRegionList {
    /// An empty list; `window` below [`WINDOWS`], `limit` in `1..=MAX_AT_RISK_LIMIT`.
    pub fn new(window: usize, limit: usize) -> Result<AtRiskRegionList, String> {
        check_window(window)?;
        Ok(AtRiskRegionList {
            window,
            top: TopN::new(limit)?,
        })
    }

    /// Offers one SKU's velocity in the region.
    pub fn offer(&mut self, sku: &SkuId, velocity: RegionVelocity) {
        if let Some(h) = velocity.windows[self.window].hours_to_zero {
            self.top.offer(h, sku, || AtRiskRegion {
                sku: sku.clone(),
                velocity,
            });
        }
    }

    /// The list, soonest stockout first.
    pub fn into_vec(self) -> Vec<AtRiskRegion> {
        self.top.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(s: &str) -> ChannelId {
        ChannelId::new(s).unwrap()
    }

    const HOUR: u64 = 3_600_000;

    impl Velocity {
        /// (held, fulfilled) sums of `l` as stored, per window.
        fn rates_of_location(&self, l: &LocationId) -> [(f64, f64); WINDOWS] {
            let d = self.locations.iter().find(|d| d.key == *l).unwrap();
            std::array::from_fn(|w| (d.held[w], d.fulfilled[w]))
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    /// The sizes docs/intelligence.md and the module comment state (the on/off switch takes
    /// a SKU's velocity from 72 to 80 bytes: one bool, padded).
    #[test]
    fn an_entry_costs_72_bytes_and_a_skus_velocity_80() {
        assert_eq!(std::mem::size_of::<ChannelDemand>(), 72);
        assert_eq!(std::mem::size_of::<LocationDemand>(), 72);
        assert_eq!(std::mem::size_of::<Velocity>(), 80);
    }

    #[test]
    fn half_lives_outside_the_limits_or_not_increasing_are_refused() {
        assert!(HalfLives::new([59_999, HOUR, 2 * HOUR]).is_err());
        assert!(HalfLives::new([HOUR, 2 * HOUR, MAX_HALF_LIFE_MS + 1]).is_err());
        assert!(HalfLives::new([HOUR, HOUR, 2 * HOUR]).is_err());
        assert!(HalfLives::new([2 * HOUR, HOUR, 3 * HOUR]).is_err());
        assert_eq!(
            HalfLives::new([900_000, HOUR, 24 * HOUR]),
            Ok(HalfLives::default())
        );
    }

    #[test]
    fn a_single_hold_read_at_once_is_its_units_times_ln2_over_each_half_life() {
        let mut v = Velocity::default();
        v.record(&ch("web"), DemandKind::Held, 10, 5 * HOUR);
        let r = v.rates(&ch("web"), 20, 5 * HOUR);
        for w in r.windows {
            let want = 10.0 * std::f64::consts::LN_2 * HOUR as f64 / w.half_life_ms as f64;
            assert!(close(w.held_per_hour, want), "{w:?}");
            assert_eq!(w.fulfilled_per_hour, 0.0);
            assert!(close(w.hours_to_zero.unwrap(), 20.0 / want));
        }
    }

    #[test]
    fn a_channel_without_demand_has_zero_rates_and_no_projection() {
        let mut v = Velocity::default();
        v.record(&ch("web"), DemandKind::Held, 3, 0);
        let r = v.rates(&ch("pos"), 5, HOUR);
        assert!(r
            .windows
            .iter()
            .all(|w| w.held_per_hour == 0.0 && w.hours_to_zero.is_none()));
    }

    #[test]
    fn demand_recorded_with_an_older_time_counts_at_the_latest_time_seen() {
        let mut v = Velocity::default();
        v.record(&ch("web"), DemandKind::Held, 4, 2 * HOUR);
        v.record(&ch("web"), DemandKind::Held, 4, HOUR);
        assert_eq!(v.channels()[0].last_ms, 2 * HOUR);
        assert_eq!(v.channels()[0].held, [8.0; WINDOWS]);
    }

    #[test]
    fn a_region_adds_up_the_sums_of_its_locations_and_ignores_others() {
        let l = |s: &str| LocationId::new(s).unwrap();
        let mut v = Velocity::default();
        v.record_at(&l("a"), DemandKind::Held, 3, 0);
        v.record_at(&l("b"), DemandKind::Held, 5, HOUR);
        v.record_at(&l("c"), DemandKind::Held, 100, HOUR);
        v.record_at(&l("b"), DemandKind::Fulfilled, 2, HOUR);
        let r = v.region_rates("FR", [&l("a"), &l("b"), &l("z")], 10, 2 * HOUR);
        let (a, b) = (v.rates_of_location(&l("a")), v.rates_of_location(&l("b")));
        for w in 0..WINDOWS {
            let h = a[w].0 * decay(2 * HOUR, HalfLives::default().ms()[w])
                + b[w].0 * decay(HOUR, HalfLives::default().ms()[w]);
            let want = h * std::f64::consts::LN_2 * HOUR as f64 / r.windows[w].half_life_ms as f64;
            assert!(close(r.windows[w].held_per_hour, want), "{w}");
            assert!(r.windows[w].fulfilled_per_hour > 0.0);
        }
        assert_eq!((r.region.as_str(), r.atp), ("FR", 10));
        let none = v.region_rates("DE", [&l("z")], 10, 2 * HOUR);
        assert!(none.windows.iter().all(|w| w.hours_to_zero.is_none()));
    }

    #[test]
    fn held_and_fulfilled_are_kept_apart() {
        let mut v = Velocity::default();
        v.record(&ch("web"), DemandKind::Held, 6, 0);
        v.record(&ch("web"), DemandKind::Fulfilled, 2, 0);
        assert_eq!(v.channels()[0].held, [6.0; WINDOWS]);
        assert_eq!(v.channels()[0].fulfilled, [2.0; WINDOWS]);
    }

    #[test]
    fn a_channel_faded_below_the_floor_is_forgotten_when_the_sku_next_records() {
        let mut v = Velocity::default();
        v.record(&ch("a"), DemandKind::Held, 1, 0);
        // 1 unit needs log2(1e6) ~ 20 longest half-lives to fall below 1e-6.
        v.record(&ch("b"), DemandKind::Held, 1, 19 * 24 * HOUR);
        assert_eq!(v.channels().len(), 2);
        v.record(&ch("b"), DemandKind::Held, 1, 21 * 24 * HOUR);
        assert_eq!(v.channels().len(), 1);
        assert_eq!(v.channels()[0].key, ch("b"));
    }

    #[test]
    fn other_half_lives_forget_the_sums_and_the_same_ones_keep_them() {
        let mut v = Velocity::default();
        v.record(&ch("web"), DemandKind::Held, 1, 0);
        v.configure(HalfLives::default());
        assert_eq!(v.channels().len(), 1);
        v.configure(HalfLives::new([HOUR, 2 * HOUR, 3 * HOUR]).unwrap());
        assert!(v.channels().is_empty());
    }

    #[test]
    fn recording_off_forgets_the_sums_and_records_nothing_until_switched_on() {
        let mut v = Velocity::default();
        let loc = LocationId::new("wh").unwrap();
        v.record(&ch("web"), DemandKind::Held, 3, 0);
        v.record_at(&loc, DemandKind::Held, 3, 0);
        v.set_recording(false);
        assert!(!v.is_recording());
        assert!(v.channels().is_empty() && v.locations().is_empty());
        v.record(&ch("web"), DemandKind::Held, 3, 1);
        v.record_at(&loc, DemandKind::Fulfilled, 3, 1);
        assert!(v.channels().is_empty() && v.locations().is_empty());
        v.set_recording(true);
        v.record(&ch("web"), DemandKind::Held, 2, 2);
        assert_eq!(v.channels()[0].held, [2.0; WINDOWS]);
        // Not stored: a state decoded from bytes records (the engine switches it).
        v.set_recording(false);
        let back: Velocity = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert!(back.is_recording());
    }

    #[test]
    fn no_demand_means_no_stockout_and_zero_atp_with_demand_means_zero_hours() {
        assert_eq!(hours_to_zero(10, 0.0), None);
        assert_eq!(hours_to_zero(0, 2.0), Some(0.0));
        assert_eq!(hours_to_zero(10, 4.0), Some(2.5));
    }

    proptest! {
        /// Constant demand: `n` holds of `q` units every `gap` ms, read at the last one,
        /// give exactly the geometric sum `q * (1 - r^n) / (1 - r)` with `r = 2^(-gap/h)`,
        /// times ln 2 / h; the projection is ATP over that rate.
        #[test]
        fn constant_demand_gives_the_geometric_sum_rate_and_its_projection(
            q in 1u32..1000, gap in 1_000u64..600_000, n in 1u32..400, atp in 0u32..100_000,
        ) {
            let mut v = Velocity::default();
            for k in 0..u64::from(n) {
                v.record(&ch("web"), DemandKind::Held, q, 1_000 + k * gap);
            }
            let now = 1_000 + u64::from(n - 1) * gap;
            let got = v.rates(&ch("web"), atp, now);
            for w in got.windows {
                let h = w.half_life_ms as f64;
                let r = (-(gap as f64) / h).exp2();
                let sum = f64::from(q) * (1.0 - r.powi(n as i32)) / (1.0 - r);
                let want = sum * std::f64::consts::LN_2 / h * 3_600_000.0;
                prop_assert!((w.held_per_hour - want).abs() <= 1e-9 * want, "{} vs {}", w.held_per_hour, want);
                let hours = w.hours_to_zero.unwrap();
                prop_assert!((hours - f64::from(atp) / want).abs() <= 1e-9 * hours.max(1.0));
            }
        }

        /// In the steady state (many half-lives of demand), the estimate of the shortest
        /// window is the true rate q/gap within the discretisation error ln2*gap/h.
        #[test]
        fn steady_demand_converges_to_the_true_rate(q in 1u32..100, gap in 1_000u64..30_000) {
            let mut v = Velocity::default();
            let hl = HalfLives::default().ms()[0];
            let n = 20 * hl / gap;
            for k in 0..n {
                v.record(&ch("web"), DemandKind::Held, q, k * gap);
            }
            let w = v.rates(&ch("web"), 0, (n - 1) * gap).windows[0];
            let truth = f64::from(q) / gap as f64 * 3_600_000.0;
            let tolerance = std::f64::consts::LN_2 * gap as f64 / hl as f64;
            prop_assert!((w.held_per_hour / truth - 1.0).abs() <= tolerance, "{} vs {}", w.held_per_hour, truth);
        }

        /// Without demand, each window's rate halves after one of its half-lives (and the
        /// projection doubles).
        #[test]
        fn a_rate_halves_after_one_half_life_without_demand(
            q in 1u32..10_000, at in 0u64..1_000_000_000, atp in 1u32..1000,
        ) {
            let mut v = Velocity::default();
            v.record(&ch("web"), DemandKind::Held, q, at);
            v.record(&ch("web"), DemandKind::Fulfilled, q, at);
            let before = v.rates(&ch("web"), atp, at);
            for (w, b) in before.windows.iter().enumerate() {
                let after = v.rates(&ch("web"), atp, at + b.half_life_ms).windows[w];
                prop_assert!(close(after.held_per_hour, b.held_per_hour / 2.0));
                prop_assert!(close(after.fulfilled_per_hour, b.fulfilled_per_hour / 2.0));
                prop_assert!(close(after.hours_to_zero.unwrap(), 2.0 * b.hours_to_zero.unwrap()));
            }
        }
    }

    fn at_risk_of(skus: &[(&str, u32, u32)], window: usize, limit: usize) -> Vec<String> {
        let mut list = AtRiskList::new(window, limit).unwrap();
        for (sku, held, atp) in skus {
            let mut v = Velocity::default();
            v.record(&ch("web"), DemandKind::Held, *held, 0);
            list.offer(&SkuId::new(sku).unwrap(), v.rates(&ch("web"), *atp, 0));
        }
        list.into_vec()
            .into_iter()
            .map(|a| a.sku.as_str().to_string())
            .collect()
    }

    #[test]
    fn at_risk_keeps_the_soonest_stockouts_first_ties_by_sku_and_skips_no_demand() {
        // hours ~ atp / held: A 10, B 1, C 5, D no demand, E 1 (tie with B), F 0.
        let skus = [
            ("A", 1, 10),
            ("B", 10, 10),
            ("C", 2, 10),
            ("D", 0, 10),
            ("E", 5, 5),
            ("F", 1, 0),
        ];
        assert_eq!(at_risk_of(&skus, 1, 3), ["F", "B", "E"]);
        assert_eq!(at_risk_of(&skus, 0, 10), ["F", "B", "E", "C", "A"]);
    }

    #[test]
    fn at_risk_refuses_a_window_or_limit_out_of_range() {
        assert!(AtRiskList::new(WINDOWS, 1).is_err());
        assert!(AtRiskList::new(0, 0).is_err());
        assert!(AtRiskList::new(0, MAX_AT_RISK_LIMIT + 1).is_err());
        assert!(AtRiskList::new(WINDOWS - 1, MAX_AT_RISK_LIMIT).is_ok());
    }

    proptest! {
        /// The bounded list equals sorting everything by its projection and taking the first
        /// `limit` (the projections themselves are pinned by the tests above).
        #[test]
        fn at_risk_equals_a_full_sort_cut_to_the_limit(
            skus in prop::collection::vec((0u32..50, 0u32..100), 0..60), limit in 1usize..20,
        ) {
            let named: Vec<(String, u32, u32)> = skus
                .iter()
                .enumerate()
                .map(|(i, (h, a))| (format!("S{i:02}"), *h, *a))
                .collect();
            let refs: Vec<(&str, u32, u32)> =
                named.iter().map(|(s, h, a)| (s.as_str(), *h, *a)).collect();
            let got = at_risk_of(&refs, 2, limit);
            let mut all: Vec<(f64, String)> = named
                .iter()
                .filter(|(_, h, _)| *h > 0)
                .map(|(s, h, a)| {
                    let mut v = Velocity::default();
                    v.record(&ch("web"), DemandKind::Held, *h, 0);
                    let hours = v.rates(&ch("web"), *a, 0).windows[2].hours_to_zero.unwrap();
                    (hours, s.clone())
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            let want: Vec<String> = all.into_iter().take(limit).map(|x| x.1).collect();
            prop_assert_eq!(got, want);
        }
    }
}
