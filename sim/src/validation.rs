//! `simulateValidation` in revm: the EntryPoint's address runs its version's
//! `EntryPointSimulations` code over forked state, as a bundler's `eth_call` with a code override
//! would, but without any RPC round trip after the state is cached.

use std::time::Duration;

use alloy::{
    eips::BlockId,
    primitives::{Address, Bytes, U256},
    providers::{DynProvider, Provider},
    sol_types::{SolCall, SolError, SolInterface, SolValue},
};
use revm::{
    DatabaseRef,
    context_interface::result::{ExecutionResult, Output},
};
use settled_contracts::{EntryPointVersion, PackedUserOperation, v07, v08};

use crate::{
    error::SimError,
    estimate::EstimationMargins,
    evm::{EntryPointCall, SimulationsCode, call_entry_point},
    fork::{BlockState, ForkError},
    inspector::{Entity, OpAddresses, ValidationInspector, ValidationTrace},
    overrides::SimOverrides,
    rules::{Rule, RuleViolation, Stakes, ValidationRules},
};

/// Bounds every simulation: a malicious op cannot run longer than this much gas or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulationLimits {
    /// Gas given to the whole simulation call.
    pub gas_cap: u64,
    /// Wall-clock bound of one simulation run, state reads included.
    pub timeout: Duration,
}

impl Default for SimulationLimits {
    fn default() -> Self {
        Self { gas_cap: 30_000_000, timeout: Duration::from_secs(2) }
    }
}

/// The block a simulation runs "in": number, time and fees of the forked block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockContext {
    /// Chain id.
    pub chain_id: u64,
    /// Block number.
    pub number: u64,
    /// Block timestamp.
    pub timestamp: u64,
    /// Block gas limit.
    pub gas_limit: u64,
    /// Base fee per gas (0 before London).
    pub base_fee: u64,
}

/// Time range and signature verdict packed in a `validationData` word (ERC-4337).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationData {
    /// The aggregator, or `None` for none; `Some(0x..01)` is the signature-failure marker.
    pub aggregator: Option<Address>,
    /// The signature check failed (aggregator field is 1).
    pub signature_failed: bool,
    /// Valid from this timestamp on.
    pub valid_after: u64,
    /// Valid until this timestamp (`u64::MAX`-like 0xffff_ffff_ffff means forever).
    pub valid_until: u64,
}

impl ValidationData {
    /// Unpacks `aggregator (160 bits) | validUntil (48) | validAfter (48)`, validUntil 0 meaning
    /// "no expiry" (ERC-4337).
    pub fn unpack(word: U256) -> Self {
        let low160: U256 = word & ((U256::from(1) << 160) - U256::from(1));
        let aggregator = Address::from_word(low160.into());
        // 48-bit fields: the masks make the narrowing conversions exact.
        let mask48 = U256::from(0xffff_ffff_ffff_u64);
        let valid_until: u64 = ((word >> 160_usize) & mask48).to::<u64>();
        let valid_after: u64 = ((word >> 208_usize) & mask48).to::<u64>();
        let signature_failed = aggregator == Address::with_last_byte(1);
        Self {
            aggregator: (aggregator != Address::ZERO && !signature_failed).then_some(aggregator),
            signature_failed,
            valid_after,
            valid_until: if valid_until == 0 { 0xffff_ffff_ffff } else { valid_until },
        }
    }
}

/// Stake of an entity at the EntryPoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StakeInfo {
    /// Stake in wei.
    pub stake: U256,
    /// Unstake delay in seconds.
    pub unstake_delay_sec: U256,
}

