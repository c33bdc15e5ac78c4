//! The request size limit, answered `RESOURCE_EXHAUSTED`.
//!
//! tonic refuses a message over its decoding limit with `OUT_OF_RANGE`, and only once the
//! service has started decoding. This layer reads the 5-byte gRPC frame header in front of a
//! Highwater request instead: a declared length over the limit is refused before any of the
//! message is buffered, and with the code gRPC gives to exceeded limits. Every Highwater RPC has
//! a single request message, which its client sends at once, so waiting for the header delays
//! nothing. Health and reflection are passed through untouched.

use bytes::{Buf, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio_stream::StreamExt;
use tonic::{Status, body::Body};
use tower::Service;

use super::middleware::{Around, BoxFuture};

/// gRPC frames start with a compression flag byte and a 4-byte big-endian length.
const FRAME_HEADER: usize = 5;
/// The services whose requests are checked.
const CHECKED_PREFIX: &str = "/highwater.v1.";

/// Refuses Highwater requests whose message is longer than `max_bytes`.
#[derive(Clone)]
pub struct MessageLimit {
    max_bytes: usize,
}

impl MessageLimit {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl Around for MessageLimit {
    fn around<S>(&self, mut inner: S, request: Request<Body>) -> BoxFuture<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
    {
        if !request.uri().path().starts_with(CHECKED_PREFIX) {
            return Box::pin(inner.call(request));
        }
        let max_bytes = self.max_bytes;
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            let mut read = Vec::new();
            let mut head = BytesMut::new();
            while head.len() < FRAME_HEADER {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let data = frame.data_ref().cloned();
                        read.push(Ok(frame));
                        match data {
                            Some(data) => head.extend_from_slice(&data),
                            None => break, // trailers: the body is over
                        }
                    }
                    Some(Err(error)) => {
                        read.push(Err(error));
                        break;
                    }
                    None => break,
                }
            }
            if head.len() >= FRAME_HEADER {
                head.advance(1);
                let declared = head.get_u32() as usize;
                if declared > max_bytes {
                    let status = Status::resource_exhausted(format!(
                        "request message of {declared} bytes is over the limit of {max_bytes} \
                         bytes (--max-append-bytes plus 1 MiB)"
                    ));
                    return Ok(status.into_http());
                }
            }
            // Hand the service the whole body: the frames read so far, then the rest.
            let replay = tokio_stream::iter(read).chain(BodyStream::new(body));
            inner
                .call(Request::from_parts(
                    parts,
                    Body::new(StreamBody::new(replay)),
                ))
                .await
        })
    }
}
