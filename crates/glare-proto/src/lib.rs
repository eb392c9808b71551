//! glare's wire types, with no I/O.
//!
//! This crate is the contract of `PROTOCOL.md` in Rust: the broker's requests,
//! responses, errors and events (§1), the peer signals (§2), the list filter grammar,
//! an incremental Server-Sent Events decoder and encoder, and the SDP inspection the
//! negotiator needs. It reads no clock, opens no socket and depends on no runtime, so
//! every piece is usable from a browser bridge, a test, a fuzzer or a sans-I/O core.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "_fuzz")]
pub mod fuzz;

pub mod broker;
pub mod filter;
pub mod sdp;
pub mod signal;
pub mod sse;
