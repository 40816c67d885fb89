//! Settings of `omnistock serve`: flags, environment variables (`OMNISTOCK_...`, read by clap
//! for each flag) and an optional TOML file (`--config`). A flag or its environment variable
//! wins over the file, the file over the built-in default; every default works out of the
//! box on one machine. Every setting is checked before anything starts, and an invalid one
//! is an error naming it (`invalid setting max_connections: must be 1..=1000000`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use omnistock::domain::HalfLives;
use omnistock::engine::{EngineConfig, PersistConfig};
use omnistock::feed::subscription::SubscriptionConfig;
use omnistock::http::HttpConfig;
use omnistock::nats::NatsConfig;
use omnistock::protocol::Role;
use omnistock::server::ServerConfig;
use omnistock::wal::Durability;
use omnistock::webhooks::{EndpointConfig, WebhooksConfig};
use serde::Deserialize;

/// Default of `--listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Default of `--admin-listen`.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9878";
/// Default of `--data-dir`.
const DEFAULT_DATA_DIR: &str = "./omnistock-data";

/// Flags of `serve`. Each also reads the environment variable shown in `--help`.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// TOML settings file; flags and environment variables override it.
    #[arg(long, env = "OMNISTOCK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the binary protocol [default: 127.0.0.1:7878].
    #[arg(long, env = "OMNISTOCK_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin HTTP endpoint: /metrics, /healthz, /readyz
    /// [default: 127.0.0.1:9878].
    #[arg(long, env = "OMNISTOCK_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Data directory of the write-ahead log and checkpoints [default: ./omnistock-data].
    #[arg(long, env = "OMNISTOCK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Create a new, empty inventory if the data directory is missing or empty. Without
    /// it such a directory is refused (a volume that failed to mount looks empty); an
    /// existing directory opens the same either way. For the first start only: do not
    /// leave it in a unit file [default: false].
    #[arg(long, env = "OMNISTOCK_INIT")]
    pub init: bool,
    /// An auth token and its role (checkout, adapter, admin); repeatable, comma-separated in
    /// the environment variable. Without any, every client is admin, and only on a loopback
    /// address [default: none].
    #[arg(
        long = "token",
        env = "OMNISTOCK_TOKENS",
        value_name = "TOKEN:ROLE",
        value_delimiter = ','
    )]
    pub tokens: Vec<String>,
    /// Log format: human (readable lines) or json (one object per line) [default: human].
    #[arg(long, env = "OMNISTOCK_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info, debug, omnistock=debug,sled=warn [default: info, or RUST_LOG].
    #[arg(long, env = "OMNISTOCK_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Most open client connections [default: 10000].
    #[arg(long, env = "OMNISTOCK_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most requests in flight per connection (back-pressure) [default: 1024].
    #[arg(long, env = "OMNISTOCK_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Largest frame accepted, in bytes [default: 1048576].
    #[arg(long, env = "OMNISTOCK_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Most operations per request frame [default: 8190].
    #[arg(long, env = "OMNISTOCK_MAX_BATCH_OPS", value_name = "N")]
    pub max_batch_ops: Option<usize>,
    /// Most lines per reservation [default: 100].
    #[arg(long, env = "OMNISTOCK_MAX_LINES_PER_RESERVATION", value_name = "N")]
    pub max_lines_per_reservation: Option<usize>,
    /// Idle connections are closed after this long, in ms [default: 300000].
    #[arg(long, env = "OMNISTOCK_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Time a new connection has to send its Hello, in ms [default: 5000].
    #[arg(long, env = "OMNISTOCK_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Most connections still waiting to send their Hello, in a pool of their own (they
    /// take no --max-connections slot); when full, the oldest is closed [default: 1024].
    #[arg(long, env = "OMNISTOCK_MAX_PENDING_HANDSHAKES", value_name = "N")]
    pub max_pending_handshakes: Option<usize>,
    /// Most connections from one source IP, handshaken or not [default: 1024].
    #[arg(long, env = "OMNISTOCK_MAX_CONNECTIONS_PER_SOURCE", value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Apply --max-connections-per-source to loopback clients too: true or false
    /// [default: true].
    #[arg(
        long,
        env = "OMNISTOCK_PER_SOURCE_LIMIT_ON_LOOPBACK",
        value_name = "BOOL"
    )]
    pub per_source_limit_on_loopback: Option<bool>,
    /// Output budget of one connection: answers and pushes not yet written plus the
    /// partial frame being read, in bytes; over it the client is disconnected; at least
    /// --max-frame-bytes [default: 4194304].
    #[arg(long, env = "OMNISTOCK_MAX_OUTPUT_BYTES", value_name = "BYTES")]
    pub max_output_bytes: Option<usize>,
    /// Memory budget of all connections' buffers together, in bytes; over it new requests
    /// are answered busy (13) [default: 1073741824].
    #[arg(
        long,
        env = "OMNISTOCK_MAX_CONNECTIONS_MEMORY_BYTES",
        value_name = "BYTES"
    )]
    pub max_connections_memory_bytes: Option<usize>,
    /// Longest a shutdown waits for connections to finish and close, in ms; then they
    /// are dropped [default: 10000].
    #[arg(long, env = "OMNISTOCK_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// A client that does not read its answers for this long is disconnected, in ms
    /// [default: 30000].
    #[arg(long, env = "OMNISTOCK_WRITE_TIMEOUT_MS", value_name = "MS")]
    pub write_timeout_ms: Option<u64>,
    /// A request frame must arrive whole within this long of its first bytes, in ms; else
    /// the connection is closed [default: 10000].
    #[arg(long, env = "OMNISTOCK_FRAME_TIMEOUT_MS", value_name = "MS")]
    pub frame_timeout_ms: Option<u64>,
    /// Records a subscriber may fall behind before its ATP changes are coalesced
    /// [default: 100000].
    #[arg(long, env = "OMNISTOCK_SUBSCRIBER_MAX_LAG_RECORDS", value_name = "N")]
    pub subscriber_max_lag_records: Option<u64>,
    /// Most SKU x channel pairs held per coalescing subscriber [default: 100000].
    #[arg(
        long,
        env = "OMNISTOCK_SUBSCRIBER_MAX_COALESCE_PAIRS",
        value_name = "N"
    )]
    pub subscriber_max_coalesce_pairs: Option<usize>,
    /// A subscriber whose socket accepts nothing for this long is disconnected, in ms
    /// [default: 10000].
    #[arg(long, env = "OMNISTOCK_SUBSCRIBER_STALL_TIMEOUT_MS", value_name = "MS")]
    pub subscriber_stall_timeout_ms: Option<u64>,
    /// A binary-protocol subscription with nothing to send for this long sends a `Position`
    /// item (the heartbeat, announced in `Subscribed.heartbeat_ms`), in ms (100..=3600000)
    /// [default: 15000].
    #[arg(long, env = "OMNISTOCK_SUBSCRIBER_HEARTBEAT_MS", value_name = "MS")]
    pub subscriber_heartbeat_ms: Option<u64>,
    /// Run each connection on one of the actor threads instead of the tokio pool: true or
    /// false [default: true].
    #[arg(long, env = "OMNISTOCK_CONNECTIONS_ON_ARBITERS", value_name = "BOOL")]
    pub connections_on_arbiters: Option<bool>,
    /// An HTTP event stream (GET /v1/events) with nothing to send for this long sends a
    /// `: heartbeat` comment, in ms (100..=3600000) [default: 15000].
    #[arg(long, env = "OMNISTOCK_HTTP_HEARTBEAT_MS", value_name = "MS")]
    pub http_heartbeat_ms: Option<u64>,
    /// Most HTTP event streams open at once (1..=128) [default: 64].
    #[arg(long, env = "OMNISTOCK_HTTP_MAX_EVENT_STREAMS", value_name = "N")]
    pub http_max_event_streams: Option<usize>,
    /// Most connections to the HTTP endpoint from one source IP (1..=256); beyond, 429 at
    /// once [default: 64].
    #[arg(
        long,
        env = "OMNISTOCK_HTTP_MAX_CONNECTIONS_PER_SOURCE",
        value_name = "N"
    )]
    pub http_max_connections_per_source: Option<usize>,
    /// Apply --http-max-connections-per-source to loopback clients too: true or false
    /// [default: true].
    #[arg(
        long,
        env = "OMNISTOCK_HTTP_PER_SOURCE_LIMIT_ON_LOOPBACK",
        value_name = "BOOL"
    )]
    pub http_per_source_limit_on_loopback: Option<bool>,

    /// Actor threads [default: one per core].
    #[arg(long, env = "OMNISTOCK_ARBITERS", value_name = "N")]
    pub arbiters: Option<usize>,
    /// Messages a SKU's mailbox holds before callers get Busy [default: 1024].
    #[arg(long, env = "OMNISTOCK_MAILBOX_CAPACITY", value_name = "N")]
    pub mailbox_capacity: Option<usize>,
    /// Idle time after which a SKU's actor is passivated, in ms [default: 60000].
    #[arg(long, env = "OMNISTOCK_PASSIVATE_AFTER_MS", value_name = "MS")]
    pub passivate_after_ms: Option<u64>,
    /// Most SKUs [default: 50000000].
    #[arg(long, env = "OMNISTOCK_MAX_SKUS", value_name = "N")]
    pub max_skus: Option<usize>,
    /// Most request ids remembered for idempotency [default: 1000000].
    #[arg(long, env = "OMNISTOCK_IDEMPOTENCY_MAX_ENTRIES", value_name = "N")]
    pub idempotency_max_entries: Option<usize>,
    /// Longest a request id is remembered, in ms [default: 86400000].
    #[arg(long, env = "OMNISTOCK_IDEMPOTENCY_RETENTION_MS", value_name = "MS")]
    pub idempotency_retention_ms: Option<u64>,
    /// Feed records kept in memory so subscribers can resume (about 450 B each, 800 B once read: 450–800 MB at the default)
    /// [default: 1000000].
    #[arg(long, env = "OMNISTOCK_FEED_RETENTION_RECORDS", value_name = "N")]
    pub feed_retention_records: Option<usize>,
    /// The three half-lives of the demand-velocity windows, in ms, shortest first, each
    /// 60000..=2592000000 (docs/intelligence.md); changing them forgets every SKU's velocity
    /// at the next start [default: 900000,3600000,86400000].
    #[arg(
        long,
        env = "OMNISTOCK_VELOCITY_HALF_LIVES_MS",
        value_name = "MS,MS,MS",
        value_delimiter = ','
    )]
    pub velocity_half_lives_ms: Option<Vec<u64>>,
    /// Demand intelligence: on (velocity recorded by every hold and fulfilment; VELOCITY,
    /// AT_RISK, AT_RISK_REGION and REBALANCE_LIST served) or off (nothing recorded, those
    /// reads answer 19 intelligence_off; docs/intelligence.md) [default: on].
    #[arg(long, env = "OMNISTOCK_INTELLIGENCE", value_name = "on|off")]
    pub intelligence: Option<String>,

    /// When a write is acknowledged: sync (after fsync) or relaxed (after the write; fsync
    /// every --flush-interval-ms, which may lose that much on power loss) [default: sync].
    #[arg(long, env = "OMNISTOCK_DURABILITY", value_name = "MODE")]
    pub durability: Option<String>,
    /// Relaxed durability's longest unflushed time, in ms [default: 10].
    #[arg(long, env = "OMNISTOCK_FLUSH_INTERVAL_MS", value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
    /// Take a checkpoint after this many log records; 0 disables [default: 1000000].
    #[arg(long, env = "OMNISTOCK_CHECKPOINT_EVERY_RECORDS", value_name = "N")]
    pub checkpoint_every_records: Option<u64>,
    /// Directory (absolute, existing) that BACKUP targets must lie inside (`omnistock
    /// backup`, `check --addr`) [default: none, any absolute path the server may write].
    #[arg(long, env = "OMNISTOCK_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Keep at most this many history events per SKU (the newest; enforced at each
    /// checkpoint); 0 = no count limit [default: 100000].
    #[arg(long, env = "OMNISTOCK_HISTORY_MAX_EVENTS_PER_SKU", value_name = "N")]
    pub history_max_events_per_sku: Option<u64>,
    /// Drop history events older than this many days (enforced at each checkpoint);
    /// 0 = no age limit [default: 0].
    #[arg(long, env = "OMNISTOCK_HISTORY_RETENTION_DAYS", value_name = "DAYS")]
    pub history_retention_days: Option<u32>,
    /// Publish the feed's events to NATS JetStream at this server list (nats://host:4222);
    /// overrides `[nats] url`; the rest of `[nats]` keeps its defaults (docs/adapters.md)
    /// [default: off].
    #[arg(long, env = "OMNISTOCK_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// PEM certificate chain (leaf first) for TLS on both ports; with --tls-key. Read at
    /// start and again at SIGHUP (with the key and the client CA; a bad file then keeps the
    /// certificate in use) [default: none, plain TCP].
    #[arg(long, env = "OMNISTOCK_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "OMNISTOCK_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): every client of the binary port must present a certificate
    /// it signed (for the HTTP endpoint see --admin-tls-client-ca) [default: none, no
    /// client certificates].
    #[arg(long, env = "OMNISTOCK_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificate(s): every client of the HTTP endpoint (probes and Prometheus
    /// included) must present a certificate it signed; may be the --tls-client-ca file
    /// [default: none, no client certificates].
    #[arg(long, env = "OMNISTOCK_ADMIN_TLS_CLIENT_CA", value_name = "FILE")]
    pub admin_tls_client_ca: Option<PathBuf>,
    /// Allow auth tokens on a non-loopback address without TLS, where they cross the
    /// network in the clear [default: false, such a setup is refused].
    #[arg(long, env = "OMNISTOCK_INSECURE_PLAINTEXT_TOKENS")]
    pub insecure_plaintext_tokens: bool,
}

