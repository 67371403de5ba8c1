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
//!
//! A process the old one did not start (a new container sharing a volume with it) gets the
//! same sockets over a connected Unix stream instead: [`Handoff::send`] passes them in one
//! message (`SCM_RIGHTS`, through rustix) with their names and a note of the caller's, and
//! [`SocketActivation::receive`](crate::SocketActivation::receive) adopts them.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::activation::UPGRADE;
use crate::sys::{self, LISTEN_FDS_START};

/// The first line of a hand-off message: its protocol and version.
const MAGIC: &str = "portcullis-handoff 1";
/// The most descriptors one message carries (Linux's `SCM_MAX_FD`).
pub const MAX_SOCKETS: usize = 253;
/// The most bytes a hand-off message has (names and note).
const MAX_MESSAGE: usize = 64 * 1024;

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

    /// The sockets with their names, in descriptor order.
    pub fn sockets(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> + '_ {
        self.sockets
            .iter()
            .map(|(name, fd)| (name.as_str(), fd.as_fd()))
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

impl Handoff {
    /// Sends the sockets over `channel`, a connected Unix stream, to a process that takes
    /// them with [`SocketActivation::receive`](crate::SocketActivation::receive): one
    /// message holding every descriptor (`SCM_RIGHTS`), their names and `note` (free text
    /// for the caller's own protocol, without NUL bytes). The receiver gets its own
    /// descriptors of the very same sockets; this hand-off keeps its own.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for more than [`MAX_SOCKETS`] sockets, a note with a
    /// NUL byte or a message over 64 KiB; the OS error when the message cannot be sent.
    pub async fn send(&self, channel: &tokio::net::UnixStream, note: &str) -> io::Result<()> {
        let message = self.message(note)?;
        let fds: Vec<BorrowedFd<'_>> = self.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut sent = loop {
            channel.writable().await?;
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("handoff: the descriptors do not fit"));
            }
            let attempt = channel.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    channel,
                    &[io::IoSlice::new(&message)],
                    &mut control,
                    SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
                )
                .map_err(io::Error::from)
            });
            match attempt {
                Ok(sent) => break sent,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(handoff_error("cannot send the sockets", &error)),
            }
        };
        // The descriptors went with the first byte; the rest of the text follows plainly.
        while sent < message.len() {
            channel.writable().await?;
            match channel.try_write(&message[sent..]) {
                Ok(n) => sent += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(handoff_error("cannot send the sockets", &error)),
            }
        }
        Ok(())
    }

    /// The text of a hand-off message: the magic line, the names, the note, a NUL.
    fn message(&self, note: &str) -> io::Result<Vec<u8>> {
        if self.sockets.len() > MAX_SOCKETS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "handoff: {} sockets, more than the {MAX_SOCKETS} one message carries",
                    self.sockets.len()
                ),
            ));
        }
        if note.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "handoff: the note holds a NUL byte",
            ));
        }
        let names = self.names().collect::<Vec<_>>().join(":");
        let message = format!("{MAGIC}\n{names}\n{note}\0").into_bytes();
        if message.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "handoff: the message is {} bytes, over {MAX_MESSAGE}",
                    message.len()
                ),
            ));
        }
        Ok(message)
    }
}

fn handoff_error(what: &str, error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("handoff: {what}: {error}"))
}

/// A receive error; the read timeout expiring is named as such.
fn receive_error(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::WouldBlock {
        return io::Error::new(
            io::ErrorKind::TimedOut,
            "handoff: the sockets did not arrive within the read timeout",
        );
    }
    handoff_error("cannot receive the sockets", &error)
}

fn invalid_message(what: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("handoff: not a hand-off message: {what}"),
    )
}

