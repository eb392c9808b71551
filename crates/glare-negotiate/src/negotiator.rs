//! The negotiator: one link's signaling state machine.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use glare_proto::sdp::ice_ufrag;
use glare_proto::signal::{
    Bye, IceCandidate, MAX_SIGNAL_LEN, SdpKind, SessionDescription, Signal, TieBreaker,
};
use tracing::debug;

use crate::change::{Change, ChangeId, QueuedChange};
use crate::engine::SdpEngine;
use crate::rng::{RandomSource, SplitMix64};

/// Largest random delay before re-offering after equal tie-breakers (PROTOCOL.md §3).
pub const MAX_RETRY_DELAY: Duration = Duration::from_millis(50);

/// How many superseded remote ICE generations are remembered (to drop their late
/// candidates rather than hold them).
const OLD_GENERATIONS: usize = 8;

/// Timeouts and limits of one link. [`Config::default`] gives sensible values.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The link fails if the transport has not reported connected this long after the
    /// link started (dial, or first offer received). Default 30 s.
    pub connect_timeout: Duration,
    /// Once connected, an offer unanswered for this long fails the link (signaling is
    /// reliable, so a missing answer means the peer is gone). Default 30 s.
    pub answer_timeout: Duration,
    /// After the transport reports disconnected for this long, an ICE restart is
    /// queued. Default 5 s.
    pub disconnect_timeout: Duration,
    /// An ICE restart that has not reconnected the transport this long after it was
    /// queued counts as failed; the next one is queued. Default 15 s.
    pub ice_restart_timeout: Duration,
    /// After this many failed ICE restarts the link fails. 0: fail as soon as the
    /// disconnect timeout expires. Default 3.
    pub max_ice_restarts: u32,
    /// Remote candidates held for a description not yet applied; beyond this the
    /// oldest is dropped. Default 64.
    pub max_held_candidates: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            answer_timeout: Duration::from_secs(30),
            disconnect_timeout: Duration::from_secs(5),
            ice_restart_timeout: Duration::from_secs(15),
            max_ice_restarts: 3,
            max_held_candidates: 64,
        }
    }
}

/// The W3C signaling state (`RTCSignalingState`) of the link.
///
/// Remote offers are answered within the call that delivers them, so
/// [`HaveRemoteOffer`](Self::HaveRemoteOffer) is never seen between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalingState {
    /// No offer outstanding.
    Stable,
    /// This side's offer is waiting for an answer.
    HaveLocalOffer,
    /// A remote offer is being answered.
    HaveRemoteOffer,
}

/// This side's role in offer collisions, from the tie-breakers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Smaller tie-breaker: rolls its offer back and answers the remote one.
    Polite,
    /// Larger tie-breaker: ignores a colliding offer.
    Impolite,
}

/// Where the link is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Not started: neither [`Negotiator::dial`] nor a remote offer yet. Changes may be
    /// queued.
    Idle,
    /// Started: negotiating, connected, or renegotiating.
    Active,
    /// Ended by `bye` (from either side).
    Closed,
    /// Failed (see [`Event::Failed`]).
    Failed,
}

/// What the transport (ICE) reports. str0m never reports ICE failure: glare decides
/// that from timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportState {
    /// ICE (and DTLS) connected.
    Connected,
    /// ICE lost its connectivity (str0m's `Disconnected`).
    Disconnected,
}

/// Why a link failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailReason {
    /// The transport did not connect within [`Config::connect_timeout`] (for example,
    /// the answer to the first offer was lost).
    #[error("not connected within the connect timeout")]
    ConnectTimeout,
    /// An offer was not answered within [`Config::answer_timeout`].
    #[error("no answer within the answer timeout")]
    AnswerTimeout,
    /// The transport stayed disconnected through this many ICE restarts.
    #[error("transport disconnected and {attempts} ICE restart(s) did not reconnect it")]
    IceRestartsExhausted {
        /// Failed restarts (0 when [`Config::max_ice_restarts`] is 0).
        attempts: u32,
    },
    /// The peer sent a description that could not be applied (peer fault).
    #[error("remote {kind} rejected: {reason}")]
    RemoteDescriptionRejected {
        /// Offer or answer.
        kind: SdpKind,
        /// What was wrong with it.
        reason: String,
    },
    /// The local engine failed to create a description (local fault).
    #[error("local SDP engine failed: {0}")]
    Engine(String),
    /// A local description grew too large to travel in one signal (at most
    /// [`MAX_SIGNAL_LEN`] bytes encoded, PROTOCOL.md §1): every media line adds to
    /// every later description, so this is too many media tracks on one link.
    #[error(
        "the local {kind} is a {len}-byte signal, more than the {MAX_SIGNAL_LEN}-byte limit (too many media lines)"
    )]
    DescriptionTooLarge {
        /// Offer or answer.
        kind: SdpKind,
        /// The encoded signal's length in bytes.
        len: usize,
    },
}

