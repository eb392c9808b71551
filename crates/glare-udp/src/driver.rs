//! The reactor: one tokio task per socket owning every connection on it, and the
//! handles users reach it through.

use std::collections::{BTreeSet, HashMap};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace};

use crate::batch::{self, SendQueue};
use crate::connection::{Connection, Datagram, Ecn, Transmit};
use crate::socket::{MAX_GSO_BYTES, UdpIo};
use crate::stun::{self, BindingResult, StunClient, StunShape, TRANSACTION_ID_LEN};
use crate::turn::client::{Inbound, SendOutcome, TurnClient, TurnEvent};
use crate::turn::framing::StreamFramer;
use crate::turn::stream::{self as turn_stream, StreamEvent};
use crate::{
    BindError, CandidateError, DriverError, HostFilter, ReflexiveCandidate, SocketConfig,
    StunConfig, StunError, StunServer, TurnConfig, TurnError, TurnServer, TurnTransport,
};

/// How a driver behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How the socket is set up (GSO, GRO, buffers, device).
    pub socket: SocketConfig,
    /// Datagrams larger than this are dropped and counted
    /// ([`Stats::dropped_oversize`]). Default 1500.
    pub max_datagram_size: usize,
    /// The most `recvmmsg` calls per wake-up (each reads up to quinn-udp's
    /// `BATCH_SIZE` buffers). Default 8.
    pub max_recv_batches: usize,
    /// The most datagrams drained from connections per wake-up. Default 1024.
    pub max_transmits: usize,
    /// The most handle commands taken per wake-up. Default 64.
    pub max_commands: usize,
    /// STUN binding retransmission.
    pub stun: StunConfig,
    /// TURN allocations: timers, limits, TLS roots.
    pub turn: TurnConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: SocketConfig::default(),
            max_datagram_size: 1500,
            max_recv_batches: 8,
            max_transmits: 1024,
            max_commands: 64,
            stun: StunConfig::default(),
            turn: TurnConfig::default(),
        }
    }
}

/// What the reactor has seen: counters since it started, and current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams received (after splitting GRO batches), including dropped ones.
    pub received_datagrams: u64,
    /// Bytes in those datagrams.
    pub received_bytes: u64,
    /// `recvmmsg` calls that returned data.
    pub recv_syscalls: u64,
    /// Receive buffers that held several datagrams (GRO batches).
    pub gro_batches: u64,
    /// Datagrams handed to the kernel.
    pub sent_datagrams: u64,
    /// Bytes in those datagrams.
    pub sent_bytes: u64,
    /// `sendmsg` calls that succeeded (one per GSO batch).
    pub send_syscalls: u64,
    /// Datagrams from an unknown pair that no connection accepted.
    pub dropped_unknown: u64,
    /// Empty datagrams and STUN-framed ones whose header is inconsistent.
    pub dropped_malformed: u64,
    /// Datagrams over [`Config::max_datagram_size`].
    pub dropped_oversize: u64,
    /// Transmits a connection got wrong (empty, too big, wrong source or family).
    pub dropped_bad_transmit: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// `recvmmsg` calls that failed with something other than `WouldBlock`.
    pub recv_errors: u64,
    /// Answers to the driver's own STUN bindings.
    pub stun_responses: u64,
    /// Messages from TURN servers that carried no peer data (responses, or ones
    /// ignored as malformed or unexpected).
    pub turn_messages: u64,
    /// Peer datagrams that arrived through a relay (Data indications, `ChannelData`).
    pub relayed_received: u64,
    /// Datagrams for peers handed to a relay: wrapped for the server, or held while
    /// the peer's permission is created.
    pub relayed_sent: u64,
    /// Datagrams for a relay that were dropped (no permission yet and the queue
    /// full, no allocation, the TCP/TLS write queue full).
    pub relay_dropped: u64,
    /// Relay allocations now alive.
    pub relays: u64,
    /// Connections now served.
    pub connections: u64,
    /// `(local, remote)` pairs now in the demux table.
    pub pairs: u64,
}

/// Identifies a connection on one driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    index: u32,
    generation: u32,
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}v{}", self.index, self.generation)
    }
}

type CallFn<C> = Box<dyn FnOnce(&mut C, Instant) + Send>;
type CallAllFn<C> = Box<dyn FnMut(&mut C, Instant) + Send>;

enum Command<C> {
    Add {
        connection: C,
        reply: oneshot::Sender<ConnectionId>,
    },
    Remove {
        id: ConnectionId,
        reply: oneshot::Sender<Option<C>>,
    },
    Call {
        id: ConnectionId,
        f: CallFn<C>,
    },
    CallAll {
        f: CallAllFn<C>,
        reply: oneshot::Sender<usize>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    Stun {
        servers: Vec<SocketAddr>,
        reply: oneshot::Sender<Vec<BindingResult>>,
    },
    Allocate {
        server: SocketAddr,
        turn: TurnServer,
        reply: oneshot::Sender<Result<RelayCandidate, TurnError>>,
    },
    Relays {
        reply: oneshot::Sender<Vec<RelayCandidate>>,
    },
    Release {
        relayed: SocketAddr,
        reply: oneshot::Sender<bool>,
    },
    Shutdown,
}

/// A relay candidate: an allocation on a TURN server, alive until released, lost,
/// or the driver stops (which releases it).
///
/// Hand `relayed` to ICE as a local candidate of type relay (related address
/// `mapped`). The driver does the rest: a [`Transmit`] whose
/// [`source`](Transmit::source) is `relayed` goes to the server wrapped (`ChannelData`
/// once a channel is bound, else a Send indication after the peer's permission is
/// created), and what the server relays back arrives as a [`Datagram`] with
/// `destination` = `relayed` and `source` = the peer, through the normal demux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RelayCandidate {
    /// The TURN server's address.
    pub server: SocketAddr,
    /// How the driver reaches it.
    pub transport: TurnTransport,
    /// The relayed transport address: the candidate.
    pub relayed: SocketAddr,
    /// This socket's address as the server saw it (a server-reflexive address over
    /// UDP), when the server said.
    pub mapped: Option<SocketAddr>,
    /// The lifetime the server granted (the driver refreshes before it ends).
    pub lifetime: Duration,
}

