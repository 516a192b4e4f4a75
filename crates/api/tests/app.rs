//! In-process API tests through `app()` and `oneshot`: no sockets, the real router.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;
use xinge_api::{AppState, Dispatch, app};
use xinge_core::GatewayId;
use xinge_core::config::Config;
use xinge_push::{Push, PushConfig};
use xinge_store::fjall::{FjallOptions, FjallStore};

fn state(dir: &std::path::Path) -> AppState {
    // The recorder first, as `xinge serve` does, so gauges set at start are recorded.
    xinge_api::metrics_handle();
    let mut cfg = Config::default();
    cfg.auth.argon2_memory_kib = 256;
    cfg.auth.argon2_iterations = 1;
    let store = Arc::new(FjallStore::open(dir, FjallOptions::default()).unwrap());
    let push = Arc::new(Push::new(PushConfig::default()));
    let logic = xinge_logic::Logic::new(store, push.clone(), cfg.clone(), b"k".repeat(32)).unwrap();
    let dispatch = Arc::new(Dispatch(logic.clone()));
    let gateway = xinge_gateway::Gateway::new(
        GatewayId(1),
        cfg.gateway,
        dispatch.clone(),
        dispatch,
        push,
        cfg.clock,
    );
    AppState {
        logic,
        gateway,
        route: Arc::new(xinge_route::Route::new(15_000)),
    }
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn health_openapi_and_errors_in_our_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let (status, body) = call(&s, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body["ok"].as_bool()), (StatusCode::OK, Some(true)));

    let (status, doc) = call(
        &s,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/messages",
        "/v1/sync",
        "/v1/conversations/{conv}/messages/{seq}/read-state",
        "/v1/friends/requests",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["components"]["schemas"]["SendRequest"].is_object());
    assert!(doc["components"]["schemas"]["ErrorCode"].is_object());

    let (status, body) = call(
        &s,
        Request::get("/v1/conversations")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let (status, body) = call(&s, Request::get("/nowhere").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let register = |name: &str| {
        Request::post("/v1/accounts")
            .header("content-type", "application/json")
            .body(Body::from(format!(
                r#"{{"username":"{name}","password":"long enough"}}"#
            )))
            .unwrap()
    };
    let (status, body) = call(&s, register("alice")).await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (StatusCode::OK, Some("1"))
    );
    let (status, body) = call(&s, register("alice")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let no_type = Request::post("/v1/accounts")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = call(&s, no_type).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );

    // Prometheus metrics: errors by code, as Prometheus text.
    let _ = call(&s, Request::get("/v1/me").body(Body::empty()).unwrap()).await;
    let resp = app(s.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        text.contains("xinge_errors_total{code=\"unauthenticated\",via=\"http\"}"),
        "{text}"
    );
    assert!(text.contains("xinge_connections 0"), "{text}");
}

#[tokio::test]
async fn web_client_is_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let get = |path: &str, etag: Option<&str>| {
        let mut r = Request::get(path);
        if let Some(t) = etag {
            r = r.header("if-none-match", t);
        }
        app(s.clone()).oneshot(r.body(Body::empty()).unwrap())
    };
    let header = |resp: &axum::response::Response, name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let resp = get("/", None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&resp, "cache-control").as_deref(), Some("no-cache"));
    assert!(header(&resp, "content-security-policy").is_some());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let html = std::str::from_utf8(&body).unwrap();
    assert!(html.contains("/web/app.js"), "{html}");
    assert!(!html.contains("https://"), "no external resources: {html}");

    for (path, ty) in [
        ("/web/app.js", "text/javascript; charset=utf-8"),
        ("/web/client.js", "text/javascript; charset=utf-8"),
        ("/web/view.js", "text/javascript; charset=utf-8"),
        ("/sw.js", "text/javascript; charset=utf-8"),
        ("/web/style.css", "text/css; charset=utf-8"),
        ("/web/icon.svg", "image/svg+xml"),
    ] {
        let resp = get(path, None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&resp, "content-type").as_deref(), Some(ty), "{path}");
        // Revalidation: the same bytes answer 304 without a body.
        let tag = header(&resp, "etag").expect("an etag");
        let again = get(path, Some(&tag)).await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        let body = again.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }

    // Only the embedded files: no path tricks, answered in the API's error shape.
    for path in ["/web/nope.js", "/web/..%2FCargo.toml", "/web/"] {
        let (status, body) = call(&s, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}"
        );
    }
}

/// Found by the contract test (scripts/contract.sh): axum's own answers to a malformed path
/// or query string were `text/plain`, not our `{code, message}`.
#[tokio::test]
async fn malformed_path_and_query_are_answered_in_our_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let post = |uri: &str, body: &str| {
        Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let account = r#"{"username":"bob","password":"long enough"}"#;
    assert_eq!(
        call(&s, post("/v1/accounts", account)).await.0,
        StatusCode::OK
    );
    let login = r#"{"username":"bob","password":"long enough","device":"d"}"#;
    let (_, body) = call(&s, post("/v1/sessions", login)).await;
    let token = body["token"].as_str().unwrap().to_owned();
    for uri in ["/v1/users/not-a-number", "/v1/sync?after=x"] {
        let req = Request::get(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&s, req).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{uri}"
        );
    }
}
