//! PROTOCOL.md §1 through raw HTTP on loopback: every endpoint rule and every row of
//! the error table.

pub mod common;

use std::time::Duration;

use common::Broker;
use glare_broker::{Config, Limits};
use serde_json::{Value, json};

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

#[tokio::test]
async fn operations_cors_and_unknown_paths() {
    let b = Broker::default().await;
    let r = b.get("/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("Retry-After")
    );

    b.get("/nope").await.assert_error(404, "not_found");
    b.get(&format!("/{}", "x".repeat(5000)))
        .await
        .assert_error(404, "not_found");

    let r = b.get("/send/abc").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = b.post("/channel", "{}").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    b.request("DELETE", "/list", &[], "")
        .await
        .assert_error(405, "method_not_allowed");
    b.post("/healthz", "")
        .await
        .assert_error(405, "method_not_allowed");

    for path in ["/channel", "/send/x", "/whatever", "/ws"] {
        let r = b.request("OPTIONS", path, &[], "").await;
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, POST, OPTIONS")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("Content-Type, Last-Event-ID")
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }

    let m = b.get("/metrics").await;
    assert_eq!(m.status, 200);
    for name in [
        "glare_channels_open 0",
        "glare_sessions 0",
        "glare_list_watchers 0",
        "glare_messages_relayed_total 0",
        "glare_bytes_relayed_total 0",
        "glare_resume_replays_total 0",
        "glare_http_errors_total{code=\"not_found\"} 2",
        "glare_http_errors_total{code=\"method_not_allowed\"} 4",
        "# TYPE glare_channels_open gauge",
        "# TYPE glare_http_errors_total counter",
    ] {
        assert!(m.body.contains(name), "{name} missing in\n{}", m.body);
    }
}

