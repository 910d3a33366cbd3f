//! The settlement scheduler: every period it pays what the node's streams owe their payees
//! (`withdrawBatch`, up to `withdraw_batch` streams per transaction, grouped by token and
//! payee), then records what each stream paid in the period, commits the records' Merkle root
//! in a type-3 transaction whose blob carries them, and keeps everything needed for receipts.
//!
//! Crash safety: each step is persisted in sled before the next one acts.
//! * The open period (its start and the withdrawal transactions sent) is stored before any
//!   withdrawal is sent, and each transaction's hash as soon as it is sent; a restart waits for
//!   those instead of sending more. (A withdrawal sent twice only pays what accrued between:
//!   records count what was paid, from the chain's events, so nothing is counted twice.)
//! * The period's batches — records, root, payload, KZG commitment and proof — are stored
//!   together with the advanced period cursor, before any commit is sent.
//! * A commit's transaction hash is stored once sent; a restart asks the anchor whether the
//!   batch id is committed, and resends the same batch only if it is not. The anchor accepts
//!   a batch id once, so no batch is ever committed twice.
//!
//! Stuck transactions: a commit or withdrawal still unmined after `reprice_after` is sent again
//! at its nonce with every fee doubled (the blob fee within `max_blob_fee_wei`); the hashes it
//! replaced are kept, since any of them may be the one mined. A withdrawal the node dropped is
//! forgotten (its streams are paid next period); a dropped commit is sent again.

use std::{sync::Arc, time::Duration};

use alloy::{
    consensus::Transaction as _,
    eips::eip4844::{BlobTransactionSidecar, Bytes48},
    primitives::{Address, B256, Bytes, U256, aliases::U48},
    providers::{DynProvider, Provider},
    rpc::types::TransactionRequest,
};
use serde::{Deserialize, Serialize};
use settled_contracts::{SettlementAnchor, StreamVault};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    BatchContext, MerkleTree, SettlementError, SettlementRecord, encode_payload, sidecar,
    split_into_blobs,
    store::{OpenPeriod, PeriodCursor, SettlementStore, SledSettlement},
    usage::UsageError,
};
use settled_contracts::{SentTransaction, TransactionSender};
use settled_store::Fence;
use settled_streams::{StreamIndex, StreamSelector, StreamState};

mod anchor;
mod commit;
mod documents;
mod invoice;
mod order_alerts;
mod orders;
mod receipt;
mod round;

pub use anchor::{AnchorChain, AnchorMode, BatchCosts, overhead_ppm};
pub use documents::InvoiceDocument;
pub use invoice::{Invoice, InvoiceLine, InvoiceTotal};
pub use order_alerts::OrderAlert;
pub use orders::OrderError;
pub use receipt::SettlementReceipt;

/// Re-pricings of one transaction within a round before the round gives up (and the next
/// round carries on).
const MAX_REPRICES: usize = 8;

/// How the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementSettings {
    /// Settle on a timer (`settled run`); off, settlements happen only when asked.
    pub enabled: bool,
    /// How often.
    pub interval: Duration,
    /// Streams per `withdrawBatch` transaction.
    pub withdraw_batch: usize,
    /// The highest blob base fee (wei) a commit may pay; above it the batch waits.
    pub max_blob_fee_wei: u128,
    /// How long a settlement transaction may stay unmined before it is re-priced.
    pub reprice_after: Duration,
    /// The ETH price in micro-dollars, to show what settling costs as a share of what it
    /// settled (`None`: costs in wei only).
    pub eth_price_micro_usd: Option<u128>,
}

impl Default for SettlementSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            withdraw_batch: 100,
            max_blob_fee_wei: 50_000_000_000,
            reprice_after: Duration::from_secs(60),
            eth_price_micro_usd: None,
        }
    }
}

/// Where a batch is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "stage")]
pub enum BatchStage {
    /// Stored, not sent.
    Built,
    /// Its commit was sent in this transaction.
    Sent {
        /// The transaction (the latest, if re-priced).
        transaction: SentTransaction,
        /// The transactions it replaced, oldest first (one of them may be the one mined).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replaced: Vec<B256>,
    },
    /// Committed on chain.
    Committed {
        /// The transaction.
        transaction: B256,
        /// Its block.
        block: u64,
    },
}

impl BatchStage {
    /// The commit transaction: none until sent, the latest sent, or the one mined.
    pub fn transaction(&self) -> Option<B256> {
        match self {
            Self::Built => None,
            Self::Sent { transaction, .. } => Some(transaction.hash),
            Self::Committed { transaction, .. } => Some(*transaction),
        }
    }
}

