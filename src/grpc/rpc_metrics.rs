//! Per-RPC metrics: calls started, calls handled by status code, time to handle, and calls in
//! flight, per service and method (`grpc_server_*`, the names gRPC's Prometheus integrations
//! use). Counted in a layer, so refused calls (a missing token, a full server) count too.
//!
//! A call is handled when its response ends: for a unary call when it answers, for a stream when
//! its last message and status are sent, or when the client goes away (CANCELLED). The code is
//! the `grpc-status` of the response's headers (a call answered with only a status) or trailers.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use tonic::{Code, body::Body};
use tower::Service;

use super::middleware::{Around, BoxFuture};
use highwater_api::codes::code_name;
use highwater_core::metrics::{Histogram, family_header, sample};

/// The status codes, by their number (0 to 16).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The series of one method.
struct MethodSeries {
    service: String,
    method: String,
    started: AtomicU64,
    /// Calls handled, by code number.
    handled: [AtomicU64; 17],
    in_flight: AtomicI64,
    seconds: Histogram,
}

impl MethodSeries {
    fn new(service: &str, method: &str) -> Self {
        Self {
            service: service.to_string(),
            method: method.to_string(),
            started: AtomicU64::new(0),
            handled: [const { AtomicU64::new(0) }; 17],
            in_flight: AtomicI64::new(0),
            seconds: Histogram::seconds(),
        }
    }
}

/// One server's per-RPC series. The methods are those of the descriptor sets the server serves,
/// fixed at start, so a client cannot grow the label set: any other path counts under
/// `other`/`other`.
pub struct RpcMetrics {
    series: Vec<MethodSeries>,
    /// `/package.Service/Method` to its index in `series`.
    by_path: HashMap<String, usize>,
    other: usize,
}

impl RpcMetrics {
    /// The methods of the services in `descriptor_sets` (encoded `FileDescriptorSet`s).
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut series = Vec::new();
        let mut by_path = HashMap::new();
        for encoded in descriptor_sets {
            // The sets are compiled into the binary; one that does not decode adds no methods.
            let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let service_name = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        by_path.insert(format!("/{service_name}/{}", method.name()), series.len());
                        series.push(MethodSeries::new(&service_name, method.name()));
                    }
                }
            }
        }
        let other = series.len();
        series.push(MethodSeries::new("other", "other"));
        Self {
            series,
            by_path,
            other,
        }
    }

    fn index(&self, path: &str) -> usize {
        self.by_path.get(path).copied().unwrap_or(self.other)
    }

    /// The `grpc_server_*` families.
    pub fn render(&self, out: &mut String) {
        family_header(
            out,
            "grpc_server_started_total",
            "counter",
            "RPCs started, by service and method.",
        );
        for s in &self.series {
            let labels = [
                ("grpc_service", s.service.as_str()),
                ("grpc_method", s.method.as_str()),
            ];
            sample(
                out,
                "grpc_server_started_total",
                &labels,
                s.started.load(Ordering::Relaxed) as f64,
            );
        }
        family_header(
            out,
            "grpc_server_handled_total",
            "counter",
            "RPCs finished, by service, method and status code.",
        );
        for s in &self.series {
            for code in CODES {
                let count = s.handled[code as usize].load(Ordering::Relaxed);
                if count > 0 {
                    let labels = [
                        ("grpc_service", s.service.as_str()),
                        ("grpc_method", s.method.as_str()),
                        ("grpc_code", code_name(code)),
                    ];
                    sample(out, "grpc_server_handled_total", &labels, count as f64);
                }
            }
        }
        family_header(
            out,
            "grpc_server_handling_seconds",
            "histogram",
            "Time from an RPC's start to the end of its response (a stream's whole life).",
        );
        for s in &self.series {
            let labels = [
                ("grpc_service", s.service.as_str()),
                ("grpc_method", s.method.as_str()),
            ];
            s.seconds
                .render_series(out, "grpc_server_handling_seconds", &labels);
        }
        family_header(
            out,
            "grpc_server_in_flight",
            "gauge",
            "RPCs started and not finished, by service and method.",
        );
        for s in &self.series {
            let labels = [
                ("grpc_service", s.service.as_str()),
                ("grpc_method", s.method.as_str()),
            ];
            sample(
                out,
                "grpc_server_in_flight",
                &labels,
                s.in_flight.load(Ordering::Relaxed) as f64,
            );
        }
    }
}

