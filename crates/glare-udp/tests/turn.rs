//! The TURN client against a real coturn (`turnserver`, Debian package `coturn`),
//! started by each test on free loopback ports with its own user and database, and
//! killed by pid. A missing `turnserver` fails the tests.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Received, TestConn, message, receive};
use glare_udp::{Config, Driver, RelayCandidate, TurnConfig, TurnError, TurnServer, TurnTransport};
use tokio::sync::mpsc;

const USER: &str = "alice";
const PASS: &str = "wonderland";
const REALM: &str = "glare.test";
const LIMIT: Duration = Duration::from_secs(10);

/// A coturn process: killed (by pid) and its directory removed on drop.
struct Coturn {
    child: Child,
    dir: PathBuf,
    port: u16,
    tls_port: u16,
    /// The self-signed certificate's DER, for the client's roots.
    cert_der: Vec<u8>,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- coturn log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 (at the time of asking).
fn free_port() -> u16 {
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

impl Coturn {
    fn start(extra: &[&str]) -> Self {
        let which = Command::new("turnserver").arg("--version").output();
        assert!(
            which.is_ok(),
            "`turnserver` not found: these tests need coturn (apt-get install -y coturn)"
        );
        let dir = std::env::temp_dir().join(format!(
            "glare-coturn-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let port = free_port();
        let tls_port = free_port();
        let log = std::fs::File::create(dir.join("turn.log")).unwrap();
        let child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-dtls", "--lt-cred-mech"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--tls-listening-port", &tls_port.to_string()])
            .args(["--user", &format!("{USER}:{PASS}"), "--realm", REALM])
            .args(["--allow-loopback-peers", "--verbose"])
            .args(["--userdb", dir.join("turndb").to_str().unwrap()])
            .args(["--pidfile", dir.join("turn.pid").to_str().unwrap()])
            .args(["--cert", cert_path.to_str().unwrap()])
            .args(["--pkey", key_path.to_str().unwrap()])
            .args(["--log-file", "stdout", "--simple-log"])
            .args(["--min-port", "40000", "--max-port", "60000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start turnserver");
        let mut coturn = Self {
            child,
            dir,
            port,
            tls_port,
            cert_der: cert.cert.der().to_vec(),
        };
        // Ready once both TCP listeners accept (the UDP one opens with them).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = coturn.child.try_wait() {
                panic!("turnserver exited early ({status}):\n{}", coturn.log());
            }
            let up = |p| TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_ok();
            if up(port) && up(tls_port) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "turnserver did not start within 10 s:\n{}",
                coturn.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        coturn.port = port;
        coturn
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turn.log")).unwrap_or_default()
    }

    fn url(&self, transport: TurnTransport) -> TurnServer {
        let url = match transport {
            TurnTransport::Udp => format!("turn:{USER}:{PASS}@127.0.0.1:{}", self.port),
            TurnTransport::Tcp => {
                format!("turn:{USER}:{PASS}@127.0.0.1:{}?transport=tcp", self.port)
            }
            TurnTransport::Tls => format!("turns:{USER}:{PASS}@127.0.0.1:{}", self.tls_port),
        };
        TurnServer::parse(&url).unwrap()
    }

    fn config(&self) -> Config {
        let mut c = Config::default();
        let mut turn = TurnConfig::default();
        turn.transaction_timeout = Duration::from_secs(5);
        turn.rto = Duration::from_millis(100);
        turn.tls = Some(glare_udp::turn_tls_config_with_roots(&[&self.cert_der]).unwrap());
        c.turn = turn;
        c
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

async fn allocate(
    driver: &Driver<TestConn>,
    server: TurnServer,
) -> Result<RelayCandidate, TurnError> {
    let mut results = driver.allocate_relays(&[server]).await;
    results.pop().unwrap()
}

/// `a` (relay only) and `b` (host) exchange `n` tagged datagrams both ways through
/// coturn; returns what `a` received. `b` echoes.
async fn relay_round_trip(
    a: &Driver<TestConn>,
    b: &Driver<TestConn>,
    relay: RelayCandidate,
    tag: u32,
    n: u32,
    len: usize,
) -> Vec<Received> {
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let mut echo = TestConn::new(tag, tx_b);
    echo.echo = true;
    let echo = b.add(echo).await.unwrap();
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let mut conn = TestConn::new(tag, tx_a);
    conn.local = Some(relay.relayed);
    conn.remote = Some(b.local_addr());
    conn.held = (0..n).map(|seq| (message(tag, seq, len), None)).collect();
    let conn = a.add(conn).await.unwrap();
    // Windows of 8, so the echo path never overflows a socket buffer.
    let mut got = Vec::new();
    for _ in 0..n.div_ceil(8) {
        let k = 8.min(n as usize - got.len());
        conn.call(move |c, _| c.release(k)).await.unwrap();
        let at_b = receive(&mut rx_b, k, LIMIT).await;
        for r in &at_b {
            // Seen by b as coming from the relayed address.
            assert_eq!(r.source, relay.relayed);
        }
        got.extend(receive(&mut rx_a, k, LIMIT).await);
    }
    for r in &got {
        assert_eq!(
            r.destination, relay.relayed,
            "delivered at the relayed address"
        );
        assert_eq!(r.source, b.local_addr(), "from the peer's address");
    }
    let mut seqs: Vec<u32> = got
        .iter()
        .map(|r| u32::from_be_bytes(r.payload[4..8].try_into().unwrap()))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>());
    for r in &got {
        let seq = u32::from_be_bytes(r.payload[4..8].try_into().unwrap());
        assert_eq!(r.payload, message(tag, seq, len), "payload intact");
    }
    // Out of the demux table, so the next round's connections get the pairs.
    conn.remove().await.unwrap();
    echo.remove().await.unwrap();
    got
}

async fn relay_both_ways(transport: TurnTransport) {
    if std::env::var_os("GLARE_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_test_writer()
            .try_init();
    }
    let coturn = Coturn::start(&[]);
    let a = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let b = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let relay = allocate(&a, coturn.url(transport))
        .await
        .unwrap_or_else(|e| panic!("allocation failed: {e}\n{}", coturn.log()));
    assert_eq!(relay.transport, transport);
    assert_eq!(relay.relayed.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(relay.relayed.port(), coturn.port);
    assert!(relay.lifetime > Duration::ZERO);
    if transport == TurnTransport::Udp {
        assert_eq!(relay.mapped, Some(a.local_addr()));
    }
    assert_eq!(a.relays().await.unwrap(), vec![relay]);

    relay_round_trip(&a, &b, relay, 1, 40, 300).await;

    // A channel is bound by now: datagrams cost 4 bytes (UDP) or up to 7 (padded
    // over TCP/TLS, where TLS adds its own records) over their payload, not 36.
    let before = a.stats().await.unwrap();
    relay_round_trip(&a, &b, relay, 2, 16, 301).await;
    let after = a.stats().await.unwrap();
    let stats_a = after;
    assert_eq!(stats_a.relays, 1);
    assert!(stats_a.relayed_sent >= 56 && stats_a.relayed_received >= 56);
    assert_eq!(stats_a.relay_dropped, 0);
    if transport == TurnTransport::Udp {
        let bytes = after.sent_bytes - before.sent_bytes;
        assert_eq!(bytes, 16 * (301 + 4), "ChannelData framing over UDP");
    }
    assert!(a.release_relay(relay.relayed).await.unwrap());
    assert!(a.relays().await.unwrap().is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// Released, then asked again: the driver sends a new Allocate (it used to answer
/// `Busy` with the old allocation on its way out). On the same 5-tuple coturn refuses
/// it with 437 (it still holds the deleted allocation); the facade only re-allocates
/// after a NAT re-mapped the socket, i.e. from a new 5-tuple (netlab scenario 8).
#[tokio::test]
async fn a_released_udp_allocation_is_asked_again_not_busy() {
    let coturn = Coturn::start(&[]);
    let a = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let first = allocate(&a, coturn.url(TurnTransport::Udp))
        .await
        .unwrap_or_else(|e| panic!("allocation failed: {e}\n{}", coturn.log()));
    assert!(a.release_relay(first.relayed).await.unwrap());
    match allocate(&a, coturn.url(TurnTransport::Udp)).await {
        Err(TurnError::Rejected { code: 437, .. }) => {}
        other => panic!("expected coturn's 437 for the same 5-tuple, got {other:?}"),
    }
    assert!(a.relays().await.unwrap().is_empty());
    a.shutdown().await;
}

#[tokio::test]
async fn relays_both_ways_over_udp() {
    relay_both_ways(TurnTransport::Udp).await;
}

#[tokio::test]
async fn relays_both_ways_over_tcp() {
    relay_both_ways(TurnTransport::Tcp).await;
}

#[tokio::test]
async fn relays_both_ways_over_tls() {
    relay_both_ways(TurnTransport::Tls).await;
}

#[tokio::test]
async fn wrong_password_is_a_clear_error() {
    let coturn = Coturn::start(&[]);
    let a = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let server = coturn
            .url(transport)
            .with_credentials(USER, "not-the-password");
        let error = allocate(&a, server).await.unwrap_err();
        assert!(
            matches!(&error, TurnError::Unauthorized { realm, .. } if realm == REALM),
            "{transport}: {error:?}"
        );
        assert!(
            error.to_string().contains("rejected the credentials"),
            "{error}"
        );
    }
    let missing = TurnServer::from_addr(
        SocketAddr::from((Ipv4Addr::LOCALHOST, coturn.port)),
        TurnTransport::Udp,
    );
    assert!(matches!(
        allocate(&a, missing).await,
        Err(TurnError::MissingCredentials { .. })
    ));
    assert!(a.relays().await.unwrap().is_empty());
}

#[tokio::test]
async fn untrusted_tls_certificate_is_a_clear_error() {
    let coturn = Coturn::start(&[]);
    let mut config = coturn.config();
    config.turn.tls = None; // Mozilla roots only: the self-signed certificate fails.
    let a = glare_udp::spawn::<TestConn>(loopback(), config).unwrap();
    let error = allocate(&a, coturn.url(TurnTransport::Tls))
        .await
        .unwrap_err();
    assert!(matches!(error, TurnError::Tls { .. }), "{error:?}");
}

#[tokio::test]
async fn stale_nonce_is_renewed() {
    // Nonces live 1 s: every later request meets 438 Stale Nonce first.
    let coturn = Coturn::start(&["--stale-nonce=1"]);
    let a = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let b = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let relay = allocate(&a, coturn.url(TurnTransport::Udp)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // CreatePermission (then ChannelBind) with the old nonce: 438, retried.
    relay_round_trip(&a, &b, relay, 3, 16, 100).await;
    assert!(
        coturn.log().contains("438"),
        "coturn never answered 438:\n{}",
        coturn.log()
    );
}

#[tokio::test]
async fn allocation_is_refreshed() {
    let coturn = Coturn::start(&["--max-allocate-lifetime=2"]);
    let a = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let b = glare_udp::spawn::<TestConn>(loopback(), coturn.config()).unwrap();
    let relay = allocate(&a, coturn.url(TurnTransport::Udp)).await.unwrap();
    assert!(
        relay.lifetime <= Duration::from_secs(2),
        "coturn granted {:?}",
        relay.lifetime
    );
    // Three lifetimes: without refreshes the allocation would be gone.
    tokio::time::sleep(relay.lifetime * 3).await;
    assert_eq!(a.relays().await.unwrap(), vec![relay]);
    relay_round_trip(&a, &b, relay, 4, 8, 64).await;
}

#[tokio::test]
async fn unreachable_server_times_out() {
    // A bound UDP socket that never answers, and a closed TCP port.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut config = Config::default();
    config.turn.transaction_timeout = Duration::from_millis(600);
    config.turn.rto = Duration::from_millis(100);
    let a = glare_udp::spawn::<TestConn>(loopback(), config).unwrap();
    let server = TurnServer::from_addr(silent.local_addr().unwrap(), TurnTransport::Udp)
        .with_credentials(USER, PASS);
    let started = Instant::now();
    assert!(matches!(
        allocate(&a, server).await,
        Err(TurnError::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    let closed = free_port();
    let server = TurnServer::from_addr(
        SocketAddr::from((Ipv4Addr::LOCALHOST, closed)),
        TurnTransport::Tcp,
    )
    .with_credentials(USER, PASS);
    let error = allocate(&a, server).await.unwrap_err();
    assert!(matches!(error, TurnError::Connect { .. }), "{error:?}");
}

/// Answers every datagram with hostile bytes: random, truncated STUN, STUN with the
/// request's transaction id but nonsense inside, `ChannelData` on unknown channels.
async fn garbage_udp_server() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0; 2048];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..64 {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let mut replies: Vec<Vec<u8>> = Vec::new();
            let mut random = |len: usize| -> Vec<u8> {
                (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect()
            };
            replies.push(random(40));
            replies.push(buf[..n.min(12)].to_vec());
            // A "success response" to the request: same id, junk attributes.
            let mut fake = buf[..n.min(20)].to_vec();
            if fake.len() == 20 {
                fake[0] = 0x01; // Allocate success
                fake[1] = 0x03;
                let junk = random(24);
                fake[2..4].copy_from_slice(&(junk.len() as u16).to_be_bytes());
                fake.extend_from_slice(&junk);
                replies.push(fake.clone());
                fake[1] = 0x13; // error response with junk
                replies.push(fake);
            }
            replies.push(vec![0x40, 0x01, 0x00, 0x10, 1, 2]);
            for r in replies {
                let _ = socket.send_to(&r, from).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn garbage_from_the_server_never_panics() {
    let mut config = Config::default();
    config.turn.transaction_timeout = Duration::from_millis(800);
    config.turn.rto = Duration::from_millis(100);
    let a = glare_udp::spawn::<TestConn>(loopback(), config).unwrap();
    let server = TurnServer::from_addr(garbage_udp_server().await, TurnTransport::Udp)
        .with_credentials(USER, PASS);
    let error = allocate(&a, server).await.unwrap_err();
    assert!(matches!(error, TurnError::Timeout { .. }), "{error:?}");

    // Over TCP: a server that writes junk at once.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(&[0xff; 64]).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let server = TurnServer::from_addr(addr, TurnTransport::Tcp).with_credentials(USER, PASS);
    let error = allocate(&a, server).await.unwrap_err();
    assert!(
        matches!(error, TurnError::ConnectionClosed { .. }),
        "{error:?}"
    );
    // The reactor is alive and counted what it ignored.
    let stats = a.stats().await.unwrap();
    assert!(stats.turn_messages > 0);
    assert_eq!(stats.relays, 0);
}
