//! The distributed roles, one per process, so that each grows by adding machines of its
//! own kind: `xinge route`, `gateway`, `api` and `push`. They share no memory: data in PostgreSQL, sessions, presence and
//! gateway load in Redis, commands, deliveries and presence changes on NATS, signals on a
//! JetStream stream — all through `xinge_cluster`'s adapters behind the same traits
//! `xinge serve` fills in memory.

use crate::common::{Bound, Reporter, every};
use crate::serve::{ServeError, token_secret};
use async_nats::jetstream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use xinge_api::Dispatch;
use xinge_cluster::registry::{GatewaySessions, Registry};
use xinge_cluster::{Names, Redis, bus, engines, presence, push_worker, pushq};
use xinge_core::GatewayId;
use xinge_core::config::Config;
use xinge_gateway::Gateway;
use xinge_gateway::tls::Tls;
use xinge_logic::Logic;
use xinge_route::Route;
use xinge_store::pg::{PgOptions, PgStore};

/// Deliveries waiting for one gateway process's connections.
const GATEWAY_QUEUE: usize = 65_536;

struct Engines {
    names: Names,
    nats: async_nats::Client,
    registry: Arc<Registry>,
}

/// Connects a role to NATS and Redis (and installs the metrics recorder first, so what
/// the role records from its start is kept).
async fn engines(cfg: &Config, role: &str) -> Result<Engines, ServeError> {
    xinge_api::metrics_handle();
    let c = &cfg.cluster;
    let names = Names::new(&c.prefix);
    let nats = engines::nats(c, &format!("xinge-{role}-{}", cfg.server.node_id)).await?;
    let redis = Redis::connect(&c.redis_url).await?;
    let registry = Arc::new(Registry::new(
        redis,
        names.clone(),
        Duration::from_secs(c.session_ttl_secs),
    ));
    Ok(Engines {
        names,
        nats,
        registry,
    })
}

async fn serve_http(
    cfg: &Config,
    http: TcpListener,
    tls: Option<Tls>,
    app: axum::Router,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let limits = xinge_api::server::HttpLimits::from_config(&cfg.server);
    xinge_api::server::serve(http, app, limits, tls, shutdown).await;
    Ok(())
}

/// `xinge api`: the HTTP API and the IM layer on PostgreSQL; answers the gateways'
/// commands from the bus; signals through the push stream.
pub async fn run_api(
    cfg: Config,
    http: TcpListener,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let Some(pg) = PgOptions::from_config(&cfg) else {
        return Err(ServeError::Config(
            "xinge api keeps its data in PostgreSQL: set --postgres-url".into(),
        ));
    };
    if cfg.auth.token_secret.is_none() {
        return Err(ServeError::Config(
            "every api process must sign tokens with the same key: set auth.token_secret".into(),
        ));
    }
    let tls = Tls::from_config(&cfg.tls)?;
    let e = engines(&cfg, "api").await?;
    let store = Arc::new(PgStore::connect(&pg).await?);
    let js = jetstream::new(e.nats.clone());
    pushq::ensure_stream(&js, &e.names, &cfg.cluster).await?;
    presence::ensure_stream(&js, &e.names, &cfg.cluster).await?;
    let signals = pushq::StreamSignals::start(js.clone(), &e.names, e.registry.clone());
    let limiter = Arc::new(xinge_cluster::limits::SharedLimiter::new(
        e.registry.redis(),
        e.names.clone(),
        cfg.limits.clone(),
    ));
    let logic = Logic::with_limiter(store, signals, limiter, cfg.clone(), token_secret(&cfg)?)
        .map_err(ServeError::Config)?;
    let dispatch = Arc::new(Dispatch(logic.clone()));
    bus::serve_commands(
        e.nats.clone(),
        &e.names,
        dispatch.clone(),
        dispatch,
        cfg.cluster.max_inflight,
        shutdown.clone(),
    )
    .await?;
    {
        let logic = logic.clone();
        let run = presence::run(
            js,
            e.names.clone(),
            cfg.cluster.clone(),
            move |changes| {
                let logic = logic.clone();
                async move { logic.presence_changed(&changes).await }
            },
            shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = run.await {
                tracing::error!(error = %e, "presence changes are not taken");
            }
        });
    }
    tokio::spawn(logic.clone().run_group_signals());
    tokio::spawn(logic.clone().run_webhooks(shutdown.clone()));
    tokio::spawn(logic.clone().run_notify(shutdown.clone()));
    tokio::spawn(logic.clone().run_media_gc());
    let (admin_beside, _) =
        crate::common::start_admin(&cfg, &logic, tls.clone(), shutdown.clone()).await?;
    ready(http.local_addr()?);
    let app = match admin_beside {
        Some(admin) => xinge_api::api_with_admin(logic, admin),
        None => xinge_api::api_app(logic),
    };
    serve_http(&cfg, http, tls, app, shutdown).await
}

