//! `omnistock ctl`: a command-line client of the binary protocol for operators and scripts.
//! Readable output by default (`key: value` lines, aligned tables), `--json` for scripts
//! (one JSON value per result, 128-bit ids as strings, errors as `{"error": {...}}` on
//! stdout). Exit codes keep server answers and client-side failures apart: see
//! [`exit`] and docs/ctl.md.
//!
//! clap parses the command line here, not in `main`, so that a usage error exits with
//! [`exit::USAGE`] (64) instead of clap's 2, which is the status code of `unknown_sku`.

mod exit;
mod ids;
mod online;
mod render;
mod tail;

use std::ffi::OsString;
use std::net::{Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use omnistock::client::{new_request_id, Client, ClientConfig};
use omnistock::protocol::*;

use exit::Failure;
use ids::parse_id;
use render::Output;

/// The port `--addr HOST` connects to.
pub const DEFAULT_PORT: u16 = 7878;

/// `omnistock ctl ARGS...`: the arguments, parsed by [`Cli`] in [`run`].
#[derive(clap::Args)]
#[command(
    disable_help_flag = true,
    after_help = "Run `omnistock ctl --help` for the commands and flags; docs/ctl.md for \
    output formats and exit codes."
)]
pub struct Args {
    /// Flags and a command (`omnistock ctl --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

impl Args {
    /// ctl's arguments from a list (`check --addr`, `dump --addr` run through ctl).
    pub fn new(args: Vec<OsString>) -> Args {
        Args { args }
    }