/// Binds a UDP socket at `addr` and starts its reactor task; returns a handle to it.
///
/// Must be called inside a tokio runtime. An IPv6 socket is IPv6-only: bind one
/// socket per family. On a wildcard address (`0.0.0.0`, `[::]`) the driver recovers
/// each datagram's destination address and sends from the address a
/// [`Transmit::source`] names. The reactor runs until
/// [`Driver::shutdown`] or until every [`Driver`] and [`ConnectionHandle`] is dropped;
/// then its connections are dropped.
pub fn spawn<C: Connection>(addr: SocketAddr, config: Config) -> Result<Driver<C>, BindError> {
    let io = UdpIo::bind(addr, &config.socket)?;
    let local = io.local_addr();
    let (tx, rx) = mpsc::channel(256);
    let reactor = Reactor::new(io, config, rx);
    tokio::spawn(reactor.run());
    Ok(Driver { tx, local })
}

/// A handle to a running reactor: add connections, gather candidates, read stats.
/// Cheap to clone; every call is one message to the reactor task.
pub struct Driver<C> {
    tx: mpsc::Sender<Command<C>>,
    local: SocketAddr,
}

/// A [`Driver`] that does not keep its reactor running: [`upgrade`](Self::upgrade)
/// gives the driver back while some [`Driver`] or [`ConnectionHandle`] still does.
pub struct WeakDriver<C> {
    tx: mpsc::WeakSender<Command<C>>,
    local: SocketAddr,
}

impl<C> WeakDriver<C> {
    /// The driver, unless every strong handle is gone (the reactor is stopping).
    pub fn upgrade(&self) -> Option<Driver<C>> {
        Some(Driver {
            tx: self.tx.upgrade()?,
            local: self.local,
        })
    }
}

impl<C> Clone for WeakDriver<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            local: self.local,
        }
    }
}

impl<C> std::fmt::Debug for WeakDriver<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakDriver")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<C> std::fmt::Debug for Driver<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<C> std::fmt::Debug for ConnectionHandle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .field("local", &self.driver.local)
            .finish()
    }
}

impl<C> Clone for Driver<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            local: self.local,
        }
    }
}

impl<C> std::fmt::Debug for Command<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Add { .. } => "Add",
            Self::Remove { .. } => "Remove",
            Self::Call { .. } => "Call",
            Self::CallAll { .. } => "CallAll",
            Self::Stats { .. } => "Stats",
            Self::Stun { .. } => "Stun",
            Self::Allocate { .. } => "Allocate",
            Self::Relays { .. } => "Relays",
            Self::Release { .. } => "Release",
            Self::Shutdown => "Shutdown",
        })
    }
}

impl<C: Connection> Driver<C> {
    /// The address the socket is bound to (the IP may be a wildcard).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that does not keep the reactor running (see [`spawn`]): for tasks
    /// that serve the driver's owner, not the driver.
    pub fn downgrade(&self) -> WeakDriver<C> {
        WeakDriver {
            tx: self.tx.downgrade(),
            local: self.local,
        }
    }

