//! The client against fake servers on 127.0.0.1:0 that speak the protocol
//! (docs/protocol.md). Uses only the client-side library.
//!
//! The retry of `busy` and `in_progress` answers, against a scripted server that answers
//! each request with the next status of its script: the retries happen, with the very same
//! request bytes (so the same request id), no more than the policy allows, not at all when
//! it is off, and never for a status that is not retriable.
//!
//! The connection's writer: many requests sharing one connection each get their own
//! answer; a request over the server's frame limit is refused before anything is sent and
//! the connection stays usable; a caller cancelled while its frame is being written never
//! leaves half a frame on the wire; and a server that stops reading makes callers time out
//! instead of waiting forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig, ClientError, Rejection, RetryPolicy};
use omnistock::protocol::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted server saw: the payload of every request frame, in arrival order.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// A listener on 127.0.0.1:0 and its address.
async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Accepts one client, takes its `Hello` and answers `Welcome` with this frame limit.
async fn welcomed(l: &TcpListener, max_frame_bytes: u32) -> TcpStream {
    let (mut s, _) = l.accept().await.unwrap();
    let hello = read_frame(&mut s, false).await.unwrap();
    assert_eq!(hello.kind, FrameKind::Hello);
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        server_name: "fake".into(),
        max_frame_bytes,
        max_batch_ops: 8190,
        max_lines_per_reservation: 100,
        max_in_flight: 1024,
    };
    let f = frame_of(FrameKind::Welcome, 0, &welcome).unwrap();
    s.write_all(&f.encode()).await.unwrap();
    s
}

/// A server that answers request `i` with status `script[i]` (the last one repeated), a
/// `Reserved` body on 0 and an empty body otherwise.
async fn scripted(script: Vec<u16>) -> (String, Seen) {
    let (l, addr) = listen().await;
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut s = welcomed(&l, DEFAULT_MAX_FRAME_BYTES as u32).await;
        let mut i = 0;
        while let Some(req) = read_frame(&mut s, false).await {
            log.lock().push(req.payload.clone());
            let status = script[i.min(script.len() - 1)];
            i += 1;
            let result = if status == status::OK {
                let body = encode_payload(&Reserved {
                    seq: 7,
                    expires_at_ms: 1000,
                    allocations: vec![],
                })
                .unwrap();
                OpResult {
                    status,
                    message: String::new(),
                    body,
                }
            } else {
                failed(status, status::name(status))
            };
            let resp = ResponseBatch {
                results: vec![result],
            };
            let f = frame_of(FrameKind::Response, req.correlation, &resp).unwrap();
            s.write_all(&f.encode()).await.unwrap();
        }
    });
    (addr, seen)
}

