//! A sans-I/O TURN client for one allocation (RFC 8656, RFC 5766): Allocate with
//! long-term credentials, Refresh, `CreatePermission`, `ChannelBind`, Send and Data
//! indications, `ChannelData`.
//!
//! Bytes and time in, bytes and events out: [`TurnClient::handle_message`] takes one
//! message from the server (a datagram over UDP, one framed message over TCP/TLS),
//! [`TurnClient::send`] wraps a datagram for a peer, [`TurnClient::poll_transmit`]
//! gives the control messages (and data held back for a permission), and
//! [`TurnClient::poll_event`] says when the allocation is made or lost.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stun_rs::attributes::stun::{
    ErrorCode, MessageIntegrity, Nonce, Realm, UserName, XorMappedAddress,
};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedTrasport, XorPeerAddress, XorRelayedAddress,
};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{
    Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder,
    MessageEncoderBuilder, MessageMethod, StunMessage, StunMessageBuilder, TransactionId,
};
use tracing::{debug, trace};

use super::framing::{self, MAX_CHANNEL, MIN_CHANNEL, decode_channel_data, encode_channel_data};
use crate::TurnError;
use crate::stun::{HEADER_LEN, MAGIC_COOKIE, TRANSACTION_ID_LEN};

/// Timing and limits of TURN allocations.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TurnConfig {
    /// The first retransmission timeout of a request over UDP; doubles each time.
    /// Default 500 ms.
    pub rto: Duration,
    /// Requests sent at most over UDP (RFC 8489's Rc). Default 7.
    pub max_transmissions: u32,
    /// How long a request may wait for its answer in all (over TCP and TLS, where
    /// nothing is retransmitted, and as the cap over UDP). Default 39.5 s.
    pub transaction_timeout: Duration,
    /// The allocation lifetime to ask for (the server may give less or more).
    /// Default 600 s.
    pub lifetime: Duration,
    /// Datagrams sent to one peer in Send indications before a channel is bound to
    /// it (`ChannelData` costs 4 bytes a datagram instead of 36). Default 4; 0 binds at
    /// once, `u32::MAX` never.
    pub channel_threshold: u32,
    /// The most peers (permissions) one allocation keeps. Default 256.
    pub max_peers: usize,
    /// Datagrams held per peer while its permission is being created (more are
    /// dropped, as the network would). Default 16.
    pub max_queued: usize,
    /// TCP connect plus TLS handshake must finish within this. Default 10 s.
    pub connect_timeout: Duration,
    /// The TLS client configuration for `turns:` servers. `None`: the Mozilla roots
    /// (webpki-roots) with aws-lc-rs. Build one with
    /// [`tls_config_with_roots`](crate::turn_tls_config_with_roots) to trust a
    /// private CA.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            max_transmissions: 7,
            transaction_timeout: Duration::from_millis(39_500),
            lifetime: Duration::from_secs(600),
            channel_threshold: 4,
            max_peers: 256,
            max_queued: 16,
            connect_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// What the client tells its driver.
#[derive(Debug)]
pub(crate) enum TurnEvent {
    /// The allocation exists: the relayed address, and the client's address as the
    /// server saw it.
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
        lifetime: Duration,
    },
    /// The allocation failed, or was lost (a refresh failed or the server went away).
    Failed(TurnError),
}

/// The outcome of [`TurnClient::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    /// Wrapped into the buffer: send it to the server.
    Wrapped,
    /// Held until the peer's permission exists (it leaves in `poll_transmit`).
    Queued,
    /// Dropped (no allocation, too many peers, queue full, or too big).
    Dropped(&'static str),
}

/// Data a message from the server carried.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound<'a> {
    /// A peer's datagram (from a `ChannelData` message or a Data indication).
    Data { peer: SocketAddr, payload: &'a [u8] },
    /// A control message (handled), or one to ignore.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    Permission { ip: IpAddr },
    ChannelBind { channel: u16, peer: SocketAddr },
}

#[derive(Debug, Clone)]
struct Request {
    id: [u8; TRANSACTION_ID_LEN],
    kind: Kind,
    bytes: Vec<u8>,
    sent: u32,
    /// When to send (again).
    next: Option<Instant>,
    deadline: Instant,
    rto: Duration,
    /// 401/438 retries taken.
    auth_retries: u32,
}

#[derive(Debug, Clone)]
enum State {
    Allocating,
    Allocated {
        relayed: SocketAddr,
        refresh_at: Instant,
        expires: Instant,
    },
    Closed,
}

#[derive(Debug, Clone)]
struct Permission {
    installed: bool,
    /// A `CreatePermission` for it is in flight.
    pending: bool,
    /// When to refresh (if used) or drop.
    refresh_at: Option<Instant>,
    expires: Option<Instant>,
    used: bool,
    /// The server refused this peer (403, e.g. coturn's `denied-peer-ip`): sends to
    /// it are dropped, without asking again, until `expires`.
    refused: bool,
    /// Wrapped Send indications waiting for the permission.
    queued: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Channel {
    number: u16,
    bound: bool,
    pending: bool,
    refresh_at: Option<Instant>,
    expires: Option<Instant>,
    used: bool,
}

/// Permissions last 300 s (RFC 8656 section 9); refresh a minute early.
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel bindings last 600 s (section 12).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Refresh this long before expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// A peer the server refused (403) is not asked for again before this long: ICE
/// checks to it would otherwise send a `CreatePermission` every few hundred ms.
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);
/// 401/438 answers a request may get before the client gives up.
const MAX_AUTH_RETRIES: u32 = 3;
/// Control messages are small; the encoder writes into a buffer this big.
const MAX_CONTROL: usize = 1024;

