//! The JSON-RPC port's accept loop, ours rather than jsonrpsee's, for what an operator's worst
//! day needs (#20): HTTP and WebSocket connections under separate limits (1,000 idle WebSockets
//! used to take every slot and refuse HTTP with 429), a limit per client IP, and a loop that
//! backs off and says so when the process runs out of file descriptors (it used to spin).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jsonrpsee::server::{HttpRequest, HttpResponse, StopHandle, serve_with_graceful_shutdown, ws};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

/// Connection limits of the JSON-RPC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// Open HTTP connections.
    pub(crate) http: u32,
    /// Open WebSocket connections (counted apart: idle subscribers cannot starve HTTP).
    pub(crate) ws: u32,
    /// Open connections of one client IP, both kinds.
    pub(crate) per_ip: u32,
    /// A WebSocket opened without a billing key is closed after this long without a word from
    /// its peer (`None`: never).
    pub(crate) anonymous_ws_idle: Option<Duration>,
}

/// A connection's response, boxed: a refused upgrade and jsonrpsee's answer are one type.
type BoxedResponse = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<HttpResponse, Box<dyn std::error::Error + Send + Sync>>,
            > + Send,
    >,
>;

/// How long the loop pauses after the process ran out of file descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

/// One accepted connection's claims, released when its HTTP service goes away: when the
/// connection closes, or when it is upgraded to a WebSocket (which jsonrpsee then counts
/// against the WebSocket limit for as long as it is open).
struct Claims {
    _http: tokio::sync::OwnedSemaphorePermit,
    _ip: IpClaim,
}

/// A client IP's connection count, decremented on drop.
struct IpClaim {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl IpClaim {
    fn try_new(counts: &Arc<Mutex<HashMap<IpAddr, u32>>>, ip: IpAddr, limit: u32) -> Option<Self> {
        let mut map = counts.lock().ok()?;
        let count = map.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Self { ip, counts: counts.clone() })
    }
}

impl Drop for IpClaim {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.lock()
            && let Some(count) = map.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The shared state of the loop.
struct Gate {
    http: Arc<Semaphore>,
    ips: Arc<Mutex<HashMap<IpAddr, u32>>>,
    per_ip: u32,
}

/// Error of a connection's service.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accepts connections on `listener` until `stop`, serving each with the services `make` gives:
/// jsonrpsee's, with the node's middleware, one for HTTP requests and one for WebSocket
/// upgrades, built with the WebSocket limit as their connection guard (jsonrpsee holds a permit
/// for each open WebSocket and answers 429 when none is left).
pub(crate) async fn accept_loop<F, S>(
    listener: TcpListener,
    make: F,
    stop: StopHandle,
    limits: ConnectionLimits,
) where
    F: Fn() -> (S, S) + Send + 'static,
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let gate = Arc::new(Gate {
        http: Arc::new(Semaphore::new(limits.http as usize)),
        ips: Arc::new(Mutex::new(HashMap::new())),
        per_ip: limits.per_ip.max(1),
    });
    let mut last_warning: Option<Instant> = None;
    loop {
        let (socket, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    back_off(&error, &mut last_warning).await;
                    continue;
                }
            },
            _ = stop.clone().shutdown() => break,
        };
        let Some(claims) = admit(&gate, remote) else {
            ::metrics::counter!(crate::names::RPC_REFUSED_CONNECTIONS).increment(1);
            drop(socket); // over a limit: closed at once, costing nothing while it waits
            continue;
        };
        let (http, ws) = make();
        let (socket, activity) = crate::idle::WatchedIo::new(socket);
        let idle = limits.anonymous_ws_idle.map(|limit| (activity, limit));
        let service = connection_service(http, ws, claims, idle);
        tokio::spawn(serve_with_graceful_shutdown(socket, service, stop.clone().shutdown()));
    }
}

/// A new connection's claims: its IP's share and an HTTP slot, or `None` over a limit.
fn admit(gate: &Gate, remote: SocketAddr) -> Option<Claims> {
    let ip = IpClaim::try_new(&gate.ips, remote.ip(), gate.per_ip)?;
    let http = gate.http.clone().try_acquire_owned().ok()?;
    Some(Claims { _http: http, _ip: ip })
}

/// The connection's service: HTTP requests to `http`, WebSocket upgrades to `ws`; `claims`
/// live as long as it does. An upgrade without an `Authorization` header starts `idle`'s
/// watchdog.
fn connection_service<S>(
    mut http: S,
    mut ws: S,
    claims: Claims,
    idle: Option<(Arc<crate::idle::Activity>, Duration)>,
) -> impl tower::Service<
    HttpRequest<hyper::body::Incoming>,
    Response = HttpResponse,
    Error = BoxError,
    Future = BoxedResponse,
