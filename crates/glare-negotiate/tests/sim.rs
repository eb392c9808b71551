//! The deterministic simulator over many seeds (see `glare_negotiate::sim`).
//!
//! - `many_seeds`: `GLARE_SIM_SEEDS` seeds (default 10,000), run by CI.
//! - `replay`: the seed in `GLARE_SIM_SEED` (or a fixed one), with a transcript.
//! - `stress_million_seeds` (ignored): 1,000,000 seeds, `cargo xtask stress`.
//!
//! A failing seed prints itself and the command that replays it.

use std::time::Instant;

use glare_negotiate::sim::{SimReport, run_seed};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, not {value:?}")),
    )
}

/// Runs `count` seeds from `first`, on every core, and panics at the first failure
/// (replayed with a transcript).
fn run_seeds(first: u64, count: u64) -> SimReport {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let epoch = Instant::now();
    let started = Instant::now();
    let results: Vec<Result<SimReport, u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut total = SimReport::default();
                    let mut seed = first + t;
                    while seed < first + count {
                        match run_seed(seed, epoch, false) {
                            Ok(r) => {
                                total.delivered += r.delivered;
                                total.offers += r.offers;
                                total.changes += r.changes;
                                total.equal_collisions += r.equal_collisions;
                                total.closed_links += r.closed_links;
                            }
                            Err(_) => return Err(seed),
                        }
                        seed += threads;
                    }
                    Ok(total)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulator thread panicked"))
            .collect()
    });
    let mut total = SimReport::default();
    for r in results {
        match r {
            Ok(r) => {
                total.delivered += r.delivered;
                total.offers += r.offers;
                total.changes += r.changes;
                total.equal_collisions += r.equal_collisions;
                total.closed_links += r.closed_links;
            }
            Err(seed) => {
                let failure = run_seed(seed, epoch, true).expect_err("a failing seed fails again");
                panic!("{failure}");
            }
        }
    }
    eprintln!(
        "{count} seeds from {first} in {:.1?}: {} signals delivered, {} offers, {} changes negotiated, {} equal-tie-breaker collisions, {} links closed by bye",
        started.elapsed(),
        total.delivered,
        total.offers,
        total.changes,
        total.equal_collisions,
        total.closed_links,
    );
    total
}

#[test]
fn many_seeds() {
    let count = env_u64("GLARE_SIM_SEEDS").unwrap_or(10_000);
    let first = env_u64("GLARE_SIM_FIRST_SEED").unwrap_or(0);
    let total = run_seeds(first, count);
    assert!(
        total.changes > count,
        "the simulations negotiated almost nothing"
    );
}

#[test]
fn replay() {
    let seed = env_u64("GLARE_SIM_SEED").unwrap_or(1234);
    match run_seed(seed, Instant::now(), true) {
        Ok(report) => eprintln!("seed {seed}: {report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
#[ignore = "1,000,000 seeds: run by `cargo xtask stress` (release)"]
fn stress_million_seeds() {
    run_seeds(0, 1_000_000);
}
