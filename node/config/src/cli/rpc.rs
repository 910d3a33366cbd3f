//! `--rpc.*`: the JSON-RPC server (address, limits, optional namespaces).

use super::*;

/// The JSON-RPC server (address, limits, optional namespaces).
#[derive(Debug, Clone, Args)]
pub struct RpcArgs {
    /// JSON-RPC listen address.
    #[arg(long = "rpc.addr", id = "rpc.addr", env = "SETTLED_RPC_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub addr: IpAddr,

    /// JSON-RPC port (HTTP and WebSocket; 0: a free port).
    #[arg(long = "rpc.port", id = "rpc.port", env = "SETTLED_RPC_PORT", default_value_t = DEFAULT_RPC_PORT)]
    pub port: u16,

    /// Largest JSON-RPC request body, in bytes.
    #[arg(long = "rpc.max-request-bytes", id = "rpc.max-request-bytes", env = "SETTLED_RPC_MAX_REQUEST_BYTES", default_value_t = RpcConfig::default().max_request_bytes)]
    pub max_request_bytes: u32,

    /// Most concurrent JSON-RPC HTTP connections.
    #[arg(long = "rpc.max-connections", id = "rpc.max-connections", env = "SETTLED_RPC_MAX_CONNECTIONS", default_value_t = RpcConfig::default().max_connections)]
    pub max_connections: u32,

    /// Most concurrent WebSocket connections (a limit of their own: idle subscribers cannot take
    /// HTTP's connections).
    #[arg(long = "rpc.max-ws-connections", id = "rpc.max-ws-connections", env = "SETTLED_RPC_MAX_WS_CONNECTIONS", default_value_t = RpcConfig::default().max_ws_connections)]
    pub max_ws_connections: u32,

    /// Most concurrent connections (HTTP and WebSocket) from one client IP.
    #[arg(long = "rpc.max-connections-per-ip", id = "rpc.max-connections-per-ip", env = "SETTLED_RPC_MAX_CONNECTIONS_PER_IP", default_value_t = RpcConfig::default().max_connections_per_ip)]
    pub max_connections_per_ip: u32,

    /// Bytes of JSON-RPC request bodies in flight at once; a request past it is answered 503.
    #[arg(long = "rpc.max-in-flight-body-bytes", id = "rpc.max-in-flight-body-bytes", env = "SETTLED_RPC_MAX_IN_FLIGHT_BODY_BYTES", default_value_t = RpcConfig::default().max_in_flight_body_bytes)]
    pub max_in_flight_body_bytes: u64,

    /// Seconds a WebSocket opened without a billing key may stay silent before it is closed
    /// (0: no limit).
    #[arg(long = "rpc.anonymous-ws-idle-secs", id = "rpc.anonymous-ws-idle-secs", env = "SETTLED_RPC_ANONYMOUS_WS_IDLE_SECS", default_value_t = RpcConfig::default().anonymous_ws_idle_secs)]
    pub anonymous_ws_idle_secs: u64,

    /// Most calls in one JSON-RPC batch.
    #[arg(long = "rpc.max-batch", id = "rpc.max-batch", env = "SETTLED_RPC_MAX_BATCH", default_value_t = RpcConfig::default().max_batch_len)]
    pub max_batch: u32,

    /// Serve the `debug_bundler_*` JSON-RPC methods (development and tests only).
    #[arg(long = "rpc.debug", id = "rpc.debug", env = "SETTLED_RPC_DEBUG")]
    pub debug: bool,

    /// Serve the operator's `paymaster_*` JSON-RPC methods (policies at run time, status); keep
    /// the server on loopback or behind an authenticating proxy.
    #[arg(long = "rpc.admin", id = "rpc.admin", env = "SETTLED_RPC_ADMIN")]
    pub admin: bool,
}

impl RpcArgs {
    /// The server's configuration.
    pub fn into_config(self) -> RpcConfig {
        RpcConfig {
            addr: SocketAddr::new(self.addr, self.port),
            max_request_bytes: self.max_request_bytes,
            max_connections: self.max_connections,
            max_ws_connections: self.max_ws_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_in_flight_body_bytes: self.max_in_flight_body_bytes,
            anonymous_ws_idle_secs: self.anonymous_ws_idle_secs,
            max_batch_len: self.max_batch.max(1),
            debug: self.debug,
            admin: self.admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<RpcArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_config(), RpcConfig::default());
        Ok(())
    }
}
