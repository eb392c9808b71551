//! An incremental Server-Sent Events decoder and an encoder.
//!
//! The decoder follows the WHATWG "event stream interpretation": bytes go in in any
//! chunks (a chunk may end anywhere, even between the CR and LF of a line end); lines
//! end with LF, CRLF or CR; `:` starts a comment; `data` lines accumulate (joined by
//! LF); `event`, `id` and `retry` are understood; other fields are ignored; a blank
//! line dispatches the event. Invalid UTF-8 is replaced with U+FFFD, as browsers do.
//!
//! Memory is bounded: an event (all its lines together) larger than
//! [`Decoder::max_event_len`] is dropped whole, reported once as
//! [`SseError::EventTooLarge`], and the decoder carries on with the next event. The cap
//! counts raw bytes; decoded text can be up to three times as long when invalid bytes
//! become U+FFFD.
//!
//! ```
//! use glare_proto::sse::{Decoder, encode_event};
//!
//! let mut wire = String::new();
//! encode_event(&mut wire, "message", Some(17), "{\"a\":1}");
//! let mut decoder = Decoder::new();
//! for byte in wire.as_bytes() {
//!     decoder.feed(std::slice::from_ref(byte)); // any chunking gives the same events
//! }
//! let event = decoder.poll_event().unwrap()?;
//! assert_eq!((event.event.as_str(), event.id.as_deref(), event.data.as_str()),
//!            ("message", Some("17"), "{\"a\":1}"));
//! # Ok::<(), glare_proto::sse::SseError>(())
//! ```

use std::{collections::VecDeque, fmt::Write as _, mem};

