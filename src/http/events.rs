//! `GET /v1/events`: the change feed as Server-Sent Events. Each event's `data:` is the JSON
//! envelope of docs/events.md (`crate::events::envelope`, the one mapping `ctl tail --json`
//! uses too) and its `id:` the envelope's id, so a client that reconnects with
//! `Last-Event-ID` (browsers' `EventSource` do it by themselves) gets exactly what it
//! missed.
//!
//! The stream is the binary port's subscription, not a second one: the query is turned into
//! a `SUBSCRIBE` (same filters, same validation, same limits: `feed::subscription::plan`),
//! run by `feed::subscription::run` into a bounded queue of [`QUEUE_FRAMES`] push frames, and
//! each frame is rendered as SSE when hyper asks for more. So back-pressure is the feed's
//! own: a client that reads slowly is coalesced, then, when nothing can be queued within the
//! stall timeout or the ring no longer holds its position, gets an `event: lagged` with its
//! resume position and is disconnected, like a lagging binary subscriber: once the
//! subscription has ended, what was queued must be written within the stall timeout, or the
//! connection is dropped (a client that reads nothing at all cannot keep its place).
//!
//! Resume: an id is `<seq>:<what>` and one log record (one `seq`) can yield several events,
//! always in the same order. `Last-Event-ID: 42:atp:web` replays from after seq 41 and drops
//! the events of seq 42 up to and including that one. A `:snapshot:` id (the client was
//! cut off inside a snapshot) starts a fresh snapshot; `<seq>:snapshot_end` resumes after
//! `seq`. A position older than the log keeps falls back to a snapshot, as on the binary
//! port.
//!
//! A stream with nothing to say for `heartbeat` sends the comment `: heartbeat`, so a
//! client can tell a dead server from a quiet one.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::events::envelope;
use crate::feed::subscription::{self, Ended};
use crate::metrics::HTTP_EVENT_STREAMS;
use crate::protocol::{self, kinds, opcode, start, started, Frame, PushBatch, PushItem, Subscribe};

use super::api::{engine, ApiError};
use super::auth::authorize;
use super::{AppState, ConnDeadline, PeerIp};

/// Push frames queued for one stream (each at most `max_items_per_frame` items, default
/// 1,024, plus the rest of one sequence number): the per-stream buffer. When it is full the
/// feed waits, then coalesces, then drops the stream as lagged.
pub const QUEUE_FRAMES: usize = 16;
/// Longest `Last-Event-ID` accepted (an id is `<seq>:` and at most a few ids long).
pub const MAX_LAST_EVENT_ID_BYTES: usize = 512;

/// Query of `GET /v1/events`: the filters of `SUBSCRIBE`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Comma-separated channel ids (none: every channel).
    channels: Option<String>,
    /// Comma-separated SKU ids (none: every SKU, or those under `prefix`).
    skus: Option<String>,
    /// Only SKUs starting with this.
    prefix: Option<String>,
    /// Comma-separated `atp`, `thresholds`, `reservations`, or `all` (default).
    kinds: Option<String>,
    /// 0 (default): every change; 10..=60000: the latest ATP per SKU x channel that often.
    coalesce_ms: Option<u32>,
    /// `live` (default) or `snapshot`; ignored when resuming.
    start: Option<String>,
    /// The same as the `Last-Event-ID` header (which wins), for clients that cannot set it.
    last_event_id: Option<String>,
}

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// New events only.
    Live,
    /// Current ATP of the filter first, then live.
    Snapshot,
    /// Every event after `from_seq`; then the events of the given seq up to and including
    /// the given id are dropped (the client has them).
    After {
        from_seq: u64,
        skip_through: Option<(u64, String)>,
    },
}

