//! Media metadata: uploads by expiry, media with counted blob references and usage, and
//! blobs collected only once nothing refers to them.

use super::{UNIQUE, user};
use crate::{MediaRecord, Store, StoreError, UploadRecord};
use std::sync::atomic::Ordering;

fn unique(tag: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", xinge_core::now_ms())
}

pub async fn uploads_expire_and_media_count_their_blobs(store: &dyn Store) {
    let a = user(store, "media_a").await;
    let b = user(store, "media_b").await;

    // Uploads: written, moved, listed once expired, removed.
    let mut up = UploadRecord {
        id: unique("up"),
        owner: a,
        length: 100,
        offset: 0,
        metadata: "filename YS5qcGc=".into(),
        created_ms: 1,
        expires_ms: 1_000,
        media: None,
    };
    store.put_upload(&up).await.unwrap();
    up.offset = 60;
    store.put_upload(&up).await.unwrap();
    assert_eq!(store.upload(&up.id).await.unwrap().as_ref(), Some(&up));
    let mine = |list: Vec<UploadRecord>| list.into_iter().any(|u| u.id == up.id);
    assert!(!mine(store.expired_uploads(1_000, 10_000).await.unwrap()));
    assert!(mine(store.expired_uploads(1_001, 10_000).await.unwrap()));
    store.remove_upload(&up.id).await.unwrap();
    assert_eq!(store.upload(&up.id).await.unwrap(), None);
    assert!(!mine(
        store.expired_uploads(u64::MAX / 2, 10_000).await.unwrap()
    ));
    store.remove_upload(&up.id).await.unwrap(); // none is fine

    // Two users upload the same bytes: one blob, two references, two owners charged.
    let (hash, thumb) = (unique("h"), unique("t"));
    let m = |id: String, owner, thumb: Option<String>| MediaRecord {
        id,
        owner,
        hash: hash.clone(),
        size: 1_000,
        mime: "image/png".into(),
        kind: "image".into(),
        name: Some("a.png".into()),
        width: Some(10),
        height: Some(20),
        duration_ms: None,
        thumb,
        created_ms: 5,
    };
    let ma = m(unique("m"), a, Some(thumb.clone()));
    let mb = m(unique("m"), b, None);
    store.add_media(&ma).await.unwrap();
    store.add_media(&mb).await.unwrap();
    assert!(matches!(
        store.add_media(&ma).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.media(&ma.id).await.unwrap().as_ref(), Some(&ma));
    assert_eq!(store.blob_refs(&hash).await.unwrap(), 2);
    assert_eq!(store.blob_refs(&thumb).await.unwrap(), 1);
    assert_eq!(store.media_usage(a).await.unwrap(), 1_000);
    assert_eq!(store.media_usage(b).await.unwrap(), 1_000);

    // One goes: its thumbnail is unreferenced from then on, the shared blob is not.
    assert_eq!(
        store.remove_media(&ma.id, 50).await.unwrap().as_ref(),
        Some(&ma)
    );
    assert_eq!(store.remove_media(&ma.id, 50).await.unwrap(), None);
    assert_eq!(store.media(&ma.id).await.unwrap(), None);
    assert_eq!(store.media_usage(a).await.unwrap(), 0);
    assert_eq!(store.blob_refs(&hash).await.unwrap(), 1);
    let (h, t) = (hash.clone(), thumb.clone());
    let free = |before| {
        let (h, t) = (h.clone(), t.clone());
        async move {
            let all = store.unreferenced_blobs(before, 100_000).await.unwrap();
            (all.contains(&h), all.contains(&t))
        }
    };
    assert_eq!(free(50).await, (false, false), "not before the release");
    assert_eq!(free(51).await, (false, true));
    assert!(!store.forget_blob(&hash).await.unwrap(), "still referenced");

    // A new reference before collection saves a blob.
    let again = m(unique("m"), b, Some(thumb.clone()));
    store.add_media(&again).await.unwrap();
    assert_eq!(free(u64::MAX / 2).await, (false, false));
    assert!(!store.forget_blob(&thumb).await.unwrap());

    // All gone: both are collectable, and forgotten once.
    store.remove_media(&again.id, 60).await.unwrap();
    store.remove_media(&mb.id, 70).await.unwrap();
    assert_eq!(store.media_usage(b).await.unwrap(), 0);
    assert_eq!(free(71).await, (true, true));
    assert!(store.forget_blob(&hash).await.unwrap());
    assert!(!store.forget_blob(&hash).await.unwrap());
    assert!(store.forget_blob(&thumb).await.unwrap());
    assert_eq!(free(u64::MAX / 2).await, (false, false));
    assert_eq!(store.blob_refs(&hash).await.unwrap(), 0);
}
