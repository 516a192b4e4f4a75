//! What every role serves: `/healthz`, `/metrics`, and our error shape for unknown paths.

use super::{DONE, Done};
use crate::HttpError;
use axum::Json;
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::ErrorCode;
use xinge_core::error::ApiError;

pub fn routes() -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .route("/metrics", get(prometheus))
        .fallback(|| async { HttpError(ApiError::new(ErrorCode::NotFound, "no such endpoint")) })
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Done)))]
pub async fn healthz() -> Json<Done> {
    Json(DONE)
}

/// Prometheus metrics (text format): connections, messages, pulls, signals, store commit
/// latency, errors by code. docs/ARCHITECTURE.md lists them.
pub async fn prometheus() -> String {
    crate::metrics_handle().render()
}
