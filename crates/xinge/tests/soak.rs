//! The chaos soak: thousands of devices in steady 1:1 and small-group traffic while their
//! connections drop at once, storm after storm, and everyone reconnects with jitter.
//!
//! - `xinge serve` (embedded store, a child process): storms 1 and 2 drop every connection
//!   at the SDK at once; storm 3 kills the server with SIGKILL and restarts it on the same
//!   data and ports.
//! - The distributed roles on the engines (route, 2 gateways, 2 api, 2 push): storm 1 kills
//!   the busier gateway with SIGKILL — its clients reconnect through the route to the
//!   other one, then it is restarted; an api and then a push process are killed during the
//!   traffic that follows; storms 2 and 3 drop every connection at the SDK.
//!
//! At the end the delivery checker proves that every device has every acknowledged message
//! of its conversations exactly once and in order (its inbox without gap or repeat), and
//! that the store has each one at the conv_seq it was acknowledged with. After each storm,
//! once the devices are back, the connection gauges must add up to N again; after some
//! steady traffic the servers' RSS is measured and must not grow from storm to storm (see
//! `MEMORY`).
//!
//! Bounded by environment variables: `XINGE_SOAK_SECS` (steady traffic in all, spread over
//! the warm-up and the time after each storm; default 24), `XINGE_SOAK_STORMS` (default
//! 3), `XINGE_SOAK_KILL_EVERY` (every how many storms one is a kill; default 3),
//! `XINGE_SOAK_DEVICES` (connections, two devices per user; default 2,000 for `xinge
//! serve`, 1,000 for the roles), `XINGE_SOAK_RATE` (messages per second; default 40). Run
//! with `--nocapture` for the summary. The two tests take turns (one lock), so that their
//! timings and memory figures do not disturb each other. docs/RELIABILITY.md has figures.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::delivery::{Acked, Seen, assert_stored};
use common::procs::{Cluster, NATS, Proc, REDIS, config_toml, engines_up, wait_gateways, xinge};
use common::{PASSWORD, test_config};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xinge_client::api::SendRequest;
use xinge_client::{Device, DeviceOptions, Http, Transport};
use xinge_core::config::Config;
use xinge_core::{ConvId, MsgId, UserId};

/// One soak at a time: both hold thousands of connections and measure memory.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How much a server's RSS may exceed its level after the first storm it lived through
/// (a process restarted in a storm counts from the next one), at every later storm: 10 %
/// plus 8 MiB. glibc keeps freed heap, so RSS does not fall back to the warm-up level after
/// a storm's peak, and it creeps up slowly as allocations wander over arenas it already
/// holds (docs/RELIABILITY.md shows malloc's own figures: in use flat, arenas flat); the
/// embedded store's memtables also grow with the messages written. So the sound check is
/// no growth per storm: a leak of 1 KiB per reconnection (2 MiB per storm of 2,000) fails
/// it within a handful of storms, one of 4 KiB at the second.
const MEMORY: (f64, u64) = (0.10, 8 * 1024);

/// Most time everyone has to reconnect after a storm.
const RECONNECT_BOUND: Duration = Duration::from_secs(120);

struct Params {
    secs: u64,
    storms: usize,
    kill_every: usize,
    devices: usize,
    rate: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env(default_devices: usize) -> Self {
        let p = Self {
            secs: env_or("XINGE_SOAK_SECS", 24),
            storms: env_or("XINGE_SOAK_STORMS", 3),
            kill_every: env_or("XINGE_SOAK_KILL_EVERY", 3),
            // Two devices per user, users in fives (a group, two pairs and one more pair
            // member): a multiple of 10.
            devices: env_or("XINGE_SOAK_DEVICES", default_devices) / 10 * 10,
            rate: env_or("XINGE_SOAK_RATE", 40.0),
        };
        assert!(p.devices >= 10 && p.storms >= 2 && p.kill_every >= 1 && p.rate > 0.0);
        p
    }

    /// Steady traffic before the first storm and after each one.
    fn period(&self) -> Duration {
        Duration::from_secs_f64(self.secs as f64 / (self.storms + 1) as f64)
    }
}

