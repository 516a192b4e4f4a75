//! What the app's own server does through the admin API: create users (with or without a
//! password), issue a device token for a user it logged in itself, ban and unban, list and
//! log out devices, send as a user, delete a message for everyone, create groups in a
//! user's name, delete a user, export a user's data, count who is online. The caller is an
//! admin key, not a user: the api crate never reaches these with a user's token; what is
//! done in a user's name goes through the user's own path with the user as the caller.

use crate::{Caller, Logic, Result, error::bad};
use xinge_core::error::ApiError;
use xinge_core::{ConvId, DeviceId, ErrorCode, GroupId, UserId};
use xinge_proto::api::{
    AdminExport, AdminImport, AdminImportResult, AdminImported, AdminNewUser, AdminOnline,
    AdminUser, CreateGroupRequest, DeadLetterView, DeadLetters, DeviceView, Devices, GroupInfo,
    LoginResponse, MessageBody, Profile, RegisterRequest, SendRequest, SendResponse,
};
use xinge_push::EndReason;
use xinge_store::{Commit, NO_PASSWORD, Op, OutboxEvent};

/// The most users one import creates.
pub const MAX_IMPORT: usize = 1_000;

/// The largest memory cost (KiB) and iteration count an imported Argon2 hash may ask of
/// every login that checks it: a hash made to cost gigabytes would make each login
/// attempt an allocation of that size.
const IMPORT_MAX_M_KIB: u32 = 256 * 1024;
const IMPORT_MAX_T: u32 = 16;
const IMPORT_MAX_P: u32 = 16;

/// `hash` if it is an Argon2 hash in PHC form whose costs are within bounds.
fn imported_hash(hash: String) -> Result<String> {
    use argon2::password_hash::PasswordHash;
    let invalid = |why: &str| {
        bad(
            ErrorCode::InvalidArgument,
            format!("password_hash must be an Argon2 hash in PHC form: {why}"),
        )
    };
    if hash.len() > 512 {
        return Err(invalid("too long"));
    }
    let parsed = PasswordHash::new(&hash).map_err(|_| invalid("it does not parse"))?;
    if !matches!(
        parsed.algorithm.as_str(),
        "argon2id" | "argon2i" | "argon2d"
    ) {
        return Err(invalid("another algorithm"));
    }
    let params = argon2::Params::try_from(&parsed).map_err(|_| invalid("bad parameters"))?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(invalid("no salt or no hash"));
    }
    if params.m_cost() > IMPORT_MAX_M_KIB
        || params.t_cost() > IMPORT_MAX_T
        || params.p_cost() > IMPORT_MAX_P
    {
        return Err(invalid(&format!(
            "costs above m={IMPORT_MAX_M_KIB},t={IMPORT_MAX_T},p={IMPORT_MAX_P}"
        )));
    }
    Ok(hash)
}

fn imported(
    username: String,
    status: &str,
    user_id: Option<UserId>,
    error: Option<ApiError>,
) -> AdminImportResult {
    AdminImportResult {
        username,
        status: status.to_owned(),
        user_id,
        error,
    }
}

