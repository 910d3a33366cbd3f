//! UBL 2.1 invoice conforming to Peppol BIS Billing 3.0 (EN 16931). Element order follows the
//! UBL 2.1 Invoice schema; amounts are in cents (BR-DEC), the exact base units in the notes.
//! The streams already paid on chain, so the whole amount is prepaid and nothing is due.

use super::money::{cents_text, quantity_micro, shares, split_tax, to_cents, unit_price, units};
use super::xml::Xml;
use super::{DocumentError, Party, PeriodInvoice, PeriodLine, date, unit_seconds};

const CUSTOMIZATION: &str =
    "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0";
const PROFILE: &str = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0";

/// The invoice's VAT: one category for every line (the PO's; `O`, not subject to VAT, when
/// it names none).
struct Vat {
    category: String,
    rate_bp: u32,
    percent: Option<String>,
    exemption: Option<&'static str>,
}

fn incomplete(message: String) -> DocumentError {
    DocumentError::Incomplete(message)
}

/// A percent with at most two decimals in basis points of a percent (`"19.5"` → 1950).
pub(crate) fn basis_points(percent: &str) -> Option<u32> {
    let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
    let whole: u32 = whole.parse().ok()?;
    let fraction: u32 = format!("{fraction:0<2}").get(..2)?.parse().ok()?;
    whole.checked_mul(100)?.checked_add(fraction)
}

fn vat_of(invoice: &PeriodInvoice, seller: &Party, buyer: &Party) -> Result<Vat, DocumentError> {
    let po = &invoice.purchase_order;
    let category = po.tax_category.clone().unwrap_or_else(|| "O".into());
    let rate_bp = po.tax_percent.as_deref().map(basis_points).unwrap_or(Some(0));
    let rate_bp = rate_bp
        .ok_or_else(|| incomplete(format!("taxPercent {:?} is not a percent", po.tax_percent)))?;
    let exemption = match category.as_str() {
        "S" if rate_bp > 0 => None,
        "Z" if rate_bp == 0 => None,
        "E" if rate_bp == 0 => Some("Exempt from VAT"),
        "AE" if rate_bp == 0 => Some("Reverse charge"),
        "O" if po.tax_percent.is_none() => Some("Not subject to VAT"),
        other => {
            return Err(incomplete(format!(
                "tax category {other:?} with taxPercent {:?}: UBL takes S (rate > 0), Z, E, AE (rate 0) or O (no rate)",
                po.tax_percent
            )));
        }
    };
    if category != "O" && seller.vat_id.is_none() {
        return Err(incomplete(format!(
            "tax category {category} needs the seller's VAT id (--billing.seller-vat-id)"
        )));
    }
    if category == "AE" && buyer.vat_id.is_none() {
        return Err(incomplete(
            "reverse charge (AE) needs the buyer's vatId on the purchase order".into(),
        ));
    }
    let percent = (category != "O").then(|| units(u128::from(rate_bp), 2));
    Ok(Vat { category, rate_bp, percent, exemption })
}

/// `invoice` as a UBL 2.1 / Peppol BIS Billing 3.0 invoice from `seller`.
pub fn render_ubl(invoice: &PeriodInvoice, seller: &Party) -> Result<String, DocumentError> {
    let po = &invoice.purchase_order;
    let buyer = po.buyer.as_ref().ok_or_else(|| {
        incomplete(format!(
            "UBL (Peppol) needs the buyer's party: set `buyer` on purchase order {}",
            po.po_number
        ))
    })?;
    let vat = vat_of(invoice, seller, buyer)?;
    let currency = invoice.currency.code.as_str();
    let gross = to_cents(invoice.total(), invoice.currency.decimals);
    let (net, tax, rounding) = split_tax(gross, vat.rate_bp);
    let nets = shares(net, &invoice.lines.iter().map(|l| l.amount).collect::<Vec<_>>());

    let mut xml = Xml::new(None)?;
    xml.open(
        "Invoice",
        &[
            ("xmlns", "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"),
            (
                "xmlns:cac",
                "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
            ),
            ("xmlns:cbc", "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"),
        ],
    )?;
    xml.leaf("cbc:CustomizationID", &[], CUSTOMIZATION)?;
    xml.leaf("cbc:ProfileID", &[], PROFILE)?;
    xml.leaf("cbc:ID", &[], &invoice.invoice_id)?;
    xml.leaf("cbc:IssueDate", &[], &date(invoice.period_end))?;
    xml.leaf("cbc:InvoiceTypeCode", &[], "380")?;
    xml.leaf("cbc:Note", &[], &document_note(invoice))?;
    xml.leaf("cbc:DocumentCurrencyCode", &[], currency)?;
    xml.leaf("cbc:BuyerReference", &[], &po.buyer_reference)?;
    period(&mut xml, invoice.period_start, invoice.period_end)?;
    xml.open("cac:OrderReference", &[])?;
    xml.leaf("cbc:ID", &[], &po.po_number)?;
    xml.close("cac:OrderReference")?;
    for transaction in &invoice.transactions {
        xml.open("cac:AdditionalDocumentReference", &[])?;
        xml.leaf("cbc:ID", &[], &transaction.to_string())?;
        xml.leaf("cbc:DocumentDescription", &[], "Settlement commit transaction (on-chain)")?;
        xml.close("cac:AdditionalDocumentReference")?;
    }
    party(&mut xml, "cac:AccountingSupplierParty", seller, &vat)?;
    party(&mut xml, "cac:AccountingCustomerParty", buyer, &vat)?;
    xml.open("cac:PaymentTerms", &[])?;
    xml.leaf(
        "cbc:Note",
        &[],
        "Paid on chain by per-second streams as it accrued: nothing is due.",
    )?;
    xml.close("cac:PaymentTerms")?;
    tax_total(&mut xml, &vat, net, tax, currency)?;
    monetary_total(&mut xml, net, tax, gross, rounding, currency)?;
    for (index, (line, net)) in invoice.lines.iter().zip(nets).enumerate() {
        invoice_line(&mut xml, invoice, index + 1, line, net, &vat)?;
    }
    xml.close("Invoice")?;
    xml.finish()
}

