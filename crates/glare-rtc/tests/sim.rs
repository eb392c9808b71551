//! glare-negotiate's random simulation again, with real str0m pairs in memory, in
//! virtual time: two [`Connection`]s, signals with a seeded per-message delay (each
//! direction ordered, like the broker's stream), datagrams with a seeded latency,
//! dials from one side or both at once, and changes requested by both sides at random
//! times (data channels, audio/video tracks, track removals, ICE restarts); on some
//! seeds the broker is cut once the in-band channel is up.
//!
//! At quiescence it checks the simulator's invariants — both sides `stable` with
//! empty queues and connected, the same ICE generation on both, every change
//! negotiated exactly once, the offers bounded — plus: data actually flows on every
//! negotiated channel (each side writes a probe on every channel it sees open and the
//! peer must receive it), every track is seen by the peer and every removal too, and
//! no signal went to a cut broker.
//!
//! - `many_seeds`: `GLARE_RTC_SIM_SEEDS` seeds (default 2,000, about 25 s in a debug build with optimised dependencies) from
//!   `GLARE_RTC_SIM_FIRST_SEED` (default 0).
//! - `replay`: one seed, `GLARE_RTC_SIM_SEED`, with a transcript on failure.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare_negotiate::{Event as NegEvent, RandomSource, SignalingState, SplitMix64};
use glare_proto::signal::Signal;
use glare_rtc::{
    Change, ChannelOptions, Config, Connection, Direction, Event, MediaKind, Output, TrackHandle,
};

const MS: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
enum Action {
    Dial,
    Channel { reliable: bool },
    Track(MediaKind),
    RemoveTrack,
    IceRestart,
}

/// A datagram on its way: arrival, source, destination, bytes.
type InFlight = (Instant, SocketAddr, SocketAddr, Vec<u8>);

#[derive(Default)]
struct Side {
    events: Vec<Event>,
    /// Labels of the app channels this side opened.
    opened: Vec<String>,
    /// Labels seen open (either side's), and the probe each got from the peer.
    open_labels: BTreeSet<String>,
    probes: BTreeSet<String>,
    tracks: Vec<TrackHandle>,
    removed: Vec<TrackHandle>,
    remote_tracks_open: usize,
    remote_tracks_closed: usize,
    negotiated: Vec<u64>,
}

struct Sim {
    start: Instant,
    now: Instant,
    peers: [Connection; 2],
    addrs: [SocketAddr; 2],
    sides: [Side; 2],
    /// Towards side i: datagrams (arrival, src, dst, bytes), in order.
    datagrams: [VecDeque<InFlight>; 2],
    /// Towards side i: signals through the broker, in order.
    signals: [VecDeque<(Instant, Signal)>; 2],
    plan: Vec<(Instant, usize, Action)>,
    rng: SplitMix64,
    latency: Duration,
    max_delay: Duration,
    cut_when_in_band: bool,
    cut: bool,
    lost_signals: Vec<String>,
    transcript: Vec<String>,
}

