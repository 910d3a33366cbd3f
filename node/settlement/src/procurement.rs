//! Purchase orders: what a payer's accounts-payable team agreed to pay, line by line, so that
//! every settled period can be matched to a PO line. A stream maps to the line naming its id,
//! else to the line naming its payee; each line's consumption is what its streams paid in the
//! batches settled within the PO's validity, against its cap and tolerance.

use std::collections::BTreeMap;

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

use crate::scheduler::StoredBatch;

/// One line of a purchase order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoLine {
    /// The buyer's line id (`OrderLineReference/LineID`, cXML `lineNumber`).
    pub line_id: String,
    /// Streams paying this payee map to the line (unless a line names their id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payee: Option<Address>,
    /// These streams map to the line (decimal ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_ids: Option<Vec<String>>,
    /// What is bought.
    pub description: String,
    /// UN/ECE Rec 20 unit of the quantity billed (e.g. `SEC`, `HUR`, `MON`).
    pub unit_code: String,
    /// Agreed price per unit (decimal, currency units), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<String>,
    /// Agreed quantity, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    /// The most the line may consume (token base units, decimal), if capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cap: Option<String>,
}

/// A purchase order (`billing_setPurchaseOrder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseOrder {
    /// Who pays.
    pub payer: Address,
    /// The buyer's PO number (`OrderReference/ID`, cXML `orderID`).
    pub po_number: String,
    /// ISO 4217 code; must be the currency of the payer's tokens.
    pub currency: String,
    /// The lines.
    pub lines: Vec<PoLine>,
    /// How far over a line's cap consumption may go before it is flagged (percent).
    pub tolerance_percent: u32,
    /// First second the PO covers.
    pub valid_from: u64,
    /// Last second it covers.
    pub valid_to: u64,
    /// The buyer's reference (`BuyerReference`, required by Peppol).
    pub buyer_reference: String,
    /// UNCL5305 tax category (e.g. `S`, `Z`, `E`, `AE`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_category: Option<String>,
    /// Tax rate in percent (decimal, at most 2 decimals), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_percent: Option<String>,
    /// The buyer as invoice documents name it (UBL and cXML need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyer: Option<crate::Party>,
}

/// Why a purchase order is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoError {
    /// A field is missing, malformed or out of range.
    #[error("purchase order: {0}")]
    Invalid(String),
    /// Its validity overlaps another PO of the payer.
    #[error("purchase order {po} overlaps PO {other} of the same payer ({from}..={to})")]
    Overlaps {
        /// This PO.
        po: String,
        /// The stored one.
        other: String,
        /// The stored one's validity.
        from: u64,
        /// See `from`.
        to: u64,
    },
}

fn invalid(message: impl Into<String>) -> PoError {
    PoError::Invalid(message.into())
}

/// A non-negative decimal with at most `places` decimals, as (integer part, fraction digits).
fn decimal(name: &str, text: &str, places: usize) -> Result<(), PoError> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let ok = !whole.is_empty() && digits(whole) && digits(fraction) && fraction.len() <= places;
    let ok = ok && (!text.contains('.') || !fraction.is_empty());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{name} {text:?} is not a decimal with at most {places} decimals")))
    }
}

