//! Every metric omnistock exports, in one place: its name (a `pub const`), its type, unit and
//! help text ([`describe`]), the recorder ([`install`]) and the recording helpers. docs/metrics.md
//! lists the same names; a test checks that every constant here appears in a real scrape and
//! that `promtool check metrics` accepts it.
//!
//! A leaf module: it imports nothing of the crate but the protocol's opcodes and status names
//! (for labels), so the engine, the log, the feed and the server can all record through it
//! without an import loop (tests/architecture.rs enforces this).
//!
//! Two ways a value gets here, chosen by cost:
//! - **Read at scrape time** (most of them): the engine, the log and the server already keep
//!   relaxed atomic counters (`EngineStats`, `WalStats`, `ServerStats`); at each scrape the
//!   HTTP endpoint (`crate::http::Sources`) copies them into counters (`absolute`) and
//!   gauges. Nothing on the request path changes for them.
//! - **Recorded where it happens**: per-operation request counts and latency (one call per
//!   operation from the server's dispatch), the log's batch size and flush latency (once
//!   per batch, on the writer thread), checkpoint and recovery durations. These use handles
//!   resolved once and cached in `OnceLock`s, so recording is an atomic add or a lock-free
//!   bucket push: no registry lookup, no lock. The request latency histogram is kept here
//!   ([`render`] appends it to the exporter's text): a frame's operations share one
//!   latency, so recording them is three atomic adds, not one stored sample each. Before [`install`] runs, every recording
//!   function returns at once (tests and `simulate` pay one atomic load).
//!
//! Conventions: `omnistock_` prefix, base units (`_seconds`, `_bytes`), counters end in
//! `_total`, labels have a fixed small set of values (operation names, status names, a few
//! enumerations): never a SKU, reservation or client. Recording never panics or blocks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ops::opcode;
use crate::protocol::status;

// ---- requests (recorded in the server's dispatch) ----

/// Counter `{op, status}`: operations answered, by operation and status name.
pub const REQUESTS_TOTAL: &str = "omnistock_requests_total";
/// Histogram `{op}`, seconds: time from decoding an operation to its result.
pub const REQUEST_DURATION_SECONDS: &str = "omnistock_request_duration_seconds";

// ---- engine (read at scrape time) ----

/// Gauge: active (committed, not yet ended) reservations.
pub const RESERVATIONS: &str = "omnistock_reservations";
/// Counter: reservations placed.
pub const RESERVATIONS_PLACED_TOTAL: &str = "omnistock_reservations_placed_total";
/// Counter `{outcome = fulfilled | released | expired}`: reservations ended.
pub const RESERVATIONS_ENDED_TOTAL: &str = "omnistock_reservations_ended_total";
/// Gauge `{state = active | passive}`: SKUs in memory, with an actor or as compact bytes.
pub const SKUS: &str = "omnistock_skus";
/// Gauge: SKUs with more held than on hand at some location.
pub const SKUS_OVERSOLD: &str = "omnistock_skus_oversold";
/// Gauge: SKUs with a raised projection or recommendation, watched by the re-projection task.
pub const STOCKOUT_WATCHED_SKUS: &str = "omnistock_stockout_watched_skus";
/// Counter: raised stockout projections not watched because the watch set was full.
pub const STOCKOUT_WATCH_OVERFLOW_TOTAL: &str = "omnistock_stockout_watch_overflow_total";
/// Gauge, bytes: compact state of passive SKUs.
pub const PASSIVE_STATE_BYTES: &str = "omnistock_passive_state_bytes";
/// Counter: requests answered `Busy` because a SKU's mailbox was full.
pub const MAILBOX_FULL_TOTAL: &str = "omnistock_mailbox_full_total";
/// Counter: new holds refused without their SKU's actor because the SKU sold out.
pub const SOLD_OUT_REFUSALS_TOTAL: &str = "omnistock_sold_out_refusals_total";
/// Gauge: request ids remembered for idempotency.
pub const IDEMPOTENCY_ENTRIES: &str = "omnistock_idempotency_entries";
/// Gauge: pending expiry deadlines.
pub const EXPIRY_PENDING: &str = "omnistock_expiry_pending";

// ---- write-ahead log ----

