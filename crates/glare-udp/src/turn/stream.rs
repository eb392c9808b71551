//! TCP and TLS connections to TURN servers: one small task per connection moving
//! bytes between the stream and the reactor (which does the framing, sans-I/O).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use crate::TurnError;

/// What a stream task tells the reactor.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// Connected (and, for TLS, handshaken): the local address of the connection.
    Connected(SocketAddr),
    /// Bytes read from the stream, in order.
    Data(Vec<u8>),
    /// The stream ended: closed by the server, failed, or never connected.
    Closed(TurnError),
}

/// Reads wait on the reactor's bounded event queue, so TCP flow control pushes back
/// on the server when the reactor lags.
///
/// Writes queued for one stream (each a run of framed messages). When full, the
/// reactor drops what it would add, as a congested UDP path would.
pub(crate) const WRITE_QUEUE: usize = 256;

/// Starts the task of one connection to `server`; `tls` carries the configuration and
/// the server name for `turns:`. Events arrive tagged with `key`.
pub(crate) fn spawn(
    key: u64,
    server: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    connect_timeout: Duration,
    events: mpsc::Sender<(u64, StreamEvent)>,
) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(async move {
        let result = run(key, server, tls, connect_timeout, &events, rx).await;
        let error = match result {
            Ok(()) => TurnError::ConnectionClosed { server },
            Err(e) => e,
        };
        let _ = events.send((key, StreamEvent::Closed(error))).await;
    });
    tx
}

async fn run(
    key: u64,
    server: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    connect_timeout: Duration,
    events: &mpsc::Sender<(u64, StreamEvent)>,
    writes: mpsc::Receiver<Vec<u8>>,
) -> Result<(), TurnError> {
    let connect = async {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|source| TurnError::Connect { server, source })?;
        // Small control messages and datagrams: never wait to coalesce.
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|source| TurnError::Connect { server, source })?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some((config, host)) => {
                let name = ServerName::try_from(host.clone()).map_err(|_| TurnError::Tls {
                    server,
                    reason: format!("{host:?} is not a valid TLS server name"),
                })?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| TurnError::Tls {
                        server,
                        reason: e.to_string(),
                    })?;
                Box::new(tls)
            }
        };
        Ok::<_, TurnError>((stream, local))
    };
    let (stream, local) = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| TurnError::Timeout { server })??;
    debug!(%server, %local, "TURN stream connected");
    if events
        .send((key, StreamEvent::Connected(local)))
        .await
        .is_err()
    {
        return Ok(());
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let read = async {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|source| TurnError::Io { server, source })?;
            if n == 0 {
                return Ok(());
            }
            if events
                .send((key, StreamEvent::Data(buf[..n].to_vec())))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write = async {
        let mut writes = writes;
        while let Some(bytes) = writes.recv().await {
            writer
                .write_all(&bytes)
                .await
                .map_err(|source| TurnError::Io { server, source })?;
        }
        // The reactor let go: say goodbye properly (TLS close_notify, TCP FIN).
        let _ = writer.shutdown().await;
        Ok(())
    };
    tokio::select! {
        r = read => r,
        r = write => r,
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The default TLS configuration: the Mozilla root store (webpki-roots), aws-lc-rs.
pub(crate) fn default_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            // aws-lc-rs offers TLS 1.2 and 1.3: the safe defaults always fit.
            build(roots).expect("aws-lc-rs supports the default TLS versions")
        })
        .clone()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn build(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A TLS client configuration for `turns:` servers that trusts the given roots (DER
/// certificates, e.g. a private CA or a test's self-signed certificate) besides the
/// Mozilla ones. Put it in [`TurnConfig::tls`](crate::TurnConfig::tls).
pub fn tls_config_with_roots(
    roots_der: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in roots_der {
        roots.add(CertificateDer::from(der.to_vec()))?;
    }
    build(roots)
}
