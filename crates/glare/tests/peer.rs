//! The facade end to end: a real broker over HTTP/WebSocket, real UDP on loopback,
//! real str0m.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use glare::broker::{Config as BrokerConfig, Server};
use glare::file::Sha256;
use glare::{ChannelOptions, Config, Connection, Direction, MediaKind, Message, Peer, Role, State};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(55);

struct Broker {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Broker {
    async fn start() -> Self {
        let mut config = BrokerConfig::default();
        // Many links from one process: the per-channel send rate is not under test.
        config.limits.rate_per_sec = 100_000;
        config.limits.rate_burst = 100_000;
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            url,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// `RUST_LOG` (tracing targets syntax) turns on logs, to stderr.
fn logs() {
    use tracing_subscriber::{filter::Targets, prelude::*};
    let Ok(spec) = std::env::var("RUST_LOG") else {
        return;
    };
    let Ok(filter) = spec.parse::<Targets>() else {
        return;
    };
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .try_init();
}

async fn peer(url: &str) -> Peer {
    logs();
    Peer::new(url, Config::loopback()).await.unwrap()
}

fn opposite(a: Option<Role>, b: Option<Role>) -> bool {
    matches!(
        (a, b),
        (Some(Role::Polite), Some(Role::Impolite)) | (Some(Role::Impolite), Some(Role::Polite))
    )
}

/// Sends `text` on a new channel from `a`; `b` must receive it on the channel it
/// accepts.
async fn ping(a: &Connection, b: &Connection, label: &str) {
    let chan = a
        .open_channel(label, ChannelOptions::default())
        .await
        .unwrap();
    chan.send_text(label).await.unwrap();
    let mut got = b.accept_channel().await.expect("the channel arrives");
    assert_eq!(got.label(), label);
    assert_eq!(got.recv().await, Some(Message::Text(label.to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_connect_through_the_broker_and_exchange_data() {
    tokio::time::timeout(LIMIT, async {
        let broker = Broker::start().await;
        let (a, b) = (peer(&broker.url).await, peer(&broker.url).await);
        let sid = a
            .host(["test"], serde_json::json!({"name": "a"}), true)
            .await
            .unwrap();
        let listed = b.list("test").await.unwrap();
        assert!(listed.iter().any(|e| e.sid == sid), "A's session is listed");

        let cb = b.connect(&sid).await.unwrap();
        let ca = a.accept().await.expect("A sees the incoming link");
        assert_eq!(cb.remote(), Some(sid.as_str()));
        assert_eq!(
            ca.remote(),
            Some(b.cid()),
            "B had no session: its cid is the origin"
        );
        ca.connected().await.unwrap();
        cb.connected().await.unwrap();
        assert!(opposite(ca.role(), cb.role()));

        let data = Bytes::from((0..1u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let want = Sha256::hex_of(&data);
        let chan = cb
            .open_channel("bytes", ChannelOptions::default())
            .await
            .unwrap();
        let mut echo = ca.accept_channel().await.unwrap();
        tokio::spawn(async move {
            while let Some(m) = echo.recv().await {
                if echo
                    .send(Bytes::copy_from_slice(m.as_bytes()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let sender = chan.sender();
        let out = data.clone();
        tokio::spawn(async move {
            for c in out.chunks(16 * 1024) {
                sender.send(Bytes::copy_from_slice(c)).await.unwrap();
            }
        });
        let mut chan = chan;
        let mut h = Sha256::default();
        let mut got = 0;
        while got < data.len() {
            let m = chan.recv().await.expect("echoed bytes");
            got += m.len();
            h.update(m.as_bytes());
        }
        assert_eq!(h.finish_hex(), want, "1 MiB echoed intact");

        cb.close("bye from b").await;
        let state = ca.closed().await;
        assert_eq!(
            state,
            State::Closed {
                by_remote: true,
                reason: Some("bye from b".into())
            }
        );
        a.close().await;
        b.close().await;
        broker.stop().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_dial_at_once_200_times_one_link_each_time() {
    const ROUNDS: usize = 200;
    tokio::time::timeout(Duration::from_secs(58), async {
        let broker = Broker::start().await;
        let (a, b) = (peer(&broker.url).await, peer(&broker.url).await);
        let sa = a.host(["x"], serde_json::Value::Null, false).await.unwrap();
        let sb = b.host(["x"], serde_json::Value::Null, false).await.unwrap();
        let (mut polite_a, mut glare_rounds) = (0, 0);
        for round in 0..ROUNDS {
            let (ca, cb) = tokio::join!(a.connect(&sb), b.connect(&sa));
            let (ca, cb) = (ca.unwrap(), cb.unwrap());
            let (ra, rb) = tokio::join!(ca.connected(), cb.connected());
            ra.unwrap_or_else(|e| panic!("round {round}: A: {e}"));
            rb.unwrap_or_else(|e| panic!("round {round}: B: {e}"));
            let (role_a, role_b) = (ca.role(), cb.role());
            assert!(
                opposite(role_a, role_b),
                "round {round}: {role_a:?} {role_b:?}"
            );
            polite_a += usize::from(role_a == Some(Role::Polite));
            // Exactly one link per side: anything the other side started first is
            // the very link `connect` returned.
            for (p, c) in [(&a, &ca), (&b, &cb)] {
                while let Ok(Some(other)) =
                    tokio::time::timeout(Duration::from_millis(1), p.accept()).await
                {
                    assert_eq!(other.id(), c.id(), "round {round}: a second link");
                }
            }
            let (st_a, st_b) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
            if st_a.offers_sent + st_b.offers_sent > 1 {
                glare_rounds += 1;
            }
            ping(&ca, &cb, &format!("r{round}")).await;
            ca.close("round over").await;
            assert!(ca.closed().await.is_over());
            assert!(cb.closed().await.is_over(), "round {round}: B saw the bye");
        }
        assert!(
            polite_a > 0 && polite_a < ROUNDS,
            "roles vary: A polite {polite_a}/{ROUNDS}"
        );
        assert!(glare_rounds > 0, "offers actually crossed in some rounds");
        a.close().await;
        b.close().await;
        broker.stop().await;
    })
    .await
    .expect("within the time limit");
}

/// Rounds on one link before the next: every round adds two m-lines, each about
/// 2.5 KB in every later description (str0m's default codecs), and a description must
/// fit in one 64 KiB signal (glare-negotiate fails the link with `DescriptionTooLarge`
/// beyond that; `too_many_media_lines_fail_the_link_at_once_with_the_reason` in
/// glare-rtc shows it).
const ROUNDS_PER_LINK: usize = 10;

/// Issue 6: both sides open channels and add media at the same time, 100 rounds;
/// every channel and track ends open on both sides. Each round both open a channel
/// and add a track (audio and video in turns) at the same instant; the rounds run on
/// ten links in turn (ten rounds each), so that no description outgrows a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_open_channels_and_add_media_at_once_100_rounds() {
    const ROUNDS: usize = 100;
    tokio::time::timeout(LIMIT, async {
        let broker = Broker::start().await;
        let (a, b) = (peer(&broker.url).await, peer(&broker.url).await);
        let sb = b.host(["x"], serde_json::Value::Null, false).await.unwrap();
        let mut collided = 0;
        for link in 0..ROUNDS / ROUNDS_PER_LINK {
            // Boxed: the rounds' joined futures are too big for a test thread's stack.
            collided += Box::pin(media_rounds_on_one_link(&a, &b, &sb, link)).await;
        }
        assert!(collided > 0, "offers collided at least once");
        a.close().await;
        b.close().await;
        broker.stop().await;
    })
    .await
    .expect("within the time limit");
}

/// [`ROUNDS_PER_LINK`] rounds of both sides opening a channel and adding a track at
/// once, on a fresh link from `a` to `sb` (hosted by `b`); returns the link's offer
/// collisions (rollbacks plus ignored offers).
async fn media_rounds_on_one_link(a: &Peer, b: &Peer, sb: &str, link: usize) -> u64 {
    let ca = a.connect(sb).await.unwrap();
    let cb = b.accept().await.unwrap();
    ca.connected().await.unwrap();
    let (mut channels, mut tracks) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS_PER_LINK {
        let round = link * ROUNDS_PER_LINK + r;
        let (la, lb) = (format!("a{round}"), format!("b{round}"));
        let kind = if round.is_multiple_of(2) {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let (x, y, ta, tb) = tokio::join!(
            ca.open_channel(&la, ChannelOptions::default()),
            cb.open_channel(&lb, ChannelOptions::default()),
            ca.add_track(kind, Direction::SendRecv),
            cb.add_track(kind, Direction::SendRecv),
        );
        let (mut xa, mut yb) = (x.unwrap(), y.unwrap());
        let (x, y) = tokio::join!(cb.accept_channel(), ca.accept_channel());
        let (mut xb, mut ya) = (x.expect("b gets a's channel"), y.expect("a gets b's"));
        assert_eq!((xb.label(), ya.label()), (la.as_str(), lb.as_str()));
        for c in [&xa, &yb, &xb, &ya] {
            c.opened()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        xa.send_text(&la).await.unwrap();
        yb.send_text(&lb).await.unwrap();
        xb.send_text("back").await.unwrap();
        ya.send_text("back").await.unwrap();
        assert_eq!(xb.recv().await, Some(Message::Text(la.clone())));
        assert_eq!(ya.recv().await, Some(Message::Text(lb.clone())));
        assert_eq!(xa.recv().await, Some(Message::Text("back".into())));
        assert_eq!(yb.recv().await, Some(Message::Text("back".into())));
        channels.extend([xa, yb, xb, ya]);
        let (ta, tb) = (ta.unwrap(), tb.unwrap());
        let (ra, rb) = tokio::join!(cb.accept_track(), ca.accept_track());
        let (Some(ra), Some(rb)) = (ra, rb) else {
            panic!(
                "round {round}: a track is missing; links: {:?} / {:?}",
                ca.state(),
                cb.state()
            );
        };
        assert!(ra.is_remote() && rb.is_remote());
        assert_eq!((ra.kind(), rb.kind()), (kind, kind));
        for t in [&ta, &tb, &ra, &rb] {
            t.opened()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        tracks.extend([ta, tb, ra, rb]);
    }
    assert_eq!(
        (ca.state(), cb.state()),
        (State::Connected, State::Connected),
        "link {link}"
    );
    assert_eq!(
        (channels.len(), tracks.len()),
        (4 * ROUNDS_PER_LINK, 4 * ROUNDS_PER_LINK)
    );
    assert!(
        channels.iter().all(|c| !c.is_closed()),
        "link {link}: every channel is open"
    );
    assert!(
        tracks.iter().all(|t| t.is_open()),
        "link {link}: every track is open"
    );
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    let collided = sa.rollbacks + sb.rollbacks + sa.ignored_offers + sb.ignored_offers;
    ca.close("next link").await;
    cb.closed().await;
    collided
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_link_keeps_working_and_renegotiates() {
    tokio::time::timeout(LIMIT, async {
        let broker = Broker::start().await;
        let (a, b) = (peer(&broker.url).await, peer(&broker.url).await);
        let sb = b.host(["x"], serde_json::Value::Null, false).await.unwrap();
        let ca = a.connect(&sb).await.unwrap();
        let cb = b.accept().await.unwrap();
        ca.connected().await.unwrap();
        cb.connected().await.unwrap();
        ping(&ca, &cb, "before").await;
        broker.stop().await;

        // Data keeps flowing, and new channels open (in-band, DCEP).
        ping(&ca, &cb, "after").await;
        ping(&cb, &ca, "after-b").await;

        // A renegotiation (ICE restart: a new offer and answer) with no broker: the
        // signals must travel over the link's glare-signal channel.
        let before = ca.stats().await.unwrap().answers_applied;
        ca.restart_ice().await.unwrap();
        let mut renegotiated = false;
        for _ in 0..200 {
            if ca.stats().await.unwrap().answers_applied > before {
                renegotiated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            renegotiated,
            "the ICE restart was answered without the broker"
        );
        ping(&ca, &cb, "after-restart").await;
        assert_eq!(ca.state(), State::Connected);
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_peers_each_linked_to_several_through_one_socket() {
    const PEERS: usize = 50;
    const DIALS: usize = 3;
    tokio::time::timeout(LIMIT, async {
        let broker = Broker::start().await;
        let mut peers = Vec::new();
        let mut sids = Vec::new();
        for _ in 0..PEERS {
            let p = peer(&broker.url).await;
            sids.push(
                p.host(["fifty"], serde_json::Value::Null, true)
                    .await
                    .unwrap(),
            );
            peers.push(p);
        }
        assert_eq!(peers[0].list("fifty").await.unwrap().len(), PEERS);
        // Every peer accepts and answers pings on whatever links arrive.
        for p in &peers {
            let p = p.clone();
            tokio::spawn(async move {
                while let Some(c) = p.accept().await {
                    tokio::spawn(async move {
                        while let Some(mut ch) = c.accept_channel().await {
                            tokio::spawn(async move {
                                while let Some(m) = ch.recv().await {
                                    let _ = ch.send(Bytes::copy_from_slice(m.as_bytes())).await;
                                }
                            });
                        }
                    });
                }
            });
        }
        let mut tasks = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            for k in 1..=DIALS {
                let p = p.clone();
                let target = sids[(i + k) % PEERS].clone();
                tasks.push(tokio::spawn(async move {
                    let c = p.connect(&target).await.unwrap();
                    c.connected().await.unwrap();
                    let mut ch = c
                        .open_channel("hello", ChannelOptions::default())
                        .await
                        .unwrap();
                    let msg = format!("{i}->{target}");
                    ch.send(Bytes::from(msg.clone())).await.unwrap();
                    assert_eq!(ch.recv().await, Some(Message::Binary(Bytes::from(msg))));
                    c
                }));
            }
        }
        let mut ids = HashSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap().id());
        }
        assert_eq!(ids.len(), PEERS * DIALS);
        for p in &peers {
            let stats = p.endpoint().udp_stats().await.unwrap();
            assert_eq!(
                stats.connections,
                2 * DIALS as u64,
                "each peer's one socket serves all its links"
            );
        }
        for p in &peers {
            p.close().await;
        }
        broker.stop().await;
    })
    .await
    .expect("within the time limit");
}
