//! Signals from the api processes to the push processes, through a durable JetStream
//! stream, and the push worker that routes them to gateways.
//!
//! The stream is a work queue of packs (the events an api process had queued together):
//! each message is taken by one push process, which acks it only after the deliveries it
//! made were flushed to NATS. A push process that dies mid-batch leaves its un-acked
//! messages to be redelivered to another after `push_ack_wait_ms` (a repeated signal is
//! harmless: clients apply by sequence). The stream is bounded (`stream_max_msgs` and
//! `stream_max_bytes`, discard new): when full, signals are refused and counted, and
//! clients repair by pull.
//!
//! Each push process limits the signals per user (`[limits] signals_per_sec`) with push's
//! [`Throttle`]: over the rate, signals are coalesced and released as the rate allows. The
//! limit is per push process (events are spread over them), and what a process holds when
//! it dies is lost — signals are hints, and the clients' periodic pull repairs that.

use crate::registry::{Live, Registry};
use crate::wire::{Pack, decode_push, encode_delivery, encode_push, unpack};
use crate::{ClusterError, Names};
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use xinge_core::config::ClusterConfig;
use xinge_core::{ConnId, GatewayId, UserId};
use xinge_proto::Frame;
use xinge_push::{Coalesce, Signals, Throttle, ThrottleConfig};

/// Signals waiting in one api process to be published; past that they are dropped.
const PUBLISH_QUEUE: usize = 65_536;
/// Stream messages awaiting JetStream's ack at once.
const PUBLISH_IN_FLIGHT: usize = 256;
/// Stream messages one push process takes at a time (each up to `EVENTS_PER_MESSAGE`).
const BATCH: usize = 64;
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
    js.get_or_create_stream(stream::Config {
        name: names.push_stream(),
        subjects: vec![names.push_subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: cfg.stream_max_msgs,
        max_bytes: cfg.stream_max_bytes,
        num_replicas: cfg.stream_replicas,
        ..Default::default()
    })
    .await
    .map_err(ClusterError::nats)
}

// === the api's side ===

/// The push layer's `Signals` for an api process: events onto the push stream; presence
/// from the registry.
pub struct StreamSignals {
    queue: mpsc::Sender<Bytes>,
    registry: Arc<Registry>,
}

impl StreamSignals {
    pub fn start(js: jetstream::Context, names: &Names, registry: Arc<Registry>) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(PUBLISH_QUEUE);
        let subject = names.push_subject();
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
                        pack.push(&event);
                        while pack.len() < EVENTS_PER_MESSAGE {
                            let Ok(next) = rx.try_recv() else { break };
                            if !pack.fits(&next) {
                                carry = Some(next);
                                break;
                            }
                            pack.push(&next);
                        }
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
        })
    }

    fn publish(&self, users: &[UserId], frame: &Frame, how: Coalesce, except: Option<ConnId>) {
        let bytes = frame.encode();
        let (now, trace) = (xinge_core::now_ms(), crate::bus::current_trace());
        for chunk in users.chunks(USERS_PER_EVENT) {
            let event = encode_push(now, trace, how, chunk, except, &bytes);
            if self.queue.try_send(event).is_err() {
                metrics::counter!("xinge_signals_dropped_total").increment(chunk.len() as u64);
            }
        }
        queue_depth("push_publish", &self.queue);
    }
}

/// `xinge_queue_depth{queue}`: how full one of this process's bounded queues is.
pub(crate) fn queue_depth<T>(queue: &'static str, tx: &mpsc::Sender<T>) {
    metrics::gauge!("xinge_queue_depth", "queue" => queue)
        .set((tx.max_capacity() - tx.capacity()) as f64);
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
}

// === the push role ===

