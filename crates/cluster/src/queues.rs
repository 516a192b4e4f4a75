//! What every adapter reports of its bounded queues.

use tokio::sync::mpsc;

/// `xinge_queue_depth{queue}`: how full one of this process's bounded queues is.
pub(crate) fn queue_depth<T>(queue: &'static str, tx: &mpsc::Sender<T>) {
    metrics::gauge!("xinge_queue_depth", "queue" => queue)
        .set((tx.max_capacity() - tx.capacity()) as f64);
}
