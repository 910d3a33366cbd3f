//! Gas estimation (`eth_estimateUserOperationGas`): binary search of each gas limit with
//! `simulateHandleOp` in revm, and `preVerificationGas` from the op's calldata cost.
//!
//! How it works, and why:
//! 1. A probe with every limit high and fees zero (no payment can fail) tells whether the call
//!    (and postOp) succeed at all, and how much gas each entity's frame used — the seeds.
//! 2. Each limit is then searched with the op's own fees (ERC-7769: fees default to zero, and a
//!    paying op's validation costs more: the prefund transfer, the deposit write), the other
//!    limits at generous but realistic values so the prefund stays payable: from the seed, up by
//!    a quarter until the op passes, then bisected to within [`SEARCH_TOLERANCE`] gas. Searching
//!    beats formulas: it accounts for the 63/64 rule and any gas-dependent code exactly.
//! 3. The minimums get the configured [`EstimationMargins`], `callGasLimit` at least the cost of a
//!    value-bearing CALL (ERC-4337), and one final run with the estimate must succeed.
//! 4. `preVerificationGas` = the op's calldata cost + `PRE_VERIFICATION_OVERHEAD_GAS` (ERC-4337's
//!    50,000, which covers the 21,000 transaction base cost and the `handleOps` gas the EntryPoint
//!    does not meter for a bundle of one) + 25,000 for an EIP-7702 authorization, raised to the
//!    EIP-7623 calldata floor when the op's calldata outweighs its execution.

use alloy::{
    primitives::{Address, U256},
    sol_types::{SolCall, SolValue},
};
use settled_contracts::{EntryPointVersion, PackedUserOperation, v07};

use crate::{
    error::SimError,
    execution::ExecutionOutcome,
    fork::BlockState,
    overrides::SimOverrides,
    validation::{BlockContext, Simulator},
};

/// ERC-4337 `PRE_VERIFICATION_OVERHEAD_GAS`: per-op gas outside the EntryPoint's metering.
pub const PRE_VERIFICATION_OVERHEAD_GAS: u64 = 50_000;
/// The cost of a CALL with non-zero value: ERC-4337's floor for `callGasLimit`.
pub const MIN_CALL_GAS_LIMIT: u64 = 9_100;
/// Bisection stops when the passing and failing limits are this close.
const SEARCH_TOLERANCE: u64 = 64;
/// Balance given to a sender without a paymaster during estimation, so an account that is not
/// funded yet can still be estimated (its validation pays as a funded one would).
const ESTIMATION_BALANCE: u128 = 1 << 100;
/// Transaction base cost, and EIP-7623's per-token floor.
const TX_BASE_GAS: u64 = 21_000;
const FLOOR_GAS_PER_TOKEN: u64 = 10;
const STANDARD_GAS_PER_TOKEN: u64 = 4;
/// EIP-7702 `PER_EMPTY_ACCOUNT_COST`: intrinsic gas per authorization in a type-4 transaction.
const PER_AUTHORIZATION_GAS: u64 = 25_000;

/// Verdicts meaning "the verification limit was too low" (an entity ran out of gas).
const VERIFICATION_TOO_LOW: [&str; 4] = ["AA13", "AA21", "AA23", "AA26"];
const PAYMASTER_TOO_LOW: [&str; 2] = ["AA33", "AA36"];

/// Safety margins added to the searched minimums, in percent. The minimums are exact for the
/// state estimated against; the margin absorbs what may differ at inclusion (a signature with
/// other bytes, storage another op warmed or cooled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstimationMargins {
    /// Added to `verificationGasLimit` and `paymasterVerificationGasLimit`.
    pub verification_percent: u64,
    /// Added to `callGasLimit` and `paymasterPostOpGasLimit`.
    pub call_percent: u64,
    /// Per-op gas `preVerificationGas` covers beyond the op's calldata (the chain's mempool
    /// parameter; [`PRE_VERIFICATION_OVERHEAD_GAS`] by default).
    pub pre_verification_overhead_gas: u64,
    /// Added to the L1 data fee `preVerificationGas` carries on an OP-stack chain: the L1 fee
    /// may rise between the estimate and the bundle (the bundler tolerates a fall below it too).
    pub l1_fee_percent: u64,
}

