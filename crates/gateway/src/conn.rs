//! One connection's life, independent of the transport: admission, authentication, then
//! one task that reads frames, answers gateway commands, forwards business ones and writes
//! what the connection's bounded send queue holds.
//!
//! An idle connection is that one task waiting in [`Transport::poll_frame`] and on its
//! queue's waker: the wait itself holds no future (no `Notify` waiter, no read buffer, no
//! timer), only the task's own fields. Writes and business calls are boxed, so they take
//! memory only while under way.

use crate::queue::SendQueue;
use crate::{ConnHandle, Gateway, Kick, SessionCtx};
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
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

/// A long connection's wire: frames in, frames out.
pub(crate) trait Transport: Send + 'static {
    /// The next frame if its bytes have arrived. Cancel-safe: a partial frame stays in the
    /// transport, and `Pending` only registers the waker, so waiting holds no buffer.
    /// `Err(Gone)` at end of stream.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>>;
    /// The transport owes the peer something of its own (a WebSocket pong): write soon,
    /// even with nothing queued.
    fn owes_reply(&mut self) -> bool {
        false
    }
    /// Writes all of `frames` (in order, and whatever the transport owes), as few system
    /// calls as the transport allows.
    fn write_frames(
        &mut self,
        frames: &[Frame],
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

fn read_frame<T: Transport>(io: &mut T) -> impl Future<Output = Result<Frame, ReadError>> + '_ {
    poll_fn(|cx| io.poll_frame(cx))
}

/// A write that takes longer than this means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn close_frame(err: &ApiError) -> Frame {
    Frame::request(cmd::CLOSE, 0, serde_json::to_vec(err).unwrap_or_default())
}

pub(crate) fn bad_frame(e: &FrameError) -> ApiError {
    match e {
        FrameError::TooLarge(_) => ApiError::new(ErrorCode::TooLarge, e.to_string()),
        _ => ApiError::new(ErrorCode::BadRequest, e.to_string()),
    }
}

/// Writes a close frame and ends the stream, for connections refused before they have a
/// session.
async fn refuse<T: Transport>(mut io: T, reply_to: Option<&Frame>, err: ApiError) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let mut frames = Vec::with_capacity(2);
        if let Some(req) = reply_to {
            frames.push(Frame::error(req.cmd, req.req_id, &err));
        }
        frames.push(close_frame(&err));
        let _ = io.write_frames(&frames).await;
        io.finish().await;
    })
    .await;
}

/// Serves one connection to the end. `token` is a token given at the upgrade (WebSocket
/// query or header); without it the first frame must be `AUTH`.
pub(crate) async fn serve<T: Transport>(gw: Arc<Gateway>, io: T, token: Option<String>) {
    let Ok(permit) = gw.slots.clone().try_acquire_owned() else {
        refuse(
            io,
            None,
            ApiError::new(ErrorCode::Unavailable, "gateway is full"),
        )
        .await;
        return;
    };
    serve_admitted(gw, io, token, permit).await;
}

/// [`serve`] for a connection that already holds its slot (a TLS one took it before its
/// handshake).
pub(crate) async fn serve_admitted<T: Transport>(
    gw: Arc<Gateway>,
    mut io: T,
    token: Option<String>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let auth_timeout = Duration::from_secs(u64::from(gw.cfg.auth_timeout_secs));
    let (auth_frame, token) = match token {
        Some(t) => (None, t),
        None => match tokio::time::timeout(auth_timeout, read_frame(&mut io)).await {
            Err(_) => {
                let e = ApiError::new(ErrorCode::Unauthenticated, "no auth frame in time");
                return refuse(io, None, e).await;
            }
            Ok(Err(ReadError::Gone)) => return,
            Ok(Err(ReadError::Bad(e))) => return refuse(io, None, bad_frame(&e)).await,
            Ok(Ok(f)) if f.cmd != cmd::AUTH => {
                let e = ApiError::new(ErrorCode::Unauthenticated, "the first frame must be AUTH");
                return refuse(io, Some(&f), e).await;
            }
            Ok(Ok(f)) => match serde_json::from_slice::<AuthRequest>(&f.body) {
                Ok(req)
                    if req
                        .protocol
                        .is_some_and(|p| p != xinge_proto::PROTOCOL_VERSION) =>
                {
                    let e = ApiError::new(
                        ErrorCode::UnsupportedProtocol,
                        format!(
                            "this server speaks protocol {}",
                            xinge_proto::PROTOCOL_VERSION
                        ),
                    );
                    return refuse(io, Some(&f), e).await;
                }
                Ok(req) => (Some(f), req.token),
                Err(e) => {
                    let e = ApiError::new(ErrorCode::BadRequest, format!("auth body: {e}"));
                    return refuse(io, Some(&f), e).await;
                }
            },
        },
    };
    let who = match gw.auth.authenticate(&token).await {
        Ok(v) => v,
        Err(e) => return refuse(io, auth_frame.as_ref(), e).await,
    };
    let (user, device) = (who.user, who.device);

    let conn = gw.next_conn_id();

    let handle = Arc::new(ConnHandle {
        user,
        device: device.clone(),
        token: who.token,
        token_expires: gw.expiry_secs(who.expires_at_ms),
        out: SendQueue::new(gw.cfg.send_queue),
        last_seen: gw.now_secs().into(),
        close_reason: Default::default(),
    });
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

    let ctx = SessionCtx {
        user,
        device,
        conn,
        token: who.token,
    };
    // The session runs as a task of its own, so the long-lived task holds only the
    // session's state, not the authentication phase's.
    tokio::spawn(session(gw, io, handle, ctx, permit));
}

