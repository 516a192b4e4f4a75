//! Measures the embedded store the way the IM layer uses it: durable 1:1 commits (one
//! message, two inbox entries, dedup key), alone and with many concurrent committers
//! (group commit), and inbox range reads by sequence.
//!
//! cargo run --release -p xinge-store --example store_bench -- [users] [messages]

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

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let users: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FjallStore::open(dir.path(), FjallOptions::default()).unwrap());
    let mut ids = Vec::new();
    for i in 0..users {
        let u = store
            .create_user(NewUser {
                username: format!("u{i}"),
                display_name: "u".into(),
                password_hash: "h".into(),
                created_at_ms: 0,
            })
            .await
            .unwrap();
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
        store.commit(commit(a, b, format!("s{i}"))).await.unwrap();
    }
    let one = seq_n as f64 / t.elapsed().as_secs_f64();
    println!("one committer:   {seq_n} messages, {one:.0} msgs/s (one fdatasync per message)");

    for concurrency in [16u64, 64, 256] {
        let t = Instant::now();
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
                        .await
                        .unwrap();
                    i += concurrency;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        println!("{concurrency:>3} committers:  {n} messages, {rate:.0} msgs/s (group commit)");
    }

    let t = Instant::now();
    let mut rows = 0;
    for &u in &ids {
        let mut after = 0;
        loop {
            let (page, head) = store.inbox(u, after, 500).await.unwrap();
            rows += page.len();
            after = page.last().map_or(head, |e| e.seq);
            if after >= head {
                break;
            }
        }
    }
    let rate = rows as f64 / t.elapsed().as_secs_f64();
    println!("inbox range reads: {rows} entries, {rate:.0} entries/s (each with its message)");
}
