use super::schema::MIGRATIONS;
use super::sql::i;
use super::{PgOptions, PgStore};
use crate::{NewMessage, Store};
use tokio_postgres::NoTls;
use tokio_postgres::types::Json;
use xinge_core::{ConvId, MsgId, UserId};

/// The PostgreSQL to test against; CI sets nothing and gets the machine's own.
fn url() -> String {
    std::env::var("XINGE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Options for a test's own schema on the test PostgreSQL.
fn options(schema: &str, pool_size: usize, node_id: u16) -> PgOptions {
    PgOptions {
        url: url(),
        schema: schema.into(),
        pool_size,
        node_id,
    }
}

/// A client of the test PostgreSQL, or None (having said so) where there is none and
/// this is not CI.
async fn reachable(test: &str) -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(&url(), NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED {test}: PostgreSQL is not reachable at {} ({e}); CI requires it",
                url()
            );
            None
        }
        Err(e) => panic!(
            "PostgreSQL is required under CI and is not reachable at {}: {e}",
            url()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_postgres() {
    let schema = format!("xinge_test_{}", std::process::id());
    let opts = options(&schema, 8, 3);
    if reachable("conformance_suite_passes_on_postgres")
        .await
        .is_none()
    {
        return;
    }
    let store = PgStore::connect(&opts).await.unwrap();
    crate::conformance::run(&store).await;
    // Migrations are idempotent: connecting again applies nothing and keeps the data.
    let again = PgStore::connect(&opts).await.unwrap();
    assert!(again.user(UserId(1)).await.unwrap().is_some());
    store.drop_schema(&schema).await.unwrap();
}

/// A schema made by an earlier release (migration 1 only, a message already sent) is
/// upgraded in place when a new process connects: the message's retry is still
/// recognised, and sequences go on from where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_is_upgraded_in_place() {
    let Some(raw) = reachable("a_version_1_schema_is_upgraded_in_place").await else {
        return;
    };
    let schema = format!("xinge_test_up_{}", std::process::id());
    raw.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}; \
         CREATE TABLE schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
         {} \
         INSERT INTO schema_migrations (version) VALUES (1);",
        MIGRATIONS[0].1
    ))
    .await
    .unwrap();
    // What release 1 wrote for a first message from 1 to 2 (client_msg_id "old").
    let (a, b) = (UserId(1), UserId(2));
    let conv = ConvId::direct(a, b);
    let old = NewMessage {
        conv,
        sender: a,
        sender_device: None,
        client_msg_id: "old".into(),
        sent_at_ms: 1,
        mentions: vec![],
        mention_all: false,
        body: xinge_proto::api::MessageBody::Content {
            content: serde_json::json!({ "text": "old" }),
        },
    }
    .into_message(MsgId(77), 1);
    let c = conv.to_string();
    raw.execute(
        "INSERT INTO messages (conv, conv_seq, msg) VALUES ($1, 1, $2)",
        &[&c, &Json(serde_json::to_value(&old).unwrap())],
    )
    .await
    .unwrap();
    raw.batch_execute(&format!(
        "INSERT INTO conv_heads VALUES ('{c}', 1); INSERT INTO inbox_heads VALUES (1, 1), (2, 1); \
         INSERT INTO inbox (user_id, seq, at_ms, conv, conv_seq) VALUES (1, 1, 1, '{c}', 1), (2, 1, 1, '{c}', 1); \
         INSERT INTO members VALUES (1, '{c}', 1), (2, '{c}', 0); \
         INSERT INTO dedup VALUES (1, 'old', '{c}', 1, 77, 1);"
    ))
    .await
    .unwrap();
    let opts = options(&schema, 2, 4);
    let store = PgStore::connect(&opts).await.unwrap();
    let again = crate::conformance::send(&store, a, b, "old").await;
    assert!(again.duplicate);
    assert_eq!(
        again.message.map(|m| (m.msg_id, m.conv_seq)),
        Some((MsgId(77), 1))
    );
    let new = crate::conformance::send(&store, a, b, "new").await;
    assert!(!new.duplicate);
    assert_eq!(new.message.map(|m| m.conv_seq), Some(2));
    assert_eq!(new.recipients, vec![(a, 2), (b, 2)]);
    let versions = raw
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<_>>(),
        MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );
    store.drop_schema(&schema).await.unwrap();
}

