//! `glare peer` (and its shorthands `send` and `recv`), exactly per CLI.md.

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::FutureExt as _;
use glare::client::WatchEvent;
use glare::file::{self, FILE_LABEL, Report};
use glare::{
    CandidatePair, Config, Connection, DataChannel, HostFilter, IceServer, Peer, Role, State,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// `glare peer` arguments.
#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// Broker URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    broker: String,
    /// A tag of the session this peer hosts (repeatable).
    #[arg(long = "tag", value_name = "T")]
    tags: Vec<String>,
    /// The session's metadata (JSON).
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Do not show the session in `/list`.
    #[arg(long)]
    unlisted: bool,
    /// Connect to this session, with this peer's own sid as origin (repeatable).
    #[arg(long, value_name = "SID")]
    dial: Vec<String>,
    /// Watch for sessions with this tag (other than our own) and dial each one as
    /// it appears (repeatable).
    #[arg(long = "dial-tag", value_name = "T")]
    dial_tag: Vec<String>,
    /// On every link, send this file (PROTOCOL.md §5).
    #[arg(long, value_name = "FILE")]
    send: Option<PathBuf>,
    /// Save files received on any link into this directory.
    #[arg(long, value_name = "DIR")]
    recv: Option<PathBuf>,
    /// Echo every other data channel.
    #[arg(long)]
    echo: bool,
    /// Exit 0 after N files have been sent and acknowledged or received and verified.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit 1 if not done by then.
    #[arg(long, value_name = "SECS", value_parser = crate::secs)]
    timeout: Option<Duration>,
    /// The local address for UDP (default: every usable interface address).
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// An ICE server: `stun:HOST:PORT`, `turn:USER:PASS@HOST:PORT[?transport=tcp]`
    /// (repeatable).
    #[arg(long, value_name = "URL")]
    ice: Vec<String>,
}

/// `glare send` arguments.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Broker URL.
    #[arg(long)]
    broker: String,
    /// The session to send to.
    #[arg(long, value_name = "SID")]
    to: String,
    /// The file.
    file: PathBuf,
    /// Exit 1 if not done by then.
    #[arg(long, value_name = "SECS", value_parser = crate::secs)]
    timeout: Option<Duration>,
    /// The local address for UDP.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// An ICE server URL (repeatable).
    #[arg(long, value_name = "URL")]
    ice: Vec<String>,
}

/// `glare recv` arguments.
#[derive(Debug, Args)]
pub(crate) struct RecvArgs {
    /// Broker URL.
    #[arg(long)]
    broker: String,
    /// A tag of the session to host (repeatable).
    #[arg(long = "tag", value_name = "T")]
    tags: Vec<String>,
    /// Where to save the file.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Exit 1 if not done by then.
    #[arg(long, value_name = "SECS", value_parser = crate::secs)]
    timeout: Option<Duration>,
    /// The local address for UDP.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// An ICE server URL (repeatable).
    #[arg(long, value_name = "URL")]
    ice: Vec<String>,
}

/// What a peer run does, whichever command asked for it.
#[derive(Debug)]
pub(crate) struct Options {
    broker: String,
    tags: Vec<String>,
    metadata: serde_json::Value,
    listed: bool,
    dial: Vec<String>,
    dial_tag: Vec<String>,
    send: Option<PathBuf>,
    recv: Option<PathBuf>,
    echo: bool,
    count: Option<u64>,
    timeout: Option<Duration>,
    config: Config,
}

fn config(bind: Option<IpAddr>, ice: &[String]) -> Result<Config, String> {
    let mut config = Config::default();
    // The `candidate pair` line comes with a statistics refresh: soon after connecting.
    config.stats_interval = Some(Duration::from_millis(200));
    if let Some(ip) = bind {
        config.bind = SocketAddr::new(ip, 0);
        if ip.is_loopback() {
            config.host_filter = HostFilter::loopback_only();
        }
    }
    for url in ice {
        config
            .ice_servers
            .push(IceServer::parse(url).map_err(|e| format!("--ice: {e}"))?);
    }
    Ok(config)
}

impl PeerArgs {
    pub(crate) fn into_options(self) -> Result<Options, String> {
        let metadata = match &self.metadata {
            Some(m) => {
                serde_json::from_str(m).map_err(|e| format!("--metadata is not JSON: {e}"))?
            }
            None => serde_json::Value::Null,
        };
        Ok(Options {
            config: config(self.bind, &self.ice)?,
            broker: self.broker,
            tags: self.tags,
            metadata,
            listed: !self.unlisted,
            dial: self.dial,
            dial_tag: self.dial_tag,
            send: self.send,
            recv: self.recv,
            echo: self.echo,
            count: self.count,
            timeout: self.timeout,
        })
    }
}