/// `serve --help`'s list of the TOML file's keys: every field of [`FileConfig`] and its
/// sections (a unit test holds the two together).
pub const FILE_KEYS_HELP: &str = "Every setting can also be given in the TOML file named by \
    --config, with the flag's name in snake_case: listen, admin_listen, data_dir, log_format, \
    log_level, [[tokens]] (token, role), [limits] (max_connections, max_in_flight, \
    max_frame_bytes, max_batch_ops, max_lines_per_reservation, idle_timeout_ms, \
    handshake_timeout_ms, max_pending_handshakes, max_connections_per_source, \
    per_source_limit_on_loopback, max_output_bytes, max_connections_memory_bytes, \
    shutdown_timeout_ms, write_timeout_ms, frame_timeout_ms, subscriber_max_lag_records, \
    subscriber_max_coalesce_pairs, subscriber_stall_timeout_ms, subscriber_heartbeat_ms, \
    connections_on_arbiters, \
    http_heartbeat_ms, http_max_event_streams, http_max_connections_per_source, \
    http_per_source_limit_on_loopback), \
    [engine] (arbiters, mailbox_capacity, passivate_after_ms, max_skus, \
    idempotency_max_entries, idempotency_retention_ms, feed_retention_records, \
    velocity_half_lives_ms: an array of three, intelligence: \"on\" or \"off\"), [storage] \
    (durability, flush_interval_ms, checkpoint_every_records, backup_dir, history_max_events_per_sku, \
    history_retention_days), [[webhooks]] (name, url, \
    secret or secret_env, channels, skus, prefix, kinds, coalesce_ms, max_attempts, \
    timeout_ms, backoff_initial_ms, backoff_max_ms, max_batch_events, max_batch_bytes, \
    ca_file; \
    docs/webhooks.md), [nats] (url, stream, subject_prefix, channels, skus, prefix, kinds, \
    coalesce_ms, token or token_env, credentials_file, max_in_flight, ack_timeout_ms, \
    backoff_initial_ms, backoff_max_ms, duplicate_window_ms, max_bytes; docs/adapters.md; \
    --nats-url or OMNISTOCK_NATS_URL turns it on). [tls] (cert, key, client_ca, admin_client_ca, insecure_plaintext_tokens). A flag or its environment variable overrides the file; the file \
    overrides the default. docs/operations.md has an example.";

