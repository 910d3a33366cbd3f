//! The index in five sled trees (one node, the embedded default): streams, undo records, the
//! cursor, each stream's history, and the payer and payee index. A block is one sled
//! transaction over all five.

use alloy::primitives::{Address, B256};
use settled_contracts::BlockRef;
use sled::Transactional as _;

use super::{
    IndexCursor, IndexError, StreamId, StreamSelector, storage,
    store::{BlockWrite, IndexFuture, IndexStore, Undo},
};
use crate::accrual::StreamState;

const PAYER_PREFIX: u8 = b'p';
const PAYEE_PREFIX: u8 = b'e';
const CURSOR_KEY: &[u8] = b"cursor";

/// `prefix ‖ party ‖ id`: the secondary index key of a stream.
fn party_key(prefix: u8, party: Address, id: StreamId) -> Vec<u8> {
    let mut key = Vec::with_capacity(29);
    key.push(prefix);
    key.extend_from_slice(party.as_slice());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// `id ‖ timestamp ‖ block`: the history entry of a stream after a block. Big-endian, so the
/// last entry at or before a second is one reverse range step away.
fn history_key(id: StreamId, timestamp: u64, block: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&id.to_be_bytes());
    key[8..16].copy_from_slice(&timestamp.to_be_bytes());
    key[16..].copy_from_slice(&block.to_be_bytes());
    key
}

fn stream_key(id: StreamId) -> [u8; 8] {
    id.to_be_bytes()
}

