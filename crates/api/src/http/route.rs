//! The route service's endpoint: which gateways to connect to.

use super::peer_ip;
use crate::{HttpError, Query};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::error::ApiError;
use xinge_proto::api::RouteResponse;
use xinge_route::Route;

pub fn routes() -> OpenApiRouter<Arc<Route>> {
    OpenApiRouter::new().routes(routes!(route_handler))
}

#[derive(Deserialize)]
pub struct RouteQuery {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
}

#[utoipa::path(get, path = "/v1/route", operation_id = "route", params(
    ("region" = Option<String>, Query, description = "the client's region"),
    ("zone" = Option<String>, Query, description = "the client's zone")),
    responses((status = 200, body = RouteResponse), (status = 429, body = ApiError)))]
pub async fn route_handler(
    State(route): State<Arc<Route>>,
    Query(q): Query<RouteQuery>,
    ext: axum::http::Extensions,
) -> Response {
    if let Some(Err(wait)) = peer_ip(&ext).map(|ip| route.admit(ip)) {
        metrics::counter!("xinge_route_refused_total").increment(1);
        return HttpError(ApiError::rate_limited(
            "too many connection attempts: retry after the time given",
            wait,
        ))
        .into_response();
    }
    Json(RouteResponse {
        gateways: route.rank(&q.region, &q.zone, xinge_core::now_ms()),
    })
    .into_response()
}
