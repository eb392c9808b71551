//! SDP inspection for the negotiator, on top of `sdp-types`.
//!
//! [`SdpInfo::inspect`] reads what glare needs from an offer or answer before it
//! reaches the SDP engine: the ICE credentials (to tag candidate generations and see an
//! ICE restart), the DTLS fingerprint and setup role, the m-lines (kind, mid, port,
//! direction), the BUNDLE group, inline candidates (with `.local` mDNS names flagged)
//! and end-of-candidates. It rejects, with a reason, what a data-channel peer built on
//! str0m cannot accept, so a bad description is refused by glare with a clear error
//! rather than deep inside the engine.
//!
//! ```
//! use glare_proto::sdp::{MediaKind, SdpInfo};
//!
//! let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
//!     a=group:BUNDLE 0\r\na=fingerprint:sha-256 AB:CD\r\n\
//!     m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
//!     a=mid:0\r\na=ice-ufrag:Fx3b\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\na=setup:actpass\r\n\
//!     a=candidate:1 1 udp 2130706431 abc.local 50000 typ host\r\n";
//! let info = SdpInfo::inspect(sdp)?;
//! assert_eq!(info.ice_ufrag, "Fx3b");
//! assert_eq!(info.media[0].kind, MediaKind::Application);
//! assert!(info.candidates[0].is_mdns());
//! # Ok::<(), glare_proto::sdp::SdpError>(())
//! ```

use std::{collections::HashSet, fmt, net::IpAddr, str::FromStr};

use sdp_types::{Attribute, Media, Session};

use crate::signal::MAX_SIGNAL_LEN;

/// Largest SDP accepted: it travels inside one signal.
pub const MAX_SDP_LEN: usize = MAX_SIGNAL_LEN;

/// The ICE ufrag (`a=ice-ufrag`) of an SDP: the first one, session- or media-level,
/// found by a cheap line scan (no full parse).
///
/// It names the ICE generation a description starts (PROTOCOL.md §3).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|line| line.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

/// What glare reads from one session description.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SdpInfo {
    /// `a=ice-ufrag` (shared by every bundled m-line).
    pub ice_ufrag: String,
    /// `a=ice-pwd`.
    pub ice_pwd: String,
    /// `a=ice-lite` is present.
    pub ice_lite: bool,
    /// `a=ice-options` lists `trickle`.
    pub ice_trickle: bool,
    /// The `sha-256` DTLS fingerprint.
    pub fingerprint: Fingerprint,
    /// `a=setup`, if given.
    pub setup: Option<Setup>,
    /// The m-lines, in order.
    pub media: Vec<MediaInfo>,
    /// The mids of `a=group:BUNDLE`, if any.
    pub bundle: Vec<String>,
    /// Candidates written inline (`a=candidate`), in order.
    pub candidates: Vec<Candidate>,
    /// `a=end-of-candidates` is present (session- or media-level).
    pub end_of_candidates: bool,
}

/// A DTLS certificate fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash function, lower case (e.g. `sha-256`).
    pub algorithm: String,
    /// Colon-separated upper-case hex bytes.
    pub value: String,
}

/// `a=setup` (RFC 5763): which side is the DTLS client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setup {
    /// `actpass`: either; offers use it.
    ActPass,
    /// `active`: this side is the DTLS client.
    Active,
    /// `passive`: this side is the DTLS server.
    Passive,
}

/// The kind of an m-line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// `m=audio`
    Audio,
    /// `m=video`
    Video,
    /// `m=application` (SCTP data channels)
    Application,
}

/// Media direction attribute, from the side that writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv`
    SendRecv,
    /// `a=sendonly`
    SendOnly,
    /// `a=recvonly`
    RecvOnly,
    /// `a=inactive`: neither send nor receive (the m-line stays).
    Inactive,
}

impl Direction {
    /// The SDP attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction an SDP attribute name stands for, if it is one.
    pub fn from_attribute(name: &str) -> Option<Self> {
        [
            Self::SendRecv,
            Self::SendOnly,
            Self::RecvOnly,
            Self::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str() == name)
    }
}