/// BR-CO-10..16: lines = net; net + tax (+ rounding) = what was paid, all of it prepaid.
fn monetary_total(
    xml: &mut Xml,
    net: u128,
    tax: u128,
    gross: u128,
    rounding: i128,
    currency: &str,
) -> Result<(), DocumentError> {
    xml.open("cac:LegalMonetaryTotal", &[])?;
    let (line_total, tax_inclusive) = (net as i128, net as i128 + tax as i128);
    for (name, cents) in [
        ("cbc:LineExtensionAmount", line_total),
        ("cbc:TaxExclusiveAmount", line_total),
        ("cbc:TaxInclusiveAmount", tax_inclusive),
        ("cbc:PrepaidAmount", gross as i128),
    ] {
        let (text, currency) = (cents_text(cents), currency);
        xml.leaf(name, &[("currencyID", currency)], &text)?;
    }
    if rounding != 0 {
        let (text, currency) = (cents_text(rounding), currency);
        xml.leaf("cbc:PayableRoundingAmount", &[("currencyID", currency)], &text)?;
    }
    xml.leaf("cbc:PayableAmount", &[("currencyID", currency)], "0.00")?;
    xml.close("cac:LegalMonetaryTotal")?;
    Ok(())
}

/// The one document note (Peppol allows one): what was settled, exactly, and any line over
/// its cap.
fn document_note(invoice: &PeriodInvoice) -> String {
    let currency = &invoice.currency;
    let mut note = format!(
        "Settled on chain in {} batch(es): payer {}, token {} ({}, {} decimals), paid exactly {} {} ({} base units); amounts below are rounded half up to the cent.",
        invoice.batch_ids.len(),
        invoice.payer,
        invoice.token,
        currency.code,
        currency.decimals,
        units(invoice.total(), currency.decimals),
        currency.code,
        invoice.total(),
    );
    let over = invoice.over();
    if !over.is_empty() {
        note.push_str(&format!(
            " OVER TOLERANCE: purchase order line(s) {} exceed their cap plus {}%.",
            over.join(", "),
            invoice.purchase_order.tolerance_percent
        ));
    }
    note
}

fn period(xml: &mut Xml, start: u64, end: u64) -> Result<(), DocumentError> {
    xml.open("cac:InvoicePeriod", &[])?;
    xml.leaf("cbc:StartDate", &[], &date(start))?;
    xml.leaf("cbc:EndDate", &[], &date(end))?;
    xml.close("cac:InvoicePeriod")
}

fn party(xml: &mut Xml, role: &str, party: &Party, vat: &Vat) -> Result<(), DocumentError> {
    xml.open(role, &[])?;
    xml.open("cac:Party", &[])?;
    xml.leaf(
        "cbc:EndpointID",
        &[("schemeID", party.endpoint_scheme.as_str())],
        &party.endpoint_id,
    )?;
    xml.open("cac:PartyIdentification", &[])?;
    xml.leaf("cbc:ID", &[], &party.endpoint_id)?;
    xml.close("cac:PartyIdentification")?;
    xml.open("cac:PostalAddress", &[])?;
    xml.open("cac:Country", &[])?;
    xml.leaf("cbc:IdentificationCode", &[], &party.country)?;
    xml.close("cac:Country")?;
    xml.close("cac:PostalAddress")?;
    // Not subject to VAT: no VAT identifiers at all (BR-O-02).
    if let (Some(vat_id), false) = (&party.vat_id, vat.category == "O") {
        xml.open("cac:PartyTaxScheme", &[])?;
        xml.leaf("cbc:CompanyID", &[], vat_id)?;
        scheme(xml)?;
        xml.close("cac:PartyTaxScheme")?;
    }
    xml.open("cac:PartyLegalEntity", &[])?;
    xml.leaf("cbc:RegistrationName", &[], &party.name)?;
    xml.close("cac:PartyLegalEntity")?;
    xml.close("cac:Party")?;
    xml.close(role)
}

