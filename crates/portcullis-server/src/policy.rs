//! What the accept loop and the connection task apply to every connection.

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_limit::metrics::{BAN_REJECTIONS_TOTAL, LABEL_AT};
use portcullis_limit::{
    BanReason, Bans, ConnLimiter, ConnPermit, ConnRejected, HandshakeLimiter, IpFilter,
};
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
    /// The connection filter, checked before the caps.
    pub(crate) filter: Option<IpFilter>,
    /// Temporary bans: checked before the caps, struck by the server's refusals.
    pub(crate) bans: Option<Bans>,
}

/// Why a connection was turned away at accept (already counted and logged at debug).
#[derive(Debug)]
pub(crate) enum Turned {
    /// The connection filter refused the client.
    Filtered,
    /// The client is banned.
    Banned,
    /// A connection cap was reached (counted by the limiter).
    Capped,
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
            filter: None,
            bans: None,
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

    /// Screens the connection (filter, bans) and takes its places under the caps, in that
    /// order. A connection that will carry a PROXY header is screened and held to the
    /// per-client cap once the header names its client ([`admit_client`](Self::admit_client)).
    pub(crate) fn admit(&self, peer: &Addr) -> Result<ConnPermit, Turned> {
        match peer.ip() {
            Some(ip) if self.proxy_for(peer).is_none() => {
                self.screen(ip)?;
                self.limits.try_acquire(ip).map_err(|rejected| {
                    self.refused(ip, &rejected);
                    Turned::Capped
                })
            }
            _ => self.limits.try_acquire_global().map_err(|_| Turned::Capped),
        }
    }

    /// Screens the client a PROXY header named and adds it to the per-client cap.
    pub(crate) fn admit_client(
        &self,
        permit: &mut ConnPermit,
        client: IpAddr,
    ) -> Result<(), Turned> {
        self.screen(client)?;
        permit.add_client(client).map_err(|rejected| {
            self.refused(client, &rejected);
            Turned::Capped
        })
    }

    /// The connection filter, then the bans: synchronous, before anything is read.
    fn screen(&self, client: IpAddr) -> Result<(), Turned> {
        if let Some(filter) = &self.filter
            && let Err(refused) = filter.check(client)
        {
            tracing::debug!(%client, %refused, "connection refused by the filter");
            return Err(Turned::Filtered);
        }
        if let Some(bans) = &self.bans
            && let Some(left) = bans.check(client)
        {
            metrics::counter!(BAN_REJECTIONS_TOTAL, LABEL_AT => "accept").increment(1);
            tracing::debug!(%client, seconds_left = left.as_secs(), "connection of a banned client closed");
            return Err(Turned::Banned);
        }
        Ok(())
    }

    /// Counts a cap refusal towards the client's ban (the per-client cap only: a full
    /// server is nobody's fault).
    fn refused(&self, client: IpAddr, rejected: &ConnRejected) {
        if matches!(rejected, ConnRejected::MaxConnectionsPerClient) {
            self.strike(client, BanReason::CONN_CAP);
        }
    }

    /// Counts a refusal of `client` towards its ban, if the server has bans.
    pub(crate) fn strike(&self, client: IpAddr, reason: BanReason) {
        if let Some(bans) = &self.bans {
            bans.strike(client, reason);
        }
    }
}