impl Sim {
    fn new(seed: u64, epoch: Instant) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x0057_3130_0000_0001);
        let addrs: [SocketAddr; 2] = [
            "10.1.0.1:4000".parse().expect("address"),
            "10.2.0.2:4000".parse().expect("address"),
        ];
        let mut peers = [
            Connection::new(epoch, Config::with_seed(rng.next_u64())),
            Connection::new(epoch, Config::with_seed(rng.next_u64())),
        ];
        for (p, a) in peers.iter_mut().zip(addrs) {
            p.add_local_candidate(a).expect("candidate");
        }
        let mut below = |n: u64| rng.next_u64() % n;
        let latency = MS * (1 + below(20)) as u32;
        let max_delay = MS * below(150) as u32;
        let cut_when_in_band = below(3) == 0;
        let mut plan = Vec::new();
        // Who starts: side 0, side 1, or both (at once, or a little apart).
        let at = |ms: u64| epoch + MS * ms as u32;
        match below(4) {
            0 => plan.push((at(0), 0, Action::Dial)),
            1 => plan.push((at(0), 1, Action::Dial)),
            2 => {
                plan.push((at(0), 0, Action::Dial));
                plan.push((at(0), 1, Action::Dial));
            }
            _ => {
                let d = below(100);
                plan.push((at(0), 0, Action::Dial));
                plan.push((at(d), 1, Action::Dial));
            }
        }
        let window = 200 + below(2500);
        for side in 0..2 {
            // Something to offer before a dial: a channel (the dial carries glare-signal
            // anyway), sometimes a track.
            for _ in 0..below(4) {
                let a = match below(10) {
                    0..=3 => Action::Channel {
                        reliable: below(4) != 0,
                    },
                    4 => Action::Track(MediaKind::Audio),
                    5 => Action::Track(MediaKind::Video),
                    6 | 7 => Action::RemoveTrack,
                    _ => Action::IceRestart,
                };
                plan.push((at(below(window)), side, a));
            }
        }
        plan.sort_by_key(|(t, _, _)| std::cmp::Reverse(*t));
        let _ = rng.next_u64();
        Self {
            start: epoch,
            now: epoch,
            peers,
            addrs,
            sides: [Side::default(), Side::default()],
            datagrams: [VecDeque::new(), VecDeque::new()],
            signals: [VecDeque::new(), VecDeque::new()],
            plan,
            rng,
            latency,
            max_delay,
            cut_when_in_band,
            cut: false,
            lost_signals: Vec::new(),
            transcript: Vec::new(),
        }
    }

    fn log(&mut self, what: String) {
        if self.transcript.len() < 2000 {
            let t = (self.now - self.start).as_millis();
            self.transcript.push(format!("{t:>6} ms {what}"));
        }
    }

    fn act(&mut self, side: usize, action: Action) -> Result<(), String> {
        self.log(format!("side {side}: {action:?}"));
        let p = &mut self.peers[side];
        let s = &mut self.sides[side];
        match action {
            Action::Dial => {
                // Both may dial; the second dial of a started link is refused.
                if p.negotiator().link_state() == glare_negotiate::LinkState::Idle {
                    p.dial(self.now).map_err(|e| format!("dial: {e}"))?;
                }
            }
            Action::Channel { reliable } => {
                let label = format!("c{side}-{}", s.opened.len());
                let options = if reliable {
                    ChannelOptions::default()
                } else {
                    ChannelOptions::unreliable(0)
                };
                p.open_channel(&label, &options)
                    .map_err(|e| format!("open: {e}"))?;
                s.opened.push(label);
            }
            Action::Track(kind) => {
                let t = p
                    .add_track(kind, Direction::SendRecv)
                    .map_err(|e| format!("add_track: {e}"))?;
                s.tracks.push(t);
            }
            Action::RemoveTrack => {
                if let Some(&t) = s.tracks.iter().find(|t| !s.removed.contains(t)) {
                    p.remove_track(t).map_err(|e| format!("remove: {e}"))?;
                    s.removed.push(t);
                }
            }
            Action::IceRestart => {
                p.request(Change::IceRestart)
                    .map_err(|e| format!("restart: {e}"))?;
            }
        }
        Ok(())
    }

    /// Drains both sides; returns the earliest timeout.
    fn drain(&mut self) -> Result<Instant, String> {
        let mut next = self.now + Duration::from_secs(3600);
        for i in 0..2 {
            loop {
                match self.peers[i].poll_output(self.now) {
                    Output::Transmit {
                        source,
                        destination,
                        contents,
                    } => {
                        if source != self.addrs[i] {
                            return Err(format!("side {i} sent from {source}"));
                        }
                        let to = usize::from(destination == self.addrs[1]);
                        self.datagrams[to].push_back((
                            self.now + self.latency,
                            source,
                            destination,
                            contents,
                        ));
                    }
                    Output::Signal(s) => {
                        let what = describe(&s);
                        if self.cut {
                            if !matches!(s, Signal::Bye(_)) {
                                self.lost_signals.push(what.clone());
                            }
                            self.log(format!("side {i} -> broker (cut, lost): {what}"));
                            continue;
                        }
                        self.log(format!("side {i} -> broker: {what}"));
                        let delay = MS
                            * (self.rng.next_u64() % (self.max_delay.as_millis() as u64 + 1))
                                as u32;
                        // Each direction is ordered.
                        let last = self.signals[1 - i].back().map_or(self.now, |(t, _)| *t);
                        self.signals[1 - i].push_back(((self.now + delay).max(last), s));
                    }
                    Output::Event(e) => self.on_event(i, e)?,
                    Output::Timeout(t) => {
                        next = next.min(t);
                        break;
                    }
                }
            }
        }
        Ok(next)
    }

    fn on_event(&mut self, i: usize, e: Event) -> Result<(), String> {
        match &e {
            Event::ChannelOpen(h, label) => {
                self.log(format!("side {i}: channel {label} open"));
                if !self.sides[i].open_labels.insert(label.clone()) {
                    return Err(format!("side {i}: {label} opened twice"));
                }
                let probe = format!("probe {label} from {i}");
                if !self.peers[i]
                    .write(*h, false, probe.as_bytes())
                    .map_err(|e| format!("write: {e}"))?
                {
                    return Err("probe refused (buffer full)".into());
                }
            }
            Event::ChannelData(_, false, d) => {
                let text = String::from_utf8(d.clone()).map_err(|e| e.to_string())?;
                let want_prefix = "probe ";
                let Some(rest) = text.strip_prefix(want_prefix) else {
                    return Err(format!("side {i}: unexpected data {text:?}"));
                };
                let (label, from) = rest.rsplit_once(" from ").ok_or("bad probe")?;
                if from != (1 - i).to_string() {
                    return Err(format!("side {i}: probe {text:?} from the wrong side"));
                }
                self.sides[i].probes.insert(label.to_owned());
            }
            Event::TrackOpen { remote: true, .. } => {
                self.log(format!("side {i}: {e:?}"));
                self.sides[i].remote_tracks_open += 1;
            }
            Event::TrackClosed(t) if !self.sides[i].tracks.contains(t) => {
                self.log(format!("side {i}: {e:?}"));
                self.sides[i].remote_tracks_closed += 1;
            }
            Event::TrackOpen { .. } | Event::TrackClosed(_) => {
                self.log(format!("side {i}: {e:?}"));
            }
            Event::Negotiation(NegEvent::ChangesNegotiated { ids }) => {
                self.log(format!("side {i}: negotiated {ids:?}"));
                for id in ids {
                    if self.sides[i].negotiated.contains(&id.0) {
                        return Err(format!("side {i}: change {id} negotiated twice"));
                    }
                    self.sides[i].negotiated.push(id.0);
                }
            }
            Event::Negotiation(NegEvent::Failed(r)) => {
                return Err(format!("side {i} failed: {r}"));
            }
            Event::Negotiation(NegEvent::Closed { .. }) => {
                return Err(format!("side {i} closed"));
            }
            Event::TransportError(r) => return Err(format!("side {i} transport error: {r}")),
            _ => {}
        }
        self.sides[i].events.push(e);
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        let before: [(u64, u64); 2] = std::array::from_fn(|i| {
            let s = self.peers[i].stats();
            (s.signals_sent_in_band, s.signals_received_in_band)
        });
        let timeout = self.drain()?;
        for (i, (sent, received)) in before.into_iter().enumerate() {
            let s = self.peers[i].stats();
            if s.signals_sent_in_band > sent || s.signals_received_in_band > received {
                self.log(format!(
                    "side {i}: in-band signals sent {} received {}",
                    s.signals_sent_in_band, s.signals_received_in_band
                ));
            }
        }
        if self.cut_when_in_band && !self.cut && self.peers.iter().all(|p| !p.needs_broker()) {
            self.log("broker cut".into());
            self.cut = true;
        }
        let next = [
            Some(timeout),
            self.datagrams
                .iter()
                .filter_map(|q| q.front().map(|d| d.0))
                .min(),
            self.signals
                .iter()
                .filter_map(|q| q.front().map(|d| d.0))
                .min(),
            self.plan.last().map(|p| p.0),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.now);
        self.now = self.now.max(next);
        for i in 0..2 {
            while self.datagrams[i].front().is_some_and(|d| d.0 <= self.now) {
                let (_, s, d, c) = self.datagrams[i].pop_front().ok_or("datagram")?;
                self.peers[i].handle_datagram(self.now, s, d, &c);
            }
            while self.signals[i].front().is_some_and(|d| d.0 <= self.now) {
                let (_, s) = self.signals[i].pop_front().ok_or("signal")?;
                self.log(format!("side {i} <- broker: {}", describe(&s)));
                if let Err(e) = self.peers[i].handle_signal(self.now, s) {
                    self.log(format!("side {i}: signal refused: {e}"));
                }
            }
        }
        while self.plan.last().is_some_and(|p| p.0 <= self.now) {
            let (_, side, action) = self.plan.pop().ok_or("plan")?;
            self.act(side, action)?;
        }
        for p in &mut self.peers {
            p.handle_timeout(self.now);
        }
        Ok(())
    }

    fn quiet(&self) -> bool {
        self.not_quiet().is_none()
    }

    /// Why the run is not quiescent yet, if it is not.
    fn not_quiet(&self) -> Option<String> {
        if !self.plan.is_empty() {
            return Some("plan not done".into());
        }
        if !self.signals.iter().all(VecDeque::is_empty) {
            return Some("signals in flight".into());
        }
        for i in 0..2 {
            let n = self.peers[i].negotiator();
            let other = &self.sides[1 - i];
            let s = &self.sides[i];
            let why = if n.signaling_state() != SignalingState::Stable {
                format!("{}", n.signaling_state())
            } else if !n.queued().is_empty() {
                format!("queued {:?}", n.queued())
            } else if !self.peers[i].is_connected() {
                "not connected".into()
            } else if s.open_labels.len() != s.opened.len() + other.opened.len() {
                format!(
                    "open {:?} of {:?} + {:?}",
                    s.open_labels, s.opened, other.opened
                )
            } else if s.probes.len() != s.open_labels.len() {
                format!("probes {:?} of {:?}", s.probes, s.open_labels)
            } else if s.remote_tracks_open != other.tracks.len() {
                format!(
                    "remote tracks open {} of {}",
                    s.remote_tracks_open,
                    other.tracks.len()
                )
            } else if s.remote_tracks_closed != other.removed.len() {
                format!(
                    "remote tracks closed {} of {}",
                    s.remote_tracks_closed,
                    other.removed.len()
                )
            } else {
                continue;
            };
            return Some(format!("side {i}: {why}"));
        }
        None
    }

    fn run(&mut self) -> Result<(), String> {
        let limit = Duration::from_secs(120);
        let mut steps = 0u32;
        while !self.quiet() {
            if self.now - self.start > limit || steps > 2_000_000 {
                return Err(format!(
                    "no quiescence after {:?}: {}",
                    self.now - self.start,
                    self.not_quiet().unwrap_or_default()
                ));
            }
            self.step()?;
            steps += 1;
        }
        // Let late traffic settle, then check again.
        let settle = self.now + Duration::from_millis(500);
        while self.now < settle {
            self.step()?;
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        if !self.quiet() {
            return Err("not quiet after settling".into());
        }
        if let Some(lost) = self.lost_signals.first() {
            return Err(format!("a signal went to the cut broker: {lost}"));
        }
        let [a, b] = &self.peers;
        let (na, nb) = (a.negotiator(), b.negotiator());
        if na.local_ufrag() != nb.remote_ufrag() || nb.local_ufrag() != na.remote_ufrag() {
            return Err(format!(
                "ICE generations differ: 0 local {:?} remote {:?}, 1 local {:?} remote {:?}",
                na.local_ufrag(),
                na.remote_ufrag(),
                nb.local_ufrag(),
                nb.remote_ufrag()
            ));
        }
        for (i, s) in self.sides.iter().enumerate() {
            for label in self.sides[0].opened.iter().chain(&self.sides[1].opened) {
                if !s.probes.contains(label) {
                    return Err(format!("side {i}: no data on {label}"));
                }
            }
            for t in &s.tracks {
                let open = s.events.iter().any(
                    |e| matches!(e, Event::TrackOpen { track, remote: false, .. } if track == t),
                );
                if !open {
                    return Err(format!("side {i}: own track {t:?} never negotiated"));
                }
            }
        }
        let (sa, sb) = (na.stats(), nb.stats());
        let offers = sa.offers_sent + sb.offers_sent;
        let answered = sa.answers_applied + sb.answers_applied;
        let rollbacks = sa.rollbacks + sb.rollbacks;
        let equal = sa.equal_collisions + sb.equal_collisions;
        let changes = (self.sides[0].negotiated.len() + self.sides[1].negotiated.len()) as u64;
        if offers != answered + rollbacks {
            return Err(format!(
                "{offers} offers but {answered} answered + {rollbacks} rolled back"
            ));
        }
        if answered > changes || rollbacks - equal > answered || offers > 2 * changes + equal {
            return Err(format!(
                "too many offers: {offers} for {changes} changes ({answered} answered, {rollbacks} rolled back)"
            ));
        }
        Ok(())
    }
}

