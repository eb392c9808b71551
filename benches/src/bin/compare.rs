//! glare's side of the comparison bench (`cargo xtask bench`): the same rows as
//! `interop/bench.mjs` for the other stacks, printed as the same JSON lines with
//! `"stack":"glare"`.
//!
//! ```text
//! compare [--rows setup,throughput,aggregate,memory] [--runs 100] [--bytes 268435456]
//!         [--connections 10] [--memory-connections 100] [--send-buffer BYTES]
//!         [--workers 2]
//! ```
//!
//! Rows beyond the four of bench.mjs (glare only):
//!
//! - `throughput2p`: the throughput row between two processes (this one sends and
//!   offers; a child `compare --serve` answers and receives), signals over the child's
//!   stdin/stdout; first send to the child's report of the last byte.
//! - `setup-parallel`: `--connections` links dialed at the same moment between two
//!   sockets, repeated until at least `--runs` setups; median and p99 of each link's
//!   dial-to-open time (the scaling table's setup column).
//! - `datagram-cost`: the CPU time per datagram of a `--bytes` transfer (16 KiB
//!   messages, one reliable ordered channel) through two glare-udp drivers on
//!   loopback (socket syscalls, demux, str0m, delivery to the channel's queue; GSO
//!   and GRO on, then off), against two bare `glare_rtc::Connection`s handing their
//!   datagrams over in memory (str0m and glare-rtc alone); both sides of the
//!   transfer in this process, CPU = user + system time of the process.
//!
//! Every link is a real `glare::Connection` (glare-rtc over str0m) served by real
//! glare-udp drivers on loopback UDP: one socket per side, signals carried directly in
//! process (no broker). Definitions (as interop/bench.mjs):
//!
//! - setup: from the offer (dial) to the offerer's channel open; sequential runs, a new
//!   pair of endpoints each; median and p99.
//! - throughput: one reliable ordered channel, `--bytes` in 16 KiB messages, first send
//!   to last byte received.
//! - aggregate: `--connections` links connected first, then all send `bytes / N` at once;
//!   total bytes over wall time.
//! - memory: RSS delta after `--memory-connections` connected links (both ends in this
//!   process) with an open channel, divided by the link count (`bytes_per_endpoint`:
//!   divided by twice the link count, i.e. per `Connection`).
//!
//! `--send-buffer` sets `Config::sctp_send_buffer` on every link (default: glare's);
//! `--workers` the tokio worker threads of each process (default 2).
//!
//! With more than one row, each row runs in a fresh child process (as bench.mjs does),
//! so one row's allocations do not hide in the next row's RSS.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use glare::transport::{Endpoint, Signals};
use glare::{ChannelOptions, Config, Connection, DataChannel, Message};
use glare_proto::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Message size of the transfer rows.
const MSG: usize = 16 * 1024;
/// Most links the aggregate and memory rows make (one loopback address each, from
/// 127.0.0.10 up).
const MAX_LINKS: usize = 4000;
/// Limit on one link's setup.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// Limit on one row.
const ROW_LIMIT: Duration = Duration::from_secs(1200);

struct Options {
    rows: Vec<String>,
    runs: usize,
    bytes: usize,
    connections: usize,
    memory_connections: usize,
    /// SCTP send buffer per link (`None`: glare's default).
    send_buffer: Option<usize>,
    /// tokio worker threads of each process.
    workers: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        rows: ["setup", "throughput", "aggregate", "memory"]
            .map(String::from)
            .to_vec(),
        runs: 100,
        bytes: 256 << 20,
        connections: 10,
        memory_connections: 100,
        send_buffer: None,
        workers: 2,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        let mut number = |max: usize| -> Result<usize> {
            let v = value()?;
            let n: usize = v
                .parse()
                .with_context(|| format!("{a} {v}: not a number"))?;
            if n == 0 || n > max {
                bail!("{a} {n}: must be 1..={max}");
            }
            Ok(n)
        };
        match a.as_str() {
            "--rows" => {
                o.rows = value()?.split(',').map(String::from).collect();
            }
            "--runs" => o.runs = number(100_000)?,
            "--bytes" => o.bytes = number(1 << 40)?,
            "--connections" => o.connections = number(MAX_LINKS)?,
            "--memory-connections" => o.memory_connections = number(MAX_LINKS)?,
            "--send-buffer" => o.send_buffer = Some(number(64 << 20)?),
            "--workers" => o.workers = number(64)?,
            "--serve" => o.rows = vec!["serve".into()],
            other => bail!(
                "unknown argument `{other}` (usage: compare [--rows setup,throughput,aggregate,memory] \
                 [--runs N] [--bytes N] [--connections N] [--memory-connections N] \
                 [--send-buffer BYTES] [--workers N])"
            ),
        }
    }
    Ok(o)
}

