use super::keys::*;
use super::{FjallOptions, FjallStore, encode};
use crate::{Commit, DedupRecord, Store};
use std::path::Path;
use xinge_core::{ConvId, UserId};

fn open(dir: &Path) -> FjallStore {
    FjallStore::open(dir, FjallOptions::default()).unwrap()
}

#[test]
fn packed_values_read_back_and_json_ones_still_read() {
    let conv = ConvId::direct(UserId(7), UserId(3));
    let entry = StoredEntry {
        at_ms: 1_700_000_000_123,
        ev: StoredEvent::Message { conv, conv_seq: 42 },
    };
    for bytes in [entry.to_bytes(), encode(&entry)] {
        let back = StoredEntry::from_bytes(&bytes).unwrap();
        assert_eq!(back.at_ms, entry.at_ms);
        assert!(matches!(back.ev, StoredEvent::Message { conv: c, conv_seq: 42 } if c == conv));
    }
    assert_eq!(entry.to_bytes().len(), 34);
    let rec = DedupRecord {
        conv: ConvId::Group(xinge_core::GroupId(9)),
        conv_seq: 5,
        msg_id: xinge_core::MsgId(1 << 40),
        sender_seq: 77,
    };
    for bytes in [pack_dedup(&rec), encode(&rec)] {
        let back = unpack_dedup(&bytes).unwrap();
        assert_eq!(
            (back.conv, back.conv_seq, back.msg_id, back.sender_seq),
            (rec.conv, 5, rec.msg_id, 77)
        );
    }
    // A truncated packed value is an error, not a panic.
    assert!(StoredEntry::from_bytes(&entry.to_bytes()[..20]).is_err());
    assert!(unpack_dedup(&pack_dedup(&rec)[..41]).is_err());
    assert!(unpack_dedup(&[PACKED]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_fjall() {
    let dir = tempfile::tempdir().unwrap();
    crate::conformance::run(&open(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let (a, b) = crate::conformance::seed_chat(&first, 5).await;
    // Closed, the directory is free at once.
    first.close().await.unwrap();
    let s = open(dir.path());
    let conv = ConvId::direct(a, b);
    assert_eq!(s.conv_head(conv).await.unwrap(), 5);
    let (_, head) = s.inbox(a, 0, 100).await.unwrap();
    assert_eq!(head, 5);
    // The cursor moves of the five sends were held, and written when the store closed.
    assert_eq!(stored_cursor(&s, a, conv), 5);
    let c = crate::conformance::send(&s, a, b, "after-reopen").await;
    assert_eq!(c.message.unwrap().conv_seq, 6);
    assert_eq!(c.sender_seq, 6);
}

fn stored_cursor(s: &FjallStore, user: UserId, conv: ConvId) -> u64 {
    let v = s.spaces.members.get(member_key(user, conv)).unwrap();
    v.map_or(0, |v| read_u64(&v).unwrap())
}

fn open_holding(dir: &Path, cursor_flush: std::time::Duration) -> FjallStore {
    let opts = FjallOptions {
        cursor_flush,
        ..FjallOptions::default()
    };
    FjallStore::open(dir, opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_moved_by_sending_are_held_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    // Held for an hour: nothing but the seal below writes them.
    let s = open_holding(dir.path(), std::time::Duration::from_secs(3600));
    let (a, b) = crate::conformance::seed_chat(&s, 0).await;
    let conv = ConvId::direct(a, b);
    crate::conformance::send(&s, a, b, "one").await;
    // Readers see the move at once; fjall does not hold it.
    assert_eq!(s.read_cursor(a, conv).await.unwrap(), 1);
    let listed = s.memberships(a, 10).await.unwrap();
    assert_eq!(listed.iter().find(|m| m.conv == conv).unwrap().read_seq, 1);
    assert_eq!(stored_cursor(&s, a, conv), 0);
    assert_eq!(s.spaces.soft.len(), 1);

    // B sends twice and A reads them: a read that moves the cursor is written at once.
    crate::conformance::send(&s, b, a, "two").await;
    crate::conformance::send(&s, b, a, "three").await;
    let read = |seq| Commit {
        ops: vec![crate::Op::AdvanceRead { user: a, conv, seq }],
        ..Commit::default()
    };
    s.commit(read(3)).await.unwrap();
    assert_eq!(stored_cursor(&s, a, conv), 3);
    // A's next send is held again, and a read behind it moves nothing.
    crate::conformance::send(&s, a, b, "four").await;
    assert_eq!(s.read_cursor(a, conv).await.unwrap(), 4);
    assert_eq!(stored_cursor(&s, a, conv), 3);
    s.commit(read(2)).await.unwrap();
    assert_eq!(s.read_cursor(a, conv).await.unwrap(), 4);

    // The seal writes what is held (A at 4, B at 3 from B's own sends)...
    s.seal().await.unwrap();
    assert_eq!(stored_cursor(&s, a, conv), 4);
    assert_eq!(stored_cursor(&s, b, conv), 3);
    assert_eq!(s.spaces.soft.len(), 0);
    assert_eq!(s.read_cursor(a, conv).await.unwrap(), 4);
    // ...and from then on a send writes its cursor with its message.
    crate::conformance::send(&s, b, a, "five").await;
    assert_eq!(stored_cursor(&s, b, conv), 5);
    assert_eq!(s.spaces.soft.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_writes_held_cursors_when_no_commit_comes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_holding(dir.path(), std::time::Duration::from_millis(100));
    let (a, b) = crate::conformance::seed_chat(&s, 1).await;
    let conv = ConvId::direct(a, b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stored_cursor(&s, a, conv) != 1 || s.spaces.soft.len() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "held cursor never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(s.read_cursor(a, conv).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_holding_off_a_send_writes_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_holding(dir.path(), std::time::Duration::ZERO);
    let (a, b) = crate::conformance::seed_chat(&s, 2).await;
    assert_eq!(stored_cursor(&s, a, ConvId::direct(a, b)), 2);
    assert_eq!(s.spaces.soft.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sends_still_write_the_cursor_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = crate::conformance::user(&s, "g").await;
    let gid = xinge_core::GroupId(4242);
    let create = Commit {
        ops: vec![
            crate::Op::CreateGroup(crate::conformance::new_group(gid, a, "g")),
            crate::Op::AddMember {
                group: gid,
                user: a,
                role: xinge_proto::api::Role::Owner,
            },
        ],
        ..Commit::default()
    };
    s.commit(create).await.unwrap();
    let c = s
        .commit(crate::conformance::group_send(gid, a, "g1", 500))
        .await
        .unwrap();
    let seq = c.message.unwrap().conv_seq;
    assert_eq!(stored_cursor(&s, a, ConvId::Group(gid)), seq);
    assert_eq!(s.spaces.soft.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_with_a_clone_alive_stops_writes_and_says_the_directory_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (a, b) = crate::conformance::seed_chat(&s, 1).await;
    let clone = s.clone();
    assert!(matches!(
        s.close().await,
        Err(crate::StoreError::Backend(_))
    ));
    // Reads still work through the clone; writes are refused.
    assert_eq!(clone.conv_head(ConvId::direct(a, b)).await.unwrap(), 1);
    assert!(matches!(
        clone.set_display_name(a, "late").await,
        Err(crate::StoreError::Closed)
    ));
    assert!(FjallStore::open(dir.path(), FjallOptions::default()).is_err());
    // The last handle closes cleanly; the directory opens again at once.
    clone.close().await.unwrap();
    let again = open(dir.path());
    assert_eq!(again.conv_head(ConvId::direct(a, b)).await.unwrap(), 1);
}
