//! The push role's worker: signals from the push stream (filled by the api processes'
//! [`crate::pushq::StreamSignals`]) to the gateways that hold the users' connections.
//!
//! Each stream message is taken by one push process, which acks it only after the
//! deliveries it made were flushed to NATS; one that dies mid-batch leaves its un-acked
//! messages to be redelivered to another after `push_ack_wait_ms`.
//!
//! Each push process limits the signals per user (`[limits] signals_per_sec`) with push's
//! [`Throttle`]: over the rate, signals are coalesced and released as the rate allows. The
//! limit is per push process (events are spread over them), and what a process holds when
//! it dies is lost — signals are hints, and the clients' periodic pull repairs that.

use crate::pushq::ensure_stream;
use crate::queues::Batches;
use crate::registry::{Live, Registry};
use crate::wire::{Pack, PushEvent, decode_push, encode_delivery, unpack};
use crate::{ClusterError, Names};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use xinge_core::config::ClusterConfig;
use xinge_core::{ConnId, GatewayId, UserId};
use xinge_push::{Throttle, ThrottleConfig, by_gateway};

/// Stream messages one push process takes at a time (each up to the api side's
/// `EVENTS_PER_MESSAGE` events).
const BATCH: usize = 64;

/// The durable consumer every push process shares: explicit acks, redelivery after
/// `push_ack_wait_ms`, and a bound on what is taken but not acked yet.
fn consumer_config(cfg: &ClusterConfig) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("push".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(cfg.push_ack_wait_ms),
        max_ack_pending: (BATCH * 16) as i64,
        ..Default::default()
    }
}

/// Takes push events from the stream (durable consumer "push", shared by every push
/// process), looks up each user's sessions, and publishes one delivery per gateway on that
/// gateway's own subject, holding back (coalescing) the signals of users over `throttle`'s
/// rate. Runs until `shutdown`.
pub async fn run(
    js: jetstream::Context,
    nats: async_nats::Client,
    names: Names,
    cfg: ClusterConfig,
    throttle: ThrottleConfig,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
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
        .get_or_create_consumer("push", consumer_config(&cfg))
        .await
        .map_err(ClusterError::nats)?;
    let mut batches = Batches::new(consumer, BATCH, "push", shutdown);
    while let Some(taken) = batches.next().await {
        match route_batch(&nats, &names, &registry, &throttle, &taken).await {
            Ok(()) => batches.ack(&taken).await,
            // Not acked: JetStream gives the batch again after ack_wait.
            Err(e) => tracing::warn!(error = %e, "push batch not routed; it will come again"),
        }
    }
    Ok(())
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
    metrics::counter!("xinge_push_messages_total").increment(batch.len() as u64);
    let (mut events, malformed) = events_in(batch.iter().map(|m| m.payload.clone()));
    if malformed > 0 {
        metrics::counter!("xinge_bus_malformed_total").increment(malformed);
    }
    // A redelivered batch meets the throttle again: at worst a signal goes twice, which
    // clients ignore by sequence.
    for e in &mut events {
        e.users
            .retain(|u| throttle.admit(*u, &e.frame, e.how, instant));
    }
    let sessions = registry.sessions(&users_of(&events)).await?;
    let mut out = Deliveries::default();
    for e in &events {
        for (gw, pack) in out.add(&sessions, &e.users, e.except, &e.frame) {
            publish(nats, names, gw, pack).await?;
        }
        metrics::counter!("xinge_push_events_total").increment(1);
        tracing::debug!(trace = %format_args!("{:016x}", e.trace), users = e.users.len(), "signals handed to gateways");
        metrics::histogram!("xinge_signal_seconds")
            .record(now.saturating_sub(e.at_ms) as f64 / 1000.0);
    }
    for (gw, pack) in out.finish() {
        publish(nats, names, gw, pack).await?;
    }
    // Acks go only after the deliveries have left this process.
    nats.flush().await.map_err(ClusterError::nats)
}

/// The push events in a batch of stream messages (each a pack of them), in order, and how
/// many parts were malformed (dropped).
fn events_in(payloads: impl Iterator<Item = Bytes>) -> (Vec<PushEvent>, u64) {
    let (mut events, mut malformed) = (Vec::new(), 0);
    for payload in payloads {
        let Some(parts) = unpack(payload) else {
            malformed += 1;
            continue;
        };
        for part in parts {
            match decode_push(part) {
                Some(e) => events.push(e),
                None => malformed += 1,
            }
        }
    }
    (events, malformed)
}

