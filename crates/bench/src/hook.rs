//! Webhook receivers in the bench's own process. `--before-hook`: one that answers every
//! request `allow`, so a run measures what asking the app's server costs a send (the HTTP
//! round trip and the server's work), not what an app decides. `--after-hook`: one that
//! takes every batch of events and counts them.

use crate::BenchError;
use std::sync::atomic::{AtomicU64, Ordering};

/// The secret the spawned server signs with (the receivers do not check it: the server's
/// signing is what is measured).
pub const SECRETS: &str = "[webhooks]\nsecrets = [\"the bench's webhook secret\"]\n";

/// Events and requests the after-events receiver took.
pub static EVENTS: AtomicU64 = AtomicU64::new(0);
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Starts the receiver on a free loopback port; the TOML that points the spawned server
/// at it.
pub async fn allow_all() -> Result<String, BenchError> {
    let app = axum::Router::new().route(
        "/before-send",
        axum::routing::post(|| async { r#"{"action":"allow"}"# }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("before-send receiver stopped: {e}");
        }
    });
    Ok(format!(
        "[webhooks.before_send]\nurl = \"http://{addr}/before-send\"\n"
    ))
}

/// Starts the after-events receiver; the TOML that points the spawned server at it.
pub async fn take_events() -> Result<String, BenchError> {
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let events = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["events"].as_array().map(Vec::len))
                .unwrap_or(0);
            EVENTS.fetch_add(events as u64, Ordering::Relaxed);
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("after-events receiver stopped: {e}");
        }
    });
    Ok(format!(
        "[webhooks.after]\nurl = \"http://{addr}/events\"\n"
    ))
}