impl Logic {
    /// Creates a user for the app's server: like a registration, but the password may be
    /// left out (the user then signs in only through [`Self::admin_issue_token`]) and no
    /// per-address limit applies.
    pub async fn admin_create_user(&self, req: AdminNewUser) -> Result<Profile> {
        let password = req.password.clone();
        let check = RegisterRequest {
            username: req.username,
            // Validated like any password when given; a placeholder of a valid length
            // otherwise (never stored: see below).
            password: password.clone().unwrap_or_else(|| "x".repeat(8)),
            display_name: req.display_name,
        };
        crate::account::check_registration(&check)?;
        if let Some(ext) = &req.external_id
            && (ext.is_empty() || ext.len() > 128 || ext.chars().any(char::is_control))
        {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "external_id must be 1-128 bytes, no control characters",
            ));
        }
        let hash = match (password, req.password_hash) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "give password or password_hash, not both",
                ));
            }
            (Some(_), None) => None,
            (None, Some(hash)) => Some(imported_hash(hash)?),
            (None, None) => Some(NO_PASSWORD.to_owned()),
        };
        self.create_account(check, hash, req.external_id).await
    }

    /// Creates each of `users` ([`AdminImport`]) on its own, in order. A user already
    /// there with the same username and `external_id` is reported as `exists`, so that an
    /// import cut short can be sent again as it was.
    pub async fn admin_import_users(&self, req: AdminImport) -> Result<AdminImported> {
        if req.users.len() > MAX_IMPORT {
            return Err(bad(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_IMPORT} users per import"),
            ));
        }
        let mut out = AdminImported {
            created: 0,
            results: Vec::with_capacity(req.users.len()),
        };
        for user in req.users {
            let username = user.username.clone();
            let external_id = user.external_id.clone();
            let created = self.admin_create_user(user).await;
            let result = match created.map_err(ApiError::from) {
                Ok(p) => {
                    out.created += 1;
                    imported(username, "created", Some(p.user_id), None)
                }
                Err(e) if e.code == ErrorCode::Conflict => {
                    match self.store.user_by_name(&username).await? {
                        Some(u) if external_id.is_some() && u.external_id == external_id => {
                            imported(username, "exists", Some(u.id), None)
                        }
                        _ => imported(username, "failed", None, Some(e)),
                    }
                }
                // What the store could not do fails the request (the app retries it
                // whole); what is wrong with one user fails only that user.
                Err(e) if e.code == ErrorCode::Internal || e.code == ErrorCode::Unavailable => {
                    return Err(e.into());
                }
                Err(e) => imported(username, "failed", None, Some(e)),
            };
            out.results.push(result);
        }
        Ok(out)
    }

    /// The user with exactly this username, or the app's id, as [`Self::admin_user`]
    /// shows them.
    pub async fn admin_find_user(&self, by: FindBy<'_>) -> Result<AdminUser> {
        let found = match by {
            FindBy::Username(name) => self.store.user_by_name(name).await?,
            FindBy::ExternalId(ext) => self.store.user_by_external_id(ext).await?,
        };
        let u = found.ok_or_else(|| bad(ErrorCode::NotFound, "no such user"))?;
        self.admin_user(u.id).await
    }

    /// A user as the app's server sees it: the profile, whether banned, when created.
    pub async fn admin_user(&self, user: UserId) -> Result<AdminUser> {
        let u = self.existing_user(user).await?;
        Ok(AdminUser {
            external_id: u.external_id,
            user_id: u.id,
            username: u.username,
            display_name: u.display_name,
            has_password: u.password_hash != NO_PASSWORD,
            banned: u.banned,
            created_at_ms: u.created_at_ms,
        })
    }

    /// A token for `user`'s `device`, as a login would give: for an app that signs its
    /// users in itself. The device's older token (and its connections) end.
    pub async fn admin_issue_token(&self, user: UserId, device: &str) -> Result<LoginResponse> {
        let device = DeviceId::parse(device)
            .ok_or_else(|| bad(ErrorCode::InvalidArgument, "not a device name"))?;
        let record = self.usable_user(user).await?;
        self.log_in_device(record, &device).await
    }

    /// Logs out one of `user`'s devices: its token ends, its connections close.
    pub async fn admin_log_out(&self, user: UserId, device: &str) -> Result<()> {
        let device = DeviceId::parse(device)
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such device is logged in"))?;
        if self.store.device_token(user, &device).await?.is_none() {
            return Err(bad(ErrorCode::NotFound, "no such device is logged in"));
        }
        self.log_out_device(user, &device).await
    }

    /// `user`'s logged-in devices, as the user's own list shows them.
    pub async fn admin_devices(&self, user: UserId) -> Result<Devices> {
        self.existing_user(user).await?;
        let devices = self
            .device_views(user, None)
            .await?
            .into_iter()
            .map(|d| DeviceView {
                current: false,
                ..d
            })
            .collect();
        Ok(Devices { devices })
    }

    /// Bans (`true`) or unbans a user. A ban logs every device out at once (tokens
    /// revoked, connections closed with `banned`) and refuses logins and new tokens until
    /// it is lifted; the user's data stays.
    pub async fn admin_set_banned(&self, user: UserId, banned: bool) -> Result<AdminUser> {
        let kind = if banned {
            "account.banned"
        } else {
            "account.unbanned"
        };
        let events = self.outbox_events(vec![OutboxEvent::Other {
            kind,
            data: serde_json::json!({ "user_id": user }),
        }]);
        self.store.set_banned(user, banned, &events).await?;
        if banned {
            self.end_sessions(user, None, None, EndReason::Banned).await;
        }
        self.admin_user(user).await
    }
}

