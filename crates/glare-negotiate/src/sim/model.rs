//! A model SDP engine: tracks what a real engine would, and checks that the negotiator
//! drives it correctly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use glare_proto::signal::IceCandidate;

use crate::change::{Change, ChangeId, Direction, MediaKind, QueuedChange};
use crate::engine::SdpEngine;

/// One negotiated thing of the session, keyed by its owner's engine id and the
/// [`ChangeId`] that created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A data channel.
    Channel {
        /// Its label (sanitized to `[A-Za-z0-9_.-]`).
        label: String,
    },
    /// A media track.
    Media {
        /// Audio or video.
        kind: MediaKind,
        /// Direction, from the owner.
        direction: Direction,
        /// Stopped.
        stopped: bool,
    },
}

/// `(owner engine id, change id)`.
pub type ItemKey = (u32, u64);

/// Why the model engine refused a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A remote description or candidate is malformed (peer input).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A remote description disagrees with the session (peer input, or a bug that
    /// let the two sides diverge).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// The negotiator broke an engine-level invariant (always a bug; also recorded in
    /// [`ModelEngine::violations`]).
    #[error("invariant violated: {0}")]
    Invariant(String),
}

#[derive(Clone, Debug)]
struct PendingOffer {
    items: BTreeMap<ItemKey, Item>,
    carried: Vec<u64>,
    ufrag: String,
}

#[derive(Debug)]
struct Parsed {
    owner: u32,
    ufrag: String,
    items: BTreeMap<ItemKey, Item>,
    carried: Vec<ItemKey>,
}

/// The model engine. What a real SDP engine keeps (pending offer, negotiated session,
/// ICE generations, changes applied ahead of negotiation that a rollback does not
/// undo, as in str0m), plus logs and invariant checks:
///
/// - no offer created while one is pending, nor with an empty change list;
/// - every change applied by an earlier (rolled back) offer is passed again (nothing
///   lost to a rollback), unchanged;
/// - no change of its own offered again once negotiated, none logged twice (and a
///   remote offer carrying a change again is refused as a mismatch);
/// - no remote offer accepted while a local offer is pending (roll back first);
/// - no answer applied and no rollback without a pending offer;
/// - no candidate before a remote description or for another ICE generation than the
///   current remote one.
///
/// Its SDP is a small text format with real `a=ice-ufrag` lines and one
/// `a=x-item` line per session item, so the two sides' sessions can be compared.
#[derive(Clone, Debug)]
pub struct ModelEngine {
    id: u32,
    ufrag_counter: u32,
    local_ufrag: String,
    remote_ufrag: Option<String>,
    remote_owner: Option<u32>,
    pending: Option<PendingOffer>,
    negotiated: BTreeMap<ItemKey, Item>,
    applied: BTreeMap<u64, Change>,
    log: BTreeSet<ItemKey>,
    log_order: Vec<ItemKey>,
    candidates: BTreeMap<String, u32>,
    end_of_candidates: BTreeSet<String>,
    violations: Vec<String>,
    version: u64,
}

impl ModelEngine {
    /// An engine with a unique `id` (it names the owner of items and the ufrags).
    pub fn new(id: u32) -> Self {
        Self {
            id,
            ufrag_counter: 0,
            local_ufrag: format!("e{id}g0"),
            remote_ufrag: None,
            remote_owner: None,
            pending: None,
            negotiated: BTreeMap::new(),
            applied: BTreeMap::new(),
            log: BTreeSet::new(),
            log_order: Vec::new(),
            candidates: BTreeMap::new(),
            end_of_candidates: BTreeSet::new(),
            violations: Vec::new(),
            version: 0,
        }
    }

    /// This engine's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The current local ICE ufrag.
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// The current remote ICE ufrag.
    pub fn remote_ufrag(&self) -> Option<&str> {
        self.remote_ufrag.as_deref()
    }

    /// Whether an offer is pending.
    pub fn has_pending_offer(&self) -> bool {
        self.pending.is_some()
    }

    /// The negotiated session.
    pub fn negotiated(&self) -> &BTreeMap<ItemKey, Item> {
        &self.negotiated
    }

    /// Every change seen negotiated (own ones at answer, remote ones at offer), in
    /// order.
    pub fn negotiated_changes(&self) -> &[ItemKey] {
        &self.log_order
    }

