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
mod settlement;
mod storage;
mod streams;
mod tasks;

pub use cli::{Action, Cli, CliError, Command, LogConfig};
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
pub use settlement::{
    BLOB_GAS_PER_BLOB, BLOB_PAYLOAD_CAPACITY, BatchContext, BatchStage, Invoice, InvoiceLine,
    InvoiceTotal, MerkleTree, PAYLOAD_HEADER_LEN, RECORD_LEN, ReceiptError, SchedulerError,
    SettlementError, SettlementReceipt, SettlementRecord, SettlementRound, SettlementSettings,
    Settler, StoredBatch, UsageError, VerifiedReceipt, decode_payload, encode_payload, fold_usage,
    leaf_of, payload_of, settlement_codes, sidecar, split_into_blobs, verify_proof, verify_receipt,
};
pub use storage::Storage;
pub use streams::{
    AlertThresholds, ApiKey, IndexCursor, IndexError, ListQuery, NEVER_DEPLETES, NoticeKind,
    OpenOutcome, OpenedStream, OperatorReceipt, PreparedOpen, StreamError, StreamId, StreamIndex,
    StreamNotice, StreamPage, StreamSelector, StreamState, StreamView, billing_codes,
};
pub use tasks::TaskFailure;
