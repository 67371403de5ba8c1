//! Listener tuning for production servers on tokio: socket options applied before `listen()`,
//! `SO_REUSEPORT` acceptors, systemd socket activation, Unix sockets with safe stale-file
//! handling, and an accept loop that survives file-descriptor exhaustion.
//!
//! # What it does
//!
//! - [`ListenerConfig`] binds TCP listeners with the options a production server wants
//!   (backlog, `SO_REUSEADDR`, `IPV6_V6ONLY`, optional `SO_REUSEPORT`, buffer sizes,
//!   `TCP_FASTOPEN`, `TCP_DEFER_ACCEPT`) and gives every accepted socket the per-connection
//!   options (`TCP_NODELAY`, keep-alive, `TCP_USER_TIMEOUT`). It deserializes from TOML or any
//!   serde format, with durations written as `"5s"` ([`parse_duration`]).
//! - [`Listener::accept`] never fails and never exits. Errors are classified, counted
//!   ([`metrics`]) and logged with rate limiting; the loop retries, backs off, or sheds
//!   connections as described below.
//! - [`ListenerConfig::bind_unix`] binds Unix sockets, removing a stale socket file only when
//!   nobody is listening on it, never a file that is not a socket, and removes its file again
//!   when the listener is dropped.
//! - [`SocketActivation`] takes over the listening sockets systemd (or another service manager
//!   speaking the `LISTEN_FDS` protocol) passes in, so restarts never close the listening
//!   socket.
//! - [`Handoff`] passes the listening sockets to a new process for a zero-downtime upgrade
//!   (moved, never closed and bound again), which takes them over with
//!   [`SocketActivation::from_upgrade_env`].
//! - [`proxy`] reads a PROXY protocol v1 or v2 header from a trusted load balancer, under a
//!   deadline, in the connection's task; the caller decides which peers are trusted.
//! - [`metrics`] names every metric the crate emits; an executable calls
//!   [`metrics::describe`] for units and help and [`metrics::register`] to export every series
//!   at 0 before its first event.
//!
//! # What it does not do
//!
//! It does not spawn tasks, limit connections, speak TLS or HTTP, or decide
//! when to stop accepting: it hands each [`Accepted`] connection to the caller, who runs one
//! task per listener and one per connection (portcullis-server does this). It does not read
//! HTTP forwarding headers (`Forwarded`, `X-Forwarded-For`; portcullis-limit does). It never
//! installs a metrics recorder or a tracing subscriber. It is Unix-only.
//!
//! # Example
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use portcullis_listen::{Accepted, ListenerConfig};
//! use tokio::io::AsyncWriteExt;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let acceptors = NonZeroUsize::new(2).ok_or("zero acceptors")?;
//!     let config = ListenerConfig::new().backlog(2048).acceptors(acceptors);
//!     let listeners = config.bind("127.0.0.1:8080".parse()?)?;
//!     let mut tasks = Vec::new();
//!     for mut listener in listeners {
//!         println!("listening on {}", listener.local_addr());
//!         tasks.push(tokio::spawn(async move {
//!             loop {
//!                 // Never an error: failures are counted, logged and retried or backed off.
//!                 let Accepted { mut stream, peer, .. } = listener.accept().await;
//!                 // The accept loop never awaits anything per connection.
//!                 tokio::spawn(async move {
//!                     let reply = format!("hello {peer}\n");
//!                     let _ = stream.write_all(reply.as_bytes()).await;
//!                 });
//!             }
//!         }));
//!     }
//!     for task in tasks {
//!         task.await?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Design
//!
//! **Layout.** [`ListenerConfig`] and [`Keepalive`] are plain data (they deserialize from
//! configuration); the system calls of the `bind*` methods that turn them into sockets live in
//! a module of their own, which depends on the configuration and never the other way round. A
//! [`Listener`] owns its socket and the accept loop; the loop's
//! error taxonomy and backoff are written against an injectable accept source, so tests script
//! errno sequences. [`SocketActivation`] adopts inherited descriptors and hands them to the
//! same constructors. [`proxy`] is independent of all of these: a pure, incremental parser of
//! both header versions, a reader that applies it to any `AsyncRead` under a deadline, and the
//! [`Prefixed`](proxy::Prefixed) stream it returns.
//!
//! **Binding.** Each option is set on the socket before `bind()`/`listen()`, so there is no
//! window in which the socket accepts connections with the wrong settings. Per-connection
//! options are applied to the listening socket at bind time, which validates them; Linux
//! copies them to every accepted socket, so accepting costs no extra system call there (the
//! tests read them back on accepted sockets). Elsewhere they are applied to each accepted
//! socket. With
//! [`acceptors`](ListenerConfig::acceptors) above one, that many `SO_REUSEPORT` sockets share
//! the address (port 0 resolves to the port picked for the first); each is its own
//! [`Listener`] with its own [`ListenerId`], to be driven by its own task.
//!
//! **The accept loop.** Errors fall into three groups (the `kind` label values are listed in
//! [`metrics::ACCEPT_ERROR_KINDS`]):
//!
//! - *Per-connection* errors (`ECONNABORTED`, `ECONNRESET`, `EPROTO`, `EPERM`, `EINTR`,
//!   `ETIMEDOUT`, `EHOSTUNREACH`, `ENETUNREACH`, ...) concern one connection that is already
//!   gone: counted, and the loop continues at once. Where options are set on each accepted
//!   connection (not on Linux, which inherits them from the listening socket), failing to set
//!   them (its peer already reset it, say) drops that connection likewise.
//! - *Resource* errors (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) and unknown errors: the loop
//!   backs off, 5 ms doubling to 1 s (as Go's net/http), and the next successful accept resets
//!   the delay to 5 ms. It neither spins nor exits nor parks forever.
//! - While out of descriptors (`EMFILE`/`ENFILE`) the queued connections would sit in the
//!   backlog until clients time out. Each listener therefore holds a *reserve descriptor*
//!   (`/dev/null`, opened at bind time). On `EMFILE`/`ENFILE` it closes the reserve, accepts
//!   and immediately closes up to 64 queued connections (counted in
//!   [`metrics::CONNECTIONS_SHED_TOTAL`]), re-opens the reserve (retrying later if that
//!   fails), then sleeps the backoff. Clients get a prompt close instead of a hang.
//!
//! Every error increments [`metrics::ACCEPT_ERRORS_TOTAL`] with its kind. Log lines go through
//! `tracing` with rate limiting: the first error of each kind is logged at once, then at most
//! one line per kind per second carrying the number suppressed in between. Resource and
//! unknown errors log at `WARN`, per-connection errors at `DEBUG`. Metric handles are resolved
//! once per listener, when it is created.
//!
//! [`Listener::accept`] is cancellation safe and can sit in a `tokio::select!` next to a
//! shutdown signal.
//!
//! **Unsafe code.** Only the private `sys` module uses `unsafe`, for `setsockopt` /
//! `getsockopt` of options socket2 does not cover and for adopting inherited descriptors;
//! everything else goes through socket2, std and tokio.
//!
//! # Platform support
//!
//! Linux is the target. On other Unix systems the crate compiles and works; `TCP_FASTOPEN`,
//! `TCP_DEFER_ACCEPT` and `TCP_USER_TIMEOUT` are then ignored with a warning at bind time, and
//! [`sockopt`] readers return [`std::io::ErrorKind::Unsupported`].
//!
//! # Dependencies in the public API
//!
//! - **tokio**: [`Stream`] wraps tokio's `TcpStream` and `UnixStream` and implements its
//!   `AsyncRead` and `AsyncWrite`; listeners must be created inside a tokio runtime.
//! - **serde**: [`ListenerConfig`] and [`Keepalive`] implement `Deserialize`.
//! - **ipnet** and **bytes**: re-exported as [`proxy::IpNet`] (the trusted ranges of
//!   [`ProxyProtocol`](proxy::ProxyProtocol)) and [`proxy::Bytes`] (the unread prefix of
//!   [`Prefixed::into_parts`](proxy::Prefixed::into_parts)), so callers can name them without
//!   depending on the same versions.
//!
//! socket2 is used inside and never appears in the API: read socket options of a
//! [`Listener`] or [`Stream`] through their `AsFd` (with socket2's `SockRef` of your own
//! socket2 version, or [`sockopt`]).
//!
//! # Crate features
//!
//! This crate has no Cargo features: everything above is always available. It depends on
//! tokio with the `net`, `time`, `rt` and `io-util` features.

mod accept;
mod activation;
mod bind;
mod config;
pub mod duration;
mod error;
pub mod handoff;
mod listener;
pub mod metrics;
pub mod proxy;
pub mod sockopt;
#[allow(unsafe_code)]
mod sys;

pub use activation::{ActivationError, SocketActivation};
pub use config::{Keepalive, ListenerConfig};
pub use duration::{ParseDurationError, parse_duration};
pub use error::{BindError, BindErrorKind};
pub use handoff::Handoff;
pub use listener::{Accepted, Addr, DetachedListener, Listener, ListenerId, Stream};
