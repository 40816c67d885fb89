//! What `ctl` prints for a result: a JSON value (`--json`, ids as strings) and a human text
//! (`key: value` lines and aligned tables). Pure: no IO here.

use omnistock::events::rfc3339_ms;
use omnistock::protocol::*;
use serde::Serialize;
use serde_json::{json, Value};

use super::exit::Failure;
use super::ids::fmt_id;

/// A result in both forms.
pub struct Output {
    pub json: Value,
    pub human: String,
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, Failure> {
    serde_json::to_value(v).map_err(|e| Failure::internal(format!("JSON: {e}")))
}

/// `key: value` lines, values aligned after the longest key.
pub fn kv(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:"), w = w + 1))
        .collect()
}

/// An aligned table: a header row, then the rows; columns whose header is in `right` are
/// right-aligned (numbers). Every line is indented by `indent` spaces; no trailing spaces.
pub fn table(indent: usize, header: &[&str], right: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = " ".repeat(indent);
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if right.contains(&header[i]) {
                s.push_str(&format!("{c:>w$}"));
            } else {
                s.push_str(&format!("{c:<w$}"));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Unix milliseconds as `2024-05-01T12:00:00.000Z (1714564800000)`.
pub fn time(ms: u64) -> String {
    format!("{} ({ms})", rfc3339_ms(ms))
}

pub fn pong(p: &Pong) -> Result<Output, Failure> {
    Ok(Output {
        json: to_json(p)?,
        human: kv(&[
            ("pong", "ok".into()),
            ("server_time", time(p.server_time_ms)),
        ]),
    })
}

pub fn backup(b: &WireBackup) -> Result<Output, Failure> {
    Ok(Output {
        json: to_json(b)?,
        human: kv(&[
            ("backup", b.dir.clone()),
            ("as_of_seq", b.as_of_seq.to_string()),
            ("checkpoint_start_seq", b.checkpoint_start_seq.to_string()),
            ("log_records", b.log_records.to_string()),
            ("skus", b.skus.to_string()),
            ("bytes", b.bytes.to_string()),
            ("duration_ms", b.duration_ms.to_string()),
        ]),
    })
}

pub fn info(i: &ServerInfo) -> Result<Output, Failure> {
    Ok(Output {
        json: to_json(i)?,
        human: kv(&[
            ("server_name", i.server_name.clone()),
            ("server_version", i.server_version.clone()),
            ("protocol_version", i.protocol_version.to_string()),
            ("skus", i.skus.to_string()),
            ("reservations", i.reservations.to_string()),
            ("connections", i.connections.to_string()),
        ]),
    })
}

pub fn sku(v: &WireSku) -> Result<Output, Failure> {
    let mut human = kv(&[
        ("sku", v.sku.clone()),
        ("oversold", if v.oversold { "YES" } else { "no" }.into()),
        ("holds", v.holds.to_string()),
        ("last_seq", v.last_seq.to_string()),
    ]);
    human.push_str("buckets:\n");
    let cols = [
        "location",
        "on_hand",
        "reserved",
        "safety",
        "damaged",
        "qc",
        "incoming",
        "atp",
        "shortfall",
    ];
    let rows: Vec<Vec<String>> = v
        .buckets
        .iter()
        .map(|b| {
            vec![
                b.location.clone(),
                b.on_hand.to_string(),
                b.reserved.to_string(),
                b.safety_stock.to_string(),
                b.damaged.to_string(),
                b.quality_control.to_string(),
                b.incoming.to_string(),
                b.atp.to_string(),
                b.shortfall.to_string(),
            ]
        })
        .collect();
    human.push_str(&table(2, &cols, &cols[1..], &rows));
    human.push_str("channels:\n");
    let rows: Vec<Vec<String>> = v
        .channels
        .iter()
        .map(|(c, atp)| vec![c.clone(), atp.to_string()])
        .collect();
    human.push_str(&table(2, &["channel", "atp"], &["atp"], &rows));
    Ok(Output {
        json: to_json(v)?,
        human,
    })
}

/// `explain SKU CHANNEL`: the parts, then the arithmetic from their sum to the ATP.
pub fn explanation(e: &WireAtpExplanation) -> Result<Output, Failure> {
    let mut human = kv(&[
        ("sku", e.sku.clone()),
        ("channel", e.channel.clone()),
        ("last_seq", e.last_seq.to_string()),
    ]);
    human.push_str("locations:\n");
    let cols = [
        "location",
        "on_hand",
        "reserved",
        "safety",
        "damaged",
        "qc",
        "shortfall",
        "atp",
        "adds",
    ];
    let rows: Vec<Vec<String>> = e
        .locations
        .iter()
        .map(|p| {
            vec![
                p.location.clone(),
                p.on_hand.to_string(),
                p.reserved.to_string(),
                p.safety_stock.to_string(),
                p.damaged.to_string(),
                p.quality_control.to_string(),
                p.shortfall.to_string(),
                p.atp.to_string(),
                p.contribution.to_string(),
            ]
        })
        .collect();
    human.push_str(&table(2, &cols, &cols[1..], &rows));
    let cap = e.cap.map_or("none".into(), |c| c.to_string());
    let source = match e.low_stock_source {
        WireLowStockSource::None => "none",
        WireLowStockSource::Channel => "channel",
        WireLowStockSource::Sku => "sku override",
    };
    let low = if e.low_stock { "LOW-STOCK" } else { "not low" };
    human.push_str(&kv(&[
        ("sum", e.sum.to_string()),
        (
            "buffer",
            format!("{} (withheld {})", e.buffer, e.withheld_by_buffer),
        ),
        ("cap", format!("{cap} (withheld {})", e.withheld_by_cap)),
        ("atp", e.atp.to_string()),
        (
            "low_stock",
            format!("{} ({source}), {low}", e.low_stock_threshold),
        ),
    ]));
    human.push_str("holds:\n");
    let rows: Vec<Vec<String>> = e
        .holds
        .iter()
        .map(|h| {
            vec![
                h.channel.clone(),
                h.holds.to_string(),
                h.units.to_string(),
                h.units_here.to_string(),
            ]
        })
        .collect();
    let cols = ["channel", "holds", "units", "here"];
    human.push_str(&table(2, &cols, &cols[1..], &rows));
    Ok(Output {
        json: to_json(e)?,
        human,
    })
}

/// A half-life as `15m`, `1h`, `24h`, `90s` (the largest unit that divides it).
fn half_life(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// Hours to zero with one decimal, `-` without demand.
fn hours(h: Option<f64>) -> String {
    h.map_or("-".into(), |h| format!("{h:.1}"))
}

/// One row per window of a SKU x channel, after `lead` cells.
fn velocity_rows(lead: &[String], v: &WireChannelVelocity) -> Vec<Vec<String>> {
    window_rows(lead, v.atp, &v.windows)
}

/// One row per window, after `lead` cells.
fn window_rows(lead: &[String], atp: u32, windows: &[WireWindowRate]) -> Vec<Vec<String>> {
    windows
        .iter()
        .map(|w| {
            let mut row = lead.to_vec();
            row.extend([
                atp.to_string(),
                half_life(w.half_life_ms),
                format!("{:.2}", w.held_per_hour),
                format!("{:.2}", w.fulfilled_per_hour),
                hours(w.hours_to_zero),
            ]);
            row
        })
        .collect()
}

const VELOCITY_COLS: [&str; 5] = ["atp", "half_life", "held/h", "fulfilled/h", "hours_to_zero"];

/// `velocity SKU`: per channel and window, the rates and the hours to zero.
pub fn velocity(v: &WireVelocity) -> Result<Output, Failure> {
    let mut human = kv(&[("sku", v.sku.clone())]);
    let rows: Vec<Vec<String>> = v
        .channels
        .iter()
        .flat_map(|c| velocity_rows(std::slice::from_ref(&c.channel), c))
        .collect();
    let cols: Vec<&str> = ["channel"].into_iter().chain(VELOCITY_COLS).collect();
    human.push_str(&table(0, &cols, &cols[1..], &rows));
    let rows: Vec<Vec<String>> = v
        .regions
        .iter()
        .flat_map(|r| window_rows(std::slice::from_ref(&r.region), r.atp, &r.windows))
        .collect();
    let cols: Vec<&str> = ["region"].into_iter().chain(VELOCITY_COLS).collect();
    human.push_str(&table(0, &cols, &cols[1..], &rows));
    Ok(Output {
        json: to_json(v)?,
        human,
    })
}

/// `skus`: one id a line, then `next: --after ID` when more follow.
pub fn sku_list(l: &WireSkuList) -> Result<Output, Failure> {
    let mut human = String::new();
    for s in &l.skus {
        human.push_str(s);
        human.push('\n');
    }
    match &l.next_after {
        Some(a) => human.push_str(&format!("next: --after {a}\n")),
        None => human.push_str(&format!("({} SKUs, end of list)\n", l.skus.len())),
    }
    Ok(Output {
        json: to_json(l)?,
        human,
    })
}

/// `at-risk CHANNEL`: the SKUs, soonest projected stockout first, each with all windows.
pub fn at_risk(a: &WireAtRisk) -> Result<Output, Failure> {
    let mut human = kv(&[
        ("channel", a.channel.clone()),
        ("ranked_by_window", a.window.to_string()),
        ("skus", a.skus.len().to_string()),
    ]);
    let rows: Vec<Vec<String>> = a
        .skus
        .iter()
        .enumerate()
        .flat_map(|(i, s)| velocity_rows(&[(i + 1).to_string(), s.sku.clone()], &s.velocity))
        .collect();
    let cols: Vec<&str> = ["rank", "sku"].into_iter().chain(VELOCITY_COLS).collect();
    let right: Vec<&str> = ["rank"].into_iter().chain(VELOCITY_COLS).collect();
    human.push_str(&table(0, &cols, &right, &rows));
    Ok(Output {
        json: to_json(a)?,
        human,
    })
}

/// `at-risk --region R`: the SKUs, soonest projected stockout in the region first.
pub fn at_risk_region(a: &WireAtRiskRegion) -> Result<Output, Failure> {
    let mut human = kv(&[
        ("region", a.region.clone()),
        ("ranked_by_window", a.window.to_string()),
        ("skus", a.skus.len().to_string()),
    ]);
    let rows: Vec<Vec<String>> = a
        .skus
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let lead = [(i + 1).to_string(), s.sku.clone()];
            window_rows(&lead, s.velocity.atp, &s.velocity.windows)
        })
        .collect();
    let cols: Vec<&str> = ["rank", "sku"].into_iter().chain(VELOCITY_COLS).collect();
    let right: Vec<&str> = ["rank"].into_iter().chain(VELOCITY_COLS).collect();
    human.push_str(&table(0, &cols, &right, &rows));
    Ok(Output {
        json: to_json(a)?,
        human,
    })
}

/// A recommendation as JSON: the id as a string of 32 hex digits.
fn recommendation_json(r: &WireRecommendation) -> Value {
    json!({
        "id": fmt_id(r.id),
        "sku": r.sku,
        "basis_seq": r.basis_seq,
        "short_region": r.short_region,
        "donor_region": r.donor_region,
        "from": r.from,
        "to": r.to,
        "qty": r.qty,
        "short_cover_hours": r.short_cover_hours,
        "short_cover_after_hours": r.short_cover_after_hours,
        "donor_cover_hours": r.donor_cover_hours,
        "donor_cover_after_hours": r.donor_cover_after_hours,
        "reference": r.reference,
    })
}

/// `rebalance`: one recommendation a row, least cover of the short region first.
pub fn rebalance(l: &WireRebalance) -> Output {
    let mut human = kv(&[
        ("near_hours", l.near_hours.to_string()),
        ("surplus_hours", l.surplus_hours.to_string()),
        ("window", l.window.to_string()),
        ("recommendations", l.recommendations.len().to_string()),
    ]);
    let rows: Vec<Vec<String>> = l
        .recommendations
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                fmt_id(r.id),
                r.sku.clone(),
                r.short_region.clone(),
                r.donor_region.clone(),
                r.from.clone(),
                r.to.clone(),
                r.qty.to_string(),
                format!(
                    "{} -> {}",
                    hours(Some(r.short_cover_hours)),
                    hours(Some(r.short_cover_after_hours))
                ),
                format!(
                    "{} -> {}",
                    hours(r.donor_cover_hours),
                    hours(r.donor_cover_after_hours)
                ),
            ]
        })
        .collect();
    let cols = [
        "rank",
        "id",
        "sku",
        "short",
        "donor",
        "from",
        "to",
        "qty",
        "short_cover_h",
        "donor_cover_h",
    ];
    human.push_str(&table(0, &cols, &["rank", "qty"], &rows));
    if l.truncated {
        human.push_str("(truncated to fit one frame: lower --limit)\n");
    }
    Output {
        json: json!({
            "near_hours": l.near_hours,
            "surplus_hours": l.surplus_hours,
            "window": l.window,
            "truncated": l.truncated,
            "recommendations": l.recommendations.iter().map(recommendation_json).collect::<Vec<_>>(),
        }),
        human,
    }
}

