//! A deterministic simulator of peers negotiating links over a signaling path, in
//! virtual time (enabled by the test-only `_fuzz` feature).
//!
//! In the spirit of quinn-proto's test `Pair`: every link joins two [`Negotiator`]s,
//! each driving a [`ModelEngine`]. Signals travel with a seeded per-message delay;
//! each direction is ordered (like the broker's channel stream) while the two
//! directions, and different links, interleave freely. Candidates can optionally take
//! an unordered side path (the in-band channel racing the broker). Changes are
//! requested by both sides at random times, both sides may dial at once, the transport
//! connects once both sides hold the same ICE generation and a candidate of it, and it
//! can suffer outages that only an ICE restart cures.
//!
//! [`Sim::run`] goes to quiescence; [`Sim::check`] then proves the invariants: both
//! sides `stable` and connected, the same session and ICE generation on both, every
//! requested change negotiated exactly once, the offers bounded (no livelock), and no
//! engine-level invariant broken.
//!
//! ```
//! use std::time::Instant;
//! use glare_negotiate::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig::from_seed(7), Instant::now());
//! sim.run().and_then(|()| sim.check()).unwrap();
//! ```

mod model;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use glare_proto::sdp::ice_ufrag;
use glare_proto::signal::{IceCandidate, SdpKind, Signal};

pub use self::model::{Item, ItemKey, ModelEngine, ModelError};
use crate::change::{Change, ChangeId, Direction, MediaKind};
use crate::negotiator::{Config, Event, LinkState, Negotiator, SignalingState, TransportState};
use crate::rng::{RandomSource, SplitMix64};

/// The random source each simulated side uses: seeded, and optionally squeezed into
/// a few values so equal tie-breakers (and their redraws) happen often.
#[derive(Clone, Debug)]
pub struct SimRandom {
    rng: SplitMix64,
    small: bool,
}

impl SimRandom {
    /// A source seeded with `seed`; with `small`, every draw is in `0..3`.
    pub fn new(seed: u64, small: bool) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            small,
        }
    }
}

impl RandomSource for SimRandom {
    fn next_u64(&mut self) -> u64 {
        let n = self.rng.next_u64();
        if self.small { n % 3 } else { n }
    }
}

/// What a simulation does. [`SimConfig::from_seed`] derives a varied one from a seed;
/// [`SimConfig::quiet`] plans nothing (for scripted scenarios).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// Peers; every pair is linked.
    pub peers: usize,
    /// Whether to plan random dials, changes, outages and byes.
    pub plan: bool,
    /// Random changes per side and link: up to this many.
    pub max_changes: u32,
    /// Random changes are requested within this time from the start.
    pub request_window: Duration,
    /// Per-message signaling delay: uniform in `0..=max_delay`.
    pub max_delay: Duration,
    /// Plan a transport outage on some links (cured by an ICE restart, or by time).
    pub outages: bool,
    /// Squeeze the random sources so tie-breakers are often equal.
    pub small_tie_breakers: bool,
    /// Candidates travel unordered (they may overtake descriptions).
    pub candidate_reorder: bool,
    /// One link in this many gets a `bye` at a random time (0: never).
    pub bye_one_in: u32,
    /// The negotiators' configuration.
    pub negotiator: Config,
    /// Give up (no quiescence) after this much virtual time.
    pub max_time: Duration,
    /// Record a transcript of the run (printed on failure).
    pub trace: bool,
}

impl SimConfig {
    /// A scripted-scenario configuration: two peers, nothing planned, 0–200 ms delays.
    pub fn quiet(seed: u64) -> Self {
        Self {
            seed,
            peers: 2,
            plan: false,
            max_changes: 0,
            request_window: Duration::ZERO,
            max_delay: Duration::from_millis(200),
            outages: false,
            small_tie_breakers: false,
            candidate_reorder: false,
            bye_one_in: 0,
            negotiator: Self::negotiator_config(),
            max_time: Duration::from_secs(600),
            trace: false,
        }
    }

    /// The negotiator configuration simulations use (short failure-policy timers).
    pub fn negotiator_config() -> Config {
        Config {
            connect_timeout: Duration::from_secs(30),
            answer_timeout: Duration::from_secs(30),
            disconnect_timeout: Duration::from_secs(1),
            ice_restart_timeout: Duration::from_secs(5),
            max_ice_restarts: 3,
            max_held_candidates: 64,
        }
    }

