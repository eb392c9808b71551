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

/// A `stun:`, `turn:` or `turns:` URL (or an ICE server) is malformed: caller misuse.
/// The message never shows a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ICE server URL {url:?}: {reason}")]
#[non_exhaustive]
pub struct UrlError {
    /// The URL as given, password replaced.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Getting or keeping a relay allocation on one TURN server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// Caller misuse: the server has no username or credential.
    #[error("TURN server {server} needs a username and a credential")]
    MissingCredentials {
        /// The server as configured.
        server: String,
    },
    /// Caller misuse: the credentials cannot be encoded (e.g. a user name over 512
    /// bytes, or a password the `OpaqueString` profile refuses).
    #[error("TURN server {server}: unusable credentials: {reason}")]
    Credentials {
        /// The server's address.
        server: SocketAddr,
        /// What is wrong.
        reason: &'static str,
    },
    /// The server's host name did not resolve.
    #[error("cannot resolve TURN server {host:?}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// The server's name resolved, but to no address of the socket's family.
    #[error("TURN server {host:?} has no {family} address")]
    NoAddress {
        /// The host name.
        host: String,
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
    },
    /// The TCP connection to the server could not be made.
    #[error("cannot connect to TURN server {server}: {source}")]
    Connect {
        /// The server's address.
        server: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake with a `turns:` server failed (e.g. an untrusted
    /// certificate).
    #[error("TLS with TURN server {server} failed: {reason}")]
    Tls {
        /// The server's address.
        server: SocketAddr,
        /// What rustls said.
        reason: String,
    },
    /// Reading or writing the TCP/TLS stream failed.
    #[error("TURN server {server} connection failed: {source}")]
    Io {
        /// The server's address.
        server: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Peer fault: the server closed the TCP/TLS connection (the allocation is gone),
    /// or sent bytes that are neither STUN nor `ChannelData`.
    #[error("TURN server {server} closed the connection")]
    ConnectionClosed {
        /// The server's address.
        server: SocketAddr,
    },
    /// The server rejected the credentials (a 401 answer to an authenticated
    /// request): wrong user name or password.
    #[error("TURN server {server} rejected the credentials (401 Unauthorized, realm {realm:?})")]
    Unauthorized {
        /// The server's address.
        server: SocketAddr,
        /// The realm the server named.
        realm: String,
    },
    /// The server answered with another error (e.g. 486 Allocation Quota Reached,
    /// 508 Insufficient Capacity, 437 Allocation Mismatch).
    #[error("TURN server {server} answered error {code}: {reason}")]
    Rejected {
        /// The server's address.
        server: SocketAddr,
        /// The STUN error code.
        code: u16,
        /// The reason phrase the server gave.
        reason: String,
    },
    /// Peer fault: no answer in time.
    #[error("TURN server {server} did not answer")]
    Timeout {
        /// The server's address.
        server: SocketAddr,
    },
    /// Peer fault: an answer that cannot be used (e.g. a success without a relayed
    /// address, a 401 without realm or nonce).
    #[error("TURN server {server} answered with a malformed response")]
    MalformedResponse {
        /// The server's address.
        server: SocketAddr,
    },
    /// A live allocation could not be refreshed: it is gone.
    #[error("TURN server {server} refused to refresh the allocation: {reason}")]
    RefreshFailed {
        /// The server's address.
        server: SocketAddr,
        /// The error code and reason, or "no answer".
        reason: String,
    },
    /// A live allocation expired before a refresh succeeded.
    #[error("the allocation on TURN server {server} expired")]
    Expired {
        /// The server's address.
        server: SocketAddr,
    },
    /// Caller misuse: a UDP allocation on this server from this socket is already
    /// being made (one allocation per server and socket over UDP).
    #[error("an allocation on TURN server {server} from this socket is in progress")]
    Busy {
        /// The server's address.
        server: SocketAddr,
    },
    /// The driver stopped before the allocation finished.
    #[error(transparent)]
    Driver(#[from] DriverError),
}
