//! The group-commit machinery: the pending buffer that `append` pushes into, the one
//! writer OS thread that turns that buffer into sled batches, and the published durable
//! sequence number that waiters watch.
//!
//! Group commit is the whole point of this module: an fsync costs the same for one
//! record as for thousands, so appenders only pay for a mutex push and the writer pays
//! for one `apply_batch` + one `flush` per batch. While the writer is inside `flush`,
//! appenders keep filling the next buffer, so batch size grows with load and throughput
//! is bounded by sled's apply cost, not by fsync latency. sled charges per key, so each
//! batch is packed into groups of consecutive records (one sled value per group, see
//! [`super::record`]) and that cost is paid per group, not per record. Failure handling
//! lives here too, because fail-stop must be decided at the one place that observes
//! write errors: once a batch fails, no later sequence number is ever published durable.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::record;
use super::{Durability, WalError, WalStats};

/// Where the fault injector can make the writer fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultPoint {
    /// Just before `apply_batch`.
    Write,
    /// Just before `flush`.
    Flush,
}

/// Counter value meaning "never fail".
const DISARMED: i64 = -1;

/// Test hook that makes the writer thread's next storage call fail as if sled had
/// returned an I/O error. Checked by the writer before the real sled call, so the
/// fail-stop path can be tested deterministically without a broken disk.
///
/// Each countdown holds how many more calls succeed; at zero every later call fails
/// (the WAL is fail-stop, so one failure is all a test needs). The writer can also be
/// stalled before its next batch write, which lets tests fill the pending buffer
/// deterministically (backpressure, batch caps). A stalled writer also stalls
/// `shutdown`, so resume it before dropping the `Wal`.
#[derive(Debug)]
pub struct FaultInjector {
    writes_left: AtomicI64,
    flushes_left: AtomicI64,
    stall: Mutex<Stall>,
    stall_cv: Condvar,
}

#[derive(Debug, Default)]
struct Stall {
    requested: bool,
    writer_parked: bool,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultInjector {
    /// A disarmed injector: nothing fails until a `fail_*` method is called.
    pub fn new() -> Self {
        Self {
            writes_left: AtomicI64::new(DISARMED),
            flushes_left: AtomicI64::new(DISARMED),
            stall: Mutex::new(Stall::default()),
            stall_cv: Condvar::new(),
        }
    }

    /// Makes the writer park before its next batch write until [`Self::resume_writes`].
    pub fn stall_writes(&self) {
        self.stall.lock().requested = true;
    }

    /// Releases a writer parked by [`Self::stall_writes`].
    pub fn resume_writes(&self) {
        self.stall.lock().requested = false;
        self.stall_cv.notify_all();
    }

    /// Blocks until the writer is parked at the stall point (it has taken a batch and
    /// not written it), so a test knows exactly what is still pending.
    pub fn wait_until_writer_stalled(&self) {
        let mut stall = self.stall.lock();
        while !stall.writer_parked {
            self.stall_cv.wait(&mut stall);
        }
    }

    fn park_while_stalled(&self) {
        let mut stall = self.stall.lock();
        if !stall.requested {
            return;
        }
        stall.writer_parked = true;
        self.stall_cv.notify_all();
        while stall.requested {
            self.stall_cv.wait(&mut stall);
        }
        stall.writer_parked = false;
    }

    /// Lets `n_batches` more batch writes (`apply_batch`) succeed, then fails the next.
    pub fn fail_writes_after(&self, n_batches: u64) {
        let n = i64::try_from(n_batches).unwrap_or(i64::MAX);
        self.writes_left.store(n, Ordering::Release);
    }

    /// Lets `n_flushes` more flushes succeed, then fails the next.
    pub fn fail_flushes_after(&self, n_flushes: u64) {
        let n = i64::try_from(n_flushes).unwrap_or(i64::MAX);
        self.flushes_left.store(n, Ordering::Release);
    }

    /// Fails the very next batch write.
    pub fn fail_now(&self) {
        self.fail_writes_after(0);
    }

    /// Stops injecting failures (a WAL that already failed stays failed).
    pub fn disarm(&self) {
        self.writes_left.store(DISARMED, Ordering::Release);
        self.flushes_left.store(DISARMED, Ordering::Release);
    }

    fn check(&self, point: FaultPoint) -> Result<(), String> {
        if point == FaultPoint::Write {
            self.park_while_stalled();
        }
        let counter = match point {
            FaultPoint::Write => &self.writes_left,
            FaultPoint::Flush => &self.flushes_left,
        };
        let consumed = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            if left > 0 {
                Some(left - 1)
            } else {
                None
            }
        });
        match consumed {
            Err(0) => Err(format!("injected {point:?} fault")),
            _ => Ok(()),
        }
    }
}

