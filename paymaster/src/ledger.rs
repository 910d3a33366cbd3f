//! The sponsorship ledger: every signature the paymaster issued, what it may still cost, and what
//! the chain says it cost — persisted in sled, with the caps checked and the reservation taken
//! under one lock so concurrent requests can never overshoot a cap.
//!
//! A reservation is charged at its worst case (`maxCost`) while open, at the EntryPoint's
//! `actualGasCost` once settled from a mined `UserOperationEvent`, and not at all once released
//! (its signature expired unused). Usage per sender, customer and day is derived from the
//! reservations, so it is rebuilt exactly from sled after a restart.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex,
};

use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};

use crate::policy::{Rejection, SponsorshipPolicy};

/// The id a signature carries on chain (`GasSponsored.sponsorshipId`).
pub type SponsorshipId = u64;

/// Seconds in the global budget's period.
pub const DAY_SECS: u64 = 86_400;

/// Settled and released reservations older than this are dropped from the ledger (the totals
/// keep their sums). Longer than any sensible cap period.
pub const RETENTION_SECS: u64 = 35 * DAY_SECS;

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReservationState {
    /// Signed, not (yet) seen mined: charged at `maxCost`.
    Open,
    /// Mined: charged at `actualCost`.
    Settled,
    /// Expired unused: charged nothing.
    Released,
}

/// One sponsorship: a signature and what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// The id signed into `paymasterAndData`.
    pub id: SponsorshipId,
    /// Policy it was granted under (empty for an op mined without a reservation).
    pub policy: String,
    /// Customer it is charged to.
    pub customer: String,
    /// The account.
    pub sender: Address,
    /// The EntryPoint.
    pub entry_point: Address,
    /// The op's hash, once signed.
    pub user_op_hash: Option<B256>,
    /// Worst-case cost (wei).
    pub max_cost: U256,
    /// What the EntryPoint charged (wei), once mined.
    pub actual_cost: Option<U256>,
    /// Where it stands.
    pub state: ReservationState,
    /// Chain time it was granted at.
    pub created_at: u64,
    /// The signature's `validUntil`.
    pub valid_until: u64,
    /// The policy's period when granted: usage is counted in that period.
    pub period_secs: u64,
    /// The block whose `UserOperationEvent` settled it.
    pub settled_in: Option<B256>,
}

impl Reservation {
    /// What it counts against caps in wei (one op with it), if anything.
    pub fn charge(&self) -> Option<U256> {
        match self.state {
            ReservationState::Open => Some(self.max_cost),
            ReservationState::Settled => Some(self.actual_cost.unwrap_or_default()),
            ReservationState::Released => None,
        }
    }

    fn usage_keys(&self) -> [UsageKey; 3] {
        let period = self.period_secs.max(1);
        [
            UsageKey {
                scope: Scope::Sender(self.policy.clone(), self.sender),
                period_secs: period,
                index: self.created_at / period,
            },
            UsageKey {
                scope: Scope::Customer(self.policy.clone(), self.customer.clone()),
                period_secs: period,
                index: self.created_at / period,
            },
            UsageKey {
                scope: Scope::Global,
                period_secs: DAY_SECS,
                index: self.created_at / DAY_SECS,
            },
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    Sender(String, Address),
    Customer(String, String),
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UsageKey {
    scope: Scope,
    period_secs: u64,
    index: u64,
}

impl UsageKey {
    /// The same slot as [`Reservation::usage_slots`] names it.
    fn slot(&self) -> crate::ledger_store::UsageSlot {
        let scope = match &self.scope {
            Scope::Sender(policy, sender) => format!("sender:{policy}:{sender}"),
            Scope::Customer(policy, customer) => format!("customer:{policy}:{customer}"),
            Scope::Global => "global".into(),
        };
        crate::ledger_store::UsageSlot { scope, period_secs: self.period_secs, index: self.index }
    }
}

/// Ops and wei counted against a cap in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Ops (open or settled).
    pub ops: u64,
    /// Wei (open at worst case, settled at actual cost).
    pub wei: U256,
}

impl Usage {
    /// One op charged `wei` counted in (`add`) or out: what every ledger does to each slot a
    /// reservation counts in when it is taken, changes state or goes.
    pub fn count(&mut self, wei: U256, add: bool) {
        if add {
            self.ops += 1;
            self.wei += wei;
        } else {
            self.ops = self.ops.saturating_sub(1);
            self.wei = self.wei.saturating_sub(wei);
        }
    }
}

/// Everything ever settled, kept across pruning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerTotals {
    /// Sponsored ops seen mined.
    pub settled_ops: u64,
    /// Their `actualGasCost` sum (wei): what the deposit paid.
    pub settled_wei: U256,
    /// Of those, ops mined without a reservation of this ledger (a lost database, another signer
    /// with the same key): accounted, but a reason to look.
    pub unreserved_ops: u64,
}

/// A snapshot for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerStatus {
    /// Reservations open.
    pub open_reservations: u64,
    /// Their worst-case sum (wei).
    pub open_wei: U256,
    /// All-time settled totals.
    pub totals: LedgerTotals,
}

