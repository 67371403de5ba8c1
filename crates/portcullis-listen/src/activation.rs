//! systemd socket activation: adopting the listening sockets a service manager passes in
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3), and the same protocol
//! under portcullis's own variables for the sockets of an upgrade ([`crate::handoff`]).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::{Domain, SockRef, Type};

use crate::error::{BindErrorKind, Step, Target};
use crate::sys::{self, AdoptError, LISTEN_FDS_START};
use crate::{BindError, Listener, ListenerConfig, sockopt};

/// The name of a descriptor passed without a name (systemd's convention).
const UNKNOWN_NAME: &str = "unknown";

/// Why [`SocketActivation::from_env`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ActivationError {
    /// An environment variable has a value that cannot be right.
    #[non_exhaustive]
    InvalidVariable {
        /// The variable (`LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES`).
        name: &'static str,
        /// Its value (lossily converted to UTF-8, at most 64 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The descriptors were already taken by an earlier [`SocketActivation::from_env`] call
    /// in this process.
    AlreadyTaken,
    /// A descriptor the environment announced is not open or cannot be inspected.
    #[non_exhaustive]
    BadDescriptor {
        /// The descriptor number.
        fd: RawFd,
        /// The error from `fstat` or `fcntl`.
        source: io::Error,
    },
    /// A descriptor the environment announced is open but is not a socket.
    #[non_exhaustive]
    NotASocket {
        /// The descriptor number.
        fd: RawFd,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::InvalidVariable {
                name,
                value,
                reason,
            } => write!(f, "socket activation: invalid {name}={value:?}: {reason}"),
            ActivationError::AlreadyTaken => f.write_str(
                "socket activation: the inherited sockets were already taken by an earlier \
                 SocketActivation::from_env call",
            ),
            ActivationError::BadDescriptor { fd, source } => {
                write!(
                    f,
                    "socket activation: inherited fd {fd} is unusable: {source}"
                )
            }
            ActivationError::NotASocket { fd } => {
                write!(f, "socket activation: inherited fd {fd} is not a socket")
            }
        }
    }
}

impl std::error::Error for ActivationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ActivationError::BadDescriptor { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn invalid(name: &'static str, value: &OsStr, reason: &'static str) -> ActivationError {
    ActivationError::InvalidVariable {
        name,
        value: value.to_string_lossy().chars().take(64).collect(),
        reason,
    }
}

/// The variables of one protocol that passes descriptors from 3 on.
pub(crate) struct Vars {
    /// The process the descriptors are for (systemd: this process's id; an upgrade: its
    /// parent's, the process that started it).
    pub(crate) pid: &'static str,
    /// How many descriptors.
    pub(crate) fds: &'static str,
    /// Their names, `:`-separated.
    pub(crate) names: &'static str,
}

/// systemd's socket activation.
const SYSTEMD: Vars = Vars {
    pid: "LISTEN_PID",
    fds: "LISTEN_FDS",
    names: "LISTEN_FDNAMES",
};

/// portcullis's upgrade hand-off ([`crate::handoff`]): the same protocol under its own names,
/// addressed to the child of the process named (a child cannot know its own pid before it
/// exists, and systemd's variables stay systemd's).
pub(crate) const UPGRADE: Vars = Vars {
    pid: "PORTCULLIS_LISTEN_PARENT",
    fds: "PORTCULLIS_LISTEN_FDS",
    names: "PORTCULLIS_LISTEN_FDNAMES",
};

/// Parses the socket-activation environment. `Ok(None)` when it is not addressed to
/// `our_pid` or passes no descriptors; otherwise one name per descriptor.
#[cfg(test)]
fn parse_env(
    our_pid: u32,
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    listen_fdnames: Option<&OsStr>,
) -> Result<Option<Vec<String>>, ActivationError> {
    parse_vars(&SYSTEMD, our_pid, listen_pid, listen_fds, listen_fdnames)
}

/// [`parse_env`] for the variables of `vars`.
fn parse_vars(
    vars: &Vars,
    our_pid: u32,
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    listen_fdnames: Option<&OsStr>,
) -> Result<Option<Vec<String>>, ActivationError> {
    let (Some(pid_raw), Some(fds_raw)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid_raw
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid(vars.pid, pid_raw, "expected a process id"))?;
    if pid != our_pid {
        // Meant for another process (we inherited the environment, not the sockets).
        return Ok(None);
    }
    let count: usize = fds_raw
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid(vars.fds, fds_raw, "expected a descriptor count"))?;
    if count == 0 {
        return Ok(None);
    }
    if RawFd::try_from(count)
        .ok()
        .and_then(|n| LISTEN_FDS_START.checked_add(n))
        .is_none()
    {
        return Err(invalid(vars.fds, fds_raw, "descriptor count too large"));
    }
    let names = match listen_fdnames {
        None => vec![UNKNOWN_NAME.to_owned(); count],
        Some(raw) => {
            let s = raw
                .to_str()
                .ok_or_else(|| invalid(vars.names, raw, "not valid UTF-8"))?;
            let names: Vec<String> = s
                .split(':')
                .map(|n| if n.is_empty() { UNKNOWN_NAME } else { n }.to_owned())
                .collect();
            if names.len() != count {
                return Err(invalid(
                    vars.names,
                    raw,
                    "number of names does not match the descriptor count",
                ));
            }
            names
        }
    };
    Ok(Some(names))
}

