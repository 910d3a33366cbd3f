//! The paymaster service: ERC-7677 requests in, policy-checked, reserved, signed and simulated
//! sponsorships out; the chain follower's `UserOperationEvent`s settle them.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider},
    sol_types::SolEvent,
};
use serde::{Deserialize, Serialize};
use settled_contracts::{
    BlockRef, ChainCursor, ChainEvent, ChainEvents, ChainKind, EntryPointVersion,
    PackedUserOperation, UserOperation, apply_until_stored, v07,
};
use settled_sim::{
    AccountReads, ChainHead, SimError, SimOverrides, SimulationLimits, Simulator, ValidationRules,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod chain;
mod types;

pub use types::{
    PaymasterAccount, PaymasterData, PaymasterStatus, Sponsor, SponsorshipContext, StubData,
};

use crate::{
    error::PaymasterError,
    ledger::{Ledger, LedgerStatus, ReservationRequest, Usage},
    ledger_store::{LedgerStore, customer_slot, daily_slot, sender_slot},
    metrics,
    policy::{PolicyRule, Rejection, SponsorshipPolicy, max_cost},
    signer::{PaymasterSigner, SponsorshipTerms, stub_paymaster_data},
    treasury::paymaster_accounts,
};

/// How the paymaster works.
#[derive(Debug, Clone)]
pub struct PaymasterConfig {
    /// Our paymaster contract at each EntryPoint we sponsor on.
    pub paymasters: Vec<(EntryPointVersion, Address)>,
    /// `paymasterVerificationGasLimit` in stub data.
    pub verification_gas: u64,
    /// `paymasterPostOpGasLimit` in stub data, and the least an op may give postOp.
    pub post_op_gas: u64,
    /// Seconds a signature stays valid (chain time).
    pub validity_secs: u64,
    /// `validAfter` is this many seconds before the head block, for clock skew.
    pub valid_after_slack_secs: u64,
    /// Open reservations are released this long after their signature expired.
    pub expiry_grace_secs: u64,
    /// Wei the paymaster may sponsor per day across every policy.
    pub daily_budget: Option<U256>,
    /// A deposit below this logs a warning and sets the low-deposit metric.
    pub low_deposit_wei: U256,
    /// Policies from the config file (those set over the admin RPC are persisted and win).
    pub policies: Vec<SponsorshipPolicy>,
    /// The policy a request without `context.policyId` is judged by (none: such a request is
    /// refused, -32602).
    pub default_policy: Option<String>,
    /// Simulation bounds for the denial-of-wallet guard.
    pub limits: SimulationLimits,
    /// ERC-7562 stake minimums.
    pub rules: ValidationRules,
    /// The chain's kind: on OP stack an op's preVerificationGas must carry its L1 data fee.
    pub chain: ChainKind,
    /// How far below its L1 fee (percent) an op's preVerificationGas may fall (as bundlers
    /// tolerate fee drift).
    pub l1_fee_tolerance_percent: u64,
    /// Policies are the config file's alone: several nodes share the ledger, and a policy set
    /// over one node's admin RPC would hold on that node only.
    pub fixed_policies: bool,
}

impl Default for PaymasterConfig {
    fn default() -> Self {
        Self {
            paymasters: Vec::new(),
            verification_gas: 60_000,
            post_op_gas: 40_000,
            validity_secs: 300,
            valid_after_slack_secs: 60,
            expiry_grace_secs: 60,
            daily_budget: None,
            low_deposit_wei: U256::from(10u128.pow(17)),
            policies: Vec::new(),
            default_policy: None,
            limits: SimulationLimits::default(),
            rules: ValidationRules::default(),
            chain: ChainKind::Ethereum,
            l1_fee_tolerance_percent: 10,
            fixed_policies: false,
        }
    }
}

struct Shared {
    config: PaymasterConfig,
    chain_id: u64,
    provider: DynProvider,
    signer: PaymasterSigner,
    simulator: Simulator,
    head: ChainHead,
    ledger: Arc<dyn LedgerStore>,
    /// The last block whose sponsorships were settled and expired (durable).
    cursor: ChainCursor,
    policies: RwLock<BTreeMap<String, SponsorshipPolicy>>,
    policy_tree: sled::Tree,
}

/// The paymaster. Cheap to clone.
#[derive(Clone)]
pub struct Paymaster {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Paymaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paymaster").field("signer", &self.shared.signer).finish_non_exhaustive()
    }
}