    /// Runs `f` on every connection inside the reactor task (with the reactor's
    /// `now`), then drains their transmits; returns how many it ran on. For what
    /// concerns the whole socket, e.g. new local candidates after a NAT re-mapped it.
    pub async fn call_all<F>(&self, f: F) -> Result<usize, DriverError>
    where
        F: FnMut(&mut C, Instant) + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Command::CallAll {
            f: Box::new(f),
            reply,
        })
        .await?;
        rx.await.map_err(|_| DriverError::Closed)
    }

    async fn send(&self, command: Command<C>) -> Result<(), DriverError> {
        self.tx.send(command).await.map_err(|_| DriverError::Closed)
    }

    /// Hands `connection` to the reactor; it is polled at once (so it may send
    /// straight away) and from then on receives the datagrams the demux gives it.
    pub async fn add(&self, connection: C) -> Result<ConnectionHandle<C>, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Add { connection, reply }).await?;
        let id = rx.await.map_err(|_| DriverError::Closed)?;
        Ok(ConnectionHandle {
            driver: self.clone(),
            id,
        })
    }

    /// The reactor's counters.
    pub async fn stats(&self) -> Result<Stats, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply }).await?;
        rx.await.map_err(|_| DriverError::Closed)
    }

    /// Host candidates for this socket: its own address when bound to one, or (on a
    /// wildcard socket) every interface address of its family that passes `filter`,
    /// with the socket's port.
    pub fn host_candidates(&self, filter: &HostFilter) -> Result<Vec<SocketAddr>, CandidateError> {
        if !self.local.ip().is_unspecified() {
            return Ok(vec![self.local]);
        }
        let port = self.local.port();
        let ipv4 = self.local.is_ipv4();
        Ok(crate::host_addresses(filter)?
            .into_iter()
            .filter(|ip| ip.is_ipv4() == ipv4)
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// Sends a STUN binding request from this socket to every server (at once) and
    /// returns, in the same order, the server-reflexive candidate each one gave, or why
    /// it gave none. Names are resolved first; a binding retransmits per
    /// [`Config::stun`], so the whole call ends within
    /// [`StunConfig::total_timeout`] after resolution.
    pub async fn server_reflexive(
        &self,
        servers: &[StunServer],
    ) -> Vec<Result<ReflexiveCandidate, StunError>> {
        let ipv4 = self.local.is_ipv4();
        let mut results: Vec<Option<Result<ReflexiveCandidate, StunError>>> = Vec::new();
        let mut resolved = Vec::new();
        for server in servers {
            match server.resolve(ipv4).await {
                Ok(addr) => {
                    resolved.push(addr);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut answers = if resolved.is_empty() {
            Vec::new()
        } else {
            let (reply, rx) = oneshot::channel();
            match self
                .send(Command::Stun {
                    servers: resolved,
                    reply,
                })
                .await
            {
                Ok(()) => rx.await.unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        }
        .into_iter();
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => answers
                    .next()
                    .unwrap_or(Err(StunError::Driver(DriverError::Closed))),
            })
            .collect()
    }

    /// Allocates a relay on every TURN server (at once) and returns, in the same
    /// order, the relay candidate each gave, or why it gave none.
    ///
    /// Over UDP the allocation uses this driver's socket (one allocation per server:
    /// asking again for a live one returns it); over TCP and TLS each allocation has
    /// its own connection. The driver refreshes allocations, permissions and channels
    /// before they expire, and releases them on [`Driver::shutdown`]. Names are
    /// resolved first; each allocation ends within [`TurnConfig::transaction_timeout`]
    /// per request (plus [`TurnConfig::connect_timeout`] over TCP/TLS).
    pub async fn allocate_relays(
        &self,
        servers: &[TurnServer],
    ) -> Vec<Result<RelayCandidate, TurnError>> {
        let ipv4 = self.local.is_ipv4();
        let mut pending = Vec::with_capacity(servers.len());
        for turn in servers {
            if turn.credentials().is_none() {
                pending.push(Err(TurnError::MissingCredentials {
                    server: turn.to_string(),
                }));
                continue;
            }
            let server = match turn.resolve(ipv4).await {
                Ok(addr) => addr,
                Err(e) => {
                    pending.push(Err(e));
                    continue;
                }
            };
            let (reply, rx) = oneshot::channel();
            let command = Command::Allocate {
                server,
                turn: turn.clone(),
                reply,
            };
            match self.send(command).await {
                Ok(()) => pending.push(Ok(rx)),
                Err(e) => pending.push(Err(e.into())),
            }
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Ok(rx) => rx
                    .await
                    .unwrap_or(Err(TurnError::Driver(DriverError::Closed))),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// The relay allocations now alive (lost ones are gone from the list).
    pub async fn relays(&self) -> Result<Vec<RelayCandidate>, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Relays { reply }).await?;
        rx.await.map_err(|_| DriverError::Closed)
    }

    /// Deletes the allocation whose relayed address is `relayed` (a Refresh with
    /// lifetime 0 to the server). `false` when there is none. An allocation asked
    /// of the same server afterwards is a new one.
    pub async fn release_relay(&self, relayed: SocketAddr) -> Result<bool, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Release { relayed, reply }).await?;
        rx.await.map_err(|_| DriverError::Closed)
    }

    /// Stops the reactor (its connections are dropped, its relays released). Returns
    /// once the request is queued; later requests fail with [`DriverError::Closed`].
    pub async fn shutdown(&self) {
        // An error means it has stopped already.
        let _ = self.tx.send(Command::Shutdown).await;
    }

    /// Waits until the reactor has stopped.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A handle to one connection on a driver: run code on it in the reactor task, or
/// remove it.
pub struct ConnectionHandle<C> {
    driver: Driver<C>,
    id: ConnectionId,
}

impl<C> Clone for ConnectionHandle<C> {
    fn clone(&self) -> Self {
        Self {
            driver: self.driver.clone(),
            id: self.id,
        }
    }
}

impl<C: Connection> ConnectionHandle<C> {
    /// The connection's id on its driver.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The driver the connection runs on.
    pub fn driver(&self) -> &Driver<C> {
        &self.driver
    }

    /// Runs `f` on the connection inside the reactor task (with the reactor's `now`),
    /// then drains the connection's transmits. This is how users act on a connection:
    /// one message per call, never per packet.
    pub async fn call<R, F>(&self, f: F) -> Result<R, DriverError>
    where
        F: FnOnce(&mut C, Instant) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let f: CallFn<C> = Box::new(move |c, now| {
            // The caller may have given up waiting; nothing to do then.
            let _ = reply.send(f(c, now));
        });
        self.driver.send(Command::Call { id: self.id, f }).await?;
        // The reactor drops the closure unrun when the id is unknown.
        rx.await
            .map_err(|_| DriverError::UnknownConnection(self.id))
    }

    /// Takes the connection out of the reactor (and its pairs out of the demux table)
    /// and gives it back.
    pub async fn remove(&self) -> Result<C, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.driver
            .send(Command::Remove { id: self.id, reply })
            .await?;
        rx.await
            .map_err(|_| DriverError::Closed)?
            .ok_or(DriverError::UnknownConnection(self.id))
    }
}

type Pair = (SocketAddr, SocketAddr);

struct Entry<C> {
    connection: C,
    dirty: bool,
    timer: Option<Instant>,
    /// `(local, remote)` pairs in the demux table for this connection.
    pairs: Vec<Pair>,
}

struct Slot<C> {
    generation: u32,
    entry: Option<Entry<C>>,
}

struct StunWaiter {
    ids: Vec<[u8; TRANSACTION_ID_LEN]>,
    results: Vec<Option<BindingResult>>,
    reply: Option<oneshot::Sender<Vec<BindingResult>>>,
}

/// What woke the reactor.
enum Wake<C> {
    Command(Option<Command<C>>),
    Stream(Option<(u64, StreamEvent)>),
    Io,
}

/// One TURN allocation the reactor drives.
struct Relay {
    client: TurnClient,
    transport: TurnTransport,
    /// TCP/TLS only: the connection's task, and the framing of what it reads.
    stream: Option<StreamLink>,
    waiter: Option<oneshot::Sender<Result<RelayCandidate, TurnError>>>,
    candidate: Option<RelayCandidate>,
}

struct StreamLink {
    tx: mpsc::Sender<Vec<u8>>,
    framer: StreamFramer,
    /// Framed messages for the next write.
    out: Vec<u8>,
}

/// Stream events queued to the reactor from all TCP/TLS tasks.
const STREAM_EVENTS: usize = 256;

