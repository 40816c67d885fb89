//! One client connection: handshake, then a read loop that hands each request frame to its
//! own task (so responses may leave out of order) and a writer task that owns the write
//! half. Back-pressure: a semaphore of `max_in_flight` permits is taken *before* reading the
//! next frame, so a client that pipelines faster than the engine answers simply stops being
//! read. A protocol violation gets one error frame, then a lingering close (the socket is
//! drained briefly so the error frame is not lost to a TCP reset).
//!
//! Memory: every byte a connection holds in buffers — answers and push frames produced but
//! not yet written, its read buffer, and a fixed [`CONNECTION_OVERHEAD_BYTES`] for the rest —
//! is counted in its [`Meter`] and in the server-wide [`Budget`]. When queued output plus an
//! estimate of the answers of the requests in flight ([`answer_estimate`]) reaches half of
//! `max_output_bytes`, or `max_in_flight` frames are held (requests unanswered plus answers
//! unwritten), the connection is not read (back-pressure: a client that pipelines and does
//! not read its answers stalls, costs nothing more, then meets `write_timeout`); a
//! connection whose held bytes still go over `max_output_bytes` (pushes, answers larger
//! than estimated) is disconnected at once, dropping what was queued and the requests in
//! flight. A frame larger than [`SMALL_FRAME_BYTES`] is read only once room for all of it
//! is taken from the budget (in line, until its `frame_timeout`; then the connection is
//! closed naming the budget). Over `max_connections_memory_bytes` in total, a request is
//! answered busy without being run when its connection holds other answers or requests or
//! when it is large; a small request on a connection holding nothing still runs. A
//! connection yields to the others after [`frames_per_turn`] frames (fewer, down to one, the more
//! connections have frames waiting), and beyond [`BUSY_LANE_PERMITS`] such busy connections
//! they take turns in a lane of that many places ([`Turns`]). The `Hello` is read
//! with a limit of [`MAX_HELLO_FRAME_BYTES`], not the frame limit, so a socket without a
//! credential cannot make the server buffer a megabyte.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout, timeout_at, Instant};

use crate::protocol::{self, failed, opcode, status, ErrorFrame, Frame, FrameError, FrameKind};
use crate::protocol::{Hello, RequestBatch, ResponseBatch, Welcome, MAGIC, PROTOCOL_VERSION};
use crate::protocol::{OpResult, Role};

use crate::tls::{ReadHalf, WriteHalf, TLS_HANDSHAKE_RECORD};

use super::budget::Budget;
use super::dispatch::{run_batch, Ctx};
use super::{Admitted, Established, ServerStats, AUTH_FAILURES_PER_SOURCE, AUTH_FAILURE_WINDOW};

mod subscribe;

/// Largest `Hello` frame (its length value) read. A name of 128 bytes and a token of 256 fit
/// many times over; a larger length is refused as soon as its 4 bytes arrive.
pub const MAX_HELLO_FRAME_BYTES: usize = 4096;
/// A frame up to this size (length prefix included) is read into a buffer grown at once,
/// without waiting for room in the server's budget: a `Hello`, a small request. Larger
/// frames wait for their room before the buffer grows (see `budget`).
const SMALL_FRAME_BYTES: usize = 8 * 1024;
/// The read buffer's capacity between frames.
const READ_BUFFER_BYTES: usize = 4096;
/// What a connection costs besides the buffers counted one by one (its tasks, the socket
/// halves, the writer's queue and its coalescing buffer, the idle timer), counted in the
/// budget for as long as it is open: about 19 KiB per connection were measured as RSS
/// beyond the counted buffers with 1,000 silent connections (docs/benchmarks.md,
/// "Attacks (issue 12)").
pub const CONNECTION_OVERHEAD_BYTES: usize = 20 * 1024;
/// While the server is over its connection memory budget, a request is still run when its
/// connection holds nothing else and its estimated answer is at most this (a ping, one
/// SKU's read, a reservation): the clients that hold the memory get the busy answers,
/// not a normal client's small request.
const SMALL_REQUEST_BYTES: usize = 16 * 1024;
/// Request frames a connection takes in one turn of its task before it yields to the
/// others (a connection with a deep pipeline must not keep a thread from a client that
/// sends one ping), while few connections have more to take than a turn.
const FRAMES_PER_TURN: usize = 32;
/// Frames per turn shared by the connections that have more to take than their turn (the
/// busy ones, [`frames_per_turn`]): a client that sends one request waits behind about
/// this many frames per busy connection's turn, not [`FRAMES_PER_TURN`] of each (1,000
/// connections pipelining PING held a normal client's ping p99 at 176–363 ms).
const FRAMES_PER_ROUND: usize = 64;

/// How many frames a connection takes before it yields: [`FRAMES_PER_ROUND`] shared by the
/// busy connections, between 1 and [`FRAMES_PER_TURN`].
fn frames_per_turn(busy: u64) -> usize {
    let busy = usize::try_from(busy).unwrap_or(usize::MAX).max(1);
    (FRAMES_PER_ROUND / busy).clamp(1, FRAMES_PER_TURN)
}

/// Busy connections that may take turns at once: the others wait, parked, for a place (in
/// order of arrival), so a client that sends one request waits behind at most this many
/// busy connections' turns of [`LANE_FRAMES_PER_TURN`], not one turn of each of them (with
/// 1,000 connections pipelining PING, one frame of each was 5 ms at the median).
pub(crate) const BUSY_LANE_PERMITS: usize = 8;
/// Frames a connection takes per turn while it holds a place in the busy lane.
const LANE_FRAMES_PER_TURN: usize = FRAMES_PER_ROUND / BUSY_LANE_PERMITS;

/// The places of the busy lane ([`BUSY_LANE_PERMITS`]), shared by the connections.
#[derive(Debug)]
pub(crate) struct BusyLane(tokio::sync::Semaphore);

impl Default for BusyLane {
    fn default() -> Self {
        Self(tokio::sync::Semaphore::new(BUSY_LANE_PERMITS))
    }
}

/// A connection's turns: frames taken since it last yielded, whether it counts in
/// [`ServerStats::busy_connections`] (uncounted on drop), and its place in the busy lane
/// while it has one.
struct Turns<'s> {
    stats: &'s ServerStats,
    taken: usize,
    counted: bool,
    place: Option<tokio::sync::SemaphorePermit<'s>>,
}

impl<'s> Turns<'s> {
    fn new(stats: &'s ServerStats) -> Self {
        Self {
            stats,
            taken: 0,
            counted: false,
            place: None,
        }
    }

    /// Whether this turn has taken its frames.
    fn ended(&self) -> bool {
        let limit = if self.place.is_some() {
            LANE_FRAMES_PER_TURN
        } else {
            frames_per_turn(self.stats.busy_connections.load(Ordering::Relaxed))
        };
        self.taken >= limit
    }

    fn took_frame(&mut self) {
        self.taken += 1;
    }