#[derive(Debug)]
struct Inherited {
    name: String,
    fd: OwnedFd,
}

/// The listening sockets passed to this process by systemd socket activation (or any service
/// manager speaking the same `LISTEN_FDS` protocol).
///
/// Sockets are taken out by name with [`take`](Self::take) (systemd's `FileDescriptorName=`,
/// `"unknown"` when unnamed) and become [`Listener`]s. Their listening options (backlog,
/// reuse-port, buffers, ...) are the service manager's; the per-connection options of the
/// [`ListenerConfig`] are set on the socket (so that accepted connections inherit them on
/// Linux; this changes the inherited socket for as long as it lives). Unix socket files of
/// activated
/// sockets belong to the service manager and are not removed on drop.
///
/// Sockets never taken are closed when this value is dropped.
#[derive(Debug)]
pub struct SocketActivation {
    inherited: Vec<Inherited>,
}

impl SocketActivation {
    /// Takes ownership of the sockets passed by the service manager, if any.
    ///
    /// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Returns `Ok(None)` when they are
    /// absent, pass zero descriptors, or `LISTEN_PID` is not this process (for example in a
    /// child that inherited the environment). Otherwise checks that descriptors
    /// `3 .. 3 + LISTEN_FDS` are open sockets, marks them close-on-exec so they do not leak
    /// into child processes, and owns them from then on.
    ///
    /// The descriptors are taken at most once per process: a later call that finds the
    /// environment addressed to this process returns [`ActivationError::AlreadyTaken`].
    /// The environment is never modified (mutating it is unsound in threaded programs): child
    /// processes see the variables, but a different pid and no descriptors.
    ///
    /// Nothing else in the process may use descriptors 3 and up on the assumption that they are
    /// its own when socket activation is in effect; that is the protocol's contract.
    ///
    /// Caveats: the once-per-process guard covers this crate only. Another library in the same
    /// process that also adopts `LISTEN_FDS` (for example `listenfd`) would own the same
    /// descriptors, and one of the two would close a descriptor it does not own: use one
    /// adopter per process. A process that `exec`s itself keeps its pid, so a program that
    /// re-executes itself with the environment unchanged must not call this again after the
    /// descriptors were closed.
    ///
    /// # Errors
    ///
    /// [`ActivationError::InvalidVariable`] for a malformed variable or a name count that does
    /// not match `LISTEN_FDS`, [`ActivationError::BadDescriptor`] /
    /// [`ActivationError::NotASocket`] for a descriptor that is not an open socket (no
    /// descriptor is taken then), and [`ActivationError::AlreadyTaken`] as above.
    pub fn from_env() -> Result<Option<SocketActivation>, ActivationError> {
        Self::adopt(&SYSTEMD, std::process::id(), "socket-activated")
    }

