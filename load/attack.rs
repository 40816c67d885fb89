//! `omnistock-attack`: the hostile clients of issue 12 against a real release server, one
//! server per attack, each with a stated connection memory budget, beside a normal client.
//!
//! For each attack: start `omnistock serve` on 127.0.0.1 (a fresh data directory, tokens,
//! `--max-connections-memory-bytes` = `--budget-bytes`), set up its data, measure the base
//! RSS (`VmRSS` of /proc/PID/status), then run the attack from 127.0.0.2 for `--seconds`
//! while a normal client on 127.0.0.1 pings every 5 ms over one connection and probes
//! `/healthz` every 50 ms; RSS is sampled every 20 ms. Then SIGTERM, and a line of the
//! table: peak RSS over the base against the budget, the normal client's ping p50 / p99 /
//! max and errors, the health probes answered, and the server's counters of connections it
//! closed by reason (idle or frame timeout, no room in the memory budget, slow reader) and
//! of requests answered busy for memory, scraped from `/metrics` as the attack ends.
//!
//! The attacks (`--attacks`, comma-separated, default all):
//! * `get-skus`: connections pipelining GET_SKUS of 1,200 SKUs x 16 locations (~1 MB
//!   answers) without reading.
//! * `ping-pipeline`: `--connections` connections pipelining PING without reading.
//! * `partial-frames`: `--connections` connections that send a Hello, then 1 MiB - 1 byte
//!   of a 1 MiB frame, and hold.
//! * `partial-hellos`: `--connections` connections that send 4,000 bytes of a 4,096-byte
//!   Hello (no credential) and hold.
//! * `squatters`: `--connections` silent sockets on the binary port.
//! * `admin-squatters`: `--connections` silent sockets on the admin port.
//! * `token-guess`: 4 loops of Hello with a wrong token, as fast as the server answers.
//!
//! Each attack re-opens what the server closes, and is bounded: `--seconds` (at most 120),
//! `--connections` (at most 5,000) and at most 50 x `--connections` connects. Only loopback
//! addresses (127.0.0.x) are used; the binary refuses anything else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use omnistock::client::{Client, ClientConfig};
use omnistock::protocol::{messages::*, FrameKind, Op, RequestBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "attack-normal-client-token";
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ALL: &[&str] = &[
    "get-skus",
    "ping-pipeline",
    "partial-frames",
    "partial-hellos",
    "squatters",
    "admin-squatters",
    "token-guess",
];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "omnistock-attack",
    about = "Hostile clients against a release omnistock server (loopback only)"
)]
struct Args {
    /// The omnistock binary [default: omnistock beside this binary].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Attacks to run, comma-separated (see the module docs) [default: all].
    #[arg(long, default_value = "all")]
    attacks: String,
    /// Seconds per attack (1..=120).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections per attack (1..=5000).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The server's --max-connections-memory-bytes.
    #[arg(long, default_value_t = 256 << 20)]
    budget_bytes: usize,
    /// The server's --max-output-bytes (per connection).
    #[arg(long, default_value_t = 4 << 20)]
    max_output_bytes: usize,
    /// The server's --per-source-limit-on-loopback. Off by default so that the attacks
    /// reach the server-wide limits (the attackers all connect from 127.0.0.2); on, they
    /// meet the per-source limits a deployment has for a source off loopback.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    per_source_limit: bool,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// A server started for one attack; SIGTERM on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &PathBuf, a: &Args) -> Result<Server, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(bin)
            .args(["serve", "--init", "--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--durability", "relaxed", "--log-level", "warn"])
            .args(["--token", &format!("{TOKEN}:admin")])
            .args([
                "--per-source-limit-on-loopback",
                if a.per_source_limit { "true" } else { "false" },
            ])
            .args([
                "--max-connections-memory-bytes",
                &a.budget_bytes.to_string(),
            ])
            .args(["--max-output-bytes", &a.max_output_bytes.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!("omnistock serve did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            child,
            addr,
            admin,
            _dir: dir,
        })
    }

    fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id()).unwrap_or(0)
    }

    /// SIGTERM, then the exit status (killed after 15 s).
    fn stop(mut self) -> String {
        // SAFETY: a signal to the child we started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return s.to_string(),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "killed after 15 s".into();
                }
            }
        }
    }
}

/// `VmRSS` of a process, in bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn hello(token: &str) -> Vec<u8> {
    let h = Hello {
        magic: omnistock::protocol::MAGIC,
        version: omnistock::protocol::PROTOCOL_VERSION,
        client_name: "attacker".into(),
        token: token.into(),
    };
    omnistock::protocol::frame_of(FrameKind::Hello, 0, &h)
        .expect("encodes")
        .encode()
}

