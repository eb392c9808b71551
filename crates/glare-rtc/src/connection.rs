//! [`Connection`]: a [`Negotiator`] and a `str0m::Rtc` behind one sans-I/O face.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare_negotiate::{
    Change, ChangeId, DialError, HandleSignalError, Negotiator, RequestError, TransportState,
};
use glare_proto::signal::{IceCandidate, Signal};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, IceConnectionState, Input, Rtc};
use tracing::{debug, trace};

use crate::engine::{RtcOut, StrEngine};

/// The label of the reserved in-band signaling channel (PROTOCOL.md §4).
pub const SIGNAL_LABEL: &str = "glare-signal";
/// The protocol of the reserved in-band signaling channel (PROTOCOL.md §4).
pub const SIGNAL_PROTOCOL: &str = "glare/1";

/// How a [`Connection`] is set up. [`Config::with_seed`] gives the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Timeouts and limits of the negotiation.
    pub negotiator: glare_negotiate::Config,
    /// Seed of the negotiator's tie-breakers and delays: take it from a random source
    /// (both sides must draw differently).
    pub seed: u64,
    /// str0m's SCTP send buffer (`set_sctp_max_buffered_amount`). str0m's default,
    /// 128 KiB, caps a channel at about buffer/RTT; glare's default is 1 MiB.
    pub sctp_max_buffered_amount: usize,
    /// A channel's buffered amount falling below this raises
    /// [`Event::ChannelBufferedAmountLow`]. Default 256 KiB.
    pub buffered_amount_low_threshold: usize,
}

impl Config {
    /// The defaults, with the negotiator's random source seeded by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            negotiator: glare_negotiate::Config::default(),
            seed,
            sctp_max_buffered_amount: 1024 * 1024,
            buffered_amount_low_threshold: 256 * 1024,
        }
    }
}

/// A data channel's stable handle: valid from [`Connection::open_channel`] (or the
/// remote's open) for the life of the connection, however many times glare makes the
/// offer that creates it be rolled back and re-sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelHandle(u64);

impl ChannelHandle {
    /// The number (unique within one connection).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Delivery guarantees of a data channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reliability {
    /// Retransmit until delivered.
    #[default]
    Reliable,
    /// Give a message up after this many retransmissions.
    MaxRetransmits(u16),
    /// Give a message up after this many milliseconds.
    MaxPacketLifetime(u16),
}

/// Options of a data channel. The default is reliable and ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// In-order delivery.
    pub ordered: bool,
    /// Retransmission policy.
    pub reliability: Reliability,
    /// The sub-protocol name (empty: none).
    pub protocol: String,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            ordered: true,
            reliability: Reliability::Reliable,
            protocol: String::new(),
        }
    }
}

impl ChannelOptions {
    /// Unordered, and at most `retransmits` retransmissions (0: fire and forget).
    pub fn unreliable(retransmits: u16) -> Self {
        Self {
            ordered: false,
            reliability: Reliability::MaxRetransmits(retransmits),
            protocol: String::new(),
        }
    }

    fn to_config(&self, label: &str) -> ChannelConfig {
        ChannelConfig {
            label: label.to_owned(),
            ordered: self.ordered,
            reliability: match self.reliability {
                Reliability::Reliable => str0m::channel::Reliability::Reliable,
                Reliability::MaxRetransmits(retransmits) => {
                    str0m::channel::Reliability::MaxRetransmits { retransmits }
                }
                Reliability::MaxPacketLifetime(lifetime) => {
                    str0m::channel::Reliability::MaxPacketLifetime { lifetime }
                }
            },
            negotiated: None,
            protocol: self.protocol.clone(),
        }
    }
}

/// What the application learns from a [`Connection`].
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// From the negotiator: role decided, changes negotiated, connected, disconnected,
    /// ICE restart queued, failed, closed.
    Negotiation(glare_negotiate::Event),
    /// A data channel opened (ours or the peer's), with its label.
    ChannelOpen(ChannelHandle, String),
    /// A message arrived: handle, whether binary (else UTF-8 text), bytes.
    ChannelData(ChannelHandle, bool, Vec<u8>),
    /// A data channel closed.
    ChannelClosed(ChannelHandle),
    /// A channel's buffered amount fell below
    /// [`Config::buffered_amount_low_threshold`]: write more.
    ChannelBufferedAmountLow(ChannelHandle),
    /// The peer closed the DTLS connection or the SCTP association.
    TransportClosed,
    /// str0m failed and was disconnected (the link is closed with a `bye`).
    TransportError(String),
}

