//! End-of-run checks: the server's state against what it acknowledged to the generator.
//!
//! The [`Ledger`] records, per SKU, every acknowledged change: units reserved, fulfilled,
//! still held (open), left to expire, received. A [`Snapshot`] of the server is taken before
//! and after the run. The checks, per SKU:
//!
//! - **no oversell**: the SKU is not flagged oversold and no bucket has more reserved than
//!   on hand or an ATP below zero;
//! - **conservation**: on hand after = on hand before + acknowledged receipts − acknowledged
//!   fulfilments;
//! - **holds equal reserved**: reserved after = reserved before + the units of the
//!   generator's still-open acknowledged reservations. Holds left to expire may or may not
//!   have expired, so when the workload uses expiry the check is the range
//!   `[open, before + open + expiring]`; without expiry it is exact.
//!
//! A SKU touched by an operation whose outcome is unknown (the connection failed before the
//! answer) is excluded from the conservation and holds checks and counted as uncertain; the
//! oversell check always applies. The checks assume the generator is the only writer while
//! it runs, and (for the exact holds check) that holds placed before the run do not expire
//! during it.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::workload::sku_name;
use super::LoadError;
use crate::client::Client;

/// What the generator was told about one SKU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SkuLedger {
    /// Units of acknowledged reservations (all fates).
    pub reserved: u64,
    /// Units of acknowledged fulfilments.
    pub fulfilled: u64,
    /// Units held by acknowledged reservations not fulfilled, released or meant to expire.
    pub open: u64,
    /// Units held by acknowledged reservations that may have expired.
    pub expiring: u64,
    /// Units of acknowledged receipts.
    pub restocked: u64,
    /// Some operation on this SKU has an unknown outcome.
    pub uncertain: bool,
}

/// The acknowledged changes per SKU index.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    skus: HashMap<u32, SkuLedger>,
}

impl Ledger {
    /// The entry of SKU index `sku` (created empty).
    pub fn sku_mut(&mut self, sku: u32) -> &mut SkuLedger {
        self.skus.entry(sku).or_default()
    }
    /// The entry of SKU index `sku`, if touched.
    pub fn sku(&self, sku: u32) -> Option<&SkuLedger> {
        self.skus.get(&sku)
    }
    /// Adds another ledger.
    pub fn merge(&mut self, o: &Ledger) {
        for (k, v) in &o.skus {
            let e = self.sku_mut(*k);
            e.reserved += v.reserved;
            e.fulfilled += v.fulfilled;
            e.open += v.open;
            e.expiring += v.expiring;
            e.restocked += v.restocked;
            e.uncertain |= v.uncertain;
        }
    }
    /// SKUs touched.
    pub fn len(&self) -> usize {
        self.skus.len()
    }
    /// Whether no SKU was touched.
    pub fn is_empty(&self) -> bool {
        self.skus.is_empty()
    }
}

/// The server's facts about one SKU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SkuFacts {
    /// Sellable on hand over all locations.
    pub on_hand: u64,
    /// Reserved over all locations.
    pub reserved: u64,
    /// Units sold that were not on hand, over all locations (books: on_hand - shortfall).
    pub shortfall: u64,
    /// Flagged oversold, or some bucket has reserved > on hand or ATP below zero.
    pub oversold: bool,
}

/// The server's facts per SKU index (`None`: unknown SKU).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Indexed by SKU index.
    pub skus: Vec<Option<SkuFacts>>,
}

/// SKUs per get-many request (keeps each answer well under the 1 MiB frame limit).
const SNAPSHOT_CHUNK: u32 = 500;

