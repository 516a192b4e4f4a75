//! A before-send webhook receiver in the bench's own process, for `--before-hook`: it
//! answers every request `allow`, so a run measures what asking the app's server costs a
//! send (the HTTP round trip and the server's work), not what an app decides.

use crate::BenchError;

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
        "[webhooks]\nsecrets = [\"the bench's webhook secret\"]\n\
         [webhooks.before_send]\nurl = \"http://{addr}/before-send\"\n"
    ))
}
