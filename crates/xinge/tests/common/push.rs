//! The app's own push service as the notification webhook reaches it, holding every
//! request until told to answer: a provider in the middle of answering when the process
//! that sent to it dies.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Held {
    /// The notifications answered, in the order they came.
    pub got: Mutex<Vec<Value>>,
    /// Requests that came, answered or not.
    pub arrived: Mutex<u32>,
    pub open: tokio::sync::watch::Sender<bool>,
}

async fn take(State(h): State<Arc<Held>>, body: Bytes) -> StatusCode {
    *h.arrived.lock().unwrap() += 1;
    let mut open = h.open.subscribe();
    let _ = open.wait_for(|o| *o).await;
    h.got
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

/// Starts the service on a free loopback port: its URL, and its state.
pub async fn held() -> (String, Arc<Held>) {
    let h = Arc::new(Held::default());
    let app = axum::Router::new()
        .route("/push", axum::routing::post(take))
        .with_state(h.clone());
    (format!("http://{}/push", super::listen(app).await), h)
}

impl Held {
    /// Until `n` requests came (at most 10 s).
    pub async fn until_arrived(&self, n: u32) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while *self.arrived.lock().unwrap() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the notifications on their way");
    }

    /// Until the answered notifications' bodies are `n` different ones (at most 15 s):
    /// those bodies.
    pub async fn until_bodies(&self, n: usize) -> std::collections::BTreeSet<String> {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let bodies: std::collections::BTreeSet<String> = self
                    .got
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|v| v["notification"]["body"].as_str().unwrap().to_owned())
                    .collect();
                if bodies.len() >= n {
                    return bodies;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every notification told")
    }
}
