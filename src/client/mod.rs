//! The async omnistock client: one TCP connection multiplexed by correlation id, so many
//! tasks can call concurrently (pipelining); batches; automatic reconnection; and
//! idempotent retries. A mutating operation carries a request id chosen *once* (by the
//! caller or [`new_request_id`]); when the connection drops before the answer, the client
//! reconnects and sends the same bytes again, and the engine's idempotency table returns the
//! original outcome instead of applying the change twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), omnistock::client::ClientError> {
//! use std::time::Duration;
//! use omnistock::client::{Client, ClientConfig, ClientError, Rejection};
//! use omnistock::protocol::{Fulfill, Reserve};
//!
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7878").token("s3cret")).await?;
//! client.ping().await?;
//! let cart = Reserve::new(42, "web-fr", Duration::from_secs(600)).line("TSHIRT-RED-M", 2);
//! match client.reserve(cart).await {
//!     Ok(r) => println!("held until {}: {:?}", r.expires_at_ms, r.allocations),
//!     Err(ClientError::Status { rejection: Rejection::InsufficientStock(Some(f)), .. }) => {
//!         println!("only {} of {} left", f.available, f.sku);
//!         return Ok(());
//!     }
//!     Err(e) => return Err(e),
//! }
//! client.fulfill(Fulfill::all(42)).await?;
//! # Ok(()) }
//! ```

mod conn;
mod rejection;
mod requests;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::protocol::ops::decode_body;
use crate::protocol::*;
use conn::Conn;
pub use conn::MAX_QUEUED_BYTES;
pub use rejection::Rejection;
pub use subscriber::Subscriber;

/// Why a call failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection dropped before the answer (after the retries, if any).
    #[error("disconnected")]
    Disconnected,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The server sent an error frame (handshake refused, limit, protocol error).
    #[error("refused by server: status {status} ({}): {message}", status::name(*status))]
    Refused {
        /// Status code.
        status: u16,
        /// The server's reason.
        message: String,
    },
    /// The server's bytes did not make sense, or a request could not be encoded.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The TLS handshake failed; the message says why (a plaintext server is named as such).
    #[error("{0}")]
    Tls(String),
    /// The peer's first bytes are not an omnistock frame (an HTTP server, a database, ...).
    #[error("this is not an omnistock server (got {got})")]
    NotOmnistock {
        /// The start of what it sent, quoted and escaped.
        got: String,
    },
    /// The server dropped a subscriber that fell too far behind.
    #[error("{message}")]
    Lagged {
        /// Subscribe again after this sequence number.
        resume_from_seq: u64,
        /// The server's message.
        message: String,
    },
    /// The operation ran and was answered with a non-zero status. Built by
    /// [`ClientError::from_status`], so `rejection` always matches `status`.
    #[error("status {status} ({}): {message}", status::name(*status))]
    Status {
        /// What the status means, typed, with its facts decoded.
        rejection: Rejection,
        /// The raw status code (see docs/protocol.md).
        status: u16,
        /// The server's message.
        message: String,
        /// The raw facts of the rejection, if the protocol defines them for this status.
        body: Vec<u8>,
    },
}

impl ClientError {
    /// The error for an operation answered with the non-zero `status`.
    pub fn from_status(status: u16, message: String, body: Vec<u8>) -> ClientError {
        ClientError::Status {
            rejection: Rejection::from_status(status, &body).unwrap_or(Rejection::Other(status)),
            status,
            message,
            body,
        }
    }

    /// The status code of a `Status` or `Refused` error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } | ClientError::Refused { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The typed status of a `Status` error (with its facts), or of a `Refused` one (an
    /// error frame: `Unauthorized`, `LimitExceeded`, ...).
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            ClientError::Status { rejection, .. } => Some(rejection.clone()),
            ClientError::Refused { status, .. } => Rejection::from_status(*status, &[]),
            _ => None,
        }
    }

    /// Whether trying again (the same request id, after a back-off or a reconnect) may
    /// succeed: a refused or dropped connection, a timeout, a lagged subscriber (resume), or
    /// a retriable status ([`Rejection::is_retriable`]). A timed-out or disconnected
    /// mutating request may have been applied; resending it with the same request id is
    /// what makes the retry safe.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect(_)
            | ClientError::Disconnected
            | ClientError::Timeout
            | ClientError::Lagged { .. } => true,
            ClientError::Refused { status, .. } => status::is_retriable(*status),
            ClientError::Status { rejection, .. } => rejection.is_retriable(),
            ClientError::Protocol(_) | ClientError::NotOmnistock { .. } | ClientError::Tls(_) => {
                false
            }
        }
    }
}