/// `number ‖ hash`: an undo record's key, ordered by block number.
fn undo_key(number: u64, hash: B256) -> Vec<u8> {
    let mut key = number.to_be_bytes().to_vec();
    key.extend_from_slice(hash.as_slice());
    key
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, IndexError> {
    serde_json::to_vec(value).map_err(storage)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(storage)
}

type Batches = (sled::Batch, sled::Batch, sled::Batch);

/// The index's sled trees.
#[derive(Debug, Clone)]
pub struct SledIndex {
    streams: sled::Tree,
    undo: sled::Tree,
    meta: sled::Tree,
    history: sled::Tree,
    parties: sled::Tree,
}

impl SledIndex {
    /// The index's trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, IndexError> {
        Ok(Self {
            streams: db.open_tree("streams.state").map_err(storage)?,
            undo: db.open_tree("streams.undo").map_err(storage)?,
            meta: db.open_tree("streams.meta").map_err(storage)?,
            history: db.open_tree("streams.history").map_err(storage)?,
            parties: db.open_tree("streams.parties").map_err(storage)?,
        })
    }

    fn read_cursor(&self) -> Result<Option<IndexCursor>, IndexError> {
        self.meta.get(CURSOR_KEY).map_err(storage)?.map(|v| parse(&v)).transpose()
    }

    fn read(&self, id: StreamId) -> Result<Option<StreamState>, IndexError> {
        self.streams.get(stream_key(id)).map_err(storage)?.map(|v| parse(&v)).transpose()
    }

    fn read_at(&self, id: StreamId, at: u64) -> Result<Option<StreamState>, IndexError> {
        let range = history_key(id, 0, 0)..=history_key(id, at, u64::MAX);
        let last = self.history.range(range).next_back().transpose().map_err(storage)?;
        last.map(|(_, v)| parse(&v)).transpose()
    }

    fn read_changes(
        &self,
        id: StreamId,
        after: u64,
        until: u64,
    ) -> Result<Vec<(u64, StreamState)>, IndexError> {
        if until <= after {
            return Ok(Vec::new());
        }
        let range = history_key(id, after + 1, 0)..=history_key(id, until, u64::MAX);
        self.history
            .range(range)
            .map(|entry| {
                let (key, value) = entry.map_err(storage)?;
                let at = u64::from_be_bytes(key[8..16].try_into().map_err(storage)?);
                Ok((at, parse(&value)?))
            })
            .collect()
    }

    fn read_page(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<(StreamId, StreamState)>, IndexError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        if after == Some(StreamId::MAX) || limit == 0 {
            return Ok(Vec::new());
        }
        let (prefix, party) = match selector {
            StreamSelector::All => {
                return self
                    .streams
                    .range(stream_key(start)..)
                    .take(limit)
                    .map(|entry| {
                        let (key, value) = entry.map_err(storage)?;
                        let id = u64::from_be_bytes(key.as_ref().try_into().map_err(storage)?);
                        Ok((id, parse(&value)?))
                    })
                    .collect();
            }
            StreamSelector::Payer(payer) => (PAYER_PREFIX, payer),
            StreamSelector::Payee(payee) => (PAYEE_PREFIX, payee),
        };
        let mut out = Vec::new();
        let end = party_key(prefix, party, u64::MAX);
        for entry in self.parties.range(party_key(prefix, party, start)..=end) {
            let (key, _) = entry.map_err(storage)?;
            let id = u64::from_be_bytes(key[21..].try_into().map_err(storage)?);
            if let Some(state) = self.read(id)? {
                out.push((id, state));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The block's writes to the streams, history and party trees.
    fn block_batches(block: &BlockWrite) -> Result<Batches, IndexError> {
        let (at, number) = (block.cursor.timestamp, block.cursor.number);
        let (mut streams, mut history, mut parties) = Batches::default();
        for (id, before, after) in &block.touched {
            match after {
                Some(state) => {
                    let value = json(state)?;
                    streams.insert(&stream_key(*id), value.clone());
                    history.insert(&history_key(*id, at, number), value);
                    if before.is_none() {
                        parties.insert(party_key(PAYER_PREFIX, state.payer, *id), &[]);
                        parties.insert(party_key(PAYEE_PREFIX, state.payee, *id), &[]);
                    }
                }
                None => streams.remove(&stream_key(*id)),
            }
        }
        Ok((streams, history, parties))
    }

    fn write_block(&self, block: &BlockWrite) -> Result<(), IndexError> {
        let (streams, history, parties) = Self::block_batches(block)?;
        let cursor = block.cursor;
        let undo_value = json(&block.undo())?;
        let (cursor_value, expected) =
            (json(&cursor)?, block.previous.map(|c| json(&c)).transpose()?);
        let gap = || IndexError::Gap {
            cursor: block.previous.map_or(0, |c| c.number),
            block: cursor.number,
            reason: "the stored cursor moved",
        };
        (&self.streams, &self.undo, &self.meta, &self.history, &self.parties)
            .transaction(|(s, u, m, h, p)| {
                if m.get(CURSOR_KEY)?.map(|v| v.to_vec()) != expected {
                    return sled::transaction::abort(());
                }
                s.apply_batch(&streams)?;
                h.apply_batch(&history)?;
                p.apply_batch(&parties)?;
                u.insert(undo_key(cursor.number, cursor.hash), undo_value.clone())?;
                m.insert(CURSOR_KEY, cursor_value.clone())?;
                Ok(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(()) => gap(),
                sled::transaction::TransactionError::Storage(e) => storage(e),
            })
    }

    /// The writes undoing `undo` of block `number`.
    fn undo_batches(&self, undo: &Undo, number: u64) -> Result<Batches, IndexError> {
        let (mut streams, mut history, mut parties) = Batches::default();
        for (id, before) in &undo.before {
            history.remove(&history_key(*id, undo.timestamp, number));
            match before {
                Some(state) => streams.insert(&stream_key(*id), json(state)?),
                None => {
                    // Opened in the removed block: its index entries go with it.
                    if let Some(state) = self.read(*id)? {
                        parties.remove(party_key(PAYER_PREFIX, state.payer, *id));
                        parties.remove(party_key(PAYEE_PREFIX, state.payee, *id));
                    }
                    streams.remove(&stream_key(*id))
                }
            }
        }
        Ok((streams, history, parties))
    }

    fn undo_block(&self, block: BlockRef) -> Result<bool, IndexError> {
        let key = undo_key(block.number, block.hash);
        let Some(value) = self.undo.get(&key).map_err(storage)? else { return Ok(false) };
        let undo: Undo = parse(&value)?;
        let (streams, history, parties) = self.undo_batches(&undo, block.number)?;
        let cursor_value = undo.previous_cursor.map(|c| json(&c)).transpose()?;
        (&self.streams, &self.undo, &self.meta, &self.history, &self.parties)
            .transaction(|(s, u, m, h, p)| {
                s.apply_batch(&streams)?;
                h.apply_batch(&history)?;
                p.apply_batch(&parties)?;
                u.remove(key.clone())?;
                match &cursor_value {
                    Some(v) => m.insert(CURSOR_KEY, v.clone())?,
                    None => m.remove(CURSOR_KEY)?,
                };
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| storage(format!("{e:?}")))?;
        Ok(true)
    }

    fn prune_below(&self, number: u64) -> Result<(), IndexError> {
        for entry in self.undo.range(..number.to_be_bytes().to_vec()) {
            let (key, _) = entry.map_err(storage)?;
            self.undo.remove(key).map_err(storage)?;
        }
        Ok(())
    }
}

/// Runs a write on the blocking pool.
async fn blocking<T: Send + 'static>(
    write: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    tokio::task::spawn_blocking(write).await.map_err(storage)?
}

/// sled's reads are point lookups and short ranges: they run on the caller's thread; its
/// writes on the blocking pool.
impl IndexStore for SledIndex {
    fn cursor(&self) -> IndexFuture<'_, Option<IndexCursor>> {
        Box::pin(async move { self.read_cursor() })
    }

    fn get(&self, id: StreamId) -> IndexFuture<'_, Option<StreamState>> {
        Box::pin(async move { self.read(id) })
    }

    fn get_many<'a>(
        &'a self,
        ids: &'a [StreamId],
    ) -> IndexFuture<'a, Vec<(StreamId, StreamState)>> {
        Box::pin(async move {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(state) = self.read(*id)? {
                    found.push((*id, state));
                }
            }
            Ok(found)
        })
    }

    fn get_at(&self, id: StreamId, at: u64) -> IndexFuture<'_, Option<StreamState>> {
        Box::pin(async move { self.read_at(id, at) })
    }

    fn changes_between(
        &self,
        id: StreamId,
        after: u64,
        until: u64,
    ) -> IndexFuture<'_, Vec<(u64, StreamState)>> {
        Box::pin(async move { self.read_changes(id, after, until) })
    }

    fn page(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
    ) -> IndexFuture<'_, Vec<(StreamId, StreamState)>> {
        Box::pin(async move { self.read_page(selector, after, limit) })
    }

    fn commit<'a>(&'a self, block: &'a BlockWrite) -> IndexFuture<'a, ()> {
        // A busy block's transaction takes tens of milliseconds: off the async workers.
        let (index, block) = (self.clone(), block.clone());
        Box::pin(blocking(move || index.write_block(&block)))
    }

    fn unwind(&self, block: BlockRef) -> IndexFuture<'_, bool> {
        let index = self.clone();
        Box::pin(blocking(move || index.undo_block(block)))
    }

    fn prune(&self, number: u64) -> IndexFuture<'_, ()> {
        Box::pin(async move { self.prune_below(number) })
    }

    fn publishes_notices(&self) -> bool {
        false
    }
}
