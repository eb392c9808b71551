//! Broker load generator: glare's broker (WebSocket fast path and SSE + POST) against
//! `PeerServer` (`PeerJS`) (WebSocket), measured in one run by this one generator.
//!
//! ```text
//! broker_load --glare PATH --peer-dir DIR [--smoke] [--secs S] [--idle N] [--opens N]
//!             [--inflight N] [--pairs 1,10,100] [--parts relay,idle,opens,cluster]
//!             [--node PATH] [--baseline-node PATH] [--redis-server PATH]
//!             [--cluster-nodes 1,2,3]
//! ```
//!
//! It starts each server as a child process on 127.0.0.1 (port 0), drives it, reads
//! its CPU time from `/proc/<pid>/stat` and RSS from `/proc/<pid>/status`, kills it
//! (by its pid, through the child handle) and prints a markdown report on stdout
//! (progress goes to stderr). It runs on a tokio runtime with one worker thread so it
//! stays cheap; its own CPU time is reported next to the server's.
//!
//! - **Relay**: `pairs` pairs of peers; each peer sends ~100-byte JSON messages to the
//!   other (so the delivered frame is ~200 bytes), with a window of messages in
//!   flight per direction (`--inflight` in total, split over the directions). Latency
//!   is send → delivery, stamped by the generator's clock in the message.
//! - **Idle**: RSS growth of a fresh server per idle peer: glare channels on a
//!   WebSocket with one session each, `PeerServer` peers on a WebSocket.
//! - **Opens**: new connections that reach the first server frame, per second, 32 at a
//!   time (a glare channel over WebSocket and over SSE; a `PeerServer` peer).
//!
//! - **Cluster** (with `--node`, the `glare-broker-node` binary): the WebSocket relay on
//!   one in-memory node and on 1, 2 and 3 nodes sharing one `redis-server` (each pair's
//!   two peers on different nodes when there are several, so every message crosses
//!   nodes), same load, same run; CPU is the nodes' plus Redis's. Idle channels on one
//!   node with Redis: node RSS + Redis RSS growth per channel.
//!
//! `--smoke` runs a few hundred messages per case and checks that every one arrives.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink, stream::SplitStream};
use glare_proto::sse::Decoder;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::Semaphore,
    time::Instant,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Padding that makes the message ~100 bytes (`{"t":…,"p":"…"}`).
const PAD: &str = "glare-broker-load-padding-0123456789-abcdefghijklmnopqrstuvwx";

