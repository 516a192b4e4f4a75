//! The admin API, `/admin/v1/…`, for the app's own server: users created with or without a
//! password, device tokens issued for users the app signed in itself, bans, devices.
//!
//! It is authenticated by admin keys (`Authorization: Bearer <key>`), never by a user's
//! token: a token is no key, and a key is no token (the user API finds no such token). The
//! configuration holds each key's SHA-256, never the key; a presented key is hashed and
//! compared with every configured hash in constant time. Every action is logged with the
//! name of the key that took it. It is served on a listener of its own (loopback by
//! default) or, if so configured, beside the user API; its OpenAPI document is
//! `/admin/v1/openapi.json`.

use crate::http::{DONE, Done};
use crate::{Body, HttpError, HttpResult, Path, Query, bearer_token};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use xinge_core::config::{AdminConfig, ConfigError};
use xinge_core::error::ApiError;
use xinge_core::{ErrorCode, GroupId, UserId};
use xinge_logic::{FindBy, Logic};
use xinge_proto::api::{
    AdminExport, AdminImport, AdminImported, AdminNewUser, AdminOnline, AdminTokenRequest,
    AdminUser, CreateGroupRequest, DeadLetters, Devices, GroupInfo, LoginResponse, Profile,
    SendRequest, SendResponse, UsersRequest,
};

/// The admin keys: each one's name and the SHA-256 of the key.
pub struct AdminKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl AdminKeys {
    pub fn from_config(cfg: &AdminConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            keys: cfg.parsed_keys()?,
        })
    }

    /// No key: the admin API is off.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the key `presented` is. Its hash is compared with every configured
    /// hash, each in constant time, whichever matches: the time tells nothing of how much
    /// of a key was right.
    fn check(&self, presented: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, key) in &self.keys {
            let diff = hash.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// A new admin key: 32 random bytes, hex, and its config entry `name:sha256`.
pub fn new_key(name: &str) -> (String, String) {
    // rand's thread generator: a CSPRNG seeded from the operating system.
    let key = hex(&rand::random::<[u8; 32]>());
    let entry = key_entry(name, &key);
    (key, entry)
}

/// The config entry of key `key` named `name`: `name:sha256(key)`.
pub fn key_entry(name: &str, key: &str) -> String {
    format!("{name}:{}", hex(&Sha256::digest(key.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin API's handler state.
#[derive(Clone)]
pub struct AdminState {
    pub logic: Arc<Logic>,
    pub keys: Arc<AdminKeys>,
}

/// The admin key of a request: its name.
pub struct Admin(pub String);

impl FromRequestParts<AdminState> for Admin {
    type Rejection = HttpError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let refused = || ApiError::new(ErrorCode::Unauthenticated, "an admin key is required");
        let key = bearer_token(&parts.headers).ok_or_else(refused)?;
        match state.keys.check(key) {
            Some(name) => Ok(Admin(name.to_owned())),
            None => {
                metrics::counter!("xinge_admin_refused_total").increment(1);
                Err(refused().into())
            }
        }
    }
}

/// Logs and counts an admin action.
fn acted(admin: &Admin, action: &'static str, user: UserId) {
    metrics::counter!("xinge_admin_actions_total", "action" => action).increment(1);
    tracing::info!(admin = %admin.0, action, %user, "admin action");
}

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create_user, find_user))
        .routes(routes!(import_users))
        .routes(routes!(user))
        .routes(routes!(devices))
        .routes(routes!(issue_token))
        .routes(routes!(log_out_device))
        .routes(routes!(ban, unban))
        .routes(routes!(send_as))
        .routes(routes!(delete_message))
        .routes(routes!(delete_user))
        .routes(routes!(export))
        .routes(routes!(create_group))
        .routes(routes!(add_members))
        .routes(routes!(online))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
}

#[derive(serde::Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// The after-events webhook's dead letters, oldest first (`after`: the last id seen).
#[utoipa::path(get, path = "/admin/v1/webhooks/dead-letters",
    params(("after" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = DeadLetters)))]
