//! Handing listening sockets to a new process for a zero-downtime upgrade.
//!
//! The old process lists the sockets it serves under stable names ([`Handoff::socket`]) and
//! prepares the command of the new one ([`Handoff::prepare`]): the sockets are its
//! descriptors from 3 on, named in `PORTCULLIS_LISTEN_FDNAMES` and addressed to it by
//! `PORTCULLIS_LISTEN_PARENT` (the old process's id: the new process checks that it is its
//! parent's child). The new process adopts them with
//! [`SocketActivation::from_upgrade_env`](crate::SocketActivation::from_upgrade_env) and takes
//! each by name, exactly as systemd's sockets are taken.
//!
//! The sockets are moved, never closed and bound again: both processes hold the same socket
//! until the old one exits, so a connection queued in it (in each `SO_REUSEPORT` acceptor's
//! own queue too) is accepted by whichever process accepts next, and none is reset.
//!
//! Names are the caller's: portcullis-server names its listeners by their place in the
//! builder (`listener-0`, `listener-1`, ...), not by address, so two listeners on port 0 never
//! collide.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::activation::UPGRADE;
use crate::sys::{self, LISTEN_FDS_START};

/// The sockets a process hands to the next generation of itself, by name.
#[derive(Default)]
pub struct Handoff {
    sockets: Vec<(String, OwnedFd)>,
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("names", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

impl Handoff {
    /// An empty hand-off.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `socket` under `name`; the hand-off keeps a duplicate of it (close-on-exec), so
    /// the caller keeps serving its own.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a name that is empty or holds a `:` (the names'
    /// separator) or a control character, and the OS error when the descriptor cannot be
    /// duplicated.
    pub fn socket(&mut self, name: impl Into<String>, socket: impl AsFd) -> io::Result<()> {
        let name = name.into();
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "handoff: socket name {name:?} is empty or holds ':' or a control character"
                ),
            ));
        }
        let fd = socket.as_fd().try_clone_to_owned().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("handoff: cannot duplicate the socket {name:?}: {error}"),
            )
        })?;
        self.sockets.push((name, fd));
        Ok(())
    }

    /// Another hand-off of the same sockets (each duplicated again), for one attempt that
    /// adds sockets of its own.
    ///
    /// # Errors
    ///
    /// The OS error when a descriptor cannot be duplicated.
    pub fn try_clone(&self) -> io::Result<Self> {
        let sockets = self
            .sockets
            .iter()
            .map(|(name, fd)| Ok((name.clone(), fd.try_clone()?)))
            .collect::<io::Result<_>>()?;
        Ok(Self { sockets })
    }

    /// The names, in descriptor order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.sockets.iter().map(|(name, _)| name.as_str())
    }

    /// How many sockets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Prepares `command` to start with the sockets as its descriptors from 3 on and the
    /// variables that name them; systemd's `LISTEN_*` variables are removed from its
    /// environment (they are this process's, not the child's). Spawn the command before
    /// dropping the returned [`Prepared`]: it holds the descriptors the child is given.
    ///
    /// # Errors
    ///
    /// The OS error when a descriptor cannot be duplicated above the range the child's
    /// sockets take.
    pub fn prepare(&self, command: &mut std::process::Command) -> io::Result<Prepared> {
        let count = RawFd::try_from(self.sockets.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "handoff: too many sockets")
        })?;
        // Above every target, so that placing one never overwrites another.
        let floor = LISTEN_FDS_START + count;
        let sources = self
            .sockets
            .iter()
            .map(|(_, fd)| sys::dup_at_least(fd.as_fd(), floor))
            .collect::<io::Result<Vec<_>>>()?;
        sys::place_fds(command, sources.iter().map(AsRawFd::as_raw_fd).collect());
        let names = self.names().collect::<Vec<_>>().join(":");
        command
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env(UPGRADE.pid, std::process::id().to_string())
            .env(UPGRADE.fds, self.sockets.len().to_string())
            .env(UPGRADE.names, names);
        Ok(Prepared { _sources: sources })
    }
}

/// The descriptors a prepared command's child is given; keep it until the command is
/// spawned.
#[derive(Debug)]
pub struct Prepared {
    _sources: Vec<OwnedFd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_link(fd: RawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .expect("readlink")
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn the_child_gets_the_sockets_from_3_on_named_and_nothing_else() -> io::Result<()> {
        let web = std::net::TcpListener::bind("127.0.0.1:0")?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut handoff = Handoff::new();
        handoff.socket("listener-0", &web)?;
        handoff.socket("admin", &admin)?;
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg(
            "readlink /proc/$$/fd/3 /proc/$$/fd/4; \
             test -e /proc/$$/fd/5 || echo 'no fd 5'; \
             echo \"$PORTCULLIS_LISTEN_FDS $PORTCULLIS_LISTEN_FDNAMES $PORTCULLIS_LISTEN_PARENT ${LISTEN_PID:-none}\"",
        );
        command.env("LISTEN_PID", "1");
        let prepared = handoff.prepare(&mut command)?;
        let output = command.output()?;
        drop(prepared);
        assert!(output.status.success(), "{output:?}");
        let expected = format!(
            "{}\n{}\nno fd 5\n2 listener-0:admin {} none\n",
            socket_link(web.as_raw_fd()),
            socket_link(admin.as_raw_fd()),
            std::process::id()
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
        Ok(())
    }

    #[test]
    fn names_that_cannot_be_listed_are_refused() -> io::Result<()> {
        let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut handoff = Handoff::new();
        for name in ["", "a:b", "a\nb"] {
            let err = handoff.socket(name, &socket).expect_err(name);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        assert!(handoff.is_empty());
        Ok(())
    }
}
