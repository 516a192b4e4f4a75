//! JSON Web Tokens, signed with ring: ES256 (APNs provider tokens, VAPID) and RS256 (the
//! FCM service account's OAuth2 assertion). Three small functions instead of a JWT crate:
//! we only make tokens, with one fixed algorithm each, so there is no algorithm
//! negotiation or verification to get wrong.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

/// Base64url without padding, as JWTs and Web Push keys are written.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The bytes of base64url text, with or without padding (browsers differ).
pub(crate) fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()
}

/// `header.claims`, each as base64url JSON: what is signed.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An ES256 token: the signature is the fixed 64-byte `r‖s` JWS wants (not DER).
pub(crate) fn es256(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> Result<String, String> {
    let input = signing_input(header, claims);
    let sig = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| "ES256 signing failed".to_owned())?;
    Ok(format!("{input}.{}", b64(sig.as_ref())))
}

/// An RS256 token (RSASSA-PKCS1-v1_5 with SHA-256).
pub(crate) fn rs256(key: &RsaKeyPair, header: &Value, claims: &Value) -> Result<String, String> {
    let input = signing_input(header, claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "RS256 signing failed".to_owned())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// The DER of the one PKCS#8 `PRIVATE KEY` block of a PEM text.
fn pkcs8(pem: &[u8]) -> Result<PrivatePkcs8KeyDer<'static>, String> {
    PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "no PKCS#8 PRIVATE KEY block (-----BEGIN PRIVATE KEY-----)".to_owned()
        }
        e => format!("not a PEM private key: {e}"),
    })
}

/// A P-256 key from PKCS#8 PEM (an Apple `.p8` key, a VAPID key).
pub(crate) fn p256_key(pem: &[u8]) -> Result<EcdsaKeyPair, String> {
    let der = pkcs8(pem)?;
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &SystemRandom::new(),
    )
    .map_err(|e| format!("not a P-256 PKCS#8 key with its public key: {e}"))
}

/// An RSA key from PKCS#8 PEM (a Google service account's `private_key`).
pub(crate) fn rsa_key(pem: &[u8]) -> Result<RsaKeyPair, String> {
    let der = pkcs8(pem)?;
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("not an RSA PKCS#8 key: {e}"))
}

/// Reads a key file, saying which one could not be read.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};

    fn pem(label: &str, der: &[u8]) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn an_es256_token_verifies_with_the_public_key() {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let key = p256_key(pem("PRIVATE KEY", doc.as_ref()).as_bytes()).unwrap();
        let jwt = es256(
            &key,
            &serde_json::json!({"alg": "ES256", "kid": "K"}),
            &serde_json::json!({"iss": "T", "iat": 1}),
        )
        .unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = unb64(sig).unwrap();
        assert_eq!(sig.len(), 64);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref())
            .verify(input.as_bytes(), &sig)
            .unwrap();
        let (header, claims) = input.split_once('.').unwrap();
        let header: Value = serde_json::from_slice(&unb64(header).unwrap()).unwrap();
        let claims: Value = serde_json::from_slice(&unb64(claims).unwrap()).unwrap();
        assert_eq!(header["kid"], "K");
        assert_eq!(claims["iss"], "T");
    }

    #[test]
    fn keys_that_are_not_pkcs8_pem_are_refused_with_a_reason() {
        assert!(p256_key(b"nothing").unwrap_err().contains("PRIVATE KEY"));
        assert!(rsa_key(pem("PRIVATE KEY", b"junk").as_bytes()).is_err());
        assert_eq!(unb64("AQI="), Some(vec![1, 2]));
        assert_eq!(unb64("AQI"), Some(vec![1, 2]));
    }
}