async fn dead_letters(
    State(s): State<AdminState>,
    _admin: Admin,
    Query(q): Query<PageQuery>,
) -> HttpResult<DeadLetters> {
    let page = s
        .logic
        .admin_dead_letters(q.after.unwrap_or(0), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(page))
}

/// Deliver a dead letter again: it goes back into the outbox as its newest event.
#[utoipa::path(post, path = "/admin/v1/webhooks/dead-letters/{id}/replay", params(("id" = u64, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError)))]
async fn replay(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<u64>,
) -> HttpResult<Done> {
    s.logic.admin_replay(id).await?;
    metrics::counter!("xinge_admin_actions_total", "action" => "replay").increment(1);
    tracing::info!(admin = %admin.0, action = "replay", dead_letter = id, "admin action");
    Ok(Json(DONE))
}

/// Delete a user: the profile erased (username `deleted-<id>`, the old one free again,
/// display name "Deleted user", no password), every device logged out at once (connections
/// closed with `banned`), no login or token again. What they sent stays in the others'
/// histories under their id.
#[utoipa::path(delete, path = "/admin/v1/users/{id}", params(("id" = String, Path)),
    responses((status = 200, body = AdminUser), (status = 404, body = ApiError)))]
async fn delete_user(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
) -> HttpResult<AdminUser> {
    let user = s.logic.admin_delete_user(id).await?;
    acted(&admin, "delete_user", id);
    Ok(Json(user))
}

/// A user's data: profile, friends, groups and the messages they sent.
#[utoipa::path(get, path = "/admin/v1/users/{id}/export", params(("id" = String, Path)),
    responses((status = 200, body = AdminExport), (status = 404, body = ApiError)))]
async fn export(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
) -> HttpResult<AdminExport> {
    let data = s.logic.admin_export(id).await?;
    acted(&admin, "export", id);
    Ok(Json(data))
}

/// Create a group in a user's name (they own it), through the user's own path.
#[utoipa::path(post, path = "/admin/v1/users/{id}/groups", params(("id" = String, Path)),
    request_body = CreateGroupRequest,
    responses((status = 200, body = GroupInfo), (status = 404, body = ApiError)))]
async fn create_group(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
    Body(req): Body<CreateGroupRequest>,
) -> HttpResult<GroupInfo> {
    let group = s.logic.admin_create_group(id, req).await?;
    acted(&admin, "create_group", id);
    Ok(Json(group))
}

/// Add members to a group in the name of one of its admins.
#[utoipa::path(post, path = "/admin/v1/users/{id}/groups/{group}/members",
    params(("id" = String, Path), ("group" = String, Path)), request_body = UsersRequest,
    responses((status = 200, body = Done), (status = 404, body = ApiError), (status = 403, body = ApiError)))]
async fn add_members(
    State(s): State<AdminState>,
    admin: Admin,
    Path((id, group)): Path<(UserId, GroupId)>,
    Body(req): Body<UsersRequest>,
) -> HttpResult<Done> {
    s.logic.admin_add_members(id, group, &req.users).await?;
    acted(&admin, "add_members", id);
    Ok(Json(DONE))
}

/// Who is connected now: connections and gateways (and users, where counted).
#[utoipa::path(get, path = "/admin/v1/online", responses((status = 200, body = AdminOnline)))]
async fn online(State(s): State<AdminState>, _admin: Admin) -> Json<AdminOnline> {
    Json(s.logic.admin_online().await)
}

/// Send a message as a user, through the same path as the user's own sends: their limits,
/// friendships and memberships apply, and a retry with the same `client_msg_id` returns
/// the first answer.
#[utoipa::path(post, path = "/admin/v1/users/{id}/messages", params(("id" = String, Path)),
    request_body = SendRequest,
    responses((status = 200, body = SendResponse), (status = 404, body = ApiError), (status = 403, body = ApiError)))]
async fn send_as(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
    Body(req): Body<SendRequest>,
) -> HttpResult<SendResponse> {
    let sent = s.logic.admin_send_as(id, req).await?;
    if !sent.duplicate {
        acted(&admin, "send_as", id);
    }
    Ok(Json(sent))
}