/// Something the application should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Both tie-breakers are known and differ: this side's role in collisions. Sent
    /// again if the role changes (only after equal tie-breakers are redrawn).
    RoleDecided {
        /// This side's role.
        role: Role,
        /// This side's tie-breaker.
        local: TieBreaker,
        /// The peer's tie-breaker.
        remote: TieBreaker,
    },
    /// These changes of ours were negotiated (an answer to an offer carrying them was
    /// applied) and left the queue.
    ChangesNegotiated {
        /// The ids, in queue order.
        ids: Vec<ChangeId>,
    },
    /// An exchange finished and nothing is left to negotiate: the link is `stable`
    /// with an empty queue.
    NegotiationComplete,
    /// The transport connected (first time, or again after a disconnect).
    Connected,
    /// The transport reported disconnected; the failure policy is running.
    Disconnected,
    /// The failure policy queued an ICE restart (it goes through the same glare
    /// handling as any change).
    IceRestartQueued {
        /// The id of the queued [`Change::IceRestart`].
        id: ChangeId,
    },
    /// The link failed; a `bye` carrying the reason is queued for the peer.
    Failed(FailReason),
    /// The link was closed by `bye`.
    Closed {
        /// Whether the peer sent the `bye` (else [`Negotiator::close`] was called).
        by_remote: bool,
        /// The `bye` reason.
        reason: Option<String>,
    },
}

/// Why [`Negotiator::request`] refused a change (caller misuse).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The link is closed or failed.
    #[error("the link is over")]
    LinkOver,
    /// The media id is not a track this side added.
    #[error("{0} is not a media track added on this side")]
    UnknownMedia(ChangeId),
    /// The track is already stopped (or its stop is queued).
    #[error("media {0} is stopped")]
    MediaStopped(ChangeId),
}

/// Why [`Negotiator::dial`] refused (caller misuse).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The link already started (dialled, or a remote offer arrived).
    #[error("the link already started")]
    AlreadyStarted,
    /// Nothing is queued: the first offer needs at least one change (glare opens its
    /// `glare-signal` data channel with it).
    #[error("nothing is queued to offer")]
    NothingQueued,
    /// The link is closed or failed.
    #[error("the link is over")]
    LinkOver,
}

/// Why [`Negotiator::queue_local_candidate`] refused (caller misuse).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// The link is closed or failed.
    #[error("the link is over")]
    LinkOver,
    /// The candidate has no `usernameFragment` and no local description exists yet to
    /// take it from.
    #[error("no local description yet: the candidate's ICE generation is unknown")]
    NoLocalDescription,
}

/// Why [`Negotiator::handle_signal`] could not use a signal.
///
/// Every variant but [`LocalEngine`](Self::LocalEngine) is a peer fault: the signal is
/// dropped, and for descriptions the link fails ([`Event::Failed`], `bye` queued), since
/// the peer now waits for something that will never come.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleSignalError {
    /// Peer fault: an answer arrived with no offer of ours outstanding. Ignored.
    #[error("answer received with no offer outstanding")]
    UnexpectedAnswer,
    /// Peer fault: a description without `a=ice-ufrag`. The link fails.
    #[error("remote {0} has no a=ice-ufrag")]
    MissingIceUfrag(SdpKind),
    /// Peer fault: the engine refused the remote offer. The link fails.
    #[error("remote offer rejected: {0}")]
    OfferRejected(String),
    /// Peer fault: the engine refused the remote answer. The link fails.
    #[error("remote answer rejected: {0}")]
    AnswerRejected(String),
    /// Peer fault: a candidate without `usernameFragment`. Ignored.
    #[error("candidate has no usernameFragment")]
    CandidateWithoutUfrag,
    /// Peer fault: the engine refused a candidate. Ignored; the link goes on.
    #[error("remote candidate rejected: {0}")]
    CandidateRejected(String),
    /// Local fault: the engine's answer has no `a=ice-ufrag`. The link fails.
    #[error("local engine produced an answer without a=ice-ufrag")]
    LocalEngine(String),
}

impl HandleSignalError {
    /// Whether the peer (not this side) is at fault.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, Self::LocalEngine(_))
    }
}

/// Counters, for tests, benches and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Offers created and sent.
    pub offers_sent: u64,
    /// Answers created and sent.
    pub answers_sent: u64,
    /// Answers to our offers applied.
    pub answers_applied: u64,
    /// Own offers rolled back (polite side in glare, or equal tie-breakers).
    pub rollbacks: u64,
    /// Colliding remote offers ignored (impolite side).
    pub ignored_offers: u64,
    /// Collisions with equal tie-breakers (both sides redraw and retry).
    pub equal_collisions: u64,
    /// Remote candidates passed to the engine (including end-of-candidates).
    pub candidates_applied: u64,
    /// Remote candidates held for a description not yet applied.
    pub candidates_held: u64,
    /// Remote candidates dropped (old ICE generation, or held too long).
    pub candidates_dropped: u64,
    /// Changes the engine applied without an offer (`create_offer` gave `None`).
    pub applied_without_offer: u64,
    /// Offers of a remote ICE generation already replaced by a restart, ignored as
    /// stale.
    pub stale_offers: u64,
    /// ICE restarts completed: offer/answer exchanges, after the first, that changed
    /// the local or the remote ICE credentials (either side may have asked).
    pub ice_restarts: u64,
}

