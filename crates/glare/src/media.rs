//! [`Track`]: media tracks (Opus audio, VP8 video) on a link.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use glare_rtc::{MediaError, MediaKind, TrackHandle};
use glare_udp::ConnectionHandle;
use tokio::sync::mpsc;

use crate::transport::{CH_CLOSED, CH_OPEN, ChanShared, Link};
use crate::{Error, ErrorKind};

/// One received media frame (depayloaded: one Opus packet, one VP8 frame).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Frame {
    /// RTP time in the codec's clock, extended to 64 bits.
    pub rtp_time: u64,
    /// The codec's clock rate (48,000 for Opus, 90,000 for VP8).
    pub clock_rate: u32,
    /// The frame's bytes.
    pub data: Arc<[u8]>,
}

/// A media track: one this side added ([`Connection::add_track`]) or one the peer
/// added ([`Connection::accept_track`]).
///
/// [`Connection::add_track`]: crate::Connection::add_track
/// [`Connection::accept_track`]: crate::Connection::accept_track
#[derive(Debug)]
pub struct Track {
    conn: ConnectionHandle<Link>,
    handle: TrackHandle,
    kind: MediaKind,
    remote: bool,
    shared: Arc<ChanShared>,
    frames: mpsc::UnboundedReceiver<Frame>,
}

impl Track {
    pub(crate) fn new(
        conn: ConnectionHandle<Link>,
        handle: TrackHandle,
        kind: MediaKind,
        remote: bool,
        shared: Arc<ChanShared>,
        frames: mpsc::UnboundedReceiver<Frame>,
    ) -> Self {
        Self {
            conn,
            handle,
            kind,
            remote,
            shared,
            frames,
        }
    }

    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// Whether the peer added it.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// A number that identifies the track within its connection.
    pub fn id(&self) -> u64 {
        self.handle.get()
    }

    /// Whether it is negotiated and not ended.
    pub fn is_open(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == CH_OPEN
    }

    /// Waits until the track is negotiated (fails if it ends first).
    pub async fn opened(&self) -> Result<(), Error> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.state.load(Ordering::Acquire) {
                CH_OPEN => return Ok(()),
                CH_CLOSED => return Err(Error::closed("the track ended")),
                _ => {}
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// Writes one frame (`rtp_time` in the codec's clock: 48 kHz for Opus, 90 kHz
    /// for VP8); str0m packetizes, paces and encrypts it.
    pub async fn write_frame(&self, rtp_time: u64, data: &[u8]) -> Result<(), Error> {
        let h = self.handle;
        let data = data.to_vec();
        self.conn
            .call(move |link, now| link.conn.write_frame(h, now, rtp_time, &data))
            .await?
            .map_err(|e| match e {
                MediaError::NotSending(_) | MediaError::UnknownTrack(_) => {
                    Error::with_source(ErrorKind::Closed, "cannot write the frame", e)
                }
                e => Error::with_source(ErrorKind::InvalidInput, "cannot write the frame", e),
            })
    }

    /// The next frame received on this track; `None` once it (or the link) ended.
    pub async fn recv_frame(&mut self) -> Option<Frame> {
        self.frames.recv().await
    }

    /// Stops a track this side added (the peer sees it end).
    pub async fn remove(&self) -> Result<(), Error> {
        let h = self.handle;
        self.conn
            .call(move |link, _| link.conn.remove_track(h))
            .await?
            .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot remove the track", e))
    }
}
