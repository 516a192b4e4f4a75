//! The FCM HTTP v1 client against a local stand-in of Google's two endpoints: the OAuth2
//! token endpoint verifies the service account's RS256 assertion (signature with the
//! account's public key; `iss`, `scope`, `aud`, lifetime) and hands out access tokens with
//! `expires_in`; `messages:send` checks the bearer token and the message's shape and
//! answers as scripted (`UNREGISTERED`, an invalid token, 429 with `Retry-After`, 401, 503).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hyper::body::Incoming;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xinge_core::config::{FcmConfig, NotifyConfig};
use xinge_notify::{Outcome, Providers};
use xinge_proto::api::PushRegistration;

const KEY_PEM: &str = include_str!("keys/fcm-test-rsa2048.pem");
const EMAIL: &str = "xinge@example-project.iam.gserviceaccount.com";
const PROJECT: &str = "example-project";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Clone, Copy, Debug)]
enum Script {
    Unregistered,
    BadToken,
    TooMany,
    Revoke,
    Unavailable,
}

#[derive(Default)]
struct State {
    public_key: Vec<u8>,
    token_url: Mutex<String>,
    fetches: AtomicUsize,
    issued: Mutex<HashSet<String>>,
    script: Mutex<HashMap<String, VecDeque<Script>>>,
    /// (registration token, access token, message) of each accepted send.
    seen: Mutex<Vec<(String, String, Value)>>,
    refused: Mutex<Vec<String>>,
}

fn refuse(st: &State, status: u16, why: &str) -> Reply {
    st.refused.lock().unwrap().push(why.to_owned());
    google(status, "INVALID_ARGUMENT", why, None)
}

/// Google's error body, with an FCM error code if given.
fn google(status: u16, code_status: &str, message: &str, fcm: Option<&str>) -> Reply {
    let details: Vec<Value> = fcm
        .map(|c| json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}))
        .into_iter()
        .collect();
    reply(
        status,
        json!({"error": {"code": status, "message": message, "status": code_status, "details": details}})
            .to_string(),
    )
}

async fn token_endpoint(st: &State, parts: &hyper::http::request::Parts, body: &[u8]) -> Reply {
    if header(parts, "content-type") != "application/x-www-form-urlencoded" {
        return refuse(st, 400, "token: not a form");
    }
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":")))
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(st, 400, "token: grant_type");
    }
    let Some(a) = form.get("assertion").and_then(|a| jwt(a)) else {
        return refuse(st, 400, "token: no assertion");
    };
    let signed = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &st.public_key)
        .verify(a.input.as_bytes(), &a.signature)
        .is_ok();
    let (iat, exp) = (
        a.claims["iat"].as_u64().unwrap_or(0),
        a.claims["exp"].as_u64().unwrap_or(0),
    );
    let aud = st.token_url.lock().unwrap().clone();
    if !signed
        || a.header["alg"] != "RS256"
        || a.claims["iss"] != EMAIL
        || a.claims["scope"] != SCOPE
        || a.claims["aud"] != aud.as_str()
        || iat.abs_diff(now_secs()) > 60
        || exp <= iat
        || exp - iat > 3600
    {
        return refuse(st, 400, &format!("token: invalid_grant {}", a.claims));
    }
    let n = st.fetches.fetch_add(1, Ordering::Relaxed);
    let token = format!("ya29.test-{n}");
    st.issued.lock().unwrap().insert(token.clone());
    reply(
        200,
        json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    )
}

/// The shape the HTTP v1 API documents for what we send.
fn shape_ok(m: &Value) -> bool {
    let strings = |v: &Value| {
        v.as_object()
            .is_some_and(|o| o.values().all(Value::is_string))
    };
    m["token"].is_string()
        && m["notification"]["body"].is_string()
        && m["android"]["collapse_key"].is_string()
        && m["android"]["priority"] == "high"
        && m["android"]["notification"]["tag"].is_string()
        && m["apns"]["headers"]["apns-collapse-id"]
            .as_str()
            .is_some_and(|c| c.len() <= 64)
        && strings(&m["data"])
}

