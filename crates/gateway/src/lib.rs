//! The long-connection gateway: TCP and WebSocket connections, authentication, heartbeats
//! and frames — and nothing about chats.
//!
//! ```text
//! lib.rs      Gateway: the connection table, the interface to the layers above
//! conn.rs     one connection's life: auth, then one task that reads, answers and writes
//! tcp.rs      length-prefixed frames over TCP (in the clear or TLS), and the accept loop
//! tls.rs      a listener's certificate (rustls) and the handshake with its deadline
//! ws.rs       WebSocket (binary frames, or JSON text frames) on /ws, framed here
//! wheel.rs    the heartbeat timing wheel: one task for all connections
//! ```
//! The interface to the rest of the system fits on one screen: [`Authenticator`] checks a
//! token, [`Upstream`] receives business commands by number, and the push layer's
//! `bind`/`unbind`/deliveries route signals down to the right connection.

mod conn;
mod queue;
pub mod tcp;
pub mod tls;
mod wheel;
pub mod ws;

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use xinge_core::auth::Authenticated;
use xinge_core::clock::Clock;
use xinge_core::config::GatewayConfig;
use xinge_core::error::ApiError;
use xinge_core::idgen::IdGen;
use xinge_core::{ConnId, DeviceId, ErrorCode, GatewayId, UserId};
use xinge_push::{Delivery, EndReason, SessionEnd, Sessions};

/// Who is on the other end of an authenticated connection.
#[derive(Clone, Debug)]
pub struct SessionCtx {
    pub user: UserId,
    pub device: DeviceId,
    pub conn: ConnId,
    /// The id of the token the connection was opened with.
    pub token: u64,
}

/// Checks a login token: who it names, and until when.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<Authenticated, ApiError>;
}

/// Receives the business commands (number >= 100) that the gateway does not understand.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    async fn handle(&self, session: &SessionCtx, cmd: u16, body: Bytes) -> Result<Bytes, ApiError>;
}

const SHARDS: usize = 64;

/// What the gateway keeps per live connection (besides its task's state).
pub(crate) struct ConnHandle {
    pub user: UserId,
    pub device: DeviceId,
    /// The id of the token it was opened with, and when that token expires (seconds since
    /// gateway start, as `last_seen`): the wheel closes it then.
    pub token: u64,
    pub token_expires: u32,
    pub out: queue::SendQueue,
    /// Seconds since gateway start of the last frame received.
    pub last_seen: AtomicU32,
    /// Why the gateway is closing the connection (a [`Kick`] as u8; 0: not closing).
    pub close_reason: std::sync::atomic::AtomicU8,
}

/// Why the gateway closes a connection. A byte, not an `ApiError`, in every connection's
/// handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    SlowConsumer,
    HeartbeatTimeout,
    ShuttingDown,
    WriteFailed,
    /// The token it was opened with expired.
    TokenExpired,
    /// The server ended the session (logout, a newer login, ...).
    Ended(EndReason),
}

/// `Kick::Ended(r)` is this plus the reason's byte.
const ENDED: u8 = 16;

impl Kick {
    fn to_u8(self) -> u8 {
        match self {
            Kick::SlowConsumer => 1,
            Kick::HeartbeatTimeout => 2,
            Kick::ShuttingDown => 3,
            Kick::WriteFailed => 4,
            Kick::TokenExpired => 5,
            Kick::Ended(r) => ENDED + r as u8,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Kick::SlowConsumer),
            2 => Some(Kick::HeartbeatTimeout),
            3 => Some(Kick::ShuttingDown),
            4 => Some(Kick::WriteFailed),
            5 => Some(Kick::TokenExpired),
            v if v > ENDED => EndReason::from_u8(v - ENDED).map(Kick::Ended),
            _ => None,
        }
    }

    pub fn error(self) -> ApiError {
        match self {
            Kick::SlowConsumer => ApiError::new(
                ErrorCode::SlowConsumer,
                "send queue full: reconnect and pull to catch up",
            ),
            Kick::HeartbeatTimeout => {
                ApiError::new(ErrorCode::HeartbeatTimeout, "no heartbeat in time")
            }
            Kick::ShuttingDown => ApiError::new(ErrorCode::Unavailable, "server shutting down"),
            Kick::WriteFailed => ApiError::new(
                ErrorCode::SlowConsumer,
                "the connection stopped taking data",
            ),
            Kick::TokenExpired => {
                ApiError::new(ErrorCode::TokenExpired, "token expired: log in again")
            }
            Kick::Ended(r) => r.error(),
        }
    }
}

