//! The systemd notification protocol (`sd_notify`): tell the service manager that the server
//! is ready, that it is stopping, how the drain goes, and that it is still alive.
//!
//! With `Type=notify`, systemd considers the service started only once it receives `READY=1`,
//! and with `WatchdogSec=` it restarts the service when the `WATCHDOG=1` pings stop. The
//! messages are datagrams to the Unix socket named by `NOTIFY_SOCKET`; nothing is sent when
//! that variable is absent, so the same binary runs unchanged outside systemd.

use std::fmt;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable naming the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The environment variable with the watchdog timeout, in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The environment variable naming the process the watchdog is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Sends notifications to the service manager.
///
/// ```no_run
/// use portcullis_shutdown::systemd::Notifier;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// if let Some(notifier) = Notifier::from_env()? {
///     notifier.ready()?;                        // every listener accepts
///     notifier.status("draining: 12 connections open")?;
///     notifier.stopping()?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Abstract(Vec<u8>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Path(path) => write!(f, "{}", path.display()),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// A notification socket address that cannot be used.
#[derive(Debug)]
pub struct NotifyError {
    address: String,
    source: io::Error,
}

impl NotifyError {
    /// The address as given (the value of `NOTIFY_SOCKET`).
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot use systemd notification socket {:?}: {}",
            self.address, self.source
        )
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `None` when the variable is absent or empty (not
    /// started by systemd with `Type=notify`).
    ///
    /// The environment is only read, never changed (changing it is unsound in threaded
    /// programs), so child processes inherit the variable: they should not notify.
    ///
    /// # Errors
    ///
    /// [`NotifyError`] naming the address when it cannot be used (an unsupported address
    /// family such as `vsock:`, or no datagram socket can be created).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(value) if !value.is_empty() => {
                let address = value.to_string_lossy().into_owned();
                Notifier::connect(&address).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A notifier for an explicit address, in `NOTIFY_SOCKET` syntax: a socket path, or
    /// `@name` for a Linux abstract socket.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    pub fn connect(address: &str) -> Result<Notifier, NotifyError> {
        let error = |source| NotifyError {
            address: address.to_owned(),
            source,
        };
        let target = if let Some(name) = address.strip_prefix('@') {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                Target::Abstract(name.as_bytes().to_vec())
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                let _ = name;
                return Err(error(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets exist only on Linux",
                )));
            }
        } else if address.starts_with('/') {
            Target::Path(PathBuf::from(address))
        } else {
            return Err(error(io::Error::new(
                io::ErrorKind::Unsupported,
                "only absolute socket paths and @abstract names are supported",
            )));
        };
        let socket = UnixDatagram::unbound().map_err(error)?;
        // Never block the caller (often a runtime thread) on a full service-manager queue: a
        // notification that cannot be sent at once fails with `WouldBlock` instead.
        socket.set_nonblocking(true).map_err(error)?;
        Ok(Notifier { socket, target })
    }

    /// `READY=1`: start-up is complete (every listener accepts).
    ///
    /// # Errors
    ///
    /// The error from sending the datagram.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1\n")
    }

    /// `STOPPING=1`: shutdown has begun.
    ///
    /// # Errors
    ///
    /// The error from sending the datagram.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\n")
    }

    /// `STATUS=…`: a one-line status shown by `systemctl status`. Line breaks in `text` are
    /// replaced by spaces, so it stays one line and cannot inject other assignments.
    ///
    /// # Errors
    ///
    /// The error from sending the datagram.
    pub fn status(&self, text: &str) -> io::Result<()> {
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}\n"))
    }

    /// `WATCHDOG=1`: the process is alive; send it more often than [`watchdog_interval`]
    /// says.
    ///
    /// # Errors
    ///
    /// The error from sending the datagram.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1\n")
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) as one datagram.
    ///
    /// # Errors
    ///
    /// The error from sending the datagram (for example the service manager's socket is
    /// gone).
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sent = match &self.target {
            Target::Path(path) => self.socket.send_to(state.as_bytes(), path)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                self.socket.send_to_addr(state.as_bytes(), &address)?
            }
        };
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("notification to {} truncated", self.target),
            ));
        }
        tracing::trace!(target = %self.target, state = state.trim_end(), "systemd notification sent");
        Ok(())
    }
}

