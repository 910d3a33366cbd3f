//! settled's configuration: [`NodeConfig`] and each subsystem's settings, and the `settled`
//! command line that produces them ([`Cli`]: one `Args` group per subsystem, each under its own
//! help heading, environment fallbacks, and an optional TOML file beneath both).
//!
//! The binary parses; the node crate wires what the config describes. Tests and embedders build
//! a [`NodeConfig`] directly (see [`NodeConfig::test`]).

mod cli;
mod paymaster_command;
mod settings;

pub use cli::{
    Action, BillingArgs, BundlerArgs, ChainArgs, Cli, CliError, Command, DeployArgs,
    DeployCommandConfig, InvoiceArgs, InvoiceCommandConfig, LogArgs, LogConfig, MempoolArgs,
    MetricsArgs, PaymasterArgs, Role, RpcArgs, SettlementArgs, StorageArgs,
};
pub use paymaster_command::{PaymasterAction, PaymasterCommandConfig};
pub use settings::{
    AnchorSettings, BillingSettings, BundlerSettings, ChainConfig, ChainSource,
    DEFAULT_DEV_ANVIL_PORT, DEFAULT_DEV_BLOCK_TIME_SECS, DEFAULT_METRICS_PORT, DEFAULT_RPC_PORT,
    DevConfig, NodeConfig, PaymasterSettings, Roles, RpcConfig, SecretKey, SharedStoreSettings,
};
