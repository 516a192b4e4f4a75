//! One handler per endpoint. Handlers only translate: extract, call `Logic`, answer.

use crate::{ApiState, Auth, Body, HttpError, HttpResult, openapi};
use crate::{Path, Query};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use xinge_core::error::ApiError;
use xinge_core::{ConvId, ErrorCode, UserId};
use xinge_gateway::Gateway;
use xinge_proto::api::*;
use xinge_route::Route;

/// The answer of operations that return nothing else.
#[derive(Serialize, ToSchema)]
pub struct Done {
    pub ok: bool,
}

const DONE: Done = Done { ok: true };

/// What every role serves: `/healthz`, `/metrics`, and our error shape for unknown paths.
pub fn common() -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .fallback(|| async { HttpError(ApiError::new(ErrorCode::NotFound, "no such endpoint")) })
}

/// The route service's endpoint.
pub fn route_routes(route: Arc<Route>) -> Router {
    Router::new()
        .route("/v1/route", get(route_handler))
        .with_state(route)
}

/// The WebSocket gateway's endpoint.
pub fn gateway_routes(gateway: Arc<Gateway>) -> Router {
    Router::new().route("/ws", get(ws)).with_state(gateway)
}

/// The business API: every IM operation, and its OpenAPI document.
pub fn api_routes(state: ApiState) -> Router {
    let max_body = state.logic.config().server.max_body_bytes;
    Router::new()
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/v1/accounts", post(register))
        .route("/v1/sessions", post(login).delete(logout))
        .route("/v1/me", get(me).put(update_me))
        .route("/v1/users", get(find_user))
        .route("/v1/users/{id}", get(user))
        .route("/v1/friends", get(friends))
        .route("/v1/friends/{id}", axum::routing::delete(remove_friend))
        .route(
            "/v1/friends/requests",
            get(friend_requests).post(request_friend),
        )
        .route("/v1/friends/requests/{from}/accept", post(accept_friend))
        .route("/v1/friends/requests/{from}/decline", post(decline_friend))
        .route("/v1/blocks/{id}", put(block).delete(unblock))
        .route("/v1/messages", post(send))
        .route("/v1/messages/recall", post(recall))
        .route("/v1/sync", get(sync))
        .route("/v1/presence", get(presence))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/{conv}/messages", get(history))
        .route("/v1/conversations/{conv}/read", post(mark_read))
        .route(
            "/v1/conversations/{conv}/messages/{seq}/read-state",
            get(read_state),
        )
        .route("/v1/conversations/{conv}/typing", post(typing))
        .route("/v1/groups", post(create_group))
        .route(
            "/v1/groups/{id}",
            get(group_info).patch(update_group).delete(dismiss_group),
        )
        .route(
            "/v1/groups/{id}/members",
            get(group_members).post(add_members),
        )
        .route(
            "/v1/groups/{id}/members/{user}",
            axum::routing::delete(remove_member),
        )
        .route("/v1/groups/{id}/join", post(join_group))
        .route("/v1/groups/{id}/leave", post(leave_group))
        .route("/v1/groups/{id}/transfer", post(transfer_group))
        .route("/v1/groups/{id}/admins", post(set_admin))
        .route("/v1/groups/{id}/mutes", post(mute_member))
        .route("/v1/groups/{id}/mute-all", post(mute_all))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn conv_param(s: &str) -> Result<ConvId, HttpError> {
    s.parse()
        .map_err(|e: &str| HttpError(ApiError::new(ErrorCode::InvalidArgument, e)))
}

/// Prometheus metrics (text format): connections, messages, pulls, signals, store commit
/// latency, errors by code. docs/ARCHITECTURE.md lists them.
pub async fn prometheus() -> String {
    crate::metrics_handle().render()
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Done)))]
pub async fn healthz() -> Json<Done> {
    Json(DONE)
}

#[derive(Deserialize)]
pub struct RouteQuery {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
}