/// The TOML file: the same settings, grouped. Unknown keys are errors.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<String>,
    log_level: Option<String>,
    #[serde(default)]
    tokens: Vec<FileToken>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    engine: FileEngine,
    #[serde(default)]
    storage: FileStorage,
    #[serde(default)]
    webhooks: Vec<FileWebhook>,
    nats: Option<FileNats>,
    #[serde(default)]
    tls: FileTls,
}

/// The `[nats]` section (docs/adapters.md); defaults are `NatsConfig::new`'s.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileNats {
    url: Option<String>,
    stream: Option<String>,
    subject_prefix: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    skus: Vec<String>,
    prefix: Option<String>,
    #[serde(default)]
    kinds: Vec<String>,
    coalesce_ms: Option<u32>,
    token: Option<String>,
    token_env: Option<String>,
    credentials_file: Option<PathBuf>,
    max_in_flight: Option<usize>,
    ack_timeout_ms: Option<u64>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    duplicate_window_ms: Option<u64>,
    max_bytes: Option<u64>,
}

/// `[tls]`: the `--tls-*` flags.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    admin_client_ca: Option<PathBuf>,
    insecure_plaintext_tokens: Option<bool>,
}

/// The TLS identities of the binary port (client certificates as `tls_client_ca` says)
/// and of the HTTP endpoint (same certificate, client certificates as
/// `admin_tls_client_ca` says); `None` without `tls_cert`.
fn tls_configs(
    args: &Args,
    file: &FileTls,
) -> anyhow::Result<Option<(omnistock::tls::ServerTls, omnistock::tls::ServerTls)>> {
    let cert = args.tls_cert.clone().or_else(|| file.cert.clone());
    let key = args.tls_key.clone().or_else(|| file.key.clone());
    let ca = args
        .tls_client_ca
        .clone()
        .or_else(|| file.client_ca.clone());
    let admin_ca = args
        .admin_tls_client_ca
        .clone()
        .or_else(|| file.admin_client_ca.clone());
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if ca.is_none() && admin_ca.is_none() => return Ok(None),
        (None, None) if ca.is_some() => {
            return Err(bad("tls_client_ca", "needs tls_cert and tls_key"))
        }
        (None, None) => return Err(bad("admin_tls_client_ca", "needs tls_cert and tls_key")),
        (Some(_), None) => return Err(bad("tls_key", "tls_cert needs tls_key")),
        (None, Some(_)) => return Err(bad("tls_cert", "tls_key needs tls_cert")),
    };
    let files = |client_ca: Option<PathBuf>| omnistock::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca,
    };
    let binary = omnistock::tls::ServerTls::load(files(ca)).map_err(|e| bad("tls_cert", e))?;
    let http = omnistock::tls::ServerTls::load(files(admin_ca))
        .map_err(|e| bad("admin_tls_client_ca", e))?;
    Ok(Some((binary, http)))
}

