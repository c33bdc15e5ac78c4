//! Background work of every process: async projection workers (one leader per projection in the
//! cluster, through an advisory lock on a dedicated connection) and the supervisor that starts
//! them and takes over rebuilds whose owner died.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Projections, apply,
    definition::OnError,
    keys,
    rebuild::{self, Strategy},
    status::VersionStatus,
    versions,
};
use crate::{
    error::{Error, Result},
    shutdown::stopped,
    store::head,
};

/// Attempts at a failing batch before its failing event is dead-lettered or the projection stops.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

impl Projections {
    /// Starts workers for async projections this process does not run yet, and resumes rebuilds
    /// whose heartbeat is stale and whose lock is free. Looks again whenever the catalog changes
    /// (a notification), and every `supervise_interval` while another process rebuilds (its
    /// heartbeat must be watched) or after an error; otherwise it sends no query while idle.
    pub async fn supervise(self: Arc<Self>) {
        let stop = self.tasks.stop();
        let mut workers: HashSet<String> = HashSet::new();
        let mut changes = self.hub.projection_changes();
        loop {
            changes.mark_unchanged();
            let watch_heartbeats = match self.supervise_once(&mut workers, &stop).await {
                Ok(remote_rebuilds) => remote_rebuilds,
                Err(error) => {
                    warn!(%error, "projection supervisor");
                    true
                }
            };
            tokio::select! {
                () = stopped(stop.clone()) => return,
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(self.settings.supervise_interval), if watch_heartbeats => {}
            }
        }
    }

