//! The reactor over real UDP on loopback.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{Received, TestConn, message, receive};
use glare_udp::{Config, DriverError, Ecn, HostFilter, Stats};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn config(gso: bool, gro: bool) -> Config {
    let mut c = Config::default();
    c.socket.gso = gso;
    c.socket.gro = gro;
    c
}

/// The datagrams of the transfer test: runs of same-size datagrams (GSO batches) cut
/// by shorter ones, an ECN change, and a tiny one.
fn transfer_plan() -> Vec<(Vec<u8>, Option<Ecn>)> {
    (0..400u32)
        .map(|seq| {
            let len = match seq % 50 {
                17 => 700,
                33 => 9,
                _ => 1200,
            };
            let ecn = if seq % 64 == 5 { None } else { Some(Ecn::Ect0) };
            (message(1, seq, len), ecn)
        })
        .collect()
}

async fn transfer(gso: bool, gro: bool) -> (Vec<Received>, Stats, Stats) {
    let sender = glare_udp::spawn::<TestConn>(loopback(), config(gso, gro)).unwrap();
    let receiver = glare_udp::spawn::<TestConn>(loopback(), config(gso, gro)).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sink = receiver.add(TestConn::new(1, tx.clone())).await.unwrap();
    let mut source = TestConn::new(1, tx);
    source.remote = Some(receiver.local_addr());
    source.held = transfer_plan().into();
    let source = sender.add(source).await.unwrap();
    let mut delivered = Vec::new();
    // Windows of 40 datagrams (about 48 KiB): never more than a socket buffer holds.
    for _ in 0..10 {
        source.call(|c, _| c.release(40)).await.unwrap();
        delivered.extend(receive(&mut rx, 40, LIMIT).await);
    }
    let stats = (
        sender.stats().await.unwrap(),
        receiver.stats().await.unwrap(),
    );
    sender.shutdown().await;
    receiver.shutdown().await;
    (delivered, stats.0, stats.1)
}

#[tokio::test]
async fn gso_and_gro_on_and_off_deliver_identical_bytes() {
    let plan = transfer_plan();
    for (gso, gro) in [(false, false), (true, false), (false, true), (true, true)] {
        let (delivered, sent, received) = transfer(gso, gro).await;
        assert_eq!(delivered.len(), plan.len(), "gso {gso} gro {gro}");
        let mut bad = Vec::new();
        for (seq, (got, (bytes, ecn))) in delivered.iter().zip(&plan).enumerate() {
            assert_eq!(&got.payload, bytes, "gso {gso} gro {gro} seq {seq}");
            if got.ecn != *ecn {
                bad.push((seq, got.ecn));
            }
        }
        assert!(bad.is_empty(), "gso {gso} gro {gro}: {bad:?}");
        assert_eq!(sent.sent_datagrams, 400);
        assert_eq!(received.received_datagrams, 400);
        assert_eq!(received.dropped_unknown + received.dropped_malformed, 0);
        if gso && gro {
            assert!(received.gro_batches > 0, "GRO should coalesce GSO batches");
        }
        if !gro {
            assert_eq!(received.gro_batches, 0);
        }
        if gso {
            assert!(
                sent.send_syscalls < 100,
                "GSO should batch: {} sendmsg for 400 datagrams",
                sent.send_syscalls
            );
        } else {
            assert_eq!(sent.send_syscalls, 400);
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test]
async fn garbage_is_dropped_and_counted() {
    for gro in [false, true] {
        let driver = glare_udp::spawn::<TestConn>(loopback(), config(true, gro)).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _conn = driver.add(TestConn::new(7, tx)).await.unwrap();
        let to = driver.local_addr();
        let attacker = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let stranger = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        // 50 random datagrams, 1..1400 bytes (never tagged 7: the first byte is >= 0x40).
        for _ in 0..50 {
            let len = 1 + (xorshift(&mut seed) % 1400) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            d[0] |= 0x40;
            attacker.send_to(&d, to).await.unwrap();
        }
        // 10 truncated STUN messages: the header says 8 more bytes than there are.
        for i in 0..10u8 {
            let mut d = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xA4, 0x42];
            d.extend_from_slice(&[i; 12]);
            d.extend_from_slice(&[0; 4]);
            attacker.send_to(&d, to).await.unwrap();
        }
        // 10 DTLS ClientHello-looking records from an unknown remote.
        for i in 0..10u8 {
            let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, i, 0, 100, 1];
            d.resize(114, i);
            stranger.send_to(&d, to).await.unwrap();
        }
        // 5 oversize datagrams.
        for _ in 0..5 {
            attacker.send_to(&[0x55; 3000], to).await.unwrap();
        }
        // 3 empty datagrams.
        for _ in 0..3 {
            attacker.send_to(&[], to).await.unwrap();
        }
        // Then a good one: the reactor is alive and still delivers.
        stranger.send_to(&message(7, 1, 100), to).await.unwrap();
        let got = receive(&mut rx, 1, LIMIT).await;
        assert_eq!(got[0].payload, message(7, 1, 100));
        let stats = driver.stats().await.unwrap();
        assert_eq!(stats.dropped_unknown, 60, "{stats:?}");
        assert_eq!(stats.dropped_malformed, 13, "{stats:?}");
        assert_eq!(stats.dropped_oversize, 5, "{stats:?}");
        assert_eq!(stats.received_datagrams, 79, "{stats:?}");
        assert_eq!(stats.pairs, 1, "only the good pair is learned: {stats:?}");
        driver.shutdown().await;
    }
}