/// What every soak config changes: strangers may chat (no friendships to set up), and the
/// heartbeat is long enough that the devices' heartbeat pulls (every timeout / 3) are not
/// the load.
fn soak_config(cfg: &mut Config) {
    cfg.chat.allow_strangers = true;
    cfg.gateway.heartbeat_timeout_secs = 60;
}

// === the population ===

/// Users in fives: a group of all five, pairs (0,1), (2,3), (4, next five's 0)… — every
/// user in one group and at least one 1:1 conversation; two devices per user.
struct Population {
    users: Vec<UserId>,
    /// Per user: where they send (a peer or a group).
    targets: Vec<Vec<SendRequest>>,
    /// Per user: the conversations they are in.
    convs: Vec<Vec<ConvId>>,
    /// Per conversation: a client that may read all of it.
    readers: HashMap<ConvId, Http>,
    /// (user index, device), two per user.
    devices: Vec<(usize, Arc<Device>)>,
}

impl Population {
    /// Registers `n / 2` users through `api`, logs each in on two devices, creates the
    /// groups, and starts the devices (`opts` per user index and device number).
    async fn create(api: &str, n: usize, opts: impl Fn(usize, usize) -> DeviceOptions) -> Self {
        let anon = Http::new(api);
        let run = std::process::id();
        let logins: Vec<(UserId, Http, Http)> = futures_util::stream::iter(0..n / 2)
            .map(|i| {
                let anon = anon.clone();
                async move {
                    let name = format!("s{run}u{i}");
                    anon.register(&name, PASSWORD).await.unwrap();
                    let (phone, r) = anon.login(&name, PASSWORD, "phone").await.unwrap();
                    let (laptop, _) = anon.login(&name, PASSWORD, "laptop").await.unwrap();
                    (r.user_id, phone, laptop)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let users: Vec<UserId> = logins.iter().map(|l| l.0).collect();
        let mut targets = vec![Vec::new(); users.len()];
        let mut convs = vec![Vec::new(); users.len()];
        let mut readers = HashMap::new();
        for a in (0..users.len()).step_by(2) {
            let b = (a + 1) % users.len();
            let conv = ConvId::direct(users[a], users[b]);
            for (me, peer) in [(a, b), (b, a)] {
                targets[me].push(SendRequest {
                    to: Some(users[peer]),
                    ..Default::default()
                });
                convs[me].push(conv);
            }
            readers.insert(conv, logins[a].1.clone());
        }
        let groups: Vec<(usize, ConvId)> = futures_util::stream::iter((0..users.len()).step_by(5))
            .map(|owner| {
                let (http, members) = (logins[owner].1.clone(), &users[owner + 1..owner + 5]);
                async move {
                    let g = http.create_group(&format!("g{owner}"), members).await;
                    (owner, g.unwrap().conv)
                }
            })
            .buffered(16)
            .collect()
            .await;
        for (owner, conv) in groups {
            for u in owner..owner + 5 {
                targets[u].push(SendRequest {
                    conv: Some(conv),
                    ..Default::default()
                });
                convs[u].push(conv);
            }
            readers.insert(conv, logins[owner].1.clone());
        }
        let mut devices = Vec::new();
        for (u, (_, phone, laptop)) in logins.into_iter().enumerate() {
            for (d, http) in [phone, laptop].into_iter().enumerate() {
                devices.push((u, Arc::new(Device::start(http, opts(u, d)))));
            }
        }
        Self {
            users,
            targets,
            convs,
            readers,
            devices,
        }
    }

    fn device_options(user: usize, device: usize, route: Option<String>) -> DeviceOptions {
        DeviceOptions {
            // One device in eight on WebSocket, the rest on TCP.
            transport: if device == 1 && user.is_multiple_of(4) {
                Transport::Ws
            } else {
                Transport::Tcp
            },
            route,
            // A kill -9 is followed by a restart of a few seconds; keep retrying well past it.
            send_deadline: Duration::from_secs(120),
            max_backoff: Duration::from_secs(2),
            ..DeviceOptions::default()
        }
    }

    fn stop(&self) {
        for (_, d) in &self.devices {
            d.stop();
        }
    }
}

// === traffic ===

/// Steady traffic: 50 senders, each sending from a random device of its next user to one
/// of that user's conversations, spaced so that all together send `rate` per second.
struct Traffic {
    stop: tokio::sync::watch::Sender<bool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    acked: Acked,
    failed: Arc<Mutex<Vec<String>>>,
}

impl Traffic {
    fn start(pop: &Arc<Population>, rate: f64) -> Self {
        let (stop, _) = tokio::sync::watch::channel(false);
        let acked: Acked = Arc::default();
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let n = 50.min(pop.users.len());
        let gap = Duration::from_secs_f64(n as f64 / rate);
        let senders = (0..n)
            .map(|s| {
                let (pop, mut stop, acked, failed) =
                    (pop.clone(), stop.subscribe(), acked.clone(), failed.clone());
                tokio::spawn(async move {
                    let mine: Vec<usize> = (s..pop.users.len()).step_by(n).collect();
                    let mut i = 0;
                    while !*stop.borrow_and_update() {
                        let u = mine[i % mine.len()];
                        let targets = &pop.targets[u];
                        let req = SendRequest {
                            client_msg_id: format!("s{s}-{i}"),
                            content: serde_json::json!({ "i": i }),
                            ..targets[rand::random_range(0..targets.len())].clone()
                        };
                        let dev = &pop.devices[2 * u + rand::random_range(0..2)].1;
                        match dev.send(&req).await {
                            Ok(r) => acked.lock().unwrap().push((r.conv, r.msg_id, r.conv_seq)),
                            Err(e) => failed
                                .lock()
                                .unwrap()
                                .push(format!("{}: {e}", req.client_msg_id)),
                        }
                        i += 1;
                        tokio::select! {
                            _ = tokio::time::sleep(gap.mul_f64(0.5 + rand::random::<f64>())) => {}
                            _ = stop.changed() => {}
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            senders,
            acked,
            failed,
        }
    }

    /// Stops sending and waits for the sends in flight; returns every acknowledged message.
    async fn finish(self) -> Vec<(ConvId, MsgId, u64)> {
        self.stop.send_replace(true);
        for s in self.senders {
            s.await.unwrap();
        }
        let failed = self.failed.lock().unwrap();
        assert!(failed.is_empty(), "sends never acknowledged: {failed:?}");
        self.acked.lock().unwrap().clone()
    }
}

// === storms and measurements ===

/// How long the devices that lost their connection took to reconnect: all of them, and
/// the median and 99th percentile of one.
#[derive(Debug)]
struct Reconnect {
    devices: usize,
    all: Duration,
    p50: Duration,
    p99: Duration,
}

/// Waits until every device that lost its connection (`before[i]` is `Some(connects())` then)
/// has connected again.
async fn reconnected(pop: &Population, before: &[Option<u64>], started: Instant) -> Reconnect {
    let mut took: Vec<Option<Duration>> = vec![None; before.len()];
    loop {
        for (i, (_, d)) in pop.devices.iter().enumerate() {
            if took[i].is_none() && before[i].is_some_and(|b| d.connects() > b) {
                took[i] = Some(started.elapsed());
            }
        }
        let waiting = before.iter().flatten().count() - took.iter().flatten().count();
        if waiting == 0 {
            break;
        }
        assert!(
            started.elapsed() < RECONNECT_BOUND,
            "{waiting} devices not reconnected after {RECONNECT_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut took: Vec<Duration> = took.into_iter().flatten().collect();
    took.sort();
    let at = |q: usize| took.get(took.len() * q / 100).copied().unwrap_or_default();
    Reconnect {
        devices: took.len(),
        all: took.last().copied().unwrap_or_default(),
        p50: at(50),
        p99: at(99),
    }
}

/// Every device's `connects()`: all of them are to reconnect.
fn connects(pop: &Population) -> Vec<Option<u64>> {
    pop.devices
        .iter()
        .map(|(_, d)| Some(d.connects()))
        .collect()
}

/// The `connects()` of the devices on `gateway` (or between connections): they are to
/// reconnect when it dies; the others keep their connections.
fn connects_on(pop: &Population, gateway: &Proc) -> Vec<Option<u64>> {
    let on = |a: &str| Some(a) == gateway.tcp.as_deref() || a.contains(&gateway.http);
    pop.devices
        .iter()
        .map(|(_, d)| d.address().is_none_or(|a| on(&a)).then(|| d.connects()))
        .collect()
}

/// Waits until the gateways' `xinge_connections` gauges add up to `n`; returns how long.
/// Creates the devices (through `route` if given) and waits until all are connected and
/// the gateways' gauges say so; the summary's first line says how long that took.
async fn populate(
    base: &str,
    devices: usize,
    route: Option<String>,
    gateways: &[&Proc],
) -> (Arc<Population>, Vec<String>) {
    let began = Instant::now();
    let pop = Arc::new(
        Population::create(base, devices, |u, d| {
            Population::device_options(u, d, route.clone())
        })
        .await,
    );
    let first = reconnected(&pop, &vec![Some(0); pop.devices.len()], began).await;
    gauge_back(gateways, devices, began).await;
    let summary = vec![format!(
        "setup and first connection of {} devices ({} users): {:.1?} (p50 {:.1?})",
        devices,
        pop.users.len(),
        first.all,
        first.p50
    )];
    (pop, summary)
}

async fn gauge_back(gateways: &[&Proc], n: usize, started: Instant) -> Duration {
    loop {
        let mut sum = 0.0;
        for g in gateways {
            sum += g.metric("xinge_connections").await;
        }
        if sum == n as f64 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RECONNECT_BOUND,
            "connection gauges add up to {sum}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RSS levels per process, in the order measured: (process label, after what, KiB, whether
/// the process lived through that storm).
#[derive(Default)]
struct Memory(Vec<(String, String, u64, bool)>);

impl Memory {
    /// Records `p`'s RSS; `lived` is false for the warm-up and for a process (re)started in
    /// the storm just measured — levels that are reported, not checked.
    fn record(&mut self, process: &str, after: &str, p: &Proc, lived: bool) -> u64 {
        let kib = p.rss_kib();
        let process = format!("{process} pid {}", p.child.id());
        self.0.push((process, after.into(), kib, lived));
        kib
    }

    /// Every process's RSS at each later storm is within `MEMORY` of its level after the
    /// first storm it lived through.
    fn check(&self) {
        let mut first: HashMap<&str, u64> = HashMap::new();
        for (process, after, kib, _) in self.0.iter().filter(|m| m.3) {
            let base = *first.entry(process).or_insert(*kib);
            let bound = base + (base as f64 * MEMORY.0) as u64 + MEMORY.1;
            assert!(
                *kib <= bound,
                "{process}: RSS {kib} KiB after {after} exceeds {bound} KiB \
                 (its level after the first storm it lived through, {base} KiB, + 10 % + 8 MiB)"
            );
        }
    }

    fn report(&self) -> String {
        self.0
            .iter()
            .map(|(p, after, kib, _)| {
                format!("  {p} after {after}: {:.1} MiB", *kib as f64 / 1024.0)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The end of a soak run: stops the traffic, checks every acknowledged message on every
/// device and in the store, prints the storms' summary and the memory table, and fails if
/// memory grew.
async fn conclude(
    name: &str,
    traffic: Traffic,
    pop: &Population,
    mut summary: Vec<String>,
    began: Instant,
    memory: &Memory,
) {
    let acked = traffic.finish().await;
    let checking = Instant::now();
    let delivered = check_delivery(pop, &acked).await;
    summary.push(format!(
        "{} messages acknowledged, {delivered} handed to devices, all checked in {:.1?}; {:.0?} in all",
        acked.len(),
        checking.elapsed(),
        began.elapsed()
    ));
    eprintln!(
        "soak ({name}):\n  {}\n{}",
        summary.join("\n  "),
        memory.report()
    );
    memory.check();
}

/// The delivery checker over the whole population: every device has every acknowledged
/// message of its user's conversations, exactly once, in order; the store has them all.
/// Returns the messages handed to devices in all.
async fn check_delivery(pop: &Population, acked: &[(ConvId, MsgId, u64)]) -> usize {
    let mut by_conv: HashMap<ConvId, Vec<MsgId>> = HashMap::new();
    for (conv, msg, _) in acked {
        by_conv.entry(*conv).or_default().push(*msg);
    }
    let delivered =
        futures_util::future::join_all(pop.devices.iter().enumerate().map(|(i, (u, dev))| {
            let want: HashSet<MsgId> = pop.convs[*u]
                .iter()
                .flat_map(|c| by_conv.get(c).into_iter().flatten().copied())
                .collect();
            async move {
                let mut seen = Seen::default();
                let who = format!("device {i} of user {}", pop.users[*u]);
                seen.until_has(dev, &want, &who).await;
                seen.msgs.len()
            }
        }))
        .await;
    assert_stored(acked, |c| &pop.readers[c]).await;
    delivered.iter().sum()
}

/// `xinge serve` with `cfg` in `dir` on two ports below Linux's ephemeral range, so that
/// none of the thousands of reconnection attempts while it is down can get a port as its
/// own source port (a TCP self-connect) and keep it from binding again when it restarts
/// on the same addresses. Whether a pair is free is the server's own bind: a pair another
/// process holds makes it exit naming the address, and another pair is tried. (A probe
/// that binds and lets go would leave the port to anyone in between.)
fn serve_on_fixed_ports(dir: &Path, cfg: &Config) -> Proc {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let config = dir.join("xinge.toml");
    std::fs::write(&config, config_toml(cfg)).unwrap();
    for _ in 0..100 {
        let p = rand::random_range(10_000..ephemeral_low - 1);
        let (http, tcp) = (format!("127.0.0.1:{p}"), format!("127.0.0.1:{}", p + 1));
        let mut child = xinge(dir)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--http-addr", &http, "--tcp-addr", &tcp])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start xinge");
        // The server's stderr goes on to the test's, and is kept until it is ready.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, said) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        if ready.starts_with("xinge ready") {
            return Proc {
                child,
                http,
                tcp: Some(tcp),
            };
        }
        child.wait().unwrap();
        let said: Vec<String> = said.iter().collect();
        assert!(
            said.iter().any(|l| l.contains("cannot listen on")),
            "xinge did not start: {said:?}"
        );
    }
    panic!("no two free ports below {ephemeral_low}");
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_serve_reconnect_storms_and_kill_9_deliver_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let p = Params::from_env(2_000);
    let period = p.period();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    soak_config(&mut cfg);
    let mut server = serve_on_fixed_ports(dir.path(), &cfg);
    let restart = {
        let (dir, cfg) = (dir.path().to_owned(), cfg.clone());
        let (http, tcp) = (server.http.clone(), server.tcp.clone().unwrap());
        move || common::procs::serve(&dir, &cfg, &http, &tcp)
    };
    let base = format!("http://{}", server.http);
    let began = Instant::now();
    let (pop, mut summary) = populate(&base, p.devices, None, &[&server]).await;

    let traffic = Traffic::start(&pop, p.rate);
    tokio::time::sleep(period).await;
    let mut memory = Memory::default();
    memory.record("xinge serve", "warm-up", &server, false);
    for storm in 1..=p.storms {
        // Every third storm kills the server; the others drop every connection at the SDK.
        let kill = storm.is_multiple_of(p.kill_every);
        let before = connects(&pop);
        let started = Instant::now();
        if kill {
            server.kill9();
            server = tokio::task::spawn_blocking(restart.clone()).await.unwrap();
        } else {
            for (_, d) in &pop.devices {
                d.drop_connection();
            }
        }
        let back = reconnected(&pop, &before, started).await;
        let gauge = gauge_back(&[&server], p.devices, started).await;
        tokio::time::sleep(period).await;
        let what = if kill {
            "kill -9 + restart"
        } else {
            "drop all"
        };
        let label = format!("storm {storm} ({what})");
        let kib = memory.record("xinge serve", &label, &server, !kill);
        summary.push(format!(
            "{label}: {} devices back in {:.1?} (p50 {:.1?}, p99 {:.1?}), gauge {} after {gauge:.1?}; RSS {:.1} MiB",
            back.devices,
            back.all,
            back.p50,
            back.p99,
            p.devices,
            kib as f64 / 1024.0
        ));
    }
    conclude("xinge serve", traffic, &pop, summary, began, &memory).await;
    pop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_roles_survive_gateway_api_and_push_kills_and_reconnect_storms() {
    let test = "soak_roles_survive_gateway_api_and_push_kills_and_reconnect_storms";
    if !engines_up(test).await {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let p = Params::from_env(1_000);
    let period = p.period();
    let c = Cluster::on(NATS, REDIS, |cfg| {
        soak_config(cfg);
        cfg.store.postgres_pool = 8;
        cfg.cluster.request_timeout_ms = 5_000;
    });
    let route = c.spawn("route", 1);
    let mut gateways = [c.spawn("gateway", 10), c.spawn("gateway", 11)];
    let mut apis = [c.spawn("api", 20), c.spawn("api", 21)];
    let mut pushes = [c.spawn("push", 30), c.spawn("push", 31)];
    wait_gateways(&route, 2).await;
    // HTTP goes to the api process that stays; the devices' commands go through the
    // gateways to either.
    let base = format!("http://{}", apis[1].http);
    let route_url = format!("http://{}", route.http);
    let began = Instant::now();
    let (pop, mut summary) = populate(
        &base,
        p.devices,
        Some(route_url.clone()),
        &[&gateways[0], &gateways[1]],
    )
    .await;

    let traffic = Traffic::start(&pop, p.rate);
    tokio::time::sleep(period).await;
    let mut memory = Memory::default();
    memory.record("gateway 10", "warm-up", &gateways[0], false);
    memory.record("gateway 11", "warm-up", &gateways[1], false);
    for storm in 1..=p.storms {
        // Every third storm (the first included) kills the busier gateway: its clients
        // reconnect through the route to the other one, then it is restarted. The other
        // storms drop every connection at the SDK.
        let kill = (storm - 1).is_multiple_of(p.kill_every);
        let mut before = connects(&pop);
        let mut started = Instant::now();
        let mut what = "drop all".to_owned();
        let mut killed = None;
        if kill {
            let load = [
                gateways[0].metric("xinge_connections").await,
                gateways[1].metric("xinge_connections").await,
            ];
            let busier = usize::from(load[1] > load[0]);
            before = connects_on(&pop, &gateways[busier]);
            started = Instant::now();
            gateways[busier].kill9();
            killed = Some(busier);
            what = format!(
                "kill -9 of gateway 1{busier} with {} connections",
                load[busier]
            );
        } else {
            for (_, d) in &pop.devices {
                d.drop_connection();
            }
        }
        let back = reconnected(&pop, &before, started).await;
        let gauge = match killed {
            // Everyone on the one left, then the dead one restarts (the next gateway storm
            // sends its clients back to it).
            Some(dead) => {
                let gauge = gauge_back(&[&gateways[1 - dead]], p.devices, started).await;
                let c = &c;
                gateways[dead] =
                    tokio::task::block_in_place(|| c.spawn("gateway", 10 + dead as u16));
                wait_gateways(&route, 2).await;
                gauge
            }
            None => gauge_back(&[&gateways[0], &gateways[1]], p.devices, started).await,
        };
        // An api process and a push process die during the traffic after the first storm.
        if storm == 1 {
            tokio::time::sleep(period / 3).await;
            apis[0].kill9();
            tokio::time::sleep(period / 3).await;
            pushes[0].kill9();
            tokio::time::sleep(period / 3).await;
            summary.push("killed -9: api 20, then push 30 (not restarted)".into());
        } else {
            tokio::time::sleep(period).await;
        }
        let label = format!("storm {storm} ({what})");
        let rss = [
            memory.record("gateway 10", &label, &gateways[0], killed != Some(0)),
            memory.record("gateway 11", &label, &gateways[1], killed != Some(1)),
        ];
        let load = [
            gateways[0].metric("xinge_connections").await,
            gateways[1].metric("xinge_connections").await,
        ];
        summary.push(format!(
            "{label}: {} devices back in {:.1?} (p50 {:.1?}, p99 {:.1?}), gauges {} after {gauge:.1?}; \
             gateways hold {load:?}, RSS {:.1} / {:.1} MiB",
            back.devices,
            back.all,
            back.p50,
            back.p99,
            p.devices,
            rss[0] as f64 / 1024.0,
            rss[1] as f64 / 1024.0
        ));
    }
    conclude("roles", traffic, &pop, summary, began, &memory).await;
    pop.stop();
    drop((route, gateways, apis, pushes));
    c.clean_up().await;
}