    /// Takes ownership of the sockets a previous generation of this server handed to this
    /// process when it started it for a zero-downtime upgrade ([`Handoff`](crate::Handoff)),
    /// if any: the same protocol as [`from_env`](Self::from_env) under the variables
    /// `PORTCULLIS_LISTEN_PARENT`, `PORTCULLIS_LISTEN_FDS` and `PORTCULLIS_LISTEN_FDNAMES`,
    /// addressed to a child of the process `PORTCULLIS_LISTEN_PARENT` names (so a grandchild
    /// that inherited the environment takes nothing).
    ///
    /// Both constructors share the once-per-process guard: the descriptors from 3 on are
    /// adopted once, by whichever protocol addresses this process.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env), naming the upgrade's variables.
    pub fn from_upgrade_env() -> Result<Option<SocketActivation>, ActivationError> {
        Self::adopt(&UPGRADE, std::os::unix::process::parent_id(), "handed-over")
    }

    fn adopt(
        vars: &Vars,
        addressee: u32,
        what: &'static str,
    ) -> Result<Option<SocketActivation>, ActivationError> {
        let names = parse_vars(
            vars,
            addressee,
            std::env::var_os(vars.pid).as_deref(),
            std::env::var_os(vars.fds).as_deref(),
            std::env::var_os(vars.names).as_deref(),
        )?;
        let Some(names) = names else {
            return Ok(None);
        };
        let fds = sys::adopt_listen_fds(names.len()).map_err(|e| match e {
            AdoptError::AlreadyTaken => ActivationError::AlreadyTaken,
            AdoptError::TooMany => ActivationError::InvalidVariable {
                name: vars.fds,
                value: names.len().to_string(),
                reason: "descriptor count too large",
            },
            AdoptError::Descriptor(fd, source) => ActivationError::BadDescriptor { fd, source },
            AdoptError::NotASocket(fd) => ActivationError::NotASocket { fd },
        })?;
        let inherited = names
            .into_iter()
            .zip(fds)
            .map(|(name, fd)| Inherited { name, fd })
            .collect::<Vec<_>>();
        tracing::info!(
            sockets = inherited.len(),
            names = ?inherited.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            "adopted {what} listeners"
        );
        Ok(Some(SocketActivation { inherited }))
    }

    /// Takes the sockets a process hands over on `channel` with
    /// [`Handoff::send`](crate::Handoff::send) (`SCM_RIGHTS` over a connected Unix stream:
    /// the transport for a process the sender did not start), and the note sent with them.
    /// Blocks until the message is in, under the socket's read timeout
    /// ([`set_read_timeout`](std::os::unix::net::UnixStream::set_read_timeout)).
    ///
    /// The sockets are this process's own from then on (close-on-exec), independent of the
    /// once-per-process guard of [`from_env`](Self::from_env).
    ///
    /// # Errors
    ///
    /// The OS error when the message cannot be received (a timeout included), and
    /// [`io::ErrorKind::InvalidData`] for one that is not a hand-off message (another
    /// protocol, names that do not match the descriptors, a descriptor that is not a socket).
    pub fn receive(channel: &std::os::unix::net::UnixStream) -> io::Result<(Self, String)> {
        let (sockets, note) = crate::handoff::receive(channel)?;
        let inherited = sockets
            .into_iter()
            .map(|(name, fd)| Inherited { name, fd })
            .collect::<Vec<_>>();
        tracing::info!(
            sockets = inherited.len(),
            names = ?inherited.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            "adopted handed-over listeners"
        );
        Ok((SocketActivation { inherited }, note))
    }

    /// Takes the first socket named `name` as it is, whatever kind of socket it is (the
    /// upgrade's readiness channel is a connected Unix stream, not a listener).
    pub fn take_socket(&mut self, name: &str) -> Option<OwnedFd> {
        let at = self.inherited.iter().position(|i| i.name == name)?;
        Some(self.inherited.remove(at).fd)
    }

