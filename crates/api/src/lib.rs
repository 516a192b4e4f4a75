//! The HTTP API (`fn app() -> Router`), the dispatch of long-connection business commands,
//! and the OpenAPI document. Every business operation is reachable both ways with the same
//! JSON body; both paths end in the same `Logic` call.
//!
//! ```text
//! lib.rs       AppState, the router, auth extraction, errors on the wire
//! admin.rs     the admin API (`/admin/v1/…`): admin keys, its handlers and document
//! http/        one handler per endpoint, one file per resource, each registered with its
//!              OpenAPI annotation
//! dispatch.rs  the gateway's Upstream/Authenticator: command number → Logic
//! openapi.rs   the OpenAPI document served at /openapi.json, read off http/'s routers
//! server.rs    the HTTP accept loop: bounded connections, header deadline, shutdown
//! web.rs       the browser client (web/ at the repository root), embedded, served at /
//! ```

pub mod admin;
mod dispatch;
mod http;
mod openapi;
pub mod server;
mod web;

pub use dispatch::Dispatch;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use xinge_core::ErrorCode;
use xinge_core::error::ApiError;
use xinge_gateway::Gateway;
use xinge_logic::{Caller, Logic};
use xinge_route::Route;

/// Everything one process serves in `xinge serve`.
#[derive(Clone)]
pub struct AppState {
    pub logic: Arc<Logic>,
    pub gateway: Arc<Gateway>,
    pub route: Arc<Route>,
}

/// The business API's handler state.
#[derive(Clone)]
pub struct ApiState {
    pub logic: Arc<Logic>,
}

/// Every endpoint of every role, for `xinge serve`, and the web client at `/` (it needs the
/// API and the WebSocket gateway on one origin, which only this all-in-one router has).
pub fn app(state: AppState) -> axum::Router {
    served(all_in_one(state))
}

fn all_in_one(state: AppState) -> axum::Router {
    api_routes(ApiState { logic: state.logic })
        .merge(route_routes(state.route))
        .merge(http::gateway::routes(state.gateway))
        .merge(web::routes())
}

/// `xinge api`: the business API.
pub fn api_app(logic: Arc<Logic>) -> axum::Router {
    served(api_routes(ApiState { logic }))
}

/// [`api_app`] with the admin API beside it (`admin.on_main_listener`).
pub fn api_with_admin(logic: Arc<Logic>, admin: admin::AdminState) -> axum::Router {
    served(api_routes(ApiState { logic }).merge(admin::router(admin)))
}

/// The admin API on a listener of its own.
pub fn admin_app(state: admin::AdminState) -> axum::Router {
    served(
        admin::router(state)
            .merge(web::admin_page())
            .merge(web::files()),
    )
}

/// [`app`] with the admin API beside the rest (`admin.on_main_listener`).
pub fn app_with_admin(state: AppState, admin: admin::AdminState) -> axum::Router {
    served(
        all_in_one(state)
            .merge(admin::router(admin))
            .merge(web::admin_page()),
    )
}

/// `xinge route`: which gateway to use.
pub fn route_app(route: Arc<Route>) -> axum::Router {
    served(route_routes(route))
}

/// `xinge push`: health and metrics only.
pub fn health_app() -> axum::Router {
    served(axum::Router::new())
}

/// `xinge gateway`: the WebSocket endpoint (the TCP gateway has its own listener).
pub fn gateway_app(gateway: Arc<Gateway>) -> axum::Router {
    served(http::gateway::routes(gateway))
}

/// A role's routes as every role serves them: with `/healthz`, `/metrics`, and our error
/// shape for unknown paths and for a known path's wrong method (axum applies the latter
/// only to routes already there, so it comes last).
fn served(routes: axum::Router) -> axum::Router {
    routes
        .merge(common())
        .method_not_allowed_fallback(method_not_allowed)
}

/// A known path with a method it does not take: our error shape, not an empty 405.
async fn method_not_allowed() -> HttpError {
    HttpError(ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this path does not take that method",
    ))
}

