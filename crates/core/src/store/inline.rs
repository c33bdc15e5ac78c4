//! What the writer needs of inline projections, stated by the store and provided by the
//! projection subsystem (`projection::catalog::InlineSource`), wired by the server: the store
//! imports nothing above it (docs/ARCHITECTURE.md, "Crates and layers").

use std::future::Future;

use sqlx::{PgConnection, PgPool};

use super::model::RecordedEvent;
use crate::error::Result;

/// Where the writer gets the inline projections it applies in each append's transaction.
pub trait InlineProjections: Send + Sync + 'static {
    type Catalog: InlineCatalog;

    /// Reads the current catalog: loaded before the first group, and again whenever the append
    /// function says the one the writer holds is stale.
    fn load(&self, pool: &PgPool) -> impl Future<Output = Result<Self::Catalog>> + Send;
}

/// The inline projections as of one catalog version.
pub trait InlineCatalog: Send + Sync + 'static {
    /// `log_head.catalog_version` when this catalog was read; the append function compares it
    /// under the `log_head` lock and refuses a stale one.
    fn version(&self) -> i64;

    /// Whether any inline projection is active (without one, appends need no savepoints).
    fn has_inline(&self) -> bool;

    /// Applies every inline projection to the events one append just wrote, in its transaction.
    fn apply(
        &self,
        transaction: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<()>> + Send;
}
