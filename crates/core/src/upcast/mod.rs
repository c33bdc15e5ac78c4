//! Upcasters: their definitions and their registration (docs/ARCHITECTURE.md, "Upcasting"). The
//! reading side is `store::upcasting`.

use std::{path::Path, sync::Arc, time::Duration};

use sqlx::PgPool;
use tracing::warn;

use crate::{
    error::{Error, Result},
    store::upcasting::Upcasting,
};

pub mod definition;
pub mod registry;

use definition::UpcasterDefinition;
use registry::Registered;

/// The upcaster service of the core. Cheap to clone.
#[derive(Clone)]
pub struct Upcasters {
    pool: PgPool,
    /// The longest a registration's probe of an expression may run.
    sql_timeout: Duration,
    /// This process's reading side, reloaded after each change so that a read sent after a
    /// change's reply sees it here; other processes follow on the catalog notification.
    upcasting: Arc<Upcasting>,
}

impl Upcasters {
    pub fn new(pool: PgPool, sql_timeout: Duration, upcasting: Arc<Upcasting>) -> Self {
        Self {
            pool,
            sql_timeout,
            upcasting,
        }
    }

    pub async fn register(
        &self,
        definition: UpcasterDefinition,
        origin: &str,
    ) -> Result<Registered> {
        let registered =
            registry::register(&self.pool, definition, origin, self.sql_timeout).await?;
        self.changed().await;
        Ok(registered)
    }

    pub async fn list(&self) -> Result<Vec<Registered>> {
        registry::list(&self.pool).await
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        registry::delete(&self.pool, name).await?;
        self.changed().await;
        Ok(())
    }

    /// The change committed: a failed reload is not the change's failure, and the catalog
    /// notification tries again.
    async fn changed(&self) {
        if let Err(error) = self.upcasting.reload().await {
            warn!(%error, "cannot read the upcasters again after a change");
        }
    }

    /// Registers every `*.toml` file of `dir`, in name order (`--upcasters`). A file registered
    /// again unchanged changes nothing but its registration time.
    pub async fn register_dir(&self, dir: &Path) -> Result<()> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|error| {
                Error::invalid(
                    "upcasters",
                    format!("cannot read upcasters folder {}: {error}", dir.display()),
                )
            })?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        for path in files {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|error| {
                Error::invalid("upcasters", format!("cannot read {origin}: {error}"))
            })?;
            let definition = UpcasterDefinition::from_toml(&text, &origin)?;
            self.register(definition, &origin).await?;
        }
        Ok(())
    }
}