/// `rebalance apply`: each recommendation applied, with the transfer's seq.
pub fn rebalance_applied(done: &[(WireRecommendation, Applied)]) -> Output {
    let rows: Vec<Vec<String>> = done
        .iter()
        .map(|(r, a)| {
            vec![
                fmt_id(r.id),
                r.sku.clone(),
                r.from.clone(),
                r.to.clone(),
                r.qty.to_string(),
                a.seq.to_string(),
            ]
        })
        .collect();
    let mut human = kv(&[("applied", done.len().to_string())]);
    human.push_str(&table(
        0,
        &["id", "sku", "from", "to", "qty", "seq"],
        &["qty", "seq"],
        &rows,
    ));
    let applied: Vec<Value> = done
        .iter()
        .map(|(r, a)| {
            let mut v = recommendation_json(r);
            v["request_id"] = json!(fmt_id(r.id));
            v["seq"] = json!(a.seq);
            v["changes"] = json!(a.changes);
            v
        })
        .collect();
    Output {
        json: json!({ "applied": applied }),
        human,
    }
}

fn lines_table(lines: &[(String, u32)]) -> String {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|(s, q)| vec![s.clone(), q.to_string()])
        .collect();
    table(2, &["sku", "qty"], &["qty"], &rows)
}

pub fn reservation(r: &WireReservation) -> Output {
    let mut human = kv(&[
        ("reservation", fmt_id(r.reservation)),
        ("channel", r.channel.clone()),
        ("expires_at", time(r.expires_at_ms)),
    ]);
    human.push_str("lines:\n");
    human.push_str(&lines_table(&r.lines));
    Output {
        json: json!({
            "reservation": fmt_id(r.reservation),
            "channel": r.channel,
            "expires_at_ms": r.expires_at_ms,
            "lines": r.lines,
        }),
        human,
    }
}

