//! The trace id of the command a task is handling: set by the api process around each
//! command it takes off the bus, read where that command's push events are made, so that
//! one send can be followed from gateway to api to push without the IM layer knowing.

tokio::task_local! {
    /// The trace id of the command being handled on this task (0: none).
    pub static TRACE: u64;
}

/// The trace id of the command this task is handling, if any.
pub fn current_trace() -> u64 {
    TRACE.try_with(|t| *t).unwrap_or(0)
}

/// A trace id as the roles log it and carry it in the `xinge-trace` header.
pub(crate) fn format(trace: u64) -> String {
    format!("{trace:016x}")
}

/// A `xinge-trace` header's trace id (0 if it is not one).
pub(crate) fn parse(header: &str) -> u64 {
    u64::from_str_radix(header, 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trace_is_seen_only_inside_its_scope() {
        assert_eq!(current_trace(), 0, "no command, no trace");
        let seen = TRACE.scope(0xfeed, async { current_trace() }).await;
        assert_eq!(seen, 0xfeed);
        assert_eq!(current_trace(), 0);
    }

    #[test]
    fn trace_ids_round_trip_through_their_header() {
        assert_eq!(format(0xabc), "0000000000000abc");
        assert_eq!(parse(&format(u64::MAX)), u64::MAX);
        assert_eq!(parse(&format(0)), 0);
        assert_eq!(parse(""), 0, "no header");
        assert_eq!(parse("not hex"), 0);
        assert_eq!(parse("1ffffffffffffffff"), 0, "too long");
    }
}
