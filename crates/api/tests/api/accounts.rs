//! Accounts, sessions, `/v1/me` and `/v1/users`.

use crate::support::{App, needs_token, ok, refused};
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn register() {
    let app = App::new();
    let body = json!({"username": "alice", "password": "long enough", "display_name": "Alice"});
    let profile = ok(app
        .call("POST", "/v1/accounts", None, Some(&body.to_string()))
        .await);
    assert_eq!(profile["user_id"], "1", "64-bit ids are strings in JSON");
    assert_eq!(profile["username"], "alice");
    assert_eq!(profile["display_name"], "Alice");

    let again = app
        .call("POST", "/v1/accounts", None, Some(&body.to_string()))
        .await;
    refused(&again, StatusCode::CONFLICT, "conflict");
    let missing_password = app
        .call("POST", "/v1/accounts", None, Some(r#"{"username":"bob"}"#))
        .await;
    refused(&missing_password, StatusCode::BAD_REQUEST, "bad_request");
    let not_json = app
        .call("POST", "/v1/accounts", None, Some("{not json"))
        .await;
    refused(&not_json, StatusCode::BAD_REQUEST, "bad_request");
    let short = json!({"username": "bob", "password": "short"});
    let short = app
        .call("POST", "/v1/accounts", None, Some(&short.to_string()))
        .await;
    refused(&short, StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn login_and_logout() {
    let app = App::new();
    let alice = app.user("alice").await;
    assert_eq!(alice.id, "1", "ids are strings in JSON");

    let login = json!({"username": "alice", "password": "long enough", "device": "phone"});
    let session = ok(app
        .call("POST", "/v1/sessions", None, Some(&login.to_string()))
        .await);
    assert_eq!(session["user_id"], "1");
    assert_eq!(session["device"], "phone");
    assert!(session["expires_at_ms"].as_u64().unwrap() > xinge_core::now_ms());
    let phone = session["token"].as_str().unwrap().to_owned();

    for wrong in [
        json!({"username": "alice", "password": "not the one", "device": "phone"}),
        json!({"username": "nobody", "password": "long enough", "device": "phone"}),
    ] {
        let answer = app
            .call("POST", "/v1/sessions", None, Some(&wrong.to_string()))
            .await;
        refused(&answer, StatusCode::UNAUTHORIZED, "bad_credentials");
    }
    let no_device = json!({"username": "alice", "password": "long enough"});
    let answer = app
        .call("POST", "/v1/sessions", None, Some(&no_device.to_string()))
        .await;
    refused(&answer, StatusCode::BAD_REQUEST, "bad_request");

    needs_token(&app, "DELETE", "/v1/sessions", None).await;
    let done = ok(app.call("DELETE", "/v1/sessions", Some(&phone), None).await);
    assert_eq!(done["ok"], true);
    // The phone's token stops working at once; the other device's does not.
    refused(
        &app.get("/v1/me", &phone).await,
        StatusCode::UNAUTHORIZED,
        "token_revoked",
    );
    assert_eq!(ok(app.get("/v1/me", &alice.token).await)["user_id"], "1");
}

#[tokio::test]
async fn me() {
    let app = App::new();
    let alice = app.user("alice").await;
    needs_token(&app, "GET", "/v1/me", None).await;
    refused(
        &app.get("/v1/me", "not.a-token").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let profile = ok(app.get("/v1/me", &alice.token).await);
    assert_eq!(
        (
            &profile["user_id"],
            &profile["username"],
            &profile["display_name"]
        ),
        (&json!("1"), &json!("alice"), &json!("alice"))
    );

    let rename = json!({"display_name": "Alice A."}).to_string();
    needs_token(&app, "PUT", "/v1/me", Some(&rename)).await;
    let profile = ok(app
        .call("PUT", "/v1/me", Some(&alice.token), Some(&rename))
        .await);
    assert_eq!(profile["display_name"], "Alice A.");
    assert_eq!(
        ok(app.get("/v1/me", &alice.token).await)["display_name"],
        "Alice A."
    );
    let answer = app
        .call("PUT", "/v1/me", Some(&alice.token), Some(r#"{"name":"x"}"#))
        .await;
    refused(&answer, StatusCode::BAD_REQUEST, "bad_request");
    let answer = app
        .call(
            "PUT",
            "/v1/me",
            Some(&alice.token),
            Some(r#"{"display_name":""}"#),
        )
        .await;
    refused(&answer, StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn users() {
    let app = App::new();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    needs_token(&app, "GET", "/v1/users?username=bob", None).await;
    let found = ok(app.get("/v1/users?username=bob", &alice.token).await);
    assert_eq!(
        (&found["user_id"], &found["username"]),
        (&json!(bob.id), &json!("bob"))
    );
    refused(
        &app.get("/v1/users?username=carol", &alice.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.get("/v1/users", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    needs_token(&app, "GET", "/v1/users/2", None).await;
    // A stranger's profile is not found, exactly as an id nobody has: walking the ids
    // tells nothing.
    let bobs = format!("/v1/users/{}", bob.id);
    let stranger = app.get(&bobs, &alice.token).await;
    let nobody = app.get("/v1/users/99", &alice.token).await;
    refused(&stranger, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(stranger, nobody);
    assert_eq!(
        ok(app
            .get(&format!("/v1/users/{}", alice.id), &alice.token)
            .await)["username"],
        "alice"
    );
    // A friend request makes them known to each other, both ways.
    ok(app
        .post(
            "/v1/friends/requests",
            &alice.token,
            json!({"to": bob.id, "note": ""}),
        )
        .await);
    assert_eq!(ok(app.get(&bobs, &alice.token).await)["username"], "bob");
    let alices = format!("/v1/users/{}", alice.id);
    assert_eq!(ok(app.get(&alices, &bob.token).await)["username"], "alice");
    let carol = app.user("carol").await;
    refused(
        &app.get(&bobs, &carol.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Co-members of a group know each other.
    app.befriend(&alice, &carol).await;
    ok(app
        .post(
            "/v1/groups",
            &alice.token,
            json!({"name": "g", "members": [bob.id, carol.id]}),
        )
        .await);
    assert_eq!(ok(app.get(&bobs, &carol.token).await)["username"], "bob");
    refused(
        &app.get("/v1/users/bob", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}
