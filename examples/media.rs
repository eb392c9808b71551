//! Media tracks: sends a generated VP8 video track (a grey 160×120 picture, one key
//! frame every 33 ms, written by the tiny encoder below) and an Opus audio track (20 ms
//! frames of silence), and counts the frames of every track the other side sends.
//!
//! One side hosts a session (and prints `sid SID`), the other dials it; both send and
//! count. Either side may be a browser (interop/ drives Chromium's fake camera and
//! microphone against it).
//!
//! ```sh
//! cargo run --release -- broker --listen 127.0.0.1:8080
//! cargo run --release --example media -- --broker http://127.0.0.1:8080
//! cargo run --release --example media -- --broker http://127.0.0.1:8080 --dial SID
//! ```
//!
//! Flags: `--broker URL` (required), `--tag T` (repeatable; default `media`), `--dial SID`,
//! `--seconds N` (how long to stream once connected; default 10), `--expect N` (frames
//! of each kind, audio and video, that must arrive; default 30; 0: no check), `--no-send`.
//!
//! Stdout, one line each: `sid SID`, `connected REMOTE role=polite|impolite ms=N`,
//! `track REMOTE audio|video` per track the peer adds on an m-line of its own (a
//! browser that adds its track after ours sends it on our m-line instead: its frames
//! count all the same), `frames audio|video N` when `--expect` frames of that kind have
//! arrived, and at the end
//! `total received video=N audio=N sent video=N audio=N`. Exits 1 if fewer than
//! `--expect` frames of a kind arrived. It stops after `--seconds`, when the link
//! closes, or on SIGINT/SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use glare::{Config, Connection, Direction, MediaKind, Peer, Role, Track};
use tokio::signal::unix::{SignalKind, signal};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: media --broker URL [--tag T]... [--dial SID] [--seconds N] [--expect N] [--no-send]";

struct Args {
    broker: String,
    tags: Vec<String>,
    dial: Option<String>,
    seconds: u64,
    expect: u64,
    send: bool,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        broker: String::new(),
        tags: Vec::new(),
        dial: None,
        seconds: 10,
        expect: 30,
        send: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--broker" => args.broker = value()?,
            "--tag" => args.tags.push(value()?),
            "--dial" => args.dial = Some(value()?),
            "--seconds" => args.seconds = value()?.parse()?,
            "--expect" => args.expect = value()?.parse()?,
            "--no-send" => args.send = false,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}").into()),
        }
    }
    if args.broker.is_empty() {
        return Err(USAGE.into());
    }
    if args.tags.is_empty() {
        args.tags.push("media".into());
    }
    Ok(args)
}

/// Frames received per kind: `[audio, video]`.
#[derive(Default)]
struct Counts([AtomicU64; 2]);

fn slot(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        _ => 1,
    }
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        _ => "video",
    }
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("media: {e}");
            std::process::exit(2);
        }
    }
}

/// `Ok(false)`: the link ran but fewer than `--expect` frames of a kind arrived.
async fn run() -> Result<bool, BoxError> {
    let args = parse_args()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let peer = Peer::new(&args.broker, Config::default()).await?;
    let sid = peer
        .host(&args.tags, serde_json::json!({"example": "media"}), true)
        .await?;
    println!("sid {sid}");
    let conn = match &args.dial {
        Some(remote) => peer.connect(remote).await?,
        None => tokio::select! {
            c = peer.accept() => c.ok_or("the peer closed before a link arrived")?,
            _ = term.recv() => return Ok(false),
            _ = int.recv() => return Ok(false),
        },
    };
    conn.connected().await?;
    let role = match conn.role() {
        Some(Role::Polite) => "polite",
        Some(Role::Impolite) => "impolite",
        None => "unknown",
    };
    let ms = conn.connect_time().unwrap_or_default().as_millis();
    println!(
        "connected {} role={role} ms={ms}",
        conn.remote().unwrap_or("?")
    );

    let counts = Arc::new(Counts::default());
    let sent = Arc::new(Counts::default());
    let conn = Arc::new(conn);
    tokio::spawn(count_remote_tracks(
        Arc::clone(&conn),
        Arc::clone(&counts),
        args.expect,
    ));
    if args.send {
        for kind in [MediaKind::Video, MediaKind::Audio] {
            // SendRecv, as browsers add tracks: a browser's own track of the same kind
            // may then ride on this m-line (`addTrack` reuses it), and its frames arrive
            // on this Track.
            let track = conn.add_track(kind, Direction::SendRecv).await?;
            tokio::spawn(run_local_track(
                track,
                Arc::clone(&counts),
                Arc::clone(&sent),
                args.expect,
            ));
        }
    }

    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
        _ = conn.closed() => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    conn.close("done").await;
    peer.close().await;
    let got = |c: &Counts, k: MediaKind| c.0[slot(k)].load(Ordering::Relaxed);
    let (video, audio) = (
        got(&counts, MediaKind::Video),
        got(&counts, MediaKind::Audio),
    );
    println!(
        "total received video={video} audio={audio} sent video={} audio={}",
        got(&sent, MediaKind::Video),
        got(&sent, MediaKind::Audio)
    );
    Ok(video >= args.expect && audio >= args.expect)
}

