//! The bus between roles on NATS.
//!
//! ```text
//! gateway ── request <p>.cmd.<n> (queue group "api") ──▶ any api process ── reply ──▶
//! gateway ── request <p>.auth    (queue group "api") ──▶ any api process ── reply ──▶
//! push    ── publish <p>.gw.<id> ──▶ the one gateway holding the connections (a pack of
//!            deliveries: every one for that gateway in a push batch)
//! gateway ── JetStream <p>.presence ──▶ one api process tells friends (presence.rs)
//! ```
//! A command carries the session in headers (`xinge-user`, `xinge-device`, `xinge-conn`)
//! and a trace id (`xinge-trace`) that every role logs: the gateway when it sends the
//! command, the api process when it has handled it, and — carried inside the push events
//! the command caused (a task-local, so the IM layer need not know) — the push process
//! when it hands the signals to gateways. One send can be followed across all three. An error answer has `xinge-error: <code>` and the
//! message as its payload.

use crate::queues::queue_depth;
use crate::trace::{self, TRACE};
use crate::wire::{decode_delivery, unpack};
use crate::{ClusterError, Names};
use async_nats::{HeaderMap, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, watch};
use xinge_core::auth::Authenticated;
use xinge_core::error::ApiError;
use xinge_core::{ConnId, DeviceId, ErrorCode, UserId};
use xinge_gateway::{Authenticator, SessionCtx, Upstream};
use xinge_proto::Frame;
use xinge_push::Delivery;

const H_USER: &str = "xinge-user";
const H_DEVICE: &str = "xinge-device";
const H_CONN: &str = "xinge-conn";
const H_TOKEN: &str = "xinge-token";
const H_TRACE: &str = "xinge-trace";
const H_ERROR: &str = "xinge-error";
const API_GROUP: &str = "api";

fn unavailable(what: &str) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, what)
}

/// The headers that carry a command's session and trace id.
fn session_headers(s: &SessionCtx, trace: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_USER, s.user.0.to_string().as_str());
    h.insert(H_DEVICE, s.device.as_str());
    h.insert(H_CONN, s.conn.0.to_string().as_str());
    h.insert(H_TOKEN, s.token.to_string().as_str());
    h.insert(H_TRACE, trace);
    h
}

fn header<T: std::str::FromStr>(h: Option<&HeaderMap>, name: &str) -> Option<T> {
    h?.get(name)?.as_str().parse().ok()
}

/// The session of a command, from [`session_headers`]; `None` if one is missing or bad.
fn session_of(h: Option<&HeaderMap>) -> Option<SessionCtx> {
    let user: u64 = header(h, H_USER)?;
    let conn: u64 = header(h, H_CONN)?;
    let device: String = header(h, H_DEVICE)?;
    let token: u64 = header(h, H_TOKEN)?;
    Some(SessionCtx {
        user: UserId(user),
        device: DeviceId::parse(&device)?,
        conn: ConnId(conn),
        token,
    })
}

/// The business command a subject `<p>.cmd.<n>` carries.
fn command_of(subject: &str) -> Option<u16> {
    subject.rsplit('.').next()?.parse().ok()
}

/// An error answer's headers: its stable code (the message is the payload).
fn error_headers(e: &ApiError) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_ERROR, e.code.as_str());
    h
}

/// The error an answer carries, if it is one; a code this process does not know is
/// `internal`.
fn error_of(h: Option<&HeaderMap>, payload: &[u8]) -> Option<ApiError> {
    let code = h?.get(H_ERROR)?;
    let code = serde_json::from_value(serde_json::Value::String(code.to_string()))
        .unwrap_or(ErrorCode::Internal);
    Some(ApiError::new(
        code,
        String::from_utf8_lossy(payload).into_owned(),
    ))
}

/// The deliveries in one message from a push process (a pack: every delivery of a batch
/// for this gateway), and how many of its parts were malformed (dropped).
fn deliveries_in(payload: Bytes, max_frame: usize) -> (Vec<Delivery>, u64) {
    let Some(parts) = unpack(payload) else {
        return (Vec::new(), 1);
    };
    let (mut out, mut malformed) = (Vec::with_capacity(parts.len()), 0);
    for part in parts {
        let frame = decode_delivery(part)
            .and_then(|(conns, frame)| Some((conns, Frame::decode(frame, max_frame).ok()?)));
        match frame {
            Some((conns, frame)) => out.push(Delivery { conns, frame }),
            None => malformed += 1,
        }
    }
    (out, malformed)
}

