//! A raw HTTP harness: a broker on 127.0.0.1:0 and a hyper client that knows nothing
//! of glare beyond the SSE decoder.
//!
//! Cluster mode: when this module is compiled inside `redis_protocol.rs` (which loads
//! `http.rs` as its module `http_flows`), `Broker::start` starts a redis-server and three
//! nodes on it, and every request goes to a node picked at random; `/metrics` is summed
//! over the nodes. So every §1 test of `http.rs` also runs on three nodes as one.
#![allow(dead_code, unreachable_pub, missing_debug_implementations)]

pub mod redis;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use glare_broker::{Config, Handle, Server};
use glare_proto::sse::{Decoder, Event};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};

/// Whether this copy of the harness runs brokers as a three-node cluster.
pub fn cluster_mode() -> bool {
    module_path!().contains("http_flows")
}

pub struct Broker {
    /// The first node.
    pub addr: SocketAddr,
    /// Every node (one unless in cluster mode).
    pub addrs: Vec<SocketAddr>,
    pub handle: Option<Handle>,
    stop: Vec<oneshot::Sender<()>>,
    pub task: Vec<JoinHandle<std::io::Result<()>>>,
    pub redis: Option<redis::RedisServer>,
}

impl Broker {
    pub async fn start(config: Config) -> Self {
        if cluster_mode() {
            let redis = redis::RedisServer::start();
            let mut b = Self::nodes(config, Some(&redis), 3).await;
            b.redis = Some(redis);
            return b;
        }
        Self::nodes(config, None, 1).await
    }

