//! Fuzz target bodies (enabled by the test-only `_fuzz` feature).

use std::time::{Duration, Instant};

use glare_proto::signal::{IceCandidate, SdpKind, SessionDescription, Signal, TieBreaker};

use crate::change::{Change, ChangeId, Direction, MediaKind};
use crate::sim::{Sim, SimConfig};

/// `negotiate_ops`: a sequence of operations and deliveries decoded from raw bytes,
/// run against a pair of negotiators with model engines, then the simulator's
/// invariants. `epoch` is any instant (the fuzz target passes one in: this crate never
/// reads a clock).
///
/// Layout: up to 8 bytes of seed, then `(op, arg)` byte pairs: request a change, dial,
/// deliver the next signal in one direction, advance time, a transport outage, `bye`,
/// lose a signal, inject a malformed or unexpected signal. After the last op the pair
/// runs to quiescence. Unless a signal was lost or injected, the full invariants must
/// hold; with faults, no panic and no engine-level invariant broken is all that is
/// asked.
pub fn negotiate_ops(data: &[u8], epoch: Instant) {
    if run_ops(data, epoch, false).is_err() {
        // Again, with a transcript of the run.
        let failure = run_ops(data, epoch, true).expect_err("the run is deterministic");
        panic!("{failure}");
    }
}

/// What one [`negotiate_ops`] input did (to measure how deep inputs get).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpsOutcome {
    /// Offers sent.
    pub offers: u64,
    /// Whether a signal was lost or injected (only the weaker checks applied).
    pub faults: bool,
    /// Whether the link ended connected and `stable`, fully checked.
    pub connected: bool,
}

/// [`negotiate_ops`] without the panic: the outcome, or what failed (with a
/// transcript if `trace`).
pub fn run_ops(data: &[u8], epoch: Instant, trace: bool) -> Result<OpsOutcome, String> {
    let (seed_bytes, ops) = data.split_at(data.len().min(8));
    let mut seed = [0u8; 8];
    seed[..seed_bytes.len()].copy_from_slice(seed_bytes);
    let seed = u64::from_le_bytes(seed);
    let mut cfg = SimConfig::quiet(seed);
    cfg.candidate_reorder = seed & 1 == 1;
    cfg.small_tie_breakers = seed & 2 == 2;
    cfg.trace = trace;
    let mut sim = Sim::new(cfg, epoch);
    let mut faults = false;
    for pair in ops.chunks(2) {
        let op = pair[0];
        let arg = pair.get(1).copied().unwrap_or(0);
        let side = usize::from(arg & 1);
        let fresh = !faults;
        // Faults (a lost or an injected signal) and `bye` need a marked argument, so
        // most inputs keep the full invariants.
        let marked = arg & 0xE0 == 0xE0;
        match op % 16 {
            0..=2 => {
                let change = decode_change(&sim, side, arg >> 1);
                sim.request(0, side, change);
            }
            3 => sim.dial(0, side),
            4..=8 => {
                if let Err(e) = sim.deliver(0, side)
                    && fresh
                {
                    return Err(e.to_string());
                }
            }
            9 | 13 => {
                let d = if op % 16 == 9 {
                    Duration::from_millis(u64::from(arg) * 4)
                } else {
                    Duration::from_secs(u64::from(arg % 8))
                };
                if let Err(e) = sim.advance(d)
                    && fresh
                {
                    return Err(e.to_string());
                }
            }
            10 => sim.outage(0, arg & 2 == 2),
            11 if marked => sim.bye(0, side),
            14 if marked => {
                faults |= sim.drop_next(0, side).is_some();
            }
            15 if marked => {
                faults = true;
                let signal = garbage(&sim, side, arg >> 1);
                // Peer faults come back as errors; only a panic is a finding here.
                let _ = sim.inject(0, side, signal);
            }
            _ => {}
        }
    }
    let result = sim.run().and_then(|()| sim.check());
    let mut outcome = OpsOutcome {
        offers: sim
            .links()
            .iter()
            .flat_map(|l| l.sides.iter())
            .map(|s| s.negotiator.stats().offers_sent)
            .sum(),
        faults,
        connected: false,
    };
    if faults {
        for link in sim.links() {
            for s in &link.sides {
                if let Some(v) = s.engine.violations().first() {
                    return Err(format!(
                        "engine invariant violated: {v}\n{}",
                        sim.transcript().join("\n")
                    ));
                }
            }
        }
        Ok(outcome)
    } else {
        result.map_err(|e| e.to_string())?;
        outcome.connected = sim.side(0, 0).negotiator.is_connected();
        Ok(outcome)
    }
}

fn decode_change(sim: &Sim, side: usize, arg: u8) -> Change {
    let media = sim
        .side(0, side)
        .media()
        .get(usize::from(arg >> 3))
        .copied()
        .unwrap_or(ChangeId(u64::from(arg >> 3)));
    let direction = match arg >> 5 {
        0 => Direction::SendRecv,
        1 => Direction::SendOnly,
        2 => Direction::RecvOnly,
        _ => Direction::Inactive,
    };
    match arg % 5 {
        0 => Change::OpenChannel {
            label: format!("f{arg}"),
        },
        1 => Change::AddMedia {
            kind: if arg & 8 == 0 {
                MediaKind::Audio
            } else {
                MediaKind::Video
            },
            direction,
        },
        2 => Change::SetDirection { media, direction },
        3 => Change::StopMedia { media },
        _ => Change::IceRestart,
    }
}

fn garbage(sim: &Sim, to: usize, arg: u8) -> Signal {
    let current = sim
        .side(0, to)
        .negotiator
        .remote_ufrag()
        .unwrap_or("e0g0")
        .to_owned();
    let description = |kind, sdp: &str| Signal::Description {
        description: SessionDescription {
            kind,
            sdp: sdp.to_owned(),
        },
        tie_breaker: TieBreaker::from_random_bits(u64::from(arg)),
    };
    let peer = 1 - to as u32;
    match arg % 9 {
        0 => description(SdpKind::Answer, "v=0\r\na=ice-ufrag:zz\r\na=x-owner:9\r\n"),
        1 => description(SdpKind::Offer, "v=0\r\n"),
        2 => description(SdpKind::Offer, "v=0\r\na=ice-ufrag:x\r\na=x-item:1:q\r\n"),
        3 => description(
            SdpKind::Offer,
            &format!("v=0\r\na=ice-ufrag:e{peer}g7\r\na=x-owner:{peer}\r\n"),
        ),
        4 => Signal::Candidate(IceCandidate {
            candidate: "candidate:9 1 udp 1 192.0.2.9 9 typ host".into(),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: format!("e{peer}g{}", arg % 4),
        }),
        5 => Signal::Candidate(IceCandidate::end_of_candidates("")),
        6 => Signal::Candidate(IceCandidate {
            candidate: "not a candidate".into(),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: current,
        }),
        7 => description(SdpKind::Answer, "v=0\r\n"),
        _ => Signal::Candidate(IceCandidate::end_of_candidates(current)),
    }
}
