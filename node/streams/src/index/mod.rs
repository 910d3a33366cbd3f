//! The stream index: every `StreamVault` stream mirrored from the vault's events, as the chain
//! follower delivers them, so the billing RPC reads exact state without the chain.
//!
//! Each block's events are applied with that block's timestamp (the vault computes with it too)
//! in one store write with the block's undo record — the touched streams as they were —, the
//! touched streams' history entries (their state after the block, so a balance at any past
//! second is exact), the payer and payee index entries of opened streams, and the new cursor;
//! the write is refused unless the stored cursor is still the block's parent. A reorg restores
//! the undo records of the removed blocks, newest first, and removes what they added. Blocks at
//! or below the cursor (a restarted follower replays from the deployment block) are skipped.
//!
//! The store is sled on one node ([`SledIndex`]) or PostgreSQL shared by several
//! ([`PgIndex`]): there one node, the holder of the index's lease, follows the chain from the
//! shared cursor and writes ([`IndexWriter`], [`StreamIndex::follow_term`]); every node reads
//! the same state and relays the notices the writer publishes with each block.

use std::sync::{Arc, atomic::AtomicI64};

use alloy::{
    primitives::{Address, B256, U256},
    rpc::types::Log,
    sol_types::SolEvent,
};
use serde::{Deserialize, Serialize};
use settled_contracts::{
    ChainEvent, NewBlock,
    StreamVault::{self as vault},
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

mod apply;
#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod pg;
mod sled_store;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use pg::PgIndex;
pub use sled_store::SledIndex;
pub use store::{BlockWrite, IndexFuture, IndexStore, Touched};
pub use writer::IndexWriter;

use super::{
    accrual::{StreamError, StreamState},
    alerts::{AlertThresholds, Alerts, NoticeKind, StreamNotice},
};

/// A stream's id in the vault.
pub type StreamId = u64;

/// Why the index could not apply or read something.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error("stream index storage: {0}")]
    Storage(String),
    /// An event does not apply to the mirrored state (the mirror and the vault disagree).
    #[error("stream {id}: event in block {block} does not apply: {source}")]
    Diverged {
        /// The stream.
        id: StreamId,
        /// The block.
        block: u64,
        /// Why.
        source: StreamError,
    },
    /// A block that does not follow the index's cursor: applying it would skip blocks (or apply
    /// a fork's), so the index stops instead and resumes from its cursor at the next start.
    #[error("block {block} does not follow the stream index's cursor (block {cursor}, {reason})")]
    Gap {
        /// The cursor's block.
        cursor: u64,
        /// The block delivered.
        block: u64,
        /// What does not match.
        reason: &'static str,
    },
    /// This node does not (or no longer) hold the shared index's lease: nothing was written.
    #[error("not writing the shared stream index: {0}")]
    NotLeading(String),
}

fn storage(error: impl std::fmt::Display) -> IndexError {
    IndexError::Storage(error.to_string())
}

/// The last block applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexCursor {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Block timestamp.
    pub timestamp: u64,
}

/// Which streams [`StreamIndex::list`] walks: all of them in id order, or one party's through
/// its secondary index (payer and payee never change, so their entries are written once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSelector {
    /// Every stream.
    All,
    /// The streams this address funds.
    Payer(Address),
    /// The streams this address earns from.
    Payee(Address),
}

/// Streams read per store page while [`StreamIndex::list`] filters.
const LIST_PAGE: usize = 256;

/// How often a reader waiting for a block asks a store another node writes.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The index: its store, and what this node does with each block it applies (alerts,
/// notices, metrics).
#[derive(Debug)]
pub struct StreamIndex {
    vault: Address,
    store: Arc<dyn IndexStore>,
    reorg_depth: u64,
    /// Serialises block application on this node.
    apply: tokio::sync::Mutex<()>,
    notices: broadcast::Sender<StreamNotice>,
    alerts: Alerts,
    /// Streams neither closed nor paused (a metric, kept up to date per block).
    active: AtomicI64,
    /// The cursor, pushed after every block and reorg this node applies: readers that wait
    /// for a block (read-your-writes, settlement) wake on it instead of polling.
    applied: tokio::sync::watch::Sender<Option<IndexCursor>>,
}

impl StreamIndex {
    /// The index of the vault at `vault` in sled `db` (one node); undo records are kept
    /// `reorg_depth` blocks; alerts per `thresholds`.
    pub async fn open(
        db: &sled::Db,
        vault: Address,
        reorg_depth: u64,
        thresholds: AlertThresholds,
    ) -> Result<Self, IndexError> {
        let store = Arc::new(SledIndex::open(db)?);
        Self::on_store(store, vault, reorg_depth, thresholds).await
    }