fn request(corr: u64, ops: &[Op]) -> Vec<u8> {
    let ops = ops.iter().map(|o| o.to_raw().expect("encodes")).collect();
    omnistock::protocol::frame_of(FrameKind::Request, corr, &RequestBatch { ops })
        .expect("encodes")
        .encode()
}

/// A connection from the attacker's address, with a small receive buffer (when it is not
/// going to read: loopback would otherwise absorb megabytes).
async fn attacker_socket(to: SocketAddr, small_buffer: bool) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::new(IpAddr::V4(ATTACKER), 0)).ok()?;
    if small_buffer {
        let _ = s.set_recv_buffer_size(4096);
    }
    tokio::time::timeout(Duration::from_secs(2), s.connect(to))
        .await
        .ok()?
        .ok()
}

/// Counts of one attack.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Bounds of one attack run.
struct Bounds {
    until: Instant,
    max_connects: u64,
}

impl Bounds {
    fn go(&self, t: &Tally) -> bool {
        Instant::now() < self.until && t.connects.load(Ordering::Relaxed) < self.max_connects
    }
}

/// One attacking connection, re-opened while the bounds allow: `open` sends its first
/// bytes, then `hold` writes `repeat` (if any) without reading until the server closes,
/// or just waits for the close.
async fn keep_open(
    to: SocketAddr,
    first: Arc<Vec<u8>>,
    repeat: Option<Arc<Vec<u8>>>,
    b: Arc<Bounds>,
    t: Arc<Tally>,
) {
    while b.go(&t) {
        t.connects.fetch_add(1, Ordering::Relaxed);
        let Some(mut s) = attacker_socket(to, true).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let left = b.until.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, async {
            if !first.is_empty() {
                if s.write_all(&first).await.is_err() {
                    return;
                }
                t.bytes_sent
                    .fetch_add(first.len() as u64, Ordering::Relaxed);
            }
            match &repeat {
                Some(r) => {
                    while s.write_all(r).await.is_ok() {
                        t.bytes_sent.fetch_add(r.len() as u64, Ordering::Relaxed);
                    }
                }
                None => {
                    // Hold: the server closing shows as a read of 0 (or an error).
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        // Re-opened at once (a short pause so a refusing server is not spun on).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hellos with wrong tokens, one after another, each read for its answer.
async fn guess_tokens(to: SocketAddr, b: Arc<Bounds>, t: Arc<Tally>) {
    let mut n = 0u64;
    while b.go(&t) {
        t.connects.fetch_add(1, Ordering::Relaxed);
        n += 1;
        let Some(mut s) = attacker_socket(to, false).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let h = hello(&format!("guess-{n:016x}"));
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if s.write_all(&h).await.is_ok() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
            }
        })
        .await;
    }
}

/// The normal client's measurements.
#[derive(Default)]
struct Normal {
    ping_us: Mutex<Vec<u64>>,
    ping_errors: AtomicU64,
    health_ok: AtomicU64,
    health_probes: AtomicU64,
}

/// Pings every 5 ms over one connection (reconnecting after an error) and probes
/// /healthz every 50 ms, on a thread and runtime of its own (so the attack's tasks do not
/// share its scheduler), until `stop`.
fn normal_client(
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Arc<AtomicBool>,
    n: Arc<Normal>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let health = {
                let (stop, n) = (stop.clone(), n.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        n.health_probes.fetch_add(1, Ordering::Relaxed);
                        if healthz(admin).await {
                            n.health_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            };
            let mut cfg = ClientConfig::new(addr.to_string());
            cfg.token = TOKEN.into();
            cfg.client_name = "normal".into();
            cfg.request_timeout = Duration::from_secs(2);
            cfg.max_retries = 0;
            let mut client: Option<Client> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if client.is_none() {
                    client = Client::connect(cfg.clone()).await.ok();
                    if client.is_none() {
                        n.ping_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let t = Instant::now();
                let ok = match &client {
                    Some(c) => c.ping().await.is_ok(),
                    None => false,
                };
                if ok {
                    n.ping_us
                        .lock()
                        .expect("not poisoned")
                        .push(t.elapsed().as_micros() as u64);
                } else {
                    n.ping_errors.fetch_add(1, Ordering::Relaxed);
                    client = None;
                }
            }
            let _ = health.await;
        });
    })
}

/// One `GET /healthz` over a new connection: answered 200 within 2 s.
async fn healthz(admin: SocketAddr) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: omnistock\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// The server's counters of connections it closed, by reason, read from `/metrics` after
/// the attack: idle or frame timeouts, no room for a frame in the connection memory
/// budget, over `max_output_bytes` or not reading, and requests answered busy for memory.
const CLOSE_COUNTERS: [&str; 4] = [
    "omnistock_idle_disconnects_total",
    "omnistock_memory_budget_disconnects_total",
    "omnistock_slow_reader_disconnects_total",
    "omnistock_memory_budget_busy_total",
];

/// `GET /metrics` (at most 8 MiB read, 5 s): the values of [`CLOSE_COUNTERS`] (`None`
/// for one the scrape did not have).
async fn close_counters(admin: SocketAddr) -> [Option<u64>; 4] {
    let scrape = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: omnistock\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        let _ = (&mut s).take(8 << 20).read_to_end(&mut body).await;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    CLOSE_COUNTERS.map(|name| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    })
}

