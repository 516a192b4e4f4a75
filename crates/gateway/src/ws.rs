//! The WebSocket transport, mounted by the HTTP server at `/ws`. A binary message is one
//! binary frame; a text message is one JSON text frame, and a connection that speaks text
//! is answered in text. The token may come as `?token=` or `Authorization: Bearer`.

use crate::Gateway;
use crate::conn::{self, ReadError, Transport};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, Stream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use xinge_proto::Frame;

struct Ws {
    inner: WebSocket,
    max: usize,
    /// The client speaks text frames; answer in text.
    text: bool,
}

impl Ws {
    fn message(&self, f: &Frame) -> Message {
        if self.text {
            Message::Text(f.encode_text().into())
        } else {
            Message::Binary(f.encode())
        }
    }
}

impl Transport for Ws {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        loop {
            let Poll::Ready(next) = Pin::new(&mut self.inner).poll_next(cx) else {
                return Poll::Pending;
            };
            return Poll::Ready(match next {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Err(ReadError::Gone),
                Some(Ok(Message::Binary(b))) => Frame::decode(b, self.max).map_err(ReadError::Bad),
                Some(Ok(Message::Text(t))) => {
                    self.text = true;
                    Frame::decode_text(t.as_str(), self.max).map_err(ReadError::Bad)
                }
                // Pings are answered by the WebSocket layer; both count as nothing here.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            });
        }
    }

    async fn write_frames(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        for f in frames {
            let msg = self.message(f);
            self.inner.feed(msg).await.map_err(std::io::Error::other)?;
        }
        self.inner.flush().await.map_err(std::io::Error::other)
    }

    async fn finish(&mut self) {
        let _ = self
            .inner
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "bye".into(),
            })))
            .await;
        let _ = self.inner.close().await;
    }
}

/// Upgrades the request. `text` asks for text mode from the start (`?mode=text`), so the
/// greeting of a connection authenticated at the upgrade is already JSON.
pub fn upgrade(
    gw: Arc<Gateway>,
    ws: WebSocketUpgrade,
    token: Option<String>,
    text: bool,
) -> Response {
    let max = gw.cfg.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // A small initial read buffer (it grows for a large frame): the default is 128 KiB
        // per connection, which an idle connection would hold forever.
        .read_buffer_size(256)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let io = Ws {
                inner: socket,
                max,
                text,
            };
            conn::serve(gw, io, token).await;
        })
}
