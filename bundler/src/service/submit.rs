//! Submitting a bundle: the next nonce, recorded durably before the broadcast, then replaced
//! with higher fees until mined (up to the fee ceiling) or given up.

use super::*;

/// A sent bundle's watcher: resolves to the mined transaction's hash.
pub(super) type Submission = tokio::task::JoinHandle<Result<B256, BundlerError>>;

/// A bundle transaction sent and not yet mined, with every hash it was sent under.
pub(super) struct SentBundle {
    pub(super) tx: TransactionRequest,
    pub(super) nonce: u64,
    pub(super) max_fee: u128,
    pub(super) priority_fee: u128,
    pub(super) hashes: Vec<B256>,
    pub(super) deadline: tokio::time::Instant,
    /// The ops it carries, with their senders (its record in the store).
    pub(super) ops: Vec<(B256, Address)>,
}

impl SentBundle {
    /// Both fees up by at least 10%, or to `current` (the node's estimate) if higher, never
    /// above `ceiling`. False when the fees are at the ceiling already: nothing to resend.
    pub(super) fn raise_fees(
        &mut self,
        current: Option<alloy::eips::eip1559::Eip1559Estimation>,
        ceiling: u128,
    ) -> bool {
        if self.max_fee >= ceiling {
            return false;
        }
        let max_fee = bump_fee(self.max_fee).max(current.map_or(0, |f| f.max_fee_per_gas));
        let priority_fee =
            bump_fee(self.priority_fee).max(current.map_or(0, |f| f.max_priority_fee_per_gas));
        self.max_fee = max_fee.min(ceiling);
        self.priority_fee = priority_fee.min(self.max_fee);
        true
    }
}

/// A replacement transaction's fee: at least 10% more (nodes refuse less), rounded up.
pub(super) fn bump_fee(fee: u128) -> u128 {
    fee.saturating_add(fee.div_ceil(10).max(1))
}

impl Bundler {
    /// Sends a bundle transaction carrying `ops` with the next nonce (after any bundle still
    /// pending) at the node's fee estimate, recorded durably first: the start of its
    /// [`Bundler::until_mined`].
    pub(super) async fn send_first(
        &self,
        tx: TransactionRequest,
        ops: &[(B256, Address)],
    ) -> Result<SentBundle, BundlerError> {
        let provider = &self.shared.provider;
        let pending = provider
            .get_transaction_count(self.shared.bundler_address)
            .pending()
            .await
            .map_err(rpc_error)?;
        let local = self.shared.next_nonce.lock().map_err(storage_error)?.unwrap_or_default();
        let nonce = pending.max(local);
        let fees = provider.estimate_eip1559_fees().await.map_err(rpc_error)?;
        let max_fee = fees.max_fee_per_gas.min(self.shared.config.max_fee_per_gas);
        let mut sent = SentBundle {
            tx: tx.with_nonce(nonce),
            nonce,
            max_fee,
            priority_fee: fees.max_priority_fee_per_gas.min(max_fee),
            hashes: Vec::new(),
            deadline: tokio::time::Instant::now() + self.shared.config.inclusion_timeout,
            ops: ops.to_vec(),
        };
        if let Err(error) = self.send_attempt(&mut sent, true).await {
            // Perhaps sent after all (a transport error): hold its ops until the nonce settles.
            self.hold_until_settled(nonce, ops.to_vec());
            return Err(error);
        }
        *self.shared.next_nonce.lock().map_err(storage_error)? = Some(nonce + 1);
        Ok(sent)
    }