/// One `[[webhooks]]` entry (docs/webhooks.md); defaults are `EndpointConfig::new`'s.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    name: String,
    url: String,
    secret: Option<String>,
    secret_env: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    skus: Vec<String>,
    prefix: Option<String>,
    #[serde(default)]
    kinds: Vec<String>,
    coalesce_ms: Option<u32>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    max_batch_events: Option<usize>,
    max_batch_bytes: Option<usize>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileToken {
    token: String,
    role: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_batch_ops: Option<usize>,
    max_lines_per_reservation: Option<usize>,
    idle_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_pending_handshakes: Option<usize>,
    max_connections_per_source: Option<usize>,
    per_source_limit_on_loopback: Option<bool>,
    max_output_bytes: Option<usize>,
    max_connections_memory_bytes: Option<usize>,
    shutdown_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    frame_timeout_ms: Option<u64>,
    subscriber_max_lag_records: Option<u64>,
    subscriber_max_coalesce_pairs: Option<usize>,
    subscriber_stall_timeout_ms: Option<u64>,
    subscriber_heartbeat_ms: Option<u64>,
    connections_on_arbiters: Option<bool>,
    http_heartbeat_ms: Option<u64>,
    http_max_event_streams: Option<usize>,
    http_max_connections_per_source: Option<usize>,
    http_per_source_limit_on_loopback: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileEngine {
    arbiters: Option<usize>,
    mailbox_capacity: Option<usize>,
    passivate_after_ms: Option<u64>,
    max_skus: Option<usize>,
    idempotency_max_entries: Option<usize>,
    idempotency_retention_ms: Option<u64>,
    feed_retention_records: Option<usize>,
    velocity_half_lives_ms: Option<Vec<u64>>,
    intelligence: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    durability: Option<String>,
    flush_interval_ms: Option<u64>,
    checkpoint_every_records: Option<u64>,
    backup_dir: Option<PathBuf>,
    history_max_events_per_sku: Option<u64>,
    history_retention_days: Option<u32>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines (default).
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr, readable lines or one JSON object per line, filtered by `filter`
/// (`EnvFilter` syntax; an invalid filter falls back to `info`: `serve` checks it earlier).
/// Here rather than in `main.rs` so `serve` needs nothing from the binary's root.
pub(crate) fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes when stderr is a file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Everything `serve` needs, validated.
#[derive(Debug)]
pub struct Settings {
    /// The TCP server.
    pub server: ServerConfig,
    /// The durable engine (data directory included).
    pub persist: PersistConfig,
    /// The HTTP endpoint (admin paths and the `/v1` API).
    pub admin_listen: SocketAddr,
    /// The HTTP endpoint's settings (tokens and feed limits are the server's).
    pub http: HttpConfig,
    /// Webhook endpoints (`[[webhooks]]`; none by default).
    pub webhooks: WebhooksConfig,
    /// The NATS JetStream bridge (`[nats]` or `--nats-url`; off by default).
    pub nats: Option<NatsConfig>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (`EnvFilter` syntax), already checked.
    pub log_filter: String,
}

fn bad(setting: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid setting {setting}: {reason}")
}

fn parse_addr(setting: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .map_err(|_| bad(setting, format!("{s:?} is not an ip:port address")))
}

fn add_token(cfg: &mut ServerConfig, token: &str, role: &str) -> anyhow::Result<()> {
    let Some(r) = Role::parse(role) else {
        bail!("invalid setting token: role {role:?} must be checkout, adapter or admin");
    };
    if token.is_empty() {
        bail!("invalid setting token: empty token");
    }
    cfg.tokens.insert(token.to_string(), r);
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    setting: &str,
    v: T,
    lo: T,
    hi: T,
) -> anyhow::Result<T> {
    if v < lo || v > hi {
        return Err(bad(setting, format!("{v} must be {lo}..={hi}")));
    }
    Ok(v)
}

fn read_file(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    let Some(p) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("invalid setting config: cannot read {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))
}

/// Merges flags (and their environment variables) over the file over the defaults, and
/// checks every setting.
pub fn resolve(args: Args) -> anyhow::Result<Settings> {
    let file = read_file(args.config.as_ref())?;
    let tls = tls_configs(&args, &file.tls)?;
    let server = server_config(&args, &file, tls.as_ref().map(|t| &t.0))?;
    let persist = persist_config(&args, &file)?;
    let mut http = http_config(&args, &file, &server)?;
    http.tls = tls.map(|(_, h)| h);
    let webhooks = webhooks_config(&file.webhooks, &http.source)?;
    let nats = nats_config(args.nats_url.as_deref(), file.nats.as_ref(), &http.source)?;
    let admin_listen = match (args.admin_listen, &file.admin_listen) {
        (Some(a), _) => a,
        (None, Some(a)) => parse_addr("admin_listen", a)?,
        (None, None) => parse_addr("admin_listen", DEFAULT_ADMIN_LISTEN)?,
    };
    // The HTTP API takes the same tokens (as bearer tokens): the same rule as the binary port.
    if !server.tokens.is_empty()
        && !admin_listen.ip().is_loopback()
        && http.tls.is_none()
        && !server.insecure_plaintext_tokens
    {
        return Err(bad(
            "tls",
            format!(
                "auth tokens on the non-loopback admin_listen address {admin_listen} would \
                 cross the network in the clear; give --tls-cert and --tls-key, or accept \
                 that with --insecure-plaintext-tokens"
            ),
        ));
    }
    let log_format = match args.log_format.as_deref().or(file.log_format.as_deref()) {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(bad(
                "log_format",
                format!("{other:?} must be human or json"),
            ))
        }
    };
    let log_filter = args
        .log_level
        .or(file.log_level)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&log_filter)
        .map_err(|e| bad("log_level", format!("{log_filter:?}: {e}")))?;
    Ok(Settings {
        server,
        persist,
        admin_listen,
        http,
        webhooks,
        nats,
        log_format,
        log_filter,
    })
}

/// `[nats]` (with `--nats-url` over its `url`): off when neither gives a URL; the token
/// read (inline or from the environment variable it names) and every field checked.
fn nats_config(
    flag_url: Option<&str>,
    file: Option<&FileNats>,
    source: &str,
) -> anyhow::Result<Option<NatsConfig>> {
    let default = FileNats::default();
    let f = file.unwrap_or(&default);
    let bad = |m: String| anyhow::anyhow!("invalid setting nats.{m}");
    let Some(url) = flag_url.or(f.url.as_deref()) else {
        if file.is_some() {
            return Err(bad("url: missing (or give --nats-url)".into()));
        }
        return Ok(None);
    };
    let mut c = NatsConfig::new(url);
    c.source = source.to_string();
    if let Some(s) = &f.stream {
        c.stream = s.clone();
    }
    if let Some(p) = &f.subject_prefix {
        c.subject_prefix = p.clone();
    }
    c.channels = f.channels.clone();
    c.skus = f.skus.clone();
    c.prefix = f.prefix.clone().unwrap_or_default();
    c.kinds = omnistock::webhooks::kinds_of(&f.kinds).map_err(bad)?;
    c.coalesce_ms = f.coalesce_ms.unwrap_or(c.coalesce_ms);
    c.token = match (&f.token, &f.token_env) {
        (Some(t), None) => Some(t.clone()),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            bad(format!(
                "token_env: the environment variable {var:?} is not set (or not UTF-8)"
            ))
        })?),
        (Some(_), Some(_)) => return Err(bad("token: give token or token_env, not both".into())),
        (None, None) => None,
    };
    c.credentials_file = f.credentials_file.clone();
    c.max_in_flight = f.max_in_flight.unwrap_or(c.max_in_flight);
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    c.ack_timeout = ms(f.ack_timeout_ms, c.ack_timeout);
    c.backoff_initial = ms(f.backoff_initial_ms, c.backoff_initial);
    c.backoff_max = ms(f.backoff_max_ms, c.backoff_max);
    c.duplicate_window = ms(f.duplicate_window_ms, c.duplicate_window);
    c.max_bytes = f.max_bytes.unwrap_or(c.max_bytes);
    c.validate().map_err(bad)?;
    Ok(Some(c))
}

/// `[[webhooks]]`: each entry's secret read (inline or from the environment variable it
/// names) and every field checked; an error names the entry and the field.
fn webhooks_config(file: &[FileWebhook], source: &str) -> anyhow::Result<WebhooksConfig> {
    let mut endpoints = Vec::new();
    for (i, w) in file.iter().enumerate() {
        let bad = |m: String| anyhow::anyhow!("invalid setting webhooks[{i}] ({:?}): {m}", w.name);
        let secret = match (&w.secret, &w.secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                bad(format!(
                    "secret_env: the environment variable {var:?} is not set (or not UTF-8)"
                ))
            })?,
            (Some(_), Some(_)) => return Err(bad("give secret or secret_env, not both".into())),
            (None, None) => return Err(bad("secret: missing (secret or secret_env)".into())),
        };
        let mut e = EndpointConfig::new(&w.name, &w.url, secret.as_bytes());
        e.channels = w.channels.clone();
        e.skus = w.skus.clone();
        e.prefix = w.prefix.clone().unwrap_or_default();
        e.kinds = omnistock::webhooks::kinds_of(&w.kinds).map_err(bad)?;
        e.coalesce_ms = w.coalesce_ms.unwrap_or(e.coalesce_ms);
        e.max_attempts = w.max_attempts.unwrap_or(e.max_attempts);
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        e.request_timeout = ms(w.timeout_ms, e.request_timeout);
        e.backoff_initial = ms(w.backoff_initial_ms, e.backoff_initial);
        e.backoff_max = ms(w.backoff_max_ms, e.backoff_max);
        e.max_batch_events = w.max_batch_events.unwrap_or(e.max_batch_events);
        e.max_batch_bytes = w.max_batch_bytes.unwrap_or(e.max_batch_bytes);
        if let Some(p) = &w.ca_file {
            e.ca_certs =
                omnistock::webhooks::read_ca_file(p).map_err(|m| bad(format!("ca_file: {m}")))?;
        }
        endpoints.push(e);
    }
    let cfg = WebhooksConfig {
        endpoints,
        source: source.to_string(),
    };
    cfg.validate()
        .map_err(|m| anyhow::anyhow!("invalid setting {m}"))?;
    Ok(cfg)
}

