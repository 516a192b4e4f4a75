//! Login tokens: `base64url(claims JSON) . base64url(HMAC-SHA256(claims))`. A token names a
//! user, a device and a token id; the store remembers the current token id of each device,
//! so logging out (or in again) revokes the older token at once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use xinge_core::error::ApiError;
use xinge_core::{DeviceId, ErrorCode, UserId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub uid: UserId,
    pub dev: DeviceId,
    /// Token id, random.
    pub tid: u64,
    /// Expiry, milliseconds since the epoch.
    pub exp: u64,
}

pub struct TokenSigner {
    secret: Vec<u8>,
}

/// Longest token accepted; a longer one is refused before any work.
const MAX_TOKEN: usize = 1024;

impl TokenSigner {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// Checks signature and expiry (not revocation: that needs the store).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, ApiError> {
        let invalid = || ApiError::new(ErrorCode::Unauthenticated, "invalid token");
        if token.len() > MAX_TOKEN {
            return Err(invalid());
        }
        let (payload, sig) = token.split_once('.').ok_or_else(invalid)?;
        let sig = B64.decode(sig).map_err(|_| invalid())?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| invalid())?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(invalid)?;
        if claims.exp <= now_ms {
            return Err(ApiError::new(
                ErrorCode::TokenExpired,
                "token expired: log in again",
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            uid: UserId(3),
            dev: DeviceId::parse("phone").unwrap(),
            tid: 99,
            exp,
        }
    }

    #[test]
    fn signed_tokens_verify_and_forgeries_do_not() {
        let s = TokenSigner::new(b"k".repeat(32));
        let t = s.sign(&claims(2_000));
        assert_eq!(s.verify(&t, 1_000).unwrap(), claims(2_000));
        assert_eq!(
            s.verify(&t, 2_000).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        let other = TokenSigner::new(b"x".repeat(32));
        assert_eq!(
            other.verify(&t, 1_000).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        // Swap in a payload naming another user, keep the signature.
        let (_, sig) = t.split_once('.').unwrap();
        let mut c = claims(2_000);
        c.uid = UserId(4);
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&c).unwrap()));
        assert_eq!(
            s.verify(&forged, 1_000).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        for junk in ["", ".", "a.b", "no-dot", &"x".repeat(5000)] {
            assert_eq!(
                s.verify(junk, 1_000).unwrap_err().code,
                ErrorCode::Unauthenticated
            );
        }
    }
}
