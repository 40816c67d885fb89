//! Subscribers that filter on a SKU prefix or a SKU set are routed by the feed hub (an
//! index from SKU and prefix to subscribers, src/feed/hub.rs) instead of testing every
//! record. On the real `omnistock serve`: subscribers started after an old position (so
//! part of what they get is read from the ring, part routed), one started live, two with
//! the same prefix, and one that follows everything, against the test's own list of what
//! each adjustment's sequence number and SKU were: each gets exactly the records of its
//! SKUs after its start, once each, in order.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{serve_with_tokens, wire_adjust, wire_catalog};
use omnistock::client::{Client, ClientConfig, Subscriber};
use omnistock::protocol::{kinds, start, PushItem, Subscribe};

const TOKEN: &str = "routing-admin-token";
const SKUS: [&str; 6] = ["A-1", "A-2", "AB-1", "B-1", "B-22", "C"];

fn cfg(port: u16) -> ClientConfig {
    ClientConfig::new(format!("127.0.0.1:{port}")).token(TOKEN)
}

async fn subscribe(port: u16, from: Option<u64>, prefix: &str, skus: &[&str]) -> Subscriber {
    Subscriber::subscribe(
        cfg(port),
        Subscribe {
            name: String::new(),
            start: if from.is_some() {
                start::AFTER
            } else {
                start::LIVE
            },
            from_seq: from.unwrap_or(0),
            channels: vec![],
            skus: skus.iter().map(|s| s.to_string()).collect(),
            sku_prefix: prefix.into(),
            kinds: kinds::ATP,
            coalesce_ms: 0,
        },
    )
    .await
    .expect("subscribe")
}

/// The sequence numbers of the ATP items a subscriber receives until its position reaches
/// `last` (ascending; each record's items counted once), failing on a duplicate or a
/// record out of order.
async fn collect(sub: &mut Subscriber, last: u64) -> Vec<(u64, String)> {
    let mut got: Vec<(u64, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sub.position() < last {
        let items = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("the position reaches the last adjustment within 60 s")
            .expect("push");
        for item in items {
            if let PushItem::Atp(a) = item {
                match got.last() {
                    Some((s, _)) if *s == a.seq => {} // another channel of the same record
                    Some((s, _)) => {
                        assert!(*s < a.seq, "record {} after {s}", a.seq);
                        got.push((a.seq, a.sku));
                    }
                    None => got.push((a.seq, a.sku)),
                }
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_subscribers_get_exactly_their_skus_records_from_the_ring_and_routed() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, port, _) =
        serve_with_tokens(&dir.path().join("data"), &format!("{TOKEN}:admin"), &[]).await;
    let admin = Client::connect(cfg(port)).await.unwrap();
    wire_catalog(&admin).await;
    // The test's own log: (seq, sku) of every adjustment.
    let mut log: Vec<(u64, &str)> = Vec::new();
    let mut x: u64 = 7;
    let mut next_sku = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        SKUS[(x >> 33) as usize % SKUS.len()]
    };
    let start_at = wire_adjust(&admin, "C", 1).await;
    for _ in 0..80 {
        let s = next_sku();
        log.push((wire_adjust(&admin, s, 1).await, s));
    }
    // Started after `start_at`: the first 80 are read from the ring, the rest routed.
    let mut subs = vec![
        (
            "",
            vec![],
            Some(start_at),
            subscribe(port, Some(start_at), "", &[]).await,
        ),
        (
            "A-",
            vec![],
            Some(start_at),
            subscribe(port, Some(start_at), "A-", &[]).await,
        ),
        (
            "A-",
            vec![],
            Some(start_at),
            subscribe(port, Some(start_at), "A-", &[]).await,
        ),
        (
            "AB",
            vec![],
            Some(start_at),
            subscribe(port, Some(start_at), "AB", &[]).await,
        ),
        (
            "",
            vec!["B-1", "A-2"],
            Some(start_at),
            subscribe(port, Some(start_at), "", &["B-1", "A-2"]).await,
        ),
        // Both: the SKU set, restricted to the prefix.
        (
            "B",
            vec!["B-22", "C"],
            Some(start_at),
            subscribe(port, Some(start_at), "B", &["B-22", "C"]).await,
        ),
    ];
    let live_from = wire_adjust(&admin, "B-1", 1).await;
    log.push((live_from, "B-1"));
    subs.push((
        "B-",
        vec![],
        Some(live_from),
        subscribe(port, None, "B-", &[]).await,
    ));
    for i in 0..400 {
        let s = next_sku();
        log.push((wire_adjust(&admin, s, 1).await, s));
        if i == 200 {
            // One leaves in the middle; the others' routes stay whole.
            let (_, _, _, gone) = subs.remove(2);
            gone.close().await;
        }
    }
    let last = log.last().expect("adjusted").0;
    for (prefix, skus, from, mut sub) in subs {
        let from = from.expect("a start");
        // The live one starts at the head when it subscribed (at or after `live_from` - 1).
        let from = if sub.subscribed().start == omnistock::protocol::started::LIVE {
            sub.subscribed().from_seq
        } else {
            from
        };
        let want: Vec<(u64, String)> = log
            .iter()
            .filter(|(seq, sku)| {
                *seq > from && sku.starts_with(prefix) && (skus.is_empty() || skus.contains(sku))
            })
            .map(|(seq, sku)| (*seq, sku.to_string()))
            .collect();
        let got = collect(&mut sub, last).await;
        assert_eq!(got, want, "prefix {prefix:?} skus {skus:?} after {from}");
        let distinct: BTreeSet<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
        assert!(
            !distinct.is_empty(),
            "prefix {prefix:?} skus {skus:?}: something to compare"
        );
    }
}
