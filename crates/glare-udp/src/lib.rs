//! glare-udp: the UDP I/O driver of glare — tokio and quinn-udp under sans-I/O
//! connections.
//!
//! This crate moves datagrams between one UDP socket and many connections. It binds
//! the socket through [quinn-udp](https://docs.rs/quinn-udp) (GSO send batching, GRO
//! receive batches split by stride, ECN both ways, and the destination address of
//! every datagram, which str0m needs to match its local candidates), runs one reactor
//! task per socket that owns every connection on it, demultiplexes incoming datagrams
//! to them, gathers host candidates from the machine's interfaces, server-reflexive
//! candidates with STUN binding requests and relay candidates from TURN servers (over
//! UDP through the same socket, over TCP, or over TLS), and counts whatever it drops.
//!
//! # What this crate does not do
//!
//! - **No WebRTC.** It knows datagrams, not ICE, DTLS or SCTP: it does not depend on
//!   `glare-rtc` or str0m. The facade implements [`Connection`] over a `glare-rtc`
//!   connection (str0m's `Rtc::accepts` becomes [`Connection::accepts`]).
//! - **No TURN server, and no TURN over DTLS** (`turns:…?transport=udp`). The TURN
//!   client asks for IPv4 relayed addresses (no REQUESTED-ADDRESS-FAMILY) and uses the
//!   RFC 5766 long-term credentials (MD5 key; no RFC 8489 SHA-256 password
//!   algorithms).
//! - **No per-packet locks or channels.** Users reach a connection through a
//!   [`ConnectionHandle`], one message per call ([`ConnectionHandle::call`]); a
//!   connection that wants to tell its user about events brings its own channel.
//! - **No `unsafe`.** quinn-udp holds the syscalls.
//!
//! ```text
//!                       one reactor task per socket
//!   ┌──────────────────────────────────────────────────────────────────────┐
//!   │  recvmmsg (GRO) ──> split by stride ──> demux ──┬─> STUN client      │
//!   │        ^                                        │   (own bindings)   │
//!   │        │           (local, remote) table, ──────┴─> Connection ...   │
//!   │        │           then accepts()                   handle_datagram  │
//!   │  socket│                                                 │           │
//!   │        │   sendmsg (GSO) <── batch same-size <── poll_transmit       │
//!   │        │                      datagrams          poll_timeout ──> timers
//!   └────────┼─────────────────────────────────────────────────────────────┘
//!            │                      ^ commands: add, call, remove, stats, STUN, TURN
//!        the network                │
//!                         Driver / ConnectionHandle (any task)
//! ```
//!
//! Each wake-up reads at most [`Config::max_recv_batches`] batches, feeds every
//! datagram, fires due timers, drains the touched connections (at most
//! [`Config::max_transmits`] datagrams) and sends what they wrote as GSO batches.
//! The reactor reads the clock in one place (`tokio::time::Instant::now()`), so
//! `#[tokio::test(start_paused = true)]` drives its timers.
//!
//! # Demultiplexing
//!
//! For every datagram, in order:
//! 1. larger than [`Config::max_datagram_size`]: dropped ([`Stats::dropped_oversize`]);
//! 2. empty, or STUN-framed (first two bits 0, magic cookie `0x2112A442`) with a length
//!    field that disagrees: dropped ([`Stats::dropped_malformed`]);
//! 3. a STUN response to one of the driver's own binding transactions (matched by
//!    transaction id and server address): to the STUN client, never to a connection;
//! 4. from the address of a TURN server the driver allocated on over UDP: to that
//!    allocation's TURN client. A `ChannelData` message or Data indication is unwrapped
//!    into a datagram from the peer to the relayed address and goes on to step 5;
//!    anything else from the server (responses, junk) stays with the client
//!    ([`Stats::turn_messages`]). TCP/TLS allocations feed the same path from their
//!    streams;
//! 5. the `(local, remote)` pair is in the table: to that connection. Pairs are learned
//!    from `accepts()` and from the `(source, destination)` of a connection's transmits;
//! 6. else the first connection whose [`Connection::accepts`] says yes gets it, and the
//!    pair is recorded;
//! 7. else dropped ([`Stats::dropped_unknown`]).
//!
//! # Getting started
//!
//! An echo connection on a loopback socket:
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use glare_udp::{Config, Connection, Datagram, Transmit};
//!
//! /// Echoes every datagram back to whoever sent it.
//! #[derive(Default)]
//! struct Echo {
//!     queue: Vec<(SocketAddr, Vec<u8>)>,
//! }
//!
//! impl Connection for Echo {
//!     fn accepts(&self, _: &Datagram<'_>) -> bool {
//!         true
//!     }
//!     fn handle_datagram(&mut self, _now: Instant, d: Datagram<'_>) {
//!         self.queue.push((d.source, d.payload.to_vec()));
//!     }
//!     fn poll_transmit(&mut self, _now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
//!         let (to, bytes) = self.queue.pop()?;
//!         buf.extend_from_slice(&bytes);
//!         Some(Transmit::new(to))
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> {
//!         None
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//!     fn is_closed(&self) -> bool {
//!         false
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let driver = glare_udp::spawn::<Echo>("127.0.0.1:0".parse()?, Config::default())?;
//! let _echo = driver.add(Echo::default()).await?;
//!
//! let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
//! client.send_to(b"hello", driver.local_addr()).await?;
//! let mut buf = [0; 64];
//! let (n, _) = client.recv_from(&mut buf).await?;
//! assert_eq!(&buf[..n], b"hello");
//! assert_eq!(driver.stats().await?.sent_datagrams, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Candidates for the same socket: [`Driver::host_candidates`] with a [`HostFilter`],
//! [`Driver::server_reflexive`] with [`StunServer`]s parsed from `stun:` URLs, and
//! [`Driver::allocate_relays`] with [`TurnServer`]s parsed from `turn:`/`turns:` URLs
//! ([`IceServerUrl`] and [`IceServer`] take them as a browser does).
//!
//! # Relays (TURN)
//!
//! [`Driver::allocate_relays`] makes one allocation per server (RFC 8656: Allocate
//! with the 401 realm/nonce exchange, a new nonce on 438) and returns
//! [`RelayCandidate`]s. A connection then sends from a relayed address like from any
//! local one ([`Transmit::source`]): the driver creates the peer's permission first
//! (holding a few datagrams meanwhile), sends Send indications, and binds a channel
//! once a peer is busy ([`TurnConfig::channel_threshold`]) to send `ChannelData` (padded
//! to four bytes over TCP/TLS). What comes back is delivered with `destination` = the
//! relayed address and `source` = the peer. The reactor refreshes allocations,
//! permissions (in use) and channels before they expire, and releases allocations on
//! [`Driver::shutdown`]. The protocol logic is sans-I/O; each TCP/TLS connection has a
//! small task that only moves bytes (rustls with aws-lc-rs, Mozilla roots by default,
//! [`turn_tls_config_with_roots`] for private ones).
//!
//! Architecture invariant: glare-udp knows datagrams, not WebRTC semantics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod candidates;
mod connection;
mod driver;
mod error;
#[cfg(feature = "_fuzz")]
pub mod fuzz;
mod socket;
mod stun;
mod turn;

pub use candidates::{HostFilter, host_addresses};
pub use connection::{Connection, Datagram, Ecn, Transmit};
pub use driver::RelayCandidate;
pub use driver::{Config, ConnectionHandle, ConnectionId, Driver, Stats, WeakDriver, spawn};
pub use error::{BindError, CandidateError, DriverError, StunError, TurnError, UrlError};
pub use socket::SocketConfig;
pub use stun::{ReflexiveCandidate, StunConfig, StunServer};
pub use turn::client::TurnConfig;
pub use turn::stream::tls_config_with_roots as turn_tls_config_with_roots;
pub use turn::url::{IceServer, IceServerUrl, TurnServer, TurnTransport};
