//! The conformance suite. A backend is done when `run` passes on it. Every check makes
//! its own users (unique names), so the suite runs on a store that already holds data.

use crate::{Commit, Committed, NewMessage, NewUser, Op, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use xinge_core::{ConvId, UserId};
use xinge_proto::api::{Event, FriendRequestView, MessageBody};

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// Runs every check in turn; panics with the name of the first that fails.
pub async fn run(store: &dyn Store) {
    users_are_unique_and_sequential(store).await;
    devices_and_profiles(store).await;
    relations(store).await;
    messages_get_continuous_sequences(store).await;
    dedup_returns_the_original(store).await;
    history_pages_both_ways(store).await;
    read_cursors_are_monotonic(store).await;
    concurrent_commits_keep_sequences_continuous(store).await;
}

pub async fn user(store: &dyn Store, tag: &str) -> UserId {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let stamp = xinge_core::now_ms() % 1_000_000_000;
    store
        .create_user(NewUser {
            username: format!("{tag}_{stamp}_{n}"),
            display_name: tag.to_owned(),
            password_hash: "x".into(),
            created_at_ms: 1,
        })
        .await
        .expect("create user")
        .id
}

/// A 1:1 message from `a` to `b` with write fan-out to both inboxes.
pub async fn send(store: &dyn Store, a: UserId, b: UserId, cmid: &str) -> Committed {
    store
        .commit(Commit {
            dedup: Some((a, cmid.to_owned())),
            message: Some(NewMessage {
                conv: ConvId::direct(a, b),
                sender: a,
                sender_device: None,
                client_msg_id: cmid.to_owned(),
                sent_at_ms: xinge_core::now_ms(),
                body: MessageBody::Content {
                    content: serde_json::json!({ "text": cmid }),
                },
            }),
            message_to: vec![a, b],
            events: vec![],
            ops: vec![
                Op::Join {
                    user: a,
                    conv: ConvId::direct(a, b),
                },
                Op::Join {
                    user: b,
                    conv: ConvId::direct(a, b),
                },
            ],
        })
        .await
        .expect("commit")
}

/// Two fresh users and `n` messages from the first to the second.
pub async fn seed_chat(store: &dyn Store, n: usize) -> (UserId, UserId) {
    let a = user(store, "seed_a").await;
    let b = user(store, "seed_b").await;
    for i in 0..n {
        send(store, a, b, &format!("seed-{i}")).await;
    }
    (a, b)
}

async fn users_are_unique_and_sequential(store: &dyn Store) {
    let a = user(store, "uniq").await;
    let b = user(store, "uniq").await;
    assert!(b > a, "user ids increase");
    let rec = store.user(a).await.unwrap().expect("user exists");
    let same = store
        .user_by_name(&rec.username)
        .await
        .unwrap()
        .expect("by name");
    assert_eq!(rec, same);
    let dup = store
        .create_user(NewUser {
            username: rec.username.clone(),
            display_name: "again".into(),
            password_hash: "y".into(),
            created_at_ms: 2,
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict)),
        "username is unique"
    );
    assert!(store.user(UserId(u64::MAX)).await.unwrap().is_none());
    assert!(
        store
            .user_by_name("no-such-user-anywhere")
            .await
            .unwrap()
            .is_none()
    );
}

async fn devices_and_profiles(store: &dyn Store) {
    let a = user(store, "dev").await;
    let phone = xinge_core::DeviceId::parse("phone").unwrap();
    assert_eq!(store.device_token(a, &phone).await.unwrap(), None);
    store.put_device(a, &phone, 7).await.unwrap();
    store.put_device(a, &phone, 8).await.unwrap();
    assert_eq!(store.device_token(a, &phone).await.unwrap(), Some(8));
    store.remove_device(a, &phone).await.unwrap();
    assert_eq!(store.device_token(a, &phone).await.unwrap(), None);
    store.set_display_name(a, "New Name").await.unwrap();
    assert_eq!(
        store.user(a).await.unwrap().unwrap().display_name,
        "New Name"
    );
    assert!(matches!(
        store.set_display_name(UserId(u64::MAX), "x").await,
        Err(StoreError::NotFound)
    ));
}

