//! [`ListenerConfig`] and [`Keepalive`]: what to set on a listener and its connections, as
//! plain data that deserializes from configuration. Binding with it is in `bind.rs`.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::duration;

/// TCP keep-alive probing of idle accepted connections, so dead peers (a crashed client, a
/// NAT that forgot the flow) are noticed and their connections reaped.
///
/// The default (`idle` 60 s, `interval` 10 s, `retries` 6) reaps a dead peer within about two
/// minutes (60 s + 6 × 10 s) while costing one small packet per idle minute.
///
/// Linux takes these in whole seconds: `idle` and `interval` must be at least one second;
/// [`ListenerConfig::bind`] reports an error otherwise. On platforms without per-socket
/// interval and retry settings only `idle` is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub retries: u32,
}

impl Keepalive {
    /// Keep-alive with the given idle time, probe interval and probe count.
    #[must_use]
    pub const fn new(idle: Duration, interval: Duration, retries: u32) -> Self {
        Self {
            idle,
            interval,
            retries,
        }
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(10), 6)
    }
}

/// How to bind a listener: socket options, per-connection options and the number of
/// acceptors.
///
/// Build it with the setters (each documents its default and why), or deserialize it from
/// configuration: keys are the setter names in kebab-case, durations are strings such as
/// `"5s"` (see [`parse_duration`](crate::parse_duration)), unknown keys are rejected.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use portcullis_listen::ListenerConfig;
/// use std::time::Duration;
///
/// let from_code = ListenerConfig::new().backlog(2048).defer_accept(Duration::from_secs(5));
/// let from_toml: ListenerConfig = toml::from_str(r#"
///     backlog = 2048
///     defer-accept = "5s"
///     keepalive = { idle = "30s", interval = "5s", retries = 3 }
///     user-timeout = "30s"
/// "#)?;
/// # let _ = (from_code, from_toml);
/// # Ok(()) }
/// ```
///
/// `keepalive = false` turns keep-alive off; `keepalive = true` selects the default
/// parameters.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ListenerConfig {
    pub(crate) backlog: u32,
    pub(crate) reuse_address: bool,
    pub(crate) reuse_port: bool,
    pub(crate) only_v6: bool,
    pub(crate) recv_buffer_size: Option<usize>,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) tcp_fastopen: u32,
    #[serde(deserialize_with = "deserialize_zero_is_off")]
    pub(crate) defer_accept: Option<Duration>,
    pub(crate) nodelay: bool,
    #[serde(deserialize_with = "deserialize_keepalive")]
    pub(crate) keepalive: Option<Keepalive>,
    #[serde(deserialize_with = "deserialize_zero_is_off")]
    pub(crate) user_timeout: Option<Duration>,
    pub(crate) acceptors: NonZeroUsize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            backlog: 1024,
            reuse_address: true,
            reuse_port: false,
            only_v6: true,
            recv_buffer_size: None,
            send_buffer_size: None,
            tcp_fastopen: 0,
            defer_accept: None,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            user_timeout: None,
            acceptors: NonZeroUsize::MIN,
        }
    }
}

impl ListenerConfig {
    /// The default configuration; same as [`Default::default`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Length of the queue of connections the kernel has completed but the server has not yet
    /// accepted.
    ///
    /// Default: 1024. Large enough to absorb a burst while the accept task is busy; the kernel
    /// caps it at `net.core.somaxconn` (4096 on current Linux).
    #[must_use]
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `SO_REUSEADDR`: allow binding while old connections on the port linger in `TIME_WAIT`.
    ///
    /// Default: `true`, so a restarted server can bind at once. It does not let two live
    /// listeners share a port (that is [`reuse_port`](Self::reuse_port)).
    #[must_use]
    pub fn reuse_address(mut self, reuse: bool) -> Self {
        self.reuse_address = reuse;
        self
    }

    /// `SO_REUSEPORT`: let several sockets (of processes with the same user) listen on the same
    /// address; Linux spreads connections across them.
    ///
    /// Default: `false`, because with it another process of the same user can bind the port
    /// and take a share of the connections. Implied by [`acceptors`](Self::acceptors) above 1.
    /// Closing one of several reuse-port sockets drops the connections queued in it; hand
    /// sockets over for restarts instead (socket activation). Not available on illumos and
    /// Solaris (binding reports [`Unsupported`](crate::BindErrorKind::Unsupported)); on BSDs
    /// and macOS it shares the port without spreading the load.
    #[must_use]
    pub fn reuse_port(mut self, reuse: bool) -> Self {
        self.reuse_port = reuse;
        self
    }

