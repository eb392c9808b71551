//! STUN: server URLs, the packet check the demultiplexer runs first, and a sans-I/O
//! binding client (RFC 5389 retransmission) that the reactor drives on its socket.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{ErrorCode, MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};
use tracing::{debug, trace};

use crate::StunError;

/// RFC 5389 magic cookie, at bytes 4..8 of every STUN message.
pub(crate) const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// A STUN header: type, length, cookie, transaction id.
pub(crate) const HEADER_LEN: usize = 20;
/// The length of a STUN transaction id.
pub(crate) const TRANSACTION_ID_LEN: usize = 12;

/// How a datagram looks to the demultiplexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StunShape {
    /// Not STUN (first two bits set, or no magic cookie): DTLS, RTP, garbage.
    NotStun,
    /// Has a STUN header whose length field disagrees with the datagram, or which is
    /// shorter than a header: nobody can use it.
    Malformed,
    /// A well-framed STUN message: `response` when its class is a success or error
    /// response, with its transaction id.
    Stun {
        response: bool,
        transaction: [u8; TRANSACTION_ID_LEN],
    },
}

/// Classifies `payload` by its first bytes only (RFC 5389 section 6 and RFC 7983).
pub(crate) fn shape(payload: &[u8]) -> StunShape {
    let Some(&first) = payload.first() else {
        return StunShape::Malformed;
    };
    if first & 0xC0 != 0 {
        return StunShape::NotStun;
    }
    if payload.len() < HEADER_LEN {
        // Starts like STUN (first byte 0..=63 also covers nothing else WebRTC sends
        // that short), but a header does not fit: only a truncated STUN message
        // looks like this when the cookie is there.
        return if payload.len() >= 8 && payload[4..8] == MAGIC_COOKIE {
            StunShape::Malformed
        } else {
            StunShape::NotStun
        };
    }
    if payload[4..8] != MAGIC_COOKIE {
        return StunShape::NotStun;
    }
    let length = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
    if length % 4 != 0 || HEADER_LEN + length != payload.len() {
        return StunShape::Malformed;
    }
    // Message type bits: C1 is bit 8, C0 is bit 4; a response has C1 set.
    let response = payload[0] & 0x01 != 0;
    let mut transaction = [0; TRANSACTION_ID_LEN];
    transaction.copy_from_slice(&payload[8..HEADER_LEN]);
    StunShape::Stun {
        response,
        transaction,
    }
}

/// A STUN server as configured: `stun:host[:port]` (RFC 7064), host an IP literal
/// (IPv6 in brackets) or a name resolved when the binding starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StunServer {
    host: String,
    port: u16,
}

impl StunServer {
    /// The default STUN port.
    pub const DEFAULT_PORT: u16 = 3478;

    /// Parses `stun:host[:port]`. `stuns:` (TLS) and query parameters are refused.
    pub fn parse(url: &str) -> Result<Self, StunError> {
        let invalid = |reason| StunError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = match url.split_once(':') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("stun") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("stuns") => {
                return Err(invalid("stuns: (STUN over TLS) is not supported"));
            }
            _ => return Err(invalid("the scheme must be stun:")),
        };
        if rest.contains(['?', '/', '@']) {
            return Err(invalid("a stun: URL is host[:port], nothing else"));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed [ in an IPv6 host"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("the bracketed host is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| invalid("junk after ]"))?),
            };
            (host, port)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        if !host.contains(':') && host.contains(|c: char| c.is_whitespace()) {
            return Err(invalid("the host has whitespace"));
        }
        let port = match port {
            None => Self::DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(invalid("the port is not a number in 1..=65535")),
                Ok(p) => p,
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// A server at a known address.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// The host part (an IP literal or a name).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves the host (tokio's `lookup_host` for a name) to an address of the
    /// socket's family (`ipv4`).
    pub async fn resolve(&self, ipv4: bool) -> Result<SocketAddr, StunError> {
        resolve_host(&self.host, self.port, ipv4)
            .await
            .map_err(|e| match e {
                Unresolved::Lookup(source) => StunError::Resolve {
                    host: self.host.clone(),
                    source,
                },
                Unresolved::NoAddress(family) => StunError::NoAddress {
                    host: self.host.clone(),
                    family,
                },
            })
    }
}

impl std::fmt::Display for StunServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "stun:[{}]:{}", self.host, self.port)
        } else {
            write!(f, "stun:{}:{}", self.host, self.port)
        }
    }
}

