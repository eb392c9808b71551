//! A channel over one WebSocket (PROTOCOL.md §1.8): events and sends on one socket,
//! with automatic resume.
//!
//! # Sends across a disconnect
//!
//! Every send is a `{"op":"send","ref":N,…}` frame answered by exactly one `ack` or
//! `error` with the same `ref`. What happens to a send when the socket drops:
//!
//! - **Not yet written to the socket** (queued while the channel was reconnecting, or
//!   behind other sends): it stays queued and is written on the resumed socket. The
//!   broker cannot have seen it, so this is safe: it is delivered once.
//! - **Written, answer not yet received**: the broker may or may not have relayed it,
//!   and the protocol has no idempotency key to tell, so it is **not** retried: the
//!   send fails with [`Error::Unconfirmed`]. The caller decides (a signal that is
//!   harmless to repeat, like an ICE candidate, can be sent again; the receiver may
//!   then see it twice).
//! - **The channel gives up** (cannot resume within [`Options::give_up_after`], the
//!   channel was closed, or it was replaced by a newer holder): queued sends fail with
//!   [`Error::Closed`].
//!
//! [`Options::give_up_after`]: crate::Options::give_up_after

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use glare_proto::broker::{ChannelAuth, ErrorBody, WsServerFrame};
use http::StatusCode;
use serde_json::value::RawValue;
use tokio::{
    net::TcpStream,
    sync::{Notify, mpsc, oneshot},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message as WsMessage, protocol::frame::coding::CloseCode},
};

