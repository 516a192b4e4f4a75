//! Groups: create, inspect, change and dismiss them; members, admins and mutes.

use super::{DONE, Done, PageQuery};
use crate::{ApiState, Auth, Body, HttpResult, Path, Query};
use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::error::ApiError;
use xinge_core::{GroupId, UserId};
use xinge_proto::api::*;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_group))
        .routes(routes!(group_info, update_group, dismiss_group))
        .routes(routes!(group_members, add_members))
        .routes(routes!(remove_member))
        .routes(routes!(join_group))
        .routes(routes!(leave_group))
        .routes(routes!(transfer_group))
        .routes(routes!(set_admin))
        .routes(routes!(mute_member))
        .routes(routes!(mute_all))
}

#[utoipa::path(post, path = "/v1/groups", request_body = CreateGroupRequest,
    responses((status = 200, body = GroupInfo), (status = 404, body = ApiError)))]
pub async fn create_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(req): Body<CreateGroupRequest>,
) -> HttpResult<GroupInfo> {
    Ok(Json(s.logic.create_group(&c, req).await?))
}

#[utoipa::path(get, path = "/v1/groups/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = GroupInfo), (status = 404, body = ApiError)))]
pub async fn group_info(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
) -> HttpResult<GroupInfo> {
    Ok(Json(s.logic.group_info(&c, id).await?))
}

/// Rename, or change the avatar or notice (admins).
#[utoipa::path(patch, path = "/v1/groups/{id}", params(("id" = u64, Path)), request_body = UpdateGroupRequest,
    responses((status = 200, body = GroupInfo), (status = 403, body = ApiError)))]
pub async fn update_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Body(req): Body<UpdateGroupRequest>,
) -> HttpResult<GroupInfo> {
    Ok(Json(s.logic.update_group(&c, id, req).await?))
}

/// Dismiss the group (owner).
#[utoipa::path(delete, path = "/v1/groups/{id}", params(("id" = u64, Path)), responses((status = 200, body = Done), (status = 403, body = ApiError)))]
pub async fn dismiss_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
) -> HttpResult<Done> {
    s.logic.dismiss_group(&c, id).await?;
    Ok(Json(DONE))
}

#[utoipa::path(get, path = "/v1/groups/{id}/members", params(("id" = u64, Path), ("after" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = GroupMembers)))]
pub async fn group_members(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Query(q): Query<PageQuery>,
) -> HttpResult<GroupMembers> {
    Ok(Json(
        s.logic
            .group_members(&c, id, q.after.map(UserId), q.limit)
            .await?,
    ))
}

/// Add members (admins) or invite them (other members).
#[utoipa::path(post, path = "/v1/groups/{id}/members", params(("id" = u64, Path)), request_body = UsersRequest,
    responses((status = 200, body = Done), (status = 409, body = ApiError)))]
pub async fn add_members(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Body(req): Body<UsersRequest>,
) -> HttpResult<Done> {
    s.logic.add_members(&c, id, &req.users).await?;
    Ok(Json(DONE))
}

/// Remove a member (admins), or oneself (leave).
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{user}", params(("id" = u64, Path), ("user" = u64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError)))]
pub async fn remove_member(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path((id, user)): Path<(GroupId, u64)>,
) -> HttpResult<Done> {
    s.logic.remove_member(&c, id, UserId(user)).await?;
    Ok(Json(DONE))
}

/// Join a group one was invited to.
#[utoipa::path(post, path = "/v1/groups/{id}/join", params(("id" = u64, Path)), responses((status = 200, body = Done), (status = 404, body = ApiError)))]
pub async fn join_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
) -> HttpResult<Done> {
    s.logic.join_group(&c, id).await?;
    Ok(Json(DONE))
}

#[utoipa::path(post, path = "/v1/groups/{id}/leave", params(("id" = u64, Path)), responses((status = 200, body = Done)))]
pub async fn leave_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
) -> HttpResult<Done> {
    s.logic.leave_group(&c, id).await?;
    Ok(Json(DONE))
}

#[utoipa::path(post, path = "/v1/groups/{id}/transfer", params(("id" = u64, Path)), request_body = TransferRequest, responses((status = 200, body = Done)))]
pub async fn transfer_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Body(req): Body<TransferRequest>,
) -> HttpResult<Done> {
    s.logic.transfer_group(&c, id, req.to).await?;
    Ok(Json(DONE))
}

/// Promote (`on`) or demote a member (owner).
#[utoipa::path(post, path = "/v1/groups/{id}/admins", params(("id" = u64, Path)), request_body = MemberFlagRequest, responses((status = 200, body = Done)))]
pub async fn set_admin(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Body(req): Body<MemberFlagRequest>,
) -> HttpResult<Done> {
    s.logic.set_admin(&c, id, req.user, req.on).await?;
    Ok(Json(DONE))
}

/// Mute (`on`) or unmute a member (admins).
#[utoipa::path(post, path = "/v1/groups/{id}/mutes", params(("id" = u64, Path)), request_body = MemberFlagRequest, responses((status = 200, body = Done)))]
pub async fn mute_member(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Body(req): Body<MemberFlagRequest>,
) -> HttpResult<Done> {
    s.logic.mute_member(&c, id, req.user, req.on).await?;
    Ok(Json(DONE))
}

/// Only admins talk (`on`), or everyone again (admins).
#[utoipa::path(post, path = "/v1/groups/{id}/mute-all", params(("id" = u64, Path)), request_body = FlagRequest, responses((status = 200, body = Done)))]
pub async fn mute_all(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<GroupId>,
    Body(req): Body<FlagRequest>,
) -> HttpResult<Done> {
    s.logic.mute_all(&c, id, req.on).await?;
    Ok(Json(DONE))
}
