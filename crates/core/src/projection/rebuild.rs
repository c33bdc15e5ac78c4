//! The rebuild orchestrator (docs/ARCHITECTURE.md, "Projections and the rebuild protocol", steps 1 to 6).
//!
//! A rebuild runs on a dedicated connection that holds the projection's rebuild lock (session
//! advisory lock) from start to end: if the process dies, the lock goes with its connection and
//! another process resumes from the last committed batch once the heartbeat is stale.
//! - Blue/green: the next version is built beside the active one (which inline appends keep
//!   updating), then cut over in one transaction holding the log_head lock.
//! - In-place: the active version's apply lock is taken exclusively, so inline appends record
//!   skips instead of applying; the table is emptied and replayed; the final transaction (holding
//!   the log_head lock) catches up, reactivates the version and releases the apply lock, and the
//!   recorded skips are then replayed above applied_position and archived.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Projections, apply,
    definition::{Definition, OnError},
    keys,
    status::VersionStatus,
    versions::{self, VersionRow},
};
use crate::{
    error::{Error, Result},
    store::head,
};

pub use super::status::Strategy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Backfilling,
    CatchingUp,
    CuttingOver,
    ReplayingSkips,
    Done,
    Failed,
}

/// What a rebuild reports as it goes.
#[derive(Debug, Clone)]
pub struct Progress {
    pub phase: Phase,
    pub version: i32,
    pub position: u64,
    pub head: u64,
    pub events_per_second: f64,
    pub skips_replayed: u64,
    pub node: String,
    pub error: Option<String>,
}

impl Progress {
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }
}

/// The application name of rebuild connections (followed by `:<node>`).
const REBUILD_APPLICATION: &str = "highwater-rebuild";

/// Once the backfill is this close to the head, the rest is applied in the cut-over transaction.
const CUT_OVER_DISTANCE: u64 = 500;
/// The most events the cut-over applies while it holds `log_head`: if appends moved the head
/// further since the backfill stopped, the cut-over lets go and the backfill goes on.
const CUT_OVER_MAX_EVENTS: u64 = 4 * CUT_OVER_DISTANCE;
/// How long a rebuild waits for the read model's readers (for the ACCESS EXCLUSIVE lock of the
/// view, or of the table an in-place rebuild empties) before it lets go and tries again. The lock
/// is taken before `log_head`, so appends never wait for those readers; while it is queued, new
/// readers of the read model wait behind it, at most this long.
const READER_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest pause between two attempts to take a read model's lock.
const READER_RETRY_MAX_PAUSE: Duration = Duration::from_secs(2);

/// How a cut-over attempt ended.
enum CutOver {
    Done,
    /// Backfill again, then try again: the head moved more than `CUT_OVER_MAX_EVENTS` past the
    /// backfill, or readers held the view past the lock timeout.
    NotYet,
}

/// The end of a rebuild whose version a newer registration retired while it was built.
fn superseded(name: &str, version: i32) -> Error {
    Error::FailedPrecondition(format!(
        "version {version} of {name} was superseded by a newer version registered during its rebuild"
    ))
}

/// The end of a rebuild whose server is stopping, at a batch boundary.
fn stopping() -> Error {
    Error::Unavailable(
        "the server is stopping: the rebuild stopped after its last batch and is resumed by a \
         running server once its heartbeat is stale"
            .into(),
    )
}

