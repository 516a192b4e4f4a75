//! A connection's bounded send queue, allocated only while frames wait in it.
//!
//! A tokio `mpsc` channel allocates its first block of slots up front (about 1.5 KiB for
//! frames), which for an idle connection is pure overhead. This queue is an empty
//! `VecDeque` (no allocation) behind a mutex, the connection task's waker, and a bound: a
//! frame that does not fit is refused and the connection is closed as a slow consumer.
//!
//! The waker is an `AtomicWaker`, not a `Notify`: the connection task registers its waker
//! while it polls, so waiting holds no waiter node in the task's state, and the same waker
//! is woken for a kick (the handle has no second `Notify`).

use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Waker;
use xinge_proto::Frame;

pub(crate) struct SendQueue {
    inner: Mutex<Inner>,
    waker: AtomicWaker,
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
            waker: AtomicWaker::new(),
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
        self.waker.wake();
        Ok(())
    }

    /// Queues a last frame even past the bound (a CLOSE), then closes the queue.
    pub fn close_with(&self, last: Option<Frame>) {
        self.close(last, false);
    }

    /// [`Self::close_with`], dropping what is still queued: for a session whose access
    /// ended, which must not be handed anything more.
    pub fn close_discarding(&self, last: Option<Frame>) {
        self.close(last, true);
    }

    fn close(&self, last: Option<Frame>, discard: bool) {
        {
            let mut inner = self.lock();
            if discard {
                inner.frames.clear();
            }
            if let Some(f) = last
                && !inner.closed
            {
                inner.frames.push_back(f);
            }
            inner.closed = true;
        }
        self.waker.wake();
    }

    /// Wakes the connection task (it was kicked, or frames are waiting).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// The connection task's waker, woken by `push`, `close_with` and `wake`. Register before
    /// checking for frames, so that nothing pushed in between is missed.
    pub fn register(&self, w: &Waker) {
        self.waker.register(w);
    }

    pub fn has_frames(&self) -> bool {
        !self.lock().frames.is_empty()
    }

    /// Takes up to a batch of the waiting frames; `None` if there are none.
    pub fn take_batch(&self) -> Option<Vec<Frame>> {
        let mut inner = self.lock();
        if inner.frames.is_empty() {
            return None;
        }
        let n = inner.frames.len().min(BATCH);
        let batch: Vec<Frame> = inner.frames.drain(..n).collect();
        if inner.frames.is_empty() {
            // Give the memory back: an idle connection holds no buffer.
            inner.frames = VecDeque::new();
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_batched_and_closable() {
        let q = SendQueue::new(2);
        q.push(Frame::request(1, 1, bytes::Bytes::new())).unwrap();
        q.push(Frame::request(1, 2, bytes::Bytes::new())).unwrap();
        assert!(
            q.push(Frame::request(1, 3, bytes::Bytes::new())).is_err(),
            "full"
        );
        let b = q.take_batch().unwrap();
        assert_eq!(b.iter().map(|f| f.req_id).collect::<Vec<_>>(), vec![1, 2]);
        q.close_with(Some(Frame::request(3, 0, bytes::Bytes::new())));
        assert!(
            q.push(Frame::request(1, 4, bytes::Bytes::new())).is_err(),
            "closed"
        );
        assert_eq!(
            q.take_batch().unwrap()[0].cmd,
            3,
            "the close frame still goes out"
        );
        assert!(q.take_batch().is_none());
    }
}
