//! Building bundles: second validation (COD-010), a revm run of the whole bundle that drops
//! failing ops, then submission; mined ops indexed from the receipt.

use super::{submit::Submission, *};

/// What the second validation of a pooled op found.
pub(super) struct Revalidated {
    signature_failed: bool,
    /// Contracts whose storage the validation touched.
    storage_of: std::collections::BTreeSet<Address>,
}

/// Validates `entry` again at the head (blocking): the op must still pass, and the code it ran
/// at acceptance must be unchanged (COD-010).
pub(super) fn revalidate(
    sim: &Simulator,
    state: &BlockState,
    context: &BlockContext,
    entry: &PoolEntry,
) -> Result<Revalidated, SimError> {
    let overrides = match &entry.op.eip7702_auth {
        Some(auth) => SimOverrides::with_authorization(auth.clone()),
        None => SimOverrides::default(),
    };
    let outcome =
        sim.simulate_validation(state, context, entry.entry_point, &entry.packed(), &overrides)?;
    let seen = settled_sim::ValidationTrace {
        code_hashes: entry.code_hashes.clone(),
        ..Default::default()
    };
    let changed = changed_code(state, &seen)?;
    if !changed.is_empty() && !entry.code_hashes.is_empty() {
        return Err(SimError::Rejected {
            reason: format!("COD-010: code changed at {changed:?}"),
            inner: None,
        });
    }
    let storage_of = outcome
        .trace
        .entities
        .values()
        .flat_map(|trace| trace.storage.iter().filter(|s| !s.transient).map(|s| s.contract))
        .collect();
    Ok(Revalidated { signature_failed: outcome.account.signature_failed, storage_of })
}

impl Bundler {
    /// Builds, checks and submits one bundle per EntryPoint with pending ops, and waits for
    /// each to be mined. Returns the mined bundles' transaction hashes.
    pub async fn send_bundles(&self) -> Result<Vec<B256>, BundlerError> {
        let mut mined = Vec::new();
        for submission in self.start_bundles().await? {
            mined.push(
                submission
                    .await
                    .map_err(|e| BundlerError::Internal(format!("bundle submission: {e}")))??,
            );
        }
        Ok(mined)
    }

    /// Builds, checks and sends one bundle per EntryPoint with pending ops not already in a sent
    /// bundle; each is then watched until mined (fee bumps included) by its own task. Bundles
    /// are pipelined: the next one goes out while earlier ones wait for their block.
    pub(super) async fn start_bundles(&self) -> Result<Vec<Submission>, BundlerError> {
        self.require_leading()?;
        let _one_at_a_time = self.shared.bundling.lock().await;
        let mut started = Vec::new();
        for version in self.shared.config.entry_points.clone() {
            if let Some(submission) = self.send_bundle(version).await? {
                started.push(submission);
            }
        }
        Ok(started)
    }

    /// Builds a bundle of `version`'s best ops and sends it: the pick (one op per sender,
    /// within the bundle's gas, reputation), the second validation, the whole bundle in revm.
    /// `None` when there is nothing to bundle.
    pub(super) async fn send_bundle(
        &self,
        version: EntryPointVersion,
    ) -> Result<Option<Submission>, BundlerError> {
        if self.pool_len() == 0 {
            return Ok(None);
        }
        let building = std::time::Instant::now();
        let (state, context) = self.head().await?;
        let candidates = self.candidates(version, &context)?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let picked = self.pick(version, candidates, &context).await?;
        let bundle = self.revalidate_picked(version, picked, &state, &context).await?;
        let revalidated = building.elapsed();
        let Some((candidate, bundle, simulated)) =
            self.simulate_until_clean(version, bundle, &state, &context).await?
        else {
            return Ok(None);
        };
        if !self.pays_its_way(&candidate, &simulated, &state, &context).await? {
            return Ok(None);
        }
        let gas_spent = simulated.gas_spent;
        let tx = self.bundle_transaction(&candidate, gas_spent, &context);
        let built = building.elapsed();
        ::metrics::histogram!(metrics::BUNDLE_BUILD_SECONDS).record(built.as_secs_f64());
        info!(
            ops = bundle.len(),
            ?version,
            revalidation_ms = revalidated.as_millis() as u64,
            build_ms = built.as_millis() as u64,
            "bundle built"
        );
        let ops: Vec<(B256, Address)> = bundle.iter().map(|e| (e.hash, e.op.sender)).collect();
        self.submit_built(tx, ops).await.map(Some)
    }