/// Reads SKUs `0..skus` from an omnistock server.
pub async fn snapshot(client: &Client, skus: u32) -> Result<Snapshot, LoadError> {
    let mut out = Vec::with_capacity(skus as usize);
    let mut first = 0;
    while first < skus {
        let last = first.saturating_add(SNAPSHOT_CHUNK).min(skus);
        let names = (first..last).map(sku_name).collect();
        let got = client.get_skus(names).await?;
        for s in got.skus {
            out.push(s.map(|s| {
                SkuFacts {
                    on_hand: s.buckets.iter().map(|b| u64::from(b.on_hand)).sum(),
                    reserved: s.buckets.iter().map(|b| u64::from(b.reserved)).sum(),
                    shortfall: s.buckets.iter().map(|b| u64::from(b.shortfall)).sum(),
                    // The generator never sets safety stock, so a hold can never make ATP negative.
                    oversold: s.oversold
                        || s.buckets
                            .iter()
                            .any(|b| b.reserved > b.on_hand || b.atp < 0),
                }
            }));
        }
        first = last;
    }
    Ok(Snapshot { skus: out })
}

/// Most failure lines kept in a report.
const MAX_FAILURES_LISTED: usize = 20;

/// The outcome of the checks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// SKUs checked.
    pub skus_checked: u64,
    /// SKUs excluded from conservation and holds (unknown outcomes).
    pub skus_uncertain: u64,
    /// Whether the holds check was a range (the workload lets holds expire).
    pub holds_range: bool,
    /// Units fulfilled plus still held by the generator, over all SKUs.
    pub units_taken: u64,
    /// Units there were: on hand before plus receipts, over all SKUs.
    pub units_available: u64,
    /// Failed checks (the first few, one line each).
    pub failures: Vec<String>,
    /// Number of failed checks.
    pub failure_count: u64,
}

impl CheckReport {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.failure_count == 0
    }

    fn fail(&mut self, msg: String) {
        self.failure_count += 1;
        if self.failures.len() < MAX_FAILURES_LISTED {
            self.failures.push(msg);
        }
    }

    /// The checks as text.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let holds = if self.holds_range {
            "holds within [open, open + expiring]"
        } else {
            "reserved == open holds (exact)"
        };
        let _ = writeln!(
            s,
            "end-of-run check {verdict}: {} SKUs; no oversell; on hand == before + receipts - fulfilled; {holds}; {} uncertain SKUs; units taken {} of {} available",
            self.skus_checked, self.skus_uncertain, self.units_taken, self.units_available
        );
        for f in &self.failures {
            let _ = writeln!(s, "  FAILED {f}");
        }
        if self.failure_count > self.failures.len() as u64 {
            let _ = writeln!(
                s,
                "  ... and {} more",
                self.failure_count - self.failures.len() as u64
            );
        }
        s
    }
}

