//! Messages: sequences, dedup, history pages, read cursors, concurrent commits.

use super::*;

pub(super) async fn messages_get_continuous_sequences(store: &dyn Store) {
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

pub(super) async fn dedup_returns_the_original(store: &dyn Store) {
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
pub(super) async fn racing_repeats_commit_once(store: &dyn Store) {
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

pub(super) async fn history_pages_both_ways(store: &dyn Store) {
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

pub(super) async fn read_cursors_are_monotonic(store: &dyn Store) {
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

pub(super) async fn concurrent_commits_keep_sequences_continuous(store: &dyn Store) {
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

/// A recall rewrites the recalled message where it is stored: every read of it afterwards
/// (history, an inbox entry, the conversation list) has no content; the rest of the
/// timeline is untouched, and recalling a message that does not exist changes nothing.
pub(super) async fn a_recall_removes_the_content_from_every_read(store: &dyn Store) {
    let a = user(store, "rc_a").await;
    let b = user(store, "rc_b").await;
    let conv = ConvId::direct(a, b);
    send(store, a, b, "keep me").await;
    send(store, a, b, "take me back").await;
    let recall = |conv_seq| Op::Redact {
        conv,
        conv_seq,
        body: MessageBody::Recalled { by: a, at_ms: 77 },
    };
    store
        .commit(Commit {
            ops: vec![recall(2), recall(99)],
            ..Default::default()
        })
        .await
        .unwrap();
    let msgs = store.messages(conv, 1, 10, 10, false).await.unwrap();
    assert_eq!(msgs.len(), 2, "no message appears or goes");
    assert!(matches!(msgs[0].body, MessageBody::Content { .. }));
    assert_eq!(msgs[1].body, MessageBody::Recalled { by: a, at_ms: 77 });
    assert_eq!((msgs[1].conv_seq, msgs[1].sender), (2, a));
    let reads = [
        serde_json::to_string(&store.messages(conv, 2, 2, 1, false).await.unwrap()).unwrap(),
        serde_json::to_string(&store.inbox(b, 0, 10).await.unwrap().0).unwrap(),
        format!("{:?}", store.conversation_list(b, 10).await.unwrap()),
    ];
    // The text as JSON, or as the Debug form of a JSON value (the client_msg_id, which the
    // helper made the same string, stays).
    for read in reads {
        let content = ["\"text\":\"take me back\"", "String(\"take me back\")"];
        assert!(!content.iter().any(|c| read.contains(c)), "{read}");
    }
    assert_eq!(store.conv_head(conv).await.unwrap(), 2);
}

/// Events for the app's server are written with their commit, read oldest first, removed
/// once delivered, moved to the dead letters with why, and replayed from there.
pub(super) async fn the_outbox_keeps_events_in_order_until_delivered_or_dead(store: &dyn Store) {
    // The outbox is shared: clear what earlier checks left (none write events).
    let old = store.outbox(0, 1_000_000).await.unwrap();
    store
        .outbox_done(&old.iter().map(|r| r.seq).collect::<Vec<_>>())
        .await
        .unwrap();

    let a = user(store, "ob_a").await;
    let b = user(store, "ob_b").await;
    let conv = ConvId::direct(a, b);
    let mut sends = Vec::new();
    for i in 0..3 {
        let cmid = format!("ob-{i}");
        let mut c = super::direct(
            a,
            b,
            &cmid,
            serde_json::json!({ "text": format!("event {i}") }),
        );
        c.outbox = vec![
            crate::OutboxEvent::Message("message.sent"),
            crate::OutboxEvent::Other {
                kind: "test.other",
                data: serde_json::json!({ "i": i }),
            },
        ];
        sends.push(c.clone());
        store.commit(c).await.unwrap();
    }
    // A retried send writes no event again.
    store.commit(sends[0].clone()).await.unwrap();
    let events = store.outbox(0, 100).await.unwrap();
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first"
    );
    let parsed: Vec<serde_json::Value> = events
        .iter()
        .map(|r| serde_json::from_str(&r.event).unwrap())
        .collect();
    for (i, pair) in parsed.chunks(2).enumerate() {
        assert_eq!(pair[0]["type"], "message.sent");
        assert_eq!(
            pair[0]["data"]["message"]["content"]["text"],
            format!("event {i}")
        );
        assert_eq!(pair[0]["data"]["message"]["conv_seq"], i as u64 + 1);
        assert_eq!(pair[1]["type"], "test.other");
        assert_eq!(pair[1]["data"]["i"], i as u64);
    }
    let ids: std::collections::HashSet<_> = parsed
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 6, "every event its own id");
    assert!(store.outbox_depth(0).await.unwrap() >= 6);
    // Read after a place: at least what follows it (a backend may start earlier).
    let later = store.outbox(events[3].seq, 100).await.unwrap();
    assert!(later.ends_with(&events[4..]), "{later:?}");
    // Delivered: gone. Given up on: dead letters, then back by replay, as the newest.
    store
        .outbox_done(&[events[0].seq, events[1].seq])
        .await
        .unwrap();
    assert_eq!(store.outbox(0, 100).await.unwrap(), events[2..].to_vec());
    store
        .dead_letter(&events[2..4], "status 500", 42)
        .await
        .unwrap();
    assert_eq!(store.outbox(0, 100).await.unwrap(), events[4..].to_vec());
    let dead = store.dead_letters(0, 100).await.unwrap();
    let mine: Vec<_> = dead
        .iter()
        .filter(|d| d.event == events[2].event || d.event == events[3].event)
        .collect();
    assert_eq!(mine.len(), 2);
    assert!(
        mine.iter()
            .all(|d| d.error == "status 500" && d.at_ms == 42)
    );
    assert!(mine[0].id < mine[1].id);
    assert_eq!(
        store.dead_letters(mine[0].id, 100).await.unwrap()[0].id,
        mine[1].id,
        "paged by id"
    );
    store.replay_dead_letter(mine[0].id).await.unwrap();
    let after = store.outbox(0, 100).await.unwrap();
    assert_eq!(
        after.last().unwrap().event,
        events[2].event,
        "replayed as the newest"
    );
    assert!(after.last().unwrap().seq > events[5].seq);
    assert!(matches!(
        store.replay_dead_letter(mine[0].id).await,
        Err(StoreError::NotFound)
    ));
    // A write that is refused writes none of its events.
    let ev = crate::OutboxEvent::Other {
        kind: "test.refused",
        data: serde_json::json!({}),
    };
    assert!(matches!(
        store
            .set_banned(UserId(u64::MAX), true, std::slice::from_ref(&ev))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .erase_user(UserId(u64::MAX), "nobody-x", "x", &[ev])
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.outbox(0, 100).await.unwrap(),
        after,
        "no event of a refused write"
    );
    // An event read after its message was deleted for everyone tells the message as it
    // is then: its content gone.
    store
        .commit(Commit {
            ops: vec![Op::Redact {
                conv,
                conv_seq: 3,
                body: MessageBody::Deleted { at_ms: 77 },
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let redacted = store.outbox(0, 100).await.unwrap();
    let third: serde_json::Value = serde_json::from_str(&redacted[0].event).unwrap();
    assert_eq!(redacted[0].seq, events[4].seq);
    assert_eq!(
        (&third["type"], &third["data"]["message"]["conv_seq"]),
        (&serde_json::json!("message.sent"), &serde_json::json!(3))
    );
    assert_eq!(
        (
            &third["data"]["message"]["kind"],
            third["data"]["message"].get("content")
        ),
        (&serde_json::json!("deleted"), None),
        "{third}"
    );
    assert_eq!(third["event_id"], parsed[4]["event_id"], "the same event");
    let rest: Vec<u64> = after.iter().map(|r| r.seq).collect();
    store.outbox_done(&rest).await.unwrap();
    assert!(store.outbox(0, 100).await.unwrap().is_empty());
}

/// Notices are queued with their commit (about its message, placed), none for a retried
/// send, read oldest first and gone once done; settings are per user, by key and prefix.
pub(super) async fn notices_queue_with_their_commit_and_settings_are_per_user(store: &dyn Store) {
    // The queue is shared: clear what earlier checks left.
    let old = store.notices(0, 1_000_000).await.unwrap();
    store
        .notices_done(&old.iter().map(|r| r.seq).collect::<Vec<_>>())
        .await
        .unwrap();

    let a = user(store, "nq_a").await;
    let b = user(store, "nq_b").await;
    let conv = ConvId::direct(a, b);
    let mut first = None;
    for i in 0..3 {
        let cmid = format!("nq-{i}");
        let c = Commit {
            notify: vec![crate::Notice {
                user: b,
                about: crate::NoticeAbout::message(),
            }],
            ..super::direct(a, b, &cmid, serde_json::json!({ "text": i }))
        };
        first.get_or_insert_with(|| c.clone());
        store.commit(c).await.unwrap();
    }
    // A retried send queues nothing again; a notice without a message is kept as it is.
    store.commit(first.unwrap()).await.unwrap();
    store
        .commit(Commit {
            notify: vec![crate::Notice {
                user: b,
                about: crate::NoticeAbout::FriendRequest { from: a },
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let queued = store.notices(0, 100).await.unwrap();
    assert_eq!(queued.len(), 4, "{queued:?}");
    assert!(
        queued.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first"
    );
    for (i, n) in queued[..3].iter().enumerate() {
        assert_eq!(n.user, b);
        assert_eq!(
            n.about,
            crate::NoticeAbout::Message {
                conv,
                conv_seq: i as u64 + 1
            }
        );
        assert!(n.at_ms > 0);
    }
    assert_eq!(
        queued[3].about,
        crate::NoticeAbout::FriendRequest { from: a }
    );
    assert!(store.notices_depth(0).await.unwrap() >= 4);
    let later = store.notices(queued[1].seq, 100).await.unwrap();
    assert!(later.ends_with(&queued[2..]), "{later:?}");
    store
        .notices_done(&[queued[0].seq, queued[2].seq])
        .await
        .unwrap();
    assert_eq!(
        store.notices(0, 100).await.unwrap(),
        vec![queued[1].clone(), queued[3].clone()]
    );
    store
        .notices_done(&[queued[1].seq, queued[3].seq])
        .await
        .unwrap();
    assert!(store.notices(0, 100).await.unwrap().is_empty());

    // Settings: by key, by prefix in key order, replaced, removed, never another user's.
    assert_eq!(store.setting(a, "push/phone").await.unwrap(), None);
    store
        .put_setting(a, "push/phone", Some("{\"p\":1}"))
        .await
        .unwrap();
    store
        .put_setting(a, "push/laptop", Some("{\"p\":2}"))
        .await
        .unwrap();
    store.put_setting(a, "push%x", Some("other")).await.unwrap();
    store.put_setting(a, "mute/d1-2", Some("0")).await.unwrap();
    store
        .put_setting(b, "push/phone", Some("b's"))
        .await
        .unwrap();
    store
        .put_setting(a, "push/phone", Some("{\"p\":3}"))
        .await
        .unwrap();
    assert_eq!(
        store.setting(a, "push/phone").await.unwrap().as_deref(),
        Some("{\"p\":3}")
    );
    assert_eq!(
        store.settings(a, "push/", 10).await.unwrap(),
        vec![
            ("push/laptop".to_owned(), "{\"p\":2}".to_owned()),
            ("push/phone".to_owned(), "{\"p\":3}".to_owned()),
        ]
    );
    assert_eq!(store.settings(a, "push/", 1).await.unwrap().len(), 1);
    store.put_setting(a, "push/laptop", None).await.unwrap();
    store.put_setting(a, "push/none", None).await.unwrap();
    assert_eq!(store.settings(a, "push/", 10).await.unwrap().len(), 1);
    assert_eq!(
        store.setting(b, "push/phone").await.unwrap().as_deref(),
        Some("b's")
    );
}