/// Retransmission of STUN binding requests (RFC 5389 section 7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StunConfig {
    /// The first retransmission timeout (RFC 5389: 500 ms); doubles each time.
    pub rto: Duration,
    /// How many requests to send at most (RFC 5389's Rc: 7).
    pub max_transmissions: u32,
    /// After the last request, wait this many times `rto` for an answer (RFC 5389's
    /// Rm: 16).
    pub final_wait_factor: u32,
}

impl Default for StunConfig {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            max_transmissions: 7,
            final_wait_factor: 16,
        }
    }
}

impl StunConfig {
    /// The longest a binding can take before it times out (39.5 s by default).
    pub fn total_timeout(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut rto = self.rto;
        for _ in 1..self.max_transmissions.max(1) {
            total = total.saturating_add(rto);
            rto = rto.saturating_mul(2);
        }
        total.saturating_add(self.rto.saturating_mul(self.final_wait_factor))
    }
}

/// A server-reflexive candidate: the address a STUN server saw the socket as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ReflexiveCandidate {
    /// The STUN server that answered.
    pub server: SocketAddr,
    /// The local address the answer arrived at (the candidate's base).
    pub base: SocketAddr,
    /// The address the server saw: the server-reflexive candidate.
    pub address: SocketAddr,
}

/// The outcome of one binding transaction.
pub(crate) type BindingResult = Result<ReflexiveCandidate, StunError>;

#[derive(Debug)]
struct Transaction {
    id: [u8; TRANSACTION_ID_LEN],
    server: SocketAddr,
    sent: u32,
    /// When to send again, or (after the last request) when to give up.
    next: Instant,
    rto: Duration,
    malformed: bool,
}

/// Sans-I/O STUN binding client: `start`, then `poll_transmit` / `poll_timeout` /
/// `handle_timeout` / `handle_response`, and collect results with `poll_result`.
#[derive(Debug)]
pub(crate) struct StunClient {
    config: StunConfig,
    pending: Vec<Transaction>,
    done: Vec<([u8; TRANSACTION_ID_LEN], BindingResult)>,
}

impl StunClient {
    pub(crate) fn new(config: StunConfig) -> Self {
        Self {
            config,
            pending: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Whether any transaction waits for an answer (the demux fast path skips STUN
    /// matching when none does).
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts a binding transaction with `server`; its first request goes out on the
    /// next `poll_transmit`.
    pub(crate) fn start(&mut self, now: Instant, server: SocketAddr, id: [u8; TRANSACTION_ID_LEN]) {
        debug!(%server, transaction = ?id, "STUN binding started");
        self.pending.push(Transaction {
            id,
            server,
            sent: 0,
            next: now,
            rto: self.config.rto,
            malformed: false,
        });
    }

    /// Whether `id` belongs to a transaction in flight.
    pub(crate) fn owns(&self, id: &[u8; TRANSACTION_ID_LEN]) -> bool {
        self.pending.iter().any(|t| &t.id == id)
    }

    /// Appends the next due binding request to `buf`; returns its destination.
    #[must_use]
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        let max = self.config.max_transmissions.max(1);
        let t = self
            .pending
            .iter_mut()
            .find(|t| t.sent < max && t.next <= now)?;
        let message = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(t.id))
            .build();
        let start = buf.len();
        buf.resize(start + HEADER_LEN, 0);
        let encoder = MessageEncoderBuilder::default().build();
        match encoder.encode(&mut buf[start..], &message) {
            Ok(n) => buf.truncate(start + n),
            Err(e) => {
                // Cannot happen for a header-only request into 20 bytes; give up on
                // this transaction rather than panic.
                buf.truncate(start);
                debug!(error = ?e, "cannot encode a STUN binding request");
                t.sent = max;
                t.next = now;
                return None;
            }
        }
        t.sent += 1;
        trace!(server = %t.server, attempt = t.sent, "STUN binding request");
        if t.sent < max {
            t.next = now + t.rto;
            t.rto = t.rto.saturating_mul(2);
        } else {
            t.next = now
                + self
                    .config
                    .rto
                    .saturating_mul(self.config.final_wait_factor);
        }
        Some(t.server)
    }

    /// When a request is next due or a transaction next times out.
    #[must_use]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(|t| t.next).min()
    }

