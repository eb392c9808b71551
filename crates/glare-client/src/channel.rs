//! A channel's event stream with automatic resume, over Server-Sent Events + POST or
//! over one WebSocket (see [`Transport`]).

use std::{sync::Arc, time::Duration};

use glare_proto::{
    broker::{ChannelAuth, GapEvent, Json, MessageEvent, SessionValues},
    sse::Decoder,
};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};

use crate::{Client, Error, Options, SessionOptions, query_escape, to_raw, ws};

/// How a channel talks to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// One WebSocket (`GET /ws`, PROTOCOL.md §1.8) carries the events and the sends:
    /// the fast path, and the default. See the crate docs for what happens to a send
    /// when the socket drops.
    #[default]
    WebSocket,
    /// A Server-Sent Events stream (`GET /channel`) for events, one `POST /send` per
    /// send.
    Sse,
}

/// One message delivered to this channel.
#[derive(Debug)]
pub struct Message {
    /// The channel's sequence number.
    pub id: u64,
    /// The sender's cid or sid: the `target` of any reply.
    pub origin: String,
    /// The cid or sid it was sent to: the `origin` of any reply.
    pub target: String,
    /// The message, exactly as sent.
    pub message: Json,
}

impl Message {
    /// The message parsed as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.message.get())
            .map_err(|e| Error::Protocol(format!("message is not the expected JSON: {e}")))
    }
}

/// What a channel's stream yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A message, in order, exactly once.
    Message(Message),
    /// Messages `from..=to` were lost (the broker's buffer overflowed while the stream
    /// was down).
    Gap(GapEvent),
    /// The stream is over (the channel was closed or could not be resumed); nothing
    /// follows.
    Closed(Error),
}

/// An open channel. Dropping it stops the stream; the broker closes the channel after
/// its grace period (or call [`close`](Self::close)).
#[derive(Debug)]
pub struct Channel {
    client: Client,
    auth: ChannelAuth,
    rx: mpsc::Receiver<ChannelEvent>,
    kick: Arc<Notify>,
    task: JoinHandle<()>,
    done: bool,
    /// The socket task's send queue (WebSocket transport only).
    sends: Option<mpsc::UnboundedSender<ws::SendCmd>>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A live SSE connection: its body and decoder.
struct Conn {
    body: Incoming,
    decoder: Decoder,
}

impl Channel {
    pub(crate) async fn open(
        client: Client,
        resume: Option<(ChannelAuth, u64)>,
        transport: Transport,
    ) -> Result<Self, Error> {
        let (auth, last) = match resume {
            Some((auth, last)) => (Some(auth), last),
            None => (None, 0),
        };
        let (tx, rx) = mpsc::channel(256);
        let kick = Arc::new(Notify::new());
        let (auth, task, sends) = match transport {
            Transport::Sse => {
                let (auth, conn) = connect(&client, auth.as_ref(), last).await?;
                let task = tokio::spawn(run(
                    client.clone(),
                    auth.clone(),
                    last,
                    conn,
                    tx,
                    Arc::clone(&kick),
                ));
                (auth, task, None)
            }
            Transport::WebSocket => {
                let (auth, socket) = ws::connect(&client, auth.as_ref(), last).await?;
                let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(ws::run(
                    client.clone(),
                    auth.clone(),
                    last,
                    socket,
                    cmd_rx,
                    tx,
                    Arc::clone(&kick),
                ));
                (auth, task, Some(cmd_tx))
            }
        };
        Ok(Self {
            client,
            auth,
            rx,
            kick,
            task,
            done: false,
            sends,
        })
    }

    /// The transport this channel uses.
    pub fn transport(&self) -> Transport {
        if self.sends.is_some() {
            Transport::WebSocket
        } else {
            Transport::Sse
        }
    }

    /// Channel id.
    pub fn cid(&self) -> &str {
        &self.auth.cid
    }

    /// Channel key (a secret: do not log it).
    pub fn key(&self) -> &str {
        &self.auth.key
    }

    /// Channel id and key.
    pub fn auth(&self) -> &ChannelAuth {
        &self.auth
    }

    /// The client this channel uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The next event; `None` after [`ChannelEvent::Closed`].
    pub async fn next(&mut self) -> Option<ChannelEvent> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        match &ev {
            None => {
                self.done = true;
                Some(ChannelEvent::Closed(Error::Closed(
                    "stream task ended".into(),
                )))
            }
            Some(ChannelEvent::Closed(_)) => {
                self.done = true;
                ev
            }
            Some(_) => ev,
        }
    }

    /// Drops the current connection and resumes (what a network change would do).
    pub fn reconnect(&self) {
        self.kick.notify_one();
    }