/// Delete a message for everyone (moderation): its content is gone from every history,
/// sync and conversation list; it reads as `{"kind": "deleted", "at_ms"}` in its place.
#[utoipa::path(delete, path = "/admin/v1/conversations/{conv}/messages/{seq}",
    params(("conv" = String, Path), ("seq" = u64, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError)))]
async fn delete_message(
    State(s): State<AdminState>,
    admin: Admin,
    Path((conv, seq)): Path<(String, u64)>,
) -> HttpResult<Done> {
    let conv = crate::http::conv_param(&conv)?;
    s.logic.admin_delete_message(conv, seq).await?;
    metrics::counter!("xinge_admin_actions_total", "action" => "delete_message").increment(1);
    tracing::info!(admin = %admin.0, action = "delete_message", %conv, seq, "admin action");
    Ok(Json(DONE))
}

/// Create a user. Without `password` the user signs in only with tokens issued here.
#[utoipa::path(post, path = "/admin/v1/users", request_body = AdminNewUser,
    responses((status = 200, body = Profile), (status = 409, body = ApiError), (status = 400, body = ApiError)))]
async fn create_user(
    State(s): State<AdminState>,
    admin: Admin,
    Body(req): Body<AdminNewUser>,
) -> HttpResult<Profile> {
    let profile = s.logic.admin_create_user(req).await?;
    acted(&admin, "create_user", profile.user_id);
    Ok(Json(profile))
}

/// Create up to 1,000 users at once (each with a password, an Argon2 `password_hash`
/// from another system, or neither), each on its own: the answer says, in order, which
/// were created, which were already there (same username and `external_id`: a retried
/// import), and why any failed.
#[utoipa::path(post, path = "/admin/v1/users/import", request_body = AdminImport,
    responses((status = 200, body = AdminImported), (status = 400, body = ApiError)))]
async fn import_users(
    State(s): State<AdminState>,
    admin: Admin,
    Body(req): Body<AdminImport>,
) -> HttpResult<AdminImported> {
    let asked = req.users.len();
    let done = s.logic.admin_import_users(req).await?;
    metrics::counter!("xinge_admin_actions_total", "action" => "import_users").increment(1);
    tracing::info!(admin = %admin.0, action = "import_users", asked, created = done.created, "admin action");
    Ok(Json(done))
}

#[derive(serde::Deserialize)]
struct FindQuery {
    username: Option<String>,
    external_id: Option<String>,
}

/// A user by exact username, or by the app's own id: give one of the two.
#[utoipa::path(get, path = "/admin/v1/users",
    params(("username" = Option<String>, Query), ("external_id" = Option<String>, Query)),
    responses((status = 200, body = AdminUser), (status = 404, body = ApiError), (status = 400, body = ApiError)))]
async fn find_user(
    State(s): State<AdminState>,
    _admin: Admin,
    Query(q): Query<FindQuery>,
) -> HttpResult<AdminUser> {
    let by = match (&q.username, &q.external_id) {
        (Some(name), None) => FindBy::Username(name),
        (None, Some(ext)) => FindBy::ExternalId(ext),
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give one of username and external_id",
            )
            .into());
        }
    };
    Ok(Json(s.logic.admin_find_user(by).await?))
}

/// A user: profile, whether banned, whether they have a password.
#[utoipa::path(get, path = "/admin/v1/users/{id}", params(("id" = String, Path)),
    responses((status = 200, body = AdminUser), (status = 404, body = ApiError)))]
async fn user(
    State(s): State<AdminState>,
    _admin: Admin,
    Path(id): Path<UserId>,
) -> HttpResult<AdminUser> {
    Ok(Json(s.logic.admin_user(id).await?))
}

/// A user's logged-in devices.
#[utoipa::path(get, path = "/admin/v1/users/{id}/devices", params(("id" = String, Path)),
    responses((status = 200, body = Devices), (status = 404, body = ApiError)))]
async fn devices(
    State(s): State<AdminState>,
    _admin: Admin,
    Path(id): Path<UserId>,
) -> HttpResult<Devices> {
    Ok(Json(s.logic.admin_devices(id).await?))
}

