//! One call to the EntryPoint, running its version's `EntryPointSimulations` code, in revm over a
//! fresh overlay of forked state with the caller's overrides — shared by validation, execution
//! and estimation. Also the wall-clock bound every inspector enforces.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use revm::{
    Context, DatabaseRef, InspectEvm, Inspector, MainBuilder, MainContext,
    context::TxEnv,
    context_interface::result::ExecutionResult,
    database::CacheDB,
    handler::MainnetContext,
    interpreter::{InstructionResult, Interpreter, interpreter::EthInterpreter},
    primitives::hardfork::SpecId,
    state::Bytecode,
};
use settled_contracts::EntryPointVersion;

use crate::{error::SimError, fork::BlockState, overrides::SimOverrides, validation::BlockContext};

/// The overlay one simulation writes into.
pub(crate) type Overlay<'a> = CacheDB<&'a BlockState>;

/// The revm context of one simulation.
pub(crate) type SimContext<'a> = MainnetContext<Overlay<'a>>;

/// A wall-clock bound, checked every [`Deadline::CHECK_EVERY`] steps (reading the clock each step
/// would cost more than the step). Once passed, every later step halts its frame out of gas, so a
/// run that loops, or that makes the node fetch state slot by slot, unwinds within a few steps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    steps: u32,
    passed: bool,
}

impl Deadline {
    const CHECK_EVERY: u32 = 256;

    pub(crate) fn after(timeout: Duration) -> Self {
        Self { at: Instant::now() + timeout, steps: 0, passed: false }
    }

    /// Counts a step; halts `interp` and returns true once the deadline has passed.
    #[inline]
    pub(crate) fn halt_if_passed(&mut self, interp: &mut Interpreter<EthInterpreter>) -> bool {
        self.steps = self.steps.wrapping_add(1);
        if !self.passed && self.steps.is_multiple_of(Self::CHECK_EVERY) {
            self.passed = Instant::now() >= self.at;
        }
        if self.passed {
            interp.halt(InstructionResult::OutOfGas);
        }
        self.passed
    }

    /// Whether the run was cut short.
    pub(crate) fn passed(&self) -> bool {
        self.passed
    }
}

/// `EntryPointSimulations` runtime code, analysed and hashed once per version: jump analysis and
/// hashing of ~26 KB per call would dominate a warm validation.
#[derive(Debug, Clone)]
pub(crate) struct SimulationsCode([(Bytecode, B256); 2]);

impl SimulationsCode {
    pub(crate) fn new() -> Self {
        let analysed = |version| {
            let code = Bytecode::new_raw(EntryPointVersion::simulations_code(version));
            let hash = code.hash_slow();
            (code, hash)
        };
        Self([analysed(EntryPointVersion::V07), analysed(EntryPointVersion::V08)])
    }

    fn get(&self, version: EntryPointVersion) -> &(Bytecode, B256) {
        match version {
            EntryPointVersion::V07 => &self.0[0],
            EntryPointVersion::V08 => &self.0[1],
        }
    }
}

/// What to run: `calldata` against `version`'s EntryPoint, with `overrides`, bounded by `gas_cap`.
pub(crate) struct EntryPointCall<'o> {
    pub(crate) version: EntryPointVersion,
    pub(crate) calldata: Bytes,
    pub(crate) overrides: &'o SimOverrides,
    /// The op's sender, to which an EIP-7702 authorization applies.
    pub(crate) sender: Address,
    pub(crate) gas_cap: u64,
}

/// The revm context every simulation runs in: `block`'s chain and Prague rules, a block gas
/// limit of `gas_limit`, and no fee checks — callers (the zero address, or the bundler) pay gas
/// price 0 at base fee 0, and their nonce is not the op's concern.
pub(crate) fn sim_context<'a>(
    db: Overlay<'a>,
    block: &BlockContext,
    gas_limit: u64,
) -> SimContext<'a> {
    Context::mainnet()
        .with_db(db)
        .modify_cfg_chained(|cfg| {
            cfg.chain_id = block.chain_id;
            cfg.spec = SpecId::PRAGUE;
            cfg.disable_nonce_check = true;
        })
        .modify_block_chained(|env| {
            env.number = U256::from(block.number);
            env.timestamp = U256::from(block.timestamp);
            env.gas_limit = gas_limit;
            env.basefee = 0;
        })
}

/// Runs `call` over a fresh overlay of `state` under `inspector`; returns the result and the
/// inspector. Blocking (reads forked state on a miss).
pub(crate) fn call_entry_point<'a, I>(
    state: &'a BlockState,
    block: &BlockContext,
    code: &SimulationsCode,
    call: EntryPointCall<'_>,
    inspector: I,
) -> Result<(ExecutionResult, I), SimError>
where
    I: Inspector<SimContext<'a>>,
{
    let entry_point = call.version.canonical_address();
    let mut db: Overlay<'a> = CacheDB::new(state);
    let mut info = state.basic_ref(entry_point)?.ok_or(SimError::NoEntryPoint(entry_point))?;
    if info.is_empty_code_hash() {
        return Err(SimError::NoEntryPoint(entry_point));
    }
    let (bytecode, hash) = code.get(call.version);
    info.code_hash = *hash;
    info.code = Some(bytecode.clone());
    db.insert_account_info(entry_point, info);
    call.overrides.apply(&mut db, block.chain_id, entry_point, call.sender)?;

    let mut evm = sim_context(db, block, block.gas_limit.max(call.gas_cap))
        .build_mainnet_with_inspector(inspector);
    let tx = TxEnv::builder()
        .caller(Address::ZERO)
        .kind(TxKind::Call(entry_point))
        .data(call.calldata)
        .gas_limit(call.gas_cap)
        .gas_price(0)
        .chain_id(Some(block.chain_id))
        .build_fill();
    let result = evm.inspect_tx(tx).map_err(|e| SimError::Evm(e.to_string()))?;
    Ok((result.result, evm.into_inspector()))
}
