//! Web Push payload encryption: RFC 8291 keys with the RFC 8188 `aes128gcm` content
//! coding, one record. An ephemeral P-256 key per message agrees a secret with the
//! subscription's `p256dh` key; the subscription's `auth` secret and both public keys go
//! into the key derivation, so only that browser can read it.

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Prk, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// The record size written in the header. Push services take bodies of up to 4096 bytes,
/// so one record always holds the whole message.
const RECORD_SIZE: u32 = 4096;
/// salt(16) ‖ rs(4) ‖ idlen(1) ‖ keyid(65).
pub(crate) const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// The padding delimiter of the last (and only) record, and the AEAD tag.
pub(crate) const OVERHEAD: usize = HEADER_LEN + 1 + 16;

/// A subscription's keys, checked: a P-256 point in uncompressed form and a 16-byte secret.
pub(crate) struct Keys {
    pub ua_public: Vec<u8>,
    pub auth: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    /// Without the auth secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// The keys of a subscription (base64url), or why they cannot be used.
    pub(crate) fn parse(p256dh: &str, auth: &str) -> Result<Self, String> {
        let ua_public = crate::jwt::unb64(p256dh).ok_or("p256dh is not base64url")?;
        if ua_public.len() != 65 || ua_public.first() != Some(&4) {
            return Err(format!(
                "p256dh is not an uncompressed P-256 point (65 bytes starting 0x04; got {} bytes)",
                ua_public.len()
            ));
        }
        let auth = crate::jwt::unb64(auth).ok_or("auth is not base64url")?;
        if auth.len() != 16 {
            return Err(format!(
                "auth is not a 16-byte secret (got {} bytes)",
                auth.len()
            ));
        }
        Ok(Self { ua_public, auth })
    }
}

/// Why a message could not be encrypted.
#[derive(Debug, PartialEq)]
pub(crate) enum EceError {
    /// The subscription's key is not a point of the curve.
    BadKey,
    /// Our own crypto failed (no randomness): not the subscription's fault.
    Crypto,
}

/// `plaintext` encrypted for `keys`: the whole request body.
pub(crate) fn encrypt(keys: &Keys, plaintext: &[u8]) -> Result<Vec<u8>, EceError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EceError::Crypto)?;
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EceError::Crypto)?;
    let as_public = ephemeral
        .compute_public_key()
        .map_err(|_| EceError::Crypto)?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, &keys.ua_public);
    let body = agree_ephemeral(ephemeral, &peer, |secret| {
        seal(
            secret,
            &keys.auth,
            &keys.ua_public,
            as_public.as_ref(),
            &salt,
            plaintext,
        )
    })
    .map_err(|_| EceError::BadKey)?;
    body.ok_or(EceError::Crypto)
}

/// A length for ring's HKDF output.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand of `prk` with `info` into `N` bytes.
fn expand<const N: usize>(prk: &Prk, info: &[&[u8]]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    prk.expand(info, Len(N)).ok()?.fill(&mut out).ok()?;
    Some(out)
}

/// The message from the agreed secret on (deterministic, so it can be checked against the
/// RFC's example): the key schedule of RFC 8291 section 3.4, then one `aes128gcm` record.
fn seal(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8; 16],
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    // IKM = HKDF(auth, ecdh_secret, "WebPush: info" ‖ 0 ‖ ua_public ‖ as_public, 32)
    let prk_key = Salt::new(HKDF_SHA256, auth).extract(ecdh_secret);
    let ikm: [u8; 32] = expand(&prk_key, &[b"WebPush: info\0", ua_public, as_public])?;
    // CEK and NONCE = HKDF(salt, IKM, "Content-Encoding: …" ‖ 0, 16 / 12)
    let prk = Salt::new(HKDF_SHA256, salt).extract(&ikm);
    let cek: [u8; 16] = expand(&prk, &[b"Content-Encoding: aes128gcm\0"])?;
    let nonce: [u8; 12] = expand(&prk, &[b"Content-Encoding: nonce\0"])?;

    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).ok()?);
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    // The last record's delimiter, no padding after it.
    record.push(2);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .ok()?;

    let key_id = u8::try_from(as_public.len()).ok()?;
    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(key_id);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{b64, unb64};

    /// RFC 8291 section 5 and appendix A: the example message, from the agreed secret on
    /// (ring makes no ECDH key from given bytes, so the appendix's ECDH secret stands in
    /// for the agreement between `as_private` and `ua_public`; the Web Push test checks
    /// our agreement end to end against an independent implementation).
    #[test]
    fn the_rfc_8291_example_encrypts_to_the_published_body() {
        let d = |s: &str| unb64(s).unwrap();
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = seal(
            &d("kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"),
            &d("BTBZMqHH6r4Tts7J_aSIgg"),
            &d(
                "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            ),
            &d(
                "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8",
            ),
            &salt,
            b"When I grow up, I want to be a watermelon",
        )
        .unwrap();
        assert_eq!(
            b64(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml\
             mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT\
             pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn a_message_has_the_aes128gcm_header_and_one_record() {
        let keys = Keys::parse(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap();
        let a = encrypt(&keys, b"hello").unwrap();
        let b = encrypt(&keys, b"hello").unwrap();
        assert_eq!(a.len(), OVERHEAD + 5);
        assert_eq!(&a[16..21], &[0, 0, 0x10, 0, 65]);
        assert_eq!(
            a[21], 4,
            "the key id is the sender's uncompressed public key"
        );
        assert_ne!(a[..16], b[..16], "a fresh salt each time");
        assert_ne!(a[21..86], b[21..86], "a fresh key each time");
    }

    #[test]
    fn bad_subscription_keys_are_refused_with_a_reason() {
        let auth = "BTBZMqHH6r4Tts7J_aSIgg";
        assert!(Keys::parse("!!", auth).unwrap_err().contains("base64url"));
        assert!(
            Keys::parse(&b64(&[4; 33]), auth)
                .unwrap_err()
                .contains("P-256")
        );
        let not_on_curve = Keys::parse(&b64(&[4; 65]), auth).unwrap();
        assert_eq!(encrypt(&not_on_curve, b"x"), Err(EceError::BadKey));
        let p256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        assert!(Keys::parse(p256dh, "AQID").unwrap_err().contains("16-byte"));
    }
}
