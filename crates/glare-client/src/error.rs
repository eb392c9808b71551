//! Client errors.

use std::time::Duration;

use glare_proto::broker::ErrorCode;

/// Everything a broker call can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker answered with an error of PROTOCOL.md's table.
    #[error("broker said {code}: {message}")]
    Broker {
        /// The code (not found, forbidden, rate limited, …).
        code: ErrorCode,
        /// The broker's text.
        message: String,
        /// For `rate_limited`: the `Retry-After` delay.
        retry_after: Option<Duration>,
    },
    /// The broker answered with a status and body outside the protocol.
    #[error("broker answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The connection failed or timed out.
    #[error("transport: {0}")]
    Transport(String),
    /// The broker sent something that is not PROTOCOL.md.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The caller asked for something impossible (bad URL, value not JSON).
    #[error("usage: {0}")]
    Usage(String),
    /// A send written to the channel's WebSocket got no answer before the socket
    /// dropped: the broker may or may not have relayed it. It is not retried
    /// automatically (that could deliver it twice); send it again only if the
    /// receiver can take a duplicate.
    #[error("unconfirmed send: {0}")]
    Unconfirmed(String),
    /// The channel is closed (by [`Channel::close`](crate::Channel::close), the
    /// broker, or after failing to resume).
    #[error("channel closed: {0}")]
    Closed(String),
}

impl Error {
    /// The protocol error code, if the broker gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// For `rate_limited`: how long to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Broker { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later may succeed (transport trouble, rate limiting).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport(_))
            || self.code() == Some(ErrorCode::RateLimited)
            || self.code() == Some(ErrorCode::Unavailable)
            || matches!(self, Self::Status { status, .. } if *status >= 500)
    }
}
