//! Property-based model test: random operation sequences run against the real durable engine
//! (actors, coordinator, expiry, log, checkpoints, recovery, passivation) and against a
//! deliberately simple reference model written with plain maps. Outcomes must agree (success
//! or the same rejection code, and the facts where the model knows them) and the engine's
//! invariants must hold after every step.
//!
//! The model does not re-implement sourcing. On each successful reserve it checks properties
//! of the engine's allocation (see [`check_allocation`]) and then adopts it to keep its books;
//! it predicts "insufficient stock" from the channel ATP (a formula) and from whether any
//! allocation with those properties exists (named locations have the room, and without
//! `allow_split` one location can take the rest).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use omnistock::domain::{Event, Rejection, RejectionCode, SkuCommand, StockState};
use omnistock::engine::{
    Change, Command, Engine, EngineConfig, Failure, ManualClock, Outcome, PersistConfig,
    ReserveLine, ReserveRequest,
};
use omnistock::wal::Durability;
use proptest::prelude::*;

const SKUS: [&str; 3] = ["A", "B", "C"];
const LOCS: [&str; 3] = ["wh-a", "st-b", "ds-c"];
const STATES: [StockState; 3] = [
    StockState::Sellable,
    StockState::Damaged,
    StockState::QualityControl,
];

#[derive(Clone, Debug)]
enum Op {
    Adjust {
        sku: usize,
        loc: usize,
        delta: i64,
    },
    Safety {
        sku: usize,
        loc: usize,
        qty: u32,
    },
    /// A cycle count (`SetOnHand`).
    Count {
        sku: usize,
        loc: usize,
        qty: u32,
    },
    Transfer {
        sku: usize,
        from: usize,
        to: usize,
        qty: u32,
    },
    Move {
        sku: usize,
        loc: usize,
        from: usize,
        to: usize,
        qty: u32,
    },
    Reserve {
        res: u128,
        web: bool,
        lines: Vec<(usize, u32, Option<usize>)>,
        split: bool,
        ttl: u64,
    },
    /// `pick` chooses the reservation: see [`Model::pick`].
    Fulfill {
        pick: u8,
        line: Option<(usize, u32)>,
    },
    Release {
        pick: u8,
    },
    Extend {
        pick: u8,
        ttl: u64,
    },
    Advance {
        ms: u64,
    },
    /// Shut the engine down and recover it from its data directory.
    Restart,
    /// Force every SKU actor to passivate (compact form).
    Passivate,
    /// Take a checkpoint (truncates the log).
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, -6i64..15).prop_map(|(sku, loc, delta)| Op::Adjust { sku, loc, delta }),
        1 => (0..3usize, 0..3usize, 0u32..3).prop_map(|(sku, loc, qty)| Op::Safety { sku, loc, qty }),
        2 => (0..3usize, 0..3usize, 0u32..6).prop_map(|(sku, loc, qty)| Op::Count { sku, loc, qty }),
        2 => (0..3usize, 0..3usize, 0..3usize, 1u32..5)
            .prop_map(|(sku, from, to, qty)| Op::Transfer { sku, from, to, qty }),
        2 => (0..3usize, 0..3usize, 0..3usize, 0..3usize, 1u32..4)
            .prop_map(|(sku, loc, from, to, qty)| Op::Move { sku, loc, from, to, qty }),
        6 => (1..5u128, any::<bool>(), prop::collection::vec((0..3usize, 1u32..5, prop::option::weighted(0.3, 0..3usize)), 1..3), any::<bool>(), 20..400u64)
            .prop_map(|(res, web, lines, split, ttl)| Op::Reserve { res, web, lines, split, ttl }),
        3 => (0..8u8, prop::option::of((0..3usize, 1u32..4))).prop_map(|(pick, line)| Op::Fulfill { pick, line }),
        1 => (0..8u8).prop_map(|pick| Op::Release { pick }),
        1 => (0..8u8, 1..300u64).prop_map(|(pick, ttl)| Op::Extend { pick, ttl }),
        1 => (0..120u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
        1 => Just(Op::Passivate),
        1 => Just(Op::Checkpoint),
    ]
}

