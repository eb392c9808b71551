//! Fuzz target bodies (feature `_fuzz`, test-only). `fuzz/` calls these, and the unit
//! tests below call them too so they keep compiling and stay correct.
//!
//! Each body checks an invariant beyond "does not panic": decoders round-trip.

use serde_json::Value;

use crate::{
    broker::{
        ChannelAuth, CreateSession, ErrorBody, ErrorCode, Limits, ListEntry, MessageEvent, Send,
        SessionInfo, UpdateSession, WsSend, WsServerFrame, compact, compact_len, compact_raw,
        parse_request,
    },
    filter::{Filter, Tag},
    sdp::SdpInfo,
    signal::Signal,
    sse,
};

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

/// Broker request input: everything `glare-broker` parses from an HTTP or WebSocket
/// client (the §1 bodies, `/ws` frames, the `/list` and resume query strings), plus the
/// `/ws` server frames a client parses. Every decoder sees every input. Checks: no
/// panic; whatever decodes re-encodes to text that decodes to an equal value; the
/// §1.7 limits hold on the compact size, which matches an independent count; what the
/// broker builds from an accepted body (compacted metadata and messages, list entries,
/// message events, acks and error frames) decodes on the client side unchanged.
pub fn broker_body(data: &[u8]) {
    let limits = [
        Limits::default(),
        // Tiny limits so the 413 and tag-count paths run on small inputs too.
        Limits {
            max_message: 16,
            max_metadata: 8,
            max_tags: 2,
            ..Limits::default()
        },
    ];
    create_session(data, &limits);
    update_session(data, &limits);
    send(data, &limits);
    channel_auth(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    ws_send(text, &limits);
    ws_server_frame(text);
    query(text);
}

/// Serializes a value the broker or a client would send, and parses it back.
fn reparse<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let text = serde_json::to_string(value).expect("a decoded body serializes");
    parse_request(text.as_bytes()).unwrap_or_else(|e| panic!("re-encoded {text} fails: {e}"))
}

fn create_session(data: &[u8], limits: &[Limits]) {
    let Ok(c) = parse_request::<CreateSession>(data) else {
        return;
    };
    let again = reparse(&c);
    assert_eq!(
        (&again.cid, &again.key, &again.tags, again.list),
        (&c.cid, &c.key, &c.tags, c.list)
    );
    assert_eq!(again.metadata.get(), c.metadata.get());
    for l in limits {
        check_tags(&c.tags, c.validate(l), l, Some(c.metadata.get()));
    }
    // What the broker stores and lists: compact metadata, in a list entry.
    let metadata = check_compact(c.metadata);
    let entry = ListEntry {
        sid: "s1".to_owned(),
        session: SessionInfo {
            tags: c.tags,
            metadata,
        },
    };
    let text = serde_json::to_string(&entry).expect("a list entry serializes");
    let back: ListEntry = serde_json::from_str(&text).expect("a list entry decodes");
    assert_eq!(back, entry);
    let list: Vec<ListEntry> =
        serde_json::from_str(&format!("[{text},{text}]")).expect("a list decodes");
    assert_eq!(list.len(), 2);
    assert_eq!(sse_round_trip("add", None, &text), text);
}

fn update_session(data: &[u8], limits: &[Limits]) {
    let Ok(u) = parse_request::<UpdateSession>(data) else {
        return;
    };
    let again = reparse(&u);
    assert_eq!(
        (
            &again.cid,
            &again.key,
            &again.values.tags,
            again.values.list
        ),
        (&u.cid, &u.key, &u.values.tags, u.values.list)
    );
    assert_eq!(
        again.values.metadata.as_ref().map(|m| m.get()),
        u.values.metadata.as_ref().map(|m| m.get())
    );
    for l in limits {
        let result = u.validate(l);
        match &u.values.tags {
            Some(tags) => {
                check_tags(tags, result, l, u.values.metadata.as_ref().map(|m| m.get()));
            }
            None => check_size(
                u.values.metadata.as_ref().map(|m| m.get()),
                l.max_metadata,
                result,
            ),
        }
    }
    if let Some(m) = u.values.metadata {
        check_compact(m);
    }
}