#[tokio::test]
async fn cors_origin_is_configurable() {
    let b = Broker::start(config(|c| c.cors_origin = "https://app.example".into())).await;
    let r = b.get("/nope").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[tokio::test]
async fn channel_relay_and_sequence_ids() {
    let b = Broker::default().await;
    let (mut a, acid, akey) = b.channel().await;
    let (_s, bcid, bkey) = b.channel().await;
    assert!(acid.len() >= 22 && acid.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert!(akey.len() >= 22 && akey.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert_ne!(acid, bcid);

    // Relayed exactly as sent: key order and number text kept, whitespace dropped.
    let body = format!(
        r#"{{"origin":"{bcid}","key":"{bkey}","message": {{ "z" : 1.50, "a" : [1, "é\u00e9"] }} }}"#
    );
    let r = b.post(&format!("/send/{acid}"), &body).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    let ev = a.next().await.unwrap();
    assert_eq!(ev.event, "message");
    assert_eq!(ev.id.as_deref(), Some("1"));
    assert_eq!(
        ev.data,
        format!(
            r#"{{"origin":"{bcid}","target":"{acid}","message":{{"z":1.50,"a":[1,"é\u00e9"]}}}}"#
        )
    );
    for i in 2..=5 {
        assert_eq!(b.send(&acid, &bcid, &bkey, json!(i)).await.status, 200);
        let (id, v) = a.message().await;
        assert_eq!((id, &v["message"]), (i, &json!(i)));
    }
    // A channel may send to itself; text/plain bodies are JSON too.
    let r = b
        .request(
            "POST",
            &format!("/send/{acid}"),
            &[("content-type", "text/plain")],
            format!(r#"{{"origin":"{acid}","key":"{akey}","message":null,"extra":1}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(a.message().await.0, 6);
    let m = b.get("/metrics").await.body;
    assert!(m.contains("glare_messages_relayed_total 6"), "{m}");
    assert!(m.contains("glare_channels_open 2"), "{m}");
}

#[tokio::test]
async fn send_errors_in_table_order() {
    let b = Broker::default().await;
    let (_a, acid, akey) = b.channel().await;
    let (_c, ccid, _ckey) = b.channel().await;
    let big = "x".repeat(70_000);
    let send = |target: &str, body: String| {
        let path = format!("/send/{target}");
        let b = &b;
        async move { b.post(&path, &body).await }
    };
    // 400
    send(&ccid, "{".into())
        .await
        .assert_error(400, "bad_request");
    send(&ccid, String::new())
        .await
        .assert_error(400, "bad_request");
    send(&ccid, "[1]".into())
        .await
        .assert_error(400, "bad_request");
    let r = send(&ccid, format!(r#"{{"origin":"{acid}","key":"{akey}"}}"#)).await;
    r.assert_error(400, "bad_request");
    assert!(r.json()["message"].as_str().unwrap().contains("message"));
    send(
        &ccid,
        format!(r#"{{"origin":1,"key":"{akey}","message":1}}"#),
    )
    .await
    .assert_error(400, "bad_request");
    // 413 message, and 413 beats 403/404
    send(
        "nope",
        format!(r#"{{"origin":"bad","key":"bad","message":"{big}"}}"#),
    )
    .await
    .assert_error(413, "too_large");
    // body over 128 KiB
    let huge = "y".repeat(200_000);
    send(
        &ccid,
        format!(r#"{{"origin":"{acid}","key":"{akey}","message":"{huge}"}}"#),
    )
    .await
    .assert_error(413, "too_large");
    // 403 beats 404
    send(
        "nope",
        format!(r#"{{"origin":"{acid}","key":"wrong","message":1}}"#),
    )
    .await
    .assert_error(403, "forbidden");
    send(
        &ccid,
        format!(r#"{{"origin":"unknown","key":"{akey}","message":1}}"#),
    )
    .await
    .assert_error(403, "forbidden");
    // 404
    send(
        "nope",
        format!(r#"{{"origin":"{acid}","key":"{akey}","message":1}}"#),
    )
    .await
    .assert_error(404, "not_found");
    let m = b.get("/metrics").await.body;
    for line in [
        "glare_http_errors_total{code=\"bad_request\"} 5",
        "glare_http_errors_total{code=\"too_large\"} 2",
        "glare_http_errors_total{code=\"forbidden\"} 2",
        "glare_http_errors_total{code=\"not_found\"} 1",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let b = Broker::default().await;
    // Content-Length over the limit, and no body sent at all: answered at once.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"POST /send/x HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("too_large"), "{text}");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let b = Broker::start(config(|c| {
        c.limits.rate_per_sec = 2;
        c.limits.rate_burst = 3;
    }))
    .await;
    let (_a, acid, akey) = b.channel().await;
    let (_c, ccid, _) = b.channel().await;
    for _ in 0..3 {
        assert_eq!(b.send(&ccid, &acid, &akey, json!(1)).await.status, 200);
    }
    let r = b.send(&ccid, &acid, &akey, json!(1)).await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // 404 comes before 429.
    b.send("nope", &acid, &akey, json!(1))
        .await
        .assert_error(404, "not_found");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.send(&ccid, &acid, &akey, json!(1)).await.status, 200);
}

#[tokio::test]
async fn resume_replays_and_replaces() {
    let b = Broker::default().await;
    let (mut a, acid, akey) = b.channel().await;
    let (_c, ccid, ckey) = b.channel().await;
    for i in 1..=5 {
        b.send(&acid, &ccid, &ckey, json!(i)).await;
    }
    for i in 1..=5 {
        assert_eq!(a.message().await.0, i);
    }
    // Resume by header; the old stream is ended.
    let path = format!("/channel?cid={acid}&key={akey}");
    let mut r1 = b.sse(&path, &[("last-event-id", "2")]).await;
    assert!(
        a.ends_within(Duration::from_secs(5)).await,
        "old stream ended"
    );
    let ev = r1.next().await.unwrap();
    assert_eq!(ev.event, "channel");
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap(),
        json!({"cid":acid,"key":akey})
    );
    for i in 3..=5 {
        assert_eq!(r1.message().await.0, i);
    }
    b.send(&acid, &ccid, &ckey, json!(6)).await;
    assert_eq!(r1.message().await.0, 6);

    // Query parameter; the header wins when both are given.
    let mut r2 = b.sse(&format!("{path}&lastEventId=4"), &[]).await;
    assert!(r1.ends_within(Duration::from_secs(5)).await);
    r2.next().await.unwrap();
    assert_eq!(r2.message().await.0, 5);
    let mut r3 = b
        .sse(&format!("{path}&lastEventId=1"), &[("last-event-id", "5")])
        .await;
    r3.next().await.unwrap();
    assert_eq!(r3.message().await.0, 6);
    // Absent means 0: everything buffered.
    let mut r4 = b.sse(&path, &[]).await;
    r4.next().await.unwrap();
    assert_eq!(r4.message().await.0, 1);

    // Rejected resumes leave the live stream alone.
    for (q, hdr, status, code) in [
        (format!("{path}&lastEventId=abc"), None, 400, "bad_request"),
        (path.clone(), Some("-1"), 400, "bad_request"),
        (path.clone(), Some("7"), 400, "bad_request"),
        (path.clone(), Some(""), 400, "bad_request"),
        (
            format!("/channel?cid={acid}&key=wrong"),
            None,
            403,
            "forbidden",
        ),
        (
            format!("/channel?cid=nope&key={akey}"),
            None,
            404,
            "not_found",
        ),
        (format!("/channel?cid={acid}"), None, 400, "bad_request"),
    ] {
        let headers: Vec<(&str, &str)> = hdr.iter().map(|h| ("last-event-id", *h)).collect();
        b.request("GET", &q, &headers, "")
            .await
            .assert_error(status, code);
    }
    b.send(&acid, &ccid, &ckey, json!(7)).await;
    for i in 2..=7 {
        assert_eq!(r4.message().await.0, i);
    }
    let m = b.get("/metrics").await.body;
    assert!(m.contains("glare_resume_replays_total 12"), "{m}");
}

#[tokio::test]
async fn resume_past_the_buffer_yields_gap() {
    let b = Broker::start(config(|c| c.limits.buffer = 4)).await;
    let (a, acid, akey) = b.channel().await;
    drop(a);
    let (_c, ccid, ckey) = b.channel().await;
    for i in 1..=10 {
        assert_eq!(b.send(&acid, &ccid, &ckey, json!(i)).await.status, 200);
    }
    let mut r = b
        .sse(
            &format!("/channel?cid={acid}&key={akey}&lastEventId=3"),
            &[],
        )
        .await;
    assert_eq!(r.next().await.unwrap().event, "channel");
    let gap = r.next().await.unwrap();
    assert_eq!(gap.event, "gap");
    assert_eq!(
        serde_json::from_str::<Value>(&gap.data).unwrap(),
        json!({"from":4,"to":6})
    );
    for i in 7..=10 {
        assert_eq!(r.message().await.0, i);
    }
    // Resuming at the end: no gap, no replay.
    let mut r = b
        .sse(
            &format!("/channel?cid={acid}&key={akey}&lastEventId=10"),
            &[],
        )
        .await;
    assert_eq!(r.next().await.unwrap().event, "channel");
    b.send(&acid, &ccid, &ckey, json!(11)).await;
    assert_eq!(r.message().await.0, 11);
}

#[tokio::test]
async fn keep_alive_comments() {
    let b = Broker::start(config(|c| c.limits.keep_alive = Duration::from_millis(50))).await;
    let (mut a, _, _) = b.channel().await;
    assert!(!a.ends_within(Duration::from_millis(400)).await);
    assert!(a.comments >= 3, "{} comments", a.comments);
}

#[tokio::test]
async fn grace_period_then_close() {
    let b = Broker::start(config(|c| c.limits.grace = Duration::from_millis(200))).await;
    let (a, acid, akey) = b.channel().await;
    let sid = b.session(&acid, &akey, json!({"tags":["g"]})).await;
    let mut w = b
        .sse("/list?filter=g", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(w.next().await.unwrap().event, "add");
    let (_c, ccid, ckey) = b.channel().await;
    drop(a);
    // Within the grace period: still deliverable, and resumable.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.send(&sid, &ccid, &ckey, json!(1)).await.status, 200);
    let mut a2 = b.sse(&format!("/channel?cid={acid}&key={akey}"), &[]).await;
    a2.next().await.unwrap();
    assert_eq!(a2.message().await.1["target"], json!(sid));
    drop(a2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data),
        ("remove", format!(r#"{{"sid":"{sid}"}}"#))
    );
    b.send(&acid, &ccid, &ckey, json!(1))
        .await
        .assert_error(404, "not_found");
    b.send(&sid, &ccid, &ckey, json!(1))
        .await
        .assert_error(404, "not_found");
    b.request("GET", &format!("/channel?cid={acid}&key={akey}"), &[], "")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn channel_close() {
    let b = Broker::default().await;
    let (mut a, acid, akey) = b.channel().await;
    let (_c, ccid, ckey) = b.channel().await;
    b.post_json("/channel/close", json!({"cid":acid,"key":"bad"}))
        .await
        .assert_error(403, "forbidden");
    b.post_json("/channel/close", json!({"cid":"nope","key":akey}))
        .await
        .assert_error(404, "not_found");
    b.post_json("/channel/close", json!({"cid":acid}))
        .await
        .assert_error(400, "bad_request");
    let r = b
        .post_json("/channel/close", json!({"cid":acid,"key":akey}))
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert!(a.ends_within(Duration::from_secs(5)).await);
    b.send(&acid, &ccid, &ckey, json!(1))
        .await
        .assert_error(404, "not_found");
    // A closed channel's key owns nothing any more.
    b.send(&ccid, &acid, &akey, json!(1))
        .await
        .assert_error(403, "forbidden");
    b.post_json("/channel/close", json!({"cid":acid,"key":akey}))
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn sessions() {
    let b = Broker::default().await;
    let (mut a, acid, akey) = b.channel().await;
    let (_c, ccid, ckey) = b.channel().await;
    let sid = b
        .session(
            &acid,
            &akey,
            json!({"tags":["chat","eu"],"metadata":{"name":"alice"}}),
        )
        .await;
    // Send to a sid: the host receives it, with the sid as target; the reply uses it as origin.
    b.send(&sid, &ccid, &ckey, json!({"hi":1})).await;
    let (_, m) = a.message().await;
    assert_eq!(m, json!({"origin":ccid,"target":sid,"message":{"hi":1}}));
    let (_c2, c2cid, c2key) = b.channel().await;
    assert_eq!(b.send(&ccid, &sid, &akey, json!(1)).await.status, 200);
    b.send(&ccid, &sid, &c2key, json!(1))
        .await
        .assert_error(403, "forbidden");
    let _ = c2cid;

    // Defaults.
    let s2 = b.session(&acid, &akey, json!({})).await;
    let all = b.get("/list").await.json();
    let e2 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sid"] == s2)
        .unwrap();
    assert_eq!(e2["session"], json!({"tags":[],"metadata":null}));

    // Errors.
    let post = |body: Value| b.post_json("/session", body);
    post(json!({"cid":acid,"key":"bad"}))
        .await
        .assert_error(403, "forbidden");
    post(json!({"cid":"nope","key":akey}))
        .await
        .assert_error(404, "not_found");
    post(json!({"cid":acid}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"cid":acid,"key":akey,"tags":["a","a"]}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"cid":acid,"key":akey,"tags":["a b"]}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"cid":acid,"key":akey,"tags":["x".repeat(65)]}))
        .await
        .assert_error(400, "bad_request");
    let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    post(json!({"cid":acid,"key":akey,"tags":many}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"cid":acid,"key":akey,"list":1}))
        .await
        .assert_error(400, "bad_request");
    post(json!({"cid":acid,"key":akey,"metadata":"m".repeat(5000)}))
        .await
        .assert_error(413, "too_large");
    // 413 before 403.
    post(json!({"cid":acid,"key":"bad","metadata":"m".repeat(5000)}))
        .await
        .assert_error(413, "too_large");
    // Eight per channel; the ninth is 409.
    for _ in 0..6 {
        b.session(&acid, &akey, json!({"list":false})).await;
    }
    post(json!({"cid":acid,"key":akey}))
        .await
        .assert_error(409, "limit_reached");

    // Update.
    let upd = |sid: &str, body: Value| {
        let path = format!("/session/{sid}/update");
        let b = &b;
        async move { b.post_json(&path, body).await }
    };
    let r = upd(
        &sid,
        json!({"cid":acid,"key":akey,"values":{"metadata":null,"tags":["x"]}}),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    let all = b.get("/list?filter=x").await.json();
    assert_eq!(
        all,
        json!([{"sid":sid,"session":{"tags":["x"],"metadata":null}}])
    );
    upd(&sid, json!({"cid":acid,"key":akey,"values":{"tags":null}}))
        .await
        .assert_error(400, "bad_request");
    upd(&sid, json!({"cid":acid,"key":akey,"values":{"list":null}}))
        .await
        .assert_error(400, "bad_request");
    upd(&sid, json!({"cid":acid,"key":akey,"values":{"host":"x"}}))
        .await
        .assert_error(400, "bad_request");
    upd(&sid, json!({"cid":acid,"key":akey}))
        .await
        .assert_error(400, "bad_request");
    upd(&sid, json!({"cid":ccid,"key":ckey,"values":{}}))
        .await
        .assert_error(403, "forbidden");
    upd(&sid, json!({"cid":acid,"key":ckey,"values":{}}))
        .await
        .assert_error(403, "forbidden");
    upd("nope", json!({"cid":acid,"key":akey,"values":{}}))
        .await
        .assert_error(404, "not_found");
    upd(
        &sid,
        json!({"cid":acid,"key":akey,"values":{"metadata":"m".repeat(5000)}}),
    )
    .await
    .assert_error(413, "too_large");
    let r = upd(&sid, json!({"cid":acid,"key":akey,"values":{"list":false}})).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.get("/list?filter=x").await.json(), json!([]));

    // Close.
    let close = |sid: &str, body: Value| {
        let path = format!("/session/{sid}/close");
        let b = &b;
        async move { b.post_json(&path, body).await }
    };
    close(&sid, json!({"cid":ccid,"key":ckey}))
        .await
        .assert_error(403, "forbidden");
    close("nope", json!({"cid":acid,"key":akey}))
        .await
        .assert_error(404, "not_found");
    let r = close(&sid, json!({"cid":acid,"key":akey})).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    b.send(&sid, &ccid, &ckey, json!(1))
        .await
        .assert_error(404, "not_found");
    close(&sid, json!({"cid":acid,"key":akey}))
        .await
        .assert_error(404, "not_found");
    // A slot is free again.
    b.session(&acid, &akey, json!({})).await;
}

#[tokio::test]
async fn list_filters() {
    let b = Broker::default().await;
    let (_a, acid, akey) = b.channel().await;
    let s1 = b
        .session(
            &acid,
            &akey,
            json!({"tags":["chat","eu"],"metadata":{"n":1}}),
        )
        .await;
    let s2 = b.session(&acid, &akey, json!({"tags":["chat","us"]})).await;
    let _s3 = b
        .session(&acid, &akey, json!({"tags":["chat"],"list":false}))
        .await;
    let sids = |v: Value| {
        let mut s: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sid"].as_str().unwrap().to_owned())
            .collect();
        s.sort();
        s
    };
    let mut both = vec![s1.clone(), s2.clone()];
    both.sort();
    assert_eq!(sids(b.get("/list").await.json()), both);
    assert_eq!(sids(b.get("/list?filter=").await.json()), both);
    assert_eq!(sids(b.get("/list?filter=chat").await.json()), both);
    assert_eq!(
        sids(b.get("/list?filter=chat,!eu").await.json()),
        vec![s2.clone()]
    );
    assert_eq!(
        sids(b.get("/list?filter=eu,eu").await.json()),
        vec![s1.clone()]
    );
    assert_eq!(
        sids(b.get("/list?filter=%21us").await.json()),
        vec![s1.clone()]
    );
    assert!(sids(b.get("/list?filter=nobody").await.json()).is_empty());
    for bad in ["a,,b", "a,", "!", "a%20b", &"x".repeat(65)] {
        b.get(&format!("/list?filter={bad}"))
            .await
            .assert_error(400, "bad_request");
    }
    let all = b.get("/list?filter=eu").await.json();
    assert_eq!(
        all,
        json!([{"sid":s1,"session":{"tags":["chat","eu"],"metadata":{"n":1}}}])
    );
}

#[tokio::test]
async fn list_watch() {
    let b = Broker::start(config(|c| c.limits.grace = Duration::from_millis(100))).await;
    let (_a, acid, akey) = b.channel().await;
    let s1 = b.session(&acid, &akey, json!({"tags":["room"]})).await;
    let mut w = b
        .sse("/list?filter=room", &[("accept", "text/event-stream")])
        .await;
    let ev = w.next().await.unwrap();
    assert_eq!(ev.event, "add");
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap(),
        json!({"sid":s1,"session":{"tags":["room"],"metadata":null}})
    );
    assert!(
        b.get("/metrics")
            .await
            .body
            .contains("glare_list_watchers 1")
    );

    // Live add; a non-matching session is not seen.
    b.session(&acid, &akey, json!({"tags":["other"]})).await;
    let s2 = b
        .session(&acid, &akey, json!({"tags":["room"],"metadata":1}))
        .await;
    let ev = w.next().await.unwrap();
    assert_eq!(ev.event, "add");
    assert!(ev.data.contains(&s2));
    // Upsert on update.
    let upd = |sid: &str, values: Value| {
        let path = format!("/session/{sid}/update");
        let body = json!({"cid":acid,"key":akey,"values":values});
        let b = &b;
        async move { b.post_json(&path, body).await }
    };
    upd(&s2, json!({"metadata":{"v":2}})).await;
    let ev = w.next().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap(),
        json!({"sid":s2,"session":{"tags":["room"],"metadata":{"v":2}}})
    );
    // Unlist → remove; relist → add; tag change out of the filter → remove.
    upd(&s2, json!({"list":false})).await;
    assert_eq!(w.next().await.unwrap().data, format!(r#"{{"sid":"{s2}"}}"#));
    upd(&s2, json!({"list":true})).await;
    assert_eq!(w.next().await.unwrap().event, "add");
    upd(&s2, json!({"tags":["elsewhere"]})).await;
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data),
        ("remove", format!(r#"{{"sid":"{s2}"}}"#))
    );
    // Close → remove.
    b.post_json(
        &format!("/session/{s1}/close"),
        json!({"cid":acid,"key":akey}),
    )
    .await;
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data),
        ("remove", format!(r#"{{"sid":"{s1}"}}"#))
    );
    // Channel expiry → remove.
    let (d, dcid, dkey) = b.channel().await;
    let s3 = b.session(&dcid, &dkey, json!({"tags":["room"]})).await;
    assert_eq!(w.next().await.unwrap().event, "add");
    drop(d);
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data),
        ("remove", format!(r#"{{"sid":"{s3}"}}"#))
    );
    // A bad filter is 400 on the stream too.
    b.request(
        "GET",
        "/list?filter=a,,b",
        &[("accept", "text/event-stream")],
        "",
    )
    .await
    .assert_error(400, "bad_request");
}

#[tokio::test]
async fn ws_without_upgrade_is_400() {
    let b = Broker::default().await;
    b.get("/ws").await.assert_error(400, "bad_request");
}

#[tokio::test]
async fn shutdown_ends_streams() {
    let mut b = Broker::default().await;
    let (mut a, _, _) = b.channel().await;
    let mut w = b.sse("/list", &[("accept", "text/event-stream")]).await;
    b.shutdown().await;
    assert!(a.ends_within(Duration::from_secs(2)).await);
    assert!(w.ends_within(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn limits_are_configurable() {
    let b = Broker::start(config(|c| {
        c.limits = Limits {
            max_sessions_per_channel: 1,
            max_tags: 1,
            max_metadata: 10,
            max_message: 10,
            ..Limits::default()
        };
    }))
    .await;
    let (_a, acid, akey) = b.channel().await;
    b.post_json("/session", json!({"cid":acid,"key":akey,"tags":["a","b"]}))
        .await
        .assert_error(400, "bad_request");
    b.post_json(
        "/session",
        json!({"cid":acid,"key":akey,"metadata":"0123456789"}),
    )
    .await
    .assert_error(413, "too_large");
    b.session(&acid, &akey, json!({"metadata":"01234567"}))
        .await;
    b.post_json("/session", json!({"cid":acid,"key":akey}))
        .await
        .assert_error(409, "limit_reached");
    b.send(&acid, &acid, &akey, json!("0123456789"))
        .await
        .assert_error(413, "too_large");
    assert_eq!(
        b.send(&acid, &acid, &akey, json!("01234567")).await.status,
        200
    );
}

/// The broker serves glare.js and the demo page from the binary (issue 8).
#[tokio::test]
async fn serves_glare_js_and_the_demo_page() {
    let b = Broker::default().await;
    let r = b.get("/glare.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(r.body.contains("export"), "glare.js is an ES module");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = b.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("glare.js"), "the page loads glare.js");
    b.post("/glare.js", "")
        .await
        .assert_error(405, "method_not_allowed");
}
