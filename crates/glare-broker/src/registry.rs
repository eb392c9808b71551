//! Who is connected: channels, their streams and resume buffers, sessions and list
//! watchers, behind the [`Registry`] trait.
//!
//! The in-memory [`MemoryRegistry`] is the only implementation today. The trait is cut
//! so that a multi-node registry (a Redis backplane) changes *where* a step runs, not
//! what the HTTP layer does: [`Registry::send`] first resolves the target to its host
//! channel ([`Registry::resolve`]), then hands the message to that channel. On several
//! nodes the host channel may live on another node; the send then becomes one publish
//! to that node, which calls [`Registry::deliver`] on its own registry, and nothing
//! above the trait changes.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use glare_proto::{
    broker::{
        ChannelAuth, CreateSession, ErrorBody, ErrorCode, GapEvent, Json, Limits, ListEntry,
        SessionInfo, UpdateSession,
    },
    filter::{Filter, Tag},
};
use rand::{Rng as _, TryRngCore as _, distr::Alphanumeric, rngs::OsRng};
use tokio::sync::mpsc;

/// An error with, for `rate_limited`, the time to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Code and text.
    pub body: ErrorBody,
    /// For `rate_limited` and `unavailable`: how long until trying again may pass.
    pub retry_after: Option<Duration>,
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self {
            body,
            retry_after: None,
        }
    }
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody::new(code, message).into()
    }

    /// A 503: the shared registry is unreachable; `why` says what failed.
    pub fn unavailable(why: impl fmt::Display) -> Self {
        Self {
            body: ErrorBody::new(
                ErrorCode::Unavailable,
                format!(
                    "the broker's shared registry (Redis) is unavailable ({why}); retry shortly"
                ),
            ),
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        self.body.error.status()
    }

    /// The error code string.
    pub fn code(&self) -> String {
        self.body.error.to_string()
    }
}

/// Length of generated ids and keys: 24 alphanumerics, about 143 bits.
pub const ID_LEN: usize = 24;

/// A fresh id or key: [`ID_LEN`] ASCII letters and digits from the OS's CSPRNG.
pub fn new_id() -> String {
    // The OS random source failing is not recoverable; `unwrap_err` panics on it.
    let mut rng = OsRng.unwrap_err();
    (&mut rng)
        .sample_iter(Alphanumeric)
        .take(ID_LEN)
        .map(char::from)
        .collect()
}

/// Constant-time equality of two secrets (the time depends on the lengths only).
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a stream ended, as seen by the stream's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// Still running (or the client went away).
    None,
    /// A newer stream took the channel.
    Replaced,
    /// The channel was closed.
    Closed,
    /// The stream fell too far behind; the client should resume.
    Overflow,
}

/// Shared flag naming why a stream's sender went away.
#[derive(Debug, Default)]
pub struct EndFlag(AtomicU8);

impl EndFlag {
    pub(crate) fn set(&self, reason: EndReason) {
        let v = match reason {
            EndReason::None => 0,
            EndReason::Replaced => 1,
            EndReason::Closed => 2,
            EndReason::Overflow => 3,
        };
        self.0.store(v, Ordering::Release);
    }

    /// The reason set, if any.
    pub fn get(&self) -> EndReason {
        match self.0.load(Ordering::Acquire) {
            1 => EndReason::Replaced,
            2 => EndReason::Closed,
            3 => EndReason::Overflow,
            _ => EndReason::None,
        }
    }
}

/// One message for a channel: its sequence number and the `message` event's data,
/// `{"origin":…,"target":…,"message":…}`.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Per-channel sequence number.
    pub id: u64,
    /// The event data (JSON).
    pub data: Arc<str>,
}

/// A resume request: `cid`, `key` and the last id the client has seen.
#[derive(Clone, Debug)]
pub struct Resume {
    /// The channel (and its key).
    pub auth: ChannelAuth,
    /// Last id seen (0: none).
    pub last_event_id: u64,
}

/// A stream attached to a channel: what to send first, then live deliveries.
#[derive(Debug)]
pub struct Attachment {
    /// The channel's credentials (the `channel` event).
    pub auth: ChannelAuth,
    /// Ids that cannot be replayed, if any.
    pub gap: Option<GapEvent>,
    /// Buffered messages after the resume point, in order.
    pub replay: Vec<Delivery>,
    /// Live messages.
    pub rx: mpsc::Receiver<Delivery>,
    /// Why `rx` ended, once it has.
    pub end: Arc<EndFlag>,
    /// Detaches the stream from its channel when dropped (starting the grace period).
    pub guard: DetachGuard,
}

