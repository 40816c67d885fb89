//! The SKU actor: a thin actix shell over [`SkuState`]. Its handler is always the same four
//! steps — decide, log, apply, reply — with no business rule of its own. Asked by the
//! registry's idle sweeper, it passivates, handing its compact state back to the registry.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, ActorContext, Context, Handler, Message};
use tokio::sync::oneshot;

use crate::domain::{
    AtpExplanation, Catalog, ChannelId, Event, LocationId, LocationUse, Rejection, RequestId,
    SkuCommand, SkuState, SkuVelocity, SkuView, TimeMs,
};

use super::journal::{LogRecord, RecordBody};
use super::{Core, EngineError};
use crate::feed;

/// What a SKU actor is asked to do.
#[derive(Debug, Clone)]
pub(crate) enum SkuOp {
    /// Decide, log, apply.
    Command {
        cmd: SkuCommand,
        request: RequestId,
        fingerprint: u64,
        catalog: Arc<Catalog>,
        now_ms: TimeMs,
        /// Log it even under back-pressure: it finishes work already begun.
        must_log: bool,
    },
    /// Read the SKU.
    View { catalog: Arc<Catalog> },
    /// Explain one channel's ATP for the SKU (a read, like `View`).
    Explain {
        catalog: Arc<Catalog>,
        channel: ChannelId,
    },
    /// Demand velocity and projected stockout at `now_ms` of one channel, or of every
    /// channel of the catalog and every region (a read, like `View`).
    Velocity {
        catalog: Arc<Catalog>,
        channel: Option<ChannelId>,
        now_ms: TimeMs,
    },
    /// A list's question to every SKU (a read, like `View`; `reads::scan`).
    Probe {
        catalog: Arc<Catalog>,
        probe: super::reads::Probe,
        now_ms: TimeMs,
    },
    /// Copy the whole state (checkpoints, tests).
    Snapshot,
    /// How the SKU refers to a location (a catalog delete's check, a read like `View`).
    LocationUse(LocationId),
    /// From the idle sweeper: passivate if no message arrived after sweep tick `tick`.
    Passivate { tick: u64 },
}

/// The actor's answer.
#[derive(Debug)]
pub(crate) enum SkuReply {
    /// Events applied, appended to the journal at `seq`.
    Done { seq: u64, events: Vec<Event> },
    /// Rejected; nothing changed.
    Rejected(Rejection),
    /// A view.
    View(SkuView),
    /// An explained ATP.
    Explained(Box<AtpExplanation>),
    /// Velocities: of the channel asked for, or of every channel and region.
    Velocity(Box<SkuVelocity>),
    /// The answer to a `Probe`.
    Probed(Box<super::reads::Probed>),
    /// A copy of the state.
    State(Box<SkuState>),
    /// How the SKU refers to the location asked about.
    LocationUse(LocationUse),
    /// This actor was passivated before it handled the op: look the SKU up again.
    Moved(SkuOp),
    /// The journal refused the append (storage failure): nothing changed.
    Failed(EngineError),
    /// Answer to `Passivate`.
    Passivated,
}

/// An op and where to answer.
#[derive(Debug)]
pub(crate) struct SkuMsg {
    pub op: SkuOp,
    pub reply: ReplyTo,
}

/// Where an actor's answer goes: a oneshot (one request's own call) or a slot of a
/// request frame's shared reply buffer (the frame path: no channel per operation).
#[derive(Debug)]
pub(crate) enum ReplyTo {
    One(oneshot::Sender<SkuReply>),
    Slot(super::delivery::SlotReply),
}

impl ReplyTo {
    fn send(self, reply: SkuReply) {
        match self {
            // The caller may have gone away (client disconnected); the change stands.
            ReplyTo::One(tx) => {
                let _ = tx.send(reply);
            }
            ReplyTo::Slot(s) => s.send(reply),
        }
    }
}

impl Message for SkuMsg {
    type Result = ();
}

/// Every op of one request frame for one SKU, in frame order: one mailbox slot, one
/// envelope and one wake-up of the actor instead of one each (a hot SKU receives many
/// operations per frame). At most a frame's operations (`max_batch_ops`).
#[derive(Debug)]
pub(crate) struct SkuBatch {
    pub ops: Vec<(SkuOp, super::delivery::SlotReply)>,
}