/// How [`Client::call`] (and every typed method) retries an answer of `busy` (13, back-
/// pressure: nothing was changed) or `in_progress` (16, the first attempt of the same
/// request id is still running, or another request on the same reservation is): the same
/// request bytes, so the same request id, after a
/// back-off that doubles from `initial_backoff` up to `max_backoff`, each wait jittered
/// down by up to half so that many clients refused together do not return together.
/// [`RetryPolicy::off`] hands those statuses to the caller at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first answer (0 = off). Default 6 (at most 315 ms of waiting).
    pub max_retries: u32,
    /// Wait before the first retry. Default 5 ms.
    pub initial_backoff: Duration,
    /// Longest wait between two retries (also when `initial_backoff` is longer). Default
    /// 200 ms.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// No retries: `busy` and `in_progress` come back as [`ClientError::Status`].
    pub fn off() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The longest wait before retry `n` (1-based): `initial_backoff * 2^(n-1)`, at most
    /// `max_backoff`.
    pub fn backoff_max(&self, n: u32) -> Duration {
        let doubled = self
            .initial_backoff
            .checked_mul(1u32 << n.saturating_sub(1).min(20))
            .unwrap_or(self.max_backoff);
        doubled.min(self.max_backoff)
    }

    /// The wait before retry `n`: between half of [`RetryPolicy::backoff_max`] and all of it.
    fn backoff(&self, n: u32) -> Duration {
        let max = self.backoff_max(n);
        max / 2 + max.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`.
    pub addr: String,
    /// Auth token (empty for a server without tokens).
    pub token: String,
    /// Name sent in `Hello`. Default `omnistock-client`.
    pub client_name: String,
    /// Connect + handshake timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for one response. Default 30 s.
    pub request_timeout: Duration,
    /// Retries after a dropped connection or a refused connect. Default 3.
    pub max_retries: u32,
    /// Back-off before retry n is n times this. Default 50 ms.
    pub retry_backoff: Duration,
    /// Retries of `busy` and `in_progress` answers by [`Client::call`]. Default: 6, from
    /// 5 ms doubling to 200 ms; [`RetryPolicy::off`] to see them at once.
    pub busy_retry: RetryPolicy,
    /// TLS to the server (feature `tls`). Default `None`: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ClientTls>,
}

impl ClientConfig {
    /// Defaults for `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        ClientConfig {
            addr: addr.into(),
            token: String::new(),
            client_name: "omnistock-client".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_backoff: Duration::from_millis(50),
            busy_retry: RetryPolicy::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Speaks TLS to the server (see [`crate::tls::ClientTls`]).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the retry of `busy` and `in_progress` answers.
    pub fn busy_retry(mut self, p: RetryPolicy) -> Self {
        self.busy_retry = p;
        self
    }

    /// Sets the token.
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = t.into();
        self
    }
}