fn scheme(xml: &mut Xml) -> Result<(), DocumentError> {
    xml.open("cac:TaxScheme", &[])?;
    xml.leaf("cbc:ID", &[], "VAT")?;
    xml.close("cac:TaxScheme")
}

fn category(xml: &mut Xml, name: &str, vat: &Vat, reason: bool) -> Result<(), DocumentError> {
    xml.open(name, &[])?;
    xml.leaf("cbc:ID", &[], &vat.category)?;
    if let Some(percent) = &vat.percent {
        xml.leaf("cbc:Percent", &[], percent)?;
    }
    if let (Some(exemption), true) = (vat.exemption, reason) {
        xml.leaf("cbc:TaxExemptionReason", &[], exemption)?;
    }
    scheme(xml)?;
    xml.close(name)
}

fn tax_total(
    xml: &mut Xml,
    vat: &Vat,
    net: u128,
    tax: u128,
    currency: &str,
) -> Result<(), DocumentError> {
    xml.open("cac:TaxTotal", &[])?;
    xml.leaf("cbc:TaxAmount", &[("currencyID", currency)], &cents_text(tax as i128))?;
    xml.open("cac:TaxSubtotal", &[])?;
    xml.leaf("cbc:TaxableAmount", &[("currencyID", currency)], &cents_text(net as i128))?;
    xml.leaf("cbc:TaxAmount", &[("currencyID", currency)], &cents_text(tax as i128))?;
    category(xml, "cac:TaxCategory", vat, true)?;
    xml.close("cac:TaxSubtotal")?;
    xml.close("cac:TaxTotal")
}

/// One line per PO line: quantity in the line's time unit, its net in cents, the exact base
/// units, streams, usage digests and the PO line's state in its note.
fn invoice_line(
    xml: &mut Xml,
    invoice: &PeriodInvoice,
    number: usize,
    line: &PeriodLine,
    net: u128,
    vat: &Vat,
) -> Result<(), DocumentError> {
    let currency = invoice.currency.code.as_str();
    let unit = line.po_line.unit_code.as_str();
    let per = unit_seconds(unit).ok_or_else(|| {
        incomplete(format!(
            "line {}: unit {unit:?} is not a time unit (SEC, MIN, HUR, DAY)",
            line.po_line.line_id
        ))
    })?;
    let quantity = quantity_micro(line.seconds_billed, per);
    xml.open("cac:InvoiceLine", &[])?;
    xml.leaf("cbc:ID", &[], &number.to_string())?;
    xml.leaf("cbc:Note", &[], &line_note(invoice, line))?;
    xml.leaf("cbc:InvoicedQuantity", &[("unitCode", unit)], &units(quantity, 6))?;
    xml.leaf("cbc:LineExtensionAmount", &[("currencyID", currency)], &cents_text(net as i128))?;
    period(xml, line.period_start, line.period_end)?;
    xml.open("cac:OrderLineReference", &[])?;
    xml.leaf("cbc:LineID", &[], &line.po_line.line_id)?;
    xml.close("cac:OrderLineReference")?;
    xml.open("cac:Item", &[])?;
    xml.leaf("cbc:Description", &[], &line.po_line.description)?;
    xml.leaf("cbc:Name", &[], &line.po_line.description)?;
    category(xml, "cac:ClassifiedTaxCategory", vat, false)?;
    xml.close("cac:Item")?;
    xml.open("cac:Price", &[])?;
    xml.leaf("cbc:PriceAmount", &[("currencyID", currency)], &unit_price(net, 2, quantity))?;
    xml.close("cac:Price")?;
    xml.close("cac:InvoiceLine")
}

fn line_note(invoice: &PeriodInvoice, line: &PeriodLine) -> String {
    let currency = &invoice.currency;
    let streams: Vec<String> = line.stream_ids.iter().map(u64::to_string).collect();
    let mut note = format!(
        "Streams {}; {} s billed; paid exactly {} {} ({} base units) including tax.",
        streams.join(", "),
        line.seconds_billed,
        units(line.amount, currency.decimals),
        currency.code,
        line.amount
    );
    if let Some(cap) = &line.po_line.amount_cap {
        note.push_str(&format!(
            " PO line consumed {} of cap {} base units (+{}%): {}.",
            line.consumed,
            cap,
            invoice.purchase_order.tolerance_percent,
            if line.state == "over" { "OVER TOLERANCE" } else { line.state.as_str() }
        ));
    }
    if !line.usage_digests.is_empty() {
        let digests: Vec<String> = line.usage_digests.iter().map(|d| d.to_string()).collect();
        note.push_str(&format!(" Usage digests: {}.", digests.join(", ")));
    }
    note
}