/// 100 connections per side, one socket per side. Side A is a wildcard socket tied to
/// the loopback device, each connection sending from its own address 127.0.0.(10+i):
/// every pair is distinct, and A's demux needs the destination address of each
/// datagram (`IP_PKTINFO`). Side B is bound to 127.0.0.1 and learns its pairs through
/// `accepts()`; it echoes.
#[tokio::test]
async fn hundred_connections_multiplexed_on_one_socket_per_side() {
    const CONNECTIONS: u32 = 100;
    const ROUNDS: u32 = 10;
    let mut a_config = Config::default();
    a_config.socket.bind_device = Some("lo".to_owned());
    let a = glare_udp::spawn::<TestConn>(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), a_config)
        .expect("a wildcard socket tied to lo (needs Linux)");
    let b = glare_udp::spawn::<TestConn>(loopback(), Config::default()).unwrap();
    let a_port = a.local_addr().port();
    let local = |i: u32| SocketAddr::from(([127, 0, 0, 10 + i as u8], a_port));

    let candidates = a.host_candidates(&HostFilter::loopback_only()).unwrap();
    assert!(
        candidates.contains(&SocketAddr::from(([127, 0, 0, 1], a_port))),
        "{candidates:?}"
    );

    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    for i in 0..CONNECTIONS {
        let mut echo = TestConn::new(i, b_tx.clone());
        echo.echo = true;
        let _ = b.add(echo).await.unwrap();
    }
    let (a_tx, mut a_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for i in 0..CONNECTIONS {
        let mut c = TestConn::new(i, a_tx.clone());
        c.local = Some(local(i));
        c.remote = Some(b.local_addr());
        handles.push(a.add(c).await.unwrap());
    }
    for round in 0..ROUNDS {
        for (i, h) in handles.iter().enumerate() {
            let m = message(i as u32, round, 64 + (i * 7 + round as usize * 13) % 1100);
            h.call(move |c, _| c.outbox.push_back((m, None)))
                .await
                .unwrap();
        }
        let echoed = receive(&mut a_rx, CONNECTIONS as usize, LIMIT).await;
        let mut seen = vec![false; CONNECTIONS as usize];
        for r in echoed {
            let i = r.tag as usize;
            assert!(!seen[i], "connection {i} got two echoes in round {round}");
            seen[i] = true;
            assert_eq!(r.payload, message(r.tag, round, r.payload.len()));
            assert_eq!(r.payload.len(), 64 + (i * 7 + round as usize * 13) % 1100);
            assert_eq!(r.destination, local(r.tag), "dst_ip recovered");
            assert_eq!(r.source, b.local_addr());
        }
        let at_b = receive(&mut b_rx, CONNECTIONS as usize, LIMIT).await;
        for r in at_b {
            assert_eq!(r.source, local(r.tag));
            assert_eq!(r.destination, b.local_addr());
        }
    }
    let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
    for s in [&sa, &sb] {
        assert_eq!(s.connections, 100, "{s:?}");
        assert_eq!(s.pairs, 100, "{s:?}");
        assert_eq!(s.received_datagrams, 1000, "{s:?}");
        assert_eq!(s.sent_datagrams, 1000, "{s:?}");
        assert_eq!(
            s.dropped_unknown + s.dropped_malformed + s.dropped_oversize,
            0
        );
    }
}

