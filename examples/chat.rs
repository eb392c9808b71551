//! Chat between two terminals: each side hosts a session tagged with the room name,
//! watches the room, dials whoever appears (both may dial at once: glare makes it
//! one link), then sends stdin lines and prints what arrives.
//!
//! ```sh
//! cargo run --release -- broker --listen 127.0.0.1:8080          # terminal 1
//! cargo run --example chat -- http://127.0.0.1:8080 alice         # terminal 2
//! cargo run --example chat -- http://127.0.0.1:8080 bob           # terminal 3
//! ```

use std::collections::HashSet;

use glare::client::WatchEvent;
use glare::{ChannelOptions, Config, Connection, Message, Peer};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::broadcast;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let name = args.next().unwrap_or_else(|| "anonymous".into());
    let room = "chat-room";

    let peer = Peer::new(&url, Config::default()).await?;
    let sid = peer
        .host([room], serde_json::json!({ "name": name }), true)
        .await?;
    eprintln!("[{name} is {sid}; waiting for others in {room}]");

    // Lines typed here go to every link.
    let (lines, _) = broadcast::channel::<String>(64);
    let stdin_lines = lines.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            let _ = stdin_lines.send(line);
        }
    });

    // Links others start, and links we start for everyone the watch shows.
    let (links_tx, mut links) = tokio::sync::mpsc::unbounded_channel::<Connection>();
    let acceptor = peer.clone();
    let accepted = links_tx.clone();
    tokio::spawn(async move {
        while let Some(c) = acceptor.accept().await {
            let _ = accepted.send(c);
        }
    });
    let mut watch = peer.watch(room).await?;
    let dialler = peer.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            if let WatchEvent::Add(entry) = event
                && entry.sid != sid
                && let Ok(c) = dialler.connect(&entry.sid).await
            {
                let _ = links_tx.send(c);
            }
        }
    });

    let mut seen = HashSet::new();
    while let Some(conn) = links.recv().await {
        if !seen.insert(conn.id()) {
            continue;
        }
        let mut typed = lines.subscribe();
        tokio::spawn(async move {
            conn.connected().await?;
            eprintln!(
                "[connected to {} as {:?}]",
                conn.remote().unwrap_or("?"),
                conn.role()
            );
            // Our channel for what we type; theirs for what they type.
            let out = conn.open_channel("chat", ChannelOptions::default()).await?;
            let reader = conn.clone();
            tokio::spawn(async move {
                while let Some(mut theirs) = reader.accept_channel().await {
                    while let Some(Message::Text(t)) = theirs.recv().await {
                        println!("{t}");
                    }
                }
            });
            while let Ok(line) = typed.recv().await {
                out.send_text(&line).await?;
            }
            Ok::<_, glare::Error>(())
        });
    }
    Ok(())
}
