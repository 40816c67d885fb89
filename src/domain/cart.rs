//! A cart's lines grouped by SKU, before anything is sent to a SKU: limits checked
//! (lines per cart, quantity per line, hold duration, SKU ids), lines naming the same SKU
//! kept together in line order (each SKU's `decide` sums them), SKUs in id order, which is
//! the order the holds are placed and the outcome lists them.

use std::collections::BTreeMap;

use super::ids::{LocationId, SkuId};
use super::limits::{MAX_HOLD_DURATION_MS, MAX_LINES_PER_RESERVATION, MAX_QTY};
use super::rejection::Rejection;
use super::sku::HoldLine;

/// One requested line: SKU, units, and optionally the location to take them from.
pub type CartLine<'a> = (&'a SkuId, u32, &'a Option<LocationId>);

/// Groups `lines` by SKU after checking the cart's limits and `ttl_ms`; `parts` reads a
/// line (the caller's line type, so nothing is copied first).
pub fn group_lines<L>(
    lines: &[L],
    ttl_ms: u64,
    parts: impl Fn(&L) -> CartLine<'_>,
) -> Result<Vec<(SkuId, Vec<HoldLine>)>, Rejection> {
    if lines.is_empty() || lines.len() > MAX_LINES_PER_RESERVATION {
        return Err(Rejection::invalid(format!(
            "a reservation has 1..={MAX_LINES_PER_RESERVATION} lines"
        )));
    }
    if ttl_ms == 0 || ttl_ms > MAX_HOLD_DURATION_MS {
        return Err(Rejection::invalid(format!(
            "ttl_ms must be 1..={MAX_HOLD_DURATION_MS}"
        )));
    }
    let hold_line = |i: usize, (sku, qty, location): &CartLine| {
        sku.check()?;
        if *qty == 0 || *qty > MAX_QTY {
            return Err(Rejection::invalid(format!(
                "line {i}: qty must be 1..={MAX_QTY}"
            )));
        }
        Ok(HoldLine {
            line: u16::try_from(i).unwrap_or(u16::MAX),
            qty: *qty,
            location: (*location).clone(),
        })
    };
    if let [only] = lines {
        // The common one-line cart: no map.
        let l = parts(only);
        return Ok(vec![(l.0.clone(), vec![hold_line(0, &l)?])]);
    }
    let mut groups: BTreeMap<SkuId, Vec<HoldLine>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let l = parts(l);
        let line = hold_line(i, &l)?;
        groups.entry(l.0.clone()).or_default().push(line);
    }
    Ok(groups.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RejectionCode;

    fn sku(s: &str) -> SkuId {
        SkuId::new(s).expect("valid")
    }

    /// Per SKU: (line number, units) of each of its lines.
    type Grouped = Vec<(String, Vec<(u16, u32)>)>;

    fn check(lines: &[(&str, u32)], ttl_ms: u64) -> Result<Grouped, RejectionCode> {
        let ids: Vec<SkuId> = lines.iter().map(|(s, _)| sku(s)).collect();
        let none = None;
        let cart: Vec<(&SkuId, u32)> = ids.iter().zip(lines).map(|(id, (_, q))| (id, *q)).collect();
        group_lines(&cart, ttl_ms, |(s, q)| (*s, *q, &none))
            .map(|g| {
                g.into_iter()
                    .map(|(s, l)| (s.to_string(), l.iter().map(|h| (h.line, h.qty)).collect()))
                    .collect()
            })
            .map_err(|r| r.code())
    }

    #[test]
    fn lines_are_grouped_by_sku_in_id_order_keeping_line_numbers() {
        assert_eq!(
            check(&[("B", 1), ("A", 2), ("B", 3)], 1_000),
            Ok(vec![
                ("A".into(), vec![(1, 2)]),
                ("B".into(), vec![(0, 1), (2, 3)])
            ])
        );
        assert_eq!(
            check(&[("A", 5)], 1_000),
            Ok(vec![("A".into(), vec![(0, 5)])])
        );
    }

    #[test]
    fn limits_are_refused_as_invalid_requests() {
        let invalid = Err(RejectionCode::InvalidRequest);
        assert_eq!(check(&[], 1_000), invalid);
        assert_eq!(check(&[("A", 1)], 0), invalid);
        assert_eq!(check(&[("A", 1)], MAX_HOLD_DURATION_MS + 1), invalid);
        assert_eq!(check(&[("A", 0)], 1_000), invalid);
        assert_eq!(check(&[("A", 1), ("B", MAX_QTY + 1)], 1_000), invalid);
        let too_many: Vec<(&str, u32)> =
            (0..=MAX_LINES_PER_RESERVATION).map(|_| ("A", 1)).collect();
        assert_eq!(check(&too_many, 1_000), invalid);
    }
}
