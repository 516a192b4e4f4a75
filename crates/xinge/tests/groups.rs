//! Groups end to end: fan-out in both modes, the switch between them, membership changes
//! at their place in the timeline, who-read lists, and authorization.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use xinge_client::api::{GroupEvent, Message, MessageBody, SendRequest};
use xinge_client::{Device, DeviceOptions, Http, Transport};
use xinge_core::{ConvId, UserId};

const WAIT: Duration = Duration::from_secs(60);

fn text(conv: ConvId, cmid: &str) -> SendRequest {
    SendRequest {
        conv: Some(conv),
        client_msg_id: cmid.into(),
        content: serde_json::json!({ "text": cmid }),
        ..Default::default()
    }
}

fn messages_device(http: &Http, transport: Transport) -> Device {
    let opts = DeviceOptions {
        transport,
        inbox_events: false,
        messages: true,
        repair_interval: Duration::from_secs(2),
        ..DeviceOptions::default()
    };
    Device::start(http.clone(), opts)
}

/// Reads a device's messages of `conv` until it has the one at `last`; checks they come
/// exactly once and in order, starting at `first`.
async fn read_until(dev: &Device, conv: ConvId, first: u64, last: u64) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    while got.last().map_or(first - 1, |m| m.conv_seq) < last {
        let m = dev.next_message(WAIT).await.unwrap_or_else(|| {
            panic!(
                "timed out at {:?} waiting for {last}",
                got.last().map(|m| m.conv_seq)
            )
        });
        if m.conv != conv {
            continue;
        }
        let want = got.last().map_or(first, |p| p.conv_seq + 1);
        assert_eq!(m.conv_seq, want, "every message once, in conv_seq order");
        got.push(m);
    }
    got
}

/// Registers `n` users (concurrently) and logs each in.
async fn many_users(server: &Server, prefix: &str, n: usize) -> Vec<(Http, UserId)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (base, sem, name) = (server.base.clone(), sem.clone(), format!("{prefix}user{i}"));
        tasks.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let http = Http::new(base);
            http.register(&name, PASSWORD).await.unwrap();
            let (h, r) = http.login(&name, PASSWORD, "d1").await.unwrap();
            (i, h, r.user_id)
        });
    }
    let mut out: Vec<Option<(Http, UserId)>> = (0..n).map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, h, id) = r.unwrap();
        out[i] = Some((h, id));
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn head_of(msgs: &[Message]) -> u64 {
    msgs.last().map_or(0, |m| m.conv_seq)
}

