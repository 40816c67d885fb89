//! Zipf-distributed ranks: rank `k` of `1..=n` drawn with probability proportional to
//! `k^-s`, by rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to
//! generate variates from monotone discrete distributions", 1996), the method and the exact
//! arithmetic of `rand_distr` 0.4's `Zipf<f64>`: the same generator state gives the same
//! ranks, so a seeded load run draws the same SKUs as before the load generator moved to its
//! own crate.
//!
//! Why not `rand_distr`: the checkout simulation of `omnistock demo` draws Zipf popularity
//! and the server binary must not link the load generator's crates (issue 13). The load
//! crate's tests check it against `rand_distr` draw for draw (load/tests/oracles.rs).

use rand::Rng;

/// The distribution of ranks `1..=n` with exponent `s`.
#[derive(Clone, Copy, Debug)]
pub struct Zipf {
    s: f64,
    t: f64,
    q: f64,
}

impl Zipf {
    /// Ranks `1..=n` (n >= 1) with exponent `s` (finite, >= 0); `None` otherwise.
    pub fn new(n: u64, s: f64) -> Option<Zipf> {
        if n < 1 || !s.is_finite() || s < 0.0 {
            return None;
        }
        let n = n as f64;
        let q = if s != 1.0 { 1.0 / (1.0 - s) } else { 0.0 };
        let t = if s != 1.0 {
            (n.powf(1.0 - s) - s) * q
        } else {
            1.0 + n.ln()
        };
        Some(Zipf { s, t, q })
    }

    fn inv_cdf(&self, p: f64) -> f64 {
        let pt = p * self.t;
        if pt <= 1.0 {
            pt
        } else if self.s != 1.0 {
            (pt * (1.0 - self.s) + self.s).powf(self.q)
        } else {
            (pt - 1.0).exp()
        }
    }

    /// One rank in `1..=n` (as `f64`, as `rand_distr` returns it).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        loop {
            let inv_b = self.inv_cdf(rng.gen::<f64>());
            let x = (inv_b + 1.0).floor();
            let mut ratio = x.powf(-self.s);
            if x > 1.0 {
                ratio *= inv_b.powf(self.s);
            }
            let y: f64 = rng.gen();
            if y < ratio {
                return x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn refuses_what_has_no_distribution() {
        assert!(Zipf::new(0, 1.0).is_none());
        assert!(Zipf::new(10, -0.5).is_none());
        assert!(Zipf::new(10, f64::NAN).is_none());
    }

    /// Against the exact probabilities k^-s / H(n, s) on a small n: every rank's frequency
    /// over 200,000 draws is within 5 standard deviations of its probability.
    #[test]
    fn frequencies_match_the_probabilities() {
        for s in [0.0, 0.5, 1.0, 1.5] {
            let n = 20u64;
            let z = Zipf::new(n, s).unwrap();
            let mut rng = StdRng::seed_from_u64(3);
            let draws = 200_000;
            let mut counts = vec![0u64; n as usize];
            for _ in 0..draws {
                let k = z.sample(&mut rng);
                assert!((1.0..=n as f64).contains(&k) && k.fract() == 0.0, "{k}");
                counts[k as usize - 1] += 1;
            }
            let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            for (i, c) in counts.iter().enumerate() {
                let p = ((i + 1) as f64).powf(-s) / h;
                let sd = (draws as f64 * p * (1.0 - p)).sqrt();
                let diff = (*c as f64 - draws as f64 * p).abs();
                assert!(
                    diff <= 5.0 * sd,
                    "s {s} rank {}: {c} vs {}",
                    i + 1,
                    draws as f64 * p
                );
            }
        }
    }
}
