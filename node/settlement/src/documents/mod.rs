//! Invoice documents for accounts payable: a payer's settled period rolled up per purchase-order
//! line ([`PeriodInvoice`]) and written as a UBL 2.1 invoice conforming to Peppol BIS Billing 3.0
//! ([`ubl`]) or a cXML `InvoiceDetailRequest` ([`cxml`]), with quick-xml. Amounts are exact
//! ([`money`]): the roll-up and cXML to the token's base unit, UBL to the cent as Peppol
//! requires, its rounding documented there.

mod cxml;
pub mod money;
mod rollup;
mod ubl;
mod xml;

#[cfg(test)]
mod tests;

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

pub use cxml::render_cxml;
pub use rollup::{PeriodInvoice, PeriodLine, RollUp};
pub use ubl::render_ubl;

/// A token's ISO 4217 currency and its decimals (`--billing.token-currency 0xTOKEN=USD:6`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCurrency {
    /// ISO 4217 code.
    pub code: String,
    /// The token's decimals.
    pub decimals: u8,
}

/// A party on an invoice document: the seller (`--billing.seller-*`) or the buyer (the PO's
/// `buyer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Party {
    /// Legal name.
    pub name: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Peppol electronic address scheme (EAS, e.g. `0088` GLN, `0192`, `9930`).
    pub endpoint_scheme: String,
    /// Peppol electronic address (also the cXML network identity).
    pub endpoint_id: String,
    /// VAT identifier with its country prefix, if registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vat_id: Option<String>,
}

impl Party {
    /// Its own rules (`who` names it in the message).
    pub fn check(&self, who: &str) -> Result<(), String> {
        if self.name.trim().is_empty() || self.endpoint_id.trim().is_empty() {
            return Err(format!("{who}: name and endpointId are required"));
        }
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{who}: country {:?} is not an ISO 3166-1 alpha-2 code",
                self.country
            ));
        }
        let scheme = &self.endpoint_scheme;
        if scheme.is_empty()
            || scheme.len() > 4
            || !scheme.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(format!("{who}: endpointScheme {scheme:?} is not a Peppol EAS code"));
        }
        Ok(())
    }
}

/// The document formats of `billing_invoice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentFormat {
    /// The lines per stream per batch, as JSON (with the CSV inside).
    #[default]
    Json,
    /// The same as CSV.
    Csv,
    /// UBL 2.1, Peppol BIS Billing 3.0.
    Ubl,
    /// cXML `InvoiceDetailRequest`.
    Cxml,
}

/// Why an invoice document cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Nothing settled.
    #[error("no settled batch paid a stream of {payer} with a period ending in ({from}, {to}]")]
    NoSettlement {
        /// The payer.
        payer: Address,
        /// The window.
        from: u64,
        /// See `from`.
        to: u64,
    },
    /// A batch in the window is not committed yet.
    #[error("batch {batch} is still settling: ask again once it is committed")]
    Settling {
        /// The batch.
        batch: u64,
    },
    /// A batch outside every PO.
    #[error("batch {batch} (period end {end}) is outside every purchase order of {payer}")]
    NoPurchaseOrder {
        /// The payer.
        payer: Address,
        /// The batch.
        batch: u64,
        /// Its period end.
        end: u64,
    },
    /// The window covers two POs.
    #[error("the period spans purchase orders {first} and {second}: ask for one invoice per PO")]
    SpansOrders {
        /// One PO.
        first: String,
        /// Another.
        second: String,
    },
    /// A stream no PO line maps.
    #[error(
        "stream {stream} maps to no line of purchase order {po} (name it in streamIds or its payee)"
    )]
    Unmapped {
        /// The stream.
        stream: u64,
        /// The PO.
        po: String,
    },
    /// Two tokens in one document.
    #[error("the period was paid in two tokens ({first}, {second}): one invoice per token")]
    MixedTokens {
        /// One token.
        first: Address,
        /// Another.
        second: Address,
    },
    /// A token without a configured currency.
    #[error("token {token} has no currency (--billing.token-currency 0xTOKEN=CODE:DECIMALS)")]
    NoCurrency {
        /// The token.
        token: Address,
    },
    /// The token's currency is not the PO's.
    #[error("token {token} is {token_currency}, the purchase order is in {po}")]
    Currency {
        /// The token.
        token: Address,
        /// Its currency.
        token_currency: String,
        /// The PO's.
        po: String,
    },
    /// A party or field the format needs is missing or does not fit.
    #[error("{0}")]
    Incomplete(String),
    /// The XML writer failed.
    #[error("writing the document: {0}")]
    Xml(String),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(String),
}

impl DocumentError {
    /// Whether the node failed (else the request or its data cannot make a document).
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Xml(_) | Self::Storage(_))
    }
}

/// Seconds in one unit of a UN/ECE Rec 20 time unit code the documents bill in.
pub fn unit_seconds(code: &str) -> Option<u64> {
    match code {
        "SEC" => Some(1),
        "MIN" => Some(60),
        "HUR" => Some(3_600),
        "DAY" => Some(86_400),
        _ => None,
    }
}

/// A chain timestamp as an ISO 8601 calendar date (UTC).
pub(crate) fn date(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "9999-12-31".into())
}

/// A chain timestamp as an ISO 8601 date-time with offset (cXML).
pub(crate) fn date_time(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        .unwrap_or_else(|| "9999-12-31T23:59:59+00:00".into())
}