/// How long any one connect or first frame may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Args {
    glare: PathBuf,
    peer_dir: PathBuf,
    smoke: bool,
    secs: f64,
    idle: usize,
    opens: usize,
    inflight: usize,
    pairs: Vec<usize>,
    /// Which measurements: `relay`, `idle`, `opens`, `cluster`.
    parts: Vec<String>,
    /// `glare-broker-node` (the `cluster` part: nodes on Redis vs one in-memory node).
    node: Option<PathBuf>,
    /// Another `glare-broker-node` build measured as an extra in-memory row (before/after).
    baseline_node: Option<PathBuf>,
    redis_server: PathBuf,
    /// Node counts on Redis for the `cluster` part.
    cluster_nodes: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        glare: PathBuf::new(),
        peer_dir: PathBuf::new(),
        smoke: false,
        secs: 3.0,
        idle: 10_000,
        opens: 5_000,
        inflight: 256,
        pairs: vec![1, 10, 100],
        parts: vec![
            "relay".into(),
            "idle".into(),
            "opens".into(),
            "cluster".into(),
        ],
        node: None,
        baseline_node: None,
        redis_server: "redis-server".into(),
        cluster_nodes: vec![1, 2, 3],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--glare" => args.glare = val()?.into(),
            "--peer-dir" => args.peer_dir = val()?.into(),
            "--smoke" => args.smoke = true,
            "--secs" => args.secs = val()?.parse()?,
            "--idle" => args.idle = val()?.parse()?,
            "--opens" => args.opens = val()?.parse()?,
            "--inflight" => args.inflight = val()?.parse()?,
            "--parts" => args.parts = val()?.split(',').map(str::to_owned).collect(),
            "--node" => args.node = Some(val()?.into()),
            "--baseline-node" => args.baseline_node = Some(val()?.into()),
            "--redis-server" => args.redis_server = val()?.into(),
            "--cluster-nodes" => {
                args.cluster_nodes = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--pairs" => {
                args.pairs = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.glare.as_os_str().is_empty() || args.peer_dir.as_os_str().is_empty() {
        bail!(
            "usage: broker_load --glare PATH --peer-dir DIR [--node PATH] [--baseline-node PATH] [--redis-server PATH] [--cluster-nodes 1,2,3] [--smoke] [--secs S] [--idle N] [--opens N] [--inflight N] [--pairs 1,10,100] [--parts relay,idle,opens,cluster]"
        );
    }
    if args.smoke {
        args.idle = args.idle.min(200);
        args.opens = args.opens.min(200);
        args.pairs.retain(|&p| p <= 10);
    }
    if !(0.1..=60.0).contains(&args.secs) {
        bail!("--secs must be within 0.1..=60");
    }
    args.idle = args.idle.min(50_000);
    args.opens = args.opens.min(50_000);
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("broker_load: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker_load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("broker_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes and /proc
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Glare,
    Peer,
}

/// A server child process; killed (by its pid) when dropped.
struct Server {
    child: Child,
    pid: u32,
    port: u16,
}

impl Server {
    async fn start(kind: Kind, args: &Args) -> Result<Self> {
        let mut cmd = match kind {
            Kind::Glare => {
                let mut c = Command::new(&args.glare);
                c.args([
                    "broker",
                    "--listen",
                    "127.0.0.1:0",
                    "--rate",
                    "1000000000",
                    "--burst",
                    "1000000000",
                ])
                .env("GLARE_LOG", "warn");
                c
            }
            Kind::Peer => {
                write_peer_script(&args.peer_dir)?;
                let mut c = Command::new("node");
                c.arg("glare-bench-server.js").current_dir(&args.peer_dir);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {kind:?} server"))?;
        let pid = child.id().context("server pid")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        tokio::time::timeout(STEP_TIMEOUT, BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| anyhow!("{kind:?} server printed no address within 10 s"))??;
        // "listening http://127.0.0.1:PORT" or "listening PORT".
        let port = line
            .trim()
            .rsplit([':', ' '])
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .with_context(|| format!("{kind:?} server's first line {line:?} has no port"))?;
        Ok(Self { child, pid, port })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// A `glare-broker-node`, on Redis if `redis` is given.
    async fn start_node(bin: &Path, redis: Option<&RedisProc>) -> Result<Self> {
        let mut c = Command::new(bin);
        c.args([
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "1000000000",
            "--burst",
            "1000000000",
        ]);
        if let Some(r) = redis {
            c.args(["--redis", &format!("redis://127.0.0.1:{}/", r.port)]);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("node pid")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut line = String::new();
        tokio::time::timeout(STEP_TIMEOUT, BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| anyhow!("node printed no address within 10 s"))??;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .with_context(|| format!("node's first line {line:?} has no port"))?;
        let server = Self { child, pid, port };
        // Ready once its Redis subscription is live (`/healthz` 200).
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let ok = match http_conn(port).await {
                Ok(mut h) => {
                    let req = request("GET", "/healthz", String::new())?;
                    matches!(h.send_request(req).await, Ok(r) if r.status() == 200)
                }
                Err(_) => false,
            };
            if ok {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("node on port {port} not ready within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `redis-server` child on a free port with a temp dir, no persistence; killed (by
/// pid) when dropped.
struct RedisProc {
    child: Child,
    pid: u32,
    port: u16,
    dir: PathBuf,
}

impl RedisProc {
    async fn start(bin: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("glare-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (the cluster part needs Redis: apt-get install redis-server)",
                    bin.display()
                )
            })?;
        let pid = child.id().context("redis pid")?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                bail!("redis-server exited at start: {st}");
            }
            if Instant::now() > deadline {
                bail!("redis-server not listening within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            child,
            pid,
            port,
            dir,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The processes a relay drives: peers connect to `ports` in turn; CPU is summed over
/// `pids`.
struct Target {
    ports: Vec<u16>,
    pids: Vec<u32>,
}

impl From<&Server> for Target {
    fn from(s: &Server) -> Self {
        Self {
            ports: vec![s.port],
            pids: vec![s.pid],
        }
    }
}

fn write_peer_script(dir: &Path) -> Result<()> {
    if !dir.join("node_modules/peer").is_dir() {
        bail!(
            "PeerServer is not installed in {} (npm install --prefix {} peer)",
            dir.display(),
            dir.display()
        );
    }
    // Limits raised so the idle test is not refused (default 5,000 peers) and idle
    // peers that send no heartbeat are not dropped during the run.
    let script = "const { PeerServer } = require('peer');\n\
        PeerServer({ host: '127.0.0.1', port: 0, concurrent_limit: 1000000, alive_timeout: 3600000 },\n\
        (server) => { console.log('listening ' + server.address().port); });\n";
    std::fs::write(dir.join("glare-bench-server.js"), script)?;
    Ok(())
}

/// User + system CPU time of a process (or this one), in clock ticks (`USER_HZ`, 100/s).
fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm)": state is field 3, utime 14, stime 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

const TICKS_PER_SEC: f64 = 100.0;

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU use of the server and of this generator over a stretch of wall time.
struct CpuMeter {
    pids: Vec<u32>,
    server: u64,
    me: u64,
    at: Instant,
}

fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ticks(Some(p))).sum()
}

impl CpuMeter {
    fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            server: ticks_of(pids),
            me: cpu_ticks(None),
            at: Instant::now(),
        }
    }

    /// (server, generator) CPU in % of one core.
    fn read(&self) -> (f64, f64) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        let pct = |t: u64| t as f64 / TICKS_PER_SEC / wall * 100.0;
        (
            pct(ticks_of(&self.pids).saturating_sub(self.server)),
            pct(cpu_ticks(None).saturating_sub(self.me)),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    GlareWs,
    GlareSse,
    Peer,
}

impl Mode {
    fn kind(self) -> Kind {
        match self {
            Self::GlareWs | Self::GlareSse => Kind::Glare,
            Self::Peer => Kind::Peer,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::GlareWs => "glare WebSocket",
            Self::GlareSse => "glare SSE + POST",
            Self::Peer => "PeerServer WebSocket",
        }
    }
}

static NEXT_PEER: AtomicU64 = AtomicU64::new(0);

/// A fresh 24-character `PeerServer` id (the length of glare's ids).
fn peer_id() -> String {
    format!(
        "p{:011}{:012}",
        std::process::id(),
        NEXT_PEER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn ws_connect(url: &str) -> Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .map_err(|_| anyhow!("connect {url}: timed out"))?
    .with_context(|| format!("connect {url}"))?;
    Ok(ws)
}

async fn first_text(ws: &mut Ws) -> Result<String> {
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Err(_) => bail!("no first frame within 10 s"),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => bail!("unexpected first frame {other:?}"),
        }
    }
}

/// Opens a glare channel over WebSocket: (socket, cid, key).
async fn glare_ws_open(port: u16) -> Result<(Ws, String, String)> {
    let mut ws = ws_connect(&format!("ws://127.0.0.1:{port}/ws")).await?;
    let first = first_text(&mut ws).await?;
    let v: serde_json::Value = serde_json::from_str(&first)?;
    let (Some(cid), Some(key)) = (v["cid"].as_str(), v["key"].as_str()) else {
        bail!("expected the channel frame, got {first}");
    };
    Ok((ws, cid.to_owned(), key.to_owned()))
}

/// Connects a `PeerServer` peer and waits for `OPEN`.
async fn peer_open(port: u16, id: &str) -> Result<Ws> {
    let mut ws = ws_connect(&format!(
        "ws://127.0.0.1:{port}/peerjs?key=peerjs&id={id}&token=tok{id}"
    ))
    .await?;
    let first = first_text(&mut ws).await?;
    if !first.contains("\"OPEN\"") {
        bail!("PeerServer answered {first}");
    }
    Ok(ws)
}

type Http = SendRequest<Full<Bytes>>;

async fn http_conn(port: u16) -> Result<Http> {
    let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn request(method: &str, path: &str, body: String) -> Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from(body)))?)
}

/// `POST` and read the whole answer; returns the status.
async fn post(http: &mut Http, path: &str, body: String) -> Result<u16> {
    http.ready().await?;
    let res = http.send_request(request("POST", path, body)?).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await?;
    Ok(status)
}

/// An open SSE channel: its body, decoder, cid and key.
struct SseChannel {
    body: Incoming,
    decoder: Decoder,
    cid: String,
    key: String,
}

async fn glare_sse_open(port: u16) -> Result<SseChannel> {
    let mut http = http_conn(port).await?;
    http.ready().await?;
    let res = tokio::time::timeout(
        STEP_TIMEOUT,
        http.send_request(request("GET", "/channel", String::new())?),
    )
    .await
    .map_err(|_| anyhow!("GET /channel timed out"))??;
    if res.status() != 200 {
        bail!("GET /channel answered {}", res.status());
    }
    let mut body = res.into_body();
    let mut decoder = Decoder::new();
    loop {
        if let Some(ev) = decoder.poll_event() {
            let ev = ev.map_err(|e| anyhow!("SSE: {e:?}"))?;
            let v: serde_json::Value = serde_json::from_str(&ev.data)?;
            let (Some(cid), Some(key)) = (v["cid"].as_str(), v["key"].as_str()) else {
                bail!("expected the channel event, got {}", ev.data);
            };
            let (cid, key) = (cid.to_owned(), key.to_owned());
            return Ok(SseChannel {
                body,
                decoder,
                cid,
                key,
            });
        }
        match tokio::time::timeout(STEP_TIMEOUT, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    decoder.feed(&d);
                }
            }
            _ => bail!("SSE stream ended before the channel event"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------

/// The message, stamped with the send time in µs since `epoch`.
fn message(t: u64) -> String {
    format!(r#"{{"t":{t},"p":"{PAD}"}}"#)
}

/// The `t` of a delivered frame (the first `"t":` in it: ids and cids are
/// alphanumeric, so only the message can hold one).
fn stamp(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

/// The clock and schedule of one relay run.
struct Clock {
    epoch: Instant,
    /// Samples count from here (end of warm-up)…
    t0: Instant,
    /// …to here; senders stop here.
    t1: Instant,
    /// Readers stop here (drain).
    end: Instant,
    /// Smoke: each direction sends exactly this many.
    cap: Option<u64>,
    delivered: AtomicU64,
    errors: AtomicU64,
    /// Time of the last delivery counted (µs since epoch), for the smoke's rate.
    last_delivery_us: AtomicU64,
}

impl Clock {
    fn us(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a delivery stamped `t`; returns its latency in µs if in the window.
    fn delivery(&self, t: u64, lat: &mut Vec<u32>) {
        let now = Instant::now();
        if now < self.t0 || now > self.t1 {
            return;
        }
        let now_us = self.us(now);
        lat.push(u32::try_from(now_us.saturating_sub(t)).unwrap_or(u32::MAX));
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us.fetch_max(now_us, Ordering::Relaxed);
    }
}

/// Waits for 1..=64 send permits of one direction; `None` when it is time to stop.
async fn permits(sem: &Semaphore, clock: &Clock, sent: u64) -> Option<u64> {
    let room = clock.cap.map_or(64, |c| c.saturating_sub(sent).min(64));
    if room == 0 || Instant::now() >= clock.t1 {
        return None;
    }
    let p = tokio::time::timeout_at(clock.t1, sem.acquire())
        .await
        .ok()?
        .ok()?;
    p.forget();
    let mut n = 1;
    while n < room {
        match sem.try_acquire() {
            Ok(p) => {
                p.forget();
                n += 1;
            }
            Err(_) => break,
        }
    }
    Some(n)
}

/// What a WebSocket peer sends to its partner.
#[derive(Clone)]
enum Addr {
    Glare { origin: String, target: String },
    Peer { dst: String },
}

async fn ws_writer(
    mut sink: SplitSink<Ws, Message>,
    addr: Addr,
    sem: Arc<Semaphore>,
    clock: Arc<Clock>,
) -> SplitSink<Ws, Message> {
    let mut sent = 0u64;
    let mut r#ref = 0u64;
    while let Some(n) = permits(&sem, &clock, sent).await {
        for _ in 0..n {
            let t = clock.us(Instant::now());
            let frame = match &addr {
                Addr::Glare { origin, target } => {
                    r#ref += 1;
                    format!(
                        r#"{{"op":"send","ref":{ref},"origin":"{origin}","target":"{target}","message":{}}}"#,
                        message(t)
                    )
                }
                Addr::Peer { dst } => format!(
                    r#"{{"type":"CANDIDATE","dst":"{dst}","payload":{}}}"#,
                    message(t)
                ),
            };
            if sink.feed(Message::Text(frame.into())).await.is_err() {
                clock.errors.fetch_add(1, Ordering::Relaxed);
                return sink;
            }
        }
        sent += n;
        if sink.flush().await.is_err() {
            clock.errors.fetch_add(1, Ordering::Relaxed);
            return sink;
        }
    }
    sink
}

/// Reads one WebSocket peer's frames: deliveries return a permit to the partner's
/// direction; glare `error` frames count as errors.
async fn ws_reader(
    mut stream: SplitStream<Ws>,
    partner: Arc<Semaphore>,
    clock: Arc<Clock>,
) -> Vec<u32> {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut got = 0u64;
    while clock.cap.is_none_or(|c| got < c) {
        let frame = match tokio::time::timeout_at(clock.end, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let text = frame.as_str();
        if text.starts_with(r#"{"event":"ack""#) {
            continue;
        }
        match stamp(text) {
            Some(t) => {
                got += 1;
                clock.delivery(t, &mut lat);
                partner.add_permits(1);
            }
            None => {
                if clock.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("    unexpected frame: {}", &text[..text.len().min(200)]);
                }
            }
        }
    }
    lat
}

/// Sends over `POST /send` on one keep-alive connection.
async fn sse_writer(
    mut http: Http,
    path: String,
    origin: String,
    key: String,
    sem: Arc<Semaphore>,
    sent: Arc<AtomicU64>,
    clock: Arc<Clock>,
) {
    loop {
        let already = sent.load(Ordering::Relaxed);
        if clock.cap.is_some_and(|c| already >= c) || Instant::now() >= clock.t1 {
            return;
        }
        let Ok(Ok(p)) = tokio::time::timeout_at(clock.t1, sem.acquire()).await else {
            return;
        };
        p.forget();
        if clock
            .cap
            .is_some_and(|c| sent.fetch_add(1, Ordering::Relaxed) >= c)
        {
            return;
        }
        let body = format!(
            r#"{{"origin":"{origin}","key":"{key}","message":{}}}"#,
            message(clock.us(Instant::now()))
        );
        match post(&mut http, &path, body).await {
            Ok(200) => {}
            Ok(status) => {
                if clock.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("    POST {path} answered {status}");
                }
            }
            Err(e) => {
                clock.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("    POST {path}: {e}");
                return;
            }
        }
    }
}

async fn sse_reader(mut ch: SseChannel, partner: Arc<Semaphore>, clock: Arc<Clock>) -> Vec<u32> {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut got = 0u64;
    'outer: while clock.cap.is_none_or(|c| got < c) {
        while let Some(ev) = ch.decoder.poll_event() {
            let Ok(ev) = ev else { continue };
            if ev.event != "message" {
                continue;
            }
            if let Some(t) = stamp(&ev.data) {
                got += 1;
                clock.delivery(t, &mut lat);
                partner.add_permits(1);
            }
        }
        if clock.cap.is_some_and(|c| got >= c) {
            break 'outer;
        }
        match tokio::time::timeout_at(clock.end, ch.body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    ch.decoder.feed(&d);
                }
            }
            _ => break,
        }
    }
    lat
}

#[derive(Debug)]
struct Relay {
    mode: Mode,
    pairs: usize,
    window: usize,
    delivered: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu: f64,
    gen_cpu: f64,
    errors: u64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

async fn relay(mode: Mode, target: &Target, pairs: usize, args: &Args) -> Result<Relay> {
    let port_of = |i: usize| target.ports[i % target.ports.len()];
    let flows = pairs * 2;
    let window = (args.inflight / flows).clamp(1, 64);
    let cap = args.smoke.then_some(20u64);
    // Connect everything first (not timed).
    let mut ws_peers = Vec::new();
    let mut sse_peers = Vec::new();
    let mut writer_tasks = Vec::new();
    let sems: Vec<Arc<Semaphore>> = (0..flows)
        .map(|_| Arc::new(Semaphore::new(window)))
        .collect();
    match mode {
        Mode::GlareWs | Mode::Peer => {
            for i in 0..flows {
                ws_peers.push(match mode {
                    Mode::GlareWs => {
                        let (ws, cid, _) = glare_ws_open(port_of(i)).await?;
                        (ws, cid)
                    }
                    _ => {
                        let id = peer_id();
                        (peer_open(port_of(i), &id).await?, id)
                    }
                });
            }
        }
        Mode::GlareSse => {
            for i in 0..flows {
                sse_peers.push(glare_sse_open(port_of(i)).await?);
            }
            let auth: Vec<(String, String)> = sse_peers
                .iter()
                .map(|c| (c.cid.clone(), c.key.clone()))
                .collect();
            for i in 0..flows {
                let partner = i ^ 1;
                let sent = Arc::new(AtomicU64::new(0));
                for _ in 0..window {
                    let http = http_conn(port_of(i)).await?;
                    writer_tasks.push((
                        http,
                        format!("/send/{}", auth[partner].0),
                        auth[i].clone(),
                        Arc::clone(&sems[i]),
                        sent.clone(),
                    ));
                }
            }
        }
    }
    // The schedule starts once everything is connected.
    let clock = Arc::new({
        let warm = if args.smoke { 0.0 } else { 0.5 };
        let secs = if args.smoke { 5.0 } else { args.secs };
        let epoch = Instant::now() + Duration::from_millis(50);
        let t0 = epoch + Duration::from_secs_f64(warm);
        let t1 = t0 + Duration::from_secs_f64(secs);
        Clock {
            epoch,
            t0,
            t1,
            end: t1 + Duration::from_millis(500),
            cap,
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
        }
    });
    let mut lat_tasks: Vec<tokio::task::JoinHandle<Vec<u32>>> = Vec::new();
    let mut sinks = Vec::new();
    let ids: Vec<String> = ws_peers.iter().map(|(_, id)| id.clone()).collect();
    for (i, (ws, _)) in ws_peers.into_iter().enumerate() {
        let partner = i ^ 1;
        let (sink, stream) = ws.split();
        let addr = match mode {
            Mode::GlareWs => Addr::Glare {
                origin: ids[i].clone(),
                target: ids[partner].clone(),
            },
            _ => Addr::Peer {
                dst: ids[partner].clone(),
            },
        };
        lat_tasks.push(tokio::spawn(ws_reader(
            stream,
            Arc::clone(&sems[partner]),
            Arc::clone(&clock),
        )));
        sinks.push((sink, addr, Arc::clone(&sems[i])));
    }
    for (i, ch) in sse_peers.into_iter().enumerate() {
        lat_tasks.push(tokio::spawn(sse_reader(
            ch,
            Arc::clone(&sems[i ^ 1]),
            Arc::clone(&clock),
        )));
    }
    tokio::time::sleep_until(clock.epoch).await;
    let meter_at_t0 = {
        tokio::time::sleep_until(clock.t0).await;
        CpuMeter::start(&target.pids)
    };
    let mut writers = Vec::new();
    for (sink, addr, sem) in sinks {
        writers.push(tokio::spawn(ws_writer(sink, addr, sem, Arc::clone(&clock))));
    }
    let mut http_writers = Vec::new();
    for (http, path, (origin, key), sem, sent) in writer_tasks {
        http_writers.push(tokio::spawn(sse_writer(
            http,
            path,
            origin,
            key,
            sem,
            sent,
            Arc::clone(&clock),
        )));
    }
    let mut lat = Vec::new();
    if cap.is_some() {
        // Smoke: done when every reader has its messages (or at `end`).
        for t in lat_tasks.drain(..) {
            lat.extend(t.await?);
        }
    } else {
        tokio::time::sleep_until(clock.t1).await;
    }
    let (server_cpu, gen_cpu) = meter_at_t0.read();
    let mut sinks_back = Vec::new();
    for w in writers {
        sinks_back.push(w.await?);
    }
    for w in http_writers {
        w.await?;
    }
    for t in lat_tasks {
        lat.extend(t.await?);
    }
    drop(sinks_back);
    lat.sort_unstable();
    let delivered = clock.delivered.load(Ordering::Relaxed);
    let errors = clock.errors.load(Ordering::Relaxed);
    let span = if args.smoke {
        (clock.last_delivery_us.load(Ordering::Relaxed) as f64 / 1e6
            - clock.t0.duration_since(clock.epoch).as_secs_f64())
        .max(1e-3)
    } else {
        clock.t1.duration_since(clock.t0).as_secs_f64()
    };
    if let Some(c) = cap {
        let want = c * flows as u64;
        if delivered != want || errors != 0 {
            bail!(
                "{} with {pairs} pairs: {delivered} of {want} messages delivered, {errors} errors",
                mode.label()
            );
        }
    }
    Ok(Relay {
        mode,
        pairs,
        window,
        delivered,
        rate: delivered as f64 / span,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        server_cpu,
        gen_cpu,
        errors,
    })
}

// ---------------------------------------------------------------------------------------
// Idle peers and opens
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Idle {
    kind: Kind,
    n: usize,
    before_kib: u64,
    after_kib: u64,
}

impl Idle {
    fn per_peer_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.n.max(1) as f64
    }
}

/// Opens `n` idle peers (glare: a WebSocket channel with one session each).
async fn idle(kind: Kind, server: &Server, n: usize) -> Result<(Idle, Vec<Ws>)> {
    idle_on(kind, server.port, &[server.pid], n).await
}

/// [`idle`] against a port, with the RSS summed over `pids`.
async fn idle_on(kind: Kind, port: u16, pids: &[u32], n: usize) -> Result<(Idle, Vec<Ws>)> {
    let rss = || pids.iter().map(|&p| rss_kib(p)).sum::<u64>();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = rss();
    let tasks = 32.min(n.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let next = Arc::clone(&next);
        handles.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut http = match kind {
                Kind::Glare => Some(http_conn(port).await?),
                Kind::Peer => None,
            };
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match (kind, http.as_mut()) {
                    (Kind::Glare, Some(http)) => {
                        let (ws, cid, key) = glare_ws_open(port).await?;
                        let status = post(
                            http,
                            "/session",
                            format!(r#"{{"cid":"{cid}","key":"{key}","tags":["idle"]}}"#),
                        )
                        .await?;
                        if status != 201 {
                            bail!("POST /session answered {status}");
                        }
                        held.push(ws);
                    }
                    _ => held.push(peer_open(port, &peer_id()).await?),
                }
            }
            Ok::<_, anyhow::Error>(held)
        }));
    }
    let mut held = Vec::new();
    for h in handles {
        held.extend(h.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kib = rss();
    // The caller stops the server before it drops these sockets.
    Ok((
        Idle {
            kind,
            n: held.len(),
            before_kib,
            after_kib,
        },
        held,
    ))
}

#[derive(Debug)]
struct Opens {
    mode: Mode,
    n: usize,
    rate: f64,
    server_cpu: f64,
    gen_cpu: f64,
}

async fn opens(mode: Mode, server: &Server, n: usize) -> Result<Opens> {
    let port = server.port;
    let next = Arc::new(AtomicUsize::new(0));
    let meter = CpuMeter::start(&[server.pid]);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..32.min(n.max(1)) {
        let next = Arc::clone(&next);
        handles.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match mode {
                    Mode::GlareWs => drop(glare_ws_open(port).await?),
                    Mode::GlareSse => drop(glare_sse_open(port).await?),
                    Mode::Peer => drop(peer_open(port, &peer_id()).await?),
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let (server_cpu, gen_cpu) = meter.read();
    Ok(Opens {
        mode,
        n,
        rate: n as f64 / secs,
        server_cpu,
        gen_cpu,
    })
}

// ---------------------------------------------------------------------------------------
// The run and the report
// ---------------------------------------------------------------------------------------

async fn run(args: &Args) -> Result<String> {
    let part = |p: &str| args.parts.iter().any(|x| x == p);
    let mut relays = Vec::new();
    for kind in [Kind::Glare, Kind::Peer] {
        if !part("relay") {
            break;
        }
        let modes: &[Mode] = match kind {
            Kind::Glare => &[Mode::GlareWs, Mode::GlareSse],
            Kind::Peer => &[Mode::Peer],
        };
        let server = Server::start(kind, args).await?;
        for &pairs in &args.pairs {
            for &mode in modes {
                eprintln!("relay: {} with {pairs} pairs", mode.label());
                let r = relay(mode, &Target::from(&server), pairs, args).await?;
                eprintln!(
                    "    {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0}%, generator CPU {:.0}%",
                    r.rate, r.p50_ms, r.p99_ms, r.server_cpu, r.gen_cpu
                );
                relays.push(r);
            }
        }
        server.stop().await;
    }
    let mut idles = Vec::new();
    for kind in [Kind::Glare, Kind::Peer] {
        if !part("idle") {
            break;
        }
        eprintln!("idle: {} {kind:?} peers", args.idle);
        let server = Server::start(kind, args).await?;
        let r = idle(kind, &server, args.idle).await;
        server.stop().await;
        let (r, held) = r?;
        drop(held);
        eprintln!("    {:.2} KiB per peer", r.per_peer_kib());
        idles.push(r);
    }
    let mut open_runs = Vec::new();
    for mode in [Mode::GlareWs, Mode::GlareSse, Mode::Peer] {
        if !part("opens") {
            break;
        }
        eprintln!("opens: {} {}", args.opens, mode.label());
        let server = Server::start(mode.kind(), args).await?;
        let r = opens(mode, &server, args.opens).await;
        server.stop().await;
        let r = r?;
        eprintln!("    {:.0} opens/s", r.rate);
        open_runs.push(r);
    }
    let cluster_runs = match (&args.node, part("cluster")) {
        (Some(node), true) => Some(cluster(args, node).await?),
        _ => None,
    };
    let mut out = report(args, &relays, &idles, &open_runs);
    if let Some(c) = cluster_runs {
        out.push_str(&cluster_report(args, &c));
    }
    Ok(out)
}

/// One relay of the `cluster` part.
#[derive(Debug)]
struct ClusterRow {
    setup: String,
    nodes: usize,
    relay: Relay,
}

/// Idle channels on one node, with Redis's share when there is one.
#[derive(Debug)]
struct ClusterIdle {
    setup: &'static str,
    idle: Idle,
    redis_kib: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Cluster {
    rows: Vec<ClusterRow>,
    idles: Vec<ClusterIdle>,
}

async fn cluster(args: &Args, node: &Path) -> Result<Cluster> {
    let mut c = Cluster::default();
    let report = |r: &Relay| {
        eprintln!(
            "    {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0}%, generator CPU {:.0}%",
            r.rate, r.p50_ms, r.p99_ms, r.server_cpu, r.gen_cpu
        );
    };
    for &pairs in &args.pairs {
        let mut singles = vec![("in-memory node", node)];
        if let Some(b) = &args.baseline_node {
            singles.push(("in-memory node (baseline build)", b.as_path()));
        }
        for (setup, bin) in singles {
            eprintln!("cluster: {setup}, WebSocket, {pairs} pairs");
            let s = Server::start_node(bin, None).await?;
            let r = relay(Mode::GlareWs, &Target::from(&s), pairs, args).await;
            s.stop().await;
            let r = r?;
            report(&r);
            c.rows.push(ClusterRow {
                setup: setup.to_owned(),
                nodes: 1,
                relay: r,
            });
        }
        for &n in &args.cluster_nodes {
            eprintln!("cluster: {n} node(s) on Redis, WebSocket, {pairs} pairs");
            let redis = RedisProc::start(&args.redis_server).await?;
            let mut nodes = Vec::new();
            for _ in 0..n {
                nodes.push(Server::start_node(node, Some(&redis)).await?);
            }
            let target = Target {
                ports: nodes.iter().map(|s| s.port).collect(),
                pids: nodes
                    .iter()
                    .map(|s| s.pid)
                    .chain(std::iter::once(redis.pid))
                    .collect(),
            };
            let r = relay(Mode::GlareWs, &target, pairs, args).await;
            for s in nodes {
                s.stop().await;
            }
            redis.stop().await;
            let r = r?;
            report(&r);
            c.rows.push(ClusterRow {
                setup: "Redis".to_owned(),
                nodes: n,
                relay: r,
            });
        }
    }
    if args.parts.iter().any(|p| p == "idle") {
        eprintln!("cluster idle: {} channels on an in-memory node", args.idle);
        let s = Server::start_node(node, None).await?;
        let r = idle_on(Kind::Glare, s.port, &[s.pid], args.idle).await;
        s.stop().await;
        let (idle, held) = r?;
        drop(held);
        eprintln!("    {:.2} KiB per channel", idle.per_peer_kib());
        c.idles.push(ClusterIdle {
            setup: "in-memory node",
            idle,
            redis_kib: None,
        });
        eprintln!("cluster idle: {} channels on a node on Redis", args.idle);
        let redis = RedisProc::start(&args.redis_server).await?;
        let s = Server::start_node(node, Some(&redis)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let redis_before = rss_kib(redis.pid);
        let r = idle_on(Kind::Glare, s.port, &[s.pid], args.idle).await;
        let redis_after = rss_kib(redis.pid);
        s.stop().await;
        redis.stop().await;
        let (idle, held) = r?;
        drop(held);
        eprintln!(
            "    node {:.2} KiB + Redis {:.2} KiB per channel",
            idle.per_peer_kib(),
            redis_after.saturating_sub(redis_before) as f64 / idle.n.max(1) as f64
        );
        c.idles.push(ClusterIdle {
            setup: "node on Redis",
            idle,
            redis_kib: Some((redis_before, redis_after)),
        });
    }
    Ok(c)
}

fn cluster_report(args: &Args, c: &Cluster) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n### Several nodes on one Redis\n\nThe WebSocket relay above, on `glare-broker-node` processes: one in-memory node, then 1, 2 and 3 nodes sharing one `redis-server` (no persistence); with several nodes each pair's two peers are on different nodes, so every message crosses nodes (a Lua script on Redis numbers, buffers and publishes it to the home node's inbox). Same load, same run. Server CPU is the nodes' plus Redis's, % of one core{}.\n",
        if args.smoke { " (**smoke run**)" } else { "" }
    );
    let _ = writeln!(
        o,
        "| pairs | setup | nodes | window | messages | msgs/s | p50 ms | p99 ms | server CPU | generator CPU | errors | rate ÷ in-memory |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &c.rows {
        let r = &row.relay;
        let base = c
            .rows
            .iter()
            .find(|x| x.setup == "in-memory node" && x.relay.pairs == r.pairs)
            .map_or(f64::NAN, |x| r.rate / x.relay.rate);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0}% | {} | {:.2}× |",
            r.pairs,
            row.setup,
            row.nodes,
            r.window,
            r.delivered,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            r.server_cpu,
            r.gen_cpu,
            r.errors,
            base
        );
    }
    if !c.idles.is_empty() {
        let _ = writeln!(
            o,
            "\nIdle channels (a WebSocket channel with one session each), RSS growth ÷ channels:\n"
        );
        let _ = writeln!(
            o,
            "| setup | channels | node RSS before → after | node per channel | Redis RSS before → after | Redis per channel | total per channel |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
        for i in &c.idles {
            let n = i.idle.n.max(1) as f64;
            let (redis_txt, redis_per) = match i.redis_kib {
                Some((b, a)) => (format!("{b} → {a} KiB"), a.saturating_sub(b) as f64 / n),
                None => ("–".to_owned(), 0.0),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} → {} KiB | {:.2} KiB | {} | {:.2} KiB | {:.2} KiB |",
                i.setup,
                i.idle.n,
                i.idle.before_kib,
                i.idle.after_kib,
                i.idle.per_peer_kib(),
                redis_txt,
                redis_per,
                i.idle.per_peer_kib() + redis_per
            );
        }
    }
    o
}

fn report(args: &Args, relays: &[Relay], idles: &[Idle], opens: &[Opens]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Relay: each pair's two peers send ~100-byte JSON messages to each other (delivered frames ~200 bytes), {} messages in flight in total (window per direction in the table); latency from send to delivery; {} s measured after 0.5 s of warm-up{}. CPU is % of one core over the measured span.\n",
        args.inflight,
        args.secs,
        if args.smoke {
            " (**smoke run: 20 messages per direction, numbers are not meaningful**)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "| pairs | server, transport | window | messages | msgs/s | p50 ms | p99 ms | server CPU | generator CPU | errors |"
    );
    let _ = writeln!(o, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in relays {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0}% | {} |",
            r.pairs,
            r.mode.label(),
            r.window,
            r.delivered,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            r.server_cpu,
            r.gen_cpu,
            r.errors
        );
    }
    let _ = writeln!(o);
    let find = |m: Mode, p: usize| relays.iter().find(|r| r.mode == m && r.pairs == p);
    let _ = writeln!(
        o,
        "| pairs | WS ÷ PeerServer rate | WS ÷ PeerServer p99 | SSE+POST ÷ PeerServer rate | SSE+POST ÷ PeerServer p99 |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|");
    for &p in &args.pairs {
        if let (Some(ws), Some(sse), Some(peer)) = (
            find(Mode::GlareWs, p),
            find(Mode::GlareSse, p),
            find(Mode::Peer, p),
        ) {
            let _ = writeln!(
                o,
                "| {p} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                ws.rate / peer.rate,
                ws.p99_ms / peer.p99_ms,
                sse.rate / peer.rate,
                sse.p99_ms / peer.p99_ms
            );
        }
    }
    let _ = writeln!(
        o,
        "\nIdle cost: RSS growth of a fresh server holding N idle peers (glare: a channel on a WebSocket with one session each; PeerServer: a peer on a WebSocket), ÷ N.\n"
    );
    let _ = writeln!(
        o,
        "| server | idle peers | RSS before | RSS after | per peer |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for i in idles {
        let _ = writeln!(
            o,
            "| {} | {} | {} KiB | {} KiB | {:.2} KiB |",
            match i.kind {
                Kind::Glare => "glare",
                Kind::Peer => "PeerServer",
            },
            i.n,
            i.before_kib,
            i.after_kib,
            i.per_peer_kib()
        );
    }
    let _ = writeln!(
        o,
        "\nOpens: new connections (TCP + upgrade or GET) that reach the server's first frame (glare `channel`, PeerServer `OPEN`), 32 at a time, closed right after.\n"
    );
    let _ = writeln!(
        o,
        "| server, transport | opens | opens/s | server CPU | generator CPU |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for r in opens {
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.0}% | {:.0}% |",
            r.mode.label(),
            r.n,
            r.rate,
            r.server_cpu,
            r.gen_cpu
        );
    }
    // Aims of issue 3.
    let _ = writeln!(o, "\n| aim | glare | PeerServer | ratio | met |");
    let _ = writeln!(o, "|---|---:|---:|---:|:---:|");
    let yes = |b: bool| if b { "yes" } else { "no" };
    let top = args.pairs.iter().copied().max().unwrap_or(1);
    if let (Some(ws), Some(peer)) = (find(Mode::GlareWs, top), find(Mode::Peer, top)) {
        let ratio = ws.rate / peer.rate;
        let _ = writeln!(
            o,
            "| WS relay ≥ 1.5× PeerServer at {top} pairs | {:.0}/s | {:.0}/s | {ratio:.2}× | {} |",
            ws.rate,
            peer.rate,
            yes(ratio >= 1.5)
        );
        let _ = writeln!(
            o,
            "| WS p99 below PeerServer's at {top} pairs | {:.2} ms | {:.2} ms | {:.2}× | {} |",
            ws.p99_ms,
            peer.p99_ms,
            ws.p99_ms / peer.p99_ms,
            yes(ws.p99_ms < peer.p99_ms)
        );
    }
    if let [g, p] = idles {
        let ratio = g.per_peer_kib() / p.per_peer_kib();
        let _ = writeln!(
            o,
            "| idle cost ≤ ½ PeerServer's per peer | {:.2} KiB | {:.2} KiB | {ratio:.2}× | {} |",
            g.per_peer_kib(),
            p.per_peer_kib(),
            yes(ratio <= 0.5)
        );
    }
    if let (Some(g), Some(p)) = (
        opens.iter().find(|r| r.mode == Mode::GlareWs),
        opens.iter().find(|r| r.mode == Mode::Peer),
    ) {
        let ratio = g.rate / p.rate;
        let _ = writeln!(
            o,
            "| channel opens/s above PeerServer's connections/s | {:.0}/s | {:.0}/s | {ratio:.2}× | {} |",
            g.rate,
            p.rate,
            yes(ratio > 1.0)
        );
    }
    o
}
