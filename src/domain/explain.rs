//! Explained ATP: why a channel shows the number it shows for one SKU. For a SKU x channel
//! it lists each of the channel's locations' part (on hand, reserved, safety stock, damaged,
//! quality control, shortfall and what the location adds to the channel), what the
//! channel's buffer and cap held back, the open holds on the SKU grouped by channel (other
//! channels' holds take units from shared locations), and the low-stock threshold in force.
//!
//! Architecture invariant: an explanation is computed with the same functions as the ATP it
//! explains ([`Bucket::atp`], [`Bucket::atp_exposed`], [`ChannelSum::of`]), never with a copy
//! of the formula, so `explain(..).atp == channel_atp(..)` by construction; a property test
//! holds it there for arbitrary states.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog::{in_low_stock_band, Catalog, LowStockSource};
use super::ids::{ChannelId, LocationId, SkuId};
use super::rejection::Rejection;
use super::sku::{Bucket, ChannelSum, SkuState};

/// One location's part in a channel's ATP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationPart {
    /// The location (in the channel's sourcing order).
    pub location: LocationId,
    /// Sellable units on hand.
    pub on_hand: u32,
    /// Units held by open reservations (of any channel).
    pub reserved: u32,
    /// Units never promised.
    pub safety_stock: u32,
    /// Damaged units (not sellable; shown, not subtracted: they are not in `on_hand`).
    pub damaged: u32,
    /// Units in quality control (not sellable yet; shown, not subtracted).
    pub quality_control: u32,
    /// Units sold that were not on hand, owed back by the next arrivals.
    pub shortfall: u32,
    /// `on_hand - shortfall - reserved - safety_stock`; negative when oversold or under
    /// safety stock.
    pub atp: i64,
    /// What this location adds to the channel's sum: `max(0, atp)`.
    pub contribution: u32,
}

impl LocationPart {
    fn of(location: &LocationId, bucket: Option<&Bucket>) -> LocationPart {
        match bucket {
            Some(b) => LocationPart {
                location: location.clone(),
                on_hand: b.on_hand,
                reserved: b.reserved,
                safety_stock: b.safety_stock,
                damaged: b.damaged,
                quality_control: b.quality_control,
                shortfall: b.shortfall,
                atp: b.atp(),
                contribution: b.atp_exposed(),
            },
            // Never stocked here: adds nothing (as `SkuState::location_atp` says).
            None => LocationPart {
                location: location.clone(),
                on_hand: 0,
                reserved: 0,
                safety_stock: 0,
                damaged: 0,
                quality_control: 0,
                shortfall: 0,
                atp: 0,
                contribution: 0,
            },
        }
    }
}

/// The open holds of one channel on the SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHolds {
    /// The holds' channel.
    pub channel: ChannelId,
    /// Open holds (reservations) of that channel on this SKU.
    pub holds: u32,
    /// Units they still hold, wherever they are.
    pub units: u64,
    /// Of those, units at locations the explained channel sells from (they are in those
    /// locations' `reserved`).
    pub units_here: u64,
}

/// The low-stock threshold that applies to the SKU on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockInForce {
    /// Units (0: none).
    pub threshold: u32,
    /// The SKU's override, the channel's threshold, or none.
    pub source: LowStockSource,
    /// Whether the ATP is in the low-stock band `1..=threshold` now.
    pub low: bool,
}

/// Why a channel shows the ATP it shows for one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtpExplanation {
    /// The SKU.
    pub sku: SkuId,
    /// The channel.
    pub channel: ChannelId,
    /// One part per location of the channel, in sourcing order.
    pub locations: Vec<LocationPart>,
    /// The channel's buffer (units held back per SKU).
    pub buffer: u32,
    /// The channel's cap, if any.
    pub cap: Option<u32>,
    /// The arithmetic: sum of the contributions, what the buffer and the cap withheld, and
    /// the ATP (`sum - withheld_by_buffer - withheld_by_cap`).
    pub sum: ChannelSum,
    /// Open holds on this SKU by channel, sorted by channel id (every channel with one).
    pub holds: Vec<ChannelHolds>,
    /// The low-stock threshold in force.
    pub low_stock: LowStockInForce,
    /// Log sequence number of the SKU's last change.
    pub last_seq: u64,
}

impl AtpExplanation {
    /// The channel's ATP (equal to [`SkuState::channel_atp`]).
    pub fn atp(&self) -> u32 {
        self.sum.atp
    }
}

