//! Invoices: what a payer paid per stream and period, from the settled records.

use super::*;

/// One line of an invoice: what one stream paid in one settled batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceLine {
    /// The batch that settled it.
    pub batch_id: u64,
    /// The stream.
    pub stream_id: String,
    /// Who was paid.
    pub payee: Address,
    /// In what.
    pub token: Address,
    /// The settled period.
    pub period_start: u64,
    /// See `period_start`.
    pub period_end: u64,
    /// Seconds billed.
    pub seconds_billed: u64,
    /// Base units paid, decimal.
    pub amount: String,
    /// The billing backend's usage digest (zero: none).
    pub usage_digest: B256,
    /// The commit transaction.
    pub transaction_hash: Option<B256>,
    /// This line's share of what settling its batch cost (wei, all chains): the batch's costs
    /// × this amount / the batch's total, rounded down (by record count if nothing was paid).
    pub settlement_cost_wei: String,
}

/// A payer's invoice for the batches settled in a window: line items, totals per token, the
/// batches and their transactions, as JSON and CSV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    /// Who pays.
    pub payer: Address,
    /// Batches whose period ends in `(from, to]` are included.
    pub from: u64,
    /// See `from`.
    pub to: u64,
    /// One per stream per batch.
    pub lines: Vec<InvoiceLine>,
    /// Per token: seconds billed and amount paid (decimal base units).
    pub totals: Vec<InvoiceTotal>,
    /// The batches.
    pub batch_ids: Vec<u64>,
    /// Their commit transactions.
    pub transactions: Vec<B256>,
    /// The lines' shares of what settling cost, by kind (wei).
    pub settlement_costs: BatchCosts,
    /// The same, as CSV (a header, the lines, then one `total` line per token).
    pub csv: String,
}

/// An invoice's total in one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceTotal {
    /// The token.
    pub token: Address,
    /// Seconds billed.
    pub seconds_billed: u64,
    /// Base units paid, decimal.
    pub amount: String,
}

impl Settler {
    /// `payer`'s invoice for the batches settled in `(from, to]`, with the lines `visible` keeps
    /// (the caller's payees).
    pub async fn invoice(
        &self,
        payer: Address,
        from: u64,
        to: u64,
        visible: impl Fn(&Address) -> bool,
    ) -> Result<Invoice, SchedulerError> {
        let mut lines = Vec::new();
        let mut batch_ids = Vec::new();
        let mut transactions = Vec::new();
        let mut totals: std::collections::BTreeMap<Address, (u64, u128)> = Default::default();
        let mut settlement_costs = BatchCosts::default();
        for batch in self.store.batches().await? {
            let context = batch.context;
            if context.period_end <= from || context.period_end > to {
                continue;
            }
            let transaction = batch.stage.transaction();
            let mut any = false;
            for record in batch.records.iter().filter(|r| r.payer == payer && visible(&r.payee)) {
                any = true;
                let total = totals.entry(record.token).or_default();
                total.0 += record.seconds_billed;
                total.1 += record.amount;
                let share = match batch.total {
                    0 => batch.costs.share(1, batch.records.len() as u128),
                    total => batch.costs.share(record.amount, total),
                };
                settlement_costs = settlement_costs.plus(&share);
                lines.push(InvoiceLine {
                    batch_id: context.batch_id,
                    stream_id: record.stream_id.to_string(),
                    payee: record.payee,
                    token: record.token,
                    period_start: context.period_start,
                    period_end: context.period_end,
                    seconds_billed: record.seconds_billed,
                    amount: record.amount.to_string(),
                    usage_digest: record.usage_digest,
                    transaction_hash: transaction,
                    settlement_cost_wei: (share.l2_wei() + share.anchor_wei()).to_string(),
                });
            }
            if any {
                batch_ids.push(context.batch_id);
                transactions.extend(transaction);
            }
        }
        let totals: Vec<InvoiceTotal> = totals
            .into_iter()
            .map(|(token, (seconds_billed, amount))| InvoiceTotal {
                token,
                seconds_billed,
                amount: amount.to_string(),
            })
            .collect();
        let mut csv = String::from(
            "batch_id,stream_id,payee,token,period_start,period_end,seconds_billed,amount,usage_digest,transaction_hash,settlement_cost_wei\n",
        );
        for line in &lines {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                line.batch_id,
                line.stream_id,
                line.payee,
                line.token,
                line.period_start,
                line.period_end,
                line.seconds_billed,
                line.amount,
                line.usage_digest,
                line.transaction_hash.map(|h| h.to_string()).unwrap_or_default(),
                line.settlement_cost_wei,
            ));
        }
        for total in &totals {
            csv.push_str(&format!(
                "total,,,{},{from},{to},{},{},,,\n",
                total.token, total.seconds_billed, total.amount
            ));
        }
        Ok(Invoice {
            payer,
            from,
            to,
            lines,
            totals,
            batch_ids,
            transactions,
            settlement_costs,
            csv,
        })
    }
}