/// Opening stock (so most reserves have something to take), then random operations.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let opening = prop::collection::vec(
        (0..3usize, 0..3usize, 3i64..15).prop_map(|(sku, loc, delta)| Op::Adjust {
            sku,
            loc,
            delta,
        }),
        2..10,
    );
    (opening, prop::collection::vec(op(), 1..60)).prop_map(|(mut a, b)| {
        a.extend(b);
        a
    })
}

/// One bucket in the model. `net` is on hand minus shortfall (the books: received -
/// adjusted out - sold); the engine shows it as `on_hand = max(net, 0)`,
/// `shortfall = max(-net, 0)`.
#[derive(Clone, Debug, Default)]
struct MBucket {
    net: i64,
    reserved: i64,
    safety: i64,
    damaged: i64,
    qc: i64,
}

impl MBucket {
    fn on_hand(&self) -> i64 {
        self.net.max(0)
    }
    fn shortfall(&self) -> i64 {
        (-self.net).max(0)
    }
    /// Exposed ATP: on_hand - shortfall - reserved - safety, not below 0.
    fn atp(&self) -> i64 {
        (self.net - self.reserved - self.safety).max(0)
    }
    fn oversold(&self) -> bool {
        self.reserved > self.on_hand() || self.shortfall() > 0
    }
}

#[derive(Clone, Debug)]
struct MRes {
    expires: u64,
    /// (sku, location, qty) in the engine's allocation order.
    holds: Vec<(usize, usize, i64)>,
}

/// The reference model: plain maps, the rules written out directly.
#[derive(Default)]
struct Model {
    now: u64,
    stock: BTreeMap<(usize, usize), MBucket>,
    /// SKUs the engine's registry has now (a stock command creates one, even if rejected).
    present: [bool; 3],
    /// SKUs a restart brings back: they had an event logged, or were in a checkpoint.
    durable: [bool; 3],
    res: HashMap<u128, MRes>,
}

/// Channel definitions mirrored from `small_catalog`: (locations by priority, buffer, cap).
fn channel(web: bool) -> (Vec<usize>, i64, Option<i64>) {
    if web {
        (vec![0, 1], 1, None)
    } else {
        (vec![2, 0], 0, Some(5))
    }
}

type MResult = Result<(), Rejection>;

/// What the model expects of a reserve.
#[derive(Debug)]
enum Expect {
    /// Success (the allocation is then checked and adopted).
    Placed,
    /// This rejection, facts included.
    Exactly(Rejection),
    /// Insufficient stock on this SKU because no allocation with the sourcing properties
    /// exists (code and SKU compared, not the engine's reported facts).
    Unplaceable(usize),
}

fn insufficient(s: usize, line: u16, requested: i64, available: i64) -> Rejection {
    Rejection::InsufficientStock {
        line,
        sku: sku(SKUS[s]),
        requested: requested as u32,
        available: available as u32,
    }
}

fn out_of_range(have: i64, change: i64) -> Rejection {
    Rejection::QuantityOutOfRange {
        what: String::new(),
        have: have as u32,
        change,
        max: 0,
    }
}

/// One SKU's lines of a reserve: (line index, qty, named location).
type SkuLines = Vec<(u16, i64, Option<usize>)>;

fn by_sku(lines: &[(usize, u32, Option<usize>)]) -> BTreeMap<usize, SkuLines> {
    let mut m: BTreeMap<usize, SkuLines> = BTreeMap::new();
    for (i, (s, q, l)) in lines.iter().enumerate() {
        m.entry(*s).or_default().push((i as u16, i64::from(*q), *l));
    }
    m
}

/// Units the lines name at each location.
fn named(ls: &SkuLines) -> BTreeMap<usize, i64> {
    let mut n = BTreeMap::new();
    for (_, q, l) in ls {
        if let Some(l) = l {
            *n.entry(*l).or_default() += q;
        }
    }
    n
}

impl Model {
    fn bucket(&self, s: usize, l: usize) -> MBucket {
        self.stock.get(&(s, l)).cloned().unwrap_or_default()
    }

    fn atp(&self, s: usize, l: usize) -> i64 {
        self.bucket(s, l).atp()
    }

    /// ATP(channel) = min(cap, sum of its locations' exposed ATP - buffer), not below 0.
    fn channel_atp(&self, s: usize, web: bool) -> i64 {
        let (locs, buffer, cap) = channel(web);
        let sum: i64 = locs.iter().map(|l| self.atp(s, *l)).sum();
        let a = (sum - buffer).max(0);
        cap.map_or(a, |c| a.min(c))
    }

