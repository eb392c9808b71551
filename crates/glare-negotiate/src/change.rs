//! The changes a side wants negotiated, and their stable ids.

use std::fmt;

/// The stable id of one requested [`Change`].
///
/// Ids are handed out by [`Negotiator::request`](crate::Negotiator::request) in
/// increasing order and never reused on a link. They survive rollbacks: a data channel
/// or media track keeps the id of the change that created it, so an application's
/// handles stay valid however many times glare makes its offer be re-sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeId(pub u64);

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The kind of a media track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

/// The direction of a media track, from the side that owns it: glare-proto's SDP
/// direction attribute.
pub use glare_proto::sdp::Direction;

/// A change to the session that needs an offer/answer exchange.
///
/// Changes are queued by the [`Negotiator`](crate::Negotiator) and handed to the
/// [`SdpEngine`](crate::SdpEngine) only when an offer is made (str0m cannot undo a
/// direction change or a channel id, so nothing is applied ahead of an offer). A change
/// leaves the queue only when an answer to an offer carrying it has been applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// Open a data channel with this label. Its handle is the change's [`ChangeId`].
    OpenChannel {
        /// The channel label.
        label: String,
    },
    /// Add a media track. Its handle is the change's [`ChangeId`].
    AddMedia {
        /// Audio or video.
        kind: MediaKind,
        /// The initial direction.
        direction: Direction,
    },
    /// Change the direction of a track this side added.
    SetDirection {
        /// The id of the [`Change::AddMedia`] that created the track.
        media: ChangeId,
        /// The new direction.
        direction: Direction,
    },
    /// Stop a track this side added (its m-line stays, rejected).
    StopMedia {
        /// The id of the [`Change::AddMedia`] that created the track.
        media: ChangeId,
    },
    /// Restart ICE: the offer carries a new ICE generation (new ufrag and password).
    IceRestart,
}

/// A change in the queue: its id and what it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedChange {
    /// The stable id.
    pub id: ChangeId,
    /// What is asked for.
    pub change: Change,
}
