//! Per-second streams: the node's mirror of `StreamVault` and the billing RPC.
//!
//! [`StreamState`] is the vault's accrual math in Rust, equal to the contract to the base unit
//! (differential-tested against it on Anvil). [`StreamIndex`] mirrors every stream from the
//! vault's events into an [`IndexStore`] (sled on one node, PostgreSQL shared by several), reorg-safe, with each stream's history (balances at any past second) and
//! payer/payee indexes. [`billing_module`] serves the `stream_*` namespace behind API keys: reads,
//! WebSocket notices and alerts, the operator's idempotent calls, and opening streams either as a
//! sponsored UserOperation for a smart account or by the payer's signed terms and permit.

mod accrual;
mod alerts;
mod error;
mod forward;
mod index;
mod leader;
mod open;
mod operator;
mod permit;
mod rpc;

pub use accrual::{NEVER_DEPLETES, StreamError, StreamState};
pub use alerts::describe_metrics;
pub use alerts::{AlertThresholds, NoticeKind, StreamNotice};
pub use error::BillingError;
pub use forward::{Relay, forward};
#[cfg(any(test, feature = "testing"))]
pub use index::contract as index_contract;
pub use index::{
    BlockWrite, IndexCursor, IndexError, IndexFuture, IndexStore, IndexWriter, PgIndex, SledIndex,
    StreamId, StreamIndex, StreamSelector, Touched,
};
pub use open::Opener;
pub use open::{OpenOutcome, PreparedOpen};
pub use operator::Operator;
pub use operator::OperatorReceipt;
pub use permit::OpenedStream;
pub use rpc::{ApiKey, ListQuery, StreamPage, StreamView, codes as billing_codes};
pub use rpc::{Billing, api_keys, billing_module, parse_stream_id};
