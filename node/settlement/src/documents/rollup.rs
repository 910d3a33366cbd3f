//! The period roll-up: a payer's settled records in `(from, to]`, one line per purchase-order
//! line, exact to the base unit. Pure over the stored batches and POs, so the property tests
//! drive it directly.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, B256};
use serde::Serialize;

use super::{DocumentError, TokenCurrency};
use crate::procurement::{PoLine, PurchaseOrder, consumption};
use crate::scheduler::{BatchStage, StoredBatch};

/// One purchase-order line's share of a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodLine {
    /// The PO line.
    pub po_line: PoLine,
    /// Its streams that paid in the period.
    pub stream_ids: Vec<u64>,
    /// Seconds billed.
    pub seconds_billed: u64,
    /// Base units paid in the period.
    #[serde(with = "crate::record::decimal_amount")]
    pub amount: u128,
    /// The billing backend's usage digests (none reported: empty).
    pub usage_digests: Vec<B256>,
    /// First second of its records' periods.
    pub period_start: u64,
    /// Last second.
    pub period_end: u64,
    /// Consumed from the PO's start through the period's end (base units).
    #[serde(with = "crate::record::decimal_amount")]
    pub consumed: u128,
    /// `ok`, `80%`, `100%` or `over` for `consumed` against the line's cap and tolerance.
    pub state: String,
}

/// What one invoice document covers: a payer, a period, one PO, its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodInvoice {
    /// Deterministic: the same request gives the same number.
    pub invoice_id: String,
    /// Who pays.
    pub payer: Address,
    /// The PO the period falls in.
    pub purchase_order: PurchaseOrder,
    /// The token the lines were paid in, its currency and decimals.
    pub token: Address,
    /// See `token`.
    pub currency: TokenCurrency,
    /// First second of the settled periods.
    pub period_start: u64,
    /// Last second.
    pub period_end: u64,
    /// By PO line order; lines without payments in the period are left out.
    pub lines: Vec<PeriodLine>,
    /// The batches.
    pub batch_ids: Vec<u64>,
    /// Their commit transactions.
    pub transactions: Vec<B256>,
}

impl PeriodInvoice {
    /// What the period paid, base units (the sum of its lines).
    pub fn total(&self) -> u128 {
        self.lines.iter().map(|l| l.amount).sum()
    }

    /// The lines past their cap plus tolerance.
    pub fn over(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.state == "over")
            .map(|l| l.po_line.line_id.as_str())
            .collect()
    }
}

/// The inputs of a roll-up.
pub struct RollUp<'a> {
    /// Who pays.
    pub payer: Address,
    /// Batches whose period ends in `(from, to]`.
    pub from: u64,
    /// See `from`.
    pub to: u64,
    /// Every stored batch.
    pub batches: &'a [StoredBatch],
    /// The payer's purchase orders.
    pub orders: &'a [PurchaseOrder],
    /// Each token's currency.
    pub currencies: &'a BTreeMap<Address, TokenCurrency>,
}

