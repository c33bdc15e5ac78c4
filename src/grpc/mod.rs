//! Thin gRPC adapters: protobuf in, core call, protobuf out; errors mapped by `crate::error`.

pub mod convert;
pub mod event_store;

use std::sync::{Arc, OnceLock};

use crate::{error::Error, store::Store};

/// The core, once the database is ready. Requests arriving before then are answered
/// `UNAVAILABLE`, while health says `NOT_SERVING`.
#[derive(Clone, Default)]
pub struct ReadyStore(Arc<OnceLock<Store>>);

impl ReadyStore {
    pub fn get(&self) -> Result<&Store, Error> {
        self.0
            .get()
            .ok_or_else(|| Error::Unavailable("server is starting: database not ready".into()))
    }

    pub fn set(&self, store: Store) {
        let _ = self.0.set(store);
    }
}
