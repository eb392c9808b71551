//! glare-udp's per-datagram cost against raw quinn-udp, in the same run.
//!
//! `cargo bench -p glare-benches --bench udp`
//!
//! Every scenario moves 1024 datagrams of 1280 bytes over loopback in windows of 64
//! (a window is sent, then fully received, so no socket buffer ever overflows), on one
//! current-thread tokio runtime: one core, as the anchors in DESIGN.md.
//!
//! - `oneway/raw-*`: a quinn-udp socket sends to another, `unbatched` one datagram per
//!   `sendmsg`, `batched` with GSO (and GRO on the receiver).
//! - `oneway/send-*`: the glare-udp driver sends (a connection writes the datagrams,
//!   the driver batches them) to a raw quinn-udp receiver.
//! - `oneway/recv-*`: a raw quinn-udp sender to the driver (a connection counts).
//! - `echo/raw-*` and `echo/driver-*`: a raw client sends a window and waits for it
//!   back from a raw quinn-udp echo task, or from an echo connection on the driver.
//!
//! After criterion, `cargo bench` also prints driver/raw throughput ratios from a short
//! extra run of each pair.
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use glare_udp::{Config, Connection, ConnectionHandle, Datagram, Driver, Transmit};
use tokio::io::Interest;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

const SIZE: usize = 1280;
const WINDOW: usize = 64;
const DATAGRAMS: usize = 1024;
const SLOT: usize = 65_536;

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A raw quinn-udp socket on tokio readiness, as the driver uses it.
struct Raw {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    gso: bool,
    out: Vec<u8>,
    buf: Vec<u8>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl Raw {
    fn bind(gso: bool) -> Self {
        let socket = std::net::UdpSocket::bind(loopback()).expect("bind loopback");
        socket.set_nonblocking(true).expect("non-blocking");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("inside a runtime");
        let state = quinn_udp::UdpSocketState::new((&socket).into()).expect("quinn-udp state");
        // Best effort, as in the driver.
        let _ = state.set_recv_buffer_size((&socket).into(), 2 << 20);
        let _ = state.set_send_buffer_size((&socket).into(), 2 << 20);
        let segments = state.max_gso_segments().clamp(1, 65_507 / SIZE);
        Self {
            socket,
            state,
            gso,
            out: vec![0xA5; SIZE * segments],
            buf: vec![0; SLOT * quinn_udp::BATCH_SIZE],
            meta: vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    async fn send_one(&self, transmit: &quinn_udp::Transmit<'_>) {
        loop {
            match self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), transmit)
            }) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.socket.writable().await.expect("writable");
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    /// Sends `n` datagrams of `SIZE` bytes to `to` (GSO batches if `gso`).
    async fn send(&self, to: SocketAddr, n: usize) {
        let per = if self.gso { self.out.len() / SIZE } else { 1 };
        let mut left = n;
        while left > 0 {
            let k = left.min(per);
            let transmit = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: &self.out[..k * SIZE],
                segment_size: (k > 1).then_some(SIZE),
                src_ip: None,
            };
            self.send_one(&transmit).await;
            left -= k;
        }
    }

