//! File transfer (PROTOCOL.md §5): one side receives into a directory and prints its
//! session id; the other sends a file to that session. The SHA-256 is checked by the
//! receiver and confirmed to the sender.
//!
//! ```sh
//! cargo run --release -- broker --listen 127.0.0.1:8080
//! cargo run --example file_transfer -- http://127.0.0.1:8080 recv /tmp
//! cargo run --example file_transfer -- http://127.0.0.1:8080 send SID ./Cargo.lock
//! ```

use std::path::Path;

use glare::file::{self, FILE_LABEL};
use glare::{Config, Peer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: file_transfer URL recv DIR | file_transfer URL send SID FILE";
    let (url, mode) = match (args.first(), args.get(1)) {
        (Some(u), Some(m)) => (u.as_str(), m.as_str()),
        _ => return Err(usage.into()),
    };
    let peer = Peer::new(url, Config::default()).await?;
    match (mode, args.get(2), args.get(3)) {
        ("recv", Some(dir), None) => {
            let sid = peer.host(["files"], serde_json::Value::Null, true).await?;
            println!("receiving as {sid}");
            let conn = peer.accept().await.ok_or("peer closed")?;
            while let Some(chan) = conn.accept_channel().await {
                if chan.label() == FILE_LABEL {
                    let r = file::receive_file(chan, Some(Path::new(dir)), |_| {}).await?;
                    println!(
                        "received {} ({} bytes, sha256 {}) at {:.1} Mbit/s",
                        r.name,
                        r.size,
                        r.sha256,
                        r.mbps()
                    );
                    break;
                }
            }
        }
        ("send", Some(sid), Some(path)) => {
            let conn = peer.connect(sid).await?;
            conn.connected().await?;
            let r = file::send_file(&conn, Path::new(path), |_| {}).await?;
            println!(
                "sent {} ({} bytes), receiver verified sha256 {} at {:.1} Mbit/s",
                r.name,
                r.size,
                r.sha256,
                r.mbps()
            );
            conn.close("done").await;
        }
        _ => return Err(usage.into()),
    }
    peer.close().await;
    Ok(())
}
