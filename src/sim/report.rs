//! What a run measured: latency histograms per operation (hdrhistogram, microseconds, only
//! operations sent after the warm-up), answer tallies, the live counters behind the progress
//! line, and the final [`Report`] printed human-readable or as JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::check::CheckReport;

/// Operation kinds the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Reserve a cart.
    Reserve = 0,
    /// Fulfil a reservation.
    Fulfill = 1,
    /// Release a reservation.
    Release = 2,
    /// Stock receipt.
    Adjust = 3,
}

const KINDS: [OpKind; 4] = [
    OpKind::Reserve,
    OpKind::Fulfill,
    OpKind::Release,
    OpKind::Adjust,
];

impl OpKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Reserve => "reserve",
            OpKind::Fulfill => "fulfill",
            OpKind::Release => "release",
            OpKind::Adjust => "adjust",
        }
    }
}

/// Highest latency recorded (60 s, in µs); slower answers are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("invariant: constant bounds 1..60e6 with 3 digits are valid")
}

/// Measurements of one connection (merged at the end).
pub struct Tally {
    hists: [Histogram<u64>; 4],
    /// Answered with status 0, per kind.
    ok: [u64; 4],
    /// Rejected, per (kind, status).
    rejected: HashMap<(OpKind, u16), u64>,
    /// Transport errors and error statuses (100+), per kind.
    errors: [u64; 4],
    /// Lines of acknowledged reservations.
    lines_ok: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            hists: [histogram(), histogram(), histogram(), histogram()],
            ok: [0; 4],
            rejected: HashMap::new(),
            errors: [0; 4],
            lines_ok: 0,
        }
    }
}

impl Tally {
    /// Records `n` answers of `kind` that took `latency_us` (a batch shares its latency).
    pub fn latency(&mut self, kind: OpKind, latency_us: u64, n: u64) {
        let v = latency_us.clamp(1, MAX_LATENCY_US);
        // Cannot fail: v is within the histogram's bounds.
        let _ = self.hists[kind as usize].record_n(v, n);
    }
    /// One operation answered with status 0.
    pub fn ok(&mut self, kind: OpKind, lines: u64) {
        self.ok[kind as usize] += 1;
        if kind == OpKind::Reserve {
            self.lines_ok += lines;
        }
    }
    /// One operation rejected with `status` (1..=99).
    pub fn rejected(&mut self, kind: OpKind, status: u16) {
        *self.rejected.entry((kind, status)).or_default() += 1;
    }
    /// One operation failed (transport error or status 100+).
    pub fn error(&mut self, kind: OpKind) {
        self.errors[kind as usize] += 1;
    }
    /// Adds another tally.
    pub fn merge(&mut self, o: &Tally) {
        for k in 0..4 {
            let _ = self.hists[k].add(&o.hists[k]);
            self.ok[k] += o.ok[k];
            self.errors[k] += o.errors[k];
        }
        for (k, v) in &o.rejected {
            *self.rejected.entry(*k).or_default() += v;
        }
        self.lines_ok += o.lines_ok;
    }
    /// p99 of reserves so far, µs (0 when none).
    pub fn reserve_p99_us(&self) -> u64 {
        self.hists[0].value_at_quantile(0.99)
    }
    /// Merges only the reserve histogram of `o` (cheap, for the progress line).
    pub fn merge_reserve_latency(&mut self, o: &Tally) {
        let _ = self.hists[0].add(&o.hists[0]);
    }
}

/// Live counters read by the progress line (all operations, warm-up included).
#[derive(Default)]
pub struct Live {
    /// Operations answered (any status).
    pub answered: AtomicU64,
    /// Reservations acknowledged.
    pub reserved: AtomicU64,
    /// Operations rejected (1..=99).
    pub rejected: AtomicU64,
    /// Of which insufficient stock.
    pub insufficient: AtomicU64,
    /// Transport errors and statuses 100+.
    pub errors: AtomicU64,
}

