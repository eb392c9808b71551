//! Named scenarios of issue 4, each scripted on the simulator (or on two negotiators
//! by hand), each ending with the simulator's invariant check where it applies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use glare_negotiate::sim::{ModelEngine, Sim, SimConfig};
use glare_negotiate::{
    Change, Config, Direction, Event, FailReason, HandleSignalError, LinkState, MediaKind,
    Negotiator, RandomSource, Role, SignalingState, SplitMix64, TransportState,
};
use glare_proto::signal::{IceCandidate, SdpKind, SessionDescription, Signal, TieBreaker};

const MS: Duration = Duration::from_millis(1);

fn channel(label: &str) -> Change {
    Change::OpenChannel {
        label: label.into(),
    }
}

fn run_and_check(sim: &mut Sim) {
    if let Err(e) = sim.run().and_then(|()| sim.check().map(drop)) {
        panic!("{e}");
    }
}

/// A started, connected, quiet pair (side 0 dialled).
fn connected_pair(seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig::quiet(seed), Instant::now());
    sim.dial(0, 0);
    run_and_check(&mut sim);
    sim
}

fn events(sim: &Sim, side: usize) -> &[Event] {
    &sim.side(0, side).events
}

#[test]
fn plain_offer_answer() {
    let mut sim = Sim::new(SimConfig::quiet(1), Instant::now());
    let chat = sim.request(0, 0, channel("chat")).unwrap();
    sim.dial(0, 0);
    assert_eq!(
        sim.side(0, 0).negotiator.signaling_state(),
        SignalingState::HaveLocalOffer
    );
    assert!(
        sim.side(0, 0)
            .negotiator
            .pending_local_description()
            .is_some()
    );
    assert!(matches!(
        sim.peek(0, 1),
        Some(Signal::Description { description, .. }) if description.kind == SdpKind::Offer
    ));
    assert!(sim.deliver(0, 1).unwrap());
    assert_eq!(sim.side(0, 1).negotiator.link_state(), LinkState::Active);
    assert!(sim.deliver(0, 0).unwrap(), "the answer");
    let a = &sim.side(0, 0).negotiator;
    assert_eq!(a.signaling_state(), SignalingState::Stable);
    assert!(a.pending_local_description().is_none());
    assert!(a.current_local_description().is_some());
    assert!(a.current_remote_description().is_some());
    run_and_check(&mut sim);
    assert!(events(&sim, 0).contains(&Event::ChangesNegotiated {
        ids: vec![chat, glare_negotiate::ChangeId(chat.0 + 1)]
    }));
    assert!(events(&sim, 0).contains(&Event::Connected));
    assert!(events(&sim, 0).contains(&Event::NegotiationComplete));
    let roles: Vec<_> = (0..2).map(|s| sim.side(0, s).negotiator.role()).collect();
    assert!(roles.contains(&Some(Role::Polite)) && roles.contains(&Some(Role::Impolite)));
    let stats = sim.side(0, 0).negotiator.stats();
    assert_eq!((stats.offers_sent, stats.rollbacks), (1, 0));
}

#[test]
fn both_dial_at_once() {
    for seed in 0..50 {
        let mut sim = Sim::new(SimConfig::quiet(seed), Instant::now());
        sim.request(0, 0, channel("a"));
        sim.request(0, 1, channel("b"));
        sim.dial(0, 0);
        sim.dial(0, 1);
        // Both first offers are on the wire, crossing.
        assert_eq!((sim.in_flight(0, 0), sim.in_flight(0, 1)), (1, 1));
        run_and_check(&mut sim);
        let (a, b) = (
            sim.side(0, 0).negotiator.stats(),
            sim.side(0, 1).negotiator.stats(),
        );
        assert_eq!(
            a.rollbacks + b.rollbacks,
            1,
            "seed {seed}: the polite side rolled back"
        );
        assert_eq!(
            a.ignored_offers + b.ignored_offers,
            1,
            "seed {seed}: the impolite side ignored"
        );
        assert_eq!(sim.side(0, 0).engine.negotiated().len(), 4, "seed {seed}");
    }
}