fn reserve() -> Reserve {
    Reserve {
        request_id: 0xfeed,
        reservation: 9,
        channel: "web".into(),
        lines: vec![WireLine {
            sku: "A".into(),
            qty: 1,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 60_000,
    }
}

fn policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

async fn client(addr: &str, p: RetryPolicy) -> Client {
    Client::connect(ClientConfig::new(addr).busy_retry(p))
        .await
        .unwrap()
}

#[tokio::test]
async fn busy_and_in_progress_are_retried_with_the_same_request_bytes_until_ok() {
    let (addr, seen) = scripted(vec![13, 16, 13, 0]).await;
    let c = client(&addr, policy(3)).await;
    let r = c.reserve(reserve()).await.unwrap();
    assert_eq!(r.seq, 7);
    let seen = seen.lock();
    assert_eq!(seen.len(), 4, "three retries, then the answer");
    assert!(seen.iter().all(|p| p == &seen[0]), "same bytes, same id");
    let batch: RequestBatch = decode_payload(&seen[0]).unwrap();
    let Some(Op::Reserve(sent)) = Op::from_raw(&batch.ops[0]).unwrap() else {
        panic!("not a reserve")
    };
    assert_eq!(sent.request_id, 0xfeed);
}

#[tokio::test]
async fn busy_retries_are_bounded_by_the_policy() {
    let (addr, seen) = scripted(vec![13]).await;
    let c = client(&addr, policy(2)).await;
    let e = c.reserve(reserve()).await.unwrap_err();
    assert_eq!(e.rejection(), Some(Rejection::Busy), "{e:?}");
    assert_eq!(e.status(), Some(13));
    assert!(e.is_retriable());
    assert_eq!(seen.lock().len(), 3, "the first attempt and two retries");
}

#[tokio::test]
async fn with_retries_off_busy_comes_back_at_once() {
    let (addr, seen) = scripted(vec![13, 0]).await;
    let c = client(
        &addr,
        RetryPolicy {
            initial_backoff: Duration::from_secs(30),
            ..RetryPolicy::off()
        },
    )
    .await;
    let t = Instant::now();
    let e = c.reserve(reserve()).await.unwrap_err();
    assert!(matches!(
        e,
        ClientError::Status {
            rejection: Rejection::Busy,
            status: 13,
            ..
        }
    ));
    assert!(t.elapsed() < Duration::from_secs(5), "no back-off slept");
    assert_eq!(seen.lock().len(), 1);
}

#[tokio::test]
async fn other_statuses_are_not_retried() {
    for (code, want) in [
        (6, Rejection::ReservationNotFound),
        (status::SHUTTING_DOWN, Rejection::ShuttingDown),
        (status::LIMIT_EXCEEDED, Rejection::LimitExceeded),
    ] {
        let (addr, seen) = scripted(vec![code, 0]).await;
        let c = client(&addr, policy(5)).await;
        let e = c.reserve(reserve()).await.unwrap_err();
        assert_eq!(e.rejection(), Some(want));
        assert_eq!(seen.lock().len(), 1, "status {code} was resent");
    }
}

#[tokio::test]
async fn a_batch_returns_busy_as_it_came() {
    let (addr, seen) = scripted(vec![13, 0]).await;
    let c = client(&addr, policy(5)).await;
    let r = c.batch(&[Op::Reserve(reserve())]).await.unwrap();
    assert_eq!(r[0].status, 13);
    assert_eq!(seen.lock().len(), 1);
}

// The connection's writer (src/client/conn.rs).

/// The frame limit the cancellation test announces: room for more than the kernel's
/// loopback socket buffers take at once.
const BIG_FRAME_BYTES: usize = 16 << 20;

/// Every request frame the fake server read whole, in order.
type Frames = Arc<Mutex<Vec<Frame>>>;

#[derive(Clone, Copy)]
enum Mode {
    /// Answers each frame as it comes, echoing each op's body as its result body.
    Echo,
    /// Reads at most 64 KiB every 2 ms, then answers as `Echo` does.
    SlowEcho,
    /// Takes every request frame of `n` before answering them all, last first.
    Gather(usize),
    /// Never reads after the handshake.
    Deaf,
}

async fn read_exact_paced(s: &mut TcpStream, buf: &mut [u8], slow: bool) -> Option<()> {
    let mut at = 0;
    while at < buf.len() {
        let end = if slow {
            buf.len().min(at + 64 * 1024)
        } else {
            buf.len()
        };
        let n = s.read(&mut buf[at..end]).await.ok()?;
        if n == 0 {
            return None;
        }
        at += n;
        if slow {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Some(())
}

/// One frame; `None` at the end of the stream. A frame that does not parse fails the test.
async fn read_frame(s: &mut TcpStream, slow: bool) -> Option<Frame> {
    let mut len = [0u8; 4];
    read_exact_paced(s, &mut len, slow).await?;
    let n = u32::from_le_bytes(len) as usize;
    assert!(
        n <= BIG_FRAME_BYTES,
        "a frame length of {n}: the stream is torn"
    );
    let mut all = len.to_vec();
    all.resize(4 + n, 0);
    read_exact_paced(s, &mut all[4..], slow).await?;
    let (f, _) = Frame::parse(&all, usize::MAX).unwrap().unwrap();
    Some(f)
}

fn echo(req: &Frame) -> Vec<u8> {
    let batch: RequestBatch = decode_payload(&req.payload).expect("a whole request batch");
    let results = batch
        .ops
        .into_iter()
        .map(|op| OpResult {
            status: status::OK,
            message: String::new(),
            body: op.body,
        })
        .collect();
    frame_of(
        FrameKind::Response,
        req.correlation,
        &ResponseBatch { results },
    )
    .unwrap()
    .encode()
}

async fn fake(max_frame_bytes: u32, mode: Mode) -> (String, Frames) {
    let (l, addr) = listen().await;
    let seen: Frames = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut s = welcomed(&l, max_frame_bytes).await;
        match mode {
            Mode::Deaf => {
                // Holds the socket open, unread, until the client goes away.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Mode::Echo | Mode::SlowEcho => {
                while let Some(req) = read_frame(&mut s, matches!(mode, Mode::SlowEcho)).await {
                    log.lock().push(req.clone());
                    if s.write_all(&echo(&req)).await.is_err() {
                        return;
                    }
                }
            }
            Mode::Gather(n) => {
                let mut got = Vec::new();
                while got.len() < n {
                    let Some(req) = read_frame(&mut s, false).await else {
                        return;
                    };
                    log.lock().push(req.clone());
                    got.push(req);
                }
                for req in got.iter().rev() {
                    s.write_all(&echo(req)).await.unwrap();
                }
                while read_frame(&mut s, false).await.is_some() {}
            }
        }
    });
    (addr, seen)
}

fn op(body: Vec<u8>) -> RawOp {
    RawOp {
        opcode: opcode::PING,
        body,
    }
}

async fn connect(addr: &str, request_timeout: Duration) -> Client {
    let mut cfg = ClientConfig::new(addr);
    cfg.request_timeout = request_timeout;
    cfg.max_retries = 0;
    Client::connect(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_a_connection_each_get_their_own_answer() {
    const N: usize = 64;
    let (addr, seen) = fake(DEFAULT_MAX_FRAME_BYTES as u32, Mode::Gather(N)).await;
    let c = connect(&addr, Duration::from_secs(20)).await;
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let body = format!("request {i}").into_bytes();
                let r = c.raw_batch(vec![op(body.clone())]).await.unwrap();
                assert_eq!(r.len(), 1);
                assert_eq!(r[0].body, body, "request {i} got another request's answer");
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let seen = seen.lock();
    assert_eq!(seen.len(), N, "each request sent once");
    let mut corr: Vec<u64> = seen.iter().map(|f| f.correlation).collect();
    corr.sort_unstable();
    corr.dedup();
    assert_eq!(corr.len(), N, "distinct correlation ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_frame_limit_is_refused_before_it_is_sent() {
    let (addr, seen) = fake(1024, Mode::Echo).await;
    let c = connect(&addr, Duration::from_secs(20)).await;
    let e = c.raw_batch(vec![op(vec![7; 2000])]).await.unwrap_err();
    match &e {
        ClientError::Protocol(m) => assert!(m.contains("limit of 1024 bytes"), "{m}"),
        e => panic!("expected a protocol error naming the limit, got {e:?}"),
    }
    assert!(!e.is_retriable());
    // Nothing was sent, and the connection still serves requests that fit.
    let r = c.raw_batch(vec![op(vec![1; 100])]).await.unwrap();
    assert_eq!(r[0].body, vec![1; 100]);
    assert_eq!(seen.lock().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_never_leaves_half_a_frame_on_the_wire() {
    let (addr, seen) = fake(BIG_FRAME_BYTES as u32, Mode::SlowEcho).await;
    let c = connect(&addr, Duration::from_secs(10)).await;
    // 12 MiB take the slow reader ~0.4 s, more than the socket buffers hold: the caller
    // is gone long before its frame is written.
    let big = tokio::time::timeout(
        Duration::from_millis(5),
        c.raw_batch(vec![op(vec![9; 12 << 20])]),
    )
    .await;
    assert!(big.is_err(), "the big request should still be in flight");
    let r = c.raw_batch(vec![op(b"after".to_vec())]).await.unwrap();
    assert_eq!(r[0].body, b"after");
    let seen = seen.lock();
    assert_eq!(
        seen.len(),
        2,
        "the cancelled frame went out whole, then the next"
    );
}

/// A client (request timeout 1 s) of a server that never reads, and `n` callers each
/// sending 512 KiB: more than the kernel's socket buffers and the client's outbox hold.
async fn flooding_a_deaf_server(
    n: usize,
) -> (
    Client,
    Vec<tokio::task::JoinHandle<Result<Vec<OpResult>, ClientError>>>,
) {
    let (addr, _) = fake(DEFAULT_MAX_FRAME_BYTES as u32, Mode::Deaf).await;
    let c = connect(&addr, Duration::from_secs(1)).await;
    let calls = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.raw_batch(vec![op(vec![3; 512 * 1024])]).await })
        })
        .collect();
    (c, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_makes_callers_time_out_not_wait_forever() {
    // 48 MiB in all.
    let (_c, calls) = flooding_a_deaf_server(96).await;
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap());
        }
        out
    })
    .await
    .expect("callers waited past their request timeout");
    for r in all {
        assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_while_the_server_stops_reading_returns_within_the_request_timeout() {
    // 16 MiB: the writer is blocked in a write when asked to close.
    let (c, calls) = flooding_a_deaf_server(32).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), c.disconnect())
        .await
        .expect("disconnect waited for a server that does not read");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for call in calls {
        assert!(call.await.unwrap().is_err());
    }
}
