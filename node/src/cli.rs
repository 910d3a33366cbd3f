//! The `settled` command line: one clap struct with dotted flags, environment fallbacks and an
//! optional TOML file, turned into the plain [`NodeConfig`] and [`ChainSource`].
//!
//! Precedence: command line, then environment, then the `--config` file, then defaults. A key of
//! the file is the long flag without dashes; tables give the dotted prefix:
//!
//! ```toml
//! datadir = "/var/lib/settled"
//! [rpc]
//! port = 4337
//! [log]
//! json = true
//! ```

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{
    ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, parser::ValueSource,
};
use settled_contracts::AnvilOptions;

use crate::config::{
    BillingSettings, BundlerSettings, ChainConfig, ChainSource, DEFAULT_DEV_ANVIL_PORT,
    DEFAULT_DEV_BLOCK_TIME_SECS, DEFAULT_METRICS_PORT, DEFAULT_RPC_PORT, DevConfig, NodeConfig,
    PaymasterSettings, RpcConfig, SecretKey,
};
use crate::paymaster::{PaymasterAction, PaymasterCommandConfig};

mod mempool;
use mempool::MempoolArgs;

/// settled: an ERC-4337 bundler, paymaster and per-second USDC streaming node.
#[derive(Debug, Parser)]
#[command(name = "settled", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML file with settings; command-line flags and environment variables override it.
    #[arg(long, global = true, env = "SETTLED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local Anvil (or attach to one), deploy everything, fund the dev accounts, serve.
    Dev(DevArgs),
    /// Serve against any chain, given its RPC endpoint and a deployment file.
    Run(RunArgs),
    /// Operate the paymaster contracts: status, deposit, withdraw.
    #[command(subcommand)]
    Paymaster(PaymasterCommand),
    /// Check a settlement receipt (`settlement_getReceipt`'s JSON) against a chain, trusting no
    /// settled node: prints the checks as JSON; exits 1 if the receipt is not valid.
    VerifyReceipt(VerifyReceiptArgs),
}

/// `settled verify-receipt`.
#[derive(Debug, Args)]
pub struct VerifyReceiptArgs {
    /// Any Ethereum JSON-RPC endpoint of the receipt's chain.
    #[arg(long = "eth.rpc-url", visible_alias = "rpc-url", env = "SETTLED_ETH_RPC_URL")]
    pub rpc_url: String,
    /// The receipt's JSON file; `-` or nothing reads standard input.
    pub receipt: Option<PathBuf>,
}

/// `settled paymaster ...`.
#[derive(Debug, Subcommand)]
pub enum PaymasterCommand {
    /// Deposit, stake and signer of each paymaster, as JSON.
    Status(PaymasterChainArgs),
    /// Adds ETH to a paymaster's deposit at its EntryPoint.
    Deposit(PaymasterFundsArgs),
    /// Withdraws ETH from a paymaster's deposit (the paymaster's owner only).
    Withdraw(PaymasterWithdrawArgs),
}

/// The chain and deployment a paymaster command works on.
#[derive(Debug, Args)]
pub struct PaymasterChainArgs {
    /// Ethereum JSON-RPC endpoint of the chain.
    #[arg(
        long = "eth.rpc-url",
        visible_alias = "rpc-url",
        env = "SETTLED_ETH_RPC_URL",
        default_value = "http://127.0.0.1:8545"
    )]
    pub rpc_url: String,

    /// Deployment file (JSON, as `settled dev` writes to <datadir>/deployment.json).
    #[arg(
        long = "eth.deployment",
        visible_alias = "deployment",
        env = "SETTLED_DEPLOYMENT",
        default_value = ".settled/deployment.json"
    )]
    pub deployment: PathBuf,
}

/// `settled paymaster deposit`.
#[derive(Debug, Args)]
pub struct PaymasterFundsArgs {
    /// Chain and deployment.
    #[command(flatten)]
    pub chain: PaymasterChainArgs,

    /// EntryPoint version whose paymaster to fund: 0.7 or 0.8.
    #[arg(long = "entry-point", value_parser = parse_version)]
    pub entry_point: settled_contracts::EntryPointVersion,

    /// Amount in ether, e.g. 1.5 (exact to the wei).
    #[arg(long, value_parser = parse_ether)]
    pub amount: alloy::primitives::U256,

