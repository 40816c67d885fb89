//! Property-based model test: random operation sequences run against the real engine (actors,
//! coordinator, expiry) and against a deliberately simple reference model written with plain
//! maps. Outcomes must agree (success or the same rejection code and facts) and the engine's
//! invariants must hold after every step.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::*;
use omnistock::domain::{Rejection, RejectionCode, SkuCommand};
use omnistock::engine::{
    Command, Engine, EngineConfig, Failure, ManualClock, ReserveLine, ReserveRequest,
};
use proptest::prelude::*;

const SKUS: [&str; 3] = ["A", "B", "C"];
const LOCS: [&str; 3] = ["wh-a", "st-b", "ds-c"];

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
    Reserve {
        res: u128,
        web: bool,
        lines: Vec<(usize, u32, Option<usize>)>,
        split: bool,
        ttl: u64,
    },
    Fulfill {
        res: u128,
        line: Option<(usize, u32)>,
    },
    Release {
        res: u128,
    },
    Extend {
        res: u128,
        ttl: u64,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..3usize, -5i64..15).prop_map(|(sku, loc, delta)| Op::Adjust { sku, loc, delta }),
        1 => (0..3usize, 0..3usize, 0u32..3).prop_map(|(sku, loc, qty)| Op::Safety { sku, loc, qty }),
        5 => (1..6u128, any::<bool>(), prop::collection::vec((0..3usize, 1u32..5, prop::option::weighted(0.3, 0..3usize)), 1..4), any::<bool>(), 1..200u64)
            .prop_map(|(res, web, lines, split, ttl)| Op::Reserve { res, web, lines, split, ttl }),
        2 => (1..6u128, prop::option::of((0..3usize, 1u32..4))).prop_map(|(res, line)| Op::Fulfill { res, line }),
        1 => (1..6u128).prop_map(|res| Op::Release { res }),
        1 => (1..6u128, 1..200u64).prop_map(|(res, ttl)| Op::Extend { res, ttl }),
        2 => (0..120u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Clone, Debug, Default)]
struct MBucket {
    on_hand: i64,
    reserved: i64,
    safety: i64,
}

#[derive(Clone, Debug)]
struct MRes {
    expires: u64,
    /// (sku, location, qty) in the order allocated.
    holds: Vec<(usize, usize, i64)>,
}

/// The reference model: plain maps, the rules written out directly.
#[derive(Default)]
struct Model {
    now: u64,
    stock: BTreeMap<(usize, usize), MBucket>,
    known: [bool; 3],
    res: HashMap<u128, MRes>,
}

/// Channel definitions mirrored from `small_catalog`.
fn channel(web: bool) -> (Vec<usize>, i64, Option<i64>) {
    if web {
        (vec![0, 1], 1, None)
    } else {
        (vec![2, 0], 0, Some(5))
    }
}

type MResult = Result<(), Rejection>;

impl Model {
    fn atp(&self, sku: usize, loc: usize) -> i64 {
        self.stock
            .get(&(sku, loc))
            .map_or(0, |b| (b.on_hand - b.reserved - b.safety).max(0))
    }