/// An auth answer: `[user, device, token, expires_at_ms]` in JSON.
fn encode_auth(a: &Authenticated) -> Bytes {
    let v = (a.user.0, a.device.as_str(), a.token, a.expires_at_ms);
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn decode_auth(b: &[u8]) -> Option<Authenticated> {
    let (user, device, token, expires_at_ms): (u64, String, u64, u64) =
        serde_json::from_slice(b).ok()?;
    Some(Authenticated {
        user: UserId(user),
        device: DeviceId::parse(&device)?,
        token,
        expires_at_ms,
    })
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
        match error_of(msg.headers.as_ref(), &msg.payload) {
            Some(e) => Err(e),
            None => Ok(msg.payload),
        }
    }
}

#[async_trait]
impl Upstream for NatsUpstream {
    async fn handle(&self, s: &SessionCtx, cmd: u16, body: Bytes) -> Result<Bytes, ApiError> {
        let trace = trace::format(rand::random::<u64>());
        tracing::debug!(trace = %trace, user = %s.user, cmd, "command to api");
        let h = session_headers(s, &trace);
        self.request(self.names.command(cmd), h, body).await
    }
}

#[async_trait]
impl Authenticator for NatsUpstream {
    async fn authenticate(&self, token: &str) -> Result<Authenticated, ApiError> {
        let reply = self
            .request(
                self.names.auth(),
                HeaderMap::new(),
                Bytes::copy_from_slice(token.as_bytes()),
            )
            .await?;
        decode_auth(&reply).ok_or_else(|| ApiError::new(ErrorCode::Internal, "bad auth answer"))
    }
}

/// Deliveries for gateway `subject` (its own subject only), decoded onto a bounded queue;
/// when it is full a delivery is dropped and counted (clients repair by pull).
pub async fn deliveries(
    nats: &async_nats::Client,
    subject: String,
    queue: usize,
    max_frame: usize,
) -> Result<mpsc::Receiver<Delivery>, ClusterError> {
    let mut sub = nats.subscribe(subject).await.map_err(ClusterError::nats)?;
    let (tx, rx) = mpsc::channel(queue.max(1));
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let (deliveries, malformed) = deliveries_in(msg.payload, max_frame);
            if malformed > 0 {
                metrics::counter!("xinge_bus_malformed_total").increment(malformed);
            }
            for d in deliveries {
                metrics::counter!("xinge_deliveries_received_total")
                    .increment(d.conns.len() as u64);
                // A session end waits for room where a signal would be dropped.
                if d.frame.cmd == xinge_proto::cmd::END_SESSIONS {
                    if tx.send(d).await.is_err() {
                        break;
                    }
                } else if tx.try_send(d).is_err() {
                    metrics::counter!("xinge_signals_dropped_total").increment(1);
                }
            }
            queue_depth("deliveries", &tx);
        }
    });
    Ok(rx)
}