/// The sans-I/O client of one allocation on one server.
#[derive(Debug)]
pub(crate) struct TurnClient {
    server: SocketAddr,
    reliable: bool,
    config: TurnConfig,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<HMACKey>,
    state: State,
    requests: Vec<Request>,
    permissions: HashMap<IpAddr, Permission>,
    channels: HashMap<SocketAddr, Channel>,
    by_channel: HashMap<u16, SocketAddr>,
    sends: HashMap<SocketAddr, u32>,
    next_channel: u16,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
    rng: rand::rngs::StdRng,
    /// Set while a refresh with lifetime 0 is the only thing left to send.
    releasing: bool,
}

impl TurnClient {
    /// A client that allocates on `server` with long-term credentials; `reliable` for
    /// TCP and TLS (no retransmissions, `ChannelData` padded). The first Allocate goes
    /// out on the first `poll_transmit`.
    pub(crate) fn new(
        now: Instant,
        server: SocketAddr,
        reliable: bool,
        username: &str,
        password: &str,
        config: TurnConfig,
        seed: u64,
    ) -> Self {
        let mut client = Self {
            server,
            reliable,
            config,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            key: None,
            state: State::Allocating,
            requests: Vec::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_channel: HashMap::new(),
            sends: HashMap::new(),
            next_channel: MIN_CHANNEL,
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            releasing: false,
        };
        client.start(now, Kind::Allocate, 0);
        client
    }

    /// A copy in the same state, without pending events (fuzz bodies start from a
    /// template instead of replaying the Allocate exchange every run).
    #[cfg(feature = "_fuzz")]
    pub(crate) fn fork(&self) -> Self {
        Self {
            server: self.server,
            reliable: self.reliable,
            config: self.config.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            realm: self.realm.clone(),
            nonce: self.nonce.clone(),
            key: self.key.clone(),
            state: self.state.clone(),
            requests: self.requests.clone(),
            permissions: self.permissions.clone(),
            channels: self.channels.clone(),
            by_channel: self.by_channel.clone(),
            sends: self.sends.clone(),
            next_channel: self.next_channel,
            out: self.out.clone(),
            events: VecDeque::new(),
            rng: self.rng.clone(),
            releasing: self.releasing,
        }
    }

    /// The server's address.
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    /// Whether the client is finished (failed or released) and can be dropped once
    /// `poll_transmit` is drained.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Deletes the allocation: one Refresh with lifetime 0 (not retransmitted), then
    /// the client is closed.
    pub(crate) fn release(&mut self, now: Instant) {
        if matches!(self.state, State::Allocated { .. }) {
            self.requests.clear();
            self.releasing = true;
            self.start(now, Kind::Refresh { lifetime: 0 }, 0);
        }
        self.state = State::Closed;
        self.permissions.clear();
        self.channels.clear();
        self.by_channel.clear();
    }

    /// The transport to the server broke (TCP/TLS closed or failed): the allocation
    /// is gone.
    pub(crate) fn transport_lost(&mut self, error: TurnError) {
        if !self.is_closed() {
            self.fail(error);
        }
        self.out.clear();
        self.requests.clear();
    }

    fn fail(&mut self, error: TurnError) {
        debug!(server = %self.server, %error, "TURN allocation failed");
        self.state = State::Closed;
        self.requests.clear();
        self.permissions.clear();
        self.channels.clear();
        self.by_channel.clear();
        self.events.push_back(TurnEvent::Failed(error));
    }

    /// The next event.
    #[must_use]
    pub(crate) fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    // ---- requests ----

    fn start(&mut self, now: Instant, kind: Kind, auth_retries: u32) {
        let id: [u8; TRANSACTION_ID_LEN] = self.rng.random();
        match self.encode_request(&kind, id) {
            Ok(bytes) => {
                trace!(server = %self.server, ?kind, "TURN request");
                self.requests.push(Request {
                    id,
                    kind,
                    bytes,
                    sent: 0,
                    next: Some(now),
                    deadline: now + self.config.transaction_timeout,
                    rto: self.config.rto,
                    auth_retries,
                });
            }
            Err(error) => {
                if matches!(kind, Kind::Allocate | Kind::Refresh { .. }) && !self.releasing {
                    self.fail(error);
                } else {
                    debug!(server = %self.server, %error, "cannot encode a TURN request");
                }
            }
        }
    }