/// Receives one hand-off message on `channel` (blocking, under the socket's read timeout):
/// the named sockets, each checked to be a socket and close-on-exec, and the note.
pub(crate) fn receive(
    channel: &std::os::unix::net::UnixStream,
) -> io::Result<(Vec<(String, OwnedFd)>, String)> {
    let mut text = vec![0u8; MAX_MESSAGE];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            channel,
            &mut [io::IoSliceMut::new(&mut text)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(received) => break received,
            // A signal during the wait (a read timeout makes even SA_RESTART ones count).
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(receive_error(errno.into())),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(invalid_message("more descriptors than one message carries"));
    }
    let mut len = received.bytes;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "handoff: the sender closed the channel without sending the sockets",
        ));
    }
    // The text may arrive in pieces; the descriptors came with its first byte.
    while !text[..len].contains(&0) {
        if len == text.len() {
            return Err(invalid_message("no end within 64 KiB"));
        }
        let n = match io::Read::read(&mut &*channel, &mut text[len..]) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(receive_error(error)),
        };
        if n == 0 {
            return Err(invalid_message("the channel closed mid-message"));
        }
        len += n;
    }
    let end = text[..len].iter().position(|&b| b == 0).unwrap_or(len);
    if end + 1 != len {
        return Err(invalid_message("bytes after its end"));
    }
    let text = std::str::from_utf8(&text[..end]).map_err(|_| invalid_message("not UTF-8"))?;
    let mut parts = text.splitn(3, '\n');
    if parts.next() != Some(MAGIC) {
        return Err(invalid_message(format!("it does not begin {MAGIC:?}")));
    }
    let names: Vec<String> = match parts.next() {
        Some("") => Vec::new(),
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => return Err(invalid_message("no names")),
    };
    let note = parts.next().unwrap_or_default().to_owned();
    if names.len() != fds.len() {
        return Err(invalid_message(format!(
            "{} names for {} descriptors",
            names.len(),
            fds.len()
        )));
    }
    for fd in &fds {
        if !sys::is_socket(fd.as_fd())? {
            return Err(invalid_message(format!(
                "descriptor {} is not a socket",
                fd.as_raw_fd()
            )));
        }
    }
    Ok((names.into_iter().zip(fds).collect(), note))
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
        // A descriptor this process holds without close-on-exec (as one it inherited would
        // be): the child must not get it.
        let leaky = std::net::TcpListener::bind("127.0.0.1:0")?;
        socket2::SockRef::from(&leaky).set_cloexec(false)?;
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg(format!(
            "readlink /proc/$$/fd/3 /proc/$$/fd/4; \
             test -e /proc/$$/fd/5 || echo 'no fd 5'; \
             test -e /proc/$$/fd/{leaky} || echo 'no leaked fd'; \
             echo \"$PORTCULLIS_LISTEN_FDS $PORTCULLIS_LISTEN_FDNAMES $PORTCULLIS_LISTEN_PARENT ${{LISTEN_PID:-none}}\"",
            leaky = leaky.as_raw_fd()
        ));
        command.env("LISTEN_PID", "1");
        let prepared = handoff.prepare(&mut command)?;
        let output = command.output()?;
        drop(prepared);
        assert!(output.status.success(), "{output:?}");
        let expected = format!(
            "{}\n{}\nno fd 5\nno leaked fd\n2 listener-0:admin {} none\n",
            socket_link(web.as_raw_fd()),
            socket_link(admin.as_raw_fd()),
            std::process::id()
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
        Ok(())
    }

    #[tokio::test]
    async fn sockets_pass_over_a_unix_stream_by_name_with_the_note() -> io::Result<()> {
        let web = std::net::TcpListener::bind("127.0.0.1:0")?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut handoff = Handoff::new();
        handoff.socket("listener-0", &web)?;
        handoff.socket("admin", &admin)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = tokio::net::UnixStream::from_std(ours)?;
        handoff.send(&ours, "generation=2\n").await?;
        let receiver = std::thread::spawn(move || crate::SocketActivation::receive(&theirs));
        let (mut sockets, note) = receiver.join().expect("receiver")?;
        assert_eq!(note, "generation=2\n");
        assert_eq!(sockets.names().collect::<Vec<_>>(), ["listener-0", "admin"]);
        let web_fd = sockets.take_socket("listener-0").expect("listener-0");
        let admin_fd = sockets.take_socket("admin").expect("admin");
        // The very same sockets: a connection queued in the sender's is accepted here.
        assert_eq!(
            socket_link(web_fd.as_raw_fd()),
            socket_link(web.as_raw_fd())
        );
        assert_eq!(
            socket_link(admin_fd.as_raw_fd()),
            socket_link(admin.as_raw_fd())
        );
        let client = std::net::TcpStream::connect(web.local_addr()?)?;
        let (accepted, from) = std::net::TcpListener::from(web_fd).accept()?;
        assert_eq!(from, client.local_addr()?);
        drop(accepted);
        Ok(())
    }

    #[test]
    fn anything_but_a_handoff_message_is_refused() -> io::Result<()> {
        use std::io::Write;
        for (sent, expected) in [
            (&b"GET / HTTP/1.1\r\n\0"[..], "does not begin"),
            (
                &b"portcullis-handoff 1\nlistener-0\n\0"[..],
                "1 names for 0 descriptors",
            ),
            (
                &b"portcullis-handoff 1\n\n\0extra"[..],
                "bytes after its end",
            ),
        ] {
            let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            ours.write_all(sent)?;
            let err = crate::SocketActivation::receive(&theirs).expect_err(expected);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        drop(ours);
        let err = crate::SocketActivation::receive(&theirs).expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
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
