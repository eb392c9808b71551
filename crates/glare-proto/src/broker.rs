//! The broker API of PROTOCOL.md §1: requests, responses, error bodies and events, for
//! HTTP/SSE and for the WebSocket fast path (§1.8), with the §1.7 limits.
//!
//! `message` and `metadata` are kept as [`RawValue`] so the broker relays them exactly
//! as sent (numbers and key order intact); [`compact`] strips insignificant whitespace
//! and [`compact_len`] measures a value the way the limits are defined: on its compact
//! serialization, non-ASCII as raw UTF-8.
//!
//! ```
//! use glare_proto::broker::{CreateSession, Limits, parse_request};
//!
//! let body = br#"{"cid":"c1","key":"k1","tags":["chat"],"metadata":{"name":"alice"}}"#;
//! let req: CreateSession = parse_request(body)?;
//! req.validate(&Limits::default())?;
//! assert!(req.list);
//! assert_eq!(req.metadata.get(), r#"{"name":"alice"}"#);
//! # Ok::<(), glare_proto::broker::ErrorBody>(())
//! ```

use std::{collections::HashSet, fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::filter::Tag;

/// A JSON value kept as the exact text it arrived as.
pub type Json = Box<RawValue>;

/// The JSON `null`, as a [`Json`].
pub fn json_null() -> Json {
    // "null" is valid JSON: this cannot fail.
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// The error codes of PROTOCOL.md §1's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong field type, unknown field in `values`, bad filter, bad tag.
    BadRequest,
    /// 403: the key does not own the cid/origin/session, or the origin does not exist.
    Forbidden,
    /// 404: unknown or closed cid, sid or target.
    NotFound,
    /// 405: wrong method on a known path.
    MethodNotAllowed,
    /// 409: a per-channel count limit is reached.
    LimitReached,
    /// 413: body, `message` or `metadata` over its limit.
    TooLarge,
    /// 429: the sending channel is over its rate.
    RateLimited,
    /// 503: the broker's shared registry (the Redis backplane of a multi-node broker)
    /// cannot be reached; `Retry-After` set. Not in PROTOCOL.md §1's table, which
    /// describes one node: an addition for brokers run as several nodes.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in table order.
    pub const ALL: [Self; 8] = [
        Self::BadRequest,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::LimitReached,
        Self::TooLarge,
        Self::RateLimited,
        Self::Unavailable,
    ];

    /// The HTTP status answered with this code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::LimitReached => 409,
            Self::TooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }

    /// The code as it appears on the wire (`"not_found"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::LimitReached => "limit_reached",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    /// The code for an HTTP status, if it is one of the table.
    pub fn from_status(status: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.status() == status)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response: `{"error": CODE, "message": TEXT}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}: {message}")]
pub struct ErrorBody {
    /// The code.
    pub error: ErrorCode,
    /// What was wrong, for a human.
    pub message: String,
}

impl ErrorBody {
    /// An error with this code and text.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
        }
    }

    /// A `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    /// A `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// A `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

/// The limits of PROTOCOL.md §1.7; [`Default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (and WebSocket message), in bytes: 128 KiB.
    pub max_body: usize,
    /// Largest `message`, compact JSON bytes: 64 KiB.
    pub max_message: usize,
    /// Largest `metadata`, compact JSON bytes: 4 KiB.
    pub max_metadata: usize,
    /// Most tags on one session: 16.
    pub max_tags: usize,
    /// Most sessions hosted by one channel: 8.
    pub max_sessions_per_channel: usize,
    /// Messages kept per channel for resume: 256.
    pub buffer: usize,
    /// How long a channel outlives its stream: 30 s.
    pub grace: Duration,
    /// Longest time between two writes on a stream (keep-alive comments): 15 s.
    pub keep_alive: Duration,
    /// Sustained sends per second per sending channel: 200.
    pub rate_per_sec: u32,
    /// Burst of sends per sending channel: 400.
    pub rate_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 128 * 1024,
            max_message: 64 * 1024,
            max_metadata: 4 * 1024,
            max_tags: 16,
            max_sessions_per_channel: 8,
            buffer: 256,
            grace: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
            rate_per_sec: 200,
            rate_burst: 400,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------------

/// Parses a request body as JSON whatever its content type says. The body must be a
/// JSON object; every problem is a `bad_request` naming it.
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, ErrorBody> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err(ErrorBody::bad_request("the request body is empty")),
        Some(b'{') => {}
        Some(_) => {
            // Let serde name the syntax error if there is one; otherwise it is a
            // well-formed value that is not an object.
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                return Err(ErrorBody::bad_request(format!("malformed JSON: {e}")));
            }
            return Err(ErrorBody::bad_request(
                "the request body must be a JSON object",
            ));
        }
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        ErrorBody::bad_request(format!("{what}: {e}"))
    })
}

