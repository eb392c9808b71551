//! [`Connection`]: the user side of one link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use glare_negotiate::Role;
use glare_proto::signal::Signal;
use glare_rtc::ChannelOptions;
use glare_udp::ConnectionHandle;
use tokio::sync::{Mutex, mpsc, watch};

use crate::channel::DataChannel;
use crate::media::Track;
use crate::transport::{Link, NewChannel, NewTrack, State, Status};
use crate::{Error, ErrorKind};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Counters of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams received from the peer.
    pub datagrams_in: u64,
    /// Datagrams sent to the peer.
    pub datagrams_out: u64,
    /// Bytes in those received datagrams.
    pub bytes_in: u64,
    /// Bytes in those sent datagrams.
    pub bytes_out: u64,
    /// Data-channel messages received (every channel).
    pub messages_in: u64,
    /// Data-channel messages written.
    pub messages_out: u64,
    /// Payload bytes of the messages received.
    pub message_bytes_in: u64,
    /// Payload bytes of the messages written.
    pub message_bytes_out: u64,
    /// Offers sent.
    pub offers_sent: u64,
    /// Answers sent.
    pub answers_sent: u64,
    /// Answers to this side's offers applied (completed renegotiations started here).
    pub answers_applied: u64,
    /// Own offers rolled back (the polite side of a glare race).
    pub rollbacks: u64,
    /// Colliding offers ignored (the impolite side of a glare race).
    pub ignored_offers: u64,
    /// ICE restarts completed on this link (asked by either side: after a lost path,
    /// or when this endpoint's NAT re-mapped its socket).
    pub ice_restarts: u64,
    /// Signals sent over the in-band `glare-signal` channel.
    pub signals_sent_in_band: u64,
    /// Signals received over the in-band `glare-signal` channel.
    pub signals_received_in_band: u64,
    /// Media frames written.
    pub frames_sent: u64,
    /// Media frames received.
    pub frames_received: u64,
    /// Round-trip time of the latest consent check on the selected pair.
    pub rtt: Option<Duration>,
    /// The selected candidate pair `(local, remote)`, as of the latest refresh.
    pub selected_pair: Option<(SocketAddr, SocketAddr)>,
    /// The selected candidate pair with its candidate types, as of the latest refresh
    /// (refreshed about once a second, so `None` for a moment after connecting).
    pub candidate_pair: Option<CandidatePair>,
}

/// An ICE candidate type, named as in SDP (`typ host` …; `Display` prints that name).
pub use glare_proto::sdp::CandidateKind as CandidateType;

fn candidate_type(kind: glare_rtc::str0m::CandidateKind) -> CandidateType {
    use glare_rtc::str0m::CandidateKind as K;
    match kind {
        K::Host => CandidateType::Host,
        K::ServerReflexive => CandidateType::ServerReflexive,
        K::PeerReflexive => CandidateType::PeerReflexive,
        K::Relayed => CandidateType::Relay,
    }
}

/// The ICE candidate pair a link uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CandidatePair {
    /// The local candidate's address.
    pub local: SocketAddr,
    /// The remote candidate's address.
    pub remote: SocketAddr,
    /// The local candidate's type (peer-reflexive when this side never added it).
    pub local_type: CandidateType,
    /// The remote candidate's type (peer-reflexive when it was never signalled).
    pub remote_type: CandidateType,
}

impl From<glare_rtc::CandidatePair> for CandidatePair {
    fn from(p: glare_rtc::CandidatePair) -> Self {
        Self {
            local: p.local,
            remote: p.remote,
            local_type: p
                .local_kind
                .map_or(CandidateType::PeerReflexive, candidate_type),
            remote_type: candidate_type(p.remote_kind),
        }
    }
}

/// One peer-to-peer link: its state and role, its data channels.
///
/// Cheap to clone: every clone talks to the same link (which lives in the UDP
/// driver's reactor task). [`accept_channel`](Self::accept_channel) hands each
/// channel the peer opens to exactly one caller.
#[derive(Clone, Debug)]
pub struct Connection {
    id: u64,
    pub(crate) handle: ConnectionHandle<Link>,
    status: watch::Receiver<Status>,
    incoming: Arc<Mutex<mpsc::UnboundedReceiver<NewChannel>>>,
    incoming_tracks: Arc<Mutex<mpsc::UnboundedReceiver<NewTrack>>>,
    over: Arc<AtomicBool>,
    remote: Option<Arc<str>>,
    keep: Option<KeepAlive>,
}

/// Something a connection keeps alive (the peer of [`crate::connect`]).
#[derive(Clone)]
struct KeepAlive(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepAlive")
    }
}