impl SkuState {
    /// Explains `channel`'s ATP for this SKU. Rejects an unknown channel (`UnknownChannel`).
    pub fn explain(
        &self,
        catalog: &Catalog,
        channel: &ChannelId,
    ) -> Result<AtpExplanation, Rejection> {
        let ch = catalog.channel(channel)?;
        let locations: Vec<LocationPart> = ch
            .locations
            .iter()
            .map(|l| LocationPart::of(l, self.bucket(l)))
            .collect();
        let sum = ChannelSum::of(ch, locations.iter().map(|p| p.contribution));
        let (threshold, source) = catalog.low_stock_in_force(&self.sku, channel);
        let mut by_channel: BTreeMap<&ChannelId, ChannelHolds> = BTreeMap::new();
        for h in self.holds.values() {
            let e = by_channel
                .entry(&h.channel)
                .or_insert_with(|| ChannelHolds {
                    channel: h.channel.clone(),
                    holds: 0,
                    units: 0,
                    units_here: 0,
                });
            e.holds = e.holds.saturating_add(1);
            for a in &h.allocations {
                e.units += u64::from(a.qty);
                if ch.priority_of(&a.location).is_some() {
                    e.units_here += u64::from(a.qty);
                }
            }
        }
        Ok(AtpExplanation {
            sku: self.sku.clone(),
            channel: ch.id.clone(),
            locations,
            buffer: ch.buffer,
            cap: ch.cap,
            sum,
            holds: by_channel.into_values().collect(),
            low_stock: LowStockInForce {
                threshold,
                source,
                low: in_low_stock_band(sum.atp, threshold),
            },
            last_seq: self.last_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::catalog::{CatalogCommand, Channel, Location, LocationKind, LowStock};
    use crate::domain::event::{ReleaseReason, StockState};
    use crate::domain::sku::{AdjustReason, HoldLine, SkuCommand};

    const LOCS: [&str; 4] = ["l1", "l2", "l3", "l4"];

    fn l(name: &str) -> LocationId {
        LocationId::new(name).unwrap()
    }

    fn c(name: &str) -> ChannelId {
        ChannelId::new(name).unwrap()
    }

    /// Four locations; `web` (l1, l2, l3; buffer, cap as given), `pos` (l3, l4; no buffer,
    /// no cap), `one` (l4; buffer 2).
    fn catalog(buffer: u32, cap: Option<u32>) -> Catalog {
        let mut cat = Catalog::default();
        let mut seq = 0;
        let mut run = |cat: &mut Catalog, cmd: CatalogCommand| {
            let ev = cat.decide(&cmd).unwrap();
            seq += 1;
            cat.apply(&ev, seq);
        };
        for id in LOCS {
            let loc = Location {
                id: l(id),
                kind: LocationKind::Store,
                region: "FR".into(),
            };
            run(&mut cat, CatalogCommand::UpsertLocation(loc));
        }
        for (id, locs, buffer, cap) in [
            ("web", &LOCS[..3], buffer, cap),
            ("pos", &LOCS[2..], 0, None),
            ("one", &LOCS[3..], 2, None),
        ] {
            let ch = Channel {
                id: c(id),
                locations: locs.iter().map(|x| l(x)).collect(),
                buffer,
                cap,
            };
            run(&mut cat, CatalogCommand::UpsertChannel(ch));
        }
        cat
    }

    /// Decides and applies `cmd` (time 0); a rejection changes nothing and is ignored.
    fn run(s: &mut SkuState, cat: &Catalog, cmd: &SkuCommand) {
        if let Ok(events) = s.decide(cmd, cat, 0) {
            for e in &events {
                let seq = s.last_seq + 1;
                s.apply(e, seq, 0);
            }
        }
    }

    fn adjust(loc: &str, delta: i64) -> SkuCommand {
        SkuCommand::Adjust {
            location: l(loc),
            delta,
            reason: AdjustReason::Receipt,
            reference: String::new(),
        }
    }

    fn safety(loc: &str, qty: u32) -> SkuCommand {
        SkuCommand::SetSafetyStock {
            location: l(loc),
            qty,
        }
    }

    fn hold(reservation: u128, channel: &str, qty: u32, loc: Option<&str>) -> SkuCommand {
        SkuCommand::Hold {
            reservation,
            channel: c(channel),
            lines: vec![HoldLine {
                line: 0,
                qty,
                location: loc.map(l),
            }],
            allow_split: true,
            expires_at_ms: 1_000,
            cart_skus: 1,
        }
    }

    fn sku(cat: &Catalog, cmds: &[SkuCommand]) -> SkuState {
        let mut s = SkuState::new(SkuId::new("A").unwrap());
        for cmd in cmds {
            run(&mut s, cat, cmd);
        }
        s
    }

    /// (location, contribution) of each part, then (sum, by buffer, by cap, atp).
    type Facts = (Vec<(String, u32)>, (u64, u64, u64, u32));

    fn facts(e: &AtpExplanation) -> Facts {
        let parts = e
            .locations
            .iter()
            .map(|p| (p.location.to_string(), p.contribution))
            .collect();
        let s = e.sum;
        (
            parts,
            (s.sum, s.withheld_by_buffer, s.withheld_by_cap, s.atp),
        )
    }

    fn check(cat: &Catalog, cmds: &[SkuCommand], channel: &str, expected: Facts) {
        let s = sku(cat, cmds);
        let e = s.explain(cat, &c(channel)).unwrap();
        assert_eq!(facts(&e), expected);
        assert_eq!(e.atp(), s.channel_atp(cat.channel(&c(channel)).unwrap()));
    }

    fn parts(v: &[(&str, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(l, q)| ((*l).to_string(), *q)).collect()
    }

    #[test]
    fn the_buffer_is_taken_from_the_sum_of_the_locations() {
        let cat = catalog(3, None);
        let cmds = [adjust("l1", 5), adjust("l2", 4)];
        let want = (parts(&[("l1", 5), ("l2", 4), ("l3", 0)]), (9, 3, 0, 6));
        check(&cat, &cmds, "web", want);
    }

    #[test]
    fn a_buffer_larger_than_the_sum_withholds_only_the_sum() {
        let cat = catalog(10, None);
        let want = (parts(&[("l1", 4), ("l2", 0), ("l3", 0)]), (4, 4, 0, 0));
        check(&cat, &[adjust("l1", 4)], "web", want);
    }

    #[test]
    fn the_cap_withholds_what_is_left_above_it_after_the_buffer() {
        let cat = catalog(1, Some(5));
        let cmds = [adjust("l1", 7), adjust("l3", 2)];
        let want = (parts(&[("l1", 7), ("l2", 0), ("l3", 2)]), (9, 1, 3, 5));
        check(&cat, &cmds, "web", want);
        // Under the cap, the cap withholds nothing.
        let want = (parts(&[("l1", 3), ("l2", 0), ("l3", 0)]), (3, 1, 0, 2));
        check(&cat, &[adjust("l1", 3)], "web", want);
    }

    #[test]
    fn safety_stock_above_what_is_free_contributes_nothing_not_less_than_nothing() {
        let cat = catalog(0, None);
        let cmds = [
            adjust("l1", 5),
            safety("l1", 2),
            adjust("l2", 3),
            safety("l2", 7),
        ];
        let s = sku(&cat, &cmds);
        let e = s.explain(&cat, &c("web")).unwrap();
        let p2 = &e.locations[1];
        assert_eq!(
            (p2.on_hand, p2.safety_stock, p2.atp, p2.contribution),
            (3, 7, -4, 0)
        );
        let want = (parts(&[("l1", 3), ("l2", 0), ("l3", 0)]), (3, 0, 0, 3));
        assert_eq!(facts(&e), want);
    }

    #[test]
    fn a_shortfall_is_shown_and_its_location_contributes_nothing() {
        let cat = catalog(0, None);
        let fulfil = SkuCommand::Fulfill {
            reservation: 1,
            qty: None,
        };
        // Hold 3 at l1, lose the 3 units, sell the hold: 3 units owed at l1.
        let cmds = [
            adjust("l1", 3),
            adjust("l2", 2),
            hold(1, "web", 3, Some("l1")),
            adjust("l1", -3),
            fulfil,
        ];
        let s = sku(&cat, &cmds);
        let e = s.explain(&cat, &c("web")).unwrap();
        let p1 = &e.locations[0];
        assert_eq!(
            (p1.on_hand, p1.shortfall, p1.atp, p1.contribution),
            (0, 3, -3, 0)
        );
        assert_eq!(facts(&e).1, (2, 0, 0, 2));
    }

    #[test]
    fn damaged_and_quality_control_are_shown_but_not_sellable() {
        let cat = catalog(0, None);
        let to = |state| SkuCommand::Move {
            location: l("l1"),
            from: StockState::Sellable,
            to: state,
            qty: 2,
        };
        let cmds = [
            adjust("l1", 10),
            to(StockState::Damaged),
            to(StockState::QualityControl),
        ];
        let e = sku(&cat, &cmds).explain(&cat, &c("web")).unwrap();
        let p = &e.locations[0];
        let got = (p.on_hand, p.damaged, p.quality_control, p.contribution);
        assert_eq!(got, (6, 2, 2, 6));
        assert_eq!(e.atp(), 6);
    }

    #[test]
    fn holds_are_grouped_by_channel_with_the_units_at_this_channels_locations() {
        let cat = catalog(0, None);
        let cmds = [
            adjust("l1", 10),
            adjust("l3", 10),
            adjust("l4", 10),
            hold(1, "web", 2, Some("l1")),
            hold(2, "web", 1, Some("l3")),
            hold(3, "pos", 4, Some("l3")),
            hold(4, "pos", 5, Some("l4")),
        ];
        let s = sku(&cat, &cmds);
        let e = s.explain(&cat, &c("web")).unwrap();
        let got: Vec<_> = e
            .holds
            .iter()
            .map(|h| (h.channel.to_string(), h.holds, h.units, h.units_here))
            .collect();
        // pos's 4 units at l3 (shared) reduce web's ATP; its 5 at l4 do not.
        let want = vec![("pos".to_string(), 2, 9, 4), ("web".to_string(), 2, 3, 3)];
        assert_eq!(got, want);
        assert_eq!(e.atp(), (10 - 2) + (10 - 1 - 4));
    }

    #[test]
    fn the_low_stock_threshold_in_force_is_the_skus_override_else_the_channels() {
        let mut cat = catalog(0, None);
        let set = |cat: &mut Catalog, sku: Option<&str>, threshold| {
            let cmd = CatalogCommand::SetLowStock(LowStock {
                channel: c("web"),
                sku: sku.map(|s| SkuId::new(s).unwrap()),
                threshold,
            });
            let ev = cat.decide(&cmd).unwrap();
            let seq = cat.last_seq + 1;
            cat.apply(&ev, seq);
        };
        let s = sku(&cat, &[adjust("l1", 4)]);
        let low = |cat: &Catalog| s.explain(cat, &c("web")).unwrap().low_stock;
        let none = LowStockInForce {
            threshold: 0,
            source: LowStockSource::None,
            low: false,
        };
        assert_eq!(low(&cat), none);
        set(&mut cat, None, 3);
        assert_eq!(
            low(&cat),
            LowStockInForce {
                threshold: 3,
                source: LowStockSource::Channel,
                low: false,
            }
        );
        set(&mut cat, Some("A"), 5);
        assert_eq!(
            low(&cat),
            LowStockInForce {
                threshold: 5,
                source: LowStockSource::Sku,
                low: true,
            }
        );
    }

    #[test]
    fn an_unknown_channel_is_rejected() {
        let cat = catalog(0, None);
        let s = sku(&cat, &[adjust("l1", 1)]);
        let r = s.explain(&cat, &c("nope")).unwrap_err();
        assert_eq!(r, Rejection::UnknownChannel(c("nope")));
    }

    // ---- property: the parts add up to the ATP every channel shows ----------------------

    fn loc_name() -> impl Strategy<Value = &'static str> {
        (0..LOCS.len()).prop_map(|i| LOCS[i])
    }

    fn channel_name() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("web"), Just("pos"), Just("one")]
    }

    fn stock_state() -> impl Strategy<Value = StockState> {
        prop_oneof![
            Just(StockState::Sellable),
            Just(StockState::Damaged),
            Just(StockState::QualityControl)
        ]
    }

    /// Random commands; the state machine's own `decide` refuses the impossible ones.
    fn command() -> impl Strategy<Value = SkuCommand> {
        let res = 0u128..8;
        prop_oneof![
            4 => (loc_name(), -20i64..40).prop_map(|(x, d)| adjust(x, d)),
            2 => (loc_name(), 0u32..8).prop_map(|(x, q)| safety(x, q)),
            1 => (loc_name(), 0u32..30).prop_map(|(x, on_hand)| SkuCommand::SetOnHand {
                location: l(x),
                on_hand,
                expected: None,
                reference: String::new(),
            }),
            1 => (loc_name(), stock_state(), stock_state(), 1u32..6).prop_map(|(x, from, to, qty)| {
                SkuCommand::Move {
                    location: l(x),
                    from,
                    to,
                    qty,
                }
            }),
            1 => (loc_name(), loc_name(), 1u32..6).prop_map(|(a, b, qty)| SkuCommand::Transfer {
                from: l(a),
                to: l(b),
                qty,
                reference: String::new(),
            }),
            4 => (res.clone(), channel_name(), 1u32..12, prop::option::of(loc_name()))
                .prop_map(|(r, ch, q, x)| hold(r, ch, q, x)),
            2 => (res.clone(), prop::option::of(1u32..6))
                .prop_map(|(reservation, qty)| SkuCommand::Fulfill { reservation, qty }),
            1 => res.prop_map(|reservation| SkuCommand::Release {
                reservation,
                reason: ReleaseReason::Client,
            }),
        ]
    }

    fn channel_shape() -> impl Strategy<Value = (u32, Option<u32>)> {
        (0u32..15, prop::option::of(0u32..40))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn explained_parts_sum_to_the_channel_atp_for_every_channel(
            (buffer, cap) in channel_shape(),
            cmds in prop::collection::vec(command(), 0..60),
        ) {
            let cat = catalog(buffer, cap);
            let s = sku(&cat, &cmds);
            prop_assert_eq!(s.check_invariants(), Ok(()));
            let view = s.view(&cat);
            for ch in cat.channels.values() {
                let e = s.explain(&cat, &ch.id).unwrap();
                let atp = s.channel_atp(ch);
                prop_assert_eq!(e.atp(), atp);
                let shown = view.channels.iter().find(|(id, _)| *id == ch.id).map(|x| x.1);
                prop_assert_eq!(shown, Some(atp));
                // The parts, and the arithmetic from them to the ATP.
                let parts: Vec<&LocationId> = e.locations.iter().map(|p| &p.location).collect();
                prop_assert_eq!(parts, ch.locations.iter().collect::<Vec<_>>());
                let sum: u64 = e.locations.iter().map(|p| u64::from(p.contribution)).sum();
                prop_assert_eq!(e.sum.sum, sum);
                let after = e.sum.sum - e.sum.withheld_by_buffer - e.sum.withheld_by_cap;
                prop_assert_eq!(after, u64::from(atp));
                prop_assert!(e.sum.withheld_by_buffer <= u64::from(ch.buffer));
                if let Some(cap) = ch.cap {
                    prop_assert!(atp <= cap);
                }
                for p in &e.locations {
                    let raw = i64::from(p.on_hand)
                        - i64::from(p.shortfall)
                        - i64::from(p.reserved)
                        - i64::from(p.safety_stock);
                    prop_assert_eq!(p.atp, raw);
                    prop_assert_eq!(i64::from(p.contribution), raw.max(0));
                    let b = s.bucket(&p.location);
                    prop_assert_eq!(p.on_hand, b.map_or(0, |b| b.on_hand));
                    prop_assert_eq!(p.reserved, b.map_or(0, |b| b.reserved));
                }
                // Holds: every open hold once, every held unit once.
                let holds: u64 = e.holds.iter().map(|h| u64::from(h.holds)).sum();
                prop_assert_eq!(holds, s.holds.len() as u64);
                let units: u64 = e.holds.iter().map(|h| h.units).sum();
                prop_assert_eq!(units, s.reserved_total());
                let here: u64 = e.holds.iter().map(|h| h.units_here).sum();
                let reserved_here: u64 = e.locations.iter().map(|p| u64::from(p.reserved)).sum();
                prop_assert_eq!(here, reserved_here);
            }
        }
    }

    #[test]
    fn another_channels_hold_at_a_shared_location_lowers_this_channels_atp() {
        let cat = catalog(1, Some(4));
        let cmds = [
            adjust("l1", 6),
            adjust("l3", 3),
            hold(1, "pos", 2, Some("l3")),
        ];
        let want = (parts(&[("l1", 6), ("l2", 0), ("l3", 1)]), (7, 1, 2, 4));
        check(&cat, &cmds, "web", want);
    }
}
