//! What the accept loop and the connection task apply to every connection.

use std::sync::Arc;

use portcullis_limit::{ConnLimiter, ConnPermit, ConnRejected, HandshakeLimiter};
use portcullis_listen::proxy::ProxyProtocol;
use portcullis_listen::{Addr, ListenerId};
use portcullis_tls::TlsAcceptor;

/// The per-connection settings of one server, shared by every core.
#[derive(Clone, Debug)]
pub(crate) struct ConnPolicy {
    /// Insert [`ConnInfo`](crate::ConnInfo) into every request.
    pub(crate) info: bool,
    /// Insert [`PeerAddr`](portcullis_limit::PeerAddr) into every request.
    pub(crate) peer: bool,
    pub(crate) limits: ConnLimiter,
    pub(crate) proxy: Option<Arc<ProxyProtocol>>,
    pub(crate) tls: Option<TlsAcceptor>,
    /// Listeners with an acceptor of their own (a handful: searched in order).
    pub(crate) listener_tls: Arc<[(ListenerId, TlsAcceptor)]>,
    pub(crate) handshakes: HandshakeLimiter,
}

impl ConnPolicy {
    /// The policy of the admin listener: scrapes and probes are not the application's
    /// traffic, so none of its connection caps apply (a probe must get through when the caps
    /// are reached).
    pub(crate) fn admin() -> Self {
        Self {
            info: false,
            peer: false,
            limits: ConnLimiter::new(usize::MAX),
            proxy: None,
            tls: None,
            listener_tls: Arc::from([]),
            handshakes: HandshakeLimiter::new(0),
        }
    }

    /// The PROXY protocol settings to read a header with, if `peer` is a trusted proxy.
    pub(crate) fn proxy_for(&self, peer: &Addr) -> Option<&ProxyProtocol> {
        let proxy = self.proxy.as_deref()?;
        peer.ip()
            .is_some_and(|ip| proxy.is_trusted(ip))
            .then_some(proxy)
    }

    /// The TLS acceptor of connections accepted by `listener`, if they speak TLS.
    pub(crate) fn tls_for(&self, listener: ListenerId) -> Option<&TlsAcceptor> {
        self.listener_tls
            .iter()
            .find_map(|(id, acceptor)| (*id == listener).then_some(acceptor))
            .or(self.tls.as_ref())
    }

    /// Every distinct TLS acceptor (for their reloads).
    pub(crate) fn acceptors(&self) -> Vec<TlsAcceptor> {
        let mut acceptors: Vec<TlsAcceptor> = Vec::new();
        for acceptor in self
            .tls
            .iter()
            .chain(self.listener_tls.iter().map(|(_, acceptor)| acceptor))
        {
            if !acceptors.iter().any(|known| known.same_as(acceptor)) {
                acceptors.push(acceptor.clone());
            }
        }
        acceptors
    }

    /// Takes the connection's places under the caps. A connection that will carry a PROXY
    /// header is held to the per-client cap once the header names its client.
    pub(crate) fn admit(&self, peer: &Addr) -> Result<ConnPermit, ConnRejected> {
        match peer.ip() {
            Some(ip) if self.proxy_for(peer).is_none() => self.limits.try_acquire(ip),
            _ => self.limits.try_acquire_global(),
        }
    }
}