/// Counts the frames of every track the peer adds.
async fn count_remote_tracks(conn: Arc<Connection>, counts: Arc<Counts>, expect: u64) {
    while let Some(mut track) = conn.accept_track().await {
        println!(
            "track {} {}",
            conn.remote().unwrap_or("?"),
            kind_name(track.kind())
        );
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            while track.recv_frame().await.is_some() {
                count(&counts, track.kind(), expect);
            }
        });
    }
}

/// Counts one received frame; prints `frames KIND N` once `expect` frames of a kind
/// have arrived.
fn count(counts: &Counts, kind: MediaKind, expect: u64) {
    let n = counts.0[slot(kind)].fetch_add(1, Ordering::Relaxed) + 1;
    if n == expect {
        println!("frames {} {n}", kind_name(kind));
    }
}

/// Writes frames to a track this side added, in real time, until the track or the link
/// ends: VP8 at 30 frames/s (90 kHz clock), Opus every 20 ms (48 kHz clock). Counts the
/// frames the peer sends on the same m-line.
async fn run_local_track(mut track: Track, counts: Arc<Counts>, sent: Arc<Counts>, expect: u64) {
    if track.opened().await.is_err() {
        return;
    }
    let kind = track.kind();
    let (period, ticks, frame) = match kind {
        MediaKind::Audio => (Duration::from_millis(20), 960, OPUS_SILENCE.to_vec()),
        _ => (Duration::from_millis(33), 3000, vp8_key_frame(160, 120)),
    };
    let mut clock = tokio::time::interval(period);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rtp_time = 0u64;
    loop {
        tokio::select! {
            _ = clock.tick() => {
                if track.write_frame(rtp_time, &frame).await.is_err() {
                    return;
                }
                sent.0[slot(kind)].fetch_add(1, Ordering::Relaxed);
                rtp_time += ticks;
            }
            got = track.recv_frame() => match got {
                Some(_) => count(&counts, kind, expect),
                None => return,
            },
        }
    }
}

/// One Opus packet (RFC 6716): TOC 0xF8 (CELT-only, fullband, 20 ms, mono, one frame)
/// and a frame that decodes to silence.
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

/// A VP8 key frame (RFC 6386) of a flat grey picture: every macroblock predicted with
/// `DC_PRED` (128 at the picture's edges) and no residual (all skipped), no loop filter,
/// default probabilities. Width and height in pixels (at most 16383).
fn vp8_key_frame(width: u16, height: u16) -> Vec<u8> {
    let mut h = BoolEncoder::default();
    let literal = |h: &mut BoolEncoder, value: u32, bits: u32| {
        for i in (0..bits).rev() {
            h.put(128, (value >> i) & 1 == 1);
        }
    };
    // Frame header (RFC 6386 §9.2–9.11, §19.2).
    literal(&mut h, 0, 1); // color_space: YUV
    literal(&mut h, 0, 1); // clamping_type: clamped
    literal(&mut h, 0, 1); // segmentation_enabled
    literal(&mut h, 0, 1); // filter_type
    literal(&mut h, 0, 6); // loop_filter_level: off
    literal(&mut h, 0, 3); // sharpness_level
    literal(&mut h, 0, 1); // loop_filter_adj_enable
    literal(&mut h, 0, 2); // log2_nbr_of_dct_partitions: one
    literal(&mut h, 10, 7); // y_ac_qi
    literal(&mut h, 0, 5); // no y_dc, y2_dc, y2_ac, uv_dc, uv_ac deltas
    literal(&mut h, 1, 1); // refresh_entropy_probs
    for p in COEFF_UPDATE_PROBS.iter().flatten() {
        h.put(*p, false); // keep every default token probability
    }
    literal(&mut h, 1, 1); // mb_no_coeff_skip
    const PROB_SKIP_FALSE: u8 = 1;
    literal(&mut h, u32::from(PROB_SKIP_FALSE), 8);
    // Macroblock headers (§19.3): skipped, luma DC_PRED, chroma DC_PRED.
    let mbs = u32::from(width.div_ceil(16)) * u32::from(height.div_ceil(16));
    for _ in 0..mbs {
        h.put(PROB_SKIP_FALSE, true); // mb_skip_coeff
        // kf_ymode_tree with kf_ymode_prob {145, 156, 163, 128}: 1, 0, 0 is DC_PRED.
        h.put(145, true);
        h.put(156, false);
        h.put(163, false);
        // uv_mode_tree with kf_uv_mode_prob {142, 114, 183}: 0 is DC_PRED.
        h.put(142, false);
    }
    let first = h.finish();
    // The token partition: no macroblock has residual tokens.
    let tokens = BoolEncoder::default().finish();

    let size = u32::try_from(first.len()).expect("a small frame header");
    // Frame tag (§9.1): key frame (0), version 0, show_frame, first partition size.
    let tag = (size << 5) | (1 << 4);
    let mut out = Vec::with_capacity(10 + first.len() + tokens.len());
    out.extend_from_slice(&tag.to_le_bytes()[..3]);
    out.extend_from_slice(&[0x9D, 0x01, 0x2A]); // start code
    out.extend_from_slice(&(width & 0x3FFF).to_le_bytes()); // no horizontal scaling
    out.extend_from_slice(&(height & 0x3FFF).to_le_bytes());
    out.extend_from_slice(&first);
    out.extend_from_slice(&tokens);
    out
}

