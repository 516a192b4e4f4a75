//! Accounts, devices, profiles and relations.

use super::*;

pub(super) async fn users_are_unique_and_sequential(store: &dyn Store) {
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
            external_id: None,
            outbox: vec![],
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict)),
        "username is unique"
    );
    // The app's own id: unique, found by, freed when the user is erased.
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let ext = format!("app-{}-{n}", xinge_core::now_ms());
    let new = |name: String, ext: &str| NewUser {
        username: name,
        display_name: "ext".into(),
        password_hash: "x".into(),
        created_at_ms: 3,
        external_id: Some(ext.to_owned()),
        outbox: vec![],
    };
    let with_ext = store
        .create_user(new(format!("ext_{n}_a"), &ext))
        .await
        .unwrap();
    assert_eq!(with_ext.external_id.as_deref(), Some(ext.as_str()));
    let found = store.user_by_external_id(&ext).await.unwrap().unwrap();
    assert_eq!(found, with_ext);
    assert!(matches!(
        store.create_user(new(format!("ext_{n}_b"), &ext)).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        store
            .user_by_name(&format!("ext_{n}_b"))
            .await
            .unwrap()
            .is_none(),
        "nothing half-made"
    );
    assert!(
        store
            .user_by_external_id("no-such-id")
            .await
            .unwrap()
            .is_none()
    );
    store
        .erase_user(with_ext.id, &format!("ext_{n}_gone"), "x", &[])
        .await
        .unwrap();
    assert!(store.user_by_external_id(&ext).await.unwrap().is_none());
    assert_eq!(
        store.user(with_ext.id).await.unwrap().unwrap().external_id,
        None
    );
    store
        .create_user(new(format!("ext_{n}_c"), &ext))
        .await
        .expect("the id is free again");
    assert!(store.user(UserId(u64::MAX)).await.unwrap().is_none());
    assert!(
        store
            .user_by_name("no-such-user-anywhere")
            .await
            .unwrap()
            .is_none()
    );
}

pub(super) async fn devices_and_profiles(store: &dyn Store) {
    let a = user(store, "dev").await;
    let dev = |n: &str| xinge_core::DeviceId::parse(n).unwrap();
    let (phone, laptop, tablet) = (dev("phone"), dev("laptop"), dev("tablet"));
    assert_eq!(store.device_token(a, &phone).await.unwrap(), None);
    assert!(store.devices(a, 10).await.unwrap().is_empty());
    store.put_device(a, &phone, 7, 1_000).await.unwrap();
    store.put_device(a, &phone, 8, 2_000).await.unwrap();
    assert_eq!(store.device_token(a, &phone).await.unwrap(), Some(8));
    store.put_device(a, &laptop, 9, 3_000).await.unwrap();
    let record = |device: &crate::DeviceRecord| {
        (
            device.device.as_str().to_owned(),
            device.token_id,
            device.logged_in_at_ms,
        )
    };
    let listed: Vec<_> = store
        .devices(a, 10)
        .await
        .unwrap()
        .iter()
        .map(record)
        .collect();
    assert_eq!(
        listed,
        vec![("laptop".into(), 9, 3_000), ("phone".into(), 8, 2_000)],
        "by name, the newer login of the phone"
    );
    assert_eq!(
        store.devices(a, 1).await.unwrap().len(),
        1,
        "at most the limit"
    );
    store.remove_device(a, &phone).await.unwrap();
    assert_eq!(store.device_token(a, &phone).await.unwrap(), None);
    // A password change keeps one device's token and ends every other one's.
    store.put_device(a, &phone, 10, 4_000).await.unwrap();
    store.put_device(a, &tablet, 11, 5_000).await.unwrap();
    store
        .set_password(a, "new-hash", Some(&phone))
        .await
        .unwrap();
    assert_eq!(
        store.user(a).await.unwrap().unwrap().password_hash,
        "new-hash"
    );
    let left: Vec<_> = store
        .devices(a, 10)
        .await
        .unwrap()
        .iter()
        .map(record)
        .collect();
    assert_eq!(left, vec![("phone".into(), 10, 4_000)]);
    store.set_password(a, "newer-hash", None).await.unwrap();
    assert!(store.devices(a, 10).await.unwrap().is_empty(), "none kept");
    // A ban ends every device's token and is kept with the user; unbanning lifts it.
    assert!(!store.user(a).await.unwrap().unwrap().banned);
    store.put_device(a, &phone, 12, 6_000).await.unwrap();
    store.set_banned(a, true, &[]).await.unwrap();
    assert!(store.user(a).await.unwrap().unwrap().banned);
    assert!(
        store
            .user_by_name(&store.user(a).await.unwrap().unwrap().username)
            .await
            .unwrap()
            .unwrap()
            .banned
    );
    assert!(
        store.devices(a, 10).await.unwrap().is_empty(),
        "a ban logs out"
    );
    store.set_banned(a, false, &[]).await.unwrap();
    assert!(!store.user(a).await.unwrap().unwrap().banned);
    // Erased: a new name (the old one free again), no password, banned, no device.
    let old_name = store.user(a).await.unwrap().unwrap().username;
    store.put_device(a, &phone, 13, 7_000).await.unwrap();
    let erased_name = format!("erased-{}", a.0);
    store
        .erase_user(a, &erased_name, "Gone", &[])
        .await
        .unwrap();
    let rec = store.user(a).await.unwrap().unwrap();
    assert_eq!(
        (
            rec.username.as_str(),
            rec.display_name.as_str(),
            rec.password_hash.as_str(),
            rec.banned
        ),
        (erased_name.as_str(), "Gone", crate::NO_PASSWORD, true)
    );
    assert!(
        store.user_by_name(&old_name).await.unwrap().is_none(),
        "the old name is free"
    );
    assert_eq!(
        store
            .user_by_name(&erased_name)
            .await
            .unwrap()
            .map(|u| u.id),
        Some(a)
    );
    assert!(store.devices(a, 10).await.unwrap().is_empty());
    let other = user(store, "dev_other").await;
    let taken = store.user(other).await.unwrap().unwrap().username;
    assert!(matches!(
        store.erase_user(a, &taken, "x", &[]).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store
            .erase_user(UserId(u64::MAX), "nobody-here", "x", &[])
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_banned(UserId(u64::MAX), true, &[]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_password(UserId(u64::MAX), "x", None).await,
        Err(StoreError::NotFound)
    ));
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

pub(super) async fn relations(store: &dyn Store) {
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