/// A batch as the node keeps it: enough to answer any receipt and to rebuild its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredBatch {
    /// Chain, vault, batch id, period.
    pub context: BatchContext,
    /// In stream-id order.
    pub records: Vec<SettlementRecord>,
    /// The Merkle root committed.
    pub root: B256,
    /// The sum of the records' amounts (a decimal string in JSON).
    #[serde(with = "super::record::decimal_amount")]
    pub total: u128,
    /// The compact payload the blob carries.
    pub payload: Bytes,
    /// The blob's KZG commitment.
    pub commitment: Bytes,
    /// The blob's KZG proof.
    pub proof: Bytes,
    /// The blob's versioned hash (what the anchor stores).
    pub versioned_hash: B256,
    /// The period's withdrawal transactions.
    pub withdrawals: Vec<B256>,
    /// Where it is.
    pub stage: BatchStage,
    /// How the records reach the anchor: in a blob (`versioned_hash` is the blob's) or in
    /// calldata (`versioned_hash` is the payload's keccak256; no commitment or proof).
    #[serde(default)]
    pub mode: AnchorMode,
    /// The chain the anchor is on (the streams' chain unless settlement anchors elsewhere).
    #[serde(default)]
    pub anchor_chain_id: u64,
    /// What settling it cost (withdrawals once built, the commit once mined).
    #[serde(default)]
    pub costs: BatchCosts,
}

impl StoredBatch {
    /// The blob sidecar, rebuilt from the payload (the coder and KZG are deterministic); an
    /// error for a calldata batch, which has none.
    pub fn sidecar(&self) -> Result<BlobTransactionSidecar, SettlementError> {
        if self.mode == AnchorMode::Calldata {
            return Err(SettlementError::Malformed("a calldata batch has no blob".into()));
        }
        sidecar(&self.payload)
    }
}

/// Why a settlement round did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The records, tree or blob.
    #[error(transparent)]
    Settlement(#[from] SettlementError),
    /// The database.
    #[error("settlement storage: {0}")]
    Storage(String),
    /// The chain.
    #[error("chain: {0}")]
    Chain(String),
    /// The stream index.
    #[error(transparent)]
    Index(#[from] settled_streams::IndexError),
    /// The usage log.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// This node does not (or no longer) hold the operator key's lease: nothing was written.
    #[error("not leading the operator key: {0}")]
    Lost(String),
}

fn storage(e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Storage(e.to_string())
}

fn chain(e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Chain(e.to_string())
}

/// What one settlement round did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementRound {
    /// Withdrawal transactions of the period.
    pub withdrawals: Vec<B256>,
    /// Batches committed in this round (older ones resumed included).
    pub committed: Vec<u64>,
    /// Batches built but waiting (blob fee above the bound).
    pub waiting: Vec<u64>,
}

/// Where a scheduler settles: the streams' chain, as whom, the vault, and where batches are
/// anchored.
pub struct SettlementChain {
    /// Sends as the streams' operator (the withdrawals).
    pub sender: Arc<TransactionSender>,
    /// The `StreamVault`.
    pub vault: Address,
    /// The streams' chain id.
    pub chain_id: u64,
    /// The streams' chain kind (OP stack: withdrawals also pay an L1 data fee).
    pub kind: settled_contracts::ChainKind,
    /// Where batches are committed (the same chain and sender, or an anchor chain).
    pub anchor: AnchorChain,
    /// Each token's ISO 4217 currency and decimals (USDC → USD, 6), for invoices and POs.
    pub currencies: std::collections::BTreeMap<Address, crate::TokenCurrency>,
    /// The seller invoice documents name (`--billing.seller-*`; none: no UBL or cXML).
    pub seller: Option<crate::Party>,
}

/// The scheduler.
pub struct Settler {
    sender: Arc<TransactionSender>,
    provider: DynProvider,
    operator: Address,
    index: Arc<StreamIndex>,
    vault: Address,
    anchor: AnchorChain,
    chain_id: u64,
    kind: settled_contracts::ChainKind,
    currencies: std::collections::BTreeMap<Address, crate::TokenCurrency>,
    seller: Option<crate::Party>,
    /// Periods, batches, usage reports, POs and their alerted states.
    store: Arc<dyn SettlementStore>,
    /// What the round's writes and sends are fenced by (`None`: this node does not lead the
    /// operator key, so it runs no rounds).
    fence: tokio::sync::watch::Receiver<Option<Fence>>,
    /// PO alerts to `billing_subscribePurchaseOrderAlerts`.
    order_alerts: tokio::sync::broadcast::Sender<OrderAlert>,
    /// PO alerts must be checked after the next round even if it commits nothing.
    order_alerts_due: std::sync::atomic::AtomicBool,
    settings: SettlementSettings,
    /// The blob fee bound in force (wei; the settings' at start, changeable at run time).
    max_blob_fee_wei: std::sync::Mutex<u128>,
    /// One round at a time.
    round: tokio::sync::Mutex<()>,
    /// The Merkle tree of the batch receipts were last asked of, by batch id and root.
    receipt_batch: std::sync::Mutex<Option<ReceiptTree>>,
}

