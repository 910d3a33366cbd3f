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

/// The message is the reference bundler's wording (what ERC-4337 clients and the compatibility
/// suite match on); the rule id, entity and address travel beside it (the RPC edge puts them in
/// the error's `data`).
impl std::fmt::Display for RuleViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
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
                check.report(
                    Rule::Op020,
                    check.own_address(),
                    format!("{entity} internally reverts on oog"),
                );
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
                    "unstaked paymaster returned a context ({paymaster_context_len} bytes)"
                ),
            });
        }
        out
    }
}

/// How the reference bundler names a call into the EntryPoint: a known method's name, `0x` for
/// the fallback, else the selector.
fn entry_point_method(call: &crate::inspector::CallMade) -> String {
    match call.selector {
        _ if call.empty_calldata => "0x".to_owned(),
        Some(DEPOSIT_TO) => "depositTo".to_owned(),
        Some(INCREMENT_NONCE) => "incrementNonce".to_owned(),
        Some(selector) => alloy::primitives::hex::encode_prefixed(selector),
        None => "0x".to_owned(),
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
        let entity = self.entity;
        for &(op, contract) in &seen.opcodes {
            let named = revm::bytecode::opcode::OpCode::new(op);
            let name = named.map_or_else(|| format!("0x{op:02x}"), |o| o.as_str().to_owned());
            let banned = format!("{entity} uses banned opcode: {name}");
            match op {
                // OP-012: GAS not followed by a *CALL.
                opcode::GAS => self.report(Rule::Op012, contract, banned),
                opcode::BALANCE | opcode::SELFBALANCE if !self.staked() => {
                    self.report(Rule::Op080, contract, format!("unstaked {banned}"));
                }
                opcode::BALANCE | opcode::SELFBALANCE => {}
                _ if named.is_none() => self.report(Rule::Op013, contract, banned),
                _ => self.report(Rule::Op011, contract, banned),
            }
        }
    }

    fn creations(&mut self, seen: &EntityTrace) {
        let a = self.addresses;
        let deployment_phase = matches!(self.entity, Entity::Factory | Entity::Account);
        let mut sender_deployments = 0;
        for creation in &seen.creations {
            let by_sender = creation.creator == a.sender;
            let by_factory = Some(creation.creator) == a.factory;
            // OP-031: the factory's one CREATE2 of the sender.
            let deploys_sender =
                self.entity == Entity::Factory && creation.created == Some(a.sender) && {
                    sender_deployments += 1;
                    sender_deployments == 1
                };
            // OP-032: with a factory, the sender itself (not a utility contract) may CREATE.
            let op_032 = !creation.create2 && a.factory.is_some() && deployment_phase && by_sender;
            // EREP-060: with a staked factory, the factory or the sender itself may create.
            let erep_060 = self.stakes.factory && (by_sender || by_factory);
            if !(deploys_sender || op_032 || erep_060) {
                let (rule, name) = if creation.create2 {
                    (Rule::Op031, "CREATE2")
                } else {
                    (Rule::Op011, "CREATE")
                };
                let detail = format!("{} uses banned opcode: {name}", self.entity);
                self.report(rule, creation.creator, detail);
            }
        }
    }

    fn ext_code(&mut self, seen: &EntityTrace) {
        for access in &seen.ext_code {
            let (entity, target) = (self.entity, access.target);
            if access.target_delegated && target != self.addresses.sender {
                let detail = format!(
                    "{entity} accesses EIP-7702 delegated account {target} that is not the sender"
                );
                self.report(Rule::Auth030, target, detail);
            }
            let name = revm::bytecode::opcode::OpCode::new(access.opcode)
                .map_or("EXTCODE*", |o| o.as_str());
            if target == self.addresses.entry_point {
                // OP-051: `EXTCODESIZE ISZERO` on the EntryPoint is the one allowed look.
                if !(access.opcode == opcode::EXTCODESIZE && access.followed_by_iszero) {
                    let detail = format!(
                        "{entity} accesses EntryPoint contract address {target} with EXTCODE* opcode ({name})"
                    );
                    self.report(Rule::Op054, target, detail);
                }
            } else if !access.target_has_code && target != self.addresses.sender {
                let detail = format!(
                    "{entity} accesses un-deployed contract address {target} with opcode {name}"
                );
                self.report(Rule::Op041, target, detail);
            }
        }
    }

    fn calls(&mut self, seen: &EntityTrace) {
        let a = self.addresses;
        for call in &seen.calls {
            let (entity, target) = (self.entity, call.target);
            if call.target_delegated && target != a.sender {
                let detail = format!(
                    "{entity} calls EIP-7702 delegated account {target} that is not the sender"
                );
                self.report(Rule::Auth030, target, detail);
            }
            if call.target == a.entry_point {
                // "From the sender / factory" is read as the reference bundler reads it: from
                // within that entity's validation frame (a utility contract it calls included).
                // The factory's frame runs the sender's constructor, so it counts as the sender's.
                let sender_frame = self.entity == Entity::Account;
                let deployment_frame = matches!(self.entity, Entity::Account | Entity::Factory);
                let deposit_to_sender = call.selector == Some(DEPOSIT_TO)
                    && call.first_argument == Some(a.sender.into_word());
                // OP-052 (depositTo the sender), OP-053 (the fallback), OP-055 (incrementNonce).
                let op_052_053 = deposit_to_sender || call.empty_calldata;
                let allowed = (op_052_053 && deployment_frame)
                    || (call.selector == Some(INCREMENT_NONCE) && sender_frame);
                if !allowed {
                    let method = entry_point_method(call);
                    let detail = format!("illegal call into EntryPoint during validation {method}");
                    self.report(Rule::Op054, target, detail);
                }
                continue;
            }
            if call.value > U256::ZERO {
                let detail = format!("{entity} May not make a CALL with value {}", call.value);
                self.report(Rule::Op061, target, detail);
            }
            let numeric = U256::from_be_slice(call.target.as_slice());
            let known_precompile = (numeric >= U256::from(1) && numeric <= U256::from(0x11))
                || call.target == P256_VERIFY;
            if known_precompile {
                continue;
            }
            if numeric <= U256::from(0xffff) && !call.target_has_code {
                let detail = format!("{entity} Illegal call to forbidden precompile {target}");
                self.report(Rule::Op062, target, detail);
            } else if !call.target_has_code && target != a.sender {
                let detail = format!(
                    "{entity} accesses un-deployed contract address {target} with opcode CALL"
                );
                self.report(Rule::Op041, target, detail);
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
            // The reference bundler's decision, rule by rule.
            let sender_associated = self.associated(slot, a.sender);
            let own_storage = Some(contract) == own;
            let entity_associated = own.is_some_and(|e| self.associated(slot, e));
            // STO-031 / STO-032 / STO-033 (read-only): what a staked entity may touch.
            let allowed_if_staked = own_storage || entity_associated || !write;
            let sto_021 = sender_associated && !has_init_code;
            let sto_022 = sender_associated && has_init_code && self.stakes.factory;
            if sto_021 || sto_022 || (allowed_if_staked && self.staked()) {
                continue;
            }
            let rule = if own_storage {
                Rule::Sto031
            } else if sender_associated {
                Rule::Sto022
            } else if self.staked() {
                Rule::Sto033
            } else {
                Rule::Sto021
            };
            let detail = self.storage_detail(access, allowed_if_staked || sender_associated);
            self.report(rule, contract, detail);
        }
    }

    /// The reference bundler's words for a forbidden storage access: `unstaked` when a stake
    /// (the entity's or the factory's) would have allowed it.
    fn storage_detail(&self, access: &StorageAccess, stake_would_allow: bool) -> String {
        let a = self.addresses;
        let name = match access.contract {
            c if c == a.sender => "account".to_owned(),
            c if Some(c) == a.factory => "factory".to_owned(),
            c if Some(c) == a.paymaster => "paymaster".to_owned(),
            c => c.to_string(),
        };
        let slot = access.slot;
        if stake_would_allow {
            return format!("unstaked {} accessed {name} slot {slot:#x}", self.entity);
        }
        let read_write = if access.write { "write to" } else { "read from" };
        let transient = if access.transient { "transient " } else { "" };
        format!("{} has forbidden {read_write} {transient}{name} slot {slot:#x}", self.entity)
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
mod tests;
