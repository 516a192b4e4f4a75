//! Stable error codes. A client matches on the string, never on the message; the string of
//! an existing code never changes. Every layer maps its own errors onto these.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body, query or frame could not be parsed.
    BadRequest,
    /// A field is present but its value is not acceptable (too long, wrong format, …).
    InvalidArgument,
    /// A frame or body is larger than the configured maximum.
    TooLarge,
    /// The long-connection command number is not known to anyone.
    UnknownCommand,
    /// No token, or a token that is malformed or whose signature does not verify.
    Unauthenticated,
    /// The token was valid once but has expired.
    TokenExpired,
    /// The token's device logged out (or logged in again, replacing it).
    TokenRevoked,
    /// Wrong username or password.
    BadCredentials,
    /// The caller may not do this (not a member of the conversation, not the sender, …).
    Forbidden,
    /// The peer has blocked the caller, or the caller blocked the peer.
    Blocked,
    /// 1:1 messages need friendship (unless the server allows strangers).
    NotFriends,
    /// The thing named does not exist (or the caller may not know that it does).
    NotFound,
    /// The thing being created already exists (username taken, already friends, …).
    Conflict,
    /// The recall window of the message has passed.
    RecallWindowPassed,
    /// The caller is muted in this group (or everyone but admins is).
    Muted,
    /// A configured limit would be exceeded (group size, …).
    LimitReached,
    /// Too many requests; retry after the advertised delay.
    RateLimited,
    /// The server is shutting down or over its connection limit.
    Unavailable,
    /// The client did not keep up (send queue full) or missed heartbeats.
    SlowConsumer,
    HeartbeatTimeout,
    /// Something went wrong inside; the log has the cause, the client gets only this.
    Internal,
    /// The HTTP path exists but not with this method.
    MethodNotAllowed,
    /// AUTH named a protocol version this server does not speak.
    UnsupportedProtocol,
    /// The account is banned by the app's server: no login, no token, no connection.
    Banned,
    /// The app's server refused the message (its before-send hook); the message says why.
    Rejected,
    /// A resumable upload's bytes did not match the checksum sent with them (tus 460).
    ChecksumMismatch,
    /// The file is not of a type this server takes for that kind of media (an image that
    /// does not decode, a voice note that is not audio).
    UnsupportedMedia,
    /// The user's media would go over their storage quota.
    QuotaExceeded,
    /// A precondition of the request does not hold (a tus request without
    /// `Tus-Resumable: 1.0.0`).
    PreconditionFailed,
    /// The requested byte range is not within the file.
    RangeNotSatisfiable,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidArgument,
        ErrorCode::TooLarge,
        ErrorCode::UnknownCommand,
        ErrorCode::Unauthenticated,
        ErrorCode::TokenExpired,
        ErrorCode::TokenRevoked,
        ErrorCode::BadCredentials,
        ErrorCode::Forbidden,
        ErrorCode::Blocked,
        ErrorCode::NotFriends,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RecallWindowPassed,
        ErrorCode::Muted,
        ErrorCode::LimitReached,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::SlowConsumer,
        ErrorCode::HeartbeatTimeout,
        ErrorCode::Internal,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::Banned,
        ErrorCode::Rejected,
        ErrorCode::ChecksumMismatch,
        ErrorCode::UnsupportedMedia,
        ErrorCode::QuotaExceeded,
        ErrorCode::PreconditionFailed,
        ErrorCode::RangeNotSatisfiable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::BadCredentials => "bad_credentials",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Blocked => "blocked",
            ErrorCode::NotFriends => "not_friends",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RecallWindowPassed => "recall_window_passed",
            ErrorCode::Muted => "muted",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::HeartbeatTimeout => "heartbeat_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::Banned => "banned",
            ErrorCode::Rejected => "rejected",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::UnsupportedMedia => "unsupported_media",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
        }
    }

    /// The HTTP status this code travels with on the HTTP API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidArgument | ErrorCode::UnknownCommand => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unauthenticated
            | ErrorCode::TokenExpired
            | ErrorCode::TokenRevoked
            | ErrorCode::BadCredentials => 401,
            ErrorCode::Forbidden
            | ErrorCode::Banned
            | ErrorCode::Rejected
            | ErrorCode::Blocked
            | ErrorCode::NotFriends
            | ErrorCode::Muted => 403,
            ErrorCode::LimitReached => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::RecallWindowPassed => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::SlowConsumer | ErrorCode::HeartbeatTimeout => 408,
            ErrorCode::Internal => 500,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::UnsupportedProtocol => 400,
            ErrorCode::ChecksumMismatch => 460,
            ErrorCode::UnsupportedMedia => 415,
            ErrorCode::QuotaExceeded => 403,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::RangeNotSatisfiable => 416,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a client sees it: a stable code and a human-readable message that never
/// carries internals.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: milliseconds until a retry may succeed (HTTP also sends it,
    /// rounded up to seconds, as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// `rate_limited`, with the time until a retry may succeed.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        // Rounded up: a client that waits exactly this long finds its token there.
        let ms = wait
            .as_nanos()
            .div_ceil(1_000_000)
            .clamp(1, u128::from(u64::MAX)) as u64;
        Self {
            retry_after_ms: Some(ms),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its place in `ALL`. The match has no wildcard, so a new code cannot compile until
    /// it is given a place, and the test below then fails until `ALL` holds it there.
    fn place(code: ErrorCode) -> usize {
        use ErrorCode::*;
        match code {
            BadRequest => 0,
            InvalidArgument => 1,
            TooLarge => 2,
            UnknownCommand => 3,
            Unauthenticated => 4,
            TokenExpired => 5,
            TokenRevoked => 6,
            BadCredentials => 7,
            Forbidden => 8,
            Blocked => 9,
            NotFriends => 10,
            NotFound => 11,
            Conflict => 12,
            RecallWindowPassed => 13,
            Muted => 14,
            LimitReached => 15,
            RateLimited => 16,
            Unavailable => 17,
            SlowConsumer => 18,
            HeartbeatTimeout => 19,
            Internal => 20,
            MethodNotAllowed => 21,
            UnsupportedProtocol => 22,
            Banned => 23,
            Rejected => 24,
            ChecksumMismatch => 25,
            UnsupportedMedia => 26,
            QuotaExceeded => 27,
            PreconditionFailed => 28,
            RangeNotSatisfiable => 29,
        }
    }

    #[test]
    fn every_code_serialises_as_its_stable_string_and_back() {
        let mut seen = std::collections::HashSet::new();
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(place(code), i, "{code:?} out of place in ALL");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            let status = code.http_status();
            assert!((400..600).contains(&status), "{code:?}: {status}");
        }
    }
}
