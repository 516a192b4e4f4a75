//! What the provider stand-ins share: keys and certificates made at test time, a small
//! HTTP/1 server, JWT decoding, and a bound on every wait.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened. Not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::Value;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use xinge_core::config::ProviderLimits;
use xinge_notify::Notification;

/// The longest any test waits for anything.
pub const WAIT: Duration = Duration::from_secs(60);

/// `fut`, or a failed test if it takes longer than [`WAIT`].
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("the test took too long")
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).unwrap()
}

/// DER as a PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b = STANDARD.encode(der);
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

/// A fresh P-256 key written to `dir/name` as PKCS#8 PEM (as an Apple `.p8` key or a
/// VAPID key is), and its public key (uncompressed point).
pub fn p256_key(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, pem("PRIVATE KEY", doc.as_ref())).unwrap();
    (path, key.public_key().as_ref().to_vec())
}

/// A CA made for one test and a certificate it signed for 127.0.0.1, written as PEM files.
pub struct Pki {
    /// The CA certificate: what the client is told to trust (`ca_file`).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

pub fn pki(dir: &Path) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "xinge notify test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    Pki {
        ca_file,
        cert_file,
        key_file,
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

impl Pki {
    /// A TLS server config offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

pub type Reply = Response<Full<Bytes>>;

pub fn reply(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// A request's head and whole body.
pub async fn read(req: Request<Incoming>) -> (hyper::http::request::Parts, Bytes) {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts, body)
}

pub fn header<'a>(parts: &'a hyper::http::request::Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Serves HTTP/1 on a loopback port with `handle` until the test's runtime ends.
pub async fn http1<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A JWT's header, claims, signed part and signature, unverified.
pub struct Jwt {
    pub header: Value,
    pub claims: Value,
    pub input: String,
    pub signature: Vec<u8>,
}

pub fn jwt(token: &str) -> Option<Jwt> {
    let (input, sig) = token.rsplit_once('.')?;
    let (h, c) = input.split_once('.')?;
    let d = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    Some(Jwt {
        header: serde_json::from_slice(&d(h)?).ok()?,
        claims: serde_json::from_slice(&d(c)?).ok()?,
        input: input.to_owned(),
        signature: d(sig)?,
    })
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Limits for a stand-in: short timeouts, a few attempts, the test CA trusted.
pub fn limits(ca_file: Option<PathBuf>, max_attempts: u32) -> ProviderLimits {
    ProviderLimits {
        concurrency: 16,
        per_sec: 1000.0,
        timeout_ms: 5_000,
        max_attempts,
        ca_file,
    }
}

/// A notification of conversation `collapse_id`.
pub fn notification(id: &str, collapse_id: &str) -> Notification {
    Notification {
        id: id.into(),
        collapse_id: collapse_id.into(),
        title: Some("Alice".into()),
        body: "Are we still on for lunch?".into(),
        badge: Some(4),
        count: 2,
        data: BTreeMap::from([
            ("conv".to_owned(), "d:1:2".to_owned()),
            ("seq".to_owned(), "17".to_owned()),
        ]),
    }
}