/// What `simulateValidation` reports, the same for every EntryPoint version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationOutcome {
    /// Gas used by validation, including preVerificationGas.
    pub pre_op_gas: U256,
    /// Required prefund.
    pub prefund: U256,
    /// The account's verdict.
    pub account: ValidationData,
    /// The paymaster's verdict.
    pub paymaster: ValidationData,
    /// Context the paymaster returned for postOp.
    pub paymaster_context: Bytes,
    /// Sender stake.
    pub sender_info: StakeInfo,
    /// Factory stake.
    pub factory_info: StakeInfo,
    /// Paymaster stake.
    pub paymaster_info: StakeInfo,
    /// Gas the simulation call used.
    pub gas_used: u64,
    /// What the ERC-7562 tracer saw (code hashes for COD-010, storage, calls).
    pub trace: ValidationTrace,
    /// The raw ABI-encoded `ValidationResult` (for differential checks and caching).
    pub raw: Bytes,
}

/// Runs UserOperation simulations against forked state.
#[derive(Debug, Clone)]
pub struct Simulator {
    pub(crate) limits: SimulationLimits,
    rules: ValidationRules,
    pub(crate) margins: EstimationMargins,
    pub(crate) code: SimulationsCode,
    /// The chain's kind (OP stack: preVerificationGas pays the L1 data fee).
    pub(crate) chain: settled_contracts::ChainKind,
}

impl Default for Simulator {
    fn default() -> Self {
        Self::new(SimulationLimits::default(), ValidationRules::default())
    }
}

impl Simulator {
    /// A simulator with `limits`, enforcing `rules`.
    pub fn new(limits: SimulationLimits, rules: ValidationRules) -> Self {
        Self {
            limits,
            rules,
            margins: EstimationMargins::default(),
            code: SimulationsCode::new(),
            chain: settled_contracts::ChainKind::Ethereum,
        }
    }

    /// The same simulator, estimating with `margins`.
    pub fn with_margins(self, margins: EstimationMargins) -> Self {
        Self { margins, ..self }
    }

    /// The bounds of every run.
    pub fn limits(&self) -> SimulationLimits {
        self.limits
    }

    /// Runs `simulateValidation(op)` for `version`'s EntryPoint over `state` (with `overrides`)
    /// under the ERC-7562 tracer. The EntryPoint's own rejection (`AAxx`) comes first; then every
    /// rule violation. Blocking (reads forked state on a miss): call from a blocking thread.
    pub fn simulate_validation(
        &self,
        state: &BlockState,
        block: &BlockContext,
        version: EntryPointVersion,
        op: &PackedUserOperation,
        overrides: &SimOverrides,
    ) -> Result<ValidationOutcome, SimError> {
        let addresses = op_addresses(version, op);
        let call = EntryPointCall {
            version,
            calldata: simulate_validation_calldata(version, op)?,
            overrides,
            sender: op.sender,
            gas_cap: self.limits.gas_cap,
        };
        let inspector = ValidationInspector::with_timeout(addresses, self.limits.timeout);
        let (result, inspector) = call_entry_point(state, block, &self.code, call, inspector)?;
        if inspector.timed_out() {
            return Err(SimError::Timeout(self.limits.timeout));
        }
        let trace = inspector.into_trace();
        let (output, gas_used) = success_output(version, result)?;
        let mut outcome = decode_validation_result(version, &output, gas_used)?;
        let staked = |info: &StakeInfo| self.rules.is_staked(info.stake, info.unstake_delay_sec);
        let stakes = Stakes {
            factory: staked(&outcome.factory_info),
            account: staked(&outcome.sender_info),
            paymaster: staked(&outcome.paymaster_info),
        };
        // EREP-050 belongs to the v0.8 mempool: the v0.7 mempool (its reference bundler and
        // compatibility suite, "EREP-050-regression") lets an unstaked paymaster return a context.
        let context_len = match version {
            EntryPointVersion::V07 => 0,
            EntryPointVersion::V08 => outcome.paymaster_context.len(),
        };
        let mut violations = self.rules.check(&addresses, &trace, &stakes, context_len);
        // AUTH-020: a delegated EOA may only be the op's sender, never its factory or paymaster.
        for (entity, address) in
            [(Entity::Factory, addresses.factory), (Entity::Paymaster, addresses.paymaster)]
        {
            let Some(address) = address else { continue };
            if state.basic_ref(address)?.and_then(|info| info.code).is_some_and(|c| c.is_eip7702())
            {
                violations.push(RuleViolation {
                    rule: Rule::Auth020,
                    entity,
                    address,
                    detail: format!("the {entity} is an EIP-7702 delegated account"),
                });
            }
        }
        if !violations.is_empty() {
            return Err(SimError::RuleViolations(violations));
        }
        // COD-010 compares code that existed before validation: contracts created in it (the
        // sender, by its factory) have none on chain until the op is included.
        let mut trace = trace;
        let created: Vec<Address> = trace
            .entities
            .values()
            .flat_map(|seen| seen.creations.iter().filter_map(|c| c.created))
            .collect();
        // The EntryPoint ran its simulations code here; its real code is not the op's to change.
        // A sender delegating through the op's own eip7702Auth gets its code from the bundle.
        let delegated_sender = overrides.eip7702_auth.is_some().then_some(op.sender);
        trace.code_hashes.retain(|address, _| {
            !created.contains(address)
                && *address != addresses.entry_point
                && Some(*address) != delegated_sender
        });
        outcome.trace = trace;
        Ok(outcome)
    }
}