    /// A random simulation, every knob drawn from `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = SplitMix64::new(seed ^ 0x5EED_C0FF_EE00_0001);
        let peers = if r.below(8) == 0 { 3 } else { 2 };
        Self {
            seed,
            peers,
            plan: true,
            max_changes: 1 + r.below(6) as u32,
            request_window: Duration::from_millis(200 + r.below(3000)),
            max_delay: Duration::from_millis(200),
            outages: r.below(4) == 0,
            small_tie_breakers: r.below(8) == 0,
            candidate_reorder: r.below(4) == 0,
            bye_one_in: 16,
            negotiator: Self::negotiator_config(),
            max_time: Duration::from_secs(600),
            trace: false,
        }
    }
}

/// A failed simulation: the seed and what went wrong (and the transcript, if traced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub message: String,
    /// The transcript, when [`SimConfig::trace`] was set.
    pub transcript: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed: {}; replay with GLARE_SIM_SEED={} cargo test -p glare-negotiate --test sim replay -- --nocapture",
            self.seed, self.message, self.seed
        )?;
        for line in &self.transcript {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SimFailure {}

/// Totals over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimReport {
    /// Signals delivered.
    pub delivered: u64,
    /// Offers sent on every link.
    pub offers: u64,
    /// Changes requested (and negotiated) on every link that stayed up.
    pub changes: u64,
    /// Offer collisions with equal tie-breakers (counted on each side).
    pub equal_collisions: u64,
    /// Links closed by `bye`.
    pub closed_links: u64,
    /// Virtual time at quiescence.
    pub elapsed: Duration,
}

#[derive(Clone, Debug)]
enum Action {
    /// Deliver a signal taking the unordered side path.
    Deliver {
        link: usize,
        to: usize,
        signal: Signal,
    },
    /// A side wants a random change.
    Request { link: usize, side: usize },
    /// A side dials (queues `glare-signal` first).
    Dial { link: usize, side: usize },
    /// A side trickles a local candidate.
    Candidate {
        link: usize,
        side: usize,
        candidate: IceCandidate,
    },
    /// The transport may come up now.
    TransportUp { link: usize },
    /// The transport goes down.
    OutageStart { link: usize },
    /// An outage may heal by itself now.
    Heal,
    /// A side says `bye`.
    Bye { link: usize, side: usize },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug)]
struct InFlight {
    at: Instant,
    signal: Signal,
}

/// One side of a simulated link.
#[derive(Debug)]
pub struct Side {
    /// Its negotiator.
    pub negotiator: Negotiator<SimRandom>,
    /// Its model engine.
    pub engine: ModelEngine,
    /// Every event it reported.
    pub events: Vec<Event>,
    /// Every change it requested (accepted by `request`) or its policy queued.
    pub requested: Vec<ChangeId>,
    trickled: Vec<String>,
    media: Vec<ChangeId>,
    stopped: Vec<ChangeId>,
}

#[derive(Debug)]
struct Outage {
    ufrags: (String, String),
    heal_at: Option<Instant>,
}

impl Side {
    /// The media tracks this side added (their ids).
    pub fn media(&self) -> &[ChangeId] {
        &self.media
    }
}

/// One simulated link between two peers.
#[derive(Debug)]
pub struct Link {
    /// The two peers (side 0 is the first).
    pub peers: (usize, usize),
    /// The two sides.
    pub sides: [Side; 2],
    /// Ordered signals in flight, indexed by the receiving side.
    wire: [VecDeque<InFlight>; 2],
    up: bool,
    up_pending: bool,
    outage: Option<Outage>,
}

/// The simulator (see the [module docs](self)).
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: SplitMix64,
    epoch: Instant,
    now: Instant,
    links: Vec<Link>,
    actions: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    transcript: Vec<String>,
    report: SimReport,
}

