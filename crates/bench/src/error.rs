//! Why a benchmark run failed: it could not start (a bad URL, no server), a database or server
//! went away, or a measurement found something wrong (a projection not built, a short read).

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// The run could not start as configured.
    Startup(String),
    /// The database or the server under test could not be reached.
    Unavailable(String),
    /// The run went wrong while measuring.
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Startup(message) | Error::Unavailable(message) | Error::Internal(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Internal(format!("database error: {error}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
