//! What the generator sends: the workload presets (reserve, checkout, flash sale, restock),
//! the cart-size distribution, SKU popularity (uniform or Zipf) and the fate of each
//! reservation (fulfilled, released, left to expire or kept open). A [`Flow`] is one
//! logical client action: a checkout (reserve, then maybe a follow-up) or a restock.
//! Generation is seeded, so a run's sequence of decisions can be reproduced; reservation
//! ids alone are random, so runs never collide.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

use super::LoadError;

/// The workload presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Reservations only, kept open (the Redis comparison workload).
    Reserve,
    /// Reserve a cart, then fulfil, release or let it expire.
    Checkout,
    /// Many clients on a few SKUs with little stock: zero oversell must hold.
    FlashSale,
    /// Checkouts with stock receipts mixed in.
    Restock,
}

impl WorkloadKind {
    /// Parses `reserve`, `checkout`, `flash-sale`, `restock`.
    pub fn parse(s: &str) -> Result<WorkloadKind, LoadError> {
        Ok(match s {
            "reserve" => WorkloadKind::Reserve,
            "checkout" => WorkloadKind::Checkout,
            "flash-sale" => WorkloadKind::FlashSale,
            "restock" => WorkloadKind::Restock,
            _ => {
                return Err(LoadError::Config(format!(
                    "--workload {s:?}: expected reserve, checkout, flash-sale or restock"
                )))
            }
        })
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Reserve => "reserve",
            WorkloadKind::Checkout => "checkout",
            WorkloadKind::FlashSale => "flash-sale",
            WorkloadKind::Restock => "restock",
        }
    }
}

/// Lines per cart: weighted choices.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CartLines {
    /// (lines, weight); weights need not sum to 100.
    pub choices: Vec<(u32, u32)>,
}

/// Most lines the generator puts in one cart (the protocol allows 100 by default).
pub const MAX_CART_LINES: u32 = 100;

impl CartLines {
    /// Always `n` lines.
    pub fn fixed(n: u32) -> CartLines {
        CartLines {
            choices: vec![(n, 1)],
        }
    }

    /// Parses `N` (fixed), `A-B` (uniform) or `N:W,N:W,...` (weighted).
    pub fn parse(s: &str) -> Result<CartLines, LoadError> {
        let bad = || {
            LoadError::Config(format!(
                "--cart-lines {s:?}: expected N, A-B or N:WEIGHT,N:WEIGHT,... with 1 <= N <= {MAX_CART_LINES}"
            ))
        };
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| bad());
        let choices = if let Some((a, b)) = s.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(bad());
            }
            (a..=b).map(|n| (n, 1)).collect()
        } else if s.contains(':') {
            s.split(',')
                .map(|p| {
                    let (n, w) = p.split_once(':').ok_or_else(bad)?;
                    Ok((num(n)?, num(w)?))
                })
                .collect::<Result<Vec<_>, LoadError>>()?
        } else {
            vec![(num(s)?, 1)]
        };
        if choices.iter().any(|&(n, _)| n == 0 || n > MAX_CART_LINES)
            || choices.iter().all(|&(_, w)| w == 0)
        {
            return Err(bad());
        }
        Ok(CartLines { choices })
    }

    fn pick(&self, rng: &mut StdRng) -> u32 {
        let total: u32 = self.choices.iter().map(|c| c.1).sum();
        let mut x = rng.gen_range(0..total);
        for &(n, w) in &self.choices {
            if x < w {
                return n;
            }
            x -= w;
        }
        self.choices.last().map_or(1, |c| c.0)
    }
}

/// What happens to a reservation after it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Fulfilled (shipped) right after.
    Fulfil,
    /// Released (cart abandoned) right after.
    Release,
    /// Left to expire (short TTL).
    Expire,
    /// Kept open until the end of the run (long TTL).
    Keep,
}

