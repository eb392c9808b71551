//! One broker node as a process, for the multi-node tests and `cargo xtask bench-broker`
//! (users run `glare broker`). Prints `listening http://IP:PORT` first, serves until
//! SIGINT/SIGTERM.
//!
//! ```text
//! glare-broker-node [--listen ADDR] [--redis URL] [--prefix P] [--grace-ms N]
//!                   [--heartbeat-ms N] [--node-timeout-ms N] [--buffer N]
//!                   [--rate N] [--burst N]
//! ```
#![forbid(unsafe_code)]

use std::{io::Write as _, net::SocketAddr, process::ExitCode, time::Duration};

use glare_broker::{Config, RedisConfig, Server, shutdown_signal};

fn parse() -> Result<(SocketAddr, Config), String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut config = Config::default();
    let mut redis: Option<RedisConfig> = None;
    let mut args = std::env::args().skip(1);
    let ms = |v: &str| {
        v.parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|e| e.to_string())
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let r = redis.as_mut();
        match (flag.as_str(), r) {
            ("--listen", _) => listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            ("--redis", _) => redis = Some(RedisConfig::new(value)),
            ("--prefix", Some(r)) => r.prefix = value,
            ("--heartbeat-ms", Some(r)) => r.heartbeat = ms(&value)?,
            ("--node-timeout-ms", Some(r)) => r.node_timeout = ms(&value)?,
            ("--grace-ms", _) => config.limits.grace = ms(&value)?,
            ("--buffer", _) => config.limits.buffer = value.parse().map_err(|e| format!("{e}"))?,
            ("--rate", _) => {
                config.limits.rate_per_sec = value.parse().map_err(|e| format!("{e}"))?;
            }
            ("--burst", _) => {
                config.limits.rate_burst = value.parse().map_err(|e| format!("{e}"))?;
            }
            (f, None) if f.starts_with("--") => {
                return Err(format!("{f} needs --redis before it, or is unknown"));
            }
            (f, _) => return Err(format!("unknown argument {f}")),
        }
    }
    config.redis = redis;
    Ok((listen, config))
}

fn main() -> ExitCode {
    let (listen, config) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("glare-broker-node: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("glare-broker-node: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        let server = Server::bind(listen, config).await?;
        println!("listening http://{}", server.local_addr());
        let _ = std::io::stdout().flush();
        server.run(shutdown_signal()).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glare-broker-node: {e}");
            ExitCode::FAILURE
        }
    }
}
