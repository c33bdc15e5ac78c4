//! Server-side projections (docs/ARCHITECTURE.md, "Projections and the rebuild protocol"): definitions, inline and async application,
//! rebuilds with advisory locks, blue/green versions, heartbeats and skip replay.

pub mod apply;
pub mod catalog;
pub mod definition;
pub mod keys;
pub mod name;
pub mod rebuild;
pub mod registration;
pub mod sandbox;
pub mod setup;
pub mod status;
pub mod versions;
pub mod worker;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row, postgres::PgConnectOptions};
use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    shutdown::Tasks,
    store::{columns::micros_to_time, head},
    subscribe::hub::Hub,
};
use definition::Definition;
use rebuild::{Progress, Strategy};
use status::VersionStatus;
use versions::VersionRow;

/// Tunables of rebuilds and async projections, set by flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events read per batch (and per transaction) by rebuilds and async workers.
    pub batch_size: i64,
    /// A rebuild whose heartbeat is older than this, and whose lock is free, is taken over.
    pub heartbeat_timeout: Duration,
    /// How often each process looks for async projections to run and rebuilds to take over.
    pub supervise_interval: Duration,
    /// A pause between rebuild batches (to leave room for other work), none by default.
    pub batch_pause: Option<Duration>,
    /// The longest one call of a projection's SQL may run, lock waits included: a setup, the
    /// handlers of one inline append, one batch of a rebuild or an async worker. Inline handlers
    /// run while the log's lock is held, so this bounds how long they can stop other appends.
    pub sql_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            heartbeat_timeout: Duration::from_secs(30),
            supervise_interval: Duration::from_secs(5),
            batch_pause: None,
            sql_timeout: DEFAULT_SQL_TIMEOUT,
        }
    }
}

/// The default of `Settings::sql_timeout` (and of `--projection-sql-timeout-ms`).
pub const DEFAULT_SQL_TIMEOUT: Duration = Duration::from_secs(5);

/// The projection service of the core.
pub struct Projections {
    pool: PgPool,
    /// For dedicated connections (rebuild and leadership locks live and die with them).
    options: PgConnectOptions,
    /// This process, as named in rebuild ownership and errors.
    pub node: String,
    settings: Settings,
    hub: Arc<Hub>,
    /// Progress of the rebuilds this process runs, by projection.
    rebuilds: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    /// Held while a rebuild starts, so that concurrent starts on this process join one rebuild.
    rebuild_start: tokio::sync::Mutex<()>,
    /// The owner of the supervisor's workers and of rebuilds, whose stop signal ends them.
    tasks: Tasks,
}

/// A projection as an operator sees it.
#[derive(Debug, Clone)]
pub struct ProjectionInfo {
    pub name: String,
    pub mode: String,
    pub active_version: Option<i32>,
    pub versions: Vec<VersionRow>,
    pub head: u64,
    /// Events committed after the active version's applied position.
    pub lag_events: u64,
    /// Age of the oldest event the active version has not applied.
    pub lag_seconds: f64,
    pub pending_skips: u64,
    pub archived_skips: u64,
    pub dead_letters: u64,
    /// Progress of a rebuild running in this process.
    pub progress: Option<Progress>,
}

/// A skip or a dead letter.
#[derive(Debug, Clone)]
pub struct SystemMessage {
    pub id: i64,
    pub projection: String,
    pub version: i32,
    pub position: u64,
    pub kind: String,
    pub reason: String,
    pub recorded_at: std::time::SystemTime,
    pub archived_at: Option<std::time::SystemTime>,
}

impl Projections {
    pub fn new(
        pool: PgPool,
        options: PgConnectOptions,
        node: String,
        settings: Settings,
        hub: Arc<Hub>,
        tasks: Tasks,
    ) -> Self {
        Self {
            pool,
            options,
            node,
            settings,
            hub,
            rebuilds: Mutex::default(),
            rebuild_start: tokio::sync::Mutex::default(),
            tasks,
        }
    }

    /// A connection of its own, named `<application>:<node>` in `pg_stat_activity`.
    async fn dedicated_connection(&self, application: &str) -> Result<PgConnection> {
        let mut name = format!("{application}:{}", self.node);
        // PostgreSQL keeps 63 bytes of an application name.
        while name.len() > 63 {
            name.pop();
        }
        Ok(self
            .options
            .clone()
            .application_name(&name)
            .connect()
            .await?)
    }