    fn touch(&mut self, s: usize) {
        self.present[s] = true;
    }

    fn stock_ok(&mut self, s: usize) -> MResult {
        self.durable[s] = true;
        Ok(())
    }

    fn adjust(&mut self, s: usize, l: usize, delta: i64) -> MResult {
        self.touch(s);
        let have = self.bucket(s, l).on_hand();
        if delta == 0 {
            return Err(Rejection::invalid("a change of 0"));
        }
        if have + delta < 0 {
            return Err(out_of_range(have, delta));
        }
        // In: pays the shortfall first (net counts it); out: limited to on hand (above).
        self.stock.entry((s, l)).or_default().net += delta;
        self.stock_ok(s)
    }

    fn count(&mut self, s: usize, l: usize, qty: u32) -> MResult {
        self.touch(s);
        // A count is the truth: the shortfall is forgotten.
        self.stock.entry((s, l)).or_default().net = i64::from(qty);
        self.stock_ok(s)
    }

    fn safety(&mut self, s: usize, l: usize, qty: u32) -> MResult {
        self.touch(s);
        self.stock.entry((s, l)).or_default().safety = i64::from(qty);
        self.stock_ok(s)
    }

    fn transfer(&mut self, s: usize, from: usize, to: usize, qty: u32) -> MResult {
        self.touch(s);
        let q = i64::from(qty);
        if from == to {
            return Err(Rejection::invalid("same location"));
        }
        let b = self.bucket(s, from);
        let free = (b.on_hand() - b.reserved).max(0);
        if free < q {
            return Err(out_of_range(free, -q));
        }
        self.stock.entry((s, from)).or_default().net -= q;
        self.stock.entry((s, to)).or_default().net += q;
        self.stock_ok(s)
    }

    fn move_(&mut self, s: usize, l: usize, from: usize, to: usize, qty: u32) -> MResult {
        self.touch(s);
        let q = i64::from(qty);
        if from == to {
            return Err(Rejection::invalid("same state"));
        }
        let b = self.stock.entry((s, l)).or_default();
        let have = match STATES[from] {
            StockState::Sellable => b.on_hand(),
            StockState::Damaged => b.damaged,
            StockState::QualityControl => b.qc,
        };
        if have < q {
            return Err(out_of_range(have, -q));
        }
        for (state, d) in [(STATES[from], -q), (STATES[to], q)] {
            match state {
                StockState::Sellable => b.net += d,
                StockState::Damaged => b.damaged += d,
                StockState::QualityControl => b.qc += d,
            }
        }
        self.stock_ok(s)
    }

    /// The expected outcome of a reserve (nothing changes: see `adopt`).
    fn reserve(
        &self,
        res: u128,
        web: bool,
        lines: &[(usize, u32, Option<usize>)],
        split: bool,
    ) -> Expect {
        if self.res.contains_key(&res) {
            return Expect::Exactly(Rejection::ReservationExists(res));
        }
        let (locs, _, _) = channel(web);
        for (s, ls) in &by_sku(lines) {
            if !self.present[*s] {
                return Expect::Exactly(Rejection::UnknownSku(sku(SKUS[*s])));
            }
            let total: i64 = ls.iter().map(|l| l.1).sum();
            let chan_atp = self.channel_atp(*s, web);
            if total > chan_atp {
                return Expect::Exactly(insufficient(*s, ls[0].0, total, chan_atp));
            }
            // Lines naming a location, in request order: in the channel, and with room.
            let mut asked: BTreeMap<usize, i64> = BTreeMap::new();
            for (_, q, l) in ls {
                let Some(l) = l else { continue };
                if !locs.contains(l) {
                    return Expect::Exactly(Rejection::LocationNotInChannel {
                        location: loc(LOCS[*l]),
                        channel: chan(if web { "web" } else { "store" }),
                    });
                }
                *asked.entry(*l).or_default() += q;
                if asked[l] > self.atp(*s, *l) {
                    return Expect::Unplaceable(*s);
                }
            }
            // Without split, the rest must fit in one location (with split it always fits:
            // the total is within the channel ATP, itself within the locations' ATP).
            let rest: i64 = ls.iter().filter(|l| l.2.is_none()).map(|l| l.1).sum();
            let fits_one = locs
                .iter()
                .any(|l| self.atp(*s, *l) - asked.get(l).copied().unwrap_or(0) >= rest);
            if rest > 0 && !split && !fits_one {
                return Expect::Unplaceable(*s);
            }
        }
        Expect::Placed
    }

