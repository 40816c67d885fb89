//! One client connection: the write half behind a lock (callers write whole frames), and a
//! reader task that routes each response to the caller waiting on its correlation id. When
//! the connection ends every waiting caller gets [`ClientError::Disconnected`] (or the
//! server's error frame), so nobody waits forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use crate::protocol::{self, ErrorFrame, Frame, FrameKind, Hello, ResponseBatch, Welcome};

use super::{ClientConfig, ClientError};

/// The read half, plain or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half, plain or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

type Waiter = oneshot::Sender<Result<ResponseBatch, ClientError>>;

struct Pending {
    closed: bool,
    waiters: HashMap<u64, Waiter>,
    /// Where `Push` frames of a subscription go, by the SUBSCRIBE request's correlation id.
    pushes: HashMap<u64, mpsc::Sender<Vec<u8>>>,
}

/// A live connection.
pub(crate) struct Conn {
    wr: tokio::sync::Mutex<WriteHalf>,
    pending: Mutex<Pending>,
    next_corr: AtomicU64,
    pub welcome: Welcome,
}

async fn read_frame(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, ClientError> {
    loop {
        let parsed = Frame::parse(buf, max).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some((f, used)) = parsed {
            buf.advance(used);
            return Ok(f);
        }
        buf.reserve(64 * 1024);
        let n = rd.read_buf(buf).await.map_err(|e| read_error(&e))?;
        if n == 0 {
            return Err(ClientError::Disconnected);
        }
    }
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

fn server_error(f: &Frame) -> ClientError {
    match protocol::decode_payload::<ErrorFrame>(&f.payload) {
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
            FrameKind::Error => return Err(server_error(&first)),
            k => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {k:?}"
                )))
            }
        };
        let max = welcome.max_frame_bytes as usize;
        let conn = Arc::new(Conn {
            wr: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(Pending {
                closed: false,
                waiters: HashMap::new(),
                pushes: HashMap::new(),
            }),
            next_corr: AtomicU64::new(1),
            welcome,
        });
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
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if p.closed {
                return Err(ClientError::Disconnected);
            }
            p.waiters.insert(corr, tx);
            if let Some(push) = push {
                p.pushes.insert(corr, push);
            }
        }
        let frame = Frame::new(FrameKind::Request, corr, payload.to_vec());
        let written = self.wr.lock().await.write_all(&frame.encode()).await;
        if written.is_err() {
            self.pending.lock().waiters.remove(&corr);
            return Err(ClientError::Disconnected);
        }
        match timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => {
                self.pending.lock().waiters.remove(&corr);
                Err(ClientError::Timeout)
            }
        }
    }

    /// Closes the write side (the server then finishes and closes).
    pub async fn close(&self) {
        let _ = self.wr.lock().await.shutdown().await;
    }

    fn fail_all(&self, err: &ClientError) {
        let mut p = self.pending.lock();
        p.closed = true;
        for (_, w) in p.waiters.drain() {
            let _ = w.send(Err(err.clone()));
        }
        p.pushes.clear();
    }
}

async fn read_loop(conn: std::sync::Weak<Conn>, mut rd: ReadHalf, mut buf: BytesMut, max: usize) {
    let err = loop {
        let f = match read_frame(&mut rd, &mut buf, max).await {
            Ok(f) => f,
            Err(e) => break e,
        };
        let Some(c) = conn.upgrade() else { return };
        match f.kind {
            FrameKind::Response => {
                let r = protocol::decode_payload::<ResponseBatch>(&f.payload)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
                if let Some(w) = c.pending.lock().waiters.remove(&f.correlation) {
                    let _ = w.send(r);
                }
            }
            FrameKind::Push => {
                let to = c.pending.lock().pushes.get(&f.correlation).cloned();
                drop(c);
                if let Some(to) = to {
                    // Back-pressure: wait for the subscriber to take it.
                    let _ = to.send(f.payload).await;
                }
            }
            FrameKind::Error => break server_error(&f),
            k => break ClientError::Protocol(format!("unexpected frame kind {k:?}")),
        }
    };
    if let Some(c) = conn.upgrade() {
        c.fail_all(&err);
    }
}