/// Our offer, waiting for its answer.
#[derive(Debug)]
struct Outstanding {
    /// How many changes at the head of the queue it carries.
    carried: usize,
}

/// The four descriptions of the W3C API (seeds/002).
#[derive(Debug, Default)]
struct Descriptions {
    current_local: Option<String>,
    pending_local: Option<String>,
    current_remote: Option<String>,
    pending_remote: Option<String>,
}

/// The failure policy's state.
#[derive(Debug, Default)]
struct Policy {
    connect_deadline: Option<Instant>,
    answer_deadline: Option<Instant>,
    disconnect_deadline: Option<Instant>,
    restart_deadline: Option<Instant>,
    failed_restarts: u32,
    ever_connected: bool,
    connected: bool,
}

/// The glare-proof negotiation state machine of one link (PROTOCOL.md §3).
///
/// Sans-I/O: it reads no clock and does no I/O. Feed it inputs (`handle_*`, `request`,
/// `dial`, `close`), then drain its outputs: [`poll_signal`](Self::poll_signal) until
/// `None` (signals to send to the peer, in order), [`poll_event`](Self::poll_event)
/// until `None`, and arm a timer at [`poll_timeout`](Self::poll_timeout) that calls
/// [`handle_timeout`](Self::handle_timeout).
///
/// Signals to one peer must be delivered in the order they were polled (the broker's
/// channel stream and the in-band channel are both ordered); candidates alone may be
/// reordered.
#[derive(Debug)]
pub struct Negotiator<R = SplitMix64> {
    config: Config,
    rng: R,
    link: LinkState,
    signaling: SignalingState,
    tie_breaker: Option<TieBreaker>,
    remote_tie_breaker: Option<TieBreaker>,
    role: Option<Role>,
    /// Every change not yet negotiated, in request order. The first
    /// `outstanding.carried` are in our outstanding offer.
    queue: Vec<QueuedChange>,
    next_change_id: u64,
    /// Own media tracks: id and whether a stop is queued or done.
    media: Vec<(ChangeId, bool)>,
    outstanding: Option<Outstanding>,
    descriptions: Descriptions,
    /// `a=ice-ufrag` of the current (or pending) local description.
    local_ufrag: Option<String>,
    /// `a=ice-ufrag` of the current local description (restored on rollback).
    current_local_ufrag: Option<String>,
    /// Local and remote ufrags after the latest completed exchange (counts restarts).
    negotiated_generation: Option<(Option<String>, Option<String>)>,
    /// The current remote ICE generation.
    remote_ufrag: Option<String>,
    /// Superseded remote generations: their candidates are dropped.
    old_remote_ufrags: VecDeque<String>,
    /// Remote ICE generations that were applied and then replaced (a restart): an
    /// offer carrying one is stale (sent before the restart, delivered after it).
    replaced_remote_ufrags: VecDeque<String>,
    /// Generations of remote offers we ignored (impolite side, equal tie-breakers).
    ignored_ufrags: Vec<String>,
    /// Remote candidates waiting for their description.
    held: VecDeque<IceCandidate>,
    /// Equal tie-breakers: no offer before this instant.
    retry_at: Option<Instant>,
    policy: Policy,
    /// Whether `NegotiationComplete` was reported since the last exchange started.
    complete_reported: bool,
    signals: VecDeque<Signal>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Negotiator<SplitMix64> {
    /// A negotiator for one link, with a [`SplitMix64`] seeded by `seed` (take the seed
    /// from a random source: both sides must draw different tie-breakers).
    pub fn with_seed(config: Config, seed: u64) -> Self {
        Self::new(config, SplitMix64::new(seed))
    }
}

impl<R: RandomSource> Negotiator<R> {
    /// A negotiator for one link, drawing tie-breakers and delays from `rng`.
    pub fn new(config: Config, rng: R) -> Self {
        Self {
            config,
            rng,
            link: LinkState::Idle,
            signaling: SignalingState::Stable,
            tie_breaker: None,
            remote_tie_breaker: None,
            role: None,
            queue: Vec::new(),
            next_change_id: 0,
            media: Vec::new(),
            outstanding: None,
            descriptions: Descriptions::default(),
            local_ufrag: None,
            current_local_ufrag: None,
            negotiated_generation: None,
            remote_ufrag: None,
            old_remote_ufrags: VecDeque::new(),
            replaced_remote_ufrags: VecDeque::new(),
            ignored_ufrags: Vec::new(),
            held: VecDeque::new(),
            retry_at: None,
            policy: Policy::default(),
            complete_reported: true,
            signals: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ----- inputs ---------------------------------------------------------------------

    /// Queues a change. It is offered when the link is started and `stable`, and stays
    /// queued (through any number of rollbacks) until an answer to an offer carrying it
    /// has been applied ([`Event::ChangesNegotiated`]).
    ///
    /// A second [`Change::IceRestart`] while one is queued and not yet offered returns
    /// the queued one's id.
    pub fn request(&mut self, change: Change) -> Result<ChangeId, RequestError> {
        if self.is_over() {
            return Err(RequestError::LinkOver);
        }
        match &change {
            Change::SetDirection { media, .. } | Change::StopMedia { media } => {
                let stop = matches!(change, Change::StopMedia { .. });
                let Some(entry) = self.media.iter_mut().find(|(id, _)| id == media) else {
                    return Err(RequestError::UnknownMedia(*media));
                };
                if entry.1 {
                    return Err(RequestError::MediaStopped(*media));
                }
                entry.1 = stop;
            }
            Change::IceRestart => {
                let carried = self.outstanding.as_ref().map_or(0, |o| o.carried);
                if let Some(q) = self.queue[carried..]
                    .iter()
                    .find(|q| q.change == Change::IceRestart)
                {
                    return Ok(q.id);
                }
            }
            Change::OpenChannel { .. } | Change::AddMedia { .. } => {}
        }
        let id = ChangeId(self.next_change_id);
        self.next_change_id += 1;
        if matches!(change, Change::AddMedia { .. }) {
            self.media.push((id, false));
        }
        debug!(%id, ?change, "change queued");
        self.queue.push(QueuedChange { id, change });
        Ok(id)
    }

    /// Starts the link as the side that offers first. The offer is made at the next
    /// [`poll_signal`](Self::poll_signal), so its ICE state is fresh.
    pub fn dial(&mut self, now: Instant) -> Result<(), DialError> {
        match self.link {
            LinkState::Idle => {}
            LinkState::Active => return Err(DialError::AlreadyStarted),
            LinkState::Closed | LinkState::Failed => return Err(DialError::LinkOver),
        }
        if self.queue.is_empty() {
            return Err(DialError::NothingQueued);
        }
        self.start(now);
        Ok(())
    }

    /// Ends the link: queues a `bye` for the peer and forgets everything else queued.
    /// Does nothing if the link is already over.
    pub fn close(&mut self, reason: Option<String>) {
        if self.is_over() {
            return;
        }
        debug!(?reason, "link closed locally");
        self.link = LinkState::Closed;
        self.stop_timers();
        self.signals.clear();
        self.signals.push_back(Signal::Bye(Bye {
            reason: reason.clone(),
        }));
        self.events.push_back(Event::Closed {
            by_remote: false,
            reason,
        });
    }

    /// Queues a local ICE candidate (or end-of-candidates) to trickle to the peer. An
    /// empty `username_fragment` is filled with the latest local description's ufrag.
    pub fn queue_local_candidate(
        &mut self,
        mut candidate: IceCandidate,
    ) -> Result<(), CandidateError> {
        if self.is_over() {
            return Err(CandidateError::LinkOver);
        }
        if candidate.username_fragment.is_empty() {
            let Some(ufrag) = &self.local_ufrag else {
                return Err(CandidateError::NoLocalDescription);
            };
            candidate.username_fragment.clone_from(ufrag);
        }
        self.signals.push_back(Signal::Candidate(candidate));
        Ok(())
    }

    /// Handles a signal from the peer. After it, drain the outputs.
    ///
    /// Signals arriving after the link is over are ignored.
    pub fn handle_signal<E: SdpEngine>(
        &mut self,
        now: Instant,
        signal: Signal,
        engine: &mut E,
    ) -> Result<(), HandleSignalError> {
        if self.is_over() {
            return Ok(());
        }
        match signal {
            Signal::Bye(bye) => {
                debug!(reason = ?bye.reason, "link closed by the peer");
                self.link = LinkState::Closed;
                self.stop_timers();
                self.signals.clear();
                self.events.push_back(Event::Closed {
                    by_remote: true,
                    reason: bye.reason,
                });
                Ok(())
            }
            Signal::Candidate(candidate) => self.on_candidate(candidate, engine),
            Signal::Description {
                description: SessionDescription { kind, sdp },
                tie_breaker,
            } => {
                let Some(ufrag) = ice_ufrag(&sdp).filter(|u| !u.is_empty()) else {
                    if kind == SdpKind::Answer && self.signaling == SignalingState::Stable {
                        return Err(HandleSignalError::UnexpectedAnswer);
                    }
                    if kind == SdpKind::Offer && self.link == LinkState::Idle {
                        self.start(now);
                    }
                    self.fail(FailReason::RemoteDescriptionRejected {
                        kind,
                        reason: "no a=ice-ufrag".into(),
                    });
                    return Err(HandleSignalError::MissingIceUfrag(kind));
                };
                let ufrag = ufrag.to_owned();
                match kind {
                    SdpKind::Offer => self.on_offer(now, sdp, ufrag, tie_breaker, engine),
                    SdpKind::Answer => self.on_answer(sdp, ufrag, tie_breaker, engine),
                }
            }
        }
    }

    /// Handles what the transport reports.
    pub fn handle_transport(&mut self, now: Instant, state: TransportState) {
        if self.is_over() {
            return;
        }
        let p = &mut self.policy;
        match state {
            TransportState::Connected => {
                p.connect_deadline = None;
                p.disconnect_deadline = None;
                p.restart_deadline = None;
                p.failed_restarts = 0;
                p.ever_connected = true;
                if self.outstanding.is_some() && p.answer_deadline.is_none() {
                    // An offer made before the first connection gets its answer timer now.
                    p.answer_deadline = Some(now + self.config.answer_timeout);
                }
                if !p.connected {
                    p.connected = true;
                    debug!("transport connected");
                    self.events.push_back(Event::Connected);
                }
            }
            TransportState::Disconnected => {
                if !p.connected {
                    return;
                }
                p.connected = false;
                debug!("transport disconnected");
                self.events.push_back(Event::Disconnected);
                if p.restart_deadline.is_none() {
                    p.disconnect_deadline = Some(now + self.config.disconnect_timeout);
                }
            }
        }
    }

    /// Handles timers: call it when [`poll_timeout`](Self::poll_timeout) is reached
    /// (calling it early or late is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_over() {
            return;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.policy.connect_deadline) {
            self.fail(FailReason::ConnectTimeout);
            return;
        }
        if due(self.policy.answer_deadline) {
            self.fail(FailReason::AnswerTimeout);
            return;
        }
        if due(self.retry_at) {
            debug!("retry delay over");
            self.retry_at = None;
        }
        if due(self.policy.disconnect_deadline) {
            self.policy.disconnect_deadline = None;
            self.queue_restart(now);
        }
        if due(self.policy.restart_deadline) {
            self.policy.restart_deadline = None;
            self.policy.failed_restarts += 1;
            debug!(
                failed = self.policy.failed_restarts,
                "ICE restart did not reconnect"
            );
            self.queue_restart(now);
        }
    }

