//! ICE server URLs as browsers take them: `stun:`, `turn:` and `turns:` (RFC 7064,
//! RFC 7065), plus the `RTCIceServer` shape (`urls`, `username`, `credential`).

use std::net::SocketAddr;

use crate::{StunError, StunServer, TurnError, UrlError};

/// How the client reaches a TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    /// UDP, through the driver's own socket (`turn:…?transport=udp`, the default).
    Udp,
    /// TCP, one connection per allocation (`turn:…?transport=tcp`).
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl std::fmt::Display for TurnTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        })
    }
}

/// A TURN server as configured: where it is, how to reach it, and the long-term
/// credentials to allocate with.
///
/// Parsed from `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]`, with
/// optional `user:pass@` before the host (percent-encoded where needed). `Debug` and
/// `Display` never show the credential.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TurnServer {
    host: String,
    port: u16,
    transport: TurnTransport,
    username: Option<String>,
    credential: Option<String>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Display for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.transport == TurnTransport::Tls {
            "turns"
        } else {
            "turn"
        };
        if self.host.contains(':') {
            write!(f, "{scheme}:[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{scheme}:{}:{}", self.host, self.port)?;
        }
        match self.transport {
            TurnTransport::Tcp => f.write_str("?transport=tcp"),
            TurnTransport::Udp | TurnTransport::Tls => Ok(()),
        }
    }
}

impl TurnServer {
    /// The default port of `turn:` (3478).
    pub const DEFAULT_PORT: u16 = 3478;
    /// The default port of `turns:` (5349).
    pub const DEFAULT_TLS_PORT: u16 = 5349;

    /// Parses `turn:[user:pass@]host[:port][?transport=udp|tcp]` or
    /// `turns:[user:pass@]host[:port][?transport=tcp]`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let invalid = |reason| UrlError {
            url: redact(url),
            reason,
        };
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| invalid("no scheme: expected turn: or turns:"))?;
        let tls = if scheme.eq_ignore_ascii_case("turn") {
            false
        } else if scheme.eq_ignore_ascii_case("turns") {
            true
        } else {
            return Err(invalid("the scheme must be turn: or turns:"));
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        if authority.contains(['/', '#']) {
            return Err(invalid("a turn: URL has no path or fragment"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, credential) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u
                    .split_once(':')
                    .ok_or_else(|| invalid("credentials must be user:password@"))?;
                let user =
                    percent_decode(user).ok_or_else(|| invalid("bad %-escape in the user"))?;
                let pass =
                    percent_decode(pass).ok_or_else(|| invalid("bad %-escape in the password"))?;
                if user.is_empty() {
                    return Err(invalid("the user name is empty"));
                }
                (Some(user), Some(pass))
            }
        };
        let default_port = if tls {
            Self::DEFAULT_TLS_PORT
        } else {
            Self::DEFAULT_PORT
        };
        let (host, port) = split_host_port(hostport, default_port).map_err(invalid)?;
        let mut transport = if tls {
            TurnTransport::Tls
        } else {
            TurnTransport::Udp
        };
        if let Some(query) = query {
            let value = query
                .strip_prefix("transport=")
                .ok_or_else(|| invalid("the only query parameter is transport=udp|tcp"))?;
            transport = match (tls, value.to_ascii_lowercase().as_str()) {
                (false, "udp") => TurnTransport::Udp,
                (false, "tcp") => TurnTransport::Tcp,
                (true, "tcp") => TurnTransport::Tls,
                (true, "udp") => {
                    return Err(invalid("turns: with transport=udp (DTLS) is not supported"));
                }
                _ => return Err(invalid("transport must be udp or tcp")),
            };
        }
        Ok(Self {
            host,
            port,
            transport,
            username,
            credential,
        })
    }

    /// A server at a known address, reached over `transport`, without credentials.
    pub fn from_addr(addr: SocketAddr, transport: TurnTransport) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
            transport,
            username: None,
            credential: None,
        }
    }

    /// Sets the long-term credentials (replacing any from the URL).
    #[must_use]
    pub fn with_credentials(mut self, username: &str, credential: &str) -> Self {
        self.username = Some(username.to_owned());
        self.credential = Some(credential.to_owned());
        self
    }

    /// The host part (an IP literal or a name; also the TLS server name).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How the client reaches the server.
    pub fn transport(&self) -> TurnTransport {
        self.transport
    }

    /// The user name, if set.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    pub(crate) fn credentials(&self) -> Option<(&str, &str)> {
        Some((self.username.as_deref()?, self.credential.as_deref()?))
    }

    /// Resolves the host to an address of the family asked for (`ipv4`).
    pub async fn resolve(&self, ipv4: bool) -> Result<SocketAddr, TurnError> {
        crate::stun::resolve_host(&self.host, self.port, ipv4)
            .await
            .map_err(|e| match e {
                crate::stun::Unresolved::Lookup(source) => TurnError::Resolve {
                    host: self.host.clone(),
                    source,
                },
                crate::stun::Unresolved::NoAddress(family) => TurnError::NoAddress {
                    host: self.host.clone(),
                    family,
                },
            })
    }
}

/// One parsed ICE server URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IceServerUrl {
    /// `stun:host[:port]`: gives server-reflexive candidates.
    Stun(StunServer),
    /// `turn:` or `turns:`: gives relay candidates (and a server-reflexive one).
    Turn(TurnServer),
}

