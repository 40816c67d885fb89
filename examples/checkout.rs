//! A checkout with the omnistock client: connect, reserve a cart, fulfil it. When a line is
//! short the server answers `insufficient_stock` with the facts (which line, how much was
//! available); this checkout then offers the customer what there is: it reserves the
//! available quantity instead, drops lines with none left, and fulfils what it got.
//!
//! ```text
//! cargo run --example checkout -- [--addr HOST:PORT] [--token TOKEN] --channel web SKU=QTY...
//! ```
//!
//! `--addr` defaults to `$OMNISTOCK_ADDR`, else 127.0.0.1:7878; `--token` to
//! `$OMNISTOCK_TOKEN`. Exit status: 0 when something was sold, 1 on an error, 2 on bad
//! arguments, 3 when nothing of the cart was available. Only the client-side library is
//! used (it builds with `default-features = false`). tests/examples.rs runs this against a
//! real server.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use omnistock::client::{new_request_id, Client, ClientConfig, ClientError, Rejection};
use omnistock::protocol::{Fulfill, Reserve};

/// How long the units are held between reserve and fulfil (a payment step would run there).
const HOLD_TTL: Duration = Duration::from_secs(600);

/// What to buy, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// `host:port` of the server.
    pub addr: String,
    /// Auth token (a checkout or admin role); empty for a server without tokens.
    pub token: String,
    /// The sales channel.
    pub channel: String,
    /// SKU and quantity, one entry per SKU (repeated SKUs are summed).
    pub lines: Vec<(String, u32)>,
}

/// How the checkout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The reservation was fulfilled with these (SKU, units) — the cart, or what was left of
    /// it after short lines were cut down.
    Fulfilled {
        /// The reservation id.
        reservation: u128,
        /// What was sold.
        lines: Vec<(String, u32)>,
    },
    /// None of the cart's SKUs had any stock for the channel.
    NothingAvailable,
}

const USAGE: &str =
    "usage: checkout [--addr HOST:PORT] [--token TOKEN] --channel CHANNEL SKU=QTY [SKU=QTY...]";

/// Parses the arguments (without the program name); `addr` and `token` default to the
/// given environment values.
pub fn parse_args(
    args: impl IntoIterator<Item = String>,
    env_addr: Option<String>,
    env_token: Option<String>,
) -> Result<Order, String> {
    let mut addr = env_addr.unwrap_or_else(|| "127.0.0.1:7878".into());
    let mut token = env_token.unwrap_or_default();
    let mut channel = None;
    let mut lines: Vec<(String, u32)> = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--addr" => addr = value("--addr")?,
            "--token" => token = value("--token")?,
            "--channel" => channel = Some(value("--channel")?),
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            line => {
                let (sku, qty) = line
                    .split_once('=')
                    .ok_or_else(|| format!("{line:?}: a line is SKU=QTY"))?;
                let qty: u32 = qty.parse().ok().filter(|q| *q > 0).ok_or_else(|| {
                    format!("{line:?}: the quantity must be a whole number above 0")
                })?;
                if sku.is_empty() {
                    return Err(format!("{line:?}: the SKU is empty"));
                }
                match lines.iter_mut().find(|(s, _)| s == sku) {
                    Some((_, q)) => {
                        *q = q
                            .checked_add(qty)
                            .ok_or_else(|| format!("{sku}: quantities add up past {}", u32::MAX))?
                    }
                    None => lines.push((sku.to_string(), qty)),
                }
            }
        }
    }
    let channel = channel.ok_or_else(|| format!("--channel is required\n{USAGE}"))?;
    if lines.is_empty() {
        return Err(format!("no SKU=QTY line given\n{USAGE}"));
    }
    Ok(Order {
        addr,
        token,
        channel,
        lines,
    })
}

fn reserve_request(reservation: u128, channel: &str, lines: &[(String, u32)]) -> Reserve {
    // A fresh request id per attempt (`Reserve::new` draws one): the server remembers
    // accepted requests by it, so the client's resend after a dropped connection cannot
    // reserve twice. Lines come from the channel's locations, one location per line
    // (`.allow_split(true)` would let a line be split over several stores).
    lines.iter().fold(
        Reserve::new(reservation, channel, HOLD_TTL),
        |r, (sku, qty)| r.line(sku.as_str(), *qty),
    )
}

/// Runs the checkout, writing what happens to `out`.
pub async fn checkout(order: &Order, out: &mut impl Write) -> Result<Outcome, ClientError> {
    let client = Client::connect(ClientConfig::new(&order.addr).token(&order.token)).await?;
    let reservation = new_request_id();
    let mut lines = order.lines.clone();
    // Each refusal removes or shrinks one line, so this ends after at most one attempt per
    // line and one more.
    let reserved = loop {
        if lines.is_empty() {
            let _ = writeln!(out, "nothing of the cart is available on {}", order.channel);
            return Ok(Outcome::NothingAvailable);
        }
        match client
            .reserve(reserve_request(reservation, &order.channel, &lines))
            .await
        {
            Ok(r) => break r,
            Err(ClientError::Status {
                rejection: Rejection::InsufficientStock(Some(facts)),
                ..
            }) => {
                let _ = writeln!(
                    out,
                    "short: {} wanted {}, available {}",
                    facts.sku, facts.requested, facts.available
                );
                let i = lines
                    .iter()
                    .position(|(sku, _)| *sku == facts.sku)
                    .ok_or_else(|| {
                        ClientError::Protocol(format!(
                            "the server named {}, not in the cart",
                            facts.sku
                        ))
                    })?;
                // Less than asked, so the loop moves on even if stock came back meanwhile.
                let fewer = facts.available.min(lines[i].1 - 1);
                if fewer == 0 {
                    lines.remove(i);
                } else {
                    lines[i].1 = fewer;
                }
            }
            Err(e) => return Err(e),
        }
    };
    for a in &reserved.allocations {
        let _ = writeln!(out, "reserved {} x {} at {}", a.qty, a.sku, a.location);
    }
    // Payment would happen here, within HOLD_TTL; on failure, `client.release(..)`.
    let done = client.fulfill(Fulfill::all(reservation)).await?;
    let _ = writeln!(
        out,
        "fulfilled reservation {reservation:032x} (durable at seq {})",
        done.seq
    );
    Ok(Outcome::Fulfilled { reservation, lines })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let order = match parse_args(
        std::env::args().skip(1),
        std::env::var("OMNISTOCK_ADDR").ok(),
        std::env::var("OMNISTOCK_TOKEN").ok(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match checkout(&order, &mut std::io::stdout()).await {
        Ok(Outcome::Fulfilled { .. }) => ExitCode::SUCCESS,
        Ok(Outcome::NothingAvailable) => ExitCode::from(3),
        Err(e) => {
            eprintln!("checkout failed: {e}");
            ExitCode::FAILURE
        }
    }
}
