//! glare's side of the comparison bench (`cargo xtask bench`): the same rows as
//! `interop/bench.mjs` for the other stacks, printed as the same JSON lines with
//! `"stack":"glare"`.
//!
//! ```text
//! compare [--rows setup,throughput,aggregate,memory] [--runs 100] [--bytes 268435456]
//!         [--connections 10] [--memory-connections 100]
//! ```
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
//!   process) with an open channel, divided by the link count.
//!
//! With more than one row, each row runs in a fresh child process (as bench.mjs does),
//! so one row's allocations do not hide in the next row's RSS.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use glare::transport::{Endpoint, Signals};
use glare::{ChannelOptions, Config, Connection, DataChannel, Message};
use serde_json::{Value, json};

/// Message size of the transfer rows.
const MSG: usize = 16 * 1024;
/// Most links the aggregate and memory rows make (one loopback address each).
const MAX_LINKS: usize = 240;
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
            other => bail!(
                "unknown argument `{other}` (usage: compare [--rows setup,throughput,aggregate,memory] \
                 [--runs N] [--bytes N] [--connections N] [--memory-connections N])"
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
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    let row = opt.rows[0].clone();
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
        "setup" => setup(opt.runs).await,
        "throughput" => throughput(opt.bytes).await,
        "aggregate" => aggregate(opt.connections, opt.bytes).await,
        "memory" => memory(opt.memory_connections).await,
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

/// Two loopback endpoints, one socket each.
async fn endpoints() -> Result<(Endpoint, Endpoint)> {
    Ok((
        Endpoint::bind(Config::loopback()).await?,
        Endpoint::bind(Config::loopback()).await?,
    ))
}

/// A wildcard socket on `lo` (link i offers 127.0.0.(10+i), so links between the
/// same two sockets have distinct address pairs) and a plain loopback one.
async fn many_endpoints() -> Result<(Endpoint, Endpoint)> {
    let mut wild = Config::loopback();
    wild.bind = SocketAddr::from(([0, 0, 0, 0], 0));
    wild.udp.socket.bind_device = Some("lo".into());
    let a = Endpoint::bind(wild)
        .await
        .context("a wildcard socket bound to lo (Linux, CAP_NET_RAW)")?;
    Ok((a, Endpoint::bind(Config::loopback()).await?))
}

fn link_addr(a: &Endpoint, i: usize) -> SocketAddr {
    let last = u8::try_from(10 + i).unwrap_or(u8::MAX);
    SocketAddr::from(([127, 0, 0, last], a.local_addr().port()))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    // Same rank rule as bench.mjs: ceil(q * n) - 1, clamped.
    let rank = ((q * sorted.len() as f64).ceil() as usize).saturating_sub(1);
    sorted[rank.min(sorted.len() - 1)]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn setup(runs: usize) -> Result<Value> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (ea, eb) = endpoints().await?;
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

async fn throughput(bytes: usize) -> Result<Value> {
    let (ea, eb) = endpoints().await?;
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

async fn aggregate(connections: usize, bytes: usize) -> Result<Value> {
    let (ea, eb) = many_endpoints().await?;
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

async fn memory(connections: usize) -> Result<Value> {
    let (ea, eb) = many_endpoints().await?;
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
    }))
}
