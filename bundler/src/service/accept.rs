//! Accepting ops: sanity checks, first validation with the ERC-7562 rules, reputation and
//! mempool limits, persisted before the hash is returned; estimation and gas prices.

use super::*;

impl Bundler {
    /// `eth_sendUserOperation`: sanity checks, first validation, mempool rules; the op's hash.
    pub async fn send(
        &self,
        op: UserOperation,
        entry_point: Address,
    ) -> Result<B256, BundlerError> {
        ::metrics::counter!(metrics::OPS_RECEIVED).increment(1);
        let result = match self.leading() {
            true => self.accept(op, entry_point, None).await,
            false => self.hand_over(op, entry_point).await,
        };
        match &result {
            Ok(_) => ::metrics::counter!(metrics::OPS_ACCEPTED).increment(1),
            Err(error) => {
                let code = crate::rpc::error_code(error).to_string();
                ::metrics::counter!(metrics::OPS_REJECTED, "code" => code).increment(1);
            }
        }
        ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
        result
    }

    /// Judges `op` (answering submission `answers`, if another node handed it over) and
    /// stores it.
    pub(super) async fn accept(
        &self,
        op: UserOperation,
        entry_point: Address,
        answers: Option<i64>,
    ) -> Result<B256, BundlerError> {
        let version = self.version(entry_point)?;
        let packed = op.pack()?;
        let (state, context) = self.head().await?;
        self.sanity_check(&op, &packed, &context)?;
        self.check_l1_fee(&op, &packed, version, &state, &context).await?;
        let overrides = match &op.eip7702_auth {
            Some(auth) => SimOverrides::with_authorization(auth.clone()),
            None => SimOverrides::default(),
        };
        let delegate = op.eip7702_auth.as_ref().map(|a| a.address);
        let hash = packed.hash(version, self.shared.chain_id, delegate);
        let paymaster = packed.paymaster();
        let started = std::time::Instant::now();
        let validated = {
            let (state, packed, overrides) = (state.clone(), packed.clone(), overrides.clone());
            self.simulate(move |sim| {
                sim.simulate_validation(&state, &context, version, &packed, &overrides)
            })
            .await?
        };
        ::metrics::histogram!(metrics::VALIDATION_SECONDS).record(started.elapsed().as_secs_f64());
        let outcome = validated.map_err(|e| BundlerError::from_sim(e, paymaster))?;
        self.check_outcome(&outcome, &context, paymaster)?;
        let staked = |info: &settled_sim::StakeInfo| {
            self.shared.config.params.is_staked(info.stake, info.unstake_delay_sec)
        };
        let entry = PoolEntry {
            hash,
            entry_point: version,
            op,
            staked: StakedEntities {
                sender: staked(&outcome.sender_info),
                factory: staked(&outcome.factory_info),
                paymaster: staked(&outcome.paymaster_info),
            },
            code_hashes: outcome.trace.code_hashes.clone(),
            valid_until: outcome.account.valid_until.min(outcome.paymaster.valid_until),
            accepted_at_block: context.number,
        };
        let charged = entry.charged_entities();
        let deposit = match paymaster {
            Some(paymaster) => Some((paymaster, self.deposit_of(version, paymaster).await?)),
            None => None,
        };
        let displaced = self.admit(version, entry.clone(), &packed, deposit)?;
        let displaced_hashes: Vec<B256> = displaced.iter().map(|old| old.hash).collect();
        // Stored before the hash is returned: an accepted op survives a crash (and, on a shared
        // store, the leader's loss). Refused by the store, it leaves the pool again.
        if let Err(error) = self.shared.store.admit(&entry, &displaced_hashes, answers).await {
            // Nothing of it was stored: the pool goes back to what the store holds.
            let mut pool = self.shared.pool.lock().map_err(storage_error)?;
            pool.remove(&hash);
            for old in &displaced {
                let _ = pool.add(PoolEntry::clone(old), usize::MAX);
            }
            return Err(error.into());
        }
        self.charge(version, &charged, Reputation::seen);
        for old in &displaced {
            // GREP-050: a replaced op's entities are charged once, for the op that replaced it.
            if old.op.sender == packed.sender && old.op.nonce == packed.nonce {
                self.charge(version, &old.charged_entities(), Reputation::unseen);
            }
        }
        self.shared.accepted.notify_one();
        debug!(%hash, sender = %packed.sender, "UserOperation accepted");
        Ok(hash)
    }