/// Histogram: records per group commit (recorded by the writer thread).
pub const WAL_BATCH_RECORDS: &str = "omnistock_wal_batch_records";
/// Histogram, seconds: one batch write (`apply_batch`), flush excluded.
pub const WAL_WRITE_DURATION_SECONDS: &str = "omnistock_wal_write_duration_seconds";
/// Histogram, seconds: one flush (fsync) of the log.
pub const WAL_FLUSH_DURATION_SECONDS: &str = "omnistock_wal_flush_duration_seconds";
/// Counter: records committed to the log.
pub const WAL_RECORDS_TOTAL: &str = "omnistock_wal_records_total";
/// Counter, bytes: encoded bytes committed to the log.
pub const WAL_WRITTEN_BYTES_TOTAL: &str = "omnistock_wal_written_bytes_total";
/// Gauge: records in the log since the last checkpoint (replayed at the next start).
pub const WAL_LOG_RECORDS: &str = "omnistock_wal_log_records";
/// Gauge, bytes: the data directory's size on disk as sled reports it.
pub const WAL_DISK_BYTES: &str = "omnistock_wal_disk_bytes";
/// Gauge: 1 once the log has failed (fail-stop: writes refused), else 0.
pub const WAL_FAILED: &str = "omnistock_wal_failed";
/// Histogram, seconds: one checkpoint, start to header written.
pub const CHECKPOINT_DURATION_SECONDS: &str = "omnistock_checkpoint_duration_seconds";
/// Gauge, bytes: state bytes of the last checkpoint.
pub const CHECKPOINT_BYTES: &str = "omnistock_checkpoint_bytes";
/// Counter: checkpoints that failed.
pub const CHECKPOINT_FAILURES_TOTAL: &str = "omnistock_checkpoint_failures_total";
/// Gauge, seconds since the Unix epoch: when the last successful backup finished (0: none
/// since the start). An alerting rule compares it with `time()`.
pub const BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "omnistock_backup_last_success_timestamp_seconds";
/// Gauge, seconds: duration of the last successful backup.
pub const BACKUP_LAST_DURATION_SECONDS: &str = "omnistock_backup_last_duration_seconds";
/// Gauge, bytes: size of the last successful backup.
pub const BACKUP_LAST_BYTES: &str = "omnistock_backup_last_bytes";
/// Counter: backups that failed (refusals of a bad target or of a second backup excluded).
pub const BACKUP_FAILURES_TOTAL: &str = "omnistock_backup_failures_total";
/// Gauge, seconds: how long the last start-up recovery took.
pub const RECOVERY_DURATION_SECONDS: &str = "omnistock_recovery_duration_seconds";
/// Gauge: log records replayed by the last start-up recovery.
pub const RECOVERY_RECORDS: &str = "omnistock_recovery_records";

// ---- server (read at scrape time) ----

/// Gauge: open client connections.
pub const CONNECTIONS: &str = "omnistock_connections";
/// Counter: connections accepted.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "omnistock_connections_accepted_total";
/// Counter: connections refused at the connection limit.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "omnistock_connections_refused_total";
/// Counter: handshakes refused for a missing or unknown token.
pub const AUTH_FAILURES_TOTAL: &str = "omnistock_auth_failures_total";
/// Counter: connections closed for a malformed or oversized frame.
pub const PROTOCOL_ERRORS_TOTAL: &str = "omnistock_protocol_errors_total";
/// Counter: request frames run in one engine call with other pipelined frames.
pub const FRAMES_GROUPED_TOTAL: &str = "omnistock_request_frames_grouped_total";
/// Counter: connections closed for idleness.
pub const IDLE_DISCONNECTS_TOTAL: &str = "omnistock_idle_disconnects_total";
/// Counter: connections closed because the client did not read its answers: nothing written
/// within `write_timeout_ms`, or more than `max_output_bytes` queued.
pub const SLOW_READER_DISCONNECTS_TOTAL: &str = "omnistock_slow_reader_disconnects_total";
/// Counter: connections refused at `max_connections_per_source`.
pub const SOURCE_LIMIT_REFUSALS_TOTAL: &str = "omnistock_source_limit_refusals_total";
/// Handshakes refused unchecked: their source made too many failed ones.
pub const AUTH_THROTTLED_TOTAL: &str = "omnistock_auth_throttled_total";
/// Gauge: connections that have not completed their `Hello` yet.
pub const HANDSHAKES_PENDING: &str = "omnistock_handshakes_pending";
/// Counter: pending handshakes closed to make room (`max_pending_handshakes`).
pub const HANDSHAKES_EVICTED_TOTAL: &str = "omnistock_handshakes_evicted_total";
/// Counter, labels `port` (binary, http) and `reason` (plaintext, handshake, timeout,
/// tls_on_plaintext_port): TLS handshakes that did not complete.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "omnistock_tls_handshake_failures_total";
/// Counter, label `port` (binary, http): TLS identities re-read at SIGHUP and in use since.
pub const TLS_RELOADS_TOTAL: &str = "omnistock_tls_reloads_total";
/// Counter, label `port` (binary, http): reloads at SIGHUP that failed (a missing or bad
/// file, a key not matching the certificate); the identity in use stayed.
pub const TLS_RELOAD_FAILURES_TOTAL: &str = "omnistock_tls_reload_failures_total";
/// Gauge, bytes: what all connections hold in buffers (queued output, partial frames) or
/// have reserved for requests in flight.
pub const CONNECTION_BUFFERED_BYTES: &str = "omnistock_connection_buffered_bytes";
/// Connections with request frames still buffered after their turn.
pub const BUSY_CONNECTIONS: &str = "omnistock_busy_connections";
/// Counter: request frames answered busy because connection memory was over budget.
pub const MEMORY_BUDGET_BUSY_TOTAL: &str = "omnistock_memory_budget_busy_total";
/// Counter: connections closed because a large frame they had begun found no room under
/// `max_connections_memory_bytes` before its `frame_timeout_ms`.
pub const MEMORY_BUDGET_DISCONNECTS_TOTAL: &str = "omnistock_memory_budget_disconnects_total";
/// Counter: request frames received (one frame carries a batch of operations).
pub const REQUEST_FRAMES_TOTAL: &str = "omnistock_request_frames_total";

// ---- HTTP endpoint (recorded by src/http/) ----

