//! Shared vocabulary of every xinge layer: identifiers, the snowflake id generator,
//! the stable error codes clients match on, and the typed configuration.
//!
//! ```text
//! auth.rs    Authenticated: who a valid token names, until when
//! ids.rs     UserId, GroupId, DeviceId, ConvId, MsgId, ConnId, GatewayId
//! idgen.rs   time-ordered 64-bit ids (snowflake: time, node, counter)
//! error.rs   ErrorCode: the stable strings on the wire and their HTTP statuses
//! config.rs  Config: one typed struct, TOML file then XINGE_* variables
//! ratelimit.rs  token buckets, one per key in a bounded table
//! clock.rs   the server's time, which a test may move forward
//! ```
//! Nothing here does I/O beyond reading a config file; every other crate may depend on it.

pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod idgen;
pub mod ids;
pub mod ratelimit;

pub use error::ErrorCode;
pub use ids::{ConnId, ConvId, DeviceId, GatewayId, GroupId, MsgId, UserId};

/// Milliseconds since the Unix epoch, the timestamp unit used on the wire and in storage.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
