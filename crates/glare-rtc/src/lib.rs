//! glare-rtc: the str0m-backed WebRTC transport of glare, sans-I/O.
//!
//! It joins glare's glare-proof negotiation ([`glare_negotiate::Negotiator`]) and a
//! [`str0m::Rtc`] behind one face, [`Connection`]: signals from the peer, datagrams
//! and time come in; datagrams, signals, events and the next timeout come out.
//!
//! - [`StrEngine`]: [`glare_negotiate::SdpEngine`] for `str0m::Rtc`. The negotiator's
//!   queued changes are applied to str0m only when an offer is made, and glare's
//!   stable ids are mapped to str0m's channel ids and mids, so nothing str0m cannot
//!   undo is done ahead of an offer and handles survive rollbacks. Changes str0m
//!   applies with no SDP (a data channel on an existing SCTP association) are
//!   negotiated with no offer (`create_offer` gives `None`).
//! - [`Connection`]: obeys str0m's rule (drain `poll_output` to `Timeout` after every
//!   mutation) inside, so callers cannot break it; maps ICE/DTLS state to the
//!   negotiator's transport events; trickles local candidates (PROTOCOL.md §2:
//!   `sdpMid`, `sdpMLineIndex`, `usernameFragment`); skips remote mDNS `.local`
//!   candidates (peer-reflexive discovery finds such peers; counted in [`Stats`]).
//! - **Data channels** with stable [`ChannelHandle`]s, reliable/unreliable and
//!   ordered/unordered ([`ChannelOptions`]), back-pressure (`write` → `Ok(false)`) and
//!   a buffered-amount low-water event; a 256 KiB SCTP send buffer by default (str0m's
//!   is 128 KiB).
//! - **In-band signaling** (PROTOCOL.md §4): the side that dials opens `glare-signal`
//!   (protocol `glare/1`) with its first offer. Once a `glare-signal` channel is open
//!   and the transport is connected, every later signal goes over it as one JSON
//!   text message instead of [`Output::Signal`] (a `bye` goes both ways), and text
//!   arriving on it is handled inside. Signals are accepted from both paths. With
//!   two such channels (both sides dialled), signals go out on the lowest SCTP
//!   stream id. The application never sees the channel. To keep each direction in
//!   order, a side switches only once its last description sent through the broker
//!   is known to have arrived; [`Connection::needs_broker`] says when the broker
//!   channel may be closed.
//! - **Media**: audio/video tracks through the change queue
//!   ([`Connection::add_track`], [`Connection::remove_track`]) with stable
//!   [`TrackHandle`]s, frames written with [`Connection::write_frame`] (Opus for audio,
//!   VP8 for video when negotiated) and received as [`Event::TrackFrame`] (the data
//!   shared with str0m, no copy).
//! - **Stats** ([`Connection::stats`], [`Connection::channel_stats`]): bytes and
//!   messages per connection and channel, frames, in-band signals, time of connect,
//!   wire bytes, RTT and the selected candidate pair (from str0m's peer stats, every
//!   [`Config::stats_interval`]).
//!
//! # What it does not do
//!
//! No sockets, no clocks, no threads, no tokio: `glare-udp` moves the datagrams and
//! the facade joins the layers. No candidate gathering (the caller adds local
//! candidates), no TURN framing, no mDNS resolution (remote `.local` candidates are
//! skipped). No codecs: frames are written and received encoded. After the broker is
//! gone, a transport outage cannot be repaired (the ICE restart needs a signaling
//! path: while disconnected, signals go through the caller again).
//!
//! ```text
//!   peer's signals ─ handle_signal ──▶ ┌────────────────────────────┐ ── Output::Signal ──▶ to the peer
//!   datagrams ────── handle_datagram ▶ │ Connection                 │ ── Output::Transmit ▶ socket
//!   timer ────────── handle_timeout ─▶ │  Negotiator ◀─▶ StrEngine  │ ── Output::Event ───▶ app
//!   app ─ dial / open_channel / write ▶│               (str0m::Rtc) │ ── Output::Timeout ─▶ timer
//!                                      └────────────────────────────┘
//! ```
//!
//! # The contract
//!
//! - Time is a parameter (`now`), never read from a clock; it must not go backwards.
//! - After **every** call that takes input or changes the connection (`handle_*`,
//!   `dial`, `open_channel`, `write`, `add_local_candidate`, `close` …), drain
//!   [`Connection::poll_output`] until it returns [`Output::Timeout`], acting on each
//!   output in order: send transmits, send signals (in order: PROTOCOL.md §2), hand
//!   events to the application, then arm the timer.
//! - Forward every [`Output::Signal`] to the peer through the broker for as long as
//!   they come: once the in-band channel carries them, none (but `bye`) come out.
//! - `Transmit.source` is the local candidate address to send from; a datagram's
//!   `destination` given to [`Connection::handle_datagram`] must equal a local
//!   candidate address exactly.
//! - Nothing a peer sends (signal or datagram) panics: it is dropped with a log, or
//!   the link fails with a `bye`, as the negotiator documents.
//!
//! # A run loop
//!
//! Two connections in memory, in virtual time, datagrams and signals delivered at
//! once; both dial at the same moment (glare), one data channel each:
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use glare_rtc::{ChannelOptions, Config, Connection, Event, Output};
//!
//! let start = Instant::now(); // the caller's clock; glare-rtc never reads one
//! let addrs: [SocketAddr; 2] = ["10.0.0.1:5000".parse()?, "10.0.0.2:5000".parse()?];
//! let mut peers = [
//!     Connection::new(start, Config::with_seed(1)),
//!     Connection::new(start, Config::with_seed(2)),
//! ];
//! let mut chans = Vec::new();
//! for (p, a) in peers.iter_mut().zip(addrs) {
//!     p.add_local_candidate(a)?;
//!     chans.push(p.open_channel("chat", &ChannelOptions::default())?);
//!     p.dial(start)?;
//! }
//!
//! let (mut now, mut got) = (start, Vec::new());
//! while now < start + Duration::from_secs(10) && got.len() < 2 {
//!     let mut timeout = now + Duration::from_secs(1);
//!     for i in 0..2 {
//!         // Drain one side to its timeout, handing what comes out to the other.
//!         loop {
//!             let (me, other) = if i == 0 {
//!                 let (a, b) = peers.split_at_mut(1);
//!                 (&mut a[0], &mut b[0])
//!             } else {
//!                 let (a, b) = peers.split_at_mut(1);
//!                 (&mut b[0], &mut a[0])
//!             };
//!             match me.poll_output(now) {
//!                 Output::Transmit { source, destination, contents } => {
//!                     other.handle_datagram(now, source, destination, &contents);
//!                 }
//!                 Output::Signal(s) => {
//!                     let _ = other.handle_signal(now, s); // errors: peer faults, logged
//!                 }
//!                 Output::Event(Event::ChannelOpen(h, label)) if chans.contains(&h) => {
//!                     me.write(h, false, format!("hello from {label}").as_bytes())?;
//!                 }
//!                 Output::Event(Event::ChannelData(_, false, text)) => got.push(text),
//!                 Output::Event(_) => {}
//!                 Output::Timeout(t) => {
//!                     timeout = timeout.min(t);
//!                     break;
//!                 }
//!             }
//!         }
//!     }
//!     now = timeout.max(now + Duration::from_millis(1));
//!     for p in &mut peers {
//!         p.handle_timeout(now);
//!     }
//! }
//! assert_eq!(got.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Architecture invariant: glare-rtc depends on str0m but never on tokio or a socket
//! crate, and reads no clock (`cargo xtask ci` checks both).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod connection;
mod engine;

pub use connection::{
    CandidateError, CandidatePair, ChannelHandle, ChannelOptions, ChannelStats, Config, Connection,
    Event, MediaError, OpenError, Output, Reliability, SIGNAL_LABEL, SIGNAL_PROTOCOL, Stats,
    TrackHandle, WriteError,
};
pub use engine::{EngineError, StrEngine};
pub use glare_negotiate::{
    Change, ChangeId, DialError, Direction, HandleSignalError, MediaKind, RequestError,
};
pub use str0m;
