//! Peer signals (PROTOCOL.md §2): what two peers send each other through the broker
//! and, once connected, over the in-band `glare-signal` data channel.
//!
//! A signal is one JSON object with exactly one of the members `description`,
//! `candidate` or `bye`. Shapes follow the browser's `RTCSessionDescriptionInit` and
//! `RTCIceCandidateInit`, so a page forwards them untranslated. Unknown extra members
//! are ignored.
//!
//! ```
//! use glare_proto::signal::{Signal, SdpKind};
//!
//! let s = Signal::decode(br#"{"description":{"type":"offer","sdp":"v=0\r\n"},"tieBreaker":871}"#)?;
//! let Signal::Description { description, tie_breaker } = &s else { unreachable!() };
//! assert_eq!(description.kind, SdpKind::Offer);
//! assert_eq!(tie_breaker.get(), 871);
//! assert_eq!(Signal::decode(s.encode().as_bytes())?, s);
//! # Ok::<(), glare_proto::signal::SignalError>(())
//! ```

use std::fmt;

use serde_json::{Map, Value};

/// Largest encoded signal accepted by [`Signal::decode`]: the broker's `message` limit
/// (PROTOCOL.md §1, 64 KiB), which also bounds signals on the in-band channel.
pub const MAX_SIGNAL_LEN: usize = 64 * 1024;

/// Exclusive upper bound of a tie-breaker: `2^53`, so it is exact in JavaScript.
pub const TIE_BREAKER_LIMIT: u64 = 1 << 53;

/// One peer signal (PROTOCOL.md §2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An offer or an answer, with the sender's tie-breaker for this link.
    Description {
        /// The session description.
        description: SessionDescription,
        /// The sender's tie-breaker (PROTOCOL.md §3).
        tie_breaker: TieBreaker,
    },
    /// A trickled ICE candidate, or end-of-candidates for one ICE generation.
    Candidate(IceCandidate),
    /// The link is over.
    Bye(Bye),
}

/// Whether a [`SessionDescription`] is an offer or an answer.
///
/// Browsers also know `pranswer` and `rollback`; neither is ever sent between glare
/// peers (a rollback is local), so both are rejected on decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SdpKind {
    /// `"offer"`
    Offer,
    /// `"answer"`
    Answer,
}

impl SdpKind {
    /// The wire name (`"offer"` or `"answer"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
        }
    }
}

