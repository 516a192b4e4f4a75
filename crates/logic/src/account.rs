//! Accounts and devices.

use crate::limits::Limited;
use crate::token::Claims;
use crate::{Caller, Logic, Result, error::bad};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::net::IpAddr;
use xinge_core::auth::Authenticated;
use xinge_core::{ConvId, DeviceId, ErrorCode, UserId};
use xinge_proto::api::{LoginRequest, LoginResponse, Profile, RegisterRequest};
use xinge_push::EndReason;
use xinge_store::{NewUser, OutboxEvent, UserRecord};

fn valid_username(s: &str) -> bool {
    (3..=32).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

fn valid_display_name(s: &str) -> bool {
    !s.trim().is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control)
}

/// The public face of a looked-up user, or `not_found`.
fn found(r: xinge_store::Result<Option<UserRecord>>) -> Result<Profile> {
    let u = r?.ok_or_else(|| bad(ErrorCode::NotFound, "no such user"))?;
    Ok(Profile {
        user_id: u.id,
        username: u.username,
        display_name: u.display_name,
    })
}

/// A registration's fields as an account may have them.
pub(crate) fn check_registration(req: &RegisterRequest) -> Result<()> {
    if !valid_username(&req.username) {
        return Err(bad(
            ErrorCode::InvalidArgument,
            "username must be 3-32 characters of [a-z0-9_.-]",
        ));
    }
    if !(8..=256).contains(&req.password.len()) {
        return Err(bad(
            ErrorCode::InvalidArgument,
            "password must be 8-256 bytes",
        ));
    }
    let display_name = req.display_name.as_deref().unwrap_or(&req.username);
    if !valid_display_name(display_name) {
        return Err(bad(
            ErrorCode::InvalidArgument,
            "display name must be 1-64 printable characters",
        ));
    }
    Ok(())
}

