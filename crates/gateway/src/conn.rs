//! One connection's life, independent of the transport: admission, authentication, the
//! read loop that answers gateway commands and forwards business ones, and the bounded
//! write queue drained by a writer task.

use crate::queue::SendQueue;
use crate::{ConnHandle, Gateway, Kick, SessionCtx};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use xinge_core::ErrorCode;
use xinge_core::error::ApiError;
use xinge_proto::api::{AuthOk, AuthRequest};
use xinge_proto::{Frame, FrameError, cmd};

/// A frame could not be read.
pub(crate) enum ReadError {
    /// The peer went away (EOF or I/O error); nothing to tell it.
    Gone,
    /// The peer sent something that is not a frame; tell it why, then close.
    Bad(FrameError),
}

pub(crate) trait FrameRead: Send {
    /// The next frame; `Err(Gone)` at end of stream.
    fn read_frame(&mut self) -> impl std::future::Future<Output = Result<Frame, ReadError>> + Send;
}

pub(crate) trait FrameWrite: Send + 'static {
    /// Writes all of `frames` (in order), as few system calls as the transport allows.
    fn write_frames(
        &mut self,
        frames: &[Frame],
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    fn write_frame(
        &mut self,
        f: Frame,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// A write that takes longer than this means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn close_frame(err: &ApiError) -> Frame {
    Frame::request(cmd::CLOSE, 0, serde_json::to_vec(err).unwrap_or_default())
}

pub(crate) fn bad_frame(e: &FrameError) -> ApiError {
    match e {
        FrameError::TooLarge(_) => ApiError::new(ErrorCode::TooLarge, e.to_string()),
        _ => ApiError::new(ErrorCode::BadRequest, e.to_string()),
    }
}

/// Writes a close frame and ends the stream, for connections refused before they have a
/// writer task.
async fn refuse<W: FrameWrite>(mut w: W, reply_to: Option<&Frame>, err: ApiError) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        if let Some(req) = reply_to {
            let _ = w.write_frame(Frame::error(req.cmd, req.req_id, &err)).await;
        }
        let _ = w.write_frame(close_frame(&err)).await;
        w.finish().await;
    })
    .await;
}

/// Serves one connection to the end. `token` is a token given at the upgrade (WebSocket
/// query or header); without it the first frame must be `AUTH`.
pub(crate) async fn serve<R: FrameRead + 'static, W: FrameWrite>(
    gw: Arc<Gateway>,
    mut r: R,
    w: W,
    token: Option<String>,
) {
    let Ok(permit) = gw.slots.clone().try_acquire_owned() else {
        refuse(
            w,
            None,
            ApiError::new(ErrorCode::Unavailable, "gateway is full"),
        )
        .await;
        return;
    };
    let auth_timeout = Duration::from_secs(u64::from(gw.cfg.auth_timeout_secs));
    let (auth_frame, token) = match token {
        Some(t) => (None, t),
        None => match tokio::time::timeout(auth_timeout, r.read_frame()).await {
            Err(_) => {
                let e = ApiError::new(ErrorCode::Unauthenticated, "no auth frame in time");
                return refuse(w, None, e).await;
            }
            Ok(Err(ReadError::Gone)) => return,
            Ok(Err(ReadError::Bad(e))) => return refuse(w, None, bad_frame(&e)).await,
            Ok(Ok(f)) if f.cmd != cmd::AUTH => {
                let e = ApiError::new(ErrorCode::Unauthenticated, "the first frame must be AUTH");
                return refuse(w, Some(&f), e).await;
            }
            Ok(Ok(f)) => match serde_json::from_slice::<AuthRequest>(&f.body) {
                Ok(req) => (Some(f), req.token),
                Err(e) => {
                    let e = ApiError::new(ErrorCode::BadRequest, format!("auth body: {e}"));
                    return refuse(w, Some(&f), e).await;
                }
            },
        },
    };
    let (user, device) = match gw.auth.authenticate(&token).await {
        Ok(v) => v,
        Err(e) => return refuse(w, auth_frame.as_ref(), e).await,
    };

    let conn = gw.next_conn_id();

    let handle = Arc::new(ConnHandle {
        user,
        out: SendQueue::new(gw.cfg.send_queue),
        last_seen: gw.now_secs().into(),
        close: Notify::new(),
        close_reason: Default::default(),
    });
    tokio::spawn(write_loop(w, handle.clone()));
    let ok = AuthOk {
        conn_id: conn.0,
        user_id: user,
        device: device.clone(),
        heartbeat_timeout_secs: gw.cfg.heartbeat_timeout_secs,
    };
    let ok = serde_json::to_vec(&ok).unwrap_or_default();
    let greeting = match &auth_frame {
        Some(f) => f.reply(ok),
        // Authenticated at the upgrade: announce the session as an unsolicited AUTH reply.
        None => Frame {
            cmd: cmd::AUTH,
            flags: cmd::FLAG_RESPONSE,
            req_id: 0,
            body: ok.into(),
        },
    };
    let _ = handle.out.push(greeting);
    gw.register(conn, handle.clone(), device.clone());
    tracing::debug!(%conn, %user, %device, "connection authenticated");

    let ctx = SessionCtx { user, device, conn };
    // The session runs as a task of its own, so the long-lived task holds only the
    // session's state, not the authentication phase's.
    tokio::spawn(session(gw, r, handle, ctx, permit));
}