/// Takes push events from the stream (durable consumer "push", shared by every push
/// process), looks up each user's sessions, and publishes one delivery per gateway on that
/// gateway's own subject, holding back (coalescing) the signals of users over `throttle`'s
/// rate. Runs until `shutdown`.
pub async fn run_push_worker(
    js: jetstream::Context,
    nats: async_nats::Client,
    names: Names,
    cfg: ClusterConfig,
    throttle: ThrottleConfig,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let throttle = Arc::new(Throttle::<Bytes>::new(throttle));
    tokio::spawn(release_held(
        nats.clone(),
        names.clone(),
        registry.clone(),
        throttle.clone(),
        shutdown.clone(),
    ));
    let stream = ensure_stream(&js, &names, &cfg).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "push",
            consumer::pull::Config {
                durable_name: Some("push".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(cfg.push_ack_wait_ms),
                max_ack_pending: (BATCH * 16) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(ClusterError::nats)?;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        // A continuous pull: JetStream sends events as they are stored (no polling when the
        // stream is empty), and every event that has arrived when the worker is free is
        // routed as one batch.
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut batches = match messages {
            Ok(m) => m.ready_chunks(BATCH),
            Err(e) => {
                tracing::warn!(error = %e, "push stream unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        };
        loop {
            let batch = tokio::select! {
                b = batches.next() => b,
                _ = shutdown.changed() => return Ok(()),
            };
            // The pull ended (the server went away): start a new one.
            let Some(batch) = batch else { break };
            let mut taken = Vec::with_capacity(batch.len());
            for m in batch {
                match m {
                    Ok(m) => taken.push(m),
                    Err(e) => tracing::debug!(error = %e, "push stream hiccup"),
                }
            }
            if taken.is_empty() {
                continue;
            }
            match route_batch(&nats, &names, &registry, &throttle, &taken).await {
                Ok(()) => {
                    let mut acks = Vec::with_capacity(taken.len());
                    for m in &taken {
                        acks.push(m.ack());
                    }
                    for r in futures_util::future::join_all(acks).await {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "ack failed; the event will come again");
                        }
                    }
                }
                // Not acked: JetStream gives the batch again after ack_wait.
                Err(e) => tracing::warn!(error = %e, "push batch not routed; it will come again"),
            }
        }
    }
}

/// Routes a batch of stream messages: one session lookup for every user in it, and one
/// publish per gateway carrying all of that gateway's deliveries, in event order.
async fn route_batch(
    nats: &async_nats::Client,
    names: &Names,
    registry: &Registry,
    throttle: &Throttle<Bytes>,
    batch: &[jetstream::Message],
) -> Result<(), ClusterError> {
    let now = xinge_core::now_ms();
    let instant = std::time::Instant::now();
    let mut events = Vec::new();
    metrics::counter!("xinge_push_messages_total").increment(batch.len() as u64);
    for m in batch {
        let Some(parts) = unpack(m.payload.clone()) else {
            metrics::counter!("xinge_bus_malformed_total").increment(1);
            continue;
        };
        for part in parts {
            match decode_push(part) {
                Some(e) => events.push(e),
                None => metrics::counter!("xinge_bus_malformed_total").increment(1),
            }
        }
    }
    // A redelivered batch meets the throttle again: at worst a signal goes twice, which
    // clients ignore by sequence.
    for e in &mut events {
        e.users
            .retain(|u| throttle.admit(*u, &e.frame, e.how, instant));
    }
    let mut users: Vec<UserId> = events
        .iter()
        .flat_map(|e| e.users.iter().copied())
        .collect();
    users.sort_unstable();
    users.dedup();
    let sessions = registry.sessions(&users).await?;
    let mut out = Deliveries::default();
    for e in &events {
        out.add(nats, names, &sessions, &e.users, e.except, &e.frame)
            .await?;
        metrics::counter!("xinge_push_events_total").increment(1);
        tracing::debug!(trace = %format_args!("{:016x}", e.trace), users = e.users.len(), "signals handed to gateways");
        metrics::histogram!("xinge_signal_seconds")
            .record(now.saturating_sub(e.at_ms) as f64 / 1000.0);
    }
    out.send(nats, names).await?;
    // Acks go only after the deliveries have left this process.
    nats.flush().await.map_err(ClusterError::nats)
}

/// Deliveries on their way to gateways, packed per gateway (at most `PACK_BYTES` a
/// publish; a full pack is published before more is added, so each gateway gets its
/// deliveries in the order they were added).
#[derive(Default)]
struct Deliveries {
    packs: HashMap<GatewayId, Pack>,
}

impl Deliveries {
    /// Adds `frame` for the connections of `users` (but `except`) in `sessions`.
    async fn add(
        &mut self,
        nats: &async_nats::Client,
        names: &Names,
        sessions: &Live,
        users: &[UserId],
        except: Option<ConnId>,
        frame: &Bytes,
    ) -> Result<(), ClusterError> {
        let mut by_gateway: HashMap<GatewayId, Vec<ConnId>> = HashMap::new();
        for u in users {
            for &(gw, conn) in sessions.get(u).map_or(&[][..], Vec::as_slice) {
                if Some(conn) != except {
                    by_gateway.entry(gw).or_default().push(conn);
                }
            }
        }
        for (gw, conns) in by_gateway {
            metrics::counter!("xinge_signals_total").increment(conns.len() as u64);
            let delivery = encode_delivery(&conns, frame);
            let pack = self.packs.entry(gw).or_default();
            if !pack.fits(&delivery) {
                publish(nats, names, gw, pack.take()).await?;
            }
            pack.push(&delivery);
        }
        Ok(())
    }

    async fn send(mut self, nats: &async_nats::Client, names: &Names) -> Result<(), ClusterError> {
        for (gw, pack) in &mut self.packs {
            if !pack.is_empty() {
                publish(nats, names, *gw, pack.take()).await?;
            }
        }
        Ok(())
    }
}

async fn publish(
    nats: &async_nats::Client,
    names: &Names,
    gw: GatewayId,
    pack: Bytes,
) -> Result<(), ClusterError> {
    nats.publish(names.gateway(gw), pack)
        .await
        .map_err(ClusterError::nats)
}

/// Sends the signals the throttle held as users' rates allow, until `shutdown`.
async fn release_held(
    nats: async_nats::Client,
    names: Names,
    registry: Arc<Registry>,
    throttle: Arc<Throttle<Bytes>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(xinge_push::RELEASE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let due = throttle.due(std::time::Instant::now());
        if due.is_empty() {
            continue;
        }
        // One session lookup and one publish per gateway for everything due, as a batch.
        let users: Vec<UserId> = due.iter().map(|(u, _)| *u).collect();
        let sent = async {
            let sessions = registry.sessions(&users).await?;
            let mut out = Deliveries::default();
            for (user, frames) in &due {
                for f in frames {
                    out.add(&nats, &names, &sessions, &[*user], None, f).await?;
                }
            }
            out.send(&nats, &names).await
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "held signals not delivered; clients repair by pull");
        }
    }
}
