//! Handler failures and the system messages (skips, dead letters) they become. Handlers
//! themselves run only inside the sandbox (`sandbox::apply`).

use sqlx::PgConnection;

/// A handler failed on an event.
#[derive(Debug, Clone)]
pub struct HandlerFailure {
    pub position: u64,
    pub event_type: String,
    pub message: String,
    /// The call ran over the projection SQL timeout: no event of it was applied.
    pub timed_out: bool,
}

impl HandlerFailure {
    pub fn describe(&self, projection: &str) -> String {
        format!(
            "projection {projection} failed on event {} ({}): {}",
            self.position, self.event_type, self.message
        )
    }
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
