//! `omnistock-load`: the load generator of omnistock as its own crate of the workspace
//! (issue 13). The workloads, the catalog loader, the driver, the report, the end-of-run
//! checks and the feed subscribers are `omnistock::sim`, re-exported here whole, because
//! `omnistock demo` (a subcommand of the server binary, which cannot depend on this crate)
//! runs the same checkout simulation; this crate adds what only the load generator needs:
//! the Redis comparison target ([`redis`], the one user of the `redis` crate), the
//! `omnistock-load` binary's flags (main.rs) and the protocol fuzzer `omnistock-fuzz`
//! (fuzz.rs). The server links none of it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), omnistock_load::LoadError> {
//! use std::time::Duration;
//! use omnistock_load::{self as load, CatalogSpec, LoadConfig, RedisTarget, WorkloadKind};
//!
//! let spec = CatalogSpec::generic(1_000, 2, 2, 1_000)?;
//! let target = RedisTarget::spec("redis://127.0.0.1:6379");
//! load::load_catalog(&target, &spec).await?;
//! let mut cfg = LoadConfig::new(target, load::preset(WorkloadKind::Reserve, &spec));
//! cfg.duration = Duration::from_secs(5);
//! println!("{}", load::run(cfg).await?.report.human());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod redis;

pub use omnistock::sim::*;
pub use redis::RedisTarget;
