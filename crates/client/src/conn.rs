//! One long connection. A reader task matches responses to requests by id and forwards
//! signals; a writer task drains the outgoing queue. When either ends, every pending
//! request fails with a transport error and `signals` ends.

use crate::tls::{Tls, host_of};
use crate::{ClientError, Result};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use xinge_core::error::ApiError;
use xinge_proto::api::{AuthOk, AuthRequest, InboxEntry, Signal};
use xinge_proto::{Frame, cmd};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>;

/// Locks a mutex of the SDK's, poisoned or not: each one guards a map or an `Option` that a
/// panicking holder cannot leave half-changed, so the next caller can go on using it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Connection {
    out: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU32,
    pub auth: AuthOk,
    /// Where it is connected: `host:port` (TCP) or the `ws://…` URL.
    pub address: String,
    /// Why the server closed the connection, once it has.
    pub close_reason: Arc<Mutex<Option<ApiError>>>,
    timeout: Duration,
}

const MAX_FRAME: usize = 16 * 1024 * 1024;

impl Connection {
    /// Connects and authenticates. `address` is `host:port` for TCP or a `ws://…` URL.
    /// Signals arrive on the returned receiver until the connection ends.
    pub async fn connect(
        transport: Transport,
        address: &str,
        token: &str,
    ) -> Result<(Self, mpsc::Receiver<Signal>)> {
        Self::connect_with(transport, address, token, None).await
    }

    /// [`Connection::connect`], over TLS when `tls` is given: TCP speaks TLS to `host:port`,
    /// and a `wss://` URL is trusted by `tls`'s roots (a `wss://` URL needs it).
    pub async fn connect_with(
        transport: Transport,
        address: &str,
        token: &str,
        tls: Option<&Tls>,
    ) -> Result<(Self, mpsc::Receiver<Signal>)> {
        let (out_tx, out_rx) = mpsc::channel::<Frame>(1024);
        let (in_tx, in_rx) = mpsc::channel::<Frame>(1024);
        let terr = |e: String| ClientError::Transport(e);
        match transport {
            Transport::Tcp => {
                let s = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(|e| terr(e.to_string()))?;
                let _ = s.set_nodelay(true);
                match tls {
                    None => {
                        let (r, w) = s.into_split();
                        tokio::spawn(tcp_write(w, out_rx));
                        tokio::spawn(tcp_read(r, in_tx));
                    }
                    Some(tls) => {
                        let s = tls.connect(host_of(address), s).await?;
                        let (r, w) = tokio::io::split(s);
                        tokio::spawn(tcp_write(w, out_rx));
                        tokio::spawn(tcp_read(r, in_tx));
                    }
                }
            }
            Transport::Ws if address.starts_with("wss://") => {
                let Some(tls) = tls else {
                    return Err(ClientError::Config(
                        "a wss:// address needs a Tls (its trusted roots)".into(),
                    ));
                };
                let request = address
                    .into_client_request()
                    .map_err(|e| terr(e.to_string()))?;
                let uri = request.uri();
                let host = uri.host().unwrap_or_default();
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host)
                    .to_owned();
                let port = uri.port_u16().unwrap_or(443);
                let s = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| terr(e.to_string()))?;
                let _ = s.set_nodelay(true);
                let s = tls.connect(&host, s).await?;
                let (ws, _) = tokio_tungstenite::client_async(request, s)
                    .await
                    .map_err(upgrade_error)?;
                let (sink, stream) = ws.split();
                tokio::spawn(ws_write(sink, out_rx));
                tokio::spawn(ws_read(stream, in_tx));
            }
            Transport::Ws => {
                let (ws, _) = tokio_tungstenite::connect_async(address)
                    .await
                    .map_err(upgrade_error)?;
                let (sink, stream) = ws.split();
                tokio::spawn(ws_write(sink, out_rx));
                tokio::spawn(ws_read(stream, in_tx));
            }
        }
        let pending: Pending = Default::default();
        let close_reason = Arc::new(Mutex::new(None));
        let (sig_tx, sig_rx) = mpsc::channel(4096);
        let (auth_tx, auth_rx) = oneshot::channel();
        tokio::spawn(route_incoming(
            in_rx,
            pending.clone(),
            sig_tx,
            close_reason.clone(),
            auth_tx,
        ));
        let body = serde_json::to_vec(&AuthRequest {
            token: token.into(),
            protocol: Some(xinge_proto::PROTOCOL_VERSION),
        })
        .unwrap_or_default();
        out_tx
            .send(Frame::request(cmd::AUTH, 1, body))
            .await
            .map_err(|_| terr("connection closed".into()))?;
        let reply = tokio::time::timeout(Duration::from_secs(10), auth_rx)
            .await
            .map_err(|_| terr("auth timed out".into()))?
            .map_err(|_| match lock(&close_reason).clone() {
                Some(e) => ClientError::Api(e),
                None => terr("connection closed during auth".into()),
            })?;
        let auth: AuthOk = decode_reply(&reply)?;
        Ok((
            Self {
                out: out_tx,
                pending,
                next_id: AtomicU32::new(2),
                auth,
                address: address.to_owned(),
                close_reason,
                timeout: Duration::from_secs(15),
            },
            sig_rx,
        ))
    }

    /// Sends a raw frame and waits for its answer.
    pub async fn request_raw(&self, command: u16, body: Bytes) -> Result<Frame> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let sent = self.out.send(Frame::request(command, id, body)).await;
        if sent.is_err() {
            lock(&self.pending).remove(&id);
            return Err(self.gone());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(_)) => Err(self.gone()),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ClientError::Transport("request timed out".into()))
            }
        }
    }

    pub async fn request<B: Serialize, R: DeserializeOwned>(
        &self,
        command: u16,
        body: &B,
    ) -> Result<R> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let reply = self.request_raw(command, body.into()).await?;
        decode_reply(&reply)
    }

    pub async fn ping(&self) -> Result<()> {
        self.request_raw(cmd::PING, Bytes::new()).await.map(drop)
    }

    pub fn is_closed(&self) -> bool {
        self.out.is_closed()
    }

    fn gone(&self) -> ClientError {
        match lock(&self.close_reason).clone() {
            Some(e) => ClientError::Api(e),
            None => ClientError::Transport("connection closed".into()),
        }
    }
}

