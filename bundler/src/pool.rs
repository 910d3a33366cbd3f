//! The UserOperation mempool: what was accepted and not yet mined, with ERC-7562's mempool rules
//! (per-sender and per-unstaked-entity limits, STO-040, replacement by fee) and a size bound
//! with fee-based eviction. Pure data: the service persists it and validates before adding.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};
use settled_contracts::{EntryPointVersion, PackedUserOperation};

use settled_contracts::UserOperation;

use crate::params::MempoolParams;

/// Mempool bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Most ops held; a full pool evicts its cheapest op for a better-paying one.
    pub max_ops: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { max_ops: 4096 }
    }
}

/// Which of an op's entities are staked (as validation found them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StakedEntities {
    /// The sender.
    pub sender: bool,
    /// The factory.
    pub factory: bool,
    /// The paymaster.
    pub paymaster: bool,
}

/// An accepted op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// `userOpHash`.
    pub hash: B256,
    /// Its EntryPoint.
    pub entry_point: EntryPointVersion,
    /// The op as the client sent it (with `eip7702Auth`).
    pub op: UserOperation,
    /// Staked entities at acceptance.
    pub staked: StakedEntities,
    /// Code hashes validation saw (COD-010: re-checked before bundling).
    pub code_hashes: BTreeMap<Address, B256>,
    /// The op is valid until this timestamp (account and paymaster ranges combined).
    pub valid_until: u64,
    /// Chain head when accepted.
    pub accepted_at_block: u64,
}

impl PoolEntry {
    /// The packed op. Entries are only built from ops that packed.
    pub fn packed(&self) -> PackedUserOperation {
        self.op.pack().unwrap_or_else(|_| PackedUserOperation {
            sender: self.op.sender,
            nonce: self.op.nonce,
            initCode: Default::default(),
            callData: Default::default(),
            accountGasLimits: Default::default(),
            preVerificationGas: U256::ZERO,
            gasFees: Default::default(),
            paymasterAndData: Default::default(),
            signature: Default::default(),
        })
    }

    fn factory(&self) -> Option<Address> {
        self.op.factory_address()
    }

    /// The op's entities as `(kind, address, staked)`: the sender (`account`), its factory and
    /// its paymaster, where present.
    pub fn entities(&self) -> impl Iterator<Item = (&'static str, Address, bool)> {
        [
            ("account", Some(self.op.sender), self.staked.sender),
            ("factory", self.factory(), self.staked.factory),
            ("paymaster", self.op.paymaster, self.staked.paymaster),
        ]
        .into_iter()
        .filter_map(|(kind, address, staked)| address.map(|a| (kind, a, staked)))
    }

    /// The entities whose `opsSeen` the op counts in: its factory and paymaster, and its sender
    /// only when staked (an unstaked sender's standing is its mempool limit, UREP-010).
    pub fn charged_entities(&self) -> Vec<Address> {
        self.entities()
            .filter(|&(kind, _, staked)| kind != "account" || staked)
            .map(|(_, address, _)| address)
            .collect()
    }

    /// Whether `address` is one of the op's entities.
    pub fn references(&self, address: Address) -> bool {
        self.entities().any(|(_, a, _)| a == address)
    }

    fn priority_fee(&self) -> U256 {
        self.op.max_priority_fee_per_gas
    }
}

