//! xinge: the command line. Parses flags and hands over to the library.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use xinge_core::config::Config;

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
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XINGE_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
    cfg.validate()?;
    let http = TcpListener::bind(cfg.server.http_addr).await?;
    let tcp = TcpListener::bind(cfg.server.tcp_addr).await?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    xinge::serve::run(cfg, http, tcp, rx, |b| {
        // One machine-readable line on stdout, for scripts and tests that use port 0.
        println!("xinge ready http={} tcp={}", b.http, b.tcp);
    })
    .await?;
    Ok(())
}