    /// These arguments after `command` (`omnistock backup ...` is `ctl backup ...`).
    pub fn prefixed(self, command: &str) -> Args {
        let mut args = vec![OsString::from(command)];
        args.extend(self.args);
        Args { args }
    }
}

const EXIT_CODES: &str = "\
Exit codes:
  0          ok
  1..=63     the server's rejection with that status code (1 insufficient_stock, ...)
  64         usage error (bad flags or values)
  65         rebalance apply: the recommendation is no longer the SKU's current one
  69         unavailable: connection refused, unreachable, unknown host
  70         internal error of ctl
  75         timeout or connection lost: retry with the same --request-id
  76         not an omnistock server, or an unreadable answer
  99         a status code without an exit code of its own
  100..=125  the server's error with that status code (103 unauthorized, ...)
Ids (reservations, requests) print as 32 lowercase hex digits; input also takes 0x-hex
and decimal. docs/ctl.md has the details.";

/// Talk to a running omnistock server.
#[derive(Parser)]
#[command(name = "omnistock ctl", bin_name = "omnistock ctl", after_help = EXIT_CODES)]
struct Cli {
    /// Server address: HOST[:PORT] (port 7878 when absent).
    #[arg(
        long,
        global = true,
        env = "OMNISTOCK_ADDR",
        default_value = "127.0.0.1:7878"
    )]
    addr: String,
    /// Auth token.
    #[arg(long, global = true, env = "OMNISTOCK_TOKEN", default_value = "")]
    token: String,
    /// Speak TLS to the server (needs --ca-file).
    #[arg(long, global = true, env = "OMNISTOCK_TLS")]
    tls: bool,
    /// PEM file of the CA(s) that signed the server's certificate (system roots are not
    /// used); implies --tls.
    #[arg(long, global = true, env = "OMNISTOCK_CA_FILE", value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Name the server's certificate must be for [default: the host of --addr].
    #[arg(
        long,
        global = true,
        env = "OMNISTOCK_SERVER_NAME",
        value_name = "NAME"
    )]
    server_name: Option<String>,
    /// PEM client certificate chain, for a server that requires one (with --key).
    #[arg(long, global = true, env = "OMNISTOCK_CERT", value_name = "FILE")]
    cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, env = "OMNISTOCK_KEY", value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// Print results, and errors, as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Request id (idempotency key) of a mutating command: 32 hex digits, 0x-hex or decimal;
    /// random when absent (printed with the result, and with a retriable error).
    #[arg(long, global = true, value_parser = parse_id)]
    request_id: Option<u128>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Liveness check.
    Ping,
    /// Server name, version and counts.
    Info,
    /// A SKU's buckets, per-channel ATP and oversold flag.
    Get {
        /// SKU id.
        sku: String,
    },
    /// Why a channel shows the ATP it shows for a SKU: each location's part, the channel's
    /// buffer and cap, open holds by channel, the low-stock threshold.
    Explain {
        /// SKU id.
        sku: String,
        /// Channel id.
        channel: String,
    },
    /// Demand velocity per channel (units held and fulfilled per hour in each half-life
    /// window) and the projected stockout (hours until the channel's ATP is gone).
    Velocity {
        /// SKU id.
        sku: String,
    },
    /// The SKUs of a channel (or, with --region, of a region) whose projected stockout
    /// comes first, soonest first.
    AtRisk {
        /// Channel id (or --region instead).
        #[arg(required_unless_present = "region", conflicts_with = "region")]
        channel: Option<String>,
        /// Rank by the projection in this region (its locations' exposed ATP against their
        /// summed demand) instead of a channel.
        #[arg(long)]
        region: Option<String>,
        /// How many SKUs (1..=1000).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Velocity window to rank by: 0, 1 or 2 (half-lives 15 min, 1 h, 24 h by default).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
        window: u8,
    },
    /// Regional rebalancing: transfers from a region with weeks of cover to one whose
    /// stockout is near, least cover first (`rebalance apply` sends one as a TRANSFER).
    Rebalance {
        #[command(subcommand)]
        apply: Option<RebalanceCmd>,
        /// Only this SKU's recommendation.
        #[arg(long)]
        sku: Option<String>,
        #[command(flatten)]
        flags: RebalanceFlags,
    },
    /// One page of the known SKU ids, in byte order; `next_after` (JSON) or the
    /// `next: --after ...` line (text) names the next page.
    Skus {
        /// Only ids starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this id (exclusive): the previous page's next_after.
        #[arg(long)]
        after: Option<String>,
        /// Most ids in the page (1..=1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// One page of the open reservations holding units of a SKU, by reservation id.
    Reservations {
        /// SKU id.
        sku: String,
        /// Start after this reservation id (exclusive): the previous page's next_after.
        #[arg(long, value_parser = parse_id)]
        after: Option<u128>,
        /// Most reservations in the page (1..=1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// One page of a SKU's durable history, oldest first: every event with its seq, time,
    /// request id, reason and reference, across checkpoints and restarts (as far as the
    /// server's retention keeps them); `next: --from ...` names the next page.
    History {
        /// SKU id.
        sku: String,
        /// Start at this seq (inclusive; 0 = the oldest kept): the previous page's next.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Start at this event of the --from record (the previous page's next index).
        #[arg(long, default_value_t = 0)]
        index: u16,
        /// Most events in the page (1..=1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// A reservation.
    Reservation {
        /// Reservation id: 32 hex digits, 0x-hex or decimal.
        #[arg(value_parser = parse_id)]
        id: u128,
    },
    /// Reserve a cart.
    Reserve {
        /// Selling channel.
        #[arg(long)]
        channel: String,
        /// SKU:QTY or SKU:QTY@LOCATION; repeatable.
        #[arg(long = "line", required = true)]
        lines: Vec<String>,
        /// Hold time in ms.
        #[arg(long, default_value_t = 600_000)]
        ttl_ms: u64,
        /// Reservation id (32 hex digits, 0x-hex or decimal); random when absent.
        #[arg(long, value_parser = parse_id)]
        id: Option<u128>,
        /// Allow one line to be split across locations.
        #[arg(long)]
        split: bool,
    },
    /// Fulfil a reservation (whole, or SKU:QTY lines).
    #[command(visible_alias = "fulfil")]
    Fulfill {
        /// Reservation id.
        #[arg(value_parser = parse_id)]
        id: u128,
        /// SKU:QTY; repeatable. Absent: everything.
        #[arg(long = "line")]
        lines: Vec<String>,
    },
    /// Release a reservation.
    Release {
        /// Reservation id.
        #[arg(value_parser = parse_id)]
        id: u128,
    },
    /// Extend a reservation.
    Extend {
        /// Reservation id.
        #[arg(value_parser = parse_id)]
        id: u128,
        /// New hold time from now, in ms.
        #[arg(long)]
        ttl_ms: u64,
    },
    /// Adjust sellable on hand by a signed delta.
    Adjust {
        /// SKU id.
        sku: String,
        /// Location id.
        location: String,
        /// Signed change.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        /// receipt, shrinkage, damage, return, correction.
        #[arg(long, default_value = "correction")]
        reason: String,
        /// Free reference.
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// Set sellable on hand, a cycle count: clears any shortfall (optionally only if on hand
    /// currently is --expected).
    Set {
        /// SKU id.
        sku: String,
        /// Location id.
        location: String,
        /// New on-hand.
        on_hand: u32,
        /// Compare-and-set guard.
        #[arg(long)]
        expected: Option<u32>,
        /// Free reference.
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// Transfer unreserved units between locations.
    Transfer {
        /// SKU id.
        sku: String,
        /// From location.
        from: String,
        /// To location.
        to: String,
        /// Units.
        qty: u32,
        /// Free reference.
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// List locations.
    Locations,
    /// List channels.
    Channels,
    /// List the stored named subscription positions (name, position, lag).
    Subscriptions,
    /// Write a backup of the server's whole state into a new directory ON THE SERVER'S
    /// MACHINE (admin): a complete data directory as of one log seq (docs/operations.md).
    Backup {
        /// Absolute path on the server's machine: must not exist (or be an empty
        /// directory); its parent must exist.
        #[arg(long, value_name = "DIR")]
        to: String,
        /// How long to wait for the answer, in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout_s: u64,
    },
    /// Verify a running server's state (admin): a backup into a scratch directory, then
    /// `check` of it, then its removal. ctl must run on the server's machine.
    Check {
        /// Where the server writes the temporary backup (a new directory; absolute)
        /// [default: a new directory under the system temporary directory].
        #[arg(long, value_name = "DIR")]
        scratch: Option<std::path::PathBuf>,
        /// How long to wait for the backup, in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout_s: u64,
    },
    /// A SKU's state and history from a running server (admin): like `dump DIR`, from a
    /// backup into a scratch directory (removed afterwards). ctl must run on the server's
    /// machine.
    Dump {
        /// The SKU.
        #[arg(long)]
        sku: String,
        /// Where the server writes the temporary backup (see `check`).
        #[arg(long, value_name = "DIR")]
        scratch: Option<std::path::PathBuf>,
        /// How long to wait for the backup, in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout_s: u64,
    },
    /// Forget the position stored under a subscription name (admin).
    DeleteSubscription {
        /// The subscription name.
        name: String,
    },
    /// Set the low-stock threshold of a channel, or of one SKU on it (0 removes).
    LowStock {
        /// Channel id.
        channel: String,
        /// Units: ATP in 1..=threshold is low stock.
        threshold: u32,
        /// Override for this SKU only.
        #[arg(long)]
        sku: Option<String>,
    },
    /// Set the stockout-projection threshold of a channel in hours (0 removes; admin):
    /// "stockout projected" feed items when a SKU's hours to zero fall under it.
    SetStockoutThreshold {
        /// Channel id.
        channel: String,
        /// Hours, 1..=8760; 0 removes the threshold.
        hours: u32,
    },
    /// Print stock changes live, one line each; resumes by itself after a disconnect.
    Tail(tail::TailArgs),
    /// Create or replace a location.
    AddLocation {
        /// Location id.
        id: String,
        /// warehouse, store, dark-store, marketplace, dropship.
        #[arg(long, default_value = "warehouse")]
        kind: String,
        /// Region code.
        #[arg(long)]
        region: String,
    },
    /// Delete a location (admin). Refused with in_use (17), naming what refers to it, while
    /// a channel sources it or a SKU has stock, reserved units or a safety stock there.
    DeleteLocation {
        /// Location id.
        id: String,
    },
    /// Delete a channel (admin). Refused with in_use (17) while a reservation on it is open.
    DeleteChannel {
        /// Channel id.
        id: String,
    },
    /// Create or replace a channel.
    AddChannel {
        /// Channel id.
        id: String,
        /// Locations in sourcing order, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        locations: Vec<String>,
        /// Safety buffer per SKU.
        #[arg(long, default_value_t = 0)]
        buffer: u32,
        /// Cap per SKU.
        #[arg(long)]
        cap: Option<u32>,
    },
}

/// The filters and thresholds of `rebalance` and `rebalance apply`.
#[derive(clap::Args, Clone)]
struct RebalanceFlags {
    /// Only recommendations whose short region is this one.
    #[arg(long)]
    region: Option<String>,
    /// Most recommendations (1..=1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Velocity window of the projection: 0, 1 or 2 [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    window: Option<u8>,
    /// A region is short under this many hours of cover [default: 72].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    near_hours: Option<u32>,
    /// A region may give from this many hours of cover [default: 336].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    surplus_hours: Option<u32>,
}

impl RebalanceFlags {
    fn query(&self, sku: Option<String>) -> RebalanceQuery {
        RebalanceQuery {
            sku,
            region: self.region.clone(),
            limit: self.limit,
            near_hours: self.near_hours,
            surplus_hours: self.surplus_hours,
            window: self.window,
        }
    }
}

#[derive(Subcommand)]
enum RebalanceCmd {
    /// Apply a recommendation (ID with --sku, re-read first) or every current one (--all)
    /// as a TRANSFER whose request id is the recommendation id: applying twice moves the
    /// stock once; a recommendation that is no longer current is refused (exit 65).
    Apply {
        /// Recommendation id (32 hex digits, 0x-hex or decimal).
        #[arg(value_parser = parse_id, required_unless_present = "all", conflicts_with = "all")]
        id: Option<u128>,
        /// The recommendation's SKU (needed with ID; a filter with --all).
        #[arg(long, required_unless_present = "all")]
        sku: Option<String>,
        /// Every current recommendation (within --limit, --region, --sku).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        flags: RebalanceFlags,
    },
}

/// `rebalance apply`: re-reads, then sends each recommendation as its TRANSFER. Stops at the
/// first failure (those applied before it stay applied: each is its own request).
async fn rebalance_apply(
    c: &Client,
    id: Option<u128>,
    sku: Option<String>,
    flags: &RebalanceFlags,
) -> Result<Output, Failure> {
    let list = c.rebalance(flags.query(sku.clone())).await?;
    let todo: Vec<WireRecommendation> = match id {
        Some(id) => match list.recommendations.iter().find(|r| r.id == id) {
            Some(r) => vec![r.clone()],
            None => {
                let sku = sku.unwrap_or_default();
                let now = match list.recommendations.first() {
                    Some(r) => format!("its current recommendation is {}", ids::fmt_id(r.id)),
                    None => "it has no recommendation now".to_string(),
                };
                return Err(Failure::new(
                    exit::Kind::Stale,
                    format!(
                        "recommendation {} is not current for SKU {sku}: the SKU changed since \
                         it was listed, or it was applied already (its transfer has reference \
                         rebalance:{}); {now}",
                        ids::fmt_id(id),
                        ids::fmt_id(id)
                    ),
                ));
            }
        },
        None => list.recommendations,
    };
    let mut done = Vec::with_capacity(todo.len());
    for r in todo {
        match c.apply_rebalance(&r).await {
            Ok(a) => done.push((r, a)),
            Err(e) => {
                let mut f = Failure::from(e).with_request_id(r.id);
                f.message = format!(
                    "{} (after {} applied; recommendation {} of {})",
                    f.message,
                    done.len(),
                    ids::fmt_id(r.id),
                    r.sku
                );
                return Err(f);
            }
        }
    }
    Ok(render::rebalance_applied(&done))
}

/// `HOST`, `HOST:PORT`, `IPv6` or `[IPv6]:PORT` → something `connect` takes, with
/// [`DEFAULT_PORT`] when no port is given.
fn with_default_port(addr: &str) -> Result<String, Failure> {
    let bad = || {
        Failure::usage(format!(
            "--addr {addr:?}: expected HOST, HOST:PORT, IPv6 or [IPv6]:PORT"
        ))
    };
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_string());
    }
    if let Ok(ip) = addr.parse::<Ipv6Addr>() {
        return Ok(format!("[{ip}]:{DEFAULT_PORT}"));
    }
    if let Some(inner) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(format!("{addr}:{DEFAULT_PORT}")),
            Err(_) => Err(bad()),
        };
    }
    match addr.rsplit_once(':') {
        None if !addr.is_empty() && !addr.contains(char::is_whitespace) => {
            Ok(format!("{addr}:{DEFAULT_PORT}"))
        }
        Some((host, port))
            if !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok() =>
        {
            Ok(addr.to_string())
        }
        _ => Err(bad()),
    }
}

/// `SKU:QTY[@LOC]`.
fn parse_line(s: &str) -> Result<WireLine, Failure> {
    let (item, location) = match s.split_once('@') {
        Some((i, l)) => (i, Some(l.to_string())),
        None => (s, None),
    };
    let bad = |why: &str| Failure::usage(format!("--line {s:?}: {why}"));
    let Some((sku, qty)) = item.rsplit_once(':') else {
        return Err(bad("expected SKU:QTY[@LOCATION]"));
    };
    let qty = qty
        .parse()
        .map_err(|e| bad(&format!("quantity {qty:?}: {e}")))?;
    Ok(WireLine {
        sku: sku.into(),
        qty,
        location,
    })
}

fn reason(s: &str) -> Result<WireAdjustReason, Failure> {
    Ok(match s {
        "receipt" => WireAdjustReason::Receipt,
        "shrinkage" => WireAdjustReason::Shrinkage,
        "damage" => WireAdjustReason::Damage,
        "return" => WireAdjustReason::ReturnToStock,
        "correction" => WireAdjustReason::Correction,
        _ => {
            return Err(Failure::usage(format!(
                "--reason {s:?}: receipt, shrinkage, damage, return or correction"
            )))
        }
    })
}

fn kind(s: &str) -> Result<WireLocationKind, Failure> {
    Ok(match s {
        "warehouse" => WireLocationKind::Warehouse,
        "store" => WireLocationKind::Store,
        "dark-store" => WireLocationKind::DarkStore,
        "marketplace" => WireLocationKind::MarketplaceFulfilled,
        "dropship" => WireLocationKind::Dropship,
        _ => {
            return Err(Failure::usage(format!(
                "--kind {s:?}: warehouse, store, dark-store, marketplace or dropship"
            )))
        }
    })
}

/// Prints a failure: the JSON error object on stdout under `--json`, else `error: ...` on
/// stderr; returns its exit code.
fn fail(json: bool, f: &Failure) -> ExitCode {
    if json {
        println!("{}", f.to_json());
    } else {
        let what = match &f.kind {
            exit::Kind::Server { status, .. } => format!("{} ({status})", f.name()),
            _ => f.name().to_string(),
        };
        eprintln!("error: {what}: {}", f.message);
        if let Some(id) = f.request_id.filter(|_| f.retriable()) {
            eprintln!(
                "hint: retry with --request-id {} to apply it at most once",
                ids::fmt_id(id)
            );
        }
    }
    ExitCode::from(f.exit_code())
}

/// Runs `omnistock ctl`; the exit code is documented in [`exit`] and docs/ctl.md.
pub fn run(args: Args) -> ExitCode {
    // Before parsing succeeds, `--json` anywhere asks for a JSON usage error.
    let json = args.args.iter().any(|a| a == "--json");
    let argv = std::iter::once(OsString::from("omnistock ctl")).chain(args.args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if e.exit_code() == 0 => {
            // --help, --version: not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if json => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("usage error");
            return fail(true, &Failure::usage(first.trim_start_matches("error: ")));
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(json, &Failure::internal(format!("tokio runtime: {e}"))),
    };
    match rt.block_on(execute(cli)) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(out)) => {
            if json {
                println!("{}", out.json);
            } else {
                print!("{}", out.human);
            }
            ExitCode::SUCCESS
        }
        Err(f) => fail(json, &f),
    }
}

