//! `Authorization: Bearer <token>` copied into each request's extensions, where the billing
//! methods read it (on WebSocket: the upgrade request's).

use std::task::{Context, Poll};

/// The bearer token of an HTTP request, put in the request's extensions by [`BearerLayer`].
#[derive(Debug, Clone)]
pub struct BearerToken(String);

impl BearerToken {
    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tower layer: copies `Authorization: Bearer <token>` into the request's extensions, where the
/// billing methods find it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerLayer;

impl<S> tower::Layer<S> for BearerLayer {
    type Service = BearerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerService { inner }
    }
}

/// See [`BearerLayer`].
#[derive(Debug, Clone)]
pub struct BearerService<S> {
    inner: S,
}

impl<S, B> tower::Service<hyper::Request<B>> for BearerService<S>
where
    S: tower::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: hyper::Request<B>) -> Self::Future {
        let token = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| BearerToken(t.trim().to_string()));
        if let Some(token) = token {
            request.extensions_mut().insert(token);
        }
        self.inner.call(request)
    }
}