/// A failed WebSocket upgrade. Refused before the upgrade (e.g. 429), the body is our error.
fn upgrade_error(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp
            .body()
            .as_deref()
            .and_then(|b| serde_json::from_slice::<ApiError>(b).ok())
            .map_or_else(
                || ClientError::Transport(format!("upgrade refused: {}", resp.status())),
                ClientError::Api,
            ),
        e => ClientError::Transport(e.to_string()),
    }
}

fn decode_reply<R: DeserializeOwned>(f: &Frame) -> Result<R> {
    if f.is_error() {
        let e: ApiError =
            serde_json::from_slice(&f.body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        return Err(ClientError::Api(e));
    }
    serde_json::from_slice(&f.body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The part of a send's answer that the reader looks at.
#[derive(serde::Deserialize)]
struct OwnEntry {
    #[serde(default)]
    entry: Option<Box<InboxEntry>>,
}

async fn route_incoming(
    mut rx: mpsc::Receiver<Frame>,
    pending: Pending,
    signals: mpsc::Sender<Signal>,
    close_reason: Arc<Mutex<Option<ApiError>>>,
    auth: oneshot::Sender<Frame>,
) {
    let mut auth = Some(auth);
    while let Some(f) = rx.recv().await {
        if f.cmd == cmd::AUTH && f.is_response() {
            if let Some(a) = auth.take() {
                let _ = a.send(f);
            }
        } else if f.is_response() {
            // The answer to a send made on this connection carries the sender's own inbox
            // entry in place of a signal for it: it joins the signals first, where it
            // belongs in order (PROTOCOL.md, "Sending").
            if (f.cmd == cmd::SEND || f.cmd == cmd::RECALL)
                && !f.is_error()
                && let Ok(OwnEntry { entry: Some(e) }) = serde_json::from_slice(&f.body)
            {
                let _ = signals
                    .send(Signal::Inbox {
                        seq: e.seq,
                        entry: Some(e),
                    })
                    .await;
            }
            if let Some(tx) = lock(&pending).remove(&f.req_id) {
                let _ = tx.send(f);
            }
        } else if f.cmd == cmd::SIGNAL {
            if let Ok(s) = serde_json::from_slice::<Signal>(&f.body)
                && signals.send(s).await.is_err()
            {
                // Nobody listens for signals; requests still work.
            }
        } else if f.cmd == cmd::CLOSE {
            *lock(&close_reason) = serde_json::from_slice(&f.body).ok();
        }
    }
    // Fail everything still waiting.
    lock(&pending).clear();
}

async fn tcp_write<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Frame>) {
    while let Some(f) = rx.recv().await {
        if w.write_all(&f.encode_prefixed()).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn tcp_read<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<Frame>) {
    loop {
        let Ok(len) = r.read_u32().await else { return };
        let Ok(len) = Frame::check_prefix(len, MAX_FRAME) else {
            return;
        };
        let mut buf = BytesMut::zeroed(len);
        if r.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(f) = Frame::decode(buf.freeze(), MAX_FRAME) else {
            return;
        };
        if tx.send(f).await.is_err() {
            return;
        }
    }
}

type WsStream<S> = tokio_tungstenite::WebSocketStream<S>;

async fn ws_write<S: AsyncRead + AsyncWrite + Unpin>(
    mut sink: futures_util::stream::SplitSink<WsStream<S>, Message>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(f) = rx.recv().await {
        if sink.send(Message::Binary(f.encode())).await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

async fn ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: futures_util::stream::SplitStream<WsStream<S>>,
    tx: mpsc::Sender<Frame>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        let f = match msg {
            Message::Binary(b) => Frame::decode(b, MAX_FRAME),
            Message::Text(t) => Frame::decode_text(t.as_str(), MAX_FRAME),
            Message::Close(_) => return,
            _ => continue,
        };
        let Ok(f) = f else { return };
        if tx.send(f).await.is_err() {
            return;
        }
    }
}
