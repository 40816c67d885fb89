//! A latency histogram in microseconds, 1 µs to 60 s, three significant digits: the bucket
//! layout and the quantile rule of HdrHistogram (`hdrhistogram::Histogram::<u64>::
//! new_with_bounds(1, 60_000_000, 3)`), written out for the one configuration the
//! simulation, the load generator and the benches use.
//!
//! Why not the `hdrhistogram` crate: `omnistock demo` prints latency percentiles and is a
//! subcommand of the server binary, which must not link the load generator's crates (issue
//! 13); the load crate (load/) and the benches use this same type, so every percentile in
//! docs/benchmarks.md keeps its meaning. The load crate's tests check it against
//! `hdrhistogram` value for value (load/tests/oracles.rs).
//!
//! Constant memory whatever the number of samples: 17,408 counters (139 KB).

/// Highest value recorded (60 s in µs); larger values are clamped to it, zero to 1.
pub const MAX_VALUE: u64 = 60_000_000;

/// Sub-buckets per bucket: the smallest power of two at least 2 × 10^3 (three digits).
const SUB_BUCKET_COUNT_MAGNITUDE: u32 = 11;
const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = SUB_BUCKET_COUNT_MAGNITUDE - 1;
const SUB_BUCKET_HALF_COUNT: u64 = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_COUNT_MAGNITUDE) - 1;
/// 64 minus the bits of the largest value of bucket 0 (lowest value 1: unit magnitude 0).
const LEADING_ZERO_COUNT_BASE: u32 = 64 - SUB_BUCKET_COUNT_MAGNITUDE;
/// Buckets covering 1..=MAX_VALUE: 2048 << 15 > 60,000,000.
const BUCKETS: usize = 16;
const COUNTS: usize = (BUCKETS + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE;

/// Counts of values by bucket (see the module documentation).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    /// Largest value recorded (0: none).
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("len", &self.total)
            .field("max", &self.max())
            .finish()
    }
}

fn bucket_of(v: u64) -> u32 {
    LEADING_ZERO_COUNT_BASE - (v | SUB_BUCKET_MASK).leading_zeros()
}

fn index_of(v: u64) -> usize {
    let b = bucket_of(v);
    let sub = v >> b;
    (((u64::from(b) + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub - SUB_BUCKET_HALF_COUNT) as usize
}

/// The lowest value counted at `index`.
fn value_at_index(index: usize) -> u64 {
    let mut bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) as i64 - 1;
    let mut sub = (index as u64 & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
    if bucket < 0 {
        sub -= SUB_BUCKET_HALF_COUNT;
        bucket = 0;
    }
    sub << bucket
}

/// The highest value counted together with `v`.
fn highest_equivalent(v: u64) -> u64 {
    let b = bucket_of(v);
    ((v >> b) << b) + (1u64 << b) - 1
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; COUNTS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    /// Records `n` samples of `v` µs (clamped to 1..=[`MAX_VALUE`]).
    pub fn record_n(&mut self, v: u64, n: u64) {
        let v = v.clamp(1, MAX_VALUE);
        // In bounds: index_of(MAX_VALUE) < COUNTS (checked by a test).
        if let Some(c) = self.counts.get_mut(index_of(v)) {
            *c = c.saturating_add(n);
        }
        self.max = self.max.max(v);
        self.total = self.total.saturating_add(n);
    }

    /// Records one sample.
    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    /// Adds every sample of `o`.
    pub fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total = self.total.saturating_add(o.total);
        self.max = self.max.max(o.max);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The largest sample, to the histogram's resolution (0 when empty).
    pub fn max(&self) -> u64 {
        if self.max == 0 {
            0
        } else {
            highest_equivalent(self.max)
        }
    }

    /// The value that a share `q` (0 < q <= 1) of the samples are at most, to the
    /// histogram's resolution (the highest value of its bucket); 0 when empty.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let q = q.min(1.0);
        let wanted = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= wanted {
                let v = value_at_index(i);
                return if q == 0.0 { v } else { highest_equivalent(v) };
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_largest_value_has_a_counter() {
        assert!(index_of(MAX_VALUE) < COUNTS);
        assert!(index_of(1) < index_of(2));
    }

    #[test]
    fn empty_answers_zero() {
        let h = Histogram::new();
        assert_eq!((h.value_at_quantile(0.99), h.max(), h.len()), (0, 0, 0));
    }

    proptest! {
        /// Against the sorted samples: the quantile is within 0.1% (three digits) above
        /// the true order statistic and never below it; the max likewise.
        #[test]
        fn quantiles_match_the_sorted_samples(
            mut v in proptest::collection::vec(1u64..=MAX_VALUE, 1..400),
            q in 0.001f64..=1.0,
        ) {
            let mut h = Histogram::new();
            for x in &v {
                h.record(*x);
            }
            v.sort_unstable();
            let rank = ((q * v.len() as f64).ceil() as usize).max(1);
            let truth = v[rank - 1];
            let got = h.value_at_quantile(q);
            prop_assert!(got >= truth, "{got} < {truth}");
            prop_assert!(got - truth <= truth / 1000 + 1, "{got} vs {truth}");
            let max = *v.last().unwrap_or(&0);
            prop_assert!(h.max() >= max && h.max() - max <= max / 1000 + 1);
        }

        /// Merging per-connection histograms equals recording everything in one.
        #[test]
        fn add_equals_recording_in_one(
            a in proptest::collection::vec((0u64..=2 * MAX_VALUE, 1u64..5), 0..100),
            b in proptest::collection::vec((0u64..=2 * MAX_VALUE, 1u64..5), 0..100),
        ) {
            let (mut ha, mut hb, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
            for &(x, n) in &a { ha.record_n(x, n); all.record_n(x, n); }
            for &(x, n) in &b { hb.record_n(x, n); all.record_n(x, n); }
            ha.add(&hb);
            prop_assert_eq!(ha.len(), all.len());
            prop_assert_eq!(ha.max(), all.max());
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                prop_assert_eq!(ha.value_at_quantile(q), all.value_at_quantile(q));
            }
        }
    }
}
