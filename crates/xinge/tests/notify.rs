//! Offline push through the app's own push webhook, against a real local receiver that
//! checks every request's signature: a user who is not connected gets one notification
//! per burst in a conversation, with the count; a device in the foreground gets none, one
//! in the background does; a muted conversation is silent but for a mention; quiet hours
//! are silent; a logged-out device and a registration the service calls gone get nothing
//! more, the latter removed.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::procs;
use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xinge_client::Transport;
use xinge_client::api::{
    ConversationSettings, NotifyPrefs, PushRegistration, QuietHours, SendRequest,
};
use xinge_core::{ConvId, UserId};

const HOOK_SECRET: &str = "the push webhook's secret";

/// The app's push service as the webhook reaches it: every notification, checked.
#[derive(Default)]
struct Pushes {
    got: Mutex<Vec<Value>>,
    bad_signatures: Mutex<u32>,
}

async fn take(State(p): State<Arc<Pushes>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let t: u64 = header("x-xinge-timestamp").parse().unwrap_or(0);
    let want = xinge_logic::hooks::sign(&[HOOK_SECRET.as_bytes().to_vec()], t, &body);
    if header("x-xinge-signature") != want || header("x-xinge-event") != "notification" {
        *p.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let gone = v["token"] == "gone";
    p.got.lock().unwrap().push(v);
    // The app's service says this device is gone for good.
    match gone {
        true => StatusCode::GONE,
        false => StatusCode::OK,
    }
}

async fn push_service() -> (String, Arc<Pushes>) {
    let p = Arc::new(Pushes::default());
    let app = axum::Router::new()
        .route("/push", axum::routing::post(take))
        .with_state(p.clone());
    (format!("http://{}/push", listen(app).await), p)
}

const WINDOW_MS: u64 = 300;

async fn server(url: &str) -> Server {
    let url = url.to_owned();
    start(move |c| {
        c.webhooks.secrets = vec![HOOK_SECRET.into()];
        c.notify.collapse_ms = WINDOW_MS;
        c.notify.webhook = Some(xinge_core::config::NotifyWebhookConfig {
            url,
            limits: Default::default(),
        });
    })
    .await
}

/// The notifications to `token` once nothing more has come for a window and a half.
async fn settled(p: &Pushes, token: &str) -> Vec<Value> {
    settled_where(p, token, |_| true).await
}

/// Those of [`settled`] about messages (not friend requests).
async fn messages(p: &Pushes, token: &str) -> Vec<Value> {
    settled_where(p, token, |v| {
        v["notification"]["data"]["kind"] != "friend_request"
    })
    .await
}

async fn settled_where(p: &Pushes, token: &str, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mine = || -> Vec<Value> {
        p.got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["token"] == token && keep(v))
            .cloned()
            .collect()
    };
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(WINDOW_MS * 3 / 2 + 100)).await;
        let now = mine();
        if now.len() == last {
            return now;
        }
        last = now.len();
    }
}

fn text(to: UserId, id: &str) -> SendRequest {
    serde_json::from_value(json!({"to": to, "client_msg_id": id, "content": {"text": id}})).unwrap()
}