impl Logic {
    /// Runs a password hash or check on the blocking pool, at most one per core at a time.
    /// Hashing is memory-hard and deliberately slow: a burst of logins (a reconnect storm,
    /// a bench registering thousands of users) would otherwise start one blocking thread
    /// per request, up to tokio's 512, each with the hash's memory, all competing for the
    /// same cores, and exiting together ten seconds later, which stalled the process for
    /// tens of milliseconds. Callers past the permits wait their turn; how many can wait
    /// is bounded by the HTTP connection limit.
    async fn hash_off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let _turn = self.hashing_turn().await?;
        Self::blocking(f).await
    }

    /// A turn at hashing: one of the permits [`Self::hash_off_runtime`] waits for.
    async fn hashing_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.hashing
            .acquire()
            .await
            .map_err(|_| bad(ErrorCode::Internal, "internal error"))
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| bad(ErrorCode::Internal, "internal error"))
    }

    /// A new password's hash (salted, Argon2id), computed off the async workers.
    pub(crate) async fn hash_password(&self, password: String) -> Result<String> {
        let argon = self.argon2()?;
        self.hash_off_runtime(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16-byte salt");
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|_| bad(ErrorCode::Internal, "internal error"))
    }

    /// Whether `password` is the one `hash` was made from (false for a hash that does not
    /// parse, or if the check could not run).
    pub(crate) async fn password_matches(&self, hash: &str, password: String) -> bool {
        match self.hashing_turn().await {
            Ok(turn) => self.verify_in_turn(&turn, hash.to_owned(), password).await,
            Err(_) => false,
        }
    }

    /// [`Self::password_matches`] for a caller that holds its turn at hashing.
    async fn verify_in_turn(
        &self,
        _turn: &tokio::sync::SemaphorePermit<'_>,
        hash: String,
        password: String,
    ) -> bool {
        let Ok(argon) = self.argon2() else {
            return false;
        };
        Self::blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false)
    }

    /// A hash of a random password with this server's parameters, made once: what a login
    /// for an unknown username is checked against.
    async fn decoy_hash(&self) -> Result<String> {
        self.decoy
            .get_or_try_init(|| async {
                let random: [u8; 16] = rand::random();
                self.hash_password(format!("{random:x?}")).await
            })
            .await
            .cloned()
    }

    fn argon2(&self) -> Result<Argon2<'static>> {
        let a = &self.cfg.auth;
        let params = Params::new(a.argon2_memory_kib, a.argon2_iterations, 1, None)
            .map_err(|e| bad(ErrorCode::Internal, format!("argon2 params: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Creates an account. `from` is the caller's address, when known: new accounts per
    /// address are limited (`limits.registrations_per_ip_*`).
    pub async fn register(&self, req: RegisterRequest, from: Option<IpAddr>) -> Result<Profile> {
        check_registration(&req)?;
        // Counted once the request is well-formed: a name that is taken counts too, so
        // that trying names is limited like creating accounts.
        if let Some(ip) = from {
            self.limit_keys(&[(&ip.to_string(), Limited::Register)])
                .await?;
        }
        self.create_account(req, None, None).await
    }

    /// Creates the account `req` asks for (already checked), with `req`'s password hashed
    /// or, if given, `hash` stored as it is; and the app's `external_id` for it, if any.
    pub(crate) async fn create_account(
        &self,
        req: RegisterRequest,
        hash: Option<String>,
        external_id: Option<String>,
    ) -> Result<Profile> {
        let display_name = req.display_name.unwrap_or_else(|| req.username.clone());
        if self.store.user_by_name(&req.username).await?.is_some() {
            return Err(bad(ErrorCode::Conflict, "username is taken"));
        }
        let hash = match hash {
            Some(h) => h,
            None => self.hash_password(req.password).await?,
        };
        let user = self
            .store
            .create_user(NewUser {
                username: req.username,
                display_name,
                password_hash: hash,
                created_at_ms: self.cfg.clock.now_ms(),
                external_id,
                outbox: self.outbox_events(vec![OutboxEvent::User("account.created")]),
            })
            .await
            .map_err(|e| match e {
                xinge_store::StoreError::Conflict => {
                    bad(ErrorCode::Conflict, "username or external id is taken")
                }
                e => e.into(),
            })?;
        Ok(Profile {
            user_id: user.id,
            username: user.username,
            display_name: user.display_name,
        })
    }

    /// Logs a device in. Failed logins are limited per account and per address (`from`,
    /// when known); only failures count. An account or address out of tokens is refused
    /// even the right password until one is there — a guesser must not learn that they
    /// found it.
    pub async fn login(&self, req: LoginRequest, from: Option<IpAddr>) -> Result<LoginResponse> {
        let wrong = || bad(ErrorCode::BadCredentials, "wrong username or password");
        let ip = from.map(|ip| ip.to_string());
        let mut keys = vec![(req.username.as_str(), Limited::LoginAccount)];
        if let Some(ip) = &ip {
            keys.insert(0, (ip.as_str(), Limited::LoginIp));
        }
        let user = self.store.user_by_name(&req.username).await?;
        // An unknown username is checked against a hash too, so that its answer takes as
        // long as a wrong password's: the time does not tell which usernames exist.
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.decoy_hash().await?,
        };
        let ok = {
            // The limits are looked at and a failure counted while this login holds its
            // turn at the hashing (one per core): guesses sent all at once cannot all
            // pass the look before the first of them has counted — at most one per core
            // (and api process) beyond the limit — while right passwords, which count
            // nothing, never wait for each other's tokens.
            let turn = self.hashing_turn().await?;
            self.limits_allow(&keys).await?;
            let ok =
                req.password.len() <= 256 && self.verify_in_turn(&turn, hash, req.password).await;
            if !ok {
                metrics::counter!("xinge_login_failures_total").increment(1);
                let _ = self.limit_keys(&keys).await;
            }
            ok
        };
        match user {
            // Told only to who knows the password.
            Some(u) if ok && u.banned => Err(crate::admin::banned()),
            Some(u) if ok => self.log_in_device(u, &req.device).await,
            _ => Err(wrong()),
        }
    }

    /// A new token for `user`'s `device`; the device's older sessions end.
    pub(crate) async fn log_in_device(
        &self,
        user: UserRecord,
        device: &DeviceId,
    ) -> Result<LoginResponse> {
        let tid = rand::random::<u64>();
        let now = self.cfg.clock.now_ms();
        let exp = now + self.cfg.auth.token_ttl_secs * 1000;
        self.make_room_for_device(user.id, device).await?;
        self.store.put_device(user.id, device, tid, now).await?;
        // The device's sessions with an older token end; the new one's are yet to open.
        self.end_sessions(user.id, Some(device), Some(tid), EndReason::LoggedInAgain)
            .await;
        let token = self.tokens.sign(&Claims {
            uid: user.id,
            dev: device.clone(),
            tid,
            exp,
        });
        Ok(LoginResponse {
            token,
            user_id: user.id,
            device: device.clone(),
            expires_at_ms: exp,
        })
    }

    /// Verifies a token: signature, expiry, and that its device has not logged out since.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated> {
        let claims = self.tokens.verify(token, self.cfg.clock.now_ms())?;
        match self.store.device_token(claims.uid, &claims.dev).await? {
            Some(tid) if tid == claims.tid => Ok(Authenticated {
                user: claims.uid,
                device: claims.dev,
                token: claims.tid,
                expires_at_ms: claims.exp,
            }),
            _ => Err(bad(ErrorCode::TokenRevoked, "token revoked: log in again")),
        }
    }

    /// Logs out the caller's device: its token stops working and its connections close.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        self.log_out_device(caller.user, &caller.device).await
    }

    pub async fn profile(&self, user: UserId) -> Result<Profile> {
        found(self.store.user(user).await)
    }

    /// `user`'s profile as `caller` may see it: their own, a friend's, someone with a
    /// friend request pending either way, someone they have a 1:1 conversation with or
    /// share a group with. Anyone else is `not_found`, exactly like an id that does not
    /// exist, so that walking the ids tells nothing; a stranger is found by their exact
    /// username instead ([`Self::find_user`]).
    pub async fn profile_for(&self, caller: &Caller, user: UserId) -> Result<Profile> {
        if user == caller.user || self.knows(caller.user, user).await? {
            return self.profile(user).await;
        }
        Err(bad(ErrorCode::NotFound, "not found"))
    }

    /// Whether `me` has a reason to see `other`'s profile (see [`Self::profile_for`]).
    async fn knows(&self, me: UserId, other: UserId) -> Result<bool> {
        let r = self.store.relation(me, other).await?;
        if r.friends_since_ms.is_some() || r.request_in.is_some() || r.request_out.is_some() {
            return Ok(true);
        }
        let convs = self
            .store
            .memberships(me, self.cfg.chat.max_conversations)
            .await?;
        if convs.iter().any(|m| m.conv == ConvId::direct(me, other)) {
            return Ok(true);
        }
        for m in &convs {
            if let ConvId::Group(g) = m.conv
                && self.store.group_member(g, other).await?.is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn find_user(&self, username: &str) -> Result<Profile> {
        found(self.store.user_by_name(username).await)
    }

    pub async fn set_display_name(&self, caller: &Caller, name: &str) -> Result<Profile> {
        if !valid_display_name(name) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "display name must be 1-64 printable characters",
            ));
        }
        self.store.set_display_name(caller.user, name).await?;
        self.profile(caller.user).await
    }
}

/// One permit per core the process may run on (at least one).
pub(crate) fn hashing_permits() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
