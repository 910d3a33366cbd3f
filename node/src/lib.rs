//! The settled node: wiring and serving of the bundler, paymaster and settlement
//! domains over one JSON-RPC server, with Prometheus metrics and a sled database.
//!
//! The `settled` binary only parses its command line ([`Cli`]) and calls [`launch`]; embedders
//! and tests build a [`NodeConfig`] (see [`NodeConfig::test`]) and do the same.

mod anchor;
mod customer;
mod deploy;
mod dev;
mod error;
mod invoice;
mod launch;
mod metrics;
mod paymaster;
mod shared;
mod storage;

pub use deploy::{DeployOutput, run_deploy_command};
pub use error::NodeError;
pub use invoice::run_invoice_command;
pub use launch::{NodeHandle, connect, launch};
pub use paymaster::{PaymasterCommandOutput, run_paymaster_command};
pub use settled_config::{
    Action, AnchorSettings, BillingArgs, BillingSettings, BundlerArgs, BundlerSettings, ChainArgs,
    ChainConfig, ChainSource, Cli, CliError, Command, DEFAULT_DEV_ANVIL_PORT,
    DEFAULT_DEV_BLOCK_TIME_SECS, DEFAULT_METRICS_PORT, DEFAULT_RPC_PORT, DeployArgs,
    DeployCommandConfig, DevConfig, InvoiceArgs, InvoiceCommandConfig, LogArgs, LogConfig,
    MempoolArgs, MetricsArgs, NodeConfig, PaymasterAction, PaymasterArgs, PaymasterCommandConfig,
    PaymasterSettings, Role, Roles, RpcArgs, SecretKey, SettlementArgs, SharedStoreSettings,
    StorageArgs,
};
pub use settled_contracts::SentTransaction;
pub use settled_server::TaskFailure;
pub use storage::Storage;
