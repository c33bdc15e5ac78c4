//! A request id for every RPC: the caller's `x-request-id` (if it is a sensible one) or a new
//! UUID. Every log line of the call carries it, and the response returns it, so a client's report
//! can be matched with the server's logs.

use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tower::Service;
use tracing::Instrument;
use uuid::Uuid;

use super::middleware::{Around, BoxFuture};

/// The header carrying the id, both ways.
pub const HEADER: &str = "x-request-id";
/// Longest caller-given id kept; longer ones are replaced.
const MAX_LENGTH: usize = 128;

/// Gives each call its id and its `rpc` span.
#[derive(Clone, Default)]
pub struct RequestId;

impl Around for RequestId {
    fn around<S>(&self, mut inner: S, request: Request<Body>) -> BoxFuture<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
    {
        let id = request
            .headers()
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= MAX_LENGTH)
            .map_or_else(|| Uuid::now_v7().to_string(), str::to_string);
        let span = tracing::info_span!("rpc", request_id = %id, method = %request.uri().path());
        let future = {
            let _entered = span.enter();
            inner.call(request)
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