    /// Takes the engine's (checked) allocation as the reservation's holds.
    fn adopt(&mut self, res: u128, ttl: u64, placed: Vec<(usize, usize, i64)>) {
        for (s, l, q) in &placed {
            self.stock.entry((*s, *l)).or_default().reserved += q;
        }
        self.res.insert(
            res,
            MRes {
                expires: self.now + ttl,
                holds: placed,
            },
        );
    }

    /// The reservation a fulfil, release or extend targets: with `pick` < 5 one of the
    /// active reservations (by id, `pick` modulo their number) if there is any, otherwise
    /// id `pick % 4 + 1` (possibly unknown or ended).
    fn pick(&self, pick: u8) -> u128 {
        let mut ids: Vec<u128> = self.res.keys().copied().collect();
        ids.sort_unstable();
        if pick < 5 && !ids.is_empty() {
            ids[usize::from(pick) % ids.len()]
        } else {
            u128::from(pick % 4 + 1)
        }
    }

    fn live(&self, res: u128) -> Result<&MRes, Rejection> {
        let r = self
            .res
            .get(&res)
            .ok_or(Rejection::ReservationNotFound(res))?;
        if r.expires <= self.now {
            return Err(Rejection::ReservationExpired(res));
        }
        Ok(r)
    }

    fn fulfill(&mut self, res: u128, line: Option<(usize, u32)>) -> MResult {
        let r = self.live(res)?.clone();
        let mut take: Vec<(usize, usize, i64)> = r.holds.clone();
        if let Some((s, q)) = line {
            let held: i64 = r.holds.iter().filter(|h| h.0 == s).map(|h| h.2).sum();
            if !r.holds.iter().any(|h| h.0 == s) {
                return Err(Rejection::invalid("not in reservation"));
            }
            if i64::from(q) > held {
                return Err(Rejection::ExceedsHold {
                    sku: sku(SKUS[s]),
                    held: held as u32,
                    requested: q,
                });
            }
            let mut rest = i64::from(q);
            take = Vec::new();
            for h in r.holds.iter().filter(|h| h.0 == s) {
                let t = h.2.min(rest);
                rest -= t;
                take.push((h.0, h.1, t));
            }
        }
        let mut left = r.clone();
        for (s, l, q) in &take {
            let b = self.stock.entry((*s, *l)).or_default();
            // Sold: out of the books even if not on hand (then it is a shortfall).
            b.net -= q;
            b.reserved -= q;
            if let Some(h) = left.holds.iter_mut().find(|h| h.0 == *s && h.1 == *l) {
                h.2 -= q;
            }
        }
        if left.holds.iter().all(|h| h.2 == 0) {
            self.res.remove(&res);
        } else {
            self.res.insert(res, left);
        }
        Ok(())
    }

    fn release(&mut self, res: u128) -> MResult {
        let r = self
            .res
            .remove(&res)
            .ok_or(Rejection::ReservationNotFound(res))?;
        for (s, l, q) in r.holds {
            self.stock.entry((s, l)).or_default().reserved -= q;
        }
        Ok(())
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let due: Vec<u128> = self
            .res
            .iter()
            .filter(|(_, r)| r.expires <= self.now)
            .map(|(k, _)| *k)
            .collect();
        for id in due {
            let _ = self.release(id);
        }
    }

    fn checkpoint(&mut self) {
        for s in 0..3 {
            self.durable[s] |= self.present[s];
        }
    }

    fn restart(&mut self) {
        self.present = self.durable;
        // Recovery expires what is due (nothing is: `advance` already released it).
        self.advance(0);
    }
}

/// The allocation of a successful reserve, per SKU: (location, qty) in event order.
fn allocations(o: &Outcome) -> BTreeMap<usize, Vec<(usize, i64)>> {
    let mut m: BTreeMap<usize, Vec<(usize, i64)>> = BTreeMap::new();
    for c in &o.changes {
        if let Change::Sku {
            sku: s,
            event: Event::HoldPlaced { allocations, .. },
        } = c
        {
            let si = SKUS
                .iter()
                .position(|n| *n == s.as_str())
                .expect("known sku");
            for a in allocations {
                let li = LOCS
                    .iter()
                    .position(|n| *n == a.location.as_str())
                    .expect("known location");
                m.entry(si).or_default().push((li, i64::from(a.qty)));
            }
        }
    }
    m
}