impl Message for SkuBatch {
    type Result = ();
}

impl SkuOp {
    /// Whether it is a command (may change the SKU): what [`ActorShared::queued`] counts.
    pub(crate) fn is_command(&self) -> bool {
        matches!(self, SkuOp::Command { .. })
    }
}

/// A message to a SKU actor, counted in [`ActorShared::queued`] while in flight when it
/// carries a command (`ActiveSlot::try_send` counts it in, the actor's handler out).
pub(crate) trait Counted {
    fn has_command(&self) -> bool;
}

impl Counted for SkuMsg {
    fn has_command(&self) -> bool {
        self.op.is_command()
    }
}

impl Counted for SkuBatch {
    fn has_command(&self) -> bool {
        self.ops.iter().any(|(op, _)| op.is_command())
    }
}

/// What an actor shares with its registry slot: read there without a message.
#[derive(Debug)]
pub(crate) struct ActorShared {
    /// Sweep tick of the last message handled (or sold-out refusal), read by the sweeper.
    pub last_tick: AtomicU64,
    /// Messages with a command sent to the actor and not handled yet (`delivery` counts
    /// them in, the actor out): a hold is refused without a message only when none is
    /// ahead of it, so it is answered as the actor would answer it in mailbox order.
    pub queued: AtomicU32,
    /// [`SkuState::sells_nothing`] after the last change: a new hold is then refused from
    /// the command alone ([`SkuState::hold_when_sold_out`], `delivery`), without a message.
    pub sells_nothing: AtomicBool,
}

impl ActorShared {
    pub(crate) fn new(state: &SkuState, tick: u64) -> Self {
        ActorShared {
            last_tick: AtomicU64::new(tick),
            queued: AtomicU32::new(0),
            sells_nothing: AtomicBool::new(state.sells_nothing()),
        }
    }
}

/// One SKU's actor.
pub(crate) struct SkuActor {
    state: SkuState,
    core: Arc<Core>,
    generation: u64,
    passivated: bool,
    shared: Arc<ActorShared>,
    /// What `shared.sells_nothing` says (stored only when it changes: the request
    /// threads read that cache line on every send).
    sells_nothing: bool,
}

impl SkuActor {
    pub(crate) fn new(
        state: SkuState,
        core: Arc<Core>,
        generation: u64,
        shared: Arc<ActorShared>,
    ) -> Self {
        let sells_nothing = shared.sells_nothing.load(Ordering::Relaxed);
        SkuActor {
            state,
            core,
            generation,
            passivated: false,
            shared,
            sells_nothing,
        }
    }

    fn try_passivate(&mut self, ctx: &mut Context<Self>) {
        if self
            .core
            .registry
            .passivate(&self.state, self.generation, &self.core.catalog())
            .is_ok()
        {
            self.passivated = true;
            ctx.stop();
        }
    }

    fn command(
        &mut self,
        cmd: &SkuCommand,
        request: RequestId,
        fingerprint: u64,
        catalog: &Catalog,
        now_ms: TimeMs,
        must_log: bool,
    ) -> SkuReply {
        let events = match self.state.decide(cmd, catalog, now_ms) {
            Ok(events) => events,
            Err(r) => return SkuReply::Rejected(r),
        };
        if events.is_empty() {
            // A re-projection that changed nothing: no record (seq 0).
            return SkuReply::Done { seq: 0, events };
        }
        let rec = LogRecord {
            at_ms: now_ms,
            request,
            fingerprint,
            body: RecordBody::Sku {
                sku: self.state.sku.clone(),
                events,
            },
        };
        let RecordBody::Sku { events, .. } = &rec.body else {
            unreachable!("invariant: record built as Sku above")
        };
        let before = feed::before(catalog, &self.state, events);
        let seq = match self.core.journal.append(&rec, must_log) {
            Ok(seq) => seq,
            Err(e) => return SkuReply::Failed(e),
        };
        let RecordBody::Sku { events, .. } = rec.body else {
            unreachable!("invariant: record built as Sku above")
        };
        let was_oversold = self.state.oversold();
        for e in &events {
            self.state.apply(e, seq, now_ms);
        }
        self.count_oversold(was_oversold);
        // Before the reply: whoever learns of this change also sees the flag it leaves.
        let sells_nothing = self.state.sells_nothing();
        if sells_nothing != self.sells_nothing {
            self.sells_nothing = sells_nothing;
            self.shared
                .sells_nothing
                .store(sells_nothing, Ordering::Release);
        }
        if events.last().is_some_and(super::stockout::is_projection) {
            self.core.stockout.follow(&self.state);
        }
        debug_assert_eq!(self.state.check_invariants(), Ok(()));
        let record = feed::derive(catalog, before, &self.state, &events, seq, now_ms);
        self.core.feed.push(seq, Some(Arc::new(record)));
        SkuReply::Done { seq, events }
    }
}