/// Why the pool refused an op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The same op is already in the pool.
    #[error("UserOperation {0} is already in the mempool")]
    Duplicate(B256),
    /// A replacement (same sender and nonce) did not raise both fees by the bump.
    #[error(
        "Replacement UserOperation must have higher maxPriorityFeePerGas and maxFeePerGas: raise both by at least {percent}% over {existing}"
    )]
    ReplacementUnderpriced {
        /// The op it would replace.
        existing: B256,
        /// The bump required.
        percent: u128,
    },
    /// An unstaked sender already has the most ops allowed.
    #[error(
        "sender {sender} already has {allowed} UserOperations in the mempool (stake to send more)"
    )]
    SenderLimit {
        /// The sender.
        sender: Address,
        /// `SAME_SENDER_MEMPOOL_COUNT`.
        allowed: usize,
    },
    /// An unstaked factory or paymaster is referenced by the most ops allowed.
    #[error(
        "unstaked {entity} {address} is already used by {allowed} UserOperations in the mempool"
    )]
    EntityLimit {
        /// `factory` or `paymaster`.
        entity: &'static str,
        /// Its address.
        address: Address,
        /// Ops it may have in the pool.
        allowed: usize,
    },
    /// AUTH-040: the sender's pooled ops with an EIP-7702 authorization delegate elsewhere.
    #[error(
        "sender {sender} has UserOperations in the mempool delegating to {pooled}, not {delegate} (AUTH-040)"
    )]
    DelegateConflict {
        /// The sender.
        sender: Address,
        /// The delegate the pooled ops authorize.
        pooled: Address,
        /// The delegate this op authorizes.
        delegate: Address,
    },
    /// STO-040: the op's sender is a factory or paymaster of a pooled op.
    #[error(
        "The sender address \"{0}\" is used as a different entity in another UserOperation currently in mempool (STO-040)"
    )]
    SenderIsEntity(Address),
    /// STO-040: the op's factory or paymaster is the sender of a pooled op.
    #[error(
        "A {entity} at {address} in this UserOperation is used as a sender entity in another UserOperation currently in mempool (STO-040)"
    )]
    EntityIsSender {
        /// `Factory` or `Paymaster`.
        entity: &'static str,
        /// Its address.
        address: Address,
    },
    /// The pool is full of better-paying ops.
    #[error("mempool full: maxPriorityFeePerGas must exceed {0}")]
    Full(U256),
}

/// The pool.
#[derive(Debug, Default)]
pub struct Mempool {
    config: PoolConfig,
    params: MempoolParams,
    by_hash: HashMap<B256, Arc<PoolEntry>>,
    by_sender_nonce: BTreeMap<(EntryPointVersion, Address, U256), B256>,
}

impl Mempool {
    /// An empty pool under `params`.
    pub fn new(config: PoolConfig, params: MempoolParams) -> Self {
        Self { config, params, ..Self::default() }
    }

    /// Number of ops held.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The op with `hash`.
    pub fn get(&self, hash: &B256) -> Option<Arc<PoolEntry>> {
        self.by_hash.get(hash).cloned()
    }

    /// Adds `entry` under the mempool rules, an unstaked paymaster being allowed
    /// `paymaster_allowance` ops (UREP-020; `same_unstaked_entity_mempool_count` for a new one).
    /// Returns the ops it displaced (a replaced op, an evicted cheapest op), which the caller
    /// forgets too.
    pub fn add(
        &mut self,
        entry: PoolEntry,
        paymaster_allowance: usize,
    ) -> Result<Vec<Arc<PoolEntry>>, PoolError> {
        if self.by_hash.contains_key(&entry.hash) {
            return Err(PoolError::Duplicate(entry.hash));
        }
        let key = (entry.entry_point, entry.op.sender, entry.op.nonce);
        let mut displaced = Vec::new();
        let replaced = self.by_sender_nonce.get(&key).and_then(|h| self.by_hash.get(h)).cloned();
        if let Some(existing) = &replaced {
            let bumped = |fee| self.params.bumped(fee);
            let raises = entry.op.max_fee_per_gas >= bumped(existing.op.max_fee_per_gas)
                && entry.op.max_priority_fee_per_gas
                    >= bumped(existing.op.max_priority_fee_per_gas);
            if !raises {
                return Err(PoolError::ReplacementUnderpriced {
                    existing: existing.hash,
                    percent: self.params.replacement_fee_bump_percent,
                });
            }
        }
        self.check_rules(&entry, replaced.as_ref().map(|r| r.hash), paymaster_allowance)?;
        if replaced.is_none() && self.by_hash.len() >= self.config.max_ops {
            displaced.push(self.evict_for(&entry)?);
        }
        if let Some(existing) = replaced {
            self.remove(&existing.hash);
            displaced.push(existing);
        }
        self.by_sender_nonce.insert(key, entry.hash);
        self.by_hash.insert(entry.hash, Arc::new(entry));
        Ok(displaced)
    }

