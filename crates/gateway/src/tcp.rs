//! The TCP transport: frames behind a 4-byte big-endian length prefix, in the clear or
//! under TLS.
//!
//! Reads are cancel-safe and hold no buffer while idle: the connection waits for
//! readiness, then reads what the kernel has into a stack buffer and keeps only the bytes
//! of an unfinished frame (usually none) on the heap. Under TLS the same, reading through
//! rustls (which keeps buffers of its own).

use crate::Gateway;
use crate::conn::{self, ReadError, Transport};
use crate::tls::Tls;
use bytes::{Buf, Bytes, BytesMut};
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
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

/// A whole frame from `partial`, if its bytes are all there; otherwise makes room for the
/// rest of the frame under way, so it is read straight into place.
fn take_frame(partial: &mut Option<Box<BytesMut>>, max: usize) -> Option<Result<Frame, ReadError>> {
    let mut p = partial.take()?;
    match frame_len(&p, max) {
        Err(e) => return Some(Err(e)),
        Ok(Some(len)) if p.len() >= len => {
            let mut body = p.split_to(len);
            body.advance(PREFIX_LEN);
            if !p.is_empty() {
                *partial = Some(p);
            }
            return Some(Frame::decode(body.freeze(), max).map_err(ReadError::Bad));
        }
        Ok(Some(len)) => p.reserve(len - p.len()),
        Ok(None) => {}
    }
    *partial = Some(p);
    None
}

/// Takes bytes just read (into a stack buffer): a frame if one is complete, the rest kept.
fn take_read(
    partial: &mut Option<Box<BytesMut>>,
    got: &[u8],
    max: usize,
) -> Option<Result<Frame, ReadError>> {
    match partial.as_deref_mut() {
        Some(p) => p.extend_from_slice(got),
        None => {
            // Usually a whole frame arrived: it takes no buffer but its own body.
            match frame_len(got, max) {
                Err(e) => return Some(Err(e)),
                Ok(Some(len)) if len <= got.len() => {
                    if len < got.len() {
                        *partial = Some(Box::new(BytesMut::from(&got[len..])));
                    }
                    let body = Bytes::copy_from_slice(&got[PREFIX_LEN..len]);
                    return Some(Frame::decode(body, max).map_err(ReadError::Bad));
                }
                Ok(_) => *partial = Some(Box::new(BytesMut::from(got))),
            }
        }
    }
    None
}

