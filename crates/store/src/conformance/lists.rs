//! The conversation list read in one go agrees, row by row, with the per-conversation reads.

use super::*;
use crate::ConversationRow;

/// A fresh group id.
fn gid() -> xinge_core::GroupId {
    xinge_core::GroupId(xinge_core::now_ms() * 1000 + UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// Creates group `gid` owned by `owner`, with `members` as plain members.
async fn create_group(
    store: &dyn Store,
    gid: xinge_core::GroupId,
    owner: UserId,
    members: &[UserId],
) {
    let mut ops = vec![
        Op::CreateGroup(new_group(gid, owner, &format!("list group {gid}"))),
        Op::AddMember {
            group: gid,
            user: owner,
            role: Role::Owner,
        },
    ];
    ops.extend(members.iter().map(|&user| Op::AddMember {
        group: gid,
        user,
        role: Role::Member,
    }));
    store
        .commit(Commit {
            ops,
            ..Commit::default()
        })
        .await
        .expect("create group");
}

/// A message to group `gid` from `sender`, mentioning `mentions` (and everyone, with `all`).
async fn group_say(
    store: &dyn Store,
    gid: xinge_core::GroupId,
    sender: UserId,
    mentions: &[UserId],
    all: bool,
) {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let mut c = group_send(gid, sender, &format!("list-{gid}-{n}"), 500);
    if let Some(m) = &mut c.message {
        m.mentions = mentions.to_vec();
        m.mention_all = all;
    }
    store.commit(c).await.expect("group send");
}

/// The list as the IM layer computed it before the batched read: per membership, its
/// head, for a group the caller's membership or former membership, the message at the
/// head, and for a group its record and the unread mentions.
async fn list_one_by_one(store: &dyn Store, user: UserId) -> Vec<ConversationRow> {
    let mut out = Vec::new();
    for m in store.memberships(user, 1_000).await.unwrap() {
        let mut head = store.conv_head(m.conv).await.unwrap();
        if let ConvId::Group(g) = m.conv
            && store.group_member(g, user).await.unwrap().is_none()
        {
            match store.former_member(g, user).await.unwrap() {
                Some((_, left)) => head = head.min(left),
                None => continue,
            }
        }
        let last_message = store
            .messages(m.conv, head, head, 1, false)
            .await
            .unwrap()
            .pop();
        let (name, unread_mentions) = match m.conv {
            ConvId::Group(g) => (
                store.group(g).await.unwrap().map(|g| g.name),
                store
                    .mention_count(user, m.conv, m.read_seq, crate::LIST_MENTIONS_CAP)
                    .await
                    .unwrap(),
            ),
            ConvId::Direct(..) => (None, 0),
        };
        out.push(ConversationRow {
            conv: m.conv,
            read_seq: m.read_seq,
            head,
            last_message,
            name,
            unread_mentions,
        });
    }
    out.sort_by_key(|r| r.conv);
    out
}

pub(super) async fn conversation_list_matches_the_reads_one_by_one(store: &dyn Store) {
    let me = user(store, "list_me").await;
    let (p1, p2, p3, owner) = (
        user(store, "list_p1").await,
        user(store, "list_p2").await,
        user(store, "list_p3").await,
        user(store, "list_owner").await,
    );
    // 1:1: two with messages both ways, one joined with no message yet.
    send(store, me, p1, "list-1").await;
    send(store, p1, me, "list-2").await;
    send(store, p2, me, "list-3").await;
    let quiet = ConvId::direct(me, p3);
    store
        .commit(Commit {
            ops: vec![Op::Join {
                user: me,
                conv: quiet,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();

    // A group with more unread mentions of me than a list counts, read up to some of them.
    let busy = gid();
    create_group(store, busy, owner, &[me]).await;
    for k in 0..60 {
        group_say(store, busy, owner, &[me], false).await;
        if k == 4 {
            store
                .commit(Commit {
                    ops: vec![Op::AdvanceRead {
                        user: me,
                        conv: ConvId::Group(busy),
                        seq: 5,
                    }],
                    ..Commit::default()
                })
                .await
                .unwrap();
        }
    }
    for _ in 0..50 {
        group_say(store, busy, owner, &[], true).await;
    }
    // A group with a few mentions, and one I left after which it went on.
    let small = gid();
    create_group(store, small, owner, &[me]).await;
    group_say(store, small, owner, &[me], false).await;
    group_say(store, small, owner, &[p1], false).await;
    let left = gid();
    create_group(store, left, owner, &[me, p1]).await;
    group_say(store, left, owner, &[me], false).await;
    group_say(store, left, me, &[], false).await;
    store
        .commit(Commit {
            ops: vec![Op::RemoveMember {
                group: left,
                user: me,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    group_say(store, left, owner, &[], true).await;
    group_say(store, left, p1, &[], false).await;
    // Removing a member takes the group off their list; marking it read (here, as far as
    // they were a member) puts it back, as the leave event's read does.
    store
        .commit(Commit {
            ops: vec![Op::AdvanceRead {
                user: me,
                conv: ConvId::Group(left),
                seq: 2,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    // A group in my list that I was never a member of: left out.
    let stranger = gid();
    create_group(store, stranger, owner, &[]).await;
    group_say(store, stranger, owner, &[], false).await;
    store
        .commit(Commit {
            ops: vec![Op::Join {
                user: me,
                conv: ConvId::Group(stranger),
            }],
            ..Commit::default()
        })
        .await
        .unwrap();

    let expected = list_one_by_one(store, me).await;
    let mut listed = store.conversation_list(me, 1_000).await.unwrap();
    listed.sort_by_key(|r| r.conv);
    assert_eq!(
        listed.len(),
        expected.len(),
        "one row per listed conversation"
    );
    for (got, want) in listed.iter().zip(&expected) {
        assert_eq!(got, want, "the row of {}", want.conv);
    }

    // What the rows hold, so that the two ways cannot agree on nothing.
    let mut convs: Vec<ConvId> = listed.iter().map(|r| r.conv).collect();
    let mut want = vec![
        ConvId::direct(me, p1),
        ConvId::direct(me, p2),
        quiet,
        ConvId::Group(busy),
        ConvId::Group(small),
        ConvId::Group(left),
    ];
    convs.sort();
    want.sort();
    assert_eq!(convs, want, "every membership but the stranger's group");
    let row = |conv: ConvId| listed.iter().find(|r| r.conv == conv).unwrap();
    let d1 = row(ConvId::direct(me, p1));
    assert_eq!(
        (d1.head, d1.name.as_deref(), d1.unread_mentions),
        (2, None, 0)
    );
    assert_eq!(d1.last_message.as_ref().map(|m| m.sender), Some(p1));
    let q = row(quiet);
    assert_eq!((q.head, q.read_seq, q.last_message.is_none()), (0, 0, true));
    let b = row(ConvId::Group(busy));
    assert_eq!((b.head, b.read_seq), (110, 5));
    assert_eq!(b.unread_mentions, crate::LIST_MENTIONS_CAP, "capped");
    assert_eq!(b.name, Some(format!("list group {busy}")));
    assert_eq!(b.last_message.as_ref().map(|m| m.conv_seq), Some(110));
    let s = row(ConvId::Group(small));
    assert_eq!((s.head, s.unread_mentions), (2, 1));
    let l = row(ConvId::Group(left));
    assert_eq!(store.conv_head(ConvId::Group(left)).await.unwrap(), 4);
    assert_eq!(l.head, 2, "a former member reads up to where they left");
    assert_eq!(l.last_message.as_ref().map(|m| m.sender), Some(me));
    // The mention before their cursor is read; the mention of everyone after they left
    // is counted, as the reads count it.
    assert_eq!((l.read_seq, l.unread_mentions), (2, 1));

    // The unread messages a badge sums: those of the listed rows, without reading every
    // conversation (the quiet one and the one read up to its head are not there).
    let mut want: Vec<(ConvId, u64)> = listed
        .iter()
        .filter(|r| r.head > r.read_seq)
        .map(|r| (r.conv, r.head - r.read_seq))
        .collect();
    want.sort();
    let unread = async |user| {
        let mut u = store.unread(user, 1_000).await.unwrap();
        u.sort();
        u
    };
    assert_eq!(unread(me).await, want);
    let mut plain = vec![
        (ConvId::direct(me, p1), 1),
        (ConvId::direct(me, p2), 1),
        (ConvId::Group(busy), 105),
        (ConvId::Group(small), 2),
    ];
    plain.sort();
    assert_eq!(want, plain);
    // Read up to its head, a 1:1 conversation leaves the set (p1 read theirs by sending);
    // its next message puts it back.
    let d1 = ConvId::direct(me, p1);
    read(store, me, d1, 2).await;
    assert!(!unread(me).await.iter().any(|(c, _)| *c == d1));
    assert!(unread(p1).await.is_empty());
    let candidates = |user| async move {
        let c = store.unread_candidates(user, 1_000).await.unwrap();
        c.into_iter()
            .filter(|(c, ..)| matches!(c, ConvId::Direct(..)))
            .map(|(c, ..)| c)
            .collect::<Vec<_>>()
    };
    assert_eq!(candidates(me).await, vec![ConvId::direct(me, p2)]);
    assert_eq!(candidates(p1).await, vec![]);
    send(store, p1, me, "list-4").await;
    assert!(unread(me).await.contains(&(d1, 1)));
    assert_eq!(candidates(p1).await, vec![], "not the sender's");
}

/// A reader reads up to the head and asks for its unread messages (which drops what it
/// found read from the set) while messages keep coming: after every drop, a conversation
/// with a message after the reader's cursor is in the set. A drop that raced a message
/// would lose that message from every later badge, until the next one came. The race is
/// narrow, so this checks the invariant over many interleavings rather than forcing it;
/// pg/tests.rs forces it on PostgreSQL (fjall's single writer cannot interleave).
pub(super) async fn the_set_of_unread_conversations_loses_none_to_a_racing_read(store: &dyn Store) {
    let (a, b) = (user(store, "news_a").await, user(store, "news_b").await);
    let conv = ConvId::direct(a, b);
    const SENDS: usize = 150;
    let done = std::sync::atomic::AtomicBool::new(false);
    let sender = async {
        for k in 0..SENDS {
            send(store, a, b, &format!("news-{k}")).await;
        }
        done.store(true, Ordering::Relaxed);
    };
    let reader = async {
        let mut checks = 0;
        while !done.load(Ordering::Relaxed) || checks == 0 {
            let head = store.conv_head(conv).await.unwrap();
            if head > 0 {
                read(store, b, conv, head).await;
            }
            store.unread(b, 100).await.unwrap();
            // Both read after the drop: a message at `head` was committed before the
            // candidates were read, so it must be among them.
            let (read_seq, head) = (
                store.read_cursor(b, conv).await.unwrap(),
                store.conv_head(conv).await.unwrap(),
            );
            let found = store.unread_candidates(b, 100).await.unwrap();
            if head > read_seq {
                assert!(
                    found.iter().any(|(c, ..)| *c == conv),
                    "message {head} after the cursor at {read_seq}, but the conversation is not in the set"
                );
            }
            checks += 1;
            tokio::task::yield_now().await;
        }
        checks
    };
    let ((), checks) = futures_util::future::join(sender, reader).await;
    assert!(checks > 1, "the reader ran alongside the sender");
    let last = store.conv_head(conv).await.unwrap();
    assert_eq!(last, SENDS as u64);
}

async fn read(store: &dyn Store, user: UserId, conv: ConvId, seq: u64) {
    store
        .commit(Commit {
            ops: vec![Op::AdvanceRead { user, conv, seq }],
            ..Commit::default()
        })
        .await
        .unwrap();
}
