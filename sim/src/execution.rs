//! `simulateHandleOp` in revm: validation and execution of one op as `handleOps` would run it,
//! with the EntryPoint's events decoded (did the call succeed, what did the op pay) and the gas
//! each entity's frame used (the seeds of gas estimation).

use alloy::{
    primitives::{Address, Bytes, U256},
    sol_types::{SolCall, SolEvent, SolValue},
};
use revm::{
    Inspector,
    context_interface::{ContextTr, result::ExecutionResult},
    interpreter::{CallInputs, CallOutcome, Interpreter, interpreter::EthInterpreter},
};
use settled_contracts::{EntryPointVersion, PackedUserOperation, v07, v08};

use crate::{
    error::SimError,
    evm::{Deadline, EntryPointCall, call_entry_point},
    fork::BlockState,
    overrides::SimOverrides,
    validation::{BlockContext, Simulator, ValidationData, op_addresses, success_output},
};

/// Gas used by each entity's frame, as the EntryPoint called it (0: not called).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameGas {
    /// The factory deploying the sender.
    pub factory: u64,
    /// The account's `validateUserOp`.
    pub account_validation: u64,
    /// The paymaster's `validatePaymasterUserOp`.
    pub paymaster_validation: u64,
    /// The account executing `callData`.
    pub execution: u64,
    /// The paymaster's `postOp`.
    pub post_op: u64,
}

/// What `simulateHandleOp` reports, plus the EntryPoint's events for the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionOutcome {
    /// Gas used by validation, including preVerificationGas.
    pub pre_op_gas: U256,
    /// What the op paid (wei).
    pub paid: U256,
    /// The account's verdict.
    pub account: ValidationData,
    /// The paymaster's verdict.
    pub paymaster: ValidationData,
    /// `UserOperationEvent.success`: the call (and postOp) succeeded.
    pub success: bool,
    /// `UserOperationEvent.actualGasUsed`: what the op is charged for, penalties included.
    pub actual_gas_used: U256,
    /// `UserOperationEvent.actualGasCost`.
    pub actual_gas_cost: U256,
    /// `UserOperationRevertReason.revertReason`, when the call reverted with data.
    pub revert_reason: Option<Bytes>,
    /// `PostOpRevertReason.revertReason`, when postOp reverted.
    pub post_op_revert_reason: Option<Bytes>,
    /// Gas per entity frame.
    pub frames: FrameGas,
    /// Gas the simulation call used.
    pub gas_used: u64,
}

impl Simulator {
    /// Runs `simulateHandleOp(op)` for `version`'s EntryPoint over `state` with `overrides`:
    /// validation (without the ERC-7562 tracer) and execution, bounded by the simulator's gas and
    /// time limits, in the block after `block` (where the op can execute at the earliest). An
    /// EntryPoint rejection is an error; a reverted call is a successful run with
    /// `success == false` (see [`ExecutionOutcome::revert_reason`]). Blocking.
    pub fn simulate_handle_op(
        &self,
        state: &BlockState,
        block: &BlockContext,
        version: EntryPointVersion,
        op: &PackedUserOperation,
        overrides: &SimOverrides,
    ) -> Result<ExecutionOutcome, SimError> {
        let call = EntryPointCall {
            version,
            calldata: simulate_handle_op_calldata(version, op)?,
            overrides,
            sender: op.sender,
            gas_cap: self.limits.gas_cap,
        };
        let addresses = op_addresses(version, op);
        let inspector = FrameGasInspector {
            entry_point: addresses.entry_point,
            sender_creator: addresses.sender_creator,
            sender: op.sender,
            factory: addresses.factory,
            paymaster: addresses.paymaster,
            frames: FrameGas::default(),
            deadline: Deadline::after(self.limits.timeout),
        };
        let (result, inspector) =
            call_entry_point(state, &block.next(), &self.code, call, inspector)?;
        if inspector.deadline.passed() {
            return Err(SimError::Timeout(self.limits.timeout));
        }
        let logs = match &result {
            ExecutionResult::Success { logs, .. } => logs.clone(),
            _ => Vec::new(),
        };
        let (output, gas_used) = success_output(version, result)?;
        let returned = decode_execution_result(version, &output)?;
        let mut outcome = ExecutionOutcome {
            pre_op_gas: returned.0,
            paid: returned.1,
            account: ValidationData::unpack(returned.2),
            paymaster: ValidationData::unpack(returned.3),
            success: false,
            actual_gas_used: U256::ZERO,
            actual_gas_cost: U256::ZERO,
            revert_reason: None,
            post_op_revert_reason: None,
            frames: inspector.frames,
            gas_used,
        };
        read_op_events(&mut outcome, &logs, addresses.entry_point)?;
        Ok(outcome)
    }
}