fn out(row: &str, fields: Value) {
    let mut o = json!({ "stack": "glare", "row": row });
    if let (Some(o), Value::Object(f)) = (o.as_object_mut(), fields) {
        o.extend(f);
    }
    println!("{o}");
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = parse(&args)?;
    if opt.rows.len() > 1 {
        // One child per row, with the same flags.
        let exe = std::env::current_exe().context("finding this executable")?;
        let rest: Vec<&String> = args
            .iter()
            .enumerate()
            .filter(|(i, a)| *a != "--rows" && (*i == 0 || args[i - 1] != "--rows"))
            .map(|(_, a)| a)
            .collect();
        for row in &opt.rows {
            let status = Command::new(&exe)
                .args(&rest)
                .args(["--rows", row])
                .status()
                .with_context(|| format!("running row {row}"))?;
            if !status.success() {
                out(
                    row,
                    json!({ "error": format!("row process failed: {status}") }),
                );
            }
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opt.workers)
        .enable_all()
        .build()
        .context("starting tokio")?;
    let row = opt.rows[0].clone();
    if row == "serve" {
        let r = rt.block_on(serve(&opt));
        rt.shutdown_timeout(Duration::from_secs(2));
        return r;
    }
    let result = rt.block_on(async {
        match tokio::time::timeout(ROW_LIMIT, run_row(&row, &opt)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("row took over {ROW_LIMIT:?}")),
        }
    });
    match result {
        Ok(fields) => out(&row, fields),
        Err(e) => out(&row, json!({ "error": format!("{e:#}") })),
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

async fn run_row(row: &str, opt: &Options) -> Result<Value> {
    match row {
        "setup" => setup(opt).await,
        "setup-parallel" => setup_parallel(opt).await,
        "throughput" => throughput(opt).await,
        "throughput2p" => throughput_2p(opt).await,
        "aggregate" => aggregate(opt).await,
        "memory" => memory(opt).await,
        "datagram-cost" => datagram_cost(opt).await,
        other => bail!("unknown row `{other}`"),
    }
}

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

/// A connected link with one open reliable ordered channel.
struct Pair {
    a: Connection,
    b: Connection,
    ch_a: DataChannel,
    ch_b: DataChannel,
    /// Dial to the offerer's channel open.
    elapsed: Duration,
}

impl Pair {
    async fn close(self) {
        self.a.close("done").await;
        self.b.close("done").await;
    }
}

/// Makes a link from `a` (offering `host`, or all its host candidates) to `b`.
async fn connect(a: &Endpoint, host: Option<SocketAddr>, b: &Endpoint) -> Result<Pair> {
    let (ca, sa) = match host {
        Some(h) => a.connection_from(&[h]).await?,
        None => a.connection().await?,
    };
    let (cb, sb) = b.connection().await?;
    pump(sa, cb.clone());
    pump(sb, ca.clone());
    let work = async {
        let started = Instant::now();
        let ch_a = ca.open_channel("bench", ChannelOptions::default()).await?;
        ca.dial().await?;
        ch_a.opened().await?;
        let elapsed = started.elapsed();
        let ch_b = cb
            .accept_channel()
            .await
            .context("the answerer saw no channel")?;
        anyhow::Ok((ch_a, ch_b, elapsed))
    };
    let (ch_a, ch_b, elapsed) = tokio::time::timeout(SETUP_LIMIT, work)
        .await
        .context("link setup timed out")??;
    Ok(Pair {
        a: ca,
        b: cb,
        ch_a,
        ch_b,
        elapsed,
    })
}

/// The loopback configuration with this run's options.
fn config(opt: &Options) -> Config {
    let mut c = Config::loopback();
    if let Some(b) = opt.send_buffer {
        c.sctp_send_buffer = b;
    }
    c
}

/// Two loopback endpoints, one socket each.
async fn endpoints(opt: &Options) -> Result<(Endpoint, Endpoint)> {
    Ok((
        Endpoint::bind(config(opt)).await?,
        Endpoint::bind(config(opt)).await?,
    ))
}

/// A wildcard socket on `lo` (link i offers 127.0.0.10 + i, so links between the
/// same two sockets have distinct address pairs) and a plain loopback one.
async fn many_endpoints(opt: &Options) -> Result<(Endpoint, Endpoint)> {
    let mut wild = config(opt);
    wild.bind = SocketAddr::from(([0, 0, 0, 0], 0));
    wild.udp.socket.bind_device = Some("lo".into());
    let a = Endpoint::bind(wild)
        .await
        .context("a wildcard socket bound to lo (Linux, CAP_NET_RAW)")?;
    Ok((a, Endpoint::bind(config(opt)).await?))
}

/// Link `i`'s address on the wildcard socket: 127.0.0.10 + i (all of 127/8 is
/// loopback on Linux; `i` < `MAX_LINKS`).
fn link_addr(a: &Endpoint, i: usize) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 10));
    let offset = u32::try_from(i.min(MAX_LINKS)).unwrap_or(0);
    SocketAddr::from((Ipv4Addr::from(base + offset), a.local_addr().port()))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    // Same rank rule as bench.mjs: ceil(q * n) - 1, clamped.
    let rank = ((q * sorted.len() as f64).ceil() as usize).saturating_sub(1);
    sorted[rank.min(sorted.len() - 1)]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn setup(opt: &Options) -> Result<Value> {
    let runs = opt.runs;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (ea, eb) = endpoints(opt).await?;
        let pair = connect(&ea, None, &eb).await?;
        times.push(pair.elapsed.as_secs_f64() * 1000.0);
        pair.close().await;
        ea.shutdown().await;
        eb.shutdown().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "runs": times.len(),
        "median_ms": round2(percentile(&times, 0.5)),
        "p99_ms": round2(percentile(&times, 0.99)),
        "min_ms": round2(times[0]),
        "max_ms": round2(times[times.len() - 1]),
    }))
}

