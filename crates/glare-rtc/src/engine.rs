//! [`SdpEngine`] for `str0m::Rtc`: the negotiator's queued changes applied to str0m.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Instant;

use glare_negotiate::{Change, ChangeId, Direction, MediaKind, QueuedChange, SdpEngine};
use glare_proto::signal::IceCandidate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::media::Mid;
use str0m::net::Transmit;
use str0m::{Candidate, CandidateKind, Output, Rtc};
use tracing::{debug, trace, warn};

/// Why [`StrEngine`] refused a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Peer fault: the remote SDP could not be parsed.
    #[error("remote SDP does not parse: {0}")]
    ParseSdp(String),
    /// Peer fault: str0m refused the remote description.
    #[error("str0m refused the remote description: {0}")]
    Rejected(String),
    /// Peer fault: the remote candidate could not be parsed.
    #[error("remote candidate does not parse: {0}")]
    ParseCandidate(String),
    /// Caller misuse (the negotiator breaks its promise): an answer with no offer pending.
    #[error("no local offer is pending")]
    NoPendingOffer,
    /// Local fault: str0m made no offer even for an ICE restart.
    #[error("str0m created no offer")]
    NoOffer,
}

/// What [`StrEngine`] drained out of str0m and holds for its owner.
// allow: like str0m's own `Output`; each value is moved once, never stored long, and
// boxing would allocate per event on the data path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum RtcOut {
    Transmit(Transmit),
    Event(str0m::Event),
}

/// One change of ours that str0m holds an object for (a channel or a media line).
#[derive(Debug, Clone, Copy)]
struct Created<T> {
    id: T,
    /// Negotiated (or applied directly): never created again.
    confirmed: bool,
}

/// [`SdpEngine`] implemented on a `str0m::Rtc` (str0m 0.25's SDP API).
///
/// | call | what it does on str0m |
/// |---|---|
/// | `create_offer` | applies the changes through `sdp_api()` (`add_channel_with_config`, `add_media`, `set_direction`, `stop_media`, `ice_restart(true)`), then `apply()`; keeps the `SdpPendingOffer` |
/// | `accept_offer` | `SdpOffer::from_sdp_string`, `sdp_api().accept_offer` |
/// | `accept_answer` | `SdpAnswer::from_sdp_string`, `sdp_api().accept_answer` with the pending offer |
/// | `rollback` | drops the pending offer |
/// | `add_remote_candidate` | `Candidate::from_sdp_string`, `add_remote_candidate`; end-of-candidates and mDNS `.local` names are skipped |
///
/// **Stable ids.** A [`ChangeId`] maps to the str0m [`ChannelId`] or [`Mid`] created for
/// it. An offer that is rolled back leaves str0m with an unconfirmed channel id that
/// never opens (str0m has no rollback); the change is created afresh in the next offer
/// and the map follows, so the application's handle (the `ChangeId`) never changes.
///
/// **Changes str0m needs no SDP for.** A data channel added once the session has an
/// `m=application` line is opened by str0m directly (DCEP). When every queued change is
/// such a channel (the polite side after glare on the first exchange re-offering its
/// rolled-back channels), `create_offer` gives `Ok(None)` and the negotiator marks the
/// changes negotiated with no offer. A direction change or a stop already applied to
/// str0m's session by an offer that was rolled back is not seen as new by str0m; then
/// the engine offers an ICE restart that keeps the local candidates (the offer carries
/// the whole session, the direction included) — counted by
/// [`StrEngine::filler_offers`].
///
/// **Drain rule.** Every call that mutates the `Rtc` is followed by a full drain of
/// `poll_output` into an internal queue, so str0m's single-mutation rule holds even
/// when the negotiator makes several calls in one step.
pub struct StrEngine {
    rtc: Rtc,
    pending: Option<(SdpPendingOffer, Vec<ChangeId>)>,
    channels: HashMap<ChangeId, Created<ChannelId>>,
    media: HashMap<ChangeId, Created<Mid>>,
    /// Options for `OpenChannel` changes, registered before the change is requested.
    channel_configs: HashMap<ChangeId, ChannelConfig>,
    has_app: bool,
    out: VecDeque<RtcOut>,
    timeout: Option<Instant>,
    error: Option<String>,
    filler_offers: u64,
    applied_direct: u64,
    mdns_skipped: u64,
    /// A remote description was applied once (an ICE restart means something).
    negotiated_once: bool,
    /// Remote candidates added (address, type), for the selected pair's types.
    remote_candidates: Vec<(std::net::SocketAddr, CandidateKind)>,
}

