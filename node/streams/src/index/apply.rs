//! Applying the chain to the index: a block's vault events in one transaction with its undo
//! record and cursor (after checking that it follows the cursor), reorgs undone, and the loop
//! that feeds both from the chain follower.

use super::*;

impl StreamIndex {
    /// Applies `block`'s vault events. Returns the streams they changed (none for a replayed
    /// block). A block that does not follow the cursor is refused ([`IndexError::Gap`]).
    pub fn apply_block(&self, block: &NewBlock) -> Result<Vec<StreamId>, IndexError> {
        let _guard = self.apply.lock().map_err(|_| storage("index lock poisoned"))?;
        let previous = self.cursor()?;
        if previous.is_some_and(|c| c.number >= block.block.number) {
            return Ok(Vec::new());
        }
        if let Some(cursor) = previous {
            let at = settled_contracts::BlockRef { number: cursor.number, hash: cursor.hash };
            settled_contracts::follows(at, block).map_err(|reason| IndexError::Gap {
                cursor: cursor.number,
                block: block.block.number,
                reason,
            })?;
        }
        let (touched, applied) = self.fold_block(block)?;
        let cursor = IndexCursor {
            number: block.block.number,
            hash: block.block.hash,
            timestamp: block.timestamp,
        };
        self.commit(&touched, cursor, previous)?;
        self.applied.send_replace(Some(cursor));
        self.prune(cursor.number)?;
        self.record_metrics(&touched, applied, cursor.number);
        Ok(touched.into_iter().map(|(id, _, _)| id).collect())
    }

    /// Each stream `block`'s vault events touch: as it was, and after the events (in log
    /// order, at the block's timestamp); and how many events applied.
    fn fold_block(&self, block: &NewBlock) -> Result<(Vec<Touched>, u64), IndexError> {
        let at = block.timestamp;
        let mut touched: Vec<Touched> = Vec::new();
        let mut applied = 0;
        let changes = block.logs.iter().filter(|l| l.address() == self.vault).flat_map(changes);
        for (id, change) in changes {
            let slot = match touched.iter().position(|(t, _, _)| *t == id) {
                Some(slot) => slot,
                None => {
                    let before = self.get(id)?;
                    touched.push((id, before.clone(), before));
                    touched.len() - 1
                }
            };
            let current = touched[slot].2.take();
            let next = apply_change(current, change, at)
                .map_err(|source| IndexError::Diverged { id, block: block.block.number, source })?;
            touched[slot].2 = next;
            applied += 1;
        }
        Ok((touched, applied))
    }

    /// Writes the touched streams, their history and party entries, the undo record and the
    /// cursor in one transaction: a crash leaves the block applied whole or not at all.
    fn commit(
        &self,
        touched: &[Touched],
        cursor: IndexCursor,
        previous: Option<IndexCursor>,
    ) -> Result<(), IndexError> {
        let at = cursor.timestamp;
        let undo = Undo {
            before: touched.iter().map(|(id, before, _)| (*id, before.clone())).collect(),
            previous_cursor: previous,
            timestamp: at,
        };
        let (mut streams, mut history, mut parties) =
            (sled::Batch::default(), sled::Batch::default(), sled::Batch::default());
        for (id, before, after) in touched {
            match after {
                Some(state) => {
                    let value = serde_json::to_vec(state).map_err(storage)?;
                    streams.insert(&stream_key(*id), value.clone());
                    history.insert(&history_key(*id, at, cursor.number), value);
                    if before.is_none() {
                        parties.insert(party_key(PAYER_PREFIX, state.payer, *id), &[]);
                        parties.insert(party_key(PAYEE_PREFIX, state.payee, *id), &[]);
                    }
                }
                None => streams.remove(&stream_key(*id)),
            }
        }
        let trees = (&self.streams, &self.undo, &self.meta, &self.history, &self.parties);
        let undo_value = serde_json::to_vec(&undo).map_err(storage)?;
        let cursor_value = serde_json::to_vec(&cursor).map_err(storage)?;
        use sled::Transactional;
        trees
            .transaction(|(s, u, m, h, p)| {
                s.apply_batch(&streams)?;
                h.apply_batch(&history)?;
                p.apply_batch(&parties)?;
                u.insert(undo_key(cursor.number, cursor.hash), undo_value.clone())?;
                m.insert(CURSOR_KEY, cursor_value.clone())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| storage(format!("{e:?}")))?;
        Ok(())
    }

    /// Events applied, active streams, amounts withdrawn, the index's block.
    fn record_metrics(&self, touched: &[Touched], applied: u64, block: u64) {
        ::metrics::counter!(crate::alerts::EVENTS).increment(applied);
        let running = |s: &Option<StreamState>| s.as_ref().is_some_and(|s| !s.closed && !s.paused);
        let delta: i64 = touched
            .iter()
            .map(|(_, before, after)| i64::from(running(after)) - i64::from(running(before)))
            .sum();
        let active = self.active.fetch_add(delta, std::sync::atomic::Ordering::Relaxed) + delta;
        ::metrics::gauge!(crate::alerts::ACTIVE_STREAMS).set(active as f64);
        for (_, before, after) in touched {
            if let Some(after) = after {
                let paid = after.withdrawn - before.as_ref().map_or(0, |b| b.withdrawn);
                if paid > 0 {
                    ::metrics::gauge!(crate::alerts::WITHDRAWN, "token" => after.token.to_string())
                        .increment(paid as f64);
                }
            }
        }
        ::metrics::gauge!(crate::alerts::INDEX_BLOCK).set(block as f64);
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
            let (mut streams, mut history, mut parties) =
                (sled::Batch::default(), sled::Batch::default(), sled::Batch::default());
            for (id, before) in &undo.before {
                history.remove(&history_key(*id, undo.timestamp, block.number));
                match before {
                    Some(state) => streams
                        .insert(&stream_key(*id), serde_json::to_vec(state).map_err(storage)?),
                    None => {
                        // Opened in the removed block: its index entries go with it.
                        if let Some(state) = self.get(*id)? {
                            parties.remove(party_key(PAYER_PREFIX, state.payer, *id));
                            parties.remove(party_key(PAYEE_PREFIX, state.payee, *id));
                        }
                        streams.remove(&stream_key(*id))
                    }
                }
            }
            let cursor_value = undo
                .previous_cursor
                .map(|c| serde_json::to_vec(&c).map_err(storage))
                .transpose()?;
            use sled::Transactional;
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
            undone += 1;
        }
        self.applied.send_replace(self.cursor()?);
        Ok(undone)
    }