impl PurchaseOrder {
    /// The PO's own rules: a number, lines with unique ids each mapping by exactly one of payee
    /// or stream ids, a validity window, tolerance and tax within range, decimal amounts.
    pub fn check(&self) -> Result<(), PoError> {
        if self.po_number.trim().is_empty() || self.buyer_reference.trim().is_empty() {
            return Err(invalid("poNumber and buyerReference are required"));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(format!("currency {:?} is not an ISO 4217 code", self.currency)));
        }
        if self.valid_to <= self.valid_from {
            return Err(invalid("validTo must be after validFrom"));
        }
        if self.tolerance_percent > 100 {
            return Err(invalid("tolerancePercent is at most 100"));
        }
        if let Some(tax) = &self.tax_percent {
            decimal("taxPercent", tax, 2)?;
            if tax.split('.').next().and_then(|w| w.parse::<u32>().ok()).is_none_or(|w| w > 100) {
                return Err(invalid("taxPercent is at most 100"));
            }
        }
        if let Some(buyer) = &self.buyer {
            buyer.check("buyer").map_err(PoError::Invalid)?;
        }
        if self.lines.is_empty() {
            return Err(invalid("a PO needs at least one line"));
        }
        let mut ids = std::collections::HashSet::new();
        for line in &self.lines {
            self.check_line(line)?;
            if !ids.insert(line.line_id.as_str()) {
                return Err(invalid(format!("line {:?} appears twice", line.line_id)));
            }
        }
        Ok(())
    }

    fn check_line(&self, line: &PoLine) -> Result<(), PoError> {
        let id = &line.line_id;
        if id.trim().is_empty() || line.unit_code.trim().is_empty() || line.description.is_empty() {
            return Err(invalid("each line needs lineId, description and unitCode"));
        }
        if crate::unit_seconds(&line.unit_code).is_none() {
            return Err(invalid(format!(
                "line {id}: unitCode {:?} is not a time unit (SEC, MIN, HUR, DAY)",
                line.unit_code
            )));
        }
        match (&line.payee, &line.stream_ids) {
            (Some(_), None) => {}
            (None, Some(ids)) if !ids.is_empty() => {
                for stream in ids {
                    decimal(&format!("line {id}: stream id"), stream, 0)?;
                }
            }
            _ => return Err(invalid(format!("line {id}: give either payee or streamIds"))),
        }
        for (name, value, places) in [
            ("unitPrice", &line.unit_price, 18),
            ("quantity", &line.quantity, 18),
            ("amountCap", &line.amount_cap, 0),
        ] {
            if let Some(value) = value {
                decimal(&format!("line {id}: {name}"), value, places)?;
            }
        }
        Ok(())
    }

    /// Whether this PO's validity overlaps `other`'s (both inclusive).
    pub fn overlaps(&self, other: &Self) -> bool {
        self.valid_from <= other.valid_to && other.valid_from <= self.valid_to
    }

    /// The line stream `id` paying `payee` maps to: the one naming its id, else its payee.
    pub fn line_of(&self, id: u64, payee: Address) -> Option<&PoLine> {
        let named = |l: &&PoLine| {
            l.stream_ids.as_ref().is_some_and(|ids| ids.iter().any(|s| s.parse() == Ok(id)))
        };
        self.lines.iter().find(named).or_else(|| self.lines.iter().find(|l| l.payee == Some(payee)))
    }
}

/// How much of a line's cap its streams consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineConsumption {
    /// The line.
    pub line_id: String,
    /// What its streams paid in batches settled within the PO's validity (base units).
    pub consumed: String,
    /// Seconds billed.
    pub seconds_billed: u64,
    /// `ok`, `80%` (at least 80% of the cap), `100%` (the cap reached, within tolerance) or
    /// `over` (past the cap plus tolerance); `ok` for an uncapped line.
    pub state: String,
}

/// Each line's consumption over `batches` (records of `po.payer` settled with a period end in
/// the PO's validity).
pub fn consumption(po: &PurchaseOrder, batches: &[StoredBatch]) -> Vec<LineConsumption> {
    let mut totals: BTreeMap<&str, (u128, u64)> = BTreeMap::new();
    for batch in batches {
        let end = batch.context.period_end;
        if end < po.valid_from || end > po.valid_to {
            continue;
        }
        for record in batch.records.iter().filter(|r| r.payer == po.payer) {
            if let Some(line) = po.line_of(record.stream_id, record.payee) {
                let total = totals.entry(line.line_id.as_str()).or_default();
                total.0 += record.amount;
                total.1 += record.seconds_billed;
            }
        }
    }
    po.lines
        .iter()
        .map(|line| {
            let (consumed, seconds) =
                totals.get(line.line_id.as_str()).copied().unwrap_or_default();
            let cap = line.amount_cap.as_deref().and_then(|c| c.parse::<u128>().ok());
            LineConsumption {
                line_id: line.line_id.clone(),
                consumed: consumed.to_string(),
                seconds_billed: seconds,
                state: state(consumed, cap, po.tolerance_percent).into(),
            }
        })
        .collect()
}