/// What woke an idle session.
enum Event {
    Kicked,
    Write,
    Read(Result<Frame, ReadError>),
}

/// Why the session's loop ended.
enum End {
    /// The peer went away, or the gateway kicked it (the reason is in the handle).
    Quiet,
    /// The peer stopped taking data: nothing more can be written.
    WriteFailed,
    /// Tell the peer why, then close.
    Error(ApiError),
}

/// The authenticated connection, to the end. Its future is what an idle connection costs
/// beyond its handle, so it holds only its arguments and the wait: writing, answering a
/// frame and closing are boxed, and what they need is moved into the box before it is
/// awaited (`an_idle_tcp_session_is_one_small_future` keeps this true).
///
/// Not an `async fn`: an async fn keeps its arguments twice in its state (once as passed,
/// once as locals); the async block below holds them once.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn session<T: Transport>(
    gw: Arc<Gateway>,
    mut io: T,
    handle: Arc<ConnHandle>,
    ctx: SessionCtx,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        let closing = {
            let end = loop {
                let work = {
                    let event = poll_fn(|cx| {
                        handle.out.register(cx.waker());
                        if handle.kicked().is_some() {
                            return Poll::Ready(Event::Kicked);
                        }
                        if handle.out.has_frames() || io.owes_reply() {
                            return Poll::Ready(Event::Write);
                        }
                        match io.poll_frame(cx) {
                            Poll::Ready(r) => Poll::Ready(Event::Read(r)),
                            // Reading may have left a reply owed (a WebSocket ping).
                            Poll::Pending if io.owes_reply() => Poll::Ready(Event::Write),
                            Poll::Pending => Poll::Pending,
                        }
                    })
                    .await;
                    // A block, so that `event` is gone before the work is awaited.
                    let work = match event {
                        Event::Kicked | Event::Read(Err(ReadError::Gone)) => break End::Quiet,
                        Event::Read(Err(ReadError::Bad(e))) => break End::Error(bad_frame(&e)),
                        Event::Write => Work::Write,
                        Event::Read(Ok(f)) => Work::Frame(f),
                    };
                    Box::pin(step(&gw, &mut io, &handle, &ctx, work))
                };
                if let Some(end) = work.await {
                    break end;
                }
            };
            Box::pin(close(gw, io, handle, ctx, permit, end))
        };
        closing.await;
    }
}

enum Work {
    Write,
    Frame(Frame),
}

/// Writes what is queued, or answers a frame; `Some` ends the session.
async fn step<T: Transport>(
    gw: &Gateway,
    io: &mut T,
    handle: &ConnHandle,
    ctx: &SessionCtx,
    work: Work,
) -> Option<End> {
    let frame = match work {
        Work::Write => return (!write_queued(io, &handle.out).await).then_some(End::WriteFailed),
        Work::Frame(f) => f,
    };
    handle.last_seen.store(gw.now_secs(), Ordering::Relaxed);
    // A user over the frame rate is not read from (nor answered) until it allows: their
    // frames wait in the kernel's buffers, and TCP's flow control slows the client down.
    // Answering each excess frame instead would cost as much as serving it.
    while let Err(wait) = gw.frame_budget(ctx.user) {
        tokio::time::sleep(wait).await;
    }
    match answer(gw, io, handle, ctx, frame).await {
        Answer::WriteFailed => Some(End::WriteFailed),
        Answer::Reply(reply) => handle.out.push(reply).is_err().then(|| {
            End::Error(ApiError::new(
                ErrorCode::SlowConsumer,
                "send queue full: reconnect and pull to catch up",
            ))
        }),
    }
}

