//! The Rust client SDK: what an app needs to talk to xinge, used by the tests and the
//! benchmark.
//!
//! ```text
//! http.rs    Http: every HTTP API call, typed
//! conn.rs    Connection: one long connection (TCP or WebSocket), request/response by id,
//!            signals as a stream
//! tls.rs     Tls: the root certificates HTTPS, wss:// and TLS over TCP trust
//! device.rs  Device: a logged-in device that stays connected — route, connect, resume
//!            sync from its cursor, reconnect with back-off and jitter, idempotent sends —
//!            and delivers its inbox exactly once, in order
//! reorder.rs Reorder: inbox entries that arrived ahead of a gap, held for a moment
//! ```

mod conn;
mod device;
mod http;
mod media;
mod reorder;
mod tls;

pub use conn::{Connection, Transport};
pub use device::{Device, DeviceOptions};
pub use http::Http;
pub use media::{DEFAULT_CHUNK, Upload};
pub use reorder::{REORDER_MAX, REORDER_WAIT, Reorder};
pub use tls::Tls;
pub use xinge_proto::api;

use xinge_core::error::ApiError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// The connection or request failed before an answer came.
    #[error("transport: {0}")]
    Transport(String),
    /// The server's answer made no sense.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The SDK was given something it cannot use (a certificate that is not PEM, a
    /// `wss://` address without TLS roots).
    #[error("config: {0}")]
    Config(String),
}

impl ClientError {
    pub fn code(&self) -> Option<xinge_core::ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A fresh client_msg_id: random, 128 bits, hex.
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
