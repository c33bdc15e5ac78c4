//! A request id for every RPC: the caller's `x-request-id` (if it is a sensible one) or a new
//! UUID. Every log line of the call carries it, and the response returns it, so a client's report
//! can be matched with the server's logs.

use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;
use uuid::Uuid;

/// The header carrying the id, both ways.
pub const HEADER: &str = "x-request-id";
/// Longest caller-given id kept; longer ones are replaced.
const MAX_LENGTH: usize = 128;

#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for RequestIdService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let id = request
            .headers()
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= MAX_LENGTH)
            .map_or_else(|| Uuid::now_v7().to_string(), str::to_string);
        let span = tracing::info_span!("rpc", request_id = %id, method = %request.uri().path());
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let mut response = future.await?;
                if let Ok(value) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert(HEADER, value);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
