//! `glare demo`: the main job on an embedded default.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use glare::file::{self, FILE_LABEL, Sha256};
use glare::{Config, Peer, Role};

use super::peer::{bar, progress_target};

/// `glare demo` arguments.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Bytes to transfer (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "256M", value_parser = size)]
    size: u64,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = crate::secs)]
    timeout: Duration,
}

fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("{s:?} is not a size: {e}"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (K, M or G)")),
    };
    let total = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if total > 16 << 30 {
        return Err(format!("{s:?}: at most 16G (the data is held in memory)"));
    }
    Ok(total)
}

/// Deterministic pseudo-random bytes (xorshift64*), so the data does not compress
/// and the run is reproducible.
fn generate(len: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Polite) => "polite",
        Some(Role::Impolite) => "impolite",
        None => "none",
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{bytes} bytes")
    }
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), String> {
    let timeout = args.timeout;
    tokio::time::timeout(timeout, demo(args))
        .await
        .map_err(|_| format!("demo: not done within {}s", timeout.as_secs_f64()))?
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let len = usize::try_from(args.size).map_err(|_| "--size too large".to_owned())?;
    let server = glare::broker::Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        glare::broker::Config::default(),
    )
    .await
    .map_err(|e| format!("cannot start the embedded broker: {e}"))?;
    let url = format!("http://{}", server.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    println!("broker   {url} (embedded, loopback)");

    let data_task = tokio::task::spawn_blocking(move || {
        let data = generate(len);
        let sha = Sha256::hex_of(&data);
        (data, sha)
    });

    let (a, b) = tokio::join!(
        Peer::new(&url, Config::loopback()),
        Peer::new(&url, Config::loopback())
    );
    let a = a.map_err(|e| format!("peer A: {e}"))?;
    let b = b.map_err(|e| format!("peer B: {e}"))?;
    let meta = |n: &str| serde_json::json!({ "name": n });
    let (sa, sb) = tokio::join!(
        a.host(["demo"], meta("A"), false),
        b.host(["demo"], meta("B"), false)
    );
    let sa = sa.map_err(|e| format!("peer A: {e}"))?;
    let sb = sb.map_err(|e| format!("peer B: {e}"))?;
    println!("peer A   sid {sa} udp {}", a.endpoint().local_addr());
    println!("peer B   sid {sb} udp {}", b.endpoint().local_addr());

    // Both dial the other at the same instant: a real glare race.
    let start = Instant::now();
    let (ca, cb) = tokio::join!(a.connect(&sb), b.connect(&sa));
    let ca = ca.map_err(|e| format!("peer A cannot dial: {e}"))?;
    let cb = cb.map_err(|e| format!("peer B cannot dial: {e}"))?;
    let (ra, rb) = tokio::join!(ca.connected(), cb.connected());
    ra.map_err(|e| format!("peer A: {e}"))?;
    rb.map_err(|e| format!("peer B: {e}"))?;
    let wall = start.elapsed();
    let (role_a, role_b) = tokio::join!(ca.role_decided(), cb.role_decided());
    let (role_a, role_b) = (role_a.ok(), role_b.ok());
    let (st_a, st_b) = tokio::join!(ca.stats(), cb.stats());
    let (st_a, st_b) = (st_a.unwrap_or_default(), st_b.unwrap_or_default());
    println!(
        "glare    both dialled at once: offers A {} B {}, rollbacks A {} B {}, ignored A {} B {}",
        st_a.offers_sent,
        st_b.offers_sent,
        st_a.rollbacks,
        st_b.rollbacks,
        st_a.ignored_offers,
        st_b.ignored_offers
    );
    println!("roles    A {} / B {}", role_name(role_a), role_name(role_b));
    let (sig_a, sig_b) = tokio::join!(
        ca.signal_ready(Duration::from_secs(3)),
        cb.signal_ready(Duration::from_secs(3))
    );
    let ms = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64() * 1e3;
    println!(
        "connect  ICE+DTLS up {:.1} ms (A) / {:.1} ms (B), glare-signal open {:.1} ms (A) / {:.1} ms (B), from each side's first signal",
        ms(ca.connect_time()),
        ms(cb.connect_time()),
        ms(sig_a),
        ms(sig_b),
    );
    println!(
        "         {:.1} ms wall clock from the two dials to both connected",
        wall.as_secs_f64() * 1e3
    );
    let opposite = matches!(
        (role_a, role_b),
        (Some(Role::Polite), Some(Role::Impolite)) | (Some(Role::Impolite), Some(Role::Polite))
    );

    let (data, sha) = data_task
        .await
        .map_err(|e| format!("generating data failed: {e}"))?;
    let bars = progress_target();
    let receiver = {
        let cb = cb.clone();
        let bar = bar(&bars, Some(args.size), "B receives");
        tokio::spawn(async move {
            loop {
                let chan = cb
                    .accept_channel()
                    .await
                    .ok_or_else(|| "peer B: the link closed before the file".to_owned())?;
                if chan.label() == FILE_LABEL {
                    let r = file::receive_file(chan, None, |n| bar.set_position(n))
                        .await
                        .map_err(|e| format!("peer B: {e}"));
                    bar.finish_and_clear();
                    return r;
                }
            }
        })
    };
    let sent = file::send_bytes(&ca, "demo.bin", data, |_| {})
        .await
        .map_err(|e| format!("peer A: {e}"))?;
    let received = receiver.await.map_err(|e| format!("peer B: {e}"))??;
    println!(
        "transfer {} A → B in {:.2} s: {:.1} Mbit/s (receiver), {:.1} Mbit/s (sender, to ack)",
        human(received.size),
        received.elapsed.as_secs_f64(),
        received.mbps(),
        sent.mbps()
    );
    let verified = received.sha256 == sha && sent.sha256 == sha && received.size == args.size;
    println!(
        "sha256   {} {}",
        received.sha256,
        if verified { "verified" } else { "MISMATCH" }
    );
    ca.close("demo done").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), cb.closed()).await;
    a.close().await;
    b.close().await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), broker).await;
    if !opposite {
        return Err(format!(
            "roles are not opposite: A {} B {}",
            role_name(role_a),
            role_name(role_b)
        ));
    }
    if !verified {
        return Err("the transfer did not verify".into());
    }
    if closed.is_err() {
        return Err("peer B did not see the link close".into());
    }
    println!("ok");
    Ok(())
}
