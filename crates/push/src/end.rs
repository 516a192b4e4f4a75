//! Ending sessions: when a device's access ends (logout, a newer login of the device, a
//! password change, too many devices), the server closes the long connections it holds.
//!
//! A [`SessionEnd`] travels the way a signal does — to the gateways holding the user's
//! connections, never to the others — as an internal frame ([`cmd::END_SESSIONS`]) that a
//! gateway acts on and never writes to a client. Unlike a signal it is never coalesced or
//! dropped by the rate ([`crate::Coalesce::Never`]). Each gateway decides which of the
//! user's connections it closes: those on the named device (or all), except those opened
//! with the token that stays valid.

use bytes::{Buf, BufMut, BytesMut};
use xinge_core::error::ApiError;
use xinge_core::{DeviceId, ErrorCode, UserId};
use xinge_proto::{Frame, cmd};

/// Why the server ends a session. Every reason but a ban closes with `token_revoked`: the
/// client must log in again; the message says why. A ban closes with `banned`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// The device logged out, or the user logged it out from another device.
    LoggedOut = 1,
    /// The device logged in again: its older sessions are replaced.
    LoggedInAgain = 2,
    /// The user changed the password on another device.
    PasswordChanged = 3,
    /// The account logged in on more devices than it may have; the oldest login went.
    TooManyDevices = 4,
    /// The app's server banned the account.
    Banned = 5,
}

impl EndReason {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => EndReason::LoggedOut,
            2 => EndReason::LoggedInAgain,
            3 => EndReason::PasswordChanged,
            4 => EndReason::TooManyDevices,
            5 => EndReason::Banned,
            _ => return None,
        })
    }

    /// What the client is told in the CLOSE frame.
    pub fn error(self) -> ApiError {
        let message = match self {
            EndReason::LoggedOut => "this device was logged out: log in again",
            EndReason::LoggedInAgain => "this device logged in again: this session is replaced",
            EndReason::PasswordChanged => "the password was changed: log in again",
            EndReason::TooManyDevices => "logged out: the account logged in on too many devices",
            EndReason::Banned => return ApiError::new(ErrorCode::Banned, "this account is banned"),
        };
        ApiError::new(ErrorCode::TokenRevoked, message)
    }
}

/// Sessions to end: `user`'s connections (on `device` only, if given) except those opened
/// with token `keep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    pub user: UserId,
    pub device: Option<DeviceId>,
    pub keep: Option<u64>,
    pub why: EndReason,
}

impl SessionEnd {
    /// Whether a connection of `user`, on `device`, opened with `token`, is to end.
    pub fn applies_to(&self, user: UserId, device: &DeviceId, token: u64) -> bool {
        user == self.user
            && self.device.as_ref().is_none_or(|d| d == device)
            && self.keep != Some(token)
    }

    /// As the internal frame a gateway receives: user, reason, keep flag and token, then
    /// the device's name (empty: every device).
    pub fn frame(&self) -> Frame {
        let device = self.device.as_ref().map_or("", DeviceId::as_str);
        let mut b = BytesMut::with_capacity(18 + device.len());
        b.put_u64(self.user.0);
        b.put_u8(self.why as u8);
        b.put_u8(u8::from(self.keep.is_some()));
        b.put_u64(self.keep.unwrap_or(0));
        b.put_slice(device.as_bytes());
        Frame::request(cmd::END_SESSIONS, 0, b.freeze())
    }

    /// The end a frame carries, or `None` if it is not one (or is malformed).
    pub fn from_frame(f: &Frame) -> Option<Self> {
        if f.cmd != cmd::END_SESSIONS || f.body.len() < 18 {
            return None;
        }
        let mut b = f.body.clone();
        let user = UserId(b.get_u64());
        let why = EndReason::from_u8(b.get_u8())?;
        let has_keep = b.get_u8() == 1;
        let keep = b.get_u64();
        let device = match std::str::from_utf8(&b).ok()? {
            "" => None,
            name => Some(DeviceId::parse(name)?),
        };
        Some(SessionEnd {
            user,
            device,
            keep: has_keep.then_some(keep),
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_names_exactly_the_connections_it_closes_and_survives_the_wire() {
        let phone = DeviceId::parse("phone").unwrap();
        let laptop = DeviceId::parse("laptop").unwrap();
        let end = SessionEnd {
            user: UserId(7),
            device: Some(phone.clone()),
            keep: Some(42),
            why: EndReason::LoggedInAgain,
        };
        assert!(end.applies_to(UserId(7), &phone, 41), "the older token");
        assert!(!end.applies_to(UserId(7), &phone, 42), "the newer login");
        assert!(!end.applies_to(UserId(7), &laptop, 41), "another device");
        assert!(!end.applies_to(UserId(8), &phone, 41), "another user");
        let all = SessionEnd {
            device: None,
            keep: None,
            why: EndReason::PasswordChanged,
            ..end.clone()
        };
        assert!(all.applies_to(UserId(7), &laptop, 42));
        for e in [end, all] {
            assert_eq!(SessionEnd::from_frame(&e.frame()), Some(e.clone()));
            let mut cut = e.frame();
            cut.body = cut.body.slice(..17);
            assert_eq!(SessionEnd::from_frame(&cut), None);
        }
        let mut bad = Frame::request(cmd::END_SESSIONS, 0, vec![0; 18]);
        assert_eq!(SessionEnd::from_frame(&bad), None, "reason 0 is no reason");
        bad.cmd = cmd::SIGNAL;
        assert_eq!(SessionEnd::from_frame(&bad), None);
        for r in 1..=4 {
            let why = EndReason::from_u8(r).unwrap();
            assert_eq!((why as u8, why.error().code), (r, ErrorCode::TokenRevoked));
        }
        assert_eq!(
            EndReason::from_u8(5).unwrap().error().code,
            ErrorCode::Banned
        );
        assert_eq!(EndReason::from_u8(6), None);
    }
}