#[test]
fn glare_during_renegotiation() {
    for seed in 0..50 {
        let mut sim = connected_pair(seed);
        let a = sim.request(0, 0, channel("from-a")).unwrap();
        let b = sim
            .request(
                0,
                1,
                Change::AddMedia {
                    kind: MediaKind::Video,
                    direction: Direction::SendRecv,
                },
            )
            .unwrap();
        run_and_check(&mut sim);
        let polite = (0..2)
            .find(|&s| sim.side(0, s).negotiator.role() == Some(Role::Polite))
            .unwrap();
        assert_eq!(
            sim.side(0, polite).negotiator.stats().rollbacks,
            1,
            "seed {seed}"
        );
        assert_eq!(
            sim.side(0, 1 - polite).negotiator.stats().ignored_offers,
            1,
            "seed {seed}"
        );
        assert!(
            sim.side(0, 1)
                .engine
                .was_negotiated(sim.side(0, 0).engine.id(), a)
        );
        assert!(
            sim.side(0, 0)
                .engine
                .was_negotiated(sim.side(0, 1).engine.id(), b)
        );
    }
}

/// Scripted randomness: these numbers first, then a seeded generator.
#[derive(Debug)]
struct Scripted(VecDeque<u64>, SplitMix64);

impl RandomSource for Scripted {
    fn next_u64(&mut self) -> u64 {
        self.0.pop_front().unwrap_or_else(|| self.1.next_u64())
    }
}

#[test]
fn equal_tie_breakers() {
    let now = Instant::now();
    // Draws: first tie-breaker, then (after the collision) the new one and the delay.
    let mut a = Negotiator::new(
        Config::default(),
        Scripted([7, 3, 40].into(), SplitMix64::new(1)),
    );
    let mut b = Negotiator::new(
        Config::default(),
        Scripted([7, 9, 20].into(), SplitMix64::new(2)),
    );
    let (mut ea, mut eb) = (ModelEngine::new(0), ModelEngine::new(1));
    let ca = a.request(channel("a")).unwrap();
    let cb = b.request(channel("b")).unwrap();
    a.dial(now).unwrap();
    b.dial(now).unwrap();
    let offer_a = a.poll_signal(now, &mut ea).unwrap();
    let offer_b = b.poll_signal(now, &mut eb).unwrap();
    b.handle_signal(now, offer_a, &mut eb).unwrap();
    a.handle_signal(now, offer_b, &mut ea).unwrap();
    // Both dropped their offers, redrew, and wait 0–50 ms before offering again.
    for (n, e, tb, delay) in [(&mut a, &mut ea, 3, 40), (&mut b, &mut eb, 9, 20)] {
        assert_eq!(n.signaling_state(), SignalingState::Stable);
        assert_eq!(n.stats().equal_collisions, 1);
        assert_eq!(n.tie_breaker(), TieBreaker::new(tb));
        assert_eq!(n.role(), None);
        assert_eq!(n.queued().len(), 1, "the change survived the rollback");
        assert!(!e.has_pending_offer());
        assert_eq!(n.poll_timeout(), Some(now + delay * MS));
        assert!(
            n.poll_signal(now, e).is_none(),
            "no offer during the retry delay"
        );
        assert!(n.poll_event().is_none(), "retry, not failure");
    }
    // B's delay ends first: its offer is answered by A, then A offers.
    let t1 = now + 20 * MS;
    b.handle_timeout(t1);
    let offer_b = b.poll_signal(t1, &mut eb).unwrap();
    a.handle_signal(t1, offer_b, &mut ea).unwrap();
    let answer_a = a.poll_signal(t1, &mut ea).unwrap();
    b.handle_signal(t1, answer_a, &mut eb).unwrap();
    assert_eq!(a.role(), Some(Role::Polite));
    assert_eq!(b.role(), Some(Role::Impolite));
    let t2 = now + 40 * MS;
    a.handle_timeout(t2);
    let offer_a = a.poll_signal(t2, &mut ea).unwrap();
    b.handle_signal(t2, offer_a, &mut eb).unwrap();
    let answer_b = b.poll_signal(t2, &mut eb).unwrap();
    a.handle_signal(t2, answer_b, &mut ea).unwrap();
    assert!(a.queued().is_empty() && b.queued().is_empty());
    assert_eq!(ea.negotiated(), eb.negotiated());
    assert!(ea.was_negotiated(0, ca) && eb.was_negotiated(0, ca));
    assert!(ea.was_negotiated(1, cb) && eb.was_negotiated(1, cb));
    assert!(ea.violations().is_empty() && eb.violations().is_empty());
}

