//! glare-rtc: the str0m-backed WebRTC transport (sans-I/O). **Not implemented yet.**
//!
//! This crate is a placeholder in the workspace layout of `DESIGN.md`; it holds no
//! code and does not depend on str0m yet. What it will hold (issue "glare-rtc and
//! glare-udp"): the engine trait of `glare-negotiate` implemented for `str0m::Rtc`, a
//! `Connection` that obeys str0m's drain-after-every-mutation rule, data channels with
//! stable handles and back-pressure, media tracks and stats — with time and datagrams
//! coming in from the caller, never from a clock or a socket.
//!
//! Architecture invariant: glare-rtc depends on str0m but never on tokio or a socket
//! crate (`cargo xtask ci` checks this with `cargo tree`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
