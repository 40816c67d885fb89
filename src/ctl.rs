//! `omnistock ctl`: a command-line client of the binary protocol for operators and scripts.
//! Readable output by default, `--json` for scripts; the exit status is the operation's
//! status code (0 ok, 1..=99 rejection, 100+ error), or 1 for a client-side failure.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use omnistock::client::{new_request_id, Client, ClientConfig, ClientError};
use omnistock::protocol::*;
use serde::Serialize;

/// Flags of `ctl`.
#[derive(clap::Args)]
pub struct Args {
    /// Server address.
    #[arg(long, global = true, default_value = "127.0.0.1:7878")]
    addr: String,
    /// Auth token.
    #[arg(long, global = true, env = "OMNISTOCK_TOKEN", default_value = "")]
    token: String,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Request id (idempotency key) of a mutating command; random when absent. Decimal or 0x-hex.
    #[arg(long, global = true, value_parser = parse_u128)]
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
    /// A reservation.
    Reservation {
        /// Reservation id (decimal or 0x-hex).
        #[arg(value_parser = parse_u128)]
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
        /// Reservation id; random when absent.
        #[arg(long, value_parser = parse_u128)]
        id: Option<u128>,
        /// Allow one line to be split across locations.
        #[arg(long)]
        split: bool,
    },
    /// Fulfil a reservation (whole, or SKU:QTY lines).
    Fulfill {
        /// Reservation id.
        #[arg(value_parser = parse_u128)]
        id: u128,
        /// SKU:QTY; repeatable. Absent: everything.
        #[arg(long = "line")]
        lines: Vec<String>,
    },
    /// Release a reservation.
    Release {
        /// Reservation id.
        #[arg(value_parser = parse_u128)]
        id: u128,
    },
    /// Extend a reservation.
    Extend {
        /// Reservation id.
        #[arg(value_parser = parse_u128)]
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
    /// Print stock changes live, one line each; resumes by itself after a disconnect.
    Tail {
        /// Only this channel (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Only this SKU (repeatable).
        #[arg(long = "sku")]
        skus: Vec<String>,
        /// Only SKUs starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this log sequence number (replayed from the log).
        #[arg(long = "from")]
        from_seq: Option<u64>,
        /// Start with a snapshot of current ATP.
        #[arg(long, conflicts_with = "from_seq")]
        snapshot: bool,
        /// Comma-separated kinds: atp, thresholds, reservations.
        #[arg(long, value_delimiter = ',', default_value = "atp,thresholds")]
        kinds: Vec<String>,
        /// Coalesce: latest ATP per SKU x channel at most every N ms (10..=60000).
        #[arg(long, default_value_t = 0)]
        coalesce_ms: u32,
        /// Durable subscription name: resumes from its acknowledged position and acks
        /// after every frame.
        #[arg(long, default_value = "")]
        name: String,
        /// Exit after printing this many events.
        #[arg(long)]
        count: Option<u64>,
    },
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

fn parse_u128(s: &str) -> Result<u128, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u128::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

/// `SKU:QTY[@LOC]`.
fn parse_line(s: &str) -> anyhow::Result<WireLine> {
    let (item, location) = match s.split_once('@') {
        Some((i, l)) => (i, Some(l.to_string())),
        None => (s, None),
    };
    let Some((sku, qty)) = item.rsplit_once(':') else {
        bail!("line {s:?}: expected SKU:QTY[@LOCATION]");
    };
    let qty = qty
        .parse()
        .with_context(|| format!("line {s:?}: quantity"))?;
    Ok(WireLine {
        sku: sku.into(),
        qty,
        location,
    })
}

fn reason(s: &str) -> anyhow::Result<WireAdjustReason> {
    Ok(match s {
        "receipt" => WireAdjustReason::Receipt,
        "shrinkage" => WireAdjustReason::Shrinkage,
        "damage" => WireAdjustReason::Damage,
        "return" => WireAdjustReason::ReturnToStock,
        "correction" => WireAdjustReason::Correction,
        _ => bail!("--reason {s:?}: receipt, shrinkage, damage, return or correction"),
    })
}

fn kind(s: &str) -> anyhow::Result<WireLocationKind> {
    Ok(match s {
        "warehouse" => WireLocationKind::Warehouse,
        "store" => WireLocationKind::Store,
        "dark-store" => WireLocationKind::DarkStore,
        "marketplace" => WireLocationKind::MarketplaceFulfilled,
        "dropship" => WireLocationKind::Dropship,
        _ => bail!("--kind {s:?}: warehouse, store, dark-store, marketplace or dropship"),
    })
}

/// Runs `omnistock ctl`; the exit status is the status code.
pub fn run(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<ClientError>()
                .and_then(ClientError::status)
                .and_then(|s| u8::try_from(s).ok())
                .filter(|s| *s != 0)
                .unwrap_or(1);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn show<T: Serialize + std::fmt::Debug>(json: bool, v: &T) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(v)?);
    } else {
        println!("{v:#?}");
    }
    Ok(())
}

