//! The Redis comparison target: the reserve workload as a Redis user would write it. Stock
//! is one hash per SKU (`stock:SKU-0000042` with `on_hand` and `reserved`); a reservation is
//! one Lua script call that checks every line's availability, then increments `reserved`
//! and writes the reservation key with a TTL, atomically (Redis runs a script alone). Run
//! Redis with `appendonly yes` and `appendfsync always` for a durable comparison.
//!
//! What this leaves out, and a Redis user would still have to build: releasing `reserved`
//! when a reservation key expires (keyspace notifications or a sweeper), channels,
//! locations and sourcing. The comparison therefore flatters Redis.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use omnistock::sim::check::{SkuFacts, Snapshot};
use omnistock::sim::{sku_name, Cart, CatalogSpec, LoadError, ReserveConn, ReserveTarget};
use redis::aio::MultiplexedConnection;

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
    LoadError::Target {
        target: "redis",
        message: e.to_string(),
    }
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

/// The `EVALSHA` call holding `cart` (lines merged per SKU) for `ttl_ms`.
pub fn reserve_cmd(sha: &str, cart: &Cart, ttl_ms: u64) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(sha).arg(cart.lines.len() + 1);
    for l in &cart.lines {
        c.arg(stock_key(l.sku));
    }
    c.arg(format!("res:{:032x}", cart.reservation));
    for l in &cart.lines {
        c.arg(l.qty);
    }
    c.arg(ttl_ms).arg(&cart.channel);
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

/// The Redis target of `--target redis`: `redis://HOST:PORT`, loopback only.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    url: String,
}

impl RedisTarget {
    /// The target at `url` (checked when the run starts).
    pub fn new(url: impl Into<String>) -> RedisTarget {
        RedisTarget { url: url.into() }
    }

    /// As a [`omnistock::sim::TargetSpec`].
    pub fn spec(url: impl Into<String>) -> omnistock::sim::TargetSpec {
        omnistock::sim::TargetSpec::Other(Arc::new(RedisTarget::new(url)))
    }
}

/// One multiplexed connection and the reserve script's SHA1.
struct RedisConn {
    con: MultiplexedConnection,
    sha: Arc<str>,
}

impl ReserveTarget for RedisTarget {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn addr(&self) -> &str {
        &self.url
    }

    fn host_port(&self) -> Result<String, LoadError> {
        let url = &self.url;
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            LoadError::Config(format!("--redis-url {url:?}: expected redis://HOST:PORT"))
        })?;
        let host = rest.rsplit('@').next().unwrap_or(rest);
        let host = host.split('/').next().unwrap_or(host);
        Ok(if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:6379")
        })
    }

    fn load_catalog<'a>(&'a self, spec: &'a CatalogSpec) -> BoxFuture<'a, Result<u64, LoadError>> {
        async move {
            let mut conns = connect(&self.url, 1).await?;
            let con = conns
                .first_mut()
                .ok_or_else(|| LoadError::Connect("redis: no connection".into()))?;
            load_catalog(con, spec).await
        }
        .boxed()
    }

    fn connect(&self, n: u32) -> BoxFuture<'_, Result<Vec<Box<dyn ReserveConn>>, LoadError>> {
        async move {
            let mut v = connect(&self.url, n).await?;
            let first = v
                .first_mut()
                .ok_or_else(|| LoadError::Connect("redis: no connection".into()))?;
            let sha: Arc<str> = load_script(first).await?.into();
            Ok(v.into_iter()
                .map(|con| {
                    Box::new(RedisConn {
                        con,
                        sha: sha.clone(),
                    }) as Box<dyn ReserveConn>
                })
                .collect())
        }
        .boxed()
    }
}

impl ReserveConn for RedisConn {
    fn share(&self) -> Box<dyn ReserveConn> {
        Box::new(RedisConn {
            con: self.con.clone(),
            sha: self.sha.clone(),
        })
    }

    fn reserve<'a>(
        &'a mut self,
        carts: &'a [Cart],
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<bool>, LoadError>> {
        async move {
            let cmds: Vec<redis::Cmd> = carts
                .iter()
                .map(|c| reserve_cmd(&self.sha, c, ttl_ms))
                .collect();
            let v = reserve_batch(&mut self.con, &cmds).await?;
            Ok(v.into_iter().map(|held| held == 1).collect())
        }
        .boxed()
    }

    fn snapshot(&mut self, skus: u32) -> BoxFuture<'_, Result<Snapshot, LoadError>> {
        snapshot(&mut self.con, skus).boxed()
    }
}
