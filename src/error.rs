//! The server's own errors, kept apart from the core's: what stops it from starting or stopping
//! cleanly (a flag, a file, a port, the private PostgreSQL) is not something a request is
//! answered with. Requests are answered from the core's error, mapped in `grpc/status.rs`.

/// Why the server could not start, or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server cannot start as configured (a bad flag, a file that cannot be used, a port
    /// taken, no PostgreSQL binaries).
    #[error("{0}")]
    Startup(String),

    /// The server could not stop cleanly (its private PostgreSQL did not stop).
    #[error("{0}")]
    Stop(String),

    /// The core failed: preparing the database, registering projections at start, or serving.
    #[error(transparent)]
    Core(#[from] highwater_core::error::Error),
}

impl From<sqlx::Error> for ServerError {
    /// A statement of the server's own (setting up the private PostgreSQL), classified as the
    /// core classifies them.
    fn from(error: sqlx::Error) -> Self {
        Self::Core(error.into())
    }
}

pub type ServerResult<T> = Result<T, ServerError>;
