//! Applying the chain to the index: a block's vault events in one store write with its undo
//! record, cursor and notices (after checking that it follows the cursor), reorgs undone, and
//! the loops that feed both from a chain follower.

use super::*;

impl StreamIndex {
    /// Applies `block`'s vault events. Returns the streams they changed (none for a replayed
    /// block). A block that does not follow the cursor is refused ([`IndexError::Gap`]).
    pub async fn apply_block(&self, block: &NewBlock) -> Result<Vec<StreamId>, IndexError> {
        let _guard = self.apply.lock().await;
        let previous = self.store.cursor().await?;
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
        let (touched, applied) = self.fold_block(block).await?;
        let notices = self.notices_for(block, &touched).await?;
        let cursor = IndexCursor {
            number: block.block.number,
            hash: block.block.hash,
            timestamp: block.timestamp,
        };
        let write = BlockWrite { cursor, previous, touched, notices };
        self.store.commit(&write).await?;
        if !self.store.publishes_notices() {
            for notice in &write.notices {
                let _ = self.notices.send(notice.clone());
            }
        }
        self.applied.send_replace(Some(cursor));
        self.store.prune(cursor.number.saturating_sub(self.reorg_depth)).await?;
        self.record_metrics(&write.touched, applied, cursor.number);
        Ok(write.touched.iter().map(|(id, _, _)| *id).collect())
    }

    /// Each stream `block`'s vault events touch: as it was, and after the events (in log
    /// order, at the block's timestamp); and how many events applied.
    async fn fold_block(&self, block: &NewBlock) -> Result<(Vec<Touched>, u64), IndexError> {
        let at = block.timestamp;
        let changes: Vec<_> =
            block.logs.iter().filter(|l| l.address() == self.vault).flat_map(changes).collect();
        let mut ids: Vec<StreamId> = changes.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        // The touched streams as they were, in one read.
        let mut before: std::collections::HashMap<StreamId, StreamState> =
            self.store.get_many(&ids).await?.into_iter().collect();
        let mut touched: Vec<Touched> = Vec::new();
        let mut applied = 0;
        for (id, change) in changes {
            let slot = match touched.iter().position(|(t, _, _)| *t == id) {
                Some(slot) => slot,
                None => {
                    let was = before.remove(&id);
                    touched.push((id, was.clone(), was));
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

    /// The block's notices: a `changed` per touched stream, and the alerts of the touched
    /// streams and of those whose next alert fell due.
    async fn notices_for(
        &self,
        block: &NewBlock,
        touched: &[Touched],
    ) -> Result<Vec<StreamNotice>, IndexError> {
        let (at, number) = (block.timestamp, block.block.number);
        let mut notices: Vec<StreamNotice> = touched
            .iter()
            .filter_map(|(id, _, after)| {
                let stream = super::super::rpc::StreamView::new(*id, after.as_ref()?, at);
                Some(StreamNotice { kind: NoticeKind::Changed, block: number, stream })
            })
            .collect();
        let mut examine: Vec<StreamId> = touched.iter().map(|(id, _, _)| *id).collect();
        examine.extend(self.alerts.due(at));
        examine.sort_unstable();
        examine.dedup();
        for id in examine {
            let state = match touched.iter().find(|(t, _, _)| *t == id) {
                Some((_, _, after)) => after.clone(),
                None => self.store.get(id).await?,
            };
            let Some(state) = state else { continue };
            notices.extend(self.alerts.check(id, &state, at, number));
        }
        Ok(notices)
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

    /// Undoes `removed` blocks (newest first). Returns how many were undone.
    pub async fn unwind(
        &self,
        removed: &[settled_contracts::BlockRef],
    ) -> Result<usize, IndexError> {
        let _guard = self.apply.lock().await;
        let mut undone = 0;
        for block in removed {
            if self.store.unwind(*block).await? {
                undone += 1;
            }
        }
        self.applied.send_replace(self.store.cursor().await?);
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
            let (applied, undone) = match event {
                Some(ChainEvent::Block(block)) => (self.apply_block(&block).await?.len(), 0),
                Some(ChainEvent::Reorg(reorg)) => (0, self.unwind(&reorg.removed).await?),
                None => return Ok(()),
            };
            if applied + undone > 0 {
                debug!(applied, undone, "stream index updated");
            }
        }
    }

    /// One term of writing a shared index, until `term` ends (this node lost the index's
    /// lease) or a block fails: the alerts scheduled from the store, then the chain followed
    /// from the shared cursor (whoever wrote it) by a follower of the vault alone.
    pub async fn follow_term(
        self: std::sync::Arc<Self>,
        provider: alloy::providers::DynProvider,
        mut config: settled_contracts::FollowerConfig,
        term: CancellationToken,
    ) -> Result<(), IndexError> {
        self.schedule_all().await?;
        let cursor = self.store.cursor().await?;
        config.start_after =
            cursor.map(|c| settled_contracts::BlockRef { number: c.number, hash: c.hash });
        config.addresses = vec![self.vault];
        info!(after = ?config.start_after.map(|c| c.number), "writing the shared stream index");
        let mut follower = settled_contracts::ChainFollower::new(provider, config);
        let events = follower.consumer();
        let stop = term.child_token();
        let (_follower, follow) = follower.into_task(stop.clone());
        let apply = async {
            let result = self.clone().run(events, term.clone()).await;
            stop.cancel();
            result
        };
        tokio::join!(follow, apply).1
    }
}

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