/// A channel's credentials: the data of the `channel` event, and the body of
/// `POST /channel/close` and `POST /session/{sid}/close`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAuth {
    /// Channel id.
    pub cid: String,
    /// Channel key.
    pub key: String,
}

impl fmt::Debug for ChannelAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are never logged.
        f.debug_struct("ChannelAuth")
            .field("cid", &self.cid)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What `GET /channel` and `GET /ws` ask for (§1.1): `Ok(None)` opens a new channel,
/// `Ok(Some((auth, last)))` resumes `auth.cid` after event id `last` (0: none seen).
///
/// `cid` and `key` come from the query and go together; `last_event_id` is the
/// `Last-Event-ID` header if present, else the query's `lastEventId`. On a new channel
/// a left-over event id means nothing and is ignored. The id must be a non-negative
/// decimal integer that fits in 64 bits.
pub fn parse_resume(
    cid: Option<String>,
    key: Option<String>,
    last_event_id: Option<&str>,
) -> Result<Option<(ChannelAuth, u64)>, ErrorBody> {
    match (cid, key) {
        (None, None) => Ok(None),
        (Some(cid), Some(key)) => {
            let last = match last_event_id {
                None => 0,
                Some(text) => parse_event_id(text)?,
            };
            Ok(Some((ChannelAuth { cid, key }, last)))
        }
        _ => Err(ErrorBody::bad_request(
            "a resume needs both `cid` and `key`",
        )),
    }
}

/// An SSE event id as a client echoes it back: digits only, at most `u64::MAX`.
pub fn parse_event_id(text: &str) -> Result<u64, ErrorBody> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ErrorBody::bad_request(format!(
            "the last event id {:?} is not a non-negative integer",
            text.chars().take(40).collect::<String>()
        )));
    }
    text.parse().map_err(|_| {
        ErrorBody::bad_request(format!(
            "the last event id {} is out of range",
            text.chars().take(40).collect::<String>()
        ))
    })
}

/// The data of the `channel` event.
pub type ChannelEvent = ChannelAuth;
/// The body of `POST /channel/close`.
pub type CloseChannel = ChannelAuth;
/// The body of `POST /session/{sid}/close`.
pub type CloseSession = ChannelAuth;

fn default_true() -> bool {
    true
}

/// `POST /session` (§1.2).
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateSession {
    /// Host channel.
    pub cid: String,
    /// Host channel's key.
    pub key: String,
    /// Tags, in the order given (default none).
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Whether `/list` shows the session (default `true`).
    #[serde(default = "default_true")]
    pub list: bool,
    /// Any JSON (default `null`).
    #[serde(default = "json_null")]
    pub metadata: Json,
}

impl CreateSession {
    /// Checks tags (400) and metadata size (413).
    pub fn validate(&self, limits: &Limits) -> Result<(), ErrorBody> {
        validate_tags(&self.tags, limits)?;
        validate_metadata(&self.metadata, limits)
    }
}

/// The answer to `POST /session`: `201 {"sid":"…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// The new session's id.
    pub sid: String,
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The `values` of `POST /session/{sid}/update`: any subset; `null` tags or list are
/// errors, `null` metadata sets it to null.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionValues {
    /// New tags.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub tags: Option<Vec<Tag>>,
    /// New metadata (`Some(null)` sets null).
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Json>,
    /// New listing flag.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub list: Option<bool>,
}

/// `values` must be an object (serde would take an array as a struct too).
fn values_object<'de, D: Deserializer<'de>>(d: D) -> Result<SessionValues, D::Error> {
    let raw = Json::deserialize(d)?;
    if !raw.get().starts_with('{') {
        return Err(serde::de::Error::custom(
            "invalid type: `values` must be a JSON object",
        ));
    }
    serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)
}

/// `POST /session/{sid}/update` (§1.3).
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateSession {
    /// Host channel.
    pub cid: String,
    /// Host channel's key.
    pub key: String,
    /// What to change.
    #[serde(deserialize_with = "values_object")]
    pub values: SessionValues,
}

impl UpdateSession {
    /// Checks tags (400) and metadata size (413).
    pub fn validate(&self, limits: &Limits) -> Result<(), ErrorBody> {
        if let Some(tags) = &self.values.tags {
            validate_tags(tags, limits)?;
        }
        if let Some(metadata) = &self.values.metadata {
            validate_metadata(metadata, limits)?;
        }
        Ok(())
    }
}

/// `POST /send/{target}` (§1.5).
#[derive(Debug, Serialize, Deserialize)]
pub struct Send {
    /// The sending cid or sid.
    pub origin: String,
    /// The key of the channel owning `origin`.
    pub key: String,
    /// Any JSON, relayed as sent.
    pub message: Json,
}

