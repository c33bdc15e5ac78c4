//! Registering and deleting upcasters. Each change runs in one transaction that holds the
//! `upcasters` table lock (so changes come one at a time, on every server), checks the whole
//! set, generates the expression functions (owned by the upcaster role) and the dispatcher, and
//! bumps the catalog version, so that appends reload their inline catalog and every server its
//! upcast types (lock order: `upcasters`, then `log_head`; docs/ARCHITECTURE.md, "Lock order").

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};
use tracing::info;

use super::definition::{self, Dispatcher, Expression, UpcasterDefinition};
use crate::{
    error::{Error, Result},
    projection::name::ProjectionName,
    store::head,
};

/// SQLSTATE of a refused privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// An upcaster as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub definition: UpcasterDefinition,
    pub origin: String,
}

/// Every upcaster, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Registered>> {
    let mut connection = pool.acquire().await?;
    load(&mut connection).await
}

type Row = (
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
);

async fn load(connection: &mut PgConnection) -> Result<Vec<Registered>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, event_type, from_version, to_type, to_version, data_sql, metadata_sql, origin
           FROM upcasters ORDER BY name",
    )
    .fetch_all(&mut *connection)
    .await?;
    rows.into_iter()
        .map(
            |(name, event_type, from_version, to_type, to_version, data, metadata, origin)| {
                Ok(Registered {
                    definition: UpcasterDefinition {
                        name: ProjectionName::parse(&name).map_err(Error::Internal)?,
                        event_type,
                        from_version,
                        to_type: Some(to_type),
                        to_version,
                        data,
                        metadata,
                    },
                    origin,
                })
            },
        )
        .collect()
}

/// Registers an upcaster, or replaces the one of the same name. `timeout` bounds the probe call
/// of its expressions.
pub async fn register(
    pool: &PgPool,
    definition: UpcasterDefinition,
    origin: &str,
    timeout: Duration,
) -> Result<Registered> {
    definition.check()?;
    let mut connection = pool.acquire().await?;
    // Not given back to the pool: a PREPARE left by a call cut off before its DEALLOCATE must
    // not meet another caller.
    connection.close_on_drop();
    check_expressions(&mut connection, &definition).await?;
    let mut transaction = begin_locked(&mut connection).await?;
    ensure_role(&mut transaction).await?;
    let mut all: Vec<UpcasterDefinition> = load(&mut transaction)
        .await?
        .into_iter()
        .map(|r| r.definition)
        .filter(|d| d.name != definition.name)
        .collect();
    all.push(definition.clone());
    definition::check_set(&all)?;
    sqlx::query(
        "INSERT INTO upcasters AS u (name, event_type, from_version, to_type, to_version, data_sql,
                                     metadata_sql, origin)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (name) DO UPDATE SET event_type = EXCLUDED.event_type,
             from_version = EXCLUDED.from_version, to_type = EXCLUDED.to_type,
             to_version = EXCLUDED.to_version, data_sql = EXCLUDED.data_sql,
             metadata_sql = EXCLUDED.metadata_sql, origin = EXCLUDED.origin,
             registered_at = now()",
    )
    .bind(definition.name.as_str())
    .bind(&definition.event_type)
    .bind(&definition.from_version)
    .bind(definition.target_type())
    .bind(&definition.to_version)
    .bind(&definition.data)
    .bind(&definition.metadata)
    .bind(origin)
    .execute(&mut *transaction)
    .await?;
    install_functions(&mut transaction, &definition, timeout).await?;
    install_dispatcher(&mut transaction, &all).await?;
    head::bump_catalog(&mut *transaction).await?;
    transaction.commit().await?;
    info!(upcaster = %definition.name, event_type = %definition.event_type, "upcaster registered");
    Ok(Registered {
        definition: UpcasterDefinition {
            to_type: Some(definition.target_type().to_string()),
            ..definition
        },
        origin: origin.to_string(),
    })
}

/// Deletes an upcaster: events it read are read as its source again. NOT_FOUND if unknown.
pub async fn delete(pool: &PgPool, name: &str) -> Result<()> {
    let mut connection = pool.acquire().await?;
    let mut transaction = begin_locked(&mut connection).await?;
    let all = load(&mut transaction).await?;
    let Some(gone) = all.iter().find(|r| r.definition.name.as_str() == name) else {
        return Err(Error::UpcasterNotFound(name.to_string()));
    };
    let gone = gone.definition.clone();
    let rest: Vec<UpcasterDefinition> = all
        .into_iter()
        .map(|r| r.definition)
        .filter(|d| d.name != gone.name)
        .collect();
    sqlx::query("DELETE FROM upcasters WHERE name = $1")
        .bind(name)
        .execute(&mut *transaction)
        .await?;
    // The dispatcher first: it calls the functions about to go.
    install_dispatcher(&mut transaction, &rest).await?;
    for expression in [Expression::Data, Expression::Metadata] {
        // The name comes from a checked ProjectionName.
        sqlx::query(AssertSqlSafe(format!(
            "DROP FUNCTION IF EXISTS {}(jsonb, jsonb)",
            gone.function(expression)
        )))
        .execute(&mut *transaction)
        .await?;
    }
    head::bump_catalog(&mut *transaction).await?;
    transaction.commit().await?;
    info!(upcaster = %name, "upcaster deleted");
    Ok(())
}

