//! The transport join: a `glare-rtc` connection served by a `glare-udp` driver.
//!
//! [`Endpoint`] owns one UDP socket (one reactor task) and its local candidates;
//! [`Endpoint::connection`] creates a link on it and hands back the user side, a
//! [`Connection`], and the link's outgoing [`Signals`]. Carrying the signals to the
//! other side (and its signals back through [`Connection::handle_signal`]) is the
//! caller's job: [`Peer`](crate::Peer) does it through the broker; tests may pass them
//! directly.
//!
//! Inside the reactor the link drains `glare_rtc::Connection::poll_output`: transmits
//! are written straight into the driver's send buffer, signals go to [`Signals`],
//! channel data goes to each [`DataChannel`](crate::DataChannel)'s own queue (one
//! hand-off per message, no locks), state changes to a `watch` the [`Connection`]
//! reads. Users act on the link with one message to the reactor per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glare_negotiate::{Event as NegEvent, Role};
use glare_proto::signal::Signal;
use glare_rtc::{ChannelHandle, Direction, Event, MediaKind, Output, TrackHandle};
use glare_udp::{Datagram, Driver, HostFilter, IceServerUrl, Transmit};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};

use crate::{Config, Connection, Error, ErrorKind, Frame, Message};

/// A link's state, as the [`Connection`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Negotiating; ICE and DTLS not up yet.
    Connecting,
    /// ICE and DTLS are up: channels open and carry data.
    Connected,
    /// ICE lost connectivity; glare restarts ICE and fails the link if that does not
    /// help.
    Disconnected,
    /// Ended by a `bye` (or the peer closed the transport).
    Closed {
        /// Whether the peer ended it.
        by_remote: bool,
        /// The reason given, if any.
        reason: Option<String>,
    },
    /// Failed (timeout, ICE restarts exhausted, a description the peer sent was bad).
    Failed(String),
}

impl State {
    /// Whether the link is over (closed or failed).
    pub fn is_over(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::Failed(_))
    }

    /// A short reason for logs and the CLI's `closed` line.
    pub fn reason(&self) -> String {
        match self {
            Self::Closed {
                reason: Some(r), ..
            } if !r.is_empty() => r.clone(),
            Self::Closed {
                by_remote: true, ..
            } => "closed by peer".into(),
            Self::Closed { .. } => "closed".into(),
            Self::Failed(r) => format!("failed: {r}"),
            Self::Connecting => "connecting".into(),
            Self::Connected => "connected".into(),
            Self::Disconnected => "disconnected".into(),
        }
    }
}

/// What the reactor publishes about a link.
#[derive(Clone, Debug)]
pub(crate) struct Status {
    pub(crate) state: State,
    pub(crate) role: Option<Role>,
    /// From the link's first signal (sent or received) to connected.
    pub(crate) connect_time: Option<Duration>,
    /// From the link's first signal to its `glare-signal` channel being open.
    pub(crate) signal_time: Option<Duration>,
}

pub(crate) const CH_CONNECTING: u8 = 0;
pub(crate) const CH_OPEN: u8 = 1;
pub(crate) const CH_CLOSED: u8 = 2;

/// What a data channel's two halves (reactor and user) share: its state and a
/// wake-up for "opened", "buffered amount low" and "closed".
#[derive(Debug)]
pub(crate) struct ChanShared {
    pub(crate) state: AtomicU8,
    pub(crate) notify: Notify,
}

impl ChanShared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU8::new(CH_CONNECTING),
            notify: Notify::new(),
        })
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// A channel the peer opened, before the user side wraps it.
#[derive(Debug)]
pub(crate) struct NewChannel {
    pub(crate) handle: ChannelHandle,
    pub(crate) label: String,
    pub(crate) rx: mpsc::UnboundedReceiver<Message>,
    pub(crate) shared: Arc<ChanShared>,
}

struct ChanEntry {
    tx: mpsc::UnboundedSender<Message>,
    shared: Arc<ChanShared>,
}

/// A track the peer added, before the user side wraps it.
#[derive(Debug)]
pub(crate) struct NewTrack {
    pub(crate) handle: TrackHandle,
    pub(crate) kind: MediaKind,
    pub(crate) rx: mpsc::UnboundedReceiver<Frame>,
    pub(crate) shared: Arc<ChanShared>,
}