impl SendArgs {
    pub(crate) fn into_options(self) -> Result<Options, String> {
        Ok(Options {
            config: config(self.bind, &self.ice)?,
            broker: self.broker,
            tags: Vec::new(),
            metadata: serde_json::Value::Null,
            listed: true,
            dial: vec![self.to],
            dial_tag: Vec::new(),
            send: Some(self.file),
            recv: None,
            echo: false,
            count: Some(1),
            timeout: self.timeout,
        })
    }
}

impl RecvArgs {
    pub(crate) fn into_options(self) -> Result<Options, String> {
        Ok(Options {
            config: config(self.bind, &self.ice)?,
            broker: self.broker,
            tags: self.tags,
            metadata: serde_json::Value::Null,
            listed: true,
            dial: Vec::new(),
            dial_tag: Vec::new(),
            send: None,
            recv: Some(self.out),
            echo: false,
            count: Some(1),
            timeout: self.timeout,
        })
    }
}

/// Something a link task reports to the main loop.
enum Done {
    /// A file was sent and acknowledged (its `sent` line is printed).
    Sent,
    /// A file was received and verified (its `received` line is printed).
    Received,
    Failed(String),
}

/// What every link task needs.
struct Ctx {
    send: Option<PathBuf>,
    recv: Option<PathBuf>,
    echo: bool,
    bars: MultiProgress,
    done: mpsc::UnboundedSender<Done>,
    /// Channels the peers opened that are being served (echoed, received, refused).
    serving: watch::Sender<usize>,
    /// Links whose candidate-pair line is not printed yet.
    pairs: watch::Sender<usize>,
}

/// Counts one task in a counter ([`Ctx::serving`], [`Ctx::pairs`]) for as long as
/// it lives (also when the task is aborted).
struct Counted(watch::Sender<usize>);

impl Counted {
    fn new(count: &watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How long `--count` waits, as the `--echo` side, for the peers to close the
/// channels they opened before the process exits.
const ECHO_DRAIN: Duration = Duration::from_secs(30);

/// How long no peer channel must be open before the `--echo` side exits: a peer
/// that opens its echo channel right after its file was acknowledged is served.
const ECHO_QUIET: Duration = Duration::from_secs(1);

/// How long a link waits for its first candidate-pair figures.
const PAIR_WAIT: Duration = Duration::from_secs(3);

fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Polite) => "polite",
        Some(Role::Impolite) => "impolite",
        None => "unknown",
    }
}

/// A progress bar on stderr, drawn only on a terminal.
pub(crate) fn bar(bars: &MultiProgress, len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = bars.add(bar.with_style(style));
    bar.set_message(what.to_owned());
    bar
}

