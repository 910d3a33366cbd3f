//! `/metrics`: the Prometheus recorder's text, on a port of its own.

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ServerError;

/// Binds `/metrics` on `addr`; returns the bound address and the serving loop (until `cancel`).
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static), ServerError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
        what: "metrics",
        addr,
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| ServerError::Bind {
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
