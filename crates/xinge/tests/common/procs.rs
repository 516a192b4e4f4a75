//! Real `xinge` processes: `xinge serve` on a data dir, and the distributed roles on the
//! engines (PostgreSQL, Redis, NATS JetStream) — started from the built binary, killed with
//! SIGKILL on demand, measured through `/metrics` and `/proc`.

use super::test_config;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xinge_client::Http;
use xinge_core::config::Config;

pub fn pg_url() -> String {
    std::env::var("XINGE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const NATS: &str = "nats://127.0.0.1:4222";

/// True if PostgreSQL, Redis and NATS answer; under CI their absence fails the test.
pub async fn engines_up(test: &str) -> bool {
    let mut missing = Vec::new();
    for (name, addr) in [
        ("PostgreSQL", "127.0.0.1:5432"),
        ("Redis", "127.0.0.1:6379"),
        ("NATS", "127.0.0.1:4222"),
    ] {
        let ok = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            missing.push(format!("{name} at {addr}"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("not reachable: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("the distributed tests require the engines under CI; {msg}");
    }
    eprintln!("SKIPPED {test}: {msg}; CI requires them (scripts/engines.sh starts them)");
    false
}

/// `cfg` as the TOML file a child process reads. `Config` is tables of scalars (and
/// nested tables), and JSON's scalars and arrays of scalars are TOML's, so this needs no
/// TOML writer.
pub fn config_toml(cfg: &Config) -> String {
    fn table(out: &mut String, path: &str, fields: &serde_json::Map<String, serde_json::Value>) {
        use serde_json::Value;
        *out += &format!("[{path}]\n");
        let nested = |v: &Value| v.is_object();
        for (key, v) in fields.iter().filter(|(_, v)| !nested(v)) {
            match v {
                Value::Null => {}
                Value::Array(a) if a.iter().any(|v| v.is_object() || v.is_array()) => {
                    panic!("config_toml: {path}.{key} is not an array of scalars")
                }
                v => *out += &format!("{key} = {v}\n"),
            }
        }
        for (key, v) in fields.iter().filter(|(_, v)| nested(v)) {
            table(out, &format!("{path}.{key}"), v.as_object().unwrap());
        }
    }
    let value = serde_json::to_value(cfg).unwrap();
    let mut out = String::new();
    for (section, fields) in value.as_object().unwrap() {
        table(&mut out, section, fields.as_object().unwrap());
    }
    out
}

/// The `xinge` binary as a command run in `cwd`, its ready line on a pipe.
pub fn xinge(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xinge"));
    // XINGE_TEST_LOG=debug shows every process's trace lines.
    cmd.env(
        "XINGE_LOG",
        std::env::var("XINGE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .current_dir(cwd)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// One `xinge` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub http: String,
    pub tcp: Option<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` (from [`xinge`]) and waits for its ready line,
    /// `xinge ready [role=R] http=ADDR [tcp=ADDR]`.
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd.spawn().expect("start xinge");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|p| p.strip_prefix(k))
                .map(str::to_owned)
        };
        let http = field("http=").unwrap_or_else(|| panic!("xinge did not start: {line:?}"));
        Self {
            child,
            http,
            tcp: field("tcp="),
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// The sum of a metric's samples (all label sets) from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

/// `xinge serve` with `cfg`, its store in `dir/data`, on the given addresses (port 0 picks).
pub fn serve(dir: &Path, cfg: &Config, http: &str, tcp: &str) -> Proc {
    let config = dir.join("xinge.toml");
    std::fs::write(&config, config_toml(cfg)).unwrap();
    Proc::start(
        xinge(dir)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--http-addr", http, "--tcp-addr", tcp]),
    )
}

/// A deployment of the distributed roles on the engines, with its own PostgreSQL schema and
/// NATS/Redis prefix so it shares them with other tests safely.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub schema: String,
    pub prefix: String,
    pub nats: String,
    pub redis: String,
}

impl Cluster {
    pub fn new() -> Self {
        Self::on(NATS, REDIS, |_| {})
    }

    /// On other engines; `tweak` adjusts the config every role reads.
    pub fn on(nats: &str, redis: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Tests run in parallel in one process: a counter keeps two clusters made in the
        // same millisecond from sharing a schema and a prefix (and each other's users).
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "{}{:x}n{}",
            std::process::id(),
            xinge_core::now_ms() & 0xff_ffff,
            MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (prefix, schema) = (format!("t{id}"), format!("xinge_cluster_{id}"));
        let mut cfg = test_config(dir.path());
        cfg.store.postgres_url = Some(pg_url());
        cfg.store.postgres_schema = schema.clone();
        cfg.store.postgres_pool = 4;
        cfg.gateway.heartbeat_timeout_secs = 10;
        let c = &mut cfg.cluster;
        c.nats_url = nats.into();
        c.redis_url = redis.into();
        c.prefix = prefix.clone();
        c.refresh_secs = 1;
        c.session_ttl_secs = 4;
        c.request_timeout_ms = 2000;
        c.push_ack_wait_ms = 1000;
        tweak(&mut cfg);
        let config = dir.path().join("xinge.toml");
        std::fs::write(&config, config_toml(&cfg)).unwrap();
        Self {
            dir,
            config,
            schema,
            prefix,
            nats: nats.to_owned(),
            redis: redis.to_owned(),
        }
    }

    pub fn spawn(&self, role: &str, node: u16) -> Proc {
        Proc::start(
            xinge(self.dir.path())
                .arg(role)
                .arg("--config")
                .arg(&self.config)
                .args(["--node-id", &node.to_string(), "--http-addr", "127.0.0.1:0"])
                .args(["--tcp-addr", "127.0.0.1:0"]),
        )
    }

    /// Leaves the shared engines as they were: the test's tables, push stream and Redis
    /// keys go (a rate-limit window under the tests' raised limits lasts hours). On an
    /// engine cluster of a test's own (several URLs), the keys go with the cluster.
    pub async fn clean_up(&self) {
        let servers: Vec<&str> = self.nats.split(',').collect();
        let nats = async_nats::connect(servers).await.unwrap();
        let names = xinge_cluster::Names::new(&self.prefix);
        let js = async_nats::jetstream::new(nats);
        for stream in [names.push_stream(), names.presence_stream()] {
            let _ = js.delete_stream(stream).await;
        }
        let store = xinge_store::pg::PgStore::connect(&xinge_store::pg::PgOptions {
            url: pg_url(),
            schema: self.schema.clone(),
            pool_size: 1,
            node_id: 9,
        })
        .await
        .unwrap();
        store.drop_schema(&self.schema).await.unwrap();
        if !self.redis.contains(',') {
            let redis = redis::Client::open(self.redis.as_str()).unwrap();
            let mut con = redis.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut con)
                .await
                .unwrap();
            for some in keys.chunks(1_000) {
                let () = redis::cmd("DEL")
                    .arg(some)
                    .query_async(&mut con)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Waits until the route service offers `n` gateways (over TCP).
pub async fn wait_gateways(route: &Proc, n: usize) {
    let http = Http::new(format!("http://{}", route.http));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = http.route().await.map(|r| r.gateways).unwrap_or_default();
        if list.iter().filter(|g| g.transport == "tcp").count() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "route never offered {n} gateways: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
