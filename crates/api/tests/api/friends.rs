//! Friends, friend requests and blocks.

use crate::support::{App, needs_token, ok, refused};
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn request_and_accept() {
    let app = App::new();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let to_bob = json!({"to": bob.id, "note": "hi, it's alice"}).to_string();

    needs_token(&app, "POST", "/v1/friends/requests", Some(&to_bob)).await;
    needs_token(&app, "GET", "/v1/friends/requests", None).await;
    let done = ok(app
        .call(
            "POST",
            "/v1/friends/requests",
            Some(&alice.token),
            Some(&to_bob),
        )
        .await);
    assert_eq!(done["ok"], true);

    let bobs = ok(app.get("/v1/friends/requests", &bob.token).await);
    let incoming = bobs["incoming"].as_array().unwrap();
    assert_eq!(incoming.len(), 1, "{bobs}");
    assert_eq!(
        (
            &incoming[0]["from"],
            &incoming[0]["to"],
            &incoming[0]["note"]
        ),
        (&json!(alice.id), &json!(bob.id), &json!("hi, it's alice"))
    );
    let alices = ok(app.get("/v1/friends/requests", &alice.token).await);
    assert_eq!(alices["outgoing"][0]["to"], bob.id, "{alices}");

    let accept = format!("/v1/friends/requests/{}/accept", alice.id);
    needs_token(&app, "POST", &accept, None).await;
    assert_eq!(
        ok(app.post(&accept, &bob.token, json!({})).await)["ok"],
        true
    );
    // Nothing is pending any more.
    refused(
        &app.post(&accept, &bob.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    needs_token(&app, "GET", "/v1/friends", None).await;
    let friends = ok(app.get("/v1/friends", &alice.token).await);
    assert_eq!(friends.as_array().unwrap().len(), 1, "{friends}");
    assert_eq!(friends[0]["user_id"], bob.id);
    assert!(friends[0]["since_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        ok(app.get("/v1/friends", &bob.token).await)[0]["user_id"],
        alice.id
    );

    refused(
        &app.post("/v1/friends/requests", &alice.token, json!({"to": bob.id}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
}

#[tokio::test]
async fn request_refusals() {
    let app = App::new();
    let alice = app.user("alice").await;
    let requests = "/v1/friends/requests";
    refused(
        &app.post(requests, &alice.token, json!({"to": alice.id}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.post(requests, &alice.token, json!({"to": 99})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post(requests, &alice.token, json!({"to": "bob"})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        &app.post(requests, &alice.token, json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        &app.post("/v1/friends/requests/x/accept", &alice.token, json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn decline() {
    let app = App::new();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    ok(app
        .post("/v1/friends/requests", &alice.token, json!({"to": bob.id}))
        .await);
    let decline = format!("/v1/friends/requests/{}/decline", alice.id);
    needs_token(&app, "POST", &decline, None).await;
    assert_eq!(
        ok(app.post(&decline, &bob.token, json!({})).await)["ok"],
        true
    );
    let bobs = ok(app.get("/v1/friends/requests", &bob.token).await);
    assert_eq!(bobs["incoming"], json!([]), "{bobs}");
    assert_eq!(ok(app.get("/v1/friends", &bob.token).await), json!([]));
    refused(
        &app.post(&decline, &bob.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn remove() {
    let app = App::new();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.befriend(&alice, &bob).await;
    let remove = format!("/v1/friends/{}", bob.id);
    needs_token(&app, "DELETE", &remove, None).await;
    let done = ok(app.call("DELETE", &remove, Some(&alice.token), None).await);
    assert_eq!(done["ok"], true);
    assert_eq!(ok(app.get("/v1/friends", &alice.token).await), json!([]));
    assert_eq!(ok(app.get("/v1/friends", &bob.token).await), json!([]));
    refused(
        &app.call("DELETE", &remove, Some(&alice.token), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn block_and_unblock() {
    let app = App::new();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.befriend(&alice, &bob).await;
    let block = format!("/v1/blocks/{}", bob.id);
    needs_token(&app, "PUT", &block, None).await;
    needs_token(&app, "DELETE", &block, None).await;

    let done = ok(app.call("PUT", &block, Some(&alice.token), None).await);
    assert_eq!(done["ok"], true);
    // Blocking ended the friendship, and the blocked side may not ask again.
    assert_eq!(ok(app.get("/v1/friends", &alice.token).await), json!([]));
    refused(
        &app.post("/v1/friends/requests", &bob.token, json!({"to": alice.id}))
            .await,
        StatusCode::FORBIDDEN,
        "blocked",
    );

    let done = ok(app.call("DELETE", &block, Some(&alice.token), None).await);
    assert_eq!(done["ok"], true);
    ok(app
        .post("/v1/friends/requests", &bob.token, json!({"to": alice.id}))
        .await);

    refused(
        &app.call("PUT", "/v1/blocks/99", Some(&alice.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.call("PUT", "/v1/blocks/me", Some(&alice.token), None)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}
