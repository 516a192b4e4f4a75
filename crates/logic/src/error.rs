//! The IM layer's error: a refusal the caller can act on, or a store failure. It becomes
//! the wire error in exactly one place, `From<Error> for ApiError`, where a backend's
//! cause is logged and the client sees only `internal`.

use xinge_core::ErrorCode;
use xinge_core::error::ApiError;
use xinge_store::{Refusal, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the caller asked for cannot be done: said to them as it is.
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Refused(ApiError),
    /// The store failed or refused the commit.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the caller is told of a store error.
fn store_answer(e: &StoreError) -> (ErrorCode, &'static str) {
    match e {
        StoreError::Conflict => (ErrorCode::Conflict, "already exists"),
        StoreError::NotFound => (ErrorCode::NotFound, "not found"),
        StoreError::Closed => (ErrorCode::Unavailable, "server shutting down"),
        // `not_found`, not `forbidden`: whether a group exists is none of a stranger's
        // business.
        StoreError::Refused(Refusal::NoGroup | Refusal::NotMember) => {
            (ErrorCode::NotFound, "no such conversation")
        }
        StoreError::Refused(Refusal::Muted) => (ErrorCode::Muted, "you are muted in this group"),
        StoreError::Refused(Refusal::GroupFull) => (ErrorCode::LimitReached, "the group is full"),
        StoreError::Backend(_) => (ErrorCode::Internal, "internal error"),
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Refused(e)
    }
}

/// A refusal with a stable code and a message for the caller.
pub(crate) fn bad(code: ErrorCode, msg: impl Into<String>) -> Error {
    Error::Refused(ApiError::new(code, msg))
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Refused(e) => e,
            Error::Store(e) => {
                if let StoreError::Backend(cause) = &e {
                    tracing::error!(%cause, "store failure");
                }
                let (code, message) = store_answer(&e);
                ApiError::new(code, message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_reaches_the_client_only_as_its_code() {
        let e = Error::from(StoreError::Backend("disk on fire at /var/lib/x".into()));
        let wire = ApiError::from(e);
        assert_eq!(wire.code, ErrorCode::Internal);
        assert!(!wire.message.contains("disk"), "{}", wire.message);
        let refused = ApiError::from(Error::from(StoreError::Refused(Refusal::NotMember)));
        assert_eq!(refused.code, ErrorCode::NotFound);
        let said = ApiError::from(bad(ErrorCode::Blocked, "one of you has blocked the other"));
        assert_eq!(
            (said.code, said.message.as_str()),
            (ErrorCode::Blocked, "one of you has blocked the other")
        );
    }
}
