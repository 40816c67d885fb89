//! Each configured server limit, with short values: connections, in-flight back-pressure,
//! frame bytes, operations per batch, idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::engine::{Engine, EngineConfig};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(f: impl FnOnce(&mut ServerConfig)) -> SocketAddr {
    start_with_stats(f).await.0
}

/// [`start`], also returning the server's counters.
async fn start_with_stats(
    f: impl FnOnce(&mut ServerConfig),
) -> (SocketAddr, Arc<omnistock::server::ServerStats>) {
    let cfg = EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::start_in_memory(cfg).unwrap());
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    f(&mut c);
    let server = Server::bind(c, engine).await.unwrap();
    let (addr, stats) = (server.local_addr(), server.stats());
    tokio::spawn(server.run());
    (addr, stats)
}

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = u32::from_le_bytes(len) as usize;
    let mut all = len.to_vec();
    all.resize(4 + n, 0);
    s.read_exact(&mut all[4..]).await.ok()?;
    Frame::parse(&all, usize::MAX).unwrap().map(|(f, _)| f)
}

async fn raw(addr: SocketAddr) -> (TcpStream, Frame) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let h = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "t".into(),
        token: String::new(),
    };
    s.write_all(&frame_of(FrameKind::Hello, 0, &h).unwrap().encode())
        .await
        .unwrap();
    let f = read_frame(&mut s).await.unwrap();
    (s, f)
}

fn request(corr: u64, ops: &[Op]) -> Vec<u8> {
    let ops = ops.iter().map(|o| o.to_raw().unwrap()).collect();
    frame_of(FrameKind::Request, corr, &RequestBatch { ops })
        .unwrap()
        .encode()
}

fn error_status(f: &Frame) -> u16 {
    assert_eq!(f.kind, FrameKind::Error);
    decode_payload::<ErrorFrame>(&f.payload).unwrap().status
}

