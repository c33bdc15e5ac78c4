//! The projection sandbox (docs/ARCHITECTURE.md, "The projection sandbox").
//!
//! Each projection has a role of its own (`hwp_<database oid>_<name>`, no login) and a schema of
//! its own (`projection_<name>`). Its SQL runs only inside `SECURITY DEFINER` functions owned by
//! that role: the setup through a function made for the call and dropped after it, the handlers
//! through the version's apply function. Inside such a function PostgreSQL refuses every change
//! of role (`SET ROLE`, `RESET ROLE`, `SET SESSION AUTHORIZATION`, `set_config('role', ...)`), so
//! the SQL has the role's rights and no more: it reads `events`, and it writes its own schema.
//!
//! What the role could leave behind to run later with somebody else's rights (triggers, rules,
//! policies, views, functions, grants) is checked after every setup (the audit), and handlers
//! cannot make any: a handler must be one SELECT, INSERT, UPDATE, DELETE or MERGE statement,
//! which `PREPARE` checks at registration. Session settings a handler changes with
//! `set_config(..., false)` would outlive the call on a pooled connection, so every call runs in
//! a savepoint and ends with `RESET ALL`; temporary objects a setup makes are discarded.
//! Advisory locks, which every role may take and release by default, are the server's alone
//! (migrations/0019_sandbox_advisory_locks.sql): `ensure` refuses to run a projection while its
//! role could still call them.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use super::{
    apply::{HandlerFailure, database_message},
    definition::Definition,
    status::VersionStatus,
};
use crate::error::{Error, Result};

/// SQLSTATE of a statement cancelled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";
/// SQLSTATE of a refused privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Creates the projection's role and schema if missing; grants only what its SQL may use.
pub async fn ensure(connection: &mut PgConnection, definition: &Definition) -> Result<()> {
    sqlx::query("SELECT highwater_sandbox_ensure($1)")
        .bind(definition.name.as_str())
        .execute(&mut *connection)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
                Error::FailedPrecondition(format!(
                    "projection {} needs a sandbox role of its own, and the server's database \
                     user may not create it ({}); give that user CREATEROLE (README, Security)",
                    definition.name,
                    database_message(&error)
                ))
            }
            _ => Error::from(error),
        })?;
    refuse_open_advisory_locks(connection, definition).await
}

/// Fails closed while the projection's role may take or release advisory locks, the server's
/// coordination, or call the other functions migrations/0021_sandbox_functions.sql lists: a
/// superuser has to take them from PUBLIC first, which the migrations do when run by one.
async fn refuse_open_advisory_locks(
    connection: &mut PgConnection,
    definition: &Definition,
) -> Result<()> {
    let open: Option<String> = sqlx::query_scalar(
        "SELECT highwater_sandbox_functions_open_to(highwater_sandbox_role($1)::name) LIMIT 1",
    )
    .bind(definition.name.as_str())
    .fetch_optional(&mut *connection)
    .await?;
    match open {
        None => Ok(()),
        Some(function) => Err(Error::FailedPrecondition(format!(
            "projection {} cannot run in its sandbox: every database role may call {function}, \
             which sandboxed SQL must not (advisory locks are how the server coordinates); a \
             superuser must take them from PUBLIC once in this database with the statement in \
             README, Security",
            definition.name
        ))),
    }
}

