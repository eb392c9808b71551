//! glare's negotiation state machine: glare-proof offer/answer for one WebRTC link.
//!
//! Two peers may both start a connection, or both renegotiate, at the same moment.
//! This crate makes the outcome always one connection both sides agree on, with
//! nothing either side asked for lost. It implements PROTOCOL.md §3 for one link:
//!
//! - the W3C signaling state (`stable`, `have-local-offer`, `have-remote-offer`) and
//!   pending vs current descriptions;
//! - tie-breakers drawn when the link starts and carried on every offer and answer;
//!   the smaller is polite; equal ones are redrawn and the offers retried after a
//!   random 0–50 ms delay;
//! - perfect negotiation on the first and every later exchange: the polite side rolls
//!   its offer back, answers, and offers again; the impolite side ignores a colliding
//!   offer and its candidates;
//! - a queue of wanted [`Change`]s that survives rollbacks: a change leaves it only
//!   when an answer to an offer carrying it has been applied, and "negotiation needed"
//!   is derived from it alone;
//! - trickle ICE: remote candidates held until their description is applied, those of
//!   an older ICE generation dropped, end-of-candidates passed on;
//! - a failure policy (str0m never reports ICE failure): a connect timeout, an ICE
//!   restart after the transport stays disconnected, failure after N restarts;
//! - `bye` from either side, at any moment.
//!
//! # What it does not do
//!
//! It writes and parses no SDP (an [`SdpEngine`] does: str0m in `glare-rtc`), moves no
//! bytes, reads no clock and gathers no candidates. It is a sans-I/O core:
//!
//! ```text
//!   app ── request(Change) / dial / close ──┐
//!                                           ▼
//!   peer's signals ── handle_signal ──▶ ┌────────────┐ ── poll_signal ──▶ signals to the peer
//!   transport state ─ handle_transport ▶│ Negotiator │ ── poll_event ───▶ role, negotiated,
//!   timer ─────────── handle_timeout ──▶└────────────┘                    connected, failed
//!                                          │     ▲     ── poll_timeout ─▶ the caller's timer
//!                   create_offer, accept_* │     │ SDP, errors
//!                   rollback, candidates   ▼     │
//!                                       SdpEngine (str0m::Rtc, or a model in tests)
//! ```
//!
//! # Getting started
//!
//! Two negotiators dialling each other at the same moment (glare on the first
//! negotiation), each with a toy engine, signals passed by hand:
//!
//! ```
//! use std::time::Instant;
//! use glare_negotiate::{Change, Config, Event, Negotiator, QueuedChange, SdpEngine, SignalingState};
//! use glare_proto::signal::{IceCandidate, Signal};
//!
//! /// A toy engine: one ICE generation, no real SDP.
//! struct Toy(&'static str);
//! impl SdpEngine for Toy {
//!     type Error = String;
//!     fn create_offer(&mut self, _changes: &[QueuedChange]) -> Result<Option<String>, String> {
//!         Ok(Some(format!("v=0\r\na=ice-ufrag:{}\r\n", self.0)))
//!     }
//!     fn accept_offer(&mut self, _offer: &str) -> Result<String, String> {
//!         Ok(format!("v=0\r\na=ice-ufrag:{}\r\n", self.0))
//!     }
//!     fn accept_answer(&mut self, _answer: &str) -> Result<(), String> { Ok(()) }
//!     fn rollback(&mut self) {}
//!     fn add_remote_candidate(&mut self, _c: &IceCandidate) -> Result<(), String> { Ok(()) }
//! }
//!
//! let now = Instant::now(); // time comes in from the caller
//! let (mut a, mut ea) = (Negotiator::with_seed(Config::default(), 1), Toy("aaaa"));
//! let (mut b, mut eb) = (Negotiator::with_seed(Config::default(), 2), Toy("bbbb"));
//! let chat = a.request(Change::OpenChannel { label: "chat".into() })?;
//! let files = b.request(Change::OpenChannel { label: "files".into() })?;
//! a.dial(now)?;
//! b.dial(now)?; // both at once: glare
//!
//! loop {
//!     // Drain both sides, then deliver: both first offers cross on the wire.
//!     let to_b: Vec<Signal> = std::iter::from_fn(|| a.poll_signal(now, &mut ea)).collect();
//!     let to_a: Vec<Signal> = std::iter::from_fn(|| b.poll_signal(now, &mut eb)).collect();
//!     if to_a.is_empty() && to_b.is_empty() {
//!         break;
//!     }
//!     for s in to_b { b.handle_signal(now, s, &mut eb)?; }
//!     for s in to_a { a.handle_signal(now, s, &mut ea)?; }
//! }
//!
//! // One side was polite: it rolled back, answered, and offered its change again.
//! for (n, chan) in [(&mut a, chat), (&mut b, files)] {
//!     assert_eq!(n.signaling_state(), SignalingState::Stable);
//!     assert!(n.queued().is_empty());
//!     let events: Vec<Event> = std::iter::from_fn(|| n.poll_event()).collect();
//!     assert!(events.contains(&Event::ChangesNegotiated { ids: vec![chan] }));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The sans-I/O contract
//!
//! - Time is a parameter (`now`); randomness comes from a caller-supplied
//!   [`RandomSource`]. Nothing here reads a clock, sleeps, spawns or touches a socket.
//! - After every input (`handle_*`, [`Negotiator::request`], [`Negotiator::dial`],
//!   [`Negotiator::close`]), drain [`Negotiator::poll_signal`] until `None` and send
//!   each signal in order, drain [`Negotiator::poll_event`], and set a timer for
//!   [`Negotiator::poll_timeout`]. Offers are created inside `poll_signal`, so they are
//!   made at the moment they are sent.
//! - Signals between two peers must stay in order per direction (candidates alone may
//!   be reordered: they are held or dropped by ICE generation).
//! - The engine is called only as [`SdpEngine`] documents; every call is synchronous.
//!
//! # Features
//!
//! `_fuzz` (test-only) exposes `sim` (the model engine and the deterministic
//! simulator) and `fuzz` (fuzz target bodies), shared by the tests, the fuzz targets
//! and the benches.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod change;
mod engine;
mod negotiator;
mod rng;

#[cfg(feature = "_fuzz")]
pub mod fuzz;
#[cfg(feature = "_fuzz")]
pub mod sim;

pub use change::{Change, ChangeId, Direction, MediaKind, QueuedChange};
pub use engine::SdpEngine;
pub use negotiator::{
    CandidateError, Config, DialError, Event, FailReason, HandleSignalError, LinkState,
    MAX_RETRY_DELAY, Negotiator, RequestError, Role, SignalingState, Stats, TransportState,
};
pub use rng::{RandomSource, SplitMix64};
