//! The server's resident memory while a client pipelines large reads and never reads the
//! answers. Its own test binary: the process's RSS is then the server's (and this client's).
//!
//! postmortem: pipelined GET_SKUS (~1 MB answers) without reading grew RSS by 2.2 GB per
//! connection, held for 330 s. Before the output budget this very test grew RSS by 271 MB
//! (with 2,000-SKU answers); with it, by about 10 MB.

/// The server binary's allocator (src/main.rs), since the library sets none:
/// its RSS bounds were measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::engine::{Engine, EngineConfig};
use omnistock::protocol::*;
use omnistock::server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = u32::from_le_bytes(len) as usize;
    let mut all = len.to_vec();
    all.resize(4 + n, 0);
    s.read_exact(&mut all[4..]).await.ok()?;
    Frame::parse(&all, usize::MAX).unwrap().map(|(f, _)| f)
}

fn hello() -> Vec<u8> {
    let h = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "t".into(),
        token: String::new(),
    };
    frame_of(FrameKind::Hello, 0, &h).unwrap().encode()
}

fn request(corr: u64, ops: &[Op]) -> Vec<u8> {
    let ops = ops.iter().map(|o| o.to_raw().unwrap()).collect();
    frame_of(FrameKind::Request, corr, &RequestBatch { ops })
        .unwrap()
        .encode()
}

fn resident_bytes() -> u64 {
    omnistock::http::resident_memory_bytes().expect("procfs")
}

/// A get-many of 2,000 SKUs (each at one location), a few hundred KB of answer.
async fn large_read(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello()).await.unwrap();
    read_frame(&mut s).await.unwrap();
    let loc = Op::UpsertLocation(UpsertLocation {
        request_id: 1,
        location: WireLocation {
            id: "wh".into(),
            kind: WireLocationKind::Warehouse,
            region: "FR".into(),
        },
    });
    s.write_all(&request(1, &[loc])).await.unwrap();
    read_frame(&mut s).await.unwrap();
    let names: Vec<String> = (0..2000).map(|i| format!("SKU-{i:05}")).collect();
    let sets: Vec<Op> = names
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            Op::SetOnHand(SetOnHand {
                request_id: 100 + i as u128,
                sku: sku.clone(),
                location: "wh".into(),
                on_hand: 5,
                expected: None,
                reference: String::new(),
            })
        })
        .collect();
    s.write_all(&request(2, &sets)).await.unwrap();
    read_frame(&mut s).await.unwrap();
    request(3, &[Op::GetSkus(GetSkus { skus: names })])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reader_pipelining_large_reads_does_not_grow_the_server() {
    let engine = EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::start_in_memory(engine).unwrap());
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        write_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, engine).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    let get = large_read(addr).await;
    let base = resident_bytes();
    // A small receive buffer: loopback autotuning would otherwise absorb the answers.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(&hello()).await.unwrap();
    read_frame(&mut s).await.unwrap();
    let writer = tokio::spawn(async move {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            match tokio::time::timeout(Duration::from_secs(1), s.write_all(&get)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return true, // closed by the server
                Err(_) => {}               // not read now: try again
            }
        }
        false
    });
    let t0 = Instant::now();
    let mut peak = base;
    while !writer.is_finished() && t0.elapsed() < Duration::from_secs(25) {
        peak = peak.max(resident_bytes());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        writer.await.unwrap(),
        "the non-reader was never disconnected"
    );
    let grew = peak.saturating_sub(base);
    // The default budget is 4 MiB; allow for allocator slack and the engine's own work.
    assert!(grew < 64 << 20, "RSS grew by {} MiB", grew >> 20);
}
