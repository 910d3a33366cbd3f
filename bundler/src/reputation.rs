//! ERC-7562 entity reputation, per EntryPoint (ALT-040: per mempool): `opsSeen` and
//! `opsIncluded` counters, decayed hourly, giving each entity a status — ok, throttled or banned —
//! plus the operator's allow and block lists. Pure data: the service persists the counters and
//! applies the consequences (GREP-010 removal, GREP-020 limits).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};
use settled_contracts::EntryPointVersion;

use crate::params::MempoolParams;

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

/// [`Reputation`] kept in a sled tree: every change is written through (not fsynced per change:
/// counters are advisory, and sled flushes on its own within half a second).
#[derive(Debug)]
pub(crate) struct ReputationStore {
    reputation: Mutex<Reputation>,
    tree: sled::Tree,
}

fn key(entry_point: EntryPointVersion, address: Address) -> [u8; 21] {
    let mut key = [0u8; 21];
    key[0] = match entry_point {
        EntryPointVersion::V07 => 7,
        EntryPointVersion::V08 => 8,
    };
    key[1..].copy_from_slice(address.as_slice());
    key
}

fn from_key(key: &[u8]) -> Option<(EntryPointVersion, Address)> {
    let version = match key.first()? {
        7 => EntryPointVersion::V07,
        8 => EntryPointVersion::V08,
        _ => return None,
    };
    (key.len() == 21).then(|| (version, Address::from_slice(&key[1..])))
}

impl ReputationStore {
    /// The counters persisted in `db` (tree `bundler.reputation`), with the operator's lists.
    pub(crate) fn open(
        db: &sled::Db,
        lists: ReputationLists,
        params: MempoolParams,
    ) -> Result<Self, sled::Error> {
        let tree = db.open_tree("bundler.reputation")?;
        let mut reputation = Reputation::new(lists, params);
        for item in tree.iter() {
            let (key, value) = item?;
            if let (Some((entry_point, address)), Ok(counts)) =
                (from_key(&key), serde_json::from_slice(&value))
            {
                reputation.set(entry_point, address, counts);
            }
        }
        Ok(Self { reputation: Mutex::new(reputation), tree })
    }

    /// Reads through `f`.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Reputation) -> R) -> R {
        match self.reputation.lock() {
            Ok(reputation) => f(&reputation),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Changes `address`'s counters with `f` and persists them; the new status.
    pub(crate) fn update(
        &self,
        entry_point: EntryPointVersion,
        address: Address,
        f: impl FnOnce(&mut Reputation, EntryPointVersion, Address) -> ReputationCounts,
    ) -> Result<ReputationStatus, sled::Error> {
        let (counts, status) = {
            let mut reputation = match self.reputation.lock() {
                Ok(reputation) => reputation,
                Err(poisoned) => poisoned.into_inner(),
            };
            let counts = f(&mut reputation, entry_point, address);
            (counts, reputation.status(entry_point, address))
        };
        self.persist(entry_point, address, counts)?;
        Ok(status)
    }

    fn persist(
        &self,
        entry_point: EntryPointVersion,
        address: Address,
        counts: ReputationCounts,
    ) -> Result<(), sled::Error> {
        let key = key(entry_point, address);
        if counts == ReputationCounts::default() {
            self.tree.remove(key)?;
        } else if let Ok(value) = serde_json::to_vec(&counts) {
            self.tree.insert(key, value)?;
        }
        Ok(())
    }

    /// The hourly refresh, persisted.
    pub(crate) fn decay(&self) -> Result<(), sled::Error> {
        let changed = match self.reputation.lock() {
            Ok(mut reputation) => reputation.decay(),
            Err(poisoned) => poisoned.into_inner().decay(),
        };
        for ((entry_point, address), counts) in changed {
            self.persist(entry_point, address, counts)?;
        }
        Ok(())
    }

    /// Forgets every counter.
    pub(crate) fn clear(&self) -> Result<(), sled::Error> {
        match self.reputation.lock() {
            Ok(mut reputation) => reputation.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
        self.tree.clear()
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

    #[test]
    fn the_store_survives_a_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (paymaster, account) = (Address::repeat_byte(5), Address::repeat_byte(6));
        {
            let db = sled::open(dir.path())?;
            let store =
                ReputationStore::open(&db, ReputationLists::default(), MempoolParams::default())?;
            store.update(V07, paymaster, Reputation::penalize)?;
            store.update(EntryPointVersion::V08, account, Reputation::seen)?;
            store.update(V07, account, Reputation::seen)?;
            store.update(V07, account, Reputation::unseen)?;
            db.flush()?;
        }
        let db = settled_contracts::reopen_sled(dir.path())?;
        let store =
            ReputationStore::open(&db, ReputationLists::default(), MempoolParams::default())?;
        assert_eq!(store.read(|r| r.status(V07, paymaster)), ReputationStatus::Banned);
        assert_eq!(store.read(|r| r.counts(EntryPointVersion::V08, account)), counts(1, 0));
        assert_eq!(store.read(|r| r.dump(V07).len()), 1, "a zeroed entity is not kept");
        store.clear()?;
        assert_eq!(store.read(|r| r.status(V07, paymaster)), ReputationStatus::Ok);
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