    /// The mempool rules for `entry` against the other pooled ops of its EntryPoint (leaving out
    /// the op it replaces): STO-040 both ways, AUTH-040, the unstaked sender's and entities'
    /// limits (UREP-010, UREP-020).
    fn check_rules(
        &self,
        entry: &PoolEntry,
        replaced: Option<B256>,
        paymaster_allowance: usize,
    ) -> Result<(), PoolError> {
        let others = || {
            self.by_hash
                .values()
                .filter(|e| e.entry_point == entry.entry_point && Some(e.hash) != replaced)
        };
        let sender = entry.op.sender;
        let entities = [("Factory", entry.factory()), ("Paymaster", entry.op.paymaster)];
        for other in others() {
            if other.factory() == Some(sender) || other.op.paymaster == Some(sender) {
                return Err(PoolError::SenderIsEntity(sender));
            }
            if let Some((entity, _)) = entities.iter().find(|(_, a)| *a == Some(other.op.sender)) {
                return Err(PoolError::EntityIsSender { entity, address: other.op.sender });
            }
        }
        if let Some(delegate) = entry.op.eip7702_auth.as_ref().map(|a| a.address)
            && let Some(pooled) = others()
                .filter(|e| e.op.sender == sender)
                .filter_map(|e| e.op.eip7702_auth.as_ref().map(|a| a.address))
                .find(|pooled| *pooled != delegate)
        {
            return Err(PoolError::DelegateConflict { sender, pooled, delegate });
        }
        let same_sender = self.params.same_sender_mempool_count;
        if !entry.staked.sender && others().filter(|e| e.op.sender == sender).count() >= same_sender
        {
            return Err(PoolError::SenderLimit { sender, allowed: same_sender });
        }
        let factory_allowance = self.params.same_unstaked_entity_mempool_count;
        for (entity, address, staked, allowed) in [
            ("factory", entry.factory(), entry.staked.factory, factory_allowance),
            ("paymaster", entry.op.paymaster, entry.staked.paymaster, paymaster_allowance),
        ] {
            let Some(address) = address else { continue };
            let uses = others()
                .filter(|e| e.factory() == Some(address) || e.op.paymaster == Some(address))
                .count();
            if !staked && uses >= allowed {
                return Err(PoolError::EntityLimit { entity, address, allowed });
            }
        }
        Ok(())
    }

    /// A full pool makes room for `entry` by evicting its cheapest op, if `entry` pays more.
    fn evict_for(&mut self, entry: &PoolEntry) -> Result<Arc<PoolEntry>, PoolError> {
        let cheapest = self
            .by_hash
            .values()
            .min_by_key(|e| (e.priority_fee(), std::cmp::Reverse(e.accepted_at_block)))
            .cloned();
        match cheapest {
            Some(cheapest) if entry.priority_fee() > cheapest.priority_fee() => {
                self.remove(&cheapest.hash);
                Ok(cheapest)
            }
            Some(cheapest) => Err(PoolError::Full(cheapest.priority_fee())),
            None => Err(PoolError::Full(U256::ZERO)),
        }
    }

    /// Removes the op with `hash`.
    pub fn remove(&mut self, hash: &B256) -> Option<Arc<PoolEntry>> {
        let entry = self.by_hash.remove(hash)?;
        self.by_sender_nonce.remove(&(entry.entry_point, entry.op.sender, entry.op.nonce));
        Some(entry)
    }

    /// Ops of `entry_point`, best-paying first at `base_fee`: by effective tip,
    /// `min(maxPriorityFeePerGas, maxFeePerGas - baseFee)` (ties: earliest accepted).
    pub fn best(&self, entry_point: EntryPointVersion, base_fee: u64) -> Vec<Arc<PoolEntry>> {
        let base_fee = U256::from(base_fee);
        let tip = |e: &PoolEntry| {
            e.op.max_priority_fee_per_gas.min(e.op.max_fee_per_gas.saturating_sub(base_fee))
        };
        let mut ops: Vec<_> =
            self.by_hash.values().filter(|e| e.entry_point == entry_point).cloned().collect();
        ops.sort_by(|a, b| {
            tip(b)
                .cmp(&tip(a))
                .then(a.accepted_at_block.cmp(&b.accepted_at_block))
                .then(a.op.nonce.cmp(&b.op.nonce))
        });
        ops
    }

