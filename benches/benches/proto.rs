//! glare-proto decoders: signals, SSE, filters, SDP inspection.
//!
//! `cargo bench -p glare-benches --bench proto`
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glare_proto::{
    filter::{Filter, Tag},
    sdp::SdpInfo,
    signal::Signal,
    sse,
};

const OFFER_SDP: &str = include_str!("../../fuzz/corpus/sdp_inspect/chromium_offer");

fn offer_signal() -> Vec<u8> {
    format!(
        r#"{{"description":{{"type":"offer","sdp":{}}},"tieBreaker":5210744310913}}"#,
        serde_json_string(OFFER_SDP)
    )
    .into_bytes()
}

/// JSON string literal for `s` (the SDP has only CR/LF to escape).
fn serde_json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\r', "\\r").replace('\n', "\\n"))
}

fn signals(c: &mut Criterion) {
    let offer = offer_signal();
    let candidate = br#"{"candidate":{"candidate":"candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Fx3b"}}"#;
    let mut g = c.benchmark_group("signal");
    g.throughput(Throughput::Bytes(offer.len() as u64));
    g.bench_function("decode_offer", |b| {
        b.iter(|| Signal::decode(black_box(&offer)));
    });
    g.throughput(Throughput::Bytes(candidate.len() as u64));
    g.bench_function("decode_candidate", |b| {
        b.iter(|| Signal::decode(black_box(candidate)));
    });
    g.finish();
}

/// A broker channel stream: 1,000 `message` events of about 200 bytes, fed in 4 KiB
/// chunks as a socket would deliver them.
fn sse_stream(c: &mut Criterion) {
    let mut wire = String::new();
    for id in 1..=1000u64 {
        let data = format!(
            r#"{{"origin":"a1b2c3d4e5f6a1b2c3d4e5f6","target":"f6e5d4c3b2a1f6e5d4c3b2a1","message":{{"candidate":{{"candidate":"candidate:1 1 udp 2130706431 192.0.2.2 {id} typ host","usernameFragment":"Fx3b"}}}}}}"#
        );
        sse::encode_event(&mut wire, "message", Some(id), &data);
    }
    let bytes = wire.into_bytes();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decode_1000_messages_4k_chunks", |b| {
        b.iter(|| {
            let mut d = sse::Decoder::new();
            let mut n = 0;
            for chunk in bytes.chunks(4096) {
                d.feed(chunk);
                while let Some(e) = d.poll_event() {
                    n += e.map_or(0, |e| e.data.len());
                }
            }
            n
        });
    });
    g.finish();
}

fn sdp(c: &mut Criterion) {
    let mut g = c.benchmark_group("sdp");
    g.throughput(Throughput::Bytes(OFFER_SDP.len() as u64));
    g.bench_function("inspect_browser_offer", |b| {
        b.iter(|| SdpInfo::inspect(black_box(OFFER_SDP)));
    });
    g.finish();
}

fn filter(c: &mut Criterion) {
    let f = Filter::parse("chat,eu,!private").expect("valid filter");
    let tags: Vec<Tag> = ["video", "chat", "eu", "beta"]
        .iter()
        .map(|t| Tag::new(*t).expect("valid tag"))
        .collect();
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| Filter::parse(black_box("chat,eu,!private")));
    });
    g.bench_function("matches", |b| b.iter(|| f.matches(black_box(&tags))));
    g.finish();
}

criterion_group!(benches, signals, sse_stream, sdp, filter);
criterion_main!(benches);