async fn execute(args: Args) -> anyhow::Result<()> {
    let mut cfg = ClientConfig::new(args.addr.clone()).token(args.token.clone());
    cfg.client_name = "omnistock-ctl".into();
    if let CtlCmd::Tail { .. } = &args.cmd {
        return tail(cfg, args.json, args.cmd).await;
    }
    let c = Client::connect(cfg).await?;
    let rid = args.request_id.unwrap_or_else(new_request_id);
    let j = args.json;
    match args.cmd {
        CtlCmd::Ping => show(j, &c.ping().await?),
        CtlCmd::Info => show(j, &c.server_info().await?),
        CtlCmd::Get { sku } => show_sku(j, &c.get_sku(&sku).await?),
        CtlCmd::Reservation { id } => show(j, &c.get_reservation(id).await?),
        CtlCmd::Reserve {
            channel,
            lines,
            ttl_ms,
            id,
            split,
        } => {
            let reservation = id.unwrap_or_else(new_request_id);
            let lines = lines
                .iter()
                .map(|l| parse_line(l))
                .collect::<anyhow::Result<_>>()?;
            let r = c
                .reserve(Reserve {
                    request_id: rid,
                    reservation,
                    channel,
                    lines,
                    allow_split: split,
                    ttl_ms,
                })
                .await?;
            if !j {
                println!("reservation {reservation} (0x{reservation:032x})");
            }
            show(j, &r)
        }
        other => execute_more(&c, rid, j, other).await,
    }
}

async fn execute_more(c: &Client, rid: u128, j: bool, cmd: CtlCmd) -> anyhow::Result<()> {
    let op = match cmd {
        CtlCmd::Fulfill { id, lines } => {
            let lines = if lines.is_empty() {
                None
            } else {
                let parsed = lines.iter().map(|l| parse_line(l).map(|w| (w.sku, w.qty)));
                Some(parsed.collect::<anyhow::Result<_>>()?)
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
        CtlCmd::Locations => return show(j, &c.locations().await?),
        CtlCmd::Channels => return show(j, &c.channels().await?),
        _ => bail!("unreachable: handled by execute"),
    };
    show(j, &c.apply(op).await?)
}

fn show_sku(json: bool, v: &WireSku) -> anyhow::Result<()> {
    if json {
        return show(true, v);
    }
    println!("{}{}", v.sku, if v.oversold { "  OVERSOLD" } else { "" });
    println!(
        "  {:<16} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "location",
        "on_hand",
        "reserved",
        "safety",
        "damaged",
        "qc",
        "incoming",
        "atp",
        "shortfall"
    );
    for b in &v.buckets {
        println!(
            "  {:<16} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
            b.location,
            b.on_hand,
            b.reserved,
            b.safety_stock,
            b.damaged,
            b.quality_control,
            b.incoming,
            b.atp,
            b.shortfall
        );
    }
    for (ch, atp) in &v.channels {
        println!("  channel {ch:<16} atp {atp}");
    }
    println!("  holds {}  last_seq {}", v.holds, v.last_seq);
    Ok(())
}

fn kinds_of(names: &[String]) -> anyhow::Result<u8> {
    let mut k = 0;
    for n in names {
        k |= match n.as_str() {
            "atp" => kinds::ATP,
            "thresholds" => kinds::THRESHOLDS,
            "reservations" => kinds::RESERVATIONS,
            _ => bail!("--kinds {n:?}: atp, thresholds or reservations"),
        };
    }
    Ok(k)
}

fn cause_name(c: u8) -> &'static str {
    match c {
        cause::RESERVE => "reserve",
        cause::FULFILL => "fulfill",
        cause::RELEASE => "release",
        cause::EXPIRY => "expiry",
        cause::CART_ABORT => "cart-abort",
        cause::RECOVERY => "recovery",
        cause::ADJUST => "adjust",
        cause::SET_ON_HAND => "set",
        cause::MOVE => "move",
        cause::TRANSFER => "transfer",
        cause::SAFETY_STOCK => "safety-stock",
        cause::INCOMING => "incoming",
        cause::EXTEND => "extend",
        _ => "other",
    }
}

fn transition_name(t: u8) -> &'static str {
    match t {
        transition::OUT_OF_STOCK => "  OUT-OF-STOCK",
        transition::BACK_IN_STOCK => "  BACK-IN-STOCK",
        transition::LOW_STOCK => "  LOW-STOCK",
        _ => "",
    }
}

