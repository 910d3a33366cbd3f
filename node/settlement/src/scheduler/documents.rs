//! Invoice documents from the stored batches and purchase orders.

use super::*;
use crate::{DocumentError, DocumentFormat, PeriodInvoice, RollUp, render_cxml, render_ubl};

/// A rendered invoice document and what it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceDocument {
    /// `ubl` or `cxml`.
    pub format: DocumentFormat,
    /// Its media type.
    pub content_type: &'static str,
    /// The XML.
    pub document: String,
    /// What it covers, exact to the base unit.
    pub invoice: PeriodInvoice,
    /// What was paid in the period (base units, decimal).
    pub total: String,
    /// The PO lines past their cap plus tolerance.
    pub over_tolerance: Vec<String>,
}

impl Settler {
    /// `payer`'s period `(from, to]` rolled up per line of the PO it falls in, over the records
    /// `visible` keeps.
    pub async fn period_invoice(
        &self,
        payer: Address,
        from: u64,
        to: u64,
        visible: impl Fn(&Address) -> bool,
    ) -> Result<PeriodInvoice, DocumentError> {
        let stored = |e: SchedulerError| DocumentError::Storage(e.to_string());
        let batches = self.store.batches().await.map_err(stored)?;
        let orders = self.purchase_orders(payer).await.map_err(stored)?;
        RollUp { payer, from, to, batches: &batches, orders: &orders, currencies: &self.currencies }
            .build(visible)
    }

    /// The period's UBL or cXML document.
    pub async fn invoice_document(
        &self,
        format: DocumentFormat,
        payer: Address,
        from: u64,
        to: u64,
        visible: impl Fn(&Address) -> bool,
    ) -> Result<InvoiceDocument, DocumentError> {
        let seller = self.seller.as_ref().ok_or_else(|| {
            DocumentError::Incomplete(
                "invoice documents need the seller: --billing.seller-name, -country, -endpoint"
                    .into(),
            )
        })?;
        let invoice = self.period_invoice(payer, from, to, visible).await?;
        let (document, content_type) = match format {
            DocumentFormat::Ubl => (render_ubl(&invoice, seller)?, "application/xml"),
            DocumentFormat::Cxml => (render_cxml(&invoice, seller)?, "text/xml"),
            other => {
                return Err(DocumentError::Incomplete(format!("{other:?} is not an XML document")));
            }
        };
        Ok(InvoiceDocument {
            format,
            content_type,
            document,
            total: invoice.total().to_string(),
            over_tolerance: invoice.over().into_iter().map(String::from).collect(),
            invoice,
        })
    }
}