    /// Registers every `*.toml` definition in `dir`, in name order.
    pub async fn register_dir(self: &Arc<Self>, dir: &Path) -> Result<()> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|error| {
                Error::invalid(
                    "projections",
                    format!("cannot read projections folder {}: {error}", dir.display()),
                )
            })?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|error| {
                Error::invalid(
                    "projections",
                    format!("cannot read {}: {error}", path.display()),
                )
            })?;
            let definition = Definition::from_toml(&text, &path.display().to_string())?;
            self.register(definition).await?;
        }
        Ok(())
    }

    /// Registers a definition:
    /// - a new projection or a higher version: its table is created (setup), its handlers are
    ///   checked against it, and it is built in the background, then made active;
    /// - the same version with the same setup: handlers and on_error are updated in place (to
    ///   fix a failing handler, then retry its dead letters);
    /// - the same version with another setup, or an older version: refused.
    pub async fn register(self: &Arc<Self>, definition: Definition) -> Result<ProjectionInfo> {
        definition.validate()?;
        // A connection of its own, closed afterwards: nothing a setup does to its session (a
        // prepared statement, a LISTEN, an advisory lock) reaches a pooled connection.
        let mut connection = self.dedicated_connection("highwater-register").await?;
        let registered = self.register_on(&mut connection, &definition).await;
        let _ = connection.close().await;
        if registered? {
            match self.rebuild(&definition.name, Strategy::BlueGreen).await {
                Ok(_) | Err(Error::FailedPrecondition(_)) => {}
                Err(error) => return Err(error),
            }
        }
        self.get(&definition.name).await
    }

    /// The registration transaction; true when the version must be built.
    async fn register_on(
        &self,
        connection: &mut PgConnection,
        definition: &Definition,
    ) -> Result<bool> {
        let definition = definition.clone();
        let timeout = self.settings.sql_timeout;
        let mut transaction = connection.begin().await?;
        // Serialises registrations and rebuild cut-overs of this projection; the first lock of
        // both (see the lock order in docs/ARCHITECTURE.md).
        sqlx::query(
            "INSERT INTO projections (name, mode) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(definition.name.as_str())
        .bind(definition.mode.as_str())
        .execute(&mut *transaction)
        .await?;
        versions::lock_projection(&mut transaction, &definition.name).await?;
        let existing = versions::versions(&mut transaction, &definition.name).await?;
        let plan = registration::plan(&existing, &definition)?;
        let build = registration::apply(&mut transaction, plan, &definition, timeout).await?;
        transaction.commit().await?;
        Ok(build)
    }

    pub async fn list(&self) -> Result<Vec<ProjectionInfo>> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projections ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            all.push(self.get(&name).await?);
        }
        Ok(all)
    }

    pub async fn get(&self, name: &str) -> Result<ProjectionInfo> {
        let mut connection = self.pool.acquire().await?;
        let Some((active_version, mode)) = versions::projection(&mut connection, name).await?
        else {
            return Err(Error::ProjectionNotFound(name.to_string()));
        };
        let all = versions::versions(&mut connection, name).await?;
        let head = head::position(&mut *connection).await?;
        let applied = all
            .iter()
            .find(|v| Some(v.version) == active_version)
            .map_or(0, |v| v.applied_position);
        // Async and rebuilding versions lag; an inline version is as fresh as the last event it
        // handles, so its lag counts only the events it has a handler for.
        let counts = sqlx::query(
            "SELECT
                 count(*) FILTER (WHERE kind = 'skip' AND archived_at IS NULL) AS pending_skips,
                 count(*) FILTER (WHERE kind = 'skip' AND archived_at IS NOT NULL) AS archived_skips,
                 count(*) FILTER (WHERE kind = 'dead_letter' AND archived_at IS NULL) AS dead_letters
               FROM system_messages WHERE projection = $1",
        )
        .bind(name)
        .fetch_one(&mut *connection)
        .await?;
        let types: Vec<String> = all
            .iter()
            .find(|v| Some(v.version) == active_version)
            .map(|v| v.definition.handlers.keys().cloned().collect())
            .unwrap_or_default();
        let oldest_unapplied: Option<(i64, f64)> = sqlx::query_as(
            "SELECT count(*) OVER ()::bigint, extract(epoch FROM now() - min(recorded_at) OVER ())::float8
               FROM events WHERE position > $1
                AND (type = ANY($2) OR type = ANY(highwater_upcasters.sources_reaching($2))) LIMIT 1",
        )
        .bind(applied as i64)
        .bind(&types)
        .fetch_optional(&mut *connection)
        .await?;
        let (lag_events, lag_seconds) = match (active_version, oldest_unapplied) {
            (None, _) => (head, 0.0),
            (Some(_), Some((count, age))) => (count as u64, age.max(0.0)),
            (Some(_), None) => (0, 0.0),
        };
        Ok(ProjectionInfo {
            name: name.to_string(),
            mode,
            active_version,
            versions: all,
            head,
            lag_events,
            lag_seconds,
            pending_skips: counts.try_get::<i64, _>("pending_skips")? as u64,
            archived_skips: counts.try_get::<i64, _>("archived_skips")? as u64,
            dead_letters: counts.try_get::<i64, _>("dead_letters")? as u64,
            progress: self.local_progress(name),
        })
    }

    /// Skips and dead letters, newest first.
    pub async fn system_messages(
        &self,
        projection: Option<&str>,
        kind: Option<&str>,
        include_archived: bool,
        limit: i64,
    ) -> Result<Vec<SystemMessage>> {
        let rows: Vec<SystemMessageRow> = sqlx::query_as(
            "SELECT id, projection, version, position, kind, reason,
                    (extract(epoch FROM recorded_at) * 1000000)::bigint,
                    (extract(epoch FROM archived_at) * 1000000)::bigint
               FROM system_messages
              WHERE ($1::text IS NULL OR projection = $1) AND ($2::text IS NULL OR kind = $2)
                AND ($3 OR archived_at IS NULL)
              ORDER BY id DESC LIMIT $4",
        )
        .bind(projection)
        .bind(kind)
        .bind(include_archived)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, projection, version, position, kind, reason, recorded, archived)| {
                    SystemMessage {
                        id,
                        projection,
                        version,
                        position: position as u64,
                        kind,
                        reason,
                        recorded_at: micros_to_time(recorded),
                        archived_at: archived.map(micros_to_time),
                    }
                },
            )
            .collect())
    }

    /// Applies the projection's pending dead letters to its active version with the current
    /// handlers: those that now succeed are archived, the others keep their (new) error.
    pub async fn retry_dead_letters(&self, name: &str) -> Result<(u64, u64)> {
        let mut connection = self.pool.acquire().await?;
        let Some((Some(active), _)) = versions::projection(&mut connection, name).await? else {
            return Err(Error::ProjectionNotFound(name.to_string()));
        };
        let mut transaction = connection.begin().await?;
        let row = versions::lock_version(&mut transaction, name, active).await?;
        // A version being rebuilt in place is replayed from the start: its events are applied
        // by the rebuild, and retrying them too would apply them twice.
        if row.status != VersionStatus::Active {
            transaction.rollback().await?;
            return Err(Error::FailedPrecondition(format!(
                "projection {name} version {active} is {}; retry dead letters once it is active",
                row.status
            )));
        }
        let letters: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, position FROM system_messages
              WHERE projection = $1 AND version = $2 AND kind = 'dead_letter' AND archived_at IS NULL
              ORDER BY position FOR UPDATE",
        )
        .bind(name)
        .bind(active)
        .fetch_all(&mut *transaction)
        .await?;
        let positions: Vec<u64> = letters.iter().map(|(_, p)| *p as u64).collect();
        let failed = versions::apply_positions(
            &mut transaction,
            &row.definition,
            active,
            &positions,
            true,
            self.settings.sql_timeout,
        )
        .await?
        .map_err(|f| Error::Internal(f.describe(name)))?;
        let mut still_failing = 0;
        for (id, position) in &letters {
            match failed.iter().find(|f| f.position as i64 == *position) {
                Some(failure) => {
                    still_failing += 1;
                    sqlx::query("UPDATE system_messages SET reason = $2 WHERE id = $1")
                        .bind(id)
                        .bind(&failure.message)
                        .execute(&mut *transaction)
                        .await?;
                }
                None => {
                    sqlx::query(
                        "UPDATE system_messages SET archived_at = clock_timestamp() WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                }
            }
        }
        transaction.commit().await?;
        Ok((letters.len() as u64 - still_failing, still_failing))
    }
}