/// Checks `after` against `before` and the ledger. `uses_expiry`: some holds may have
/// ended by expiry (the holds check becomes a range).
pub fn check(
    before: &Snapshot,
    ledger: &Ledger,
    after: &Snapshot,
    uses_expiry: bool,
) -> CheckReport {
    let mut r = CheckReport {
        holds_range: uses_expiry,
        ..CheckReport::default()
    };
    let n = before.skus.len().max(after.skus.len());
    for i in 0..n {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let name = sku_name(idx);
        let l = ledger.sku(idx).copied().unwrap_or_default();
        let b = before.skus.get(i).copied().flatten();
        let a = after.skus.get(i).copied().flatten();
        let (b, a) = match (b, a) {
            (Some(b), Some(a)) => (b, a),
            (None, None) if l == SkuLedger::default() => continue,
            (b, a) => {
                r.fail(format!(
                    "{name}: known before {}, after {}, but the generator {} it",
                    b.is_some(),
                    a.is_some(),
                    if l == SkuLedger::default() {
                        "never touched"
                    } else {
                        "changed"
                    }
                ));
                continue;
            }
        };
        r.skus_checked += 1;
        r.units_available += b.on_hand + l.restocked;
        r.units_taken += l.fulfilled + l.open;
        if a.oversold {
            r.fail(format!(
                "{name}: oversold or ATP below zero (on hand {}, reserved {})",
                a.on_hand, a.reserved
            ));
        }
        if l.uncertain {
            r.skus_uncertain += 1;
            continue;
        }
        // The books: on hand net of the shortfall (units sold that were not on hand).
        let net = |f: &SkuFacts| i128::from(f.on_hand) - i128::from(f.shortfall);
        let expected_on_hand = net(&b) + i128::from(l.restocked) - i128::from(l.fulfilled);
        if net(&a) != expected_on_hand {
            r.fail(format!(
                "{name}: conservation: on hand - shortfall {} but before {} + receipts {} - fulfilled {} = {expected_on_hand}",
                net(&a), net(&b), l.restocked, l.fulfilled
            ));
        }
        if uses_expiry {
            let (lo, hi) = (l.open, b.reserved + l.open + l.expiring);
            if a.reserved < lo || a.reserved > hi {
                r.fail(format!(
                    "{name}: holds: reserved {} outside [{lo}, {hi}] (open {}, may have expired {}, reserved before {})",
                    a.reserved, l.open, l.expiring, b.reserved
                ));
            }
        } else if a.reserved != b.reserved + l.open {
            r.fail(format!(
                "{name}: holds: reserved {} but before {} + open acknowledged holds {} = {}",
                a.reserved,
                b.reserved,
                l.open,
                b.reserved + l.open
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(v: &[(u64, u64, bool)]) -> Snapshot {
        Snapshot {
            skus: v
                .iter()
                .map(|&(on_hand, reserved, oversold)| {
                    Some(SkuFacts {
                        on_hand,
                        reserved,
                        shortfall: 0,
                        oversold,
                    })
                })
                .collect(),
        }
    }

    fn ledger(fulfilled: u64, open: u64, expiring: u64, restocked: u64) -> Ledger {
        let mut l = Ledger::default();
        *l.sku_mut(0) = SkuLedger {
            reserved: fulfilled + open + expiring,
            fulfilled,
            open,
            expiring,
            restocked,
            uncertain: false,
        };
        l
    }

    #[test]
    fn consistent_state_passes() {
        let r = check(
            &snap(&[(10, 0, false)]),
            &ledger(3, 2, 0, 5),
            &snap(&[(12, 2, false)]),
            false,
        );
        assert!(r.passed(), "{}", r.human());
        assert_eq!((r.units_taken, r.units_available), (5, 15));
    }

    #[test]
    fn one_unit_too_many_fulfilled_fails_conservation() {
        let r = check(
            &snap(&[(10, 0, false)]),
            &ledger(3, 2, 0, 5),
            &snap(&[(11, 2, false)]),
            false,
        );
        assert_eq!(r.failure_count, 1);
        assert!(
            r.failures[0].contains("SKU-0000000: conservation"),
            "{}",
            r.human()
        );
    }

    #[test]
    fn an_unacknowledged_hold_fails_the_exact_holds_check_but_not_the_range() {
        let l = ledger(0, 2, 1, 0);
        let exact = check(
            &snap(&[(10, 0, false)]),
            &l,
            &snap(&[(10, 3, false)]),
            false,
        );
        assert!(exact.failures[0].contains("holds"), "{}", exact.human());
        let range = check(&snap(&[(10, 0, false)]), &l, &snap(&[(10, 3, false)]), true);
        assert!(range.passed(), "{}", range.human());
        let below = check(&snap(&[(10, 0, false)]), &l, &snap(&[(10, 1, false)]), true);
        assert!(!below.passed());
    }

    #[test]
    fn oversold_always_fails_even_when_uncertain() {
        let mut l = ledger(0, 0, 0, 0);
        l.sku_mut(0).uncertain = true;
        let r = check(&snap(&[(1, 0, false)]), &l, &snap(&[(1, 2, true)]), false);
        assert_eq!((r.failure_count, r.skus_uncertain), (1, 1));
    }
}
