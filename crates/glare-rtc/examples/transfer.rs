//! Moves 64 MiB (`GLARE_RTC_MIB`) over one reliable ordered data channel between two
//! `Connection`s in memory (SCTP send buffer: `GLARE_RTC_BUF_KIB`), datagrams handed over at once, the real clock as `now`;
//! prints the rate. For profiling the data path:
//!
//! ```text
//! cargo build --release -p glare-rtc --example transfer
//! perf record -g target/release/examples/transfer && perf report
//! ```
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare_rtc::{ChannelOptions, Config, Connection, Event, Output};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::var("GLARE_RTC_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let total = mib * 1024 * 1024;
    let start = Instant::now();
    let addrs: [SocketAddr; 2] = ["127.0.0.1:1000".parse()?, "127.0.0.2:2000".parse()?];
    // GLARE_RTC_BUF_KIB: the SCTP send buffer (default: glare's 1 MiB).
    let config = |seed| {
        let mut c = Config::with_seed(seed);
        if let Some(kib) = std::env::var("GLARE_RTC_BUF_KIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            c.sctp_max_buffered_amount = kib * 1024;
        }
        c
    };
    let mut peers = [
        Connection::new(start, config(1)),
        Connection::new(start, config(2)),
    ];
    for (p, a) in peers.iter_mut().zip(addrs) {
        p.add_local_candidate(a)?;
    }
    let h = peers[0].open_channel("bulk", &ChannelOptions::default())?;
    peers[0].dial(start)?;
    let message = vec![0x5au8; 16 * 1024];
    let mut wire: [VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>; 2] = Default::default();
    let (mut open, mut sent, mut received, mut datagrams) = (false, 0u64, 0u64, 0u64);
    let mut t0 = None;
    while received < total {
        let now = Instant::now();
        assert!(now - start < Duration::from_secs(600), "stuck");
        if open {
            while sent < total && peers[0].write(h, true, &message)? {
                sent += message.len() as u64;
            }
        }
        let mut timeout = now + Duration::from_secs(1);
        for i in 0..2 {
            loop {
                match peers[i].poll_output(now) {
                    Output::Transmit {
                        source,
                        destination,
                        contents,
                    } => wire[1 - i].push_back((source, destination, contents)),
                    Output::Signal(s) => {
                        let _ = peers[1 - i].handle_signal(now, s);
                    }
                    Output::Event(Event::ChannelOpen(c, _)) if i == 0 && c == h => {
                        open = true;
                        t0 = Some(Instant::now());
                    }
                    Output::Event(Event::ChannelData(_, _, d)) => received += d.len() as u64,
                    Output::Event(_) => {}
                    Output::Timeout(t) => {
                        timeout = timeout.min(t);
                        break;
                    }
                }
            }
        }
        let mut moved = false;
        for i in 0..2 {
            while let Some((s, d, c)) = wire[i].pop_front() {
                moved = true;
                datagrams += 1;
                peers[i].handle_datagram(now, s, d, &c);
            }
        }
        if !moved && timeout <= Instant::now() {
            for p in &mut peers {
                p.handle_timeout(Instant::now());
            }
        } else if !moved {
            for p in &mut peers {
                p.handle_timeout(now);
            }
        }
    }
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "{mib} MiB in {secs:.3} s: {:.0} Mbit/s, {datagrams} datagrams ({:.2} µs each)",
        total as f64 * 8.0 / secs / 1e6,
        secs * 1e6 / datagrams as f64
    );
    Ok(())
}
