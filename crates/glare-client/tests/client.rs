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
use glare_client::{ChannelEvent, Client, Error, Options, SessionOptions, Transport, WatchEvent};
use glare_proto::broker::{ErrorCode, SessionValues};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};

/// A broker on loopback and a client of it (channels over the default transport).
async fn broker(f: impl FnOnce(&mut Config)) -> (Client, Handle) {
    broker_over(Transport::default(), f).await
}

/// A broker on loopback and a client whose channels use `transport`.
async fn broker_over(transport: Transport, f: impl FnOnce(&mut Config)) -> (Client, Handle) {
    let mut config = Config::default();
    f(&mut config);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let handle = server.handle();
    tokio::spawn(server.run(std::future::pending()));
    let options = Options {
        transport,
        ..Options::default()
    };
    (Client::with_options(&url, options).unwrap(), handle)
}

async fn next_message(ch: &mut glare_client::Channel) -> glare_client::Message {
    match tokio::time::timeout(Duration::from_secs(5), ch.next()).await {
        Ok(Some(ChannelEvent::Message(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_api_ws() {
    typed_api(Transport::WebSocket).await;
}

#[tokio::test]
async fn typed_api_sse() {
    typed_api(Transport::Sse).await;
}

async fn typed_api(transport: Transport) {
    let (client, _h) = broker_over(transport, |_| {}).await;
    let mut a = client.open().await.unwrap();
    let b = client.open().await.unwrap();
    assert_eq!((a.transport(), b.transport()), (transport, transport));
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
    for transport in [Transport::Sse, Transport::WebSocket] {
        let (client, _h) = broker_over(transport, |c| {
            c.limits.rate_per_sec = 1;
            c.limits.rate_burst = 1;
        })
        .await;
        let a = client.open().await.unwrap();
        a.send(a.cid(), a.cid(), &1).await.unwrap();
        let e = a.send(a.cid(), a.cid(), &1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{transport:?}");
        let delay = e.retry_after().unwrap();
        match transport {
            // `Retry-After` is whole seconds; `retryAfterMs` is milliseconds.
            Transport::Sse => assert_eq!(delay, Duration::from_secs(1)),
            _ => assert!(
                delay > Duration::from_millis(900) && delay <= Duration::from_secs(1),
                "{delay:?}"
            ),
        }
        assert!(e.is_transient());
    }
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
    for transport in [Transport::Sse, Transport::WebSocket] {
        resume_past_the_buffer(transport).await;
    }
}

async fn resume_past_the_buffer(transport: Transport) {
    let (client, _h) = broker_over(transport, |c| c.limits.buffer = 3).await;
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
    for transport in [Transport::Sse, Transport::WebSocket] {
        let (client, h) = broker_over(transport, |_| {}).await;
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
        let e = a.send(a.cid(), a.cid(), &1).await.unwrap_err();
        assert!(
            // WebSocket: the socket task is gone; SSE: the POST names a dead origin.
            matches!(e, Error::Closed(_)) || e.code() == Some(ErrorCode::Forbidden),
            "{e:?}"
        );
    }
}

/// 2,000 messages from four senders while the stream is cut at least 20 times, server
/// side and client side: every message arrives exactly once, in order (SSE + POST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_loses_nothing_across_cuts_sse() {
    resume_loses_nothing_across_cuts(Transport::Sse).await;
}

/// The same over WebSocket (receiver and senders all on sockets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_loses_nothing_across_cuts_ws() {
    resume_loses_nothing_across_cuts(Transport::WebSocket).await;
}

async fn resume_loses_nothing_across_cuts(transport: Transport) {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 500;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let (client, handle) = broker_over(transport, |c| {
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

/// Sends in flight on one socket are answered by their own `ref`: a mix of good and bad
/// targets, all concurrent, each gets its own answer.
#[tokio::test]
async fn ws_answers_match_refs() {
    let (client, _h) = broker(|_| {}).await;
    let a = client.open().await.unwrap();
    let mut b = client.open().await.unwrap();
    assert_eq!(a.transport(), Transport::WebSocket);
    let sends = (0..60).map(|i| {
        let (a, b) = (&a, &b);
        async move {
            let target = match i % 3 {
                0 => b.cid().to_owned(),
                1 => "nobody".to_owned(),
                _ => b.cid().to_owned(),
            };
            // i % 3 == 2: an origin this socket does not own.
            let origin = if i % 3 == 2 { b.cid() } else { a.cid() };
            (i, a.send(&target, origin, &json!({"i": i})).await)
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let mut delivered = Vec::new();
    for (i, r) in results {
        match i % 3 {
            0 => {
                r.unwrap();
                delivered.push(i);
            }
            1 => assert_eq!(r.unwrap_err().code(), Some(ErrorCode::NotFound), "{i}"),
            _ => assert_eq!(r.unwrap_err().code(), Some(ErrorCode::Forbidden), "{i}"),
        }
    }
    for want in delivered {
        let m = next_message(&mut b).await;
        assert_eq!(m.parse::<Value>().unwrap(), json!({"i": want}));
    }
}

/// A second holder of a channel takes its socket over: the first gets close 4000 and
/// ends with `Closed` (it does not fight back by resuming); its sends fail clearly.
#[tokio::test]
async fn ws_replaced_socket_ends_the_channel() {
    let (client, _h) = broker(|_| {}).await;
    let mut a = client.open().await.unwrap();
    let mut a2 = client.resume(a.auth().clone(), 0).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), a.next())
        .await
        .unwrap()
    {
        Some(ChannelEvent::Closed(Error::Closed(why))) => {
            assert!(why.contains("replaced"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.send(a.cid(), a.cid(), &1).await,
        Err(Error::Closed(_))
    ));
    // The new holder works.
    a2.send(a2.cid(), a2.cid(), &7).await.unwrap();
    assert_eq!(next_message(&mut a2).await.parse::<u32>().unwrap(), 7);
}

/// The broker drops the *sender's* socket again and again while it has sends in
/// flight: every send resolves; each `Ok` is delivered exactly once, each
/// `Unconfirmed` at most once, nothing else arrives, and the channel keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_sends_across_server_side_drops() {
    const N: usize = 600;
    let (client, handle) = broker(|c| {
        c.limits.rate_per_sec = 1_000_000;
        c.limits.rate_burst = 1_000_000;
        c.limits.buffer = 4096;
    })
    .await;
    let mut rx = client.open().await.unwrap();
    let tx = Arc::new(client.open().await.unwrap());
    let (rx_cid, tx_cid) = (rx.cid().to_owned(), tx.cid().to_owned());
    let mut rng = StdRng::seed_from_u64(5);
    let mut cuts = 0;
    // Eight sends in flight at a time, and a server-side cut racing each batch.
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        let mut ok = HashSet::new();
        let mut unconfirmed = HashSet::new();
        for chunk in (0..N).collect::<Vec<_>>().chunks(8) {
            let sends = chunk.iter().map(|&n| {
                let (tx, rx_cid) = (Arc::clone(&tx), rx_cid.clone());
                async move { (n, tx.send(&rx_cid, tx.cid(), &json!({"n": n})).await) }
            });
            let cut = {
                let (handle, tx_cid) = (handle.clone(), tx_cid.clone());
                let delay = Duration::from_micros(rng.random_range(0..400));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    handle.disconnect(&tx_cid)
                })
            };
            let answers = futures_util::future::join_all(sends).await;
            if cut.await.unwrap() {
                cuts += 1;
            }
            for (n, r) in answers {
                match r {
                    Ok(()) => ok.insert(n),
                    Err(Error::Unconfirmed(_)) => unconfirmed.insert(n),
                    Err(e) => panic!("send {n}: {e:?}"),
                };
            }
        }
        (ok, unconfirmed)
    })
    .await
    .expect("every send resolves within 30 s");
    let (ok, unconfirmed) = outcome;
    assert!(cuts >= 20, "only {cuts} cuts");
    // After the cuts: one more send, confirmed, marks the end of the stream (the last
    // cut may still be under way: a marker written to the dying socket is unconfirmed,
    // so send it until one is confirmed; the receiver stops at the first).
    let mut confirmed = false;
    for _ in 0..50 {
        match tx.send(&rx_cid, tx.cid(), &json!({"n": N})).await {
            Ok(()) => {
                confirmed = true;
                break;
            }
            Err(Error::Unconfirmed(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("marker: {e:?}"),
        }
    }
    assert!(confirmed, "the channel works again after the cuts");
    let mut seen = HashSet::new();
    loop {
        let m = next_message(&mut rx).await;
        let n = m.parse::<Value>().unwrap()["n"].as_u64().unwrap() as usize;
        if n == N {
            break;
        }
        assert!(seen.insert(n), "duplicate {n}");
        assert!(
            ok.contains(&n) || unconfirmed.contains(&n),
            "{n} was never sent"
        );
    }
    let missing: Vec<_> = ok.difference(&seen).collect();
    assert!(missing.is_empty(), "confirmed but lost: {missing:?}");
    eprintln!(
        "{cuts} cuts; {} confirmed, {} unconfirmed ({} of those delivered)",
        ok.len(),
        unconfirmed.len(),
        unconfirmed.intersection(&seen).count()
    );
}

/// A watch whose connection is cut re-syncs: what vanished meanwhile is removed, what
/// appeared or changed is added, what did not change is not repeated; then live
/// changes flow again.
#[tokio::test]
async fn watch_resumes_and_resyncs() {
    let (client, _h) = broker(|_| {}).await;
    let a = client.open().await.unwrap();
    let tagged = || SessionOptions::tagged(["room"]);
    let s1 = a.create_session(tagged()).await.unwrap();
    let s2 = a.create_session(tagged()).await.unwrap();
    let keep = a.create_session(tagged()).await.unwrap();
    let mut w = client.watch("room").await.unwrap();
    let mut initial = HashSet::new();
    for _ in 0..3 {
        let WatchEvent::Add(e) = next(&mut w).await else {
            panic!("expected adds")
        };
        initial.insert(e.sid);
    }
    assert_eq!(
        initial,
        HashSet::from([s1.clone(), s2.clone(), keep.clone()])
    );

    for round in 0..3 {
        // Cut, then change the list while the watch is down.
        w.reconnect();
        a.close_session(&s1).await.ok();
        let s3 = a.create_session(tagged()).await.unwrap();
        let values = SessionValues {
            metadata: Some(serde_json::value::to_raw_value(&json!({"round": round})).unwrap()),
            ..SessionValues::default()
        };
        a.update_session(&s2, values).await.unwrap();
        let mut got = Vec::new();
        let want = if round == 0 { 3 } else { 2 };
        for _ in 0..want {
            got.push(next(&mut w).await);
        }
        if round == 0 {
            assert_eq!(got[0], WatchEvent::Remove(s1.clone()), "removes come first");
        }
        let added: HashSet<String> = got
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Add(e) => Some(e.sid.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(added, HashSet::from([s2.clone(), s3.clone()]), "{got:?}");
        let changed = got.iter().find_map(|e| match e {
            WatchEvent::Add(e) if e.sid == s2 => Some(e.session.metadata.get().to_owned()),
            _ => None,
        });
        assert_eq!(
            changed.as_deref(),
            Some(format!(r#"{{"round":{round}}}"#).as_str())
        );
        // Live again: the next change arrives as itself, and nothing stale before it.
        a.close_session(&s3).await.unwrap();
        assert_eq!(next(&mut w).await, WatchEvent::Remove(s3));
    }
    // `keep` never changed: it was never repeated.
    let list = client.list("room").await.unwrap();
    assert_eq!(list.len(), 2);
}

/// A `ChannelSender` sends from other tasks while the channel itself is being read,
/// over both transports; messages from one sender arrive in call order; over the
/// WebSocket a sender of a dropped channel fails with `Closed`.
#[tokio::test]
async fn sender_sends_from_other_tasks() {
    for transport in [Transport::WebSocket, Transport::Sse] {
        let (client, _h) = broker_over(transport, |_| {}).await;
        let mut a = client.open().await.unwrap();
        let b = client.open().await.unwrap();
        let sender = b.sender();
        assert_eq!(sender.cid(), b.cid());
        let acid = a.cid().to_owned();
        let task = tokio::spawn(async move {
            for i in 0..50u32 {
                sender.send(&acid, sender.cid(), &i).await.unwrap();
            }
            sender
        });
        for i in 0..50u32 {
            let m = next_message(&mut a).await;
            assert_eq!(m.parse::<u32>().unwrap(), i, "{transport:?}");
        }
        let sender = task.await.unwrap();
        drop(b);
        if transport == Transport::WebSocket {
            let e = sender.send(a.cid(), sender.cid(), &1).await.unwrap_err();
            assert!(matches!(e, Error::Closed(_)), "{e:?}");
        }
    }
}
