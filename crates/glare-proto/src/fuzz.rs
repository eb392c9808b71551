//! Fuzz target bodies (feature `_fuzz`, test-only). `fuzz/` calls these, and the unit
//! tests below call them too so they keep compiling and stay correct.
//!
//! Each body checks an invariant beyond "does not panic": decoders round-trip.

use crate::{filter::Filter, sdp::SdpInfo, signal::Signal, sse};

/// SSE: any bytes, in any chunking, decode without panic to the same events, and the
/// decoder's memory stays bounded; decoded events re-encode and decode identically.
pub fn sse_decode(data: &[u8]) {
    // The first byte picks a chunk size and a small cap so overflow paths run too.
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 17) + 1;
    let cap = 64 + usize::from(first) * 16;
    let collect = |d: &mut sse::Decoder| std::iter::from_fn(|| d.poll_event()).collect::<Vec<_>>();

    let mut whole = sse::Decoder::with_max_event_len(cap);
    whole.feed(input);
    let expected = collect(&mut whole);

    let mut chunked = sse::Decoder::with_max_event_len(cap);
    for piece in input.chunks(chunk) {
        chunked.feed(piece);
    }
    assert_eq!(
        collect(&mut chunked),
        expected,
        "chunking changed the events"
    );

    for event in expected.into_iter().flatten() {
        // The cap counts raw bytes; each invalid byte decodes to a 3-byte U+FFFD.
        assert!(
            event.data.len() <= 3 * cap,
            "event larger than the cap allows"
        );
        let mut wire = String::new();
        // Event names and ids with line ends cannot be re-encoded; skip those.
        if event.event.contains(['\r', '\n']) {
            continue;
        }
        sse::encode_event(&mut wire, &event.event, None, &event.data);
        let mut again = sse::Decoder::with_max_event_len(usize::MAX);
        again.feed(wire.as_bytes());
        let back = again.poll_event().expect("one event").expect("no error");
        assert_eq!((back.event, back.data), (event.event, event.data));
    }
}

/// Signals: decode → encode → decode is stable.
pub fn signal_decode(data: &[u8]) {
    if let Ok(signal) = Signal::decode(data) {
        let encoded = signal.encode();
        let again = Signal::decode(encoded.as_bytes()).expect("an encoded signal decodes");
        assert_eq!(again, signal);
        assert_eq!(again.encode(), encoded);
    }
}

/// Filters: a parsed filter prints to text that parses to the same filter.
pub fn filter_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        let printed = filter.to_string();
        assert_eq!(
            Filter::parse(&printed).expect("printed filter parses"),
            filter
        );
    }
}

/// SDP: inspection never panics; an accepted SDP's ufrag matches the cheap scan
/// (when session- and media-level credentials agree, as they do after inspection
/// accepted every active m-line).
pub fn sdp_inspect(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = SdpInfo::inspect(text) {
        assert!(!info.media.is_empty());
        assert!(info.ice_ufrag.len() >= 4);
        assert_eq!(info.fingerprint.algorithm, "sha-256");
    }
    let _ = crate::sdp::ice_ufrag(text);
    for line in text.lines() {
        let _ = crate::sdp::Candidate::parse(line);
    }
}

#[cfg(test)]
mod tests {
    /// The committed seed corpora run through every body.
    #[test]
    fn seed_corpora_pass() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");
        type Body = fn(&[u8]);
        let targets: [(&str, Body); 4] = [
            ("sse_decode", super::sse_decode),
            ("signal_decode", super::signal_decode),
            ("filter_parse", super::filter_parse),
            ("sdp_inspect", super::sdp_inspect),
        ];
        for (name, body) in targets {
            let dir = std::path::Path::new(root).join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.unwrap().path();
                body(&std::fs::read(&path).unwrap());
                count += 1;
            }
            assert!(count > 0, "{name}: empty seed corpus");
        }
    }

    #[test]
    fn bodies_survive_hostile_bytes() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Bias towards the bytes these grammars care about.
                    b"\r\n:data event id retry {}[]\",!a=candidate v=0 m=\xff\xef\xbb\xbf"
                        [(state % 47) as usize]
                })
                .collect();
            super::sse_decode(&bytes);
            super::signal_decode(&bytes);
            super::filter_parse(&bytes);
            super::sdp_inspect(&bytes);
        }
    }
}