impl ConnHandle {
    /// Asks the connection to close; the first reason given wins.
    pub fn kick(&self, why: Kick) {
        let first = self.close_reason.compare_exchange(
            0,
            why.to_u8(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if first.is_ok() {
            metrics::counter!("xinge_connections_kicked_total", "reason" => why.error().code.as_str()).increment(1);
        }
        // The connection task waits on its queue's waker for kicks too.
        self.out.wake();
    }

    pub fn kicked(&self) -> Option<Kick> {
        Kick::from_u8(self.close_reason.load(Ordering::Relaxed))
    }
}

pub struct Gateway {
    pub id: GatewayId,
    pub(crate) cfg: GatewayConfig,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) push: Arc<dyn Sessions>,
    conns: Vec<Mutex<HashMap<ConnId, Arc<ConnHandle>>>>,
    ids: IdGen,
    started: Instant,
    /// Heartbeat deadlines and the per-IP and per-user budgets read this time.
    clock: Clock,
    pub(crate) wheel: wheel::Wheel,
    pub(crate) slots: Arc<Semaphore>,
    count: AtomicU64,
    admission: xinge_core::ratelimit::Admission,
    /// Frames per user (see `GatewayConfig::frames_per_sec`).
    frames: xinge_core::ratelimit::Keyed<UserId>,
}

impl Gateway {
    pub fn new(
        id: GatewayId,
        cfg: GatewayConfig,
        auth: Arc<dyn Authenticator>,
        upstream: Arc<dyn Upstream>,
        push: Arc<dyn Sessions>,
        clock: Clock,
    ) -> Arc<Self> {
        let wheel = wheel::Wheel::new(cfg.heartbeat_timeout_secs);
        // Present (at 0) from the start, not only after the first connection.
        metrics::gauge!("xinge_connections").increment(0.0);
        Arc::new(Self {
            id,
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
            admission: xinge_core::ratelimit::Admission::new(&cfg.admission),
            frames: xinge_core::ratelimit::Keyed::new(
                xinge_core::ratelimit::Rate {
                    per_sec: cfg.frames_per_sec,
                    burst: cfg.frames_burst,
                },
                cfg.max_connections,
            ),
            cfg,
            auth,
            upstream,
            push,
            conns: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ids: IdGen::new(id.0),
            started: clock.now(),
            clock,
            wheel,
            count: AtomicU64::new(0),
        })
    }