use crate::{
    Client, Error,
    channel::{ChannelEvent, Message, Retry, retry_with_backoff},
    error_from, query_escape,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Close code of a socket replaced by a newer holder of its channel.
const REPLACED: u16 = 4000;

/// Events read ahead of the caller before the socket is no longer read (unless a send
/// waits for its answer, which must be read to avoid a deadlock).
const READ_AHEAD: usize = 4096;

/// One send handed to the socket task.
#[derive(Debug)]
pub(crate) struct SendCmd {
    /// The frame after `"ref":N,`: `"origin":…,"target":…,"message":…}`.
    pub(crate) rest: String,
    /// Where the answer goes.
    pub(crate) done: oneshot::Sender<Result<(), Error>>,
}

/// The `rest` of a send frame.
pub(crate) fn send_rest(target: &str, origin: &str, message: &RawValue) -> String {
    format!(
        r#""origin":{},"target":{},"message":{}}}"#,
        crate::json_str(origin),
        crate::json_str(target),
        message.get()
    )
}

fn ws_url(client: &Client, auth: Option<&ChannelAuth>, last: u64) -> String {
    let base = client.uri("/ws");
    let base = base
        .strip_prefix("http://")
        .map_or_else(|| base.clone(), |rest| format!("ws://{rest}"));
    match auth {
        None => base,
        Some(a) => format!(
            "{base}?cid={}&key={}&lastEventId={last}",
            query_escape(&a.cid),
            query_escape(&a.key)
        ),
    }
}

/// Opens or resumes the socket and reads up to its `channel` frame.
pub(crate) async fn connect(
    client: &Client,
    auth: Option<&ChannelAuth>,
    last: u64,
) -> Result<(ChannelAuth, Socket), Error> {
    let url = ws_url(client, auth, last);
    let opts = &client.options;
    let connected = tokio::time::timeout(
        opts.request_timeout,
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .map_err(|_| Error::Transport("timed out opening the WebSocket".into()))?;
    let mut socket = match connected {
        Ok((socket, _)) => socket,
        Err(tungstenite::Error::Http(res)) => {
            let status = res.status();
            let body = res.body().as_deref().unwrap_or_default();
            return Err(if status == StatusCode::SWITCHING_PROTOCOLS {
                Error::Protocol("bad WebSocket upgrade".into())
            } else {
                error_from(status, body, None)
            });
        }
        Err(e) => return Err(Error::Transport(format!("WebSocket: {e}"))),
    };
    let first = tokio::time::timeout(opts.idle_timeout, socket.next())
        .await
        .map_err(|_| Error::Transport("no channel frame in time".into()))?;
    let text = match first {
        Some(Ok(WsMessage::Text(t))) => t,
        Some(Ok(WsMessage::Close(f))) => {
            return Err(Error::Transport(format!(
                "socket closed before the channel frame: {f:?}"
            )));
        }
        Some(Ok(other)) => {
            return Err(Error::Protocol(format!(
                "expected the channel frame first, got {other:?}"
            )));
        }
        Some(Err(e)) => return Err(Error::Transport(e.to_string())),
        None => {
            return Err(Error::Transport(
                "socket ended before the channel frame".into(),
            ));
        }
    };
    match WsServerFrame::parse(&text) {
        Ok(WsServerFrame::Channel(got)) => {
            if auth.is_some_and(|a| got.cid != a.cid) {
                return Err(Error::Protocol("resumed a different channel".into()));
            }
            Ok((got, socket))
        }
        Ok(_) => Err(Error::Protocol("expected the channel frame first".into())),
        Err(e) => Err(Error::Protocol(e)),
    }
}

/// What ended one socket.
enum Ended {
    /// Resume.
    Dropped,
    /// The caller went away.
    Gone,
    /// Give up with this error (replaced by a newer holder).
    Fatal(Error),
}

/// The socket task's state that outlives one socket.
struct State {
    last: u64,
    next_ref: u64,
    /// Written sends waiting for their answer.
    in_flight: HashMap<u64, oneshot::Sender<Result<(), Error>>>,
    /// Events for the caller not yet handed over.
    out: VecDeque<ChannelEvent>,
}

impl State {
    /// Fails every written, unanswered send: it may or may not have been relayed.
    fn fail_in_flight(&mut self, why: &str) {
        for (_, done) in self.in_flight.drain() {
            let _ = done.send(Err(Error::Unconfirmed(format!(
                "the socket dropped ({why}) before the broker answered; the message may or may not have been delivered"
            ))));
        }
    }

    fn on_frame(&mut self, text: &str) {
        let frame = match WsServerFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "unparsable frame; skipped");
                return;
            }
        };
        match frame {
            WsServerFrame::Message {
                id,
                origin,
                target,
                message,
            } => {
                if id <= self.last {
                    return; // already delivered
                }
                let Ok(message) = RawValue::from_string(message) else {
                    return;
                };
                self.last = id;
                self.out.push_back(ChannelEvent::Message(Message {
                    id,
                    origin,
                    target,
                    message,
                }));
            }
            WsServerFrame::Gap(g) if g.to > self.last => {
                self.last = g.to;
                self.out.push_back(ChannelEvent::Gap(g));
            }
            WsServerFrame::Ack { r#ref } => {
                if let Some(done) = self.take(&r#ref) {
                    let _ = done.send(Ok(()));
                }
            }
            WsServerFrame::Error {
                r#ref,
                error: ErrorBody { error, message },
                retry_after_ms,
            } => {
                let err = Error::Broker {
                    code: error,
                    message,
                    retry_after: retry_after_ms.map(Duration::from_millis),
                };
                match self.take(&r#ref) {
                    Some(done) => {
                        let _ = done.send(Err(err));
                    }
                    None => tracing::warn!(%err, r#ref, "error frame for no send"),
                }
            }
            _ => {}
        }
    }

    fn take(&mut self, r#ref: &str) -> Option<oneshot::Sender<Result<(), Error>>> {
        self.in_flight.remove(&r#ref.parse::<u64>().ok()?)
    }
}

/// Writes one send.
async fn write_send(
    socket: &mut Socket,
    st: &mut State,
    cmd: SendCmd,
    feed_only: bool,
) -> Result<(), tungstenite::Error> {
    let r = st.next_ref;
    st.next_ref += 1;
    let frame = format!(r#"{{"op":"send","ref":{r},{}"#, cmd.rest);
    // Registered before the write: once any byte may have left, the send is in doubt.
    st.in_flight.insert(r, cmd.done);
    if feed_only {
        socket.feed(WsMessage::Text(frame.into())).await
    } else {
        socket.send(WsMessage::Text(frame.into())).await
    }
}

/// Runs one socket until it ends.
async fn pump(
    socket: &mut Socket,
    st: &mut State,
    cmds: &mut mpsc::UnboundedReceiver<SendCmd>,
    tx: &mpsc::Sender<ChannelEvent>,
    kick: &Notify,
    idle: Duration,
) -> Ended {
    loop {
        let want_read = st.out.len() < READ_AHEAD || !st.in_flight.is_empty();
        tokio::select! {
            biased;
            () = tx.closed() => return Ended::Gone,
            () = kick.notified() => return Ended::Dropped,
            permit = tx.reserve(), if !st.out.is_empty() => {
                let Ok(permit) = permit else { return Ended::Gone };
                if let Some(ev) = st.out.pop_front() {
                    permit.send(ev);
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return Ended::Gone };
                // Batch whatever else is queued into one flush.
                let mut res = write_send(socket, st, cmd, true).await;
                let mut n = 0;
                while res.is_ok() && n < 256 {
                    let Ok(cmd) = cmds.try_recv() else { break };
                    res = write_send(socket, st, cmd, true).await;
                    n += 1;
                }
                if res.is_ok() {
                    res = socket.flush().await;
                }
                if let Err(e) = res {
                    tracing::debug!(error = %e, "write failed; resuming");
                    return Ended::Dropped;
                }
            }
            msg = tokio::time::timeout(idle, socket.next()), if want_read => match msg {
                Err(_) => {
                    tracing::debug!("socket silent too long; resuming");
                    return Ended::Dropped;
                }
                Ok(Some(Ok(WsMessage::Text(text)))) => st.on_frame(&text),
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    if code == Some(REPLACED) {
                        return Ended::Fatal(Error::Closed(
                            "replaced by a newer holder of the channel".into(),
                        ));
                    }
                    if code == Some(u16::from(CloseCode::Size)) {
                        tracing::warn!("broker closed the socket: a send was over its size limit");
                    }
                    return Ended::Dropped;
                }
                Ok(Some(Ok(_))) => {} // ping/pong: tungstenite answers pings itself
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "socket error; resuming");
                    return Ended::Dropped;
                }
                Ok(None) => return Ended::Dropped,
            },
        }
    }
}