    /// Whether the change `(owner, id)` was negotiated.
    pub fn was_negotiated(&self, owner: u32, id: ChangeId) -> bool {
        self.log.contains(&(owner, id.0))
    }

    /// Remote candidates (not end-of-candidates) applied for ICE generation `ufrag`.
    pub fn candidates_for(&self, ufrag: &str) -> u32 {
        self.candidates.get(ufrag).copied().unwrap_or(0)
    }

    /// Whether end-of-candidates was applied for ICE generation `ufrag`.
    pub fn end_of_candidates_for(&self, ufrag: &str) -> bool {
        self.end_of_candidates.contains(ufrag)
    }

    /// Invariant violations seen (empty when the negotiator behaved).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    fn violation(&mut self, message: String) -> ModelError {
        self.violations.push(message.clone());
        ModelError::Invariant(message)
    }

    fn log_change(&mut self, key: ItemKey) {
        if self.log.insert(key) {
            self.log_order.push(key);
        } else {
            self.violation(format!("change {}.{} negotiated twice", key.0, key.1));
        }
    }

    fn render(&mut self, ufrag: &str, items: &BTreeMap<ItemKey, Item>, carried: &[u64]) -> String {
        self.version += 1;
        let mut s = String::with_capacity(96 + 40 * (items.len() + carried.len()));
        let _ = write!(
            s,
            "v=0\r\no=- {} {} IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:{ufrag}\r\na=x-owner:{}\r\n",
            self.id, self.version, self.id
        );
        for ((owner, id), item) in items {
            let _ = match item {
                Item::Channel { label } => write!(s, "a=x-item:{owner}:{id}:c:{label}\r\n"),
                Item::Media {
                    kind,
                    direction,
                    stopped,
                } => write!(
                    s,
                    "a=x-item:{owner}:{id}:m:{}:{}\r\n",
                    match kind {
                        MediaKind::Audio => "audio",
                        MediaKind::Video => "video",
                    },
                    if *stopped {
                        "stopped"
                    } else {
                        direction.as_str()
                    }
                ),
            };
        }
        for id in carried {
            let _ = write!(s, "a=x-carry:{}:{id}\r\n", self.id);
        }
        s
    }

    fn parse(sdp: &str) -> Result<Parsed, ModelError> {
        let bad = |what: &str| ModelError::Malformed(what.to_owned());
        let mut owner = None;
        let mut ufrag = None;
        let mut items = BTreeMap::new();
        let mut carried = Vec::new();
        for line in sdp.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
                ufrag.get_or_insert_with(|| u.trim().to_owned());
            } else if let Some(o) = line.strip_prefix("a=x-owner:") {
                owner = Some(o.parse::<u32>().map_err(|_| bad("x-owner"))?);
            } else if let Some(rest) = line.strip_prefix("a=x-item:") {
                let mut f = rest.splitn(5, ':');
                let o = f.next().and_then(|v| v.parse::<u32>().ok());
                let id = f.next().and_then(|v| v.parse::<u64>().ok());
                let (Some(o), Some(id)) = (o, id) else {
                    return Err(bad("x-item key"));
                };
                let item = match (f.next(), f.next(), f.next()) {
                    (Some("c"), Some(label), None) => Item::Channel {
                        label: label.to_owned(),
                    },
                    (Some("m"), Some(kind), Some(dir)) => {
                        let kind = match kind {
                            "audio" => MediaKind::Audio,
                            "video" => MediaKind::Video,
                            _ => return Err(bad("x-item media kind")),
                        };
                        let (direction, stopped) = match Direction::from_attribute(dir) {
                            Some(direction) => (direction, false),
                            None if dir == "stopped" => (Direction::Inactive, true),
                            None => return Err(bad("x-item media direction")),
                        };
                        Item::Media {
                            kind,
                            direction,
                            stopped,
                        }
                    }
                    _ => return Err(bad("x-item")),
                };
                if items.insert((o, id), item).is_some() {
                    return Err(bad("duplicate x-item"));
                }
            } else if let Some(rest) = line.strip_prefix("a=x-carry:") {
                let mut f = rest.splitn(2, ':');
                let o = f.next().and_then(|v| v.parse::<u32>().ok());
                let id = f.next().and_then(|v| v.parse::<u64>().ok());
                let (Some(o), Some(id)) = (o, id) else {
                    return Err(bad("x-carry"));
                };
                carried.push((o, id));
            }
        }
        Ok(Parsed {
            owner: owner.ok_or_else(|| bad("no x-owner"))?,
            ufrag: ufrag.ok_or_else(|| bad("no ice-ufrag"))?,
            items,
            carried,
        })
    }

    fn check_owner(&self, owner: u32) -> Result<(), ModelError> {
        if owner == self.id {
            return Err(ModelError::Mismatch("own description reflected".into()));
        }
        match self.remote_owner {
            Some(o) if o != owner => Err(ModelError::Mismatch(format!(
                "description from engine {owner}, but the peer is {o}"
            ))),
            _ => Ok(()),
        }
    }

    fn apply_change(
        &mut self,
        items: &mut BTreeMap<ItemKey, Item>,
        qc: &QueuedChange,
    ) -> Result<bool, ModelError> {
        let key = (self.id, qc.id.0);
        match &qc.change {
            Change::OpenChannel { label } => {
                let label: String = label
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if items.insert(key, Item::Channel { label }).is_some() {
                    return Err(self.violation(format!("channel {} created twice", qc.id)));
                }
            }
            Change::AddMedia { kind, direction } => {
                let item = Item::Media {
                    kind: *kind,
                    direction: *direction,
                    stopped: false,
                };
                if items.insert(key, item).is_some() {
                    return Err(self.violation(format!("media {} created twice", qc.id)));
                }
            }
            Change::SetDirection { media, direction } => match items.get_mut(&(self.id, media.0)) {
                Some(Item::Media {
                    direction: d,
                    stopped: false,
                    ..
                }) => *d = *direction,
                _ => {
                    return Err(self.violation(format!(
                        "{}: set direction of unknown or stopped media {media}",
                        qc.id
                    )));
                }
            },
            Change::StopMedia { media } => match items.get_mut(&(self.id, media.0)) {
                Some(Item::Media {
                    stopped, direction, ..
                }) if !*stopped => {
                    // A stopped m-line has no direction (it renders as `stopped`).
                    *stopped = true;
                    *direction = Direction::Inactive;
                }
                _ => {
                    return Err(self.violation(format!(
                        "{}: stop of unknown or stopped media {media}",
                        qc.id
                    )));
                }
            },
            Change::IceRestart => return Ok(true),
        }
        Ok(false)
    }
}

