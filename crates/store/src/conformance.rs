//! The conformance suite. A backend is done when `run` passes on it. Every check makes
//! its own users (unique names), so the suite runs on a store that already holds data.

use crate::{
    Commit, Committed, GroupFanout, GroupPatch, GroupRecord, NewMessage, NewUser, Op, Refusal,
    Store, StoreError,
};
use std::sync::atomic::{AtomicU64, Ordering};
use xinge_core::{ConvId, UserId};
use xinge_proto::api::{Event, FriendRequestView, GroupEvent, MessageBody, Role};

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
    // After the concurrent check, so that a pooling backend has its connections open and
    // the repeats really race.
    racing_repeats_commit_once(store).await;
    groups_fan_out_by_size_atomically_with_membership(store).await;
    recipients_follow_membership_changed_by_earlier_commits(store).await;
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
            group: None,
            message: Some(NewMessage {
                conv: ConvId::direct(a, b),
                sender: a,
                sender_device: None,
                client_msg_id: cmid.to_owned(),
                sent_at_ms: xinge_core::now_ms(),
                mentions: vec![],
                mention_all: false,
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
    assert!(again.entries.is_empty() && again.recipients.is_empty());
    let (m1, m2) = (first.message.unwrap(), again.message.unwrap());
    assert_eq!((m1.msg_id, m1.conv_seq), (m2.msg_id, m2.conv_seq));
    assert_eq!(first.sender_seq, again.sender_seq);
    let rec = store
        .dedup(a, "same")
        .await
        .unwrap()
        .expect("the dedup key is readable");
    assert_eq!(
        (rec.msg_id, rec.conv_seq, rec.sender_seq),
        (m1.msg_id, m1.conv_seq, first.sender_seq)
    );
    assert!(store.dedup(a, "never-sent").await.unwrap().is_none());
    assert_eq!(store.conv_head(ConvId::direct(a, b)).await.unwrap(), 1);
    assert_eq!(store.inbox(b, 0, 10).await.unwrap().1, 1);
    // The key is per sender: b may use the same client_msg_id.
    let other = send(store, b, a, "same").await;
    assert!(!other.duplicate);
    assert_eq!(other.message.unwrap().conv_seq, 2);
}

/// The same send arriving several times at once (a client retrying over two connections):
/// one commit, and every other answer is that same message.
async fn racing_repeats_commit_once(store: &dyn Store) {
    let a = user(store, "race_a").await;
    let b = user(store, "race_b").await;
    let tries = (0..8).map(|_| send(store, a, b, "raced"));
    let results = futures_util::future::join_all(tries).await;
    assert_eq!(results.iter().filter(|c| !c.duplicate).count(), 1);
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|c| {
            let m = c
                .message
                .as_ref()
                .expect("every answer carries the message");
            (m.msg_id, m.conv_seq, c.sender_seq)
        })
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the one message: {ids:?}");
    assert_eq!(store.conv_head(ConvId::direct(a, b)).await.unwrap(), 1);
    let (entries, head) = store.inbox(b, 0, 10).await.unwrap();
    assert_eq!((entries.len(), head), (1, 1));
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

fn group_msg(gid: u64, sender: UserId, cmid: &str, body: MessageBody) -> NewMessage {
    NewMessage {
        conv: ConvId::Group(gid),
        sender,
        sender_device: None,
        client_msg_id: cmid.to_owned(),
        sent_at_ms: xinge_core::now_ms(),
        mentions: vec![],
        mention_all: false,
        body,
    }
}

/// A new group's record, before its members are added.
pub(crate) fn new_group(gid: u64, owner: UserId, name: &str) -> GroupRecord {
    GroupRecord {
        id: gid,
        name: name.into(),
        avatar: String::new(),
        notice: String::new(),
        owner,
        created_at_ms: 1,
        member_count: 0,
        muted_all: false,
        dismissed: false,
    }
}

/// A commit sending `text` to group `gid` as `sender`, with the given fan-out threshold.
pub fn group_send(gid: u64, sender: UserId, cmid: &str, threshold: u64) -> Commit {
    Commit {
        dedup: Some((sender, cmid.to_owned())),
        group: Some(GroupFanout {
            group: gid,
            threshold,
            sender: Some((sender, true)),
            max_members: 100_000,
        }),
        message: Some(group_msg(
            gid,
            sender,
            cmid,
            MessageBody::Content {
                content: serde_json::json!({ "text": cmid }),
            },
        )),
        message_to: vec![sender],
        ..Commit::default()
    }
}

async fn groups_fan_out_by_size_atomically_with_membership(store: &dyn Store) {
    let owner = user(store, "g_owner").await;
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(user(store, "g_member").await);
    }
    let gid = xinge_core::now_ms() * 1000 + UNIQUE.fetch_add(1, Ordering::Relaxed);
    let conv = ConvId::Group(gid);
    let fan = |sender: Option<(UserId, bool)>, max: u64| GroupFanout {
        group: gid,
        threshold: 3,
        sender,
        max_members: max,
    };
    let rec = new_group(gid, owner, "g");
    let system = |event| MessageBody::System { event };
    let created = store
        .commit(Commit {
            group: Some(fan(None, 100)),
            ops: vec![
                Op::CreateGroup(rec),
                Op::AddMember {
                    group: gid,
                    user: owner,
                    role: Role::Owner,
                },
                Op::AddMember {
                    group: gid,
                    user: others[0],
                    role: Role::Member,
                },
                Op::AddMember {
                    group: gid,
                    user: others[1],
                    role: Role::Member,
                },
            ],
            message: Some(group_msg(
                gid,
                owner,
                "create",
                system(GroupEvent::Created {
                    by: owner,
                    name: "g".into(),
                    members: vec![],
                }),
            )),
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(created.message.as_ref().unwrap().conv_seq, 1);
    assert_eq!(
        created.recipients.len(),
        3,
        "write fan-out reaches every member"
    );
    let g = store.group(gid).await.unwrap().unwrap();
    assert_eq!(g.member_count, 3);
    let m = store.group_member(gid, others[0]).await.unwrap().unwrap();
    assert_eq!((m.joined_seq, m.role), (0, Role::Member));

    // Non-members are refused atomically; nothing is written.
    let outsider = others[4];
    let refused = store.commit(group_send(gid, outsider, "x", 3)).await;
    assert!(matches!(
        refused,
        Err(StoreError::Refused(Refusal::NotMember))
    ));
    assert_eq!(store.conv_head(conv).await.unwrap(), 1);

    let sent = store
        .commit(group_send(gid, others[0], "hello", 3))
        .await
        .unwrap();
    assert_eq!(sent.recipients.len(), 3);
    assert!(sent.group_advanced.is_none());

    // Growing past the threshold switches to read fan-out in the same commit.
    let grown = store
        .commit(Commit {
            group: Some(fan(Some((owner, false)), 100)),
            ops: vec![
                Op::AddMember {
                    group: gid,
                    user: others[2],
                    role: Role::Member,
                },
                Op::AddMember {
                    group: gid,
                    user: others[3],
                    role: Role::Member,
                },
            ],
            message: Some(group_msg(
                gid,
                owner,
                "join",
                system(GroupEvent::Joined {
                    users: vec![others[2], others[3]],
                    by: owner,
                }),
            )),
            message_to: vec![owner],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(grown.message.as_ref().unwrap().conv_seq, 3);
    assert_eq!(
        grown.recipients.len(),
        1,
        "read fan-out: only the explicit recipients"
    );
    assert_eq!(grown.group_advanced, Some((gid, 3)));
    let late = store.group_member(gid, others[2]).await.unwrap().unwrap();
    assert_eq!(late.joined_seq, 2, "sees the timeline from its join on");
    assert_eq!(store.read_cursor(others[2], conv).await.unwrap(), 2);

    // Mutes, for one member and for everyone but admins.
    store
        .commit(Commit {
            ops: vec![
                Op::SetMuted {
                    group: gid,
                    user: others[1],
                    muted: true,
                },
                Op::SetRole {
                    group: gid,
                    user: others[0],
                    role: Role::Admin,
                },
            ],
            ..Commit::default()
        })
        .await
        .unwrap();
    let muted = store.commit(group_send(gid, others[1], "m1", 3)).await;
    assert!(matches!(muted, Err(StoreError::Refused(Refusal::Muted))));
    store
        .commit(Commit {
            ops: vec![Op::UpdateGroup {
                group: gid,
                patch: GroupPatch {
                    muted_all: Some(true),
                    ..GroupPatch::default()
                },
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert!(matches!(
        store.commit(group_send(gid, others[2], "m2", 3)).await,
        Err(StoreError::Refused(Refusal::Muted))
    ));
    assert!(
        store
            .commit(group_send(gid, others[0], "admin talks", 3))
            .await
            .is_ok()
    );

    // Capacity is checked before anything is written.
    let full = store
        .commit(Commit {
            group: Some(fan(None, 5)),
            ops: vec![
                Op::AddMember {
                    group: gid,
                    user: others[4],
                    role: Role::Member,
                },
                Op::AddMember {
                    group: gid,
                    user: UserId(u64::MAX - 1),
                    role: Role::Member,
                },
            ],
            ..Commit::default()
        })
        .await;
    assert!(matches!(full, Err(StoreError::Refused(Refusal::GroupFull))));

    // Read cursors live with the member too; mentions are indexed.
    store
        .commit(Commit {
            ops: vec![Op::AdvanceRead {
                user: others[3],
                conv,
                seq: 3,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .group_member(gid, others[3])
            .await
            .unwrap()
            .unwrap()
            .read_seq,
        3
    );
    let mut mention = group_send(gid, others[0], "hey @3", 3);
    if let Some(m) = &mut mention.message {
        m.mentions = vec![others[3]];
    }
    let mseq = store
        .commit(mention)
        .await
        .unwrap()
        .message
        .unwrap()
        .conv_seq;
    let mut all = group_send(gid, others[0], "hey @all", 3);
    if let Some(m) = &mut all.message {
        m.mention_all = true;
    }
    store.commit(all).await.unwrap();
    assert_eq!(
        store.mention_count(others[3], conv, 3, 99).await.unwrap(),
        2
    );
    assert_eq!(
        store
            .mention_count(others[3], conv, mseq, 99)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.mention_count(others[2], conv, 3, 99).await.unwrap(),
        1
    );

    // Paging the members, and removal.
    let page1 = store.group_members(gid, None, 2).await.unwrap();
    let page2 = store
        .group_members(gid, Some(page1[1].0), 10)
        .await
        .unwrap();
    assert_eq!(page1.len() + page2.len(), 5);
    store
        .commit(Commit {
            ops: vec![
                Op::RemoveMember {
                    group: gid,
                    user: others[3],
                },
                Op::PutInvite {
                    group: gid,
                    user: others[4],
                    by: owner,
                },
            ],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert!(store.group_member(gid, others[3]).await.unwrap().is_none());
    assert!(
        store
            .memberships(others[3], 100)
            .await
            .unwrap()
            .iter()
            .all(|m| m.conv != conv)
    );
    assert_eq!(store.group(gid).await.unwrap().unwrap().member_count, 4);
    assert_eq!(store.invite(gid, others[4]).await.unwrap(), Some(owner));
    let back_to_write = store
        .commit(Commit {
            group: Some(fan(Some((owner, false)), 100)),
            ops: vec![
                Op::AddMember {
                    group: gid,
                    user: others[4],
                    role: Role::Member,
                },
                Op::RemoveMember {
                    group: gid,
                    user: others[2],
                },
                Op::RemoveMember {
                    group: gid,
                    user: others[4],
                },
            ],
            message: Some(group_msg(
                gid,
                owner,
                "shrink",
                system(GroupEvent::Left { user: others[2] }),
            )),
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(
        back_to_write.recipients.len(),
        3,
        "back under the threshold: write fan-out again"
    );
    assert_eq!(
        store.invite(gid, others[4]).await.unwrap(),
        None,
        "joining consumes the invitation"
    );
}

/// Who a write fan-out message reaches follows the membership as it was committed before
/// it, whether the change came in an earlier batch or in the same one (commits racing to
/// the writer together). A backend that remembers member lists must not serve a stale one.
async fn recipients_follow_membership_changed_by_earlier_commits(store: &dyn Store) {
    let owner = user(store, "l_owner").await;
    let (a, b, c) = (
        user(store, "l_a").await,
        user(store, "l_b").await,
        user(store, "l_c").await,
    );
    let gid = xinge_core::now_ms() * 1000 + UNIQUE.fetch_add(1, Ordering::Relaxed);
    let add = |user| Op::AddMember {
        group: gid,
        user,
        role: Role::Member,
    };
    let membership = |ops: Vec<Op>| Commit {
        ops,
        ..Commit::default()
    };
    let rec = new_group(gid, owner, "l");
    store
        .commit(membership(vec![
            Op::CreateGroup(rec),
            Op::AddMember {
                group: gid,
                user: owner,
                role: Role::Owner,
            },
            add(a),
        ]))
        .await
        .unwrap();
    let to = |c: &Committed| {
        let mut users: Vec<UserId> = c.recipients.iter().map(|(u, _)| *u).collect();
        users.sort();
        users
    };
    let sorted = |mut v: Vec<UserId>| {
        v.sort();
        v
    };
    let first = store
        .commit(group_send(gid, owner, "l1", 100))
        .await
        .unwrap();
    assert_eq!(to(&first), sorted(vec![owner, a]));

    // A member added by a later commit gets the next message.
    store.commit(membership(vec![add(b)])).await.unwrap();
    let second = store
        .commit(group_send(gid, owner, "l2", 100))
        .await
        .unwrap();
    assert_eq!(to(&second), sorted(vec![owner, a, b]));

    // One removed does not.
    store
        .commit(membership(vec![Op::RemoveMember {
            group: gid,
            user: a,
        }]))
        .await
        .unwrap();
    let third = store
        .commit(group_send(gid, owner, "l3", 100))
        .await
        .unwrap();
    assert_eq!(to(&third), sorted(vec![owner, b]));

    // Racing commits: a send, then an add and a send, submitted together (on the embedded
    // store they usually land in one batch). Each send reaches the members committed
    // before it, in sequence order.
    let (x, y, z) = tokio::join!(
        store.commit(group_send(gid, owner, "l4", 100)),
        store.commit(membership(vec![add(c)])),
        store.commit(group_send(gid, b, "l5", 100)),
    );
    let (x, z) = (x.unwrap(), z.unwrap());
    y.unwrap();
    let seq = |c: &Committed| c.message.as_ref().map_or(0, |m| m.conv_seq);
    let before_c = sorted(vec![owner, b]);
    let with_c = sorted(vec![owner, b, c]);
    for m in [&x, &z] {
        assert!(
            to(m) == before_c || to(m) == with_c,
            "message {} went to {:?}",
            seq(m),
            to(m)
        );
    }
    // Sequence order is commit order: once one send included c, a later one does too.
    let (early, late) = if seq(&x) < seq(&z) {
        (&x, &z)
    } else {
        (&z, &x)
    };
    if to(early) == with_c {
        assert_eq!(to(late), with_c);
    }
    let after = store.commit(group_send(gid, b, "l6", 100)).await.unwrap();
    assert_eq!(to(&after), with_c);
}