    fn set_busy(&mut self, busy: bool) {
        if busy != self.counted {
            self.counted = busy;
            if busy {
                self.stats.busy_connections.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.busy_connections.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Gives up the place in the lane before anything that may wait (room for frames in
    /// flight, an answer queued behind a client that does not read): a place is for taking
    /// frames, and a connection stuck on its own client must not keep others out.
    fn leave_lane(&mut self) {
        self.place = None;
    }

    /// Nothing more to take without waiting: not busy, the place in the lane is given up,
    /// and the turn ends (the connection waits for its socket, and what it reads next is a
    /// new turn: a pipeline of 16 frames is not counted busy because it arrived twice
    /// between two yields — with 50 such clients, every one of them waited in the lane).
    fn idle(&mut self) {
        self.set_busy(false);
        self.leave_lane();
        self.taken = 0;
    }

    /// Ends the turn. A connection with frames still buffered (`busy`) gives up its place,
    /// waits for one behind those already waiting while more connections are busy than the
    /// lane has places, and yields. One with nothing buffered does not yield here: it runs
    /// what it took and then waits for its socket (a client that sends one ping at a time
    /// is answered now, not after a round of the others' turns).
    async fn next_turn(&mut self, busy: bool) {
        self.taken = 0;
        self.set_busy(busy);
        self.leave_lane();
        if !busy {
            return;
        }
        if self.stats.busy_connections.load(Ordering::Relaxed) > BUSY_LANE_PERMITS as u64 {
            // Never closed; if it were, the connection would go on without a place.
            self.place = self.stats.busy_lane.0.acquire().await.ok();
        }
        tokio::task::yield_now().await;
    }
}

impl Drop for Turns<'_> {
    fn drop(&mut self) {
        self.set_busy(false);
    }
}

/// What a request in flight holds besides its body and its answer (its future, the
/// decoded batch's vectors), counted in its reservation.
const IN_FLIGHT_OVERHEAD_BYTES: usize = 256;
/// Status of a retriable "busy" answer (the engine's `Busy` rejection).
fn busy() -> u16 {
    super::status::of_code(crate::domain::RejectionCode::Busy)
}

/// The bytes one connection holds in buffers, counted in the server-wide [`Budget`]
/// (`ServerStats::connection_buffered_bytes`), and the frames it holds (requests read and
/// not yet answered, answers and pushes not yet written). Shared by the read loop, the
/// writer and the subscription's forwarder; settled when the last of them drops it.
pub(crate) struct Meter {
    /// Answers and pushes queued (produced, not yet written).
    out: AtomicUsize,
    /// The read buffer's allocation (partial frame and all).
    reading: AtomicUsize,
    /// What the requests in flight are expected to hold: their request and an estimate of
    /// their answer (see [`answer_estimate`]); in the server-wide total too, so that work
    /// under way counts against `max_connections_memory_bytes` before its answers exist.
    reserved: AtomicUsize,
    /// Request frames taken and not yet answered, plus frames queued and not yet written:
    /// at `max_in_flight` the connection is not read. A client that does not read its
    /// answers stops costing the server work after this many, not after megabytes of
    /// small answers.
    frames: AtomicUsize,
    /// Woken when queued output, reservations or held frames shrink: the reader may go on.
    room: Notify,
    stats: Arc<ServerStats>,
    budget: Arc<Budget>,
    max_out: usize,
    max_frames: usize,
    /// Set once, by whoever first saw the connection over its budget.
    overflowed: AtomicBool,
    /// Set when the writer ended (peer gone or too slow).
    writer_gone: AtomicBool,
    /// Wakes the read loop: over budget, writer gone, or a subscription that lagged.
    kill: Arc<Notify>,
}

impl Meter {
    /// A connection's meter; its fixed cost ([`CONNECTION_OVERHEAD_BYTES`]) is counted at
    /// once.
    fn new(
        stats: Arc<ServerStats>,
        budget: Arc<Budget>,
        max_out: usize,
        max_frames: usize,
    ) -> Meter {
        budget.force(CONNECTION_OVERHEAD_BYTES);
        Meter {
            out: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            room: Notify::new(),
            stats,
            budget,
            max_out,
            max_frames,
            overflowed: AtomicBool::new(false),
            writer_gone: AtomicBool::new(false),
            kill: Arc::new(Notify::new()),
        }
    }

    /// One frame of `n` bytes queued for the writer.
    fn add_out(&self, n: usize) {
        self.out.fetch_add(n, Ordering::AcqRel);
        self.frames.fetch_add(1, Ordering::AcqRel);
        self.budget.force(n);
    }

    /// One frame of `n` bytes queued for the writer and then dropped unwritten.
    fn sub_out(&self, n: usize) {
        self.written(n, 1);
    }

    /// The writer wrote `frames` frames of `n` bytes in all.
    fn written(&self, n: usize, frames: usize) {
        self.out.fetch_sub(n, Ordering::AcqRel);
        self.frames.fetch_sub(frames, Ordering::AcqRel);
        self.budget.release(n);
        self.room.notify_one();
    }

    /// A request frame taken, reserving `n` bytes for it and its answer.
    fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Ordering::AcqRel);
        self.frames.fetch_add(1, Ordering::AcqRel);
        self.budget.force(n);
    }

    /// Answers are done: their estimate is replaced by their real size (one answer per
    /// request frame: the frames held do not change).
    fn answered(&self, estimate: usize, bytes: usize) {
        self.out.fetch_add(bytes, Ordering::AcqRel);
        self.reserved.fetch_sub(estimate, Ordering::AcqRel);
        if bytes >= estimate {
            self.budget.force(bytes - estimate);
        } else {
            self.budget.release(estimate - bytes);
        }
        self.room.notify_one();
    }

    fn queued(&self) -> usize {
        self.out.load(Ordering::Acquire)
    }

    /// Whether it holds anything but its read buffer: output, requests in flight.
    fn holds_any(&self) -> bool {
        self.queued() + self.reserved.load(Ordering::Acquire) > 0
    }

    /// The read buffer grew by `n` bytes that could not wait (a small frame).
    fn reading_forced(&self, n: usize) {
        self.reading.fetch_add(n, Ordering::AcqRel);
        self.budget.force(n);
    }

    /// The read buffer grew by `n` bytes already taken from the budget (`Budget::acquire`).
    fn reading_acquired(&self, n: usize) {
        self.reading.fetch_add(n, Ordering::AcqRel);
    }

    /// The read buffer shrank by `n` bytes.
    fn reading_released(&self, n: usize) {
        self.reading.fetch_sub(n, Ordering::AcqRel);
        self.budget.release(n);
    }

    fn server_over_budget(&self) -> bool {
        self.budget.over()
    }

    /// Whether the next frame may be taken: queued output and the estimated answers of the
    /// requests in flight under half the budget and fewer than `max_in_flight` frames held,
    /// or nothing at all queued or in flight. While the server is over its connection
    /// memory budget, only with nothing queued or in flight: each frame taken then is
    /// answered busy, and a client that does not read those answers must not make the
    /// server hold one per frame it sends.
    fn may_take_frame(&self) -> bool {
        if !self.holds_any() {
            return true;
        }
        !self.own_limit_reached() && !self.server_over_budget()
    }

    fn own_limit_reached(&self) -> bool {
        let held = self.queued() + self.reserved.load(Ordering::Acquire);
        held >= self.max_out / 2 || self.frames.load(Ordering::Acquire) >= self.max_frames
    }

    /// Waits until [`may_take_frame`](Self::may_take_frame) holds: woken by this
    /// connection's writer and answers when its own limits hold it back, in line for room
    /// in the budget when the server is over it. No polling: a thousand connections held
    /// back cost nothing until their turn.
    async fn wait_to_take(&self) {
        while !self.may_take_frame() {
            if self.own_limit_reached() {
                // `notify_one` keeps a permit: a wake-up between the check and here counts.
                self.room.notified().await;
            } else {
                // Room in the budget, or this connection's own output written (holding
                // nothing, it may take a frame whatever the budget).
                tokio::select! {
                    _ = self.budget.wait_for_room() => {}
                    _ = self.room.notified() => {}
                }
            }
        }
    }

    /// Whether the connection holds more than its budget; the first to see it logs, counts
    /// and wakes the read loop, which disconnects.
    fn over_budget(&self) -> bool {
        let held = self.queued() + self.reading.load(Ordering::Acquire);
        if held <= self.max_out {
            return false;
        }
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            self.stats
                .slow_readers_closed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                held_bytes = held,
                max_output_bytes = self.max_out,
                "client let its queued answers grow over max_output_bytes: disconnected"
            );
            self.kill.notify_one();
        }
        true
    }

    fn writer_ended(&self) {
        self.writer_gone.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// The connection must be dropped at once (over budget, or nobody is writing).
    fn must_drop(&self) -> bool {
        self.overflowed.load(Ordering::Acquire) || self.writer_gone.load(Ordering::Acquire)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let held = self.out.load(Ordering::Acquire)
            + self.reading.load(Ordering::Acquire)
            + self.reserved.load(Ordering::Acquire)
            + CONNECTION_OVERHEAD_BYTES;
        self.budget.release(held);
    }
}

/// The writer's queue, as the rest of the connection sees it: every frame queued through
/// [`Out::send`] is counted in the meter until the writer has written it.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Vec<u8>>,
    meter: Arc<Meter>,
}

impl Out {
    /// Counts and queues one frame; false when the writer is gone.
    async fn send(&self, bytes: Vec<u8>) -> bool {
        let n = bytes.len();
        self.meter.add_out(n);
        if self.tx.send(bytes).await.is_err() {
            self.meter.sub_out(n);
            return false;
        }
        true
    }
}

/// How the request loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// EOF or shutdown: what is in flight is answered.
    Clean,
    /// An error frame was sent: linger so it is read.
    Refused,
    /// Over the output budget, or the writer is gone: drop everything at once.
    Dropped,
}

/// Why reading a frame failed.
enum ReadError {
    Frame(FrameError),
    /// The peer closed in the middle of a frame, or the socket failed.
    Io,
    /// A frame begun did not arrive whole within `frame_timeout`.
    Slow,
    /// A large frame found no room under the server's connection memory budget before its
    /// `frame_timeout`: the connection is closed (and its partial frame freed).
    NoRoom {
        /// The frame's size, length prefix included.
        frame_bytes: usize,
    },
}

/// Reads frames from the read half, never buffering more than one frame (≤ the limit)
/// beyond its small read buffer. The buffer's allocation is what the meter counts; it
/// grows only once the room for it is taken from the server's budget.
pub(crate) struct FrameReader {
    rd: ReadHalf,
    /// Bytes read: `buf[start..]` is not yet taken. Its capacity is the allocation as
    /// counted (`alloc`): reads fill only the spare capacity, so it never grows by itself,
    /// and frames taken from the front only move `start` (no allocation or copy per frame;
    /// what is left of a partial frame moves to the front when room is needed behind it).
    buf: Vec<u8>,
    start: usize,
    /// The allocation of `buf` as counted.
    alloc: usize,
    max: usize,
    /// Where the buffered bytes are counted, and what says whether to read on.
    meter: Option<Arc<Meter>>,
    /// How long a frame may take once begun (`None`: no limit here, as for the Hello,
    /// which the handshake timeout bounds).
    frame_timeout: Option<Duration>,
    /// When the partial frame in `buf` began to arrive (or reading resumed after a pause
    /// of the server's): its deadline is this plus `frame_timeout`.
    partial_since: Option<tokio::time::Instant>,
    /// What lets the read loop skip polling this reader when it was not woken for it
    /// ([`read_when_woken`]).
    wake: Arc<ReadWake>,
}