/// Runs the command; `None` when it printed as it went (`tail`).
async fn execute(cli: Cli) -> Result<Option<Output>, Failure> {
    let addr = with_default_port(&cli.addr)?;
    execute_at(&addr, cli).await.map_err(|mut f| {
        // Which server did not answer, or was something else.
        if matches!(
            f.kind,
            exit::Kind::Unavailable | exit::Kind::NotOmnistock | exit::Kind::Tls
        ) {
            f.message = format!("{addr}: {}", f.message);
        }
        f
    })
}

async fn execute_at(addr: &str, cli: Cli) -> Result<Option<Output>, Failure> {
    let mut cfg = ClientConfig::new(addr).token(cli.token.clone());
    cfg.client_name = "omnistock-ctl".into();
    cfg.tls = client_tls(&cli)?;
    if let CtlCmd::Tail(args) = cli.cmd {
        return tail::tail(cfg, cli.json, args).await.map(|()| None);
    }
    if let CtlCmd::Rebalance {
        apply: Some(RebalanceCmd::Apply { id, sku, flags, .. }),
        ..
    } = cli.cmd
    {
        let c = Client::connect(cfg).await?;
        return rebalance_apply(&c, id, sku, &flags).await.map(Some);
    }
    match cli.cmd {
        CtlCmd::Backup { timeout_s, .. } => {
            cfg.request_timeout = std::time::Duration::from_secs(timeout_s);
        }
        CtlCmd::Check { scratch, timeout_s } => {
            cfg.request_timeout = std::time::Duration::from_secs(timeout_s);
            return online::check(cfg, scratch, cli.json).await.map(Some);
        }
        CtlCmd::Dump {
            sku,
            scratch,
            timeout_s,
        } => {
            cfg.request_timeout = std::time::Duration::from_secs(timeout_s);
            return online::dump(cfg, scratch, &sku).await.map(|()| None);
        }
        _ => {}
    }
    let rid = cli.request_id.unwrap_or_else(new_request_id);
    let op = operation(rid, cli.cmd)?;
    let c = Client::connect(cfg).await?;
    let mutating = op.request_id().is_some();
    let out = answer(&c, op).await;
    match out {
        Err(f) if mutating => Err(f.with_request_id(rid)),
        other => other.map(Some),
    }
}

