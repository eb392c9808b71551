//! A simple test connection: datagrams `[tag u32][seq u32][bytes...]`, accepted by tag.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare_udp::{Connection, Datagram, Ecn, Transmit};
use tokio::sync::mpsc;

/// What a [`TestConn`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub tag: u32,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub ecn: Option<Ecn>,
    pub payload: Vec<u8>,
}

/// Sends what it is given, reports what it receives, optionally echoes it back.
pub struct TestConn {
    pub tag: u32,
    /// Send from this address (`None`: let the socket choose).
    pub local: Option<SocketAddr>,
    /// Send to this address (an echoing connection learns it from the first datagram).
    pub remote: Option<SocketAddr>,
    pub echo: bool,
    /// Waiting for `release`.
    pub held: VecDeque<(Vec<u8>, Option<Ecn>)>,
    pub outbox: VecDeque<(Vec<u8>, Option<Ecn>)>,
    pub events: mpsc::UnboundedSender<Received>,
    /// Send `outbox` only at this instant (a timer test), else at once.
    pub send_at: Option<Instant>,
    pub closed: bool,
}

impl TestConn {
    pub fn new(tag: u32, events: mpsc::UnboundedSender<Received>) -> Self {
        Self {
            tag,
            local: None,
            remote: None,
            echo: false,
            held: VecDeque::new(),
            outbox: VecDeque::new(),
            events,
            send_at: None,
            closed: false,
        }
    }

    /// Moves `n` held datagrams to the outbox.
    pub fn release(&mut self, n: usize) {
        for _ in 0..n {
            match self.held.pop_front() {
                Some(d) => self.outbox.push_back(d),
                None => break,
            }
        }
    }
}

/// A datagram for connection `tag`.
pub fn message(tag: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len.max(8));
    m.extend_from_slice(&tag.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(2_654_435_761) ^ tag;
    while m.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        m.push(x as u8);
    }
    m.truncate(len.max(8));
    m
}

impl Connection for TestConn {
    fn accepts(&self, d: &Datagram<'_>) -> bool {
        d.payload.len() >= 8 && d.payload[..4] == self.tag.to_be_bytes()
    }

    fn handle_datagram(&mut self, _now: Instant, d: Datagram<'_>) {
        if self.echo {
            self.remote.get_or_insert(d.source);
            self.outbox.push_back((d.payload.to_vec(), d.ecn));
        }
        let _ = self.events.send(Received {
            tag: self.tag,
            source: d.source,
            destination: d.destination,
            ecn: d.ecn,
            payload: d.payload.to_vec(),
        });
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.send_at.is_some_and(|at| now < at) {
            return None;
        }
        let remote = self.remote?;
        let (bytes, ecn) = self.outbox.pop_front()?;
        buf.extend_from_slice(&bytes);
        let mut t = Transmit::new(remote);
        if let Some(local) = self.local {
            t = t.with_source(local);
        }
        if let Some(ecn) = ecn {
            t = t.with_ecn(ecn);
        }
        Some(t)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.send_at.filter(|_| !self.outbox.is_empty())
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.send_at.is_some_and(|at| now >= at) {
            self.send_at = None;
        }
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Receives `n` events, failing after `limit`.
pub async fn receive(
    events: &mut mpsc::UnboundedReceiver<Received>,
    n: usize,
    limit: Duration,
) -> Vec<Received> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(r)) => out.push(r),
            Ok(None) => panic!("event channel closed after {} of {n}", out.len()),
            Err(_) => panic!(
                "only {} of {n} datagrams arrived within {limit:?}",
                out.len()
            ),
        }
    }
    out
}