impl Logic {
    /// Sends `req` as `user`, through the same path as the user's own sends (their
    /// limits, their friendships and memberships, idempotent by `client_msg_id`), from a
    /// device named `admin`.
    pub async fn admin_send_as(&self, user: UserId, req: SendRequest) -> Result<SendResponse> {
        let caller = self.acting_as(user).await?;
        self.send(&caller, req).await
    }

    /// Deletes a message for everyone (moderation): the stored message's content is
    /// replaced by a `deleted` body, so no history, sync or conversation list shows it
    /// again, to anyone. Devices that already hold it are not told (there is no sender to
    /// put a tombstone in the timeline in the name of). Deleting it again is a no-op.
    pub async fn admin_delete_message(&self, conv: ConvId, conv_seq: u64) -> Result<()> {
        let target = self
            .store
            .messages(conv, conv_seq, conv_seq, 1, false)
            .await?
            .pop()
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such message"))?;
        match target.body {
            MessageBody::Content { .. } | MessageBody::Recalled { .. } => {}
            MessageBody::Deleted { .. } => return Ok(()),
            MessageBody::Recall { .. } | MessageBody::System { .. } => {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "only a message with content can be deleted",
                ));
            }
        }
        let body = MessageBody::Deleted {
            at_ms: self.cfg.clock.now_ms(),
        };
        self.commit(Commit {
            ops: vec![Op::Redact {
                conv,
                conv_seq,
                body,
            }],
            ..Default::default()
        })
        .await?;
        Ok(())
    }
}

impl Logic {
    /// Who is connected now.
    pub async fn admin_online(&self) -> AdminOnline {
        let o = self.push.online().await;
        AdminOnline {
            users: o.users,
            connections: o.connections,
            gateways: o.gateways,
        }
    }

    /// Deletes a user: the profile is erased (username `deleted-<id>`, freeing theirs,
    /// display name "Deleted user", no password), every device logged out at once, and
    /// no login or token from then on. What they sent stays in the others' histories,
    /// under their id, which now names the erased profile.
    pub async fn admin_delete_user(&self, user: UserId) -> Result<AdminUser> {
        let events = self.outbox_events(vec![OutboxEvent::Other {
            kind: "account.deleted",
            data: serde_json::json!({ "user_id": user }),
        }]);
        self.store
            .erase_user(user, &format!("deleted-{user}"), "Deleted user", &events)
            .await?;
        self.end_sessions(user, None, None, EndReason::Banned).await;
        self.admin_user(user).await
    }