/// The workload: everything that decides what a flow looks like.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// The preset it came from.
    pub kind: WorkloadKind,
    /// SKUs drawn from: `SKU-0000000` .. this many.
    pub skus: u32,
    /// Channels drawn from (uniformly).
    pub channels: Vec<String>,
    /// `None`: uniform; `Some(s)`: Zipf with exponent `s` (rank 1 = `SKU-0000000`).
    pub zipf: Option<f64>,
    /// Lines per cart.
    pub cart_lines: CartLines,
    /// Units per line.
    pub qty: u32,
    /// Percent of reservations fulfilled.
    pub fulfil_pct: u32,
    /// Percent released.
    pub release_pct: u32,
    /// Percent left to expire (with `expire_ttl_ms`); the rest is kept open.
    pub expire_pct: u32,
    /// Percent of flows that are stock receipts instead of checkouts.
    pub restock_pct: u32,
    /// Units per receipt.
    pub restock_qty: u32,
    /// Locations receipts go to (uniformly).
    pub locations: Vec<String>,
    /// Hold time of reservations that are not meant to expire.
    pub ttl_ms: u64,
    /// Hold time of reservations left to expire.
    pub expire_ttl_ms: u64,
}

impl Workload {
    /// Checks ranges; the error names the flag.
    pub fn validate(&self) -> Result<(), LoadError> {
        let cfg = |m: &str| Err(LoadError::Config(m.to_string()));
        if self.skus == 0 {
            return cfg("--skus must be at least 1");
        }
        if self.channels.is_empty() {
            return cfg("--channels must be at least 1");
        }
        if self.qty == 0 || self.qty > 1_000_000 {
            return cfg("--qty must be 1..=1000000");
        }
        if self.fulfil_pct + self.release_pct + self.expire_pct > 100 {
            return cfg("--fulfil + --release + --expire must be at most 100 (percent)");
        }
        if self.restock_pct > 100 {
            return cfg("--restock must be at most 100 (percent)");
        }
        if self.restock_pct > 0 && (self.restock_qty == 0 || self.locations.is_empty()) {
            return cfg("--restock-qty must be at least 1 and the catalog needs a location");
        }
        if let Some(s) = self.zipf {
            if !(s.is_finite() && s > 0.0 && s <= 10.0) {
                return cfg("--zipf must be in (0, 10]");
            }
        }
        if self.ttl_ms == 0 || self.ttl_ms > 7 * 24 * 3_600_000 {
            return cfg("--ttl-ms must be 1..=604800000 (7 days)");
        }
        if self.expire_ttl_ms == 0 || self.expire_ttl_ms > self.ttl_ms {
            return cfg("--expire-ttl-ms must be 1..=--ttl-ms");
        }
        Ok(())
    }

    /// Whether some holds may end by expiry during the run (the holds check is a range then).
    pub fn uses_expiry(&self) -> bool {
        self.expire_pct > 0
    }
}

/// One line of a generated cart: SKU index and units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// Index into `SKU-0000000..`.
    pub sku: u32,
    /// Units.
    pub qty: u32,
}

/// One logical client action.
#[derive(Clone, Debug, PartialEq)]
pub enum Flow {
    /// Reserve a cart, then act on it according to its fate.
    Checkout {
        /// Reservation id.
        reservation: u128,
        /// Channel index into `Workload::channels`.
        channel: usize,
        /// The cart.
        lines: Vec<Line>,
        /// What to do after the reservation is acknowledged.
        fate: Fate,
    },
    /// A stock receipt.
    Restock {
        /// SKU index.
        sku: u32,
        /// Location index into `Workload::locations`.
        location: usize,
        /// Units received.
        qty: u32,
    },
}

/// Lines with the same SKU summed, by SKU (a target that checks each SKU once needs this).
pub fn merge_lines(lines: &[Line]) -> Vec<Line> {
    let mut m: BTreeMap<u32, u32> = BTreeMap::new();
    for l in lines {
        *m.entry(l.sku).or_default() += l.qty;
    }
    m.into_iter().map(|(sku, qty)| Line { sku, qty }).collect()
}

/// The SKU id of index `i` (the one naming scheme of the catalog loader and the workloads).
pub fn sku_name(i: u32) -> String {
    format!("SKU-{i:07}")
}

