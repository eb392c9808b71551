//! Two [`Connection`]s in memory, in virtual time (like quinn-proto's test `Pair`):
//! datagrams and signals travel with a fixed latency, time jumps to the earliest
//! wake-up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare_negotiate::{Change, Direction, Event as NegEvent, MediaKind, Role, SignalingState};
use glare_proto::signal::Signal;
use glare_rtc::{ChannelHandle, ChannelOptions, Config, Connection, Event, Output};

enum Wire {
    Datagram(SocketAddr, SocketAddr, Vec<u8>),
    Signal(Signal),
}

struct Pair {
    now: Instant,
    start: Instant,
    latency: Duration,
    peers: [Connection; 2],
    addrs: [SocketAddr; 2],
    /// In flight towards peer i: (arrival, what).
    inbound: [VecDeque<(Instant, Wire)>; 2],
    events: [Vec<Event>; 2],
    /// Whether signals are delivered (false: held, to script races).
    hold_signals: bool,
}

impl Pair {
    fn new(seed: u64) -> Self {
        // The epoch comes from the test, never from the crate under test.
        let start = Instant::now();
        let addrs: [SocketAddr; 2] = [
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:6000".parse().unwrap(),
        ];
        let mut peers = [
            Connection::new(start, Config::with_seed(seed * 2 + 1)),
            Connection::new(start, Config::with_seed(seed * 2 + 2)),
        ];
        for (p, a) in peers.iter_mut().zip(addrs) {
            p.add_local_candidate(a).unwrap();
        }
        Self {
            now: start,
            start,
            latency: Duration::from_millis(5),
            peers,
            addrs,
            inbound: [VecDeque::new(), VecDeque::new()],
            events: [Vec::new(), Vec::new()],
            hold_signals: false,
        }
    }

    /// Drains both peers' outputs into the wire and their event lists.
    fn drain(&mut self) -> Option<Instant> {
        let mut next = None::<Instant>;
        for i in 0..2 {
            loop {
                match self.peers[i].poll_output(self.now) {
                    Output::Transmit {
                        source,
                        destination,
                        contents,
                    } => {
                        assert_eq!(source, self.addrs[i], "sent from our candidate");
                        let to = usize::from(destination != self.addrs[0]);
                        self.inbound[to].push_back((
                            self.now + self.latency,
                            Wire::Datagram(source, destination, contents),
                        ));
                    }
                    Output::Signal(s) => {
                        self.inbound[1 - i].push_back((self.now + self.latency, Wire::Signal(s)));
                    }
                    Output::Event(e) => self.events[i].push(e),
                    Output::Timeout(t) => {
                        next = Some(next.map_or(t, |n| n.min(t)));
                        break;
                    }
                }
            }
        }
        next
    }

    /// One step: drain, deliver what has arrived, or jump to the next wake-up.
    fn step(&mut self) {
        let timeout = self.drain();
        let arrival = self
            .inbound
            .iter()
            .filter_map(|q| q.iter().map(|(t, _)| *t).min())
            .min();
        let next = [timeout, arrival]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now);
        self.now = self.now.max(next);
        for i in 0..2 {
            let mut keep = VecDeque::new();
            while let Some((t, w)) = self.inbound[i].pop_front() {
                if t > self.now || (self.hold_signals && matches!(w, Wire::Signal(_))) {
                    keep.push_back((t, w));
                    continue;
                }
                match w {
                    Wire::Datagram(s, d, c) => self.peers[i].handle_datagram(self.now, s, d, &c),
                    Wire::Signal(s) => {
                        let _ = self.peers[i].handle_signal(self.now, s);
                    }
                }
            }
            self.inbound[i] = keep;
            self.peers[i].handle_timeout(self.now);
        }
    }

    /// Steps until `done` holds; panics after `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) {
        while !done(self) {
            assert!(self.now - self.start < limit, "not done after {limit:?}");
            self.step();
        }
    }

    fn opened(&self, i: usize, label: &str) -> Option<ChannelHandle> {
        self.events[i].iter().find_map(|e| match e {
            Event::ChannelOpen(h, l) if l == label => Some(*h),
            _ => None,
        })
    }

    fn take_data(&mut self, i: usize) -> Vec<(ChannelHandle, bool, Vec<u8>)> {
        let mut out = Vec::new();
        self.events[i].retain(|e| match e {
            Event::ChannelData(h, b, d) => {
                out.push((*h, *b, d.clone()));
                false
            }
            _ => true,
        });
        out
    }

    fn connected(&self, i: usize) -> bool {
        self.events[i].contains(&Event::Negotiation(NegEvent::Connected))
    }
}

