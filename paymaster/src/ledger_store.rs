//! The ledger's seam for several nodes: [`LedgerStore`], each method one atomic step, with two
//! backends — [`Ledger`] (sled, one node) and PostgreSQL (`settled-store`, shared by every node:
//! caps as usage rows locked in a fixed order). What a reservation counts against and which cap
//! it would break are decided here, once, for both.

use std::future::Future;
use std::pin::Pin;

use alloy::primitives::{Address, B256, U256};

use crate::ledger::{
    DAY_SECS, Ledger, LedgerError, LedgerStatus, Reservation, ReservationRequest, SponsorshipId,
    Usage,
};
use crate::policy::{PolicyRule, Rejection, SponsorshipPolicy};

/// A boxed future, so the ledger is usable as `dyn LedgerStore`.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// One period of one cap's scope: what usage is counted in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageSlot {
    /// `sender:<policy>:<address>`, `customer:<policy>:<customer>` or `global`.
    pub scope: String,
    /// The period's length.
    pub period_secs: u64,
    /// Which period (chain time / length).
    pub index: u64,
}

impl Reservation {
    /// A new open reservation `id` for `request`, at its worst case.
    pub fn open_for(request: &ReservationRequest<'_>, id: SponsorshipId) -> Self {
        Self {
            id,
            policy: request.policy.id.clone(),
            customer: request.customer.to_string(),
            sender: request.sender,
            entry_point: request.entry_point,
            user_op_hash: None,
            max_cost: request.max_cost,
            actual_cost: None,
            state: crate::ledger::ReservationState::Open,
            created_at: request.now,
            valid_until: request.valid_until,
            period_secs: request.policy.period_secs,
            settled_in: None,
        }
    }

    /// Op `op`, mined without a reservation of this ledger, accounted as settled under no
    /// policy with `id`.
    pub fn unreserved(op: &SettledOp, id: SponsorshipId) -> Self {
        Self {
            id,
            policy: String::new(),
            customer: String::new(),
            sender: op.sender,
            entry_point: op.entry_point,
            user_op_hash: Some(op.user_op_hash),
            max_cost: op.actual_cost,
            actual_cost: Some(op.actual_cost),
            state: crate::ledger::ReservationState::Settled,
            created_at: op.timestamp,
            valid_until: op.timestamp,
            period_secs: DAY_SECS,
            settled_in: Some(op.block),
        }
    }

    /// The slots it counts in: its sender's and its customer's under its policy's period, and
    /// the paymaster-wide day.
    pub fn usage_slots(&self) -> [UsageSlot; 3] {
        let period = self.period_secs.max(1);
        [
            UsageSlot {
                scope: format!("sender:{}:{}", self.policy, self.sender),
                period_secs: period,
                index: self.created_at / period,
            },
            UsageSlot {
                scope: format!("customer:{}:{}", self.policy, self.customer),
                period_secs: period,
                index: self.created_at / period,
            },
            UsageSlot {
                scope: "global".into(),
                period_secs: DAY_SECS,
                index: self.created_at / DAY_SECS,
            },
        ]
    }
}

/// The sender slot of `policy` for `sender` at chain time `now`.
pub fn sender_slot(policy: &SponsorshipPolicy, sender: Address, now: u64) -> UsageSlot {
    let period = policy.period_secs.max(1);
    UsageSlot {
        scope: format!("sender:{}:{sender}", policy.id),
        period_secs: period,
        index: now / period,
    }
}

/// The customer slot of `policy` for `customer` at chain time `now`.
pub fn customer_slot(policy: &SponsorshipPolicy, customer: &str, now: u64) -> UsageSlot {
    let period = policy.period_secs.max(1);
    UsageSlot {
        scope: format!("customer:{}:{customer}", policy.id),
        period_secs: period,
        index: now / period,
    }
}

/// The paymaster-wide day holding chain time `now`.
pub fn daily_slot(now: u64) -> UsageSlot {
    UsageSlot { scope: "global".into(), period_secs: DAY_SECS, index: now / DAY_SECS }
}

/// The first cap `request` would break on top of `used` (its sender's, its customer's and the
/// day's usage, in [`Reservation::usage_slots`] order).
pub fn over_caps(request: &ReservationRequest<'_>, used: [Usage; 3]) -> Option<Rejection> {
    let policy = request.policy;
    let caps = [
        (
            PolicyRule::SenderOps,
            policy.max_ops_per_sender,
            PolicyRule::SenderWei,
            policy.max_wei_per_sender,
        ),
        (
            PolicyRule::CustomerOps,
            policy.max_ops_per_customer,
            PolicyRule::CustomerWei,
            policy.max_wei_per_customer,
        ),
        (PolicyRule::DailyBudget, None, PolicyRule::DailyBudget, request.daily_budget),
    ];
    for ((ops_rule, max_ops, wei_rule, max_wei), used) in caps.into_iter().zip(used) {
        if let Some(max) = max_ops
            && used.ops >= max
        {
            return Some(Rejection::new(
                ops_rule,
                format!("{} of {max} sponsored ops used this period", used.ops),
            ));
        }
        if let Some(max) = max_wei
            && used.wei + request.max_cost > max
        {
            return Some(Rejection::new(
                wei_rule,
                format!(
                    "{} wei used this period; this op may cost {} more, above the {max} wei cap",
                    used.wei, request.max_cost
                ),
            ));
        }
    }
    None
}

