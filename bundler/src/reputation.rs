//! ERC-7562 entity reputation, per EntryPoint (ALT-040: per mempool): `opsSeen` and
//! `opsIncluded` counters, decayed hourly, giving each entity a status — ok, throttled or banned —
//! plus the operator's allow and block lists. Pure data: the service persists the counters and
//! applies the consequences (GREP-010 removal, GREP-020 limits).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};
use settled_contracts::EntryPointVersion;

use crate::{
    params::MempoolParams,
    store::{BundlerStore, ReputationRow},
};

/// ERC-7562 `BAN_OPS_SEEN_PENALTY` (GREP-040).
pub const BAN_OPS_SEEN_PENALTY: u64 = 10_000;
/// ERC-7562 `THROTTLED_ENTITY_LIVE_BLOCKS` (GREP-020).
pub const THROTTLED_ENTITY_LIVE_BLOCKS: u64 = 10;
/// ERC-7562 `THROTTLED_ENTITY_BUNDLE_COUNT` (GREP-020).
pub const THROTTLED_ENTITY_BUNDLE_COUNT: usize = 4;
/// ERC-7562 `MAX_OPS_ALLOWED_UNSTAKED_ENTITY` (UREP-020).
pub const MAX_OPS_ALLOWED_UNSTAKED_ENTITY: u64 = 10_000;

/// An entity's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReputationStatus {
    /// No limits beyond the mempool rules.
    Ok,
    /// Limited in the mempool and in bundles (GREP-020).
    Throttled,
    /// Not allowed in the mempool (GREP-010).
    Banned,
}

impl ReputationStatus {
    /// `ok`, `throttled`, `banned` (as ERC-7769 spells them).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Throttled => "throttled",
            Self::Banned => "banned",
        }
    }
}

/// One entity's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationCounts {
    /// Unique valid ops referencing the entity that this bundler accepted.
    pub ops_seen: u64,
    /// Of those, how many were mined.
    pub ops_included: u64,
}

impl ReputationCounts {
    /// The status the counters give under `params` (ERC-7562 "Reputation Calculation").
    pub fn status(self, params: &MempoolParams) -> ReputationStatus {
        let max_seen = self.ops_seen / params.min_inclusion_rate_denominator.max(1);
        if max_seen > self.ops_included.saturating_add(params.ban_slack) {
            ReputationStatus::Banned
        } else if max_seen > self.ops_included.saturating_add(params.throttling_slack) {
            ReputationStatus::Throttled
        } else {
            ReputationStatus::Ok
        }
    }
}

/// The operator's fixed opinions, from config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationLists {
    /// Always `ok`, whatever their counters say.
    pub allowlist: BTreeSet<Address>,
    /// Always `banned`.
    pub blocklist: BTreeSet<Address>,
}

/// Counters of every entity seen, per EntryPoint.
#[derive(Debug, Default)]
pub struct Reputation {
    counts: BTreeMap<(EntryPointVersion, Address), ReputationCounts>,
    lists: ReputationLists,
    params: MempoolParams,
}

impl Reputation {
    /// Empty counters with the operator's lists, judged under `params`.
    pub fn new(lists: ReputationLists, params: MempoolParams) -> Self {
        Self { counts: BTreeMap::new(), lists, params }
    }

    /// `address`'s status in `entry_point`'s mempool: the lists first, then the counters.
    pub fn status(&self, entry_point: EntryPointVersion, address: Address) -> ReputationStatus {
        if self.lists.allowlist.contains(&address) {
            ReputationStatus::Ok
        } else if self.lists.blocklist.contains(&address) {
            ReputationStatus::Banned
        } else {
            self.counts(entry_point, address).status(&self.params)
        }
    }

    /// `address`'s counters (zero if never seen).
    pub fn counts(&self, entry_point: EntryPointVersion, address: Address) -> ReputationCounts {
        self.counts.get(&(entry_point, address)).copied().unwrap_or_default()
    }

    fn update(
        &mut self,
        entry_point: EntryPointVersion,
        address: Address,
        f: impl FnOnce(&mut ReputationCounts),
    ) -> ReputationCounts {
        let counts = self.counts.entry((entry_point, address)).or_default();
        f(counts);
        *counts
    }

