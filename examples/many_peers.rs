//! Many peers meeting through tags and `watch`, in one process: an embedded broker,
//! N peers that each host a session tagged `swarm`, watch the tag, and dial every
//! session that appears. Every pair ends with exactly one link (when two peers dial
//! each other at once, glare resolves it), and each peer's links share its one UDP
//! socket.
//!
//! ```sh
//! cargo run --release --example many_peers -- 12
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glare::client::WatchEvent;
use glare::{ChannelOptions, Config, Connection, Message, Peer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8)
        .clamp(2, 64);
    let server =
        glare::broker::Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default())
            .await?;
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));

    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { run_peer(i, n, &url).await }));
    }
    for t in tasks {
        let (i, links) = t.await??;
        println!("peer {i:2}: {links} links, all greeted");
    }
    println!(
        "{n} peers, {} links, full mesh in {:.2?}",
        n * (n - 1) / 2,
        start.elapsed()
    );
    Ok(())
}

async fn run_peer(i: usize, n: usize, url: &str) -> Result<(usize, usize), glare::Error> {
    let peer = Peer::new(url, Config::loopback()).await?;
    let sid = peer
        .host(["swarm"], serde_json::json!({ "peer": i }), true)
        .await?;
    let (tx, mut links) = tokio::sync::mpsc::unbounded_channel::<Connection>();
    let acceptor = peer.clone();
    let accepted = tx.clone();
    tokio::spawn(async move {
        while let Some(c) = acceptor.accept().await {
            let _ = accepted.send(c);
        }
    });
    let mut watch = peer.watch("swarm").await?;
    let dialler = peer.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            if let WatchEvent::Add(e) = event
                && e.sid != sid
                && let Ok(c) = dialler.connect(&e.sid).await
            {
                let _ = tx.send(c);
            }
        }
    });
    // Greet every link on our own channel; count greetings on theirs.
    let mut seen = HashSet::new();
    let mut greeted = tokio::task::JoinSet::new();
    while seen.len() < n - 1 {
        let conn = tokio::time::timeout(Duration::from_secs(30), links.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| glare_timeout(i))?;
        if !seen.insert(conn.remote().unwrap_or_default().to_owned()) {
            continue;
        }
        greeted.spawn(async move {
            conn.connected().await?;
            let out = conn
                .open_channel("hello", ChannelOptions::default())
                .await?;
            out.send_text(&format!("hello from {i}")).await?;
            let mut theirs = conn
                .accept_channel()
                .await
                .ok_or_else(|| glare_timeout(i))?;
            match theirs.recv().await {
                Some(Message::Text(t)) if t.starts_with("hello from") => Ok(conn),
                _ => Err(glare_timeout(i)),
            }
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = greeted.join_next().await {
        conns.push(r.map_err(|_| glare_timeout(i))??);
    }
    // Stay up until everyone is done greeting, then leave.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let links = conns.len();
    peer.close().await;
    Ok((i, links))
}

fn glare_timeout(i: usize) -> glare::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("peer {i} gave up")).into()
}
