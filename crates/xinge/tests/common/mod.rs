//! The test harness: a real server on port 0 in a temp dir, and helpers that drive it
//! through the SDK over real sockets.
#![allow(dead_code)]
// Test-only helpers: a failed setup step should stop the test where it happened.
#![allow(clippy::unwrap_used)]

pub mod delivery;
pub mod procs;
pub mod push;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use xinge_client::{Device, DeviceOptions, Http, Transport};
use xinge_core::UserId;
use xinge_core::config::Config;

pub const PASSWORD: &str = "correct horse battery";
pub const SECRET: &str = "test-secret-test-secret-test-secret!";

pub struct Server {
    pub base: String,
    /// The admin API's own listener, when the test configured admin keys.
    pub admin: Option<String>,
    pub tcp: SocketAddr,
    pub ws: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
}

/// The admin key the tests configure with [`with_admin`].
pub const ADMIN_KEY: &str = "the-test-admin-key-which-is-long-and-random-enough";

/// `cfg` with the admin API on its own loopback port (any free one), one key named
/// "tests" (`ADMIN_KEY`).
pub fn with_admin(cfg: &mut Config) {
    cfg.admin.keys = vec![xinge_api::admin::key_entry("tests", ADMIN_KEY)];
    cfg.admin.http_addr = "127.0.0.1:0".parse().unwrap();
}

/// A config that keeps tests fast: cheap (but still Argon2id) password hashing, per-user
/// limits out of the way of tests that send in bursts, and route and gateway admission and
/// new accounts per address out of the way of a hundred devices all coming from 127.0.0.1
/// (the limit tests set their own). The signal rate keeps its default: coalescing is part of normal delivery.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.to_path_buf();
    cfg.auth.argon2_memory_kib = 256;
    cfg.auth.argon2_iterations = 1;
    cfg.auth.token_secret = Some(SECRET.into());
    cfg.limits.sends_burst = 1e6;
    cfg.limits.pulls_burst = 1e6;
    cfg.route.per_ip_burst = 1e6;
    cfg.gateway.admission.per_ip_burst = 1e6;
    cfg.limits.registrations_per_ip_burst = 1e6;
    cfg
}

pub async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    tweak(&mut cfg);
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, tcp_addr) = (http.local_addr().unwrap(), tcp.local_addr().unwrap());
    let (stop, rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        xinge::serve::run(cfg, http, tcp, rx, move |bound| {
            let _ = ready_tx.send(bound.admin);
        })
        .await
        .unwrap();
    });
    let admin = ready_rx.await.expect("server ready");
    Server {
        admin: admin.map(|a| format!("http://{a}")),
        base: format!("http://{http_addr}"),
        tcp: tcp_addr,
        ws: format!("ws://{http_addr}/ws"),
        stop,
        task,
        dir,
    }
}

/// `(status, body)` of a raw call with `Authorization: Bearer <key>` if given.
pub async fn call(
    base: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{base}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// An admin API call that must succeed; its body. Needs [`with_admin`].
pub async fn admin(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let base = server.admin.as_deref().unwrap();
    let (status, v) = call(base, Some(ADMIN_KEY), method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

/// Users imported by the app's own server through the admin API, without passwords (so
/// none is hashed: thousands take a moment): their ids, in the order of `names`. Needs
/// [`with_admin`].
pub async fn import_users(server: &Server, names: &[String]) -> Vec<UserId> {
    let mut ids = Vec::with_capacity(names.len());
    for chunk in names.chunks(1000) {
        let users: Vec<_> = chunk
            .iter()
            .map(|n| serde_json::json!({ "username": n }))
            .collect();
        let v = admin(
            server,
            "POST",
            "/admin/v1/users/import",
            Some(serde_json::json!({ "users": users })),
        )
        .await;
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["status"], "created", "{r}");
            ids.push(UserId(r["user_id"].as_str().unwrap().parse().unwrap()));
        }
    }
    ids
}

/// A device of `user` signed in with a token the app issued through the admin API.
pub async fn issued_login(server: &Server, user: UserId, device: &str) -> Http {
    let v = admin(
        server,
        "POST",
        &format!("/admin/v1/users/{user}/tokens"),
        Some(serde_json::json!({ "device": device })),
    )
    .await;
    Http::new(&server.base).with_token(v["token"].as_str().unwrap())
}

impl Server {
    pub fn http(&self) -> Http {
        Http::new(&self.base)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Registers `name` (if needed) and logs in `device`.
    pub async fn login(&self, name: &str, device: &str) -> (Http, UserId) {
        let http = self.http();
        let _ = http.register(name, PASSWORD).await;
        let (authed, resp) = http.login(name, PASSWORD, device).await.unwrap();
        (authed, resp.user_id)
    }

    pub fn device(&self, http: &Http, transport: Transport) -> Device {
        Device::start(
            http.clone(),
            DeviceOptions {
                transport,
                ..DeviceOptions::default()
            },
        )
    }
}

/// An OpenAPI path with its parameters filled with values of the right shape.
pub fn fill_path(path: &str) -> String {
    path.replace("{conv}", "d1-2")
        .replace("{id}", "1")
        .replace("{user}", "1")
        .replace("{from}", "1")
        .replace("{seq}", "1")
        .replace("{group}", "1")
        .replace("{device}", "phone")
        .replace("{variant}", "original")
}

/// The outcome of a call as its stable code: `"ok"`, or the API error's code. A transport
/// failure is never an expected outcome: it panics.
pub fn code<T>(r: Result<T, xinge_client::ClientError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected an API error, got {e}"))
            .as_str(),
    }
}

pub async fn befriend(a: &Http, a_id: UserId, b: &Http, b_id: UserId) {
    a.request_friend(b_id, "hello").await.unwrap();
    b.accept_friend(a_id).await.unwrap();
}

/// Reads one length-prefixed frame from a raw TCP connection (bounded wait).
pub async fn read_frame(s: &mut tokio::net::TcpStream) -> xinge_proto::Frame {
    use tokio::io::AsyncReadExt;
    let len = tokio::time::timeout(Duration::from_secs(30), s.read_u32())
        .await
        .expect("a frame in time")
        .unwrap() as usize;
    let mut buf = vec![0; len];
    s.read_exact(&mut buf).await.unwrap();
    xinge_proto::Frame::decode(bytes::Bytes::from(buf), usize::MAX).unwrap()
}

/// A raw TCP connection to `server`'s gateway, authenticated with `token` (AUTH accepted).
pub async fn raw_authed(server: &Server, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    use xinge_proto::{Frame, cmd};
    let mut s = tokio::net::TcpStream::connect(server.tcp).await.unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap();
    s.write_all(&Frame::request(cmd::AUTH, 1, body).encode_prefixed())
        .await
        .unwrap();
    let ok = read_frame(&mut s).await;
    assert!(ok.is_response() && !ok.is_error(), "auth accepted");
    s
}

/// Serves `app` on a free loopback port until the test ends: its address. (The stand-ins
/// of the app's own server: webhooks, push service.)
pub async fn listen(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
