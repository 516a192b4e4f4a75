//! Traffic scenarios: `direct` (pairs of friends), `group` (G groups of S members, write
//! fan-out) and `large-group` (one group past the fan-out threshold, a share online, read
//! fan-out) — one engine for all three.
//!
//! The generator schedules message k at `start + k / rate` and stamps it with that time, so
//! a slow server cannot hide its latency by slowing the generator (no coordinated
//! omission). Each sender sends its messages in order on its own connection; each receiver
//! checks that every sender's counter arrives exactly once and in order.

use crate::BenchError;
use crate::report::{BenchResult, Checks, Percentiles};
use crate::server::Server;
use crate::setup::BenchUser;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use xinge_client::api::*;
use xinge_client::{Connection, Reorder, Transport};
use xinge_core::{ConvId, UserId};
use xinge_proto::cmd;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Target {
    To(UserId),
    Conv(ConvId),
}

/// Who is online, who sends where, and what a delivery means.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub scenario: String,
    /// Indexes of the users that hold a connection.
    pub online: Vec<usize>,
    /// Indexes of the users that send, and where to.
    pub senders: Vec<(usize, Target)>,
    /// Deliveries expected for each acknowledged message.
    pub fanout: u64,
    /// A read fan-out conversation the receivers follow by pulling.
    pub follow: Option<ConvId>,
    /// Worker mode: start sending at this wall-clock time (ms since the epoch), with the
    /// other workers, and drain until deliveries stop (the expected count is global).
    #[serde(default)]
    pub start_at_ms: Option<u64>,
}

/// How much traffic: offered messages per second, for how long, with how much content.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Load {
    pub rate: u64,
    pub secs: u64,
    pub size: usize,
}

impl Plan {
    /// 1:1: users 2k and 2k+1 are friends; everyone is online and sends to their peer.
    pub fn direct(users: &[BenchUser]) -> Plan {
        let n = users.len() & !1;
        Plan {
            scenario: "direct".into(),
            online: (0..n).collect(),
            senders: (0..n).map(|i| (i, Target::To(users[i ^ 1].id))).collect(),
            fanout: 1,
            follow: None,
            start_at_ms: None,
        }
    }

    /// A read fan-out group owned by user 0, who sends; users 1..=online follow it.
    pub fn large_group(conv: ConvId, online: usize) -> Plan {
        Plan {
            scenario: "large-group".into(),
            online: (1..=online).collect(),
            senders: vec![(0, Target::Conv(conv))],
            fanout: online as u64,
            follow: Some(conv),
            start_at_ms: None,
        }
    }

    /// The part of the plan worker `shard` of `shards` runs: every shards-th user online
    /// and sending.
    pub fn shard(&self, shard: usize, shards: usize) -> Plan {
        Plan {
            scenario: self.scenario.clone(),
            online: self
                .online
                .iter()
                .copied()
                .filter(|i| i % shards == shard)
                .collect(),
            senders: self
                .senders
                .iter()
                .copied()
                .filter(|(i, _)| i % shards == shard)
                .collect(),
            fanout: self.fanout,
            follow: self.follow,
            start_at_ms: self.start_at_ms,
        }
    }
}

/// What a scenario with its own traffic shape adds to a plan (see `realistic.rs`).
#[derive(Default)]
pub struct Extras {
    /// Each message's time (µs from the start), sender (index into `Plan::senders`) and
    /// target, instead of the plan's senders in turn at an even pace.
    pub schedule: Option<Vec<Arrival>>,
    /// Deliveries per message to each of these conversations (others: `Plan::fanout`).
    pub fanout: HashMap<ConvId, u64>,
    /// Messages sent in the first `warmup_secs` are measured apart from the rest (the
    /// steady state), and so is the server's CPU.
    pub warmup_secs: u64,
    /// The share of delivered messages a receiver marks read (a READ request).
    pub read_share: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub at_us: u64,
    pub sender: usize,
    pub target: Target,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    send_errors: AtomicU64,
    delivered: AtomicU64,
    /// Deliveries the acknowledged messages call for.
    expected: AtomicU64,
    overflow: AtomicU64,
    reads: AtomicU64,
    reads_in_flight: AtomicU64,
}

/// READ requests awaiting their answers at most, in all.
const READS_IN_FLIGHT: u64 = 4_096;

