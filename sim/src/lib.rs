//! UserOperation simulation in revm with the ERC-7562 validation rules.
//!
//! Not built yet: issue #3 adds forked state, `simulateValidation`/`simulateHandleOp`, the
//! ERC-7562 inspector and gas estimation here. The crate exists now so the workspace has its
//! final shape (contracts ← sim ← bundler, paymaster ← node).