/// Sets the lock timeout for the statements that wait for the read model's readers.
async fn limit_reader_wait(connection: &mut PgConnection) -> Result<()> {
    let sql = format!(
        "SET LOCAL lock_timeout = {}",
        READER_LOCK_TIMEOUT.as_millis()
    );
    sqlx::query(AssertSqlSafe(sql))
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Lifts the limit again, for the locks that follow (`log_head`, rows).
async fn lift_reader_wait(connection: &mut PgConnection) -> Result<()> {
    sqlx::query("SET LOCAL lock_timeout = DEFAULT")
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Pauses before the next attempt at a read model's lock, doubling up to a maximum.
async fn pause_for_readers(pause: &mut Duration, name: &str, what: &str) {
    info!(
        projection = name,
        waiting_for = what,
        "readers of the read model hold its lock; trying again"
    );
    tokio::time::sleep(*pause).await;
    *pause = (*pause * 2).min(READER_RETRY_MAX_PAUSE);
}

impl Projections {
    /// Starts (or joins, if this process runs it already) a rebuild; progress comes on the
    /// returned channel. The rebuild belongs to the server: dropping the receiver does not stop it.
    pub async fn rebuild(
        self: &Arc<Self>,
        name: &str,
        strategy: Strategy,
    ) -> Result<watch::Receiver<Progress>> {
        // Two callers on this process must not race for the advisory lock: the loser would be
        // told that its own node is rebuilding. The second one waits here, then joins.
        let _starting = self.rebuild_start.lock().await;
        if let Some(running) = self.running_rebuild(name) {
            return Ok(running);
        }
        let mut connection = self.dedicated_connection(REBUILD_APPLICATION).await?;
        if versions::projection(&mut connection, name).await?.is_none() {
            return Err(Error::ProjectionNotFound(name.to_string()));
        }
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(keys::rebuild_key(name))
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            // The holder's connection is named after its node: read it from the lock itself, so the
            // answer is right even before the owner has written anything.
            let key = keys::rebuild_key(name);
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                    AND l.classid::bigint = (($1 >> 32) & 4294967295) AND l.objid::bigint = ($1 & 4294967295)
                  LIMIT 1",
            )
            .bind(key)
            .fetch_optional(&mut connection)
            .await?;
            let owner = owner.map(|application| {
                application
                    .strip_prefix(REBUILD_APPLICATION)
                    .unwrap_or(&application)
                    .trim_start_matches(':')
                    .to_string()
            });
            let _ = connection.close().await;
            return Err(Error::FailedPrecondition(format!(
                "projection {name} is being rebuilt by node {}",
                owner.as_deref().unwrap_or("(unknown)")
            )));
        }
        let mut running = self.rebuilds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(progress) = running.get(name).filter(|p| !p.borrow().is_finished()) {
            return Ok(progress.clone());
        }
        let (sender, receiver) = watch::channel(Progress {
            phase: Phase::Starting,
            // Not chosen yet: the run picks the version (the active one or the next).
            version: 0,
            position: 0,
            head: 0,
            events_per_second: 0.0,
            skips_replayed: 0,
            node: self.node.clone(),
            error: None,
        });
        running.insert(name.to_string(), receiver.clone());
        drop(running);

        let projections = self.clone();
        let name = name.to_string();
        self.tasks.clone().spawn("rebuild", async move {
            let mut run = RebuildRun {
                projections: &projections,
                name: &name,
                connection,
                progress: sender,
                started: Instant::now(),
                reader_pause: Duration::from_millis(50),
            };
            let outcome = run.run(strategy).await;
            match outcome {
                Ok(()) => {}
                // Left as it is: every batch committed its progress, and the lock goes with
                // the connection, so a running server resumes it (step 5 of the protocol).
                Err(error) if projections.tasks.is_stopping() => {
                    info!(projection = %name, %error, "rebuild interrupted by shutdown");
                    run.progress.send_modify(|p| {
                        p.phase = Phase::Failed;
                        p.error = Some(stopping().to_string());
                    });
                }
                Err(error) => {
                    warn!(projection = %name, %error, "rebuild failed");
                    run.fail(&error.to_string()).await;
                }
            }
            let _ = run.connection.close().await;
        });
        Ok(receiver)
    }

    fn running_rebuild(&self, name: &str) -> Option<watch::Receiver<Progress>> {
        let running = self.rebuilds.lock().unwrap_or_else(|p| p.into_inner());
        running
            .get(name)
            .filter(|p| !p.borrow().is_finished())
            .cloned()
    }

    /// The progress of a rebuild running in this process, if any.
    pub fn local_progress(&self, name: &str) -> Option<Progress> {
        let running = self.rebuilds.lock().unwrap_or_else(|p| p.into_inner());
        running.get(name).map(|p| p.borrow().clone())
    }
}