    /// Ops of `entry_point` that reference `address` as sender, factory or paymaster.
    pub fn referencing(&self, entry_point: EntryPointVersion, address: Address) -> Vec<B256> {
        self.by_hash
            .values()
            .filter(|e| e.entry_point == entry_point && e.references(address))
            .map(|e| e.hash)
            .collect()
    }

    /// EREP-010: the most `paymaster` may pay for `entry_point`'s pooled ops (the sum of their
    /// max costs), leaving out the op at `replacing` (`(sender, nonce)`, which a new op replaces).
    pub fn paymaster_commitment(
        &self,
        entry_point: EntryPointVersion,
        paymaster: Address,
        replacing: (Address, U256),
    ) -> U256 {
        self.by_hash
            .values()
            .filter(|e| e.entry_point == entry_point && e.op.paymaster == Some(paymaster))
            .filter(|e| (e.op.sender, e.op.nonce) != replacing)
            .fold(U256::ZERO, |sum, e| sum.saturating_add(e.packed().max_cost()))
    }

    /// Every op.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<PoolEntry>> {
        self.by_hash.values()
    }

    /// Ops whose `validUntil` is before `timestamp`.
    pub fn expired(&self, timestamp: u64) -> Vec<B256> {
        self.by_hash.values().filter(|e| e.valid_until < timestamp).map(|e| e.hash).collect()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.by_hash.clear();
        self.by_sender_nonce.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::SAME_SENDER_MEMPOOL_COUNT;
    use crate::params::SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT;
    use alloy::primitives::Bytes;

    fn entry(sender: u8, nonce: u64, priority: u64) -> PoolEntry {
        let op = UserOperation {
            sender: Address::repeat_byte(sender),
            nonce: U256::from(nonce),
            factory: None,
            factory_data: None,
            call_data: Bytes::new(),
            call_gas_limit: U256::from(10_000),
            verification_gas_limit: U256::from(100_000),
            pre_verification_gas: U256::from(50_000),
            max_fee_per_gas: U256::from(priority * 2),
            max_priority_fee_per_gas: U256::from(priority),
            paymaster: None,
            paymaster_verification_gas_limit: None,
            paymaster_post_op_gas_limit: None,
            paymaster_data: None,
            signature: Bytes::new(),
            eip7702_auth: None,
        };
        let hash = op.pack().map(|p| p.hash(EntryPointVersion::V07, 1, None)).unwrap_or_default();
        PoolEntry {
            hash,
            entry_point: EntryPointVersion::V07,
            op,
            staked: StakedEntities::default(),
            code_hashes: BTreeMap::new(),
            valid_until: u64::MAX,
            accepted_at_block: 1,
        }
    }

    #[test]
    fn duplicates_and_replacements() {
        let mut pool = Mempool::new(PoolConfig::default(), MempoolParams::default());
        let first = entry(1, 0, 100);
        pool.add(first.clone(), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT)
            .map_err(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            pool.add(first.clone(), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::Duplicate(first.hash))
        );
        // +9%: refused; +10% on both: replaces.
        assert!(matches!(
            pool.add(entry(1, 0, 109), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::ReplacementUnderpriced { .. })
        ));
        let displaced = pool
            .add(entry(1, 0, 110), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT)
            .map_err(|e| e.to_string());
        assert_eq!(displaced.map(|d| d.len()), Ok(1));
        assert_eq!(pool.len(), 1);
        assert!(pool.get(&first.hash).is_none());
    }

    #[test]
    fn unstaked_sender_limit() {
        let mut pool = Mempool::new(PoolConfig::default(), MempoolParams::default());
        for nonce in 0..SAME_SENDER_MEMPOOL_COUNT as u64 {
            assert!(pool.add(entry(1, nonce, 10), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        }
        assert_eq!(
            pool.add(entry(1, 99, 10), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::SenderLimit { sender: Address::repeat_byte(1), allowed: 4 })
        );
        let mut staked = entry(1, 99, 10);
        staked.staked.sender = true;
        assert!(
            pool.add(staked, SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok(),
            "a staked sender is not limited"
        );
    }

    #[test]
    fn unstaked_paymaster_limit_and_sto_040() {
        let mut pool = Mempool::new(PoolConfig::default(), MempoolParams::default());
        let paymaster = Address::repeat_byte(0xaa);
        let sponsored = |sender| {
            let mut e = entry(sender, 0, 10);
            e.op.paymaster = Some(paymaster);
            e.hash = B256::repeat_byte(sender);
            e
        };
        for sender in 1..=SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT as u8 {
            assert!(pool.add(sponsored(sender), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        }
        assert!(matches!(
            pool.add(sponsored(50), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::EntityLimit { entity: "paymaster", .. })
        ));
        // UREP-020: a paymaster with a record of inclusion is allowed more.
        let allowance = SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT + 1;
        assert!(pool.add(sponsored(50), allowance).is_ok());
        assert_eq!(pool.referencing(EntryPointVersion::V07, paymaster).len(), allowance);
        // The paymaster cannot also be a sender (STO-040).
        let mut as_sender = entry(0xaa, 0, 10);
        as_sender.hash = B256::repeat_byte(0xaa);
        assert_eq!(
            pool.add(as_sender, SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::SenderIsEntity(paymaster))
        );
    }

    #[test]
    fn one_delegate_per_sender_auth_040() {
        use alloy::eips::eip7702::{Authorization, SignedAuthorization};
        let authorized = |nonce: u64, delegate: u8| {
            let mut e = entry(1, nonce, 10);
            let auth = Authorization {
                chain_id: U256::from(1),
                address: Address::repeat_byte(delegate),
                nonce: 0,
            };
            e.op.eip7702_auth =
                Some(SignedAuthorization::new_unchecked(auth, 0, U256::from(1), U256::from(1)));
            e.hash = B256::with_last_byte(nonce as u8 + 1);
            e
        };
        let mut pool = Mempool::new(PoolConfig::default(), MempoolParams::default());
        assert!(pool.add(authorized(0, 0xd1), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        assert!(pool.add(authorized(1, 0xd1), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        assert_eq!(
            pool.add(authorized(2, 0xd2), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::DelegateConflict {
                sender: Address::repeat_byte(1),
                pooled: Address::repeat_byte(0xd1),
                delegate: Address::repeat_byte(0xd2),
            })
        );
    }

    #[test]
    fn full_pool_evicts_the_cheapest() {
        let mut pool = Mempool::new(PoolConfig { max_ops: 2 }, MempoolParams::default());
        assert!(pool.add(entry(1, 0, 10), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        assert!(pool.add(entry(2, 0, 20), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        assert_eq!(
            pool.add(entry(3, 0, 5), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT),
            Err(PoolError::Full(U256::from(10)))
        );
        let displaced = pool
            .add(entry(3, 0, 30), SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT)
            .map_err(|e| e.to_string());
        assert_eq!(displaced.map(|d| d[0].op.sender), Ok(Address::repeat_byte(1)));
        let best: Vec<_> =
            pool.best(EntryPointVersion::V07, 0).iter().map(|e| e.op.sender).collect();
        assert_eq!(best, vec![Address::repeat_byte(3), Address::repeat_byte(2)]);
    }

    #[test]
    fn best_orders_by_effective_tip_at_the_base_fee() {
        let mut pool = Mempool::new(PoolConfig::default(), MempoolParams::default());
        let mut modest = entry(1, 0, 10);
        modest.op.max_fee_per_gas = U256::from(100);
        let mut capped = entry(2, 0, 50);
        capped.op.max_fee_per_gas = U256::from(55);
        for e in [modest, capped] {
            assert!(pool.add(e, SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT).is_ok());
        }
        let order = |base_fee| -> Vec<Address> {
            pool.best(EntryPointVersion::V07, base_fee).iter().map(|e| e.op.sender).collect()
        };
        assert_eq!(order(0), vec![Address::repeat_byte(2), Address::repeat_byte(1)]);
        // At base fee 50 the capped op tips 5, the modest one still 10.
        assert_eq!(order(50), vec![Address::repeat_byte(1), Address::repeat_byte(2)]);
    }
}
