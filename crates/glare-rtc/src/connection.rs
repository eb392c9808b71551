//! [`Connection`]: a [`Negotiator`] and a `str0m::Rtc` behind one sans-I/O face.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use glare_negotiate::{
    Change, ChangeId, DialError, Direction, HandleSignalError, MediaKind, Negotiator, RequestError,
    TransportState,
};
use glare_proto::signal::{IceCandidate, Signal};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::format::Codec;
use str0m::media::{MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, CandidateKind, IceConnectionState, Input, Rtc};
use tracing::{debug, trace};

use crate::engine::{RtcOut, StrEngine};

/// The label of the reserved in-band signaling channel (PROTOCOL.md §4).
pub const SIGNAL_LABEL: &str = "glare-signal";
/// The protocol of the reserved in-band signaling channel (PROTOCOL.md §4).
pub const SIGNAL_PROTOCOL: &str = "glare/1";

/// The rate a channel's adaptive write limit is sized for: limit = this × the
/// smallest round-trip time (bytes per second; 25 MB/s = 200 Mbit/s, about what
/// sctp-proto's per-packet scans allow with a 1 MiB buffer), clamped to
/// [`Config::sctp_min_buffered_amount`]..=[`Config::sctp_max_buffered_amount`].
/// The round-trip time comes from ICE consent checks, which queue behind the
/// channel's own data (4–5 ms on a loaded loopback during a bulk transfer).
const SEND_LIMIT_RATE: f64 = 25e6;

/// How long after the first remote description str0m gets a first tick if nothing
/// else ticked it (see `Connection::on_signal`).
const FIRST_TICK_GRACE: Duration = Duration::from_millis(300);

/// How a [`Connection`] is set up. [`Config::with_seed`] gives the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Timeouts and limits of the negotiation.
    pub negotiator: glare_negotiate::Config,
    /// Seed of the negotiator's tie-breakers and delays: take it from a random source
    /// (both sides must draw differently).
    pub seed: u64,
    /// str0m's SCTP send buffer (`set_sctp_max_buffered_amount`), the most a channel
    /// may have written and not yet acknowledged. A channel moves at most about
    /// buffer/RTT (1 MiB: ~200 Mbit/s at 40 ms RTT), but sctp-proto scans all its
    /// unacknowledged chunks several times per packet it handles, so a full buffer
    /// costs CPU per datagram (in memory, 64 MiB: 64 KiB → 695 Mbit/s, 256 KiB → 329,
    /// 1 MiB → 122). Each channel's write limit therefore adapts between
    /// [`sctp_min_buffered_amount`](Self::sctp_min_buffered_amount) and this: about
    /// 25 MB/s (200 Mbit/s) × the smallest round-trip time seen on the selected
    /// candidate pair (1 MiB from ~42 ms). Default 1 MiB.
    pub sctp_max_buffered_amount: usize,
    /// The write limit of a channel before a round-trip time is known, and on fast
    /// paths (see [`sctp_max_buffered_amount`](Self::sctp_max_buffered_amount)).
    /// Default 128 KiB (on loopback, 256 MiB in 16 KiB messages: 64 KiB ~450–530
    /// Mbit/s, 128 KiB ~340–510, 256 KiB ~210–300, 1 MiB ~175–210). Set it equal to
    /// the maximum for a fixed buffer.
    pub sctp_min_buffered_amount: usize,
    /// A channel's buffered amount falling below this raises
    /// [`Event::ChannelBufferedAmountLow`]. Default 64 KiB. At most half of the
    /// channel's current write limit is used: a threshold the buffer cannot reach would
    /// never fire, and a writer waiting for it would wait forever.
    pub buffered_amount_low_threshold: usize,
    /// How often str0m refreshes its peer statistics (RTT, selected candidate pair,
    /// total bytes) for [`Connection::stats`]; `None`: never. Default 1 s (one cheap
    /// event per interval). The round-trip times that grow a channel's write limit
    /// come from these statistics: with `None` the limit stays at
    /// [`sctp_min_buffered_amount`](Self::sctp_min_buffered_amount).
    pub stats_interval: Option<Duration>,
    /// The longest wait between retransmissions of an ICE check, which is also how
    /// often a working pair is checked (str0m's `set_max_stun_rto`). With
    /// [`ice_max_retransmits`](Self::ice_max_retransmits) it sets how soon a dead
    /// path is noticed: with the defaults, 1.5 s and 7, 14-15 s after it died
    /// (`cargo xtask netlab --only 6`; str0m's own, 3 s and 9: about 22 s).
    pub ice_max_rto: Duration,
    /// How many times an ICE check is retransmitted before its pair fails (str0m's
    /// `set_max_stun_retransmits`). Default 7.
    pub ice_max_retransmits: usize,
}

