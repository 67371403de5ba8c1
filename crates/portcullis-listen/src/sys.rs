//! The one module of this crate that calls `libc` directly.
//!
//! Everything socket2 can do safely goes through socket2; this module covers what it cannot:
//! integer socket options without a socket2 setter (`TCP_FASTOPEN`, `TCP_DEFER_ACCEPT`,
//! `SO_ACCEPTCONN` where socket2 has no getter), adopting the descriptors systemd passes to a
//! socket-activated process, and placing descriptors for a child at an upgrade. Every `unsafe` block carries a `// SAFETY:` comment; `lib.rs`
//! declares the module with `#[allow(unsafe_code)]`, the only exception to the workspace's
//! `unsafe_code = "deny"`.

use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_int;

/// Sets an integer socket option with `setsockopt(2)`.
pub(crate) fn set_int_opt(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    let len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open descriptor borrowed for the whole call. The option value points
    // at `value`, an initialised `c_int` on our stack that outlives the call, and `len` is
    // exactly its size, so the kernel reads only memory we own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads an integer socket option with `getsockopt(2)`.
pub(crate) fn get_int_opt(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open descriptor borrowed for the whole call. The kernel writes at most
    // `len` bytes (the size of `value`) into `value` and updates `len`; both live on our stack
    // for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Whether the descriptor number `fd` refers to an open socket (`fstat(2)` and `S_ISSOCK`).
///
/// `fd` need not be open: a closed descriptor yields `EBADF`.
fn is_socket_raw(fd: RawFd) -> io::Result<bool> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fstat` writes a `struct stat` into `st`, which is exactly that size. It only
    // inspects the descriptor and never changes its ownership or state; a descriptor that is
    // not open makes it fail with EBADF.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fstat` returned 0, so it fully initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// One past the highest descriptor number this process may hold (the soft
/// `RLIMIT_NOFILE`, at most `RawFd::MAX`).
fn descriptor_limit() -> RawFd {
    let mut limit = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: getrlimit writes one `struct rlimit` into `limit`, which is exactly that size.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) } != 0 {
        return 1024;
    }
    // SAFETY: getrlimit returned 0, so it initialised `limit`.
    let soft = unsafe { limit.assume_init() }.rlim_cur;
    RawFd::try_from(soft).unwrap_or(RawFd::MAX)
}

/// Whether the open descriptor `fd` is a socket.
pub(crate) fn is_socket(fd: BorrowedFd<'_>) -> io::Result<bool> {
    is_socket_raw(fd.as_raw_fd())
}

