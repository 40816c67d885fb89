//! A subscriber of the stock-change feed: its own connection (so the stream is never stuck
//! behind other calls), the position to resume from, and resumption after a disconnect or a
//! `Lagged` notice without a gap or a duplicate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), omnistock::client::ClientError> {
//! use omnistock::client::{ClientConfig, Subscriber};
//! use omnistock::protocol::{kinds, start, PushItem, Subscribe};
//!
//! let request = Subscribe {
//!     name: "amazon-listings".into(),
//!     start: start::RESUME,
//!     from_seq: 0,
//!     channels: vec!["amazon".into()],
//!     skus: vec![],
//!     sku_prefix: String::new(),
//!     kinds: kinds::ATP | kinds::THRESHOLDS,
//!     coalesce_ms: 1000,
//! };
//! let mut sub = Subscriber::subscribe(ClientConfig::new("127.0.0.1:7878"), request).await?;
//! loop {
//!     let items = match sub.next().await {
//!         Ok(items) => items,
//!         Err(_) => { sub.resume().await?; continue; } // reconnect after the last position
//!     };
//!     for item in items {
//!         if let PushItem::Atp(a) = item { println!("{} {} -> {}", a.sku, a.channel, a.atp); }
//!     }
//!     sub.ack().await?; // store the position under the name
//! }
//! # }
//! ```
//!
//! It is also a [`futures::Stream`] of the same `Result<Vec<PushItem>, ClientError>` (one
//! `Push` frame each): after an error the stream ends (`None`) until
//! [`Subscriber::resume`] reconnects, so a `while let Some(..)` loop over it terminates and
//! the position stays where the last delivered frame left it. The inherent
//! [`Subscriber::next`] wins over `StreamExt::next` in method syntax: call the stream's as
//! `StreamExt::next(&mut sub)`, or use any other combinator (`sub.by_ref().take(3)`, ...).
//!
//! ```no_run
//! # async fn demo(mut sub: omnistock::client::Subscriber) -> Result<(), omnistock::client::ClientError> {
//! use futures::StreamExt;
//! loop {
//!     while let Some(items) = StreamExt::next(&mut sub).await {
//!         for item in items? { println!("{item:?}"); }
//!     }
//!     sub.resume().await?; // the stream ended (disconnect or Lagged): continue after position()
//! }
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::protocol::ops::{decode_push_refs, PushItemRef};
use crate::protocol::*;

use super::conn::Conn;
use super::{decode_result, ClientConfig, ClientError};

/// Push frames buffered on the client before the socket stops being read.
const PUSH_BUFFER_FRAMES: usize = 64;

/// One subscription on its own connection.
pub struct Subscriber {
    config: ClientConfig,
    request: Subscribe,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Vec<u8>>,
    subscribed: Subscribed,
    position: u64,
    in_snapshot: bool,
    /// The stream yielded an error and ends until [`Subscriber::resume`].
    ended: bool,
}

