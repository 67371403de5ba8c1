//! Errors from starting or running a server.

use std::fmt;
use std::io;

use portcullis_listen::Addr;

/// Why a [`Server`](crate::Server) could not serve.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The server was given no listener.
    NoListeners,
    /// A per-core runtime or its thread could not be started.
    Runtime(io::Error),
    /// [`serve_per_core`](crate::Builder::serve_per_core) was called from within a tokio
    /// runtime; it starts runtimes of its own and must be called outside one.
    InsideRuntime,
    /// A listener could not be moved onto a per-core runtime.
    Listener {
        /// The listener's address.
        addr: Addr,
        /// What failed.
        source: io::Error,
    },
    /// A per-core thread panicked.
    CorePanicked {
        /// Index of the core's thread.
        core: usize,
        /// The panic message, when it was a string.
        message: String,
    },
    /// An address given to [`listen`](crate::Builder::listen) or
    /// [`admin`](crate::Builder::admin) is not a socket address.
    Address {
        /// The address as given.
        input: String,
        /// Why it is not one.
        reason: String,
    },
    /// A listener could not be bound (the error names the address).
    Bind(portcullis_listen::BindError),
    /// The socket-activation variables (`LISTEN_FDS`, ...) are malformed.
    Activation(portcullis_listen::ActivationError),
    /// The Prometheus exporter of [`admin`](crate::Builder::admin) could not be installed:
    /// the process already has a metrics recorder (give it with
    /// [`admin_listener`](crate::Builder::admin_listener) instead).
    Exporter(crate::BoxError),
    /// The SIGHUP handler that reloads the TLS certificates could not be installed.
    Signal(io::Error),
    /// The upgrade could not be set up: a listening socket could not be duplicated for the
    /// hand-off, or the SIGUSR2 handler could not be installed.
    Upgrade(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoListeners => f.write_str("the server has no listener to serve on"),
            Error::Runtime(e) => write!(f, "cannot start a per-core runtime: {e}"),
            Error::Listener { addr, source } => {
                write!(
                    f,
                    "cannot move listener {addr} onto a per-core runtime: {source}"
                )
            }
            Error::InsideRuntime => f.write_str(
                "serve_per_core must be called outside a tokio runtime (it starts one per core)",
            ),
            Error::CorePanicked { core, message } => {
                write!(f, "the thread serving core {core} panicked: {message}")
            }
            Error::Address { input, reason } => {
                write!(f, "`{input}` is not a listen address: {reason}")
            }
            Error::Bind(error) => error.fmt(f),
            Error::Activation(error) => error.fmt(f),
            Error::Exporter(error) => {
                write!(
                    f,
                    "cannot install the Prometheus exporter of the admin listener: {error}"
                )
            }
            Error::Signal(error) => {
                write!(
                    f,
                    "cannot install the SIGHUP handler that reloads TLS certificates: {error}"
                )
            }
            Error::Upgrade(error) => write!(f, "cannot set up zero-downtime upgrades: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Runtime(e)
            | Error::Listener { source: e, .. }
            | Error::Signal(e)
            | Error::Upgrade(e) => Some(e),
            Error::Bind(error) => Some(error),
            Error::Activation(error) => Some(error),
            Error::Exporter(error) => Some(error.as_ref()),
            Error::NoListeners
            | Error::InsideRuntime
            | Error::CorePanicked { .. }
            | Error::Address { .. } => None,
        }
    }
}
