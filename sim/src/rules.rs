//! The ERC-7562 validation rules as a pure function of what the tracer saw
//! ([`ValidationTrace`]) and which entities are staked. Every violation is reported with its
//! rule id, entity and address — not only the first.

use alloy::primitives::{Address, U256, address};
use revm::bytecode::opcode;

use crate::inspector::{Entity, EntityTrace, OpAddresses, StorageAccess, ValidationTrace};

/// `depositTo(address)`.
const DEPOSIT_TO: [u8; 4] = [0xb7, 0x60, 0xfa, 0xf9];
/// `incrementNonce(uint192)`.
const INCREMENT_NONCE: [u8; 4] = [0x0b, 0xd2, 0x8e, 0x3b];
/// EIP-7951 P256VERIFY.
const P256_VERIFY: Address = address!("0x0000000000000000000000000000000000000100");
/// Associated slots reach `keccak(A || x) + n` for `n` up to this (ERC-7562 definitions).
const ASSOCIATED_OFFSET: u64 = 128;

/// The rules settled enforces, by their ERC-7562 id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Blocked environment opcode (incl. CREATE outside the allowed cases).
    Op011,
    /// `GAS` not followed by a `*CALL`.
    Op012,
    /// Unassigned opcode.
    Op013,
    /// Out of gas inside validation.
    Op020,
    /// CREATE2 other than the one deployment of the sender.
    Op031,
    /// Access to an address without code.
    Op041,
    /// Access to the EntryPoint beyond OP-051/052/053/055.
    Op054,
    /// CALL with value.
    Op061,
    /// Call to an unknown precompile.
    Op062,
    /// BALANCE/SELFBALANCE from an unstaked entity.
    Op080,
    /// Unassociated storage of another contract.
    Sto021,
    /// Sender-associated storage while deploying with an unstaked factory.
    Sto022,
    /// An unstaked entity's own storage.
    Sto031,
    /// A staked entity writing storage not associated with it or the sender.
    Sto033,
    /// An unstaked paymaster returned a context.
    Erep050,
    /// A factory or paymaster is an EIP-7702 delegated account.
    Auth020,
    /// An EIP-7702 delegated account other than the sender was accessed.
    Auth030,
}

impl Rule {
    /// The ERC-7562 id, e.g. `OP-011`.
    pub const fn id(self) -> &'static str {
        match self {
            Self::Op011 => "OP-011",
            Self::Op012 => "OP-012",
            Self::Op013 => "OP-013",
            Self::Op020 => "OP-020",
            Self::Op031 => "OP-031",
            Self::Op041 => "OP-041",
            Self::Op054 => "OP-054",
            Self::Op061 => "OP-061",
            Self::Op062 => "OP-062",
            Self::Op080 => "OP-080",
            Self::Sto021 => "STO-021",
            Self::Sto022 => "STO-022",
            Self::Sto031 => "STO-031",
            Self::Sto033 => "STO-033",
            Self::Erep050 => "EREP-050",
            Self::Auth020 => "AUTH-020",
            Self::Auth030 => "AUTH-030",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleViolation {
    /// Which rule.
    pub rule: Rule,
    /// In whose validation frame.
    pub entity: Entity,
    /// The contract involved (the one that ran the opcode, whose storage, or the target).
    pub address: Address,
    /// What happened.
    pub detail: String,
}

impl std::fmt::Display for RuleViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({}): {}", self.rule, self.entity, self.address, self.detail)
    }
}

/// Which entities count as staked (stake ≥ `MIN_STAKE_VALUE`, delay ≥ `MIN_UNSTAKE_DELAY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stakes {
    /// The factory.
    pub factory: bool,
    /// The sender.
    pub account: bool,
    /// The paymaster.
    pub paymaster: bool,
}

impl Stakes {
    fn of(&self, entity: Entity) -> bool {
        match entity {
            Entity::Factory => self.factory,
            Entity::Account => self.account,
            Entity::Paymaster => self.paymaster,
        }
    }
}

/// The chain's staking thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationRules {
    /// `MIN_STAKE_VALUE` in wei (chain-specific; ERC-7562 suggests ~$1000).
    pub min_stake: U256,
    /// `MIN_UNSTAKE_DELAY` in seconds.
    pub min_unstake_delay: u64,
}