    /// Follows the chain until `cancel`. A block or reorg it cannot apply ends the loop with
    /// the error (never skipped: the node stops, and resumes from the cursor at its next start).
    pub async fn run(
        self: std::sync::Arc<Self>,
        mut events: settled_contracts::ChainEvents,
        cancel: CancellationToken,
    ) -> Result<(), IndexError> {
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                event = events.recv() => event,
            };
            let index = self.clone();
            let (applied, undone) = match event {
                Some(ChainEvent::Block(block)) => tokio::task::spawn_blocking(move || {
                    let touched = index.apply_block(&block)?;
                    index.notify(&block, &touched)?;
                    Ok::<_, IndexError>((touched.len(), 0))
                })
                .await
                .map_err(|e| IndexError::Worker(e.to_string()))??,
                Some(ChainEvent::Reorg(reorg)) => tokio::task::spawn_blocking(move || {
                    index.unwind(&reorg.removed).map(|n| (0, n))
                })
                .await
                .map_err(|e| IndexError::Worker(e.to_string()))??,
                None => return Ok(()),
            };
            if applied + undone > 0 {
                debug!(applied, undone, "stream index updated");
            }
        }
    }
}

/// A stream a block touches: its id, its state before the block, and after.
type Touched = (StreamId, Option<StreamState>, Option<StreamState>);

/// What one vault event does to one stream.
enum Change<'a> {
    /// An event about one stream (its id is the first indexed topic).
    Event(&'a Log),
    /// One stream's part of a `BatchWithdrawn`.
    Withdrawn(u128),
}

/// The streams a vault event changes, and how: one for most events, every stream paid for a
/// `BatchWithdrawn` (`paid[i] = streamId << 128 | amount`).
fn changes(log: &Log) -> Vec<(StreamId, Change<'_>)> {
    if log.topic0() == Some(&vault::BatchWithdrawn::SIGNATURE_HASH) {
        let Ok(e) = vault::BatchWithdrawn::decode_log_data(log.data()) else { return Vec::new() };
        return e
            .paid
            .iter()
            .filter_map(|entry| {
                let id = u64::try_from(*entry >> 128).ok()?;
                let amount = u128::try_from(*entry & U256::from(u128::MAX)).ok()?;
                Some((id, Change::Withdrawn(amount)))
            })
            .collect();
    }
    let id = log.topics().get(1).and_then(|topic| u64::try_from(U256::from_be_bytes(topic.0)).ok());
    id.map(|id| (id, Change::Event(log))).into_iter().collect()
}

/// `state` after `change` at second `at`.
fn apply_change(
    state: Option<StreamState>,
    change: Change<'_>,
    at: u64,
) -> Result<Option<StreamState>, StreamError> {
    let log = match change {
        Change::Event(log) => log,
        Change::Withdrawn(amount) => {
            let Some(mut s) = state else { return Ok(None) };
            s.withdraw(amount, at)?;
            return Ok(Some(s));
        }
    };
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