fn request_payload(op: &Op) -> Result<Vec<u8>, ClientError> {
    let raw = op
        .to_raw()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    encode_payload(&RequestBatch { ops: vec![raw] })
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

fn one_result(mut r: ResponseBatch) -> Result<OpResult, ClientError> {
    match (r.results.pop(), r.results.is_empty()) {
        (Some(x), true) => Ok(x),
        _ => Err(ClientError::Protocol("expected one result".into())),
    }
}

impl Subscriber {
    /// Connects and subscribes. Fails with the server's status if the request is refused
    /// (unknown channel, bad filter, `from_seq` ahead of the log, ...).
    pub async fn subscribe(config: ClientConfig, request: Subscribe) -> Result<Self, ClientError> {
        let (conn, rx, subscribed) = Self::open(&config, &request).await?;
        let in_snapshot = subscribed.start == started::SNAPSHOT;
        Ok(Subscriber {
            position: subscribed.from_seq,
            config,
            request,
            conn,
            rx,
            subscribed,
            in_snapshot,
            ended: false,
        })
    }

    async fn open(
        config: &ClientConfig,
        request: &Subscribe,
    ) -> Result<(Arc<Conn>, mpsc::Receiver<Vec<u8>>, Subscribed), ClientError> {
        let conn = Conn::open(config).await?;
        let (tx, rx) = mpsc::channel(PUSH_BUFFER_FRAMES);
        let payload = request_payload(&Op::Subscribe(request.clone()))?;
        let resp = conn
            .roundtrip_with_push(&payload, config.request_timeout, Some(tx))
            .await?;
        let subscribed: Subscribed = decode_result(one_result(resp)?)?;
        Ok((conn, rx, subscribed))
    }

    /// The server's answer to the (latest) SUBSCRIBE.
    pub fn subscribed(&self) -> &Subscribed {
        &self.subscribed
    }

    /// The last sequence number whose events were all delivered by [`Subscriber::next`]:
    /// resume after it.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether a snapshot is being received (until `SnapshotEnd`).
    pub fn in_snapshot(&self) -> bool {
        self.in_snapshot
    }

    /// The items of the next `Push` frame. `Err(Lagged)`: the server dropped this
    /// subscriber for falling behind; `Err(Disconnected)`: the connection ended. Either way
    /// [`Subscriber::resume`] continues after [`Subscriber::position`].
    pub async fn next(&mut self) -> Result<Vec<PushItem>, ClientError> {
        self.next_with(PushItemRef::all_owned).await
    }

    /// [`Subscriber::next`] without copying the ATP items' strings: `f` gets the frame's
    /// items with their SKU and channel borrowed from the frame (one allocation per frame
    /// rather than two more per ATP item), and its result is returned. The position moves
    /// as with `next`, before `f` runs.
    pub async fn next_with<R>(
        &mut self,
        f: impl FnOnce(Vec<PushItemRef<'_>>) -> R,
    ) -> Result<R, ClientError> {
        let Some(bytes) = self.rx.recv().await else {
            return Err(ClientError::Disconnected);
        };
        Ok(f(self.take(&bytes)?))
    }

    /// One `Push` frame's payload: its items, the position after them, `Lagged` as an error.
    fn take<'a>(&mut self, bytes: &'a [u8]) -> Result<Vec<PushItemRef<'a>>, ClientError> {
        let items = decode_push_refs(bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut last = None;
        for item in &items {
            let other = match item {
                PushItemRef::Atp(a) => {
                    last = Some(a.seq);
                    continue;
                }
                PushItemRef::Other(o) => o,
            };
            match other {
                PushItem::Atp(WireAtp { seq, .. })
                | PushItem::Oversold(WireOversold { seq, .. })
                | PushItem::Reservation(WireReservationEvent { seq, .. })
                | PushItem::Stockout(crate::protocol::WireStockout { seq, .. })
                | PushItem::Rebalance(crate::protocol::WireRebalanceEvent { seq, .. })
                | PushItem::RegionStockout(crate::protocol::WireRegionStockout { seq, .. })
                | PushItem::Catalog { seq, .. }
                | PushItem::Position { seq } => last = Some(*seq),
                PushItem::SnapshotEnd { seq } => {
                    self.in_snapshot = false;
                    last = Some(*seq);
                }
                PushItem::Snapshot(_) => {}
                PushItem::Lagged {
                    resume_from_seq,
                    message,
                } => {
                    return Err(ClientError::Lagged {
                        resume_from_seq: *resume_from_seq,
                        message: message.clone(),
                    })
                }
            }
        }
        // A frame never splits one sequence number's items: its last is complete.
        if let Some(l) = last {
            if !self.in_snapshot {
                self.position = self.position.max(l);
            }
        }
        Ok(items)
    }

    /// Reconnects and subscribes again after [`Subscriber::position`] (the server replays
    /// from its log, or sends a snapshot if the log no longer holds that position). A
    /// snapshot interrupted before `SnapshotEnd` is started over.
    pub async fn resume(&mut self) -> Result<&Subscribed, ClientError> {
        self.conn.close(self.config.request_timeout).await;
        let mut req = self.request.clone();
        if !self.in_snapshot {
            req.start = start::AFTER;
            req.from_seq = self.position;
        }
        let (conn, rx, subscribed) = Self::open(&self.config, &req).await?;
        self.in_snapshot = subscribed.start == started::SNAPSHOT;
        if !self.in_snapshot {
            self.position = subscribed.from_seq;
        }
        self.conn = conn;
        self.rx = rx;
        self.subscribed = subscribed;
        self.ended = false;
        Ok(&self.subscribed)
    }

    /// Stores [`Subscriber::position`] under the subscription's name (named subscriptions
    /// only), so a later `start = RESUME` continues from it, across server restarts too.
    pub async fn ack(&self) -> Result<(), ClientError> {
        if self.request.name.is_empty() {
            return Err(ClientError::Protocol(
                "ack needs a named subscription".into(),
            ));
        }
        let op = Op::Ack(Ack {
            name: self.request.name.clone(),
            seq: self.position,
        });
        let resp = self
            .conn
            .roundtrip(&request_payload(&op)?, self.config.request_timeout)
            .await?;
        let _: Empty = decode_result(one_result(resp)?)?;
        Ok(())
    }

    /// Ends the subscription and closes the connection.
    pub async fn close(self) {
        let Subscriber {
            conn, rx, config, ..
        } = self;
        // Unread pushes must not hold the answer up: the reader drops them from now on.
        drop(rx);
        if let Ok(p) = request_payload(&Op::Unsubscribe) {
            let _ = conn.roundtrip(&p, config.request_timeout).await;
        }
        conn.close(config.request_timeout).await;
    }
}

impl Stream for Subscriber {
    type Item = Result<Vec<PushItem>, ClientError>;

    /// The items of the next `Push` frame, as [`Subscriber::next`] gives them. An error
    /// (`Disconnected`, `Lagged`, an undecodable frame) is yielded once, then the stream
    /// ends until [`Subscriber::resume`].
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let r = match this.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => Err(ClientError::Disconnected),
            Poll::Ready(Some(bytes)) => this.take(&bytes).map(PushItemRef::all_owned),
        };
        this.ended = r.is_err();
        Poll::Ready(Some(r))
    }
}
