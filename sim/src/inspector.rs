//! The ERC-7562 tracer, as a revm `Inspector`: it attributes every step of a `simulateValidation`
//! run to the entity whose validation frame it is in (factory, account, paymaster) and records
//! what the rules need — restricted opcodes, storage slots, calls, creations, out-of-gas, code
//! hashes and keccak preimages. It judges nothing: [`crate::rules`] does, once stakes are known.
//!
//! It never loads state the EVM has not loaded itself (that would warm accounts and change gas):
//! code presence is read after the opcode or call that loaded it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use crate::evm::Deadline;
use alloy::primitives::{Address, B256, U256, keccak256};
use revm::{
    Inspector,
    bytecode::opcode,
    context_interface::{ContextTr, JournalTr},
    interpreter::{
        CallInputs, CallOutcome, CreateInputs, CreateOutcome, InstructionResult, Interpreter,
        interpreter::EthInterpreter,
        interpreter_types::{InputsTr, Jumps, MemoryTr},
    },
};

/// The entities of one UserOperation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// The factory (initCode), during the sender's deployment.
    Factory,
    /// The sender, during `validateUserOp`.
    Account,
    /// The paymaster, during `validatePaymasterUserOp`.
    Paymaster,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Factory => "factory",
            Self::Account => "account",
            Self::Paymaster => "paymaster",
        })
    }
}

/// Addresses that define the validation frames of one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpAddresses {
    /// The EntryPoint.
    pub entry_point: Address,
    /// The EntryPoint's SenderCreator (it calls the factory).
    pub sender_creator: Address,
    /// The op's sender.
    pub sender: Address,
    /// The factory, if the op has initCode.
    pub factory: Option<Address>,
    /// The paymaster, if any.
    pub paymaster: Option<Address>,
}

impl OpAddresses {
    /// The address of `entity`.
    pub fn of(&self, entity: Entity) -> Option<Address> {
        match entity {
            Entity::Factory => self.factory,
            Entity::Account => Some(self.sender),
            Entity::Paymaster => self.paymaster,
        }
    }

    /// Is `address` one of the op's entities?
    pub fn is_entity(&self, address: Address) -> bool {
        address == self.sender || Some(address) == self.factory || Some(address) == self.paymaster
    }
}

/// A storage access (SLOAD/SSTORE, or TLOAD/TSTORE per OP-070).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageAccess {
    /// Whose storage.
    pub contract: Address,
    /// The slot.
    pub slot: U256,
    /// SSTORE/TSTORE.
    pub write: bool,
    /// TLOAD/TSTORE.
    pub transient: bool,
}

/// A `*CALL` made inside a validation frame.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CallMade {
    /// The calling contract.
    pub caller: Address,
    /// The called code's address.
    pub target: Address,
    /// Value sent.
    pub value: U256,
    /// First four bytes of calldata (None: fewer than four).
    pub selector: Option<[u8; 4]>,
    /// Whether the calldata was empty (a fallback call).
    pub empty_calldata: bool,
    /// The first argument word after the selector, if any (OP-052: `depositTo(sender)`).
    pub first_argument: Option<B256>,
    /// Whether the target had code when called.
    pub target_has_code: bool,
    /// Whether the target is an EIP-7702 delegated account (AUTH-030).
    pub target_delegated: bool,
}

/// An `EXTCODE*` inside a validation frame.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExtCodeAccess {
    /// The opcode.
    pub opcode: u8,
    /// The address inspected.
    pub target: Address,
    /// Whether it had code.
    pub target_has_code: bool,
    /// Whether it is an EIP-7702 delegated account (AUTH-030).
    pub target_delegated: bool,
    /// Whether the next opcode was `ISZERO` (the OP-051 pattern).
    pub followed_by_iszero: bool,
}

/// A contract creation inside a validation frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creation {
    /// The creating contract.
    pub creator: Address,
    /// CREATE2 (else CREATE).
    pub create2: bool,
    /// The address created (None: the creation failed).
    pub created: Option<Address>,
}

