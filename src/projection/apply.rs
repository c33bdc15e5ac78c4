//! Running handlers on events inside a transaction: shared by inline appends, async workers,
//! rebuilds and dead-letter retries.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::definition::{Handler, Param};
use crate::store::{model::RecordedEvent, validate::is_json_content_type};

/// Runs `handler` for `event`.
pub async fn run_handler(
    connection: &mut PgConnection,
    handler: &Handler,
    event: &RecordedEvent,
) -> Result<(), sqlx::Error> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(handler.sql.as_str()));
    for param in &handler.params {
        query =
            match param {
                Param::Stream => query.bind(event.stream.as_str()),
                Param::Type => query.bind(event.event_type.as_str()),
                Param::Data => query
                    .bind(is_json_content_type(&event.content_type).then(|| event.data.as_ref())),
                Param::Metadata => query
                    .bind(serde_json::to_string(&event.metadata).unwrap_or_else(|_| "{}".into())),
                Param::Position => query.bind(event.position as i64),
                Param::Revision => query.bind(event.revision as i64),
                Param::RecordedAt => query.bind(recorded_micros(event)),
                Param::Id => query.bind(event.id),
            };
    }
    query.execute(&mut *connection).await?;
    Ok(())
}

fn recorded_micros(event: &RecordedEvent) -> i64 {
    match event.recorded_at.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i64,
        Err(before) => -(before.duration().as_micros() as i64),
    }
}

/// A handler failed on an event.
#[derive(Debug, Clone)]
pub struct HandlerFailure {
    pub position: u64,
    pub event_type: String,
    pub message: String,
}

impl HandlerFailure {
    pub fn describe(&self, projection: &str) -> String {
        format!(
            "projection {projection} failed on event {} ({}): {}",
            self.position, self.event_type, self.message
        )
    }
}

/// How a failing handler is treated while applying a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failures {
    /// The first failure aborts the batch (the caller rolls back).
    Abort,
    /// Each handler runs in a savepoint; a failure is returned in the list and the batch goes on.
    Collect,
}

/// Applies the events that have a handler, in order. With `Failures::Collect`, failed events are
/// returned (their effects rolled back) and the others applied.
pub async fn apply_batch(
    connection: &mut PgConnection,
    handlers: &BTreeMap<String, Handler>,
    events: &[RecordedEvent],
    failures: Failures,
) -> Result<Vec<HandlerFailure>, HandlerFailure> {
    let role_failure = |error: sqlx::Error| HandlerFailure {
        position: events.first().map_or(0, |e| e.position),
        event_type: String::new(),
        message: database_message(&error),
    };
    super::role::assume(connection)
        .await
        .map_err(role_failure)?;
    let failed = apply_as_projection_role(connection, handlers, events, failures).await?;
    super::role::restore(connection)
        .await
        .map_err(role_failure)?;
    Ok(failed)
}

async fn apply_as_projection_role(
    connection: &mut PgConnection,
    handlers: &BTreeMap<String, Handler>,
    events: &[RecordedEvent],
    failures: Failures,
) -> Result<Vec<HandlerFailure>, HandlerFailure> {
    let mut failed = Vec::new();
    for event in events {
        let Some(handler) = handlers.get(&event.event_type) else {
            continue;
        };
        let failure = |error: sqlx::Error| HandlerFailure {
            position: event.position,
            event_type: event.event_type.clone(),
            message: database_message(&error),
        };
        match failures {
            Failures::Abort => run_handler(connection, handler, event)
                .await
                .map_err(failure)?,
            Failures::Collect => {
                savepoint(connection, "SAVEPOINT highwater_handler")
                    .await
                    .map_err(failure)?;
                match run_handler(connection, handler, event).await {
                    Ok(()) => savepoint(connection, "RELEASE SAVEPOINT highwater_handler")
                        .await
                        .map_err(failure)?,
                    Err(error) => {
                        savepoint(connection, "ROLLBACK TO SAVEPOINT highwater_handler")
                            .await
                            .map_err(failure)?;
                        failed.push(failure(error));
                    }
                }
            }
        }
    }
    Ok(failed)
}

async fn savepoint(connection: &mut PgConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *connection).await.map(|_| ())
}

/// PostgreSQL's own message for a database error, or the error's text.
pub fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Records skipped events or dead letters in `system_messages`, in the caller's transaction.
pub async fn record_messages(
    connection: &mut PgConnection,
    projection: &str,
    version: i32,
    kind: &str,
    entries: &[(u64, String)],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let positions: Vec<i64> = entries.iter().map(|(p, _)| *p as i64).collect();
    let reasons: Vec<&str> = entries.iter().map(|(_, r)| r.as_str()).collect();
    sqlx::query(
        "INSERT INTO system_messages (projection, version, position, kind, reason)
         SELECT $1, $2, p, $3, r FROM unnest($4::bigint[], $5::text[]) AS u(p, r)",
    )
    .bind(projection)
    .bind(version)
    .bind(kind)
    .bind(positions)
    .bind(reasons)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