async fn begin_locked(connection: &mut PgConnection) -> Result<Transaction<'_, Postgres>> {
    let mut transaction = sqlx::Connection::begin(connection).await?;
    sqlx::query("LOCK TABLE upcasters IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *transaction)
        .await?;
    Ok(transaction)
}

/// `PREPARE` takes one statement only (and the extended protocol refuses a second after a
/// semicolon): the generated function's body is exactly this text, so it is one SELECT.
async fn check_expressions(
    connection: &mut PgConnection,
    definition: &UpcasterDefinition,
) -> Result<()> {
    for expression in [Expression::Data, Expression::Metadata] {
        let Some(statement) = definition.statement(expression) else {
            continue;
        };
        let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
        let checked = async {
            // Planned with the search path its function will have.
            sqlx::query("SET LOCAL search_path = pg_catalog, pg_temp")
                .execute(&mut *transaction)
                .await?;
            // The user's text, but PREPARE only parses and plans it: nothing runs here.
            sqlx::query(AssertSqlSafe(format!(
                "PREPARE highwater_upcaster_check(jsonb, jsonb) AS {statement}"
            )))
            .execute(&mut *transaction)
            .await?;
            sqlx::query("DEALLOCATE highwater_upcaster_check")
                .execute(&mut *transaction)
                .await
        }
        .await;
        transaction.rollback().await?;
        checked.map_err(|error| {
            Error::invalid(
                expression.field(),
                format!(
                    "upcaster {}: {} (an upcaster's {} is one SQL expression over $data and $metadata)",
                    definition.name,
                    database_message(&error),
                    expression.field()
                ),
            )
        })?;
    }
    Ok(())
}

async fn ensure_role(connection: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT highwater_upcaster_ensure()")
        .execute(&mut *connection)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
                Error::FailedPrecondition(format!(
                    "upcasters need a role of their own, and the server's database user may not \
                     create it ({}); give that user CREATEROLE (README, Security)",
                    database_message(&error)
                ))
            }
            _ => Error::from(error),
        })?;
    let open: Option<String> = sqlx::query_scalar(
        "SELECT highwater_sandbox_functions_open_to(highwater_upcaster_role()::name) LIMIT 1",
    )
    .fetch_optional(&mut *connection)
    .await?;
    if let Some(function) = open {
        return Err(Error::FailedPrecondition(format!(
            "upcasters cannot run in their sandbox: every database role may call {function}, and \
             sandboxed SQL must not (advisory locks are how the server coordinates); a superuser \
             must take them from PUBLIC once in this database with the statement in README, \
             Security"
        )));
    }
    Ok(())
}

/// Creates the expression functions, hands them to the upcaster role, and calls each once on
/// empty objects: an expression that reaches what the role may not (a table, a file) is refused
/// here; one that fails on empty objects only may well work on real events.
async fn install_functions(
    transaction: &mut PgConnection,
    definition: &UpcasterDefinition,
    timeout: Duration,
) -> Result<()> {
    for expression in [Expression::Data, Expression::Metadata] {
        let function = definition.function(expression);
        let Some(sql) = definition.function_sql(expression) else {
            sqlx::query(AssertSqlSafe(format!(
                "DROP FUNCTION IF EXISTS {function}(jsonb, jsonb)"
            )))
            .execute(&mut *transaction)
            .await?;
            continue;
        };
        let invalid = |error: sqlx::Error| {
            Error::invalid(
                expression.field(),
                format!("upcaster {}: {}", definition.name, database_message(&error)),
            )
        };
        // Built from a checked name and the text PREPARE accepted as one statement.
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *transaction)
            .await
            .map_err(invalid)?;
        sqlx::query("SELECT highwater_upcaster_own($1::regprocedure)")
            .bind(format!("{function}(jsonb, jsonb)"))
            .execute(&mut *transaction)
            .await?;
        sqlx::query("SAVEPOINT highwater_upcaster_probe")
            .execute(&mut *transaction)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = {}",
            timeout.as_millis().max(1)
        )))
        .execute(&mut *transaction)
        .await?;
        let probe = sqlx::query(AssertSqlSafe(format!(
            "SELECT {function}('{{}}'::jsonb, '{{}}'::jsonb)"
        )))
        .execute(&mut *transaction)
        .await;
        // Undoes the probe's session changes too (the timeout, anything set_config set).
        sqlx::query("ROLLBACK TO SAVEPOINT highwater_upcaster_probe")
            .execute(&mut *transaction)
            .await?;
        if let Err(error) = probe
            && matches!(&error, sqlx::Error::Database(db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE))
        {
            return Err(invalid(error));
        }
    }
    Ok(())
}

async fn install_dispatcher(
    transaction: &mut PgConnection,
    all: &[UpcasterDefinition],
) -> Result<()> {
    // Generated from checked definitions (definition::dispatcher_sql).
    for dispatcher in [Dispatcher::Checked, Dispatcher::Fast] {
        sqlx::query(AssertSqlSafe(definition::dispatcher_sql(all, dispatcher)))
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::query(AssertSqlSafe(definition::sources_sql(all)))
        .execute(&mut *transaction)
        .await?;
    sqlx::query(AssertSqlSafe(definition::reaching_sql(all)))
        .execute(&mut *transaction)
        .await?;
    Ok(())
}

fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}
