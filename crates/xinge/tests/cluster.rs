//! The distributed roles as separate processes on the real engines (PostgreSQL, Redis,
//! NATS JetStream): clients on two gateways chat 1:1 and in a group while one gateway, one
//! api and one push process are killed with SIGKILL in turn; afterwards every device of
//! every user has every acknowledged message exactly once, in order, and the store has
//! them all. And with three gateways, traffic between two never touches the third.
//! Requires the engines under CI; elsewhere skips, saying so.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::delivery::{Acked, Seen, assert_stored, conv_has, sender, until_acked};
use common::procs::{Cluster, NATS, Proc, REDIS, engines_up, wait_gateways};
use common::{PASSWORD, befriend};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xinge_client::api::{SendRequest, Signal};
use xinge_client::{Connection, Device, DeviceOptions, Http, Transport};
use xinge_core::{MsgId, UserId};

/// Repair pulls at the SDK's default pace, or every 2 s where an engine outage may drop
/// signals on purpose.
const REPAIR_DEFAULT: Duration = Duration::from_secs(20);
const REPAIR_FAST: Duration = Duration::from_secs(2);

/// A device that asks `route` for its gateway.
fn device(route: &Proc, http: &Http, transport: Transport, repair: Duration) -> Arc<Device> {
    Arc::new(Device::start(
        http.clone(),
        DeviceOptions {
            transport,
            route: Some(format!("http://{}", route.http)),
            repair_interval: repair,
            ..Default::default()
        },
    ))
}

async fn login(api: &str, name: &str, device: &str) -> (Http, UserId) {
    let http = Http::new(format!("http://{api}"));
    let _ = http.register(name, PASSWORD).await;
    let (authed, resp) = http.login(name, PASSWORD, device).await.unwrap();
    (authed, resp.user_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_survive_kill_9_of_a_gateway_an_api_and_a_push_process() {
    if !engines_up("roles_survive_kill_9_of_a_gateway_an_api_and_a_push_process").await {
        return;
    }
    let c = Cluster::new();
    let route = c.spawn("route", 1);
    let mut gateways = vec![c.spawn("gateway", 10), c.spawn("gateway", 11)];
    let mut apis = vec![c.spawn("api", 20), c.spawn("api", 21)];
    let mut pushes = vec![c.spawn("push", 30), c.spawn("push", 31)];
    wait_gateways(&route, 2).await;

    let api = apis[1].http.clone();
    let (alice, a) = login(&api, "alice", "laptop").await;
    let (bob, b) = login(&api, "bob", "laptop").await;
    let (bob_phone, _) = login(&api, "bob", "phone").await;
    let (carol, cid) = login(&api, "carol", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    befriend(&carol, cid, &alice, a).await;
    let group = alice.create_group("trio", &[b, cid]).await.unwrap().conv;

    // The default repair interval (20 s): within the checker's wait, delivery rests on
    // signals — so on JetStream redelivering what the killed push process held.
    let device = |http: &Http, transport| device(&route, http, transport, REPAIR_DEFAULT);
    let devices: Vec<(UserId, Arc<Device>)> = vec![
        (a, device(&alice, Transport::Tcp)),
        (b, device(&bob, Transport::Ws)),
        (b, device(&bob_phone, Transport::Tcp)),
        (cid, device(&carol, Transport::Ws)),
    ];
    for (_, d) in &devices {
        assert!(d.wait_connected(Duration::from_secs(20)).await);
    }

    let acked: Acked = Arc::default();
    let n = 60;
    let dm = |to| SendRequest {
        to: Some(to),
        ..Default::default()
    };
    let to_group = SendRequest {
        conv: Some(group),
        ..Default::default()
    };
    let traffic = tokio::spawn({
        let (d0, d1, d3, acked) = (
            devices[0].1.clone(),
            devices[1].1.clone(),
            devices[3].1.clone(),
            acked.clone(),
        );
        async move {
            tokio::join!(
                sender(d0, dm(b), "ab", n, acked.clone()),
                sender(d1, to_group, "bg", n, acked.clone()),
                sender(d3, dm(a), "ca", n, acked.clone()),
            );
        }
    });

    // Faults, in turn, while the traffic runs (of its 180 sends: after a quarter, half and
    // two thirds).
    until_acked(&acked, 45).await;
    let mut busiest = 0;
    if gateways[1].metric("xinge_connections").await > gateways[0].metric("xinge_connections").await
    {
        busiest = 1;
    }
    gateways[busiest].kill9();
    let connects: Vec<u64> = devices.iter().map(|(_, d)| d.connects()).collect();
    until_acked(&acked, 90).await;
    apis[0].kill9();
    until_acked(&acked, 120).await;
    pushes[0].kill9();
    traffic.await.unwrap();
    let survivor = &gateways[1 - busiest];
    assert!(
        survivor.metric("xinge_connections").await >= 1.0,
        "clients moved to the surviving gateway"
    );
    assert!(
        devices
            .iter()
            .zip(&connects)
            .any(|((_, d), before)| d.connects() > *before),
        "some device reconnected after its gateway died"
    );

    // The checker: every device has every acknowledged message of its conversations,
    // exactly once, in conv_seq order.
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 3 * n);
    for (user, dev) in &devices {
        let mine: HashSet<MsgId> = acked
            .iter()
            .filter(|(conv, _, _)| conv_has(conv, *user))
            .map(|m| m.1)
            .collect();
        Seen::default()
            .until_has(dev, &mine, &format!("user {user}"))
            .await;
    }
    // And the store has every acknowledged message where it was acknowledged (Alice is in
    // every conversation of the traffic).
    assert_stored(&acked, |_| &alice).await;
    for (_, d) in &devices {
        d.stop();
    }
    drop((route, gateways, apis, pushes));
    c.clean_up().await;
}

/// A 1:1 send over a long connection, which must succeed.
/// Until `signals` (the connection of a friend of `user`'s, bound before `user` connected)
/// hears that `user` came online: from then on both are bound in the registry.
async fn until_online(signals: &mut tokio::sync::mpsc::Receiver<Signal>, user: UserId) {
    let wait = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(s) = signals.recv().await {
            if let Signal::Presence {
                user: u,
                online: true,
                ..
            } = s
                && u == user
            {
                return;
            }
        }
        panic!("the connection closed before {user} came online");
    });
    wait.await
        .unwrap_or_else(|_| panic!("{user} not seen online within 20 s"));
}