fn describe(s: &Signal) -> String {
    match s {
        Signal::Description {
            description,
            tie_breaker,
        } => format!(
            "{} ufrag={:?} tb={tie_breaker} [{}]",
            description.kind,
            glare_proto::sdp::ice_ufrag(&description.sdp),
            description
                .sdp
                .lines()
                .filter(|l| l.starts_with("m=")
                    || l.starts_with("a=mid:")
                    || ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(l))
                .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Signal::Candidate(c) => format!("candidate ufrag={}", c.username_fragment),
        Signal::Bye(b) => format!("bye {:?}", b.reason),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be an integer, not {v:?}")),
    )
}

fn run_seed(seed: u64, epoch: Instant) -> Result<Sim, (String, Vec<String>)> {
    let mut sim = Sim::new(seed, epoch);
    match sim.run() {
        Ok(()) => Ok(sim),
        Err(e) => Err((e, std::mem::take(&mut sim.transcript))),
    }
}

#[test]
fn many_seeds() {
    let count = env_u64("GLARE_RTC_SIM_SEEDS").unwrap_or(2000);
    let first = env_u64("GLARE_RTC_SIM_FIRST_SEED").unwrap_or(0);
    let epoch = Instant::now();
    let (mut cut, mut both, mut in_band) = (0, 0, 0u64);
    for seed in first..first + count {
        match run_seed(seed, epoch) {
            Ok(sim) => {
                cut += u64::from(sim.cut);
                both += u64::from(
                    sim.peers
                        .iter()
                        .all(|p| p.negotiator().stats().offers_sent > 0),
                );
                in_band += sim
                    .peers
                    .iter()
                    .map(|p| p.stats().signals_received_in_band)
                    .sum::<u64>();
            }
            Err((e, _)) => panic!(
                "seed {seed}: {e}\n  replay: GLARE_RTC_SIM_SEED={seed} cargo test -p glare-rtc --test sim replay -- --nocapture"
            ),
        }
    }
    println!(
        "{count} seeds: broker cut in {cut}, both sides offered in {both}, {in_band} signals in-band"
    );
    if count >= 100 {
        assert!(
            cut > 0 && both > 0 && in_band > 0,
            "the plan covers the cases"
        );
    }
}

#[test]
fn replay() {
    let seed = env_u64("GLARE_RTC_SIM_SEED").unwrap_or(4242);
    if let Err((e, transcript)) = run_seed(seed, Instant::now()) {
        panic!("seed {seed}: {e}\n{}", transcript.join("\n"));
    }
}