/// Where a stream with this `Last-Event-ID` (or, without one, this `start`) begins.
pub(crate) fn resume_of(
    last_event_id: Option<&str>,
    start: Option<&str>,
) -> Result<Resume, String> {
    let Some(id) = last_event_id else {
        return match start.unwrap_or("live") {
            "live" => Ok(Resume::Live),
            "snapshot" => Ok(Resume::Snapshot),
            other => Err(format!("start {other:?}: live or snapshot")),
        };
    };
    let bad = || format!("Last-Event-ID {id:?} is not the id of an omnistock event (<seq>:...)");
    if id.len() > MAX_LAST_EVENT_ID_BYTES {
        return Err(format!(
            "Last-Event-ID is longer than {MAX_LAST_EVENT_ID_BYTES} bytes"
        ));
    }
    let (seq, what) = id.split_once(':').ok_or_else(bad)?;
    if seq.is_empty()
        || seq.len() > 20
        || !seq.bytes().all(|b| b.is_ascii_digit())
        || what.is_empty()
    {
        return Err(bad());
    }
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    if what.starts_with("snapshot:") {
        return Ok(Resume::Snapshot);
    }
    if what == "snapshot_end" {
        return Ok(Resume::After {
            from_seq: seq,
            skip_through: None,
        });
    }
    Ok(Resume::After {
        from_seq: seq.saturating_sub(1),
        skip_through: Some((seq, id.to_string())),
    })
}

fn list(s: &Option<String>) -> Vec<String> {
    match s.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => s.split(',').map(str::to_string).collect(),
    }
}

fn kinds_of(s: Option<&str>) -> Result<u8, String> {
    let Some(s) = s else { return Ok(kinds::ALL) };
    let mut k = 0;
    for name in s.split(',') {
        k |= match name {
            "atp" => kinds::ATP,
            "thresholds" => kinds::THRESHOLDS,
            "reservations" => kinds::RESERVATIONS,
            "stockout" => kinds::STOCKOUT,
            "rebalance" => kinds::REBALANCE,
            "region_stockout" => kinds::REGION_STOCKOUT,
            "all" => kinds::ALL,
            other => {
                return Err(format!(
                    "kind {other:?}: atp, thresholds, reservations, stockout, rebalance, \
                     region_stockout or all"
                ))
            }
        };
    }
    Ok(k)
}

/// The `SUBSCRIBE` a query asks for.
fn subscribe_of(q: &EventsQuery, resume: &Resume) -> Result<Subscribe, String> {
    let (start, from_seq) = match resume {
        Resume::Live => (start::LIVE, 0),
        Resume::Snapshot => (start::SNAPSHOT, 0),
        Resume::After { from_seq, .. } => (start::AFTER, *from_seq),
    };
    Ok(Subscribe {
        name: String::new(),
        start,
        from_seq,
        channels: list(&q.channels),
        skus: list(&q.skus),
        sku_prefix: q.prefix.clone().unwrap_or_default(),
        kinds: kinds_of(q.kinds.as_deref())?,
        coalesce_ms: q.coalesce_ms.unwrap_or(0),
    })
}

/// Holds a place among the event streams; frees it on drop.
struct StreamPlace(Arc<AppState>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
        ::metrics::gauge!(HTTP_EVENT_STREAMS).decrement(1.0);
    }
}

fn take_place(state: &Arc<AppState>) -> Result<StreamPlace, ApiError> {
    let max = state.config.max_event_streams;
    if state.streams.fetch_add(1, Ordering::AcqRel) >= max {
        state.streams.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{max} event streams are open; retry later"),
        )
        .with_header(header::RETRY_AFTER, "5"));
    }
    ::metrics::gauge!(HTTP_EVENT_STREAMS).increment(1.0);
    Ok(StreamPlace(state.clone()))
}

/// Where the request asks to start: the `Last-Event-ID` header, else `last_event_id=`,
/// else `start=`.
fn resume_of_request(headers: &HeaderMap, q: &EventsQuery) -> Result<Resume, ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_last_event_id", m);
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad("Last-Event-ID is not visible ASCII".into()))?,
        ),
        None => None,
    };
    let last_id = header_id
        .or(q.last_event_id.as_deref())
        .filter(|s| !s.is_empty());
    resume_of(last_id, q.start.as_deref()).map_err(|m| match last_id {
        Some(_) => bad(m),
        None => ApiError::bad_request("bad_query", m),
    })
}

/// The opening comment: where the stream starts, as `SUBSCRIBE`'s answer says it.
fn hello_of(plan: &subscription::Plan) -> Bytes {
    let a = &plan.answer;
    let start = match a.start {
        started::SNAPSHOT => "snapshot",
        started::REPLAY => "replay",
        _ => "live",
    };
    let note = if a.note.is_empty() {
        String::new()
    } else {
        format!(" note={}", one_line(&a.note))
    };
    Bytes::from(format!(
        ": subscribed start={start} from_seq={} head_seq={} retained_from_seq={}{note}\n\n",
        a.from_seq, a.head_seq, a.retained_from_seq
    ))
}

