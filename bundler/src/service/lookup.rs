//! Lookups and the debug namespace: ops by hash, receipts, the mempool and reputation dumps,
//! stake status.

use super::*;

impl Bundler {
    /// `eth_getUserOperationByHash`.
    pub async fn op_by_hash(
        &self,
        hash: B256,
    ) -> Result<Option<UserOperationByHash>, BundlerError> {
        let pooled = self.shared.pool.lock().map_err(storage_error)?.get(&hash);
        // A node that does not lead finds pending ops in the shared pool.
        let pooled = match pooled {
            Some(entry) => Some(entry),
            None if !self.leading() => self.shared.store.pool_entry(hash).await?.map(Arc::new),
            None => None,
        };
        if let Some(entry) = pooled {
            return Ok(Some(UserOperationByHash {
                user_operation: entry.op.clone(),
                entry_point: entry.entry_point.canonical_address().into(),
                block_number: None,
                block_hash: None,
                transaction_hash: None,
            }));
        }
        let Some(mined) = self.mined(hash).await? else { return Ok(None) };
        let op = match mined.op.clone() {
            Some(op) => Some(op),
            None => self.op_from_bundle(&mined).await?,
        };
        Ok(op.map(|user_operation| UserOperationByHash {
            user_operation,
            entry_point: mined.entry_point.into(),
            block_number: Some(U256::from(mined.block_number)),
            block_hash: Some(mined.block_hash),
            transaction_hash: Some(mined.transaction_hash),
        }))
    }

    /// The op of a bundle someone else sent: from the transaction's `handleOps` input.
    pub(super) async fn op_from_bundle(
        &self,
        mined: &MinedOp,
    ) -> Result<Option<UserOperation>, BundlerError> {
        let Some(tx) = self
            .shared
            .provider
            .get_transaction_by_hash(mined.transaction_hash)
            .await
            .map_err(rpc_error)?
        else {
            return Ok(None);
        };
        let Ok(call) = v07::IEntryPoint::handleOpsCall::abi_decode(tx.inner.input()) else {
            return Ok(None);
        };
        let authorization = |sender: Address| {
            tx.inner.authorization_list().and_then(|list| {
                list.iter().find(|a| a.recover_authority().ok() == Some(sender)).cloned()
            })
        };
        Ok(call
            .ops
            .iter()
            .find(|op| op.sender == mined.sender && op.nonce == mined.nonce)
            .map(|op| UserOperation::unpack(op, authorization(op.sender))))
    }

    pub(super) async fn mined(&self, hash: B256) -> Result<Option<MinedOp>, BundlerError> {
        Ok(self.shared.store.mined(hash).await?)
    }

    /// `eth_getUserOperationReceipt`.
    pub async fn receipt(&self, hash: B256) -> Result<Option<UserOperationReceipt>, BundlerError> {
        let Some(mined) = self.mined(hash).await? else { return Ok(None) };
        let Some(receipt) = self
            .shared
            .provider
            .get_transaction_receipt(mined.transaction_hash)
            .await
            .map_err(rpc_error)?
        else {
            return Ok(None);
        };
        let logs = receipt.inner.logs();
        let position = logs.iter().position(|l| l.log_index == Some(mined.log_index));
        let Some(position) = position else { return Ok(None) };
        // The op's logs: after the previous op's event (or BeforeExecution), up to its own.
        let boundary = |log: &Log| {
            log.address() == mined.entry_point
                && matches!(
                    log.topics().first(),
                    Some(&v07::IEntryPoint::UserOperationEvent::SIGNATURE_HASH)
                        | Some(&v07::IEntryPoint::BeforeExecution::SIGNATURE_HASH)
                )
        };
        let start = logs[..position].iter().rposition(boundary).map_or(0, |i| i + 1);
        let own: Vec<Log> = logs[start..position].to_vec();
        let reason = own.iter().find_map(|log| {
            let decoded = log.log_decode::<v07::IEntryPoint::UserOperationRevertReason>().ok()?;
            (decoded.inner.userOpHash == hash).then(|| decoded.inner.data.revertReason.clone())
        });
        Ok(Some(UserOperationReceipt {
            user_op_hash: hash,
            entry_point: mined.entry_point.into(),
            sender: mined.sender,
            nonce: mined.nonce,
            paymaster: mined.paymaster,
            actual_gas_cost: mined.actual_gas_cost,
            actual_gas_used: mined.actual_gas_used,
            success: mined.success,
            reason,
            logs: own,
            receipt,
        }))
    }