#[test]
fn answerer_redraws_an_equal_tie_breaker() {
    let now = Instant::now();
    let mut a = Negotiator::new(Config::default(), Scripted([5].into(), SplitMix64::new(1)));
    let mut b = Negotiator::new(
        Config::default(),
        Scripted([5, 5, 2].into(), SplitMix64::new(2)),
    );
    let (mut ea, mut eb) = (ModelEngine::new(0), ModelEngine::new(1));
    a.request(channel("a")).unwrap();
    a.dial(now).unwrap();
    let offer = a.poll_signal(now, &mut ea).unwrap();
    b.handle_signal(now, offer, &mut eb).unwrap();
    let Some(Signal::Description { tie_breaker, .. }) = b.poll_signal(now, &mut eb) else {
        panic!("no answer");
    };
    assert_eq!(
        tie_breaker.get(),
        2,
        "redrawn (twice: 5 again is not allowed)"
    );
    assert_eq!(b.role(), Some(Role::Polite));
}

/// Three peers pairwise linked; on every link both dial at once, then each side adds
/// channels while the other restarts ICE, all at overlapping moments.
#[test]
fn three_way_storm() {
    for seed in 0..30 {
        let mut cfg = SimConfig::quiet(seed);
        cfg.peers = 3;
        let mut sim = Sim::new(cfg, Instant::now());
        for link in 0..3 {
            sim.dial(link, 0);
            sim.dial(link, 1);
        }
        run_and_check(&mut sim);
        let before: Vec<String> = (0..3)
            .map(|l| sim.side(l, 0).engine.local_ufrag().to_owned())
            .collect();
        for round in 0..3 {
            for link in 0..3 {
                let adder = (link + round) % 2;
                sim.request(link, adder, channel(&format!("r{round}")));
                sim.request(link, adder, channel(&format!("r{round}b")));
                sim.request(link, 1 - adder, Change::IceRestart);
            }
            sim.advance(30 * MS).unwrap();
        }
        run_and_check(&mut sim);
        for (link, old) in before.iter().enumerate() {
            assert_ne!(
                sim.side(link, 0).engine.local_ufrag(),
                old,
                "seed {seed}: ICE restarted"
            );
            assert_eq!(
                sim.side(link, 0).engine.negotiated().len(),
                2 + 6,
                "seed {seed}"
            );
        }
        let collisions: u64 = sim
            .links()
            .iter()
            .flat_map(|l| l.sides.iter())
            .map(|s| s.negotiator.stats().rollbacks + s.negotiator.stats().ignored_offers)
            .sum();
        assert!(
            collisions >= 3,
            "seed {seed}: a storm collides ({collisions})"
        );
    }
}

#[test]
fn candidates_before_the_description() {
    let mut sim = Sim::new(SimConfig::quiet(3), Instant::now());
    sim.dial(0, 0);
    sim.advance_holding_wire(200 * MS).unwrap(); // A trickles: offer, 2 candidates, end-of-candidates
    assert_eq!(sim.in_flight(0, 1), 4);
    let offer = sim.drop_next(0, 1).unwrap();
    for _ in 0..3 {
        assert!(sim.deliver(0, 1).unwrap());
    }
    let b = &sim.side(0, 1);
    assert_eq!(
        b.negotiator.held_candidates(),
        3,
        "held until their description"
    );
    assert_eq!(b.negotiator.link_state(), LinkState::Idle);
    sim.inject(0, 1, offer).unwrap();
    let b = &sim.side(0, 1);
    let ufrag = sim.side(0, 0).engine.local_ufrag();
    assert_eq!(b.negotiator.held_candidates(), 0);
    assert_eq!(b.engine.candidates_for(ufrag), 2);
    assert!(
        b.engine.end_of_candidates_for(ufrag),
        "end-of-candidates passed on"
    );
    run_and_check(&mut sim);
}

