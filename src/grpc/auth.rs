//! The bearer-token check in front of every gRPC service: a tower layer, since it needs the
//! method's path to know the role a call requires. Health and reflection stay open.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service};
use tracing::debug;

use crate::auth::{Denied, Tokens, required_role};

/// Wraps the server's routes with the token check; with no tokens configured, lets all through.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for AuthService<S>
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
        let refused = self.tokens.as_ref().and_then(|tokens| {
            let needs = required_role(request.uri().path())?;
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.as_bytes());
            tokens.check(header, needs).err()
        });
        match refused {
            None => Box::pin(self.inner.call(request)),
            Some(denied) => {
                let path = request.uri().path().to_string();
                let status = match denied {
                    Denied::Unauthenticated(reason) => Status::unauthenticated(reason),
                    Denied::Forbidden { name, role, needs } => Status::permission_denied(format!(
                        "token {name:?} has role {role}; this call needs {needs}"
                    )),
                };
                debug!(%path, code = ?status.code(), "refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