/// What the caller must do next: the answer of [`Connection::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// Send `contents` from the local address `source` to `destination` (one datagram).
    Transmit {
        /// The local candidate address to send from.
        source: SocketAddr,
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        contents: Vec<u8>,
    },
    /// Send this signal to the peer (through the broker), in order.
    Signal(Signal),
    /// Tell the application.
    Event(Event),
    /// Nothing more now: call [`Connection::handle_timeout`] at this instant (or
    /// earlier, on new input).
    Timeout(Instant),
}

/// Why [`Connection::open_channel`] refused (caller misuse).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The label is reserved for glare's in-band signaling.
    #[error("the label {SIGNAL_LABEL:?} is reserved")]
    ReservedLabel,
    /// The link is closed or failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why [`Connection::write`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// No such channel (never opened here, or closed).
    #[error("unknown channel {0:?}")]
    UnknownChannel(ChannelHandle),
    /// The channel is not open (yet, or any more).
    #[error("channel {0:?} is not open")]
    NotOpen(ChannelHandle),
    /// str0m refused the write (for example, a message over the maximum size).
    #[error("str0m refused the write: {0}")]
    Rtc(String),
}

/// Why [`Connection::add_local_candidate`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// str0m refused to build a host candidate for the address.
    #[error("bad local candidate: {0}")]
    Bad(String),
    /// str0m already had the candidate (or one that makes it redundant).
    #[error("candidate not added (duplicate or redundant)")]
    NotAdded,
}

#[derive(Debug)]
struct ChannelState {
    label: String,
    id: Option<ChannelId>,
    open: bool,
    /// glare's own signaling channel: never shown to the application.
    hidden: bool,
}

/// One WebRTC link: glare-proof negotiation ([`Negotiator`]) on str0m ([`StrEngine`]),
/// sans-I/O. See the [crate docs](crate) for the contract and a run loop.
#[derive(Debug)]
pub struct Connection {
    neg: Negotiator,
    engine: StrEngine,
    config: Config,
    out: VecDeque<Output>,
    channels: HashMap<ChannelHandle, ChannelState>,
    by_change: HashMap<ChangeId, ChannelHandle>,
    by_id: HashMap<ChannelId, ChannelHandle>,
    next_handle: u64,
    signal_channel: Option<ChannelHandle>,
    dtls_connected: bool,
    rtc_closed: bool,
    last_now: Instant,
}

impl Connection {
    /// A connection whose str0m instance starts at `now`.
    pub fn new(now: Instant, config: Config) -> Self {
        let rtc = Rtc::builder()
            .set_sctp_max_buffered_amount(config.sctp_max_buffered_amount)
            .build(now);
        Self::from_rtc(now, rtc, config)
    }

    /// A connection on an `Rtc` built by the caller (codecs, ICE lite, certificate …).
    /// Its SCTP buffer setting is the caller's; `config.sctp_max_buffered_amount` is
    /// not applied.
    pub fn from_rtc(now: Instant, rtc: Rtc, config: Config) -> Self {
        Self {
            neg: Negotiator::with_seed(config.negotiator.clone(), config.seed),
            engine: StrEngine::new(rtc),
            config,
            out: VecDeque::new(),
            channels: HashMap::new(),
            by_change: HashMap::new(),
            by_id: HashMap::new(),
            next_handle: 0,
            signal_channel: None,
            dtls_connected: false,
            rtc_closed: false,
            last_now: now,
        }
    }

    // ----- inputs ---------------------------------------------------------------------

    /// Starts the link as the side that offers first. The offer carries the
    /// `glare-signal` channel (PROTOCOL.md §4) and every channel opened so far.
    pub fn dial(&mut self, now: Instant) -> Result<(), DialError> {
        self.last_now = now;
        if self.signal_channel.is_none() {
            let options = ChannelOptions {
                protocol: SIGNAL_PROTOCOL.into(),
                ..ChannelOptions::default()
            };
            match self.open_inner(SIGNAL_LABEL, &options, true) {
                Ok(h) => self.signal_channel = Some(h),
                Err(_) => return Err(DialError::LinkOver),
            }
        }
        self.neg.dial(now)
    }

