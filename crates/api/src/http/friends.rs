//! Friends, friend requests and blocks.

use super::{DONE, Done};
use crate::{ApiState, Auth, Body, HttpResult, Path};
use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::UserId;
use xinge_core::error::ApiError;
use xinge_proto::api::*;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(friends))
        .routes(routes!(remove_friend))
        .routes(routes!(friend_requests, request_friend))
        .routes(routes!(accept_friend))
        .routes(routes!(decline_friend))
        .routes(routes!(block, unblock))
}

#[utoipa::path(get, path = "/v1/friends", responses((status = 200, body = Vec<Friend>)))]
pub async fn friends(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<Vec<Friend>> {
    Ok(Json(s.logic.friends(&c).await?))
}

#[utoipa::path(delete, path = "/v1/friends/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError)))]
pub async fn remove_friend(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.remove_friend(&c, UserId(id)).await?;
    Ok(Json(DONE))
}

#[utoipa::path(get, path = "/v1/friends/requests", responses((status = 200, body = FriendRequests)))]
pub async fn friend_requests(
    State(s): State<ApiState>,
    Auth(c): Auth,
) -> HttpResult<FriendRequests> {
    Ok(Json(s.logic.friend_requests(&c).await?))
}

/// Ask someone to be friends (asking someone who already asked you accepts).
#[utoipa::path(post, path = "/v1/friends/requests", request_body = FriendRequestBody,
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn request_friend(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(req): Body<FriendRequestBody>,
) -> HttpResult<Done> {
    s.logic.request_friend(&c, req.to, req.note).await?;
    Ok(Json(DONE))
}

#[utoipa::path(post, path = "/v1/friends/requests/{from}/accept", params(("from" = u64, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError)))]
pub async fn accept_friend(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(from): Path<u64>,
) -> HttpResult<Done> {
    s.logic.accept_friend(&c, UserId(from)).await?;
    Ok(Json(DONE))
}

#[utoipa::path(post, path = "/v1/friends/requests/{from}/decline", params(("from" = u64, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError)))]
pub async fn decline_friend(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(from): Path<u64>,
) -> HttpResult<Done> {
    s.logic.decline_friend(&c, UserId(from)).await?;
    Ok(Json(DONE))
}

#[utoipa::path(put, path = "/v1/blocks/{id}", params(("id" = u64, Path)), responses((status = 200, body = Done)))]
pub async fn block(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.set_block(&c, UserId(id), true).await?;
    Ok(Json(DONE))
}

#[utoipa::path(delete, path = "/v1/blocks/{id}", params(("id" = u64, Path)), responses((status = 200, body = Done)))]
pub async fn unblock(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.set_block(&c, UserId(id), false).await?;
    Ok(Json(DONE))
}
