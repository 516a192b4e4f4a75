//! Several load-generator processes: the coordinator sets up users and the plan, writes
//! them to a file, starts `xinge bench worker` processes that each run every n-th user,
//! and merges their results (counters added, HDR histograms merged). Workers inherit the
//! coordinator's CPU affinity, so `taskset -c 1 xinge bench …` pins them all.

use crate::BenchError;
use crate::report::{self, BenchResult, Percentiles};
use crate::server::Server;
use crate::setup::BenchUser;
use crate::traffic::{self, Load, Plan};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Stdio;
use xinge_client::{Http, Transport};
use xinge_core::UserId;

#[derive(Serialize, Deserialize)]
struct WorkerPlan {
    base: String,
    tcp: String,
    ws: String,
    /// The server's pid, for workers to sample its CPU around exactly their run.
    pid: Option<u32>,
    transport: String,
    users: Vec<(u64, String)>,
    plan: Plan,
    run_id: String,
    load: Load,
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Ws => "ws",
    }
}

/// Runs a plan here (one worker) or across `workers` processes.
pub async fn drive(
    srv: &Server,
    transport: Transport,
    users: &[BenchUser],
    mut plan: Plan,
    run_id: &str,
    load: Load,
    workers: usize,
) -> Result<BenchResult, BenchError> {
    if workers <= 1 {
        return traffic::run(srv, transport, users, plan, run_id, load).await;
    }
    // Everyone connects first; sending starts together, a little later.
    plan.start_at_ms = Some(xinge_core::now_ms() + 3_000 + 2 * users.len() as u64);
    let file = tempfile::NamedTempFile::new()?;
    let wp = WorkerPlan {
        base: srv.base.clone(),
        tcp: srv.tcp.clone(),
        ws: srv.ws.clone(),
        pid: srv.pid(),
        transport: transport_name(transport).into(),
        users: users
            .iter()
            .map(|u| (u.id.0, u.http.token().unwrap_or_default().to_owned()))
            .collect(),
        plan: plan.clone(),
        run_id: run_id.into(),
        load,
    };
    std::fs::write(
        file.path(),
        serde_json::to_vec(&wp).map_err(|e| BenchError::Setup(e.to_string()))?,
    )?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for shard in 0..workers {
        let child = tokio::process::Command::new(&exe)
            .args(["bench", "worker", "--plan-file"])
            .arg(file.path())
            .args([
                "--shard",
                &shard.to_string(),
                "--shards",
                &workers.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let mut parts = Vec::new();
    for child in children {
        let out = child.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        let part: BenchResult = serde_json::from_str(last)
            .map_err(|e| BenchError::Setup(format!("worker result: {e}: {last:?}")))?;
        parts.push(part);
    }
    let mut r = BenchResult::new(&plan.scenario, transport);
    r.params = parts[0].params.clone();
    r.param("workers", workers as u64);
    r.param("senders", plan.senders.len() as u64);
    r.param("online", plan.online.len() as u64);
    r.param("rate", load.rate);
    let (mut ack, mut delivery) = (
        None::<hdrhistogram::Histogram<u64>>,
        None::<hdrhistogram::Histogram<u64>>,
    );
    for p in &parts {
        r.offered += p.offered;
        r.sent += p.sent;
        r.acked += p.acked;
        r.delivered += p.delivered;
        r.send_errors += p.send_errors;
        r.generator_overflow += p.generator_overflow;
        r.checks.duplicated += p.checks.duplicated;
        r.checks.out_of_order += p.checks.out_of_order;
        r.checks.pulls += p.checks.pulls;
        r.checks.failed_pulls += p.checks.failed_pulls;
        r.checks.reconnects += p.checks.reconnects;
        r.checks.repairs += p.checks.repairs;
        r.checks.inline += p.checks.inline;
        r.checks.pulled += p.checks.pulled;
        r.checks.stale_signals += p.checks.stale_signals;
        r.reads += p.reads;
        r.offered_secs = r.offered_secs.max(p.offered_secs);
        for (acc, b64) in [
            (&mut ack, &p.ack_hist_b64),
            (&mut delivery, &p.delivery_hist_b64),
        ] {
            let h = b64.as_deref().and_then(report::hist_from_b64);
            match (acc.as_mut(), h) {
                (Some(a), Some(h)) => {
                    let _ = a.add(&h);
                }
                (None, Some(h)) => *acc = Some(h),
                _ => {}
            }
        }
    }
    r.checks.lost = (r.acked * plan.fanout).saturating_sub(r.delivered);
    // Over the sending time (the workers' drain waits for quiet and would understate it).
    r.delivered_per_s = r.delivered as f64 / r.offered_secs.max(0.001);
    if let Some(h) = &ack {
        r.ack_latency = Percentiles::of(h);
    }
    if let Some(h) = &delivery {
        r.delivery_latency = Percentiles::of(h);
    }
    r.delivery_hist = delivery;
    // From the first worker's start to the last worker's drain, as the workers sampled it.
    let windows: Vec<(u64, u64)> = parts
        .iter()
        .filter_map(|p| p.server_cpu_window_us)
        .collect();
    if let (Some(start), Some(end)) = (
        windows.iter().map(|w| w.0).min(),
        windows.iter().map(|w| w.1).max(),
    ) {
        r.server_cpu_us = end - start;
        r.server_cpu_us_per_msg = r.server_cpu_us as f64 / r.delivered.max(1) as f64;
    }
    r.server_rss_after = parts.iter().map(|p| p.server_rss_after).max().unwrap_or(0);
    // Every worker read the same store over nearly the same window.
    r.durable_writes = parts.iter().filter_map(|p| p.durable_writes).max();
    r.server_send = parts
        .iter()
        .filter_map(|p| p.server_send.clone())
        .max_by_key(|h| h.count);
    Ok(r)
}

/// `xinge bench worker`: runs shard `shard` of the plan and prints its result (one JSON
/// line, histograms included) on stdout.
pub async fn worker(
    plan_file: &Path,
    shard: usize,
    shards: usize,
) -> Result<BenchResult, BenchError> {
    let wp: WorkerPlan = serde_json::from_slice(&std::fs::read(plan_file)?)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let transport = if wp.transport == "ws" {
        Transport::Ws
    } else {
        Transport::Tcp
    };
    let srv = Server::addresses(wp.base.clone(), wp.tcp.clone(), wp.ws.clone(), wp.pid);
    let http = Http::new(&wp.base);
    let users: Vec<BenchUser> = wp
        .users
        .iter()
        .map(|(id, token)| BenchUser {
            id: UserId(*id),
            http: http.with_token(token.clone()),
        })
        .collect();
    let plan = wp.plan.shard(shard, shards);
    let load = Load {
        rate: (wp.load.rate / shards as u64).max(1),
        ..wp.load
    };
    let mut r = traffic::run(
        &srv,
        transport,
        &users,
        plan,
        &format!("{}w{shard}", wp.run_id),
        load,
    )
    .await?;
    r.delivery_hist_b64 = r.delivery_hist.as_ref().and_then(report::hist_to_b64);
    r.ack_hist_b64 = r.ack_hist.as_ref().and_then(report::hist_to_b64);
    println!(
        "{}",
        serde_json::to_string(&r).map_err(|e| BenchError::Setup(e.to_string()))?
    );
    // The coordinator reports; a worker's own report is not written.
    std::process::exit(0);
}
