//! File transfer over a data channel (PROTOCOL.md §5), and echo.
//!
//! The sender opens a reliable, ordered channel labelled [`FILE_LABEL`], sends a
//! text header `{"name","size","sha256"}`, then the bytes as binary messages; the
//! receiver checks the SHA-256 and answers `{"ok":true,"sha256":…}` or
//! `{"ok":false,"error":…}`; the sender closes the channel after reading it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::{ChannelOptions, Connection, DataChannel, Error, ErrorKind, Message};

/// The label of file-transfer channels.
pub const FILE_LABEL: &str = "glare-file";
/// The size of the binary messages a file is cut into.
pub const CHUNK: usize = 16 * 1024;
/// How long a receiver keeps the link up after its acknowledgement if the sender
/// does not close the channel.
pub const ACK_LINGER: Duration = Duration::from_secs(3);
/// How long a sender waits for the acknowledgement once every byte is written.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// The first message of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The file's name (a bare name: no directories).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Ack {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What a finished transfer moved.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The file's name.
    pub name: String,
    /// Bytes moved.
    pub size: u64,
    /// The verified SHA-256 (hex).
    pub sha256: String,
    /// From the header to the last byte (receiver) or to the acknowledgement
    /// (sender).
    pub elapsed: Duration,
    /// Where the receiver saved it (`None` for the sender, or when discarded).
    pub path: Option<PathBuf>,
}

impl Report {
    /// Throughput in megabits per second (10^6 bits).
    pub fn mbps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.size as f64 * 8.0 / secs / 1e6
    }
}

/// A SHA-256 being computed.
#[derive(Clone)]
pub struct Sha256(Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self(Context::new(&SHA256))
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest as 64 lowercase hex digits.
    pub fn finish_hex(self) -> String {
        hex(self.0.finish().as_ref())
    }

    /// The SHA-256 of `data`, hex.
    pub fn hex_of(data: &[u8]) -> String {
        let mut h = Self::default();
        h.update(data);
        h.finish_hex()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn protocol(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

/// Checks a file name from the network: a bare name, no path, at most 255 bytes.
pub fn safe_name(name: &str) -> Result<&str, Error> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(protocol(format!("unsafe file name {name:?}")));
    }
    Ok(name)
}

/// The SHA-256 and size of a file, reading it once.
pub async fn hash_file(path: &Path) -> Result<(u64, String), Error> {
    let mut f = tokio::fs::File::open(path).await.map_err(|e| {
        Error::with_source(ErrorKind::Io, format!("cannot open {}", path.display()), e)
    })?;
    let mut h = Sha256::default();
    let mut buf = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, h.finish_hex()))
}

/// Sends the file at `path` over a new [`FILE_LABEL`] channel on `conn` and waits
/// for the receiver's verdict. `progress` is called with the bytes written so far.
pub async fn send_file(
    conn: &Connection,
    path: &Path,
    progress: impl FnMut(u64),
) -> Result<Report, Error> {
    let (size, sha256) = hash_file(path).await?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the file has no usable name"))?;
    let header = Header {
        name: safe_name(name)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("unsendable name {name:?}")))?
            .to_owned(),
        size,
        sha256,
    };
    let file = tokio::fs::File::open(path).await?;
    send_reader(conn, header, file, progress).await
}

/// Sends `header.size` bytes read from `reader` (whose SHA-256 the header states)
/// over a new [`FILE_LABEL`] channel, and waits for the receiver's verdict.
pub async fn send_reader(
    conn: &Connection,
    header: Header,
    mut reader: impl AsyncRead + Unpin,
    mut progress: impl FnMut(u64),
) -> Result<Report, Error> {
    let mut chan = conn
        .open_channel(FILE_LABEL, ChannelOptions::default())
        .await?;
    let text = serde_json::to_string(&header)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "header", e))?;
    chan.opened().await?;
    let start = Instant::now();
    chan.send_text(&text).await?;
    let mut sent = 0u64;
    let sender = chan.sender();
    while sent < header.size {
        let want = CHUNK.min((header.size - sent) as usize);
        let mut buf = vec![0; want];
        reader.read_exact(&mut buf).await.map_err(|e| {
            Error::with_source(ErrorKind::Io, "the source ended before its stated size", e)
        })?;
        sender.send(Bytes::from(buf)).await?;
        sent += want as u64;
        progress(sent);
    }
    finish_send(&mut chan, header, start).await
}

/// Sends `data` (in memory) as a file named `name`.
pub async fn send_bytes(
    conn: &Connection,
    name: &str,
    data: Bytes,
    mut progress: impl FnMut(u64),
) -> Result<Report, Error> {
    let header = Header {
        name: safe_name(name)?.to_owned(),
        size: data.len() as u64,
        sha256: Sha256::hex_of(&data),
    };
    let mut chan = conn
        .open_channel(FILE_LABEL, ChannelOptions::default())
        .await?;
    let text = serde_json::to_string(&header)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "header", e))?;
    chan.opened().await?;
    let start = Instant::now();
    chan.send_text(&text).await?;
    let mut sent = 0;
    while sent < data.len() {
        let end = (sent + CHUNK).min(data.len());
        chan.send(data.slice(sent..end)).await?;
        sent = end;
        progress(sent as u64);
    }
    finish_send(&mut chan, header, start).await
}

