//! glare-udp: the UDP I/O driver of glare — tokio and quinn-udp under sans-I/O
//! connections.
//!
//! This crate moves datagrams between one UDP socket and many connections. It binds
//! the socket through [quinn-udp](https://docs.rs/quinn-udp) (GSO send batching, GRO
//! receive batches split by stride, ECN both ways, and the destination address of
//! every datagram, which str0m needs to match its local candidates), runs one reactor
//! task per socket that owns every connection on it, demultiplexes incoming datagrams
//! to them, gathers host candidates from the machine's interfaces and server-reflexive
//! candidates with STUN binding requests, and counts whatever it drops.
//!
//! # What this crate does not do
//!
//! - **No WebRTC.** It knows datagrams, not ICE, DTLS or SCTP: it does not depend on
//!   `glare-rtc` or str0m. The facade implements [`Connection`] over a `glare-rtc`
//!   connection (str0m's `Rtc::accepts` becomes [`Connection::accepts`]).
//! - **No TURN yet**: relay candidates are future work.
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
//!            │                      ^ commands: add, call, remove, stats, STUN
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
//! 4. the `(local, remote)` pair is in the table: to that connection. Pairs are learned
//!    from `accepts()` and from the `(source, destination)` of a connection's transmits;
//! 5. else the first connection whose [`Connection::accepts`] says yes gets it, and the
//!    pair is recorded;
//! 6. else dropped ([`Stats::dropped_unknown`]).
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
//! and [`Driver::server_reflexive`] with [`StunServer`]s parsed from `stun:` URLs.
//!
//! Architecture invariant: glare-udp knows datagrams, not WebRTC semantics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod candidates;
mod connection;
mod driver;
mod error;
mod socket;
mod stun;

pub use candidates::{HostFilter, host_addresses};
pub use connection::{Connection, Datagram, Ecn, Transmit};
pub use driver::{Config, ConnectionHandle, ConnectionId, Driver, Stats, spawn};
pub use error::{BindError, CandidateError, DriverError, StunError};
pub use socket::SocketConfig;
pub use stun::{ReflexiveCandidate, StunConfig, StunServer};
