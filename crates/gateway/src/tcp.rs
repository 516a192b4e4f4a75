//! The TCP transport: frames behind a 4-byte big-endian length prefix.
//!
//! Reads are cancel-safe and hold no buffer while idle: the connection waits for
//! readiness, then reads what the kernel has into a stack buffer and keeps only the bytes
//! of an unfinished frame (usually none) on the heap.

use crate::Gateway;
use crate::conn::{self, ReadError, Transport};
use bytes::{Buf, BytesMut};
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
    /// The bytes of frames not complete yet; no allocation when there are none.
    partial: BytesMut,
    max: usize,
}

impl Tcp {
    /// A complete frame from `partial`, if it holds one.
    fn parse(&mut self) -> Result<Option<Frame>, ReadError> {
        if self.partial.len() < PREFIX_LEN {
            return Ok(None);
        }
        let prefix = u32::from_be_bytes([
            self.partial[0],
            self.partial[1],
            self.partial[2],
            self.partial[3],
        ]);
        let len = Frame::check_prefix(prefix, self.max).map_err(ReadError::Bad)?;
        if self.partial.len() < PREFIX_LEN + len {
            // Room for the rest of the frame, so it is read straight into place.
            self.partial.reserve(PREFIX_LEN + len - self.partial.len());
            return Ok(None);
        }
        self.partial.advance(PREFIX_LEN);
        let body = self.partial.split_to(len).freeze();
        if self.partial.is_empty() {
            // Give the memory back: an idle connection holds no read buffer.
            self.partial = BytesMut::new();
        }
        Frame::decode(body, self.max)
            .map(Some)
            .map_err(ReadError::Bad)
    }
}

impl Transport for Tcp {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        loop {
            if let Some(f) = self.parse()? {
                return Poll::Ready(Ok(f));
            }
            if ready!(self.stream.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Err(ReadError::Gone));
            }
            let read = if self.partial.capacity() - self.partial.len() >= READ_CHUNK {
                // A large frame under way: straight into its buffer.
                self.stream.try_read_buf(&mut self.partial)
            } else {
                let mut chunk = [0u8; READ_CHUNK];
                let read = self.stream.try_read(&mut chunk);
                if let Ok(n) = read {
                    self.partial.extend_from_slice(&chunk[..n]);
                }
                read
            };
            match read {
                Ok(0) => return Poll::Ready(Err(ReadError::Gone)),
                Ok(_) => {}
                // The readiness was stale; `try_read` cleared it, so the next poll waits.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Err(ReadError::Gone)),
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
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let io = Tcp {
                    stream,
                    partial: BytesMut::new(),
                    max: gw.cfg.max_frame_bytes,
                };
                tokio::spawn(conn::serve(gw.clone(), io, None));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
