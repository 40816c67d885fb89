//! omnistock: a real-time, authoritative available-to-promise (ATP) inventory engine.
//!
//! See docs/architecture.md for the map.
#![deny(missing_docs)]

pub mod client;
pub mod codec;
/// mimalloc, not glibc malloc: the hot path allocates on one thread and frees on another
/// (requests cross from connection tasks to actor arbiters), which serialises glibc's arena
/// locks; mimalloc's thread-local free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (Linux; a no-op elsewhere). Call it
/// first thing in `main`.
///
/// Why: mimalloc asks the kernel for huge pages on its arenas, and the kernel then zeroes a
/// whole 2 MiB page on the first touch of any part of it, again after every page mimalloc
/// returns. On the batched reserve load that was 19% of the server's CPU in
/// `clear_page_erms`; with THP off the same run went from ~90K to ~128K reserves/s and the
/// unpipelined p99 from 7.4 ms to 2.7 ms (docs/benchmarks.md). Redis, MongoDB and most
/// databases give the same advice.
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

pub mod domain;
pub mod engine;
pub mod events;
pub mod feed;
pub mod http;
pub mod loadgen;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod wal;