fn hook(token: &str) -> PushRegistration {
    PushRegistration::Webhook {
        token: Some(token.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_away_device_gets_one_notification_per_burst_and_a_device_in_use_none() {
    let (url, p) = push_service().await;
    let server = server(&url).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "phone").await;
    bob.set_push(&hook("bob-phone")).await.unwrap();
    assert_eq!(
        bob.push_status().await.unwrap().registration,
        Some(hook("bob-phone"))
    );

    // A friend request is told.
    alice.request_friend(b, "hi").await.unwrap();
    let got = settled(&p, "bob-phone").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["notification"]["data"]["kind"], "friend_request");
    assert_eq!(got[0]["notification"]["collapse_id"], "friends");
    assert_eq!(got[0]["user_id"], b.to_string());
    assert_eq!(got[0]["device"], "phone");
    assert_eq!(got[0]["notification"]["badge"], 0, "no unread message yet");
    bob.accept_friend(a).await.unwrap();

    // Five messages at once: one notification, counting them, showing the last.
    for i in 0..5 {
        alice.send(&text(b, &format!("m{i}"))).await.unwrap();
    }
    let got = settled(&p, "bob-phone").await;
    assert_eq!(got.len(), 2, "one for the burst: {got:?}");
    let n = &got[1]["notification"];
    assert_eq!(n["count"], 5);
    assert_eq!(n["badge"], 5, "the unread messages");
    assert_eq!(n["title"], "alice");
    assert!(n["body"].as_str().unwrap().starts_with("m4"), "{n}");
    let conv = ConvId::direct(a, b);
    assert_eq!(n["collapse_id"], format!("c{conv}"));
    assert_eq!(n["data"]["conv"], conv.to_string());
    assert_eq!(n["data"]["conv_seq"], "5");
    assert_eq!(n["data"]["kind"], "message");

    // Bob's phone connects and is in use: nothing. In the background: notified again.
    let phone = server.device(&bob, Transport::Tcp);
    assert!(phone.wait_connected(Duration::from_secs(5)).await);
    alice.send(&text(b, "seen")).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = phone.next_event(Duration::from_secs(5)).await.unwrap();
            if serde_json::to_string(&e).unwrap().contains("\"seen\"") {
                return;
            }
        }
    });
    seen.await.expect("the phone in use gets the message");
    assert_eq!(settled(&p, "bob-phone").await.len(), 2, "a device in use");
    phone.set_background(true).await.unwrap();
    alice.send(&text(b, "while away")).await.unwrap();
    let got = settled(&p, "bob-phone").await;
    assert_eq!(got.len(), 3, "a device in the background");
    assert_eq!(got[2]["notification"]["body"], "while away");
    assert_eq!(got[2]["notification"]["badge"], 7, "nothing read yet");
    phone.set_background(false).await.unwrap();
    alice.send(&text(b, "back")).await.unwrap();
    assert_eq!(settled(&p, "bob-phone").await.len(), 3);
    phone.stop();

    // Muted: silent. Unmuted, but quiet hours around now: silent. Neither: told.
    bob.set_conversation_settings(
        conv,
        &ConversationSettings {
            muted: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    alice.send(&text(b, "muted")).await.unwrap();
    assert_eq!(settled(&p, "bob-phone").await.len(), 3, "muted");
    // Muted until a moment ago is not muted.
    bob.set_conversation_settings(
        conv,
        &ConversationSettings {
            muted: true,
            muted_until_ms: Some(xinge_core::now_ms() - 1),
            pinned: true,
        },
    )
    .await
    .unwrap();
    let now_min = (xinge_core::now_ms() / 60_000 % 1440) as u16;
    bob.set_notify_prefs(&NotifyPrefs {
        preview: Some(false),
        quiet_hours: Some(QuietHours {
            start_min: (now_min + 1439) % 1440,
            end_min: (now_min + 2) % 1440,
            utc_offset_min: 0,
        }),
    })
    .await
    .unwrap();
    alice.send(&text(b, "quiet")).await.unwrap();
    assert_eq!(settled(&p, "bob-phone").await.len(), 3, "quiet hours");
    bob.set_notify_prefs(&NotifyPrefs {
        preview: Some(false),
        quiet_hours: None,
    })
    .await
    .unwrap();
    // Read up to "quiet" (the 10th message): the badge counts only what came after.
    bob.mark_read(conv, 10).await.unwrap();
    alice.send(&text(b, "no preview")).await.unwrap();
    let got = settled(&p, "bob-phone").await;
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[3]["notification"]["badge"], 1,
        "read up to the one before"
    );
    assert_eq!(got[3]["notification"]["body"], "New message", "no preview");
    assert!(got[3]["notification"]["title"].is_null());

    // Logged out: the registration goes with the device.
    let (bob2, _) = server.login("bob", "tablet").await;
    bob2.set_push(&hook("gone")).await.unwrap();
    bob.logout().await.unwrap();
    alice.send(&text(b, "after logout")).await.unwrap();
    let got = settled(&p, "bob-phone").await;
    assert_eq!(got.len(), 4, "a logged-out device");
    // The service says the tablet's token is gone: removed, never tried again.
    let gone = settled(&p, "gone").await;
    assert_eq!(gone.len(), 1);
    assert_eq!(bob2.push_status().await.unwrap().registration, None);
    alice.send(&text(b, "after gone")).await.unwrap();
    assert_eq!(settled(&p, "gone").await.len(), 1);
    assert_eq!(*p.bad_signatures.lock().unwrap(), 0);

    // The list shows the conversation pinned (and first), no longer muted.
    let (eve, e) = server.login("eve", "laptop").await;
    befriend(&eve, e, &bob2, b).await;
    eve.send(&text(b, "newer")).await.unwrap();
    let list = bob2.conversations().await.unwrap().conversations;
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0].conv, list[0].pinned, list[0].muted),
        (conv, true, false)
    );
    assert!(
        !list[1].pinned,
        "the newer conversation comes after the pinned one"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_tells_its_away_members_and_a_mention_breaks_through_a_mute() {
    let (url, p) = push_service().await;
    let server = server(&url).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "phone").await;
    let (carol, c) = server.login("carol", "phone").await;
    befriend(&alice, a, &bob, b).await;
    befriend(&alice, a, &carol, c).await;
    bob.set_push(&hook("bob")).await.unwrap();
    carol.set_push(&hook("carol")).await.unwrap();
    let g = alice.create_group("team", &[b, c]).await.unwrap();
    let conv = g.conv;
    carol
        .set_conversation_settings(
            conv,
            &ConversationSettings {
                muted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let send = |id: &str, mentions: Vec<UserId>| {
        serde_json::from_value::<SendRequest>(json!({
            "conv": conv, "client_msg_id": id, "content": {"text": id}, "mentions": mentions,
        }))
        .unwrap()
    };
    alice.send(&send("hello all", vec![])).await.unwrap();
    let got = messages(&p, "bob").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["notification"]["title"], "alice in team");
    // The badge is what bob's list shows unread (the group's first messages too).
    let unread: u64 = bob
        .conversations()
        .await
        .unwrap()
        .conversations
        .iter()
        .map(|c| c.unread)
        .sum();
    assert!(unread >= 1);
    assert_eq!(got[0]["notification"]["badge"], unread);
    assert_eq!(messages(&p, "carol").await.len(), 0, "muted");
    alice.send(&send("carol, look", vec![c])).await.unwrap();
    let got = messages(&p, "carol").await;
    assert_eq!(got.len(), 1, "a mention breaks through");
    assert_eq!(got[0]["notification"]["data"]["kind"], "mention");
    assert_eq!(
        got[0]["notification"]["badge"], 0,
        "a muted conversation is left out of the badge, even when it mentions"
    );
    // The sender's own device is never told of its own message.
    alice.set_push(&hook("alice")).await.unwrap();
    alice.send(&send("mine", vec![])).await.unwrap();
    assert_eq!(messages(&p, "alice").await.len(), 0);
    // Outsiders cannot set a conversation they are not in.
    let (eve, _) = server.login("eve", "phone").await;
    assert_eq!(
        code(
            eve.set_conversation_settings(conv, &ConversationSettings::default())
                .await
        ),
        "not_found"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_for_a_provider_the_server_lacks_is_refused() {
    let (url, _p) = push_service().await;
    let server = server(&url).await;
    let (bob, _) = server.login("bob", "phone").await;
    let config = bob.push_config().await.unwrap();
    assert_eq!(config.providers, ["webhook"]);
    assert_eq!(config.vapid_public_key, None);
    let apns = PushRegistration::Apns {
        token: "ab12".into(),
        topic: "com.example.app".into(),
        sandbox: true,
    };
    assert_eq!(code(bob.set_push(&apns).await), "invalid_argument");
    let bad = PushRegistration::Webhook {
        token: Some("x".repeat(5000)),
    };
    assert_eq!(code(bob.set_push(&bad).await), "invalid_argument");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_in_flight_when_the_server_is_killed_are_sent_after_it_restarts() {
    let (url, h) = common::push::held().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.chat.allow_strangers = true;
    cfg.webhooks.secrets = vec![HOOK_SECRET.into()];
    cfg.notify.collapse_ms = 50;
    cfg.notify.webhook = Some(xinge_core::config::NotifyWebhookConfig {
        url,
        limits: Default::default(),
    });
    let mut p1 = procs::serve(dir.path(), &cfg, "127.0.0.1:0", "127.0.0.1:0");
    let anon = xinge_client::Http::new(format!("http://{}", p1.http));
    anon.register("bob", PASSWORD).await.unwrap();
    let (bob, lb) = anon.login("bob", PASSWORD, "phone").await.unwrap();
    bob.set_push(&hook("bob")).await.unwrap();
    // Eight senders, one message each: eight conversations, eight notifications.
    for i in 0..8 {
        let name = format!("sender{i}");
        anon.register(&name, PASSWORD).await.unwrap();
        let (s, _) = anon.login(&name, PASSWORD, "laptop").await.unwrap();
        s.send(&text(lb.user_id, &format!("from {i}")))
            .await
            .unwrap();
    }
    // The worker has sent them all, and the service holds them unanswered.
    h.until_arrived(8).await;
    p1.kill9();
    assert!(h.got.lock().unwrap().is_empty());
    h.open.send_replace(true);
    let p2 = procs::serve(dir.path(), &cfg, "127.0.0.1:0", "127.0.0.1:0");
    let bodies = h.until_bodies(8).await;
    assert_eq!(
        bodies,
        (0..8).map(|i| format!("from {i}")).collect(),
        "none lost"
    );
    drop(p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_push_endpoint_inside_the_network_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let vapid = keys.path().join("vapid.pem");
    std::fs::write(&vapid, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let server = start(|c| {
        c.notify.webpush = Some(xinge_core::config::WebPushConfig {
            vapid_key_file: vapid,
            subject: "mailto:ops@example.com".into(),
            ttl_secs: 60,
            allow_private_endpoints: false,
            limits: Default::default(),
        });
    })
    .await;
    let (bob, _) = server.login("bob", "browser").await;
    let config = bob.push_config().await.unwrap();
    assert_eq!(config.providers, ["webpush"]);
    assert!(config.vapid_public_key.is_some_and(|k| k.len() == 87));
    let sub = |endpoint: &str| PushRegistration::Webpush {
        endpoint: endpoint.into(),
        p256dh: "B".repeat(87),
        auth: "A".repeat(22),
    };
    for inside in [
        "https://127.0.0.1:8443/push",
        "https://10.0.0.8/push",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/push",
        "https://localhost/push",
    ] {
        assert_eq!(
            code(bob.set_push(&sub(inside)).await),
            "invalid_argument",
            "{inside}"
        );
    }
    let outside = sub("https://push.example.com/wpush/abc");
    bob.set_push(&outside).await.unwrap();
    assert_eq!(bob.push_status().await.unwrap().registration, Some(outside));
    server.stop().await;
}