impl Default for ValidationRules {
    fn default() -> Self {
        Self { min_stake: U256::from(10u128.pow(18)), min_unstake_delay: 86_400 }
    }
}

impl ValidationRules {
    /// Is a stake of `stake` wei with `delay` seconds enough?
    pub fn is_staked(&self, stake: U256, delay: U256) -> bool {
        stake >= self.min_stake && delay >= U256::from(self.min_unstake_delay)
    }

    /// Every violation in `trace`. `paymaster_context_len` is the context the paymaster returned.
    pub fn check(
        &self,
        addresses: &OpAddresses,
        trace: &ValidationTrace,
        stakes: &Stakes,
        paymaster_context_len: usize,
    ) -> Vec<RuleViolation> {
        let mut out = Vec::new();
        for (&entity, seen) in &trace.entities {
            let mut check = EntityCheck { addresses, trace, stakes, entity, out: &mut out };
            check.opcodes(seen);
            check.creations(seen);
            check.ext_code(seen);
            check.calls(seen);
            check.storage(seen);
            if seen.out_of_gas {
                check.report(Rule::Op020, check.own_address(), "a validation frame ran out of gas");
            }
        }
        if let Some(paymaster) = addresses.paymaster
            && paymaster_context_len > 0
            && !stakes.paymaster
        {
            out.push(RuleViolation {
                rule: Rule::Erep050,
                entity: Entity::Paymaster,
                address: paymaster,
                detail: format!(
                    "unstaked paymaster returned a {paymaster_context_len}-byte context"
                ),
            });
        }
        out
    }
}

struct EntityCheck<'a> {
    addresses: &'a OpAddresses,
    trace: &'a ValidationTrace,
    stakes: &'a Stakes,
    entity: Entity,
    out: &'a mut Vec<RuleViolation>,
}

