//! The expiry driver: a task that sleeps until the earliest deadline of the expiry queue
//! and expires what is due, every SKU of a reservation at the same `now`, in a request
//! epoch like client requests.

use std::sync::Arc;

use futures::future::join_all;

use crate::domain::{Rejection, ReservationId, SkuCommand, TimeMs};

use super::api::Failure;
use super::reservations::*;
use super::{Core, Counters};

/// How long an expiry the log refused for back-pressure waits before it is tried again: long
/// enough not to spin on a log that is behind, short against a hold's minutes.
pub(crate) const EXPIRY_RETRY_AFTER_MS: u64 = 100;

/// Expires one due reservation. Returns whether it expired.
pub(super) async fn expire_one(core: &Arc<Core>, id: ReservationId, now: TimeMs) -> bool {
    let entry = match lock_reservation(core, id, Holder::Expiry) {
        Ok(e) => e,
        Err(Rejection::ReservationBusy(_)) => {
            // Another op holds it; look again in a millisecond.
            core.expiry.insert(now + 1, id);
            return false;
        }
        Err(_) => return false,
    };
    if entry.expires_at_ms > now {
        unlock_reservation(core, id, None);
        return false;
    }
    let targets = every_sku(&entry, SkuCommand::Expire { reservation: id });
    let (done, failure) = fan_out(core, id, targets, 0, 0, now).await;
    if let Some(f) = failure {
        unlock_reservation(core, id, None);
        let retriable = matches!(&f, Failure::Error(e) if e.is_retriable());
        if done.is_empty() && retriable {
            // Nothing was expired: the log refused the group's first record (back-pressure).
            // Its deadline was taken off the queue; put it back, or it would never expire.
            tracing::warn!(reservation = %format!("{id:032x}"), "expiry deferred: {f}");
            core.expiry
                .insert(now.saturating_add(EXPIRY_RETRY_AFTER_MS), id);
        } else {
            tracing::error!(reservation = %format!("{id:032x}"), "expiry failed: {f}");
        }
        return false;
    }
    core.reservations.remove(&id);
    Counters::bump(&core.counters.reservations_expired);
    true
}

/// Expires everything due now, in rounds of `expiry_batch`.
pub(crate) async fn expire_due(core: &Arc<Core>) -> usize {
    let mut n = 0;
    loop {
        let now = core.clock.now_ms();
        let due = core.expiry.take_due(now, core.config.expiry_batch);
        if due.is_empty() {
            return n;
        }
        // In a request epoch, like client requests: a checkpoint waits for expiries in flight.
        let epoch = core.enter_epoch();
        let results = join_all(due.into_iter().map(|id| expire_one(core, id, now))).await;
        core.exit_epoch(epoch);
        n += results.into_iter().filter(|x| *x).count();
    }
}

/// Sleeps until the earliest deadline (or until an earlier one is added), then expires.
/// Holds the core only weakly between rounds, so a shut-down engine is released at once.
pub(crate) async fn expiry_driver(weak: std::sync::Weak<Core>) {
    loop {
        let (wait, changed) = {
            let Some(core) = weak.upgrade() else { return };
            expire_due(&core).await;
            let now = core.clock.now_ms();
            match core.expiry.next_deadline() {
                Some(t) if t <= now => continue,
                Some(t) => (
                    Some(std::time::Duration::from_millis(t - now)),
                    core.wake_handle(),
                ),
                None => (None, core.wake_handle()),
            }
        };
        match wait {
            Some(w) => {
                tokio::select! {
                    _ = tokio::time::sleep(w) => {}
                    _ = changed.notified() => {}
                }
            }
            None => changed.notified().await,
        }
    }
}
