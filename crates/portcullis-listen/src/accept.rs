//! The accept loop: error classification, backoff, the reserve descriptor and shedding, and
//! rate-limited logging. Generic over [`AcceptSource`] so tests can script errors.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::time::{Instant, Sleep};

use crate::{Addr, ListenerId};

/// First backoff after a resource error (Go's net/http uses the same).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Backoff cap.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most this many queued connections are accepted and closed per `EMFILE`/`ENFILE` episode,
/// so shedding cannot monopolise the task.
pub(crate) const SHED_MAX: usize = 64;
/// After this many consecutive immediately-retried errors in one poll, yield to the runtime.
const RETRY_BUDGET: usize = 128;
/// At most one log line per error kind per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Something that accepts connections: the tokio listeners, or a scripted fake in tests.
pub(crate) trait AcceptSource {
    /// An accepted connection.
    type Conn;

    /// Polls for the next connection, like `TcpListener::poll_accept`.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Conn, Addr)>>;

    /// Applies the per-connection socket options to an accepted connection.
    fn configure(&self, conn: &Self::Conn) -> io::Result<()>;

    /// Accepts one queued connection without registering for wake-ups and closes it at once.
    /// Returns `WouldBlock` when the queue is empty.
    fn shed_one(&mut self) -> io::Result<()>;
}

/// The kind of an accept error: the `kind` label of the error counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Emfile,
    Enfile,
    Enobufs,
    Enomem,
    ConnectionAborted,
    ConnectionReset,
    Protocol,
    Permission,
    Interrupted,
    WouldBlock,
    TimedOut,
    Unreachable,
    SocketOptions,
    Other,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; 14] = [
        ErrorKind::Emfile,
        ErrorKind::Enfile,
        ErrorKind::Enobufs,
        ErrorKind::Enomem,
        ErrorKind::ConnectionAborted,
        ErrorKind::ConnectionReset,
        ErrorKind::Protocol,
        ErrorKind::Permission,
        ErrorKind::Interrupted,
        ErrorKind::WouldBlock,
        ErrorKind::TimedOut,
        ErrorKind::Unreachable,
        ErrorKind::SocketOptions,
        ErrorKind::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Emfile => "emfile",
            ErrorKind::Enfile => "enfile",
            ErrorKind::Enobufs => "enobufs",
            ErrorKind::Enomem => "enomem",
            ErrorKind::ConnectionAborted => "connection_aborted",
            ErrorKind::ConnectionReset => "connection_reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Permission => "permission",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::WouldBlock => "would_block",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::SocketOptions => "socket_options",
            ErrorKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Classifies an error returned by `accept`.
    pub(crate) fn classify(e: &io::Error) -> Self {
        if let Some(errno) = e.raw_os_error() {
            return match errno {
                libc::EMFILE => ErrorKind::Emfile,
                libc::ENFILE => ErrorKind::Enfile,
                libc::ENOBUFS => ErrorKind::Enobufs,
                libc::ENOMEM => ErrorKind::Enomem,
                libc::ECONNABORTED => ErrorKind::ConnectionAborted,
                libc::ECONNRESET => ErrorKind::ConnectionReset,
                libc::EPROTO | libc::ENOPROTOOPT | libc::EOPNOTSUPP => ErrorKind::Protocol,
                libc::EPERM | libc::EACCES => ErrorKind::Permission,
                libc::EINTR => ErrorKind::Interrupted,
                libc::ETIMEDOUT => ErrorKind::TimedOut,
                libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENETDOWN | libc::EHOSTDOWN => {
                    ErrorKind::Unreachable
                }
                #[cfg(any(target_os = "linux", target_os = "android"))]
                libc::ENONET => ErrorKind::Unreachable,
                e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => ErrorKind::WouldBlock,
                _ => ErrorKind::Other,
            };
        }
        match e.kind() {
            io::ErrorKind::ConnectionAborted => ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset => ErrorKind::ConnectionReset,
            io::ErrorKind::PermissionDenied => ErrorKind::Permission,
            io::ErrorKind::Interrupted => ErrorKind::Interrupted,
            io::ErrorKind::WouldBlock => ErrorKind::WouldBlock,
            io::ErrorKind::TimedOut => ErrorKind::TimedOut,
            io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown => ErrorKind::Unreachable,
            io::ErrorKind::OutOfMemory => ErrorKind::Enomem,
            _ => ErrorKind::Other,
        }
    }

    /// Errors that concern one connection only: retry at once, no backoff.
    pub(crate) fn is_per_connection(self) -> bool {
        !matches!(
            self,
            ErrorKind::Emfile
                | ErrorKind::Enfile
                | ErrorKind::Enobufs
                | ErrorKind::Enomem
                | ErrorKind::Other
        )
    }

    /// Errors after which queued connections are shed with the reserve descriptor.
    fn sheds(self) -> bool {
        matches!(self, ErrorKind::Emfile | ErrorKind::Enfile)
    }
}

