//! Committing batches on the anchor chain: each batch's root with its records in a type-3
//! transaction's blob (or in calldata), recorded before it is sent, re-priced until mined.

use super::*;

impl Settler {
    /// Commits every stored batch not yet committed, in id order.
    pub(super) async fn commit_pending(
        &self,
        round: &mut SettlementRound,
    ) -> Result<(), SchedulerError> {
        let cursor = self.cursor().await?;
        // Batches are committed in order, so the unfinished ones are the last few.
        let mut id = cursor.next_batch_id;
        while id > 1 {
            match self.batch(id - 1).await? {
                Some(batch) if !matches!(batch.stage, BatchStage::Committed { .. }) => id -= 1,
                _ => break,
            }
        }
        for id in id..cursor.next_batch_id {
            let Some(batch) = self.batch(id).await? else { continue };
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
    pub(super) async fn anchored(&self, batch: &StoredBatch) -> Result<bool, SchedulerError> {
        let anchor = SettlementAnchor::new(self.anchor.anchor, self.anchor.provider());
        let id = U256::from(batch.context.batch_id);
        let committer = self.anchor.committer();
        let on_chain = anchor.getBatch(committer, id).call().await.map_err(chain)?;
        Ok(on_chain.root == batch.root)
    }

    /// The commit transaction of `batch`, without fees, nonce or gas; its blob is computed on a
    /// blocking thread (KZG takes long enough to starve the runtime, lease renewals included).
    pub(super) async fn commit_request(
        &self,
        batch: &StoredBatch,
    ) -> Result<TransactionRequest, SchedulerError> {
        let sidecar = match batch.mode {
            AnchorMode::Blob => {
                let payload = batch.payload.clone();
                let computed = tokio::task::spawn_blocking(move || crate::sidecar(&payload));
                Some(computed.await.map_err(storage)??)
            }
            AnchorMode::Calldata => None,
        };
        self.commit_call(batch, sidecar)
    }

    /// The commit's call (recipient and calldata: what its intent carries), with `sidecar`.
    fn commit_call(
        &self,
        batch: &StoredBatch,
        sidecar: Option<BlobTransactionSidecar>,
    ) -> Result<TransactionRequest, SchedulerError> {
        let anchor = SettlementAnchor::new(self.anchor.anchor, self.anchor.provider());
        let count = u32::try_from(batch.records.len()).map_err(storage)?;
        let (id, context) = (U256::from(batch.context.batch_id), &batch.context);
        let (start, end) = (U48::from(context.period_start), U48::from(context.period_end));
        Ok(match batch.mode {
            AnchorMode::Blob => {
                let call = anchor.commit(id, batch.root, count, batch.total, start, end);
                match sidecar {
                    Some(sidecar) => call.sidecar(sidecar).into_transaction_request(),
                    None => call.into_transaction_request(),
                }
            }
            AnchorMode::Calldata => anchor
                .commitCalldata(
                    id,
                    batch.root,
                    count,
                    batch.total,
                    start,
                    end,
                    batch.payload.clone(),
                )
                .into_transaction_request(),
        })
    }

    /// The blob fee cap of a first send: twice the current blob fee (at least 1 wei), within
    /// the bound — `Some(None)` for a calldata batch, `None` when the fee is above the bound.
    async fn blob_fee_cap(
        &self,
        batch: &StoredBatch,
    ) -> Result<Option<Option<u128>>, SchedulerError> {
        if batch.mode == AnchorMode::Calldata {
            return Ok(Some(None));
        }
        let blob_fee = self.anchor.provider().get_blob_base_fee().await.map_err(chain)?;
        let bound = self.max_blob_fee();
        if blob_fee > bound {
            let id = batch.context.batch_id;
            warn!(batch = id, blob_fee, bound, "blob fee above the bound: the batch waits");
            return Ok(None);
        }
        Ok(Some(Some((blob_fee.max(1) * 2).min(bound.max(1)))))
    }

    /// Commits `batch` once, re-pricing it while stuck; false if the blob fee is above the
    /// bound (it waits).
    pub(super) async fn commit(&self, mut batch: StoredBatch) -> Result<bool, SchedulerError> {
        let id = batch.context.batch_id;
        if batch.stage == BatchStage::Built
            && let Some(done) = self.send_built(&mut batch).await?
        {
            return Ok(done);
        }
        for _ in 0..=MAX_REPRICES {
            let BatchStage::Sent { transaction, mut replaced } = batch.stage.clone() else {
                return Ok(true);
            };
            let mut hashes = replaced.clone();
            hashes.push(transaction.hash);
            let anchor = self.anchor.sender.as_ref();
            if let Some((hash, block, ok)) =
                self.wait_mined_on(anchor, &hashes, self.settings.reprice_after).await?
            {
                if !ok {
                    // Sent again from scratch next round (the anchor refuses a second commit).
                    batch.stage = BatchStage::Built;
                    self.put_batch(&batch).await?;
                    return Err(chain(format!("commit of batch {id} reverted in {hash}")));
                }
                batch.stage = BatchStage::Committed { transaction: hash, block };
                self.record_commit_cost(&mut batch, hash).await;
                self.put_batch(&batch).await?;
                self.committed_metrics(&batch, hash);
                return Ok(true);
            }
            if self.anchored(&batch).await? {
                // Mined under a hash we do not know (a resend cut short by a crash).
                batch.stage = BatchStage::Committed { transaction: transaction.hash, block: 0 };
                self.put_batch(&batch).await?;
                return Ok(true);
            }
            let Some(resent) = self.reprice(&batch, &transaction).await? else {
                return Ok(false);
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
            ::metrics::counter!(crate::metrics::REPRICED, "kind" => "commit").increment(1);
            replaced.push(transaction.hash);
            batch.stage = BatchStage::Sent { transaction: resent, replaced };
            self.put_batch(&batch).await?;
        }
        Err(chain(format!("commit of batch {id} not mined after {MAX_REPRICES} re-pricings")))
    }

    /// The first send of a `Built` batch, recorded as `Sent`. `Some(true)`: it was committed
    /// already (a crash between sending and storing the hash leaves a committed batch `Built`);
    /// `Some(false)`: the blob fee is above the bound, the batch waits; `None`: sent.
    async fn send_built(&self, batch: &mut StoredBatch) -> Result<Option<bool>, SchedulerError> {
        if self.anchored(batch).await? {
            batch.stage = BatchStage::Committed { transaction: B256::ZERO, block: 0 };
            self.put_batch(batch).await?;
            return Ok(Some(true));
        }
        // A previous leader of the key signed this very commit before it died (its intent is
        // committed; it may be pending, or sent again by this leader's recovery): follow it at
        // its nonce, re-pricing it if stuck, never a second commit at another nonce.
        if let Some(transaction) = self.recorded_commit(&self.commit_call(batch, None)?).await? {
            info!(batch = batch.context.batch_id, hash = %transaction.hash, nonce = transaction.nonce, "following the previous leader's commit");
            batch.stage = BatchStage::Sent { transaction, replaced: Vec::new() };
            self.put_batch(batch).await?;
            return Ok(None);
        }
        // Twice the current blob fee, within the bound: room for a rise.
        let Some(cap) = self.blob_fee_cap(batch).await? else { return Ok(Some(false)) };
        let mut request = self.commit_request(batch).await?;
        if let Some(cap) = cap {
            request = request.max_fee_per_blob_gas(cap);
        }
        let transaction = self.anchor.sender.send(request).await.map_err(chain)?;
        batch.stage = BatchStage::Sent { transaction, replaced: Vec::new() };
        self.put_batch(batch).await?;
        Ok(None)
    }

    /// The commit a previous leader signed for `request`'s payload, unless it was mined and
    /// reverted (a commit sent again from scratch after a revert).
    async fn recorded_commit(
        &self,
        request: &TransactionRequest,
    ) -> Result<Option<SentTransaction>, SchedulerError> {
        let Some(recorded) = self.anchor.sender.recorded(request).await.map_err(chain)? else {
            return Ok(None);
        };
        let provider = self.anchor.provider();
        let receipt = provider.get_transaction_receipt(recorded.hash).await.map_err(chain)?;
        Ok(receipt.is_none_or(|r| r.status()).then_some(recorded))
    }

    /// The stuck commit `transaction` sent again: outbid at its nonce, or afresh if the nonce
    /// went to another transaction. `None` when it cannot be outbid within the blob fee bound.
    async fn reprice(
        &self,
        batch: &StoredBatch,
        transaction: &SentTransaction,
    ) -> Result<Option<SentTransaction>, SchedulerError> {
        let provider = self.anchor.provider();
        let mined_nonce =
            provider.get_transaction_count(self.anchor.committer()).await.map_err(chain)?;
        let request = self.commit_request(batch).await?;
        if batch.mode == AnchorMode::Calldata {
            let sender = &self.anchor.sender;
            let sent = if mined_nonce > transaction.nonce {
                sender.send(request).await
            } else {
                sender.resend(transaction, request).await
            };
            return sent.map(Some).map_err(chain);
        }
        let blob_fee = provider.get_blob_base_fee().await.map_err(chain)?;
        let bound = self.max_blob_fee().max(1);
        let previous_cap = transaction.max_fee_per_blob_gas.unwrap_or_default();
        if mined_nonce > transaction.nonce {
            // The nonce went to another transaction and the batch is not committed: send it
            // afresh.
            if blob_fee > bound {
                return Ok(None);
            }
            let cap = (blob_fee.max(1) * 2).min(bound);
            let sent = self.anchor.sender.send(request.max_fee_per_blob_gas(cap)).await;
            return sent.map(Some).map_err(chain);
        }
        let cap = (previous_cap * 2).max(blob_fee.max(1) * 2).min(bound);
        if cap <= previous_cap || blob_fee > bound {
            let id = batch.context.batch_id;
            warn!(
                batch = id,
                blob_fee, bound, "stuck commit cannot be outbid within the bound: waiting"
            );
            return Ok(None);
        }
        let resent =
            self.anchor.sender.resend(transaction, request.max_fee_per_blob_gas(cap)).await;
        resent.map(Some).map_err(chain)
    }

    /// The commit's cost on the anchor chain, from its receipt (left at 0 if it cannot be read:
    /// the batch is committed either way).
    async fn record_commit_cost(&self, batch: &mut StoredBatch, transaction: B256) {
        let receipt = self.anchor.provider().get_transaction_receipt(transaction).await;
        let Ok(Some(receipt)) = receipt else {
            warn!(%transaction, "commit receipt unreadable: its cost is not recorded");
            return;
        };
        ::metrics::gauge!(crate::metrics::COMMIT_GAS).set(receipt.gas_used as f64);
        let blob_gas = receipt.blob_gas_used.unwrap_or_default();
        ::metrics::gauge!(crate::metrics::COMMIT_BLOB_GAS).set(blob_gas as f64);
        let gas_wei = u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price);
        let blob_wei = u128::from(blob_gas).saturating_mul(receipt.blob_gas_price.unwrap_or(0));
        batch.costs.anchor_gas_wei = gas_wei;
        batch.costs.anchor_blob_wei = blob_wei;
        crate::metrics::add_cost("anchor_gas", gas_wei);
        crate::metrics::add_cost("anchor_blob", blob_wei);
    }

    pub(super) fn committed_metrics(&self, batch: &StoredBatch, transaction: B256) {
        ::metrics::counter!(crate::metrics::BATCHES).increment(1);
        ::metrics::gauge!(crate::metrics::RECORDS_PER_BLOB).set(batch.records.len() as f64);
        let (batch_id, records) = (batch.context.batch_id, batch.records.len());
        info!(batch = batch_id, records, %transaction, "settlement batch committed");
    }
}
