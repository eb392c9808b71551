//! The facade's one error type.

use std::fmt;

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Caller misuse: a bad URL, label, option or argument.
    InvalidInput,
    /// The broker refused a request or could not be reached.
    Broker,
    /// The UDP socket could not be bound or its driver stopped.
    Socket,
    /// The link, channel or peer is closed (by either side, or it failed).
    Closed,
    /// Something did not happen in time.
    Timeout,
    /// The remote peer broke the protocol (a bad signal, a bad file header …).
    Protocol,
    /// Local file or stream I/O failed.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid input",
            Self::Broker => "broker",
            Self::Socket => "socket",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::Io => "I/O",
        })
    }
}

/// An error from the glare facade: a [`kind`](Error::kind) to match on and a
/// message saying what went wrong (with its cause, if any, as
/// [`source`](std::error::Error::source)).
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn closed(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, what)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<glare_client::Error> for Error {
    fn from(e: glare_client::Error) -> Self {
        Self::with_source(ErrorKind::Broker, "broker", e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, "I/O", e)
    }
}

impl From<glare_udp::DriverError> for Error {
    fn from(e: glare_udp::DriverError) -> Self {
        match e {
            glare_udp::DriverError::UnknownConnection(_) => Self::closed("the link is closed"),
            e => Self::with_source(ErrorKind::Socket, "UDP driver", e),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind {
            ErrorKind::Closed => std::io::ErrorKind::BrokenPipe,
            ErrorKind::Timeout => std::io::ErrorKind::TimedOut,
            ErrorKind::InvalidInput => std::io::ErrorKind::InvalidInput,
            ErrorKind::Protocol => std::io::ErrorKind::InvalidData,
            _ => std::io::ErrorKind::Other,
        };
        Self::new(kind, e)
    }
}
