//! Registering a projection definition, as three steps in their own places:
//! 1. validate the definition on its own (`Definition::validate`, `definition.rs`);
//! 2. plan it against the versions already stored ([`plan`], a pure function: what to do, or why
//!    not);
//! 3. apply the plan in the registration's transaction ([`apply`]), which the caller opened after
//!    taking the projection's row lock (docs/ARCHITECTURE.md, "Lock order", step 1).

use std::time::Duration;

use sqlx::PgConnection;
use tracing::info;

use super::{
    apply, definition::Definition, sandbox, setup, status::VersionStatus, versions::VersionRow,
};
use crate::{
    error::{Error, Result},
    store::head,
};

/// What a registration does, decided from the stored versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The same version with the same definition: nothing to do.
    Unchanged,
    /// The same version and setup with other handlers or `on_error`: they are updated in place,
    /// to fix a failing handler and then retry its dead letters. `was_failed`: the version had
    /// failed, so it may have to resume as an in-place rebuild.
    UpdateHandlers { was_failed: bool },
    /// A new projection or a higher version: set up, checked and built in the background.
    NewVersion,
}

/// Decides what registering `definition` does, given `existing` (newest first).
pub fn plan(existing: &[VersionRow], definition: &Definition) -> Result<Plan> {
    let newest = existing.first().map_or(0, |v| v.version);
    let Some(same) = existing.iter().find(|v| v.version == definition.version) else {
        if definition.version < newest {
            return Err(Error::FailedPrecondition(format!(
                "{}: version {} of {} is older than its version {newest}",
                definition.origin(),
                definition.version,
                definition.name
            )));
        }
        return Ok(Plan::NewVersion);
    };
    if same_definition(&same.definition, definition) {
        return Ok(Plan::Unchanged);
    }
    // A version number means one definition: this number is a rebuild's copy of an older
    // version, and other handlers under it would change the copy without a build.
    if let Some(copied) = same.rebuilt_from {
        return Err(Error::FailedPrecondition(format!(
            "{}: version {} of {} was made by a rebuild of version {}; register version {}",
            definition.origin(),
            definition.version,
            definition.name,
            copied,
            newest + 1
        )));
    }
    if same.definition.setup == definition.setup && same.definition.mode == definition.mode {
        return Ok(Plan::UpdateHandlers {
            was_failed: same.status == VersionStatus::Failed,
        });
    }
    Err(Error::FailedPrecondition(format!(
        "{}: version {} of {} exists with another setup or mode; register version {}",
        definition.origin(),
        definition.version,
        definition.name,
        newest + 1
    )))
}

/// Carries out `plan` in the registration's transaction; true when the version must be built.
pub async fn apply(
    transaction: &mut PgConnection,
    plan: Plan,
    definition: &Definition,
    sql_timeout: Duration,
) -> Result<bool> {
    let stored = serde_json::to_value(definition).map_err(|e| Error::Internal(e.to_string()))?;
    match plan {
        Plan::Unchanged => Ok(false),
        Plan::UpdateHandlers { was_failed } => {
            sandbox::ensure(transaction, definition).await?;
            check_handlers(transaction, definition, definition.version).await?;
            sandbox::install_apply_function(transaction, definition, definition.version).await?;
            // Lock order, everywhere: the projections row, then log_head, then
            // projection_versions rows (inline appends take the last two in that order).
            head::bump_catalog(&mut *transaction).await?;
            // A failed active version (a rebuild in place that failed, or an audit) has a gap:
            // it stopped at applied_position while appends recorded skips. It is not made active
            // again as it stands (the inline claim would jump over the gap and the skips would
            // stay pending): it resumes as an in-place rebuild from applied_position, which
            // applies the gap and replays the skips.
            let status: Option<String> = sqlx::query_scalar(
                "UPDATE projection_versions
                    SET definition = $3, updated_at = now(),
                        status = CASE WHEN status = 'failed' AND last_error IS NOT NULL
                                       AND EXISTS (SELECT 1 FROM projections p WHERE p.name = $1 AND p.active_version = $2)
                                      THEN 'rebuilding' ELSE status END
                  WHERE name = $1 AND version = $2
                  RETURNING status",
            )
            .bind(definition.name.as_str())
            .bind(definition.version)
            .bind(&stored)
            .fetch_optional(&mut *transaction)
            .await?;
            let status = status
                .map(|stored| stored.parse::<VersionStatus>())
                .transpose()?;
            info!(projection = %definition.name, version = definition.version, "projection handlers updated");
            Ok(was_failed && status == Some(VersionStatus::Rebuilding))
        }
        Plan::NewVersion => {
            setup::run(transaction, definition, definition.version, sql_timeout).await?;
            check_handlers(transaction, definition, definition.version).await?;
            sandbox::install_apply_function(transaction, definition, definition.version).await?;
            sqlx::query(
                "INSERT INTO projection_versions (name, version, definition, status) VALUES ($1, $2, $3, 'building')",
            )
            .bind(definition.name.as_str())
            .bind(definition.version)
            .bind(&stored)
            .execute(&mut *transaction)
            .await?;
            // Versions only move forward: older versions still waiting to be built are
            // superseded (a rebuild building one stops at its next batch).
            sqlx::query(
                "UPDATE projection_versions
                    SET status = 'retired', last_error = $3, updated_at = now()
                  WHERE name = $1 AND version < $2 AND status = 'building'",
            )
            .bind(definition.name.as_str())
            .bind(definition.version)
            .bind(format!("superseded by version {}", definition.version))
            .execute(&mut *transaction)
            .await?;
            info!(projection = %definition.name, version = definition.version, "projection registered");
            Ok(true)
        }
    }
}

