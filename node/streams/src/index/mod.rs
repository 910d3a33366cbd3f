//! The stream index: every `StreamVault` stream mirrored in sled from the vault's events, as the
//! chain follower delivers them, so the billing RPC reads exact state without the chain.
//!
//! Each block's events are applied with that block's timestamp (the vault computes with it too)
//! in one sled transaction with the block's undo record — the touched streams as they were —,
//! the touched streams' history entries (their state after the block, so a balance at any past
//! second is exact), the payer and payee index entries of opened streams, and the new cursor. A
//! reorg restores the undo records of the removed blocks, newest first, and removes what they
//! added. Blocks at or below the cursor (a restarted follower replays from the deployment block)
//! are skipped.

use std::sync::Mutex;

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
    /// The blocking thread applying a block failed.
    #[error("stream index worker: {0}")]
    Worker(String),
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

/// A block's undo record: the streams it touched, as they were before it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Undo {
    before: Vec<(StreamId, Option<StreamState>)>,
    previous_cursor: Option<IndexCursor>,
    /// The block's timestamp, which keys its history entries.
    #[serde(default)]
    timestamp: u64,
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

const PAYER_PREFIX: u8 = b'p';
const PAYEE_PREFIX: u8 = b'e';

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

const CURSOR_KEY: &[u8] = b"cursor";

fn stream_key(id: StreamId) -> [u8; 8] {
    id.to_be_bytes()
}

fn undo_key(number: u64, hash: B256) -> Vec<u8> {
    let mut key = number.to_be_bytes().to_vec();
    key.extend_from_slice(hash.as_slice());
    key
}

/// The index over five sled trees: streams, undo records, the cursor, each stream's history, and
/// the payer and payee index.
#[derive(Debug)]
pub struct StreamIndex {
    vault: Address,
    streams: sled::Tree,
    undo: sled::Tree,
    meta: sled::Tree,
    history: sled::Tree,
    parties: sled::Tree,
    reorg_depth: u64,
    /// Serialises block application with reads of the cursor.
    apply: Mutex<()>,
    notices: broadcast::Sender<StreamNotice>,
    alerts: Alerts,
    /// Streams neither closed nor paused (a metric, kept up to date per block).
    active: std::sync::atomic::AtomicI64,
    /// The cursor, pushed after every applied block and reorg: readers that wait for a block
    /// (read-your-writes, settlement) wake on it instead of polling.
    applied: tokio::sync::watch::Sender<Option<IndexCursor>>,
}

impl StreamIndex {
    /// The index of the vault at `vault`, in `db`; undo records are kept `reorg_depth` blocks;
    /// alerts per `thresholds`.
    pub fn open(
        db: &sled::Db,
        vault: Address,
        reorg_depth: u64,
        thresholds: AlertThresholds,
    ) -> Result<Self, IndexError> {
        let index = Self {
            vault,
            streams: db.open_tree("streams.state").map_err(storage)?,
            undo: db.open_tree("streams.undo").map_err(storage)?,
            meta: db.open_tree("streams.meta").map_err(storage)?,
            history: db.open_tree("streams.history").map_err(storage)?,
            parties: db.open_tree("streams.parties").map_err(storage)?,
            reorg_depth,
            apply: Mutex::new(()),
            notices: broadcast::channel(4_096).0,
            alerts: Alerts::new(thresholds),
            active: std::sync::atomic::AtomicI64::new(0),
            applied: tokio::sync::watch::channel(None).0,
        };
        index.applied.send_replace(index.cursor()?);
        index.schedule_all()?;
        Ok(index)
    }

    /// Waits until the index has applied `block` (true), or `timeout` passes (false).
    pub async fn wait_for_block(&self, block: u64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let reached = applied.wait_for(|c| c.is_some_and(|c| c.number >= block));
        matches!(tokio::time::timeout(timeout, reached).await, Ok(Ok(_)))
    }