impl BlockContext {
    /// The block after this one, at the earliest second it can have: where a transaction sent
    /// now executes. Execution that depends on time (a stream accrues every second) is
    /// simulated there, not at the head, whose second has passed.
    pub fn next(&self) -> Self {
        Self { number: self.number + 1, timestamp: self.timestamp + 1, ..*self }
    }

    /// The context of `block` on `provider`'s chain.
    pub async fn fetch(provider: &DynProvider, block: BlockId) -> Result<Self, SimError> {
        let chain_id = provider.get_chain_id().await.map_err(|e| ForkError(e.to_string()))?;
        let header = provider
            .get_block(block)
            .await
            .map_err(|e| ForkError(e.to_string()))?
            .ok_or_else(|| ForkError(format!("block {block} not found")))?
            .header;
        Ok(Self {
            chain_id,
            number: header.number,
            timestamp: header.timestamp,
            gas_limit: header.gas_limit,
            base_fee: header.base_fee_per_gas.unwrap_or_default(),
        })
    }
}

/// COD-010: the addresses whose code hash in `state` differs from what the first validation
/// saw (`trace.code_hashes`). A non-empty answer makes the op invalid for bundling. Blocking.
pub fn changed_code(state: &BlockState, trace: &ValidationTrace) -> Result<Vec<Address>, SimError> {
    let mut changed = Vec::new();
    for (&address, &seen) in &trace.code_hashes {
        let now = state.basic_ref(address)?.map(|info| info.code_hash);
        if now != Some(seen) {
            changed.push(address);
        }
    }
    Ok(changed)
}

/// The output and gas of a successful simulation call, or the EntryPoint's verdict.
pub(crate) fn success_output(
    version: EntryPointVersion,
    result: ExecutionResult,
) -> Result<(Bytes, u64), SimError> {
    match result {
        ExecutionResult::Success { output: Output::Call(bytes), gas, .. } => {
            Ok((bytes, gas.tx_gas_used()))
        }
        ExecutionResult::Success { .. } => Err(SimError::Evm("unexpected create output".into())),
        ExecutionResult::Revert { output, .. } => Err(decode_revert(version, &output)),
        ExecutionResult::Halt { reason, .. } => Err(SimError::Halted(format!("{reason:?}"))),
    }
}

/// The entities of `op` and the EntryPoint's infrastructure addresses.
pub(crate) fn op_addresses(version: EntryPointVersion, op: &PackedUserOperation) -> OpAddresses {
    let entry_point = version.canonical_address();
    OpAddresses {
        entry_point,
        // Both versions' EntryPoints create their SenderCreator as their first CREATE.
        sender_creator: entry_point.create(1),
        sender: op.sender,
        factory: op.factory(),
        paymaster: op.paymaster(),
    }
}