impl fmt::Display for SdpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `RTCSessionDescriptionInit`: `{"type":"offer"|"answer","sdp":"…"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    /// Offer or answer.
    pub kind: SdpKind,
    /// The SDP text, unparsed (see [`crate::sdp`] to inspect it).
    pub sdp: String,
}

/// A tie-breaker: an integer in `[0, 2^53)` drawn when a side starts a link.
///
/// The side with the smaller number is polite (PROTOCOL.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TieBreaker(u64);

impl TieBreaker {
    /// The largest valid tie-breaker, `2^53 - 1`.
    pub const MAX: Self = Self(TIE_BREAKER_LIMIT - 1);

    /// A tie-breaker, or `None` if `value` is not below `2^53`.
    pub fn new(value: u64) -> Option<Self> {
        (value < TIE_BREAKER_LIMIT).then_some(Self(value))
    }

    /// Maps any 64 random bits onto a valid tie-breaker (keeps the low 53 bits).
    pub fn from_random_bits(bits: u64) -> Self {
        Self(bits & (TIE_BREAKER_LIMIT - 1))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TieBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An `RTCIceCandidateInit` as glare sends it.
///
/// An empty [`candidate`](Self::candidate) string is end-of-candidates for the ICE
/// generation named by [`username_fragment`](Self::username_fragment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceCandidate {
    /// The `candidate:…` line without the `a=` prefix, or `""` for end-of-candidates.
    pub candidate: String,
    /// The `mid` of the m-line the candidate belongs to.
    pub sdp_mid: Option<String>,
    /// The index of the m-line the candidate belongs to.
    pub sdp_m_line_index: Option<u16>,
    /// The ICE ufrag of the description (ICE generation) this candidate belongs to.
    pub username_fragment: String,
}

impl IceCandidate {
    /// End-of-candidates for the ICE generation `username_fragment`.
    pub fn end_of_candidates(username_fragment: impl Into<String>) -> Self {
        Self {
            candidate: String::new(),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: username_fragment.into(),
        }
    }

    /// Whether this is end-of-candidates (an empty `candidate` string).
    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.is_empty()
    }
}

/// `{"bye":{"reason":"…"}}`: the link is over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bye {
    /// Why, for logs and for the other side's user. May be absent on the wire.
    pub reason: Option<String>,
}

/// Why a signal could not be decoded. Every variant names what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The input is longer than [`MAX_SIGNAL_LEN`].
    #[error("signal is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not JSON.
    #[error("signal is not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object.
    #[error("signal must be a JSON object")]
    NotAnObject,
    /// None of `description`, `candidate`, `bye` is present.
    #[error("signal has none of the members `description`, `candidate`, `bye`")]
    NoMember,
    /// More than one of `description`, `candidate`, `bye` is present.
    #[error(
        "signal has several of the members `description`, `candidate`, `bye` (exactly one is allowed)"
    )]
    SeveralMembers,
    /// A required field is absent.
    #[error("`{0}` is required")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("`{field}` must be {expected}")]
    WrongType {
        /// Dotted path of the field, e.g. `candidate.sdpMid`.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `description.type` is neither `offer` nor `answer`.
    #[error("`description.type` must be \"offer\" or \"answer\", not {0:?}")]
    BadSdpType(String),
    /// `tieBreaker` is not an integer in `[0, 2^53)`.
    #[error("`tieBreaker` must be an integer in [0, 2^53), got {0}")]
    BadTieBreaker(String),
}

impl Signal {
    /// Decodes one signal from its JSON text, with every rule of PROTOCOL.md §2 checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        if bytes.len() > MAX_SIGNAL_LEN {
            return Err(SignalError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNAL_LEN,
            });
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| SignalError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Decodes one signal from an already parsed JSON value (e.g. the `message` of a
    /// broker delivery).
    pub fn from_value(value: Value) -> Result<Self, SignalError> {
        let Value::Object(mut map) = value else {
            return Err(SignalError::NotAnObject);
        };
        let description = map.remove("description");
        let candidate = map.remove("candidate");
        let bye = map.remove("bye");
        let present = [&description, &candidate, &bye]
            .iter()
            .filter(|m| m.is_some())
            .count();
        match present {
            0 => return Err(SignalError::NoMember),
            1 => {}
            _ => return Err(SignalError::SeveralMembers),
        }
        if let Some(description) = description {
            let tie_breaker = decode_tie_breaker(map.remove("tieBreaker"))?;
            let description = decode_description(description)?;
            return Ok(Self::Description {
                description,
                tie_breaker,
            });
        }
        if let Some(candidate) = candidate {
            return decode_candidate(candidate).map(Self::Candidate);
        }
        let bye = bye.expect("exactly one member is present and it is not the other two");
        decode_bye(bye).map(Self::Bye)
    }

    /// The JSON value of this signal.
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        match self {
            Self::Description {
                description,
                tie_breaker,
            } => {
                let mut d = Map::new();
                d.insert("type".into(), description.kind.as_str().into());
                d.insert("sdp".into(), description.sdp.clone().into());
                out.insert("description".into(), d.into());
                out.insert("tieBreaker".into(), tie_breaker.get().into());
            }
            Self::Candidate(c) => {
                let mut m = Map::new();
                m.insert("candidate".into(), c.candidate.clone().into());
                if let Some(mid) = &c.sdp_mid {
                    m.insert("sdpMid".into(), mid.clone().into());
                }
                if let Some(index) = c.sdp_m_line_index {
                    m.insert("sdpMLineIndex".into(), index.into());
                }
                m.insert(
                    "usernameFragment".into(),
                    c.username_fragment.clone().into(),
                );
                out.insert("candidate".into(), m.into());
            }
            Self::Bye(b) => {
                let mut m = Map::new();
                if let Some(reason) = &b.reason {
                    m.insert("reason".into(), reason.clone().into());
                }
                out.insert("bye".into(), m.into());
            }
        }
        Value::Object(out)
    }

    /// The compact JSON text of this signal.
    pub fn encode(&self) -> String {
        self.to_value().to_string()
    }
}

fn decode_tie_breaker(value: Option<Value>) -> Result<TieBreaker, SignalError> {
    let value = value.ok_or(SignalError::Missing("tieBreaker"))?;
    value
        .as_u64()
        .and_then(TieBreaker::new)
        .ok_or_else(|| SignalError::BadTieBreaker(value.to_string()))
}

fn decode_description(value: Value) -> Result<SessionDescription, SignalError> {
    let Value::Object(mut map) = value else {
        return Err(SignalError::WrongType {
            field: "description",
            expected: "an object",
        });
    };
    let kind = match required_string(&mut map, "type", "description.type")?.as_str() {
        "offer" => SdpKind::Offer,
        "answer" => SdpKind::Answer,
        other => return Err(SignalError::BadSdpType(other.to_owned())),
    };
    let sdp = required_string(&mut map, "sdp", "description.sdp")?;
    Ok(SessionDescription { kind, sdp })
}

fn decode_candidate(value: Value) -> Result<IceCandidate, SignalError> {
    let Value::Object(mut map) = value else {
        return Err(SignalError::WrongType {
            field: "candidate",
            expected: "an object",
        });
    };
    let candidate = required_string(&mut map, "candidate", "candidate.candidate")?;
    let sdp_mid = match map.remove("sdpMid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(SignalError::WrongType {
                field: "candidate.sdpMid",
                expected: "a string or null",
            });
        }
    };
    let sdp_m_line_index = match map.remove("sdpMLineIndex") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().and_then(|i| u16::try_from(i).ok()).ok_or(
            SignalError::WrongType {
                field: "candidate.sdpMLineIndex",
                expected: "an integer in [0, 65535] or null",
            },
        )?),
    };
    let username_fragment =
        required_string(&mut map, "usernameFragment", "candidate.usernameFragment")?;
    Ok(IceCandidate {
        candidate,
        sdp_mid,
        sdp_m_line_index,
        username_fragment,
    })
}

fn decode_bye(value: Value) -> Result<Bye, SignalError> {
    let Value::Object(mut map) = value else {
        return Err(SignalError::WrongType {
            field: "bye",
            expected: "an object",
        });
    };
    let reason = match map.remove("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(SignalError::WrongType {
                field: "bye.reason",
                expected: "a string",
            });
        }
    };
    Ok(Bye { reason })
}

fn required_string(
    map: &mut Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<String, SignalError> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(SignalError::Missing(field)),
        Some(_) => Err(SignalError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every signal example of PROTOCOL.md §2, verbatim.
    const PROTOCOL_EXAMPLES: &[&str] = &[
        r#"{"description":{"type":"offer","sdp":"v=0…"},"tieBreaker":5210744310913}"#,
        r#"{"description":{"type":"answer","sdp":"v=0…"},"tieBreaker":871}"#,
        r#"{"candidate":{"candidate":"candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Fx3b"}}"#,
        r#"{"candidate":{"candidate":"","usernameFragment":"Fx3b"}}"#,
        r#"{"bye":{"reason":"user hung up"}}"#,
    ];

    #[test]
    fn protocol_examples_round_trip_to_equal_json() {
        for text in PROTOCOL_EXAMPLES {
            let signal = Signal::decode(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            let original: Value = serde_json::from_str(text).unwrap();
            assert_eq!(signal.to_value(), original, "{text}");
            assert_eq!(Signal::decode(signal.encode().as_bytes()).unwrap(), signal);
        }
    }

    #[test]
    fn examples_decode_to_the_right_variants() {
        let s = Signal::decode(PROTOCOL_EXAMPLES[0].as_bytes()).unwrap();
        assert!(matches!(
            s,
            Signal::Description { ref description, tie_breaker }
                if description.kind == SdpKind::Offer && tie_breaker.get() == 5_210_744_310_913
        ));
        let Signal::Candidate(c) = Signal::decode(PROTOCOL_EXAMPLES[2].as_bytes()).unwrap() else {
            panic!("not a candidate");
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_m_line_index, Some(0));
        assert!(!c.is_end_of_candidates());
        let Signal::Candidate(eoc) = Signal::decode(PROTOCOL_EXAMPLES[3].as_bytes()).unwrap()
        else {
            panic!("not a candidate");
        };
        assert!(eoc.is_end_of_candidates());
        assert_eq!(eoc, IceCandidate::end_of_candidates("Fx3b"));
        assert_eq!(
            Signal::decode(PROTOCOL_EXAMPLES[4].as_bytes()).unwrap(),
            Signal::Bye(Bye {
                reason: Some("user hung up".into())
            })
        );
    }

    #[test]
    fn unknown_members_are_ignored() {
        let s = Signal::decode(br#"{"bye":{"reason":"x","extra":1},"also":[1,2]}"#).unwrap();
        assert_eq!(
            s,
            Signal::Bye(Bye {
                reason: Some("x".into())
            })
        );
        // A browser's `RTCIceCandidate.toJSON()` may carry null mid/index.
        let s = Signal::decode(
            br#"{"candidate":{"candidate":"","sdpMid":null,"sdpMLineIndex":null,"usernameFragment":"u"}}"#,
        )
        .unwrap();
        assert_eq!(s, Signal::Candidate(IceCandidate::end_of_candidates("u")));
    }

    #[test]
    fn bad_signals_name_the_problem() {
        let cases: &[(&[u8], SignalError)] = &[
            (b"", SignalError::Json(String::new())),
            (b"{", SignalError::Json(String::new())),
            (b"[]", SignalError::NotAnObject),
            (b"\"bye\"", SignalError::NotAnObject),
            (b"{}", SignalError::NoMember),
            (br#"{"other":1}"#, SignalError::NoMember),
            (br#"{"bye":{},"candidate":{}}"#, SignalError::SeveralMembers),
            (
                br#"{"description":{"type":"offer","sdp":""},"bye":{},"tieBreaker":1}"#,
                SignalError::SeveralMembers,
            ),
            (
                br#"{"description":{"type":"offer","sdp":""}}"#,
                SignalError::Missing("tieBreaker"),
            ),
            (
                br#"{"description":{"type":"offer","sdp":""},"tieBreaker":-1}"#,
                SignalError::BadTieBreaker("-1".into()),
            ),
            (
                br#"{"description":{"type":"offer","sdp":""},"tieBreaker":9007199254740992}"#,
                SignalError::BadTieBreaker("9007199254740992".into()),
            ),
            (
                br#"{"description":{"type":"offer","sdp":""},"tieBreaker":1.5}"#,
                SignalError::BadTieBreaker("1.5".into()),
            ),
            (
                br#"{"description":{"type":"offer","sdp":""},"tieBreaker":"1"}"#,
                SignalError::BadTieBreaker("\"1\"".into()),
            ),
            (
                br#"{"description":{"type":"rollback","sdp":""},"tieBreaker":1}"#,
                SignalError::BadSdpType("rollback".into()),
            ),
            (
                br#"{"description":{"type":"pranswer","sdp":""},"tieBreaker":1}"#,
                SignalError::BadSdpType("pranswer".into()),
            ),
            (
                br#"{"description":{"sdp":""},"tieBreaker":1}"#,
                SignalError::Missing("description.type"),
            ),
            (
                br#"{"description":{"type":"offer"},"tieBreaker":1}"#,
                SignalError::Missing("description.sdp"),
            ),
            (
                br#"{"description":{"type":"offer","sdp":7},"tieBreaker":1}"#,
                SignalError::WrongType {
                    field: "description.sdp",
                    expected: "a string",
                },
            ),
            (
                br#"{"description":"v=0","tieBreaker":1}"#,
                SignalError::WrongType {
                    field: "description",
                    expected: "an object",
                },
            ),
            (
                br#"{"candidate":{"candidate":""}}"#,
                SignalError::Missing("candidate.usernameFragment"),
            ),
            (
                br#"{"candidate":{"usernameFragment":"u"}}"#,
                SignalError::Missing("candidate.candidate"),
            ),
            (
                br#"{"candidate":{"candidate":"","sdpMid":0,"usernameFragment":"u"}}"#,
                SignalError::WrongType {
                    field: "candidate.sdpMid",
                    expected: "a string or null",
                },
            ),
            (
                br#"{"candidate":{"candidate":"","sdpMLineIndex":70000,"usernameFragment":"u"}}"#,
                SignalError::WrongType {
                    field: "candidate.sdpMLineIndex",
                    expected: "an integer in [0, 65535] or null",
                },
            ),
            (
                br#"{"bye":{"reason":5}}"#,
                SignalError::WrongType {
                    field: "bye.reason",
                    expected: "a string",
                },
            ),
            (
                br#"{"bye":null}"#,
                SignalError::WrongType {
                    field: "bye",
                    expected: "an object",
                },
            ),
        ];
        for (input, expected) in cases {
            let err = Signal::decode(input).expect_err(&String::from_utf8_lossy(input));
            match (expected, &err) {
                // serde_json's wording is its own; the variant and a non-empty text matter.
                (SignalError::Json(_), SignalError::Json(m)) => assert!(!m.is_empty()),
                _ => assert_eq!(&err, expected, "{}", String::from_utf8_lossy(input)),
            }
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn oversized_signal_is_refused_before_parsing() {
        let big = vec![b' '; MAX_SIGNAL_LEN + 1];
        assert_eq!(
            Signal::decode(&big),
            Err(SignalError::TooLarge {
                len: MAX_SIGNAL_LEN + 1,
                max: MAX_SIGNAL_LEN
            })
        );
    }

    #[test]
    fn tie_breaker_range() {
        assert_eq!(TieBreaker::new(0).map(TieBreaker::get), Some(0));
        assert_eq!(
            TieBreaker::new(TIE_BREAKER_LIMIT - 1),
            Some(TieBreaker::MAX)
        );
        assert_eq!(TieBreaker::new(TIE_BREAKER_LIMIT), None);
        assert_eq!(TieBreaker::from_random_bits(u64::MAX), TieBreaker::MAX);
    }
}