impl Sim {
    /// A simulation starting at virtual time `epoch` (any instant: only differences
    /// matter; the simulator never reads a clock).
    pub fn new(cfg: SimConfig, epoch: Instant) -> Self {
        let mut rng = SplitMix64::new(cfg.seed);
        let mut links = Vec::new();
        for a in 0..cfg.peers {
            for b in a + 1..cfg.peers {
                let l = links.len() as u32;
                let side = |s: u32, rng: &mut SplitMix64| Side {
                    negotiator: Negotiator::new(
                        cfg.negotiator.clone(),
                        SimRandom::new(rng.next_u64(), cfg.small_tie_breakers),
                    ),
                    engine: ModelEngine::new(l * 2 + s),
                    events: Vec::new(),
                    requested: Vec::new(),
                    trickled: Vec::new(),
                    media: Vec::new(),
                    stopped: Vec::new(),
                };
                let sides = [side(0, &mut rng), side(1, &mut rng)];
                links.push(Link {
                    peers: (a, b),
                    sides,
                    wire: [VecDeque::new(), VecDeque::new()],
                    up: false,
                    up_pending: false,
                    outage: None,
                });
            }
        }
        let mut sim = Self {
            cfg,
            rng,
            epoch,
            now: epoch,
            links,
            actions: BinaryHeap::new(),
            seq: 0,
            transcript: Vec::new(),
            report: SimReport::default(),
        };
        if sim.cfg.plan {
            sim.plan();
        }
        sim
    }

    fn plan(&mut self) {
        let window = self.cfg.request_window.as_millis() as u64;
        for link in 0..self.links.len() {
            let t0 = self.rng.below(100);
            match self.rng.below(3) {
                0 => self.schedule_ms(t0, Action::Dial { link, side: 0 }),
                1 => self.schedule_ms(t0, Action::Dial { link, side: 1 }),
                _ => {
                    // Both dial at once (or within a few milliseconds).
                    self.schedule_ms(t0, Action::Dial { link, side: 0 });
                    let t1 = t0 + self.rng.below(3);
                    self.schedule_ms(t1, Action::Dial { link, side: 1 });
                }
            }
            for side in 0..2 {
                let n = self.rng.below(u64::from(self.cfg.max_changes) + 1);
                for _ in 0..n {
                    let t = self.rng.below(window.max(1));
                    self.schedule_ms(t, Action::Request { link, side });
                }
            }
            if self.cfg.outages && self.rng.below(2) == 0 {
                let t = 300 + self.rng.below(window.max(1) + 1000);
                self.schedule_ms(t, Action::OutageStart { link });
            }
            if self.cfg.bye_one_in > 0 && self.rng.below(u64::from(self.cfg.bye_one_in)) == 0 {
                let t = self.rng.below(window.max(1) + 500);
                let side = self.rng.below(2) as usize;
                self.schedule_ms(t, Action::Bye { link, side });
            }
        }
    }

    fn schedule_ms(&mut self, ms: u64, action: Action) {
        let at = self.now + Duration::from_millis(ms);
        self.schedule(at, action);
    }