#[test]
fn old_generation_candidates_are_dropped() {
    let mut sim = connected_pair(4);
    let old = sim.side(0, 0).engine.local_ufrag().to_owned();
    sim.request(0, 0, Change::IceRestart);
    run_and_check(&mut sim);
    assert_ne!(sim.side(0, 0).engine.local_ufrag(), old);
    let late = Signal::Candidate(IceCandidate {
        candidate: "candidate:7 1 udp 1 192.0.2.1 7 typ host".into(),
        sdp_mid: None,
        sdp_m_line_index: None,
        username_fragment: old,
    });
    let dropped = sim.side(0, 1).negotiator.stats().candidates_dropped;
    sim.inject(0, 1, late).unwrap();
    assert_eq!(
        sim.side(0, 1).negotiator.stats().candidates_dropped,
        dropped + 1
    );
    assert_eq!(sim.side(0, 1).negotiator.held_candidates(), 0);
    run_and_check(&mut sim);
}

#[test]
fn ice_restarts_are_counted_on_both_sides_and_only_restarts() {
    for seed in 0..20 {
        let mut sim = connected_pair(seed);
        let counts = |sim: &Sim| {
            (
                sim.side(0, 0).negotiator.stats().ice_restarts,
                sim.side(0, 1).negotiator.stats().ice_restarts,
            )
        };
        assert_eq!(counts(&sim), (0, 0), "seed {seed}: first exchange");
        sim.request(0, 1, channel("no-restart"));
        run_and_check(&mut sim);
        assert_eq!(counts(&sim), (0, 0), "seed {seed}: a plain renegotiation");
        sim.request(0, 0, Change::IceRestart);
        run_and_check(&mut sim);
        assert_eq!(counts(&sim), (1, 1), "seed {seed}: restart from a");
        // Both ask at once: glare, one exchange, one restart.
        sim.request(0, 0, Change::IceRestart);
        sim.request(0, 1, Change::IceRestart);
        run_and_check(&mut sim);
        let (a, b) = counts(&sim);
        assert_eq!(a, b, "seed {seed}: both sides count the same exchanges");
        assert!((2..=3).contains(&a), "seed {seed}: {a} restarts");
    }
}

/// An offer of the peer's ICE generation that a restart has since replaced (it sat
/// on a dead in-band path, and arrives after the restart) is stale: ignored, no
/// answer, nothing applied.
#[test]
fn an_offer_of_a_replaced_ice_generation_is_ignored() {
    for seed in 0..20 {
        let mut sim = connected_pair(seed);
        sim.request(0, 1, channel("before"));
        sim.drain();
        let stale = sim.peek(0, 0).cloned().expect("b's offer in flight");
        assert!(matches!(stale, Signal::Description { .. }), "seed {seed}");
        run_and_check(&mut sim);
        sim.request(0, 0, Change::IceRestart);
        run_and_check(&mut sim);
        let a = &sim.side(0, 0).negotiator;
        let before = a.stats();
        assert_eq!(before.ice_restarts, 1, "seed {seed}");
        sim.inject(0, 0, stale).unwrap();
        let a = &sim.side(0, 0).negotiator;
        assert_eq!(a.stats().stale_offers, 1, "seed {seed}");
        assert_eq!(a.stats().answers_sent, before.answers_sent, "seed {seed}");
        assert_eq!(a.signaling_state(), SignalingState::Stable, "seed {seed}");
        assert_eq!(sim.in_flight(0, 1), 0, "seed {seed}: no answer to it");
        run_and_check(&mut sim);
    }
}

#[test]
fn ice_restart_colliding_with_a_media_change() {
    for seed in 0..50 {
        let mut sim = connected_pair(seed);
        let media = sim
            .request(
                0,
                1,
                Change::AddMedia {
                    kind: MediaKind::Audio,
                    direction: Direction::SendRecv,
                },
            )
            .unwrap();
        run_and_check(&mut sim);
        let old = (
            sim.side(0, 0).engine.local_ufrag().to_owned(),
            sim.side(0, 1).engine.local_ufrag().to_owned(),
        );
        let restart = sim.request(0, 0, Change::IceRestart).unwrap();
        let redirect = sim
            .request(
                0,
                1,
                Change::SetDirection {
                    media,
                    direction: Direction::RecvOnly,
                },
            )
            .unwrap();
        run_and_check(&mut sim);
        assert_ne!(sim.side(0, 0).engine.local_ufrag(), old.0, "seed {seed}");
        assert_ne!(sim.side(0, 1).engine.local_ufrag(), old.1, "seed {seed}");
        assert!(
            sim.side(0, 1)
                .engine
                .was_negotiated(sim.side(0, 0).engine.id(), restart)
        );
        assert!(
            sim.side(0, 0)
                .engine
                .was_negotiated(sim.side(0, 1).engine.id(), redirect)
        );
    }
}

