//! The one textual form of 128-bit ids (reservation ids, request ids) in `ctl`: 32 lowercase
//! hex digits, no `0x`, the form the server's own messages use (`reservation
//! 0000000000000000000000000000002a not found`). Printed that way in human output and as a
//! JSON *string* under `--json` (a JSON number loses precision above 2^53). Input accepts
//! that form, `0x`-prefixed hex (1..=32 digits) and decimal.

/// `id` as 32 lowercase hex digits.
pub fn fmt_id(id: u128) -> String {
    format!("{id:032x}")
}

/// Parses an id: exactly 32 hex digits, `0x` + 1..=32 hex digits, or decimal. A string of
/// exactly 32 characters is always read as hex (a 32-digit decimal id must be given in hex).
pub fn parse_id(s: &str) -> Result<u128, String> {
    let bad = || {
        format!(
            "{s:?}: expected an id of 32 hex digits, 0x-prefixed hex or decimal (at most 2^128 - 1)"
        )
    };
    let hex = |h: &str| {
        if h.is_empty() || h.len() > 32 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u128::from_str_radix(h, 16).map_err(|_| bad())
    };
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return hex(h);
    }
    if s.len() == 32 {
        return hex(s);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_ids_read_back_and_every_input_form_is_accepted() {
        for id in [0, 1, 42, u64::MAX as u128 + 1, u128::MAX] {
            let s = fmt_id(id);
            assert_eq!(s.len(), 32, "{s}");
            assert!(!s.bytes().any(|b| b.is_ascii_uppercase()), "{s}");
            assert_eq!(parse_id(&s), Ok(id), "{s}");
            assert_eq!(parse_id(&format!("0x{id:x}")), Ok(id));
            assert_eq!(parse_id(&format!("0X{id:X}")), Ok(id));
            if id.to_string().len() != 32 {
                assert_eq!(parse_id(&id.to_string()), Ok(id));
            }
        }
        assert_eq!(parse_id("42"), Ok(42));
        assert_eq!(parse_id("0x2a"), Ok(42));
        assert_eq!(parse_id("0000000000000000000000000000002a"), Ok(42));
        assert_eq!(
            parse_id("00000000000000000000000000000010"),
            Ok(16),
            "32 chars: hex"
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        for s in [
            "",
            "0x",
            "-1",
            "+1",
            "abc",
            "2a",
            "0x1g",
            "0x000000000000000000000000000000001",
            "340282366920938463463374607431768211456",
            "0000000000000000000000000000002g",
            " 42",
        ] {
            assert!(parse_id(s).is_err(), "{s:?} was accepted");
        }
    }
}
