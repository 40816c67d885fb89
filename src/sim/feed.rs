//! Subscribers during a load run: `--subscribers N` opens N feed subscriptions (every ATP
//! change, live) next to the load and measures how long after the reservation's
//! acknowledgement each change reaches them, and how many events they receive per second.
//!
//! The load connections note the instant each acknowledged reservation's sequence number
//! came back in an [`AckClock`] (a fixed ring indexed by sequence number, lock-free); a
//! subscriber that receives an ATP change of that sequence number looks the instant up.
//! A change can reach the subscriber before the load task has noted its acknowledgement
//! (both are in flight at once): that counts as 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{ClientConfig, ClientError, Subscriber};
use crate::protocol::ops::PushItemRef;
use crate::protocol::{kinds, start, Subscribe};

/// Acknowledgement instants kept (by sequence number modulo this).
const SLOTS: usize = 1 << 20;

/// When each recent sequence number was acknowledged to the load (µs since the run began).
pub struct AckClock {
    start: Instant,
    seqs: Box<[AtomicU64]>,
    micros: Box<[AtomicU64]>,
}

impl AckClock {
    /// An empty clock measuring from `start`.
    pub fn new(start: Instant) -> Self {
        let zeros = || (0..SLOTS).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        AckClock {
            start,
            seqs: zeros(),
            micros: zeros(),
        }
    }

    /// Notes that `seq` was acknowledged now.
    pub fn acked(&self, seq: u64) {
        let i = (seq as usize) & (SLOTS - 1);
        let us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.micros[i].store(us, Ordering::Relaxed);
        self.seqs[i].store(seq, Ordering::Release);
    }

    /// Now, in µs since the run began (read once per received frame: its items arrived
    /// together, and a clock read per item costs the generator more than the decode).
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Microseconds from the acknowledgement of `seq` to `now` ([`AckClock::now_us`]): 0
    /// when the change arrived before the load task noted its acknowledgement (the slot
    /// still holds an older seq), `None` when the slot was reused by a newer seq or `seq`
    /// was not a reservation.
    fn since_ack(&self, seq: u64, now: u64) -> Option<u64> {
        let i = (seq as usize) & (SLOTS - 1);
        let noted = self.seqs[i].load(Ordering::Acquire);
        if noted == seq {
            Some(now.saturating_sub(self.micros[i].load(Ordering::Relaxed)))
        } else if noted < seq && seq - noted < SLOTS as u64 * 2 {
            Some(0)
        } else {
            None
        }
    }
}

/// What the subscribers saw in the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct FeedReport {
    /// Subscribers.
    pub subscribers: u32,
    /// ATP events received by all of them.
    pub events: u64,
    /// Per second, all subscribers together.
    pub events_per_second: f64,
    /// Events whose acknowledgement instant was known (the latency sample).
    pub timed: u64,
    /// Acknowledgement → arrival at the subscriber, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest, µs.
    pub max_us: u64,
    /// Subscribers the server dropped for lagging (they resumed).
    pub lagged: u64,
}

impl FeedReport {
    /// One line of text.
    pub fn human(&self) -> String {
        format!(
            "feed: {} subscribers received {} ATP events ({:.0}/s in total); ack -> subscriber p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} timed); lagged {}\n",
            self.subscribers,
            self.events,
            self.events_per_second,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.timed,
            self.lagged
        )
    }
}

struct Tally {
    events: u64,
    lagged: u64,
    hist: Histogram<u64>,
}

/// Runs one subscriber until `end`, counting from `measure_from`.
async fn subscriber(
    config: ClientConfig,
    prefix: String,
    clock: Arc<AckClock>,
    measure_from: Instant,
    end: Instant,
) -> Result<Tally, ClientError> {
    let request = Subscribe {
        name: String::new(),
        start: start::LIVE,
        from_seq: 0,
        channels: vec![],
        skus: vec![],
        sku_prefix: prefix,
        kinds: kinds::ATP,
        coalesce_ms: 0,
    };
    let mut sub = Subscriber::subscribe(config, request).await?;
    let mut t = Tally {
        events: 0,
        lagged: 0,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| ClientError::Protocol(e.to_string()))?,
    };
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Counted inside `next_with`, on the items borrowed from the frame: a subscriber
        // of this generator costs the machine what a lean adapter would.
        let counted = sub.next_with(|items| {
            if Instant::now() < measure_from {
                return;
            }
            let now = clock.now_us();
            for item in &items {
                if let PushItemRef::Atp(a) = item {
                    t.events += 1;
                    if let Some(us) = clock.since_ack(a.seq, now) {
                        let _ = t.hist.record(us.max(1));
                    }
                }
            }
        });
        match tokio::time::timeout(left, counted).await {
            Err(_) => break,
            Ok(Ok(())) => {}
            Ok(Err(ClientError::Lagged { .. } | ClientError::Disconnected)) => {
                t.lagged += 1;
                sub.resume().await?;
            }
            Ok(Err(e)) => return Err(e),
        }
    }
    sub.close().await;
    Ok(t)
}

/// Starts `n` subscribers, subscriber `i` filtering on `prefixes[i % len]` (every SKU when
/// `prefixes` is empty); the returned handle gives their report once the run is over.
pub async fn start_subscribers(
    n: u32,
    prefixes: &[String],
    config: ClientConfig,
    clock: Arc<AckClock>,
    measure_from: Instant,
    end: Instant,
) -> Result<Subscribers, ClientError> {
    let mut tasks = Vec::new();
    for i in 0..n as usize {
        let prefix = if prefixes.is_empty() {
            String::new()
        } else {
            prefixes[i % prefixes.len()].clone()
        };
        tasks.push(tokio::spawn(subscriber(
            config.clone(),
            prefix,
            clock.clone(),
            measure_from,
            end,
        )));
    }
    Ok(Subscribers {
        n,
        tasks,
        measured: end.saturating_duration_since(measure_from),
    })
}

/// Running subscribers.
pub struct Subscribers {
    n: u32,
    tasks: Vec<tokio::task::JoinHandle<Result<Tally, ClientError>>>,
    measured: Duration,
}

impl Subscribers {
    /// Waits for them and merges what they saw.
    pub async fn finish(self) -> Result<FeedReport, String> {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
        let (mut events, mut lagged) = (0, 0);
        for t in self.tasks {
            let t = t
                .await
                .map_err(|e| format!("subscriber task: {e}"))?
                .map_err(|e| format!("subscriber: {e}"))?;
            events += t.events;
            lagged += t.lagged;
            hist.add(&t.hist).map_err(|e| e.to_string())?;
        }
        Ok(FeedReport {
            subscribers: self.n,
            events,
            events_per_second: events as f64 / self.measured.as_secs_f64().max(1e-9),
            timed: hist.len(),
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            lagged,
        })
    }
}
