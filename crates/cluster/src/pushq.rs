//! Signals from the api processes to the push processes, through a durable JetStream
//! stream (the push processes' side is [`crate::push_worker`]).
//!
//! The stream is a work queue of packs (the events an api process had queued together):
//! each message is taken by one push process, which acks it only after the deliveries it
//! made were flushed to NATS. A push process that dies mid-batch leaves its un-acked
//! messages to be redelivered to another after `push_ack_wait_ms` (a repeated signal is
//! harmless: clients apply by sequence). The stream is bounded (`stream_max_msgs` and
//! `stream_max_bytes`, discard new): when full, signals are refused and counted, and
//! clients repair by pull.

use crate::queues::queue_depth;
use crate::registry::Registry;
use crate::wire::{Pack, encode_push};
use crate::{ClusterError, Names};
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::sync::Arc;
use tokio::sync::mpsc;
use xinge_core::config::ClusterConfig;
use xinge_core::{ConnId, UserId};
use xinge_proto::Frame;
use xinge_push::{Coalesce, DeviceSeen, Online, SessionEnd, Signals};

/// Signals waiting in one api process to be published; past that they are dropped.
const PUBLISH_QUEUE: usize = 65_536;
/// Stream messages awaiting JetStream's ack at once.
const PUBLISH_IN_FLIGHT: usize = 256;
/// Users per push event (a large group's signal is split).
const USERS_PER_EVENT: usize = 1_000;
/// Push events packed into one stream message at most (and at most `PACK_BYTES`).
const EVENTS_PER_MESSAGE: usize = 64;

/// Creates the push stream if it does not exist (every role that uses it calls this).
pub async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    cfg: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    js.get_or_create_stream(stream_config(names, cfg))
        .await
        .map_err(ClusterError::nats)
}

/// The push stream: a work queue on disk that refuses new signals when full.
fn stream_config(names: &Names, cfg: &ClusterConfig) -> stream::Config {
    stream::Config {
        name: names.push_stream(),
        subjects: vec![names.push_subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: cfg.stream_max_msgs,
        max_bytes: cfg.stream_max_bytes,
        num_replicas: cfg.stream_replicas,
        ..Default::default()
    }
}

/// Packs `first` and the events queued behind it now into `pack`, up to
/// `EVENTS_PER_MESSAGE` and the pack's byte budget; returns the event that did not fit
/// (it goes first into the next message).
fn fill(pack: &mut Pack, first: Bytes, rx: &mut mpsc::Receiver<Bytes>) -> Option<Bytes> {
    pack.push(&first);
    while pack.len() < EVENTS_PER_MESSAGE {
        let Ok(next) = rx.try_recv() else { break };
        if !pack.fits(&next) {
            return Some(next);
        }
        pack.push(&next);
    }
    None
}

/// The push events for a signal to `users`: at most `USERS_PER_EVENT` users each.
fn push_events(
    at_ms: u64,
    trace: u64,
    how: Coalesce,
    users: &[UserId],
    except: Option<ConnId>,
    frame: &[u8],
) -> impl Iterator<Item = (usize, Bytes)> {
    users.chunks(USERS_PER_EVENT).map(move |chunk| {
        (
            chunk.len(),
            encode_push(at_ms, trace, how, chunk, except, frame),
        )
    })
}

// === the api's side ===

/// The push layer's `Signals` for an api process: events onto the push stream; presence
/// from the registry.
pub struct StreamSignals {
    queue: mpsc::Sender<Bytes>,
    registry: Arc<Registry>,
    /// For session ends, which are published one by one and waited on.
    js: jetstream::Context,
    subject: String,
}

impl StreamSignals {
    pub fn start(js: jetstream::Context, names: &Names, registry: Arc<Registry>) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(PUBLISH_QUEUE);
        let subject = names.push_subject();
        let (js_ends, subject_ends) = (js.clone(), subject.clone());
        tokio::spawn(async move {
            let mut acks = FuturesUnordered::new();
            // The events queued when one is taken go into the same stream message (one
            // publish, one ack, one stored message, one fetch for push); an event that
            // does not fit waits here for the next message.
            let mut pack = Pack::default();
            let mut carry: Option<Bytes> = None;
            loop {
                tokio::select! {
                    event = async {
                        match carry.take() {
                            Some(e) => Some(e),
                            None => rx.recv().await,
                        }
                    }, if acks.len() < PUBLISH_IN_FLIGHT => {
                        let Some(event) = event else { break };
                        carry = fill(&mut pack, event, &mut rx);
                        let events = pack.len() as u64;
                        match js.publish(subject.clone(), pack.take()).await {
                            Ok(ack) => acks.push(async move { (ack.into_future().await, events) }),
                            Err(e) => refused(&e, events),
                        }
                    }
                    Some((r, events)) = acks.next(), if !acks.is_empty() => {
                        if let Err(e) = r {
                            refused(&e, events);
                        }
                    }
                }
            }
        });
        Arc::new(Self {
            queue: tx,
            registry,
            js: js_ends,
            subject: subject_ends,
        })
    }

    fn publish(&self, users: &[UserId], frame: &Frame, how: Coalesce, except: Option<ConnId>) {
        let bytes = frame.encode();
        let (now, trace) = (xinge_core::now_ms(), crate::trace::current_trace());
        for (users, event) in push_events(now, trace, how, users, except, &bytes) {
            if self.queue.try_send(event).is_err() {
                metrics::counter!("xinge_signals_dropped_total").increment(users as u64);
            }
        }
        queue_depth("push_publish", &self.queue);
    }
}

