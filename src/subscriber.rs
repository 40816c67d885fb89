//! The lifecycle of a connection's subscription as a pure state machine:
//! [`Machine::step`] takes one [`Input`] and returns the [`Action`]s to carry out, in order.
//! No runtime, no clock, no socket: the async shell (`feed::subscription::serve`) turns the
//! connection's requests, the feed's publications, its timers and its output's room into
//! inputs, and carries out the actions (it renders the records of a `SendPush` range from
//! the feed's ring and queues the frames).
//!
//! Why a machine: the first version spread this over a task, a `watch` for "hold / go /
//! stop" and the read loop, and a SUBSCRIBE followed at once by UNSUBSCRIBE or a close left
//! the task waiting for a change it never saw (issue 12, finding 1). Here every order of
//! SUBSCRIBE, UNSUBSCRIBE, close, publications, drained output and timers is one call each,
//! property-tested against a simple model (below): every request answered exactly once, no
//! push after the UNSUBSCRIBE answer, pushes in order and without a gap from the requested
//! position, `Finish` exactly once after `Close`.
//!
//! Flow control: at most one piece of output (a push range, the snapshot, a heartbeat) is
//! outstanding; the next one waits for [`Input::OutputDrained`]. So a subscriber that does
//! not read holds at most one push beyond its connection's budget check, and its lag grows
//! in the feed's ring, not in memory; when the ring no longer holds its position (or its
//! output stalls) the shell reports [`Input::Lagging`] and the machine drops it.

/// Limits the machine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records behind the publications before a subscriber's pushes are coalesced (it is
    /// catching up); below half of it, every change again.
    pub max_lag_records: u64,
    /// Most records in one `SendPush` range.
    pub max_records_per_push: u64,
}

/// Where a validated SUBSCRIBE starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Pushes begin after this position (after the snapshot, if any).
    pub from: u64,
    /// A snapshot of current values is sent first (at `from`).
    pub snapshot: bool,
    /// Coalesced mode: pushes go out at each [`Input::Tick`] only.
    pub coalesced: bool,
    /// The last published position when the SUBSCRIBE was planned.
    pub published: u64,
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A SUBSCRIBE request (`Err`: it failed validation, with the reason).
    Subscribe {
        /// Its correlation id.
        corr: u64,
        /// Where it starts, or why it is invalid.
        start: Result<Start, String>,
    },
    /// An UNSUBSCRIBE request.
    Unsubscribe {
        /// Its correlation id.
        corr: u64,
    },
    /// The connection closed (or the server stops): nothing more is sent.
    Close,
    /// The feed published everything up to `upto`.
    Published {
        /// The last published position.
        upto: u64,
    },
    /// The output took what the last action queued and has room for more.
    OutputDrained,
    /// The coalescing window, or the position interval, elapsed.
    Tick,
    /// Nothing was sent for the heartbeat interval.
    HeartbeatDue,
    /// The ring no longer holds the next record, or the output stalled: the subscriber can
    /// only resume from `resume_from`.
    Lagging {
        /// The last position the subscriber was told.
        resume_from: u64,
    },
    /// The feed stopped (the engine shut down or failed).
    SourceGone,
}

/// How a request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// SUBSCRIBE accepted: the stream starts after this answer.
    Subscribed,
    /// UNSUBSCRIBE done: nothing of the stream follows this answer.
    Unsubscribed,
    /// SUBSCRIBE while one is active.
    AlreadySubscribed,
    /// UNSUBSCRIBE without a subscription.
    NotSubscribed,
    /// SUBSCRIBE that failed validation.
    Invalid(String),
}

/// Why a stream was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Too far behind: resume from the position.
    Lagged {
        /// Where to resume.
        resume_from: u64,
    },
    /// The feed stopped.
    SourceGone,
}

