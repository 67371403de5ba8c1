//! [`BindError`]: why a listener could not be created.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::os::fd::RawFd;

use crate::Addr;

/// What went wrong, as a closed (but extensible) set. See [`BindError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BindErrorKind {
    /// The address is taken: `EADDRINUSE`, or a Unix socket path on which another process is
    /// still accepting connections.
    AddrInUse,
    /// The address is not local to this host (`EADDRNOTAVAIL`).
    AddrNotAvailable,
    /// Not allowed: a privileged port, or no permission on the socket path or directory.
    PermissionDenied,
    /// A Unix socket path exists and is not a socket; it is never removed.
    NotASocket,
    /// An adopted descriptor is a socket of the wrong kind: not a stream socket, not
    /// listening, or of an unsupported address family.
    UnsupportedSocket,
    /// The platform does not support a requested option (for example `SO_REUSEPORT` on
    /// illumos).
    Unsupported,
    /// The kernel rejected an option value (`EINVAL`), for example a keep-alive idle time
    /// under one second.
    InvalidConfig,
    /// No tokio runtime is running on this thread.
    NoRuntime,
    /// Any other I/O error; see [`std::error::Error::source`].
    Io,
}

impl BindErrorKind {
    fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::AddrInUse => Self::AddrInUse,
            io::ErrorKind::AddrNotAvailable => Self::AddrNotAvailable,
            io::ErrorKind::PermissionDenied => Self::PermissionDenied,
            io::ErrorKind::Unsupported => Self::Unsupported,
            io::ErrorKind::InvalidInput => Self::InvalidConfig,
            _ => Self::Io,
        }
    }

    fn io_kind(self) -> io::ErrorKind {
        match self {
            Self::AddrInUse => io::ErrorKind::AddrInUse,
            Self::AddrNotAvailable => io::ErrorKind::AddrNotAvailable,
            Self::PermissionDenied => io::ErrorKind::PermissionDenied,
            Self::NotASocket | Self::UnsupportedSocket | Self::InvalidConfig => {
                io::ErrorKind::InvalidInput
            }
            Self::Unsupported => io::ErrorKind::Unsupported,
            Self::NoRuntime | Self::Io => io::ErrorKind::Other,
        }
    }
}

/// What the error is about.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Addr(Addr),
    Fd { fd: RawFd, name: String },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(addr) => addr.fmt(f),
            Target::Fd { fd, name } => write!(f, "inherited fd {fd} (name {name:?})"),
        }
    }
}

/// The step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Runtime,
    Socket,
    SetOption(&'static str),
    Bind,
    RemoveStale,
    Permissions,
    Listen,
    Register,
    Adopt,
}

/// A listener could not be bound, configured or adopted.
///
/// `Display` names the address, path or inherited descriptor and the reason, for example
/// `cannot bind 127.0.0.1:8080: address already in use (os error 98)`. When an operating
/// system call failed, [`source`](std::error::Error::source) returns its [`io::Error`].
#[derive(Debug)]
pub struct BindError {
    target: Target,
    step: Step,
    kind: BindErrorKind,
    detail: Option<&'static str>,
    source: Option<io::Error>,
}

impl BindError {
    pub(crate) fn io(target: Target, step: Step, source: io::Error) -> Self {
        Self {
            target,
            step,
            kind: BindErrorKind::from_io(&source),
            detail: None,
            source: Some(source),
        }
    }