/// Two users who have never talked send each other their first message at the same
/// moment: neither may deadlock (PostgreSQL would break it, and the retry would hide
/// it, but only after `deadlock_timeout` — a second). A transaction holding one of the
/// two membership rows makes both sends wait at their first join, then lets go, so
/// that they meet inside the function; with the joins taken in the caller's order
/// (sender first) half of such meetings deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_messages_from_both_ends_do_not_deadlock() {
    let Some(raw) = reachable("first_messages_from_both_ends_do_not_deadlock").await else {
        return;
    };
    let schema = format!("xinge_test_dl_{}", std::process::id());
    const PAIRS: u64 = 8;
    let opts = options(&schema, 2 * PAIRS as usize, 5);
    let store = std::sync::Arc::new(PgStore::connect(&opts).await.unwrap());
    let pairs: Vec<_> = (0..PAIRS)
        .map(|p| (UserId(1_000 + 2 * p), UserId(1_001 + 2 * p)))
        .collect();
    raw.batch_execute(&format!("SET search_path = {schema}; BEGIN"))
        .await
        .unwrap();
    for (a, b) in &pairs {
        raw.execute(
            "INSERT INTO members (user_id, conv, read_seq) VALUES ($1, $2, 0)",
            &[&i(b.0), &ConvId::direct(*a, *b).to_string()],
        )
        .await
        .unwrap();
    }
    let mut sends = tokio::task::JoinSet::new();
    for (a, b) in pairs {
        for (from, to) in [(a, b), (b, a)] {
            let store = store.clone();
            sends.spawn(async move { crate::conformance::send(&*store, from, to, "first").await });
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    raw.batch_execute("ROLLBACK").await.unwrap();
    let mut sent = 0;
    while let Some(done) = sends.join_next().await {
        assert!(!done.unwrap().duplicate);
        sent += 1;
    }
    assert_eq!(sent, 2 * PAIRS);
    assert_eq!(store.deadlocks(), 0, "first messages deadlocked");
    store.drop_schema(&schema).await.unwrap();
}

/// Dropping a read conversation from the set of those with unread messages waits for a
/// message being appended to it (its transaction holds the conversation's head), then
/// sees it and keeps the conversation: the message is not lost from the badge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_conversation_is_kept_in_the_set_when_a_message_is_being_appended() {
    let Some(raw) =
        reachable("a_read_conversation_is_kept_in_the_set_when_a_message_is_being_appended").await
    else {
        return;
    };
    let schema = format!("xinge_test_news_{}", std::process::id());
    let store = std::sync::Arc::new(PgStore::connect(&options(&schema, 4, 6)).await.unwrap());
    let (a, b) = (
        crate::conformance::user(&*store, "news_a").await,
        crate::conformance::user(&*store, "news_b").await,
    );
    let conv = ConvId::direct(a, b);
    crate::conformance::send(&*store, a, b, "news-1").await;
    store
        .commit(crate::Commit {
            ops: vec![crate::Op::AdvanceRead {
                user: b,
                conv,
                seq: 1,
            }],
            ..crate::Commit::default()
        })
        .await
        .unwrap();
    // A second message in flight, as `xinge_append` writes it: the head moved (its row
    // held to the commit), the set's row already there.
    raw.batch_execute(&format!("SET search_path = {schema}; BEGIN"))
        .await
        .unwrap();
    raw.execute(
        "UPDATE conv_heads SET head = head + 1 WHERE conv = $1",
        &[&conv.to_string()],
    )
    .await
    .unwrap();
    raw.execute(
        "INSERT INTO news (user_id, conv) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&i(b.0), &conv.to_string()],
    )
    .await
    .unwrap();
    let reading = tokio::spawn({
        let store = store.clone();
        async move { store.unread(b, 100).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!reading.is_finished(), "the drop waits for the append");
    raw.batch_execute("COMMIT").await.unwrap();
    // That read began before the message was committed and counts without it; the
    // conversation stays in the set, so the next read counts it.
    reading.await.unwrap();
    let kept = store.unread_candidates(b, 100).await.unwrap();
    assert_eq!(kept, vec![(conv, 2, 1)]);
    assert_eq!(store.unread(b, 100).await.unwrap(), vec![(conv, 1)]);
    store.drop_schema(&schema).await.unwrap();
}
