//! Presence transitions from the gateways to the api processes, through a durable
//! JetStream stream: a user who came online or went offline is told to their friends and,
//! if the app's server asked for presence events, written to its outbox — even if the api
//! process that took the transition is killed before it had done so.
//!
//! Each transition is one 17-byte message. The api processes share one durable consumer:
//! each message is taken by one of them, which acks a batch only after it was handled (its
//! events written to the outbox, the friends signalled); one killed mid-batch leaves the
//! batch to another after `push_ack_wait_ms`. The stream is bounded (`MAX_MSGS`, one hour
//! at most) and drops the oldest transitions when full: a long outage of every api
//! process costs the oldest presence events, never a gateway's progress.

use crate::queues::Batches;
use crate::wire::{decode_presence, encode_presence};
use crate::{ClusterError, Names};
use async_nats::jetstream::{self, consumer, stream};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use xinge_core::config::ClusterConfig;
use xinge_push::PresenceChange;

/// Transitions kept while no api process takes them; past that the oldest are dropped.
const MAX_MSGS: i64 = 1_000_000;
/// A transition older than this is dropped untold.
const MAX_AGE: Duration = Duration::from_secs(3_600);
/// Transitions handled (and acked) together.
const BATCH: usize = 256;
/// Publishes awaiting JetStream's ack at once, per gateway; past that a publish waits.
const PUBLISH_IN_FLIGHT: usize = 1_024;

fn stream_config(names: &Names, cfg: &ClusterConfig) -> stream::Config {
    stream::Config {
        name: names.presence_stream(),
        subjects: vec![names.presence()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_messages: MAX_MSGS,
        max_age: MAX_AGE,
        num_replicas: cfg.stream_replicas,
        ..Default::default()
    }
}

/// Creates the presence stream if it does not exist (gateways and api processes call it).
pub async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    cfg: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    js.get_or_create_stream(stream_config(names, cfg))
        .await
        .map_err(ClusterError::nats)
}

/// A gateway's side: publishes transitions without waiting for each one's ack (the
/// registry writer that calls it must not slow down), at most `PUBLISH_IN_FLIGHT`
/// unacknowledged.
#[derive(Clone)]
pub struct PresencePublisher {
    js: jetstream::Context,
    subject: String,
    in_flight: Arc<Semaphore>,
}

impl PresencePublisher {
    pub fn new(js: jetstream::Context, names: &Names) -> Self {
        Self {
            js,
            subject: names.presence(),
            in_flight: Arc::new(Semaphore::new(PUBLISH_IN_FLIGHT)),
        }
    }

    pub async fn publish(&self, ch: &PresenceChange) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        match self
            .js
            .publish(self.subject.clone(), encode_presence(ch))
            .await
        {
            Ok(ack) => {
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        metrics::counter!("xinge_presence_publish_failed_total").increment(1);
                        tracing::warn!(error = %e, "a presence change was not stored");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                metrics::counter!("xinge_presence_publish_failed_total").increment(1);
                tracing::warn!(error = %e, "a presence change was not published");
            }
        }
    }
}

/// An api process's side: takes transitions from the stream (durable consumer
/// "presence", shared by every api process) in batches and acks each batch once `handle`
/// has handled it (`true`; on `false` the batch is left to come again). Runs until
/// `shutdown`.
pub async fn run<F, Fut>(
    js: jetstream::Context,
    names: Names,
    cfg: ClusterConfig,
    handle: F,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ClusterError>
where
    F: Fn(Vec<PresenceChange>) -> Fut,
    Fut: Future<Output = bool>,
{
    let stream = ensure_stream(&js, &names, &cfg).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "presence",
            consumer::pull::Config {
                durable_name: Some("presence".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(cfg.push_ack_wait_ms),
                max_ack_pending: (BATCH * 8) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(ClusterError::nats)?;
    let mut batches = Batches::new(consumer, BATCH, "presence", shutdown);
    while let Some(taken) = batches.next().await {
        // A message that is no transition is acked and forgotten.
        let changes = taken
            .iter()
            .filter_map(|m| decode_presence(m.payload.clone()))
            .collect::<Vec<_>>();
        if changes.is_empty() || handle(changes).await {
            batches.ack(&taken).await;
        }
        // Otherwise not acked: JetStream gives the batch again after ack_wait.
    }
    Ok(())
}