/// `reservations SKU`: one reservation a row (ids as strings in JSON).
pub fn sku_reservations(l: &WireSkuReservations) -> Output {
    let mut human = kv(&[
        ("sku", l.sku.clone()),
        ("reservations", l.reservations.len().to_string()),
    ]);
    let rows: Vec<Vec<String>> = l
        .reservations
        .iter()
        .map(|h| {
            let held: u32 = h.allocations.iter().map(|(_, q)| q).sum();
            let at: Vec<String> = h
                .allocations
                .iter()
                .map(|(loc, q)| format!("{loc}:{q}"))
                .collect();
            vec![
                fmt_id(h.reservation),
                h.channel.clone(),
                time(h.expires_at_ms),
                held.to_string(),
                at.join(","),
            ]
        })
        .collect();
    let cols = ["reservation", "channel", "expires_at", "held", "locations"];
    human.push_str(&table(0, &cols, &["held"], &rows));
    if let Some(a) = l.next_after {
        human.push_str(&format!("next: --after {}\n", fmt_id(a)));
    }
    let reservations: Vec<Value> = l
        .reservations
        .iter()
        .map(|h| {
            json!({
                "reservation": fmt_id(h.reservation),
                "channel": h.channel,
                "expires_at_ms": h.expires_at_ms,
                "allocations": h.allocations,
            })
        })
        .collect();
    Output {
        json: json!({
            "sku": l.sku,
            "reservations": reservations,
            "next_after": l.next_after.map(fmt_id),
        }),
        human,
    }
}

