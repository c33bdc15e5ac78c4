//! How Rust and the log's SQL functions agree, as types: the outcome codes `highwater_append`
//! (migrations 0013 and 0012) and `highwater_delete_stream` (migration 0007) return, and the
//! expected-revision kinds both take. An unknown code is refused (an internal error naming it),
//! never read as a neighbour's meaning.

use thiserror::Error as ThisError;
use uuid::Uuid;

use super::{columns::to_i64, model::ExpectedRevision};

/// A code the SQL functions returned that this build does not know.
#[derive(Debug, ThisError)]
#[error("unknown {what} {code}")]
pub struct UnknownCode {
    what: &'static str,
    code: i16,
}

/// `r_outcome` of `highwater_append`: what became of one request of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Its events were written now.
    Written,
    /// Its events were written before, with the same content (an idempotent resend).
    AlreadyWritten,
    /// The stream is not at the expected revision; nothing was written.
    WrongExpectedRevision,
    /// An event id is stored with other content; nothing was written.
    DuplicateEventId,
    /// The stream is hard-deleted and cannot be written again.
    HardDeleted,
}

impl TryFrom<i16> for AppendOutcome {
    type Error = UnknownCode;

    fn try_from(code: i16) -> Result<Self, UnknownCode> {
        match code {
            0 => Ok(Self::Written),
            1 => Ok(Self::AlreadyWritten),
            2 => Ok(Self::WrongExpectedRevision),
            3 => Ok(Self::DuplicateEventId),
            4 => Ok(Self::HardDeleted),
            code => Err(UnknownCode {
                what: "append outcome",
                code,
            }),
        }
    }
}

/// One row of `highwater_append`, a request of the group, in order.
#[derive(Debug, sqlx::FromRow)]
pub struct AppendOutcomeRow {
    #[sqlx(rename = "r_outcome", try_from = "i16")]
    pub outcome: AppendOutcome,
    #[sqlx(rename = "r_first_revision")]
    pub first_revision: Option<i64>,
    #[sqlx(rename = "r_last_revision")]
    pub last_revision: Option<i64>,
    #[sqlx(rename = "r_first_position")]
    pub first_position: Option<i64>,
    #[sqlx(rename = "r_last_position")]
    pub last_position: Option<i64>,
    /// The stream's revision, for a wrong expected revision (`None`: no stream).
    #[sqlx(rename = "r_actual_revision")]
    pub actual_revision: Option<i64>,
    /// The id stored with other content, for a duplicate event id.
    #[sqlx(rename = "r_conflicting_id")]
    pub conflicting_id: Option<Uuid>,
    /// The commit time of events written now, in microseconds since the epoch.
    #[sqlx(rename = "r_recorded_us")]
    pub recorded_us: Option<i64>,
}

/// `r_outcome` of `highwater_delete_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    WrongExpectedRevision,
    /// The stream is hard-deleted already.
    HardDeleted,
    NotFound,
}

impl TryFrom<i16> for DeleteOutcome {
    type Error = UnknownCode;

    fn try_from(code: i16) -> Result<Self, UnknownCode> {
        match code {
            0 => Ok(Self::Deleted),
            2 => Ok(Self::WrongExpectedRevision),
            4 => Ok(Self::HardDeleted),
            5 => Ok(Self::NotFound),
            code => Err(UnknownCode {
                what: "delete outcome",
                code,
            }),
        }
    }
}

/// The row of `highwater_delete_stream`.
#[derive(Debug, sqlx::FromRow)]
pub struct DeleteOutcomeRow {
    #[sqlx(rename = "r_outcome", try_from = "i16")]
    pub outcome: DeleteOutcome,
    /// The deleted revision, or the stream's revision for a wrong expected revision.
    #[sqlx(rename = "r_revision")]
    pub revision: Option<i64>,
}

/// `r_outcome` of `highwater_save_snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveSnapshotOutcome {
    Saved,
    HardDeleted,
    /// No such stream, or soft-deleted with nothing appended since.
    NotFound,
    /// The revision is beyond the stream's last, or hidden by a soft delete.
    RevisionOutOfRange,
}

impl TryFrom<i16> for SaveSnapshotOutcome {
    type Error = UnknownCode;

    fn try_from(code: i16) -> Result<Self, UnknownCode> {
        match code {
            0 => Ok(Self::Saved),
            4 => Ok(Self::HardDeleted),
            5 => Ok(Self::NotFound),
            6 => Ok(Self::RevisionOutOfRange),
            code => Err(UnknownCode {
                what: "snapshot save outcome",
                code,
            }),
        }
    }
}

/// The row of `highwater_save_snapshot`.
#[derive(Debug, sqlx::FromRow)]
pub struct SaveSnapshotRow {
    #[sqlx(rename = "r_outcome", try_from = "i16")]
    pub outcome: SaveSnapshotOutcome,
    /// The stream's last revision.
    #[sqlx(rename = "r_revision")]
    pub revision: Option<i64>,
    /// The last revision of a soft delete.
    #[sqlx(rename = "r_floor")]
    pub floor: Option<i64>,
    #[sqlx(rename = "r_saved_us")]
    pub saved_us: Option<i64>,
}

/// An expectation as the SQL functions take it: a kind and, for [`ExpectedKind::Exact`], the
/// revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum ExpectedKind {
    Any = 0,
    NoStream = 1,
    StreamExists = 2,
    Exact = 3,
}

/// `expected` as the SQL functions' `(kind, revision)` arguments.
pub fn expected_in_sql(expected: ExpectedRevision) -> (i16, Option<i64>) {
    let (kind, revision) = match expected {
        ExpectedRevision::Any => (ExpectedKind::Any, None),
        ExpectedRevision::NoStream => (ExpectedKind::NoStream, None),
        ExpectedRevision::StreamExists => (ExpectedKind::StreamExists, None),
        ExpectedRevision::Exact(revision) => (ExpectedKind::Exact, Some(to_i64(revision))),
    };
    (kind as i16, revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_read_back_and_unknown_ones_are_refused() {
        assert_eq!(
            AppendOutcome::try_from(0).ok(),
            Some(AppendOutcome::Written)
        );
        assert_eq!(
            AppendOutcome::try_from(4).ok(),
            Some(AppendOutcome::HardDeleted)
        );
        assert_eq!(
            AppendOutcome::try_from(5).unwrap_err().to_string(),
            "unknown append outcome 5"
        );
        assert_eq!(
            DeleteOutcome::try_from(5).ok(),
            Some(DeleteOutcome::NotFound)
        );
        assert!(DeleteOutcome::try_from(1).is_err());
        assert_eq!(expected_in_sql(ExpectedRevision::Exact(7)), (3, Some(7)));
        assert_eq!(expected_in_sql(ExpectedRevision::NoStream), (1, None));
    }
}