/// The waker the read loop polls its [`FrameReader`] with: it records that the reader (its
/// socket, or a timer or notification a read waits on) woke the connection task, so that
/// the loop's other wake-ups (an answer's progress, several per request) do not each build
/// and poll a read of a socket that has nothing.
pub(crate) struct ReadWake {
    /// Marked when woken since the reader was last polled (or it must be polled again
    /// anyway).
    gate: Arc<Gate>,
    /// The gate's waker.
    waker: std::task::Waker,
    /// The last poll ended waiting only on the socket (whose readiness wakes this waker
    /// whether or not the read is polled again); otherwise the read waits on a timer or a
    /// notification that lives in the read itself, and is polled at every turn.
    socket_only: AtomicBool,
}

impl ReadWake {
    fn new() -> Self {
        let (gate, waker) = Gate::new();
        ReadWake {
            gate,
            waker,
            socket_only: AtomicBool::new(false),
        }
    }
}

/// The reader's next frame, polled only when [`ReadWake`] says it may have progressed.
/// Cancel-safe as [`FrameReader::next`] is.
async fn read_when_woken(
    reader: &mut FrameReader,
    wake: &ReadWake,
) -> Result<Option<Frame>, ReadError> {
    use std::future::Future;
    use std::task::{Context, Poll};
    let next = reader.next();
    tokio::pin!(next);
    std::future::poll_fn(|cx| {
        if !wake.gate.take(cx) {
            return Poll::Pending;
        }
        match next.as_mut().poll(&mut Context::from_waker(&wake.waker)) {
            Poll::Ready(r) => {
                // More may be buffered: read again at the next turn.
                wake.gate.open();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !wake.socket_only.load(Ordering::Acquire) {
                    wake.gate.open();
                }
                Poll::Pending
            }
        }
    })
    .await
}

/// A wake-up of a future the read loop rarely finds ready (the reader's, above; the kill
/// notification, the server's shutdown, the idle timer): polled only after its own waker
/// fired, not at every turn of the loop (the loop turns several times per request, and
/// polling those last three cost about 2,300 instructions per unpipelined request). The
/// future is polled with the gate's waker, which marks the gate and wakes the task; a poll
/// that finds the gate unmarked answers `Pending` without touching the future.
struct Gate {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl Gate {
    /// A gate and its waker; marked, so the first poll registers the future.
    fn new() -> (Arc<Gate>, std::task::Waker) {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: futures::task::AtomicWaker::new(),
        });
        let waker = std::task::Waker::from(gate.clone());
        (gate, waker)
    }

    /// Marks the gate: the future is polled at the next turn (after it was re-armed).
    fn open(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Registers the task to be woken with the gate, and takes the mark: whether the
    /// future is to be polled now.
    fn take(&self, cx: &std::task::Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// Polls `fut` if its waker fired since the last poll.
    fn poll<F: std::future::Future>(
        &self,
        fut: std::pin::Pin<&mut F>,
        waker: &std::task::Waker,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        if !self.take(cx) {
            return std::task::Poll::Pending;
        }
        fut.poll(&mut std::task::Context::from_waker(waker))
    }
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl FrameReader {
    fn new(rd: ReadHalf, max: usize, meter: Option<Arc<Meter>>) -> Self {
        if let Some(m) = &meter {
            m.reading_forced(READ_BUFFER_BYTES);
        }
        FrameReader {
            rd,
            buf: Vec::with_capacity(READ_BUFFER_BYTES),
            start: 0,
            alloc: READ_BUFFER_BYTES,
            max,
            meter,
            frame_timeout: None,
            partial_since: None,
            wake: Arc::new(ReadWake::new()),
        }
    }

    /// Moves what is buffered into a new allocation of exactly `cap` bytes (≥ its length);
    /// the meter is told by the caller.
    fn reallocate(&mut self, cap: usize) {
        let mut b = Vec::with_capacity(cap);
        b.extend_from_slice(self.pending());
        self.buf = b;
        self.start = 0;
        self.alloc = cap;
    }

    /// The bytes read and not yet taken as frames.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Takes `n` bytes from the front.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Moves the bytes not yet taken to the front of the allocation, making its whole
    /// spare capacity readable into.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// An empty buffer grown for a large frame is given back (a connection that sent one
    /// large frame does not keep a megabyte for the rest of its life).
    fn shrink_if_empty(&mut self) {
        if self.is_empty() && self.alloc > 2 * READ_BUFFER_BYTES {
            let freed = self.alloc - READ_BUFFER_BYTES;
            self.reallocate(READ_BUFFER_BYTES);
            if let Some(m) = &self.meter {
                m.reading_released(freed);
            }
        }
    }

    /// Grows the buffer to `need` bytes: at once for a small frame (≤
    /// [`SMALL_FRAME_BYTES`]), else once room for it is taken from the server's budget
    /// (waiting in line, at most until the frame's deadline).
    async fn grow(&mut self, need: usize) -> Result<(), ReadError> {
        let more = need - self.alloc;
        if let Some(m) = self.meter.clone() {
            if need <= SMALL_FRAME_BYTES {
                m.reading_forced(more);
            } else {
                let acquire = m.budget.acquire(more);
                tokio::pin!(acquire);
                // Room free at once, or a wait in line for it.
                let (got, waited) = match futures::poll!(acquire.as_mut()) {
                    std::task::Poll::Ready(got) => (got, false),
                    std::task::Poll::Pending => match self.deadline() {
                        Some(at) => (timeout_at(at, acquire).await.unwrap_or(false), true),
                        None => (acquire.await, true),
                    },
                };
                if !got {
                    return Err(ReadError::NoRoom { frame_bytes: need });
                }
                m.reading_acquired(more);
                if waited {
                    // The server did not read while the frame waited for its room: the
                    // client's time starts again now (as after `wait_to_take`). Without
                    // this, a frame granted room late found its deadline spent and was
                    // closed as slow (IDLE_TIMEOUT), not for the budget: 1,970 of 2,000
                    // closes under the partial-frames attack.
                    self.restart_deadline();
                }
            }
        }
        self.reallocate(need);
        Ok(())
    }

    /// The next frame; `Ok(None)` on a clean end of stream. Cancel-safe: bytes read so far
    /// stay in the buffer, and room waited for is taken only when granted. Waits while the
    /// connection holds its share (queued output at half its budget, `max_in_flight`
    /// frames) or the server is over its connection memory budget, and before growing the
    /// buffer for a large frame until the budget has room for it.
    async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        self.wake.socket_only.store(false, Ordering::Release);
        if let Some(m) = &self.meter {
            if !m.may_take_frame() {
                m.wait_to_take().await;
                // The server paused reading: the client's time starts again now.
                self.restart_deadline();
            }
        }
        loop {
            if let Some((f, used)) =
                Frame::parse(self.pending(), self.max).map_err(ReadError::Frame)?
            {
                self.consume(used);
                self.shrink_if_empty();
                // What is left is the start of the next frame, read just now.
                self.partial_since = None;
                self.restart_deadline();
                return Ok(Some(f));
            }
            // The whole frame (its length already checked against the limit) must fit.
            let need = match Frame::peek_len(self.pending(), self.max).map_err(ReadError::Frame)? {
                Some(len) => 4 + len,
                None => 4,
            };
            if need > self.alloc {
                self.grow(need).await?;
            }
            // Fill the allocation, at most a chunk per read; taken frames left room at the
            // front only: move what is left back first (the rest of a partial frame, never
            // more than a frame).
            let want = (self.alloc - self.pending().len()).min(64 * 1024);
            if self.buf.capacity() - self.buf.len() < want {
                self.compact();
            }
            debug_assert!(want > 0, "a whole frame fits the allocation and was taken");
            let deadline = self.deadline();
            let mut limited = bytes::BufMut::limit(&mut self.buf, want);
            let read = self.rd.read_buf(&mut limited);
            let n = match deadline {
                Some(at) => {
                    self.wake.socket_only.store(false, Ordering::Release);
                    match tokio::time::timeout_at(at, read).await {
                        Ok(r) => r,
                        Err(_) => return Err(ReadError::Slow),
                    }
                }
                None => {
                    self.wake.socket_only.store(true, Ordering::Release);
                    read.await
                }
            }
            .map_err(|_| ReadError::Io)?;
            debug_assert!(
                self.buf.capacity() <= self.alloc,
                "the buffer grew uncounted"
            );
            if n == 0 {
                return if self.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io)
                };
            }
            if self.partial_since.is_none() {
                self.partial_since = Some(tokio::time::Instant::now());
            }
        }
    }

    /// When the partial frame must be whole: only a frame already begun has a deadline (a
    /// timer only for frames that arrive in pieces); between frames the connection's idle
    /// timer applies.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        match (self.frame_timeout, self.partial_since) {
            (Some(limit), Some(since)) if !self.is_empty() => Some(since + limit),
            _ => None,
        }
    }

    /// Starts the partial frame's deadline again (after a pause of the server's, or for
    /// the rest of a read that ended a frame).
    fn restart_deadline(&mut self) {
        if !self.is_empty() {
            self.partial_since = Some(tokio::time::Instant::now());
        }
    }

    /// Whether a whole frame is already buffered and may be taken now: `next` would return
    /// it without reading or waiting. Lets the read loop gather pipelined frames into one
    /// engine call.
    fn has_frame(&self) -> bool {
        let pending = self.pending();
        let whole =
            matches!(Frame::peek_len(pending, self.max), Ok(Some(len)) if pending.len() >= 4 + len);
        whole && self.meter.as_ref().is_none_or(|m| m.may_take_frame())
    }

    /// Reads and discards for up to `d` (at most 1 MiB) so that closing does not reset
    /// the connection before the peer has read our last frame.
    async fn linger(mut self, d: Duration) {
        // What was buffered is no longer needed: free it (and its count) first.
        self.buf = Vec::new();
        self.start = 0;
        if let Some(m) = &self.meter {
            m.reading_released(self.alloc);
        }
        self.alloc = 0;
        let mut sink = [0u8; 8192];
        let mut total = 0usize;
        let _ = timeout(d, async {
            while total < 1 << 20 {
                match self.rd.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// Marks the writer gone when it ends, however it ends.
struct WriterGone(Arc<Meter>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0.writer_ended();
    }
}

async fn write_loop(
    mut wr: WriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    ctx: Arc<Ctx>,
    meter: Arc<Meter>,
) {
    let _gone = WriterGone(meter.clone());
    // Frames ready together are coalesced into one write; a lone frame is written as it
    // is (no copy, and no coalescing buffer held by a connection that sends one at a time).
    let mut coalesced: Vec<u8> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut frames = 1;
        let bytes: &[u8] = match rx.try_recv() {
            Err(_) => &first,
            Ok(second) => {
                coalesced.clear();
                coalesced.extend_from_slice(&first);
                coalesced.extend_from_slice(&second);
                frames = 2;
                while coalesced.len() < COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(more) => {
                            coalesced.extend_from_slice(&more);
                            frames += 1;
                        }
                        Err(_) => break,
                    }
                }
                &coalesced
            }
        };
        let n = bytes.len();
        // Most writes complete at once: one attempt without the write timeout's timer (a
        // timer registration per answer for an unpipelined client). `poll_write` writes
        // nothing when it is pending, so the rest goes to `write_all` under the timeout.
        let first = futures::FutureExt::now_or_never(std::future::poll_fn(|cx| {
            tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut wr), cx, bytes)
        }));
        let done = match first {
            Some(Ok(0)) if n > 0 => return, // closed, as `write_all` would find
            Some(Err(_)) => return,
            Some(Ok(k)) => k,
            None => 0,
        };
        let rest = if done < n {
            Some(timeout(ctx.config.write_timeout, wr.write_all(&bytes[done..])).await)
        } else {
            None
        };
        match rest {
            None | Some(Ok(Ok(()))) => meter.written(n, frames),
            Some(Ok(Err(_))) => return,
            Some(Err(_)) => {
                // Dropping the queue makes every sender fail: the connection closes and
                // what was waiting for this client is freed.
                ctx.stats
                    .slow_readers_closed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    timeout_ms = ctx.config.write_timeout.as_millis() as u64,
                    "client did not read its answers: disconnected"
                );
                return;
            }
        }
        if coalesced.capacity() > 4 * COALESCE_BYTES {
            // One large answer went through: do not keep its size for the connection's life.
            coalesced = Vec::new();
        }
    }
    let _ = wr.shutdown().await;
}

