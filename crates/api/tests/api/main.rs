//! In-process tests of the HTTP API through `app()` and `oneshot`, one module per resource:
//! each endpoint's success path and its main refusals, with status, error code and the
//! answer's key fields.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod accounts;
mod friends;
mod groups;
mod messages;
mod service;
mod support;