    /// Notices of changes and alerts, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamNotice> {
        self.notices.subscribe()
    }

    /// After `block` was applied: a `changed` notice per touched stream, and the alerts of the
    /// touched streams and of those whose next alert fell due.
    pub(super) fn notify(&self, block: &NewBlock, touched: &[StreamId]) -> Result<(), IndexError> {
        let at = block.timestamp;
        let number = block.block.number;
        for id in touched {
            if let Some(state) = self.get(*id)? {
                let stream = super::rpc::StreamView::new(*id, &state, at);
                let _ = self.notices.send(StreamNotice {
                    kind: NoticeKind::Changed,
                    block: number,
                    stream,
                });
            }
        }
        let mut examine: Vec<StreamId> = touched.to_vec();
        examine.extend(self.alerts.due(at));
        examine.sort_unstable();
        examine.dedup();
        for id in examine {
            let Some(state) = self.get(id)? else { continue };
            if let Some(notice) = self.alerts.check(id, &state, at, number) {
                let _ = self.notices.send(notice);
            }
        }
        Ok(())
    }

    /// Schedules every stream's alerts (start-up: one pass over the index).
    fn schedule_all(&self) -> Result<(), IndexError> {
        let at = self.cursor()?.map_or(0, |c| c.timestamp);
        let mut active = 0i64;
        for (id, state) in self.list(StreamSelector::All, None, usize::MAX, |_| true)? {
            if !state.closed && !state.paused {
                active += 1;
            }
            // Alerts already due at start-up are sent with the next block.
            let _ = self.alerts.check(id, &state, at, 0);
        }
        self.active.store(active, std::sync::atomic::Ordering::Relaxed);
        ::metrics::gauge!(super::alerts::ACTIVE_STREAMS).set(active as f64);
        Ok(())
    }

    /// The stream `id`, if the vault has it.
    pub fn get(&self, id: StreamId) -> Result<Option<StreamState>, IndexError> {
        self.streams
            .get(stream_key(id))
            .map_err(storage)?
            .map(|v| serde_json::from_slice(&v).map_err(storage))
            .transpose()
    }

    /// The last block applied.
    pub fn cursor(&self) -> Result<Option<IndexCursor>, IndexError> {
        self.meta
            .get(CURSOR_KEY)
            .map_err(storage)?
            .map(|v| serde_json::from_slice(&v).map_err(storage))
            .transpose()
    }

    /// The stream `id` as it was at second `at`: its state after the last block at or before `at`
    /// that changed it (the balances then follow from the accrual math). `None` if it was not
    /// open yet.
    pub fn get_at(&self, id: StreamId, at: u64) -> Result<Option<StreamState>, IndexError> {
        let range = history_key(id, 0, 0)..=history_key(id, at, u64::MAX);
        self.history
            .range(range)
            .next_back()
            .transpose()
            .map_err(storage)?
            .map(|(_, v)| serde_json::from_slice(&v).map_err(storage))
            .transpose()
    }

    /// The stream's states after each block that changed it with a timestamp in
    /// `(after, until]`, in order, with those timestamps.
    pub fn changes_between(
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
                Ok((at, serde_json::from_slice(&value).map_err(storage)?))
            })
            .collect()
    }

    /// Streams with ids after `after`, in id order, among those `selector` picks, that `filter`
    /// keeps, at most `limit`.
    pub fn list(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
        filter: impl Fn(&StreamState) -> bool,
    ) -> Result<Vec<(StreamId, StreamState)>, IndexError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        let mut keep = |id: StreamId, state: StreamState| {
            if filter(&state) {
                out.push((id, state));
            }
            out.len() >= limit
        };
        let (prefix, party) = match selector {
            StreamSelector::All => {
                for entry in self.streams.range(stream_key(start)..) {
                    let (key, value) = entry.map_err(storage)?;
                    let id = u64::from_be_bytes(key.as_ref().try_into().map_err(storage)?);
                    let state: StreamState = serde_json::from_slice(&value).map_err(storage)?;
                    if keep(id, state) {
                        break;
                    }
                }
                return Ok(out);
            }
            StreamSelector::Payer(payer) => (PAYER_PREFIX, payer),
            StreamSelector::Payee(payee) => (PAYEE_PREFIX, payee),
        };
        let end = party_key(prefix, party, u64::MAX);
        for entry in self.parties.range(party_key(prefix, party, start)..=end) {
            let (key, _) = entry.map_err(storage)?;
            let id = u64::from_be_bytes(key[21..].try_into().map_err(storage)?);
            let Some(state) = self.get(id)? else { continue };
            if keep(id, state) {
                break;
            }
        }
        Ok(out)
    }

    /// Logs how many streams the index holds (start-up).
    pub fn announce(&self) {
        info!(streams = self.streams.len(), cursor = ?self.cursor().ok().flatten().map(|c| c.number), "stream index open");
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::aliases::U96;
    use settled_contracts::BlockRef;

    use super::*;

    const VAULT: Address = Address::repeat_byte(0x5a);
    const PAYER: Address = Address::repeat_byte(1);
    const TOKEN: Address = Address::repeat_byte(3);

    fn log(data: alloy::primitives::LogData) -> Log {
        Log { inner: alloy::primitives::Log { address: VAULT, data }, ..Default::default() }
    }

    fn opened(id: u64, payee: Address) -> Log {
        log(vault::StreamOpened {
            streamId: U256::from(id),
            payer: PAYER,
            payee,
            token: TOKEN,
            decimals: 6,
            operator: Address::repeat_byte(4),
            // 1 base unit per second.
            ratePerSecond: U96::from(10u64.pow(12)),
            maxRate: U96::ZERO,
            maxTotal: U96::ZERO,
        }
        .encode_log_data())
    }

    fn deposited(id: u64, amount: u128) -> Log {
        log(vault::Deposited { streamId: U256::from(id), funder: PAYER, amount }.encode_log_data())
    }

    fn block(number: u64, timestamp: u64, logs: Vec<Log>) -> NewBlock {
        NewBlock {
            block: BlockRef { number, hash: B256::from(U256::from(number)) },
            parent_hash: B256::from(U256::from(number - 1)),
            timestamp,
            logs,
        }
    }

    fn index() -> Result<(tempfile::TempDir, StreamIndex), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        Ok((dir, StreamIndex::open(&db, VAULT, 16, AlertThresholds::default())?))
    }

    /// A balance at a past second uses the state of then: a later deposit, which leaves the
    /// accrual snapshot alone, does not leak into earlier seconds.
    #[test]
    fn history_answers_for_any_past_second() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, index) = index()?;
        let payee = Address::repeat_byte(2);
        index.apply_block(&block(1, 1_000, vec![opened(1, payee), deposited(1, 100)]))?;
        index.apply_block(&block(2, 1_050, vec![deposited(1, 40)]))?;
        assert!(index.get_at(1, 999)?.is_none(), "not open yet");
        let then = index.get_at(1, 1_049)?.ok_or("no state at 1049")?;
        assert_eq!(then.balance, 100);
        assert_eq!(then.covered_debt(1_049), 49);
        let now = index.get_at(1, 1_200)?.ok_or("no state at 1200")?;
        assert_eq!(now.balance, 140);
        assert_eq!(now.covered_debt(1_200), 140);
        assert_eq!(Some(now), index.get(1)?);
        Ok(())
    }

    /// A block that skips ahead of the cursor, or whose parent is not the cursor's block, is
    /// refused and changes nothing: the index never applies past a hole.
    #[test]
    fn a_block_that_does_not_follow_the_cursor_is_refused() -> Result<(), Box<dyn std::error::Error>>
    {
        let (_dir, index) = index()?;
        let payee = Address::repeat_byte(2);
        index.apply_block(&block(1, 1_000, vec![opened(1, payee), deposited(1, 100)]))?;
        let skipped = index.apply_block(&block(3, 1_100, vec![deposited(1, 5)]));
        assert!(matches!(skipped, Err(IndexError::Gap { cursor: 1, block: 3, .. })), "{skipped:?}");
        let mut forked = block(2, 1_050, vec![deposited(1, 5)]);
        forked.parent_hash = B256::repeat_byte(9);
        let forked = index.apply_block(&forked);
        assert!(matches!(forked, Err(IndexError::Gap { cursor: 1, block: 2, .. })), "{forked:?}");
        assert_eq!(index.get(1)?.map(|s| s.balance), Some(100));
        assert_eq!(index.cursor()?.map(|c| c.number), Some(1));
        index.apply_block(&block(2, 1_050, vec![deposited(1, 5)]))?;
        assert_eq!(index.get(1)?.map(|s| s.balance), Some(105));
        Ok(())
    }

    /// A reader waiting for a block wakes when the index applies it (no polling), and gives up
    /// at its timeout.
    #[tokio::test]
    async fn waiting_for_a_block_wakes_when_it_is_applied() -> Result<(), Box<dyn std::error::Error>>
    {
        let (_dir, index) = index()?;
        let index = std::sync::Arc::new(index);
        let short = std::time::Duration::from_millis(50);
        assert!(!index.wait_for_block(1, short).await, "nothing applied yet");
        let waiter = {
            let index = index.clone();
            tokio::spawn(async move {
                index.wait_for_block(2, std::time::Duration::from_secs(10)).await
            })
        };
        index.apply_block(&block(1, 1_000, Vec::new()))?;
        index.apply_block(&block(2, 1_001, Vec::new()))?;
        assert!(waiter.await?, "woken by block 2");
        assert!(index.wait_for_block(2, short).await, "already there");
        Ok(())
    }

    /// One `BatchWithdrawn` pays each listed stream its own amount, at the block's second, and
    /// leaves the streams it does not list alone.
    #[test]
    fn a_batch_withdrawal_pays_each_stream_it_lists() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, index) = index()?;
        let payee = Address::repeat_byte(2);
        let opens = (1..=3).flat_map(|id| [opened(id, payee), deposited(id, 100)]).collect();
        index.apply_block(&block(1, 1_000, opens))?;
        let entry = |id: u64, amount: u64| U256::from(id) << 128 | U256::from(amount);
        let paid = vault::BatchWithdrawn { paid: vec![entry(1, 30), entry(3, 25)] };
        let touched = index.apply_block(&block(2, 1_030, vec![log(paid.encode_log_data())]))?;
        assert_eq!(touched, vec![1, 3]);
        let one = index.get(1)?.ok_or("no stream 1")?;
        assert_eq!((one.withdrawn, one.balance, one.covered_debt(1_030)), (30, 70, 0));
        let three = index.get(3)?.ok_or("no stream 3")?;
        assert_eq!((three.withdrawn, three.balance, three.covered_debt(1_030)), (25, 75, 5));
        let two = index.get(2)?.ok_or("no stream 2")?;
        assert_eq!((two.withdrawn, two.covered_debt(1_030)), (0, 30), "not listed: untouched");
        Ok(())
    }

    /// Party indexes select exactly a payer's or payee's streams, page by page; a reorg removes
    /// the history and index entries its blocks added.
    #[test]
    fn party_indexes_and_history_follow_reorgs() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, index) = index()?;
        let (a, b) = (Address::repeat_byte(0xa), Address::repeat_byte(0xb));
        let logs = (1..=6).map(|id| opened(id, if id % 2 == 0 { a } else { b })).collect();
        index.apply_block(&block(1, 1_000, logs))?;
        let ids = |page: Vec<(StreamId, StreamState)>| page.into_iter().map(|(id, _)| id).collect();
        let of_a: Vec<_> = ids(index.list(StreamSelector::Payee(a), None, 10, |_| true)?);
        assert_eq!(of_a, vec![2, 4, 6]);
        let next: Vec<_> = ids(index.list(StreamSelector::Payee(a), Some(2), 1, |_| true)?);
        assert_eq!(next, vec![4]);
        let of_payer: Vec<_> =
            ids(index.list(StreamSelector::Payer(PAYER), Some(4), 10, |_| true)?);
        assert_eq!(of_payer, vec![5, 6]);
        assert!(index.list(StreamSelector::Payer(a), None, 10, |_| true)?.is_empty());

        index.apply_block(&block(2, 1_010, vec![opened(7, a), deposited(2, 5)]))?;
        assert_eq!(index.get_at(2, 1_010)?.map(|s| s.balance), Some(5));
        let removed = [BlockRef { number: 2, hash: B256::from(U256::from(2)) }];
        assert_eq!(index.unwind(&removed)?, 1);
        assert!(index.get(7)?.is_none());
        assert!(index.get_at(7, 2_000)?.is_none(), "the reorged-out open left no history");
        assert_eq!(index.get_at(2, 2_000)?.map(|s| s.balance), Some(0));
        let of_a: Vec<_> = ids(index.list(StreamSelector::Payee(a), None, 10, |_| true)?);
        assert_eq!(of_a, vec![2, 4, 6], "the reorged-out stream left the payee index");
        Ok(())
    }
}