impl SkuActor {
    /// Keeps the engine's oversold-SKU gauge in step when this SKU enters or leaves oversold.
    fn count_oversold(&self, was: bool) {
        let now = self.state.oversold();
        let n = &self.core.counters.oversold_skus;
        match (was, now) {
            (false, true) => {
                n.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                n.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl Actor for SkuActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.core.config.mailbox_capacity);
    }
}

impl SkuActor {
    /// Answers every op but `Passivate`.
    fn serve(&mut self, op: SkuOp) -> SkuReply {
        match op {
            SkuOp::Command {
                cmd,
                request,
                fingerprint,
                catalog,
                now_ms,
                must_log,
            } => self.command(&cmd, request, fingerprint, &catalog, now_ms, must_log),
            SkuOp::View { catalog } => SkuReply::View(self.state.view(&catalog)),
            SkuOp::Explain { catalog, channel } => match self.state.explain(&catalog, &channel) {
                Ok(e) => SkuReply::Explained(Box::new(e)),
                Err(r) => SkuReply::Rejected(r),
            },
            SkuOp::Velocity {
                catalog,
                channel,
                now_ms,
            } => match super::reads::velocities(&self.state, &catalog, channel.as_ref(), now_ms) {
                Ok(v) => SkuReply::Velocity(Box::new(v)),
                Err(r) => SkuReply::Rejected(r),
            },
            SkuOp::Probe {
                catalog,
                probe,
                now_ms,
            } => match probe.run(&self.state, &catalog, now_ms) {
                Ok(p) => SkuReply::Probed(Box::new(p)),
                Err(r) => SkuReply::Rejected(r),
            },
            SkuOp::Snapshot => SkuReply::State(Box::new(self.state.clone())),
            SkuOp::LocationUse(l) => SkuReply::LocationUse(self.state.location_use(&l)),
            SkuOp::Passivate { .. } => SkuReply::Passivated,
        }
    }
}

impl Handler<SkuMsg> for SkuActor {
    type Result = ();

    fn handle(&mut self, msg: SkuMsg, ctx: &mut Context<Self>) {
        let counted = msg.has_command();
        self.handle_one(msg.op, msg.reply, ctx);
        self.handled(counted);
    }
}

impl Handler<SkuBatch> for SkuActor {
    type Result = ();

    fn handle(&mut self, msg: SkuBatch, ctx: &mut Context<Self>) {
        let counted = msg.has_command();
        for (op, reply) in msg.ops {
            self.handle_one(op, ReplyTo::Slot(reply), ctx);
        }
        self.handled(counted);
    }
}

impl SkuActor {
    /// Counts a handled message out of [`ActorShared::queued`] (after the flag it leaves
    /// is published), if `delivery` counted it in.
    fn handled(&self, counted: bool) {
        if counted {
            self.shared.queued.fetch_sub(1, Ordering::Release);
        }
    }

    /// One op, whichever message carried it. After passivation every op goes back
    /// (`Moved`) to be re-sent to the SKU's new actor.
    fn handle_one(&mut self, op: SkuOp, reply: ReplyTo, ctx: &mut Context<Self>) {
        if self.passivated {
            reply.send(SkuReply::Moved(op));
            return;
        }
        let answer = match op {
            SkuOp::Passivate { tick: seen } => {
                // Passivate only if nothing arrived since the sweeper looked.
                if self.shared.last_tick.load(Ordering::Relaxed) <= seen {
                    self.try_passivate(ctx);
                }
                SkuReply::Passivated
            }
            op => {
                // Idle tracking without a timer per actor: a relaxed store of the sweep tick.
                self.shared
                    .last_tick
                    .store(self.core.registry.tick(), Ordering::Relaxed);
                self.serve(op)
            }
        };
        reply.send(answer);
    }
}
