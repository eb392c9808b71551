//! [`Peer`]: a broker channel, a UDP endpoint, sessions and links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use glare_client::{ChannelEvent, Client, SessionOptions, Watch};
use glare_proto::broker::ListEntry;
use glare_proto::signal::{SdpKind, Signal};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use crate::transport::{Endpoint, Signals};
use crate::{Config, Connection, Error, ErrorKind};

/// `(local address, remote address)`: one link (PROTOCOL.md §3).
type Key = (String, String);

enum Cmd {
    Connect {
        remote: String,
        reply: oneshot::Sender<Result<Connection, Error>>,
    },
    Host {
        options: SessionOptions,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Signal {
        key: Key,
        /// The link's [`Connection::id`].
        id: u64,
        signal: Signal,
    },
    Forget {
        key: Key,
        id: u64,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

struct LinkEntry {
    conn: Connection,
    inbox: mpsc::UnboundedSender<Signal>,
    /// Whether a description from the remote arrived on this link. A `bye` before
    /// that belongs to an earlier link between the same two addresses (signals keep
    /// their order per direction, so a stale `bye` always comes before the new
    /// link's first description) and is dropped.
    heard: bool,
}

struct Inner {
    client: Client,
    cid: String,
    endpoint: Endpoint,
    cmd: mpsc::UnboundedSender<Cmd>,
    incoming: Mutex<mpsc::UnboundedReceiver<Connection>>,
    sessions: Arc<StdMutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A peer: a channel on a broker, one UDP socket, the sessions it hosts and its
/// links to other peers.
///
/// Cheap to clone. Dropping the last clone stops it (links already handed out keep
/// their transport, but no signal reaches the broker any more); call
/// [`close`](Self::close) to end every link with a `bye` first.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("cid", &self.inner.cid)
            .field("local", &self.inner.endpoint.local_addr())
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// Opens a channel on the broker at `url` and binds a UDP socket per `config`.
    pub async fn new(url: &str, config: Config) -> Result<Self, Error> {
        let client = Client::with_options(url, config.client.clone())?;
        let (channel, endpoint) =
            tokio::join!(Box::pin(client.open()), Box::pin(Endpoint::bind(config)));
        let channel = channel?;
        let endpoint = endpoint?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let sessions = Arc::new(StdMutex::new(Vec::new()));
        let cid = channel.cid().to_owned();
        let task = PeerTask {
            channel,
            endpoint: endpoint.clone(),
            cmd_tx: cmd_tx.clone(),
            incoming: incoming_tx,
            links: HashMap::new(),
            order: SignalOrder::default(),
            sessions: Arc::clone(&sessions),
            cid: cid.clone(),
            broker_gone: false,
        };
        let task = tokio::spawn(task.run(cmd_rx));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                cid,
                endpoint,
                cmd: cmd_tx,
                incoming: Mutex::new(incoming_rx),
                sessions,
                task,
            }),
        })
    }

    /// This peer's channel id on the broker.
    pub fn cid(&self) -> &str {
        &self.inner.cid
    }

    /// The first session this peer hosts (the origin of its dials), if any.
    pub fn sid(&self) -> Option<String> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .cloned()
    }

    /// The UDP endpoint (socket address, candidates, driver counters).
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The broker client (for anything the facade does not wrap).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(make(reply))
            .map_err(|_| Error::closed("the peer is closed"))?;
        rx.await.map_err(|_| Error::closed("the peer is closed"))
    }

    /// Hosts a session: `tags`, any JSON `metadata`, and whether `/list` shows it.
    /// The first session hosted is the origin of this peer's dials, so that two
    /// peers dialling each other meet on one link. Returns its sid.
    pub async fn host<I, S>(
        &self,
        tags: I,
        metadata: serde_json::Value,
        listed: bool,
    ) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for t in tags {
            let t = t.as_ref();
            parsed.push(glare_proto::filter::Tag::new(t).map_err(|e| {
                Error::with_source(ErrorKind::InvalidInput, format!("bad tag {t:?}"), e)
            })?);
        }
        let metadata = serde_json::value::to_raw_value(&metadata)
            .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "bad metadata", e))?;
        let options = SessionOptions {
            tags: parsed,
            list: listed,
            metadata,
        };
        self.ask(|reply| Cmd::Host { options, reply }).await?
    }

    /// The link to `remote` (a sid or cid), dialling it if there is none: the offer
    /// goes out with this peer's first session (or its cid) as origin. If the remote
    /// dials this peer at the same moment, both end on the same link (glare).
    ///
    /// Returns at once; use [`Connection::connected`] to wait for the transport.
    pub async fn connect(&self, remote: &str) -> Result<Connection, Error> {
        let remote = remote.to_owned();
        self.ask(|reply| Cmd::Connect { remote, reply }).await?
    }

    /// The next link the other side started (its offer arrived first); `None` once
    /// the peer is closed. A link this peer dialled is not repeated here, but a link
    /// that arrived here first is what [`connect`](Self::connect) to that address
    /// returns too.
    pub async fn accept(&self) -> Option<Connection> {
        self.inner.incoming.lock().await.recv().await
    }

    /// The listed sessions matching `filter` (`tag`, `!tag`, comma-separated).
    pub async fn list(&self, filter: &str) -> Result<Vec<ListEntry>, Error> {
        Ok(self.inner.client.list(filter).await?)
    }

    /// Watches the list (an `Add` per matching session, then live changes).
    pub async fn watch(&self, filter: &str) -> Result<Watch, Error> {
        Ok(self.inner.client.watch(filter).await?)
    }

    /// Ends every link with a `bye` (waiting up to a second for them to go out),
    /// closes the broker channel and the UDP socket.
    pub async fn close(&self) {
        let _ = self.ask(|reply| Cmd::Close { reply }).await;
    }
}

