//! End-to-end 1:1 chat through a real server and real sockets.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use xinge_client::api::{Event, InboxEntry, MessageBody, SendRequest};
use xinge_client::{Device, Transport, new_client_msg_id};
use xinge_core::{ConvId, UserId};

const WAIT: Duration = Duration::from_secs(30);

fn text(req_to: UserId, cmid: &str, text: &str) -> SendRequest {
    SendRequest {
        to: Some(req_to),
        conv: None,
        client_msg_id: cmid.into(),
        content: serde_json::json!({ "text": text }),
        ..Default::default()
    }
}

/// Collects entries until `want` messages of `conv` arrived; checks seq continuity.
/// The device must not have handed out any entry yet.
async fn collect_messages(dev: &Device, conv: ConvId, want: usize) -> Vec<InboxEntry> {
    let mut msgs = Vec::new();
    let mut last_seq = 0;
    while msgs.len() < want {
        let e = dev
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("timed out with {} of {want}", msgs.len()));
        assert_eq!(
            e.seq,
            last_seq + 1,
            "inbox entries arrive in seq order, without gaps"
        );
        last_seq = e.seq;
        if let Event::Message { message } = &e.event
            && message.conv == conv
        {
            msgs.push(e);
        }
    }
    msgs
}

fn assert_exactly_once_in_order(entries: &[InboxEntry], n: u64) {
    let mut ids = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let Event::Message { message } = &e.event else {
            unreachable!()
        };
        assert_eq!(message.conv_seq, i as u64 + 1, "conv_seq order");
        assert!(ids.insert(message.msg_id), "duplicate {:?}", message.msg_id);
    }
    assert_eq!(ids.len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_with_two_devices_exchange_1000_messages_over_tcp_and_websocket() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (alice_phone, _) = server.login("alice", "phone").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (bob_phone, _) = server.login("bob", "phone").await;
    befriend(&alice, a, &bob, b).await;

    let a1 = server.device(&alice, Transport::Tcp);
    let a2 = server.device(&alice_phone, Transport::Ws);
    let b1 = server.device(&bob, Transport::Ws);
    let b2 = server.device(&bob_phone, Transport::Tcp);
    for d in [&a1, &a2, &b1, &b2] {
        assert!(d.wait_connected(WAIT).await);
    }
    let conv = ConvId::direct(a, b);

    // 500 each way, interleaved, from one device of each user.
    let (sa, sb) = tokio::join!(
        async {
            let mut acks = Vec::new();
            for i in 0..500 {
                acks.push(
                    a1.send(&text(b, &format!("a-{i}"), &format!("from alice {i}")))
                        .await
                        .unwrap(),
                );
            }
            acks
        },
        async {
            let mut acks = Vec::new();
            for i in 0..500 {
                acks.push(
                    b2.send(&text(a, &format!("b-{i}"), &format!("from bob {i}")))
                        .await
                        .unwrap(),
                );
            }
            acks
        }
    );
    // A sender's own messages are acknowledged in increasing conv_seq.
    for acks in [&sa, &sb] {
        assert!(acks.windows(2).all(|w| w[0].conv_seq < w[1].conv_seq));
    }
    // Retried sends return the original and create nothing.
    for i in [0, 250, 499] {
        let again = a1.send(&text(b, &format!("a-{i}"), "retry")).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(
            (again.msg_id, again.conv_seq),
            (sa[i].msg_id, sa[i].conv_seq)
        );
        let over_http = alice
            .send(&text(b, &format!("a-{i}"), "retry"))
            .await
            .unwrap();
        assert_eq!(over_http.msg_id, sa[i].msg_id);
    }

    for dev in [&a1, &a2, &b1, &b2] {
        let got = collect_messages(dev, conv, 1000).await;
        assert_exactly_once_in_order(&got, 1000);
    }
    assert!(
        a1.next_event(Duration::from_millis(300)).await.is_none(),
        "nothing extra after the retries"
    );

    // A device that was never online catches up by the same pull.
    let (bob_tablet, _) = server.login("bob", "tablet").await;
    let late = server.device(&bob_tablet, Transport::Tcp);
    let got = collect_messages(&late, conv, 1000).await;
    assert_exactly_once_in_order(&got, 1000);

    // History pages backwards and forwards by conv_seq.
    let newest = bob.history(conv, None, None, 10).await.unwrap();
    assert_eq!(newest.messages.first().unwrap().conv_seq, 991);
    assert!(newest.has_more);
    let older = bob.history(conv, Some(991), None, 10).await.unwrap();
    assert_eq!(older.messages.last().unwrap().conv_seq, 990);
    let first = bob.history(conv, None, Some(0), 3).await.unwrap();
    assert_eq!(
        first
            .messages
            .iter()
            .map(|m| m.conv_seq)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // Unread counts follow the read cursor; read receipts follow it too.
    bob.mark_read(conv, 1000).await.unwrap();
    for i in 0..3 {
        alice
            .send(&text(b, &format!("late-{i}"), "unread?"))
            .await
            .unwrap();
    }
    let convs = bob.conversations().await.unwrap().conversations;
    let c = convs.iter().find(|c| c.conv == conv).unwrap();
    assert_eq!((c.last_seq, c.read_seq, c.unread), (1003, 1000, 3));
    assert_eq!(c.peer, Some(a));
    let alice_view = alice.conversations().await.unwrap().conversations;
    assert_eq!(alice_view[0].unread, 0, "own messages are not unread");
    let rs = alice.read_state(conv, 1003).await.unwrap();
    assert_eq!((rs.read_count, rs.unread_by.clone()), (0, vec![b]));
    bob.mark_read(conv, 1002).await.unwrap();
    assert_eq!(alice.read_state(conv, 1002).await.unwrap().read_by, vec![b]);
    assert_eq!(
        alice.read_state(conv, 1003).await.unwrap().unread_by,
        vec![b]
    );
    let c = bob
        .conversations()
        .await
        .unwrap()
        .conversations
        .into_iter()
        .find(|c| c.conv == conv)
        .unwrap();
    assert_eq!(c.unread, 1);
    // The reader's peer hears of the read through its inbox.
    let mut saw_read = false;
    while let Some(e) = a2.next_event(Duration::from_secs(5)).await {
        if let Event::Read {
            reader, seq: 1002, ..
        } = e.event
        {
            assert_eq!(reader, b);
            saw_read = true;
            break;
        }
    }
    assert!(saw_read, "alice's other device got bob's read receipt");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_gate_messages_and_every_friend_event_is_signalled_and_pullable() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let bob_dev = server.device(&bob, Transport::Ws);
    assert!(bob_dev.wait_connected(WAIT).await);

    assert_eq!(code(alice.send(&text(b, "x1", "hi")).await), "not_friends");

    alice.request_friend(b, "let's talk").await.unwrap();
    let e = bob_dev.next_event(WAIT).await.unwrap();
    assert_eq!(
        e.event,
        Event::FriendRequest {
            from: a,
            to: b,
            note: "let's talk".into()
        }
    );
    assert_eq!(bob.friend_requests().await.unwrap().incoming.len(), 1);
    assert_eq!(alice.friend_requests().await.unwrap().outgoing.len(), 1);
    bob.decline_friend(a).await.unwrap();
    assert!(matches!(
        bob_dev.next_event(WAIT).await.unwrap().event,
        Event::FriendDeclined { .. }
    ));
    assert!(bob.friend_requests().await.unwrap().incoming.is_empty());

    alice.request_friend(b, "again").await.unwrap();
    bob.accept_friend(a).await.unwrap();
    assert!(matches!(
        bob_dev.next_event(WAIT).await.unwrap().event,
        Event::FriendRequest { .. }
    ));
    assert!(matches!(
        bob_dev.next_event(WAIT).await.unwrap().event,
        Event::FriendAccepted { .. }
    ));
    assert_eq!(alice.friends().await.unwrap()[0].user_id, b);
    alice.send(&text(b, "x2", "now we can")).await.unwrap();
    assert!(matches!(
        bob_dev.next_event(WAIT).await.unwrap().event,
        Event::Message { .. }
    ));

    assert_eq!(code(alice.request_friend(b, "dup").await), "conflict");
    alice.remove_friend(b).await.unwrap();
    assert!(matches!(
        bob_dev.next_event(WAIT).await.unwrap().event,
        Event::FriendRemoved { .. }
    ));
    assert_eq!(
        code(alice.send(&text(b, "x3", "gone")).await),
        "not_friends"
    );

    // Blocking refuses messages and requests both ways.
    bob.block(a, true).await.unwrap();
    assert_eq!(code(alice.request_friend(b, "please").await), "blocked");
    bob.block(a, false).await.unwrap();
    befriend(&alice, a, &bob, b).await;
    bob.block(a, true).await.unwrap();
    assert_eq!(code(alice.send(&text(b, "x4", "hello?")).await), "blocked");
    assert!(
        alice.friends().await.unwrap().is_empty(),
        "blocking ends the friendship"
    );

    // The same events are there for a pull from scratch.
    let all = bob.sync(0, None).await.unwrap();
    assert_eq!(all.entries.len() as u64, all.head);
    assert!(
        all.entries
            .iter()
            .any(|e| matches!(e.event, Event::Blocked { .. }))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_may_talk_when_the_server_allows_it_and_recall_works_in_its_window() {
    let server = start(|c| c.chat.allow_strangers = true).await;
    let (alice, _a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let sent = alice
        .send(&text(b, &new_client_msg_id(), "hi stranger"))
        .await
        .unwrap();
    let conv = sent.conv;
    // Only the sender may recall.
    let recall = |cmid: &str| xinge_client::api::RecallRequest {
        conv,
        conv_seq: sent.conv_seq,
        client_msg_id: cmid.into(),
    };
    let err = bob.recall(&recall("r0")).await.unwrap_err();
    assert_eq!(err.code().unwrap().as_str(), "forbidden");
    let r = alice.recall(&recall("r1")).await.unwrap();
    assert_eq!(r.conv_seq, 2);
    let again = alice.recall(&recall("r1")).await.unwrap();
    assert!(again.duplicate, "a retried recall answers as the first");
    assert_eq!((again.msg_id, again.sent_at_ms), (r.msg_id, r.sent_at_ms));
    assert_eq!(
        code(alice.recall(&recall("r2")).await),
        "conflict",
        "another recall of a recalled message"
    );
    let page = bob.history(conv, None, None, 10).await.unwrap();
    assert_eq!(
        page.messages.len(),
        2,
        "the recalled message keeps its place"
    );
    match page.messages[0].body {
        MessageBody::Recalled { by, at_ms } => {
            assert_eq!(by, _a);
            assert!(at_ms >= page.messages[0].sent_at_ms && at_ms <= r.sent_at_ms);
        }
        ref other => panic!("the recalled message still reads as {other:?}"),
    }
    assert!(page.messages[0].mentions.is_empty());
    assert_eq!(page.messages[1].body, MessageBody::Recall { target: 1 });
    assert_eq!(page.messages[1].client_msg_id, "r1", "the recall's own id");
    // Its text is gone from every read, the sender's and the receiver's: history, sync
    // and the conversation list.
    for who in [&alice, &bob] {
        let reads = [
            serde_json::to_string(&who.history(conv, None, None, 10).await.unwrap()).unwrap(),
            serde_json::to_string(&who.sync(0, None).await.unwrap()).unwrap(),
            serde_json::to_string(&who.conversations().await.unwrap()).unwrap(),
        ];
        for read in reads {
            assert!(!read.contains("hi stranger"), "{read}");
        }
    }
    server.stop().await;

    // The window is passed by moving the server's clock, not by waiting it out.
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| {
        c.chat.allow_strangers = true;
        c.clock = clock.clone();
    })
    .await;
    let (alice, _) = server.login("alice", "laptop").await;
    let (_, b) = server.login("bob", "laptop").await;
    // Each recall with an id of its own (the id is its idempotency key).
    let recall_of = |sent: &xinge_client::api::SendResponse| xinge_client::api::RecallRequest {
        conv: sent.conv,
        conv_seq: sent.conv_seq,
        client_msg_id: format!("recall-{}", sent.conv_seq),
    };
    let taken_back = alice
        .send(&text(b, "m1", "taken back in time"))
        .await
        .unwrap();
    // Recalled ten seconds after it was sent: the recall's time is its own.
    clock.advance(Duration::from_secs(10));
    let first = alice.recall(&recall_of(&taken_back)).await.unwrap();
    assert!(first.sent_at_ms >= taken_back.sent_at_ms + 10_000);
    let late = alice
        .send(&text(b, "m2", "too late to take back"))
        .await
        .unwrap();
    let window = Duration::from_secs(xinge_core::config::ChatConfig::default().recall_window_secs);
    clock.advance(window - Duration::from_secs(1));
    let just_in_time = alice
        .send(&text(b, "m3", "still mine to take back"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let err = alice.recall(&recall_of(&late)).await.unwrap_err();
    assert_eq!(err.code().unwrap().as_str(), "recall_window_passed");
    // Two seconds old, well inside the window.
    let recalled = alice.recall(&recall_of(&just_in_time)).await.unwrap();
    assert!(!recalled.duplicate);
    // A retry of a recall that went through still gets its answer after the window.
    let retry = alice.recall(&recall_of(&taken_back)).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (
            retry.msg_id,
            retry.conv_seq,
            retry.inbox_seq,
            retry.sent_at_ms
        ),
        (
            first.msg_id,
            first.conv_seq,
            first.inbox_seq,
            first.sent_at_ms
        ),
        "a retried recall answers exactly as the first time"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_reach_friends_as_signals() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let bob_dev = server.device(&bob, Transport::Tcp);
    assert!(bob_dev.wait_connected(WAIT).await);
    let p = alice.presence(&[b, UserId(999)]).await.unwrap().presence;
    assert_eq!(p.len(), 1, "only friends' presence is visible");
    assert!(p[0].online);

    let alice_dev = server.device(&alice, Transport::Ws);
    assert!(alice_dev.wait_connected(WAIT).await);
    use xinge_client::api::Signal;
    let online = bob_dev.next_signal(WAIT).await.unwrap();
    assert!(matches!(online, Signal::Presence { user, online: true, .. } if user == a));
    alice.typing(ConvId::direct(a, b)).await.unwrap();
    let typing = bob_dev.next_signal(WAIT).await.unwrap();
    assert_eq!(
        typing,
        Signal::Typing {
            conv: ConvId::direct(a, b),
            user: a
        }
    );
    alice_dev.stop();
    drop(alice_dev);
    let offline = bob_dev.next_signal(WAIT).await.unwrap();
    assert!(
        matches!(offline, Signal::Presence { user, online: false, last_seen_ms } if user == a && last_seen_ms > 0)
    );
    server.stop().await;
}

/// Waits (bounded) until `dev` has connected `n` times, without subscribing to its
/// connection state the way `wait_connected` does.
async fn connects_reach(dev: &Device, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while dev.connects() < n {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Regression: a device that nobody was waiting on (no `wait_connected`, no `send`) took
/// its own new connection for a drop — its state stayed "disconnected" — and reconnected
/// every 25-50 ms, delivering by pull only. Found by the chaos soak (tests/soak.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_nobody_waits_on_keeps_its_connection() {
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let dev = server.device(&alice, Transport::Tcp);
    connects_reach(&dev, 1).await;
    // A healthy connection is kept: the server's heartbeat timeout is 90 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dev.connects(), 1, "no reconnection without a failure");
    assert!(dev.wait_connected(Duration::ZERO).await);
    // After a drop it reconnects once, and keeps that connection too.
    dev.drop_connection();
    connects_reach(&dev, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dev.connects(), 2, "one reconnection per drop");
    server.stop().await;
}

/// The inbox signal in `f`, if it is one: `(seq, entry)`.
fn inbox_signal(f: &xinge_proto::Frame) -> Option<(u64, Option<Box<InboxEntry>>)> {
    use xinge_client::api::Signal;
    if f.cmd != xinge_proto::cmd::SIGNAL {
        return None;
    }
    match serde_json::from_slice(&f.body).unwrap() {
        Signal::Inbox { seq, entry } => Some((seq, entry)),
        _ => None,
    }
}

/// The connection that sent a message gets its own inbox entry in the answer and no signal
/// for it; the sender's other devices and the recipient are signalled; over HTTP the
/// answer carries no entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sending_connection_gets_its_entry_in_the_answer_instead_of_a_signal() {
    use tokio::io::AsyncWriteExt;
    use xinge_client::api::SendResponse;
    use xinge_proto::{Frame, cmd};
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (phone, _) = server.login("alice", "phone").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let mut laptop = raw_authed(&server, alice.token().unwrap()).await;
    let mut phone = raw_authed(&server, phone.token().unwrap()).await;
    let mut bob_conn = raw_authed(&server, bob.token().unwrap()).await;
    // Befriending left entries in both inboxes; the next seqs follow them.
    let alice_head = alice.sync(0, None).await.unwrap().head;
    let bob_head = bob.sync(0, None).await.unwrap().head;

    let body = serde_json::to_vec(&text(b, "c-1", "hello")).unwrap();
    laptop
        .write_all(&Frame::request(cmd::SEND, 7, body).encode_prefixed())
        .await
        .unwrap();
    let answer = loop {
        let f = read_frame(&mut laptop).await;
        if f.is_response() && f.req_id == 7 {
            break f;
        }
        assert!(
            inbox_signal(&f).is_none(),
            "no inbox signal before the answer"
        );
    };
    let sent: SendResponse = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(sent.inbox_seq, alice_head + 1);
    let entry = sent.entry.expect("the entry rides in the answer");
    assert_eq!(entry.seq, sent.inbox_seq);
    let Event::Message { message } = &entry.event else {
        panic!("a message entry")
    };
    assert_eq!(
        (message.msg_id, message.conv_seq),
        (sent.msg_id, sent.conv_seq)
    );
    assert!(
        matches!(&message.body, MessageBody::Content { content } if content["text"] == "hello")
    );

    // Her other device and Bob are signalled as before, the entry inline.
    for (conn, seq) in [(&mut phone, sent.inbox_seq), (&mut bob_conn, bob_head + 1)] {
        let (s, e) = loop {
            if let Some(s) = inbox_signal(&read_frame(conn).await) {
                break s;
            }
        };
        assert_eq!(s, seq);
        assert_eq!(e.unwrap().event, entry.event);
    }

    // Bob answers: the laptop's next inbox signal is that answer's entry, not its own.
    bob.send(&text(a, "c-2", "hi")).await.unwrap();
    let (s, _) = loop {
        if let Some(s) = inbox_signal(&read_frame(&mut laptop).await) {
            break s;
        }
    };
    assert_eq!(
        s,
        sent.inbox_seq + 1,
        "no signal for the laptop's own entry"
    );

    // Over HTTP there is no connection to spare a signal: no entry in the answer.
    let over_http = alice.send(&text(b, "c-3", "by http")).await.unwrap();
    assert!(over_http.entry.is_none());
    server.stop().await;
}
