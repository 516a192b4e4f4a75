//! The APNs client against a local stand-in that checks what Apple checks: HTTP/2 over
//! TLS (negotiated by ALPN), `POST /3/device/<hex token>`, the provider token's ES256
//! signature with the team's public key and its `kid`/`iss`/`iat`, and the documented
//! headers; it answers as each test scripts it (200, 410, 429 with `Retry-After`, 400
//! `BadDeviceToken`, 403 `ExpiredProviderToken`, a dropped connection, a GOAWAY).

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use hyper::Version;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use xinge_core::config::{ApnsConfig, NotifyConfig};
use xinge_notify::{Notification, Outcome, Providers};
use xinge_proto::api::PushRegistration;

const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "DEF123GHIJ";
const TOPIC: &str = "com.example.chat";

/// What the stand-in does with the next request for a device token.
#[derive(Clone, Copy, Debug)]
enum Script {
    Gone,
    TooMany,
    BadToken,
    Expire,
    Drop,
    GoAway,
}

/// One request the stand-in accepted (all its checks passed).
#[derive(Clone, Debug)]
struct Seen {
    device: String,
    sandbox: bool,
    jwt: String,
    collapse_id: String,
    apns_id: String,
    expiration: u64,
    payload: Value,
}

#[derive(Default)]
struct State {
    public_key: Vec<u8>,
    script: Mutex<HashMap<String, VecDeque<Script>>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests refused because a check failed: a test ends with none.
    refused: Mutex<Vec<String>>,
    expired: Mutex<HashSet<String>>,
    connections: AtomicUsize,
    not_h2: AtomicUsize,
}

/// What a connection's handler can ask of the connection.
#[derive(Default)]
struct Control {
    kill: Notify,
    goaway: Notify,
}

