//! The TCP transport: frames behind a 4-byte big-endian length prefix.

use crate::Gateway;
use crate::conn::{self, FrameRead, FrameWrite, ReadError};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use xinge_proto::Frame;

struct Reader {
    inner: OwnedReadHalf,
    max: usize,
}

impl FrameRead for Reader {
    async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        let len = self.inner.read_u32().await.map_err(|_| ReadError::Gone)?;
        let len = Frame::check_prefix(len, self.max).map_err(ReadError::Bad)?;
        // The buffer lives only while a frame is being read: an idle connection holds none.
        let mut buf = BytesMut::zeroed(len);
        self.inner
            .read_exact(&mut buf)
            .await
            .map_err(|_| ReadError::Gone)?;
        Frame::decode(buf.freeze(), self.max).map_err(ReadError::Bad)
    }
}

struct Writer(OwnedWriteHalf);

impl FrameWrite for Writer {
    async fn write_frames(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        if let [one] = frames {
            return self.0.write_all(&one.encode_prefixed()).await;
        }
        let len = frames.iter().map(|f| 12 + f.body.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for f in frames {
            f.encode_prefixed_into(&mut buf);
        }
        self.0.write_all(&buf).await
    }
    async fn write_frame(&mut self, f: Frame) -> std::io::Result<()> {
        self.0.write_all(&f.encode_prefixed()).await
    }
    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
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
                let (r, w) = stream.into_split();
                let reader = Reader {
                    inner: r,
                    max: gw.cfg.max_frame_bytes,
                };
                tokio::spawn(conn::serve(gw.clone(), reader, Writer(w), None));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
