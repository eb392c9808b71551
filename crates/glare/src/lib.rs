//! glare: two programs connect peer to peer over WebRTC without caring who calls
//! whom.
//!
//! A [`Peer`] opens a channel on a glare broker (PROTOCOL.md §1), hosts sessions
//! that others find by tag, and dials or accepts links. Each link is a
//! [`Connection`]: glare-proof negotiation (tie-breakers, then W3C perfect
//! negotiation, nothing lost to a rollback) over str0m, driven by a batched UDP
//! reactor (tokio + quinn-udp). Its [`DataChannel`]s carry messages with
//! back-pressure, or bytes through an `AsyncRead + AsyncWrite` adapter.
//!
//! ```text
//!   your code ──> Peer ──> Connection ──> DataChannel (send / recv / stream)
//!                  │            │
//!                  │            └─ lives in the UDP reactor task: glare-rtc
//!                  │               (negotiator + str0m) served by glare-udp
//!                  └─ broker channel (glare-client, WebSocket, auto-resume):
//!                     sessions, list/watch, signals to other peers
//! ```
//!
//! # What glare does not do
//!
//! - **Candidates are gathered once**, when the peer starts (host addresses, STUN,
//!   TURN allocations), not per link; a network change needs a new peer.
//! - **No TLS to the broker yet** (`http://` brokers only).
//! - **One UDP socket per peer, one address family** (IPv4 by default).
//! - **No receive-side flow control towards the application**: messages a
//!   [`DataChannel`] receives queue until [`DataChannel::recv`] reads them. Sending
//!   is flow-controlled ([`DataChannel::send`] waits).
//!
//! # Getting started
//!
//! One side hosts a session and accepts; the other dials it. Whoever dials first
//! (or both at once) makes no difference.
//!
//! ```no_run
//! use bytes::Bytes;
//! use glare::{ChannelOptions, Config, Message, Peer};
//!
//! # async fn run() -> Result<(), glare::Error> {
//! // Side A: host a listed session tagged "demo", accept a link, echo one message.
//! let a = Peer::new("http://127.0.0.1:8080", Config::default()).await?;
//! let sid = a.host(["demo"], serde_json::json!({"name": "a"}), true).await?;
//! tokio::spawn(async move {
//!     let conn = a.accept().await?;
//!     let mut chan = conn.accept_channel().await?;
//!     let msg = chan.recv().await?;
//!     chan.send(Bytes::copy_from_slice(msg.as_bytes())).await.ok()
//! });
//!
//! // Side B: dial the session, open a channel, send and read back.
//! let b = Peer::new("http://127.0.0.1:8080", Config::default()).await?;
//! let conn = b.connect(&sid).await?;
//! conn.connected().await?;
//! println!("role: {:?}", conn.role());
//! let mut chan = conn.open_channel("chat", ChannelOptions::default()).await?;
//! chan.send(Bytes::from_static(b"hello")).await?;
//! assert_eq!(chan.recv().await, Some(Message::Binary(Bytes::from_static(b"hello"))));
//! conn.close("done").await;
//! # Ok(()) }
//! ```
//!
//! For the common case of dialling one session with defaults, [`connect`] does it in
//! one line. To find sessions, [`Peer::list`] and [`Peer::watch`] take a tag
//! filter (`chat,!busy`).
//!
//! # Features
//!
//! - Glare-proof links: two peers dialling each other at once end with one link,
//!   opposite [`Role`]s (PROTOCOL.md §3).
//! - Data channels reliable or not, ordered or not ([`ChannelOptions`]), opened by
//!   either side at any time.
//! - Media tracks ([`Connection::add_track`], [`Track`]): Opus audio and VP8 video
//!   frames written and received, negotiated through the same glare-proof queue.
//! - In-band signaling: once a link's `glare-signal` channel is open, later
//!   signals travel over the link itself, so renegotiation works with the broker gone.
//! - Files over a channel by PROTOCOL.md §5 ([`mod@file`]).
//! - Without a broker: [`transport::Endpoint`] makes links whose signals you carry
//!   yourself.
//! - Re-exports of the layers below: [`broker`] (run one in-process), [`client`],
//!   [`proto`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
mod config;
mod connection;
mod error;
pub mod file;
mod media;
mod peer;
pub mod transport;

pub use channel::{ChannelSender, ChannelStream, DataChannel, Message, STREAM_CHUNK};
pub use config::{Config, IceServer};
pub use connection::{CandidatePair, CandidateType, Connection, Stats};
pub use error::{Error, ErrorKind};
pub use glare_negotiate::Role;
pub use glare_rtc::{ChannelOptions, Direction, MediaKind, Reliability};
pub use glare_udp::HostFilter;
pub use media::{Frame, Track};
pub use peer::{Peer, connect};
pub use transport::State;

pub use glare_broker as broker;
pub use glare_client as client;
pub use glare_proto as proto;
