//! Configuration: ICE servers, bind address, timeouts, buffer sizes.

use std::net::SocketAddr;
use std::time::Duration;

use glare_udp::{HostFilter, IceServerUrl};

use crate::{Error, ErrorKind};

/// One ICE server, parsed from a browser-style URL: `stun:HOST[:PORT]` gives
/// server-reflexive candidates, `turn:USER:PASS@HOST[:PORT][?transport=udp|tcp]`
/// (or `turns:` over TLS) relay candidates. `Debug` never shows a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer(pub(crate) IceServerUrl);

impl IceServer {
    /// Parses one `stun:`, `turn:` or `turns:` URL.
    pub fn parse(url: &str) -> Result<Self, Error> {
        IceServerUrl::parse(url.trim())
            .map(Self)
            .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "bad ICE server URL", e))
    }

    /// Whether it is a TURN server (relay candidates).
    pub fn is_turn(&self) -> bool {
        matches!(self.0, IceServerUrl::Turn(_))
    }
}

/// How a [`Peer`](crate::Peer) (or a bare [`Endpoint`](crate::transport::Endpoint))
/// is set up. `Config::default()` is what a browser would do with no ICE servers:
/// one UDP socket on every interface, host candidates only.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// ICE servers (`stun:` gives server-reflexive candidates, `turn:` relay ones).
    pub ice_servers: Vec<IceServer>,
    /// The local UDP address; port 0 picks one. Default `0.0.0.0:0` (every IPv4
    /// interface). One socket serves every link of a peer.
    pub bind: SocketAddr,
    /// Which interface addresses become host candidates when `bind` is a wildcard.
    /// When no address passes (a machine with loopback only), loopback is used.
    pub host_filter: HostFilter,
    /// The UDP driver (GSO, GRO, socket buffers, batch sizes).
    pub udp: glare_udp::Config,
    /// Negotiation timeouts and limits (connect, answer, ICE restart policy).
    pub negotiator: glare_negotiate::Config,
    /// The most a channel may have written and not yet acknowledged: the ceiling of
    /// its adaptive write limit, which starts at 128 KiB and grows with the path's
    /// round-trip time (25 MB/s × the smallest RTT seen), since a channel moves at
    /// most about limit/RTT while sctp-proto's per-packet scans make a full large
    /// buffer expensive on fast paths (BENCHMARKS.md). Default 1 MiB.
    pub sctp_send_buffer: usize,
    /// A channel waiting under back-pressure writes again once its buffered amount
    /// falls below this (at most half the channel's current write limit is used).
    /// Default 256 KiB.
    pub buffered_amount_low: usize,
    /// How often a link refreshes its statistics (selected candidate pair, RTT, for
    /// [`Connection::stats`](crate::Connection::stats) and for growing the channels'
    /// write limit with the RTT); `None`: never. Default 1 s.
    pub stats_interval: Option<Duration>,
    /// Broker client settings (timeouts, reconnect backoff, transport).
    pub client: glare_client::Options,
    /// How long STUN queries and TURN allocations may take when the peer starts.
    /// Default 3 s.
    pub stun_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            host_filter: HostFilter::default(),
            udp: glare_udp::Config::default(),
            negotiator: glare_negotiate::Config::default(),
            sctp_send_buffer: 1024 * 1024,
            buffered_amount_low: 256 * 1024,
            stats_interval: Some(Duration::from_secs(1)),
            client: glare_client::Options::default(),
            stun_timeout: Duration::from_secs(3),
        }
    }
}

impl Config {
    /// Loopback only: a socket on `127.0.0.1`, for tests and single-machine demos.
    pub fn loopback() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            host_filter: HostFilter::loopback_only(),
            ..Self::default()
        }
    }
}