impl Config {
    /// The defaults, with the negotiator's random source seeded by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            negotiator: glare_negotiate::Config::default(),
            seed,
            sctp_max_buffered_amount: 1024 * 1024,
            sctp_min_buffered_amount: 128 * 1024,
            buffered_amount_low_threshold: 64 * 1024,
            stats_interval: Some(Duration::from_secs(1)),
            ice_max_rto: Duration::from_millis(1500),
            ice_max_retransmits: 7,
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

/// A media track's stable handle (one m-line): valid from [`Connection::add_track`]
/// (or the peer's [`Event::TrackOpen`]) for the life of the connection, across glare
/// rollbacks like a [`ChannelHandle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackHandle(u64);

impl TrackHandle {
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
    /// A media track is negotiated: ours (from [`Connection::add_track`], `remote:
    /// false`) or the peer's (`remote: true`, a new handle).
    TrackOpen {
        /// The track.
        track: TrackHandle,
        /// Audio or video.
        kind: MediaKind,
        /// Whether the peer added it.
        remote: bool,
    },
    /// A media frame arrived (depayloaded: one Opus packet, one VP8 frame).
    TrackFrame {
        /// The track (m-line) it arrived on.
        track: TrackHandle,
        /// RTP time in the codec's clock (`clock_rate` Hz), extended to 64 bits.
        rtp_time: u64,
        /// The codec's clock rate (48,000 for Opus, 90,000 for VP8).
        clock_rate: u32,
        /// The frame, shared with str0m (no copy).
        data: Arc<[u8]>,
    },
    /// A media track ended: the peer stopped its track, or our
    /// [`Connection::remove_track`] was negotiated.
    TrackClosed(TrackHandle),
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
    /// Send this signal to the peer through the broker, in order (signals that go
    /// in-band never come out here).
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

/// Why [`Connection::write_frame`] or [`Connection::remove_track`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// No such track.
    #[error("unknown track {0:?}")]
    UnknownTrack(TrackHandle),
    /// Not negotiated yet, stopped, or not sending in its direction.
    #[error("track {0:?} cannot send now")]
    NotSending(TrackHandle),
    /// The negotiated codecs hold none this side can send.
    #[error("no codec negotiated for track {0:?}")]
    NoCodec(TrackHandle),
    /// Only tracks this side added can be removed.
    #[error("track {0:?} was added by the peer")]
    RemoteTrack(TrackHandle),
    /// The negotiator refused the change.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// str0m refused the frame.
    #[error("str0m refused the frame: {0}")]
    Rtc(String),
}

/// Traffic counters of one data channel ([`Connection::channel_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Message payload bytes written (accepted by [`Connection::write`]).
    pub bytes_sent: u64,
    /// Messages written.
    pub messages_sent: u64,
    /// Message payload bytes received.
    pub bytes_received: u64,
    /// Messages received.
    pub messages_received: u64,
}

/// The ICE candidate pair in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CandidatePair {
    /// Local address.
    pub local: SocketAddr,
    /// Remote address.
    pub remote: SocketAddr,
    /// Local candidate type (`None`: not one this side added).
    pub local_kind: Option<CandidateKind>,
    /// Remote candidate type (peer-reflexive when it was never signalled).
    pub remote_kind: CandidateKind,
}

/// Counters and state of a connection ([`Connection::stats`]): plain reads of what
/// is kept anyway, no work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Application data channels, summed (glare-signal excluded).
    pub channels: ChannelStats,
    /// Signals sent over the in-band channel (not as [`Output::Signal`]).
    pub signals_sent_in_band: u64,
    /// Signals received over the in-band channel.
    pub signals_received_in_band: u64,
    /// Media frames written.
    pub frames_sent: u64,
    /// Media frames received.
    pub frames_received: u64,
    /// Remote mDNS (`.local`) candidates skipped (peer-reflexive discovery covers them).
    pub mdns_candidates_skipped: u64,
    /// The `now` at which ICE and DTLS first connected.
    pub connected_at: Option<Instant>,
    /// All bytes sent and received on the wire (str0m's peer stats, refreshed every
    /// [`Config::stats_interval`]).
    pub wire_bytes_sent: u64,
    /// See `wire_bytes_sent`.
    pub wire_bytes_received: u64,
    /// Round-trip time of the latest STUN consent check on the selected pair.
    pub rtt: Option<Duration>,
    /// The selected candidate pair (as of the latest stats refresh).
    pub selected_pair: Option<CandidatePair>,
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
    /// SCTP stream id, once open.
    stream: Option<u16>,
    stats: ChannelStats,
}

/// The last description this side sent through the caller (the broker), while it is
/// not known to have reached the peer. Until it is, later descriptions go the same
/// way: one sent in-band could overtake it (PROTOCOL.md §3 needs each direction in
/// order).
#[derive(Debug, Clone, Copy)]
enum BrokerTail {
    /// Known to have arrived once its answer is applied.
    Offer { answers_applied: u64 },
    /// Known to have arrived once any description of the peer arrives after it (the
    /// peer, in `have-local-offer` until it applies our answer, sends none before);
    /// or, for this side's first answer with none of its offers ever answered, once
    /// the transport connects (the peer needed it for ICE and DTLS); or, for the
    /// answer to an ICE restart, once ICE connects again.
    Answer {
        received_before: u64,
        first_answer: bool,
        /// For the answer to an ICE restart: str0m's ICE connects (count) when it
        /// was sent. ICE connecting again proves the peer applied it (it needed
        /// the new credentials).
        restart_connects: Option<u64>,
    },
}