/// Sets `FD_CLOEXEC` on the descriptor number `fd`.
fn set_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFD only changes the descriptor flags of `fd`; no memory is passed.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The first descriptor of the systemd socket-activation protocol (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FDS_START: RawFd = 3;

/// Set once the inherited descriptors have been adopted: nothing in this crate ever takes
/// ownership of them twice.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Why [`adopt_listen_fds`] failed.
#[derive(Debug)]
pub(crate) enum AdoptError {
    /// An earlier call already adopted the descriptors.
    AlreadyTaken,
    /// The count does not fit the descriptor range.
    TooMany,
    /// `fstat` or `fcntl` failed on this descriptor.
    Descriptor(RawFd, io::Error),
    /// This descriptor is open but not a socket.
    NotASocket(RawFd),
}

/// Takes ownership of the descriptors `3 .. 3 + count` passed by a socket-activating service
/// manager, after checking each is an open socket, and marks them close-on-exec.
///
/// The caller must have checked that `LISTEN_PID` names this process. At most one call per
/// process gets past the guard; later calls return [`AdoptError::AlreadyTaken`]. Validation
/// happens before any descriptor is adopted, so on error no descriptor has been wrapped.
pub(crate) fn adopt_listen_fds(count: usize) -> Result<Vec<OwnedFd>, AdoptError> {
    let count_fd = RawFd::try_from(count).map_err(|_| AdoptError::TooMany)?;
    let end = LISTEN_FDS_START
        .checked_add(count_fd)
        .ok_or(AdoptError::TooMany)?;
    if LISTEN_FDS_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(AdoptError::AlreadyTaken);
    }
    for fd in LISTEN_FDS_START..end {
        match is_socket_raw(fd) {
            Ok(true) => {}
            Ok(false) => return Err(AdoptError::NotASocket(fd)),
            Err(e) => return Err(AdoptError::Descriptor(fd, e)),
        }
        set_cloexec_raw(fd).map_err(|e| AdoptError::Descriptor(fd, e))?;
    }
    let mut fds = Vec::with_capacity(count);
    for fd in LISTEN_FDS_START..end {
        // SAFETY: the service manager passed descriptors 3..3+count to this process (the caller
        // checked LISTEN_PID), `fstat` just confirmed each one is open and a socket, and the
        // process-wide LISTEN_FDS_TAKEN flag guarantees this loop runs at most once per
        // process, so each descriptor gets exactly one owner and nothing in this crate closes
        // it behind that owner's back.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}

/// A close-on-exec duplicate of `fd` numbered `min` or above (`F_DUPFD_CLOEXEC`).
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the borrow; F_DUPFD_CLOEXEC
    // creates a new descriptor and touches no memory.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Makes `command`'s child start with `sources[i]` as descriptor `LISTEN_FDS_START + i`
/// (without close-on-exec), every other inherited descriptor of this process being
/// close-on-exec already (std opens everything so). Each source must be numbered at or above
/// `LISTEN_FDS_START + sources.len()`, so that placing one never overwrites another, and must
/// stay open until the command is spawned.
pub(crate) fn place_fds(command: &mut std::process::Command, sources: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // The first descriptor above the child's sockets, and the end of the range (read here:
    // the child may only make async-signal-safe calls).
    let above = LISTEN_FDS_START + RawFd::try_from(sources.len()).unwrap_or(RawFd::MAX - 3);
    let end = descriptor_limit();
    let closure = move || {
        for (target, source) in (LISTEN_FDS_START..).zip(&sources) {
            // SAFETY: runs in the forked child before exec, and calls only dup2, which is
            // async-signal-safe; the sources are open (the caller keeps them until the
            // spawn returns) and above every target.
            if unsafe { libc::dup2(*source, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Whatever else this process holds without close-on-exec (a descriptor it inherited
        // itself) must not reach the child: mark every descriptor above its sockets
        // close-on-exec. Marking, not closing: the standard library's own exec-error pipe
        // is among them and must stay open until the exec.
        #[cfg(target_os = "linux")]
        // SAFETY: a raw system call with three integer arguments (passed as the `long`s the
        // variadic `syscall` reads) and no memory; it only changes descriptor flags, and is
        // async-signal-safe.
        let marked = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_long::from(above),
                libc::c_long::from(libc::c_uint::MAX),
                libc::c_long::from(libc::CLOSE_RANGE_CLOEXEC),
            )
        } == 0;
        #[cfg(not(target_os = "linux"))]
        let marked = false;
        if !marked {
            // No close_range (a kernel before 5.11, or a seccomp filter refusing it): one
            // descriptor at a time, up to the limit.
            for fd in above..end {
                // SAFETY: F_SETFD on a descriptor number that may be closed (EBADF, ignored);
                // no memory is passed; fcntl is async-signal-safe.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
        Ok(())
    };
    // SAFETY: the closure allocates nothing and calls only dup2 and close_range (see
    // above), as pre_exec requires of code between fork and exec.
    unsafe {
        command.pre_exec(closure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn int_opt_round_trip() -> io::Result<()> {
        let sock = std::net::TcpListener::bind("127.0.0.1:0")?;
        set_int_opt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        assert_ne!(
            get_int_opt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE)?,
            0
        );
        set_int_opt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0)?;
        assert_eq!(
            get_int_opt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE)?,
            0
        );
        Ok(())
    }

    #[test]
    fn set_int_opt_reports_errors() -> io::Result<()> {
        let file = std::fs::File::open("/dev/null")?;
        let err = set_int_opt(file.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
            .expect_err("setsockopt on a file must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
        Ok(())
    }

    #[test]
    fn is_socket_distinguishes_files_and_sockets() -> io::Result<()> {
        let file = std::fs::File::open("/dev/null")?;
        assert!(!is_socket_raw(file.as_raw_fd())?);
        let sock = std::net::TcpListener::bind("127.0.0.1:0")?;
        assert!(is_socket_raw(sock.as_raw_fd())?);
        assert!(is_socket_raw(-1).is_err());
        Ok(())
    }

    #[test]
    fn cloexec_is_set() -> io::Result<()> {
        let sock = std::net::TcpListener::bind("127.0.0.1:0")?;
        set_cloexec_raw(sock.as_raw_fd())?;
        #[cfg(target_os = "linux")]
        {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", sock.as_raw_fd()))?;
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .map(|f| u32::from_str_radix(f.trim(), 8))
                .transpose()
                .map_err(io::Error::other)?
                .unwrap_or(0);
            assert_ne!(flags & libc::O_CLOEXEC as u32, 0);
        }
        Ok(())
    }
}