    // ----- outputs --------------------------------------------------------------------

    /// The next signal to send to the peer, in order.
    ///
    /// When nothing else is waiting and negotiation is needed (the link is started and
    /// `stable`, changes are queued, no retry delay runs), this creates the offer now,
    /// through `engine`, with every queued change. If the engine applies them all
    /// without an offer, they are reported negotiated and no offer is sent.
    #[must_use]
    pub fn poll_signal<E: SdpEngine>(&mut self, now: Instant, engine: &mut E) -> Option<Signal> {
        if let Some(signal) = self.signals.pop_front() {
            return Some(signal);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
        }
        if !self.is_negotiation_needed() {
            return None;
        }
        let sdp = match engine.create_offer(&self.queue) {
            Ok(Some(sdp)) => sdp,
            Ok(None) => {
                // Applied without SDP: negotiated now, nothing to send.
                let ids: Vec<ChangeId> = self.queue.drain(..).map(|q| q.id).collect();
                debug!(?ids, "changes applied without an offer");
                self.stats.applied_without_offer += ids.len() as u64;
                self.events.push_back(Event::ChangesNegotiated { ids });
                self.complete_reported = false;
                self.report_complete();
                return self.signals.pop_front();
            }
            Err(e) => {
                self.fail(FailReason::Engine(e.to_string()));
                return self.signals.pop_front();
            }
        };
        let Some(ufrag) = ice_ufrag(&sdp).filter(|u| !u.is_empty()) else {
            engine.rollback();
            self.fail(FailReason::Engine("offer has no a=ice-ufrag".into()));
            return self.signals.pop_front();
        };
        let tie_breaker = self.tie_breaker.expect("a started link has a tie-breaker");
        if let Some(len) = too_large(SdpKind::Offer, &sdp, tie_breaker) {
            // The peer would drop it (and the broker refuse it): fail now, clearly,
            // rather than wait for an answer that cannot come.
            engine.rollback();
            self.fail(FailReason::DescriptionTooLarge {
                kind: SdpKind::Offer,
                len,
            });
            return self.signals.pop_front();
        }
        self.local_ufrag = Some(ufrag.to_owned());
        debug!(changes = self.queue.len(), "offer sent");
        self.outstanding = Some(Outstanding {
            carried: self.queue.len(),
        });
        self.signaling = SignalingState::HaveLocalOffer;
        self.complete_reported = false;
        self.descriptions.pending_local = Some(sdp.clone());
        if self.policy.ever_connected {
            self.policy.answer_deadline = Some(now + self.config.answer_timeout);
        }
        self.stats.offers_sent += 1;
        Some(Signal::Description {
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp,
            },
            tie_breaker,
        })
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if at all.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_over() {
            return None;
        }
        let p = &self.policy;
        [
            p.connect_deadline,
            p.answer_deadline,
            p.disconnect_deadline,
            p.restart_deadline,
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- state ----------------------------------------------------------------------

    /// The signaling state.
    pub fn signaling_state(&self) -> SignalingState {
        self.signaling
    }

    /// Where the link is in its life.
    pub fn link_state(&self) -> LinkState {
        self.link
    }

    /// This side's role, once both tie-breakers are known and differ.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// This side's tie-breaker (drawn when the link starts).
    pub fn tie_breaker(&self) -> Option<TieBreaker> {
        self.tie_breaker
    }

    /// The peer's latest tie-breaker.
    pub fn remote_tie_breaker(&self) -> Option<TieBreaker> {
        self.remote_tie_breaker
    }

    /// Whether an offer would be made now: derived from the change queue alone (the link
    /// is started and `stable`, no retry delay runs, and changes are queued).
    pub fn is_negotiation_needed(&self) -> bool {
        self.link == LinkState::Active
            && self.signaling == SignalingState::Stable
            && self.retry_at.is_none()
            && !self.queue.is_empty()
    }

    /// Every change not yet negotiated, in order (those in the outstanding offer first).
    pub fn queued(&self) -> &[QueuedChange] {
        &self.queue
    }

    /// The description in use locally (`currentLocalDescription`).
    pub fn current_local_description(&self) -> Option<&str> {
        self.descriptions.current_local.as_deref()
    }

    /// The local offer waiting for its answer (`pendingLocalDescription`).
    pub fn pending_local_description(&self) -> Option<&str> {
        self.descriptions.pending_local.as_deref()
    }

    /// The remote description in use (`currentRemoteDescription`).
    pub fn current_remote_description(&self) -> Option<&str> {
        self.descriptions.current_remote.as_deref()
    }

    /// The remote offer being answered (`pendingRemoteDescription`; only within a call).
    pub fn pending_remote_description(&self) -> Option<&str> {
        self.descriptions.pending_remote.as_deref()
    }

    /// The ufrag local candidates are trickled with: the pending offer's, else the
    /// current local description's.
    pub fn local_ufrag(&self) -> Option<&str> {
        self.local_ufrag.as_deref()
    }

    /// The current remote ICE generation (ufrag of the remote description applied).
    pub fn remote_ufrag(&self) -> Option<&str> {
        self.remote_ufrag.as_deref()
    }

    /// Remote candidates held for a description not yet applied.
    pub fn held_candidates(&self) -> usize {
        self.held.len()
    }

    /// Whether the transport is connected (as last reported).
    pub fn is_connected(&self) -> bool {
        self.policy.connected
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ----- internals ------------------------------------------------------------------

    fn is_over(&self) -> bool {
        matches!(self.link, LinkState::Closed | LinkState::Failed)
    }

    fn start(&mut self, now: Instant) {
        debug_assert_eq!(self.link, LinkState::Idle);
        self.link = LinkState::Active;
        let tb = self.draw_tie_breaker(None);
        debug!(tie_breaker = %tb, "link started");
        self.tie_breaker = Some(tb);
        self.policy.connect_deadline = Some(now + self.config.connect_timeout);
    }

    /// A fresh tie-breaker, different from `avoid`.
    fn draw_tie_breaker(&mut self, avoid: Option<TieBreaker>) -> TieBreaker {
        loop {
            let tb = TieBreaker::from_random_bits(self.rng.next_u64());
            if Some(tb) != avoid {
                return tb;
            }
        }
    }

    fn stop_timers(&mut self) {
        let ever = self.policy.ever_connected;
        self.policy = Policy {
            ever_connected: ever,
            ..Policy::default()
        };
        self.retry_at = None;
    }

    fn fail(&mut self, reason: FailReason) {
        if self.is_over() {
            return;
        }
        debug!(%reason, "link failed");
        self.link = LinkState::Failed;
        self.stop_timers();
        self.signals.clear();
        self.signals.push_back(Signal::Bye(Bye {
            reason: Some(reason.to_string()),
        }));
        self.events.push_back(Event::Failed(reason));
    }

    fn queue_restart(&mut self, now: Instant) {
        if self.policy.failed_restarts >= self.config.max_ice_restarts {
            self.fail(FailReason::IceRestartsExhausted {
                attempts: self.policy.failed_restarts,
            });
            return;
        }
        let id = self
            .request(Change::IceRestart)
            .expect("an ICE restart is always accepted on a live link");
        debug!(%id, "ICE restart queued by the failure policy");
        self.events.push_back(Event::IceRestartQueued { id });
        self.policy.restart_deadline = Some(now + self.config.ice_restart_timeout);
    }

    fn update_role(&mut self, remote: TieBreaker) {
        self.remote_tie_breaker = Some(remote);
        let local = self.tie_breaker.expect("a started link has a tie-breaker");
        let role = match local.cmp(&remote) {
            std::cmp::Ordering::Less => Role::Polite,
            std::cmp::Ordering::Greater => Role::Impolite,
            std::cmp::Ordering::Equal => {
                self.role = None;
                return;
            }
        };
        if self.role != Some(role) {
            debug!(?role, %local, %remote, "role decided");
            self.role = Some(role);
            self.events.push_back(Event::RoleDecided {
                role,
                local,
                remote,
            });
        }
    }

    /// Abandons our outstanding offer; its changes stay queued.
    fn rollback<E: SdpEngine>(&mut self, engine: &mut E) {
        debug_assert_eq!(self.signaling, SignalingState::HaveLocalOffer);
        engine.rollback();
        self.outstanding = None;
        self.signaling = SignalingState::Stable;
        self.descriptions.pending_local = None;
        self.local_ufrag.clone_from(&self.current_local_ufrag);
        self.policy.answer_deadline = None;
        self.stats.rollbacks += 1;
        debug!(queued = self.queue.len(), "local offer rolled back");
    }

    /// Remembers the ufrag of an ignored remote offer (its candidates are not applied).
    fn ignore_offer_ufrag(&mut self, ufrag: String) {
        if self.remote_ufrag.as_deref() != Some(ufrag.as_str())
            && !self.ignored_ufrags.contains(&ufrag)
        {
            if self.ignored_ufrags.len() >= OLD_GENERATIONS {
                self.ignored_ufrags.remove(0);
            }
            self.ignored_ufrags.push(ufrag);
        }
    }

    fn on_offer<E: SdpEngine>(
        &mut self,
        now: Instant,
        sdp: String,
        ufrag: String,
        remote_tb: TieBreaker,
        engine: &mut E,
    ) -> Result<(), HandleSignalError> {
        if self.link == LinkState::Idle {
            self.start(now);
        }
        if self.replaced_remote_ufrags.contains(&ufrag) {
            // E.g. the peer's offer sat in the in-band channel while the path was
            // dead, was rolled back when the peer answered our restart through the
            // broker, and arrives now that the path is back.
            debug!(%ufrag, "offer of a replaced ICE generation ignored (stale)");
            self.stats.stale_offers += 1;
            return Ok(());
        }
        let local_tb = self.tie_breaker.expect("a started link has a tie-breaker");
        if self.signaling == SignalingState::HaveLocalOffer {
            // Glare.
            match local_tb.cmp(&remote_tb) {
                std::cmp::Ordering::Greater => {
                    self.update_role(remote_tb);
                    debug!("colliding offer ignored (impolite)");
                    self.stats.ignored_offers += 1;
                    self.ignore_offer_ufrag(ufrag);
                    return Ok(());
                }
                std::cmp::Ordering::Equal => {
                    debug!("colliding offer with an equal tie-breaker: both redraw and retry");
                    self.stats.equal_collisions += 1;
                    self.remote_tie_breaker = Some(remote_tb);
                    self.role = None;
                    self.rollback(engine);
                    self.ignore_offer_ufrag(ufrag);
                    let tb = self.draw_tie_breaker(Some(remote_tb));
                    self.tie_breaker = Some(tb);
                    let delay_ms = self.rng.next_u64() % (MAX_RETRY_DELAY.as_millis() as u64 + 1);
                    self.retry_at = Some(now + Duration::from_millis(delay_ms));
                    return Ok(());
                }
                std::cmp::Ordering::Less => {
                    debug!("colliding offer accepted (polite): rolling back ours");
                    self.rollback(engine);
                }
            }
        } else if local_tb == remote_tb {
            // PROTOCOL.md §2: the answerer redraws, so equal numbers only meet in
            // colliding offers.
            let tb = self.draw_tie_breaker(Some(remote_tb));
            debug!(tie_breaker = %tb, "equal tie-breaker redrawn before answering");
            self.tie_breaker = Some(tb);
        }
        self.update_role(remote_tb);
        self.signaling = SignalingState::HaveRemoteOffer;
        self.complete_reported = false;
        let answer = match engine.accept_offer(&sdp) {
            Ok(answer) => answer,
            Err(e) => {
                let reason = e.to_string();
                self.descriptions.pending_remote = None;
                self.signaling = SignalingState::Stable;
                self.fail(FailReason::RemoteDescriptionRejected {
                    kind: SdpKind::Offer,
                    reason: reason.clone(),
                });
                return Err(HandleSignalError::OfferRejected(reason));
            }
        };
        self.signaling = SignalingState::Stable;
        let Some(local_ufrag) = ice_ufrag(&answer).filter(|u| !u.is_empty()) else {
            self.fail(FailReason::Engine("answer has no a=ice-ufrag".into()));
            return Err(HandleSignalError::LocalEngine(
                "answer has no a=ice-ufrag".into(),
            ));
        };
        let tie_breaker = self.tie_breaker.expect("a started link has a tie-breaker");
        if let Some(len) = too_large(SdpKind::Answer, &answer, tie_breaker) {
            let reason = FailReason::DescriptionTooLarge {
                kind: SdpKind::Answer,
                len,
            };
            let text = reason.to_string();
            self.fail(reason);
            return Err(HandleSignalError::LocalEngine(text));
        }
        self.local_ufrag = Some(local_ufrag.to_owned());
        self.current_local_ufrag = Some(local_ufrag.to_owned());
        self.descriptions.current_remote = Some(sdp);
        self.descriptions.current_local = Some(answer.clone());
        debug!("answer sent");
        self.signals.push_back(Signal::Description {
            description: SessionDescription {
                kind: SdpKind::Answer,
                sdp: answer,
            },
            tie_breaker,
        });
        self.stats.answers_sent += 1;
        self.set_remote_generation(ufrag, engine);
        self.count_ice_generation();
        self.report_complete();
        Ok(())
    }

    fn on_answer<E: SdpEngine>(
        &mut self,
        sdp: String,
        ufrag: String,
        remote_tb: TieBreaker,
        engine: &mut E,
    ) -> Result<(), HandleSignalError> {
        let Some(outstanding) = self.outstanding.take() else {
            return Err(HandleSignalError::UnexpectedAnswer);
        };
        self.update_role(remote_tb);
        if let Err(e) = engine.accept_answer(&sdp) {
            let reason = e.to_string();
            self.fail(FailReason::RemoteDescriptionRejected {
                kind: SdpKind::Answer,
                reason: reason.clone(),
            });
            return Err(HandleSignalError::AnswerRejected(reason));
        }
        self.signaling = SignalingState::Stable;
        self.policy.answer_deadline = None;
        self.descriptions.current_local = self.descriptions.pending_local.take();
        self.descriptions.current_remote = Some(sdp);
        self.current_local_ufrag.clone_from(&self.local_ufrag);
        self.stats.answers_applied += 1;
        let ids: Vec<ChangeId> = self
            .queue
            .drain(..outstanding.carried)
            .map(|q| q.id)
            .collect();
        debug!(?ids, "answer applied; changes negotiated");
        self.events.push_back(Event::ChangesNegotiated { ids });
        self.set_remote_generation(ufrag, engine);
        self.count_ice_generation();
        self.report_complete();
        Ok(())
    }

    /// An exchange completed: counts an ICE restart if it changed the credentials of
    /// either side since the previous exchange.
    fn count_ice_generation(&mut self) {
        let now = (self.current_local_ufrag.clone(), self.remote_ufrag.clone());
        if let Some(prev) = self.negotiated_generation.replace(now.clone())
            && prev != now
        {
            self.stats.ice_restarts += 1;
            debug!(restarts = self.stats.ice_restarts, "ICE restart completed");
        }
    }

    fn report_complete(&mut self) {
        if self.queue.is_empty() && !self.complete_reported && !self.is_over() {
            self.complete_reported = true;
            self.events.push_back(Event::NegotiationComplete);
        }
    }

    /// The remote description with ICE generation `ufrag` was applied.
    fn set_remote_generation<E: SdpEngine>(&mut self, ufrag: String, engine: &mut E) {
        if self.remote_ufrag.as_deref() == Some(ufrag.as_str()) {
            return;
        }
        debug!(%ufrag, "new remote ICE generation");
        let mut old: Vec<String> = std::mem::take(&mut self.ignored_ufrags);
        old.retain(|u| *u != ufrag);
        if let Some(replaced) = self.remote_ufrag.replace(ufrag) {
            if self.replaced_remote_ufrags.len() >= OLD_GENERATIONS {
                self.replaced_remote_ufrags.pop_front();
            }
            self.replaced_remote_ufrags.push_back(replaced.clone());
            old.push(replaced);
        }
        for u in old {
            if self.old_remote_ufrags.len() >= OLD_GENERATIONS {
                self.old_remote_ufrags.pop_front();
            }
            self.old_remote_ufrags.push_back(u);
        }
        let current = self.remote_ufrag.clone();
        let held = std::mem::take(&mut self.held);
        for c in held {
            if Some(&c.username_fragment) == current.as_ref() {
                // A peer fault in a held candidate cannot be reported to anyone now;
                // it is dropped like any other bad candidate.
                if engine.add_remote_candidate(&c).is_ok() {
                    self.stats.candidates_applied += 1;
                } else {
                    self.stats.candidates_dropped += 1;
                }
            } else if self.old_remote_ufrags.contains(&c.username_fragment) {
                self.stats.candidates_dropped += 1;
            } else {
                self.held.push_back(c);
            }
        }
    }

    fn on_candidate<E: SdpEngine>(
        &mut self,
        candidate: IceCandidate,
        engine: &mut E,
    ) -> Result<(), HandleSignalError> {
        if candidate.username_fragment.is_empty() {
            return Err(HandleSignalError::CandidateWithoutUfrag);
        }
        if self.remote_ufrag.as_ref() == Some(&candidate.username_fragment) {
            engine
                .add_remote_candidate(&candidate)
                .map_err(|e| HandleSignalError::CandidateRejected(e.to_string()))?;
            self.stats.candidates_applied += 1;
            return Ok(());
        }
        if self
            .old_remote_ufrags
            .contains(&candidate.username_fragment)
        {
            self.stats.candidates_dropped += 1;
            return Ok(());
        }
        if self.held.len() >= self.config.max_held_candidates {
            self.held.pop_front();
            self.stats.candidates_dropped += 1;
        }
        if self.config.max_held_candidates > 0 {
            self.stats.candidates_held += 1;
            self.held.push_back(candidate);
        }
        Ok(())
    }
}

impl fmt::Display for SignalingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stable => "stable",
            Self::HaveLocalOffer => "have-local-offer",
            Self::HaveRemoteOffer => "have-remote-offer",
        })
    }
}

/// The encoded length of the description signal for `sdp` when it exceeds
/// [`MAX_SIGNAL_LEN`] (the limit of the broker and of [`Signal::decode`]).
fn too_large(kind: SdpKind, sdp: &str, tie_breaker: TieBreaker) -> Option<usize> {
    // The JSON escapes (`\r\n`) only lengthen it: a short SDP needs no encoding.
    if sdp.len() < MAX_SIGNAL_LEN / 2 {
        return None;
    }
    let len = Signal::Description {
        description: SessionDescription {
            kind,
            sdp: sdp.to_owned(),
        },
        tie_breaker,
    }
    .encode()
    .len();
    (len > MAX_SIGNAL_LEN).then_some(len)
}
