//! omnistock: a real-time, authoritative available-to-promise (ATP) inventory engine.
//!
//! See docs/architecture.md for the map.
#![deny(missing_docs)]

pub mod codec;
pub mod domain;
pub mod engine;
