//! Setup time in virtual time: from the first offer to an open data channel, two
//! [`Connection`]s in memory, every datagram and signal delivered at once (or after
//! a fixed one-way latency), time jumping to the earliest timer. What remains is the
//! time str0m's own timers add to the handshake (the ICE pacing, STUN retransmits,
//! DTLS and SCTP timers); it must stay a small multiple of the round trips needed.
//!
//! Wall-clock numbers (CPU cost of the same handshake) come from
//! `cargo bench -p glare-benches --bench rtc`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare_negotiate::Event as NegEvent;
use glare_proto::signal::Signal;
use glare_rtc::{ChannelOptions, Config, Connection, Event, Output};

enum Wire {
    Datagram(SocketAddr, SocketAddr, Vec<u8>),
    Signal(Signal),
}

/// Milestones of one handshake, as virtual time since the dial.
#[derive(Debug, Default)]
struct Timeline {
    answered: Option<Duration>,
    connected: [Option<Duration>; 2],
    open: [Option<Duration>; 2],
    timer_wakeups: u32,
}

fn handshake(seed: u64, latency: Duration) -> Timeline {
    let start = Instant::now();
    let addrs: [SocketAddr; 2] = [
        "10.0.0.1:1000".parse().unwrap(),
        "10.0.0.2:2000".parse().unwrap(),
    ];
    let mut peers = [
        Connection::new(start, Config::with_seed(seed)),
        Connection::new(start, Config::with_seed(seed + 1)),
    ];
    for (p, a) in peers.iter_mut().zip(addrs) {
        p.add_local_candidate(a).unwrap();
    }
    peers[0]
        .open_channel("data", &ChannelOptions::default())
        .unwrap();
    peers[0].dial(start).unwrap();
    let mut now = start;
    let mut inbound: [VecDeque<(Instant, Wire)>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut t = Timeline::default();
    while t.open.iter().any(Option::is_none) {
        assert!(
            now - start < Duration::from_secs(10),
            "no channel after 10 s: {t:?}"
        );
        let mut timeout = now + Duration::from_secs(3600);
        for i in 0..2 {
            loop {
                match peers[i].poll_output(now) {
                    Output::Transmit {
                        source,
                        destination,
                        contents,
                    } => inbound[1 - i]
                        .push_back((now + latency, Wire::Datagram(source, destination, contents))),
                    Output::Signal(s) => inbound[1 - i].push_back((now + latency, Wire::Signal(s))),
                    Output::Event(Event::ChannelOpen(_, l)) if l == "data" => {
                        t.open[i].get_or_insert(now - start);
                    }
                    Output::Event(Event::Negotiation(NegEvent::Connected)) => {
                        t.connected[i].get_or_insert(now - start);
                    }
                    Output::Event(Event::Negotiation(NegEvent::ChangesNegotiated { .. }))
                        if i == 0 =>
                    {
                        t.answered.get_or_insert(now - start);
                    }
                    Output::Event(_) => {}
                    Output::Timeout(x) => {
                        timeout = timeout.min(x);
                        break;
                    }
                }
            }
        }
        let arrival = inbound.iter().filter_map(|q| q.front().map(|w| w.0)).min();
        let next = arrival.map_or(timeout, |a| a.min(timeout)).max(now);
        if arrival.is_none_or(|a| a > timeout) {
            t.timer_wakeups += 1;
        }
        now = next;
        for i in 0..2 {
            while inbound[i].front().is_some_and(|w| w.0 <= now) {
                match inbound[i].pop_front().unwrap().1 {
                    Wire::Datagram(s, d, c) => peers[i].handle_datagram(now, s, d, &c),
                    Wire::Signal(s) => {
                        let _ = peers[i].handle_signal(now, s);
                    }
                }
            }
            peers[i].handle_timeout(now);
        }
    }
    t
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn setup_time_in_virtual_time() {
    for latency in [
        Duration::ZERO,
        Duration::from_micros(50),
        Duration::from_millis(5),
    ] {
        let runs: Vec<Timeline> = (0..20).map(|s| handshake(1000 + s * 2, latency)).collect();
        let open = median(
            runs.iter()
                .map(|t| t.open[0].max(t.open[1]).unwrap())
                .collect(),
        );
        let connected = median(
            runs.iter()
                .map(|t| t.connected[0].max(t.connected[1]).unwrap())
                .collect(),
        );
        println!(
            "one-way latency {latency:?}: connected {connected:?}, channel open {open:?} (median of 20), e.g. {:?}",
            runs[0]
        );
        // Round trips needed: offer/answer 1, ICE check 1, DTLS 2, SCTP 2, DCEP 1:
        // about 7 RTTs. Timers must not add more than 60 ms on top (str0m paces ICE
        // checks by a fixed 50 ms Ta).
        let rtts = latency * 2 * 8;
        assert!(
            open <= rtts + Duration::from_millis(60),
            "setup took {open:?} at {latency:?} one-way latency"
        );
    }
}
