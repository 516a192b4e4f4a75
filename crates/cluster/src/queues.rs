//! What every adapter reports of its bounded queues, and how the JetStream queues are
//! read.

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Stream;
use futures_util::StreamExt;
use futures_util::stream::ReadyChunks;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// `xinge_queue_depth{queue}`: how full one of this process's bounded queues is.
pub(crate) fn queue_depth<T>(queue: &'static str, tx: &mpsc::Sender<T>) {
    metrics::gauge!("xinge_queue_depth", "queue" => queue)
        .set((tx.max_capacity() - tx.capacity()) as f64);
}

/// A durable consumer read continuously in batches (the push worker's and the presence
/// stream's): JetStream sends messages as they are stored, with no polling while the stream
/// is empty, and everything that has arrived when the reader is free is one batch. A pull
/// that ends (the server went away) or cannot start is started again.
pub(crate) struct Batches {
    consumer: PullConsumer,
    max: usize,
    /// Named in the logs.
    what: &'static str,
    shutdown: watch::Receiver<bool>,
    pull: Option<ReadyChunks<Stream>>,
}

impl Batches {
    pub(crate) fn new(
        consumer: PullConsumer,
        max: usize,
        what: &'static str,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            consumer,
            max,
            what,
            shutdown,
            pull: None,
        }
    }

    /// The next batch (never empty); `None` once shut down.
    pub(crate) async fn next(&mut self) -> Option<Vec<Message>> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            let Some(pull) = &mut self.pull else {
                let started = self
                    .consumer
                    .stream()
                    .max_messages_per_batch(self.max)
                    .heartbeat(Duration::from_secs(5))
                    .messages()
                    .await;
                match started {
                    Ok(m) => self.pull = Some(m.ready_chunks(self.max)),
                    Err(e) => {
                        tracing::warn!(error = %e, stream = self.what, "stream unavailable; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = self.shutdown.changed() => return None,
                        }
                    }
                }
                continue;
            };
            let batch = tokio::select! {
                b = pull.next() => b,
                _ = self.shutdown.changed() => return None,
            };
            let Some(batch) = batch else {
                self.pull = None;
                continue;
            };
            let taken: Vec<Message> = batch
                .into_iter()
                .filter_map(|m| {
                    m.map_err(|e| tracing::debug!(error = %e, stream = self.what, "stream hiccup"))
                        .ok()
                })
                .collect();
            if !taken.is_empty() {
                return Some(taken);
            }
        }
    }

    /// Acks a handled batch; a failed ack only means the message comes again.
    pub(crate) async fn ack(&self, taken: &[Message]) {
        let acks = taken.iter().map(|m| m.ack());
        for r in futures_util::future::join_all(acks).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, stream = self.what, "ack failed; the message will come again");
            }
        }
    }
}
