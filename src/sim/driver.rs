//! The driver: `connections` connections, each running `depth` flow loops (so `depth`
//! requests in flight per connection), each loop sending `batch` flows per request frame.
//! Admission takes tickets from one counter: closed loop by default, or open loop at
//! `rate` flows per second where a frame's latency is measured from its *intended* send
//! time (so a stalled server is charged for the requests it delayed: no coordinated
//! omission; a backlog scheduled before the deadline is still sent, for at most 5 s more). Operations sent during the warm-up are applied and recorded in the ledger but
//! not measured. A ticker prints the progress line every second. Every loop stops by
//! itself at the deadline; flows already started finish (their follow-ups included) so the
//! ledger is complete before the final snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::check::{check, Ledger, Snapshot};
use super::report::{Live, OpKind, Report, ReportHeader, Tally};
use super::target::{Cart, ReserveConn};
use super::workload::{merge_lines, sku_name, Fate, Flow, Generator, Line};
use super::{LoadConfig, LoadError, Progress, TargetSpec};
use crate::client::{new_request_id, Client};
use crate::protocol::{
    status, Adjust, Fulfill, Op, OpResult, Release, Reserve, WireAdjustReason, WireLine,
};

/// How long past the deadline an open-loop run keeps sending the flows it scheduled before
/// it (a backlog left by a slow target), so their delay is measured rather than dropped.
const OPEN_LOOP_BACKLOG: Duration = Duration::from_secs(5);

/// What a run produced.
pub struct RunOutcome {
    /// Throughput, latency and the check.
    pub report: Report,
    /// What the target acknowledged, per SKU.
    pub ledger: Ledger,
    /// The target before the run (None when checks are off).
    pub before: Option<Snapshot>,
    /// The target after the run (None when checks are off).
    pub after: Option<Snapshot>,
}

/// One connection's measurements and ledger.
#[derive(Default)]
struct ConnState {
    tally: Tally,
    ledger: Ledger,
}

type Cell = Arc<Mutex<ConnState>>;

struct Shared {
    gen: Generator,
    live: Live,
    tickets: AtomicU64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Open loop: flows scheduled before `end` but delayed by a slow target are still sent
    /// (and charged their delay) until this instant; closed loop: `end`.
    hard_end: Instant,
    rate: Option<f64>,
    max_flows: Option<u64>,
    batch: u64,
    first_error: Mutex<Option<String>>,
    /// The target's name, for errors.
    target: &'static str,
    /// When acknowledged reservations came back, for the feed latency (with subscribers).
    acks: Option<Arc<super::feed::AckClock>>,
}

impl Shared {
    /// The next frame's flow count and the instant its latency is measured from, or `None`
    /// when the run is over.
    async fn admit(&self) -> Option<(Instant, u64)> {
        let now = Instant::now();
        if now >= self.hard_end || (self.rate.is_none() && now >= self.end) {
            return None;
        }
        let t = self.tickets.fetch_add(self.batch, Ordering::Relaxed);
        let n = match self.max_flows {
            Some(max) if t >= max => return None,
            Some(max) => self.batch.min(max - t),
            None => self.batch,
        };
        match self.rate {
            None => Some((now, n)),
            Some(r) => {
                // The frame is due when its last flow arrives.
                let at = self.start + Duration::from_secs_f64((t + n - 1) as f64 / r);
                if at >= self.end {
                    return None;
                }
                tokio::time::sleep_until(at.into()).await;
                Some((at, n))
            }
        }
    }

    fn error(&self, e: String) {
        let mut g = self.first_error.lock();
        if g.is_none() {
            *g = Some(e);
        }
    }
}

fn lines_of(flow: &Flow) -> &[Line] {
    match flow {
        Flow::Checkout { lines, .. } => lines,
        Flow::Restock { .. } => &[],
    }
}

fn first_op(sh: &Shared, flow: &Flow) -> Op {
    let w = sh.gen.workload();
    match flow {
        Flow::Checkout {
            reservation,
            channel,
            lines,
            fate,
        } => Op::Reserve(Reserve {
            request_id: new_request_id(),
            reservation: *reservation,
            channel: w.channels[*channel].clone(),
            lines: lines
                .iter()
                .map(|l| WireLine {
                    sku: sku_name(l.sku),
                    qty: l.qty,
                    location: None,
                })
                .collect(),
            allow_split: true,
            ttl_ms: if *fate == Fate::Expire {
                w.expire_ttl_ms
            } else {
                w.ttl_ms
            },
        }),
        Flow::Restock { sku, location, qty } => Op::Adjust(Adjust {
            request_id: new_request_id(),
            sku: sku_name(*sku),
            location: w.locations[*location].clone(),
            delta: i64::from(*qty),
            reason: WireAdjustReason::Receipt,
            reference: "omnistock-load restock".into(),
        }),
    }
}

