//! The bundler service: accepts ops (first validation), keeps the pool in memory and in sled,
//! follows the chain (new state per block, mined ops indexed, reorged ops back in the pool), and
//! builds, checks and submits bundles.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use alloy::{
    consensus::Transaction as _,
    network::{TransactionBuilder, TransactionBuilder7702},
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider},
    rpc::types::{Log, TransactionReceipt, TransactionRequest, state::StateOverride},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolEvent},
};
use serde::{Deserialize, Serialize};
use settled_contracts::{
    BlockRef, ChainCursor, ChainEvent, ChainEvents, ChainKind, ChecksummedAddress,
    EntryPointVersion, PackedUserOperation, Refusal, TransactionSender, UserOperation,
    apply_until_stored, v07,
};
use settled_sim::{
    AccountReads, BlockContext, BlockState, Bundle, BundleOutcome, ChainHead, EstimationMargins,
    GasEstimate, SimError, SimOverrides, SimulationLimits, Simulator, ValidationOutcome,
    changed_code, pre_verification_gas,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod accept;
mod build;
mod chain;
mod leader;
mod lookup;
mod submit;
mod types;

pub use types::{
    GasPrice, GasPrices, MinedOp, StakeInfo, StakeStatus, UserOperationByHash, UserOperationReceipt,
};

use crate::{
    error::BundlerError,
    metrics,
    params::MempoolParams,
    pool::{Mempool, PoolConfig, PoolEntry, StakedEntities},
    reputation::{
        Reputation, ReputationCounts, ReputationLists, ReputationStatus, ReputationStore,
        THROTTLED_ENTITY_BUNDLE_COUNT, THROTTLED_ENTITY_LIVE_BLOCKS,
    },
    store::{BundlerStore, BundlerStoreError, SentOps, SledBundler},
};

/// An op must stay valid at least this long after acceptance (ERC-7769 -32503 "expire soon").
const MIN_VALIDITY_SECONDS: u64 = 30;
/// After an op is accepted, how long auto mode gathers more before bundling.
const ACCEPT_BATCHING_DELAY: Duration = Duration::from_millis(25);
/// How long to wait before sending again a bundle the node priced out.
const REPRICE_DELAY: Duration = Duration::from_millis(100);
/// A sent bundle's receipt is looked for at each new block, and at least this often.
const RECEIPT_POLL_FALLBACK: Duration = Duration::from_secs(1);
/// How many ops a bundle may drop (each a `FailedOp` in the revm bundle run) before giving up.
const MAX_BUNDLE_RETRIES: usize = 8;

/// When bundles are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundlingMode {
    /// After every new block with ops pending.
    Auto,
    /// Only on `debug_bundler_sendBundleNow`.
    Manual,
}

/// Bundler settings.
#[derive(Debug, Clone)]
pub struct BundlerConfig {
    /// EntryPoints served, the preferred first.
    pub entry_points: Vec<EntryPointVersion>,
    /// Receives the bundles' fees (default: the bundler's own address).
    pub beneficiary: Option<Address>,
    /// Auto or manual bundling.
    pub mode: BundlingMode,
    /// Sum of the ops' gas limits a bundle may hold.
    pub max_bundle_gas: u64,
    /// Ops per bundle.
    pub max_bundle_ops: usize,
    /// Mempool bounds.
    pub pool: PoolConfig,
    /// Entities always allowed or always banned, whatever their reputation.
    pub reputation: ReputationLists,
    /// How often reputation counters decay (ERC-7562: hourly).
    pub reputation_decay_interval: Duration,
    /// Simulation bounds.
    pub limits: SimulationLimits,
    /// ERC-7562 mempool parameters (staking thresholds, limits, reputation slacks).
    pub params: MempoolParams,
    /// How long a submitted bundle may take to be mined.
    pub inclusion_timeout: Duration,
    /// A bundle not mined after this many blocks is resent with higher fees.
    pub fee_bump_after_blocks: u64,
    /// The highest `maxFeePerGas` a bundle is sent or re-priced at: bumps stop there.
    pub max_fee_per_gas: u128,
    /// In auto mode, a bundle is also tried this often (a chain that mines only on demand,
    /// like Anvil's default, has no new block to wait for).
    pub auto_interval: Duration,
    /// The chain's kind: on OP stack, preVerificationGas carries the L1 data fee and bundles
    /// must earn what they cost.
    pub chain: ChainKind,
    /// Added to the L1 fee in estimates (percent).
    pub l1_fee_margin_percent: u64,
    /// How far below its L1 fee (percent) an op's preVerificationGas may fall before the op is
    /// refused: L1 fees drift between an estimate and the op's arrival.
    pub l1_fee_tolerance_percent: u64,
}