    /// Times out transactions whose last wait is over.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let max = self.config.max_transmissions.max(1);
        let mut i = 0;
        while i < self.pending.len() {
            let t = &self.pending[i];
            if t.sent >= max && t.next <= now {
                let t = self.pending.swap_remove(i);
                let error = if t.malformed {
                    StunError::MalformedResponse { server: t.server }
                } else {
                    StunError::Timeout { server: t.server }
                };
                debug!(server = %t.server, %error, "STUN binding failed");
                self.done.push((t.id, Err(error)));
            } else {
                i += 1;
            }
        }
    }

    /// Takes a response whose transaction id is one of ours (see `owns`).
    /// `source` must be the server's address; anything else is ignored (spoofing).
    pub(crate) fn handle_response(
        &mut self,
        id: &[u8; TRANSACTION_ID_LEN],
        source: SocketAddr,
        destination: SocketAddr,
        payload: &[u8],
    ) {
        let Some(index) = self.pending.iter().position(|t| &t.id == id) else {
            return;
        };
        let server = self.pending[index].server;
        if server != source {
            trace!(%server, %source, "STUN response from the wrong address: ignored");
            return;
        }
        match decode_binding_response(payload) {
            Ok(Ok(address)) => {
                self.pending.swap_remove(index);
                debug!(%server, %address, base = %destination, "STUN binding succeeded");
                self.done.push((
                    *id,
                    Ok(ReflexiveCandidate {
                        server,
                        base: destination,
                        address,
                    }),
                ));
            }
            Ok(Err((code, reason))) => {
                self.pending.swap_remove(index);
                debug!(%server, code, %reason, "STUN binding error response");
                self.done.push((
                    *id,
                    Err(StunError::ErrorResponse {
                        server,
                        code,
                        reason,
                    }),
                ));
            }
            Err(()) => {
                // Keep waiting: a valid answer may still come (and a spoofer must not
                // be able to end the transaction).
                trace!(%server, "malformed STUN binding response");
                self.pending[index].malformed = true;
            }
        }
    }

    /// The next finished transaction.
    #[must_use]
    pub(crate) fn poll_result(&mut self) -> Option<([u8; TRANSACTION_ID_LEN], BindingResult)> {
        self.done.pop()
    }
}

/// Decodes a binding response: `Ok(Ok(mapped))` for success, `Ok(Err((code, reason)))`
/// for an error response, `Err(())` for anything malformed.
#[allow(clippy::result_unit_err)]
fn decode_binding_response(payload: &[u8]) -> Result<Result<SocketAddr, (u16, String)>, ()> {
    let decoder = MessageDecoderBuilder::default().build();
    let (message, _) = decoder.decode(payload).map_err(|_| ())?;
    if message.method() != BINDING {
        return Err(());
    }
    match message.class() {
        MessageClass::SuccessResponse => {
            if let Some(attr) = message.get::<XorMappedAddress>() {
                let addr = attr.as_xor_mapped_address().map_err(|_| ())?;
                return Ok(Ok(*addr.socket_address()));
            }
            if let Some(attr) = message.get::<MappedAddress>() {
                let addr = attr.as_mapped_address().map_err(|_| ())?;
                return Ok(Ok(*addr.socket_address()));
            }
            Err(())
        }
        MessageClass::ErrorResponse => {
            let attr = message.get::<ErrorCode>().ok_or(())?;
            let code = attr.as_error_code().map_err(|_| ())?.error_code();
            Ok(Err((code.error_code(), code.reason().to_owned())))
        }
        _ => Err(()),
    }
}