/// The data `get-skus` reads: 1,200 SKUs at 16 locations.
async fn setup_skus(addr: SocketAddr) -> Result<Vec<String>, String> {
    let mut cfg = ClientConfig::new(addr.to_string());
    cfg.token = TOKEN.into();
    let c = Client::connect(cfg).await.map_err(|e| e.to_string())?;
    let mut rid = 1u128;
    let mut next = || {
        rid += 1;
        rid
    };
    let locs: Vec<String> = (0..16).map(|i| format!("wh-{i:02}")).collect();
    let ops: Vec<Op> = locs
        .iter()
        .map(|l| {
            Op::UpsertLocation(UpsertLocation {
                request_id: next(),
                location: WireLocation {
                    id: l.clone(),
                    kind: WireLocationKind::Warehouse,
                    region: "FR".into(),
                },
            })
        })
        .collect();
    c.batch(&ops).await.map_err(|e| e.to_string())?;
    let skus: Vec<String> = (0..1200).map(|i| format!("ATTACK-SKU-{i:05}")).collect();
    let mut ops = Vec::new();
    for s in &skus {
        for l in &locs {
            ops.push(Op::SetOnHand(SetOnHand {
                request_id: next(),
                sku: s.clone(),
                location: l.clone(),
                on_hand: 100,
                expected: None,
                reference: String::new(),
            }));
        }
    }
    for chunk in ops.chunks(4000) {
        c.batch(chunk).await.map_err(|e| e.to_string())?;
    }
    Ok(skus)
}