/// A seeded generator of flows.
pub struct Generator {
    w: std::sync::Arc<Workload>,
    zipf: Option<Zipf<f64>>,
}

impl Generator {
    /// A generator for `w` (validated).
    pub fn new(w: std::sync::Arc<Workload>) -> Result<Generator, LoadError> {
        w.validate()?;
        let zipf = match w.zipf {
            Some(s) => Some(
                Zipf::new(u64::from(w.skus), s)
                    .map_err(|e| LoadError::Config(format!("--zipf: {e}")))?,
            ),
            None => None,
        };
        Ok(Generator { w, zipf })
    }

    /// The workload.
    pub fn workload(&self) -> &Workload {
        &self.w
    }

    fn pick_sku(&self, rng: &mut StdRng) -> u32 {
        match &self.zipf {
            // Zipf samples ranks 1..=n as f64.
            Some(z) => (z.sample(rng) as u32).clamp(1, self.w.skus) - 1,
            None => rng.gen_range(0..self.w.skus),
        }
    }

    fn pick_fate(&self, rng: &mut StdRng) -> Fate {
        let x = rng.gen_range(0..100);
        let w = &self.w;
        if x < w.fulfil_pct {
            Fate::Fulfil
        } else if x < w.fulfil_pct + w.release_pct {
            Fate::Release
        } else if x < w.fulfil_pct + w.release_pct + w.expire_pct {
            Fate::Expire
        } else {
            Fate::Keep
        }
    }

    /// The next flow: a restock with probability `restock_pct`, else a checkout.
    pub fn next(&self, rng: &mut StdRng) -> Flow {
        let w = &self.w;
        if w.restock_pct > 0 && rng.gen_range(0..100) < w.restock_pct {
            return Flow::Restock {
                sku: self.pick_sku(rng),
                location: rng.gen_range(0..w.locations.len()),
                qty: w.restock_qty,
            };
        }
        let n = w.cart_lines.pick(rng);
        let lines = (0..n)
            .map(|_| Line {
                sku: self.pick_sku(rng),
                qty: w.qty,
            })
            .collect();
        // Not from the seeded generator: a second run with the same seed against the same
        // server must not reuse reservation ids (they would be rejected as existing).
        let reservation = crate::client::new_request_id();
        Flow::Checkout {
            reservation,
            channel: rng.gen_range(0..w.channels.len()),
            lines,
            fate: self.pick_fate(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cart_lines_parse_fixed_range_and_weights() {
        assert_eq!(CartLines::parse("3").unwrap(), CartLines::fixed(3));
        assert_eq!(
            CartLines::parse("1-3").unwrap().choices,
            vec![(1, 1), (2, 1), (3, 1)]
        );
        assert_eq!(
            CartLines::parse("1:50,3:50").unwrap().choices,
            vec![(1, 50), (3, 50)]
        );
        for bad in ["0", "3-1", "x", "1:0", "101", "1:", ""] {
            assert!(CartLines::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zipf_prefers_the_first_skus_and_stays_in_range() {
        let w = Workload {
            kind: WorkloadKind::Checkout,
            skus: 100,
            channels: vec!["web".into()],
            zipf: Some(1.2),
            cart_lines: CartLines::fixed(1),
            qty: 1,
            fulfil_pct: 0,
            release_pct: 0,
            expire_pct: 0,
            restock_pct: 0,
            restock_qty: 1,
            locations: vec!["wh".into()],
            ttl_ms: 1000,
            expire_ttl_ms: 1000,
        };
        let g = Generator::new(std::sync::Arc::new(w)).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 100];
        for _ in 0..10_000 {
            let Flow::Checkout { lines, fate, .. } = g.next(&mut rng) else {
                panic!("no restocks configured")
            };
            assert_eq!(fate, Fate::Keep);
            counts[lines[0].sku as usize] += 1;
        }
        assert!(counts[0] > counts[50] * 10, "{counts:?}");
    }
}