impl Notifier {
    /// Sends `state` with the descriptors `fds` attached (`SCM_RIGHTS`), as `FDSTORE=1`
    /// needs: systemd keeps them in the service's file-descriptor store
    /// (`FileDescriptorStoreMax=`) and passes them back at the next start, named by the
    /// state's `FDNAME=`, in `LISTEN_FDS`.
    ///
    /// Unlike [`send`](Self::send), it waits while the service manager's queue is full.
    ///
    /// # Errors
    ///
    /// The error from connecting to the socket or sending the datagram.
    pub fn send_with_fds(
        &self,
        state: &str,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        use std::mem::MaybeUninit;

        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        // A socket of its own, connected, so that rustix's plain sendmsg reaches the target.
        let socket = UnixDatagram::unbound()?;
        match &self.target {
            Target::Path(path) => socket.connect(path)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                socket.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)?;
            }
        }
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("the descriptors do not fit one message"));
        }
        let sent = rustix::net::sendmsg(
            &socket,
            &[io::IoSlice::new(state.as_bytes())],
            &mut control,
            // Blocking: a descriptor store missing a socket would bind afresh at restart.
            SendFlags::NOSIGNAL,
        )?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("notification to {} truncated", self.target),
            ));
        }
        tracing::trace!(target = %self.target, state = state.trim_end(), fds = fds.len(), "systemd notification sent");
        Ok(())
    }
}

/// How often to send `WATCHDOG=1`: half the timeout systemd announced in `WATCHDOG_USEC`, or
/// `None` when there is no watchdog for this process (`WATCHDOG_PID` names another process,
/// or the variables are absent or malformed).
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var(WATCHDOG_USEC).ok();
    let pid = std::env::var(WATCHDOG_PID).ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let for_this_process = match pid {
        None => true,
        Some(pid) => pid.trim().parse::<u32>().ok() == Some(own_pid),
    };
    if !for_this_process {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    let half = usec / 2;
    (half > 0).then(|| Duration::from_micros(half))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_socket(name: &str) -> (UnixDatagram, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("portcullis-notify-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind");
        (socket, path)
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_arrive_as_datagrams_on_a_path() {
        let (socket, path) = temp_socket("path");
        let notifier = Notifier::connect(path.to_str().expect("utf8")).expect("notifier");
        notifier.ready().expect("ready");
        assert_eq!(receive(&socket), "READY=1\n");
        notifier
            .status("draining\n3 open\rSTOPPING=1")
            .expect("status");
        assert_eq!(receive(&socket), "STATUS=draining 3 open STOPPING=1\n");
        notifier.stopping().expect("stopping");
        assert_eq!(receive(&socket), "STOPPING=1\n");
        notifier.watchdog().expect("watchdog");
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
        let _ = std::fs::remove_file(&path);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_names_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("portcullis-notify-test-{}", std::process::id());
        let address =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let socket = UnixDatagram::bind_addr(&address).expect("bind abstract");
        let notifier = Notifier::connect(&format!("@{name}")).expect("notifier");
        notifier.ready().expect("ready");
        assert_eq!(receive(&socket), "READY=1\n");
    }

    #[test]
    fn unusable_addresses_are_errors_that_name_them() {
        let error = Notifier::connect("vsock:2:1234").expect_err("vsock");
        assert_eq!(error.address(), "vsock:2:1234");
        assert!(error.to_string().contains("vsock:2:1234"), "{error}");
        let (_, path) = temp_socket("gone");
        let gone = path.with_file_name("missing.sock");
        let notifier = Notifier::connect(gone.to_str().expect("utf8")).expect("notifier");
        assert!(
            notifier.ready().is_err(),
            "sending to a missing socket fails"
        );
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 42),
            None
        );
        assert_eq!(watchdog_interval_from(Some("0"), None, 42), None);
        assert_eq!(
            watchdog_interval_from(Some("1"), None, 42),
            None,
            "never a zero interval"
        );
        assert_eq!(watchdog_interval_from(Some("soon"), None, 42), None);
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), 42),
            None
        );
    }
}