async fn session<R: FrameRead + 'static>(
    gw: Arc<Gateway>,
    mut r: R,
    handle: Arc<ConnHandle>,
    ctx: SessionCtx,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (conn, user) = (ctx.conn, ctx.user);
    let reason = read_loop(&gw, &mut r, &handle, &ctx).await;
    gw.unregister(conn, user);
    let reason = handle.kicked().map(Kick::error).or(reason);
    if let Some(err) = reason {
        tracing::debug!(%conn, code = %err.code, "closing connection");
        handle.out.close_with(Some(close_frame(&err)));
    }
    handle.out.close_with(None);
}

async fn read_loop<R: FrameRead>(
    gw: &Gateway,
    r: &mut R,
    handle: &ConnHandle,
    ctx: &SessionCtx,
) -> Option<ApiError> {
    loop {
        let frame = tokio::select! {
            f = r.read_frame() => f,
            _ = handle.close.notified() => return None,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(ReadError::Gone) => return None,
            Err(ReadError::Bad(e)) => return Some(bad_frame(&e)),
        };
        handle.last_seen.store(gw.now_secs(), Ordering::Relaxed);
        if frame.is_response() {
            continue; // clients have nothing to answer; tolerate and ignore
        }
        let reply = match frame.cmd {
            cmd::PING => frame.reply(bytes::Bytes::new()),
            cmd::AUTH => Frame::error(
                frame.cmd,
                frame.req_id,
                &ApiError::new(ErrorCode::Conflict, "already authenticated"),
            ),
            c if c >= cmd::FIRST_BUSINESS => {
                match gw.upstream.handle(ctx, c, frame.body.clone()).await {
                    Ok(body) => frame.reply(body),
                    Err(e) => {
                        metrics::counter!("xinge_errors_total", "code" => e.code.as_str(), "via" => "connection").increment(1);
                        Frame::error(frame.cmd, frame.req_id, &e)
                    }
                }
            }
            _ => Frame::error(
                frame.cmd,
                frame.req_id,
                &ApiError::new(
                    ErrorCode::UnknownCommand,
                    format!("unknown command {}", frame.cmd),
                ),
            ),
        };
        if handle.out.push(reply).is_err() {
            return Some(ApiError::new(
                ErrorCode::SlowConsumer,
                "send queue full: reconnect and pull to catch up",
            ));
        }
    }
}

async fn write_loop<W: FrameWrite>(mut w: W, handle: Arc<ConnHandle>) {
    // Whatever is queued goes out in one write: an answer and the signal that follows it
    // cost one system call, not two. The batch is allocated per write, so an idle
    // connection keeps no buffer.
    while let Some(batch) = handle.out.pop_batch().await {
        // Boxed: the write (and its timer) takes memory only while a write is under way.
        match Box::pin(tokio::time::timeout(WRITE_TIMEOUT, w.write_frames(&batch))).await {
            Ok(Ok(())) => {}
            _ => {
                // The peer stopped reading or went away: end the reading side too.
                handle.out.close_with(None);
                handle.kick(Kick::WriteFailed);
                return;
            }
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, w.finish()).await;
}