/// What the shell does, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue the answer of request `corr`.
    SendAnswer {
        /// The request's correlation id.
        corr: u64,
        /// The answer.
        answer: Answer,
    },
    /// Send the snapshot at `at` (then its end marker); report [`Input::OutputDrained`].
    SendSnapshot {
        /// Its position.
        at: u64,
    },
    /// Render and queue the records after `from` up to `to`, ending at `Position { to }`
    /// (coalesced when `coalesce`); report [`Input::OutputDrained`].
    SendPush {
        /// Exclusive start: the previous push's `to` (or the start position).
        from: u64,
        /// Inclusive end.
        to: u64,
        /// Latest value per SKU x channel (coalesced mode, or catching up).
        coalesce: bool,
    },
    /// Queue a `Position { at }` unless the subscriber was told `at` already; report
    /// [`Input::OutputDrained`].
    SendPosition {
        /// The position.
        at: u64,
    },
    /// Queue a `Position { at }` even if unchanged; report [`Input::OutputDrained`].
    SendHeartbeat {
        /// The position.
        at: u64,
    },
    /// Stop whatever the shell does for the stream (a snapshot under way, queued pushes
    /// not yet handed to the output are dropped only by `Drop` and `Finish`).
    StopStream,
    /// The stream ends for `reason` and the connection is closed (the shell queues the
    /// `Lagged` notice if it can).
    Drop {
        /// Why.
        reason: Reason,
    },
    /// The machine is done: the shell returns.
    Finish,
}

/// A stream being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stream {
    /// Everything up to here was rendered (or is the snapshot's position).
    pushed: u64,
    /// The last published position known.
    published: u64,
    /// Output outstanding: wait for `OutputDrained` before the next.
    busy: bool,
    coalesced: bool,
    /// Catching up (every-change mode only): pushes are coalesced.
    catching_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Streaming(Stream),
    /// Dropped (lagged or the feed stopped): waits for `Close`.
    Dropped,
    Closed,
}

/// One connection's subscription lifecycle. Its state is private: only [`Machine::step`]
/// changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    limits: Limits,
    phase: Phase,
    /// The last published position seen, also while idle.
    published: u64,
}

impl Machine {
    /// A machine for a connection without a subscription.
    pub fn new(limits: Limits) -> Machine {
        Machine {
            limits: Limits {
                max_records_per_push: limits.max_records_per_push.max(1),
                ..limits
            },
            phase: Phase::Idle,
            published: 0,
        }
    }

    /// Whether a stream is being sent.
    pub fn streaming(&self) -> bool {
        matches!(self.phase, Phase::Streaming(_))
    }