/// A stop signal for one stream: set when shutdown begins or when the returned sender is
/// dropped (the client went away and hyper dropped the body).
fn stop_signal(
    mut stopping: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, oneshot::Sender<()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => {}
            _ = gone_rx => {}
        }
        stop_tx.send_replace(true);
    });
    (stop_rx, gone_tx)
}

/// `GET /v1/events`.
pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    Extension(deadline): Extension<Arc<ConnDeadline>>,
    Extension(PeerIp(peer)): Extension<PeerIp>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, peer, opcode::SUBSCRIBE)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let resume = resume_of_request(&headers, &q)?;
    let sub = subscribe_of(&q, &resume).map_err(|m| ApiError::bad_request("bad_query", m))?;
    let engine = engine(&state)?;
    let mut stopping = state.sources.streams_stop();
    if *stopping.borrow_and_update() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
        ));
    }
    let cfg = state.config.subscription.clone();
    let plan = subscription::plan(engine.as_ref(), &cfg, &sub)
        .map_err(|subscription::Invalid(m)| ApiError::bad_request("invalid_subscription", m))?;
    let place = take_place(&state)?;
    let hello = hello_of(&plan);
    let (stop_rx, gone_tx) = stop_signal(stopping);
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    let stall = cfg.stall_timeout;
    // A stream has no write deadline while it runs. Its end sets one, from here and not
    // from the body: a client that stopped reading never polls the body again, and must
    // not keep its connection (and its stream place) once the feed has given up on it.
    deadline.set(None);
    let task = tokio::spawn(async move {
        let ended = subscription::run(engine, cfg, plan, 0, tx, stop_rx).await;
        deadline.set(Some(Instant::now() + stall));
        ended
    });
    let period = state.config.heartbeat;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sse = Sse {
        rx,
        task: Some(task),
        heartbeat,
        skip: match resume {
            Resume::After { skip_through, .. } => skip_through,
            _ => None,
        },
        source: state.config.source.clone(),
        hello: Some(hello),
        done: false,
        _gone: gone_tx,
        _place: place,
    };
    let body = Body::from_stream(futures::stream::unfold(sse, |mut s| async move {
        s.next().await.map(|chunk| (Ok::<_, Infallible>(chunk), s))
    }));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// One running stream: the subscription's queue and what turns its frames into SSE.
struct Sse {
    rx: mpsc::Receiver<Vec<u8>>,
    task: Option<JoinHandle<Ended>>,
    heartbeat: tokio::time::Interval,
    /// Events of this seq up to and including this id are dropped (resume).
    skip: Option<(u64, String)>,
    source: String,
    hello: Option<Bytes>,
    done: bool,
    /// Dropped with the body: stops the subscription.
    _gone: oneshot::Sender<()>,
    _place: StreamPlace,
}

