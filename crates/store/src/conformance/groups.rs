//! Groups: fan-out by size, atomic with membership and the group checks.

use super::*;

pub(super) async fn groups_fan_out_by_size_atomically_with_membership(store: &dyn Store) {
    let owner = user(store, "g_owner").await;
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(user(store, "g_member").await);
    }
    let gid =
        xinge_core::GroupId(xinge_core::now_ms() * 1000 + UNIQUE.fetch_add(1, Ordering::Relaxed));
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
pub(super) async fn recipients_follow_membership_changed_by_earlier_commits(store: &dyn Store) {
    let owner = user(store, "l_owner").await;
    let (a, b, c) = (
        user(store, "l_a").await,
        user(store, "l_b").await,
        user(store, "l_c").await,
    );
    let gid =
        xinge_core::GroupId(xinge_core::now_ms() * 1000 + UNIQUE.fetch_add(1, Ordering::Relaxed));
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
