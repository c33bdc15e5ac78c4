//! Reading and changing projection versions: the metadata tables and the read-model tables.

use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::{
    definition::Definition,
    sandbox::Applied,
    status::{Strategy, VersionStatus},
};
use crate::{
    error::{Error, Result},
    store::{model::RecordedEvent, reader},
};

/// A row of `projection_versions`.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub name: String,
    pub version: i32,
    pub definition: Definition,
    pub status: VersionStatus,
    pub applied_position: u64,
    pub rebuild_strategy: Option<Strategy>,
    pub rebuild_owner: Option<String>,
    pub rebuild_head: Option<u64>,
    pub heartbeat_us: Option<i64>,
    pub events_per_second: Option<f64>,
    pub last_error: Option<String>,
    /// The version a blue/green rebuild copied, for versions AdminRebuild made.
    pub rebuilt_from: Option<i32>,
}

const VERSION_COLUMNS: &str = "name, version, definition, status, applied_position, rebuild_strategy, \
     rebuild_owner, rebuild_head, (extract(epoch FROM heartbeat_at) * 1000000)::bigint AS heartbeat_us, \
     events_per_second, last_error, rebuilt_from";

fn decode_version(row: &sqlx::postgres::PgRow) -> Result<VersionRow> {
    let name: String = row.try_get("name")?;
    let definition: serde_json::Value = row.try_get("definition")?;
    let definition = serde_json::from_value(definition)
        .map_err(|error| Error::Internal(format!("stored definition of {name}: {error}")))?;
    Ok(VersionRow {
        name,
        version: row.try_get("version")?,
        definition,
        status: row.try_get::<String, _>("status")?.parse()?,
        applied_position: row.try_get::<i64, _>("applied_position")? as u64,
        rebuild_strategy: row
            .try_get::<Option<String>, _>("rebuild_strategy")?
            .map(|stored| stored.parse())
            .transpose()?,
        rebuild_owner: row.try_get("rebuild_owner")?,
        rebuild_head: row
            .try_get::<Option<i64>, _>("rebuild_head")?
            .map(|h| h as u64),
        heartbeat_us: row.try_get("heartbeat_us")?,
        events_per_second: row.try_get("events_per_second")?,
        last_error: row.try_get("last_error")?,
        rebuilt_from: row.try_get("rebuilt_from")?,
    })
}

/// Every version of a projection, newest first.
pub async fn versions(connection: &mut PgConnection, name: &str) -> Result<Vec<VersionRow>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM projection_versions WHERE name = $1 ORDER BY version DESC"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(name)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(decode_version)
        .collect()
}

/// Takes the projection's row lock for the rest of the transaction: the first lock of the lock
/// order (docs/ARCHITECTURE.md, "Lock order"). Registrations, rebuild set-ups and cut-overs, the
/// start-up check and every installation of an apply function hold it, so that no two of them
/// write the projection's catalog rows (its schema's grants, its functions) at once: PostgreSQL
/// answers a second writer of a catalog row with "tuple concurrently updated" instead of waiting.
/// `FOR NO KEY UPDATE`, so that inline appends' foreign-key checks (`FOR KEY SHARE`) never wait.
pub async fn lock_projection(connection: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("SELECT 1 FROM projections WHERE name = $1 FOR NO KEY UPDATE")
        .bind(name)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// One version, locked for the rest of the transaction.
pub async fn lock_version(
    connection: &mut PgConnection,
    name: &str,
    version: i32,
) -> Result<VersionRow> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM projection_versions WHERE name = $1 AND version = $2 FOR UPDATE"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(name)
        .bind(version)
        .fetch_one(&mut *connection)
        .await?;
    decode_version(&row)
}

