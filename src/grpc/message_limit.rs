//! The request size limits, answered `RESOURCE_EXHAUSTED`: one message's, and the bytes of
//! messages the whole server holds at once.
//!
//! tonic refuses a message over its decoding limit with `OUT_OF_RANGE`, and only once the
//! service has started decoding. This layer reads the 5-byte gRPC frame header in front of a
//! Highwater request instead: a declared length over the limit is refused before any of the
//! message is buffered, and with the code gRPC gives to exceeded limits. Every Highwater RPC has
//! a single request message, which its client sends at once, so waiting for the header delays
//! nothing. Health and reflection are passed through untouched.
//!
//! The declared length is also taken from a server-wide budget (`--max-request-bytes-in-flight`)
//! and given back when the call has answered (for a unary call such as Append, once it is
//! written), so however many connections and streams send large appends at once, the decoded
//! messages, the writer's queue and its groups stay within it. Before a call holds its share,
//! HTTP/2 flow control keeps what it may have sent to one stream window.

use std::{sync::Arc, time::Duration};

use bytes::{Buf, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tonic::{Status, body::Body};
use tower::Service;

use super::middleware::{Around, BoxFuture};

/// gRPC frames start with a compression flag byte and a 4-byte big-endian length.
const FRAME_HEADER: usize = 5;
/// The services whose requests are checked.
const CHECKED_PREFIX: &str = "/highwater.v1.";
/// How long a call waits for room in the in-flight budget before it is refused.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);

/// Refuses Highwater requests whose message is longer than `max_bytes`, and holds each one's
/// length from the in-flight budget while it runs.
#[derive(Clone)]
pub struct MessageLimit {
    max_bytes: usize,
    /// One permit per byte of request messages being read or handled, server-wide: it bounds
    /// the memory large appends can take together, whatever the number of connections.
    in_flight: Arc<Semaphore>,
    in_flight_bytes: usize,
}

impl MessageLimit {
    /// `in_flight_bytes` is at least `max_bytes` (checked at start), so every accepted message
    /// fits in the budget on its own.
    pub fn new(max_bytes: usize, in_flight_bytes: usize) -> Self {
        Self {
            max_bytes,
            in_flight: Arc::new(Semaphore::new(in_flight_bytes.min(Semaphore::MAX_PERMITS))),
            in_flight_bytes,
        }
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
        let (in_flight, in_flight_bytes) = (self.in_flight.clone(), self.in_flight_bytes);
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
                // declared <= max_bytes <= the budget, and fits in u32 (it was read from one).
                let wanted = u32::try_from(declared.max(1)).unwrap_or(u32::MAX);
                let taken = tokio::time::timeout(
                    IN_FLIGHT_WAIT,
                    in_flight.clone().acquire_many_owned(wanted),
                )
                .await;
                let Ok(Ok(permit)) = taken else {
                    let status = Status::resource_exhausted(format!(
                        "this server holds {in_flight_bytes} bytes of requests at most \
                         (--max-request-bytes-in-flight) and a request of {declared} bytes found no \
                         room within {} s; retry later",
                        IN_FLIGHT_WAIT.as_secs()
                    ));
                    return Ok(status.into_http());
                };
                let replay = tokio_stream::iter(read).chain(BodyStream::new(body));
                let response = inner
                    .call(Request::from_parts(
                        parts,
                        Body::new(StreamBody::new(replay)),
                    ))
                    .await;
                drop(permit);
                return response;
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
