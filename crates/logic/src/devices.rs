//! A user's devices: the list, logging one out, changing the password — and ending the long
//! connections of every device whose access ends, wherever they are held.

use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{DeviceId, ErrorCode, UserId};
use xinge_proto::api::{DeviceView, Devices, PasswordChange};
use xinge_push::{EndReason, SessionEnd};

impl Logic {
    /// Closes the long connections of `user` (on `device`, or all) but those opened with
    /// token `keep`: on every gateway that holds one, in this process or over the bus.
    pub(crate) async fn end_sessions(
        &self,
        user: UserId,
        device: Option<&DeviceId>,
        keep: Option<u64>,
        why: EndReason,
    ) {
        let end = SessionEnd {
            user,
            device: device.cloned(),
            keep,
            why,
        };
        self.push.end_sessions(&end).await;
        tracing::info!(%user, device = device.map(DeviceId::as_str), reason = ?why, "sessions ended");
    }

    /// Removes a device's token and closes its connections.
    pub(crate) async fn log_out_device(&self, user: UserId, device: &DeviceId) -> Result<()> {
        self.store.remove_device(user, device).await?;
        self.forget_push(user, device).await;
        self.end_sessions(user, Some(device), None, EndReason::LoggedOut)
            .await;
        Ok(())
    }

    /// Drops a logged-out device's push registration. Should this fail, the notify worker
    /// drops it when it finds the device logged out.
    async fn forget_push(&self, user: UserId, device: &DeviceId) {
        let key = crate::notify::push_key(device);
        if let Err(e) = self.store.put_setting(user, &key, None).await {
            tracing::warn!(%user, error = %e, "a logged-out device's push registration stays");
        }
    }

    /// Before `device` logs in: if the account is at its device limit and `device` is not
    /// one of them, the device whose login is oldest is logged out.
    pub(crate) async fn make_room_for_device(&self, user: UserId, device: &DeviceId) -> Result<()> {
        let max = self.cfg.auth.max_devices.max(1);
        // One more than the limit is read: a list past the limit (the limit was lowered)
        // loses its oldest one login at a time.
        let devices = self.store.devices(user, max + 1).await?;
        if devices.len() < max || devices.iter().any(|d| d.device == *device) {
            return Ok(());
        }
        if let Some(oldest) = devices.iter().min_by_key(|d| d.logged_in_at_ms) {
            self.store.remove_device(user, &oldest.device).await?;
            self.forget_push(user, &oldest.device).await;
            self.end_sessions(user, Some(&oldest.device), None, EndReason::TooManyDevices)
                .await;
        }
        Ok(())
    }

    /// The caller's logged-in devices, by name: when each logged in, and whether it is
    /// connected now (or when it last was).
    pub async fn devices(&self, caller: &Caller) -> Result<Devices> {
        let devices = self.device_views(caller.user, Some(&caller.device)).await?;
        Ok(Devices { devices })
    }

    /// `user`'s logged-in devices, `current` marked.
    pub(crate) async fn device_views(
        &self,
        user: UserId,
        current: Option<&DeviceId>,
    ) -> Result<Vec<DeviceView>> {
        let max = self.cfg.auth.max_devices.max(1);
        let records = self.store.devices(user, max + 1).await?;
        let seen = self.push.devices(user).await;
        Ok(records
            .into_iter()
            .map(|r| {
                let s = seen.iter().find(|s| s.device == r.device);
                DeviceView {
                    current: Some(&r.device) == current,
                    online: s.is_some_and(|s| s.online),
                    last_seen_ms: s.map_or(0, |s| s.last_seen_ms),
                    logged_in_at_ms: r.logged_in_at_ms,
                    device: r.device,
                }
            })
            .collect())
    }

    /// Logs out one of the caller's devices (another one; their own is `logout`).
    pub async fn log_out_other_device(&self, caller: &Caller, device: &str) -> Result<()> {
        let device = DeviceId::parse(device)
            .ok_or_else(|| bad(ErrorCode::InvalidArgument, "not a device name"))?;
        if self
            .store
            .device_token(caller.user, &device)
            .await?
            .is_none()
        {
            return Err(bad(ErrorCode::NotFound, "no such device is logged in"));
        }
        self.log_out_device(caller.user, &device).await
    }

    /// Changes the caller's password after checking the current one. Every other device is
    /// logged out (its token revoked, its connections closed); the caller's stays.
    pub async fn change_password(&self, caller: &Caller, req: PasswordChange) -> Result<()> {
        if !(8..=256).contains(&req.new_password.len()) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "password must be 8-256 bytes",
            ));
        }
        let user = self
            .store
            .user(caller.user)
            .await?
            .ok_or_else(|| bad(ErrorCode::Unauthenticated, "no such user"))?;
        if !self
            .password_matches(&user.password_hash, req.current_password)
            .await
        {
            return Err(bad(
                ErrorCode::BadCredentials,
                "the current password is wrong",
            ));
        }
        let hash = self.hash_password(req.new_password).await?;
        self.store
            .set_password(caller.user, &hash, Some(&caller.device))
            .await?;
        self.end_sessions(
            caller.user,
            None,
            Some(caller.token),
            EndReason::PasswordChanged,
        )
        .await;
        Ok(())
    }
}
