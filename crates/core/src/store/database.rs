//! Connecting to PostgreSQL: creating the database when it is missing, and migrations.

use std::time::Duration;

use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};
use tracing::info;

use crate::error::{Error, Result};

/// The embedded migrations from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How long a request waits for a pooled connection before it fails as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a pool, creating the database first if it does not exist.
pub async fn connect(options: &PgConnectOptions, pool_size: u32) -> Result<PgPool> {
    ensure_database(options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A ping before every acquire is a round trip on every append group; a dead connection
        // fails its statement instead (connection errors are UNAVAILABLE, and retried by
        // clients), and the health watcher pings on its own.
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await?;
    Ok(pool)
}

/// Applies pending migrations. Safe to run from several servers at once: the migrator holds an
/// advisory lock while it works.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.map_err(|error| match error {
        sqlx::migrate::MigrateError::Execute(inner) => Error::from(inner),
        other => Error::Internal(format!("migration failed: {other}")),
    })
}

/// The server needs no superuser (README, Security): as one, a mistake in the server or in the
/// sandbox would reach the database host.
pub async fn warn_if_superuser(pool: &PgPool) -> Result<()> {
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await?;
    if superuser {
        tracing::warn!(
            "the server's database user is a superuser; give it a role of its own that owns the \
             database and has CREATEROLE (README, Security)"
        );
    }
    Ok(())
}

async fn ensure_database(options: &PgConnectOptions) -> Result<()> {
    match options.connect().await {
        Ok(connection) => {
            let _ = connection.close().await;
            Ok(())
        }
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {
            let name = options.get_database().unwrap_or("postgres").to_string();
            create_database(options, &name).await
        }
        Err(error) => Err(error.into()),
    }
}

async fn create_database(options: &PgConnectOptions, name: &str) -> Result<()> {
    let mut admin: PgConnection = options.clone().database("postgres").connect().await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    // The name is quoted as an identifier above; no other input reaches the text.
    let created = sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    match created {
        Ok(_) => {
            info!(database = name, "created database");
            Ok(())
        }
        // Another server created it at the same moment.
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// The statement a superuser runs once in the server's database when the migrations could not
/// (their user was no superuser): it takes the functions sandboxed SQL must not call (the list of
/// `highwater_sandbox_restricted_functions`, migrations/0021_sandbox_functions.sql) from PUBLIC
/// and gives them to `grantee`, the server's user. Plain SQL that calls nothing the server's user
/// owns: that user could replace its own functions, and a superuser must never run them (found
/// by review: the server's user became a superuser through 0021's function). `None` for a
/// grantee that is not a plain lowercase name.
pub fn restrict_sandbox_functions_sql(grantee: &str) -> Option<String> {
    let plain = grantee
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && grantee
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    plain.then(|| {
        format!(
            "SET search_path = pg_catalog;
DO $restrict$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND (p.proname LIKE 'pg\\_%advisory\\_%' OR p.proname LIKE 'lo\\_%'
                     OR p.proname IN ('loread', 'lowrite', 'pg_logical_emit_message', 'pg_notify'))
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, '{grantee}');
    END LOOP;
END
$restrict$;
RESET search_path;"
        )
    })
}
