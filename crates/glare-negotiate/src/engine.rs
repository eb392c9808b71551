//! The SDP engine the negotiator drives (str0m in `glare-rtc`, a model in tests).

use glare_proto::signal::IceCandidate;

use crate::change::QueuedChange;

/// What the negotiator needs from an SDP engine.
///
/// The shape follows str0m 0.25's SDP API, so `glare-rtc` implements it for
/// `str0m::Rtc`:
///
/// | call | str0m |
/// |---|---|
/// | [`create_offer`](Self::create_offer) | apply the changes through `sdp_api()` (`add_channel`, `add_media`, `set_direction`, `stop_media`, `ice_restart`), then `apply()`; keep the `SdpPendingOffer` (`apply()` giving none: `Ok(None)`) |
/// | [`accept_offer`](Self::accept_offer) | `sdp_api().accept_offer(offer)` |
/// | [`accept_answer`](Self::accept_answer) | `sdp_api().accept_answer(pending, answer)` |
/// | [`rollback`](Self::rollback) | drop the `SdpPendingOffer` |
/// | [`add_remote_candidate`](Self::add_remote_candidate) | `add_remote_candidate` (end-of-candidates: nothing) |
///
/// The negotiator keeps these promises, and the model engine of the simulator checks
/// every one of them:
///
/// - `create_offer` is called only with no offer pending, with every queued change
///   (never an empty list), in queue order. A change rolled back with an earlier offer
///   is passed again with the same [`ChangeId`](crate::ChangeId): applying it must be
///   idempotent (str0m does not undo a direction change or a channel id, so the engine
///   maps the id to what it already created).
/// - `accept_offer` is called only with no local offer pending: the negotiator calls
///   `rollback` first (the polite side in glare).
/// - `accept_answer` and `rollback` are called only with an offer pending.
/// - `add_remote_candidate` is called only with candidates of the current remote ICE
///   generation (their `usernameFragment` is the `a=ice-ufrag` of the remote
///   description last applied), including end-of-candidates.
///
/// Every description (local and remote) must carry an `a=ice-ufrag` line; the
/// negotiator reads it with [`glare_proto::sdp::ice_ufrag`] to track ICE generations.
pub trait SdpEngine {
    /// Why the engine refused a call.
    type Error: std::fmt::Display;

    /// Applies `changes` and creates an offer carrying them (and the whole current
    /// session). The offer stays pending until [`accept_answer`](Self::accept_answer)
    /// or [`rollback`](Self::rollback).
    ///
    /// `Ok(None)`: every change was applied without an offer (str0m opens a data
    /// channel on an existing SCTP association in-band, with no SDP). No offer is
    /// pending then; the negotiator reports the changes negotiated at once
    /// ([`Event::ChangesNegotiated`](crate::Event::ChangesNegotiated)) and stays
    /// `stable`. An engine must return `None` only when the peer learns of every
    /// change without a description.
    fn create_offer(&mut self, changes: &[QueuedChange]) -> Result<Option<String>, Self::Error>;

    /// Applies a remote offer and returns the answer, which is applied locally too.
    fn accept_offer(&mut self, offer: &str) -> Result<String, Self::Error>;

    /// Applies the remote answer to the pending offer.
    fn accept_answer(&mut self, answer: &str) -> Result<(), Self::Error>;

    /// Abandons the pending local offer (glare, polite side or equal tie-breakers).
    fn rollback(&mut self);

    /// Adds a remote ICE candidate, or end-of-candidates (an empty `candidate`).
    fn add_remote_candidate(&mut self, candidate: &IceCandidate) -> Result<(), Self::Error>;
}