/// A line's state for `consumed` against `cap` with `tolerance` percent (integer math: a line
/// is over only when consumed × 100 > cap × (100 + tolerance)).
pub(crate) fn state(consumed: u128, cap: Option<u128>, tolerance: u32) -> &'static str {
    let Some(cap) = cap else { return "ok" };
    let (consumed, cap) =
        (alloy::primitives::U256::from(consumed), alloy::primitives::U256::from(cap));
    let hundred = alloy::primitives::U256::from(100u8);
    if consumed * hundred > cap * alloy::primitives::U256::from(100 + tolerance) {
        "over"
    } else if consumed >= cap {
        "100%"
    } else if consumed * hundred >= cap * alloy::primitives::U256::from(80u8) {
        "80%"
    } else {
        "ok"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn po() -> PurchaseOrder {
        PurchaseOrder {
            payer: Address::repeat_byte(1),
            po_number: "PO-1".into(),
            currency: "USD".into(),
            lines: vec![
                PoLine {
                    line_id: "1".into(),
                    payee: None,
                    stream_ids: Some(vec!["7".into()]),
                    description: "compute".into(),
                    unit_code: "SEC".into(),
                    unit_price: Some("0.01".into()),
                    quantity: None,
                    amount_cap: Some("1000000".into()),
                },
                PoLine {
                    line_id: "2".into(),
                    payee: Some(Address::repeat_byte(2)),
                    stream_ids: None,
                    description: "storage".into(),
                    unit_code: "HUR".into(),
                    unit_price: None,
                    quantity: None,
                    amount_cap: None,
                },
            ],
            tolerance_percent: 5,
            valid_from: 100,
            valid_to: 200,
            buyer_reference: "AP-42".into(),
            tax_category: Some("S".into()),
            tax_percent: Some("19".into()),
            buyer: None,
        }
    }

    #[test]
    fn a_well_formed_po_passes_and_bad_ones_say_why() {
        assert_eq!(po().check(), Ok(()));
        let mut bad = po();
        bad.currency = "usd".into();
        assert!(bad.check().is_err());
        let mut bad = po();
        bad.valid_to = 100;
        assert!(bad.check().is_err());
        let mut bad = po();
        bad.lines[1].stream_ids = Some(vec!["3".into()]);
        assert!(matches!(bad.check(), Err(PoError::Invalid(m)) if m.contains("either payee")));
        let mut bad = po();
        bad.lines[1].line_id = "1".into();
        assert!(bad.check().is_err(), "duplicate line ids");
        let mut bad = po();
        bad.tax_percent = Some("19.123".into());
        assert!(bad.check().is_err());
        let mut bad = po();
        bad.lines[0].amount_cap = Some("1.5".into());
        assert!(bad.check().is_err(), "caps are base units");
    }

    #[test]
    fn streams_map_by_id_before_payee() {
        let po = po();
        assert_eq!(po.line_of(7, Address::repeat_byte(2)).map(|l| l.line_id.as_str()), Some("1"));
        assert_eq!(po.line_of(8, Address::repeat_byte(2)).map(|l| l.line_id.as_str()), Some("2"));
        assert_eq!(po.line_of(8, Address::repeat_byte(3)), None);
        let mut later = po.clone();
        later.valid_from = 201;
        later.valid_to = 300;
        assert!(!po.overlaps(&later));
        later.valid_from = 200;
        assert!(po.overlaps(&later), "inclusive bounds");
    }

    #[test]
    fn line_states_follow_the_cap_and_tolerance() {
        assert_eq!(state(10, None, 0), "ok");
        assert_eq!(state(799, Some(1_000), 5), "ok");
        assert_eq!(state(800, Some(1_000), 5), "80%");
        assert_eq!(state(1_000, Some(1_000), 5), "100%");
        assert_eq!(state(1_050, Some(1_000), 5), "100%", "within tolerance");
        assert_eq!(state(1_051, Some(1_000), 5), "over");
        assert_eq!(state(u128::MAX, Some(u128::MAX - 1), 0), "over");
    }
}
