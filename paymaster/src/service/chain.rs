//! Following the chain: reservations settled from mined `UserOperationEvent`s, reopened on
//! reorgs, expired ones released; deposits watched.

use super::*;

impl Paymaster {
    /// The last block this paymaster applied: its durable chain cursor.
    pub fn chain_cursor(&self) -> Result<Option<BlockRef>, PaymasterError> {
        self.shared.cursor.get().map_err(internal)
    }

    /// Settles reservations from mined `UserOperationEvent`s, reopens them on reorgs, releases
    /// expired ones, and watches the deposits, until `cancel`.
    pub async fn run(self, mut events: ChainEvents, cancel: CancellationToken) {
        let mut last_deposit_check: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Some(ChainEvent::Block(block)) => {
                    if self.shared.cursor.applied(&block.block).unwrap_or(false) {
                        continue; // replayed after a restart: settled before it
                    }
                    let settled = self.settle_logs(&block.logs, block.block.hash, block.timestamp);
                    let expired = self
                        .shared
                        .ledger
                        .expire(block.timestamp, self.shared.config.expiry_grace_secs);
                    match (settled, expired) {
                        (Ok(settled), Ok(expired)) if settled + expired > 0 => {
                            debug!(
                                block = block.block.number,
                                settled, expired, "paymaster ledger updated"
                            );
                        }
                        (Err(error), _) | (_, Err(error)) => {
                            warn!(%error, block = block.block.number, "paymaster ledger update failed");
                        }
                        _ => {}
                    }
                    if let Err(error) = self.shared.cursor.advance(block.block) {
                        warn!(%error, "paymaster chain cursor not saved");
                    }
                    self.publish_ledger();
                    if last_deposit_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_deposit_check = Some(Instant::now());
                        self.check_deposits().await;
                    }
                }
                Some(ChainEvent::Reorg(reorg)) => {
                    self.shared.head.reset();
                    if let Err(error) = self.shared.cursor.rewind(reorg.ancestor) {
                        warn!(%error, "paymaster chain cursor not rewound");
                    }
                    let removed: Vec<B256> = reorg.removed.iter().map(|b| b.hash).collect();
                    match self.shared.ledger.unsettle(&removed) {
                        Ok(reopened) if reopened > 0 => {
                            info!(reopened, "reorg: sponsorships back to open");
                        }
                        Ok(_) => {}
                        Err(error) => warn!(%error, "paymaster reorg handling failed"),
                    }
                }
                None => return,
            }
        }
    }

    pub(super) fn settle_logs(
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
            self.shared.ledger.settle(
                event.userOpHash,
                event.sender,
                version.canonical_address(),
                event.actualGasCost,
                block,
                timestamp,
            )?;
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
