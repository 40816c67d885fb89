//! `omnistock::sim`'s [`Histogram`] and [`Zipf`] against the crates they replace in the
//! server's dependency tree (issue 13): `hdrhistogram` (1..60 s in µs, 3 digits) and
//! `rand_distr`'s `Zipf<f64>`, which are only dev-dependencies of this crate, used here as
//! the model. Equal value for value, so the load generator's percentiles and its seeded
//! SKU draws mean what they meant when it used those crates (docs/benchmarks.md).

use omnistock_load::{Histogram, Zipf};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::Distribution;

fn hdr() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

const QUANTILES: [f64; 7] = [0.001, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any samples (latencies spread over every bucket, repeated counts, values out of
    /// range clamped as the driver clamps them), recorded in two halves and merged: every
    /// quantile the reports print, the max and the count equal hdrhistogram's.
    #[test]
    fn histogram_equals_hdrhistogram(
        samples in proptest::collection::vec(
            (prop_oneof![0u64..3_000, 0u64..100_000, 0u64..=70_000_000], 1u64..4),
            0..300,
        ),
        split in 0usize..300,
    ) {
        let (mut a, mut b, mut model, mut model_b) = (Histogram::new(), Histogram::new(), hdr(), hdr());
        for (i, &(v, n)) in samples.iter().enumerate() {
            let clamped = v.clamp(1, 60_000_000);
            if i < split {
                a.record_n(v, n);
                model.record_n(clamped, n).unwrap();
            } else {
                b.record_n(v, n);
                model_b.record_n(clamped, n).unwrap();
            }
        }
        a.add(&b);
        model.add(&model_b).unwrap();
        prop_assert_eq!(a.len(), model.len());
        if !samples.is_empty() {
            prop_assert_eq!(a.max(), model.max());
        }
        for q in QUANTILES {
            prop_assert_eq!(a.value_at_quantile(q), model.value_at_quantile(q), "q {}", q);
        }
    }

    /// The same seeded generator gives the same ranks, draw for draw, for the exponents and
    /// catalog sizes the workloads and benches use.
    #[test]
    fn zipf_draws_equal_rand_distr(
        n in prop_oneof![1u64..10, 1u64..1_000_000, Just(10_000_000u64)],
        s in prop_oneof![Just(1.0f64), 0.01f64..10.0],
        seed: u64,
    ) {
        let ours = Zipf::new(n, s).unwrap();
        let model = rand_distr::Zipf::new(n, s).unwrap();
        let (mut r1, mut r2) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
        for _ in 0..200 {
            let (x, y) = (ours.sample(&mut r1), model.sample(&mut r2));
            prop_assert_eq!(x.to_bits(), y.to_bits(), "n {} s {}", n, s);
        }
    }
}
