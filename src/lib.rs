//! omnistock: a real-time, authoritative available-to-promise (ATP) inventory engine.
//!
//! See docs/architecture.md for the map.
#![deny(missing_docs)]

pub mod admin;
pub mod client;
pub mod codec;
/// mimalloc, not glibc malloc: the hot path allocates on one thread and frees on another
/// (requests cross from connection tasks to actor arbiters), which serialises glibc's arena
/// locks; mimalloc's thread-local free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod domain;
pub mod engine;
pub mod feed;
pub mod loadgen;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod wal;