    /// One look at the catalog; Ok(true) if another process is rebuilding something.
    async fn supervise_once(
        self: &Arc<Self>,
        workers: &mut HashSet<String>,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool> {
        let async_projections: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM projections WHERE mode = 'async' AND active_version IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for name in async_projections {
            if workers.insert(name.clone()) {
                self.tasks.spawn(
                    "async-projection",
                    self.clone().run_async(name, stop.clone()),
                );
            }
        }
        let stale: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT name, rebuild_strategy, (extract(epoch FROM heartbeat_at) * 1000000)::bigint
               FROM projection_versions WHERE status IN ('building', 'rebuilding')",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut remote_rebuilds = false;
        for (name, strategy, heartbeat_us) in stale {
            if self.local_progress(&name).is_some_and(|p| !p.is_finished()) {
                continue;
            }
            remote_rebuilds = true;
            if rebuild::heartbeat_expired(heartbeat_us, self.settings.heartbeat_timeout) {
                // A version marked for rebuild before its strategy was recorded is built blue/green.
                let strategy = match strategy {
                    Some(stored) => stored.parse::<Strategy>()?,
                    None => Strategy::BlueGreen,
                };
                match self.rebuild(&name, strategy).await {
                    Ok(_) => info!(projection = %name, "resuming a rebuild whose owner stopped"),
                    Err(Error::FailedPrecondition(_)) => {}
                    Err(error) => warn!(projection = %name, %error, "cannot resume rebuild"),
                }
            }
        }
        Ok(remote_rebuilds)
    }

    /// Runs one async projection while this process holds its leadership lock.
    async fn run_async(self: Arc<Self>, name: String, stop: watch::Receiver<bool>) {
        let mut head = self.hub.head_watch();
        loop {
            match self.lead_async(&name, &mut head, &stop).await {
                Ok(true) => return, // stopping
                Ok(false) => {}     // another process leads, or nothing to do for now
                Err(error) => warn!(projection = %name, %error, "async projection worker"),
            }
            tokio::select! {
                () = stopped(stop.clone()) => return,
                _ = tokio::time::sleep(self.settings.supervise_interval) => {}
            }
        }
    }

    /// Ok(false): not the leader. Ok(true): done for good.
    async fn lead_async(
        &self,
        name: &str,
        head: &mut watch::Receiver<u64>,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool> {
        let mut connection = self.dedicated_connection("highwater-async").await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(keys::async_key(name))
            .fetch_one(&mut connection)
            .await?;
        if !leader {
            let _ = connection.close().await;
            return Ok(false);
        }
        info!(projection = name, node = %self.node, "leading async projection");
        if let Some((Some(active), _)) = versions::projection(&mut connection, name).await? {
            super::sandbox::reinstall_apply_function(&mut connection, name, active).await?;
        }
        loop {
            match self.async_batch(&mut connection, name).await? {
                // Between batches, so a backlog does not keep a stopping server's worker going.
                BatchOutcome::Applied if *stop.borrow() => return Ok(true),
                BatchOutcome::Applied => continue,
                // Failed or no longer async: give up leadership, look again later.
                BatchOutcome::Gone => {
                    let _ = connection.close().await;
                    return Ok(false);
                }
                BatchOutcome::Idle => {}
            }
            // Caught up: wait for new commits (the hub's head) or shutdown.
            tokio::select! {
                () = stopped(stop.clone()) => return Ok(true),
                changed = head.changed() => if changed.is_err() { return Ok(true) },
            }
        }
    }

    /// One batch in one transaction, with applied_position moving inside it.
    async fn async_batch(&self, connection: &mut PgConnection, name: &str) -> Result<BatchOutcome> {
        let mut attempt = 0;
        loop {
            let mut transaction = connection.begin().await?;
            // Every early return ends the transaction explicitly: a dropped one would only roll
            // back on the connection's next use, holding its row lock while the worker waits.
            let Some((Some(active), mode)) = versions::projection(&mut transaction, name).await?
            else {
                transaction.rollback().await?;
                return Ok(BatchOutcome::Gone);
            };
            if mode != "async" {
                transaction.rollback().await?;
                return Ok(BatchOutcome::Gone);
            }
            let row = versions::lock_version(&mut transaction, name, active).await?;
            if row.status != VersionStatus::Active {
                transaction.rollback().await?;
                return Ok(BatchOutcome::Idle); // an in-place rebuild owns it, or it failed
            }
            let head = head::position(&mut *transaction).await?;
            if head <= row.applied_position {
                transaction.rollback().await?;
                return Ok(BatchOutcome::Idle);
            }
            let batch_size = self.settings.batch_size;
            let last_attempt = attempt + 1 >= ATTEMPTS;
            let collect = last_attempt && row.definition.on_error == OnError::Skip;
            let outcome = versions::apply_range(
                &mut transaction,
                &row.definition,
                active,
                row.applied_position,
                head,
                batch_size,
                collect,
                self.settings.sql_timeout,
            )
            .await?;
            match outcome {
                Ok(done) => {
                    let applied = if done.count as i64 == batch_size {
                        done.last
                    } else {
                        head
                    };
                    let dead: Vec<(u64, String)> = done
                        .failures
                        .into_iter()
                        .map(|f| (f.position, f.message))
                        .collect();
                    apply::record_messages(&mut transaction, name, active, "dead_letter", &dead)
                        .await?;
                    sqlx::query(
                        "UPDATE projection_versions SET applied_position = $3, updated_at = now() WHERE name = $1 AND version = $2",
                    )
                    .bind(name)
                    .bind(active)
                    .bind(applied as i64)
                    .execute(&mut *transaction)
                    .await?;
                    transaction.commit().await?;
                    return Ok(BatchOutcome::Applied);
                }
                Err(failure) => {
                    transaction.rollback().await?;
                    if !last_attempt {
                        tokio::time::sleep(FIRST_BACKOFF * 4u32.pow(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    let reason = failure.describe(name);
                    warn!(projection = name, %reason, "async projection stopped");
                    sqlx::query(
                        "UPDATE projection_versions SET status = 'failed', last_error = $3, updated_at = now()
                          WHERE name = $1 AND version = $2",
                    )
                    .bind(name)
                    .bind(active)
                    .bind(&reason)
                    .execute(&mut *connection)
                    .await?;
                    return Ok(BatchOutcome::Gone);
                }
            }
        }
    }
}

enum BatchOutcome {
    Applied,
    Idle,
    Gone,
}
