//! Safe readers for the socket options that socket2 has no getter for.
//!
//! Everything else can be read with socket2: `socket2::SockRef::from(&listener)` works for a
//! [`Listener`](crate::Listener) and an accepted [`Stream`](crate::Stream), since both
//! implement [`AsFd`].

use std::io;
use std::os::fd::AsFd;
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::time::Duration;

#[cfg(any(target_os = "linux", target_os = "android"))]
use crate::sys;

/// Reads `TCP_FASTOPEN` of a listening socket: the Fast Open queue length, 0 when off.
///
/// # Errors
///
/// Fails when `socket` is not a TCP socket, and with [`io::ErrorKind::Unsupported`] on
/// platforms other than Linux and Android.
pub fn tcp_fastopen(socket: &impl AsFd) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let value = sys::get_int_opt(socket.as_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN)?;
        Ok(u32::try_from(value).unwrap_or(0))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = socket.as_fd();
        Err(unsupported("TCP_FASTOPEN"))
    }
}

/// Reads `TCP_DEFER_ACCEPT` of a listening socket, in seconds; 0 when off.
///
/// The kernel stores the value as a number of SYN-ACK retransmissions and converts it back,
/// so the result may be larger than the value that was set.
///
/// # Errors
///
/// Fails when `socket` is not a TCP socket, and with [`io::ErrorKind::Unsupported`] on
/// platforms other than Linux and Android.
pub fn tcp_defer_accept(socket: &impl AsFd) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let value = sys::get_int_opt(socket.as_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)?;
        Ok(u32::try_from(value).unwrap_or(0))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = socket.as_fd();
        Err(unsupported("TCP_DEFER_ACCEPT"))
    }
}

/// Whether the socket is listening (`SO_ACCEPTCONN`).
pub(crate) fn is_listening(socket: &impl AsFd) -> io::Result<bool> {
    crate::sys::get_int_opt(socket.as_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map(|v| v != 0)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn set_tcp_fastopen(socket: &impl AsFd, queue_len: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(queue_len).unwrap_or(libc::c_int::MAX);
    sys::set_int_opt(socket.as_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN, value)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn set_tcp_defer_accept(socket: &impl AsFd, timeout: Duration) -> io::Result<()> {
    // Whole seconds, rounded up so a sub-second timeout does not turn the option off.
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    sys::set_int_opt(
        socket.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        value,
    )
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unsupported(option: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{option} is only supported on Linux"),
    )
}
