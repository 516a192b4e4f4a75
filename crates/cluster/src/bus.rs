//! The bus between roles on NATS.
//!
//! ```text
//! gateway ── request <p>.cmd.<n> (queue group "api") ──▶ any api process ── reply ──▶
//! gateway ── request <p>.auth    (queue group "api") ──▶ any api process ── reply ──▶
//! push    ── publish <p>.gw.<id> ──▶ the one gateway holding the connections (a pack of
//!            deliveries: every one for that gateway in a push batch)
//! gateway ── publish <p>.presence (queue group "api") ──▶ one api process tells friends
//! ```
//! A command carries the session in headers (`xinge-user`, `xinge-device`, `xinge-conn`)
//! and a trace id (`xinge-trace`) that every role logs: the gateway when it sends the
//! command, the api process when it has handled it, and — carried inside the push events
//! the command caused (a task-local, so the IM layer need not know) — the push process
//! when it hands the signals to gateways. One send can be followed across all three. An error answer has `xinge-error: <code>` and the
//! message as its payload.

use crate::Names;
use crate::wire::{decode_delivery, decode_presence, unpack};
use async_nats::{HeaderMap, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, watch};
use xinge_core::error::ApiError;
use xinge_core::{ConnId, DeviceId, ErrorCode, UserId};
use xinge_gateway::{Authenticator, SessionCtx, Upstream};
use xinge_proto::Frame;
use xinge_push::{Delivery, PresenceChange};

const H_USER: &str = "xinge-user";
const H_DEVICE: &str = "xinge-device";
const H_CONN: &str = "xinge-conn";
const H_TRACE: &str = "xinge-trace";
const H_ERROR: &str = "xinge-error";
const API_GROUP: &str = "api";

fn unavailable(what: &str) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, what)
}

tokio::task_local! {
    /// The trace id of the command being handled on this task (0: none).
    pub static TRACE: u64;
}

/// The trace id of the command this task is handling, if any.
pub fn current_trace() -> u64 {
    TRACE.try_with(|t| *t).unwrap_or(0)
}

// === the gateway's side ===

/// The gateway's `Upstream` and `Authenticator`: every command becomes a NATS request that
/// exactly one api process answers.
pub struct NatsUpstream {
    nats: async_nats::Client,
    names: Names,
}

impl NatsUpstream {
    pub fn new(nats: async_nats::Client, names: Names) -> Self {
        Self { nats, names }
    }

    async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        use async_nats::RequestErrorKind;
        let msg = self
            .nats
            .request_with_headers(subject, headers, body)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => unavailable("no api process is running"),
                RequestErrorKind::TimedOut => unavailable("the api did not answer in time"),
                RequestErrorKind::MaxPayloadExceeded => {
                    ApiError::new(ErrorCode::TooLarge, "command over the bus's size limit")
                }
                _ => unavailable("the bus is unavailable"),
            })?;
        if let Some(code) = msg.headers.as_ref().and_then(|h| h.get(H_ERROR)) {
            let code = serde_json::from_value(serde_json::Value::String(code.to_string()))
                .unwrap_or(ErrorCode::Internal);
            return Err(ApiError::new(
                code,
                String::from_utf8_lossy(&msg.payload).into_owned(),
            ));
        }
        Ok(msg.payload)
    }
}

#[async_trait]
impl Upstream for NatsUpstream {
    async fn handle(&self, s: &SessionCtx, cmd: u16, body: Bytes) -> Result<Bytes, ApiError> {
        let trace = format!("{:016x}", rand::random::<u64>());
        let mut h = HeaderMap::new();
        h.insert(H_USER, s.user.0.to_string().as_str());
        h.insert(H_DEVICE, s.device.as_str());
        h.insert(H_CONN, s.conn.0.to_string().as_str());
        h.insert(H_TRACE, trace.as_str());
        tracing::debug!(trace = %trace, user = %s.user, cmd, "command to api");
        self.request(self.names.command(cmd), h, body).await
    }
}

#[async_trait]
impl Authenticator for NatsUpstream {
    async fn authenticate(&self, token: &str) -> Result<(UserId, DeviceId), ApiError> {
        let reply = self
            .request(
                self.names.auth(),
                HeaderMap::new(),
                Bytes::copy_from_slice(token.as_bytes()),
            )
            .await?;
        let (user, device): (u64, String) = serde_json::from_slice(&reply)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "bad auth answer"))?;
        let device = DeviceId::parse(&device)
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "bad auth answer"))?;
        Ok((UserId(user), device))
    }
}

