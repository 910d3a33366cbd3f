//! Per-second streams (issue #6): the node's mirror of `StreamVault`.
//!
//! So far: [`StreamState`], the vault's accrual math in Rust, equal to the contract to the base
//! unit (differential-tested against it on Anvil), and [`StreamIndex`], every stream mirrored in
//! sled from the vault's events, reorg-safe, and the read side of the billing RPC
//! ([`billing_module`]: `stream_get`, `stream_list`, `stream_balanceAt`, behind API keys).

mod accrual;
mod alerts;
mod index;
mod open;
mod operator;
mod rpc;

pub use accrual::{NEVER_DEPLETES, StreamError, StreamState};
pub(crate) use alerts::describe_metrics;
pub use alerts::{AlertThresholds, NoticeKind, StreamNotice};
pub use index::{IndexCursor, IndexError, StreamId, StreamIndex, StreamSelector};
pub(crate) use open::Opener;
pub use open::PreparedOpen;
pub(crate) use operator::Operator;
pub use operator::OperatorReceipt;
pub use rpc::{ApiKey, ListQuery, StreamPage, StreamView, codes as billing_codes};
pub(crate) use rpc::{BearerLayer, api_keys, billing_module};
