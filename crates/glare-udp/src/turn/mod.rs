//! TURN (RFC 8656, RFC 5766): relay candidates through a server, over UDP (the
//! driver's own socket), TCP or TLS.
//!
//! - [`url`]: `stun:`/`turn:`/`turns:` URLs and the `RTCIceServer` shape.
//! - [`client`]: the sans-I/O client of one allocation.
//! - [`framing`]: `ChannelData` and the TCP/TLS message stream.
//! - [`stream`]: the tokio task of one TCP/TLS connection.

pub(crate) mod client;
pub(crate) mod framing;
pub(crate) mod stream;
pub(crate) mod url;
