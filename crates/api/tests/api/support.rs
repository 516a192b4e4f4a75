//! One app over an embedded fjall store in a temp dir, and requests to it through
//! `oneshot`: the real router, no sockets.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;
use xinge_core::config::Config;
use xinge_logic::Logic;
use xinge_push::{Push, PushConfig};
use xinge_route::Route;
use xinge_store::fjall::{FjallOptions, FjallStore};

/// The business API and the route service over one store. (`app()`, which merges them
/// with the WebSocket gateway and the web client, is tested in tests/app.rs.)
pub struct App {
    pub logic: Arc<Logic>,
    pub route: Arc<Route>,
    _dir: tempfile::TempDir,
}

/// A registered user with a logged-in device.
pub struct User {
    pub id: String,
    pub token: String,
}

impl App {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// With the configuration changed by `f` (after the test defaults: cheap password
    /// hashing).
    pub fn with(f: impl FnOnce(&mut Config)) -> Self {
        // The recorder first, as `xinge serve` does, so what the app records is kept.
        xinge_api::metrics_handle();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.auth.argon2_memory_kib = 256;
        cfg.auth.argon2_iterations = 1;
        f(&mut cfg);
        let store = Arc::new(FjallStore::open(dir.path(), FjallOptions::default()).unwrap());
        let push = Arc::new(Push::new(PushConfig::default()));
        let logic = Logic::new(store, push, cfg.clone(), b"k".repeat(32)).unwrap();
        let route = Arc::new(Route::new(15_000).with_admission(&cfg.route));
        Self {
            logic,
            route,
            _dir: dir,
        }
    }

    /// The role that serves `path`, as `xinge route` and `xinge api` do: the route service
    /// for `/v1/route`, the business API for everything else.
    pub fn router(&self, path: &str) -> Router {
        if path == "/v1/route" {
            xinge_api::route_app(self.route.clone())
        } else {
            xinge_api::api_app(self.logic.clone())
        }
    }

    pub async fn raw(&self, req: Request<Body>) -> Response {
        let router = self.router(req.uri().path());
        router.oneshot(req).await.unwrap()
    }

    /// Sends `req` and answers its status and JSON body (`Null` when the body is not JSON).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.raw(req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `method uri` with an optional bearer token and an optional raw JSON body.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        self.send(request(method, uri, token, body)).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", uri, Some(token), None).await
    }

    pub async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(token), Some(&body.to_string()))
            .await
    }

    /// Registers `name` and logs in one device.
    pub async fn user(&self, name: &str) -> User {
        let account = serde_json::json!({"username": name, "password": "long enough"});
        let (status, body) = self
            .call("POST", "/v1/accounts", None, Some(&account.to_string()))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let login = serde_json::json!({"username": name, "password": "long enough", "device": "d"});
        let (status, body) = self
            .call("POST", "/v1/sessions", None, Some(&login.to_string()))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        User {
            id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    /// Makes `a` and `b` friends: a request and its acceptance.
    pub async fn befriend(&self, a: &User, b: &User) {
        let (status, body) = self
            .post(
                "/v1/friends/requests",
                &a.token,
                serde_json::json!({"to": b.id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = self
            .post(
                &format!("/v1/friends/requests/{}/accept", a.id),
                &b.token,
                serde_json::json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

pub fn request(method: &str, uri: &str, token: Option<&str>, body: Option<&str>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(b) => r
            .header("content-type", "application/json")
            .body(Body::from(b.to_owned()))
            .unwrap(),
        None => r.body(Body::empty()).unwrap(),
    }
}

/// An error answer: `status`, our `{code, message}` shape with `code`.
#[track_caller]
pub fn refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {body}"
    );
}

/// A success answer: 200, and its body.
#[track_caller]
pub fn ok(answer: (StatusCode, Value)) -> Value {
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    answer.1
}

/// The refusal without a token, on `method uri` (with `body` where it needs one, so the
/// token is what is missing).
pub async fn needs_token(app: &App, method: &str, uri: &str, body: Option<&str>) {
    let answer = app.call(method, uri, None, body).await;
    refused(&answer, StatusCode::UNAUTHORIZED, "unauthenticated");
}