/// `history SKU`: one event a row, oldest first; `next: --from SEQ [--index I]` when the
/// page was cut (ids as strings in JSON).
pub fn sku_history(h: &WireSkuHistory) -> Output {
    let mut human = kv(&[
        ("sku", h.sku.clone()),
        ("history_from_seq", h.base_seq.to_string()),
        ("events", h.events.len().to_string()),
    ]);
    let rows: Vec<Vec<String>> = h
        .events
        .iter()
        .map(|e| {
            let place = match (e.location.is_empty(), e.to_location.is_empty()) {
                (false, false) => format!("{}->{}", e.location, e.to_location),
                (false, true) => e.location.clone(),
                _ => e
                    .allocations
                    .iter()
                    .map(|(l, q)| format!("{l}:{q}"))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            vec![
                if e.index == 0 {
                    e.seq.to_string()
                } else {
                    format!("{}.{}", e.seq, e.index)
                },
                rfc3339_ms(e.at_ms),
                history_kind::name(e.kind).to_owned(),
                e.quantity.to_string(),
                place,
                e.channel.clone(),
                e.reservation.map(fmt_id).unwrap_or_default(),
                e.reason.clone(),
                e.reference.clone(),
                fmt_id(e.request_id),
            ]
        })
        .collect();
    let cols = [
        "seq",
        "at",
        "kind",
        "qty",
        "location",
        "channel",
        "reservation",
        "reason",
        "reference",
        "request",
    ];
    human.push_str(&table(0, &cols, &["qty"], &rows));
    match h.next {
        Some((seq, 0)) => human.push_str(&format!("next: --from {seq}\n")),
        Some((seq, index)) => human.push_str(&format!("next: --from {seq} --index {index}\n")),
        None => human.push_str("(end of history)\n"),
    }
    let events: Vec<Value> = h
        .events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "index": e.index,
                "at_ms": e.at_ms,
                "request_id": fmt_id(e.request_id),
                "kind": history_kind::name(e.kind),
                "quantity": e.quantity,
                "previous": e.previous,
                "location": e.location,
                "to_location": e.to_location,
                "channel": e.channel,
                "reservation": e.reservation.map(fmt_id),
                "allocations": e.allocations,
                "reason": e.reason,
                "reference": e.reference,
                "expires_at_ms": e.expires_at_ms,
            })
        })
        .collect();
    Output {
        json: json!({
            "sku": h.sku,
            "history_from_seq": h.base_seq,
            "events": events,
            "next": h.next.map(|(seq, index)| json!({"from": seq, "index": index})),
        }),
        human,
    }
}

