//! Mailbox delivery: how the engine's request code reaches a SKU actor. One op is sent with
//! `try_send` (new work: a full mailbox answers `Busy`) or `send` (work that must finish:
//! it waits for room), re-sent when the actor passivated under it, and its reply collected.
//!
//! A frame's new holds on a SKU that sold out (its actor's `sells_nothing` flag, set after
//! each change) are refused here, on the request's thread, without a message: the answer
//! is the actor's (`SkuState::hold_when_sold_out`), and nothing changes. Only a message
//! whose every op is such a hold is answered this way, and only when no command is queued
//! ahead of it (`ActorShared::queued`, counted in by `ActiveSlot::try_send` and out by the actor), so it gets
//! the answer the actor would give it in mailbox order, and the ops of one frame on a SKU
//! still meet its actor in frame order. A flash sale's late carts then cost the SKU's
//! thread nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::task::AtomicWaker;

use tokio::sync::oneshot;

use crate::domain::{Event, Rejection, SkuCommand, SkuId, SkuState, TimeMs};

use super::actor::{ReplyTo, SkuBatch, SkuMsg, SkuOp, SkuReply};
use super::api::Failure;
use super::{Core, Counters, EngineError};

/// How to deliver to a SKU whose mailbox is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Refuse with `Busy` (new work: reserves, stock changes, reads).
    Try,
    /// Wait for room (work that must finish: fulfil, release, extend, expire, undo).
    Wait,
}

/// What `try_send` did with an op.
pub(super) enum Sent {
    Queued,
    Full,
    /// The actor had stopped (passivated): the op comes back to be re-sent.
    Closed(SkuOp),
}

/// Changes committed by SKU actors: (sku, seq, events).
pub(super) type Done = Vec<(SkuId, u64, Vec<Event>)>;

/// Most ops of one frame in one message to a SKU: a mailbox of `mailbox_capacity`
/// messages holds at most this many times as many ops.
pub(super) const MAX_SKU_BATCH: usize = 256;

/// Most times one op is re-sent because its actor passivated under it.
pub(super) const MAX_REDELIVERIES: usize = 8;

/// Sends `op` to `sku`'s actor and waits for its reply.
pub(super) async fn call(
    core: &Arc<Core>,
    sku: &SkuId,
    mut op: SkuOp,
    create: bool,
    delivery: Delivery,
) -> Result<SkuReply, Failure> {
    for _ in 0..MAX_REDELIVERIES {
        let (tx, rx) = oneshot::channel();
        let msg = SkuMsg {
            op,
            reply: ReplyTo::One(tx),
        };
        let kept = (delivery == Delivery::Wait).then(|| msg.op.clone());
        match delivery {
            Delivery::Try => {
                let sent = core
                    .registry
                    .with_active(core, sku, create, |a| match a.try_send(msg) {
                        Ok(()) => Sent::Queued,
                        Err(actix::dev::SendError::Full(_)) => Sent::Full,
                        Err(actix::dev::SendError::Closed(m)) => Sent::Closed(m.op),
                    })
                    .map_err(limit_to_rejection)?;
                match sent {
                    None => return Err(Rejection::UnknownSku(sku.clone()).into()),
                    Some(Sent::Queued) => {}
                    Some(Sent::Full) => {
                        Counters::bump(&core.counters.mailbox_full);
                        return Err(Rejection::Busy.into());
                    }
                    Some(Sent::Closed(back)) => {
                        op = back;
                        continue;
                    }
                }
            }
            Delivery::Wait => {
                let req = core
                    .registry
                    .with_active(core, sku, create, |a| a.send(msg))
                    .map_err(limit_to_rejection)?
                    .ok_or_else(|| Rejection::UnknownSku(sku.clone()))?;
                let _ = req.await;
            }
        }
        match rx.await {
            Ok(SkuReply::Moved(back)) => op = back,
            Ok(reply) => return Ok(reply),
            // Dropped unhandled by an actor that was stopping: nothing was applied.
            Err(_) => match kept {
                Some(k) => op = k,
                None => return Err(Rejection::Busy.into()),
            },
        }
    }
    Err(Rejection::Busy.into())
}

