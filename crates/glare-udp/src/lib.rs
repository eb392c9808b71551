//! glare-udp: the UDP I/O driver (tokio + quinn-udp). **Not implemented yet.**
//!
//! This crate is a placeholder in the workspace layout of `DESIGN.md`; it holds no
//! code and has no dependencies yet. What it will hold (issue "glare-rtc and
//! glare-udp"): sockets through quinn-udp with GSO/GRO/ECN and the destination address
//! of every datagram, host candidate discovery, STUN binding for server-reflexive
//! candidates, a TURN client for relay candidates, and one reactor task per socket that
//! serves many connections through a demux table.
//!
//! Architecture invariant: glare-udp knows datagrams, not WebRTC semantics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