    fn reserve(
        &mut self,
        res: u128,
        web: bool,
        lines: &[(usize, u32, Option<usize>)],
        split: bool,
        ttl: u64,
    ) -> MResult {
        if self.res.contains_key(&res) {
            return Err(Rejection::ReservationExists(res));
        }
        let (locs, buffer, cap) = channel(web);
        let mut by_sku: BTreeMap<usize, Vec<(u16, i64, Option<usize>)>> = BTreeMap::new();
        for (i, (s, q, l)) in lines.iter().enumerate() {
            by_sku
                .entry(*s)
                .or_default()
                .push((i as u16, i64::from(*q), *l));
        }
        let mut placed = Vec::new();
        for (s, ls) in &by_sku {
            if !self.known[*s] {
                return Err(Rejection::UnknownSku(sku(SKUS[*s])));
            }
            let total: i64 = ls.iter().map(|l| l.1).sum();
            let sum: i64 = locs.iter().map(|l| self.atp(*s, *l)).sum();
            let mut chan_atp = (sum - buffer).max(0);
            if let Some(c) = cap {
                chan_atp = chan_atp.min(c);
            }
            let insufficient =
                |line: u16, requested: i64, available: i64| Rejection::InsufficientStock {
                    line,
                    sku: sku(SKUS[*s]),
                    requested: requested as u32,
                    available: available as u32,
                };
            if total > chan_atp {
                return Err(insufficient(ls[0].0, total, chan_atp));
            }
            let mut avail: Vec<i64> = locs.iter().map(|l| self.atp(*s, *l)).collect();
            let mut taken = vec![0i64; locs.len()];
            for (line, q, l) in ls {
                let Some(l) = l else { continue };
                let Some(i) = locs.iter().position(|x| x == l) else {
                    return Err(Rejection::LocationNotInChannel {
                        location: loc(LOCS[*l]),
                        channel: chan(if web { "web" } else { "store" }),
                    });
                };
                if avail[i] < *q {
                    return Err(insufficient(*line, taken[i] + q, avail[i] + taken[i]));
                }
                avail[i] -= q;
                taken[i] += q;
            }
            let unplaced: Vec<_> = ls.iter().filter(|l| l.2.is_none()).collect();
            let mut rest: i64 = unplaced.iter().map(|l| l.1).sum();
            if let Some(first) = unplaced.first() {
                if split {
                    for i in 0..avail.len() {
                        let t = avail[i].min(rest);
                        avail[i] -= t;
                        taken[i] += t;
                        rest -= t;
                    }
                    if rest > 0 {
                        return Err(insufficient(first.0, rest, avail.iter().sum()));
                    }
                } else {
                    match avail.iter().position(|a| *a >= rest) {
                        Some(i) => taken[i] += rest,
                        None => {
                            return Err(insufficient(first.0, rest, *avail.iter().max().unwrap()))
                        }
                    }
                }
            }
            for (i, t) in taken.iter().enumerate() {
                if *t > 0 {
                    placed.push((*s, locs[i], *t));
                }
            }
        }
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
        Ok(())
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
            b.on_hand -= q;
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
}

fn code(r: &Result<(), Failure>) -> Option<RejectionCode> {
    match r {
        Ok(()) => None,
        Err(Failure::Rejected(r)) => Some(r.code()),
        Err(Failure::Error(e)) => panic!("engine error {e}"),
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = EngineConfig {
        expiry_driver: false,
        arbiters: 2,
        ..EngineConfig::default()
    };
    let e = Engine::start_in_memory_with_clock(cfg, clock.clone()).unwrap();
    small_catalog(&e).await;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let (got, want): (Result<(), Failure>, MResult) = match op.clone() {
            Op::Adjust {
                sku: s,
                loc: l,
                delta,
            } => {
                m.known[s] = true;
                let have = m.stock.get(&(s, l)).map_or(0, |b| b.on_hand);
                let want = if delta == 0 || have + delta < 0 {
                    Err(Rejection::QuantityOutOfRange {
                        what: String::new(),
                        have: have as u32,
                        change: delta,
                        max: 0,
                    })
                } else {
                    m.stock.entry((s, l)).or_default().on_hand += delta;
                    Ok(())
                };
                (adjust(&e, SKUS[s], LOCS[l], delta).await.map(|_| ()), want)
            }
            Op::Safety {
                sku: s,
                loc: l,
                qty,
            } => {
                m.known[s] = true;
                m.stock.entry((s, l)).or_default().safety = i64::from(qty);
                let cmd = Command::Stock {
                    sku: sku(SKUS[s]),
                    command: SkuCommand::SetSafetyStock {
                        location: loc(LOCS[l]),
                        qty,
                    },
                };
                (exec(&e, cmd).await.map(|_| ()), Ok(()))
            }
            Op::Reserve {
                res,
                web,
                lines,
                split,
                ttl,
            } => {
                let want = m.reserve(res, web, &lines, split, ttl);
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
                (exec(&e, cmd).await.map(|_| ()), want)
            }
            Op::Fulfill { res, line } => {
                let want = m.fulfill(res, line);
                let cmd = Command::Fulfill {
                    reservation: res,
                    lines: line.map(|(s, q)| vec![(sku(SKUS[s]), q)]),
                };
                (exec(&e, cmd).await.map(|_| ()), want)
            }
            Op::Release { res } => {
                let want = m.release(res);
                (
                    exec(&e, Command::Release { reservation: res })
                        .await
                        .map(|_| ()),
                    want,
                )
            }
            Op::Extend { res, ttl } => {
                let want = m.live(res).map(|_| ());
                if want.is_ok() {
                    let now = m.now;
                    m.res.get_mut(&res).unwrap().expires = now + ttl;
                }
                (
                    exec(
                        &e,
                        Command::Extend {
                            reservation: res,
                            ttl_ms: ttl,
                        },
                    )
                    .await
                    .map(|_| ()),
                    want,
                )
            }
            Op::Advance { ms } => {
                m.advance(ms);
                clock.advance(ms);
                e.expire_due().await;
                (Ok(()), Ok(()))
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
        if let (Err(Failure::Rejected(g @ Rejection::InsufficientStock { .. })), Err(w)) =
            (&got, &want)
        {
            prop_assert_eq!(g, w, "step {} facts", step);
        }
        check_state(&e, &m, step).await?;
    }
    e.shutdown();
    Ok(())
}

async fn check_state(e: &Engine, m: &Model, step: usize) -> Result<(), TestCaseError> {
    for (s, name) in SKUS.iter().enumerate() {
        if !m.known[s] {
            continue;
        }
        let st = e
            .sku_state(&sku(name))
            .await
            .map_err(|f| TestCaseError::fail(f.to_string()))?;
        prop_assert_eq!(st.check_invariants(), Ok(()), "step {}", step);
        for (l, lname) in LOCS.iter().enumerate() {
            let mb = m.stock.get(&(s, l)).cloned().unwrap_or_default();
            let b = st.bucket(&loc(lname));
            let got = b.map_or((0, 0, 0), |b| {
                (
                    i64::from(b.on_hand),
                    i64::from(b.reserved),
                    i64::from(b.safety_stock),
                )
            });
            prop_assert_eq!(
                got,
                (mb.on_hand, mb.reserved, mb.safety),
                "step {} {} {}",
                step,
                name,
                lname
            );
        }
    }
    for id in 1..6u128 {
        let engine_held: Option<u32> = e.reservation(id).map(|r| r.lines.iter().map(|l| l.1).sum());
        let model_held: Option<u32> = m
            .res
            .get(&id)
            .map(|r| r.holds.iter().map(|h| h.2 as u32).sum());
        prop_assert_eq!(engine_held, model_held, "step {} reservation {}", step, id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