> + Clone
+ Send
+ 'static
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let claims = Arc::new(claims);
    tower::service_fn(move |request: HttpRequest<hyper::body::Incoming>| {
        let _held = &claims;
        if ws::is_upgrade_request(&request) {
            let anonymous = !request.headers().contains_key(hyper::header::AUTHORIZATION);
            if let (true, Some((activity, limit))) = (anonymous, &idle) {
                activity.clone().watch(*limit);
            }
            return Box::pin(ws.call(request.map(jsonrpsee::server::HttpBody::new)))
                as BoxedResponse;
        }
        let small = content_length(&request)
            .is_some_and(|n| n <= crate::request_ids::CHECKED_BODY_BYTES as u64);
        if request.method() != hyper::Method::POST || !small {
            return Box::pin(http.call(request.map(jsonrpsee::server::HttpBody::new)));
        }
        let mut http = http.clone();
        Box::pin(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            if let Some(answer) = crate::request_ids::invalid_id_answer(&bytes) {
                return Ok(json_answer(&answer));
            }
            let request =
                HttpRequest::from_parts(parts, jsonrpsee::server::HttpBody::from(bytes.to_vec()));
            http.call(request).await
        })
    })
}

/// The request's declared body length.
fn content_length<B>(request: &HttpRequest<B>) -> Option<u64> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A JSON-RPC answer the node gives itself, before jsonrpsee.
fn json_answer(answer: &serde_json::Value) -> HttpResponse {
    let mut response = HttpResponse::new(jsonrpsee::server::HttpBody::from(answer.to_string()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// After a failed accept: out of file descriptors (EMFILE/ENFILE) pauses the loop, so it does
/// not spin on a listen queue it cannot drain, and says so (at most every 10 s); anything else
/// is logged at debug level, as jsonrpsee did.
async fn back_off(error: &std::io::Error, last_warning: &mut Option<Instant>) {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    if matches!(error.raw_os_error(), Some(EMFILE | ENFILE)) {
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last_warning = Some(Instant::now());
            warn!(%error, "out of file descriptors: not accepting connections for a moment");
        }
        ::metrics::counter!(crate::names::RPC_ACCEPT_ERRORS).increment(1);
        tokio::time::sleep(EMFILE_BACKOFF).await;
    } else {
        debug!(%error, "accept failed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Raises the soft limit of open files to the hard limit (where allowed), so connections and
/// sled's files do not run out at the common default of 1,024; logs what it is.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => debug!(limit, "open file limit"),
        Err(error) => warn!(%error, "could not raise the open file limit"),
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        && soft < 4_096
    {
        warn!(soft, "the open file limit is low for a public JSON-RPC port (ulimit -n)");
    }
}

/// Tower layer: the bodies of requests in flight share one budget of bytes (a request's
/// `Content-Length`, or the largest allowed body when it names none); one that does not fit is
/// answered 503 at once instead of being read. Bounds the memory many large requests can pin
/// at the same time (≈22 MB of resident memory per 9 MB request was measured).
#[derive(Debug, Clone)]
pub(crate) struct BodyBudgetLayer {
    budget: Arc<Semaphore>,
    max_body: u32,
}

impl BodyBudgetLayer {
    /// A budget of `budget_bytes` for bodies of at most `max_body` bytes each.
    pub(crate) fn new(budget_bytes: u64, max_body: u32) -> Self {
        let kib = usize::try_from(budget_bytes / 1024).unwrap_or(usize::MAX);
        Self { budget: Arc::new(Semaphore::new(kib.max(1))), max_body }
    }
}

impl<S> tower::Layer<S> for BodyBudgetLayer {
    type Service = BodyBudget<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyBudget { inner, layer: self.clone() }
    }
}

/// See [`BodyBudgetLayer`].
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget<S> {
    inner: S,
    layer: BodyBudgetLayer,
}

impl<S, B> tower::Service<HttpRequest<B>> for BodyBudget<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxedResponse;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        let declared = content_length(&request);
        // GETs (health) carry no body; a body over the limit is jsonrpsee's to refuse (413).
        let bytes = match declared {
            Some(bytes) => bytes.min(u64::from(self.layer.max_body)),
            None if request.method() == hyper::Method::GET => 0,
            None => u64::from(self.layer.max_body),
        };
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let permit = match kib {
            0 => None,
            kib => match self.layer.budget.clone().try_acquire_many_owned(kib) {
                Ok(permit) => Some(permit),
                Err(_) => {
                    ::metrics::counter!(crate::names::RPC_BODY_BUDGET_REFUSED).increment(1);
                    let busy = hyper::Response::builder()
                        .status(hyper::StatusCode::SERVICE_UNAVAILABLE)
                        .header(hyper::header::RETRY_AFTER, "1")
                        .body(jsonrpsee::server::HttpBody::from(
                            "busy: too many large requests in flight",
                        ));
                    return Box::pin(async move { busy.map_err(Into::into) });
                }
            },
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit); // the body has been read and answered
            response
        })
    }
}