/// What asks for a reservation.
#[derive(Debug, Clone)]
pub struct ReservationRequest<'a> {
    /// The policy granting it.
    pub policy: &'a SponsorshipPolicy,
    /// The customer charged.
    pub customer: &'a str,
    /// The account.
    pub sender: Address,
    /// The EntryPoint.
    pub entry_point: Address,
    /// Worst-case cost (wei).
    pub max_cost: U256,
    /// Chain time now.
    pub now: u64,
    /// The signature's `validUntil`.
    pub valid_until: u64,
    /// The paymaster-wide budget per day (wei).
    pub daily_budget: Option<U256>,
}

/// The ledger failed to read or write its store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("paymaster ledger storage: {0}")]
pub struct LedgerError(pub String);

fn storage(error: impl std::fmt::Display) -> LedgerError {
    LedgerError(error.to_string())
}

#[derive(Debug, Default)]
struct State {
    reservations: BTreeMap<SponsorshipId, Reservation>,
    /// Open reservations by `(validUntil, id)`: expiry visits only what expired.
    open: BTreeSet<(u64, SponsorshipId)>,
    /// Settled and released ones by `(createdAt, id)`: pruning visits only what is old.
    finished: BTreeSet<(u64, SponsorshipId)>,
    by_hash: HashMap<B256, SponsorshipId>,
    usage: HashMap<UsageKey, Usage>,
    totals: LedgerTotals,
    next_id: SponsorshipId,
}

impl State {
    fn count(&mut self, reservation: &Reservation, add: bool) {
        let Some(wei) = reservation.charge() else { return };
        for key in reservation.usage_keys() {
            let usage = self.usage.entry(key.clone()).or_default();
            usage.count(wei, add);
            if usage.ops == 0 && usage.wei.is_zero() {
                self.usage.remove(&key);
            }
        }
    }

    fn index_key(reservation: &Reservation) -> (bool, (u64, SponsorshipId)) {
        match reservation.state {
            ReservationState::Open => (true, (reservation.valid_until, reservation.id)),
            _ => (false, (reservation.created_at, reservation.id)),
        }
    }

    /// Stores `reservation` (replacing one with its id), keeping the indexes.
    fn put(&mut self, reservation: Reservation) {
        self.take(reservation.id);
        match Self::index_key(&reservation) {
            (true, key) => self.open.insert(key),
            (false, key) => self.finished.insert(key),
        };
        self.reservations.insert(reservation.id, reservation);
    }

    /// Removes reservation `id` and its index entries.
    fn take(&mut self, id: SponsorshipId) -> Option<Reservation> {
        let old = self.reservations.remove(&id)?;
        match Self::index_key(&old) {
            (true, key) => self.open.remove(&key),
            (false, key) => self.finished.remove(&key),
        };
        Some(old)
    }

    fn usage(&self, key: &UsageKey) -> Usage {
        self.usage.get(key).copied().unwrap_or_default()
    }
}

const RESERVATION_PREFIX: u8 = b'r';
const TOTALS_KEY: &[u8] = b"totals";
const NEXT_ID_KEY: &[u8] = b"next-id";

