//! Plain HTTP pages beside JSON-RPC on the same port: a domain crate serves everything under
//! its path prefix (the customer page's `/customer/…`), GETs and small POSTs, and every other
//! request goes on to JSON-RPC untouched.

use std::{future::Future, pin::Pin, sync::Arc};

use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A page's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl PageResponse {
    /// 200 with `content_type`.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status: 200, content_type, body: body.into() }
    }

    /// 200 JSON.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::ok("application/json", value.to_string())
    }

    /// An error status with a JSON `{"error": message}` body.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        let body = serde_json::json!({ "error": message.to_string() }).to_string();
        Self { status, content_type: "application/json", body: body.into() }
    }
}

/// A request to a page: method, path (prefix included), query string and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path, prefix included.
    pub path: String,
    /// The query string (without `?`), empty if none.
    pub query: String,
    /// The body (empty for a GET).
    pub body: Vec<u8>,
}

/// Pages served under one path prefix.
pub trait Pages: Send + Sync + std::fmt::Debug + 'static {
    /// The prefix, e.g. `/customer/`.
    fn prefix(&self) -> &'static str;

    /// The answer to `request`.
    fn answer(&self, request: PageRequest) -> Pin<Box<dyn Future<Output = PageResponse> + Send>>;
}

/// Routes requests under [`Pages::prefix`] to the pages (bodies up to `max_body` bytes).
#[derive(Debug, Clone)]
pub(crate) struct PagesLayer {
    pub(crate) pages: Option<Arc<dyn Pages>>,
    pub(crate) max_body: usize,
}

impl<S> tower::Layer<S> for PagesLayer {
    type Service = PagesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PagesService { inner, layer: self.clone() }
    }
}

/// See [`PagesLayer`].
#[derive(Debug, Clone)]
pub(crate) struct PagesService<S> {
    inner: S,
    layer: PagesLayer,
}

type Boxed = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

impl<S, B> tower::Service<HttpRequest<B>> for PagesService<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = hyper::body::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Boxed;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        let pages = match &self.layer.pages {
            Some(pages) if request.uri().path().starts_with(pages.prefix()) => pages.clone(),
            _ => {
                let call = self.inner.call(request);
                return Box::pin(async move { call.await.map_err(Into::into) });
            }
        };
        let max_body = self.layer.max_body;
        Box::pin(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = request.into_parts();
            let limited = http_body_util::Limited::new(body, max_body);
            let body = match limited.collect().await {
                Ok(collected) => collected.to_bytes().to_vec(),
                Err(_) => return Ok(respond(PageResponse::error(413, "body too large"))),
            };
            let page_request = PageRequest {
                method: parts.method.as_str().to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body,
            };
            Ok(respond(pages.answer(page_request).await))
        })
    }
}

fn respond(page: PageResponse) -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(page.body));
    *response.status_mut() = hyper::StatusCode::from_u16(page.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(page.content_type),
    );
    // Pages hold a bearer of access in their URL: never cached, never sent on as a referrer,
    // and nothing loaded from elsewhere.
    headers
        .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    headers.insert(
        hyper::header::REFERRER_POLICY,
        hyper::header::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:",
        ),
    );
    response
}