/// Everything one entity did during validation. Sets, not logs: a loop repeating one access
/// adds nothing, so the trace (and the report) stays bounded by what is distinct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityTrace {
    /// Restricted opcodes used (OP-011, OP-012 misuse as `GAS`, OP-013 unassigned, OP-080), by
    /// opcode, with the contract that ran it.
    pub opcodes: BTreeSet<(u8, Address)>,
    /// Storage accessed.
    pub storage: BTreeSet<StorageAccess>,
    /// Calls made.
    pub calls: BTreeSet<CallMade>,
    /// `EXTCODE*` uses.
    pub ext_code: BTreeSet<ExtCodeAccess>,
    /// Contracts created.
    pub creations: Vec<Creation>,
    /// A frame of this entity ran out of gas (OP-020).
    pub out_of_gas: bool,
}

/// What the tracer saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationTrace {
    /// Per entity.
    pub entities: BTreeMap<Entity, EntityTrace>,
    /// keccak256 results whose input started with a (left-padded) address: hash → address.
    pub keccak_preimages: HashMap<B256, Address>,
    /// Code hash of every contract whose code ran or was inspected during validation (COD-010).
    pub code_hashes: BTreeMap<Address, B256>,
}

#[derive(Debug, Clone)]
struct Frame {
    entity: Option<Entity>,
    /// The call that opened this frame, owed to the caller's entity once its target's code is
    /// known (at `call_end`).
    call: Option<(Entity, CallMade)>,
}

/// The inspector. Use once per simulation, then take its [`ValidationTrace`].
#[derive(Debug)]
pub struct ValidationInspector {
    addresses: OpAddresses,
    frames: Vec<Frame>,
    trace: ValidationTrace,
    /// The previous step was `GAS` in this frame depth (OP-012 is decided at the next step).
    gas_pending: Option<(usize, Address, Entity)>,
    /// The previous step was an `EXTCODE*`: decided at the next step (OP-051).
    ext_pending: Option<(usize, Entity, ExtCodeAccess)>,
    deadline: Option<Deadline>,
}

const UNRESTRICTED_GAS_FOLLOWERS: [u8; 4] =
    [opcode::CALL, opcode::CALLCODE, opcode::DELEGATECALL, opcode::STATICCALL];

/// OP-011: opcodes that read the environment.
const BLOCKED: [u8; 13] = [
    opcode::ORIGIN,
    opcode::GASPRICE,
    opcode::BLOCKHASH,
    opcode::COINBASE,
    opcode::TIMESTAMP,
    opcode::NUMBER,
    opcode::DIFFICULTY,
    opcode::GASLIMIT,
    opcode::BASEFEE,
    opcode::BLOBHASH,
    opcode::BLOBBASEFEE,
    opcode::INVALID,
    opcode::SELFDESTRUCT,
];

impl ValidationInspector {
    /// A tracer for the op with these addresses.
    pub fn new(addresses: OpAddresses) -> Self {
        Self {
            addresses,
            frames: Vec::new(),
            trace: ValidationTrace::default(),
            gas_pending: None,
            ext_pending: None,
            deadline: None,
        }
    }

    /// The same tracer, halting the run once `timeout` has passed.
    pub(crate) fn with_timeout(addresses: OpAddresses, timeout: Duration) -> Self {
        Self { deadline: Some(Deadline::after(timeout)), ..Self::new(addresses) }
    }

    /// Whether the run was cut short by its time limit.
    pub(crate) fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| d.passed())
    }

    /// What was seen.
    pub fn into_trace(self) -> ValidationTrace {
        self.trace
    }

    fn entity(&self) -> Option<Entity> {
        self.frames.last().and_then(|f| f.entity)
    }

    fn of(&mut self, entity: Entity) -> &mut EntityTrace {
        self.trace.entities.entry(entity).or_default()
    }

    /// The entity of a frame that `caller` opens on `target`: the EntryPoint (directly or through
    /// its SenderCreator) starts an entity's frame; every other frame inherits its parent's.
    fn child_entity(&self, caller: Address, target: Address) -> Option<Entity> {
        let a = &self.addresses;
        match self.entity() {
            Some(entity) => Some(entity),
            None if caller == a.sender_creator && Some(target) == a.factory => {
                Some(Entity::Factory)
            }
            None if caller == a.entry_point && target == a.sender => Some(Entity::Account),
            None if caller == a.entry_point && Some(target) == a.paymaster => {
                Some(Entity::Paymaster)
            }
            None => None,
        }
    }
}