fn internal(error: impl std::fmt::Display) -> PaymasterError {
    PaymasterError::Internal(error.to_string())
}

/// The head block could not be read: the node's trouble, never the op's.
fn chain_unavailable(error: SimError) -> PaymasterError {
    PaymasterError::ChainUnavailable(error.to_string())
}

impl Paymaster {
    /// A paymaster on `provider`'s chain signing with `signer`, its ledger and runtime policies
    /// in `db`.
    pub async fn new(
        config: PaymasterConfig,
        provider: DynProvider,
        signer: PaymasterSigner,
        db: &sled::Db,
    ) -> Result<Self, PaymasterError> {
        let ledger = Ledger::open(db.open_tree("paymaster.ledger").map_err(internal)?)?;
        Self::with_ledger(config, provider, signer, db, Arc::new(ledger)).await
    }

    /// The same with its ledger in `ledger` (shared by several nodes).
    pub async fn with_ledger(
        config: PaymasterConfig,
        provider: DynProvider,
        signer: PaymasterSigner,
        db: &sled::Db,
        ledger: Arc<dyn LedgerStore>,
    ) -> Result<Self, PaymasterError> {
        let chain_id = provider.get_chain_id().await.map_err(internal)?;
        let client_version = provider.get_client_version().await.unwrap_or_default();
        let head = ChainHead::new(provider.clone(), AccountReads::for_client(&client_version));
        let policy_tree = db.open_tree("paymaster.policies").map_err(internal)?;
        let cursor = ChainCursor::open(db, "paymaster").map_err(internal)?;
        let mut policies: BTreeMap<String, SponsorshipPolicy> =
            config.policies.iter().map(|p| (p.id.clone(), p.clone())).collect();
        for entry in policy_tree.iter() {
            let (key, value) = entry.map_err(internal)?;
            let id = String::from_utf8_lossy(&key).into_owned();
            if value.is_empty() {
                policies.remove(&id);
            } else {
                let policy: SponsorshipPolicy = serde_json::from_slice(&value).map_err(internal)?;
                policies.insert(id, policy);
            }
        }
        let simulator = Simulator::new(config.limits, config.rules).with_chain(config.chain);
        info!(signer = %signer.address(), policies = policies.len(), "paymaster ready");
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                chain_id,
                provider,
                signer,
                simulator,
                head,
                ledger,
                cursor,
                policies: RwLock::new(policies),
                policy_tree,
            }),
        })
    }

    /// The signer's address.
    pub fn signer(&self) -> Address {
        self.shared.signer.address()
    }

    /// The ledger (reservations, usage, totals).
    pub fn ledger(&self) -> &dyn LedgerStore {
        self.shared.ledger.as_ref()
    }

    fn paymaster_for(
        &self,
        entry_point: Address,
    ) -> Result<(EntryPointVersion, Address), PaymasterError> {
        EntryPointVersion::from_address(entry_point)
            .and_then(|v| self.shared.config.paymasters.iter().find(|(pv, _)| *pv == v).copied())
            .ok_or(PaymasterError::UnsupportedEntryPoint(entry_point))
    }

    fn policy(&self, id: &str) -> Result<SponsorshipPolicy, PaymasterError> {
        self.shared
            .policies
            .read()
            .map_err(internal)?
            .get(id)
            .cloned()
            .ok_or_else(|| PaymasterError::UnknownPolicy(id.to_string()))
    }

    /// Checks chain, EntryPoint and context; the paymaster, policy and customer they name.
    fn resolve(
        &self,
        op: &UserOperation,
        entry_point: Address,
        chain_id: u64,
        context: Option<&serde_json::Value>,
    ) -> Result<Resolved, PaymasterError> {
        if chain_id != self.shared.chain_id {
            return Err(PaymasterError::UnsupportedChain {
                requested: chain_id,
                served: self.shared.chain_id,
            });
        }
        let (version, paymaster) = self.paymaster_for(entry_point)?;
        let context = match context {
            None | Some(serde_json::Value::Null) => SponsorshipContext::default(),
            Some(value) => SponsorshipContext::deserialize(value)
                .map_err(|e| PaymasterError::InvalidParams(format!("context: {e}")))?,
        };
        let policy_id = context
            .policy_id
            .or_else(|| self.shared.config.default_policy.clone())
            .ok_or(PaymasterError::MissingContext)?;
        if let Some(other) = op.paymaster
            && other != paymaster
        {
            return Err(PaymasterError::InvalidParams(format!(
                "the op names paymaster {other}, not this service's {paymaster}"
            )));
        }
        let policy = self.policy(&policy_id)?;
        let customer = context.customer.unwrap_or_else(|| op.sender.to_string());
        if customer.is_empty() || customer.len() > 256 {
            return Err(PaymasterError::InvalidParams(
                "customer must be 1 to 256 characters".into(),
            ));
        }
        Ok(Resolved { version, paymaster, policy, customer })
    }

    /// The op packed with our paymaster, its gas limits (the op's, else our defaults) and `data`.
    fn pack(
        &self,
        op: &UserOperation,
        paymaster: Address,
        data: Bytes,
    ) -> Result<PackedUserOperation, PaymasterError> {
        let mut op = op.clone();
        let nonzero = |v: Option<U256>| v.filter(|g| !g.is_zero());
        op.paymaster = Some(paymaster);
        op.paymaster_verification_gas_limit = Some(
            nonzero(op.paymaster_verification_gas_limit)
                .unwrap_or(U256::from(self.shared.config.verification_gas)),
        );
        op.paymaster_post_op_gas_limit = Some(
            nonzero(op.paymaster_post_op_gas_limit)
                .unwrap_or(U256::from(self.shared.config.post_op_gas)),
        );
        op.paymaster_data = Some(data);
        Ok(op.pack()?)
    }

    fn reject(&self, policy: &SponsorshipPolicy, rejection: Rejection) -> PaymasterError {
        PaymasterError::Rejected { policy: policy.id.clone(), rejection }
    }

    /// `pm_getPaymasterStubData`: stub data with our gas limits, after the checks that need no
    /// signature (the op's calls, its limits if set, the caps as they stand now).
    pub async fn stub_data(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: u64,
        context: Option<serde_json::Value>,
    ) -> Result<StubData, PaymasterError> {
        let result = self.stub_data_inner(op, entry_point, chain_id, context).await;
        record(&result);
        result
    }

    async fn stub_data_inner(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: u64,
        context: Option<serde_json::Value>,
    ) -> Result<StubData, PaymasterError> {
        let resolved = self.resolve(&op, entry_point, chain_id, context.as_ref())?;
        let packed = self.pack(&op, resolved.paymaster, stub_paymaster_data())?;
        resolved.policy.check(&packed).map_err(|r| self.reject(&resolved.policy, r))?;
        let (_, block) = self.shared.head.latest().await.map_err(chain_unavailable)?;
        let request = ReservationRequest {
            policy: &resolved.policy,
            customer: &resolved.customer,
            sender: packed.sender,
            entry_point,
            max_cost: max_cost(&packed),
            now: block.timestamp,
            valid_until: block.timestamp,
            daily_budget: self.shared.config.daily_budget,
        };
        self.shared.ledger.check(&request).await?.map_err(|r| self.reject(&resolved.policy, r))?;
        let (verification, post_op) = packed.paymaster_gas_limits().unwrap_or_default();
        Ok(StubData {
            sponsor: resolved.policy.sponsor_name.clone().map(|name| Sponsor { name }),
            paymaster: resolved.paymaster,
            paymaster_data: stub_paymaster_data(),
            paymaster_verification_gas_limit: U256::from(verification),
            paymaster_post_op_gas_limit: U256::from(post_op),
            is_final: false,
        })
    }

    /// `pm_getPaymasterData`: policy check, an atomic reservation of the op's worst-case cost,
    /// the signature, and the denial-of-wallet guard (full validation under ERC-7562 and a
    /// non-reverting execution, in revm, with the signed data). Nothing is reserved when any
    /// step refuses; the reservation is durable before the signature is returned.
    pub async fn paymaster_data(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: u64,
        context: Option<serde_json::Value>,
    ) -> Result<PaymasterData, PaymasterError> {
        let started = Instant::now();
        let result = self.paymaster_data_inner(op, entry_point, chain_id, context).await;
        record(&result);
        if result.is_ok() {
            ::metrics::counter!(metrics::SIGNATURES).increment(1);
            ::metrics::histogram!(metrics::SIGN_SECONDS).record(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn paymaster_data_inner(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: u64,
        context: Option<serde_json::Value>,
    ) -> Result<PaymasterData, PaymasterError> {
        let resolved = self.resolve(&op, entry_point, chain_id, context.as_ref())?;
        let mut packed = self.pack(&op, resolved.paymaster, Bytes::new())?;
        let policy = &resolved.policy;
        let (_, post_op) = packed.paymaster_gas_limits().unwrap_or_default();
        if post_op < u128::from(self.shared.config.post_op_gas) {
            return Err(self.reject(
                policy,
                Rejection::new(
                    PolicyRule::PaymasterGas,
                    format!(
                        "paymasterPostOpGasLimit {post_op} below the {} postOp needs",
                        self.shared.config.post_op_gas
                    ),
                ),
            ));
        }
        policy.check(&packed).map_err(|r| self.reject(policy, r))?;
        let (state, block) = self.shared.head.latest().await.map_err(chain_unavailable)?;
        let config = &self.shared.config;
        let valid_until = block.timestamp + config.validity_secs;
        let valid_after = block.timestamp.saturating_sub(config.valid_after_slack_secs);
        let request = ReservationRequest {
            policy,
            customer: &resolved.customer,
            sender: packed.sender,
            entry_point,
            max_cost: max_cost(&packed),
            now: block.timestamp,
            valid_until,
            daily_budget: config.daily_budget,
        };
        let reservation =
            self.shared.ledger.reserve(&request).await?.map_err(|r| self.reject(policy, r))?;
        // From here on a failure must not leave the reservation behind.
        let signed = async {
            let terms = SponsorshipTerms { valid_until, valid_after, id: reservation.id };
            let data = self
                .shared
                .signer
                .paymaster_data(&packed, self.shared.chain_id, resolved.paymaster, &terms)
                .map_err(internal)?;
            let mut paymaster_and_data = packed.paymasterAndData.to_vec();
            paymaster_and_data.extend_from_slice(&data);
            packed.paymasterAndData = paymaster_and_data.into();
            self.guard(state, block, resolved.version, &packed, &op).await?;
            let delegate = op.eip7702_auth.as_ref().map(|a| a.address);
            let hash = packed.hash(resolved.version, self.shared.chain_id, delegate);
            self.shared.ledger.bind(reservation.id, hash).await?;
            self.flush().await?;
            Ok::<_, PaymasterError>(data)
        }
        .await;
        match signed {
            Ok(data) => {
                debug!(id = reservation.id, sender = %packed.sender, policy = %policy.id, "sponsorship signed");
                self.publish_ledger().await;
                Ok(PaymasterData { paymaster: resolved.paymaster, paymaster_data: data })
            }
            Err(error) => {
                if let Err(cancel) = self.shared.ledger.cancel(reservation.id).await {
                    warn!(%cancel, id = reservation.id, "could not cancel a failed reservation");
                }
                Err(error)
            }
        }
    }

    /// The denial-of-wallet guard: the signed op passes validation (ERC-7562 rules included; the
    /// account's own signature may be missing) and its execution does not revert.
    async fn guard(
        &self,
        state: settled_sim::BlockState,
        block: settled_sim::BlockContext,
        version: EntryPointVersion,
        packed: &PackedUserOperation,
        op: &UserOperation,
    ) -> Result<(), PaymasterError> {
        let mut sim_op = packed.clone();
        // The wallet signs after the paymaster: an op without a signature is simulated with a
        // well-formed stand-in, whose failure the guard tolerates; its authorization likewise.
        if sim_op.signature.is_empty() {
            sim_op.signature = settled_contracts::stub_account_signature();
        }
        let overrides = match &op.eip7702_auth {
            Some(auth) => SimOverrides::with_authorization_to_be_signed(auth.clone()),
            None => SimOverrides::default(),
        };
        let shared = self.shared.clone();
        let has_authorization = op.eip7702_auth.is_some();
        let (required, validation, execution) = tokio::task::spawn_blocking(move || {
            // OP stack: the worst case the reservation holds (the op's gas limits at its max
            // fee) includes the L1 data fee only if preVerificationGas carries it.
            let overhead = settled_sim::PRE_VERIFICATION_OVERHEAD_GAS;
            let required = shared.simulator.required_pre_verification(
                &state,
                &block,
                version,
                &settled_sim::with_incompressible_signature(&sim_op),
                has_authorization,
                overhead,
            );
            let validation =
                shared.simulator.simulate_validation(&state, &block, version, &sim_op, &overrides);
            if validation.is_err() {
                return (required, validation, None);
            }
            let execution =
                shared.simulator.simulate_handle_op(&state, &block, version, &sim_op, &overrides);
            (required, validation, Some(execution))
        })
        .await
        .map_err(internal)?;
        let required = required.map_err(|e| self.sim_error(e, packed))?;
        let needed = required.with_tolerance(self.shared.config.l1_fee_tolerance_percent);
        if required.l1_fee_wei > 0 && packed.preVerificationGas < U256::from(needed) {
            return Err(PaymasterError::L1FeeNotCovered {
                pre_verification_gas: packed.preVerificationGas,
                needed: required.total(),
                l1_fee_wei: required.l1_fee_wei,
            });
        }
        let validation = validation.map_err(|e| self.sim_error(e, packed))?;
        if validation.paymaster.signature_failed {
            return Err(PaymasterError::Internal(
                "the paymaster contract rejects this node's signature: its signer is not this node's key".into(),
            ));
        }
        let Some(execution) = execution else { return Ok(()) };
        let execution = execution.map_err(|e| self.sim_error(e, packed))?;
        if !execution.success {
            let reason = execution
                .revert_reason
                .or(execution.post_op_revert_reason)
                .map_or_else(|| "no revert data".to_string(), |r| r.to_string());
            return Err(PaymasterError::ExecutionReverts { reason });
        }
        Ok(())
    }

    fn sim_error(&self, error: SimError, packed: &PackedUserOperation) -> PaymasterError {
        match &error {
            SimError::Rejected { reason, .. } if reason.starts_with("AA31") => {
                PaymasterError::DepositTooLow {
                    paymaster: packed.paymaster().unwrap_or_default(),
                    needed: max_cost(packed),
                }
            }
            SimError::ExecutionReverted { reason } | SimError::PostOpReverted { reason } => {
                PaymasterError::ExecutionReverts { reason: reason.to_string() }
            }
            // The node's trouble, not the op's: not "the op fails simulation".
            SimError::Fork(fork) => PaymasterError::ChainUnavailable(fork.to_string()),
            SimError::Evm(message) => PaymasterError::Internal(message.clone()),
            _ => PaymasterError::Simulation(error),
        }
    }

    async fn flush(&self) -> Result<(), PaymasterError> {
        Ok(self.shared.ledger.flush().await?)
    }

    async fn publish_ledger(&self) {
        if let Ok(status) = self.shared.ledger.status().await {
            ::metrics::gauge!(metrics::RESERVATIONS_OPEN).set(status.open_reservations as f64);
            ::metrics::gauge!(metrics::RESERVED_WEI).set(wei_f64(status.open_wei));
            ::metrics::gauge!(metrics::SPONSORED_WEI).set(wei_f64(status.totals.settled_wei));
        }
    }

    /// Sets (adds or replaces) a policy; persisted, it outlives restarts and the config file.
    pub fn set_policy(&self, policy: SponsorshipPolicy) -> Result<(), PaymasterError> {
        self.policies_changeable()?;
        policy.validate().map_err(PaymasterError::InvalidParams)?;
        let value = serde_json::to_vec(&policy).map_err(internal)?;
        self.shared.policy_tree.insert(policy.id.as_bytes(), value).map_err(internal)?;
        self.shared.policy_tree.flush().map_err(internal)?;
        info!(policy = %policy.id, "sponsorship policy set");
        self.shared.policies.write().map_err(internal)?.insert(policy.id.clone(), policy);
        Ok(())
    }

    /// Removes a policy (also one from the config file, until it is set again). Returns whether
    /// it existed. Signatures already issued under it stay valid until they expire.
    pub fn remove_policy(&self, id: &str) -> Result<bool, PaymasterError> {
        self.policies_changeable()?;
        self.shared.policy_tree.insert(id.as_bytes(), &[] as &[u8]).map_err(internal)?;
        self.shared.policy_tree.flush().map_err(internal)?;
        Ok(self.shared.policies.write().map_err(internal)?.remove(id).is_some())
    }

    fn policies_changeable(&self) -> Result<(), PaymasterError> {
        if self.shared.config.fixed_policies {
            return Err(PaymasterError::InvalidParams(
                "policies are fixed by --paymaster.policies-file on a shared store: change the \
                 file on every node and restart them"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Every policy in force.
    pub fn policies(&self) -> Result<Vec<SponsorshipPolicy>, PaymasterError> {
        Ok(self.shared.policies.read().map_err(internal)?.values().cloned().collect())
    }

    /// What `sender` and `customer` used under `policy_id` in the current period.
    pub async fn usage(
        &self,
        policy_id: &str,
        sender: Option<Address>,
        customer: Option<&str>,
    ) -> Result<(Option<Usage>, Option<Usage>), PaymasterError> {
        let policy = self.policy(policy_id)?;
        let (_, block) = self.shared.head.latest().await.map_err(chain_unavailable)?;
        let ledger = &self.shared.ledger;
        let now = block.timestamp;
        let sender = match sender {
            Some(s) => Some(ledger.usage(sender_slot(&policy, s, now)).await?),
            None => None,
        };
        let customer = match customer {
            Some(c) => Some(ledger.usage(customer_slot(&policy, c, now)).await?),
            None => None,
        };
        Ok((sender, customer))
    }

    /// Deposits, stakes, ledger and today's spend.
    pub async fn status(&self) -> Result<PaymasterStatus, PaymasterError> {
        let accounts = paymaster_accounts(&self.shared.provider, &self.shared.config.paymasters)
            .await
            .map_err(internal)?;
        let (_, block) = self.shared.head.latest().await.map_err(chain_unavailable)?;
        Ok(PaymasterStatus {
            signer: self.signer(),
            chain_id: self.shared.chain_id,
            accounts,
            ledger: self.shared.ledger.status().await?,
            today: self.shared.ledger.usage(daily_slot(block.timestamp)).await?,
            daily_budget: self.shared.config.daily_budget,
        })
    }
}

struct Resolved {
    version: EntryPointVersion,
    paymaster: Address,
    policy: SponsorshipPolicy,
    customer: String,
}

fn record<T>(result: &Result<T, PaymasterError>) {
    if let Err(error) = result {
        let rule = error.rule().unwrap_or("request");
        ::metrics::counter!(metrics::REJECTIONS, "rule" => rule).increment(1);
    }
}

/// Wei as a float for gauges (exact up to 2^53 wei; the ledger itself is exact).
fn wei_f64(wei: U256) -> f64 {
    f64::from(wei)
}
