//! The socket: a tokio `UdpSocket` for readiness, quinn-udp for the syscalls
//! (`recvmmsg` with GRO and `IP_PKTINFO`, `sendmsg` with GSO, ECN and a source IP).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use tokio::io::Interest;
use tracing::debug;

use crate::BindError;

/// The largest UDP payload: a receive slot this big never truncates a datagram, and a
/// GRO batch (at most 64 KiB) always fits.
pub(crate) const MAX_UDP_PAYLOAD: usize = 65_535;

/// The most bytes one GSO send may carry (an IPv4 datagram's 65 535 bytes less the IP
/// and UDP headers; IPv6 allows a little more).
pub(crate) const MAX_GSO_BYTES: usize = 65_507;

/// Linux's `UDP_MAX_SEGMENTS`: the most datagrams one GSO send may carry.
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;

/// How the socket is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketConfig {
    /// Send consecutive same-size datagrams to one destination in one `sendmsg`
    /// (Generic Segmentation Offload), where the kernel supports it. Default on.
    pub gso: bool,
    /// Let the kernel coalesce received datagrams into batches that the driver splits
    /// by stride (Generic Receive Offload), where the kernel supports it. Default on.
    pub gro: bool,
    /// `SO_RCVBUF` to ask for (the kernel caps it at `net.core.rmem_max`).
    /// Default 2 MiB.
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` to ask for (the kernel caps it at `net.core.wmem_max`).
    /// Default 2 MiB.
    pub send_buffer_size: Option<usize>,
    /// Linux only: tie the socket to one network device (`SO_BINDTODEVICE`), e.g.
    /// `"lo"` for a wildcard socket that only ever sees loopback traffic.
    pub bind_device: Option<String>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            gso: true,
            gro: true,
            recv_buffer_size: Some(2 << 20),
            send_buffer_size: Some(2 << 20),
            bind_device: None,
        }
    }
}

/// A bound, configured, non-blocking UDP socket.
pub(crate) struct UdpIo {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    local: SocketAddr,
    gso: bool,
    gro: bool,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("local", &self.local)
            .field("gso", &self.gso)
            .field("gro", &self.gro)
            .finish_non_exhaustive()
    }
}

impl UdpIo {
    /// Binds `addr` with `config`. Must run inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr, config: &SocketConfig) -> Result<Self, BindError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let err = |source| BindError::Socket { addr, source };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BindError::NoRuntime);
        }
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(err)?;
        if addr.is_ipv6() {
            // One family per socket: no IPv4-mapped addresses to translate.
            socket.set_only_v6(true).map_err(err)?;
        }
        if let Some(device) = &config.bind_device {
            bind_device(&socket, device)?;
        }
        socket.set_nonblocking(true).map_err(err)?;
        socket.bind(&addr.into()).map_err(err)?;
        let socket = tokio::net::UdpSocket::from_std(socket.into()).map_err(err)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into()).map_err(err)?;
        if let Some(size) = config.recv_buffer_size {
            // Best effort: the kernel caps it, and a smaller buffer still works.
            if let Err(e) = state.set_recv_buffer_size((&socket).into(), size) {
                debug!(%addr, error = %e, "cannot set SO_RCVBUF");
            }
        }
        if let Some(size) = config.send_buffer_size
            && let Err(e) = state.set_send_buffer_size((&socket).into(), size)
        {
            debug!(%addr, error = %e, "cannot set SO_SNDBUF");
        }
        // quinn-udp 0.6 turns on SO_TIMESTAMPNS, and its 96-byte control buffer then
        // has no room left for IP_TOS after UDP_GRO and IP_PKTINFO: every coalesced
        // batch would arrive without its ECN bits. The driver does not use kernel
        // timestamps, so turn them off.
        if let Err(e) = disable_timestamps(&socket) {
            debug!(%addr, error = %e, "cannot turn SO_TIMESTAMPNS off");
        }
        let gro = config.gro && state.gro_segments() > 1;
        if !config.gro && state.gro_segments() > 1 {
            disable_gro(&socket).map_err(err)?;
        }
        let local = socket.local_addr().map_err(err)?;
        debug!(
            %local,
            gso = config.gso,
            max_gso_segments = state.max_gso_segments(),
            gro,
            "UDP socket bound"
        );
        Ok(Self {
            socket,
            state,
            local,
            gso: config.gso,
            gro,
        })
    }

    /// The address the socket is bound to (its IP may be a wildcard).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many datagrams one send may carry now (1 without GSO). quinn-udp lowers
    /// this to 1 at run time if the kernel or the device turns out to refuse GSO.
    pub(crate) fn max_segments(&self) -> usize {
        if self.gso {
            self.state.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS)
        } else {
            1
        }
    }

    /// The size of one receive slot: a GRO batch or one datagram of any size.
    pub(crate) fn recv_slot_size(&self) -> usize {
        MAX_UDP_PAYLOAD
    }

    /// Waits until the socket may be readable.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Waits until the socket may be writable.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// One `recvmmsg`: fills up to `meta.len()` slots. `WouldBlock` when nothing waits
    /// (and then tokio's readiness flag is cleared, so `readable` waits again).
    pub(crate) fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn_udp::RecvMeta],
    ) -> io::Result<usize> {
        self.socket.try_io(Interest::READABLE, || {
            self.state.recv((&self.socket).into(), bufs, meta)
        })
    }

    /// One `sendmsg` of `transmit` (one datagram, or a GSO batch).
    pub(crate) fn try_send(&self, transmit: &quinn_udp::Transmit<'_>) -> io::Result<()> {
        self.socket.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), transmit)
        })
    }
}

#[cfg(target_os = "linux")]
fn bind_device(socket: &socket2::Socket, device: &str) -> Result<(), BindError> {
    socket
        .bind_device(Some(device.as_bytes()))
        .map_err(|source| BindError::Device {
            device: device.to_owned(),
            source,
        })
}

#[cfg(not(target_os = "linux"))]
fn bind_device(_socket: &socket2::Socket, device: &str) -> Result<(), BindError> {
    Err(BindError::Device {
        device: device.to_owned(),
        source: io::Error::new(io::ErrorKind::Unsupported, "SO_BINDTODEVICE is Linux only"),
    })
}

/// quinn-udp turns `UDP_GRO` on whenever the kernel has it; this turns it back off.
#[cfg(target_os = "linux")]
fn disable_gro(socket: &tokio::net::UdpSocket) -> io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGroSegment, &false)
        .map_err(io::Error::from)
}

#[cfg(target_os = "linux")]
fn disable_timestamps(socket: &tokio::net::UdpSocket) -> io::Result<()> {
    nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &false,
    )
    .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn disable_timestamps(_socket: &tokio::net::UdpSocket) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn disable_gro(_socket: &tokio::net::UdpSocket) -> io::Result<()> {
    // quinn-udp only turns GRO on on Linux.
    Ok(())
}