/// Default cap on one event's size (its field lines together): 256 KiB, twice the
/// broker's largest request body, so every legitimate glare event fits.
pub const DEFAULT_MAX_EVENT_LEN: usize = 256 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event` field, or `"message"` if the event had none.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
    /// The `id` field given in this event, if any (see also
    /// [`Decoder::last_event_id`], which persists across events as in browsers).
    pub id: Option<String>,
}

/// A decoding error. The decoder stays usable after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// An event exceeded the size cap and was dropped.
    #[error("event exceeds the {max}-byte limit and was dropped")]
    EventTooLarge {
        /// The cap.
        max: usize,
    },
}

/// Incremental SSE decoder: [`feed`](Self::feed) bytes, then
/// [`poll_event`](Self::poll_event) until `None`.
#[derive(Debug)]
pub struct Decoder {
    max_event_len: usize,
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: a leading LF of the next one belongs to it.
    after_cr: bool,
    /// Nothing has been decoded yet (a leading UTF-8 BOM is skipped).
    at_start: bool,
    /// Bytes of BOM seen so far at the start.
    bom_seen: usize,
    /// Size of the event being assembled, counted over its raw lines.
    event_len: usize,
    /// The event being assembled overflowed: skip until its blank line.
    skipping: bool,
    event_type: String,
    data: String,
    has_data: bool,
    id: Option<String>,
    last_event_id: String,
    retry: Option<u64>,
    ready: VecDeque<Result<Event, SseError>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Decoder {
    /// A decoder with the [`DEFAULT_MAX_EVENT_LEN`] cap.
    pub fn new() -> Self {
        Self::with_max_event_len(DEFAULT_MAX_EVENT_LEN)
    }

    /// A decoder that drops events larger than `max` bytes.
    pub fn with_max_event_len(max: usize) -> Self {
        Self {
            max_event_len: max,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            bom_seen: 0,
            event_len: 0,
            skipping: false,
            event_type: String::new(),
            data: String::new(),
            has_data: false,
            id: None,
            last_event_id: String::new(),
            retry: None,
            ready: VecDeque::new(),
        }
    }

    /// The size cap of one event.
    pub fn max_event_len(&self) -> usize {
        self.max_event_len
    }

    /// The last `id` seen (persists across events; `""` before any).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The last valid `retry` value, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.at_start {
            while self.bom_seen < BOM.len() {
                match chunk.first() {
                    None => return,
                    Some(&b) if b == BOM[self.bom_seen] => {
                        self.bom_seen += 1;
                        chunk = &chunk[1..];
                    }
                    Some(_) => {
                        // Not a BOM after all: the bytes matched so far are content.
                        let seen = BOM[..self.bom_seen].to_vec();
                        self.at_start = false;
                        self.push_bytes(&seen);
                        break;
                    }
                }
            }
            self.at_start = false;
        }
        self.push_bytes(chunk);
    }

    fn push_bytes(&mut self, mut chunk: &[u8]) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = chunk[pos];
            self.append_line_bytes(&chunk[..pos]);
            let line = mem::take(&mut self.line);
            self.process_line(&line);
            self.line = line;
            self.line.clear();
            chunk = &chunk[pos + 1..];
            if end == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.append_line_bytes(chunk);
    }

    /// Adds bytes to the current line, enforcing the event cap.
    fn append_line_bytes(&mut self, bytes: &[u8]) {
        if self.skipping {
            // Still inside an oversized event: its bytes are dropped, but a blank
            // line must still be recognised, so remember the line is not empty.
            if !bytes.is_empty() && self.line.is_empty() {
                self.line.push(b'x');
            }
            return;
        }
        if self.event_len + self.line.len() + bytes.len() > self.max_event_len {
            self.overflow();
            if !bytes.is_empty() {
                self.line.push(b'x');
            }
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn overflow(&mut self) {
        self.skipping = true;
        self.line.clear();
        self.reset_event();
        self.ready.push_back(Err(SseError::EventTooLarge {
            max: self.max_event_len,
        }));
    }

    fn reset_event(&mut self) {
        self.event_len = 0;
        self.event_type.clear();
        self.data.clear();
        self.has_data = false;
        self.id = None;
    }

    fn process_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            if self.skipping {
                self.skipping = false;
                self.reset_event();
            } else {
                self.dispatch();
            }
            return;
        }
        if self.skipping {
            return;
        }
        // Counted per line (plus its line end) so a flood of tiny lines is capped too.
        self.event_len += line.len() + 1;
        if self.event_len > self.max_event_len {
            self.overflow();
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => self.event_type = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            // An id holding NUL is ignored (WHATWG).
            b"id" if !value.contains(&0) => {
                let id = String::from_utf8_lossy(value).into_owned();
                self.last_event_id.clone_from(&id);
                self.id = Some(id);
            }
            // Digits only; out-of-range values are ignored rather than wrapped.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        if !self.has_data {
            // WHATWG: no data, no event (but `id` was already recorded).
            self.reset_event();
            return;
        }
        let event = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            mem::take(&mut self.event_type)
        };
        self.ready.push_back(Ok(Event {
            event,
            data: mem::take(&mut self.data),
            id: self.id.take(),
        }));
        self.reset_event();
    }

    /// The next decoded event, if one is complete.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Result<Event, SseError>> {
        self.ready.pop_front()
    }
}

/// Appends one event: `event:` (omitted when `"message"`), `id:` if given, then `data`
/// split into one `data:` line per line (any of CRLF, LF, CR ends a line, so it comes
/// back joined with LF), then the blank line.
///
/// `event` must not contain a line end; it is a programming constant.
pub fn encode_event(out: &mut String, event: &str, id: Option<u64>, data: &str) {
    debug_assert!(!event.contains(['\r', '\n']), "event name holds a line end");
    if event != "message" {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    if let Some(id) = id {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "id: {id}");
    }
    let mut rest = data;
    loop {
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(pos) => {
                let skip = if rest[pos..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                (&rest[..pos], Some(&rest[pos + skip..]))
            }
            None => (rest, None),
        };
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    out.push('\n');
}

/// Appends a comment line (`: text`), e.g. a keep-alive. Line ends in `text` are
/// replaced by spaces so the comment stays one line.
pub fn encode_comment(out: &mut String, text: &str) {
    out.push_str(": ");
    out.extend(
        text.chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
    );
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder) -> Vec<Result<Event, SseError>> {
        std::iter::from_fn(|| decoder.poll_event()).collect()
    }

    fn decode(input: &[u8]) -> Vec<Result<Event, SseError>> {
        let mut d = Decoder::new();
        d.feed(input);
        decode_all(&mut d)
    }

    fn ev(event: &str, data: &str, id: Option<&str>) -> Result<Event, SseError> {
        Ok(Event {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        })
    }

    /// A stream exercising every feature, with every kind of line end.
    const STREAM: &[u8] = b"\xEF\xBB\xBF: hello\n\
        event: channel\r\ndata: {\"cid\":\"a\",\"key\":\"b\"}\r\n\r\n\
        id: 17\revent: message\rdata: line1\rdata:line2\r\r\
        : keep-alive\n\n\
        retry: 1500\nid\ndata\n\n\
        data: x\nunknown: y\nevent\n\n\
        id: 18\n\n\
        data: last\n\n";

    fn expected() -> Vec<Result<Event, SseError>> {
        vec![
            ev("channel", "{\"cid\":\"a\",\"key\":\"b\"}", None),
            ev("message", "line1\nline2", Some("17")),
            ev("message", "", Some("")),
            ev("message", "x", None),
            ev("message", "last", None),
        ]
    }

    #[test]
    fn decodes_every_feature() {
        let mut d = Decoder::new();
        d.feed(STREAM);
        assert_eq!(decode_all(&mut d), expected());
        assert_eq!(d.last_event_id(), "18");
        assert_eq!(d.retry(), Some(1500));
    }

    #[test]
    fn every_split_point_gives_identical_events() {
        for split in 0..=STREAM.len() {
            let mut d = Decoder::new();
            d.feed(&STREAM[..split]);
            let mut got = decode_all(&mut d);
            d.feed(&STREAM[split..]);
            got.extend(decode_all(&mut d));
            assert_eq!(got, expected(), "split at {split}");
        }
        // Every pair of split points too (three chunks).
        for a in 0..=STREAM.len() {
            for b in a..=STREAM.len() {
                let mut d = Decoder::new();
                d.feed(&STREAM[..a]);
                d.feed(&STREAM[a..b]);
                d.feed(&STREAM[b..]);
                assert_eq!(decode_all(&mut d), expected(), "splits at {a},{b}");
            }
        }
        // And one byte at a time.
        let mut d = Decoder::new();
        for b in STREAM {
            d.feed(std::slice::from_ref(b));
        }
        assert_eq!(decode_all(&mut d), expected());
    }

    #[test]
    fn bom_only_skipped_at_the_start() {
        assert_eq!(
            decode(b"\xEF\xBB\xBFdata: a\n\n"),
            vec![ev("message", "a", None)]
        );
        // A partial BOM prefix is content (and invalid UTF-8 becomes U+FFFD).
        assert_eq!(
            decode(b"\xEFdata: a\n\ndata: b\n\n"),
            vec![ev("message", "b", None)],
            "the field name `\\xEFdata` is unknown, so the first event has no data"
        );
        assert_eq!(
            decode(b"data: \xEF\xBB\xBFa\n\n"),
            vec![ev("message", "\u{FEFF}a", None)]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(
            decode(b"data: \xff\xfe ok\n\n"),
            vec![ev("message", "\u{FFFD}\u{FFFD} ok", None)]
        );
    }

    #[test]
    fn id_with_nul_is_ignored() {
        let mut d = Decoder::new();
        d.feed(b"id: 5\n\nid: a\0b\ndata: x\n\n");
        assert_eq!(decode_all(&mut d), vec![ev("message", "x", None)]);
        assert_eq!(d.last_event_id(), "5");
    }

    #[test]
    fn bad_retry_is_ignored() {
        let mut d = Decoder::new();
        d.feed(b"retry: 10\n\nretry: 1x\n\nretry: 99999999999999999999999\n\nretry:\n\n");
        assert_eq!(d.retry(), Some(10));
    }

    #[test]
    fn huge_line_without_newline_stays_bounded() {
        let mut d = Decoder::with_max_event_len(1024);
        let junk = vec![b'a'; 4096];
        for _ in 0..1000 {
            d.feed(&junk);
            assert!(
                d.line.capacity() <= 2048,
                "line buffer grew to {}",
                d.line.capacity()
            );
        }
        assert_eq!(
            decode_all(&mut d),
            vec![Err(SseError::EventTooLarge { max: 1024 })]
        );
        // The decoder recovers at the next event.
        d.feed(b"\n\ndata: ok\n\n");
        assert_eq!(decode_all(&mut d), vec![ev("message", "ok", None)]);
    }

    #[test]
    fn many_small_lines_are_capped_too() {
        let mut d = Decoder::with_max_event_len(100);
        d.feed(&b"data: x\n".repeat(1000));
        d.feed(b"\ndata: after\n\n");
        assert_eq!(
            decode_all(&mut d),
            vec![
                Err(SseError::EventTooLarge { max: 100 }),
                ev("message", "after", None)
            ]
        );
        // Comment floods count against the cap as well.
        d.feed(&b":\n".repeat(1000));
        d.feed(b"\n");
        assert_eq!(
            decode_all(&mut d),
            vec![Err(SseError::EventTooLarge { max: 100 })]
        );
    }

    #[test]
    fn an_event_exactly_at_the_cap_passes() {
        let line = format!("data: {}", "y".repeat(93)); // 99 bytes + LF = 100
        let mut d = Decoder::with_max_event_len(100);
        d.feed(line.as_bytes());
        d.feed(b"\n\n");
        assert_eq!(
            decode_all(&mut d),
            vec![ev("message", &"y".repeat(93), None)]
        );
    }

    #[test]
    fn encoder_round_trips() {
        let cases = [
            ("message", None, ""),
            ("message", Some(1), "{\"x\":1}"),
            ("channel", None, "a\nb"),
            ("gap", Some(u64::MAX), "\n\n"),
            ("add", None, " leading space"),
            ("remove", None, "crlf\r\nand cr\rend"),
        ];
        let mut wire = String::new();
        for (event, id, data) in cases {
            encode_event(&mut wire, event, id, data);
            encode_comment(&mut wire, "keep-alive\nstill one line");
        }
        let mut d = Decoder::new();
        d.feed(wire.as_bytes());
        let got: Vec<Event> = decode_all(&mut d).into_iter().map(Result::unwrap).collect();
        assert_eq!(got.len(), cases.len());
        for (e, (event, id, data)) in got.iter().zip(cases) {
            assert_eq!(e.event, event);
            assert_eq!(e.id, id.map(|i| i.to_string()));
            assert_eq!(e.data, data.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }
}