/// Counter `{route, status}`: HTTP requests answered, by route template (`/v1/skus/{sku}`;
/// `other` for paths no route matches) and HTTP status code.
pub const HTTP_REQUESTS_TOTAL: &str = "omnistock_http_requests_total";
/// Counter: HTTP connections refused (429) at `http_max_connections_per_source`.
pub const HTTP_SOURCE_LIMIT_REFUSALS_TOTAL: &str = "omnistock_http_source_limit_refusals_total";
/// Gauge: HTTP event streams (`GET /v1/events`) open.
pub const HTTP_EVENT_STREAMS: &str = "omnistock_http_event_streams";
/// Counter: HTTP API requests with a missing or unknown token (throttled ones included).
pub const HTTP_AUTH_FAILURES_TOTAL: &str = "omnistock_http_auth_failures_total";

// ---- subscriptions (recorded by src/feed/) ----

/// Gauge: connected subscriptions.
pub const SUBSCRIBERS: &str = "omnistock_subscribers";
/// Counter: events sent to subscribers.
pub const SUBSCRIPTION_EVENTS_SENT_TOTAL: &str = "omnistock_subscription_events_sent_total";
/// Gauge: the largest backlog of any subscriber, in events.
pub const SUBSCRIBER_LAG_MAX_EVENTS: &str = "omnistock_subscriber_lag_max_events";
/// Counter `{reason = lagged | closed | error}`: subscribers disconnected.
pub const SUBSCRIBER_DISCONNECTS_TOTAL: &str = "omnistock_subscriber_disconnects_total";
/// Counter: events merged by coalescing (not sent separately).
pub const SUBSCRIPTION_COALESCED_TOTAL: &str = "omnistock_subscription_coalesced_total";
/// Gauge `{name}`, records: the feed's head minus the position stored under a subscription
/// name (`ACK`, a webhook endpoint's `webhook.<name>`, the NATS bridge's `nats.<stream>`);
/// set at each scrape, one series per stored name (at most `MAX_NAMED_SUBSCRIPTIONS`).
pub const SUBSCRIPTION_LAG_RECORDS: &str = "omnistock_subscription_lag_records";
/// The values of the `reason` label of [`SUBSCRIBER_DISCONNECTS_TOTAL`].
pub const SUBSCRIBER_DISCONNECT_REASONS: [&str; 3] = ["lagged", "closed", "error"];

// ---- webhooks (label `endpoint`: the configured name, at most 64 of them) ----

/// Counter `{endpoint}`: events the endpoint answered 2xx for (a resend counts again).
pub const WEBHOOK_EVENTS_DELIVERED_TOTAL: &str = "omnistock_webhook_events_delivered_total";
/// Counter `{endpoint}`: failed delivery attempts (non-2xx, timeout, connection error).
pub const WEBHOOK_REQUESTS_FAILED_TOTAL: &str = "omnistock_webhook_requests_failed_total";
/// Gauge `{endpoint}`, records: the feed's head minus the endpoint's delivered position.
pub const WEBHOOK_LAG_RECORDS: &str = "omnistock_webhook_lag_records";
/// Gauge `{endpoint}`: 1 while the endpoint is dead-lettered (paused), else 0.
pub const WEBHOOK_DEAD_LETTERED: &str = "omnistock_webhook_dead_lettered";
/// The per-endpoint series: they exist only once a webhook endpoint is configured, so a
/// scrape without one lacks them (tests/webhooks.rs scrapes them with an endpoint).
pub const PER_WEBHOOK_ENDPOINT: [&str; 4] = [
    WEBHOOK_EVENTS_DELIVERED_TOTAL,
    WEBHOOK_REQUESTS_FAILED_TOTAL,
    WEBHOOK_LAG_RECORDS,
    WEBHOOK_DEAD_LETTERED,
];

// ---- NATS JetStream bridge (label `stream`: the configured stream, one per server) ----

/// Counter `{stream}`: events JetStream stored (acknowledged, not a duplicate).
pub const NATS_EVENTS_PUBLISHED_TOTAL: &str = "omnistock_nats_events_published_total";
/// Counter `{stream}`: failed bridge runs (unacknowledged or refused publish, lost
/// connection, stream missing or unusable); each is followed by a back-off.
pub const NATS_PUBLISH_FAILED_TOTAL: &str = "omnistock_nats_publish_failures_total";
/// Gauge `{stream}`, records: the feed's head minus the bridge's acknowledged position.
pub const NATS_LAG_RECORDS: &str = "omnistock_nats_lag_records";
/// Gauge `{stream}`: 1 while connected to NATS, else 0.
pub const NATS_CONNECTED: &str = "omnistock_nats_connected";
/// The bridge's series, and the per-name lag: they exist only once `[nats]` is configured
/// or a name is stored (tests/nats.rs scrapes them).
pub const PER_NATS_STREAM: [&str; 5] = [
    SUBSCRIPTION_LAG_RECORDS,
    NATS_EVENTS_PUBLISHED_TOTAL,
    NATS_PUBLISH_FAILED_TOTAL,
    NATS_LAG_RECORDS,
    NATS_CONNECTED,
];

// ---- process ----

/// Gauge, bytes: resident set size, read from /proc/self/status at each scrape.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "omnistock_process_resident_memory_bytes";
/// Gauge: 1 when ready (recovery done, log writable, not shutting down), else 0.
pub const READY: &str = "omnistock_ready";
/// Gauge `{version}`: always 1; carries the build's version.
pub const BUILD_INFO: &str = "omnistock_build_info";