/// Lifecycle of the writer as seen by appenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    ShuttingDown,
    Failed,
}

/// Records appended but not yet taken by the writer. Their seqs are contiguous and end
/// at `next_seq - 1`, so the first one's seq is derived rather than stored.
struct Pending {
    next_seq: u64,
    records: Vec<Vec<u8>>,
    state: RunState,
}

/// What the writer got from the pending buffer.
enum Take {
    /// Records were moved into the caller's buffer; the first has this seq.
    Batch { first_seq: u64 },
    /// The relaxed-mode flush deadline passed with nothing pending.
    Timeout,
    /// Shutdown was requested and everything pending has been taken.
    Shutdown,
}

/// State shared between appenders, waiters and the writer thread.
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    writer_wake: Condvar,
    /// Highest seq acknowledged to waiters (flushed in `Sync`, written in `Relaxed`).
    durable_seq: AtomicU64,
    /// Highest seq known to be flushed to disk (equals `durable_seq` in `Sync`).
    flushed_seq: AtomicU64,
    /// Highest seq handed out by `append`, so waiters can reject seqs never assigned.
    last_assigned: AtomicU64,
    /// Sticky fail-stop message; set once, never cleared.
    failure: OnceLock<String>,
    /// Async waiters by the sequence number they wait for: a publication wakes exactly
    /// the ones it satisfies (a `watch` woke every waiter on every batch).
    waiters: Mutex<Waiters>,
    /// Set when the writer thread has exited: waiters for what it never published stop.
    writer_exited: std::sync::atomic::AtomicBool,
    /// Blocking waiters park here; the lock only orders the check against the notify.
    blocking_lock: Mutex<()>,
    blocking_cv: Condvar,
    pub(crate) stats: WalStats,
}

impl Shared {
    /// State for a log whose next record gets `next_seq` (everything below is durable).
    pub(crate) fn new(next_seq: u64) -> Self {
        let durable = next_seq.saturating_sub(1);
        Self {
            pending: Mutex::new(Pending {
                next_seq,
                records: Vec::new(),
                state: RunState::Running,
            }),
            writer_wake: Condvar::new(),
            durable_seq: AtomicU64::new(durable),
            flushed_seq: AtomicU64::new(durable),
            last_assigned: AtomicU64::new(durable),
            failure: OnceLock::new(),
            waiters: Mutex::new(Waiters::default()),
            writer_exited: std::sync::atomic::AtomicBool::new(false),
            blocking_lock: Mutex::new(()),
            blocking_cv: Condvar::new(),
            stats: WalStats::default(),
        }
    }

    /// Assigns the next seq to `payload` and queues it for the writer.
    pub(crate) fn append(&self, payload: Vec<u8>, max_pending: usize) -> Result<u64, WalError> {
        let mut pending = self.pending.lock();
        match pending.state {
            RunState::Running => {}
            RunState::ShuttingDown => return Err(WalError::Closed),
            RunState::Failed => return Err(self.failed_error()),
        }
        if pending.records.len() >= max_pending {
            return Err(WalError::Backpressure {
                pending_records: pending.records.len(),
                max_pending_records: max_pending,
            });
        }
        let seq = pending.next_seq;
        pending.records.push(payload);
        pending.next_seq = seq + 1;
        self.last_assigned.store(seq, Ordering::Release);
        drop(pending);
        // Cheap when the writer is busy flushing (no waiter to wake): the batch just grows.
        self.writer_wake.notify_one();
        Ok(seq)
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    pub(crate) fn flushed_seq(&self) -> u64 {
        self.flushed_seq.load(Ordering::Acquire)
    }

    pub(crate) fn last_assigned(&self) -> u64 {
        self.last_assigned.load(Ordering::Acquire)
    }

    /// The fail-stop message, once the log has failed.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub(crate) fn failed_error(&self) -> WalError {
        let message = self.failure.get().map_or("unknown failure", String::as_str);
        WalError::Failed(message.to_owned())
    }

