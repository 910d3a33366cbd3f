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

use crate::paymaster_command::{PaymasterAction, PaymasterCommandConfig};
use crate::settings::{
    AnchorSettings, BillingSettings, BundlerSettings, ChainConfig, ChainSource,
    DEFAULT_DEV_ANVIL_PORT, DEFAULT_DEV_BLOCK_TIME_SECS, DEFAULT_METRICS_PORT, DEFAULT_RPC_PORT,
    DevConfig, NodeConfig, PaymasterSettings, Roles, RpcConfig, SecretKey, SharedStoreSettings,
};

mod billing;
mod bundler;
mod chain;
mod deploy;
mod invoice;
mod log;
mod mempool;
mod metrics;
mod paymaster;
mod rpc;
mod settlement;
mod storage;

pub use billing::BillingArgs;
pub use bundler::BundlerArgs;
pub use chain::ChainArgs;
pub use deploy::{DeployArgs, DeployCommandConfig};
pub use invoice::{InvoiceArgs, InvoiceCommandConfig};
pub use log::LogArgs;
pub use mempool::MempoolArgs;
pub use metrics::MetricsArgs;
pub use paymaster::PaymasterArgs;
pub use rpc::RpcArgs;
pub use settlement::SettlementArgs;
pub use storage::{Role, StorageArgs};

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
    /// Put settled's contracts on a network: prints the plan (what is there, what would be
    /// deployed, gas); `--send` deploys and writes the deployment file. The canonical
    /// EntryPoints are checked, never deployed.
    Deploy(DeployArgs),
    /// A payer's invoice for a period from a running node (`billing_invoice`): a UBL 2.1 /
    /// Peppol BIS Billing 3.0 or cXML document rolled up per purchase-order line, or CSV/JSON.
    Invoice(InvoiceArgs),
}

/// `settled verify-receipt`.
#[derive(Debug, Args)]
pub struct VerifyReceiptArgs {
    /// Any Ethereum JSON-RPC endpoint of the receipt's chain (the streams' chain).
    #[arg(long = "eth.rpc-url", visible_alias = "rpc-url", env = "SETTLED_ETH_RPC_URL")]
    pub rpc_url: String,
    /// An endpoint of the anchor chain, when the receipt's batch is anchored on another chain
    /// (`anchorChainId`); default: `--rpc-url`.
    #[arg(long = "anchor-rpc-url", env = "SETTLED_ANCHOR_RPC_URL")]
    pub anchor_rpc_url: Option<String>,
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

/// Settings shared by every subcommand, one group per subsystem (each its own help heading).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Data directory (database, deployment file).
    #[arg(long, env = "SETTLED_DATADIR", default_value = ".settled")]
    pub datadir: PathBuf,

    /// The JSON-RPC server.
    #[command(flatten, next_help_heading = "JSON-RPC server")]
    pub rpc: RpcArgs,

    /// The bundler.
    #[command(flatten, next_help_heading = "Bundler")]
    pub bundler: BundlerArgs,

    /// ERC-7562 mempool parameters.
    #[command(flatten, next_help_heading = "Mempool (ERC-7562 parameters)")]
    pub mempool: MempoolArgs,

    /// The paymaster.
    #[command(flatten, next_help_heading = "Paymaster")]
    pub paymaster: PaymasterArgs,

    /// The billing API.
    #[command(flatten, next_help_heading = "Billing")]
    pub billing: BillingArgs,

    /// Settlement.
    #[command(flatten, next_help_heading = "Settlement")]
    pub settlement: SettlementArgs,

    /// Following the chain.
    #[command(flatten, next_help_heading = "Chain")]
    pub chain: ChainArgs,

    /// The store shared by several nodes, and this node's roles.
    #[command(flatten, next_help_heading = "Several nodes")]
    pub storage: StorageArgs,

    /// Prometheus.
    #[command(flatten, next_help_heading = "Metrics")]
    pub metrics: MetricsArgs,

    /// Logging.
    #[command(flatten, next_help_heading = "Logging")]
    pub log: LogArgs,
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
            Command::Deploy(args) => Action::Deploy(args.into_config()),
            Command::Invoice(args) => Action::Invoice(args.into_config()),
            Command::VerifyReceipt(args) => Action::VerifyReceipt {
                anchor_rpc_url: args.anchor_rpc_url.unwrap_or_else(|| args.rpc_url.clone()),
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
                    chain_id: None,
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
            Command::Paymaster(_)
            | Command::VerifyReceipt(_)
            | Command::Deploy(_)
            | Command::Invoice(_) => (
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
    /// Plan (and with `send`, run) a deployment and exit.
    Deploy(DeployCommandConfig),
    /// Fetch an invoice document and exit.
    Invoice(InvoiceCommandConfig),
    /// Check a settlement receipt and exit.
    VerifyReceipt {
        /// The streams' chain's endpoint.
        rpc_url: String,
        /// The anchor chain's endpoint (the same unless the batch anchors elsewhere).
        anchor_rpc_url: String,
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
    /// Each group's configuration, assembled.
    fn into_config(self) -> (NodeConfig, LogConfig) {
        let node = NodeConfig {
            datadir: self.datadir,
            rpc: self.rpc.into_config(),
            metrics: self.metrics.into_addr(),
            chain: self.chain.into_config(),
            bundler: self.bundler.into_settings(self.mempool.into_params()),
            paymaster: self.paymaster.into_settings(),
            billing: self.billing.into_settings(),
            anchor: self.settlement.anchor(),
            settlement: self.settlement.into_settings(),
            roles: self.storage.roles(),
            shared_store: self.storage.into_settings(),
        };
        (node, self.log.into_config())
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
pub(super) mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// One group of flags alone, for its defaults test (`Only::<RpcArgs>::parse_from(...)`).
    #[derive(Debug, Parser)]
    pub(crate) struct Only<T: Args> {
        #[command(flatten)]
        pub(crate) group: T,
    }

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
