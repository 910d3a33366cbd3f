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
    network::{EthereumWallet, TransactionBuilder, TransactionBuilder7702},
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{Log, TransactionReceipt, TransactionRequest, state::StateOverride},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolEvent},
};
use serde::{Deserialize, Serialize};
use settled_contracts::{
    BlockRef, ChainCursor, ChainEvent, ChainEvents, ChecksummedAddress, EntryPointVersion,
    PackedUserOperation, Refusal, UserOperation, v07,
};
use settled_sim::{
    AccountReads, BlockContext, BlockState, Bundle, BundleOutcome, ChainHead, EstimationMargins,
    GasEstimate, SimError, SimOverrides, SimulationLimits, Simulator, ValidationOutcome,
    changed_code, pre_verification_gas,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::in_flight::SentBundles;
use crate::{
    error::BundlerError,
    metrics,
    params::MempoolParams,
    pool::{Mempool, PoolConfig, PoolEntry, StakedEntities},
    reputation::{
        Reputation, ReputationCounts, ReputationLists, ReputationStatus, ReputationStore,
        THROTTLED_ENTITY_BUNDLE_COUNT, THROTTLED_ENTITY_LIVE_BLOCKS,
    },
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
}

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
        }
    }
}

/// The default ceiling of a bundle's `maxFeePerGas`: 1,000 gwei, above any sustained mainnet
/// base fee, so only a runaway re-pricing meets it.
pub const DEFAULT_MAX_FEE_PER_GAS: u128 = 1_000_000_000_000;

/// `debug_bundler_getStakeStatus`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StakeStatus {
    /// The entity's stake.
    pub stake_info: StakeInfo,
    /// Whether it meets the staking thresholds.
    pub is_staked: bool,
}

/// An entity's stake at the EntryPoint. Stake and delay are decimal strings, as the reference
/// bundler answers (a wei amount does not fit a JSON number's 2^53).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StakeInfo {
    /// The entity.
    pub addr: Address,
    /// Wei staked.
    #[serde(serialize_with = "decimal")]
    pub stake: U256,
    /// Unstake delay in seconds.
    #[serde(serialize_with = "decimal")]
    pub unstake_delay_sec: U256,
}

fn decimal<S: serde::Serializer>(value: &U256, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_string())
}

/// A mined op as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinedOp {
    /// `userOpHash`.
    pub hash: B256,
    /// The EntryPoint.
    pub entry_point: Address,
    /// The op, when it went through this bundler.
    pub op: Option<UserOperation>,
    /// `UserOperationEvent` fields.
    pub sender: Address,
    /// The op's nonce.
    pub nonce: U256,
    /// The paymaster (zero: none).
    pub paymaster: Address,
    /// What it paid.
    pub actual_gas_cost: U256,
    /// Gas it was charged for.
    pub actual_gas_used: U256,
    /// Whether its call succeeded.
    pub success: bool,
    /// Where it was mined.
    pub block_number: u64,
    /// Where it was mined.
    pub block_hash: B256,
    /// The bundle.
    pub transaction_hash: B256,
    /// Index of its `UserOperationEvent` in the block.
    pub log_index: u64,
}

/// One fee level of `settled_getUserOperationGasPrice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GasPrice {
    /// `maxFeePerGas` for the op.
    pub max_fee_per_gas: U256,
    /// `maxPriorityFeePerGas` for the op.
    pub max_priority_fee_per_gas: U256,
}

/// `settled_getUserOperationGasPrice`'s answer: fees that get an op into the next bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GasPrices {
    /// The node's suggested priority fee.
    pub slow: GasPrice,
    /// A quarter above it.
    pub standard: GasPrice,
    /// Half above it.
    pub fast: GasPrice,
}

/// `eth_getUserOperationByHash`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserOperationByHash {
    /// The op.
    pub user_operation: UserOperation,
    /// Its EntryPoint.
    pub entry_point: ChecksummedAddress,
    /// Block, when mined.
    pub block_number: Option<U256>,
    /// Block, when mined.
    pub block_hash: Option<B256>,
    /// Bundle, when mined.
    pub transaction_hash: Option<B256>,
}

/// `eth_getUserOperationReceipt`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserOperationReceipt {
    /// The request hash.
    pub user_op_hash: B256,
    /// The EntryPoint.
    pub entry_point: ChecksummedAddress,
    /// The sender.
    pub sender: Address,
    /// The nonce.
    pub nonce: U256,
    /// The paymaster (zero address: none).
    pub paymaster: Address,
    /// What it paid.
    pub actual_gas_cost: U256,
    /// Gas it was charged for.
    pub actual_gas_used: U256,
    /// Whether the call succeeded.
    pub success: bool,
    /// The revert data, when it failed with some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Bytes>,
    /// The op's own logs.
    pub logs: Vec<Log>,
    /// The bundle's receipt.
    pub receipt: TransactionReceipt,
}

struct Shared {
    config: BundlerConfig,
    chain_id: u64,
    provider: DynProvider,
    sender: DynProvider,
    bundler_address: Address,
    simulator: Simulator,
    pool: Mutex<Mempool>,
    reputation: ReputationStore,
    mode: RwLock<BundlingMode>,
    head: ChainHead,
    pool_tree: sled::Tree,
    mined_tree: sled::Tree,
    /// `block hash ‖ op hash` of every indexed op: a reorg finds its blocks' ops directly.
    mined_by_block: sled::Tree,
    /// The last block whose ops, reputation and expiries were applied (durable).
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
    /// The same, durable: recorded before each bundle is broadcast, so a restarted bundler holds
    /// the ops of a bundle it may have sent until the chain has settled its nonce.
    sent: SentBundles,
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

/// A sent bundle's watcher: resolves to the mined transaction's hash.
type Submission = tokio::task::JoinHandle<Result<B256, BundlerError>>;

/// A bundle transaction sent and not yet mined, with every hash it was sent under.
struct SentBundle {
    tx: TransactionRequest,
    nonce: u64,
    max_fee: u128,
    priority_fee: u128,
    hashes: Vec<B256>,
    deadline: tokio::time::Instant,
}

impl SentBundle {
    /// Both fees up by at least 10%, or to `current` (the node's estimate) if higher, never
    /// above `ceiling`. False when the fees are at the ceiling already: nothing to resend.
    fn raise_fees(
        &mut self,
        current: Option<alloy::eips::eip1559::Eip1559Estimation>,
        ceiling: u128,
    ) -> bool {
        if self.max_fee >= ceiling {
            return false;
        }
        let max_fee = bump_fee(self.max_fee).max(current.map_or(0, |f| f.max_fee_per_gas));
        let priority_fee =
            bump_fee(self.priority_fee).max(current.map_or(0, |f| f.max_priority_fee_per_gas));
        self.max_fee = max_fee.min(ceiling);
        self.priority_fee = priority_fee.min(self.max_fee);
        true
    }
}

/// A replacement transaction's fee: at least 10% more (nodes refuse less), rounded up.
fn bump_fee(fee: u128) -> u128 {
    fee.saturating_add(fee.div_ceil(10).max(1))
}

/// What the second validation of a pooled op found.
struct Revalidated {
    signature_failed: bool,
    /// Contracts whose storage the validation touched.
    storage_of: std::collections::BTreeSet<Address>,
}

/// Validates `entry` again at the head (blocking): the op must still pass, and the code it ran
/// at acceptance must be unchanged (COD-010).
fn revalidate(
    sim: &Simulator,
    state: &BlockState,
    context: &BlockContext,
    entry: &PoolEntry,
) -> Result<Revalidated, SimError> {
    let overrides = match &entry.op.eip7702_auth {
        Some(auth) => SimOverrides::with_authorization(auth.clone()),
        None => SimOverrides::default(),
    };
    let outcome =
        sim.simulate_validation(state, context, entry.entry_point, &entry.packed(), &overrides)?;
    let seen = settled_sim::ValidationTrace {
        code_hashes: entry.code_hashes.clone(),
        ..Default::default()
    };
    let changed = changed_code(state, &seen)?;
    if !changed.is_empty() && !entry.code_hashes.is_empty() {
        return Err(SimError::Rejected {
            reason: format!("COD-010: code changed at {changed:?}"),
            inner: None,
        });
    }
    let storage_of = outcome
        .trace
        .entities
        .values()
        .flat_map(|trace| trace.storage.iter().filter(|s| !s.transient).map(|s| s.contract))
        .collect();
    Ok(Revalidated { signature_failed: outcome.account.signature_failed, storage_of })
}

/// Waits until every write made to `tree` so far is on disk. A blocking `flush` on a blocking
/// thread, not `flush_async`: concurrent `flush_async` calls can hang forever in sled 0.34
/// (spacejam/sled#1308, seen here under load). Concurrent flushes share one fsync, since a
/// flush returns at once when the log is already stable past its writes.
async fn make_durable(tree: &sled::Tree) -> Result<(), BundlerError> {
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || tree.flush())
        .await
        .map_err(storage_error)?
        .map(drop)
        .map_err(storage_error)
}