/// Latency buckets (seconds), 10 µs to 1 s: every `_seconds` histogram except checkpoints.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Checkpoint duration buckets (seconds), 10 ms to 10 min.
pub const CHECKPOINT_BUCKETS_SECONDS: [f64; 11] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
/// Records-per-batch buckets, powers of 4 from 1 to 65,536.
pub const BATCH_RECORDS_BUCKETS: [f64; 9] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// Every metric name with its kind, unit and help text.
#[rustfmt::skip]
const DESCRIPTIONS: &[(&str, Kind, Option<Unit>, &str)] = &[
    (REQUESTS_TOTAL, Kind::Counter, None, "Operations answered, by operation and status."),
    (REQUEST_DURATION_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Time from decoding an operation to its result, by operation."),
    (RESERVATIONS, Kind::Gauge, None, "Active reservations (placed, not yet fulfilled, released or expired)."),
    (RESERVATIONS_PLACED_TOTAL, Kind::Counter, None, "Reservations placed."),
    (RESERVATIONS_ENDED_TOTAL, Kind::Counter, None, "Reservations ended, by outcome (fulfilled, released, expired)."),
    (SKUS, Kind::Gauge, None, "SKUs in memory, by state: active (an actor) or passive (compact bytes)."),
    (SKUS_OVERSOLD, Kind::Gauge, None, "SKUs with more units held than on hand, or a shortfall, at some location."),
    (STOCKOUT_WATCHED_SKUS, Kind::Gauge, None, "SKUs with a raised stockout projection (per channel or region) or rebalance recommendation, re-evaluated by the engine so that decay alone can clear it (at most 100,000)."),
    (STOCKOUT_WATCH_OVERFLOW_TOTAL, Kind::Counter, None, "Raised stockout projections not watched because 100,000 SKUs already were: they clear only with their SKU's next record."),
    (PASSIVE_STATE_BYTES, Kind::Gauge, Some(Unit::Bytes), "Bytes of compact state of passive SKUs."),
    (MAILBOX_FULL_TOTAL, Kind::Counter, None, "Requests answered Busy because a SKU's mailbox was full."),
    (SOLD_OUT_REFUSALS_TOTAL, Kind::Counter, None, "New holds refused as insufficient stock without their SKU's actor, because the SKU had sold out."),
    (IDEMPOTENCY_ENTRIES, Kind::Gauge, None, "Request ids remembered for idempotency."),
    (EXPIRY_PENDING, Kind::Gauge, None, "Pending reservation expiry deadlines."),
    (WAL_BATCH_RECORDS, Kind::Histogram, None, "Records per write-ahead-log group commit."),
    (WAL_WRITE_DURATION_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Duration of one log batch write, flush excluded."),
    (WAL_FLUSH_DURATION_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Duration of one log flush (fsync)."),
    (WAL_RECORDS_TOTAL, Kind::Counter, None, "Records committed to the write-ahead log."),
    (WAL_WRITTEN_BYTES_TOTAL, Kind::Counter, Some(Unit::Bytes), "Encoded bytes committed to the write-ahead log."),
    (WAL_LOG_RECORDS, Kind::Gauge, None, "Records in the log since the last checkpoint (replayed at the next start)."),
    (WAL_DISK_BYTES, Kind::Gauge, Some(Unit::Bytes), "Size of the data directory on disk as sled reports it."),
    (WAL_FAILED, Kind::Gauge, None, "1 once the log has failed and writes are refused (fail-stop), else 0."),
    (CHECKPOINT_DURATION_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Duration of one checkpoint."),
    (CHECKPOINT_BYTES, Kind::Gauge, Some(Unit::Bytes), "State bytes written by the last checkpoint."),
    (CHECKPOINT_FAILURES_TOTAL, Kind::Counter, None, "Checkpoints that failed."),
    (BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS, Kind::Gauge, Some(Unit::Seconds), "When the last successful backup finished, seconds since the Unix epoch (0: none since the start)."),
    (BACKUP_LAST_DURATION_SECONDS, Kind::Gauge, Some(Unit::Seconds), "Duration of the last successful backup."),
    (BACKUP_LAST_BYTES, Kind::Gauge, Some(Unit::Bytes), "Bytes on disk of the last successful backup."),
    (BACKUP_FAILURES_TOTAL, Kind::Counter, None, "Backups that failed (refused targets and a second concurrent backup excluded)."),
    (RECOVERY_DURATION_SECONDS, Kind::Gauge, Some(Unit::Seconds), "Duration of the last start-up recovery."),
    (RECOVERY_RECORDS, Kind::Gauge, None, "Log records replayed by the last start-up recovery."),
    (CONNECTIONS, Kind::Gauge, None, "Open client connections."),
    (CONNECTIONS_ACCEPTED_TOTAL, Kind::Counter, None, "Client connections accepted."),
    (CONNECTIONS_REFUSED_TOTAL, Kind::Counter, None, "Client connections refused at the connection limit."),
    (AUTH_FAILURES_TOTAL, Kind::Counter, None, "Handshakes refused for a missing or unknown token."),
    (PROTOCOL_ERRORS_TOTAL, Kind::Counter, None, "Connections closed for a malformed or oversized frame."),
    (IDLE_DISCONNECTS_TOTAL, Kind::Counter, None, "Connections closed for idleness."),
    (FRAMES_GROUPED_TOTAL, Kind::Counter, None, "Request frames run in one engine call together with other pipelined frames of their connection."),
    (SLOW_READER_DISCONNECTS_TOTAL, Kind::Counter, None, "Connections closed because the client did not read its answers: nothing written within the write timeout, or more than max_output_bytes queued."),
    (SOURCE_LIMIT_REFUSALS_TOTAL, Kind::Counter, None, "Connections refused because max_connections_per_source were open from the same IP."),
    (AUTH_THROTTLED_TOTAL, Kind::Counter, None, "Handshakes refused without checking their token because their source made 20 failed ones within 60 s."),
    (HANDSHAKES_PENDING, Kind::Gauge, None, "Connections that have not completed their Hello yet."),
    (HANDSHAKES_EVICTED_TOTAL, Kind::Counter, None, "Pending handshakes closed to make room for a newer one (max_pending_handshakes)."),
    (TLS_HANDSHAKE_FAILURES_TOTAL, Kind::Counter, None, "TLS handshakes that did not complete, by port and reason (plaintext, handshake, timeout, tls_on_plaintext_port)."),
    (TLS_RELOADS_TOTAL, Kind::Counter, None, "TLS certificates and keys re-read at SIGHUP and used for new handshakes since, by port."),
    (TLS_RELOAD_FAILURES_TOTAL, Kind::Counter, None, "TLS reloads at SIGHUP that failed (a missing or bad file, a key not matching its certificate); the certificate in use stayed. By port."),
    (CONNECTION_BUFFERED_BYTES, Kind::Gauge, Some(Unit::Bytes), "Bytes all connections hold or have reserved: output not yet written, partial frames, requests in flight with their estimated answers."),
    (BUSY_CONNECTIONS, Kind::Gauge, None, "Connections with request frames still buffered after their turn; beyond 8 they take turns in the busy lane."),
    (MEMORY_BUDGET_BUSY_TOTAL, Kind::Counter, None, "Request frames answered busy, unrun, because connection memory was over max_connections_memory_bytes (from connections holding other answers or requests, or large requests)."),
    (MEMORY_BUDGET_DISCONNECTS_TOTAL, Kind::Counter, None, "Connections closed because a large frame they had begun found no room under max_connections_memory_bytes within frame_timeout_ms."),
    (REQUEST_FRAMES_TOTAL, Kind::Counter, None, "Request frames received (each carries a batch of operations)."),
    (HTTP_REQUESTS_TOTAL, Kind::Counter, None, "HTTP requests answered, by route template (other: no route) and status code."),
    (HTTP_SOURCE_LIMIT_REFUSALS_TOTAL, Kind::Counter, None, "HTTP connections refused with 429 because http_max_connections_per_source were open from the same IP."),
    (HTTP_EVENT_STREAMS, Kind::Gauge, None, "HTTP event streams (GET /v1/events) open."),
    (HTTP_AUTH_FAILURES_TOTAL, Kind::Counter, None, "HTTP API requests refused for a missing or unknown token, or throttled after too many."),
    (SUBSCRIBERS, Kind::Gauge, None, "Connected stock-change subscriptions (binary and HTTP)."),
    (SUBSCRIPTION_EVENTS_SENT_TOTAL, Kind::Counter, None, "Events sent to subscribers."),
    (SUBSCRIBER_LAG_MAX_EVENTS, Kind::Gauge, None, "Largest backlog of any subscriber, in events."),
    (SUBSCRIBER_DISCONNECTS_TOTAL, Kind::Counter, None, "Subscribers disconnected, by reason (lagged, closed, error)."),
    (SUBSCRIPTION_COALESCED_TOTAL, Kind::Counter, None, "Subscription events merged by coalescing."),
    (WEBHOOK_EVENTS_DELIVERED_TOTAL, Kind::Counter, None, "Events a webhook endpoint answered 2xx for, by endpoint."),
    (WEBHOOK_REQUESTS_FAILED_TOTAL, Kind::Counter, None, "Failed webhook delivery attempts (non-2xx, timeout, connection error), by endpoint."),
    (WEBHOOK_LAG_RECORDS, Kind::Gauge, None, "Log records between the feed's head and a webhook endpoint's delivered position."),
    (WEBHOOK_DEAD_LETTERED, Kind::Gauge, None, "1 while a webhook endpoint is dead-lettered (paused after max_attempts failures)."),
    (SUBSCRIPTION_LAG_RECORDS, Kind::Gauge, None, "Log records between the feed's head and the position stored under a subscription name, by name."),
    (NATS_EVENTS_PUBLISHED_TOTAL, Kind::Counter, None, "Events the NATS JetStream stream stored (acknowledged, not duplicates)."),
    (NATS_PUBLISH_FAILED_TOTAL, Kind::Counter, None, "Failed NATS bridge runs (publish refused or unacknowledged, connection lost, stream unusable), each followed by a back-off."),
    (NATS_LAG_RECORDS, Kind::Gauge, None, "Log records between the feed's head and the NATS bridge's acknowledged position."),
    (NATS_CONNECTED, Kind::Gauge, None, "1 while the NATS bridge is connected to NATS."),
    (PROCESS_RESIDENT_MEMORY_BYTES, Kind::Gauge, Some(Unit::Bytes), "Resident set size of the process."),
    (READY, Kind::Gauge, None, "1 when ready: recovery done, log writable, not shutting down."),
    (BUILD_INFO, Kind::Gauge, None, "Always 1; the version label names the build."),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The standard process series (the Prometheus client libraries' names, no `omnistock_`
/// prefix, so stock dashboards and alerts work), read by the `metrics-process` crate at
/// each scrape ([`collect_process`]): CPU seconds (a counter of whole seconds: the
/// recorder's counters are integers), open and maximum file descriptors, virtual and
/// resident memory, start time, threads.
pub const PROCESS_STANDARD: [&str; 8] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Reads the process's CPU time, file descriptors, memory, start time and threads into the
/// [`PROCESS_STANDARD`] series (procfs on Linux; a value the platform does not give is
/// left out). Called at each scrape, off the async threads.
pub fn collect_process() {
    if HANDLE.get().is_some() {
        process_collector().collect();
    }
}

/// Every metric name this module defines (tests check each appears in a scrape).
pub fn names() -> impl Iterator<Item = &'static str> {
    DESCRIPTIONS.iter().map(|d| d.0)
}

/// Registers the type, unit and help text of every metric with the installed recorder.
pub fn describe() {
    for &(name, kind, unit, help) in DESCRIPTIONS {
        if name == REQUEST_DURATION_SECONDS {
            // Not the exporter's: described by `render` with its series.
            continue;
        }
        match (kind, unit) {
            (Kind::Counter, Some(u)) => describe_counter!(name, u, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => describe_gauge!(name, u, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => describe_histogram!(name, u, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

/// Operation label values, by opcode. Anything else is `other`.
const OPS: &[(u16, &str)] = &[
    (opcode::PING, "ping"),
    (opcode::SERVER_INFO, "server_info"),
    (opcode::RESERVE, "reserve"),
    (opcode::FULFILL, "fulfill"),
    (opcode::RELEASE, "release"),
    (opcode::EXTEND, "extend"),
    (opcode::ADJUST, "adjust"),
    (opcode::SET_ON_HAND, "set_on_hand"),
    (opcode::MOVE, "move"),
    (opcode::TRANSFER, "transfer"),
    (opcode::SET_SAFETY_STOCK, "set_safety_stock"),
    (opcode::SET_INCOMING, "set_incoming"),
    (opcode::UPSERT_LOCATION, "upsert_location"),
    (opcode::UPSERT_CHANNEL, "upsert_channel"),
    (opcode::LIST_LOCATIONS, "list_locations"),
    (opcode::LIST_CHANNELS, "list_channels"),
    (opcode::GET_SKU, "get_sku"),
    (opcode::GET_SKUS, "get_skus"),
    (opcode::GET_RESERVATION, "get_reservation"),
    (opcode::EXPLAIN_ATP, "explain_atp"),
    (opcode::VELOCITY, "velocity"),
    (opcode::AT_RISK, "at_risk"),
    (opcode::AT_RISK_REGION, "at_risk_region"),
    (opcode::REBALANCE_LIST, "rebalance_list"),
    (opcode::SUBSCRIBE, "subscribe"),
    (opcode::UNSUBSCRIBE, "unsubscribe"),
    (opcode::ACK, "ack"),
    (opcode::SKU_HISTORY, "sku_history"),
];
/// Slots per dimension: the known values plus one for "other".
const N_OPS: usize = OPS.len() + 1;
/// Statuses 0..=16 and 100..=111, plus one slot for any other.
const N_STATUS: usize = 17 + 12 + 1;

/// The `op` label of an opcode.
pub fn op_label(op: u16) -> &'static str {
    OPS.get(op_index(op)).map_or("other", |o| o.1)
}

fn op_index(op: u16) -> usize {
    OPS.iter().position(|o| o.0 == op).unwrap_or(OPS.len())
}

fn status_index(s: u16) -> usize {
    match s {
        0..=16 => usize::from(s),
        100..=111 => 17 + usize::from(s - 100),
        _ => N_STATUS - 1,
    }
}

/// `omnistock_request_duration_seconds` of one operation, kept here rather than in the
/// exporter: the `n` operations of a frame share one latency, so recording them is one
/// bucket, count and sum increment each. (The exporter's histogram stores every sample —
/// `n` per frame — and folds them into buckets at upkeep: about 160 instructions per
/// operation on the request path, and upkeep work on top, in the batched benchmark.)
/// Rendered after the exporter's text by [`render`], in the same format.
struct Latency {
    /// Samples per bucket of [`LATENCY_BUCKETS_SECONDS`], not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    count: AtomicU64,
    /// Sum of the samples in units of 100 ns (wraps after 58 years at 100 s of latency per
    /// second; Prometheus reads a wrap as a counter reset).
    sum_100ns: AtomicU64,
}

/// [`LATENCY_BUCKETS_SECONDS`] in nanoseconds (a sample in bucket `i` is `<=` bound `i`).
const LATENCY_BOUNDS_NS: [u64; LATENCY_BUCKETS_SECONDS.len()] = {
    let mut ns = [0u64; LATENCY_BUCKETS_SECONDS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    ns
};

impl Latency {
    fn new() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_100ns: AtomicU64::new(0),
        }
    }

    fn record(&self, elapsed: Duration, n: u64) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_100ns
            .fetch_add((ns / 100).wrapping_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends the series of operation `op` in the Prometheus text format.
    fn render_into(&self, op: &str, out: &mut String) {
        let name = REQUEST_DURATION_SECONDS;
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le: &dyn std::fmt::Display = match LATENCY_BUCKETS_SECONDS.get(i) {
                Some(bound) => bound,
                None => &"+Inf",
            };
            let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_100ns.load(Ordering::Relaxed) as f64 / 1e7;
        let _ = writeln!(out, "{name}_sum{{op=\"{op}\"}} {sum}");
        // The count is read after the buckets: never below their total.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {count}");
    }
}

/// The scrape: the exporter's text, then the request latency histogram ([`Latency`]).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    let Some(hot) = HOT.get() else { return out };
    let help = DESCRIPTIONS
        .iter()
        .find(|d| d.0 == REQUEST_DURATION_SECONDS)
        .map_or("", |d| d.3);
    let name = REQUEST_DURATION_SECONDS;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let reserve = op_index(opcode::RESERVE);
    for (i, l) in hot.latency.iter().enumerate() {
        // Reserve's series exists from the start (dashboards show 0, not "no data").
        if i == reserve || l.count.load(Ordering::Relaxed) > 0 {
            let op = OPS.get(i).map_or("other", |o| o.1);
            l.render_into(op, &mut out);
        }
    }
    out
}

/// Handles resolved once per label set, so recording never looks a key up in the registry.
struct Hot {
    requests: Box<[OnceLock<Counter>]>,
    latency: Box<[Latency]>,
    wal_batch: Histogram,
    wal_write: Histogram,
    wal_flush: Histogram,
}

static HOT: OnceLock<Hot> = OnceLock::new();
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for the process (histogram buckets as above), describes
/// every metric and creates every unlabelled or fixed-label series at zero, so the first
/// scrape already lists them all. Idempotent: later calls return the same handle.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    // One installer at a time, so a second caller gets the first one's handle.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full(CHECKPOINT_DURATION_SECONDS.into()),
            &CHECKPOINT_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(WAL_BATCH_RECORDS.into()),
            &BATCH_RECORDS_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    process_collector().describe();
    let _ = HOT.set(Hot {
        requests: (0..N_OPS * N_STATUS).map(|_| OnceLock::new()).collect(),
        latency: (0..N_OPS).map(|_| Latency::new()).collect(),
        wal_batch: histogram!(WAL_BATCH_RECORDS),
        wal_write: histogram!(WAL_WRITE_DURATION_SECONDS),
        wal_flush: histogram!(WAL_FLUSH_DURATION_SECONDS),
    });
    create_series();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// The installed recorder's handle, if [`install`] ran.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}

/// Series that exist before anything happens (dashboards show 0, not "no data").
fn create_series() {
    for outcome in ["fulfilled", "released", "expired"] {
        counter!(RESERVATIONS_ENDED_TOTAL, "outcome" => outcome).absolute(0);
    }
    for reason in SUBSCRIBER_DISCONNECT_REASONS {
        counter!(SUBSCRIBER_DISCONNECTS_TOTAL, "reason" => reason).increment(0);
    }
    counter!(SUBSCRIPTION_EVENTS_SENT_TOTAL).increment(0);
    counter!(HTTP_REQUESTS_TOTAL, "route" => "/healthz", "status" => "200").increment(0);
    gauge!(HTTP_EVENT_STREAMS).increment(0.0);
    counter!(HTTP_AUTH_FAILURES_TOTAL).increment(0);
    counter!(SUBSCRIPTION_COALESCED_TOTAL).increment(0);
    gauge!(SUBSCRIBERS).increment(0.0);
    gauge!(SUBSCRIBER_LAG_MAX_EVENTS).increment(0.0);
    counter!(CHECKPOINT_FAILURES_TOTAL).increment(0);
    for port in ["binary", "http"] {
        counter!(TLS_RELOADS_TOTAL, "port" => port).increment(0);
        counter!(TLS_RELOAD_FAILURES_TOTAL, "port" => port).increment(0);
    }
    counter!(BACKUP_FAILURES_TOTAL).increment(0);
    gauge!(BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS).increment(0.0);
    gauge!(BACKUP_LAST_DURATION_SECONDS).increment(0.0);
    gauge!(BACKUP_LAST_BYTES).increment(0.0);
    gauge!(CHECKPOINT_BYTES).increment(0.0);
    gauge!(RECOVERY_DURATION_SECONDS).increment(0.0);
    gauge!(RECOVERY_RECORDS).increment(0.0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Histograms appear once they have a sample; checkpoints may take hours to get one.
    let _ = histogram!(CHECKPOINT_DURATION_SECONDS);
    counter!(REQUESTS_TOTAL, "op" => "reserve", "status" => "ok").increment(0);
    // Counters and gauges read at scrape time are created by the first `collect`.
}

/// Records one answered operation: a counter by (op, status) and a latency sample by op.
pub fn record_op(op: u16, status: u16, elapsed: Duration) {
    record_ops(op, status, elapsed, 1);
}

/// Records `n` answered operations of the same opcode and status that took `elapsed` each
/// (the operations of one frame): the counter by (op, status) once, `n` latency samples.
pub fn record_ops(op: u16, status: u16, elapsed: Duration, n: usize) {
    let Some(hot) = HOT.get() else { return };
    if n == 0 {
        return;
    }
    let (o, s) = (op_index(op), status_index(status));
    let (op_name, status_name) = (op_label(op), status::name(status));
    if let Some(c) = hot.requests.get(o * N_STATUS + s) {
        c.get_or_init(|| counter!(REQUESTS_TOTAL, "op" => op_name, "status" => status_name))
            .increment(n as u64);
    }
    if let Some(h) = hot.latency.get(o) {
        h.record(elapsed, n as u64);
    }
}

/// The start of a request frame's operations, when metrics are installed (the frame's
/// operations are then recorded with [`record_op`], each with the frame's latency).
pub fn op_clock() -> Option<Instant> {
    HOT.get().map(|_| Instant::now())
}

/// The log writer committed a batch of `records` in `write_us` microseconds.
pub fn wal_batch(records: u64, write_us: u64) {
    if let Some(hot) = HOT.get() {
        hot.wal_batch.record(records as f64);
        hot.wal_write.record(micros_to_secs(write_us));
    }
}

/// The log writer flushed in `flush_us` microseconds.
pub fn wal_flush(flush_us: u64) {
    if let Some(hot) = HOT.get() {
        hot.wal_flush.record(micros_to_secs(flush_us));
    }
}

fn micros_to_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A checkpoint of `bytes` state bytes took `took`.
pub fn checkpoint_done(took: Duration, bytes: usize) {
    if HOT.get().is_some() {
        histogram!(CHECKPOINT_DURATION_SECONDS).record(took.as_secs_f64());
        gauge!(CHECKPOINT_BYTES).set(bytes as f64);
    }
}

/// A TLS reload on `port` at SIGHUP succeeded (`ok`) or failed.
pub fn tls_reload(port: &'static str, ok: bool) {
    if HOT.get().is_some() {
        let name = if ok {
            TLS_RELOADS_TOTAL
        } else {
            TLS_RELOAD_FAILURES_TOTAL
        };
        counter!(name, "port" => port).increment(1);
    }
}

/// A checkpoint failed.
pub fn checkpoint_failed() {
    if HOT.get().is_some() {
        counter!(CHECKPOINT_FAILURES_TOTAL).increment(1);
    }
}

/// A backup of `bytes` bytes finished, after `took`.
pub fn backup_done(took: Duration, bytes: u64) {
    if HOT.get().is_some() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge!(BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS).set(now);
        gauge!(BACKUP_LAST_DURATION_SECONDS).set(took.as_secs_f64());
        gauge!(BACKUP_LAST_BYTES).set(bytes as f64);
    }
}

/// A backup failed.
pub fn backup_failed() {
    if HOT.get().is_some() {
        counter!(BACKUP_FAILURES_TOTAL).increment(1);
    }
}

/// Start-up recovery replayed `records` log records in `took`.
pub fn recovery_done(took: Duration, records: u64) {
    if HOT.get().is_some() {
        gauge!(RECOVERY_DURATION_SECONDS).set(took.as_secs_f64());
        gauge!(RECOVERY_RECORDS).set(records as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bounds_are_the_buckets_in_nanoseconds() {
        for (ns, s) in LATENCY_BOUNDS_NS.iter().zip(LATENCY_BUCKETS_SECONDS) {
            assert_eq!(*ns, (s * 1e9).round() as u64);
        }
    }

    #[test]
    fn a_frame_of_operations_is_counted_in_its_bucket_cumulatively() {
        let l = Latency::new();
        // On a bound: in that bucket (`le`); just above: the next one.
        l.record(Duration::from_micros(10), 3);
        l.record(Duration::from_nanos(10_001), 2);
        l.record(Duration::from_secs(2), 1);
        let mut out = String::new();
        l.render_into("reserve", &mut out);
        let value = |series: &str| -> String {
            out.lines()
                .find_map(|line| line.strip_prefix(series))
                .unwrap_or_else(|| panic!("{series} missing in {out}"))
                .trim()
                .to_owned()
        };
        let b = |le: &str| {
            value(&format!(
                "{REQUEST_DURATION_SECONDS}_bucket{{op=\"reserve\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(b("0.00001"), "3");
        assert_eq!(b("0.000025"), "5");
        assert_eq!(b("1"), "5");
        assert_eq!(b("+Inf"), "6");
        assert_eq!(
            value(&format!(
                "{REQUEST_DURATION_SECONDS}_count{{op=\"reserve\"}}"
            )),
            "6"
        );
        let sum: f64 = value(&format!("{REQUEST_DURATION_SECONDS}_sum{{op=\"reserve\"}}"))
            .parse()
            .expect("a number");
        assert!(
            (sum - (3.0 * 10e-6 + 2.0 * 10.001e-6 + 2.0)).abs() < 1e-6,
            "{sum}"
        );
    }

    #[test]
    fn metric_names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, unit, help) in DESCRIPTIONS {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(name.starts_with("omnistock_"), "{name}");
            assert!(!help.is_empty(), "{name}");
            let total = name.ends_with("_total");
            assert_eq!(
                matches!(kind, Kind::Counter),
                total,
                "{name}: _total iff counter"
            );
            match unit {
                Some(Unit::Seconds) => assert!(name.contains("_seconds"), "{name}"),
                Some(Unit::Bytes) => assert!(name.contains("_bytes"), "{name}"),
                _ => assert!(
                    !name.contains("_seconds") && !name.contains("_bytes"),
                    "{name}"
                ),
            }
        }
    }

    #[test]
    fn every_status_and_opcode_has_its_own_slot() {
        for s in (0..=16).chain(100..=111) {
            assert_ne!(status_index(s), N_STATUS - 1, "{s}");
        }
        assert_eq!(status_index(17), N_STATUS - 1);
        assert_eq!(status_index(u16::MAX), N_STATUS - 1);
        assert_eq!(op_label(opcode::RESERVE), "reserve");
        assert_eq!(op_label(0x7777), "other");
        let labels: std::collections::HashSet<_> = OPS.iter().map(|o| o.1).collect();
        assert_eq!(labels.len(), OPS.len());
    }
}