/// `simulateValidation(op)` calldata for `version` (the op types of the bindings share one ABI).
pub fn simulate_validation_calldata(
    version: EntryPointVersion,
    op: &PackedUserOperation,
) -> Result<Bytes, SimError> {
    let encoded = op.abi_encode();
    let bad = |e: alloy::sol_types::Error| SimError::InvalidOp(e.to_string());
    Ok(match version {
        EntryPointVersion::V07 => v07::EntryPointSimulations::simulateValidationCall {
            userOp: SolValue::abi_decode(&encoded).map_err(bad)?,
        }
        .abi_encode(),
        EntryPointVersion::V08 => v08::EntryPointSimulations::simulateValidationCall {
            userOp: SolValue::abi_decode(&encoded).map_err(bad)?,
        }
        .abi_encode(),
    }
    .into())
}

/// Decodes the return data of `simulateValidation`.
pub fn decode_validation_result(
    version: EntryPointVersion,
    output: &Bytes,
    gas_used: u64,
) -> Result<ValidationOutcome, SimError> {
    let bad =
        |e: alloy::sol_types::Error| SimError::Evm(format!("undecodable ValidationResult: {e}"));
    macro_rules! outcome {
        ($module:ident) => {{
            let r =
                $module::EntryPointSimulations::simulateValidationCall::abi_decode_returns(output)
                    .map_err(bad)?;
            let stake = |s: &$module::entry_point_simulations::EntryPointSimulations::StakeInfo| {
                StakeInfo { stake: s.stake, unstake_delay_sec: s.unstakeDelaySec }
            };
            ValidationOutcome {
                pre_op_gas: r.returnInfo.preOpGas,
                prefund: r.returnInfo.prefund,
                account: ValidationData::unpack(r.returnInfo.accountValidationData),
                paymaster: ValidationData::unpack(r.returnInfo.paymasterValidationData),
                paymaster_context: r.returnInfo.paymasterContext.clone(),
                sender_info: stake(&r.senderInfo),
                factory_info: stake(&r.factoryInfo),
                paymaster_info: stake(&r.paymasterInfo),
                gas_used,
                trace: ValidationTrace::default(),
                raw: output.clone(),
            }
        }};
    }
    Ok(match version {
        EntryPointVersion::V07 => outcome!(v07),
        EntryPointVersion::V08 => outcome!(v08),
    })
}

/// Turns revert data into the EntryPoint's verdict.
pub(crate) fn decode_revert(version: EntryPointVersion, data: &Bytes) -> SimError {
    macro_rules! decode {
        ($module:ident) => {{
            use $module::EntryPointSimulations::EntryPointSimulationsErrors as E;
            match E::abi_decode(data) {
                Ok(E::FailedOp(e)) => SimError::Rejected { reason: e.reason, inner: None },
                Ok(E::FailedOpWithRevert(e)) => {
                    SimError::Rejected { reason: e.reason, inner: Some(e.inner) }
                }
                // Some checks are plain `require(.., "AAxx ...")` (e.g. AA94 gas overflow).
                _ => match alloy::sol_types::Revert::abi_decode(data) {
                    Ok(revert) if revert.reason.starts_with("AA") => {
                        SimError::Rejected { reason: revert.reason, inner: None }
                    }
                    _ => SimError::Reverted(data.clone()),
                },
            }
        }};
    }
    match version {
        EntryPointVersion::V07 => decode!(v07),
        EntryPointVersion::V08 => decode!(v08),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_data_unpacks_fields() {
        let aggregator = Address::repeat_byte(0xaa);
        let word = U256::from_be_slice(aggregator.as_slice())
            | (U256::from(2_000u64) << 160)
            | (U256::from(1_000u64) << 208);
        let data = ValidationData::unpack(word);
        assert_eq!(data.aggregator, Some(aggregator));
        assert!(!data.signature_failed);
        assert_eq!((data.valid_after, data.valid_until), (1_000, 2_000));

        let failed = ValidationData::unpack(U256::from(1));
        assert!(failed.signature_failed);
        assert_eq!(failed.aggregator, None);
        assert_eq!(failed.valid_until, 0xffff_ffff_ffff, "0 means no expiry");
    }
}