fn lifecycle_name(k: u8) -> &'static str {
    match k {
        lifecycle::PLACED => "placed",
        lifecycle::FULFILLED => "fulfilled",
        lifecycle::RELEASED => "released",
        lifecycle::EXPIRED => "expired",
        lifecycle::EXTENDED => "extended",
        lifecycle::UNDONE => "undone",
        _ => "other",
    }
}

/// One line per event; `None` for bookkeeping items (positions).
fn tail_line(item: &PushItem) -> Option<String> {
    Some(match item {
        PushItem::Atp(a) => format!(
            "{} {} {} atp {} -> {} ({}{}){}",
            a.seq,
            a.sku,
            a.channel,
            a.previous,
            a.atp,
            cause_name(a.cause),
            if a.coalesced { ", coalesced" } else { "" },
            transition_name(a.transition)
        ),
        PushItem::Oversold(o) => format!(
            "{} {} {}",
            o.seq,
            o.sku,
            if o.oversold {
                "OVERSOLD"
            } else {
                "no longer oversold"
            }
        ),
        PushItem::Reservation(r) => format!(
            "{} {} reservation {} {} qty {}",
            r.seq,
            r.sku,
            r.reservation,
            lifecycle_name(r.kind),
            r.qty
        ),
        PushItem::Catalog { seq, .. } => format!("{seq} catalog changed"),
        PushItem::Snapshot(s) => format!(
            "snapshot {} {} atp {}{}",
            s.sku,
            s.channel,
            s.atp,
            if s.oversold { "  OVERSOLD" } else { "" }
        ),
        PushItem::SnapshotEnd { seq } => format!("snapshot complete at {seq}; live"),
        PushItem::Position { .. } | PushItem::Lagged { .. } => return None,
    })
}

/// `ctl tail`: subscribe and print; on a disconnect or a lag notice, resume after the last
/// complete position (the server replays from its log, so nothing is lost or repeated).
async fn tail(cfg: ClientConfig, json: bool, cmd: CtlCmd) -> anyhow::Result<()> {
    let CtlCmd::Tail {
        channels,
        skus,
        prefix,
        from_seq,
        snapshot,
        kinds,
        coalesce_ms,
        name,
        count,
    } = cmd
    else {
        bail!("unreachable: not tail");
    };
    let (start_kind, from) = match (from_seq, snapshot, name.is_empty()) {
        (Some(f), _, _) => (start::AFTER, f),
        (None, true, _) => (start::SNAPSHOT, 0),
        (None, false, false) => (start::RESUME, 0),
        (None, false, true) => (start::LIVE, 0),
    };
    let request = Subscribe {
        name: name.clone(),
        start: start_kind,
        from_seq: from,
        channels,
        skus,
        sku_prefix: prefix,
        kinds: kinds_of(&kinds)?,
        coalesce_ms,
    };
    let mut sub = omnistock::client::Subscriber::subscribe(cfg, request).await?;
    let s = sub.subscribed();
    eprintln!(
        "subscribed: events after seq {} (head {}, log keeps from {}){}",
        s.from_seq,
        s.head_seq,
        s.retained_from_seq,
        if s.note.is_empty() {
            String::new()
        } else {
            format!("; {}", s.note)
        }
    );
    let mut printed = 0u64;
    loop {
        let items = tokio::select! {
            r = sub.next() => r,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let items = match items {
            Ok(i) => i,
            Err(e @ (ClientError::Lagged { .. } | ClientError::Disconnected)) => {
                eprintln!("{e}; resuming after seq {}", sub.position());
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                sub.resume().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for item in &items {
            let line = match (json, item) {
                (_, PushItem::Position { .. }) => None,
                (true, _) => serde_json::to_string(item).ok(),
                (false, _) => tail_line(item),
            };
            if let Some(l) = line {
                println!("{l}");
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
            }
        }
        if !name.is_empty() {
            sub.ack().await?;
        }
    }
}
