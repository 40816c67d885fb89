//! One client connection: a writer task that owns the write half, and a reader task that
//! routes each response to the caller waiting on its correlation id. When the connection
//! ends every waiting caller gets [`ClientError::Disconnected`] (or the server's error
//! frame), so nobody waits forever.
//!
//! Callers encode their request frame into the connection's outbox and wake the writer;
//! they never write the socket themselves, so a caller that is cancelled can never leave
//! half a frame on the wire. The writer takes everything queued at once and writes it with
//! one call: requests sent together by many tasks sharing the connection (a checkout
//! service's concurrent carts) leave in one segment and reach the server as one read. When
//! other requests of the connection are still waiting for answers, the writer first lets
//! the tasks that are runnable now add theirs (answers arrive together and wake their
//! callers together); a connection with one request at a time is written at once. The
//! outbox holds at most [`MAX_QUEUED_BYTES`] (or one frame, if larger); a caller beyond it
//! waits for the writer to drain it.
//!
//! Request timeouts are kept by a third task, the sweeper, rather than by a timer per
//! request: each waiting caller is stored with its deadline, and the sweeper sleeps until
//! the earliest one, answers the callers past theirs with [`ClientError::Timeout`], and
//! sleeps again (a caller with an earlier deadline than the one it sleeps for wakes it).
//! A connection in steady use wakes it about once per request timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::future::Either;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout, Instant};

use crate::protocol::frame::{FRAME_OVERHEAD_BYTES, HEADER_BYTES};
use crate::protocol::{self, ErrorFrame, Frame, FrameKind, Hello, ResponseBatch, Welcome};

use super::{ClientConfig, ClientError};

/// The read half, plain or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half, plain or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

type Waiter = oneshot::Sender<Result<ResponseBatch, ClientError>>;

struct Pending {
    closed: bool,
    /// Callers waiting for their answer, with their deadline.
    waiters: HashMap<u64, (Waiter, Instant)>,
    /// The deadline the sweeper sleeps until (`None`: it waits for a caller).
    next_sweep: Option<Instant>,
    /// Where `Push` frames of a subscription go, by the SUBSCRIBE request's correlation id.
    pushes: HashMap<u64, mpsc::Sender<Vec<u8>>>,
}

/// Request bytes a connection queues for its writer before callers wait for room (a
/// single larger frame is still taken when the outbox is empty).
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

/// Frames waiting for the writer task.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    /// Frames in `buf`.
    frames: usize,
    /// The writer has been woken and has not taken `buf` yet.
    woken: bool,
    /// Nothing more is written: the connection failed or was closed.
    closed: bool,
    /// Shut the write side down once `buf` is written (a requested close).
    shutdown: bool,
}

/// What callers and the connection's writer and sweeper tasks share.
#[derive(Default)]
struct Shared {
    out: Mutex<Outbox>,
    /// Wakes the writer (a stored permit: no wake-up is lost).
    wake: Notify,
    /// Wakes callers waiting for room in the outbox.
    room: Notify,
    /// Stops a write in progress: the connection is closed, unwritten bytes are dropped.
    stop: Notify,
    /// Wakes the sweeper: a caller's deadline is earlier than the one it sleeps until,
    /// or the connection ended.
    sweep: Notify,
}

impl Shared {
    /// No more frames; a write in progress is abandoned and the writer task ends.
    fn close(&self) {
        self.out.lock().closed = true;
        self.wake.notify_one();
        self.stop.notify_one();
        self.room.notify_waiters();
        self.sweep.notify_one();
    }

    /// The writer writes what is queued, then shuts the write side down and ends.
    fn shut_down(&self) {
        self.out.lock().shutdown = true;
        self.wake.notify_one();
    }
}

/// A live connection.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    /// Resolves when the writer task has ended (after a requested shutdown or a failure).
    writer_done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    pending: Mutex<Pending>,
    next_corr: AtomicU64,
    pub welcome: Welcome,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Every caller holds the connection while it waits, so what is still queued is
        // only cancelled callers' frames: the tasks end and the socket closes now.
        self.shared.close();
    }
}