fn fnv(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[test]
fn dial_open_and_transfer() {
    let mut p = Pair::new(1);
    let a = p.peers[0]
        .open_channel("bulk", &ChannelOptions::default())
        .unwrap();
    p.peers[0].dial(p.now).unwrap();
    p.run_until(Duration::from_secs(10), |p| {
        p.opened(0, "bulk").is_some() && p.opened(1, "bulk").is_some()
    });
    assert_eq!(
        p.opened(0, "bulk"),
        Some(a),
        "the handle is the one open_channel gave"
    );
    assert!(p.connected(0) && p.connected(1));
    let b = p.opened(1, "bulk").unwrap();

    // 1 MiB in 16 KiB chunks, then 1,000 ordered text messages, all with back-pressure.
    let total = 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
    let mut msgs: VecDeque<(bool, Vec<u8>)> =
        data.chunks(16 * 1024).map(|c| (true, c.to_vec())).collect();
    msgs.extend((0..1000).map(|i| (false, format!("msg {i}").into_bytes())));
    let want_hash = fnv(&data, 0xcbf2_9ce4_8422_2325);
    let (mut got, mut texts) = (Vec::new(), Vec::new());
    p.run_until(Duration::from_secs(60), |p| {
        while let Some((bin, m)) = msgs.front() {
            if p.peers[0].write(a, *bin, m).unwrap() {
                msgs.pop_front();
            } else {
                break;
            }
        }
        for (h, bin, d) in p.take_data(1) {
            assert_eq!(h, b);
            if bin {
                got.extend(d);
            } else {
                texts.push(String::from_utf8(d).unwrap());
            }
        }
        texts.len() == 1000
    });
    assert_eq!(got.len(), total);
    assert_eq!(fnv(&got, 0xcbf2_9ce4_8422_2325), want_hash);
    let want: Vec<String> = (0..1000).map(|i| format!("msg {i}")).collect();
    assert_eq!(texts, want, "ordered");
}

#[test]
fn glare_both_dial() {
    for seed in 0..4 {
        let mut p = Pair::new(100 + seed);
        let ha = p.peers[0]
            .open_channel("from-a", &ChannelOptions::default())
            .unwrap();
        let hb = p.peers[1]
            .open_channel("from-b", &ChannelOptions::default())
            .unwrap();
        p.peers[0].dial(p.now).unwrap();
        p.peers[1].dial(p.now).unwrap();
        p.run_until(Duration::from_secs(20), |p| {
            (0..2).all(|i| p.opened(i, "from-a").is_some() && p.opened(i, "from-b").is_some())
        });
        assert_eq!(p.opened(0, "from-a"), Some(ha));
        assert_eq!(p.opened(1, "from-b"), Some(hb));
        let roles: Vec<Role> = (0..2)
            .map(|i| p.peers[i].negotiator().role().unwrap())
            .collect();
        assert_ne!(roles[0], roles[1], "opposite roles");
        // The polite side re-offered its rolled-back channel after the SCTP line
        // existed: str0m opened it without SDP and the engine offered an ICE restart.
        let polite = usize::from(roles[1] == Role::Polite);
        assert!(p.peers[polite].engine().filler_offers() >= 1);
        // Exactly one connection: one ICE/DTLS session each, and data flows both ways.
        p.peers[0].write(ha, false, b"a->b").unwrap();
        p.peers[1].write(hb, false, b"b->a").unwrap();
        let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
        p.run_until(Duration::from_secs(30), |p| {
            at_a.extend(p.take_data(0));
            at_b.extend(p.take_data(1));
            !at_a.is_empty() && !at_b.is_empty()
        });
        assert_eq!(at_b[0].2, b"a->b");
        assert_eq!(at_a[0].2, b"b->a");
        for i in 0..2 {
            let n = p.peers[i].negotiator();
            assert_eq!(n.signaling_state(), SignalingState::Stable);
            assert!(n.queued().is_empty());
            let connects = p.events[i]
                .iter()
                .filter(|e| **e == Event::Negotiation(NegEvent::Connected))
                .count();
            assert!(connects >= 1);
        }
    }
}

#[test]
fn renegotiation_from_both_sides_at_once() {
    let mut p = Pair::new(7);
    p.peers[0].dial(p.now).unwrap();
    p.run_until(Duration::from_secs(10), |p| {
        p.connected(0) && p.connected(1)
    });
    p.run_until(Duration::from_secs(10), |p| {
        (0..2).all(|i| p.peers[i].negotiator().signaling_state() == SignalingState::Stable)
    });
    // Hold signals so both offers are made before either arrives: glare on a
    // renegotiation. Both add a channel (no SDP needed now) and a media line (SDP).
    p.hold_signals = true;
    let ca = p.peers[0]
        .open_channel("late-a", &ChannelOptions::default())
        .unwrap();
    let cb = p.peers[1]
        .open_channel("late-b", &ChannelOptions::unreliable(0))
        .unwrap();
    let ma = p.peers[0]
        .request(Change::AddMedia {
            kind: MediaKind::Audio,
            direction: Direction::SendRecv,
        })
        .unwrap();
    let mb = p.peers[1]
        .request(Change::AddMedia {
            kind: MediaKind::Video,
            direction: Direction::SendOnly,
        })
        .unwrap();
    p.drain();
    assert!(
        (0..2).all(|i| p.peers[i].negotiator().signaling_state() == SignalingState::HaveLocalOffer)
    );
    p.hold_signals = false;
    p.run_until(Duration::from_secs(20), |p| {
        (0..2).all(|i| {
            let n = p.peers[i].negotiator();
            n.signaling_state() == SignalingState::Stable && n.queued().is_empty()
        }) && (0..2).all(|i| p.opened(i, "late-a").is_some() && p.opened(i, "late-b").is_some())
    });
    assert_eq!(p.opened(0, "late-a"), Some(ca));
    assert_eq!(p.opened(1, "late-b"), Some(cb));
    assert!(p.peers[0].engine().mid(ma).is_some());
    assert!(p.peers[1].engine().mid(mb).is_some());
    for (i, id) in [(0, ma), (1, mb)] {
        assert!(p.events[i].iter().any(|e| matches!(e, Event::Negotiation(NegEvent::ChangesNegotiated { ids }) if ids.contains(&id))));
    }
    // Still one working connection.
    p.peers[0].write(ca, false, b"still here").unwrap();
    p.run_until(Duration::from_secs(30), |p| !p.take_data(1).is_empty());
}

#[test]
fn bye_mid_negotiation() {
    let mut p = Pair::new(9);
    p.peers[0]
        .open_channel("x", &ChannelOptions::default())
        .unwrap();
    p.peers[0].dial(p.now).unwrap();
    // The offer is on the wire; B has not answered yet when A hangs up.
    p.drain();
    p.peers[0].close(Some("changed my mind".into()));
    p.run_until(Duration::from_secs(5), |p| {
        (0..2).all(|i| {
            p.events[i]
                .iter()
                .any(|e| matches!(e, Event::Negotiation(NegEvent::Closed { .. })))
        })
    });
    assert!(p.events[1].contains(&Event::Negotiation(NegEvent::Closed {
        by_remote: true,
        reason: Some("changed my mind".into()),
    })));
    // Nothing more happens: no connection, no panic, timers quiet down.
    for _ in 0..50 {
        p.step();
    }
    assert!(!p.connected(0) && !p.connected(1));
}
