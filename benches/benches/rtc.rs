//! glare-rtc: two `Connection`s (str0m underneath) in memory, every datagram and
//! signal handed over at once, the real clock as `now`.
//!
//! `cargo bench -p glare-benches --bench rtc` prints, before criterion's groups:
//! - setup: wall-clock time from the first offer (`dial`) to an open data channel on
//!   both sides, median and p99 over 200 handshakes (`GLARE_RTC_SETUP_RUNS`);
//!
//! and criterion measures:
//! - `rtc/setup`: the same handshake (CPU cost: certificates, DTLS, SCTP);
//! - `rtc/transfer`: 16 MiB over one reliable ordered channel in 16 KiB messages
//!   (`Throughput::Bytes`: str0m's SCTP, DTLS and AES-GCM plus our `Connection`,
//!   per direction on one core).
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use glare_rtc::{ChannelHandle, ChannelOptions, Config, Connection, Event, Output};

struct Pair {
    peers: [Connection; 2],
    wire: [VecDeque<Wire>; 2],
    open: [Option<ChannelHandle>; 2],
    received: u64,
}

enum Wire {
    Datagram(SocketAddr, SocketAddr, Vec<u8>),
    Signal(glare_proto::signal::Signal),
}

impl Pair {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        let addrs: [SocketAddr; 2] = [
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.2:2000".parse().unwrap(),
        ];
        let mut peers = [
            Connection::new(now, Config::with_seed(seed)),
            Connection::new(now, Config::with_seed(seed ^ 0xffff)),
        ];
        for (p, a) in peers.iter_mut().zip(addrs) {
            p.add_local_candidate(a).unwrap();
        }
        Self {
            peers,
            wire: [VecDeque::new(), VecDeque::new()],
            open: [None, None],
            received: 0,
        }
    }

    /// Drains both sides and delivers everything at once, until nothing moves.
    /// Returns the earliest timeout.
    fn pump(&mut self) -> Instant {
        loop {
            let now = Instant::now();
            let mut timeout = now + Duration::from_secs(3600);
            for i in 0..2 {
                loop {
                    match self.peers[i].poll_output(now) {
                        Output::Transmit {
                            source,
                            destination,
                            contents,
                        } => self.wire[1 - i].push_back(Wire::Datagram(
                            source,
                            destination,
                            contents,
                        )),
                        Output::Signal(s) => self.wire[1 - i].push_back(Wire::Signal(s)),
                        Output::Event(Event::ChannelOpen(h, _)) => self.open[i] = Some(h),
                        Output::Event(Event::ChannelData(_, _, d)) => {
                            self.received += d.len() as u64;
                        }
                        Output::Event(_) => {}
                        Output::Timeout(t) => {
                            timeout = timeout.min(t);
                            break;
                        }
                    }
                }
            }
            if self.wire.iter().all(VecDeque::is_empty) {
                return timeout;
            }
            for i in 0..2 {
                while let Some(w) = self.wire[i].pop_front() {
                    match w {
                        Wire::Datagram(s, d, c) => self.peers[i].handle_datagram(now, s, d, &c),
                        Wire::Signal(s) => {
                            let _ = self.peers[i].handle_signal(now, s);
                        }
                    }
                }
            }
        }
    }

    /// Runs timers that are due (the real clock decides).
    fn tick(&mut self, timeout: Instant) {
        let now = Instant::now();
        if timeout <= now {
            for p in &mut self.peers {
                p.handle_timeout(now);
            }
        }
    }

    /// Dial to an open channel on both sides; returns the setup time.
    fn handshake(&mut self) -> Duration {
        let t0 = Instant::now();
        self.peers[0]
            .open_channel("bulk", &ChannelOptions::default())
            .unwrap();
        self.peers[0].dial(t0).unwrap();
        while self.open.iter().any(Option::is_none) {
            let timeout = self.pump();
            assert!(t0.elapsed() < Duration::from_secs(10), "no channel");
            self.tick(timeout);
        }
        t0.elapsed()
    }

    fn transfer(&mut self, total: u64, message: &[u8]) {
        let h = self.open[0].unwrap();
        let want = self.received + total;
        let mut sent = 0;
        while self.received < want {
            while sent < total && self.peers[0].write(h, true, message).unwrap() {
                sent += message.len() as u64;
            }
            let timeout = self.pump();
            self.tick(timeout);
        }
    }
}

fn setup_report() {
    let runs: usize = std::env::var("GLARE_RTC_SETUP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut times: Vec<Duration> = (0..runs)
        .map(|i| Pair::new(i as u64 * 2 + 1).handshake())
        .collect();
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "rtc setup (in memory, real clock, {runs} runs): median {:?}, p99 {:?}, min {:?}, max {:?}",
        pct(50),
        pct(99),
        times[0],
        times[times.len() - 1]
    );
}

fn setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtc");
    g.throughput(Throughput::Elements(1));
    let mut seed = 0;
    g.bench_function("setup", |b| {
        b.iter(|| {
            seed += 2;
            Pair::new(seed).handshake()
        });
    });
    g.finish();
}

fn transfer(c: &mut Criterion) {
    const TOTAL: u64 = 16 * 1024 * 1024;
    let message = vec![0x5a; 16 * 1024];
    let mut g = c.benchmark_group("rtc");
    g.throughput(Throughput::Bytes(TOTAL));
    g.sample_size(10);
    g.bench_function("transfer", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let mut p = Pair::new(i * 2 + 7);
                p.handshake();
                let t0 = Instant::now();
                p.transfer(TOTAL, &message);
                spent += t0.elapsed();
            }
            spent
        });
    });
    g.finish();
}

criterion_group!(benches, setup, transfer);

fn main() {
    setup_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