    /// The index of the vault at `vault` on `store`.
    pub async fn on_store(
        store: Arc<dyn IndexStore>,
        vault: Address,
        reorg_depth: u64,
        thresholds: AlertThresholds,
    ) -> Result<Self, IndexError> {
        let index = Self {
            vault,
            store,
            reorg_depth,
            apply: tokio::sync::Mutex::new(()),
            notices: broadcast::channel(4_096).0,
            alerts: Alerts::new(thresholds),
            active: AtomicI64::new(0),
            applied: tokio::sync::watch::channel(None).0,
        };
        index.applied.send_replace(index.cursor().await?);
        index.schedule_all().await?;
        Ok(index)
    }

    /// Waits until the index has applied `block` (true), or `timeout` passes (false).
    pub async fn wait_for_block(&self, block: u64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let reached = async {
            loop {
                if self.cursor().await.ok().flatten().is_some_and(|c| c.number >= block) {
                    return;
                }
                // Woken by this node's own writes; another node's show in the store.
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = tokio::time::sleep(WAIT_POLL) => {}
                }
            }
        };
        tokio::time::timeout(timeout, reached).await.is_ok()
    }

    /// Notices of changes and alerts, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamNotice> {
        self.notices.subscribe()
    }

    /// Where notices go to this node's subscribers (a shared store's relay feeds it).
    pub fn notice_sender(&self) -> broadcast::Sender<StreamNotice> {
        self.notices.clone()
    }

    /// Schedules every stream's alerts afresh (at start-up, and when this node starts
    /// writing a shared index: one pass over it).
    async fn schedule_all(&self) -> Result<(), IndexError> {
        self.alerts.reset();
        let at = self.cursor().await?.map_or(0, |c| c.timestamp);
        let mut active = 0i64;
        for (id, state) in self.list(StreamSelector::All, None, usize::MAX, |_| true).await? {
            if !state.closed && !state.paused {
                active += 1;
            }
            // An alert already due now counts as sent: it was, by whoever applied its block.
            let _ = self.alerts.check(id, &state, at, 0);
        }
        self.active.store(active, std::sync::atomic::Ordering::Relaxed);
        ::metrics::gauge!(super::alerts::ACTIVE_STREAMS).set(active as f64);
        Ok(())
    }

    /// The stream `id`, if the vault has it.
    pub async fn get(&self, id: StreamId) -> Result<Option<StreamState>, IndexError> {
        self.store.get(id).await
    }

    /// The last block applied.
    pub async fn cursor(&self) -> Result<Option<IndexCursor>, IndexError> {
        self.store.cursor().await
    }

    /// The stream `id` as it was at second `at`: its state after the last block at or before `at`
    /// that changed it (the balances then follow from the accrual math). `None` if it was not
    /// open yet.
    pub async fn get_at(&self, id: StreamId, at: u64) -> Result<Option<StreamState>, IndexError> {
        self.store.get_at(id, at).await
    }

    /// The stream's states after each block that changed it with a timestamp in
    /// `(after, until]`, in order, with those timestamps.
    pub async fn changes_between(
        &self,
        id: StreamId,
        after: u64,
        until: u64,
    ) -> Result<Vec<(u64, StreamState)>, IndexError> {
        self.store.changes_between(id, after, until).await
    }

    /// Streams with ids after `after`, in id order, among those `selector` picks, that `filter`
    /// keeps, at most `limit`.
    pub async fn list(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
        filter: impl Fn(&StreamState) -> bool + Send,
    ) -> Result<Vec<(StreamId, StreamState)>, IndexError> {
        let (mut out, mut after) = (Vec::new(), after);
        while out.len() < limit {
            let page = self.store.page(selector, after, LIST_PAGE).await?;
            let last_page = page.len() < LIST_PAGE;
            for (id, state) in page {
                after = Some(id);
                if filter(&state) && out.len() < limit {
                    out.push((id, state));
                }
            }
            if last_page {
                break;
            }
        }
        Ok(out)
    }

    /// Logs where the index stands (start-up).
    pub async fn announce(&self) {
        let cursor = self.cursor().await.ok().flatten().map(|c| c.number);
        info!(
            active = self.active.load(std::sync::atomic::Ordering::Relaxed),
            ?cursor,
            "stream index open"
        );
    }
}