    /// An op referencing `address` was accepted.
    pub fn seen(&mut self, entry_point: EntryPointVersion, address: Address) -> ReputationCounts {
        self.update(entry_point, address, |c| c.ops_seen = c.ops_seen.saturating_add(1))
    }

    /// Takes back one `seen` (EREP-015: a paymaster is not charged for the account's failure;
    /// GREP-050: an entity a replacement dropped).
    pub fn unseen(&mut self, entry_point: EntryPointVersion, address: Address) -> ReputationCounts {
        self.update(entry_point, address, |c| c.ops_seen = c.ops_seen.saturating_sub(1))
    }

    /// An op referencing `address`, seen by this bundler, was mined.
    pub fn included(
        &mut self,
        entry_point: EntryPointVersion,
        address: Address,
    ) -> ReputationCounts {
        self.update(entry_point, address, |c| c.ops_included = c.ops_included.saturating_add(1))
    }

    /// GREP-040: `address` failed bundle creation after passing the second validation.
    pub fn penalize(
        &mut self,
        entry_point: EntryPointVersion,
        address: Address,
    ) -> ReputationCounts {
        self.update(entry_point, address, |c| {
            *c = ReputationCounts { ops_seen: BAN_OPS_SEEN_PENALTY, ops_included: 0 }
        })
    }

    /// Sets counters (`debug_bundler_setReputation`).
    pub fn set(
        &mut self,
        entry_point: EntryPointVersion,
        address: Address,
        counts: ReputationCounts,
    ) -> ReputationCounts {
        self.update(entry_point, address, |c| *c = counts)
    }

    /// The hourly refresh: every counter becomes `value * 23 / 24`; entities at zero are
    /// forgotten. Returns every entity touched with its new counters (zero: forgotten).
    pub fn decay(&mut self) -> Vec<((EntryPointVersion, Address), ReputationCounts)> {
        let mut changed = Vec::with_capacity(self.counts.len());
        for (key, counts) in &mut self.counts {
            counts.ops_seen = counts.ops_seen * 23 / 24;
            counts.ops_included = counts.ops_included * 23 / 24;
            changed.push((*key, *counts));
        }
        self.counts.retain(|_, c| *c != ReputationCounts::default());
        changed
    }

    /// Every entity of `entry_point` with its counters and status.
    pub fn dump(
        &self,
        entry_point: EntryPointVersion,
    ) -> Vec<(Address, ReputationCounts, ReputationStatus)> {
        self.counts
            .iter()
            .filter(|((ep, _), _)| *ep == entry_point)
            .map(|(&(ep, address), &counts)| (address, counts, self.status(ep, address)))
            .collect()
    }

    /// Forgets every counter (the lists stay).
    pub fn clear(&mut self) {
        self.counts.clear();
    }

    /// UREP-020: how many ops an unstaked paymaster that is not throttled or banned may have in
    /// the mempool: `SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT + inclusionRate * min(opsIncluded,
    /// MAX_OPS_ALLOWED_UNSTAKED_ENTITY)`, rounded down.
    pub fn unstaked_allowance(&self, entry_point: EntryPointVersion, address: Address) -> usize {
        let counts = self.counts(entry_point, address);
        let earned = match counts.ops_seen {
            0 => 0,
            seen => {
                let included = counts.ops_included.min(seen);
                // u128: included * min(included, 10,000) cannot overflow.
                (u128::from(included) * u128::from(included.min(MAX_OPS_ALLOWED_UNSTAKED_ENTITY))
                    / u128::from(seen)) as usize
            }
        };
        self.params.same_unstaked_entity_mempool_count.saturating_add(earned)
    }
}

/// A change of the counters, written behind in order by one task.
#[derive(Debug)]
enum ReputationWrite {
    Put(Vec<ReputationRow>),
    Clear,
    /// Answers once every earlier write is done.
    Written(tokio::sync::oneshot::Sender<()>),
}