/// One m-line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MediaInfo {
    /// Audio, video or application.
    pub kind: MediaKind,
    /// `a=mid`.
    pub mid: String,
    /// The m-line port; `0` means the m-line is rejected or stopped.
    pub port: u16,
    /// The transport protocol, e.g. `UDP/TLS/RTP/SAVPF`.
    pub proto: String,
    /// The direction attribute, if given.
    pub direction: Option<Direction>,
}

impl MediaInfo {
    /// Whether the m-line is rejected or stopped (port 0).
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }
}

/// Why a session description is refused. Every variant says what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// Longer than [`MAX_SDP_LEN`].
    #[error("SDP is {0} bytes, more than the {max}-byte limit", max = MAX_SDP_LEN)]
    TooLarge(usize),
    /// Not parseable as SDP.
    #[error("SDP does not parse: {0}")]
    Parse(String),
    /// No m-line at all: nothing to connect.
    #[error("SDP has no m-line")]
    NoMedia,
    /// An m-line of an unknown kind.
    #[error(
        "m-line {index} has media type {kind:?}; only audio, video and application are supported"
    )]
    UnsupportedMedia {
        /// m-line index.
        index: usize,
        /// The media type.
        kind: String,
    },
    /// An m-line whose transport is not DTLS-protected.
    #[error("m-line {index} uses transport {proto:?}, which a WebRTC peer cannot accept")]
    UnsupportedProto {
        /// m-line index.
        index: usize,
        /// The transport.
        proto: String,
    },
    /// An m-line without `a=mid`.
    #[error("m-line {0} has no a=mid")]
    MissingMid(usize),
    /// Two m-lines share a mid.
    #[error("mid {0:?} is used by more than one m-line")]
    DuplicateMid(String),
    /// No `a=ice-ufrag` / `a=ice-pwd` for an active m-line.
    #[error("m-line {index} has no {attr}")]
    MissingIce {
        /// m-line index.
        index: usize,
        /// `a=ice-ufrag` or `a=ice-pwd`.
        attr: &'static str,
    },
    /// ICE credentials that break RFC 8839's grammar.
    #[error("{attr} {value:?} is invalid: {reason}")]
    BadIce {
        /// `a=ice-ufrag` or `a=ice-pwd`.
        attr: &'static str,
        /// The value (cut to 64 bytes).
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Active m-lines with different ICE credentials: glare bundles everything on one
    /// transport, as browsers do.
    #[error(
        "m-lines {first} and {other} use different ICE credentials; glare needs one bundled transport"
    )]
    UnbundledIce {
        /// The first active m-line.
        first: usize,
        /// The one that differs.
        other: usize,
    },
    /// No DTLS fingerprint.
    #[error("SDP has no a=fingerprint")]
    MissingFingerprint,
    /// A fingerprint line that does not parse, or none with a supported hash.
    #[error("a=fingerprint {0:?} is invalid or uses an unsupported hash (glare needs sha-256)")]
    BadFingerprint(String),
    /// `a=setup` with an unknown value (`holdconn` included: it cannot connect).
    #[error("a=setup:{0} is not one of actpass, active, passive")]
    BadSetup(String),
    /// An inline candidate that does not parse.
    #[error("inline candidate is invalid: {0}")]
    BadCandidate(CandidateError),
}