/// Which gateways to connect to, best first.
/// The peer address, when the server was started with connect info (tests through
/// `oneshot` have none and are not limited).
fn peer_ip(ext: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
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

#[utoipa::path(post, path = "/v1/accounts", request_body = RegisterRequest,
    responses((status = 200, body = Profile), (status = 409, body = ApiError), (status = 400, body = ApiError)))]
pub async fn register(
    State(s): State<ApiState>,
    Body(req): Body<RegisterRequest>,
) -> HttpResult<Profile> {
    Ok(Json(s.logic.register(req).await?))
}

/// Log in one device; the token names user and device.
#[utoipa::path(post, path = "/v1/sessions", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError)))]
pub async fn login(
    State(s): State<ApiState>,
    Body(req): Body<LoginRequest>,
) -> HttpResult<LoginResponse> {
    Ok(Json(s.logic.login(req).await?))
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

#[utoipa::path(get, path = "/v1/users/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Profile), (status = 404, body = ApiError)))]
pub async fn user(
    State(s): State<ApiState>,
    Auth(_): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Profile> {
    Ok(Json(s.logic.profile(UserId(id)).await?))
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

/// Send a message. Idempotent per (sender, client_msg_id); answered after durable commit.
#[utoipa::path(post, path = "/v1/messages", request_body = SendRequest,
    responses((status = 200, body = SendResponse), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn send(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(req): Body<SendRequest>,
) -> HttpResult<SendResponse> {
    Ok(Json(s.logic.send(&c, req).await?))
}

/// Recall one's own message within the recall window.
#[utoipa::path(post, path = "/v1/messages/recall", request_body = RecallRequest,
    responses((status = 200, body = SendResponse), (status = 403, body = ApiError), (status = 422, body = ApiError)))]
pub async fn recall(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(req): Body<RecallRequest>,
) -> HttpResult<SendResponse> {
    Ok(Json(s.logic.recall(&c, req).await?))
}

#[derive(Deserialize)]
pub struct SyncQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    groups: bool,
}

/// Pull inbox entries after a cursor; the pull is the acknowledgement.
#[utoipa::path(get, path = "/v1/sync", params(("after" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = SyncResponse)))]
pub async fn sync(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Query(q): Query<SyncQuery>,
) -> HttpResult<SyncResponse> {
    Ok(Json(
        s.logic
            .sync(
                &c,
                SyncRequest {
                    after: q.after,
                    limit: q.limit,
                    groups: q.groups,
                },
            )
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct PresenceQuery {
    users: String,
}

/// Presence of friends, e.g. `?users=3,4,5`.
#[utoipa::path(get, path = "/v1/presence", params(("users" = String, Query, description = "comma-separated user ids")),
    responses((status = 200, body = PresenceList)))]
pub async fn presence(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Query(q): Query<PresenceQuery>,
) -> HttpResult<PresenceList> {
    let users = q
        .users
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.trim().parse().map(UserId))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            HttpError(ApiError::new(
                ErrorCode::InvalidArgument,
                "users must be comma-separated ids",
            ))
        })?;
    Ok(Json(s.logic.presence(&c, PresenceRequest { users }).await?))
}

#[utoipa::path(get, path = "/v1/conversations", responses((status = 200, body = ConversationList)))]
pub async fn conversations(
    State(s): State<ApiState>,
    Auth(c): Auth,
) -> HttpResult<ConversationList> {
    Ok(Json(s.logic.conversations(&c).await?))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// Page a conversation's history by conv_seq (newest page when neither bound is given).
#[utoipa::path(get, path = "/v1/conversations/{conv}/messages", params(("conv" = String, Path),
    ("before" = Option<u64>, Query), ("after" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = HistoryResponse), (status = 404, body = ApiError)))]