    /// Fails fast for states in which no new work may start.
    pub(crate) fn check_running(&self) -> Result<(), WalError> {
        match self.pending.lock().state {
            RunState::Running => Ok(()),
            RunState::ShuttingDown => Err(WalError::Closed),
            RunState::Failed => Err(self.failed_error()),
        }
    }

    /// `Some` once the outcome for `seq` is known: durable, or never going to be.
    fn poll_durable(&self, seq: u64) -> Option<Result<(), WalError>> {
        if self.durable_seq() >= seq {
            return Some(Ok(()));
        }
        if self.failure.get().is_none() {
            if self.writer_exited.load(Ordering::Acquire) && self.durable_seq() < seq {
                return Some(Err(WalError::Closed));
            }
            return None;
        }
        // Re-read: the seq may have been published just before a later batch failed,
        // and a durable record must be reported durable.
        if self.durable_seq() >= seq {
            Some(Ok(()))
        } else {
            Some(Err(self.failed_error()))
        }
    }

    fn check_assigned(&self, seq: u64) -> Result<(), WalError> {
        let last_assigned = self.last_assigned();
        if seq > last_assigned {
            return Err(WalError::SeqNotAssigned { seq, last_assigned });
        }
        Ok(())
    }

    /// Waits until `seq` is durable; wakes once per published batch, not per record.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        if let Some(outcome) = self.poll_durable(seq) {
            return outcome;
        }
        self.check_assigned(seq)?;
        DurableWait {
            shared: self,
            seq,
            key: None,
        }
        .await
    }

    /// Blocking twin of [`Shared::wait_durable`] for threads outside an async runtime.
    pub(crate) fn wait_durable_blocking(&self, seq: u64) -> Result<(), WalError> {
        if let Some(outcome) = self.poll_durable(seq) {
            return outcome;
        }
        self.check_assigned(seq)?;
        let mut guard = self.blocking_lock.lock();
        loop {
            if let Some(outcome) = self.poll_durable(seq) {
                return outcome;
            }
            self.blocking_cv.wait(&mut guard);
        }
    }

    fn wake_waiters(&self) {
        // Taking the lock orders this notify after any blocking waiter's last check.
        drop(self.blocking_lock.lock());
        self.blocking_cv.notify_all();
    }

    /// Publishes `seq` as durable unless the WAL has failed meanwhile (a checkpoint
    /// thread can trip fail-stop while this batch was being written). Checked under
    /// the pending lock, which `fail` also takes, so no seq is published after the
    /// failed state became visible.
    fn publish_durable(&self, seq: u64) -> Result<(), String> {
        {
            let pending = self.pending.lock();
            if pending.state == RunState::Failed {
                return Err(format!("not publishing seq {seq}: the WAL already failed"));
            }
            self.durable_seq.store(seq, Ordering::Release);
        }
        self.wake_async(Some(seq));
        self.wake_waiters();
        Ok(())
    }

    /// Wakes the async waiters for `seq` and below (all of them with `None`), outside
    /// the lock.
    fn wake_async(&self, upto: Option<u64>) {
        let ready = {
            let mut w = self.waiters.lock();
            match upto {
                Some(seq) => {
                    let rest = w.by_seq.split_off(&(seq.saturating_add(1), 0));
                    std::mem::replace(&mut w.by_seq, rest)
                }
                None => std::mem::take(&mut w.by_seq),
            }
        };
        for (_, waker) in ready {
            waker.wake();
        }
    }

    /// The writer thread is gone: nothing more will be published.
    fn writer_gone(&self) {
        self.writer_exited.store(true, Ordering::Release);
        self.wake_async(None);
        self.wake_waiters();
    }

    fn publish_flushed(&self, seq: u64) {
        self.flushed_seq.store(seq, Ordering::Release);
    }

    /// Enters the sticky failed state: drops everything pending (it will never be
    /// written) and wakes every waiter so they observe `WalError::Failed`.
    pub(crate) fn fail(&self, message: String) {
        // First failure wins: later errors are usually consequences of the first.
        if self.failure.set(message).is_ok() {
            let message = self.failure.get().map_or("", String::as_str);
            tracing::error!(error = %message, "WAL failed; refusing further appends (fail-stop)");
        }
        {
            let mut pending = self.pending.lock();
            pending.state = RunState::Failed;
            pending.records = Vec::new();
        }
        self.writer_wake.notify_all();
        self.wake_async(None);
        self.wake_waiters();
    }

    /// Asks the writer to drain what is pending and exit; appends fail from now on.
    pub(crate) fn begin_shutdown(&self) {
        {
            let mut pending = self.pending.lock();
            if pending.state == RunState::Running {
                pending.state = RunState::ShuttingDown;
            }
        }
        self.writer_wake.notify_all();
    }

    /// Moves pending records into `out` (which must be empty), waiting for some to
    /// arrive, for `deadline`, or for shutdown.
    fn take(&self, out: &mut Vec<Vec<u8>>, deadline: Option<Instant>) -> Take {
        let mut pending = self.pending.lock();
        loop {
            if pending.state == RunState::Failed {
                return Take::Shutdown;
            }
            if !pending.records.is_empty() {
                // Swap, not drain: O(1) under the lock however large the backlog, and
                // `out`'s capacity is reused for the next batch.
                std::mem::swap(&mut pending.records, out);
                let first_seq = pending.next_seq - out.len() as u64;
                return Take::Batch { first_seq };
            }
            if pending.state == RunState::ShuttingDown {
                return Take::Shutdown;
            }
            match deadline {
                Some(at) => {
                    if self.writer_wake.wait_until(&mut pending, at).timed_out() {
                        return Take::Timeout;
                    }
                }
                None => self.writer_wake.wait(&mut pending),
            }
        }
    }
}

fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Caps on one group (one sled value); see `WalConfig::max_group_records` and
/// `WalConfig::max_group_bytes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLimits {
    pub(crate) max_records: usize,
    pub(crate) max_bytes: usize,
}

/// Encodes `chunk` (first seq `first_seq`) into one sled batch of groups; returns it,
/// the group count and the encoded byte count. `scratch` is reused across groups.
///
/// Records are packed into as few groups as the limits allow because sled's cost is
/// per key, not per byte: one 256-record value costs about as much as one record did.
fn encode_batch(
    first_seq: u64,
    chunk: &[Vec<u8>],
    limits: GroupLimits,
    scratch: &mut Vec<u8>,
) -> Result<(sled::Batch, u64, u64), String> {
    let mut batch = sled::Batch::default();
    let (mut groups, mut bytes) = (0u64, 0u64);
    let mut seq = first_seq;
    let mut rest = chunk;
    while !rest.is_empty() {
        // At least 1 for a non-empty slice, so the loop always advances.
        let len = record::next_group_len(rest, limits.max_records, limits.max_bytes);
        let (group, tail) = rest.split_at(len);
        scratch.clear();
        record::encode_group_into(seq, group, scratch)
            .map_err(|e| format!("encoding the group at seq {seq} failed: {e}"))?;
        bytes += scratch.len() as u64;
        groups += 1;
        // Both conversions copy into sled's own buffers (keys inline, values in one
        // Arc), so the scratch buffer is reused and nothing else is allocated.
        batch.insert(&record::encode_key(seq)[..], &scratch[..]);
        seq += len as u64;
        rest = tail;
    }
    Ok((batch, groups, bytes))
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: sled::Tree,
    pub(crate) dir: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) max_batch_records: usize,
    pub(crate) group_limits: GroupLimits,
    pub(crate) fault: Option<Arc<super::FaultInjector>>,
}