    /// Sends `message` to `target` from `origin` (this channel's cid or one of its
    /// sessions); resolves once the broker has the message in the target's stream or
    /// resume buffer. See [`ChannelSender::send`], which this calls.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        target: &str,
        origin: &str,
        message: &T,
    ) -> Result<(), Error> {
        self.sender().send(target, origin, message).await
    }

    /// [`send`](Self::send) with a message that is already JSON text.
    pub async fn send_raw(
        &self,
        target: &str,
        origin: &str,
        message: &RawValue,
    ) -> Result<(), Error> {
        self.sender().send_raw(target, origin, message).await
    }

    /// A cloneable, `'static` handle that sends from this channel, so several tasks can
    /// send while another reads [`next`](Self::next). Over the WebSocket it stops
    /// working (with [`Error::Closed`]) once the channel is dropped or closed; over SSE
    /// it posts with the channel's key for as long as the broker keeps the channel.
    pub fn sender(&self) -> ChannelSender {
        ChannelSender {
            client: self.client.clone(),
            auth: self.auth.clone(),
            sends: self.sends.clone(),
        }
    }

    /// Creates a session hosted by this channel.
    pub async fn create_session(&self, options: SessionOptions) -> Result<String, Error> {
        self.client.create_session(&self.auth, options).await
    }

    /// Updates one of this channel's sessions.
    pub async fn update_session(&self, sid: &str, values: SessionValues) -> Result<(), Error> {
        self.client.update_session(&self.auth, sid, values).await
    }

    /// Removes one of this channel's sessions.
    pub async fn close_session(&self, sid: &str) -> Result<(), Error> {
        self.client.close_session(&self.auth, sid).await
    }

    /// Closes the channel on the broker and ends the stream.
    pub async fn close(self) -> Result<(), Error> {
        self.task.abort();
        self.client.close_channel(&self.auth).await
    }
}

/// Opens or resumes the SSE stream and reads up to its `channel` event.
async fn connect(
    client: &Client,
    auth: Option<&ChannelAuth>,
    last: u64,
) -> Result<(ChannelAuth, Conn), Error> {
    let (path, headers) = match auth {
        None => ("/channel".to_owned(), vec![]),
        Some(a) => (
            format!(
                "/channel?cid={}&key={}",
                query_escape(&a.cid),
                query_escape(&a.key)
            ),
            vec![("last-event-id", last.to_string())],
        ),
    };
    let mut headers = headers;
    headers.push(("accept", "text/event-stream".to_owned()));
    let res = client.start(Method::GET, &path, &headers, None).await?;
    if res.status() != StatusCode::OK {
        return Err(client.refused(res).await);
    }
    let mut conn = Conn {
        body: res.into_body(),
        decoder: Decoder::new(),
    };
    let deadline = tokio::time::Instant::now() + client.options.idle_timeout;
    loop {
        while let Some(ev) = conn.decoder.poll_event() {
            let Ok(ev) = ev else { continue };
            if ev.event == "channel" {
                let got: ChannelAuth = serde_json::from_str(&ev.data)
                    .map_err(|e| Error::Protocol(format!("bad channel event: {e}")))?;
                if auth.is_some_and(|a| got.cid != a.cid) {
                    return Err(Error::Protocol("resumed a different channel".into()));
                }
                return Ok((got, conn));
            }
            return Err(Error::Protocol(format!(
                "expected the channel event first, got {:?}",
                ev.event
            )));
        }
        match tokio::time::timeout_at(deadline, conn.body.frame()).await {
            Err(_) => return Err(Error::Transport("no channel event in time".into())),
            Ok(Some(Ok(f))) => {
                if let Ok(data) = f.into_data() {
                    conn.decoder.feed(&data);
                }
            }
            Ok(Some(Err(e))) => return Err(Error::Transport(e.to_string())),
            Ok(None) => {
                return Err(Error::Transport(
                    "stream ended before the channel event".into(),
                ));
            }
        }
    }
}

/// What ended one connection.
enum Ended {
    /// Reconnect.
    Dropped,
    /// The caller went away.
    Gone,
}