impl fmt::Debug for StrEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrEngine")
            .field("pending", &self.pending.as_ref().map(|(_, ids)| ids))
            .field("channels", &self.channels)
            .field("media", &self.media)
            .field("has_app", &self.has_app)
            .field("queued_outputs", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl StrEngine {
    /// Wraps an `Rtc`. Its outputs are drained by the engine from now on: read them
    /// through the owner ([`crate::Connection`]), never with `rtc.poll_output()`.
    pub fn new(rtc: Rtc) -> Self {
        let mut engine = Self {
            rtc,
            pending: None,
            channels: HashMap::new(),
            media: HashMap::new(),
            channel_configs: HashMap::new(),
            has_app: false,
            out: VecDeque::new(),
            timeout: None,
            error: None,
            filler_offers: 0,
            applied_direct: 0,
            mdns_skipped: 0,
            negotiated_once: false,
            remote_candidates: Vec::new(),
        };
        engine.drain();
        engine
    }

    /// Registers the options of the channel a later [`Change::OpenChannel`] with id
    /// `id` opens (else: reliable, ordered, the change's label, no protocol).
    pub fn set_channel_config(&mut self, id: ChangeId, config: ChannelConfig) {
        self.channel_configs.insert(id, config);
    }

    /// The str0m channel currently created for the change `id`, if any.
    pub fn channel_id(&self, id: ChangeId) -> Option<ChannelId> {
        self.channels.get(&id).map(|c| c.id)
    }

    /// The change whose channel str0m knows as `channel`, if any.
    pub fn change_of_channel(&self, channel: ChannelId) -> Option<ChangeId> {
        self.channels
            .iter()
            .find(|(_, c)| c.id == channel)
            .map(|(id, _)| *id)
    }

    /// The str0m media line created for the [`Change::AddMedia`] `id`, if any.
    pub fn mid(&self, id: ChangeId) -> Option<Mid> {
        self.media.get(&id).map(|m| m.id)
    }

    /// Whether the session has an `m=application` line (data channels need no SDP).
    pub fn has_data_line(&self) -> bool {
        self.has_app
    }

    /// Offers that carried only an ICE restart because str0m saw nothing new in a
    /// direction change or stop (see the type docs).
    pub fn filler_offers(&self) -> u64 {
        self.filler_offers
    }

    /// `create_offer` calls that applied every change without SDP (data channels on
    /// an existing SCTP association) and so gave no offer.
    pub fn applied_without_offer(&self) -> u64 {
        self.applied_direct
    }

    /// Remote mDNS (`.local`) candidates skipped.
    pub fn mdns_skipped(&self) -> u64 {
        self.mdns_skipped
    }

    /// The type of the remote candidate at `addr` (peer-reflexive if never signalled).
    pub fn remote_kind(&self, addr: std::net::SocketAddr) -> CandidateKind {
        self.remote_candidates
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(CandidateKind::PeerReflexive, |(_, k)| *k)
    }

    /// The wrapped `Rtc`, read-only.
    pub fn rtc(&self) -> &Rtc {
        &self.rtc
    }

    /// Runs `f` on the `Rtc`, then drains its outputs (str0m's rule).
    pub(crate) fn mutate<T>(&mut self, f: impl FnOnce(&mut Rtc) -> T) -> T {
        let t = f(&mut self.rtc);
        self.drain();
        t
    }

    /// The next output drained out of str0m.
    pub(crate) fn pop_output(&mut self) -> Option<RtcOut> {
        self.out.pop_front()
    }

    /// str0m's next timeout (after the last drain).
    pub(crate) fn timeout(&self) -> Option<Instant> {
        self.timeout
    }

    /// A fatal str0m error seen while draining, once.
    pub(crate) fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = Some(t);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    trace!(len = t.contents.len(), dst = %t.destination, "transmit");
                    self.out.push_back(RtcOut::Transmit(t));
                }
                Ok(Output::Event(e)) => self.out.push_back(RtcOut::Event(e)),
                Err(e) => {
                    warn!(error = %e, "str0m failed; disconnecting");
                    self.error = Some(e.to_string());
                    self.rtc.disconnect();
                    self.timeout = None;
                    return;
                }
            }
        }
    }

    fn offer_inner(&mut self, changes: &[QueuedChange]) -> Result<Option<String>, EngineError> {
        let mut carried = Vec::new();
        let mut api = self.rtc.sdp_api();
        for q in changes {
            match &q.change {
                Change::OpenChannel { label } => {
                    if self.channels.get(&q.id).is_some_and(|c| c.confirmed) {
                        continue;
                    }
                    let config =
                        self.channel_configs
                            .get(&q.id)
                            .cloned()
                            .unwrap_or_else(|| ChannelConfig {
                                label: label.clone(),
                                ..ChannelConfig::default()
                            });
                    let cid = api.add_channel_with_config(config);
                    debug!(change = %q.id, channel = ?cid, "channel added to offer");
                    self.channels.insert(
                        q.id,
                        Created {
                            id: cid,
                            confirmed: false,
                        },
                    );
                    carried.push(q.id);
                }
                Change::AddMedia { kind, direction } => {
                    if self.media.get(&q.id).is_some_and(|m| m.confirmed) {
                        continue;
                    }
                    let mid = api.add_media(kind_of(*kind), dir_of(*direction), None, None, None);
                    debug!(change = %q.id, %mid, "media added to offer");
                    self.media.insert(
                        q.id,
                        Created {
                            id: mid,
                            confirmed: false,
                        },
                    );
                    carried.push(q.id);
                }
                Change::SetDirection { media, direction } => {
                    // A direction set by a rolled-back offer stays set in str0m: then
                    // this does nothing and the next offer carries it anyway.
                    if let Some(m) = self.media.get(media) {
                        api.set_direction(m.id, dir_of(*direction));
                    }
                }
                Change::StopMedia { media } => {
                    if let Some(m) = self.media.get(media) {
                        api.stop_media(m.id);
                    }
                }
                Change::IceRestart => {
                    // Before the first exchange the ICE state is fresh anyway, and
                    // str0m does not connect after a restart in its first offer.
                    if self.negotiated_once {
                        api.ice_restart(true);
                    }
                }
            }
        }
        let applied = api.apply();
        let (offer, pending) = match applied {
            Some(v) => v,
            None => {
                // Everything was applied without SDP. Channels on an existing SCTP
                // association are opened in-band (DCEP): the peer learns of them with
                // no description, so they are negotiated now.
                for id in &carried {
                    if let Some(c) = self.channels.get_mut(id) {
                        c.confirmed = true;
                    }
                }
                if changes
                    .iter()
                    .all(|q| matches!(q.change, Change::OpenChannel { .. }))
                {
                    self.applied_direct += 1;
                    debug!("changes applied without an offer");
                    return Ok(None);
                }
                // A direction change or stop already applied to str0m's session by an
                // offer that was rolled back: str0m sees nothing new, yet the peer
                // has not seen it. Offer an ICE restart that keeps the candidates;
                // the offer carries the whole session, the direction included.
                self.filler_offers += 1;
                debug!("direction already set by a rolled-back offer; offering an ICE restart");
                let mut api = self.rtc.sdp_api();
                api.ice_restart(true);
                api.apply().ok_or(EngineError::NoOffer)?
            }
        };
        self.pending = Some((pending, carried));
        Ok(Some(offer.to_sdp_string()))
    }

    /// Remembers the types of the candidates a remote description carries.
    fn record_candidates(&mut self, sdp: &str) {
        for line in sdp.lines().filter_map(|l| l.strip_prefix("a=")) {
            if self.remote_candidates.len() >= 64 {
                return;
            }
            if line.starts_with("candidate:")
                && let Ok(c) = Candidate::from_sdp_string(line)
                && !self.remote_candidates.iter().any(|(a, _)| *a == c.addr())
            {
                self.remote_candidates.push((c.addr(), c.kind()));
            }
        }
    }

    fn confirm(&mut self, ids: &[ChangeId]) {
        for id in ids {
            if let Some(c) = self.channels.get_mut(id) {
                c.confirmed = true;
                self.has_app = true;
            }
            if let Some(m) = self.media.get_mut(id) {
                m.confirmed = true;
            }
        }
    }
}