#[derive(Debug)]
struct TrackState {
    kind: MediaKind,
    /// The `AddMedia` change of a track of ours.
    change: Option<ChangeId>,
    /// `remove_track` was called before the track was negotiated: stop it then.
    remove_when_open: bool,
    /// The m-line, once negotiated (ours) or announced (the peer's).
    mid: Option<Mid>,
    closed: bool,
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
    /// Every open or opening `glare-signal` channel (ours and the peer's).
    signal_channels: Vec<ChannelHandle>,
    tracks: HashMap<TrackHandle, TrackState>,
    track_by_change: HashMap<ChangeId, TrackHandle>,
    /// `StopMedia` changes queued by `remove_track`.
    track_stops: HashMap<ChangeId, TrackHandle>,
    track_by_mid: HashMap<Mid, TrackHandle>,
    next_track: u64,
    local_candidates: Vec<(SocketAddr, CandidateKind)>,
    broker_tail: Option<BrokerTail>,
    /// The failure policy queued an ICE restart and the transport has not come back:
    /// signals go through the broker.
    repairing: bool,
    /// Descriptions received from the peer (either path).
    descriptions_received: u64,
    /// The latest offer came through the caller (the broker) although the in-band
    /// channel was open, and restarts ICE: the peer is repairing a dead path, so the
    /// answer goes back the same way.
    answer_via_caller: bool,
    /// How many times str0m's ICE agent reported connected (or completed).
    ice_connects: u64,
    /// When str0m gets its first tick, if nothing ticked it before (see `on_signal`).
    tick_due: Option<Instant>,
    answers_sent: u64,
    stats: Stats,
    dtls_connected: bool,
    rtc_closed: bool,
    last_now: Instant,
    /// The most a channel may have buffered before `write` refuses (adapts to the
    /// round-trip time, see [`Config::sctp_max_buffered_amount`]).
    send_limit: usize,
    /// The smallest round-trip time seen on the selected pair, and that pair.
    min_rtt: Option<(SocketAddr, SocketAddr, Duration)>,
}

impl Connection {
    /// A connection whose str0m instance starts at `now`.
    pub fn new(now: Instant, config: Config) -> Self {
        let mut builder = Rtc::builder()
            .set_sctp_max_buffered_amount(config.sctp_max_buffered_amount)
            .set_stats_interval(config.stats_interval);
        builder.set_max_stun_rto(config.ice_max_rto);
        builder.set_max_stun_retransmits(config.ice_max_retransmits);
        let rtc = builder.build(now);
        Self::from_rtc(now, rtc, config)
    }