    /// Whether `Finish` was returned: the shell is done.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Applies `input`; returns what to do, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        match input {
            Input::Subscribe { corr, start } => self.subscribe(corr, start, &mut out),
            Input::Unsubscribe { corr } => {
                let answer = if self.streaming() {
                    self.phase = Phase::Idle;
                    out.push(Action::StopStream);
                    Answer::Unsubscribed
                } else {
                    Answer::NotSubscribed
                };
                if self.phase != Phase::Dropped {
                    out.push(Action::SendAnswer { corr, answer });
                }
            }
            Input::Close => {
                if self.streaming() {
                    out.push(Action::StopStream);
                }
                self.phase = Phase::Closed;
                out.push(Action::Finish);
            }
            Input::Published { upto } => {
                self.published = self.published.max(upto);
                let published = self.published;
                if let Phase::Streaming(s) = &mut self.phase {
                    s.published = s.published.max(published);
                }
                self.pump(false, &mut out);
            }
            Input::OutputDrained => {
                if let Phase::Streaming(s) = &mut self.phase {
                    s.busy = false;
                }
                self.pump(false, &mut out);
            }
            Input::Tick => self.pump(true, &mut out),
            Input::HeartbeatDue => {
                if let Phase::Streaming(s) = &mut self.phase {
                    if !s.busy {
                        s.busy = true;
                        out.push(Action::SendHeartbeat { at: s.pushed });
                    }
                }
            }
            Input::Lagging { resume_from } => self.drop(Reason::Lagged { resume_from }, &mut out),
            Input::SourceGone => self.drop(Reason::SourceGone, &mut out),
        }
        out
    }

    fn subscribe(&mut self, corr: u64, start: Result<Start, String>, out: &mut Vec<Action>) {
        let answer = match (&self.phase, start) {
            (Phase::Dropped, _) => return,
            (Phase::Streaming(_), _) => Answer::AlreadySubscribed,
            (_, Err(why)) => Answer::Invalid(why),
            (_, Ok(st)) => {
                self.published = self.published.max(st.published);
                out.push(Action::SendAnswer {
                    corr,
                    answer: Answer::Subscribed,
                });
                let mut s = Stream {
                    pushed: st.from,
                    published: self.published,
                    busy: st.snapshot,
                    coalesced: st.coalesced,
                    catching_up: false,
                };
                if st.snapshot {
                    out.push(Action::SendSnapshot { at: st.from });
                }
                s.published = s.published.max(st.from);
                self.phase = Phase::Streaming(s);
                self.pump(false, out);
                return;
            }
        };
        out.push(Action::SendAnswer { corr, answer });
    }

    /// The next push when the output is free: every-change mode as soon as something is
    /// published, coalesced mode at a tick; at a tick with nothing to push, the position.
    fn pump(&mut self, tick: bool, out: &mut Vec<Action>) {
        let limits = self.limits;
        let Phase::Streaming(s) = &mut self.phase else {
            return;
        };
        if s.busy {
            return;
        }
        let lag = s.published.saturating_sub(s.pushed);
        if !s.coalesced {
            if !s.catching_up && lag > limits.max_lag_records {
                s.catching_up = true;
            } else if s.catching_up && lag <= limits.max_lag_records / 2 {
                s.catching_up = false;
            }
        }
        if lag > 0 && (!s.coalesced || tick) {
            let to = s.pushed + lag.min(limits.max_records_per_push);
            out.push(Action::SendPush {
                from: s.pushed,
                to,
                coalesce: s.coalesced || s.catching_up,
            });
            s.pushed = to;
            s.busy = true;
        } else if tick {
            out.push(Action::SendPosition { at: s.pushed });
            s.busy = true;
        }
    }

    fn drop(&mut self, reason: Reason, out: &mut Vec<Action>) {
        if self.streaming() {
            out.push(Action::StopStream);
            out.push(Action::Drop { reason });
            self.phase = Phase::Dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The machine against a model that knows only the rules, not the machine's states:
    //! which requests are open, whether a subscription should be live, where its pushes
    //! must continue, and whether the connection closed.
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_lag_records: 8,
        max_records_per_push: 5,
    };

    #[derive(Debug, Clone)]
    enum Ev {
        Subscribe {
            snapshot: bool,
            coalesced: bool,
            invalid: bool,
            back: u64,
        },
        Unsubscribe,
        Close,
        Publish(u64),
        Drained,
        Tick,
        Heartbeat,
        Lagging,
        Gone,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            3 => (any::<bool>(), any::<bool>(), prop::bool::weighted(0.2), 0u64..4)
                .prop_map(|(snapshot, coalesced, invalid, back)| Ev::Subscribe { snapshot, coalesced, invalid, back }),
            2 => Just(Ev::Unsubscribe),
            1 => Just(Ev::Close),
            4 => (1u64..30).prop_map(Ev::Publish),
            5 => Just(Ev::Drained),
            1 => Just(Ev::Tick),
            1 => Just(Ev::Heartbeat),
            1 => Just(Ev::Lagging),
            1 => Just(Ev::Gone),
        ]
    }

    /// What the rules say, tracked from the actions as an observer would see them.
    #[derive(Default)]
    struct Model {
        /// Requests sent and not yet answered, in order.
        open: Vec<u64>,
        /// The connection closed: nothing may follow `Finish`.
        finished: bool,
        /// A stream is live: the next push must start here.
        next_from: Option<u64>,
        /// The stream was dropped: the connection is closing, requests after it go
        /// unanswered.
        dropped: bool,
        /// Output outstanding (the shell would report `OutputDrained`).
        outstanding: bool,
        published: u64,
        subscribed_at: Option<u64>,
    }

    fn run(events: Vec<Ev>) -> Result<(), TestCaseError> {
        let mut m = Machine::new(LIMITS);
        let mut model = Model::default();
        let mut corr = 0u64;
        let mut steps = Vec::new();
        for e in events {
            let input = match e.clone() {
                Ev::Subscribe {
                    snapshot,
                    coalesced,
                    invalid,
                    back,
                } => {
                    corr += 1;
                    model.open.push(corr);
                    let from = model.published.saturating_sub(back);
                    let start = if invalid {
                        Err("bad filter".to_string())
                    } else {
                        Ok(Start {
                            from,
                            snapshot,
                            coalesced,
                            published: model.published,
                        })
                    };
                    model.subscribed_at = Some(from);
                    Input::Subscribe { corr, start }
                }
                Ev::Unsubscribe => {
                    corr += 1;
                    model.open.push(corr);
                    Input::Unsubscribe { corr }
                }
                Ev::Close => Input::Close,
                Ev::Publish(n) => {
                    model.published += n;
                    Input::Published {
                        upto: model.published,
                    }
                }
                // The shell reports drained output only when some is outstanding.
                Ev::Drained if !model.outstanding => continue,
                Ev::Drained => Input::OutputDrained,
                Ev::Tick => Input::Tick,
                Ev::Heartbeat => Input::HeartbeatDue,
                Ev::Lagging => Input::Lagging { resume_from: 0 },
                Ev::Gone => Input::SourceGone,
            };
            let actions = m.step(input.clone());
            steps.push((input.clone(), actions.clone()));
            if model.finished {
                prop_assert!(actions.is_empty(), "after Finish: {steps:?}");
                continue;
            }
            if matches!(input, Input::OutputDrained) {
                model.outstanding = false;
            }
            for a in &actions {
                match a {
                    Action::SendAnswer { corr, answer } => {
                        let pos = model.open.iter().position(|c| c == corr);
                        prop_assert!(pos.is_some(), "answered twice or never asked: {steps:?}");
                        model.open.remove(pos.unwrap());
                        match answer {
                            Answer::Subscribed => {
                                prop_assert!(model.next_from.is_none(), "two streams: {steps:?}");
                                model.next_from = model.subscribed_at;
                            }
                            Answer::Unsubscribed => {
                                prop_assert!(
                                    model.next_from.is_none(),
                                    "stream not stopped first: {steps:?}"
                                );
                            }
                            Answer::AlreadySubscribed => prop_assert!(model.next_from.is_some()),
                            Answer::NotSubscribed => prop_assert!(model.next_from.is_none()),
                            Answer::Invalid(_) => prop_assert!(model.next_from.is_none()),
                        }
                    }
                    Action::StopStream => {
                        prop_assert!(
                            model.next_from.is_some(),
                            "stop without a stream: {steps:?}"
                        );
                        model.next_from = None;
                        model.outstanding = false;
                    }
                    Action::SendPush { from, to, .. } => {
                        prop_assert_eq!(
                            Some(*from),
                            model.next_from,
                            "gap or overlap: {:?}",
                            steps
                        );
                        prop_assert!(to > from && *to <= model.published, "range: {steps:?}");
                        prop_assert!(to - from <= LIMITS.max_records_per_push);
                        prop_assert!(!model.outstanding, "two outstanding: {steps:?}");
                        model.next_from = Some(*to);
                        model.outstanding = true;
                    }
                    Action::SendSnapshot { at } => {
                        prop_assert_eq!(Some(*at), model.next_from);
                        prop_assert!(!model.outstanding);
                        model.outstanding = true;
                    }
                    Action::SendPosition { at } | Action::SendHeartbeat { at } => {
                        prop_assert_eq!(Some(*at), model.next_from, "position: {:?}", steps);
                        prop_assert!(!model.outstanding);
                        model.outstanding = true;
                    }
                    Action::Drop { .. } => {
                        prop_assert!(model.next_from.is_none(), "stop first: {steps:?}");
                        model.dropped = true;
                        model.open.clear(); // the connection closes: nothing more is read
                    }
                    Action::Finish => {
                        prop_assert!(matches!(input, Input::Close), "{steps:?}");
                        prop_assert!(model.next_from.is_none(), "stream left running: {steps:?}");
                        model.finished = true;
                    }
                }
            }
            if model.dropped {
                // After a drop the requests read before the connection closed are not
                // answered (the client is told `Lagged` and disconnected).
                model.open.clear();
            }
            match input {
                // A request is answered in the same step, unless the stream was dropped.
                Input::Subscribe { .. } | Input::Unsubscribe { .. } if !model.dropped => {
                    prop_assert!(model.open.is_empty(), "unanswered: {steps:?}");
                }
                Input::Close => prop_assert!(model.finished, "no Finish after Close: {steps:?}"),
                _ => {}
            }
            // Liveness: a live stream with nothing outstanding has pushed what was
            // published, unless it is coalesced (it waits for a tick).
            if let (Some(next), false) = (model.next_from, model.outstanding) {
                let coalesced = matches!(&m.phase, Phase::Streaming(s) if s.coalesced);
                prop_assert!(
                    coalesced || next >= model.published,
                    "stuck at {next}: {steps:?}"
                );
            }
        }
        // However it went, Close ends it.
        let actions = m.step(Input::Close);
        if model.finished {
            prop_assert!(actions.is_empty());
        } else {
            prop_assert_eq!(actions.last(), Some(&Action::Finish));
        }
        prop_assert!(m.finished());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_interleaving_keeps_the_lifecycle_rules(events in prop::collection::vec(ev(), 0..60)) {
            run(events)?;
        }
    }

    // postmortem (issue 12, finding 1): SUBSCRIBE and UNSUBSCRIBE in one write, before the
    // stream had started, left UNSUBSCRIBE unanswered and the connection stuck.
    #[test]
    fn subscribe_then_unsubscribe_at_once_answers_both_and_stops() {
        let mut m = Machine::new(LIMITS);
        let start = Start {
            from: 3,
            snapshot: false,
            coalesced: false,
            published: 5,
        };
        let a = m.step(Input::Subscribe {
            corr: 7,
            start: Ok(start),
        });
        assert_eq!(
            a,
            vec![
                Action::SendAnswer {
                    corr: 7,
                    answer: Answer::Subscribed
                },
                Action::SendPush {
                    from: 3,
                    to: 5,
                    coalesce: false
                },
            ]
        );
        let a = m.step(Input::Unsubscribe { corr: 8 });
        assert_eq!(
            a,
            vec![
                Action::StopStream,
                Action::SendAnswer {
                    corr: 8,
                    answer: Answer::Unsubscribed
                }
            ]
        );
        assert_eq!(m.step(Input::OutputDrained), vec![]);
        assert_eq!(m.step(Input::Close), vec![Action::Finish]);
    }

    #[test]
    fn close_right_after_subscribe_finishes() {
        let mut m = Machine::new(LIMITS);
        let start = Start {
            from: 0,
            snapshot: true,
            coalesced: false,
            published: 0,
        };
        m.step(Input::Subscribe {
            corr: 1,
            start: Ok(start),
        });
        assert_eq!(
            m.step(Input::Close),
            vec![Action::StopStream, Action::Finish]
        );
        assert!(m.finished());
        assert_eq!(m.step(Input::Published { upto: 9 }), vec![]);
    }

    #[test]
    fn a_subscriber_far_behind_is_coalesced_until_it_is_within_half_the_lag_limit() {
        let mut m = Machine::new(Limits {
            max_lag_records: 10,
            max_records_per_push: 4,
        });
        let start = Start {
            from: 0,
            snapshot: false,
            coalesced: false,
            published: 20,
        };
        let a = m.step(Input::Subscribe {
            corr: 1,
            start: Ok(start),
        });
        assert_eq!(
            a[1],
            Action::SendPush {
                from: 0,
                to: 4,
                coalesce: true
            }
        );
        // 16 behind, 12, 8 (still coalescing: not yet at half), 4 (every change again).
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(m.step(Input::OutputDrained));
        }
        assert_eq!(
            seen,
            vec![
                Action::SendPush {
                    from: 4,
                    to: 8,
                    coalesce: true
                },
                Action::SendPush {
                    from: 8,
                    to: 12,
                    coalesce: true
                },
                Action::SendPush {
                    from: 12,
                    to: 16,
                    coalesce: true
                },
                Action::SendPush {
                    from: 16,
                    to: 20,
                    coalesce: false
                },
            ]
        );
    }

    #[test]
    fn coalesced_mode_pushes_at_ticks_only_and_heartbeats_when_idle() {
        let mut m = Machine::new(LIMITS);
        let start = Start {
            from: 2,
            snapshot: false,
            coalesced: true,
            published: 2,
        };
        m.step(Input::Subscribe {
            corr: 1,
            start: Ok(start),
        });
        assert_eq!(m.step(Input::Published { upto: 4 }), vec![]);
        assert_eq!(
            m.step(Input::HeartbeatDue),
            vec![Action::SendHeartbeat { at: 2 }]
        );
        assert_eq!(m.step(Input::Tick), vec![], "busy with the heartbeat");
        assert_eq!(m.step(Input::OutputDrained), vec![]);
        assert_eq!(
            m.step(Input::Tick),
            vec![Action::SendPush {
                from: 2,
                to: 4,
                coalesce: true
            }]
        );
        m.step(Input::OutputDrained);
        assert_eq!(m.step(Input::Tick), vec![Action::SendPosition { at: 4 }]);
    }
}