/// Connects to the session `sid` on the broker at `broker_url` with the default
/// configuration and waits until the link is up. The returned connection keeps its
/// peer alive.
pub async fn connect(broker_url: &str, sid: &str) -> Result<Connection, Error> {
    let peer = Peer::new(broker_url, Config::default()).await?;
    let conn = peer.connect(sid).await?;
    conn.connected().await?;
    Ok(conn.keep_alive(Arc::new(peer)))
}

struct PeerTask {
    channel: glare_client::Channel,
    endpoint: Endpoint,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    incoming: mpsc::UnboundedSender<Connection>,
    links: HashMap<Key, LinkEntry>,
    order: SignalOrder,
    sessions: Arc<StdMutex<Vec<String>>>,
    cid: String,
    broker_gone: bool,
}

/// How long [`Peer::close`] waits for the links' `bye`s to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl PeerTask {
    fn origin(&self) -> String {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .cloned()
            .unwrap_or_else(|| self.cid.clone())
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut closing: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        loop {
            if let Some((deadline, _)) = &closing
                && (self.links.is_empty() || tokio::time::Instant::now() >= *deadline)
            {
                break;
            }
            let deadline = closing.as_ref().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                |c| c.0,
            );
            tokio::select! {
                ev = self.channel.next(), if !self.broker_gone => match ev {
                    Some(ChannelEvent::Message(m)) => self.route(m).await,
                    Some(ChannelEvent::Gap(g)) => warn!(?g, "broker lost messages to this peer"),
                    Some(ChannelEvent::Closed(e)) => {
                        warn!(error = %e, "broker channel closed; links carry on without it");
                        self.broker_gone = true;
                    }
                    Some(_) => {}
                    None => self.broker_gone = true,
                },
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close { reply }) => {
                        for entry in self.links.values() {
                            entry.conn.close("peer closed").await;
                        }
                        closing = Some((tokio::time::Instant::now() + CLOSE_WAIT, reply));
                    }
                    Some(cmd) => self.command(cmd).await,
                },
                () = tokio::time::sleep_until(deadline), if closing.is_some() => {}
            }
        }
        if !self.broker_gone {
            let auth = self.channel.auth().clone();
            if let Err(e) = self.channel.client().close_channel(&auth).await {
                debug!(error = %e, "broker channel close failed");
            }
        }
        self.endpoint.shutdown().await;
        if let Some((_, reply)) = closing {
            let _ = reply.send(());
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Connect { remote, reply } => {
                let key = (self.origin(), remote);
                let result = match self.links.get(&key) {
                    Some(entry) if !entry.conn.is_over() => Ok(entry.conn.clone()),
                    _ => self.new_link(key, true).await,
                };
                let _ = reply.send(result);
            }
            Cmd::Host { options, reply } => {
                let result = self.channel.create_session(options).await;
                if let Ok(sid) = &result {
                    self.sessions
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(sid.clone());
                }
                let _ = reply.send(result.map_err(Error::from));
            }
            Cmd::Signal { key, id, signal } => {
                if let Some(signal) = self.order.signal(&key, id, signal) {
                    self.send_signal(key, signal).await;
                }
            }
            Cmd::Forget { key, id } => {
                if self.links.get(&key).is_some_and(|e| e.conn.id() == id) {
                    self.links.remove(&key);
                }
                for signal in self.order.ended(&key, id) {
                    self.send_signal(key.clone(), signal).await;
                }
            }
            Cmd::Close { .. } => {}
        }
    }

    async fn send_signal(&self, key: Key, signal: Signal) {
        if self.broker_gone {
            debug!(remote = %key.1, "no broker: signal dropped");
            return;
        }
        let value = signal.to_value();
        let (local, remote) = &key;
        for attempt in 0..4 {
            match self.channel.send(remote, local, &value).await {
                Ok(()) => {
                    trace!(%remote, "signal sent");
                    return;
                }
                Err(e) if attempt < 3 && e.retry_after().is_some() => {
                    let wait = e
                        .retry_after()
                        .unwrap_or_default()
                        .min(Duration::from_secs(2));
                    debug!(%remote, ?wait, "rate limited by the broker; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    warn!(%remote, error = %e, "signal not delivered");
                    if e.code() == Some(glare_proto::broker::ErrorCode::NotFound)
                        && let Some(entry) = self.links.get(&key)
                    {
                        entry.conn.close("the remote address is unknown").await;
                    }
                    return;
                }
            }
        }
    }

    async fn route(&mut self, m: glare_client::Message) {
        let signal = match Signal::decode(m.message.get().as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                debug!(origin = %m.origin, error = %e, "not a signal; dropped");
                return;
            }
        };
        let key = (m.target, m.origin);
        if let Some(entry) = self.links.get_mut(&key)
            && !entry.conn.is_over()
        {
            match &signal {
                Signal::Description { .. } => entry.heard = true,
                Signal::Bye(_) if !entry.heard => {
                    debug!(remote = %key.1, "bye of an earlier link; dropped");
                    return;
                }
                _ => {}
            }
            let _ = entry.inbox.send(signal);
            return;
        }
        let is_offer = matches!(
            &signal,
            Signal::Description { description, .. } if description.kind == SdpKind::Offer
        );
        if !is_offer {
            trace!(remote = %key.1, "signal for no link; dropped");
            return;
        }
        match self.new_link(key.clone(), false).await {
            Ok(conn) => {
                if let Some(entry) = self.links.get_mut(&key) {
                    entry.heard = true;
                    let _ = entry.inbox.send(signal);
                }
                let _ = self.incoming.send(conn);
            }
            Err(e) => warn!(remote = %key.1, error = %e, "cannot start an incoming link"),
        }
    }

    async fn new_link(&mut self, key: Key, dial: bool) -> Result<Connection, Error> {
        let (conn, signals) = self.endpoint.connection().await?;
        let conn = conn.with_remote(&key.1);
        if dial {
            conn.dial().await?;
        }
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        tokio::spawn(link_task(
            conn.clone(),
            signals,
            inbox_rx,
            self.cmd_tx.clone(),
            key.clone(),
        ));
        debug!(local = %key.0, remote = %key.1, dial, "link started");
        self.order.started(&key, conn.id());
        self.links.insert(
            key,
            LinkEntry {
                conn: conn.clone(),
                inbox: inbox_tx,
                heard: false,
            },
        );
        Ok(conn)
    }
}

