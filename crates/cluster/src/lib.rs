//! The engines under the distributed roles (one role per process): what `xinge serve`
//! does in memory, done on Redis and NATS JetStream so that any number of `xinge route`,
//! `gateway`, `api` and `push` processes can share no memory and still work as one.
//!
//! ```text
//! names.rs     every NATS subject, JetStream stream and Redis key, under one prefix
//! engines.rs   connecting to NATS, and to Redis (one node, or a Redis Cluster)
//! registry.rs  Redis: sessions (user → conn@gateway, expiring unless refreshed),
//!              presence, gateway load reports
//! bus.rs       NATS: commands gateway → api (request/reply, load-balanced by a queue
//!              group), deliveries push → the one gateway holding the connection
//! presence.rs  JetStream: presence changes gateway → api on a durable stream
//! limits.rs    Redis: per-user send and pull limits shared by every api process
//! pushq.rs     JetStream: signals api → push on a durable stream with explicit acks
//! push_worker.rs  the push role: stream → session lookup → one delivery per gateway
//! trace.rs     the trace id a command carries from gateway to api to push
//! queues.rs    how full the bounded queues are (one gauge for all); the JetStream
//!              queues read continuously in batches
//! ```
//! Each adapter implements a trait of the layer it serves — the push layer's `Signals`
//! and `Sessions`, the gateway's `Upstream` and `Authenticator` — so the IM layer and
//! the gateway run unchanged in either mode.

pub mod bus;
pub mod engines;
pub mod limits;
pub mod names;
pub mod presence;
pub mod push_worker;
pub mod pushq;
mod queues;
pub mod registry;
pub mod trace;
/// The bytes of a delivery, a push event and a presence change, and the packs that carry
/// several in one bus message: defined by the push layer, whose events they carry.
pub use xinge_push::wire;

pub use engines::Redis;
pub use names::Names;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl ClusterError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}