async fn send_over(conn: &Connection, to: UserId, client_msg_id: String) {
    let _: serde_json::Value = conn
        .request(
            xinge_proto::cmd::SEND,
            &SendRequest {
                to: Some(to),
                client_msg_id,
                content: serde_json::json!({}),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_only_the_gateways_holding_the_users() {
    if !engines_up("signals_reach_only_the_gateways_holding_the_users").await {
        return;
    }
    let c = Cluster::new();
    let gateways = [
        c.spawn("gateway", 10),
        c.spawn("gateway", 11),
        c.spawn("gateway", 12),
    ];
    let api = c.spawn("api", 20);
    let push = c.spawn("push", 30);
    let (alice, a) = login(&api.http, "alice", "laptop").await;
    let (bob, b) = login(&api.http, "bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let tcp = |i: usize| gateways[i].tcp.clone().unwrap();
    let (ca, mut sa) = Connection::connect(Transport::Tcp, &tcp(0), alice.token().unwrap())
        .await
        .unwrap();
    let (_cb, mut sb) = Connection::connect(Transport::Tcp, &tcp(1), bob.token().unwrap())
        .await
        .unwrap();
    // Both bound in the registry before the first send.
    until_online(&mut sa, b).await;
    let alice_gw_before = gateways[0].metric("xinge_deliveries_received_total").await;
    for i in 0..20 {
        send_over(&ca, b, format!("m{i}")).await;
    }
    // Bob's gateway delivered his signals; Alice's own entries rode in her answers (her
    // connection hands them out as signals), so her gateway was sent nothing; the third
    // gateway neither.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = (0, 0);
    while (got.0 < 20 || got.1 < 20) && Instant::now() < deadline {
        tokio::select! {
            Some(_) = sa.recv() => got.0 += 1,
            Some(_) = sb.recv() => got.1 += 1,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert!(
        got.0 >= 20 && got.1 >= 20,
        "alice has her 20 entries from the answers, bob his 20 signals through gateway 11: {got:?}"
    );
    assert_eq!(
        gateways[0].metric("xinge_deliveries_received_total").await,
        alice_gw_before,
        "the sending connection is not signalled its own entries"
    );
    assert!(gateways[1].metric("xinge_deliveries_received_total").await >= 20.0);
    // A burst of concurrent sends: the api packs the events queued together into one
    // stream message and push packs a batch's deliveries for a gateway into one publish;
    // Bob still gets one signal per entry, each once.
    futures_util::future::join_all((0..200).map(|i| send_over(&ca, b, format!("burst{i}")))).await;
    let mut seqs = HashSet::new();
    let mut repeats = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seqs.len() < 200 && Instant::now() < deadline {
        tokio::select! {
            Some(s) = sb.recv() => {
                if let Signal::Inbox { seq, .. } = s
                    && !seqs.insert(seq)
                {
                    repeats += 1;
                }
            }
            Some(_) = sa.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(
        (seqs.len(), repeats),
        (200, 0),
        "every burst entry signalled once"
    );
    let (events, messages) = (
        push.metric("xinge_push_events_total").await,
        push.metric("xinge_push_messages_total").await,
    );
    assert!(
        events > messages,
        "the burst's events shared stream messages: {events} events in {messages} messages"
    );
    assert_eq!(
        gateways[2].metric("xinge_deliveries_received_total").await,
        0.0,
        "the third gateway holds neither user and is never sent anything"
    );
    drop((gateways, api, push));
    c.clean_up().await;
}

/// Over a user's signal rate, push holds the signals (coalesced: an inbox signal stands for
/// everything before it) and releases them as the rate allows, through the same packed
/// deliveries: the receiver's newest entry is still signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_over_a_users_rate_are_held_and_released_by_push() {
    if !engines_up("signals_over_a_users_rate_are_held_and_released_by_push").await {
        return;
    }
    let c = Cluster::on(NATS, REDIS, |cfg| {
        cfg.limits.signals_per_sec = 5.0;
        cfg.limits.signals_burst = 2.0;
    });
    let gateway = c.spawn("gateway", 10);
    let api = c.spawn("api", 20);
    let push = c.spawn("push", 30);
    let (alice, a) = login(&api.http, "alice", "laptop").await;
    let (bob, b) = login(&api.http, "bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let tcp = gateway.tcp.clone().unwrap();
    let (ca, mut sa) = Connection::connect(Transport::Tcp, &tcp, alice.token().unwrap())
        .await
        .unwrap();
    let (_cb, mut sb) = Connection::connect(Transport::Tcp, &tcp, bob.token().unwrap())
        .await
        .unwrap();
    until_online(&mut sa, b).await;
    for i in 0..20 {
        send_over(&ca, b, format!("h{i}")).await;
    }
    let head = bob.sync(0, Some(1)).await.unwrap().head;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut newest = 0;
    while newest < head && Instant::now() < deadline {
        tokio::select! {
            Some(s) = sb.recv() => {
                if let Signal::Inbox { seq, .. } = s {
                    newest = newest.max(seq);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(
        newest, head,
        "bob's newest entry is signalled once his rate allows"
    );
    assert!(
        push.metric("xinge_signals_throttled_total").await > 0.0,
        "twenty signals in a moment are over a rate of 5/s with a burst of 2"
    );
    drop((gateway, api, push));
    c.clean_up().await;
}

// === Redis and NATS restarts ===

/// A private engine process on a free loopback port, so restarting it touches no other test.
struct Engine {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    program: String,
}

impl Engine {
    fn start(program: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Self> {
        let path = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(|d| format!("{d}/{program}"))
            .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut e = Self {
            child: None,
            port,
            args: args(port),
            program: path,
        };
        e.restart();
        Some(e)
    }

    /// Starts it (again) and waits until it accepts connections.
    fn restart(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start engine");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not start", self.program);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends one probe from `from` to `to` and waits until `to` has it: the time the whole path
/// (gateway → api → store → stream → push → gateway) takes to work again.
async fn recovery(
    (from, to, to_id): (&Device, &Device, UserId),
    seen: &mut Seen,
    tag: &str,
    acked: &Acked,
) -> Duration {
    let started = Instant::now();
    let r = from
        .send(&SendRequest {
            to: Some(to_id),
            client_msg_id: tag.into(),
            content: serde_json::json!({}),
            ..Default::default()
        })
        .await
        .unwrap();
    acked.lock().unwrap().push((r.conv, r.msg_id, r.conv_seq));
    while !seen.msgs.contains(&r.msg_id) {
        seen.next(to).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_recover_by_themselves_from_redis_and_nats_restarts() {
    let test = "the_roles_recover_by_themselves_from_redis_and_nats_restarts";
    if !engines_up(test).await {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let sd = store.path().to_str().unwrap().to_owned();
    let redis = Engine::start("redis-server", |p| {
        [
            "--port",
            &p.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    });
    let nats = Engine::start("nats-server", |p| {
        ["-a", "127.0.0.1", "-p", &p.to_string(), "-js", "-sd", &sd]
            .map(String::from)
            .to_vec()
    });
    let (Some(mut redis), Some(mut nats)) = (redis, nats) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server and nats-server are required under CI"
        );
        eprintln!("SKIPPED {test}: redis-server or nats-server is not installed");
        return;
    };
    let c = Cluster::on(
        &format!("nats://127.0.0.1:{}", nats.port),
        &format!("redis://127.0.0.1:{}", redis.port),
        |_| {},
    );
    let route = c.spawn("route", 1);
    let gateways = [c.spawn("gateway", 10), c.spawn("gateway", 11)];
    let api = c.spawn("api", 20);
    let push = c.spawn("push", 30);
    wait_gateways(&route, 2).await;
    let (alice, a) = login(&api.http, "alice", "laptop").await;
    let (bob, b) = login(&api.http, "bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let device = |http: &Http| device(&route, http, Transport::Tcp, REPAIR_FAST);
    let (da, db) = (device(&alice), device(&bob));
    assert!(da.wait_connected(Duration::from_secs(20)).await);
    assert!(db.wait_connected(Duration::from_secs(20)).await);

    let acked: Acked = Arc::default();
    let n = 50;
    let traffic = tokio::spawn({
        let (da, acked) = (da.clone(), acked.clone());
        let to = SendRequest {
            to: Some(b),
            ..Default::default()
        };
        async move { sender(da, to, "ab", n, acked).await }
    });
    // Each engine is killed and restarted during the traffic; right after each restart a
    // probe from Bob measures how long until a message reaches Alice again.
    let mut seen_a = Seen::default();
    let path = (&*db, &*da, a);
    until_acked(&acked, 10).await;
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let after_redis = recovery(path, &mut seen_a, "probe-redis", &acked).await;
    nats.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    let after_nats = recovery(path, &mut seen_a, "probe-nats", &acked).await;
    traffic.await.unwrap();
    eprintln!(
        "{test}: delivery works again {after_redis:?} after the Redis restart, {after_nats:?} after the NATS restart"
    );
    for took in [after_redis, after_nats] {
        assert!(
            took < Duration::from_secs(15),
            "recovered within the bound: {took:?}"
        );
    }

    let all: HashSet<MsgId> = acked.lock().unwrap().iter().map(|m| m.1).collect();
    assert_eq!(all.len(), n + 2);
    for (dev, mut seen) in [(&da, seen_a), (&db, Seen::default())] {
        let started = Instant::now();
        seen.until_has(dev, &all, "a device").await;
        eprintln!(
            "{test}: a device had everything {:?} later",
            started.elapsed()
        );
    }
    drop((route, gateways, api, push));
    c.clean_up().await;
}

// === a 3-node NATS cluster and a Redis Cluster ===

/// The clusters `scripts/engines.sh` starts, on ports of their own, stopped when dropped.
struct Clusters {
    dir: tempfile::TempDir,
    nats: u16,
    redis: u16,
}

impl Clusters {
    fn script(&self, what: &str) -> bool {
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/engines.sh"
            ))
            .arg(what)
            .env("XINGE_ENGINES_DIR", self.dir.path())
            .env("XINGE_NATS_CLUSTER_PORT", self.nats.to_string())
            .env("XINGE_REDIS_CLUSTER_PORT", self.redis.to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start() -> Option<Self> {
        // Ports apart from any other run's and below Linux's ephemeral range (32768+), where
        // the other tests' outgoing connections would collide with them: NATS clients
        // 12000-13999 (routes +2000), Redis 16000-19999 (cluster bus +10000).
        let r = (xinge_core::now_ms() % 500) as u16;
        let c = Self {
            dir: tempfile::tempdir().unwrap(),
            nats: 12_000 + r * 4,
            redis: 16_000 + r * 8,
        };
        (c.script("nats-cluster") && c.script("redis-cluster")).then_some(c)
    }

    fn urls(scheme: &str, base: u16, n: u16) -> String {
        (0..n)
            .map(|i| format!("{scheme}://127.0.0.1:{}", base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn kill9(&self, node: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join(format!("{node}.pid"))).unwrap();
        let ok = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(ok.success(), "killed {node}");
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        self.script("stop-clusters");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_on_a_nats_cluster_and_a_redis_cluster_survive_losing_a_node_of_each() {
    let test = "roles_on_a_nats_cluster_and_a_redis_cluster_survive_losing_a_node_of_each";
    if !engines_up(test).await {
        return;
    }
    let Some(clusters) = Clusters::start() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the engine clusters must start under CI"
        );
        eprintln!("SKIPPED {test}: scripts/engines.sh could not start the clusters");
        return;
    };
    let c = Cluster::on(
        &Clusters::urls("nats", clusters.nats, 3),
        &Clusters::urls("redis", clusters.redis, 3),
        |c| c.cluster.stream_replicas = 3,
    );
    let route = c.spawn("route", 1);
    let gateways = [c.spawn("gateway", 10), c.spawn("gateway", 11)];
    let apis = [c.spawn("api", 20), c.spawn("api", 21)];
    let pushes = [c.spawn("push", 30), c.spawn("push", 31)];
    wait_gateways(&route, 2).await;
    let (alice, a) = login(&apis[0].http, "alice", "laptop").await;
    let (bob, b) = login(&apis[1].http, "bob", "laptop").await;
    let (carol, cid) = login(&apis[0].http, "carol", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let group = alice.create_group("trio", &[b, cid]).await.unwrap().conv;
    let device = |http: &Http, transport| device(&route, http, transport, REPAIR_FAST);
    let devices = [
        (a, device(&alice, Transport::Tcp)),
        (b, device(&bob, Transport::Ws)),
        (cid, device(&carol, Transport::Tcp)),
    ];
    for (_, d) in &devices {
        assert!(d.wait_connected(Duration::from_secs(20)).await);
    }
    let acked: Acked = Arc::default();
    let n = 60;
    let traffic = tokio::spawn({
        let (da, db, acked) = (devices[0].1.clone(), devices[1].1.clone(), acked.clone());
        let (dm, to_group) = (
            SendRequest {
                to: Some(b),
                ..Default::default()
            },
            SendRequest {
                conv: Some(group),
                ..Default::default()
            },
        );
        async move {
            tokio::join!(
                sender(da, dm, "ab", n, acked.clone()),
                sender(db, to_group, "bg", n, acked.clone()),
            );
        }
    });
    // Of the 120 sends: one node of each engine lost after a quarter and after half.
    until_acked(&acked, 30).await;
    clusters.kill9(&format!("nats-{}", clusters.nats));
    until_acked(&acked, 60).await;
    clusters.kill9(&format!("redis-{}", clusters.redis)); // a master: its replica takes over
    traffic.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2 * n);
    for (user, dev) in &devices {
        let mine: HashSet<MsgId> = acked
            .iter()
            .filter(|(conv, _, _)| conv_has(conv, *user))
            .map(|m| m.1)
            .collect();
        Seen::default()
            .until_has(dev, &mine, &format!("user {user}"))
            .await;
    }
    for (_, d) in &devices {
        d.stop();
    }
    drop((route, gateways, apis, pushes));
    c.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_and_login_limits_are_shared_by_every_api_process() {
    let test = "the_send_and_login_limits_are_shared_by_every_api_process";
    if !engines_up(test).await {
        return;
    }
    let c = Cluster::on(NATS, REDIS, |c| {
        c.limits.sends_burst = 3.0;
        c.limits.sends_per_sec = 0.5;
        c.limits.login_failures_per_ip_burst = 2.0;
        c.limits.login_failures_per_ip_per_sec = 0.01;
    });
    let apis = [c.spawn("api", 20), c.spawn("api", 21)];
    let (alice, a) = login(&apis[0].http, "alice", "laptop").await;
    let (bob, b) = login(&apis[1].http, "bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    // The same token works on either api process; the counter is in Redis.
    let token = alice.token().unwrap().to_owned();
    let via = |i: usize| Http::new(format!("http://{}", apis[i].http)).with_token(&token);
    let send = |n: usize| SendRequest {
        to: Some(b),
        client_msg_id: format!("m{n}"),
        content: serde_json::json!({}),
        ..Default::default()
    };
    let codes = [
        common::code(via(0).send(&send(0)).await),
        common::code(via(1).send(&send(1)).await),
        common::code(via(0).send(&send(2)).await),
        common::code(via(1).send(&send(3)).await),
    ];
    assert_eq!(codes, ["ok", "ok", "ok", "rate_limited"]);
    // Failed logins from one address are counted across api processes too: two wrong
    // passwords, one at each, and then even the right one is refused at either.
    let anon = |i: usize| Http::new(format!("http://{}", apis[i].http));
    let logins = [
        common::code(anon(0).login("alice", "wrong password 1", "x").await),
        common::code(anon(1).login("alice", "wrong password 2", "x").await),
        common::code(anon(0).login("alice", PASSWORD, "x").await),
        common::code(anon(1).login("alice", PASSWORD, "x").await),
    ];
    assert_eq!(
        logins,
        [
            "bad_credentials",
            "bad_credentials",
            "rate_limited",
            "rate_limited"
        ]
    );
    drop(apis);
    c.clean_up().await;
}

/// With one staging directory shared by the api processes (here they run in one
/// directory; in production a shared volume), an upload started through one process goes
/// on through the other, and either serves the media. Its state is in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_started_through_one_api_process_is_finished_through_another() {
    let test = "an_upload_started_through_one_api_process_is_finished_through_another";
    if !engines_up(test).await {
        return;
    }
    let c = Cluster::on(NATS, REDIS, |_| {});
    let apis = [c.spawn("api", 22), c.spawn("api", 23)];
    let (alice, _) = login(&apis[0].http, "alice", "laptop").await;
    let other = Http::new(format!("http://{}", apis[1].http)).with_token(alice.token().unwrap());
    let bytes: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let bytes = bytes::Bytes::from(bytes);
    let up = alice
        .create_upload(bytes.len() as u64, &[("filename", "two.bin")])
        .await
        .unwrap();
    alice
        .upload_chunk(&up, 0, bytes.slice(..500_000))
        .await
        .unwrap();
    assert_eq!(other.upload_offset(&up).await.unwrap(), 500_000);
    let media = other
        .resume_upload(&up, bytes.clone(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(media.size, bytes.len() as u64);
    let url = alice.media_url(&media.id, "original", None).await.unwrap();
    assert_eq!(alice.download(&url.url, None).await.unwrap(), bytes);
    drop(apis);
    c.clean_up().await;
}

/// Whether the connection whose signals these are closes within a second.
async fn closed_within_a_second(signals: &mut tokio::sync::mpsc::Receiver<Signal>) -> bool {
    let wait = async { while signals.recv().await.is_some() {} };
    tokio::time::timeout(Duration::from_secs(1), wait)
        .await
        .is_ok()
}

/// Access that ends ends on every gateway: Alice's phone (WebSocket, gateway 11) is logged
/// out from her laptop (TCP, gateway 10) over an api process; then her laptop's password
/// change ends her tablet's connection on gateway 11 while the laptop's own goes on. Each
/// within a second, told over the bus to the gateway that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_access_closes_connections_on_every_gateway_within_a_second() {
    if !engines_up("ended_access_closes_connections_on_every_gateway_within_a_second").await {
        return;
    }
    let c = Cluster::new();
    let gateways = [c.spawn("gateway", 10), c.spawn("gateway", 11)];
    let api = c.spawn("api", 20);
    let _push = c.spawn("push", 30);
    let (laptop, a) = login(&api.http, "alice", "laptop").await;
    let (phone, _) = login(&api.http, "alice", "phone").await;
    let (tablet, _) = login(&api.http, "alice", "tablet").await;
    let (bob, b) = login(&api.http, "bob", "laptop").await;
    befriend(&laptop, a, &bob, b).await;
    let tcp = gateways[0].tcp.clone().unwrap();
    let ws = format!("ws://{}/ws", gateways[1].http);
    let (on_laptop, _laptop_signals) =
        Connection::connect(Transport::Tcp, &tcp, laptop.token().unwrap())
            .await
            .unwrap();
    let (on_phone, mut phone_signals) =
        Connection::connect(Transport::Ws, &ws, phone.token().unwrap())
            .await
            .unwrap();
    let (on_tablet, mut tablet_signals) = Connection::connect(
        Transport::Tcp,
        &gateways[1].tcp.clone().unwrap(),
        tablet.token().unwrap(),
    )
    .await
    .unwrap();
    // Bob connected too, so that Alice's online changes are signalled somewhere.
    let (_on_bob, _bob_signals) = Connection::connect(Transport::Tcp, &tcp, bob.token().unwrap())
        .await
        .unwrap();
    let listed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let devices = laptop.devices().await.unwrap().devices;
            if devices.iter().filter(|d| d.online).count() == 3 {
                return devices;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the three devices are seen online");
    assert_eq!(listed.len(), 3);

    let reason = |conn: &Connection| conn.close_reason.lock().unwrap().clone().map(|e| e.code);

    let started = Instant::now();
    laptop.log_out_device("phone").await.unwrap();
    assert!(
        closed_within_a_second(&mut phone_signals).await,
        "the phone's connection closed within 1 s"
    );
    assert_eq!(reason(&on_phone), Some(xinge_core::ErrorCode::TokenRevoked));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(common::code(phone.me().await), "token_revoked");
    on_laptop.ping().await.unwrap();
    on_tablet.ping().await.unwrap();

    laptop
        .change_password(PASSWORD, "another password entirely")
        .await
        .unwrap();
    assert!(
        closed_within_a_second(&mut tablet_signals).await,
        "the tablet's connection closed within 1 s"
    );
    assert_eq!(
        reason(&on_tablet),
        Some(xinge_core::ErrorCode::TokenRevoked)
    );
    on_laptop.ping().await.unwrap();
    // The registry forgot the ended sessions: only the laptop is online.
    let online = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let devices = laptop.devices().await.unwrap().devices;
            if devices.iter().filter(|d| d.online).count() == 1 {
                return devices;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("only the laptop is left online");
    assert_eq!(
        online.len(),
        1,
        "only the laptop is still logged in: {online:?}"
    );
    drop((gateways, api));
    c.clean_up().await;
}

/// The admin API of an api process: a ban reaches the user's connection on a gateway over
/// the bus (CLOSE `banned` within a second), and the online count comes from the
/// gateways' load reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_ban_closes_the_users_connection_on_its_gateway() {
    if !engines_up("an_admin_ban_closes_the_users_connection_on_its_gateway").await {
        return;
    }
    let c = Cluster::on(NATS, REDIS, |c| {
        common::with_admin(c);
        c.admin.on_main_listener = true;
    });
    let gateway = c.spawn("gateway", 10);
    let api = c.spawn("api", 20);
    let _push = c.spawn("push", 30);
    let (alice, a) = login(&api.http, "alice", "laptop").await;
    let (_conn, mut signals) = Connection::connect(
        Transport::Tcp,
        &gateway.tcp.clone().unwrap(),
        alice.token().unwrap(),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: String| {
        client
            .request(method, format!("http://{}{path}", api.http))
            .bearer_auth(common::ADMIN_KEY)
    };
    let online = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v: serde_json::Value = admin(reqwest::Method::GET, "/admin/v1/online".into())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["connections"] == 1 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the gateway reports the connection");
    assert_eq!(
        (online["gateways"].as_u64(), online.get("users")),
        (Some(1), None)
    );
    let resp = admin(reqwest::Method::PUT, format!("/admin/v1/users/{a}/ban"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        closed_within_a_second(&mut signals).await,
        "closed within 1 s"
    );
    assert_eq!(
        _conn.close_reason.lock().unwrap().clone().map(|e| e.code),
        Some(xinge_core::ErrorCode::Banned)
    );
    assert_eq!(
        common::code(
            Http::new(format!("http://{}", api.http))
                .login("alice", PASSWORD, "x")
                .await
        ),
        "banned"
    );
    drop((gateway, api));
    c.clean_up().await;
}

/// The after-events webhook in a cluster: the api processes share the PostgreSQL outbox and
/// one of them delivers it (an advisory lock), so events arrive once each and in order
/// whichever api took the send; when the delivering process is killed with SIGKILL, another
/// takes over and nothing written is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_process_delivers_the_outbox_and_another_takes_over_when_it_dies() {
    if !engines_up("one_api_process_delivers_the_outbox_and_another_takes_over_when_it_dies").await
    {
        return;
    }
    let (url, r) = common::webhooks::receiver().await;
    let c = Cluster::on(NATS, REDIS, |c| common::webhooks::configure(c, &url));
    let mut apis = vec![c.spawn("api", 20), c.spawn("api", 21)];
    let (alice, a) = login(&apis[0].http, "alice", "laptop").await;
    let (bob, b) = login(&apis[1].http, "bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let token = alice.token().unwrap().to_owned();
    let via = |api: &Proc| Http::new(format!("http://{}", api.http)).with_token(&token);
    let dm = |i: usize| SendRequest {
        to: Some(b),
        client_msg_id: format!("e{i}"),
        content: serde_json::json!({ "text": format!("e{i}") }),
        ..Default::default()
    };
    for i in 0..20 {
        via(&apis[i % 2]).send(&dm(i)).await.unwrap();
    }
    let events = common::webhooks::until_events(&r, 21).await;
    // At least once: a batch delivered just before its deliverer died may come again
    // (same event ids); each event's first arrival is what counts.
    let texts = |events: &[serde_json::Value]| -> Vec<String> {
        let mut seen = HashSet::new();
        events
            .iter()
            .filter(|e| e["type"] == "message.sent")
            .filter(|e| seen.insert(e["event_id"].as_str().unwrap().to_owned()))
            .map(|e| {
                e["data"]["message"]["content"]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let want: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    assert_eq!(texts(&events), want, "once each, in order, from either api");
    let delivered = [
        apis[0].metric("xinge_webhook_events_delivered_total").await,
        apis[1].metric("xinge_webhook_events_delivered_total").await,
    ];
    assert!(
        delivered.contains(&0.0) && delivered.iter().sum::<f64>() >= 21.0,
        "one process delivered them all: {delivered:?}"
    );
    // The deliverer dies; the survivor takes the lock over and delivers what comes next.
    let leader = if delivered[0] > 0.0 { 0 } else { 1 };
    apis[leader].kill9();
    let survivor = &apis[1 - leader];
    for i in 20..30 {
        via(survivor).send(&dm(i)).await.unwrap();
    }
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events = r.events.lock().unwrap().clone();
            if texts(&events).len() >= 30 {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the survivor delivers");
    let got = texts(&events);
    let want: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(*r.bad_signatures.lock().unwrap(), 0);
    drop(apis);
    c.clean_up().await;
}

/// Presence changes cross from the gateways to the api processes on a durable stream: a
/// user who comes online and goes offline while no api process runs is told to the app's
/// server once one starts — and once only, by whichever api process takes the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_made_while_no_api_process_runs_are_told_when_one_starts() {
    if !engines_up("presence_changes_made_while_no_api_process_runs_are_told_when_one_starts").await
    {
        return;
    }
    let (url, r) = common::webhooks::receiver().await;
    let c = Cluster::on(NATS, REDIS, |c| {
        common::webhooks::configure(c, &url);
        c.webhooks.after.events = vec!["user.online".into(), "user.offline".into()];
    });
    let gateway = c.spawn("gateway", 10);
    let mut api = c.spawn("api", 20);
    let (alice, a) = login(&api.http, "alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let tcp = gateway.tcp.clone().unwrap();
    // Authentication needs an api process; once connected, the changes do not.
    let (conn, _signals) = Connection::connect(Transport::Tcp, &tcp, &token)
        .await
        .unwrap();
    let first = common::webhooks::until_events(&r, 1).await;
    assert_eq!(first[0]["type"], "user.online");
    api.kill9();
    drop(conn);
    // Reconnecting needs an api process: the offline change waits alone in the stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.events.lock().unwrap().len(), 1, "nobody to tell yet");
    let _apis = [c.spawn("api", 21), c.spawn("api", 22)];
    // The outbox is at least once: the killed process may have been told of the online
    // event's delivery and died before removing it, so a new one tells it again (the same
    // event id). The offline change comes after, once.
    let offline = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events = r.events.lock().unwrap().clone();
            if let Some(e) = events.iter().find(|e| e["type"] == "user.offline") {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the offline change told");
    assert_eq!(offline["data"]["user_id"], serde_json::json!(a.to_string()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = r.events.lock().unwrap().clone();
    let (online, other): (Vec<_>, Vec<_>) = events.iter().partition(|e| e["type"] == "user.online");
    assert_eq!(other.len(), 1, "the offline change told once: {events:?}");
    assert!(
        online.iter().all(|e| e["event_id"] == first[0]["event_id"]),
        "only the first event again: {events:?}"
    );
    assert_eq!(events.last(), Some(&offline), "in order");
    assert_eq!(*r.bad_signatures.lock().unwrap(), 0);
    drop(gateway);
    c.clean_up().await;
}

/// Offline push in a cluster: the notices are written with the messages in PostgreSQL, one
/// api process works the queue, and when it is killed with notifications on their way
/// another takes over and sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_survive_the_kill_of_the_api_process_working_the_queue() {
    if !engines_up("notifications_survive_the_kill_of_the_api_process_working_the_queue").await {
        return;
    }
    let (url, h) = common::push::held().await;
    let c = Cluster::on(NATS, REDIS, |c| {
        c.chat.allow_strangers = true;
        c.webhooks.secrets = vec!["the push webhook's secret".into()];
        c.notify.collapse_ms = 50;
        c.notify.webhook = Some(xinge_core::config::NotifyWebhookConfig {
            url,
            limits: Default::default(),
        });
    });
    let gateway = c.spawn("gateway", 10);
    let mut first = c.spawn("api", 20);
    let (bob, b) = login(&first.http, "bob", "phone").await;
    bob.set_push(&xinge_client::api::PushRegistration::Webhook {
        token: Some("bob".into()),
    })
    .await
    .unwrap();
    // Connected in the foreground: nothing. In the background (kept in Redis): told.
    let (alice, _) = login(&first.http, "alice", "laptop").await;
    let say = |text: &str| -> SendRequest {
        serde_json::from_value(serde_json::json!({
            "to": b, "client_msg_id": text, "content": {"text": text},
        }))
        .unwrap()
    };
    let tcp = gateway.tcp.clone().unwrap();
    let (phone, _signals) = Connection::connect(Transport::Tcp, &tcp, bob.token().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the session reaches Redis
    alice.send(&say("in use")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*h.arrived.lock().unwrap(), 0, "a device in use");
    let _: serde_json::Value = phone
        .request(
            xinge_proto::cmd::APP_STATE,
            &serde_json::json!({"background": true}),
        )
        .await
        .unwrap();
    alice.send(&say("while away")).await.unwrap();
    h.until_arrived(1).await;
    drop(phone);
    for i in 0..4 {
        let (s, _) = login(&first.http, &format!("sender{i}"), "laptop").await;
        let req: SendRequest = serde_json::from_value(serde_json::json!({
            "to": b, "client_msg_id": "m", "content": {"text": format!("from {i}")},
        }))
        .unwrap();
        s.send(&req).await.unwrap();
    }
    h.until_arrived(5).await;
    first.kill9();
    h.open.send_replace(true);
    let _second = c.spawn("api", 21);
    let bodies = h.until_bodies(5).await;
    let mut want: std::collections::BTreeSet<String> =
        (0..4).map(|i| format!("from {i}")).collect();
    want.insert("while away".into());
    assert_eq!(bodies, want, "none lost");
    drop(gateway);
    c.clean_up().await;
}
