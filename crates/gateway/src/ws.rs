//! The WebSocket transport, mounted by the HTTP server at `/ws`. A binary message is one
//! binary frame; a text message is one JSON text frame, and a connection that speaks text
//! is answered in text. The token may come as `?token=` or `Authorization: Bearer`.
//!
//! The HTTP server does the handshake ([`WsUpgrade`] checks it, hyper hands over the
//! upgraded connection); after that the gateway reads and writes WebSocket frames itself,
//! with tungstenite's frame header codec, the way the TCP transport reads length-prefixed
//! frames: cancel-safe reads into a stack buffer, and on the heap only the bytes of an
//! unfinished frame. A WebSocket stream (tungstenite's context, axum's `WebSocket`) keeps a
//! read buffer, a write buffer and its codec state for as long as the connection lives;
//! an idle connection here holds none of them.

use crate::Gateway;
use crate::conn::{self, ReadError, Transport};
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::rt::{Read, ReadBuf, Write};
use hyper::upgrade::{OnUpgrade, Upgraded};
use std::future::poll_fn;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use xinge_proto::{Frame, FrameError};

/// Bytes read per system call (on the stack, not kept).
const READ_CHUNK: usize = 4096;
/// The largest payload of a control frame (RFC 6455, 5.5).
const MAX_CONTROL: u64 = 125;

/// A checked WebSocket upgrade request (HTTP/1.1, RFC 6455 section 4.2.1).
pub struct WsUpgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let bad = |why| Err((StatusCode::BAD_REQUEST, why));
        if parts.method != Method::GET {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            ));
        }
        if parts.version != Version::HTTP_11 {
            return bad("a WebSocket upgrade needs HTTP/1.1");
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return bad("Connection header does not include 'upgrade'");
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return bad("Upgrade header is not 'websocket'");
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return bad("Sec-WebSocket-Version must be 13");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return bad("Sec-WebSocket-Key is missing");
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept)
            .map_err(|_| (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key"))?;
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err((
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Self { accept, on_upgrade })
    }
}

/// A fragmented message under way (rare: clients send small messages whole).
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// What only a connection in the middle of something holds.
#[derive(Default)]
struct Busy {
    /// The bytes of frames not complete yet.
    partial: BytesMut,
    fragments: Option<Fragments>,
    /// Control frames owed to the peer (pong, close reply), encoded.
    owed: Vec<u8>,
}

impl Busy {
    fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.fragments.is_none() && self.owed.is_empty()
    }
}

/// `IO` is hyper's upgraded connection; [`decode`] runs the same parser with none.
struct Ws<IO = Upgraded> {
    io: IO,
    /// `None` while idle: an idle connection holds 8 bytes here and no allocation.
    busy: Option<Box<Busy>>,
    /// `max_frame_bytes` (a u32, like a TCP length prefix: with the two flags below the
    /// struct is 64 bytes, which keeps the session future within tokio's 256-byte cell).
    max: u32,
    /// The client speaks text frames; answer in text.
    text: bool,
    /// The peer sent its close frame: nothing more to read, no more data to send.
    peer_closed: bool,
}

