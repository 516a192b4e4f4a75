//! The before-send webhook against a real local HTTP receiver that checks every request's
//! signature as an app's server would (HMAC-SHA256 over the timestamp and the exact body,
//! with either of two secrets, inside a replay window): the app allows, rejects (the
//! sender gets `rejected` and the app's reason, nothing is stored), replaces the content
//! (what is stored and delivered is the app's), times out or fails (the message goes
//! through, or is refused with `unavailable`, as configured); a retried send that was
//! stored is not asked again; 1:1 and group sends each ask as configured.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xinge_client::api::{MessageBody, SendRequest};
use xinge_core::UserId;
use xinge_core::config::HookFailure;

const SECRETS: [&str; 2] = ["the first webhook secret", "the second webhook secret"];

/// Every request the receiver took: its body, and whether each secret's signature was
/// in it.
#[derive(Default)]
struct Received {
    calls: Vec<(Value, [bool; 2])>,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(
    State(seen): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let timestamp: u64 = header("x-xinge-timestamp").parse().unwrap();
    let now = xinge_core::now_ms() / 1000;
    assert!(now.abs_diff(timestamp) < 300, "inside the replay window");
    assert_eq!(header("x-xinge-event"), "message.before_send");
    let sent: Vec<String> = header("x-xinge-signature")
        .split(',')
        .map(str::to_owned)
        .collect();
    let signed = SECRETS.map(|s| {
        let want = xinge_logic::hooks::sign(&[s.as_bytes().to_vec()], timestamp, &body);
        sent.contains(&want)
    });
    let v: Value = serde_json::from_slice(&body).unwrap();
    let text = v["content"]["text"].as_str().unwrap_or("").to_owned();
    seen.lock().unwrap().calls.push((v, signed));
    let answer = match text.as_str() {
        "reject me" => json!({"action": "reject", "reason": "no swearing, please"}),
        "replace me" => json!({"action": "replace", "content": {"text": "***"}}),
        "replace badly" => json!({"action": "replace", "content": "not an object"}),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            json!({"action": "allow"})
        }
        "broken" => return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops".into()),
        _ => json!({"action": "allow"}),
    };
    (axum::http::StatusCode::OK, answer.to_string())
}

/// A receiver on a free loopback port: its URL and what it took.
async fn receiver() -> (String, Shared) {
    let seen = Shared::default();
    let app = axum::Router::new()
        .route("/before-send", axum::routing::post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/before-send", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn text(to: UserId, id: &str, t: &str) -> SendRequest {
    serde_json::from_value(json!({"to": to, "client_msg_id": id, "content": {"text": t}})).unwrap()
}

async fn hooked(url: &str, on_failure: HookFailure, direct: bool) -> Server {
    let url = url.to_owned();
    start(move |c| {
        c.webhooks.secrets = SECRETS.map(str::to_owned).to_vec();
        c.webhooks.before_send.url = Some(url);
        c.webhooks.before_send.timeout_ms = 300;
        c.webhooks.before_send.on_failure = on_failure;
        c.webhooks.before_send.direct = direct;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_allows_rejects_and_replaces_before_a_message_is_stored() {
    let (url, seen) = receiver().await;
    let server = hooked(&url, HookFailure::Allow, true).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;

    let first = alice.send(&text(b, "m1", "hello bob")).await.unwrap();
    {
        let seen = seen.lock().unwrap();
        let (body, signed) = &seen.calls[0];
        assert_eq!(signed, &[true, true], "signed with both secrets");
        assert_eq!(
            (body["sender"].as_str(), body["client_msg_id"].as_str()),
            (Some(a.to_string().as_str()), Some("m1"))
        );
        assert_eq!(body["conv"], first.conv.to_string());
        assert_eq!(body["type"], "message.before_send");
        assert!(body["event_id"].as_str().is_some_and(|id| id.len() == 32));
    }
    let err = alice.send(&text(b, "m2", "reject me")).await.unwrap_err();
    assert_eq!(err.code().unwrap().as_str(), "rejected");
    assert!(err.to_string().contains("no swearing, please"), "{err}");
    alice.send(&text(b, "m3", "replace me")).await.unwrap();
    // A replacement that is no message content is the hook's failure: sent as it is.
    alice.send(&text(b, "m4", "replace badly")).await.unwrap();
    let started = Instant::now();
    alice.send(&text(b, "m5", "slow")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300)
            && started.elapsed() < Duration::from_millis(1400)
    );
    alice.send(&text(b, "m6", "broken")).await.unwrap();
    // A retry of a stored send answers as the first time without asking again.
    let calls = seen.lock().unwrap().calls.len();
    let again = alice.send(&text(b, "m1", "hello bob")).await.unwrap();
    assert!(again.duplicate && again.msg_id == first.msg_id);
    assert_eq!(seen.lock().unwrap().calls.len(), calls, "not asked again");

    let page = bob.history(first.conv, None, None, 20).await.unwrap();
    let stored: Vec<String> = page
        .messages
        .iter()
        .map(|m| match &m.body {
            MessageBody::Content { content } => content["text"].as_str().unwrap().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        stored,
        ["hello bob", "***", "replace badly", "slow", "broken"],
        "the rejected one is not stored; the replaced one is the app's"
    );

    // Group sends ask too.
    let group = alice.create_group("g", &[b]).await.unwrap();
    let to_group: SendRequest = serde_json::from_value(
        json!({"conv": group.conv, "client_msg_id": "g1", "content": {"text": "reject me"}}),
    )
    .unwrap();
    assert_eq!(code(alice.send(&to_group).await), "rejected");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_refuses_when_so_configured_and_a_kind_can_be_left_out() {
    let (url, seen) = receiver().await;
    let server = hooked(&url, HookFailure::Reject, true).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    assert_eq!(
        code(alice.send(&text(b, "s1", "slow")).await),
        "unavailable"
    );
    assert_eq!(
        code(alice.send(&text(b, "s2", "broken")).await),
        "unavailable"
    );
    assert_eq!(
        code(alice.send(&text(b, "s3", "replace badly")).await),
        "unavailable"
    );
    assert!(
        bob.sync(0, None)
            .await
            .unwrap()
            .entries
            .iter()
            .all(|e| !matches!(e.event, xinge_client::api::Event::Message { .. }))
    );
    alice.send(&text(b, "s4", "fine")).await.unwrap();
    server.stop().await;

    // 1:1 sends left out: the hook is not asked for them.
    let server = hooked(&url, HookFailure::Reject, false).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let before = seen.lock().unwrap().calls.len();
    alice.send(&text(b, "d1", "reject me")).await.unwrap();
    assert_eq!(seen.lock().unwrap().calls.len(), before);
    let calls: HashMap<String, usize> =
        seen.lock()
            .unwrap()
            .calls
            .iter()
            .fold(HashMap::new(), |mut m, (v, _)| {
                *m.entry(v["client_msg_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                m
            });
    assert!(
        calls.values().all(|n| *n == 1),
        "each send asked once: {calls:?}"
    );
    server.stop().await;
}
