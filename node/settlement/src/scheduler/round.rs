//! A round's first steps: the period's withdrawal (sent once, confirmed, re-priced), the
//! index caught up to its block, and the period's records built into batches.

use super::*;

impl Settler {
    /// Sends the period's withdrawals (unless a restarted round already did) and waits for them.
    pub(super) async fn withdraw(
        &self,
        mut open: OpenPeriod,
    ) -> Result<OpenPeriod, SchedulerError> {
        if open.withdrawals.is_empty() {
            // What is owed as of the head: the index must have applied it.
            let head = self.provider.get_block_number().await.map_err(chain)?;
            self.wait_for_index(head).await?;
            let now = self.index.cursor().await?.map_or(0, |c| c.timestamp);
            let mut owed: Vec<(Address, Address, u64)> = self
                .index
                .list(StreamSelector::All, None, usize::MAX, |s| {
                    s.operator == self.operator && !s.closed && s.covered_debt(now) > 0
                })
                .await?
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
                self.put_open_period(&open).await?;
                ::metrics::counter!(crate::metrics::WITHDRAWALS).increment(1);
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
            self.put_open_period(&open).await?;
        }
        Ok(open)
    }

    /// Waits for withdrawal `hash`, re-pricing it while it is pending: the hash mined, or
    /// `None` if the node dropped it (its streams are paid next period).
    pub(super) async fn confirm_withdrawal(
        &self,
        mut hash: B256,
    ) -> Result<Option<B256>, SchedulerError> {
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
            ::metrics::counter!(crate::metrics::REPRICED, "kind" => "withdrawal").increment(1);
            hash = resent.hash;
            sent.push(hash);
        }
        Err(chain(format!("withdrawal {hash} not mined after {MAX_REPRICES} re-pricings")))
    }

    /// The first of `hashes` mined on the streams' chain within `within`: its hash, block and
    /// status.
    pub(super) async fn wait_mined(
        &self,
        hashes: &[B256],
        within: Duration,
    ) -> Result<Option<(B256, u64, bool)>, SchedulerError> {
        self.wait_mined_on(&self.sender, hashes, within).await
    }

    /// The same on `sender`'s chain.
    pub(super) async fn wait_mined_on(
        &self,
        sender: &TransactionSender,
        hashes: &[B256],
        within: Duration,
    ) -> Result<Option<(B256, u64, bool)>, SchedulerError> {
        let receipt = sender.wait_mined(hashes, within).await.map_err(chain)?;
        Ok(receipt.map(|r| (r.transaction_hash, r.block_number.unwrap_or_default(), r.status())))
    }

    /// The block that ends the period: the last withdrawal's, or the head.
    pub(super) async fn end_block(&self, open: &OpenPeriod) -> Result<u64, SchedulerError> {
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

    pub(super) async fn wait_for_index(&self, block: u64) -> Result<(), SchedulerError> {
        if self.index.wait_for_block(block, Duration::from_secs(60)).await {
            return Ok(());
        }
        Err(chain(format!("the stream index did not reach block {block}")))
    }

    /// The period's records, batches and blobs, stored with the advanced cursor.
    pub(super) async fn build(
        &self,
        period_end: u64,
        open: OpenPeriod,
    ) -> Result<(), SchedulerError> {
        let cursor = self.cursor().await?;
        let start = cursor.period_end;
        let index = self.index.clone();
        let operator = self.operator;
        // From here on reports for the period are refused: what is read now is final.
        let fence = self.fence()?;
        let usage = self.store.close_usage(&fence, start, period_end).await?;
        let records = period_records(&index, operator, start, period_end, &usage).await?;
        let mut next = PeriodCursor { period_end: period_end.max(start), ..cursor };
        let first = BatchContext {
            chain_id: self.chain_id,
            vault: self.vault,
            batch_id: cursor.next_batch_id,
            period_start: start,
            period_end: next.period_end,
        };
        let mut batches = if records.is_empty() {
            Vec::new()
        } else {
            let withdrawals = open.withdrawals.clone();
            let (mode, anchor_chain_id) = (self.anchor.mode, self.anchor.chain_id);
            tokio::task::spawn_blocking(move || {
                build_batches(first, records, withdrawals, mode, anchor_chain_id)
            })
            .await
            .map_err(storage)??
        };
        self.share_withdrawal_costs(&open.withdrawals, &mut batches).await;
        next.next_batch_id += batches.len() as u64;
        // The batches and the cursor change together; the open period goes with them.
        self.store.close_period(&fence, &batches, next).await
    }
}

impl Settler {
    /// The period's withdrawal costs (L2 gas, and the L1 data fee on OP stack), shared among
    /// its batches by record count; metrics. A receipt that cannot be read counts 0 (and is
    /// logged): the records are what matters.
    async fn share_withdrawal_costs(&self, withdrawals: &[B256], batches: &mut [StoredBatch]) {
        let (mut gas_wei, mut l1_wei) = (0u128, 0u128);
        for hash in withdrawals {
            match self.withdrawal_cost(*hash).await {
                Ok((gas, l1)) => {
                    gas_wei = gas_wei.saturating_add(gas);
                    l1_wei = l1_wei.saturating_add(l1);
                }
                Err(error) => warn!(%hash, %error, "withdrawal cost unreadable: counted as 0"),
            }
        }
        crate::metrics::add_cost("withdrawal_gas", gas_wei);
        crate::metrics::add_cost("withdrawal_l1_fee", l1_wei);
        let counts: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
        let gas = anchor::split_by_count(gas_wei, &counts);
        let l1 = anchor::split_by_count(l1_wei, &counts);
        for ((batch, gas), l1) in batches.iter_mut().zip(gas).zip(l1) {
            batch.costs.withdrawal_gas_wei = gas;
            batch.costs.withdrawal_l1_fee_wei = l1;
        }
    }

