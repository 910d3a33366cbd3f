//! What the page shows a payer: its streams (with the raw accrual state the browser ticks the
//! balance from, exactly as the node computes it), and its bill period by period.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use settled_settlement::Settler;
use settled_streams::{ApiKey, StreamIndex, StreamSelector, StreamState, StreamView};

use crate::link::{LinkClaims, key_tag};

/// Streams per page (a payer with more sees the first ones).
const MAX_STREAMS: usize = 200;

/// What the page reads, shared by its routes.
#[derive(Debug)]
pub(crate) struct PageData {
    pub(crate) index: Arc<StreamIndex>,
    pub(crate) settler: Option<Arc<Settler>>,
    pub(crate) keys: Vec<ApiKey>,
    /// A stream is low on balance when it runs out within this many seconds (the alerts').
    pub(crate) low_balance_secs: u64,
}

/// One stream as the page gets it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PageStream {
    /// Balances at the index's newest second.
    #[serde(flatten)]
    view: StreamView,
    /// The accrual state to tick from (decimal strings; the browser uses BigInt).
    snapshot_debt_scaled: String,
    snapshot_time: u64,
    max_total: String,
}

impl PageData {
    /// The billing key that issued `claims` (none: the key is gone, and so is the link).
    pub(crate) fn key(&self, claims: &LinkClaims) -> Option<&ApiKey> {
        self.keys.iter().find(|k| key_tag(&k.name) == claims.key_tag)
    }

    /// The newest second the index applied.
    pub(crate) async fn now(&self) -> u64 {
        self.index.cursor().await.ok().flatten().map_or(0, |c| c.timestamp)
    }

    /// The payer's streams the issuing key may see.
    pub(crate) async fn streams(
        &self,
        claims: &LinkClaims,
    ) -> Result<Vec<(u64, StreamState)>, String> {
        let Some(key) = self.key(claims) else { return Ok(Vec::new()) };
        self.index
            .list(StreamSelector::Payer(claims.payer), None, MAX_STREAMS, |s| key.may_see(s.payee))
            .await
            .map_err(|e| e.to_string())
    }

    /// Stream `id` if it is the payer's and the key may see it.
    pub(crate) async fn stream(&self, claims: &LinkClaims, id: u64) -> Option<StreamState> {
        let key = self.key(claims)?;
        let state = self.index.get(id).await.ok().flatten()?;
        (state.payer == claims.payer && key.may_see(state.payee)).then_some(state)
    }

    /// The page's JSON: now, the streams, the bill.
    pub(crate) async fn overview(&self, claims: &LinkClaims) -> Result<Value, String> {
        let now = self.now().await;
        let streams: Vec<PageStream> = self
            .streams(claims)
            .await?
            .into_iter()
            .map(|(id, state)| PageStream {
                view: StreamView::new(id, &state, now),
                snapshot_debt_scaled: state.snapshot_debt_scaled.to_string(),
                snapshot_time: state.snapshot_time,
                max_total: state.max_total.to_string(),
            })
            .collect();
        Ok(json!({
            "payer": claims.payer,
            "expiresAt": claims.expires_at,
            "now": now,
            "lowBalanceSecs": self.low_balance_secs,
            "streams": streams,
            "bill": self.bill(claims).await?,
        }))
    }

    /// Every settled period of the payer's visible streams: seconds billed, amount, the rate it
    /// implies, the usage digest, the batch and its commit.
    async fn bill(&self, claims: &LinkClaims) -> Result<Value, String> {
        let (Some(settler), Some(key)) = (&self.settler, self.key(claims)) else {
            return Ok(json!([]));
        };
        let invoice = settler
            .invoice(claims.payer, 0, u64::MAX, |payee| key.may_see(*payee))
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = Vec::with_capacity(invoice.lines.len());
        let mut committed_batches = std::collections::BTreeMap::new();
        for line in invoice.lines {
            let committed = match committed_batches.get(&line.batch_id) {
                Some(committed) => *committed,
                None => {
                    let batch = settler.batch(line.batch_id).await.ok().flatten();
                    let committed = batch.is_some_and(|b| {
                        matches!(b.stage, settled_settlement::BatchStage::Committed { .. })
                    });
                    committed_batches.insert(line.batch_id, committed);
                    committed
                }
            };
            lines.push(json!({
                "streamId": line.stream_id,
                "batchId": line.batch_id,
                "periodStart": line.period_start,
                "periodEnd": line.period_end,
                "secondsBilled": line.seconds_billed,
                "amount": line.amount,
                "usageDigest": line.usage_digest,
                "transactionHash": line.transaction_hash,
                "committed": committed,
            }));
        }
        Ok(Value::Array(lines))
    }
}

/// A token amount of `decimals` as a decimal number (for the chart's axis).
pub(crate) fn units(amount: u128, decimals: u8) -> f64 {
    amount as f64 / 10f64.powi(i32::from(decimals))
}