/// Counts of one frame's answers for the live counters.
#[derive(Default)]
struct Answers {
    answered: u64,
    reserved: u64,
    rejected: u64,
    insufficient: u64,
    errors: u64,
}

impl Answers {
    fn status(&mut self, s: u16) {
        self.answered += 1;
        match s {
            status::OK => {}
            1..=99 => {
                self.rejected += 1;
                if s == 1 {
                    self.insufficient += 1;
                }
            }
            _ => self.errors += 1,
        }
    }
    fn publish(&self, live: &Live) {
        live.add(
            self.answered,
            self.reserved,
            self.rejected,
            self.insufficient,
            self.errors,
        );
    }
}

/// Applies one answered first operation to the ledger and tally; returns whether a
/// follow-up is due.
fn record_first(
    st: &mut ConnState,
    flow: &Flow,
    status_code: u16,
    measured: bool,
    a: &mut Answers,
) -> bool {
    a.status(status_code);
    let kind = match flow {
        Flow::Checkout { .. } => OpKind::Reserve,
        Flow::Restock { .. } => OpKind::Adjust,
    };
    if measured {
        match status_code {
            status::OK => st.tally.ok(kind, lines_of(flow).len() as u64),
            1..=99 => st.tally.rejected(kind, status_code),
            _ => st.tally.error(kind),
        }
    }
    if status_code != status::OK {
        // A rejection changed nothing; an error status (100+) may or may not have.
        if status_code >= 100 {
            mark_uncertain(st, flow);
        }
        return false;
    }
    match flow {
        Flow::Checkout { lines, fate, .. } => {
            a.reserved += 1;
            for l in lines {
                let e = st.ledger.sku_mut(l.sku);
                e.reserved += u64::from(l.qty);
                if *fate == Fate::Expire {
                    e.expiring += u64::from(l.qty);
                } else {
                    e.open += u64::from(l.qty);
                }
            }
            matches!(fate, Fate::Fulfil | Fate::Release)
        }
        Flow::Restock { sku, qty, .. } => {
            st.ledger.sku_mut(*sku).restocked += u64::from(*qty);
            false
        }
    }
}

fn mark_uncertain(st: &mut ConnState, flow: &Flow) {
    match flow {
        Flow::Checkout { lines, .. } => {
            for l in lines {
                st.ledger.sku_mut(l.sku).uncertain = true;
            }
        }
        Flow::Restock { sku, .. } => st.ledger.sku_mut(*sku).uncertain = true,
    }
}

