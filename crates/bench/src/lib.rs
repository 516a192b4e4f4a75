//! `xinge bench`: load generator. It starts (or attaches to) a server, creates users over
//! the HTTP API, drives them over real long connections through the client SDK, and
//! reports latency percentiles, throughput, lost/duplicated/out-of-order counts and the
//! server's CPU and memory as sampled from /proc.
//!
//! ```text
//! lib.rs     arguments and the scenario switch
//! server.rs  spawning the server under test (optionally pinned) and sampling /proc
//! setup.rs   users, tokens, friendships
//! idle.rs    N authenticated connections held: server memory per connection
//! direct.rs  1:1 traffic between pairs at an offered rate
//! report.rs  the result: markdown table, JSON file, SVG latency plot
//! ```

mod direct;
mod idle;
mod report;
mod server;
mod setup;

pub use report::BenchResult;

use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Base URL of a running server (e.g. http://127.0.0.1:8080); without it the bench
    /// starts its own `xinge serve` on a temporary data directory.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Process id of the server given with --server, to sample its CPU and memory.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// CPUs to pin a spawned server to (taskset list, e.g. "0"). Pin the bench itself with
    /// `taskset -c 1 xinge bench …`.
    #[arg(long, global = true)]
    pub server_cpus: Option<String>,
    /// Where the JSON result and the SVG plot go.
    #[arg(long, global = true, default_value = "bench-results")]
    pub out: PathBuf,
    /// `tcp` or `ws`.
    #[arg(long, global = true, default_value = "tcp")]
    pub transport: String,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Scenario {
    /// Hold N authenticated idle connections; report server memory per connection.
    Idle {
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
    /// 1:1 messages between pairs of online users at an offered rate.
    Direct {
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Offered messages per second (all senders together).
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Content bytes per message (besides the timing fields).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("server: {0}")]
    Server(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the run failed its checks: {0}")]
    Failed(String),
}

/// Runs one scenario and writes its results; an error if the run lost, duplicated or
/// reordered anything.
pub async fn run(args: BenchArgs) -> Result<BenchResult, BenchError> {
    let transport = match args.transport.as_str() {
        "tcp" => xinge_client::Transport::Tcp,
        "ws" => xinge_client::Transport::Ws,
        other => return Err(BenchError::Setup(format!("unknown transport {other}"))),
    };
    let srv = match &args.server {
        Some(url) => server::Server::attach(url.clone(), args.server_pid).await?,
        None => server::Server::spawn(args.server_cpus.as_deref()).await?,
    };
    let result = match args.scenario.clone() {
        Scenario::Idle {
            connections,
            hold_secs,
        } => idle::run(&srv, transport, connections, hold_secs).await?,
        Scenario::Direct {
            users,
            rate,
            duration_secs,
            size,
        } => direct::run(&srv, transport, users, rate, duration_secs, size).await?,
    };
    report::write(&args.out, &result)?;
    println!("{}", result.markdown());
    if let Some(problem) = result.failure() {
        return Err(BenchError::Failed(problem));
    }
    Ok(result)
}