    /// Opens a data channel. Before the session has an `m=application` line this is a
    /// change the negotiator offers (glare-proof); after, str0m opens it at once
    /// in-band (DCEP). Either way the handle is stable and
    /// [`Event::ChannelOpen`] tells when it can be written.
    pub fn open_channel(
        &mut self,
        label: &str,
        options: &ChannelOptions,
    ) -> Result<ChannelHandle, OpenError> {
        if label == SIGNAL_LABEL {
            return Err(OpenError::ReservedLabel);
        }
        self.open_inner(label, options, false)
    }

    fn open_inner(
        &mut self,
        label: &str,
        options: &ChannelOptions,
        hidden: bool,
    ) -> Result<ChannelHandle, OpenError> {
        let config = options.to_config(label);
        let handle = ChannelHandle(self.next_handle);
        let id = if self.engine.has_data_line() {
            let id = self
                .engine
                .mutate(|rtc| rtc.direct_api().create_data_channel(config));
            self.by_id.insert(id, handle);
            debug!(?handle, label, "channel opened directly");
            Some(id)
        } else {
            let change = self.neg.request(Change::OpenChannel {
                label: label.to_owned(),
            })?;
            self.engine.set_channel_config(change, config);
            self.by_change.insert(change, handle);
            debug!(?handle, %change, label, "channel queued for negotiation");
            None
        };
        self.next_handle += 1;
        self.channels.insert(
            handle,
            ChannelState {
                label: label.to_owned(),
                id,
                open: false,
                hidden,
            },
        );
        Ok(handle)
    }

    /// Queues any other change (media tracks, ICE restart) with the negotiator.
    pub fn request(&mut self, change: Change) -> Result<ChangeId, RequestError> {
        self.neg.request(change)
    }

    /// Writes one message. `Ok(false)` is back-pressure: nothing was written; wait
    /// for [`Event::ChannelBufferedAmountLow`] and write it again.
    pub fn write(
        &mut self,
        handle: ChannelHandle,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, WriteError> {
        let state = self
            .channels
            .get(&handle)
            .ok_or(WriteError::UnknownChannel(handle))?;
        let id = match state.id {
            Some(id) if state.open => id,
            _ => return Err(WriteError::NotOpen(handle)),
        };
        self.engine.mutate(|rtc| match rtc.channel(id) {
            Some(mut ch) => ch
                .write(binary, data)
                .map_err(|e| WriteError::Rtc(e.to_string())),
            None => Err(WriteError::NotOpen(handle)),
        })
    }

    /// Bytes queued on a channel and not yet acknowledged (0 if it is not open).
    pub fn buffered_amount(&mut self, handle: ChannelHandle) -> usize {
        let Some(id) = self.channels.get(&handle).and_then(|s| s.id) else {
            return 0;
        };
        self.engine
            .mutate(|rtc| rtc.channel(id).map_or(0, |mut c| c.buffered_amount()))
    }

    /// Closes a data channel ([`Event::ChannelClosed`] follows).
    pub fn close_channel(&mut self, handle: ChannelHandle) {
        if let Some(id) = self.channels.get(&handle).and_then(|s| s.id) {
            self.engine
                .mutate(|rtc| rtc.direct_api().close_data_channel(id));
        }
    }

    /// Adds a local UDP host candidate (an address the caller receives on) and
    /// trickles it to the peer once a local description exists (before that, the
    /// first offer or answer carries it).
    pub fn add_local_candidate(&mut self, addr: SocketAddr) -> Result<(), CandidateError> {
        let c = Candidate::host(addr, "udp").map_err(|e| CandidateError::Bad(e.to_string()))?;
        self.add_candidate(c)
    }

    /// Adds any local candidate (server-reflexive, relayed …) built by the caller.
    pub fn add_candidate(&mut self, c: Candidate) -> Result<(), CandidateError> {
        let line = self
            .engine
            .mutate(|rtc| rtc.add_local_candidate(c).map(Candidate::to_sdp_string))
            .ok_or(CandidateError::NotAdded)?;
        // str0m appends the ufrag it knows; the negotiator's (the pending offer's) is
        // the one that counts, carried in `usernameFragment`.
        let line = match line.find(" ufrag ") {
            Some(i) => line[..i].to_owned(),
            None => line,
        };
        if self.neg.local_ufrag().is_some() {
            let candidate = IceCandidate {
                candidate: line,
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: String::new(),
            };
            if let Err(e) = self.neg.queue_local_candidate(candidate) {
                debug!(error = %e, "local candidate not trickled");
            }
        }
        Ok(())
    }

    /// Trickles end-of-candidates for the current local ICE generation.
    pub fn end_of_candidates(&mut self) {
        if self.neg.local_ufrag().is_some()
            && let Err(e) = self
                .neg
                .queue_local_candidate(IceCandidate::end_of_candidates(""))
        {
            debug!(error = %e, "end-of-candidates not sent");
        }
    }

    /// Handles a signal from the peer (PROTOCOL.md §2). Errors are peer faults (the
    /// link fails where the negotiator says so) except `LocalEngine`.
    pub fn handle_signal(&mut self, now: Instant, signal: Signal) -> Result<(), HandleSignalError> {
        self.last_now = now;
        self.neg.handle_signal(now, signal, &mut self.engine)
    }

    /// Handles one datagram received on the local address `destination` (it must
    /// equal a local candidate's address) from `source`. Datagrams that are not
    /// STUN, DTLS, RTP or RTCP are dropped with a debug log.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        self.last_now = now;
        let receive = match Receive::new(Protocol::Udp, source, destination, contents) {
            Ok(r) => r,
            Err(e) => {
                debug!(%source, error = %e, "datagram dropped");
                return;
            }
        };
        if let Err(e) = self
            .engine
            .mutate(|rtc| rtc.handle_input(Input::Receive(now, receive)))
        {
            debug!(%source, error = %e, "datagram refused by str0m");
        }
    }