/// Properties of one SKU's allocation (`alloc`, location -> units) for its lines `ls` on a
/// channel with locations `locs` (by priority), given the model's exposed ATP before the
/// reserve (`atp`). The documented sourcing rule (src/domain/sku.rs `source`,
/// docs/architecture.md "How a reservation flows"): lines naming a location take their units
/// there; the rest ("unplaced", lines of one SKU summed) goes, with `allow_split`, to the
/// channel's locations in priority order, each giving all it has left before the next is
/// used; without it, all to the first location (in priority order) that can take all of it.
/// Checked, with `named(L)` = units the lines name at L, `room(L) = atp(L) - named(L)`,
/// `u(L) = alloc(L) - named(L)` and `U` = units of the unplaced lines:
/// 1. only the channel's locations are used;
/// 2. the allocations sum to the lines' quantity;
/// 3. no location gives more than its ATP before the reserve;
/// 4. a named location gives at least what is named there (`u(L) >= 0`), and a SKU whose
///    lines all name a location uses only those locations (follows from 2 and 4);
/// 5. without split, the unplaced units come from one location;
/// 6. priority: with split, `u(L_j) > 0` implies `u(L_i) = room(L_i)` for every
///    higher-priority `L_i`; without split, `u(L_j) > 0` implies `room(L_i) < U` for every
///    higher-priority `L_i` (it could not serve the line).
fn check_allocation(
    ls: &SkuLines,
    alloc: &[(usize, i64)],
    locs: &[usize],
    atp: impl Fn(usize) -> i64,
    split: bool,
) -> Result<(), String> {
    let mut a: BTreeMap<usize, i64> = BTreeMap::new();
    for (l, q) in alloc {
        if !locs.contains(l) || *q <= 0 {
            return Err(format!(
                "1: allocation {q} at {} outside the channel",
                LOCS[*l]
            ));
        }
        *a.entry(*l).or_default() += q;
    }
    let total: i64 = ls.iter().map(|l| l.1).sum();
    if a.values().sum::<i64>() != total {
        return Err(format!("2: allocations {a:?} do not sum to {total}"));
    }
    let named = named(ls);
    let unplaced: i64 = ls.iter().filter(|l| l.2.is_none()).map(|l| l.1).sum();
    let get = |m: &BTreeMap<usize, i64>, l: usize| m.get(&l).copied().unwrap_or(0);
    for &l in locs {
        if get(&a, l) > atp(l) {
            return Err(format!(
                "3: {} at {} above its ATP {}",
                get(&a, l),
                LOCS[l],
                atp(l)
            ));
        }
        if get(&a, l) < get(&named, l) {
            return Err(format!(
                "4: {} named at {}, {} taken",
                get(&named, l),
                LOCS[l],
                get(&a, l)
            ));
        }
    }
    let u = |l: usize| get(&a, l) - get(&named, l);
    let room = |l: usize| atp(l) - get(&named, l);
    let used: Vec<usize> = locs.iter().copied().filter(|l| u(*l) > 0).collect();
    if !split && used.len() > 1 {
        return Err(format!(
            "5: unplaced units split over {used:?} without allow_split"
        ));
    }
    for (j, &lj) in locs.iter().enumerate() {
        if u(lj) == 0 {
            continue;
        }
        for &li in &locs[..j] {
            let kept = if split {
                u(li) == room(li)
            } else {
                room(li) < unplaced
            };
            if !kept {
                return Err(format!(
                    "6: {} used before {} could serve (room {}, given {}, unplaced {unplaced})",
                    LOCS[lj],
                    LOCS[li],
                    room(li),
                    u(li)
                ));
            }
        }
    }
    Ok(())
}

fn code(r: &Result<Arc<Outcome>, Failure>) -> Option<RejectionCode> {
    match r {
        Ok(_) => None,
        Err(Failure::Rejected(r)) => Some(r.code()),
        Err(Failure::Error(e)) => panic!("engine error {e}"),
    }
}

