//! Plain configuration of a node, built from the CLI (see `cli.rs`) or directly by embedders
//! and tests.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use settled_contracts::{AnvilOptions, FollowerConfig};
pub use settled_server::{DEFAULT_RPC_PORT, RpcConfig};

/// Everything a node needs besides the chain it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Directory of the node's database and its deployment file.
    pub datadir: PathBuf,
    /// JSON-RPC server (HTTP and WebSocket on one port).
    pub rpc: RpcConfig,
    /// Prometheus endpoint; `None` disables it.
    pub metrics: Option<SocketAddr>,
    /// How the chain is followed.
    pub chain: ChainConfig,
    /// The ERC-4337 bundler.
    pub bundler: BundlerSettings,
    /// The gas-sponsoring paymaster.
    pub paymaster: PaymasterSettings,
    /// The billing RPC (`stream_*`).
    pub billing: BillingSettings,
    /// Settlement batches (run by the streams' operator key).
    pub settlement: settled_settlement::SettlementSettings,
    /// Where settlement batches are anchored (default: the streams' chain, in blobs).
    pub anchor: AnchorSettings,
    /// The store shared by several nodes; `None`: this node's own sled database alone.
    pub shared_store: Option<SharedStoreSettings>,
    /// What this node runs.
    pub roles: Roles,
}

/// What a node runs (`--roles`): every role by default, on one node or several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The ERC-4337 bundler.
    pub bundler: bool,
    /// The gas-sponsoring paymaster.
    pub paymaster: bool,
    /// The stream index and the billing API (`stream_*`, operator calls).
    pub billing: bool,
    /// Settlement batches.
    pub settlement: bool,
}

impl Roles {
    /// Everything (one node).
    pub const ALL: Self = Self { bundler: true, paymaster: true, billing: true, settlement: true };
}

impl Default for Roles {
    fn default() -> Self {
        Self::ALL
    }
}

/// PostgreSQL shared by several nodes (`--storage.url`).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedStoreSettings {
    /// `postgres://user:password@host/db` (`?host=/dir` for a unix socket).
    pub url: String,
    /// How long a leader's lease lasts without renewal: the longest a dead leader's role waits.
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for SharedStoreSettings {
    // The URL may carry a password: never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStoreSettings").field("lease_ttl", &self.lease_ttl).finish()
    }
}

/// Where settlement batches are committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnchorSettings {
    /// The anchor chain's endpoint (an L1 that takes blobs, when the streams live on an L2);
    /// `None`: the streams' chain.
    pub rpc_url: Option<String>,
    /// The key commits are signed with there (hex); default: the operator key.
    pub key: Option<SecretKey>,
    /// A file holding that key.
    pub key_file: Option<PathBuf>,
    /// Blob or calldata.
    pub mode: settled_settlement::AnchorMode,
}

/// Who may use the billing RPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BillingSettings {
    /// A TOML file of `[[keys]]` (name, keccak256 of the token, payees or `all`).
    pub api_keys_file: Option<PathBuf>,
    /// Keys given directly (embedders, tests); the file's are added.
    pub api_keys: Vec<settled_streams::ApiKey>,
    /// The key the node signs streams' operator transactions with (pause, resume, lower the
    /// rate, withdraw, close); without one the mutating `stream_*` methods are not served.
    pub operator_key: Option<SecretKey>,
    /// A file holding that key (hex).
    pub operator_key_file: Option<PathBuf>,
    /// When streams raise alerts.
    pub alerts: settled_streams::AlertThresholds,
    /// The node's address as customers reach it, for the links of `billing_customerLink`
    /// (`None`: `http://` and the JSON-RPC listen address).
    pub public_url: Option<String>,
    /// Each token's ISO 4217 currency and decimals for invoices and purchase orders (the
    /// deployment's USDC is USD with 6 unless set).
    pub currencies: Vec<(alloy::primitives::Address, settled_settlement::TokenCurrency)>,
    /// The seller invoice documents (UBL, cXML) name; none: they are not served.
    pub seller: Option<settled_settlement::Party>,
}