/// VP8's boolean entropy encoder (RFC 6386 §7): each bit is coded with the probability
/// (in 1/256) that it is 0.
struct BoolEncoder {
    out: Vec<u8>,
    range: u32,
    bottom: u32,
    bit_count: u32,
}

impl Default for BoolEncoder {
    fn default() -> Self {
        Self {
            out: Vec::new(),
            range: 255,
            bottom: 0,
            bit_count: 24,
        }
    }
}

impl BoolEncoder {
    fn put(&mut self, prob: u8, bit: bool) {
        let split = 1 + (((self.range - 1) * u32::from(prob)) >> 8);
        if bit {
            self.bottom = self.bottom.wrapping_add(split);
            self.range -= split;
        } else {
            self.range = split;
        }
        while self.range < 128 {
            self.range <<= 1;
            if self.bottom & (1 << 31) != 0 {
                // Carry into the bytes already written.
                for byte in self.out.iter_mut().rev() {
                    if *byte == 0xFF {
                        *byte = 0;
                    } else {
                        *byte += 1;
                        break;
                    }
                }
            }
            self.bottom <<= 1;
            self.bit_count -= 1;
            if self.bit_count == 0 {
                self.out.push((self.bottom >> 24) as u8);
                self.bottom &= (1 << 24) - 1;
                self.bit_count = 8;
            }
        }
    }

    /// Pads with zero bits until everything coded so far is in the output.
    fn finish(mut self) -> Vec<u8> {
        for _ in 0..32 {
            self.put(128, false);
        }
        self.out
    }
}

/// The probability that each token probability is updated in a frame header, one row
/// of 11 per block type (4) × coefficient band (8) × context (3): RFC 6386 §13.4.
#[rustfmt::skip]
const COEFF_UPDATE_PROBS: [[u8; 11]; 96] = [
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [176, 246, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [223, 241, 252, 255, 255, 255, 255, 255, 255, 255, 255],
    [249, 253, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 244, 252, 255, 255, 255, 255, 255, 255, 255, 255],
    [234, 254, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [253, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 246, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [239, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 255, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 248, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [251, 255, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [251, 254, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 255, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 254, 253, 255, 254, 255, 255, 255, 255, 255, 255],
    [250, 255, 254, 255, 254, 255, 255, 255, 255, 255, 255],
    [254, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [217, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [225, 252, 241, 253, 255, 255, 254, 255, 255, 255, 255],
    [234, 250, 241, 250, 253, 255, 253, 254, 255, 255, 255],
    [255, 254, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [223, 254, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [238, 253, 254, 254, 255, 255, 255, 255, 255, 255, 255],
    [255, 248, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [249, 254, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 253, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [247, 254, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [252, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 254, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [253, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 254, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [250, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [186, 251, 250, 255, 255, 255, 255, 255, 255, 255, 255],
    [234, 251, 244, 254, 255, 255, 255, 255, 255, 255, 255],
    [251, 251, 243, 253, 254, 255, 254, 255, 255, 255, 255],
    [255, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [236, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [251, 253, 253, 254, 254, 255, 255, 255, 255, 255, 255],
    [255, 254, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 254, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 254, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 254, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [248, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [250, 254, 252, 254, 255, 255, 255, 255, 255, 255, 255],
    [248, 254, 249, 253, 255, 255, 255, 255, 255, 255, 255],
    [255, 253, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [246, 253, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [252, 254, 251, 254, 254, 255, 255, 255, 255, 255, 255],
    [255, 254, 252, 255, 255, 255, 255, 255, 255, 255, 255],
    [248, 254, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [253, 255, 254, 254, 255, 255, 255, 255, 255, 255, 255],
    [255, 251, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [245, 251, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [253, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 251, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [252, 253, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 254, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 252, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [249, 255, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 254, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 253, 255, 255, 255, 255, 255, 255, 255, 255],
    [250, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [254, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
    [255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
];
