//! Prometheus metrics: one process-wide recorder, served on its own port at `/metrics`.
//!
//! Every metric is scoped `settled_` and described where it is defined, so `/metrics` carries a
//! `# HELP` line for each.

use std::{convert::Infallible, net::SocketAddr, sync::OnceLock};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::NodeError;

/// Node metric names.
pub(crate) mod names {
    /// Gauge: 1, labelled with the node version.
    pub(crate) const INFO: &str = "settled_info";
    /// Gauge: newest block delivered by the chain follower.
    pub(crate) const CHAIN_HEAD: &str = "settled_chain_head_block";
    /// Counter: chain reorganisations seen.
    pub(crate) const CHAIN_REORGS: &str = "settled_chain_reorgs_total";
    /// Counter: blocks removed by reorganisations.
    pub(crate) const CHAIN_REORGED_BLOCKS: &str = "settled_chain_reorged_blocks_total";
    /// Gauge: unix time the node started.
    pub(crate) const START_TIME: &str = "settled_start_time_seconds";
    /// Counter: JSON-RPC connections closed at once, over a connection limit.
    pub(crate) const RPC_REFUSED_CONNECTIONS: &str = "settled_rpc_refused_connections_total";
    /// Counter: requests answered 503 because the in-flight body budget was spent.
    pub(crate) const RPC_BODY_BUDGET_REFUSED: &str = "settled_rpc_body_budget_refused_total";
    /// Counter: accepts that failed for want of file descriptors.
    pub(crate) const RPC_ACCEPT_ERRORS: &str = "settled_rpc_accept_fd_exhausted_total";
}

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once (several in-process nodes, as in tests, share it;
/// concurrent callers wait for the first to finish installing).
pub(crate) fn install() -> Result<PrometheusHandle, NodeError> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "a metrics recorder not owned by settled is installed".to_string())?;
            describe();
            settled_bundler::describe_metrics();
            settled_paymaster::describe_metrics();
            settled_streams::describe_metrics();
            settled_settlement::describe_metrics();
            metrics::gauge!(names::INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!(names::START_TIME).set(now.as_secs_f64());
            Ok(handle)
        })
        .clone()
        .map_err(NodeError::Metrics)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(names::INFO, "Always 1; the version label tells which settled is running");
    describe_gauge!(names::CHAIN_HEAD, "Newest block delivered by the chain follower");
    describe_counter!(names::CHAIN_REORGS, "Chain reorganisations seen by the chain follower");
    describe_counter!(names::CHAIN_REORGED_BLOCKS, "Blocks removed by chain reorganisations");
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
    // Served from the start at zero, not only after the first event.
    for counter in [
        names::CHAIN_REORGS,
        names::CHAIN_REORGED_BLOCKS,
        names::RPC_REFUSED_CONNECTIONS,
        names::RPC_ACCEPT_ERRORS,
        names::RPC_BODY_BUDGET_REFUSED,
    ] {
        metrics::counter!(counter).increment(0);
    }
    describe_gauge!(names::START_TIME, Unit::Seconds, "Unix time at which the node started");
}

/// Binds `/metrics` on `addr`; returns the bound address and the serving loop (until `cancel`).
pub(crate) async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static), NodeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| NodeError::Bind {
        what: "metrics",
        addr,
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| NodeError::Bind {
        what: "metrics",
        addr,
        source,
    })?;
    let task = async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        warn!(%err, "metrics: accept failed");
                        continue;
                    }
                },
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, handle.clone()));
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%err, "metrics: connection ended with an error");
                }
            });
        }
    };
    Ok((bound, task))
}

async fn respond<B>(
    req: Request<B>,
    handle: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(handle.render())))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n")))
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