    /// A connection on an `Rtc` built by the caller (codecs, ICE lite, certificate …).
    /// Its SCTP buffer (str0m's own ceiling, over all channels) and stats interval are
    /// the caller's; `config.sctp_min_buffered_amount` and
    /// `config.sctp_max_buffered_amount` still bound each channel's adaptive write
    /// limit, which grows only if the caller's `Rtc` produces peer statistics.
    pub fn from_rtc(now: Instant, rtc: Rtc, config: Config) -> Self {
        let send_limit = config
            .sctp_min_buffered_amount
            .min(config.sctp_max_buffered_amount);
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
            signal_channels: Vec::new(),
            tracks: HashMap::new(),
            track_by_change: HashMap::new(),
            track_stops: HashMap::new(),
            track_by_mid: HashMap::new(),
            next_track: 0,
            local_candidates: Vec::new(),
            broker_tail: None,
            repairing: false,
            descriptions_received: 0,
            answer_via_caller: false,
            ice_connects: 0,
            tick_due: None,
            answers_sent: 0,
            stats: Stats::default(),
            dtls_connected: false,
            rtc_closed: false,
            last_now: now,
            send_limit,
            min_rtt: None,
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
                Ok(h) => {
                    self.signal_channel = Some(h);
                    self.signal_channels.push(h);
                }
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
                stream: None,
                stats: ChannelStats::default(),
            },
        );
        Ok(handle)
    }

    /// Queues any other change with the negotiator: an ICE restart, a direction
    /// change. Tracks are better added with [`Connection::add_track`] (a handle,
    /// frames); an `AddMedia` requested here is negotiated but has no handle.
    pub fn request(&mut self, change: Change) -> Result<ChangeId, RequestError> {
        self.neg.request(change)
    }

    /// Adds a media track (an m-line of `kind` with `direction`), negotiated through
    /// the change queue (glare-proof). [`Event::TrackOpen`] tells when it is
    /// negotiated; then [`Connection::write_frame`] sends on it (Opus for audio, VP8
    /// for video, when negotiated; else the first codec of its kind).
    pub fn add_track(
        &mut self,
        kind: MediaKind,
        direction: Direction,
    ) -> Result<TrackHandle, RequestError> {
        let change = self.neg.request(Change::AddMedia { kind, direction })?;
        let track = TrackHandle(self.next_track);
        self.next_track += 1;
        self.track_by_change.insert(change, track);
        self.tracks.insert(
            track,
            TrackState {
                kind,
                change: Some(change),
                remove_when_open: false,
                mid: None,
                closed: false,
            },
        );
        debug!(?track, %change, ?kind, "track queued for negotiation");
        Ok(track)
    }

    /// Stops a track this side added (its m-line is rejected in the next offer); the
    /// peer sees [`Event::TrackClosed`], and so does this side once negotiated.
    pub fn remove_track(&mut self, track: TrackHandle) -> Result<(), MediaError> {
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or(MediaError::UnknownTrack(track))?;
        let media = t.change.ok_or(MediaError::RemoteTrack(track))?;
        if t.mid.is_none() {
            // str0m cannot stop an m-line in the offer that adds it: stop it once
            // it is negotiated.
            if t.remove_when_open {
                return Err(RequestError::MediaStopped(media).into());
            }
            t.remove_when_open = true;
            return Ok(());
        }
        self.stop_track(track, media)
    }

    fn stop_track(&mut self, track: TrackHandle, media: ChangeId) -> Result<(), MediaError> {
        let change = self.neg.request(Change::StopMedia { media })?;
        self.track_stops.insert(change, track);
        Ok(())
    }

    /// Writes one media frame on a track: `rtp_time` in the codec's clock (48 kHz for
    /// Opus, 90 kHz for VP8), `wallclock` when it was captured. str0m packetizes,
    /// paces and encrypts it; the datagrams come out of [`Connection::poll_output`].
    pub fn write_frame(
        &mut self,
        track: TrackHandle,
        wallclock: Instant,
        rtp_time: u64,
        data: &[u8],
    ) -> Result<(), MediaError> {
        let t = self
            .tracks
            .get(&track)
            .ok_or(MediaError::UnknownTrack(track))?;
        let (Some(mid), false) = (t.mid, t.closed) else {
            return Err(MediaError::NotSending(track));
        };
        let want = match t.kind {
            MediaKind::Audio => Codec::Opus,
            MediaKind::Video => Codec::Vp8,
        };
        self.engine.mutate(|rtc| {
            let writer = rtc.writer(mid).ok_or(MediaError::NotSending(track))?;
            let params = writer
                .payload_params()
                .find(|p| p.spec().codec == want)
                .or_else(|| writer.payload_params().next())
                .ok_or(MediaError::NoCodec(track))?;
            let (pt, clock) = (params.pt(), params.spec().clock_rate);
            writer
                .write(pt, wallclock, MediaTime::new(rtp_time, clock), data)
                .map_err(|e| MediaError::Rtc(e.to_string()))
        })?;
        self.stats.frames_sent += 1;
        Ok(())
    }

    /// A track's kind, if the handle is known.
    pub fn track_kind(&self, track: TrackHandle) -> Option<MediaKind> {
        self.tracks.get(&track).map(|t| t.kind)
    }

    /// Writes one message. `Ok(false)` is back-pressure: nothing was written; wait
    /// for [`Event::ChannelBufferedAmountLow`] and write it again.
    pub fn write(
        &mut self,
        handle: ChannelHandle,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, WriteError> {
        let (limit, low) = (self.send_limit, self.low_threshold());
        let state = self
            .channels
            .get_mut(&handle)
            .filter(|s| !s.hidden)
            .ok_or(WriteError::UnknownChannel(handle))?;
        let id = match state.id {
            Some(id) if state.open => id,
            _ => return Err(WriteError::NotOpen(handle)),
        };
        let written = self.engine.mutate(|rtc| match rtc.channel(id) {
            Some(mut ch) => {
                // The adaptive limit (str0m's own is the maximum). Refused only above
                // the low-water mark, so that every refusal is followed by the
                // buffered amount crossing it (the event the writer waits for); a
                // message larger than the limit goes once the channel has drained.
                let queued = ch.buffered_amount();
                if queued > low && queued + data.len() > limit {
                    return Ok(false);
                }
                ch.write(binary, data)
                    .map_err(|e| WriteError::Rtc(e.to_string()))
            }
            None => Err(WriteError::NotOpen(handle)),
        })?;
        if written {
            let n = data.len() as u64;
            state.stats.bytes_sent += n;
            state.stats.messages_sent += 1;
            if !state.hidden {
                self.stats.channels.bytes_sent += n;
                self.stats.channels.messages_sent += 1;
            }
        }
        Ok(written)
    }

    /// Bytes queued on a channel and not yet acknowledged (0 if it is not open).
    pub fn buffered_amount(&mut self, handle: ChannelHandle) -> usize {
        let Some(id) = self.channels.get(&handle).and_then(|s| s.id) else {
            return 0;
        };
        self.engine
            .mutate(|rtc| rtc.channel(id).map_or(0, |mut c| c.buffered_amount()))
    }

    /// The buffered-amount-low threshold applied to channels: the configured one,
    /// at most half the current write limit (so the buffer can rise above it and fall
    /// again).
    fn low_threshold(&self) -> usize {
        self.config
            .buffered_amount_low_threshold
            .min(self.send_limit / 2)
    }

    /// A new round-trip time on the selected pair `(local, remote)`: the write limit
    /// follows the smallest one seen on that pair (queueing behind our own data
    /// inflates the current one), and open channels get the matching low threshold.
    fn on_rtt(&mut self, local: SocketAddr, remote: SocketAddr, rtt: Duration) {
        let min = match self.min_rtt {
            Some((l, r, m)) if l == local && r == remote => m.min(rtt),
            _ => rtt,
        };
        self.min_rtt = Some((local, remote, min));
        let (lo, hi) = (
            self.config
                .sctp_min_buffered_amount
                .min(self.config.sctp_max_buffered_amount),
            self.config.sctp_max_buffered_amount,
        );
        let limit = ((min.as_secs_f64() * SEND_LIMIT_RATE) as usize).clamp(lo, hi);
        if limit == self.send_limit {
            return;
        }
        debug!(?min, limit, "channel write limit");
        self.send_limit = limit;
        let low = self.low_threshold();
        let ids: Vec<ChannelId> = self
            .channels
            .values()
            .filter(|c| c.open)
            .filter_map(|c| c.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let already_low: Vec<ChannelId> = self.engine.mutate(|rtc| {
            ids.into_iter()
                .filter(|&id| {
                    rtc.channel(id).is_some_and(|mut c| {
                        c.set_buffered_amount_low_threshold(low);
                        c.buffered_amount() <= low
                    })
                })
                .collect()
        });
        // A writer refused above the old mark may now be below the new one, where no
        // crossing will come: tell it now.
        for id in already_low {
            if let Some(h) = self.handle_of(id).filter(|h| self.visible(*h)) {
                self.out
                    .push_back(Output::Event(Event::ChannelBufferedAmountLow(h)));
            }
        }
    }

    /// Closes a data channel ([`Event::ChannelClosed`] follows).
    pub fn close_channel(&mut self, handle: ChannelHandle) {
        if let Some(id) = self
            .channels
            .get(&handle)
            .filter(|s| !s.hidden)
            .and_then(|s| s.id)
        {
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
        let (addr, kind) = (c.addr(), c.kind());
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
        if self.local_candidates.len() < 64 {
            self.local_candidates.push((addr, kind));
        }
        if self.neg.local_ufrag().is_some() {
            // BUNDLE: one transport, named by the first m-line (as browsers do).
            let candidate = IceCandidate {
                candidate: line,
                sdp_mid: self.bundle_mid(),
                sdp_m_line_index: Some(0),
                username_fragment: String::new(),
            };
            if let Err(e) = self.neg.queue_local_candidate(candidate) {
                debug!(error = %e, "local candidate not trickled");
            }
        }
        Ok(())
    }

    /// Withdraws a local candidate added earlier, e.g. a server-reflexive address or
    /// a relay that no longer exists after the NAT re-mapped the socket: str0m stops
    /// using its pairs, and later descriptions leave it out. The peer is not told
    /// (PROTOCOL.md has no signal for it); an ICE restart replaces its view. `false`
    /// when no such local candidate is in use. Remote candidates are never touched.
    pub fn remove_candidate(&mut self, c: &Candidate) -> bool {
        let Some(i) = self
            .local_candidates
            .iter()
            .position(|(a, k)| *a == c.addr() && *k == c.kind())
        else {
            return false;
        };
        let removed = self
            .engine
            .mutate(|rtc| rtc.direct_api().invalidate_candidate(c));
        if removed {
            self.local_candidates.remove(i);
            debug!(addr = %c.addr(), kind = ?c.kind(), "local candidate withdrawn");
        }
        removed
    }

    /// The local candidates in use (added and not withdrawn), oldest first.
    pub fn local_candidates(&self) -> &[(SocketAddr, CandidateKind)] {
        &self.local_candidates
    }

    /// Trickles end-of-candidates for the current local ICE generation.
    pub fn end_of_candidates(&mut self) {
        let mut end = IceCandidate::end_of_candidates("");
        end.sdp_mid = self.bundle_mid();
        end.sdp_m_line_index = end.sdp_mid.as_ref().map(|_| 0);
        if self.neg.local_ufrag().is_some()
            && let Err(e) = self.neg.queue_local_candidate(end)
        {
            debug!(error = %e, "end-of-candidates not sent");
        }
    }

    /// The `a=mid` of the first m-line of the latest local description.
    fn bundle_mid(&self) -> Option<String> {
        let sdp = self
            .neg
            .pending_local_description()
            .or(self.neg.current_local_description())?;
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| m.trim().to_owned())
    }

    /// Handles a signal from the peer (PROTOCOL.md §2) that came through the broker.
    /// Signals are accepted from both paths: this one and the in-band channel.
    /// Errors are peer faults (the link fails where the negotiator says so) except
    /// `LocalEngine`.
    pub fn handle_signal(&mut self, now: Instant, signal: Signal) -> Result<(), HandleSignalError> {
        self.last_now = now;
        if is_offer(&signal) {
            self.answer_via_caller = self.in_band().is_some() && self.is_restart_offer(&signal);
        }
        self.on_signal(now, signal)
    }

    /// A signal from the peer, from either path.
    fn on_signal(&mut self, now: Instant, signal: Signal) -> Result<(), HandleSignalError> {
        let description = matches!(signal, Signal::Description { .. });
        let r = self.neg.handle_signal(now, signal, &mut self.engine);
        if description {
            // str0m's ICE agent has no clock until its first timeout, and an answerer
            // has no timer of its own: without a tick it starts no connectivity checks
            // until a datagram arrives (behind two NATs, nothing would ever connect).
            // Asked of the caller through `poll_output` (a timeout), so str0m sees the
            // caller's clock, in order; after a short grace, because ticking at once
            // makes both sides check at the same instant, which broke DTLS for 100
            // links on one socket (tests/transport.rs in the glare crate). On a path
            // where the offerer's checks get through, str0m is ticking by then anyway.
            if self.descriptions_received == 0 {
                self.tick_due = Some(now + FIRST_TICK_GRACE);
            }
            self.descriptions_received += 1;
            self.scan_stopped_tracks();
        }
        r
    }

    /// Reports tracks whose m-line a description just stopped. str0m's
    /// `MediaChanged` is not raised in every case (a stop applied while a local offer
    /// was rolled back), so the m-lines are checked after every description.
    fn scan_stopped_tracks(&mut self) {
        for (track, t) in &mut self.tracks {
            // Our own removals are reported when negotiated (`track_stops`).
            if t.closed || self.track_stops.values().any(|s| s == track) {
                continue;
            }
            let Some(mid) = t.mid else { continue };
            if self.engine.rtc().media(mid).is_some_and(|m| m.disabled()) {
                debug!(?track, "track stopped");
                t.closed = true;
                self.out
                    .push_back(Output::Event(Event::TrackClosed(*track)));
            }
        }
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
        self.tick_due = None;
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
        let t = [
            self.engine.timeout(),
            self.neg.poll_timeout(),
            self.tick_due,
        ]
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
                self.send_signal(s);
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

    /// The `glare-signal` channel signals go out on: the open one with the lowest
    /// SCTP stream id (PROTOCOL.md §4).
    fn in_band(&self) -> Option<ChannelId> {
        self.signal_channels
            .iter()
            .filter_map(|h| self.channels.get(h))
            .filter(|s| s.open)
            .filter_map(|s| Some((s.stream?, s.id?)))
            .min_by_key(|(stream, _)| *stream)
            .map(|(_, id)| id)
    }

    /// Sends a signal in-band once a `glare-signal` channel is open, else through the
    /// caller ([`Output::Signal`]). A `bye` goes both ways (str0m closes right after).
    fn send_signal(&mut self, s: Signal) {
        let bye = matches!(s, Signal::Bye(_));
        let kind = match &s {
            Signal::Description { description, .. } => Some(description.kind),
            _ => None,
        };
        if kind == Some(glare_proto::signal::SdpKind::Answer) {
            self.answers_sent += 1;
        }
        // While the failure policy repairs a lost transport, the in-band channel
        // cannot carry the ICE restart that would bring it back: use the broker then.
        // An ICE restart offer through the broker while the in-band channel is open
        // means the peer has lost the path (though this side may not have noticed
        // yet): the answer goes back that way. Not for other offers: an answer
        // through the broker could overtake what this side sent in-band before it
        // (e.g. its own offer, rolled back in a glare race).
        let answer_via_caller = kind == Some(glare_proto::signal::SdpKind::Answer)
            && std::mem::take(&mut self.answer_via_caller);
        let in_band = self
            .in_band()
            .filter(|_| !self.is_repairing() && !answer_via_caller)
            .filter(|_| kind.is_none() || self.tail_arrived());
        if let Some(id) = in_band {
            let text = s.encode();
            let sent = self
                .engine
                .mutate(|rtc| rtc.channel(id).map(|mut c| c.write(false, text.as_bytes())));
            match sent {
                Some(Ok(true)) => {
                    trace!(len = text.len(), "signal sent in-band");
                    self.stats.signals_sent_in_band += 1;
                    if !bye {
                        return;
                    }
                }
                other => debug!(
                    ?other,
                    "in-band signal not written; sending it through the caller"
                ),
            }
        }
        if let Some(kind) = kind {
            self.broker_tail = Some(match kind {
                glare_proto::signal::SdpKind::Offer => BrokerTail::Offer {
                    answers_applied: self.neg.stats().answers_applied,
                },
                glare_proto::signal::SdpKind::Answer => BrokerTail::Answer {
                    received_before: self.descriptions_received,
                    first_answer: self.answers_sent == 1,
                    restart_connects: answer_via_caller.then_some(self.ice_connects),
                },
            });
        }
        self.out.push_back(Output::Signal(s));
    }

    /// Whether the last description sent through the broker is known to have arrived
    /// (so one sent in-band cannot overtake it).
    fn tail_arrived(&mut self) -> bool {
        let arrived = self.tail_known_arrived();
        if arrived {
            self.broker_tail = None;
        }
        arrived
    }

    /// Whether `s` is an offer with other ICE credentials than the current remote
    /// ones (an ICE restart).
    fn is_restart_offer(&self, s: &Signal) -> bool {
        let Signal::Description { description, .. } = s else {
            return false;
        };
        match (
            glare_proto::sdp::ice_ufrag(&description.sdp),
            self.neg.remote_ufrag(),
        ) {
            (Some(new), Some(current)) => new != current,
            _ => false,
        }
    }

    /// An ICE restart is queued while the transport is disconnected (the failure
    /// policy's), or one was and the transport has not come back.
    fn is_repairing(&self) -> bool {
        self.repairing
            || (!self.neg.is_connected()
                && self.neg.stats().answers_applied + self.neg.stats().answers_sent > 0
                && self
                    .neg
                    .queued()
                    .iter()
                    .any(|q| q.change == Change::IceRestart))
    }

    fn tail_known_arrived(&self) -> bool {
        match self.broker_tail {
            None => true,
            Some(BrokerTail::Offer { answers_applied }) => {
                self.neg.stats().answers_applied > answers_applied
            }
            Some(BrokerTail::Answer {
                received_before,
                first_answer,
                restart_connects,
            }) => {
                self.descriptions_received > received_before
                    || (first_answer
                        && self.stats.connected_at.is_some()
                        && self.neg.stats().answers_applied == 0)
                    || restart_connects.is_some_and(|c| self.ice_connects > c)
            }
        }
    }

    fn on_in_band(&mut self, now: Instant, binary: bool, data: &[u8]) {
        if binary {
            debug!(len = data.len(), "binary message on glare-signal dropped");
            return;
        }
        match Signal::decode(data) {
            Ok(s) => {
                self.stats.signals_received_in_band += 1;
                if is_offer(&s) {
                    self.answer_via_caller = false;
                }
                if let Err(e) = self.on_signal(now, s) {
                    debug!(error = %e, "in-band signal refused");
                }
            }
            Err(e) => debug!(error = %e, "in-band message is not a signal; dropped"),
        }
    }

    fn on_negotiation(&mut self, e: glare_negotiate::Event) {
        match e {
            glare_negotiate::Event::IceRestartQueued { .. } => self.repairing = true,
            glare_negotiate::Event::Connected => self.repairing = false,
            _ => {}
        }
        if let glare_negotiate::Event::ChangesNegotiated { ids } = &e {
            for id in ids {
                if let Some(&track) = self.track_by_change.get(id) {
                    let mid = self.engine.mid(*id);
                    if let (Some(t), Some(mid)) = (self.tracks.get_mut(&track), mid) {
                        t.mid = Some(mid);
                        self.track_by_mid.insert(mid, track);
                        self.out.push_back(Output::Event(Event::TrackOpen {
                            track,
                            kind: t.kind,
                            remote: false,
                        }));
                        if t.remove_when_open
                            && let Err(e) = self.stop_track(track, *id)
                        {
                            debug!(error = %e, ?track, "deferred track removal failed");
                        }
                    }
                }
                if let Some(track) = self.track_stops.remove(id)
                    && let Some(t) = self.tracks.get_mut(&track)
                    && !t.closed
                {
                    t.closed = true;
                    self.out.push_back(Output::Event(Event::TrackClosed(track)));
                }
            }
        }
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
                self.stats.connected_at.get_or_insert(now);
                self.neg.handle_transport(now, TransportState::Connected);
            }
            str0m::Event::IceConnectionStateChange(s) => {
                debug!(state = ?s, "ICE state");
                if matches!(
                    s,
                    IceConnectionState::Connected | IceConnectionState::Completed
                ) {
                    self.ice_connects += 1;
                }
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
                        let signal = label == SIGNAL_LABEL;
                        if signal {
                            self.signal_channels.push(h);
                        }
                        self.channels.insert(
                            h,
                            ChannelState {
                                label: label.clone(),
                                id: None,
                                open: false,
                                hidden: signal,
                                stream: None,
                                stats: ChannelStats::default(),
                            },
                        );
                        h
                    }
                };
                self.by_id.insert(id, handle);
                let low = self.low_threshold();
                let stream = self.engine.mutate(|rtc| {
                    if let Some(mut c) = rtc.channel(id) {
                        c.set_buffered_amount_low_threshold(low);
                    }
                    rtc.direct_api().sctp_stream_id_by_channel_id(id)
                });
                if let Some(s) = self.channels.get_mut(&handle) {
                    s.id = Some(id);
                    s.open = true;
                    s.stream = stream;
                }
                debug!(?handle, label, "channel open");
                if self.visible(handle) {
                    self.out
                        .push_back(Output::Event(Event::ChannelOpen(handle, label)));
                }
            }
            str0m::Event::ChannelData(d) => {
                let Some(h) = self.handle_of(d.id) else {
                    debug!(channel = ?d.id, "data on an unknown channel dropped");
                    return;
                };
                let Some(s) = self.channels.get_mut(&h) else {
                    return;
                };
                let n = d.data.len() as u64;
                s.stats.bytes_received += n;
                s.stats.messages_received += 1;
                if s.hidden {
                    self.on_in_band(now, d.binary, &d.data);
                } else {
                    self.stats.channels.bytes_received += n;
                    self.stats.channels.messages_received += 1;
                    self.out
                        .push_back(Output::Event(Event::ChannelData(h, d.binary, d.data)));
                }
            }
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
            str0m::Event::MediaAdded(m) => {
                if self.track_by_mid.contains_key(&m.mid) {
                    return;
                }
                let track = TrackHandle(self.next_track);
                self.next_track += 1;
                let kind = match m.kind {
                    str0m::media::MediaKind::Audio => MediaKind::Audio,
                    str0m::media::MediaKind::Video => MediaKind::Video,
                };
                debug!(?track, mid = %m.mid, ?kind, "remote track added");
                self.tracks.insert(
                    track,
                    TrackState {
                        kind,
                        change: None,
                        remove_when_open: false,
                        mid: Some(m.mid),
                        closed: false,
                    },
                );
                self.track_by_mid.insert(m.mid, track);
                self.out.push_back(Output::Event(Event::TrackOpen {
                    track,
                    kind,
                    remote: true,
                }));
                // str0m announces remote m-lines once connected: one may have been
                // stopped by then.
                self.scan_stopped_tracks();
            }
            str0m::Event::MediaChanged(m) => {
                trace!(mid = %m.mid, direction = ?m.direction, "media changed");
                self.scan_stopped_tracks();
            }
            str0m::Event::MediaData(m) => {
                let Some(&track) = self.track_by_mid.get(&m.mid) else {
                    trace!(mid = %m.mid, "media on an unknown m-line dropped");
                    return;
                };
                self.stats.frames_received += 1;
                self.out.push_back(Output::Event(Event::TrackFrame {
                    track,
                    rtp_time: m.time.numer(),
                    clock_rate: m.time.frequency().get(),
                    data: m.data,
                }));
            }
            str0m::Event::PeerStats(p) => {
                self.stats.wire_bytes_sent = p.peer_bytes_tx;
                self.stats.wire_bytes_received = p.peer_bytes_rx;
                if let Some(pair) = p.selected_candidate_pair {
                    self.stats.rtt = pair.current_round_trip_time.or(self.stats.rtt);
                    if let Some(rtt) = pair.current_round_trip_time {
                        self.on_rtt(pair.local.addr, pair.remote.addr, rtt);
                    }
                    let local_kind = self
                        .local_candidates
                        .iter()
                        .find(|(a, _)| *a == pair.local.addr)
                        .map(|(_, k)| *k);
                    self.stats.selected_pair = Some(CandidatePair {
                        local: pair.local.addr,
                        remote: pair.remote.addr,
                        local_kind,
                        remote_kind: self.engine.remote_kind(pair.remote.addr),
                    });
                }
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

    /// Counters and transport state; cheap (a copy of what is kept anyway).
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.mdns_candidates_skipped = self.engine.mdns_skipped();
        s
    }

    /// The SCTP stream id of the `glare-signal` channel signals go out on, once one is
    /// open (from then on no [`Output::Signal`] is produced but for `bye`).
    pub fn signal_stream_id(&self) -> Option<u16> {
        let id = self.in_band()?;
        self.by_id
            .get(&id)
            .and_then(|h| self.channels.get(h))
            .and_then(|s| s.stream)
    }

    /// Whether this side may still send signals through the caller (the broker).
    /// `false` once a `glare-signal` channel is open and every description sent
    /// through the caller is known to have reached the peer: from then on every
    /// signal but `bye` goes in-band, and the broker channel may be closed
    /// (PROTOCOL.md §4 step 6). A side whose last description through the broker was
    /// an answer knows it arrived only when the peer's next description comes (or,
    /// for the first answer, when the transport connects), so it can stay `true`
    /// after renegotiations made before the in-band channel opened. Once the failure
    /// policy queues an ICE restart for a lost transport, signals go through the
    /// broker again until it reconnects (the restart cannot travel over the link it
    /// repairs).
    pub fn needs_broker(&self) -> bool {
        self.in_band().is_none() || self.is_repairing() || !self.tail_known_arrived()
    }

    /// A data channel's counters (glare-signal's too, by its handle).
    pub fn channel_stats(&self, handle: ChannelHandle) -> Option<ChannelStats> {
        self.channels.get(&handle).map(|s| s.stats)
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

fn is_offer(s: &Signal) -> bool {
    matches!(s, Signal::Description { description, .. }
        if description.kind == glare_proto::signal::SdpKind::Offer)
}