fn reservation_key(id: SponsorshipId) -> [u8; 9] {
    let mut key = [RESERVATION_PREFIX; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The ledger over one sled tree.
#[derive(Debug)]
pub struct Ledger {
    tree: sled::Tree,
    state: Mutex<State>,
}

impl Ledger {
    /// Opens the ledger in `tree`, rebuilding usage from the stored reservations.
    pub fn open(tree: sled::Tree) -> Result<Self, LedgerError> {
        let mut state = State { next_id: 1, ..State::default() };
        for entry in tree.scan_prefix([RESERVATION_PREFIX]) {
            let (_, value) = entry.map_err(storage)?;
            let reservation: Reservation = serde_json::from_slice(&value).map_err(storage)?;
            state.count(&reservation, true);
            if let Some(hash) = reservation.user_op_hash {
                state.by_hash.insert(hash, reservation.id);
            }
            state.next_id = state.next_id.max(reservation.id + 1);
            state.put(reservation);
        }
        if let Some(value) = tree.get(TOTALS_KEY).map_err(storage)? {
            state.totals = serde_json::from_slice(&value).map_err(storage)?;
        }
        if let Some(value) = tree.get(NEXT_ID_KEY).map_err(storage)? {
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(storage)?;
            state.next_id = state.next_id.max(u64::from_be_bytes(bytes));
        }
        Ok(Self { tree, state: Mutex::new(state) })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, LedgerError> {
        self.state.lock().map_err(|_| LedgerError("ledger lock poisoned".into()))
    }

    fn write(&self, batch: &mut sled::Batch, reservation: &Reservation) -> Result<(), LedgerError> {
        batch.insert(
            &reservation_key(reservation.id),
            serde_json::to_vec(reservation).map_err(storage)?,
        );
        Ok(())
    }

    /// Checks every cap of `request` against current usage and, if all hold, takes a reservation
    /// at `max_cost` — atomically, so N concurrent requests against a cap of N ops all see each
    /// other. Not yet durable: [`Ledger::flush`] before handing out the signature.
    pub fn reserve(
        &self,
        request: &ReservationRequest<'_>,
    ) -> Result<Result<Reservation, Rejection>, LedgerError> {
        let mut state = self.lock()?;
        let reservation = Self::draft(&state, request);
        if let Some(rejection) = Self::over_cap(&state, request, &reservation) {
            return Ok(Err(rejection));
        }
        let mut batch = sled::Batch::default();
        self.write(&mut batch, &reservation)?;
        batch.insert(NEXT_ID_KEY, &(reservation.id + 1).to_be_bytes());
        self.tree.apply_batch(batch).map_err(storage)?;
        state.next_id = reservation.id + 1;
        state.count(&reservation, true);
        state.put(reservation.clone());
        Ok(Ok(reservation))
    }

    /// Whether `request` would get a reservation now (caps as they stand), without taking one.
    pub fn check(
        &self,
        request: &ReservationRequest<'_>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let state = self.lock()?;
        let draft = Self::draft(&state, request);
        Ok(Self::over_cap(&state, request, &draft).map_or(Ok(()), Err))
    }

    fn draft(state: &State, request: &ReservationRequest<'_>) -> Reservation {
        Reservation::open_for(request, state.next_id)
    }

    /// The first cap `reservation` would break on top of current usage.
    fn over_cap(
        state: &State,
        request: &ReservationRequest<'_>,
        reservation: &Reservation,
    ) -> Option<Rejection> {
        let used = reservation.usage_keys().map(|key| state.usage(&key));
        crate::ledger_store::over_caps(request, used)
    }

    /// What was used in `slot` (any scope: its key is rebuilt from the slot's scope string).
    pub(crate) fn slot_usage(
        &self,
        slot: &crate::ledger_store::UsageSlot,
    ) -> Result<Usage, LedgerError> {
        let state = self.lock()?;
        Ok(state
            .usage
            .iter()
            .find(|(key, _)| key.slot() == *slot)
            .map(|(_, usage)| *usage)
            .unwrap_or_default())
    }

    /// Records the signed op's hash on reservation `id`, so its `UserOperationEvent` settles it.
    pub fn bind(&self, id: SponsorshipId, user_op_hash: B256) -> Result<(), LedgerError> {
        let mut state = self.lock()?;
        let Some(reservation) = state.reservations.get_mut(&id) else {
            return Err(LedgerError(format!("no reservation {id}")));
        };
        reservation.user_op_hash = Some(user_op_hash);
        let reservation = reservation.clone();
        state.by_hash.insert(user_op_hash, id);
        let mut batch = sled::Batch::default();
        self.write(&mut batch, &reservation)?;
        self.tree.apply_batch(batch).map_err(storage)
    }

    /// Drops an open reservation whose signature was never handed out (the request failed after
    /// reserving): nothing of it is left.
    pub fn cancel(&self, id: SponsorshipId) -> Result<(), LedgerError> {
        let mut state = self.lock()?;
        let Some(reservation) = state.take(id) else { return Ok(()) };
        state.count(&reservation, false);
        if let Some(hash) = reservation.user_op_hash {
            state.by_hash.remove(&hash);
        }
        self.tree.remove(reservation_key(id)).map_err(storage)?;
        Ok(())
    }

    /// Makes every write so far durable. Blocking: call from a blocking thread.
    pub fn flush(&self) -> Result<(), LedgerError> {
        self.tree.flush().map(drop).map_err(storage)
    }

    /// A mined `UserOperationEvent` of our paymaster: settles its reservation at `actual_cost`
    /// (or records an unreserved sponsorship). Idempotent per op hash.
    pub fn settle(
        &self,
        user_op_hash: B256,
        sender: Address,
        entry_point: Address,
        actual_cost: U256,
        block: B256,
        timestamp: u64,
    ) -> Result<(), LedgerError> {
        let mut state = self.lock()?;
        let existing =
            state.by_hash.get(&user_op_hash).and_then(|id| state.reservations.get(id)).cloned();
        let mut totals = state.totals;
        let reservation = match existing {
            Some(old) if old.state == ReservationState::Settled => return Ok(()),
            Some(old) => {
                state.count(&old, false);
                Reservation {
                    actual_cost: Some(actual_cost),
                    state: ReservationState::Settled,
                    settled_in: Some(block),
                    ..old
                }
            }
            None => {
                totals.unreserved_ops += 1;
                let id = state.next_id;
                state.next_id += 1;
                let op = crate::ledger_store::SettledOp {
                    user_op_hash,
                    sender,
                    entry_point,
                    actual_cost,
                    block,
                    timestamp,
                };
                Reservation::unreserved(&op, id)
            }
        };
        totals.settled_ops += 1;
        totals.settled_wei += actual_cost;
        let mut batch = sled::Batch::default();
        self.write(&mut batch, &reservation)?;
        batch.insert(TOTALS_KEY, serde_json::to_vec(&totals).map_err(storage)?);
        batch.insert(NEXT_ID_KEY, &state.next_id.to_be_bytes());
        self.tree.apply_batch(batch).map_err(storage)?;
        state.totals = totals;
        state.count(&reservation, true);
        state.by_hash.insert(user_op_hash, reservation.id);
        state.put(reservation);
        Ok(())
    }

    /// Blocks reorged out: what they settled is open again (or, unreserved, forgotten).
    pub fn unsettle(&self, removed: &[B256]) -> Result<usize, LedgerError> {
        let mut state = self.lock()?;
        let hit: Vec<Reservation> = state
            .reservations
            .values()
            .filter(|r| r.settled_in.is_some_and(|b| removed.contains(&b)))
            .cloned()
            .collect();
        let mut totals = state.totals;
        let mut batch = sled::Batch::default();
        for old in &hit {
            state.count(old, false);
            let actual = old.actual_cost.unwrap_or_default();
            totals.settled_ops = totals.settled_ops.saturating_sub(1);
            totals.settled_wei = totals.settled_wei.saturating_sub(actual);
            if old.policy.is_empty() {
                totals.unreserved_ops = totals.unreserved_ops.saturating_sub(1);
                batch.remove(&reservation_key(old.id));
                state.take(old.id);
                if let Some(hash) = old.user_op_hash {
                    state.by_hash.remove(&hash);
                }
                continue;
            }
            let reopened = Reservation {
                actual_cost: None,
                state: ReservationState::Open,
                settled_in: None,
                ..old.clone()
            };
            self.write(&mut batch, &reopened)?;
            state.count(&reopened, true);
            state.put(reopened);
        }
        batch.insert(TOTALS_KEY, serde_json::to_vec(&totals).map_err(storage)?);
        self.tree.apply_batch(batch).map_err(storage)?;
        state.totals = totals;
        Ok(hit.len())
    }

    /// Releases open reservations whose signature expired more than `grace` seconds before chain
    /// time `now` (the EntryPoint refuses them now), and prunes old finished ones. Returns how
    /// many were released.
    pub fn expire(&self, now: u64, grace: u64) -> Result<usize, LedgerError> {
        let mut state = self.lock()?;
        // Expired: validUntil + grace < now, i.e. validUntil < now - grace.
        let expired: Vec<Reservation> = state
            .open
            .range(..(now.saturating_sub(grace), 0))
            .filter_map(|(_, id)| state.reservations.get(id).cloned())
            .collect();
        let stale: Vec<SponsorshipId> = state
            .finished
            .range(..(now.saturating_sub(RETENTION_SECS), 0))
            .map(|(_, id)| *id)
            .collect();
        let mut batch = sled::Batch::default();
        for old in &expired {
            state.count(old, false);
            let released = Reservation { state: ReservationState::Released, ..old.clone() };
            self.write(&mut batch, &released)?;
            state.put(released);
        }
        for id in &stale {
            if let Some(old) = state.take(*id) {
                state.count(&old, false);
                if let Some(hash) = old.user_op_hash {
                    state.by_hash.remove(&hash);
                }
            }
            batch.remove(&reservation_key(*id));
        }
        self.tree.apply_batch(batch).map_err(storage)?;
        Ok(expired.len())
    }

    /// The reservation with `id`.
    pub fn reservation(&self, id: SponsorshipId) -> Result<Option<Reservation>, LedgerError> {
        Ok(self.lock()?.reservations.get(&id).cloned())
    }

    /// Open reservations and all-time totals.
    pub fn status(&self) -> Result<LedgerStatus, LedgerError> {
        let state = self.lock()?;
        let open_wei = state
            .open
            .iter()
            .filter_map(|(_, id)| state.reservations.get(id))
            .map(|r| r.max_cost)
            .sum();
        Ok(LedgerStatus {
            open_reservations: state.open.len() as u64,
            open_wei,
            totals: state.totals,
        })
    }

    /// What `sender` used under `policy` in the period holding `now`.
    pub fn sender_usage(
        &self,
        policy: &SponsorshipPolicy,
        sender: Address,
        now: u64,
    ) -> Result<Usage, LedgerError> {
        let period = policy.period_secs.max(1);
        let key = UsageKey {
            scope: Scope::Sender(policy.id.clone(), sender),
            period_secs: period,
            index: now / period,
        };
        Ok(self.lock()?.usage(&key))
    }

    /// What `customer` used under `policy` in the period holding `now`.
    pub fn customer_usage(
        &self,
        policy: &SponsorshipPolicy,
        customer: &str,
        now: u64,
    ) -> Result<Usage, LedgerError> {
        let period = policy.period_secs.max(1);
        let key = UsageKey {
            scope: Scope::Customer(policy.id.clone(), customer.to_string()),
            period_secs: period,
            index: now / period,
        };
        Ok(self.lock()?.usage(&key))
    }

    /// Everything sponsored today (chain time `now`).
    pub fn daily_usage(&self, now: u64) -> Result<Usage, LedgerError> {
        let key = UsageKey { scope: Scope::Global, period_secs: DAY_SECS, index: now / DAY_SECS };
        Ok(self.lock()?.usage(&key))
    }
}

#[cfg(test)]
mod tests;
