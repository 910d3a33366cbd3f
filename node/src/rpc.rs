//! The node's JSON-RPC server: HTTP and WebSocket on one port, `GET /health` proxied to
//! `system_health`. Domain crates add their namespaces as `RpcModule`s merged here.

use std::{net::SocketAddr, sync::Arc};

use alloy::primitives::U64;
use jsonrpsee::{
    RpcModule,
    server::{
        BatchRequestConfig, Server, ServerConfig, ServerHandle,
        middleware::http::ProxyGetRequestLayer,
    },
    types::ErrorObjectOwned,
};
use serde::Serialize;
use settled_contracts::BlockRef;
use tokio::sync::watch;

use crate::{config::RpcConfig, error::NodeError, streams::BearerLayer};

/// The node's identification in `web3_clientVersion`.
pub(crate) const CLIENT_VERSION: &str = concat!("settled/v", env!("CARGO_PKG_VERSION"));

/// What `system_health` (and `GET /health`) reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    chain_id: u64,
    head_block: Option<u64>,
}

struct NodeInfo {
    chain_id: u64,
    head: watch::Receiver<Option<BlockRef>>,
}

/// The node's own methods: `eth_chainId`, `web3_clientVersion`, `system_health`.
pub(crate) fn node_module(
    chain_id: u64,
    head: watch::Receiver<Option<BlockRef>>,
) -> Result<RpcModule<()>, NodeError> {
    let info = Arc::new(NodeInfo { chain_id, head });
    let mut module = RpcModule::new(());
    let register = |e: jsonrpsee::core::RegisterMethodError| NodeError::Metrics(e.to_string());

    let chain = info.clone();
    module
        .register_method("eth_chainId", move |_, _, _| {
            Ok::<_, ErrorObjectOwned>(U64::from(chain.chain_id))
        })
        .map_err(register)?;
    module.register_method("web3_clientVersion", |_, _, _| CLIENT_VERSION).map_err(register)?;
    module
        .register_method("system_health", move |_, _, _| {
            Ok::<_, ErrorObjectOwned>(Health {
                status: "ok",
                chain_id: info.chain_id,
                head_block: info.head.borrow().map(|b| b.number),
            })
        })
        .map_err(register)?;
    Ok(module)
}

/// Starts serving `module` on `config.addr`; returns the bound address and the server handle.
pub(crate) async fn serve(
    config: &RpcConfig,
    module: RpcModule<()>,
) -> Result<(SocketAddr, ServerHandle), NodeError> {
    let bind = |source| NodeError::Bind { what: "JSON-RPC", addr: config.addr, source };
    let health = ProxyGetRequestLayer::new([("/health", "system_health")])
        .map_err(|e| bind(std::io::Error::other(e)))?;
    let server_config = ServerConfig::builder()
        .max_request_body_size(config.max_request_bytes)
        .max_response_body_size(config.max_request_bytes.saturating_mul(2))
        .max_connections(config.max_connections)
        .set_batch_request_config(BatchRequestConfig::Limit(config.max_batch_len))
        .build();
    let server = Server::builder()
        .set_config(server_config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(health).layer(BearerLayer))
        .build(config.addr)
        .await
        .map_err(bind)?;
    let addr = server.local_addr().map_err(bind)?;
    Ok((addr, server.start(module)))
}