    fn schedule(&mut self, at: Instant, action: Action) {
        self.seq += 1;
        self.actions.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            action,
        }));
    }

    fn trace(&mut self, f: impl FnOnce(&mut String)) {
        if self.cfg.trace {
            let mut line = format!("{:>7}ms ", (self.now - self.epoch).as_millis());
            f(&mut line);
            self.transcript.push(line);
        }
    }

    fn fail(&self, message: String) -> SimFailure {
        SimFailure {
            seed: self.cfg.seed,
            message,
            transcript: self.transcript.clone(),
        }
    }

    // ----- scripted control -----------------------------------------------------------

    /// The links (in pair order: (0,1), (0,2), …, (1,2), …).
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// One side of a link.
    pub fn side(&self, link: usize, side: usize) -> &Side {
        &self.links[link].sides[side]
    }

    /// One side of a link, mutably (to call the negotiator directly; drain with
    /// [`Sim::drain`] afterwards).
    pub fn side_mut(&mut self, link: usize, side: usize) -> &mut Side {
        &mut self.links[link].sides[side]
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Requests `change` on one side (then drains). Returns its id if accepted.
    pub fn request(&mut self, link: usize, side: usize, change: Change) -> Option<ChangeId> {
        let s = &mut self.links[link].sides[side];
        let id = s.negotiator.request(change.clone()).ok()?;
        if !s.requested.contains(&id) {
            s.requested.push(id);
        }
        match change {
            Change::AddMedia { .. } => s.media.push(id),
            Change::StopMedia { media } => s.stopped.push(media),
            _ => {}
        }
        self.trace(|t| {
            let _ = write!(t, "L{link}s{side} request {id} {change:?}");
        });
        self.drain();
        Some(id)
    }

    /// One side dials: queues a `glare-signal` channel, then starts the link.
    pub fn dial(&mut self, link: usize, side: usize) {
        self.request(
            link,
            side,
            Change::OpenChannel {
                label: "glare-signal".into(),
            },
        );
        let now = self.now;
        let r = self.links[link].sides[side].negotiator.dial(now);
        self.trace(|t| {
            let _ = write!(t, "L{link}s{side} dial: {r:?}");
        });
        self.drain();
    }

    /// One side says `bye`.
    pub fn bye(&mut self, link: usize, side: usize) {
        self.links[link].sides[side]
            .negotiator
            .close(Some("sim bye".into()));
        self.trace(|t| {
            let _ = write!(t, "L{link}s{side} bye");
        });
        self.drain();
    }

    /// The next ordered signal in flight to side `to` of `link`.
    pub fn peek(&self, link: usize, to: usize) -> Option<&Signal> {
        self.links[link].wire[to].front().map(|f| &f.signal)
    }

    /// Ordered signals in flight to side `to` of `link`.
    pub fn in_flight(&self, link: usize, to: usize) -> usize {
        self.links[link].wire[to].len()
    }

    /// Delivers the next ordered signal to side `to` of `link` now, ahead of its
    /// delay. Returns whether there was one and it was accepted without error.
    pub fn deliver(&mut self, link: usize, to: usize) -> Result<bool, SimFailure> {
        let Some(f) = self.links[link].wire[to].pop_front() else {
            return Ok(false);
        };
        self.deliver_signal(link, to, f.signal)?;
        self.drain();
        Ok(true)
    }

    /// Drops the next ordered signal to side `to` of `link` (a lost message).
    pub fn drop_next(&mut self, link: usize, to: usize) -> Option<Signal> {
        let signal = self.links[link].wire[to].pop_front()?.signal;
        self.trace(|t| {
            let _ = write!(t, "L{link}s{to} LOST {}", describe(&signal));
        });
        Some(signal)
    }

    /// The transcript so far (empty unless [`SimConfig::trace`] is set).
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    /// Hands `signal` to side `to` of `link` now, as if it came from the peer
    /// (for injecting faults). Returns the negotiator's verdict.
    pub fn inject(
        &mut self,
        link: usize,
        to: usize,
        signal: Signal,
    ) -> Result<(), crate::negotiator::HandleSignalError> {
        self.trace(|t| {
            let _ = write!(t, "L{link}s{to} INJECTED {}", describe(&signal));
        });
        let now = self.now;
        let s = &mut self.links[link].sides[to];
        let r = s.negotiator.handle_signal(now, signal, &mut s.engine);
        self.trace(|t| {
            let _ = write!(t, "L{link}s{to} -> {r:?}");
        });
        self.drain();
        r
    }

    /// Reports a transport state to one side now.
    pub fn transport(&mut self, link: usize, side: usize, state: TransportState) {
        let now = self.now;
        self.links[link].sides[side]
            .negotiator
            .handle_transport(now, state);
        self.drain();
    }

    /// Runs everything due (deliveries, planned actions, timers) up to `now + d`.
    pub fn advance(&mut self, d: Duration) -> Result<(), SimFailure> {
        let until = self.now + d;
        self.run_until(until, true)?;
        self.now = self.now.max(until);
        self.drain();
        Ok(())
    }

    /// Like [`Sim::advance`], but the ordered signaling path is stalled: nothing on it
    /// is delivered (candidates on the unordered side path still are).
    pub fn advance_holding_wire(&mut self, d: Duration) -> Result<(), SimFailure> {
        let until = self.now + d;
        self.run_until(until, false)?;
        self.now = self.now.max(until);
        self.drain();
        Ok(())
    }

    // ----- running --------------------------------------------------------------------

    /// Drains every side's outputs: signals onto the wire, events into the sides'
    /// logs; schedules candidate trickling and transport changes.
    pub fn drain(&mut self) {
        for link in 0..self.links.len() {
            for side in 0..2 {
                self.drain_side(link, side);
            }
            self.check_transport(link);
        }
    }

    fn drain_side(&mut self, link: usize, side: usize) {
        let now = self.now;
        loop {
            let s = &mut self.links[link].sides[side];
            let Some(signal) = s.negotiator.poll_signal(now, &mut s.engine) else {
                break;
            };
            if let Signal::Description { description, .. } = &signal {
                if description.kind == SdpKind::Offer {
                    self.report.offers += 1;
                }
                if let Some(u) = ice_ufrag(&description.sdp)
                    && !s.trickled.iter().any(|t| t == u)
                {
                    // A new local ICE generation: gather and trickle it.
                    let u = u.to_owned();
                    s.trickled.push(u.clone());
                    let peer = if side == 0 {
                        self.links[link].peers.0
                    } else {
                        self.links[link].peers.1
                    };
                    let mut t = 0;
                    for n in 0..2u16 {
                        t += 1 + self.rng.below(30);
                        let candidate = IceCandidate {
                            candidate: format!(
                                "candidate:{n} 1 udp 2130706431 192.0.2.{} {} typ host",
                                peer + 1,
                                50000 + n
                            ),
                            sdp_mid: Some("0".into()),
                            sdp_m_line_index: Some(0),
                            username_fragment: u.clone(),
                        };
                        self.schedule_ms(
                            t,
                            Action::Candidate {
                                link,
                                side,
                                candidate,
                            },
                        );
                    }
                    t += 1 + self.rng.below(30);
                    let candidate = IceCandidate::end_of_candidates(u);
                    self.schedule_ms(
                        t,
                        Action::Candidate {
                            link,
                            side,
                            candidate,
                        },
                    );
                }
            }
            self.send(link, 1 - side, signal);
        }
        loop {
            let s = &mut self.links[link].sides[side];
            let Some(event) = s.negotiator.poll_event() else {
                break;
            };
            if let Event::IceRestartQueued { id } = &event
                && !s.requested.contains(id)
            {
                s.requested.push(*id);
            }
            self.trace(|t| {
                let _ = write!(t, "L{link}s{side} event {event:?}");
            });
            self.links[link].sides[side].events.push(event);
        }
    }

    fn send(&mut self, link: usize, to: usize, signal: Signal) {
        let delay =
            Duration::from_millis(self.rng.below(self.cfg.max_delay.as_millis() as u64 + 1));
        self.trace(|t| {
            let _ = write!(t, "L{link}s{} send {}", 1 - to, describe(&signal));
        });
        let at = self.now + delay;
        if self.cfg.candidate_reorder && matches!(signal, Signal::Candidate(_)) {
            self.schedule(at, Action::Deliver { link, to, signal });
            return;
        }
        let wire = &mut self.links[link].wire[to];
        let at = wire.back().map_or(at, |b| b.at.max(at));
        wire.push_back(InFlight { at, signal });
    }

    fn deliver_signal(&mut self, link: usize, to: usize, signal: Signal) -> Result<(), SimFailure> {
        self.report.delivered += 1;
        self.trace(|t| {
            let _ = write!(t, "L{link}s{to} recv {}", describe(&signal));
        });
        let now = self.now;
        let s = &mut self.links[link].sides[to];
        if let Err(e) = s.negotiator.handle_signal(now, signal, &mut s.engine) {
            return Err(self.fail(format!("link {link} side {to}: handle_signal: {e}")));
        }
        Ok(())
    }

    fn ice_ready(&self, link: usize) -> bool {
        let l = &self.links[link];
        let (a, b) = (&l.sides[0], &l.sides[1]);
        if a.negotiator.link_state() != LinkState::Active
            || b.negotiator.link_state() != LinkState::Active
        {
            return false;
        }
        let (ea, eb) = (&a.engine, &b.engine);
        let same = ea.remote_ufrag() == Some(eb.local_ufrag())
            && eb.remote_ufrag() == Some(ea.local_ufrag());
        if !same
            || ea.candidates_for(eb.local_ufrag()) == 0
            || eb.candidates_for(ea.local_ufrag()) == 0
        {
            return false;
        }
        match &l.outage {
            None => true,
            Some(o) => {
                o.heal_at.is_some_and(|h| h <= self.now)
                    || (ea.local_ufrag() != o.ufrags.0 && eb.local_ufrag() != o.ufrags.1)
            }
        }
    }

    fn check_transport(&mut self, link: usize) {
        let l = &self.links[link];
        if l.up || l.up_pending || !self.ice_ready(link) {
            return;
        }
        self.links[link].up_pending = true;
        let t = 5 + self.rng.below(45);
        self.schedule_ms(t, Action::TransportUp { link });
    }

    fn next_non_wire(&self) -> Option<Instant> {
        let action = self.actions.peek().map(|Reverse(s)| s.at);
        let timer = self
            .links
            .iter()
            .flat_map(|l| l.sides.iter())
            .filter_map(|s| s.negotiator.poll_timeout())
            .min();
        action.into_iter().chain(timer).min()
    }

    fn next_wire(&self) -> Option<(Instant, usize, usize)> {
        let mut best: Option<(Instant, usize, usize)> = None;
        for (i, l) in self.links.iter().enumerate() {
            for to in 0..2 {
                if let Some(f) = l.wire[to].front()
                    && best.is_none_or(|b| f.at < b.0)
                {
                    best = Some((f.at, i, to));
                }
            }
        }
        best
    }

    /// Runs the earliest due action or timer (the clock is already there).
    fn step_non_wire(&mut self) -> Result<(), SimFailure> {
        let action_due = self
            .actions
            .peek()
            .is_some_and(|Reverse(s)| s.at <= self.now);
        if action_due {
            let Reverse(s) = self.actions.pop().expect("peeked just above");
            self.run_action(s.action)?;
        } else {
            let now = self.now;
            for l in &mut self.links {
                for s in &mut l.sides {
                    if s.negotiator.poll_timeout().is_some_and(|t| t <= now) {
                        s.negotiator.handle_timeout(now);
                    }
                }
            }
        }
        self.drain();
        Ok(())
    }

    fn run_action(&mut self, action: Action) -> Result<(), SimFailure> {
        let now = self.now;
        match action {
            Action::Deliver { link, to, signal } => self.deliver_signal(link, to, signal)?,
            Action::Request { link, side } => {
                let change = self.random_change(link, side);
                self.request(link, side, change);
            }
            Action::Dial { link, side } => self.dial(link, side),
            Action::Candidate {
                link,
                side,
                candidate,
            } => {
                let _ = self.links[link].sides[side]
                    .negotiator
                    .queue_local_candidate(candidate);
            }
            Action::TransportUp { link } => {
                self.links[link].up_pending = false;
                if self.ice_ready(link) {
                    let l = &mut self.links[link];
                    l.up = true;
                    l.outage = None;
                    for s in &mut l.sides {
                        s.negotiator
                            .handle_transport(now, TransportState::Connected);
                    }
                    self.trace(|t| {
                        let _ = write!(t, "L{link} transport up");
                    });
                }
            }
            Action::OutageStart { link } => {
                let heal = self.rng.below(2) == 0;
                self.outage(link, heal);
            }
            Action::Heal => {}
            Action::Bye { link, side } => self.bye(link, side),
        }
        Ok(())
    }

    /// The transport of `link` goes down (if it is up): both sides are told it is
    /// disconnected, and it comes back only once an ICE restart has given both sides
    /// a new generation, or (with `heals`) after a random while.
    pub fn outage(&mut self, link: usize, heals: bool) {
        let now = self.now;
        let heal_ms = 200 + self.rng.below(2800);
        {
            let heal = heals;
            let l = &mut self.links[link];
            if l.up {
                l.up = false;
                let ufrags = (
                    l.sides[0].engine.local_ufrag().to_owned(),
                    l.sides[1].engine.local_ufrag().to_owned(),
                );
                let heal_at = heal.then(|| now + Duration::from_millis(heal_ms));
                l.outage = Some(Outage { ufrags, heal_at });
                for s in &mut l.sides {
                    s.negotiator
                        .handle_transport(now, TransportState::Disconnected);
                }
                if let Some(h) = heal_at {
                    self.schedule(h, Action::Heal);
                }
                self.trace(|t| {
                    let _ = write!(t, "L{link} outage (heals by itself: {heal})");
                });
            }
        }
        self.drain();
    }

    fn random_change(&mut self, link: usize, side: usize) -> Change {
        let s = &self.links[link].sides[side];
        let live: Vec<ChangeId> = s
            .media
            .iter()
            .filter(|m| !s.stopped.contains(m))
            .copied()
            .collect();
        let dir = match self.rng.below(4) {
            0 => Direction::SendRecv,
            1 => Direction::SendOnly,
            2 => Direction::RecvOnly,
            _ => Direction::Inactive,
        };
        let roll = self.rng.below(100);
        if roll < 40 {
            let n = self.rng.below(1000);
            Change::OpenChannel {
                label: format!("ch{n}"),
            }
        } else if roll < 60 || (roll < 85 && live.is_empty()) {
            Change::AddMedia {
                kind: if self.rng.below(2) == 0 {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                },
                direction: dir,
            }
        } else if roll < 75 {
            let media = live[self.rng.below(live.len() as u64) as usize];
            Change::SetDirection {
                media,
                direction: dir,
            }
        } else if roll < 85 {
            let media = live[self.rng.below(live.len() as u64) as usize];
            Change::StopMedia { media }
        } else {
            Change::IceRestart
        }
    }

    /// Runs everything (planned actions, deliveries in time order, timers) until
    /// nothing is left to do: quiescence. Fails if that takes more than
    /// [`SimConfig::max_time`] of virtual time from now (not from the epoch: a
    /// caller may have advanced time before), or if a negotiator refuses a signal.
    pub fn run(&mut self) -> Result<(), SimFailure> {
        let deadline = self.now + self.cfg.max_time;
        if self.run_until(deadline, true)? {
            return Err(self.fail(format!(
                "no quiescence within {:?} of virtual time (deadlock or livelock)",
                self.cfg.max_time
            )));
        }
        self.report.elapsed = self.now - self.epoch;
        Ok(())
    }

    /// Runs what is due up to `until` (the ordered wire too if `wire`). Returns whether
    /// something is still left to do after `until`.
    fn run_until(&mut self, until: Instant, wire: bool) -> Result<bool, SimFailure> {
        loop {
            self.drain();
            let next_wire = if wire { self.next_wire() } else { None };
            let other = self.next_non_wire();
            let next = match (next_wire, other) {
                (None, None) => return Ok(false),
                (Some(w), None) => w.0,
                (None, Some(o)) => o,
                (Some(w), Some(o)) => w.0.min(o),
            };
            if next > until {
                return Ok(true);
            }
            self.now = self.now.max(next);
            match next_wire {
                Some((at, link, to)) if at <= self.now && other.is_none_or(|o| at <= o) => {
                    let f = self.links[link].wire[to]
                        .pop_front()
                        .expect("next_wire found a head here");
                    self.deliver_signal(link, to, f.signal)?;
                }
                _ => self.step_non_wire()?,
            }
        }
    }

    /// Checks every invariant at quiescence (call after [`Sim::run`]).
    pub fn check(&mut self) -> Result<SimReport, SimFailure> {
        let mut report = self.report;
        for (i, l) in self.links.iter().enumerate() {
            if let Err(m) = check_link(l) {
                return Err(self.fail(format!("link {i} {:?}: {m}", l.peers)));
            }
            let closed = l.sides[0].negotiator.link_state() == LinkState::Closed;
            let idle = l.sides[0].negotiator.link_state() == LinkState::Idle;
            if closed {
                report.closed_links += 1;
            } else if !idle {
                if !l.up {
                    return Err(self.fail(format!("link {i}: transport not up at quiescence")));
                }
                report.changes += (l.sides[0].requested.len() + l.sides[1].requested.len()) as u64;
            }
            report.equal_collisions += l
                .sides
                .iter()
                .map(|s| s.negotiator.stats().equal_collisions)
                .sum::<u64>();
        }
        Ok(report)
    }
}

