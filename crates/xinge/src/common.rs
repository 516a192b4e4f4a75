//! What `xinge serve` and the distributed roles share: the addresses a server listens on,
//! the gateway's load report, and the periodic tasks they run.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
use xinge_api::admin::{AdminKeys, AdminState};
use xinge_core::config::Config;
use xinge_gateway::Gateway;
use xinge_route::GatewayReport;

/// The addresses a running server listens on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    /// The admin API's own listener, when it has one.
    pub admin: Option<SocketAddr>,
}

/// The admin API of a process that holds the IM layer, as configured: off without keys;
/// on a listener of its own (started here, its address returned), or handed back to be
/// served beside the user API (`admin.on_main_listener`).
pub(crate) async fn start_admin(
    cfg: &Config,
    logic: &std::sync::Arc<xinge_logic::Logic>,
    tls: Option<xinge_gateway::tls::Tls>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Option<AdminState>, Option<SocketAddr>), crate::serve::ServeError> {
    let keys = AdminKeys::from_config(&cfg.admin)
        .map_err(|e| crate::serve::ServeError::Config(e.to_string()))?;
    if keys.is_empty() {
        tracing::info!("admin API off: no admin key configured");
        return Ok((None, None));
    }
    let state = AdminState {
        logic: logic.clone(),
        keys: std::sync::Arc::new(keys),
    };
    if cfg.admin.on_main_listener {
        return Ok((Some(state), None));
    }
    let listener = tokio::net::TcpListener::bind(cfg.admin.http_addr)
        .await
        .map_err(|e| {
            crate::serve::ServeError::Config(format!(
                "cannot listen for the admin API on {}: {e}",
                cfg.admin.http_addr
            ))
        })?;
    let addr = listener.local_addr()?;
    let limits = xinge_api::server::HttpLimits::from_config(&cfg.server);
    tokio::spawn(xinge_api::server::serve(
        listener,
        xinge_api::admin_app(state),
        limits,
        tls,
        shutdown,
    ));
    tracing::info!(%addr, "admin API listening");
    Ok((None, Some(addr)))
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