fn server_config(
    args: &Args,
    file: &FileConfig,
    tls: Option<&omnistock::tls::ServerTls>,
) -> anyhow::Result<ServerConfig> {
    let listen = match (args.listen, &file.listen) {
        (Some(l), _) => l,
        (None, Some(l)) => parse_addr("listen", l)?,
        (None, None) => parse_addr("listen", DEFAULT_LISTEN)?,
    };
    let mut cfg = ServerConfig {
        listen,
        ..ServerConfig::default()
    };
    // Tokens given as flags or in the environment replace the file's.
    if args.tokens.is_empty() {
        for t in &file.tokens {
            add_token(&mut cfg, &t.token, &t.role)?;
        }
    }
    for t in &args.tokens {
        let Some((token, role)) = t.rsplit_once(':') else {
            bail!("invalid setting token: {t:?} is not TOKEN:ROLE");
        };
        add_token(&mut cfg, token, role)?;
    }
    let l = &file.limits;
    cfg.max_connections = args
        .max_connections
        .or(l.max_connections)
        .unwrap_or(cfg.max_connections);
    cfg.max_in_flight = args
        .max_in_flight
        .or(l.max_in_flight)
        .unwrap_or(cfg.max_in_flight);
    cfg.max_frame_bytes = args
        .max_frame_bytes
        .or(l.max_frame_bytes)
        .unwrap_or(cfg.max_frame_bytes);
    cfg.max_batch_ops = args
        .max_batch_ops
        .or(l.max_batch_ops)
        .unwrap_or(cfg.max_batch_ops);
    cfg.max_lines_per_reservation = args
        .max_lines_per_reservation
        .or(l.max_lines_per_reservation)
        .unwrap_or(cfg.max_lines_per_reservation);
    if let Some(ms) = args.idle_timeout_ms.or(l.idle_timeout_ms) {
        cfg.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.handshake_timeout_ms.or(l.handshake_timeout_ms) {
        cfg.handshake_timeout = Duration::from_millis(ms);
    }
    cfg.max_pending_handshakes = args
        .max_pending_handshakes
        .or(l.max_pending_handshakes)
        .unwrap_or(cfg.max_pending_handshakes);
    cfg.max_connections_per_source = args
        .max_connections_per_source
        .or(l.max_connections_per_source)
        .unwrap_or(cfg.max_connections_per_source);
    cfg.per_source_limit_on_loopback = args
        .per_source_limit_on_loopback
        .or(l.per_source_limit_on_loopback)
        .unwrap_or(cfg.per_source_limit_on_loopback);
    cfg.max_output_bytes = args
        .max_output_bytes
        .or(l.max_output_bytes)
        .unwrap_or(cfg.max_output_bytes);
    cfg.max_connections_memory_bytes = args
        .max_connections_memory_bytes
        .or(l.max_connections_memory_bytes)
        .unwrap_or(cfg.max_connections_memory_bytes);
    if let Some(ms) = args.shutdown_timeout_ms.or(l.shutdown_timeout_ms) {
        cfg.shutdown_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.write_timeout_ms.or(l.write_timeout_ms) {
        cfg.write_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.frame_timeout_ms.or(l.frame_timeout_ms) {
        cfg.frame_timeout = Duration::from_millis(ms);
    }
    let sub = &mut cfg.subscription;
    if let Some(n) = args
        .subscriber_max_lag_records
        .or(l.subscriber_max_lag_records)
    {
        sub.max_lag_records = n;
    }
    if let Some(n) = args
        .subscriber_max_coalesce_pairs
        .or(l.subscriber_max_coalesce_pairs)
    {
        sub.max_coalesce_pairs = n;
    }
    if let Some(ms) = args
        .subscriber_stall_timeout_ms
        .or(l.subscriber_stall_timeout_ms)
    {
        sub.stall_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.subscriber_heartbeat_ms.or(l.subscriber_heartbeat_ms) {
        sub.heartbeat = Some(Duration::from_millis(ms));
    }
    if let Some(b) = args.connections_on_arbiters.or(l.connections_on_arbiters) {
        cfg.connections_on_arbiters = b;
    }
    if let Some(dir) = args.backup_dir.clone().or(file.storage.backup_dir.clone()) {
        // Checked at start, so a typo does not wait for the first backup to show.
        if !dir.is_absolute() {
            return Err(bad(
                "backup_dir",
                format!("{} must be absolute", dir.display()),
            ));
        }
        cfg.backup_dir = Some(std::fs::canonicalize(&dir).map_err(|e| {
            bad(
                "backup_dir",
                format!("{} must be an existing directory: {e}", dir.display()),
            )
        })?);
        if cfg.backup_dir.as_ref().is_some_and(|d| !d.is_dir()) {
            return Err(bad(
                "backup_dir",
                format!("{} is not a directory", dir.display()),
            ));
        }
    }
    cfg.tls = tls.cloned();
    cfg.insecure_plaintext_tokens =
        args.insecure_plaintext_tokens || file.tls.insecure_plaintext_tokens.unwrap_or(false);
    cfg.validate()?;
    Ok(cfg)
}

fn http_config(
    args: &Args,
    file: &FileConfig,
    server: &ServerConfig,
) -> anyhow::Result<HttpConfig> {
    let l = &file.limits;
    let mut cfg = HttpConfig {
        tokens: server.tokens.clone(),
        // The event stream sends its own heartbeat (`http_heartbeat_ms`, a comment line).
        subscription: SubscriptionConfig {
            heartbeat: None,
            ..server.subscription.clone()
        },
        source: format!("omnistock://{}", server.listen),
        ..HttpConfig::default()
    };
    if let Some(ms) = args.http_heartbeat_ms.or(l.http_heartbeat_ms) {
        cfg.heartbeat = Duration::from_millis(ms);
    }
    if let Some(n) = args.http_max_event_streams.or(l.http_max_event_streams) {
        cfg.max_event_streams = n;
    }
    if let Some(n) = args
        .http_max_connections_per_source
        .or(l.http_max_connections_per_source)
    {
        cfg.max_connections_per_source = n;
    }
    if let Some(b) = args
        .http_per_source_limit_on_loopback
        .or(l.http_per_source_limit_on_loopback)
    {
        cfg.per_source_limit_on_loopback = b;
    }
    cfg.validate()
        .map_err(|m| anyhow::anyhow!("invalid setting {m}"))?;
    Ok(cfg)
}

fn persist_config(args: &Args, file: &FileConfig) -> anyhow::Result<PersistConfig> {
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let mut p = PersistConfig::new(data_dir);
    p.init = args.init;
    p.engine = engine_config(args, &file.engine)?;
    let s = &file.storage;
    let flush_ms = args.flush_interval_ms.or(s.flush_interval_ms);
    p.durability = match args.durability.as_deref().or(s.durability.as_deref()) {
        None | Some("sync") => {
            if flush_ms.is_some() {
                return Err(bad(
                    "flush_interval_ms",
                    "only applies to durability relaxed",
                ));
            }
            Durability::Sync
        }
        Some("relaxed") => Durability::Relaxed {
            flush_interval_ms: in_range("flush_interval_ms", flush_ms.unwrap_or(10), 1, 60_000)?,
        },
        Some(other) => {
            return Err(bad(
                "durability",
                format!("{other:?} must be sync or relaxed"),
            ))
        }
    };
    if let Some(n) = args.checkpoint_every_records.or(s.checkpoint_every_records) {
        p.checkpoint_every_records = n;
    }
    if let Some(n) = args
        .history_max_events_per_sku
        .or(s.history_max_events_per_sku)
    {
        p.history.max_events_per_sku = in_range("history_max_events_per_sku", n, 0, 1_000_000_000)?;
    }
    if let Some(d) = args.history_retention_days.or(s.history_retention_days) {
        // 100 years: beyond that an age limit means nothing, and days * 86.4M ms stays far
        // inside a u64.
        p.history.retention_days = in_range("history_retention_days", d, 0, 36_500)?;
    }
    Ok(p)
}

fn engine_config(args: &Args, f: &FileEngine) -> anyhow::Result<EngineConfig> {
    let d = EngineConfig::default();
    let ms = Duration::from_millis;
    Ok(EngineConfig {
        arbiters: in_range(
            "arbiters",
            args.arbiters.or(f.arbiters).unwrap_or(d.arbiters),
            1,
            1024,
        )?,
        mailbox_capacity: in_range(
            "mailbox_capacity",
            args.mailbox_capacity
                .or(f.mailbox_capacity)
                .unwrap_or(d.mailbox_capacity),
            1,
            1_000_000,
        )?,
        passivate_after: match args.passivate_after_ms.or(f.passivate_after_ms) {
            Some(v) => ms(in_range("passivate_after_ms", v, 1, u64::MAX)?),
            None => d.passivate_after,
        },
        max_skus: in_range(
            "max_skus",
            args.max_skus.or(f.max_skus).unwrap_or(d.max_skus),
            1,
            usize::MAX,
        )?,
        idempotency_max_entries: in_range(
            "idempotency_max_entries",
            args.idempotency_max_entries
                .or(f.idempotency_max_entries)
                .unwrap_or(d.idempotency_max_entries),
            1,
            usize::MAX,
        )?,
        idempotency_retention_ms: in_range(
            "idempotency_retention_ms",
            args.idempotency_retention_ms
                .or(f.idempotency_retention_ms)
                .unwrap_or(d.idempotency_retention_ms),
            1,
            u64::MAX,
        )?,
        feed_retention_records: in_range(
            "feed_retention_records",
            args.feed_retention_records
                .or(f.feed_retention_records)
                .unwrap_or(d.feed_retention_records),
            1,
            100_000_000,
        )?,
        velocity_half_lives: match args
            .velocity_half_lives_ms
            .as_ref()
            .or(f.velocity_half_lives_ms.as_ref())
        {
            Some(v) => half_lives(v)?,
            None => d.velocity_half_lives,
        },
        intelligence: match args.intelligence.as_deref().or(f.intelligence.as_deref()) {
            Some(v) => on_off("intelligence", v)?,
            None => d.intelligence,
        },
        ..d
    })
}

/// `on` or `off` (a clear error naming the setting otherwise).
fn on_off(name: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        other => anyhow::bail!("{name}: {other:?} is neither \"on\" nor \"off\""),
    }
}

/// `velocity_half_lives_ms`: exactly three, each in range, strictly increasing.
fn half_lives(v: &[u64]) -> anyhow::Result<HalfLives> {
    let three = <[u64; 3]>::try_from(v).map_err(|_| {
        anyhow::anyhow!(
            "velocity_half_lives_ms: {} values given, three expected (ms, shortest first)",
            v.len()
        )
    })?;
    HalfLives::new(three).map_err(|e| anyhow::anyhow!("velocity_half_lives_ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The keys serde expects in one table of the file, read from its refusal of an
    /// unknown key (`expected one of `a`, `b``).
    fn keys_of(table: &str) -> Vec<String> {
        let text = format!("{table}\nno_such_key = 1\n");
        let e = toml::from_str::<FileConfig>(&text).unwrap_err().to_string();
        let list = e.split_once("expected").unwrap_or_else(|| panic!("{e}")).1;
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn serve_help_names_every_key_of_the_file() {
        let mut keys = Vec::new();
        for table in [
            "",
            "[limits]",
            "[engine]",
            "[storage]",
            "[[tokens]]\ntoken = \"t\"\nrole = \"admin\"",
            "[[webhooks]]\nname = \"n\"\nurl = \"u\"",
        ] {
            let k = keys_of(table);
            assert!(k.len() >= 2, "{table}: {k:?}");
            keys.extend(k);
        }
        assert!(keys.len() >= 35, "{keys:?}");
        let words: Vec<&str> = FILE_KEYS_HELP
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .collect();
        for k in &keys {
            assert!(
                words.contains(&k.as_str()),
                "serve --help leaves out the file key {k}"
            );
        }
        // The check sees a missing key.
        assert!(!words.contains(&"no_such_key"));
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// Settings from flags (the environment is not consulted: no `OMNISTOCK_*` is set in
    /// the test process) and an optional TOML text.
    fn resolve_with(flags: &[&str], toml: Option<&str>) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir()?;
        let mut argv = vec!["t".to_string()];
        argv.extend(flags.iter().map(|s| s.to_string()));
        if let Some(t) = toml {
            let p = dir.path().join("omnistock.toml");
            std::fs::write(&p, t)?;
            argv.push("--config".into());
            argv.push(p.display().to_string());
        }
        resolve(Cli::try_parse_from(argv)?.args)
    }

    fn err(flags: &[&str], toml: Option<&str>) -> String {
        match resolve_with(flags, toml) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn defaults_work_out_of_the_box() {
        let s = resolve_with(&[], None).expect("defaults");
        assert_eq!(s.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(s.persist.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.persist.durability, Durability::Sync);
        assert_eq!(s.log_format, LogFormat::Human);
        assert_eq!(s.server.max_connections, 10_000);
        assert_eq!(s.server.max_pending_handshakes, 1024);
        assert_eq!(s.server.max_connections_per_source, 1024);
        assert!(s.server.per_source_limit_on_loopback);
        assert_eq!(s.server.max_output_bytes, 4 << 20);
        assert_eq!(s.server.max_connections_memory_bytes, 1 << 30);
        assert_eq!(s.server.handshake_timeout.as_millis(), 5000);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let toml = r#"
            listen = "127.0.0.1:1111"
            admin_listen = "127.0.0.1:2222"
            log_format = "json"
            [limits]
            max_connections = 7
            max_in_flight = 9
            max_pending_handshakes = 11
            max_connections_per_source = 12
            per_source_limit_on_loopback = false
            max_output_bytes = 8388608
            [engine]
            mailbox_capacity = 16
            [storage]
            durability = "relaxed"
            flush_interval_ms = 5
            checkpoint_every_records = 0
        "#;
        let s = resolve_with(
            &["--max-connections", "3", "--listen", "127.0.0.1:3333"],
            Some(toml),
        )
        .expect("valid");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:3333");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:2222");
        assert_eq!(s.server.max_connections, 3);
        assert_eq!(s.server.max_in_flight, 9);
        assert_eq!(s.server.max_pending_handshakes, 11);
        assert_eq!(s.server.max_connections_per_source, 12);
        assert!(!s.server.per_source_limit_on_loopback);
        assert_eq!(s.server.max_output_bytes, 8 << 20);
        assert_eq!(s.persist.engine.mailbox_capacity, 16);
        assert_eq!(
            s.persist.durability,
            Durability::Relaxed {
                flush_interval_ms: 5
            }
        );
        assert_eq!(s.persist.checkpoint_every_records, 0);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn backup_dir_is_off_by_default_must_be_an_absolute_existing_directory() {
        assert_eq!(
            resolve_with(&[], None).expect("valid").server.backup_dir,
            None
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8");
        let s = resolve_with(&["--backup-dir", path], None).expect("valid");
        assert_eq!(
            s.server.backup_dir,
            Some(std::fs::canonicalize(dir.path()).expect("canonical"))
        );
        let toml = format!("[storage]\nbackup_dir = {path:?}\n");
        let s = resolve_with(&[], Some(&toml)).expect("valid");
        assert!(s.server.backup_dir.is_some());
        for bad in ["relative", "/no/such/omnistock/dir"] {
            let e = resolve_with(&["--backup-dir", bad], None).expect_err(bad);
            assert!(e.to_string().contains("backup_dir"), "{e}");
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let e = resolve_with(&["--backup-dir", file.to_str().expect("utf-8")], None)
            .expect_err("a file");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn history_retention_from_flags_env_names_and_file_with_named_errors() {
        let d = resolve_with(&[], None).expect("defaults");
        assert_eq!(d.persist.history.max_events_per_sku, 100_000);
        assert_eq!(d.persist.history.retention_days, 0);
        let toml = r#"
            [storage]
            history_max_events_per_sku = 50
            history_retention_days = 30
        "#;
        let s = resolve_with(&["--history-retention-days", "7"], Some(toml)).expect("valid");
        assert_eq!(s.persist.history.max_events_per_sku, 50, "from the file");
        assert_eq!(s.persist.history.retention_days, 7, "the flag wins");
        let s = resolve_with(&["--history-max-events-per-sku", "0"], None).expect("valid");
        assert_eq!(s.persist.history.max_events_per_sku, 0, "0: no count limit");
        let e = resolve_with(&["--history-retention-days", "40000"], None).unwrap_err();
        assert!(
            e.to_string().contains("history_retention_days"),
            "names the setting: {e}"
        );
        let e = resolve_with(&["--history-max-events-per-sku", "2000000000"], None).unwrap_err();
        assert!(e.to_string().contains("history_max_events_per_sku"), "{e}");
    }

    #[test]
    fn nats_is_off_by_default_and_read_from_the_file_or_the_flag() {
        assert!(resolve_with(&[], None).expect("valid").nats.is_none());
        let s = resolve_with(&["--nats-url", "nats://127.0.0.1:4222"], None).expect("valid");
        let n = s.nats.expect("on with --nats-url");
        assert_eq!(n.stream, "OMNISTOCK");
        assert_eq!(n.source, s.http.source);
        let file = r#"
            [nats]
            url = "nats://a:4222"
            stream = "STOCK"
            subject_prefix = "acme.stock"
            channels = ["web"]
            kinds = ["thresholds"]
            token_env = "OMNISTOCK_TEST_NATS_TOKEN_SET"
            max_in_flight = 8
            ack_timeout_ms = 1000
        "#;
        std::env::set_var("OMNISTOCK_TEST_NATS_TOKEN_SET", "nats-token");
        let n = resolve_with(&[], Some(file)).expect("valid").nats.unwrap();
        assert_eq!(n.url, "nats://a:4222");
        assert_eq!(
            (n.stream.as_str(), n.subject_prefix.as_str()),
            ("STOCK", "acme.stock")
        );
        assert_eq!(n.kinds, omnistock::protocol::kinds::THRESHOLDS);
        assert_eq!(n.token.as_deref(), Some("nats-token"));
        assert_eq!(
            (n.max_in_flight, n.ack_timeout),
            (8, Duration::from_secs(1))
        );
        // The flag wins over the file's url.
        let n = resolve_with(&["--nats-url", "nats://b:4222"], Some(file))
            .unwrap()
            .nats
            .unwrap();
        assert_eq!(n.url, "nats://b:4222");
        for (body, expected) in [
            ("[nats]\nstream = \"S\"", "nats.url: missing"),
            ("[nats]\nurl = \"http://a\"", "nats.url"),
            (
                "[nats]\nurl = \"nats://a:1\"\nstream = \"a.b\"",
                "nats.stream",
            ),
            (
                "[nats]\nurl = \"nats://a:1\"\nmax_in_flight = 0",
                "nats.max_in_flight",
            ),
            (
                "[nats]\nurl = \"nats://a:1\"\ntoken_env = \"OMNISTOCK_TEST_UNSET_VAR\"",
                "nats.token_env",
            ),
            ("[nats]\nurl = \"nats://a:1\"\nbogus = 1", "unknown field"),
        ] {
            let e = format!("{:#}", resolve_with(&[], Some(body)).unwrap_err());
            assert!(e.contains(expected), "{body}: {e}");
        }
    }

    #[test]
    fn webhooks_are_read_from_the_file_and_checked_by_entry_and_field() {
        let good = r#"
            [[webhooks]]
            name = "shop"
            url = "http://127.0.0.1:9000/hook"
            secret = "0123456789abcdef0123"
            channels = ["web"]
            kinds = ["atp", "thresholds"]
            coalesce_ms = 500
            max_attempts = 3
            timeout_ms = 2000
            [[webhooks]]
            name = "ads"
            url = "https://ads.example.com/omnistock"
            secret_env = "OMNISTOCK_TEST_WEBHOOK_SECRET_SET"
        "#;
        std::env::set_var(
            "OMNISTOCK_TEST_WEBHOOK_SECRET_SET",
            "from-the-environment-1234",
        );
        let s = resolve_with(&[], Some(good)).expect("valid");
        let w = &s.webhooks.endpoints;
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].channels, vec!["web".to_string()]);
        assert_eq!(w[0].coalesce_ms, 500);
        assert_eq!(w[0].max_attempts, 3);
        assert_eq!(w[0].request_timeout, Duration::from_secs(2));
        assert_eq!(w[1].secret, b"from-the-environment-1234");
        assert_eq!(w[1].max_attempts, 10);
        assert_eq!(s.webhooks.source, s.http.source);
        let entry = |body: &str| format!("[[webhooks]]\nname = \"shop\"\n{body}");
        let ok_secret = "secret = \"0123456789abcdef\"";
        for (body, expected) in [
            (
                format!("url = \"http://example.com/\"\n{ok_secret}"),
                "url: ",
            ),
            (format!("url = \"ftp://127.0.0.1/\"\n{ok_secret}"), "url: "),
            (
                "url = \"https://a.example/\"\nsecret = \"\"".into(),
                "secret: empty",
            ),
            ("url = \"https://a.example/\"".into(), "secret: missing"),
            (
                "url = \"https://a.example/\"\nsecret_env = \"OMNISTOCK_TEST_NO_SUCH_VAR\"".into(),
                "OMNISTOCK_TEST_NO_SUCH_VAR",
            ),
            (
                format!("url = \"https://a.example/\"\n{ok_secret}\nsecret_env = \"X\""),
                "not both",
            ),
            (
                format!("url = \"https://a.example/\"\n{ok_secret}\nkinds = [\"x\"]"),
                "kinds",
            ),
            (
                format!("url = \"https://a.example/\"\n{ok_secret}\nmax_attempts = 0"),
                "max_attempts",
            ),
            (
                format!("url = \"https://a.example/\"\n{ok_secret}\ncoalesce_ms = 1"),
                "coalesce_ms",
            ),
            (
                format!(
                    "url = \"https://a.example/\"\n{ok_secret}\nca_file = \"/nonexistent/ca.pem\""
                ),
                "ca_file: /nonexistent/ca.pem",
            ),
        ] {
            let e = err(&[], Some(&entry(&body)));
            assert!(
                e.contains("webhooks[0]") && e.contains(expected),
                "{body}: {e}"
            );
        }
    }

    #[test]
    fn invalid_settings_are_errors_naming_the_setting() {
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (&["--max-connections", "0"], None, "max_connections"),
            (&["--max-frame-bytes", "10"], None, "max_frame_bytes"),
            (
                &["--max-pending-handshakes", "0"],
                None,
                "max_pending_handshakes",
            ),
            (
                &["--max-connections-per-source", "0"],
                None,
                "max_connections_per_source",
            ),
            (&["--max-output-bytes", "1000"], None, "max_output_bytes"),
            (
                &["--max-connections-memory-bytes", "1000"],
                None,
                "max_connections_memory_bytes",
            ),
            (&["--mailbox-capacity", "0"], None, "mailbox_capacity"),
            (&["--arbiters", "0"], None, "arbiters"),
            (&["--durability", "maybe"], None, "durability"),
            (&["--flush-interval-ms", "5"], None, "flush_interval_ms"),
            (&["--log-format", "xml"], None, "log_format"),
            (&["--log-level", "info,=[["], None, "log_level"),
            (&["--token", "abc"], None, "token"),
            (&["--token", "abc:root"], None, "token"),
            (&["--listen", "0.0.0.0:7878"], None, "tokens"),
            (&[], Some("listen = \"nowhere\""), "listen"),
            (&[], Some("[limits]\nidle_timeout_ms = 0"), "idle_timeout"),
            (&[], Some("[engine]\nmax_skus = 0"), "max_skus"),
            (&[], Some("lisen = \"127.0.0.1:1\""), "lisen"),
            (&["--http-heartbeat-ms", "10"], None, "http_heartbeat_ms"),
            (
                &["--subscriber-heartbeat-ms", "10"],
                None,
                "subscriber_heartbeat_ms",
            ),
            (
                &[],
                Some("[limits]\nhttp_max_event_streams = 0"),
                "http_max_event_streams",
            ),
            (
                &["--http-max-event-streams", "129"],
                None,
                "http_max_event_streams",
            ),
            (
                &["--http-max-connections-per-source", "0"],
                None,
                "http_max_connections_per_source",
            ),
        ];
        for (flags, toml, setting) in cases {
            let e = err(flags, *toml);
            assert!(e.contains(setting), "{flags:?} {toml:?}: {e}");
        }
    }

    #[test]
    fn the_http_endpoint_gets_the_servers_tokens_and_its_own_settings() {
        let toml = "[limits]\nhttp_heartbeat_ms = 2000\nhttp_max_event_streams = 8\n\
                    http_max_connections_per_source = 12\nhttp_per_source_limit_on_loopback = false";
        let s = resolve_with(
            &["--token", "t1:adapter", "--http-max-event-streams", "9"],
            Some(toml),
        )
        .expect("valid");
        assert_eq!(s.http.heartbeat, Duration::from_secs(2));
        assert_eq!(s.http.max_event_streams, 9, "the flag wins over the file");
        assert_eq!(s.http.max_connections_per_source, 12);
        assert!(!s.http.per_source_limit_on_loopback);
        assert_eq!(s.http.tokens.get("t1"), Some(&Role::Adapter));
        assert_eq!(s.http.source, format!("omnistock://{DEFAULT_LISTEN}"));
        let d = resolve_with(&[], None).expect("defaults");
        assert_eq!(d.http.heartbeat, Duration::from_secs(15));
        assert_eq!(d.http.max_event_streams, 64);
        assert_eq!(d.http.max_connections_per_source, 64);
        assert!(d.http.per_source_limit_on_loopback);
    }

    #[test]
    fn velocity_half_lives_come_from_the_flag_or_the_file_and_bad_ones_are_named() {
        let d = resolve_with(&[], None).expect("defaults");
        assert_eq!(d.persist.engine.velocity_half_lives, HalfLives::default());
        let toml = "[engine]\nvelocity_half_lives_ms = [60000, 600000, 6000000]\n";
        let f = resolve_with(&[], Some(toml)).expect("file");
        let want = HalfLives::new([60_000, 600_000, 6_000_000]).unwrap();
        assert_eq!(f.persist.engine.velocity_half_lives, want);
        let flag = ["--velocity-half-lives-ms", "120000,240000,480000"];
        let both = resolve_with(&flag, Some(toml)).expect("flag wins");
        let want = HalfLives::new([120_000, 240_000, 480_000]).unwrap();
        assert_eq!(both.persist.engine.velocity_half_lives, want);
        for bad in ["60000,120000", "1000,120000,240000", "240000,120000,480000"] {
            let e = err(&["--velocity-half-lives-ms", bad], None);
            assert!(e.contains("velocity_half_lives_ms"), "{bad}: {e}");
        }
    }

    #[test]
    fn intelligence_is_on_by_default_and_switched_by_the_flag_or_the_file() {
        assert!(resolve_with(&[], None).unwrap().persist.engine.intelligence);
        let toml = "[engine]\nintelligence = \"off\"\n";
        assert!(
            !resolve_with(&[], Some(toml))
                .unwrap()
                .persist
                .engine
                .intelligence
        );
        let flag = ["--intelligence", "on"];
        assert!(
            resolve_with(&flag, Some(toml))
                .unwrap()
                .persist
                .engine
                .intelligence
        );
        let e = err(&["--intelligence", "maybe"], None);
        assert!(e.contains("intelligence") && e.contains("maybe"), "{e}");
        let e = err(&[], Some("[engine]\nintelligence = \"no\"\n"));
        assert!(e.contains("intelligence"), "{e}");
    }

    #[test]
    fn tls_settings_come_from_flags_or_the_file_and_bad_ones_are_named() {
        let e = err(&[], Some("[tls]\ncert = \"/nonexistent/server.pem\"\n"));
        assert!(e.contains("tls_key"), "{e}");
        let e = err(&["--tls-client-ca", "/nonexistent/ca.pem"], None);
        assert!(
            e.contains("tls_client_ca") && e.contains("needs tls_cert"),
            "{e}"
        );
        let e = err(
            &[
                "--tls-cert",
                "/nonexistent/server.pem",
                "--tls-key",
                "/nonexistent/k",
            ],
            None,
        );
        assert!(
            e.contains("tls_cert") && e.contains("/nonexistent/server.pem"),
            "{e}"
        );
        let e = err(&["--listen", "0.0.0.0:7878", "--token", "t:admin"], None);
        assert!(e.contains("--insecure-plaintext-tokens"), "{e}");
        let s = resolve_with(
            &["--listen", "0.0.0.0:7878", "--token", "t:admin"],
            Some("[tls]\ninsecure_plaintext_tokens = true\n"),
        )
        .unwrap();
        assert!(s.server.insecure_plaintext_tokens && s.server.tls.is_none());
        let e = err(
            &["--admin-listen", "0.0.0.0:9878", "--token", "t:admin"],
            None,
        );
        assert!(
            e.contains("admin_listen") && e.contains("--tls-cert"),
            "{e}"
        );
        assert!(s.http.tls.is_none());
        let e = err(&["--admin-tls-client-ca", "/nonexistent/ca.pem"], None);
        assert!(
            e.contains("admin_tls_client_ca") && e.contains("needs tls_cert"),
            "{e}"
        );
        let e = err(
            &[],
            Some("[tls]\nadmin_client_ca = \"/nonexistent/ca.pem\"\n"),
        );
        assert!(e.contains("admin_tls_client_ca"), "{e}");
    }

    #[test]
    fn a_flag_that_is_not_a_number_is_refused_by_name() {
        let e = match Cli::try_parse_from(["t", "--max-in-flight", "lots"]) {
            Ok(_) => panic!("parsed"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("--max-in-flight"), "{e}");
    }
}
