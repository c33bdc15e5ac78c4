//! Stream deletion (README "Deleting streams"): soft deletes hide a stream's events from stream
//! reads; hard deletes erase them and close the stream for good. Both run the
//! `highwater_delete_stream` SQL function, which serialises with appends on `log_head`; a hard
//! delete then erases the events in short transactions, so appends never wait for the erase.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    codes::{DeleteOutcome, DeleteOutcomeRow, expected_in_sql},
    model::{DeleteResult, ExpectedRevision},
    writer::hard_deleted,
};
use crate::{
    error::{Error, Result},
    shutdown::{Tasks, stopped},
};

/// How much of a stream a delete removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Hide the events from stream reads; the stream may be written again.
    Soft,
    /// Erase the events from the log; the stream may never be written again.
    Hard,
}

pub async fn delete_stream(
    pool: &PgPool,
    erases: &Erases,
    stream: &str,
    expected: ExpectedRevision,
    deletion: Deletion,
) -> Result<DeleteResult> {
    let (kind, expected_revision) = expected_in_sql(expected);
    let row: DeleteOutcomeRow =
        sqlx::query_as("SELECT * FROM highwater_delete_stream($1, $2, $3, $4)")
            .bind(stream)
            .bind(kind)
            .bind(expected_revision)
            .bind(deletion == Deletion::Hard)
            .fetch_one(pool)
            .await?;
    match (row.outcome, row.revision) {
        (DeleteOutcome::Deleted, Some(revision)) => {
            let erased_events = match deletion {
                Deletion::Soft => 0,
                Deletion::Hard => erases.erase(pool, stream).await?,
            };
            Ok(DeleteResult {
                deleted_revision: revision as u64,
                erased_events,
            })
        }
        // The stream is hard-deleted already: this is a retry of a hard delete (whose erase may
        // have been cut off) or a second one. Either way the answer is the first one's, once
        // every event is erased; the expectation held when the stream was tombstoned.
        (DeleteOutcome::HardDeleted, _) if deletion == Deletion::Hard => {
            let revision: i64 =
                sqlx::query_scalar("SELECT revision FROM streams WHERE stream = $1")
                    .bind(stream)
                    .fetch_one(pool)
                    .await?;
            let erased_events = erases.erase(pool, stream).await?;
            Ok(DeleteResult {
                deleted_revision: revision as u64,
                erased_events,
            })
        }
        (DeleteOutcome::WrongExpectedRevision, actual) => Err(Error::WrongExpectedRevision {
            stream: stream.to_string(),
            expected: expected.to_string(),
            actual: actual.map_or_else(|| "no stream".to_string(), |revision| revision.to_string()),
        }),
        (DeleteOutcome::HardDeleted, _) => Err(hard_deleted(stream)),
        (DeleteOutcome::NotFound, _) => Err(Error::StreamNotFound(stream.to_string())),
        (DeleteOutcome::Deleted, None) => {
            Err(Error::Internal("delete outcome without a revision".into()))
        }
    }
}

/// Events erased per transaction: each batch holds its row locks briefly.
const ERASE_BATCH: i64 = 1000;

/// How often each server looks for tombstoned streams with events left (a server killed
/// mid-erase, an erase whose connection was cut): the partial index `streams_tombstoned` makes
/// the look cheap.
const ERASE_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// After an erase failed in a request, the sweep retries this soon rather than at its interval.
const ERASE_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The server's erases: in requests, and the sweep that finishes those left halfway.
#[derive(Clone)]
pub struct Erases {
    /// Wakes the sweep early when an erase in a request failed, so its events do not stay
    /// readable until the next interval.
    retry: Arc<Notify>,
    /// The owner of the erase tasks.
    tasks: Tasks,
}

impl Erases {
    pub fn new(tasks: Tasks) -> Self {
        Self {
            retry: Arc::default(),
            tasks,
        }
    }

    /// Erases a tombstoned stream's events. It runs as a task of its own, so a caller that goes
    /// away does not leave the erase halfway; if it fails, the sweep finishes it.
    async fn erase(&self, pool: &PgPool, stream: &str) -> Result<u64> {
        let (pool, owned) = (pool.clone(), stream.to_string());
        let result = self
            .tasks
            .spawn("erase", async move { erase_batches(&pool, &owned).await })
            .await
            .map_err(|error| Error::Internal(format!("erase task failed: {error}")))
            .and_then(|erased| erased);
        if let Err(error) = &result {
            warn!(%stream, %error, "hard delete erase failed; the sweep will finish it");
            self.retry.notify_one();
        }
        result
    }

    /// Finishes erases left halfway, at start, every [`ERASE_SWEEP_INTERVAL`], and soon after an
    /// erase in a request failed, until shutdown.
    pub async fn sweep(self, pool: PgPool) {
        let stop = self.tasks.stop();
        loop {
            finish_interrupted_erases(&pool).await;
            tokio::select! {
                () = stopped(stop.clone()) => return,
                () = tokio::time::sleep(ERASE_SWEEP_INTERVAL) => {}
                () = self.retry.notified() => tokio::time::sleep(ERASE_RETRY_PAUSE).await,
            }
        }
    }
}

async fn erase_batches(pool: &PgPool, stream: &str) -> Result<u64> {
    let mut erased = 0;
    loop {
        let batch = sqlx::query(
            "DELETE FROM events WHERE position IN (
                 SELECT position FROM events WHERE stream = $1 LIMIT $2)",
        )
        .bind(stream)
        .bind(ERASE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        erased += batch;
        if batch == 0 {
            return Ok(erased);
        }
    }
}

/// Finishes the erases left halfway: the events still stored of tombstoned streams.
async fn finish_interrupted_erases(pool: &PgPool) {
    let streams: Vec<String> = match sqlx::query_scalar(
        "SELECT s.stream FROM streams s
          WHERE s.tombstoned AND EXISTS (SELECT FROM events e WHERE e.stream = s.stream)",
    )
    .fetch_all(pool)
    .await
    {
        Ok(streams) => streams,
        Err(error) => {
            warn!(%error, "cannot look for interrupted hard deletes");
            return;
        }
    };
    for stream in streams {
        match erase_batches(pool, &stream).await {
            Ok(erased) => info!(%stream, erased, "finished an interrupted hard delete"),
            Err(error) => warn!(%stream, %error, "cannot finish an interrupted hard delete"),
        }
    }
}
