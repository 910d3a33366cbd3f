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
    usage::{UsageError, UsageLog},
};
use settled_contracts::{SentTransaction, TransactionSender};
use settled_streams::{StreamIndex, StreamSelector, StreamState};

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
}

impl Default for SettlementSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            withdraw_batch: 100,
            max_blob_fee_wei: 50_000_000_000,
            reprice_after: Duration::from_secs(60),
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
}

impl StoredBatch {
    /// The blob sidecar, rebuilt from the payload (the coder and KZG are deterministic).
    pub fn sidecar(&self) -> Result<BlobTransactionSidecar, SettlementError> {
        sidecar(&self.payload)
    }
}

/// The settled periods so far.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeriodCursor {
    /// The last settled period's end (0: none yet; the first period starts at 0).
    period_end: u64,
    /// The next batch id.
    next_batch_id: u64,
}

/// A period whose withdrawals are under way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPeriod {
    withdrawals: Vec<B256>,
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

const CURSOR: &[u8] = b"cursor";
const OPEN: &[u8] = b"open";

/// Where a scheduler settles: the chain, as whom, and the contracts.
pub struct SettlementChain {
    /// Sends as the streams' operator; batches are committed under its address.
    pub sender: Arc<TransactionSender>,
    /// The `StreamVault`.
    pub vault: Address,
    /// The `SettlementAnchor`.
    pub anchor: Address,
    /// The chain id.
    pub chain_id: u64,
}

/// The scheduler.
pub struct Settler {
    sender: Arc<TransactionSender>,
    provider: DynProvider,
    operator: Address,
    index: Arc<StreamIndex>,
    vault: Address,
    anchor: Address,
    chain_id: u64,
    batches: sled::Tree,
    meta: sled::Tree,
    usage: UsageLog,
    settings: SettlementSettings,
    /// The blob fee bound in force (wei; the settings' at start, changeable at run time).
    max_blob_fee_wei: std::sync::Mutex<u128>,
    /// One round at a time.
    round: tokio::sync::Mutex<()>,
    /// The batch receipts were last asked of, with its tree: an auditor asks one batch for
    /// many streams, and each miss costs reading the whole batch and hashing every leaf.
    receipt_batch: std::sync::Mutex<Option<Arc<ReceiptBatch>>>,
}

/// A stored batch with its Merkle tree, for receipts.
struct ReceiptBatch {
    batch: StoredBatch,
    tree: MerkleTree,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler").field("operator", &self.operator).finish_non_exhaustive()
    }
}

impl Settler {
    /// A scheduler for `chain`'s operator over `index`, storing its batches in `db`.
    pub fn new(
        chain: SettlementChain,
        index: Arc<StreamIndex>,
        db: &sled::Db,
        settings: SettlementSettings,
    ) -> Result<Self, SchedulerError> {
        let SettlementChain { sender, vault, anchor, chain_id } = chain;
        let meta = db.open_tree("settlement.meta").map_err(storage)?;
        let settled_through = match meta.get(CURSOR).map_err(storage)? {
            Some(v) => serde_json::from_slice::<PeriodCursor>(&v).map_err(storage)?.period_end,
            None => 0,
        };
        Ok(Self {
            provider: sender.provider().clone(),
            operator: sender.address(),
            sender,
            index,
            vault,
            anchor,
            chain_id,
            batches: db.open_tree("settlement.batches").map_err(storage)?,
            meta,
            usage: UsageLog::open(db, settled_through).map_err(storage)?,
            max_blob_fee_wei: std::sync::Mutex::new(settings.max_blob_fee_wei),
            settings,
            round: tokio::sync::Mutex::new(()),
            receipt_batch: std::sync::Mutex::new(None),
        })
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
        self.anchor
    }

    /// Records a billing backend's usage `digest` for `stream` at second `at` (see
    /// [`fold_usage`](super::fold_usage)); refused for a second already settled.
    pub fn record_usage(&self, stream: u64, at: u64, digest: B256) -> Result<(), UsageError> {
        self.usage.record(stream, at, digest)
    }

