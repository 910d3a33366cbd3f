//! The stream index: every `StreamVault` stream mirrored in sled from the vault's events, as the
//! chain follower delivers them, so the billing RPC reads exact state without the chain.
//!
//! Each block's events are applied with that block's timestamp (the vault computes with it too)
//! in one sled batch with the block's undo record — the touched streams as they were — and the
//! new cursor. A reorg restores the undo records of the removed blocks, newest first. Blocks at
//! or below the cursor (a restarted follower replays from the deployment block) are skipped.

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
use tracing::{debug, info, warn};

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

/// The index over three sled trees: streams, undo records, and the cursor.
#[derive(Debug)]
pub struct StreamIndex {
    vault: Address,
    streams: sled::Tree,
    undo: sled::Tree,
    meta: sled::Tree,
    reorg_depth: u64,
    /// Serialises block application with reads of the cursor.
    apply: Mutex<()>,
    notices: broadcast::Sender<StreamNotice>,
    alerts: Alerts,
    /// Streams neither closed nor paused (a metric, kept up to date per block).
    active: std::sync::atomic::AtomicI64,
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
            reorg_depth,
            apply: Mutex::new(()),
            notices: broadcast::channel(4_096).0,
            alerts: Alerts::new(thresholds),
            active: std::sync::atomic::AtomicI64::new(0),
        };
        index.schedule_all()?;
        Ok(index)
    }

    /// Notices of changes and alerts, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamNotice> {
        self.notices.subscribe()
    }

    /// After `block` was applied: a `changed` notice per touched stream, and the alerts of the
    /// touched streams and of those whose next alert fell due.
    fn notify(&self, block: &NewBlock, touched: &[StreamId]) -> Result<(), IndexError> {
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
        for (id, state) in self.list(None, usize::MAX, |_| true)? {
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

    /// Streams with ids after `after`, in id order, that `filter` keeps, at most `limit`.
    pub fn list(
        &self,
        after: Option<StreamId>,
        limit: usize,
        filter: impl Fn(&StreamState) -> bool,
    ) -> Result<Vec<(StreamId, StreamState)>, IndexError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        for entry in self.streams.range(stream_key(start)..) {
            let (key, value) = entry.map_err(storage)?;
            let id = u64::from_be_bytes(key.as_ref().try_into().map_err(storage)?);
            let state: StreamState = serde_json::from_slice(&value).map_err(storage)?;
            if filter(&state) {
                out.push((id, state));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Applies `block`'s vault events. Returns the streams they changed (none for a replayed
    /// block).
    pub fn apply_block(&self, block: &NewBlock) -> Result<Vec<StreamId>, IndexError> {
        let _guard = self.apply.lock().map_err(|_| storage("index lock poisoned"))?;
        let previous = self.cursor()?;
        if previous.is_some_and(|c| c.number >= block.block.number) {
            return Ok(Vec::new());
        }
        let at = block.timestamp;
        let mut touched: Vec<(StreamId, Option<StreamState>, Option<StreamState>)> = Vec::new();
        let mut applied = 0;
        for log in block.logs.iter().filter(|l| l.address() == self.vault) {
            let Some(id) = stream_id(log) else { continue };
            let slot = match touched.iter().position(|(t, _, _)| *t == id) {
                Some(slot) => slot,
                None => {
                    let before = self.get(id)?;
                    touched.push((id, before.clone(), before));
                    touched.len() - 1
                }
            };
            let current = touched[slot].2.take();
            let next = apply_event(current, log, at).map_err(|source| IndexError::Diverged {
                id,
                block: block.block.number,
                source,
            })?;
            touched[slot].2 = next;
            applied += 1;
        }
        let cursor =
            IndexCursor { number: block.block.number, hash: block.block.hash, timestamp: at };
        let undo = Undo {
            before: touched.iter().map(|(id, before, _)| (*id, before.clone())).collect(),
            previous_cursor: previous,
        };
        let mut streams = sled::Batch::default();
        for (id, _, after) in &touched {
            match after {
                Some(state) => {
                    streams.insert(&stream_key(*id), serde_json::to_vec(state).map_err(storage)?)
                }
                None => streams.remove(&stream_key(*id)),
            }
        }
        // Streams, undo and cursor change together: a crash leaves all three or none.
        let trees = (&self.streams, &self.undo, &self.meta);
        let undo_value = serde_json::to_vec(&undo).map_err(storage)?;
        let cursor_value = serde_json::to_vec(&cursor).map_err(storage)?;
        use sled::Transactional;
        trees
            .transaction(|(s, u, m)| {
                s.apply_batch(&streams)?;
                u.insert(undo_key(cursor.number, cursor.hash), undo_value.clone())?;
                m.insert(CURSOR_KEY, cursor_value.clone())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| storage(format!("{e:?}")))?;
        self.prune(cursor.number)?;
        ::metrics::counter!(super::alerts::EVENTS).increment(applied);
        let running = |s: &Option<StreamState>| s.as_ref().is_some_and(|s| !s.closed && !s.paused);
        let delta: i64 = touched
            .iter()
            .map(|(_, before, after)| i64::from(running(after)) - i64::from(running(before)))
            .sum();
        let active = self.active.fetch_add(delta, std::sync::atomic::Ordering::Relaxed) + delta;
        ::metrics::gauge!(super::alerts::ACTIVE_STREAMS).set(active as f64);
        for (_, before, after) in &touched {
            if let Some(after) = after {
                let paid = after.withdrawn - before.as_ref().map_or(0, |b| b.withdrawn);
                if paid > 0 {
                    ::metrics::gauge!(super::alerts::WITHDRAWN, "token" => after.token.to_string())
                        .increment(paid as f64);
                }
            }
        }
        ::metrics::gauge!(super::alerts::INDEX_BLOCK).set(cursor.number as f64);
        Ok(touched.into_iter().map(|(id, _, _)| id).collect())
    }

    fn prune(&self, head: u64) -> Result<(), IndexError> {
        let keep_from = head.saturating_sub(self.reorg_depth);
        for entry in self.undo.range(..keep_from.to_be_bytes().to_vec()) {
            let (key, _) = entry.map_err(storage)?;
            self.undo.remove(key).map_err(storage)?;
        }
        Ok(())
    }

    /// Undoes `removed` blocks (newest first). Returns how many were undone.
    pub fn unwind(&self, removed: &[settled_contracts::BlockRef]) -> Result<usize, IndexError> {
        let _guard = self.apply.lock().map_err(|_| storage("index lock poisoned"))?;
        let mut undone = 0;
        for block in removed {
            let key = undo_key(block.number, block.hash);
            let Some(value) = self.undo.get(&key).map_err(storage)? else { continue };
            let undo: Undo = serde_json::from_slice(&value).map_err(storage)?;
            let mut streams = sled::Batch::default();
            for (id, before) in &undo.before {
                match before {
                    Some(state) => streams
                        .insert(&stream_key(*id), serde_json::to_vec(state).map_err(storage)?),
                    None => streams.remove(&stream_key(*id)),
                }
            }
            let cursor_value = undo
                .previous_cursor
                .map(|c| serde_json::to_vec(&c).map_err(storage))
                .transpose()?;
            use sled::Transactional;
            (&self.streams, &self.undo, &self.meta)
                .transaction(|(s, u, m)| {
                    s.apply_batch(&streams)?;
                    u.remove(key.clone())?;
                    match &cursor_value {
                        Some(v) => m.insert(CURSOR_KEY, v.clone())?,
                        None => m.remove(CURSOR_KEY)?,
                    };
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| storage(format!("{e:?}")))?;
            undone += 1;
        }
        Ok(undone)
    }

    /// Follows the chain until `cancel`.
    pub async fn run(
        self: std::sync::Arc<Self>,
        mut events: broadcast::Receiver<ChainEvent>,
        cancel: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = events.recv() => event,
            };
            let index = self.clone();
            let result = match event {
                Ok(ChainEvent::Block(block)) => {
                    tokio::task::spawn_blocking(move || {
                        let touched = index.apply_block(&block)?;
                        index.notify(&block, &touched)?;
                        Ok((touched.len(), 0))
                    })
                    .await
                }
                Ok(ChainEvent::Reorg(reorg)) => {
                    tokio::task::spawn_blocking(move || {
                        index.unwind(&reorg.removed).map(|n| (0, n))
                    })
                    .await
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "stream index fell behind the chain follower");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match result {
                Ok(Ok((applied, undone))) if applied + undone > 0 => {
                    debug!(applied, undone, "stream index updated");
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => warn!(%error, "stream index update failed"),
                Err(error) => warn!(%error, "stream index task failed"),
            }
        }
    }

    /// Logs how many streams the index holds (start-up).
    pub fn announce(&self) {
        info!(streams = self.streams.len(), cursor = ?self.cursor().ok().flatten().map(|c| c.number), "stream index open");
    }
}

/// The stream id (first indexed topic) of a vault event.
fn stream_id(log: &Log) -> Option<StreamId> {
    let topic = log.topics().get(1)?;
    u64::try_from(U256::from_be_bytes(topic.0)).ok()
}

/// `state` after the vault event `log` at second `at`.
fn apply_event(
    state: Option<StreamState>,
    log: &Log,
    at: u64,
) -> Result<Option<StreamState>, StreamError> {
    let data = log.data();
    let Some(topic) = log.topic0() else { return Ok(state) };
    if *topic == vault::StreamOpened::SIGNATURE_HASH {
        let Ok(e) = vault::StreamOpened::decode_log_data(data) else { return Ok(state) };
        return StreamState::opened(
            e.payer,
            e.payee,
            e.token,
            e.operator,
            e.decimals,
            e.ratePerSecond.to::<u128>(),
            e.maxRate.to::<u128>(),
            e.maxTotal.to::<u128>(),
            at,
        )
        .map(Some);
    }
    let Some(mut s) = state else { return Ok(None) };
    match *topic {
        t if t == vault::Deposited::SIGNATURE_HASH => {
            if let Ok(e) = vault::Deposited::decode_log_data(data) {
                s.deposit(e.amount)?;
            }
        }
        t if t == vault::Withdrawn::SIGNATURE_HASH => {
            if let Ok(e) = vault::Withdrawn::decode_log_data(data) {
                s.withdraw(e.amount, at)?;
            }
        }
        t if t == vault::Refunded::SIGNATURE_HASH => {
            if let Ok(e) = vault::Refunded::decode_log_data(data) {
                s.refund(e.amount, at)?;
            }
        }
        t if t == vault::Paused::SIGNATURE_HASH => s.pause(at)?,
        t if t == vault::Resumed::SIGNATURE_HASH => s.resume(at)?,
        t if t == vault::RateAdjusted::SIGNATURE_HASH => {
            if let Ok(e) = vault::RateAdjusted::decode_log_data(data) {
                s.adjust_rate(e.newRate.to::<u128>(), at)?;
            }
        }
        t if t == vault::Closed::SIGNATURE_HASH => {
            // close() emitted Withdrawn/Refunded for what it paid; what remains is the flag.
            s.close(at)?;
        }
        _ => {}
    }
    Ok(Some(s))
}
