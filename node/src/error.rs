//! Why a node could not start or keep running.

use std::{net::SocketAddr, path::PathBuf};

/// Start-up and run-time failures of a node, each worded for an operator.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The chain's RPC endpoint did not answer.
    #[error("cannot reach the chain's RPC endpoint {url}: {reason}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The RPC URL is not a URL.
    #[error("invalid RPC URL {url}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The deployment file is missing, invalid or does not match the chain.
    #[error(transparent)]
    Deployment(#[from] settled_contracts::DeploymentError),
    /// Deploying to the dev chain failed.
    #[error("deploying settled's contracts: {0}")]
    Deploy(#[from] settled_contracts::DeployError),
    /// Anvil could not be started.
    #[error(transparent)]
    Anvil(#[from] settled_contracts::AnvilError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// RPC or metrics.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why (e.g. address in use).
        source: std::io::Error,
    },
    /// The JSON-RPC or metrics server could not start.
    #[error(transparent)]
    Server(#[from] settled_server::ServerError),
    /// The database could not be opened or used.
    #[error("database in {path}: {reason}")]
    Storage {
        /// The datadir.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The datadir belongs to another chain (another id, or the same id with another genesis).
    #[error(
        "datadir {path} holds data of another chain (id {}, genesis {}), not of this one (id {}, genesis {}); use another --datadir, or remove it to start over",
        stored.chain_id, stored.genesis, actual.chain_id, actual.genesis
    )]
    WrongChainData {
        /// The datadir.
        path: PathBuf,
        /// The chain recorded in it.
        stored: crate::storage::ChainIdentity,
        /// The endpoint's chain.
        actual: crate::storage::ChainIdentity,
    },
    /// A dev-chain setup transaction failed.
    #[error("dev chain setup: {0}")]
    DevSetup(String),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The bundler could not start.
    #[error("bundler: {0}")]
    Bundler(#[from] settled_bundler::BundlerError),
    /// The settlement anchor chain cannot be used as configured.
    #[error("settlement anchor chain {url}: {reason}")]
    Anchor {
        /// Its endpoint.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A signing key (bundler, paymaster) is unreadable.
    #[error("{what}: {reason}")]
    Key {
        /// Which key.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The paymaster could not start.
    #[error("paymaster: {0}")]
    Paymaster(#[from] settled_paymaster::PaymasterError),
    /// The paymaster policies file is unreadable or invalid.
    #[error("paymaster policies file {path}: {reason}")]
    Policies {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The stream index could not open.
    #[error(transparent)]
    Streams(#[from] settled_streams::IndexError),
    /// The billing API keys file is unreadable or invalid.
    #[error("billing API keys file {path}: {reason}")]
    ApiKeys {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A critical task ended while the node was running, which stopped the node.
    #[error("the {task} task stopped: {reason}")]
    TaskFailed {
        /// The task's name.
        task: &'static str,
        /// What ended it.
        reason: String,
    },
    /// The shared store (`--storage.url`) could not be reached or migrated.
    #[error("shared store: {0}")]
    SharedStore(String),
    /// A role that cannot share the store yet was asked to run on a shared store.
    #[error(
        "{role} does not run on a shared store yet ({why}); run it on one node without \
         --storage.url, and here --roles paymaster,billing,settlement"
    )]
    NotShared {
        /// The role.
        role: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A `settled paymaster` command failed.
    #[error("paymaster command: {0}")]
    PaymasterCommand(String),
}
