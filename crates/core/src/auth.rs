//! What a valid login token names, as every layer that checks one passes it on.

use crate::{DeviceId, UserId};

/// The holder of a token that was valid when checked: who, on which device, which token
/// (its id; a device's newer login replaces it) and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserId,
    pub device: DeviceId,
    /// The token's id: what a session is ended by (logout, a newer login of the device)
    /// or kept by (a password changed on this device).
    pub token: u64,
    /// When the token expires, milliseconds since the epoch.
    pub expires_at_ms: u64,
}