    /// Receives until `n` datagrams have arrived; returns who sent the last one.
    async fn recv(&mut self, n: usize) -> SocketAddr {
        let mut got = 0;
        let mut from = loopback();
        while got < n {
            self.socket.readable().await.expect("readable");
            let mut chunks = self.buf.chunks_mut(SLOT);
            let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let result = self.socket.try_io(Interest::READABLE, || {
                self.state
                    .recv((&self.socket).into(), &mut slices, &mut self.meta)
            });
            match result {
                Ok(k) => {
                    for m in &self.meta[..k] {
                        got += m.len.div_ceil(m.stride.max(1));
                        from = m.addr;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        from
    }
}

/// Writes `credit` datagrams of `SIZE` bytes to `remote`.
struct Source {
    remote: SocketAddr,
    credit: usize,
}

impl Connection for Source {
    fn accepts(&self, _: &Datagram<'_>) -> bool {
        false
    }
    fn handle_datagram(&mut self, _: Instant, _: Datagram<'_>) {}
    fn poll_transmit(&mut self, _: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.credit == 0 {
            return None;
        }
        self.credit -= 1;
        buf.resize(buf.len() + SIZE, 0xA5);
        Some(Transmit::new(self.remote))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn is_closed(&self) -> bool {
        false
    }
}

/// Counts what it receives; wakes the bench every `WINDOW` datagrams.
struct Counter {
    count: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

impl Connection for Counter {
    fn accepts(&self, _: &Datagram<'_>) -> bool {
        true
    }
    fn handle_datagram(&mut self, _: Instant, d: Datagram<'_>) {
        std::hint::black_box(d.payload);
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(WINDOW as u64) {
            self.notify.notify_one();
        }
    }
    fn poll_transmit(&mut self, _: Instant, _: &mut Vec<u8>) -> Option<Transmit> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn is_closed(&self) -> bool {
        false
    }
}

/// Echoes every datagram (copying it into the driver's buffer).
#[derive(Default)]
struct Echo {
    queue: std::collections::VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Connection for Echo {
    fn accepts(&self, _: &Datagram<'_>) -> bool {
        true
    }
    fn handle_datagram(&mut self, _: Instant, d: Datagram<'_>) {
        self.queue.push_back((d.source, d.payload.to_vec()));
    }
    fn poll_transmit(&mut self, _: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (to, bytes) = self.queue.pop_front()?;
        buf.extend_from_slice(&bytes);
        Some(Transmit::new(to))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn is_closed(&self) -> bool {
        false
    }
}

fn driver_config(batched: bool) -> Config {
    let mut c = Config::default();
    c.socket.gso = batched;
    c.socket.gro = batched;
    c
}

/// One scenario, set up once, run `DATAGRAMS` per iteration.
enum Scenario {
    RawOneway {
        tx: Raw,
        rx: Raw,
    },
    DriverSend {
        _driver: Driver<Source>,
        source: ConnectionHandle<Source>,
        rx: Raw,
    },
    DriverRecv {
        driver: Driver<Counter>,
        tx: Raw,
        count: Arc<AtomicU64>,
        notify: Arc<Notify>,
        expected: u64,
    },
    RawEcho {
        client: Raw,
        server: SocketAddr,
        _task: tokio::task::JoinHandle<()>,
    },
    DriverEcho {
        driver: Driver<Echo>,
        _echo: ConnectionHandle<Echo>,
        client: Raw,
    },
}

impl Scenario {
    async fn new(name: &str, batched: bool) -> Self {
        match name {
            "raw" => Self::RawOneway {
                tx: Raw::bind(batched),
                rx: Raw::bind(batched),
            },
            "send" => {
                let rx = Raw::bind(batched);
                let driver = glare_udp::spawn::<Source>(loopback(), driver_config(batched))
                    .expect("driver on loopback");
                let source = driver
                    .add(Source {
                        remote: rx.addr(),
                        credit: 0,
                    })
                    .await
                    .expect("driver running");
                Self::DriverSend {
                    _driver: driver,
                    source,
                    rx,
                }
            }
            "recv" => {
                let driver = glare_udp::spawn::<Counter>(loopback(), driver_config(batched))
                    .expect("driver on loopback");
                let count = Arc::new(AtomicU64::new(0));
                let notify = Arc::new(Notify::new());
                let _counter = driver
                    .add(Counter {
                        count: count.clone(),
                        notify: notify.clone(),
                    })
                    .await
                    .expect("driver running");
                Self::DriverRecv {
                    driver,
                    tx: Raw::bind(batched),
                    count,
                    notify,
                    expected: 0,
                }
            }
            "raw-echo" => {
                let mut server = Raw::bind(batched);
                let addr = server.addr();
                let task = tokio::spawn(async move {
                    loop {
                        let from = server.recv(WINDOW).await;
                        server.send(from, WINDOW).await;
                    }
                });
                Self::RawEcho {
                    client: Raw::bind(batched),
                    server: addr,
                    _task: task,
                }
            }
            _ => {
                let driver = glare_udp::spawn::<Echo>(loopback(), driver_config(batched))
                    .expect("driver on loopback");
                let echo = driver.add(Echo::default()).await.expect("driver running");
                Self::DriverEcho {
                    driver,
                    _echo: echo,
                    client: Raw::bind(batched),
                }
            }
        }
    }

    async fn run(&mut self) {
        for _ in 0..DATAGRAMS / WINDOW {
            match self {
                Self::RawOneway { tx, rx } => {
                    tx.send(rx.addr(), WINDOW).await;
                    rx.recv(WINDOW).await;
                }
                Self::DriverSend { source, rx, .. } => {
                    source
                        .call(|c, _| c.credit += WINDOW)
                        .await
                        .expect("driver running");
                    rx.recv(WINDOW).await;
                }
                Self::DriverRecv {
                    driver,
                    tx,
                    count,
                    notify,
                    expected,
                } => {
                    tx.send(driver.local_addr(), WINDOW).await;
                    *expected += WINDOW as u64;
                    while count.load(Ordering::Relaxed) < *expected {
                        notify.notified().await;
                    }
                }
                Self::RawEcho { client, server, .. } => {
                    client.send(*server, WINDOW).await;
                    client.recv(WINDOW).await;
                }
                Self::DriverEcho { driver, client, .. } => {
                    client.send(driver.local_addr(), WINDOW).await;
                    client.recv(WINDOW).await;
                }
            }
        }
    }
}

fn bench_group(c: &mut Criterion, rt: &Runtime, group: &str, names: &[&str]) {
    let mut g = c.benchmark_group(format!("udp/{group}"));
    g.throughput(Throughput::Bytes((DATAGRAMS * SIZE) as u64));
    for name in names {
        for batched in [false, true] {
            let label = format!("{name}-{}", if batched { "batched" } else { "unbatched" });
            let mut scenario = rt.block_on(Scenario::new(name, batched));
            g.bench_function(&label, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            scenario.run().await;
                        }
                        start.elapsed()
                    })
                });
            });
        }
    }
    g.finish();
}

/// MiB/s of `name` over about `time`.
fn throughput(rt: &Runtime, name: &str, batched: bool, time: Duration) -> f64 {
    rt.block_on(async {
        let mut scenario = Scenario::new(name, batched).await;
        scenario.run().await; // warm up
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < time {
            scenario.run().await;
            runs += 1;
        }
        (runs as f64 * (DATAGRAMS * SIZE) as f64) / start.elapsed().as_secs_f64() / (1 << 20) as f64
    })
}

fn ratios(rt: &Runtime) {
    let time = Duration::from_millis(700);
    eprintln!("\nglare-udp / raw quinn-udp ({SIZE}-byte datagrams, one core, {time:?} each):");
    for batched in [false, true] {
        let mode = if batched {
            "batched (GSO+GRO)"
        } else {
            "unbatched"
        };
        let raw = throughput(rt, "raw", batched, time);
        let send = throughput(rt, "send", batched, time);
        let recv = throughput(rt, "recv", batched, time);
        let raw_echo = throughput(rt, "raw-echo", batched, time);
        let echo = throughput(rt, "driver-echo", batched, time);
        eprintln!(
            "  {mode:18} raw {raw:7.1} MiB/s | send {send:7.1} ({:.2}x) | recv {recv:7.1} ({:.2}x) \
             | echo raw {raw_echo:7.1}, driver {echo:7.1} ({:.2}x)",
            send / raw,
            recv / raw,
            echo / raw_echo
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    bench_group(&mut c, &rt, "oneway", &["raw", "send", "recv"]);
    bench_group(&mut c, &rt, "echo", &["raw-echo", "driver-echo"]);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not (one quick pass).
    if std::env::args().any(|a| a == "--bench") {
        ratios(&rt);
    }
}
