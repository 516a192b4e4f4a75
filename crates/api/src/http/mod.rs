//! One handler per endpoint, one file per resource. Handlers only translate: extract, call
//! `Logic`, answer.
//!
//! Each file's `routes()` registers its handlers with `routes!`, which takes the path and
//! method from the handler's `#[utoipa::path]` annotation: serving an endpoint and
//! documenting it are one line, and the OpenAPI document is read off these same tables
//! (crate::openapi), so it cannot list a route that is not served or miss one that is.

pub mod accounts;
pub mod common;
pub mod friends;
pub mod gateway;
pub mod groups;
pub mod media;
pub mod messages;
pub mod notify;
pub mod route;

use crate::{ApiState, HttpError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use xinge_core::ConvId;
use xinge_core::ErrorCode;
use xinge_core::error::ApiError;

/// The answer of operations that return nothing else.
#[derive(Serialize, ToSchema)]
pub struct Done {
    pub ok: bool,
}

pub const DONE: Done = Done { ok: true };

/// The business API: every IM operation. The caller adds `/openapi.json`, the body limit and
/// the state.
pub fn api_routes() -> OpenApiRouter<ApiState> {
    accounts::routes()
        .merge(friends::routes())
        .merge(messages::routes())
        .merge(groups::routes())
        .merge(notify::routes())
        .merge(media::routes())
}

/// A member-list or read-state page: ids greater than `after`, at most `limit`.
#[derive(Deserialize)]
pub struct PageQuery {
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

pub fn conv_param(s: &str) -> Result<ConvId, HttpError> {
    s.parse()
        .map_err(|e: &str| HttpError(ApiError::new(ErrorCode::InvalidArgument, e)))
}

/// The peer address, when the server was started with connect info (tests through
/// `oneshot` have none and are not limited).
pub fn peer_ip(ext: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}