    /// Starts the background work: `deliveries` from the push layer (an in-process queue, or
    /// this gateway's bus subject), and the heartbeat wheel. Both end when `shutdown` fires.
    pub fn start(
        self: &Arc<Self>,
        mut deliveries: mpsc::Receiver<Delivery>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let gw = self.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    d = deliveries.recv() => match d {
                        Some(d) => gw.deliver(d),
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        });
        let gw = self.clone();
        let mut stop = shutdown;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => gw.wheel.tick(gw.now_secs(), |id, deadline_of| gw.expire(id, deadline_of)),
                    _ = stop.changed() => break,
                }
            }
            gw.close_all(Kick::ShuttingDown);
        });
    }

    /// Admits a new connection from `ip` (before it costs an authentication), or refuses
    /// it with `rate_limited` and the time until it may try again.
    pub fn admit(&self, ip: std::net::IpAddr) -> Result<(), ApiError> {
        self.admission.admit(ip, self.clock.now()).map_err(|wait| {
            metrics::counter!("xinge_connections_refused_total", "reason" => "rate_limited")
                .increment(1);
            ApiError::rate_limited("too many new connections: retry after the time given", wait)
        })
    }

    /// Charges one frame to `user`; past their rate, how long to stop reading them.
    pub(crate) fn frame_budget(&self, user: UserId) -> Result<(), std::time::Duration> {
        self.frames.take(user, self.clock.now()).inspect_err(|_| {
            metrics::counter!("xinge_frames_throttled_total").increment(1);
        })
    }

    /// Live authenticated connections.
    pub fn connections(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn now_secs(&self) -> u32 {
        self.clock
            .now()
            .saturating_duration_since(self.started)
            .as_secs() as u32
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.ids.next())
    }

    fn shard(&self, id: ConnId) -> std::sync::MutexGuard<'_, HashMap<ConnId, Arc<ConnHandle>>> {
        // Low bits of a snowflake are a counter: spread well.
        self.conns[(id.0 as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, id: ConnId, h: Arc<ConnHandle>, device: DeviceId) {
        let (user, h_expires) = (h.user, h.token_expires);
        self.shard(id).insert(id, h);
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("xinge_connections").increment(1.0);
        self.wheel.insert(id, self.now_secs(), h_expires);
        self.push.bind(
            user,
            xinge_push::Session {
                conn: id,
                gateway: self.id,
                device,
            },
        );
    }

    pub(crate) fn unregister(&self, id: ConnId, user: UserId) {
        if self.shard(id).remove(&id).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("xinge_connections").decrement(1.0);
            self.push.unbind(user, id);
        }
    }

    fn get(&self, id: ConnId) -> Option<Arc<ConnHandle>> {
        self.shard(id).get(&id).cloned()
    }

    fn deliver(&self, d: Delivery) {
        if d.frame.cmd == xinge_proto::cmd::END_SESSIONS {
            return self.end_sessions(&d);
        }
        for id in d.conns {
            let Some(h) = self.get(id) else { continue };
            if h.out.push(d.frame.clone()).is_err() {
                h.kick(Kick::SlowConsumer);
            }
        }
    }

    /// Closes the connections a [`SessionEnd`] names among those it was routed to (the
    /// user's on this gateway). The connection's task writes CLOSE with the reason and
    /// unregisters, which unbinds the session.
    fn end_sessions(&self, d: &Delivery) {
        let Some(end) = SessionEnd::from_frame(&d.frame) else {
            metrics::counter!("xinge_bus_malformed_total").increment(1);
            return;
        };
        for &id in &d.conns {
            let Some(h) = self.get(id) else { continue };
            if end.applies_to(h.user, &h.device, h.token) {
                h.kick(Kick::Ended(end.why));
            }
        }
    }

    /// Called by the wheel for a connection whose slot came up: `Some(deadline)` if it is
    /// still alive and must be looked at again then.
    fn expire(&self, id: ConnId, now: u32) -> Option<u32> {
        let h = self.get(id)?;
        if h.token_expires <= now {
            h.kick(Kick::TokenExpired);
            return None;
        }
        // Times are whole seconds; the extra second makes the timeout at least the full
        // configured time (between T and T+1 seconds), never less.
        let deadline = h.last_seen.load(Ordering::Relaxed) + self.cfg.heartbeat_timeout_secs + 1;
        if deadline <= now {
            h.kick(Kick::HeartbeatTimeout);
            None
        } else {
            // The token's expiry, when it comes before the heartbeat's deadline.
            Some(deadline.min(h.token_expires))
        }
    }

    /// A token's expiry (ms since the epoch) in the wheel's seconds since gateway start,
    /// rounded up: a connection is closed within the second after its token expires.
    pub(crate) fn expiry_secs(&self, expires_at_ms: u64) -> u32 {
        let left_ms = expires_at_ms.saturating_sub(self.clock.now_ms());
        let left = left_ms.div_ceil(1000).min(u64::from(u32::MAX / 2)) as u32;
        self.now_secs().saturating_add(left)
    }

    fn close_all(&self, why: Kick) {
        for shard in &self.conns {
            let all: Vec<_> = shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for h in all {
                h.kick(why);
            }
        }
    }
}
