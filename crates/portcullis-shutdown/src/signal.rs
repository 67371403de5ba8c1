//! Shutdown signals: the first starts a graceful shutdown, the next one forces it.
//!
//! Handlers are installed explicitly, so SIGTERM works when the process runs as PID 1 in a
//! container (where the kernel gives it no default action and an unhandled SIGTERM is simply
//! ignored).
//!
//! On Windows the console events stand in for the signals: Ctrl-C for SIGINT, closing the
//! console or a system shutdown for SIGTERM, Ctrl-Break for SIGQUIT. Other targets have no
//! signals: [`Signals::new`] fails there with `ErrorKind::Unsupported`.

use std::fmt;
use std::future::Future;
use std::io;

#[cfg(unix)]
use tokio::signal::unix::{Signal as TokioSignal, SignalKind};

/// A shutdown signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM: what `kill`, systemd and Kubernetes send.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
    /// SIGQUIT, when asked for with [`Signals::with_quit`].
    Quit,
}

impl Signal {
    /// The label value in [`crate::metrics::SIGNALS_RECEIVED`].
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Term => "term",
            Signal::Int => "int",
            Signal::Quit => "quit",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
        })
    }
}

/// Listens for SIGTERM and SIGINT (and optionally SIGQUIT).
///
/// Create it early, before the server is reachable: from then on these signals are caught
/// (queued until read) rather than killing the process.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let (shutdown, force) = portcullis_shutdown::Signals::new()?.into_triggers();
/// // server.shutdown(shutdown).force(force)
/// # let _ = (shutdown, force);
/// # Ok(()) }
/// ```
pub struct Signals {
    term: Listener,
    int: Listener,
    quit: Option<Listener>,
    hangups: Option<Hangups>,
}

/// SIGHUP, caught so that it never ends the process: the conventional "reload your
/// configuration" signal (certbot's deploy hooks send it). Taken from [`Signals`] by
/// [`Shutdown::start`](crate::Shutdown::start), which reloads on each one.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: TokioSignal,
}

impl Hangups {
    /// Waits for the next SIGHUP and counts it; `false` once no more can come.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe: a signal that arrives while nobody waits is kept for the next call.
    pub async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        {
            if self.signal.recv().await.is_none() {
                return false;
            }
            metrics::counter!(crate::metrics::SIGNALS_RECEIVED, "signal" => "hup").increment(1);
            tracing::info!("SIGHUP received");
            true
        }
        #[cfg(not(unix))]
        {
            false
        }
    }
}

/// One signal's handler on this platform.
enum Listener {
    #[cfg(unix)]
    Unix(TokioSignal),
    #[cfg(windows)]
    CtrlC(tokio::signal::windows::CtrlC),
    #[cfg(windows)]
    CtrlBreak(tokio::signal::windows::CtrlBreak),
    #[cfg(windows)]
    Close(
        tokio::signal::windows::CtrlClose,
        tokio::signal::windows::CtrlShutdown,
    ),
}

impl Listener {
    fn term() -> io::Result<Self> {
        #[cfg(unix)]
        return Ok(Listener::Unix(tokio::signal::unix::signal(
            SignalKind::terminate(),
        )?));
        #[cfg(windows)]
        return Ok(Listener::Close(
            tokio::signal::windows::ctrl_close()?,
            tokio::signal::windows::ctrl_shutdown()?,
        ));
        #[cfg(not(any(unix, windows)))]
        return Err(unsupported());
    }

    fn int() -> io::Result<Self> {
        #[cfg(unix)]
        return Ok(Listener::Unix(tokio::signal::unix::signal(
            SignalKind::interrupt(),
        )?));
        #[cfg(windows)]
        return Ok(Listener::CtrlC(tokio::signal::windows::ctrl_c()?));
        #[cfg(not(any(unix, windows)))]
        return Err(unsupported());
    }

    fn quit() -> io::Result<Self> {
        #[cfg(unix)]
        return Ok(Listener::Unix(tokio::signal::unix::signal(
            SignalKind::quit(),
        )?));
        #[cfg(windows)]
        return Ok(Listener::CtrlBreak(tokio::signal::windows::ctrl_break()?));
        #[cfg(not(any(unix, windows)))]
        return Err(unsupported());
    }

    /// Completes at the next signal (or never, once the handler is gone).
    async fn recv(&mut self) {
        let received = match self {
            #[cfg(unix)]
            Listener::Unix(signal) => signal.recv().await,
            #[cfg(windows)]
            Listener::CtrlC(signal) => signal.recv().await,
            #[cfg(windows)]
            Listener::CtrlBreak(signal) => signal.recv().await,
            #[cfg(windows)]
            Listener::Close(close, shutdown) => tokio::select! {
                received = close.recv() => received,
                received = shutdown.recv() => received,
            },
        };
        if received.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(any(unix, windows)))]
fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this platform has no process signals",
    )
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("quit", &self.quit.is_some())
            .field("hangups", &self.hangups.is_some())
            .finish_non_exhaustive()
    }
}

impl Signals {
    /// Installs handlers for SIGTERM and SIGINT, and (on Unix) SIGHUP, which is never a
    /// shutdown signal: see [`take_hangups`](Self::take_hangups).
    ///
    /// # Errors
    ///
    /// When a handler cannot be installed, or on a target without signals (neither Unix nor
    /// Windows).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with its I/O driver enabled (tokio's own requirement).
    pub fn new() -> io::Result<Self> {
        #[cfg(unix)]
        let hangups = Some(Hangups {
            signal: tokio::signal::unix::signal(SignalKind::hangup())?,
        });
        #[cfg(not(unix))]
        let hangups = None;
        Ok(Self {
            term: Listener::term()?,
            int: Listener::int()?,
            quit: None,
            hangups,
        })
    }

    /// Takes the SIGHUP listener (installed by [`new`](Self::new) on Unix, so SIGHUP never
    /// ends the process); `None` when taken already or on other platforms. Without anyone
    /// receiving them, SIGHUPs are caught and ignored.
    pub fn take_hangups(&mut self) -> Option<Hangups> {
        self.hangups.take()
    }

    /// Also treats SIGQUIT as a shutdown signal. Off by default: SIGQUIT conventionally asks
    /// for a core dump, and some runtimes send it to dump stacks.
    ///
    /// # Errors
    ///
    /// When the handler cannot be installed.
    pub fn with_quit(mut self) -> io::Result<Self> {
        self.quit = Some(Listener::quit()?);
        Ok(self)
    }

    /// Waits for the next signal and counts it.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe: a signal that arrives while nobody waits is kept for the next call.
    pub async fn recv(&mut self) -> Signal {
        let quit = async {
            match self.quit.as_mut() {
                Some(quit) => quit.recv().await,
                None => std::future::pending().await,
            }
        };
        let signal = tokio::select! {
            _ = self.term.recv() => Signal::Term,
            _ = self.int.recv() => Signal::Int,
            _ = quit => Signal::Quit,
        };
        metrics::counter!(crate::metrics::SIGNALS_RECEIVED, "signal" => signal.as_str())
            .increment(1);
        tracing::info!(%signal, "shutdown signal");
        signal
    }

    /// Two futures for a server's shutdown and force triggers: the first completes at the
    /// first signal, the second at the next one. The second does the listening for both, so
    /// both must be polled (a portcullis server spawns each trigger as a task of its own).
    pub fn into_triggers(
        mut self,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let second = async move {
            self.recv().await;
            let _ = first_tx.send(());
            self.recv().await;
        };
        let first = async move {
            let _ = first_rx.await;
        };
        (first, second)
    }
}
