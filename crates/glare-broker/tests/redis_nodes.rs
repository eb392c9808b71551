//! Broker nodes as real processes on one real Redis: a node killed with SIGKILL while
//! messages flow to channels homed on it, a dead node's channels and sessions reaped,
//! and Redis itself restarted mid-run.

mod common;

use std::{
    collections::HashMap,
    io::BufRead as _,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::{Broker, redis::RedisServer};
use glare_proto::sse::{Decoder, Event};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Incoming};
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// One `glare-broker-node` child process, killed with SIGKILL (by pid) on drop.
struct Node {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Node {
    fn spawn(redis: &RedisServer, grace_ms: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_glare-broker-node"))
            .args(["--redis", &redis.url()])
            .args(["--heartbeat-ms", "100", "--node-timeout-ms", "1000"])
            .args(["--grace-ms", &grace_ms.to_string()])
            .args(["--buffer", "4096", "--rate", "100000", "--burst", "100000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn glare-broker-node");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("first line");
        let addr = line
            .trim()
            .strip_prefix("listening http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child: Some(child),
            addr,
        }
    }

    /// SIGKILL: no cleanup of any kind.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: String,
) -> Result<hyper::Response<Incoming>, String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| "response timeout".to_owned())?
        .map_err(|e| e.to_string())
}