/// [`BundlerConfig::l1_fee_tolerance_percent`] by default.
pub const L1_FEE_TOLERANCE_PERCENT: u64 = 10;

impl Default for BundlerConfig {
    fn default() -> Self {
        Self {
            entry_points: vec![EntryPointVersion::V08, EntryPointVersion::V07],
            beneficiary: None,
            mode: BundlingMode::Auto,
            max_bundle_gas: 10_000_000,
            max_bundle_ops: 64,
            pool: PoolConfig::default(),
            reputation: ReputationLists::default(),
            reputation_decay_interval: Duration::from_secs(3600),
            limits: SimulationLimits::default(),
            params: MempoolParams::default(),
            inclusion_timeout: Duration::from_secs(60),
            fee_bump_after_blocks: 3,
            max_fee_per_gas: DEFAULT_MAX_FEE_PER_GAS,
            auto_interval: Duration::from_secs(1),
            chain: ChainKind::Ethereum,
            l1_fee_margin_percent: settled_sim::L1_FEE_MARGIN_PERCENT,
            l1_fee_tolerance_percent: L1_FEE_TOLERANCE_PERCENT,
        }
    }
}

/// The default ceiling of a bundle's `maxFeePerGas`: 1,000 gwei, above any sustained mainnet
/// base fee, so only a runaway re-pricing meets it.
pub const DEFAULT_MAX_FEE_PER_GAS: u128 = 1_000_000_000_000;

struct Shared {
    config: BundlerConfig,
    chain_id: u64,
    provider: DynProvider,
    sender: TransactionSender,
    bundler_address: Address,
    simulator: Simulator,
    pool: Mutex<Mempool>,
    reputation: ReputationStore,
    mode: RwLock<BundlingMode>,
    head: ChainHead,
    /// The pool's durable copy, the mined index, recorded bundles, reputation, submissions.
    store: Arc<dyn BundlerStore>,
    /// The bundler key's lease epoch while this node leads it (`None`: it follows; it then
    /// hands ops to the leader and indexes mined ops, and bundles nothing).
    leader: tokio::sync::watch::Receiver<Option<u64>>,
    /// The last block whose ops, reputation and expiries were applied (durable, this node's).
    cursor: ChainCursor,
    /// One bundle at a time.
    bundling: tokio::sync::Mutex<()>,
    /// Blocks of our own bundles, indexed from their receipts before the chain follower saw
    /// them: if the follower then reports another block at that height, they were reorged out.
    unconfirmed: Mutex<Vec<(u64, B256)>>,
    /// Signalled on each accepted op: in auto mode a bundle goes out without waiting for the
    /// next block or tick (ops accepted while one is built share the next).
    accepted: tokio::sync::Notify,
    /// The latest block number the chain follower reported (0: none yet).
    head_number: tokio::sync::watch::Sender<u64>,
    /// The nonce after our last sent bundle: the node's pending count can lag a transaction just
    /// sent, and two bundles must never share a nonce. Forgotten when a bundle is given up.
    next_nonce: Mutex<Option<u64>>,
    /// Ops in sent, not yet mined bundles, with their senders.
    in_flight: Mutex<HashMap<B256, Address>>,
}

/// The bundler. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct Bundler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bundler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundler").field("address", &self.shared.bundler_address).finish()
    }
}

fn storage_error(error: impl std::fmt::Display) -> BundlerError {
    BundlerError::Internal(format!("storage: {error}"))
}

impl From<BundlerStoreError> for BundlerError {
    fn from(error: BundlerStoreError) -> Self {
        match error {
            BundlerStoreError::Lost(why) => Self::NotLeading(why),
            BundlerStoreError::Store(why) => Self::Internal(format!("storage: {why}")),
        }
    }
}

/// The entity an EntryPoint rejection (`AAxx`) of `entry` is charged to: AA1x the factory;
/// AA2x the account, or its staked factory (EREP-020); AA3x the paymaster, or the staked account
/// (EREP-030); anything else the account.
fn culprit(entry: &PoolEntry, reason: &str) -> Address {
    let op = &entry.op;
    let factory = op.factory_address();
    match reason.get(..3) {
        Some("AA1") => factory.unwrap_or(op.sender),
        Some("AA2") if entry.staked.factory => factory.unwrap_or(op.sender),
        Some("AA3") if !entry.staked.sender => op.paymaster.unwrap_or(op.sender),
        _ => op.sender,
    }
}

fn rpc_error(error: impl std::fmt::Display) -> BundlerError {
    BundlerError::Internal(format!("chain: {error}"))
}

