//! The glare broker: PROTOCOL.md §1 over HTTP, Server-Sent Events and WebSocket.
//!
//! Peers open a channel (an SSE stream or a WebSocket), host sessions on it, find each
//! other with `/list`, and relay JSON messages with `/send`. The broker keeps every
//! channel's recent messages so a stream that drops can resume with `Last-Event-ID`
//! and lose nothing.
//!
//! Several nodes behind a load balancer act as one broker when they share a Redis
//! ([`Config::redis`], the [`backplane`] module): any node accepts any request, a send to
//! a channel held by another node is routed through that node's pub/sub inbox, `/list`
//! and list watches see every node's sessions, and a stream resumes on any node. The
//! in-memory registry (one node) stays the default.
//!
//! What it does not do: TLS (put it behind a TLS-terminating proxy), authentication
//! beyond channel keys, persistence of its own (an in-memory node forgets every channel
//! when it restarts; on Redis, the channels live as long as Redis keeps them).
//!
//! ```text
//!  HTTP/1.1 ──> hyper (header timeout) ──> axum router ──> handlers ──> Registry
//!                                            │ CORS, 405, 404             │ channels, sessions,
//!                                            │ body limit + timeout       │ watchers (in memory)
//!  SSE / WebSocket streams <────────────────── Attachment / Watch <───────┘
//! ```
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let server = glare_broker::Server::bind("127.0.0.1:0".parse().unwrap(),
//!                                         glare_broker::Config::default()).await?;
//! println!("listening http://{}", server.local_addr());
//! server.run(glare_broker::shutdown_signal()).await
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backplane;
mod http;
mod metrics;
pub mod registry;
mod ws;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

pub use glare_proto::broker::Limits;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

pub use crate::backplane::{RedisConfig, RedisRegistry};
use crate::{
    metrics::Metrics,
    registry::{MemoryRegistry, Registry},
};

/// The broker's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The §1.7 limits.
    pub limits: Limits,
    /// `Access-Control-Allow-Origin` (default `*`).
    pub cors_origin: String,
    /// Longest time to receive a whole request body (slow bodies are cut off): 10 s.
    pub body_timeout: Duration,
    /// Longest time to receive a request's headers: 10 s.
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight: 5 s.
    pub shutdown_timeout: Duration,
    /// Several nodes as one broker: the registry lives in this Redis (default `None`:
    /// the in-memory registry of a single node).
    pub redis: Option<RedisConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            cors_origin: "*".to_owned(),
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            redis: None,
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) registry: Arc<dyn Registry>,
    /// Set when [`Config::redis`] is: then every registry step goes there and
    /// `registry` stays empty.
    pub(crate) redis: Option<RedisRegistry>,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// A bound broker, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    app: Arc<App>,
    shutdown_tx: watch::Sender<bool>,
}

/// A handle to a running broker's state (for tests and embedding).
#[derive(Clone, Debug)]
pub struct Handle {
    app: Arc<App>,
}

