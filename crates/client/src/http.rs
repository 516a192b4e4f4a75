//! Typed calls to the HTTP API.

use crate::{ClientError, Result, Tls};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use xinge_core::error::ApiError;
use xinge_core::{ConvId, DeviceId, GroupId, UserId};
use xinge_proto::api::*;

#[derive(Clone)]
pub struct Http {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) token: Option<String>,
}

#[derive(serde::Deserialize)]
struct Done {
    #[allow(dead_code)]
    ok: bool,
}

/// A request that failed on the way, with its causes: reqwest's own message alone says
/// only "error sending request", not why (refused, a certificate not trusted, ...).
/// An error answer's body as the server's `ApiError`, or `otherwise` as a protocol error.
pub(crate) fn refusal(body: &[u8], otherwise: impl FnOnce() -> String) -> ClientError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => ClientError::Api(e),
        Err(_) => ClientError::Protocol(otherwise()),
    }
}

pub(crate) fn transport(e: reqwest::Error) -> ClientError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Transport(msg)
}

impl Http {
    /// `base` is like `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            token: None,
        }
    }

    /// `base` is like `https://im.example.com`; the server's certificate must lead to one
    /// of `tls`'s roots.
    pub fn with_tls(base: impl Into<String>, tls: &Tls) -> Result<Self> {
        let mut builder = reqwest::Client::builder().tls_built_in_root_certs(false);
        for root in tls.roots() {
            let cert = reqwest::Certificate::from_der(root)
                .map_err(|e| ClientError::Config(format!("tls root: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| ClientError::Config(format!("http client: {e}")))?;
        Ok(Self {
            base: base.into().trim_end_matches('/').to_owned(),
            client,
            token: None,
        })
    }

    /// Another server (`base`) with the same client — the same trusted roots — and no token.
    pub fn at(&self, base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            client: self.client.clone(),
            token: None,
        }
    }

    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let ok = resp.status().is_success();
        let bytes = resp.bytes().await.map_err(transport)?;
        if ok {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
        } else {
            Err(refusal(&bytes, || {
                String::from_utf8_lossy(&bytes).into_owned()
            }))
        }
    }

    pub(crate) async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        self.call::<(), R>(Method::GET, path, None).await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn register(&self, username: &str, password: &str) -> Result<Profile> {
        let req = RegisterRequest {
            username: username.into(),
            password: password.into(),
            display_name: None,
        };
        self.post("/v1/accounts", &req).await
    }

    /// Logs in and returns a client carrying the new token.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device: &str,
    ) -> Result<(Http, LoginResponse)> {
        let device =
            DeviceId::parse(device).ok_or_else(|| ClientError::Protocol("bad device id".into()))?;
        let req = LoginRequest {
            username: username.into(),
            password: password.into(),
            device,
        };
        let resp: LoginResponse = self.post("/v1/sessions", &req).await?;
        Ok((self.with_token(resp.token.clone()), resp))
    }

    pub async fn logout(&self) -> Result<()> {
        self.call::<(), Done>(Method::DELETE, "/v1/sessions", None)
            .await
            .map(drop)
    }

    /// Changes the password; every other device of the account is logged out.
    pub async fn change_password(&self, current: &str, new: &str) -> Result<()> {
        let req = PasswordChange {
            current_password: current.into(),
            new_password: new.into(),
        };
        self.call::<_, Done>(Method::PUT, "/v1/me/password", Some(&req))
            .await
            .map(drop)
    }

    /// The account's logged-in devices.
    pub async fn devices(&self) -> Result<Devices> {
        self.get("/v1/me/devices").await
    }

    /// Registers (or replaces) how this device is reached while away: APNs, FCM, Web
    /// Push or the app's push webhook.
    pub async fn set_push(&self, reg: &PushRegistration) -> Result<()> {
        self.call::<_, Done>(Method::PUT, "/v1/me/push", Some(reg))
            .await
            .map(drop)
    }

    /// Removes this device's push registration.
    pub async fn remove_push(&self) -> Result<()> {
        self.call::<(), Done>(Method::DELETE, "/v1/me/push", None)
            .await
            .map(drop)
    }

    /// The providers the server pushes through, and its VAPID key for Web Push.
    pub async fn push_config(&self) -> Result<PushConfigView> {
        self.get("/v1/push/config").await
    }

    /// This device's push registration, if any.
    pub async fn push_status(&self) -> Result<PushStatus> {
        self.get("/v1/me/push").await
    }

    pub async fn notify_prefs(&self) -> Result<NotifyPrefs> {
        self.get("/v1/me/notifications").await
    }

    pub async fn set_notify_prefs(&self, prefs: &NotifyPrefs) -> Result<NotifyPrefs> {
        self.call(Method::PUT, "/v1/me/notifications", Some(prefs))
            .await
    }

    pub async fn conversation_settings(&self, conv: ConvId) -> Result<ConversationSettings> {
        self.get(&format!("/v1/conversations/{conv}/settings"))
            .await
    }

    /// Mutes (until a time or for good) or pins a conversation, or undoes it.
    pub async fn set_conversation_settings(
        &self,
        conv: ConvId,
        settings: &ConversationSettings,
    ) -> Result<ConversationSettings> {
        self.call(
            Method::PUT,
            &format!("/v1/conversations/{conv}/settings"),
            Some(settings),
        )
        .await
    }

    /// Logs out another of the account's devices.
    pub async fn log_out_device(&self, device: &str) -> Result<()> {
        self.call::<(), Done>(Method::DELETE, &format!("/v1/me/devices/{device}"), None)
            .await
            .map(drop)
    }

    pub async fn me(&self) -> Result<Profile> {
        self.get("/v1/me").await
    }

    pub async fn set_display_name(&self, name: &str) -> Result<Profile> {
        self.call(
            Method::PUT,
            "/v1/me",
            Some(&ProfileUpdate {
                display_name: name.into(),
            }),
        )
        .await
    }

    pub async fn find_user(&self, username: &str) -> Result<Profile> {
        self.get(&format!("/v1/users?username={username}")).await
    }

    pub async fn request_friend(&self, to: UserId, note: &str) -> Result<()> {
        self.post::<_, Done>(
            "/v1/friends/requests",
            &FriendRequestBody {
                to,
                note: note.into(),
            },
        )
        .await
        .map(drop)
    }

    pub async fn friend_requests(&self) -> Result<FriendRequests> {
        self.get("/v1/friends/requests").await
    }

    pub async fn accept_friend(&self, from: UserId) -> Result<()> {
        self.post::<_, Done>(&format!("/v1/friends/requests/{from}/accept"), &())
            .await
            .map(drop)
    }

    pub async fn decline_friend(&self, from: UserId) -> Result<()> {
        self.post::<_, Done>(&format!("/v1/friends/requests/{from}/decline"), &())
            .await
            .map(drop)
    }

    pub async fn friends(&self) -> Result<Vec<Friend>> {
        self.get("/v1/friends").await
    }

    pub async fn remove_friend(&self, peer: UserId) -> Result<()> {
        self.call::<(), Done>(Method::DELETE, &format!("/v1/friends/{peer}"), None)
            .await
            .map(drop)
    }

    pub async fn block(&self, peer: UserId, blocked: bool) -> Result<()> {
        let m = if blocked { Method::PUT } else { Method::DELETE };
        self.call::<(), Done>(m, &format!("/v1/blocks/{peer}"), None)
            .await
            .map(drop)
    }

    pub async fn send(&self, req: &SendRequest) -> Result<SendResponse> {
        self.post("/v1/messages", req).await
    }

    pub async fn recall(&self, req: &RecallRequest) -> Result<SendResponse> {
        self.post("/v1/messages/recall", req).await
    }

    pub async fn sync(&self, after: u64, limit: Option<usize>) -> Result<SyncResponse> {
        let limit = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        self.get(&format!("/v1/sync?after={after}{limit}")).await
    }

    pub async fn conversations(&self) -> Result<ConversationList> {
        self.get("/v1/conversations").await
    }

    pub async fn history(
        &self,
        conv: ConvId,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryResponse> {
        let mut q = format!("?limit={limit}");
        if let Some(b) = before {
            q += &format!("&before={b}");
        }
        if let Some(a) = after {
            q += &format!("&after={a}");
        }
        self.get(&format!("/v1/conversations/{conv}/messages{q}"))
            .await
    }

    pub async fn mark_read(&self, conv: ConvId, seq: u64) -> Result<ReadResponse> {
        self.post(
            &format!("/v1/conversations/{conv}/read"),
            &serde_json::json!({ "seq": seq }),
        )
        .await
    }

    pub async fn read_state(&self, conv: ConvId, seq: u64) -> Result<ReadState> {
        self.get(&format!(
            "/v1/conversations/{conv}/messages/{seq}/read-state"
        ))
        .await
    }

    pub async fn typing(&self, conv: ConvId) -> Result<()> {
        self.post::<_, Done>(&format!("/v1/conversations/{conv}/typing"), &())
            .await
            .map(drop)
    }

    pub async fn presence(&self, users: &[UserId]) -> Result<PresenceList> {
        let list: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.get(&format!("/v1/presence?users={}", list.join(",")))
            .await
    }

    pub async fn route(&self) -> Result<RouteResponse> {
        self.get("/v1/route").await
    }

    /// One page of who has and has not read a message.
    pub async fn read_state_page(
        &self,
        conv: ConvId,
        seq: u64,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<ReadState> {
        let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
        self.get(&format!(
            "/v1/conversations/{conv}/messages/{seq}/read-state?limit={limit}{after}"
        ))
        .await
    }

    /// Sync that also lists the heads of large (read fan-out) groups.
    pub async fn sync_with_groups(&self, after: u64) -> Result<SyncResponse> {
        self.get(&format!("/v1/sync?after={after}&groups=true"))
            .await
    }

    // === groups ===

    pub async fn create_group(&self, name: &str, members: &[UserId]) -> Result<GroupInfo> {
        self.post(
            "/v1/groups",
            &CreateGroupRequest {
                name: name.into(),
                members: members.to_vec(),
            },
        )
        .await
    }

    pub async fn group(&self, id: GroupId) -> Result<GroupInfo> {
        self.get(&format!("/v1/groups/{id}")).await
    }

    pub async fn update_group(&self, id: GroupId, req: &UpdateGroupRequest) -> Result<GroupInfo> {
        self.call(Method::PATCH, &format!("/v1/groups/{id}"), Some(req))
            .await
    }

    pub async fn dismiss_group(&self, id: GroupId) -> Result<()> {
        self.call::<(), Done>(Method::DELETE, &format!("/v1/groups/{id}"), None)
            .await
            .map(drop)
    }

    pub async fn group_members(
        &self,
        id: GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<GroupMembers> {
        let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
        self.get(&format!("/v1/groups/{id}/members?limit={limit}{after}"))
            .await
    }

    pub async fn add_members(&self, id: GroupId, users: &[UserId]) -> Result<()> {
        self.post::<_, Done>(
            &format!("/v1/groups/{id}/members"),
            &UsersRequest {
                users: users.to_vec(),
            },
        )
        .await
        .map(drop)
    }

    pub async fn remove_member(&self, id: GroupId, user: UserId) -> Result<()> {
        self.call::<(), Done>(
            Method::DELETE,
            &format!("/v1/groups/{id}/members/{user}"),
            None,
        )
        .await
        .map(drop)
    }

    pub async fn join_group(&self, id: GroupId) -> Result<()> {
        self.post::<_, Done>(&format!("/v1/groups/{id}/join"), &())
            .await
            .map(drop)
    }

    pub async fn leave_group(&self, id: GroupId) -> Result<()> {
        self.post::<_, Done>(&format!("/v1/groups/{id}/leave"), &())
            .await
            .map(drop)
    }

    pub async fn transfer_group(&self, id: GroupId, to: UserId) -> Result<()> {
        self.post::<_, Done>(
            &format!("/v1/groups/{id}/transfer"),
            &TransferRequest { to },
        )
        .await
        .map(drop)
    }

    pub async fn set_admin(&self, id: GroupId, user: UserId, on: bool) -> Result<()> {
        self.post::<_, Done>(
            &format!("/v1/groups/{id}/admins"),
            &MemberFlagRequest { user, on },
        )
        .await
        .map(drop)
    }

    pub async fn mute_member(&self, id: GroupId, user: UserId, on: bool) -> Result<()> {
        self.post::<_, Done>(
            &format!("/v1/groups/{id}/mutes"),
            &MemberFlagRequest { user, on },
        )
        .await
        .map(drop)
    }

    pub async fn mute_all(&self, id: GroupId, on: bool) -> Result<()> {
        self.post::<_, Done>(&format!("/v1/groups/{id}/mute-all"), &FlagRequest { on })
            .await
            .map(drop)
    }
}