    fn encode_request(
        &self,
        kind: &Kind,
        id: [u8; TRANSACTION_ID_LEN],
    ) -> Result<Vec<u8>, TurnError> {
        let method = match kind {
            Kind::Allocate => ALLOCATE,
            Kind::Refresh { .. } => REFRESH,
            Kind::Permission { .. } => CREATE_PERMMISSION,
            Kind::ChannelBind { .. } => CHANNEL_BIND,
        };
        let mut builder = StunMessageBuilder::new(method, MessageClass::Request)
            .with_transaction_id(TransactionId::from(id));
        match kind {
            Kind::Allocate => {
                builder = builder
                    .with_attribute(RequestedTrasport::new(stun_rs::protocols::UDP))
                    .with_attribute(LifeTime::new(secs(self.config.lifetime)));
            }
            Kind::Refresh { lifetime } => {
                builder = builder.with_attribute(LifeTime::new(*lifetime));
            }
            Kind::Permission { ip } => {
                builder = builder.with_attribute(XorPeerAddress::from(SocketAddr::new(*ip, 0)));
            }
            Kind::ChannelBind { channel, peer } => {
                builder = builder
                    .with_attribute(ChannelNumber::new(*channel))
                    .with_attribute(XorPeerAddress::from(*peer));
            }
        }
        if let (Some(key), Some(realm), Some(nonce)) = (&self.key, &self.realm, &self.nonce) {
            let credentials = |reason| TurnError::Credentials {
                server: self.server,
                reason,
            };
            builder = builder
                .with_attribute(
                    UserName::new(&self.username)
                        .map_err(|_| credentials("the user name is not a valid STUN USERNAME"))?,
                )
                .with_attribute(Realm::new(realm).map_err(|_| credentials("bad realm"))?)
                .with_attribute(Nonce::new(nonce).map_err(|_| credentials("bad nonce"))?)
                .with_attribute(MessageIntegrity::new(key.clone()));
        }
        encode(&builder.build()).ok_or(TurnError::MalformedResponse {
            server: self.server,
        })
    }

