//! A live list watch (`GET /list` as Server-Sent Events).

use std::collections::VecDeque;

use glare_proto::{
    broker::{ListEntry, RemoveEvent},
    sse::Decoder,
};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::{Client, Error, error_from};

/// One change of a watched list.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A session matches (new, or its tags or metadata changed): an upsert.
    Add(ListEntry),
    /// A session stopped matching, closed or was unlisted.
    Remove(String),
}

/// A live list watch. It ends (with `None`) when the connection drops; open a new one
/// to carry on (its first events are the full current list again).
#[derive(Debug)]
pub struct Watch {
    body: Option<Incoming>,
    decoder: Decoder,
    ready: VecDeque<WatchEvent>,
}

impl Watch {
    pub(crate) async fn open(client: &Client, path: &str) -> Result<Self, Error> {
        let res = client
            .start(
                Method::GET,
                path,
                &[("accept", "text/event-stream".to_owned())],
                None,
            )
            .await?;
        if res.status() != StatusCode::OK {
            let status = res.status();
            let body = http_body_util::Limited::new(res.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(error_from(status, &body, None));
        }
        Ok(Self {
            body: Some(res.into_body()),
            decoder: Decoder::new(),
            ready: VecDeque::new(),
        })
    }

    /// The next change; `None` once the stream has ended. A malformed event is an
    /// `Err`, and the watch goes on.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(Ok(ev));
            }
            if let Some(ev) = self.decoder.poll_event() {
                let Ok(ev) = ev else { continue };
                let parsed = match ev.event.as_str() {
                    "add" => serde_json::from_str::<ListEntry>(&ev.data).map(WatchEvent::Add),
                    "remove" => serde_json::from_str::<RemoveEvent>(&ev.data)
                        .map(|r| WatchEvent::Remove(r.sid)),
                    _ => continue,
                };
                return Some(
                    parsed.map_err(|e| Error::Protocol(format!("bad {} event: {e}", ev.event))),
                );
            }
            let body = self.body.as_mut()?;
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.decoder.feed(&data);
                    }
                }
                _ => {
                    self.body = None;
                    return None;
                }
            }
        }
    }
}
