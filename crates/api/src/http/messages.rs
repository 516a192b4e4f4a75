//! Messages and what follows them: send, recall, sync, history, read receipts, typing,
//! presence and the conversation list.

use super::{DONE, Done, PageQuery, conv_param};
use crate::{ApiState, Auth, Body, HttpError, HttpResult, Path, Query};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::error::ApiError;
use xinge_core::{ErrorCode, UserId};
use xinge_proto::api::*;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(recall))
        .routes(routes!(sync))
        .routes(routes!(presence))
        .routes(routes!(conversations))
        .routes(routes!(history))
        .routes(routes!(mark_read))
        .routes(routes!(read_state))
        .routes(routes!(typing))
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