fn is_out_of_gas(result: InstructionResult) -> bool {
    matches!(
        result,
        InstructionResult::OutOfGas
            | InstructionResult::MemoryOOG
            | InstructionResult::MemoryLimitOOG
            | InstructionResult::PrecompileOOG
            | InstructionResult::InvalidOperandOOG
            | InstructionResult::ReentrancySentryOOG
    )
}

fn address_from_word(word: U256) -> Address {
    Address::from_word(B256::from(word))
}

/// What the code at `address` is: present, its hash, and whether it is an EIP-7702 delegation.
/// Only called for accounts the current opcode or call has already loaded (no gas effect).
struct CodeSeen {
    present: bool,
    hash: Option<B256>,
    delegated: bool,
}

fn code_seen<CTX: ContextTr>(context: &mut CTX, address: Address) -> CodeSeen {
    let journal = context.journal_mut();
    match journal.code_hash(address) {
        Ok(load) if load.data != B256::ZERO && load.data != revm::primitives::KECCAK_EMPTY => {
            let delegated =
                journal.code(address).is_ok_and(|code| code.data.starts_with(&[0xef, 0x01, 0x00]));
            CodeSeen { present: true, hash: Some(load.data), delegated }
        }
        _ => CodeSeen { present: false, hash: None, delegated: false },
    }
}

impl ValidationInspector {
    /// Remembers `keccak(A || x)` at a KECCAK256 so storage slots can be tied to addresses
    /// (STO-0xx).
    fn remember_preimage(&mut self, interp: &Interpreter<EthInterpreter>) {
        let (Ok(offset), Ok(len)) = (interp.stack.peek(0), interp.stack.peek(1)) else { return };
        if len < U256::from(32) || len > U256::from(1024) {
            return;
        }
        // The offset is the validating code's to choose: one past usize is not a preimage we
        // could read (the opcode itself runs out of gas).
        let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
            return;
        };
        if offset.saturating_add(len) > interp.memory.size() {
            return;
        }
        let data = interp.memory.slice(offset..offset + len);
        if data[..12].iter().all(|b| *b == 0) {
            let address = Address::from_slice(&data[12..32]);
            let hash = keccak256(&*data);
            drop(data);
            self.trace.keccak_preimages.insert(hash, address);
        }
    }
}

impl<CTX: ContextTr> Inspector<CTX, EthInterpreter> for ValidationInspector {
    fn step(&mut self, interp: &mut Interpreter<EthInterpreter>, _context: &mut CTX) {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.halt_if_passed(interp)
        {
            return;
        }
        let Some(entity) = self.entity() else {
            self.gas_pending = None;
            self.ext_pending = None;
            return;
        };
        let op = interp.bytecode.opcode();
        let contract = interp.input.target_address();
        let depth = self.frames.len();

        if let Some((at, gas_contract, gas_entity)) = self.gas_pending.take()
            && at == depth
            && !UNRESTRICTED_GAS_FOLLOWERS.contains(&op)
        {
            self.of(gas_entity).opcodes.insert((opcode::GAS, gas_contract));
        }
        if let Some((at, ext_entity, mut access)) = self.ext_pending.take()
            && at == depth
        {
            access.followed_by_iszero = op == opcode::ISZERO;
            self.of(ext_entity).ext_code.insert(access);
        }

        match op {
            op if BLOCKED.contains(&op) => {
                self.of(entity).opcodes.insert((op, contract));
            }
            opcode::BALANCE | opcode::SELFBALANCE => {
                self.of(entity).opcodes.insert((op, contract));
            }
            opcode::GAS => self.gas_pending = Some((depth, contract, entity)),
            opcode::SLOAD | opcode::SSTORE | opcode::TLOAD | opcode::TSTORE => {
                if let Ok(slot) = interp.stack.peek(0) {
                    self.of(entity).storage.insert(StorageAccess {
                        contract,
                        slot,
                        write: matches!(op, opcode::SSTORE | opcode::TSTORE),
                        transient: matches!(op, opcode::TLOAD | opcode::TSTORE),
                    });
                }
            }
            opcode::KECCAK256 => self.remember_preimage(interp),
            opcode::EXTCODESIZE | opcode::EXTCODEHASH | opcode::EXTCODECOPY => {
                if let Ok(word) = interp.stack.peek(0) {
                    let access = ExtCodeAccess {
                        opcode: op,
                        target: address_from_word(word),
                        target_has_code: false, // filled in at step_end
                        target_delegated: false,
                        followed_by_iszero: false,
                    };
                    self.ext_pending = Some((depth, entity, access));
                }
            }
            op if revm::bytecode::opcode::OpCode::new(op).is_none() => {
                self.of(entity).opcodes.insert((op, contract)); // OP-013
            }
            _ => {}
        }
    }