#[tokio::test]
async fn ipv6_loopback_reports_the_destination() {
    let Ok(b) = glare_udp::spawn::<TestConn>("[::1]:0".parse().unwrap(), Config::default()) else {
        eprintln!("no IPv6 loopback here: nothing to test");
        return;
    };
    let a = glare_udp::spawn::<TestConn>("[::1]:0".parse().unwrap(), Config::default()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sink = b.add(TestConn::new(3, tx.clone())).await.unwrap();
    let mut c = TestConn::new(3, tx);
    c.remote = Some(b.local_addr());
    c.outbox.push_back((message(3, 0, 500), Some(Ecn::Ect1)));
    let _c = a.add(c).await.unwrap();
    let got = receive(&mut rx, 1, LIMIT).await;
    assert_eq!(got[0].destination, b.local_addr());
    assert_eq!(got[0].source, a.local_addr());
    assert_eq!(got[0].ecn, Some(Ecn::Ect1));
}

#[tokio::test(start_paused = true)]
async fn timers_follow_the_paused_clock() {
    let a = glare_udp::spawn::<TestConn>(loopback(), Config::default()).unwrap();
    let b = glare_udp::spawn::<TestConn>(loopback(), Config::default()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sink = b.add(TestConn::new(4, tx.clone())).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut c = TestConn::new(4, tx);
    c.remote = Some(b.local_addr());
    c.outbox.push_back((message(4, 0, 100), None));
    c.send_at = Some((start + Duration::from_secs(3600)).into_std());
    let _c = a.add(c).await.unwrap();
    let got = receive(&mut rx, 1, Duration::from_secs(7200)).await;
    assert_eq!(got[0].payload, message(4, 0, 100));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3600) && waited < Duration::from_secs(3601),
        "{waited:?}"
    );
}

#[tokio::test]
async fn handles_and_lifecycle() {
    let a = glare_udp::spawn::<TestConn>(loopback(), Config::default()).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let h = a.add(TestConn::new(5, tx.clone())).await.unwrap();
    assert_eq!(h.call(|c, _| c.tag).await, Ok(5));
    let c = h.remove().await.unwrap();
    assert_eq!(c.tag, 5);
    assert_eq!(
        h.call(|c, _| c.tag).await,
        Err(DriverError::UnknownConnection(h.id()))
    );
    // A connection that closes itself is removed after its next drain.
    let h = a.add(TestConn::new(6, tx.clone())).await.unwrap();
    h.call(|c, _| c.closed = true).await.unwrap();
    assert_eq!(a.stats().await.unwrap().connections, 0);
    assert!(matches!(
        h.call(|_, _| ()).await,
        Err(DriverError::UnknownConnection(_))
    ));
    // A transmit from the wrong source is dropped and counted, never sent.
    let mut bad = TestConn::new(7, tx);
    bad.remote = Some(a.local_addr());
    bad.local = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
    bad.outbox.push_back((message(7, 0, 10), None));
    let _bad = a.add(bad).await.unwrap();
    let s = a.stats().await.unwrap();
    assert_eq!((s.dropped_bad_transmit, s.sent_datagrams), (1, 0));
    a.shutdown().await;
    a.closed().await;
    assert_eq!(a.stats().await, Err(DriverError::Closed));
}

#[tokio::test]
async fn call_all_reaches_every_connection_and_a_weak_driver_does_not_keep_it_alive() {
    let a = glare_udp::spawn::<TestConn>(loopback(), Config::default()).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for tag in 0..5 {
        handles.push(a.add(TestConn::new(tag, tx.clone())).await.unwrap());
    }
    handles.remove(2).remove().await.unwrap();
    assert_eq!(a.call_all(|c, _| c.tag += 100).await, Ok(4));
    let mut tags = Vec::new();
    for h in &handles {
        tags.push(h.call(|c, _| c.tag).await.unwrap());
    }
    assert_eq!(tags, [100, 101, 103, 104]);

    let weak = a.downgrade();
    assert!(weak.upgrade().is_some());
    drop(handles);
    drop(a);
    // Every strong handle is gone: the reactor stops, the weak one cannot revive it.
    assert!(weak.upgrade().is_none());
}
