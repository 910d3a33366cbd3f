//! Following the chain: mined ops indexed (and unindexed on reorgs), reputation and expiries
//! per block, the loop that drives bundling.

use super::*;

impl Bundler {
    /// Indexes the `UserOperationEvent`s in `logs` and takes those ops out of the pool.
    pub(super) async fn index_logs(&self, logs: &[Log]) -> Result<usize, BundlerError> {
        let mut mined = Vec::new();
        for log in logs {
            let Some(version) = EntryPointVersion::from_address(log.address()) else { continue };
            let Ok(event) = log.log_decode::<v07::IEntryPoint::UserOperationEvent>() else {
                continue;
            };
            let (Some(block_number), Some(block_hash), Some(transaction_hash), Some(log_index)) =
                (log.block_number, log.block_hash, log.transaction_hash, log.log_index)
            else {
                continue;
            };
            let event = event.inner.data;
            let hash = event.userOpHash;
            let pooled = self.shared.pool.lock().map_err(storage_error)?.remove(&hash);
            if let Some(entry) = &pooled {
                // opsIncluded counts only ops this bundler saw (and so counted in opsSeen).
                for (_, address, _) in entry.entities() {
                    self.shared.reputation.update(version, address, Reputation::included);
                }
            }
            let op = match pooled {
                Some(entry) => Some(entry.op.clone()),
                // A node that does not lead finds the op in the shared pool.
                None => match self.shared.store.pool_entry(hash).await? {
                    Some(entry) => Some(entry.op),
                    None => self.mined(hash).await?.and_then(|m| m.op),
                },
            };
            mined.push(MinedOp {
                hash,
                entry_point: version.canonical_address(),
                op,
                sender: event.sender,
                nonce: event.nonce,
                paymaster: event.paymaster,
                actual_gas_cost: event.actualGasCost,
                actual_gas_used: event.actualGasUsed,
                success: event.success,
                block_number,
                block_hash,
                transaction_hash,
                log_index,
            });
        }
        // A block without ops touches no store (a shared one may be out of reach a moment).
        if !mined.is_empty() {
            self.shared.store.index_mined(&mined).await?;
        }
        ::metrics::counter!(metrics::OPS_MINED).increment(mined.len() as u64);
        Ok(mined.len())
    }

    /// Ops mined in blocks a reorg removed go back to the pool (and out of the index). On a
    /// shared store another node may have moved them first: the leader takes the pool's new
    /// entries from the store either way.
    pub(super) async fn unindex_blocks(&self, removed: &[B256]) -> Result<usize, BundlerError> {
        let moved = self.shared.store.unindex_blocks(removed).await?.len();
        if self.leading() {
            self.restore_pool().await?;
        }
        Ok(moved)
    }

    /// Our bundles' blocks at `number` other than `hash` (the follower saw another block there),
    /// and forgets every unconfirmed block up to `number`.
    pub(super) fn replaced_blocks(&self, number: u64, hash: B256) -> Vec<B256> {
        let Ok(mut unconfirmed) = self.shared.unconfirmed.lock() else { return Vec::new() };
        let replaced = unconfirmed
            .iter()
            .filter(|(n, block)| *n == number && *block != hash)
            .map(|(_, block)| *block)
            .collect();
        unconfirmed.retain(|(n, _)| *n > number);
        replaced
    }

    /// GREP-020: ops with a throttled entity stay at most `THROTTLED_ENTITY_LIVE_BLOCKS` blocks.
    pub(super) fn throttled_too_long(&self, head: u64) -> Vec<B256> {
        let Ok(pool) = self.shared.pool.lock() else { return Vec::new() };
        pool.entries()
            .filter(|e| e.accepted_at_block + THROTTLED_ENTITY_LIVE_BLOCKS < head)
            .filter(|e| {
                e.entities().any(|(_, address, _)| {
                    self.shared.reputation.read(|r| r.status(e.entry_point, address))
                        == ReputationStatus::Throttled
                })
            })
            .map(|e| e.hash)
            .collect()
    }

    /// Bans `address` (GREP-040) and removes every op that uses it (GREP-010).
    pub(super) async fn ban(
        &self,
        version: EntryPointVersion,
        address: Address,
        why: &str,
    ) -> Result<(), BundlerError> {
        warn!(%address, why, "entity banned: failed bundle creation after the second validation");
        self.shared.reputation.update(version, address, Reputation::penalize);
        self.drop_banned(version, address).await
    }

    /// GREP-010: the ops of `version` that use `address` leave the pool.
    pub(super) async fn drop_banned(
        &self,
        version: EntryPointVersion,
        address: Address,
    ) -> Result<(), BundlerError> {
        let hashes = self.shared.pool.lock().map_err(storage_error)?.referencing(version, address);
        for hash in hashes {
            self.drop_op(hash, "an entity is banned").await?;
        }
        Ok(())
    }

    pub(super) async fn drop_op(&self, hash: B256, why: &str) -> Result<(), BundlerError> {
        warn!(%hash, why, "UserOperation dropped from the mempool");
        let reason = why.split(':').next().unwrap_or(why).to_string();
        ::metrics::counter!(metrics::OPS_DROPPED, "reason" => reason).increment(1);
        self.shared.pool.lock().map_err(storage_error)?.remove(&hash);
        self.shared.store.remove(&[hash]).await?;
        Ok(())
    }

