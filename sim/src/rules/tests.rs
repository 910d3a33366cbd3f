//! Unit tests of the parent module.

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
        // OP-052/053 from a utility contract inside the sender's frame, as the reference
        // bundler allows; from the paymaster's frame, not.
        (call(Address::repeat_byte(0x71), None, true), Entity::Account, vec![]),
        (call(Address::repeat_byte(0x71), Some(DEPOSIT_TO), false), Entity::Account, vec![]),
        (call(Address::repeat_byte(0x71), None, true), Entity::Paymaster, vec!["OP-054"]),
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
    let create2 = |created| Creation { creator: factory, create2: true, created: Some(created) };
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
    // EREP-060 covers the factory and the sender themselves, not a utility contract they
    // call; OP-032 lets the sender CREATE in the factory's frame (its constructor) too.
    let utility = Address::repeat_byte(0xd0);
    let staked = Stakes { factory: true, ..Default::default() };
    for (creator, create2, entity, stakes, expected) in [
        (utility, false, Entity::Account, staked, vec!["OP-011"]),
        (utility, true, Entity::Account, staked, vec!["OP-031"]),
        (a.sender, true, Entity::Account, staked, vec![]),
        (a.sender, false, Entity::Factory, Stakes::default(), vec![]),
        (a.sender, true, Entity::Account, Stakes::default(), vec!["OP-031"]),
    ] {
        let seen = EntityTrace {
            creations: vec![Creation { creator, create2, created: None }],
            ..Default::default()
        };
        assert_eq!(
            check(entity, seen, stakes, Default::default()),
            expected,
            "{creator} {create2}"
        );
    }
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

/// A slot of the sender's in some token's mapping (`keccak(sender ‖ 0)`), and a trace that
/// saw its preimage.
fn sender_slot_trace(a: &OpAddresses) -> (U256, ValidationTrace) {
    let sender_slot = U256::from_be_bytes(
        keccak256([[0u8; 12].as_slice(), a.sender.as_slice(), &[0u8; 32]].concat()).0,
    );
    let mut trace = ValidationTrace::default();
    trace.keccak_preimages.insert(sender_slot.into(), a.sender);
    (sender_slot, trace)
}

#[test]
fn storage_rules() {
    let a = addresses();
    let token = Address::repeat_byte(0x70);
    let (sender_slot, trace) = sender_slot_trace(&a);
    let access = |contract, slot, write| StorageAccess { contract, slot, write, transient: false };
    let paymaster = a.paymaster.unwrap_or_default();
    for (entity, made, stakes, expected) in [
        (Entity::Account, access(a.sender, U256::from(3), true), Stakes::default(), vec![]),
        (Entity::Account, access(a.entry_point, U256::from(3), true), Stakes::default(), vec![]),
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
        (Entity::Account, access(token, U256::from(99), false), Stakes::default(), vec!["STO-021"]),
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

/// The messages clients match on: the reference bundler's wording, one row per rule.
#[test]
fn messages_are_the_reference_wording() {
    let a = addresses();
    let c = Address::repeat_byte(1);
    let paymaster = a.paymaster.unwrap_or_default();
    let opcodes = |op| EntityTrace { opcodes: [(op, c)].into(), ..Default::default() };
    let storage = |contract, write| EntityTrace {
        storage: [StorageAccess { contract, slot: U256::from(7), write, transient: false }].into(),
        ..Default::default()
    };
    let token = Address::repeat_byte(0x70);
    let unstaked = Stakes::default();
    let staked_paymaster = Stakes { paymaster: true, ..Default::default() };
    for (entity, seen, stakes, rule, message) in [
        (
            Entity::Account,
            opcodes(opcode::TIMESTAMP),
            unstaked,
            "OP-011",
            "account uses banned opcode: TIMESTAMP",
        ),
        (
            Entity::Paymaster,
            opcodes(opcode::GAS),
            unstaked,
            "OP-012",
            "paymaster uses banned opcode: GAS",
        ),
        (
            Entity::Factory,
            opcodes(opcode::SELFBALANCE),
            unstaked,
            "OP-080",
            "unstaked factory uses banned opcode: SELFBALANCE",
        ),
        (Entity::Account, opcodes(0x0c), unstaked, "OP-013", "account uses banned opcode: 0x0c"),
        (
            Entity::Account,
            EntityTrace { out_of_gas: true, ..Default::default() },
            unstaked,
            "OP-020",
            "account internally reverts on oog",
        ),
        (
            Entity::Paymaster,
            storage(paymaster, false),
            unstaked,
            "STO-031",
            "unstaked paymaster accessed paymaster slot 0x7",
        ),
        (
            Entity::Account,
            storage(token, false),
            unstaked,
            "STO-021",
            "unstaked account accessed 0x7070707070707070707070707070707070707070 slot 0x7",
        ),
        (
            Entity::Account,
            storage(token, true),
            unstaked,
            "STO-021",
            "account has forbidden write to 0x7070707070707070707070707070707070707070 slot 0x7",
        ),
        (
            Entity::Paymaster,
            storage(token, true),
            staked_paymaster,
            "STO-033",
            "paymaster has forbidden write to 0x7070707070707070707070707070707070707070 slot 0x7",
        ),
    ] {
        let mut trace = ValidationTrace::default();
        trace.entities.insert(entity, seen);
        let found = ValidationRules::default().check(&a, &trace, &stakes, 0);
        let [violation] = found.as_slice() else { panic!("{message}: {found:?}") };
        assert_eq!((violation.rule.id(), violation.to_string().as_str()), (rule, message));
    }
    let found = ValidationRules::default().check(&a, &ValidationTrace::default(), &unstaked, 32);
    assert!(found[0].to_string().starts_with("unstaked paymaster returned a context"), "EREP-050");
}

/// STO-033 beats STO-022: a staked paymaster may read a sender-associated slot while an
/// unstaked factory deploys the sender; the unstaked paymaster may not.
#[test]
fn staked_entity_reads_sender_slots_during_deployment() {
    let a = addresses();
    let token = Address::repeat_byte(0x70);
    let (sender_slot, trace) = sender_slot_trace(&a);
    let read = StorageAccess { contract: token, slot: sender_slot, write: false, transient: false };
    let seen = EntityTrace { storage: [read].into(), ..Default::default() };
    let staked_paymaster = Stakes { paymaster: true, ..Default::default() };
    assert!(check(Entity::Paymaster, seen.clone(), staked_paymaster, trace.clone()).is_empty());
    assert_eq!(check(Entity::Paymaster, seen, Stakes::default(), trace), vec!["STO-022"]);
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