/// Where the sponsorship ledger lives. Each method is one atomic step; a reservation is durable
/// once [`LedgerStore::reserve`] and [`LedgerStore::flush`] returned.
pub trait LedgerStore: Send + Sync + std::fmt::Debug {
    /// Checks every cap and takes a reservation at `max_cost`, atomically (see [`Ledger::reserve`]).
    fn reserve<'a>(
        &'a self,
        request: &'a ReservationRequest<'a>,
    ) -> LedgerFuture<'a, Result<Reservation, Rejection>>;

    /// Whether `request` would get a reservation now, without taking one.
    fn check<'a>(
        &'a self,
        request: &'a ReservationRequest<'a>,
    ) -> LedgerFuture<'a, Result<(), Rejection>>;

    /// Records the signed op's hash on reservation `id`.
    fn bind(&self, id: SponsorshipId, user_op_hash: B256) -> LedgerFuture<'_, ()>;

    /// Drops an open reservation whose signature was never handed out.
    fn cancel(&self, id: SponsorshipId) -> LedgerFuture<'_, ()>;

    /// Makes every write so far durable.
    fn flush(&self) -> LedgerFuture<'_, ()>;

    /// A mined `UserOperationEvent`: settles its reservation at `actual_cost` (idempotent).
    fn settle(&self, event: SettledOp) -> LedgerFuture<'_, ()>;

    /// Blocks reorged out: what they settled is open again. How many.
    fn unsettle<'a>(&'a self, removed: &'a [B256]) -> LedgerFuture<'a, usize>;

    /// Releases open reservations expired more than `grace` before `now`, prunes old ones.
    fn expire(&self, now: u64, grace: u64) -> LedgerFuture<'_, usize>;

    /// The reservation with `id`.
    fn reservation(&self, id: SponsorshipId) -> LedgerFuture<'_, Option<Reservation>>;

    /// Open reservations and all-time totals.
    fn status(&self) -> LedgerFuture<'_, LedgerStatus>;

    /// What was used in `slot`.
    fn usage(&self, slot: UsageSlot) -> LedgerFuture<'_, Usage>;
}

/// A sponsored op seen mined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledOp {
    /// Its hash.
    pub user_op_hash: B256,
    /// The account.
    pub sender: Address,
    /// The EntryPoint.
    pub entry_point: Address,
    /// What the EntryPoint charged.
    pub actual_cost: U256,
    /// The block it was mined in.
    pub block: B256,
    /// That block's time.
    pub timestamp: u64,
}

impl LedgerStore for Ledger {
    fn reserve<'a>(
        &'a self,
        request: &'a ReservationRequest<'a>,
    ) -> LedgerFuture<'a, Result<Reservation, Rejection>> {
        Box::pin(async move { Ledger::reserve(self, request) })
    }

    fn check<'a>(
        &'a self,
        request: &'a ReservationRequest<'a>,
    ) -> LedgerFuture<'a, Result<(), Rejection>> {
        Box::pin(async move { Ledger::check(self, request) })
    }

    fn bind(&self, id: SponsorshipId, user_op_hash: B256) -> LedgerFuture<'_, ()> {
        Box::pin(async move { Ledger::bind(self, id, user_op_hash) })
    }

    fn cancel(&self, id: SponsorshipId) -> LedgerFuture<'_, ()> {
        Box::pin(async move { Ledger::cancel(self, id) })
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        // A blocking fsync: off the runtime's worker where the runtime allows it.
        Box::pin(async move {
            match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => Ledger::flush(self),
                _ => tokio::task::block_in_place(|| Ledger::flush(self)),
            }
        })
    }

    fn settle(&self, op: SettledOp) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            Ledger::settle(
                self,
                op.user_op_hash,
                op.sender,
                op.entry_point,
                op.actual_cost,
                op.block,
                op.timestamp,
            )
        })
    }

    fn unsettle<'a>(&'a self, removed: &'a [B256]) -> LedgerFuture<'a, usize> {
        Box::pin(async move { Ledger::unsettle(self, removed) })
    }

    fn expire(&self, now: u64, grace: u64) -> LedgerFuture<'_, usize> {
        Box::pin(async move { Ledger::expire(self, now, grace) })
    }

    fn reservation(&self, id: SponsorshipId) -> LedgerFuture<'_, Option<Reservation>> {
        Box::pin(async move { Ledger::reservation(self, id) })
    }

    fn status(&self) -> LedgerFuture<'_, LedgerStatus> {
        Box::pin(async move { Ledger::status(self) })
    }

    fn usage(&self, slot: UsageSlot) -> LedgerFuture<'_, Usage> {
        Box::pin(async move { self.slot_usage(&slot) })
    }
}