/// Hands every buffered event to the caller (after the socket is gone).
async fn flush_out(st: &mut State, tx: &mpsc::Sender<ChannelEvent>) -> bool {
    while let Some(ev) = st.out.pop_front() {
        if tx.send(ev).await.is_err() {
            return false;
        }
    }
    true
}

/// Fails every queued send and ends the stream with `err`.
async fn give_up(
    st: &mut State,
    cmds: &mut mpsc::UnboundedReceiver<SendCmd>,
    tx: &mpsc::Sender<ChannelEvent>,
    err: Error,
) {
    st.fail_in_flight("channel closed");
    cmds.close();
    while let Ok(cmd) = cmds.try_recv() {
        let _ = cmd.done.send(Err(Error::Closed(err.to_string())));
    }
    if flush_out(st, tx).await {
        let _ = tx.send(ChannelEvent::Closed(err)).await;
    }
}

pub(crate) async fn run(
    client: Client,
    auth: ChannelAuth,
    last: u64,
    socket: Socket,
    mut cmds: mpsc::UnboundedReceiver<SendCmd>,
    tx: mpsc::Sender<ChannelEvent>,
    kick: Arc<Notify>,
) {
    let opts = client.options.clone();
    let mut st = State {
        last,
        next_ref: 1,
        in_flight: HashMap::new(),
        out: VecDeque::new(),
    };
    let mut socket = socket;
    loop {
        match pump(
            &mut socket,
            &mut st,
            &mut cmds,
            &tx,
            &kick,
            opts.idle_timeout,
        )
        .await
        {
            Ended::Gone => return,
            Ended::Dropped => {}
            Ended::Fatal(e) => {
                let _ = socket.close(None).await;
                give_up(&mut st, &mut cmds, &tx, e).await;
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), socket.close(None)).await;
        st.fail_in_flight("disconnected");
        tracing::debug!(cid = %auth.cid, last = st.last, "socket dropped; resuming");
        let (client, auth, last) = (&client, &auth, st.last);
        socket = match retry_with_backoff(&opts, &auth.cid, tx.closed(), || {
            connect(client, Some(auth), last)
        })
        .await
        {
            Retry::Done((_, s)) => s,
            Retry::Abandoned => return,
            Retry::Failed(e) => {
                give_up(&mut st, &mut cmds, &tx, e).await;
                return;
            }
        };
    }
}
