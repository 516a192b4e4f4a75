//! Messages and what follows them: send, recall, sync, history, read receipts, typing,
//! presence and the conversation list.

use crate::support::{App, User, needs_token, ok, refused};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// Alice and Bob are friends; Carol knows neither.
async fn three(app: &App) -> (User, User, User) {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    app.befriend(&alice, &bob).await;
    (alice, bob, carol)
}

fn hello(to: &str, id: &str) -> Value {
    json!({"to": to, "client_msg_id": id, "content": {"text": "hello"}})
}

#[tokio::test]
async fn send() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    needs_token(
        &app,
        "POST",
        "/v1/messages",
        Some(&hello(&bob.id, "m1").to_string()),
    )
    .await;

    let sent = ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m1"))
        .await);
    assert_eq!(
        (&sent["conv"], &sent["conv_seq"], &sent["duplicate"]),
        (&json!("d1-2"), &json!(1), &json!(false)),
        "{sent}"
    );
    // A retry with the same client_msg_id is the same message.
    let again = ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m1"))
        .await);
    assert_eq!(
        (&again["msg_id"], &again["duplicate"]),
        (&sent["msg_id"], &json!(true))
    );

    refused(
        &app.post("/v1/messages", &alice.token, hello(&carol.id, "m2"))
            .await,
        StatusCode::FORBIDDEN,
        "not_friends",
    );
    refused(
        &app.post("/v1/messages", &alice.token, hello("99", "m3"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let group = json!({"conv": "g99", "client_msg_id": "m4", "content": {"text": "hi"}});
    refused(
        &app.post("/v1/messages", &alice.token, group).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let text = json!({"to": bob.id, "client_msg_id": "m5", "content": "hello"});
    refused(
        &app.post("/v1/messages", &alice.token, text).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.post("/v1/messages", &alice.token, json!({"to": bob.id}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn sync() {
    let app = App::new();
    let (alice, bob, _) = three(&app).await;
    ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m1"))
        .await);

    needs_token(&app, "GET", "/v1/sync", None).await;
    let pulled = ok(app.get("/v1/sync", &bob.token).await);
    let entries = pulled["entries"].as_array().unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last["event"]["type"], "message", "{pulled}");
    assert_eq!(last["event"]["message"]["sender"], alice.id);
    assert_eq!(last["event"]["message"]["kind"], "content");
    assert_eq!(last["event"]["message"]["content"]["text"], "hello");
    assert_eq!(pulled["head"], last["seq"]);
    assert_eq!(pulled["has_more"], false);

    // A page of one, then nothing after the head.
    let first = ok(app.get("/v1/sync?limit=1", &bob.token).await);
    assert_eq!(first["entries"].as_array().unwrap().len(), 1);
    assert_eq!(first["has_more"], true);
    let head = pulled["head"].as_u64().unwrap();
    let rest = ok(app.get(&format!("/v1/sync?after={head}"), &bob.token).await);
    assert_eq!(
        (&rest["entries"], &rest["head"]),
        (&json!([]), &json!(head))
    );

    refused(
        &app.get("/v1/sync?limit=many", &bob.token).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn history() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    for id in ["m1", "m2", "m3"] {
        ok(app
            .post("/v1/messages", &alice.token, hello(&bob.id, id))
            .await);
    }
    let uri = "/v1/conversations/d1-2/messages";
    needs_token(&app, "GET", uri, None).await;
    let page = ok(app.get(uri, &bob.token).await);
    let seqs: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conv_seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, &page["has_more"]), (vec![1, 2, 3], &json!(false)));
    let older = ok(app
        .get(&format!("{uri}?before=3&limit=1"), &bob.token)
        .await);
    assert_eq!(older["messages"][0]["conv_seq"], 2, "{older}");
    assert_eq!(older["has_more"], true);

    refused(
        &app.get(uri, &carol.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.get("/v1/conversations/d2-1/messages", &bob.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.get(&format!("{uri}?before=3&after=1"), &bob.token)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.get(&format!("{uri}?before=x"), &bob.token).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn read_and_read_state() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m1"))
        .await);
    ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m2"))
        .await);

    let read = "/v1/conversations/d1-2/read";
    needs_token(&app, "POST", read, Some(r#"{"seq":1}"#)).await;
    let answer = ok(app.post(read, &bob.token, json!({"seq": 1})).await);
    assert_eq!(
        (&answer["conv"], &answer["read_seq"]),
        (&json!("d1-2"), &json!(1))
    );
    // The cursor only moves forward, and not past the head.
    let answer = ok(app.post(read, &bob.token, json!({"seq": 0})).await);
    assert_eq!(answer["read_seq"], 1);
    let answer = ok(app.post(read, &bob.token, json!({"seq": 99})).await);
    assert_eq!(answer["read_seq"], 2);
    refused(
        &app.post(read, &bob.token, json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        &app.post(read, &carol.token, json!({"seq": 1})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let state = "/v1/conversations/d1-2/messages/1/read-state";
    needs_token(&app, "GET", state, None).await;
    let st = ok(app.get(state, &alice.token).await);
    assert_eq!(
        (&st["read_count"], &st["unread_count"], &st["read_by"]),
        (&json!(1), &json!(0), &json!([bob.id])),
        "{st}"
    );
    refused(
        &app.get("/v1/conversations/d1-2/messages/9/read-state", &alice.token)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.get(state, &carol.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.get(
            "/v1/conversations/d1-2/messages/one/read-state",
            &alice.token,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn recall() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m1"))
        .await);
    let target = json!({"conv": "d1-2", "conv_seq": 1, "client_msg_id": "r1"});
    needs_token(
        &app,
        "POST",
        "/v1/messages/recall",
        Some(&target.to_string()),
    )
    .await;

    refused(
        &app.post("/v1/messages/recall", &bob.token, target.clone())
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &app.post("/v1/messages/recall", &carol.token, target.clone())
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post(
            "/v1/messages/recall",
            &alice.token,
            json!({"conv": "d1-2", "conv_seq": 7, "client_msg_id": "r2"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post(
            "/v1/messages/recall",
            &alice.token,
            json!({"conv": "d1-2", "conv_seq": 1}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let tombstone = ok(app
        .post("/v1/messages/recall", &alice.token, target.clone())
        .await);
    assert_eq!(
        (&tombstone["conv_seq"], &tombstone["duplicate"]),
        (&json!(2), &json!(false)),
        "{tombstone}"
    );
    let again = ok(app.post("/v1/messages/recall", &alice.token, target).await);
    assert_eq!(
        (&again["conv_seq"], &again["duplicate"]),
        (&json!(2), &json!(true))
    );
    let page = ok(app
        .get("/v1/conversations/d1-2/messages?after=1", &bob.token)
        .await);
    let tomb = &page["messages"][0];
    assert_eq!(
        (&tomb["kind"], &tomb["target"]),
        (&json!("recall"), &json!(1)),
        "{page}"
    );
}

#[tokio::test]
async fn typing() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    let _ = bob;
    let typing = "/v1/conversations/d1-2/typing";
    needs_token(&app, "POST", typing, None).await;
    assert_eq!(
        ok(app.post(typing, &alice.token, json!({})).await)["ok"],
        true
    );
    refused(
        &app.post(typing, &carol.token, json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        &app.post("/v1/conversations/d1-3/typing", &alice.token, json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "not_friends",
    );
    refused(
        &app.post("/v1/conversations/x/typing", &alice.token, json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
}

#[tokio::test]
async fn presence() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    let uri = format!("/v1/presence?users={},{},{}", alice.id, bob.id, carol.id);
    needs_token(&app, "GET", &uri, None).await;
    // Only oneself and friends: Carol is left out.
    let list = ok(app.get(&uri, &alice.token).await);
    let users: Vec<_> = list["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, vec![alice.id, bob.id], "{list}");
    assert_eq!(list["presence"][1]["online"], false);
    refused(
        &app.get("/v1/presence?users=1,two", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    refused(
        &app.get("/v1/presence", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn conversations() {
    let app = App::new();
    let (alice, bob, carol) = three(&app).await;
    ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m1"))
        .await);
    ok(app
        .post("/v1/messages", &alice.token, hello(&bob.id, "m2"))
        .await);

    needs_token(&app, "GET", "/v1/conversations", None).await;
    let list = ok(app.get("/v1/conversations", &bob.token).await);
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1, "{list}");
    let c = &convs[0];
    assert_eq!(
        (&c["conv"], &c["peer"], &c["last_seq"], &c["unread"]),
        (&json!("d1-2"), &json!(alice.id), &json!(2), &json!(2)),
        "{c}"
    );
    assert_eq!(c["last_message"]["client_msg_id"], "m2");
    assert_eq!(
        ok(app.get("/v1/conversations", &carol.token).await)["conversations"],
        json!([])
    );
}