/// `xinge gateway`: TCP and WebSocket connections; commands up the bus, deliveries from its
/// own subject, sessions in the registry, load reports for the route service.
pub async fn run_gateway(
    cfg: Config,
    http: TcpListener,
    tcp: TcpListener,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    let tls = Tls::from_config(&cfg.tls)?;
    let e = engines(&cfg, "gateway").await?;
    let id = GatewayId(cfg.server.node_id);
    let refresh = Duration::from_secs(cfg.cluster.refresh_secs);
    let js = jetstream::new(e.nats.clone());
    presence::ensure_stream(&js, &e.names, &cfg.cluster).await?;
    let sessions = GatewaySessions::start(
        e.registry.clone(),
        presence::PresencePublisher::new(js, &e.names),
        refresh,
        shutdown.clone(),
    );
    let upstream = Arc::new(bus::NatsUpstream::new(e.nats.clone(), e.names.clone()));
    let gateway = Gateway::new(
        id,
        cfg.gateway.clone(),
        upstream.clone(),
        upstream,
        sessions,
        cfg.clock.clone(),
    );
    let deliveries = bus::deliveries(
        &e.nats,
        e.names.gateway(id),
        GATEWAY_QUEUE,
        cfg.gateway.max_frame_bytes,
    )
    .await?;
    gateway.start(deliveries, shutdown.clone());
    let bound = Bound {
        http: http.local_addr()?,
        tcp: tcp.local_addr()?,
        admin: None,
    };
    let reporter = Reporter::new(&cfg, bound);
    let (gw, registry) = (gateway.clone(), e.registry.clone());
    let reporter = Arc::new(reporter);
    every(refresh, shutdown.clone(), move || {
        let (gw, registry, reporter) = (gw.clone(), registry.clone(), reporter.clone());
        async move {
            if let Err(err) = registry
                .report_gateway(&reporter.now(&gw), refresh * 3)
                .await
            {
                tracing::warn!(error = %err, "gateway load report failed");
            }
        }
    });
    tokio::spawn(xinge_gateway::tcp::serve(
        gateway.clone(),
        tcp,
        tls.clone(),
        shutdown.clone(),
    ));
    ready(bound);
    serve_http(&cfg, http, tls, xinge_api::gateway_app(gateway), shutdown).await
}

/// `xinge push`: push events from the stream to the gateways that hold the users.
pub async fn run_push(
    cfg: Config,
    http: TcpListener,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let tls = Tls::from_config(&cfg.tls)?;
    let e = engines(&cfg, "push").await?;
    let js = jetstream::new(e.nats.clone());
    let worker = push_worker::run(
        js,
        e.nats.clone(),
        e.names.clone(),
        cfg.cluster.clone(),
        xinge_push::ThrottleConfig::from_limits(&cfg.limits),
        e.registry.clone(),
        shutdown.clone(),
    );
    let worker = tokio::spawn(async move {
        if let Err(err) = worker.await {
            tracing::error!(error = %err, "push worker stopped");
        }
    });
    ready(http.local_addr()?);
    serve_http(&cfg, http, tls, xinge_api::health_app(), shutdown).await?;
    let _ = worker.await;
    Ok(())
}

/// `xinge route`: ranks the gateways that reported to the registry recently.
pub async fn run_route(
    cfg: Config,
    http: TcpListener,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let tls = Tls::from_config(&cfg.tls)?;
    let e = engines(&cfg, "route").await?;
    let refresh = Duration::from_secs(cfg.cluster.refresh_secs);
    // A gateway that missed three reports is no longer offered.
    let route = Arc::new(Route::new(refresh.as_millis() as u64 * 3).with_admission(&cfg.route));
    let (r, registry) = (route.clone(), e.registry.clone());
    every(
        Duration::from_secs(1).min(refresh),
        shutdown.clone(),
        move || {
            let (r, registry) = (r.clone(), registry.clone());
            async move {
                match registry.gateways().await {
                    Ok(list) => list.into_iter().for_each(|g| r.report(g)),
                    Err(err) => tracing::warn!(error = %err, "cannot read gateway reports"),
                }
            }
        },
    );
    ready(http.local_addr()?);
    serve_http(&cfg, http, tls, xinge_api::route_app(route), shutdown).await
}