    /// `debug_bundler_dumpMempool`.
    pub fn dump_mempool(&self, entry_point: Address) -> Result<Vec<UserOperation>, BundlerError> {
        let version = self.version(entry_point)?;
        let pool = self.shared.pool.lock().map_err(storage_error)?;
        Ok(pool.best(version, 0).iter().map(|e| e.op.clone()).collect())
    }

    /// `debug_bundler_clearMempool` / `clearState`.
    pub async fn clear_mempool(&self) -> Result<(), BundlerError> {
        self.require_leading()?;
        self.shared.store.clear_pool().await?;
        self.shared.pool.lock().map_err(storage_error)?.clear();
        Ok(())
    }

    /// `debug_bundler_addUserOps`: puts `ops` in `entry_point`'s mempool without validating
    /// them (the mempool rules still apply); they are validated before bundling like any other.
    pub async fn add_unvalidated(
        &self,
        ops: Vec<UserOperation>,
        entry_point: Address,
    ) -> Result<(), BundlerError> {
        let version = self.version(entry_point)?;
        self.require_leading()?;
        let head = self.shared.provider.get_block_number().await.map_err(rpc_error)?;
        for op in ops {
            let packed = op.pack()?;
            let delegate = op.eip7702_auth.as_ref().map(|a| a.address);
            let hash = packed.hash(version, self.shared.chain_id, delegate);
            let entry = PoolEntry {
                hash,
                entry_point: version,
                op,
                staked: StakedEntities::default(),
                code_hashes: Default::default(),
                valid_until: u64::MAX,
                accepted_at_block: head,
            };
            let displaced = self
                .shared
                .pool
                .lock()
                .map_err(storage_error)?
                .add(entry.clone(), usize::MAX)
                .map_err(BundlerError::Mempool)?;
            let displaced: Vec<B256> = displaced.iter().map(|old| old.hash).collect();
            if let Err(error) = self.shared.store.admit(&entry, &displaced, None).await {
                self.shared.pool.lock().map_err(storage_error)?.remove(&hash);
                return Err(error.into());
            }
        }
        ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
        self.shared.accepted.notify_one();
        Ok(())
    }

    /// `debug_bundler_setReputation`: sets counters; an entity they ban leaves the pool.
    pub async fn set_reputation(
        &self,
        entries: &[(Address, ReputationCounts)],
        entry_point: Address,
    ) -> Result<(), BundlerError> {
        let version = self.version(entry_point)?;
        self.require_leading()?;
        for &(address, counts) in entries {
            let status =
                self.shared.reputation.update(version, address, |r, ep, a| r.set(ep, a, counts));
            if status == ReputationStatus::Banned {
                self.drop_banned(version, address).await?;
            }
        }
        Ok(())
    }

    /// `debug_bundler_dumpReputation`: every entity seen with its counters and status.
    pub fn dump_reputation(
        &self,
        entry_point: Address,
    ) -> Result<Vec<(Address, ReputationCounts, ReputationStatus)>, BundlerError> {
        let version = self.version(entry_point)?;
        Ok(self.shared.reputation.read(|r| r.dump(version)))
    }

    /// `debug_bundler_clearReputation` (and `clearState`).
    pub async fn clear_reputation(&self) -> Result<(), BundlerError> {
        self.require_leading()?;
        self.shared.reputation.clear();
        self.shared.reputation.written().await;
        Ok(())
    }

    /// `debug_bundler_getStakeStatus`: `address`'s stake at `entry_point` and whether it counts
    /// as staked (ERC-7562 `MIN_STAKE_VALUE`, `MIN_UNSTAKE_DELAY`).
    pub async fn stake_status(
        &self,
        address: Address,
        entry_point: Address,
    ) -> Result<StakeStatus, BundlerError> {
        self.version(entry_point)?;
        let info = v07::IEntryPoint::new(entry_point, &self.shared.provider)
            .getDepositInfo(address)
            .call()
            .await
            .map_err(rpc_error)?;
        let (stake, delay) = (U256::from(info.stake), U256::from(info.unstakeDelaySec));
        Ok(StakeStatus {
            stake_info: StakeInfo { addr: address, stake, unstake_delay_sec: delay },
            is_staked: self.shared.config.params.is_staked(stake, delay),
        })
    }

    /// `address`'s deposit at `version`'s EntryPoint, at the chain head.
    pub(super) async fn deposit_of(
        &self,
        version: EntryPointVersion,
        address: Address,
    ) -> Result<U256, BundlerError> {
        let info = v07::IEntryPoint::new(version.canonical_address(), &self.shared.provider)
            .getDepositInfo(address)
            .call()
            .await
            .map_err(rpc_error)?;
        Ok(U256::from(info.deposit))
    }
}