    /// Holds `ops` (out of new bundles) until the chain has settled our transaction at `nonce`:
    /// mined (the follower then takes its ops out of the mempool), or nothing pending at that
    /// nonce (never broadcast, or dropped: they are bundled again), or the inclusion timeout.
    pub(super) fn hold_until_settled(&self, nonce: u64, ops: Vec<(B256, Address)>) {
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            in_flight.extend(ops.iter().copied());
        }
        let bundler = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + bundler.shared.config.inclusion_timeout;
            let provider = &bundler.shared.provider;
            let address = bundler.shared.bundler_address;
            while tokio::time::Instant::now() < deadline {
                let latest = provider.get_transaction_count(address).latest().await;
                let pending = provider.get_transaction_count(address).pending().await;
                match (latest, pending) {
                    (Ok(latest), Ok(pending)) if latest > nonce || pending <= nonce => break,
                    _ => tokio::time::sleep(RECEIPT_POLL_FALLBACK).await,
                }
            }
            if let Ok(mut in_flight) = bundler.shared.in_flight.lock() {
                for (hash, _) in &ops {
                    in_flight.remove(hash);
                }
            }
            bundler.forget_sent(nonce, &ops).await;
            debug!(nonce, ops = ops.len(), "bundle nonce settled; its ops released");
        });
    }

    /// The chain settled `nonce`: its record goes, if it still holds `ops`.
    pub(super) async fn forget_sent(&self, nonce: u64, ops: &[(B256, Address)]) {
        if let Err(error) = self.shared.store.remove_sent(nonce, ops).await {
            warn!(nonce, %error, "forgetting a settled bundle's record");
        }
    }

    /// After a restart or a takeover: each bundle recorded as (perhaps) sent is sent again —
    /// the same bytes at the same nonce (the node may never have had them), re-priced there if
    /// the node refuses them as underpriced — and holds its ops until the nonce settles.
    pub(super) async fn hold_recorded_bundles(&self) -> Result<(), BundlerError> {
        for (nonce, sent) in self.shared.store.sent().await? {
            info!(nonce, ops = sent.ops.len(), "a recorded bundle: broadcast again, its ops wait");
            if let Some(raw) = &sent.raw
                && let Err(error) = self.send_recorded(nonce, &sent.ops, raw).await
            {
                warn!(nonce, %error, "sending a recorded bundle again");
            }
            self.hold_until_settled(nonce, sent.ops);
        }
        Ok(())
    }

    /// Sends recorded bundle `raw` again; underpriced, a replacement at its nonce with the same
    /// calldata (recorded first). Already known or its nonce used: nothing to do.
    async fn send_recorded(
        &self,
        nonce: u64,
        ops: &[(B256, Address)],
        raw: &Bytes,
    ) -> Result<(), BundlerError> {
        let sender = &self.shared.sender;
        match sender.broadcast_raw(raw).await {
            Err(error) if error.refusal() == Some(Refusal::Underpriced) => {
                let (replacement, raw) = sender.sign_replacement(raw).await.map_err(rpc_error)?;
                let record = SentOps { ops: ops.to_vec(), raw: Some(raw.clone()) };
                self.shared.store.record_sent(nonce, &record).await?;
                sender.broadcast_raw(&raw).await.map_err(rpc_error)?;
                info!(nonce, hash = %replacement.hash, "a recorded bundle re-priced at its nonce");
                Ok(())
            }
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Waits until `sent` is mined. One not mined within `fee_bump_after_blocks` blocks is
    /// replaced (same nonce) with both fees raised by at least 10%, or to the node's current
    /// estimate if higher, up to `max_fee_per_gas`; the wait ends at `inclusion_timeout`. The
    /// mined transaction's hash and receipt.
    ///
    /// Blocks are counted from the chain's real head when the bundle was sent, not from the
    /// follower's position: a follower replaying old blocks after a restart reports many
    /// "new" blocks in a fraction of a second, none of which says the bundle was passed over.
    pub(super) async fn until_mined(
        &self,
        mut sent: SentBundle,
    ) -> Result<(B256, alloy::rpc::types::TransactionReceipt), BundlerError> {
        let provider = &self.shared.provider;
        let config = &self.shared.config;
        // Receipts are looked for when the chain follower reports a block (or every second), not
        // in a tight loop: dozens of bundles can be in flight.
        let mut heads = self.shared.head_number.subscribe();
        loop {
            let sent_at = provider.get_block_number().await.map_err(rpc_error)?;
            loop {
                for hash in &sent.hashes {
                    if let Some(receipt) =
                        provider.get_transaction_receipt(*hash).await.map_err(rpc_error)?
                    {
                        return Ok((*hash, receipt));
                    }
                }
                if tokio::time::Instant::now() >= sent.deadline {
                    ::metrics::counter!(metrics::BUNDLES_FAILED).increment(1);
                    // Its nonce may be free again: ask the node next time.
                    self.forget_nonce();
                    return Err(BundlerError::Internal(format!(
                        "bundle not mined within {:?} (sent {:?})",
                        config.inclusion_timeout, sent.hashes
                    )));
                }
                if self.head_number(&mut heads).await? >= sent_at + config.fee_bump_after_blocks {
                    break;
                }
                tokio::select! {
                    _ = heads.changed() => {}
                    _ = tokio::time::sleep(RECEIPT_POLL_FALLBACK) => {}
                }
            }
            if !sent.raise_fees(provider.estimate_eip1559_fees().await.ok(), config.max_fee_per_gas)
            {
                // At the ceiling: wait for the chain (or the deadline), never pay more.
                warn!(nonce = sent.nonce, max_fee = sent.max_fee, "bundle at the fee ceiling");
                tokio::select! {
                    _ = heads.changed() => {}
                    _ = tokio::time::sleep(RECEIPT_POLL_FALLBACK) => {}
                }
                continue;
            }
            ::metrics::counter!(metrics::BUNDLES_REPLACED).increment(1);
            warn!(
                nonce = sent.nonce,
                max_fee = sent.max_fee,
                priority_fee = sent.priority_fee,
                "bundle not mined: replacing it with higher fees"
            );
            self.send_attempt(&mut sent, false).await?;
        }
    }

    /// The latest block the chain follower reported (the node's head before it reported any).
    pub(super) async fn head_number(
        &self,
        heads: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<u64, BundlerError> {
        let reported = *heads.borrow_and_update();
        match reported {
            0 => self.shared.provider.get_block_number().await.map_err(rpc_error),
            number => Ok(number),
        }
    }

    /// The next bundle's nonce comes from the node again (a bundle given up, a reorg).
    pub(super) fn forget_nonce(&self) {
        if let Ok(mut next) = self.shared.next_nonce.lock() {
            *next = None;
        }
    }

    /// Signs `sent` at its current fees and records it (ops and bytes) before the broadcast:
    /// the ops of a bundle sent just before a kill -9 (or a lost lease) are held by whoever leads
    /// next, who sends these bytes again, until the chain has settled this nonce — never put in
    /// a second bundle at the next nonce.
    async fn sign_and_record(&self, sent: &SentBundle) -> Result<(B256, Bytes), BundlerError> {
        let attempt = sent
            .tx
            .clone()
            .with_max_fee_per_gas(sent.max_fee)
            .with_max_priority_fee_per_gas(sent.priority_fee);
        let (hash, raw) = self.shared.sender.sign_exact(attempt).await.map_err(rpc_error)?;
        let record = SentOps { ops: sent.ops.clone(), raw: Some(raw.clone()) };
        self.shared.store.record_sent(sent.nonce, &record).await?;
        Ok((hash, raw))
    }

    /// Sends `sent` at its current fees; a node that prices it out at once (below the next
    /// base fee, an underpriced replacement) gets it again with higher fees.
    pub(super) async fn send_attempt(
        &self,
        sent: &mut SentBundle,
        first: bool,
    ) -> Result<(), BundlerError> {
        let provider = &self.shared.provider;
        loop {
            let (hash, raw) = self.sign_and_record(sent).await?;
            match self.shared.sender.broadcast_raw(&raw).await {
                Ok(()) => {
                    ::metrics::counter!(metrics::BUNDLES_SENT).increment(1);
                    info!(
                        %hash,
                        nonce = sent.nonce,
                        max_fee = sent.max_fee,
                        priority_fee = sent.priority_fee,
                        "bundle sent"
                    );
                    sent.hashes.push(hash);
                    return Ok(());
                }
                Err(error)
                    if error.refusal() == Some(Refusal::Underpriced)
                        && tokio::time::Instant::now() < sent.deadline =>
                {
                    let ceiling = self.shared.config.max_fee_per_gas;
                    if !sent.raise_fees(provider.estimate_eip1559_fees().await.ok(), ceiling) {
                        return Err(BundlerError::Internal(format!(
                            "bundle priced out at the fee ceiling ({ceiling} wei): {error}"
                        )));
                    }
                    warn!(%error, "bundle priced out: raising its fees");
                    tokio::time::sleep(REPRICE_DELAY).await;
                }
                Err(error) if first => return Err(rpc_error(error)),
                // Nonce too low: an earlier attempt was mined meanwhile; already known: the
                // node has this attempt. Either way the bundle's wait goes on.
                Err(error) => {
                    warn!(%error, "bundle replacement not accepted");
                    return Ok(());
                }
            }
        }
    }
}
