//! The server under test: spawned from this same executable, or attached to by URL, and
//! sampled through /proc for CPU time and resident memory.

use crate::BenchError;
use crate::report::{DurableWrites, Handling};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub base: String,
    pub tcp: String,
    pub ws: String,
    pid: Option<u32>,
    child: Option<Child>,
    dir: Option<Dir>,
}

/// Where a spawned server keeps its config and data: a temporary directory, gone with the
/// run, or one kept between runs (`--data-dir`).
enum Dir {
    Temp(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl Dir {
    fn path(&self) -> &std::path::Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// The limits of a spawned server: raised out of the way (the bench measures what the
/// server can carry), or the defaults (the flood scenario measures them at work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limits {
    Raised,
    /// Raised, and users may write to strangers (a realistic run's contacts are not made
    /// friends first, and some of its messages start conversations with strangers).
    RaisedStrangers,
    Defaults,
}

/// CPU time and memory of a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_us: u64,
    pub rss_bytes: u64,
}

/// Linux reports CPU time in clock ticks; 100 per second on every mainstream build.
const CLK_TCK: u64 = 100;

impl Server {
    /// Starts `xinge serve` on a temporary data directory; `hook`: more TOML for its
    /// config (the before-send hook's sections).
    pub async fn spawn_with(
        cpus: Option<&str>,
        limits: Limits,
        hook: Option<&str>,
        kept: Option<&std::path::Path>,
    ) -> Result<Self, BenchError> {
        let dir = match kept {
            Some(p) => {
                std::fs::create_dir_all(p)?;
                Dir::Kept(p.to_owned())
            }
            None => Dir::Temp(tempfile::tempdir()?),
        };
        let config = dir.path().join("xinge.toml");
        // More of the spawned server's configuration, for A/B runs of a setting: TOML
        // sections other than those written below (e.g. "[store]\ncommit_interval_us = 3000").
        let extra = std::env::var("XINGE_BENCH_SERVER_TOML").unwrap_or_default()
            + "\n"
            + hook.unwrap_or("");
        if limits == Limits::Defaults {
            // The default limits, but for admission and new accounts per IP: every bench
            // user registers and connects from 127.0.0.1.
            std::fs::write(
                &config,
                format!(
                    "[auth]\nargon2_memory_kib = 256\nargon2_iterations = 1\n[gateway]\nmax_connections = 19500\n\
                 [limits]\nregistrations_per_ip_burst = 1000000.0\n\
                 [gateway.admission]\nper_ip_burst = 5000.0\n{extra}\n"
                ),
            )?;
            return Self::spawned(dir, cpus);
        }
        let strangers = match limits {
            Limits::RaisedStrangers => "[chat]\nallow_strangers = true\n",
            _ => "",
        };
        // Cheap password hashing keeps the setup of thousands of users short; it is not on
        // the message path being measured. Per-user limits are raised out of the way: the
        // bench measures what the server can carry, and its per-user rates (20/s at
        // 20,000/s over 1,000 users) sit at the default send limit.
        std::fs::write(
            &config,
            format!(
                "[auth]\nargon2_memory_kib = 256\nargon2_iterations = 1\n[gateway]\nmax_connections = 19500\n\
             [limits]\nsends_per_sec = 1000000.0\nsends_burst = 1000000.0\n\
             pulls_per_sec = 1000000.0\npulls_burst = 1000000.0\n\
             registrations_per_ip_burst = 1000000.0\n\
             uploads_per_sec = 1000000.0\nuploads_burst = 1000000.0\n\
             [gateway.admission]\nper_ip_per_sec = 1000000.0\nper_ip_burst = 1000000.0\n{strangers}{extra}\n"
            ),
        )?;
        Self::spawned(dir, cpus)
    }

    fn spawned(dir: Dir, cpus: Option<&str>) -> Result<Self, BenchError> {
        let mut srv = Self {
            base: String::new(),
            tcp: String::new(),
            ws: String::new(),
            pid: None,
            child: None,
            dir: Some(dir),
        };
        srv.start(cpus)?;
        Ok(srv)
    }

    /// Stops a spawned server and starts it again on the same data: its memory is then a
    /// fresh baseline (the heap that setting up users grew stays with a process and would
    /// hide what connections cost). Users and tokens survive; addresses change.
    pub async fn restart(&mut self, cpus: Option<&str>) -> Result<(), BenchError> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.start(cpus)?;
        }
        Ok(())
    }

    fn start(&mut self, cpus: Option<&str>) -> Result<(), BenchError> {
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| BenchError::Server("not a spawned server".into()))?
            .path()
            .to_owned();
        let exe = std::env::current_exe()?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(exe);
                t
            }
            None => Command::new(exe),
        };
        cmd.args(["serve", "--config"])
            .arg(dir.join("xinge.toml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--http-addr", "127.0.0.1:0", "--tcp-addr", "127.0.0.1:0"])
            .env("XINGE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Server(format!("cannot start xinge serve: {e}")))?;
        let mut line = String::new();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Server("no stdout".into()))?;
        BufReader::new(stdout).read_line(&mut line)?;
        let mut parts = line.split_whitespace().skip(2);
        let http = parts
            .next()
            .and_then(|p| p.strip_prefix("http="))
            .map(str::to_owned);
        let tcp = parts
            .next()
            .and_then(|p| p.strip_prefix("tcp="))
            .map(str::to_owned);
        let (Some(http), Some(tcp)) = (http, tcp) else {
            return Err(BenchError::Server(format!(
                "unexpected first line: {line:?}"
            )));
        };
        // With taskset, the child is taskset, which execs into xinge: same pid.
        self.pid = Some(child.id());
        self.base = format!("http://{http}");
        self.ws = format!("ws://{http}/ws");
        self.tcp = tcp;
        self.child = Some(child);
        Ok(())
    }

    /// A server known only by its addresses (a worker of a multi-process run).
    pub fn addresses(base: String, tcp: String, ws: String, pid: Option<u32>) -> Self {
        Self {
            base,
            tcp,
            ws,
            pid,
            child: None,
            dir: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// A running server at `base` (accounts and HTTP calls), whose gateways the route
    /// service at `route` names (the same URL for `xinge serve`).
    pub async fn attach(base: String, route: &str, pid: Option<u32>) -> Result<Self, BenchError> {
        let route = xinge_client::Http::new(route)
            .route()
            .await
            .map_err(|e| BenchError::Server(format!("{route}: {e}")))?;
        let find = |t: &str| {
            route
                .gateways
                .iter()
                .find(|g| g.transport == t)
                .map(|g| g.address.clone())
        };
        Ok(Self {
            tcp: find("tcp").unwrap_or_default(),
            ws: find("ws").unwrap_or_default(),
            base,
            pid,
            child: None,
            dir: None,
        })
    }

    /// The server's counters that a run reports the difference of: the embedded store's
    /// durable writes (see [`DurableWrites`]; None for the distributed roles) and its own
    /// send handling times (empty until its first send). Both None without an answer.
    pub async fn counters(&self) -> (Option<DurableWrites>, Option<Handling>) {
        let get = async {
            let r = reqwest::get(format!("{}/metrics", self.base)).await.ok()?;
            r.text().await.ok()
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), get).await {
            Ok(Some(text)) => (
                DurableWrites::parse(&text),
                Some(Handling::parse(&text, "send").unwrap_or_default()),
            ),
            _ => (None, None),
        }
    }

    pub fn sample(&self) -> Option<ProcSample> {
        let pid = self.pid?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start at ") ".
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcSample {
            cpu_us: ticks * 1_000_000 / CLK_TCK,
            rss_bytes: rss_kb * 1024,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