/// Applies one answered follow-up (fulfil or release).
fn record_follow(
    st: &mut ConnState,
    flow: &Flow,
    status_code: u16,
    measured: bool,
    a: &mut Answers,
) {
    a.status(status_code);
    let Flow::Checkout { lines, fate, .. } = flow else {
        return;
    };
    let kind = if *fate == Fate::Fulfil {
        OpKind::Fulfill
    } else {
        OpKind::Release
    };
    if measured {
        match status_code {
            status::OK => st.tally.ok(kind, 0),
            1..=99 => st.tally.rejected(kind, status_code),
            _ => st.tally.error(kind),
        }
    }
    for l in lines {
        let e = st.ledger.sku_mut(l.sku);
        let q = u64::from(l.qty);
        match status_code {
            status::OK => {
                e.open -= q;
                if *fate == Fate::Fulfil {
                    e.fulfilled += q;
                }
            }
            // Rejected: the hold may still be there or may have expired.
            1..=99 => {
                e.open -= q;
                e.expiring += q;
            }
            _ => e.uncertain = true,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Sends `ops` as one frame; an error is returned as one message for every op.
async fn send(client: &Client, ops: &[Op]) -> Result<Vec<OpResult>, String> {
    match client.batch(ops).await {
        Ok(r) if r.len() == ops.len() => Ok(r),
        Ok(r) => Err(match r.first() {
            Some(x) => format!(
                "status {} ({}): {}",
                x.status,
                status::name(x.status),
                x.message
            ),
            None => "empty response".into(),
        }),
        Err(e) => Err(e.to_string()),
    }
}

async fn omnistock_loop(sh: Arc<Shared>, client: Client, cell: Cell, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while let Some((t0, n)) = sh.admit().await {
        let flows: Vec<Flow> = (0..n).map(|_| sh.gen.next(&mut rng)).collect();
        let ops: Vec<Op> = flows.iter().map(|f| first_op(&sh, f)).collect();
        let res = send(&client, &ops).await;
        let lat = micros(t0.elapsed());
        if let (Some(clock), Ok(results)) = (&sh.acks, &res) {
            note_acks(clock, &flows, results);
        }
        let measured = t0 >= sh.measure_from;
        let mut a = Answers::default();
        let mut follow: Vec<&Flow> = Vec::new();
        {
            let mut st = cell.lock();
            match &res {
                Ok(results) => {
                    for (f, r) in flows.iter().zip(results) {
                        if record_first(&mut st, f, r.status, measured, &mut a) {
                            follow.push(f);
                        }
                    }
                }
                Err(_) => {
                    for f in &flows {
                        a.answered += 1;
                        a.errors += 1;
                        mark_uncertain(&mut st, f);
                        if measured {
                            st.tally.error(match f {
                                Flow::Checkout { .. } => OpKind::Reserve,
                                Flow::Restock { .. } => OpKind::Adjust,
                            });
                        }
                    }
                }
            }
            if measured && res.is_ok() {
                let reserves = flows
                    .iter()
                    .filter(|f| matches!(f, Flow::Checkout { .. }))
                    .count() as u64;
                if reserves > 0 {
                    st.tally.latency(OpKind::Reserve, lat, reserves);
                }
                if n > reserves {
                    st.tally.latency(OpKind::Adjust, lat, n - reserves);
                }
            }
        }
        if let Err(e) = res {
            sh.error(e);
        }
        a.publish(&sh.live);
        if !follow.is_empty() {
            follow_up(&sh, &client, &cell, &follow).await;
        }
    }
}

/// Notes the acknowledgement instant of every accepted reservation's sequence number.
fn note_acks(clock: &super::feed::AckClock, flows: &[Flow], results: &[OpResult]) {
    for (f, r) in flows.iter().zip(results) {
        if r.status == status::OK && matches!(f, Flow::Checkout { .. }) {
            if let Ok(x) = crate::protocol::decode_payload::<crate::protocol::Reserved>(&r.body) {
                clock.acked(x.seq);
            }
        }
    }
}

async fn follow_up(sh: &Shared, client: &Client, cell: &Cell, follow: &[&Flow]) {
    let ops: Vec<Op> = follow
        .iter()
        .filter_map(|f| match f {
            Flow::Checkout {
                reservation, fate, ..
            } => Some(if *fate == Fate::Fulfil {
                Op::Fulfill(Fulfill {
                    request_id: new_request_id(),
                    reservation: *reservation,
                    lines: None,
                })
            } else {
                Op::Release(Release {
                    request_id: new_request_id(),
                    reservation: *reservation,
                })
            }),
            Flow::Restock { .. } => None,
        })
        .collect();
    let t1 = Instant::now();
    let res = send(client, &ops).await;
    let lat = micros(t1.elapsed());
    let measured = t1 >= sh.measure_from;
    let mut a = Answers::default();
    {
        let mut st = cell.lock();
        match &res {
            Ok(results) => {
                let (mut fulfils, mut releases) = (0, 0);
                for (f, r) in follow.iter().zip(results) {
                    if let Flow::Checkout { fate, .. } = f {
                        if *fate == Fate::Fulfil {
                            fulfils += 1;
                        } else {
                            releases += 1;
                        }
                    }
                    record_follow(&mut st, f, r.status, measured, &mut a);
                }
                if measured {
                    if fulfils > 0 {
                        st.tally.latency(OpKind::Fulfill, lat, fulfils);
                    }
                    if releases > 0 {
                        st.tally.latency(OpKind::Release, lat, releases);
                    }
                }
            }
            Err(_) => {
                for f in follow {
                    record_follow(&mut st, f, status::INTERNAL_ERROR, measured, &mut a);
                }
            }
        }
    }
    if let Err(e) = res {
        sh.error(e);
    }
    a.publish(&sh.live);
}

/// The loop of a reservation-only target: carts only (receipts are not sent), no follow-ups.
async fn other_loop(sh: Arc<Shared>, mut con: Box<dyn ReserveConn>, cell: Cell, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = sh.gen.workload();
    while let Some((t0, n)) = sh.admit().await {
        let carts: Vec<Cart> = (0..n)
            .filter_map(|_| match sh.gen.next(&mut rng) {
                Flow::Checkout {
                    reservation,
                    channel,
                    lines,
                    ..
                } => Some(Cart {
                    reservation,
                    lines: merge_lines(&lines),
                    channel: w.channels[channel].clone(),
                }),
                Flow::Restock { .. } => None,
            })
            .collect();
        let res = con.reserve(&carts, w.ttl_ms).await;
        let lat = micros(t0.elapsed());
        let measured = t0 >= sh.measure_from;
        let mut a = Answers::default();
        {
            let mut st = cell.lock();
            match &res {
                Ok(v) if v.len() == carts.len() => {
                    for (cart, held) in carts.iter().zip(v) {
                        let code = if *held { status::OK } else { 1 };
                        a.status(code);
                        if measured {
                            if code == status::OK {
                                st.tally.ok(OpKind::Reserve, cart.lines.len() as u64);
                            } else {
                                st.tally.rejected(OpKind::Reserve, code);
                            }
                        }
                        if code == status::OK {
                            a.reserved += 1;
                            for l in &cart.lines {
                                let e = st.ledger.sku_mut(l.sku);
                                e.reserved += u64::from(l.qty);
                                e.open += u64::from(l.qty);
                            }
                        }
                    }
                    if measured {
                        st.tally.latency(OpKind::Reserve, lat, carts.len() as u64);
                    }
                }
                _ => {
                    for cart in &carts {
                        a.answered += 1;
                        a.errors += 1;
                        if measured {
                            st.tally.error(OpKind::Reserve);
                        }
                        for l in &cart.lines {
                            st.ledger.sku_mut(l.sku).uncertain = true;
                        }
                    }
                }
            }
        }
        match res {
            Err(e) => sh.error(e.to_string()),
            Ok(v) if v.len() != carts.len() => sh.error(format!(
                "{} answered {} of {} calls",
                sh.target,
                v.len(),
                carts.len()
            )),
            Ok(_) => {}
        }
        a.publish(&sh.live);
    }
}

async fn progress_loop(
    sh: Arc<Shared>,
    cells: Vec<Cell>,
    to: Progress,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.changed() => return,
        }
        let answered = sh.live.answered.load(Ordering::Relaxed);
        let mut lat = Tally::default();
        for c in &cells {
            lat.merge_reserve_latency(&c.lock().tally);
        }
        let now = Instant::now();
        let phase = if now < sh.measure_from {
            " warm-up"
        } else {
            ""
        };
        let p99 = if now < sh.measure_from {
            "-".to_string()
        } else {
            format!("{:.2} ms", lat.reserve_p99_us() as f64 / 1000.0)
        };
        let line = format!(
            "[{:>4.0}s{phase}] {:>9} ops/s  reserved {:>10}  rejected {:>9} (insufficient stock {:>9})  errors {:>5}  reserve p99 so far {p99}",
            (now - sh.start).as_secs_f64(),
            answered - last,
            sh.live.reserved.load(Ordering::Relaxed),
            sh.live.rejected.load(Ordering::Relaxed),
            sh.live.insufficient.load(Ordering::Relaxed),
            sh.live.errors.load(Ordering::Relaxed),
        );
        last = answered;
        match to {
            Progress::Stdout => println!("{line}"),
            Progress::Stderr => eprintln!("{line}"),
            Progress::Off => {}
        }
    }
}

enum Conns {
    Omnistock(Vec<Client>),
    Other(Vec<Box<dyn ReserveConn>>),
}

async fn connect(cfg: &LoadConfig) -> Result<Conns, LoadError> {
    match &cfg.target {
        TargetSpec::Omnistock { .. } => {
            let mut v = Vec::with_capacity(cfg.connections as usize);
            for _ in 0..cfg.connections {
                v.push(cfg.target.omnistock_client().await?);
            }
            if let Some(w) = v[0].welcome().await {
                if cfg.batch > w.max_batch_ops || cfg.depth > w.max_in_flight {
                    return Err(LoadError::Config(format!(
                        "the server allows --batch up to {} and --depth up to {}",
                        w.max_batch_ops, w.max_in_flight
                    )));
                }
            }
            Ok(Conns::Omnistock(v))
        }
        TargetSpec::Other(t) => {
            let v = t.connect(cfg.connections).await?;
            if v.len() != cfg.connections as usize {
                return Err(LoadError::Connect(format!(
                    "{}: {} of {} connections",
                    t.name(),
                    v.len(),
                    cfg.connections
                )));
            }
            Ok(Conns::Other(v))
        }
    }
}

async fn take_snapshot(conns: &mut Conns, skus: u32) -> Result<Snapshot, LoadError> {
    match conns {
        Conns::Omnistock(v) => super::check::snapshot(&v[0], skus).await,
        Conns::Other(v) => match v.first_mut() {
            Some(c) => c.snapshot(skus).await,
            None => Err(LoadError::Connect("no connection".into())),
        },
    }
}

/// Runs a load: connects, snapshots, drives the workload, snapshots again, checks, reports.
pub async fn run(cfg: LoadConfig) -> Result<RunOutcome, LoadError> {
    cfg.validate()?;
    let gen = Generator::new(Arc::new(cfg.workload.clone()))?;
    let mut conns = connect(&cfg).await?;
    let skus = cfg.workload.skus;
    let before = if cfg.check {
        Some(take_snapshot(&mut conns, skus).await?)
    } else {
        None
    };
    let start = Instant::now();
    let sh = Arc::new(Shared {
        gen,
        live: Live::default(),
        tickets: AtomicU64::new(0),
        start,
        measure_from: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
        hard_end: start
            + cfg.warmup
            + cfg.duration
            + if cfg.rate.is_some() {
                OPEN_LOOP_BACKLOG
            } else {
                Duration::ZERO
            },
        rate: cfg.rate,
        max_flows: cfg.max_flows,
        batch: u64::from(cfg.batch),
        first_error: Mutex::new(None),
        target: cfg.target.name(),
        acks: (cfg.subscribers > 0).then(|| Arc::new(super::feed::AckClock::new(start))),
    });
    let subscribers = match (&sh.acks, &cfg.target) {
        (Some(clock), TargetSpec::Omnistock { addr, token, tls }) => Some(
            super::feed::start_subscribers(
                cfg.subscribers,
                &cfg.subscriber_prefixes,
                crate::client::ClientConfig {
                    tls: tls.clone(),
                    ..crate::client::ClientConfig::new(addr.clone()).token(token.clone())
                },
                clock.clone(),
                sh.measure_from,
                sh.end,
            )
            .await
            .map_err(|e| LoadError::Connect(format!("subscribers: {e}")))?,
        ),
        _ => None,
    };
    let cells: Vec<Cell> = (0..cfg.connections).map(|_| Cell::default()).collect();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let ticker = tokio::spawn(progress_loop(
        sh.clone(),
        cells.clone(),
        cfg.progress,
        done_rx,
    ));
    let mut loops = Vec::new();
    for (c, cell) in cells.iter().enumerate() {
        for d in 0..cfg.depth {
            let seed =
                cfg.seed ^ ((c as u64) << 20 | u64::from(d)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            loops.push(match &conns {
                Conns::Omnistock(v) => {
                    tokio::spawn(omnistock_loop(sh.clone(), v[c].clone(), cell.clone(), seed))
                }
                Conns::Other(v) => {
                    tokio::spawn(other_loop(sh.clone(), v[c].share(), cell.clone(), seed))
                }
            });
        }
    }
    for l in loops {
        l.await
            .map_err(|e| LoadError::Connect(format!("load task failed: {e}")))?;
    }
    let finished = Instant::now();
    done_tx.send_replace(true);
    let _ = ticker.await;
    let mut tally = Tally::default();
    let mut ledger = Ledger::default();
    for c in &cells {
        let st = c.lock();
        tally.merge(&st.tally);
        ledger.merge(&st.ledger);
    }
    let measured_s = (finished.min(sh.end) - sh.measure_from.min(finished)).as_secs_f64();
    let header = ReportHeader {
        target: cfg.target.name().into(),
        addr: cfg.target.addr().into(),
        workload: cfg.workload.kind.name().into(),
        connections: cfg.connections,
        depth: cfg.depth,
        batch: cfg.batch,
        rate: cfg.rate,
        warmup_s: cfg.warmup.as_secs_f64(),
    };
    let first_error = sh.first_error.lock().clone();
    let mut report = Report::build(header, &tally, measured_s, first_error);
    if let Some(subs) = subscribers {
        report.feed = Some(subs.finish().await.map_err(LoadError::Connect)?);
    }
    let after = match &before {
        Some(b) => {
            let a = take_snapshot(&mut conns, skus).await?;
            report.check = Some(check(b, &ledger, &a, cfg.workload.uses_expiry()));
            Some(a)
        }
        None => None,
    };
    Ok(RunOutcome {
        report,
        ledger,
        before,
        after,
    })
}