/// The layer that counts every call in an [`RpcMetrics`].
#[derive(Clone)]
pub struct CountCalls(pub Arc<RpcMetrics>);

impl Around for CountCalls {
    fn around<S>(&self, mut inner: S, request: Request<Body>) -> BoxFuture<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
    {
        let call = Call::start(self.0.clone(), request.uri().path());
        let future = inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let (parts, body) = response.into_parts();
            let mut call = call;
            call.code = status_of(&parts.headers);
            Ok(Response::from_parts(
                parts,
                Body::new(CountedBody { inner: body, call }),
            ))
        })
    }
}

/// One call being counted; finished (counted as handled) when dropped.
struct Call {
    metrics: Arc<RpcMetrics>,
    index: usize,
    started: Instant,
    /// The status seen so far; `None` until the headers or trailers carry one.
    code: Option<Code>,
    /// Whether the response body ended (rather than being dropped before its end).
    ended: bool,
}

impl Call {
    fn start(metrics: Arc<RpcMetrics>, path: &str) -> Self {
        let index = metrics.index(path);
        let series = &metrics.series[index];
        series.started.fetch_add(1, Ordering::Relaxed);
        series.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            metrics,
            index,
            started: Instant::now(),
            code: None,
            ended: false,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = match (self.code, self.ended) {
            (Some(code), _) => code,
            // The client went away (or the connection closed) before the status was sent.
            (None, false) => Code::Cancelled,
            (None, true) => Code::Unknown,
        };
        let series = &self.metrics.series[self.index];
        series.handled[code as usize].fetch_add(1, Ordering::Relaxed);
        series.in_flight.fetch_sub(1, Ordering::Relaxed);
        series.seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

fn status_of(headers: &HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

/// A response body that finishes its call when its trailers pass, it ends, or it is dropped.
struct CountedBody {
    inner: Body,
    call: Call,
}

impl HttpBody for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.call.code = Some(code);
                }
            }
            Poll::Ready(None) => self.call.ended = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptor_sets_and_other_paths_share_one_series() {
        let metrics = RpcMetrics::new(&[highwater_api::pb::FILE_DESCRIPTOR_SET]);
        let append = metrics.index("/highwater.v1.EventStoreService/Append");
        assert_eq!(metrics.series[append].method, "Append");
        assert_eq!(
            metrics.series[append].service,
            "highwater.v1.EventStoreService"
        );
        assert_eq!(metrics.index("/evil/path-1"), metrics.other);
        assert_eq!(metrics.index("/evil/path-2"), metrics.other);
    }

    #[test]
    fn a_call_is_in_flight_until_dropped_then_handled_with_its_code_or_cancelled() {
        let metrics = Arc::new(RpcMetrics::new(&[highwater_api::pb::FILE_DESCRIPTOR_SET]));
        let labels = r#"grpc_service="highwater.v1.EventStoreService",grpc_method="ReadStream""#;
        let rendered = || {
            let mut out = String::new();
            metrics.render(&mut out);
            out
        };
        let mut call = Call::start(
            metrics.clone(),
            "/highwater.v1.EventStoreService/ReadStream",
        );
        assert!(rendered().contains(&format!("grpc_server_in_flight{{{labels}}} 1\n")));
        call.code = Some(Code::NotFound);
        drop(call);
        let out = rendered();
        assert!(
            out.contains(&format!("grpc_server_in_flight{{{labels}}} 0\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "grpc_server_handled_total{{{labels},grpc_code=\"NOT_FOUND\"}} 1\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("grpc_server_started_total{{{labels}}} 1\n")),
            "{out}"
        );
        drop(Call::start(
            metrics.clone(),
            "/highwater.v1.EventStoreService/ReadStream",
        ));
        let out = rendered();
        assert!(
            out.contains(&format!(
                "grpc_server_handled_total{{{labels},grpc_code=\"CANCELLED\"}} 1\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "grpc_server_handling_seconds_count{{{labels}}} 2\n"
            )),
            "{out}"
        );
    }
}