/// The TLS settings of the flags; a usage error when they do not fit together or a file
/// cannot be used.
fn client_tls(cli: &Cli) -> Result<Option<omnistock::tls::ClientTls>, Failure> {
    let usage = |m: String| Failure::new(exit::Kind::Usage, m);
    let wanted = cli.tls
        || cli.ca_file.is_some()
        || cli.server_name.is_some()
        || cli.cert.is_some()
        || cli.key.is_some();
    if !wanted {
        return Ok(None);
    }
    let Some(ca) = &cli.ca_file else {
        return Err(usage(
            "--tls needs --ca-file FILE (the CA of the server's certificate)".into(),
        ));
    };
    let cert_key = match (&cli.cert, &cli.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err(usage("--cert and --key go together".into())),
    };
    omnistock::tls::ClientTls::new(ca, cli.server_name.clone(), cert_key)
        .map(Some)
        .map_err(|e| usage(format!("TLS: {e}")))
}

/// The operation of a command (everything but `tail`); usage errors before connecting.
fn operation(rid: u128, cmd: CtlCmd) -> Result<Op, Failure> {
    Ok(match cmd {
        CtlCmd::Ping => Op::Ping,
        CtlCmd::Info => Op::ServerInfo,
        CtlCmd::Get { sku } => Op::GetSku(GetSku { sku }),
        CtlCmd::Explain { sku, channel } => Op::ExplainAtp(ExplainAtp { sku, channel }),
        CtlCmd::Velocity { sku } => Op::Velocity(GetVelocity { sku }),
        CtlCmd::AtRisk {
            channel: Some(channel),
            limit,
            window,
            ..
        } => Op::AtRisk(AtRiskQuery {
            channel,
            window,
            limit,
        }),
        CtlCmd::AtRisk {
            region: Some(region),
            limit,
            window,
            ..
        } => Op::AtRiskRegion(AtRiskRegionQuery {
            region,
            window,
            limit,
        }),
        CtlCmd::AtRisk { .. } => return Err(Failure::usage("at-risk needs CHANNEL or --region")),
        CtlCmd::Rebalance {
            apply: None,
            sku,
            flags,
        } => Op::RebalanceList(flags.query(sku)),
        CtlCmd::Rebalance { apply: Some(_), .. } => {
            return Err(Failure::internal("rebalance apply is not one operation"))
        }
        CtlCmd::Skus {
            prefix,
            after,
            limit,
        } => Op::ListSkus(ListSkus {
            prefix,
            after,
            limit,
        }),
        CtlCmd::Reservations { sku, after, limit } => {
            Op::ListReservations(ListReservations { sku, after, limit })
        }
        CtlCmd::History {
            sku,
            from,
            index,
            limit,
        } => Op::SkuHistory(SkuHistory {
            sku,
            from_seq: from,
            from_index: index,
            limit,
        }),
        CtlCmd::Reservation { id } => Op::GetReservation(GetReservation { reservation: id }),
        CtlCmd::Locations => Op::ListLocations,
        CtlCmd::Channels => Op::ListChannels,
        CtlCmd::Subscriptions => Op::ListSubscriptions(ListSubscriptions {
            after: String::new(),
            limit: 0,
        }),
        CtlCmd::DeleteSubscription { name } => Op::DeleteSubscription(DeleteSubscription { name }),
        CtlCmd::Backup { to, .. } => Op::Backup(Backup { to }),
        CtlCmd::Reserve {
            channel,
            lines,
            ttl_ms,
            id,
            split,
        } => Op::Reserve(Reserve {
            request_id: rid,
            reservation: id.unwrap_or_else(new_request_id),
            channel,
            lines: lines
                .iter()
                .map(|l| parse_line(l))
                .collect::<Result<_, _>>()?,
            allow_split: split,
            ttl_ms,
        }),
        CtlCmd::Fulfill { id, lines } => {
            let lines = if lines.is_empty() {
                None
            } else {
                let parsed = lines.iter().map(|l| parse_line(l).map(|w| (w.sku, w.qty)));
                Some(parsed.collect::<Result<_, _>>()?)
            };
            Op::Fulfill(Fulfill {
                request_id: rid,
                reservation: id,
                lines,
            })
        }
        CtlCmd::Release { id } => Op::Release(Release {
            request_id: rid,
            reservation: id,
        }),
        CtlCmd::Extend { id, ttl_ms } => Op::Extend(Extend {
            request_id: rid,
            reservation: id,
            ttl_ms,
        }),
        CtlCmd::Adjust {
            sku,
            location,
            delta,
            reason: r,
            reference,
        } => Op::Adjust(Adjust {
            request_id: rid,
            sku,
            location,
            delta,
            reason: reason(&r)?,
            reference,
        }),
        CtlCmd::Set {
            sku,
            location,
            on_hand,
            expected,
            reference,
        } => Op::SetOnHand(SetOnHand {
            request_id: rid,
            sku,
            location,
            on_hand,
            expected,
            reference,
        }),
        CtlCmd::Transfer {
            sku,
            from,
            to,
            qty,
            reference,
        } => Op::Transfer(Transfer {
            request_id: rid,
            sku,
            from,
            to,
            qty,
            reference,
        }),
        CtlCmd::AddLocation {
            id,
            kind: k,
            region,
        } => Op::UpsertLocation(UpsertLocation {
            request_id: rid,
            location: WireLocation {
                id,
                kind: kind(&k)?,
                region,
            },
        }),
        CtlCmd::AddChannel {
            id,
            locations,
            buffer,
            cap,
        } => Op::UpsertChannel(UpsertChannel {
            request_id: rid,
            channel: WireChannel {
                id,
                locations,
                buffer,
                cap,
            },
        }),
        CtlCmd::DeleteLocation { id } => Op::DeleteLocation(DeleteLocation {
            request_id: rid,
            location: id,
        }),
        CtlCmd::DeleteChannel { id } => Op::DeleteChannel(DeleteChannel {
            request_id: rid,
            channel: id,
        }),
        CtlCmd::LowStock {
            channel,
            threshold,
            sku,
        } => Op::SetLowStock(SetLowStock {
            request_id: rid,
            channel,
            sku,
            threshold,
        }),
        CtlCmd::SetStockoutThreshold { channel, hours } => {
            Op::SetStockoutThreshold(SetStockoutThreshold {
                request_id: rid,
                channel,
                hours,
            })
        }
        CtlCmd::Tail(_) | CtlCmd::Check { .. } | CtlCmd::Dump { .. } => {
            return Err(Failure::internal("not one operation"))
        }
    })
}