pub fn reserved(reservation: u128, request_id: u128, r: &Reserved) -> Result<Output, Failure> {
    let mut human = kv(&[
        ("reservation", fmt_id(reservation)),
        ("request_id", fmt_id(request_id)),
        ("seq", r.seq.to_string()),
        ("expires_at", time(r.expires_at_ms)),
    ]);
    human.push_str("allocations:\n");
    let rows: Vec<Vec<String>> = r
        .allocations
        .iter()
        .map(|a| vec![a.sku.clone(), a.location.clone(), a.qty.to_string()])
        .collect();
    human.push_str(&table(2, &["sku", "location", "qty"], &["qty"], &rows));
    Ok(Output {
        json: json!({
            "reservation": fmt_id(reservation),
            "request_id": fmt_id(request_id),
            "seq": r.seq,
            "expires_at_ms": r.expires_at_ms,
            "allocations": to_json(&r.allocations)?,
        }),
        human,
    })
}

/// A mutation's answer; `reservation` for fulfil, release and extend.
pub fn applied(request_id: u128, reservation: Option<u128>, a: &Applied) -> Output {
    let mut rows = Vec::new();
    let mut json = json!({ "request_id": fmt_id(request_id), "seq": a.seq, "changes": a.changes });
    if let Some(r) = reservation {
        rows.push(("reservation", fmt_id(r)));
        json["reservation"] = json!(fmt_id(r));
    }
    rows.push(("request_id", fmt_id(request_id)));
    rows.push(("seq", a.seq.to_string()));
    rows.push(("changes", a.changes.to_string()));
    Output {
        json,
        human: kv(&rows),
    }
}

fn location_kind(k: &WireLocationKind) -> &'static str {
    match k {
        WireLocationKind::Warehouse => "warehouse",
        WireLocationKind::Store => "store",
        WireLocationKind::DarkStore => "dark-store",
        WireLocationKind::MarketplaceFulfilled => "marketplace",
        WireLocationKind::Dropship => "dropship",
    }
}