/// Deliveries for gateway `subject` (its own subject only), decoded onto a bounded queue;
/// when it is full a delivery is dropped and counted (clients repair by pull).
pub async fn deliveries(
    nats: &async_nats::Client,
    subject: String,
    queue: usize,
    max_frame: usize,
) -> Result<mpsc::Receiver<Delivery>, crate::ClusterError> {
    let mut sub = nats
        .subscribe(subject)
        .await
        .map_err(crate::ClusterError::nats)?;
    let (tx, rx) = mpsc::channel(queue.max(1));
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            // A push process packs every delivery of a batch for this gateway into one
            // message.
            let Some(parts) = unpack(msg.payload) else {
                metrics::counter!("xinge_bus_malformed_total").increment(1);
                continue;
            };
            for part in parts {
                let Some((conns, frame)) = decode_delivery(part) else {
                    metrics::counter!("xinge_bus_malformed_total").increment(1);
                    continue;
                };
                let Ok(frame) = Frame::decode(frame, max_frame) else {
                    metrics::counter!("xinge_bus_malformed_total").increment(1);
                    continue;
                };
                metrics::counter!("xinge_deliveries_received_total").increment(conns.len() as u64);
                if tx.try_send(Delivery { conns, frame }).is_err() {
                    metrics::counter!("xinge_signals_dropped_total").increment(1);
                }
            }
            crate::pushq::queue_depth("deliveries", &tx);
        }
    });
    Ok(rx)
}

// === the api's side ===

fn header<T: std::str::FromStr>(h: Option<&HeaderMap>, name: &str) -> Option<T> {
    h?.get(name)?.as_str().parse().ok()
}

/// Answers commands and token checks from every gateway, in the "api" queue group: NATS
/// gives each request to one api process. At most `max_inflight` are handled at once;
/// the rest wait in the subscription (and time out at the gateway if it is too slow).
pub async fn serve_commands(
    nats: async_nats::Client,
    names: &Names,
    upstream: Arc<dyn Upstream>,
    auth: Arc<dyn Authenticator>,
    max_inflight: usize,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::ClusterError> {
    let err = crate::ClusterError::nats;
    let mut cmds: Subscriber = nats
        .queue_subscribe(names.all_commands(), API_GROUP.into())
        .await
        .map_err(err)?;
    let mut auths: Subscriber = nats
        .queue_subscribe(names.auth(), API_GROUP.into())
        .await
        .map_err(err)?;
    let slots = Arc::new(Semaphore::new(max_inflight.max(1)));
    tokio::spawn(async move {
        loop {
            let (msg, is_auth) = tokio::select! {
                m = cmds.next() => (m, false),
                m = auths.next() => (m, true),
                _ = shutdown.changed() => break,
            };
            let Some(msg) = msg else { break };
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (nats, upstream, auth) = (nats.clone(), upstream.clone(), auth.clone());
            tokio::spawn(async move {
                let answer = if is_auth {
                    let token = String::from_utf8_lossy(&msg.payload).into_owned();
                    auth.authenticate(&token).await.map(|(u, d)| {
                        Bytes::from(serde_json::to_vec(&(u.0, d.as_str())).unwrap_or_default())
                    })
                } else {
                    handle_command(&*upstream, &msg).await
                };
                let sent = match answer {
                    Ok(body) => nats.publish(reply, body).await,
                    Err(e) => {
                        let mut h = HeaderMap::new();
                        h.insert(H_ERROR, e.code.as_str());
                        nats.publish_with_headers(reply, h, e.message.into_bytes().into())
                            .await
                    }
                };
                if sent.is_err() {
                    metrics::counter!("xinge_bus_reply_failed_total").increment(1);
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn handle_command(
    upstream: &dyn Upstream,
    msg: &async_nats::Message,
) -> Result<Bytes, ApiError> {
    let h = msg.headers.as_ref();
    let bad = || ApiError::new(ErrorCode::BadRequest, "command without a session");
    let cmd: u16 = msg
        .subject
        .rsplit('.')
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let user: u64 = header(h, H_USER).ok_or_else(bad)?;
    let conn: u64 = header(h, H_CONN).ok_or_else(bad)?;
    let device: String = header(h, H_DEVICE).ok_or_else(bad)?;
    let device = DeviceId::parse(&device).ok_or_else(bad)?;
    let trace: String = header(h, H_TRACE).unwrap_or_default();
    let trace_id = u64::from_str_radix(&trace, 16).unwrap_or(0);
    let session = SessionCtx {
        user: UserId(user),
        device,
        conn: ConnId(conn),
    };
    let started = std::time::Instant::now();
    let r = TRACE
        .scope(
            trace_id,
            upstream.handle(&session, cmd, msg.payload.clone()),
        )
        .await;
    tracing::debug!(trace = %trace, user, cmd, ok = r.is_ok(), ms = started.elapsed().as_millis() as u64, "command handled");
    r
}

/// Presence transitions published by gateways, one api process each.
pub async fn presence_changes(
    nats: &async_nats::Client,
    names: &Names,
) -> Result<mpsc::Receiver<PresenceChange>, crate::ClusterError> {
    let mut sub = nats
        .queue_subscribe(names.presence(), API_GROUP.into())
        .await
        .map_err(crate::ClusterError::nats)?;
    let (tx, rx) = mpsc::channel(4_096);
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(p) = decode_presence(msg.payload) {
                let _ = tx.try_send(p);
            }
        }
    });
    Ok(rx)
}