    /// A mined withdrawal's (gas used × effective gas price, L1 data fee). The L1 fee is the
    /// receipt's `l1Fee` where the node reports it (OP-stack nodes do); on an OP-stack chain
    /// whose node does not, the oracle's price of the signed transaction at the head.
    async fn withdrawal_cost(&self, hash: B256) -> Result<(u128, u128), SchedulerError> {
        let receipt: serde_json::Value = self
            .provider
            .raw_request("eth_getTransactionReceipt".into(), (hash,))
            .await
            .map_err(chain)?;
        let quantity = |name: &str| -> u128 {
            receipt[name]
                .as_str()
                .and_then(|hex| u128::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0)
        };
        let gas = quantity("gasUsed").saturating_mul(quantity("effectiveGasPrice"));
        let l1_fee = if receipt.get("l1Fee").is_some_and(|v| !v.is_null()) {
            quantity("l1Fee")
        } else if self.kind.has_l1_data_fee() {
            self.oracle_l1_fee(hash).await?
        } else {
            0
        };
        Ok((gas, l1_fee))
    }

    async fn oracle_l1_fee(&self, hash: B256) -> Result<u128, SchedulerError> {
        use alloy::eips::Encodable2718;
        let tx = self
            .provider
            .get_transaction_by_hash(hash)
            .await
            .map_err(chain)?
            .ok_or_else(|| chain(format!("no transaction {hash}")))?;
        let raw = tx.inner.inner().encoded_2718();
        let oracle = settled_contracts::GasPriceOracle::new(
            settled_contracts::OP_GAS_PRICE_ORACLE,
            &self.provider,
        );
        let fee = oracle.getL1Fee(raw.into()).call().await.map_err(chain)?;
        Ok(u128::try_from(fee).unwrap_or(u128::MAX))
    }
}

/// Whether a stream accrues in this state.
pub(super) fn running(state: Option<&StreamState>) -> bool {
    state.is_some_and(|s| !s.paused && !s.closed)
}

/// The records of `operator`'s streams for the period `(start, end]`: what each paid its payee
/// (from the index's history of `withdrawn`), the seconds it ran and its usage fold.
pub(super) async fn period_records(
    index: &StreamIndex,
    operator: Address,
    start: u64,
    end: u64,
    usage: &std::collections::BTreeMap<u64, B256>,
) -> Result<Vec<SettlementRecord>, SchedulerError> {
    let mut records = Vec::new();
    for (id, latest) in
        index.list(StreamSelector::All, None, usize::MAX, |s| s.operator == operator).await?
    {
        let before = index.get_at(id, start).await?;
        // Closed before the period: nothing more to say.
        if before.as_ref().is_some_and(|s| s.closed) {
            continue;
        }
        let changes = index.changes_between(id, start, end).await?;
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
/// In calldata mode the payload is split as for blobs too: a batch stays one blob's worth, so
/// a calldata commit stays well within a block.
pub(super) fn build_batches(
    first: BatchContext,
    records: Vec<SettlementRecord>,
    withdrawals: Vec<B256>,
    mode: AnchorMode,
    anchor_chain_id: u64,
) -> Result<Vec<StoredBatch>, SchedulerError> {
    split_into_blobs(first, records)?
        .into_iter()
        .map(|(context, records)| {
            let tree = MerkleTree::new(records.iter().map(|r| r.leaf(&context)).collect());
            let payload = encode_payload(&context, &records)?;
            let (commitment, proof, versioned_hash) = match mode {
                AnchorMode::Blob => blob_of(&payload)?,
                AnchorMode::Calldata => {
                    (Bytes::new(), Bytes::new(), alloy::primitives::keccak256(&payload))
                }
            };
            Ok(StoredBatch {
                context,
                total: records.iter().map(|r| r.amount).sum(),
                root: tree.root(),
                payload: payload.into(),
                commitment,
                proof,
                versioned_hash,
                withdrawals: withdrawals.clone(),
                stage: BatchStage::Built,
                records,
                mode,
                anchor_chain_id,
                costs: BatchCosts::default(),
            })
        })
        .collect()
}

/// The KZG commitment, proof and versioned hash of `payload`'s blob.
fn blob_of(payload: &[u8]) -> Result<(Bytes, Bytes, B256), SchedulerError> {
    let sidecar = sidecar(payload)?;
    let versioned_hash = sidecar
        .versioned_hash_for_blob(0)
        .ok_or_else(|| SettlementError::Kzg("no versioned hash".into()))?;
    let bytes = |b: &Bytes48| Bytes::copy_from_slice(b.as_slice());
    Ok((bytes(&sidecar.commitments[0]), bytes(&sidecar.proofs[0]), versioned_hash))
}