async fn send_endpoint(st: &State, parts: &hyper::http::request::Parts, body: &[u8]) -> Reply {
    let Some(bearer) = header(parts, "authorization").strip_prefix("Bearer ") else {
        return google(401, "UNAUTHENTICATED", "no credentials", None);
    };
    if !st.issued.lock().unwrap().contains(bearer) {
        return google(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return refuse(st, 400, "send: not JSON");
    };
    let m = &v["message"];
    if !shape_ok(m) {
        return refuse(st, 400, &format!("send: shape {m}"));
    }
    let device = m["token"].as_str().unwrap_or("").to_owned();
    st.seen
        .lock()
        .unwrap()
        .push((device.clone(), bearer.to_owned(), m.clone()));
    let step = st
        .script
        .lock()
        .unwrap()
        .get_mut(&device)
        .and_then(VecDeque::pop_front);
    match step {
        None => reply(
            200,
            json!({"name": format!("projects/{PROJECT}/messages/0:{}", now_secs())}).to_string(),
        ),
        Some(Script::Unregistered) => google(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        ),
        Some(Script::BadToken) => google(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            Some("INVALID_ARGUMENT"),
        ),
        Some(Script::TooMany) => {
            let mut r = google(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded.",
                Some("QUOTA_EXCEEDED"),
            );
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
            r
        }
        Some(Script::Revoke) => {
            st.issued.lock().unwrap().remove(bearer);
            google(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
                Some("THIRD_PARTY_AUTH_ERROR"),
            )
        }
        Some(Script::Unavailable) => google(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some("UNAVAILABLE"),
        ),
    }
}

async fn handle(st: Arc<State>, req: hyper::Request<Incoming>) -> Reply {
    let (parts, body) = read(req).await;
    if parts.method != hyper::Method::POST {
        return refuse(&st, 405, "not POST");
    }
    match parts.uri.path() {
        "/token" => token_endpoint(&st, &parts, &body).await,
        p if p == format!("/v1/projects/{PROJECT}/messages:send") => {
            send_endpoint(&st, &parts, &body).await
        }
        p => refuse(&st, 404, &format!("no such path {p}")),
    }
}

struct StandIn {
    state: Arc<State>,
    url: String,
    account: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl StandIn {
    async fn start() -> Self {
        let der = PrivatePkcs8KeyDer::from_pem_slice(KEY_PEM.as_bytes()).unwrap();
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let state = Arc::new(State {
            public_key: key.public_key().as_ref().to_vec(),
            ..Default::default()
        });
        let st = state.clone();
        let addr = http1(move |req| handle(st.clone(), req)).await;
        let url = format!("http://{addr}");
        *state.token_url.lock().unwrap() = format!("{url}/token");
        let dir = tempfile::tempdir().unwrap();
        let account = dir.path().join("service-account.json");
        // What the Firebase console hands out (the token_uri is overridden by the config).
        std::fs::write(
            &account,
            json!({
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "0123456789abcdef",
                "private_key": KEY_PEM,
                "client_email": EMAIL,
                "client_id": "1234567890",
                "token_uri": "https://oauth2.googleapis.com/token",
            })
            .to_string(),
        )
        .unwrap();
        Self {
            state,
            url,
            account,
            _dir: dir,
        }
    }

    fn providers(&self, max_attempts: u32) -> Providers {
        let cfg = NotifyConfig {
            fcm: Some(FcmConfig {
                service_account_file: self.account.clone(),
                url: self.url.clone(),
                token_url: Some(format!("{}/token", self.url)),
                limits: limits(None, max_attempts),
            }),
            ..Default::default()
        };
        Providers::new(&cfg, &[]).unwrap()
    }

    fn script(&self, device: &str, steps: &[Script]) {
        self.state
            .script
            .lock()
            .unwrap()
            .insert(device.into(), steps.iter().copied().collect());
    }

    fn seen(&self, device: &str) -> Vec<(String, Value)> {
        let seen = self.state.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.0 == device)
            .map(|s| (s.1.clone(), s.2.clone()))
            .collect()
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::Relaxed)
    }

    fn assert_clean(&self) {
        assert_eq!(*self.state.refused.lock().unwrap(), Vec::<String>::new());
    }
}

