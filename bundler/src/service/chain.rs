//! Following the chain: mined ops indexed (and unindexed on reorgs), reputation and expiries
//! per block, the loop that drives bundling.

use super::*;

impl Bundler {
    /// Indexes the `UserOperationEvent`s in `logs` and takes those ops out of the pool.
    pub(super) fn index_logs(&self, logs: &[Log]) -> Result<usize, BundlerError> {
        let mut indexed = 0;
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
                    self.shared
                        .reputation
                        .update(version, address, Reputation::included)
                        .map_err(storage_error)?;
                }
            }
            let op = match pooled {
                Some(entry) => Some(entry.op.clone()),
                None => self.mined(hash)?.and_then(|m| m.op),
            };
            let mined = MinedOp {
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
            };
            let value = serde_json::to_vec(&mined).map_err(storage_error)?;
            self.shared.mined_tree.insert(hash, value).map_err(storage_error)?;
            self.shared
                .mined_by_block
                .insert([block_hash.as_slice(), hash.as_slice()].concat(), &[])
                .map_err(storage_error)?;
            self.shared.pool_tree.remove(hash).map_err(storage_error)?;
            ::metrics::counter!(metrics::OPS_MINED).increment(1);
            indexed += 1;
        }
        Ok(indexed)
    }

    /// Ops mined in blocks a reorg removed go back to the pool (and out of the index).
    pub(super) fn unindex_blocks(&self, removed: &[B256]) -> Result<usize, BundlerError> {
        let mut requeued = 0;
        let mut keys = Vec::new();
        for block in removed {
            for item in self.shared.mined_by_block.scan_prefix(block) {
                keys.push(item.map_err(storage_error)?.0);
            }
        }
        for key in keys {
            self.shared.mined_by_block.remove(&key).map_err(storage_error)?;
            let Some(hash) = key.get(32..).map(B256::from_slice) else { continue };
            let Some(value) = self.shared.mined_tree.get(hash).map_err(storage_error)? else {
                continue;
            };
            let Ok(mined) = serde_json::from_slice::<MinedOp>(&value) else { continue };
            // Indexed again in a block that stayed: not this reorg's.
            if !removed.contains(&mined.block_hash) {
                continue;
            }
            self.shared.mined_tree.remove(hash).map_err(storage_error)?;
            let (Some(op), Some(version)) =
                (mined.op, EntryPointVersion::from_address(mined.entry_point))
            else {
                continue;
            };
            let entry = PoolEntry {
                hash: mined.hash,
                entry_point: version,
                op,
                staked: StakedEntities::default(),
                code_hashes: Default::default(),
                valid_until: u64::MAX,
                accepted_at_block: mined.block_number,
            };
            let value = serde_json::to_vec(&entry).map_err(storage_error)?;
            if self.shared.pool.lock().map_err(storage_error)?.add(entry, usize::MAX).is_ok() {
                self.shared.pool_tree.insert(mined.hash, value).map_err(storage_error)?;
                requeued += 1;
            }
        }
        Ok(requeued)
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
    pub(super) fn ban(
        &self,
        version: EntryPointVersion,
        address: Address,
        why: &str,
    ) -> Result<(), BundlerError> {
        warn!(%address, why, "entity banned: failed bundle creation after the second validation");
        self.shared
            .reputation
            .update(version, address, Reputation::penalize)
            .map_err(storage_error)?;
        self.drop_banned(version, address)
    }

    /// GREP-010: the ops of `version` that use `address` leave the pool.
    pub(super) fn drop_banned(
        &self,
        version: EntryPointVersion,
        address: Address,
    ) -> Result<(), BundlerError> {
        let hashes = self.shared.pool.lock().map_err(storage_error)?.referencing(version, address);
        for hash in hashes {
            self.drop_op(hash, "an entity is banned")?;
        }
        Ok(())
    }

    pub(super) fn drop_op(&self, hash: B256, why: &str) -> Result<(), BundlerError> {
        warn!(%hash, why, "UserOperation dropped from the mempool");
        let reason = why.split(':').next().unwrap_or(why).to_string();
        ::metrics::counter!(metrics::OPS_DROPPED, "reason" => reason).increment(1);
        self.shared.pool.lock().map_err(storage_error)?.remove(&hash);
        self.shared.pool_tree.remove(hash).map_err(storage_error)?;
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
                    if let Err(error) = self.shared.reputation.decay() {
                        warn!(%error, "reputation decay failed");
                    }
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
                    self.apply_block(&block)?;
                    self.bundle_if_auto().await;
                }
                Some(ChainEvent::Reorg(reorg)) => self.apply_reorg(&reorg)?,
                None => return Ok(()),
            }
        }
    }

    /// In auto mode, bundles the pending ops not in a bundle already sent.
    async fn bundle_if_auto(&self) {
        if self.mode() == BundlingMode::Auto
            && self.pool_len() > 0
            && let Err(error) = self.start_bundles().await
        {
            warn!(%error, "bundling failed");
        }
    }

    /// A new block: our bundles' blocks it replaced give their ops back, its `UserOperationEvent`s
    /// are indexed, expired and long-throttled ops leave, and the cursor advances past it. A
    /// failure ends the bundler's loop (the node stops) rather than skip the block.
    fn apply_block(&self, block: &settled_contracts::NewBlock) -> Result<(), BundlerError> {
        let replaced = self.replaced_blocks(block.block.number, block.block.hash);
        if !replaced.is_empty() {
            self.forget_nonce();
            let requeued = self.unindex_blocks(&replaced)?;
            info!(requeued, "replaced block: UserOperations back in the mempool");
        }
        self.index_logs(&block.logs)?;
        let expired = self.shared.pool.lock().map(|p| p.expired(block.timestamp));
        for hash in expired.unwrap_or_default() {
            let _ = self.drop_op(hash, "validUntil passed");
        }
        for hash in self.throttled_too_long(block.block.number) {
            let _ = self.drop_op(hash, "throttled entity: live blocks passed");
        }
        ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
        self.shared.cursor.advance(block.block).map_err(storage_error)
    }

    /// A reorg: the cursor goes back to the common ancestor and the removed blocks' ops return
    /// to the mempool.
    fn apply_reorg(&self, reorg: &settled_contracts::Reorg) -> Result<(), BundlerError> {
        self.forget_nonce();
        self.shared.cursor.rewind(reorg.ancestor).map_err(storage_error)?;
        let removed: Vec<B256> = reorg.removed.iter().map(|b| b.hash).collect();
        let requeued = self.unindex_blocks(&removed)?;
        info!(requeued, "reorg: mined UserOperations back in the mempool");
        self.shared.head.reset();
        Ok(())
    }
}