    fn step_end(&mut self, _interp: &mut Interpreter<EthInterpreter>, context: &mut CTX) {
        // The EXTCODE* opcode has loaded its target now; reading it changes nothing.
        if let Some((_, _, access)) = self.ext_pending.as_mut() {
            let seen = code_seen(context, access.target);
            access.target_has_code = seen.present;
            access.target_delegated = seen.delegated;
            if let Some(hash) = seen.hash {
                self.trace.code_hashes.insert(access.target, hash);
            }
        }
    }

    fn call(&mut self, context: &mut CTX, inputs: &mut CallInputs) -> Option<CallOutcome> {
        let entity = self.child_entity(inputs.caller, inputs.target_address);
        let call = self.entity().map(|current| {
            let data = inputs.input.bytes(context);
            let made = CallMade {
                caller: inputs.caller,
                target: inputs.bytecode_address,
                value: inputs.value.get(),
                selector: data.get(..4).and_then(|s| s.try_into().ok()),
                empty_calldata: data.is_empty(),
                first_argument: data.get(4..36).map(B256::from_slice),
                target_has_code: false, // known at call_end
                target_delegated: false,
            };
            (current, made)
        });
        self.frames.push(Frame { entity, call });
        None
    }

    fn call_end(&mut self, context: &mut CTX, inputs: &CallInputs, outcome: &mut CallOutcome) {
        let Some(frame) = self.frames.pop() else { return };
        if frame.entity.is_some() || frame.call.is_some() {
            // The call has loaded its target; reading it now changes no gas.
            let seen = code_seen(context, inputs.bytecode_address);
            if let Some(hash) = seen.hash {
                self.trace.code_hashes.insert(inputs.bytecode_address, hash);
            }
            if let Some((caller_entity, mut made)) = frame.call {
                made.target_has_code = seen.present;
                made.target_delegated = seen.delegated;
                self.of(caller_entity).calls.insert(made);
            }
        }
        if let Some(entity) = frame.entity
            && is_out_of_gas(outcome.result.result)
        {
            self.of(entity).out_of_gas = true;
        }
    }

    fn create(&mut self, _context: &mut CTX, inputs: &mut CreateInputs) -> Option<CreateOutcome> {
        let entity = self.entity();
        if let Some(current) = entity {
            let create2 =
                matches!(inputs.scheme(), revm::context_interface::CreateScheme::Create2 { .. });
            self.of(current).creations.push(Creation {
                creator: inputs.caller(),
                create2,
                created: None,
            });
        }
        self.frames.push(Frame { entity, call: None });
        None
    }

    fn create_end(
        &mut self,
        _context: &mut CTX,
        _inputs: &CreateInputs,
        outcome: &mut CreateOutcome,
    ) {
        let frame = self.frames.pop();
        if let Some(entity) = frame.and_then(|f| f.entity) {
            if is_out_of_gas(outcome.result.result) {
                self.of(entity).out_of_gas = true;
            }
            if let Some(creation) =
                self.of(entity).creations.iter_mut().rev().find(|c| c.created.is_none())
            {
                creation.created = outcome.address;
            }
        }
    }
}