/// Detaches a stream from its channel when dropped.
pub struct DetachGuard(Option<Box<dyn FnOnce() + Send + Sync>>);

impl fmt::Debug for DetachGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DetachGuard")
    }
}

impl DetachGuard {
    pub(crate) fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for DetachGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// One change seen by a list watcher.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// Upsert: the `add` event's data.
    Add(Arc<str>),
    /// The `remove` event's data.
    Remove(Arc<str>),
}

/// A live list watch.
#[derive(Debug)]
pub struct Watch {
    /// The sessions matching now (`add` data, JSON).
    pub initial: Vec<Arc<str>>,
    /// Later changes. Ends if the watcher falls too far behind.
    pub rx: mpsc::Receiver<WatchEvent>,
    /// Unregisters the watcher when dropped.
    pub guard: DetachGuard,
}

/// Who is sending.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// Over HTTP: an origin and the key of its channel.
    Keyed {
        /// cid or sid.
        origin: &'a str,
        /// The owning channel's key.
        key: &'a str,
    },
    /// Over a WebSocket: an origin that must belong to the socket's channel.
    Socket {
        /// cid or sid.
        origin: &'a str,
        /// The socket's channel.
        cid: &'a str,
    },
}

/// Where a target lives.
#[derive(Debug)]
pub enum Location {
    /// On this node: the host channel's id.
    Local(String),
}

/// Gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open channels.
    pub channels: u64,
    /// Sessions.
    pub sessions: u64,
    /// List watchers.
    pub watchers: u64,
    /// Messages replayed on resume so far (a counter).
    pub replays: u64,
}

/// The broker's state. Methods never block for long (no I/O in the in-memory one).
pub trait Registry: Send + Sync + fmt::Debug + 'static {
    /// Opens a new channel (`None`) or re-attaches to one; the new stream replaces any
    /// old one. A rejected resume leaves a live stream alone.
    fn open(&self, resume: Option<Resume>) -> Result<Attachment, ApiError>;
    /// Closes a channel at once, ending its stream.
    fn close_channel(&self, auth: &ChannelAuth) -> Result<(), ApiError>;
    /// Creates a session (validated request); returns its sid.
    fn create_session(&self, req: CreateSession) -> Result<String, ApiError>;
    /// Updates a session (validated request).
    fn update_session(&self, sid: &str, req: UpdateSession) -> Result<(), ApiError>;
    /// Removes a session.
    fn close_session(&self, sid: &str, auth: &ChannelAuth) -> Result<(), ApiError>;
    /// Finds the channel hosting a cid or sid.
    fn resolve(&self, target: &str) -> Option<Location>;
    /// Appends a message to a local channel's stream and buffer.
    fn deliver(
        &self,
        cid: &str,
        origin: &str,
        target: &str,
        message: &str,
    ) -> Result<u64, ApiError>;
    /// Checks the origin (403), the target (404) and the rate (429), then delivers.
    fn send(&self, target: &str, origin: Origin<'_>, message: &str) -> Result<(), ApiError>;
    /// The listed sessions matching `filter` (`add` data, JSON).
    fn list(&self, filter: &Filter) -> Vec<Arc<str>>;
    /// Starts a live list watch.
    fn watch(&self, filter: Filter) -> Watch;
    /// Closes channels whose stream has been gone for longer than the grace period.
    fn sweep(&self, now: Instant);
    /// Ends a channel's current stream as if the connection dropped (tests, admin).
    fn disconnect(&self, cid: &str) -> bool;
    /// Gauges.
    fn stats(&self) -> Stats;
}

struct Channel {
    cid: String,
    key: String,
    state: Mutex<ChannelState>,
}

struct Holder {
    tx: mpsc::Sender<Delivery>,
    end: Arc<EndFlag>,
    generation: u64,
}

struct ChannelState {
    closed: bool,
    last_id: u64,
    buffer: VecDeque<Delivery>,
    holder: Option<Holder>,
    generation: u64,
    detached_at: Option<Instant>,
    sessions: Vec<String>,
    tokens: f64,
    refilled: Instant,
}

