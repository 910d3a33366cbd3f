//! The paymaster's ledger in PostgreSQL, shared by every node. Every transaction that changes
//! usage locks what it touches in one order — the totals row, then reservations by id, then
//! usage slots sorted — so concurrent reservations on any node see each other's usage (a cap of
//! N admits exactly N) and no two transactions wait on each other in a circle. Amounts are
//! exact: wei as decimal text, added and compared in `U256`.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{B256, U256};
use settled_paymaster::{
    LedgerError, LedgerFuture, LedgerStatus, LedgerStore, LedgerTotals, RETENTION_SECS,
    Reservation, ReservationRequest, ReservationState, SettledOp, SponsorshipId, Usage, UsageSlot,
    over_caps,
};
use sqlx::{Postgres, Row as _, Transaction};

use crate::postgres::PgStore;

type Tx = Transaction<'static, Postgres>;

fn ledger_error(e: impl std::fmt::Display) -> LedgerError {
    LedgerError(e.to_string())
}

/// The ledger on a shared store.
#[derive(Debug, Clone)]
pub struct PgLedger {
    store: PgStore,
}

impl PgLedger {
    /// The ledger in `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    async fn begin(&self) -> Result<Tx, LedgerError> {
        self.store.pool().begin().await.map_err(ledger_error)
    }
}

fn i64_of(value: u64) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(ledger_error)
}

fn state_name(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Open => "open",
        ReservationState::Settled => "settled",
        ReservationState::Released => "released",
    }
}

/// Locks `slots` (created at zero when new), in their order; their usage.
async fn lock_slots(
    tx: &mut Tx,
    slots: &BTreeSet<UsageSlot>,
) -> Result<BTreeMap<UsageSlot, Usage>, LedgerError> {
    let mut locked = BTreeMap::new();
    for slot in slots {
        let (period, index) = (i64_of(slot.period_secs)?, i64_of(slot.index)?);
        sqlx::query(
            "INSERT INTO settled_usage (scope, period_secs, idx, ops, wei) VALUES ($1, $2, $3, 0, '0') \
             ON CONFLICT DO NOTHING",
        )
        .bind(&slot.scope)
        .bind(period)
        .bind(index)
        .execute(&mut **tx)
        .await
        .map_err(ledger_error)?;
        let row = sqlx::query(
            "SELECT ops, wei FROM settled_usage WHERE scope = $1 AND period_secs = $2 AND idx = $3 \
             FOR UPDATE",
        )
        .bind(&slot.scope)
        .bind(period)
        .bind(index)
        .fetch_one(&mut **tx)
        .await
        .map_err(ledger_error)?;
        locked.insert(slot.clone(), usage_of(&row)?);
    }
    Ok(locked)
}

fn usage_of(row: &sqlx::postgres::PgRow) -> Result<Usage, LedgerError> {
    let ops: i64 = row.try_get("ops").map_err(ledger_error)?;
    let wei: String = row.try_get("wei").map_err(ledger_error)?;
    Ok(Usage {
        ops: u64::try_from(ops).map_err(ledger_error)?,
        wei: wei.parse().map_err(ledger_error)?,
    })
}

/// Counts `reservation` in (or out of) the locked slots, as the sled ledger does.
fn count(locked: &mut BTreeMap<UsageSlot, Usage>, reservation: &Reservation, add: bool) {
    let Some(wei) = reservation.charge() else { return };
    for slot in reservation.usage_slots() {
        locked.entry(slot).or_default().count(wei, add);
    }
}

async fn write_slots(tx: &mut Tx, locked: &BTreeMap<UsageSlot, Usage>) -> Result<(), LedgerError> {
    for (slot, usage) in locked {
        sqlx::query(
            "UPDATE settled_usage SET ops = $4, wei = $5 \
             WHERE scope = $1 AND period_secs = $2 AND idx = $3",
        )
        .bind(&slot.scope)
        .bind(i64_of(slot.period_secs)?)
        .bind(i64_of(slot.index)?)
        .bind(i64_of(usage.ops)?)
        .bind(usage.wei.to_string())
        .execute(&mut **tx)
        .await
        .map_err(ledger_error)?;
    }
    Ok(())
}

