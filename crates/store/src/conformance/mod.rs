//! The conformance suite. A backend is done when `run` passes on it. Every check makes
//! its own users (unique names), so the suite runs on a store that already holds data.

mod accounts;
mod chat;
mod groups;
mod lists;
mod media;

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
    accounts::users_are_unique_and_sequential(store).await;
    accounts::devices_and_profiles(store).await;
    accounts::relations(store).await;
    chat::messages_get_continuous_sequences(store).await;
    chat::dedup_returns_the_original(store).await;
    chat::history_pages_both_ways(store).await;
    chat::read_cursors_are_monotonic(store).await;
    chat::concurrent_commits_keep_sequences_continuous(store).await;
    chat::a_recall_removes_the_content_from_every_read(store).await;
    // After the concurrent check, so that a pooling backend has its connections open and
    // the repeats really race.
    chat::racing_repeats_commit_once(store).await;
    groups::groups_fan_out_by_size_atomically_with_membership(store).await;
    groups::recipients_follow_membership_changed_by_earlier_commits(store).await;
    lists::conversation_list_matches_the_reads_one_by_one(store).await;
    lists::the_set_of_unread_conversations_loses_none_to_a_racing_read(store).await;
    chat::the_outbox_keeps_events_in_order_until_delivered_or_dead(store).await;
    chat::notices_queue_with_their_commit_and_settings_are_per_user(store).await;
    media::uploads_expire_and_media_count_their_blobs(store).await;
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
            external_id: None,
            outbox: vec![],
        })
        .await
        .expect("create user")
        .id
}

/// The commit of a 1:1 message from `a` to `b` with `content`, write fan-out to both
/// inboxes, idempotent by `cmid`.
pub fn direct(a: UserId, b: UserId, cmid: &str, content: serde_json::Value) -> Commit {
    let conv = ConvId::direct(a, b);
    Commit {
        dedup: Some((a, cmid.to_owned())),
        message: Some(NewMessage {
            conv,
            sender: a,
            sender_device: None,
            client_msg_id: cmid.to_owned(),
            sent_at_ms: xinge_core::now_ms(),
            mentions: vec![],
            mention_all: false,
            body: MessageBody::Content { content },
        }),
        message_to: vec![a, b],
        ops: vec![Op::Join { user: a, conv }, Op::Join { user: b, conv }],
        ..Commit::default()
    }
}

/// A 1:1 message from `a` to `b` with write fan-out to both inboxes.
pub async fn send(store: &dyn Store, a: UserId, b: UserId, cmid: &str) -> Committed {
    let text = serde_json::json!({ "text": cmid });
    store
        .commit(direct(a, b, cmid, text))
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

fn group_msg(
    gid: xinge_core::GroupId,
    sender: UserId,
    cmid: &str,
    body: MessageBody,
) -> NewMessage {
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
pub(crate) fn new_group(gid: xinge_core::GroupId, owner: UserId, name: &str) -> GroupRecord {
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
pub fn group_send(gid: xinge_core::GroupId, sender: UserId, cmid: &str, threshold: u64) -> Commit {
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