impl RollUp<'_> {
    /// The period's invoice with the records `visible` keeps (the caller's payees).
    pub fn build(
        &self,
        visible: impl Fn(&Address) -> bool,
    ) -> Result<PeriodInvoice, DocumentError> {
        let batches: Vec<&StoredBatch> = self
            .batches
            .iter()
            .filter(|b| b.context.period_end > self.from && b.context.period_end <= self.to)
            .filter(|b| b.records.iter().any(|r| r.payer == self.payer && visible(&r.payee)))
            .collect();
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Err(DocumentError::NoSettlement {
                payer: self.payer,
                from: self.from,
                to: self.to,
            });
        };
        if let Some(batch) =
            batches.iter().find(|b| !matches!(b.stage, BatchStage::Committed { .. }))
        {
            return Err(DocumentError::Settling { batch: batch.context.batch_id });
        }
        let po = self.order_of(&batches)?;
        let Gathered { lines, tokens, transactions } = self.lines_of(po, &batches, &visible)?;
        let (token, currency) = self.currency_of(po, &tokens)?;
        // Consumption runs from the PO's start through this period's end.
        let through: Vec<StoredBatch> =
            self.batches.iter().filter(|b| b.context.period_end <= self.to).cloned().collect();
        let states = consumption(po, &through);
        let mut lines: Vec<PeriodLine> = lines.into_values().collect();
        for line in &mut lines {
            if let Some(state) = states.iter().find(|s| s.line_id == line.po_line.line_id) {
                line.consumed = state.consumed.parse().unwrap_or_default();
                line.state = state.state.clone();
            }
        }
        Ok(PeriodInvoice {
            invoice_id: format!(
                "{}-{}-{}",
                po.po_number, first.context.period_start, last.context.period_end
            ),
            payer: self.payer,
            purchase_order: po.clone(),
            token,
            currency,
            period_start: first.context.period_start,
            period_end: last.context.period_end,
            lines,
            batch_ids: batches.iter().map(|b| b.context.batch_id).collect(),
            transactions,
        })
    }

    /// The period's records summed per PO line, the tokens they were paid in, the commits.
    fn lines_of(
        &self,
        po: &PurchaseOrder,
        batches: &[&StoredBatch],
        visible: &impl Fn(&Address) -> bool,
    ) -> Result<Gathered, DocumentError> {
        let mut lines: BTreeMap<usize, PeriodLine> = BTreeMap::new();
        let mut tokens = BTreeSet::new();
        let mut transactions = Vec::new();
        for batch in batches {
            transactions.extend(batch.stage.transaction());
            for record in
                batch.records.iter().filter(|r| r.payer == self.payer && visible(&r.payee))
            {
                let Some(index) = line_index(po, record.stream_id, record.payee) else {
                    return Err(DocumentError::Unmapped {
                        stream: record.stream_id,
                        po: po.po_number.clone(),
                    });
                };
                tokens.insert(record.token);
                let line =
                    lines.entry(index).or_insert_with(|| empty_line(&po.lines[index], batch));
                line.seconds_billed += record.seconds_billed;
                line.amount += record.amount;
                line.period_end = batch.context.period_end;
                if !line.stream_ids.contains(&record.stream_id) {
                    line.stream_ids.push(record.stream_id);
                }
                if !record.usage_digest.is_zero() {
                    line.usage_digests.push(record.usage_digest);
                }
            }
        }
        Ok(Gathered { lines, tokens, transactions })
    }

    /// The one PO every batch's period end falls in.
    fn order_of(&self, batches: &[&StoredBatch]) -> Result<&PurchaseOrder, DocumentError> {
        let mut found: Option<&PurchaseOrder> = None;
        for batch in batches {
            let end = batch.context.period_end;
            let po =
                self.orders.iter().find(|po| po.valid_from <= end && end <= po.valid_to).ok_or(
                    DocumentError::NoPurchaseOrder {
                        payer: self.payer,
                        batch: batch.context.batch_id,
                        end,
                    },
                )?;
            match found {
                Some(other) if other.po_number != po.po_number => {
                    return Err(DocumentError::SpansOrders {
                        first: other.po_number.clone(),
                        second: po.po_number.clone(),
                    });
                }
                _ => found = Some(po),
            }
        }
        found.ok_or(DocumentError::NoSettlement { payer: self.payer, from: self.from, to: self.to })
    }

    /// The period's one token and its currency, which must be the PO's.
    fn currency_of(
        &self,
        po: &PurchaseOrder,
        tokens: &BTreeSet<Address>,
    ) -> Result<(Address, TokenCurrency), DocumentError> {
        let mut tokens = tokens.iter();
        let token = *tokens.next().ok_or(DocumentError::NoSettlement {
            payer: self.payer,
            from: self.from,
            to: self.to,
        })?;
        if let Some(other) = tokens.next() {
            return Err(DocumentError::MixedTokens { first: token, second: *other });
        }
        let currency = self.currencies.get(&token).ok_or(DocumentError::NoCurrency { token })?;
        if currency.code != po.currency {
            return Err(DocumentError::Currency {
                token,
                token_currency: currency.code.clone(),
                po: po.currency.clone(),
            });
        }
        Ok((token, currency.clone()))
    }
}

/// What a period's records add up to per PO line (by index), the tokens, the commits.
struct Gathered {
    lines: BTreeMap<usize, PeriodLine>,
    tokens: BTreeSet<Address>,
    transactions: Vec<B256>,
}

fn line_index(po: &PurchaseOrder, stream: u64, payee: Address) -> Option<usize> {
    let line = po.line_of(stream, payee)?;
    po.lines.iter().position(|l| l.line_id == line.line_id)
}

fn empty_line(po_line: &PoLine, batch: &StoredBatch) -> PeriodLine {
    PeriodLine {
        po_line: po_line.clone(),
        stream_ids: Vec::new(),
        seconds_billed: 0,
        amount: 0,
        usage_digests: Vec::new(),
        period_start: batch.context.period_start,
        period_end: batch.context.period_end,
        consumed: 0,
        state: "ok".into(),
    }
}
