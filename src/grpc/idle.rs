//! Closing client connections that stay idle: no call in progress for `--idle-timeout-secs`.
//!
//! HTTP/2 keep-alive pings prove a peer is alive, not that it is using the connection, and they
//! keep bytes flowing, so idleness is counted in calls: [`IdleLayer`] marks each call on its
//! connection's [`Activity`] from the request to the end of the response body (a subscription is
//! one long call), and [`IdleIo`], the connection's socket, ends its reads once the connection
//! has had no call for the timeout. hyper then closes the connection; a client's next call opens
//! a new one.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tonic::{
    body::Body,
    transport::server::{Connected, TcpConnectInfo},
};
use tower::Service;

use super::middleware::{Around, BoxFuture};

use highwater_core::metrics;

/// Calls in progress on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    calls: u64,
    /// When the connection last had no call starting or ending: its idle time counts from here.
    since: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                calls: 0,
                since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // The state is two plain fields: a panic elsewhere cannot leave it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a call as in progress until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> CallGuard {
        let mut state = self.lock();
        state.calls += 1;
        state.since = Instant::now();
        CallGuard(self.clone())
    }

    /// When the connection becomes idle for `timeout`: `None` while a call is in progress.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let state = self.lock();
        (state.calls == 0).then(|| state.since + timeout)
    }
}

/// One call in progress; dropping it ends the call.
struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.calls -= 1;
        state.since = Instant::now();
    }
}

/// What tonic puts in each request's extensions for an [`IdleIo`] connection: the TCP addresses
/// and the connection's activity.
#[derive(Debug, Clone)]
pub struct IdleConnectInfo {
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

/// A client connection's socket that reports end of input once the connection is idle.
pub struct IdleIo {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// `None`: idle connections are never closed.
    timeout: Option<Duration>,
    /// Wakes the connection when it may have become idle.
    timer: Pin<Box<Sleep>>,
}

impl IdleIo {
    pub fn new(stream: TcpStream, timeout: Option<Duration>) -> Self {
        // tonic sets TCP_NODELAY only on sockets it accepts itself, and these it does not. With
        // Nagle's algorithm on, a response written in more than one segment (headers, message,
        // trailers) waits for the client's acknowledgement of the first one.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot turn off Nagle's algorithm on a client connection");
        }
        let far = Instant::now() + timeout.unwrap_or(Duration::from_secs(86_400));
        Self {
            stream,
            activity: Arc::new(Activity::new()),
            timeout,
            timer: Box::pin(tokio::time::sleep_until(far)),
        }
    }

    /// Ready when the connection has been idle for the timeout; otherwise re-arms the timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.activity.idle_deadline(timeout) {
                Some(deadline) if deadline <= Instant::now() => return Poll::Ready(()),
                Some(deadline) => self.timer.as_mut().reset(deadline),
                // A call is in progress: look again a timeout from now.
                None => self.timer.as_mut().reset(Instant::now() + timeout),
            }
        }
    }
}

impl Connected for IdleIo {
    type ConnectInfo = IdleConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        IdleConnectInfo {
            tcp: self.stream.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => return ready,
        }
        match this.poll_idle(cx) {
            Poll::Ready(()) => {
                metrics::increment(&metrics::RECORDED.idle_connections_closed);
                tracing::debug!(peer = ?this.stream.peer_addr().ok(), "closing an idle connection");
                // End of input: the HTTP/2 connection ends as if the client had closed it.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Marks every call on its connection's [`Activity`] until its response body ends.
#[derive(Clone, Default)]
pub struct IdleTracking;

impl Around for IdleTracking {
    fn around<S>(&self, mut inner: S, request: Request<Body>) -> BoxFuture<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
    {
        // tonic puts the connection's info in every request, over TLS too.
        let activity = request
            .extensions()
            .get::<IdleConnectInfo>()
            .map(|info| info.activity.clone());
        let Some(activity) = activity else {
            return Box::pin(inner.call(request));
        };
        let call = activity.begin();
        let response = inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // The call lasts as long as its response body: the guard lives in the body.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_progress = &call;
                    frame
                }))
            }))
        })
    }
}