impl IceServerUrl {
    /// Parses one `stun:`, `turn:` or `turns:` URL.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("stun" | "stuns") => StunServer::parse(url).map(Self::Stun).map_err(|e| match e {
                StunError::InvalidUrl { url, reason } => UrlError { url, reason },
                _ => UrlError {
                    url: url.to_owned(),
                    reason: "invalid stun: URL",
                },
            }),
            Some("turn" | "turns") => TurnServer::parse(url).map(Self::Turn),
            _ => Err(UrlError {
                url: redact(url),
                reason: "the scheme must be stun:, turn: or turns:",
            }),
        }
    }
}

/// An ICE server the way `RTCPeerConnection` takes one: several URLs sharing one
/// user name and credential.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:`, `turn:` and `turns:` URLs.
    pub urls: Vec<String>,
    /// The TURN user name (applies to every `turn:`/`turns:` URL).
    pub username: Option<String>,
    /// The TURN password.
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl IceServer {
    /// Parses every URL. A `turn:`/`turns:` URL takes `username` and `credential`
    /// (over any in the URL itself) and, like a browser, must end up with both.
    pub fn parse(&self) -> Result<Vec<IceServerUrl>, UrlError> {
        if self.urls.is_empty() {
            return Err(UrlError {
                url: String::new(),
                reason: "an ICE server needs at least one URL",
            });
        }
        self.urls
            .iter()
            .map(|url| {
                let mut parsed = IceServerUrl::parse(url)?;
                if let IceServerUrl::Turn(turn) = &mut parsed {
                    if let Some(user) = &self.username {
                        turn.username = Some(user.clone());
                    }
                    if let Some(credential) = &self.credential {
                        turn.credential = Some(credential.clone());
                    }
                    if turn.credentials().is_none() {
                        return Err(UrlError {
                            url: redact(url),
                            reason: "a turn: server needs a username and a credential",
                        });
                    }
                }
                Ok(parsed)
            })
            .collect()
    }
}

/// `host[:port]` with IPv6 in brackets.
fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed [ in an IPv6 host")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the bracketed host is not an IPv6 address");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ]")?),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("the host has whitespace");
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port is not a number in 1..=65535"),
            Ok(p) => p,
        },
    };
    Ok((host.to_owned(), port))
}

/// Decodes `%XX` escapes; `None` on a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with any password replaced, for error messages and logs.
fn redact(url: &str) -> String {
    let Some((before, after)) = url.rsplit_once('@') else {
        return url.to_owned();
    };
    match before.split_once(':').and_then(|(scheme, userinfo)| {
        let (user, _) = userinfo.split_once(':')?;
        Some(format!("{scheme}:{user}:***@{after}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls() {
        let t = TurnServer::parse("turn:alice:s3cr%40t@example.org:3479?transport=tcp").unwrap();
        assert_eq!(t.host(), "example.org");
        assert_eq!(t.port(), 3479);
        assert_eq!(t.transport(), TurnTransport::Tcp);
        assert_eq!(t.credentials(), Some(("alice", "s3cr@t")));
        assert!(!format!("{t:?}").contains("s3cr"));
        assert_eq!(t.to_string(), "turn:example.org:3479?transport=tcp");

        let t = TurnServer::parse("turn:[::1]").unwrap();
        assert_eq!(
            (t.host(), t.port(), t.transport()),
            ("::1", 3478, TurnTransport::Udp)
        );
        let t = TurnServer::parse("TURNS:10.0.0.1").unwrap();
        assert_eq!((t.port(), t.transport()), (5349, TurnTransport::Tls));
        let t = TurnServer::parse("turns:h:1?transport=tcp").unwrap();
        assert_eq!(t.transport(), TurnTransport::Tls);

        for bad in [
            "turn:",
            "turn:h:0",
            "turn:h:99999",
            "turn:h?transport=sctp",
            "turns:h?transport=udp",
            "turn:h?foo=bar",
            "turn:[::1",
            "turn:[nothost]:1",
            "turn:user@h",
            "turn::pass@h",
            "turn:u:p%zz@h",
            "turn:h/path",
            "http://h",
            "turn:h o",
        ] {
            assert!(TurnServer::parse(bad).is_err(), "{bad} parsed");
        }
        let e = TurnServer::parse("turn:u:hunter2@h:0").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn ice_servers() {
        let server = IceServer {
            urls: vec![
                "stun:stun.example.org".into(),
                "turn:turn.example.org?transport=tcp".into(),
                "turns:turn.example.org".into(),
            ],
            username: Some("u".into()),
            credential: Some("p".into()),
        };
        let urls = server.parse().unwrap();
        assert!(matches!(&urls[0], IceServerUrl::Stun(s) if s.port() == 3478));
        assert!(
            matches!(&urls[1], IceServerUrl::Turn(t) if t.transport() == TurnTransport::Tcp && t.credentials() == Some(("u", "p")))
        );
        assert!(matches!(&urls[2], IceServerUrl::Turn(t) if t.transport() == TurnTransport::Tls));

        let no_creds = IceServer {
            urls: vec!["turn:h".into()],
            ..IceServer::default()
        };
        assert!(no_creds.parse().is_err());
        assert!(IceServer::default().parse().is_err());
        assert!(IceServerUrl::parse("ftp:h").is_err());
        assert!(IceServerUrl::parse("stun:h?x").is_err());
    }
}
