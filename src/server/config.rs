//! Server settings with documented defaults, and their validation. Every limit the server
//! enforces lives here so tests can shrink it and `omnistock serve` can set it from flags or
//! a TOML file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::feed::subscription::SubscriptionConfig;

use thiserror::Error;

use crate::domain::limits::MAX_LINES_PER_RESERVATION;
use crate::protocol::{frame, Role};

/// Why a server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A setting is invalid; the message names it.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// The thread of the heavy reads (`server::heavy`) could not be started.
    #[error("cannot start the heavy reads' thread: {0}")]
    Thread(std::io::Error),
}

/// Server settings. Every field has a documented default ([`ServerConfig::default`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:7878`.
    pub listen: SocketAddr,
    /// Name sent in `Welcome` and server info. Default `omnistock`.
    pub server_name: String,
    /// Token → role. Empty (default): every client is admin, allowed only on loopback.
    pub tokens: HashMap<String, Role>,
    /// Most open connections; beyond, a new one gets an error frame and is closed.
    /// Default 10,000.
    pub max_connections: usize,
    /// Most request frames being processed per connection; at the limit the server stops
    /// reading that socket until responses drain. Default 1024.
    pub max_in_flight: usize,
    /// Largest frame length value accepted. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Most operations per request frame (and SKUs per get-many). Default 8,190.
    pub max_batch_ops: usize,
    /// Most lines per reservation (the engine's own limit is 100). Default 100.
    pub max_lines_per_reservation: usize,
    /// A connection with nothing in flight that sends nothing for this long is closed.
    /// Default 5 minutes.
    pub idle_timeout: Duration,
    /// Time a new connection has to send its `Hello`. Default 5 s.
    pub handshake_timeout: Duration,
    /// Most connections that have not completed their `Hello` yet. They live in their own
    /// pool and do not take `max_connections` slots; when it is full the oldest pending
    /// handshake is closed to make room (counted in `omnistock_handshakes_evicted_total`),
    /// so silent sockets cannot lock out clients that handshake at once. Default 1,024.
    pub max_pending_handshakes: usize,
    /// Most connections (pending handshakes and established) from one source IP; beyond,
    /// a new one gets an error frame (`LIMIT_EXCEEDED`, naming the limit) and is closed.
    /// Default 1,024.
    pub max_connections_per_source: usize,
    /// Whether `max_connections_per_source` applies to loopback sources too (a load
    /// generator or sidecar on the same host may need it off). Default true.
    pub per_source_limit_on_loopback: bool,
    /// Output budget of one connection: bytes of answers and push frames produced but not
    /// yet written, plus the partial frame being read. At half of it the connection is
    /// not read (back-pressure); a connection whose queued output goes over it is
    /// disconnected (counted in `omnistock_slow_reader_disconnects_total`). At least
    /// `max_frame_bytes`. Default 4 MiB.
    pub max_output_bytes: usize,
    /// Memory budget of all connections together: the bytes `max_output_bytes` counts,
    /// summed, plus what requests in flight reserve (their body and estimated answer) and a
    /// fixed cost per open connection (`CONNECTION_OVERHEAD_BYTES`, 20 KiB). A frame larger
    /// than 8 KiB is read only once room for all of it is free under 3/4 of the budget
    /// (the rest is left to answers and small requests); it waits in line until its
    /// `frame_timeout`, then the connection is closed (`LIMIT_EXCEEDED`, counted in
    /// `omnistock_memory_budget_disconnects_total`). Over the budget, a request from a
    /// connection that holds other answers or requests, or a large one (an estimated
    /// answer over 16 KiB), is answered `BUSY` (13, retriable) without being run; a small
    /// request on a connection holding nothing is run. At least `max_output_bytes`.
    /// Default 1 GiB.
    pub max_connections_memory_bytes: usize,
    /// Longest a shutdown waits for connections to finish their in-flight requests and
    /// close; those still open then are dropped (a client that stopped reading cannot
    /// hold the process). Default 10 s.
    pub shutdown_timeout: Duration,
    /// Longest one write to a client may wait for the client to read. A client that stops
    /// reading is disconnected after this (counted in
    /// `omnistock_slow_reader_disconnects_total`), which frees what was queued for it.
    /// Default 30 s.
    pub write_timeout: Duration,
    /// Longest a request frame may take to arrive once its first bytes have: a client that
    /// starts a frame and trickles (or stops) is closed with `IDLE_TIMEOUT` instead of
    /// holding its partial frame until `idle_timeout`. Time the server does not read it
    /// (held back, or a large frame waiting for room in `max_connections_memory_bytes`)
    /// does not count: the time starts again when reading resumes. Default 10 s.
    pub frame_timeout: Duration,
    /// Limits of feed subscriptions (lag before coalescing, stall timeout, ...).
    pub subscription: SubscriptionConfig,
    /// Run each connection on one of the engine's actor threads (round robin) instead of
    /// the tokio worker pool, so requests and actor replies stay on one thread (fewer
    /// context switches: +66% on a sold-out flash sale, +10-17% on reserves, see
    /// docs/benchmarks.md). Such connections end abruptly if the engine is shut down before
    /// the server (the server must stop first, as `serve` does). Default true.
    pub connections_on_arbiters: bool,
    /// TLS on this port (`tls_cert`, `tls_key`, optional `tls_client_ca`). `None`
    /// (default): plain TCP. With it, every connection must start a TLS handshake, which
    /// must finish within `handshake_timeout` (the same deadline as the `Hello`, counted in
    /// the pending-handshake pool); a plaintext client gets `TLS_REQUIRED` (112) in a
    /// plaintext error frame.
    pub tls: Option<crate::tls::ServerTls>,
    /// Allow tokens on a non-loopback listen address without TLS (they then cross the
    /// network in the clear). Default false: such a configuration is refused at start.
    pub insecure_plaintext_tokens: bool,
    /// The directory `BACKUP` targets must lie inside (canonical). `None` (default): any
    /// absolute path the server's user may write (an admin token can then have the server
    /// create a directory anywhere it may).
    pub backup_dir: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            server_name: "omnistock".into(),
            tokens: HashMap::new(),
            max_connections: 10_000,
            max_in_flight: 1024,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            max_batch_ops: 8_190,
            max_lines_per_reservation: MAX_LINES_PER_RESERVATION,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 1024,
            max_connections_per_source: 1024,
            per_source_limit_on_loopback: true,
            max_output_bytes: 4 << 20,
            max_connections_memory_bytes: 1 << 30,
            shutdown_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(10),
            subscription: SubscriptionConfig {
                heartbeat: Some(Duration::from_secs(15)),
                ..SubscriptionConfig::default()
            },
            connections_on_arbiters: true,
            tls: None,
            insecure_plaintext_tokens: false,
            backup_dir: None,
        }
    }
}