fn put_header(out: &mut BytesMut, opcode: OpCode, len: usize) {
    let h = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    // Writing to memory cannot fail.
    let _ = h.format(len as u64, &mut out.writer());
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

impl<IO> Ws<IO> {
    fn busy(&mut self) -> &mut Busy {
        self.busy.get_or_insert_with(Default::default)
    }

    /// Gives the memory back once nothing is under way.
    fn settle(&mut self) {
        if self.busy.as_ref().is_some_and(|b| b.is_idle()) {
            self.busy = None;
        }
    }

    fn owe(&mut self, control: Control, payload: &[u8]) {
        let owed = &mut self.busy().owed;
        if control == Control::Pong {
            // Only the latest ping needs its pong (RFC 6455, 5.5.3).
            owed.clear();
        }
        let mut b = BytesMut::new();
        put_header(&mut b, OpCode::Control(control), payload.len());
        owed.extend_from_slice(&b);
        owed.extend_from_slice(payload);
    }

    /// A complete message from what has been read, if there is one; control frames are
    /// handled on the way. Protocol violations end the connection (`Gone`), as
    /// tungstenite's errors did.
    fn parse(&mut self) -> Result<Option<Frame>, ReadError> {
        let r = self.parse_busy();
        self.settle();
        r
    }

    fn parse_busy(&mut self) -> Result<Option<Frame>, ReadError> {
        let max = self.max as usize;
        loop {
            let Some(busy) = self.busy.as_deref_mut() else {
                return Ok(None);
            };
            let mut cursor = Cursor::new(&busy.partial[..]);
            let Some((h, len)) = FrameHeader::parse(&mut cursor).map_err(|_| ReadError::Gone)?
            else {
                return Ok(None);
            };
            let head = cursor.position() as usize;
            if len > max as u64 {
                return Err(ReadError::Bad(FrameError::TooLarge(len as usize)));
            }
            let len = len as usize;
            if busy.partial.len() < head + len {
                let more = head + len - busy.partial.len();
                busy.partial.reserve(more);
                return Ok(None);
            }
            // Clients must mask; no extension was negotiated, so no reserved bits.
            let Some(mask) = h.mask else {
                return Err(ReadError::Gone);
            };
            if h.rsv1 || h.rsv2 || h.rsv3 {
                return Err(ReadError::Gone);
            }
            busy.partial.advance(head);
            let mut payload = busy.partial.split_to(len);
            if busy.partial.is_empty() {
                busy.partial = BytesMut::new();
            }
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match h.opcode {
                OpCode::Control(c) => {
                    if !h.is_final || len as u64 > MAX_CONTROL {
                        return Err(ReadError::Gone);
                    }
                    match c {
                        Control::Ping => self.owe(Control::Pong, &payload),
                        Control::Pong => {}
                        Control::Close => {
                            // Answer with the peer's code (or "normal"), then end.
                            let code = match payload.first_chunk::<2>() {
                                Some(c) => u16::from_be_bytes(*c),
                                None => 1000,
                            };
                            self.owe(Control::Close, &close_payload(code, ""));
                            self.peer_closed = true;
                            return Err(ReadError::Gone);
                        }
                        Control::Reserved(_) => return Err(ReadError::Gone),
                    }
                }
                OpCode::Data(Data::Continue) => {
                    let Some(fr) = busy.fragments.as_mut() else {
                        return Err(ReadError::Gone);
                    };
                    if fr.data.len() + len > max {
                        return Err(ReadError::Bad(FrameError::TooLarge(fr.data.len() + len)));
                    }
                    fr.data.extend_from_slice(&payload);
                    if h.is_final
                        && let Some(fr) = busy.fragments.take()
                    {
                        return self.message(fr.text, fr.data.freeze()).map(Some);
                    }
                }
                OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                    if busy.fragments.is_some() {
                        return Err(ReadError::Gone);
                    }
                    let text = d == Data::Text;
                    if !h.is_final {
                        busy.fragments = Some(Fragments {
                            text,
                            data: payload,
                        });
                        continue;
                    }
                    return self.message(text, payload.freeze()).map(Some);
                }
                OpCode::Data(Data::Reserved(_)) => return Err(ReadError::Gone),
            }
        }
    }

    fn message(&mut self, text: bool, data: Bytes) -> Result<Frame, ReadError> {
        if !text {
            return Frame::decode(data, self.max as usize).map_err(ReadError::Bad);
        }
        self.text = true;
        let s = std::str::from_utf8(&data).map_err(|_| ReadError::Gone)?;
        Frame::decode_text(s, self.max as usize).map_err(ReadError::Bad)
    }

    fn take_owed(&mut self) -> Vec<u8> {
        let owed = self.busy.as_mut().map(|b| std::mem::take(&mut b.owed));
        self.settle();
        owed.unwrap_or_default()
    }

    /// Appends bytes read from the peer.
    fn received(&mut self, got: &[u8]) {
        self.busy().partial.extend_from_slice(got);
    }
}

impl Ws<Upgraded> {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut buf = buf;
        while !buf.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, buf)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await
    }
}

impl Transport for Ws {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        loop {
            if self.peer_closed {
                return Poll::Ready(Err(ReadError::Gone));
            }
            if let Some(f) = self.parse()? {
                return Poll::Ready(Ok(f));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            if ready!(Pin::new(&mut self.io).poll_read(cx, buf.unfilled())).is_err() {
                return Poll::Ready(Err(ReadError::Gone));
            }
            if buf.filled().is_empty() {
                return Poll::Ready(Err(ReadError::Gone));
            }
            self.received(buf.filled());
        }
    }

    fn owes_reply(&mut self) -> bool {
        self.busy.as_ref().is_some_and(|b| !b.owed.is_empty())
    }

    async fn write_frames(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        out.extend_from_slice(&self.take_owed());
        // After the peer's close frame, only the close reply may go out.
        if !self.peer_closed {
            for f in frames {
                if self.text {
                    let t = f.encode_text();
                    put_header(&mut out, OpCode::Data(Data::Text), t.len());
                    out.extend_from_slice(t.as_bytes());
                } else {
                    let b = f.encode();
                    put_header(&mut out, OpCode::Data(Data::Binary), b.len());
                    out.extend_from_slice(&b);
                }
            }
        }
        self.write_all(&out).await
    }

    async fn finish(&mut self) {
        if !self.peer_closed {
            self.owe(Control::Close, &close_payload(1000, "bye"));
        }
        let owed = self.take_owed();
        if self.write_all(&owed).await.is_ok() {
            let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        }
    }
}

/// What [`decode`] made of the bytes a client sent after the upgrade.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The messages, in order.
    pub frames: Vec<Frame>,
    /// Where reading stopped, if it did: `Some(None)` for a protocol violation or the peer's
    /// close (the connection just ends), `Some(Some(e))` for a message refused with a
    /// reason (too large, not a frame).
    pub end: Option<Option<FrameError>>,
    /// Control frames owed to the peer (pongs, the close reply), encoded.
    pub owed: Vec<u8>,
    /// The client spoke text: answers go in text.
    pub text: bool,
    /// Bytes held for a frame not complete yet (0 once reading stopped: the connection
    /// drops them).
    pub held: usize,
}