/// Sends `bytes` (whole 16 KiB messages, the last one shorter if need be) from `a`
/// to `b`; returns once `b` has them all.
async fn transfer(ch_a: &DataChannel, ch_b: &mut DataChannel, bytes: usize) -> Result<()> {
    let sender = ch_a.sender();
    let chunk = Bytes::from(vec![0x5a_u8; MSG]);
    let send = async move {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(MSG);
            sender.send(chunk.slice(..n)).await?;
            left -= n;
        }
        anyhow::Ok(())
    };
    let recv = async {
        let mut got = 0;
        while got < bytes {
            match ch_b.recv().await {
                Some(Message::Binary(b)) => got += b.len(),
                Some(Message::Text(_)) => bail!("a text message on a binary transfer"),
                None => bail!("channel closed after {got} of {bytes} bytes"),
            }
        }
        anyhow::Ok(())
    };
    tokio::try_join!(send, recv)?;
    Ok(())
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    round2(bytes as f64 * 8.0 / secs / 1e6)
}

async fn throughput(opt: &Options) -> Result<Value> {
    let bytes = opt.bytes;
    let (ea, eb) = endpoints(opt).await?;
    let mut pair = connect(&ea, None, &eb).await?;
    let started = Instant::now();
    transfer(&pair.ch_a, &mut pair.ch_b, bytes).await?;
    let secs = started.elapsed().as_secs_f64();
    pair.close().await;
    Ok(json!({
        "bytes": bytes,
        "message_bytes": MSG,
        "secs": (secs * 1000.0).round() / 1000.0,
        "mbps": mbps(bytes, secs),
    }))
}