// === the api's side ===

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
) -> Result<(), ClusterError> {
    let err = ClusterError::nats;
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
                    auth.authenticate(&token).await.map(|a| encode_auth(&a))
                } else {
                    handle_command(&*upstream, &msg).await
                };
                let sent = match answer {
                    Ok(body) => nats.publish(reply, body).await,
                    Err(e) => {
                        let h = error_headers(&e);
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
    let cmd = command_of(&msg.subject).ok_or_else(bad)?;
    let session = session_of(h).ok_or_else(bad)?;
    let user = session.user.0;
    let trace: String = header(h, H_TRACE).unwrap_or_default();
    let trace_id = trace::parse(&trace);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Pack, encode_delivery};

    fn session() -> SessionCtx {
        SessionCtx {
            user: UserId(42),
            device: DeviceId::parse("laptop").unwrap(),
            conn: ConnId(7),
            token: 99,
        }
    }

    #[test]
    fn a_commands_session_and_trace_travel_in_its_headers() {
        let h = session_headers(&session(), "00000000000000ff");
        let back = session_of(Some(&h)).expect("the session comes back");
        assert_eq!(
            (back.user, back.device.as_str(), back.conn, back.token),
            (UserId(42), "laptop", ConnId(7), 99)
        );
        assert_eq!(
            header::<String>(Some(&h), H_TRACE).unwrap(),
            "00000000000000ff"
        );
        assert!(session_of(None).is_none(), "no headers");
        for (name, bad) in [
            (H_USER, "x"),
            (H_CONN, "-1"),
            (H_DEVICE, ""),
            (H_TOKEN, "t"),
        ] {
            let mut h = session_headers(&session(), "");
            h.insert(name, bad);
            assert!(session_of(Some(&h)).is_none(), "{name}: {bad:?}");
        }
        let mut partial = HeaderMap::new();
        partial.insert(H_USER, "1");
        assert!(session_of(Some(&partial)).is_none(), "a header missing");
    }

    #[test]
    fn an_auth_answer_names_the_token_and_its_expiry() {
        let a = Authenticated {
            user: UserId(u64::MAX),
            device: DeviceId::parse("phone").unwrap(),
            token: u64::MAX - 1,
            expires_at_ms: 1_800_000_000_000,
        };
        assert_eq!(decode_auth(&encode_auth(&a)), Some(a));
        for bad in [&b""[..], b"[1,\"phone\",2]", b"[1,\"\",2,3]", b"{}"] {
            assert_eq!(decode_auth(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_command_is_the_last_part_of_its_subject() {
        let names = Names::new("x-1");
        assert_eq!(command_of(&names.command(30)), Some(30));
        assert_eq!(command_of(&names.command(u16::MAX)), Some(u16::MAX));
        assert_eq!(command_of("x-1.cmd.65536"), None, "past u16");
        assert_eq!(command_of("x-1.cmd."), None);
        assert_eq!(command_of(&names.auth()), None);
    }

    #[test]
    fn an_error_answer_keeps_its_code_and_message() {
        let e = ApiError::new(ErrorCode::RateLimited, "slow down");
        let back = error_of(Some(&error_headers(&e)), e.message.as_bytes()).unwrap();
        assert_eq!((back.code, back.message.as_str()), (e.code, "slow down"));
        assert!(error_of(None, b"fine").is_none(), "no headers: an answer");
        assert!(error_of(Some(&HeaderMap::new()), b"fine").is_none());
        let mut h = HeaderMap::new();
        h.insert(H_ERROR, "no_such_code");
        let unknown = error_of(Some(&h), b"\xff?").unwrap();
        assert_eq!(
            unknown.code,
            ErrorCode::Internal,
            "a code from a newer peer"
        );
        assert_eq!(unknown.message, "\u{fffd}?");
    }

    #[test]
    fn a_pack_of_deliveries_is_read_part_by_part() {
        let f = Frame::request(5, 0, &b"{}"[..]);
        let mut pack = Pack::default();
        pack.push(&encode_delivery(&[ConnId(1), ConnId(2)], &f.encode()));
        pack.push(b"\0\0\0\x09short"); // nine connections announced, none there
        pack.push(&encode_delivery(&[ConnId(3)], b"not a frame"));
        pack.push(&encode_delivery(&[ConnId(4)], &f.encode()));
        let (got, malformed) = deliveries_in(pack.take(), 1024);
        let conns: Vec<_> = got.iter().map(|d| d.conns.clone()).collect();
        assert_eq!(conns, vec![vec![ConnId(1), ConnId(2)], vec![ConnId(4)]]);
        assert!(got.iter().all(|d| d.frame == f));
        assert_eq!(malformed, 2);
        // A frame over this gateway's limit is malformed here.
        let mut pack = Pack::default();
        pack.push(&encode_delivery(&[ConnId(1)], &f.encode()));
        assert_eq!(deliveries_in(pack.take(), 4).1, 1);
        // A pack cut short is dropped whole.
        let (got, malformed) = deliveries_in(Bytes::from_static(b"\0\0\0\x05ab"), 1024);
        assert!(got.is_empty() && malformed == 1);
        assert_eq!(
            deliveries_in(Bytes::new(), 1024).0.len(),
            0,
            "an empty pack"
        );
    }
}
