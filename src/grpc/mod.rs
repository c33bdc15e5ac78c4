//! Thin gRPC adapters: protobuf in, core call, protobuf out; errors mapped by `crate::error`.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod event_store;
pub mod idle;
pub mod message_limit;
pub mod middleware;
pub mod request_id;

use std::sync::{Arc, OnceLock};

use crate::{error::Error, projection::Projections, store::Store, subscribe::Subscriptions};

/// The core services the adapters call.
#[derive(Clone)]
pub struct Core {
    pub store: Store,
    pub subscriptions: Subscriptions,
    pub projections: Arc<Projections>,
}

/// The core, once the database is ready. Requests arriving before then are answered
/// `UNAVAILABLE`, while health says `NOT_SERVING`.
#[derive(Clone, Default)]
pub struct ReadyCore(Arc<OnceLock<Core>>);

impl ReadyCore {
    pub fn get(&self) -> Result<&Core, Error> {
        self.0
            .get()
            .ok_or_else(|| Error::Unavailable("server is starting: database not ready".into()))
    }

    pub fn set(&self, core: Core) {
        let _ = self.0.set(core);
    }
}
