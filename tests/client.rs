//! The client's retry of `busy` and `in_progress` answers, against a scripted server on
//! 127.0.0.1:0 that speaks the protocol (docs/protocol.md) and answers each request with
//! the next status of its script: the retries happen, with the very same request bytes
//! (so the same request id), no more than the policy allows, not at all when it is off,
//! and never for a status that is not retriable. Uses only the client-side library.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig, ClientError, Rejection, RetryPolicy};
use omnistock::protocol::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted server saw: the payload of every request frame, in arrival order.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = u32::from_le_bytes(len) as usize;
    let mut all = len.to_vec();
    all.resize(4 + n, 0);
    s.read_exact(&mut all[4..]).await.ok()?;
    Frame::parse(&all, usize::MAX).unwrap().map(|(f, _)| f)
}

/// A server that answers request `i` with status `script[i]` (the last one repeated), a
/// `Reserved` body on 0 and an empty body otherwise.
async fn scripted(script: Vec<u16>) -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let hello = read_frame(&mut s).await.unwrap();
        assert_eq!(hello.kind, FrameKind::Hello);
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            server_name: "scripted".into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
            max_batch_ops: 8190,
            max_lines_per_reservation: 100,
            max_in_flight: 16,
        };
        let f = frame_of(FrameKind::Welcome, 0, &welcome).unwrap();
        s.write_all(&f.encode()).await.unwrap();
        let mut i = 0;
        while let Some(req) = read_frame(&mut s).await {
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