impl Send {
    /// Checks the message size (413).
    pub fn validate(&self, limits: &Limits) -> Result<(), ErrorBody> {
        validate_message(&self.message, limits)
    }
}

/// The `{}` answer of update, close and send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The data of a `message` event (§1.1) and the target channel's view of a send.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageEvent {
    /// The sender's cid or sid.
    pub origin: String,
    /// The cid or sid the message was sent to.
    pub target: String,
    /// The message, as sent.
    pub message: Json,
}

/// The data of a `gap` event: the ids that cannot be replayed, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapEvent {
    /// First missing id.
    pub from: u64,
    /// Last missing id.
    pub to: u64,
}

/// What `/list` shows of a session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Tags, in the order given.
    pub tags: Vec<Tag>,
    /// Metadata, as given.
    pub metadata: Json,
}

impl PartialEq for SessionInfo {
    fn eq(&self, other: &Self) -> bool {
        self.tags == other.tags && self.metadata.get() == other.metadata.get()
    }
}

/// One entry of `GET /list`, and the data of an `add` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Session id.
    pub sid: String,
    /// Its tags and metadata.
    pub session: SessionInfo,
}

/// The data of a `remove` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveEvent {
    /// Session id.
    pub sid: String,
}

/// Checks a tag list: at most `limits.max_tags`, no duplicates (400).
pub fn validate_tags(tags: &[Tag], limits: &Limits) -> Result<(), ErrorBody> {
    if tags.len() > limits.max_tags {
        return Err(ErrorBody::bad_request(format!(
            "{} tags given, at most {} allowed",
            tags.len(),
            limits.max_tags
        )));
    }
    let mut seen = HashSet::with_capacity(tags.len());
    for tag in tags {
        if !seen.insert(tag.as_str()) {
            return Err(ErrorBody::bad_request(format!(
                "tag {tag:?} is given twice"
            )));
        }
    }
    Ok(())
}

/// Checks a `metadata` value's compact size (413).
pub fn validate_metadata(metadata: &RawValue, limits: &Limits) -> Result<(), ErrorBody> {
    let len = compact_len(metadata.get());
    if len > limits.max_metadata {
        return Err(ErrorBody::too_large(format!(
            "metadata is {len} bytes as compact JSON, more than {}",
            limits.max_metadata
        )));
    }
    Ok(())
}

