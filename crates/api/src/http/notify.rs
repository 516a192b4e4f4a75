//! Offline push: the calling device's push registration, the caller's notification
//! preferences, and their settings of a conversation (mute, pin).

use super::{DONE, Done, conv_param};
use crate::{ApiState, Auth, Body, HttpResult, Path};
use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::error::ApiError;
use xinge_proto::api::*;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(push_config))
        .routes(routes!(push_status, set_push, remove_push))
        .routes(routes!(notify_prefs, set_notify_prefs))
        .routes(routes!(conversation_settings, set_conversation_settings))
}

/// The providers this server pushes through, and the VAPID public key a browser needs to
/// subscribe to Web Push.
#[utoipa::path(get, path = "/v1/push/config", responses((status = 200, body = PushConfigView), (status = 401, body = ApiError)))]
pub async fn push_config(State(s): State<ApiState>, Auth(_): Auth) -> HttpResult<PushConfigView> {
    Ok(Json(s.logic.push_config()))
}

/// The calling device's push registration, if any.
#[utoipa::path(get, path = "/v1/me/push", responses((status = 200, body = PushStatus), (status = 401, body = ApiError)))]
pub async fn push_status(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<PushStatus> {
    Ok(Json(s.logic.push_status(&c).await?))
}

/// Register (or replace) how the calling device is reached while it is not connected or
/// in the background: APNs, FCM, Web Push or the app's own push webhook. Logging the
/// device out removes it. 400 `invalid_argument` for a provider this server has not
/// configured or malformed fields.
#[utoipa::path(put, path = "/v1/me/push", request_body = PushRegistration,
    responses((status = 200, body = Done), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn set_push(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(reg): Body<PushRegistration>,
) -> HttpResult<Done> {
    s.logic.set_push(&c, reg).await?;
    Ok(Json(DONE))
}

/// Remove the calling device's push registration (none is fine).
#[utoipa::path(delete, path = "/v1/me/push", responses((status = 200, body = Done), (status = 401, body = ApiError)))]
pub async fn remove_push(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<Done> {
    s.logic.remove_push(&c).await?;
    Ok(Json(DONE))
}

/// The caller's notification preferences: previews, quiet hours.
#[utoipa::path(get, path = "/v1/me/notifications", responses((status = 200, body = NotifyPrefs), (status = 401, body = ApiError)))]
pub async fn notify_prefs(State(s): State<ApiState>, Auth(c): Auth) -> HttpResult<NotifyPrefs> {
    Ok(Json(s.logic.notify_prefs(&c).await?))
}

/// Replace the caller's notification preferences.
#[utoipa::path(put, path = "/v1/me/notifications", request_body = NotifyPrefs,
    responses((status = 200, body = NotifyPrefs), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn set_notify_prefs(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Body(prefs): Body<NotifyPrefs>,
) -> HttpResult<NotifyPrefs> {
    Ok(Json(s.logic.set_notify_prefs(&c, prefs).await?))
}

/// The caller's settings of a conversation they are in (404 otherwise).
#[utoipa::path(get, path = "/v1/conversations/{conv}/settings", params(("conv" = String, Path)),
    responses((status = 200, body = ConversationSettings), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
pub async fn conversation_settings(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(conv): Path<String>,
) -> HttpResult<ConversationSettings> {
    let conv = conv_param(&conv)?;
    Ok(Json(s.logic.conversation_settings(&c, conv).await?))
}

/// Mute (until a time or for good) or pin a conversation, or undo it.
#[utoipa::path(put, path = "/v1/conversations/{conv}/settings", params(("conv" = String, Path)),
    request_body = ConversationSettings,
    responses((status = 200, body = ConversationSettings), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
pub async fn set_conversation_settings(
    State(s): State<ApiState>,
    Auth(c): Auth,
    Path(conv): Path<String>,
    Body(settings): Body<ConversationSettings>,
) -> HttpResult<ConversationSettings> {
    let conv = conv_param(&conv)?;
    Ok(Json(
        s.logic
            .set_conversation_settings(&c, conv, settings)
            .await?,
    ))
}