impl ChannelState {
    fn end_holder(&mut self, reason: EndReason, now: Instant) {
        if let Some(h) = self.holder.take() {
            h.end.set(reason);
            self.detached_at = Some(now);
        }
    }
}

struct Session {
    host: Arc<Channel>,
    tags: Vec<Tag>,
    metadata: Json,
    list: bool,
    /// The `add` data, kept ready.
    entry: Arc<str>,
}

impl Session {
    fn listed_by(&self, filter: &Filter) -> bool {
        self.list && filter.matches(&self.tags)
    }
}

struct Watcher {
    filter: Filter,
    tx: mpsc::Sender<WatchEvent>,
}

#[derive(Default)]
struct Maps {
    channels: HashMap<String, Arc<Channel>>,
    sessions: HashMap<String, Session>,
    watchers: HashMap<u64, Watcher>,
    next_watcher: u64,
}

/// Queue length of one list watcher before it is dropped as too slow.
const WATCH_QUEUE: usize = 4096;

/// The in-memory registry: one map lock for ids, one lock per channel for its stream,
/// buffer and rate; the relay path takes the map lock briefly and the target channel's
/// lock once.
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    maps: Mutex<Maps>,
    /// Messages replayed on resume (the `glare_resume_replays_total` counter).
    replays: AtomicU64,
}

impl fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn entry_json(sid: &str, tags: &[Tag], metadata: &Json) -> Arc<str> {
    let entry = ListEntry {
        sid: sid.to_owned(),
        session: SessionInfo {
            tags: tags.to_vec(),
            metadata: metadata.clone(),
        },
    };
    // Strings, tags and a RawValue always serialize.
    serde_json::to_string(&entry).unwrap_or_default().into()
}

pub(crate) fn remove_json(sid: &str) -> Arc<str> {
    format!(r#"{{"sid":"{sid}"}}"#).into()
}

pub(crate) fn not_found_channel() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such channel (unknown, expired or closed)",
    )
}

pub(crate) fn wrong_key() -> ApiError {
    ApiError::new(ErrorCode::Forbidden, "the key does not own this channel")
}

impl MemoryRegistry {
    /// An empty registry with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                maps: Mutex::new(Maps::default()),
                replays: AtomicU64::new(0),
            }),
        }
    }

    fn channel(&self, cid: &str) -> Option<Arc<Channel>> {
        lock(&self.inner.maps).channels.get(cid).cloned()
    }

    fn authed(&self, auth: &ChannelAuth) -> Result<Arc<Channel>, ApiError> {
        let ch = self.channel(&auth.cid).ok_or_else(not_found_channel)?;
        if !ct_eq(&ch.key, &auth.key) {
            return Err(wrong_key());
        }
        Ok(ch)
    }

    fn attach(&self, ch: &Arc<Channel>, st: &mut ChannelState, last: u64) -> Attachment {
        let now = Instant::now();
        st.end_holder(EndReason::Replaced, now);
        let replay: Vec<Delivery> = st.buffer.iter().filter(|d| d.id > last).cloned().collect();
        let gap = if last < st.last_id {
            let first = replay.first().map_or(st.last_id + 1, |d| d.id);
            (first > last + 1).then_some(GapEvent {
                from: last + 1,
                to: first - 1,
            })
        } else {
            None
        };
        self.inner
            .replays
            .fetch_add(replay.len() as u64, Ordering::Relaxed);
        // Room for a whole buffer's worth of live messages; beyond that the stream is
        // ended and the client resumes from the buffer.
        let (tx, rx) = mpsc::channel(self.inner.limits.buffer.max(16));
        let end = Arc::new(EndFlag::default());
        st.generation += 1;
        let generation = st.generation;
        st.holder = Some(Holder {
            tx,
            end: Arc::clone(&end),
            generation,
        });
        st.detached_at = None;
        let weak = Arc::downgrade(ch);
        let guard = DetachGuard(Some(Box::new(move || detach(&weak, generation))));
        Attachment {
            auth: ChannelAuth {
                cid: ch.cid.clone(),
                key: ch.key.clone(),
            },
            gap,
            replay,
            rx,
            end,
            guard,
        }
    }

    /// Removes a channel and its sessions; the maps lock is held by the caller.
    fn close_locked(&self, maps: &mut Maps, ch: &Arc<Channel>) {
        maps.channels.remove(&ch.cid);
        let sids = {
            let mut st = lock(&ch.state);
            st.closed = true;
            st.end_holder(EndReason::Closed, Instant::now());
            st.buffer.clear();
            std::mem::take(&mut st.sessions)
        };
        for sid in sids {
            if let Some(s) = maps.sessions.remove(&sid) {
                notify(maps, &sid, Some(&s), None);
            }
        }
        tracing::debug!(cid = %ch.cid, "channel closed");
    }

    /// Takes one token from the sending channel's bucket.
    fn take_token(&self, ch: &Channel) -> Result<(), ApiError> {
        let limits = &self.inner.limits;
        let rate = f64::from(limits.rate_per_sec.max(1));
        let burst = f64::from(limits.rate_burst.max(1));
        let mut st = lock(&ch.state);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(st.refilled).as_secs_f64();
        st.tokens = (st.tokens + elapsed * rate).min(burst);
        st.refilled = now;
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - st.tokens) / rate);
            Err(ApiError {
                body: ErrorBody::new(
                    ErrorCode::RateLimited,
                    format!(
                        "the sending channel is over its rate of {}/s (burst {})",
                        limits.rate_per_sec, limits.rate_burst
                    ),
                ),
                retry_after: Some(wait),
            })
        }
    }
}