/// Marks the WAL failed if the writer thread unwinds, so waiters never hang on a
/// writer that no longer exists.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("WAL writer thread panicked".to_owned());
        }
    }
}

/// Relaxed-mode bookkeeping: the highest written-but-unflushed seq and when it is due.
#[derive(Default)]
struct Unflushed {
    seq: u64,
    due: Option<Instant>,
}

impl Writer {
    /// The writer thread's body: take, write, publish, until shutdown or failure.
    pub(crate) fn run(self) {
        let shared = Arc::clone(&self.shared);
        let _guard = PanicGuard(&shared);
        let _gone = ExitGuard(&shared);
        let mut buf: Vec<Vec<u8>> = Vec::new();
        let mut scratch: Vec<u8> = Vec::new();
        let mut unflushed = Unflushed::default();
        loop {
            let outcome = match shared.take(&mut buf, unflushed.due) {
                Take::Batch { first_seq } => {
                    let written = self.write_all(first_seq, &buf, &mut scratch, &mut unflushed);
                    // Payloads are dropped here, on the writer, outside every lock.
                    buf.clear();
                    written.and_then(|()| self.flush_if_due(&mut unflushed, false))
                }
                Take::Timeout => self.flush_if_due(&mut unflushed, false),
                Take::Shutdown => {
                    if let Err(message) = self.flush_if_due(&mut unflushed, true) {
                        shared.fail(message);
                    }
                    return;
                }
            };
            if let Err(message) = outcome {
                shared.fail(message);
                return;
            }
        }
    }

    /// Writes `records` (first seq `first_seq`) in chunks of at most `max_batch_records`.
    fn write_all(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        scratch: &mut Vec<u8>,
        unflushed: &mut Unflushed,
    ) -> Result<(), String> {
        let mut seq = first_seq;
        for chunk in records.chunks(self.max_batch_records) {
            self.commit(seq, chunk, scratch, unflushed)?;
            seq += chunk.len() as u64;
        }
        Ok(())
    }

    /// One group commit: encode into groups, `apply_batch`, then (in `Sync`) `flush`,
    /// then publish. Groups never straddle two commits, so the published durable seq
    /// is always the last seq of a whole group.
    fn commit(
        &self,
        first_seq: u64,
        chunk: &[Vec<u8>],
        scratch: &mut Vec<u8>,
        unflushed: &mut Unflushed,
    ) -> Result<(), String> {
        let last_seq = first_seq + chunk.len() as u64 - 1;
        let (batch, groups, bytes) = encode_batch(first_seq, chunk, self.group_limits, scratch)?;
        self.inject(FaultPoint::Write)?;
        let started = Instant::now();
        self.log.apply_batch(batch).map_err(|e| {
            format!(
                "writing records {first_seq}..={last_seq} to {} failed: {e}",
                self.dir.display()
            )
        })?;
        // Counters before publishing, so a woken waiter already sees this batch counted.
        let counts = BatchCounts {
            records: chunk.len() as u64,
            groups,
            bytes,
        };
        self.record_batch(first_seq, counts, micros_since(started));
        match self.durability {
            Durability::Sync => {
                self.flush(last_seq)?;
                self.shared.publish_durable(last_seq)?;
            }
            Durability::Relaxed { flush_interval_ms } => {
                self.shared.publish_durable(last_seq)?;
                unflushed.seq = last_seq;
                unflushed.due.get_or_insert_with(|| {
                    Instant::now() + Duration::from_millis(flush_interval_ms)
                });
            }
        }
        Ok(())
    }