/// Why [`resolve_host`] found no address.
pub(crate) enum Unresolved {
    /// The name lookup failed.
    Lookup(std::io::Error),
    /// The host has no address of the family asked for (`"IPv4"` or `"IPv6"`).
    NoAddress(&'static str),
}

/// Resolves `host` (an IP literal, or a name through tokio's `lookup_host`) to an
/// address of the socket's family (`ipv4`): shared by STUN and TURN servers.
pub(crate) async fn resolve_host(
    host: &str,
    port: u16,
    ipv4: bool,
) -> Result<SocketAddr, Unresolved> {
    let family = if ipv4 { "IPv4" } else { "IPv6" };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return if ip.is_ipv4() == ipv4 {
            Ok(SocketAddr::new(ip, port))
        } else {
            Err(Unresolved::NoAddress(family))
        };
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(Unresolved::Lookup)?
        .find(|addr| addr.is_ipv4() == ipv4)
        .ok_or(Unresolved::NoAddress(family))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(id: [u8; 12]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut client = StunClient::new(StunConfig::default());
        let now = Instant::now();
        client.start(now, "127.0.0.1:3478".parse().unwrap(), id);
        let _ = client.poll_transmit(now, &mut buf);
        buf
    }

    #[test]
    fn shape_of_packets() {
        let req = binding_request([7; 12]);
        assert_eq!(
            shape(&req),
            StunShape::Stun {
                response: false,
                transaction: [7; 12]
            }
        );
        let mut resp = req.clone();
        resp[0] = 0x01; // success response 0x0101
        resp[1] = 0x01;
        assert!(matches!(
            shape(&resp),
            StunShape::Stun { response: true, .. }
        ));
        assert_eq!(shape(&req[..19]), StunShape::Malformed);
        assert_eq!(shape(&req[..10]), StunShape::Malformed);
        let mut long = req;
        long.extend_from_slice(&[0; 4]);
        assert_eq!(shape(&long), StunShape::Malformed);
        assert_eq!(shape(&[]), StunShape::Malformed);
        assert_eq!(
            shape(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            StunShape::NotStun
        );
        assert_eq!(shape(&[0x80; 40]), StunShape::NotStun);
        assert_eq!(shape(&[0x00; 40]), StunShape::NotStun);
    }

    #[test]
    fn parse_urls() {
        let s = StunServer::parse("stun:stun.example.org").unwrap();
        assert_eq!((s.host(), s.port()), ("stun.example.org", 3478));
        let s = StunServer::parse("stun:127.0.0.1:19302").unwrap();
        assert_eq!((s.host(), s.port()), ("127.0.0.1", 19302));
        let s = StunServer::parse("STUN:[::1]:5000").unwrap();
        assert_eq!((s.host(), s.port()), ("::1", 5000));
        assert_eq!(s.to_string(), "stun:[::1]:5000");
        let s = StunServer::parse("stun:[::1]").unwrap();
        assert_eq!(s.port(), 3478);
        for bad in [
            "turn:example.org",
            "stuns:example.org",
            "stun:",
            "stun:host:0",
            "stun:host:99999",
            "stun:host:x",
            "stun:[::1",
            "stun:[nothost]:1",
            "stun:[::1]x",
            "stun:host?transport=udp",
            "stun://host",
            "example.org",
        ] {
            assert!(
                matches!(StunServer::parse(bad), Err(StunError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn retransmits_with_backoff_then_times_out() {
        let config = StunConfig::default();
        assert_eq!(config.total_timeout(), Duration::from_millis(39_500));
        let mut client = StunClient::new(config);
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        client.start(t0, server, [1; 12]);
        let mut sends = Vec::new();
        let mut now = t0;
        for _ in 0..100 {
            let mut buf = Vec::new();
            while let Some(to) = client.poll_transmit(now, &mut buf) {
                assert_eq!(to, server);
                sends.push(now - t0);
            }
            client.handle_timeout(now);
            if let Some((id, result)) = client.poll_result() {
                assert_eq!(id, [1; 12]);
                assert!(matches!(result, Err(StunError::Timeout { .. })));
                assert_eq!(now - t0, Duration::from_millis(39_500));
                let ms: Vec<u128> = sends.iter().map(Duration::as_millis).collect();
                assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15_500, 31_500]);
                return;
            }
            now = client.poll_timeout().expect("a transaction is pending");
        }
        panic!("the transaction never ended");
    }

    #[test]
    fn malformed_then_valid_response() {
        let mut client = StunClient::new(StunConfig::default());
        let now = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        client.start(now, server, [2; 12]);
        let mut buf = Vec::new();
        let _ = client.poll_transmit(now, &mut buf);
        // A success response with no mapped address: malformed, keep waiting.
        let mut empty = buf.clone();
        empty[0] = 0x01;
        empty[1] = 0x01;
        client.handle_response(&[2; 12], server, local, &empty);
        assert!(client.poll_result().is_none());
        assert!(client.has_pending());
        // The same from another address is ignored entirely.
        let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(TransactionId::from([2; 12]))
            .with_attribute(XorMappedAddress::from(local))
            .build();
        let mut out = [0; 64];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut out, &msg)
            .unwrap();
        client.handle_response(&[2; 12], local, local, &out[..n]);
        assert!(client.poll_result().is_none());
        client.handle_response(&[2; 12], server, local, &out[..n]);
        let (_, result) = client.poll_result().unwrap();
        assert_eq!(result.unwrap().address, local);
        assert!(!client.has_pending());
    }
}
