//! `GET /ws`: a channel over one WebSocket (PROTOCOL.md §1.8).

use std::sync::Arc;

use axum::{
    extract::{
        Request, State,
        ws::{
            CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
            rejection::WebSocketUpgradeRejection,
        },
    },
    response::Response,
};
use futures_util::{FutureExt as _, SinkExt as _};
use glare_proto::broker::{ErrorBody, WsSend, WsServerFrame, compact_raw, validate_message};

use crate::{
    App,
    http::{ChannelQuery, error, query, resume_from},
    registry::{ApiError, Attachment, Delivery, EndReason, Origin},
};

/// Close codes.
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED: u16 = 1003;
const TOO_BIG: u16 = 1009;
const INTERNAL: u16 = 1011;
/// Replaced by a newer holder of the channel.
const REPLACED: u16 = 4000;
/// Fell too far behind (or was disconnected by the broker): resume.
const RESUME: u16 = 4001;

/// Bytes read from a socket at a time. tungstenite's default (128 KiB) is allocated
/// and zeroed per socket: an idle channel cost ~140 KiB of RSS. 4 KiB still reads
/// many ~200-byte signals per read and keeps an idle channel cheap (`cargo xtask
/// bench-broker`).
const READ_BUFFER: usize = 4 * 1024;

pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return error(
                &app,
                ErrorBody::bad_request(format!("GET /ws needs a WebSocket upgrade: {e}")).into(),
            );
        }
    };
    let resume = query::<ChannelQuery>(req.uri()).and_then(|q| resume_from(q, req.headers()));
    drop(req);
    let opened = match resume {
        Ok(r) => app.open(r).await,
        Err(e) => Err(e),
    };
    let att = match opened {
        Ok(att) => att,
        Err(e) => return error(&app, e),
    };
    let max = app.config.limits.max_body;
    ws.max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2))
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| run(app, socket, att))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn message_frame(d: &Delivery) -> String {
    // `d.data` is `{"origin":…}`: splice the event and id in front.
    format!(r#"{{"event":"message","id":{},{}"#, d.id, &d.data[1..])
}

async fn run(app: Arc<App>, mut socket: WebSocket, att: Attachment) {
    let Attachment {
        auth,
        gap,
        replay,
        mut rx,
        end,
        guard,
    } = att;
    let cid = auth.cid.clone();
    let max = app.config.limits.max_body;
    let mut shutdown = app.shutdown.clone();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + app.config.limits.keep_alive,
        app.config
            .limits
            .keep_alive
            .max(std::time::Duration::from_millis(10)),
    );
    let mut first = vec![WsServerFrame::Channel(auth).to_json()];
    if let Some(g) = gap {
        first.push(WsServerFrame::Gap(g).to_json());
    }
    first.extend(replay.iter().map(message_frame));
    for f in first {
        if socket.feed(Message::Text(f.into())).await.is_err() {
            return;
        }
    }
    if socket.flush().await.is_err() {
        return;
    }
    let closing = loop {
        tokio::select! {
            biased;
            () = crate::stopped(&mut shutdown) => break Some(close(GOING_AWAY, "broker shutting down")),
            item = rx.recv() => {
                let Some(d) = item else {
                    break Some(match end.get() {
                        EndReason::Replaced => close(REPLACED, "replaced by a newer stream"),
                        EndReason::Closed => close(NORMAL, "channel closed"),
                        EndReason::Overflow => close(RESUME, "disconnected; resume"),
                        _ => close(INTERNAL, "stream ended"),
                    });
                };
                if socket.feed(Message::Text(message_frame(&d).into())).await.is_err() {
                    break None;
                }
                let mut n = 0;
                while n < 256 {
                    let Ok(d) = rx.try_recv() else { break };
                    if socket.feed(Message::Text(message_frame(&d).into())).await.is_err() {
                        break;
                    }
                    n += 1;
                }
                if socket.flush().await.is_err() {
                    break None;
                }
            }
            msg = socket.recv() => {
                // Answer this frame and every one already read behind it, then flush
                // once: under load one write carries many acks.
                let mut step = on_client(&app, &cid, max, &mut socket, msg).await;
                let mut n = 0;
                while matches!(step, Step::Continue) && n < 256 {
                    let Some(msg) = socket.recv().now_or_never() else { break };
                    step = on_client(&app, &cid, max, &mut socket, msg).await;
                    n += 1;
                }
                if let Step::End(frame) = step {
                    break frame;
                }
                if socket.flush().await.is_err() {
                    break None;
                }
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some(frame) = closing {
        let _ = socket.send(frame).await;
    }
    drop(guard);
}

/// What to do after one client frame.
enum Step {
    Continue,
    /// End the socket, with this close frame if any.
    End(Option<Message>),
}

/// Handles one client frame; a `send`'s answer is queued, not flushed.
async fn on_client(
    app: &App,
    cid: &str,
    max: usize,
    socket: &mut WebSocket,
    msg: Option<Result<Message, axum::Error>>,
) -> Step {
    match msg {
        None => Step::End(None),
        Some(Err(e)) => {
            tracing::debug!(%cid, error = %e, "websocket error");
            let text = e.to_string();
            if text.contains("too long")
                || text.contains("Space limit")
                || text.contains("capacity")
            {
                return Step::End(Some(close(TOO_BIG, "message over the body limit")));
            }
            Step::End(None)
        }
        Some(Ok(Message::Text(text))) => {
            if text.len() > max {
                return Step::End(Some(close(TOO_BIG, "message over the body limit")));
            }
            let answer = handle_send(app, cid, text.as_str()).await;
            if socket.feed(Message::Text(answer.into())).await.is_err() {
                return Step::End(None);
            }
            Step::Continue
        }
        Some(Ok(Message::Binary(_))) => {
            Step::End(Some(close(UNSUPPORTED, "binary frames are not accepted")))
        }
        Some(Ok(Message::Close(_))) => Step::End(None),
        Some(Ok(_)) => Step::Continue,
    }
}

/// Answers one client frame with an `ack` or `error` frame.
async fn handle_send(app: &App, cid: &str, text: &str) -> String {
    let fail = |r#ref: String, err: ApiError| {
        app.metrics.api_error(&err);
        WsServerFrame::Error {
            r#ref,
            error: err.body,
            retry_after_ms: err
                .retry_after
                .map(|d| u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)),
        }
        .to_json()
    };
    let send = match WsSend::parse(text) {
        Ok(s) => s,
        Err((r#ref, body)) => return fail(r#ref, body.into()),
    };
    if let Err(e) = validate_message(&send.message, &app.config.limits) {
        return fail(send.r#ref, e.into());
    }
    let message = compact_raw(send.message);
    match app
        .send(
            &send.target,
            Origin::Socket {
                origin: &send.origin,
                cid,
            },
            message.get(),
        )
        .await
    {
        Ok(()) => {
            app.metrics.relayed(message.get().len());
            WsServerFrame::Ack { r#ref: send.r#ref }.to_json()
        }
        Err(e) => fail(send.r#ref, e),
    }
}