impl Handle {
    /// The in-memory registry (empty when the node runs on Redis).
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.app.registry
    }

    /// The Redis registry, when [`Config::redis`] is set.
    pub fn redis(&self) -> Option<&RedisRegistry> {
        self.app.redis.as_ref()
    }

    /// Ends a channel's current stream server side, as a dropped connection would.
    pub fn disconnect(&self, cid: &str) -> bool {
        match &self.app.redis {
            Some(r) => r.disconnect(cid),
            None => self.app.registry.disconnect(cid),
        }
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) with the in-memory registry, or with
    /// the Redis one when [`Config::redis`] is set (a bad URL is an error; Redis being
    /// away is not: the node answers 503 until it is back).
    pub async fn bind(addr: SocketAddr, config: Config) -> io::Result<Self> {
        let registry = Arc::new(MemoryRegistry::new(config.limits.clone()));
        Self::bind_with(addr, config, registry).await
    }

    /// Binds `addr` over a given registry.
    pub async fn bind_with(
        addr: SocketAddr,
        config: Config,
        registry: Arc<dyn Registry>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let redis = match &config.redis {
            Some(rc) => Some(
                RedisRegistry::start(rc.clone(), config.limits.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let app = Arc::new(App {
            config,
            registry,
            redis,
            metrics: Metrics::default(),
            shutdown,
        });
        Ok(Self {
            listener,
            addr,
            app,
            shutdown_tx,
        })
    }

    /// The bound address (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to the broker's state.
    pub fn handle(&self) -> Handle {
        Handle {
            app: Arc::clone(&self.app),
        }
    }

    /// Serves until `shutdown` completes, then ends every stream cleanly, waits for
    /// requests in flight (up to [`Config::shutdown_timeout`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let Self {
            listener,
            app,
            shutdown_tx,
            ..
        } = self;
        let router = http::router(Arc::clone(&app));
        // On Redis the node's beat sweeps (backplane.rs).
        let sweeper = tokio::spawn(sweep_loop(Arc::clone(&app)));
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(router.clone());
                    let mut stop = app.shutdown.clone();
                    let header_timeout = app.config.header_timeout;
                    conns.spawn(async move {
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                        let conn = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades();
                        tokio::pin!(conn);
                        tokio::select! {
                            res = conn.as_mut() => {
                                if let Err(e) = res {
                                    tracing::trace!(%peer, error = %e, "connection ended");
                                }
                            }
                            () = stopped(&mut stop) => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!("shutting down: ending streams");
        drop(listener);
        let _ = shutdown_tx.send(true);
        sweeper.abort();
        let deadline = app.config.shutdown_timeout;
        let drained = tokio::time::timeout(deadline, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = conns.len(), "shutdown timeout: dropping connections");
            conns.abort_all();
        }
        Ok(())
    }
}

async fn sweep_loop(app: Arc<App>) {
    let period =
        (app.config.limits.grace / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    if app.redis.is_some() {
        return;
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        app.registry.sweep(std::time::Instant::now());
    }
}

/// Completes once shutdown has begun (or the server is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The routing hook: each registry step goes to Redis when the node runs on it, else
/// straight to the in-memory registry (a branch, no boxing, nothing awaited).
impl App {
    pub(crate) async fn open(
        &self,
        resume: Option<registry::Resume>,
    ) -> Result<registry::Attachment, registry::ApiError> {
        match &self.redis {
            Some(r) => r.open(resume).await,
            None => self.registry.open(resume),
        }
    }

    pub(crate) async fn close_channel(
        &self,
        auth: &glare_proto::broker::ChannelAuth,
    ) -> Result<(), registry::ApiError> {
        match &self.redis {
            Some(r) => r.close_channel(auth).await,
            None => self.registry.close_channel(auth),
        }
    }

    pub(crate) async fn create_session(
        &self,
        req: glare_proto::broker::CreateSession,
    ) -> Result<String, registry::ApiError> {
        match &self.redis {
            Some(r) => r.create_session(req).await,
            None => self.registry.create_session(req),
        }
    }

    pub(crate) async fn update_session(
        &self,
        sid: &str,
        req: glare_proto::broker::UpdateSession,
    ) -> Result<(), registry::ApiError> {
        match &self.redis {
            Some(r) => r.update_session(sid, req).await,
            None => self.registry.update_session(sid, req),
        }
    }

    pub(crate) async fn close_session(
        &self,
        sid: &str,
        auth: &glare_proto::broker::ChannelAuth,
    ) -> Result<(), registry::ApiError> {
        match &self.redis {
            Some(r) => r.close_session(sid, auth).await,
            None => self.registry.close_session(sid, auth),
        }
    }

    pub(crate) async fn send(
        &self,
        target: &str,
        origin: registry::Origin<'_>,
        message: &str,
    ) -> Result<(), registry::ApiError> {
        match &self.redis {
            Some(r) => r.send(target, origin, message).await,
            None => self.registry.send(target, origin, message),
        }
    }

    pub(crate) async fn list(
        &self,
        filter: &glare_proto::filter::Filter,
    ) -> Result<Vec<Arc<str>>, registry::ApiError> {
        match &self.redis {
            Some(r) => r.list(filter).await,
            None => Ok(self.registry.list(filter)),
        }
    }

    pub(crate) async fn watch(
        &self,
        filter: glare_proto::filter::Filter,
    ) -> Result<registry::Watch, registry::ApiError> {
        match &self.redis {
            Some(r) => r.watch(filter).await,
            None => Ok(self.registry.watch(filter)),
        }
    }

    pub(crate) fn stats(&self) -> registry::Stats {
        match &self.redis {
            Some(r) => r.stats(),
            None => self.registry.stats(),
        }
    }
}