/// Keeps the broker signals of successive links between the same two addresses in
/// link order. The remote tells those links apart only by the order of their
/// signals (a `bye` before any description belongs to an earlier link), so an old
/// link's last signals (its `bye`) must never follow a newer link's offer or answer;
/// each link's signals come from its own task, so without this they could.
#[derive(Debug, Default)]
struct SignalOrder {
    /// Per address pair, the links whose task has not ended yet (ids grow with age).
    alive: HashMap<Key, BTreeSet<u64>>,
    /// Signals held back until the older links are done, per link id.
    held: HashMap<Key, BTreeMap<u64, Vec<Signal>>>,
}

impl SignalOrder {
    /// Link `id` between `key` started (ids must grow with age).
    fn started(&mut self, key: &Key, id: u64) {
        self.alive.entry(key.clone()).or_default().insert(id);
    }

    /// A signal of link `id`: returned to send now, or held while an older link
    /// between the same addresses has not ended.
    fn signal(&mut self, key: &Key, id: u64, signal: Signal) -> Option<Signal> {
        let oldest = self.alive.get(key).and_then(|a| a.first().copied());
        if oldest.is_none_or(|oldest| oldest >= id) {
            return Some(signal);
        }
        debug!(remote = %key.1, "signal held until the earlier link is done");
        self.held
            .entry(key.clone())
            .or_default()
            .entry(id)
            .or_default()
            .push(signal);
        None
    }

