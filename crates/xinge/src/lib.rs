//! The `xinge` binary's library half: wiring the roles together. `main.rs` only parses
//! flags; tests bind port 0 and call [`serve::run`] directly. [`roles`] runs one role of a
//! distributed deployment per process.

mod common;
pub mod roles;
pub mod serve;
