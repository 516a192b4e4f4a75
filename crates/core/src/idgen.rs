//! Time-ordered 64-bit ids: 41 bits of milliseconds since 2025-01-01, 10 bits of node id,
//! 12 bits of counter. Ids from one generator strictly increase even if the wall clock steps
//! back (the generator keeps using its own high-water mark) or more than 4,096 ids are
//! asked for in one millisecond (it borrows the next millisecond).

use std::sync::atomic::{AtomicU64, Ordering};

const EPOCH_MS: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

pub struct IdGen {
    node: u64,
    /// `(ms << SEQ_BITS) | seq` of the last id handed out.
    last: AtomicU64,
}

impl IdGen {
    /// `node` is masked to 10 bits; distinct processes must use distinct nodes.
    pub fn new(node: u16) -> Self {
        Self {
            node: u64::from(node & MAX_NODE),
            last: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> u64 {
        let now = crate::now_ms().saturating_sub(EPOCH_MS) << SEQ_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = if now > last { now } else { last + 1 };
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let ms = candidate >> SEQ_BITS;
                    let seq = candidate & ((1 << SEQ_BITS) - 1);
                    return (ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq;
                }
                Err(actual) => last = actual,
            }
        }
    }

    /// Ensures every later id is greater than `id` (used after a restart, so ids stay
    /// ordered even if the clock is behind what was persisted).
    pub fn observe(&self, id: u64) {
        let ms = id >> (NODE_BITS + SEQ_BITS);
        let seq = id & ((1 << SEQ_BITS) - 1);
        self.last
            .fetch_max((ms << SEQ_BITS) | seq, Ordering::Relaxed);
    }

    /// The millisecond timestamp (Unix epoch) embedded in an id.
    pub fn timestamp_ms(id: u64) -> u64 {
        (id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS
    }

    /// The node embedded in an id.
    pub fn node_of(id: u64) -> u16 {
        ((id >> SEQ_BITS) & u64::from(MAX_NODE)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_and_carry_node_and_time() {
        let g = IdGen::new(5);
        let mut prev = 0;
        for _ in 0..20_000 {
            let id = g.next();
            assert!(id > prev);
            assert_eq!(IdGen::node_of(id), 5);
            prev = id;
        }
        let ts = IdGen::timestamp_ms(prev);
        // Borrowing ahead is bounded: 20,000 ids need at most 5 ms of borrowed time.
        assert!(ts.abs_diff(crate::now_ms()) < 1_000);
    }

    #[test]
    fn observe_moves_the_high_water_mark() {
        let g = IdGen::new(1);
        let future = IdGen::new(1);
        future.observe((crate::now_ms() - EPOCH_MS + 60_000) << (NODE_BITS + SEQ_BITS));
        let far = future.next();
        g.observe(far);
        assert!(g.next() > far);
    }

    #[test]
    fn concurrent_ids_are_unique() {
        let g = std::sync::Arc::new(IdGen::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..5_000).map(|_| g.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
