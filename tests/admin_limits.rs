//! The admin endpoint under a connection flood: `/healthz` and `/readyz` must answer while
//! silent connections hold every place, and while thousands of GETs arrive at once (a
//! liveness probe that cannot connect restarts a healthy server).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use omnistock::http::{HttpConfig, HttpServer, Sources, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> SocketAddr {
    // A recorder of our own: nothing here needs the global one.
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let admin = HttpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Sources::new(),
        handle,
        HttpConfig::default(),
    )
    .await
    .expect("bind admin");
    let addr = admin.local_addr();
    tokio::spawn(admin.run(std::future::pending()));
    addr
}

/// One GET; the status code, or `None` when closed without an answer.
async fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.ok()?;
    let head = String::from_utf8_lossy(&answer);
    head.split(' ').nth(1)?.parse().ok()
}

// postmortem: 64 silent connections took every place of the admin endpoint; 80 of 80
// /healthz probes were closed unanswered, so a liveness probe would restart a healthy
// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_silent_connections_hold_every_place() {
    let addr = start().await;
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 64 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let t0 = Instant::now();
    for _ in 0..20 {
        let answered = tokio::time::timeout(Duration::from_secs(5), get(addr, "/healthz")).await;
        assert_eq!(answered, Ok(Some(200)), "after {:?}", t0.elapsed());
    }
    // Not ready (no engine): answered all the same.
    let ready = tokio::time::timeout(Duration::from_secs(5), get(addr, "/readyz")).await;
    assert_eq!(ready, Ok(Some(503)));
    drop(silent);
}

// postmortem: of 2,000 concurrent GETs, 64 were answered and the rest closed unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_probes_are_all_answered_beside_silent_connections() {
    let addr = start().await;
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let probes: Vec<_> = (0..2000)
        .map(|i| {
            let path = if i % 2 == 0 { "/healthz" } else { "/readyz" };
            tokio::spawn(tokio::time::timeout(
                Duration::from_secs(20),
                get(addr, path),
            ))
        })
        .collect();
    let (mut answered, mut closed, mut late) = (0, 0, 0);
    for p in probes {
        match p.await.unwrap() {
            Ok(Some(200 | 503)) => answered += 1,
            Ok(_) => closed += 1,
            Err(_) => late += 1,
        }
    }
    assert_eq!(
        (answered, closed, late),
        (2000, 0, 0),
        "(answered, closed unanswered, not answered in 20 s)"
    );
    drop(silent);
}