/// POST; (status, body) or a transport error.
async fn post(addr: SocketAddr, path: &str, body: Value) -> Result<(u16, String), String> {
    let res = request(addr, "POST", path, &[], body.to_string()).await?;
    let status = res.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .map_err(|_| "body timeout".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

struct Stream {
    body: Incoming,
    dec: Decoder,
}

impl Stream {
    async fn open(addr: SocketAddr, path: &str, last: Option<u64>) -> Result<Self, String> {
        let headers: Vec<(&str, String)> = last
            .map(|l| ("last-event-id", l.to_string()))
            .into_iter()
            .collect();
        let res = request(addr, "GET", path, &headers, String::new()).await?;
        if res.status() != 200 {
            return Err(format!("status {}", res.status()));
        }
        Ok(Self {
            body: res.into_body(),
            dec: Decoder::new(),
        })
    }

    /// The next event; `None` when the stream ends, fails or is silent for `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Event> {
        loop {
            if let Some(ev) = self.dec.poll_event() {
                return ev.ok();
            }
            match tokio::time::timeout(wait, self.body.frame()).await {
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.dec.feed(&d);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// What a resuming receiver saw.
#[derive(Debug, Default)]
struct Received {
    /// `message` data in order.
    messages: Vec<Value>,
    /// Streams that ended and were resumed.
    resumes: usize,
    /// Resume attempts refused (status or transport error), by reason.
    refused: HashMap<String, usize>,
    /// Nodes the stream was held on, in order.
    nodes: Vec<SocketAddr>,
    /// Messages received before the first stream ended.
    before_cut: Option<usize>,
}

/// Opens a channel on `home`; returns (cid, key, stream).
async fn open_channel(home: SocketAddr) -> (String, String, Stream) {
    let mut s = Stream::open(home, "/channel", None).await.expect("open");
    let ev = s.next(Duration::from_secs(5)).await.expect("channel event");
    assert_eq!(ev.event, "channel");
    let v: Value = serde_json::from_str(&ev.data).unwrap();
    (
        v["cid"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
        s,
    )
}

/// Reads messages until one with `"n": last_n` arrives, resuming on a random node of
/// `nodes` whenever the stream ends; ids must be contiguous (no `gap`).
async fn receive(
    nodes: Vec<SocketAddr>,
    first: SocketAddr,
    cid: String,
    key: String,
    mut stream: Stream,
    last_n: u64,
) -> Result<Received, String> {
    let mut r = Received {
        nodes: vec![first],
        ..Received::default()
    };
    let mut last = 0u64;
    loop {
        while let Some(ev) = stream.next(Duration::from_secs(10)).await {
            match ev.event.as_str() {
                "channel" => {}
                "message" => {
                    let id: u64 = ev.id.as_deref().unwrap_or("0").parse().unwrap_or(0);
                    if id != last + 1 {
                        return Err(format!("id {id} after {last}"));
                    }
                    last = id;
                    let v: Value = serde_json::from_str(&ev.data).unwrap();
                    let done = v["message"]["n"].as_u64() == Some(last_n);
                    r.messages.push(v);
                    if done {
                        return Ok(r);
                    }
                }
                other => return Err(format!("unexpected event {other}: {}", ev.data)),
            }
        }
        r.resumes += 1;
        r.before_cut.get_or_insert(r.messages.len());
        if r.resumes > 200 {
            return Err(format!("over 200 resumes: {r:?}"));
        }
        let path = format!("/channel?cid={cid}&key={key}");
        let mut attempts = 0;
        stream = loop {
            let addr = nodes[rand::rng().random_range(0..nodes.len())];
            match Stream::open(addr, &path, Some(last)).await {
                Ok(s) => {
                    r.nodes.push(addr);
                    break s;
                }
                Err(e) => {
                    let reason = if e.starts_with("status") {
                        e
                    } else {
                        "transport".to_owned()
                    };
                    *r.refused.entry(reason).or_default() += 1;
                    attempts += 1;
                    if attempts > 400 {
                        return Err(format!("could not resume: {r:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
    }
}

/// What a sender saw: per message, the answers it got until one was 200.
#[derive(Debug, Default)]
struct Sent {
    ok: usize,
    answers: HashMap<String, usize>,
    /// Sequence numbers that got a non-200 answer at least once before their 200.
    retried: Vec<u64>,
}

/// Sends `count` messages `{"s":sender,"n":seq}` from `origin` to `target`, each through
/// a random node of `via`, retrying a message until it is answered 200.
async fn send_all(
    via: Vec<SocketAddr>,
    origin: (String, String),
    target: String,
    sender: usize,
    count: u64,
    pause: Duration,
    accepted: Arc<AtomicUsize>,
) -> Sent {
    let mut sent = Sent::default();
    for n in 0..count {
        let mut failed = false;
        for attempt in 0.. {
            assert!(attempt < 600, "message {n} never accepted: {sent:?}");
            let addr = via[rand::rng().random_range(0..via.len())];
            let body =
                json!({"origin": origin.0, "key": origin.1, "message": {"s": sender, "n": n}});
            let answer = match post(addr, &format!("/send/{target}"), body).await {
                Ok((200, _)) => {
                    sent.ok += 1;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    *sent.answers.entry("200".to_owned()).or_default() += 1;
                    break;
                }
                Ok((status, body)) => {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    format!("{status} {}", v["error"].as_str().unwrap_or("?"))
                }
                Err(_) => "transport".to_owned(),
            };
            *sent.answers.entry(answer).or_default() += 1;
            failed = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if failed {
            sent.retried.push(n);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    sent
}

/// Per sender, the `n`s in the order received.
fn by_sender(r: &Received) -> HashMap<u64, Vec<u64>> {
    let mut m: HashMap<u64, Vec<u64>> = HashMap::new();
    for v in &r.messages {
        let msg = &v["message"];
        m.entry(msg["s"].as_u64().unwrap())
            .or_default()
            .push(msg["n"].as_u64().unwrap());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_home_node_loses_nothing() {
    const CHANNELS: usize = 4;
    const PER: u64 = 500; // 2,000 messages in all
    let redis = RedisServer::start();
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::spawn(&redis, 10_000)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    common::wait_ready(&addrs).await;
    let home = addrs[0];
    let others = addrs[1..].to_vec();

    let run = async {
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        let accepted = Arc::new(AtomicUsize::new(0));
        for i in 0..CHANNELS {
            let (cid, key, stream) = open_channel(home).await;
            // The senders' own channels live on the surviving nodes and send through them.
            let (scid, skey, _sstream) = open_channel(others[i % 2]).await;
            receivers.push(tokio::spawn(receive(
                addrs.clone(),
                home,
                cid.clone(),
                key,
                stream,
                PER - 1,
            )));
            let via = others.clone();
            let accepted = Arc::clone(&accepted);
            senders.push(tokio::spawn(async move {
                let pause = Duration::from_millis(1);
                let s = send_all(via, (scid, skey), cid, i, PER, pause, accepted).await;
                drop(_sstream);
                s
            }));
        }
        // Kill the home node while the messages flow: once 300 of the 2,000 are accepted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while accepted.load(Ordering::Relaxed) < 300 {
            assert!(tokio::time::Instant::now() < deadline, "senders stuck");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        nodes[0].kill();
        eprintln!("home node {home} killed (SIGKILL)");
        let mut sent = Vec::new();
        for s in senders {
            sent.push(s.await.unwrap());
        }
        let mut got = Vec::new();
        for r in receivers {
            got.push(r.await.unwrap());
        }
        (sent, got)
    };
    let (sent, got) = tokio::time::timeout(Duration::from_secs(50), run)
        .await
        .expect("the run ends within 50 s");
    for (i, (s, r)) in sent.iter().zip(&got).enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("receiver {i}: {e}"));
        eprintln!(
            "channel {i}: sender answers {:?}; receiver cut after {:?} messages, resumed {} \
             times on {:?}, refused {:?}",
            s.answers, r.before_cut, r.resumes, r.nodes, r.refused
        );
        assert_eq!(s.ok, PER as usize);
        assert!(
            s.retried.is_empty(),
            "no send through a live node fails: {s:?}"
        );
        let m = by_sender(r);
        assert_eq!(m.len(), 1);
        let ns = &m[&(i as u64)];
        assert_eq!(*ns, (0..PER).collect::<Vec<_>>(), "exactly once, in order");
        assert!(r.resumes >= 1, "the stream was cut by the kill");
        let cut = r.before_cut.unwrap();
        assert!(cut > 0 && cut < PER as usize, "cut mid-flow: after {cut}");
        assert!(
            r.nodes.iter().skip(1).all(|a| *a != home),
            "resumed on a live node"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_channels_close_after_grace_unless_resumed() {
    let redis = RedisServer::start();
    let grace = 1_500;
    let mut nodes: Vec<Node> = (0..2).map(|_| Node::spawn(&redis, grace)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    common::wait_ready(&addrs).await;
    let (dead, live) = (addrs[0], addrs[1]);
    let b = Broker::remote(vec![live]);

    // On the node that will die: X (left alone) and Y (resumed elsewhere), each with a
    // listed session; a watcher and a sender on the other node.
    let (xcid, xkey, _x) = open_channel(dead).await;
    let (ycid, ykey, _y) = open_channel(dead).await;
    let xs = b.session(&xcid, &xkey, json!({"tags":["t"]})).await;
    let ys = b.session(&ycid, &ykey, json!({"tags":["t"]})).await;
    let mut w = b
        .sse("/list?filter=t", &[("accept", "text/event-stream")])
        .await;
    let mut seen = [w.next().await.unwrap(), w.next().await.unwrap()];
    seen.sort_by(|a, b| a.data.cmp(&b.data));
    assert!(seen.iter().all(|e| e.event == "add"));
    let (ccid, ckey, _c) = open_channel(live).await;
    assert_eq!(b.send(&xs, &ccid, &ckey, json!(1)).await.status, 200);

    nodes[0].kill();
    let killed = tokio::time::Instant::now();
    // Y resumes on the live node within the grace period and gets the message sent
    // while it had no stream.
    assert_eq!(
        b.send(&ys, &ccid, &ckey, json!("while down")).await.status,
        200
    );
    let mut y2 = Stream::open(live, &format!("/channel?cid={ycid}&key={ykey}"), Some(0))
        .await
        .unwrap();
    assert_eq!(
        y2.next(Duration::from_secs(5)).await.unwrap().event,
        "channel"
    );
    let m = y2.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((m.event.as_str(), m.id.as_deref()), ("message", Some("1")));

    // X is closed once the node is seen dead and the grace period has run: watchers
    // are told, sends are 404.
    let ev = w.next_within(Duration::from_secs(10)).await.unwrap();
    let waited = killed.elapsed();
    assert_eq!(
        (ev.event.as_str(), ev.data),
        ("remove", format!(r#"{{"sid":"{xs}"}}"#))
    );
    assert!(
        waited >= Duration::from_millis(grace - 200),
        "closed only after the grace period ({waited:?})"
    );
    b.send(&xs, &ccid, &ckey, json!(1))
        .await
        .assert_error(404, "not_found");
    b.send(&xcid, &ccid, &ckey, json!(1))
        .await
        .assert_error(404, "not_found");
    // Y lives on.
    assert_eq!(b.send(&ys, &ccid, &ckey, json!(2)).await.status, 200);
    let m = y2.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((m.event.as_str(), m.id.as_deref()), ("message", Some("2")));
    let list = b.get("/list?filter=t").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["sid"], json!(ys));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run() {
    const PER: u64 = 300;
    let mut redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::spawn(&redis, 30_000)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    common::wait_ready(&addrs).await;

    let (cid, key, stream) = open_channel(addrs[0]).await;
    let (scid, skey, _s) = open_channel(addrs[1]).await;
    let receiver = tokio::spawn(receive(
        addrs.clone(),
        addrs[0],
        cid.clone(),
        key,
        stream,
        PER - 1,
    ));
    let sender = tokio::spawn(send_all(
        addrs.clone(),
        (scid, skey),
        cid,
        0,
        PER,
        Duration::from_millis(5),
        Arc::new(AtomicUsize::new(0)),
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.kill();
    eprintln!("redis killed (SIGKILL)");
    // While it is away: a clear 503 from every node.
    let b = Broker::remote(addrs.clone());
    let r = b.get("/list").await;
    r.assert_error(503, "unavailable");
    assert!(
        r.json()["message"].as_str().unwrap().contains("Redis"),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    eprintln!("redis restarted");

    let (sent, got) = tokio::time::timeout(Duration::from_secs(50), async {
        (sender.await.unwrap(), receiver.await.unwrap())
    })
    .await
    .expect("the run ends within 50 s");
    let got = got.unwrap_or_else(|e| panic!("receiver: {e}"));
    let ns = &by_sender(&got)[&0];
    // Every message answered 200 arrives, in order; one answered 503 first may have
    // been applied before its answer was lost (the protocol has no idempotency key),
    // so only those may appear twice, next to each other.
    let mut dedup = ns.clone();
    dedup.dedup();
    let dupes: Vec<u64> = ns
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    eprintln!(
        "client observed: sender answers {:?} ({} messages retried after a non-200); \
         receiver resumed {} times, refused {:?}, nodes {:?}; {} messages delivered twice",
        sent.answers,
        sent.retried.len(),
        got.resumes,
        got.refused,
        got.nodes,
        dupes.len()
    );
    assert!(dupes.iter().all(|n| sent.retried.contains(n)), "{dupes:?}");
    assert_eq!(
        dedup,
        (0..PER).collect::<Vec<_>>(),
        "every message, in order"
    );
    assert!(
        sent.answers.keys().any(|k| k != "200"),
        "the outage was seen: {:?}",
        sent.answers
    );
    // And the cluster keeps serving.
    let r = b.get("/list").await;
    assert_eq!(r.status, 200, "{}", r.body);
}
