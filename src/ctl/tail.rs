//! `ctl tail`: subscribe to the stock-change feed and print one line (or, with `--json`,
//! one event envelope of docs/events.md) per event; resumes by itself after a disconnect or
//! a lag notice.

use omnistock::client::{ClientConfig, ClientError, Subscriber};
use omnistock::events::{envelope, lifecycle_name};
use omnistock::protocol::*;

use super::exit::Failure;
use super::ids::fmt_id;

/// What `ctl tail` was asked for (its flags).
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Only this channel (repeatable).
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    /// Only this SKU (repeatable).
    #[arg(long = "sku")]
    pub skus: Vec<String>,
    /// Only SKUs starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Start after this log sequence number (replayed from the log).
    #[arg(long = "from")]
    pub from_seq: Option<u64>,
    /// Start with a snapshot of current ATP.
    #[arg(long, conflicts_with = "from_seq")]
    pub snapshot: bool,
    /// Comma-separated kinds: atp, thresholds, reservations, stockout.
    #[arg(long, value_delimiter = ',', default_value = "atp,thresholds")]
    pub kinds: Vec<String>,
    /// Coalesce: latest ATP per SKU x channel at most every N ms (10..=60000).
    #[arg(long, default_value_t = 0)]
    pub coalesce_ms: u32,
    /// Durable subscription name: resumes from its acknowledged position and acks
    /// after every frame.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Exit after printing this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// The `source` of the `--json` events (a URI reference naming this server);
    /// default `omnistock://HOST:PORT` of the address connected to.
    #[arg(long)]
    pub source: Option<String>,
}

fn kinds_of(names: &[String]) -> Result<u8, Failure> {
    let mut k = 0;
    for n in names {
        k |= match n.as_str() {
            "atp" => kinds::ATP,
            "thresholds" => kinds::THRESHOLDS,
            "reservations" => kinds::RESERVATIONS,
            "stockout" => kinds::STOCKOUT,
            "rebalance" => kinds::REBALANCE,
            "region_stockout" => kinds::REGION_STOCKOUT,
            _ => {
                return Err(Failure::usage(format!(
                    "--kinds {n:?}: atp, thresholds, reservations, stockout, rebalance or \
                     region_stockout"
                )))
            }
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
        cause::REPROJECT => "reproject",
        _ => "other",
    }
}

fn transition_name(t: u8) -> &'static str {
    match t {
        transition::OUT_OF_STOCK => "  OUT-OF-STOCK",
        transition::BACK_IN_STOCK => "  BACK-IN-STOCK",
        transition::LOW_STOCK => "  LOW-STOCK",
        transition::LOW_STOCK_CLEARED => "  LOW-STOCK-CLEARED",
        _ => "",
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
            fmt_id(r.reservation),
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
        PushItem::Stockout(s) => {
            let hours = if s.hours_milli == u64::MAX {
                "no demand".to_string()
            } else {
                format!("{:.1} h to zero", s.hours_milli as f64 / 1000.0)
            };
            let what = if s.projected {
                "STOCKOUT PROJECTED".to_string()
            } else {
                format!(
                    "stockout cleared ({})",
                    omnistock::events::stockout_reason_name(s.reason)
                )
            };
            format!(
                "{} {} {} {what}: {hours} at {:.2}/h, atp {} (threshold {} h)",
                s.seq,
                s.sku,
                s.channel,
                s.per_hour_milli as f64 / 1000.0,
                s.atp,
                s.threshold_hours
            )
        }
        PushItem::Rebalance(r) => {
            if r.recommended {
                let cover = |m: u64| {
                    if m == u64::MAX {
                        "no demand".to_string()
                    } else {
                        format!("{:.1} h", m as f64 / 1000.0)
                    }
                };
                format!(
                    "{} {} REBALANCE RECOMMENDED {}: {} units {} ({}) -> {} ({}), cover {} / {}",
                    r.seq,
                    r.sku,
                    fmt_id(r.id),
                    r.qty,
                    r.from,
                    r.donor_region,
                    r.to,
                    r.short_region,
                    cover(r.short_cover_milli),
                    cover(r.donor_cover_milli)
                )
            } else {
                format!(
                    "{} {} rebalance withdrawn {} ({}) for {}",
                    r.seq,
                    r.sku,
                    fmt_id(r.id),
                    omnistock::events::rebalance_reason_name(r.reason),
                    r.short_region
                )
            }
        }
        PushItem::RegionStockout(s) => {
            let hours = if s.hours_milli == u64::MAX {
                "no demand".to_string()
            } else {
                format!("{:.1} h to zero", s.hours_milli as f64 / 1000.0)
            };
            let what = if s.projected {
                "REGION STOCKOUT PROJECTED".to_string()
            } else {
                format!(
                    "region stockout cleared ({})",
                    omnistock::events::stockout_reason_name(s.reason)
                )
            };
            format!(
                "{} {} region {} {what}: {hours} at {:.2}/h, atp {} (threshold {} h)",
                s.seq,
                s.sku,
                s.region,
                s.per_hour_milli as f64 / 1000.0,
                s.atp,
                s.threshold_hours
            )
        }
        PushItem::Position { .. } | PushItem::Lagged { .. } => return None,
    })
}

/// `ctl tail`: subscribe and print; on a disconnect or a lag notice, resume after the last
/// complete position (the server replays from its log, so nothing is lost or repeated).
pub async fn tail(cfg: ClientConfig, json: bool, args: TailArgs) -> Result<(), Failure> {
    let TailArgs {
        channels,
        skus,
        prefix,
        from_seq,
        snapshot,
        kinds,
        coalesce_ms,
        name,
        count,
        source,
    } = args;
    let source = source.unwrap_or_else(|| format!("omnistock://{}", cfg.addr));
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
    let mut sub = Subscriber::subscribe(cfg, request).await?;
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
                (true, _) => envelope(item, &source)
                    .map(|e| serde_json::to_string(&e))
                    .transpose()
                    .map_err(|e| Failure::internal(format!("JSON: {e}")))?,
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
