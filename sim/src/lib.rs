//! UserOperation simulation in revm over state forked from any JSON-RPC node.
//!
//! Built so far (issue #3, first part): [`BlockState`], one block's state read through and
//! cached for every simulation against it, and [`Simulator::simulate_validation`], which runs
//! `simulateValidation` with the EntryPoint's address running its version's
//! `EntryPointSimulations` code, decodes the `ValidationResult`, and decodes `FailedOp` reverts.
//! Still to come: the ERC-7562 inspector, `simulateHandleOp`, gas estimation, state overrides,
//! EIP-7702 authorizations, time bounds.

mod error;
mod fork;
mod validation;

pub use error::SimError;
pub use fork::{BlockState, ForkError};
pub use validation::{
    BlockContext, SimulationLimits, Simulator, StakeInfo, ValidationData, ValidationOutcome,
    decode_validation_result, simulate_validation_calldata,
};
