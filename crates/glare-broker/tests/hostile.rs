//! Hostile input and the WebSocket path, through raw sockets.

mod common;

use std::time::Duration;

use common::Broker;
use futures_util::{SinkExt as _, StreamExt as _};
use glare_broker::Config;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

async fn raw(b: &Broker, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn garbage_and_slow_bodies_get_4xx_and_the_broker_keeps_serving() {
    let b = Broker::start(Config {
        body_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    // Not HTTP at all.
    let out = raw(&b, b"\x00\x01\x02garbage\r\n\r\n").await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    // Truncated JSON with an honest length, then close.
    let out = raw(
        &b,
        b"POST /send/x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{\"or",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A body that trickles: cut off by the body timeout.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"POST /send/x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.write_all(b" ").await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("did not arrive"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Headers that never end: the connection is dropped.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: 1\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "slow headers are cut off");
    // Wrong types everywhere.
    let (_a, acid, akey) = b.channel().await;
    for body in [
        json!({"origin": [acid], "key": akey, "message": 1}),
        json!({"origin": acid, "key": 5, "message": 1}),
        json!(["origin", "key", "message"]),
        json!("just a string"),
    ] {
        b.post_json(&format!("/send/{acid}"), body)
            .await
            .assert_error(400, "bad_request");
    }
    b.post("/session", "{\"cid\":")
        .await
        .assert_error(400, "bad_request");
    b.post("/session/x/update", "\u{feff}{}")
        .await
        .assert_error(400, "bad_request");
    // 10,000 bogus ids.
    for i in 0..10_000 {
        let r = match i % 4 {
            0 => b.send(&format!("bogus{i}"), &acid, &akey, json!(i)).await,
            1 => b.send(&acid, &format!("bogus{i}"), "k", json!(i)).await,
            2 => {
                b.request("GET", &format!("/channel?cid=bogus{i}&key=k"), &[], "")
                    .await
            }
            _ => {
                b.post_json(
                    &format!("/session/bogus{i}/close"),
                    json!({"cid":acid,"key":akey}),
                )
                .await
            }
        };
        assert!(matches!(r.status, 403 | 404), "{i}: {}", r.body);
    }
    assert_eq!(b.get("/healthz").await.status, 200);
}

async fn ws_open(
    b: &Broker,
    query: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    Value,
) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws{query}", b.addr))
        .await
        .unwrap();
    let first = ws_json(&mut ws).await;
    (ws, first)
}

async fn ws_json(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

async fn ws_close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> CloseCode {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => return f.code,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_fast_path() {
    let b = Broker::default().await;
    let (mut a, first) = ws_open(&b, "").await;
    assert_eq!(first["event"], "channel");
    let acid = first["cid"].as_str().unwrap().to_owned();
    let akey = first["key"].as_str().unwrap().to_owned();
    let (_s, ccid, ckey) = b.channel().await;
    let sid = b.session(&acid, &akey, json!({})).await;

    // HTTP send to the socket's channel.
    b.send(&acid, &ccid, &ckey, json!({"b": 1, "a": 2})).await;
    let m = ws_json(&mut a).await;
    assert_eq!(
        m,
        json!({"event":"message","id":1,"origin":ccid,"target":acid,"message":{"b":1,"a":2}})
    );

    // Sends over the socket, acknowledged by ref; origin may be one of its sessions.
    a.send(Message::text(format!(
        r#"{{"op":"send","ref":42,"origin":"{sid}","target":"{acid}","message":[1]}}"#
    )))
    .await
    .unwrap();
    let mut got = [ws_json(&mut a).await, ws_json(&mut a).await];
    got.sort_by_key(|v| v["event"].as_str().unwrap().to_owned());
    assert_eq!(got[0], json!({"event":"ack","ref":42}));
    assert_eq!(got[1]["id"], 2);
    a.send(Message::text(format!(
        r#"{{"op":"send","ref":"x","origin":"{ccid}","target":"{acid}","message":1}}"#
    )))
    .await
    .unwrap();
    let e = ws_json(&mut a).await;
    assert_eq!(
        (e["event"].as_str(), e["ref"].as_str(), e["error"].as_str()),
        (Some("error"), Some("x"), Some("forbidden"))
    );
    a.send(Message::text(format!(
        r#"{{"op":"send","ref":1,"origin":"{acid}","target":"nope","message":1}}"#
    )))
    .await
    .unwrap();
    assert_eq!(ws_json(&mut a).await["error"], "not_found");
    a.send(Message::text("not json")).await.unwrap();
    let e = ws_json(&mut a).await;
    assert_eq!(
        (e["error"].as_str(), &e["ref"]),
        (Some("bad_request"), &Value::Null)
    );
    a.send(Message::text(r#"{"op":"dance","ref":7}"#))
        .await
        .unwrap();
    let e = ws_json(&mut a).await;
    assert_eq!(
        (e["error"].as_str(), &e["ref"]),
        (Some("bad_request"), &json!(7))
    );
    let big = format!(
        r#"{{"op":"send","ref":2,"origin":"{acid}","target":"{acid}","message":"{}"}}"#,
        "x".repeat(70_000)
    );
    a.send(Message::text(big)).await.unwrap();
    assert_eq!(ws_json(&mut a).await["error"], "too_large");

    // Resume over SSE replaces the socket (4000) and replays; then back to WS.
    let mut sse = b
        .sse(
            &format!("/channel?cid={acid}&key={akey}&lastEventId=1"),
            &[],
        )
        .await;
    assert_eq!(ws_close_code(&mut a).await, CloseCode::Library(4000));
    sse.next().await.unwrap();
    assert_eq!(sse.message().await.0, 2);
    let (mut a2, first) = ws_open(&b, &format!("?cid={acid}&key={akey}&lastEventId=0")).await;
    assert_eq!(first["cid"], acid.as_str());
    assert_eq!(ws_json(&mut a2).await["id"], 1);
    assert_eq!(ws_json(&mut a2).await["id"], 2);
    assert!(sse.ends_within(Duration::from_secs(5)).await);
    // Binary frames close with 1003.
    a2.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(ws_close_code(&mut a2).await, CloseCode::Unsupported);
    // Channel close: 1000.
    let (mut a3, _) = ws_open(&b, &format!("?cid={acid}&key={akey}&lastEventId=2")).await;
    b.post_json("/channel/close", json!({"cid":acid,"key":akey}))
        .await;
    assert_eq!(ws_close_code(&mut a3).await, CloseCode::Normal);
    // Errors before the upgrade are HTTP errors.
    let r =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?cid={acid}&key={akey}", b.addr)).await;
    assert!(r.is_err());
    let m = b.get("/metrics").await.body;
    assert!(
        m.contains("glare_http_errors_total{code=\"forbidden\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn websocket_message_over_the_body_limit_closes_1009() {
    let b = Broker::start(Config {
        limits: glare_broker::Limits {
            max_body: 1000,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let (mut a, _) = ws_open(&b, "").await;
    a.send(Message::text("x".repeat(1500))).await.unwrap();
    assert_eq!(ws_close_code(&mut a).await, CloseCode::Size);
}

/// 1,000 channels and 20,000 messages across them, all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_many_messages() {
    let b = Broker::start(Config {
        limits: glare_broker::Limits {
            rate_per_sec: 1_000_000,
            rate_burst: 1_000_000,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    // In batches of 250 so the test holds few file descriptors at once.
    tokio::time::timeout(Duration::from_secs(40), async {
        for _batch in 0..4 {
            let mut sockets = Vec::new();
            for _ in 0..250 {
                let (ws, first) = ws_open(&b, "").await;
                sockets.push((ws, first["cid"].as_str().unwrap().to_owned()));
            }
            let cids: Vec<String> = sockets.iter().map(|(_, c)| c.clone()).collect();
            // Each channel sends 20 messages to the next one over its socket.
            let mut tasks = Vec::new();
            for (i, (mut ws, cid)) in sockets.into_iter().enumerate() {
                let target = cids[(i + 1) % cids.len()].clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..20 {
                        ws.send(Message::text(format!(
                            r#"{{"op":"send","ref":{n},"origin":"{cid}","target":"{target}","message":{n}}}"#
                        )))
                        .await
                        .unwrap();
                    }
                    let (mut acks, mut msgs) = (0, 0);
                    while acks < 20 || msgs < 20 {
                        let v = ws_json(&mut ws).await;
                        match v["event"].as_str() {
                            Some("ack") => acks += 1,
                            Some("message") => {
                                msgs += 1;
                                assert_eq!(v["id"], msgs);
                            }
                            _ => panic!("{v}"),
                        }
                    }
                    ws
                }));
            }
            let mut done = Vec::new();
            for t in tasks {
                done.push(t.await.unwrap());
            }
        }
    })
    .await
    .expect("all delivered within 40 s");
    let m = b.get("/metrics").await.body;
    assert!(m.contains("glare_messages_relayed_total 20000"), "{m}");
}