/// Issue a token for one of a user's devices, as a login would: for an app that signs its
/// users in itself. The device's older token and its connections end.
#[utoipa::path(post, path = "/admin/v1/users/{id}/tokens", params(("id" = String, Path)),
    request_body = AdminTokenRequest,
    responses((status = 200, body = LoginResponse), (status = 404, body = ApiError), (status = 403, body = ApiError)))]
async fn issue_token(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
    Body(req): Body<AdminTokenRequest>,
) -> HttpResult<LoginResponse> {
    let issued = s.logic.admin_issue_token(id, req.device.as_str()).await?;
    acted(&admin, "issue_token", id);
    Ok(Json(issued))
}

/// Log out one of a user's devices: its token stops working, its connections close.
#[utoipa::path(delete, path = "/admin/v1/users/{id}/devices/{device}",
    params(("id" = String, Path), ("device" = String, Path)),
    responses((status = 200, body = Done), (status = 404, body = ApiError)))]
async fn log_out_device(
    State(s): State<AdminState>,
    admin: Admin,
    Path((id, device)): Path<(UserId, String)>,
) -> HttpResult<Done> {
    s.logic.admin_log_out(id, &device).await?;
    acted(&admin, "log_out_device", id);
    Ok(Json(DONE))
}

/// Ban a user: every device logged out at once (connections closed with `banned`), logins
/// and new tokens refused until the ban is lifted. Their data stays.
#[utoipa::path(put, path = "/admin/v1/users/{id}/ban", params(("id" = String, Path)),
    responses((status = 200, body = AdminUser), (status = 404, body = ApiError)))]
async fn ban(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
) -> HttpResult<AdminUser> {
    let user = s.logic.admin_set_banned(id, true).await?;
    acted(&admin, "ban", id);
    Ok(Json(user))
}

/// Lift a ban.
#[utoipa::path(delete, path = "/admin/v1/users/{id}/ban", params(("id" = String, Path)),
    responses((status = 200, body = AdminUser), (status = 404, body = ApiError)))]
async fn unban(
    State(s): State<AdminState>,
    admin: Admin,
    Path(id): Path<UserId>,
) -> HttpResult<AdminUser> {
    let user = s.logic.admin_set_banned(id, false).await?;
    acted(&admin, "unban", id);
    Ok(Json(user))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "xinge admin API",
        description = "For the app's own server. `Authorization: Bearer <admin key>`. Errors are `{code, message}` with a stable `code`."
    ),
    components(schemas(ApiError, ErrorCode, Done))
)]
struct Doc;

/// The admin API's OpenAPI document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = Doc::openapi();
        doc.merge(routes().into_openapi());
        crate::openapi::finish(&mut doc);
        doc
    })
}

/// The admin routes and their document, bodies limited like the user API's but never
/// below 1 MiB: an import of 1,000 users with their password hashes is some 300 KiB.
pub(crate) fn router(state: AdminState) -> axum::Router {
    let max_body = state.logic.config().server.max_body_bytes.max(1 << 20);
    axum::Router::from(routes())
        .route(
            "/admin/v1/openapi.json",
            axum::routing::get(|| async { Json(document()) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_known_by_its_hash_and_named() {
        let (key, entry) = new_key("ops");
        let (other, other_entry) = new_key("deploy");
        assert_eq!(key.len(), 64);
        assert_ne!(key, other, "keys are random");
        let keys = AdminKeys::from_config(&AdminConfig {
            keys: vec![entry.clone(), other_entry],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(keys.check(&key), Some("ops"));
        assert_eq!(keys.check(&other), Some("deploy"));
        assert_eq!(keys.check(""), None);
        assert_eq!(keys.check(&key[..63]), None);
        // The config holds the hash, which is no key.
        assert_eq!(keys.check(entry.split_once(':').unwrap().1), None);
        for bad in [
            "ops",
            "ops:12",
            ":".repeat(65).as_str(),
            &format!("ops:{}", "g".repeat(64)),
        ] {
            let cfg = AdminConfig {
                keys: vec![bad.to_owned()],
                ..Default::default()
            };
            assert!(AdminKeys::from_config(&cfg).is_err(), "{bad}");
        }
    }
}