    /// Batch `id`, if the node has it.
    pub fn batch(&self, id: u64) -> Result<Option<StoredBatch>, SchedulerError> {
        self.batches
            .get(id.to_be_bytes())
            .map_err(storage)?
            .map(|v| serde_json::from_slice(&v).map_err(storage))
            .transpose()
    }

    fn put_batch(&self, batch: &StoredBatch) -> Result<(), SchedulerError> {
        let value = serde_json::to_vec(batch).map_err(storage)?;
        self.batches.insert(batch.context.batch_id.to_be_bytes(), value).map_err(storage)?;
        self.batches.flush().map_err(storage)?;
        // A receipt must not show the stage it had before. After the write: a receipt loads
        // under the same lock, so it either loads the new batch or is cleared here.
        if let Ok(mut cached) = self.receipt_batch.lock()
            && cached.as_ref().is_some_and(|c| c.batch.context.batch_id == batch.context.batch_id)
        {
            *cached = None;
        }
        Ok(())
    }

    fn cursor(&self) -> Result<PeriodCursor, SchedulerError> {
        Ok(match self.meta.get(CURSOR).map_err(storage)? {
            Some(v) => serde_json::from_slice(&v).map_err(storage)?,
            None => PeriodCursor { period_end: 0, next_batch_id: 1 },
        })
    }

    fn open_period(&self) -> Result<Option<OpenPeriod>, SchedulerError> {
        self.meta
            .get(OPEN)
            .map_err(storage)?
            .map(|v| serde_json::from_slice(&v).map_err(storage))
            .transpose()
    }

