//! Pure pieces of a delivery: the `Omnistock-Signature` header (HMAC-SHA256 over
//! `"<unix seconds>.<body>"`), its verification (what a receiver does, used by the tests and
//! shown in docs/webhooks.md), and the retry delay (bounded exponential back-off with
//! jitter). No IO and no clock: the time and the random draw come in as arguments.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The request header carrying the signature.
pub const SIGNATURE_HEADER: &str = "omnistock-signature";
/// The signature scheme's version tag in the header (`v1=` hex HMAC-SHA256).
pub const SCHEME: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

fn mac_of(secret: &[u8], unix_s: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("invariant: HMAC accepts any key");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The value of the `Omnistock-Signature` header for `body` sent at `unix_s`:
/// `t=<unix_s>,v1=<lowercase hex of HMAC-SHA256(secret, "<unix_s>.<body>")>`.
pub fn signature(secret: &[u8], unix_s: u64, body: &[u8]) -> String {
    let tag = mac_of(secret, unix_s, body).finalize().into_bytes();
    format!("t={unix_s},{SCHEME}={}", hex::encode(tag))
}

/// Why a signature was refused (a receiver's answer to a bad request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The header is not `t=<digits>,v1=<64 hex digits>`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from `now` than the tolerance: a replay or a skewed clock.
    #[error("timestamp {t} is more than {tolerance_s} s from now ({now})")]
    Stale {
        /// The header's `t`.
        t: u64,
        /// The receiver's clock.
        now: u64,
        /// The accepted distance.
        tolerance_s: u64,
    },
    /// The HMAC does not match: another secret or a changed body.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a header value against `body` the way a receiver should: parse `t` and every
/// `v1` (several may be present while a secret is rotated), refuse a `t` more than
/// `tolerance_s` from `now_s`, compare the HMAC in constant time. Returns the timestamp.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<u64, Refused> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(Refused::Malformed)?;
        match k {
            "t" if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() && v.len() <= 20 => {
                t = Some(v.parse::<u64>().map_err(|_| Refused::Malformed)?)
            }
            SCHEME => tags.push(hex::decode(v).map_err(|_| Refused::Malformed)?),
            _ => {} // other schemes: ignored, as a newer sender may add them
        }
    }
    let t = t.ok_or(Refused::Malformed)?;
    if tags.is_empty() {
        return Err(Refused::Malformed);
    }
    if t.abs_diff(now_s) > tolerance_s {
        return Err(Refused::Stale {
            t,
            now: now_s,
            tolerance_s,
        });
    }
    let ok = tags
        .iter()
        .any(|tag| mac_of(secret, t, body).verify_slice(tag).is_ok());
    if ok {
        Ok(t)
    } else {
        Err(Refused::Mismatch)
    }
}

/// The wait before retry number `attempt` (1 = the first retry): `initial` doubled per
/// attempt, capped at `max`, then "equal jitter": half of it fixed and half scaled by
/// `jitter` (a draw in `0.0..1.0`), so retries of many endpoints spread out but never wait
/// less than half the back-off.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << doublings.min(31)).min(max);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test-0123456789abcdef";

    #[test]
    fn a_signature_verifies_and_any_change_is_refused() {
        let body = br#"[{"id":"7:atp:web"}]"#;
        let h = signature(SECRET, 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(
            verify(SECRET, &h, body, 1_700_000_010, 300),
            Ok(1_700_000_000)
        );
        // Another body, another secret, a replay long after, a forged timestamp.
        assert_eq!(
            verify(SECRET, &h, b"[]", 1_700_000_010, 300),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(b"other-secret-xxxxxxxx", &h, body, 1_700_000_010, 300),
            Err(Refused::Mismatch)
        );
        assert!(matches!(
            verify(SECRET, &h, body, 1_700_000_301, 300),
            Err(Refused::Stale { .. })
        ));
        let forged = h.replace("t=1700000000", "t=1700000100");
        assert_eq!(
            verify(SECRET, &forged, body, 1_700_000_100, 300),
            Err(Refused::Mismatch)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify(SECRET, bad, body, 1, 300),
                Err(Refused::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently, as docs/webhooks.md's receiver does: python3 -c 'import
        // hmac,hashlib; print(hmac.new(b"key", b"1.body", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"key", 1, b"body"),
            "t=1,v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitters_within_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(backoff(1, i, m, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(1, i, m, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(2, i, m, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(4, i, m, 0.5), Duration::from_millis(600));
        assert_eq!(backoff(30, i, m, 1.0), m);
        assert_eq!(backoff(u32::MAX, i, m, 0.0), m / 2);
        assert_eq!(backoff(0, i, m, 1.0), i);
    }
}
