//! Accounts, sessions, the caller's own profile, and looking users up.

use super::{DONE, Done, peer_ip};
use crate::{ApiState, Auth, Body, HttpResult, Path, Query};
use axum::Json;
use axum::extract::State;
use axum::http::Extensions;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::UserId;
use xinge_core::error::ApiError;
use xinge_proto::api::*;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login, logout))
        .routes(routes!(me, update_me))
        .routes(routes!(change_password))
        .routes(routes!(devices))
        .routes(routes!(log_out_device))
        .routes(routes!(find_user))
        .routes(routes!(user))
}

/// Create an account. New accounts per address are limited (429 `rate_limited`).
#[utoipa::path(post, path = "/v1/accounts", request_body = RegisterRequest,
    responses((status = 200, body = Profile), (status = 409, body = ApiError), (status = 400, body = ApiError),
        (status = 429, body = ApiError)))]
pub async fn register(
    State(s): State<ApiState>,
    ext: Extensions,
    Body(req): Body<RegisterRequest>,
) -> HttpResult<Profile> {
    Ok(Json(s.logic.register(req, peer_ip(&ext)).await?))
}

/// Log in one device; the token names user and device. Failed logins are limited per
/// account and per address (429 `rate_limited` with `retry_after_ms`).
#[utoipa::path(post, path = "/v1/sessions", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
pub async fn login(
    State(s): State<ApiState>,
    ext: Extensions,
    Body(req): Body<LoginRequest>,
) -> HttpResult<LoginResponse> {
    Ok(Json(s.logic.login(req, peer_ip(&ext)).await?))
}

/// Log out this device: its token stops working at once.
#[utoipa::path(delete, path = "/v1/sessions", responses((status = 200, body = Done), (status = 401, body = ApiError)))]
pub async fn logout(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<Done> {
    s.logic.logout(&c).await?;
    Ok(Json(DONE))
}

#[utoipa::path(get, path = "/v1/me", responses((status = 200, body = Profile), (status = 401, body = ApiError)))]
pub async fn me(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<Profile> {
    Ok(Json(s.logic.profile(c.user).await?))
}

#[utoipa::path(put, path = "/v1/me", request_body = ProfileUpdate, responses((status = 200, body = Profile)))]
pub async fn update_me(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(req): Body<ProfileUpdate>,
) -> HttpResult<Profile> {
    Ok(Json(s.logic.set_display_name(&c, &req.display_name).await?))
}

/// Change the password. Every other device of the account is logged out at once (its
/// token revoked, its long connections closed); this one stays logged in.
#[utoipa::path(put, path = "/v1/me/password", request_body = PasswordChange,
    responses((status = 200, body = Done), (status = 401, body = ApiError), (status = 400, body = ApiError)))]
pub async fn change_password(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(req): Body<PasswordChange>,
) -> HttpResult<Done> {
    s.logic.change_password(&c, req).await?;
    Ok(Json(DONE))
}

/// The caller's logged-in devices: when each logged in, whether it is connected.
#[utoipa::path(get, path = "/v1/me/devices", responses((status = 200, body = Devices), (status = 401, body = ApiError)))]
pub async fn devices(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<Devices> {
    Ok(Json(s.logic.devices(&c).await?))
}

/// Log out one of the caller's devices: its token stops working and its long connections
/// close at once.
#[utoipa::path(delete, path = "/v1/me/devices/{device}", params(("device" = String, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
pub async fn log_out_device(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(device): Path<String>,
) -> HttpResult<Done> {
    s.logic.log_out_other_device(&c, &device).await?;
    Ok(Json(DONE))
}

#[derive(Deserialize)]
pub struct FindQuery {
    username: String,
}

/// Find a user by exact username.
#[utoipa::path(get, path = "/v1/users", params(("username" = String, Query)),
    responses((status = 200, body = Profile), (status = 404, body = ApiError)))]
pub async fn find_user(
    State(s): State<ApiState>,
    Auth(_): Auth,
    Query(q): Query<FindQuery>,
) -> HttpResult<Profile> {
    Ok(Json(s.logic.find_user(&q.username).await?))
}

/// A user's profile, to those who know them: friends, pending requests either way, a 1:1
/// conversation or a shared group. Anyone else gets 404, as for an id that does not exist
/// (find a stranger by exact username instead).
#[utoipa::path(get, path = "/v1/users/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Profile), (status = 404, body = ApiError)))]
pub async fn user(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Profile> {
    Ok(Json(s.logic.profile_for(&c, UserId(id)).await?))
}