fn device(token: &str) -> PushRegistration {
    PushRegistration::Fcm {
        token: token.into(),
    }
}

async fn send(p: &Providers, token: &str) -> Outcome {
    bounded(p.send(7, "pixel", &device(token), &notification("n-1", "d:1:2"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_is_fetched_once_for_many_sends() {
    let google = StandIn::start().await;
    let p = Arc::new(google.providers(4));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let p = p.clone();
        sends.spawn(async move { send(&p, &format!("reg-{i}")).await });
    }
    while let Some(outcome) = sends.join_next().await {
        assert_eq!(outcome.unwrap(), Outcome::Sent);
    }
    assert_eq!(
        google.fetches(),
        1,
        "one token fetch, the other sends waited for it"
    );
    let (bearer, m) = google.seen("reg-0").pop().unwrap();
    assert_eq!(bearer, "ya29.test-0");
    assert_eq!(
        m,
        json!({
            "token": "reg-0",
            "notification": {"title": "Alice", "body": "Are we still on for lunch?"},
            "android": {
                "collapse_key": "d:1:2",
                "priority": "high",
                "notification": {"tag": "d:1:2", "notification_count": 4},
            },
            "apns": {"headers": {"apns-collapse-id": "d:1:2"}},
            "data": {"conv": "d:1:2", "seq": "17"},
        })
    );
    google.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_answers_become_outcomes() {
    let google = StandIn::start().await;
    let p = google.providers(3);
    google.script("gone", &[Script::Unregistered]);
    google.script("junk", &[Script::BadToken]);
    google.script("busy", &[Script::TooMany]);
    google.script("revoked", &[Script::Revoke]);
    google.script("down", &[Script::Unavailable; 3]);

    assert_eq!(send(&p, "ok").await, Outcome::Sent);
    assert!(matches!(send(&p, "gone").await, Outcome::Invalid(r) if r.contains("UNREGISTERED")));
    assert!(
        matches!(send(&p, "junk").await, Outcome::Invalid(r) if r.contains("registration token"))
    );

    let started = Instant::now();
    assert_eq!(send(&p, "busy").await, Outcome::Sent);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After waited out"
    );
    assert_eq!(google.seen("busy").len(), 2);

    // A 401: the access token is fetched again and the send tried once more.
    assert_eq!(google.fetches(), 1);
    assert_eq!(send(&p, "revoked").await, Outcome::Sent);
    assert_eq!(google.fetches(), 2);
    let tries = google.seen("revoked");
    assert_eq!(tries.len(), 2);
    assert_ne!(tries[0].0, tries[1].0, "with the new access token");

    // 503 on every attempt: given up after three.
    assert!(matches!(send(&p, "down").await, Outcome::Failed(r) if r.contains("UNAVAILABLE")));
    assert_eq!(google.seen("down").len(), 3);
    google.assert_clean();
}

#[test]
fn a_service_account_that_cannot_be_used_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |file: std::path::PathBuf| NotifyConfig {
        fcm: Some(FcmConfig {
            service_account_file: file,
            url: "http://127.0.0.1:1".into(),
            token_url: None,
            limits: Default::default(),
        }),
        ..Default::default()
    };
    let missing = dir.path().join("missing.json");
    assert!(
        Providers::new(&cfg(missing), &[])
            .unwrap_err()
            .contains("missing.json")
    );
    let bad_key = dir.path().join("bad-key.json");
    std::fs::write(
        &bad_key,
        json!({"project_id": PROJECT, "client_email": EMAIL, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "token_uri": "https://oauth2.googleapis.com/token"}).to_string(),
    )
    .unwrap();
    let err = Providers::new(&cfg(bad_key), &[]).unwrap_err();
    assert!(err.contains("private_key"), "{err}");
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        json!({"project_id": PROJECT, "client_email": EMAIL, "private_key": KEY_PEM, "token_uri": "https://oauth2.googleapis.com/token"}).to_string(),
    )
    .unwrap();
    let p = Providers::new(&cfg(good), &[]).unwrap();
    assert!(p.serves(&device("t")));
}
