//! The `glare` command line (CLI.md).
#![forbid(unsafe_code)]

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
    /// The main job on an embedded broker (not implemented yet).
    Demo(Rest),
    /// One scriptable peer (not implemented yet).
    Peer(Rest),
    /// Send a file to a session (not implemented yet).
    Send(Rest),
    /// Receive a file (not implemented yet).
    Recv(Rest),
}

#[derive(Debug, Args)]
struct Rest {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

fn secs(s: &str) -> Result<Duration, String> {
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

fn init_logs() {
    let level = match std::env::var("GLARE_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let not_yet = |cmd: &str| {
        eprintln!("glare {cmd}: not implemented yet (needs glare-rtc/glare-udp, issue 6)");
        ExitCode::from(2)
    };
    match cli.command {
        Command::Demo(_) => return not_yet("demo"),
        Command::Peer(_) => return not_yet("peer"),
        Command::Send(_) => return not_yet("send"),
        Command::Recv(_) => return not_yet("recv"),
        Command::Broker(_) | Command::List(_) => {}
    }
    init_logs();
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
            _ => Ok(()),
        }
    });
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