    /// A user's data as JSON: profile, friends, groups, and the messages they sent (the
    /// oldest [`ADMIN_EXPORT_MAX_MESSAGES`], in conversation order).
    pub async fn admin_export(&self, user: UserId) -> Result<AdminExport> {
        let profile = self.admin_user(user).await?;
        let friends = self.store.friends(user, FRIENDS_LISTED).await?;
        let convs = self
            .store
            .memberships(user, self.cfg.chat.max_conversations)
            .await?;
        let groups = convs
            .iter()
            .filter_map(|m| match m.conv {
                ConvId::Group(g) => Some(g),
                ConvId::Direct(..) => None,
            })
            .collect();
        let (mut messages, mut truncated) = (Vec::new(), false);
        let page = self.cfg.chat.max_page.max(1);
        'convs: for m in &convs {
            let head = self.store.conv_head(m.conv).await?;
            let mut from = 1;
            while from <= head {
                let batch = self.store.messages(m.conv, from, head, page, false).await?;
                let Some(last) = batch.last().map(|b| b.conv_seq) else {
                    break;
                };
                for msg in batch.into_iter().filter(|msg| msg.sender == user) {
                    if messages.len() == ADMIN_EXPORT_MAX_MESSAGES {
                        truncated = true;
                        break 'convs;
                    }
                    messages.push(msg);
                }
                from = last + 1;
            }
        }
        Ok(AdminExport {
            user: profile,
            friends,
            groups,
            messages,
            truncated,
        })
    }

    /// Creates a group with `user` as its owner, through the same path as the user's own.
    pub async fn admin_create_group(
        &self,
        user: UserId,
        req: CreateGroupRequest,
    ) -> Result<GroupInfo> {
        let caller = self.acting_as(user).await?;
        self.create_group(&caller, req).await
    }

    /// Adds members to a group as `user` (an admin of it) would.
    pub async fn admin_add_members(
        &self,
        user: UserId,
        group: GroupId,
        users: &[UserId],
    ) -> Result<()> {
        let caller = self.acting_as(user).await?;
        self.add_members(&caller, group, users).await
    }

    /// `user` as the caller of an operation the app's server does in their name, from a
    /// device named `admin`: refused for a banned (or deleted) user.
    async fn acting_as(&self, user: UserId) -> Result<Caller> {
        self.usable_user(user).await?;
        Ok(Caller {
            user,
            device: DeviceId::parse(ADMIN_DEVICE)
                .ok_or_else(|| bad(ErrorCode::Internal, "internal error"))?,
            origin: None,
            token: 0,
        })
    }
}

impl Logic {
    /// The after-events webhook's dead letters, oldest first, from id `after` on.
    pub async fn admin_dead_letters(&self, after: u64, limit: usize) -> Result<DeadLetters> {
        let limit = limit.clamp(1, self.cfg.chat.max_page.max(1));
        let letters = self.store.dead_letters(after, limit).await?;
        Ok(DeadLetters {
            dead_letters: letters
                .into_iter()
                .map(|d| DeadLetterView {
                    id: d.id,
                    // Written by this server as JSON; shown as it was if it is not.
                    event: serde_json::from_str(&d.event)
                        .unwrap_or(serde_json::Value::String(d.event)),
                    error: d.error,
                    at_ms: d.at_ms,
                })
                .collect(),
        })
    }

    /// Puts a dead letter back into the outbox, to be delivered as the newest event.
    pub async fn admin_replay(&self, id: u64) -> Result<()> {
        self.store
            .replay_dead_letter(id)
            .await
            .map_err(|e| match e {
                xinge_store::StoreError::NotFound => {
                    bad(ErrorCode::NotFound, "no such dead letter")
                }
                e => e.into(),
            })
    }
}

impl Logic {
    async fn existing_user(&self, user: UserId) -> Result<xinge_store::UserRecord> {
        self.store
            .user(user)
            .await?
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such user"))
    }

    /// A user the app's server may act for or issue a token to: one that exists and is
    /// not banned (nor deleted).
    async fn usable_user(&self, user: UserId) -> Result<xinge_store::UserRecord> {
        let record = self.existing_user(user).await?;
        if record.banned {
            return Err(banned());
        }
        Ok(record)
    }
}

/// How the app's server names a user it looks for.
pub enum FindBy<'a> {
    Username(&'a str),
    ExternalId(&'a str),
}

/// Messages one export holds at most.
pub const ADMIN_EXPORT_MAX_MESSAGES: usize = 100_000;

/// Friends one export lists at most (as the friend list does).
const FRIENDS_LISTED: usize = 5_000;

/// The device the app's server sends from when it sends as a user.
const ADMIN_DEVICE: &str = "admin";

/// The answer to a banned user's login or token.
pub(crate) fn banned() -> crate::Error {
    bad(ErrorCode::Banned, "this account is banned")
}