async fn full_history(http: &Http, conv: ConvId) -> Vec<Message> {
    let mut all = Vec::new();
    loop {
        let page = http
            .history(conv, None, Some(head_of(&all)), 500)
            .await
            .unwrap();
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_member_group_delivers_everything_once_in_order_and_membership_changes_take_effect_in_place()
 {
    let server = start(|_| {}).await;
    let users = many_users(&server, "m", 101).await;
    let (owner, _) = &users[0];
    let ids: Vec<UserId> = users[1..100].iter().map(|u| u.1).collect();
    let g = owner.create_group("hundred", &ids).await.unwrap();
    assert_eq!((g.member_count, g.fanout.as_str()), (100, "write"));
    let conv = g.conv;

    // One device per member, a second (WebSocket) device for ten of them.
    let mut devices: Vec<(usize, Device)> = Vec::new();
    for (i, (http, _)) in users[..100].iter().enumerate() {
        devices.push((
            i,
            messages_device(
                http,
                if i % 2 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Ws
                },
            ),
        ));
    }
    for (i, (http, _)) in users[..10].iter().enumerate() {
        let (second, _) = http
            .login(&format!("muser{i}"), PASSWORD, "d2")
            .await
            .unwrap();
        devices.push((i, messages_device(&second, Transport::Ws)));
    }
    for (_, d) in &devices {
        assert!(d.wait_connected(WAIT).await);
    }

    // Five senders, concurrently; then a removal; then more; then a newcomer.
    let burst = |round: usize| {
        let users = &users;
        async move {
            let mut tasks = Vec::new();
            for (s, (http, _)) in users.iter().enumerate().take(6).skip(1) {
                let http = http.clone();
                tasks.push(tokio::spawn(async move {
                    for k in 0..10 {
                        http.send(&text(conv, &format!("r{round}-s{s}-{k}")))
                            .await
                            .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    burst(0).await;
    let removed = users[50].1;
    owner.remove_member(g.group_id, removed).await.unwrap();
    let code = users[50]
        .0
        .send(&text(conv, "still here?"))
        .await
        .unwrap_err()
        .code()
        .unwrap();
    assert_eq!(
        code.as_str(),
        "not_found",
        "a removed member can no longer send"
    );
    burst(1).await;
    let newcomer = &users[100];
    owner.add_members(g.group_id, &[newcomer.1]).await.unwrap();
    let late = messages_device(&newcomer.0, Transport::Tcp);
    burst(2).await;

    let all = full_history(owner, conv).await;
    let head = head_of(&all);
    assert_eq!(head, 1 + 50 + 1 + 50 + 1 + 50);
    let removal = all
        .iter()
        .find(|m| {
            matches!(
                m.body,
                MessageBody::System {
                    event: GroupEvent::Removed { .. }
                }
            )
        })
        .unwrap()
        .conv_seq;
    let joined = all.iter().find(|m| matches!(&m.body, MessageBody::System { event: GroupEvent::Joined { users, .. } } if users == &vec![newcomer.1])).unwrap().conv_seq;

    for (i, d) in &devices {
        let last = if *i == 50 { removal } else { head };
        let got = read_until(d, conv, 1, last).await;
        assert_eq!(got.len() as u64, last);
        if *i == 50 {
            assert!(
                d.next_message(Duration::from_millis(500)).await.is_none(),
                "nothing after the removal"
            );
        }
    }
    let got = read_until(&late, conv, joined, head).await;
    assert!(
        matches!(got[0].body, MessageBody::System { .. }),
        "the newcomer's view starts at its join"
    );
    // The removed member keeps the part it was a member for, and nothing after it.
    let kept = full_history(&users[50].0, conv).await;
    assert_eq!(head_of(&kept), removal - 1);
    let early = newcomer
        .0
        .history(conv, None, Some(0), 500)
        .await
        .unwrap()
        .messages;
    assert_eq!(
        early[0].conv_seq, joined,
        "history starts where the newcomer joined"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_crossing_the_threshold_mid_burst_stays_complete_ordered_and_duplicate_free() {
    let server = start(|c| c.chat.fanout_threshold = 5).await;
    let users = many_users(&server, "t", 8).await;
    let (owner, _) = &users[0];
    let g = owner
        .create_group("switch", &[users[1].1, users[2].1, users[3].1])
        .await
        .unwrap();
    let conv = g.conv;
    let devices: Vec<Device> = users
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            messages_device(
                h,
                if i % 2 == 0 {
                    Transport::Ws
                } else {
                    Transport::Tcp
                },
            )
        })
        .collect();
    for d in &devices {
        assert!(d.wait_connected(WAIT).await);
    }
    // Each sender sends 10, says so, goes on to 30 and waits there until the shrink has
    // begun, then sends its last 10: so both changes happen with sends before, while and
    // after them, whatever the machine's speed.
    let (said, mut progress) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (shrink, shrinking) = tokio::sync::watch::channel(false);
    let mut senders = Vec::new();
    for (s, (http, _)) in users.iter().enumerate().take(4).skip(1) {
        let http = http.clone();
        let said = said.clone();
        let mut shrinking = shrinking.clone();
        senders.push(tokio::spawn(async move {
            for k in 0..40 {
                if k == 30 {
                    let _ = said.send(30);
                    shrinking.wait_for(|s| *s).await.unwrap();
                }
                http.send(&text(conv, &format!("s{s}-{k}"))).await.unwrap();
                if k == 9 {
                    let _ = said.send(10);
                }
            }
        }));
    }
    /// Until all three senders have said `n`.
    async fn reached(progress: &mut tokio::sync::mpsc::UnboundedReceiver<usize>, n: usize) {
        let mut count = 0;
        while count < 3 {
            if progress.recv().await == Some(n) {
                count += 1;
            }
        }
    }
    // Grow past the threshold (read fan-out) and shrink back (write fan-out) mid-burst.
    let grown: Vec<UserId> = users[4..8].iter().map(|u| u.1).collect();
    reached(&mut progress, 10).await;
    owner.add_members(g.group_id, &grown[..2]).await.unwrap();
    owner.add_members(g.group_id, &grown[2..]).await.unwrap();
    assert_eq!(owner.group(g.group_id).await.unwrap().fanout, "read");
    reached(&mut progress, 30).await;
    shrink.send(true).unwrap();
    owner.remove_member(g.group_id, grown[0]).await.unwrap();
    owner.remove_member(g.group_id, grown[1]).await.unwrap();
    owner.remove_member(g.group_id, grown[2]).await.unwrap();
    assert_eq!(owner.group(g.group_id).await.unwrap().fanout, "write");
    for s in senders {
        s.await.unwrap();
    }
    owner.send(&text(conv, "the end")).await.unwrap();

    let all = full_history(owner, conv).await;
    let head = head_of(&all);
    assert_eq!(all.len() as u64, head, "the timeline is continuous");
    let contents = all
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Content { .. }))
        .count();
    assert_eq!(contents, 121);
    for (i, d) in devices.iter().enumerate() {
        let member = users[i].1;
        let join = all
            .iter()
            .find(|m| match &m.body {
                MessageBody::System {
                    event: GroupEvent::Joined { users, .. },
                } => users.contains(&member),
                MessageBody::System {
                    event: GroupEvent::Created { .. },
                } => i < 4,
                _ => false,
            })
            .unwrap()
            .conv_seq;
        let leave = all.iter().find(|m| matches!(m.body, MessageBody::System { event: GroupEvent::Removed { user, .. } } if user == member)).map(|m| m.conv_seq);
        let got = read_until(d, conv, join, leave.unwrap_or(head)).await;
        let expect: Vec<_> = all
            .iter()
            .filter(|m| m.conv_seq >= join && m.conv_seq <= leave.unwrap_or(head))
            .map(|m| m.msg_id)
            .collect();
        assert_eq!(
            got.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
            expect,
            "member {i} sees exactly its part of the timeline"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_member_group_reaches_online_members_and_offline_ones_catch_up_with_who_read_lists()
{
    // The app's own server imports the members (no passwords to hash) and signs in the
    // ones that come online with tokens it issues.
    let server = start(with_admin).await;
    let n = 10_000;
    let names: Vec<String> = (0..n).map(|i| format!("big{i}")).collect();
    let ids = import_users(&server, &names).await;
    let owner = issued_login(&server, ids[0], "d").await;
    let g = owner
        .create_group("ten thousand", &ids[1..1000])
        .await
        .unwrap();
    for chunk in ids[1000..].chunks(1000) {
        owner.add_members(g.group_id, chunk).await.unwrap();
    }
    let info = owner.group(g.group_id).await.unwrap();
    assert_eq!((info.member_count, info.fanout.as_str()), (10_000, "read"));
    let conv = g.conv;

    // 40 members online, over TCP and WebSocket; the rest offline.
    let mut online = Vec::new();
    for i in (100..n).step_by(245).take(40) {
        let h = issued_login(&server, ids[i], "d").await;
        online.push((
            h.clone(),
            messages_device(
                &h,
                if online.len() % 2 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Ws
                },
            ),
        ));
    }
    for (_, d) in &online {
        assert!(d.wait_connected(WAIT).await);
    }
    let mut sent = Vec::new();
    for k in 0..5 {
        sent.push(
            owner
                .send(&text(conv, &format!("big-{k}")))
                .await
                .unwrap()
                .conv_seq,
        );
    }
    for (h, d) in &online {
        let joined = h.group_members(g.group_id, None, 1).await.unwrap();
        drop(joined);
        let mut seqs = Vec::new();
        while seqs.len() < 5 {
            let m = d
                .next_message(WAIT)
                .await
                .expect("online member gets the message");
            if matches!(m.body, MessageBody::Content { .. }) {
                seqs.push(m.conv_seq);
            }
        }
        assert_eq!(seqs, sent, "every message once, in order");
    }
    // An offline member catches up when it connects.
    let late = issued_login(&server, ids[n - 1], "d").await;
    let dev = messages_device(&late, Transport::Ws);
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let m = dev
            .next_message(WAIT)
            .await
            .expect("offline member catches up");
        if matches!(m.body, MessageBody::Content { .. }) {
            seqs.push(m.conv_seq);
        }
    }
    assert_eq!(seqs, sent);
    let convs = late.conversations().await.unwrap().conversations;
    // Five messages, and the event of its own batch joining (system events count).
    assert_eq!(convs[0].unread, 6, "unread in a read fan-out group");

    // Members read up to different points; the who-read lists follow the cursors.
    let readers: Vec<&(Http, Device)> = online.iter().collect();
    for (i, (h, _)) in readers.iter().enumerate() {
        let upto = if i < 10 { sent[4] } else { sent[1] };
        h.mark_read(conv, upto).await.unwrap();
    }
    let started = std::time::Instant::now();
    let st = owner
        .read_state_page(conv, sent[4], None, 1000)
        .await
        .unwrap();
    println!(
        "read_state over 10,000 members: {:?} (debug build)",
        started.elapsed()
    );
    assert_eq!((st.read_count, st.unread_count), (10, 9_989));
    let st = owner
        .read_state_page(conv, sent[1], None, 1000)
        .await
        .unwrap();
    assert_eq!((st.read_count, st.unread_count), (40, 9_959));
    let mut unread = st.unread_by.len();
    let mut after = st.next_after;
    while let Some(a) = after {
        let page = owner
            .read_state_page(conv, sent[1], Some(a), 1000)
            .await
            .unwrap();
        unread += page.unread_by.len();
        after = page.next_after;
    }
    assert_eq!(
        unread, 9_959,
        "paging the unread list visits every unread member once"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_read_and_send_muted_members_cannot_talk_and_only_admins_manage() {
    let server = start(|_| {}).await;
    let users = many_users(&server, "z", 5).await;
    let [
        (owner, _),
        (admin, admin_id),
        (member, member_id),
        (outsider, outsider_id),
        (invitee, invitee_id),
    ] = &users[..]
    else {
        unreachable!()
    };
    let g = owner
        .create_group("rules", &[*admin_id, *member_id])
        .await
        .unwrap();
    let conv = g.conv;
    owner.set_admin(g.group_id, *admin_id, true).await.unwrap();
    let m = member.send(&text(conv, "hi")).await.unwrap();

    // Outsiders see nothing and touch nothing.
    assert_eq!(
        code(outsider.send(&text(conv, "x")).await.map(drop)),
        "not_found"
    );
    assert_eq!(
        code(outsider.history(conv, None, None, 10).await.map(drop)),
        "not_found"
    );
    assert_eq!(
        code(outsider.read_state(conv, m.conv_seq).await.map(drop)),
        "not_found"
    );
    assert_eq!(
        code(outsider.group(g.group_id).await.map(drop)),
        "not_found"
    );
    assert_eq!(
        code(outsider.group_members(g.group_id, None, 10).await.map(drop)),
        "not_found"
    );
    assert_eq!(
        code(outsider.mark_read(conv, 1).await.map(drop)),
        "not_found"
    );
    assert_eq!(
        code(outsider.add_members(g.group_id, &[*outsider_id]).await),
        "not_found"
    );
    assert_eq!(
        code(outsider.join_group(g.group_id).await),
        "not_found",
        "no invitation"
    );

    // Only admins manage.
    assert_eq!(
        code(member.remove_member(g.group_id, *admin_id).await),
        "forbidden"
    );
    assert_eq!(
        code(member.mute_member(g.group_id, *admin_id, true).await),
        "forbidden"
    );
    assert_eq!(code(member.mute_all(g.group_id, true).await), "forbidden");
    assert_eq!(
        code(
            member
                .update_group(g.group_id, &Default::default())
                .await
                .map(drop)
        ),
        "forbidden"
    );
    assert_eq!(code(member.dismiss_group(g.group_id).await), "forbidden");
    assert_eq!(
        code(admin.set_admin(g.group_id, *member_id, true).await),
        "forbidden",
        "only the owner appoints"
    );
    assert_eq!(
        code(admin.remove_member(g.group_id, owner_id(&users)).await),
        "forbidden"
    );
    assert_eq!(
        code(owner.leave_group(g.group_id).await),
        "forbidden",
        "the owner transfers first"
    );
    let mention_all = SendRequest {
        mention_all: true,
        ..text(conv, "@all")
    };
    assert_eq!(code(member.send(&mention_all).await.map(drop)), "forbidden");

    // Mutes: one member, then everyone but admins.
    admin
        .mute_member(g.group_id, *member_id, true)
        .await
        .unwrap();
    assert_eq!(
        code(member.send(&text(conv, "muted")).await.map(drop)),
        "muted"
    );
    admin
        .mute_member(g.group_id, *member_id, false)
        .await
        .unwrap();
    assert_eq!(code(member.send(&text(conv, "free")).await.map(drop)), "ok");
    admin.mute_all(g.group_id, true).await.unwrap();
    assert_eq!(
        code(member.send(&text(conv, "quiet")).await.map(drop)),
        "muted"
    );
    assert_eq!(
        code(admin.send(&mention_all).await.map(drop)),
        "ok",
        "admins talk and may @all"
    );
    admin.mute_all(g.group_id, false).await.unwrap();

    // Mentions are counted for the mentioned.
    let mention = SendRequest {
        mentions: vec![*member_id],
        ..text(conv, "@member")
    };
    admin.send(&mention).await.unwrap();
    let c = member
        .conversations()
        .await
        .unwrap()
        .conversations
        .into_iter()
        .find(|c| c.conv == conv)
        .unwrap();
    assert_eq!(c.unread_mentions, 2, "@member and @all");
    assert_eq!(c.name.as_deref(), Some("rules"));

    // A member invites; the invitee joins.
    member
        .add_members(g.group_id, &[*invitee_id])
        .await
        .unwrap();
    assert_eq!(
        code(invitee.history(conv, None, None, 1).await.map(drop)),
        "not_found",
        "invited is not joined"
    );
    let invite = invitee.sync(0, None).await.unwrap().entries;
    assert!(
        invite
            .iter()
            .any(|e| matches!(e.event, xinge_client::api::Event::GroupInvite { .. }))
    );
    invitee.join_group(g.group_id).await.unwrap();
    assert_eq!(
        code(invitee.send(&text(conv, "hello all")).await.map(drop)),
        "ok"
    );

    // Rename, transfer, leave, dismiss.
    let renamed = admin
        .update_group(
            g.group_id,
            &xinge_client::api::UpdateGroupRequest {
                name: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "renamed");
    owner.transfer_group(g.group_id, *admin_id).await.unwrap();
    assert_eq!(owner.group(g.group_id).await.unwrap().owner, *admin_id);
    owner.leave_group(g.group_id).await.unwrap();
    assert_eq!(
        code(owner.send(&text(conv, "gone")).await.map(drop)),
        "not_found"
    );
    admin.dismiss_group(g.group_id).await.unwrap();
    assert_eq!(
        code(member.send(&text(conv, "after")).await.map(drop)),
        "not_found"
    );
    server.stop().await;
}

fn owner_id(users: &[(Http, UserId)]) -> UserId {
    users[0].1
}
