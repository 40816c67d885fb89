//! omnistock: a real-time, authoritative available-to-promise (ATP) inventory engine.
//!
//! See docs/architecture.md for the map.
//!
//! Features: `server` (default) builds the engine, the write-ahead log, the TCP server, the
//! HTTP endpoint, the feed, the webhook sender, the checkout simulation ([`sim`], which
//! `omnistock demo` runs and the load generator crate under load/ builds on) and the binary.
//! Without it (`default-features = false`) this crate is what a service embedding the client
//! needs: [`client`], [`protocol`], [`codec`] and [`events`], with no actix, sled or metrics
//! in its dependency tree. The load generator (`omnistock-load`, a member of this workspace)
//! alone links a Redis client.
//!
//! The library sets no global allocator: the binaries choose mimalloc for themselves
//! (src/main.rs, load/main.rs), a service linking this crate keeps its own.
#![deny(missing_docs)]

pub mod client;
pub mod codec;

/// Turns transparent huge pages off for this process (Linux; a no-op elsewhere). Call it
/// first thing in `main`.
///
/// Why: mimalloc (the binaries' allocator) asks the kernel for huge pages on its arenas, and
/// the kernel then zeroes a whole 2 MiB page on the first touch of any part of it, again
/// after every page mimalloc returns. On the batched reserve load that was 19% of the
/// server's CPU in `clear_page_erms`; with THP off the same run went from ~90K to ~128K
/// reserves/s and the unpipelined p99 from 7.4 ms to 2.7 ms (docs/benchmarks.md). Redis,
/// MongoDB and most databases give the same advice.
#[cfg(feature = "server")]
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments and touches no
        // memory of ours.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
pub mod engine;
pub mod events;
#[cfg(feature = "server")]
pub mod feed;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod nats;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sim;
#[cfg(feature = "server")]
pub mod subscriber;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "server")]
pub mod wal;
#[cfg(feature = "server")]
pub mod webhooks;