/// Locks the slots of `reservations`, lets `change` count them in and out, writes them back.
async fn recount(
    tx: &mut Tx,
    reservations: &[&Reservation],
    change: impl FnOnce(&mut BTreeMap<UsageSlot, Usage>),
) -> Result<(), LedgerError> {
    let slots: BTreeSet<UsageSlot> = reservations.iter().flat_map(|r| r.usage_slots()).collect();
    let mut locked = lock_slots(tx, &slots).await?;
    change(&mut locked);
    write_slots(tx, &locked).await
}

async fn put(tx: &mut Tx, reservation: &Reservation) -> Result<(), LedgerError> {
    sqlx::query(
        "INSERT INTO settled_reservations (id, body, state, user_op_hash, valid_until, created_at, \
         settled_in) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
         body = EXCLUDED.body, state = EXCLUDED.state, user_op_hash = EXCLUDED.user_op_hash, \
         settled_in = EXCLUDED.settled_in",
    )
    .bind(i64_of(reservation.id)?)
    .bind(serde_json::to_value(reservation).map_err(ledger_error)?)
    .bind(state_name(reservation.state))
    .bind(reservation.user_op_hash.map(|h| h.to_vec()))
    .bind(i64_of(reservation.valid_until)?)
    .bind(i64_of(reservation.created_at)?)
    .bind(reservation.settled_in.map(|b| b.to_vec()))
    .execute(&mut **tx)
    .await
    .map_err(ledger_error)?;
    Ok(())
}

async fn remove(tx: &mut Tx, id: SponsorshipId) -> Result<(), LedgerError> {
    sqlx::query("DELETE FROM settled_reservations WHERE id = $1")
        .bind(i64_of(id)?)
        .execute(&mut **tx)
        .await
        .map_err(ledger_error)?;
    Ok(())
}