    pub(crate) fn other(
        target: Target,
        step: Step,
        kind: BindErrorKind,
        detail: &'static str,
    ) -> Self {
        Self {
            target,
            step,
            kind,
            detail: Some(detail),
            source: None,
        }
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> BindErrorKind {
        self.kind
    }

    /// The address or Unix socket path the error is about; `None` when it is about an
    /// inherited (socket-activation) descriptor, see [`fd`](Self::fd).
    #[must_use]
    pub fn addr(&self) -> Option<&Addr> {
        match &self.target {
            Target::Addr(addr) => Some(addr),
            Target::Fd { .. } => None,
        }
    }

    /// The inherited descriptor the error is about, for socket activation errors.
    #[must_use]
    pub fn fd(&self) -> Option<RawFd> {
        match &self.target {
            Target::Fd { fd, .. } => Some(*fd),
            Target::Addr(_) => None,
        }
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        match self.step {
            Step::Runtime | Step::Bind => write!(f, "cannot bind {target}")?,
            Step::Socket => write!(f, "cannot create a socket for {target}")?,
            Step::SetOption(option) => write!(f, "cannot set {option} on {target}")?,
            Step::RemoveStale => write!(f, "cannot remove stale socket {target}")?,
            Step::Permissions => write!(f, "cannot set permissions on {target}")?,
            Step::Listen => write!(f, "cannot listen on {target}")?,
            Step::Register => write!(f, "cannot register {target} with the tokio reactor")?,
            Step::Adopt => write!(f, "cannot adopt {target}")?,
        }
        f.write_str(": ")?;
        if let Some(detail) = self.detail {
            f.write_str(detail)?;
        }
        if let Some(source) = &self.source {
            if self.detail.is_some() {
                f.write_str(": ")?;
            }
            // io::Error messages start upper-case ("Address already in use"); keep the
            // sentence flowing.
            let msg = source.to_string();
            let mut chars = msg.chars();
            if let Some(first) = chars.next() {
                for c in first.to_lowercase() {
                    f.write_fmt(format_args!("{c}"))?;
                }
                f.write_str(chars.as_str())?;
            }
        }
        Ok(())
    }
}

impl StdError for BindError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<BindError> for io::Error {
    /// Keeps the [`io::ErrorKind`] of the underlying error (or the closest one) and the
    /// full message.
    fn from(e: BindError) -> Self {
        let kind = e
            .source
            .as_ref()
            .map_or_else(|| e.kind.io_kind(), io::Error::kind);
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    fn inet(s: &str) -> Target {
        let addr: SocketAddr = s.parse().expect("test address");
        Target::Addr(Addr::Inet(addr))
    }

    #[test]
    fn display_names_address_and_reason() {
        let e = BindError::io(
            inet("127.0.0.1:8080"),
            Step::Bind,
            io::Error::from_raw_os_error(libc::EADDRINUSE),
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot bind 127.0.0.1:8080: address already in use"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("(os error {})", libc::EADDRINUSE)),
            "{msg}"
        );
        assert_eq!(e.kind(), BindErrorKind::AddrInUse);
        assert!(e.source().is_some());
        assert_eq!(
            e.addr(),
            Some(&Addr::Inet("127.0.0.1:8080".parse().expect("addr")))
        );
        assert_eq!(e.fd(), None);
    }

    #[test]
    fn display_for_paths_and_fds() {
        let e = BindError::other(
            Target::Addr(Addr::Unix(Some(PathBuf::from("/run/app.sock")))),
            Step::Bind,
            BindErrorKind::NotASocket,
            "the path exists and is not a socket; it was left alone",
        );
        assert_eq!(
            e.to_string(),
            "cannot bind unix:/run/app.sock: the path exists and is not a socket; it was left alone"
        );
        assert!(e.source().is_none());

        let e = BindError::other(
            Target::Fd {
                fd: 3,
                name: "web".into(),
            },
            Step::Adopt,
            BindErrorKind::UnsupportedSocket,
            "not a listening socket",
        );
        assert_eq!(
            e.to_string(),
            "cannot adopt inherited fd 3 (name \"web\"): not a listening socket"
        );
        assert_eq!(e.fd(), Some(3));
        assert!(e.addr().is_none());
    }

    #[test]
    fn converts_to_io_error_keeping_kind() {
        let e = BindError::io(
            inet("[::1]:80"),
            Step::Bind,
            io::Error::from_raw_os_error(libc::EACCES),
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            io.to_string()
                .starts_with("cannot bind [::1]:80: permission denied")
        );
    }
}