/// Reads events from `conn`, forwarding new messages; returns when it ends.
async fn pump(
    conn: &mut Conn,
    last: &mut u64,
    tx: &mpsc::Sender<ChannelEvent>,
    kick: &Notify,
    idle: Duration,
) -> Ended {
    loop {
        while let Some(ev) = conn.decoder.poll_event() {
            let Ok(ev) = ev else { continue };
            let out = match ev.event.as_str() {
                "message" => {
                    let Some(id) = ev.id.as_deref().and_then(|i| i.parse::<u64>().ok()) else {
                        tracing::warn!("message event without a numeric id; skipped");
                        continue;
                    };
                    if id <= *last {
                        continue; // already delivered
                    }
                    *last = id;
                    match serde_json::from_str::<MessageEvent>(&ev.data) {
                        Ok(m) => ChannelEvent::Message(Message {
                            id,
                            origin: m.origin,
                            target: m.target,
                            message: m.message,
                        }),
                        Err(e) => {
                            tracing::warn!(id, error = %e, "unparsable message event; skipped");
                            continue;
                        }
                    }
                }
                "gap" => match serde_json::from_str::<GapEvent>(&ev.data) {
                    Ok(g) if g.to > *last => {
                        *last = g.to;
                        ChannelEvent::Gap(g)
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if tx.send(out).await.is_err() {
                return Ended::Gone;
            }
        }
        tokio::select! {
            () = tx.closed() => return Ended::Gone,
            () = kick.notified() => return Ended::Dropped,
            frame = tokio::time::timeout(idle, conn.body.frame()) => match frame {
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        conn.decoder.feed(&data);
                    }
                }
                _ => return Ended::Dropped,
            },
        }
    }
}

async fn run(
    client: Client,
    auth: ChannelAuth,
    mut last: u64,
    conn: Conn,
    tx: mpsc::Sender<ChannelEvent>,
    kick: Arc<Notify>,
) {
    let opts = client.options.clone();
    let mut conn = conn;
    loop {
        match pump(&mut conn, &mut last, &tx, &kick, opts.idle_timeout).await {
            Ended::Gone => return,
            Ended::Dropped => {}
        }
        tracing::debug!(cid = %auth.cid, last, "stream dropped; resuming");
        let (client, auth) = (&client, &auth);
        conn = match retry_with_backoff(&opts, &auth.cid, tx.closed(), || {
            connect(client, Some(auth), last)
        })
        .await
        {
            Retry::Done((_, c)) => c,
            Retry::Abandoned => return,
            Retry::Failed(e) => {
                let _ = tx.send(ChannelEvent::Closed(e)).await;
                return;
            }
        };
    }
}

/// How [`retry_with_backoff`] ended.
pub(crate) enum Retry<T> {
    /// An attempt succeeded.
    Done(T),
    /// The `abandon` future resolved (nobody is listening any more).
    Abandoned,
    /// An attempt failed for good, or `give_up_after` passed.
    Failed(Error),
}

/// Runs `attempt` until it succeeds, retrying transient errors after a jittered
/// exponential backoff (`min_backoff` doubling up to `max_backoff`) for at most
/// `give_up_after`; stops early when `abandon` resolves. The one reconnect policy of the
/// SSE channel, the WebSocket channel and the list watch.
pub(crate) async fn retry_with_backoff<T, Fut>(
    opts: &Options,
    what: &str,
    abandon: impl Future<Output = ()>,
    mut attempt: impl FnMut() -> Fut,
) -> Retry<T>
where
    Fut: Future<Output = Result<T, Error>>,
{
    tokio::pin!(abandon);
    let started = tokio::time::Instant::now();
    let mut backoff = opts.min_backoff;
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = &mut abandon => return Retry::Abandoned,
                () = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(opts.max_backoff);
        }
        first = false;
        match attempt().await {
            Ok(v) => return Retry::Done(v),
            Err(e) if e.is_transient() && started.elapsed() < opts.give_up_after => {
                tracing::debug!(what, error = %e, "reconnect failed; retrying");
            }
            Err(e) => return Retry::Failed(e),
        }
    }
}

/// Up to 25% less, so many clients do not reconnect in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    use rand::{Rng as _, SeedableRng as _};
    let f = rand::rngs::StdRng::from_os_rng().random_range(0.75..=1.0);
    d.mul_f64(f)
}

/// Sends messages from a [`Channel`]; made by [`Channel::sender`], cheap to clone.
#[derive(Debug, Clone)]
pub struct ChannelSender {
    client: Client,
    auth: ChannelAuth,
    /// The socket task's send queue (WebSocket transport only).
    sends: Option<mpsc::UnboundedSender<ws::SendCmd>>,
}

impl ChannelSender {
    /// The id of the channel this sends from.
    pub fn cid(&self) -> &str {
        &self.auth.cid
    }

    /// Sends `message` to `target` from `origin` (the channel's cid or one of its
    /// sessions); resolves once the broker has the message in the target's stream or
    /// resume buffer.
    ///
    /// Over [`Transport::Sse`] this is one `POST /send`. Over
    /// [`Transport::WebSocket`] it is a frame on the channel's socket, answered by its
    /// `ack` or `error`; sends made while the socket is down wait for the resume. A
    /// send already written when the socket drops fails with [`Error::Unconfirmed`]
    /// (it may or may not have been delivered; it is never retried behind the
    /// caller's back). Over the WebSocket, sends are written in the order the calls
    /// were made (from one sender or several).
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        target: &str,
        origin: &str,
        message: &T,
    ) -> Result<(), Error> {
        let message = to_raw(message)?;
        self.send_raw(target, origin, &message).await
    }

    /// [`send`](Self::send) with a message that is already JSON text.
    pub async fn send_raw(
        &self,
        target: &str,
        origin: &str,
        message: &RawValue,
    ) -> Result<(), Error> {
        let Some(sends) = &self.sends else {
            return self
                .client
                .send_raw(target, origin, &self.auth.key, message)
                .await;
        };
        let (done, answer) = oneshot::channel();
        let cmd = ws::SendCmd {
            rest: ws::send_rest(target, origin, message),
            done,
        };
        if sends.send(cmd).is_err() {
            return Err(Error::Closed("the channel's socket task ended".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Closed("the channel's socket task ended".into())))
    }
}
