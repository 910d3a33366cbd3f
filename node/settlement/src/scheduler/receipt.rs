//! A stream's settlement receipt: its record, the Merkle proof and the batch that carries it.

use super::*;

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
    /// The chain the anchor is on (`context.chainId` is the streams' chain).
    pub anchor_chain_id: u64,
    /// How the records reached the anchor: `blob` or `calldata`.
    pub anchor_mode: AnchorMode,
    /// The commit transaction on the anchor chain (none until sent).
    pub transaction_hash: Option<B256>,
    /// What the anchor stores for the batch's data: the blob's versioned hash, or in calldata
    /// mode the payload's keccak256.
    pub blob_versioned_hash: B256,
    /// Whether the commit is mined.
    pub committed: bool,
}

impl Settler {
    /// The Merkle tree of `batch`, from the cache when it holds this batch's records (an
    /// auditor asks one batch for many streams, and building it hashes every leaf).
    fn receipt_tree(&self, batch: &StoredBatch) -> Result<Arc<MerkleTree>, SchedulerError> {
        let mut slot = self.receipt_batch.lock().map_err(|_| storage("receipt cache poisoned"))?;
        let key = (batch.context.batch_id, batch.root);
        if let Some((cached, tree)) = slot.as_ref()
            && *cached == key
        {
            return Ok(tree.clone());
        }
        let leaves = batch.records.iter().map(|r| r.leaf(&batch.context)).collect();
        let tree = Arc::new(MerkleTree::new(leaves));
        *slot = Some((key, tree.clone()));
        Ok(tree)
    }

    /// The receipt of stream `stream_id` in batch `batch_id`; `None` if either is unknown.
    pub async fn receipt(
        &self,
        stream_id: u64,
        batch_id: u64,
    ) -> Result<Option<SettlementReceipt>, SchedulerError> {
        // Read every time: the stage may have changed, on this node or (shared store) another.
        let Some(batch) = self.batch(batch_id).await? else { return Ok(None) };
        let tree = self.receipt_tree(&batch)?;
        let (batch, tree) = (&batch, &*tree);
        let Ok(position) = batch.records.binary_search_by_key(&stream_id, |r| r.stream_id) else {
            return Ok(None);
        };
        let record = batch.records[position].clone();
        let encoded = record.encode(&batch.context);
        let transaction_hash = batch.stage.transaction();
        let committed = matches!(batch.stage, BatchStage::Committed { .. });
        Ok(Some(SettlementReceipt {
            leaf: crate::leaf_of(&encoded),
            encoded: Bytes::copy_from_slice(&encoded),
            proof: tree.proof(position).unwrap_or_default(),
            root: batch.root,
            record,
            context: batch.context,
            anchor: self.anchor.anchor,
            operator: self.anchor.committer(),
            anchor_chain_id: if batch.anchor_chain_id == 0 {
                batch.context.chain_id
            } else {
                batch.anchor_chain_id
            },
            anchor_mode: batch.mode,
            transaction_hash,
            blob_versioned_hash: batch.versioned_hash,
            committed,
        }))
    }
}