impl Sse {
    /// The next chunk of the body; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(h) = self.hello.take() {
            return Some(h);
        }
        loop {
            if self.done {
                return None;
            }
            tokio::select! {
                biased;
                frame = self.rx.recv() => match frame {
                    Some(bytes) => {
                        let chunk = self.render(&bytes);
                        if !chunk.is_empty() {
                            self.heartbeat.reset();
                            return Some(Bytes::from(chunk));
                        }
                    }
                    None => return self.ended().await,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
            }
        }
    }

    /// The subscription ended: what is left to say, and the deadline for writing it.
    async fn ended(&mut self) -> Option<Bytes> {
        self.done = true;
        let ended = match self.task.take() {
            Some(t) => t
                .await
                .unwrap_or(Ended::EngineGone("stream task failed".into())),
            None => Ended::Stopped,
        };
        match ended {
            // Its `Lagged` item went out already when the queue had room; this is the
            // fallback (the client may well see both).
            Ended::Lagged { resume_from_seq } => Some(Bytes::from(lagged_event(
                resume_from_seq,
                "lagged: disconnected; reconnect with Last-Event-ID",
            ))),
            Ended::EngineGone(e) => {
                Some(Bytes::from(format!(": stream ended: {}\n\n", one_line(&e))))
            }
            Ended::Stopped => None,
        }
    }

    /// One push frame as SSE events (Position items are not events: nothing).
    fn render(&mut self, bytes: &[u8]) -> String {
        let items = match decode(bytes) {
            Ok(i) => i,
            Err(e) => return format!(": undecodable push frame: {}\n\n", one_line(&e)),
        };
        let mut events = Vec::with_capacity(items.len());
        let mut out = String::new();
        for item in &items {
            if let PushItem::Lagged {
                resume_from_seq,
                message,
            } = item
            {
                out.push_str(&lagged_event(*resume_from_seq, message));
                // Already told: the fallback at the end is not needed.
                self.task = None;
            } else if let Some(env) = envelope(item, &self.source) {
                events.push(env);
            }
        }
        let from = match self.skip.take() {
            // The first events after a resume: drop those the client has.
            Some((_, id)) if !events.is_empty() => {
                events.iter().position(|e| e.id == id).map_or(0, |i| i + 1)
            }
            keep => {
                self.skip = keep;
                0
            }
        };
        let mut head = String::new();
        for e in &events[from..] {
            match serde_json::to_string(e) {
                Ok(json) => {
                    head.push_str("id: ");
                    head.push_str(&one_line(&e.id));
                    head.push_str("\ndata: ");
                    head.push_str(&json);
                    head.push_str("\n\n");
                }
                Err(err) => head.push_str(&format!(
                    ": unencodable event {}: {err}\n\n",
                    one_line(&e.id)
                )),
            }
        }
        head.push_str(&out);
        head
    }
}

fn decode(bytes: &[u8]) -> Result<Vec<PushItem>, String> {
    match Frame::parse(bytes, u32::MAX as usize) {
        Ok(Some((frame, _))) => protocol::decode_payload::<PushBatch>(&frame.payload)
            .map(|b| b.items)
            .map_err(|e| e.to_string()),
        Ok(None) => Err("incomplete".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn lagged_event(resume_from_seq: u64, message: &str) -> String {
    let data = serde_json::json!({ "resume_from_seq": resume_from_seq, "message": message });
    format!("event: lagged\ndata: {data}\n\n")
}

/// `s` without line breaks or NUL (which would end or void an SSE field).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '\r' | '\n' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(from_seq: u64, skip: Option<(u64, &str)>) -> Result<Resume, String> {
        Ok(Resume::After {
            from_seq,
            skip_through: skip.map(|(s, i)| (s, i.to_string())),
        })
    }

    #[test]
    fn last_event_ids_resume_where_the_client_stopped() {
        assert_eq!(resume_of(None, None), Ok(Resume::Live));
        assert_eq!(resume_of(None, Some("snapshot")), Ok(Resume::Snapshot));
        assert!(resume_of(None, Some("replay")).is_err());
        assert_eq!(
            resume_of(Some("42:atp:web"), None),
            after(41, Some((42, "42:atp:web")))
        );
        // The id wins over `start`.
        assert_eq!(
            resume_of(Some("7:reservation:00ff:placed"), Some("snapshot")),
            after(6, Some((7, "7:reservation:00ff:placed")))
        );
        assert_eq!(resume_of(Some("9:snapshot_end"), None), after(9, None));
        assert_eq!(
            resume_of(Some("3:snapshot:web"), None),
            Ok(Resume::Snapshot)
        );
        for bad in [
            "",
            "42",
            ":atp",
            "42:",
            "x:atp",
            "-1:atp",
            "123456789012345678901:atp",
        ] {
            assert!(resume_of(Some(bad), None).is_err(), "{bad:?}");
        }
        assert!(resume_of(Some(&format!("1:{}", "a".repeat(600))), None).is_err());
    }

    #[test]
    fn kinds_are_named() {
        assert_eq!(kinds_of(None), Ok(kinds::ALL));
        assert_eq!(kinds_of(Some("atp")), Ok(kinds::ATP));
        assert_eq!(
            kinds_of(Some("thresholds,reservations")),
            Ok(kinds::THRESHOLDS | kinds::RESERVATIONS)
        );
        assert!(kinds_of(Some("atp,bogus")).is_err());
        assert!(kinds_of(Some("")).is_err());
    }

    #[test]
    fn field_values_stay_on_one_line() {
        assert_eq!(one_line("a\nb\rc\0d"), "a b c d");
    }
}
