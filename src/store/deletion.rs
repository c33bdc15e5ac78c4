//! Stream deletion (README "Deleting streams"): soft deletes hide a stream's events from stream
//! reads; hard deletes erase them and close the stream for good. Both run the
//! `highwater_delete_stream` SQL function, which serialises with appends on `log_head`; a hard
//! delete then erases the events in short transactions, so appends never wait for the erase.

use sqlx::PgPool;
use tracing::{info, warn};

use super::{
    model::{DeleteResult, ExpectedRevision},
    writer::{expected_in_sql, hard_deleted},
};
use crate::error::{Error, Result};

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
    stream: &str,
    expected: ExpectedRevision,
    deletion: Deletion,
) -> Result<DeleteResult> {
    let (kind, expected_revision) = expected_in_sql(expected);
    let (outcome, revision, _): (i16, Option<i64>, i64) =
        sqlx::query_as("SELECT * FROM highwater_delete_stream($1, $2, $3, $4)")
            .bind(stream)
            .bind(kind)
            .bind(expected_revision)
            .bind(deletion == Deletion::Hard)
            .fetch_one(pool)
            .await?;
    match (outcome, revision) {
        (0, Some(revision)) => {
            let erased_events = match deletion {
                Deletion::Soft => 0,
                Deletion::Hard => erase(pool.clone(), stream.to_string()).await?,
            };
            Ok(DeleteResult {
                deleted_revision: revision as u64,
                erased_events,
            })
        }
        (2, actual) => Err(Error::WrongExpectedRevision {
            stream: stream.to_string(),
            expected: expected.to_string(),
            actual: actual.map_or_else(|| "no stream".to_string(), |revision| revision.to_string()),
        }),
        (4, _) => Err(hard_deleted(stream)),
        (5, _) => Err(Error::StreamNotFound(stream.to_string())),
        (other, _) => Err(Error::Internal(format!("unknown delete outcome {other}"))),
    }
}

/// Events erased per transaction: each batch holds its row locks briefly.
const ERASE_BATCH: i64 = 1000;

/// Erases a tombstoned stream's events. It runs as a task of its own, so a caller that goes away
/// does not leave the erase halfway.
async fn erase(pool: PgPool, stream: String) -> Result<u64> {
    tokio::spawn(async move { erase_batches(&pool, &stream).await })
        .await
        .map_err(|error| Error::Internal(format!("erase task failed: {error}")))?
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

/// Finishes the erases that a stopped server left halfway: the events still stored of
/// tombstoned streams. Run once at start, beside serving.
pub async fn finish_interrupted_erases(pool: PgPool) {
    let streams: Vec<String> = match sqlx::query_scalar(
        "SELECT s.stream FROM streams s
          WHERE s.tombstoned AND EXISTS (SELECT FROM events e WHERE e.stream = s.stream)",
    )
    .fetch_all(&pool)
    .await
    {
        Ok(streams) => streams,
        Err(error) => {
            warn!(%error, "cannot look for interrupted hard deletes");
            return;
        }
    };
    for stream in streams {
        match erase_batches(&pool, &stream).await {
            Ok(erased) => info!(%stream, erased, "finished an interrupted hard delete"),
            Err(error) => warn!(%stream, %error, "cannot finish an interrupted hard delete"),
        }
    }
}
