//! The `glare` command line (CLI.md).
#![forbid(unsafe_code)]

mod cli;

use cli::{demo, peer};

use std::{
    io::Write as _,
    net::{SocketAddr, ToSocketAddrs as _},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use glare::{
    broker::{Config, Limits, Server},
    client::{Client, WatchEvent},
    proto::broker::ListEntry,
};

/// glare: peer-to-peer WebRTC through a broker.
#[derive(Debug, Parser)]
#[command(name = "glare", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (PROTOCOL.md §1).
    Broker(BrokerArgs),
    /// List the sessions on a broker.
    List(ListArgs),
    /// The main job: an embedded broker, two peers dialling each other at once, a
    /// verified transfer.
    Demo(demo::DemoArgs),
    /// One scriptable peer: host a session, dial, accept, send and receive files.
    Peer(peer::PeerArgs),
    /// Send a file to a session (`peer --dial SID --send FILE --count 1`).
    Send(peer::SendArgs),
    /// Receive one file (`peer --tag T --recv DIR --count 1`).
    Recv(peer::RecvArgs),
}

pub(crate) fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?} is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    listen: String,
    /// Access-Control-Allow-Origin.
    #[arg(long, default_value = "*")]
    cors_origin: String,
    /// Largest request body (and WebSocket message), bytes.
    #[arg(long, default_value_t = Limits::default().max_body)]
    max_body: usize,
    /// Largest `message`, compact JSON bytes.
    #[arg(long, default_value_t = Limits::default().max_message)]
    max_message: usize,
    /// Largest `metadata`, compact JSON bytes.
    #[arg(long, default_value_t = Limits::default().max_metadata)]
    max_metadata: usize,
    /// Most tags per session.
    #[arg(long, default_value_t = Limits::default().max_tags)]
    max_tags: usize,
    /// Most sessions per channel.
    #[arg(long, default_value_t = Limits::default().max_sessions_per_channel)]
    max_sessions: usize,
    /// Messages buffered per channel for resume.
    #[arg(long, default_value_t = Limits::default().buffer)]
    buffer: usize,
    /// Seconds a channel outlives its stream.
    #[arg(long, value_parser = secs, default_value = "30")]
    grace: Duration,
    /// Seconds between keep-alives.
    #[arg(long, value_parser = secs, default_value = "15")]
    keep_alive: Duration,
    /// Sends per second per sending channel.
    #[arg(long, default_value_t = Limits::default().rate_per_sec)]
    rate: u32,
    /// Send burst per sending channel.
    #[arg(long, default_value_t = Limits::default().rate_burst)]
    burst: u32,
    /// Seconds to receive a whole request body.
    #[arg(long, value_parser = secs, default_value = "10")]
    body_timeout: Duration,
    /// Seconds to receive a request's headers.
    #[arg(long, value_parser = secs, default_value = "10")]
    header_timeout: Duration,
    /// Share channels, sessions and lists with every other node on this Redis
    /// (`redis://[user:pass@]host:port[/db]`; default: in-memory, one node). Run Redis
    /// with `appendonly yes` so a Redis restart keeps the channels.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Key prefix on Redis, so several broker clusters can share one Redis.
    #[arg(long, default_value = "glare", requires = "redis")]
    redis_prefix: String,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Broker URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    broker: String,
    /// Filter: `tag`, `!tag`, comma-separated.
    #[arg(long, default_value = "")]
    filter: String,
    /// Keep watching: print `add …` and `remove SID` lines.
    #[arg(long)]
    watch: bool,
}

/// Logs to stderr, filtered by `RUST_LOG` (`warn`, `glare=debug,str0m=info` …).
fn init_logs(default_spec: &str) {
    use tracing_subscriber::{filter::Targets, prelude::*};
    let spec = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("GLARE_LOG"))
        .unwrap_or_default();
    let default = || -> Targets { default_spec.parse().unwrap_or_else(|_| Targets::new()) };
    let filter = if spec.trim().is_empty() {
        default()
    } else {
        spec.parse().unwrap_or_else(|e| {
            eprintln!("glare: RUST_LOG={spec:?} not understood ({e}); using the default");
            default()
        })
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's embedded broker and peers stay quiet unless asked.
    init_logs(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "warn,glare=info,glare_broker=info"
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("glare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Broker(args) => broker(args).await,
            Command::List(args) => list(args).await,
            Command::Peer(args) => peer::run(args.into_options()?).await,
            Command::Send(args) => peer::run(args.into_options()?).await,
            Command::Recv(args) => peer::run(args.into_options()?).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    // Links and the reactor may still hold tasks: do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glare: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn broker(args: BrokerArgs) -> Result<(), String> {
    let addr: SocketAddr = args
        .listen
        .to_socket_addrs()
        .map_err(|e| format!("bad --listen {:?}: {e}", args.listen))?
        .next()
        .ok_or_else(|| format!("--listen {:?} resolves to nothing", args.listen))?;
    let config = Config {
        limits: Limits {
            max_body: args.max_body,
            max_message: args.max_message,
            max_metadata: args.max_metadata,
            max_tags: args.max_tags,
            max_sessions_per_channel: args.max_sessions,
            buffer: args.buffer,
            grace: args.grace,
            keep_alive: args.keep_alive,
            rate_per_sec: args.rate,
            rate_burst: args.burst,
        },
        cors_origin: args.cors_origin,
        body_timeout: args.body_timeout,
        header_timeout: args.header_timeout,
        redis: args.redis.map(|url| glare::broker::RedisConfig {
            prefix: args.redis_prefix,
            ..glare::broker::RedisConfig::new(url)
        }),
        ..Config::default()
    };
    let server = Server::bind(addr, config)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening http://{}", server.local_addr());
    let _ = out.flush();
    drop(out);
    server
        .run(glare::broker::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn entry_line(e: &ListEntry) -> String {
    let tags: Vec<&str> = e.session.tags.iter().map(|t| t.as_str()).collect();
    format!("{} {} {}", e.sid, tags.join(","), e.session.metadata.get())
}

async fn list(args: ListArgs) -> Result<(), String> {
    let client = Client::new(&args.broker).map_err(|e| e.to_string())?;
    if !args.watch {
        for e in client.list(&args.filter).await.map_err(|e| e.to_string())? {
            println!("{}", entry_line(&e));
        }
        return Ok(());
    }
    let mut watch = client
        .watch(&args.filter)
        .await
        .map_err(|e| e.to_string())?;
    let stop = glare::broker::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = watch.next() => match ev {
                Some(Ok(WatchEvent::Add(e))) => println!("add {}", entry_line(&e)),
                Some(Ok(WatchEvent::Remove(sid))) => println!("remove {sid}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("glare: {e}"),
                None => return Err("the broker ended the watch".into()),
            },
            () = &mut stop => return Ok(()),
        }
    }
}