/// A batch's id and root with its Merkle tree.
type ReceiptTree = ((u64, B256), Arc<MerkleTree>);

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler").field("operator", &self.operator).finish_non_exhaustive()
    }
}

impl Settler {
    /// A scheduler for `chain`'s operator over `index`, storing its batches in `db` (one node:
    /// every write is this process's).
    pub fn new(
        chain: SettlementChain,
        index: Arc<StreamIndex>,
        db: &sled::Db,
        settings: SettlementSettings,
    ) -> Result<Self, SchedulerError> {
        let store = Arc::new(SledSettlement::open(db)?);
        let (_, fence) = tokio::sync::watch::channel(Some(Fence::Exclusive));
        Ok(Self::with_store(chain, index, store, fence, settings))
    }

    /// A scheduler keeping its state in `store`, running rounds while `fence` holds one (the
    /// operator key's lease on a shared store).
    pub fn with_store(
        chain: SettlementChain,
        index: Arc<StreamIndex>,
        store: Arc<dyn SettlementStore>,
        fence: tokio::sync::watch::Receiver<Option<Fence>>,
        settings: SettlementSettings,
    ) -> Self {
        let SettlementChain { sender, vault, chain_id, kind, anchor, currencies, seller } = chain;
        Self {
            provider: sender.provider().clone(),
            operator: sender.address(),
            sender,
            index,
            vault,
            anchor,
            chain_id,
            kind,
            currencies,
            seller,
            store,
            fence,
            order_alerts: tokio::sync::broadcast::channel(256).0,
            order_alerts_due: std::sync::atomic::AtomicBool::new(true),
            max_blob_fee_wei: std::sync::Mutex::new(settings.max_blob_fee_wei),
            settings,
            round: tokio::sync::Mutex::new(()),
            receipt_batch: std::sync::Mutex::new(None),
        }
    }

    /// The fence the round's writes carry; refused when this node does not lead.
    pub(crate) fn fence(&self) -> Result<Fence, SchedulerError> {
        self.fence
            .borrow()
            .clone()
            .ok_or_else(|| SchedulerError::Lost("another node leads it; rounds run there".into()))
    }

    /// Whether this node runs the rounds now.
    pub fn leads(&self) -> bool {
        self.fence.borrow().is_some()
    }

    /// Sets the highest blob base fee a commit pays (a spike above it delays batches).
    pub fn set_max_blob_fee_wei(&self, wei: u128) {
        if let Ok(mut bound) = self.max_blob_fee_wei.lock() {
            *bound = wei;
        }
    }

    fn max_blob_fee(&self) -> u128 {
        self.max_blob_fee_wei.lock().map_or(self.settings.max_blob_fee_wei, |bound| *bound)
    }

    /// The operator the batches are committed under.
    pub fn operator(&self) -> Address {
        self.operator
    }

    /// The `SettlementAnchor`.
    pub fn anchor(&self) -> Address {
        self.anchor.anchor
    }

    /// Where batches are committed.
    pub fn anchor_chain(&self) -> &AnchorChain {
        &self.anchor
    }

    /// The ETH price settlement overhead is shown at (micro-dollars), if configured.
    pub fn eth_price_micro_usd(&self) -> Option<u128> {
        self.settings.eth_price_micro_usd
    }

    /// Records a billing backend's usage `digest` for `stream` at second `at` (see
    /// [`fold_usage`](crate::fold_usage)); refused for a second already settled.
    pub async fn record_usage(&self, stream: u64, at: u64, digest: B256) -> Result<(), UsageError> {
        self.store.record_usage(stream, at, digest).await
    }

    /// Batch `id`, if the node has it.
    pub async fn batch(&self, id: u64) -> Result<Option<StoredBatch>, SchedulerError> {
        self.store.batch(id).await
    }

    async fn put_batch(&self, batch: &StoredBatch) -> Result<(), SchedulerError> {
        self.store.put_batch(&self.fence()?, batch).await
    }

    async fn cursor(&self) -> Result<PeriodCursor, SchedulerError> {
        self.store.cursor().await
    }

    async fn put_open_period(&self, open: &OpenPeriod) -> Result<(), SchedulerError> {
        self.store.put_open_period(&self.fence()?, open).await
    }

