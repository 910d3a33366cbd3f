//! The node's serving side: the JSON-RPC server (HTTP and WebSocket on one port, behind our own
//! accept loop with connection, body and idle limits, request-id checks), the node's own
//! methods and health, `/metrics`, and the supervised set of the node's critical tasks that
//! health reports on.
//!
//! Domain crates add their namespaces as `RpcModule`s; the binary merges them and [`serve`]s.

mod bearer;
mod health;
mod idle;
mod listener;
mod pages;
mod prometheus;
mod request_ids;
mod serve;
mod tasks;

use std::net::SocketAddr;

pub use bearer::{BearerLayer, BearerService, BearerToken};
pub use health::{CLIENT_VERSION, Dependency, HealthLimits, NOT_READY, node_module};
pub use listener::raise_open_file_limit;
pub use pages::{PageRequest, PageResponse, Pages};
pub use prometheus::serve_metrics;
pub use serve::{DEFAULT_RPC_PORT, RpcConfig, serve};
pub use tasks::{CriticalTasks, TaskFailure, TaskState};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// JSON-RPC or metrics.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why (e.g. address in use).
        source: std::io::Error,
    },
    /// A method could not be registered.
    #[error("registering a JSON-RPC method: {0}")]
    Register(String),
}

/// The server's metric names.
pub(crate) mod names {
    /// Counter: JSON-RPC connections closed at once, over a connection limit.
    pub(crate) const RPC_REFUSED_CONNECTIONS: &str = "settled_rpc_refused_connections_total";
    /// Counter: requests answered 503 because the in-flight body budget was spent.
    pub(crate) const RPC_BODY_BUDGET_REFUSED: &str = "settled_rpc_body_budget_refused_total";
    /// Counter: accepts that failed for want of file descriptors.
    pub(crate) const RPC_ACCEPT_ERRORS: &str = "settled_rpc_accept_fd_exhausted_total";
}

/// Registers the descriptions of the server's metrics (served at zero from the start).
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        names::RPC_REFUSED_CONNECTIONS,
        "JSON-RPC connections closed at once: over the HTTP, WebSocket or per-IP limit"
    );
    describe_counter!(
        names::RPC_BODY_BUDGET_REFUSED,
        "JSON-RPC requests answered 503: the bodies in flight had spent their byte budget"
    );
    describe_counter!(
        names::RPC_ACCEPT_ERRORS,
        "Accepts that failed for want of file descriptors (the loop pauses 100 ms)"
    );
    for counter in
        [names::RPC_REFUSED_CONNECTIONS, names::RPC_ACCEPT_ERRORS, names::RPC_BODY_BUDGET_REFUSED]
    {
        metrics::counter!(counter).increment(0);
    }
}