/// The projection's active version number and mode, if the projection exists.
pub async fn projection(
    connection: &mut PgConnection,
    name: &str,
) -> Result<Option<(Option<i32>, String)>> {
    Ok(
        sqlx::query_as("SELECT active_version, mode FROM projections WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *connection)
            .await?,
    )
}

/// Events in (`after`, `upto`] whose type has a handler, in position order, at most `limit`.
pub async fn events_between(
    connection: &mut PgConnection,
    after: u64,
    upto: u64,
    types: &[String],
    limit: i64,
) -> Result<Vec<RecordedEvent>> {
    let sql = format!(
        "SELECT {} FROM events e
          WHERE e.position > $1 AND e.position <= $2 AND e.type = ANY($3)
          ORDER BY e.position LIMIT $4",
        reader::COLUMNS
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(after as i64)
        .bind(upto as i64)
        .bind(types)
        .bind(limit)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(reader::decode)
        .collect()
}

/// Events at the given positions, in position order.
pub async fn events_at(
    connection: &mut PgConnection,
    positions: &[i64],
) -> Result<Vec<RecordedEvent>> {
    let sql = format!(
        "SELECT {} FROM events e WHERE e.position = ANY($1) ORDER BY e.position",
        reader::COLUMNS
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(positions)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(reader::decode)
        .collect()
}

/// Points the plain-named view at a version's table. Takes the view's ACCESS EXCLUSIVE lock,
/// which waits for its readers: the raw database error is returned, so that a caller can tell a
/// `lock_timeout` (SQLSTATE 55P03) from other failures.
pub async fn point_view(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
) -> Result<(), sqlx::Error> {
    // Names are checked (name::ProjectionName): safe to format.
    // Replacing keeps the view's identity, so readers waiting on it carry on; when the columns
    // changed between versions, it is dropped and created again instead.
    let view = definition.view();
    let table = definition.table(version);
    sqlx::query("SAVEPOINT highwater_view")
        .execute(&mut *connection)
        .await?;
    let replaced = sqlx::query(AssertSqlSafe(format!(
        "CREATE OR REPLACE VIEW {view} AS SELECT * FROM {table}"
    )))
    .execute(&mut *connection)
    .await;
    match replaced {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT highwater_view")
                .execute(&mut *connection)
                .await?;
            return Ok(());
        }
        Err(error) if is_lock_timeout(&error) => return Err(error),
        Err(_) => {}
    }
    sqlx::query("ROLLBACK TO SAVEPOINT highwater_view")
        .execute(&mut *connection)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DROP VIEW IF EXISTS {view}")))
        .execute(&mut *connection)
        .await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE VIEW {view} AS SELECT * FROM {table}"
    )))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Whether a statement gave up waiting for a lock (`lock_timeout`, SQLSTATE 55P03).
pub fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Empties a version's table (in-place rebuild). Takes the table's ACCESS EXCLUSIVE lock, which
/// waits for its readers; the raw database error is returned, as for `point_view`.
pub async fn truncate(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
) -> Result<(), sqlx::Error> {
    let sql = format!("TRUNCATE {}", definition.table(version));
    sqlx::query(AssertSqlSafe(sql))
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Applies the events in (`after`, `upto`] (at most `limit` with a handler) inside PostgreSQL,
/// in the projection's sandbox and within `timeout`. Without `collect`, the first failing
/// handler undoes the call and is returned as the error.
#[allow(clippy::too_many_arguments)]
pub async fn apply_range(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
    after: u64,
    upto: u64,
    limit: i64,
    collect: bool,
    timeout: std::time::Duration,
) -> Result<std::result::Result<Applied, super::apply::HandlerFailure>> {
    let function = definition.apply_function(version);
    super::sandbox::apply(
        connection,
        super::sandbox::ApplyCall {
            function: &function,
            after,
            upto,
            limit,
            collect,
            timeout,
        },
    )
    .await
}

/// Applies the events at `positions` one call each (so that a failure names its event), in the
/// sandbox. Without `collect`, the first failure stops and is returned as the error.
pub async fn apply_positions(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
    positions: &[u64],
    collect: bool,
    timeout: std::time::Duration,
) -> Result<std::result::Result<Vec<super::apply::HandlerFailure>, super::apply::HandlerFailure>> {
    let mut failures = Vec::new();
    for &position in positions {
        let outcome = apply_range(
            connection,
            definition,
            version,
            position.saturating_sub(1),
            position,
            1,
            collect,
            timeout,
        )
        .await?;
        match outcome {
            Ok(applied) => failures.extend(applied.failures),
            Err(failure) if collect => failures.push(failure),
            Err(failure) => return Ok(Err(failure)),
        }
    }
    Ok(Ok(failures))
}