fn rpc_error(error: impl std::fmt::Display) -> BundlerError {
    BundlerError::Internal(format!("chain: {error}"))
}

impl Bundler {
    /// A bundler on `provider`'s chain that signs bundles with `signer`, persisting in `db`.
    /// Ops persisted by an earlier run are back in the pool (they are validated again before
    /// bundling).
    pub async fn new(
        config: BundlerConfig,
        provider: DynProvider,
        signer: PrivateKeySigner,
        db: &sled::Db,
    ) -> Result<Self, BundlerError> {
        let chain_id = provider.get_chain_id().await.map_err(rpc_error)?;
        let client_version = provider.get_client_version().await.unwrap_or_default();
        let account_reads = AccountReads::for_client(&client_version);
        info!(client = %client_version, ?account_reads, "reading chain state");
        let bundler_address = signer.address();
        // The nonce is read from the node for every bundle (no cache): a reorg can take a sent
        // bundle out of the chain, and its nonce with it.
        let sender = ProviderBuilder::default()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(EthereumWallet::from(signer))
            .connect_provider(provider.clone())
            .erased();
        let pool_tree = db.open_tree("bundler.pool").map_err(storage_error)?;
        let mined_tree = db.open_tree("bundler.mined").map_err(storage_error)?;
        let mined_by_block = db.open_tree("bundler.mined_by_block").map_err(storage_error)?;
        let cursor = ChainCursor::open(db, "bundler").map_err(storage_error)?;
        let sent = SentBundles::open(db).map_err(storage_error)?;
        let mut pool = Mempool::new(config.pool, config.params);
        let mut restored = 0;
        for item in pool_tree.iter() {
            let (_, value) = item.map_err(storage_error)?;
            match serde_json::from_slice::<PoolEntry>(&value) {
                Ok(entry) => {
                    // Accepted once under the limits of their time: not re-judged.
                    if pool.add(entry, usize::MAX).is_ok() {
                        restored += 1;
                    }
                }
                Err(error) => warn!(%error, "skipping an unreadable persisted UserOperation"),
            }
        }
        if restored > 0 {
            info!(restored, "UserOperations restored to the mempool");
        }
        let reputation = ReputationStore::open(db, config.reputation.clone(), config.params)
            .map_err(storage_error)?;
        let simulator =
            Simulator::new(config.limits, config.params.rules()).with_margins(EstimationMargins {
                pre_verification_overhead_gas: config.params.pre_verification_overhead_gas,
                ..EstimationMargins::default()
            });
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
                pool_tree,
                mined_tree,
                mined_by_block,
                cursor,
                bundling: tokio::sync::Mutex::new(()),
                unconfirmed: Mutex::new(Vec::new()),
                in_flight: Mutex::new(HashMap::new()),
                sent,
                next_nonce: Mutex::new(None),
                head_number: tokio::sync::watch::Sender::new(0),
                accepted: tokio::sync::Notify::new(),
            }),
        };
        bundler.hold_recorded_bundles();
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

    /// `eth_sendUserOperation`: sanity checks, first validation, mempool rules; the op's hash.
    pub async fn send(
        &self,
        op: UserOperation,
        entry_point: Address,
    ) -> Result<B256, BundlerError> {
        ::metrics::counter!(metrics::OPS_RECEIVED).increment(1);
        let result = self.accept(op, entry_point).await;
        match &result {
            Ok(_) => ::metrics::counter!(metrics::OPS_ACCEPTED).increment(1),
            Err(error) => {
                let code = crate::rpc::error_code(error).to_string();
                ::metrics::counter!(metrics::OPS_REJECTED, "code" => code).increment(1);
            }
        }
        ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
        result
    }

    async fn accept(&self, op: UserOperation, entry_point: Address) -> Result<B256, BundlerError> {
        let version = self.version(entry_point)?;
        let packed = op.pack()?;
        let (state, context) = self.head().await?;
        self.sanity_check(&op, &packed, &context)?;
        let overrides = match &op.eip7702_auth {
            Some(auth) => SimOverrides::with_authorization(auth.clone()),
            None => SimOverrides::default(),
        };
        let delegate = op.eip7702_auth.as_ref().map(|a| a.address);
        let hash = packed.hash(version, self.shared.chain_id, delegate);
        let paymaster = packed.paymaster();
        let started = std::time::Instant::now();
        let validated = {
            let (state, packed, overrides) = (state.clone(), packed.clone(), overrides.clone());
            self.simulate(move |sim| {
                sim.simulate_validation(&state, &context, version, &packed, &overrides)
            })
            .await?
        };
        ::metrics::histogram!(metrics::VALIDATION_SECONDS).record(started.elapsed().as_secs_f64());
        let outcome = validated.map_err(|e| BundlerError::from_sim(e, paymaster))?;
        self.check_outcome(&outcome, &context, paymaster)?;
        let staked = |info: &settled_sim::StakeInfo| {
            self.shared.config.params.is_staked(info.stake, info.unstake_delay_sec)
        };
        let entry = PoolEntry {
            hash,
            entry_point: version,
            op,
            staked: StakedEntities {
                sender: staked(&outcome.sender_info),
                factory: staked(&outcome.factory_info),
                paymaster: staked(&outcome.paymaster_info),
            },
            code_hashes: outcome.trace.code_hashes.clone(),
            valid_until: outcome.account.valid_until.min(outcome.paymaster.valid_until),
            accepted_at_block: context.number,
        };
        let value = serde_json::to_vec(&entry).map_err(storage_error)?;
        let entities: Vec<(&'static str, Address, bool)> = entry.entities().collect();
        let charged = entry.charged_entities();
        let deposit = match paymaster {
            Some(paymaster) => Some((paymaster, self.deposit_of(version, paymaster).await?)),
            None => None,
        };
        let displaced = {
            let mut pool = self.shared.pool.lock().map_err(storage_error)?;
            if let Some((paymaster, deposit)) = deposit {
                // EREP-010: the deposit covers every pooled op the paymaster pays for.
                let committed =
                    pool.paymaster_commitment(version, paymaster, (packed.sender, packed.nonce));
                if deposit < committed.saturating_add(packed.max_cost()) {
                    return Err(BundlerError::PaymasterDepositTooLow(paymaster));
                }
            }
            self.check_reputation(&pool, version, &entities)?;
            let allowance = match entry.op.paymaster {
                Some(paymaster) => {
                    self.shared.reputation.read(|r| r.unstaked_allowance(version, paymaster))
                }
                None => usize::MAX,
            };
            pool.add(entry, allowance)
                .map_err(|e| BundlerError::from_pool(e, &self.shared.config.params))?
        };
        self.charge(version, &charged, Reputation::seen)?;
        for old in &displaced {
            self.shared.pool_tree.remove(old.hash).map_err(storage_error)?;
            // GREP-050: a replaced op's entities are charged once, for the op that replaced it.
            if old.op.sender == packed.sender && old.op.nonce == packed.nonce {
                self.charge(version, &old.charged_entities(), Reputation::unseen)?;
            }
        }
        // Persisted before the hash is returned: an accepted op survives a crash.
        self.shared.pool_tree.insert(hash, value).map_err(storage_error)?;
        make_durable(&self.shared.pool_tree).await?;
        self.shared.accepted.notify_one();
        debug!(%hash, sender = %packed.sender, "UserOperation accepted");
        Ok(hash)
    }

    /// Applies `change` (seen, unseen) to each of `entities`' counters.
    fn charge(
        &self,
        version: EntryPointVersion,
        entities: &[Address],
        change: fn(&mut Reputation, EntryPointVersion, Address) -> ReputationCounts,
    ) -> Result<(), BundlerError> {
        for address in entities {
            self.shared.reputation.update(version, *address, change).map_err(storage_error)?;
        }
        Ok(())
    }

    /// GREP-010 and GREP-020 for an op's `entities`: none banned, and a throttled one has fewer
    /// than `THROTTLED_ENTITY_MEMPOOL_COUNT` ops in the pool.
    fn check_reputation(
        &self,
        pool: &Mempool,
        version: EntryPointVersion,
        entities: &[(&'static str, Address, bool)],
    ) -> Result<(), BundlerError> {
        for &(entity, address, _) in entities {
            let status = self.shared.reputation.read(|r| r.status(version, address));
            let refused = match status {
                ReputationStatus::Ok => false,
                ReputationStatus::Banned => true,
                ReputationStatus::Throttled => {
                    pool.referencing(version, address).len()
                        >= self.shared.config.params.throttled_entity_mempool_count
                }
            };
            if refused {
                return Err(BundlerError::Reputation { entity, address, status: status.as_str() });
            }
        }
        Ok(())
    }

    fn sanity_check(
        &self,
        op: &UserOperation,
        packed: &PackedUserOperation,
        context: &BlockContext,
    ) -> Result<(), BundlerError> {
        let invalid = |m: String| Err(BundlerError::InvalidField(m));
        let params = &self.shared.config.params;
        let max_verification = params.max_verification_gas;
        if packed.verification_gas_limit() > u128::from(max_verification) {
            return invalid(format!("verificationGasLimit above {max_verification}"));
        }
        if let Some((pm_verification, _)) = packed.paymaster_gas_limits()
            && pm_verification > u128::from(max_verification)
        {
            return invalid(format!("paymasterVerificationGasLimit above {max_verification}"));
        }
        let required = pre_verification_gas(
            packed,
            op.eip7702_auth.is_some(),
            params.pre_verification_overhead_gas,
        );
        if packed.preVerificationGas < U256::from(required) {
            return invalid(format!(
                "preVerificationGas {} below the required {required}",
                packed.preVerificationGas
            ));
        }
        if packed.call_gas_limit() < u128::from(settled_sim::MIN_CALL_GAS_LIMIT) {
            return invalid(format!("callGasLimit below {}", settled_sim::MIN_CALL_GAS_LIMIT));
        }
        if packed.max_priority_fee_per_gas() > packed.max_fee_per_gas() {
            return invalid("maxPriorityFeePerGas above maxFeePerGas".into());
        }
        if packed.max_fee_per_gas() < u128::from(context.base_fee) {
            return invalid(format!(
                "maxFeePerGas {} below the block's base fee {}",
                packed.max_fee_per_gas(),
                context.base_fee
            ));
        }
        Ok(())
    }

    fn check_outcome(
        &self,
        outcome: &ValidationOutcome,
        context: &BlockContext,
        paymaster: Option<Address>,
    ) -> Result<(), BundlerError> {
        if outcome.account.signature_failed {
            return Err(BundlerError::InvalidSignature);
        }
        if outcome.paymaster.signature_failed {
            return Err(BundlerError::EntryPointRejected {
                reason: "AA34 signature error".into(),
                paymaster,
            });
        }
        for (data, who) in [(&outcome.account, None), (&outcome.paymaster, paymaster)] {
            let expires_soon = data.valid_until < context.timestamp + MIN_VALIDITY_SECONDS;
            if data.valid_after > context.timestamp || expires_soon {
                return Err(BundlerError::OutOfTimeRange {
                    valid_after: data.valid_after,
                    valid_until: data.valid_until,
                    paymaster: who,
                });
            }
            if data.aggregator.is_some() {
                return Err(BundlerError::InvalidField("aggregators are not supported".into()));
            }
        }
        Ok(())
    }

    /// `eth_estimateUserOperationGas`.
    pub async fn estimate(
        &self,
        op: UserOperation,
        entry_point: Address,
        state_override: Option<StateOverride>,
    ) -> Result<GasEstimate, BundlerError> {
        let version = self.version(entry_point)?;
        let packed = op.pack()?;
        let paymaster = packed.paymaster();
        let (state, context) = self.head().await?;
        let mut overrides = SimOverrides::with_state(state_override.unwrap_or_default());
        overrides.eip7702_auth = op.eip7702_auth.clone();
        self.simulate(move |sim| sim.estimate_gas(&state, &context, version, &packed, &overrides))
            .await?
            .map_err(|e| BundlerError::from_sim(e, paymaster))
    }

    /// `settled_getUserOperationGasPrice`: the node's priority fee at 100/125/150%, each with a
    /// max fee of twice the head's base fee on top (room for six full blocks of base-fee rise),
    /// never below what the bundler itself requires.
    pub async fn gas_prices(&self) -> Result<GasPrices, BundlerError> {
        let (_, context) = self.head().await?;
        let priority =
            self.shared.provider.get_max_priority_fee_per_gas().await.map_err(rpc_error)?;
        let level = |percent: u128| {
            let priority = priority.saturating_mul(percent) / 100;
            GasPrice {
                max_fee_per_gas: U256::from(
                    u128::from(context.base_fee).saturating_mul(2).saturating_add(priority),
                ),
                max_priority_fee_per_gas: U256::from(priority),
            }
        };
        Ok(GasPrices { slow: level(100), standard: level(125), fast: level(150) })
    }

    /// `eth_getUserOperationByHash`.
    pub async fn op_by_hash(
        &self,
        hash: B256,
    ) -> Result<Option<UserOperationByHash>, BundlerError> {
        if let Some(entry) = self.shared.pool.lock().map_err(storage_error)?.get(&hash) {
            return Ok(Some(UserOperationByHash {
                user_operation: entry.op.clone(),
                entry_point: entry.entry_point.canonical_address().into(),
                block_number: None,
                block_hash: None,
                transaction_hash: None,
            }));
        }
        let Some(mined) = self.mined(hash)? else { return Ok(None) };
        let op = match mined.op.clone() {
            Some(op) => Some(op),
            None => self.op_from_bundle(&mined).await?,
        };
        Ok(op.map(|user_operation| UserOperationByHash {
            user_operation,
            entry_point: mined.entry_point.into(),
            block_number: Some(U256::from(mined.block_number)),
            block_hash: Some(mined.block_hash),
            transaction_hash: Some(mined.transaction_hash),
        }))
    }

    /// The op of a bundle someone else sent: from the transaction's `handleOps` input.
    async fn op_from_bundle(&self, mined: &MinedOp) -> Result<Option<UserOperation>, BundlerError> {
        let Some(tx) = self
            .shared
            .provider
            .get_transaction_by_hash(mined.transaction_hash)
            .await
            .map_err(rpc_error)?
        else {
            return Ok(None);
        };
        let Ok(call) = v07::IEntryPoint::handleOpsCall::abi_decode(tx.inner.input()) else {
            return Ok(None);
        };
        let authorization = |sender: Address| {
            tx.inner.authorization_list().and_then(|list| {
                list.iter().find(|a| a.recover_authority().ok() == Some(sender)).cloned()
            })
        };
        Ok(call
            .ops
            .iter()
            .find(|op| op.sender == mined.sender && op.nonce == mined.nonce)
            .map(|op| UserOperation::unpack(op, authorization(op.sender))))
    }

    fn mined(&self, hash: B256) -> Result<Option<MinedOp>, BundlerError> {
        let Some(value) = self.shared.mined_tree.get(hash).map_err(storage_error)? else {
            return Ok(None);
        };
        serde_json::from_slice(&value).map(Some).map_err(storage_error)
    }

    /// `eth_getUserOperationReceipt`.
    pub async fn receipt(&self, hash: B256) -> Result<Option<UserOperationReceipt>, BundlerError> {
        let Some(mined) = self.mined(hash)? else { return Ok(None) };
        let Some(receipt) = self
            .shared
            .provider
            .get_transaction_receipt(mined.transaction_hash)
            .await
            .map_err(rpc_error)?
        else {
            return Ok(None);
        };
        let logs = receipt.inner.logs();
        let position = logs.iter().position(|l| l.log_index == Some(mined.log_index));
        let Some(position) = position else { return Ok(None) };
        // The op's logs: after the previous op's event (or BeforeExecution), up to its own.
        let boundary = |log: &Log| {
            log.address() == mined.entry_point
                && matches!(
                    log.topics().first(),
                    Some(&v07::IEntryPoint::UserOperationEvent::SIGNATURE_HASH)
                        | Some(&v07::IEntryPoint::BeforeExecution::SIGNATURE_HASH)
                )
        };
        let start = logs[..position].iter().rposition(boundary).map_or(0, |i| i + 1);
        let own: Vec<Log> = logs[start..position].to_vec();
        let reason = own.iter().find_map(|log| {
            let decoded = log.log_decode::<v07::IEntryPoint::UserOperationRevertReason>().ok()?;
            (decoded.inner.userOpHash == hash).then(|| decoded.inner.data.revertReason.clone())
        });
        Ok(Some(UserOperationReceipt {
            user_op_hash: hash,
            entry_point: mined.entry_point.into(),
            sender: mined.sender,
            nonce: mined.nonce,
            paymaster: mined.paymaster,
            actual_gas_cost: mined.actual_gas_cost,
            actual_gas_used: mined.actual_gas_used,
            success: mined.success,
            reason,
            logs: own,
            receipt,
        }))
    }

    /// `debug_bundler_dumpMempool`.
    pub fn dump_mempool(&self, entry_point: Address) -> Result<Vec<UserOperation>, BundlerError> {
        let version = self.version(entry_point)?;
        let pool = self.shared.pool.lock().map_err(storage_error)?;
        Ok(pool.best(version, 0).iter().map(|e| e.op.clone()).collect())
    }

    /// `debug_bundler_clearMempool` / `clearState`.
    pub fn clear_mempool(&self) -> Result<(), BundlerError> {
        self.shared.pool.lock().map_err(storage_error)?.clear();
        self.shared.pool_tree.clear().map_err(storage_error)
    }

    /// `debug_bundler_addUserOps`: puts `ops` in `entry_point`'s mempool without validating
    /// them (the mempool rules still apply); they are validated before bundling like any other.
    pub async fn add_unvalidated(
        &self,
        ops: Vec<UserOperation>,
        entry_point: Address,
    ) -> Result<(), BundlerError> {
        let version = self.version(entry_point)?;
        let head = self.shared.provider.get_block_number().await.map_err(rpc_error)?;
        for op in ops {
            let packed = op.pack()?;
            let delegate = op.eip7702_auth.as_ref().map(|a| a.address);
            let hash = packed.hash(version, self.shared.chain_id, delegate);
            let entry = PoolEntry {
                hash,
                entry_point: version,
                op,
                staked: StakedEntities::default(),
                code_hashes: Default::default(),
                valid_until: u64::MAX,
                accepted_at_block: head,
            };
            let value = serde_json::to_vec(&entry).map_err(storage_error)?;
            let displaced = self
                .shared
                .pool
                .lock()
                .map_err(storage_error)?
                .add(entry, usize::MAX)
                .map_err(BundlerError::Mempool)?;
            for old in displaced {
                self.shared.pool_tree.remove(old.hash).map_err(storage_error)?;
            }
            self.shared.pool_tree.insert(hash, value).map_err(storage_error)?;
        }
        make_durable(&self.shared.pool_tree).await?;
        ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
        self.shared.accepted.notify_one();
        Ok(())
    }

    /// `debug_bundler_setReputation`: sets counters; an entity they ban leaves the pool.
    pub fn set_reputation(
        &self,
        entries: &[(Address, ReputationCounts)],
        entry_point: Address,
    ) -> Result<(), BundlerError> {
        let version = self.version(entry_point)?;
        for &(address, counts) in entries {
            let status = self
                .shared
                .reputation
                .update(version, address, |r, ep, a| r.set(ep, a, counts))
                .map_err(storage_error)?;
            if status == ReputationStatus::Banned {
                self.drop_banned(version, address)?;
            }
        }
        Ok(())
    }

    /// `debug_bundler_dumpReputation`: every entity seen with its counters and status.
    pub fn dump_reputation(
        &self,
        entry_point: Address,
    ) -> Result<Vec<(Address, ReputationCounts, ReputationStatus)>, BundlerError> {
        let version = self.version(entry_point)?;
        Ok(self.shared.reputation.read(|r| r.dump(version)))
    }

    /// `debug_bundler_clearReputation` (and `clearState`).
    pub fn clear_reputation(&self) -> Result<(), BundlerError> {
        self.shared.reputation.clear().map_err(storage_error)
    }

    /// `debug_bundler_getStakeStatus`: `address`'s stake at `entry_point` and whether it counts
    /// as staked (ERC-7562 `MIN_STAKE_VALUE`, `MIN_UNSTAKE_DELAY`).
    pub async fn stake_status(
        &self,
        address: Address,
        entry_point: Address,
    ) -> Result<StakeStatus, BundlerError> {
        self.version(entry_point)?;
        let info = v07::IEntryPoint::new(entry_point, &self.shared.provider)
            .getDepositInfo(address)
            .call()
            .await
            .map_err(rpc_error)?;
        let (stake, delay) = (U256::from(info.stake), U256::from(info.unstakeDelaySec));
        Ok(StakeStatus {
            stake_info: StakeInfo { addr: address, stake, unstake_delay_sec: delay },
            is_staked: self.shared.config.params.is_staked(stake, delay),
        })
    }

    /// `address`'s deposit at `version`'s EntryPoint, at the chain head.
    async fn deposit_of(
        &self,
        version: EntryPointVersion,
        address: Address,
    ) -> Result<U256, BundlerError> {
        let info = v07::IEntryPoint::new(version.canonical_address(), &self.shared.provider)
            .getDepositInfo(address)
            .call()
            .await
            .map_err(rpc_error)?;
        Ok(U256::from(info.deposit))
    }

    /// Indexes the `UserOperationEvent`s in `logs` and takes those ops out of the pool.
    fn index_logs(&self, logs: &[Log]) -> Result<usize, BundlerError> {
        let mut indexed = 0;
        for log in logs {
            let Some(version) = EntryPointVersion::from_address(log.address()) else { continue };
            let Ok(event) = log.log_decode::<v07::IEntryPoint::UserOperationEvent>() else {
                continue;
            };
            let (Some(block_number), Some(block_hash), Some(transaction_hash), Some(log_index)) =
                (log.block_number, log.block_hash, log.transaction_hash, log.log_index)
            else {
                continue;
            };
            let event = event.inner.data;
            let hash = event.userOpHash;
            let pooled = self.shared.pool.lock().map_err(storage_error)?.remove(&hash);
            if let Some(entry) = &pooled {
                // opsIncluded counts only ops this bundler saw (and so counted in opsSeen).
                for (_, address, _) in entry.entities() {
                    self.shared
                        .reputation
                        .update(version, address, Reputation::included)
                        .map_err(storage_error)?;
                }
            }
            let op = match pooled {
                Some(entry) => Some(entry.op.clone()),
                None => self.mined(hash)?.and_then(|m| m.op),
            };
            let mined = MinedOp {
                hash,
                entry_point: version.canonical_address(),
                op,
                sender: event.sender,
                nonce: event.nonce,
                paymaster: event.paymaster,
                actual_gas_cost: event.actualGasCost,
                actual_gas_used: event.actualGasUsed,
                success: event.success,
                block_number,
                block_hash,
                transaction_hash,
                log_index,
            };
            let value = serde_json::to_vec(&mined).map_err(storage_error)?;
            self.shared.mined_tree.insert(hash, value).map_err(storage_error)?;
            self.shared
                .mined_by_block
                .insert([block_hash.as_slice(), hash.as_slice()].concat(), &[])
                .map_err(storage_error)?;
            self.shared.pool_tree.remove(hash).map_err(storage_error)?;
            ::metrics::counter!(metrics::OPS_MINED).increment(1);
            indexed += 1;
        }
        Ok(indexed)
    }

    /// Ops mined in blocks a reorg removed go back to the pool (and out of the index).
    fn unindex_blocks(&self, removed: &[B256]) -> Result<usize, BundlerError> {
        let mut requeued = 0;
        let mut keys = Vec::new();
        for block in removed {
            for item in self.shared.mined_by_block.scan_prefix(block) {
                keys.push(item.map_err(storage_error)?.0);
            }
        }
        for key in keys {
            self.shared.mined_by_block.remove(&key).map_err(storage_error)?;
            let Some(hash) = key.get(32..).map(B256::from_slice) else { continue };
            let Some(value) = self.shared.mined_tree.get(hash).map_err(storage_error)? else {
                continue;
            };
            let Ok(mined) = serde_json::from_slice::<MinedOp>(&value) else { continue };
            // Indexed again in a block that stayed: not this reorg's.
            if !removed.contains(&mined.block_hash) {
                continue;
            }
            self.shared.mined_tree.remove(hash).map_err(storage_error)?;
            let (Some(op), Some(version)) =
                (mined.op, EntryPointVersion::from_address(mined.entry_point))
            else {
                continue;
            };
            let entry = PoolEntry {
                hash: mined.hash,
                entry_point: version,
                op,
                staked: StakedEntities::default(),
                code_hashes: Default::default(),
                valid_until: u64::MAX,
                accepted_at_block: mined.block_number,
            };
            let value = serde_json::to_vec(&entry).map_err(storage_error)?;
            if self.shared.pool.lock().map_err(storage_error)?.add(entry, usize::MAX).is_ok() {
                self.shared.pool_tree.insert(mined.hash, value).map_err(storage_error)?;
                requeued += 1;
            }
        }
        Ok(requeued)
    }

    /// Builds, checks and submits one bundle per EntryPoint with pending ops, and waits for
    /// each to be mined. Returns the mined bundles' transaction hashes.
    pub async fn send_bundles(&self) -> Result<Vec<B256>, BundlerError> {
        let mut mined = Vec::new();
        for submission in self.start_bundles().await? {
            mined.push(
                submission
                    .await
                    .map_err(|e| BundlerError::Internal(format!("bundle submission: {e}")))??,
            );
        }
        Ok(mined)
    }

    /// Builds, checks and sends one bundle per EntryPoint with pending ops not already in a sent
    /// bundle; each is then watched until mined (fee bumps included) by its own task. Bundles
    /// are pipelined: the next one goes out while earlier ones wait for their block.
    async fn start_bundles(&self) -> Result<Vec<Submission>, BundlerError> {
        let _one_at_a_time = self.shared.bundling.lock().await;
        let mut started = Vec::new();
        for version in self.shared.config.entry_points.clone() {
            if let Some(submission) = self.send_bundle(version).await? {
                started.push(submission);
            }
        }
        Ok(started)
    }

    async fn send_bundle(
        &self,
        version: EntryPointVersion,
    ) -> Result<Option<Submission>, BundlerError> {
        if self.pool_len() == 0 {
            return Ok(None);
        }
        let building = std::time::Instant::now();
        let (state, context) = self.head().await?;
        let candidates: Vec<Arc<PoolEntry>> = {
            let pool = self.shared.pool.lock().map_err(storage_error)?;
            let in_flight = self.shared.in_flight.lock().map_err(storage_error)?;
            // An op of a sender with an op in a sent bundle would fail its nonce check until
            // that bundle is mined: it waits.
            pool.best(version, context.base_fee)
                .into_iter()
                .filter(|e| {
                    !in_flight.contains_key(&e.hash)
                        && !in_flight.values().any(|sender| *sender == e.op.sender)
                })
                .collect()
        };
        if candidates.is_empty() {
            return Ok(None);
        }
        // Pick: one op per sender, within the bundle's gas, not expiring.
        let mut picked = Vec::new();
        let mut senders = std::collections::HashSet::new();
        let mut throttled_uses: HashMap<Address, usize> = HashMap::new();
        let mut gas = 0u128;
        'candidates: for entry in candidates {
            if picked.len() >= self.shared.config.max_bundle_ops {
                break;
            }
            if entry.valid_until < context.timestamp + MIN_VALIDITY_SECONDS {
                self.drop_op(entry.hash, "expired")?;
                continue;
            }
            // GREP-010 (banned: out of the pool) and GREP-020 (throttled: a few per bundle).
            for (_, address, _) in entry.entities() {
                match self.shared.reputation.read(|r| r.status(version, address)) {
                    ReputationStatus::Ok => {}
                    ReputationStatus::Banned => {
                        self.drop_op(entry.hash, "an entity is banned")?;
                        continue 'candidates;
                    }
                    ReputationStatus::Throttled => {
                        let uses = throttled_uses.entry(address).or_default();
                        if *uses >= THROTTLED_ENTITY_BUNDLE_COUNT {
                            continue 'candidates;
                        }
                        *uses += 1;
                    }
                }
            }
            let packed = entry.packed();
            let op_gas = packed.total_gas_limit();
            if gas + op_gas > u128::from(self.shared.config.max_bundle_gas)
                || !senders.insert(packed.sender)
            {
                continue;
            }
            gas += op_gas;
            picked.push(entry);
        }
        // Second validation, against the head, with COD-010; on both cores (ops are independent).
        let revalidate_all = |entries: Vec<Arc<PoolEntry>>| {
            let state = state.clone();
            self.simulate(move |sim| {
                entries
                    .iter()
                    .map(|entry| revalidate(sim, &state, &context, entry))
                    .collect::<Vec<Result<Revalidated, SimError>>>()
            })
        };
        let half = picked.len().div_ceil(2);
        let (first, second) = tokio::join!(
            revalidate_all(picked[..half].to_vec()),
            revalidate_all(picked[half..].to_vec())
        );
        let checks = first?.into_iter().chain(second?);
        // No op may touch the storage of another sender in the bundle (its validation could
        // change when that sender's op runs first): it waits for a later bundle.
        let senders: std::collections::HashSet<Address> =
            picked.iter().map(|e| e.op.sender).collect();
        let mut bundle = Vec::new();
        for (entry, check) in picked.into_iter().zip(checks) {
            match check {
                Ok(checked) if checked.signature_failed => {
                    self.drop_op(entry.hash, "signature no longer valid")?
                }
                Ok(checked)
                    if checked
                        .storage_of
                        .iter()
                        .any(|c| *c != entry.op.sender && senders.contains(c)) =>
                {
                    debug!(hash = %entry.hash, "touches another bundled sender's storage; deferred");
                }
                Ok(_) => bundle.push(entry),
                Err(SimError::Fork(error)) => {
                    return Err(BundlerError::Internal(error.to_string()));
                }
                Err(error) => {
                    // The op's charges are taken back and only the culprit is charged
                    // (EREP-015: never the paymaster for the account's or factory's failure).
                    if let SimError::Rejected { reason, .. } = &error {
                        self.charge(version, &entry.charged_entities(), Reputation::unseen)?;
                        self.charge(version, &[culprit(&entry, reason)], Reputation::seen)?;
                    }
                    self.drop_op(entry.hash, &error.to_string())?
                }
            }
        }
        let revalidated = building.elapsed();
        // Third validation: the whole handleOps in revm with the EntryPoint's real code (its gas
        // is the transaction's); an op the EntryPoint rejects is dropped and the rest run again.
        let beneficiary = self.shared.config.beneficiary.unwrap_or(self.shared.bundler_address);
        for _ in 0..MAX_BUNDLE_RETRIES {
            if bundle.is_empty() {
                return Ok(None);
            }
            let candidate = Bundle {
                version,
                ops: bundle.iter().map(|e| e.packed()).collect(),
                beneficiary,
                bundler: self.shared.bundler_address,
                authorizations: bundle
                    .iter()
                    .filter_map(|e| e.op.eip7702_auth.clone().map(|a| (e.op.sender, a)))
                    .collect(),
            };
            let outcome = {
                let (state, candidate) = (state.clone(), candidate.clone());
                self.simulate(move |sim| sim.simulate_bundle(&state, &context, &candidate))
                    .await?
                    .map_err(|e| BundlerError::Internal(format!("bundle simulation: {e}")))?
            };
            let gas_spent = match outcome {
                BundleOutcome::Included { gas_spent, .. } => gas_spent,
                BundleOutcome::OpFailed { index, reason } if index < bundle.len() => {
                    let entry = bundle.remove(index);
                    self.drop_op(entry.hash, &reason)?;
                    // GREP-040: it passed the second validation, so its entity is banned
                    // (GREP-010: with every op that uses it).
                    let culprit = culprit(&entry, &reason);
                    self.ban(version, culprit, &reason)?;
                    bundle.retain(|e| !e.references(culprit));
                    continue;
                }
                BundleOutcome::OpFailed { reason, .. } => {
                    return Err(BundlerError::Internal(format!("bundle rejected: {reason}")));
                }
                BundleOutcome::Reverted(data) => {
                    return Err(BundlerError::Internal(format!("bundle reverts: {data}")));
                }
            };
            // Headroom over revm's figure for the EntryPoint's 63/64 checks, and at least the
            // ops' limits: before each call the EntryPoint requires gas for the whole callGasLimit
            // and paymasterPostOpGasLimit (`AA95 out of gas`), however little the op then uses.
            let limits: u128 = candidate.ops.iter().map(|op| op.total_gas_limit()).sum();
            let limits = u64::try_from(limits).unwrap_or(u64::MAX);
            let gas_limit = (gas_spent + gas_spent / 5).max(limits).min(context.gas_limit);
            let mut tx = TransactionRequest::default()
                .with_from(self.shared.bundler_address)
                .with_to(version.canonical_address())
                .with_input(candidate.calldata())
                .with_gas_limit(gas_limit);
            if !candidate.authorizations.is_empty() {
                tx = tx.with_authorization_list(
                    candidate.authorizations.into_iter().map(|(_, a)| a).collect(),
                );
            }
            let built = building.elapsed();
            ::metrics::histogram!(metrics::BUNDLE_BUILD_SECONDS).record(built.as_secs_f64());
            info!(
                ops = bundle.len(),
                ?version,
                revalidation_ms = revalidated.as_millis() as u64,
                build_ms = built.as_millis() as u64,
                "bundle built"
            );
            let ops: Vec<(B256, Address)> = bundle.iter().map(|e| (e.hash, e.op.sender)).collect();
            let sent = self.send_first(tx, &ops).await?;
            if let Ok(mut in_flight) = self.shared.in_flight.lock() {
                in_flight.extend(ops.iter().copied());
            }
            let bundler = self.clone();
            return Ok(Some(tokio::spawn(async move {
                let nonce = sent.nonce;
                let result = bundler.until_mined(sent).await;
                if let Ok(mut in_flight) = bundler.shared.in_flight.lock() {
                    for (hash, _) in &ops {
                        in_flight.remove(hash);
                    }
                }
                bundler.shared.sent.remove_if(nonce, &ops);
                let (hash, receipt) = result.inspect_err(|error| {
                    warn!(%error, "bundle not mined; its ops stay in the mempool");
                })?;
                bundler.record_mined(hash, &receipt)?;
                Ok(hash)
            })));
        }
        Ok(None)
    }

    /// Accounts for a mined bundle: metrics, its ops indexed, its block remembered (a later
    /// block at that height means it was reorged out).
    fn record_mined(
        &self,
        hash: B256,
        receipt: &alloy::rpc::types::TransactionReceipt,
    ) -> Result<(), BundlerError> {
        if receipt.status() {
            ::metrics::counter!(metrics::BUNDLES_MINED).increment(1);
            ::metrics::histogram!(metrics::BUNDLE_GAS).record(receipt.gas_used as f64);
        } else {
            ::metrics::counter!(metrics::BUNDLES_FAILED).increment(1);
            warn!(%hash, "bundle reverted");
        }
        self.index_logs(receipt.inner.logs())?;
        if let (Some(number), Some(block)) = (receipt.block_number, receipt.block_hash)
            && let Ok(mut unconfirmed) = self.shared.unconfirmed.lock()
        {
            unconfirmed.push((number, block));
        }
        Ok(())
    }

    /// Sends a bundle transaction carrying `ops` with the next nonce (after any bundle still
    /// pending) at the node's fee estimate, recorded durably first: the start of its
    /// [`Bundler::until_mined`].
    async fn send_first(
        &self,
        tx: TransactionRequest,
        ops: &[(B256, Address)],
    ) -> Result<SentBundle, BundlerError> {
        let provider = &self.shared.provider;
        let pending = provider
            .get_transaction_count(self.shared.bundler_address)
            .pending()
            .await
            .map_err(rpc_error)?;
        let local = self.shared.next_nonce.lock().map_err(storage_error)?.unwrap_or_default();
        let nonce = pending.max(local);
        let fees = provider.estimate_eip1559_fees().await.map_err(rpc_error)?;
        let max_fee = fees.max_fee_per_gas.min(self.shared.config.max_fee_per_gas);
        let mut sent = SentBundle {
            tx: tx.with_nonce(nonce),
            nonce,
            max_fee,
            priority_fee: fees.max_priority_fee_per_gas.min(max_fee),
            hashes: Vec::new(),
            deadline: tokio::time::Instant::now() + self.shared.config.inclusion_timeout,
        };
        self.shared.sent.record(nonce, ops).await.map_err(storage_error)?;
        if let Err(error) = self.send_attempt(&mut sent, true).await {
            // Perhaps sent after all (a transport error): hold its ops until the nonce settles.
            self.hold_until_settled(nonce, ops.to_vec());
            return Err(error);
        }
        *self.shared.next_nonce.lock().map_err(storage_error)? = Some(nonce + 1);
        Ok(sent)
    }

    /// Holds `ops` (out of new bundles) until the chain has settled our transaction at `nonce`:
    /// mined (the follower then takes its ops out of the mempool), or nothing pending at that
    /// nonce (never broadcast, or dropped: they are bundled again), or the inclusion timeout.
    fn hold_until_settled(&self, nonce: u64, ops: Vec<(B256, Address)>) {
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            in_flight.extend(ops.iter().copied());
        }
        let bundler = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + bundler.shared.config.inclusion_timeout;
            let provider = &bundler.shared.provider;
            let address = bundler.shared.bundler_address;
            while tokio::time::Instant::now() < deadline {
                let latest = provider.get_transaction_count(address).latest().await;
                let pending = provider.get_transaction_count(address).pending().await;
                match (latest, pending) {
                    (Ok(latest), Ok(pending)) if latest > nonce || pending <= nonce => break,
                    _ => tokio::time::sleep(RECEIPT_POLL_FALLBACK).await,
                }
            }
            if let Ok(mut in_flight) = bundler.shared.in_flight.lock() {
                for (hash, _) in &ops {
                    in_flight.remove(hash);
                }
            }
            bundler.shared.sent.remove_if(nonce, &ops);
            debug!(nonce, ops = ops.len(), "bundle nonce settled; its ops released");
        });
    }

    /// After a restart: the bundles recorded as (perhaps) sent hold their ops until settled.
    fn hold_recorded_bundles(&self) {
        for (nonce, sent) in self.shared.sent.all() {
            info!(nonce, ops = sent.ops.len(), "a bundle sent before the restart: its ops wait");
            self.hold_until_settled(nonce, sent.ops);
        }
    }

    /// Waits until `sent` is mined. One not mined within `fee_bump_after_blocks` blocks is
    /// replaced (same nonce) with both fees raised by at least 10%, or to the node's current
    /// estimate if higher, up to `max_fee_per_gas`; the wait ends at `inclusion_timeout`. The
    /// mined transaction's hash and receipt.
    ///
    /// Blocks are counted from the chain's real head when the bundle was sent, not from the
    /// follower's position: a follower replaying old blocks after a restart reports many
    /// "new" blocks in a fraction of a second, none of which says the bundle was passed over.
    async fn until_mined(
        &self,
        mut sent: SentBundle,
    ) -> Result<(B256, alloy::rpc::types::TransactionReceipt), BundlerError> {
        let provider = &self.shared.provider;
        let config = &self.shared.config;
        // Receipts are looked for when the chain follower reports a block (or every second), not
        // in a tight loop: dozens of bundles can be in flight.
        let mut heads = self.shared.head_number.subscribe();
        loop {
            let sent_at = provider.get_block_number().await.map_err(rpc_error)?;
            loop {
                for hash in &sent.hashes {
                    if let Some(receipt) =
                        provider.get_transaction_receipt(*hash).await.map_err(rpc_error)?
                    {
                        return Ok((*hash, receipt));
                    }
                }
                if tokio::time::Instant::now() >= sent.deadline {
                    ::metrics::counter!(metrics::BUNDLES_FAILED).increment(1);
                    // Its nonce may be free again: ask the node next time.
                    self.forget_nonce();
                    return Err(BundlerError::Internal(format!(
                        "bundle not mined within {:?} (sent {:?})",
                        config.inclusion_timeout, sent.hashes
                    )));
                }
                if self.head_number(&mut heads).await? >= sent_at + config.fee_bump_after_blocks {
                    break;
                }
                tokio::select! {
                    _ = heads.changed() => {}
                    _ = tokio::time::sleep(RECEIPT_POLL_FALLBACK) => {}
                }
            }
            if !sent.raise_fees(provider.estimate_eip1559_fees().await.ok(), config.max_fee_per_gas)
            {
                // At the ceiling: wait for the chain (or the deadline), never pay more.
                warn!(nonce = sent.nonce, max_fee = sent.max_fee, "bundle at the fee ceiling");
                tokio::select! {
                    _ = heads.changed() => {}
                    _ = tokio::time::sleep(RECEIPT_POLL_FALLBACK) => {}
                }
                continue;
            }
            ::metrics::counter!(metrics::BUNDLES_REPLACED).increment(1);
            warn!(
                nonce = sent.nonce,
                max_fee = sent.max_fee,
                priority_fee = sent.priority_fee,
                "bundle not mined: replacing it with higher fees"
            );
            self.send_attempt(&mut sent, false).await?;
        }
    }

    /// The latest block the chain follower reported (the node's head before it reported any).
    async fn head_number(
        &self,
        heads: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<u64, BundlerError> {
        let reported = *heads.borrow_and_update();
        match reported {
            0 => self.shared.provider.get_block_number().await.map_err(rpc_error),
            number => Ok(number),
        }
    }

    /// The next bundle's nonce comes from the node again (a bundle given up, a reorg).
    fn forget_nonce(&self) {
        if let Ok(mut next) = self.shared.next_nonce.lock() {
            *next = None;
        }
    }

    /// Sends `sent` at its current fees; a node that prices it out at once (below the next
    /// base fee, an underpriced replacement) gets it again with higher fees.
    async fn send_attempt(&self, sent: &mut SentBundle, first: bool) -> Result<(), BundlerError> {
        let provider = &self.shared.provider;
        loop {
            let attempt = sent
                .tx
                .clone()
                .with_max_fee_per_gas(sent.max_fee)
                .with_max_priority_fee_per_gas(sent.priority_fee);
            match self.shared.sender.send_transaction(attempt).await {
                Ok(pending) => {
                    let hash = *pending.tx_hash();
                    ::metrics::counter!(metrics::BUNDLES_SENT).increment(1);
                    info!(
                        %hash,
                        nonce = sent.nonce,
                        max_fee = sent.max_fee,
                        priority_fee = sent.priority_fee,
                        "bundle sent"
                    );
                    sent.hashes.push(hash);
                    return Ok(());
                }
                Err(error)
                    if Refusal::of(&error) == Some(Refusal::Underpriced)
                        && tokio::time::Instant::now() < sent.deadline =>
                {
                    let ceiling = self.shared.config.max_fee_per_gas;
                    if !sent.raise_fees(provider.estimate_eip1559_fees().await.ok(), ceiling) {
                        return Err(BundlerError::Internal(format!(
                            "bundle priced out at the fee ceiling ({ceiling} wei): {error}"
                        )));
                    }
                    warn!(%error, "bundle priced out: raising its fees");
                    tokio::time::sleep(REPRICE_DELAY).await;
                }
                Err(error) if first => return Err(rpc_error(error)),
                // Nonce too low: an earlier attempt was mined meanwhile; already known: the
                // node has this attempt. Either way the bundle's wait goes on.
                Err(error) => {
                    warn!(%error, "bundle replacement not accepted");
                    return Ok(());
                }
            }
        }
    }

    /// Our bundles' blocks at `number` other than `hash` (the follower saw another block there),
    /// and forgets every unconfirmed block up to `number`.
    fn replaced_blocks(&self, number: u64, hash: B256) -> Vec<B256> {
        let Ok(mut unconfirmed) = self.shared.unconfirmed.lock() else { return Vec::new() };
        let replaced = unconfirmed
            .iter()
            .filter(|(n, block)| *n == number && *block != hash)
            .map(|(_, block)| *block)
            .collect();
        unconfirmed.retain(|(n, _)| *n > number);
        replaced
    }

    /// GREP-020: ops with a throttled entity stay at most `THROTTLED_ENTITY_LIVE_BLOCKS` blocks.
    fn throttled_too_long(&self, head: u64) -> Vec<B256> {
        let Ok(pool) = self.shared.pool.lock() else { return Vec::new() };
        pool.entries()
            .filter(|e| e.accepted_at_block + THROTTLED_ENTITY_LIVE_BLOCKS < head)
            .filter(|e| {
                e.entities().any(|(_, address, _)| {
                    self.shared.reputation.read(|r| r.status(e.entry_point, address))
                        == ReputationStatus::Throttled
                })
            })
            .map(|e| e.hash)
            .collect()
    }

    /// Bans `address` (GREP-040) and removes every op that uses it (GREP-010).
    fn ban(
        &self,
        version: EntryPointVersion,
        address: Address,
        why: &str,
    ) -> Result<(), BundlerError> {
        warn!(%address, why, "entity banned: failed bundle creation after the second validation");
        self.shared
            .reputation
            .update(version, address, Reputation::penalize)
            .map_err(storage_error)?;
        self.drop_banned(version, address)
    }

    /// GREP-010: the ops of `version` that use `address` leave the pool.
    fn drop_banned(
        &self,
        version: EntryPointVersion,
        address: Address,
    ) -> Result<(), BundlerError> {
        let hashes = self.shared.pool.lock().map_err(storage_error)?.referencing(version, address);
        for hash in hashes {
            self.drop_op(hash, "an entity is banned")?;
        }
        Ok(())
    }

    fn drop_op(&self, hash: B256, why: &str) -> Result<(), BundlerError> {
        warn!(%hash, why, "UserOperation dropped from the mempool");
        let reason = why.split(':').next().unwrap_or(why).to_string();
        ::metrics::counter!(metrics::OPS_DROPPED, "reason" => reason).increment(1);
        self.shared.pool.lock().map_err(storage_error)?.remove(&hash);
        self.shared.pool_tree.remove(hash).map_err(storage_error)?;
        Ok(())
    }

    /// The last block this bundler applied: its durable chain cursor.
    pub fn chain_cursor(&self) -> Result<Option<BlockRef>, BundlerError> {
        self.shared.cursor.get().map_err(storage_error)
    }

    /// Follows the chain until `cancel`: indexes mined ops, re-queues reorged ones, and in auto
    /// mode sends a bundle after each new block (and each `auto_interval`) with ops pending that
    /// are not in a bundle already sent.
    pub async fn run(self, mut events: ChainEvents, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.shared.config.auto_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let decay_every = self.shared.config.reputation_decay_interval;
        let mut decay =
            tokio::time::interval_at(tokio::time::Instant::now() + decay_every, decay_every);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.shared.accepted.notified() => {
                    // A moment for more ops to arrive: fewer, fuller bundles for the same block.
                    tokio::time::sleep(ACCEPT_BATCHING_DELAY).await;
                    if self.mode() == BundlingMode::Auto
                        && let Err(error) = self.start_bundles().await
                    {
                        warn!(%error, "bundling failed");
                    }
                    continue;
                }
                _ = decay.tick() => {
                    if let Err(error) = self.shared.reputation.decay() {
                        warn!(%error, "reputation decay failed");
                    }
                    continue;
                }
                event = events.recv() => event,
                _ = ticks.tick() => {
                    if self.mode() == BundlingMode::Auto
                        && self.pool_len() > 0
                        && let Err(error) = self.start_bundles().await
                    {
                        warn!(%error, "bundling failed");
                    }
                    continue;
                }
            };
            match event {
                Some(ChainEvent::Block(block)) => {
                    self.shared.head_number.send_replace(block.block.number);
                    if self.shared.cursor.applied(&block.block).unwrap_or(false) {
                        continue; // replayed after a restart: applied before it
                    }
                    let replaced = self.replaced_blocks(block.block.number, block.block.hash);
                    if !replaced.is_empty() {
                        self.forget_nonce();
                        match self.unindex_blocks(&replaced) {
                            Ok(requeued) => {
                                info!(
                                    requeued,
                                    "replaced block: UserOperations back in the mempool"
                                )
                            }
                            Err(error) => warn!(%error, "replaced-block handling failed"),
                        }
                    }
                    if let Err(error) = self.index_logs(&block.logs) {
                        warn!(%error, "indexing UserOperationEvents failed");
                    }
                    let expired = self.shared.pool.lock().map(|p| p.expired(block.timestamp));
                    for hash in expired.unwrap_or_default() {
                        let _ = self.drop_op(hash, "validUntil passed");
                    }
                    for hash in self.throttled_too_long(block.block.number) {
                        let _ = self.drop_op(hash, "throttled entity: live blocks passed");
                    }
                    ::metrics::gauge!(metrics::MEMPOOL_OPS).set(self.pool_len() as f64);
                    if let Err(error) = self.shared.cursor.advance(block.block) {
                        warn!(%error, "bundler chain cursor not saved");
                    }
                    if self.mode() == BundlingMode::Auto
                        && self.pool_len() > 0
                        && let Err(error) = self.start_bundles().await
                    {
                        warn!(%error, "bundling failed");
                    }
                }
                Some(ChainEvent::Reorg(reorg)) => {
                    self.forget_nonce();
                    if let Err(error) = self.shared.cursor.rewind(reorg.ancestor) {
                        warn!(%error, "bundler chain cursor not rewound");
                    }
                    let removed: Vec<B256> = reorg.removed.iter().map(|b| b.hash).collect();
                    match self.unindex_blocks(&removed) {
                        Ok(requeued) => {
                            info!(requeued, "reorg: mined UserOperations back in the mempool")
                        }
                        Err(error) => warn!(%error, "reorg handling failed"),
                    }
                    self.shared.head.reset();
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Bytes, U256};

    use super::*;

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
