//! The HTTP API (`fn app() -> Router`), the dispatch of long-connection business commands,
//! and the OpenAPI document. Every business operation is reachable both ways with the same
//! JSON body; both paths end in the same `Logic` call.
//!
//! ```text
//! lib.rs       AppState, the router, auth extraction, errors on the wire
//! http.rs      one handler per endpoint (annotated for OpenAPI)
//! dispatch.rs  the gateway's Upstream/Authenticator: command number → Logic
//! openapi.rs   the OpenAPI document served at /openapi.json
//! ```

mod dispatch;
mod http;
mod openapi;

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

#[derive(Clone)]
pub struct AppState {
    pub logic: Arc<Logic>,
    pub gateway: Arc<Gateway>,
    pub route: Arc<Route>,
}

pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// An error on the HTTP API: the code's status and `{code, message}`.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(&self.0)).into_response();
        if self.0.code == ErrorCode::RateLimited {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

pub type HttpResult<T> = Result<Json<T>, HttpError>;

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

impl FromRequestParts<AppState> for Auth {
    type Rejection = HttpError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
        let (user, device) = state.logic.authenticate(token).await?;
        Ok(Auth(Caller {
            user,
            device,
            conn: None,
        }))
    }
}

pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}