    /// Names of the sockets not yet taken, in descriptor order (a name repeats when several
    /// sockets share it).
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.inherited.iter().map(|i| i.name.as_str())
    }

    /// Whether every socket has been taken.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inherited.is_empty()
    }

    /// Takes every socket named `name` as a [`Listener`], in descriptor order. Returns an empty
    /// `Vec` when there is none.
    ///
    /// # Errors
    ///
    /// A [`BindError`] naming the descriptor when one of them is not a listening TCP or Unix
    /// stream socket ([`UnsupportedSocket`](crate::BindErrorKind::UnsupportedSocket)), or it
    /// cannot be registered with the tokio runtime (including when no runtime is running).
    /// All sockets of that name are taken out either way; on error they are closed.
    pub fn take(
        &mut self,
        name: &str,
        config: &ListenerConfig,
    ) -> Result<Vec<Listener>, BindError> {
        let (matching, rest) = std::mem::take(&mut self.inherited)
            .into_iter()
            .partition(|i| i.name == name);
        self.inherited = rest;
        convert_all(matching, config)
    }

    /// Takes every remaining socket as a [`Listener`], in descriptor order.
    ///
    /// # Errors
    ///
    /// As [`take`](Self::take).
    pub fn take_all(&mut self, config: &ListenerConfig) -> Result<Vec<Listener>, BindError> {
        convert_all(std::mem::take(&mut self.inherited), config)
    }
}

fn convert_all(
    inherited: Vec<Inherited>,
    config: &ListenerConfig,
) -> Result<Vec<Listener>, BindError> {
    inherited
        .into_iter()
        .map(|Inherited { name, fd }| to_listener(fd, name, config))
        .collect()
}

fn to_listener(fd: OwnedFd, name: String, config: &ListenerConfig) -> Result<Listener, BindError> {
    let target = Target::Fd {
        fd: fd.as_raw_fd(),
        name,
    };
    let unsupported = |detail| {
        BindError::other(
            target.clone(),
            Step::Adopt,
            BindErrorKind::UnsupportedSocket,
            detail,
        )
    };
    let sock = SockRef::from(&fd);
    let ty = sock
        .r#type()
        .map_err(|e| BindError::io(target.clone(), Step::Adopt, e))?;
    if ty != Type::STREAM {
        return Err(unsupported("not a stream socket"));
    }
    let listening =
        sockopt::is_listening(&fd).map_err(|e| BindError::io(target.clone(), Step::Adopt, e))?;
    if !listening {
        return Err(unsupported("not a listening socket"));
    }
    let local = sock
        .local_addr()
        .map_err(|e| BindError::io(target.clone(), Step::Adopt, e))?;
    match local.domain() {
        Domain::IPV4 | Domain::IPV6 => {
            config.adopt_tcp(std::net::TcpListener::from(fd), target.clone())
        }
        Domain::UNIX => {
            config.adopt_unix(std::os::unix::net::UnixListener::from(fd), target.clone())
        }
        _ => Err(unsupported("not an IPv4, IPv6 or Unix socket")),
    }
}