    /// The last block this bundler applied: its durable chain cursor.
    pub fn chain_cursor(&self) -> Result<Option<BlockRef>, BundlerError> {
        self.shared.cursor.get().map_err(storage_error)
    }

    /// Follows the chain until `cancel`: indexes mined ops, re-queues reorged ones, and in auto
    /// mode sends a bundle after each new block (and each `auto_interval`) with ops pending that
    /// are not in a bundle already sent.
    pub async fn run(
        self,
        mut events: ChainEvents,
        cancel: CancellationToken,
    ) -> Result<(), BundlerError> {
        let mut ticks = tokio::time::interval(self.shared.config.auto_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let decay_every = self.shared.config.reputation_decay_interval;
        let mut decay =
            tokio::time::interval_at(tokio::time::Instant::now() + decay_every, decay_every);
        let mut leader = self.shared.leader.clone();
        let mut leadership_changes = true;
        let mut submissions = tokio::time::interval(leader::SUBMISSION_POLL);
        submissions.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.shared.accepted.notified() => {
                    // A moment for more ops to arrive: fewer, fuller bundles for the same block.
                    tokio::time::sleep(ACCEPT_BATCHING_DELAY).await;
                    self.bundle_if_auto().await;
                    continue;
                }
                _ = decay.tick() => {
                    if self.leading() {
                        self.shared.reputation.decay();
                    }
                    continue;
                }
                changed = leader.changed(), if leadership_changes => {
                    match changed {
                        Ok(()) => self.follow_leadership(&mut leader).await?,
                        // A fixed leadership (the embedded store): nothing will change.
                        Err(_) => leadership_changes = false,
                    }
                    continue;
                }
                _ = submissions.tick(), if self.leading() => {
                    self.serve_submissions().await;
                    continue;
                }
                event = events.recv() => event,
                _ = ticks.tick() => {
                    self.bundle_if_auto().await;
                    continue;
                }
            };
            match event {
                Some(ChainEvent::Block(block)) => {
                    self.shared.head_number.send_replace(block.block.number);
                    if !self.shared.cursor.check_next(&block).map_err(storage_error)? {
                        continue; // replayed after a restart: applied before it
                    }
                    let replaced = self.replaced_blocks(block.block.number, block.block.hash);
                    let applied = apply_until_stored("bundler", &cancel, || {
                        self.apply_block(&block, &replaced)
                    });
                    let Some(applied) = applied.await else { return Ok(()) };
                    applied?;
                    self.bundle_if_auto().await;
                }
                Some(ChainEvent::Reorg(reorg)) => {
                    let applied =
                        apply_until_stored("bundler", &cancel, || self.apply_reorg(&reorg));
                    let Some(applied) = applied.await else { return Ok(()) };
                    applied?;
                }
                None => return Ok(()),
            }
        }
    }

    /// In auto mode, bundles the pending ops not in a bundle already sent.
    async fn bundle_if_auto(&self) {
        if self.mode() == BundlingMode::Auto
            && self.leading()
            && self.pool_len() > 0
            && let Err(error) = self.start_bundles().await
        {
            warn!(%error, "bundling failed");
        }
    }

    /// A new block: our bundles' blocks it `replaced` give their ops back, its
    /// `UserOperationEvent`s are indexed, expired and long-throttled ops leave, and the cursor
    /// advances past it. A failure is tried again (a store out of reach), and past
    /// [`settled_contracts::APPLY_RETRY_WINDOW`] ends the bundler's loop (the node stops) rather
    /// than skip the block.
    async fn apply_block(
        &self,
        block: &settled_contracts::NewBlock,
        replaced: &[B256],
    ) -> Result<(), BundlerError> {
        if !replaced.is_empty() {
            self.forget_nonce();
            let requeued = self.unindex_blocks(replaced).await?;
            info!(requeued, "replaced block: UserOperations back in the mempool");
        }
        self.index_logs(&block.logs).await?;
        let expired = self.shared.pool.lock().map(|p| p.expired(block.timestamp));
        for hash in expired.unwrap_or_default() {
            let _ = self.drop_op(hash, "validUntil passed").await;
        }
        for hash in self.throttled_too_long(block.block.number) {
            let _ = self.drop_op(hash, "throttled entity: live blocks passed").await;
        }
        ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
        self.shared.cursor.advance(block.block).map_err(storage_error)
    }

    /// A reorg: the cursor goes back to the common ancestor and the removed blocks' ops return
    /// to the mempool.
    async fn apply_reorg(&self, reorg: &settled_contracts::Reorg) -> Result<(), BundlerError> {
        self.forget_nonce();
        self.shared.cursor.rewind(reorg.ancestor).map_err(storage_error)?;
        let removed: Vec<B256> = reorg.removed.iter().map(|b| b.hash).collect();
        let requeued = self.unindex_blocks(&removed).await?;
        info!(requeued, "reorg: mined UserOperations back in the mempool");
        self.shared.head.reset();
        Ok(())
    }
}