impl SdpEngine for ModelEngine {
    type Error = ModelError;

    fn create_offer(&mut self, changes: &[QueuedChange]) -> Result<Option<String>, ModelError> {
        if self.pending.is_some() {
            return Err(self.violation("create_offer with an offer pending".into()));
        }
        if changes.is_empty() {
            return Err(self.violation(
                "offer with no changes (negotiation needed must come from the queue)".into(),
            ));
        }
        let lost: Vec<u64> = self
            .applied
            .keys()
            .filter(|id| !changes.iter().any(|q| q.id.0 == **id))
            .copied()
            .collect();
        if let Some(id) = lost.first() {
            return Err(self.violation(format!(
                "change #{id} applied by an earlier offer is missing from this one (lost after rollback)"
            )));
        }
        let mut items = self.negotiated.clone();
        let mut restart = false;
        for qc in changes {
            if self.log.contains(&(self.id, qc.id.0)) {
                return Err(
                    self.violation(format!("change {} offered again after negotiation", qc.id))
                );
            }
            if let Some(prev) = self.applied.get(&qc.id.0) {
                if *prev != qc.change {
                    return Err(self.violation(format!("change {} changed between offers", qc.id)));
                }
            } else {
                self.applied.insert(qc.id.0, qc.change.clone());
            }
            restart |= self.apply_change(&mut items, qc)?;
        }
        let ufrag = if restart {
            self.ufrag_counter += 1;
            format!("e{}g{}", self.id, self.ufrag_counter)
        } else {
            self.local_ufrag.clone()
        };
        let carried: Vec<u64> = changes.iter().map(|q| q.id.0).collect();
        let sdp = self.render(&ufrag, &items, &carried);
        self.pending = Some(PendingOffer {
            items,
            carried,
            ufrag,
        });
        Ok(Some(sdp))
    }