impl ListenerConfig {
    /// The socket-activated listeners named `name` when `activation` has any, otherwise
    /// listeners freshly bound on `addr` with [`bind`](Self::bind).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use portcullis_listen::{ListenerConfig, SocketActivation};
    ///
    /// let mut activation = SocketActivation::from_env()?;
    /// let config = ListenerConfig::default();
    /// let listeners = config.bind_or_activated(activation.as_mut(), "web", "127.0.0.1:8080".parse()?)?;
    /// # let _ = listeners; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`SocketActivation::take`] or [`bind`](Self::bind).
    pub fn bind_or_activated(
        &self,
        activation: Option<&mut SocketActivation>,
        name: &str,
        addr: SocketAddr,
    ) -> Result<Vec<Listener>, BindError> {
        if let Some(activation) = activation {
            let listeners = activation.take(name, self)?;
            if !listeners.is_empty() {
                return Ok(listeners);
            }
        }
        self.bind(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Protocol, Socket};

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn upgrade_variables_are_addressed_to_the_parent_and_named_in_errors() {
        assert_eq!(
            parse_vars(&UPGRADE, 7, os("7"), os("2"), os("listener-0:admin")).expect("valid"),
            Some(vec!["listener-0".to_owned(), "admin".to_owned()])
        );
        // A grandchild that inherited the variables: its parent is not the one named.
        assert!(matches!(
            parse_vars(&UPGRADE, 8, os("7"), os("2"), os("listener-0:admin")),
            Ok(None)
        ));
        let err = parse_vars(&UPGRADE, 7, os("7"), os("x"), None).expect_err("not a count");
        assert!(err.to_string().contains("PORTCULLIS_LISTEN_FDS"), "{err}");
    }

    #[test]
    fn absent_environment_is_none() {
        assert!(matches!(parse_env(42, None, None, None), Ok(None)));
        assert!(matches!(parse_env(42, os("42"), None, None), Ok(None)));
        assert!(matches!(parse_env(42, None, os("1"), None), Ok(None)));
    }

    #[test]
    fn wrong_pid_is_none_even_with_garbage() {
        assert!(matches!(parse_env(42, os("43"), os("2"), None), Ok(None)));
        assert!(matches!(
            parse_env(42, os("43"), os("junk"), os("a:b:c")),
            Ok(None)
        ));
    }

    #[test]
    fn zero_fds_is_none() {
        assert!(matches!(parse_env(42, os("42"), os("0"), None), Ok(None)));
    }

    #[test]
    fn missing_names_are_unknown() -> Result<(), ActivationError> {
        assert_eq!(
            parse_env(42, os("42"), os("2"), None)?,
            Some(vec!["unknown".to_owned(), "unknown".to_owned()])
        );
        assert_eq!(
            parse_env(42, os("42"), os("3"), os("web::admin"))?,
            Some(vec![
                "web".to_owned(),
                "unknown".to_owned(),
                "admin".to_owned()
            ])
        );
        Ok(())
    }

    #[test]
    fn names_in_order() -> Result<(), ActivationError> {
        assert_eq!(
            parse_env(42, os("42"), os("2"), os("web:web"))?,
            Some(vec!["web".to_owned(), "web".to_owned()])
        );
        Ok(())
    }

    #[test]
    fn name_count_mismatch_is_an_error() {
        for names in ["web", "a:b:c"] {
            let err = parse_env(42, os("42"), os("2"), os(names)).expect_err(names);
            assert!(
                matches!(
                    err,
                    ActivationError::InvalidVariable {
                        name: "LISTEN_FDNAMES",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_numbers_are_errors() {
        let err = parse_env(42, os("x"), os("1"), None).expect_err("pid");
        assert!(matches!(
            err,
            ActivationError::InvalidVariable {
                name: "LISTEN_PID",
                ..
            }
        ));
        let err = parse_env(42, os("42"), os("-1"), None).expect_err("fds");
        assert!(matches!(
            err,
            ActivationError::InvalidVariable {
                name: "LISTEN_FDS",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "socket activation: invalid LISTEN_FDS=\"-1\": expected a descriptor count"
        );
        let huge = usize::MAX.to_string();
        let err = parse_env(42, os("42"), os(&huge), None).expect_err("huge");
        assert!(matches!(
            err,
            ActivationError::InvalidVariable {
                name: "LISTEN_FDS",
                ..
            }
        ));
    }

    fn adopt(fd: OwnedFd) -> Result<Listener, BindError> {
        to_listener(fd, "web".to_owned(), &ListenerConfig::default())
    }

    #[tokio::test]
    async fn adopts_listening_tcp_and_unix_sockets() -> io::Result<()> {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        let listener = adopt(OwnedFd::from(tcp)).map_err(io::Error::from)?;
        assert_eq!(listener.local_addr().as_inet(), Some(addr));

        let path =
            std::env::temp_dir().join(format!("portcullis-listen-act-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path)?;
        let listener = adopt(OwnedFd::from(unix)).map_err(io::Error::from)?;
        assert_eq!(listener.local_addr().as_unix_path(), Some(path.as_path()));
        drop(listener);
        // The service manager owns activated socket files: not removed on drop.
        assert!(path.exists());
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[tokio::test]
    async fn rejects_sockets_that_are_not_listening_streams() -> io::Result<()> {
        let unbound = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        let fd = OwnedFd::from(unbound);
        let raw = fd.as_raw_fd();
        let err = adopt(fd).expect_err("not listening");
        assert_eq!(err.kind(), BindErrorKind::UnsupportedSocket);
        assert_eq!(err.fd(), Some(raw));
        assert_eq!(
            err.to_string(),
            format!("cannot adopt inherited fd {raw} (name \"web\"): not a listening socket")
        );

        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let err = adopt(OwnedFd::from(udp)).expect_err("datagram");
        assert_eq!(err.kind(), BindErrorKind::UnsupportedSocket);
        assert!(err.to_string().ends_with("not a stream socket"), "{err}");
        Ok(())
    }
}
