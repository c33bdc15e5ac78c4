//! The one error type of the core. The server maps it to `tonic::Status` in one place
//! (`grpc/status.rs` of the server crate); the core itself knows no gRPC.

/// One invalid field of a request: `field` is its path in the request, such as `events[2].id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),

    #[error("wrong expected revision for stream {stream:?}: expected {expected}, actual {actual}")]
    WrongExpectedRevision {
        stream: String,
        expected: String,
        actual: String,
    },

    #[error("event id {id} is already used by a different event")]
    DuplicateEventId { id: String },

    #[error("stream {0:?} not found")]
    StreamNotFound(String),

    #[error("subscription {0:?} not found")]
    SubscriptionNotFound(String),

    #[error("projection {0:?} not found")]
    ProjectionNotFound(String),

    #[error("upcaster {0:?} not found")]
    UpcasterNotFound(String),

    /// The request is valid but the system is not in a state to perform it (a projection's
    /// handler failed, a rebuild is running elsewhere...).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The call raced a change that makes its answer inconsistent (a stream deleted and written
    /// again during a read from its snapshot): retrying is safe and reads the new state.
    #[error("{0}")]
    Aborted(String),

    /// The database cannot be reached (or not yet, or the server is stopping): retrying is safe.
    #[error("{0}")]
    Unavailable(String),

    /// The database could not be reached or dropped the connection, with the driver's error:
    /// retrying is safe.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(#[source] sqlx::Error),

    /// A statement failed for a reason that is not the caller's, with the driver's error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),

    /// A configured limit is reached (such as --max-subscribers): retry later or elsewhere.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The caller's role does not allow this (beyond the per-method check of the token layer).
    #[error("{0}")]
    PermissionDenied(String),

    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// Whether the failure is transient (connection-level) rather than a property of the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::DatabaseUnavailable(_))
    }
}

impl From<sqlx::Error> for Error {
    /// Classifies database failures: connection-level ones are `Unavailable` (retryable), the
    /// rest are internal errors.
    fn from(error: sqlx::Error) -> Self {
        if is_connection_error(&error) {
            Self::DatabaseUnavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

/// True for errors that say the database could not be reached or dropped the connection, as
/// opposed to errors about the statement: classified by SQLSTATE where PostgreSQL gave one.
pub fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot connect now;
            // 53300: too many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn database_errors_keep_the_drivers_error_as_their_source() {
        let lost = Error::from(sqlx::Error::PoolTimedOut);
        assert!(lost.is_unavailable());
        assert!(
            lost.source()
                .is_some_and(|source| source.is::<sqlx::Error>())
        );
        assert!(
            lost.to_string().starts_with("database unavailable: "),
            "{lost}"
        );
        let failed = Error::from(sqlx::Error::RowNotFound);
        assert!(!failed.is_unavailable());
        assert!(
            failed
                .source()
                .is_some_and(|source| source.is::<sqlx::Error>())
        );
        assert!(
            failed.to_string().starts_with("database error: "),
            "{failed}"
        );
    }
}