impl Bundler {
    /// A bundler on `provider`'s chain that signs bundles with `signer`, persisting in `db`
    /// (the embedded default: this node alone, always leading its key). Ops persisted by an
    /// earlier run are back in the pool (they are validated again before bundling).
    pub async fn new(
        config: BundlerConfig,
        provider: DynProvider,
        signer: PrivateKeySigner,
        db: &sled::Db,
    ) -> Result<Self, BundlerError> {
        let store = Arc::new(SledBundler::open(db).map_err(storage_error)?);
        let (_, leader) = tokio::sync::watch::channel(Some(0));
        Self::with_store(config, provider, signer, db, store, leader).await
    }

    /// A bundler whose state is in `store` (shared with other nodes on PostgreSQL), leading its
    /// key while `leader` holds an epoch; its chain cursor is this node's, in `db`. It takes
    /// the pool, reputation and recorded bundles over from the store each time it becomes the
    /// leader, and forgets them when it stops.
    pub async fn with_store(
        config: BundlerConfig,
        provider: DynProvider,
        signer: PrivateKeySigner,
        db: &sled::Db,
        store: Arc<dyn BundlerStore>,
        leader: tokio::sync::watch::Receiver<Option<u64>>,
    ) -> Result<Self, BundlerError> {
        let chain_id = provider.get_chain_id().await.map_err(rpc_error)?;
        let client_version = provider.get_client_version().await.unwrap_or_default();
        let account_reads = AccountReads::for_client(&client_version);
        info!(client = %client_version, ?account_reads, "reading chain state");
        let bundler_address = signer.address();
        // Bundles go through the node's one transaction sender; their nonces and fees are the
        // bundler's (pipelined, bumped up to the ceiling).
        let sender = TransactionSender::new(provider.clone(), signer);
        let cursor = ChainCursor::open(db, "bundler").map_err(storage_error)?;
        let pool = Mempool::new(config.pool, config.params);
        let reputation =
            ReputationStore::new(store.clone(), config.reputation.clone(), config.params);
        let simulator = Simulator::new(config.limits, config.params.rules())
            .with_margins(EstimationMargins {
                pre_verification_overhead_gas: config.params.pre_verification_overhead_gas,
                l1_fee_percent: config.l1_fee_margin_percent,
                ..EstimationMargins::default()
            })
            .with_chain(config.chain);
        let mode = RwLock::new(config.mode);
        let head = ChainHead::new(provider.clone(), account_reads);
        let bundler = Self {
            shared: Arc::new(Shared {
                config,
                chain_id,
                provider,
                sender,
                bundler_address,
                simulator,
                pool: Mutex::new(pool),
                reputation,
                mode,
                head,
                store,
                leader,
                cursor,
                bundling: tokio::sync::Mutex::new(()),
                unconfirmed: Mutex::new(Vec::new()),
                in_flight: Mutex::new(HashMap::new()),
                next_nonce: Mutex::new(None),
                head_number: tokio::sync::watch::Sender::new(0),
                accepted: tokio::sync::Notify::new(),
            }),
        };
        if bundler.leading() {
            bundler.take_over().await?;
        }
        Ok(bundler)
    }

    /// The address that signs bundles.
    pub fn address(&self) -> Address {
        self.shared.bundler_address
    }

    /// Supported EntryPoints, preferred first.
    pub fn supported_entry_points(&self) -> Vec<Address> {
        self.shared.config.entry_points.iter().map(|v| v.canonical_address()).collect()
    }

    /// The bundling mode.
    pub fn mode(&self) -> BundlingMode {
        self.shared.mode.read().map(|m| *m).unwrap_or(BundlingMode::Manual)
    }

    /// Sets the bundling mode.
    pub fn set_mode(&self, mode: BundlingMode) {
        if let Ok(mut current) = self.shared.mode.write() {
            *current = mode;
        }
    }

    /// Ops in the pool.
    pub fn pool_len(&self) -> usize {
        self.shared.pool.lock().map(|p| p.len()).unwrap_or_default()
    }

    fn version(&self, entry_point: Address) -> Result<EntryPointVersion, BundlerError> {
        EntryPointVersion::from_address(entry_point)
            .filter(|v| self.shared.config.entry_points.contains(v))
            .ok_or(BundlerError::UnsupportedEntryPoint(entry_point))
    }

    /// The state and context of the chain head (a successor view of the last one).
    async fn head(&self) -> Result<(BlockState, BlockContext), BundlerError> {
        self.shared.head.latest().await.map_err(|e| BundlerError::from_sim(e, None))
    }

