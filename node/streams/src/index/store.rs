//! Where the index keeps its state: a store with one atomic write per block (the touched
//! streams, their history, the undo record and the cursor, refused unless the stored cursor is
//! still the block's parent) and the reads the billing RPC, the customer page and settlement
//! make. Two backends: sled ([`super::SledIndex`], one node) and PostgreSQL
//! ([`super::PgIndex`], every node reads what the chain-follower leader writes).

use std::{future::Future, pin::Pin};

use serde::{Deserialize, Serialize};
use settled_contracts::BlockRef;

use super::{IndexCursor, IndexError, StreamId, StreamSelector};
use crate::{accrual::StreamState, alerts::StreamNotice};

/// A boxed store future, so the store is usable as `dyn IndexStore`.
pub type IndexFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, IndexError>> + Send + 'a>>;

/// A stream a block touches: its id, its state before the block, and after.
pub type Touched = (StreamId, Option<StreamState>, Option<StreamState>);

/// One block's writes, applied whole or not at all.
#[derive(Debug, Clone)]
pub struct BlockWrite {
    /// The block, as the new cursor.
    pub cursor: IndexCursor,
    /// The cursor the block was folded on: the write is refused if the store's moved.
    pub previous: Option<IndexCursor>,
    /// Each stream the block changed.
    pub touched: Vec<Touched>,
    /// The block's notices: a shared store publishes them with the block.
    pub notices: Vec<StreamNotice>,
}

impl BlockWrite {
    /// The undo record of the block.
    pub(crate) fn undo(&self) -> Undo {
        Undo {
            before: self.touched.iter().map(|(id, before, _)| (*id, before.clone())).collect(),
            previous_cursor: self.previous,
            timestamp: self.cursor.timestamp,
        }
    }
}

/// A block's undo record: the streams it touched, as they were before it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Undo {
    pub(crate) before: Vec<(StreamId, Option<StreamState>)>,
    pub(crate) previous_cursor: Option<IndexCursor>,
    /// The block's timestamp, which keys its history entries.
    #[serde(default)]
    pub(crate) timestamp: u64,
}

/// The index's state, one atomic step per method.
pub trait IndexStore: Send + Sync + std::fmt::Debug {
    /// The last block applied.
    fn cursor(&self) -> IndexFuture<'_, Option<IndexCursor>>;

    /// Stream `id` now.
    fn get(&self, id: StreamId) -> IndexFuture<'_, Option<StreamState>>;

    /// The streams of `ids` the store has (one read, for the streams a block touches).
    fn get_many<'a>(&'a self, ids: &'a [StreamId])
    -> IndexFuture<'a, Vec<(StreamId, StreamState)>>;

    /// Stream `id` after the last block at or before second `at` that changed it.
    fn get_at(&self, id: StreamId, at: u64) -> IndexFuture<'_, Option<StreamState>>;

    /// Stream `id` after each block that changed it with a timestamp in `(after, until]`, in
    /// order, with those timestamps.
    fn changes_between(
        &self,
        id: StreamId,
        after: u64,
        until: u64,
    ) -> IndexFuture<'_, Vec<(u64, StreamState)>>;

    /// Up to `limit` streams `selector` picks with ids after `after`, in id order.
    fn page(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
    ) -> IndexFuture<'_, Vec<(StreamId, StreamState)>>;

    /// Writes `block` with its undo record and cursor; [`IndexError::Gap`] (nothing written)
    /// when the stored cursor is not `block.previous`.
    fn commit<'a>(&'a self, block: &'a BlockWrite) -> IndexFuture<'a, ()>;

    /// Undoes `block` if its undo record is kept (true), restoring the cursor before it.
    fn unwind(&self, block: BlockRef) -> IndexFuture<'_, bool>;

    /// Forgets the undo records of blocks below `number`.
    fn prune(&self, number: u64) -> IndexFuture<'_, ()>;

    /// Whether [`IndexStore::commit`] publishes the block's notices to every node (a shared
    /// store), rather than this node handing them to its subscribers itself.
    fn publishes_notices(&self) -> bool;
}