    fn accept_offer(&mut self, offer: &str) -> Result<String, ModelError> {
        if self.pending.is_some() {
            return Err(self.violation(
                "accept_offer with a local offer pending (the negotiator must roll back first)"
                    .into(),
            ));
        }
        let parsed = Self::parse(offer)?;
        self.check_owner(parsed.owner)?;
        for (key, item) in &self.negotiated {
            match parsed.items.get(key) {
                None => {
                    return Err(ModelError::Mismatch(format!(
                        "offer drops item {}.{}",
                        key.0, key.1
                    )));
                }
                Some(offered) if key.0 != parsed.owner && offered != item => {
                    return Err(ModelError::Mismatch(format!(
                        "offer changes item {}.{} it does not own",
                        key.0, key.1
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(key) = parsed
            .items
            .keys()
            .find(|k| k.0 != parsed.owner && !self.negotiated.contains_key(k))
        {
            return Err(ModelError::Mismatch(format!(
                "offer adds item {}.{} it does not own",
                key.0, key.1
            )));
        }
        if let Some(key) = parsed.carried.iter().find(|k| k.0 != parsed.owner) {
            return Err(ModelError::Mismatch(format!(
                "offer carries change {}.{} it does not own",
                key.0, key.1
            )));
        }
        if let Some(key) = parsed.carried.iter().find(|k| self.log.contains(k)) {
            // The peer offers a change again that this side already accepted: the two
            // sides disagree on what was negotiated.
            return Err(ModelError::Mismatch(format!(
                "offer carries change {}.{} again: negotiated twice",
                key.0, key.1
            )));
        }
        if self
            .remote_ufrag
            .as_ref()
            .is_some_and(|r| *r != parsed.ufrag)
        {
            // The offerer restarted ICE: the answerer restarts too (RFC 8839).
            self.ufrag_counter += 1;
            self.local_ufrag = format!("e{}g{}", self.id, self.ufrag_counter);
        }
        self.remote_ufrag = Some(parsed.ufrag);
        self.remote_owner = Some(parsed.owner);
        self.negotiated = parsed.items;
        for key in parsed.carried {
            self.log_change(key);
        }
        let ufrag = self.local_ufrag.clone();
        let items = self.negotiated.clone();
        Ok(self.render(&ufrag, &items, &[]))
    }

    fn accept_answer(&mut self, answer: &str) -> Result<(), ModelError> {
        let Some(pending) = self.pending.take() else {
            return Err(self.violation("answer applied without a pending offer".into()));
        };
        let parsed = match Self::parse(answer) {
            Ok(p) => p,
            Err(e) => {
                self.pending = Some(pending);
                return Err(e);
            }
        };
        if let Err(e) = self.check_owner(parsed.owner) {
            self.pending = Some(pending);
            return Err(e);
        }
        if parsed.items != pending.items {
            self.pending = Some(pending);
            return Err(ModelError::Mismatch(
                "answer's session differs from the offer's".into(),
            ));
        }
        let restarted = pending.ufrag != self.local_ufrag;
        if restarted
            && self.remote_ufrag.is_some()
            && self.remote_ufrag.as_deref() == Some(parsed.ufrag.as_str())
        {
            self.pending = Some(pending);
            return Err(ModelError::Mismatch(
                "answer to an ICE restart kept the old ufrag".into(),
            ));
        }
        self.local_ufrag = pending.ufrag;
        self.remote_ufrag = Some(parsed.ufrag);
        self.remote_owner = Some(parsed.owner);
        self.negotiated = pending.items;
        for id in pending.carried {
            self.applied.remove(&id);
            self.log_change((self.id, id));
        }
        Ok(())
    }

    fn rollback(&mut self) {
        if self.pending.take().is_none() {
            self.violation("rollback without a pending offer".into());
        }
    }

    fn add_remote_candidate(&mut self, candidate: &IceCandidate) -> Result<(), ModelError> {
        match &self.remote_ufrag {
            None => {
                return Err(self.violation("candidate before any remote description".into()));
            }
            Some(r) if *r != candidate.username_fragment => {
                return Err(self.violation(format!(
                    "candidate for ICE generation {:?}, current is {r:?}",
                    candidate.username_fragment
                )));
            }
            Some(_) => {}
        }
        if candidate.is_end_of_candidates() {
            self.end_of_candidates
                .insert(candidate.username_fragment.clone());
        } else if candidate.candidate.starts_with("candidate:") {
            *self
                .candidates
                .entry(candidate.username_fragment.clone())
                .or_default() += 1;
        } else {
            return Err(ModelError::Malformed("candidate line".into()));
        }
        Ok(())
    }
}
