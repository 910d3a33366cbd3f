//! Where the bundler's state lives, behind one trait with two backends: sled ([`SledBundler`],
//! one node, the embedded default) and PostgreSQL (in `settled-store`, shared by several nodes).
//!
//! The pool is held in memory by the node leading the bundler key; the store keeps its durable
//! copy (an op is acknowledged only once stored), the index of mined ops (written by every node,
//! idempotently: every node answers receipts), the bundles recorded before their broadcast,
//! reputation counters, and — on a shared store — the ops other nodes hand to the leader
//! ([`Submission`]) with the leader's answers. Writes only the leader may make are fenced by the
//! backend (its lease on a shared store): a stale leader's write fails with
//! [`BundlerStoreError::Lost`] and writes nothing.

use std::{future::Future, pin::Pin};

use alloy::primitives::{Address, B256, Bytes};
use serde::{Deserialize, Serialize};
use settled_contracts::{EntryPointVersion, UserOperation};

use crate::{pool::PoolEntry, reputation::ReputationCounts, service::MinedOp};

#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod sled_store;

pub use sled_store::SledBundler;

/// A boxed store future, so the store is usable as `dyn BundlerStore`.
pub type BundlerFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, BundlerStoreError>> + Send + 'a>>;

/// Why a store step failed.
#[derive(Debug, thiserror::Error)]
pub enum BundlerStoreError {
    /// This node does not (or no longer) lead the bundler key: nothing was written.
    #[error("not leading the bundler key: {0}")]
    Lost(String),
    /// The store failed or could not be reached: fail closed.
    #[error("bundler store: {0}")]
    Store(String),
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> BundlerStoreError {
    BundlerStoreError::Store(e.to_string())
}

/// A bundle recorded before its broadcast: each op's hash and sender, and the signed
/// transaction (its latest version: a fee bump is recorded before it is sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentOps {
    /// Each op's hash and sender.
    pub ops: Vec<(B256, Address)>,
    /// The signed transaction: what a new leader sends again at its nonce (none in records of
    /// earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Bytes>,
}

/// One entity's counters in one EntryPoint's mempool.
pub type ReputationRow = (EntryPointVersion, Address, ReputationCounts);

/// An op another node handed to the bundler key's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    /// Its id in the store.
    pub id: i64,
    /// The EntryPoint named.
    pub entry_point: Address,
    /// The op.
    pub op: UserOperation,
}

/// The leader's answer to a [`Submission`]: what `eth_sendUserOperation` answers on the node
/// that took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Accepted (stored in the pool in the same step): the op's hash.
    Accepted(B256),
    /// Refused: the JSON-RPC error the leader's edge gave.
    Refused {
        /// The ERC-7769 code.
        code: i32,
        /// The message.
        message: String,
        /// The error's data, if any.
        data: Option<serde_json::Value>,
    },
}

/// The bundler's durable state. Each method is one atomic, durable step.
pub trait BundlerStore: Send + Sync + std::fmt::Debug {
    /// Every pooled op (a new leader's pool).
    fn pool(&self) -> BundlerFuture<'_, Vec<PoolEntry>>;

    /// One pooled op.
    fn pool_entry(&self, hash: B256) -> BundlerFuture<'_, Option<PoolEntry>>;

    /// Fenced: `entry` joins the pool and the ops it `displaced` leave it; with `answers`, that
    /// submission is answered [`Verdict::Accepted`] in the same step.
    fn admit<'a>(
        &'a self,
        entry: &'a PoolEntry,
        displaced: &'a [B256],
        answers: Option<i64>,
    ) -> BundlerFuture<'a, ()>;

    /// Takes `hashes` out of the pool (dropped or mined): idempotent, by any node.
    fn remove<'a>(&'a self, hashes: &'a [B256]) -> BundlerFuture<'a, ()>;

    /// Fenced: empties the pool.
    fn clear_pool(&self) -> BundlerFuture<'_, ()>;

    /// Indexes mined `ops` and takes them out of the pool: idempotent, by any node.
    fn index_mined<'a>(&'a self, ops: &'a [MinedOp]) -> BundlerFuture<'a, ()>;

    /// The mined ops of `blocks` (a reorg removed them) leave the index; those this bundler
    /// carried go back to the pool ([`MinedOp::requeued`]). The ops removed; by any node.
    fn unindex_blocks<'a>(&'a self, blocks: &'a [B256]) -> BundlerFuture<'a, Vec<MinedOp>>;

    /// A mined op by hash.
    fn mined(&self, hash: B256) -> BundlerFuture<'_, Option<MinedOp>>;

    /// Fenced: records `sent` at `nonce`, before its broadcast (replacing an earlier version).
    fn record_sent<'a>(&'a self, nonce: u64, sent: &'a SentOps) -> BundlerFuture<'a, ()>;

    /// Fenced: forgets the record at `nonce` if it still carries `ops` (the chain settled that
    /// nonce).
    fn remove_sent<'a>(&'a self, nonce: u64, ops: &'a [(B256, Address)]) -> BundlerFuture<'a, ()>;

    /// Every recorded bundle, oldest nonce first.
    fn sent(&self) -> BundlerFuture<'_, Vec<(u64, SentOps)>>;

    /// Every entity's counters.
    fn reputation(&self) -> BundlerFuture<'_, Vec<ReputationRow>>;

    /// Fenced: stores these counters (zero counters are forgotten).
    fn put_reputation<'a>(&'a self, rows: &'a [ReputationRow]) -> BundlerFuture<'a, ()>;

    /// Fenced: forgets every counter.
    fn clear_reputation(&self) -> BundlerFuture<'_, ()>;

    /// Hands `op` to the leader; the submission's id.
    fn submit<'a>(&'a self, entry_point: Address, op: &'a UserOperation) -> BundlerFuture<'a, i64>;

    /// The submissions not yet answered, oldest first.
    fn submissions(&self) -> BundlerFuture<'_, Vec<Submission>>;

    /// Fenced: answers submission `id` (a refusal; an acceptance is answered by `admit`).
    fn answer<'a>(&'a self, id: i64, verdict: &'a Verdict) -> BundlerFuture<'a, ()>;

    /// Submission `id`'s answer, taken (it is read once); with `withdraw`, an unanswered one is
    /// withdrawn in the same step (the caller stopped waiting: no leader will judge it after).
    fn verdict(&self, id: i64, withdraw: bool) -> BundlerFuture<'_, Option<Verdict>>;
}