fn results(f: &Frame) -> Vec<u16> {
    assert_eq!(f.kind, FrameKind::Response);
    let r: ResponseBatch = decode_payload(&f.payload).unwrap();
    r.results.iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let addr = start(|c| c.max_connections = 2).await;
    let (mut a, wa) = raw(addr).await;
    let (_b, wb) = raw(addr).await;
    assert_eq!((wa.kind, wb.kind), (FrameKind::Welcome, FrameKind::Welcome));
    let (_c, refused) = raw(addr).await;
    assert_eq!(error_status(&refused), status::LIMIT_EXCEEDED);
    // Closing one makes room again.
    drop(_b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_d, f) = raw(addr).await;
        if f.kind == FrameKind::Welcome {
            break;
        }
        assert!(Instant::now() < deadline, "a slot should free up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.write_all(&request(1, &[Op::Ping])).await.unwrap();
    assert_eq!(results(&read_frame(&mut a).await.unwrap()), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_is_back_pressure_not_an_error() {
    // With one request in flight the server reads the next only after answering, so a
    // slow batch followed by a fast ping comes back in order; nothing is refused.
    let addr = start(|c| c.max_in_flight = 1).await;
    let (mut s, _) = raw(addr).await;
    let slow: Vec<Op> = (0..5000)
        .map(|i| {
            Op::GetSku(GetSku {
                sku: format!("S{i}"),
            })
        })
        .collect();
    let mut bytes = Vec::new();
    for corr in 0..20u64 {
        if corr % 2 == 0 {
            bytes.extend(request(corr, &slow));
        } else {
            bytes.extend(request(corr, &[Op::Ping]));
        }
    }
    s.write_all(&bytes).await.unwrap();
    for corr in 0..20u64 {
        let f = read_frame(&mut s).await.unwrap();
        assert_eq!(f.correlation, corr, "in order: one in flight at a time");
        assert!(results(&f).iter().all(|&st| st == 0 || st == 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_byte_limit_are_refused_unread() {
    let addr = start(|c| c.max_frame_bytes = 1024).await;
    let (mut s, w) = raw(addr).await;
    let welcome: Welcome = decode_payload(&w.payload).unwrap();
    assert_eq!(welcome.max_frame_bytes, 1024);
    let big: Vec<Op> = (0..100)
        .map(|i| {
            Op::GetSku(GetSku {
                sku: format!("SKU-{i:04}"),
            })
        })
        .collect();
    let b = request(1, &big);
    assert!(b.len() > 1024);
    let _ = s.write_all(&b).await;
    assert_eq!(
        error_status(&read_frame(&mut s).await.unwrap()),
        status::LIMIT_EXCEEDED
    );
    // Exactly at the limit is fine.
    let (mut ok, _) = raw(addr).await;
    let at = Frame::new(FrameKind::Request, 2, vec![0; 1024 - 9]);
    ok.write_all(&at.encode()).await.unwrap();
    // (not a valid batch: a protocol error, not a limit error)
    assert_eq!(
        error_status(&read_frame(&mut ok).await.unwrap()),
        status::PROTOCOL_ERROR
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_op_limit_get_one_too_many_result() {
    let addr = start(|c| c.max_batch_ops = 3).await;
    let (mut s, _) = raw(addr).await;
    s.write_all(&request(1, &[Op::Ping, Op::Ping, Op::Ping]))
        .await
        .unwrap();
    assert_eq!(results(&read_frame(&mut s).await.unwrap()), [0, 0, 0]);
    s.write_all(&request(2, &[Op::Ping, Op::Ping, Op::Ping, Op::Ping]))
        .await
        .unwrap();
    assert_eq!(
        results(&read_frame(&mut s).await.unwrap()),
        [status::TOO_MANY_OPERATIONS]
    );
    // get-many is bounded by the same limit
    let many = GetSkus {
        skus: vec!["A".into(); 4],
    };
    s.write_all(&request(3, &[Op::GetSkus(many)]))
        .await
        .unwrap();
    assert_eq!(
        results(&read_frame(&mut s).await.unwrap()),
        [status::LIMIT_EXCEEDED]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let addr = start(|c| c.idle_timeout = Duration::from_millis(200)).await;
    let (mut s, _) = raw(addr).await;
    // Activity keeps it open.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&request(i, &[Op::Ping])).await.unwrap();
        assert_eq!(results(&read_frame(&mut s).await.unwrap()), [0]);
    }
    let t0 = Instant::now();
    let f = read_frame(&mut s).await.unwrap();
    assert_eq!(error_status(&f), status::IDLE_TIMEOUT);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert!(read_frame(&mut s).await.is_none(), "closed after the error");
}

fn subscribe_op() -> Op {
    Op::Subscribe(Subscribe {
        name: String::new(),
        start: start::LIVE,
        from_seq: 0,
        channels: Vec::new(),
        skus: Vec::new(),
        sku_prefix: String::new(),
        kinds: kinds::ALL,
        coalesce_ms: 0,
    })
}

/// Waits until the server counts `n` open connections (at most 5 s).
async fn open_connections_become(stats: &omnistock::server::ServerStats, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if stats
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
            == n
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

// postmortem: SUBSCRIBE and UNSUBSCRIBE (or a close) in one write ended the subscription
// before its task was first polled; the task then saw only "hold" on its one watch and
// waited forever, and so did UNSUBSCRIBE: 50 of 50 connections stuck, slots and
// descriptors never freed, SIGTERM never finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_then_unsubscribe_or_close_in_one_write_never_wedges() {
    let (addr, stats) = start_with_stats(|_| {}).await;
    for round in 0..50u64 {
        let (mut s, _) = raw(addr).await;
        let mut both = request(7, &[subscribe_op()]);
        both.extend(request(8, &[Op::Unsubscribe]));
        s.write_all(&both).await.unwrap();
        let mut answered = Vec::new();
        while answered.len() < 2 {
            let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
                .await
                .unwrap_or_else(|_| panic!("round {round}: an answer never came: {answered:?}"))
                .expect("frame");
            if f.kind == FrameKind::Response {
                answered.push((f.correlation, results(&f)));
            }
        }
        assert_eq!(answered, vec![(7, vec![0]), (8, vec![0])], "round {round}");
        drop(s);
        // Close right after a SUBSCRIBE, in the same write as the Hello's follow-up.
        let (mut s, _) = raw(addr).await;
        s.write_all(&request(9, &[subscribe_op()])).await.unwrap();
        drop(s);
    }
    assert!(
        open_connections_become(&stats, 0).await,
        "connections still open: {}",
        stats
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}

// postmortem: a failed handshake logged the client name, which had no size limit (a
// 500 KB name gave a 500 KB log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_an_oversized_client_name_is_refused() {
    let addr = start(|_| {}).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let h = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "n".repeat(500_000),
        token: String::new(),
    };
    s.write_all(&frame_of(FrameKind::Hello, 0, &h).unwrap().encode())
        .await
        .unwrap();
    let f = read_frame(&mut s).await.expect("an answer");
    assert_eq!(error_status(&f), status::PROTOCOL_ERROR);
    // A name at the limit is fine.
    let (_ok, welcome) = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let h = Hello {
            magic: MAGIC,
            version: 1,
            client_name: "n".repeat(128),
            token: String::new(),
        };
        s.write_all(&frame_of(FrameKind::Hello, 0, &h).unwrap().encode())
            .await
            .unwrap();
        let f = read_frame(&mut s).await.expect("an answer");
        (s, f)
    };
    assert_eq!(welcome.kind, FrameKind::Welcome);
}

// postmortem: a client that pipelined requests and never read kept its connection, and
// everything queued for it, for as long as it liked (+2.2 GB RSS per connection for
// pipelined GET_SKUS; the idle timeout does not apply while answers are pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let (addr, stats) = start_with_stats(|c| c.write_timeout = Duration::from_millis(300)).await;
    let (mut s, _) = raw(addr).await;
    // Pings pipelined without reading until our writes stop going through.
    let frame = request(1, &[Op::Ping]);
    let mut sent = 0usize;
    while sent < 64 << 20 {
        match tokio::time::timeout(Duration::from_millis(500), s.write_all(&frame)).await {
            Ok(Ok(())) => sent += frame.len(),
            _ => break,
        }
    }
    assert!(sent > 64 * 1024, "the buffers filled ({sent} bytes)");
    assert!(
        open_connections_become(&stats, 0).await,
        "the non-reader is still connected"
    );
    assert_eq!(
        stats
            .slow_readers_closed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