/// Checks a `message` value's compact size (413).
pub fn validate_message(message: &RawValue, limits: &Limits) -> Result<(), ErrorBody> {
    let len = compact_len(message.get());
    if len > limits.max_message {
        return Err(ErrorBody::too_large(format!(
            "message is {len} bytes as compact JSON, more than {}",
            limits.max_message
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Compact JSON
// ---------------------------------------------------------------------------------------

/// Strips the insignificant whitespace (outside strings) of a valid JSON text; strings,
/// numbers and key order stay exactly as given.
pub fn compact(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    // Only ASCII whitespace was removed between whole UTF-8 sequences.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Compacts a [`RawValue`] (no copy if it is already compact).
pub fn compact_raw(value: Json) -> Json {
    if !value
        .get()
        .bytes()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return value;
    }
    let text = compact(value.get());
    // Removing insignificant whitespace keeps valid JSON valid.
    RawValue::from_string(text).unwrap_or(value)
}

/// The length of a valid JSON text once serialized compactly the way `serde_json`
/// writes it: no whitespace, non-ASCII as raw UTF-8, `"`, `\` and control characters
/// escaped (`\n`, `\u0001`), numbers as given.
pub fn compact_len(json: &str) -> usize {
    let bytes = json.as_bytes();
    let mut len = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                len += 2; // the quotes
                len += string_len(bytes, &mut i);
            }
            _ => len += 1,
        }
    }
    len
}

/// Counts a string's body from `*i` (just past the opening quote) to its closing quote,
/// leaving `*i` past the closing quote.
fn string_len(bytes: &[u8], i: &mut usize) -> usize {
    let mut len = 0;
    while *i < bytes.len() {
        let b = bytes[*i];
        *i += 1;
        match b {
            b'"' => return len,
            b'\\' => {
                let Some(&e) = bytes.get(*i) else { return len };
                *i += 1;
                len += match e {
                    b'/' => 1,
                    b'u' => {
                        let unit = hex4(bytes, *i);
                        *i += 4;
                        match unit {
                            Some(hi @ 0xD800..=0xDBFF) => {
                                let lo = if bytes.get(*i) == Some(&b'\\')
                                    && bytes.get(*i + 1) == Some(&b'u')
                                {
                                    hex4(bytes, *i + 2)
                                } else {
                                    None
                                };
                                match lo {
                                    Some(lo @ 0xDC00..=0xDFFF) => {
                                        *i += 6;
                                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                        char::from_u32(c).map_or(3, char::len_utf8)
                                    }
                                    // A lone surrogate: counted as U+FFFD.
                                    _ => 3,
                                }
                            }
                            Some(unit) => char::from_u32(unit).map_or(3, escaped_char_len),
                            None => 6,
                        }
                    }
                    // \" \\ \b \f \n \r \t
                    _ => 2,
                };
            }
            _ => len += 1,
        }
    }
    len
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let hex = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(hex).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// How many bytes `serde_json` writes for this character inside a string.
fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{08}' | '\u{0C}' | '\n' | '\r' | '\t' => 2,
        '\u{00}'..='\u{1F}' => 6,
        c => c.len_utf8(),
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket frames (§1.8)
// ---------------------------------------------------------------------------------------

/// A frame from the broker to a WebSocket client.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum WsServerFrame {
    /// `{"event":"channel","cid","key"}`.
    Channel(ChannelAuth),
    /// `{"event":"message","id",…}`.
    Message {
        /// Per-channel sequence number.
        id: u64,
        /// Sender.
        origin: String,
        /// Target as sent.
        target: String,
        /// The message, as sent (compact).
        message: String,
    },
    /// `{"event":"gap","from","to"}`.
    Gap(GapEvent),
    /// `{"event":"ack","ref"}`.
    Ack {
        /// The send's `ref`, as given (JSON text).
        r#ref: String,
    },
    /// `{"event":"error","ref","error","message"}` (and `retryAfterMs` for
    /// `rate_limited`).
    Error {
        /// The send's `ref` as given (JSON text), `null` if it had none.
        r#ref: String,
        /// The error.
        error: ErrorBody,
        /// Milliseconds to wait, for `rate_limited`.
        retry_after_ms: Option<u64>,
    },
}

impl WsServerFrame {
    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
        match self {
            Self::Channel(a) => format!(
                r#"{{"event":"channel","cid":{},"key":{}}}"#,
                s(&a.cid),
                s(&a.key)
            ),
            Self::Message {
                id,
                origin,
                target,
                message,
            } => format!(
                r#"{{"event":"message","id":{id},"origin":{},"target":{},"message":{message}}}"#,
                s(origin),
                s(target)
            ),
            Self::Gap(g) => format!(r#"{{"event":"gap","from":{},"to":{}}}"#, g.from, g.to),
            Self::Ack { r#ref } => format!(r#"{{"event":"ack","ref":{ref}}}"#),
            Self::Error {
                r#ref,
                error,
                retry_after_ms,
            } => {
                let retry = retry_after_ms
                    .map(|ms| format!(r#","retryAfterMs":{ms}"#))
                    .unwrap_or_default();
                format!(
                    r#"{{"event":"error","ref":{ref},"error":"{}","message":{}{retry}}}"#,
                    error.error,
                    s(&error.message)
                )
            }
        }
    }

    /// Parses a frame from the broker; anything else is an error naming the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            event: String,
            cid: Option<String>,
            key: Option<String>,
            id: Option<u64>,
            origin: Option<String>,
            target: Option<String>,
            #[serde(default, deserialize_with = "some")]
            message: Option<Json>,
            from: Option<u64>,
            to: Option<u64>,
            #[serde(default, deserialize_with = "some")]
            r#ref: Option<Json>,
            error: Option<ErrorCode>,
            retry_after_ms: Option<u64>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("bad frame: {e}"))?;
        let need = |name: &str| format!("a {} frame needs `{name}`", raw.event);
        Ok(match raw.event.as_str() {
            "channel" => Self::Channel(ChannelAuth {
                cid: raw.cid.ok_or_else(|| need("cid"))?,
                key: raw.key.ok_or_else(|| need("key"))?,
            }),
            "message" => Self::Message {
                id: raw.id.ok_or_else(|| need("id"))?,
                origin: raw.origin.ok_or_else(|| need("origin"))?,
                target: raw.target.ok_or_else(|| need("target"))?,
                message: raw.message.ok_or_else(|| need("message"))?.get().to_owned(),
            },
            "gap" => Self::Gap(GapEvent {
                from: raw.from.ok_or_else(|| need("from"))?,
                to: raw.to.ok_or_else(|| need("to"))?,
            }),
            "ack" => Self::Ack {
                r#ref: raw
                    .r#ref
                    .map_or_else(|| "null".to_owned(), |r| r.get().to_owned()),
            },
            "error" => {
                let message = match raw.message {
                    Some(m) => serde_json::from_str::<String>(m.get())
                        .map_err(|_| "an error frame's `message` must be a string".to_owned())?,
                    None => String::new(),
                };
                Self::Error {
                    r#ref: raw
                        .r#ref
                        .map_or_else(|| "null".to_owned(), |r| r.get().to_owned()),
                    error: ErrorBody::new(raw.error.ok_or_else(|| need("error"))?, message),
                    retry_after_ms: raw.retry_after_ms,
                }
            }
            other => return Err(format!("unknown event {other:?}")),
        })
    }
}

/// A `send` from a WebSocket client.
#[derive(Debug)]
pub struct WsSend {
    /// The client's `ref` (JSON text of a string or number).
    pub r#ref: String,
    /// Sender: this socket's cid or one of its sessions.
    pub origin: String,
    /// cid or sid.
    pub target: String,
    /// The message, as sent.
    pub message: Json,
}

impl WsSend {
    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
        format!(
            r#"{{"op":"send","ref":{},"origin":{},"target":{},"message":{}}}"#,
            self.r#ref,
            s(&self.origin),
            s(&self.target),
            self.message.get()
        )
    }

    /// Parses a client frame. On error, gives the `ref` to echo (`"null"` when the
    /// frame had no usable one) and the `bad_request` to answer.
    pub fn parse(text: &str) -> Result<Self, (String, ErrorBody)> {
        #[derive(Deserialize)]
        struct Raw {
            op: Option<Json>,
            #[serde(default, deserialize_with = "some")]
            r#ref: Option<Json>,
            origin: Option<Json>,
            target: Option<Json>,
            #[serde(default, deserialize_with = "some")]
            message: Option<Json>,
        }
        let null = || "null".to_owned();
        if !text.trim_start().starts_with('{') {
            return Err((
                null(),
                ErrorBody::bad_request("a frame must be a JSON object"),
            ));
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            (
                null(),
                ErrorBody::bad_request(format!("malformed JSON: {e}")),
            )
        })?;
        let r#ref = match &raw.r#ref {
            Some(r) if matches!(r.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) => {
                r.get().to_owned()
            }
            Some(_) => {
                return Err((
                    null(),
                    ErrorBody::bad_request("`ref` must be a string or a number"),
                ));
            }
            None => null(),
        };
        let fail = |msg: &str| Err((r#ref.clone(), ErrorBody::bad_request(msg)));
        let string = |v: &Option<Json>| {
            v.as_ref()
                .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        };
        match string(&raw.op).as_deref() {
            Some("send") => {}
            Some(op) => return fail(&format!("unknown op {op:?}")),
            None => return fail("a frame needs `op`, a string"),
        }
        if raw.r#ref.is_none() {
            return fail("a send needs `ref`");
        }
        let Some(origin) = string(&raw.origin) else {
            return fail("a send needs `origin`, a string");
        };
        let Some(target) = string(&raw.target) else {
            return fail("a send needs `target`, a string");
        };
        let Some(message) = raw.message else {
            return fail("a send needs `message`");
        };
        Ok(Self {
            r#ref,
            origin,
            target,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn round_trip<T: DeserializeOwned + Serialize>(text: &str) -> T {
        let v: T = parse_request(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        let back: Value = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        let orig: Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig, "{text}");
        v
    }

    #[test]
    fn protocol_examples_round_trip() {
        let ch: ChannelEvent = round_trip(r#"{"cid":"c1","key":"k1"}"#);
        assert_eq!(ch.cid, "c1");
        assert!(!format!("{ch:?}").contains("k1"), "keys are not in Debug");
        let m: MessageEvent =
            round_trip(r#"{"origin":"o","target":"t","message":{"b":1.50,"a":[1,2]}}"#);
        assert_eq!(
            m.message.get(),
            r#"{"b":1.50,"a":[1,2]}"#,
            "relayed as sent"
        );
        let g: GapEvent = round_trip(r#"{"from":5,"to":9}"#);
        assert_eq!(g, GapEvent { from: 5, to: 9 });
        let c: CreateSession = round_trip(
            r#"{"cid":"c","key":"k","tags":["chat","eu"],"list":true,"metadata":{"name":"alice"}}"#,
        );
        assert_eq!(c.tags, [Tag::new("chat").unwrap(), Tag::new("eu").unwrap()]);
        c.validate(&Limits::default()).unwrap();
        let _: SessionCreated = round_trip(r#"{"sid":"s"}"#);
        let u: UpdateSession = round_trip(
            r#"{"cid":"c","key":"k","values":{"tags":["x"],"metadata":{"a":1},"list":false}}"#,
        );
        assert_eq!(u.values.list, Some(false));
        let _: CloseSession = round_trip(r#"{"cid":"c","key":"k"}"#);
        let s: Send = round_trip(r#"{"origin":"o","key":"k","message":{"x":"y"}}"#);
        assert_eq!(s.message.get(), r#"{"x":"y"}"#);
        let _: Empty = round_trip("{}");
        let l: Vec<ListEntry> =
            serde_json::from_str(r#"[{"sid":"s","session":{"tags":["chat"],"metadata":{"n":1}}}]"#)
                .unwrap();
        assert_eq!(l[0].session.metadata.get(), r#"{"n":1}"#);
        let _: RemoveEvent = round_trip(r#"{"sid":"s"}"#);
        let e: ErrorBody = round_trip(r#"{"error":"not_found","message":"no such channel"}"#);
        assert_eq!(e.error.status(), 404);
    }

    #[test]
    fn defaults() {
        let c: CreateSession = parse_request(br#"{"cid":"c","key":"k"}"#).unwrap();
        assert!(c.tags.is_empty());
        assert!(c.list);
        assert_eq!(c.metadata.get(), "null");
        let l = Limits::default();
        assert_eq!(
            (l.max_body, l.max_message, l.max_metadata, l.max_tags),
            (131_072, 65_536, 4096, 16)
        );
        assert_eq!((l.max_sessions_per_channel, l.buffer), (8, 256));
        assert_eq!((l.grace.as_secs(), l.keep_alive.as_secs()), (30, 15));
        assert_eq!((l.rate_per_sec, l.rate_burst), (200, 400));
    }

    #[test]
    fn resume_parsing() {
        let (c, k) = (Some("c1".to_owned()), Some("k1".to_owned()));
        assert_eq!(parse_resume(None, None, Some("junk")).unwrap(), None);
        let (auth, last) = parse_resume(c.clone(), k.clone(), None).unwrap().unwrap();
        assert_eq!(
            (auth.cid.as_str(), auth.key.as_str(), last),
            ("c1", "k1", 0)
        );
        let (_, last) = parse_resume(c.clone(), k.clone(), Some("0042"))
            .unwrap()
            .unwrap();
        assert_eq!(last, 42);
        let max = u64::MAX.to_string();
        assert_eq!(
            parse_resume(c.clone(), k.clone(), Some(&max))
                .unwrap()
                .unwrap()
                .1,
            u64::MAX
        );
        for (cid, key, id, needle) in [
            (c.clone(), None, None, "both"),
            (None, k.clone(), None, "both"),
            (c.clone(), k.clone(), Some(""), "not a non-negative"),
            (c.clone(), k.clone(), Some("-1"), "not a non-negative"),
            (c.clone(), k.clone(), Some("+1"), "not a non-negative"),
            (c.clone(), k.clone(), Some("1e3"), "not a non-negative"),
            (
                c.clone(),
                k.clone(),
                Some("18446744073709551616"),
                "out of range",
            ),
            (c, k, Some(&"9".repeat(10_000)), "out of range"),
        ] {
            let e = parse_resume(cid, key, id).unwrap_err();
            assert_eq!(e.error, ErrorCode::BadRequest);
            assert!(e.message.contains(needle), "{e}");
            assert!(
                e.message.len() < 200,
                "the message echoes at most 40 chars: {e}"
            );
        }
    }

    #[test]
    fn error_codes() {
        let statuses: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.status()).collect();
        assert_eq!(statuses, [400, 403, 404, 405, 409, 413, 429, 503]);
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
            assert_eq!(ErrorCode::from_status(code.status()), Some(code));
        }
        assert_eq!(ErrorCode::from_status(500), None);
    }

    fn bad<T: DeserializeOwned + fmt::Debug>(text: &str, needle: &str) {
        let err = parse_request::<T>(text.as_bytes()).unwrap_err();
        assert_eq!(err.error, ErrorCode::BadRequest, "{text}");
        assert!(
            err.message.contains(needle),
            "{text}: {} lacks {needle}",
            err.message
        );
    }

    #[test]
    fn bad_input_is_named() {
        bad::<Send>("", "empty");
        bad::<Send>("  ", "empty");
        bad::<Send>("{", "malformed JSON");
        bad::<Send>(r#"{"origin":"o","key":"k","message":{"#, "malformed JSON");
        bad::<Send>("[1,2]", "must be a JSON object");
        bad::<Send>("[1,", "malformed JSON");
        bad::<Send>("null", "must be a JSON object");
        bad::<Send>(r#"{"origin":"o","key":"k"}"#, "missing field `message`");
        bad::<Send>(r#"{"origin":5,"key":"k","message":1}"#, "invalid type");
        bad::<Send>(r#"{"origin":"o","key":"k","message":1} x"#, "trailing");
        bad::<CreateSession>(r#"{"cid":"c","key":"k","tags":["a b"]}"#, "not one of");
        bad::<CreateSession>(r#"{"cid":"c","key":"k","tags":"a"}"#, "invalid type");
        bad::<CreateSession>(r#"{"cid":"c","key":"k","list":"yes"}"#, "invalid type");
        bad::<UpdateSession>(r#"{"cid":"c","key":"k"}"#, "missing field `values`");
        bad::<UpdateSession>(
            r#"{"cid":"c","key":"k","values":{"host":"x"}}"#,
            "unknown field `host`",
        );
        bad::<UpdateSession>(
            r#"{"cid":"c","key":"k","values":{"tags":null}}"#,
            "invalid type: null",
        );
        bad::<UpdateSession>(
            r#"{"cid":"c","key":"k","values":{"list":null}}"#,
            "invalid type: null",
        );
        bad::<UpdateSession>(r#"{"cid":"c","key":"k","values":[]}"#, "invalid type");
    }

    #[test]
    fn unknown_top_level_fields_are_ignored() {
        let s: Send =
            parse_request(br#"{"origin":"o","key":"k","message":1,"extra":[1]}"#).unwrap();
        assert_eq!(s.message.get(), "1");
    }

    #[test]
    fn update_values_subsets() {
        let u: UpdateSession =
            parse_request(br#"{"cid":"c","key":"k","values":{"metadata":null}}"#).unwrap();
        assert_eq!(u.values.metadata.as_ref().map(|m| m.get()), Some("null"));
        assert!(u.values.tags.is_none() && u.values.list.is_none());
        let u: UpdateSession = parse_request(br#"{"cid":"c","key":"k","values":{}}"#).unwrap();
        assert!(u.values.metadata.is_none());
        let u: UpdateSession =
            parse_request(br#"{"cid":"c","key":"k","values":{"tags":[]}}"#).unwrap();
        assert_eq!(u.values.tags, Some(vec![]));
    }

    #[test]
    fn tag_rules() {
        let l = Limits::default();
        let dup: CreateSession =
            parse_request(br#"{"cid":"c","key":"k","tags":["a","b","a"]}"#).unwrap();
        let e = dup.validate(&l).unwrap_err();
        assert_eq!(e.error, ErrorCode::BadRequest);
        assert!(e.message.contains("twice"), "{e}");
        let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        let body = json!({"cid":"c","key":"k","tags":many}).to_string();
        let c: CreateSession = parse_request(body.as_bytes()).unwrap();
        let e = c.validate(&l).unwrap_err();
        assert!(e.message.contains("17 tags"), "{e}");
        let sixteen = json!({"cid":"c","key":"k","tags":&many[..16]}).to_string();
        let c: CreateSession = parse_request(sixteen.as_bytes()).unwrap();
        c.validate(&l).unwrap();
        let body = json!({"cid":"c","key":"k","values":{"tags":["x","x"]}}).to_string();
        let u: UpdateSession = parse_request(body.as_bytes()).unwrap();
        assert_eq!(u.validate(&l).unwrap_err().error, ErrorCode::BadRequest);
    }

    #[test]
    fn sizes_are_compact() {
        let l = Limits::default();
        // 4096 compact bytes pass, with lots of whitespace around.
        let s = "x".repeat(4094);
        let body = format!("{{\"cid\":\"c\",\"key\":\"k\",\"metadata\":   \"{s}\"   }}");
        let c: CreateSession = parse_request(body.as_bytes()).unwrap();
        c.validate(&l).unwrap();
        let body = format!("{{\"cid\":\"c\",\"key\":\"k\",\"metadata\":\"{s}x\"}}");
        let c: CreateSession = parse_request(body.as_bytes()).unwrap();
        let e = c.validate(&l).unwrap_err();
        assert_eq!(e.error, ErrorCode::TooLarge);
        assert!(e.message.contains("4097"), "{e}");
        // \u00e9 counts as the two raw bytes of é.
        let esc = "\\u00e9".repeat(2047); // 2047 * 2 + 2 = 4096
        let body = format!("{{\"cid\":\"c\",\"key\":\"k\",\"metadata\":\"{esc}\"}}");
        let c: CreateSession = parse_request(body.as_bytes()).unwrap();
        c.validate(&l).unwrap();
        // message limit on update and send
        let big = format!(
            r#"{{"origin":"o","key":"k","message":"{}"}}"#,
            "y".repeat(65_535)
        );
        let s: Send = parse_request(big.as_bytes()).unwrap();
        assert_eq!(s.validate(&l).unwrap_err().error, ErrorCode::TooLarge);
        let ok = format!(
            r#"{{"origin":"o","key":"k","message":"{}"}}"#,
            "y".repeat(65_534)
        );
        let s: Send = parse_request(ok.as_bytes()).unwrap();
        s.validate(&l).unwrap();
        let upd = format!(
            r#"{{"cid":"c","key":"k","values":{{"metadata":"{}"}}}}"#,
            "m".repeat(5000)
        );
        let u: UpdateSession = parse_request(upd.as_bytes()).unwrap();
        assert_eq!(u.validate(&l).unwrap_err().error, ErrorCode::TooLarge);
    }

    /// `compact_len` agrees with `serde_json`'s own compact writer.
    #[test]
    fn compact_len_matches_serde_json() {
        let cases = [
            "null",
            " { \"a\" : [ 1 , 2.50e3 , true ] , \"b\" : { } } ",
            r#""\u00e9\/\"\\\b\f\n\r\t\u0001\u001f\u007f\u20ac""#,
            r#""\ud83d\ude00 é 😀""#,
            r#"["\u0022", "\u005C", "\u002F", "\u0008"]"#,
            "{\n\t\"k\": \"v with  spaces\"\r\n}",
            r#"-0.0"#,
        ];
        for case in cases {
            let value: Value = serde_json::from_str(case).unwrap();
            let want = serde_json::to_string(&value).unwrap();
            // Numbers are kept as received; these cases use numbers serde prints
            // back the same except 2.50e3.
            let got = compact_len(case);
            if case.contains("2.50e3") {
                assert_eq!(got, want.len() - "2500.0".len() + "2.50e3".len(), "{case}");
            } else {
                assert_eq!(got, want.len(), "{case}: {want}");
            }
        }
        // A lone surrogate is counted as U+FFFD.
        assert_eq!(compact_len(r#""\ud800""#), 2 + 3);
    }

    #[test]
    fn compact_strips_only_insignificant_whitespace() {
        assert_eq!(
            compact(" { \"a b\" : [ 1 ,\n 2.50 ] , \"c\\\" d\" : \" x \" } "),
            r#"{"a b":[1,2.50],"c\" d":" x "}"#
        );
        assert_eq!(compact(r#""\\" "#), r#""\\""#);
        let raw = RawValue::from_string("{ \"a\" : 1 }".into()).unwrap();
        assert_eq!(compact_raw(raw).get(), r#"{"a":1}"#);
    }

    #[test]
    fn ws_frames_round_trip() {
        let frames = [
            r#"{"event":"channel","cid":"c","key":"k"}"#,
            r#"{"event":"message","id":17,"origin":"o","target":"t","message":{"z":1,"a":2}}"#,
            r#"{"event":"gap","from":5,"to":9}"#,
            r#"{"event":"ack","ref":42}"#,
            r#"{"event":"ack","ref":"r-1"}"#,
            r#"{"event":"error","ref":42,"error":"not_found","message":"no such target"}"#,
            r#"{"event":"error","ref":null,"error":"rate_limited","message":"slow down","retryAfterMs":5}"#,
            // A multi-node broker whose Redis is down (the fuzzer found clients could not
            // parse this frame before the code existed).
            r#"{"event":"error","ref":1,"error":"unavailable","message":"backplane down","retryAfterMs":1000}"#,
        ];
        for f in frames {
            let parsed = WsServerFrame::parse(f).unwrap();
            assert_eq!(parsed.to_json(), f);
        }
        assert!(WsServerFrame::parse(r#"{"event":"nope"}"#).is_err());
        assert!(
            WsServerFrame::parse(r#"{"event":"gap"}"#)
                .unwrap_err()
                .contains("from")
        );
        assert!(WsServerFrame::parse("[]").is_err());
    }

    #[test]
    fn ws_send_parse() {
        let f = r#"{"op":"send","ref":42,"origin":"o","target":"t","message":{"b":1,"a":2}}"#;
        let s = WsSend::parse(f).unwrap();
        assert_eq!(
            (s.r#ref.as_str(), s.message.get()),
            ("42", r#"{"b":1,"a":2}"#)
        );
        assert_eq!(s.to_json(), f);
        let s =
            WsSend::parse(r#"{"op":"send","ref":"x","origin":"o","target":"t","message":null}"#)
                .unwrap();
        assert_eq!(s.r#ref, "\"x\"");
        let cases = [
            ("[1]", "null", "JSON object"),
            ("nope", "null", "JSON object"),
            ("{", "null", "malformed"),
            (r#"{"ref":1}"#, "1", "op"),
            (r#"{"op":"fly","ref":"a"}"#, "\"a\"", "unknown op"),
            (
                r#"{"op":"send","ref":1,"target":"t","message":1}"#,
                "1",
                "origin",
            ),
            (
                r#"{"op":"send","ref":1,"origin":"o","message":1}"#,
                "1",
                "target",
            ),
            (
                r#"{"op":"send","ref":1,"origin":"o","target":"t"}"#,
                "1",
                "message",
            ),
            (
                r#"{"op":"send","origin":"o","target":"t","message":1}"#,
                "null",
                "ref",
            ),
            (
                r#"{"op":"send","ref":[1],"origin":"o","target":"t","message":1}"#,
                "null",
                "ref",
            ),
        ];
        for (text, r, needle) in cases {
            let (got_ref, e) = WsSend::parse(text).unwrap_err();
            assert_eq!(got_ref, r, "{text}");
            assert_eq!(e.error, ErrorCode::BadRequest);
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }
}