fn detach(weak: &Weak<Channel>, generation: u64) {
    let Some(ch) = weak.upgrade() else { return };
    let mut st = lock(&ch.state);
    if st
        .holder
        .as_ref()
        .is_some_and(|h| h.generation == generation)
    {
        st.holder = None;
        st.detached_at = Some(Instant::now());
        tracing::debug!(cid = %ch.cid, "stream detached; grace period starts");
    }
}

/// Tells every watcher about a session going from `old` to `new`.
fn notify(maps: &mut Maps, sid: &str, old: Option<&Session>, new: Option<&Session>) {
    let mut dead = Vec::new();
    for (&id, w) in &maps.watchers {
        let was = old.is_some_and(|s| s.listed_by(&w.filter));
        let is = new.is_some_and(|s| s.listed_by(&w.filter));
        let event = match (was, is, new) {
            (_, true, Some(s)) => {
                let changed = old.is_none_or(|o| !Arc::ptr_eq(&o.entry, &s.entry));
                if was && !changed {
                    continue;
                }
                WatchEvent::Add(Arc::clone(&s.entry))
            }
            (true, false, _) => WatchEvent::Remove(remove_json(sid)),
            _ => continue,
        };
        if w.tx.try_send(event).is_err() {
            dead.push(id);
        }
    }
    for id in dead {
        // Too slow (or gone): dropping the sender ends its stream.
        maps.watchers.remove(&id);
    }
}

impl Registry for MemoryRegistry {
    fn open(&self, resume: Option<Resume>) -> Result<Attachment, ApiError> {
        match resume {
            None => {
                let ch = Arc::new(Channel {
                    cid: new_id(),
                    key: new_id(),
                    state: Mutex::new(ChannelState {
                        closed: false,
                        last_id: 0,
                        buffer: VecDeque::new(),
                        holder: None,
                        generation: 0,
                        detached_at: None,
                        sessions: Vec::new(),
                        tokens: f64::from(self.inner.limits.rate_burst),
                        refilled: Instant::now(),
                    }),
                });
                let mut maps = lock(&self.inner.maps);
                let mut st = lock(&ch.state);
                let att = self.attach(&ch, &mut st, 0);
                drop(st);
                maps.channels.insert(ch.cid.clone(), Arc::clone(&ch));
                tracing::debug!(cid = %ch.cid, "channel opened");
                Ok(att)
            }
            Some(r) => {
                let ch = self.authed(&r.auth)?;
                let mut st = lock(&ch.state);
                if st.closed {
                    return Err(not_found_channel());
                }
                if r.last_event_id > st.last_id {
                    return Err(ErrorBody::bad_request(format!(
                        "Last-Event-ID {} is above the last id this channel has sent ({})",
                        r.last_event_id, st.last_id
                    ))
                    .into());
                }
                let att = self.attach(&ch, &mut st, r.last_event_id);
                tracing::debug!(cid = %ch.cid, last = r.last_event_id, replay = att.replay.len(), gap = ?att.gap, "channel resumed");
                Ok(att)
            }
        }
    }

