//! The bearer-token check in front of every gRPC service: a tower layer, since it needs the
//! method's path to know the role a call requires. Health and reflection stay open.

use std::sync::Arc;

use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::Service;
use tracing::debug;

use super::middleware::{Around, BoxFuture};
use crate::auth::{Denied, Role, Tokens, required_role};

/// The role of the token a request came with, in the request's extensions. Absent when no tokens
/// are configured (every caller may do everything).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
}

/// The token check; with no tokens configured, lets all through.
#[derive(Clone)]
pub struct Authenticate {
    tokens: Option<Arc<Tokens>>,
}

impl Authenticate {
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }
}

impl Around for Authenticate {
    fn around<S>(
        &self,
        mut inner: S,
        mut request: Request<Body>,
    ) -> BoxFuture<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
    {
        let checked = self.tokens.as_ref().and_then(|tokens| {
            let needs = required_role(request.uri().path())?;
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.as_bytes());
            Some(tokens.check(header, needs))
        });
        let refused = match checked {
            Some(Ok(role)) => {
                // Handlers that allow more to higher roles read it (see `Caller`).
                request.extensions_mut().insert(Caller { role });
                None
            }
            Some(Err(denied)) => Some(denied),
            None => None,
        };
        match refused {
            None => Box::pin(inner.call(request)),
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