/// The backoff schedule: 5 ms doubling to 1 s, reset by a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The delay to wait now; doubles the following one up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Rate limiter for log lines: the first error of a kind is logged at once, later ones at most
/// once per [`LOG_INTERVAL`] per kind, with the number suppressed in between.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    last: [Option<Instant>; ErrorKind::ALL.len()],
    suppressed: [u64; ErrorKind::ALL.len()],
}

impl LogLimiter {
    pub(crate) fn new() -> Self {
        Self {
            last: [None; ErrorKind::ALL.len()],
            suppressed: [0; ErrorKind::ALL.len()],
        }
    }

    /// `Some(suppressed)` when this occurrence should be logged, with how many were not
    /// logged since the previous line of the same kind; `None` to stay quiet.
    pub(crate) fn check(&mut self, kind: ErrorKind, now: Instant) -> Option<u64> {
        let i = kind.index();
        match self.last[i] {
            Some(last) if now.saturating_duration_since(last) < LOG_INTERVAL => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

/// Metric handles, resolved once per listener.
struct Metrics {
    accepted: Counter,
    shed: Counter,
    errors: [Counter; ErrorKind::ALL.len()],
}

impl Metrics {
    fn new() -> Self {
        use crate::metrics::{
            ACCEPT_ERRORS_TOTAL, CONNECTIONS_ACCEPTED_TOTAL, CONNECTIONS_SHED_TOTAL, LABEL_KIND,
        };
        Self {
            accepted: metrics::counter!(CONNECTIONS_ACCEPTED_TOTAL),
            shed: metrics::counter!(CONNECTIONS_SHED_TOTAL),
            errors: ErrorKind::ALL
                .map(|kind| metrics::counter!(ACCEPT_ERRORS_TOTAL, LABEL_KIND => kind.as_str())),
        }
    }
}

/// How often a successful accept retries opening a missing reserve descriptor.
const RESERVE_RETRY: Duration = Duration::from_secs(1);

/// Opens a reserve descriptor.
pub(crate) type ReserveOpener = fn() -> io::Result<File>;

fn open_dev_null() -> io::Result<File> {
    // std opens files with O_CLOEXEC.
    File::open("/dev/null")
}

/// The accept loop state of one listener.
pub(crate) struct AcceptLoop<S> {
    source: S,
    id: ListenerId,
    local: Addr,
    backoff: Backoff,
    /// Allocated on first use and reset for later backoffs.
    sleep: Option<Pin<Box<Sleep>>>,
    sleeping: bool,
    reserve: Option<File>,
    open_reserve: ReserveOpener,
    metrics: Metrics,
    log: LogLimiter,
    /// When a successful accept may next try to re-open a missing reserve descriptor.
    reserve_retry_at: Option<Instant>,
}

impl<S> fmt::Debug for AcceptLoop<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptLoop")
            .field("next_backoff", &self.backoff.next)
            .field("backing_off", &self.sleeping)
            .field("reserve_fd", &self.reserve.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: AcceptSource> AcceptLoop<S> {
    /// Creates the loop, opening the reserve descriptor and resolving metric handles with the
    /// current recorder.
    pub(crate) fn new(source: S, id: ListenerId, local: Addr) -> Self {
        Self::with_reserve(source, id, local, open_dev_null)
    }

    pub(crate) fn with_reserve(
        source: S,
        id: ListenerId,
        local: Addr,
        open_reserve: ReserveOpener,
    ) -> Self {
        let reserve = match open_reserve() {
            Ok(file) => Some(file),
            Err(error) => {
                tracing::warn!(
                    listener = %id, addr = %local, %error,
                    "cannot open the reserve descriptor; connections cannot be shed while \
                     file descriptors are exhausted until it can be opened"
                );
                None
            }
        };
        Self {
            source,
            id,
            local,
            backoff: Backoff::new(),
            sleep: None,
            sleeping: false,
            reserve,
            open_reserve,
            metrics: Metrics::new(),
            log: LogLimiter::new(),
            reserve_retry_at: None,
        }
    }

    pub(crate) fn source(&self) -> &S {
        &self.source
    }

    /// Whether a successful accept should try to re-open the missing reserve descriptor: at
    /// most once a second, so a process that cannot open it does not pay an extra system
    /// call on every accept.
    fn reserve_retry_due(&mut self) -> bool {
        let now = Instant::now();
        if self.reserve_retry_at.is_some_and(|at| now < at) {
            return false;
        }
        self.reserve_retry_at = Some(now + RESERVE_RETRY);
        true
    }

    /// Gives the socket back, ending this loop (its reserve descriptor is closed).
    pub(crate) fn into_source(self) -> S {
        self.source
    }

    #[cfg(test)]
    pub(crate) fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    #[cfg(test)]
    pub(crate) fn has_reserve(&self) -> bool {
        self.reserve.is_some()
    }

    /// Polls for the next connection; never fails (see `Listener::accept`).
    pub(crate) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<(S::Conn, Addr)> {
        let mut budget = RETRY_BUDGET;
        loop {
            if self.sleeping {
                if let Some(sleep) = self.sleep.as_mut() {
                    std::task::ready!(sleep.as_mut().poll(cx));
                }
                self.sleeping = false;
            }
            match self.source.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((conn, peer))) => {
                    self.backoff.reset();
                    if self.reserve.is_none() && self.reserve_retry_due() {
                        self.reserve = (self.open_reserve)().ok();
                    }
                    match self.source.configure(&conn) {
                        Ok(()) => {
                            self.metrics.accepted.increment(1);
                            return Poll::Ready((conn, peer));
                        }
                        Err(error) => {
                            drop(conn);
                            self.record(ErrorKind::SocketOptions, &error, None, 0);
                        }
                    }
                }
                Poll::Ready(Err(error)) => {
                    let kind = ErrorKind::classify(&error);
                    if kind.is_per_connection() {
                        self.record(kind, &error, None, 0);
                    } else {
                        let delay = self.backoff.next_delay();
                        let shed = if kind.sheds() { self.shed() } else { 0 };
                        self.record(kind, &error, Some(delay), shed);
                        self.start_sleep(delay);
                        continue;
                    }
                }
            }
            budget -= 1;
            if budget == 0 {
                // Many errors in a row, each retried at once: let other tasks run.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    fn start_sleep(&mut self, delay: Duration) {
        let deadline = Instant::now() + delay;
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.sleeping = true;
    }

    /// Out of descriptors: give the reserve back, accept and close what is queued, take the
    /// reserve again. Returns how many connections were shed.
    fn shed(&mut self) -> u64 {
        if self.reserve.take().is_none() {
            // No reserve to give back (re-opening failed last time): try again for next time.
            self.reserve = (self.open_reserve)().ok();
            return 0;
        }
        let mut shed = 0;
        for _ in 0..SHED_MAX {
            match self.source.shed_one() {
                Ok(()) => shed += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    let kind = ErrorKind::classify(&e);
                    self.metrics.errors[kind.index()].increment(1);
                    if !kind.is_per_connection() {
                        break;
                    }
                }
            }
        }
        self.metrics.shed.increment(shed);
        self.reserve = (self.open_reserve)().ok();
        shed
    }

    fn record(&mut self, kind: ErrorKind, error: &io::Error, backoff: Option<Duration>, shed: u64) {
        self.metrics.errors[kind.index()].increment(1);
        let Some(suppressed) = self.log.check(kind, Instant::now()) else {
            return;
        };
        let kind = kind.as_str();
        match backoff {
            Some(backoff) => tracing::warn!(
                listener = %self.id,
                addr = %self.local,
                kind,
                %error,
                suppressed,
                backoff_ms = backoff.as_millis() as u64,
                shed,
                reserve_fd = self.reserve.is_some(),
                "accept failed; backing off"
            ),
            None => tracing::debug!(
                listener = %self.id,
                addr = %self.local,
                kind,
                %error,
                suppressed,
                "accept failed for one connection; continuing"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