/// The next whole frame, taken out of `buf`.
async fn read_frame(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, ClientError> {
    let (kind, corr, total) = next_frame(rd, buf, max).await?;
    let f = Frame::new(kind, corr, buf[FRAME_OVERHEAD_BYTES..total].to_vec());
    buf.advance(total);
    Ok(f)
}

/// A failed read: a TLS alert (a refused client certificate, ...) is said as such; any
/// other failure is a lost connection.
fn read_error(e: &std::io::Error) -> ClientError {
    #[cfg(feature = "tls")]
    if crate::tls::is_tls_error(e) {
        return ClientError::Tls(crate::tls::describe(e));
    }
    let _ = e;
    ClientError::Disconnected
}

/// The error of an `Error` frame's payload.
fn server_error(payload: &[u8]) -> ClientError {
    match protocol::decode_payload::<ErrorFrame>(payload) {
        Ok(e) => ClientError::Refused {
            status: e.status,
            message: e.message,
        },
        Err(e) => ClientError::Protocol(format!("undecodable error frame: {e}")),
    }
}

/// The peer's first bytes, quoted: at most 40, escaped like a Rust string.
fn not_omnistock(got: &[u8]) -> ClientError {
    let head = &got[..got.len().min(40)];
    let more = if got.len() > head.len() { "..." } else { "" };
    ClientError::NotOmnistock {
        got: format!("{:?}{more}", String::from_utf8_lossy(head)),
    }
}

impl Conn {
    /// Connects, says `Hello`, waits for `Welcome`, starts the reader task.
    pub async fn open(cfg: &ClientConfig) -> Result<Arc<Conn>, ClientError> {
        let sock = timeout(cfg.connect_timeout, TcpStream::connect(&cfg.addr))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = sock.set_nodelay(true);
        let (mut rd, mut wr) = Self::wrap(cfg, sock).await?;
        let hello = Hello {
            magic: protocol::MAGIC,
            version: protocol::PROTOCOL_VERSION,
            client_name: cfg.client_name.clone(),
            token: cfg.token.clone(),
        };
        let f = protocol::frame_of(FrameKind::Hello, 0, &hello)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        wr.write_all(&f.encode())
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4096);
        let max = protocol::DEFAULT_MAX_FRAME_BYTES;
        let first = match timeout(cfg.connect_timeout, read_frame(&mut rd, &mut buf, max)).await {
            Err(_) => return Err(ClientError::Timeout),
            // The first bytes are no frame at all: say what answered instead.
            Ok(Err(ClientError::Protocol(_))) => return Err(not_omnistock(&buf)),
            Ok(r) => r?,
        };
        let welcome: Welcome = match first.kind {
            FrameKind::Welcome => protocol::decode_payload(&first.payload)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
            FrameKind::Error => return Err(server_error(&first.payload)),
            k => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {k:?}"
                )))
            }
        };
        let max = welcome.max_frame_bytes as usize;
        let shared = Arc::new(Shared::default());
        let (done_tx, done_rx) = oneshot::channel();
        let conn = Arc::new(Conn {
            shared: shared.clone(),
            writer_done: tokio::sync::Mutex::new(Some(done_rx)),
            pending: Mutex::new(Pending {
                closed: false,
                waiters: HashMap::new(),
                next_sweep: None,
                pushes: HashMap::new(),
            }),
            next_corr: AtomicU64::new(1),
            welcome,
        });
        tokio::spawn(sweep_loop(Arc::downgrade(&conn), shared.clone()));
        tokio::spawn(write_loop(Arc::downgrade(&conn), shared, wr, done_tx));
        tokio::spawn(read_loop(Arc::downgrade(&conn), rd, buf, max));
        Ok(conn)
    }

    /// The socket's halves, through TLS when the config has it (within `connect_timeout`).
    async fn wrap(
        cfg: &ClientConfig,
        sock: TcpStream,
    ) -> Result<(ReadHalf, WriteHalf), ClientError> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &cfg.tls {
            let s = timeout(cfg.connect_timeout, tls.connect(&cfg.addr, sock))
                .await
                .map_err(|_| ClientError::Timeout)?
                .map_err(ClientError::Tls)?;
            return Ok(crate::tls::split(s));
        }
        #[cfg(not(feature = "tls"))]
        let _ = cfg;
        let (rd, wr) = sock.into_split();
        Ok((Box::new(rd), Box::new(wr)))
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.pending.lock().closed
    }

    /// Sends one request frame and waits for its response.
    pub async fn roundtrip(
        &self,
        payload: &[u8],
        limit: Duration,
    ) -> Result<ResponseBatch, ClientError> {
        self.roundtrip_with_push(payload, limit, None).await
    }

    /// Like `roundtrip`, routing later `Push` frames with the same correlation id to `push`
    /// (registered before the request leaves, so none is missed). The reader waits for
    /// room in `push`: a subscriber that does not read stops the socket being read.
    pub async fn roundtrip_with_push(
        &self,
        payload: &[u8],
        limit: Duration,
        push: Option<mpsc::Sender<Vec<u8>>>,
    ) -> Result<ResponseBatch, ClientError> {
        let corr = self.next_corr.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        // The limit covers the wait for room in the outbox as well as for the answer.
        let deadline = Instant::now() + limit;
        let wake_sweeper = {
            let mut p = self.pending.lock();
            if p.closed {
                return Err(ClientError::Disconnected);
            }
            p.waiters.insert(corr, (tx, deadline));
            if let Some(push) = push {
                p.pushes.insert(corr, push);
            }
            let earlier = p.next_sweep.is_none_or(|at| deadline < at);
            if earlier {
                p.next_sweep = Some(deadline);
            }
            earlier
        };
        if wake_sweeper {
            self.shared.sweep.notify_one();
        }
        let answer = async {
            // The sweeper's timeout (or the connection's end) also ends a wait for room.
            let queued = {
                let enqueue = std::pin::pin!(self.enqueue(corr, payload));
                match futures::future::select(&mut rx, enqueue).await {
                    Either::Left((answer, _)) => {
                        return answer.unwrap_or(Err(ClientError::Disconnected))
                    }
                    Either::Right((queued, _)) => queued,
                }
            };
            queued?;
            (&mut rx).await.unwrap_or(Err(ClientError::Disconnected))
        }
        .await;
        if answer.is_err() {
            let mut p = self.pending.lock();
            p.waiters.remove(&corr);
            p.pushes.remove(&corr);
        }
        answer
    }

    /// Queues one request frame for the writer, waiting while the outbox is full. A frame
    /// over the server's limit is refused here: the server would close the connection.
    async fn enqueue(&self, corr: u64, payload: &[u8]) -> Result<(), ClientError> {
        let len = HEADER_BYTES + payload.len();
        let limit = self.welcome.max_frame_bytes as usize;
        if len > limit {
            return Err(ClientError::Protocol(format!(
                "request frame of {len} bytes is over the server's limit of {limit} bytes: \
                 send fewer operations per batch"
            )));
        }
        let w = &self.shared;
        loop {
            let room = w.room.notified();
            tokio::pin!(room);
            {
                let mut o = w.out.lock();
                if o.closed || o.shutdown {
                    return Err(ClientError::Disconnected);
                }
                if o.buf.is_empty()
                    || o.buf.len() + FRAME_OVERHEAD_BYTES + payload.len() <= MAX_QUEUED_BYTES
                {
                    // u32: `len` is at most the server's limit, itself a u32.
                    o.buf.reserve(FRAME_OVERHEAD_BYTES + payload.len());
                    o.buf.extend_from_slice(&(len as u32).to_le_bytes());
                    o.buf.push(FrameKind::Request as u8);
                    o.buf.extend_from_slice(&corr.to_le_bytes());
                    o.buf.extend_from_slice(payload);
                    o.frames += 1;
                    let wake = !o.woken;
                    o.woken = true;
                    drop(o);
                    if wake {
                        w.wake.notify_one();
                    }
                    return Ok(());
                }
                // Registered before the lock is released, so the writer's drain is not missed.
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// Requests still waiting for their answer.
    fn in_flight(&self) -> usize {
        self.pending.lock().waiters.len()
    }

    /// Writes what is queued, then closes the write side (the server then finishes and
    /// closes); returns once the writer has ended, or after `limit`: a server that stops
    /// reading cannot hold the close up, the connection is then closed with what is left
    /// unwritten.
    pub async fn close(&self, limit: Duration) {
        self.shared.shut_down();
        let mut done = self.writer_done.lock().await;
        if let Some(rx) = done.as_mut() {
            if timeout(limit, rx).await.is_err() {
                self.shared.close();
            }
        }
        *done = None;
    }

    fn fail_all(&self, err: &ClientError) {
        {
            let mut p = self.pending.lock();
            p.closed = true;
            for (_, (w, _)) in p.waiters.drain() {
                let _ = w.send(Err(err.clone()));
            }
            p.pushes.clear();
        }
        self.shared.close();
    }
}

/// The sweeper task: answers the callers past their deadline with a timeout, then sleeps
/// until the earliest deadline left (or, with no caller waiting, until one comes). Ends
/// with the connection.
async fn sweep_loop(conn: std::sync::Weak<Conn>, w: Arc<Shared>) {
    loop {
        let next = {
            let Some(c) = conn.upgrade() else { return };
            let (expired, next) = {
                let mut p = c.pending.lock();
                if p.closed {
                    return;
                }
                let now = Instant::now();
                let expired: Vec<Waiter> = p
                    .waiters
                    .extract_if(|_, (_, at)| *at <= now)
                    .map(|(_, (waiter, _))| waiter)
                    .collect();
                let next = p.waiters.values().map(|(_, at)| *at).min();
                p.next_sweep = next;
                (expired, next)
            };
            for waiter in expired {
                let _ = waiter.send(Err(ClientError::Timeout));
            }
            next
        };
        match next {
            Some(at) => {
                let sleep = std::pin::pin!(tokio::time::sleep_until(at));
                let woken = std::pin::pin!(w.sweep.notified());
                futures::future::select(sleep, woken).await;
            }
            None => w.sweep.notified().await,
        }
    }
}

/// The writer task: takes everything queued at once and writes it with one call. Ends on
/// a write failure (failing every waiting caller), a requested shutdown or a closed
/// connection (abandoning a write in progress). Holds the connection only weakly, so
/// dropping the last `Conn` ends it.
async fn write_loop(
    conn: std::sync::Weak<Conn>,
    w: Arc<Shared>,
    mut wr: WriteHalf,
    _done: oneshot::Sender<()>,
) {
    let mut batch = Vec::new();
    loop {
        w.wake.notified().await;
        // Other requests of this connection are waiting for answers, which arrive
        // together and wake their callers together: let those runnable now queue theirs,
        // so they leave in this write.
        let queued = w.out.lock().frames;
        if conn.upgrade().is_some_and(|c| c.in_flight() > queued) {
            tokio::task::yield_now().await;
        }
        let (shutdown, closed) = {
            let mut o = w.out.lock();
            o.woken = false;
            o.frames = 0;
            std::mem::swap(&mut o.buf, &mut batch);
            (o.shutdown, o.closed)
        };
        w.room.notify_waiters();
        if closed {
            return;
        }
        if !batch.is_empty() {
            let write = std::pin::pin!(wr.write_all(&batch));
            let stop = std::pin::pin!(w.stop.notified());
            let written = match futures::future::select(write, stop).await {
                Either::Left((written, _)) => written,
                // Closed: the write half is dropped with the task.
                Either::Right(_) => return,
            };
            if written.is_err() {
                if let Some(c) = conn.upgrade() {
                    c.fail_all(&ClientError::Disconnected);
                } else {
                    w.close();
                }
                return;
            }
            batch.clear();
            if batch.capacity() > MAX_QUEUED_BYTES {
                batch = Vec::new();
            }
        }
        if shutdown {
            let _ = wr.shutdown().await;
            w.close();
            return;
        }
    }
}

/// Waits until `buf` starts with a whole frame; returns its kind, correlation id and total
/// length (the payload is `buf[FRAME_OVERHEAD_BYTES..total]`, read in place).
async fn next_frame(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(FrameKind, u64, usize), ClientError> {
    loop {
        let bad = |e: protocol::FrameError| ClientError::Protocol(e.to_string());
        if let Some(len) = Frame::peek_len(buf, max).map_err(bad)? {
            let total = protocol::frame::LENGTH_BYTES + len;
            if buf.len() >= total {
                let head = &buf[protocol::frame::LENGTH_BYTES..];
                let kind = FrameKind::from_u8(head[0])
                    .ok_or(protocol::FrameError::UnknownKind(head[0]))
                    .map_err(bad)?;
                let mut corr = [0u8; 8];
                corr.copy_from_slice(&head[1..HEADER_BYTES]);
                return Ok((kind, u64::from_le_bytes(corr), total));
            }
        }
        buf.reserve(64 * 1024);
        let n = rd.read_buf(buf).await.map_err(|e| read_error(&e))?;
        if n == 0 {
            return Err(ClientError::Disconnected);
        }
    }
}

async fn read_loop(conn: std::sync::Weak<Conn>, mut rd: ReadHalf, mut buf: BytesMut, max: usize) {
    let err = loop {
        let (kind, corr, total) = match next_frame(&mut rd, &mut buf, max).await {
            Ok(f) => f,
            Err(e) => break e,
        };
        let Some(c) = conn.upgrade() else { return };
        let payload = &buf[FRAME_OVERHEAD_BYTES..total];
        match kind {
            FrameKind::Response => {
                let r = protocol::decode_response_batch(payload)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
                buf.advance(total);
                let waiter = c.pending.lock().waiters.remove(&corr);
                if let Some((w, _)) = waiter {
                    let _ = w.send(r);
                }
            }
            FrameKind::Push => {
                let payload = payload.to_vec();
                buf.advance(total);
                let to = c.pending.lock().pushes.get(&corr).cloned();
                drop(c);
                if let Some(to) = to {
                    // Back-pressure: wait for the subscriber to take it.
                    let _ = to.send(payload).await;
                }
            }
            FrameKind::Error => break server_error(payload),
            k => break ClientError::Protocol(format!("unexpected frame kind {k:?}")),
        }
    };
    if let Some(c) = conn.upgrade() {
        c.fail_all(&err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that handshakes, then reads everything and answers nothing.
    async fn silent_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut rd: ReadHalf = Box::new(rd);
            let mut buf = BytesMut::new();
            let hello = read_frame(&mut rd, &mut buf, 1 << 20).await;
            assert_eq!(hello.unwrap().kind, FrameKind::Hello);
            let welcome = Welcome {
                version: protocol::PROTOCOL_VERSION,
                server_name: "silent".into(),
                max_frame_bytes: 1 << 20,
                max_batch_ops: 8190,
                max_lines_per_reservation: 100,
                max_in_flight: 1024,
            };
            let f = protocol::frame_of(FrameKind::Welcome, 0, &welcome).unwrap();
            wr.write_all(&f.encode()).await.unwrap();
            let mut sink = vec![0u8; 64 * 1024];
            while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        addr
    }

    fn ping() -> Vec<u8> {
        protocol::encode_payload(&protocol::RequestBatch {
            ops: vec![protocol::RawOp {
                opcode: protocol::opcode::PING,
                body: vec![],
            }],
        })
        .unwrap()
    }

    /// The sweeper keeps each caller's own deadline: a short one behind a long one wakes it
    /// early, and neither times out before its limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_times_out_at_its_own_limit() {
        let addr = silent_server().await;
        let conn = Conn::open(&ClientConfig::new(addr)).await.unwrap();
        let long = {
            let conn = conn.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let r = conn.roundtrip(&ping(), Duration::from_millis(2500)).await;
                (r, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..2 {
            let t = std::time::Instant::now();
            let r = conn.roundtrip(&ping(), Duration::from_millis(300)).await;
            let took = t.elapsed();
            assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
            assert!(
                took >= Duration::from_millis(300),
                "timed out early: {took:?}"
            );
            assert!(
                took < Duration::from_millis(2000),
                "the short limit waited for the long one: {took:?}"
            );
        }
        let (r, took) = long.await.unwrap();
        assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
        assert!(
            took >= Duration::from_millis(2500),
            "timed out early: {took:?}"
        );
        assert!(
            conn.pending.lock().waiters.is_empty(),
            "timed-out callers are forgotten"
        );
        // The connection is still usable and idle connections keep no deadline to wake for.
        let r = conn.roundtrip(&ping(), Duration::from_millis(100)).await;
        assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    }
}
