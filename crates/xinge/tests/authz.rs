//! The authorization matrix: every endpoint of the OpenAPI document with every kind of bad
//! token, and every operation on a conversation or group called by someone it does not
//! belong to — an outsider, a removed member, a blocked user — over HTTP and over the long
//! connection. All refused with a stable code; nothing of anyone else's is shown or changed.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use xinge_client::{Connection, Transport};
use xinge_core::{ConvId, DeviceId};
use xinge_logic::token::{Claims, TokenSigner};
use xinge_proto::cmd;

/// `(status, code)` of a raw call.
async fn call(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method != "GET" && method != "DELETE" {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v["code"].as_str().unwrap_or("").to_owned())
}

/// Public endpoints: no token needed.
const PUBLIC: [(&str, &str); 7] = [
    ("post", "/v1/accounts"),
    ("options", "/v1/uploads"),
    ("post", "/v1/sessions"),
    ("get", "/v1/route"),
    ("get", "/healthz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_missing_forged_expired_and_revoked_tokens() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let revoked = alice.token().unwrap().to_owned();
    let (_phone, _) = server.login("alice", "phone").await;
    alice.logout().await.unwrap();
    let signer = TokenSigner::new(SECRET.as_bytes().to_vec());
    let claims = |exp| Claims {
        uid: a,
        dev: DeviceId::parse("phone").unwrap(),
        tid: 1,
        exp,
    };
    let expired = signer.sign(&claims(1));
    let forged = TokenSigner::new(b"x".repeat(32)).sign(&claims(u64::MAX));
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if PUBLIC.contains(&(method.as_str(), path.as_str())) {
                continue;
            }
            // Parameters filled with values of the right shape.
            let concrete = fill_path(path);
            let m = method.to_uppercase();
            // A download URL carries its own signature and takes no token: one that is
            // not signed is refused whatever token comes with it.
            if path.starts_with("/media/") {
                let unsigned = format!("{concrete}?u={a}&e=99999999999999&sig={}", "0".repeat(64));
                for token in [None, Some("garbage"), Some(revoked.as_str())] {
                    let got = call(&server.base, token, &m, &unsigned, &json!({})).await;
                    assert_eq!(got, (403, "forbidden".to_owned()), "{m} {path}");
                    checked += 1;
                }
                continue;
            }
            for (token, want) in [
                (None, "unauthenticated"),
                (Some("garbage"), "unauthenticated"),
                (Some(forged.as_str()), "unauthenticated"),
                (Some(expired.as_str()), "token_expired"),
                (Some(revoked.as_str()), "token_revoked"),
            ] {
                let got = call(&server.base, token, &m, &concrete, &json!({})).await;
                // A HEAD answer has no body to carry the code.
                let want = if m == "HEAD" { "" } else { want };
                assert_eq!(got, (401, want.to_owned()), "{m} {path} with {want}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 5 * 30,
        "every endpoint was tried ({checked} calls)"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_removed_members_and_blocked_users_are_refused_everywhere() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (carol, c) = server.login("carol", "laptop").await;
    let (dave, _d) = server.login("dave", "laptop").await;
    let (erin, e) = server.login("erin", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    befriend(&alice, a, &erin, e).await;
    let g = alice.create_group("secret club", &[b, c]).await.unwrap();
    let gid = match g.conv {
        ConvId::Group(id) => id,
        ConvId::Direct(..) => unreachable!(),
    };
    // A send body: into `conv`, or to user `to`.
    let said = |conv: ConvId, to: Option<xinge_core::UserId>, id: &str| {
        json!({
            "conv": to.is_none().then(|| conv.to_string()),
            "to": to,
            "client_msg_id": id,
            "content": {"text": "members only"},
        })
    };
    let (s, _) = call(
        &server.base,
        alice.token(),
        "POST",
        "/v1/messages",
        &said(g.conv, None, "g1"),
    )
    .await;
    assert_eq!(s, 200);
    // Carol is removed; Erin is blocked by Alice.
    let (s, _) = call(
        &server.base,
        alice.token(),
        "DELETE",
        &format!("/v1/groups/{gid}/members/{c}"),
        &json!({}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &server.base,
        alice.token(),
        "POST",
        "/v1/messages",
        &said(g.conv, None, "g2"),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &server.base,
        alice.token(),
        "PUT",
        &format!("/v1/blocks/{e}"),
        &json!({}),
    )
    .await;
    assert_eq!(s, 200);

    let direct = ConvId::direct(a, b);
    let group_ops = |gid: xinge_core::GroupId| {
        vec![
            (
                "POST",
                "/v1/messages".to_owned(),
                said(ConvId::Group(gid), None, "x1"),
            ),
            (
                "POST",
                format!("/v1/conversations/g{gid}/read"),
                json!({"seq": 3}),
            ),
            (
                "GET",
                format!("/v1/conversations/g{gid}/messages/3/read-state"),
                json!({}),
            ),
            (
                "POST",
                format!("/v1/conversations/g{gid}/typing"),
                json!({}),
            ),
            (
                "GET",
                format!("/v1/conversations/g{gid}/settings"),
                json!({}),
            ),
            (
                "PUT",
                format!("/v1/conversations/g{gid}/settings"),
                json!({"muted": true}),
            ),
            ("GET", format!("/v1/groups/{gid}/members"), json!({})),
            (
                "POST",
                format!("/v1/groups/{gid}/members"),
                json!({"users": [b]}),
            ),
            ("DELETE", format!("/v1/groups/{gid}/members/{b}"), json!({})),
            (
                "PATCH",
                format!("/v1/groups/{gid}"),
                json!({"name": "mine now"}),
            ),
            ("DELETE", format!("/v1/groups/{gid}"), json!({})),
            ("POST", format!("/v1/groups/{gid}/join"), json!({})),
            ("POST", format!("/v1/groups/{gid}/leave"), json!({})),
            (
                "POST",
                format!("/v1/groups/{gid}/transfer"),
                json!({"to": b}),
            ),
            (
                "POST",
                format!("/v1/groups/{gid}/admins"),
                json!({"user": b, "on": true}),
            ),
            (
                "POST",
                format!("/v1/groups/{gid}/mutes"),
                json!({"user": b, "on": true}),
            ),
            (
                "POST",
                format!("/v1/groups/{gid}/mute-all"),
                json!({"on": true}),
            ),
        ]
    };
    let direct_ops = vec![
        ("POST", "/v1/messages".to_owned(), said(direct, None, "y1")),
        (
            "GET",
            format!("/v1/conversations/{direct}/messages"),
            json!({}),
        ),
        (
            "POST",
            format!("/v1/conversations/{direct}/read"),
            json!({"seq": 1}),
        ),
        (
            "GET",
            format!("/v1/conversations/{direct}/messages/1/read-state"),
            json!({}),
        ),
        (
            "POST",
            format!("/v1/conversations/{direct}/typing"),
            json!({}),
        ),
        (
            "GET",
            format!("/v1/conversations/{direct}/settings"),
            json!({}),
        ),
        (
            "PUT",
            format!("/v1/conversations/{direct}/settings"),
            json!({"pinned": true}),
        ),
        (
            "POST",
            "/v1/messages/recall".to_owned(),
            json!({"conv": direct.to_string(), "conv_seq": 1, "client_msg_id": "r"}),
        ),
    ];
    fn refused((status, code): &(u16, String)) -> bool {
        matches!(status, 403 | 404) && matches!(code.as_str(), "forbidden" | "not_found")
    }
    for (who, caller) in [("an outsider", &dave), ("a removed member", &carol)] {
        for (m, path, body) in group_ops(gid) {
            let got = call(&server.base, caller.token(), m, &path, &body).await;
            assert!(refused(&got), "{who}: {m} {path} answered {got:?}");
        }
    }
    // History: nothing for an outsider; a removed member keeps exactly the span they were a
    // member for, so nothing after the removal.
    let history = format!("/v1/conversations/g{gid}/messages?after=0&limit=100");
    let got = call(&server.base, dave.token(), "GET", &history, &json!({})).await;
    assert!(refused(&got), "an outsider reads no history: {got:?}");
    let kept = carol.history(g.conv, None, Some(0), 100).await.unwrap();
    let full = alice.history(g.conv, None, Some(0), 100).await.unwrap();
    let last_kept = kept.messages.last().map_or(0, |m| m.conv_seq);
    assert!(
        full.messages
            .iter()
            .any(|m| m.conv_seq > last_kept && m.client_msg_id == "g2"),
        "the group went on after the removal, without the removed member"
    );
    assert!(kept.messages.iter().all(|m| m.client_msg_id != "g2"));
    for (who, caller) in [
        ("an outsider", &dave),
        ("a blocked user", &erin),
        ("a removed member", &carol),
    ] {
        for (m, path, body) in &direct_ops {
            let got = call(&server.base, caller.token(), m, path, body).await;
            assert!(refused(&got), "{who}: {m} {path} answered {got:?}");
        }
    }
    // The blocked user cannot reach Alice by message or by friend request.
    let to_alice = said(direct, Some(a), "z1");
    let got = call(
        &server.base,
        erin.token(),
        "POST",
        "/v1/messages",
        &to_alice,
    )
    .await;
    assert_eq!(got.0, 403, "blocked: {got:?}");
    let got = call(
        &server.base,
        erin.token(),
        "POST",
        "/v1/friends/requests",
        &json!({"to": a, "note": "hi"}),
    )
    .await;
    assert!(matches!(got.0, 403 | 409), "blocked: {got:?}");
    // Presence and profiles leak nothing beyond the public profile.
    for caller in [&dave, &erin] {
        let p = caller.presence(&[a, b]).await.unwrap();
        assert!(p.presence.is_empty(), "presence is for friends");
    }

    // The same refusals over the long connection, for every business command that names
    // a conversation.
    for caller in [&dave, &carol] {
        let (conn, _signals) = Connection::connect(
            Transport::Tcp,
            &server.tcp.to_string(),
            caller.token().unwrap(),
        )
        .await
        .unwrap();
        let conv = g.conv.to_string();
        for (command, body) in [
            (cmd::SEND, said(g.conv, None, "w1")),
            (cmd::READ, json!({"conv": conv, "seq": 3})),
            (cmd::READ_STATE, json!({"conv": conv, "seq": 3})),
            (cmd::TYPING, json!({"conv": conv})),
            (
                cmd::RECALL,
                json!({"conv": conv, "conv_seq": 2, "client_msg_id": "r2"}),
            ),
        ] {
            let r: Result<Value, _> = conn.request(command, &body).await;
            let got = code(r);
            assert!(
                matches!(got, "forbidden" | "not_found"),
                "cmd {command}: {got}"
            );
        }
    }

    // Nothing changed: the group is Alice's, with Bob, unmuted, named as before.
    let members: Value = {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/groups/{gid}", server.base))
            .bearer_auth(alice.token().unwrap())
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    };
    assert_eq!(members["name"], "secret club");
    assert_eq!(members["owner"], json!(a));
    assert_eq!(members["member_count"], 2);
    assert_eq!(members["muted_all"], false);
    let h = bob.history(g.conv, None, None, 50).await.unwrap();
    assert!(h.messages.iter().all(|m| m.sender == a), "only Alice wrote");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_stops_working_when_its_lifetime_has_passed() {
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| c.clock = clock.clone()).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let ttl =
        std::time::Duration::from_secs(xinge_core::config::AuthConfig::default().token_ttl_secs);
    let base = server.base.clone();
    let me = |t: String| {
        let base = base.clone();
        async move { call(&base, Some(&t), "GET", "/v1/me", &Value::Null).await }
    };
    clock.advance(ttl - std::time::Duration::from_secs(5));
    assert_eq!(
        me(token.clone()).await,
        (200, String::new()),
        "still valid just before"
    );
    clock.advance(std::time::Duration::from_secs(10));
    assert_eq!(me(token.clone()).await, (401, "token_expired".to_owned()));
    let refused = Connection::connect(Transport::Tcp, &server.tcp.to_string(), &token).await;
    assert!(refused.is_err(), "a new connection is refused too");
    // A new login is good for a full lifetime from the server's now.
    let (again, _) = server.login("alice", "laptop").await;
    assert_eq!(me(again.token().unwrap().to_owned()).await.0, 200);
    server.stop().await;
}