    /// Runs `f` with the simulator on a blocking thread.
    async fn simulate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Simulator) -> T + Send + 'static,
    ) -> Result<T, BundlerError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.simulator))
            .await
            .map_err(|e| BundlerError::Internal(format!("simulation task: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Bytes, U256};

    use super::{submit::SentBundle, *};

    fn op(factory: Option<Address>, paymaster: Option<Address>) -> UserOperation {
        UserOperation {
            sender: Address::repeat_byte(0x5e),
            nonce: U256::ZERO,
            factory: factory.map(|f| Bytes::copy_from_slice(f.as_slice())),
            factory_data: factory.map(|_| Bytes::new()),
            call_data: Bytes::new(),
            call_gas_limit: U256::ZERO,
            verification_gas_limit: U256::ZERO,
            pre_verification_gas: U256::ZERO,
            max_fee_per_gas: U256::ZERO,
            max_priority_fee_per_gas: U256::ZERO,
            paymaster,
            paymaster_verification_gas_limit: None,
            paymaster_post_op_gas_limit: None,
            paymaster_data: None,
            signature: Bytes::new(),
            eip7702_auth: None,
        }
    }

    fn entry(op: UserOperation, staked: StakedEntities) -> PoolEntry {
        PoolEntry {
            hash: B256::ZERO,
            entry_point: EntryPointVersion::V08,
            op,
            staked,
            code_hashes: Default::default(),
            valid_until: u64::MAX,
            accepted_at_block: 0,
        }
    }

    /// Re-pricing raises both fees by 10% (or to the node's estimate), stops at the ceiling
    /// and then reports that nothing more can be done.
    #[test]
    fn fee_bumps_stop_at_the_ceiling() {
        let mut sent = SentBundle {
            tx: TransactionRequest::default(),
            nonce: 0,
            max_fee: 100,
            priority_fee: 10,
            hashes: Vec::new(),
            deadline: tokio::time::Instant::now(),
            ops: Vec::new(),
        };
        assert!(sent.raise_fees(None, 1_000));
        assert_eq!((sent.max_fee, sent.priority_fee), (110, 11));
        let estimate = alloy::eips::eip1559::Eip1559Estimation {
            max_fee_per_gas: 500,
            max_priority_fee_per_gas: 50,
        };
        assert!(sent.raise_fees(Some(estimate), 1_000));
        assert_eq!((sent.max_fee, sent.priority_fee), (500, 50));
        let mut bumps = 0;
        while sent.raise_fees(None, 1_000) {
            bumps += 1;
            assert!(sent.max_fee <= 1_000 && sent.priority_fee <= sent.max_fee);
        }
        assert_eq!(sent.max_fee, 1_000, "the last bump lands on the ceiling");
        assert_eq!(bumps, 8, "500 → 550 → … → 975 → 1,000");
    }

    /// GREP-040 charges the entity the EntryPoint's code names; a staked factory answers for its
    /// account (EREP-020), a staked account for its paymaster (EREP-030), and the paymaster never
    /// for the account or factory (EREP-015).
    #[test]
    fn failures_are_charged_to_the_accountable_entity() {
        let (factory, paymaster) = (Address::repeat_byte(0xfa), Address::repeat_byte(0xba));
        let full = op(Some(factory), Some(paymaster));
        let sender = full.sender;
        let unstaked = StakedEntities::default();
        let staked_factory = StakedEntities { factory: true, ..unstaked };
        let staked_sender = StakedEntities { sender: true, ..unstaked };
        for (op, staked, reason, expected) in [
            (&full, unstaked, "AA13 initCode failed or OOG", factory),
            (&full, unstaked, "AA23 reverted", sender),
            (&full, staked_factory, "AA23 reverted", factory),
            (&full, unstaked, "AA25 invalid account nonce", sender),
            (&full, unstaked, "AA31 paymaster deposit too low", paymaster),
            (&full, staked_sender, "AA31 paymaster deposit too low", sender),
            (&full, unstaked, "AA33 reverted", paymaster),
            (&full, unstaked, "AA95 out of gas", sender),
            (&full, unstaked, "", sender),
            (&op(None, None), unstaked, "AA13 initCode failed or OOG", sender),
            (&op(None, None), unstaked, "AA33 reverted", sender),
        ] {
            assert_eq!(
                culprit(&entry(op.clone(), staked), reason),
                expected,
                "{reason} {staked:?}"
            );
        }
    }

    /// An unstaked sender's `opsSeen` is not kept; its factory's and paymaster's are.
    #[test]
    fn charged_entities_leave_out_an_unstaked_sender() {
        let (factory, paymaster) = (Address::repeat_byte(0xfa), Address::repeat_byte(0xba));
        let full = op(Some(factory), Some(paymaster));
        let sender = full.sender;
        let unstaked = entry(full.clone(), StakedEntities::default());
        assert_eq!(unstaked.charged_entities(), vec![factory, paymaster]);
        let staked = entry(full, StakedEntities { sender: true, ..Default::default() });
        assert_eq!(staked.charged_entities(), vec![sender, factory, paymaster]);
    }
}