    /// Runs a round every interval until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut timer = tokio::time::interval(self.settings.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await; // the first tick is immediate: let the index catch up first
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = timer.tick() => {}
            }
            if !self.leads() {
                continue;
            }
            match self.settle().await {
                Ok(round) => info!(?round, "settlement round"),
                Err(error) => warn!(%error, "settlement round failed; retried next interval"),
            }
        }
    }

    /// One round: finish any unfinished batches, then settle the period up to now.
    pub async fn settle(&self) -> Result<SettlementRound, SchedulerError> {
        // Another node leads the operator key: its rounds, its alerts.
        self.fence()?;
        let result = self.settle_round().await;
        match &result {
            Ok(round) if !round.waiting.is_empty() => {
                ::metrics::counter!(crate::metrics::FAILURES, "cause" => "blob_fee").increment(1);
            }
            Ok(_) => {}
            Err(error) => {
                let cause = match error {
                    SchedulerError::Settlement(_) => "settlement",
                    SchedulerError::Storage(_) => "storage",
                    SchedulerError::Chain(_) => "chain",
                    SchedulerError::Index(_) => "index",
                    SchedulerError::Usage(_) => "storage",
                    SchedulerError::Lost(_) => "lease",
                };
                ::metrics::counter!(crate::metrics::FAILURES, "cause" => cause).increment(1);
            }
        }
        // PO alerts change only when a batch commits or a PO is stored (and once after a start:
        // a crash may have come between a commit and its check).
        let committed = matches!(&result, Ok(round) if !round.committed.is_empty());
        // On a shared store a PO may have been stored on another node: look every round.
        let due = self.order_alerts_due.swap(false, std::sync::atomic::Ordering::SeqCst)
            || self.store.relays_alerts();
        if (committed || due)
            && let Err(error) = self.check_order_alerts().await
        {
            self.order_alerts_due.store(true, std::sync::atomic::Ordering::SeqCst);
            warn!(%error, "purchase order alerts not checked; retried after the next round");
        }
        if let (Ok(cursor), Ok(Some(head))) = (self.cursor().await, self.index.cursor().await) {
            ::metrics::gauge!(crate::metrics::LAG)
                .set(head.timestamp.saturating_sub(cursor.period_end) as f64);
        }
        result
    }

    async fn settle_round(&self) -> Result<SettlementRound, SchedulerError> {
        let _round = self.round.lock().await;
        self.fence()?;
        let mut round = SettlementRound::default();
        self.commit_pending(&mut round).await?;
        if !round.waiting.is_empty() {
            return Ok(round);
        }
        let open = match self.store.open_period().await? {
            Some(open) => open,
            None => {
                let open = OpenPeriod::default();
                self.put_open_period(&open).await?;
                open
            }
        };
        let open = self.withdraw(open).await?;
        round.withdrawals = open.withdrawals.clone();
        let end_block = self.end_block(&open).await?;
        self.wait_for_index(end_block).await?;
        let period_end = self
            .provider
            .get_block_by_number(end_block.into())
            .await
            .map_err(chain)?
            .ok_or_else(|| chain(format!("block {end_block} not found")))?
            .header
            .timestamp;
        self.build(period_end, open).await?;
        self.commit_pending(&mut round).await?;
        Ok(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage survives the trip through sled's JSON, fees of any size included (serde_json
    /// cannot buffer a bare `u128` inside a tagged enum).
    #[test]
    fn every_batch_stage_round_trips() {
        let sent = SentTransaction {
            hash: B256::repeat_byte(1),
            nonce: 7,
            max_fee_per_gas: u128::MAX,
            max_priority_fee_per_gas: 1,
            max_fee_per_blob_gas: Some(u128::MAX - 1),
        };
        for stage in [
            BatchStage::Built,
            BatchStage::Sent { transaction: sent, replaced: vec![] },
            BatchStage::Sent {
                transaction: SentTransaction { max_fee_per_blob_gas: None, ..sent },
                replaced: vec![B256::repeat_byte(2), B256::repeat_byte(3)],
            },
            BatchStage::Committed { transaction: B256::repeat_byte(4), block: 9 },
        ] {
            let json = serde_json::to_vec(&stage).expect("serializes");
            let back: BatchStage = serde_json::from_slice(&json).expect("deserializes");
            assert_eq!(back, stage);
        }
        assert_eq!(BatchStage::Built.transaction(), None);
        let replaced = BatchStage::Sent { transaction: sent, replaced: vec![B256::ZERO] };
        assert_eq!(replaced.transaction(), Some(sent.hash), "the latest sent");
    }
}