/// Frames are coalesced into one write up to about this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;

fn error_frame(corr: u64, status: u16, message: impl Into<String>) -> Vec<u8> {
    let e = ErrorFrame {
        status,
        message: message.into(),
    };
    match protocol::frame_of(FrameKind::Error, corr, &e) {
        Ok(f) => f.encode(),
        // Unreachable in practice (a small struct); fall back to an empty payload.
        Err(_) => Frame::new(FrameKind::Error, corr, Vec::new()).encode(),
    }
}

/// Longest client name a `Hello` may carry (it is logged).
pub const MAX_CLIENT_NAME_BYTES: usize = 128;
/// Longest token a `Hello` may carry (comparison time is proportional to it).
pub const MAX_TOKEN_BYTES: usize = 256;

/// Compares a token in time independent of where, and whether in length, it differs: every
/// byte up to the longer of the two is looked at (the length difference is folded in).
fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut acc = u64::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        acc |= u64::from(x ^ y);
    }
    acc == 0
}

fn role_of(ctx: &Ctx, token: &str) -> Option<Role> {
    role_of_token(&ctx.config.tokens, token)
}

/// The role `token` grants under `tokens` (every token compared in constant time, so the
/// time taken tells nothing of a near miss); with no tokens configured every client is
/// admin (the server only listens on loopback then). Shared with the HTTP API, so both
/// ports answer a token the same way.
pub fn role_of_token(tokens: &HashMap<String, Role>, token: &str) -> Option<Role> {
    if tokens.is_empty() {
        return Some(Role::Admin);
    }
    let mut found = None;
    for (t, r) in tokens {
        if token_eq(t, token) {
            found = Some(*r);
        }
    }
    found
}

/// Reads and checks the `Hello`; answers `Welcome` or an error frame. `None`: close. The
/// connection takes its `max_connections` slot only here, once its `Hello` is accepted;
/// until then it is in the handshake pool, whose oldest member is evicted when it is full.
async fn handshake(
    reader: &mut FrameReader,
    out: &Out,
    ctx: &Ctx,
    admitted: &mut Option<Admitted>,
    deadline: Instant,
) -> Option<(Role, Established)> {
    let c = &ctx.config;
    let evicted = async {
        match admitted.as_ref() {
            Some(a) => a.pending.evicted().await,
            None => std::future::pending().await,
        }
    };
    let read = timeout_at(deadline, reader.next());
    let got = tokio::select! {
        r = read => r,
        _ = evicted => {
            let msg = "too many connections waiting to send their Hello; this one waited longest";
            let _ = out.send(error_frame(0, status::LIMIT_EXCEEDED, msg)).await;
            return None;
        }
    };
    let frame = match got {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) | Ok(Err(ReadError::Io)) => return None,
        Ok(Err(ReadError::Frame(FrameError::TooLarge { .. })))
            if reader.pending().first() == Some(&TLS_HANDSHAKE_RECORD) && c.tls.is_none() =>
        {
            // A TLS client on a plaintext port: it cannot read our answer, so say it here.
            ctx.stats.tls_on_plain_port.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                ip = %admitted.as_ref().map(|a| a.ip.to_string()).unwrap_or_default(),
                "a TLS handshake on a plaintext port (no --tls-cert): closed"
            );
            let msg = "this port speaks plaintext, not TLS (the server has no --tls-cert)";
            return refuse(ctx, out, 0, status::PROTOCOL_ERROR, msg).await;
        }
        Ok(Err(ReadError::Frame(FrameError::TooLarge { len, .. }))) => {
            let msg = format!("a Hello frame is at most {MAX_HELLO_FRAME_BYTES} bytes, not {len}");
            return refuse(ctx, out, 0, status::LIMIT_EXCEEDED, msg).await;
        }
        Ok(Err(ReadError::Frame(e))) => {
            return refuse(ctx, out, 0, status_of_frame_error(&e), e.to_string()).await
        }
        // (The Hello has no frame deadline of its own: the handshake timeout bounds it.)
        Ok(Err(ReadError::Slow | ReadError::NoRoom { .. })) | Err(_) => {
            let msg = "no Hello within the handshake timeout";
            return refuse(ctx, out, 0, status::IDLE_TIMEOUT, msg).await;
        }
    };
    let corr = frame.correlation;
    if frame.kind != FrameKind::Hello {
        let msg = "the first frame must be Hello";
        return refuse(ctx, out, corr, status::PROTOCOL_ERROR, msg).await;
    }
    if frame.payload.get(..4) != Some(&MAGIC[..]) {
        return refuse(ctx, out, corr, status::PROTOCOL_ERROR, "bad magic").await;
    }
    let hello: Hello = match protocol::decode_request(&frame.payload) {
        Ok(h) => h,
        Err(e) => return refuse(ctx, out, corr, status::PROTOCOL_ERROR, e.to_string()).await,
    };
    if hello.client_name.len() > MAX_CLIENT_NAME_BYTES || hello.token.len() > MAX_TOKEN_BYTES {
        let msg = format!(
            "client name over {MAX_CLIENT_NAME_BYTES} bytes or token over {MAX_TOKEN_BYTES} bytes"
        );
        return refuse(ctx, out, corr, status::PROTOCOL_ERROR, msg).await;
    }
    if hello.version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} not supported; this server speaks 1",
            hello.version
        );
        return refuse(ctx, out, corr, status::UNSUPPORTED_VERSION, msg).await;
    }
    // A source that failed too often is refused before its token is looked at.
    let source = admitted.as_ref().map(|a| (a.admission.clone(), a.ip));
    if let Some((admission, ip)) = source.as_ref().filter(|_| !c.tokens.is_empty()) {
        if let Some(left) = admission.auth_blocked(*ip) {
            ctx.stats.auth_throttled.fetch_add(1, Ordering::Relaxed);
            let msg = format!(
                "too many failed handshakes from {ip}: at most {AUTH_FAILURES_PER_SOURCE} per \
                 {} s; retry in {} s",
                AUTH_FAILURE_WINDOW.as_secs(),
                left.as_secs() + 1
            );
            return refuse(ctx, out, corr, status::LIMIT_EXCEEDED, msg).await;
        }
    }
    let Some(role) = role_of(ctx, &hello.token) else {
        ctx.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
        if let Some((admission, ip)) = &source {
            admission.auth_failed(*ip);
        }
        tracing::info!(client = %hello.client_name, "connection refused: bad token");
        return refuse(
            ctx,
            out,
            corr,
            status::UNAUTHORIZED,
            "missing or unknown token",
        )
        .await;
    };
    let slot = admitted.take().and_then(|a| a.admission.establish());
    let Some(slot) = slot else {
        ctx.stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        let max = c.max_connections;
        let msg = format!("{max} connections open; at most {max} (max_connections)");
        let _ = out
            .send(error_frame(corr, status::LIMIT_EXCEEDED, msg))
            .await;
        return None;
    };
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        server_name: c.server_name.clone(),
        max_frame_bytes: u32::try_from(c.max_frame_bytes).unwrap_or(u32::MAX),
        max_batch_ops: u32::try_from(c.max_batch_ops).unwrap_or(u32::MAX),
        max_lines_per_reservation: u32::try_from(c.max_lines_per_reservation).unwrap_or(u32::MAX),
        max_in_flight: u32::try_from(c.max_in_flight).unwrap_or(u32::MAX),
    };
    let f = protocol::frame_of(FrameKind::Welcome, corr, &welcome).ok()?;
    out.send(f.encode()).await.then_some((role, slot))
}

