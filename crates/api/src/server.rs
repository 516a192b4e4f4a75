//! The HTTP accept loop every role serves its router with. axum's own `serve` keeps every
//! connection for as long as the peer likes; this one bounds them, because backpressure
//! belongs in the accept loop, before a connection costs anything:
//! - at most `max_connections` at once — past that it stops accepting, and new clients
//!   wait in the kernel's backlog instead of exhausting the process's files;
//! - a client has `header_timeout` to send a request's headers, also between requests on
//!   a kept-alive connection, so a slowloris or an idle connection is closed;
//! - on shutdown it stops accepting, lets requests in flight finish (upgraded WebSocket
//!   connections are the gateway's to close), and returns after at most 10 s;
//! - with TLS, each connection does its handshake in its own task, within the handshake
//!   deadline and holding its connection slot, so a client that never finishes one is cut
//!   off in time and never stalls the loop. WebSocket upgrades then run over TLS too.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tower::ServiceExt;
use xinge_gateway::tls::Tls;

#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(c: &xinge_core::config::ServerConfig) -> Self {
        Self {
            max_connections: c.max_http_connections,
            header_timeout: Duration::from_secs(c.header_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true; with `tls`, HTTPS only.
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Tls>,
    mut shutdown: watch::Receiver<bool>,
) {
    // HTTP/1.1 is all this server speaks; saying so lets a client that offers h2 settle.
    let tls = tls.map(|t| t.with_alpn(&[b"http/1.1"]));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection task holds a sender; when all are gone, all connections are.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of files or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = app
            .clone()
            .map_request(move |mut req: axum::extract::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let (alive, mut stop, tls) = (alive.clone(), shutdown.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(TokioIo::new(stream), svc, peer, limits, stop).await,
                // Boxed: rustls' state stays out of the plain connections' tasks.
                Some(tls) => {
                    Box::pin(async move {
                        let handshake = tokio::select! {
                            s = tls.accept(stream) => s,
                            _ = stopped(&mut stop) => None,
                        };
                        if let Some(s) = handshake {
                            connection(TokioIo::new(s), svc, peer, limits, stop).await;
                        }
                    })
                    .await
                }
            }
            drop((permit, alive));
        });
    }
    drop(listener);
    drop(alive);
    let _ = tokio::time::timeout(Duration::from_secs(10), all_done.recv()).await;
}

/// Serves one connection (in the clear or TLS) until it ends or the server shuts down.
async fn connection<I, S>(
    io: I,
    svc: S,
    peer: std::net::SocketAddr,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<
            axum::extract::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(svc))
        .with_upgrades();
    let mut conn = pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "http connection ended");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

/// Resolves once `shutdown` is true (without holding the watch's guard across an await).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