/// [`EstimationMargins::l1_fee_percent`] by default.
pub const L1_FEE_MARGIN_PERCENT: u64 = 3;

impl Default for EstimationMargins {
    fn default() -> Self {
        Self {
            verification_percent: 2,
            call_percent: 2,
            pre_verification_overhead_gas: PRE_VERIFICATION_OVERHEAD_GAS,
            l1_fee_percent: L1_FEE_MARGIN_PERCENT,
        }
    }
}

/// Gas limits for a UserOperation, as `eth_estimateUserOperationGas` returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GasEstimate {
    /// `preVerificationGas`.
    pub pre_verification_gas: u64,
    /// `verificationGasLimit`.
    pub verification_gas_limit: u64,
    /// `callGasLimit`.
    pub call_gas_limit: u64,
    /// `paymasterVerificationGasLimit` (ops with a paymaster).
    pub paymaster_verification_gas_limit: Option<u64>,
    /// `paymasterPostOpGasLimit` (ops with a paymaster): the op's own value when it set one.
    pub paymaster_post_op_gas_limit: Option<u64>,
}

impl GasEstimate {
    /// `op` with these limits.
    pub fn apply(&self, op: &PackedUserOperation) -> PackedUserOperation {
        let mut op = op.clone();
        op.set_account_gas_limits(self.verification_gas_limit.into(), self.call_gas_limit.into());
        op.preVerificationGas = U256::from(self.pre_verification_gas);
        if let (Some(verification), Some(post_op)) =
            (self.paymaster_verification_gas_limit, self.paymaster_post_op_gas_limit)
        {
            op.set_paymaster_gas_limits(verification.into(), post_op.into());
        }
        op
    }
}

/// The four limits a trial runs with.
#[derive(Debug, Clone, Copy)]
struct Limits {
    verification: u64,
    call: u64,
    paymaster_verification: u64,
    post_op: u64,
}

impl Limits {
    fn apply(&self, op: &PackedUserOperation) -> PackedUserOperation {
        let mut op = op.clone();
        op.set_account_gas_limits(self.verification.into(), self.call.into());
        op.set_paymaster_gas_limits(self.paymaster_verification.into(), self.post_op.into());
        op
    }
}

enum Trial {
    Pass,
    TooLow(SimError),
}

fn starts_with_any(error: &SimError, prefixes: &[&str]) -> bool {
    matches!(error, SimError::Rejected { reason, .. } if prefixes.iter().any(|p| reason.starts_with(p)))
}

/// The smallest limit in `(0, cap]` that passes, to within [`SEARCH_TOLERANCE`]: from `seed` up
/// by a quarter (plus 10,000) until a pass, then bisection. At `cap` a failure is the answer.
fn search_min(
    seed: u64,
    cap: u64,
    mut trial: impl FnMut(u64) -> Result<Trial, SimError>,
) -> Result<u64, SimError> {
    let mut candidate = seed.clamp(1, cap);
    let mut failed_at = 0;
    let passed_at = loop {
        match trial(candidate)? {
            Trial::Pass => break candidate,
            Trial::TooLow(error) if candidate >= cap => return Err(error),
            Trial::TooLow(_) => {
                failed_at = candidate;
                candidate = candidate.saturating_add(candidate / 4 + 10_000).min(cap);
            }
        }
    };
    // A limit below half of what the frame used cannot pass: no need to bisect down there.
    let (mut low, mut high) = (failed_at.max(seed / 2).min(passed_at), passed_at);
    while high - low > SEARCH_TOLERANCE {
        let middle = low + (high - low) / 2;
        match trial(middle)? {
            Trial::Pass => high = middle,
            Trial::TooLow(_) => low = middle,
        }
    }
    Ok(high)
}

fn with_margin(value: u64, percent: u64) -> u64 {
    // Rounds up: a margin never makes a limit smaller.
    value.saturating_add((value.saturating_mul(percent)).div_ceil(100))
}

/// Gas of `data` as transaction calldata: (standard cost, EIP-7623 tokens).
fn calldata_gas(data: &[u8]) -> (u64, u64) {
    let zeros = data.iter().filter(|b| **b == 0).count() as u64;
    let tokens = zeros + (data.len() as u64 - zeros) * 4;
    (tokens * STANDARD_GAS_PER_TOKEN, tokens)
}

