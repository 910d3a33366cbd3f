//! Following the chain: reservations settled from mined `UserOperationEvent`s, reopened on
//! reorgs, expired ones released; deposits watched.

use super::*;

impl Paymaster {
    /// The last block this paymaster applied: its durable chain cursor.
    pub fn chain_cursor(&self) -> Result<Option<BlockRef>, PaymasterError> {
        self.shared.cursor.get().map_err(internal)
    }

    /// Settles reservations from mined `UserOperationEvent`s, reopens them on reorgs, releases
    /// expired ones, and watches the deposits, until `cancel`. A block it cannot apply (a gap
    /// after its cursor, a ledger failure that lasts past
    /// [`settled_contracts::APPLY_RETRY_WINDOW`]) ends the loop with the error instead of being
    /// skipped: the node stops, and resumes from the cursor at its next start.
    pub async fn run(
        self,
        mut events: ChainEvents,
        cancel: CancellationToken,
    ) -> Result<(), PaymasterError> {
        let mut last_deposit_check: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                event = events.recv() => event,
            };
            match event {
                Some(ChainEvent::Block(block)) => {
                    if !self.shared.cursor.check_next(&block).map_err(internal)? {
                        continue; // replayed after a restart: settled before it
                    }
                    let applied =
                        apply_until_stored("paymaster", &cancel, || self.apply_block(&block));
                    let Some(applied) = applied.await else { return Ok(()) };
                    applied?;
                    if last_deposit_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_deposit_check = Some(Instant::now());
                        self.check_deposits().await;
                    }
                }
                Some(ChainEvent::Reorg(reorg)) => {
                    self.shared.head.reset();
                    self.shared.cursor.rewind(reorg.ancestor).map_err(internal)?;
                    let removed: Vec<B256> = reorg.removed.iter().map(|b| b.hash).collect();
                    let unsettle = || self.shared.ledger.unsettle(&removed);
                    let reopened = apply_until_stored("paymaster", &cancel, unsettle);
                    let Some(reopened) = reopened.await else { return Ok(()) };
                    let reopened = reopened.map_err(internal)?;
                    if reopened > 0 {
                        info!(reopened, "reorg: sponsorships back to open");
                    }
                }
                None => return Ok(()),
            }
        }
    }

    /// A new block: its `UserOperationEvent`s settle reservations, expired ones are released,
    /// and the cursor advances past it.
    async fn apply_block(&self, block: &settled_contracts::NewBlock) -> Result<(), PaymasterError> {
        let (hash, timestamp) = (block.block.hash, block.timestamp);
        let settled = self.settle_logs(&block.logs, hash, timestamp).await.map_err(internal)?;
        let grace = self.shared.config.expiry_grace_secs;
        let expired = self.shared.ledger.expire(timestamp, grace).await.map_err(internal)?;
        if settled + expired > 0 {
            debug!(block = block.block.number, settled, expired, "paymaster ledger updated");
        }
        self.shared.cursor.advance(block.block).map_err(internal)?;
        self.publish_ledger().await;
        Ok(())
    }

    pub(super) async fn settle_logs(
        &self,
        logs: &[alloy::rpc::types::Log],
        block: B256,
        timestamp: u64,
    ) -> Result<usize, crate::ledger::LedgerError> {
        use v07::EntryPoint::UserOperationEvent;
        let mut settled = 0;
        for log in logs {
            if log.topic0() != Some(&UserOperationEvent::SIGNATURE_HASH) {
                continue;
            }
            let Ok((version, ours)) = self.paymaster_for(log.address()) else { continue };
            let Ok(event) = UserOperationEvent::decode_log_data(log.data()) else { continue };
            if event.paymaster != ours {
                continue;
            }
            let op = crate::ledger_store::SettledOp {
                user_op_hash: event.userOpHash,
                sender: event.sender,
                entry_point: version.canonical_address(),
                actual_cost: event.actualGasCost,
                block,
                timestamp,
            };
            self.shared.ledger.settle(op).await?;
            ::metrics::counter!(metrics::SPONSORED_OPS).increment(1);
            settled += 1;
        }
        Ok(settled)
    }

    pub(super) async fn check_deposits(&self) {
        let accounts =
            match paymaster_accounts(&self.shared.provider, &self.shared.config.paymasters).await {
                Ok(accounts) => accounts,
                Err(error) => {
                    warn!(%error, "could not read the paymaster deposits");
                    return;
                }
            };
        for account in accounts {
            let label = account.entry_point.to_string();
            ::metrics::gauge!(metrics::DEPOSIT_WEI, "entry_point" => label.clone())
                .set(wei_f64(account.deposit));
            ::metrics::gauge!(metrics::STAKE_WEI, "entry_point" => label.clone())
                .set(wei_f64(account.stake));
            let low = account.deposit < self.shared.config.low_deposit_wei;
            ::metrics::gauge!(metrics::DEPOSIT_LOW, "entry_point" => label).set(if low {
                1.0
            } else {
                0.0
            });
            if low {
                warn!(
                    paymaster = %account.paymaster,
                    deposit = %account.deposit,
                    threshold = %self.shared.config.low_deposit_wei,
                    "paymaster deposit is low: top it up with `settled paymaster deposit`"
                );
            }
            if !account.staked {
                warn!(paymaster = %account.paymaster, "paymaster is not staked: bundlers will refuse its ops");
            }
        }
    }
}