struct Reactor<C> {
    io: UdpIo,
    config: Config,
    commands: mpsc::Receiver<Command<C>>,
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    pairs: HashMap<Pair, ConnectionId>,
    /// The last pair looked up, and its connection: the datagrams of a GRO batch (and
    /// most bursts) share one pair. Cleared whenever a pair leaves the table.
    last_route: Option<(Pair, ConnectionId)>,
    timers: BTreeSet<(Instant, ConnectionId)>,
    dirty: Vec<ConnectionId>,
    stun: StunClient,
    stun_waiters: Vec<StunWaiter>,
    rng: rand::rngs::StdRng,
    relays: HashMap<u64, Relay>,
    next_relay: u64,
    /// UDP allocations by server address (the demux checks it).
    udp_relays: HashMap<SocketAddr, u64>,
    /// Live allocations by relayed address (the transmit path checks it).
    relay_by_addr: HashMap<SocketAddr, u64>,
    stream_tx: mpsc::Sender<(u64, StreamEvent)>,
    stream_rx: mpsc::Receiver<(u64, StreamEvent)>,
    scratch: Vec<u8>,
    recv_buf: Vec<u8>,
    recv_meta: Vec<quinn_udp::RecvMeta>,
    send: SendQueue,
    stats: Stats,
    stopping: bool,
}

/// Flush the send queue once it holds this much.
const SEND_QUEUE_BYTES: usize = 256 * 1024;

impl<C: Connection> Reactor<C> {
    fn new(io: UdpIo, config: Config, commands: mpsc::Receiver<Command<C>>) -> Self {
        let slot = io.recv_slot_size();
        let (stream_tx, stream_rx) = mpsc::channel(STREAM_EVENTS);
        Self {
            relays: HashMap::new(),
            next_relay: 0,
            udp_relays: HashMap::new(),
            relay_by_addr: HashMap::new(),
            stream_tx,
            stream_rx,
            scratch: Vec::new(),
            stun: StunClient::new(config.stun),
            recv_buf: vec![0; slot * quinn_udp::BATCH_SIZE],
            recv_meta: vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
            send: SendQueue::with_capacity(SEND_QUEUE_BYTES + MAX_GSO_BYTES),
            io,
            config,
            commands,
            slots: Vec::new(),
            free: Vec::new(),
            pairs: HashMap::new(),
            last_route: None,
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            stun_waiters: Vec::new(),
            rng: rand::rngs::StdRng::from_os_rng(),
            stats: Stats::default(),
            stopping: false,
        }
    }

    /// The reactor's one clock: tokio's, so paused-clock tests drive it.
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    async fn run(mut self) {
        debug!(local = %self.io.local_addr(), "UDP reactor started");
        let mut wake = Wake::Io;
        loop {
            let now = Self::now();
            match wake {
                Wake::Command(Some(command)) => self.handle_command(now, command),
                Wake::Command(None) => self.stopping = true,
                Wake::Stream(Some((key, event))) => self.handle_stream_event(now, key, event),
                Wake::Stream(None) | Wake::Io => {}
            }
            self.take_commands(now);
            self.take_stream_events(now);
            if self.stopping {
                self.release_relays(now);
                break;
            }
            self.receive(now);
            self.handle_timeouts(now);
            let mut budget = self.config.max_transmits;
            loop {
                let full = self.drain(now, &mut budget);
                self.flush().await;
                if !full {
                    break;
                }
            }
            if !self.dirty.is_empty() {
                // Out of budget with work left: let other tasks run, then go on
                // without waiting for an event.
                tokio::task::yield_now().await;
                wake = Wake::Io;
                continue;
            }
            wake = self.wait().await;
        }
        debug!(local = %self.io.local_addr(), "UDP reactor stopped");
    }