async fn aggregate(opt: &Options) -> Result<Value> {
    let (connections, bytes) = (opt.connections, opt.bytes);
    let (ea, eb) = many_endpoints(opt).await?;
    let mut pairs = Vec::with_capacity(connections);
    for i in 0..connections {
        pairs.push(connect(&ea, Some(link_addr(&ea, i)), &eb).await?);
    }
    let each = bytes / connections / MSG * MSG;
    if each == 0 {
        bail!("--bytes {bytes} is less than one 16 KiB message per connection");
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for mut p in pairs {
        tasks.push(tokio::spawn(async move {
            let r = transfer(&p.ch_a, &mut p.ch_b, each).await;
            (p, r)
        }));
    }
    let mut done = Vec::with_capacity(connections);
    for t in tasks {
        let (p, r) = t.await.context("a transfer task panicked")?;
        r?;
        done.push(p);
    }
    let secs = started.elapsed().as_secs_f64();
    for p in done {
        p.close().await;
    }
    let total = each * connections;
    Ok(json!({
        "connections": connections,
        "bytes": total,
        "secs": (secs * 1000.0).round() / 1000.0,
        "mbps": mbps(total, secs),
    }))
}

/// Resident set size of this process, from /proc/self/statm.
fn rss() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("/proc/self/statm has no resident field")?
        .parse()
        .context("/proc/self/statm resident field")?;
    // The page size is 4 KiB on the machines this runs on (x86-64, aarch64 default).
    Ok(pages * 4096)
}

