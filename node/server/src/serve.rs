//! Serving: jsonrpsee's HTTP and WebSocket services behind our accept loop, with the body
//! budget, the health proxy and the bearer-token extraction as HTTP middleware.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use jsonrpsee::{
    RpcModule,
    server::{
        BatchRequestConfig, Server, ServerConfig, ServerHandle,
        middleware::http::ProxyGetRequestLayer,
    },
};

use crate::{BearerLayer, ServerError};

/// The default JSON-RPC port (ERC-4337 bundlers' customary one).
pub const DEFAULT_RPC_PORT: u16 = 4337;

/// JSON-RPC server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: u32,
    /// Most concurrent HTTP connections.
    pub max_connections: u32,
    /// Most concurrent WebSocket connections (apart from HTTP's).
    pub max_ws_connections: u32,
    /// Most concurrent connections of one client IP.
    pub max_connections_per_ip: u32,
    /// Bytes of request bodies in flight at once, across all connections.
    pub max_in_flight_body_bytes: u64,
    /// Seconds a WebSocket opened without a billing key may stay silent (0: no limit).
    pub anonymous_ws_idle_secs: u64,
    /// Most calls in one JSON-RPC batch.
    pub max_batch_len: u32,
    /// Serve the `debug_bundler_*` methods (tests and development only).
    pub debug: bool,
    /// Serve the operator's `paymaster_*` methods (policies, status). Bind the server to
    /// loopback or put it behind an authenticating proxy when this is on.
    pub admin: bool,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_RPC_PORT)),
            // An op's callData cannot pass 10 M gas / 16 per byte = 625 KB: 1 MiB bounds every
            // legitimate request (it was 10 MiB: ~22 MB of memory per request in flight).
            max_request_bytes: 1024 * 1024,
            max_connections: 1_000,
            max_ws_connections: 1_000,
            max_connections_per_ip: 500,
            max_in_flight_body_bytes: 64 * 1024 * 1024,
            anonymous_ws_idle_secs: 60,
            max_batch_len: 100,
            debug: false,
            admin: false,
        }
    }
}

/// Starts serving `module` on `config.addr`, and `pages` under their prefix on the same port;
/// returns the bound address and the server handle.
pub async fn serve(
    config: &RpcConfig,
    module: RpcModule<()>,
    pages: Option<std::sync::Arc<dyn crate::Pages>>,
) -> Result<(SocketAddr, ServerHandle), ServerError> {
    let bind = |source| ServerError::Bind { what: "JSON-RPC", addr: config.addr, source };
    let health =
        ProxyGetRequestLayer::new([("/health", "system_health"), ("/ready", "system_ready")])
            .map_err(|e| bind(std::io::Error::other(e)))?;
    let server_config = ServerConfig::builder()
        .max_request_body_size(config.max_request_bytes)
        // Answers (a dumped mempool, a batch's blob) may be larger than any request.
        .max_response_body_size(config.max_request_bytes.saturating_mul(10))
        // Our accept loop enforces the limits; jsonrpsee's own guard only backs them up.
        .max_connections(config.max_connections.saturating_add(config.max_ws_connections))
        .set_batch_request_config(BatchRequestConfig::Limit(config.max_batch_len))
        .build();
    let builder = Server::builder()
        .set_config(server_config)
        .set_http_middleware(
            tower::ServiceBuilder::new()
                .layer(crate::listener::BodyBudgetLayer::new(
                    config.max_in_flight_body_bytes,
                    config.max_request_bytes,
                ))
                .layer(crate::pages::PagesLayer {
                    pages,
                    max_body: config.max_request_bytes as usize,
                })
                .layer(health)
                .layer(BearerLayer),
        )
        .to_service_builder();
    let listener = tokio::net::TcpListener::bind(config.addr).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let (stop, handle) = jsonrpsee::server::stop_channel();
    let limits = crate::listener::ConnectionLimits {
        http: config.max_connections,
        ws: config.max_ws_connections,
        per_ip: config.max_connections_per_ip,
        anonymous_ws_idle: (config.anonymous_ws_idle_secs > 0)
            .then(|| Duration::from_secs(config.anonymous_ws_idle_secs)),
    };
    let methods: jsonrpsee::server::Methods = module.into();
    let (services, stop_services) = (stop.clone(), stop.clone());
    let ws_builder = builder.clone().max_connections(config.max_ws_connections);
    let http_builder = builder.max_connections(config.max_connections);
    let make = move || {
        let http = http_builder.clone().build(methods.clone(), services.clone());
        (http, ws_builder.clone().build(methods.clone(), services.clone()))
    };
    tokio::spawn(crate::listener::accept_loop(listener, make, stop_services, limits));
    Ok((addr, handle))
}