/// Every user the events signal, once: one session lookup for the batch.
fn users_of(events: &[PushEvent]) -> Vec<UserId> {
    let mut users: Vec<UserId> = events
        .iter()
        .flat_map(|e| e.users.iter().copied())
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// Deliveries on their way to gateways, packed per gateway (at most `PACK_BYTES` a
/// publish). A full pack is handed back by [`Self::add`] to be published before the rest,
/// so each gateway gets its deliveries in the order they were added.
#[derive(Default)]
struct Deliveries {
    packs: HashMap<GatewayId, Pack>,
}

impl Deliveries {
    /// Adds `frame` for the connections of `users` (but `except`) in `sessions`; returns
    /// the packs that filled up, to publish now.
    fn add(
        &mut self,
        sessions: &Live,
        users: &[UserId],
        except: Option<ConnId>,
        frame: &Bytes,
    ) -> Vec<(GatewayId, Bytes)> {
        let mut targets: Vec<(GatewayId, ConnId)> = users
            .iter()
            .flat_map(|u| sessions.get(u).map_or(&[][..], Vec::as_slice))
            .filter(|t| Some(t.1) != except)
            .copied()
            .collect();
        let mut full = Vec::new();
        for (gw, conns) in by_gateway(&mut targets) {
            metrics::counter!("xinge_signals_total").increment(conns.len() as u64);
            let delivery = encode_delivery(&conns, frame);
            let pack = self.packs.entry(gw).or_default();
            if !pack.fits(&delivery) {
                full.push((gw, pack.take()));
            }
            pack.push(&delivery);
        }
        full
    }

    /// The packs still to publish.
    fn finish(self) -> impl Iterator<Item = (GatewayId, Bytes)> {
        self.packs
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(gw, mut p)| (gw, p.take()))
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
                    for (gw, pack) in out.add(&sessions, &[*user], None, f) {
                        publish(&nats, &names, gw, pack).await?;
                    }
                }
            }
            for (gw, pack) in out.finish() {
                publish(&nats, &names, gw, pack).await?;
            }
            Ok::<_, ClusterError>(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "held signals not delivered; clients repair by pull");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PACK_BYTES, decode_delivery, encode_push};
    use xinge_push::Coalesce;

    #[test]
    fn the_consumer_acks_explicitly_and_bounds_what_it_holds() {
        let cfg = ClusterConfig {
            push_ack_wait_ms: 1_500,
            ..Default::default()
        };
        let c = consumer_config(&cfg);
        assert_eq!(c.durable_name.as_deref(), Some("push"));
        assert_eq!(c.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(c.ack_wait, Duration::from_millis(1_500));
        assert_eq!(c.max_ack_pending, (BATCH * 16) as i64);
    }

    #[test]
    fn a_batch_is_read_event_by_event_and_bad_parts_are_counted() {
        let e = |users: &[u64]| {
            let users: Vec<_> = users.iter().copied().map(UserId).collect();
            encode_push(1, 2, Coalesce::Drop, &users, None, b"f")
        };
        let mut one = Pack::default();
        one.push(&e(&[3, 1]));
        one.push(b"short");
        one.push(&e(&[1]));
        let mut two = Pack::default();
        two.push(&e(&[2]));
        let cut = Bytes::from_static(b"\0\0\0\x09abc");
        let (events, malformed) = events_in([one.take(), cut, two.take()].into_iter());
        let users: Vec<Vec<UserId>> = events.iter().map(|e| e.users.clone()).collect();
        assert_eq!(
            users,
            vec![vec![UserId(3), UserId(1)], vec![UserId(1)], vec![UserId(2)]]
        );
        assert_eq!(malformed, 2, "a bad part and a pack cut short");
        assert_eq!(users_of(&events), vec![UserId(1), UserId(2), UserId(3)]);
    }

    fn conns_of(pack: Bytes) -> Vec<Vec<ConnId>> {
        unpack(pack)
            .unwrap()
            .into_iter()
            .map(|d| decode_delivery(d).unwrap().0)
            .collect()
    }

    #[test]
    fn deliveries_go_once_per_gateway_without_the_skipped_connection() {
        let (g1, g2) = (GatewayId(1), GatewayId(2));
        let sessions: Live = [
            (UserId(1), vec![(g1, ConnId(10)), (g2, ConnId(20))]),
            (UserId(2), vec![(g1, ConnId(11))]),
        ]
        .into();
        let mut out = Deliveries::default();
        let f = Bytes::from_static(b"frame");
        let users = [UserId(1), UserId(2), UserId(9)];
        assert!(out.add(&sessions, &users, None, &f).is_empty());
        assert!(out.add(&sessions, &users, Some(ConnId(10)), &f).is_empty());
        let mut packs: Vec<_> = out.finish().collect();
        packs.sort_by_key(|p| p.0);
        let [(a, p1), (b, p2)] = <[_; 2]>::try_from(packs).unwrap();
        assert_eq!((a, b), (g1, g2));
        assert_eq!(
            conns_of(p1),
            vec![vec![ConnId(10), ConnId(11)], vec![ConnId(11)]],
            "one delivery per event for all of a gateway's connections, in order"
        );
        assert_eq!(conns_of(p2), vec![vec![ConnId(20)], vec![ConnId(20)]]);
        assert_eq!(
            Deliveries::default().finish().count(),
            0,
            "nothing: no publish"
        );
    }

    #[test]
    fn a_full_pack_is_handed_back_before_more_is_added() {
        let sessions: Live = [(UserId(1), vec![(GatewayId(1), ConnId(1))])].into();
        let big = Bytes::from(vec![0; PACK_BYTES / 2]);
        let mut out = Deliveries::default();
        let mut published = Vec::new();
        for _ in 0..5 {
            published.extend(out.add(&sessions, &[UserId(1)], None, &big));
        }
        published.extend(out.finish());
        let counts: Vec<_> = published
            .iter()
            .map(|(_, p)| unpack(p.clone()).unwrap().len())
            .collect();
        assert_eq!(
            counts,
            vec![1, 1, 1, 1, 1],
            "each half-budget delivery fills a pack"
        );
        assert!(published.iter().all(|(_, p)| p.len() <= PACK_BYTES));
        let small = Bytes::from_static(b"s");
        let mut out = Deliveries::default();
        for _ in 0..100 {
            assert!(out.add(&sessions, &[UserId(1)], None, &small).is_empty());
        }
        let packs: Vec<_> = out.finish().collect();
        assert_eq!(
            (packs.len(), unpack(packs[0].1.clone()).unwrap().len()),
            (1, 100)
        );
    }
}