#[test]
fn bye_mid_negotiation() {
    for seed in 0..20 {
        let mut sim = connected_pair(seed);
        sim.request(0, 0, channel("late"));
        assert_eq!(
            sim.side(0, 0).negotiator.signaling_state(),
            SignalingState::HaveLocalOffer
        );
        sim.bye(0, 1); // B leaves while A's offer is in flight
        run_and_check(&mut sim);
        for s in 0..2 {
            assert_eq!(sim.side(0, s).negotiator.link_state(), LinkState::Closed);
        }
        assert!(events(&sim, 0).iter().any(|e| matches!(
            e,
            Event::Closed { by_remote: true, reason: Some(r) } if r == "sim bye"
        )));
        assert!(sim.side(0, 0).negotiator.poll_timeout().is_none());
        assert!(
            sim.request(0, 1, channel("x")).is_none(),
            "no change on a closed link"
        );
    }
}

#[test]
fn lost_answer_then_connect_timeout() {
    let mut sim = Sim::new(SimConfig::quiet(5), Instant::now());
    sim.dial(0, 0);
    assert!(sim.deliver(0, 1).unwrap());
    let answer = sim.drop_next(0, 0).unwrap();
    assert!(
        matches!(answer, Signal::Description { description, .. } if description.kind == SdpKind::Answer)
    );
    sim.run().unwrap();
    let timeout = SimConfig::negotiator_config().connect_timeout;
    assert!(sim.elapsed() >= timeout && sim.elapsed() < timeout + Duration::from_secs(1));
    assert!(events(&sim, 0).contains(&Event::Failed(FailReason::ConnectTimeout)));
    for s in 0..2 {
        let n = &sim.side(0, s).negotiator;
        assert!(matches!(
            n.link_state(),
            LinkState::Failed | LinkState::Closed
        ));
        assert!(n.poll_timeout().is_none());
    }
    assert_eq!(
        sim.side(0, 0).negotiator.signaling_state(),
        SignalingState::HaveLocalOffer,
        "the offer was never answered"
    );
}

#[test]
fn outage_is_cured_by_an_ice_restart() {
    for seed in 0..20 {
        let mut sim = connected_pair(seed);
        let old = sim.side(0, 0).engine.local_ufrag().to_owned();
        sim.outage(0, false);
        run_and_check(&mut sim);
        assert_ne!(sim.side(0, 0).engine.local_ufrag(), old, "seed {seed}");
        for s in 0..2 {
            let ev = events(&sim, s);
            assert!(ev.contains(&Event::Disconnected));
            assert!(
                ev.iter()
                    .any(|e| matches!(e, Event::IceRestartQueued { .. }))
            );
            let down = ev.iter().rposition(|e| *e == Event::Disconnected).unwrap();
            assert!(
                ev[down..].contains(&Event::Connected),
                "seed {seed}: reconnected"
            );
            assert!(sim.side(0, s).negotiator.is_connected(), "seed {seed}");
        }
    }
}

#[test]
fn ice_restarts_exhausted_fail_the_link() {
    let mut sim = connected_pair(6);
    // The transport reports disconnected and never recovers.
    sim.transport(0, 0, TransportState::Disconnected);
    sim.run().unwrap();
    let ev = events(&sim, 0);
    let restarts = ev
        .iter()
        .filter(|e| matches!(e, Event::IceRestartQueued { .. }))
        .count();
    assert_eq!(restarts, 3);
    assert_eq!(
        ev.last(),
        Some(&Event::Failed(FailReason::IceRestartsExhausted {
            attempts: 3
        }))
    );
    assert!(events(&sim, 1).iter().any(|e| matches!(
        e,
        Event::Closed {
            by_remote: true,
            ..
        }
    )));
    // Every restart was negotiated before the link gave up.
    assert_eq!(sim.side(0, 0).negotiator.stats().answers_applied, 1 + 3);
}

