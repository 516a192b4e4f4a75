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
    /// Make an admin API key: prints the key (for the app's server) and its config entry
    /// (for `[admin] keys` or XINGE_ADMIN_KEYS), which holds only the key's hash.
    AdminKey {
        /// The key's name, written in the log of every admin action it takes.
        name: String,
    },
}

/// What every subcommand that runs a server reads: the config file and the flags that
/// override its fields. Every address defaults to the config file's.
#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML config file (every field optional).
    #[arg(long, env = "XINGE_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address: API, route and WebSocket gateway (`serve`, `api`, `route`,
    /// `gateway`), health and metrics (`push`) [default: 127.0.0.1:8080].
    #[arg(long, env = "XINGE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// TCP gateway address (`serve` and `gateway`) [default: 127.0.0.1:8090].
    #[arg(long, env = "XINGE_TCP_ADDR")]
    tcp_addr: Option<SocketAddr>,
    /// Keep data in PostgreSQL (`api` must; `serve` may, instead of the embedded store).
    #[arg(long, env = "XINGE_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// PEM certificate chain: with --tls-key, the HTTP (and WebSocket) and TCP ports
    /// speak TLS only.
    #[arg(long, env = "XINGE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "XINGE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Admin API keys as NAME:SHA256, comma-separated (`xinge admin-key NAME` makes
    /// one), added to the config file's `[admin] keys`.
    #[arg(long, env = "XINGE_ADMIN_KEYS", value_delimiter = ',')]
    admin_keys: Vec<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Data directory of the embedded store [default: ./data].
    #[arg(long, env = "XINGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// One role of a distributed deployment.
#[derive(clap::Args)]
struct RoleArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// This process's node id (0-1023), unique in the deployment: it names a gateway and
    /// keeps the ids a process makes apart from every other's.
    #[arg(long, env = "XINGE_NODE_ID")]
    node_id: Option<u16>,
    /// NATS server(s), comma-separated.
    #[arg(long, env = "XINGE_NATS_URL")]
    nats_url: Option<String>,
    /// Redis: one URL, or several comma-separated for a Redis Cluster.
    #[arg(long, env = "XINGE_REDIS_URL")]
    redis_url: Option<String>,
}

/// A flag that was given replaces the config file's value.
fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *field = v;
    }
}

impl ConfigArgs {
    /// The config file with these flags applied, then `more` (a subcommand's own flags),
    /// validated once everything is in.
    fn load(self, more: impl FnOnce(&mut Config)) -> Result<Config, Box<dyn std::error::Error>> {
        let mut cfg = Config::load(self.config.as_deref())?;
        set(&mut cfg.server.http_addr, self.http_addr);
        set(&mut cfg.server.tcp_addr, self.tcp_addr);
        set(&mut cfg.store.postgres_url, self.postgres_url.map(Some));
        set(&mut cfg.tls.cert, self.tls_cert.map(Some));
        set(&mut cfg.tls.key, self.tls_key.map(Some));
        cfg.admin.keys.extend(self.admin_keys);
        more(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }
}

impl ServeArgs {
    fn config(self) -> Result<Config, Box<dyn std::error::Error>> {
        let data_dir = self.data_dir;
        self.common
            .load(|cfg| set(&mut cfg.server.data_dir, data_dir))
    }
}

impl RoleArgs {
    fn config(self) -> Result<Config, Box<dyn std::error::Error>> {
        let Self {
            common,
            node_id,
            nats_url,
            redis_url,
        } = self;
        common.load(|cfg| {
            set(&mut cfg.server.node_id, node_id);
            set(&mut cfg.cluster.nats_url, nats_url);
            set(&mut cfg.cluster.redis_url, redis_url);
        })
    }
}

/// Binds `addr`, or says which address could not be had and why.
async fn listen(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address in use (is another xinge running?)".into(),
            std::io::ErrorKind::AddrNotAvailable => "no such address on this machine".into(),
            std::io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => e.to_string(),
        };
        format!("cannot listen on {addr}: {why}")
    })
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
    let http = listen(cfg.server.http_addr).await?;
    let stop = shutdown_signal();
    // One machine-readable line on stdout, for scripts and tests that use port 0.
    let ready = |a| println!("xinge ready role={name} http={a}");
    match name {
        "gateway" => {
            let tcp = listen(cfg.server.tcp_addr).await?;
            roles::run_gateway(cfg, http, tcp, stop, |b| {
                println!("xinge ready role=gateway http={} tcp={}", b.http, b.tcp);
            })
            .await?
        }
        "api" => roles::run_api(cfg, http, stop, ready).await?,
        "push" => roles::run_push(cfg, http, stop, ready).await?,
        _ => roles::run_route(cfg, http, stop, ready).await?,
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
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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
        Cmd::AdminKey { name } => admin_key(&name),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xinge: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn admin_key(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    if name.is_empty() || name.contains([':', ',']) {
        return Err("the key's name must be non-empty, without ':' or ','".into());
    }
    let (key, entry) = xinge_api::admin::new_key(name);
    println!("key:    {key}");
    println!("config: {entry}");
    eprintln!(
        "Give the key to the app's server (Authorization: Bearer <key>); it is kept nowhere else.\n\
         Put the config line in [admin] keys = [\"...\"] or XINGE_ADMIN_KEYS."
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = args.config()?;
    let http = listen(cfg.server.http_addr).await?;
    let tcp = listen(cfg.server.tcp_addr).await?;
    xinge::serve::run(cfg, http, tcp, shutdown_signal(), |b| {
        // One machine-readable line on stdout, for scripts and tests that use port 0.
        match b.admin {
            Some(admin) => println!("xinge ready http={} tcp={} admin={admin}", b.http, b.tcp),
            None => println!("xinge ready http={} tcp={}", b.http, b.tcp),
        }
    })
    .await?;
    Ok(())
}