async fn refuse<T>(
    ctx: &Ctx,
    out: &Out,
    corr: u64,
    status: u16,
    msg: impl Into<String>,
) -> Option<T> {
    if status == status::PROTOCOL_ERROR || status == status::LIMIT_EXCEEDED {
        ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
    let _ = out.send(error_frame(corr, status, msg)).await;
    None
}

fn status_of_frame_error(e: &FrameError) -> u16 {
    match e {
        FrameError::TooLarge { .. } => status::LIMIT_EXCEEDED,
        _ => status::PROTOCOL_ERROR,
    }
}

/// How long a closing connection may take to write what is queued.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// Serves one accepted connection until it closes, fails, idles out or the server stops.
pub(crate) async fn serve(
    sock: TcpStream,
    ctx: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
    admitted: Admitted,
) {
    let _ = sock.set_nodelay(true);
    // Held until the connection ends: its count against its source.
    let mut admitted = admitted;
    let _source = admitted.source.take();
    // One deadline for the TLS handshake and the Hello together.
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    let Some((rd, wr)) = open_stream(sock, &ctx, &admitted, deadline).await else {
        return;
    };
    let (tx, rx) = mpsc::channel(ctx.config.max_in_flight + 2);
    let c = &ctx.config;
    let meter = Meter::new(
        ctx.stats.clone(),
        ctx.budget.clone(),
        c.max_output_bytes,
        c.max_in_flight,
    );
    let meter = Arc::new(meter);
    let out = Out {
        tx,
        meter: meter.clone(),
    };
    let mut writer = tokio::spawn(write_loop(wr, rx, ctx.clone(), meter.clone()));
    let hello_max = MAX_HELLO_FRAME_BYTES.min(ctx.config.max_frame_bytes);
    let mut reader = FrameReader::new(rd, hello_max, Some(meter.clone()));
    let mut admitted = Some(admitted);
    let end = match handshake(&mut reader, &out, &ctx, &mut admitted, deadline).await {
        Some((role, _slot)) => {
            reader.max = ctx.config.max_frame_bytes;
            reader.frame_timeout = Some(ctx.config.frame_timeout);
            read_loop(&mut reader, &out, &ctx, role, shutdown).await
        }
        None => End::Refused,
    };
    drop(admitted);
    drop(out);
    if end == End::Dropped {
        // Over budget or not reading: what was queued is freed now, not after a drain.
        writer.abort();
        let _ = (&mut writer).await;
        return;
    }
    // A peer that stopped reading must not keep this task forever.
    if timeout(WRITER_DRAIN, &mut writer).await.is_err() {
        writer.abort();
    }
    if end == End::Refused {
        reader.linger(Duration::from_millis(250)).await;
    }
}

/// Refuses a connection over a connection limit (the message names it).
pub(crate) async fn refuse_connection(sock: TcpStream, message: String) {
    let (rd, wr) = sock.into_split();
    refuse_plain(Box::new(rd), Box::new(wr), status::LIMIT_EXCEEDED, message).await;
}

/// Writes one error frame, closes the write side and lingers briefly so that the peer
/// reads it before the close.
async fn refuse_plain(rd: ReadHalf, mut wr: WriteHalf, status: u16, message: String) {
    let write = async {
        let _ = wr.write_all(&error_frame(0, status, message)).await;
        let _ = wr.shutdown().await;
    };
    let _ = timeout(Duration::from_secs(1), write).await;
    FrameReader::new(rd, 0, None)
        .linger(Duration::from_millis(250))
        .await;
}

/// The connection's two halves: the socket's own on a plaintext port; on a TLS port, after
/// the TLS handshake, which must finish by `deadline` (the Hello's too) and ends when the
/// connection is evicted from the handshake pool. A client that speaks plaintext to a TLS
/// port gets `TLS_REQUIRED` in a plaintext error frame. `None`: closed (counted).
async fn open_stream(
    sock: TcpStream,
    ctx: &Ctx,
    admitted: &Admitted,
    deadline: Instant,
) -> Option<(ReadHalf, WriteHalf)> {
    let Some(tls) = ctx.config.tls.as_ref() else {
        let (rd, wr) = sock.into_split();
        return Some((Box::new(rd), Box::new(wr)));
    };
    let stats = &ctx.stats;
    let ip = admitted.ip;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = timeout_at(deadline, sock.peek(&mut first)) => r,
        _ = admitted.pending.evicted() => return None,
    };
    match peeked {
        Ok(Ok(0)) | Ok(Err(_)) => return None,
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(_)) => {
            stats.tls_plaintext_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%ip, "plaintext on the TLS port: refused");
            let (rd, wr) = sock.into_split();
            let msg = "this port requires TLS: connect with TLS (ctl --tls --ca-file FILE)";
            refuse_plain(Box::new(rd), Box::new(wr), status::TLS_REQUIRED, msg.into()).await;
            return None;
        }
        Err(_) => {
            stats.tls_handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    let accepted = tokio::select! {
        r = timeout_at(deadline, tls.accept(sock)) => r,
        _ = admitted.pending.evicted() => return None,
    };
    match accepted {
        Ok(Ok(s)) => Some(crate::tls::split(s)),
        Ok(Err(e)) => {
            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%ip, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            stats.tls_handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%ip, "TLS handshake not done within the handshake timeout");
            None
        }
    }
}

/// Frames being answered together: their response frames when done (in the order read),
/// and the estimate they reserved.
type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = (Vec<Vec<u8>>, usize)> + Send>>;

/// Pipelined request frames read back to back, run as one engine call.
#[derive(Default)]
struct Group {
    frames: Vec<(u64, RequestBatch)>,
    /// Operations in `frames`.
    ops: usize,
    /// Output budget reserved for their answers.
    estimate: usize,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    fn add(&mut self, corr: u64, batch: RequestBatch, estimate: usize) {
        self.ops += batch.ops.len();
        self.estimate += estimate;
        self.frames.push((corr, batch));
    }

    fn take(&mut self) -> Group {
        std::mem::take(self)
    }

    /// Runs the frames. One of one operation (an unpipelined client's every request) runs
    /// in the connection task; anything larger gets a task of its own, so that its
    /// operations' wake-ups wake that task and not the whole connection.
    fn run(self, ctx: &Arc<Ctx>, role: Role) -> InFlight {
        let ctx = ctx.clone();
        let Group {
            frames,
            ops,
            estimate,
        } = self;
        if ops <= 1 {
            return Box::pin(async move { (answer_frames(&ctx, role, frames).await, estimate) });
        }
        let corrs: Vec<u64> = frames.iter().map(|(c, _)| *c).collect();
        let task = tokio::spawn(async move { answer_frames(&ctx, role, frames).await });
        Box::pin(async move {
            let answers = task.await.unwrap_or_else(|e| {
                tracing::error!("request task failed: {e}");
                let failed = |c| error_frame(c, status::INTERNAL_ERROR, "request task failed");
                corrs.into_iter().map(failed).collect()
            });
            (answers, estimate)
        })
    }
}