/// Runs the setup of `version` as the projection's role, then checks what it left behind. The
/// setup can alter the live versions' apply functions too: `setup::run` installs them again.
pub async fn run_setup(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
    timeout: Duration,
) -> Result<()> {
    ensure(connection, definition).await?;
    let function = format!("{}.highwater_setup", definition.schema());
    // The schema comes from a checked name (name::ProjectionName).
    sqlx::query(AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION {function}(sql text) RETURNS void LANGUAGE plpgsql
         SECURITY DEFINER SET search_path = pg_catalog, pg_temp
         AS $highwater_setup$ BEGIN EXECUTE sql; END $highwater_setup$"
    )))
    .execute(&mut *connection)
    .await?;
    own(connection, definition, &format!("{function}(text)")).await?;
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {}",
        timeout_ms(timeout)
    )))
    .execute(&mut *connection)
    .await?;
    sqlx::query(AssertSqlSafe(format!("SELECT {function}($1)")))
        .bind(definition.setup_sql(version))
        .execute(&mut *connection)
        .await
        .map_err(|error| setup_error(definition, &error, timeout))?;
    // Settings and temporary objects the setup made must not reach the server's own statements.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "RESET ALL; DISCARD TEMP; DROP FUNCTION IF EXISTS {function}(text)"
    )))
    .execute(&mut *connection)
    .await?;
    audit(connection, definition).await
}

/// Refuses (INVALID_ARGUMENT on `setup`) anything the projection's role made that could run
/// later with another role's rights or reach beyond its own tables.
pub async fn audit(connection: &mut PgConnection, definition: &Definition) -> Result<()> {
    let findings: Vec<String> = sqlx::query_scalar("SELECT highwater_sandbox_audit($1)")
        .bind(definition.name.as_str())
        .fetch_all(&mut *connection)
        .await?;
    if findings.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        "setup",
        format!(
            "{}: projection {} may only create tables, sequences and indexes in its schema, \
             with no triggers, rules, policies or grants; found {}",
            definition.origin(),
            definition.name,
            findings.join(", ")
        ),
    ))
}

/// Creates (or replaces) the apply function of `version`, owned by the projection's role.
pub async fn install_apply_function(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
) -> Result<()> {
    let sql = definition
        .apply_function_sql(version)
        .map_err(|problem| Error::invalid("handlers", format!("{}: {problem}", definition.name)))?;
    sqlx::query(AssertSqlSafe(sql))
        .execute(&mut *connection)
        .await
        .map_err(|error| {
            Error::invalid(
                "handlers",
                format!(
                    "{}: handlers of {}: {}",
                    definition.origin(),
                    definition.name,
                    database_message(&error)
                ),
            )
        })?;
    own(
        connection,
        definition,
        &format!(
            "{}(bigint, bigint, integer, boolean)",
            definition.apply_function(version)
        ),
    )
    .await
}

/// [`install_apply_function`] for a caller outside a registration (a rebuild starting, an async
/// worker taking the lead): in a transaction of its own (a savepoint inside one) that first takes
/// the projection's row lock, so that the function's catalog row has one writer at a time, and
/// from the version's definition as stored under that lock, not as the caller read it earlier: a
/// handler update committed in between must not be overwritten with the old handlers. Returns
/// that definition; `None` when the version is gone or retired (nothing is installed).
pub async fn reinstall_apply_function(
    connection: &mut PgConnection,
    name: &str,
    version: i32,
) -> Result<Option<Definition>> {
    let mut transaction = connection.begin().await?;
    super::versions::lock_projection(&mut transaction, name).await?;
    let stored = super::versions::versions(&mut transaction, name)
        .await?
        .into_iter()
        .find(|row| row.version == version && row.status != VersionStatus::Retired);
    let Some(row) = stored else {
        transaction.commit().await?;
        return Ok(None);
    };
    install_apply_function(&mut transaction, &row.definition, version).await?;
    transaction.commit().await?;
    Ok(Some(row.definition))
}

async fn own(connection: &mut PgConnection, definition: &Definition, function: &str) -> Result<()> {
    sqlx::query("SELECT highwater_sandbox_own($1, $2::regprocedure)")
        .bind(definition.name.as_str())
        .bind(function)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// What one call of an apply function did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Events with a handler that were applied (or dead-lettered).
    pub count: u64,
    /// The last position looked at (`after` if none).
    pub last: u64,
    /// Events whose handler failed (only with `collect`; otherwise the call failed).
    pub failures: Vec<HandlerFailure>,
}