impl EntityCheck<'_> {
    fn report(&mut self, rule: Rule, address: Address, detail: impl Into<String>) {
        self.out.push(RuleViolation { rule, entity: self.entity, address, detail: detail.into() });
    }

    fn own_address(&self) -> Address {
        self.addresses.of(self.entity).unwrap_or_default()
    }

    fn staked(&self) -> bool {
        self.stakes.of(self.entity)
    }

    fn opcodes(&mut self, seen: &EntityTrace) {
        for &(op, contract) in &seen.opcodes {
            let name = revm::bytecode::opcode::OpCode::new(op).map_or("unassigned", |o| o.as_str());
            match op {
                opcode::GAS => self.report(Rule::Op012, contract, "GAS not followed by a *CALL"),
                opcode::BALANCE | opcode::SELFBALANCE if !self.staked() => {
                    self.report(Rule::Op080, contract, format!("{name} by an unstaked entity"));
                }
                opcode::BALANCE | opcode::SELFBALANCE => {}
                _ if revm::bytecode::opcode::OpCode::new(op).is_none() => {
                    self.report(Rule::Op013, contract, format!("unassigned opcode 0x{op:02x}"));
                }
                _ => self.report(Rule::Op011, contract, format!("blocked opcode {name}")),
            }
        }
    }

    fn creations(&mut self, seen: &EntityTrace) {
        let sender = self.addresses.sender;
        let staked_factory_phase =
            self.stakes.factory && matches!(self.entity, Entity::Factory | Entity::Account);
        let mut create2_seen = 0;
        for creation in &seen.creations {
            if creation.create2 {
                create2_seen += 1;
                let deploys_sender = creation.created == Some(sender);
                let allowed =
                    (self.entity == Entity::Factory && create2_seen == 1 && deploys_sender)
                        || staked_factory_phase; // EREP-060
                if !allowed {
                    self.report(
                        Rule::Op031,
                        creation.creator,
                        "CREATE2 other than the sender's one deployment",
                    );
                }
            } else {
                let op_032 = self.entity == Entity::Account
                    && creation.creator == sender
                    && self.addresses.factory.is_some();
                if !(op_032 || staked_factory_phase) {
                    self.report(Rule::Op011, creation.creator, "blocked opcode CREATE");
                }
            }
        }
    }

    fn ext_code(&mut self, seen: &EntityTrace) {
        for access in &seen.ext_code {
            if access.target_delegated && access.target != self.addresses.sender {
                self.report(
                    Rule::Auth030,
                    access.target,
                    "EXTCODE* on a delegated EOA other than the sender",
                );
            }
            let name = revm::bytecode::opcode::OpCode::new(access.opcode)
                .map_or("EXTCODE*", |o| o.as_str());
            if access.target == self.addresses.entry_point {
                // OP-051: `EXTCODESIZE ISZERO` on the EntryPoint is the one allowed look.
                if !(access.opcode == opcode::EXTCODESIZE && access.followed_by_iszero) {
                    self.report(Rule::Op054, access.target, format!("{name} on the EntryPoint"));
                }
            } else if !access.target_has_code && access.target != self.addresses.sender {
                self.report(
                    Rule::Op041,
                    access.target,
                    format!("{name} on an address without code"),
                );
            }
        }
    }

    fn calls(&mut self, seen: &EntityTrace) {
        let a = self.addresses;
        for call in &seen.calls {
            if call.target_delegated && call.target != a.sender {
                self.report(
                    Rule::Auth030,
                    call.target,
                    "call to a delegated EOA other than the sender",
                );
            }
            if call.target == a.entry_point {
                let from_sender = call.caller == a.sender;
                let deposit_to_sender = call.selector == Some(DEPOSIT_TO)
                    && call.first_argument == Some(a.sender.into_word());
                let allowed = (deposit_to_sender
                    && (from_sender || Some(call.caller) == a.factory)) // OP-052
                    || (call.empty_calldata && from_sender) // OP-053
                    || (call.selector == Some(INCREMENT_NONCE) && from_sender); // OP-055
                if !allowed {
                    self.report(Rule::Op054, call.target, "call to the EntryPoint");
                }
                continue;
            }
            if call.value > U256::ZERO {
                self.report(Rule::Op061, call.target, format!("CALL with value {}", call.value));
            }
            let numeric = U256::from_be_slice(call.target.as_slice());
            let known_precompile = (numeric >= U256::from(1) && numeric <= U256::from(0x11))
                || call.target == P256_VERIFY;
            if known_precompile {
                continue;
            }
            if numeric <= U256::from(0xffff) && !call.target_has_code {
                self.report(Rule::Op062, call.target, "call to an unknown precompile");
            } else if !call.target_has_code && call.target != a.sender {
                self.report(Rule::Op041, call.target, "call to an address without code");
            }
        }
    }

    fn storage(&mut self, seen: &EntityTrace) {
        let a = self.addresses;
        let own = a.of(self.entity);
        let has_init_code = a.factory.is_some();
        for access in &seen.storage {
            let StorageAccess { contract, slot, write, .. } = *access;
            if contract == a.sender {
                continue; // STO-010
            }
            if contract == a.entry_point {
                // Reaching the EntryPoint at all is judged by OP-051..055 (calls and EXTCODE*);
                // what an allowed call (depositTo, incrementNonce) then touches is its business.
                continue;
            }
            if self.created_here(contract) {
                // A contract created in this validation had no state anyone else could share or
                // invalidate; creating it is judged by OP-011/031/032 and EREP-060.
                continue;
            }
            if Some(contract) == own {
                if !self.staked() {
                    self.report(
                        Rule::Sto031,
                        contract,
                        format!("own storage slot {slot:#x} of an unstaked {}", self.entity),
                    );
                }
                continue;
            }
            if self.associated(slot, a.sender) {
                // STO-021 (the account exists) / STO-022 (deployed by a staked factory).
                if has_init_code && !self.stakes.factory {
                    self.report(Rule::Sto022, contract, format!("sender-associated slot {slot:#x} while an unstaked factory deploys the sender"));
                }
                continue;
            }
            if self.staked() {
                let entity_associated = own.is_some_and(|e| self.associated(slot, e));
                if !entity_associated && write {
                    self.report(
                        Rule::Sto033,
                        contract,
                        format!("write to unassociated slot {slot:#x}"),
                    );
                }
                continue; // STO-032 / STO-033 read-only
            }
            self.report(
                Rule::Sto021,
                contract,
                format!("unassociated slot {slot:#x} of another contract"),
            );
        }
    }

    /// Was `contract` created during this validation (by any entity)?
    fn created_here(&self, contract: Address) -> bool {
        self.trace
            .entities
            .values()
            .flat_map(|seen| &seen.creations)
            .any(|creation| creation.created == Some(contract))
    }

    /// Is `slot` associated with `address`: equal to it, or `keccak(address || x) + n`, n ≤ 128?
    fn associated(&self, slot: U256, address: Address) -> bool {
        if slot == U256::from_be_slice(address.as_slice()) {
            return true;
        }
        self.trace.keccak_preimages.iter().any(|(hash, preimage)| {
            if *preimage != address {
                return false;
            }
            let base = U256::from_be_bytes(hash.0);
            slot >= base && slot - base <= U256::from(ASSOCIATED_OFFSET)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::{CallMade, Creation};
    use alloy::primitives::keccak256;

    fn addresses() -> OpAddresses {
        OpAddresses {
            entry_point: Address::repeat_byte(0xee),
            sender_creator: Address::repeat_byte(0xec),
            sender: Address::repeat_byte(0x5e),
            factory: Some(Address::repeat_byte(0xfa)),
            paymaster: Some(Address::repeat_byte(0xaa)),
        }
    }

    fn check(
        entity: Entity,
        seen: EntityTrace,
        stakes: Stakes,
        trace: ValidationTrace,
    ) -> Vec<&'static str> {
        let mut trace = trace;
        trace.entities.insert(entity, seen);
        ValidationRules::default()
            .check(&addresses(), &trace, &stakes, 0)
            .into_iter()
            .map(|v| v.rule.id())
            .collect()
    }

    #[test]
    fn opcode_rules_table() {
        let c = Address::repeat_byte(1);
        for (op, stakes, expected) in [
            (opcode::TIMESTAMP, Stakes::default(), vec!["OP-011"]),
            (opcode::ORIGIN, Stakes::default(), vec!["OP-011"]),
            (opcode::GAS, Stakes::default(), vec!["OP-012"]),
            (0x0c, Stakes::default(), vec!["OP-013"]),
            (opcode::SELFBALANCE, Stakes::default(), vec!["OP-080"]),
            (opcode::BALANCE, Stakes { account: true, ..Default::default() }, vec![]),
        ] {
            let seen = EntityTrace { opcodes: [(op, c)].into(), ..Default::default() };
            assert_eq!(
                check(Entity::Account, seen, stakes, Default::default()),
                expected,
                "opcode 0x{op:02x}"
            );
        }
    }

    #[test]
    fn entry_point_calls() {
        let a = addresses();
        let call = |caller, selector: Option<[u8; 4]>, empty| CallMade {
            caller,
            target: a.entry_point,
            value: U256::from(5),
            selector,
            empty_calldata: empty,
            first_argument: (!empty).then(|| a.sender.into_word()),
            target_has_code: true,
            target_delegated: false,
        };
        let deposit_for_other = CallMade {
            first_argument: Some(Address::repeat_byte(0x99).into_word()),
            ..call(a.sender, Some(DEPOSIT_TO), false)
        };
        for (made, entity, expected) in [
            (call(a.sender, Some(DEPOSIT_TO), false), Entity::Account, vec![]),
            (call(a.factory.unwrap_or_default(), Some(DEPOSIT_TO), false), Entity::Factory, vec![]),
            (call(a.sender, None, true), Entity::Account, vec![]),
            (call(a.sender, Some(INCREMENT_NONCE), false), Entity::Account, vec![]),
            (
                call(a.paymaster.unwrap_or_default(), Some(DEPOSIT_TO), false),
                Entity::Paymaster,
                vec!["OP-054"],
            ),
            (call(a.sender, Some([1, 2, 3, 4]), false), Entity::Account, vec!["OP-054"]),
            // OP-052 allows depositTo(sender) only.
            (deposit_for_other, Entity::Account, vec!["OP-054"]),
        ] {
            let seen = EntityTrace { calls: [made.clone()].into(), ..Default::default() };
            assert_eq!(
                check(entity, seen, Stakes::default(), Default::default()),
                expected,
                "{made:?}"
            );
        }
    }

    #[test]
    fn value_codeless_and_precompile_calls() {
        let call = |target, value: u64, code| CallMade {
            caller: addresses().sender,
            target,
            value: U256::from(value),
            selector: None,
            empty_calldata: true,
            first_argument: None,
            target_has_code: code,
            target_delegated: false,
        };
        for (made, expected) in [
            (call(Address::repeat_byte(7), 1, true), vec!["OP-061"]),
            (call(Address::repeat_byte(7), 0, false), vec!["OP-041"]),
            (call(Address::with_last_byte(1), 0, false), vec![]),
            (call(P256_VERIFY, 0, false), vec![]),
            (call(Address::with_last_byte(0x42), 0, false), vec!["OP-062"]),
            // AUTH-030: a delegated EOA may be called only when it is the sender.
            (
                CallMade { target_delegated: true, ..call(Address::repeat_byte(8), 0, true) },
                vec!["AUTH-030"],
            ),
            (CallMade { target_delegated: true, ..call(addresses().sender, 0, true) }, vec![]),
        ] {
            let seen = EntityTrace { calls: [made.clone()].into(), ..Default::default() };
            assert_eq!(
                check(Entity::Account, seen, Stakes::default(), Default::default()),
                expected,
                "{made:?}"
            );
        }
    }

    #[test]
    fn creation_rules() {
        let a = addresses();
        let factory = a.factory.unwrap_or_default();
        let create2 =
            |created| Creation { creator: factory, create2: true, created: Some(created) };
        let one = EntityTrace { creations: vec![create2(a.sender)], ..Default::default() };
        assert!(check(Entity::Factory, one, Stakes::default(), Default::default()).is_empty());
        let two = EntityTrace {
            creations: vec![create2(a.sender), create2(Address::repeat_byte(3))],
            ..Default::default()
        };
        assert_eq!(
            check(Entity::Factory, two.clone(), Stakes::default(), Default::default()),
            vec!["OP-031"]
        );
        assert!(
            check(
                Entity::Factory,
                two,
                Stakes { factory: true, ..Default::default() },
                Default::default()
            )
            .is_empty(),
            "EREP-060"
        );
        let sender_create = EntityTrace {
            creations: vec![Creation {
                creator: a.sender,
                create2: false,
                created: Some(Address::repeat_byte(9)),
            }],
            ..Default::default()
        };
        assert!(
            check(Entity::Account, sender_create, Stakes::default(), Default::default()).is_empty(),
            "OP-032"
        );
        let paymaster_create = EntityTrace {
            creations: vec![Creation {
                creator: a.paymaster.unwrap_or_default(),
                create2: false,
                created: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            check(Entity::Paymaster, paymaster_create, Stakes::default(), Default::default()),
            vec!["OP-011"]
        );
    }

    #[test]
    fn storage_rules() {
        let a = addresses();
        let token = Address::repeat_byte(0x70);
        let sender_slot = U256::from_be_bytes(
            keccak256([[0u8; 12].as_slice(), a.sender.as_slice(), &[0u8; 32]].concat()).0,
        );
        let mut trace = ValidationTrace::default();
        trace.keccak_preimages.insert(sender_slot.into(), a.sender);
        let access =
            |contract, slot, write| StorageAccess { contract, slot, write, transient: false };
        let paymaster = a.paymaster.unwrap_or_default();
        for (entity, made, stakes, expected) in [
            (Entity::Account, access(a.sender, U256::from(3), true), Stakes::default(), vec![]),
            (
                Entity::Account,
                access(a.entry_point, U256::from(3), true),
                Stakes::default(),
                vec![],
            ),
            (
                Entity::Paymaster,
                access(paymaster, U256::from(3), false),
                Stakes::default(),
                vec!["STO-031"],
            ),
            (
                Entity::Paymaster,
                access(paymaster, U256::from(3), true),
                Stakes { paymaster: true, ..Default::default() },
                vec![],
            ),
            (
                Entity::Account,
                access(token, sender_slot + U256::from(1), false),
                Stakes::default(),
                vec!["STO-022"],
            ),
            (
                Entity::Account,
                access(token, sender_slot, false),
                Stakes { factory: true, ..Default::default() },
                vec![],
            ),
            (
                Entity::Account,
                access(token, U256::from(99), false),
                Stakes::default(),
                vec!["STO-021"],
            ),
            (
                Entity::Paymaster,
                access(token, U256::from(99), false),
                Stakes { paymaster: true, ..Default::default() },
                vec![],
            ),
            (
                Entity::Paymaster,
                access(token, U256::from(99), true),
                Stakes { paymaster: true, ..Default::default() },
                vec!["STO-033"],
            ),
        ] {
            let seen = EntityTrace { storage: [made].into(), ..Default::default() };
            assert_eq!(
                check(entity, seen, stakes, trace.clone()),
                expected,
                "{entity} {made:?} {stakes:?}"
            );
        }
    }

    /// Nested mappings, as ERC-7562 defines association (`keccak(A || x) + n`): in
    /// `m[key1][key2]` = `keccak(key2 || keccak(key1 || p))` the slot is associated with `key2`.
    /// So `allowance[owner][sender]` is the sender's; `allowance[sender][spender]` is not.
    #[test]
    fn nested_mapping_association() {
        let a = addresses();
        let token = Address::repeat_byte(0x70);
        let word = |address: Address| address.into_word().0;
        let owner = Address::repeat_byte(0x0e);
        let mut trace = ValidationTrace::default();
        let mut slot_of = |outer: Address, inner: Address| {
            let inner_hash = keccak256([word(inner).as_slice(), &[0u8; 32]].concat());
            trace.keccak_preimages.insert(inner_hash, inner);
            let outer_hash = keccak256([word(outer).as_slice(), inner_hash.as_slice()].concat());
            trace.keccak_preimages.insert(outer_hash, outer);
            U256::from_be_bytes(outer_hash.0)
        };
        let sender_last = slot_of(a.sender, owner); // allowance[owner][sender]
        let sender_first = slot_of(Address::repeat_byte(0x5b), a.sender); // allowance[sender][x]
        let staked_factory = Stakes { factory: true, ..Default::default() };
        for (slot, expected) in [(sender_last, vec![]), (sender_first, vec!["STO-021"])] {
            let access = StorageAccess { contract: token, slot, write: false, transient: false };
            let seen = EntityTrace { storage: [access].into(), ..Default::default() };
            assert_eq!(check(Entity::Account, seen, staked_factory, trace.clone()), expected);
        }
    }

    /// Storage of a contract created during this validation is no one else's shared state.
    #[test]
    fn storage_of_contracts_created_here_is_exempt() {
        let a = addresses();
        let created = Address::repeat_byte(0xc4);
        let mut trace = ValidationTrace::default();
        trace.entities.insert(
            Entity::Factory,
            EntityTrace {
                creations: vec![Creation {
                    creator: a.factory.unwrap_or_default(),
                    create2: true,
                    created: Some(created),
                }],
                ..Default::default()
            },
        );
        let write =
            StorageAccess { contract: created, slot: U256::ZERO, write: true, transient: false };
        let seen = EntityTrace { storage: [write].into(), ..Default::default() };
        // A staked factory may create it (EREP-060); the account then writes its storage.
        let staked = Stakes { factory: true, ..Default::default() };
        assert!(check(Entity::Account, seen.clone(), staked, trace).is_empty());
        // The same write to a contract that existed before is STO-021.
        assert_eq!(check(Entity::Account, seen, staked, Default::default()), vec!["STO-021"]);
    }

    #[test]
    fn every_violation_is_reported() {
        let c = Address::repeat_byte(1);
        let seen = EntityTrace {
            opcodes: [(opcode::TIMESTAMP, c), (opcode::NUMBER, c)].into(),
            out_of_gas: true,
            ..Default::default()
        };
        assert_eq!(
            check(Entity::Account, seen, Stakes::default(), Default::default()),
            vec!["OP-011", "OP-011", "OP-020"]
        );
    }
}