    /// `n` in-process nodes, on `redis` if given.
    pub async fn nodes(mut config: Config, redis: Option<&redis::RedisServer>, n: usize) -> Self {
        if let Some(r) = redis {
            config.redis = Some(r.config());
        }
        let mut addrs = Vec::new();
        let mut handles = Vec::new();
        let mut stop = Vec::new();
        let mut task = Vec::new();
        for _ in 0..n {
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), config.clone())
                .await
                .unwrap();
            addrs.push(server.local_addr());
            handles.push(server.handle());
            let (tx, rx) = oneshot::channel::<()>();
            task.push(tokio::spawn(server.run(async {
                let _ = rx.await;
            })));
            stop.push(tx);
        }
        if redis.is_some() {
            wait_ready(&addrs).await;
        }
        Self {
            addr: addrs[0],
            addrs,
            handle: Some(handles.swap_remove(0)),
            stop,
            task,
            redis: None,
        }
    }

    /// Nodes already running elsewhere (child processes), picked at random per request.
    pub fn remote(addrs: Vec<SocketAddr>) -> Self {
        Self {
            addr: addrs[0],
            addrs,
            handle: None,
            stop: Vec::new(),
            task: Vec::new(),
            redis: None,
        }
    }

    pub async fn default() -> Self {
        Self::start(Config::default()).await
    }

    pub async fn shutdown(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        for t in self.task.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("shutdown in time")
                .unwrap()
                .unwrap();
        }
    }

    /// A node picked at random (the only one outside cluster mode).
    pub fn pick(&self) -> SocketAddr {
        use rand::Rng as _;
        self.addrs[rand::rng().random_range(0..self.addrs.len())]
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        if path == "/metrics" && self.addrs.len() > 1 {
            return self.summed_metrics().await;
        }
        let body = body.into();
        let addr = self.pick();
        self.request_to(addr, method, path, headers, body).await
    }

    /// `/metrics` of every node, each sample summed over the nodes.
    async fn summed_metrics(&self) -> Resp {
        let mut sums: Vec<(String, u64)> = Vec::new();
        let mut first: Option<Resp> = None;
        for &a in &self.addrs {
            let r = self
                .request_to(a, "GET", "/metrics", &[], Bytes::new())
                .await;
            for line in r.body.lines().filter(|l| !l.starts_with('#')) {
                let Some((name, v)) = line.rsplit_once(' ') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match sums.iter_mut().find(|(n, _)| n == name) {
                    Some((_, s)) => *s += v,
                    None => sums.push((name.to_owned(), v)),
                }
            }
            first.get_or_insert(r);
        }
        let mut r = first.expect("a node");
        r.body = r
            .body
            .lines()
            .map(|line| {
                let summed = line.rsplit_once(' ').and_then(|(name, _)| {
                    let v = sums.iter().find(|(n, _)| n == name)?.1;
                    (!line.starts_with('#')).then(|| format!("{name} {v}"))
                });
                summed.unwrap_or_else(|| line.to_owned()) + "\n"
            })
            .collect();
        r
    }

    pub async fn request_to(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let res = self
            .start_request_to(addr, method, path, headers, body)
            .await;
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
            .await
            .expect("body in time")
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn start_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> hyper::Response<Incoming> {
        let addr = self.pick();
        self.start_request_to(addr, method, path, headers, body)
            .await
    }

    pub async fn start_request_to(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> hyper::Response<Incoming> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("response in time")
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Resp {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Resp {
        self.post(path, &body.to_string()).await
    }

    /// Opens an SSE stream.
    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        let res = self.start_request("GET", path, headers, Bytes::new()).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Sse {
            body: Some(res.into_body()),
            decoder: Decoder::new(),
            comments: 0,
        }
    }

    /// Opens a channel; returns the stream and (cid, key).
    pub async fn channel(&self) -> (Sse, String, String) {
        let mut sse = self.sse("/channel", &[]).await;
        let ev = sse.next().await.expect("channel event");
        assert_eq!(ev.event, "channel");
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        (
            sse,
            v["cid"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn send(&self, target: &str, origin: &str, key: &str, message: Value) -> Resp {
        self.post_json(
            &format!("/send/{target}"),
            serde_json::json!({"origin": origin, "key": key, "message": message}),
        )
        .await
    }

    pub async fn session(&self, cid: &str, key: &str, extra: Value) -> String {
        let mut body = serde_json::json!({"cid": cid, "key": key});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self.post_json("/session", body).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["sid"].as_str().unwrap().to_owned()
    }
}

/// Waits until every node answers `GET /channel` (its Redis subscription is live).
pub async fn wait_ready(addrs: &[SocketAddr]) {
    for &a in addrs {
        let b = Broker::remote(vec![a]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = b.start_request("GET", "/healthz", &[], Bytes::new()).await;
            if r.status() == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {a} not ready: {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error answer with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["error"], code, "{}", self.body);
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(self.header("access-control-allow-origin"), Some("*"));
    }
}

pub struct Sse {
    body: Option<Incoming>,
    decoder: Decoder,
    pub comments: usize,
}

impl Sse {
    /// The next event within 5 s; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_within(Duration::from_secs(5)).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(ev) = self.decoder.poll_event() {
                return Some(ev.unwrap());
            }
            let body = self.body.as_mut()?;
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .expect("SSE event in time");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.comments += data
                            .split(|&b| b == b'\n')
                            .filter(|l| l.starts_with(b":"))
                            .count();
                        self.decoder.feed(&data);
                    }
                }
                _ => {
                    self.body = None;
                    return None;
                }
            }
        }
    }

    /// Whether the stream ends within `wait`.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(body) = self.body.as_mut() else {
                return true;
            };
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return false,
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.comments += data
                            .split(|&b| b == b'\n')
                            .filter(|l| l.starts_with(b":"))
                            .count();
                        self.decoder.feed(&data);
                    }
                }
                Ok(_) => {
                    self.body = None;
                    return true;
                }
            }
        }
    }

    /// Next event that is a `message`, as (id, data JSON).
    pub async fn message(&mut self) -> (u64, Value) {
        let ev = self.next().await.expect("a message");
        assert_eq!(ev.event, "message", "{ev:?}");
        (
            ev.id.unwrap().parse().unwrap(),
            serde_json::from_str(&ev.data).unwrap(),
        )
    }
}
