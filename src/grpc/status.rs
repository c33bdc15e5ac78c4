//! The one mapping from the core's error to `tonic::Status`: conflicts are `ABORTED`, bad input
//! `INVALID_ARGUMENT` with a `BadRequest` detail per field, missing things `NOT_FOUND`, and only
//! the server's own failures `INTERNAL` (logged here, once).

use std::collections::HashMap;

use highwater_core::error::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` domain of every error Highwater reports.
pub const ERROR_DOMAIN: &str = "highwater.dev";

/// The status a core error is answered with.
pub fn status(error: Error) -> Status {
    let message = error.to_string();
    match error {
        Error::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for violation in violations {
                details.add_bad_request_violation(violation.field, violation.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::WrongExpectedRevision {
            stream,
            expected,
            actual,
        } => {
            let metadata = HashMap::from([
                ("stream".to_string(), stream),
                ("expected".to_string(), expected),
                ("actual".to_string(), actual),
            ]);
            let details =
                ErrorDetails::with_error_info("WRONG_EXPECTED_REVISION", ERROR_DOMAIN, metadata);
            Status::with_error_details(Code::Aborted, message, details)
        }
        Error::DuplicateEventId { id } => {
            let metadata = HashMap::from([("id".to_string(), id)]);
            let details =
                ErrorDetails::with_error_info("DUPLICATE_EVENT_ID", ERROR_DOMAIN, metadata);
            Status::with_error_details(Code::AlreadyExists, message, details)
        }
        Error::StreamNotFound(_)
        | Error::SubscriptionNotFound(_)
        | Error::ProjectionNotFound(_)
        | Error::UpcasterNotFound(_) => Status::not_found(message),
        Error::FailedPrecondition(_) => Status::failed_precondition(message),
        Error::Aborted(_) => Status::aborted(message),
        Error::Unavailable(_) | Error::DatabaseUnavailable(_) => Status::unavailable(message),
        Error::ResourceExhausted(_) => Status::resource_exhausted(message),
        Error::PermissionDenied(_) => Status::permission_denied(message),
        Error::Internal(_) | Error::Database(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

/// `result.or_status()?` in a handler: the core's error answered as its status.
pub trait OrStatus<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, Error> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(status)
    }
}

/// `error.into_status()`: a core error answered as its status.
pub trait IntoStatus {
    fn into_status(self) -> Status;
}

impl IntoStatus for Error {
    fn into_status(self) -> Status {
        status(self)
    }
}
