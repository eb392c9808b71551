//! The glare broker client: every endpoint of PROTOCOL.md §1 as a typed async API.
//!
//! A [`Channel`] is a stream of [`ChannelEvent`]s that survives disconnects: when the
//! connection drops, the client reconnects with backoff, resumes with the same cid/key
//! and `Last-Event-ID`, drops duplicates, and so hands the caller one unbroken,
//! in-order stream (a `gap` event says when the broker's buffer could not cover a
//! resume). Sessions, `send`, `list` and `watch` are plain calls on [`Client`].
//!
//! A channel lives on one WebSocket by default ([`Transport::WebSocket`], PROTOCOL.md
//! §1.8): events arrive on it and [`Channel::send`] goes out on it, answered by an
//! `ack` or `error` frame. [`Transport::Sse`] (an SSE stream plus one `POST` per send)
//! is there for brokers or proxies without WebSocket; pick it with
//! [`Options::transport`] or [`Client::open_with`].
//!
//! **Sends across a disconnect (WebSocket).** A send not yet written to the socket
//! when it drops waits and goes out on the resumed socket (the broker never saw it:
//! delivered once). A send already written whose answer had not arrived fails with
//! [`Error::Unconfirmed`]: the broker may or may not have relayed it, and it is never
//! retried behind the caller's back, so nothing is silently lost or duplicated. Over
//! SSE + POST a `POST` cut mid-way fails with [`Error::Transport`], equally in doubt.
//!
//! A [`Watch`] resumes too: on a disconnect it re-opens the list stream and re-syncs
//! by diffing, so the caller sees `Remove` for sessions that vanished meanwhile and
//! `Add` for new or changed ones, and never the same `Add` twice in a row.
//!
//! What it does not do (yet): TLS (`https://` and `wss://` are refused).
//!
//! ```no_run
//! # async fn run() -> Result<(), glare_client::Error> {
//! use glare_client::{ChannelEvent, Client, SessionOptions};
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let mut channel = client.open().await?;
//! let sid = channel.create_session(SessionOptions::tagged(["chat"])).await?;
//! while let Some(event) = channel.next().await {
//!     if let ChannelEvent::Message(m) = event {
//!         // Answer as the address the message was sent to.
//!         channel.send(&m.origin, &m.target, &serde_json::json!({"pong": 1})).await?;
//!     }
//! }
//! # let _ = sid; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod channel;
mod error;
mod watch;
mod ws;

use std::time::Duration;

use bytes::Bytes;
pub use channel::{Channel, ChannelEvent, ChannelSender, Message, Transport};
pub use error::Error;
use glare_proto::broker::{
    ChannelAuth, ErrorBody, Json, ListEntry, SessionCreated, SessionValues, json_null,
};
use glare_proto::filter::Tag;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use serde::{Serialize, de::DeserializeOwned};
pub use watch::{Watch, WatchEvent};

/// Largest JSON answer read (a big `/list`).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Client settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time limit of one plain request: 30 s.
    pub request_timeout: Duration,
    /// A stream silent this long is taken as dead and resumed: 45 s (three broker
    /// keep-alives).
    pub idle_timeout: Duration,
    /// First reconnect delay: 50 ms, doubling up to [`Options::max_backoff`].
    pub min_backoff: Duration,
    /// Longest reconnect delay: 5 s.
    pub max_backoff: Duration,
    /// Give up on a channel that cannot be reached for this long: 60 s.
    pub give_up_after: Duration,
    /// How [`Client::open`] and [`Client::resume`] hold a channel: WebSocket.
    pub transport: Transport,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(45),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
            transport: Transport::default(),
        }
    }
}

/// A session to create: tags, listing and metadata.
#[derive(Debug)]
pub struct SessionOptions {
    /// Tags (default none).
    pub tags: Vec<Tag>,
    /// Whether `/list` shows it (default `true`).
    pub list: bool,
    /// Any JSON (default `null`).
    pub metadata: Json,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            list: true,
            metadata: json_null(),
        }
    }
}

impl SessionOptions {
    /// A listed session with these tags. Invalid tags are dropped here; use
    /// [`Tag::new`] to see why a tag is refused.
    pub fn tagged<I: IntoIterator<Item = S>, S: Into<String>>(tags: I) -> Self {
        Self {
            tags: tags.into_iter().filter_map(|t| Tag::new(t).ok()).collect(),
            ..Self::default()
        }
    }
}

/// A handle to one broker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    options: Options,
}

fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Json, Error> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::Usage(format!("not JSON: {e}")))
}

