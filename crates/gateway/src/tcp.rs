//! The TCP transport: frames behind a 4-byte big-endian length prefix.
//!
//! Reads are cancel-safe and hold no buffer while idle: the connection waits for
//! readiness, then reads what the kernel has into a stack buffer and keeps only the bytes
//! of an unfinished frame (usually none) on the heap.

use crate::Gateway;
use crate::conn::{self, ReadError, Transport};
use bytes::{Buf, Bytes, BytesMut};
use std::io::ErrorKind;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use xinge_proto::Frame;
use xinge_proto::frame::PREFIX_LEN;

/// Bytes read per system call while no frame is under way (on the stack, not kept).
const READ_CHUNK: usize = 4096;

struct Tcp {
    stream: TcpStream,
    /// The bytes of frames not complete yet. Boxed: an idle connection holds 8 bytes here,
    /// not a `BytesMut`, and no allocation.
    partial: Option<Box<BytesMut>>,
    max: usize,
}

/// The length of the first frame in `buf`, prefix included, once its prefix is there.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ReadError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = Frame::check_prefix(u32::from_be_bytes(*prefix), max).map_err(ReadError::Bad)?;
    Ok(Some(PREFIX_LEN + len))
}

impl Transport for Tcp {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        let max = self.max;
        loop {
            if let Some(mut p) = self.partial.take() {
                match frame_len(&p, max)? {
                    Some(len) if p.len() >= len => {
                        let mut body = p.split_to(len);
                        body.advance(PREFIX_LEN);
                        if !p.is_empty() {
                            self.partial = Some(p);
                        }
                        return Poll::Ready(
                            Frame::decode(body.freeze(), max).map_err(ReadError::Bad),
                        );
                    }
                    // Room for the rest of the frame, so it is read straight into place.
                    Some(len) => p.reserve(len - p.len()),
                    None => {}
                }
                self.partial = Some(p);
            }
            if ready!(self.stream.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Err(ReadError::Gone));
            }
            if let Some(p) = self.partial.as_deref_mut()
                && p.capacity() - p.len() >= READ_CHUNK
            {
                // A large frame under way: straight into its buffer.
                match self.stream.try_read_buf(p) {
                    Ok(0) => return Poll::Ready(Err(ReadError::Gone)),
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(Err(ReadError::Gone)),
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = match self.stream.try_read(&mut chunk) {
                Ok(0) => return Poll::Ready(Err(ReadError::Gone)),
                Ok(n) => n,
                // The readiness was stale; `try_read` cleared it, so the next poll waits.
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(Err(ReadError::Gone)),
            };
            let got = &chunk[..n];
            match self.partial.as_deref_mut() {
                Some(p) => p.extend_from_slice(got),
                None => {
                    // Usually a whole frame arrived: it takes no buffer but its own body.
                    if let Some(len) = frame_len(got, max)?
                        && len <= n
                    {
                        if len < n {
                            self.partial = Some(Box::new(BytesMut::from(&got[len..])));
                        }
                        let body = Bytes::copy_from_slice(&got[PREFIX_LEN..len]);
                        return Poll::Ready(Frame::decode(body, max).map_err(ReadError::Bad));
                    }
                    self.partial = Some(Box::new(BytesMut::from(got)));
                }
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        if let [one] = frames {
            return self.stream.write_all(&one.encode_prefixed()).await;
        }
        let len = frames.iter().map(|f| 12 + f.body.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for f in frames {
            f.encode_prefixed_into(&mut buf);
        }
        self.stream.write_all(&buf).await
    }

    async fn finish(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Writes the close frame without waiting (the socket's buffer is empty, so it fits), ends
/// the sending side, and drops whatever the client already sent — closing a socket with
/// unread data would reset the connection and could destroy the frame before the client
/// reads it.
fn refuse_now(stream: TcpStream, e: &xinge_core::error::ApiError) {
    let _ = stream.try_write(&conn::close_frame(e).encode_prefixed());
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 1024];
        let _ = std::io::Read::read(&mut &s, &mut sink);
    }
}

/// Accepts TCP connections until `shutdown` fires.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let io = Tcp {
                    stream,
                    partial: None,
                    max: gw.cfg.max_frame_bytes,
                };
                match gw.admit(peer.ip()) {
                    Ok(()) => {
                        tokio::spawn(conn::serve(gw.clone(), io, None));
                    }
                    // Told why and when to come back, as cheaply as possible (a flood is
                    // what this is for): one non-blocking write into the empty socket
                    // buffer, then closed — no task, no timer.
                    Err(e) => refuse_now(io.stream, &e),
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authenticator, ConnHandle, SessionCtx, Upstream, queue::SendQueue};
    use bytes::Bytes;
    use xinge_core::error::ApiError;
    use xinge_core::{ConnId, DeviceId, ErrorCode, GatewayId, UserId};

    struct Nobody;

    #[async_trait::async_trait]
    impl Authenticator for Nobody {
        async fn authenticate(&self, _: &str) -> Result<(UserId, DeviceId), ApiError> {
            Err(ApiError::new(ErrorCode::Unauthenticated, "test"))
        }
    }

    #[async_trait::async_trait]
    impl Upstream for Nobody {
        async fn handle(&self, _: &SessionCtx, _: u16, _: Bytes) -> Result<Bytes, ApiError> {
            Ok(Bytes::new())
        }
    }

    /// An idle connection is one task; its future is most of what the connection costs
    /// (tokio rounds a task up to a multiple of 128 bytes, with ~96 bytes of its own).
    #[tokio::test]
    async fn an_idle_tcp_session_is_one_small_future() {
        let push = Arc::new(xinge_push::Push::new(Default::default()));
        let gw = Gateway::new(
            GatewayId(1),
            Default::default(),
            Arc::new(Nobody),
            Arc::new(Nobody),
            push,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let io = Tcp {
            stream,
            partial: None,
            max: 1024,
        };
        let handle = Arc::new(ConnHandle {
            user: UserId(1),
            out: SendQueue::new(8),
            last_seen: 0.into(),
            close_reason: Default::default(),
        });
        let ctx = SessionCtx {
            user: UserId(1),
            device: DeviceId::try_from("laptop".to_owned()).unwrap(),
            conn: ConnId(1),
        };
        let permit = gw.slots.clone().try_acquire_owned().unwrap();
        let session = conn::session(gw.clone(), io, handle, ctx, permit);
        let size = std::mem::size_of_val(&session);
        println!("idle TCP session future: {size} bytes");
        assert!(size <= 160, "the session future grew to {size} bytes");
    }
}