/// `preVerificationGas` before the EIP-7623 floor: the calldata cost of the op's serialization
/// (with a four-byte `preVerificationGas`, the widest it will be, and its signature's bytes all
/// non-zero) plus `overhead` (ERC-4337's [`PRE_VERIFICATION_OVERHEAD_GAS`] unless the chain's
/// mempool sets another), plus EIP-7702's intrinsic cost of the op's authorization when it
/// carries one (charged to the bundle transaction; its partial refund is capped, so not counted
/// on).
pub fn pre_verification_gas(
    op: &PackedUserOperation,
    has_authorization: bool,
    overhead: u64,
) -> u64 {
    let mut sized = op.clone();
    sized.preVerificationGas = U256::from(u32::MAX);
    // The signature is priced as all non-zero bytes: an estimate is made with a stub, and the
    // real signature of the same length must not need more.
    sized.signature = vec![0xff; op.signature.len()].into();
    let authorization = if has_authorization { PER_AUTHORIZATION_GAS } else { 0 };
    calldata_gas(&sized.abi_encode()).0 + overhead + authorization
}

/// EIP-7623: gas the bundle of one (`handleOps([op], beneficiary)`) must pay at least, less what
/// the EntryPoint charges the op for execution (`metered`); 0 when the floor does not bind.
fn calldata_floor(op: &PackedUserOperation, metered: u64) -> u64 {
    let bundle = v07::IEntryPoint::handleOpsCall {
        ops: vec![op.clone()],
        beneficiary: Address::repeat_byte(0xbe),
    }
    .abi_encode();
    let (_, tokens) = calldata_gas(&bundle);
    (TX_BASE_GAS + tokens * FLOOR_GAS_PER_TOKEN).saturating_sub(metered)
}

impl Simulator {
    /// Estimates the gas limits of `op` (ERC-7769 `eth_estimateUserOperationGas`): its fees are
    /// used as given (zero: nothing is paid), its signature is not checked, an `eip7702Auth` is
    /// applied as if the sender signed it, and a paymaster's `paymasterPostOpGasLimit` is kept
    /// when the op sets one. Errors: the EntryPoint's rejection, [`SimError::ExecutionReverted`],
    /// [`SimError::PostOpReverted`]. Blocking; runs a few dozen simulations against `state`.
    pub fn estimate_gas(
        &self,
        state: &BlockState,
        block: &BlockContext,
        version: EntryPointVersion,
        op: &PackedUserOperation,
        overrides: &SimOverrides,
    ) -> Result<GasEstimate, SimError> {
        let mut overrides = overrides.clone();
        overrides.trust_authorization = true;
        let paymaster = op.paymaster();
        if paymaster.is_none() {
            let sender = overrides.state.entry(op.sender).or_default();
            sender.balance.get_or_insert(U256::from(ESTIMATION_BALANCE));
        }
        let given_post_op =
            op.paymaster_gas_limits().map(|(_, post_op)| post_op).filter(|gas| *gas > 0);
        let given_post_op = given_post_op.map(|gas| u64::try_from(gas).unwrap_or(u64::MAX));

        let has_authorization = overrides.eip7702_auth.is_some();
        let mut base = op.clone();
        let overhead = self.margins.pre_verification_overhead_gas;
        base.preVerificationGas = U256::from(pre_verification_gas(op, has_authorization, overhead));
        let run = |limits: &Limits, fees: bool| -> Result<ExecutionOutcome, SimError> {
            let mut trial = limits.apply(&base);
            if !fees {
                trial.set_fees(0, 0);
            }
            self.simulate_handle_op(state, block, version, &trial, &overrides)
        };

        // 1. The probe: everything high, nothing paid.
        let pre_verification = base.preVerificationGas.to::<u64>();
        let searched = self.probe(&run, paymaster.is_some(), given_post_op, pre_verification)?;

        // 2. Each limit, with the op's fees.
        let limits = search_limits(&run, &searched, paymaster.is_some(), op.callData.is_empty())?;

        // 3. Margins, the floors, and one run with the estimate itself.
        let margins = self.margins;
        let mut estimate = GasEstimate {
            pre_verification_gas: 0,
            verification_gas_limit: with_margin(limits.verification, margins.verification_percent),
            call_gas_limit: with_margin(limits.call, margins.call_percent).max(MIN_CALL_GAS_LIMIT),
            paymaster_verification_gas_limit: paymaster
                .map(|_| with_margin(limits.paymaster_verification, margins.verification_percent)),
            paymaster_post_op_gas_limit: paymaster.map(|_| {
                given_post_op.unwrap_or_else(|| with_margin(limits.post_op, margins.call_percent))
            }),
        };
        let mut sized = estimate.apply(op);
        estimate.pre_verification_gas = pre_verification_gas(&sized, has_authorization, overhead);
        sized.preVerificationGas = U256::from(estimate.pre_verification_gas);
        let last = self.simulate_handle_op(state, block, version, &sized, &overrides)?;
        execution_verdict(&last)?;

        // 4. The EIP-7623 floor, against what the EntryPoint meters for this op.
        let metered = u64::try_from(last.actual_gas_used)
            .unwrap_or(u64::MAX)
            .saturating_sub(estimate.pre_verification_gas);
        estimate.pre_verification_gas =
            estimate.pre_verification_gas.max(calldata_floor(&sized, metered));

        // 5. OP stack: the L1 data fee of the op's bundle of one, in gas at the op's price.
        let l1_gas =
            self.l1_fee_gas_with_margin(state, block, version, &sized, has_authorization)?;
        estimate.pre_verification_gas = estimate.pre_verification_gas.saturating_add(l1_gas);
        Ok(estimate)
    }

