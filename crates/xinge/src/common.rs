//! What `xinge serve` and the distributed roles share: the addresses a server listens on,
//! the gateway's load report, and the periodic tasks they run.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
use xinge_core::config::Config;
use xinge_gateway::Gateway;
use xinge_route::GatewayReport;

/// The addresses a running server listens on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
}

/// Runs `work` now and then every `period` until `shutdown`.
pub(crate) fn every<F, Fut>(period: Duration, mut shutdown: watch::Receiver<bool>, mut work: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            work().await;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// What a gateway tells the route service about itself.
pub(crate) struct Reporter {
    region: String,
    zone: String,
    ws_url: String,
    tcp_addr: String,
}

impl Reporter {
    pub(crate) fn new(cfg: &Config, bound: Bound) -> Self {
        let host = |a: SocketAddr| match &cfg.server.public_host {
            Some(h) => format!("{h}:{}", a.port()),
            None => a.to_string(),
        };
        Self {
            region: cfg.server.region.clone(),
            zone: cfg.server.zone.clone(),
            // TLS covers both ports: `wss://`, and the TCP gateway speaks TLS too.
            ws_url: match cfg.tls.enabled() {
                true => format!("wss://{}/ws", host(bound.http)),
                false => format!("ws://{}/ws", host(bound.http)),
            },
            tcp_addr: host(bound.tcp),
        }
    }

    pub(crate) fn now(&self, gw: &Gateway) -> GatewayReport {
        GatewayReport {
            id: gw.id,
            region: self.region.clone(),
            zone: self.zone.clone(),
            ws_url: Some(self.ws_url.clone()),
            tcp_addr: Some(self.tcp_addr.clone()),
            connections: gw.connections(),
            at_ms: xinge_core::now_ms(),
        }
    }
}
