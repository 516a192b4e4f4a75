//! The all-in-one server on PostgreSQL instead of the embedded store: the same delivery
//! guarantees end to end. Requires PostgreSQL under CI; elsewhere skips, saying so.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use xinge_client::Transport;
use xinge_client::api::{Event, SendRequest};
use xinge_core::ConvId;

fn pg_url() -> String {
    std::env::var("XINGE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn pg_reachable(test: &str) -> bool {
    match tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED {test}: PostgreSQL is not reachable at {} ({e}); CI requires it",
                pg_url()
            );
            false
        }
        Err(e) => panic!(
            "PostgreSQL is required under CI and is not reachable at {}: {e}",
            pg_url()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_groups_on_postgres_deliver_exactly_once_in_order() {
    if !pg_reachable("chat_and_groups_on_postgres_deliver_exactly_once_in_order").await {
        return;
    }
    let schema = format!("xinge_e2e_{}", std::process::id());
    let s2 = schema.clone();
    let server = start(move |c| {
        c.store.postgres_url = Some(pg_url());
        c.store.postgres_schema = s2;
    })
    .await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (bob_phone, _) = server.login("bob", "phone").await;
    befriend(&alice, a, &bob, b).await;
    let a1 = server.device(&alice, Transport::Tcp);
    let b1 = server.device(&bob, Transport::Ws);
    let b2 = server.device(&bob_phone, Transport::Tcp);
    for d in [&a1, &b1, &b2] {
        assert!(d.wait_connected(Duration::from_secs(30)).await);
    }
    let send = |to, cmid: String| SendRequest {
        to: Some(to),
        client_msg_id: cmid,
        content: serde_json::json!({}),
        ..Default::default()
    };
    let (x, y) = tokio::join!(
        async {
            for i in 0..100 {
                a1.send(&send(b, format!("a{i}"))).await.unwrap();
            }
        },
        async {
            for i in 0..100 {
                b2.send(&send(a, format!("b{i}"))).await.unwrap();
            }
        }
    );
    let _ = (x, y);
    let again = a1.send(&send(b, "a7".into())).await.unwrap();
    assert!(again.duplicate, "idempotent on PostgreSQL too");
    let conv = ConvId::direct(a, b);
    for dev in [&a1, &b1, &b2] {
        let mut seen = HashSet::new();
        let mut last_seq = 0;
        let mut last_conv_seq = 0;
        while seen.len() < 200 {
            let e = dev
                .next_event(Duration::from_secs(30))
                .await
                .expect("every message arrives");
            assert_eq!(e.seq, last_seq + 1);
            last_seq = e.seq;
            if let Event::Message { message } = e.event
                && message.conv == conv
            {
                assert_eq!(message.conv_seq, last_conv_seq + 1, "in conv_seq order");
                last_conv_seq = message.conv_seq;
                assert!(seen.insert(message.msg_id), "exactly once");
            }
        }
    }
    // A small group, and the who-read list, on PostgreSQL.
    let g = alice.create_group("pg", &[b]).await.unwrap();
    let sent = alice
        .send(&SendRequest {
            conv: Some(g.conv),
            client_msg_id: "g1".into(),
            content: serde_json::json!({}),
            ..Default::default()
        })
        .await
        .unwrap();
    bob.mark_read(g.conv, sent.conv_seq).await.unwrap();
    assert_eq!(
        alice
            .read_state(g.conv, sent.conv_seq)
            .await
            .unwrap()
            .read_by,
        vec![b]
    );
    server.stop().await;
    let store = xinge_store::pg::PgStore::connect(&xinge_store::pg::PgOptions {
        url: pg_url(),
        schema: schema.clone(),
        pool_size: 1,
        node_id: 9,
    })
    .await
    .unwrap();
    store.drop_schema(&schema).await.unwrap();
}
