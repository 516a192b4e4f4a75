//! A connection's bounded send queue, allocated only while frames wait in it.
//!
//! A tokio `mpsc` channel allocates its first block of slots up front (about 1.5 KiB for
//! frames), which for an idle connection is pure overhead. This queue is an empty
//! `VecDeque` (no allocation) behind a mutex, a `Notify` for the writer, and a bound: a
//! frame that does not fit is refused and the connection is closed as a slow consumer.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;
use xinge_proto::Frame;

pub(crate) struct SendQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    cap: usize,
}

struct Inner {
    frames: VecDeque<Frame>,
    closed: bool,
}

/// The frame could not be queued.
#[derive(Debug)]
pub(crate) struct Refused;

/// Most frames handed to the writer at once.
const BATCH: usize = 64;

impl SendQueue {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame; refused when the queue is full or closed.
    pub fn push(&self, f: Frame) -> Result<(), Refused> {
        {
            let mut inner = self.lock();
            if inner.closed || inner.frames.len() >= self.cap {
                return Err(Refused);
            }
            inner.frames.push_back(f);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a last frame even past the bound (a CLOSE), then closes the queue.
    pub fn close_with(&self, last: Option<Frame>) {
        {
            let mut inner = self.lock();
            if let Some(f) = last
                && !inner.closed
            {
                inner.frames.push_back(f);
            }
            inner.closed = true;
        }
        self.ready.notify_one();
    }

    /// Waits for frames and takes up to a batch of them; `None` once closed and drained.
    pub async fn pop_batch(&self) -> Option<Vec<Frame>> {
        loop {
            {
                let mut inner = self.lock();
                if !inner.frames.is_empty() {
                    let n = inner.frames.len().min(BATCH);
                    let batch: Vec<Frame> = inner.frames.drain(..n).collect();
                    if inner.frames.is_empty() && inner.frames.capacity() > 0 {
                        // Give the memory back: an idle connection holds no buffer.
                        inner.frames = VecDeque::new();
                    }
                    return Some(batch);
                }
                if inner.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_batched_and_closable() {
        let q = SendQueue::new(2);
        q.push(Frame::request(1, 1, bytes::Bytes::new())).unwrap();
        q.push(Frame::request(1, 2, bytes::Bytes::new())).unwrap();
        assert!(
            q.push(Frame::request(1, 3, bytes::Bytes::new())).is_err(),
            "full"
        );
        let b = q.pop_batch().await.unwrap();
        assert_eq!(b.iter().map(|f| f.req_id).collect::<Vec<_>>(), vec![1, 2]);
        q.close_with(Some(Frame::request(3, 0, bytes::Bytes::new())));
        assert!(
            q.push(Frame::request(1, 4, bytes::Bytes::new())).is_err(),
            "closed"
        );
        assert_eq!(
            q.pop_batch().await.unwrap()[0].cmd,
            3,
            "the close frame still goes out"
        );
        assert!(q.pop_batch().await.is_none());
    }
}