struct RebuildRun<'a> {
    projections: &'a Arc<Projections>,
    name: &'a str,
    /// Holds the rebuild lock (and, in place, the apply lock) for the whole rebuild.
    connection: PgConnection,
    progress: watch::Sender<Progress>,
    started: Instant,
    /// The pause before the next attempt at the view's lock; grows while readers hold it, so
    /// that queued attempts block the view's new readers a fraction of the time only.
    reader_pause: Duration,
}

impl RebuildRun<'_> {
    async fn run(&mut self, requested: Strategy) -> Result<()> {
        let (target, strategy) = self.prepare(requested).await?;
        let version = target.version;
        self.progress.send_modify(|p| p.version = version);
        // The handlers as stored now: a handler update may have committed while this rebuild
        // waited for appends or readers. A version retired meanwhile stops at the first batch.
        let definition =
            super::sandbox::reinstall_apply_function(&mut self.connection, self.name, version)
                .await?
                .unwrap_or_else(|| target.definition.clone());
        info!(
            projection = self.name,
            version,
            strategy = strategy.as_str(),
            "rebuild started"
        );
        sqlx::query(
            "UPDATE projection_versions
                SET rebuild_owner = $3, rebuild_strategy = $4, heartbeat_at = now(), last_error = NULL, updated_at = now()
              WHERE name = $1 AND version = $2",
        )
        .bind(self.name)
        .bind(version)
        .bind(&self.projections.node)
        .bind(strategy.as_str())
        .execute(&mut self.connection)
        .await?;

        loop {
            self.backfill(&definition, version).await?;
            match self.cut_over(&definition, version, strategy).await? {
                CutOver::Done => break,
                CutOver::NotYet => {}
            }
        }
        let replayed = if strategy == Strategy::InPlace {
            self.replay_skips(&definition, version).await?
        } else {
            0
        };
        self.progress.send_modify(|p| {
            p.phase = Phase::Done;
            p.skips_replayed = replayed;
        });
        info!(
            projection = self.name,
            version,
            skips_replayed = replayed,
            "rebuild done"
        );
        Ok(())
    }

    /// Chooses (and if needed creates or resets) the version to build.
    async fn prepare(&mut self, requested: Strategy) -> Result<(VersionRow, Strategy)> {
        // The versions are read under the projection's row lock and, blue/green, the new one made
        // before it is released: a registration meanwhile would take the same number, or write
        // the same catalog rows (the schema's grants, the apply functions) in the setup.
        let mut transaction = self.connection.begin().await?;
        versions::lock_projection(&mut transaction, self.name).await?;
        let all = versions::versions(&mut transaction, self.name).await?;
        // A rebuild interrupted earlier is resumed whatever was asked.
        if let Some(interrupted) = all.iter().find(|v| v.status.is_rebuild()) {
            transaction.commit().await?;
            let strategy = if interrupted.status == VersionStatus::Rebuilding {
                Strategy::InPlace
            } else {
                Strategy::BlueGreen
            };
            if strategy == Strategy::InPlace {
                self.take_apply_lock(interrupted.version).await?;
                // Nothing of this rebuild is applied yet, so the table may still hold what the
                // version held before (the rebuild stopped before emptying it).
                if interrupted.applied_position == 0 {
                    self.empty_table(&interrupted.definition, interrupted.version)
                        .await?;
                }
            }
            return Ok((interrupted.clone(), strategy));
        }
        let active = all
            .iter()
            .find(|v| v.status == VersionStatus::Active)
            .or_else(|| all.iter().find(|v| v.status == VersionStatus::Failed))
            .cloned()
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "projection {} has no version to rebuild",
                    self.name
                ))
            })?;
        match requested {
            Strategy::BlueGreen => {
                let next = all.first().map_or(1, |v| v.version) + 1;
                super::setup::run(
                    &mut transaction,
                    &active.definition,
                    next,
                    self.projections.settings.sql_timeout,
                )
                .await?;
                let mut definition = active.definition.clone();
                definition.version = next;
                sqlx::query(
                    "INSERT INTO projection_versions (name, version, definition, status, rebuilt_from)
                     VALUES ($1, $2, $3, 'building', $4)",
                )
                .bind(self.name)
                .bind(next)
                .bind(serde_json::to_value(&definition).map_err(|e| Error::Internal(e.to_string()))?)
                .bind(active.version)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                let row = versions::versions(&mut self.connection, self.name)
                    .await?
                    .into_iter()
                    .find(|v| v.version == next)
                    .ok_or_else(|| Error::Internal("new version vanished".into()))?;
                Ok((row, Strategy::BlueGreen))
            }
            Strategy::InPlace => {
                transaction.commit().await?;
                // Waits for appends applying this version to commit; later ones record skips.
                self.take_apply_lock(active.version).await?;
                let mut transaction = self.connection.begin().await?;
                head::lock(&mut *transaction).await?;
                sqlx::query(
                    "UPDATE projection_versions SET status = 'rebuilding', applied_position = 0, updated_at = now()
                      WHERE name = $1 AND version = $2",
                )
                .bind(self.name)
                .bind(active.version)
                .execute(&mut *transaction)
                .await?;
                // The replay applies every event again and dead-letters again what still
                // fails: the version's pending dead letters are superseded. Left pending, a
                // later RetryDeadLetters would apply their events a second time.
                sqlx::query(
                    "UPDATE system_messages SET archived_at = clock_timestamp()
                      WHERE projection = $1 AND version = $2 AND kind = 'dead_letter'
                        AND archived_at IS NULL",
                )
                .bind(self.name)
                .bind(active.version)
                .execute(&mut *transaction)
                .await?;
                head::bump_catalog(&mut *transaction).await?;
                transaction.commit().await?;
                self.empty_table(&active.definition, active.version).await?;
                let mut row = active;
                row.status = VersionStatus::Rebuilding;
                row.applied_position = 0;
                Ok((row, Strategy::InPlace))
            }
        }
    }

    /// Empties the table of a version an in-place rebuild owns (status `rebuilding`, its apply
    /// lock held: appends record skips, the async worker idles, so nothing else writes it).
    /// Outside `log_head`: TRUNCATE waits for the table's readers, and appends must not wait
    /// with it; the wait is bounded and retried.
    async fn empty_table(&mut self, definition: &Definition, version: i32) -> Result<()> {
        let mut pause = Duration::from_millis(50);
        loop {
            let mut transaction = self.connection.begin().await?;
            // TRUNCATE fires the table's triggers as the server: none may exist (the audit
            // refuses them; handlers cannot make them), and this checks it again first.
            super::sandbox::audit(&mut transaction, definition).await?;
            limit_reader_wait(&mut transaction).await?;
            match versions::truncate(&mut transaction, definition, version).await {
                Err(error) if versions::is_lock_timeout(&error) => {
                    transaction.rollback().await?;
                    pause_for_readers(&mut pause, self.name, "table").await;
                }
                other => {
                    other?;
                    transaction.commit().await?;
                    return Ok(());
                }
            }
        }
    }

    async fn take_apply_lock(&mut self, version: i32) -> Result<()> {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(keys::apply_key(self.name, version))
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Applies the log in batches, each with its progress and heartbeat, until close to the head.
    async fn backfill(&mut self, definition: &Definition, version: i32) -> Result<()> {
        let batch_size = self.projections.settings.batch_size;
        let mut scanned_since_start = 0u64;
        // The head is known from the first message on, so that progress has a goal at once.
        let start_head = head::position(&mut self.connection).await?;
        self.progress.send_modify(|p| {
            p.phase = Phase::Backfilling;
            p.version = version;
            p.head = start_head;
        });
        loop {
            if self.projections.tasks.is_stopping() {
                return Err(stopping());
            }
            let mut transaction = self.connection.begin().await?;
            let head = head::position(&mut *transaction).await?;
            let row = versions::lock_version(&mut transaction, self.name, version).await?;
            if row.status == VersionStatus::Retired {
                transaction.rollback().await?;
                return Err(superseded(self.name, version));
            }
            let done = apply_range(
                &mut transaction,
                self.name,
                definition,
                version,
                row.applied_position,
                head,
                batch_size,
                self.projections.settings.sql_timeout,
            )
            .await?;
            let full = done.count as i64 == batch_size;
            let applied = if full { done.last } else { head };
            scanned_since_start += applied - row.applied_position;
            let rate = scanned_since_start as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            sqlx::query(
                "UPDATE projection_versions
                    SET applied_position = $3, rebuild_head = $4, heartbeat_at = now(), events_per_second = $5,
                        updated_at = now()
                  WHERE name = $1 AND version = $2",
            )
            .bind(self.name)
            .bind(version)
            .bind(applied as i64)
            .bind(head as i64)
            .bind(rate)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            self.progress.send_modify(|p| {
                p.position = applied;
                p.head = head;
                p.events_per_second = rate;
                if !full {
                    p.phase = Phase::CatchingUp;
                }
            });
            // Close enough when the head, read again now, is near: what committed while the
            // batch ran is what the cut-over will apply under log_head.
            if !full {
                let now = head::position(&mut self.connection).await?;
                if now.saturating_sub(applied) <= CUT_OVER_DISTANCE {
                    return Ok(());
                }
            }
            if let Some(pause) = self.projections.settings.batch_pause {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One transaction holding the log_head lock: the last events, then the switch.
    async fn cut_over(
        &mut self,
        definition: &Definition,
        version: i32,
        strategy: Strategy,
    ) -> Result<CutOver> {
        self.progress.send_modify(|p| p.phase = Phase::CuttingOver);
        let mut transaction = self.connection.begin().await?;
        // Lock order (docs/ARCHITECTURE.md): the projections row, the view, log_head, the version
        // row. The view is pointed first, under a lock timeout: its ACCESS EXCLUSIVE lock waits
        // for the read model's readers, and appends must not wait with it. No append touches a
        // view, so holding it while waiting for log_head cannot deadlock.
        versions::lock_projection(&mut transaction, self.name).await?;
        // In place, the view already shows this version's table: nothing to lock.
        if strategy == Strategy::BlueGreen {
            limit_reader_wait(&mut transaction).await?;
            match versions::point_view(&mut transaction, definition, version).await {
                Err(error) if versions::is_lock_timeout(&error) => {
                    // Back to the backfill after the pause, so that what commits while readers
                    // hold the view is applied outside log_head, not piled up for the cut-over.
                    transaction.rollback().await?;
                    pause_for_readers(&mut self.reader_pause, self.name, "view").await;
                    return Ok(CutOver::NotYet);
                }
                other => other?,
            }
            lift_reader_wait(&mut transaction).await?;
        }
        let head = head::lock(&mut *transaction).await?;
        let row = versions::lock_version(&mut transaction, self.name, version).await?;
        // Versions only move forward: one registered while this one was built replaced it.
        if row.status == VersionStatus::Retired {
            transaction.rollback().await?;
            return Err(superseded(self.name, version));
        }
        if head.saturating_sub(row.applied_position) > CUT_OVER_MAX_EVENTS {
            transaction.rollback().await?;
            return Ok(CutOver::NotYet);
        }
        apply_range(
            &mut transaction,
            self.name,
            definition,
            version,
            row.applied_position,
            head,
            i64::from(i32::MAX),
            self.projections.settings.sql_timeout,
        )
        .await?;
        if strategy == Strategy::BlueGreen {
            sqlx::query(
                "UPDATE projection_versions SET status = 'retired', updated_at = now()
                  WHERE name = $1 AND status = 'active'",
            )
            .bind(self.name)
            .execute(&mut *transaction)
            .await?;
        }
        sqlx::query(
            "UPDATE projection_versions
                SET status = 'active', applied_position = $3, rebuild_head = $3, heartbeat_at = now(), updated_at = now()
              WHERE name = $1 AND version = $2",
        )
        .bind(self.name)
        .bind(version)
        .bind(head as i64)
        .execute(&mut *transaction)
        .await?;
        sqlx::query("UPDATE projections SET active_version = $2, mode = $3, updated_at = now() WHERE name = $1")
            .bind(self.name)
            .bind(version)
            .bind(definition.mode.as_str())
            .execute(&mut *transaction)
            .await?;
        if strategy == Strategy::InPlace {
            // Released inside the transaction that holds the log_head lock: no append can see the
            // version unlocked before this commit.
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(keys::apply_key(self.name, version))
                .execute(&mut *transaction)
                .await?;
        }
        head::bump_catalog(&mut *transaction).await?;
        transaction.commit().await?;
        self.progress.send_modify(|p| {
            p.position = head;
            p.head = head;
        });
        Ok(CutOver::Done)
    }

    /// Applies skips recorded above applied_position (none, when the cut-over caught up with
    /// them) and archives every skip of the version.
    async fn replay_skips(&mut self, definition: &Definition, version: i32) -> Result<u64> {
        self.progress
            .send_modify(|p| p.phase = Phase::ReplayingSkips);
        let mut transaction = self.connection.begin().await?;
        let row = versions::lock_version(&mut transaction, self.name, version).await?;
        let pending: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT position FROM system_messages
              WHERE projection = $1 AND version = $2 AND kind = 'skip' AND archived_at IS NULL AND position > $3
              ORDER BY position",
        )
        .bind(self.name)
        .bind(version)
        .bind(row.applied_position as i64)
        .fetch_all(&mut *transaction)
        .await?;
        if !pending.is_empty() {
            let positions: Vec<u64> = pending.iter().map(|p| *p as u64).collect();
            let collect = definition.on_error == OnError::Skip;
            let failures = versions::apply_positions(
                &mut transaction,
                definition,
                version,
                &positions,
                collect,
                self.projections.settings.sql_timeout,
            )
            .await?
            .map_err(|failure| Error::FailedPrecondition(failure.describe(self.name)))?;
            let dead: Vec<(u64, String)> = failures
                .into_iter()
                .map(|f| (f.position, f.message))
                .collect();
            apply::record_messages(&mut transaction, self.name, version, "dead_letter", &dead)
                .await?;
            let last = positions.last().copied().unwrap_or(row.applied_position);
            sqlx::query("UPDATE projection_versions SET applied_position = GREATEST(applied_position, $3) WHERE name = $1 AND version = $2")
                .bind(self.name)
                .bind(version)
                .bind(last as i64)
                .execute(&mut *transaction)
                .await?;
        }
        let archived = sqlx::query(
            "UPDATE system_messages SET archived_at = clock_timestamp()
              WHERE projection = $1 AND version = $2 AND kind = 'skip' AND archived_at IS NULL",
        )
        .bind(self.name)
        .bind(version)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(archived)
    }

    async fn fail(&mut self, reason: &str) {
        let version = self.progress.borrow().version;
        let _ = sqlx::query(
            "UPDATE projection_versions SET status = 'failed', last_error = $3, updated_at = now()
              WHERE name = $1 AND version = $2 AND status IN ('building', 'rebuilding')",
        )
        .bind(self.name)
        .bind(version)
        .bind(reason)
        .execute(&mut self.connection)
        .await;
        self.progress.send_modify(|p| {
            p.phase = Phase::Failed;
            p.error = Some(reason.to_string());
        });
    }
}

/// How long a rebuild may go without a heartbeat before another process takes it over.
pub fn heartbeat_expired(heartbeat_us: Option<i64>, timeout: Duration) -> bool {
    let Some(heartbeat_us) = heartbeat_us else {
        return true;
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    now_us - heartbeat_us > timeout.as_micros() as i64
}

/// Applies a range of the log inside PostgreSQL (the version's apply function); with
/// `on_error = "skip"` failures become dead letters, otherwise the first one fails the rebuild.
#[allow(clippy::too_many_arguments)]
async fn apply_range(
    connection: &mut PgConnection,
    name: &str,
    definition: &Definition,
    version: i32,
    after: u64,
    upto: u64,
    limit: i64,
    timeout: Duration,
) -> Result<super::sandbox::Applied> {
    let collect = definition.on_error == OnError::Skip;
    match versions::apply_range(
        connection, definition, version, after, upto, limit, collect, timeout,
    )
    .await?
    {
        Ok(applied) => {
            let dead: Vec<(u64, String)> = applied
                .failures
                .iter()
                .map(|f| (f.position, f.message.clone()))
                .collect();
            apply::record_messages(connection, name, version, "dead_letter", &dead).await?;
            Ok(applied)
        }
        Err(failure) => Err(Error::FailedPrecondition(failure.describe(name))),
    }
}
