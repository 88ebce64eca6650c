//! The coordinator's error type and its one mapping to gRPC statuses.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The request is malformed: a bad name, id or combination of flags.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but cannot run now (agent offline, artifact not complete, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller has no valid credential: no token, an unknown, expired or revoked one.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but its role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something failed inside the coordinator; the message says what, and the log why.
    #[error("{0}")]
    Internal(String),
}

pub type CoordinatorResult<T> = Result<T, CoordinatorError>;

impl From<sqlx::Error> for CoordinatorError {
    fn from(error: sqlx::Error) -> Self {
        CoordinatorError::Store(StoreError::Database(error))
    }
}

impl From<warden_shared::NameError> for CoordinatorError {
    fn from(error: warden_shared::NameError) -> Self {
        CoordinatorError::InvalidArgument(error.to_string())
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        match error {
            CoordinatorError::InvalidArgument(message) => tonic::Status::invalid_argument(message),
            CoordinatorError::NotFound(message) => tonic::Status::not_found(message),
            CoordinatorError::FailedPrecondition(message) => {
                tonic::Status::failed_precondition(message)
            }
            CoordinatorError::Unauthenticated(message) => tonic::Status::unauthenticated(message),
            CoordinatorError::PermissionDenied(message) => {
                tonic::Status::permission_denied(message)
            }
            CoordinatorError::Store(error) => {
                // Raw store errors stay in the coordinator's log; clients get a generic message.
                tracing::error!(%error, "store error");
                tonic::Status::internal("internal store error; see the coordinator log")
            }
            CoordinatorError::Internal(message) => tonic::Status::internal(message),
        }
    }
}