struct Totals {
    ack: Mutex<Histogram<u64>>,
    delivery: Mutex<Histogram<u64>>,
    /// Deliveries of messages sent during the warm-up (when there is one).
    warmup: Mutex<Histogram<u64>>,
    checks: Mutex<Checks>,
    /// `now_us()` from which a sent message counts as the steady state's.
    steady_from: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn run(
    srv: &Server,
    transport: Transport,
    users: &[BenchUser],
    plan: Plan,
    run_id: &str,
    load: Load,
) -> Result<BenchResult, BenchError> {
    run_with(srv, transport, users, plan, run_id, load, Extras::default()).await
}

pub async fn run_with(
    srv: &Server,
    transport: Transport,
    users: &[BenchUser],
    plan: Plan,
    run_id: &str,
    load: Load,
    extras: Extras,
) -> Result<BenchResult, BenchError> {
    let Load { rate, secs, size } = load;
    let fanout = Arc::new(Fanout {
        convs: extras.fanout,
        default: plan.fanout,
    });
    let address = match transport {
        Transport::Tcp => srv.tcp.clone(),
        Transport::Ws => srv.ws.clone(),
    };
    let counters = Arc::new(Counters::default());
    let totals = Arc::new(Totals {
        ack: Mutex::new(hist()),
        delivery: Mutex::new(hist()),
        warmup: Mutex::new(hist()),
        checks: Mutex::new(Checks::default()),
        steady_from: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut conns: HashMap<usize, Arc<Connection>> = HashMap::new();
    let mut receivers = tokio::task::JoinSet::new();
    eprintln!("{}: connecting {} users", plan.scenario, plan.online.len());
    let need: std::collections::BTreeSet<usize> = plan
        .online
        .iter()
        .copied()
        .chain(plan.senders.iter().map(|s| s.0))
        .collect();
    for &i in &need {
        let token = users[i].http.token().unwrap_or_default().to_owned();
        let (conn, signals) = Connection::connect(transport, &address, &token)
            .await
            .map_err(|e| BenchError::Setup(format!("connect: {e}")))?;
        let conn = Arc::new(conn);
        if plan.online.contains(&i) {
            let r = Receiver {
                me: users[i].id,
                follow: plan.follow,
                counters: counters.clone(),
                totals: totals.clone(),
                redial: (transport, address.clone(), token.clone()),
                read_share: extras.read_share,
            };
            let watches = (drain_rx.clone(), stop_rx.clone());
            receivers.spawn(r.run(conn.clone(), signals, watches));
        }
        conns.insert(i, conn);
    }
    let mut senders = Vec::with_capacity(plan.senders.len());
    let mut tasks = tokio::task::JoinSet::new();
    let padding = "x".repeat(size);
    for &(i, _) in &plan.senders {
        let (tx, rx) = mpsc::channel::<(u64, Target)>(4096);
        senders.push(tx);
        let s = Sender {
            conn: conns[&i].clone(),
            prefix: format!("{run_id}-{i}"),
            padding: padding.clone(),
            counters: counters.clone(),
            totals: totals.clone(),
            fanout: fanout.clone(),
        };
        tasks.spawn(s.run(rx));
    }
    // Let the receivers skip what setup left in their inboxes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(at) = plan.start_at_ms {
        tokio::time::sleep(Duration::from_millis(
            at.saturating_sub(xinge_core::now_ms()),
        ))
        .await;
    }

    let total = match &extras.schedule {
        Some(s) => s.len() as u64,
        None => rate * secs,
    };
    eprintln!(
        "{}: offering {rate} msgs/s for {secs} s ({total} messages)",
        plan.scenario
    );
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut cpu0 = srv.sample();
    let (mut writes0, mut sends0) = srv.counters().await;
    let start = now_us();
    let warmup_us = extras.warmup_secs * 1_000_000;
    totals
        .steady_from
        .store(start + warmup_us, Ordering::Relaxed);
    // Delivered when the steady state began (its CPU is per message delivered after).
    let mut delivered0 = 0;
    let mut warm = warmup_us > 0;
    let mut scheduled = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut last_report = Instant::now();
    while scheduled < total {
        tick.tick().await;
        let elapsed = now_us() - start;
        if warm && elapsed >= warmup_us {
            // The steady state's window starts here: CPU and the store's counters again.
            warm = false;
            cpu0 = srv.sample();
            (writes0, sends0) = srv.counters().await;
            delivered0 = counters.delivered.load(Ordering::Relaxed);
        }
        match &extras.schedule {
            Some(arrivals) => {
                while let Some(a) = arrivals.get(scheduled as usize) {
                    if a.at_us > elapsed {
                        break;
                    }
                    if senders[a.sender]
                        .try_send((start + a.at_us, a.target))
                        .is_err()
                    {
                        counters.overflow.fetch_add(1, Ordering::Relaxed);
                    }
                    scheduled += 1;
                }
            }
            None => {
                let due = due(elapsed, rate, total);
                while scheduled < due {
                    let t = start + (scheduled as u128 * 1_000_000 / rate as u128) as u64;
                    let slot = (scheduled % senders.len() as u64) as usize;
                    if senders[slot].try_send((t, plan.senders[slot].1)).is_err() {
                        counters.overflow.fetch_add(1, Ordering::Relaxed);
                    }
                    scheduled += 1;
                }
            }
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            last_report = Instant::now();
            bar.set_message(format!(
                "offered {scheduled}/{total}  acked {}  delivered {}",
                counters.acked.load(Ordering::Relaxed),
                counters.delivered.load(Ordering::Relaxed)
            ));
        }
    }
    let offered_secs = (now_us() - start) as f64 / 1e6;
    drop(senders);
    while tasks.join_next().await.is_some() {}
    // Drain: wait until every acknowledged message was delivered everywhere (or 15 s). A
    // worker cannot know the global count: it waits until deliveries stop for 2 s.
    let expected = || counters.expected.load(Ordering::Relaxed);
    let drain_start = Instant::now();
    // Receivers now repair by pull as a real client does periodically (the server drops a
    // signal at a full gateway queue under overload and counts on that pull).
    let _ = drain_tx.send(true);
    if plan.start_at_ms.is_some() {
        loop {
            let before = counters.delivered.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = counters.delivered.load(Ordering::Relaxed);
            if after == before || drain_start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
    } else {
        while counters.delivered.load(Ordering::Relaxed) < expected()
            && drain_start.elapsed() < Duration::from_secs(15)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let elapsed = (now_us() - start) as f64 / 1e6;
    let cpu1 = srv.sample();
    let (writes1, sends1) = srv.counters().await;
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    while receivers.join_next().await.is_some() {}

    let mut r = BenchResult::new(&plan.scenario, transport);
    r.param("rate", rate);
    r.param("duration_secs", secs);
    if extras.warmup_secs > 0 {
        r.param("warmup_secs", extras.warmup_secs);
        r.warmup_latency = Some(Percentiles::of(&lock(&totals.warmup)));
    }
    r.reads = counters.reads.load(Ordering::Relaxed);
    r.param("size", size as u64);
    r.param("online", plan.online.len() as u64);
    r.param("senders", plan.senders.len() as u64);
    r.offered = total;
    r.sent = total - counters.overflow.load(Ordering::Relaxed);
    r.acked = counters.acked.load(Ordering::Relaxed);
    r.send_errors = counters.send_errors.load(Ordering::Relaxed);
    r.generator_overflow = counters.overflow.load(Ordering::Relaxed);
    r.delivered = counters.delivered.load(Ordering::Relaxed);
    r.offered_secs = offered_secs;
    r.delivered_per_s = r.delivered as f64 / elapsed;
    r.checks = lock(&totals.checks).clone();
    r.checks.lost = expected().saturating_sub(r.delivered);
    r.ack_latency = Percentiles::of(&lock(&totals.ack));
    r.delivery_latency = Percentiles::of(&lock(&totals.delivery));
    r.delivery_hist = Some(lock(&totals.delivery).clone());
    r.ack_hist = Some(lock(&totals.ack).clone());
    r.durable_writes = writes0.zip(writes1).map(|(a, b)| b.since(a));
    r.server_send = sends0
        .zip(sends1)
        .map(|(a, b)| b.since(&a))
        .filter(|h| h.count > 0);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        r.server_cpu_us = b.cpu_us - a.cpu_us;
        r.server_cpu_window_us = Some((a.cpu_us, b.cpu_us));
        let measured = r.delivered.saturating_sub(delivered0).max(1);
        r.server_cpu_us_per_msg = r.server_cpu_us as f64 / measured as f64;
        r.server_rss_after = b.rss_bytes;
    }
    Ok(r)
}

struct Sender {
    conn: Arc<Connection>,
    prefix: String,
    padding: String,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
    fanout: Arc<Fanout>,
}

/// Deliveries per acknowledged message, by target.
struct Fanout {
    convs: HashMap<ConvId, u64>,
    default: u64,
}

impl Fanout {
    fn of(&self, t: Target) -> u64 {
        match t {
            Target::To(_) => 1,
            Target::Conv(c) => self.convs.get(&c).copied().unwrap_or(self.default),
        }
    }
}

/// How many of `total` messages are due `elapsed_us` after the start: message k is due at
/// `k / rate`, so message 0 at once. (Counting only those due strictly before — one fewer —
/// sent each message one interval late and added `1 / rate` to every latency: 50 ms at
/// 20 messages/s, 3.3 ms at 300/s.)
fn due(elapsed_us: u64, rate: u64, total: u64) -> u64 {
    let before = (elapsed_us as u128 * rate as u128 / 1_000_000) as u64;
    before.saturating_add(1).min(total)
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<(u64, Target)>) {
        let mut local = hist();
        // Every message its own client_msg_id; `n` counts per target, which is what each
        // receiver checks the order of (per sender and conversation).
        let mut sent = 0u64;
        let mut per_target: HashMap<Target, u64> = HashMap::new();
        while let Some((t, target)) = rx.recv().await {
            let (to, conv) = match target {
                Target::To(u) => (Some(u), None),
                Target::Conv(c) => (None, Some(c)),
            };
            let n = per_target.get(&target).copied().unwrap_or(0);
            let req = SendRequest {
                to,
                conv,
                client_msg_id: format!("{}-{sent}", self.prefix),
                content: serde_json::json!({ "t": t, "n": n, "p": self.padding }),
                ..Default::default()
            };
            sent += 1;
            // Retries reuse the client_msg_id: a retry can never duplicate.
            let mut ok = false;
            for _ in 0..3 {
                if self
                    .conn
                    .request::<_, SendResponse>(cmd::SEND, &req)
                    .await
                    .is_ok()
                {
                    ok = true;
                    break;
                }
            }
            if ok {
                let _ = local.record(now_us().saturating_sub(t).max(1));
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .expected
                    .fetch_add(self.fanout.of(target), Ordering::Relaxed);
                per_target.insert(target, n + 1);
            } else {
                self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = lock(&self.totals.ack).add(&local);
    }
}

struct Receiver {
    me: UserId,
    follow: Option<ConvId>,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
    /// How to connect again when the server closes the connection (a slow consumer under
    /// overload is disconnected by design and catches up by pull, as a real client does).
    redial: (Transport, String, String),
    read_share: f64,
}

struct RecvState {
    cursor: u64,
    conv_cursor: u64,
    /// The next count expected from each sender in each conversation.
    expected: HashMap<(UserId, ConvId), u64>,
    hist: Histogram<u64>,
    warm: Histogram<u64>,
    checks: Checks,
    /// Conversations to mark read up to a place, after the signal at hand.
    reads: Vec<(ConvId, u64)>,
    rng: u64,
}

impl Receiver {
    async fn run(
        self,
        mut conn: Arc<Connection>,
        mut signals: mpsc::Receiver<Signal>,
        (draining, mut stop): (
            tokio::sync::watch::Receiver<bool>,
            tokio::sync::watch::Receiver<bool>,
        ),
    ) {
        let mut repair = tokio::time::interval(Duration::from_secs(1));
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut st = RecvState {
            cursor: 0,
            conv_cursor: 0,
            expected: HashMap::new(),
            hist: hist(),
            warm: hist(),
            checks: Checks::default(),
            reads: Vec::new(),
            rng: self.me.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        };
        // Skip what setup (or, on a kept store, earlier runs) left behind: start at the
        // inbox's head.
        let req = SyncRequest {
            after: 0,
            limit: Some(1),
            groups: false,
        };
        if let Ok(r) = conn.request::<_, SyncResponse>(cmd::SYNC, &req).await {
            st.cursor = r.head;
        }
        if let Some(conv) = self.follow {
            let req = HistoryRequest {
                conv,
                before: None,
                after: None,
                limit: Some(1),
            };
            if let Ok(h) = conn.request::<_, HistoryResponse>(cmd::HISTORY, &req).await {
                st.conv_cursor = h.messages.last().map_or(0, |m| m.conv_seq);
            }
        }
        // As the SDK's device does: an entry ahead of a gap is held for a moment, and
        // applied once the gap fills; only a gap that lasts costs a pull.
        let mut ahead = Reorder::default();
        loop {
            let wait = ahead.deadline();
            tokio::select! {
                s = signals.recv() => match s {
                    Some(Signal::Inbox { seq, entry }) => {
                        if seq <= st.cursor {
                            st.checks.stale_signals += 1;
                            continue;
                        }
                        let pull = match entry {
                            Some(e) if e.seq == st.cursor + 1 => {
                                self.apply(&mut st, *e);
                                false
                            }
                            Some(e) => !ahead.hold(*e),
                            None => true,
                        };
                        if pull {
                            ahead.clear();
                            if !self.pull_again(&conn, &mut st, &stop, false).await {
                                break;
                            }
                        }
                        while let Some(e) = ahead.next_after(st.cursor) {
                            self.apply(&mut st, e);
                        }
                        self.mark_read(&conn, &mut st);
                    }
                    Some(Signal::Group { conv, seq, messages }) if Some(conv) == self.follow && seq > st.conv_cursor => {
                        // Apply what came along if it continues our cursor; pull otherwise.
                        let continues = messages.first().is_some_and(|m| m.conv_seq <= st.conv_cursor + 1)
                            && messages.last().is_some_and(|m| m.conv_seq == seq);
                        if continues {
                            for m in &messages {
                                if m.conv_seq > st.conv_cursor {
                                    st.conv_cursor = m.conv_seq;
                                    if self.check(&mut st, m) {
                                        st.checks.inline += 1;
                                    }
                                }
                            }
                        } else if !self.pull_again(&conn, &mut st, &stop, true).await {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => {
                        // Closed by the server: connect again, then catch up from the cursor.
                        let Some((c, s)) = self.redial(&stop).await else {
                            break;
                        };
                        st.checks.reconnects += 1;
                        ahead.clear();
                        (conn, signals) = (Arc::new(c), s);
                        if !self.catch_up(&conn, &mut st, &stop).await {
                            break;
                        }
                    }
                },
                _ = tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)), if wait.is_some() => {
                    ahead.clear();
                    if !self.pull_again(&conn, &mut st, &stop, false).await {
                        break;
                    }
                }
                // Once a second while the run drains: a repair pull, as a real client makes
                // periodically (`Device`'s repair interval).
                _ = repair.tick(), if *draining.borrow() => {
                    ahead.clear();
                    st.checks.repairs += 1;
                    if !self.catch_up(&conn, &mut st, &stop).await {
                        break;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        let _ = lock(&self.totals.delivery).add(&st.hist);
        let _ = lock(&self.totals.warmup).add(&st.warm);
        let mut c = lock(&self.totals.checks);
        c.inline += st.checks.inline;
        c.pulled += st.checks.pulled;
        c.stale_signals += st.checks.stale_signals;
        c.duplicated += st.checks.duplicated;
        c.out_of_order += st.checks.out_of_order;
        c.pulls += st.checks.pulls;
        c.failed_pulls += st.checks.failed_pulls;
        c.reconnects += st.checks.reconnects;
        c.repairs += st.checks.repairs;
    }

    /// Everything after the cursors: the inbox, then the followed group. False when the
    /// run stopped first.
    async fn catch_up(
        &self,
        conn: &Connection,
        st: &mut RecvState,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        self.pull_again(conn, st, stop, false).await
            && (self.follow.is_none() || self.pull_again(conn, st, stop, true).await)
    }

    /// A new connection, tried every 100 ms until the run stops.
    async fn redial(
        &self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Option<(Connection, mpsc::Receiver<Signal>)> {
        let (transport, address, token) = &self.redial;
        while !*stop.borrow() {
            if let Ok(pair) = Connection::connect(*transport, address, token).await {
                return Some(pair);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// A pull (of the inbox, or of the followed group when `group`) made again after a
    /// failure — a timeout or an error answer under overload — from the cursor, which a
    /// failed pull leaves where the last applied entry put it; a receiver that gave up
    /// instead would count everything after as lost. False when the run stopped first.
    async fn pull_again(
        &self,
        conn: &Connection,
        st: &mut RecvState,
        stop: &tokio::sync::watch::Receiver<bool>,
        group: bool,
    ) -> bool {
        loop {
            let pulled = match (group, self.follow) {
                (true, Some(conv)) => self.pull_group(conn, st, conv).await,
                _ => self.pull(conn, st, true).await,
            };
            match pulled {
                Ok(()) => return true,
                Err(e) => {
                    st.checks.failed_pulls += 1;
                    static SAID: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if !SAID.swap(true, Ordering::Relaxed) {
                        eprintln!("a receiver's pull failed ({e}); trying again from its cursor");
                    }
                    if *stop.borrow() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// One delivered message: from another user, exactly the next of that sender's count
    /// in that conversation. True if it was one of the run's messages, delivered.
    fn check(&self, st: &mut RecvState, m: &Message) -> bool {
        if m.sender == self.me {
            return false;
        }
        let MessageBody::Content { content } = &m.body else {
            return false;
        };
        let (Some(t), Some(n)) = (content["t"].as_u64(), content["n"].as_u64()) else {
            return false;
        };
        let expected = st.expected.entry((m.sender, m.conv)).or_insert(0);
        if n < *expected {
            st.checks.duplicated += 1;
            return false;
        }
        if n > *expected {
            st.checks.out_of_order += 1;
        }
        *expected = n + 1;
        let latency = now_us().saturating_sub(t).max(1);
        let _ = match t >= self.totals.steady_from.load(Ordering::Relaxed) {
            true => st.hist.record(latency),
            false => st.warm.record(latency),
        };
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        if self.read_share > 0.0 {
            // xorshift64: whether this receiver reads the conversation now.
            st.rng ^= st.rng << 13;
            st.rng ^= st.rng >> 7;
            st.rng ^= st.rng << 17;
            if (st.rng >> 11) as f64 / (1u64 << 53) as f64 <= self.read_share {
                st.reads.push((m.conv, m.conv_seq));
            }
        }
        true
    }

    /// The inbox entry right after the cursor, from a signal.
    fn apply(&self, st: &mut RecvState, e: InboxEntry) {
        st.cursor = e.seq;
        if let Event::Message { message } = e.event
            && self.check(st, &message)
        {
            st.checks.inline += 1;
        }
    }

    /// Sends the READs `check` chose, without waiting for their answers.
    /// At most `READS_IN_FLIGHT` at once across the run: a READ chosen while that many
    /// wait for their answers (a stalled server) is not made.
    fn mark_read(&self, conn: &Arc<Connection>, st: &mut RecvState) {
        for (conv, seq) in st.reads.drain(..) {
            let pending = &self.counters.reads_in_flight;
            if pending.fetch_add(1, Ordering::Relaxed) >= READS_IN_FLIGHT {
                pending.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let (conn, counters) = (conn.clone(), self.counters.clone());
            counters.reads.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let req = ReadRequest { conv, seq };
                let _ = conn.request::<_, ReadResponse>(cmd::READ, &req).await;
                counters.reads_in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    async fn pull(
        &self,
        conn: &Connection,
        st: &mut RecvState,
        measure: bool,
    ) -> Result<(), String> {
        st.checks.pulls += 1;
        loop {
            let req = SyncRequest {
                after: st.cursor,
                limit: Some(500),
                groups: false,
            };
            let resp: SyncResponse = conn
                .request(cmd::SYNC, &req)
                .await
                .map_err(|e| e.to_string())?;
            for e in resp.entries {
                if e.seq == st.cursor + 1 {
                    st.cursor = e.seq;
                    if let (true, Event::Message { message }) = (measure, &e.event)
                        && self.check(st, message)
                    {
                        st.checks.pulled += 1;
                    }
                }
            }
            if !resp.has_more {
                return Ok(());
            }
        }
    }

    async fn pull_group(
        &self,
        conn: &Connection,
        st: &mut RecvState,
        conv: ConvId,
    ) -> Result<(), String> {
        st.checks.pulls += 1;
        loop {
            let req = HistoryRequest {
                conv,
                before: None,
                after: Some(st.conv_cursor),
                limit: Some(500),
            };
            let resp: HistoryResponse = conn
                .request(cmd::HISTORY, &req)
                .await
                .map_err(|e| e.to_string())?;
            for m in &resp.messages {
                if m.conv_seq > st.conv_cursor {
                    st.conv_cursor = m.conv_seq;
                    if self.check(st, m) {
                        st.checks.pulled += 1;
                    }
                }
            }
            if !resp.has_more {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn a_message_is_due_at_its_scheduled_time() {
        // 20 messages/s: message k at k × 50 ms.
        assert_eq!(due(0, 20, 100), 1, "message 0 goes at the start");
        assert_eq!(due(49_999, 20, 100), 1);
        assert_eq!(due(50_000, 20, 100), 2, "message 1 at 50 ms, not 100");
        assert_eq!(due(10_000_000, 20, 100), 100, "never past the total");
        assert_eq!(due(999, 10_000, 1_000_000), 10);
    }
}