pub fn locations(l: &Locations) -> Result<Output, Failure> {
    let rows: Vec<Vec<String>> = l
        .locations
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                location_kind(&l.kind).into(),
                l.region.clone(),
            ]
        })
        .collect();
    Ok(Output {
        json: to_json(l)?,
        human: table(0, &["id", "kind", "region"], &[], &rows),
    })
}

pub fn channels(c: &Channels) -> Result<Output, Failure> {
    let stockout = |id: &str| {
        c.stockout_thresholds
            .iter()
            .find(|t| t.channel == id)
            .map_or("-".into(), |t| t.hours.to_string())
    };
    let rows: Vec<Vec<String>> = c
        .channels
        .iter()
        .map(|ch| {
            vec![
                ch.id.clone(),
                ch.locations.join(","),
                ch.buffer.to_string(),
                ch.cap.map_or("-".into(), |c| c.to_string()),
                stockout(&ch.id),
            ]
        })
        .collect();
    Ok(Output {
        json: to_json(c)?,
        human: table(
            0,
            &["id", "locations", "buffer", "cap", "stockout_h"],
            &["buffer", "cap", "stockout_h"],
            &rows,
        ),
    })
}

/// `subscriptions`: one row per stored name.
pub fn subscriptions(s: &Subscriptions) -> Result<Output, Failure> {
    let rows: Vec<Vec<String>> = s
        .items
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.position.to_string(),
                s.lag_records.to_string(),
            ]
        })
        .collect();
    Ok(Output {
        json: serde_json::json!({ "subscriptions": to_json(&s.items)? }),
        human: table(
            0,
            &["name", "position", "lag_records"],
            &["position", "lag_records"],
            &rows,
        ),
    })
}

/// `delete-subscription NAME`.
pub fn deleted_subscription(name: &str) -> Result<Output, Failure> {
    Ok(Output {
        json: serde_json::json!({ "deleted": name }),
        human: kv(&[("deleted", name.to_string())]),
    })
}

