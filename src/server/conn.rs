//! One client connection: handshake, then a read loop that hands each request frame to its
//! own task (so responses may leave out of order) and a writer task that owns the write
//! half. Back-pressure: a semaphore of `max_in_flight` permits is taken *before* reading the
//! next frame, so a client that pipelines faster than the engine answers simply stops being
//! read. A protocol violation gets one error frame, then a lingering close (the socket is
//! drained briefly so the error frame is not lost to a TCP reset).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::feed::subscription::{self, Ended};
use crate::protocol::{self, failed, opcode, status, ErrorFrame, Frame, FrameError, FrameKind};
use crate::protocol::{Hello, RequestBatch, ResponseBatch, Welcome, MAGIC, PROTOCOL_VERSION};
use crate::protocol::{Op, OpResult, Role};

use super::dispatch::{ok, run_batch, Ctx};

/// Why reading a frame failed.
enum ReadError {
    Frame(FrameError),
    /// The peer closed in the middle of a frame, or the socket failed.
    Io,
}

/// Reads frames from the read half, never buffering more than one frame (≤ the limit).
pub(crate) struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    fn new(rd: OwnedReadHalf, max: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(4096),
            max,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream. Cancel-safe: bytes read so far
    /// stay in the buffer.
    async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some((f, used)) = Frame::parse(&self.buf, self.max).map_err(ReadError::Frame)? {
                self.buf.advance(used);
                return Ok(Some(f));
            }
            // Reserve at most the announced frame (already checked against the limit).
            let want = match Frame::peek_len(&self.buf, self.max).map_err(ReadError::Frame)? {
                Some(len) => (4 + len).saturating_sub(self.buf.len()),
                None => 4096,
            };
            self.buf.reserve(want.min(64 * 1024));
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|_| ReadError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io)
                };
            }
        }
    }

    /// Reads and discards for up to `d` (at most 1 MiB) so that closing does not reset
    /// the connection before the peer has read our last frame.
    async fn linger(mut self, d: Duration) {
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

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>, ctx: Arc<Ctx>) {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        // Coalesce whatever else is ready into one write.
        while out.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        match timeout(ctx.config.write_timeout, wr.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
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
    }
    let _ = wr.shutdown().await;
}

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
    if ctx.config.tokens.is_empty() {
        return Some(Role::Admin);
    }
    let mut found = None;
    for (t, r) in &ctx.config.tokens {
        if token_eq(t, token) {
            found = Some(*r);
        }
    }
    found
}

/// Reads and checks the `Hello`; answers `Welcome` or an error frame. `None`: close.
async fn handshake(
    reader: &mut FrameReader,
    tx: &mpsc::Sender<Vec<u8>>,
    ctx: &Ctx,
) -> Option<Role> {
    let c = &ctx.config;
    let frame = match timeout(c.handshake_timeout, reader.next()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) | Ok(Err(ReadError::Io)) => return None,
        Ok(Err(ReadError::Frame(e))) => {
            return refuse(ctx, tx, 0, status_of_frame_error(&e), e.to_string()).await
        }
        Err(_) => {
            let msg = "no Hello within the handshake timeout";
            return refuse(ctx, tx, 0, status::IDLE_TIMEOUT, msg).await;
        }
    };
    let corr = frame.correlation;
    if frame.kind != FrameKind::Hello {
        let msg = "the first frame must be Hello";
        return refuse(ctx, tx, corr, status::PROTOCOL_ERROR, msg).await;
    }
    if frame.payload.get(..4) != Some(&MAGIC[..]) {
        return refuse(ctx, tx, corr, status::PROTOCOL_ERROR, "bad magic").await;
    }
    let hello: Hello = match protocol::decode_payload(&frame.payload) {
        Ok(h) => h,
        Err(e) => return refuse(ctx, tx, corr, status::PROTOCOL_ERROR, e.to_string()).await,
    };
    if hello.client_name.len() > MAX_CLIENT_NAME_BYTES || hello.token.len() > MAX_TOKEN_BYTES {
        let msg = format!(
            "client name over {MAX_CLIENT_NAME_BYTES} bytes or token over {MAX_TOKEN_BYTES} bytes"
        );
        return refuse(ctx, tx, corr, status::PROTOCOL_ERROR, msg).await;
    }
    if hello.version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} not supported; this server speaks 1",
            hello.version
        );
        return refuse(ctx, tx, corr, status::UNSUPPORTED_VERSION, msg).await;
    }
    let Some(role) = role_of(ctx, &hello.token) else {
        ctx.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(client = %hello.client_name, "connection refused: bad token");
        return refuse(
            ctx,
            tx,
            corr,
            status::UNAUTHORIZED,
            "missing or unknown token",
        )
        .await;
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
    tx.send(f.encode()).await.ok()?;
    Some(role)
}

