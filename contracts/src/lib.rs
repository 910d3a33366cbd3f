//! settled's on-chain side.
//!
//! * Typed alloy bindings for the ERC-4337 contracts (EntryPoint v0.7 in [`v07`], v0.8 in
//!   [`v08`]) and for settled's own contracts, generated from the committed artifacts in
//!   `contracts/artifacts/` (regenerate with `cargo artifacts`).
//! * [`deploy_all`]: canonical, idempotent deployment onto a dev chain, yielding a [`Deployment`].
//! * [`plan_deployment`] / [`execute_plan`]: `settled deploy` on a real network (dry run first;
//!   the canonical EntryPoints checked, never deployed).
//! * [`ChainFollower`]: the node's one view of the chain — new blocks, their logs, reorgs.
//! * [`TransactionSender`]: one key's transactions — nonces, fees, replacement, typed refusals.
//! * [`ChainKind`]: Ethereum, OP stack (an L1 data fee on every transaction) or Arbitrum.
//! * [`UserOperation`]: the op in ERC-7769's JSON shape (bundler and paymaster RPC), packed into
//!   [`PackedUserOperation`] for the EntryPoint.
//! * With feature `anvil`: [`LocalAnvil`], a local Anvil from the pinned npm package.

#[cfg(feature = "anvil")]
mod anvil;
mod bindings;
mod chain_kind;
mod cursor;
mod deploy;
mod deployment;
mod follower;
mod network_deploy;
mod sender;
mod user_op;
mod user_operation;

#[cfg(feature = "anvil")]
pub use anvil::{AnvilError, AnvilOptions, LocalAnvil, find_anvil};
pub use bindings::{
    settled::{MockUSDC, SettlementAnchor, SponsorPaymaster, StreamVault},
    v07, v08,
};

/// A user operation as EntryPoint v0.7 and v0.8 take it (`handleOps`, `simulateValidation`).
///
/// Each binding has its own Rust type for this struct; they share one ABI, so this one converts
/// to any of them by ABI round trip.
pub type PackedUserOperation = v07::PackedUserOperation;
pub use chain_kind::{
    ARBITRUM_NODE_INTERFACE, ARBITRUM_SYS, ChainKind, GasPriceOracle, OP_GAS_PRICE_ORACLE,
    OP_L1_BLOCK,
};
pub use cursor::{
    APPLY_RETRY_WINDOW, ChainCursor, CursorError, apply_until_stored, follows, reopen_sled,
};
pub use deploy::{
    DeployError, PaymasterFunding, deploy_all, deploy_entry_points, expected_deployment,
    fund_paymaster,
};
pub use deployment::{
    Deployment, DeploymentError, ENTRY_POINT_V07, ENTRY_POINT_V08, EntryPointVersion,
};
pub use follower::{
    BlockRef, ChainContact, ChainEvent, ChainEvents, ChainFollower, FollowerConfig, FollowerHandle,
    NewBlock, Reorg,
};
pub use network_deploy::{
    DeployScope, DeploymentPlan, PlanAction, PlannedContract, execute_plan, plan_deployment,
};
pub use sender::{
    ACCRUAL_HEADROOM, Inclusion, JournalFuture, RecordedFuture, Refusal, SendError, SendJournal,
    SentTransaction, Signed, TransactionSender, carries_of, gas_limit_for,
};
pub use user_op::{EIP7702_INIT_CODE_MARKER, pack_u128s, stub_account_signature, unpack_u128s};
pub use user_operation::{ChecksummedAddress, InvalidUserOperation, UserOperation, rpc_codes};

impl EntryPointVersion {
    /// Runtime code of this version's `EntryPointSimulations`, which simulators (revm, or a node's
    /// `eth_call` with a code override) run at the EntryPoint's address.
    pub fn simulations_code(self) -> alloy::primitives::Bytes {
        match self {
            Self::V07 => v07::EntryPointSimulations::DEPLOYED_BYTECODE.clone(),
            Self::V08 => v08::EntryPointSimulations::DEPLOYED_BYTECODE.clone(),
        }
    }
}

/// The deterministic CREATE2 deployer (`0x4e59…956c`) through which settled deploys.
pub const DETERMINISTIC_DEPLOYER: alloy::primitives::Address =
    bindings::create2::DETERMINISTIC_DEPLOYER;
