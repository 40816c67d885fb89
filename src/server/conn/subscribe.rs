//! A connection's subscription requests: the read loop hands SUBSCRIBE and UNSUBSCRIBE to
//! the subscription shell (`feed::subscription::serve`, around the pure lifecycle machine of
//! `crate::subscriber`), started on the first of them; the shell answers them and sends the
//! pushes through the connection's counted output. At the end of the connection its command
//! queue is closed, and the shell, which sees that at once, returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::feed::subscription::{self, Command, Ended, Port};
use crate::protocol::{self, failed, status, Op, Subscribed};
use crate::subscriber::Answer;

use super::super::dispatch::{ok, Ctx};
use super::{response_bytes, Meter, Out};

/// Commands queued for the shell; it takes each at once, so this only smooths a burst.
const COMMAND_QUEUE: usize = 16;

/// The connection's side of the shell: answers encoded as response frames, pushes counted
/// in the connection's meter, room while its queued output is under half its budget.
struct ConnPort {
    ctx: Arc<Ctx>,
    meter: Arc<Meter>,
    live: Arc<AtomicBool>,
}

impl Port for ConnPort {
    fn answer(
        &self,
        corr: u64,
        answer: &Answer,
        subscribed: Option<&Subscribed>,
    ) -> Option<Vec<u8>> {
        let result = match (answer, subscribed) {
            (Answer::Subscribed, Some(s)) => ok(s),
            (Answer::Subscribed, None) => failed(status::INTERNAL_ERROR, "no plan"),
            (Answer::Unsubscribed, _) => ok(&protocol::Empty {}),
            (Answer::AlreadySubscribed, _) => failed(
                status::INVALID_REQUEST,
                "this connection already has a subscription; UNSUBSCRIBE first or open another connection",
            ),
            (Answer::NotSubscribed, _) => failed(
                status::INVALID_REQUEST,
                "no subscription on this connection",
            ),
            (Answer::Invalid(m), _) => failed(status::INVALID_REQUEST, m.clone()),
        };
        Some(response_bytes(&self.ctx, corr, vec![result]))
    }

    fn has_room(&self) -> bool {
        // A connection being dropped has room: its queue closes and the shell ends.
        let m = &self.meter;
        m.must_drop() || m.queued() < m.max_out / 2
    }

    fn held(&self, n: usize) {
        self.meter.add_out(n);
        // Over its budget all the same (a push larger than the room left): disconnected.
        self.meter.over_budget();
    }

    fn released(&self, n: usize) {
        self.meter.sub_out(n);
    }

    fn streaming(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }
}

/// The subscription shell of one connection.
pub(super) struct SubShell {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    /// A stream is being sent (the connection is not idle).
    live: Arc<AtomicBool>,
}

impl SubShell {
    /// Starts the shell; when it ends because the subscriber lagged or the feed stopped,
    /// the connection is woken to close.
    pub(super) fn start(ctx: &Arc<Ctx>, out: &Out) -> SubShell {
        let (commands, cmds) = mpsc::channel(COMMAND_QUEUE);
        let mut cfg = ctx.config.subscription.clone();
        // Push frames keep to the limit the Welcome announced, like responses.
        cfg.max_frame_bytes = ctx.config.max_frame_bytes;
        let live = Arc::new(AtomicBool::new(false));
        let port = ConnPort {
            ctx: ctx.clone(),
            meter: out.meter.clone(),
            live: live.clone(),
        };
        let (engine, tx, kill) = (ctx.engine.clone(), out.tx.clone(), out.meter.kill.clone());
        let task = tokio::spawn(async move {
            match subscription::serve(engine, cfg, cmds, tx, port).await {
                Ended::Lagged { resume_from_seq } => {
                    tracing::info!(resume_from_seq, "subscriber lagged: disconnecting");
                    kill.notify_one();
                }
                Ended::EngineGone(e) => {
                    tracing::warn!(error = %e, "subscription ended");
                    kill.notify_one();
                }
                Ended::Stopped => {}
            }
        });
        SubShell {
            commands,
            task,
            live,
        }
    }

    /// Whether a stream is being sent, or requests are waiting for the shell.
    pub(super) fn active(&self) -> bool {
        self.live.load(Ordering::Acquire) || self.commands.capacity() < COMMAND_QUEUE
    }

    /// Hands a request to the shell (which answers it). False when the shell has ended
    /// (the subscriber lagged: the connection is closing).
    pub(super) async fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).await.is_ok()
    }

    /// Closes the shell's queue (its connection is done) and waits for it: it returns at
    /// once, dropping what it had not handed to the output.
    pub(super) async fn end(self) {
        drop(self.commands);
        let _ = self.task.await;
    }
}

/// The shell's command for a SUBSCRIBE or UNSUBSCRIBE operation, planned here (the plan
/// reads the feed's positions); `Err`: the operation's answer, when it does not decode.
pub(super) fn command(
    ctx: &Ctx,
    corr: u64,
    raw: &protocol::RawOp,
) -> Result<Command, protocol::OpResult> {
    match Op::from_raw(raw) {
        Ok(Some(Op::Subscribe(body))) => {
            let mut cfg = ctx.config.subscription.clone();
            cfg.max_frame_bytes = ctx.config.max_frame_bytes;
            let plan = subscription::plan(ctx.engine.as_ref(), &cfg, &body).map(Box::new);
            Ok(Command::Subscribe { corr, plan })
        }
        Ok(Some(Op::Unsubscribe)) => Ok(Command::Unsubscribe { corr }),
        Ok(_) => Err(failed(
            status::INTERNAL_ERROR,
            "not a subscription operation",
        )),
        Err(e) => Err(failed(
            status::PROTOCOL_ERROR,
            format!("opcode {:#06x}: {e}", raw.opcode),
        )),
    }
}
