//! Constructors for the checkout requests, so a caller does not spell out every wire field:
//! each takes what has no sensible default (the reservation id, the channel, the hold time)
//! and draws a fresh request id with [`new_request_id`]. Keep the value to resend it: a
//! resend of the same value (same request id) is answered with the first outcome instead of
//! being applied twice. The wire structs stay plain data in `protocol`; these are inherent
//! methods added here because only a client chooses request ids.
//!
//! ```
//! use std::time::Duration;
//! use omnistock::client::new_request_id;
//! use omnistock::protocol::{Fulfill, Reserve};
//!
//! let cart = Reserve::new(new_request_id(), "web-fr", Duration::from_secs(600))
//!     .line("TSHIRT-RED-M", 2)
//!     .line_at("MUG", 1, "store-lyon")
//!     .allow_split(true);
//! assert_eq!((cart.lines.len(), cart.ttl_ms), (2, 600_000));
//! let sold = Fulfill::all(cart.reservation);
//! assert_ne!(sold.request_id, cart.request_id);
//! ```

use std::time::Duration;

use crate::protocol::{Extend, Fulfill, Release, Reserve, WireLine};

use super::new_request_id;

/// A duration in whole ms, saturating (a hold of more than 584 million years is refused by
/// the server's limit anyway).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Reserve {
    /// An empty cart for `reservation` on `channel`, held for `ttl` once placed; lines are
    /// sourced from the channel's locations in its order and not split. Add lines with
    /// [`Reserve::line`] (the server refuses a cart without any).
    pub fn new(reservation: u128, channel: impl Into<String>, ttl: Duration) -> Reserve {
        Reserve {
            request_id: new_request_id(),
            reservation,
            channel: channel.into(),
            lines: Vec::new(),
            allow_split: false,
            ttl_ms: ms(ttl),
        }
    }

    /// Adds `qty` units of `sku`, from wherever the channel sources it.
    pub fn line(mut self, sku: impl Into<String>, qty: u32) -> Reserve {
        self.lines.push(WireLine {
            sku: sku.into(),
            qty,
            location: None,
        });
        self
    }

    /// Adds `qty` units of `sku` from `location` only.
    pub fn line_at(
        mut self,
        sku: impl Into<String>,
        qty: u32,
        location: impl Into<String>,
    ) -> Reserve {
        self.lines.push(WireLine {
            sku: sku.into(),
            qty,
            location: Some(location.into()),
        });
        self
    }

    /// Whether one line may be taken from several locations.
    pub fn allow_split(mut self, allow: bool) -> Reserve {
        self.allow_split = allow;
        self
    }
}

impl Fulfill {
    /// Fulfils everything `reservation` holds.
    pub fn all(reservation: u128) -> Fulfill {
        Fulfill {
            request_id: new_request_id(),
            reservation,
            lines: None,
        }
    }

    /// Fulfils these units per SKU of `reservation`; the rest stays held.
    pub fn lines(reservation: u128, lines: Vec<(String, u32)>) -> Fulfill {
        Fulfill {
            request_id: new_request_id(),
            reservation,
            lines: Some(lines),
        }
    }
}

impl Release {
    /// Releases everything `reservation` holds.
    pub fn new(reservation: u128) -> Release {
        Release {
            request_id: new_request_id(),
            reservation,
        }
    }
}

impl Extend {
    /// Holds `reservation` for `ttl` from now.
    pub fn new(reservation: u128, ttl: Duration) -> Extend {
        Extend {
            request_id: new_request_id(),
            reservation,
            ttl_ms: ms(ttl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_fill_every_field_and_draw_a_fresh_request_id() {
        let r = Reserve::new(7, "web", Duration::from_millis(1500))
            .line("A", 2)
            .line_at("B", 1, "wh");
        assert_eq!(r.reservation, 7);
        assert_eq!(r.channel, "web");
        assert_eq!(r.ttl_ms, 1500);
        assert!(!r.allow_split && r.allow_split(true).allow_split);
        let r = Reserve::new(7, "web", Duration::from_secs(1)).line("A", 2);
        assert_eq!(
            r.lines,
            [WireLine {
                sku: "A".into(),
                qty: 2,
                location: None
            }]
        );
        let ids = [
            r.request_id,
            Fulfill::all(7).request_id,
            Release::new(7).request_id,
            Extend::new(7, Duration::from_secs(1)).request_id,
            Reserve::new(7, "web", Duration::from_secs(1)).request_id,
        ];
        assert!(ids.iter().all(|i| *i != 0));
        let mut unique = ids.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert_eq!(Fulfill::all(7).lines, None);
        assert_eq!(
            Fulfill::lines(7, vec![("A".into(), 1)]).lines,
            Some(vec![("A".to_string(), 1)])
        );
        assert_eq!(Extend::new(7, Duration::MAX).ttl_ms, u64::MAX);
    }
}