fn describe(signal: &Signal) -> String {
    match signal {
        Signal::Description {
            description,
            tie_breaker,
        } => format!(
            "{} ufrag={} tb={tie_breaker} carry=[{}]",
            description.kind,
            ice_ufrag(&description.sdp).unwrap_or("?"),
            description
                .sdp
                .lines()
                .filter_map(|l| l.strip_prefix("a=x-carry:"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Signal::Candidate(c) if c.is_end_of_candidates() => {
            format!("end-of-candidates ufrag={}", c.username_fragment)
        }
        Signal::Candidate(c) => format!("candidate ufrag={}", c.username_fragment),
        Signal::Bye(b) => format!("bye {:?}", b.reason),
    }
}

/// Checks one link at quiescence.
fn check_link(l: &Link) -> Result<(), String> {
    let [a, b] = &l.sides;
    for (n, s) in l.sides.iter().enumerate() {
        if let Some(v) = s.engine.violations().first() {
            return Err(format!("side {n}: engine invariant violated: {v}"));
        }
        if let Some(reason) = s.events.iter().find_map(|e| match e {
            Event::Failed(r) => Some(r),
            _ => None,
        }) {
            return Err(format!("side {n} failed: {reason}"));
        }
    }
    let states = (a.negotiator.link_state(), b.negotiator.link_state());
    match states {
        (LinkState::Closed, LinkState::Closed) => {
            // Nothing negotiated twice (the engines check) is all a closed link owes.
            return Ok(());
        }
        (LinkState::Idle, LinkState::Idle) => {
            // Nobody dialled: queued changes wait for the link to start.
            return Ok(());
        }
        (LinkState::Active, LinkState::Active) => {}
        other => return Err(format!("link states at quiescence: {other:?}")),
    }
    for (n, s) in l.sides.iter().enumerate() {
        let neg = &s.negotiator;
        if neg.signaling_state() != SignalingState::Stable {
            return Err(format!("side {n} not stable: {}", neg.signaling_state()));
        }
        if !neg.queued().is_empty() {
            return Err(format!(
                "side {n} still has {} change(s) queued",
                neg.queued().len()
            ));
        }
        if s.engine.has_pending_offer() {
            return Err(format!("side {n}: engine has a pending offer"));
        }
        if !neg.is_connected() {
            return Err(format!("side {n} not connected"));
        }
    }
    if a.engine.negotiated() != b.engine.negotiated() {
        return Err(format!(
            "sessions differ:\n    side 0: {:?}\n    side 1: {:?}",
            a.engine.negotiated(),
            b.engine.negotiated()
        ));
    }
    if a.engine.remote_ufrag() != Some(b.engine.local_ufrag())
        || b.engine.remote_ufrag() != Some(a.engine.local_ufrag())
    {
        return Err(format!(
            "ICE generations differ: side 0 local {} remote {:?}, side 1 local {} remote {:?}",
            a.engine.local_ufrag(),
            a.engine.remote_ufrag(),
            b.engine.local_ufrag(),
            b.engine.remote_ufrag()
        ));
    }
    for (n, s) in l.sides.iter().enumerate() {
        let owner = s.engine.id();
        let mut requested = s.requested.clone();
        requested.sort_unstable();
        for (k, e) in [(0, &a.engine), (1, &b.engine)] {
            let mut seen: Vec<ChangeId> = e
                .negotiated_changes()
                .iter()
                .filter(|k| k.0 == owner)
                .map(|k| ChangeId(k.1))
                .collect();
            seen.sort_unstable();
            if seen != requested {
                return Err(format!(
                    "side {n}: requested {requested:?} but side {k}'s engine negotiated {seen:?}"
                ));
            }
        }
        let mut reported: Vec<ChangeId> = s
            .events
            .iter()
            .flat_map(|e| match e {
                Event::ChangesNegotiated { ids } => ids.clone(),
                _ => Vec::new(),
            })
            .collect();
        reported.sort_unstable();
        if reported != requested {
            return Err(format!(
                "side {n}: requested {requested:?} but ChangesNegotiated reported {reported:?}"
            ));
        }
    }
    // No livelock: every offer was answered, or rolled back. Polite rollbacks never
    // outnumber answered offers (each answers the impolite side's offer), and answered
    // offers never outnumber changes (each takes at least one out of the queue).
    let sa = a.negotiator.stats();
    let sb = b.negotiator.stats();
    let offers = sa.offers_sent + sb.offers_sent;
    let answered = sa.answers_applied + sb.answers_applied;
    let rollbacks = sa.rollbacks + sb.rollbacks;
    let equal = sa.equal_collisions + sb.equal_collisions;
    let changes = (a.requested.len() + b.requested.len()) as u64;
    if offers != answered + rollbacks {
        return Err(format!(
            "{offers} offers but {answered} answered + {rollbacks} rolled back"
        ));
    }
    if answered > changes || rollbacks - equal > answered || offers > 2 * changes + equal {
        return Err(format!(
            "too many offers: {offers} for {changes} changes ({answered} answered, {rollbacks} rolled back, {equal} equal collisions)"
        ));
    }
    Ok(())
}

/// Runs one seed's random simulation and checks it. With `trace`, a failure carries
/// the run's transcript.
pub fn run_seed(seed: u64, epoch: Instant, trace: bool) -> Result<SimReport, SimFailure> {
    let mut cfg = SimConfig::from_seed(seed);
    cfg.trace = trace;
    let mut sim = Sim::new(cfg, epoch);
    sim.run()?;
    sim.check()
}