impl Transport for Tcp {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        let max = self.max;
        loop {
            if let Some(r) = take_frame(&mut self.partial, max) {
                return Poll::Ready(r);
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
            // `poll_read`, not `try_read`: a read that does not fill the chunk tells tokio the
            // socket is drained, so the next poll waits for readiness instead of making a
            // read that only finds the socket empty (one system call per frame).
            if let Some(r) = ready!(poll_chunk(&mut self.stream, &mut self.partial, max, cx)) {
                return Poll::Ready(r);
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        write_frames(&mut self.stream, frames).await
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

/// Reads what `r` has into a stack chunk (kept only as far as a frame is unfinished) and
/// takes a frame if one is complete; `Ready(None)`: nothing complete yet, read again.
fn poll_chunk<R: AsyncRead + Unpin>(
    r: &mut R,
    partial: &mut Option<Box<BytesMut>>,
    max: usize,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame, ReadError>>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut buf = ReadBuf::new(&mut chunk);
    if ready!(Pin::new(r).poll_read(cx, &mut buf)).is_err() {
        return Poll::Ready(Some(Err(ReadError::Gone)));
    }
    let got = buf.filled();
    if got.is_empty() {
        return Poll::Ready(Some(Err(ReadError::Gone)));
    }
    Poll::Ready(take_read(partial, got, max))
}

/// Writes `frames` in one write (one frame: its own encoding, no copy) and flushes.
async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Frame]) -> std::io::Result<()> {
    if let [one] = frames {
        w.write_all(&one.encode_prefixed()).await?;
    } else {
        let len = frames.iter().map(|f| 12 + f.body.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for f in frames {
            f.encode_prefixed_into(&mut buf);
        }
        w.write_all(&buf).await?;
    }
    // A no-op on a bare socket; under TLS it pushes out what rustls still holds.
    w.flush().await
}

/// The TCP transport under TLS. The stream is boxed: rustls' connection state is large, and
/// the session future stays as small as the plain transport's.
struct TlsTcp {
    stream: Box<TlsStream<TcpStream>>,
    partial: Option<Box<BytesMut>>,
    max: usize,
}

impl Transport for TlsTcp {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        let max = self.max;
        loop {
            if let Some(r) = take_frame(&mut self.partial, max) {
                return Poll::Ready(r);
            }
            if let Some(r) = ready!(poll_chunk(&mut *self.stream, &mut self.partial, max, cx)) {
                return Poll::Ready(r);
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        write_frames(&mut *self.stream, frames).await
    }

    async fn finish(&mut self) {
        // Sends TLS's close_notify, then ends the TCP stream.
        let _ = self.stream.shutdown().await;
    }
}

/// One connection to a TLS listener. The handshake runs here, in the connection's own
/// task, within the handshake deadline, and holding one of the gateway's connection
/// slots: clients that never finish a handshake are bounded in time and in number, as
/// ones that never authenticate are. A full gateway closes the connection before the
/// handshake (it cannot send a CLOSE frame without doing the handshake it refuses).
async fn serve_tls(gw: Arc<Gateway>, tls: Tls, stream: TcpStream) {
    let Ok(permit) = gw.slots.clone().try_acquire_owned() else {
        tracing::debug!("gateway full: tls connection closed before the handshake");
        return;
    };
    let Some(stream) = tls.accept(stream).await else {
        return;
    };
    let io = TlsTcp {
        stream: Box::new(stream),
        partial: None,
        max: gw.cfg.max_frame_bytes,
    };
    conn::serve_admitted(gw, io, None, permit).await;
}

/// Accepts TCP connections until `shutdown` fires; with `tls`, they speak TLS only.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<Tls>,
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
                match (&tls, gw.admit(peer.ip())) {
                    (None, admitted) => {
                        let io = Tcp {
                            stream,
                            partial: None,
                            max: gw.cfg.max_frame_bytes,
                        };
                        match admitted {
                            Ok(()) => {
                                tokio::spawn(conn::serve(gw.clone(), io, None));
                            }
                            // Told why and when to come back, as cheaply as possible (a
                            // flood is what this is for): one non-blocking write into the
                            // empty socket buffer, then closed — no task, no timer.
                            Err(e) => refuse_now(io.stream, &e),
                        }
                    }
                    (Some(tls), Ok(())) => {
                        tokio::spawn(serve_tls(gw.clone(), tls.clone(), stream));
                    }
                    // Under TLS the CLOSE frame would need the handshake that admission is
                    // there to spare: the connection is closed, and the client backs off.
                    (Some(_), Err(_)) => drop(stream),
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
        async fn authenticate(&self, _: &str) -> Result<xinge_core::auth::Authenticated, ApiError> {
            Err(ApiError::new(ErrorCode::Unauthenticated, "test"))
        }
    }

    #[async_trait::async_trait]
    impl Upstream for Nobody {
        async fn handle(&self, _: &SessionCtx, _: u16, _: Bytes) -> Result<Bytes, ApiError> {
            Ok(Bytes::new())
        }
    }

    /// The size of an idle session's future over `io`: what its task holds.
    fn session_size<T: Transport>(gw: &Arc<Gateway>, io: T) -> usize {
        let handle = Arc::new(ConnHandle {
            user: UserId(1),
            device: DeviceId::try_from("laptop".to_owned()).unwrap(),
            token: 1,
            token_expires: u32::MAX,
            out: SendQueue::new(8),
            last_seen: 0.into(),
            close_reason: Default::default(),
        });
        let ctx = SessionCtx {
            user: UserId(1),
            device: DeviceId::try_from("laptop".to_owned()).unwrap(),
            conn: ConnId(1),
            token: 1,
        };
        let permit = gw.slots.clone().try_acquire_owned().unwrap();
        std::mem::size_of_val(&conn::session(gw.clone(), io, handle, ctx, permit))
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
            Default::default(),
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
        let size = session_size(&gw, io);
        println!("idle TCP session future: {size} bytes");
        assert!(size <= 160, "the session future grew to {size} bytes");
    }

    /// The TLS transport boxes rustls' state, so its session future is no larger than the
    /// plain one's (its heap is another matter: docs/BENCHMARKS.md).
    #[tokio::test]
    async fn an_idle_tls_session_is_one_small_future() {
        use tokio_rustls::rustls;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = Tls::from_pem(
            ("cert", ck.cert.pem().as_bytes()),
            ("key", ck.signing_key.serialize_pem().as_bytes()),
            Duration::from_secs(5),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

        let push = Arc::new(xinge_push::Push::new(Default::default()));
        let gw = Gateway::new(
            GatewayId(1),
            Default::default(),
            Arc::new(Nobody),
            Arc::new(Nobody),
            push,
            Default::default(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = async {
            let s = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, s).await.unwrap()
        };
        let server = async {
            let (s, _) = listener.accept().await.unwrap();
            tls.accept(s).await.unwrap()
        };
        let (_client, stream) = tokio::join!(client, server);
        let io = TlsTcp {
            stream: Box::new(stream),
            partial: None,
            max: 1024,
        };
        let size = session_size(&gw, io);
        println!("idle TLS session future: {size} bytes");
        assert!(size <= 160, "the TLS session future grew to {size} bytes");
    }
}