async fn memory(opt: &Options) -> Result<Value> {
    let connections = opt.memory_connections;
    let (ea, eb) = many_endpoints(opt).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss()?;
    let mut pairs = Vec::with_capacity(connections);
    for i in 0..connections {
        pairs.push(connect(&ea, Some(link_addr(&ea, i)), &eb).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss()?;
    let per = (after as f64 - before as f64) / connections as f64;
    for p in pairs {
        p.close().await;
    }
    Ok(json!({
        "connections": connections,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_connection": per.round() as i64,
        "bytes_per_endpoint": (per / 2.0).round() as i64,
    }))
}

/// `--connections` links dialed at once, in rounds until `--runs` setups are timed.
async fn setup_parallel(opt: &Options) -> Result<Value> {
    let n = opt.connections;
    let rounds = opt.runs.div_ceil(n).max(1);
    let mut times = Vec::with_capacity(rounds * n);
    let mut walls = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (ea, eb) = many_endpoints(opt).await?;
        let started = Instant::now();
        let links = futures_util::future::try_join_all(
            (0..n).map(|i| connect(&ea, Some(link_addr(&ea, i)), &eb)),
        )
        .await?;
        walls.push(started.elapsed().as_secs_f64() * 1000.0);
        for p in links {
            times.push(p.elapsed.as_secs_f64() * 1000.0);
            p.close().await;
        }
        ea.shutdown().await;
        eb.shutdown().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    times.sort_by(f64::total_cmp);
    walls.sort_by(f64::total_cmp);
    Ok(json!({
        "connections": n,
        "runs": times.len(),
        "median_ms": round2(percentile(&times, 0.5)),
        "p99_ms": round2(percentile(&times, 0.99)),
        "min_ms": round2(times[0]),
        "max_ms": round2(times[times.len() - 1]),
        "all_open_median_ms": round2(percentile(&walls, 0.5)),
    }))
}

/// The child of `throughput2p`: answers the link the parent dials (signals as
/// `signal <json>` lines on stdout, the parent's on stdin), receives `--bytes` on
/// the first channel, prints `done <bytes>`, and stays until stdin closes.
async fn serve(opt: &Options) -> Result<()> {
    let eb = Endpoint::bind(config(opt)).await?;
    let (cb, mut sb) = eb.connection().await?;
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(s) = sb.next().await {
            let line = format!("signal {}\n", s.encode());
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let conn = cb.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(json) = line.strip_prefix("signal ") else {
                continue;
            };
            let signal = Signal::decode(json.as_bytes()).context("a signal from the parent")?;
            if conn.handle_signal(signal).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    let mut ch = tokio::time::timeout(SETUP_LIMIT, cb.accept_channel())
        .await
        .context("no channel from the parent in time")?
        .context("the link ended before a channel opened")?;
    let mut got = 0;
    while got < opt.bytes {
        match ch.recv().await {
            Some(m) => got += m.len(),
            None => bail!("channel closed after {got} of {} bytes", opt.bytes),
        }
    }
    println!("done {got}");
    // Until the parent is finished with us (it closes our stdin).
    let _ = reader.await;
    cb.close("done").await;
    printer.abort();
    eb.shutdown().await;
    Ok(())
}

/// Throughput between two processes: this one dials and sends, `compare --serve`
/// receives.
async fn throughput_2p(opt: &Options) -> Result<Value> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--serve", "--bytes", &opt.bytes.to_string()]);
    cmd.args(["--workers", &opt.workers.to_string()]);
    if let Some(b) = opt.send_buffer {
        cmd.args(["--send-buffer", &b.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `compare --serve`")?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let ea = Endpoint::bind(config(opt)).await?;
    let (ca, mut sa) = ea.connection().await?;
    // Our signals to the child.
    let to_child = tokio::spawn(async move {
        while let Some(s) = sa.next().await {
            let line = format!("signal {}\n", s.encode());
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        // Dropping stdin tells the child we are done.
    });
    // The child's signals to us, and its `done`.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<usize>>();
    let conn = ca.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut done_tx = Some(done_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix("signal ") {
                match Signal::decode(json.as_bytes()) {
                    Ok(s) => {
                        let _ = conn.handle_signal(s).await;
                    }
                    Err(e) => eprintln!("compare: bad signal from the child: {e}"),
                }
            } else if let Some(n) = line.strip_prefix("done ")
                && let Some(tx) = done_tx.take()
            {
                let _ = tx.send(n.trim().parse().context("the child's byte count"));
            }
        }
    });
    let started = Instant::now();
    let ch = tokio::time::timeout(SETUP_LIMIT, async {
        let ch = ca.open_channel("bench", ChannelOptions::default()).await?;
        ca.dial().await?;
        ch.opened().await?;
        anyhow::Ok(ch)
    })
    .await
    .context("link setup timed out")??;
    let setup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let sender = ch.sender();
    let chunk = Bytes::from(vec![0x5a_u8; MSG]);
    let mut left = opt.bytes;
    while left > 0 {
        let n = left.min(MSG);
        sender.send(chunk.slice(..n)).await?;
        left -= n;
    }
    let got = done_rx
        .await
        .context("the child ended without reporting")??;
    let secs = started.elapsed().as_secs_f64();
    if got < opt.bytes {
        bail!("the child received {got} of {} bytes", opt.bytes);
    }
    ca.close("done").await;
    to_child.abort();
    drop(ch);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    ea.shutdown().await;
    Ok(json!({
        "bytes": opt.bytes,
        "message_bytes": MSG,
        "processes": 2,
        "setup_ms": round2(setup_ms),
        "secs": (secs * 1000.0).round() / 1000.0,
        "mbps": mbps(opt.bytes, secs),
    }))
}

/// User + system CPU time of this process so far, from /proc/self/stat (clock ticks
/// of 10 ms).
fn cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("/proc/self/stat: no command name")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks = |i: usize| -> Result<u64> {
        f.get(i)
            .context("/proc/self/stat too short")?
            .parse()
            .context("/proc/self/stat: not a number")
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// A `bytes` transfer between two bare glare-rtc connections in memory (this
/// thread): (CPU time, datagrams, wall time).
fn in_memory_transfer(opt: &Options) -> Result<(Duration, u64, Duration)> {
    use glare_rtc::{Event, Output};
    let start = Instant::now();
    let addrs: [SocketAddr; 2] = [
        SocketAddr::from(([127, 0, 0, 1], 1000)),
        SocketAddr::from(([127, 0, 0, 2], 2000)),
    ];
    // The facade's settings, so both runs have the same SCTP limits.
    let facade = config(opt);
    let rtc_config = |seed| {
        let mut c = glare_rtc::Config::with_seed(seed);
        c.sctp_max_buffered_amount = facade.sctp_send_buffer;
        c.buffered_amount_low_threshold = facade.buffered_amount_low;
        c
    };
    let mut peers = [
        glare_rtc::Connection::new(start, rtc_config(1)),
        glare_rtc::Connection::new(start, rtc_config(2)),
    ];
    for (p, a) in peers.iter_mut().zip(addrs) {
        p.add_local_candidate(a)?;
    }
    let h = peers[0].open_channel("bulk", &ChannelOptions::default())?;
    peers[0].dial(start)?;
    let message = vec![0x5a_u8; MSG];
    let total = opt.bytes as u64;
    let mut wire: [std::collections::VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>; 2] =
        Default::default();
    let (mut open, mut sent, mut received, mut datagrams) = (false, 0_u64, 0_u64, 0_u64);
    let mut measured: Option<(Duration, Instant, u64)> = None;
    // The time handed to the connections never goes backwards (a timeout may be fed
    // up to 1 ms ahead of the real clock).
    let mut clock = start;
    while received < total {
        let now = Instant::now().max(clock);
        clock = now;
        if now - start > ROW_LIMIT {
            bail!("in-memory transfer stuck at {received} of {total} bytes");
        }
        if open {
            while sent < total {
                let n = (total - sent).min(MSG as u64) as usize;
                if !peers[0].write(h, true, &message[..n])? {
                    break;
                }
                sent += n as u64;
            }
        }
        let mut timeout = now + Duration::from_secs(1);
        for i in 0..2 {
            loop {
                match peers[i].poll_output(now) {
                    Output::Transmit {
                        source,
                        destination,
                        contents,
                    } => wire[1 - i].push_back((source, destination, contents)),
                    Output::Signal(s) => {
                        let _ = peers[1 - i].handle_signal(now, s);
                    }
                    Output::Event(Event::ChannelOpen(c, _)) if i == 0 && c == h => {
                        open = true;
                        measured = Some((cpu_time()?, Instant::now(), datagrams));
                    }
                    Output::Event(Event::ChannelData(_, _, d)) => received += d.len() as u64,
                    Output::Event(_) => {}
                    Output::Timeout(t) => {
                        timeout = timeout.min(t);
                        break;
                    }
                }
            }
        }
        let mut moved = false;
        for i in 0..2 {
            while let Some((s, d, c)) = wire[i].pop_front() {
                moved = true;
                datagrams += 1;
                peers[i].handle_datagram(now, s, d, &c);
            }
        }
        if !moved {
            clock = Instant::now().max(timeout.min(now + Duration::from_millis(1)));
            for p in &mut peers {
                p.handle_timeout(clock);
            }
        }
    }
    let (cpu0, wall0, d0) = measured.context("the channel never opened")?;
    Ok((cpu_time()? - cpu0, datagrams - d0, wall0.elapsed()))
}

/// The same transfer through two glare-udp drivers on loopback: (CPU time,
/// datagrams, wall time). `batched`: GSO and GRO on.
async fn driver_transfer(opt: &Options, batched: bool) -> Result<(Duration, u64, Duration)> {
    let mut c = config(opt);
    c.udp.socket.gso = batched;
    c.udp.socket.gro = batched;
    let ea = Endpoint::bind(c.clone()).await?;
    let eb = Endpoint::bind(c).await?;
    let mut pair = connect(&ea, None, &eb).await?;
    let before =
        ea.udp_stats().await?.received_datagrams + eb.udp_stats().await?.received_datagrams;
    let cpu0 = cpu_time()?;
    let wall0 = Instant::now();
    transfer(&pair.ch_a, &mut pair.ch_b, opt.bytes).await?;
    let cpu = cpu_time()? - cpu0;
    let wall = wall0.elapsed();
    let after = ea.udp_stats().await?.received_datagrams + eb.udp_stats().await?.received_datagrams;
    pair.close().await;
    ea.shutdown().await;
    eb.shutdown().await;
    Ok((cpu, after - before, wall))
}

/// CPU per datagram through the drivers versus in memory.
async fn datagram_cost(opt: &Options) -> Result<Value> {
    let us = |(cpu, n, _): (Duration, u64, Duration)| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
    let mem = in_memory_transfer(opt)?;
    let batched = driver_transfer(opt, true).await?;
    let unbatched = driver_transfer(opt, false).await?;
    let (m, b, u) = (us(mem), us(batched), us(unbatched));
    Ok(json!({
        "bytes": opt.bytes,
        "memory_datagrams": mem.1,
        "memory_us_per_datagram": round2(m),
        "memory_mbps": mbps(opt.bytes, mem.2.as_secs_f64()),
        "driver_datagrams": batched.1,
        "driver_us_per_datagram": round2(b),
        "driver_mbps": mbps(opt.bytes, batched.2.as_secs_f64()),
        "unbatched_us_per_datagram": round2(u),
        "unbatched_mbps": mbps(opt.bytes, unbatched.2.as_secs_f64()),
        "ratio": round2(b / m),
        "unbatched_ratio": round2(u / m),
    }))
}
