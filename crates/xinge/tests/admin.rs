//! The admin API, as the app's own server uses it and as an attacker would try it: every
//! admin endpoint refuses no key, a wrong key, a user's token and a key that was replaced;
//! no admin key works on the user API; the admin API is on its own loopback listener and
//! not beside the user API. A user the app signs in itself (no password, a token the app
//! has issued) chats with a password user; a device logged out or a user banned by the app
//! loses its live connection at once, and a ban refuses logins and tokens until lifted.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use xinge_client::{Connection, Http, Transport};
use xinge_core::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_wants_an_admin_key_and_no_admin_key_opens_the_user_api() {
    let replaced = "a key that was configured once and has been replaced since";
    let server = start(with_admin).await;
    let admin_base = server.admin.clone().unwrap();
    let (alice, a) = server.login("alice", "laptop").await;
    let user_token = alice.token().unwrap().to_owned();
    let doc: Value = reqwest::get(format!("{admin_base}/admin/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", &a.to_string())
            .replace("{device}", "laptop")
            .replace("{conv}", "d1-2")
            .replace("{seq}", "1")
            .replace("{group}", "1");
        for method in ops.as_object().unwrap().keys() {
            for key in [
                None,
                Some("wrong"),
                Some(user_token.as_str()),
                Some(replaced),
            ] {
                let body = (method != "get" && method != "delete").then(|| json!({}));
                let (status, v) =
                    call(&admin_base, key, &method.to_uppercase(), &concrete, body).await;
                assert_eq!(
                    (status, v["code"].as_str()),
                    (401, Some("unauthenticated")),
                    "{method} {concrete} with {key:?}"
                );
                checked += 1;
            }
            // The admin API is not beside the user API.
            let (status, _) = call(
                &server.base,
                Some(ADMIN_KEY),
                &method.to_uppercase(),
                &concrete,
                None,
            )
            .await;
            assert_eq!(
                status, 404,
                "{method} {concrete} on the user API's listener"
            );
        }
    }
    assert_eq!(checked, 18 * 4, "every admin operation, four ways");
    // Nothing was done by the refused calls: alice is neither banned nor logged out.
    alice.me().await.unwrap();

    // The user API takes no admin key, anywhere.
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = [
        "/v1/accounts",
        "/v1/sessions",
        "/v1/route",
        "/healthz",
        "/openapi.json",
        "/metrics",
    ];
    let mut user_ops = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if public.contains(&path.as_str()) {
            continue;
        }
        let mut concrete = fill_path(path);
        // A download URL takes its signature, not a token: unsigned, it is refused.
        let signed = path.starts_with("/media/");
        if signed {
            concrete += &format!("?u=1&e=99999999999999&sig={}", "0".repeat(64));
        }
        for method in ops.as_object().unwrap().keys() {
            if (method.as_str(), path.as_str()) == ("options", "/v1/uploads") {
                continue; // tus discovery: public
            }
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let (status, v) = call(
                &server.base,
                Some(ADMIN_KEY),
                &method.to_uppercase(),
                &concrete,
                body,
            )
            .await;
            let want = match (signed, method.as_str()) {
                (true, _) => (403, Some("forbidden")),
                // A HEAD answer has no body to carry the code.
                (_, "head") => (401, None),
                _ => (401, Some("unauthenticated")),
            };
            assert_eq!(
                (status, v["code"].as_str()),
                want,
                "{method} {concrete} with the admin key"
            );
            user_ops += 1;
        }
    }
    assert!(user_ops > 30, "{user_ops}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_server_signs_users_in_logs_devices_out_and_bans() {
    let server = start(|c| {
        with_admin(c);
        c.chat.allow_strangers = true;
    })
    .await;
    // A user of the app's own accounts: no password here.
    let created = admin(
        &server,
        "POST",
        "/admin/v1/users",
        Some(json!({"username": "app-user-7", "display_name": "Seven", "external_id": "acct:7"})),
    )
    .await;
    let seven: xinge_core::UserId = serde_json::from_value(created["user_id"].clone()).unwrap();
    assert!(created["user_id"].is_string(), "ids are strings: {created}");
    // Found by the app's own id, or by username; the app's id is unique.
    let by_ext = admin(&server, "GET", "/admin/v1/users?external_id=acct%3A7", None).await;
    assert_eq!(
        (&by_ext["user_id"], &by_ext["external_id"]),
        (&created["user_id"], &json!("acct:7"))
    );
    let by_name = admin(&server, "GET", "/admin/v1/users?username=app-user-7", None).await;
    assert_eq!(by_name, by_ext);
    let base = server.admin.clone().unwrap();
    let (status, v) = call(
        &base,
        Some(ADMIN_KEY),
        "POST",
        "/admin/v1/users",
        Some(json!({"username": "app-user-8", "external_id": "acct:7"})),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")));
    for query in ["", "?username=a&external_id=b"] {
        let (status, _) = call(
            &base,
            Some(ADMIN_KEY),
            "GET",
            &format!("/admin/v1/users{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}");
    }
    let http = server.http();
    for password in ["", "x", "a password nobody set"] {
        assert_eq!(
            code(http.login("app-user-7", password, "phone").await),
            "bad_credentials"
        );
    }
    let info = admin(&server, "GET", &format!("/admin/v1/users/{seven}"), None).await;
    assert_eq!(
        (info["has_password"].as_bool(), info["banned"].as_bool()),
        (Some(false), Some(false))
    );
    let (status, v) = call(
        server.admin.as_deref().unwrap(),
        Some(ADMIN_KEY),
        "POST",
        "/admin/v1/users",
        Some(json!({"username": "app-user-7"})),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")));

    // The app issues a token for the user's phone: it chats with a password user.
    let issued = admin(
        &server,
        "POST",
        &format!("/admin/v1/users/{seven}/tokens"),
        Some(json!({"device": "phone"})),
    )
    .await;
    let phone = Http::new(&server.base).with_token(issued["token"].as_str().unwrap());
    assert_eq!(phone.me().await.unwrap().user_id, seven);
    let (bob, b) = server.login("bob", "laptop").await;
    let send = |to, id: &str| -> xinge_client::api::SendRequest {
        serde_json::from_value(json!({"to": to, "client_msg_id": id, "content": {"text": "hi"}}))
            .unwrap()
    };
    phone.send(&send(b, "s1")).await.unwrap();
    bob.send(&send(seven, "b1")).await.unwrap();
    assert_eq!(phone.sync(0, None).await.unwrap().entries.len(), 2);
    let (on_phone, mut phone_signals) = Connection::connect(
        Transport::Tcp,
        &server.tcp.to_string(),
        phone.token().unwrap(),
    )
    .await
    .unwrap();
    let devices = admin(
        &server,
        "GET",
        &format!("/admin/v1/users/{seven}/devices"),
        None,
    )
    .await;
    assert_eq!(devices["devices"][0]["device"], "phone");

    // Logged out by the app: the token ends, the live connection closes.
    admin(
        &server,
        "DELETE",
        &format!("/admin/v1/users/{seven}/devices/phone"),
        None,
    )
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while phone_signals.recv().await.is_some() {}
    });
    assert!(
        closed.await.is_ok(),
        "the phone's connection closed within 1 s"
    );
    assert_eq!(
        on_phone.close_reason.lock().unwrap().clone().unwrap().code,
        ErrorCode::TokenRevoked
    );
    assert_eq!(code(phone.me().await), "token_revoked");
    let (status, v) = call(
        server.admin.as_deref().unwrap(),
        Some(ADMIN_KEY),
        "DELETE",
        &format!("/admin/v1/users/{seven}/devices/phone"),
        None,
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));

    // Banned: bob's live connection closes with `banned`, his logins and tokens are
    // refused; his messages stay. Unbanned: he logs in again.
    let (on_bob, mut bob_signals) =
        Connection::connect(Transport::Ws, &server.ws, bob.token().unwrap())
            .await
            .unwrap();
    let banned = admin(&server, "PUT", &format!("/admin/v1/users/{b}/ban"), None).await;
    assert_eq!(banned["banned"], true);
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while bob_signals.recv().await.is_some() {}
    });
    assert!(closed.await.is_ok(), "bob's connection closed within 1 s");
    assert_eq!(
        on_bob.close_reason.lock().unwrap().clone().unwrap().code,
        ErrorCode::Banned
    );
    assert_eq!(code(bob.me().await), "token_revoked");
    assert_eq!(code(http.login("bob", PASSWORD, "laptop").await), "banned");
    assert_eq!(
        code(http.login("bob", "not his password", "laptop").await),
        "bad_credentials"
    );
    let (status, v) = call(
        server.admin.as_deref().unwrap(),
        Some(ADMIN_KEY),
        "POST",
        &format!("/admin/v1/users/{b}/tokens"),
        Some(json!({"device": "x"})),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (403, Some("banned")));
    let again = admin(
        &server,
        "POST",
        &format!("/admin/v1/users/{seven}/tokens"),
        Some(json!({"device": "phone"})),
    )
    .await;
    let phone = Http::new(&server.base).with_token(again["token"].as_str().unwrap());
    assert_eq!(
        phone.sync(0, None).await.unwrap().entries.len(),
        2,
        "bob's message stays"
    );
    admin(&server, "DELETE", &format!("/admin/v1/users/{b}/ban"), None).await;
    http.login("bob", PASSWORD, "laptop").await.unwrap();
    let (status, _) = call(
        server.admin.as_deref().unwrap(),
        Some(ADMIN_KEY),
        "GET",
        "/admin/v1/users/999999",
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_may_be_served_beside_the_user_api_and_is_off_without_keys() {
    let server = start(|c| {
        with_admin(c);
        c.admin.on_main_listener = true;
    })
    .await;
    assert!(server.admin.is_none(), "no listener of its own");
    let (_, a) = server.login("alice", "laptop").await;
    let path = format!("/admin/v1/users/{a}");
    let (status, v) = call(&server.base, Some(ADMIN_KEY), "GET", &path, None).await;
    assert_eq!((status, v["username"].as_str()), (200, Some("alice")));
    let (status, _) = call(&server.base, None, "GET", &path, None).await;
    assert_eq!(status, 401);
    server.stop().await;

    // No key configured: no admin API anywhere.
    let server = start(|c| c.admin.on_main_listener = true).await;
    let (status, _) = call(
        &server.base,
        Some(ADMIN_KEY),
        "GET",
        "/admin/v1/users/1",
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_server_sends_as_a_user_and_deletes_a_message_for_everyone() {
    let server = start(with_admin).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let base = server.admin.clone().unwrap();
    let as_alice = format!("/admin/v1/users/{a}/messages");
    let body = json!({"to": b.to_string(), "client_msg_id": "from-the-app", "content": {"text": "sent for alice"}});
    let first = admin(&server, "POST", &as_alice, Some(body.clone())).await;
    let retry = admin(&server, "POST", &as_alice, Some(body)).await;
    assert_eq!(
        (retry["duplicate"].as_bool(), &retry["msg_id"]),
        (Some(true), &first["msg_id"])
    );
    // Through the same path as her own sends: a stranger is refused as she would be.
    let (_, c) = server.login("carol", "laptop").await;
    let to_carol = json!({"to": c, "client_msg_id": "x", "content": {"text": "?"}});
    let (status, v) = call(&base, Some(ADMIN_KEY), "POST", &as_alice, Some(to_carol)).await;
    assert_eq!((status, v["code"].as_str()), (403, Some("not_friends")));
    bob.send(
        &serde_json::from_value(
            json!({"to": a, "client_msg_id": "b1", "content": {"text": "something to remove"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();

    // Deleted for everyone: gone from both sides' history, sync and conversation list.
    let conv = first["conv"].as_str().unwrap();
    admin(
        &server,
        "DELETE",
        &format!("/admin/v1/conversations/{conv}/messages/2"),
        None,
    )
    .await;
    admin(
        &server,
        "DELETE",
        &format!("/admin/v1/conversations/{conv}/messages/2"),
        None,
    )
    .await;
    for who in [&alice, &bob] {
        let conv_id = conv.parse().unwrap();
        let page = who.history(conv_id, None, None, 10).await.unwrap();
        assert_eq!(page.messages.len(), 2);
        assert!(matches!(
            page.messages[1].body,
            xinge_client::api::MessageBody::Deleted { .. }
        ));
        let reads = [
            serde_json::to_string(&page).unwrap(),
            serde_json::to_string(&who.sync(0, None).await.unwrap()).unwrap(),
            serde_json::to_string(&who.conversations().await.unwrap()).unwrap(),
        ];
        for read in &reads {
            assert!(!read.contains("something to remove"), "{read}");
        }
        // The other message stays (the list shows only the last, the deleted one).
        assert!(reads[..2].iter().all(|r| r.contains("sent for alice")));
    }
    for (path, want) in [
        (
            format!("/admin/v1/conversations/{conv}/messages/9"),
            (404, "not_found"),
        ),
        (
            "/admin/v1/conversations/nonsense/messages/1".to_owned(),
            (400, "invalid_argument"),
        ),
    ] {
        let (status, v) = call(&base, Some(ADMIN_KEY), "DELETE", &path, None).await;
        assert_eq!((status, v["code"].as_str().unwrap()), want, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_server_runs_groups_counts_exports_and_deletes_users() {
    let server = start(with_admin).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (carol, c) = server.login("carol", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    befriend(&alice, a, &carol, c).await;
    let base = server.admin.clone().unwrap();

    // A group in alice's name, then carol added by her.
    let group = admin(
        &server,
        "POST",
        &format!("/admin/v1/users/{a}/groups"),
        Some(json!({"name": "team", "members": [b]})),
    )
    .await;
    let gid = group["group_id"].as_str().unwrap().to_owned();
    assert_eq!(group["member_count"], 2);
    admin(
        &server,
        "POST",
        &format!("/admin/v1/users/{a}/groups/{gid}/members"),
        Some(json!({"users": [c]})),
    )
    .await;
    assert_eq!(
        carol
            .group(gid.parse().map(xinge_core::GroupId).unwrap())
            .await
            .unwrap()
            .member_count,
        3
    );
    // In carol's name, a group she is not in is not found, as it would be to her.
    let (status, _) = call(
        &base,
        Some(ADMIN_KEY),
        "POST",
        &format!("/admin/v1/users/{c}/groups/999/members"),
        Some(json!({"users": [a]})),
    )
    .await;
    assert_eq!(status, 404);

    // Online: two connections of two users on the one gateway.
    let _on_alice = Connection::connect(
        Transport::Tcp,
        &server.tcp.to_string(),
        alice.token().unwrap(),
    )
    .await
    .unwrap();
    let _on_bob = Connection::connect(Transport::Ws, &server.ws, bob.token().unwrap())
        .await
        .unwrap();
    let online = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let o = admin(&server, "GET", "/admin/v1/online", None).await;
            if o["connections"] == 2 {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (online["users"].as_u64(), online["gateways"].as_u64()),
        (Some(2), Some(1))
    );

    // Export: what bob sent, his friends and groups.
    let text = |to, id: &str, t: &str| -> xinge_client::api::SendRequest {
        serde_json::from_value(json!({"to": to, "client_msg_id": id, "content": {"text": t}}))
            .unwrap()
    };
    bob.send(&text(a, "b1", "bob's first")).await.unwrap();
    alice.send(&text(b, "a1", "alice's reply")).await.unwrap();
    bob.send(&text(a, "b2", "bob's second")).await.unwrap();
    let export = admin(&server, "GET", &format!("/admin/v1/users/{b}/export"), None).await;
    assert_eq!(export["user"]["username"], "bob");
    assert_eq!(export["friends"][0]["user_id"], a.to_string());
    assert_eq!(export["groups"], json!([gid]));
    let sent: Vec<_> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["bob's first", "bob's second"]);
    assert_eq!(export["truncated"], false);

    // Deleted: the profile erased, the session ended, the name free, the messages stay.
    let mut on_bob = _on_bob;
    let gone = admin(&server, "DELETE", &format!("/admin/v1/users/{b}"), None).await;
    assert_eq!(
        (gone["username"].as_str(), gone["has_password"].as_bool()),
        (Some(format!("deleted-{b}").as_str()), Some(false))
    );
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while on_bob.1.recv().await.is_some() {}
    });
    assert!(closed.await.is_ok(), "bob's connection closed within 1 s");
    assert_eq!(code(bob.me().await), "token_revoked");
    assert_eq!(
        code(server.http().login("bob", PASSWORD, "laptop").await),
        "bad_credentials"
    );
    let page = alice
        .history(xinge_core::ConvId::direct(a, b), None, None, 10)
        .await
        .unwrap();
    assert_eq!(
        page.messages.len(),
        3,
        "what bob sent stays in alice's history"
    );
    server.http().register("bob", PASSWORD).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_creates_each_user_on_its_own_and_a_retried_one_finds_them() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let server = start(with_admin).await;
    let base = server.admin.clone().unwrap();
    // A password hash as another system stored it: Argon2id with costs of its own.
    let argon = |m: u32| {
        let params = argon2::Params::new(m, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    };
    let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
    let hash = argon(64)
        .hash_password(b"their old password", &salt)
        .unwrap()
        .to_string();
    let too_costly = argon(300 * 1024)
        .hash_password(b"x", &salt)
        .unwrap()
        .to_string();
    let users = json!({"users": [
        {"username": "imp-hash", "password_hash": hash, "external_id": "e1"},
        {"username": "imp-pass", "password": "a fresh password", "external_id": "e2"},
        {"username": "imp-none", "display_name": "No Password", "external_id": "e3"},
        {"username": "bad name!", "external_id": "e4"},
        {"username": "imp-bcrypt", "password_hash": "$2b$12$abcdefghijklmnopqrstuuNq1Wc0d0V9R3vBfN0m2nBqf5H3YhS6"},
        {"username": "imp-costly", "password_hash": too_costly},
        {"username": "imp-both", "password": "a fresh password", "password_hash": hash},
        {"username": "imp-pass", "external_id": "e5"},
    ]});
    let first = admin(
        &server,
        "POST",
        "/admin/v1/users/import",
        Some(users.clone()),
    )
    .await;
    let statuses = |v: &Value| -> Vec<(String, String, Option<String>)> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["username"].as_str().unwrap().to_owned(),
                    r["status"].as_str().unwrap().to_owned(),
                    r["error"]["code"].as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    let expected = |created: &str| {
        vec![
            ("imp-hash", created, None),
            ("imp-pass", created, None),
            ("imp-none", created, None),
            ("bad name!", "failed", Some("invalid_argument")),
            ("imp-bcrypt", "failed", Some("invalid_argument")),
            ("imp-costly", "failed", Some("invalid_argument")),
            ("imp-both", "failed", Some("invalid_argument")),
            ("imp-pass", "failed", Some("conflict")),
        ]
        .into_iter()
        .map(|(u, s, c)| (u.to_owned(), s.to_owned(), c.map(str::to_owned)))
        .collect::<Vec<_>>()
    };
    assert_eq!(statuses(&first), expected("created"), "{first}");
    assert_eq!(first["created"], 3);
    // Sent again as it was (an import cut short and retried): the same users, none new.
    let again = admin(&server, "POST", "/admin/v1/users/import", Some(users)).await;
    assert_eq!(statuses(&again), expected("exists"), "{again}");
    assert_eq!(again["created"], 0);
    for i in 0..3 {
        assert_eq!(
            first["results"][i]["user_id"],
            again["results"][i]["user_id"]
        );
        assert!(first["results"][i]["user_id"].is_string());
    }
    // The imported hash logs in with the password it was made from, and only with it.
    let http = server.http();
    http.login("imp-hash", "their old password", "phone")
        .await
        .unwrap();
    assert_eq!(
        code(http.login("imp-hash", "another", "phone").await),
        "bad_credentials"
    );
    http.login("imp-pass", "a fresh password", "phone")
        .await
        .unwrap();
    let none = admin(
        &server,
        "GET",
        &format!(
            "/admin/v1/users/{}",
            first["results"][2]["user_id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(
        (
            none["has_password"].as_bool(),
            none["display_name"].as_str()
        ),
        (Some(false), Some("No Password"))
    );
    // At most 1,000 per request.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"username": format!("many-{i}")}))
        .collect();
    let (status, v) = call(
        &base,
        Some(ADMIN_KEY),
        "POST",
        "/admin/v1/users/import",
        Some(json!({ "users": many })),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, v) = call(
        &base,
        Some(ADMIN_KEY),
        "GET",
        "/admin/v1/users?username=many-0",
        None,
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    server.stop().await;
}