impl SdpInfo {
    /// Parses and checks one session description.
    pub fn inspect(sdp: &str) -> Result<Self, SdpError> {
        if sdp.len() > MAX_SDP_LEN {
            return Err(SdpError::TooLarge(sdp.len()));
        }
        let session = Session::parse(sdp.as_bytes()).map_err(|e| SdpError::Parse(e.to_string()))?;
        if session.medias.is_empty() {
            return Err(SdpError::NoMedia);
        }
        let session_attr = |name: &'static str| first_value(&session.attributes, name);

        let mut media = Vec::with_capacity(session.medias.len());
        let mut mids = HashSet::new();
        let mut ice: Option<(usize, &str, &str)> = None;
        let mut fingerprint_lines: Vec<&str> = Vec::new();
        let mut setup_value = session_attr("setup");
        let mut candidates = Vec::new();
        let mut end_of_candidates = has(&session.attributes, "end-of-candidates");
        let mut ice_trickle = ice_options_trickle(&session.attributes);

        for (index, m) in session.medias.iter().enumerate() {
            let info = media_info(index, m)?;
            if !mids.insert(info.mid.clone()) {
                return Err(SdpError::DuplicateMid(info.mid));
            }
            let value = |name: &'static str| {
                first_value(&m.attributes, name).or_else(|| session_attr(name))
            };
            if !info.is_rejected() {
                let ufrag = value("ice-ufrag").ok_or(SdpError::MissingIce {
                    index,
                    attr: "a=ice-ufrag",
                })?;
                let pwd = value("ice-pwd").ok_or(SdpError::MissingIce {
                    index,
                    attr: "a=ice-pwd",
                })?;
                match ice {
                    None => ice = Some((index, ufrag, pwd)),
                    Some((first, u, p)) if (u, p) != (ufrag, pwd) => {
                        return Err(SdpError::UnbundledIce {
                            first,
                            other: index,
                        });
                    }
                    Some(_) => {}
                }
                if setup_value.is_none() {
                    setup_value = first_value(&m.attributes, "setup");
                }
            }
            fingerprint_lines.extend(values(&m.attributes, "fingerprint"));
            for line in values(&m.attributes, "candidate") {
                candidates.push(Candidate::parse_attribute(line).map_err(SdpError::BadCandidate)?);
            }
            end_of_candidates |= has(&m.attributes, "end-of-candidates");
            ice_trickle |= ice_options_trickle(&m.attributes);
            media.push(info);
        }
        for line in values(&session.attributes, "candidate") {
            candidates.push(Candidate::parse_attribute(line).map_err(SdpError::BadCandidate)?);
        }

        // Every m-line rejected: there is nothing to connect.
        let (_, ufrag, pwd) = ice.ok_or(SdpError::NoMedia)?;
        check_ice_chars("a=ice-ufrag", ufrag, 4)?;
        check_ice_chars("a=ice-pwd", pwd, 22)?;

        fingerprint_lines.extend(values(&session.attributes, "fingerprint"));
        if fingerprint_lines.is_empty() {
            return Err(SdpError::MissingFingerprint);
        }
        let fingerprint = fingerprint_lines
            .iter()
            .filter_map(|line| parse_fingerprint(line))
            .find(|fp| fp.algorithm == "sha-256")
            .ok_or_else(|| {
                SdpError::BadFingerprint(fingerprint_lines[0].chars().take(128).collect())
            })?;

        let setup = setup_value
            .map(|v| match v.trim() {
                "actpass" => Ok(Setup::ActPass),
                "active" => Ok(Setup::Active),
                "passive" => Ok(Setup::Passive),
                other => Err(SdpError::BadSetup(other.chars().take(64).collect())),
            })
            .transpose()?;

        let bundle = session
            .attributes
            .iter()
            .filter(|a| a.attribute == "group")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| v.strip_prefix("BUNDLE"))
            .map(|mids| mids.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();

        Ok(Self {
            ice_ufrag: ufrag.to_owned(),
            ice_pwd: pwd.to_owned(),
            ice_lite: has(&session.attributes, "ice-lite"),
            ice_trickle,
            fingerprint,
            setup,
            media,
            bundle,
            candidates,
            end_of_candidates,
        })
    }

    /// The mids of the data-channel (application) m-lines that are not rejected.
    pub fn data_mids(&self) -> impl Iterator<Item = &str> {
        self.media
            .iter()
            .filter(|m| m.kind == MediaKind::Application && !m.is_rejected())
            .map(|m| m.mid.as_str())
    }
}