/// [`Reputation`] in memory, every change written behind to the bundler's store in order (not
/// awaited: counters are advisory; on a shared store only the bundler key's leader writes).
#[derive(Debug)]
pub(crate) struct ReputationStore {
    reputation: Mutex<Reputation>,
    lists: ReputationLists,
    params: MempoolParams,
    writes: tokio::sync::mpsc::UnboundedSender<ReputationWrite>,
}

fn locked(reputation: &Mutex<Reputation>) -> std::sync::MutexGuard<'_, Reputation> {
    match reputation.lock() {
        Ok(reputation) => reputation,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ReputationStore {
    /// Empty counters with the operator's lists, written behind to `store`.
    pub(crate) fn new(
        store: Arc<dyn BundlerStore>,
        lists: ReputationLists,
        params: MempoolParams,
    ) -> Self {
        let (writes, mut queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(write) = queue.recv().await {
                let written = match write {
                    ReputationWrite::Put(rows) => store.put_reputation(&rows).await,
                    ReputationWrite::Clear => store.clear_reputation().await,
                    ReputationWrite::Written(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                if let Err(error) = written {
                    tracing::warn!(%error, "reputation counters not stored");
                }
            }
        });
        let reputation = Mutex::new(Reputation::new(lists.clone(), params));
        Self { reputation, lists, params, writes }
    }

    /// Replaces the counters in memory with `rows` (start-up, a new leader).
    pub(crate) fn load(&self, rows: Vec<ReputationRow>) {
        let mut loaded = Reputation::new(self.lists.clone(), self.params);
        for (entry_point, address, counts) in rows {
            loaded.set(entry_point, address, counts);
        }
        *locked(&self.reputation) = loaded;
    }

    /// Reads through `f`.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Reputation) -> R) -> R {
        f(&locked(&self.reputation))
    }

    /// Changes `address`'s counters with `f` and stores them; the new status.
    pub(crate) fn update(
        &self,
        entry_point: EntryPointVersion,
        address: Address,
        f: impl FnOnce(&mut Reputation, EntryPointVersion, Address) -> ReputationCounts,
    ) -> ReputationStatus {
        let (counts, status) = {
            let mut reputation = locked(&self.reputation);
            let counts = f(&mut reputation, entry_point, address);
            (counts, reputation.status(entry_point, address))
        };
        let _ = self.writes.send(ReputationWrite::Put(vec![(entry_point, address, counts)]));
        status
    }

    /// The hourly refresh, stored.
    pub(crate) fn decay(&self) {
        let changed = locked(&self.reputation).decay();
        let rows = changed.into_iter().map(|((ep, address), counts)| (ep, address, counts));
        let _ = self.writes.send(ReputationWrite::Put(rows.collect()));
    }

    /// Waits until every change so far is written.
    pub(crate) async fn written(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.writes.send(ReputationWrite::Written(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Forgets every counter.
    pub(crate) fn clear(&self) {
        locked(&self.reputation).clear();
        let _ = self.writes.send(ReputationWrite::Clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V07: EntryPointVersion = EntryPointVersion::V07;

    fn counts(ops_seen: u64, ops_included: u64) -> ReputationCounts {
        ReputationCounts { ops_seen, ops_included }
    }

    #[test]
    fn status_follows_the_erc_7562_formula() {
        use ReputationStatus::*;
        // (opsSeen, opsIncluded, status): max_seen = seen / 10 against included + slack.
        let table = [
            (0, 0, Ok),
            (100, 0, Ok), // max_seen 10, not above 0 + 10
            (110, 0, Throttled),
            (119, 0, Throttled),
            (200, 10, Ok), // 20 > 10 + 10 is false
            (210, 10, Throttled),
            (509, 0, Throttled), // max_seen 50 is not above 0 + BAN_SLACK
            (510, 0, Banned),
            (600, 10, Throttled),
            (600, 9, Banned),
            (BAN_OPS_SEEN_PENALTY, 0, Banned),
            (u64::MAX, u64::MAX, Ok),
        ];
        for (seen, included, expected) in table {
            assert_eq!(
                counts(seen, included).status(&MempoolParams::default()),
                expected,
                "seen {seen} included {included}"
            );
        }
    }

    /// The thresholds are the configured ones, not the spec's constants.
    #[test]
    fn status_follows_configured_slacks() {
        let strict = MempoolParams { throttling_slack: 0, ban_slack: 1, ..Default::default() };
        assert_eq!(counts(10, 0).status(&strict), ReputationStatus::Throttled);
        assert_eq!(counts(20, 0).status(&strict), ReputationStatus::Banned);
        assert_eq!(counts(20, 0).status(&MempoolParams::default()), ReputationStatus::Ok);
    }

    #[test]
    fn lists_override_counters() {
        let (good, bad, plain) = (Address::repeat_byte(1), Address::repeat_byte(2), Address::ZERO);
        let lists = ReputationLists {
            allowlist: [good].into_iter().collect(),
            blocklist: [bad].into_iter().collect(),
        };
        let mut reputation = Reputation::new(lists, MempoolParams::default());
        reputation.penalize(V07, good);
        assert_eq!(reputation.status(V07, good), ReputationStatus::Ok);
        assert_eq!(reputation.status(V07, bad), ReputationStatus::Banned);
        assert_eq!(reputation.status(V07, plain), ReputationStatus::Ok);
    }

    #[test]
    fn counters_are_per_entry_point_and_decay_hourly() {
        let paymaster = Address::repeat_byte(7);
        let mut reputation = Reputation::default();
        for _ in 0..48 {
            reputation.seen(V07, paymaster);
        }
        reputation.included(V07, paymaster);
        assert_eq!(reputation.counts(EntryPointVersion::V08, paymaster), counts(0, 0));
        reputation.decay();
        assert_eq!(reputation.counts(V07, paymaster), counts(46, 0), "48*23/24 = 46, 1*23/24 = 0");
        // A hundred hours later nothing is left, and the entity is forgotten.
        for _ in 0..100 {
            reputation.decay();
        }
        assert!(reputation.dump(V07).is_empty());
    }

    #[test]
    fn penalty_bans_and_unseen_never_underflows() {
        let entity = Address::repeat_byte(9);
        let mut reputation = Reputation::default();
        assert_eq!(reputation.unseen(V07, entity), counts(0, 0));
        reputation.included(V07, entity);
        assert_eq!(reputation.penalize(V07, entity), counts(BAN_OPS_SEEN_PENALTY, 0));
        assert_eq!(reputation.status(V07, entity), ReputationStatus::Banned);
    }

    #[tokio::test]
    async fn counters_are_written_behind_to_the_store() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        let (paymaster, account) = (Address::repeat_byte(5), Address::repeat_byte(6));
        let backend = Arc::new(crate::SledBundler::open(&db)?);
        let open = || {
            ReputationStore::new(backend.clone(), ReputationLists::default(), Default::default())
        };
        let store = open();
        store.update(V07, paymaster, Reputation::penalize);
        store.update(EntryPointVersion::V08, account, Reputation::seen);
        store.update(V07, account, Reputation::seen);
        store.update(V07, account, Reputation::unseen);
        store.written().await;
        // A new leader's counters, from the store.
        let next = open();
        next.load(backend.reputation().await?);
        assert_eq!(next.read(|r| r.status(V07, paymaster)), ReputationStatus::Banned);
        assert_eq!(next.read(|r| r.counts(EntryPointVersion::V08, account)), counts(1, 0));
        assert_eq!(next.read(|r| r.dump(V07).len()), 1, "a zeroed entity is not kept");
        next.clear();
        next.written().await;
        assert_eq!(next.read(|r| r.status(V07, paymaster)), ReputationStatus::Ok);
        assert!(backend.reputation().await?.is_empty());
        Ok(())
    }

    #[test]
    fn unstaked_allowance_grows_with_inclusion() {
        let paymaster = Address::repeat_byte(3);
        let mut reputation = Reputation::default();
        assert_eq!(reputation.unstaked_allowance(V07, paymaster), 10, "a new entity");
        reputation.set(V07, paymaster, counts(20, 10));
        // inclusionRate 1/2 * min(10, 10,000) = 5.
        assert_eq!(reputation.unstaked_allowance(V07, paymaster), 15);
        reputation.set(V07, paymaster, counts(30_000, 30_000));
        assert_eq!(reputation.unstaked_allowance(V07, paymaster), 10 + 10_000);
    }
}
