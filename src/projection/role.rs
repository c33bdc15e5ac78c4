//! Projection SQL (setup and handlers) runs as `highwater_projection`, a role the migrations
//! create: it can read `events` and write only the `projections` schema, so a handler cannot
//! touch the log, the streams, `log_head` or the projection metadata. The switch is `SET LOCAL`,
//! so it can never outlive the transaction it was made in.

use sqlx::PgConnection;

/// The role projection SQL runs as.
pub const PROJECTION_ROLE: &str = "highwater_projection";

/// From here to [`restore`] (or the end of the transaction), statements run as the projection
/// role.
pub async fn assume(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL ROLE highwater_projection")
        .execute(&mut *connection)
        .await
        .map(|_| ())
}

/// Back to the server's own role.
pub async fn restore(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("RESET ROLE")
        .execute(&mut *connection)
        .await
        .map(|_| ())
}
