//! xinge: the command line. Parses flags and hands over to the library.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use xinge_core::config::Config;

/// mimalloc instead of glibc's malloc: less server CPU per message (docs/ARCHITECTURE.md,
/// "Dependencies and why").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "xinge",
    version,
    about = "xinge (信鸽): a distributed instant-messaging server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every role in one process on the embedded store.
    Serve(ServeArgs),
    /// Run the route service (which gateway a client should use), reading gateway load
    /// reports from Redis.
    Route(RoleArgs),
    /// Run a long-connection gateway (TCP and WebSocket) on Redis and NATS.
    Gateway(RoleArgs),
    /// Run the HTTP API and the IM layer on PostgreSQL, Redis and NATS.
    Api(RoleArgs),
    /// Run a push worker: signals from the JetStream stream to the gateways holding users.
    Push(RoleArgs),
    /// Load-test a server (by default one it starts itself) and report the figures.
    Bench(xinge_bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (every field optional).
    #[arg(long, env = "XINGE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded store [default: ./data].
    #[arg(long, env = "XINGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API, route and WebSocket gateway address [default: 127.0.0.1:8080].
    #[arg(long, env = "XINGE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// TCP gateway address [default: 127.0.0.1:8090].
    #[arg(long, env = "XINGE_TCP_ADDR")]
    tcp_addr: Option<SocketAddr>,
    /// Keep data in PostgreSQL instead of the embedded store.
    #[arg(long, env = "XINGE_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// PEM certificate chain: with --tls-key, the HTTP (and WebSocket) and TCP ports
    /// speak TLS only.
    #[arg(long, env = "XINGE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "XINGE_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

/// One role of a distributed deployment. Every address defaults to the config file's.
#[derive(clap::Args)]
struct RoleArgs {
    /// TOML config file (every field optional).
    #[arg(long, env = "XINGE_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address (API, route, WebSocket, or health and metrics for push).
    #[arg(long, env = "XINGE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// TCP gateway address (gateway only).
    #[arg(long, env = "XINGE_TCP_ADDR")]
    tcp_addr: Option<SocketAddr>,
    /// This process's node id (0-1023), unique in the deployment: it names a gateway and
    /// keeps the ids a process makes apart from every other's.
    #[arg(long, env = "XINGE_NODE_ID")]
    node_id: Option<u16>,
    /// PostgreSQL (api only).
    #[arg(long, env = "XINGE_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// NATS server(s), comma-separated.
    #[arg(long, env = "XINGE_NATS_URL")]
    nats_url: Option<String>,
    /// Redis: one URL, or several comma-separated for a Redis Cluster.
    #[arg(long, env = "XINGE_REDIS_URL")]
    redis_url: Option<String>,
    /// PEM certificate chain: with --tls-key, the HTTP (and WebSocket) and TCP ports
    /// speak TLS only.
    #[arg(long, env = "XINGE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "XINGE_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

impl RoleArgs {
    fn config(self) -> Result<Config, Box<dyn std::error::Error>> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(a) = self.http_addr {
            cfg.server.http_addr = a;
        }
        if let Some(a) = self.tcp_addr {
            cfg.server.tcp_addr = a;
        }
        if let Some(n) = self.node_id {
            cfg.server.node_id = n;
        }
        if let Some(u) = self.postgres_url {
            cfg.store.postgres_url = Some(u);
        }
        if let Some(u) = self.nats_url {
            cfg.cluster.nats_url = u;
        }
        if let Some(u) = self.redis_url {
            cfg.cluster.redis_url = u;
        }
        if let Some(p) = self.tls_cert {
            cfg.tls.cert = Some(p);
        }
        if let Some(p) = self.tls_key {
            cfg.tls.key = Some(p);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A watch that turns true on Ctrl-C or SIGTERM.
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

async fn terminated() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn role(name: &str, args: RoleArgs) -> Result<(), Box<dyn std::error::Error>> {
    use xinge::roles;
    let cfg = args.config()?;
    let http = TcpListener::bind(cfg.server.http_addr).await?;
    let stop = shutdown_signal();
    // One machine-readable line on stdout, for scripts and tests that use port 0.
    match name {
        "gateway" => {
            let tcp = TcpListener::bind(cfg.server.tcp_addr).await?;
            roles::run_gateway(cfg, http, tcp, stop, |b| {
                println!("xinge ready role=gateway http={} tcp={}", b.http, b.tcp);
            })
            .await?
        }
        "api" => {
            roles::run_api(cfg, http, stop, |a| {
                println!("xinge ready role=api http={a}")
            })
            .await?
        }
        "push" => {
            roles::run_push(cfg, http, stop, |a| {
                println!("xinge ready role=push http={a}")
            })
            .await?
        }
        _ => {
            roles::run_route(cfg, http, stop, |a| {
                println!("xinge ready role=route http={a}")
            })
            .await?
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process. The allocator asks for them, and each
    // fresh 2 MiB page is zeroed in one page fault inside whatever allocation touched it
    // first: in `bench direct` that was the store writer, a few times a second, and the
    // writes waiting on it (p99 13-15 ms at 10,000 msgs/s with them, 6 ms without; same
    // CPU per message). Best effort: a kernel without the switch keeps its default.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XINGE_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_writer(std::io::stderr);
    // One JSON object per line for log collectors; key=value text otherwise.
    if std::env::var("XINGE_LOG_FORMAT").as_deref() == Ok("json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xinge: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Serve(args) => rt.block_on(serve(args)),
        Cmd::Route(args) => rt.block_on(role("route", args)),
        Cmd::Gateway(args) => rt.block_on(role("gateway", args)),
        Cmd::Api(args) => rt.block_on(role("api", args)),
        Cmd::Push(args) => rt.block_on(role("push", args)),
        Cmd::Bench(args) => {
            rt.block_on(async { xinge_bench::run(args).await.map(drop).map_err(Into::into) })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xinge: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        cfg.server.data_dir = d;
    }
    if let Some(a) = args.http_addr {
        cfg.server.http_addr = a;
    }
    if let Some(a) = args.tcp_addr {
        cfg.server.tcp_addr = a;
    }
    if let Some(u) = args.postgres_url {
        cfg.store.postgres_url = Some(u);
    }
    if let Some(p) = args.tls_cert {
        cfg.tls.cert = Some(p);
    }
    if let Some(p) = args.tls_key {
        cfg.tls.key = Some(p);
    }
    cfg.validate()?;
    let http = TcpListener::bind(cfg.server.http_addr).await?;
    let tcp = TcpListener::bind(cfg.server.tcp_addr).await?;
    xinge::serve::run(cfg, http, tcp, shutdown_signal(), |b| {
        // One machine-readable line on stdout, for scripts and tests that use port 0.
        println!("xinge ready http={} tcp={}", b.http, b.tcp);
    })
    .await?;
    Ok(())
}