/// The limit of operations gathered from several pipelined frames into one engine call.
/// A single frame may carry up to `max_batch_ops`; gathering stops at this many (or at
/// the frame that would be the connection's `max_in_flight`-th).
const MAX_GROUP_OPS: usize = 256;

/// Bytes reserved in the output budget for the answer of a request in flight, until the
/// answer exists: an upper estimate, so that pipelined requests whose answers would not fit
/// are not read in the first place (answers are produced while the client may not read).
/// Reads that list (get-many, the location and channel lists, a SKU's history) may answer
/// a whole frame; a reservation or one SKU's record a few KiB; anything else little. Never
/// more than a frame: a larger answer is replaced by a `LIMIT_EXCEEDED` result.
fn answer_estimate(batch: &RequestBatch, max_frame_bytes: usize) -> usize {
    let mut sum = 64usize;
    for op in &batch.ops {
        sum = sum.saturating_add(match op.opcode {
            opcode::GET_SKUS
            | opcode::LIST_LOCATIONS
            | opcode::LIST_CHANNELS
            | opcode::SKU_HISTORY => max_frame_bytes,
            opcode::GET_SKU
            | opcode::GET_RESERVATION
            | opcode::RESERVE
            | opcode::FULFILL
            | opcode::RELEASE
            | opcode::EXTEND
            | opcode::SERVER_INFO => 4096,
            _ => 512,
        });
        if sum >= max_frame_bytes {
            return max_frame_bytes;
        }
    }
    sum
}

/// The request loop. Returns how it ended.
async fn read_loop(
    reader: &mut FrameReader,
    out: &Out,
    ctx: &Arc<Ctx>,
    role: Role,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    // The frames in flight run inside this task, not one task each: no spawn, no task
    // wake-up and no cross-task hand-off per frame (an unpipelined client paid all three
    // for every request). At `max_in_flight` nothing more is read: back-pressure.
    let max = ctx.config.max_in_flight;
    let max_group_ops = MAX_GROUP_OPS.min(ctx.config.max_batch_ops);
    let meter = &out.meter;
    let tx = &out.tx;
    let mut inflight: futures::stream::FuturesUnordered<InFlight> =
        futures::stream::FuturesUnordered::new();
    // Answers done but not yet queued for the writer: at most `max` (one per frame in
    // flight), counted in the meter. The requests keep running while a client is slow to
    // read; only reading stops.
    let mut ready: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut sub: Option<subscribe::SubShell> = None;
    // Set by a subscription that lagged, by the meter over budget, or by the writer's end.
    let kill = meter.kill.clone();
    // One idle timer for the connection. A frame only notes its arrival
    // (`last_frame`); when the timer fires it is pushed back to `last_frame` plus the idle
    // timeout if a frame came since (a fresh `timeout` around every read cost a timer
    // registration per request, a reset per frame a re-registration).
    let idle = tokio::time::sleep(ctx.config.idle_timeout);
    tokio::pin!(idle);
    let mut last_frame = tokio::time::Instant::now();
    // Built once: the task is woken for every operation's progress inside `inflight`,
    // and each wake-up turns the loop; these three are polled only after their own
    // wake-up ([`Gate`]).
    let stop = super::stopped(&mut shutdown);
    tokio::pin!(stop);
    let killed = kill.notified();
    tokio::pin!(killed);
    let (kill_gate, kill_waker) = Gate::new();
    let (stop_gate, stop_waker) = Gate::new();
    let (idle_gate, idle_waker) = Gate::new();
    let read_wake = reader.wake.clone();
    // Pipelined frames already read, gathered into one engine call (one reply buffer, one
    // durability wait for all of them) and answered frame by frame.
    let mut group = Group::default();
    let mut frames_in_flight = 0usize;
    // Frames taken since this task last yielded (see `frames_per_turn`, `BusyLane`).
    let mut turns = Turns::new(&ctx.stats);
    let end = loop {
        if turns.ended() {
            // What was taken runs now, not after the others' turns.
            if !group.is_empty() {
                frames_in_flight += group.len();
                inflight.push(group.take().run(ctx, role));
            }
            turns.next_turn(reader.has_frame()).await;
        }
        let may_grow = group.ops < max_group_ops
            && frames_in_flight + group.len() + ready.len() < max
            && reader.has_frame();
        if !group.is_empty() && !may_grow {
            frames_in_flight += group.len();
            inflight.push(group.take().run(ctx, role));
        }
        let next = if !group.is_empty() {
            // `has_frame` held: this returns the buffered frame without waiting.
            reader.next().await
        } else {
            if reader.has_frame() {
                // Waiting with frames buffered (for room in flight): still busy.
                turns.leave_lane();
            } else {
                // Nothing more to take without waiting: no longer busy.
                turns.idle();
            }
            tokio::select! {
            biased;
            _ = std::future::poll_fn(|cx| kill_gate.poll(killed.as_mut(), &kill_waker, cx)) => {
                break if meter.must_drop() { End::Dropped } else { End::Refused };
            }
            permit = tx.reserve(), if !ready.is_empty() => {
                match (permit, ready.pop_front()) {
                    (Ok(p), Some(bytes)) => p.send(bytes),
                    _ => break End::Dropped, // the writer is gone: the peer closed
                }
                continue;
            }
            Some((answers, estimate)) = inflight.next(), if !inflight.is_empty() => {
                frames_in_flight -= answers.len();
                meter.answered(estimate, answers.iter().map(Vec::len).sum());
                ready.extend(answers);
                if meter.over_budget() {
                    break End::Dropped;
                }
                // Queue what the writer has room for now (usually everything): no turn of
                // the loop, and no poll of every branch, for each answer.
                while let Some(bytes) = ready.pop_front() {
                    match tx.try_reserve() {
                        Ok(p) => p.send(bytes),
                        Err(_) => {
                            // Full, or the writer is gone (the branch above finds out).
                            ready.push_front(bytes);
                            break;
                        }
                    }
                }
                continue;
            }
            _ = std::future::poll_fn(|cx| stop_gate.poll(stop.as_mut(), &stop_waker, cx)) => break End::Clean,
            r = read_when_woken(reader, &read_wake), if frames_in_flight + ready.len() < max => r,
            _ = std::future::poll_fn(|cx| idle_gate.poll(idle.as_mut(), &idle_waker, cx)) => {
                let now = tokio::time::Instant::now();
                let quiet_until = last_frame + ctx.config.idle_timeout;
                // A frame since the timer was set, answers pending, or a subscriber only
                // listening: not idle.
                if quiet_until > now || !inflight.is_empty() || !ready.is_empty() || sub.as_ref().is_some_and(|s| s.active()) || meter.queued() > 0 {
                    let at = if quiet_until > now { quiet_until } else { now + ctx.config.idle_timeout };
                    idle.as_mut().reset(at);
                    // Polled again, so the timer is registered with its new deadline.
                    idle_gate.open();
                    continue;
                }
                ctx.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                let _ = out
                    .send(error_frame(0, status::IDLE_TIMEOUT, "idle timeout"))
                    .await;
                break End::Refused;
            }
            }
        };
        if !matches!(next, Ok(Some(_))) {
            // The loop ends (after an error frame, perhaps queued behind unread answers).
            turns.idle();
        }
        let frame = match next {
            Ok(None) => break End::Clean,
            Err(ReadError::Io) => break End::Clean,
            Err(ReadError::Slow) => {
                ctx.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "request frame not received whole within {} ms of its start (frame_timeout_ms)",
                    ctx.config.frame_timeout.as_millis()
                );
                refuse::<()>(ctx, out, 0, status::IDLE_TIMEOUT, msg).await;
                break End::Refused;
            }
            Err(ReadError::NoRoom { frame_bytes }) => {
                ctx.stats.memory_closed.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "a frame of {frame_bytes} bytes found no room under the server's connection \
                     memory budget (max_connections_memory_bytes) within {} ms \
                     (frame_timeout_ms); retry later",
                    ctx.config.frame_timeout.as_millis()
                );
                tracing::info!(
                    frame_bytes,
                    "partial frame found no room in the connection memory budget: closed"
                );
                let _ = out.send(error_frame(0, status::LIMIT_EXCEEDED, msg)).await;
                break End::Refused;
            }
            Err(ReadError::Frame(e)) => {
                refuse::<()>(ctx, out, 0, status_of_frame_error(&e), e.to_string()).await;
                break End::Refused;
            }
            Ok(Some(f)) => f,
        };
        turns.took_frame();
        last_frame = tokio::time::Instant::now();
        if frame.kind != FrameKind::Request {
            turns.idle();
            let msg = format!("unexpected frame kind {:?} after the handshake", frame.kind);
            refuse::<()>(ctx, out, frame.correlation, status::PROTOCOL_ERROR, msg).await;
            break End::Refused;
        }
        let batch: RequestBatch = match protocol::decode_request_batch(&frame.payload) {
            Ok(b) => b,
            Err(e) => {
                turns.idle();
                let msg = format!("request payload: {e}");
                refuse::<()>(ctx, out, frame.correlation, status::PROTOCOL_ERROR, msg).await;
                break End::Refused;
            }
        };
        ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
        let corr = frame.correlation;
        let estimate = answer_estimate(&batch, ctx.config.max_frame_bytes)
            + frame.payload.len()
            + IN_FLIGHT_OVERHEAD_BYTES;
        if meter.server_over_budget() && (meter.holds_any() || estimate > SMALL_REQUEST_BYTES) {
            // Memory first: a retriable answer instead of running what may grow it.
            ctx.stats.memory_busy.fetch_add(1, Ordering::Relaxed);
            let msg = "the server's connection memory is over max_connections_memory_bytes; retry";
            let results = batch.ops.iter().map(|_| failed(busy(), msg)).collect();
            let bytes = response_bytes(ctx, corr, results);
            meter.add_out(bytes.len());
            ready.push_back(bytes);
            continue;
        }
        if let [op] = batch.ops.as_slice() {
            if matches!(op.opcode, opcode::SUBSCRIBE | opcode::UNSUBSCRIBE) && role.may(op.opcode) {
                // The subscription shell answers it (behind its pushes so far); queueing
                // the command may wait.
                turns.leave_lane();
                match subscribe::command(ctx, corr, op) {
                    Ok(cmd) => {
                        let shell = sub.get_or_insert_with(|| subscribe::SubShell::start(ctx, out));
                        // False: the shell ended (lagged); the kill closes the connection.
                        let _ = shell.send(cmd).await;
                    }
                    Err(result) => {
                        let _ = out.send(response_bytes(ctx, corr, vec![result])).await;
                    }
                }
                continue;
            }
        }
        meter.reserve(estimate);
        group.add(corr, batch, estimate);
    };
    // Uncounted, and out of the lane, before waiting for what is in flight.
    drop(turns);
    if !group.is_empty() {
        // Read before the loop ended: they run and are answered like those in flight.
        inflight.push(group.take().run(ctx, role));
    }
    if let Some(s) = sub.take() {
        s.end().await;
    }
    if end == End::Dropped {
        // Nothing more is written: the answers queued and in flight are dropped here (the
        // engine finishes what it was sent; only the waiting for it stops).
        return end;
    }
    // In-flight requests always finish (the engine's work does not depend on the client);
    // their answers are queued for the writer for at most `WRITER_DRAIN` (a client that
    // stopped reading cannot hold the connection, or a shutdown, forever).
    while let Some((answers, estimate)) = inflight.next().await {
        meter.answered(estimate, answers.iter().map(Vec::len).sum());
        ready.extend(answers);
        if meter.over_budget() {
            return End::Dropped;
        }
    }
    let _ = timeout(WRITER_DRAIN, async {
        for bytes in ready {
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
    })
    .await;
    end
}

