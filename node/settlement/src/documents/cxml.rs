//! cXML `InvoiceDetailRequest` (Coupa, SAP Ariba) for a period: one `InvoiceDetailOrder` naming
//! the PO, one `InvoiceDetailItem` per PO line. cXML money has no decimal limit, so every amount
//! is exact in the token's base units; the whole amount was paid on chain (deposit), nothing due.

use alloy::primitives::U256;

use super::money::{div_half_up, quantity_micro, shares, unit_price, units};
use super::xml::Xml;
use super::{DocumentError, Party, PeriodInvoice, PeriodLine, date_time, unit_seconds};

/// The cXML version written (and its DTD's system identifier).
pub(crate) const CXML_VERSION: &str = "1.2.069";
const LANG: (&str, &str) = ("xml:lang", "en-US");

fn incomplete(message: String) -> DocumentError {
    DocumentError::Incomplete(message)
}

/// (net, tax) of `gross` base units at `rate_bp` (basis points of a percent): net half up, tax
/// the rest, so they add up to what was paid to the base unit.
fn split_exact(gross: u128, rate_bp: u32) -> (u128, u128) {
    let scale = U256::from(10_000u32);
    let net: u128 =
        div_half_up(U256::from(gross) * scale, scale + U256::from(rate_bp)).saturating_to();
    (net, gross - net.min(gross))
}

/// `invoice` as a cXML `InvoiceDetailRequest` from `seller`.
pub fn render_cxml(invoice: &PeriodInvoice, seller: &Party) -> Result<String, DocumentError> {
    let po = &invoice.purchase_order;
    let buyer = po.buyer.as_ref().ok_or_else(|| {
        incomplete(format!(
            "cXML needs the buyer's party: set `buyer` on purchase order {}",
            po.po_number
        ))
    })?;
    let rate_bp = match po.tax_percent.as_deref() {
        Some(percent) => super::ubl::basis_points(percent)
            .ok_or_else(|| incomplete(format!("taxPercent {percent:?} is not a percent")))?,
        None => 0,
    };
    let total = invoice.total();
    let (net, tax) = split_exact(total, rate_bp);
    let subtotals = shares(net, &invoice.lines.iter().map(|l| l.amount).collect::<Vec<_>>());
    let doctype = format!(
        "cXML SYSTEM \"http://xml.cxml.org/schemas/cXML/{CXML_VERSION}/InvoiceDetail.dtd\""
    );
    let mut xml = Xml::new(Some(&doctype))?;
    let payload = format!("{}@settled", invoice.invoice_id);
    let timestamp = date_time(invoice.period_end);
    xml.open(
        "cXML",
        &[("payloadID", &payload), ("timestamp", &timestamp), ("version", CXML_VERSION), LANG],
    )?;
    header(&mut xml, seller, buyer)?;
    xml.open("Request", &[("deploymentMode", "production")])?;
    xml.open("InvoiceDetailRequest", &[])?;
    request_header(&mut xml, invoice, seller, buyer)?;
    xml.open("InvoiceDetailOrder", &[])?;
    xml.open("InvoiceDetailOrderInfo", &[])?;
    xml.open("OrderReference", &[("orderID", &po.po_number)])?;
    xml.empty("DocumentReference", &[("payloadID", &po.po_number)])?;
    xml.close("OrderReference")?;
    xml.close("InvoiceDetailOrderInfo")?;
    for (index, (line, subtotal)) in invoice.lines.iter().zip(subtotals).enumerate() {
        item(&mut xml, invoice, index + 1, line, subtotal)?;
    }
    xml.close("InvoiceDetailOrder")?;
    summary(&mut xml, invoice, net, tax, rate_bp)?;
    xml.close("InvoiceDetailRequest")?;
    xml.close("Request")?;
    xml.close("cXML")?;
    xml.finish()
}

fn credential(xml: &mut Xml, identity: &str) -> Result<(), DocumentError> {
    xml.open("Credential", &[("domain", "NetworkID")])?;
    xml.leaf("Identity", &[], identity)?;
    xml.close("Credential")
}

fn header(xml: &mut Xml, seller: &Party, buyer: &Party) -> Result<(), DocumentError> {
    xml.open("Header", &[])?;
    for (role, party) in [("From", seller), ("To", buyer)] {
        xml.open(role, &[])?;
        credential(xml, &party.endpoint_id)?;
        xml.close(role)?;
    }
    xml.open("Sender", &[])?;
    credential(xml, &seller.endpoint_id)?;
    xml.leaf("UserAgent", &[], concat!("settled ", env!("CARGO_PKG_VERSION")))?;
    xml.close("Sender")?;
    xml.close("Header")
}