    /// Appends the next message for the server to `out`: a (re)transmitted request,
    /// or a Send indication that was waiting for its permission. `false` when there
    /// is nothing to send now.
    #[must_use]
    pub(crate) fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if let Some(bytes) = self.out.pop_front() {
            out.extend_from_slice(&bytes);
            return true;
        }
        let max = if self.reliable {
            1
        } else {
            self.config.max_transmissions.max(1)
        };
        let Some(request) = self
            .requests
            .iter_mut()
            .find(|r| r.next.is_some_and(|at| at <= now))
        else {
            return false;
        };
        out.extend_from_slice(&request.bytes);
        request.sent += 1;
        request.next = (request.sent < max).then(|| now + request.rto);
        request.rto = request.rto.saturating_mul(2);
        if self.releasing {
            self.requests.clear();
        }
        true
    }

    /// When the client next needs `handle_timeout`.
    #[must_use]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let requests = self
            .requests
            .iter()
            .flat_map(|r| [r.next, Some(r.deadline)])
            .flatten();
        let state = match self.state {
            State::Allocated {
                refresh_at,
                expires,
                ..
            } => Some(refresh_at.min(expires)),
            _ => None,
        };
        let permissions = self
            .permissions
            .values()
            .flat_map(|p| [p.refresh_at, p.expires])
            .flatten();
        let channels = self
            .channels
            .values()
            .flat_map(|c| [c.refresh_at, c.expires])
            .flatten();
        requests
            .chain(state)
            .chain(permissions)
            .chain(channels)
            .min()
    }

    /// Times out requests and starts refreshes that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(i) = self.requests.iter().position(|r| r.deadline <= now) {
            let request = self.requests.swap_remove(i);
            debug!(server = %self.server, kind = ?request.kind, "TURN request timed out");
            self.request_failed(
                now,
                request.kind,
                TurnError::Timeout {
                    server: self.server,
                },
            );
            // Others are handled on the next call (the driver asks again at once).
        }
        if let State::Allocated {
            refresh_at,
            expires,
            ..
        } = &mut self.state
        {
            if *expires <= now {
                let server = self.server;
                self.fail(TurnError::Expired { server });
                return;
            }
            if *refresh_at <= now {
                // One refresh at a time: the next try waits for this one's answer.
                *refresh_at = *expires;
                let lifetime = secs(self.config.lifetime);
                self.start(now, Kind::Refresh { lifetime }, 0);
            }
        }
        let mut refresh_permissions = Vec::new();
        self.permissions.retain(|ip, p| {
            if p.expires.is_some_and(|at| at <= now) {
                trace!(%ip, "TURN permission expired");
                return false;
            }
            if p.refresh_at.is_some_and(|at| at <= now) {
                p.refresh_at = None;
                if p.used && !p.pending {
                    p.used = false;
                    p.pending = true;
                    refresh_permissions.push(*ip);
                }
            }
            true
        });
        for ip in refresh_permissions {
            self.start(now, Kind::Permission { ip }, 0);
        }
        let mut rebind = Vec::new();
        let mut expired = Vec::new();
        for (peer, c) in &mut self.channels {
            if c.expires.is_some_and(|at| at <= now) {
                expired.push(*peer);
                continue;
            }
            if c.refresh_at.is_some_and(|at| at <= now) {
                c.refresh_at = None;
                if c.used && !c.pending {
                    c.used = false;
                    c.pending = true;
                    rebind.push((c.number, *peer));
                }
            }
        }
        for peer in expired {
            if let Some(c) = self.channels.remove(&peer) {
                self.by_channel.remove(&c.number);
            }
        }
        for (channel, peer) in rebind {
            self.start(now, Kind::ChannelBind { channel, peer }, 0);
        }
    }

    fn request_failed(&mut self, now: Instant, kind: Kind, error: TurnError) {
        match kind {
            Kind::Allocate | Kind::Refresh { .. } => {
                if !self.is_closed() {
                    let error = match (&self.state, error) {
                        (State::Allocated { .. }, TurnError::Timeout { server }) => {
                            TurnError::RefreshFailed {
                                server,
                                reason: "no answer".into(),
                            }
                        }
                        (_, e) => e,
                    };
                    self.fail(error);
                }
            }
            Kind::Permission { ip } => {
                debug!(server = %self.server, %ip, %error, "TURN permission failed");
                let refused = matches!(error, TurnError::Rejected { code: 403, .. });
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.pending = false;
                    p.queued.clear();
                    if refused && !p.installed {
                        p.refused = true;
                        p.refresh_at = None;
                        p.expires = Some(now + REFUSED_BACKOFF);
                    } else if !p.installed {
                        self.permissions.remove(&ip);
                    }
                }
            }
            Kind::ChannelBind { peer, .. } => {
                debug!(server = %self.server, %peer, %error, "TURN channel bind failed");
                if let Some(c) = self.channels.remove(&peer) {
                    self.by_channel.remove(&c.number);
                }
                // Go on with Send indications; try again after as many more.
                self.sends.insert(peer, 0);
            }
        }
    }

    // ---- data ----

    /// Wraps `payload` for `peer` into `out` (a `ChannelData` message when a channel is
    /// bound, else a Send indication), or holds it while the peer's permission is
    /// being created. Creates permissions and binds channels as needed.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> SendOutcome {
        if !matches!(self.state, State::Allocated { .. }) {
            return SendOutcome::Dropped("no allocation");
        }
        if payload.len() > usize::from(u16::MAX) - 64 {
            return SendOutcome::Dropped("too big");
        }
        if let Some(c) = self.channels.get_mut(&peer)
            && c.bound
        {
            c.used = true;
            if let Some(p) = self.permissions.get_mut(&peer.ip()) {
                p.used = true;
            }
            encode_channel_data(c.number, payload, self.reliable, out);
            return SendOutcome::Wrapped;
        }
        let ip = peer.ip();
        if !self.permissions.contains_key(&ip) {
            // The first datagram to this peer: ask for a permission (once).
            if self.permissions.len() >= self.config.max_peers {
                return SendOutcome::Dropped("too many peers");
            }
            self.permissions.insert(
                ip,
                Permission {
                    installed: false,
                    pending: true,
                    refresh_at: None,
                    expires: None,
                    used: false,
                    refused: false,
                    queued: Vec::new(),
                },
            );
            self.start(now, Kind::Permission { ip }, 0);
        }
        // One lookup on the per-datagram path (until a channel is bound).
        let max_queued = self.config.max_queued;
        let Some(p) = self.permissions.get_mut(&ip) else {
            return SendOutcome::Dropped("no permission");
        };
        if p.refused {
            return SendOutcome::Dropped("peer refused by the server");
        }
        if !p.installed {
            if p.queued.len() >= max_queued {
                return SendOutcome::Dropped("permission queue full");
            }
            let mut wrapped = Vec::new();
            if !encode_send(peer, payload, &mut wrapped) {
                return SendOutcome::Dropped("cannot encode");
            }
            p.queued.push(wrapped);
            return SendOutcome::Queued;
        }
        p.used = true;
        if !encode_send(peer, payload, out) {
            return SendOutcome::Dropped("cannot encode");
        }
        let count = self.sends.entry(peer).or_insert(0);
        *count = count.saturating_add(1);
        if *count > self.config.channel_threshold
            && !self.channels.contains_key(&peer)
            && self.channels.len() < usize::from(MAX_CHANNEL - MIN_CHANNEL) + 1
        {
            self.bind_channel(now, peer);
        }
        SendOutcome::Wrapped
    }

    fn bind_channel(&mut self, now: Instant, peer: SocketAddr) {
        // The next free number (at most 4096 exist; `send` checks one is free).
        let mut number = self.next_channel;
        for _ in 0..=(MAX_CHANNEL - MIN_CHANNEL) {
            if !self.by_channel.contains_key(&number) {
                break;
            }
            number = if number == MAX_CHANNEL {
                MIN_CHANNEL
            } else {
                number + 1
            };
        }
        if self.by_channel.contains_key(&number) {
            return;
        }
        self.next_channel = if number == MAX_CHANNEL {
            MIN_CHANNEL
        } else {
            number + 1
        };
        self.by_channel.insert(number, peer);
        self.channels.insert(
            peer,
            Channel {
                number,
                bound: false,
                pending: true,
                refresh_at: None,
                expires: None,
                used: false,
            },
        );
        debug!(server = %self.server, %peer, channel = number, "TURN channel bind");
        self.start(
            now,
            Kind::ChannelBind {
                channel: number,
                peer,
            },
            0,
        );
    }

    // ---- input ----

    /// Takes one message from the server (a UDP datagram from it, or one message the
    /// stream framer split off). Peer data comes back as [`Inbound::Data`]; responses
    /// drive the allocation; anything else is ignored. Never panics on any input.
    pub(crate) fn handle_message<'a>(&mut self, now: Instant, message: &'a [u8]) -> Inbound<'a> {
        let Some(&first) = message.first() else {
            return Inbound::None;
        };
        if framing::is_channel_data(first) {
            let Some((number, payload)) = decode_channel_data(message) else {
                trace!(server = %self.server, "malformed ChannelData dropped");
                return Inbound::None;
            };
            let Some(&peer) = self.by_channel.get(&number) else {
                trace!(server = %self.server, number, "ChannelData on an unknown channel");
                return Inbound::None;
            };
            if let Some(c) = self.channels.get_mut(&peer) {
                c.used = true;
            }
            return Inbound::Data { peer, payload };
        }
        if message.len() < HEADER_LEN || message[4..8] != MAGIC_COOKIE || first & 0xC0 != 0 {
            return Inbound::None;
        }
        // A Data indication: method 7, class indication.
        if message[0] == 0x00 && message[1] == 0x17 {
            if !matches!(self.state, State::Allocated { .. }) {
                return Inbound::None;
            }
            return match parse_data_indication(message) {
                Some((peer, payload)) => Inbound::Data { peer, payload },
                None => {
                    trace!(server = %self.server, "malformed Data indication dropped");
                    Inbound::None
                }
            };
        }
        if message[0] & 0x01 == 0 {
            // A request or another indication: a client takes none.
            return Inbound::None;
        }
        let id = &message[8..HEADER_LEN];
        let Some(index) = self.requests.iter().position(|r| r.id[..] == *id) else {
            return Inbound::None;
        };
        self.handle_response(now, index, message);
        Inbound::None
    }

    fn handle_response(&mut self, now: Instant, index: usize, message: &[u8]) {
        let server = self.server;
        // Decode without checking integrity first: error responses (401, 438) carry
        // none.
        let Ok((response, _)) = MessageDecoderBuilder::default().build().decode(message) else {
            trace!(%server, "malformed TURN response ignored");
            return;
        };
        let expected = method_of(&self.requests[index].kind);
        if response.method() != expected {
            trace!(%server, "TURN response with the wrong method ignored");
            return;
        }
        match response.class() {
            MessageClass::SuccessResponse => {
                if let Some(key) = &self.key {
                    let verified = response.get::<MessageIntegrity>().is_some()
                        && MessageDecoderBuilder::default()
                            .with_context(
                                DecoderContextBuilder::default()
                                    .with_key(key.clone())
                                    .with_validation()
                                    .build(),
                            )
                            .build()
                            .decode(message)
                            .is_ok();
                    if !verified {
                        // A spoofed or corrupted answer: keep waiting for the real one.
                        debug!(%server, "TURN response failed its integrity check: ignored");
                        return;
                    }
                }
                let request = self.requests.swap_remove(index);
                self.handle_success(now, request, &response);
            }
            MessageClass::ErrorResponse => {
                let Some((code, reason)) = response
                    .get::<ErrorCode>()
                    .and_then(|a| a.as_error_code().ok())
                    .map(|e| {
                        (
                            e.error_code().error_code(),
                            e.error_code().reason().to_owned(),
                        )
                    })
                else {
                    trace!(%server, "TURN error response without ERROR-CODE ignored");
                    return;
                };
                let request = self.requests.swap_remove(index);
                self.handle_error(now, request, &response, code, reason);
            }
            _ => {}
        }
    }

    fn handle_success(&mut self, now: Instant, request: Request, response: &StunMessage) {
        let server = self.server;
        match request.kind {
            Kind::Allocate => {
                if !matches!(self.state, State::Allocating) {
                    return;
                }
                let relayed = response
                    .get::<XorRelayedAddress>()
                    .and_then(|a| a.as_xor_relayed_address().ok())
                    .map(|a| *a.socket_address());
                let mapped = response
                    .get::<XorMappedAddress>()
                    .and_then(|a| a.as_xor_mapped_address().ok())
                    .map(|a| *a.socket_address());
                let lifetime = lifetime_of(response).unwrap_or(self.config.lifetime);
                let Some(relayed) = relayed else {
                    self.fail(TurnError::MalformedResponse { server });
                    return;
                };
                let relayed = SocketAddr::new(relayed.ip().to_canonical(), relayed.port());
                debug!(%server, %relayed, ?mapped, ?lifetime, "TURN allocated");
                self.state = State::Allocated {
                    relayed,
                    refresh_at: now + refresh_after(lifetime),
                    expires: now + lifetime,
                };
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
            }
            Kind::Refresh { lifetime: 0 } => {}
            Kind::Refresh { .. } => {
                let lifetime = lifetime_of(response).unwrap_or(self.config.lifetime);
                if let State::Allocated {
                    refresh_at,
                    expires,
                    ..
                } = &mut self.state
                {
                    debug!(%server, ?lifetime, "TURN allocation refreshed");
                    *refresh_at = now + refresh_after(lifetime);
                    *expires = now + lifetime;
                }
            }
            Kind::Permission { ip } => {
                let Some(p) = self.permissions.get_mut(&ip) else {
                    return;
                };
                trace!(%server, %ip, "TURN permission installed");
                p.installed = true;
                p.pending = false;
                p.refresh_at = Some(now + PERMISSION_LIFETIME - REFRESH_MARGIN);
                p.expires = Some(now + PERMISSION_LIFETIME);
                self.out.extend(p.queued.drain(..));
            }
            Kind::ChannelBind { channel, peer } => {
                let Some(c) = self.channels.get_mut(&peer).filter(|c| c.number == channel) else {
                    return;
                };
                debug!(%server, %peer, channel, "TURN channel bound");
                c.bound = true;
                c.pending = false;
                c.refresh_at = Some(now + CHANNEL_LIFETIME - REFRESH_MARGIN);
                c.expires = Some(now + CHANNEL_LIFETIME);
                // A channel binding installs or refreshes the peer's permission too.
                let p = self.permissions.entry(peer.ip()).or_insert(Permission {
                    installed: true,
                    pending: false,
                    refresh_at: None,
                    expires: None,
                    used: false,
                    refused: false,
                    queued: Vec::new(),
                });
                p.installed = true;
                p.refused = false;
                p.expires = Some(now + PERMISSION_LIFETIME);
                p.refresh_at = Some(now + PERMISSION_LIFETIME - REFRESH_MARGIN);
            }
        }
    }

    fn handle_error(
        &mut self,
        now: Instant,
        request: Request,
        response: &StunMessage,
        code: u16,
        reason: String,
    ) {
        let server = self.server;
        let realm = response
            .get::<Realm>()
            .and_then(|a| a.as_realm().ok())
            .map(|r| r.as_str().to_owned());
        let nonce = response
            .get::<Nonce>()
            .and_then(|a| a.as_nonce().ok())
            .map(|n| n.as_str().to_owned());
        debug!(%server, code, %reason, kind = ?request.kind, "TURN error response");
        match code {
            401 if self.key.is_none() && request.auth_retries < MAX_AUTH_RETRIES => {
                let (Some(realm), Some(nonce)) = (realm, nonce) else {
                    self.request_failed(now, request.kind, TurnError::MalformedResponse { server });
                    return;
                };
                match HMACKey::new_long_term(
                    &self.username,
                    &realm,
                    &self.password,
                    Algorithm::from(AlgorithmId::MD5),
                ) {
                    Ok(key) => self.key = Some(key),
                    Err(_) => {
                        self.fail(TurnError::Credentials {
                            server,
                            reason: "the user name or password cannot be used with this realm",
                        });
                        return;
                    }
                }
                self.realm = Some(realm);
                self.nonce = Some(nonce);
                self.start(now, request.kind, request.auth_retries + 1);
            }
            401 => self.request_failed(
                now,
                request.kind,
                TurnError::Unauthorized {
                    server,
                    realm: self.realm.clone().unwrap_or_default(),
                },
            ),
            438 if request.auth_retries < MAX_AUTH_RETRIES => {
                let Some(nonce) = nonce else {
                    self.request_failed(now, request.kind, TurnError::MalformedResponse { server });
                    return;
                };
                debug!(%server, "TURN nonce went stale: retrying with the new one");
                self.nonce = Some(nonce);
                if let Some(realm) = realm
                    && self.realm.as_ref() != Some(&realm)
                {
                    // A new realm means a new key.
                    if let Ok(key) = HMACKey::new_long_term(
                        &self.username,
                        &realm,
                        &self.password,
                        Algorithm::from(AlgorithmId::MD5),
                    ) {
                        self.key = Some(key);
                        self.realm = Some(realm);
                    }
                }
                self.start(now, request.kind, request.auth_retries + 1);
            }
            _ => {
                let error = match (&self.state, &request.kind) {
                    (State::Allocated { .. }, Kind::Refresh { .. }) => TurnError::RefreshFailed {
                        server,
                        reason: format!("{code} {reason}"),
                    },
                    _ => TurnError::Rejected {
                        server,
                        code,
                        reason,
                    },
                };
                self.request_failed(now, request.kind, error);
            }
        }
    }
}