    /// Key (hex) of the account that pays (prefer the environment or a key file to a flag).
    #[arg(long = "key", env = "SETTLED_PAYMASTER_OWNER_KEY", hide_env_values = true)]
    pub key: Option<String>,

    /// File holding that key, hex.
    #[arg(long = "key-file", env = "SETTLED_PAYMASTER_OWNER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// `settled paymaster withdraw`.
#[derive(Debug, Args)]
pub struct PaymasterWithdrawArgs {
    /// EntryPoint version, amount and the owner's key.
    #[command(flatten)]
    pub funds: PaymasterFundsArgs,

    /// Where the ETH goes (default: the owner).
    #[arg(long)]
    pub to: Option<alloy::primitives::Address>,
}

/// Flags of `settled dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Node settings.
    #[command(flatten)]
    pub node: NodeArgs,

    /// Attach to a running Anvil at this URL instead of starting one.
    #[arg(long = "dev.attach", env = "SETTLED_DEV_ATTACH", value_name = "URL")]
    pub attach: Option<String>,

    /// Anvil binary (default: the project's npm install, then $PATH).
    #[arg(long = "anvil.path", env = "SETTLED_ANVIL", value_name = "PATH")]
    pub anvil_path: Option<PathBuf>,

    /// Anvil port on 127.0.0.1 (0: a free port). The default is Anvil's and Foundry's own, so
    /// `cast` and wallets reach the dev chain at http://127.0.0.1:8545 without a flag.
    #[arg(long = "anvil.port", env = "SETTLED_ANVIL_PORT", default_value_t = DEFAULT_DEV_ANVIL_PORT)]
    pub anvil_port: u16,

    /// Seconds between Anvil blocks, so the chain's clock (and every stream's debt) moves on an
    /// idle chain; transactions are still mined as they arrive. 0: blocks only for transactions.
    #[arg(
        long = "anvil.block-time",
        env = "SETTLED_ANVIL_BLOCK_TIME",
        value_name = "SECS",
        default_value_t = DEFAULT_DEV_BLOCK_TIME_SECS
    )]
    pub anvil_block_time: u64,

    /// Anvil hardfork (Prague or newer).
    #[arg(long = "anvil.hardfork", env = "SETTLED_ANVIL_HARDFORK", default_value = "prague")]
    pub anvil_hardfork: String,
}

/// Flags of `settled run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Node settings.
    #[command(flatten)]
    pub node: NodeArgs,

    /// Ethereum JSON-RPC endpoint of the chain.
    #[arg(long = "eth.rpc-url", visible_alias = "rpc-url", env = "SETTLED_ETH_RPC_URL")]
    pub rpc_url: String,

    /// Deployment file (JSON, as `settled dev` writes to <datadir>/deployment.json).
    #[arg(long = "eth.deployment", visible_alias = "deployment", env = "SETTLED_DEPLOYMENT")]
    pub deployment: PathBuf,
}

