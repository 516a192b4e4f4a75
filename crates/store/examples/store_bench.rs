//! Measures the embedded store the way the IM layer uses it: durable 1:1 commits (one
//! message, two inbox entries, dedup key), alone and with many concurrent committers
//! (group commit), and inbox range reads by sequence.
//!
//! cargo run --release -p xinge-store --example store_bench -- [users] [messages]
//!
//! Besides the rates it prints the process's CPU time per message in each concurrent
//! phase (user + system, from /proc/self/stat): run it pinned to one core
//! (`taskset -c 0`) to compare builds; it moves much less with noise than the rates do.

use std::sync::Arc;
use std::time::Instant;
use xinge_core::{ConvId, UserId};
use xinge_proto::api::MessageBody;
use xinge_store::fjall::{FjallOptions, FjallStore};
use xinge_store::{Commit, NewMessage, NewUser, Store};

fn commit(a: UserId, b: UserId, cmid: String) -> Commit {
    let conv = ConvId::direct(a, b);
    Commit {
        dedup: Some((a, cmid.clone())),
        message: Some(NewMessage {
            conv,
            sender: a,
            sender_device: None,
            client_msg_id: cmid,
            sent_at_ms: 1,
            mentions: vec![],
            mention_all: false,
            // ~200 bytes of content, as in the engine comparison.
            body: MessageBody::Content {
                content: serde_json::json!({ "text": "x".repeat(190) }),
            },
        }),
        message_to: vec![a, b],
        ..Commit::default()
    }
}

/// This process's user + system CPU time so far, in microseconds (Linux; 0 elsewhere).
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces):
    // utime and stime are the 12th and 13th of them, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks * 10_000
}

/// What ends the run early: the store refusing an operation, or a committer task dying.
type BenchError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let mut args = std::env::args().skip(1);
    let users: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(FjallStore::open(dir.path(), FjallOptions::default())?);
    let mut ids = Vec::new();
    for i in 0..users {
        let u = store
            .create_user(NewUser {
                username: format!("u{i}"),
                display_name: "u".into(),
                password_hash: "h".into(),
                created_at_ms: 0,
                external_id: None,
                outbox: vec![],
            })
            .await?;
        ids.push(u.id);
    }
    let pick = |i: u64| {
        (
            ids[(i % users) as usize],
            ids[((i * 7 + 1) % users) as usize],
        )
    };

    let seq_n = (n / 10).max(100);
    let t = Instant::now();
    for i in 0..seq_n {
        let (a, b) = pick(i);
        store.commit(commit(a, b, format!("s{i}"))).await?;
    }
    let one = seq_n as f64 / t.elapsed().as_secs_f64();
    println!("one committer:   {seq_n} messages, {one:.0} msgs/s (one fdatasync per message)");

    for concurrency in [16u64, 64, 256] {
        let t = Instant::now();
        let cpu = cpu_us();
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let store = store.clone();
            let ids = ids.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    let (a, b) = (
                        ids[(i % users) as usize],
                        ids[((i * 7 + 1) % users) as usize],
                    );
                    store
                        .commit(commit(a, b, format!("c{concurrency}-{i}")))
                        .await?;
                    i += concurrency;
                }
                Ok::<(), xinge_store::StoreError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let per = (cpu_us() - cpu) as f64 / n as f64;
        println!(
            "{concurrency:>3} committers:  {n} messages, {rate:.0} msgs/s (group commit), {per:.1} µs CPU per message"
        );
    }

    let t = Instant::now();
    let mut rows = 0;
    for &u in &ids {
        let mut after = 0;
        loop {
            let (page, head) = store.inbox(u, after, 500).await?;
            rows += page.len();
            after = page.last().map_or(head, |e| e.seq);
            if after >= head {
                break;
            }
        }
    }
    let rate = rows as f64 / t.elapsed().as_secs_f64();
    println!("inbox range reads: {rows} entries, {rate:.0} entries/s (each with its message)");
    Ok(())
}