/// The paymaster's node-level settings (its engine settings are
/// `settled_paymaster::PaymasterConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymasterSettings {
    /// Serve the paymaster (needs a signing key; `settled dev` uses a dev account's).
    pub enabled: bool,
    /// The signing key (hex), e.g. from `SETTLED_PAYMASTER_KEY`.
    pub key: Option<SecretKey>,
    /// A file holding the signing key (hex).
    pub key_file: Option<PathBuf>,
    /// A TOML file of `[[policies]]`.
    pub policies_file: Option<PathBuf>,
    /// Policies given directly (embedders, tests); the file's are added to them.
    pub policies: Vec<settled_paymaster::SponsorshipPolicy>,
    /// Seconds a sponsorship signature stays valid.
    pub validity_secs: u64,
    /// Wei sponsored per day across all policies (`None`: no global budget).
    pub daily_budget_wei: Option<alloy::primitives::U256>,
    /// Warn (log and metric) when a paymaster deposit falls below this (wei).
    pub low_deposit_wei: alloy::primitives::U256,
    /// The policy for `pm_*` requests that name none (`settled dev`: `default`).
    pub default_policy: Option<String>,
}

impl Default for PaymasterSettings {
    fn default() -> Self {
        let engine = settled_paymaster::PaymasterConfig::default();
        Self {
            enabled: true,
            key: None,
            key_file: None,
            policies_file: None,
            policies: Vec::new(),
            validity_secs: engine.validity_secs,
            daily_budget_wei: None,
            low_deposit_wei: engine.low_deposit_wei,
            default_policy: None,
        }
    }
}

/// The bundler's node-level settings (its engine settings are `settled_bundler::BundlerConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundlerSettings {
    /// Serve the bundler (needs a key; `settled dev` uses a dev account's).
    pub enabled: bool,
    /// The bundler's signing key (hex), e.g. from `SETTLED_BUNDLER_KEY`.
    pub key: Option<SecretKey>,
    /// A file holding the bundler's signing key (hex).
    pub key_file: Option<PathBuf>,
    /// Receives the bundles' fees (default: the bundler's address).
    pub beneficiary: Option<alloy::primitives::Address>,
    /// `auto` (a bundle per block) or `manual` (`debug_bundler_sendBundleNow`).
    pub mode: settled_bundler::BundlingMode,
    /// In auto mode, also try a bundle this often.
    pub interval: Duration,
    /// Sum of the ops' gas limits one bundle may hold.
    pub max_bundle_gas: u64,
    /// Ops per bundle.
    pub max_bundle_ops: usize,
    /// A bundle not mined after this many blocks is resent with higher fees.
    pub fee_bump_after_blocks: u64,
    /// The highest `maxFeePerGas` of a bundle (bumps stop there).
    pub max_fee_per_gas: u128,
    /// Entities always allowed or always banned, whatever their reputation.
    pub reputation: settled_bundler::ReputationLists,
    /// EntryPoints served, the preferred first.
    pub entry_points: Vec<settled_contracts::EntryPointVersion>,
    /// ERC-7562 mempool parameters (also the paymaster's staking thresholds).
    pub params: settled_bundler::MempoolParams,
    /// Added to the L1 data fee in estimates on OP stack (percent).
    pub l1_fee_margin_percent: u64,
    /// How far below its L1 fee (percent) an op's preVerificationGas may fall on OP stack
    /// (bundler and paymaster).
    pub l1_fee_tolerance_percent: u64,
}

impl BundlerSettings {
    /// The bundler engine's configuration.
    pub fn bundler_config(&self) -> settled_bundler::BundlerConfig {
        settled_bundler::BundlerConfig {
            beneficiary: self.beneficiary,
            mode: self.mode,
            auto_interval: self.interval,
            max_bundle_gas: self.max_bundle_gas,
            max_bundle_ops: self.max_bundle_ops,
            reputation: self.reputation.clone(),
            fee_bump_after_blocks: self.fee_bump_after_blocks,
            max_fee_per_gas: self.max_fee_per_gas,
            entry_points: self.entry_points.clone(),
            params: self.params,
            l1_fee_margin_percent: self.l1_fee_margin_percent,
            l1_fee_tolerance_percent: self.l1_fee_tolerance_percent,
            ..Default::default()
        }
    }
}