async fn finish_send(
    chan: &mut DataChannel,
    header: Header,
    start: Instant,
) -> Result<Report, Error> {
    let answer = tokio::time::timeout(ACK_TIMEOUT, chan.recv())
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "no acknowledgement from the receiver"))?
        .ok_or_else(|| Error::closed("the channel closed before the acknowledgement"))?;
    let elapsed = start.elapsed();
    chan.close().await;
    let Message::Text(text) = answer else {
        return Err(protocol("the acknowledgement is not text"));
    };
    let ack: Ack = serde_json::from_str(&text)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "bad acknowledgement", e))?;
    if !ack.ok {
        return Err(protocol(format!(
            "the receiver refused the file: {}",
            ack.error.unwrap_or_default()
        )));
    }
    if ack.sha256.as_deref() != Some(header.sha256.as_str()) {
        return Err(protocol("the receiver acknowledged another SHA-256"));
    }
    Ok(Report {
        name: header.name,
        size: header.size,
        sha256: header.sha256,
        elapsed,
        path: None,
    })
}

/// Receives one file on `chan` (a channel labelled [`FILE_LABEL`]): saves it in
/// `dir` (or only hashes it when `dir` is `None`), answers the sender, and waits
/// (up to [`ACK_LINGER`]) for the sender to close the channel. `progress` is called
/// with the bytes received so far.
pub async fn receive_file(
    mut chan: DataChannel,
    dir: Option<&Path>,
    mut progress: impl FnMut(u64),
) -> Result<Report, Error> {
    let first = chan
        .recv()
        .await
        .ok_or_else(|| Error::closed("the channel closed before the file header"))?;
    let header: Header = match &first {
        Message::Text(t) => serde_json::from_str(t)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "bad file header", e))?,
        Message::Binary(_) => return Err(protocol("the file header is not text")),
    };
    let result = receive_body(&mut chan, &header, dir, &mut progress).await;
    let ack = match &result {
        Ok(r) => Ack {
            ok: true,
            sha256: Some(r.sha256.clone()),
            error: None,
        },
        Err(e) => Ack {
            ok: false,
            sha256: None,
            error: Some(e.to_string()),
        },
    };
    let text = serde_json::to_string(&ack).unwrap_or_else(|_| r#"{"ok":false}"#.into());
    if chan.send_text(&text).await.is_ok() {
        // Keep the link up until the sender has the answer and closes the channel.
        let _ =
            tokio::time::timeout(ACK_LINGER, async { while chan.recv().await.is_some() {} }).await;
    }
    result
}

async fn receive_body(
    chan: &mut DataChannel,
    header: &Header,
    dir: Option<&Path>,
    progress: &mut impl FnMut(u64),
) -> Result<Report, Error> {
    let name = safe_name(&header.name)?;
    if header.sha256.len() != 64 || !header.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(protocol("the header's sha256 is not 64 hex digits"));
    }
    let (mut file, part, path) = match dir {
        Some(dir) => {
            let part = dir.join(format!(".{name}.glare-part"));
            let f = tokio::fs::File::create(&part).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Io,
                    format!("cannot create {}", part.display()),
                    e,
                )
            })?;
            (Some(f), Some(part), Some(dir.join(name)))
        }
        None => (None, None, None),
    };
    let start = Instant::now();
    let outcome = async {
        let mut h = Sha256::default();
        let mut got = 0u64;
        while got < header.size {
            let m = chan
                .recv()
                .await
                .ok_or_else(|| Error::closed("the channel closed mid-file"))?;
            let Message::Binary(b) = m else {
                return Err(protocol("a text message inside the file's bytes"));
            };
            got += b.len() as u64;
            if got > header.size {
                return Err(protocol("more bytes than the header's size"));
            }
            h.update(&b);
            if let Some(f) = file.as_mut() {
                f.write_all(&b).await?;
            }
            progress(got);
        }
        if let Some(f) = file.as_mut() {
            f.flush().await?;
        }
        let sha = h.finish_hex();
        if !sha.eq_ignore_ascii_case(&header.sha256) {
            return Err(protocol(format!(
                "SHA-256 mismatch: header {}, received {sha}",
                header.sha256
            )));
        }
        Ok(sha)
    }
    .await;
    let elapsed = start.elapsed();
    drop(file);
    match outcome {
        Ok(sha256) => {
            if let (Some(part), Some(path)) = (&part, &path) {
                tokio::fs::rename(part, path).await?;
            }
            Ok(Report {
                name: name.to_owned(),
                size: header.size,
                sha256,
                elapsed,
                path,
            })
        }
        Err(e) => {
            if let Some(part) = &part {
                let _ = tokio::fs::remove_file(part).await;
            }
            Err(e)
        }
    }
}

/// Echoes every message on `chan` back unchanged (text as text, binary as binary)
/// until it closes (PROTOCOL.md §5, `--echo`). Returns the messages echoed.
pub async fn echo(mut chan: DataChannel) -> u64 {
    let mut n = 0;
    while let Some(m) = chan.recv().await {
        let sent = match m {
            Message::Text(t) => chan.send_text(&t).await,
            Message::Binary(b) => chan.send(b).await,
        };
        if sent.is_err() {
            break;
        }
        n += 1;
    }
    n
}