pub(crate) fn progress_target() -> MultiProgress {
    if std::io::stderr().is_terminal() {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
}

/// The line protocol of CLI.md: one `println!` per event (stdout is line-buffered
/// and locked per call, so lines never interleave).
fn print_transfer(verb: &str, r: &Report) {
    println!(
        "{verb} {} {} {} mbps={:.1}",
        r.name,
        r.size,
        r.sha256,
        r.mbps()
    );
}

async fn handle_link(conn: Connection, ctx: Arc<Ctx>) {
    let remote = conn.remote().unwrap_or("?").to_owned();
    if let Err(e) = conn.connected().await {
        println!("closed {remote} {}", conn.state().reason());
        tracing::debug!(%remote, error = %e, "link never connected");
        return;
    }
    let role = conn.role_decided().await.ok();
    // CLI.md: to the glare-signal channel being open (a peer that never opens one
    // is measured to ICE and DTLS being up).
    let ms = match conn.signal_ready(Duration::from_secs(3)).await {
        Some(t) => t,
        None => conn.connect_time().unwrap_or_default(),
    }
    .as_millis();
    println!("connected {remote} role={} ms={ms}", role_name(role));
    let mut tasks = JoinSet::new();
    {
        let conn = conn.clone();
        let pending = Counted::new(&ctx.pairs);
        tasks.spawn(async move {
            let first = print_candidate_pair(&conn).await;
            drop(pending);
            if let Some(first) = first {
                watch_candidate_pair(&conn, first).await;
            }
        });
    }
    {
        let mut conn = conn.clone();
        tasks.spawn(async move { report_lost_path(&mut conn).await });
    }
    if let Some(path) = ctx.send.clone() {
        let conn = conn.clone();
        let ctx = Arc::clone(&ctx);
        tasks.spawn(async move {
            let size = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
            let bar = bar(&ctx.bars, size, &format!("send {}", path.display()));
            let result = file::send_file(&conn, &path, |n| bar.set_position(n)).await;
            bar.finish_and_clear();
            let _ = ctx.done.send(match result {
                Ok(r) => {
                    print_transfer("sent", &r);
                    Done::Sent
                }
                Err(e) => Done::Failed(format!("sending {} failed: {e}", path.display())),
            });
        });
    }
    {
        let conn = conn.clone();
        let ctx = Arc::clone(&ctx);
        tasks.spawn(async move {
            let mut channels = JoinSet::new();
            while let Some(chan) = conn.accept_channel().await {
                let serving = Counted::new(&ctx.serving);
                let ctx = Arc::clone(&ctx);
                channels.spawn(async move {
                    serve_channel(chan, ctx).await;
                    drop(serving);
                });
            }
            while channels.join_next().await.is_some() {}
        });
    }
    let state = conn.closed().await;
    // A transfer that completed as the link closed prints its line first: `closed` is
    // the link's last line (CLI.md). The tasks end with the link; the wait is bounded.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    println!("closed {remote} {}", state.reason());
    tasks.abort_all();
}

/// Prints (stderr) the link's selected candidate pair once it is known, e.g.
/// `glare: candidate pair srflx/srflx 10.201.1.2:5000 -> 10.201.2.2:6000` (netlab
/// parses it). The figures refresh about five times a second, so this polls, bounded.
async fn print_candidate_pair(conn: &Connection) -> Option<CandidatePair> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < PAIR_WAIT {
        match conn.stats().await {
            Ok(s) => {
                if let Some(p) = s.candidate_pair {
                    eprintln!(
                        "glare: candidate pair {}/{} {} -> {}",
                        p.local_type, p.remote_type, p.local, p.remote
                    );
                    return Some(p);
                }
            }
            Err(_) => return None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!(remote = ?conn.remote(), "no candidate pair figures");
    None
}

/// Prints (stderr) `glare: ICE disconnected` when the link loses its path and
/// `glare: ICE reconnected, restarts: N` when it has one again (N: ICE restarts
/// completed on the link so far; netlab parses both).
async fn report_lost_path(conn: &mut Connection) {
    let mut lost = false;
    while let Some(state) = conn.next_state().await {
        match state {
            State::Disconnected if !lost => {
                lost = true;
                eprintln!("glare: ICE disconnected");
            }
            State::Connected if lost => {
                lost = false;
                let restarts = conn.stats().await.map_or(0, |s| s.ice_restarts);
                eprintln!("glare: ICE reconnected, restarts: {restarts}");
            }
            s if s.is_over() => return,
            _ => {}
        }
    }
}

/// After the first pair: prints the line again, marked `(changed)`, each time ICE
/// moves the link to another pair (a path that died, an ICE restart), until the link
/// ends.
async fn watch_candidate_pair(conn: &Connection, mut last: CandidatePair) {
    while let Ok(s) = conn.stats().await {
        if let Some(p) = s.candidate_pair
            && (p.local, p.remote) != (last.local, last.remote)
        {
            eprintln!(
                "glare: candidate pair {}/{} {} -> {} (changed)",
                p.local_type, p.remote_type, p.local, p.remote
            );
            last = p;
        }
        tokio::select! {
            _ = conn.closed() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn serve_channel(chan: DataChannel, ctx: Arc<Ctx>) {
    if chan.label() == FILE_LABEL {
        let Some(dir) = ctx.recv.clone() else {
            refuse_file(chan).await;
            return;
        };
        let bar = bar(&ctx.bars, None, "receive");
        let result = file::receive_file(chan, Some(&dir), |n| bar.set_position(n)).await;
        bar.finish_and_clear();
        let _ = ctx.done.send(match result {
            Ok(r) => {
                print_transfer("received", &r);
                Done::Received
            }
            Err(e) => Done::Failed(format!("receiving a file failed: {e}")),
        });
    } else if ctx.echo {
        file::echo(chan).await;
    }
}

/// A file offered to a peer without `--recv`: read the header and say no.
async fn refuse_file(mut chan: DataChannel) {
    if chan.recv().await.is_some() {
        let _ = chan
            .send_text(r#"{"ok":false,"error":"this peer does not receive files"}"#)
            .await;
    }
    chan.close().await;
}

/// Returns once no channel has been served for [`ECHO_QUIET`].
async fn quiet(served: &mut watch::Receiver<usize>) {
    loop {
        if served.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        match tokio::time::timeout(ECHO_QUIET, served.wait_for(|n| *n > 0)).await {
            // Quiet long enough (or nobody can open a channel any more).
            Err(_) | Ok(Err(_)) => return,
            // A channel opened meanwhile: serve it to the end, then wait again.
            Ok(Ok(_)) => {}
        }
    }
}

pub(crate) async fn run(o: Options) -> Result<(), String> {
    if let Some(path) = &o.send {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("--send {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("--send {}: not a file", path.display()));
        }
    }
    if let Some(dir) = &o.recv {
        std::fs::create_dir_all(dir).map_err(|e| format!("--recv {}: {e}", dir.display()))?;
    }
    let peer = Peer::new(&o.broker, o.config)
        .await
        .map_err(|e| format!("cannot start the peer: {e}"))?;
    let sid = peer
        .host(&o.tags, o.metadata, o.listed)
        .await
        .map_err(|e| format!("cannot host a session: {e}"))?;
    println!("sid {sid}");

    let (links_tx, mut links_rx) = mpsc::unbounded_channel::<Connection>();
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();
    let mut background = JoinSet::new();
    {
        let peer = peer.clone();
        let links = links_tx.clone();
        background.spawn(async move {
            while let Some(conn) = peer.accept().await {
                let _ = links.send(conn);
            }
        });
    }
    for remote in o.dial {
        let peer = peer.clone();
        let links = links_tx.clone();
        let fatal = fatal_tx.clone();
        background.spawn(async move {
            match peer.connect(&remote).await {
                Ok(conn) => {
                    let _ = links.send(conn);
                }
                Err(e) => {
                    let _ = fatal.send(format!("cannot dial {remote}: {e}"));
                }
            }
        });
    }
    for tag in o.dial_tag {
        let peer = peer.clone();
        let links = links_tx.clone();
        let fatal = fatal_tx.clone();
        let own = sid.clone();
        background.spawn(async move {
            let mut watch = match peer.watch(&tag).await {
                Ok(w) => w,
                Err(e) => {
                    let _ = fatal.send(format!("cannot watch tag {tag}: {e}"));
                    return;
                }
            };
            let mut dialled = HashSet::new();
            while let Some(event) = watch.next().await {
                match event {
                    Ok(WatchEvent::Add(entry)) if entry.sid != own => {
                        if !dialled.insert(entry.sid.clone()) {
                            continue;
                        }
                        match peer.connect(&entry.sid).await {
                            Ok(conn) => {
                                let _ = links.send(conn);
                            }
                            Err(e) => eprintln!("glare: cannot dial {}: {e}", entry.sid),
                        }
                    }
                    Ok(WatchEvent::Remove(gone)) => {
                        dialled.remove(&gone);
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("glare: watching tag {tag}: {e}"),
                }
            }
        });
    }
    drop(links_tx);
    drop(fatal_tx);

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (serving, mut served) = watch::channel(0usize);
    let (pairs, mut unprinted) = watch::channel(0usize);
    let ctx = Arc::new(Ctx {
        send: o.send,
        recv: o.recv,
        echo: o.echo,
        bars: progress_target(),
        done: done_tx,
        serving,
        pairs,
    });
    let deadline = o.timeout.map(|t| tokio::time::Instant::now() + t);
    let stop = glare::broker::shutdown_signal();
    tokio::pin!(stop);
    let mut seen = HashSet::new();
    let mut link_tasks = JoinSet::new();
    let mut finished = 0u64;
    let result = loop {
        if o.count.is_some_and(|n| finished >= n) {
            if o.echo {
                // The echo side keeps its links up until the peers have closed the
                // channels they opened (bounded; Ctrl-C and --timeout still apply).
                let deadline = deadline.map_or_else(
                    || std::future::pending().boxed(),
                    |d| tokio::time::sleep_until(d).boxed(),
                );
                tokio::select! {
                    r = tokio::time::timeout(ECHO_DRAIN, quiet(&mut served)) => {
                        if r.is_err() {
                            tracing::debug!("channels still open after the echo drain");
                        }
                    }
                    () = &mut stop => {}
                    () = deadline => {
                        let secs = o.timeout.unwrap_or_default().as_secs_f64();
                        break Err(format!("not done within --timeout {secs}s"));
                    }
                }
            }
            break Ok(());
        }
        tokio::select! {
            Some(conn) = links_rx.recv() => {
                if seen.insert(conn.id()) {
                    link_tasks.spawn(handle_link(conn, Arc::clone(&ctx)));
                }
            }
            Some(done) = done_rx.recv() => match done {
                Done::Sent | Done::Received => finished += 1,
                Done::Failed(e) => {
                    if o.count.is_some() {
                        break Err(e);
                    }
                    eprintln!("glare: {e}");
                }
            },
            Some(e) = fatal_rx.recv() => break Err(e),
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let secs = o.timeout.unwrap_or_default().as_secs_f64();
                break Err(format!("not done within --timeout {secs}s"));
            }
            () = &mut stop => break Ok(()),
        }
    };
    background.abort_all();
    // A quick transfer can end before the first stats refresh: print every link's
    // candidate pair before closing (bounded by the refresh interval).
    let _ = tokio::time::timeout(PAIR_WAIT, unprinted.wait_for(|n| *n == 0)).await;
    peer.close().await;
    // Let the link tasks print their `closed` lines.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while link_tasks.join_next().await.is_some() {}
    })
    .await;
    result
}
