//! A receiver of the after-events webhook, as an app's server would run it: checks each
//! request's signature, keeps the events in the order they came, and can play a receiver
//! that is down (answers 500).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SECRET: &str = "the events webhook's secret";

/// What the receiver took, and whether it answers 500 (a receiver that is down).
#[derive(Default)]
pub struct Receiver {
    pub events: Mutex<Vec<Value>>,
    pub requests: Mutex<u32>,
    pub failing: AtomicBool,
    /// Requests whose signature did not check out (answered 401).
    pub bad_signatures: Mutex<u32>,
}

async fn take(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    *r.requests.lock().unwrap() += 1;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let t: u64 = header("x-xinge-timestamp").parse().unwrap();
    let want = xinge_logic::hooks::sign(&[SECRET.as_bytes().to_vec()], t, &body);
    if header("x-xinge-signature") != want || xinge_core::now_ms() / 1000 > t + 300 {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if r.failing.load(Ordering::Relaxed) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    r.events
        .lock()
        .unwrap()
        .extend(v["events"].as_array().unwrap().iter().cloned());
    StatusCode::OK
}

pub async fn receiver() -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/events", axum::routing::post(take))
        .with_state(r.clone());
    (format!("http://{}/events", super::listen(app).await), r)
}

pub fn configure(c: &mut xinge_core::config::Config, url: &str) {
    c.webhooks.secrets = vec![SECRET.into()];
    c.webhooks.after.url = Some(url.to_owned());
    c.webhooks.after.backoff_ms = 10;
    c.webhooks.after.backoff_max_ms = 40;
    c.webhooks.after.max_attempts = 3;
    // The conversation events (a test that wants account or presence events lists them).
    c.webhooks.after.events = [
        "message.sent",
        "message.recalled",
        "message.deleted",
        "group.changed",
        "friend.added",
        "friend.removed",
    ]
    .map(str::to_owned)
    .to_vec();
}

/// Until the receiver holds `n` events (at most 10 s); they, in order.
pub async fn until_events(r: &Receiver, n: usize) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events = r.events.lock().unwrap().clone();
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let events = r.events.lock().unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e["type"].to_string()).collect();
        panic!("{} of {n} events: {kinds:?}", events.len())
    })
}
