//! Groups and their member operations.

use crate::support::{App, User, needs_token, ok, refused};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// A group of Alice (owner) and Bob (member); Carol and Dave are outside it.
async fn group(app: &App) -> (String, [User; 4]) {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let info = ok(app
        .post(
            "/v1/groups",
            &alice.token,
            json!({"name": "team", "members": [bob.id]}),
        )
        .await);
    (
        info["group_id"].as_str().unwrap().to_owned(),
        [alice, bob, carol, dave],
    )
}

async fn info(app: &App, id: &str, who: &User) -> Value {
    ok(app.get(&format!("/v1/groups/{id}"), &who.token).await)
}

#[tokio::test]
async fn create() {
    let app = App::new();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let body = json!({"name": "team", "members": [bob.id]});
    needs_token(&app, "POST", "/v1/groups", Some(&body.to_string())).await;
    let info = ok(app.post("/v1/groups", &alice.token, body).await);
    let id = info["group_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            &info["conv"],
            &info["name"],
            &info["owner"],
            &info["member_count"]
        ),
        (
            &json!(format!("g{id}")),
            &json!("team"),
            &json!(alice.id),
            &json!(2)
        ),
        "{info}"
    );
    assert_eq!(
        (&info["muted_all"], &info["dismissed"]),
        (&json!(false), &json!(false))
    );

    refused(
        &app.post("/v1/groups", &alice.token, json!({"name": ""}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.post(
            "/v1/groups",
            &alice.token,
            json!({"name": "x", "members": [99]}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post("/v1/groups", &alice.token, json!({"name": "x", "owner": 2}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn info_and_update() {
    let app = App::new();
    let (id, [alice, bob, carol, _]) = group(&app).await;
    let uri = format!("/v1/groups/{id}");
    needs_token(&app, "GET", &uri, None).await;
    assert_eq!(info(&app, &id, &bob).await["name"], "team");
    refused(
        &app.get(&uri, &carol.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.get("/v1/groups/999", &alice.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.get("/v1/groups/team", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    let rename = json!({"name": "crew", "notice": "be nice"}).to_string();
    needs_token(&app, "PATCH", &uri, Some(&rename)).await;
    let updated = ok(app
        .call("PATCH", &uri, Some(&alice.token), Some(&rename))
        .await);
    assert_eq!(
        (&updated["name"], &updated["notice"]),
        (&json!("crew"), &json!("be nice"))
    );
    assert_eq!(info(&app, &id, &bob).await["name"], "crew");
    refused(
        &app.call("PATCH", &uri, Some(&bob.token), Some(r#"{"name":"mine"}"#))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &app.call("PATCH", &uri, Some(&alice.token), Some(r#"{"title":"x"}"#))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn members() {
    let app = App::new();
    let (id, [alice, bob, carol, dave]) = group(&app).await;
    let uri = format!("/v1/groups/{id}/members");
    needs_token(&app, "GET", &uri, None).await;
    let list = ok(app.get(&uri, &bob.token).await);
    let roles: Vec<_> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            (alice.id.clone(), "owner".to_owned()),
            (bob.id.clone(), "member".to_owned())
        ]
    );
    assert_eq!(list["next_after"], Value::Null);
    let page = ok(app.get(&format!("{uri}?limit=1"), &bob.token).await);
    assert_eq!(page["members"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], alice.id);
    refused(
        &app.get(&uri, &carol.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // The owner adds Carol directly.
    let add = json!({"users": [carol.id]}).to_string();
    needs_token(&app, "POST", &uri, Some(&add)).await;
    assert_eq!(
        ok(app.call("POST", &uri, Some(&alice.token), Some(&add)).await)["ok"],
        true
    );
    assert_eq!(info(&app, &id, &carol).await["member_count"], 3);
    refused(
        &app.post(&uri, &alice.token, json!({"users": [99]})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post(&uri, &alice.token, json!({"user": 4})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // A member only invites: Dave joins himself, and only with the invitation.
    let join = format!("/v1/groups/{id}/join");
    needs_token(&app, "POST", &join, None).await;
    refused(
        &app.post(&join, &dave.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    ok(app
        .post(&uri, &bob.token, json!({"users": [dave.id]}))
        .await);
    assert_eq!(info(&app, &id, &alice).await["member_count"], 3);
    let invites = ok(app.get("/v1/sync", &dave.token).await);
    let invite = &invites["entries"].as_array().unwrap().last().unwrap()["event"];
    assert_eq!(
        (&invite["type"], &invite["by"]),
        (&json!("group_invite"), &json!(bob.id)),
        "{invites}"
    );
    assert_eq!(
        ok(app.post(&join, &dave.token, json!({})).await)["ok"],
        true
    );
    assert_eq!(info(&app, &id, &dave).await["member_count"], 4);

    // Removing: a member may not, the owner may.
    let remove = format!("/v1/groups/{id}/members/{}", carol.id);
    needs_token(&app, "DELETE", &remove, None).await;
    refused(
        &app.call("DELETE", &remove, Some(&bob.token), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        ok(app.call("DELETE", &remove, Some(&alice.token), None).await)["ok"],
        true
    );
    refused(
        &app.get(&format!("/v1/groups/{id}"), &carol.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.call(
            "DELETE",
            &format!("/v1/groups/{id}/members/x"),
            Some(&alice.token),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn admins_and_mutes() {
    let app = App::new();
    let (id, [alice, bob, carol, _]) = group(&app).await;
    ok(app
        .post(
            &format!("/v1/groups/{id}/members"),
            &alice.token,
            json!({"users": [carol.id]}),
        )
        .await);

    let admins = format!("/v1/groups/{id}/admins");
    let make_bob = json!({"user": bob.id, "on": true});
    needs_token(&app, "POST", &admins, Some(&make_bob.to_string())).await;
    refused(
        &app.post(&admins, &bob.token, make_bob.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &app.post(&admins, &alice.token, json!({"user": bob.id}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_eq!(
        ok(app.post(&admins, &alice.token, make_bob).await)["ok"],
        true
    );
    let list = ok(app
        .get(&format!("/v1/groups/{id}/members"), &alice.token)
        .await);
    assert_eq!(list["members"][1]["role"], "admin", "{list}");

    // An admin mutes a plain member, never the owner; a muted member cannot send.
    let mutes = format!("/v1/groups/{id}/mutes");
    needs_token(&app, "POST", &mutes, Some(r#"{"user":3,"on":true}"#)).await;
    refused(
        &app.post(&mutes, &bob.token, json!({"user": alice.id, "on": true}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &app.post(&mutes, &carol.token, json!({"user": bob.id, "on": true}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        ok(app
            .post(&mutes, &bob.token, json!({"user": carol.id, "on": true}))
            .await)["ok"],
        true
    );
    let say = |n: &str| json!({"conv": format!("g{id}"), "client_msg_id": n, "content": {"t": n}});
    refused(
        &app.post("/v1/messages", &carol.token, say("c1")).await,
        StatusCode::FORBIDDEN,
        "muted",
    );
    ok(app
        .post(&mutes, &bob.token, json!({"user": carol.id, "on": false}))
        .await);
    ok(app.post("/v1/messages", &carol.token, say("c2")).await);

    // Everyone muted but the admins.
    let mute_all = format!("/v1/groups/{id}/mute-all");
    needs_token(&app, "POST", &mute_all, Some(r#"{"on":true}"#)).await;
    refused(
        &app.post(&mute_all, &carol.token, json!({"on": true})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &app.post(&mute_all, &alice.token, json!({"on": "yes"}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_eq!(
        ok(app.post(&mute_all, &alice.token, json!({"on": true})).await)["ok"],
        true
    );
    assert_eq!(info(&app, &id, &carol).await["muted_all"], true);
    refused(
        &app.post("/v1/messages", &carol.token, say("c3")).await,
        StatusCode::FORBIDDEN,
        "muted",
    );
    ok(app.post("/v1/messages", &bob.token, say("b1")).await);
}

#[tokio::test]
async fn transfer_leave_and_dismiss() {
    let app = App::new();
    let (id, [alice, bob, carol, _]) = group(&app).await;
    let transfer = format!("/v1/groups/{id}/transfer");
    let leave = format!("/v1/groups/{id}/leave");
    let group = format!("/v1/groups/{id}");

    needs_token(&app, "POST", &transfer, Some(r#"{"to":2}"#)).await;
    refused(
        &app.post(&transfer, &bob.token, json!({"to": bob.id})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &app.post(&transfer, &alice.token, json!({"to": carol.id}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.post(&transfer, &alice.token, json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // The owner may not leave a group with others in it.
    needs_token(&app, "POST", &leave, None).await;
    refused(
        &app.post(&leave, &alice.token, json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        ok(app
            .post(&transfer, &alice.token, json!({"to": bob.id}))
            .await)["ok"],
        true
    );
    assert_eq!(info(&app, &id, &alice).await["owner"], bob.id);

    // Only the owner dismisses.
    needs_token(&app, "DELETE", &group, None).await;
    refused(
        &app.call("DELETE", &group, Some(&alice.token), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        ok(app.post(&leave, &alice.token, json!({})).await)["ok"],
        true
    );
    refused(
        &app.get(&group, &alice.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post(&leave, &carol.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        ok(app.call("DELETE", &group, Some(&bob.token), None).await)["ok"],
        true
    );
    refused(
        &app.get(&group, &bob.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}