/// Prepares every handler against the version's table: errors name the source, the handler and
/// PostgreSQL's message. `PREPARE` takes only one SELECT, INSERT, UPDATE, DELETE, MERGE or VALUES
/// statement, so no handler can change a table's definition, make an object or touch the session
/// beyond what such a statement can (docs/ARCHITECTURE.md, "The projection sandbox"); the
/// extended protocol refuses a second statement after a semicolon.
async fn check_handlers(
    connection: &mut PgConnection,
    definition: &Definition,
    version: i32,
) -> Result<()> {
    for (event_type, handler) in definition.handlers_for(version)? {
        let checked = async {
            // The handler is the user's text, but PREPARE only parses it: nothing runs here.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PREPARE highwater_check AS {}",
                handler.sql
            )))
            .execute(&mut *connection)
            .await?;
            sqlx::query("DEALLOCATE highwater_check")
                .execute(&mut *connection)
                .await
        };
        checked.await.map_err(|error| {
            let hint = match &error {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42601") => {
                    " (a handler is one SELECT, INSERT, UPDATE, DELETE or MERGE statement)"
                }
                _ => "",
            };
            Error::invalid(
                format!("handlers.{event_type}"),
                format!(
                    "{}: handler {event_type}: {}{hint}",
                    definition.origin(),
                    apply::database_message(&error)
                ),
            )
        })?;
    }
    Ok(())
}

fn same_definition(a: &Definition, b: &Definition) -> bool {
    a.mode == b.mode && a.on_error == b.on_error && a.setup == b.setup && a.handlers == b.handlers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::definition::{Mode, OnError};

    fn definition(version: i32, setup: &str, handler: &str) -> Definition {
        Definition {
            name: crate::projection::name::ProjectionName::parse("carts").unwrap(),
            version,
            mode: Mode::Inline,
            on_error: OnError::Fail,
            setup: setup.into(),
            handlers: [("E".to_string(), handler.to_string())].into(),
            source: "carts.toml".into(),
        }
    }

    fn stored(
        definition: Definition,
        status: VersionStatus,
        rebuilt_from: Option<i32>,
    ) -> VersionRow {
        VersionRow {
            name: definition.name.to_string(),
            version: definition.version,
            definition,
            status,
            applied_position: 0,
            rebuild_strategy: None,
            rebuild_owner: None,
            rebuild_head: None,
            heartbeat_us: None,
            events_per_second: None,
            last_error: None,
            rebuilt_from,
        }
    }

    const SETUP: &str = "CREATE TABLE {{table}} (k text)";

    #[test]
    fn each_registration_is_planned_from_the_stored_versions() {
        let v1 = definition(1, SETUP, "SELECT 1");
        assert_eq!(plan(&[], &v1).unwrap(), Plan::NewVersion);

        let existing = [stored(v1.clone(), VersionStatus::Active, None)];
        assert_eq!(plan(&existing, &v1).unwrap(), Plan::Unchanged);
        assert_eq!(
            plan(&existing, &definition(1, SETUP, "SELECT 2")).unwrap(),
            Plan::UpdateHandlers { was_failed: false }
        );
        assert_eq!(
            plan(
                &existing,
                &definition(2, "CREATE TABLE {{table}} (j int)", "SELECT 1")
            )
            .unwrap(),
            Plan::NewVersion
        );
        let other_setup = plan(
            &existing,
            &definition(1, "CREATE TABLE {{table}} (j int)", "SELECT 1"),
        );
        assert!(
            other_setup
                .unwrap_err()
                .to_string()
                .contains("register version 2"),
        );

        let failed = [stored(v1.clone(), VersionStatus::Failed, None)];
        assert_eq!(
            plan(&failed, &definition(1, SETUP, "SELECT 2")).unwrap(),
            Plan::UpdateHandlers { was_failed: true }
        );

        let copy = [
            stored(
                definition(2, SETUP, "SELECT 1"),
                VersionStatus::Active,
                Some(1),
            ),
            stored(v1, VersionStatus::Retired, None),
        ];
        let taken = plan(&copy, &definition(2, SETUP, "SELECT 3")).unwrap_err();
        assert!(
            taken.to_string().contains("made by a rebuild of version 1"),
            "{taken}"
        );
        let older = plan(&copy, &definition(1, SETUP, "SELECT 3"));
        assert!(
            older.is_ok(),
            "version 1 exists: an update of its handlers is planned"
        );
        let missing_older = plan(&copy[..1], &definition(1, SETUP, "SELECT 1")).unwrap_err();
        assert!(
            missing_older
                .to_string()
                .contains("older than its version 2"),
            "{missing_older}"
        );
    }
}