pub(super) fn limit_to_rejection(e: EngineError) -> Failure {
    match e {
        EngineError::Limit(m) => Rejection::InvalidRequest(m).into(),
        other => other.into(),
    }
}

/// Whether a SKU command's record may be refused by the log's back-pressure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// New work: refused (retriable) when the log is over its pending bound.
    New,
    /// Finishes work already begun (other parts, undo, expiry): always logged.
    Finish,
}

pub(super) fn sku_op(
    cmd: SkuCommand,
    id: (u128, u64),
    core: &Core,
    now_ms: TimeMs,
    admit: Admit,
) -> SkuOp {
    sku_op_with(cmd, id, core.catalog(), now_ms, admit)
}

/// [`sku_op`] with a catalog snapshot the caller holds (one per frame).
pub(super) fn sku_op_with(
    cmd: SkuCommand,
    (request, fingerprint): (u128, u64),
    catalog: Arc<crate::domain::Catalog>,
    now_ms: TimeMs,
    admit: Admit,
) -> SkuOp {
    SkuOp::Command {
        cmd,
        request,
        fingerprint,
        catalog,
        now_ms,
        must_log: admit == Admit::Finish,
    }
}

/// Collects `Done` replies into changes; the first non-`Done` becomes the failure.
pub(super) fn collect(results: Vec<(SkuId, Result<SkuReply, Failure>)>) -> (Done, Option<Failure>) {
    let mut done = Vec::with_capacity(results.len());
    let mut failure = None;
    for (sku, r) in results {
        match r {
            Ok(SkuReply::Done { seq, events }) => done.push((sku, seq, events)),
            Ok(SkuReply::Rejected(rej)) => {
                failure.get_or_insert(Failure::Rejected(rej));
            }
            Ok(SkuReply::Failed(e)) => failure = Some(Failure::Error(e)),
            Ok(other) => {
                failure.get_or_insert(Failure::Error(EngineError::Corrupt(format!(
                    "unexpected actor reply {other:?}"
                ))));
            }
            Err(f) => {
                if failure.is_none() || matches!(f, Failure::Error(_)) {
                    failure = Some(f);
                }
            }
        }
    }
    (done, failure)
}

/// What a slot of a [`FrameReplies`] holds.
#[derive(Debug)]
pub(super) enum SlotState {
    /// Not answered yet.
    Waiting,
    /// The actor's answer.
    Reply(SkuReply),
    /// Refused before reaching an actor (full mailbox, unknown SKU, limit).
    Refused(Failure),
    /// Dropped unhandled by an actor that was stopping: nothing was applied.
    Dropped,
}

/// The replies of one round of a request frame's single-SKU operations: one buffer and
/// one waker for the whole frame instead of a oneshot, a future and a wake-up per
/// operation. Each message carries a [`SlotReply`] that fills its slot exactly once (on
/// drop if the actor never answered), and the last one wakes the frame.
#[derive(Debug)]
pub(super) struct FrameReplies {
    slots: parking_lot::Mutex<Vec<SlotState>>,
    /// Slots not filled yet, plus one while messages are still being sent.
    pending: AtomicUsize,
    waker: AtomicWaker,
}

/// The right to fill one slot of a [`FrameReplies`].
#[derive(Debug)]
pub(crate) struct SlotReply {
    frame: Arc<FrameReplies>,
    idx: usize,
    filled: bool,
}

impl SlotReply {
    pub(super) fn send(mut self, reply: SkuReply) {
        self.fill(SlotState::Reply(reply));
    }

    fn fill(&mut self, state: SlotState) {
        if !self.filled {
            self.filled = true;
            self.frame.slots.lock()[self.idx] = state;
            self.frame.done_one();
        }
    }
}

