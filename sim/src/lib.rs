//! UserOperation simulation in revm over state forked from any JSON-RPC node: no
//! `debug_traceCall`, no tracer on the node, only plain state reads.
//!
//! * [`BlockState`]: one block's state, read through from any JSON-RPC node and cached for every
//!   simulation against it; [`BlockState::successor`] keeps, for the next block, what provably
//!   did not change (code by hash, slots by storage root).
//! * [`ChainHead`]: the head block's state and context, shared by every simulation at it.
//! * [`Simulator::simulate_validation`]: `simulateValidation` with the EntryPoint's address
//!   running its version's `EntryPointSimulations` code, under the ERC-7562 tracer
//!   ([`ValidationInspector`]); decodes the `ValidationResult`, `FailedOp` reverts, and reports
//!   every rule violation ([`ValidationRules`], rule ids as in the spec).
//! * [`Simulator::simulate_handle_op`]: validation and execution of one op, with the
//!   EntryPoint's events decoded ([`ExecutionOutcome`]).
//! * [`Simulator::estimate_gas`]: ERC-7769 gas estimation by binary search ([`GasEstimate`]).
//! * [`Simulator::simulate_bundle`]: a whole `handleOps` transaction with the EntryPoint's real
//!   code — the bundle's last check and its gas ([`BundleOutcome`]).
//! * [`Simulator::required_pre_verification`]: what an op's preVerificationGas must hold — its
//!   calldata, and on an OP-stack chain the L1 data fee of its share of a bundle.
//! * [`SimOverrides`]: caller state overrides and a v0.8 op's EIP-7702 authorization.
//!
//! Every run is bounded by [`SimulationLimits`]: a gas cap and a wall-clock timeout.

mod bundle;
mod error;
mod estimate;
mod evm;
mod execution;
mod fork;
mod head;
mod inspector;
mod l1_fee;
mod overrides;
mod rules;
mod validation;

pub use bundle::{Bundle, BundleOutcome};
pub use error::SimError;
pub use estimate::{
    EstimationMargins, GasEstimate, L1_FEE_MARGIN_PERCENT, MIN_CALL_GAS_LIMIT,
    PRE_VERIFICATION_OVERHEAD_GAS, pre_verification_gas,
};
pub use execution::{ExecutionOutcome, FrameGas};
pub use fork::{AccountReads, BlockState, ForkError, ForkStats};
pub use head::ChainHead;
pub use inspector::{
    CallMade, Creation, Entity, EntityTrace, ExtCodeAccess, OpAddresses, StorageAccess,
    ValidationInspector, ValidationTrace,
};
pub use l1_fee::{
    RequiredPreVerification, l1_fee_gas, op_gas_price, op_transaction_bytes, transaction_bytes,
    with_incompressible_signature,
};
pub use overrides::SimOverrides;
pub use rules::{Rule, RuleViolation, Stakes, ValidationRules};
pub use validation::{
    BlockContext, SimulationLimits, Simulator, StakeInfo, ValidationData, ValidationOutcome,
    changed_code, decode_validation_result, simulate_validation_calldata,
};