/// Every stored named position, page after page (at most 10,000 names).
async fn all_subscriptions(c: &Client) -> Result<Subscriptions, Failure> {
    let mut all = Subscriptions {
        items: Vec::new(),
        more: false,
    };
    loop {
        let after = all.items.last().map_or("", |s| s.name.as_str()).to_string();
        let page = c.subscriptions(&after, 0).await?;
        all.items.extend(page.items);
        if !page.more {
            return Ok(all);
        }
    }
}

/// Runs `op` and renders its answer.
async fn answer(c: &Client, op: Op) -> Result<Output, Failure> {
    Ok(match op {
        Op::Ping => render::pong(&c.ping().await?)?,
        Op::ServerInfo => render::info(&c.server_info().await?)?,
        Op::GetSku(g) => render::sku(&c.get_sku(&g.sku).await?)?,
        Op::ExplainAtp(e) => render::explanation(&c.explain_atp(&e.sku, &e.channel).await?)?,
        Op::Velocity(v) => render::velocity(&c.velocity(&v.sku).await?)?,
        Op::AtRisk(q) => render::at_risk(&c.at_risk(&q.channel, q.window, q.limit).await?)?,
        Op::AtRiskRegion(q) => {
            render::at_risk_region(&c.at_risk_region(&q.region, q.window, q.limit).await?)?
        }
        Op::RebalanceList(q) => render::rebalance(&c.rebalance(q).await?),
        Op::ListSkus(q) => {
            render::sku_list(&c.list_skus(&q.prefix, q.after.as_deref(), q.limit).await?)?
        }
        Op::ListReservations(q) => {
            render::sku_reservations(&c.list_reservations(&q.sku, q.after, q.limit).await?)
        }
        Op::SkuHistory(q) => render::sku_history(
            &c.sku_history(&q.sku, (q.from_seq, q.from_index), q.limit)
                .await?,
        ),
        Op::GetReservation(g) => render::reservation(&c.get_reservation(g.reservation).await?),
        Op::ListLocations => render::locations(&c.locations().await?)?,
        Op::ListChannels => render::channels(&c.channels().await?)?,
        Op::ListSubscriptions(_) => render::subscriptions(&all_subscriptions(c).await?)?,
        Op::Backup(b) => render::backup(&c.backup(&b.to).await?)?,
        Op::DeleteSubscription(d) => {
            c.delete_subscription(&d.name).await?;
            render::deleted_subscription(&d.name)?
        }
        Op::DeleteLocation(d) => {
            let a = c.delete_location(d.request_id, &d.location).await?;
            render::deleted("location", &d.location, d.request_id, &a)
        }
        Op::DeleteChannel(d) => {
            let a = c.delete_channel(d.request_id, &d.channel).await?;
            render::deleted("channel", &d.channel, d.request_id, &a)
        }
        Op::Reserve(r) => {
            let (reservation, request_id) = (r.reservation, r.request_id);
            render::reserved(reservation, request_id, &c.reserve(r).await?)?
        }
        op => {
            let rid = op.request_id().unwrap_or_default();
            let reservation = match &op {
                Op::Fulfill(f) => Some(f.reservation),
                Op::Release(r) => Some(r.reservation),
                Op::Extend(e) => Some(e.reservation),
                _ => None,
            };
            render::applied(rid, reservation, &c.apply(op).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_gets_the_default_port() {
        let ok = |a: &str| with_default_port(a).unwrap();
        assert_eq!(ok("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(ok("127.0.0.1"), "127.0.0.1:7878");
        assert_eq!(ok("inventory.internal"), "inventory.internal:7878");
        assert_eq!(ok("inventory.internal:1"), "inventory.internal:1");
        assert_eq!(ok("::1"), "[::1]:7878");
        assert_eq!(ok("[::1]"), "[::1]:7878");
        assert_eq!(ok("[::1]:9000"), "[::1]:9000");
        for bad in [
            "",
            "host:",
            "host:port",
            ":7878",
            "[nope]",
            "a b",
            "host:99999",
        ] {
            assert!(with_default_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_parse_and_bad_ones_are_usage_errors() {
        let l = parse_line("TEE:2@wh-a").unwrap();
        assert_eq!(
            (l.sku.as_str(), l.qty, l.location.as_deref()),
            ("TEE", 2, Some("wh-a"))
        );
        let e = parse_line("TEE").unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(parse_line("TEE:x").is_err());
    }

    #[test]
    fn the_command_line_parses_ids_in_every_form() {
        let cli = Cli::try_parse_from(["ctl", "--request-id", "0x2a", "release", "42"]).unwrap();
        assert_eq!(cli.request_id, Some(42));
        assert!(matches!(cli.cmd, CtlCmd::Release { id: 42 }));
        let cli =
            Cli::try_parse_from(["ctl", "fulfil", "0000000000000000000000000000002a"]).unwrap();
        assert!(matches!(cli.cmd, CtlCmd::Fulfill { id: 42, .. }));
        assert!(Cli::try_parse_from(["ctl", "release", "nope"]).is_err());
    }
}
