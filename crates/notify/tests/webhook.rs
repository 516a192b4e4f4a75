//! The notification webhook against a local receiver that checks it as the app's server
//! would: the signature over the exact body with one of its secrets, a fresh timestamp,
//! the event header; then answers as scripted (200, 410, 503 then 200, 400).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use xinge_core::config::{NotifyConfig, NotifyWebhookConfig};
use xinge_notify::{Outcome, Providers, sign};
use xinge_proto::api::PushRegistration;

/// The receiver knows only the second secret (the first is being rotated out).
const OLD_SECRET: &str = "an old secret, rotated out";
const SECRET: &str = "the receiver's current secret";

#[derive(Default)]
struct State {
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    seen: Mutex<Vec<Value>>,
    refused: Mutex<Vec<String>>,
}

async fn handle(st: Arc<State>, req: hyper::Request<Incoming>) -> Reply {
    let (parts, body) = read(req).await;
    let refuse = |why: String| {
        st.refused.lock().unwrap().push(why);
        reply(401, "")
    };
    if header(&parts, "content-type") != "application/json"
        || header(&parts, "x-xinge-event") != "notification"
    {
        return refuse("headers".into());
    }
    let Ok(ts) = header(&parts, "x-xinge-timestamp").parse::<u64>() else {
        return refuse("no timestamp".into());
    };
    if ts.abs_diff(now_secs()) > 300 {
        return refuse("timestamp outside the replay window".into());
    }
    // Recomputed over the exact bytes received, with the receiver's own secret.
    let want = sign(&[SECRET.as_bytes().to_vec()], ts, &body);
    if !header(&parts, "x-xinge-signature")
        .split(',')
        .any(|s| s == want)
    {
        return refuse("signature".into());
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let key = v["token"].as_str().unwrap_or("").to_owned();
    st.seen.lock().unwrap().push(v);
    let status = st
        .script
        .lock()
        .unwrap()
        .get_mut(&key)
        .and_then(VecDeque::pop_front)
        .unwrap_or(200);
    reply(status, "")
}

fn registration(token: Option<&str>) -> PushRegistration {
    PushRegistration::Webhook {
        token: token.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_posted_signed_and_answers_become_outcomes() {
    let state = Arc::new(State::default());
    state.script.lock().unwrap().extend([
        ("gone".to_owned(), VecDeque::from([410])),
        ("flaky".to_owned(), VecDeque::from([503])),
        ("bad".to_owned(), VecDeque::from([400])),
    ]);
    let st = state.clone();
    let addr = http1(move |req| handle(st.clone(), req)).await;
    let cfg = NotifyConfig {
        webhook: Some(NotifyWebhookConfig {
            url: format!("http://{addr}/push"),
            limits: limits(None, 3),
        }),
        ..Default::default()
    };
    let p = Providers::new(&cfg, &[OLD_SECRET.into(), SECRET.into()]).unwrap();
    assert!(p.serves(&registration(None)));
    let n = notification("n-9/tablet", "g:5");
    let send = |token: Option<&'static str>| {
        let (p, n) = (&p, &n);
        async move { bounded(p.send(42, "tablet", &registration(token), n)).await }
    };

    assert_eq!(send(Some("app-token-1")).await, Outcome::Sent);
    assert_eq!(
        state.seen.lock().unwrap()[0],
        json!({
            "id": "n-9/tablet",
            "user_id": "42",
            "device": "tablet",
            "token": "app-token-1",
            "notification": {
                "title": "Alice",
                "body": "Are we still on for lunch?",
                "badge": 4,
                "count": 2,
                "collapse_id": "g:5",
                "data": {"conv": "d:1:2", "seq": "17"},
            },
        })
    );
    assert_eq!(send(None).await, Outcome::Sent);
    assert_eq!(state.seen.lock().unwrap()[1]["token"], Value::Null);
    assert!(matches!(send(Some("gone")).await, Outcome::Invalid(_)));
    assert_eq!(send(Some("flaky")).await, Outcome::Sent, "503 then 200");
    assert!(matches!(send(Some("bad")).await, Outcome::Failed(r) if r.contains("400")));
    let flaky = state
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["token"] == "flaky")
        .count();
    assert_eq!(flaky, 2);
    assert_eq!(*state.refused.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn an_unreachable_service_is_given_up_on_after_the_attempts() {
    // A port nobody listens on: connections refused, retried, then given up.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let cfg = NotifyConfig {
        webhook: Some(NotifyWebhookConfig {
            url: format!("http://{addr}/push"),
            limits: limits(None, 2),
        }),
        ..Default::default()
    };
    let p = Providers::new(&cfg, &[SECRET.into()]).unwrap();
    let outcome = bounded(p.send(1, "d", &registration(None), &notification("n", "c"))).await;
    assert!(
        matches!(outcome, Outcome::Failed(ref r) if r.contains("given up after 2")),
        "{outcome:?}"
    );
}
