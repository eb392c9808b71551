//! glare-negotiate: the cost of one negotiation round (offer → answer applied), the
//! state machine's own work, with the model engine and with a do-nothing engine.
//!
//! `cargo bench -p glare-benches --bench negotiate`; criterion reports time per round
//! (`Throughput::Elements(1)`: one element is one round).
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glare_negotiate::sim::ModelEngine;
use glare_negotiate::{
    Change, ChangeId, Config, Direction, MediaKind, Negotiator, QueuedChange, SdpEngine,
};
use glare_proto::signal::IceCandidate;

/// An engine that does nothing: what is left is the negotiator's own cost.
struct Null(&'static str);

impl SdpEngine for Null {
    type Error = String;
    fn create_offer(&mut self, _changes: &[QueuedChange]) -> Result<Option<String>, String> {
        Ok(Some(self.0.to_owned()))
    }
    fn accept_offer(&mut self, _offer: &str) -> Result<String, String> {
        Ok(self.0.to_owned())
    }
    fn accept_answer(&mut self, _answer: &str) -> Result<(), String> {
        Ok(())
    }
    fn rollback(&mut self) {}
    fn add_remote_candidate(&mut self, _candidate: &IceCandidate) -> Result<(), String> {
        Ok(())
    }
}

/// Two negotiators after their first exchange, and the media track side `a` owns.
fn pair<E: SdpEngine>(now: Instant, ea: &mut E, eb: &mut E) -> (Negotiator, Negotiator, ChangeId) {
    let mut a = Negotiator::with_seed(Config::default(), 1);
    let mut b = Negotiator::with_seed(Config::default(), 2);
    let media = a
        .request(Change::AddMedia {
            kind: MediaKind::Audio,
            direction: Direction::SendRecv,
        })
        .expect("a fresh link accepts changes");
    a.dial(now).expect("a change is queued");
    round_trip(now, &mut a, ea, &mut b, eb);
    (a, b, media)
}

/// Delivers everything `a` sends to `b` and back until both are quiet.
fn round_trip<E: SdpEngine>(
    now: Instant,
    a: &mut Negotiator,
    ea: &mut E,
    b: &mut Negotiator,
    eb: &mut E,
) {
    while let Some(offer) = a.poll_signal(now, ea) {
        b.handle_signal(now, offer, eb)
            .expect("the offer is accepted");
        while let Some(answer) = b.poll_signal(now, eb) {
            a.handle_signal(now, answer, ea)
                .expect("the answer is accepted");
        }
    }
    while a.poll_event().is_some() || b.poll_event().is_some() {}
}

fn bench_engine<E: SdpEngine>(c: &mut Criterion, name: &str, mut ea: E, mut eb: E) {
    let now = Instant::now();
    let (mut a, mut b, media) = pair(now, &mut ea, &mut eb);
    let mut group = c.benchmark_group("negotiate");
    group.throughput(Throughput::Elements(1));
    let mut flip = false;
    group.bench_function(name, |bench| {
        bench.iter(|| {
            // One round: request → offer → answer → answer applied. The change
            // (redirecting one track) keeps the session the same size every round.
            flip = !flip;
            let direction = if flip {
                Direction::SendOnly
            } else {
                Direction::SendRecv
            };
            a.request(Change::SetDirection { media, direction })
                .expect("the track is live");
            round_trip(now, &mut a, &mut ea, &mut b, &mut eb);
            black_box(a.signaling_state())
        });
    });
    group.finish();
}

fn rounds(c: &mut Criterion) {
    bench_engine(
        c,
        "round_model_engine",
        ModelEngine::new(0),
        ModelEngine::new(1),
    );
    bench_engine(
        c,
        "round_null_engine",
        Null("v=0\r\na=ice-ufrag:aaaa\r\n"),
        Null("v=0\r\na=ice-ufrag:bbbb\r\n"),
    );
}

criterion_group!(benches, rounds);
criterion_main!(benches);
