//! UserOperation simulation in revm over state forked from any JSON-RPC node.
//!
//! Built so far (issue #3, in progress):
//! * [`BlockState`]: one block's state, read through from any JSON-RPC node and cached for
//!   every simulation against it.
//! * [`Simulator::simulate_validation`]: `simulateValidation` with the EntryPoint's address
//!   running its version's `EntryPointSimulations` code, under the ERC-7562 tracer
//!   ([`ValidationInspector`]); decodes the `ValidationResult`, `FailedOp` reverts, and reports
//!   every rule violation ([`ValidationRules`], rule ids as in the spec).
//!
//! Still to come: `simulateHandleOp`, gas estimation, caller state overrides, EIP-7702
//! authorizations, a wall-clock bound, and the rules not yet traced (see the README).

mod error;
mod fork;
mod inspector;
mod rules;
mod validation;

pub use error::SimError;
pub use fork::{BlockState, ForkError};
pub use inspector::{
    CallMade, Creation, Entity, EntityTrace, ExtCodeAccess, OpAddresses, StorageAccess,
    ValidationInspector, ValidationTrace,
};
pub use rules::{Rule, RuleViolation, Stakes, ValidationRules};
pub use validation::{
    BlockContext, SimulationLimits, Simulator, StakeInfo, ValidationData, ValidationOutcome,
    changed_code, decode_validation_result, simulate_validation_calldata,
};