    fn close_channel(&self, auth: &ChannelAuth) -> Result<(), ApiError> {
        let ch = self.authed(auth)?;
        let mut maps = lock(&self.inner.maps);
        if !maps.channels.contains_key(&ch.cid) {
            return Err(not_found_channel());
        }
        self.close_locked(&mut maps, &ch);
        Ok(())
    }

    fn create_session(&self, req: CreateSession) -> Result<String, ApiError> {
        let ch = self.authed(&ChannelAuth {
            cid: req.cid,
            key: req.key,
        })?;
        let mut maps = lock(&self.inner.maps);
        let sid = new_id();
        {
            let mut st = lock(&ch.state);
            if st.closed {
                return Err(not_found_channel());
            }
            let max = self.inner.limits.max_sessions_per_channel;
            if st.sessions.len() >= max {
                return Err(ApiError::new(
                    ErrorCode::LimitReached,
                    format!("this channel already hosts {max} sessions, the most allowed"),
                ));
            }
            st.sessions.push(sid.clone());
        }
        let session = Session {
            host: Arc::clone(&ch),
            entry: entry_json(&sid, &req.tags, &req.metadata),
            tags: req.tags,
            metadata: req.metadata,
            list: req.list,
        };
        notify(&mut maps, &sid, None, Some(&session));
        maps.sessions.insert(sid.clone(), session);
        tracing::debug!(cid = %ch.cid, sid = %sid, "session created");
        Ok(sid)
    }