impl Live {
    /// Adds a batch's answers.
    pub fn add(&self, answered: u64, reserved: u64, rejected: u64, insufficient: u64, errors: u64) {
        self.answered.fetch_add(answered, Ordering::Relaxed);
        if reserved > 0 {
            self.reserved.fetch_add(reserved, Ordering::Relaxed);
        }
        if rejected > 0 {
            self.rejected.fetch_add(rejected, Ordering::Relaxed);
            self.insufficient.fetch_add(insufficient, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }
}

/// One operation kind in the report.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// `reserve`, `fulfill`, `release`, `adjust`.
    pub op: &'static str,
    /// Answered in the measured window (any status).
    pub count: u64,
    /// Answered per second.
    pub per_second: f64,
    /// Answered with status 0.
    pub ok: u64,
    /// Rejected (1..=99).
    pub rejected: u64,
    /// Failed (transport or 100+).
    pub errors: u64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// p90, µs.
    pub p90_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// p99.9, µs.
    pub p999_us: u64,
    /// Max, µs.
    pub max_us: u64,
}

/// The final report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `omnistock` or `redis`.
    pub target: String,
    /// Address or URL.
    pub addr: String,
    /// Workload preset.
    pub workload: String,
    /// Connections.
    pub connections: u32,
    /// Requests in flight per connection.
    pub depth: u32,
    /// Operations per request frame.
    pub batch: u32,
    /// Open-loop rate of checkouts per second, if fixed.
    pub rate: Option<f64>,
    /// Warm-up, seconds (not measured).
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub measured_s: f64,
    /// Per operation kind (kinds never sent are left out).
    pub ops: Vec<OpReport>,
    /// Reservations acknowledged per second.
    pub carts_ok_per_second: f64,
    /// Lines of acknowledged reservations per second.
    pub lines_ok_per_second: f64,
    /// Rejections by `op: status name`.
    pub rejections: BTreeMap<String, u64>,
    /// First error seen, if any.
    pub first_error: Option<String>,
    /// The end-of-run check (None when skipped).
    pub check: Option<CheckReport>,
    /// What feed subscribers saw (None without `--subscribers`).
    pub feed: Option<super::feed::FeedReport>,
}

/// Settings echoed in the report.
pub struct ReportHeader {
    /// `omnistock` or `redis`.
    pub target: String,
    /// Address or URL.
    pub addr: String,
    /// Workload name.
    pub workload: String,
    /// Connections.
    pub connections: u32,
    /// Depth.
    pub depth: u32,
    /// Batch.
    pub batch: u32,
    /// Rate.
    pub rate: Option<f64>,
    /// Warm-up.
    pub warmup_s: f64,
}

impl Report {
    /// Builds the report from the merged tally of the measured window.
    pub fn build(
        h: ReportHeader,
        t: &Tally,
        measured_s: f64,
        first_error: Option<String>,
    ) -> Report {
        let secs = measured_s.max(1e-9);
        let mut ops = Vec::new();
        for k in KINDS {
            let i = k as usize;
            let hist = &t.hists[i];
            let rejected: u64 = t
                .rejected
                .iter()
                .filter(|((kind, _), _)| *kind == k)
                .map(|(_, v)| v)
                .sum();
            let count = t.ok[i] + rejected + t.errors[i];
            if count == 0 {
                continue;
            }
            ops.push(OpReport {
                op: k.name(),
                count,
                per_second: count as f64 / secs,
                ok: t.ok[i],
                rejected,
                errors: t.errors[i],
                p50_us: hist.value_at_quantile(0.50),
                p90_us: hist.value_at_quantile(0.90),
                p99_us: hist.value_at_quantile(0.99),
                p999_us: hist.value_at_quantile(0.999),
                max_us: hist.max(),
            });
        }
        let rejections = t
            .rejected
            .iter()
            .map(|((k, s), v)| {
                (
                    format!("{}: {}", k.name(), crate::protocol::status::name(*s)),
                    *v,
                )
            })
            .collect();
        Report {
            target: h.target,
            addr: h.addr,
            workload: h.workload,
            connections: h.connections,
            depth: h.depth,
            batch: h.batch,
            rate: h.rate,
            warmup_s: h.warmup_s,
            measured_s,
            ops,
            carts_ok_per_second: t.ok[0] as f64 / secs,
            lines_ok_per_second: t.lines_ok as f64 / secs,
            rejections,
            first_error,
            check: None,
            feed: None,
        }
    }

    /// The report as text.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let rate = self.rate.map_or("closed loop".to_string(), |r| {
            format!("open loop at {r:.0} checkouts/s")
        });
        let _ = writeln!(
            s,
            "{} {} workload on {}: {} connections x depth {} x batch {}, {rate}; warm-up {:.1}s, measured {:.1}s",
            self.target, self.workload, self.addr, self.connections, self.depth, self.batch, self.warmup_s, self.measured_s
        );
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>12} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op",
            "answered",
            "per second",
            "ok",
            "rejected",
            "errors",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us"
        );
        for o in &self.ops {
            let _ = writeln!(
                s,
                "{:<8} {:>10} {:>12.0} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
                o.op,
                o.count,
                o.per_second,
                o.ok,
                o.rejected,
                o.errors,
                o.p50_us,
                o.p90_us,
                o.p99_us,
                o.p999_us,
                o.max_us
            );
        }
        let _ = writeln!(
            s,
            "carts reserved {:.0}/s ({:.0} lines/s)",
            self.carts_ok_per_second, self.lines_ok_per_second
        );
        for (k, v) in &self.rejections {
            let _ = writeln!(s, "  rejected {k}: {v}");
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "first error: {e}");
        }
        if let Some(f) = &self.feed {
            s.push_str(&f.human());
        }
        if let Some(c) = &self.check {
            s.push_str(&c.human());
        }
        s
    }
}
