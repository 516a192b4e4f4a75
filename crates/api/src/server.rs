//! The HTTP accept loop every role serves its router with. axum's own `serve` keeps every
//! connection for as long as the peer likes; this one bounds them (STYLE.md 9: backpressure
//! lives in the accept loop):
//! - at most `max_connections` at once — past that it stops accepting, and new clients
//!   wait in the kernel's backlog instead of exhausting the process's files;
//! - a client has `header_timeout` to send a request's headers, also between requests on
//!   a kept-alive connection, so a slowloris or an idle connection is closed;
//! - on shutdown it stops accepting, lets requests in flight finish (upgraded WebSocket
//!   connections are the gateway's to close), and returns after at most 10 s.

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

/// Serves `app` on `listener` until `shutdown` turns true. Handlers see the peer's address
/// as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
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
        let (alive, mut stop) = (alive.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
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
            drop((permit, alive));
        });
    }
    drop(listener);
    drop(alive);
    let _ = tokio::time::timeout(Duration::from_secs(10), all_done.recv()).await;
}

/// Resolves once `shutdown` is true (without holding the watch's guard across an await).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