/// Settings shared by every subcommand.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Data directory (database, deployment file).
    #[arg(long, env = "SETTLED_DATADIR", default_value = ".settled")]
    pub datadir: PathBuf,

    /// JSON-RPC listen address.
    #[arg(long = "rpc.addr", env = "SETTLED_RPC_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub rpc_addr: IpAddr,

    /// JSON-RPC port (HTTP and WebSocket; 0: a free port).
    #[arg(long = "rpc.port", env = "SETTLED_RPC_PORT", default_value_t = DEFAULT_RPC_PORT)]
    pub rpc_port: u16,

    /// Largest JSON-RPC request body, in bytes.
    #[arg(long = "rpc.max-request-bytes", env = "SETTLED_RPC_MAX_REQUEST_BYTES", default_value_t = RpcConfig::default().max_request_bytes)]
    pub rpc_max_request_bytes: u32,

    /// Most concurrent JSON-RPC HTTP connections.
    #[arg(long = "rpc.max-connections", env = "SETTLED_RPC_MAX_CONNECTIONS", default_value_t = RpcConfig::default().max_connections)]
    pub rpc_max_connections: u32,

    /// Most concurrent WebSocket connections (a limit of their own: idle subscribers cannot take
    /// HTTP's connections).
    #[arg(long = "rpc.max-ws-connections", env = "SETTLED_RPC_MAX_WS_CONNECTIONS", default_value_t = RpcConfig::default().max_ws_connections)]
    pub rpc_max_ws_connections: u32,

    /// Most concurrent connections (HTTP and WebSocket) from one client IP.
    #[arg(long = "rpc.max-connections-per-ip", env = "SETTLED_RPC_MAX_CONNECTIONS_PER_IP", default_value_t = RpcConfig::default().max_connections_per_ip)]
    pub rpc_max_connections_per_ip: u32,

    /// Bytes of JSON-RPC request bodies in flight at once; a request past it is answered 503.
    #[arg(long = "rpc.max-in-flight-body-bytes", env = "SETTLED_RPC_MAX_IN_FLIGHT_BODY_BYTES", default_value_t = RpcConfig::default().max_in_flight_body_bytes)]
    pub rpc_max_in_flight_body_bytes: u64,

    /// Seconds a WebSocket opened without a billing key may stay silent before it is closed
    /// (0: no limit).
    #[arg(long = "rpc.anonymous-ws-idle-secs", env = "SETTLED_RPC_ANONYMOUS_WS_IDLE_SECS", default_value_t = RpcConfig::default().anonymous_ws_idle_secs)]
    pub rpc_anonymous_ws_idle_secs: u64,

    /// Most calls in one JSON-RPC batch.
    #[arg(long = "rpc.max-batch", env = "SETTLED_RPC_MAX_BATCH", default_value_t = RpcConfig::default().max_batch_len)]
    pub rpc_max_batch: u32,

    /// Serve the `debug_bundler_*` JSON-RPC methods (development and tests only).
    #[arg(long = "rpc.debug", env = "SETTLED_RPC_DEBUG")]
    pub rpc_debug: bool,

    /// Serve the operator's `paymaster_*` JSON-RPC methods (policies at run time, status); keep
    /// the server on loopback or behind an authenticating proxy.
    #[arg(long = "rpc.admin", env = "SETTLED_RPC_ADMIN")]
    pub rpc_admin: bool,

    /// TOML file of billing API keys (`[[keys]]`: name, keccak256 of the token, payees or
    /// `all = true`) for the `stream_*` JSON-RPC.
    #[arg(long = "billing.api-keys-file", env = "SETTLED_BILLING_API_KEYS_FILE")]
    pub billing_api_keys_file: Option<PathBuf>,

    /// The key the node signs stream operator transactions with, hex (prefer the environment
    /// or a key file to a flag).
    #[arg(
        long = "billing.operator-key",
        env = "SETTLED_BILLING_OPERATOR_KEY",
        hide_env_values = true
    )]
    pub billing_operator_key: Option<String>,

    /// File holding the stream operator's key, hex.
    #[arg(long = "billing.operator-key-file", env = "SETTLED_BILLING_OPERATOR_KEY_FILE")]
    pub billing_operator_key_file: Option<PathBuf>,

    /// Alert `lowBalance` when a stream will run out within this many seconds.
    #[arg(
        long = "billing.low-balance-secs",
        env = "SETTLED_BILLING_LOW_BALANCE_SECS",
        default_value_t = 3_600
    )]
    pub billing_low_balance_secs: u64,

    /// Do not settle on a timer (batches are built and committed only when asked:
    /// `settlement_runNow`, served with `--rpc.admin`).
    #[arg(long = "settlement.disable", env = "SETTLED_SETTLEMENT_DISABLE")]
    pub settlement_disable: bool,

    /// Seconds between settlement periods.
    #[arg(
        long = "settlement.interval-secs",
        env = "SETTLED_SETTLEMENT_INTERVAL_SECS",
        default_value_t = 600
    )]
    pub settlement_interval_secs: u64,

    /// Streams per `withdrawBatch` transaction.
    #[arg(
        long = "settlement.withdraw-batch",
        env = "SETTLED_SETTLEMENT_WITHDRAW_BATCH",
        default_value_t = 100
    )]
    pub settlement_withdraw_batch: usize,

    /// The highest blob base fee (wei) a commit pays; above it the batch waits for the next
    /// period.
    #[arg(
        long = "settlement.max-blob-fee-wei",
        env = "SETTLED_SETTLEMENT_MAX_BLOB_FEE_WEI",
        default_value_t = 50_000_000_000
    )]
    pub settlement_max_blob_fee_wei: u128,

    /// Seconds a settlement transaction may stay unmined before it is sent again at the same
    /// nonce with higher fees (blob fee included, within the bound).
    #[arg(
        long = "settlement.reprice-after-secs",
        env = "SETTLED_SETTLEMENT_REPRICE_AFTER_SECS",
        default_value_t = 60
    )]
    pub settlement_reprice_after_secs: u64,

    /// Do not run the paymaster.
    #[arg(long = "paymaster.disable", env = "SETTLED_PAYMASTER_DISABLE")]
    pub paymaster_disable: bool,

    /// The paymaster's signing key, hex (prefer the environment or a key file to a flag).
    #[arg(long = "paymaster.key", env = "SETTLED_PAYMASTER_KEY", hide_env_values = true)]
    pub paymaster_key: Option<String>,

    /// File holding the paymaster's signing key, hex.
    #[arg(long = "paymaster.key-file", env = "SETTLED_PAYMASTER_KEY_FILE")]
    pub paymaster_key_file: Option<PathBuf>,

    /// TOML file of sponsorship policies (`[[policies]]` tables).
    #[arg(long = "paymaster.policies-file", env = "SETTLED_PAYMASTER_POLICIES_FILE")]
    pub paymaster_policies_file: Option<PathBuf>,

    /// Seconds a sponsorship signature stays valid.
    #[arg(long = "paymaster.validity-secs", env = "SETTLED_PAYMASTER_VALIDITY_SECS", default_value_t = PaymasterSettings::default().validity_secs)]
    pub paymaster_validity_secs: u64,

    /// Wei the paymaster sponsors per day across all policies (default: no global budget).
    #[arg(long = "paymaster.daily-budget-wei", env = "SETTLED_PAYMASTER_DAILY_BUDGET_WEI")]
    pub paymaster_daily_budget_wei: Option<alloy::primitives::U256>,

    /// Warn when a paymaster deposit falls below this many wei.
    #[arg(long = "paymaster.low-deposit-wei", env = "SETTLED_PAYMASTER_LOW_DEPOSIT_WEI", default_value_t = PaymasterSettings::default().low_deposit_wei)]
    pub paymaster_low_deposit_wei: alloy::primitives::U256,

    /// The policy a `pm_*` request without `context.policyId` is judged by (`settled dev`:
    /// `default`; elsewhere none, and such a request is refused).
    #[arg(long = "paymaster.default-policy", env = "SETTLED_PAYMASTER_DEFAULT_POLICY")]
    pub paymaster_default_policy: Option<String>,

    /// Do not run the ERC-4337 bundler.
    #[arg(long = "bundler.disable", env = "SETTLED_BUNDLER_DISABLE")]
    pub bundler_disable: bool,

    /// The bundler's signing key, hex (prefer the environment or a key file to a flag).
    #[arg(long = "bundler.key", env = "SETTLED_BUNDLER_KEY", hide_env_values = true)]
    pub bundler_key: Option<String>,

    /// File holding the bundler's signing key, hex.
    #[arg(long = "bundler.key-file", env = "SETTLED_BUNDLER_KEY_FILE")]
    pub bundler_key_file: Option<PathBuf>,

    /// Address receiving the bundles' fees (default: the bundler's own).
    #[arg(long = "bundler.beneficiary", env = "SETTLED_BUNDLER_BENEFICIARY")]
    pub bundler_beneficiary: Option<alloy::primitives::Address>,

    /// `auto`: a bundle after each block with ops pending; `manual`: only on
    /// `debug_bundler_sendBundleNow`.
    #[arg(long = "bundler.mode", env = "SETTLED_BUNDLER_MODE", default_value = "auto", value_parser = parse_mode)]
    pub bundler_mode: settled_bundler::BundlingMode,

    /// In auto mode, milliseconds between bundle attempts (besides one per new block).
    #[arg(
        long = "bundler.interval-ms",
        env = "SETTLED_BUNDLER_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub bundler_interval_ms: u64,

    /// Sum of the ops' gas limits one bundle may hold.
    #[arg(
        long = "bundler.max-bundle-gas",
        env = "SETTLED_BUNDLER_MAX_BUNDLE_GAS",
        default_value_t = 10_000_000
    )]
    pub bundler_max_bundle_gas: u64,

    /// Ops per bundle.
    #[arg(
        long = "bundler.max-bundle-ops",
        env = "SETTLED_BUNDLER_MAX_BUNDLE_OPS",
        default_value_t = 64
    )]
    pub bundler_max_bundle_ops: usize,

    /// A bundle not mined after this many blocks is resent with fees raised by at least 10%.
    #[arg(
        long = "bundler.fee-bump-blocks",
        env = "SETTLED_BUNDLER_FEE_BUMP_BLOCKS",
        default_value_t = 3
    )]
    pub bundler_fee_bump_blocks: u64,

    /// The highest maxFeePerGas (wei) a bundle is sent or re-priced at; fee bumps stop there.
    #[arg(
        long = "bundler.max-fee-wei",
        env = "SETTLED_BUNDLER_MAX_FEE_WEI",
        default_value_t = settled_bundler::DEFAULT_MAX_FEE_PER_GAS
    )]
    pub bundler_max_fee_wei: u128,

    /// Entities (sender, factory, paymaster addresses) always in good standing, whatever their
    /// ERC-7562 reputation; comma-separated.
    #[arg(long = "bundler.allowlist", env = "SETTLED_BUNDLER_ALLOWLIST", value_delimiter = ',')]
    pub bundler_allowlist: Vec<alloy::primitives::Address>,

    /// Entities always banned from the mempool; comma-separated.
    #[arg(long = "bundler.blocklist", env = "SETTLED_BUNDLER_BLOCKLIST", value_delimiter = ',')]
    pub bundler_blocklist: Vec<alloy::primitives::Address>,

    /// EntryPoints served, the preferred first (0.7, 0.8).
    #[arg(long = "bundler.entry-points", env = "SETTLED_BUNDLER_ENTRY_POINTS", value_delimiter = ',', default_values = ["0.8", "0.7"], value_parser = parse_version)]
    pub bundler_entry_points: Vec<settled_contracts::EntryPointVersion>,

    /// Prometheus listen address.
    #[arg(long = "metrics.addr", env = "SETTLED_METRICS_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub metrics_addr: IpAddr,

    /// Prometheus port (0: a free port).
    #[arg(long = "metrics.port", env = "SETTLED_METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,

    /// Do not serve Prometheus metrics.
    #[arg(long = "metrics.disable", env = "SETTLED_METRICS_DISABLE")]
    pub metrics_disable: bool,

    /// Milliseconds between polls for a new block.
    #[arg(
        long = "chain.poll-interval-ms",
        env = "SETTLED_CHAIN_POLL_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub chain_poll_interval_ms: u64,

    /// Deepest chain reorganisation the node unwinds.
    #[arg(long = "chain.reorg-depth", env = "SETTLED_CHAIN_REORG_DEPTH", default_value_t = 64)]
    pub chain_reorg_depth: u64,

    /// Seconds to wait for the chain's RPC endpoint at start-up.
    #[arg(
        long = "chain.connect-timeout-secs",
        env = "SETTLED_CHAIN_CONNECT_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub chain_connect_timeout_secs: u64,

    /// Log as JSON lines instead of text.
    #[arg(long = "log.json", env = "SETTLED_LOG_JSON")]
    pub log_json: bool,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,settled_contracts=debug`.
    #[arg(long = "log.filter", env = "SETTLED_LOG", default_value = "info")]
    pub log_filter: String,

    /// ERC-7562 mempool parameters.
    #[command(flatten, next_help_heading = "Mempool (ERC-7562 parameters)")]
    pub mempool: MempoolArgs,
}

/// Logging settings (applied by the binary, not by the library).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// JSON lines instead of text.
    pub json: bool,
    /// `EnvFilter` directives.
    pub filter: String,
}

/// Why the command line or config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap rejected the arguments (or `--help`/`--version` was asked for).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    ConfigIo {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has a value of the wrong shape.
    #[error("config file {path}: {message}")]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Cli {
    /// Parses `args` (program name first), merging the `--config` file under flags and env.
    pub fn parse_with_config<I, T>(args: I) -> Result<Self, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Self::command().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Self::from_arg_matches(&matches)?);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| CliError::ConfigIo { path: path.clone(), source })?;
        let invalid = |message: String| CliError::ConfigInvalid { path: path.clone(), message };
        let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let mut entries = Vec::new();
        flatten(&table, "", &mut entries).map_err(invalid)?;

        let (sub_name, sub_matches) =
            matches.subcommand().ok_or_else(|| invalid("no subcommand".into()))?;
        let command = Self::command();
        let sub = command
            .find_subcommand(sub_name)
            .ok_or_else(|| invalid(format!("unknown subcommand {sub_name}")))?;
        for (key, value) in entries {
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .ok_or_else(|| invalid(format!("unknown key `{key}` for `settled {sub_name}`")))?;
            let given = matches!(
                sub_matches.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if given {
                continue;
            }
            match arg.get_action() {
                ArgAction::SetTrue => match value.as_str() {
                    "true" => args.push(format!("--{key}").into()),
                    "false" => {}
                    other => {
                        return Err(invalid(format!("`{key}` must be true or false, not {other}")));
                    }
                },
                _ => args.push(format!("--{key}={value}").into()),
            }
        }
        let matches = Self::command().try_get_matches_from(&args)?;
        Ok(Self::from_arg_matches(&matches)?)
    }

    /// What this command line asks for: a node (settings, chain source, logging) or a one-shot
    /// paymaster command.
    pub fn into_action(self) -> Action {
        match self.command {
            Command::Paymaster(command) => Action::Paymaster(command.into_config()),
            Command::VerifyReceipt(args) => Action::VerifyReceipt {
                rpc_url: args.rpc_url,
                receipt: args.receipt.filter(|p| p.as_os_str() != "-"),
            },
            Command::Dev(_) | Command::Run(_) => {
                let (node, source, log) = self.into_parts();
                Action::Node(Box::new(node), source, log)
            }
        }
    }

    /// The node settings, chain source and log settings this command line asks for (a
    /// paymaster command gets the defaults: it runs no node).
    pub fn into_parts(self) -> (NodeConfig, ChainSource, LogConfig) {
        match self.command {
            Command::Dev(dev) => {
                let anvil = AnvilOptions {
                    binary: dev.anvil_path,
                    port: dev.anvil_port,
                    block_time: (dev.anvil_block_time > 0).then_some(dev.anvil_block_time),
                    mixed_mining: true,
                    hardfork: dev.anvil_hardfork,
                };
                let (node, log) = dev.node.into_config();
                let source =
                    ChainSource::Dev(DevConfig { attach: dev.attach, anvil, ..Default::default() });
                (node, source, log)
            }
            Command::Run(run) => {
                let (node, log) = run.node.into_config();
                (
                    node,
                    ChainSource::Remote { rpc_url: run.rpc_url, deployment: run.deployment },
                    log,
                )
            }
            Command::Paymaster(_) | Command::VerifyReceipt(_) => (
                NodeConfig::default(),
                ChainSource::Dev(DevConfig::default()),
                LogConfig { json: false, filter: "info".into() },
            ),
        }
    }
}

/// What the `settled` binary is asked to do.
#[derive(Debug)]
pub enum Action {
    /// Run a node.
    Node(Box<NodeConfig>, ChainSource, LogConfig),
    /// Run one paymaster command and exit.
    Paymaster(PaymasterCommandConfig),
    /// Check a settlement receipt and exit.
    VerifyReceipt {
        /// The chain's endpoint.
        rpc_url: String,
        /// The receipt's file (none: standard input).
        receipt: Option<PathBuf>,
    },
}

impl PaymasterCommand {
    fn into_config(self) -> PaymasterCommandConfig {
        let key =
            |funds: &PaymasterFundsArgs| (funds.key.clone().map(SecretKey), funds.key_file.clone());
        match self {
            Self::Status(chain) => PaymasterCommandConfig {
                rpc_url: chain.rpc_url,
                deployment: chain.deployment,
                action: PaymasterAction::Status,
            },
            Self::Deposit(funds) => {
                let (key, key_file) = key(&funds);
                PaymasterCommandConfig {
                    rpc_url: funds.chain.rpc_url,
                    deployment: funds.chain.deployment,
                    action: PaymasterAction::Deposit {
                        version: funds.entry_point,
                        amount: funds.amount,
                        key,
                        key_file,
                    },
                }
            }
            Self::Withdraw(args) => {
                let (key, key_file) = key(&args.funds);
                PaymasterCommandConfig {
                    rpc_url: args.funds.chain.rpc_url,
                    deployment: args.funds.chain.deployment,
                    action: PaymasterAction::Withdraw {
                        version: args.funds.entry_point,
                        amount: args.funds.amount,
                        to: args.to,
                        key,
                        key_file,
                    },
                }
            }
        }
    }
}

fn parse_version(value: &str) -> Result<settled_contracts::EntryPointVersion, String> {
    match value.trim_start_matches('v') {
        "0.7" | "07" => Ok(settled_contracts::EntryPointVersion::V07),
        "0.8" | "08" => Ok(settled_contracts::EntryPointVersion::V08),
        other => Err(format!("`{other}` is not an EntryPoint version (0.7, 0.8)")),
    }
}

fn parse_ether(value: &str) -> Result<alloy::primitives::U256, String> {
    let wei =
        alloy::primitives::utils::parse_ether(value).map_err(|e| format!("`{value}`: {e}"))?;
    if wei.is_zero() {
        return Err("the amount must be positive".into());
    }
    Ok(wei)
}

impl NodeArgs {
    fn into_config(self) -> (NodeConfig, LogConfig) {
        let node = NodeConfig {
            datadir: self.datadir,
            rpc: RpcConfig {
                addr: SocketAddr::new(self.rpc_addr, self.rpc_port),
                max_request_bytes: self.rpc_max_request_bytes,
                max_connections: self.rpc_max_connections,
                max_ws_connections: self.rpc_max_ws_connections,
                max_connections_per_ip: self.rpc_max_connections_per_ip,
                max_in_flight_body_bytes: self.rpc_max_in_flight_body_bytes,
                anonymous_ws_idle_secs: self.rpc_anonymous_ws_idle_secs,
                max_batch_len: self.rpc_max_batch.max(1),
                debug: self.rpc_debug,
                admin: self.rpc_admin,
            },
            metrics: (!self.metrics_disable)
                .then(|| SocketAddr::new(self.metrics_addr, self.metrics_port)),
            chain: ChainConfig {
                poll_interval: Duration::from_millis(self.chain_poll_interval_ms.max(1)),
                reorg_depth: self.chain_reorg_depth,
                connect_timeout: Duration::from_secs(self.chain_connect_timeout_secs.max(1)),
            },
            bundler: BundlerSettings {
                enabled: !self.bundler_disable,
                key: self.bundler_key.map(SecretKey),
                key_file: self.bundler_key_file,
                beneficiary: self.bundler_beneficiary,
                mode: self.bundler_mode,
                interval: Duration::from_millis(self.bundler_interval_ms.max(10)),
                max_bundle_gas: self.bundler_max_bundle_gas,
                max_bundle_ops: self.bundler_max_bundle_ops.max(1),
                fee_bump_after_blocks: self.bundler_fee_bump_blocks.max(1),
                max_fee_per_gas: self.bundler_max_fee_wei,
                reputation: settled_bundler::ReputationLists {
                    allowlist: self.bundler_allowlist.into_iter().collect(),
                    blocklist: self.bundler_blocklist.into_iter().collect(),
                },
                entry_points: dedup(self.bundler_entry_points),
                params: self.mempool.into_params(),
            },
            paymaster: PaymasterSettings {
                enabled: !self.paymaster_disable,
                key: self.paymaster_key.map(SecretKey),
                key_file: self.paymaster_key_file,
                policies_file: self.paymaster_policies_file,
                policies: Vec::new(),
                validity_secs: self.paymaster_validity_secs.max(1),
                daily_budget_wei: self.paymaster_daily_budget_wei,
                low_deposit_wei: self.paymaster_low_deposit_wei,
                default_policy: self.paymaster_default_policy,
            },
            billing: BillingSettings {
                api_keys_file: self.billing_api_keys_file,
                api_keys: Vec::new(),
                operator_key: self.billing_operator_key.map(SecretKey),
                operator_key_file: self.billing_operator_key_file,
                alerts: settled_streams::AlertThresholds {
                    low_balance_secs: self.billing_low_balance_secs,
                },
            },
            settlement: settled_settlement::SettlementSettings {
                enabled: !self.settlement_disable,
                interval: Duration::from_secs(self.settlement_interval_secs.max(1)),
                withdraw_batch: self.settlement_withdraw_batch.max(1),
                max_blob_fee_wei: self.settlement_max_blob_fee_wei,
                reprice_after: Duration::from_secs(self.settlement_reprice_after_secs.max(1)),
            },
        };
        (node, LogConfig { json: self.log_json, filter: self.log_filter })
    }
}

/// `list` without repeats, first occurrence kept (the first is the preferred one).
fn dedup<T: PartialEq>(list: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn parse_mode(value: &str) -> Result<settled_bundler::BundlingMode, String> {
    match value {
        "auto" => Ok(settled_bundler::BundlingMode::Auto),
        "manual" => Ok(settled_bundler::BundlingMode::Manual),
        other => Err(format!("`{other}` is not a bundling mode (auto, manual)")),
    }
}

/// Flattens nested tables into `(dotted.key, value)` pairs.
fn flatten(
    table: &toml::Table,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for (key, value) in table {
        let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(inner, &key, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            // A list flag takes comma-separated values.
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => Err(format!("`{key}`: list items must be strings or integers")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
        };
        out.push((key, text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn parse(args: &[&str]) -> Result<Cli, CliError> {
        Cli::parse_with_config(std::iter::once("settled").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_flags_gives_the_defaults() -> TestResult {
        let (node, source, log) = parse(&["dev"])?.into_parts();
        assert_eq!(node, NodeConfig::default());
        assert_eq!(source, ChainSource::Dev(DevConfig::default()));
        assert_eq!(log, LogConfig { json: false, filter: "info".into() });
        Ok(())
    }

    #[test]
    fn dotted_flags_map_to_plain_config() -> TestResult {
        let (node, source, log) = parse(&[
            "run",
            "--rpc-url",
            "http://127.0.0.1:1",
            "--deployment",
            "d.json",
            "--rpc.port",
            "0",
            "--metrics.disable",
            "--chain.reorg-depth",
            "3",
            "--log.json",
        ])?
        .into_parts();
        assert_eq!(node.rpc.addr.port(), 0);
        assert_eq!(node.metrics, None);
        assert_eq!(node.chain.reorg_depth, 3);
        assert!(log.json);
        assert_eq!(
            source,
            ChainSource::Remote {
                rpc_url: "http://127.0.0.1:1".into(),
                deployment: "d.json".into()
            }
        );
        Ok(())
    }

    #[test]
    fn config_file_fills_in_under_flags() -> TestResult {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("settled.toml");
        std::fs::write(
            &file,
            "datadir = \"/tmp/x\"\n[rpc]\nport = 1234\n[metrics]\nport = 99\n[log]\njson = true\n\
             [bundler]\nblocklist = [\"0x0000000000000000000000000000000000000001\", \
             \"0x0000000000000000000000000000000000000002\"]\n",
        )?;
        let file = file.to_string_lossy().into_owned();
        let (node, _, log) = parse(&["dev", "--config", &file, "--rpc.port", "555"])?.into_parts();
        assert_eq!(node.rpc.addr.port(), 555, "flag beats file");
        assert_eq!(node.metrics.map(|m| m.port()), Some(99), "file beats default");
        assert_eq!(node.datadir, PathBuf::from("/tmp/x"));
        assert!(log.json);
        assert_eq!(node.bundler.reputation.blocklist.len(), 2, "a TOML list");
        Ok(())
    }

    #[test]
    fn bad_config_files_are_errors() -> TestResult {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("settled.toml");
        let path = file.to_string_lossy().into_owned();
        for (text, expect) in [
            ("[rpc]\nprot = 1\n", "unknown key `rpc.prot`"),
            ("rpc = [1]\n", "unknown key `rpc`"),
            ("[bundler]\nallowlist = [true]\n", "list items must be strings or integers"),
            ("[rpc\n", "settled.toml"),
        ] {
            std::fs::write(&file, text)?;
            let err = parse(&["dev", "--config", &path]).err().ok_or("accepted a bad file")?;
            assert!(err.to_string().contains(expect), "{err} should mention {expect}");
        }
        let missing = dir.path().join("missing.toml").to_string_lossy().into_owned();
        assert!(matches!(parse(&["dev", "--config", &missing]), Err(CliError::ConfigIo { .. })));
        Ok(())
    }

    #[test]
    fn unknown_flags_are_rejected() {
        assert!(matches!(parse(&["dev", "--no-such-flag"]), Err(CliError::Clap(_))));
        assert!(matches!(parse(&["run"]), Err(CliError::Clap(_))), "run needs --rpc-url");
    }
}