/// What one attack measured.
struct Row {
    attack: &'static str,
    connections: usize,
    connects: u64,
    sent_mib: f64,
    base: u64,
    peak: u64,
    budget: usize,
    pings: Vec<u64>,
    ping_errors: u64,
    health: (u64, u64),
    /// [`CLOSE_COUNTERS`] at the end of the attack.
    closes: [Option<u64>; 4],
    exit: String,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn run_attack(name: &'static str, bin: &PathBuf, a: &Args) -> Result<Row, String> {
    let server = Server::start(bin, a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (addr, admin) = (server.addr, server.admin);
    let skus = if name == "get-skus" {
        rt.block_on(setup_skus(addr))?
    } else {
        Vec::new()
    };
    std::thread::sleep(Duration::from_millis(500));
    let base = server.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let normal = Arc::new(Normal::default());
    let nc = normal_client(addr, admin, stop.clone(), normal.clone());
    // RSS sampled every 20 ms.
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), server.child.id());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = rss_of(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let conns = a.connections;
    let bounds = Arc::new(Bounds {
        until: Instant::now() + Duration::from_secs(a.seconds),
        max_connects: 50 * conns as u64,
    });
    let tally = Arc::new(Tally::default());
    rt.block_on(async {
        let mut tasks = Vec::new();
        let mut spawn_keep = |to, first: Vec<u8>, repeat: Option<Vec<u8>>, n: usize| {
            let (first, repeat) = (Arc::new(first), repeat.map(Arc::new));
            for _ in 0..n {
                let (b, t) = (bounds.clone(), tally.clone());
                tasks.push(tokio::spawn(keep_open(
                    to,
                    first.clone(),
                    repeat.clone(),
                    b,
                    t,
                )));
            }
        };
        match name {
            "get-skus" => {
                let get = request(1, &[Op::GetSkus(GetSkus { skus: skus.clone() })]);
                spawn_keep(addr, hello(TOKEN), Some(get), conns.min(16));
            }
            "ping-pipeline" => {
                let pings: Vec<u8> = (0..64).flat_map(|i| request(i, &[Op::Ping])).collect();
                spawn_keep(addr, hello(TOKEN), Some(pings), conns);
            }
            "partial-frames" => {
                // A frame announcing 1 MiB (the default limit), all but its last byte.
                let len = (1usize << 20) - 4;
                let mut f = hello(TOKEN);
                f.extend_from_slice(&(len as u32).to_le_bytes());
                f.extend(std::iter::repeat_n(0u8, len - 1));
                spawn_keep(addr, f, None, conns);
            }
            "partial-hellos" => {
                // 4,000 bytes of a 4,096-byte Hello (the largest the server reads).
                let len = 4096usize - 4;
                let mut f = (len as u32).to_le_bytes().to_vec();
                f.extend(std::iter::repeat_n(0u8, 4000 - 4));
                spawn_keep(addr, f, None, conns);
            }
            "squatters" => spawn_keep(addr, Vec::new(), None, conns),
            "admin-squatters" => spawn_keep(admin, Vec::new(), None, conns),
            "token-guess" => {
                for _ in 0..4 {
                    tasks.push(tokio::spawn(guess_tokens(
                        addr,
                        bounds.clone(),
                        tally.clone(),
                    )));
                }
            }
            other => unreachable!("attack {other} was checked"),
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let closes = rt.block_on(close_counters(admin));
    stop.store(true, Ordering::Relaxed);
    let _ = nc.join();
    let _ = sampler.join();
    drop(rt);
    let exit = server.stop();
    let mut pings = std::mem::take(&mut *normal.ping_us.lock().expect("not poisoned"));
    pings.sort_unstable();
    Ok(Row {
        attack: name,
        connections: if name == "get-skus" {
            conns.min(16)
        } else if name == "token-guess" {
            4
        } else {
            conns
        },
        connects: tally.connects.load(Ordering::Relaxed),
        sent_mib: tally.bytes_sent.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        base,
        peak: peak.load(Ordering::Relaxed),
        budget: a.budget_bytes,
        pings,
        ping_errors: normal.ping_errors.load(Ordering::Relaxed),
        health: (
            normal.health_ok.load(Ordering::Relaxed),
            normal.health_probes.load(Ordering::Relaxed),
        ),
        closes,
        exit,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn print_row(r: &Row) -> bool {
    let over = r.peak.saturating_sub(r.base);
    let within = over <= r.budget as u64;
    let p99 = pct(&r.pings, 0.99);
    let fast = p99 < 10.0 && r.ping_errors == 0;
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {}/{} | {} | {} |",
        r.attack,
        r.connections,
        r.connects,
        r.sent_mib,
        mib(r.base),
        mib(r.peak),
        mib(over),
        mib(r.budget as u64),
        if within { "yes" } else { "**no**" },
        r.pings.len(),
        pct(&r.pings, 0.5),
        p99,
        pct(&r.pings, 1.0),
        r.ping_errors,
        r.health.0,
        r.health.1,
        r.closes
            .iter()
            .map(|c| c.map_or("?".into(), |v| v.to_string()))
            .collect::<Vec<_>>()
            .join(" / "),
        r.exit,
    );
    within && fast && r.health.0 == r.health.1
}

/// Raises the open-file limit to its hard limit (the attacks hold thousands of sockets).
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() {
    let mut a = Args::parse();
    a.seconds = a.seconds.clamp(1, 120);
    a.connections = a.connections.clamp(1, 5000);
    let attacks: Vec<&'static str> = if a.attacks == "all" {
        ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for name in a.attacks.split(',').map(str::trim) {
            match ALL.iter().find(|n| **n == name) {
                Some(n) => v.push(*n),
                None => {
                    eprintln!("unknown attack {name:?}; one of {}", ALL.join(", "));
                    std::process::exit(2);
                }
            }
        }
        v
    };
    let Some(bin) = a.server_bin.clone().or_else(|| {
        let me = std::env::current_exe().ok()?;
        Some(me.with_file_name("omnistock"))
    }) else {
        eprintln!("--server-bin: cannot find the omnistock binary");
        std::process::exit(2);
    };
    raise_nofile();
    println!(
        "omnistock-attack: {} s per attack, {} connections, connection budget {:.0} MiB, \
         max output {:.0} MiB per connection; normal client pings every 5 ms",
        a.seconds,
        a.connections,
        mib(a.budget_bytes as u64),
        mib(a.max_output_bytes as u64)
    );
    println!();
    println!("| attack | conns | connects | sent MiB | base RSS MiB | peak RSS MiB | peak − base MiB | budget MiB | within | pings | p50 ms | p99 ms | max ms | ping errors | /healthz ok | closed: idle / no room / slow reader; busy | exit |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all_ok = true;
    for name in attacks {
        match run_attack(name, &bin, &a) {
            Ok(row) => all_ok &= print_row(&row),
            Err(e) => {
                println!("| {name} | failed to run: {e} |");
                all_ok = false;
            }
        }
    }
    std::process::exit(if all_ok { 0 } else { 1 });
}
