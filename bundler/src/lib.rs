//! The ERC-4337 bundler: mempool, bundle building and submission, ERC-7769 RPC.
//!
//! * [`UserOperation`]: the op as ERC-7769 clients send it, packed for the EntryPoint.
//! * [`Bundler`]: first validation (revm, ERC-7562) into the [`Mempool`] (its durable copy in a
//!   [`BundlerStore`]: sled, or PostgreSQL shared by several nodes, one leading the bundler key)
//!   under [`Reputation`], second validation and COD-010 before bundling, the whole `handleOps`
//!   in revm as the third, pipelined submission with fee bumping, an index of mined ops fed by
//!   the chain follower, reorged ops back in the pool.
//! * [`bundler_module`]: `eth_sendUserOperation`, `eth_estimateUserOperationGas`,
//!   `eth_getUserOperationByHash`, `eth_getUserOperationReceipt`, `eth_supportedEntryPoints`,
//!   and `debug_bundler_*`; [`BundlerError`] → ERC-7769 codes ([`codes`]) at this edge only.

mod error;
mod metrics;
mod params;
mod pool;
mod reputation;
mod rpc;
mod service;
mod store;

pub use error::BundlerError;
pub use metrics::describe_metrics;
pub use params::{
    BAN_SLACK, MAX_VERIFICATION_GAS, MIN_INCLUSION_RATE_DENOMINATOR, MempoolParams,
    REPLACEMENT_FEE_BUMP_PERCENT, SAME_SENDER_MEMPOOL_COUNT, SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT,
    THROTTLED_ENTITY_MEMPOOL_COUNT, THROTTLING_SLACK,
};
pub use pool::{Mempool, PoolConfig, PoolEntry, PoolError, StakedEntities};
pub use reputation::{
    BAN_OPS_SEEN_PENALTY, MAX_OPS_ALLOWED_UNSTAKED_ENTITY, Reputation, ReputationCounts,
    ReputationLists, ReputationStatus, THROTTLED_ENTITY_BUNDLE_COUNT, THROTTLED_ENTITY_LIVE_BLOCKS,
};
pub use rpc::{GasEstimateResponse, ReputationEntry, bundler_module, codes};
pub use service::{
    Bundler, BundlerConfig, BundlingMode, DEFAULT_MAX_FEE_PER_GAS, GasPrice, GasPrices,
    L1_FEE_TOLERANCE_PERCENT, MinedOp, StakeInfo, StakeStatus, UserOperationByHash,
    UserOperationReceipt,
};
/// The op as ERC-7769 clients send it; defined in `settled-contracts`, shared with the paymaster.
pub use settled_contracts::{InvalidUserOperation, UserOperation};
/// The bundler store's contract, for a backend's tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub use store::contract as store_contract;
pub use store::{
    BundlerFuture, BundlerStore, BundlerStoreError, ReputationRow, SentOps, SledBundler,
    Submission, Verdict,
};
