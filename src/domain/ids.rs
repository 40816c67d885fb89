//! Identifiers. SKU, location and channel ids are short validated strings shared through
//! `Arc<str>` so that thousands of buckets naming the same location cost one pointer each.
//! Reservation and request ids are client-chosen 128-bit integers.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::limits::{MAX_NAME_BYTES, MAX_SKU_ID_BYTES};
use super::rejection::Rejection;

/// Milliseconds since the Unix epoch. The domain never reads a clock: callers pass it.
pub type TimeMs = u64;

/// Client-chosen 128-bit reservation id (a UUID fits).
pub type ReservationId = u128;

/// Client-chosen 128-bit idempotency key carried by every mutating request.
pub type RequestId = u128;

/// Whether `b` may appear in an id. Every allowed character is ASCII, so checking the
/// bytes is checking the characters (a non-ASCII character's bytes are all >= 0x80) without
/// decoding UTF-8 character by character.
fn valid_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'#' | b'+')
}

fn validate(kind: &'static str, s: &str, max: usize) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > max || !s.bytes().all(valid_id_byte) {
        return Err(Rejection::invalid(format!(
            "{kind} id {s:?} must be 1..={max} bytes of [A-Za-z0-9-_.:/#+]"
        )));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        /// Equal text; the same shared copy (the engine resolves ids to its own copies)
        /// is equal without comparing bytes, which a map lookup would otherwise do.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        /// The text's hash, as `str`'s (what `Borrow<str>` needs), as derived before.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: &str) -> Result<Self, Rejection> {
                validate($kind, s, $max)?;
                Ok(Self(Arc::from(s)))
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Whether both are the same interned copy (equal without comparing bytes;
            /// `false` says nothing: equal ids may be separate copies).
            pub fn shares(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
            /// Re-validates an id that was decoded from bytes (wire, disk).
            pub fn check(&self) -> Result<(), Rejection> {
                validate($kind, &self.0, $max)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A stock keeping unit, e.g. `TSHIRT-RED-M`.
    SkuId,
    "sku",
    MAX_SKU_ID_BYTES
);
string_id!(
    /// A stock location (warehouse, store, dark store, ...), e.g. `wh-paris`.
    LocationId,
    "location",
    MAX_NAME_BYTES
);
string_id!(
    /// A sales channel, e.g. `web-fr`, `amazon-us`.
    ChannelId,
    "channel",
    MAX_NAME_BYTES
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_odd_characters() {
        assert!(SkuId::new("TSHIRT-RED-M").is_ok());
        assert!(SkuId::new("").is_err());
        assert!(SkuId::new("has space").is_err());
        assert!(SkuId::new(&"x".repeat(MAX_SKU_ID_BYTES + 1)).is_err());
        assert!(LocationId::new(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(ChannelId::new("web-fr").is_ok());
        assert!(ChannelId::new("é").is_err());
    }

    #[test]
    fn equal_ids_are_equal_and_hash_alike_whether_shared_or_not() {
        use std::collections::HashMap;
        use std::hash::BuildHasher;
        let a = SkuId::new("SKU-1").unwrap();
        let shared = a.clone();
        let copy = SkuId::new("SKU-1").unwrap();
        let other = SkuId::new("SKU-2").unwrap();
        assert!(a.shares(&shared) && !a.shares(&copy));
        assert_eq!(a, shared);
        assert_eq!(a, copy);
        assert_ne!(a, other);
        let h = std::collections::hash_map::RandomState::new();
        assert_eq!(h.hash_one(&a), h.hash_one(&copy));
        assert_eq!(h.hash_one(&a), h.hash_one("SKU-1"), "Borrow<str> finds it");
        let map: HashMap<SkuId, u8> = [(copy, 1)].into_iter().collect();
        assert_eq!(map.get(&a), Some(&1));
        assert_eq!(map.get("SKU-1"), Some(&1));
        assert_eq!(map.get(&other), None);
    }
}