fn has_application_line(sdp: &str) -> bool {
    sdp.lines()
        .any(|l| l.starts_with("m=application ") && !l.starts_with("m=application 0 "))
}

fn kind_of(kind: MediaKind) -> str0m::media::MediaKind {
    match kind {
        MediaKind::Audio => str0m::media::MediaKind::Audio,
        MediaKind::Video => str0m::media::MediaKind::Video,
    }
}

fn dir_of(dir: Direction) -> str0m::media::Direction {
    match dir {
        Direction::SendRecv => str0m::media::Direction::SendRecv,
        Direction::SendOnly => str0m::media::Direction::SendOnly,
        Direction::RecvOnly => str0m::media::Direction::RecvOnly,
        Direction::Inactive => str0m::media::Direction::Inactive,
    }
}

impl SdpEngine for StrEngine {
    type Error = EngineError;

    fn create_offer(&mut self, changes: &[QueuedChange]) -> Result<Option<String>, EngineError> {
        let r = self.offer_inner(changes);
        self.drain();
        r
    }

    fn accept_offer(&mut self, offer: &str) -> Result<String, EngineError> {
        // An offer pending in str0m is abandoned by accept_offer; drop ours to match.
        self.pending = None;
        let parsed =
            SdpOffer::from_sdp_string(offer).map_err(|e| EngineError::ParseSdp(e.to_string()))?;
        let r = self.rtc.sdp_api().accept_offer(parsed);
        self.drain();
        let answer = r.map_err(|e| EngineError::Rejected(e.to_string()))?;
        self.record_candidates(offer);
        self.negotiated_once = true;
        if has_application_line(offer) {
            self.has_app = true;
        }
        Ok(answer.to_sdp_string())
    }