    /// Whether a datagram belongs to this connection (for one socket serving many:
    /// str0m's `accepts`).
    pub fn accepts(
        &self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> bool {
        Receive::new(Protocol::Udp, source, destination, contents)
            .is_ok_and(|r| self.engine.rtc().accepts(&Input::Receive(now, r)))
    }

    /// Handles timers (call at the instant of [`Output::Timeout`]; early or late is
    /// harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        if let Err(e) = self
            .engine
            .mutate(|rtc| rtc.handle_input(Input::Timeout(now)))
        {
            debug!(error = %e, "str0m timeout handling failed");
        }
        self.neg.handle_timeout(now);
    }

    /// Ends the link: a `bye` goes to the peer, then str0m closes (DTLS
    /// `close_notify`).
    pub fn close(&mut self, reason: Option<String>) {
        self.neg.close(reason);
    }

    // ----- outputs --------------------------------------------------------------------

    /// The next thing to do. Drain it until [`Output::Timeout`] after every input (and
    /// after every call that changes the connection): transmits, signals and events
    /// come out in the order they must be acted on.
    #[must_use]
    pub fn poll_output(&mut self, now: Instant) -> Output {
        self.last_now = self.last_now.max(now);
        self.pump(now);
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let far = now + Duration::from_secs(3600);
        let t = [self.engine.timeout(), self.neg.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far);
        Output::Timeout(t)
    }

    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(o) = self.engine.pop_output() {
                progressed = true;
                self.on_rtc(now, o);
            }
            if let Some(e) = self.engine.take_error() {
                progressed = true;
                self.out
                    .push_back(Output::Event(Event::TransportError(e.clone())));
                self.neg.close(Some(format!("transport error: {e}")));
            }
            while let Some(s) = self.neg.poll_signal(now, &mut self.engine) {
                progressed = true;
                self.out.push_back(Output::Signal(s));
            }
            while let Some(e) = self.neg.poll_event() {
                progressed = true;
                self.on_negotiation(e);
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_negotiation(&mut self, e: glare_negotiate::Event) {
        if matches!(
            e,
            glare_negotiate::Event::Closed { .. } | glare_negotiate::Event::Failed(_)
        ) && !self.rtc_closed
        {
            self.rtc_closed = true;
            if let Err(err) = self.engine.mutate(Rtc::close) {
                debug!(error = %err, "str0m close failed");
            }
        }
        self.out.push_back(Output::Event(Event::Negotiation(e)));
    }

    fn handle_of(&self, id: ChannelId) -> Option<ChannelHandle> {
        self.by_id.get(&id).copied().or_else(|| {
            self.engine
                .change_of_channel(id)
                .and_then(|c| self.by_change.get(&c).copied())
        })
    }

    fn visible(&self, handle: ChannelHandle) -> bool {
        self.channels.get(&handle).is_some_and(|s| !s.hidden)
    }

    fn on_rtc(&mut self, now: Instant, o: RtcOut) {
        let e = match o {
            RtcOut::Transmit(t) => {
                self.out.push_back(Output::Transmit {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.into(),
                });
                return;
            }
            RtcOut::Event(e) => e,
        };
        match e {
            str0m::Event::Connected => {
                debug!("ICE and DTLS connected");
                self.dtls_connected = true;
                self.neg.handle_transport(now, TransportState::Connected);
            }
            str0m::Event::IceConnectionStateChange(s) => {
                debug!(state = ?s, "ICE state");
                match s {
                    IceConnectionState::Disconnected => {
                        self.neg.handle_transport(now, TransportState::Disconnected);
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed
                        if self.dtls_connected =>
                    {
                        self.neg.handle_transport(now, TransportState::Connected);
                    }
                    _ => {}
                }
            }
            str0m::Event::ChannelOpen(id, label) => {
                let handle = match self.handle_of(id) {
                    Some(h) => h,
                    None => {
                        let h = ChannelHandle(self.next_handle);
                        self.next_handle += 1;
                        self.channels.insert(
                            h,
                            ChannelState {
                                label: label.clone(),
                                id: None,
                                open: false,
                                hidden: label == SIGNAL_LABEL,
                            },
                        );
                        h
                    }
                };
                self.by_id.insert(id, handle);
                if let Some(s) = self.channels.get_mut(&handle) {
                    s.id = Some(id);
                    s.open = true;
                }
                let low = self.config.buffered_amount_low_threshold;
                self.engine.mutate(|rtc| {
                    if let Some(mut c) = rtc.channel(id) {
                        c.set_buffered_amount_low_threshold(low);
                    }
                });
                debug!(?handle, label, "channel open");
                if self.visible(handle) {
                    self.out
                        .push_back(Output::Event(Event::ChannelOpen(handle, label)));
                }
            }
            str0m::Event::ChannelData(d) => match self.handle_of(d.id) {
                Some(h) if self.visible(h) => {
                    self.out
                        .push_back(Output::Event(Event::ChannelData(h, d.binary, d.data)));
                }
                Some(_) => trace!(
                    len = d.data.len(),
                    "in-band signal ignored (not implemented)"
                ),
                None => debug!(channel = ?d.id, "data on an unknown channel dropped"),
            },
            str0m::Event::ChannelClose(id) => {
                if let Some(h) = self.by_id.remove(&id) {
                    let shown = self.visible(h);
                    if let Some(s) = self.channels.get_mut(&h) {
                        s.open = false;
                    }
                    if shown {
                        self.out.push_back(Output::Event(Event::ChannelClosed(h)));
                    }
                }
            }
            str0m::Event::ChannelBufferedAmountLow(id) => {
                if let Some(h) = self.handle_of(id).filter(|h| self.visible(*h)) {
                    self.out
                        .push_back(Output::Event(Event::ChannelBufferedAmountLow(h)));
                }
            }
            str0m::Event::Closed => {
                debug!("peer closed DTLS/SCTP");
                self.out.push_back(Output::Event(Event::TransportClosed));
            }
            other => trace!(event = ?other, "str0m event"),
        }
    }

    // ----- state ----------------------------------------------------------------------

    /// The negotiator (signaling state, role, queue, stats).
    pub fn negotiator(&self) -> &Negotiator {
        &self.neg
    }

    /// The str0m engine (ids, the `Rtc` read-only).
    pub fn engine(&self) -> &StrEngine {
        &self.engine
    }

    /// A channel's label, if the handle is known.
    pub fn channel_label(&self, handle: ChannelHandle) -> Option<&str> {
        self.channels.get(&handle).map(|s| s.label.as_str())
    }

    /// Whether a channel is open for writing.
    pub fn is_open(&self, handle: ChannelHandle) -> bool {
        self.channels.get(&handle).is_some_and(|s| s.open)
    }

    /// Whether the transport (ICE, DTLS) is connected, as last reported.
    pub fn is_connected(&self) -> bool {
        self.neg.is_connected()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The latest `now` seen.
    pub fn last_now(&self) -> Instant {
        self.last_now
    }
}
