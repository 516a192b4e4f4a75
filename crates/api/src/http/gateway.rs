//! The WebSocket gateway's endpoint (undocumented in OpenAPI: it answers with an upgrade, not
//! JSON).

use super::peer_ip;
use crate::{HttpError, Query};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;
use xinge_gateway::Gateway;

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new().route("/ws", get(ws)).with_state(gateway)
}

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    mode: Option<String>,
}

/// Upgrade to the WebSocket gateway. Authenticate with `?token=`, a bearer header, or an
/// AUTH frame first.
pub async fn ws(
    State(gateway): State<Arc<Gateway>>,
    Query(q): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    up: xinge_gateway::ws::WsUpgrade,
) -> Response {
    if let Some(Err(e)) = peer_ip(&ext).map(|ip| gateway.admit(ip)) {
        return HttpError(e).into_response();
    }
    let header_token = crate::bearer_token(&headers).map(str::to_owned);
    let text = q.mode.as_deref() == Some("text");
    xinge_gateway::ws::upgrade(gateway, up, q.token.or(header_token), text).into_response()
}