/// The business API and its OpenAPI document, bodies limited to the configured size.
fn api_routes(state: ApiState) -> axum::Router {
    let max_body = state.logic.config().server.max_body_bytes;
    axum::Router::from(http::api_routes())
        .route(
            "/openapi.json",
            axum::routing::get(|| async { Json(openapi::served()) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn route_routes(route: Arc<Route>) -> axum::Router {
    axum::Router::from(http::route::routes()).with_state(route)
}

fn common() -> axum::Router {
    http::common::routes().into()
}

/// The process's Prometheus recorder, installed on first use. Every crate records through
/// the `metrics` facade; `/metrics` renders what this recorder holds.
pub fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let seconds = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let counts = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        // Finer where a client's latency is told apart from the server's share of it.
        let commands = [
            0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
            0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&seconds)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("xinge_store_batch_commits".into()), &counts)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("xinge_command_seconds".into()), &commands)
            })
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then this one stays empty.
        let _ = metrics::set_global_recorder(recorder);
        // Histograms keep their samples until a render or an upkeep folds them into the
        // buckets: without this, a process nobody scrapes would keep every sample.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// An error on the HTTP API: the code's status and `{code, message}`.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<xinge_logic::Error> for HttpError {
    fn from(e: xinge_logic::Error) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        metrics::counter!("xinge_errors_total", "code" => self.0.code.as_str(), "via" => "http")
            .increment(1);
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut err = self.0;
        // One wait, said twice: the body's `retry_after_ms`, and `Retry-After` in whole
        // seconds rounded up, so a client obeying either never comes back too early. A
        // refusal made without a wait says one second in both.
        let retry_after = (err.code == ErrorCode::RateLimited).then(|| {
            let ms = *err.retry_after_ms.get_or_insert(1000);
            ms.div_ceil(1000).max(1)
        });
        let mut resp = (status, Json(&err)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        resp
    }
}

pub type HttpResult<T> = Result<Json<T>, HttpError>;

/// A path parameter whose rejections are answered in our error shape: axum's own answer
/// is `text/plain`, which the contract test (scripts/contract.sh) found on 23 operations
/// documented to answer errors as `ApiError` JSON.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rej) => Err(ApiError::new(ErrorCode::BadRequest, rej.body_text()).into()),
        }
    }
}

/// A query string whose rejections are answered in our error shape (see [`Path`]).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(ApiError::new(ErrorCode::BadRequest, rej.body_text()).into()),
        }
    }
}

/// A JSON body whose rejections are answered in our error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = HttpError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ErrorCode::TooLarge,
                "request body is over the size limit",
            )
            .into()),
            Err(rej) => Err(ApiError::new(ErrorCode::BadRequest, rej.body_text()).into()),
        }
    }
}

/// The caller, from `Authorization: Bearer <token>`.
pub struct Auth(pub Caller);

impl FromRequestParts<ApiState> for Auth {
    type Rejection = HttpError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
        let who = state.logic.authenticate(token).await?;
        Ok(Auth(Caller {
            user: who.user,
            device: who.device,
            origin: None,
            token: who.token,
        }))
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 §11.1: `bearer` and `BEARER` are the same scheme).
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bearer_scheme_is_matched_whatever_its_case() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            bearer_token(&h).map(str::to_owned)
        };
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "Bearer  t0k"] {
            assert_eq!(with(v).as_deref(), Some("t0k"), "{v}");
        }
        for v in ["Basic dTpw", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert_eq!(with(v), None, "{v}");
        }
    }

    /// The `retry-after` header and the body's `retry_after_ms` of one refusal.
    fn waits(e: ApiError) -> (String, Option<u64>) {
        let resp = HttpError(e).into_response();
        let header = resp.headers()["retry-after"].to_str().unwrap().to_owned();
        let body = json_body(resp);
        (header, body["retry_after_ms"].as_u64())
    }

    fn json_body(resp: Response) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(resp.into_body(), 1 << 16))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn retry_after_is_the_body_wait_rounded_up_to_seconds() {
        let limited = |ms| ApiError::rate_limited("slow down", Duration::from_millis(ms));
        for (ms, secs) in [
            (1, "1"),
            (999, "1"),
            (1_000, "1"),
            (1_001, "2"),
            (2_500, "3"),
        ] {
            assert_eq!(waits(limited(ms)), (secs.to_owned(), Some(ms)), "{ms} ms");
        }
        // A refusal made without a wait says one second in both places.
        let bare = ApiError::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(waits(bare), ("1".to_owned(), Some(1_000)));
    }

    #[test]
    fn only_a_rate_limit_has_a_wait() {
        let resp = HttpError(ApiError::new(ErrorCode::Forbidden, "no")).into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get("retry-after").is_none());
        assert!(json_body(resp).get("retry_after_ms").is_none());
    }
}