impl Drop for SlotReply {
    fn drop(&mut self) {
        self.fill(SlotState::Dropped);
    }
}

impl FrameReplies {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(FrameReplies {
            slots: parking_lot::Mutex::new((0..n).map(|_| SlotState::Waiting).collect()),
            pending: AtomicUsize::new(n + 1),
            waker: AtomicWaker::new(),
        })
    }

    fn done_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    async fn all_filled(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.pending.load(Ordering::Acquire) == 0 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// A SKU's ops of one round on their way into its message.
enum Pending {
    Empty,
    /// A group of one op: sent as a plain message.
    One(SkuId, SkuOp, SlotReply),
    /// Several ops: one `SkuBatch` (the SKU's id once the first op arrived).
    Many(Option<SkuId>, Vec<(SkuOp, SlotReply)>),
}

/// Which message each op of a round joins, and each message's size and create flag: one
/// message per SKU (its ops in frame order), except that an op that may create the SKU
/// starts a new message after ops that may not (those still find no SKU, as they would
/// have alone), and a message holds at most `MAX_SKU_BATCH` ops. Messages are sent in the
/// order their first op comes.
fn group_ops(round: &[(usize, SkuId, SkuOp)], create: &[bool]) -> (Vec<usize>, Vec<(usize, bool)>) {
    let mut meta: Vec<(usize, bool)> = Vec::new();
    let mut gidx = Vec::with_capacity(round.len());
    let mut group_of: HashMap<&str, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(round.len(), Default::default());
    for (i, sku, _) in round {
        let c = create[*i];
        let g = match group_of.get(sku.as_str()) {
            Some(&g) if (meta[g].1 || !c) && meta[g].0 < MAX_SKU_BATCH => g,
            _ => {
                group_of.insert(sku.as_str(), meta.len());
                meta.push((0, c));
                meta.len() - 1
            }
        };
        meta[g].0 += 1;
        gidx.push(g);
    }
    (gidx, meta)
}

/// Sends every `(sku, op)` with `try_send` (new work: a full mailbox answers `Busy`), each
/// answering into one shared buffer, and waits once for all of them. Ops whose actor
/// passivated under them are re-sent (at most [`MAX_REDELIVERIES`] rounds). Results in
/// the order given.
pub(super) async fn deliver_all(
    core: &Arc<Core>,
    ops: Vec<(SkuId, SkuOp)>,
    create: &[bool],
) -> Vec<(SkuId, Result<SkuReply, Failure>)> {
    let n = ops.len();
    let mut out: Vec<Option<(SkuId, Result<SkuReply, Failure>)>> = (0..n).map(|_| None).collect();
    // (position in `out`, sku, op) still to deliver.
    let mut round: Vec<(usize, SkuId, SkuOp)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, (s, o))| (i, s, o))
        .collect();
    for _ in 0..MAX_REDELIVERIES {
        if round.is_empty() {
            break;
        }
        let frame = FrameReplies::new(round.len());
        let mut skus = Vec::with_capacity(round.len());
        let single = round.len() == 1;
        // First the groups (borrowing the ids: no clone, no allocation per op), then the
        // ops moved into them; a group of one op is sent as it is, without a vector.
        let (gidx, meta) = if single {
            (Vec::new(), Vec::new())
        } else {
            group_ops(&round, create)
        };
        let mut pending: Vec<Pending> = meta
            .iter()
            .map(|&(len, _)| {
                if len == 1 {
                    Pending::Empty
                } else {
                    Pending::Many(None, Vec::with_capacity(len))
                }
            })
            .collect();
        for (slot, (i, sku, op)) in round.drain(..).enumerate() {
            let reply = SlotReply {
                frame: frame.clone(),
                idx: slot,
                filled: false,
            };
            if single {
                send_slot(core, &sku, op, reply, create[i]);
            } else {
                match &mut pending[gidx[slot]] {
                    p @ Pending::Empty => *p = Pending::One(sku.clone(), op, reply),
                    Pending::Many(id, ops) => {
                        id.get_or_insert_with(|| sku.clone());
                        ops.push((op, reply));
                    }
                    Pending::One(..) => unreachable!("invariant: a group of one has one op"),
                }
            }
            skus.push((i, sku));
        }
        for (p, (_, create)) in pending.into_iter().zip(meta) {
            match p {
                Pending::One(sku, op, reply) => send_slot(core, &sku, op, reply, create),
                Pending::Many(Some(sku), ops) => send_batch(core, &sku, ops, create),
                Pending::Many(None, _) | Pending::Empty => {}
            }
        }
        frame.done_one();
        frame.all_filled().await;
        let states = std::mem::take(&mut *frame.slots.lock());
        for ((i, sku), state) in skus.into_iter().zip(states) {
            let r = match state {
                SlotState::Reply(SkuReply::Moved(op)) => {
                    round.push((i, sku, op));
                    continue;
                }
                SlotState::Reply(r) => Ok(r),
                SlotState::Refused(f) => Err(f),
                SlotState::Dropped | SlotState::Waiting => Err(Rejection::Busy.into()),
            };
            out[i] = Some((sku, r));
        }
    }
    // Ops still moving after the last round answer `Busy` (retriable).
    for (i, sku, _) in round {
        out[i] = Some((sku, Err(Rejection::Busy.into())));
    }
    out.into_iter()
        .map(|r| r.expect("invariant: every op answered or still in the last round"))
        .collect()
}

