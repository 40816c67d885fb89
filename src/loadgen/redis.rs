//! The Redis comparison target: the reserve workload as a Redis user would write it. Stock
//! is one hash per SKU (`stock:SKU-0000042` with `on_hand` and `reserved`); a reservation is
//! one Lua script call that checks every line's availability, then increments `reserved`
//! and writes the reservation key with a TTL, atomically (Redis runs a script alone). Run
//! Redis with `appendonly yes` and `appendfsync always` for a durable comparison.
//!
//! What this leaves out, and a Redis user would still have to build: releasing `reserved`
//! when a reservation key expires (keyspace notifications or a sweeper), channels,
//! locations and sourcing. The comparison therefore flatters Redis.

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

use super::catalog::CatalogSpec;
use super::check::{SkuFacts, Snapshot};
use super::workload::{sku_name, Line};
use super::LoadError;

/// The reserve script. KEYS: the stock hash of each line, then the reservation key.
/// ARGV: units of each line, then the TTL in ms, then the reservation's value.
/// Returns 1 when held, 0 when some line lacks stock (nothing changed).
pub const RESERVE_LUA: &str = r#"
local n = #KEYS - 1
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'on_hand', 'reserved')
  local available = tonumber(v[1] or '0') - tonumber(v[2] or '0')
  if available < tonumber(ARGV[i]) then return 0 end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[i])
end
redis.call('SET', KEYS[n + 1], ARGV[n + 2], 'PX', ARGV[n + 1])
return 1
"#;

fn err(e: redis::RedisError) -> LoadError {
    LoadError::Redis(e.to_string())
}

fn stock_key(sku: u32) -> String {
    format!("stock:{}", sku_name(sku))
}

/// Opens `n` multiplexed connections (each carries many requests in flight).
pub async fn connect(url: &str, n: u32) -> Result<Vec<MultiplexedConnection>, LoadError> {
    let client = redis::Client::open(url)
        .map_err(|e| LoadError::Config(format!("--redis-url {url:?}: {e}")))?;
    let mut conns = Vec::with_capacity(n as usize);
    for _ in 0..n {
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| LoadError::Connect(format!("redis {url}: {e}")))?,
        );
    }
    Ok(conns)
}

/// Loads the reserve script; returns its SHA1 for `EVALSHA`.
pub async fn load_script(con: &mut MultiplexedConnection) -> Result<String, LoadError> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(RESERVE_LUA)
        .query_async(con)
        .await
        .map_err(err)
}

/// Lines with the same SKU summed (the script checks each key once).
pub fn merge_lines(lines: &[Line]) -> Vec<Line> {
    let mut m: BTreeMap<u32, u32> = BTreeMap::new();
    for l in lines {
        *m.entry(l.sku).or_default() += l.qty;
    }
    m.into_iter().map(|(sku, qty)| Line { sku, qty }).collect()
}

/// The `EVALSHA` call reserving `lines` (already merged) as `reservation`.
pub fn reserve_cmd(
    sha: &str,
    reservation: u128,
    lines: &[Line],
    ttl_ms: u64,
    channel: &str,
) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(sha).arg(lines.len() + 1);
    for l in lines {
        c.arg(stock_key(l.sku));
    }
    c.arg(format!("res:{reservation:032x}"));
    for l in lines {
        c.arg(l.qty);
    }
    c.arg(ttl_ms).arg(channel);
    c
}

/// Runs reserve calls as one pipeline; one 0/1 answer per call.
pub async fn reserve_batch(
    con: &mut MultiplexedConnection,
    cmds: &[redis::Cmd],
) -> Result<Vec<i64>, LoadError> {
    if let [one] = cmds {
        let v: i64 = one.query_async(con).await.map_err(err)?;
        return Ok(vec![v]);
    }
    let mut p = redis::pipe();
    for c in cmds {
        p.add_command(c.clone());
    }
    p.query_async(con).await.map_err(err)
}

/// Sets every SKU's hash: `on_hand` = its total stock over the spec's locations,
/// `reserved` = 0.
pub async fn load_catalog(
    con: &mut MultiplexedConnection,
    spec: &CatalogSpec,
) -> Result<u64, LoadError> {
    let mut first = 0;
    while first < spec.skus {
        let last = first.saturating_add(1_000).min(spec.skus);
        let mut p = redis::pipe();
        for sku in first..last {
            p.cmd("HSET")
                .arg(stock_key(sku))
                .arg("on_hand")
                .arg(spec.total_stock_of(sku))
                .arg("reserved")
                .arg(0)
                .ignore();
        }
        let () = p.query_async(con).await.map_err(err)?;
        first = last;
    }
    Ok(u64::from(spec.skus))
}

/// Reads SKUs `0..skus` (missing hash: unknown SKU).
pub async fn snapshot(con: &mut MultiplexedConnection, skus: u32) -> Result<Snapshot, LoadError> {
    let mut out = Vec::with_capacity(skus as usize);
    let mut first = 0;
    while first < skus {
        let last = first.saturating_add(1_000).min(skus);
        let mut p = redis::pipe();
        for sku in first..last {
            p.cmd("HMGET")
                .arg(stock_key(sku))
                .arg("on_hand")
                .arg("reserved");
        }
        let got: Vec<(Option<u64>, Option<u64>)> = p.query_async(con).await.map_err(err)?;
        for (on_hand, reserved) in got {
            out.push(on_hand.map(|on_hand| {
                let reserved = reserved.unwrap_or(0);
                SkuFacts {
                    on_hand,
                    reserved,
                    shortfall: 0,
                    oversold: reserved > on_hand,
                }
            }));
        }
        first = last;
    }
    Ok(Snapshot { skus: out })
}