    /// Sleeps until a command, readability, or the next timer.
    async fn wait(&mut self) -> Wake<C> {
        let deadline = self
            .timers
            .first()
            .map(|&(at, _)| at)
            .into_iter()
            .chain(self.stun.poll_timeout())
            .chain(self.relays.values().filter_map(|r| r.client.poll_timeout()))
            .min();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = self.commands.recv() => Wake::Command(command),
            event = self.stream_rx.recv() => Wake::Stream(event),
            readable = self.io.readable() => {
                if let Err(e) = readable {
                    debug!(error = %e, "UDP socket readiness failed");
                }
                Wake::Io
            }
            () = sleep => Wake::Io,
        }
    }

    fn take_commands(&mut self, now: Instant) {
        for _ in 0..self.config.max_commands {
            match self.commands.try_recv() {
                Ok(command) => self.handle_command(now, command),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return;
                }
            }
        }
    }

    fn handle_command(&mut self, now: Instant, command: Command<C>) {
        trace!(?command, "driver command");
        match command {
            Command::Add { connection, reply } => {
                let id = self.insert(connection);
                if reply.send(id).is_err() {
                    // The caller went away: nobody can reach the connection.
                    self.remove(id);
                }
            }
            Command::Remove { id, reply } => {
                let _ = reply.send(self.remove(id));
            }
            Command::Call { id, f } => {
                if let Some(entry) = self.entry_mut(id) {
                    f(&mut entry.connection, now);
                    self.mark_dirty(id);
                }
            }
            Command::CallAll { mut f, reply } => {
                let mut ids = Vec::new();
                for (index, slot) in self.slots.iter_mut().enumerate() {
                    if let Some(entry) = slot.entry.as_mut() {
                        f(&mut entry.connection, now);
                        // Fewer than 2^32 slots (see `insert`).
                        let index = u32::try_from(index).expect("fewer than 2^32 connections");
                        ids.push(ConnectionId {
                            index,
                            generation: slot.generation,
                        });
                    }
                }
                let _ = reply.send(ids.len());
                for id in ids {
                    self.mark_dirty(id);
                }
            }
            Command::Stats { reply } => {
                let mut stats = self.stats;
                stats.connections = (self.slots.len() - self.free.len()) as u64;
                stats.pairs = self.pairs.len() as u64;
                stats.relays = self.relay_by_addr.len() as u64;
                let _ = reply.send(stats);
            }
            Command::Allocate {
                server,
                turn,
                reply,
            } => self.allocate(now, server, &turn, reply),
            Command::Relays { reply } => {
                let mut relays: Vec<RelayCandidate> =
                    self.relays.values().filter_map(|r| r.candidate).collect();
                relays.sort_by_key(|c| c.relayed);
                let _ = reply.send(relays);
            }
            Command::Release { relayed, reply } => {
                let found = match self.relay_by_addr.remove(&relayed) {
                    Some(key) => {
                        if let Some(relay) = self.relays.get_mut(&key) {
                            relay.client.release(now);
                            relay.candidate = None;
                        }
                        // A new allocation on that server is a new one, not this
                        // one on its way out (which would answer `Busy`).
                        self.udp_relays.retain(|_, k| *k != key);
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
            Command::Stun { servers, reply } => {
                let mut ids = Vec::with_capacity(servers.len());
                for server in servers {
                    let id: [u8; TRANSACTION_ID_LEN] = self.rng.random();
                    self.stun.start(now, server, id);
                    ids.push(id);
                }
                self.stun_waiters.push(StunWaiter {
                    results: ids.iter().map(|_| None).collect(),
                    ids,
                    reply: Some(reply),
                });
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    fn insert(&mut self, connection: C) -> ConnectionId {
        let entry = Entry {
            connection,
            dirty: false,
            timer: None,
            pairs: Vec::new(),
        };
        let id = if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.entry = Some(entry);
            ConnectionId {
                index,
                generation: slot.generation,
            }
        } else {
            // More than u32::MAX connections on one socket cannot be: memory runs
            // out long before.
            let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
            self.slots.push(Slot {
                generation: 0,
                entry: Some(entry),
            });
            ConnectionId {
                index,
                generation: 0,
            }
        };
        debug!(%id, "connection added");
        self.mark_dirty(id);
        id
    }

    fn remove(&mut self, id: ConnectionId) -> Option<C> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        for pair in &entry.pairs {
            self.pairs.remove(pair);
        }
        self.last_route = None;
        if let Some(at) = entry.timer {
            self.timers.remove(&(at, id));
        }
        debug!(%id, pairs = entry.pairs.len(), "connection removed");
        Some(entry.connection)
    }

    fn entry_mut(&mut self, id: ConnectionId) -> Option<&mut Entry<C>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_mut()
    }

    fn mark_dirty(&mut self, id: ConnectionId) {
        if let Some(entry) = self.entry_mut(id)
            && !entry.dirty
        {
            entry.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Reads up to `max_recv_batches` batches and feeds every datagram in them.
    fn receive(&mut self, now: Instant) {
        let slot = self.io.recv_slot_size();
        let mut buf = std::mem::take(&mut self.recv_buf);
        let mut meta = std::mem::take(&mut self.recv_meta);
        for _ in 0..self.config.max_recv_batches {
            let n = {
                let mut chunks = buf.chunks_mut(slot);
                let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                match self.io.try_recv(&mut slices, &mut meta) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.stats.recv_errors += 1;
                        debug!(error = %e, "recvmmsg failed");
                        break;
                    }
                }
            };
            self.stats.recv_syscalls += 1;
            for (m, chunk) in meta.iter().zip(buf.chunks(slot)).take(n) {
                let data = &chunk[..m.len.min(chunk.len())];
                let source = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                let local_ip = m.dst_ip.unwrap_or(self.io.local_addr().ip());
                let destination =
                    SocketAddr::new(local_ip.to_canonical(), self.io.local_addr().port());
                let ecn = m.ecn.map(Ecn::from_quinn);
                if data.is_empty() {
                    self.stats.received_datagrams += 1;
                    self.stats.dropped_malformed += 1;
                    trace!(%source, "empty datagram dropped");
                    continue;
                }
                let stride = if m.stride == 0 { data.len() } else { m.stride };
                if data.len() > stride {
                    self.stats.gro_batches += 1;
                }
                for payload in data.chunks(stride) {
                    self.route(now, Datagram::new(source, destination, ecn, payload));
                }
            }
        }
        self.recv_buf = buf;
        self.recv_meta = meta;
        self.finish_stun();
    }

    /// The demultiplexer: the driver's own STUN answers, then the pair table, then
    /// `accepts()` for an unknown pair, else drop and count.
    fn route(&mut self, now: Instant, datagram: Datagram<'_>) {
        let Datagram {
            source,
            destination,
            payload,
            ..
        } = datagram;
        self.stats.received_datagrams += 1;
        self.stats.received_bytes += payload.len() as u64;
        trace!(%source, %destination, len = payload.len(), "datagram");
        if payload.len() > self.config.max_datagram_size {
            self.stats.dropped_oversize += 1;
            trace!(%source, len = payload.len(), "oversize datagram dropped");
            return;
        }
        match stun::shape(payload) {
            StunShape::Malformed => {
                self.stats.dropped_malformed += 1;
                trace!(%source, "malformed STUN datagram dropped");
                return;
            }
            StunShape::Stun {
                response: true,
                transaction,
            } if self.stun.has_pending() && self.stun.owns(&transaction) => {
                self.stats.stun_responses += 1;
                self.stun
                    .handle_response(&transaction, source, destination, payload);
                return;
            }
            _ => {}
        }
        if !self.udp_relays.is_empty()
            && let Some(&key) = self.udp_relays.get(&source)
        {
            self.turn_server_datagram(now, key, datagram);
            return;
        }
        self.deliver(now, datagram);
    }

    /// A datagram from the server of UDP allocation `key`: a response, or peer data
    /// to deliver as if it had arrived at the relayed address.
    fn turn_server_datagram(&mut self, now: Instant, key: u64, datagram: Datagram<'_>) {
        let Some(relay) = self.relays.get_mut(&key) else {
            return;
        };
        let relayed = relay.client.relayed();
        let inbound = relay.client.handle_message(now, datagram.payload);
        self.relay_inbound(now, relayed, inbound);
    }

    fn relay_inbound(&mut self, now: Instant, relayed: Option<SocketAddr>, inbound: Inbound<'_>) {
        match (inbound, relayed) {
            (Inbound::Data { peer, payload }, Some(relayed)) => {
                self.stats.relayed_received += 1;
                trace!(%peer, %relayed, len = payload.len(), "relayed datagram");
                self.deliver(now, Datagram::new(peer, relayed, None, payload));
            }
            _ => self.stats.turn_messages += 1,
        }
    }

    /// The pair table, then `accepts()` for an unknown pair, else drop and count.
    fn deliver(&mut self, now: Instant, datagram: Datagram<'_>) {
        let Datagram {
            source,
            destination,
            ..
        } = datagram;
        let key = (destination, source);
        let cached = self.last_route.filter(|(pair, _)| *pair == key);
        let id = match cached
            .map(|(_, id)| id)
            .or_else(|| self.pairs.get(&key).copied())
        {
            Some(id) => {
                self.last_route = Some((key, id));
                id
            }
            None => {
                let Some(id) = self.accepting(&datagram) else {
                    self.stats.dropped_unknown += 1;
                    trace!(%source, %destination, "datagram from an unknown pair dropped");
                    return;
                };
                self.learn_pair(id, key);
                id
            }
        };
        if let Some(entry) = self.entry_mut(id) {
            entry.connection.handle_datagram(now, datagram);
            self.mark_dirty(id);
        }
    }

    /// The first live connection whose `accepts()` takes `datagram`: a scan over every
    /// connection, paid only by datagrams from pairs not in the table.
    fn accepting(&self, datagram: &Datagram<'_>) -> Option<ConnectionId> {
        self.slots.iter().enumerate().find_map(|(index, slot)| {
            let entry = slot.entry.as_ref()?;
            // `slots` never grows past u32::MAX entries (see `insert`).
            let id = ConnectionId {
                index: index as u32,
                generation: slot.generation,
            };
            entry.connection.accepts(datagram).then_some(id)
        })
    }

    fn learn_pair(&mut self, id: ConnectionId, pair: Pair) {
        if self.pairs.contains_key(&pair) {
            return;
        }
        if let Some(entry) = self.entry_mut(id) {
            entry.pairs.push(pair);
            self.pairs.insert(pair, id);
            debug!(%id, local = %pair.0, remote = %pair.1, "pair learned");
        }
    }

    fn handle_timeouts(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(entry) = self.entry_mut(id) {
                entry.timer = None;
                entry.connection.handle_timeout(now);
                self.mark_dirty(id);
            }
        }
        self.stun.handle_timeout(now);
        self.finish_stun();
        for relay in self.relays.values_mut() {
            if relay.client.poll_timeout().is_some_and(|at| at <= now) {
                relay.client.handle_timeout(now);
            }
        }
        self.relay_events();
    }

    // ---- TURN ----

    fn allocate(
        &mut self,
        now: Instant,
        server: SocketAddr,
        turn: &TurnServer,
        reply: oneshot::Sender<Result<RelayCandidate, TurnError>>,
    ) {
        let transport = turn.transport();
        if transport == TurnTransport::Udp
            && let Some(relay) = self
                .udp_relays
                .get(&server)
                .and_then(|key| self.relays.get(key))
        {
            let _ = reply.send(match relay.candidate {
                Some(candidate) => Ok(candidate),
                None => Err(TurnError::Busy { server }),
            });
            return;
        }
        let Some((username, password)) = turn.credentials() else {
            let _ = reply.send(Err(TurnError::MissingCredentials {
                server: turn.to_string(),
            }));
            return;
        };
        let key = self.next_relay;
        self.next_relay += 1;
        let reliable = transport != TurnTransport::Udp;
        let client = TurnClient::new(
            now,
            server,
            reliable,
            username,
            password,
            self.config.turn.clone(),
            self.rng.random(),
        );
        let stream = reliable.then(|| {
            let tls = (transport == TurnTransport::Tls).then(|| {
                let config = self
                    .config
                    .turn
                    .tls
                    .clone()
                    .unwrap_or_else(turn_stream::default_tls);
                (config, turn.host().to_owned())
            });
            StreamLink {
                tx: turn_stream::spawn(
                    key,
                    server,
                    tls,
                    self.config.turn.connect_timeout,
                    self.stream_tx.clone(),
                ),
                framer: StreamFramer::new(),
                out: Vec::new(),
            }
        });
        debug!(%server, %transport, key, "TURN allocation started");
        if !reliable {
            self.udp_relays.insert(server, key);
        }
        self.relays.insert(
            key,
            Relay {
                client,
                transport,
                stream,
                waiter: Some(reply),
                candidate: None,
            },
        );
    }

    fn take_stream_events(&mut self, now: Instant) {
        for _ in 0..self.config.max_commands {
            match self.stream_rx.try_recv() {
                Ok((key, event)) => self.handle_stream_event(now, key, event),
                Err(_) => return,
            }
        }
    }

    fn handle_stream_event(&mut self, now: Instant, key: u64, event: StreamEvent) {
        let Some(relay) = self.relays.get_mut(&key) else {
            return;
        };
        match event {
            StreamEvent::Connected(local) => {
                trace!(key, %local, "TURN stream up");
            }
            StreamEvent::Closed(error) => relay.client.transport_lost(error),
            StreamEvent::Data(bytes) => {
                let Some(link) = relay.stream.as_mut() else {
                    return;
                };
                let mut framer = std::mem::take(&mut link.framer);
                framer.feed(&bytes);
                while let Some(relay) = self.relays.get_mut(&key) {
                    match framer.next_message() {
                        Ok(Some(message)) => {
                            let relayed = relay.client.relayed();
                            let inbound = relay.client.handle_message(now, message);
                            self.relay_inbound(now, relayed, inbound);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let server = relay.client.server();
                            debug!(%server, "TURN stream lost its framing");
                            relay
                                .client
                                .transport_lost(TurnError::ConnectionClosed { server });
                            break;
                        }
                    }
                }
                if let Some(link) = self.relays.get_mut(&key).and_then(|r| r.stream.as_mut()) {
                    link.framer = framer;
                }
            }
        }
        self.relay_events();
    }

    /// Answers allocation waiters and forgets lost allocations.
    fn relay_events(&mut self) {
        for (&key, relay) in &mut self.relays {
            while let Some(event) = relay.client.poll_event() {
                match event {
                    TurnEvent::Allocated {
                        relayed,
                        mapped,
                        lifetime,
                    } => {
                        let candidate = RelayCandidate {
                            server: relay.client.server(),
                            transport: relay.transport,
                            relayed,
                            mapped,
                            lifetime,
                        };
                        relay.candidate = Some(candidate);
                        self.relay_by_addr.insert(relayed, key);
                        if let Some(waiter) = relay.waiter.take() {
                            let _ = waiter.send(Ok(candidate));
                        }
                    }
                    TurnEvent::Failed(error) => {
                        if let Some(candidate) = relay.candidate.take() {
                            self.relay_by_addr.remove(&candidate.relayed);
                            debug!(relayed = %candidate.relayed, %error, "relay lost");
                        }
                        if let Some(waiter) = relay.waiter.take() {
                            let _ = waiter.send(Err(error));
                        }
                    }
                }
            }
        }
    }

    /// Sends the relays' control messages (and data held for permissions); drops
    /// relays that are finished.
    fn drain_relays(&mut self, now: Instant) {
        if self.relays.is_empty() {
            return;
        }
        let max_segments = self.io.max_segments();
        let mut finished = Vec::new();
        for (&key, relay) in &mut self.relays {
            let server = relay.client.server();
            match relay.stream.as_mut() {
                None => {
                    for _ in 0..64 {
                        let start = self.send.buf.len();
                        if !relay.client.poll_transmit(now, &mut self.send.buf) {
                            break;
                        }
                        self.send
                            .push(start, None, server, None, None, max_segments);
                    }
                }
                Some(link) => {
                    for _ in 0..64 {
                        if !relay.client.poll_transmit(now, &mut link.out) {
                            break;
                        }
                    }
                }
            }
            if relay.client.is_closed() {
                finished.push(key);
            }
        }
        for key in finished {
            if let Some(mut relay) = self.relays.remove(&key) {
                debug!(key, server = %relay.client.server(), "TURN relay dropped");
                if let Some(waiter) = relay.waiter.take() {
                    let server = relay.client.server();
                    let _ = waiter.send(Err(TurnError::ConnectionClosed { server }));
                }
                if let Some(candidate) = relay.candidate {
                    self.relay_by_addr.remove(&candidate.relayed);
                }
                self.udp_relays.retain(|_, k| *k != key);
                if let Some(link) = relay.stream
                    && !link.out.is_empty()
                {
                    // The goodbye (a Refresh with lifetime 0): best effort.
                    let _ = link.tx.try_send(link.out);
                }
            }
        }
    }

    /// Deletes every allocation (the reactor is stopping).
    fn release_relays(&mut self, now: Instant) {
        for relay in self.relays.values_mut() {
            relay.client.release(now);
        }
        self.drain_relays(now);
        // Best effort: one send per UDP goodbye, without waiting for writability.
        for batch in &self.send.batches {
            let contents = &self.send.buf[batch.start..batch.end];
            let transmit = quinn_udp::Transmit {
                destination: batch.destination,
                ecn: None,
                contents,
                segment_size: None,
                src_ip: batch.src_ip,
            };
            if batch.segments() == 1 {
                let _ = self.io.try_send(&transmit);
            }
        }
        self.send.clear();
    }

    /// Answers STUN waiters whose transactions have all ended.
    fn finish_stun(&mut self) {
        while let Some((id, result)) = self.stun.poll_result() {
            for waiter in &mut self.stun_waiters {
                if let Some(i) = waiter.ids.iter().position(|t| t == &id) {
                    waiter.results[i] = Some(result);
                    break;
                }
            }
        }
        self.stun_waiters.retain_mut(|waiter| {
            if waiter.results.iter().all(Option::is_some) {
                let results = waiter.results.drain(..).flatten().collect();
                if let Some(reply) = waiter.reply.take() {
                    let _ = reply.send(results);
                }
                false
            } else {
                true
            }
        });
    }

    /// Drains transmits from dirty connections (and the STUN client) into the send
    /// queue. Returns `true` when it stopped because the queue is full (flush, then
    /// call again); leaves connections dirty when the budget runs out.
    fn drain(&mut self, now: Instant, budget: &mut usize) -> bool {
        let full = self.drain_connections(now, budget);
        self.drain_relays(now);
        full
    }

    fn drain_connections(&mut self, now: Instant, budget: &mut usize) -> bool {
        self.drain_relays(now);
        let max_segments = self.io.max_segments();
        while self.send.buf.len() < SEND_QUEUE_BYTES {
            let start = self.send.buf.len();
            let Some(server) = self.stun.poll_transmit(now, &mut self.send.buf) else {
                break;
            };
            self.send
                .push(start, None, server, None, None, max_segments);
        }
        while let Some(&id) = self.dirty.last() {
            if self.send.buf.len() >= SEND_QUEUE_BYTES {
                return true;
            }
            if *budget == 0 {
                return false;
            }
            let local = self.io.local_addr();
            let Some(entry) = self
                .slots
                .get_mut(id.index as usize)
                .filter(|slot| slot.generation == id.generation)
                .and_then(|slot| slot.entry.as_mut())
            else {
                self.dirty.pop();
                continue;
            };
            let mut finished = true;
            let mut learned: Vec<Pair> = Vec::new();
            while *budget > 0 {
                if self.send.buf.len() >= SEND_QUEUE_BYTES {
                    finished = false;
                    break;
                }
                let start = self.send.buf.len();
                let Some(transmit) = entry.connection.poll_transmit(now, &mut self.send.buf) else {
                    self.send.buf.truncate(start);
                    break;
                };
                *budget -= 1;
                let len = self.send.buf.len() - start;
                if let Some(source) = transmit.source
                    && !self.relay_by_addr.is_empty()
                    && let Some(relay) = self
                        .relay_by_addr
                        .get(&SocketAddr::new(source.ip().to_canonical(), source.port()))
                        .and_then(|key| self.relays.get_mut(key))
                {
                    // Through a relay: wrap each datagram for the server.
                    self.scratch.clear();
                    self.scratch.extend_from_slice(&self.send.buf[start..]);
                    self.send.buf.truncate(start);
                    let segment = transmit.segment_size.unwrap_or(len).max(1);
                    let server = relay.client.server();
                    for datagram in self.scratch.chunks(segment) {
                        let outcome = match relay.stream.as_mut() {
                            None => {
                                let at = self.send.buf.len();
                                let outcome = relay.client.send(
                                    now,
                                    transmit.destination,
                                    datagram,
                                    &mut self.send.buf,
                                );
                                if outcome == SendOutcome::Wrapped {
                                    self.send.push(at, None, server, None, None, max_segments);
                                }
                                outcome
                            }
                            Some(link) => relay.client.send(
                                now,
                                transmit.destination,
                                datagram,
                                &mut link.out,
                            ),
                        };
                        match outcome {
                            SendOutcome::Wrapped | SendOutcome::Queued => {
                                self.stats.relayed_sent += 1;
                            }
                            SendOutcome::Dropped(reason) => {
                                self.stats.relay_dropped += 1;
                                trace!(%id, peer = %transmit.destination, reason, "relayed datagram dropped");
                            }
                        }
                    }
                    let pair = (source, transmit.destination);
                    if !entry.pairs.contains(&pair) && !learned.contains(&pair) {
                        learned.push(pair);
                    }
                    continue;
                }
                match check_transmit(&transmit, len, local) {
                    Ok((src_ip, from)) => {
                        trace!(%id, destination = %transmit.destination, len, "transmit");
                        self.send.push(
                            start,
                            transmit.segment_size,
                            transmit.destination,
                            src_ip,
                            transmit.ecn,
                            max_segments,
                        );
                        if let Some(from) = from {
                            let pair = (from, transmit.destination);
                            if !entry.pairs.contains(&pair) && !learned.contains(&pair) {
                                learned.push(pair);
                            }
                        }
                    }
                    Err(reason) => {
                        self.send.buf.truncate(start);
                        self.stats.dropped_bad_transmit += 1;
                        debug!(%id, destination = %transmit.destination, len, reason, "bad transmit dropped");
                    }
                }
            }
            if *budget == 0 {
                finished = false;
            }
            let timeout = entry.connection.poll_timeout();
            let closed = entry.connection.is_closed();
            let old = std::mem::replace(&mut entry.timer, timeout);
            if finished {
                entry.dirty = false;
            }
            if old != timeout {
                if let Some(at) = old {
                    self.timers.remove(&(at, id));
                }
                if let Some(at) = timeout {
                    self.timers.insert((at, id));
                }
            }
            for pair in learned {
                self.learn_pair(id, pair);
            }
            if closed {
                self.dirty.pop();
                self.remove(id);
                continue;
            }
            if !finished {
                return self.send.buf.len() >= SEND_QUEUE_BYTES;
            }
            self.dirty.pop();
        }
        false
    }

    /// Sends every queued batch: one `sendmsg` per GSO chunk. Waits for writability
    /// when the kernel buffer is full; drops (and counts) what the kernel refuses.
    async fn flush(&mut self) {
        for relay in self.relays.values_mut() {
            if let Some(link) = relay.stream.as_mut()
                && !link.out.is_empty()
            {
                let bytes = std::mem::take(&mut link.out);
                if link.tx.try_send(bytes).is_err() {
                    // Full (the server or network is slow) or gone (its Closed event
                    // is on the way): drop, as a congested UDP path would.
                    self.stats.relay_dropped += 1;
                }
            }
        }
        if self.send.is_empty() {
            self.send.clear();
            return;
        }
        let max_segments = self.io.max_segments();
        for batch in &self.send.batches {
            for (start, end) in batch::chunks(batch, max_segments) {
                let contents = &self.send.buf[start..end];
                let segments = (end - start).div_ceil(batch.segment_size);
                let transmit = quinn_udp::Transmit {
                    destination: batch.destination,
                    ecn: batch.ecn.map(Ecn::to_quinn),
                    contents,
                    segment_size: (segments > 1).then_some(batch.segment_size),
                    src_ip: batch.src_ip,
                };
                // Bounded: a WouldBlock waits for writability, which the kernel gives
                // as its buffer drains; a few tries then give up on this datagram.
                let mut tries = 0;
                loop {
                    match self.io.try_send(&transmit) {
                        Ok(()) => {
                            self.stats.send_syscalls += 1;
                            self.stats.sent_datagrams += segments as u64;
                            self.stats.sent_bytes += contents.len() as u64;
                            trace!(destination = %batch.destination, bytes = contents.len(), segments, "sent");
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 64 => {
                            tries += 1;
                            if let Err(e) = self.io.writable().await {
                                debug!(error = %e, "UDP socket writability failed");
                            }
                        }
                        Err(e) => {
                            self.stats.send_errors += segments as u64;
                            debug!(destination = %batch.destination, error = %e, segments, "send failed");
                            break;
                        }
                    }
                }
            }
        }
        self.send.clear();
    }
}

/// Checks a connection's transmit against the socket. Gives the source IP to ask the
/// kernel for, and the local address the datagram leaves from (for the pair table)
/// when known.
fn check_transmit(
    transmit: &Transmit,
    len: usize,
    local: SocketAddr,
) -> Result<(Option<IpAddr>, Option<SocketAddr>), &'static str> {
    if len == 0 {
        return Err("empty");
    }
    if transmit.segment_size == Some(0) {
        return Err("segment size 0");
    }
    let datagram = transmit.segment_size.map_or(len, |s| s.min(len));
    if datagram > MAX_GSO_BYTES || len > MAX_GSO_BYTES * crate::socket::MAX_GSO_SEGMENTS {
        return Err("too big");
    }
    if transmit.destination.is_ipv4() != local.is_ipv4() {
        return Err("destination of the other IP family");
    }
    let wildcard = local.ip().is_unspecified();
    match transmit.source {
        None if wildcard => Ok((None, None)),
        None => Ok((None, Some(local))),
        Some(source) => {
            let source = SocketAddr::new(source.ip().to_canonical(), source.port());
            if source.port() != local.port() || source.is_ipv4() != local.is_ipv4() {
                Err("source is not this socket")
            } else if wildcard {
                Ok((Some(source.ip()), Some(source)))
            } else if source.ip() == local.ip() {
                Ok((None, Some(local)))
            } else {
                Err("source is not this socket's address")
            }
        }
    }
}