impl Default for BundlerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key: None,
            key_file: None,
            beneficiary: None,
            mode: settled_bundler::BundlingMode::Auto,
            interval: Duration::from_secs(1),
            max_bundle_gas: 10_000_000,
            max_bundle_ops: 64,
            fee_bump_after_blocks: 3,
            max_fee_per_gas: settled_bundler::DEFAULT_MAX_FEE_PER_GAS,
            reputation: settled_bundler::ReputationLists::default(),
            entry_points: settled_bundler::BundlerConfig::default().entry_points,
            params: settled_bundler::MempoolParams::default(),
            l1_fee_margin_percent: settled_bundler::BundlerConfig::default().l1_fee_margin_percent,
            l1_fee_tolerance_percent: settled_bundler::L1_FEE_TOLERANCE_PERCENT,
        }
    }
}

/// A private key that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub String);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Chain-following settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    /// Time between polls for a new head.
    pub poll_interval: Duration,
    /// Deepest reorg the follower unwinds.
    pub reorg_depth: u64,
    /// How long to wait for the chain's RPC endpoint to answer at start-up.
    pub connect_timeout: Duration,
    /// The chain's kind; `None`: detected from its predeploys at start.
    pub kind: Option<settled_contracts::ChainKind>,
}

/// Where a node's chain comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainSource {
    /// A local dev chain: start Anvil (or attach to `attach`), deploy, fund the dev accounts.
    Dev(DevConfig),
    /// Any chain, given its endpoint and a deployment file.
    Remote {
        /// Ethereum JSON-RPC endpoint.
        rpc_url: String,
        /// Deployment file (JSON) naming the contracts.
        deployment: PathBuf,
    },
}

/// Settings of `settled dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevConfig {
    /// Attach to this Anvil instead of starting one.
    pub attach: Option<String>,
    /// How to start Anvil when not attaching.
    pub anvil: AnvilOptions,
    /// USDC base units minted to each dev account.
    pub usdc_per_account: u128,
}

/// Default Prometheus port.
pub const DEFAULT_METRICS_PORT: u16 = 9337;

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            datadir: PathBuf::from(".settled"),
            rpc: RpcConfig::default(),
            metrics: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_METRICS_PORT))),
            chain: ChainConfig::default(),
            bundler: BundlerSettings::default(),
            paymaster: PaymasterSettings::default(),
            billing: BillingSettings::default(),
            settlement: settled_settlement::SettlementSettings::default(),
            anchor: AnchorSettings::default(),
            shared_store: None,
            roles: Roles::ALL,
        }
    }
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(1_000),
            reorg_depth: 64,
            connect_timeout: Duration::from_secs(5),
            kind: None,
        }
    }
}

/// The port `settled dev`'s own Anvil listens on, Anvil's own default.
pub const DEFAULT_DEV_ANVIL_PORT: u16 = 8545;

/// Seconds between blocks of `settled dev`'s own Anvil (transactions are mined at once too).
pub const DEFAULT_DEV_BLOCK_TIME_SECS: u64 = 1;

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            attach: None,
            anvil: AnvilOptions {
                port: DEFAULT_DEV_ANVIL_PORT,
                block_time: Some(DEFAULT_DEV_BLOCK_TIME_SECS),
                mixed_mining: true,
                ..AnvilOptions::default()
            },
            usdc_per_account: 1_000_000 * 1_000_000,
        }
    }
}

impl NodeConfig {
    /// A preset for tests: everything on free loopback ports, fast polling, data in `datadir`.
    pub fn test(datadir: PathBuf) -> Self {
        Self {
            datadir,
            rpc: RpcConfig {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                debug: true,
                admin: true,
                ..Default::default()
            },
            metrics: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            chain: ChainConfig { poll_interval: Duration::from_millis(100), ..Default::default() },
            bundler: BundlerSettings { interval: Duration::from_millis(100), ..Default::default() },
            paymaster: PaymasterSettings::default(),
            billing: BillingSettings::default(),
            // Tests settle when they ask (`NodeHandle::settler`), not on a timer.
            settlement: settled_settlement::SettlementSettings {
                enabled: false,
                ..Default::default()
            },
            anchor: AnchorSettings::default(),
            shared_store: None,
            roles: Roles::ALL,
        }
    }

    /// The chain follower's settings for this node.
    pub fn follower(
        &self,
        start_block: u64,
        addresses: Vec<alloy::primitives::Address>,
    ) -> FollowerConfig {
        FollowerConfig {
            poll_interval: self.chain.poll_interval,
            reorg_depth: self.chain.reorg_depth,
            addresses,
            start_block: Some(start_block),
            ..Default::default()
        }
    }
}