    /// Takes `entry` into the pool under one lock: the paymaster's deposit covers its pooled
    /// ops (EREP-010), reputation, then the mempool rules. The ops it displaced.
    fn admit(
        &self,
        version: EntryPointVersion,
        entry: PoolEntry,
        packed: &PackedUserOperation,
        deposit: Option<(Address, U256)>,
    ) -> Result<Vec<std::sync::Arc<PoolEntry>>, BundlerError> {
        let entities: Vec<(&'static str, Address, bool)> = entry.entities().collect();
        let mut pool = self.shared.pool.lock().map_err(storage_error)?;
        if let Some((paymaster, deposit)) = deposit {
            // EREP-010: the deposit covers every pooled op the paymaster pays for.
            let committed =
                pool.paymaster_commitment(version, paymaster, (packed.sender, packed.nonce));
            if deposit < committed.saturating_add(packed.max_cost()) {
                return Err(BundlerError::PaymasterDepositTooLow(paymaster));
            }
        }
        self.check_reputation(&pool, version, &entities)?;
        let allowance = match entry.op.paymaster {
            Some(paymaster) => {
                self.shared.reputation.read(|r| r.unstaked_allowance(version, paymaster))
            }
            None => usize::MAX,
        };
        pool.add(entry, allowance)
            .map_err(|e| BundlerError::from_pool(e, &self.shared.config.params))
    }

    /// Applies `change` (seen, unseen) to each of `entities`' counters.
    pub(super) fn charge(
        &self,
        version: EntryPointVersion,
        entities: &[Address],
        change: fn(&mut Reputation, EntryPointVersion, Address) -> ReputationCounts,
    ) {
        for address in entities {
            self.shared.reputation.update(version, *address, change);
        }
    }

    /// GREP-010 and GREP-020 for an op's `entities`: none banned, and a throttled one has fewer
    /// than `THROTTLED_ENTITY_MEMPOOL_COUNT` ops in the pool.
    pub(super) fn check_reputation(
        &self,
        pool: &Mempool,
        version: EntryPointVersion,
        entities: &[(&'static str, Address, bool)],
    ) -> Result<(), BundlerError> {
        for &(entity, address, _) in entities {
            let status = self.shared.reputation.read(|r| r.status(version, address));
            let refused = match status {
                ReputationStatus::Ok => false,
                ReputationStatus::Banned => true,
                ReputationStatus::Throttled => {
                    pool.referencing(version, address).len()
                        >= self.shared.config.params.throttled_entity_mempool_count
                }
            };
            if refused {
                return Err(BundlerError::Reputation { entity, address, status: status.as_str() });
            }
        }
        Ok(())
    }

    pub(super) fn sanity_check(
        &self,
        op: &UserOperation,
        packed: &PackedUserOperation,
        context: &BlockContext,
    ) -> Result<(), BundlerError> {
        let invalid = |m: String| Err(BundlerError::InvalidField(m));
        let params = &self.shared.config.params;
        let max_verification = params.max_verification_gas;
        if packed.verification_gas_limit() > u128::from(max_verification) {
            return invalid(format!("verificationGasLimit above {max_verification}"));
        }
        if let Some((pm_verification, _)) = packed.paymaster_gas_limits()
            && pm_verification > u128::from(max_verification)
        {
            return invalid(format!("paymasterVerificationGasLimit above {max_verification}"));
        }
        let required = pre_verification_gas(
            packed,
            op.eip7702_auth.is_some(),
            params.pre_verification_overhead_gas,
        );
        if packed.preVerificationGas < U256::from(required) {
            return invalid(format!(
                "preVerificationGas {} below the required {required}",
                packed.preVerificationGas
            ));
        }
        if packed.call_gas_limit() < u128::from(settled_sim::MIN_CALL_GAS_LIMIT) {
            return invalid(format!("callGasLimit below {}", settled_sim::MIN_CALL_GAS_LIMIT));
        }
        if packed.max_priority_fee_per_gas() > packed.max_fee_per_gas() {
            return invalid("maxPriorityFeePerGas above maxFeePerGas".into());
        }
        if packed.max_fee_per_gas() < u128::from(context.base_fee) {
            return invalid(format!(
                "maxFeePerGas {} below the block's base fee {}",
                packed.max_fee_per_gas(),
                context.base_fee
            ));
        }
        Ok(())
    }

    /// OP stack: the op's preVerificationGas must pay the L1 data fee of its share of a bundle
    /// at its own gas price (within the configured tolerance), or the bundle would pay it.
    async fn check_l1_fee(
        &self,
        op: &UserOperation,
        packed: &PackedUserOperation,
        version: EntryPointVersion,
        state: &BlockState,
        context: &BlockContext,
    ) -> Result<(), BundlerError> {
        let config = &self.shared.config;
        if !config.chain.has_l1_data_fee() {
            return Ok(());
        }
        let overhead = config.params.pre_verification_overhead_gas;
        let has_authorization = op.eip7702_auth.is_some();
        let (state, priced, context) = (state.clone(), packed.clone(), *context);
        let required = self
            .simulate(move |sim| {
                sim.required_pre_verification(
                    &state,
                    &context,
                    version,
                    &priced,
                    has_authorization,
                    overhead,
                )
            })
            .await?
            .map_err(|e| BundlerError::Internal(format!("L1 fee: {e}")))?;
        let floor = required.with_tolerance(config.l1_fee_tolerance_percent);
        if packed.preVerificationGas >= U256::from(floor) {
            return Ok(());
        }
        Err(BundlerError::InvalidField(format!(
            "preVerificationGas {} cannot pay the op's L1 data fee: {} needed ({} for calldata \
             and overhead + {} for the L1 data fee of {} wei at {} wei/gas; {}% tolerance: at \
             least {floor})",
            packed.preVerificationGas,
            required.total(),
            required.calldata_gas,
            required.l1_gas,
            required.l1_fee_wei,
            required.gas_price,
            config.l1_fee_tolerance_percent,
        )))
    }

    pub(super) fn check_outcome(
        &self,
        outcome: &ValidationOutcome,
        context: &BlockContext,
        paymaster: Option<Address>,
    ) -> Result<(), BundlerError> {
        if outcome.account.signature_failed {
            return Err(BundlerError::InvalidSignature);
        }
        if outcome.paymaster.signature_failed {
            return Err(BundlerError::EntryPointRejected {
                reason: "AA34 signature error".into(),
                paymaster,
            });
        }
        for (data, who) in [(&outcome.account, None), (&outcome.paymaster, paymaster)] {
            let expires_soon = data.valid_until < context.timestamp + MIN_VALIDITY_SECONDS;
            if data.valid_after > context.timestamp || expires_soon {
                return Err(BundlerError::OutOfTimeRange {
                    valid_after: data.valid_after,
                    valid_until: data.valid_until,
                    paymaster: who,
                });
            }
            if data.aggregator.is_some() {
                return Err(BundlerError::InvalidField("aggregators are not supported".into()));
            }
        }
        Ok(())
    }

    /// `eth_estimateUserOperationGas`.
    pub async fn estimate(
        &self,
        op: UserOperation,
        entry_point: Address,
        state_override: Option<StateOverride>,
    ) -> Result<GasEstimate, BundlerError> {
        let version = self.version(entry_point)?;
        let packed = op.pack()?;
        let paymaster = packed.paymaster();
        let (state, context) = self.head().await?;
        let mut overrides = SimOverrides::with_state(state_override.unwrap_or_default());
        overrides.eip7702_auth = op.eip7702_auth.clone();
        self.simulate(move |sim| sim.estimate_gas(&state, &context, version, &packed, &overrides))
            .await?
            .map_err(|e| BundlerError::from_sim(e, paymaster))
    }

    /// `settled_getUserOperationGasPrice`: the node's priority fee at 100/125/150%, each with a
    /// max fee of twice the head's base fee on top (room for six full blocks of base-fee rise),
    /// never below what the bundler itself requires.
    pub async fn gas_prices(&self) -> Result<GasPrices, BundlerError> {
        let (_, context) = self.head().await?;
        let priority =
            self.shared.provider.get_max_priority_fee_per_gas().await.map_err(rpc_error)?;
        let level = |percent: u128| {
            let priority = priority.saturating_mul(percent) / 100;
            GasPrice {
                max_fee_per_gas: U256::from(
                    u128::from(context.base_fee).saturating_mul(2).saturating_add(priority),
                ),
                max_priority_fee_per_gas: U256::from(priority),
            }
        };
        Ok(GasPrices { slow: level(100), standard: level(125), fast: level(150) })
    }
}
