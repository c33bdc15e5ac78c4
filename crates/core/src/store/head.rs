//! The one row of `log_head`, the log's commit point: every read, lock and update of it is here,
//! so the rule that holds it (docs/ARCHITECTURE.md, "Commit order" and "Lock order", step 3) has
//! one place to be read. The append and delete functions take it inside their own SQL.

use sqlx::PgExecutor;

use crate::error::Result;

/// The last committed position: everything at or below it has committed.
pub async fn position<'c>(executor: impl PgExecutor<'c>) -> Result<u64> {
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(executor)
        .await?;
    Ok(head as u64)
}

/// Takes the row lock for the rest of the transaction (every appender of every server then
/// waits) and returns the head. Step 3 of the lock order.
pub async fn lock<'c>(executor: impl PgExecutor<'c>) -> Result<u64> {
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head FOR UPDATE")
        .fetch_one(executor)
        .await?;
    Ok(head as u64)
}

/// The version of the projection catalog, which the append function checks under the lock.
pub async fn catalog_version<'c>(executor: impl PgExecutor<'c>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT catalog_version FROM log_head")
        .fetch_one(executor)
        .await?)
}

/// Tells every writer to reload its inline catalog. Takes the row lock.
pub async fn bump_catalog<'c>(executor: impl PgExecutor<'c>) -> Result<()> {
    sqlx::query("UPDATE log_head SET catalog_version = catalog_version + 1")
        .execute(executor)
        .await?;
    Ok(())
}