/// Fills `outcome` from the EntryPoint's events in `logs`: `UserOperationEvent` (success and
/// the gas paid; an error without one) and the call's and postOp's revert reasons.
fn read_op_events(
    outcome: &mut ExecutionOutcome,
    logs: &[alloy::primitives::Log],
    entry_point: Address,
) -> Result<(), SimError> {
    // Both versions declare these events identically.
    use v07::EntryPoint::{PostOpRevertReason, UserOperationEvent, UserOperationRevertReason};
    let mut saw_event = false;
    for log in logs.iter().filter(|log| log.address == entry_point) {
        match log.topics().first() {
            Some(&UserOperationEvent::SIGNATURE_HASH) => {
                let event = UserOperationEvent::decode_log_data(&log.data)
                    .map_err(|e| SimError::Evm(format!("undecodable UserOperationEvent: {e}")))?;
                outcome.success = event.success;
                outcome.actual_gas_used = event.actualGasUsed;
                outcome.actual_gas_cost = event.actualGasCost;
                saw_event = true;
            }
            Some(&UserOperationRevertReason::SIGNATURE_HASH) => {
                if let Ok(event) = UserOperationRevertReason::decode_log_data(&log.data) {
                    outcome.revert_reason = Some(event.revertReason);
                }
            }
            Some(&PostOpRevertReason::SIGNATURE_HASH) => {
                if let Ok(event) = PostOpRevertReason::decode_log_data(&log.data) {
                    outcome.post_op_revert_reason = Some(event.revertReason);
                }
            }
            _ => {}
        }
    }
    if !saw_event {
        return Err(SimError::Evm("simulateHandleOp emitted no UserOperationEvent".into()));
    }
    Ok(())
}

/// `simulateHandleOp(op, 0, "")` calldata for `version`.
fn simulate_handle_op_calldata(
    version: EntryPointVersion,
    op: &PackedUserOperation,
) -> Result<Bytes, SimError> {
    let encoded = op.abi_encode();
    let bad = |e: alloy::sol_types::Error| SimError::InvalidOp(e.to_string());
    Ok(match version {
        EntryPointVersion::V07 => v07::EntryPointSimulations::simulateHandleOpCall {
            op: SolValue::abi_decode(&encoded).map_err(bad)?,
            target: Address::ZERO,
            targetCallData: Bytes::new(),
        }
        .abi_encode(),
        EntryPointVersion::V08 => v08::EntryPointSimulations::simulateHandleOpCall {
            op: SolValue::abi_decode(&encoded).map_err(bad)?,
            target: Address::ZERO,
            targetCallData: Bytes::new(),
        }
        .abi_encode(),
    }
    .into())
}

/// `(preOpGas, paid, accountValidationData, paymasterValidationData)` of an `ExecutionResult`.
fn decode_execution_result(
    version: EntryPointVersion,
    output: &Bytes,
) -> Result<(U256, U256, U256, U256), SimError> {
    let bad =
        |e: alloy::sol_types::Error| SimError::Evm(format!("undecodable ExecutionResult: {e}"));
    macro_rules! fields {
        ($module:ident) => {{
            let r =
                $module::EntryPointSimulations::simulateHandleOpCall::abi_decode_returns(output)
                    .map_err(bad)?;
            (r.preOpGas, r.paid, r.accountValidationData, r.paymasterValidationData)
        }};
    }
    Ok(match version {
        EntryPointVersion::V07 => fields!(v07),
        EntryPointVersion::V08 => fields!(v08),
    })
}

/// Records the gas of each entity frame the EntryPoint (or its SenderCreator) opens, and bounds
/// the run's wall-clock time.
#[derive(Debug)]
struct FrameGasInspector {
    entry_point: Address,
    sender_creator: Address,
    sender: Address,
    factory: Option<Address>,
    paymaster: Option<Address>,
    frames: FrameGas,
    deadline: Deadline,
}

impl<CTX: ContextTr> Inspector<CTX, EthInterpreter> for FrameGasInspector {
    fn step(&mut self, interp: &mut Interpreter<EthInterpreter>, _context: &mut CTX) {
        self.deadline.halt_if_passed(interp);
    }

    fn call_end(&mut self, _context: &mut CTX, inputs: &CallInputs, outcome: &mut CallOutcome) {
        let used = inputs.gas_limit.saturating_sub(outcome.result.gas.remaining());
        let target = inputs.target_address;
        if inputs.caller == self.sender_creator && Some(target) == self.factory {
            self.frames.factory = used;
        } else if inputs.caller == self.entry_point && target == self.sender {
            // validateUserOp first, then the execution of callData.
            if self.frames.account_validation == 0 {
                self.frames.account_validation = used;
            } else {
                self.frames.execution = used;
            }
        } else if inputs.caller == self.entry_point && Some(target) == self.paymaster {
            if self.frames.paymaster_validation == 0 {
                self.frames.paymaster_validation = used;
            } else {
                self.frames.post_op = used;
            }
        }
    }
}