    /// Step 5 of [`Simulator::estimate_gas`]: on OP stack, the L1 data fee of `sized`'s bundle
    /// of one (its signature priced as incompressible bytes) plus the margin, in gas at the
    /// op's price; 0 elsewhere.
    fn l1_fee_gas_with_margin(
        &self,
        state: &BlockState,
        block: &BlockContext,
        version: EntryPointVersion,
        sized: &PackedUserOperation,
        has_authorization: bool,
    ) -> Result<u64, SimError> {
        if !self.chain.has_l1_data_fee() {
            return Ok(0);
        }
        let priced = crate::l1_fee::with_incompressible_signature(sized);
        let overhead = self.margins.pre_verification_overhead_gas;
        let required = self.required_pre_verification(
            state,
            block,
            version,
            &priced,
            has_authorization,
            overhead,
        )?;
        let fee = required.l1_fee_wei;
        let extra = fee.saturating_mul(u128::from(self.margins.l1_fee_percent)).div_ceil(100);
        Ok(crate::l1_fee::l1_fee_gas(fee.saturating_add(extra), required.gas_price))
    }

    /// Step 1 of [`Simulator::estimate_gas`]: one run with every limit high and no fees; what
    /// each frame used seeds the search, with generous limits to search one at a time.
    fn probe(
        &self,
        run: &impl Fn(&Limits, bool) -> Result<ExecutionOutcome, SimError>,
        has_paymaster: bool,
        given_post_op: Option<u64>,
        pre_verification_gas: u64,
    ) -> Result<Searched, SimError> {
        let cap = self.limits.gas_cap;
        let if_paymaster = |gas: u64| if has_paymaster { gas } else { 0 };
        let high = Limits {
            verification: cap / 6,
            call: cap / 3,
            paymaster_verification: if_paymaster(cap / 6),
            post_op: given_post_op.unwrap_or(if_paymaster(cap / 10)),
        };
        let probe = run(&high, false)?;
        execution_verdict(&probe)?;
        let frames = probe.frames;
        let pre_op_gas = u64::try_from(probe.pre_op_gas).unwrap_or(u64::MAX);
        let validation_seed = pre_op_gas
            .saturating_sub(pre_verification_gas)
            .saturating_sub(frames.paymaster_validation);
        let generous = |used: u64| used.saturating_mul(2).saturating_add(50_000);
        let seed = Limits {
            verification: generous(validation_seed),
            call: generous(frames.execution),
            paymaster_verification: if_paymaster(generous(frames.paymaster_validation)),
            post_op: given_post_op.unwrap_or(if_paymaster(generous(frames.post_op))),
        };
        Ok(Searched { frames, high, seed, validation_seed, given_post_op })
    }
}

/// Where step 2 of [`Simulator::estimate_gas`] starts from: what the probe's frames used, the
/// probe's high limits and the generous seed limits.
struct Searched {
    frames: crate::execution::FrameGas,
    high: Limits,
    seed: Limits,
    validation_seed: u64,
    given_post_op: Option<u64>,
}

