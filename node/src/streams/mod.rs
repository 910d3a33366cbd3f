//! Per-second streams (issue #6): the node's mirror of `StreamVault`.
//!
//! So far: [`StreamState`], the vault's accrual math in Rust, equal to the contract to the base
//! unit (differential-tested against it on Anvil). Indexing, the billing RPC and alerts build on
//! it.

mod accrual;

pub use accrual::{NEVER_DEPLETES, StreamError, StreamState};
