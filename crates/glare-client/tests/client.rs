//! glare-client against a real broker on loopback.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use glare_broker::{Config, Handle, Server};
use glare_client::{ChannelEvent, Client, Error, SessionOptions, WatchEvent};
use glare_proto::broker::{ErrorCode, SessionValues};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};

async fn broker(f: impl FnOnce(&mut Config)) -> (Client, Handle) {
    let mut config = Config::default();
    f(&mut config);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let handle = server.handle();
    tokio::spawn(server.run(std::future::pending()));
    (Client::new(&url).unwrap(), handle)
}

async fn next_message(ch: &mut glare_client::Channel) -> glare_client::Message {
    match tokio::time::timeout(Duration::from_secs(5), ch.next()).await {
        Ok(Some(ChannelEvent::Message(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_api() {
    let (client, _h) = broker(|_| {}).await;
    let mut a = client.open().await.unwrap();
    let b = client.open().await.unwrap();
    let sid = a
        .create_session(SessionOptions::tagged(["chat", "eu"]))
        .await
        .unwrap();
    b.send(&sid, b.cid(), &json!({"hello": 1})).await.unwrap();
    let m = next_message(&mut a).await;
    assert_eq!(
        (m.id, m.origin.as_str(), m.target.as_str()),
        (1, b.cid(), sid.as_str())
    );
    assert_eq!(m.parse::<Value>().unwrap(), json!({"hello": 1}));

    let list = client.list("chat,!us").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].sid, sid);
    assert_eq!(list[0].session.tags[1].as_str(), "eu");

    let values = SessionValues {
        list: Some(false),
        ..SessionValues::default()
    };
    a.update_session(&sid, values).await.unwrap();
    assert!(client.list("").await.unwrap().is_empty());

    // Typed errors.
    let e = b.send("nope", b.cid(), &1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let e = client
        .send(a.cid(), b.cid(), "wrong-key", &1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));
    let e = client.list("a,,b").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    let e = b.close_session(&sid).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));
    a.close_session(&sid).await.unwrap();
    assert!(Client::new("https://x").is_err());
    assert!(Client::new("nonsense").is_err());
    let dead = Client::new("http://127.0.0.1:1").unwrap();
    assert!(matches!(dead.list("").await, Err(Error::Transport(_))));

    // Close: the stream ends with Closed.
    let bcid = b.cid().to_owned();
    b.close().await.unwrap();
    let e = a.send(&bcid, a.cid(), &1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn rate_limited_error_carries_the_delay() {
    let (client, _h) = broker(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 1;
    })
    .await;
    let a = client.open().await.unwrap();
    a.send(a.cid(), a.cid(), &1).await.unwrap();
    let e = a.send(a.cid(), a.cid(), &1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert!(e.is_transient());
}

async fn next(w: &mut glare_client::Watch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn watch_sees_adds_and_removes() {
    let (client, _h) = broker(|_| {}).await;
    let a = client.open().await.unwrap();
    let s1 = a
        .create_session(SessionOptions::tagged(["room"]))
        .await
        .unwrap();
    let mut w = client.watch("room").await.unwrap();
    assert!(matches!(next(&mut w).await, WatchEvent::Add(e) if e.sid == s1));
    let s2 = a
        .create_session(SessionOptions::tagged(["room"]))
        .await
        .unwrap();
    assert!(matches!(next(&mut w).await, WatchEvent::Add(e) if e.sid == s2));
    a.close_session(&s1).await.unwrap();
    assert_eq!(next(&mut w).await, WatchEvent::Remove(s1));
}

#[tokio::test]
async fn resume_past_the_buffer_yields_gap() {
    let (client, _h) = broker(|c| c.limits.buffer = 3).await;
    let a = client.open().await.unwrap();
    let auth = a.auth().clone();
    drop(a);
    let b = client.open().await.unwrap();
    for i in 0..10 {
        b.send(&auth.cid, b.cid(), &i).await.unwrap();
    }
    let mut a = client.resume(auth, 2).await.unwrap();
    match a.next().await {
        Some(ChannelEvent::Gap(g)) => assert_eq!((g.from, g.to), (3, 7)),
        other => panic!("{other:?}"),
    }
    for id in 8..=10 {
        assert_eq!(next_message(&mut a).await.id, id);
    }
}

#[tokio::test]
async fn closed_channel_ends_the_stream() {
    let (client, h) = broker(|_| {}).await;
    let mut a = client.open().await.unwrap();
    client.close_channel(a.auth()).await.unwrap();
    h.disconnect(a.cid());
    match tokio::time::timeout(Duration::from_secs(10), a.next())
        .await
        .unwrap()
    {
        Some(ChannelEvent::Closed(e)) => assert_eq!(e.code(), Some(ErrorCode::NotFound)),
        other => panic!("{other:?}"),
    }
    assert!(a.next().await.is_none());
}

/// 2,000 messages from four senders while the stream is cut at least 20 times, server
/// side and client side: every message arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_loses_nothing_across_cuts() {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 500;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let (client, handle) = broker(|c| {
        c.limits.rate_per_sec = 1_000_000;
        c.limits.rate_burst = 1_000_000;
        c.limits.buffer = 4096;
    })
    .await;
    let mut rx = client.open().await.unwrap();
    let cid = rx.cid().to_owned();
    let done = Arc::new(AtomicBool::new(false));
    let server_cuts = Arc::new(AtomicUsize::new(0));

    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let client = client.clone();
        let cid = cid.clone();
        senders.push(tokio::spawn(async move {
            let me = client.open().await.unwrap();
            for n in 0..PER_SENDER {
                me.send(&cid, me.cid(), &json!({"s": s, "n": n}))
                    .await
                    .unwrap();
            }
        }));
    }
    let cutter = {
        let (done, cuts, handle, cid) = (
            Arc::clone(&done),
            Arc::clone(&server_cuts),
            handle.clone(),
            cid.clone(),
        );
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            for _ in 0..200 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
                if handle.disconnect(&cid) {
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(11);
    let mut client_cuts = 0;
    let mut seen = HashSet::new();
    let mut next_n = [0usize; SENDERS];
    let mut last_id = 0;
    let result = tokio::time::timeout(Duration::from_secs(40), async {
        while seen.len() < TOTAL {
            let m = match rx.next().await {
                Some(ChannelEvent::Message(m)) => m,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(m.id, last_id + 1, "ids are contiguous");
            last_id = m.id;
            let v: Value = m.parse().unwrap();
            let (s, n) = (
                v["s"].as_u64().unwrap() as usize,
                v["n"].as_u64().unwrap() as usize,
            );
            assert_eq!(n, next_n[s], "sender {s} in order");
            next_n[s] += 1;
            assert!(seen.insert((s, n)), "duplicate {s}/{n}");
            if rng.random_range(0..60) == 0 {
                rx.reconnect();
                client_cuts += 1;
            }
        }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    result.expect("all messages within 40 s");
    for s in senders {
        s.await.unwrap();
    }
    cutter.await.unwrap();
    let cuts = server_cuts.load(Ordering::Relaxed) + client_cuts;
    assert!(cuts >= 20, "only {cuts} cuts");
    assert_eq!(seen.len(), TOTAL);
}