/// The apply function to call and the bound on its time.
#[derive(Debug, Clone)]
pub struct ApplyCall<'a> {
    /// `projection_<name>.highwater_apply_v<N>`, from a validated identifier.
    pub function: &'a str,
    pub after: u64,
    pub upto: u64,
    pub limit: i64,
    pub collect: bool,
    pub timeout: Duration,
}

/// Applies the events in (`after`, `upto`] (at most `limit` with a handler) as the projection's
/// role, within `timeout` (statement and lock waits). Without `collect`, the first failing
/// handler undoes the call and is the error; a call over its time is an error either way (its
/// failure says `timed_out`). The caller's transaction is usable afterwards in every case.
pub async fn apply(
    connection: &mut PgConnection,
    call: ApplyCall<'_>,
) -> Result<std::result::Result<Applied, HandlerFailure>> {
    let ms = timeout_ms(call.timeout);
    // One round trip. The savepoint undoes whatever the call did to the session when it fails;
    // RESET ALL undoes what it did when it succeeds (set_config(..., false) outlives a function).
    let sql = format!(
        "SAVEPOINT highwater_sandbox;
         SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms};
         SELECT r_kind, r_count, r_position, r_type, r_message
           FROM {}({}, {}, {}, {});
         RESET ALL; DISCARD TEMP;
         RELEASE SAVEPOINT highwater_sandbox",
        call.function,
        call.after,
        call.upto,
        i32::try_from(call.limit).unwrap_or(i32::MAX),
        call.collect
    );
    let rows = match sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_all(&mut *connection)
        .await
    {
        Ok(rows) => rows,
        // A lost connection is no handler's failure: the caller's transaction is gone, and the
        // caller retries (an append answers UNAVAILABLE), instead of failing or dead-lettering
        // the events.
        Err(error) if crate::error::is_connection_error(&error) => return Err(error.into()),
        Err(error) => {
            sqlx::raw_sql(
                "ROLLBACK TO SAVEPOINT highwater_sandbox; RELEASE SAVEPOINT highwater_sandbox",
            )
            .execute(&mut *connection)
            .await?;
            let timed_out = matches!(&error, sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED));
            if !timed_out && !matches!(error, sqlx::Error::Database(_)) {
                return Err(error.into());
            }
            return Ok(Err(HandlerFailure {
                position: call.after + 1,
                event_type: String::new(),
                message: if timed_out {
                    format!("handlers ran longer than the projection SQL timeout of {ms} ms")
                } else {
                    database_message(&error)
                },
                timed_out,
            }));
        }
    };
    let mut applied = Applied {
        last: call.after,
        ..Applied::default()
    };
    for row in rows {
        let kind: String = row.try_get("r_kind")?;
        let position: Option<i64> = row.try_get("r_position")?;
        let failure = HandlerFailure {
            position: position.unwrap_or(0) as u64,
            event_type: row
                .try_get::<Option<String>, _>("r_type")?
                .unwrap_or_default(),
            message: row
                .try_get::<Option<String>, _>("r_message")?
                .unwrap_or_default(),
            timed_out: false,
        };
        match kind.as_str() {
            "done" => {
                applied.count = row.try_get::<Option<i32>, _>("r_count")?.unwrap_or(0) as u64;
                applied.last = position.unwrap_or(call.after as i64) as u64;
            }
            _ if !call.collect => return Ok(Err(failure)),
            _ => applied.failures.push(failure),
        }
    }
    Ok(Ok(applied))
}

fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, i32::MAX as u64)
}

pub fn setup_error(definition: &Definition, error: &sqlx::Error, timeout: Duration) -> Error {
    let message = match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED) => format!(
            "ran longer than the projection SQL timeout of {} ms",
            timeout_ms(timeout)
        ),
        _ => database_message(error),
    };
    Error::invalid(
        "setup",
        format!(
            "{}: setup of {} failed: {message}",
            definition.origin(),
            definition.name
        ),
    )
}
