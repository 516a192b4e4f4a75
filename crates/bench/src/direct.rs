//! `direct`: pairs of friends, each user on its own long connection, exchanging 1:1
//! messages at an offered rate.
//!
//! The generator schedules message k at `start + k / rate` and stamps it with that time, so
//! a slow server cannot hide its latency by slowing the generator (no coordinated
//! omission). Each sender sends its messages in order on its connection; each receiver
//! checks that its peer's counter arrives exactly once and in order.

use crate::report::{BenchResult, Checks};
use crate::server::Server;
use crate::{BenchError, setup};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use xinge_client::api::{
    Event, InboxEntry, SendRequest, SendResponse, Signal, SyncRequest, SyncResponse,
};
use xinge_client::{Connection, Transport};
use xinge_core::UserId;
use xinge_proto::cmd;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    send_errors: AtomicU64,
    delivered: AtomicU64,
    overflow: AtomicU64,
}

struct Totals {
    ack: Mutex<Histogram<u64>>,
    delivery: Mutex<Histogram<u64>>,
    checks: Mutex<Checks>,
}

pub async fn run(
    srv: &Server,
    transport: Transport,
    users: usize,
    rate: u64,
    secs: u64,
    size: usize,
) -> Result<BenchResult, BenchError> {
    let users = users.max(2) & !1;
    eprintln!("direct: creating {users} users in {} pairs", users / 2);
    let (run_id, list) = setup::users(&srv.base, users).await?;
    setup::pair_up(&list).await?;
    let address = match transport {
        Transport::Tcp => srv.tcp.clone(),
        Transport::Ws => srv.ws.clone(),
    };
    let counters = Arc::new(Counters::default());
    let totals = Arc::new(Totals {
        ack: Mutex::new(hist()),
        delivery: Mutex::new(hist()),
        checks: Mutex::new(Checks::default()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut senders = Vec::with_capacity(users);
    let mut tasks = tokio::task::JoinSet::new();
    let mut receivers = tokio::task::JoinSet::new();
    let padding = "x".repeat(size);
    for (i, u) in list.iter().enumerate() {
        let peer = list[i ^ 1].id;
        let token = u.http.token().unwrap_or_default().to_owned();
        let (conn, signals) = Connection::connect(transport, &address, &token)
            .await
            .map_err(|e| BenchError::Setup(format!("connect: {e}")))?;
        let conn = Arc::new(conn);
        let (tx, rx) = mpsc::channel::<u64>(4096);
        senders.push(tx);
        tasks.spawn(sender(
            conn.clone(),
            rx,
            peer,
            format!("{run_id}-{i}"),
            padding.clone(),
            counters.clone(),
            totals.clone(),
        ));
        receivers.spawn(receiver(
            conn,
            signals,
            peer,
            counters.clone(),
            totals.clone(),
            stop_rx.clone(),
        ));
    }

    let total = rate * secs;
    eprintln!("direct: offering {rate} msgs/s for {secs} s ({total} messages)");
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cpu0 = srv.sample();
    let start = now_us();
    let mut scheduled = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut last_report = Instant::now();
    while scheduled < total {
        tick.tick().await;
        let due = ((now_us() - start) as u128 * rate as u128 / 1_000_000) as u64;
        while scheduled < due.min(total) {
            let t = start + (scheduled as u128 * 1_000_000 / rate as u128) as u64;
            if senders[(scheduled % users as u64) as usize]
                .try_send(t)
                .is_err()
            {
                counters.overflow.fetch_add(1, Ordering::Relaxed);
            }
            scheduled += 1;
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
    // Drain: wait until every acknowledged message was delivered (or 10 s pass).
    let drain_start = Instant::now();
    while counters.delivered.load(Ordering::Relaxed) < counters.acked.load(Ordering::Relaxed)
        && drain_start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = (now_us() - start) as f64 / 1e6;
    let cpu1 = srv.sample();
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    while receivers.join_next().await.is_some() {}

    let mut r = BenchResult::new("direct", transport);
    r.param("users", users as u64);
    r.param("rate", rate);
    r.param("duration_secs", secs);
    r.param("size", size as u64);
    r.offered = total;
    r.sent = total - counters.overflow.load(Ordering::Relaxed);
    r.acked = counters.acked.load(Ordering::Relaxed);
    r.send_errors = counters.send_errors.load(Ordering::Relaxed);
    r.generator_overflow = counters.overflow.load(Ordering::Relaxed);
    r.delivered = counters.delivered.load(Ordering::Relaxed);
    r.offered_secs = offered_secs;
    r.delivered_per_s = r.delivered as f64 / elapsed;
    r.checks = totals
        .checks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    r.checks.lost = r.acked.saturating_sub(r.delivered);
    r.ack_latency =
        crate::report::Percentiles::of(&totals.ack.lock().unwrap_or_else(|p| p.into_inner()));
    r.delivery_latency =
        crate::report::Percentiles::of(&totals.delivery.lock().unwrap_or_else(|p| p.into_inner()));
    r.delivery_hist = Some(
        totals
            .delivery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    );
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        r.server_cpu_us = b.cpu_us - a.cpu_us;
        r.server_cpu_us_per_msg = r.server_cpu_us as f64 / r.delivered.max(1) as f64;
        r.server_rss_after = b.rss_bytes;
    }
    Ok(r)
}

async fn sender(
    conn: Arc<Connection>,
    mut rx: mpsc::Receiver<u64>,
    peer: UserId,
    prefix: String,
    padding: String,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
) {
    let mut local = hist();
    let mut n = 0u64;
    while let Some(t) = rx.recv().await {
        let req = SendRequest {
            to: Some(peer),
            conv: None,
            client_msg_id: format!("{prefix}-{n}"),
            content: serde_json::json!({ "t": t, "n": n, "p": padding }),
            ..Default::default()
        };
        // Retries reuse the client_msg_id: a retry can never duplicate.
        let mut ok = false;
        for _ in 0..3 {
            if conn
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
            counters.acked.fetch_add(1, Ordering::Relaxed);
            n += 1;
        } else {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = totals
        .ack
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(&local);
}

async fn receiver(
    conn: Arc<Connection>,
    mut signals: mpsc::Receiver<Signal>,
    peer: UserId,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut st = RecvState {
        cursor: 0,
        expected: 0,
        hist: hist(),
        checks: Checks::default(),
    };
    // Skip what setup left in the inbox (friend events).
    let _ = pull(&conn, &mut st, peer, &counters, false).await;
    loop {
        tokio::select! {
            s = signals.recv() => match s {
                Some(Signal::Inbox { seq, entry }) => {
                    if seq <= st.cursor {
                        continue;
                    }
                    match entry {
                        Some(e) if e.seq == st.cursor + 1 => st.apply(*e, peer, &counters, true),
                        _ => {
                            if pull(&conn, &mut st, peer, &counters, true).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    let _ = totals
        .delivery
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(&st.hist);
    let mut c = totals.checks.lock().unwrap_or_else(|p| p.into_inner());
    c.duplicated += st.checks.duplicated;
    c.out_of_order += st.checks.out_of_order;
    c.pulls += st.checks.pulls;
}

struct RecvState {
    cursor: u64,
    expected: u64,
    hist: Histogram<u64>,
    checks: Checks,
}

impl RecvState {
    fn apply(&mut self, e: InboxEntry, peer: UserId, counters: &Counters, measure: bool) {
        self.cursor = e.seq;
        let Event::Message { message } = e.event else {
            return;
        };
        if message.sender != peer || !measure {
            return;
        }
        let xinge_client::api::MessageBody::Content { content } = message.body else {
            return;
        };
        let (Some(t), Some(n)) = (content["t"].as_u64(), content["n"].as_u64()) else {
            return;
        };
        if n < self.expected {
            self.checks.duplicated += 1;
            return;
        }
        if n > self.expected {
            self.checks.out_of_order += 1;
        }
        self.expected = n + 1;
        let _ = self.hist.record(now_us().saturating_sub(t).max(1));
        counters.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

async fn pull(
    conn: &Connection,
    st: &mut RecvState,
    peer: UserId,
    counters: &Counters,
    measure: bool,
) -> Result<(), ()> {
    st.checks.pulls += 1;
    loop {
        let resp: SyncResponse = conn
            .request(
                cmd::SYNC,
                &SyncRequest {
                    after: st.cursor,
                    limit: Some(500),
                    groups: false,
                },
            )
            .await
            .map_err(drop)?;
        for e in resp.entries {
            if e.seq == st.cursor + 1 {
                st.apply(e, peer, counters, measure);
            }
        }
        if !resp.has_more {
            return Ok(());
        }
    }
}