fn media_info(index: usize, m: &Media) -> Result<MediaInfo, SdpError> {
    let kind = match m.media.as_str() {
        "audio" => MediaKind::Audio,
        "video" => MediaKind::Video,
        "application" => MediaKind::Application,
        other => {
            return Err(SdpError::UnsupportedMedia {
                index,
                kind: other.chars().take(64).collect(),
            });
        }
    };
    let proto_ok = match kind {
        MediaKind::Application => matches!(
            m.proto.as_str(),
            "UDP/DTLS/SCTP" | "TCP/DTLS/SCTP" | "DTLS/SCTP"
        ),
        MediaKind::Audio | MediaKind::Video => {
            matches!(
                m.proto.as_str(),
                "UDP/TLS/RTP/SAVPF" | "TCP/TLS/RTP/SAVPF" | "RTP/SAVPF"
            )
        }
    };
    // A rejected m-line may carry any transport: nothing will be set up for it.
    if !proto_ok && m.port != 0 {
        return Err(SdpError::UnsupportedProto {
            index,
            proto: m.proto.chars().take(64).collect(),
        });
    }
    let mid = first_value(&m.attributes, "mid")
        .map(str::trim)
        .filter(|mid| !mid.is_empty())
        .ok_or(SdpError::MissingMid(index))?;
    let direction = m
        .attributes
        .iter()
        .find_map(|a| Direction::from_attribute(&a.attribute));
    Ok(MediaInfo {
        kind,
        mid: mid.to_owned(),
        port: m.port,
        proto: m.proto.clone(),
        direction,
    })
}

fn first_value<'a>(attrs: &'a [Attribute], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.attribute == name)
        .and_then(|a| a.value.as_deref())
}

fn values<'a>(attrs: &'a [Attribute], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    attrs
        .iter()
        .filter(move |a| a.attribute == name)
        .filter_map(|a| a.value.as_deref())
}

fn has(attrs: &[Attribute], name: &str) -> bool {
    attrs.iter().any(|a| a.attribute == name)
}

fn ice_options_trickle(attrs: &[Attribute]) -> bool {
    values(attrs, "ice-options").any(|v| v.split_whitespace().any(|o| o == "trickle"))
}

/// RFC 8839: `ice-char = ALPHA / DIGIT / "+" / "/"`, ufrag 4–256 chars, pwd 22–256.
fn check_ice_chars(attr: &'static str, value: &str, min: usize) -> Result<(), SdpError> {
    let bad = |reason| SdpError::BadIce {
        attr,
        value: value.chars().take(64).collect(),
        reason,
    };
    let value = value.trim();
    if value.len() < min {
        return Err(bad("too short"));
    }
    if value.len() > 256 {
        return Err(bad("longer than 256 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(bad("only letters, digits, '+' and '/' are allowed"));
    }
    Ok(())
}

fn parse_fingerprint(line: &str) -> Option<Fingerprint> {
    let (algorithm, value) = line.trim().split_once(' ')?;
    let value = value.trim();
    let hex_pairs_ok = !value.is_empty()
        && value
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    hex_pairs_ok.then(|| Fingerprint {
        algorithm: algorithm.to_ascii_lowercase(),
        value: value.to_ascii_uppercase(),
    })
}

/// The address of a candidate: an IP, or a host name (browsers hide host addresses
/// behind random `.local` mDNS names).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CandidateAddress {
    /// A literal IP address.
    Ip(IpAddr),
    /// A host name, usually an mDNS `….local` name.
    Name(String),
}

impl fmt::Display for CandidateAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// Candidate type (`typ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// `host`
    Host,
    /// `srflx`: server reflexive (STUN).
    ServerReflexive,
    /// `prflx`: peer reflexive.
    PeerReflexive,
    /// `relay`: a TURN relay.
    Relay,
}

impl CandidateKind {
    /// The SDP name: `host`, `srflx`, `prflx` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::ServerReflexive => "srflx",
            Self::PeerReflexive => "prflx",
            Self::Relay => "relay",
        }
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CandidateTransport {
    /// UDP.
    Udp,
    /// TCP (RFC 6544 framing).
    Tcp,
}

/// One parsed ICE candidate (RFC 8839 §5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    /// Foundation.
    pub foundation: String,
    /// Component id (1 = RTP/data).
    pub component: u16,
    /// UDP or TCP.
    pub transport: CandidateTransport,
    /// Priority.
    pub priority: u32,
    /// Address.
    pub address: CandidateAddress,
    /// Port.
    pub port: u16,
    /// Type.
    pub kind: CandidateKind,
    /// `raddr`, if given.
    pub related_address: Option<CandidateAddress>,
    /// `rport`, if given.
    pub related_port: Option<u16>,
    /// `tcptype`, for TCP candidates.
    pub tcp_type: Option<String>,
    /// `ufrag` extension, if given.
    pub ufrag: Option<String>,
}

