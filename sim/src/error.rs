//! Why a simulation did not produce a result.

use alloy::primitives::{Address, Bytes};

use crate::{fork::ForkError, rules::RuleViolation};

/// Simulation failures. The RPC layer maps them to ERC-7769 codes.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The EntryPoint rejected the op (`FailedOp`/`FailedOpWithRevert`, an `AAxx` reason).
    #[error("{reason}")]
    Rejected {
        /// The EntryPoint's reason, e.g. `AA23 reverted`.
        reason: String,
        /// The revert data of the entity's call, for `FailedOpWithRevert`.
        inner: Option<Bytes>,
    },
    /// Validation broke ERC-7562 rules; every violation is listed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    RuleViolations(Vec<RuleViolation>),
    /// The simulation reverted with data the EntryPoint does not define.
    #[error("simulation reverted: {0}")]
    Reverted(Bytes),
    /// The simulation halted (out of gas, invalid opcode, ...).
    #[error("simulation halted: {0}")]
    Halted(String),
    /// There is no EntryPoint code at the address.
    #[error("no EntryPoint deployed at {0}")]
    NoEntryPoint(Address),
    /// The op's execution (`callData`) reverted; `reason` is the account's revert data.
    #[error("execution reverted")]
    ExecutionReverted {
        /// Revert data (empty when the call ran out of gas or reverted without data).
        reason: Bytes,
    },
    /// The paymaster's `postOp` reverted.
    #[error("paymaster postOp reverted")]
    PostOpReverted {
        /// Revert data.
        reason: Bytes,
    },
    /// The simulation ran past its wall-clock bound.
    #[error("simulation exceeded its time limit of {0:?}")]
    Timeout(std::time::Duration),
    /// A caller-supplied state override cannot be applied.
    #[error("invalid state override: {0}")]
    InvalidOverride(String),
    /// The op's EIP-7702 authorization is not valid for its sender on this chain.
    #[error("invalid eip7702Auth: {0}")]
    InvalidAuthorization(String),
    /// The op could not be encoded.
    #[error("invalid user operation: {0}")]
    InvalidOp(String),
    /// The EVM could not run the call.
    #[error("evm: {0}")]
    Evm(String),
    /// Forked state could not be read.
    #[error(transparent)]
    Fork(#[from] ForkError),
}
