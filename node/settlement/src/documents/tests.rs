//! Golden documents for a small fixed scenario, and properties over random stream histories:
//! the documents' totals are what was paid, to the base unit (cXML) or the rounded cent (UBL),
//! and a PO line over its tolerance is flagged.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use proptest::prelude::*;

use super::*;
use crate::fixtures::{JAN_1_2026, batch, payer, po, record, seller, usdc};
use crate::procurement::{PurchaseOrder, state};
use crate::scheduler::{BatchStage, StoredBatch};

fn currencies() -> BTreeMap<Address, TokenCurrency> {
    BTreeMap::from([(usdc(), TokenCurrency { code: "USD".into(), decimals: 6 })])
}

/// Two committed periods: compute (stream 1, 0.01 USDC/s) goes over its 5 USDC cap; storage
/// (stream 2, by payee) pays odd amounts; another payer's record stays out.
fn scenario() -> Vec<StoredBatch> {
    let (compute, storage) = (Address::repeat_byte(0x22), Address::repeat_byte(0x33));
    let mut second = record(2, payer(), storage, 300, 617_284);
    second.usage_digest = B256::repeat_byte(0xd1);
    vec![
        batch(
            1,
            JAN_1_2026,
            JAN_1_2026 + 599,
            vec![
                record(1, payer(), compute, 600, 6_000_000),
                record(2, payer(), storage, 600, 1_234_567),
                record(3, Address::repeat_byte(0x44), compute, 600, 9_999_999),
            ],
        ),
        batch(
            2,
            JAN_1_2026 + 600,
            JAN_1_2026 + 899,
            vec![record(1, payer(), compute, 300, 3_000_000), second],
        ),
    ]
}

fn roll_up(
    batches: &[StoredBatch],
    orders: &[PurchaseOrder],
) -> Result<PeriodInvoice, DocumentError> {
    let currencies = currencies();
    RollUp { payer: payer(), from: 0, to: u64::MAX, batches, orders, currencies: &currencies }
        .build(|_| true)
}

/// Each text of the elements named `name`, in order.
fn texts(document: &str, name: &str) -> Vec<String> {
    use quick_xml::{Reader, events::Event};
    let mut reader = Reader::from_str(document);
    let (mut inside, mut out) = (false, Vec::new());
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => inside = e.name().as_ref() == name.as_bytes(),
            Ok(Event::Text(t)) if inside => {
                out.push(String::from_utf8_lossy(t.as_ref()).into_owned())
            }
            Ok(Event::End(_)) => inside = false,
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

/// A decimal text in `decimals` base units (exact).
fn base_units(text: &str, decimals: u32) -> i128 {
    let negative = text.starts_with('-');
    let (whole, fraction) =
        text.trim_start_matches('-').split_once('.').unwrap_or((text.trim_start_matches('-'), ""));
    let fraction = format!("{fraction:0<width$}", width = decimals as usize);
    let value: i128 = format!("{whole}{fraction}").parse().unwrap_or(i128::MIN);
    if negative { -value } else { value }
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap_or(&path)).ok();
        std::fs::write(&path, actual).ok();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from the golden file (UPDATE_GOLDEN=1 rewrites it):\n{actual}",
        path.display()
    );
}

#[test]
fn the_fixed_scenario_matches_its_golden_documents() -> Result<(), DocumentError> {
    let invoice = roll_up(&scenario(), &[po(Some(5_000_000))])?;
    assert_eq!(invoice.total(), 6_000_000 + 1_234_567 + 3_000_000 + 617_284);
    assert_eq!(invoice.over(), vec!["10"]);
    golden("invoice.ubl.xml", &render_ubl(&invoice, &seller())?);
    golden("invoice.cxml.xml", &render_cxml(&invoice, &seller())?);
    Ok(())
}

#[test]
fn bad_periods_and_orders_say_why() {
    let orders = [po(None)];
    let currencies = currencies();
    let none = RollUp {
        payer: payer(),
        from: JAN_1_2026 + 5_000,
        to: u64::MAX,
        batches: &scenario(),
        orders: &orders,
        currencies: &currencies,
    }
    .build(|_| true);
    assert!(matches!(none, Err(DocumentError::NoSettlement { .. })), "{none:?}");
    let mut late = po(None);
    late.valid_from = JAN_1_2026 + 700;
    assert!(matches!(
        roll_up(&scenario(), &[late]),
        Err(DocumentError::NoPurchaseOrder { batch: 1, .. })
    ));
    let mut euro = po(None);
    euro.currency = "EUR".into();
    assert!(matches!(roll_up(&scenario(), &[euro]), Err(DocumentError::Currency { .. })));
    let mut narrow = po(None);
    narrow.lines.truncate(1);
    assert!(matches!(
        roll_up(&scenario(), &[narrow]),
        Err(DocumentError::Unmapped { stream: 2, .. })
    ));
    let mut pending = scenario();
    pending[1].stage = BatchStage::Built;
    assert!(matches!(roll_up(&pending, &orders), Err(DocumentError::Settling { batch: 2 })));
    let mut no_buyer = po(None);
    no_buyer.buyer = None;
    let invoice = roll_up(&scenario(), &[no_buyer]);
    assert!(
        matches!(invoice.and_then(|i| render_ubl(&i, &seller())), Err(DocumentError::Incomplete(m)) if m.contains("buyer"))
    );
    let mut unregistered = seller();
    unregistered.vat_id = None;
    let invoice = roll_up(&scenario(), &orders);
    assert!(
        matches!(invoice.and_then(|i| render_ubl(&i, &unregistered)), Err(DocumentError::Incomplete(m)) if m.contains("VAT id"))
    );
}

