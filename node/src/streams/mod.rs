//! Per-second streams (issue #6): the node's mirror of `StreamVault`.
//!
//! So far: [`StreamState`], the vault's accrual math in Rust, equal to the contract to the base
//! unit (differential-tested against it on Anvil), and [`StreamIndex`], every stream mirrored in
//! sled from the vault's events, reorg-safe. The billing RPC and alerts build on them.

mod accrual;
mod index;

pub use accrual::{NEVER_DEPLETES, StreamError, StreamState};
pub use index::{IndexCursor, IndexError, StreamId, StreamIndex};