/// Seconds for a LIFETIME attribute.
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Refresh a minute before expiry, or halfway for short lifetimes.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2)
}

fn lifetime_of(response: &StunMessage) -> Option<Duration> {
    let lifetime = response.get::<LifeTime>()?.as_life_time().ok()?;
    Some(Duration::from_secs(u64::from(lifetime.as_u32())))
}

fn method_of(kind: &Kind) -> MessageMethod {
    match kind {
        Kind::Allocate => ALLOCATE,
        Kind::Refresh { .. } => REFRESH,
        Kind::Permission { .. } => CREATE_PERMMISSION,
        Kind::ChannelBind { .. } => CHANNEL_BIND,
    }
}

fn encode(message: &StunMessage) -> Option<Vec<u8>> {
    let mut buf = vec![0; MAX_CONTROL];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, message)
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Appends a Send indication carrying `payload` to `peer`. `false` (having appended
/// nothing) when it cannot be encoded.
fn encode_send(peer: SocketAddr, payload: &[u8], out: &mut Vec<u8>) -> bool {
    let message = StunMessageBuilder::new(SEND, MessageClass::Indication)
        .with_attribute(XorPeerAddress::from(peer))
        .with_attribute(Data::new(payload))
        .build();
    let start = out.len();
    out.resize(start + payload.len() + HEADER_LEN + 48, 0);
    match MessageEncoderBuilder::default()
        .build()
        .encode(&mut out[start..], &message)
    {
        Ok(n) => {
            out.truncate(start + n);
            true
        }
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}

/// Reads a Data indication by hand (no copy of the payload): XOR-PEER-ADDRESS and
/// DATA. `None` when either is missing or malformed.
fn parse_data_indication(message: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let length = usize::from(u16::from_be_bytes([message[2], message[3]]));
    let body = message.get(HEADER_LEN..HEADER_LEN + length)?;
    let mut peer = None;
    let mut data = None;
    let mut rest = body;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        match kind {
            0x0012 if peer.is_none() => peer = Some(xor_address(value, &message[8..HEADER_LEN])?),
            0x0013 if data.is_none() => data = Some(value),
            _ => {}
        }
        let padded = 4 + len.div_ceil(4) * 4;
        rest = rest.get(padded..).unwrap_or_default();
    }
    Some((peer?, data?))
}

fn xor_address(value: &[u8], transaction: &[u8]) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ 0x2112;
    match family {
        0x01 => {
            let raw: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            let mut ip = [0; 4];
            for i in 0..4 {
                ip[i] = raw[i] ^ MAGIC_COOKIE[i];
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        0x02 => {
            let raw: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            let mut ip = [0; 16];
            for i in 0..16 {
                let mask = if i < 4 {
                    MAGIC_COOKIE[i]
                } else {
                    *transaction.get(i - 4)?
                };
                ip[i] = raw[i] ^ mask;
            }
            let ip = std::net::Ipv6Addr::from(ip);
            Some(SocketAddr::new(IpAddr::V6(ip).to_canonical(), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "192.0.2.1:3478";
    const RELAYED: &str = "192.0.2.1:50000";

    fn key() -> HMACKey {
        HMACKey::new_long_term("u", "r", "p", Algorithm::from(AlgorithmId::MD5)).unwrap()
    }

    fn decode(bytes: &[u8]) -> StunMessage {
        MessageDecoderBuilder::default()
            .build()
            .decode(bytes)
            .unwrap()
            .0
    }

    /// The client's next message, decoded (it must have one).
    fn next(client: &mut TurnClient, now: Instant) -> StunMessage {
        let mut out = Vec::new();
        assert!(client.poll_transmit(now, &mut out), "nothing to send");
        decode(&out)
    }

    fn answer(
        request: &StunMessage,
        class: MessageClass,
        attrs: Vec<stun_rs::StunAttribute>,
        integrity: bool,
    ) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(request.method(), class)
            .with_transaction_id(*request.transaction_id());
        for a in attrs {
            b = b.with_attribute(a);
        }
        if integrity {
            b = b.with_attribute(MessageIntegrity::new(key()));
        }
        encode(&b.build()).unwrap()
    }

    fn error(request: &StunMessage, code: u16, nonce: &str) -> Vec<u8> {
        answer(
            request,
            MessageClass::ErrorResponse,
            vec![
                ErrorCode::from(stun_rs::ErrorCode::new(code, "x").unwrap()).into(),
                Realm::new("r").unwrap().into(),
                Nonce::new(nonce).unwrap().into(),
            ],
            false,
        )
    }

    fn allocated(now: Instant, lifetime: u32) -> TurnClient {
        let mut c = TurnClient::new(
            now,
            SERVER.parse().unwrap(),
            false,
            "u",
            "p",
            TurnConfig::default(),
            1,
        );
        let first = next(&mut c, now);
        assert!(first.get::<MessageIntegrity>().is_none());
        assert_eq!(
            c.handle_message(now, &error(&first, 401, "n1")),
            Inbound::None
        );
        let second = next(&mut c, now);
        assert!(second.get::<MessageIntegrity>().is_some());
        let ok = answer(
            &second,
            MessageClass::SuccessResponse,
            vec![
                XorRelayedAddress::from(RELAYED.parse::<SocketAddr>().unwrap()).into(),
                LifeTime::new(lifetime).into(),
            ],
            true,
        );
        let _ = c.handle_message(now, &ok);
        assert!(matches!(c.poll_event(), Some(TurnEvent::Allocated { .. })));
        c
    }

    #[test]
    fn success_without_integrity_is_ignored() {
        let now = Instant::now();
        let mut c = TurnClient::new(
            now,
            SERVER.parse().unwrap(),
            true,
            "u",
            "p",
            TurnConfig::default(),
            1,
        );
        let first = next(&mut c, now);
        let _ = c.handle_message(now, &error(&first, 401, "n1"));
        let second = next(&mut c, now);
        let relayed = XorRelayedAddress::from(RELAYED.parse::<SocketAddr>().unwrap());
        let forged = answer(
            &second,
            MessageClass::SuccessResponse,
            vec![relayed.into()],
            false,
        );
        let _ = c.handle_message(now, &forged);
        assert!(c.poll_event().is_none());
        assert!(c.relayed().is_none());
        // Over TCP nothing is retransmitted; the request times out.
        let mut out = Vec::new();
        assert!(!c.poll_transmit(now + Duration::from_secs(1), &mut out));
        c.handle_timeout(now + Duration::from_secs(40));
        assert!(matches!(
            c.poll_event(),
            Some(TurnEvent::Failed(TurnError::Timeout { .. }))
        ));
    }

    #[test]
    fn stale_nonce_retries_are_bounded() {
        let now = Instant::now();
        let mut c = allocated(now, 600);
        let peer: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let mut out = Vec::new();
        assert_eq!(c.send(now, peer, b"x", &mut out), SendOutcome::Queued);
        for i in 0..MAX_AUTH_RETRIES {
            let request = next(&mut c, now);
            assert_eq!(request.method(), CREATE_PERMMISSION);
            let _ = c.handle_message(now, &error(&request, 438, &format!("n{i}")));
        }
        let request = next(&mut c, now);
        let _ = c.handle_message(now, &error(&request, 438, "again"));
        // Given up: the permission and its queue are gone, nothing more is sent.
        assert!(!c.poll_transmit(now, &mut out));
        assert!(c.permissions.is_empty());
        assert!(c.relayed().is_some(), "the allocation itself lives on");
    }

    #[test]
    fn a_refused_peer_is_not_asked_for_again_before_the_backoff() {
        let now = Instant::now();
        let mut c = allocated(now, 600);
        let peer: SocketAddr = "192.168.2.2:1000".parse().unwrap();
        let mut out = Vec::new();
        assert_eq!(c.send(now, peer, b"check", &mut out), SendOutcome::Queued);
        let request = next(&mut c, now);
        assert_eq!(request.method(), CREATE_PERMMISSION);
        let _ = c.handle_message(now, &error(&request, 403, "n1"));
        // Refused: further sends are dropped and no new CreatePermission goes out.
        for i in 1..=10 {
            let t = now + Duration::from_secs(i);
            assert_eq!(
                c.send(t, peer, b"check", &mut out),
                SendOutcome::Dropped("peer refused by the server")
            );
            c.handle_timeout(t);
            assert!(!c.poll_transmit(t, &mut out), "nothing to send at {i} s");
        }
        // Other peers are not affected.
        let other: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        assert_eq!(c.send(now, other, b"x", &mut out), SendOutcome::Queued);
        assert_eq!(next(&mut c, now).method(), CREATE_PERMMISSION);
        // After the backoff the peer is asked for again.
        let later = now + REFUSED_BACKOFF + Duration::from_secs(1);
        c.handle_timeout(later);
        assert_eq!(c.send(later, peer, b"check", &mut out), SendOutcome::Queued);
        let again = next(&mut c, later);
        assert_eq!(again.method(), CREATE_PERMMISSION);
        // A refusal other than 403 (here a 400) is not remembered.
        let _ = c.handle_message(later, &error(&again, 400, "n1"));
        assert_eq!(c.send(later, peer, b"check", &mut out), SendOutcome::Queued);
    }

    #[test]
    fn permissions_channels_and_refreshes() {
        let t0 = Instant::now();
        let mut c = allocated(t0, 600);
        let peer: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let mut out = Vec::new();
        assert_eq!(c.send(t0, peer, b"first", &mut out), SendOutcome::Queued);
        let request = next(&mut c, t0);
        assert_eq!(request.method(), CREATE_PERMMISSION);
        let _ = c.handle_message(
            t0,
            &answer(&request, MessageClass::SuccessResponse, vec![], true),
        );
        // The held datagram leaves as a Send indication.
        let held = next(&mut c, t0);
        assert_eq!(held.method(), SEND);
        // Past the threshold a channel is bound; until then Send indications.
        for _ in 0..=TurnConfig::default().channel_threshold {
            out.clear();
            assert_eq!(c.send(t0, peer, b"data", &mut out), SendOutcome::Wrapped);
            assert_eq!(decode(&out).method(), SEND);
        }
        let bind = next(&mut c, t0);
        assert_eq!(bind.method(), CHANNEL_BIND);
        let _ = c.handle_message(
            t0,
            &answer(&bind, MessageClass::SuccessResponse, vec![], true),
        );
        out.clear();
        assert_eq!(c.send(t0, peer, b"data", &mut out), SendOutcome::Wrapped);
        assert_eq!(out, [0x40, 0x00, 0x00, 0x04, b'd', b'a', b't', b'a']);
        // ChannelData from the server on that channel is the peer's.
        assert_eq!(
            c.handle_message(t0, &[0x40, 0x00, 0x00, 0x02, 7, 8, 0, 0]),
            Inbound::Data {
                peer,
                payload: &[7, 8]
            }
        );

        // At 4 minutes the used permission is refreshed; at 9 the channel is rebound
        // and the allocation refreshed.
        let t4 = t0 + Duration::from_secs(240);
        assert!(c.poll_timeout().unwrap() <= t4);
        c.handle_timeout(t4);
        let refresh = next(&mut c, t4);
        assert_eq!(refresh.method(), CREATE_PERMMISSION);
        let _ = c.handle_message(
            t4,
            &answer(&refresh, MessageClass::SuccessResponse, vec![], true),
        );
        let _ = c.send(t4, peer, b"more", &mut out);
        let t9 = t0 + Duration::from_secs(540);
        c.handle_timeout(t9);
        let mut methods = Vec::new();
        let mut out = Vec::new();
        while c.poll_transmit(t9, &mut out) {
            let m = decode(&out);
            methods.push(m.method());
            let lifetime: Vec<stun_rs::StunAttribute> = if m.method() == REFRESH {
                vec![LifeTime::new(600).into()]
            } else {
                vec![]
            };
            let _ = c.handle_message(
                t9,
                &answer(&m, MessageClass::SuccessResponse, lifetime, true),
            );
            out.clear();
        }
        assert!(methods.contains(&REFRESH), "{methods:?}");
        assert!(methods.contains(&CHANNEL_BIND), "{methods:?}");
        assert!(c.relayed().is_some());
        // An idle peer's permission expires.
        let idle = t0 + Duration::from_secs(2000);
        for step in 1..=20 {
            c.handle_timeout(t9 + (idle - t9) * step / 20);
            while c.poll_transmit(idle, &mut out) {
                let m = decode(&out);
                let lifetime: Vec<stun_rs::StunAttribute> = if m.method() == REFRESH {
                    vec![LifeTime::new(600).into()]
                } else {
                    vec![]
                };
                let _ = c.handle_message(
                    idle,
                    &answer(&m, MessageClass::SuccessResponse, lifetime, true),
                );
                out.clear();
            }
        }
        assert!(c.permissions.is_empty() && c.channels.is_empty());
        assert!(c.relayed().is_some());
    }

    #[test]
    fn failed_refresh_loses_the_allocation() {
        let t0 = Instant::now();
        let mut c = allocated(t0, 600);
        let t9 = t0 + Duration::from_secs(540);
        c.handle_timeout(t9);
        let refresh = next(&mut c, t9);
        assert_eq!(refresh.method(), REFRESH);
        let _ = c.handle_message(t9, &error(&refresh, 437, "n"));
        assert!(matches!(
            c.poll_event(),
            Some(TurnEvent::Failed(TurnError::RefreshFailed { .. }))
        ));
        assert!(c.is_closed());
        let mut out = Vec::new();
        assert_eq!(
            c.send(t9, "198.51.100.1:1".parse().unwrap(), b"x", &mut out),
            SendOutcome::Dropped("no allocation")
        );
    }
}