fn bodies(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Reservation>, LedgerError> {
    rows.iter()
        .map(|row| {
            let body: serde_json::Value = row.try_get("body").map_err(ledger_error)?;
            serde_json::from_value(body).map_err(ledger_error)
        })
        .collect()
}

async fn next_id(tx: &mut Tx) -> Result<SponsorshipId, LedgerError> {
    let row = sqlx::query("SELECT nextval('settled_reservation_ids') AS id")
        .fetch_one(&mut **tx)
        .await
        .map_err(ledger_error)?;
    u64::try_from(row.try_get::<i64, _>("id").map_err(ledger_error)?).map_err(ledger_error)
}

async fn lock_totals(tx: &mut Tx) -> Result<LedgerTotals, LedgerError> {
    let row = sqlx::query("SELECT body FROM settled_ledger_totals FOR UPDATE")
        .fetch_one(&mut **tx)
        .await
        .map_err(ledger_error)?;
    serde_json::from_value(row.try_get("body").map_err(ledger_error)?).map_err(ledger_error)
}

async fn write_totals(tx: &mut Tx, totals: &LedgerTotals) -> Result<(), LedgerError> {
    sqlx::query("UPDATE settled_ledger_totals SET body = $1")
        .bind(serde_json::to_value(totals).map_err(ledger_error)?)
        .execute(&mut **tx)
        .await
        .map_err(ledger_error)?;
    Ok(())
}

impl PgLedger {
    async fn reserve_in(
        &self,
        request: &ReservationRequest<'_>,
    ) -> Result<Result<Reservation, settled_paymaster::Rejection>, LedgerError> {
        let mut tx = self.begin().await?;
        let reservation = Reservation::open_for(request, next_id(&mut tx).await?);
        let slots = reservation.usage_slots();
        let mut locked = lock_slots(&mut tx, &slots.iter().cloned().collect()).await?;
        let used = slots.map(|slot| locked.get(&slot).copied().unwrap_or_default());
        if let Some(rejection) = over_caps(request, used) {
            tx.rollback().await.map_err(ledger_error)?;
            return Ok(Err(rejection));
        }
        count(&mut locked, &reservation, true);
        write_slots(&mut tx, &locked).await?;
        put(&mut tx, &reservation).await?;
        tx.commit().await.map_err(ledger_error)?;
        Ok(Ok(reservation))
    }

    async fn settle_in(&self, op: SettledOp) -> Result<(), LedgerError> {
        let mut tx = self.begin().await?;
        let mut totals = lock_totals(&mut tx).await?;
        let rows =
            sqlx::query("SELECT body FROM settled_reservations WHERE user_op_hash = $1 FOR UPDATE")
                .bind(op.user_op_hash.to_vec())
                .fetch_all(&mut *tx)
                .await
                .map_err(ledger_error)?;
        let existing = bodies(&rows)?.into_iter().next();
        let (old, settled) = match existing {
            Some(old) if old.state == ReservationState::Settled => return Ok(()),
            Some(old) => {
                let settled = Reservation {
                    actual_cost: Some(op.actual_cost),
                    state: ReservationState::Settled,
                    settled_in: Some(op.block),
                    ..old.clone()
                };
                (Some(old), settled)
            }
            None => {
                totals.unreserved_ops += 1;
                (None, Reservation::unreserved(&op, next_id(&mut tx).await?))
            }
        };
        let touched: Vec<&Reservation> = old.iter().chain([&settled]).collect();
        recount(&mut tx, &touched, |locked| {
            if let Some(old) = &old {
                count(locked, old, false);
            }
            count(locked, &settled, true);
        })
        .await?;
        totals.settled_ops += 1;
        totals.settled_wei += op.actual_cost;
        put(&mut tx, &settled).await?;
        write_totals(&mut tx, &totals).await?;
        tx.commit().await.map_err(ledger_error)
    }

    async fn unsettle_in(&self, removed: &[B256]) -> Result<usize, LedgerError> {
        let mut tx = self.begin().await?;
        let mut totals = lock_totals(&mut tx).await?;
        let blocks: Vec<Vec<u8>> = removed.iter().map(|b| b.to_vec()).collect();
        let rows = sqlx::query(
            "SELECT body FROM settled_reservations WHERE settled_in = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(blocks)
        .fetch_all(&mut *tx)
        .await
        .map_err(ledger_error)?;
        let hit = bodies(&rows)?;
        let reopened: Vec<Reservation> = hit
            .iter()
            .filter(|old| !old.policy.is_empty())
            .map(|old| Reservation {
                actual_cost: None,
                state: ReservationState::Open,
                settled_in: None,
                ..old.clone()
            })
            .collect();
        let touched: Vec<&Reservation> = hit.iter().chain(&reopened).collect();
        recount(&mut tx, &touched, |locked| {
            hit.iter().for_each(|old| count(locked, old, false));
            reopened.iter().for_each(|new| count(locked, new, true));
        })
        .await?;
        for old in &hit {
            totals.settled_ops = totals.settled_ops.saturating_sub(1);
            totals.settled_wei =
                totals.settled_wei.saturating_sub(old.actual_cost.unwrap_or_default());
            if old.policy.is_empty() {
                totals.unreserved_ops = totals.unreserved_ops.saturating_sub(1);
                remove(&mut tx, old.id).await?;
            }
        }
        for new in &reopened {
            put(&mut tx, new).await?;
        }
        write_totals(&mut tx, &totals).await?;
        tx.commit().await.map_err(ledger_error)?;
        Ok(hit.len())
    }

    async fn expire_in(&self, now: u64, grace: u64) -> Result<usize, LedgerError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT body FROM settled_reservations WHERE (state = 'open' AND valid_until < $1) \
             OR (state <> 'open' AND created_at < $2) ORDER BY id FOR UPDATE",
        )
        .bind(i64_of(now.saturating_sub(grace))?)
        .bind(i64_of(now.saturating_sub(RETENTION_SECS))?)
        .fetch_all(&mut *tx)
        .await
        .map_err(ledger_error)?;
        let hit = bodies(&rows)?;
        let touched: Vec<&Reservation> = hit.iter().collect();
        recount(&mut tx, &touched, |locked| hit.iter().for_each(|old| count(locked, old, false)))
            .await?;
        let mut released = 0;
        for old in &hit {
            if old.state == ReservationState::Open {
                put(&mut tx, &Reservation { state: ReservationState::Released, ..old.clone() })
                    .await?;
                released += 1;
            } else {
                remove(&mut tx, old.id).await?;
            }
        }
        tx.commit().await.map_err(ledger_error)?;
        Ok(released)
    }

    async fn locked_reservation(
        tx: &mut Tx,
        id: SponsorshipId,
    ) -> Result<Option<Reservation>, LedgerError> {
        let rows = sqlx::query("SELECT body FROM settled_reservations WHERE id = $1 FOR UPDATE")
            .bind(i64_of(id)?)
            .fetch_all(&mut **tx)
            .await
            .map_err(ledger_error)?;
        Ok(bodies(&rows)?.into_iter().next())
    }

    async fn bind_in(&self, id: SponsorshipId, user_op_hash: B256) -> Result<(), LedgerError> {
        let mut tx = self.begin().await?;
        let Some(old) = Self::locked_reservation(&mut tx, id).await? else {
            return Err(LedgerError(format!("no reservation {id}")));
        };
        put(&mut tx, &Reservation { user_op_hash: Some(user_op_hash), ..old }).await?;
        tx.commit().await.map_err(ledger_error)
    }

    async fn cancel_in(&self, id: SponsorshipId) -> Result<(), LedgerError> {
        let mut tx = self.begin().await?;
        let Some(old) = Self::locked_reservation(&mut tx, id).await? else { return Ok(()) };
        recount(&mut tx, &[&old], |locked| count(locked, &old, false)).await?;
        remove(&mut tx, id).await?;
        tx.commit().await.map_err(ledger_error)
    }

    async fn status_in(&self) -> Result<LedgerStatus, LedgerError> {
        let rows = sqlx::query("SELECT body FROM settled_reservations WHERE state = 'open'")
            .fetch_all(self.store.pool())
            .await
            .map_err(ledger_error)?;
        let open = bodies(&rows)?;
        let row = sqlx::query("SELECT body FROM settled_ledger_totals")
            .fetch_one(self.store.pool())
            .await
            .map_err(ledger_error)?;
        let totals = serde_json::from_value(row.try_get("body").map_err(ledger_error)?)
            .map_err(ledger_error)?;
        Ok(LedgerStatus {
            open_reservations: open.len() as u64,
            open_wei: open.iter().map(|r| r.max_cost).fold(U256::ZERO, |a, b| a + b),
            totals,
        })
    }
}

