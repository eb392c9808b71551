//! A live list watch (`GET /list` as Server-Sent Events) that resumes by itself.

use std::collections::{HashMap, VecDeque};

use glare_proto::{
    broker::{ListEntry, RemoveEvent},
    sse::Decoder,
};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::{
    Client, Error,
    channel::{Retry, retry_with_backoff},
};

/// One change of a watched list.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A session matches (new, or its tags or metadata changed): an upsert.
    Add(ListEntry),
    /// A session stopped matching, closed or was unlisted.
    Remove(String),
}

/// A live list watch.
///
/// When the connection drops (or is silent past [`Options::idle_timeout`]), the watch
/// re-opens the stream with backoff and re-syncs: it fetches the list, yields `Remove`
/// for every session it had shown that is gone and `Add` for every new or changed one,
/// then carries on with live changes. The caller's view is kept exact: an `Add` equal
/// to what was last shown for that sid, or a `Remove` of a sid not shown, is dropped.
/// (While a change races the re-sync, a session may briefly appear and then be
/// removed; the view still ends right.) It ends (`None`) only after failing to
/// reconnect for [`Options::give_up_after`], with one `Err` first.
///
/// [`Options::idle_timeout`]: crate::Options::idle_timeout
/// [`Options::give_up_after`]: crate::Options::give_up_after
#[derive(Debug)]
pub struct Watch {
    client: Client,
    path: String,
    body: Option<Incoming>,
    decoder: Decoder,
    ready: VecDeque<WatchEvent>,
    /// What the caller has been shown: sid → entry.
    shown: HashMap<String, ListEntry>,
    ended: bool,
}

/// Opens the list stream.
async fn open_stream(client: &Client, path: &str) -> Result<Incoming, Error> {
    let res = client
        .start(
            Method::GET,
            path,
            &[("accept", "text/event-stream".to_owned())],
            None,
        )
        .await?;
    if res.status() != StatusCode::OK {
        return Err(client.refused(res).await);
    }
    Ok(res.into_body())
}

impl Watch {
    pub(crate) async fn open(client: &Client, path: &str) -> Result<Self, Error> {
        let body = open_stream(client, path).await?;
        Ok(Self {
            client: client.clone(),
            path: path.to_owned(),
            body: Some(body),
            decoder: Decoder::new(),
            ready: VecDeque::new(),
            shown: HashMap::new(),
            ended: false,
        })
    }

    /// Drops the current connection; the next [`next`](Self::next) re-opens it and
    /// re-syncs (what a network change would do).
    pub fn reconnect(&mut self) {
        self.body = None;
    }

    /// Applies one event to the caller's view; queues it if it changes the view.
    fn apply(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Add(e) => {
                if self.shown.get(&e.sid) != Some(&e) {
                    self.shown.insert(e.sid.clone(), e.clone());
                    self.ready.push_back(WatchEvent::Add(e));
                }
            }
            WatchEvent::Remove(sid) => {
                if self.shown.remove(&sid).is_some() {
                    self.ready.push_back(WatchEvent::Remove(sid));
                }
            }
        }
    }

    /// Re-opens the stream with backoff, then re-syncs from a fresh list.
    async fn resume(&mut self) -> Result<(), Error> {
        let opts = self.client.options.clone();
        let (client, path) = (&self.client, &self.path);
        // The stream first, then the list: a change after the list is taken is then
        // also on the stream.
        let attempt = || async move {
            let body = open_stream(client, path).await?;
            let list: Vec<ListEntry> = client.call(Method::GET, path, None).await?;
            Ok::<_, Error>((body, list))
        };
        // Nothing abandons a watch while its owner awaits `next`.
        let (body, list) =
            match retry_with_backoff(&opts, "list watch", std::future::pending(), attempt).await {
                Retry::Done(found) => found,
                Retry::Failed(e) => return Err(e),
                Retry::Abandoned => unreachable!("a pending future never resolves"),
            };
        self.body = Some(body);
        self.decoder = Decoder::new();
        let now: HashMap<&str, &ListEntry> = list.iter().map(|e| (e.sid.as_str(), e)).collect();
        let mut gone: Vec<String> = self
            .shown
            .keys()
            .filter(|sid| !now.contains_key(sid.as_str()))
            .cloned()
            .collect();
        gone.sort();
        for sid in gone {
            self.apply(WatchEvent::Remove(sid));
        }
        for e in list {
            self.apply(WatchEvent::Add(e));
        }
        Ok(())
    }

    /// The next change; `None` once the watch has given up. A malformed event is an
    /// `Err`, and the watch goes on.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(Ok(ev));
            }
            if self.ended {
                return None;
            }
            if let Some(ev) = self.decoder.poll_event() {
                let Ok(ev) = ev else { continue };
                let parsed = match ev.event.as_str() {
                    "add" => serde_json::from_str::<ListEntry>(&ev.data).map(WatchEvent::Add),
                    "remove" => serde_json::from_str::<RemoveEvent>(&ev.data)
                        .map(|r| WatchEvent::Remove(r.sid)),
                    _ => continue,
                };
                match parsed {
                    Ok(ev) => self.apply(ev),
                    Err(e) => {
                        return Some(Err(Error::Protocol(format!("bad {} event: {e}", ev.event))));
                    }
                }
                continue;
            }
            let idle = self.client.options.idle_timeout;
            let frame = match self.body.as_mut() {
                Some(body) => tokio::time::timeout(idle, body.frame())
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.decoder.feed(&data);
                    }
                }
                _ => {
                    self.body = None;
                    if let Err(e) = self.resume().await {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}
