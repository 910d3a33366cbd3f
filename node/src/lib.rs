//! The settled node: configuration, wiring and serving of the bundler, paymaster and settlement
//! domains over one JSON-RPC server, with Prometheus metrics and a sled database.
//!
//! The `settled` binary only parses its command line ([`Cli`]) and calls [`launch`]; embedders
//! and tests build a [`NodeConfig`] (see [`NodeConfig::test`]) and do the same.

mod cli;
mod config;
mod dev;
mod error;
mod idle;
mod launch;
mod listener;
mod metrics;
mod paymaster;
mod request_ids;
mod rpc;
mod storage;
mod tasks;

pub use cli::{
    Action, BillingArgs, BundlerArgs, ChainArgs, Cli, CliError, Command, LogArgs, LogConfig,
    MempoolArgs, MetricsArgs, PaymasterArgs, RpcArgs, SettlementArgs,
};
pub use config::{
    BillingSettings, BundlerSettings, ChainConfig, ChainSource, DEFAULT_DEV_ANVIL_PORT,
    DEFAULT_DEV_BLOCK_TIME_SECS, DEFAULT_METRICS_PORT, DEFAULT_RPC_PORT, DevConfig, NodeConfig,
    PaymasterSettings, RpcConfig, SecretKey,
};
pub use error::NodeError;
pub use launch::{NodeHandle, connect, launch};
pub use paymaster::{
    PaymasterAction, PaymasterCommandConfig, PaymasterCommandOutput, run_paymaster_command,
};
pub use settled_contracts::SentTransaction;
pub use storage::Storage;
pub use tasks::TaskFailure;
