//! The server-wide connection memory budget (`max_connections_memory_bytes`): every byte
//! the connections hold in buffers is counted here, and the bytes that can wait for room
//! (a large partial frame, a connection held back while the server is over budget) wait
//! for it in a queue instead of being read first and checked after.
//!
//! Why a semaphore of bytes and not a check of the total before each read: 1,000
//! connections each checking "is there room?" and then reading a 64 KiB chunk all passed
//! the check at once and went 316 MiB over a 256 MiB budget. Here room is taken
//! (`acquire`) before the buffer grows, so what partial frames hold never exceeds
//! [`Budget::frame_limit`] whatever the number of connections; waiters are served in
//! order and woken only when their bytes are free (no polling: 1,000 waiting connections
//! cost nothing). Bytes that cannot wait — answers produced, pushes, the fixed cost of a
//! connection, the small read buffer — are counted at once (`force`): they take permits
//! while there are some and run up a debt beyond, which the next releases pay back first.
//! Those are bounded elsewhere: per connection by `max_output_bytes` and `max_in_flight`,
//! server-wide by the busy answers given once the total is over the budget.
//!
//! Partial frames may fill the budget only to [`Budget::frame_limit`] (3/4 of it): the
//! rest is headroom for answers and small requests, so that connections holding partial
//! frames cannot make the server answer busy to everyone else, and for what the allocator
//! keeps of freed buffers while connections come and go (with 7/8, 1,000 connections
//! sending 1 MiB frames and reconnecting for 25 s brought RSS 1 MiB over the budget: about
//! 10 MiB beyond the bytes counted, docs/benchmarks.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::ServerStats;

/// Most bytes one `acquire` may ask for (a frame is at most 64 MiB; the semaphore counts
/// in u32).
const MAX_ACQUIRE_BYTES: usize = u32::MAX as usize;

/// The budget of all connections' buffers. One per server.
pub(crate) struct Budget {
    stats: Arc<ServerStats>,
    /// `max_connections_memory_bytes`.
    limit: u64,
    /// What partial frames may bring the total to.
    frame_limit: u64,
    /// One permit per byte under `frame_limit` not counted yet.
    room: Semaphore,
    /// Bytes counted beyond the permits there were (forced); paid back first on release.
    debt: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes, of which partial frames may take 3/4 (at least one frame
    /// of `max_frame_bytes`, at most all of it).
    pub(crate) fn new(stats: Arc<ServerStats>, limit: usize, max_frame_bytes: usize) -> Budget {
        let frame_limit = (limit - limit / 4)
            .max(max_frame_bytes.saturating_add(4))
            .min(limit);
        Budget {
            stats,
            limit: limit as u64,
            frame_limit: frame_limit as u64,
            room: Semaphore::new(frame_limit.min(Semaphore::MAX_PERMITS)),
            debt: AtomicU64::new(0),
        }
    }

    /// What partial frames may bring the total to.
    #[cfg(test)]
    pub(crate) fn frame_limit(&self) -> u64 {
        self.frame_limit
    }

    fn total(&self) -> &AtomicU64 {
        &self.stats.connection_buffered_bytes
    }

    /// Counts `n` bytes in the total and its high-water mark.
    fn add_total(&self, n: usize) {
        let now = self.total().fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let peak = &self.stats.connection_buffered_bytes_peak;
        if now > peak.load(Ordering::Relaxed) {
            peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> u64 {
        self.total().load(Ordering::Relaxed)
    }

    /// Whether the total is over `max_connections_memory_bytes`.
    pub(crate) fn over(&self) -> bool {
        self.held() > self.limit
    }

    /// Counts `n` bytes that cannot wait: permits while there are some, debt beyond.
    pub(crate) fn force(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.add_total(n);
        let mut left = n;
        // A few tries: another connection may take the permits seen between the two calls.
        for _ in 0..4 {
            let take = left
                .min(self.room.available_permits())
                .min(MAX_ACQUIRE_BYTES);
            if take == 0 {
                break;
            }
            if let Ok(p) = self.room.try_acquire_many(take as u32) {
                p.forget();
                left -= take;
                if left == 0 {
                    return;
                }
            }
        }
        self.debt.fetch_add(left as u64, Ordering::Relaxed);
    }

    /// Uncounts `n` bytes: pays the debt first, gives the rest back as room (to the first
    /// waiter in line, if any).
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.total().fetch_sub(n as u64, Ordering::Relaxed);
        let mut paid = 0u64;
        let _ = self
            .debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                paid = d.min(n as u64);
                Some(d - paid)
            });
        let back = n - paid as usize;
        if back > 0 {
            self.room.add_permits(back);
        }
    }

    /// Waits for room for `n` bytes under the frame limit and counts them. Cancel-safe:
    /// dropped before it resolves, it takes nothing (room assigned to it while it waited
    /// goes back). `false`: never (more than the frame limit asked for).
    pub(crate) async fn acquire(&self, n: usize) -> bool {
        if n as u64 > self.frame_limit || n > MAX_ACQUIRE_BYTES {
            return false;
        }
        match self.room.acquire_many(n as u32).await {
            Ok(p) => {
                p.forget();
                self.add_total(n);
                true
            }
            // Never closed.
            Err(_) => false,
        }
    }

    /// Resolves once the total is back under the frame limit (room for one byte was free:
    /// every debt paid), in line with the other waiters.
    pub(crate) async fn wait_for_room(&self) {
        if let Ok(p) = self.room.acquire().await {
            drop(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Budget {
        Budget::new(Arc::new(ServerStats::default()), limit, 256)
    }

    #[test]
    fn forced_bytes_beyond_the_room_are_a_debt_paid_back_before_room_returns() {
        let b = budget(800);
        assert_eq!(b.frame_limit(), 600);
        b.force(500);
        b.force(400);
        assert_eq!((b.held(), b.room.available_permits()), (900, 0));
        assert!(b.over());
        b.release(150);
        assert_eq!(b.room.available_permits(), 0, "the debt of 300 first");
        b.release(250);
        assert_eq!(b.room.available_permits(), 100);
        assert!(!b.over());
        b.release(500);
        assert_eq!((b.held(), b.room.available_permits()), (0, 600));
    }

    #[tokio::test]
    async fn a_waiter_gets_its_bytes_only_once_they_are_free_and_a_dropped_one_takes_nothing() {
        let b = Arc::new(budget(800));
        assert!(b.acquire(500).await);
        assert!(!b.acquire(601).await, "over the frame limit: never");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(400).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(b.held(), 500, "nothing counted while it waits");
        b.release(300);
        assert!(waiter.await.unwrap());
        assert_eq!(b.held(), 600);
        // A waiter dropped while waiting gives back what it was assigned.
        {
            let f = b.acquire(300);
            tokio::pin!(f);
            assert!(futures::poll!(f.as_mut()).is_pending());
            b.release(100);
        }
        assert_eq!(b.held(), 500);
        assert_eq!(b.room.available_permits(), 100);
    }
}