impl LedgerStore for PgLedger {
    fn reserve<'a>(
        &'a self,
        request: &'a ReservationRequest<'a>,
    ) -> LedgerFuture<'a, Result<Reservation, settled_paymaster::Rejection>> {
        Box::pin(self.reserve_in(request))
    }

    fn check<'a>(
        &'a self,
        request: &'a ReservationRequest<'a>,
    ) -> LedgerFuture<'a, Result<(), settled_paymaster::Rejection>> {
        Box::pin(async move {
            let slots = Reservation::open_for(request, 0).usage_slots();
            let mut used = [Usage::default(); 3];
            for (slot, used) in slots.into_iter().zip(&mut used) {
                *used = self.usage(slot).await?;
            }
            Ok(over_caps(request, used).map_or(Ok(()), Err))
        })
    }

    fn bind(&self, id: SponsorshipId, user_op_hash: B256) -> LedgerFuture<'_, ()> {
        Box::pin(self.bind_in(id, user_op_hash))
    }

    fn cancel(&self, id: SponsorshipId) -> LedgerFuture<'_, ()> {
        Box::pin(self.cancel_in(id))
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        // Every step committed: durable as the server's commit is.
        Box::pin(async { Ok(()) })
    }

    fn settle(&self, op: SettledOp) -> LedgerFuture<'_, ()> {
        Box::pin(self.settle_in(op))
    }

    fn unsettle<'a>(&'a self, removed: &'a [B256]) -> LedgerFuture<'a, usize> {
        Box::pin(self.unsettle_in(removed))
    }

    fn expire(&self, now: u64, grace: u64) -> LedgerFuture<'_, usize> {
        Box::pin(self.expire_in(now, grace))
    }

    fn reservation(&self, id: SponsorshipId) -> LedgerFuture<'_, Option<Reservation>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT body FROM settled_reservations WHERE id = $1")
                .bind(i64_of(id)?)
                .fetch_all(self.store.pool())
                .await
                .map_err(ledger_error)?;
            Ok(bodies(&rows)?.into_iter().next())
        })
    }

    fn status(&self) -> LedgerFuture<'_, LedgerStatus> {
        Box::pin(self.status_in())
    }

    fn usage(&self, slot: UsageSlot) -> LedgerFuture<'_, Usage> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT ops, wei FROM settled_usage WHERE scope = $1 AND period_secs = $2 AND idx = $3",
            )
            .bind(&slot.scope)
            .bind(i64_of(slot.period_secs)?)
            .bind(i64_of(slot.index)?)
            .fetch_optional(self.store.pool())
            .await
            .map_err(ledger_error)?;
            row.as_ref().map(usage_of).transpose().map(Option::unwrap_or_default)
        })
    }
}