/// A fresh random non-zero request id.
pub fn new_request_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A pipelined, reconnecting client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// The current connection (a short lock per request, never held across an await).
    conn: parking_lot::Mutex<Option<Arc<Conn>>>,
    /// Held while reconnecting, so that callers finding the connection closed open one
    /// new connection between them, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Client {
    /// Connects and handshakes (fails fast on a bad token or address).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let conn = Conn::open(&config).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                conn: parking_lot::Mutex::new(Some(conn)),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The server's `Welcome` on the current connection, if connected.
    pub async fn welcome(&self) -> Option<Welcome> {
        let g = self.inner.conn.lock();
        g.as_ref().map(|c| c.welcome.clone())
    }

    /// Closes the current connection (the next call reconnects).
    pub async fn disconnect(&self) {
        let current = self.inner.conn.lock().take();
        if let Some(c) = current {
            c.close(self.inner.config.request_timeout).await;
        }
    }

    /// The current connection if it is open.
    fn open_connection(&self) -> Option<Arc<Conn>> {
        let g = self.inner.conn.lock();
        g.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    async fn connection(&self) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = self.open_connection() {
            return Ok(c);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        // Another caller may have reconnected while this one waited.
        if let Some(c) = self.open_connection() {
            return Ok(c);
        }
        let c = Conn::open(&self.inner.config).await?;
        *self.inner.conn.lock() = Some(c.clone());
        Ok(c)
    }

    /// Sends raw operations as one request frame; retries on a dropped connection with the
    /// same bytes (hence the same request ids).
    pub async fn raw_batch(&self, ops: Vec<RawOp>) -> Result<Vec<OpResult>, ClientError> {
        let payload = encode_payload(&RequestBatch { ops })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let cfg = &self.inner.config;
        let mut attempt = 0;
        loop {
            let r = match self.connection().await {
                Ok(c) => c.roundtrip(&payload, cfg.request_timeout).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(resp) => return Ok(resp.results),
                Err(ClientError::Disconnected | ClientError::Connect(_))
                    if attempt < cfg.max_retries =>
                {
                    attempt += 1;
                    tokio::time::sleep(cfg.retry_backoff * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends typed operations as one request frame; one result per operation, in order.
    pub async fn batch(&self, ops: &[Op]) -> Result<Vec<OpResult>, ClientError> {
        let raw = ops
            .iter()
            .map(Op::to_raw)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.raw_batch(raw).await
    }

    /// Runs one operation and decodes its result body. A non-zero status is
    /// [`ClientError::Status`]; `busy` (13) and `in_progress` (16) are first retried with
    /// the same request bytes as [`ClientConfig::busy_retry`] says (`batch` and `raw_batch`
    /// return every status as it came).
    pub async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, ClientError> {
        let policy = self.inner.config.busy_retry;
        let raw = op
            .to_raw()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut retries = 0;
        loop {
            let mut results = self.raw_batch(vec![raw.clone()]).await?;
            let r = match (results.pop(), results.is_empty()) {
                (Some(r), true) => r,
                _ => return Err(ClientError::Protocol("expected one result".into())),
            };
            if matches!(r.status, 13 | 16) && retries < policy.max_retries {
                retries += 1;
                tokio::time::sleep(policy.backoff(retries)).await;
                continue;
            }
            return decode_result(r);
        }
    }

    /// Liveness check.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        self.call(Op::Ping).await
    }
    /// Server name, version and counts.
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        self.call(Op::ServerInfo).await
    }
    /// Reserves a cart.
    pub async fn reserve(&self, r: Reserve) -> Result<Reserved, ClientError> {
        self.call(Op::Reserve(r)).await
    }
    /// Fulfils a reservation.
    pub async fn fulfill(&self, f: Fulfill) -> Result<Applied, ClientError> {
        self.call(Op::Fulfill(f)).await
    }
    /// Releases a reservation.
    pub async fn release(&self, r: Release) -> Result<Applied, ClientError> {
        self.call(Op::Release(r)).await
    }
    /// Extends a reservation.
    pub async fn extend(&self, e: Extend) -> Result<Applied, ClientError> {
        self.call(Op::Extend(e)).await
    }
    /// Runs a stock or catalog operation (adjust, set on hand, move, transfer, safety
    /// stock, incoming, upsert location, upsert channel).
    pub async fn apply(&self, op: Op) -> Result<Applied, ClientError> {
        self.call(op).await
    }
    /// Reads one SKU.
    pub async fn get_sku(&self, sku: &str) -> Result<WireSku, ClientError> {
        self.call(Op::GetSku(GetSku { sku: sku.into() })).await
    }
    /// Reads several SKUs (`None` for unknown ones).
    pub async fn get_skus(&self, skus: Vec<String>) -> Result<WireSkus, ClientError> {
        self.call(Op::GetSkus(GetSkus { skus })).await
    }
    /// Reads one reservation.
    pub async fn get_reservation(&self, id: u128) -> Result<WireReservation, ClientError> {
        self.call(Op::GetReservation(GetReservation { reservation: id }))
            .await
    }
    /// Explains `channel`'s ATP for `sku` (`EXPLAIN_ATP`): each location's part, the
    /// channel's buffer and cap, open holds by channel, the low-stock threshold in force.
    pub async fn explain_atp(
        &self,
        sku: &str,
        channel: &str,
    ) -> Result<WireAtpExplanation, ClientError> {
        self.call(Op::ExplainAtp(ExplainAtp {
            sku: sku.into(),
            channel: channel.into(),
        }))
        .await
    }
    /// Demand velocity and projected stockout of `sku` on every channel (`VELOCITY`).
    pub async fn velocity(&self, sku: &str) -> Result<WireVelocity, ClientError> {
        self.call(Op::Velocity(GetVelocity { sku: sku.into() }))
            .await
    }
    /// The at most `limit` (1..=1000) SKUs whose projected stockout on `channel` comes
    /// first in velocity window `window` (0..=2, shortest half-life first) (`AT_RISK`).
    pub async fn at_risk(
        &self,
        channel: &str,
        window: u8,
        limit: u32,
    ) -> Result<WireAtRisk, ClientError> {
        self.call(Op::AtRisk(AtRiskQuery {
            channel: channel.into(),
            window,
            limit,
        }))
        .await
    }
    /// The at most `limit` (1..=1000) SKUs whose projected stockout in `region` (its
    /// locations' exposed ATP against their summed demand) comes first in window `window`
    /// (`AT_RISK_REGION`).
    pub async fn at_risk_region(
        &self,
        region: &str,
        window: u8,
        limit: u32,
    ) -> Result<WireAtRiskRegion, ClientError> {
        self.call(Op::AtRiskRegion(AtRiskRegionQuery {
            region: region.into(),
            window,
            limit,
        }))
        .await
    }
    /// Rebalance recommendations (`REBALANCE_LIST`): of `q.sku` alone, or ranked over every
    /// SKU, least cover first. Apply one with [`Client::apply_rebalance`].
    pub async fn rebalance(&self, q: RebalanceQuery) -> Result<WireRebalance, ClientError> {
        self.call(Op::RebalanceList(q)).await
    }
    /// Applies a recommendation as the existing `TRANSFER`, with the recommendation's id as
    /// request id and its reference: sent again (a retry, a second operator), the server
    /// answers with the first answer and the stock moves once. Re-read the recommendation
    /// first (it is only valid for the SKU's state it was made on).
    pub async fn apply_rebalance(&self, r: &WireRecommendation) -> Result<Applied, ClientError> {
        self.apply(Op::Transfer(Transfer {
            request_id: r.id,
            sku: r.sku.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
            qty: r.qty,
            reference: r.reference.clone(),
        }))
        .await
    }
    /// One page of the known SKU ids starting with `prefix` (`""` for all), after `after`
    /// (exclusive), at most `limit` (1..=1000) (`LIST_SKUS`); pass the answer's
    /// `next_after` as the next page's `after` until it is `None`.
    pub async fn list_skus(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<WireSkuList, ClientError> {
        self.call(Op::ListSkus(ListSkus {
            prefix: prefix.into(),
            after: after.map(Into::into),
            limit,
        }))
        .await
    }
    /// One page of the open reservations holding units of `sku`, by reservation id, after
    /// `after` (exclusive), at most `limit` (1..=1000) (`LIST_RESERVATIONS`).
    pub async fn list_reservations(
        &self,
        sku: &str,
        after: Option<u128>,
        limit: u32,
    ) -> Result<WireSkuReservations, ClientError> {
        self.call(Op::ListReservations(ListReservations {
            sku: sku.into(),
            after,
            limit,
        }))
        .await
    }
    /// Asks the server to write a backup of its whole state into `to`, a new directory on
    /// the server's machine (`BACKUP`, admin). Waits for the whole backup: give the client
    /// a `request_timeout` that covers it (ctl uses an hour).
    pub async fn backup(&self, to: &str) -> Result<WireBackup, ClientError> {
        self.call(Op::Backup(Backup { to: to.into() })).await
    }
    /// One page of `sku`'s durable history from `from` = (seq, index) on (inclusive;
    /// `(0, 0)` for the oldest kept), at most `limit` (1..=1000) events, oldest first
    /// (`SKU_HISTORY`); pass the answer's `next` as the next page's `from` until it is
    /// `None`.
    pub async fn sku_history(
        &self,
        sku: &str,
        from: (u64, u16),
        limit: u32,
    ) -> Result<WireSkuHistory, ClientError> {
        self.call(Op::SkuHistory(SkuHistory {
            sku: sku.into(),
            from_seq: from.0,
            from_index: from.1,
            limit,
        }))
        .await
    }
    /// Lists locations.
    pub async fn locations(&self) -> Result<Locations, ClientError> {
        self.call(Op::ListLocations).await
    }
    /// Lists channels.
    pub async fn channels(&self) -> Result<Channels, ClientError> {
        self.call(Op::ListChannels).await
    }
    /// One page of the stored named positions after `after` (empty: from the first).
    pub async fn subscriptions(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Subscriptions, ClientError> {
        self.call(Op::ListSubscriptions(ListSubscriptions {
            after: after.into(),
            limit,
        }))
        .await
    }
    /// Forgets the position stored under `name` (admin); `SubscriptionNotFound` (20) if none.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ClientError> {
        let _: Empty = self
            .call(Op::DeleteSubscription(DeleteSubscription {
                name: name.into(),
            }))
            .await?;
        Ok(())
    }
    /// Deletes a location (admin) under `request_id` (a resend with the same id answers
    /// the same). Refused with `InUse` (17, facts: what refers to it) while a channel
    /// sources it or a SKU holds anything there; `UnknownLocation` (3) if there is none.
    pub async fn delete_location(
        &self,
        request_id: u128,
        location: &str,
    ) -> Result<Applied, ClientError> {
        self.call(Op::DeleteLocation(DeleteLocation {
            request_id,
            location: location.into(),
        }))
        .await
    }
    /// Deletes a channel (admin) under `request_id`. Refused with `InUse` (17) while a
    /// reservation on it is open; `UnknownChannel` (4) if there is none.
    pub async fn delete_channel(
        &self,
        request_id: u128,
        channel: &str,
    ) -> Result<Applied, ClientError> {
        self.call(Op::DeleteChannel(DeleteChannel {
            request_id,
            channel: channel.into(),
        }))
        .await
    }
}

/// Decodes a successful result's body, or turns a non-zero status into an error.
pub fn decode_result<T: DeserializeOwned>(r: OpResult) -> Result<T, ClientError> {
    if r.status != status::OK {
        return Err(ClientError::from_status(r.status, r.message, r.body));
    }
    decode_body(&r.body).map_err(|e| ClientError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_up_to_its_cap_and_is_jittered_within_half() {
        let p = RetryPolicy {
            max_retries: 40,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
        };
        let ms: Vec<u128> = (1..=8).map(|n| p.backoff_max(n).as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(p.backoff_max(40), Duration::from_millis(200));
        for n in [1, 3, 9, 40] {
            let b = p.backoff(n);
            assert!(
                b >= p.backoff_max(n) / 2 && b <= p.backoff_max(n),
                "{n}: {b:?}"
            );
        }
        let total: Duration = (1..=RetryPolicy::default().max_retries)
            .map(|n| RetryPolicy::default().backoff_max(n))
            .sum();
        assert_eq!(total, Duration::from_millis(315), "the documented bound");
        let slow_start = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            ..p
        };
        assert_eq!(slow_start.backoff_max(1), Duration::from_millis(200));
        assert_eq!(RetryPolicy::off().max_retries, 0);
    }

    #[test]
    fn a_status_error_carries_its_typed_rejection_and_the_raw_code() {
        let e = ClientError::from_status(13, "busy".into(), vec![]);
        assert_eq!(e.rejection(), Some(Rejection::Busy));
        assert_eq!(e.status(), Some(13));
        assert!(e.is_retriable());
        let e = ClientError::from_status(6, "no".into(), vec![]);
        assert!(!e.is_retriable() && e.rejection() == Some(Rejection::ReservationNotFound));
        let e = ClientError::from_status(77, String::new(), vec![]);
        assert_eq!(e.rejection(), Some(Rejection::Other(77)));
        let refused = ClientError::Refused {
            status: status::UNAUTHORIZED,
            message: "unknown token".into(),
        };
        assert_eq!(refused.rejection(), Some(Rejection::Unauthorized));
        assert!(!refused.is_retriable());
        assert_eq!(ClientError::Timeout.rejection(), None);
        assert!(ClientError::Disconnected.is_retriable());
        assert!(!ClientError::Protocol("x".into()).is_retriable());
    }
}