/// `delete-location ID` / `delete-channel ID`: what was deleted, and the write's
/// request id and sequence number (like every write).
pub fn deleted(what: &str, id: &str, request_id: u128, a: &Applied) -> Output {
    Output {
        json: json!({
            "deleted": what,
            "id": id,
            "request_id": fmt_id(request_id),
            "seq": a.seq,
        }),
        human: kv(&[
            ("deleted", format!("{what} {id}")),
            ("request_id", fmt_id(request_id)),
            ("seq", a.seq.to_string()),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_times_are_utc() {
        let t = table(
            2,
            &["sku", "qty"],
            &["qty"],
            &[
                vec!["TEE".into(), "2".into()],
                vec!["LONG-SKU".into(), "100".into()],
            ],
        );
        assert_eq!(t, "  sku       qty\n  TEE         2\n  LONG-SKU  100\n");
        assert_eq!(
            kv(&[("a", "1".into()), ("bbb", "2".into())]),
            "a:   1\nbbb: 2\n"
        );
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z (0)");
        assert_eq!(
            time(1_709_210_096_789),
            "2024-02-29T12:34:56.789Z (1709210096789)"
        );
    }

    fn part(location: &str, on_hand: u32, reserved: u32, safety: u32, damaged: u32) -> WireAtpPart {
        let atp = i64::from(on_hand) - i64::from(reserved) - i64::from(safety);
        WireAtpPart {
            location: location.into(),
            on_hand,
            reserved,
            safety_stock: safety,
            damaged,
            quality_control: 0,
            shortfall: 0,
            atp,
            contribution: u32::try_from(atp.max(0)).unwrap(),
        }
    }

    #[test]
    fn explain_prints_the_parts_and_the_arithmetic_as_docs_ctl_md_shows() {
        let holds = |channel: &str, holds, units| WireChannelHolds {
            channel: channel.into(),
            holds,
            units,
            units_here: units,
        };
        let e = WireAtpExplanation {
            sku: "TSHIRT-RED-M".into(),
            channel: "web-fr".into(),
            locations: vec![
                part("wh-paris", 11, 3, 2, 1),
                part("st-lyon", 8, 3, 1, 0),
                part("dk-paris", 1, 0, 3, 0),
            ],
            sum: 10,
            buffer: 2,
            withheld_by_buffer: 2,
            cap: Some(14),
            withheld_by_cap: 0,
            atp: 8,
            holds: vec![holds("pos", 1, 2), holds("web-fr", 2, 4)],
            low_stock_threshold: 20,
            low_stock_source: WireLowStockSource::Channel,
            low_stock: true,
            last_seq: 12,
        };
        let o = explanation(&e).unwrap();
        let doc = include_str!("../../docs/ctl.md");
        let shown = format!(
            "$ omnistock ctl explain TSHIRT-RED-M web-fr\n{}```",
            o.human
        );
        assert!(doc.contains(&shown), "docs/ctl.md must show:\n{shown}");
        assert_eq!(o.json["low_stock_source"], "channel");
        assert_eq!(o.json["cap"], 14);
        assert_eq!(o.json["locations"][2]["atp"], -2);
        let none = WireAtpExplanation { cap: None, ..e };
        assert!(explanation(&none)
            .unwrap()
            .human
            .contains("cap:       none (withheld 0)"));
        assert!(explanation(&none).unwrap().json["cap"].is_null());
    }

    #[test]
    fn ids_are_strings_in_json() {
        let r = WireReservation {
            reservation: u128::MAX,
            channel: "web".into(),
            expires_at_ms: 1,
            lines: vec![("TEE".into(), 2)],
        };
        let o = reservation(&r);
        assert_eq!(o.json["reservation"], "ffffffffffffffffffffffffffffffff");
        assert!(o
            .human
            .contains("reservation: ffffffffffffffffffffffffffffffff"));
    }

    fn window(half_life_ms: u64, held: f64, fulfilled: f64, atp: u32) -> WireWindowRate {
        WireWindowRate {
            half_life_ms,
            held_per_hour: held,
            fulfilled_per_hour: fulfilled,
            hours_to_zero: (held > 0.0).then(|| f64::from(atp) / held),
        }
    }

    fn tee_web(atp: u32, held: [f64; 3]) -> WireChannelVelocity {
        WireChannelVelocity {
            channel: "web-fr".into(),
            atp,
            windows: vec![
                window(900_000, held[0], 2.0, atp),
                window(3_600_000, held[1], 1.5, atp),
                window(86_400_000, held[2], 0.25, atp),
            ],
        }
    }

    #[test]
    fn velocity_and_at_risk_print_a_row_per_window_as_docs_ctl_md_shows() {
        let none = |channel: &str| WireChannelVelocity {
            channel: channel.into(),
            atp: 12,
            windows: [900_000, 3_600_000, 86_400_000]
                .iter()
                .map(|h| window(*h, 0.0, 0.0, 12))
                .collect(),
        };
        let v = WireVelocity {
            sku: "TSHIRT-RED-M".into(),
            channels: vec![none("pos"), tee_web(8, [6.0, 3.2, 0.5])],
            regions: vec![WireRegionVelocity {
                region: "FR".into(),
                atp: 21,
                windows: tee_web(21, [6.0, 3.2, 0.5]).windows,
            }],
        };
        let o = velocity(&v).unwrap();
        let doc = include_str!("../../docs/ctl.md");
        let shown = format!("$ omnistock ctl velocity TSHIRT-RED-M\n{}```", o.human);
        assert!(doc.contains(&shown), "docs/ctl.md must show:\n{shown}");
        assert!(o.json["channels"][0]["windows"][0]["hours_to_zero"].is_null());
        assert_eq!(o.json["channels"][1]["windows"][1]["held_per_hour"], 3.2);
        let a = WireAtRisk {
            channel: "web-fr".into(),
            window: 1,
            skus: vec![
                WireAtRiskSku {
                    sku: "TSHIRT-RED-M".into(),
                    velocity: tee_web(8, [6.0, 3.2, 0.5]),
                },
                WireAtRiskSku {
                    sku: "JEANS-32".into(),
                    velocity: tee_web(30, [0.0, 2.0, 1.0]),
                },
            ],
        };
        let o = at_risk(&a).unwrap();
        let shown = format!("$ omnistock ctl at-risk web-fr --limit 2\n{}```", o.human);
        assert!(doc.contains(&shown), "docs/ctl.md must show:\n{shown}");
        assert_eq!(o.json["skus"][1]["sku"], "JEANS-32");
    }
}
