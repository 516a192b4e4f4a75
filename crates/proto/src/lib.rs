//! The xinge wire format, shared by server and clients.
//!
//! ```text
//! frame.rs  the long-connection frame: 8-byte header + JSON body; TCP length prefix;
//!           WebSocket binary (same bytes) and text (JSON envelope) forms
//! cmd.rs    command numbers: gateway-owned (auth, ping, signal, close) and business
//! api.rs    the JSON bodies of the HTTP API and of the business commands
//! ```
//! docs/PROTOCOL.md is the prose version of this crate.

pub mod api;
pub mod cmd;
pub mod frame;

pub use frame::{Frame, FrameError};

/// Protocol version, sent by clients in the auth frame; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