/// Each limit's lowest passing value, the others held at their seed, with the op's fees:
/// verification, the paymaster's verification and postOp (unless the op gave one), the call.
fn search_limits(
    run: &impl Fn(&Limits, bool) -> Result<ExecutionOutcome, SimError>,
    from: &Searched,
    has_paymaster: bool,
    no_call: bool,
) -> Result<Limits, SimError> {
    let (frames, high, mut limits) = (&from.frames, &from.high, from.seed);
    let verdict = |outcome: ExecutionOutcome| match execution_verdict(&outcome) {
        Ok(()) => Trial::Pass,
        Err(e) => Trial::TooLow(e),
    };
    limits.verification = search_min(from.validation_seed, high.verification, |gas| {
        match run(&Limits { verification: gas, ..limits }, true) {
            Ok(_) => Ok(Trial::Pass),
            Err(e) if starts_with_any(&e, &VERIFICATION_TOO_LOW) => Ok(Trial::TooLow(e)),
            Err(e) => Err(e),
        }
    })?;
    if has_paymaster {
        limits.paymaster_verification = search_min(
            frames.paymaster_validation,
            high.paymaster_verification,
            |gas| match run(&Limits { paymaster_verification: gas, ..limits }, true) {
                Ok(_) => Ok(Trial::Pass),
                Err(e) if starts_with_any(&e, &PAYMASTER_TOO_LOW) => Ok(Trial::TooLow(e)),
                Err(e) => Err(e),
            },
        )?;
        if from.given_post_op.is_none() {
            limits.post_op = search_min(frames.post_op, high.post_op, |gas| {
                Ok(verdict(run(&Limits { post_op: gas, ..limits }, true)?))
            })?;
        }
    }
    limits.call = if no_call {
        0
    } else {
        search_min(frames.execution, high.call, |gas| {
            Ok(verdict(run(&Limits { call: gas, ..limits }, true)?))
        })?
    };
    Ok(limits)
}

/// The op's call and postOp succeeded, or why not.
fn execution_verdict(outcome: &ExecutionOutcome) -> Result<(), SimError> {
    if outcome.success {
        return Ok(());
    }
    Err(match &outcome.post_op_revert_reason {
        Some(reason) => SimError::PostOpReverted { reason: reason.clone() },
        None => SimError::ExecutionReverted {
            reason: outcome.revert_reason.clone().unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_finds_the_threshold() {
        for threshold in [1, 63, 64, 9_999, 100_000, 123_457, 4_999_999] {
            // Seeds are what a frame used, never more than the limit it needs.
            for seed in [0, 1, threshold / 3, threshold] {
                let mut trials = 0;
                let found = search_min(seed, 5_000_000, |gas| {
                    trials += 1;
                    Ok(if gas >= threshold {
                        Trial::Pass
                    } else {
                        Trial::TooLow(SimError::Halted("low".into()))
                    })
                })
                .unwrap_or(u64::MAX);
                assert!(found >= threshold, "seed {seed}: {found} < {threshold}");
                assert!(
                    found - threshold <= SEARCH_TOLERANCE,
                    "seed {seed}: {found} vs {threshold}"
                );
                assert!(trials <= 40, "seed {seed}, threshold {threshold}: {trials} trials");
            }
        }
    }

    #[test]
    fn search_reports_the_failure_at_the_cap() {
        let result = search_min(1_000, 50_000, |_| {
            Ok(Trial::TooLow(SimError::Rejected { reason: "AA26 over".into(), inner: None }))
        });
        assert!(matches!(result, Err(SimError::Rejected { .. })));
    }

    #[test]
    fn margins_round_up() {
        assert_eq!(with_margin(100, 2), 102);
        assert_eq!(with_margin(101, 2), 104, "2.02 rounds up to 3");
        assert_eq!(with_margin(0, 50), 0);
        assert_eq!(with_margin(u64::MAX, 10), u64::MAX);
    }

    #[test]
    fn calldata_costs_zero_and_nonzero_bytes() {
        assert_eq!(calldata_gas(&[0, 0, 1]), (4 + 4 + 16, 1 + 1 + 4));
    }
}