    fn accept_answer(&mut self, answer: &str) -> Result<(), EngineError> {
        let (pending, ids) = self.pending.take().ok_or(EngineError::NoPendingOffer)?;
        let parsed =
            SdpAnswer::from_sdp_string(answer).map_err(|e| EngineError::ParseSdp(e.to_string()))?;
        let r = self.rtc.sdp_api().accept_answer(pending, parsed);
        self.drain();
        r.map_err(|e| EngineError::Rejected(e.to_string()))?;
        self.record_candidates(answer);
        self.negotiated_once = true;
        self.confirm(&ids);
        if has_application_line(answer) {
            self.has_app = true;
        }
        Ok(())
    }

    fn rollback(&mut self) {
        if let Some((_, ids)) = self.pending.take() {
            debug!(changes = ids.len(), "local offer rolled back");
        }
    }

    fn add_remote_candidate(&mut self, candidate: &IceCandidate) -> Result<(), EngineError> {
        if candidate.is_end_of_candidates() {
            // str0m never ends trickle ICE.
            return Ok(());
        }
        let line = candidate.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        // candidate:<foundation> <component> <transport> <priority> <address> <port> typ …
        if line
            .split_ascii_whitespace()
            .nth(4)
            .is_some_and(|addr| addr.to_ascii_lowercase().ends_with(".local"))
        {
            debug!(
                candidate = line,
                "mDNS candidate skipped (peer-reflexive discovery covers it)"
            );
            self.mdns_skipped += 1;
            return Ok(());
        }
        let c = Candidate::from_sdp_string(line)
            .map_err(|e| EngineError::ParseCandidate(e.to_string()))?;
        if self.remote_candidates.len() < 64 {
            self.remote_candidates.push((c.addr(), c.kind()));
        }
        self.mutate(|rtc| rtc.add_remote_candidate(c));
        Ok(())
    }
}
