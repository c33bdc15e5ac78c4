//! Stream deletion (README "Deleting streams"): soft deletes hide a stream's events from stream
//! reads; hard deletes erase them and close the stream for good. Both run the
//! `highwater_delete_stream` SQL function, which serialises with appends on `log_head`.

use sqlx::PgPool;

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
    let (outcome, revision, erased): (i16, Option<i64>, i64) =
        sqlx::query_as("SELECT * FROM highwater_delete_stream($1, $2, $3, $4)")
            .bind(stream)
            .bind(kind)
            .bind(expected_revision)
            .bind(deletion == Deletion::Hard)
            .fetch_one(pool)
            .await?;
    match (outcome, revision) {
        (0, Some(revision)) => Ok(DeleteResult {
            deleted_revision: revision as u64,
            erased_events: erased as u64,
        }),
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