fn refused(e: &dyn std::fmt::Display, events: u64) {
    metrics::counter!("xinge_signals_dropped_total").increment(events);
    tracing::warn!(error = %e, events, "push events not stored; clients repair by pull");
}

#[async_trait]
impl Signals for StreamSignals {
    fn signal(&self, users: &[UserId], frame: &Frame, how: Coalesce) -> usize {
        // Who is online is the push role's to find out: the work here is per user.
        self.publish(users, frame, how, None);
        users.len()
    }

    fn signal_except(&self, user: UserId, frame: &Frame, how: Coalesce, except: ConnId) {
        self.publish(&[user], frame, how, Some(except));
    }

    async fn presence(&self, user: UserId) -> (bool, u64) {
        self.registry.presence(user).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "presence unknown: registry unreachable");
            (false, 0)
        })
    }

    /// Not through the signal queue (which drops when full): its own stream message,
    /// stored before this returns, then routed by a push process like any event but never
    /// held by the rate. Retried a few times if the stream refuses it.
    async fn end_sessions(&self, end: &SessionEnd) {
        let frame = end.frame().encode();
        let event = encode_push(
            xinge_core::now_ms(),
            crate::trace::current_trace(),
            Coalesce::Never,
            &[end.user],
            None,
            &frame,
        );
        let mut pack = Pack::default();
        pack.push(&event);
        let pack = pack.take();
        for attempt in 1..=END_ATTEMPTS {
            let stored = match self.js.publish(self.subject.clone(), pack.clone()).await {
                Ok(ack) => ack.into_future().await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(()) => return,
                Err(e) if attempt == END_ATTEMPTS => {
                    metrics::counter!("xinge_session_ends_dropped_total").increment(1);
                    tracing::error!(error = %e, user = %end.user, "a session end was not stored");
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "a session end was not stored; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
            }
        }
    }

    /// From the gateways' load reports: connections per gateway (users are not counted
    /// in a cluster).
    async fn online(&self) -> Online {
        match self.registry.gateways().await {
            Ok(reports) => Online {
                users: None,
                connections: reports.iter().map(|r| r.connections).sum(),
                gateways: reports.len() as u64,
            },
            Err(e) => {
                tracing::warn!(error = %e, "online counts unknown: registry unreachable");
                Online::default()
            }
        }
    }

    async fn set_background(&self, user: UserId, conn: ConnId, background: bool) {
        if let Err(e) = self.registry.set_background(user, conn, background).await {
            tracing::warn!(error = %e, "app state not kept: registry unreachable");
        }
    }

    async fn devices(&self, user: UserId) -> Vec<DeviceSeen> {
        self.registry.devices(user).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "devices unknown: registry unreachable");
            Vec::new()
        })
    }
}