fn send(data: &[u8], limits: &[Limits]) {
    let Ok(s) = parse_request::<Send>(data) else {
        return;
    };
    let again = reparse(&s);
    assert_eq!((&again.origin, &again.key), (&s.origin, &s.key));
    assert_eq!(again.message.get(), s.message.get());
    for l in limits {
        check_size(Some(s.message.get()), l.max_message, s.validate(l));
    }
    deliver(check_compact(s.message).get());
}

fn channel_auth(data: &[u8]) {
    if let Ok(a) = parse_request::<ChannelAuth>(data) {
        assert_eq!(reparse(&a), a);
    }
}

fn ws_send(text: &str, limits: &[Limits]) {
    match WsSend::parse(text) {
        Ok(s) => {
            let json = s.to_json();
            let again = WsSend::parse(&json).unwrap_or_else(|e| panic!("{json}: {e:?}"));
            assert_eq!(
                (
                    &again.r#ref,
                    &again.origin,
                    &again.target,
                    again.message.get()
                ),
                (&s.r#ref, &s.origin, &s.target, s.message.get())
            );
            for l in limits {
                let result = crate::broker::validate_message(&s.message, l);
                check_size(Some(s.message.get()), l.max_message, result);
            }
            // The broker's answers echo `ref` as given.
            server_frame_round_trip(&WsServerFrame::Ack {
                r#ref: s.r#ref.clone(),
            });
            server_frame_round_trip(&WsServerFrame::Error {
                r#ref: s.r#ref,
                error: ErrorBody::new(ErrorCode::RateLimited, "slow down"),
                retry_after_ms: Some(u64::MAX),
            });
            deliver(check_compact(s.message).get());
        }
        Err((r#ref, error)) => {
            assert_eq!(error.error, ErrorCode::BadRequest);
            server_frame_round_trip(&WsServerFrame::Error {
                r#ref,
                error,
                retry_after_ms: None,
            });
        }
    }
}

fn ws_server_frame(text: &str) {
    if let Ok(frame) = WsServerFrame::parse(text) {
        server_frame_round_trip(&frame);
    }
}

fn server_frame_round_trip(frame: &WsServerFrame) {
    let json = frame.to_json();
    let back = WsServerFrame::parse(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(&back, frame, "{json}");
    assert_eq!(back.to_json(), json);
}

/// The broker relays a (compacted) message between two ids: as an SSE `message` event
/// and as a `/ws` frame; both decode to the message text unchanged.
fn deliver(message: &str) {
    let data = format!(r#"{{"origin":"o1","target":"t2","message":{message}}}"#);
    let event: MessageEvent = serde_json::from_str(&data).expect("a message event decodes");
    assert_eq!(
        (
            event.origin.as_str(),
            event.target.as_str(),
            event.message.get()
        ),
        ("o1", "t2", message)
    );
    assert_eq!(sse_round_trip("message", Some(17), &data), data);
    server_frame_round_trip(&WsServerFrame::Message {
        id: 17,
        origin: "o1".to_owned(),
        target: "t2".to_owned(),
        message: message.to_owned(),
    });
}

/// Encodes one SSE event and decodes it; gives its data.
fn sse_round_trip(event: &str, id: Option<u64>, data: &str) -> String {
    let mut wire = String::new();
    sse::encode_event(&mut wire, event, id, data);
    let mut decoder = sse::Decoder::new();
    decoder.feed(wire.as_bytes());
    let back = decoder.poll_event().expect("one event").expect("no error");
    assert_eq!(back.event, event);
    assert!(decoder.poll_event().is_none(), "one event only");
    back.data
}

/// `compact_raw` keeps the value (same JSON, same compact size), drops every
/// insignificant whitespace byte and is idempotent.
fn check_compact(value: crate::broker::Json) -> crate::broker::Json {
    let before = value.get().to_owned();
    let compacted = compact_raw(value);
    let text = compacted.get();
    assert_eq!(compact(text), text, "compact is idempotent");
    assert_eq!(compact_len(text), compact_len(&before));
    assert!(text.len() <= before.len());
    // Same value, where `serde_json` can hold it (it stops at 128 levels of nesting).
    if let (Ok(a), Ok(b)) = (
        serde_json::from_str::<Value>(&before),
        serde_json::from_str::<Value>(text),
    ) {
        assert_eq!(a, b, "{before} compacted to {text}");
    }
    compacted
}

/// A second count of a value's compact size: `serde_json` writes each string, every
/// other non-whitespace byte counts one. `None` for strings `serde_json` will not decode
/// (lone surrogates).
fn reference_compact_len(json: &str) -> Option<usize> {
    let bytes = json.as_bytes();
    let mut len = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                let mut end = i + 1;
                while bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                let s: String = serde_json::from_str(&json[i..=end]).ok()?;
                len += serde_json::to_string(&s).ok()?.len();
                i = end + 1;
            }
            _ => {
                len += 1;
                i += 1;
            }
        }
    }
    Some(len)
}

/// A size check answered `result` for `json` under `max`: 413 exactly when the compact
/// size is over it.
fn check_size(json: Option<&str>, max: usize, result: Result<(), ErrorBody>) {
    let Some(json) = json else {
        assert!(result.is_ok());
        return;
    };
    let len = compact_len(json);
    if let Some(want) = reference_compact_len(json) {
        assert_eq!(len, want, "compact size of {json}");
    }
    match result {
        Ok(()) => assert!(len <= max, "{len} > {max} passed"),
        Err(e) => {
            assert_eq!(e.error, ErrorCode::TooLarge, "{e}");
            assert!(len > max, "{len} <= {max} refused");
        }
    }
}

/// Tags are checked first (count, duplicates: 400), then metadata (413).
fn check_tags(tags: &[Tag], result: Result<(), ErrorBody>, l: &Limits, metadata: Option<&str>) {
    let mut unique: Vec<&Tag> = tags.iter().collect();
    unique.sort();
    unique.dedup();
    let tags_ok = tags.len() <= l.max_tags && unique.len() == tags.len();
    if tags_ok {
        check_size(metadata, l.max_metadata, result);
    } else {
        assert_eq!(
            result.expect_err("bad tags pass").error,
            ErrorCode::BadRequest
        );
    }
}

/// A query string, decoded the `application/x-www-form-urlencoded` way the broker's
/// extractor does: a `filter` that parses prints as text that needs no escaping in a
/// URL and parses back to the same filter.
fn query(text: &str) {
    // `GET /channel` and `GET /ws`: the resume fields (the last of each name wins, as
    // in a query decoder that keeps one value).
    let (mut cid, mut key, mut last) = (None, None, None);
    for pair in text.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match form_decode(name).as_str() {
            "cid" => cid = Some(form_decode(value)),
            "key" => key = Some(form_decode(value)),
            "lastEventId" => last = Some(form_decode(value)),
            _ => {}
        }
    }
    let both = cid.is_some() && key.is_some();
    let neither = cid.is_none() && key.is_none();
    match crate::broker::parse_resume(cid, key, last.as_deref()) {
        Ok(None) => assert!(neither, "a half resume opened a new channel"),
        Ok(Some((_, id))) => {
            assert!(both);
            if let Some(text) = &last {
                assert_eq!(
                    text.trim_start_matches('0'),
                    id.to_string().trim_start_matches('0')
                );
            }
        }
        Err(e) => {
            assert_eq!(e.error, ErrorCode::BadRequest, "{e}");
            assert!(!neither, "a new channel refused: {e}");
        }
    }
    // `GET /list` and `/watch`: the filter.
    for pair in text.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name) != "filter" {
            continue;
        }
        if let Ok(filter) = Filter::parse(&form_decode(value)) {
            let printed = filter.to_string();
            assert!(
                printed
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-!,".contains(&b)),
                "{printed:?} needs escaping in a URL"
            );
            assert_eq!(
                Filter::parse(&printed).expect("printed filter parses"),
                filter
            );
        }
    }
}

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            let h = bytes.get(at..at + 2)?;
            let digit = |d: u8| char::from(d).to_digit(16);
            Some((digit(h[0])? * 16 + digit(h[1])?) as u8)
        };
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if hex(i + 1).is_some() => {
                out.extend(hex(i + 1));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    /// The committed seed corpora run through every body.
    #[test]
    fn seed_corpora_pass() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");
        type Body = fn(&[u8]);
        let targets: [(&str, Body); 5] = [
            ("sse_decode", super::sse_decode),
            ("signal_decode", super::signal_decode),
            ("filter_parse", super::filter_parse),
            ("sdp_inspect", super::sdp_inspect),
            ("broker_body", super::broker_body),
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
            super::broker_body(&bytes);
        }
    }
}
