//! The contract between the driver and the connections it serves.
//!
//! The driver knows datagrams, not WebRTC: everything it needs from a connection is in
//! [`Connection`]. The facade implements it over `glare-rtc` connections (str0m
//! underneath); tests and benches implement it with small datagram toys.

use std::net::SocketAddr;
use std::time::Instant;

/// Explicit Congestion Notification codepoint of a datagram (RFC 3168).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecn {
    /// ECT(0): the sender is ECN-capable.
    Ect0,
    /// ECT(1): the sender is ECN-capable (L4S).
    Ect1,
    /// CE: congestion was experienced on the path.
    Ce,
}

impl Ecn {
    pub(crate) fn from_quinn(ecn: quinn_udp::EcnCodepoint) -> Self {
        match ecn {
            quinn_udp::EcnCodepoint::Ect0 => Self::Ect0,
            quinn_udp::EcnCodepoint::Ect1 => Self::Ect1,
            quinn_udp::EcnCodepoint::Ce => Self::Ce,
        }
    }

    pub(crate) fn to_quinn(self) -> quinn_udp::EcnCodepoint {
        match self {
            Self::Ect0 => quinn_udp::EcnCodepoint::Ect0,
            Self::Ect1 => quinn_udp::EcnCodepoint::Ect1,
            Self::Ce => quinn_udp::EcnCodepoint::Ce,
        }
    }
}

/// One received datagram, as the driver hands it to a connection.
///
/// `destination` is the exact local address the datagram was sent to (recovered with
/// `IP_PKTINFO` on a wildcard socket), which is what str0m compares against its local
/// candidates. IPv4-mapped IPv6 addresses are given in their IPv4 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Datagram<'a> {
    /// The remote address the datagram came from.
    pub source: SocketAddr,
    /// The local address the datagram was sent to.
    pub destination: SocketAddr,
    /// The ECN bits the datagram carried, if any.
    pub ecn: Option<Ecn>,
    /// The datagram's bytes (one datagram: GRO batches are already split).
    pub payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// A datagram from `source` to `destination` (for tests of [`Connection`] impls).
    pub fn new(
        source: SocketAddr,
        destination: SocketAddr,
        ecn: Option<Ecn>,
        payload: &'a [u8],
    ) -> Self {
        Self {
            source,
            destination,
            ecn,
            payload,
        }
    }
}

/// What a connection wrote into the driver's buffer in [`Connection::poll_transmit`].
///
/// The bytes themselves are the ones the connection appended to the buffer; this says
/// where they go. A connection normally writes one datagram per call and lets the
/// driver batch consecutive same-size datagrams to one destination into one GSO send;
/// it may also write several datagrams of `segment_size` bytes each (the last one may
/// be shorter), quinn style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    /// Where to send the datagram(s).
    pub destination: SocketAddr,
    /// The local address to send from: on a wildcard socket its IP selects the source
    /// address (`IP_PKTINFO`); on a socket bound to one address it must be that address
    /// (or `None`). Its port must be the socket's.
    pub source: Option<SocketAddr>,
    /// The ECN codepoint to mark the datagram(s) with.
    pub ecn: Option<Ecn>,
    /// When the bytes hold several datagrams: the size of each (the last may be
    /// shorter). `None` for a single datagram.
    pub segment_size: Option<usize>,
}

impl Transmit {
    /// One datagram to `destination`, source chosen by the socket, no ECN.
    pub fn new(destination: SocketAddr) -> Self {
        Self {
            destination,
            source: None,
            ecn: None,
            segment_size: None,
        }
    }

    /// Sends from `source` (see [`Transmit::source`]).
    #[must_use]
    pub fn with_source(mut self, source: SocketAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Marks the datagram(s) with `ecn`.
    #[must_use]
    pub fn with_ecn(mut self, ecn: Ecn) -> Self {
        self.ecn = Some(ecn);
        self
    }

    /// Says the bytes hold several datagrams of `segment_size` bytes each.
    #[must_use]
    pub fn with_segment_size(mut self, segment_size: usize) -> Self {
        self.segment_size = Some(segment_size);
        self
    }
}

/// A sans-I/O connection the driver serves: datagrams and time in, datagrams out.
///
/// The facade implements this over a `glare-rtc` connection (str0m's `Rtc`); the
/// driver never sees what is inside. All methods run on the reactor task that owns
/// the connection, so they must not block. Time always comes in as a parameter,
/// read from the driver's one clock hook.
///
/// After any input ([`handle_datagram`](Connection::handle_datagram),
/// [`handle_timeout`](Connection::handle_timeout), or a user's
/// [`ConnectionHandle::call`](crate::ConnectionHandle::call)), the driver drains
/// [`poll_transmit`](Connection::poll_transmit) until it returns `None` (or the
/// per-wake-up budget runs out, in which case it comes back without waiting), then reads
/// [`poll_timeout`](Connection::poll_timeout) and [`is_closed`](Connection::is_closed).
pub trait Connection: Send + 'static {
    /// Whether a datagram from a `(destination, source)` pair the driver has not
    /// seen yet belongs to this connection: str0m's `Rtc::accepts`. On `true` the
    /// driver records the pair for this connection and delivers the datagram.
    fn accepts(&self, datagram: &Datagram<'_>) -> bool;

    /// Takes one datagram from the network.
    fn handle_datagram(&mut self, now: Instant, datagram: Datagram<'_>);

    /// Appends the next datagram(s) to send to `buf` and says where they go, or
    /// returns `None` (having appended nothing) when there is nothing to send now.
    ///
    /// `buf` may already hold other connections' datagrams: append, never clear.
    #[must_use]
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit>;

    /// When the connection next wants [`handle_timeout`](Connection::handle_timeout).
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant>;

    /// Time has reached the instant [`poll_timeout`](Connection::poll_timeout) gave.
    fn handle_timeout(&mut self, now: Instant);

    /// Whether the connection is finished: the driver then removes it (and its pairs
    /// from the demux table) and drops it.
    fn is_closed(&self) -> bool;
}