fn history() -> impl Strategy<Value = Vec<StoredBatch>> {
    let entry = (1u64..5, any::<bool>(), 0u64..1_000_000, 0u128..1_000_000_000_000);
    prop::collection::vec(prop::collection::vec(entry, 1..6), 1..5).prop_map(|batches| {
        batches
            .into_iter()
            .enumerate()
            .map(|(i, records)| {
                let start = JAN_1_2026 + i as u64 * 1_000;
                let records = records
                    .into_iter()
                    .map(|(stream, ours, seconds, amount)| {
                        let who = if ours { payer() } else { Address::repeat_byte(0x44) };
                        let payee = if stream == 1 {
                            Address::repeat_byte(0x22)
                        } else {
                            Address::repeat_byte(0x33)
                        };
                        record(stream, who, payee, seconds, amount)
                    })
                    .collect();
                batch(i as u64 + 1, start, start + 999, records)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn documents_total_what_was_paid(batches in history(), cap in 1u128..3_000_000_000_000, rate in prop::sample::select(vec![None, Some("19"), Some("7.5"), Some("25")])) {
        let paid: u128 = batches.iter().flat_map(|b| &b.records).filter(|r| r.payer == payer()).map(|r| r.amount).sum();
        let compute: u128 = batches.iter().flat_map(|b| &b.records).filter(|r| r.payer == payer() && r.stream_id == 1).map(|r| r.amount).sum();
        let mut order = po(Some(cap));
        order.tax_category = Some(if rate.is_some() { "S" } else { "Z" }.into());
        order.tax_percent = Some(rate.unwrap_or("0").into());
        let invoice = match roll_up(&batches, &[order]) {
            Err(DocumentError::NoSettlement { .. }) => { prop_assert_eq!(paid, 0); return Ok(()); }
            other => other.map_err(|e| TestCaseError::fail(e.to_string()))?,
        };
        prop_assert_eq!(invoice.total(), paid);
        let over = state(compute, Some(cap), 5) == "over";
        prop_assert_eq!(invoice.over() == vec!["10"], over);

        let cxml = render_cxml(&invoice, &seller()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let money: Vec<i128> = texts(&cxml, "Money").iter().map(|t| base_units(t, 6)).collect();
        let lines = invoice.lines.len();
        // Unit price and subtotal per line, then subtotal, tax, taxable, tax, net, deposit, due.
        let subtotals: i128 = (0..lines).map(|i| money[2 * i + 1]).sum();
        let (subtotal, tax, net) = (money[2 * lines], money[2 * lines + 1], money[2 * lines + 4]);
        prop_assert_eq!(subtotals, subtotal);
        prop_assert_eq!(subtotal + tax, paid as i128, "cXML: exact to the base unit");
        prop_assert_eq!(net, paid as i128);
        prop_assert_eq!(cxml.contains("OVER TOLERANCE"), over);

        let ubl = render_ubl(&invoice, &seller()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let cents = |name: &str| texts(&ubl, name).iter().map(|t| base_units(t, 2)).collect::<Vec<_>>();
        let lines_net: i128 = cents("cbc:LineExtensionAmount").iter().skip(1).sum();
        let total_net = cents("cbc:LineExtensionAmount")[0];
        let (tax, prepaid) = (cents("cbc:TaxAmount")[0], cents("cbc:PrepaidAmount")[0]);
        let rounding = cents("cbc:PayableRoundingAmount").first().copied().unwrap_or(0);
        prop_assert_eq!(lines_net, total_net, "BR-CO-10");
        prop_assert_eq!(prepaid, money::to_cents(paid, 6) as i128, "UBL: the paid amount to the cent");
        prop_assert_eq!(total_net + tax + rounding, prepaid);
        prop_assert_eq!(cents("cbc:PayableAmount"), vec![0]);
        prop_assert_eq!(ubl.contains("OVER TOLERANCE"), over);
    }
}