/// What one `try_send` of a slot message did (the message stays with the caller unless
/// queued or answered).
enum Offer {
    Queued,
    /// Answered without the actor: this many new holds on a SKU that sold out.
    Refused(u64),
    Full,
    Closed,
}

/// A message whose new holds a sold-out SKU can refuse without its actor
/// ([`SkuState::hold_when_sold_out`]): all of its ops, or none (the message goes to the
/// actor, which answers them in order as before).
pub(super) trait SoldOut: Sized {
    /// Answers every op as refused and returns how many, or gives the message back.
    fn refuse_sold_out(self, sku: &SkuId) -> Result<u64, Self>;
}

/// The refusal of one op on a SKU that sold out (`None`: not a new hold).
fn sold_out_refusal(sku: &SkuId, op: &SkuOp) -> Option<Rejection> {
    match op {
        SkuOp::Command {
            cmd,
            catalog,
            now_ms,
            ..
        } => SkuState::hold_when_sold_out(sku, cmd, catalog, *now_ms),
        _ => None,
    }
}

impl SoldOut for SkuMsg {
    fn refuse_sold_out(self, sku: &SkuId) -> Result<u64, Self> {
        match (sold_out_refusal(sku, &self.op), self.reply) {
            (Some(r), ReplyTo::Slot(s)) => {
                s.send(SkuReply::Rejected(r));
                Ok(1)
            }
            (_, reply) => Err(SkuMsg { op: self.op, reply }),
        }
    }
}

impl SoldOut for SkuBatch {
    fn refuse_sold_out(self, sku: &SkuId) -> Result<u64, Self> {
        let refusals: Option<Vec<Rejection>> = self
            .ops
            .iter()
            .map(|(op, _)| sold_out_refusal(sku, op))
            .collect();
        let Some(refusals) = refusals else {
            return Err(self);
        };
        let n = refusals.len() as u64;
        for ((_, s), r) in self.ops.into_iter().zip(refusals) {
            s.send(SkuReply::Rejected(r));
        }
        Ok(n)
    }
}

/// Queues one op for `sku`'s actor, answering into `reply`; a refusal fills the slot.
fn send_slot(core: &Arc<Core>, sku: &SkuId, op: SkuOp, reply: SlotReply, create: bool) {
    let msg = SkuMsg {
        op,
        reply: ReplyTo::Slot(reply),
    };
    if let Err((held, failure)) = offer(core, sku, msg, create) {
        refuse(held, failure);
    }
}