/// Tries to store one session end in the push stream.
const END_ATTEMPTS: u64 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PACK_BYTES, decode_push, unpack};

    #[test]
    fn the_stream_is_a_bounded_work_queue_under_the_prefix() {
        let cfg = ClusterConfig::default();
        let c = stream_config(&Names::new("t-9"), &cfg);
        assert_eq!(
            (c.name.as_str(), c.subjects),
            ("T_9_PUSH", vec!["t-9.push".to_owned()])
        );
        assert_eq!(c.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(
            c.discard,
            stream::DiscardPolicy::New,
            "full: new signals are refused"
        );
        assert_eq!(c.storage, stream::StorageType::File);
        assert_eq!(
            (c.max_messages, c.max_bytes, c.num_replicas),
            (
                cfg.stream_max_msgs,
                cfg.stream_max_bytes,
                cfg.stream_replicas
            )
        );
        assert!(c.max_messages > 0 && c.max_bytes > 0, "bounded by default");
    }

    #[test]
    fn a_large_signal_is_split_into_events_of_bounded_users() {
        let users: Vec<_> = (0..2 * USERS_PER_EVENT as u64 + 5).map(UserId).collect();
        let events: Vec<_> =
            push_events(9, 3, Coalesce::Drop, &users, Some(ConnId(4)), b"f").collect();
        let sizes: Vec<_> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, vec![USERS_PER_EVENT, USERS_PER_EVENT, 5]);
        let mut back = Vec::new();
        for (n, e) in events {
            let e = decode_push(e).unwrap();
            assert_eq!(
                (e.users.len(), e.at_ms, e.trace, e.except, &e.frame[..]),
                (n, 9, 3, Some(ConnId(4)), &b"f"[..])
            );
            back.extend(e.users);
        }
        assert_eq!(back, users, "every user once, in order");
        assert_eq!(push_events(1, 0, Coalesce::Drop, &[], None, b"").count(), 0);
    }

    #[test]
    fn queued_events_share_a_message_up_to_its_count_and_bytes() {
        let (tx, mut rx) = mpsc::channel(1_000);
        for i in 0..100u8 {
            tx.try_send(Bytes::from(vec![i; 10])).unwrap();
        }
        let mut pack = Pack::default();
        let first = rx.try_recv().unwrap();
        assert!(fill(&mut pack, first, &mut rx).is_none());
        assert_eq!(pack.len(), EVENTS_PER_MESSAGE);
        let parts = unpack(pack.take()).unwrap();
        assert_eq!(parts[0][0], 0);
        assert_eq!(
            parts[EVENTS_PER_MESSAGE - 1][0],
            EVENTS_PER_MESSAGE as u8 - 1,
            "in queue order"
        );
        assert_eq!(
            rx.len(),
            100 - EVENTS_PER_MESSAGE,
            "the rest waits for the next message"
        );

        // Over the byte budget, the event that does not fit is carried over.
        let big = || Bytes::from(vec![7; PACK_BYTES / 3]);
        let (tx, mut rx) = mpsc::channel(10);
        for _ in 0..3 {
            tx.try_send(big()).unwrap();
        }
        let carried = fill(&mut pack, big(), &mut rx).expect("the third does not fit");
        assert_eq!(
            (pack.len(), carried.len(), rx.len()),
            (2, PACK_BYTES / 3, 1)
        );
        // An event larger than the budget still goes, alone.
        pack.take();
        let huge = Bytes::from(vec![1; PACK_BYTES + 1]);
        assert_eq!(
            fill(&mut pack, huge, &mut rx).map(|b| b.len()),
            Some(PACK_BYTES / 3)
        );
        assert_eq!(pack.len(), 1);
    }
}