/// Runs pipelined frames as one engine call and encodes each one's response frame, in the
/// order given. A frame over `max_batch_ops` is refused alone.
async fn answer_frames(ctx: &Ctx, role: Role, frames: Vec<(u64, RequestBatch)>) -> Vec<Vec<u8>> {
    if let [(corr, batch)] = frames.as_slice() {
        return vec![answer(ctx, role, *corr, batch).await];
    }
    ctx.stats
        .frames_grouped
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    let max_ops = ctx.config.max_batch_ops;
    let mut ops = Vec::new();
    // Per frame: its correlation and either its number of operations or its refusal.
    let mut parts = Vec::with_capacity(frames.len());
    for (corr, batch) in frames {
        if batch.ops.len() > max_ops {
            parts.push((corr, Err(too_many(batch.ops.len(), max_ops))));
        } else {
            parts.push((corr, Ok(batch.ops.len())));
            ops.extend(batch.ops);
        }
    }
    ctx.stats
        .operations
        .fetch_add(ops.len() as u64, Ordering::Relaxed);
    let mut results = run_batch(ctx, role, &ops).await.into_iter();
    parts
        .into_iter()
        .map(|(corr, part)| {
            let results = match part {
                Ok(n) => results.by_ref().take(n).collect(),
                Err(refusal) => vec![refusal],
            };
            response_bytes(ctx, corr, results)
        })
        .collect()
}

fn too_many(n: usize, max_ops: usize) -> OpResult {
    failed(
        status::TOO_MANY_OPERATIONS,
        format!("{n} operations; at most {max_ops} per request"),
    )
}

/// Runs a batch and encodes its response frame (never over the frame limit).
async fn answer(ctx: &Ctx, role: Role, corr: u64, batch: &RequestBatch) -> Vec<u8> {
    let max_ops = ctx.config.max_batch_ops;
    let results = if batch.ops.len() > max_ops {
        vec![too_many(batch.ops.len(), max_ops)]
    } else {
        ctx.stats
            .operations
            .fetch_add(batch.ops.len() as u64, Ordering::Relaxed);
        run_batch(ctx, role, &batch.ops).await
    };
    response_bytes(ctx, corr, results)
}