impl Client {
    /// A client of the broker at `url` (`http://host:port`, optionally with a path
    /// prefix).
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::with_options(url, Options::default())
    }

    /// A client with explicit [`Options`].
    pub fn with_options(url: &str, options: Options) -> Result<Self, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Usage(format!("bad broker URL {url:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(Error::Usage(format!(
                    "unsupported scheme {other:?}: only http:// is supported (terminate TLS in front of the broker)"
                )));
            }
            None => return Err(Error::Usage(format!("broker URL {url:?} lacks http://"))),
        }
        if uri.authority().is_none() {
            return Err(Error::Usage(format!("broker URL {url:?} lacks a host")));
        }
        let base = url.trim_end_matches('/').to_owned();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            http,
            options,
        })
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    pub(crate) fn uri(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Starts a request; the answer's body is not read.
    pub(crate) async fn start(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let mut req = Request::builder().method(method).uri(self.uri(path));
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Usage(format!("bad request: {e}")))?;
        tokio::time::timeout(self.options.request_timeout, self.http.request(req))
            .await
            .map_err(|_| Error::Transport("timed out waiting for the broker".into()))?
            .map_err(|e| Error::Transport(format!("{e:?}")))
    }

    /// One request; a 2xx answer is parsed as `T`, anything else becomes an [`Error`].
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, Error> {
        let res = self.start(method, path, &[], body).await?;
        let status = res.status();
        let retry_after = retry_after(res.headers());
        let bytes = tokio::time::timeout(
            self.options.request_timeout,
            Limited::new(res.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| Error::Transport("timed out reading the answer".into()))?
        .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?
        .to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Protocol(format!("unexpected answer to {path}: {e}")))
        } else {
            Err(error_from(status, &bytes, retry_after))
        }
    }

    /// The error for a stream request the broker refused (not `200`): its error body,
    /// read within the request timeout and at most 64 KiB; an unreadable body still
    /// yields the status.
    pub(crate) async fn refused(&self, res: hyper::Response<Incoming>) -> Error {
        let status = res.status();
        let body = tokio::time::timeout(
            self.options.request_timeout,
            Limited::new(res.into_body(), 64 * 1024).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        error_from(status, &body, None)
    }

    /// Opens a new channel over [`Options::transport`] (a WebSocket by default).
    pub async fn open(&self) -> Result<Channel, Error> {
        self.open_with(self.options.transport).await
    }

    /// Opens a new channel over `transport`.
    pub async fn open_with(&self, transport: Transport) -> Result<Channel, Error> {
        Channel::open(self.clone(), None, transport).await
    }

    /// Re-attaches to an existing channel, having seen every message up to
    /// `last_event_id`, over [`Options::transport`].
    pub async fn resume(&self, auth: ChannelAuth, last_event_id: u64) -> Result<Channel, Error> {
        self.resume_with(self.options.transport, auth, last_event_id)
            .await
    }

    /// [`resume`](Self::resume) over `transport`.
    pub async fn resume_with(
        &self,
        transport: Transport,
        auth: ChannelAuth,
        last_event_id: u64,
    ) -> Result<Channel, Error> {
        Channel::open(self.clone(), Some((auth, last_event_id)), transport).await
    }

    /// Creates a session hosted by the channel `auth`; returns its sid.
    pub async fn create_session(
        &self,
        auth: &ChannelAuth,
        options: SessionOptions,
    ) -> Result<String, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            cid: &'a str,
            key: &'a str,
            tags: Vec<Tag>,
            list: bool,
            metadata: Json,
        }
        let body = serde_json::to_string(&Body {
            cid: &auth.cid,
            key: &auth.key,
            tags: options.tags,
            list: options.list,
            metadata: options.metadata,
        })
        .map_err(|e| Error::Usage(e.to_string()))?;
        let created: SessionCreated = self.call(Method::POST, "/session", Some(body)).await?;
        Ok(created.sid)
    }

    /// Changes a session's tags, metadata or listing.
    pub async fn update_session(
        &self,
        auth: &ChannelAuth,
        sid: &str,
        values: SessionValues,
    ) -> Result<(), Error> {
        let body = serde_json::json!({"cid": auth.cid, "key": auth.key, "values": values});
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/session/{}/update", path_segment(sid)),
            Some(body.to_string()),
        )
        .await
        .map(drop)
    }

    /// Removes a session.
    pub async fn close_session(&self, auth: &ChannelAuth, sid: &str) -> Result<(), Error> {
        let body = serde_json::to_string(auth).map_err(|e| Error::Usage(e.to_string()))?;
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/session/{}/close", path_segment(sid)),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Closes a channel at once.
    pub async fn close_channel(&self, auth: &ChannelAuth) -> Result<(), Error> {
        let body = serde_json::to_string(auth).map_err(|e| Error::Usage(e.to_string()))?;
        self.call::<serde_json::Value>(Method::POST, "/channel/close", Some(body))
            .await
            .map(drop)
    }

    /// Sends `message` to `target` (a cid or sid) from `origin` (a cid or sid owned by
    /// the channel whose key is `key`).
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        target: &str,
        origin: &str,
        key: &str,
        message: &T,
    ) -> Result<(), Error> {
        let message = to_raw(message)?;
        self.send_raw(target, origin, key, &message).await
    }

    /// [`send`](Self::send) with a message that is already JSON text.
    pub async fn send_raw(
        &self,
        target: &str,
        origin: &str,
        key: &str,
        message: &serde_json::value::RawValue,
    ) -> Result<(), Error> {
        let body = format!(
            r#"{{"origin":{},"key":{},"message":{}}}"#,
            json_str(origin),
            json_str(key),
            message.get()
        );
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/send/{}", path_segment(target)),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// The listed sessions matching `filter` (`""` for all).
    pub async fn list(&self, filter: &str) -> Result<Vec<ListEntry>, Error> {
        self.call(Method::GET, &list_path(filter), None).await
    }

    /// Watches the list: the sessions matching now as `Add`, then live changes.
    pub async fn watch(&self, filter: &str) -> Result<Watch, Error> {
        Watch::open(self, &list_path(filter)).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), Error> {
        let res = self.start(Method::GET, "/healthz", &[], None).await?;
        if res.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(Error::Status {
                status: res.status().as_u16(),
                body: String::new(),
            })
        }
    }
}

fn list_path(filter: &str) -> String {
    if filter.is_empty() {
        "/list".to_owned()
    } else {
        format!("/list?filter={}", query_escape(filter))
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn path_segment(s: &str) -> String {
    query_escape(s)
}

fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

pub(crate) fn error_from(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Error::Broker {
            code: e.error,
            message: e.message,
            retry_after,
        },
        Err(_) => Error::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}