    fn update_session(&self, sid: &str, req: UpdateSession) -> Result<(), ApiError> {
        let ch = self.authed(&ChannelAuth {
            cid: req.cid,
            key: req.key,
        })?;
        let mut maps = lock(&self.inner.maps);
        let Some(old) = maps.sessions.get(sid) else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such session"));
        };
        if !Arc::ptr_eq(&old.host, &ch) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only the session's host channel may change it",
            ));
        }
        let v = req.values;
        let tags = v.tags.unwrap_or_else(|| old.tags.clone());
        let metadata = v.metadata.unwrap_or_else(|| old.metadata.clone());
        let content_changed = tags != old.tags || metadata.get() != old.metadata.get();
        let new = Session {
            host: Arc::clone(&old.host),
            entry: if content_changed {
                entry_json(sid, &tags, &metadata)
            } else {
                Arc::clone(&old.entry)
            },
            tags,
            metadata,
            list: v.list.unwrap_or(old.list),
        };
        let old = maps.sessions.remove(sid);
        notify(&mut maps, sid, old.as_ref(), Some(&new));
        maps.sessions.insert(sid.to_owned(), new);
        tracing::debug!(cid = %ch.cid, sid = %sid, "session updated");
        Ok(())
    }

    fn close_session(&self, sid: &str, auth: &ChannelAuth) -> Result<(), ApiError> {
        let ch = self.authed(auth)?;
        let mut maps = lock(&self.inner.maps);
        let Some(s) = maps.sessions.get(sid) else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such session"));
        };
        if !Arc::ptr_eq(&s.host, &ch) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only the session's host channel may close it",
            ));
        }
        let s = maps.sessions.remove(sid);
        lock(&ch.state).sessions.retain(|x| x != sid);
        notify(&mut maps, sid, s.as_ref(), None);
        tracing::debug!(cid = %ch.cid, sid = %sid, "session closed");
        Ok(())
    }

    fn resolve(&self, target: &str) -> Option<Location> {
        let maps = lock(&self.inner.maps);
        if maps.channels.contains_key(target) {
            return Some(Location::Local(target.to_owned()));
        }
        maps.sessions
            .get(target)
            .map(|s| Location::Local(s.host.cid.clone()))
    }

    fn deliver(
        &self,
        cid: &str,
        origin: &str,
        target: &str,
        message: &str,
    ) -> Result<u64, ApiError> {
        let ch = self
            .channel(cid)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such target"))?;
        deliver_to(&ch, &self.inner.limits, origin, target, message)
    }

    fn send(&self, target: &str, origin: Origin<'_>, message: &str) -> Result<(), ApiError> {
        let (origin_id, from, to) = {
            let maps = lock(&self.inner.maps);
            let origin_id = match origin {
                Origin::Keyed { origin, .. } | Origin::Socket { origin, .. } => origin,
            };
            let from = maps
                .channels
                .get(origin_id)
                .or_else(|| maps.sessions.get(origin_id).map(|s| &s.host))
                .cloned();
            let to = maps
                .channels
                .get(target)
                .or_else(|| maps.sessions.get(target).map(|s| &s.host))
                .cloned();
            (origin_id, from, to)
        };
        let owned = match (&from, origin) {
            (None, _) => false,
            (Some(ch), Origin::Keyed { key, .. }) => ct_eq(&ch.key, key),
            (Some(ch), Origin::Socket { cid, .. }) => ch.cid == cid,
        };
        let Some(from) = from.filter(|_| owned) else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the origin does not exist or the key does not own it",
            ));
        };
        let Some(to) = to else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such target"));
        };
        self.take_token(&from)?;
        deliver_to(&to, &self.inner.limits, origin_id, target, message).map(drop)
    }

    fn list(&self, filter: &Filter) -> Vec<Arc<str>> {
        let maps = lock(&self.inner.maps);
        maps.sessions
            .values()
            .filter(|s| s.listed_by(filter))
            .map(|s| Arc::clone(&s.entry))
            .collect()
    }

    fn watch(&self, filter: Filter) -> Watch {
        let mut maps = lock(&self.inner.maps);
        let initial = maps
            .sessions
            .values()
            .filter(|s| s.listed_by(&filter))
            .map(|s| Arc::clone(&s.entry))
            .collect();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let id = maps.next_watcher;
        maps.next_watcher += 1;
        maps.watchers.insert(id, Watcher { filter, tx });
        let weak = Arc::downgrade(&self.inner);
        let guard = DetachGuard(Some(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                lock(&inner.maps).watchers.remove(&id);
            }
        })));
        Watch { initial, rx, guard }
    }

    fn sweep(&self, now: Instant) {
        let grace = self.inner.limits.grace;
        let mut maps = lock(&self.inner.maps);
        let expired: Vec<Arc<Channel>> = maps
            .channels
            .values()
            .filter(|ch| {
                let st = lock(&ch.state);
                st.holder.is_none()
                    && st
                        .detached_at
                        .is_some_and(|t| now.saturating_duration_since(t) > grace)
            })
            .cloned()
            .collect();
        for ch in expired {
            tracing::debug!(cid = %ch.cid, "grace period over");
            self.close_locked(&mut maps, &ch);
        }
    }

    fn disconnect(&self, cid: &str) -> bool {
        let Some(ch) = self.channel(cid) else {
            return false;
        };
        let mut st = lock(&ch.state);
        let had = st.holder.is_some();
        st.end_holder(EndReason::Overflow, Instant::now());
        had
    }

    fn stats(&self) -> Stats {
        let maps = lock(&self.inner.maps);
        Stats {
            channels: maps.channels.len() as u64,
            sessions: maps.sessions.len() as u64,
            watchers: maps.watchers.len() as u64,
            replays: self.inner.replays.load(Ordering::Relaxed),
        }
    }
}

fn deliver_to(
    ch: &Channel,
    limits: &Limits,
    origin: &str,
    target: &str,
    message: &str,
) -> Result<u64, ApiError> {
    // Ids are ASCII letters and digits: no escaping needed.
    let data: Arc<str> =
        format!(r#"{{"origin":"{origin}","target":"{target}","message":{message}}}"#).into();
    let mut st = lock(&ch.state);
    if st.closed {
        return Err(ApiError::new(ErrorCode::NotFound, "no such target"));
    }
    st.last_id += 1;
    let d = Delivery {
        id: st.last_id,
        data,
    };
    if limits.buffer > 0 {
        if st.buffer.len() >= limits.buffer {
            st.buffer.pop_front();
        }
        st.buffer.push_back(d.clone());
    }
    let id = d.id;
    let overflow = st
        .holder
        .as_ref()
        .is_some_and(|h| h.tx.try_send(d).is_err());
    if overflow {
        tracing::debug!(cid = %ch.cid, "stream too slow or gone; ending it");
        st.end_holder(EndReason::Overflow, Instant::now());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_and_alphanumeric() {
        let a = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "ab"));
        assert!(ct_eq("", ""));
    }
}