impl Connection {
    pub(crate) fn new(
        handle: ConnectionHandle<Link>,
        status: watch::Receiver<Status>,
        incoming: mpsc::UnboundedReceiver<NewChannel>,
        incoming_tracks: mpsc::UnboundedReceiver<NewTrack>,
        over: Arc<AtomicBool>,
    ) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            handle,
            status,
            incoming: Arc::new(Mutex::new(incoming)),
            incoming_tracks: Arc::new(Mutex::new(incoming_tracks)),
            over,
            remote: None,
            keep: None,
        }
    }

    pub(crate) fn keep_alive(mut self, what: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.keep = Some(KeepAlive(what));
        self
    }

    pub(crate) fn with_remote(mut self, remote: &str) -> Self {
        self.remote = Some(Arc::from(remote));
        self
    }

    /// A number unique to this link within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's broker address (its sid or cid) for links made by a
    /// [`Peer`](crate::Peer); `None` for bare [`Endpoint`](crate::transport::Endpoint)
    /// links.
    pub fn remote(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// Starts the link as the side that offers first (bare endpoint links only; a
    /// [`Peer`](crate::Peer) dials for you).
    pub async fn dial(&self) -> Result<(), Error> {
        self.handle.call(|link, now| link.dial(now)).await?
    }

    /// Hands the link a signal from the other side (bare endpoint links only).
    pub async fn handle_signal(&self, signal: Signal) -> Result<(), Error> {
        self.handle
            .call(move |link, now| link.handle_signal(now, signal))
            .await?;
        Ok(())
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.status.borrow().state.clone()
    }

    /// This side's role in offer collisions, once both tie-breakers are known.
    pub fn role(&self) -> Option<Role> {
        self.status.borrow().role
    }

    /// Time from the link's first signal (sent or received) to ICE and DTLS being up.
    pub fn connect_time(&self) -> Option<Duration> {
        self.status.borrow().connect_time
    }

    /// Time from the link's first signal (sent or received) to its in-band
    /// `glare-signal` channel being open (from then on, signals no longer need the
    /// broker). `None` until then.
    pub fn signal_time(&self) -> Option<Duration> {
        self.status.borrow().signal_time
    }

    /// Waits (at most `limit`) for the `glare-signal` channel to open and returns
    /// [`signal_time`](Self::signal_time). A peer that never opens one (a plain
    /// WebRTC client answering) gives `None` after `limit`.
    pub async fn signal_ready(&self, limit: Duration) -> Option<Duration> {
        let mut status = self.status.clone();
        let wait = status.wait_for(|s| s.signal_time.is_some() || s.state.is_over());
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(s)) => s.signal_time,
            _ => None,
        }
    }

    /// Whether the link is over (closed or failed). Lock-free.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Waits for the next state change and returns the new state (`None` once the
    /// link is gone and the state will not change again).
    pub async fn next_state(&mut self) -> Option<State> {
        self.status.changed().await.ok()?;
        Some(self.status.borrow_and_update().state.clone())
    }

    /// Waits until ICE and DTLS are up. Fails if the link ends first.
    pub async fn connected(&self) -> Result<(), Error> {
        let mut status = self.status.clone();
        let s = status
            .wait_for(|s| s.state == State::Connected || s.state.is_over())
            .await
            .map_err(|_| Error::closed("the link is gone"))?;
        match &s.state {
            State::Connected => Ok(()),
            other => Err(Error::closed(format!("link ended: {}", other.reason()))),
        }
    }

    /// Waits until the role is known (it always is once connected).
    pub async fn role_decided(&self) -> Result<Role, Error> {
        let mut status = self.status.clone();
        let s = status
            .wait_for(|s| s.role.is_some() || s.state.is_over())
            .await
            .map_err(|_| Error::closed("the link is gone"))?;
        s.role
            .ok_or_else(|| Error::closed(format!("link ended: {}", s.state.reason())))
    }

    /// Waits until the link is over; returns how it ended.
    pub async fn closed(&self) -> State {
        let mut status = self.status.clone();
        match status.wait_for(|s| s.state.is_over()).await {
            Ok(s) => s.state.clone(),
            Err(_) => State::Closed {
                by_remote: false,
                reason: Some("the link is gone".into()),
            },
        }
    }

    /// Opens a data channel. It can be written once open ([`DataChannel::send`]
    /// waits for that). Before the link's first exchange the channel rides in the
    /// offer (glare-proof: it survives a rollback); after, it opens in-band.
    pub async fn open_channel(
        &self,
        label: &str,
        options: ChannelOptions,
    ) -> Result<DataChannel, Error> {
        if label.len() > 1024 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a channel label is at most 1024 bytes",
            ));
        }
        let owned = label.to_owned();
        let (handle, rx, shared) = self
            .handle
            .call(move |link, _| link.open_channel(&owned, &options))
            .await??;
        Ok(DataChannel::new(
            self.handle.clone(),
            handle,
            label.to_owned(),
            rx,
            shared,
        ))
    }

    /// The next data channel the peer opened; `None` once the link is gone.
    pub async fn accept_channel(&self) -> Option<DataChannel> {
        let mut incoming = self.incoming.lock().await;
        let NewChannel {
            handle,
            label,
            rx,
            shared,
        } = incoming.recv().await?;
        Some(DataChannel::new(
            self.handle.clone(),
            handle,
            label,
            rx,
            shared,
        ))
    }

    /// Renegotiates with a new ICE generation (new credentials; the transport keeps
    /// running meanwhile). Glare-proof like every change: it goes out once the link is
    /// stable, and survives a rollback.
    pub async fn restart_ice(&self) -> Result<(), Error> {
        self.handle
            .call(|link, _| link.conn.request(glare_rtc::Change::IceRestart))
            .await?
            .map(|_| ())
            .map_err(|e| Error::with_source(ErrorKind::Closed, "cannot restart ICE", e))
    }

    /// Adds a media track (Opus for audio, VP8 for video). It is negotiated like any
    /// change (glare-proof); [`Track::opened`] tells when frames can be written.
    pub async fn add_track(
        &self,
        kind: crate::MediaKind,
        direction: crate::Direction,
    ) -> Result<Track, Error> {
        let (handle, rx, shared) = self
            .handle
            .call(move |link, _| link.add_track(kind, direction))
            .await??;
        Ok(Track::new(
            self.handle.clone(),
            handle,
            kind,
            false,
            shared,
            rx,
        ))
    }

    /// The next media track the peer added; `None` once the link is gone.
    pub async fn accept_track(&self) -> Option<Track> {
        let mut incoming = self.incoming_tracks.lock().await;
        let NewTrack {
            handle,
            kind,
            rx,
            shared,
        } = incoming.recv().await?;
        Some(Track::new(
            self.handle.clone(),
            handle,
            kind,
            true,
            shared,
            rx,
        ))
    }

    /// The local candidates the link offers now (host, server-reflexive, relay),
    /// oldest first: after a NAT re-mapped the socket, the stale ones are gone and
    /// the new ones added (see [`Endpoint`](crate::transport::Endpoint)).
    pub async fn local_candidates(&self) -> Result<Vec<(SocketAddr, CandidateType)>, Error> {
        Ok(self
            .handle
            .call(|link, _| {
                link.conn
                    .local_candidates()
                    .iter()
                    .map(|(a, k)| (*a, candidate_type(*k)))
                    .collect()
            })
            .await?)
    }

    /// The link's counters.
    pub async fn stats(&self) -> Result<Stats, Error> {
        Ok(self
            .handle
            .call(|link, _| {
                let c = link.counters;
                let n = link.conn.negotiator().stats();
                let r = link.conn.stats();
                Stats {
                    datagrams_in: c.datagrams_in,
                    datagrams_out: c.datagrams_out,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    messages_in: c.messages_in,
                    messages_out: c.messages_out,
                    message_bytes_in: c.message_bytes_in,
                    message_bytes_out: c.message_bytes_out,
                    offers_sent: n.offers_sent,
                    answers_sent: n.answers_sent,
                    answers_applied: n.answers_applied,
                    rollbacks: n.rollbacks,
                    ignored_offers: n.ignored_offers,
                    ice_restarts: n.ice_restarts,
                    signals_sent_in_band: r.signals_sent_in_band,
                    signals_received_in_band: r.signals_received_in_band,
                    frames_sent: r.frames_sent,
                    frames_received: r.frames_received,
                    rtt: r.rtt,
                    selected_pair: r.selected_pair.map(|p| (p.local, p.remote)),
                    candidate_pair: r.selected_pair.map(CandidatePair::from),
                }
            })
            .await?)
    }

    /// Ends the link: a `bye` with `reason` goes to the peer, the transport closes.
    /// Closing a link that is already over does nothing.
    pub async fn close(&self, reason: &str) {
        let reason = reason.to_owned();
        // Unknown connection: it is over already.
        let _ = self
            .handle
            .call(move |link, _| link.conn.close(Some(reason)))
            .await;
    }
}