impl Projections {
    /// At start: every projection's sandbox (role, schema, grants), its audit, and the apply
    /// functions of its live versions, so that a database migrated from before the sandbox is
    /// brought under it. A projection whose objects fail the audit is marked failed, not run.
    pub async fn secure_existing(&self) -> Result<()> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projections ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        for name in names {
            let mut connection = self.pool.acquire().await?;
            let mut transaction = connection.begin().await?;
            versions::lock_projection(&mut transaction, &name).await?;
            let all = versions::versions(&mut transaction, &name).await?;
            let Some(newest) = all.first() else {
                transaction.commit().await?;
                continue;
            };
            sandbox::ensure(&mut transaction, &newest.definition).await?;
            if let Err(error) = sandbox::audit(&mut transaction, &newest.definition).await {
                tracing::error!(projection = %name, %error, "projection fails the sandbox audit; marked failed");
                head::bump_catalog(&mut *transaction).await?;
                sqlx::query(
                    "UPDATE projection_versions SET status = 'failed', last_error = $2, updated_at = now()
                      WHERE name = $1 AND status <> 'retired'",
                )
                .bind(&name)
                .bind(error.to_string())
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                continue;
            }
            for version in all.iter().filter(|v| v.status != VersionStatus::Retired) {
                sandbox::install_apply_function(
                    &mut transaction,
                    &version.definition,
                    version.version,
                )
                .await?;
            }
            transaction.commit().await?;
        }
        Ok(())
    }
}

/// id, projection, version, position, kind, reason, recorded (µs), archived (µs).
type SystemMessageRow = (i64, String, i32, i64, String, String, i64, Option<i64>);
