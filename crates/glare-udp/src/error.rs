//! Errors, one enum per operation. Peer faults are kept apart from caller misuse.

use std::io;
use std::net::SocketAddr;

use crate::ConnectionId;

/// Binding a socket and starting its reactor failed ([`spawn`](crate::spawn)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The operating system refused to create, configure or bind the socket.
    #[error("cannot bind a UDP socket to {addr}: {source}")]
    Socket {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The socket could not be tied to the network device asked for
    /// ([`SocketConfig::bind_device`](crate::SocketConfig::bind_device)).
    #[error("cannot bind a UDP socket to device {device:?}: {source}")]
    Device {
        /// The device name asked for.
        device: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Called outside a tokio runtime (the reactor is a tokio task).
    #[error("glare-udp must be started from inside a tokio runtime")]
    NoRuntime,
}

/// A request to a running reactor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The reactor has stopped (shut down, or every handle was dropped).
    #[error("the UDP driver has stopped")]
    Closed,
    /// No connection has this id: it was removed, or it closed itself.
    #[error("no connection {0} on this UDP driver")]
    UnknownConnection(ConnectionId),
}

/// Getting a server-reflexive address from one STUN server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Caller misuse: the server URL is not `stun:host[:port]`.
    #[error("invalid STUN URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server's host name did not resolve.
    #[error("cannot resolve STUN server {host:?}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// The server's name resolved, but to no address of the socket's family.
    #[error("STUN server {host:?} has no {family} address")]
    NoAddress {
        /// The host name.
        host: String,
        /// `"IPv4"` or `"IPv6"`: the socket's family.
        family: &'static str,
    },
    /// Peer fault: no valid answer after every retransmission.
    #[error("STUN server {server} did not answer")]
    Timeout {
        /// The server's address.
        server: SocketAddr,
    },
    /// Peer fault: every answer that matched the transaction was malformed (e.g. a
    /// success response without a mapped address), and no valid one came.
    #[error("STUN server {server} answered with a malformed response")]
    MalformedResponse {
        /// The server's address.
        server: SocketAddr,
    },
    /// Peer fault: the server answered with a STUN error response.
    #[error("STUN server {server} answered error {code}: {reason}")]
    ErrorResponse {
        /// The server's address.
        server: SocketAddr,
        /// The STUN error code (e.g. 400).
        code: u16,
        /// The reason phrase the server gave.
        reason: String,
    },
    /// The driver stopped before the transaction finished.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Enumerating the machine's interface addresses failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// The operating system would not list the interfaces.
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] io::Error),
}