struct TrackEntry {
    tx: mpsc::UnboundedSender<Frame>,
    shared: Arc<ChanShared>,
}

/// Counters kept by the reactor side of a link.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) datagrams_in: u64,
    pub(crate) datagrams_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) message_bytes_in: u64,
    pub(crate) message_bytes_out: u64,
}

/// One link inside the reactor: a `glare_rtc::Connection` and where its outputs go.
pub(crate) struct Link {
    pub(crate) conn: glare_rtc::Connection,
    signals: mpsc::UnboundedSender<Signal>,
    status: watch::Sender<Status>,
    incoming: mpsc::UnboundedSender<NewChannel>,
    channels: HashMap<ChannelHandle, ChanEntry>,
    incoming_tracks: mpsc::UnboundedSender<NewTrack>,
    tracks: HashMap<TrackHandle, TrackEntry>,
    timeout: Option<Instant>,
    first_signal: Option<Instant>,
    over: bool,
    done: bool,
    over_flag: Arc<AtomicBool>,
    /// The peer closed DTLS/SCTP: its `bye` (with the reason) may still be on its
    /// way through the broker; wait for it until then.
    transport_closed: Option<Instant>,
    /// The `glare-signal` channel is not open yet.
    signal_pending: bool,
    pub(crate) counters: Counters,
    /// The server-reflexive and relay candidates this link was given (so that stale
    /// ones can be withdrawn exactly as they were added).
    gathered: Vec<glare_rtc::str0m::Candidate>,
    /// The base of the link's relay candidates (its first host candidate).
    base: SocketAddr,
    /// Asks the endpoint to gather its server-reflexive and relay candidates again
    /// (`None`: no ICE servers).
    regather: Option<mpsc::Sender<()>>,
}

/// How long a link whose peer closed the transport waits for the peer's `bye`.
const BYE_GRACE: Duration = Duration::from_millis(500);