/// The connection's parser on `chunks` as if each arrived in one read, with
/// `max_frame_bytes` = `max`: the transport's own code, without a connection (for fuzzing
/// and tests). Reading stops at the first error, as the connection does.
pub fn decode(chunks: &[&[u8]], max: u32) -> Decoded {
    let mut ws = Ws {
        io: (),
        busy: None,
        max,
        text: false,
        peer_closed: false,
    };
    let mut out = Decoded::default();
    'read: for chunk in chunks {
        ws.received(chunk);
        loop {
            match ws.parse() {
                Ok(Some(f)) => out.frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    out.end = Some(match e {
                        ReadError::Gone => None,
                        ReadError::Bad(e) => Some(e),
                    });
                    break 'read;
                }
            }
        }
    }
    if out.end.is_none() {
        out.held = ws.busy.as_ref().map_or(0, |b| b.partial.len());
    }
    out.owed = ws.take_owed();
    out.text = ws.text;
    out
}

/// Answers the upgrade request and serves the connection once hyper hands it over.
/// `text` asks for text mode from the start (`?mode=text`), so the greeting of a
/// connection authenticated at the upgrade is already JSON.
pub fn upgrade(gw: Arc<Gateway>, up: WsUpgrade, token: Option<String>, text: bool) -> Response {
    let WsUpgrade { accept, on_upgrade } = up;
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let io = Ws {
            io,
            busy: None,
            max: u32::try_from(gw.cfg.max_frame_bytes).unwrap_or(u32::MAX),
            text,
            peer_closed: false,
        };
        conn::serve(gw, io, token).await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
        Body::empty(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame: FIN as given, `opcode`, masked with a fixed key.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126, "a short frame");
        let mask = [1, 2, 3, 4];
        let mut b = vec![u8::from(fin) << 7 | opcode, 0x80 | payload.len() as u8];
        b.extend_from_slice(&mask);
        b.extend(payload.iter().enumerate().map(|(i, p)| p ^ mask[i & 3]));
        b
    }

    #[test]
    fn decode_reads_messages_across_reads_and_fragments() {
        let ping = Frame::request(xinge_proto::cmd::PING, 7, Bytes::new());
        let whole = client(true, 2, &ping.encode());
        let (a, b) = whole.split_at(5);
        let d = decode(&[a, b], 1024);
        assert_eq!((d.frames, d.end, d.held), (vec![ping.clone()], None, 0));
        let d = decode(&[a], 1024);
        assert_eq!((d.frames.len(), d.held), (0, 5), "half a frame waits");

        let bytes = ping.encode();
        let mut two = client(false, 2, &bytes[..3]);
        two.extend(client(true, 9, b"hi")); // a ping between the fragments
        two.extend(client(true, 0, &bytes[3..]));
        let d = decode(&[&two], 1024);
        assert_eq!(d.frames, vec![ping]);
        assert_eq!(
            d.owed,
            [0x8a, 2, b'h', b'i'],
            "the pong carries the ping's payload"
        );

        let text = client(true, 1, br#"{"cmd":1,"id":2}"#);
        let d = decode(&[&text], 1024);
        assert!(d.text && d.frames.len() == 1 && d.end.is_none());
    }

    #[test]
    fn decode_stops_at_what_ends_a_connection() {
        let unmasked = [0x82, 0];
        assert_eq!(
            decode(&[&unmasked], 1024).end,
            Some(None),
            "clients must mask"
        );
        let close = client(true, 8, &1001u16.to_be_bytes());
        let d = decode(&[&close, &client(true, 9, b"")], 1024);
        assert_eq!(d.end, Some(None));
        assert_eq!(
            d.owed,
            [0x88, 2, 0x03, 0xe9],
            "the close is answered with its code"
        );
        let big = client(true, 2, &[0; 100]);
        assert_eq!(
            decode(&[&big], 99).end,
            Some(Some(FrameError::TooLarge(100)))
        );
        // Refused from its header, before its bytes arrive.
        assert_eq!(
            decode(&[&big[..6]], 99).end,
            Some(Some(FrameError::TooLarge(100)))
        );
        assert_eq!(
            decode(&[&client(true, 2, b"abc")], 99).end,
            Some(Some(FrameError::Truncated))
        );
        assert_eq!(
            decode(&[&client(true, 3, b"")], 99).end,
            Some(None),
            "a reserved opcode"
        );
        assert_eq!(
            decode(&[&client(true, 0, b"x")], 99).end,
            Some(None),
            "a continuation of nothing"
        );
    }

    /// The WebSocket transport is 8 bytes larger than the TCP one (hyper's upgraded stream
    /// is 48 bytes), so its session future still fits the cell the TCP test checks.
    #[test]
    fn the_websocket_transport_stays_small() {
        let size = std::mem::size_of::<super::Ws>();
        println!("Ws transport: {size} bytes");
        assert!(size <= 64, "the WebSocket transport grew to {size} bytes");
    }
}