fn bad(setting: &'static str, reason: impl Into<String>) -> ServerError {
    ServerError::Config {
        setting,
        reason: reason.into(),
    }
}

impl ServerConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(bad(
                "tokens",
                format!(
                    "no auth token configured and listen address {} is not loopback; \
                     add --token TOKEN:ROLE or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        if !self.tokens.is_empty()
            && !self.listen.ip().is_loopback()
            && self.tls.is_none()
            && !self.insecure_plaintext_tokens
        {
            return Err(bad(
                "tls",
                format!(
                    "auth tokens on the non-loopback listen address {} would cross the network \
                     in the clear; give --tls-cert and --tls-key, or accept that with \
                     --insecure-plaintext-tokens",
                    self.listen
                ),
            ));
        }
        if self.tokens.keys().any(|t| t.is_empty() || t.len() > 256) {
            return Err(bad("tokens", "a token must be 1..=256 bytes"));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(bad("max_connections", "must be 1..=1000000"));
        }
        if !(1..=1_000_000).contains(&self.max_pending_handshakes) {
            return Err(bad("max_pending_handshakes", "must be 1..=1000000"));
        }
        if !(1..=1_000_000).contains(&self.max_connections_per_source) {
            return Err(bad("max_connections_per_source", "must be 1..=1000000"));
        }
        if !(1..=65_536).contains(&self.max_in_flight) {
            return Err(bad("max_in_flight", "must be 1..=65536"));
        }
        // 256 bytes: room for a Hello with a short name and token.
        if !(256..=64 * 1024 * 1024).contains(&self.max_frame_bytes) {
            return Err(bad("max_frame_bytes", "must be 256..=67108864"));
        }
        // An answer may be a whole frame: a smaller budget would disconnect for one answer.
        if self.max_output_bytes < self.max_frame_bytes {
            return Err(bad(
                "max_output_bytes",
                format!(
                    "must be at least max_frame_bytes ({})",
                    self.max_frame_bytes
                ),
            ));
        }
        if self.max_connections_memory_bytes < self.max_output_bytes {
            return Err(bad(
                "max_connections_memory_bytes",
                format!(
                    "must be at least max_output_bytes ({})",
                    self.max_output_bytes
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_batch_ops) {
            return Err(bad("max_batch_ops", "must be 1..=1000000"));
        }
        if !(1..=MAX_LINES_PER_RESERVATION).contains(&self.max_lines_per_reservation) {
            return Err(bad(
                "max_lines_per_reservation",
                format!("must be 1..={MAX_LINES_PER_RESERVATION}"),
            ));
        }
        if self.frame_timeout.is_zero() {
            return Err(bad("frame_timeout", "must be positive"));
        }
        if self.write_timeout.is_zero() {
            return Err(bad("write_timeout", "must be positive"));
        }
        if self.shutdown_timeout.is_zero() {
            return Err(bad("shutdown_timeout", "must be positive"));
        }
        if self.idle_timeout.is_zero() {
            return Err(bad("idle_timeout", "must be positive"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(bad("handshake_timeout", "must be positive"));
        }
        let s = &self.subscription;
        if s.max_lag_records == 0 {
            return Err(bad("subscriber_max_lag_records", "must be positive"));
        }
        if !(1..=10_000_000).contains(&s.max_coalesce_pairs) {
            return Err(bad("subscriber_max_coalesce_pairs", "must be 1..=10000000"));
        }
        if s.stall_timeout.is_zero() {
            return Err(bad("subscriber_stall_timeout", "must be positive"));
        }
        if s.heartbeat
            .is_some_and(|h| !(100..=3_600_000).contains(&h.as_millis()))
        {
            return Err(bad("subscriber_heartbeat_ms", "must be 100..=3600000"));
        }
        Ok(())
    }
}
