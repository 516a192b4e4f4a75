//! The after-events webhook against a real local receiver that checks every request's
//! signature: messages sent, recalled and deleted, group changes and friendships reach the
//! app's server in the order they happened, each with its own id; a receiver that fails is
//! retried, then its events become dead letters that the admin API lists and replays; and
//! events written before a `kill -9` of the server are delivered after its restart.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::webhooks::{configure, receiver, until_events};
use common::*;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;
use xinge_client::api::SendRequest;
use xinge_core::UserId;

fn text(to: UserId, id: &str) -> SendRequest {
    serde_json::from_value(json!({"to": to, "client_msg_id": id, "content": {"text": id}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_app_in_order_and_failed_ones_wait_as_dead_letters() {
    let (url, r) = receiver().await;
    let server = start(|c| {
        configure(c, &url);
        with_admin(c);
    })
    .await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(alice.send(&text(b, &format!("m{i}"))).await.unwrap());
    }
    let recall = xinge_client::api::RecallRequest {
        conv: sent[19].conv,
        conv_seq: sent[19].conv_seq,
        client_msg_id: "r".into(),
    };
    alice.recall(&recall).await.unwrap();
    let admin_base = server.admin.clone().unwrap();
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{admin_base}/admin/v1/conversations/{}/messages/3",
            sent[0].conv
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    alice.create_group("team", &[b]).await.unwrap();

    // friend.added, 20 sent, 1 recalled, 1 deleted, 1 group change.
    let events = until_events(&r, 24).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "friend.added");
    assert!(kinds[1..21].iter().all(|k| *k == "message.sent"));
    assert_eq!(
        &kinds[21..],
        ["message.recalled", "message.deleted", "group.changed"]
    );
    let seqs: Vec<u64> = events[1..21]
        .iter()
        .map(|e| e["data"]["message"]["conv_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<_>>(),
        "in the order they happened"
    );
    assert_eq!(events[1]["data"]["message"]["content"]["text"], "m0");
    assert_eq!(events[22]["data"]["conv_seq"], 3);
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), events.len(), "each its own id");
    assert!(events.iter().all(|e| e["at_ms"].as_u64().unwrap() > 0));

    // The receiver goes down: retried, then dead letters; sends never wait for it.
    r.failing.store(true, Ordering::Relaxed);
    let before = *r.requests.lock().unwrap();
    alice.send(&text(b, "while-down")).await.unwrap();
    let listed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v: Value = reqwest::Client::new()
                .get(format!("{admin_base}/admin/v1/webhooks/dead-letters"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !v["dead_letters"].as_array().unwrap().is_empty() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a dead letter after the attempts");
    assert_eq!(
        *r.requests.lock().unwrap() - before,
        3,
        "max_attempts requests"
    );
    let dead = &listed["dead_letters"][0];
    assert_eq!(
        dead["event"]["data"]["message"]["content"]["text"],
        "while-down"
    );
    assert!(dead["error"].as_str().unwrap().contains("500"), "{dead}");
    // Back up and replayed: delivered.
    r.failing.store(false, Ordering::Relaxed);
    let id = dead["id"].as_u64().unwrap();
    let replay = format!("{admin_base}/admin/v1/webhooks/dead-letters/{id}/replay");
    let resp = reqwest::Client::new()
        .post(&replay)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = until_events(&r, 25).await;
    assert_eq!(
        events[24]["data"]["message"]["content"]["text"],
        "while-down"
    );
    let resp = reqwest::Client::new()
        .post(&replay)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "replayed once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_before_a_kill_9_are_delivered_after_the_restart() {
    let (url, r) = receiver().await;
    r.failing.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    configure(&mut cfg, &url);
    // Retried slowly, so that the events are still in the outbox when the server dies.
    cfg.webhooks.after.backoff_ms = 60_000;
    cfg.webhooks.after.backoff_max_ms = 60_000;
    let mut server = common::procs::serve(dir.path(), &cfg, "127.0.0.1:0", "127.0.0.1:0");
    let base = format!("http://{}", server.http);
    let login = |name: &'static str| {
        let base = base.clone();
        async move {
            let http = xinge_client::Http::new(base);
            http.register(name, PASSWORD).await.unwrap();
            let (h, resp) = http.login(name, PASSWORD, "laptop").await.unwrap();
            (h, resp.user_id)
        }
    };
    let (alice, a) = login("alice").await;
    let (bob, b) = login("bob").await;
    befriend(&alice, a, &bob, b).await;
    for i in 0..30 {
        alice.send(&text(b, &format!("k{i}"))).await.unwrap();
    }
    // The first delivery was tried (and refused) before the kill.
    tokio::time::timeout(Duration::from_secs(10), async {
        while *r.requests.lock().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    server.kill9();
    r.failing.store(false, Ordering::Relaxed);
    let _server = common::procs::serve(dir.path(), &cfg, "127.0.0.1:0", "127.0.0.1:0");
    let events = until_events(&r, 31).await;
    let texts: Vec<&str> = events[1..]
        .iter()
        .map(|e| e["data"]["message"]["content"]["text"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    assert_eq!(texts, want, "every event, once, in order");
    assert_eq!(*r.bad_signatures.lock().unwrap(), 0, "every request signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_presence_are_told_when_asked_for() {
    let (url, r) = receiver().await;
    let server = start(|c| {
        configure(c, &url);
        with_admin(c);
        c.webhooks.after.events = [
            "account.created",
            "account.banned",
            "account.unbanned",
            "account.deleted",
            "user.online",
            "user.offline",
        ]
        .map(str::to_owned)
        .to_vec();
    })
    .await;
    let (carol, c) = server.login("carol", "laptop").await;
    let (conn, _signals) = xinge_client::Connection::connect(
        xinge_client::Transport::Tcp,
        &server.tcp.to_string(),
        carol.token().unwrap(),
    )
    .await
    .unwrap();
    until_events(&r, 2).await;
    drop(conn);
    until_events(&r, 3).await;
    // Banned, unbanned, deleted: one account event each, in that order.
    let client = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::PUT, format!("/admin/v1/users/{c}/ban")),
        (reqwest::Method::DELETE, format!("/admin/v1/users/{c}/ban")),
        (reqwest::Method::DELETE, format!("/admin/v1/users/{c}")),
    ] {
        let url = format!("{}{path}", server.admin.as_deref().unwrap());
        let resp = client
            .request(method.clone(), url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
    }
    let events = until_events(&r, 6).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "account.created",
            "user.online",
            "user.offline",
            "account.banned",
            "account.unbanned",
            "account.deleted"
        ],
        "only the types asked for (no message or friend events), in order"
    );
    assert_eq!(events[0]["data"]["user"]["username"], "carol");
    assert_eq!(events[0]["data"]["user"]["user_id"], c.to_string());
    assert!(
        events[1..]
            .iter()
            .all(|e| e["data"]["user_id"] == c.to_string())
    );
    assert_eq!(*r.bad_signatures.lock().unwrap(), 0);
    server.stop().await;
}