pub async fn history(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(conv): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> HttpResult<HistoryResponse> {
    let conv = conv_param(&conv)?;
    Ok(Json(
        s.logic
            .history(
                &c,
                HistoryRequest {
                    conv,
                    before: q.before,
                    after: q.after,
                    limit: q.limit,
                },
            )
            .await?,
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct ReadBody {
    seq: u64,
}

/// Move the caller's read cursor forward.
#[utoipa::path(post, path = "/v1/conversations/{conv}/read", params(("conv" = String, Path)), request_body = ReadBody,
    responses((status = 200, body = ReadResponse)))]
pub async fn mark_read(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(conv): Path<String>,
    Body(b): Body<ReadBody>,
) -> HttpResult<ReadResponse> {
    let conv = conv_param(&conv)?;
    Ok(Json(
        s.logic
            .mark_read(&c, ReadRequest { conv, seq: b.seq })
            .await?,
    ))
}

/// Who has and who has not read a message.
#[utoipa::path(get, path = "/v1/conversations/{conv}/messages/{seq}/read-state", params(("conv" = String, Path), ("seq" = u64, Path),
    ("after" = Option<u64>, Query, description = "page: user ids greater than this"), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = ReadState)))]
pub async fn read_state(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path((conv, seq)): Path<(String, u64)>,
    Query(q): Query<PageQuery>,
) -> HttpResult<ReadState> {
    let conv = conv_param(&conv)?;
    let req = ReadStateRequest {
        conv,
        seq,
        after: q.after.map(UserId),
        limit: q.limit,
    };
    Ok(Json(s.logic.read_state(&c, req).await?))
}

#[utoipa::path(post, path = "/v1/conversations/{conv}/typing", params(("conv" = String, Path)), responses((status = 200, body = Done)))]
pub async fn typing(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(conv): Path<String>,
) -> HttpResult<Done> {
    let conv = conv_param(&conv)?;
    s.logic.typing(&c, TypingRequest { conv }).await?;
    Ok(Json(DONE))
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
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let text = q.mode.as_deref() == Some("text");
    xinge_gateway::ws::upgrade(gateway, up, q.token.or(header_token), text).into_response()
}

// === groups ===

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
    Path(id): Path<u64>,
) -> HttpResult<GroupInfo> {
    Ok(Json(s.logic.group_info(&c, id).await?))
}

/// Rename, or change the avatar or notice (admins).
#[utoipa::path(patch, path = "/v1/groups/{id}", params(("id" = u64, Path)), request_body = UpdateGroupRequest,
    responses((status = 200, body = GroupInfo), (status = 403, body = ApiError)))]
pub async fn update_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
    Body(req): Body<UpdateGroupRequest>,
) -> HttpResult<GroupInfo> {
    Ok(Json(s.logic.update_group(&c, id, req).await?))
}

/// Dismiss the group (owner).
#[utoipa::path(delete, path = "/v1/groups/{id}", params(("id" = u64, Path)), responses((status = 200, body = Done), (status = 403, body = ApiError)))]
pub async fn dismiss_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.dismiss_group(&c, id).await?;
    Ok(Json(DONE))
}

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/groups/{id}/members", params(("id" = u64, Path), ("after" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = GroupMembers)))]
pub async fn group_members(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
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
    Path(id): Path<u64>,
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
    Path((id, user)): Path<(u64, u64)>,
) -> HttpResult<Done> {
    s.logic.remove_member(&c, id, UserId(user)).await?;
    Ok(Json(DONE))
}

/// Join a group one was invited to.
#[utoipa::path(post, path = "/v1/groups/{id}/join", params(("id" = u64, Path)), responses((status = 200, body = Done), (status = 404, body = ApiError)))]
pub async fn join_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.join_group(&c, id).await?;
    Ok(Json(DONE))
}

#[utoipa::path(post, path = "/v1/groups/{id}/leave", params(("id" = u64, Path)), responses((status = 200, body = Done)))]
pub async fn leave_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.leave_group(&c, id).await?;
    Ok(Json(DONE))
}

#[utoipa::path(post, path = "/v1/groups/{id}/transfer", params(("id" = u64, Path)), request_body = TransferRequest, responses((status = 200, body = Done)))]
pub async fn transfer_group(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(id): Path<u64>,
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
    Path(id): Path<u64>,
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
    Path(id): Path<u64>,
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
    Path(id): Path<u64>,
    Body(req): Body<FlagRequest>,
) -> HttpResult<Done> {
    s.logic.mute_all(&c, id, req.on).await?;
    Ok(Json(DONE))
}
