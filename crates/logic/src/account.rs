//! Accounts and devices.

use crate::token::Claims;
use crate::{Caller, Logic, Result, error::bad};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use xinge_core::{DeviceId, ErrorCode, UserId};
use xinge_proto::api::{LoginRequest, LoginResponse, Profile, RegisterRequest};
use xinge_store::{NewUser, UserRecord};

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
        let internal = || bad(ErrorCode::Internal, "internal error");
        let _permit = self.hashing.acquire().await.map_err(|_| internal())?;
        tokio::task::spawn_blocking(f).await.map_err(|_| internal())
    }

    fn argon2(&self) -> Result<Argon2<'static>> {
        let a = &self.cfg.auth;
        let params = Params::new(a.argon2_memory_kib, a.argon2_iterations, 1, None)
            .map_err(|e| bad(ErrorCode::Internal, format!("argon2 params: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<Profile> {
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
        let display_name = req.display_name.unwrap_or_else(|| req.username.clone());
        if !valid_display_name(&display_name) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "display name must be 1-64 printable characters",
            ));
        }
        if self.store.user_by_name(&req.username).await?.is_some() {
            return Err(bad(ErrorCode::Conflict, "username is taken"));
        }
        let argon = self.argon2()?;
        let password = req.password;
        // Hashing is deliberately slow: keep it off the async workers.
        let hash = self
            .hash_off_runtime(move || {
                let salt =
                    SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16-byte salt");
                argon
                    .hash_password(password.as_bytes(), &salt)
                    .map(|h| h.to_string())
            })
            .await?
            .map_err(|_| bad(ErrorCode::Internal, "internal error"))?;
        let user = self
            .store
            .create_user(NewUser {
                username: req.username,
                display_name,
                password_hash: hash,
                created_at_ms: self.cfg.clock.now_ms(),
            })
            .await
            .map_err(|e| match e {
                xinge_store::StoreError::Conflict => bad(ErrorCode::Conflict, "username is taken"),
                e => e.into(),
            })?;
        Ok(Profile {
            user_id: user.id,
            username: user.username,
            display_name: user.display_name,
        })
    }

    pub async fn login(&self, req: LoginRequest) -> Result<LoginResponse> {
        let wrong = || bad(ErrorCode::BadCredentials, "wrong username or password");
        if req.password.len() > 256 {
            return Err(wrong());
        }
        let user = self
            .store
            .user_by_name(&req.username)
            .await?
            .ok_or_else(wrong)?;
        let argon = self.argon2()?;
        let (hash, password) = (user.password_hash.clone(), req.password);
        let ok = self
            .hash_off_runtime(move || {
                PasswordHash::new(&hash)
                    .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
            })
            .await
            .unwrap_or(false);
        if !ok {
            return Err(wrong());
        }
        let tid = rand::random::<u64>();
        let exp = self.cfg.clock.now_ms() + self.cfg.auth.token_ttl_secs * 1000;
        self.store.put_device(user.id, &req.device, tid).await?;
        let token = self.tokens.sign(&Claims {
            uid: user.id,
            dev: req.device.clone(),
            tid,
            exp,
        });
        Ok(LoginResponse {
            token,
            user_id: user.id,
            device: req.device,
            expires_at_ms: exp,
        })
    }

    /// Verifies a token: signature, expiry, and that its device has not logged out since.
    pub async fn authenticate(&self, token: &str) -> Result<(UserId, DeviceId)> {
        let claims = self.tokens.verify(token, self.cfg.clock.now_ms())?;
        match self.store.device_token(claims.uid, &claims.dev).await? {
            Some(tid) if tid == claims.tid => Ok((claims.uid, claims.dev)),
            _ => Err(bad(ErrorCode::TokenRevoked, "token revoked: log in again")),
        }
    }

    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        self.store
            .remove_device(caller.user, &caller.device)
            .await
            .map_err(Into::into)
    }

    pub async fn profile(&self, user: UserId) -> Result<Profile> {
        found(self.store.user(user).await)
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
