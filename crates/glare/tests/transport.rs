//! glare-rtc served by glare-udp (issue 5, "through the driver"): real UDP sockets on
//! loopback, real str0m, two reactors. Signals are passed directly (no broker).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use glare::file::Sha256;
use glare::transport::{Endpoint, Signals};
use glare::{ChannelOptions, Config, Connection, DataChannel, Message};

const LIMIT: Duration = Duration::from_secs(50);

/// Carries one side's signals to the other, in order.
fn pump(mut from: Signals, to: Connection) {
    tokio::spawn(async move {
        while let Some(s) = from.next().await {
            if to.handle_signal(s).await.is_err() {
                break;
            }
        }
    });
}

/// One link between two endpoints: `a` dials.
async fn link(a: &Endpoint, b: &Endpoint) -> (Connection, Connection) {
    let (ca, sa) = a.connection().await.unwrap();
    let (cb, sb) = b.connection().await.unwrap();
    pump(sa, cb.clone());
    pump(sb, ca.clone());
    ca.dial().await.unwrap();
    (ca, cb)
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn data(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

async fn send_all(chan: &DataChannel, data: &Bytes, chunk: usize) {
    let sender = chan.sender();
    let mut at = 0;
    while at < data.len() {
        let end = (at + chunk).min(data.len());
        sender.send(data.slice(at..end)).await.unwrap();
        at = end;
    }
}

/// Reads `len` bytes of binary messages; returns their SHA-256.
async fn recv_hash(chan: &mut DataChannel, len: usize) -> String {
    let mut h = Sha256::default();
    let mut got = 0;
    while got < len {
        match chan.recv().await {
            Some(Message::Binary(b)) => {
                got += b.len();
                h.update(&b);
            }
            other => panic!("unexpected {other:?} after {got} bytes"),
        }
    }
    assert_eq!(got, len, "exactly the bytes sent");
    h.finish_hex()
}

async fn endpoints(config: Config) -> (Endpoint, Endpoint) {
    (
        Endpoint::bind(config.clone()).await.unwrap(),
        Endpoint::bind(config).await.unwrap(),
    )
}

/// Moves `len` bytes each way on one channel at the same time; checks both digests.
async fn both_ways(a: &Connection, b: &Connection, len: usize) -> (String, String) {
    let mut ch_a = a
        .open_channel("bulk", ChannelOptions::default())
        .await
        .unwrap();
    let mut ch_b = b.accept_channel().await.expect("b sees the channel");
    assert_eq!(ch_b.label(), "bulk");
    let (da, db) = (data(len, 1), data(len, 2));
    let (ha, hb) = (Sha256::hex_of(&da), Sha256::hex_of(&db));
    let sa = ch_a.sender();
    let sb = ch_b.sender();
    let send_a = tokio::spawn({
        let da = da.clone();
        async move {
            let mut at = 0;
            while at < da.len() {
                let end = (at + 16 * 1024).min(da.len());
                sa.send(da.slice(at..end)).await.unwrap();
                at = end;
            }
        }
    });
    let send_b = tokio::spawn({
        let db = db.clone();
        async move {
            let mut at = 0;
            while at < db.len() {
                let end = (at + 16 * 1024).min(db.len());
                sb.send(db.slice(at..end)).await.unwrap();
                at = end;
            }
        }
    });
    let (got_b, got_a) = tokio::join!(recv_hash(&mut ch_b, len), recv_hash(&mut ch_a, len));
    send_a.await.unwrap();
    send_b.await.unwrap();
    assert_eq!(got_b, ha, "a → b intact");
    assert_eq!(got_a, hb, "b → a intact");
    (got_b, got_a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_64_mib_both_ways_with_checksums() {
    tokio::time::timeout(LIMIT, async {
        let (ea, eb) = endpoints(Config::loopback()).await;
        let (a, b) = link(&ea, &eb).await;
        a.connected().await.unwrap();
        b.connected().await.unwrap();
        both_ways(&a, &b, 64 << 20).await;
        let stats = a.stats().await.unwrap();
        assert!(stats.message_bytes_out >= 64 << 20 && stats.message_bytes_in >= 64 << 20);
        a.close("done").await;
        assert!(b.closed().await.is_over());
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_channel_keeps_1000_messages_in_order() {
    tokio::time::timeout(LIMIT, async {
        let (ea, eb) = endpoints(Config::loopback()).await;
        let (a, b) = link(&ea, &eb).await;
        let ch_a = a
            .open_channel("ordered", ChannelOptions::default())
            .await
            .unwrap();
        let mut ch_b = b.accept_channel().await.unwrap();
        let sender = ch_a.sender();
        tokio::spawn(async move {
            for i in 0..1000u32 {
                sender.send_text(&format!("m{i}")).await.unwrap();
            }
        });
        for i in 0..1000u32 {
            assert_eq!(ch_b.recv().await, Some(Message::Text(format!("m{i}"))));
        }
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_share_one_socket_per_side() {
    const N: usize = 100;
    const LEN: usize = 256 * 1024;
    tokio::time::timeout(LIMIT, async {
        // The driver tells links apart by (local, remote) address: side A is a
        // wildcard socket on the loopback device and link i offers 127.0.0.(10+i);
        // side B is one address serving all 100.
        let mut wild = Config::loopback();
        wild.bind = SocketAddr::from(([0, 0, 0, 0], 0));
        wild.udp.socket.bind_device = Some("lo".into());
        let ea = Endpoint::bind(wild)
            .await
            .expect("a wildcard socket on lo (Linux)");
        let eb = Endpoint::bind(Config::loopback()).await.unwrap();
        let port = ea.local_addr().port();
        let mut tasks = Vec::new();
        for i in 0..N {
            let (ea, eb) = (ea.clone(), eb.clone());
            tasks.push(tokio::spawn(async move {
                let local = SocketAddr::from(([127, 0, 0, 10 + i as u8], port));
                let (ca, sa) = ea.connection_from(&[local]).await.unwrap();
                let (cb, sb) = eb.connection().await.unwrap();
                pump(sa, cb.clone());
                pump(sb, ca.clone());
                ca.dial().await.unwrap();
                let (a, b) = (ca, cb);
                let ch_a = a
                    .open_channel("bulk", ChannelOptions::default())
                    .await
                    .unwrap();
                let Some(mut ch_b) = b.accept_channel().await else {
                    panic!(
                        "link {i}: no channel; links {:?} / {:?}",
                        a.state(),
                        b.state()
                    );
                };
                let d = data(LEN, i as u64 + 10);
                let want = Sha256::hex_of(&d);
                let (_, got) =
                    tokio::join!(send_all(&ch_a, &d, 16 * 1024), recv_hash(&mut ch_b, LEN));
                assert_eq!(got, want, "link {i} intact");
                (a, b)
            }));
        }
        let mut links = Vec::new();
        for t in tasks {
            links.push(t.await.unwrap());
        }
        let (sa, sb) = (ea.udp_stats().await.unwrap(), eb.udp_stats().await.unwrap());
        assert_eq!(sa.connections, N as u64, "one socket serves every link");
        assert_eq!(sb.connections, N as u64);
        assert!(sb.received_bytes > (N * LEN) as u64);
        for (a, _) in &links {
            a.close("done").await;
        }
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gso_and_gro_on_or_off_deliver_identical_bytes() {
    const LEN: usize = 8 << 20;
    tokio::time::timeout(LIMIT, async {
        let mut digests = Vec::new();
        for batching in [true, false] {
            let mut config = Config::loopback();
            config.udp.socket.gso = batching;
            config.udp.socket.gro = batching;
            let (ea, eb) = endpoints(config).await;
            let (a, b) = link(&ea, &eb).await;
            digests.push(both_ways(&a, &b, LEN).await);
            let stats = ea.udp_stats().await.unwrap();
            if !batching {
                assert_eq!(
                    stats.send_syscalls, stats.sent_datagrams,
                    "GSO off: one datagram per send"
                );
                assert_eq!(stats.gro_batches, 0, "GRO off: no receive batches");
            }
            a.close("done").await;
        }
        assert_eq!(digests[0], digests[1], "same bytes either way");
    })
    .await
    .expect("within the time limit");
}

/// A STUN server on loopback that answers every Binding request with the mapped
/// address the test sets (as a NAT would after re-mapping the socket), for at most
/// 200 requests or until the test ends.
async fn stun_server(mapped: std::sync::Arc<std::sync::Mutex<SocketAddr>>) -> SocketAddr {
    use stun_rs::attributes::stun::XorMappedAddress;
    use stun_rs::methods::BINDING;
    use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0; 1500];
        for _ in 0..200 {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok((request, _)) = MessageDecoderBuilder::default().build().decode(&buf[..n])
            else {
                continue;
            };
            let answer = *mapped.lock().unwrap();
            let reply = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                .with_transaction_id(*request.transaction_id())
                .with_attribute(XorMappedAddress::from(answer))
                .build();
            let mut out = [0; 256];
            let n = MessageEncoderBuilder::default()
                .build()
                .encode(&mut out, &reply)
                .unwrap();
            let _ = socket.send_to(&out[..n], from).await;
        }
    });
    addr
}

/// The candidate lines of a signal (a description's `a=candidate` lines, or a
/// trickled candidate).
fn candidate_lines(s: &glare::proto::signal::Signal) -> Vec<String> {
    match s {
        glare::proto::signal::Signal::Description { description, .. } => description
            .sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a="))
            .filter(|l| l.starts_with("candidate:"))
            .map(str::to_owned)
            .collect(),
        glare::proto::signal::Signal::Candidate(c) => vec![c.candidate.clone()],
        _ => Vec::new(),
    }
}

/// The server-reflexive candidates a link offers now.
async fn srflx_of(c: &Connection) -> Vec<SocketAddr> {
    c.local_candidates()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, t)| *t == glare::CandidateType::ServerReflexive)
        .map(|(a, _)| a)
        .collect()
}

/// The socket's mapped address changes (a NAT re-mapped it): gathering again gives
/// the live link the new server-reflexive candidate and withdraws the old one,
/// leaves a connected link connected (no restart for it), a restart then completes
/// with the new candidates, and new links offer only the new one. (That a
/// withdrawn candidate leaves the restart offer: glare-rtc's
/// `a_withdrawn_candidate_leaves_the_restart_offer_and_a_new_one_joins_it`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_mapped_address_reaches_live_links_and_the_old_one_leaves() {
    // Boxed: the test's future holds many large ones (a debug build's stack).
    tokio::time::timeout(
        LIMIT,
        Box::pin(async {
            // Nothing listens on 127.0.0.77: checks to these addresses go nowhere.
            let before: SocketAddr = "127.0.0.77:41000".parse().unwrap();
            let after: SocketAddr = "127.0.0.77:42000".parse().unwrap();
            let mapped = std::sync::Arc::new(std::sync::Mutex::new(before));
            let stun = stun_server(std::sync::Arc::clone(&mapped)).await;
            let mut config = Config::loopback();
            config
                .ice_servers
                .push(glare::IceServer::parse(&format!("stun:{stun}")).unwrap());
            let ea = Endpoint::bind(config).await.unwrap();
            let eb = Endpoint::bind(Config::loopback()).await.unwrap();
            let reflexive = |e: &Endpoint| {
                e.reflexive_candidates()
                    .iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>()
            };
            assert_eq!(reflexive(&ea), [before]);

            // Signals pass through a tap that keeps a copy of what goes through the
            // caller (before the in-band channel is open, all of them).
            let (ca, mut sa) = ea.connection().await.unwrap();
            let (cb, sb) = eb.connection().await.unwrap();
            pump(sb, ca.clone());
            let (tap_tx, mut tap) = tokio::sync::mpsc::unbounded_channel();
            {
                let cb = cb.clone();
                tokio::spawn(async move {
                    while let Some(s) = sa.next().await {
                        let _ = tap_tx.send(s.clone());
                        if cb.handle_signal(s).await.is_err() {
                            break;
                        }
                    }
                });
            }
            ca.dial().await.unwrap();
            ca.connected().await.unwrap();
            cb.connected().await.unwrap();
            let offer = candidate_lines(&tap.recv().await.expect("the offer"));
            assert!(
                offer.iter().any(|l| l.contains(" 41000 typ srflx")),
                "{offer:?}"
            );
            assert_eq!(srflx_of(&ca).await, [before]);

            *mapped.lock().unwrap() = after;
            ea.regather();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while srflx_of(&ca).await != [after] {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the link gets the new address"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(reflexive(&ea), [after]);
            // Connected links are left as they are: no restart for them.
            assert_eq!(ca.state(), glare::State::Connected);
            assert_eq!(ca.stats().await.unwrap().ice_restarts, 0);

            ca.restart_ice().await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while ca.stats().await.unwrap().ice_restarts == 0
                || cb.stats().await.unwrap().ice_restarts == 0
            {
                assert!(tokio::time::Instant::now() < deadline, "restart completes");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(srflx_of(&ca).await, [after]);
            let ch = ca
                .open_channel("after", ChannelOptions::default())
                .await
                .unwrap();
            let mut theirs = cb.accept_channel().await.expect("b sees the channel");
            ch.send_text("still here").await.unwrap();
            assert_eq!(
                theirs.recv().await,
                Some(Message::Text("still here".into()))
            );

            // A new link on a offers the new address only.
            let (cc, mut sc) = ea.connection().await.unwrap();
            cc.dial().await.unwrap();
            let first = sc.next().await.expect("an offer");
            let lines = candidate_lines(&first);
            assert!(
                lines.iter().any(|l| l.contains(" 42000 typ srflx")),
                "{lines:?}"
            );
            assert!(!lines.iter().any(|l| l.contains(" 41000 ")), "{lines:?}");
        }),
    )
    .await
    .expect("within the time limit");
}
