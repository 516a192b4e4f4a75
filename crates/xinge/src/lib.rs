//! The `xinge` binary's library half: wiring the roles together. `main.rs` only parses
//! flags; tests bind port 0 and call [`serve::run`] directly.

pub mod serve;