/// Why a candidate line does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// The line is not `candidate:…`.
    #[error("a candidate starts with \"candidate:\"")]
    NoPrefix,
    /// A field is missing.
    #[error("the candidate has no {0}")]
    Missing(&'static str),
    /// A field does not parse.
    #[error("the candidate's {field} {value:?} is invalid")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Its text (cut to 64 bytes).
        value: String,
    },
}

impl Candidate {
    /// Parses `candidate:…` (the form of `RTCIceCandidateInit.candidate`; an `a=`
    /// prefix is accepted too).
    pub fn parse(line: &str) -> Result<Self, CandidateError> {
        let line = line.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        let rest = line
            .strip_prefix("candidate:")
            .ok_or(CandidateError::NoPrefix)?;
        Self::parse_attribute(rest)
    }

    /// Parses the value of an `a=candidate:` attribute (without `candidate:`).
    pub fn parse_attribute(value: &str) -> Result<Self, CandidateError> {
        let mut it = value.split_whitespace();
        let mut next = |field| it.next().ok_or(CandidateError::Missing(field));
        let foundation = next("foundation")?.to_owned();
        let component = parse_field("component", next("component")?)?;
        let transport = match next("transport")?.to_ascii_lowercase().as_str() {
            "udp" => CandidateTransport::Udp,
            "tcp" => CandidateTransport::Tcp,
            other => return Err(invalid("transport", other)),
        };
        let priority = parse_field("priority", next("priority")?)?;
        let address = parse_address(next("address")?)?;
        let port = parse_field("port", next("port")?)?;
        let typ = next("typ")?;
        if typ != "typ" {
            return Err(invalid("`typ` keyword", typ));
        }
        let kind = match next("type")? {
            "host" => CandidateKind::Host,
            "srflx" => CandidateKind::ServerReflexive,
            "prflx" => CandidateKind::PeerReflexive,
            "relay" => CandidateKind::Relay,
            other => return Err(invalid("type", other)),
        };
        let mut candidate = Self {
            foundation,
            component,
            transport,
            priority,
            address,
            port,
            kind,
            related_address: None,
            related_port: None,
            tcp_type: None,
            ufrag: None,
        };
        // Extensions come as name/value pairs; unknown ones are skipped.
        while let Some(name) = it.next() {
            let value = it
                .next()
                .ok_or(CandidateError::Missing("extension value"))?;
            match name {
                "raddr" => candidate.related_address = Some(parse_address(value)?),
                "rport" => candidate.related_port = Some(parse_field("rport", value)?),
                "tcptype" => candidate.tcp_type = Some(value.to_owned()),
                "ufrag" => candidate.ufrag = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(candidate)
    }

    /// Whether the address is an mDNS `.local` name (which str0m cannot use: resolve
    /// it, or rely on peer-reflexive discovery).
    pub fn is_mdns(&self) -> bool {
        matches!(&self.address, CandidateAddress::Name(n) if n.to_ascii_lowercase().ends_with(".local"))
    }
}

fn invalid(field: &'static str, value: &str) -> CandidateError {
    CandidateError::Invalid {
        field,
        value: value.chars().take(64).collect(),
    }
}

fn parse_field<T: FromStr>(field: &'static str, value: &str) -> Result<T, CandidateError> {
    value.parse().map_err(|_| invalid(field, value))
}

fn parse_address(value: &str) -> Result<CandidateAddress, CandidateError> {
    if let Ok(ip) = value.parse() {
        return Ok(CandidateAddress::Ip(ip));
    }
    // RFC 1123 host name characters; anything else is garbage, not a name.
    let name_ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if name_ok {
        Ok(CandidateAddress::Name(value.to_owned()))
    } else {
        Err(invalid("address", value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer shaped like Chromium's: BUNDLE, trickle, sha-256, a data m-line.
    pub(crate) const CHROMIUM_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=candidate:1234 1 udp 2122260223 d0d4b2e4-5c0c-4b0b-9d2f-0a1b2c3d4e5f.local 54321 typ host generation 0 network-id 1\r\n\
a=ice-ufrag:EsAw\r\n\
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sctp-port:5000\r\n\
a=max-message-size:262144\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:EsAw\r\n\
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n\
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=end-of-candidates\r\n";

    #[test]
    fn inspects_a_browser_offer() {
        let info = SdpInfo::inspect(CHROMIUM_OFFER).unwrap();
        assert_eq!(info.ice_ufrag, "EsAw");
        assert_eq!(info.ice_pwd, "bP+XJMM09aR8AiX1jdukzR6Y");
        assert!(info.ice_trickle);
        assert!(!info.ice_lite);
        assert_eq!(info.fingerprint.algorithm, "sha-256");
        assert!(info.fingerprint.value.starts_with("0F:74"));
        assert_eq!(info.setup, Some(Setup::ActPass));
        assert_eq!(info.bundle, ["0", "1"]);
        assert_eq!(info.media.len(), 2);
        assert_eq!(info.media[0].kind, MediaKind::Application);
        assert_eq!(info.media[1].kind, MediaKind::Audio);
        assert_eq!(info.media[1].direction, Some(Direction::SendRecv));
        assert_eq!(info.data_mids().collect::<Vec<_>>(), ["0"]);
        assert_eq!(info.candidates.len(), 1);
        assert!(info.candidates[0].is_mdns());
        assert!(info.end_of_candidates);
        assert_eq!(ice_ufrag(CHROMIUM_OFFER), Some("EsAw"));
    }

    #[test]
    fn lf_only_line_ends_work() {
        let lf = CHROMIUM_OFFER.replace("\r\n", "\n");
        assert_eq!(
            SdpInfo::inspect(&lf).unwrap(),
            SdpInfo::inspect(CHROMIUM_OFFER).unwrap()
        );
        assert_eq!(ice_ufrag(&lf), Some("EsAw"));
    }

    #[test]
    fn session_level_credentials_apply_to_every_m_line() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=ice-lite\r\n\
            a=fingerprint:SHA-256 ab:cd\r\na=setup:passive\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:data\r\n";
        let info = SdpInfo::inspect(sdp).unwrap();
        assert_eq!(info.ice_ufrag, "abcd");
        assert!(info.ice_lite);
        assert_eq!(info.setup, Some(Setup::Passive));
        assert_eq!(info.fingerprint.value, "AB:CD");
    }

    fn with(from: &str, to: &str) -> String {
        assert!(CHROMIUM_OFFER.contains(from), "{from}");
        CHROMIUM_OFFER.replacen(from, to, 1)
    }

    #[test]
    fn rejects_what_a_data_channel_peer_cannot_accept() {
        let too_big = format!("{CHROMIUM_OFFER}{}", "a=x\r\n".repeat(MAX_SDP_LEN / 5));
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "does not parse"),
            ("hello".into(), "does not parse"),
            ("v=1\r\n".into(), "does not parse"),
            (
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".into(),
                "no m-line",
            ),
            (too_big, "limit"),
            (with("m=audio 9", "m=text 9"), "media type \"text\""),
            (
                with("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
                "transport \"RTP/AVP\"",
            ),
            (with("UDP/DTLS/SCTP", "DTLS/SCTP/NOPE"), "transport"),
            (with("a=mid:1\r\n", ""), "m-line 1 has no a=mid"),
            (
                with("a=mid:1\r\n", "a=mid:0\r\n"),
                "mid \"0\" is used by more",
            ),
            (
                with("a=ice-ufrag:EsAw\r\n", ""),
                "m-line 0 has no a=ice-ufrag",
            ),
            (
                with("a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n", ""),
                "m-line 0 has no a=ice-pwd",
            ),
            (
                CHROMIUM_OFFER.replace("a=ice-ufrag:EsAw", "a=ice-ufrag:E w"),
                "invalid",
            ),
            (
                CHROMIUM_OFFER.replace("a=ice-ufrag:EsAw", "a=ice-ufrag:abc"),
                "too short",
            ),
            (
                CHROMIUM_OFFER.replace("a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y", "a=ice-pwd:short"),
                "too short",
            ),
            (
                with(
                    "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=fingerprint",
                    "a=ice-ufrag:Othr\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=fingerprint",
                ),
                "different ICE credentials",
            ),
            (
                CHROMIUM_OFFER.replace("a=fingerprint:", "a=x-fingerprint:"),
                "no a=fingerprint",
            ),
            (
                CHROMIUM_OFFER.replace("sha-256", "sha-1"),
                "unsupported hash",
            ),
            (
                CHROMIUM_OFFER.replace("sha-256 0F", "sha-256 ZZ"),
                "invalid",
            ),
            (
                CHROMIUM_OFFER.replace("a=setup:actpass", "a=setup:holdconn"),
                "a=setup:holdconn",
            ),
            (with("udp 2122260223", "sctp 2122260223"), "transport"),
            (with("54321 typ host", "54321 type host"), "`typ` keyword"),
            (
                with("generation 0 network-id 1", "generation"),
                "extension value",
            ),
        ];
        for (sdp, needle) in cases {
            let err = SdpInfo::inspect(&sdp).expect_err(needle);
            let msg = err.to_string();
            assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
        }
    }

    #[test]
    fn rejected_m_lines_need_no_transport() {
        // A stopped audio m-line with port 0 and no credentials is fine.
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            a=fingerprint:sha-256 AB\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
            a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
            m=audio 0 RTP/AVP 0\r\na=mid:1\r\n";
        let info = SdpInfo::inspect(sdp).unwrap();
        assert!(info.media[1].is_rejected());
        // Every m-line rejected: nothing to connect.
        let all_rejected = sdp.replace("m=application 9", "m=application 0");
        assert_eq!(SdpInfo::inspect(&all_rejected), Err(SdpError::NoMedia));
    }

    #[test]
    fn candidates_parse() {
        let c = Candidate::parse("candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host").unwrap();
        assert_eq!(
            c.address,
            CandidateAddress::Ip("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            (c.port, c.kind, c.component),
            (50000, CandidateKind::Host, 1)
        );
        assert!(!c.is_mdns());
        let c = Candidate::parse(
            "a=candidate:842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx raddr 10.0.0.5 rport 61234 generation 0 ufrag EsAw network-cost 999",
        )
        .unwrap();
        assert_eq!(c.kind, CandidateKind::ServerReflexive);
        assert_eq!(
            c.related_address,
            Some(CandidateAddress::Ip("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(c.related_port, Some(61234));
        assert_eq!(c.ufrag.as_deref(), Some("EsAw"));
        let c = Candidate::parse("candidate:2 1 TCP 1518280447 ::1 9 typ host tcptype passive")
            .unwrap();
        assert_eq!(c.transport, CandidateTransport::Tcp);
        assert_eq!(c.tcp_type.as_deref(), Some("passive"));
        let c = Candidate::parse("candidate:3 1 udp 1 ABC.LOCAL 1 typ relay").unwrap();
        assert!(c.is_mdns());
        assert_eq!(c.address.to_string(), "ABC.LOCAL");
    }

    #[test]
    fn bad_candidates_name_the_field() {
        let cases = [
            ("", "starts with"),
            ("candidate:", "no foundation"),
            ("candidate:1", "no component"),
            ("candidate:1 x udp 1 1.2.3.4 1 typ host", "component \"x\""),
            ("candidate:1 1 udp -1 1.2.3.4 1 typ host", "priority"),
            ("candidate:1 1 udp 1 bad_name! 1 typ host", "address"),
            ("candidate:1 1 udp 1 1.2.3.4 70000 typ host", "port"),
            ("candidate:1 1 udp 1 1.2.3.4 1 typ", "no type"),
            ("candidate:1 1 udp 1 1.2.3.4 1 typ weird", "type \"weird\""),
            ("candidate:1 1 udp 1 1.2.3.4 1 typ host rport x", "rport"),
        ];
        for (line, needle) in cases {
            let msg = Candidate::parse(line).expect_err(line).to_string();
            assert!(
                msg.contains(needle),
                "{line}: expected {needle:?} in {msg:?}"
            );
        }
    }
}