#[test]
fn peer_faults_are_errors_not_panics() {
    let now = Instant::now();
    let mut n = Negotiator::with_seed(Config::default(), 9);
    let mut e = ModelEngine::new(0);
    let answer = Signal::Description {
        description: SessionDescription {
            kind: SdpKind::Answer,
            sdp: "v=0\r\na=ice-ufrag:x\r\n".into(),
        },
        tie_breaker: TieBreaker::MAX,
    };
    assert_eq!(
        n.handle_signal(now, answer, &mut e),
        Err(HandleSignalError::UnexpectedAnswer)
    );
    let err = n
        .handle_signal(
            now,
            Signal::Candidate(IceCandidate::end_of_candidates("")),
            &mut e,
        )
        .unwrap_err();
    assert!(err.is_peer_fault());
    assert_eq!(n.link_state(), LinkState::Idle);
    let bad_offer = Signal::Description {
        description: SessionDescription {
            kind: SdpKind::Offer,
            sdp: "v=0\r\n".into(),
        },
        tie_breaker: TieBreaker::MAX,
    };
    assert_eq!(
        n.handle_signal(now, bad_offer, &mut e),
        Err(HandleSignalError::MissingIceUfrag(SdpKind::Offer))
    );
    assert_eq!(n.link_state(), LinkState::Failed);
    assert!(matches!(n.poll_signal(now, &mut e), Some(Signal::Bye(_))));
    assert!(e.violations().is_empty());
}

#[test]
fn caller_misuse_is_refused() {
    let now = Instant::now();
    let mut n = Negotiator::with_seed(Config::default(), 9);
    assert_eq!(n.dial(now), Err(glare_negotiate::DialError::NothingQueued));
    assert!(matches!(
        n.request(Change::StopMedia {
            media: glare_negotiate::ChangeId(9)
        }),
        Err(glare_negotiate::RequestError::UnknownMedia(_))
    ));
    let m = n
        .request(Change::AddMedia {
            kind: MediaKind::Audio,
            direction: Direction::SendOnly,
        })
        .unwrap();
    n.request(Change::StopMedia { media: m }).unwrap();
    assert!(matches!(
        n.request(Change::SetDirection {
            media: m,
            direction: Direction::Inactive
        }),
        Err(glare_negotiate::RequestError::MediaStopped(_))
    ));
    let r1 = n.request(Change::IceRestart).unwrap();
    assert_eq!(
        n.request(Change::IceRestart),
        Ok(r1),
        "coalesced while queued"
    );
    assert!(!n.is_negotiation_needed(), "not before the link starts");
    n.dial(now).unwrap();
    assert!(n.is_negotiation_needed());
    assert_eq!(n.dial(now), Err(glare_negotiate::DialError::AlreadyStarted));
}

#[test]
fn fuzz_body_runs_on_sample_inputs() {
    let epoch = Instant::now();
    let inputs: &[&[u8]] = &[
        b"",
        b"\x01",
        b"seedseed\x02\x00\x02\x01\x03\x01\x03\x00\x04\x00",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x01\x07\x02\x00\x02\x01\x0b\x03\x07\x00",
        b"\x03\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02\x01\x00\x04\x01\x0a\x03\x01\x03\x00\x05\x01\x09\x00",
        b"\x07\x07\x07\x07\x07\x07\x07\x07\x02\x00\x0a\x00\x0a\x01\x0a\x02\x0a\x03\x0a\x04\x0a\x05\x0a\x06\x0a\x07\x0a\x08",
        b"\x01\x02\x03\x04\x05\x06\x07\x08\x02\x00\x06\xff\x07\x00\x0b\x07\x08\x01\x03\x00",
    ];
    for data in inputs {
        glare_negotiate::fuzz::negotiate_ops(data, epoch);
    }
    // And a deterministic pseudo-random batch (`GLARE_FUZZ_SAMPLES` of them).
    let samples = std::env::var("GLARE_FUZZ_SAMPLES").map_or(300, |v| v.parse().unwrap());
    let mut r = SplitMix64::new(42);
    let (mut connected, mut offers) = (0, 0);
    for _ in 0..samples {
        let len = r.below(96) as usize;
        let data: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
        glare_negotiate::fuzz::negotiate_ops(&data, epoch);
        let outcome = glare_negotiate::fuzz::run_ops(&data, epoch, false).unwrap();
        connected += u64::from(outcome.connected);
        offers += outcome.offers;
    }
    eprintln!("{samples} random inputs: {connected} fully checked and connected, {offers} offers");
    assert!(
        connected * 10 > samples,
        "random inputs rarely get anywhere"
    );
}