/// Encodes a response frame (never over the frame limit).
fn response_bytes(ctx: &Ctx, corr: u64, results: Vec<OpResult>) -> Vec<u8> {
    let n = results.len();
    // The length value the frame will carry (kind + correlation + payload).
    let encoded_len = protocol::frame::HEADER_BYTES + protocol::response_payload_len(&results);
    if encoded_len <= ctx.config.max_frame_bytes {
        return protocol::encode_response_frame(corr, &results);
    }
    let frame = protocol::frame_of(FrameKind::Response, corr, &ResponseBatch { results });
    match frame {
        Ok(f) if f.encoded_len() <= ctx.config.max_frame_bytes => f.encode(),
        Ok(f) => {
            let msg = format!(
                "response of {} bytes for {n} operations is over the frame limit; split the batch",
                f.encoded_len()
            );
            let r = ResponseBatch {
                results: vec![failed(status::LIMIT_EXCEEDED, msg)],
            };
            match protocol::frame_of(FrameKind::Response, corr, &r) {
                Ok(f) => f.encode(),
                Err(_) => error_frame(corr, status::INTERNAL_ERROR, "cannot encode"),
            }
        }
        Err(e) => error_frame(corr, status::INTERNAL_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::{token_eq, Budget, Meter, ServerStats, CONNECTION_OVERHEAD_BYTES};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    const O: u64 = CONNECTION_OVERHEAD_BYTES as u64;

    fn meter(stats: &Arc<ServerStats>, budget: &Arc<Budget>, max_out: usize) -> Meter {
        Meter::new(stats.clone(), budget.clone(), max_out, 8)
    }

    #[test]
    fn a_connection_over_its_budget_is_counted_once_and_its_bytes_settled_on_drop() {
        let stats = Arc::new(ServerStats::default());
        let budget = Arc::new(Budget::new(stats.clone(), 1500 + 2 * O as usize, 256));
        let total = |s: &ServerStats| s.connection_buffered_bytes.load(Ordering::Relaxed);
        let m = meter(&stats, &budget, 1000);
        assert_eq!(total(&stats), O, "its fixed cost");
        m.reading_forced(300);
        m.add_out(600);
        assert!(!m.over_budget() && !m.must_drop());
        assert!(
            !m.may_take_frame(),
            "600 queued is over half of 1000: not read"
        );
        assert_eq!(total(&stats), O + 900);
        let other = meter(&stats, &budget, 1000);
        other.add_out(600);
        other.add_out(100);
        assert!(m.server_over_budget(), "1600 held of 1500");
        let idle = meter(&stats, &budget, 1000);
        assert!(
            idle.may_take_frame(),
            "over the server's budget, a connection holding nothing may still take a frame"
        );
        drop(idle);
        other.sub_out(600);
        m.add_out(200);
        assert!(m.over_budget() && m.over_budget() && m.must_drop());
        assert_eq!(stats.slow_readers_closed.load(Ordering::Relaxed), 1, "once");
        drop(m);
        assert_eq!(total(&stats), O + 100, "what it held is settled");
        other.written(100, 1);
        drop(other);
        assert_eq!(total(&stats), 0);
    }

    /// A large frame that waited for room in the budget gets its whole `frame_timeout`
    /// from the moment it got the room (tokio's paused clock: no real time, no race). On
    /// the old code its deadline ran from its first bytes and it ended `Slow`.
    #[tokio::test(start_paused = true)]
    async fn a_frame_granted_room_after_waiting_gets_its_frame_timeout_from_the_grant() {
        use super::{FrameReader, ReadError};
        use crate::protocol::{Frame, FrameKind};
        use std::time::Duration;
        use tokio::io::AsyncWriteExt;

        const T: Duration = Duration::from_secs(10);
        let stats = Arc::new(ServerStats::default());
        // Room under the frame limit for one 64 KiB frame, not two.
        let budget = Arc::new(Budget::new(stats.clone(), 160 << 10, 64 << 10));
        let holder = meter(&stats, &budget, 1 << 20);
        assert!(budget.acquire(70 << 10).await, "the holder's frame");
        let m = Arc::new(meter(&stats, &budget, 1 << 20));
        let (client, server) = tokio::io::duplex(256 << 10);
        let mut r = FrameReader::new(Box::new(server), 64 << 10, Some(m.clone()));
        r.frame_timeout = Some(T);
        let frame = Frame {
            kind: FrameKind::Request,
            correlation: 9,
            payload: vec![7u8; 60 << 10],
        }
        .encode();
        let (mut client, half) = (client, frame.len() / 2);
        client.write_all(&frame[..half]).await.unwrap();
        let reading = tokio::spawn(async move { (r.next().await, r) });
        // Waits for room 9 s (its first bytes arrived at 0 s), then gets it.
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!reading.is_finished(), "waiting for room");
        budget.release(70 << 10);
        drop(holder);
        // Past the deadline counted from its first bytes (10 s), within one from the grant.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !reading.is_finished(),
            "still within its frame_timeout from the grant"
        );
        client.write_all(&frame[half..]).await.unwrap();
        let (got, _r) = reading.await.unwrap();
        match got {
            Ok(Some(f)) => assert_eq!((f.correlation, f.payload.len()), (9, 60 << 10)),
            Ok(None) => panic!("end of stream"),
            Err(ReadError::Slow) => panic!("closed as slow: the wait for room was counted"),
            Err(_) => panic!("read failed"),
        }
    }

    /// A large frame that finds no room within its `frame_timeout` ends with its own reason.
    #[tokio::test(start_paused = true)]
    async fn a_frame_that_never_gets_room_ends_no_room_at_its_frame_timeout() {
        use super::{FrameReader, ReadError};
        use std::time::Duration;
        use tokio::io::AsyncWriteExt;

        let stats = Arc::new(ServerStats::default());
        let budget = Arc::new(Budget::new(stats.clone(), 160 << 10, 64 << 10));
        assert!(budget.acquire(70 << 10).await, "held for good");
        let m = Arc::new(meter(&stats, &budget, 1 << 20));
        let (mut client, server) = tokio::io::duplex(256 << 10);
        let mut r = FrameReader::new(Box::new(server), 64 << 10, Some(m.clone()));
        r.frame_timeout = Some(Duration::from_secs(10));
        let mut start = ((60u32 << 10) + 9).to_le_bytes().to_vec();
        start.extend_from_slice(&[0u8; 100]);
        client.write_all(&start).await.unwrap();
        match r.next().await {
            Err(ReadError::NoRoom { frame_bytes }) => assert_eq!(frame_bytes, (60 << 10) + 13),
            _ => panic!("expected no room"),
        }
    }

    #[test]
    fn in_flight_estimates_and_held_frames_hold_back_reading_until_answered() {
        let stats = Arc::new(ServerStats::default());
        let budget = Arc::new(Budget::new(stats.clone(), 1 << 20, 256));
        let m = meter(&stats, &budget, 1000);
        assert!(m.may_take_frame(), "nothing queued or in flight");
        m.reserve(600);
        assert!(!m.may_take_frame());
        let total = || stats.connection_buffered_bytes.load(Ordering::Relaxed);
        assert_eq!(total(), O + 600, "reservations count server-wide");
        m.answered(600, 100);
        assert!(m.may_take_frame());
        assert_eq!((m.queued(), total()), (100, O + 100));
        // Eight frames held (the `max_in_flight` given): not read, however small they are.
        for _ in 0..7 {
            m.reserve(10);
        }
        assert!(!m.may_take_frame(), "1 answer unwritten + 7 in flight");
        m.answered(70, 70);
        m.written(170, 8);
        assert!(m.may_take_frame());
        assert_eq!(total(), O);
    }

    #[test]
    fn busy_connections_share_a_round_of_frames_and_each_takes_at_least_one() {
        use super::{frames_per_turn, FRAMES_PER_ROUND, FRAMES_PER_TURN};
        assert_eq!(frames_per_turn(0), FRAMES_PER_TURN);
        assert_eq!(frames_per_turn(1), FRAMES_PER_TURN);
        assert_eq!(frames_per_turn(4), FRAMES_PER_ROUND / 4);
        assert_eq!(frames_per_turn(FRAMES_PER_ROUND as u64), 1);
        assert_eq!(frames_per_turn(u64::MAX), 1);
        let turns: Vec<usize> = (0..200).map(frames_per_turn).collect();
        assert!(
            turns.windows(2).all(|w| w[0] >= w[1]),
            "more busy, never more frames"
        );
    }

    #[test]
    fn a_busy_connection_is_counted_once_and_uncounted_when_it_ends() {
        use super::Turns;
        let stats = ServerStats::default();
        let mut a = Turns::new(&stats);
        a.set_busy(true);
        a.set_busy(true);
        let mut b = Turns::new(&stats);
        b.set_busy(true);
        assert_eq!(stats.busy_connections.load(Ordering::Relaxed), 2);
        for _ in 0..super::FRAMES_PER_TURN {
            assert!(!b.ended());
            b.took_frame();
        }
        assert!(b.ended());
        b.idle();
        assert!(!b.ended(), "waiting for the socket ends the turn");
        assert_eq!(stats.busy_connections.load(Ordering::Relaxed), 1);
        b.set_busy(true);
        drop(a);
        drop(b);
        assert_eq!(stats.busy_connections.load(Ordering::Relaxed), 0);
    }

    /// A place in the lane is taken only while more connections are busy than it has places,
    /// and given up before anything that may wait (and when the connection ends).
    #[tokio::test]
    async fn a_place_in_the_lane_is_given_up_before_waiting_and_at_the_end() {
        use super::{Turns, BUSY_LANE_PERMITS};
        let stats = ServerStats::default();
        let free = || stats.busy_lane.0.available_permits();
        let mut a = Turns::new(&stats);
        a.next_turn(true).await;
        assert!(a.place.is_none(), "one busy connection: no lane");
        let mut others: Vec<Turns<'_>> =
            (0..BUSY_LANE_PERMITS).map(|_| Turns::new(&stats)).collect();
        for o in &mut others {
            o.set_busy(true);
        }
        a.next_turn(true).await;
        assert!(a.place.is_some(), "more busy than places: a place");
        assert_eq!(free(), BUSY_LANE_PERMITS - 1);
        a.leave_lane();
        assert_eq!(free(), BUSY_LANE_PERMITS);
        assert_eq!(
            stats.busy_connections.load(Ordering::Relaxed),
            BUSY_LANE_PERMITS as u64 + 1,
            "still busy"
        );
        a.next_turn(true).await;
        assert_eq!(free(), BUSY_LANE_PERMITS - 1);
        drop(a);
        assert_eq!(free(), BUSY_LANE_PERMITS);
        drop(others);
        assert_eq!(stats.busy_connections.load(Ordering::Relaxed), 0);
    }

    /// Many connections busy at once: at most `BUSY_LANE_PERMITS` take turns at a time, each
    /// at most `LANE_FRAMES_PER_TURN` frames, and every one of them gets its turns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_connections_take_turns_a_lane_at_a_time_and_all_progress() {
        use super::{Turns, BUSY_LANE_PERMITS, LANE_FRAMES_PER_TURN};
        use std::sync::atomic::AtomicUsize;
        const CONNS: usize = 64;
        const TURNS: usize = 200;
        let stats = Arc::new(ServerStats::default());
        let in_lane = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CONNS {
            let (stats, in_lane, most) = (stats.clone(), in_lane.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let mut turns = Turns::new(&stats);
                let mut frames = 0usize;
                for _ in 0..TURNS {
                    let held = turns.place.is_some();
                    if held {
                        let now = in_lane.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                    }
                    let mut this_turn = 0;
                    while !turns.ended() {
                        turns.took_frame();
                        this_turn += 1;
                        frames += 1;
                    }
                    if held {
                        assert_eq!(this_turn, LANE_FRAMES_PER_TURN);
                        // Still in the lane while the others run.
                        tokio::task::yield_now().await;
                        in_lane.fetch_sub(1, Ordering::SeqCst);
                    }
                    turns.next_turn(true).await;
                }
                turns.idle();
                frames
            }));
        }
        let all = async {
            let mut total = 0;
            for t in tasks {
                let frames = t.await.expect("a connection task panicked");
                assert!(frames >= TURNS, "every turn takes a frame");
                total += frames;
            }
            total
        };
        let total = tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("busy connections wedged in the lane");
        assert!(total >= CONNS * TURNS);
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=BUSY_LANE_PERMITS).contains(&most),
            "{most} connections in the lane at once"
        );
        assert_eq!(stats.busy_connections.load(Ordering::Relaxed), 0);
        assert_eq!(stats.busy_lane.0.available_permits(), BUSY_LANE_PERMITS);
    }

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(token_eq("secret-token", "secret-token"));
        assert!(!token_eq("secret-token", "secret-tokeN"));
        assert!(!token_eq("secret-token", "secret-token-and-more"));
        assert!(!token_eq("secret-token", "secret"));
        assert!(!token_eq("", "x"));
        assert!(token_eq("", ""));
    }
}