fn request_header(
    xml: &mut Xml,
    invoice: &PeriodInvoice,
    seller: &Party,
    buyer: &Party,
) -> Result<(), DocumentError> {
    let date = date_time(invoice.period_end);
    xml.open(
        "InvoiceDetailRequestHeader",
        &[
            ("invoiceID", invoice.invoice_id.as_str()),
            ("purpose", "standard"),
            ("operation", "new"),
            ("invoiceDate", &date),
        ],
    )?;
    xml.empty("InvoiceDetailHeaderIndicator", &[])?;
    xml.empty("InvoiceDetailLineIndicator", &[])?;
    for (role, party) in [("remitTo", seller), ("billTo", buyer)] {
        xml.open("InvoicePartner", &[])?;
        xml.open("Contact", &[("role", role)])?;
        xml.leaf("Name", &[LANG], &party.name)?;
        xml.close("Contact")?;
        xml.close("InvoicePartner")?;
    }
    let (start, end) = (date_time(invoice.period_start), date_time(invoice.period_end));
    xml.empty("Period", &[("startDate", &start), ("endDate", &end)])?;
    let currency = &invoice.currency;
    let mut comment = format!(
        "Paid on chain by per-second streams: payer {}, token {} ({}, {} decimals), {} base units in batch(es) {}; settlement transactions {}.",
        invoice.payer,
        invoice.token,
        currency.code,
        currency.decimals,
        invoice.total(),
        invoice.batch_ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        invoice.transactions.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
    );
    let over = invoice.over();
    if !over.is_empty() {
        comment.push_str(&format!(" OVER TOLERANCE: PO line(s) {}.", over.join(", ")));
    }
    xml.leaf("Comments", &[LANG], &comment)?;
    xml.leaf("Extrinsic", &[("name", "buyerReference")], &invoice.purchase_order.buyer_reference)?;
    xml.close("InvoiceDetailRequestHeader")
}

fn money(
    xml: &mut Xml,
    name: &str,
    invoice: &PeriodInvoice,
    amount: &str,
) -> Result<(), DocumentError> {
    xml.open(name, &[])?;
    xml.leaf("Money", &[("currency", invoice.currency.code.as_str())], amount)?;
    xml.close(name)
}

fn item(
    xml: &mut Xml,
    invoice: &PeriodInvoice,
    number: usize,
    line: &PeriodLine,
    subtotal: u128,
) -> Result<(), DocumentError> {
    let po_line = &line.po_line;
    let line_number: u64 = po_line.line_id.parse().map_err(|_| {
        incomplete(format!("cXML needs numeric PO line ids: line {:?}", po_line.line_id))
    })?;
    let unit = po_line.unit_code.as_str();
    let per = unit_seconds(unit).ok_or_else(|| {
        incomplete(format!(
            "line {}: unit {unit:?} is not a time unit (SEC, MIN, HUR, DAY)",
            po_line.line_id
        ))
    })?;
    let quantity = quantity_micro(line.seconds_billed, per);
    let decimals = invoice.currency.decimals;
    let (number, quantity_text, reference) =
        (number.to_string(), units(quantity, 6), date_time(line.period_end));
    xml.open(
        "InvoiceDetailItem",
        &[
            ("invoiceLineNumber", number.as_str()),
            ("quantity", &quantity_text),
            ("referenceDate", &reference),
        ],
    )?;
    xml.leaf("UnitOfMeasure", &[], unit)?;
    money(xml, "UnitPrice", invoice, &unit_price(subtotal, decimals, quantity))?;
    xml.open("InvoiceDetailItemReference", &[("lineNumber", &line_number.to_string())])?;
    xml.leaf("Description", &[LANG], &po_line.description)?;
    xml.close("InvoiceDetailItemReference")?;
    money(xml, "SubtotalAmount", invoice, &units(subtotal, decimals))?;
    let streams: Vec<String> = line.stream_ids.iter().map(u64::to_string).collect();
    let digests: Vec<String> = line.usage_digests.iter().map(|d| d.to_string()).collect();
    let mut comment = format!(
        "Streams {} paid {} base units for {} s ({} to {}).",
        streams.join(", "),
        line.amount,
        line.seconds_billed,
        date_time(line.period_start),
        date_time(line.period_end)
    );
    if !digests.is_empty() {
        comment.push_str(&format!(" Usage digests: {}.", digests.join(", ")));
    }
    if line.state == "over" {
        comment.push_str(" OVER TOLERANCE of the PO line's cap.");
    }
    xml.leaf("Comments", &[LANG], &comment)?;
    xml.leaf("Extrinsic", &[("name", "poLineState")], &line.state)?;
    xml.leaf("Extrinsic", &[("name", "poLineConsumed")], &line.consumed.to_string())?;
    xml.close("InvoiceDetailItem")
}

fn summary(
    xml: &mut Xml,
    invoice: &PeriodInvoice,
    net: u128,
    tax: u128,
    rate_bp: u32,
) -> Result<(), DocumentError> {
    let decimals = invoice.currency.decimals;
    xml.open("InvoiceDetailSummary", &[])?;
    money(xml, "SubtotalAmount", invoice, &units(net, decimals))?;
    xml.open("Tax", &[])?;
    xml.leaf("Money", &[("currency", invoice.currency.code.as_str())], &units(tax, decimals))?;
    xml.leaf("Description", &[LANG], "VAT")?;
    let rate = units(u128::from(rate_bp), 2);
    xml.open("TaxDetail", &[("purpose", "tax"), ("category", "vat"), ("percentageRate", &rate)])?;
    money(xml, "TaxableAmount", invoice, &units(net, decimals))?;
    money(xml, "TaxAmount", invoice, &units(tax, decimals))?;
    xml.close("TaxDetail")?;
    xml.close("Tax")?;
    money(xml, "NetAmount", invoice, &units(invoice.total(), decimals))?;
    money(xml, "DepositAmount", invoice, &units(invoice.total(), decimals))?;
    money(xml, "DueAmount", invoice, "0")?;
    xml.close("InvoiceDetailSummary")
}