async fn refuse(
    ctx: &Ctx,
    tx: &mpsc::Sender<Vec<u8>>,
    corr: u64,
    status: u16,
    msg: impl Into<String>,
) -> Option<Role> {
    if status == status::PROTOCOL_ERROR || status == status::LIMIT_EXCEEDED {
        ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
    let _ = tx.send(error_frame(corr, status, msg)).await;
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

/// The subscription of a connection (at most one).
/// A subscription's task and its two signals. They are separate on purpose: with one
/// `watch` for "hold / go / stop", a SUBSCRIBE answered and ended (UNSUBSCRIBE, or the
/// close of the connection) before the task was first polled left it seeing only the last
/// value, "hold", forever, while `end` waited for it: the connection, its slot and its
/// descriptor were stuck and shutdown never finished.
struct ActiveSub {
    /// Fired once the SUBSCRIBE answer is queued: the stream may start. Dropped unfired
    /// when the subscription ends first.
    release: Option<tokio::sync::oneshot::Sender<()>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ActiveSub {
    /// Lets the stream start (after the SUBSCRIBE answer is queued).
    fn start(&mut self) {
        if let Some(r) = self.release.take() {
            let _ = r.send(());
        }
    }

    async fn end(mut self) {
        let _ = self.stop.send(true);
        drop(self.release.take());
        let _ = self.task.await;
    }
}

/// Serves one accepted connection until it closes, fails, idles out or the server stops.
pub(crate) async fn serve(sock: TcpStream, ctx: Arc<Ctx>, shutdown: watch::Receiver<bool>) {
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel(ctx.config.max_in_flight + 2);
    let writer = tokio::spawn(write_loop(wr, rx, ctx.clone()));
    let mut reader = FrameReader::new(rd, ctx.config.max_frame_bytes);
    let clean = match handshake(&mut reader, &tx, &ctx).await {
        Some(role) => read_loop(&mut reader, &tx, &ctx, role, shutdown).await,
        None => false,
    };
    drop(tx);
    // A peer that stopped reading must not keep this task forever.
    let mut writer = writer;
    if timeout(WRITER_DRAIN, &mut writer).await.is_err() {
        writer.abort();
    }
    if !clean {
        reader.linger(Duration::from_millis(250)).await;
    }
}

/// Refuses a connection over the connection limit.
pub(crate) async fn refuse_connection(sock: TcpStream, message: String) {
    let (rd, mut wr) = sock.into_split();
    let _ = wr
        .write_all(&error_frame(0, status::LIMIT_EXCEEDED, message))
        .await;
    let _ = wr.shutdown().await;
    FrameReader::new(rd, 0)
        .linger(Duration::from_millis(250))
        .await;
}

/// A frame being answered: its response bytes when done.
type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>;

/// The request loop. Returns true when it ended cleanly (EOF, shutdown), false after an
/// error frame was sent.
async fn read_loop(
    reader: &mut FrameReader,
    tx: &mpsc::Sender<Vec<u8>>,
    ctx: &Arc<Ctx>,
    role: Role,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    // The frames in flight run inside this task, not one task each: no spawn, no task
    // wake-up and no cross-task hand-off per frame (an unpipelined client paid all three
    // for every request). At `max_in_flight` nothing more is read: back-pressure.
    let max = ctx.config.max_in_flight;
    let mut inflight: futures::stream::FuturesUnordered<InFlight> =
        futures::stream::FuturesUnordered::new();
    // Answers done but not yet queued for the writer: at most `max` (one per frame in
    // flight). The requests keep running while a client is slow to read; only reading
    // stops.
    let mut ready: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut sub: Option<ActiveSub> = None;
    // Set by a subscription that lagged: the connection is closed.
    let kill = Arc::new(Notify::new());
    // One idle timer for the connection, pushed back when a frame arrives (a fresh
    // `timeout` around every read cost a timer registration per request).
    let idle = tokio::time::sleep(ctx.config.idle_timeout);
    tokio::pin!(idle);
    // Built once: the task is woken for every operation's progress inside `inflight`,
    // and each wake-up polls every branch.
    let stop = super::stopped(&mut shutdown);
    tokio::pin!(stop);
    let killed = kill.notified();
    tokio::pin!(killed);
    let clean = loop {
        let next = tokio::select! {
            biased;
            permit = tx.reserve(), if !ready.is_empty() => {
                match (permit, ready.pop_front()) {
                    (Ok(p), Some(bytes)) => p.send(bytes),
                    _ => break true, // the writer is gone: the peer closed
                }
                continue;
            }
            Some(bytes) = inflight.next(), if !inflight.is_empty() => {
                ready.push_back(bytes);
                continue;
            }
            _ = &mut stop => break true,
            _ = &mut killed => break false,
            r = reader.next(), if inflight.len() + ready.len() < max => r,
            _ = &mut idle => {
                // Answers pending, or a subscriber only listening: not idle.
                if !inflight.is_empty() || !ready.is_empty() || sub.is_some() {
                    idle.as_mut().reset(tokio::time::Instant::now() + ctx.config.idle_timeout);
                    continue;
                }
                ctx.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                let _ = tx
                    .send(error_frame(0, status::IDLE_TIMEOUT, "idle timeout"))
                    .await;
                break false;
            }
        };
        let frame = match next {
            Ok(None) => break true,
            Err(ReadError::Io) => break true,
            Err(ReadError::Frame(e)) => {
                refuse(ctx, tx, 0, status_of_frame_error(&e), e.to_string()).await;
                break false;
            }
            Ok(Some(f)) => f,
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + ctx.config.idle_timeout);
        if frame.kind != FrameKind::Request {
            let msg = format!("unexpected frame kind {:?} after the handshake", frame.kind);
            refuse(ctx, tx, frame.correlation, status::PROTOCOL_ERROR, msg).await;
            break false;
        }
        let batch: RequestBatch = match protocol::decode_payload(&frame.payload) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("request payload: {e}");
                refuse(ctx, tx, frame.correlation, status::PROTOCOL_ERROR, msg).await;
                break false;
            }
        };
        ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let [op] = batch.ops.as_slice() {
            if matches!(op.opcode, opcode::SUBSCRIBE | opcode::UNSUBSCRIBE) && role.may(op.opcode) {
                let corr = frame.correlation;
                let result = subscription_op(ctx, tx, corr, op, &mut sub, &kill).await;
                let _ = tx.send(response_bytes(ctx, corr, vec![result])).await;
                if let Some(s) = sub.as_mut() {
                    // The answer is queued: the stream may start.
                    s.start();
                }
                continue;
            }
        }
        let ctx = ctx.clone();
        let corr = frame.correlation;
        let fut: InFlight = if batch.ops.len() == 1 {
            // One operation (an unpipelined client's every request): run it right here.
            Box::pin(async move { answer(&ctx, role, corr, &batch).await })
        } else {
            // A batch gets its own task: its operations' many wake-ups then wake that
            // task, not this one (every wake-up here polls the whole connection).
            let task = tokio::spawn(async move { answer(&ctx, role, corr, &batch).await });
            Box::pin(async move {
                task.await.unwrap_or_else(|e| {
                    tracing::error!("request task failed: {e}");
                    error_frame(corr, status::INTERNAL_ERROR, "request task failed")
                })
            })
        };
        inflight.push(fut);
    };
    if let Some(s) = sub.take() {
        s.end().await;
    }
    // In-flight requests always finish (the engine's work does not depend on the client);
    // their answers are queued for the writer for at most `WRITER_DRAIN` (a client that
    // stopped reading cannot hold the connection, or a shutdown, forever).
    while let Some(bytes) = inflight.next().await {
        ready.push_back(bytes);
    }
    let _ = timeout(WRITER_DRAIN, async {
        for bytes in ready {
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
    })
    .await;
    clean
}

/// Runs a batch and encodes its response frame (never over the frame limit).
async fn answer(ctx: &Ctx, role: Role, corr: u64, batch: &RequestBatch) -> Vec<u8> {
    let max_ops = ctx.config.max_batch_ops;
    let results = if batch.ops.len() > max_ops {
        let msg = format!(
            "{} operations; at most {max_ops} per request",
            batch.ops.len()
        );
        vec![failed(status::TOO_MANY_OPERATIONS, msg)]
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

/// Runs `SUBSCRIBE` or `UNSUBSCRIBE` for this connection. The stream task is created held
/// (its stop flag starts at "hold") and released once the answer is queued, so the answer
/// always precedes the first `Push` frame.
async fn subscription_op(
    ctx: &Arc<Ctx>,
    tx: &mpsc::Sender<Vec<u8>>,
    corr: u64,
    raw: &protocol::RawOp,
    sub: &mut Option<ActiveSub>,
    kill: &Arc<Notify>,
) -> OpResult {
    let body = match Op::from_raw(raw) {
        Ok(Some(Op::Subscribe(b))) => b,
        Ok(Some(Op::Unsubscribe)) => {
            return match sub.take() {
                Some(s) => {
                    s.end().await;
                    ok(&protocol::Empty {})
                }
                None => failed(
                    status::INVALID_REQUEST,
                    "no subscription on this connection",
                ),
            };
        }
        Ok(_) => return failed(status::INTERNAL_ERROR, "not a subscription operation"),
        Err(e) => {
            return failed(
                status::PROTOCOL_ERROR,
                format!("opcode {:#06x}: {e}", raw.opcode),
            )
        }
    };
    if sub.as_ref().is_some_and(|s| !s.task.is_finished()) {
        return failed(
            status::INVALID_REQUEST,
            "this connection already has a subscription; UNSUBSCRIBE first or open another connection",
        );
    }
    let cfg = ctx.config.subscription.clone();
    let plan = match subscription::plan(ctx.engine.as_ref(), &cfg, &body) {
        Ok(p) => p,
        Err(subscription::Invalid(m)) => return failed(status::INVALID_REQUEST, m),
    };
    let answer = ok(&plan.answer);
    if answer.status != status::OK {
        return answer;
    }
    // The stream starts once the answer is queued (`release`, see `read_loop`) and stops
    // when `stop` turns true.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (engine, tx, kill) = (ctx.engine.clone(), tx.clone(), kill.clone());
    let task = tokio::spawn(async move {
        // Ended before it started: the release was dropped unfired, or stop already set.
        if release_rx.await.is_err() || *stop_rx.borrow() {
            return;
        }
        let ended = subscription::run(engine, cfg, plan, corr, tx, stop_rx).await;
        match ended {
            Ended::Lagged { resume_from_seq } => {
                tracing::info!(resume_from_seq, "subscriber lagged: disconnecting");
                kill.notify_one();
            }
            Ended::EngineGone(e) => {
                tracing::warn!(error = %e, "subscription ended");
                kill.notify_one();
            }
            Ended::Stopped => {}
        }
    });
    *sub = Some(ActiveSub {
        release: Some(release_tx),
        stop: stop_tx,
        task,
    });
    answer
}

#[cfg(test)]
mod tests {
    use super::token_eq;

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