/// Found by `cargo xtask fuzz negotiate_ops`: 120 `advance` ops use up exactly 600 s of
/// virtual time before a `dial`; the simulator counted its quiescence deadline from the
/// epoch, not from when `run` was called, and reported a livelock that was not one.
#[test]
fn fuzz_regression_time_advanced_before_run() {
    let data =
        include_bytes!("../../../fuzz/corpus/negotiate_ops/regression-time-advanced-before-run");
    let outcome = glare_negotiate::fuzz::run_ops(data, Instant::now(), true).unwrap();
    assert!(
        outcome.connected,
        "the dial must end connected: {outcome:?}"
    );
}

/// An engine that applies data channels without SDP once the first exchange is done
/// (as str0m does on an existing SCTP association), and offers everything else.
struct Direct {
    ufrag: &'static str,
    has_app: bool,
    pending: bool,
    offers: u32,
}

impl glare_negotiate::SdpEngine for Direct {
    type Error = String;
    fn create_offer(
        &mut self,
        changes: &[glare_negotiate::QueuedChange],
    ) -> Result<Option<String>, String> {
        assert!(!self.pending, "create_offer with an offer pending");
        if self.has_app
            && changes
                .iter()
                .all(|q| matches!(q.change, Change::OpenChannel { .. }))
        {
            return Ok(None);
        }
        self.pending = true;
        self.offers += 1;
        Ok(Some(format!("v=0\r\na=ice-ufrag:{}\r\n", self.ufrag)))
    }
    fn accept_offer(&mut self, _offer: &str) -> Result<String, String> {
        self.pending = false;
        self.has_app = true;
        Ok(format!("v=0\r\na=ice-ufrag:{}\r\n", self.ufrag))
    }
    fn accept_answer(&mut self, _answer: &str) -> Result<(), String> {
        assert!(self.pending, "answer with no offer pending");
        self.pending = false;
        self.has_app = true;
        Ok(())
    }
    fn rollback(&mut self) {
        self.pending = false;
    }
    fn add_remote_candidate(&mut self, _c: &IceCandidate) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn changes_applied_without_an_offer() {
    let now = Instant::now();
    let mk = |ufrag| Direct {
        ufrag,
        has_app: false,
        pending: false,
        offers: 0,
    };
    let (mut a, mut ea) = (Negotiator::with_seed(Config::default(), 1), mk("aaaa"));
    let (mut b, mut eb) = (Negotiator::with_seed(Config::default(), 2), mk("bbbb"));
    let exchange = |a: &mut Negotiator, ea: &mut Direct, b: &mut Negotiator, eb: &mut Direct| {
        for _ in 0..10 {
            let to_b: Vec<Signal> = std::iter::from_fn(|| a.poll_signal(now, ea)).collect();
            let to_a: Vec<Signal> = std::iter::from_fn(|| b.poll_signal(now, eb)).collect();
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
            for s in to_b {
                b.handle_signal(now, s, eb).unwrap();
            }
            for s in to_a {
                a.handle_signal(now, s, ea).unwrap();
            }
        }
        panic!("no quiescence");
    };
    a.request(channel("first")).unwrap();
    a.dial(now).unwrap();
    exchange(&mut a, &mut ea, &mut b, &mut eb);
    assert_eq!(ea.offers, 1);
    while a.poll_event().is_some() {}

    // A second channel needs no SDP: negotiated at once, no signal, still stable.
    let second = a.request(channel("second")).unwrap();
    assert!(a.is_negotiation_needed());
    assert_eq!(a.poll_signal(now, &mut ea), None);
    assert_eq!(a.signaling_state(), SignalingState::Stable);
    assert!(a.queued().is_empty());
    let ev: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert_eq!(
        ev,
        vec![
            Event::ChangesNegotiated { ids: vec![second] },
            Event::NegotiationComplete
        ]
    );
    assert_eq!(a.stats().applied_without_offer, 1);
    assert_eq!(a.stats().offers_sent, 1);

    // A channel queued with a media change is offered with it.
    let third = a.request(channel("third")).unwrap();
    let media = a
        .request(Change::AddMedia {
            kind: MediaKind::Audio,
            direction: Direction::SendRecv,
        })
        .unwrap();
    exchange(&mut a, &mut ea, &mut b, &mut eb);
    assert_eq!(ea.offers, 2);
    let ev: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(ev.contains(&Event::ChangesNegotiated {
        ids: vec![third, media]
    }));
    assert_eq!(a.stats().applied_without_offer, 1);
}

/// An engine whose descriptions carry `lines` media-sized lines each: every media
/// line added to a session makes every later description longer.
struct Growing {
    ufrag: &'static str,
    offer_lines: usize,
    answer_lines: usize,
    rolled_back: bool,
}

impl Growing {
    fn sdp(&self, lines: usize) -> String {
        let mut sdp = format!("v=0\r\na=ice-ufrag:{}\r\n", self.ufrag);
        for i in 0..lines {
            sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
        }
        sdp
    }
}

impl glare_negotiate::SdpEngine for Growing {
    type Error = String;
    fn create_offer(
        &mut self,
        _changes: &[glare_negotiate::QueuedChange],
    ) -> Result<Option<String>, String> {
        Ok(Some(self.sdp(self.offer_lines)))
    }
    fn accept_offer(&mut self, _offer: &str) -> Result<String, String> {
        Ok(self.sdp(self.answer_lines))
    }
    fn accept_answer(&mut self, _answer: &str) -> Result<(), String> {
        Ok(())
    }
    fn rollback(&mut self) {
        self.rolled_back = true;
    }
    fn add_remote_candidate(&mut self, _c: &IceCandidate) -> Result<(), String> {
        Ok(())
    }
}

/// The cause of the facade's media-glare timeout: after about 25 media lines
/// str0m's offer no longer fit in a 64 KiB signal, the peer dropped it, and the
/// offerer waited for an answer until its answer timeout. Now a description too
/// large to send fails the link at once, with the reason.
#[test]
fn a_description_too_large_for_a_signal_fails_the_link_at_once() {
    let now = Instant::now();
    let fits = 1000; // ~46 KB
    let too_many = 2000; // ~92 KB
    let mk = |ufrag, offer_lines, answer_lines| Growing {
        ufrag,
        offer_lines,
        answer_lines,
        rolled_back: false,
    };

    // Offer side.
    let mut a = Negotiator::with_seed(Config::default(), 1);
    let mut ea = mk("aaaa", too_many, 0);
    a.request(Change::AddMedia {
        kind: MediaKind::Audio,
        direction: Direction::SendRecv,
    })
    .unwrap();
    a.dial(now).unwrap();
    let signals: Vec<Signal> = std::iter::from_fn(|| a.poll_signal(now, &mut ea)).collect();
    assert!(
        matches!(signals.as_slice(), [Signal::Bye(_)]),
        "no offer goes out, a bye does: {signals:?}"
    );
    assert!(ea.rolled_back, "the engine's pending offer is rolled back");
    assert_eq!(a.link_state(), LinkState::Failed);
    assert_eq!(a.stats().offers_sent, 0);
    let failed: Vec<Event> = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, Event::Failed(_)))
        .collect();
    let [Event::Failed(FailReason::DescriptionTooLarge { kind, len })] = failed.as_slice() else {
        panic!("{failed:?}");
    };
    assert_eq!(*kind, SdpKind::Offer);
    assert!(*len > glare_proto::signal::MAX_SIGNAL_LEN, "{len}");

    // Answer side: a fitting offer whose answer does not fit.
    let mut a = Negotiator::with_seed(Config::default(), 2);
    let mut ea = mk("aaaa", fits, 0);
    let mut b = Negotiator::with_seed(Config::default(), 3);
    let mut eb = mk("bbbb", 0, too_many);
    a.request(channel("data")).unwrap();
    a.dial(now).unwrap();
    let offer = a.poll_signal(now, &mut ea).expect("the offer fits");
    assert!(matches!(offer, Signal::Description { .. }), "{offer:?}");
    assert!(offer.encode().len() <= glare_proto::signal::MAX_SIGNAL_LEN);
    let err = b.handle_signal(now, offer, &mut eb).unwrap_err();
    assert!(!err.is_peer_fault(), "{err:?}");
    assert_eq!(b.link_state(), LinkState::Failed);
    assert!(matches!(b.poll_signal(now, &mut eb), Some(Signal::Bye(_))));
    assert!(std::iter::from_fn(|| b.poll_event()).any(|e| matches!(
        e,
        Event::Failed(FailReason::DescriptionTooLarge {
            kind: SdpKind::Answer,
            ..
        })
    )));
}
