//! Concurrency: many tasks on a multi-threaded runtime race for the last units of a few SKUs
//! with single lines and multi-SKU carts. Successes never exceed stock, carts are
//! all-or-nothing, and reserved equals the sum of holds afterwards.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use omnistock::domain::Event;
use omnistock::domain::Rejection;
use omnistock::engine::{Change, Engine, EngineConfig, Failure};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_carts_never_oversell_and_stay_all_or_nothing() {
    let e = Arc::new(Engine::start_in_memory(EngineConfig::default()).unwrap());
    small_catalog(&e).await;
    let skus = ["H1", "H2", "H3", "H4"];
    let stock: HashMap<&str, u32> = [("H1", 11), ("H2", 7), ("H3", 25), ("H4", 3)].into();
    for (s, q) in &stock {
        // web buffer is 1, so web ATP = q.
        adjust(&e, s, "wh-a", i64::from(*q) + 1).await.unwrap();
    }
    let tasks: Vec<_> = (0..400u128)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                let a = skus[(i % 4) as usize];
                let b = skus[((i / 4) % 4) as usize];
                let lines: Vec<(&str, u32)> = if i % 3 == 0 {
                    vec![(a, 1)]
                } else {
                    vec![(a, 1), (b, 2)]
                };
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match exec(&e, reserve_cmd(10_000 + i, "web", &lines, 600_000)).await {
                        Err(Failure::Rejected(Rejection::Busy)) if attempts < 100 => {
                            tokio::task::yield_now().await
                        }
                        other => {
                            return (
                                lines
                                    .iter()
                                    .map(|(s, q)| (s.to_string(), *q))
                                    .collect::<Vec<_>>(),
                                other,
                            )
                        }
                    }
                }
            })
        })
        .collect();
    let mut granted: HashMap<String, u32> = HashMap::new();
    let mut successes = 0;
    for t in tasks {
        let (lines, r) = t.await.unwrap();
        match r {
            Ok(out) => {
                successes += 1;
                // All lines held, with the quantities asked (summed per SKU).
                let mut want: HashMap<String, u32> = HashMap::new();
                for (s, q) in &lines {
                    *want.entry(s.clone()).or_default() += q;
                }
                let mut got: HashMap<String, u32> = HashMap::new();
                for c in &out.changes {
                    if let Change::Sku {
                        sku,
                        event: Event::HoldPlaced { allocations, .. },
                    } = c
                    {
                        *got.entry(sku.to_string()).or_default() +=
                            allocations.iter().map(|a| a.qty).sum::<u32>();
                    }
                }
                assert_eq!(got, want, "a successful cart holds every line");
                for (s, q) in want {
                    *granted.entry(s).or_default() += q;
                }
            }
            Err(Failure::Rejected(Rejection::InsufficientStock { .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(successes > 0);
    for s in skus {
        let st = e.sku_state(&sku(s)).await.unwrap();
        st.check_invariants().unwrap();
        let g = granted.get(s).copied().unwrap_or(0);
        assert!(g <= stock[s], "{s}: granted {g} > stock {}", stock[s]);
        assert_eq!(
            st.reserved_total(),
            u64::from(g),
            "{s}: reserved equals granted (failed carts undone)"
        );
    }
}