/// Ends a session: unbinds it, then writes what is still queued and the close frame (unless
/// writing already failed) and ends the stream.
async fn close<T: Transport>(
    gw: Arc<Gateway>,
    mut io: T,
    handle: Arc<ConnHandle>,
    ctx: SessionCtx,
    _permit: tokio::sync::OwnedSemaphorePermit,
    end: End,
) {
    let conn = ctx.conn;
    gw.unregister(conn, ctx.user);
    let write_failed = matches!(end, End::WriteFailed);
    if write_failed {
        handle.kick(Kick::WriteFailed);
    }
    let reason = match (handle.kicked(), end) {
        (Some(kick), _) => Some(kick.error()),
        (None, End::Error(e)) => Some(e),
        (None, _) => None,
    };
    if let Some(err) = &reason {
        tracing::debug!(%conn, code = %err.code, "closing connection");
    }
    // A session whose access ended is handed nothing more, not even what was queued.
    if matches!(handle.kicked(), Some(Kick::Ended(_) | Kick::TokenExpired)) {
        handle
            .out
            .close_discarding(reason.as_ref().map(close_frame));
    } else {
        handle.out.close_with(reason.as_ref().map(close_frame));
    }
    if write_failed {
        return;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        while let Some(batch) = handle.out.take_batch() {
            io.write_frames(&batch).await?;
        }
        io.finish().await;
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Writes what is queued (and what the transport owes); false if the peer stopped taking
/// data. Whatever is queued when the session runs goes out in one write (frames pushed
/// while it waited in the run queue join it). It does not yield first to gather more: that
/// sent every answer to the back of the run queue once more, and under a large group's
/// burst of deliveries that was milliseconds per answer (docs/BENCHMARKS.md, "mixed").
/// The batch is allocated per write, so an idle connection keeps no buffer.
async fn write_queued<T: Transport>(io: &mut T, out: &SendQueue) -> bool {
    let batch = out.take_batch().unwrap_or_default();
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, io.write_frames(&batch)).await,
        Ok(Ok(()))
    )
}

enum Answer {
    Reply(Frame),
    WriteFailed,
}

/// The reply to one frame from the client (every frame gets one). A business command is passed
/// up; while it runs, frames queued for the connection (signals) keep going out.
async fn answer<T: Transport>(
    gw: &Gateway,
    io: &mut T,
    handle: &ConnHandle,
    ctx: &SessionCtx,
    frame: Frame,
) -> Answer {
    if frame.is_response() {
        // The server asks clients nothing, so a response from one is a client's bug: said
        // so (the connection lives on) instead of dropped without a word.
        return Answer::Reply(Frame::error(
            frame.cmd,
            frame.req_id,
            &ApiError::new(
                ErrorCode::BadRequest,
                "clients send requests: this frame has the response flag set",
            ),
        ));
    }
    Answer::Reply(match frame.cmd {
        cmd::PING => frame.reply(bytes::Bytes::new()),
        cmd::AUTH => Frame::error(
            frame.cmd,
            frame.req_id,
            &ApiError::new(ErrorCode::Conflict, "already authenticated"),
        ),
        c if c >= cmd::FIRST_BUSINESS => {
            let started = std::time::Instant::now();
            // async_trait already boxes the call.
            let mut call = gw.upstream.handle(ctx, c, frame.body.clone());
            let result = loop {
                let done = poll_fn(|cx| {
                    if let Poll::Ready(r) = call.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    handle.out.register(cx.waker());
                    if handle.out.has_frames() || io.owes_reply() {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                match done {
                    Some(r) => break r,
                    None => {
                        if !write_queued(io, &handle.out).await {
                            return Answer::WriteFailed;
                        }
                    }
                }
            };
            metrics::histogram!("xinge_command_seconds", "cmd" => cmd::name(c))
                .record(started.elapsed().as_secs_f64());
            match result {
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
    })
}
