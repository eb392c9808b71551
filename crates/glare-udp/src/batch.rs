//! The send queue: datagrams written by connections into one buffer, grouped into GSO
//! batches (consecutive same-size datagrams to one destination from one source).

use std::net::{IpAddr, SocketAddr};

use crate::Ecn;
use crate::socket::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// One future `sendmsg`: `buf[start..end]`, datagrams of `segment_size` bytes (the
/// last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) destination: SocketAddr,
    pub(crate) src_ip: Option<IpAddr>,
    pub(crate) ecn: Option<Ecn>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) segment_size: usize,
    /// The last datagram is shorter than `segment_size`: nothing may follow it.
    pub(crate) sealed: bool,
}

impl Batch {
    pub(crate) fn segments(&self) -> usize {
        (self.end - self.start).div_ceil(self.segment_size)
    }
}

/// Datagrams waiting to be sent, and how they batch.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    /// The bytes of every queued datagram; connections append to it directly.
    pub(crate) buf: Vec<u8>,
    pub(crate) batches: Vec<Batch>,
}

impl SendQueue {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            batches: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Records `buf[start..]` (just written by a connection) as datagram(s) of
    /// `segment_size` bytes (`None`: one datagram) to `destination`. It joins the last
    /// batch when GSO allows (`max_segments > 1`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        start: usize,
        segment_size: Option<usize>,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
        ecn: Option<Ecn>,
        max_segments: usize,
    ) {
        let end = self.buf.len();
        let len = end - start;
        let single = segment_size.is_none_or(|s| s >= len);
        let max_segments = max_segments.clamp(1, MAX_GSO_SEGMENTS);
        if single
            && max_segments > 1
            && let Some(last) = self.batches.last_mut()
            && !last.sealed
            && last.end == start
            && last.destination == destination
            && last.src_ip == src_ip
            && last.ecn == ecn
            && len <= last.segment_size
            && last.segments() < max_segments
            && last.end - last.start + len <= MAX_GSO_BYTES
        {
            last.end = end;
            last.sealed = len < last.segment_size;
            return;
        }
        let segment_size = if single {
            len
        } else {
            segment_size.unwrap_or(len)
        };
        self.batches.push(Batch {
            destination,
            src_ip,
            ecn,
            start,
            end,
            segment_size,
            sealed: !len.is_multiple_of(segment_size),
        });
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.batches.clear();
    }
}

/// Splits a batch into the chunks one `sendmsg` can carry: at most `max_segments`
/// datagrams and [`MAX_GSO_BYTES`] bytes each. Yields `(start, end)` pairs.
pub(crate) fn chunks(batch: &Batch, max_segments: usize) -> impl Iterator<Item = (usize, usize)> {
    let per_send = max_segments
        .clamp(1, MAX_GSO_SEGMENTS)
        .min((MAX_GSO_BYTES / batch.segment_size).max(1));
    let step = per_send * batch.segment_size;
    let (start, end) = (batch.start, batch.end);
    (start..end)
        .step_by(step)
        .map(move |s| (s, (s + step).min(end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn push(q: &mut SendQueue, len: usize, port: u16, max: usize) {
        let start = q.buf.len();
        q.buf.resize(start + len, 0);
        q.push(start, None, addr(port), None, None, max);
    }

    #[test]
    fn same_size_same_destination_batches() {
        let mut q = SendQueue::default();
        for _ in 0..5 {
            push(&mut q, 1000, 1, 64);
        }
        push(&mut q, 500, 1, 64); // a shorter last segment joins, then seals
        push(&mut q, 500, 1, 64);
        push(&mut q, 1000, 2, 64); // another destination
        push(&mut q, 1200, 2, 64); // bigger: cannot join
        assert_eq!(q.batches.len(), 4);
        assert_eq!(q.batches[0].segments(), 6);
        assert_eq!(q.batches[0].segment_size, 1000);
        assert!(q.batches[0].sealed);
        assert_eq!(q.batches[1].segments(), 1);
        assert_eq!(q.batches[2].destination, addr(2));
        assert_eq!(q.batches[3].segment_size, 1200);
    }

    #[test]
    fn no_gso_means_one_datagram_per_batch() {
        let mut q = SendQueue::default();
        for _ in 0..5 {
            push(&mut q, 1000, 1, 1);
        }
        assert_eq!(q.batches.len(), 5);
    }

    #[test]
    fn caps_segments_and_bytes() {
        let mut q = SendQueue::default();
        for _ in 0..100 {
            push(&mut q, 100, 1, 64);
        }
        assert_eq!(q.batches.len(), 2);
        assert_eq!(q.batches[0].segments(), 64);
        let mut q = SendQueue::default();
        for _ in 0..100 {
            push(&mut q, 1400, 1, 64);
        }
        assert!(q.batches.iter().all(|b| b.end - b.start <= MAX_GSO_BYTES));
        assert_eq!(q.batches[0].segments(), MAX_GSO_BYTES / 1400);
    }

    #[test]
    fn chunks_split_oversized_batches() {
        let b = Batch {
            destination: addr(1),
            src_ip: None,
            ecn: None,
            start: 0,
            end: 10 * 1000 + 300,
            segment_size: 1000,
            sealed: true,
        };
        let c: Vec<_> = chunks(&b, 4).collect();
        assert_eq!(c, [(0, 4000), (4000, 8000), (8000, 10_300)]);
        let c: Vec<_> = chunks(&b, 1).collect();
        assert_eq!(c.len(), 11);
        assert_eq!(c[10], (10_000, 10_300));
    }
}
