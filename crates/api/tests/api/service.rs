//! What is not one resource: the route service, `/healthz`, `/metrics`, `/openapi.json`,
//! and the answers every endpoint shares (429s, unknown paths).

use crate::support::{App, ok, refused, request};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use xinge_core::GatewayId;
use xinge_route::GatewayReport;

#[tokio::test]
async fn route() {
    let app = App::new();
    let none = ok(app.call("GET", "/v1/route", None, None).await);
    assert_eq!(none["gateways"], json!([]));

    for (id, zone) in [(1, "a"), (2, "b")] {
        app.route.report(GatewayReport {
            id: GatewayId(id),
            region: "eu".into(),
            zone: zone.into(),
            ws_url: Some(format!("ws://gw{id}/ws")),
            tcp_addr: None,
            connections: 0,
            at_ms: xinge_core::now_ms(),
        });
    }
    // The client's own zone first.
    let ranked = ok(app
        .call("GET", "/v1/route?region=eu&zone=b", None, None)
        .await);
    let first = &ranked["gateways"][0];
    assert_eq!(
        (&first["transport"], &first["address"], &first["zone"]),
        (&json!("ws"), &json!("ws://gw2/ws"), &json!("b")),
        "{ranked}"
    );
    assert_eq!(ranked["gateways"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn healthz_and_metrics() {
    let app = App::new();
    assert_eq!(
        ok(app.call("GET", "/healthz", None, None).await),
        json!({"ok": true})
    );
    let refused_here = app.call("GET", "/v1/friends", None, None).await;
    refused(&refused_here, StatusCode::UNAUTHORIZED, "unauthenticated");
    let resp = app.raw(request("GET", "/metrics", None, None)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(text.contains("# TYPE xinge_errors_total counter"), "{text}");
    assert!(
        text.contains("xinge_errors_total{code=\"unauthenticated\",via=\"http\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_document() {
    let app = App::new();
    let doc = ok(app.call("GET", "/openapi.json", None, None).await);
    assert_eq!(doc["info"]["title"], "xinge HTTP API");
    assert_eq!(doc["paths"].as_object().unwrap().len(), 44);
    let op = &doc["paths"]["/v1/groups/{id}"]["patch"];
    assert_eq!(
        (&op["operationId"], &op["tags"]),
        (&json!("update_group"), &json!(["http"]))
    );
    assert_eq!(
        op["responses"]["403"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ApiError"
    );
    for schema in [
        "ApiError",
        "ErrorCode",
        "Done",
        "ReadBody",
        "GroupInfo",
        "RouteResponse",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

/// Serving and documenting are one registration: every operation of the document is
/// routed (answered by its handler, not the unknown-path fallback or a 405).
#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = App::new();
    let doc = ok(app.call("GET", "/openapi.json", None, None).await);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let mut uri = path.clone();
        for (param, value) in [
            ("conv", "d1-2"),
            ("seq", "1"),
            ("id", "1"),
            ("from", "1"),
            ("user", "1"),
            ("device", "phone"),
            ("variant", "original"),
        ] {
            uri = uri.replace(&format!("{{{param}}}"), value);
        }
        assert!(
            !uri.contains('{'),
            "{path} has a parameter this test does not fill in"
        );
        for method in item.as_object().unwrap().keys() {
            let (status, body) = app
                .call(&method.to_uppercase(), &uri, None, Some("{}"))
                .await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_ne!(body["message"], "no such endpoint", "{method} {uri}");
            operations += 1;
            // HEAD answers carry no body; tus's OPTIONS answers 204 without one.
            if method == "head" || method == "options" {
                continue;
            }
            assert!(
                body.is_object() || body.is_array(),
                "{method} {uri}: {body}"
            );
        }
    }
    assert_eq!(operations, 60);
}

#[tokio::test]
async fn a_known_path_with_the_wrong_method_answers_in_our_shape() {
    let app = App::new();
    for (method, uri) in [
        ("PATCH", "/v1/messages"),
        ("DELETE", "/v1/accounts"),
        ("POST", "/healthz"),
    ] {
        let answer = app.call(method, uri, None, None).await;
        refused(
            &answer,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
}

#[tokio::test]
async fn unknown_paths_in_our_shape() {
    let app = App::new();
    for uri in ["/v2/messages", "/v1/messages/x/y", "/v1"] {
        let answer = app.call("GET", uri, None, None).await;
        refused(&answer, StatusCode::NOT_FOUND, "not_found");
    }
}

/// Checks a 429: the header's whole seconds are the body's milliseconds rounded up.
#[track_caller]
fn one_wait(resp_headers: &axum::http::HeaderMap, body: &Value) -> u64 {
    assert_eq!(body["code"], "rate_limited", "{body}");
    let ms = body["retry_after_ms"].as_u64().expect("a wait in the body");
    let secs: u64 = resp_headers
        .get("retry-after")
        .expect("a retry-after header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 0, "{body}");
    assert_eq!(secs, ms.div_ceil(1000), "header {secs} s, body {ms} ms");
    assert!(secs * 1000 >= ms && (secs - 1) * 1000 < ms);
    ms
}

async fn refused_429(app: &App, req: Request<Body>) -> (axum::http::HeaderMap, Value) {
    let resp = app.raw(req).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (headers, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn rate_limited_says_one_wait_in_header_and_body() {
    // One pull, then one every 2.5 s: the second waits about 2.5 s, which the header
    // rounds up to 3.
    let app = App::with(|cfg| {
        cfg.limits.pulls_burst = 1.0;
        cfg.limits.pulls_per_sec = 0.4;
    });
    let alice = app.user("alice").await;
    ok(app.get("/v1/sync", &alice.token).await);
    let (headers, body) =
        refused_429(&app, request("GET", "/v1/sync", Some(&alice.token), None)).await;
    let ms = one_wait(&headers, &body);
    assert!(ms > 2_000 && ms <= 2_500, "{ms}");
    assert_eq!(headers["retry-after"], "3", "{body}");
}

#[tokio::test]
async fn route_admission_says_one_wait_in_header_and_body() {
    let app = App::with(|cfg| {
        cfg.route.per_ip_burst = 1.0;
        cfg.route.per_ip_per_sec = 0.1;
    });
    let from = |port: u16| {
        let mut req = request("GET", "/v1/route", None, None);
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], port))));
        req
    };
    assert_eq!(app.raw(from(1)).await.status(), StatusCode::OK);
    let (headers, body) = refused_429(&app, from(2)).await;
    let ms = one_wait(&headers, &body);
    assert!(ms > 9_000 && ms <= 10_000, "{ms}");
    assert_eq!(headers["retry-after"], "10");
}