    fn put_open_period(&self, open: &OpenPeriod) -> Result<(), SchedulerError> {
        self.meta.insert(OPEN, serde_json::to_vec(open).map_err(storage)?).map_err(storage)?;
        self.meta.flush().map_err(storage)?;
        Ok(())
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
            match self.settle().await {
                Ok(round) => info!(?round, "settlement round"),
                Err(error) => warn!(%error, "settlement round failed; retried next interval"),
            }
        }
    }

    /// One round: finish any unfinished batches, then settle the period up to now.
    pub async fn settle(&self) -> Result<SettlementRound, SchedulerError> {
        let result = self.settle_round().await;
        match &result {
            Ok(round) if !round.waiting.is_empty() => {
                ::metrics::counter!(super::metrics::FAILURES, "cause" => "blob_fee").increment(1);
            }
            Ok(_) => {}
            Err(error) => {
                let cause = match error {
                    SchedulerError::Settlement(_) => "settlement",
                    SchedulerError::Storage(_) => "storage",
                    SchedulerError::Chain(_) => "chain",
                    SchedulerError::Index(_) => "index",
                    SchedulerError::Usage(_) => "storage",
                };
                ::metrics::counter!(super::metrics::FAILURES, "cause" => cause).increment(1);
            }
        }
        if let (Ok(cursor), Ok(Some(head))) = (self.cursor(), self.index.cursor()) {
            ::metrics::gauge!(super::metrics::LAG)
                .set(head.timestamp.saturating_sub(cursor.period_end) as f64);
        }
        result
    }

    async fn settle_round(&self) -> Result<SettlementRound, SchedulerError> {
        let _round = self.round.lock().await;
        let mut round = SettlementRound::default();
        self.commit_pending(&mut round).await?;
        if !round.waiting.is_empty() {
            return Ok(round);
        }
        let open = match self.open_period()? {
            Some(open) => open,
            None => {
                let open = OpenPeriod::default();
                self.put_open_period(&open)?;
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

    /// Sends the period's withdrawals (unless a restarted round already did) and waits for them.
    async fn withdraw(&self, mut open: OpenPeriod) -> Result<OpenPeriod, SchedulerError> {
        if open.withdrawals.is_empty() {
            // What is owed as of the head: the index must have applied it.
            let head = self.provider.get_block_number().await.map_err(chain)?;
            self.wait_for_index(head).await?;
            let now = self.index.cursor()?.map_or(0, |c| c.timestamp);
            let mut owed: Vec<(Address, Address, u64)> = self
                .index
                .list(StreamSelector::All, None, usize::MAX, |s| {
                    s.operator == self.operator && !s.closed && s.covered_debt(now) > 0
                })?
                .into_iter()
                .map(|(id, s)| (s.token, s.payee, id))
                .collect();
            // Consecutive streams of one (token, payee) share one transfer.
            owed.sort_unstable();
            let vault = StreamVault::new(self.vault, &self.provider);
            for chunk in owed.chunks(self.settings.withdraw_batch.max(1)) {
                let ids: Vec<U256> = chunk.iter().map(|(_, _, id)| U256::from(*id)).collect();
                let tx = vault.withdrawBatch(ids).into_transaction_request();
                let sent = self.sender.send(tx).await.map_err(chain)?;
                open.withdrawals.push(sent.hash);
                self.put_open_period(&open)?;
                ::metrics::counter!(super::metrics::WITHDRAWALS).increment(1);
            }
        }
        let mut mined = Vec::with_capacity(open.withdrawals.len());
        for tx in open.withdrawals.clone() {
            if let Some(hash) = self.confirm_withdrawal(tx).await? {
                mined.push(hash);
            }
        }
        if mined != open.withdrawals {
            open.withdrawals = mined;
            self.put_open_period(&open)?;
        }
        Ok(open)
    }

    /// Waits for withdrawal `hash`, re-pricing it while it is pending: the hash mined, or
    /// `None` if the node dropped it (its streams are paid next period).
    async fn confirm_withdrawal(&self, mut hash: B256) -> Result<Option<B256>, SchedulerError> {
        let mut sent = vec![hash];
        for _ in 0..=MAX_REPRICES {
            if let Some((mined, _, _)) = self.wait_mined(&sent, self.settings.reprice_after).await?
            {
                // Reverted or not, it is final: the records count what the chain paid.
                return Ok(Some(mined));
            }
            let Some(pending) = self.provider.get_transaction_by_hash(hash).await.map_err(chain)?
            else {
                warn!(%hash, "withdrawal dropped by the node; its streams are paid next period");
                return Ok(None);
            };
            if pending.block_number.is_some() {
                continue; // mined since
            }
            let previous = SentTransaction {
                hash,
                nonce: pending.nonce(),
                max_fee_per_gas: pending.max_fee_per_gas(),
                max_priority_fee_per_gas: pending.max_priority_fee_per_gas().unwrap_or_default(),
                max_fee_per_blob_gas: None,
            };
            let request =
                TransactionRequest::default().to(self.vault).input(pending.input().clone().into());
            let resent = self.sender.resend(&previous, request).await.map_err(chain)?;
            warn!(old = %hash, new = %resent.hash, nonce = resent.nonce, "withdrawal re-priced");
            ::metrics::counter!(super::metrics::REPRICED, "kind" => "withdrawal").increment(1);
            hash = resent.hash;
            sent.push(hash);
        }
        Err(chain(format!("withdrawal {hash} not mined after {MAX_REPRICES} re-pricings")))
    }

    /// The first of `hashes` mined within `within`: its hash, block and status.
    async fn wait_mined(
        &self,
        hashes: &[B256],
        within: Duration,
    ) -> Result<Option<(B256, u64, bool)>, SchedulerError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for hash in hashes {
                if let Some(receipt) =
                    self.provider.get_transaction_receipt(*hash).await.map_err(chain)?
                {
                    let block = receipt.block_number.unwrap_or_default();
                    return Ok(Some((*hash, block, receipt.status())));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The block that ends the period: the last withdrawal's, or the head.
    async fn end_block(&self, open: &OpenPeriod) -> Result<u64, SchedulerError> {
        let mut end = self.provider.get_block_number().await.map_err(chain)?;
        for tx in &open.withdrawals {
            if let Some(receipt) =
                self.provider.get_transaction_receipt(*tx).await.map_err(chain)?
            {
                end = end.max(receipt.block_number.unwrap_or_default());
            }
        }
        Ok(end)
    }

    async fn wait_for_index(&self, block: u64) -> Result<(), SchedulerError> {
        for _ in 0..1_200 {
            if self.index.cursor()?.is_some_and(|c| c.number >= block) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(chain(format!("the stream index did not reach block {block}")))
    }

    /// The period's records, batches and blobs, stored with the advanced cursor.
    async fn build(&self, period_end: u64, open: OpenPeriod) -> Result<(), SchedulerError> {
        let cursor = self.cursor()?;
        let start = cursor.period_end;
        let index = self.index.clone();
        let operator = self.operator;
        // From here on reports for the period are refused: what is read now is final.
        let usage = self.usage.close_period(start, period_end)?;
        let records = tokio::task::spawn_blocking(move || {
            period_records(&index, operator, start, period_end, &usage)
        })
        .await
        .map_err(storage)??;
        let mut next = PeriodCursor { period_end: period_end.max(start), ..cursor };
        let first = BatchContext {
            chain_id: self.chain_id,
            vault: self.vault,
            batch_id: cursor.next_batch_id,
            period_start: start,
            period_end: next.period_end,
        };
        let batches = if records.is_empty() {
            Vec::new()
        } else {
            let withdrawals = open.withdrawals.clone();
            tokio::task::spawn_blocking(move || build_batches(first, records, withdrawals))
                .await
                .map_err(storage)??
        };
        next.next_batch_id += batches.len() as u64;
        // The batches and the cursor change together; the open period goes with them.
        let mut batch_writes = sled::Batch::default();
        for batch in &batches {
            batch_writes.insert(
                &batch.context.batch_id.to_be_bytes(),
                serde_json::to_vec(batch).map_err(storage)?,
            );
        }
        let cursor_value = serde_json::to_vec(&next).map_err(storage)?;
        use sled::Transactional;
        (&self.batches, &self.meta)
            .transaction(|(b, m)| {
                b.apply_batch(&batch_writes)?;
                m.insert(CURSOR, cursor_value.clone())?;
                m.remove(OPEN)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| storage(format!("{e:?}")))?;
        self.batches.flush().map_err(storage)?;
        Ok(())
    }

    /// Commits every stored batch not yet committed, in id order.
    async fn commit_pending(&self, round: &mut SettlementRound) -> Result<(), SchedulerError> {
        let cursor = self.cursor()?;
        // Batches are committed in order, so the unfinished ones are the last few.
        let mut id = cursor.next_batch_id;
        while id > 1 {
            match self.batch(id - 1)? {
                Some(batch) if !matches!(batch.stage, BatchStage::Committed { .. }) => id -= 1,
                _ => break,
            }
        }
        for id in id..cursor.next_batch_id {
            let Some(batch) = self.batch(id)? else { continue };
            match self.commit(batch).await? {
                true => round.committed.push(id),
                false => {
                    round.waiting.push(id);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether the anchor holds `batch` (under this operator, with its root).
    async fn anchored(&self, batch: &StoredBatch) -> Result<bool, SchedulerError> {
        let anchor = SettlementAnchor::new(self.anchor, &self.provider);
        let id = U256::from(batch.context.batch_id);
        let on_chain = anchor.getBatch(self.operator, id).call().await.map_err(chain)?;
        Ok(on_chain.root == batch.root)
    }

    /// The commit transaction of `batch`, without fees, nonce or gas.
    fn commit_request(&self, batch: &StoredBatch) -> Result<TransactionRequest, SchedulerError> {
        let anchor = SettlementAnchor::new(self.anchor, &self.provider);
        let count = u32::try_from(batch.records.len()).map_err(storage)?;
        Ok(anchor
            .commit(
                U256::from(batch.context.batch_id),
                batch.root,
                count,
                batch.total,
                U48::from(batch.context.period_start),
                U48::from(batch.context.period_end),
            )
            .sidecar(batch.sidecar()?)
            .into_transaction_request())
    }

    /// Commits `batch` once, re-pricing it while stuck; false if the blob fee is above the
    /// bound (it waits).
    async fn commit(&self, mut batch: StoredBatch) -> Result<bool, SchedulerError> {
        let id = batch.context.batch_id;
        if batch.stage == BatchStage::Built {
            // A crash between sending and storing the hash leaves a committed batch `Built`.
            if self.anchored(&batch).await? {
                batch.stage = BatchStage::Committed { transaction: B256::ZERO, block: 0 };
                self.put_batch(&batch)?;
                return Ok(true);
            }
            let blob_fee = self.provider.get_blob_base_fee().await.map_err(chain)?;
            let bound = self.max_blob_fee();
            if blob_fee > bound {
                warn!(batch = id, blob_fee, bound, "blob fee above the bound: the batch waits");
                return Ok(false);
            }
            // Twice the current blob fee (at least 1 wei), within the bound: room for a rise.
            let cap = (blob_fee.max(1) * 2).min(bound.max(1));
            let request = self.commit_request(&batch)?.max_fee_per_blob_gas(cap);
            let transaction = self.sender.send(request).await.map_err(chain)?;
            batch.stage = BatchStage::Sent { transaction, replaced: Vec::new() };
            self.put_batch(&batch)?;
        }
        for _ in 0..=MAX_REPRICES {
            let BatchStage::Sent { transaction, mut replaced } = batch.stage.clone() else {
                return Ok(true);
            };
            let mut hashes = replaced.clone();
            hashes.push(transaction.hash);
            if let Some((hash, block, ok)) =
                self.wait_mined(&hashes, self.settings.reprice_after).await?
            {
                if !ok {
                    // Sent again from scratch next round (the anchor refuses a second commit).
                    batch.stage = BatchStage::Built;
                    self.put_batch(&batch)?;
                    return Err(chain(format!("commit of batch {id} reverted in {hash}")));
                }
                batch.stage = BatchStage::Committed { transaction: hash, block };
                self.put_batch(&batch)?;
                self.committed_metrics(&batch, hash).await;
                return Ok(true);
            }
            if self.anchored(&batch).await? {
                // Mined under a hash we do not know (a resend cut short by a crash).
                batch.stage = BatchStage::Committed { transaction: transaction.hash, block: 0 };
                self.put_batch(&batch)?;
                return Ok(true);
            }
            let mined_nonce =
                self.provider.get_transaction_count(self.operator).await.map_err(chain)?;
            let request = self.commit_request(&batch)?;
            let blob_fee = self.provider.get_blob_base_fee().await.map_err(chain)?;
            let bound = self.max_blob_fee().max(1);
            let previous_cap = transaction.max_fee_per_blob_gas.unwrap_or_default();
            let resent = if mined_nonce > transaction.nonce {
                // The nonce went to another transaction and the batch is not committed: send
                // it afresh.
                if blob_fee > bound {
                    return Ok(false);
                }
                let cap = (blob_fee.max(1) * 2).min(bound);
                self.sender.send(request.max_fee_per_blob_gas(cap)).await.map_err(chain)?
            } else {
                let cap = (previous_cap * 2).max(blob_fee.max(1) * 2).min(bound);
                if cap <= previous_cap || blob_fee > bound {
                    warn!(
                        batch = id,
                        blob_fee, bound, "stuck commit cannot be outbid within the bound: waiting"
                    );
                    return Ok(false);
                }
                self.sender
                    .resend(&transaction, request.max_fee_per_blob_gas(cap))
                    .await
                    .map_err(chain)?
            };
            warn!(
                batch = id,
                old = %transaction.hash,
                new = %resent.hash,
                nonce = resent.nonce,
                max_fee_per_gas = resent.max_fee_per_gas,
                max_fee_per_blob_gas = ?resent.max_fee_per_blob_gas,
                "settlement commit re-priced"
            );
            ::metrics::counter!(super::metrics::REPRICED, "kind" => "commit").increment(1);
            replaced.push(transaction.hash);
            batch.stage = BatchStage::Sent { transaction: resent, replaced };
            self.put_batch(&batch)?;
        }
        Err(chain(format!("commit of batch {id} not mined after {MAX_REPRICES} re-pricings")))
    }

    async fn committed_metrics(&self, batch: &StoredBatch, transaction: B256) {
        if let Ok(Some(receipt)) = self.provider.get_transaction_receipt(transaction).await {
            ::metrics::gauge!(super::metrics::COMMIT_GAS).set(receipt.gas_used as f64);
            ::metrics::gauge!(super::metrics::COMMIT_BLOB_GAS)
                .set(receipt.blob_gas_used.unwrap_or_default() as f64);
        }
        ::metrics::counter!(super::metrics::BATCHES).increment(1);
        ::metrics::gauge!(super::metrics::RECORDS_PER_BLOB).set(batch.records.len() as f64);
        let (batch_id, records) = (batch.context.batch_id, batch.records.len());
        info!(batch = batch_id, records, %transaction, "settlement batch committed");
    }
}

/// A stream's receipt for one batch: its record and everything needed to check it on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementReceipt {
    /// The record.
    pub record: SettlementRecord,
    /// Chain, vault, batch id, period.
    pub context: BatchContext,
    /// The record's leaf encoding (what `SettlementAnchor.verify` takes).
    pub encoded: Bytes,
    /// `keccak256(keccak256(encoded))`.
    pub leaf: B256,
    /// Siblings from the leaf to the root.
    pub proof: Vec<B256>,
    /// The batch's Merkle root.
    pub root: B256,
    /// The anchor and the operator the batch is committed under.
    pub anchor: Address,
    /// See `anchor`.
    pub operator: Address,
    /// The commit transaction (none until sent).
    pub transaction_hash: Option<B256>,
    /// The blob's versioned hash.
    pub blob_versioned_hash: B256,
    /// Whether the commit is mined.
    pub committed: bool,
}

impl Settler {
    /// The receipt of stream `stream_id` in batch `batch_id`; `None` if either is unknown.
    pub fn receipt(
        &self,
        stream_id: u64,
        batch_id: u64,
    ) -> Result<Option<SettlementReceipt>, SchedulerError> {
        let cached = {
            let mut slot =
                self.receipt_batch.lock().map_err(|_| storage("receipt cache poisoned"))?;
            match slot.as_ref().filter(|c| c.batch.context.batch_id == batch_id) {
                Some(cached) => cached.clone(),
                None => {
                    let Some(batch) = self.batch(batch_id)? else { return Ok(None) };
                    let leaves = batch.records.iter().map(|r| r.leaf(&batch.context)).collect();
                    let loaded = Arc::new(ReceiptBatch { tree: MerkleTree::new(leaves), batch });
                    *slot = Some(loaded.clone());
                    loaded
                }
            }
        };
        let (batch, tree) = (&cached.batch, &cached.tree);
        let Ok(position) = batch.records.binary_search_by_key(&stream_id, |r| r.stream_id) else {
            return Ok(None);
        };
        let record = batch.records[position].clone();
        let encoded = record.encode(&batch.context);
        let transaction_hash = batch.stage.transaction();
        let committed = matches!(batch.stage, BatchStage::Committed { .. });
        Ok(Some(SettlementReceipt {
            leaf: super::leaf_of(&encoded),
            encoded: Bytes::copy_from_slice(&encoded),
            proof: tree.proof(position).unwrap_or_default(),
            root: batch.root,
            record,
            context: batch.context,
            anchor: self.anchor,
            operator: self.operator,
            transaction_hash,
            blob_versioned_hash: batch.versioned_hash,
            committed,
        }))
    }
}

/// Whether a stream accrues in this state.
fn running(state: Option<&StreamState>) -> bool {
    state.is_some_and(|s| !s.paused && !s.closed)
}

/// The records of `operator`'s streams for the period `(start, end]`: what each paid its payee
/// (from the index's history of `withdrawn`), the seconds it ran and its usage fold.
pub(crate) fn period_records(
    index: &StreamIndex,
    operator: Address,
    start: u64,
    end: u64,
    usage: &std::collections::BTreeMap<u64, B256>,
) -> Result<Vec<SettlementRecord>, SchedulerError> {
    let mut records = Vec::new();
    for (id, latest) in
        index.list(StreamSelector::All, None, usize::MAX, |s| s.operator == operator)?
    {
        let before = index.get_at(id, start)?;
        // Closed before the period: nothing more to say.
        if before.as_ref().is_some_and(|s| s.closed) {
            continue;
        }
        let changes = index.changes_between(id, start, end)?;
        let mut seconds = 0u64;
        let mut at = start;
        let mut state = before.clone();
        for (t, next) in &changes {
            if running(state.as_ref()) {
                seconds += t - at;
            }
            at = *t;
            state = Some(next.clone());
        }
        if running(state.as_ref()) {
            seconds += end.saturating_sub(at);
        }
        let Some(after) = state else { continue };
        let paid_before = before.as_ref().map_or(0, |s| s.withdrawn);
        let amount = after.withdrawn.checked_sub(paid_before).ok_or_else(|| {
            storage(format!("stream {id}: the index shows less paid at {end} than at {start}"))
        })?;
        let usage_digest = usage.get(&id).copied().unwrap_or_default();
        if amount == 0 && seconds == 0 && usage_digest.is_zero() {
            continue;
        }
        records.push(SettlementRecord {
            stream_id: id,
            payer: latest.payer,
            payee: latest.payee,
            token: latest.token,
            seconds_billed: seconds,
            amount,
            cumulative_amount: after.withdrawn,
            usage_digest,
        });
    }
    Ok(records)
}

/// `records` split into blobs from batch `first` on, each with its tree, payload and KZG data.
fn build_batches(
    first: BatchContext,
    records: Vec<SettlementRecord>,
    withdrawals: Vec<B256>,
) -> Result<Vec<StoredBatch>, SchedulerError> {
    split_into_blobs(first, records)?
        .into_iter()
        .map(|(context, records)| {
            let tree = MerkleTree::new(records.iter().map(|r| r.leaf(&context)).collect());
            let payload = encode_payload(&context, &records)?;
            let sidecar = sidecar(&payload)?;
            let versioned_hash = sidecar
                .versioned_hash_for_blob(0)
                .ok_or_else(|| SettlementError::Kzg("no versioned hash".into()))?;
            let bytes = |b: &Bytes48| Bytes::copy_from_slice(b.as_slice());
            Ok(StoredBatch {
                context,
                total: records.iter().map(|r| r.amount).sum(),
                root: tree.root(),
                payload: payload.into(),
                commitment: bytes(&sidecar.commitments[0]),
                proof: bytes(&sidecar.proofs[0]),
                versioned_hash,
                withdrawals: withdrawals.clone(),
                stage: BatchStage::Built,
                records,
            })
        })
        .collect()
}

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
    pub fn invoice(
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
        for entry in self.batches.iter() {
            let (_, value) = entry.map_err(storage)?;
            let batch: StoredBatch = serde_json::from_slice(&value).map_err(storage)?;
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
            "batch_id,stream_id,payee,token,period_start,period_end,seconds_billed,amount,usage_digest,transaction_hash\n",
        );
        for line in &lines {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
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
            ));
        }
        for total in &totals {
            csv.push_str(&format!(
                "total,,,{},{from},{to},{},{},,\n",
                total.token, total.seconds_billed, total.amount
            ));
        }
        Ok(Invoice { payer, from, to, lines, totals, batch_ids, transactions, csv })
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