    /// Link `id` ended (all its signals were passed to [`signal`](Self::signal)):
    /// the held signals that may go now, in order.
    fn ended(&mut self, key: &Key, id: u64) -> Vec<Signal> {
        let mut oldest = None;
        if let Some(alive) = self.alive.get_mut(key) {
            alive.remove(&id);
            oldest = alive.first().copied();
            if alive.is_empty() {
                self.alive.remove(key);
            }
        }
        let mut ready = Vec::new();
        if let Some(held) = self.held.get_mut(key) {
            // Every link up to the oldest one alive may send, oldest first.
            while let Some(entry) = held.first_entry() {
                if oldest.is_some_and(|oldest| *entry.key() > oldest) {
                    break;
                }
                ready.extend(entry.remove());
            }
            if held.is_empty() {
                self.held.remove(key);
            }
        }
        ready
    }
}

/// Carries one link's signals: out to the peer task (which sends them through the
/// broker), in from the broker to the link, in order both ways.
async fn link_task(
    conn: Connection,
    mut signals: Signals,
    mut inbox: mpsc::UnboundedReceiver<Signal>,
    cmd: mpsc::UnboundedSender<Cmd>,
    key: Key,
) {
    let id = conn.id();
    let mut inbox_open = true;
    loop {
        tokio::select! {
            s = signals.next() => match s {
                Some(signal) => {
                    let _ = cmd.send(Cmd::Signal { key: key.clone(), id, signal });
                }
                None => break,
            },
            s = inbox.recv(), if inbox_open => match s {
                Some(signal) => {
                    if conn.handle_signal(signal).await.is_err() {
                        // The link is gone from the reactor; its last signals are
                        // still in `signals`.
                        while let Some(signal) = signals.try_next() {
                            let _ = cmd.send(Cmd::Signal { key: key.clone(), id, signal });
                        }
                        break;
                    }
                }
                // A newer link replaced this one: its last signals (a `bye`) still
                // go out, before the newer link's (see `PeerTask::alive`).
                None => inbox_open = false,
            },
        }
    }
    let _ = cmd.send(Cmd::Forget { key, id });
}

#[cfg(test)]
mod tests {
    use glare_proto::signal::Bye;

    use super::*;

    fn bye(reason: &str) -> Signal {
        Signal::Bye(Bye {
            reason: Some(reason.into()),
        })
    }

    /// The cause of the 200-round glare flake: a closed link's `bye` went out after
    /// the next link's offer, and the remote took it for the new link's.
    #[test]
    fn a_newer_links_signals_wait_for_the_older_links_bye() {
        let key: Key = ("a".into(), "b".into());
        let other: Key = ("a".into(), "c".into());
        let mut order = SignalOrder::default();
        order.started(&key, 1);
        order.started(&key, 2);
        order.started(&other, 3);
        // The newer link's first signal comes before the old link's last one.
        assert_eq!(order.signal(&key, 2, bye("new 1")), None);
        assert_eq!(order.signal(&key, 2, bye("new 2")), None);
        // Other addresses are not held up.
        assert_eq!(order.signal(&other, 3, bye("c")), Some(bye("c")));
        // The old link's bye goes at once; the new link's follow when it ends.
        assert_eq!(order.signal(&key, 1, bye("old")), Some(bye("old")));
        assert_eq!(order.ended(&key, 1), vec![bye("new 1"), bye("new 2")]);
        // From then on the new link sends directly.
        assert_eq!(order.signal(&key, 2, bye("new 3")), Some(bye("new 3")));
        assert!(order.ended(&key, 2).is_empty());
        assert!(!order.alive.contains_key(&key) && order.held.is_empty());
    }

    #[test]
    fn three_links_in_a_row_release_in_link_order() {
        let key: Key = ("a".into(), "b".into());
        let mut order = SignalOrder::default();
        for id in [1, 2, 3] {
            order.started(&key, id);
        }
        assert_eq!(order.signal(&key, 3, bye("3")), None);
        assert_eq!(order.signal(&key, 2, bye("2")), None);
        // Link 1 ends: link 2 is now the oldest and goes; link 3 still waits.
        assert_eq!(order.ended(&key, 1), vec![bye("2")]);
        assert_eq!(order.signal(&key, 3, bye("3b")), None);
        assert_eq!(order.ended(&key, 2), vec![bye("3"), bye("3b")]);
        assert!(order.ended(&key, 3).is_empty());
    }
}