    /// Flushes sled and publishes `up_to_seq` as flushed, recording the latency.
    fn flush(&self, up_to_seq: u64) -> Result<(), String> {
        self.inject(FaultPoint::Flush)?;
        let started = Instant::now();
        self.log.flush().map_err(|e| {
            format!(
                "flushing records up to seq {up_to_seq} in {} failed: {e}",
                self.dir.display()
            )
        })?;
        let micros = micros_since(started);
        let stats = &self.shared.stats;
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .flush_latency_total_us
            .fetch_add(micros, Ordering::Relaxed);
        stats
            .flush_latency_max_us
            .fetch_max(micros, Ordering::Relaxed);
        crate::metrics::wal_flush(micros);
        self.shared.publish_flushed(up_to_seq);
        Ok(())
    }

    /// Relaxed mode: flushes once the oldest unflushed write is `flush_interval_ms` old
    /// (or unconditionally when `force`, at shutdown). A no-op in `Sync` mode, where
    /// nothing is ever left unflushed.
    fn flush_if_due(&self, unflushed: &mut Unflushed, force: bool) -> Result<(), String> {
        let Some(due) = unflushed.due else {
            return Ok(());
        };
        if force || Instant::now() >= due {
            self.flush(unflushed.seq)?;
            unflushed.due = None;
        }
        Ok(())
    }

    fn inject(&self, point: FaultPoint) -> Result<(), String> {
        match &self.fault {
            Some(fault) => fault
                .check(point)
                .map_err(|reason| format!("{reason} in WAL writer for {}", self.dir.display())),
            None => Ok(()),
        }
    }

    fn record_batch(&self, first_seq: u64, counts: BatchCounts, apply_us: u64) {
        let BatchCounts {
            records,
            groups,
            bytes,
        } = counts;
        let stats = &self.shared.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(records, Ordering::Relaxed);
        stats.groups.fetch_add(groups, Ordering::Relaxed);
        stats.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        stats
            .apply_latency_total_us
            .fetch_add(apply_us, Ordering::Relaxed);
        stats.last_batch_records.store(records, Ordering::Relaxed);
        crate::metrics::wal_batch(records, apply_us);
        tracing::debug!(
            first_seq,
            records,
            groups,
            bytes,
            apply_us,
            "WAL batch applied"
        );
    }
}

/// Sizes of one committed batch, for [`WalStats`].
struct BatchCounts {
    records: u64,
    groups: u64,
    bytes: u64,
}

/// Async waiters keyed by (sequence number, registration id).
#[derive(Default)]
pub(crate) struct Waiters {
    by_seq: std::collections::BTreeMap<(u64, u64), std::task::Waker>,
    next_id: u64,
}

/// Tells waiters the writer has exited, however it exits.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.writer_gone();
    }
}

/// The future of [`Shared::wait_durable`]: registers its waker under the sequence number
/// it waits for, and removes the registration when dropped.
struct DurableWait<'a> {
    shared: &'a Shared,
    seq: u64,
    key: Option<(u64, u64)>,
}

impl std::future::Future for DurableWait<'_> {
    type Output = Result<(), WalError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if let Some(outcome) = self.shared.poll_durable(self.seq) {
            self.unregister();
            return std::task::Poll::Ready(outcome);
        }
        {
            let mut w = self.shared.waiters.lock();
            let key = match self.key {
                Some(k) => k,
                None => {
                    w.next_id += 1;
                    (self.seq, w.next_id)
                }
            };
            w.by_seq.insert(key, cx.waker().clone());
            drop(w);
            self.key = Some(key);
        }
        // A publication between the check above and the registration has already run
        // its wake-up pass: look again now that the waker is registered.
        match self.shared.poll_durable(self.seq) {
            Some(outcome) => {
                self.unregister();
                std::task::Poll::Ready(outcome)
            }
            None => std::task::Poll::Pending,
        }
    }
}

impl DurableWait<'_> {
    fn unregister(&mut self) {
        if let Some(k) = self.key.take() {
            self.shared.waiters.lock().by_seq.remove(&k);
        }
    }
}

impl Drop for DurableWait<'_> {
    fn drop(&mut self) {
        self.unregister();
    }
}
