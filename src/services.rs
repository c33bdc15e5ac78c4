//! The composition of the core: the services every adapter (gRPC, HTTP) calls, and the cell that
//! holds them once the database is ready. It sits above the core modules and below the adapters,
//! so no core module reaches up to an adapter through it.

use std::sync::{Arc, OnceLock};

use highwater_core::{
    error::Error, projection::Projections, shutdown::Tasks, store::Store, subscribe::Subscriptions,
    upcast::Upcasters,
};

/// The core services the adapters call.
#[derive(Clone)]
pub struct Core {
    pub store: Store,
    pub subscriptions: Subscriptions,
    pub projections: Arc<Projections>,
    pub upcasters: Upcasters,
    /// The owner of background tasks, for the adapters' own (a read's stream to its client).
    pub tasks: Tasks,
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