fn persist(dir: &std::path::Path, clock: &Arc<ManualClock>) -> PersistConfig {
    let mut c = PersistConfig::new(dir);
    c.engine = EngineConfig {
        expiry_driver: false,
        arbiters: 2,
        ..EngineConfig::default()
    };
    c.checkpoint_every_records = 0; // checkpoints only when the sequence asks
                                    // Acknowledged once written; a clean shutdown flushes, and the test never crashes.
    c.durability = Durability::Relaxed {
        flush_interval_ms: 50,
    };
    c.clock = Some(clock.clone());
    c
}

fn fail(f: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(f.to_string())
}

fn stock_cmd(s: usize, command: SkuCommand) -> Command {
    Command::Stock {
        sku: sku(SKUS[s]),
        command,
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut e = Engine::open(persist(dir.path(), &clock))
        .await
        .map_err(fail)?;
    small_catalog(&e).await;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let (got, want): (Result<Arc<Outcome>, Failure>, MResult) = match op.clone() {
            Op::Adjust {
                sku: s,
                loc: l,
                delta,
            } => {
                let want = m.adjust(s, l, delta);
                (adjust(&e, SKUS[s], LOCS[l], delta).await, want)
            }
            Op::Safety {
                sku: s,
                loc: l,
                qty,
            } => {
                let want = m.safety(s, l, qty);
                let cmd = SkuCommand::SetSafetyStock {
                    location: loc(LOCS[l]),
                    qty,
                };
                (exec(&e, stock_cmd(s, cmd)).await, want)
            }
            Op::Count {
                sku: s,
                loc: l,
                qty,
            } => {
                let want = m.count(s, l, qty);
                let cmd = SkuCommand::SetOnHand {
                    location: loc(LOCS[l]),
                    on_hand: qty,
                    expected: None,
                    reference: "count".into(),
                };
                (exec(&e, stock_cmd(s, cmd)).await, want)
            }
            Op::Transfer {
                sku: s,
                from,
                to,
                qty,
            } => {
                let want = m.transfer(s, from, to, qty);
                let cmd = SkuCommand::Transfer {
                    from: loc(LOCS[from]),
                    to: loc(LOCS[to]),
                    qty,
                    reference: "t".into(),
                };
                (exec(&e, stock_cmd(s, cmd)).await, want)
            }
            Op::Move {
                sku: s,
                loc: l,
                from,
                to,
                qty,
            } => {
                let want = m.move_(s, l, from, to, qty);
                let cmd = SkuCommand::Move {
                    location: loc(LOCS[l]),
                    from: STATES[from],
                    to: STATES[to],
                    qty,
                };
                (exec(&e, stock_cmd(s, cmd)).await, want)
            }
            Op::Reserve {
                res,
                web,
                lines,
                split,
                ttl,
            } => {
                let expect = m.reserve(res, web, &lines, split);
                let cmd = Command::Reserve(ReserveRequest {
                    reservation: res,
                    channel: chan(if web { "web" } else { "store" }),
                    lines: lines
                        .iter()
                        .map(|(s, q, l)| ReserveLine {
                            sku: sku(SKUS[*s]),
                            qty: *q,
                            location: l.map(|l| loc(LOCS[l])),
                        })
                        .collect(),
                    allow_split: split,
                    ttl_ms: ttl,
                });
                let got = exec(&e, cmd).await;
                match (&expect, &got) {
                    (Expect::Placed, Ok(o)) => {
                        let alloc = allocations(o);
                        let groups = by_sku(&lines);
                        let (locs, _, _) = channel(web);
                        prop_assert_eq!(
                            alloc.keys().collect::<Vec<_>>(),
                            groups.keys().collect::<Vec<_>>(),
                            "step {} {:?}: SKUs allocated",
                            step,
                            op
                        );
                        let mut placed = Vec::new();
                        for (s, ls) in &groups {
                            let a = &alloc[s];
                            if let Err(why) =
                                check_allocation(ls, a, &locs, |l| m.atp(*s, l), split)
                            {
                                return Err(fail(format!(
                                    "step {step} {op:?}: {} allocation {a:?} breaks {why}",
                                    SKUS[*s]
                                )));
                            }
                            placed.extend(a.iter().map(|(l, q)| (*s, *l, *q)));
                        }
                        m.adopt(res, ttl, placed);
                        continue_checks(&e, &m, step).await?;
                        continue;
                    }
                    (Expect::Exactly(w), Err(Failure::Rejected(g))) if w.code() == g.code() => {
                        if let Rejection::InsufficientStock { .. } = w {
                            prop_assert_eq!(g, w, "step {} {:?}: facts", step, op);
                        }
                    }
                    (
                        Expect::Unplaceable(s),
                        Err(Failure::Rejected(Rejection::InsufficientStock { sku: gs, .. })),
                    ) => {
                        prop_assert_eq!(gs.as_str(), SKUS[*s], "step {} {:?}", step, op);
                    }
                    _ => {
                        return Err(fail(format!(
                            "step {step} {op:?}: engine {got:?}, model {expect:?}"
                        )))
                    }
                }
                continue_checks(&e, &m, step).await?;
                continue;
            }
            Op::Fulfill { pick, line } => {
                let res = m.pick(pick);
                let want = m.fulfill(res, line);
                let cmd = Command::Fulfill {
                    reservation: res,
                    lines: line.map(|(s, q)| vec![(sku(SKUS[s]), q)]),
                };
                (exec(&e, cmd).await, want)
            }
            Op::Release { pick } => {
                let res = m.pick(pick);
                let want = m.release(res);
                (exec(&e, Command::Release { reservation: res }).await, want)
            }
            Op::Extend { pick, ttl } => {
                let res = m.pick(pick);
                let want = m.live(res).map(|_| ());
                if want.is_ok() {
                    let now = m.now;
                    m.res.get_mut(&res).unwrap().expires = now + ttl;
                }
                let cmd = Command::Extend {
                    reservation: res,
                    ttl_ms: ttl,
                };
                (exec(&e, cmd).await, want)
            }
            Op::Advance { ms } => {
                m.advance(ms);
                clock.advance(ms);
                e.expire_due().await;
                continue_checks(&e, &m, step).await?;
                continue;
            }
            Op::Restart => {
                e.shutdown();
                drop(e);
                e = Engine::open(persist(dir.path(), &clock))
                    .await
                    .map_err(fail)?;
                m.restart();
                continue_checks(&e, &m, step).await?;
                continue;
            }
            Op::Passivate => {
                e.passivate_all_now();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while e.stats().active_skus > 0 {
                    prop_assert!(
                        std::time::Instant::now() < deadline,
                        "step {}: actors did not passivate: {:?}",
                        step,
                        e.stats()
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue_checks(&e, &m, step).await?;
                continue;
            }
            Op::Checkpoint => {
                e.checkpoint().await.map_err(fail)?;
                m.checkpoint();
                continue_checks(&e, &m, step).await?;
                continue;
            }
        };
        let want_code = want.as_ref().err().map(Rejection::code);
        prop_assert_eq!(
            code(&got),
            want_code,
            "step {} {:?}: engine {:?} model {:?}",
            step,
            op,
            got,
            want
        );
        continue_checks(&e, &m, step).await?;
    }
    e.shutdown();
    Ok(())
}

/// The engine's state equals the model's after `step`.
async fn continue_checks(e: &Engine, m: &Model, step: usize) -> Result<(), TestCaseError> {
    let present: Vec<String> = (0..3)
        .filter(|s| m.present[*s])
        .map(|s| SKUS[s].to_string())
        .collect();
    let ids: Vec<String> = e.sku_ids("").iter().map(|s| s.to_string()).collect();
    prop_assert_eq!(ids, present, "step {} SKUs known", step);
    for (s, name) in SKUS.iter().enumerate() {
        if !m.present[s] {
            continue;
        }
        let st = e.sku_state(&sku(name)).await.map_err(fail)?;
        prop_assert_eq!(st.check_invariants(), Ok(()), "step {}", step);
        let mut oversold = false;
        for (l, lname) in LOCS.iter().enumerate() {
            let mb = m.bucket(s, l);
            oversold |= mb.oversold();
            let got = st.bucket(&loc(lname)).map_or((0, 0, 0, 0, 0, 0, 0), |b| {
                (
                    b.atp(),
                    i64::from(b.on_hand),
                    i64::from(b.shortfall),
                    i64::from(b.reserved),
                    i64::from(b.safety_stock),
                    i64::from(b.damaged),
                    i64::from(b.quality_control),
                )
            });
            prop_assert_eq!(
                got,
                (
                    mb.net - mb.reserved - mb.safety,
                    mb.on_hand(),
                    mb.shortfall(),
                    mb.reserved,
                    mb.safety,
                    mb.damaged,
                    mb.qc
                ),
                "step {} {} {}: (raw atp, on_hand, shortfall, reserved, safety, damaged, qc)",
                step,
                name,
                lname
            );
        }
        let view = e.get(&sku(name)).await.map_err(fail)?;
        prop_assert_eq!(view.oversold, oversold, "step {} {} oversold", step, name);
        let mut channels: Vec<(String, i64)> = view
            .channels
            .iter()
            .map(|(c, a)| (c.to_string(), i64::from(*a)))
            .collect();
        channels.sort();
        let want = vec![
            ("store".to_string(), m.channel_atp(s, false)),
            ("web".to_string(), m.channel_atp(s, true)),
        ];
        prop_assert_eq!(channels, want, "step {} {} channel ATP", step, name);
    }
    for id in 1..5u128 {
        let engine_held: Option<u32> = e.reservation(id).map(|r| r.lines.iter().map(|l| l.1).sum());
        let model_held: Option<u32> = m
            .res
            .get(&id)
            .map(|r| r.holds.iter().map(|h| h.2 as u32).sum());
        prop_assert_eq!(engine_held, model_held, "step {} reservation {}", step, id);
    }
    Ok(())
}

fn run_blocking(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(ops))
}

// postmortem: fulfilling a hold on a bucket an adjustment had emptied used
// `on_hand.saturating_sub(qty)` on a u32, silently dropping the unit sold without stock: the
// engine showed on_hand 0 and not oversold, the model -1, and received - adjusted - sold no
// longer equalled on hand (CI went red for the seeds that hit it). The sale now records the
// missing unit as `shortfall` (on_hand 0, shortfall 1, oversold), paid back by the next
// arrivals. Shrunk case, kept as found.
#[test]
fn regression_fulfil_on_oversold_bucket_records_a_shortfall() {
    run_blocking(vec![
        Op::Adjust {
            sku: 0,
            loc: 0,
            delta: 2,
        },
        Op::Adjust {
            sku: 0,
            loc: 0,
            delta: -3,
        },
        Op::Reserve {
            res: 1,
            web: true,
            lines: vec![(0, 1, None)],
            split: false,
            ttl: 100,
        },
        Op::Adjust {
            sku: 0,
            loc: 0,
            delta: -2,
        },
        Op::Fulfill {
            pick: 0,
            line: None,
        },
    ])
    .unwrap();
}

/// The case stored in tests/engine_model.proptest-regressions before this model changed (its
/// seed no longer generates it): a rejected zero adjustment still creates the SKU.
#[test]
fn regression_stored_seed_zero_adjustment_then_reserve() {
    run_blocking(vec![
        Op::Adjust {
            sku: 1,
            loc: 0,
            delta: 2,
        },
        Op::Adjust {
            sku: 2,
            loc: 0,
            delta: 0,
        },
        Op::Reserve {
            res: 1,
            web: true,
            lines: vec![(1, 1, None)],
            split: false,
            ttl: 1,
        },
    ])
    .unwrap();
}

/// The same shortfall survives passivation, a checkpoint and restarts, then is paid back.
#[test]
fn shortfall_survives_passivation_checkpoint_and_restart() {
    run_blocking(vec![
        Op::Adjust {
            sku: 0,
            loc: 0,
            delta: 2,
        },
        Op::Reserve {
            res: 1,
            web: true,
            lines: vec![(0, 1, None)],
            split: false,
            ttl: 100,
        },
        Op::Adjust {
            sku: 0,
            loc: 0,
            delta: -2,
        },
        Op::Fulfill {
            pick: 0,
            line: None,
        },
        Op::Passivate,
        Op::Restart,
        Op::Checkpoint,
        Op::Restart,
        Op::Adjust {
            sku: 0,
            loc: 0,
            delta: 3,
        },
        Op::Count {
            sku: 0,
            loc: 1,
            qty: 1,
        },
    ])
    .unwrap();
}

proptest! {
    // A fixed number of cases: 256 take 15-30 s in a debug build on 2 shared cores (each
    // case opens a data directory; restarts reopen it). Failures are kept in
    // tests/engine_model.proptest-regressions and replayed first.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_reference_model(ops in ops()) {
        run_blocking(ops)?;
    }
}