    /// `IPV6_V6ONLY` for IPv6 addresses: whether `[::]` accepts only IPv6, leaving IPv4 to a
    /// separate `0.0.0.0` listener.
    ///
    /// Default: `true`, so `[::]:port` and `0.0.0.0:port` can both be bound, and IPv4 clients
    /// are seen as IPv4 addresses rather than `::ffff:a.b.c.d`. Ignored for IPv4 addresses.
    #[must_use]
    pub fn only_v6(mut self, only_v6: bool) -> Self {
        self.only_v6 = only_v6;
        self
    }

    /// `SO_RCVBUF` of the listening socket, inherited by accepted sockets.
    ///
    /// Default: the operating system's (autotuned on Linux; setting it turns autotuning off
    /// for these sockets). Linux doubles the value for bookkeeping.
    #[must_use]
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// `SO_SNDBUF` of the listening socket, inherited by accepted sockets.
    ///
    /// Default: the operating system's (autotuned on Linux). Linux doubles the value.
    #[must_use]
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// `TCP_FASTOPEN` with this pending-request queue length; 0 turns it off.
    ///
    /// Default: off. Fast Open lets a returning client send data in the SYN, which the server
    /// processes before the handshake completes, so a replayed SYN replays the request: only
    /// worth it for idempotent protocols, and TLS already protects against replays. Linux
    /// only; elsewhere the setting is ignored with a warning at bind time.
    #[must_use]
    pub fn tcp_fastopen(mut self, queue_len: u32) -> Self {
        self.tcp_fastopen = queue_len;
        self
    }

    /// `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` only once the client has
    /// sent data (or this time has passed), so silent connections never reach the server.
    /// Zero turns it off; Linux works in whole seconds and rounds up.
    ///
    /// Default: off, because server-speaks-first protocols would see no connection until the
    /// timeout. Linux only; elsewhere the setting is ignored with a warning at bind time.
    #[must_use]
    pub fn defer_accept(mut self, timeout: Duration) -> Self {
        self.defer_accept = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// `TCP_NODELAY` on accepted connections: send small writes at once instead of waiting
    /// to coalesce them (Nagle's algorithm).
    ///
    /// Default: `true`; request/response protocols such as HTTP otherwise stall up to 40 ms on
    /// the interaction of Nagle and delayed ACKs.
    #[must_use]
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// TCP keep-alive on accepted connections; `None` turns it off.
    ///
    /// Default: `Some(Keepalive::default())` (60 s idle, 10 s interval, 6 probes), so the
    /// connections of peers that vanished without a FIN are reaped within about two minutes
    /// instead of holding a descriptor forever.
    #[must_use]
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// `TCP_USER_TIMEOUT` on accepted connections: drop a connection whose sent data stays
    /// unacknowledged this long. `None` or zero keeps the system default.
    ///
    /// Default: `None`, the kernel's retransmission limit (about 15 minutes). Set it to free
    /// connections to unreachable peers that have unacknowledged data sooner. Linux only;
    /// elsewhere the setting is ignored with a warning at bind time.
    #[must_use]
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Number of sockets [`bind`](Self::bind) creates on the same address with
    /// `SO_REUSEPORT`, each returned as a separate [`Listener`](crate::Listener) to run on its
    /// own task.
    ///
    /// Default: 1. More acceptors help when one accept task cannot keep up with the
    /// connection rate (tens of thousands per second); above 1 implies
    /// [`reuse_port`](Self::reuse_port) among the acceptors, but unless `reuse_port` was set
    /// explicitly, [`bind`](Self::bind) still refuses an address something else already
    /// listens on (address in use), so a second copy of a server cannot silently share the
    /// port. Ignored by [`bind_unix`](Self::bind_unix) and
    /// [`from_std`](Self::from_std).
    #[must_use]
    pub fn acceptors(mut self, acceptors: NonZeroUsize) -> Self {
        self.acceptors = acceptors;
        self
    }

    /// How many acceptors [`bind`](Self::bind) binds for each address.
    #[must_use]
    pub fn acceptor_count(&self) -> NonZeroUsize {
        self.acceptors
    }
}

/// An optional duration where zero means off, as in the setters.
fn deserialize_zero_is_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(duration::deserialize_option(d)?.filter(|t| !t.is_zero()))
}

/// `keepalive = false` (off), `keepalive = true` (defaults) or a table of parameters.
fn deserialize_keepalive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Keepalive>, D::Error> {
    struct KeepaliveVisitor;

    impl<'de> Visitor<'de> for KeepaliveVisitor {
        type Value = Option<Keepalive>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("false, true, or a table with idle, interval and retries")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then(Keepalive::default))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Keepalive::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    d.deserialize_any(KeepaliveVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_durations_mean_off() {
        let config = ListenerConfig::new()
            .defer_accept(Duration::ZERO)
            .user_timeout(Some(Duration::ZERO));
        assert_eq!(config, ListenerConfig::default());
    }
}
