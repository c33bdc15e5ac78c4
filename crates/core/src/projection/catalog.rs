//! The inline catalog: the active inline projection versions every append must apply, and the
//! catalog version they were read at (checked by the append function under the log_head lock).

use std::{collections::BTreeSet, time::Duration};

use sqlx::{PgConnection, PgPool};

use super::{
    apply,
    definition::{Definition, OnError},
    keys,
    sandbox::{self, ApplyCall},
    status::VersionStatus,
};
use crate::{
    error::{Error, Result},
    store::{
        self,
        inline::{InlineCatalog, InlineProjections},
        model::RecordedEvent,
    },
};

/// An inline projection version as appends apply it.
#[derive(Debug, Clone)]
pub struct InlineProjection {
    pub name: String,
    pub version: i32,
    /// False while an in-place rebuild owns the version: appends record skips instead.
    pub active: bool,
    pub on_error: OnError,
    /// The event types the version has handlers for.
    pub event_types: BTreeSet<String>,
    /// Source types of upcasters whose chains can make one of `event_types`: their events may
    /// reach a handler too (docs/ARCHITECTURE.md, "Upcasting").
    pub reaching: BTreeSet<String>,
    /// Its apply function, which runs the handlers in the projection's sandbox.
    pub apply_function: String,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// `log_head.catalog_version` when this catalog was read.
    pub version: i64,
    pub inline: Vec<InlineProjection>,
    /// The longest the handlers of one append may run (they run under the log_head lock).
    pub sql_timeout: Duration,
}

impl Catalog {
    pub async fn load(pool: &PgPool, sql_timeout: Duration) -> Result<Self> {
        let version = store::head::catalog_version(pool).await?;
        let rows: Vec<(String, i32, String, serde_json::Value)> = sqlx::query_as(
            "SELECT v.name, v.version, v.status, v.definition
               FROM projections p
               JOIN projection_versions v ON v.name = p.name AND v.version = p.active_version
              WHERE p.mode = 'inline'
              ORDER BY v.name",
        )
        .fetch_all(pool)
        .await?;
        let mut inline = Vec::with_capacity(rows.len());
        for (name, version, status, definition) in rows {
            let definition: Definition = serde_json::from_value(definition).map_err(|error| {
                Error::Internal(format!("stored definition of {name}: {error}"))
            })?;
            let event_types: BTreeSet<String> = definition.handlers.keys().cloned().collect();
            let reaching: Vec<String> =
                sqlx::query_scalar("SELECT unnest(highwater_upcasters.sources_reaching($1))")
                    .bind(event_types.iter().map(String::as_str).collect::<Vec<_>>())
                    .fetch_all(pool)
                    .await?;
            inline.push(InlineProjection {
                event_types,
                reaching: reaching.into_iter().collect(),
                apply_function: definition.apply_function(version),
                on_error: definition.on_error,
                active: status.parse::<VersionStatus>()? == VersionStatus::Active,
                name,
                version,
            });
        }
        Ok(Self {
            version,
            inline,
            sql_timeout,
        })
    }

    pub fn has_inline(&self) -> bool {
        !self.inline.is_empty()
    }
}

/// The inline projections the store's writer applies, read from the database with the
/// longest the handlers of one append may run (they run under the log_head lock).
#[derive(Debug, Clone, Copy)]
pub struct InlineSource {
    pub sql_timeout: Duration,
}

impl InlineProjections for InlineSource {
    type Catalog = Catalog;

    async fn load(&self, pool: &PgPool) -> Result<Catalog> {
        Catalog::load(pool, self.sql_timeout).await
    }
}

impl InlineCatalog for Catalog {
    fn version(&self) -> i64 {
        self.version
    }

    fn has_inline(&self) -> bool {
        Catalog::has_inline(self)
    }

    async fn apply(&self, transaction: &mut PgConnection, events: &[RecordedEvent]) -> Result<()> {
        apply_inline(transaction, self, events).await
    }
}

/// Applies every inline projection to the events one append just wrote, in its transaction.
/// Skips are recorded when a rebuild owns a version; a failing handler fails the append unless
/// the projection says `on_error = "skip"`, which records a dead letter instead.
pub async fn apply_inline(
    connection: &mut PgConnection,
    catalog: &Catalog,
    events: &[RecordedEvent],
) -> Result<()> {
    for projection in &catalog.inline {
        let matching: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| {
                projection.event_types.contains(&e.event_type)
                    || projection.reaching.contains(&e.event_type)
            })
            .collect();
        let (Some(first), Some(last)) = (matching.first(), matching.last()) else {
            continue;
        };

        let locked = projection.active
            && sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_xact_lock_shared($1)")
                .bind(keys::apply_key(&projection.name, projection.version))
                .fetch_one(&mut *connection)
                .await?;
        if !locked {
            let skips: Vec<(u64, String)> = matching
                .iter()
                .map(|e| (e.position, "rebuild in progress".to_string()))
                .collect();
            apply::record_messages(
                connection,
                &projection.name,
                projection.version,
                "skip",
                &skips,
            )
            .await?;
            continue;
        }

        // Exactly once: apply only above applied_position, and move it in this transaction.
        let claimed = sqlx::query(
            "UPDATE projection_versions SET applied_position = $3
              WHERE name = $1 AND version = $2 AND applied_position < $4",
        )
        .bind(&projection.name)
        .bind(projection.version)
        .bind(last.position as i64)
        .bind(first.position as i64)
        .execute(&mut *connection)
        .await?;
        if claimed.rows_affected() == 0 {
            continue;
        }
        let collect = projection.on_error == OnError::Skip;
        let outcome = sandbox::apply(
            connection,
            ApplyCall {
                function: &projection.apply_function,
                after: first.position - 1,
                upto: last.position,
                limit: matching.len() as i64,
                collect,
                timeout: catalog.sql_timeout,
            },
        )
        .await?;
        let dead: Vec<(u64, String)> = match outcome {
            Ok(applied) => applied
                .failures
                .into_iter()
                .map(|f| (f.position, f.message))
                .collect(),
            // Over its time nothing of the call was applied: with on_error = "skip", every event
            // it had becomes a dead letter, to be retried once the handler is fixed.
            Err(failure) if collect && failure.timed_out => matching
                .iter()
                .map(|e| (e.position, failure.message.clone()))
                .collect(),
            Err(failure) => {
                return Err(Error::FailedPrecondition(
                    failure.describe(&projection.name),
                ));
            }
        };
        apply::record_messages(
            connection,
            &projection.name,
            projection.version,
            "dead_letter",
            &dead,
        )
        .await?;
    }
    Ok(())
}