impl Link {
    /// Opens a channel and registers its queue: the user side gets the receiver.
    pub(crate) fn open_channel(
        &mut self,
        label: &str,
        options: &glare_rtc::ChannelOptions,
    ) -> Result<
        (
            ChannelHandle,
            mpsc::UnboundedReceiver<Message>,
            Arc<ChanShared>,
        ),
        Error,
    > {
        if self.over {
            return Err(Error::closed("the link is closed"));
        }
        let handle = self
            .conn
            .open_channel(label, options)
            .map_err(|e| match e {
                glare_rtc::OpenError::ReservedLabel => {
                    Error::with_source(ErrorKind::InvalidInput, "cannot open channel", e)
                }
                e => Error::with_source(ErrorKind::Closed, "cannot open channel", e),
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = ChanShared::new();
        self.channels.insert(
            handle,
            ChanEntry {
                tx,
                shared: Arc::clone(&shared),
            },
        );
        Ok((handle, rx, shared))
    }

    /// Adds a media track and registers its frame queue.
    pub(crate) fn add_track(
        &mut self,
        kind: MediaKind,
        direction: Direction,
    ) -> Result<(TrackHandle, mpsc::UnboundedReceiver<Frame>, Arc<ChanShared>), Error> {
        if self.over {
            return Err(Error::closed("the link is closed"));
        }
        let handle = self
            .conn
            .add_track(kind, direction)
            .map_err(|e| Error::with_source(ErrorKind::Closed, "cannot add a track", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = ChanShared::new();
        self.tracks.insert(
            handle,
            TrackEntry {
                tx,
                shared: Arc::clone(&shared),
            },
        );
        Ok((handle, rx, shared))
    }

    /// Writes one message; `Ok(false)` is back-pressure.
    pub(crate) fn write(
        &mut self,
        handle: ChannelHandle,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, glare_rtc::WriteError> {
        let written = self.conn.write(handle, binary, data)?;
        if written {
            self.counters.messages_out += 1;
            self.counters.message_bytes_out += data.len() as u64;
        }
        Ok(written)
    }

    pub(crate) fn handle_signal(&mut self, now: Instant, signal: Signal) {
        self.first_signal.get_or_insert(now);
        if let Err(e) = self.conn.handle_signal(now, signal) {
            debug!(error = %e, "signal from the peer not used");
        }
    }

    pub(crate) fn dial(&mut self, now: Instant) -> Result<(), Error> {
        self.conn
            .dial(now)
            .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot dial", e))
    }

    /// ICE lost its path: the NAT may have re-mapped the socket. Asks the endpoint
    /// to gather again (one request pending at most; the endpoint rate-limits).
    fn request_regather(&self) {
        if let Some(tx) = &self.regather {
            // Full: a request is pending already. Closed: the endpoint is gone.
            let _ = tx.try_send(());
        }
    }

    /// The endpoint gathered again and its candidates changed: withdraw the stale
    /// ones, add (and trickle) the fresh ones, and, if ICE has not found a path by
    /// itself, restart it so that the peer pairs with the new candidates.
    fn replace_candidates(&mut self, stale: &[SocketAddr], fresh: &[Gatherable]) {
        if self.over {
            return;
        }
        let mut changed = false;
        self.gathered.retain(|c| {
            if !stale.contains(&c.addr()) {
                return true;
            }
            changed |= self.conn.remove_candidate(c);
            false
        });
        let base = self.base;
        for g in fresh {
            let Some(c) = g.candidate(base) else { continue };
            match self.conn.add_candidate(c.clone()) {
                Ok(()) => {
                    changed = true;
                    self.gathered.push(c);
                }
                Err(e) => debug!(addr = %c.addr(), error = %e, "fresh candidate not added"),
            }
        }
        // A link that never connected has no path to repair; its first exchange
        // carries (or its trickle brings) the candidates.
        // A restart already queued or in flight carries (or trickles under its own
        // generation) the fresh candidates: a second one would only throw away the
        // pairs being checked.
        let restarting = self
            .conn
            .negotiator()
            .queued()
            .iter()
            .any(|q| q.change == glare_negotiate::Change::IceRestart);
        if changed
            && !restarting
            && !self.conn.is_connected()
            && self.conn.stats().connected_at.is_some()
        {
            match self.conn.request(glare_negotiate::Change::IceRestart) {
                Ok(id) => debug!(%id, "ICE restart with the fresh candidates"),
                Err(e) => debug!(error = %e, "no ICE restart for the fresh candidates"),
            }
        }
    }

    fn finish(&mut self, state: State) {
        if self.over {
            return;
        }
        debug!(?state, "link over");
        self.over = true;
        self.over_flag.store(true, Ordering::Release);
        for (_, entry) in self.channels.drain() {
            entry.shared.set(CH_CLOSED);
        }
        for (_, entry) in self.tracks.drain() {
            entry.shared.set(CH_CLOSED);
        }
        self.status.send_modify(|s| s.state = state);
    }

    fn on_signal(&mut self, now: Instant, signal: Signal) {
        self.first_signal.get_or_insert(now);
        let description = matches!(signal, Signal::Description { .. });
        // The receiver may be gone (nobody carries signals any more): nothing to do.
        let _ = self.signals.send(signal);
        if description {
            // Every local candidate is known before the first description (host
            // addresses and STUN are gathered when the endpoint starts), so each new
            // description is followed by end-of-candidates for its ICE generation.
            self.conn.end_of_candidates();
        }
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Negotiation(n) => match n {
                NegEvent::RoleDecided { role, .. } => {
                    self.status.send_modify(|s| s.role = Some(role));
                }
                NegEvent::Connected => {
                    let since = self.first_signal.map(|f| now.saturating_duration_since(f));
                    self.status.send_modify(|s| {
                        s.state = State::Connected;
                        if s.connect_time.is_none() {
                            s.connect_time = since;
                        }
                    });
                }
                NegEvent::Disconnected => {
                    self.status.send_modify(|s| s.state = State::Disconnected);
                    self.request_regather();
                }
                NegEvent::IceRestartQueued { .. } => self.request_regather(),
                NegEvent::Failed(reason) => self.finish(State::Failed(reason.to_string())),
                NegEvent::Closed { by_remote, reason } => {
                    self.finish(State::Closed { by_remote, reason });
                }
                _ => {}
            },
            Event::ChannelOpen(handle, label) => {
                if let Some(entry) = self.channels.get(&handle) {
                    entry.shared.set(CH_OPEN);
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let shared = ChanShared::new();
                shared.state.store(CH_OPEN, Ordering::Release);
                self.channels.insert(
                    handle,
                    ChanEntry {
                        tx,
                        shared: Arc::clone(&shared),
                    },
                );
                let _ = self.incoming.send(NewChannel {
                    handle,
                    label,
                    rx,
                    shared,
                });
            }
            Event::ChannelData(handle, binary, data) => {
                self.counters.messages_in += 1;
                self.counters.message_bytes_in += data.len() as u64;
                if let Some(entry) = self.channels.get(&handle) {
                    let message = if binary {
                        Message::Binary(Bytes::from(data))
                    } else {
                        Message::Text(match String::from_utf8(data) {
                            Ok(s) => s,
                            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        })
                    };
                    // A receiver dropped by the user: the message has nowhere to go.
                    let _ = entry.tx.send(message);
                }
            }
            Event::ChannelClosed(handle) => {
                if let Some(entry) = self.channels.remove(&handle) {
                    entry.shared.set(CH_CLOSED);
                }
            }
            Event::ChannelBufferedAmountLow(handle) => {
                if let Some(entry) = self.channels.get(&handle) {
                    entry.shared.notify.notify_waiters();
                }
            }
            Event::TrackOpen {
                track,
                kind,
                remote,
            } => {
                if let Some(entry) = self.tracks.get(&track) {
                    entry.shared.set(CH_OPEN);
                    return;
                }
                if !remote {
                    debug!(?track, "own track opened but unknown here");
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let shared = ChanShared::new();
                shared.state.store(CH_OPEN, Ordering::Release);
                self.tracks.insert(
                    track,
                    TrackEntry {
                        tx,
                        shared: Arc::clone(&shared),
                    },
                );
                let _ = self.incoming_tracks.send(NewTrack {
                    handle: track,
                    kind,
                    rx,
                    shared,
                });
            }
            Event::TrackFrame {
                track,
                rtp_time,
                clock_rate,
                data,
            } => {
                if let Some(entry) = self.tracks.get(&track) {
                    let _ = entry.tx.send(Frame {
                        rtp_time,
                        clock_rate,
                        data,
                    });
                }
            }
            Event::TrackClosed(track) => {
                if let Some(entry) = self.tracks.remove(&track) {
                    entry.shared.set(CH_CLOSED);
                }
            }
            Event::TransportClosed if !self.over && self.transport_closed.is_none() => {
                self.transport_closed = Some(now + BYE_GRACE);
            }
            Event::TransportError(e) => debug!(error = %e, "transport error"),
            _ => {}
        }
    }
}

impl glare_udp::Connection for Link {
    fn accepts(&self, d: &Datagram<'_>) -> bool {
        !self.over
            && self
                .conn
                .accepts(self.conn.last_now(), d.source, d.destination, d.payload)
    }

    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>) {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += d.payload.len() as u64;
        self.conn
            .handle_datagram(now, d.source, d.destination, d.payload);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        loop {
            match self.conn.poll_output(now) {
                Output::Transmit {
                    source,
                    destination,
                    contents,
                } => {
                    if contents.is_empty() {
                        continue;
                    }
                    self.counters.datagrams_out += 1;
                    self.counters.bytes_out += contents.len() as u64;
                    buf.extend_from_slice(&contents);
                    return Some(Transmit::new(destination).with_source(source));
                }
                Output::Signal(s) => self.on_signal(now, s),
                Output::Event(e) => self.on_event(now, e),
                Output::Timeout(t) => {
                    self.timeout = Some(t);
                    if self.signal_pending && self.conn.signal_stream_id().is_some() {
                        self.signal_pending = false;
                        let since = self.first_signal.map(|f| now.saturating_duration_since(f));
                        self.status.send_modify(|s| s.signal_time = since);
                    }
                    if self.over {
                        self.done = true;
                    }
                    return None;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.timeout, self.transport_closed.filter(|_| !self.over)) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        if let Some(deadline) = self.transport_closed
            && now >= deadline
            && !self.over
        {
            let reason = "peer closed the transport";
            self.conn.close(Some(reason.into()));
            self.finish(State::Closed {
                by_remote: true,
                reason: Some(reason.into()),
            });
        }
    }

    fn is_closed(&self) -> bool {
        self.done
    }
}

/// The signals a link wants sent to the other side, in order (PROTOCOL.md §2).
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    /// The next signal to deliver; `None` once the link is gone.
    pub async fn next(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }

    /// A signal ready now, if any.
    pub fn try_next(&mut self) -> Option<Signal> {
        self.rx.try_recv().ok()
    }
}

/// A server-reflexive or relay candidate of an endpoint, offered by all its links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gatherable {
    /// From a STUN server: the socket's address outside the NAT, and its base.
    Reflexive { addr: SocketAddr, base: SocketAddr },
    /// A TURN allocation's relayed address.
    Relay { relayed: SocketAddr },
}

impl Gatherable {
    fn addr(&self) -> SocketAddr {
        match *self {
            Self::Reflexive { addr, .. } => addr,
            Self::Relay { relayed } => relayed,
        }
    }

    /// The str0m candidate; a relay's base is the link's first host candidate.
    fn candidate(&self, relay_base: SocketAddr) -> Option<glare_rtc::str0m::Candidate> {
        use glare_rtc::str0m::Candidate;
        let made = match *self {
            Self::Reflexive { addr, base } => Candidate::server_reflexive(addr, base, "udp"),
            Self::Relay { relayed } => Candidate::relayed(relayed, relay_base, "udp"),
        };
        made.map_err(|e| debug!(candidate = ?self, error = %e, "candidate refused"))
            .ok()
    }
}

/// At most one re-gathering per this interval, however many links ask.
const REGATHER_INTERVAL: Duration = Duration::from_secs(2);

/// The STUN and TURN servers of an endpoint, split from its ICE server URLs.
#[derive(Clone, Debug, Default)]
struct IceServers {
    stun: Vec<glare_udp::StunServer>,
    turn: Vec<glare_udp::TurnServer>,
}

impl IceServers {
    fn from_config(config: &Config) -> Self {
        let mut servers = Self::default();
        for server in &config.ice_servers {
            match &server.0 {
                IceServerUrl::Stun(s) => servers.stun.push(s.clone()),
                IceServerUrl::Turn(t) => servers.turn.push(t.clone()),
            }
        }
        servers
    }

    fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }
}

/// Asks every STUN server for this socket's mapped address and every TURN server in
/// `turn` for an allocation (a live UDP allocation is returned as it is), within
/// `limit`. What did not answer is logged and left out.
async fn gather(
    driver: &Driver<Link>,
    stun: &[glare_udp::StunServer],
    turn: &[glare_udp::TurnServer],
    limit: Duration,
) -> Vec<Gatherable> {
    // Boxed: these futures are large, and the ones that hold this one (`Peer::new`)
    // would otherwise carry them on the caller's stack.
    let both = Box::pin(async {
        tokio::join!(
            async {
                if stun.is_empty() {
                    Vec::new()
                } else {
                    Box::pin(driver.server_reflexive(stun)).await
                }
            },
            async {
                if turn.is_empty() {
                    Vec::new()
                } else {
                    Box::pin(driver.allocate_relays(turn)).await
                }
            }
        )
    });
    let mut out = Vec::new();
    match tokio::time::timeout(limit, both).await {
        Ok((stun_results, turn_results)) => {
            for r in stun_results {
                match r {
                    Ok(c) => out.push(Gatherable::Reflexive {
                        addr: c.address,
                        base: c.base,
                    }),
                    Err(e) => warn!(error = %e, "no server-reflexive candidate"),
                }
            }
            for r in turn_results {
                match r {
                    Ok(relay) => out.push(Gatherable::Relay {
                        relayed: relay.relayed,
                    }),
                    Err(e) => warn!(error = %e, "no relay candidate"),
                }
            }
        }
        Err(_) => warn!("ICE servers did not answer in time"),
    }
    let mut seen = Vec::with_capacity(out.len());
    out.retain(|g| {
        let new = !seen.contains(&g.addr());
        seen.push(g.addr());
        new
    });
    out
}

/// Gathers again when a link asks (its ICE lost the path; the NAT may have re-mapped
/// the socket), at most once per [`REGATHER_INTERVAL`], and hands what changed to
/// every link. A UDP allocation whose TURN server now sees the socket at another
/// address was made through a mapping that is gone: it is released and made again
/// (TCP and TLS allocations are left as they are).
/// Ends when the endpoint and all its links are gone.
async fn regather_task(
    driver: glare_udp::WeakDriver<Link>,
    mut requests: mpsc::Receiver<()>,
    gathered: Arc<std::sync::Mutex<Vec<Gatherable>>>,
    servers: IceServers,
    limit: Duration,
) {
    while requests.recv().await.is_some() {
        let Some(driver) = driver.upgrade() else {
            return;
        };
        let old = gathered.lock().map(|g| g.clone()).unwrap_or_default();
        let reflexive = reflexive_again(&driver, &servers.stun, &old, limit).await;
        let udp_turn: Vec<glare_udp::TurnServer> = servers
            .turn
            .iter()
            .filter(|t| t.transport() == glare_udp::TurnTransport::Udp)
            .cloned()
            .collect();
        let alive = driver.relays().await.unwrap_or_default();
        let dead = dead_udp_relays(&driver, &alive, limit).await;
        for relayed in &dead {
            debug!(%relayed, "releasing an allocation made through the old mapping");
            let _ = driver.release_relay(*relayed).await;
        }
        let mut relays: Vec<Gatherable> = alive
            .iter()
            .filter(|r| !dead.contains(&r.relayed))
            .map(|r| Gatherable::Relay { relayed: r.relayed })
            .collect();
        for g in gather(&driver, &[], &udp_turn, limit).await {
            if !relays.contains(&g) {
                relays.push(g);
            }
        }
        let mut fresh_set = reflexive;
        fresh_set.extend(relays);
        let (stale, fresh) = diff(&old, &fresh_set);
        if stale.is_empty() && fresh.is_empty() {
            debug!("gathered again: candidates unchanged");
        } else {
            debug!(?stale, ?fresh, "gathered again: candidates changed");
            if let Ok(mut g) = gathered.lock() {
                g.clone_from(&fresh_set);
            }
            match driver
                .call_all(move |link, _| link.replace_candidates(&stale, &fresh))
                .await
            {
                Ok(n) => debug!(links = n, "links given the new candidates"),
                Err(e) => debug!(error = %e, "links not reached"),
            }
        }
        drop(driver);
        tokio::time::sleep(REGATHER_INTERVAL).await;
    }
}

/// What went from `old` to `new`: the addresses of the candidates gone, and the
/// candidates new.
fn diff(old: &[Gatherable], new: &[Gatherable]) -> (Vec<SocketAddr>, Vec<Gatherable>) {
    let stale = old
        .iter()
        .filter(|g| !new.contains(g))
        .map(Gatherable::addr)
        .collect();
    let fresh = new.iter().filter(|g| !old.contains(g)).copied().collect();
    (stale, fresh)
}

/// This socket's address as `server` sees it (a Binding), or `None` if it gave none
/// within `limit`.
async fn mapped_address(
    driver: &Driver<Link>,
    server: &glare_udp::StunServer,
    limit: Duration,
) -> Option<glare_udp::ReflexiveCandidate> {
    let answer = tokio::time::timeout(
        limit,
        Box::pin(driver.server_reflexive(std::slice::from_ref(server))),
    )
    .await;
    match answer.map(|mut v| v.pop()) {
        Ok(Some(Ok(c))) => Some(c),
        Ok(Some(Err(e))) => {
            debug!(%server, error = %e, "no mapped address this time");
            None
        }
        _ => {
            debug!(%server, "STUN server did not answer in time");
            None
        }
    }
}

/// Asks every STUN server again, each on its own within `limit` (one server that
/// does not answer must not hide what the others say). The server-reflexive
/// candidates in `old` stay unless every server answered: a silent server's address
/// may still be good.
async fn reflexive_again(
    driver: &Driver<Link>,
    stun: &[glare_udp::StunServer],
    old: &[Gatherable],
    limit: Duration,
) -> Vec<Gatherable> {
    let asks = stun.iter().map(|server| async move {
        mapped_address(driver, server, limit)
            .await
            .map(|c| Gatherable::Reflexive {
                addr: c.address,
                base: c.base,
            })
    });
    let answers = futures_util::future::join_all(asks).await;
    let all_answered = answers.iter().all(Option::is_some);
    let mut out: Vec<Gatherable> = Vec::new();
    let kept = old
        .iter()
        .filter(|g| !all_answered && matches!(g, Gatherable::Reflexive { .. }))
        .copied();
    for g in answers.into_iter().flatten().chain(kept) {
        if !out.iter().any(|o| o.addr() == g.addr()) {
            out.push(g);
        }
    }
    out
}

/// The UDP allocations among `alive` made through a NAT mapping that is gone: those
/// whose TURN server now sees this socket at another address than when it allocated
/// (a Binding to each server, each within `limit`). A server that does not answer
/// says nothing: its allocation is kept.
async fn dead_udp_relays(
    driver: &Driver<Link>,
    alive: &[glare_udp::RelayCandidate],
    limit: Duration,
) -> Vec<SocketAddr> {
    let probes = alive
        .iter()
        .filter(|r| r.transport == glare_udp::TurnTransport::Udp)
        .filter_map(|r| Some((r, r.mapped?)))
        .map(|(r, mapped)| async move {
            let server = glare_udp::StunServer::from_addr(r.server);
            let now = mapped_address(driver, &server, limit).await?.address;
            (now != mapped).then(|| {
                debug!(relayed = %r.relayed, was = %mapped, %now, "TURN server sees a new mapping");
                r.relayed
            })
        });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One UDP socket with its reactor and local candidates; links are made on it.
///
/// Server-reflexive and relay candidates are gathered when it binds, and again when
/// a link loses its ICE path: if the socket's mapped address changed (a NAT re-mapped
/// it), every link withdraws the stale candidates, adds the new ones, and a link that
/// has not found a path by itself restarts ICE with them.
#[derive(Debug, Clone)]
pub struct Endpoint {
    driver: Driver<Link>,
    host: Vec<SocketAddr>,
    gathered: Arc<std::sync::Mutex<Vec<Gatherable>>>,
    regather: Option<mpsc::Sender<()>>,
    config: Arc<Config>,
}

impl Endpoint {
    /// Binds the socket of `config.bind`, finds host candidates and asks the `stun:`
    /// servers for server-reflexive ones and the `turn:` servers for relays (within
    /// `config.stun_timeout`).
    ///
    /// Must be called inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let driver = glare_udp::spawn::<Link>(config.bind, config.udp.clone()).map_err(|e| {
            Error::with_source(
                ErrorKind::Socket,
                format!("cannot bind UDP {}", config.bind),
                e,
            )
        })?;
        let candidates = |filter: &HostFilter| {
            driver.host_candidates(filter).map_err(|e| {
                Error::with_source(ErrorKind::Socket, "cannot list interface addresses", e)
            })
        };
        let mut host = candidates(&config.host_filter)?;
        if host.is_empty() {
            host = candidates(&HostFilter::loopback_only())?;
        }
        if host.is_empty() {
            return Err(Error::new(
                ErrorKind::Socket,
                format!(
                    "no usable local address for a socket on {}",
                    driver.local_addr()
                ),
            ));
        }
        let servers = IceServers::from_config(&config);
        let gathered = gather(&driver, &servers.stun, &servers.turn, config.stun_timeout).await;
        debug!(local = %driver.local_addr(), ?host, ?gathered, "endpoint ready");
        let gathered = Arc::new(std::sync::Mutex::new(gathered));
        let regather = (!servers.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(regather_task(
                driver.downgrade(),
                rx,
                Arc::clone(&gathered),
                servers,
                config.stun_timeout,
            ));
            tx
        });
        Ok(Self {
            driver,
            host,
            gathered,
            regather,
            config: Arc::new(config),
        })
    }

    /// Gathers the server-reflexive and relay candidates again, in the background,
    /// as a link that loses its path makes it do: call it when the host's network
    /// changed. What changed reaches every link (see [`Endpoint`]). Nothing happens
    /// without ICE servers; requests closer together than 2 s are served together.
    pub fn regather(&self) {
        if let Some(tx) = &self.regather {
            // Full: a request is pending already.
            let _ = tx.try_send(());
        }
    }

    fn gathered(&self) -> Vec<Gatherable> {
        self.gathered.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The socket's address (the IP may be a wildcard).
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    /// The host candidate addresses every link offers.
    pub fn host_candidates(&self) -> &[SocketAddr] {
        &self.host
    }

    /// The server-reflexive addresses STUN gave (`(address, base)`), as of the
    /// latest gathering.
    pub fn reflexive_candidates(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.gathered()
            .iter()
            .filter_map(|g| match *g {
                Gatherable::Reflexive { addr, base } => Some((addr, base)),
                Gatherable::Relay { .. } => None,
            })
            .collect()
    }

    /// The relayed addresses TURN servers allocated for this socket, as of the
    /// latest gathering.
    pub fn relay_candidates(&self) -> Vec<SocketAddr> {
        self.gathered()
            .iter()
            .filter_map(|g| match *g {
                Gatherable::Relay { relayed } => Some(relayed),
                Gatherable::Reflexive { .. } => None,
            })
            .collect()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The UDP driver's counters.
    pub async fn udp_stats(&self) -> Result<glare_udp::Stats, Error> {
        Ok(self.driver.stats().await?)
    }

    /// A new link on this socket, not started: call [`Connection::dial`] to offer,
    /// or hand it the peer's offer with [`Connection::handle_signal`]. Deliver what
    /// comes out of [`Signals`] to the other side.
    pub async fn connection(&self) -> Result<(Connection, Signals), Error> {
        self.connection_from(&self.host.clone()).await
    }

    /// Like [`connection`](Self::connection), but the link offers only `host` as
    /// its host candidates (addresses this socket receives on, e.g. one of several
    /// loopback addresses of a wildcard socket), plus the server-reflexive ones.
    ///
    /// The driver tells links apart by `(local, remote)` address pair: two links
    /// between the same two sockets at the same time need distinct local (or
    /// remote) addresses.
    pub async fn connection_from(
        &self,
        host: &[SocketAddr],
    ) -> Result<(Connection, Signals), Error> {
        let now = tokio::time::Instant::now().into_std();
        let mut rtc_config = glare_rtc::Config::with_seed(rand::random());
        rtc_config.negotiator = self.config.negotiator.clone();
        rtc_config.sctp_max_buffered_amount = self.config.sctp_send_buffer;
        rtc_config.buffered_amount_low_threshold = self.config.buffered_amount_low;
        rtc_config.stats_interval = self.config.stats_interval;
        let mut conn = glare_rtc::Connection::new(now, rtc_config);
        for addr in host {
            if let Err(e) = conn.add_local_candidate(*addr) {
                debug!(%addr, error = %e, "host candidate not added");
            }
        }
        let base = host.first().copied().unwrap_or(self.driver.local_addr());
        let mut gathered = Vec::new();
        let snapshot = self.gathered();
        for g in &snapshot {
            let Some(c) = g.candidate(base) else { continue };
            match conn.add_candidate(c.clone()) {
                Ok(()) => gathered.push(c),
                Err(e) => debug!(candidate = ?g, error = %e, "candidate not added"),
            }
        }
        let (signals_tx, signals_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (tracks_tx, tracks_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Status {
            state: State::Connecting,
            role: None,
            connect_time: None,
            signal_time: None,
        });
        let over = Arc::new(AtomicBool::new(false));
        let link = Link {
            conn,
            signals: signals_tx,
            status: status_tx,
            incoming: incoming_tx,
            channels: HashMap::new(),
            incoming_tracks: tracks_tx,
            tracks: HashMap::new(),
            timeout: None,
            first_signal: None,
            over: false,
            done: false,
            over_flag: Arc::clone(&over),
            transport_closed: None,
            signal_pending: true,
            counters: Counters::default(),
            gathered,
            base,
            regather: self.regather.clone(),
        };
        let handle = self.driver.add(link).await?;
        // A re-gathering that changed the candidates between the snapshot above and
        // the link joining the reactor did not reach it: hand it the change now.
        let now = self.gathered();
        if now != snapshot {
            let (stale, fresh) = diff(&snapshot, &now);
            handle
                .call(move |link, _| link.replace_candidates(&stale, &fresh))
                .await?;
        }
        Ok((
            Connection::new(handle, status_rx, incoming_rx, tracks_rx, over),
            Signals { rx: signals_rx },
        ))
    }

    /// Stops the reactor: every link on it ends at once (no `bye`).
    pub async fn shutdown(&self) {
        self.driver.shutdown().await;
    }
}