/// Queues several ops for `sku`'s actor in one message; a refusal fills all their slots.
fn send_batch(core: &Arc<Core>, sku: &SkuId, ops: Vec<(SkuOp, SlotReply)>, create: bool) {
    if let Err((held, failure)) = offer(core, sku, SkuBatch { ops }, create) {
        refuse_all(held, &failure);
    }
}

/// `try_send`s `msg` to `sku`'s actor, looking the SKU up again when its actor had stopped
/// (passivated). On a refusal (full mailbox, unknown SKU, limit, still moving after
/// [`MAX_REDELIVERIES`]) the message comes back with the failure to answer it with.
fn offer<M>(core: &Arc<Core>, sku: &SkuId, msg: M, create: bool) -> Result<(), (Option<M>, Failure)>
where
    M: actix::Message<Result = ()> + SoldOut + super::actor::Counted + Send + 'static,
    super::actor::SkuActor: actix::Handler<M>,
{
    let mut held = Some(msg);
    for _ in 0..MAX_REDELIVERIES {
        // The message stays in `held` unless the closure runs and the mailbox takes it (or
        // the sold-out SKU answers it).
        let sent = core.registry.with_active(core, sku, create, |a| {
            if a.refuses_holds() {
                if let Some(n) = refuse_sold_out(core, a, sku, &mut held) {
                    return Offer::Refused(n);
                }
            }
            let msg = held.take().expect("invariant: held until sent");
            match a.try_send(msg) {
                Ok(()) => Offer::Queued,
                Err(actix::dev::SendError::Full(m)) => {
                    held = Some(m);
                    Offer::Full
                }
                Err(actix::dev::SendError::Closed(m)) => {
                    held = Some(m);
                    Offer::Closed
                }
            }
        });
        let failure: Failure = match sent {
            Ok(Some(Offer::Queued)) => return Ok(()),
            Ok(Some(Offer::Refused(n))) => {
                core.counters
                    .sold_out_refusals
                    .fetch_add(n, Ordering::Relaxed);
                return Ok(());
            }
            // The actor had stopped (passivated): look the SKU up again.
            Ok(Some(Offer::Closed)) => continue,
            Ok(Some(Offer::Full)) => {
                Counters::bump(&core.counters.mailbox_full);
                Rejection::Busy.into()
            }
            Ok(None) => Rejection::UnknownSku(sku.clone()).into(),
            Err(e) => limit_to_rejection(e),
        };
        return Err((held, failure));
    }
    Err((held, Rejection::Busy.into()))
}

/// The sold-out answer to the message in `held` (taken from it), or `None` with the message
/// left there when some op is not a new hold. Out of line: the send path stays as it was
/// for a SKU that sells.
#[cold]
#[inline(never)]
fn refuse_sold_out<M: SoldOut>(
    core: &Core,
    a: &super::registry::ActiveSlot,
    sku: &SkuId,
    held: &mut Option<M>,
) -> Option<u64> {
    let msg = held.take().expect("invariant: held until sent");
    match msg.refuse_sold_out(sku) {
        Ok(n) => {
            a.touch(core.registry.tick());
            Some(n)
        }
        Err(back) => {
            *held = Some(back);
            None
        }
    }
}

fn refuse_all(msg: Option<SkuBatch>, f: &Failure) {
    for (_, mut s) in msg.map(|m| m.ops).unwrap_or_default() {
        s.fill(SlotState::Refused(f.clone()));
    }
}

fn refuse(msg: Option<SkuMsg>, f: Failure) {
    if let Some(SkuMsg {
        reply: ReplyTo::Slot(mut s),
        ..
    }) = msg
    {
        s.fill(SlotState::Refused(f));
    }
}