async fn relations(store: &dyn Store) {
    let a = user(store, "rel_a").await;
    let b = user(store, "rel_b").await;
    let req = FriendRequestView {
        from: a,
        to: b,
        note: "hi".into(),
        created_at_ms: 5,
    };
    let c = store
        .commit(Commit {
            events: vec![(
                b,
                Event::FriendRequest {
                    from: a,
                    to: b,
                    note: "hi".into(),
                },
            )],
            ops: vec![Op::PutRequest(req.clone())],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(c.entries.len(), 1);
    assert_eq!(
        store.relation(a, b).await.unwrap().request_out,
        Some(req.clone())
    );
    assert_eq!(
        store.relation(b, a).await.unwrap().request_in,
        Some(req.clone())
    );
    let reqs = store.friend_requests(b, 10).await.unwrap();
    assert_eq!((reqs.incoming, reqs.outgoing.len()), (vec![req.clone()], 0));
    assert_eq!(
        store.friend_requests(a, 10).await.unwrap().outgoing,
        vec![req]
    );

    store
        .commit(Commit {
            ops: vec![Op::SetFriends {
                a: b,
                b: a,
                since_ms: 9,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    let rel = store.relation(a, b).await.unwrap();
    assert_eq!(rel.friends_since_ms, Some(9));
    assert_eq!(store.pair(b, a).await.unwrap().friends_since_ms, Some(9));
    assert!(
        rel.request_out.is_none() && rel.request_in.is_none(),
        "accept clears requests"
    );
    assert!(
        store
            .friend_requests(b, 10)
            .await
            .unwrap()
            .incoming
            .is_empty()
    );
    assert_eq!(store.friends(a, 10).await.unwrap()[0].user_id, b);
    assert_eq!(store.friends(b, 10).await.unwrap()[0].user_id, a);

    store
        .commit(Commit {
            ops: vec![
                Op::RemoveFriends { a, b },
                Op::SetBlock {
                    by: b,
                    peer: a,
                    blocked: true,
                },
            ],
            ..Commit::default()
        })
        .await
        .unwrap();
    let rel = store.relation(a, b).await.unwrap();
    assert_eq!(rel.friends_since_ms, None);
    assert!(rel.blocked_me && !rel.i_blocked);
    let pair = store.pair(a, b).await.unwrap();
    assert_eq!(
        (pair.friends_since_ms, pair.i_blocked, pair.blocked_me),
        (None, false, true)
    );
    assert!(store.relation(b, a).await.unwrap().i_blocked);
    store
        .commit(Commit {
            ops: vec![Op::SetBlock {
                by: b,
                peer: a,
                blocked: false,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(store.relation(a, b).await.unwrap(), Default::default());
}

async fn messages_get_continuous_sequences(store: &dyn Store) {
    let (a, b) = seed_chat(store, 3).await;
    let conv = ConvId::direct(a, b);
    assert_eq!(store.conv_head(conv).await.unwrap(), 3);
    let (entries, head) = store.inbox(b, 0, 100).await.unwrap();
    assert_eq!(head, 3);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (i, e) in entries.iter().enumerate() {
        let Event::Message { message } = &e.event else {
            panic!("not a message")
        };
        assert_eq!(message.conv_seq, i as u64 + 1);
        assert_eq!(message.client_msg_id, format!("seed-{i}"));
        assert_eq!(message.sender, a);
    }
    // A non-message event takes the next inbox seq, and after/limit page correctly.
    store
        .commit(Commit {
            events: vec![(b, Event::FriendRemoved { by: a, peer: b })],
            ..Commit::default()
        })
        .await
        .unwrap();
    let (page, head) = store.inbox(b, 2, 1).await.unwrap();
    assert_eq!((page.len(), page[0].seq, head), (1, 3, 4));
    let (rest, _) = store.inbox(b, 3, 10).await.unwrap();
    assert!(matches!(rest[0].event, Event::FriendRemoved { .. }));
    assert!(store.inbox(b, 4, 10).await.unwrap().0.is_empty());
    assert!(store.inbox(b, u64::MAX, 10).await.unwrap().0.is_empty());
    // Message ids are time-ordered along the conversation.
    let msgs = store.messages(conv, 1, 3, 10, false).await.unwrap();
    assert!(msgs.windows(2).all(|w| w[0].msg_id < w[1].msg_id));
    let mut ms = store.memberships(a, 10).await.unwrap();
    ms.retain(|m| m.conv == conv);
    assert_eq!(ms.len(), 1);
}

async fn dedup_returns_the_original(store: &dyn Store) {
    let a = user(store, "dup_a").await;
    let b = user(store, "dup_b").await;
    let first = send(store, a, b, "same").await;
    let again = send(store, a, b, "same").await;
    assert!(!first.duplicate && again.duplicate);
    assert!(again.entries.is_empty());
    let (m1, m2) = (first.message.unwrap(), again.message.unwrap());
    assert_eq!((m1.msg_id, m1.conv_seq), (m2.msg_id, m2.conv_seq));
    assert_eq!(first.sender_seq, again.sender_seq);
    assert_eq!(store.conv_head(ConvId::direct(a, b)).await.unwrap(), 1);
    assert_eq!(store.inbox(b, 0, 10).await.unwrap().1, 1);
    // The key is per sender: b may use the same client_msg_id.
    let other = send(store, b, a, "same").await;
    assert!(!other.duplicate);
    assert_eq!(other.message.unwrap().conv_seq, 2);
}

async fn history_pages_both_ways(store: &dyn Store) {
    let (a, b) = seed_chat(store, 10).await;
    let conv = ConvId::direct(a, b);
    let newest = store.messages(conv, 1, u64::MAX, 3, true).await.unwrap();
    assert_eq!(
        newest.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    let older = store.messages(conv, 1, 7, 3, true).await.unwrap();
    assert_eq!(
        older.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    let fwd = store.messages(conv, 4, u64::MAX, 2, false).await.unwrap();
    assert_eq!(
        fwd.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(
        store
            .messages(conv, 11, u64::MAX, 5, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .messages(conv, 5, 4, 5, false)
            .await
            .unwrap()
            .is_empty()
    );
    let other = ConvId::direct(a, UserId(u64::MAX));
    assert!(
        store
            .messages(other, 1, u64::MAX, 5, false)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn read_cursors_are_monotonic(store: &dyn Store) {
    let (a, b) = seed_chat(store, 4).await;
    let conv = ConvId::direct(a, b);
    assert_eq!(store.read_cursor(b, conv).await.unwrap(), 0);
    let adv = |seq| Commit {
        ops: vec![Op::AdvanceRead { user: b, conv, seq }],
        ..Commit::default()
    };
    store.commit(adv(3)).await.unwrap();
    assert_eq!(store.read_cursor(b, conv).await.unwrap(), 3);
    store.commit(adv(2)).await.unwrap();
    assert_eq!(
        store.read_cursor(b, conv).await.unwrap(),
        3,
        "never moves back"
    );
    store.commit(adv(4)).await.unwrap();
    let m = store.memberships(b, 100).await.unwrap();
    assert_eq!(m.iter().find(|m| m.conv == conv).unwrap().read_seq, 4);
}

async fn concurrent_commits_keep_sequences_continuous(store: &dyn Store) {
    let hub = user(store, "hub").await;
    let mut peers = Vec::new();
    for _ in 0..4 {
        peers.push(user(store, "spoke").await);
    }
    // Many concurrent senders into one inbox: the hub's sequence must be 1..=N with no gap.
    let mut tasks = Vec::new();
    for (i, &p) in peers.iter().enumerate() {
        for j in 0..25 {
            tasks.push(async move { send(store, p, hub, &format!("c{i}-{j}")).await });
        }
    }
    let results = futures_util::future::join_all(tasks).await;
    assert!(results.iter().all(|c| !c.duplicate));
    let (entries, head) = store.inbox(hub, 0, 1000).await.unwrap();
    assert_eq!(head, 100);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    for &p in &peers {
        let conv = ConvId::direct(p, hub);
        let msgs = store
            .messages(conv, 1, u64::MAX, 1000, false)
            .await
            .unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
            (1..=25).collect::<Vec<_>>()
        );
    }
}
