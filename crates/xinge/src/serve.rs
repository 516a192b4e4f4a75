//! `xinge serve`: every role in one process — HTTP API and route service, WebSocket
//! gateway on the HTTP port (`/ws`), TCP gateway, in-process push and bus, embedded store.

use crate::common::{Reporter, every};
use base64::Engine;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use xinge_api::{AppState, Dispatch};
use xinge_core::GatewayId;
use xinge_core::config::Config;
use xinge_gateway::Gateway;
use xinge_gateway::tls::Tls;
use xinge_logic::Logic;
use xinge_push::{Push, PushConfig, ThrottleConfig};
use xinge_route::Route;

pub use crate::common::Bound;
use xinge_store::fjall::{FjallOptions, FjallStore};
use xinge_store::pg::{PgOptions, PgStore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] xinge_store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Cluster(#[from] xinge_cluster::ClusterError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tls(#[from] xinge_gateway::tls::TlsError),
}

/// Reads the token secret from the config, or from `<data_dir>/token.key`, creating it once.
pub(crate) fn token_secret(cfg: &Config) -> std::io::Result<Vec<u8>> {
    if let Some(s) = &cfg.auth.token_secret {
        return Ok(s.as_bytes().to_vec());
    }
    let path = cfg.server.data_dir.join("token.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_private(
                &path,
                &base64::engine::general_purpose::STANDARD.encode(key),
            )?;
            Ok(key.to_vec())
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Runs until `shutdown` becomes true. `ready` is called once everything listens.
pub async fn run(
    cfg: Config,
    http: TcpListener,
    tcp: TcpListener,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    xinge_api::metrics_handle();
    // First: a bad certificate stops the start before anything else is opened.
    let tls = Tls::from_config(&cfg.tls)?;
    let dir = &cfg.server.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        ServeError::Config(format!(
            "cannot create the data directory {}: {e}",
            dir.display()
        ))
    })?;
    let store: Arc<dyn xinge_store::Store> = match PgOptions::from_config(&cfg) {
        Some(opts) => Arc::new(PgStore::connect(&opts).await?),
        None => {
            let path = dir.join("store");
            let opts = FjallOptions {
                node_id: cfg.server.node_id,
                max_batch: cfg.store.max_batch,
                queue: cfg.store.queue,
                commit_interval: std::time::Duration::from_micros(cfg.store.commit_interval_us),
                cursor_flush: std::time::Duration::from_millis(cfg.store.cursor_flush_ms),
                memtable_bytes: cfg.store.memtable_mib << 20,
                cache_bytes: cfg.store.cache_mib << 20,
            };
            Arc::new(FjallStore::open(&path, opts).map_err(|e| store_unopened(&path, e))?)
        }
    };
    let secret = token_secret(&cfg)?;
    let push = Arc::new(Push::new(PushConfig {
        throttle: ThrottleConfig::from_limits(&cfg.limits),
        ..PushConfig::default()
    }));
    push.start();
    let logic =
        Logic::new(store.clone(), push.clone(), cfg.clone(), secret).map_err(ServeError::Config)?;
    let dispatch = Arc::new(Dispatch(logic.clone()));
    let gw_id = GatewayId(cfg.server.node_id);
    let deliveries = push.attach_gateway(gw_id);
    let presence = push.presence_changes();
    let gateway = Gateway::new(
        gw_id,
        cfg.gateway.clone(),
        dispatch.clone(),
        dispatch,
        push,
        cfg.clock.clone(),
    );
    gateway.start(deliveries, shutdown.clone());
    if let Some(presence) = presence {
        tokio::spawn(logic.clone().run_presence(presence));
    }
    tokio::spawn(logic.clone().run_group_signals());
    tokio::spawn(logic.clone().run_webhooks(shutdown.clone()));
    tokio::spawn(logic.clone().run_notify(shutdown.clone()));
    tokio::spawn(logic.clone().run_media_gc());

    let (admin_beside, admin) =
        crate::common::start_admin(&cfg, &logic, tls.clone(), shutdown.clone()).await?;
    let bound = Bound {
        http: http.local_addr()?,
        tcp: tcp.local_addr()?,
        admin,
    };
    let route = Arc::new(Route::new(15_000).with_admission(&cfg.route));
    spawn_self_report(
        &cfg,
        bound,
        gateway.clone(),
        route.clone(),
        shutdown.clone(),
    );

    tokio::spawn(xinge_gateway::tcp::serve(
        gateway.clone(),
        tcp,
        tls.clone(),
        shutdown.clone(),
    ));
    let state = AppState {
        logic,
        gateway,
        route,
    };
    let app = match admin_beside {
        Some(admin) => xinge_api::app_with_admin(state, admin),
        None => xinge_api::app(state),
    };
    let limits = xinge_api::server::HttpLimits::from_config(&cfg.server);
    tracing::info!(http = %bound.http, tcp = %bound.tcp, tls = tls.is_some(), "xinge ready");
    ready(bound);
    xinge_api::server::serve(http, app, limits, tls, shutdown).await;
    // What the store holds behind (read cursors moved by sending) is written, and what
    // the still open long connections send from here on is written with its commit.
    if let Err(e) = store.seal().await {
        tracing::warn!(error = %e, "sealing the store at shutdown failed");
    }
    Ok(())
}

/// Why the embedded store in `path` did not open, naming the path; when its lock file is
/// held, says so: another process (a second `xinge serve` on the same data directory) has
/// it open, and two writers would corrupt it.
fn store_unopened(path: &Path, e: xinge_store::StoreError) -> ServeError {
    let lock = path.join("lock");
    let held = std::fs::File::open(&lock)
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
    ServeError::Config(match held {
        true => format!(
            "cannot open the store in {}: another xinge process is using it (it holds {})",
            path.display(),
            lock.display()
        ),
        false => format!("cannot open the store in {}: {e}", path.display()),
    })
}

/// In one process the route service offers this process's own gateway; it reports like a
/// remote gateway would, so ranking and staleness work the same way.
fn spawn_self_report(
    cfg: &Config,
    bound: Bound,
    gw: Arc<Gateway>,
    route: Arc<Route>,
    shutdown: watch::Receiver<bool>,
) {
    let report = Reporter::new(cfg, bound);
    every(Duration::from_secs(5), shutdown, move || {
        route.report(report.now(&gw));
        std::future::ready(())
    });
}