struct StandIn {
    state: Arc<State>,
    url: String,
    ca_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl StandIn {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let (key_file, public_key) = p256_key(dir.path(), "AuthKey.p8");
        let state = Arc::new(State {
            public_key,
            ..Default::default()
        });
        let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(st.clone(), acceptor.clone(), tcp));
            }
        });
        Self {
            state,
            url,
            ca_file: pki.ca_file,
            key_file,
            _dir: dir,
        }
    }

    fn script(&self, device: &str, steps: &[Script]) {
        self.state
            .script
            .lock()
            .unwrap()
            .insert(device.into(), steps.iter().copied().collect());
    }

    fn seen(&self, device: &str) -> Vec<Seen> {
        let seen = self.state.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.device == device)
            .cloned()
            .collect()
    }

    fn providers(&self, max_attempts: u32) -> Providers {
        let cfg = NotifyConfig {
            apns: Some(ApnsConfig {
                key_file: self.key_file.clone(),
                key_id: KEY_ID.into(),
                team_id: TEAM_ID.into(),
                url: self.url.clone(),
                sandbox_url: format!("{}/sandbox", self.url),
                limits: limits(Some(self.ca_file.clone()), max_attempts),
            }),
            ..Default::default()
        };
        Providers::new(&cfg, &[]).unwrap()
    }

    /// Every request passed the checks, over HTTP/2.
    fn assert_clean(&self) {
        assert_eq!(*self.state.refused.lock().unwrap(), Vec::<String>::new());
        assert_eq!(self.state.not_h2.load(Ordering::Relaxed), 0);
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

/// One TLS connection: HTTP/2 only (as Apple), dropped or shut down when a handler asks.
async fn connection(st: Arc<State>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    st.connections.fetch_add(1, Ordering::Relaxed);
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        st.not_h2.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let ctl = Arc::new(Control::default());
    let (st2, ctl2) = (st.clone(), ctl.clone());
    let svc = service_fn(move |req| {
        let (st, ctl) = (st2.clone(), ctl2.clone());
        async move { Ok::<_, Infallible>(handle(st, ctl, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            // Gone without a word: the socket is closed under the request in flight.
            _ = ctl.kill.notified() => return,
            // GOAWAY: the streams begun finish, no new ones on this connection.
            _ = ctl.goaway.notified() => conn.as_mut().graceful_shutdown(),
        }
    }
}

fn apple(status: u16, reason: &str) -> Reply {
    reply(status, json!({ "reason": reason }).to_string())
}

/// Refuses a request whose check failed, and remembers why.
fn refuse(st: &State, status: u16, reason: &str) -> Reply {
    st.refused.lock().unwrap().push(reason.to_owned());
    apple(status, reason)
}

/// Whether `token` is a provider token Apple would take: ES256 by the team's key, with
/// its key id, team id and a recent `iat`.
fn provider_token_ok(st: &State, token: &str) -> bool {
    let Some(t) = jwt(token) else {
        return false;
    };
    let iat = t.claims["iat"].as_u64().unwrap_or(0);
    t.header["alg"] == "ES256"
        && t.header["kid"] == KEY_ID
        && t.claims["iss"] == TEAM_ID
        && iat.abs_diff(now_secs()) < 3600
        && UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &st.public_key)
            .verify(t.input.as_bytes(), &t.signature)
            .is_ok()
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<_> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn handle(st: Arc<State>, ctl: Arc<Control>, req: hyper::Request<Incoming>) -> Reply {
    let h2 = req.version() == Version::HTTP_2;
    let (parts, body) = read(req).await;
    let path = parts.uri.path().to_owned();
    let (sandbox, rest) = match path.strip_prefix("/sandbox") {
        Some(rest) => (true, rest),
        None => (false, path.as_str()),
    };
    let Some(device) = rest.strip_prefix("/3/device/") else {
        return refuse(&st, 404, "BadPath");
    };
    if parts.method != hyper::Method::POST {
        return refuse(&st, 405, "MethodNotAllowed");
    }
    if !h2 {
        return refuse(&st, 400, "NotHTTP2");
    }
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(&st, 400, "BadDeviceToken");
    }
    let Some(token) = header(&parts, "authorization").strip_prefix("bearer ") else {
        return refuse(&st, 403, "MissingProviderToken");
    };
    if !provider_token_ok(&st, token) {
        return refuse(&st, 403, "InvalidProviderToken");
    }
    if header(&parts, "apns-topic") != TOPIC {
        return refuse(&st, 400, "TopicDisallowed");
    }
    if header(&parts, "apns-push-type") != "alert" {
        return refuse(&st, 400, "InvalidPushType");
    }
    if header(&parts, "apns-priority") != "10" {
        return refuse(&st, 400, "BadPriority");
    }
    let collapse_id = header(&parts, "apns-collapse-id");
    if collapse_id.is_empty() || collapse_id.len() > 64 {
        return refuse(&st, 400, "BadCollapseId");
    }
    let apns_id = header(&parts, "apns-id");
    if !is_uuid(apns_id) {
        return refuse(&st, 400, "BadMessageId");
    }
    let Ok(expiration) = header(&parts, "apns-expiration").parse::<u64>() else {
        return refuse(&st, 400, "BadExpirationDate");
    };
    if body.len() > 4096 {
        return refuse(&st, 413, "PayloadTooLarge");
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&st, 400, "BadPayload");
    };
    if payload["aps"]["alert"]["body"].as_str().is_none() {
        return refuse(&st, 400, "PayloadEmpty");
    }
    if st.expired.lock().unwrap().contains(token) {
        // Not a refusal of the test's: the answer it scripted.
        return apple(403, "ExpiredProviderToken");
    }
    st.seen.lock().unwrap().push(Seen {
        device: device.to_owned(),
        sandbox,
        jwt: token.to_owned(),
        collapse_id: collapse_id.to_owned(),
        apns_id: apns_id.to_owned(),
        expiration,
        payload,
    });
    let step = st
        .script
        .lock()
        .unwrap()
        .get_mut(device)
        .and_then(VecDeque::pop_front);
    match step {
        None => ok(apns_id),
        Some(Script::Gone) => reply(
            410,
            json!({"reason": "Unregistered", "timestamp": now_secs() * 1000}).to_string(),
        ),
        Some(Script::TooMany) => {
            let mut r = apple(429, "TooManyRequests");
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
            r
        }
        Some(Script::BadToken) => apple(400, "BadDeviceToken"),
        Some(Script::Expire) => {
            st.expired.lock().unwrap().insert(token.to_owned());
            apple(403, "ExpiredProviderToken")
        }
        Some(Script::Drop) => {
            ctl.kill.notify_one();
            // The connection is gone before this answer could be sent.
            tokio::time::sleep(Duration::from_secs(5)).await;
            apple(500, "InternalServerError")
        }
        Some(Script::GoAway) => {
            ctl.goaway.notify_one();
            ok(apns_id)
        }
    }
}

fn ok(apns_id: &str) -> Reply {
    let mut r = reply(200, Bytes::new());
    r.headers_mut().insert("apns-id", apns_id.parse().unwrap());
    r
}

fn device(token: &str) -> PushRegistration {
    PushRegistration::Apns {
        token: token.into(),
        topic: TOPIC.into(),
        sandbox: false,
    }
}

async fn send(p: &Providers, token: &str, n: &Notification) -> Outcome {
    bounded(p.send(7, "phone", &device(token), n)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_answers_become_outcomes() {
    let apple = StandIn::start().await;
    let p = apple.providers(4);
    let n = notification("n-1", "d:1:2");
    apple.script("a002", &[Script::Gone]);
    apple.script("a003", &[Script::BadToken]);
    apple.script("a004", &[Script::TooMany]);

    assert_eq!(send(&p, "a001", &n).await, Outcome::Sent);
    assert_eq!(
        send(&p, "a002", &n).await,
        Outcome::Invalid("Unregistered".into())
    );
    assert_eq!(
        send(&p, "a003", &n).await,
        Outcome::Invalid("BadDeviceToken".into())
    );
    // 429 with Retry-After: 1 — waited out, then sent.
    let started = Instant::now();
    assert_eq!(send(&p, "a004", &n).await, Outcome::Sent);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let tries = apple.seen("a004");
    assert_eq!(tries.len(), 2);
    assert_eq!(
        tries[0].apns_id, tries[1].apns_id,
        "a retry is the same notification"
    );
    // Not a hex token: refused here, never sent.
    assert!(matches!(send(&p, "a/../x", &n).await, Outcome::Invalid(_)));
    // A development build's token goes to the sandbox.
    let sandbox = PushRegistration::Apns {
        token: "a005".into(),
        topic: TOPIC.into(),
        sandbox: true,
    };
    assert_eq!(
        bounded(p.send(7, "phone", &sandbox, &n)).await,
        Outcome::Sent
    );
    assert!(apple.seen("a005")[0].sandbox && !apple.seen("a001")[0].sandbox);
    // Attempts spent: given up.
    apple.script("a006", &[Script::TooMany; 4]);
    assert!(
        matches!(send(&apple.providers(2), "a006", &n).await, Outcome::Failed(r) if r.contains("TooManyRequests"))
    );
    apple.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_token_serves_every_request_until_apple_says_it_expired() {
    let apple = StandIn::start().await;
    let p = Arc::new(apple.providers(4));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let p = p.clone();
        sends.spawn(async move {
            let n = notification(&format!("n-{i}"), "g:5");
            send(&p, &format!("b{i:03x}"), &n).await
        });
    }
    while let Some(outcome) = sends.join_next().await {
        assert_eq!(outcome.unwrap(), Outcome::Sent);
    }
    let tokens: HashSet<String> = apple
        .state
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.jwt.clone())
        .collect();
    assert_eq!(tokens.len(), 1, "one provider token for all 40 requests");
    let first = tokens.into_iter().next().unwrap();
    assert!(
        apple.connections() <= 2,
        "{} connections",
        apple.connections()
    );

    // Apple says it expired: a fresh one at once, the request tried again, and the fresh
    // one used from then on.
    apple.script("b100", &[Script::Expire]);
    assert_eq!(
        send(&p, "b100", &notification("n-x", "g:5")).await,
        Outcome::Sent
    );
    let tries = apple.seen("b100");
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0].jwt, first);
    assert_ne!(tries[1].jwt, first, "a new provider token");
    assert_eq!(
        send(&p, "b101", &notification("n-y", "g:5")).await,
        Outcome::Sent
    );
    assert_eq!(apple.seen("b101")[0].jwt, tries[1].jwt);
    apple.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_or_a_goaway_is_retried_on_a_new_connection() {
    let apple = StandIn::start().await;
    let p = apple.providers(4);
    let n = notification("n-1", "d:1:2");
    assert_eq!(send(&p, "c000", &n).await, Outcome::Sent);
    let before = apple.connections();

    apple.script("c001", &[Script::Drop]);
    assert_eq!(send(&p, "c001", &n).await, Outcome::Sent);
    assert_eq!(apple.seen("c001").len(), 2, "sent again after the drop");
    assert!(apple.connections() > before, "on a new connection");

    let before = apple.connections();
    apple.script("c002", &[Script::GoAway]);
    assert_eq!(send(&p, "c002", &n).await, Outcome::Sent);
    // A graceful GOAWAY is two frames (hyper's server first says "no new streams soon",
    // then names the last stream it took): a request sent between them is still served
    // on the old connection. Once the second came, the next one needs a new connection.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(send(&p, "c003", &n).await, Outcome::Sent);
    assert_eq!(apple.seen("c003").len(), 1);
    assert!(
        apple.connections() > before,
        "a new connection after GOAWAY"
    );
    apple.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_carries_the_documented_payload_and_headers() {
    let apple = StandIn::start().await;
    let p = apple.providers(4);
    let n = notification("n-42/phone", "d:1:2");
    assert_eq!(send(&p, "d001", &n).await, Outcome::Sent);
    let seen = &apple.seen("d001")[0];
    assert_eq!(
        seen.payload,
        json!({
            "aps": {
                "alert": {"title": "Alice", "body": "Are we still on for lunch?"},
                "badge": 4,
                "sound": "default",
                "thread-id": "d:1:2",
            },
            "xinge": {"conv": "d:1:2", "seq": "17"},
        })
    );
    assert_eq!(seen.collapse_id, "d:1:2");
    assert!(seen.expiration > now_secs(), "expires in the future");
    // The same notification again (a redelivery) has the same apns-id; another does not.
    assert_eq!(send(&p, "d001", &n).await, Outcome::Sent);
    assert_eq!(
        send(&p, "d001", &notification("n-43/phone", "d:1:2")).await,
        Outcome::Sent
    );
    let ids: Vec<_> = apple.seen("d001").into_iter().map(|s| s.apns_id).collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);

    // A long collapse id is hashed to 64 bytes; a long text cut to fit 4096 bytes.
    let long = Notification {
        collapse_id: "g:".to_owned() + &"9".repeat(100),
        body: "消息".repeat(2000),
        ..n.clone()
    };
    assert_eq!(send(&p, "d002", &long).await, Outcome::Sent);
    let seen = &apple.seen("d002")[0];
    assert_eq!(seen.collapse_id.len(), 64);
    let body = seen.payload["aps"]["alert"]["body"].as_str().unwrap();
    assert!(body.ends_with('…') && body.len() > 3000, "{}", body.len());
    apple.assert_clean();
}

#[tokio::test]
async fn a_key_that_cannot_be_used_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |key_file: std::path::PathBuf| NotifyConfig {
        apns: Some(ApnsConfig {
            key_file,
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
            url: "https://127.0.0.1:1".into(),
            sandbox_url: "https://127.0.0.1:1".into(),
            limits: Default::default(),
        }),
        ..Default::default()
    };
    let missing = dir.path().join("missing.p8");
    let err = Providers::new(&cfg(missing), &[]).unwrap_err();
    assert!(err.contains("missing.p8"), "{err}");
    let junk = dir.path().join("junk.p8");
    std::fs::write(&junk, pem("PRIVATE KEY", b"not a key")).unwrap();
    let err = Providers::new(&cfg(junk), &[]).unwrap_err();
    assert!(err.contains("junk.p8") && err.contains("P-256"), "{err}");
    let (good, _) = p256_key(dir.path(), "good.p8");
    let p = Providers::new(&cfg(good), &[]).unwrap();
    assert!(p.serves(&device("00")));
    assert!(!p.serves(&PushRegistration::Fcm { token: "t".into() }));
}