    /// The pool's best ops for `version`, leaving out those of senders with an op in a sent
    /// bundle: they would fail their nonce check until that bundle is mined.
    fn candidates(
        &self,
        version: EntryPointVersion,
        context: &BlockContext,
    ) -> Result<Vec<Arc<PoolEntry>>, BundlerError> {
        let pool = self.shared.pool.lock().map_err(storage_error)?;
        let in_flight = self.shared.in_flight.lock().map_err(storage_error)?;
        Ok(pool
            .best(version, context.base_fee)
            .into_iter()
            .filter(|e| {
                !in_flight.contains_key(&e.hash)
                    && !in_flight.values().any(|sender| *sender == e.op.sender)
            })
            .collect())
    }

    /// One op per sender, within the bundle's gas and op count, not expiring; banned entities'
    /// ops leave the pool (GREP-010), throttled ones get a few per bundle (GREP-020).
    async fn pick(
        &self,
        version: EntryPointVersion,
        candidates: Vec<Arc<PoolEntry>>,
        context: &BlockContext,
    ) -> Result<Vec<Arc<PoolEntry>>, BundlerError> {
        let mut picked = Vec::new();
        let mut senders = std::collections::HashSet::new();
        let mut throttled_uses: HashMap<Address, usize> = HashMap::new();
        let mut gas = 0u128;
        'candidates: for entry in candidates {
            if picked.len() >= self.shared.config.max_bundle_ops {
                break;
            }
            if entry.valid_until < context.timestamp + MIN_VALIDITY_SECONDS {
                self.drop_op(entry.hash, "expired").await?;
                continue;
            }
            for (_, address, _) in entry.entities() {
                match self.shared.reputation.read(|r| r.status(version, address)) {
                    ReputationStatus::Ok => {}
                    ReputationStatus::Banned => {
                        self.drop_op(entry.hash, "an entity is banned").await?;
                        continue 'candidates;
                    }
                    ReputationStatus::Throttled => {
                        let uses = throttled_uses.entry(address).or_default();
                        if *uses >= THROTTLED_ENTITY_BUNDLE_COUNT {
                            continue 'candidates;
                        }
                        *uses += 1;
                    }
                }
            }
            let op_gas = entry.packed().total_gas_limit();
            if gas + op_gas > u128::from(self.shared.config.max_bundle_gas)
                || !senders.insert(entry.op.sender)
            {
                continue;
            }
            gas += op_gas;
            picked.push(entry);
        }
        Ok(picked)
    }

    /// The second validation, against the head, with COD-010, on both cores (ops are
    /// independent). Ops that fail it leave the pool, their failure charged to the culprit;
    /// an op touching another bundled sender's storage waits for a later bundle (its validation
    /// could change when that sender's op runs first).
    async fn revalidate_picked(
        &self,
        version: EntryPointVersion,
        picked: Vec<Arc<PoolEntry>>,
        state: &BlockState,
        context: &BlockContext,
    ) -> Result<Vec<Arc<PoolEntry>>, BundlerError> {
        let context = *context;
        let revalidate_all = |entries: Vec<Arc<PoolEntry>>| {
            let state = state.clone();
            self.simulate(move |sim| {
                entries
                    .iter()
                    .map(|entry| revalidate(sim, &state, &context, entry))
                    .collect::<Vec<Result<Revalidated, SimError>>>()
            })
        };
        let half = picked.len().div_ceil(2);
        let (first, second) = tokio::join!(
            revalidate_all(picked[..half].to_vec()),
            revalidate_all(picked[half..].to_vec())
        );
        let checks = first?.into_iter().chain(second?);
        let senders: std::collections::HashSet<Address> =
            picked.iter().map(|e| e.op.sender).collect();
        let mut bundle = Vec::new();
        for (entry, check) in picked.into_iter().zip(checks) {
            match check {
                Ok(checked) if checked.signature_failed => {
                    self.drop_op(entry.hash, "signature no longer valid").await?
                }
                Ok(checked)
                    if checked
                        .storage_of
                        .iter()
                        .any(|c| *c != entry.op.sender && senders.contains(c)) =>
                {
                    debug!(hash = %entry.hash, "touches another bundled sender's storage; deferred");
                }
                Ok(_) => bundle.push(entry),
                Err(SimError::Fork(error)) => {
                    return Err(BundlerError::Internal(error.to_string()));
                }
                Err(error) => {
                    // The op's charges are taken back and only the culprit is charged
                    // (EREP-015: never the paymaster for the account's or factory's failure).
                    if let SimError::Rejected { reason, .. } = &error {
                        self.charge(version, &entry.charged_entities(), Reputation::unseen);
                        self.charge(version, &[culprit(&entry, reason)], Reputation::seen);
                    }
                    self.drop_op(entry.hash, &error.to_string()).await?
                }
            }
        }
        Ok(bundle)
    }

    /// The third validation: the whole `handleOps` in revm with the EntryPoint's real code (its
    /// gas is the transaction's). An op the EntryPoint rejects is dropped, its culprit banned
    /// (GREP-040, with every op that uses it), and the rest run again. The clean bundle, its
    /// entries and the gas it spent; `None` when no op is left.
    async fn simulate_until_clean(
        &self,
        version: EntryPointVersion,
        mut bundle: Vec<Arc<PoolEntry>>,
        state: &BlockState,
        context: &BlockContext,
    ) -> Result<Option<(Bundle, Vec<Arc<PoolEntry>>, SimulatedBundle)>, BundlerError> {
        let beneficiary = self.shared.config.beneficiary.unwrap_or(self.shared.bundler_address);
        for _ in 0..MAX_BUNDLE_RETRIES {
            if bundle.is_empty() {
                return Ok(None);
            }
            let candidate = Bundle {
                version,
                ops: bundle.iter().map(|e| e.packed()).collect(),
                beneficiary,
                bundler: self.shared.bundler_address,
                authorizations: bundle
                    .iter()
                    .filter_map(|e| e.op.eip7702_auth.clone().map(|a| (e.op.sender, a)))
                    .collect(),
            };
            let outcome = {
                let (state, candidate, context) = (state.clone(), candidate.clone(), *context);
                self.simulate(move |sim| sim.simulate_bundle(&state, &context, &candidate))
                    .await?
                    .map_err(|e| BundlerError::Internal(format!("bundle simulation: {e}")))?
            };
            match outcome {
                BundleOutcome::Included { gas_spent, gas_used, earned } => {
                    let simulated = SimulatedBundle { gas_spent, gas_used, earned };
                    return Ok(Some((candidate, bundle, simulated)));
                }
                BundleOutcome::OpFailed { index, reason } if index < bundle.len() => {
                    let entry = bundle.remove(index);
                    self.drop_op(entry.hash, &reason).await?;
                    // It passed the second validation, so its entity is banned.
                    let culprit = culprit(&entry, &reason);
                    self.ban(version, culprit, &reason).await?;
                    bundle.retain(|e| !e.references(culprit));
                }
                BundleOutcome::OpFailed { reason, .. } => {
                    return Err(BundlerError::Internal(format!("bundle rejected: {reason}")));
                }
                BundleOutcome::Reverted(data) => {
                    return Err(BundlerError::Internal(format!("bundle reverts: {data}")));
                }
            }
        }
        Ok(None)
    }

    /// On a chain with an L1 data fee, whether the bundle earns (what the EntryPoint pays the
    /// beneficiary) at least what it costs (its gas at the fee it would be sent at, plus its L1
    /// data fee). One that does not is not sent: its ops wait for fees to fall (or expire).
    /// Elsewhere every bundle passes (an op's gas pays the bundle's gas).
    async fn pays_its_way(
        &self,
        candidate: &Bundle,
        simulated: &SimulatedBundle,
        state: &BlockState,
        context: &BlockContext,
    ) -> Result<bool, BundlerError> {
        if !self.shared.config.chain.has_l1_data_fee() {
            return Ok(true);
        }
        let tx = settled_sim::transaction_bytes(
            candidate.version.canonical_address(),
            candidate.calldata(),
            context.chain_id,
        );
        let (state, block) = (state.clone(), *context);
        let l1_fee = self
            .simulate(move |sim| sim.l1_data_fee(&state, &block, &tx))
            .await?
            .map_err(|e| BundlerError::Internal(format!("L1 fee: {e}")))?;
        let fees = self.shared.provider.estimate_eip1559_fees().await.map_err(rpc_error)?;
        let max_fee = fees.max_fee_per_gas.min(self.shared.config.max_fee_per_gas);
        let price = max_fee.min(u128::from(context.base_fee) + fees.max_priority_fee_per_gas);
        let cost = u128::from(simulated.gas_used).saturating_mul(price).saturating_add(l1_fee);
        ::metrics::gauge!(metrics::BUNDLE_L1_FEE_WEI).set(l1_fee as f64);
        if simulated.earned >= cost {
            return Ok(true);
        }
        ::metrics::counter!(metrics::BUNDLES_UNPROFITABLE).increment(1);
        warn!(
            ops = candidate.ops.len(),
            earned = simulated.earned,
            cost,
            l1_fee,
            gas = simulated.gas_used,
            price,
            "bundle would cost more than its ops pay: not sent"
        );
        Ok(false)
    }

    /// The bundle's transaction. Its gas limit has headroom over revm's figure for the
    /// EntryPoint's 63/64 checks, and is at least the ops' limits: before each call the
    /// EntryPoint requires gas for the whole callGasLimit and paymasterPostOpGasLimit
    /// (`AA95 out of gas`), however little the op then uses.
    fn bundle_transaction(
        &self,
        candidate: &Bundle,
        gas_spent: u64,
        context: &BlockContext,
    ) -> TransactionRequest {
        let limits: u128 = candidate.ops.iter().map(|op| op.total_gas_limit()).sum();
        let limits = u64::try_from(limits).unwrap_or(u64::MAX);
        let gas_limit = (gas_spent + gas_spent / 5).max(limits).min(context.gas_limit);
        let tx = TransactionRequest::default()
            .with_from(self.shared.bundler_address)
            .with_to(candidate.version.canonical_address())
            .with_input(candidate.calldata())
            .with_gas_limit(gas_limit);
        if candidate.authorizations.is_empty() {
            return tx;
        }
        tx.with_authorization_list(
            candidate.authorizations.iter().map(|(_, a)| a.clone()).collect(),
        )
    }

    /// Sends the bundle transaction and watches it until mined; its ops stay out of new
    /// bundles meanwhile.
    async fn submit_built(
        &self,
        tx: TransactionRequest,
        ops: Vec<(B256, Address)>,
    ) -> Result<Submission, BundlerError> {
        let sent = self.send_first(tx, &ops).await?;
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            in_flight.extend(ops.iter().copied());
        }
        let bundler = self.clone();
        Ok(tokio::spawn(async move {
            let nonce = sent.nonce;
            let result = bundler.until_mined(sent).await;
            if let Ok(mut in_flight) = bundler.shared.in_flight.lock() {
                for (hash, _) in &ops {
                    in_flight.remove(hash);
                }
            }
            bundler.forget_sent(nonce, &ops).await;
            let (hash, receipt) = result.inspect_err(|error| {
                warn!(%error, "bundle not mined; its ops stay in the mempool");
            })?;
            bundler.record_mined(hash, &receipt).await?;
            Ok(hash)
        }))
    }

    /// Accounts for a mined bundle: metrics, its ops indexed, its block remembered (a later
    /// block at that height means it was reorged out).
    pub(super) async fn record_mined(
        &self,
        hash: B256,
        receipt: &alloy::rpc::types::TransactionReceipt,
    ) -> Result<(), BundlerError> {
        if receipt.status() {
            ::metrics::counter!(metrics::BUNDLES_MINED).increment(1);
            ::metrics::histogram!(metrics::BUNDLE_GAS).record(receipt.gas_used as f64);
        } else {
            ::metrics::counter!(metrics::BUNDLES_FAILED).increment(1);
            warn!(%hash, "bundle reverted");
        }
        self.index_logs(receipt.inner.logs()).await?;
        if let (Some(number), Some(block)) = (receipt.block_number, receipt.block_hash)
            && let Ok(mut unconfirmed) = self.shared.unconfirmed.lock()
        {
            unconfirmed.push((number, block));
        }
        Ok(())
    }
}

/// What the revm run of a clean bundle measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct SimulatedBundle {
    /// Gas before refunds: what the gas limit must cover.
    gas_spent: u64,
    /// Gas charged.
    gas_used: u64,
    /// What the ops pay the beneficiary (wei).
    earned: u128,
}
