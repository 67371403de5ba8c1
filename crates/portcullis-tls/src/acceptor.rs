//! [`TlsAcceptor`]: the handshake under a deadline, and reloading the served pairs.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{HandshakeError, HandshakeFailure, TlsError};
use crate::metrics::Metrics;
use crate::pair::{self, Source};
use crate::reload::AutoWatch;
use crate::resolver::{Loaded, Lookup, Resolver, Snapshot};

/// Counts of reload attempts since the acceptor was built, from every trigger (the file
/// watcher, SIGHUP, [`TlsAcceptor::reload`]). Watch it with [`TlsAcceptor::reload_status`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadStatus {
    /// Reloads that put every re-read pair in service.
    pub successes: u64,
    /// Reloads in which at least one pair failed validation and kept its previous version.
    pub failures: u64,
}

/// Accepts TLS connections with the configured certificates, and reloads them.
///
/// Built by [`TlsConfig::build`](crate::TlsConfig::build). Cloning is cheap and every clone
/// serves the same certificates: a reload through one clone is seen by all.
///
/// The [`rustls::ServerConfig`] is built once and never rebuilt: a reload swaps only the
/// certificate/key pairs inside its certificate resolver. The session cache and the ticket keys
/// therefore survive reloads, and clients keep resuming their sessions.
///
/// # Where to call `accept`
///
/// In the connection's own task, never in the accept loop: a handshake waits on the client, and
/// one slow client would otherwise stop the server from accepting anyone else. This crate does
/// not cap concurrent handshakes; the caller does, before calling [`accept`](Self::accept)
/// (portcullis-server uses portcullis-limit's `HandshakeLimiter`), since handshakes are the CPU-heavy part
/// of a TLS connection.
#[derive(Clone)]
pub struct TlsAcceptor {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) watch_interval: Duration,
    /// Serializes writers of the snapshot; readers never wait.
    pub(crate) reload_lock: Mutex<()>,
    pub(crate) status: watch::Sender<ReloadStatus>,
    pub(crate) metrics: Metrics,
    /// Who watches the files: see [`TlsAcceptor::watch`].
    pub(crate) auto_watch: AutoWatch,
}

/// A configured pair: where it comes from, and its metric label.
pub(crate) struct Slot {
    /// `default` or the configured server name.
    pub(crate) label: Arc<str>,
    pub(crate) source: Source,
}

impl TlsAcceptor {
    /// Resolves the acceptor's metric handles now, against the recorder in effect here (a
    /// local recorder in a test, say). Without this call they are resolved at the first
    /// handshake or reload, so an acceptor built before the process's recorder is installed
    /// still reports to it.
    pub fn resolve_metrics(&self) {
        self.inner.metrics.resolve();
    }

    /// Whether `other` is a clone of this acceptor (the same certificates, reloads and
    /// configuration), for a server that runs each acceptor's reload triggers once.
    #[must_use]
    pub fn same_as(&self, other: &TlsAcceptor) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs the TLS handshake on `io` under the handshake deadline.
    ///
    /// The deadline ([`TlsConfig::handshake_timeout`](crate::TlsConfig::handshake_timeout),
    /// 10 seconds by default) covers the whole handshake, from the first byte of the
    /// ClientHello to the client's Finished message. A completed handshake is counted in
    /// [`HANDSHAKES_TOTAL`](crate::metrics::HANDSHAKES_TOTAL), a failed one in
    /// [`HANDSHAKE_FAILURES_TOTAL`](crate::metrics::HANDSHAKE_FAILURES_TOTAL) by reason.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] with its [`reason`](HandshakeError::reason). The connection is of no
    /// further use; drop it.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future drops the connection; nothing is counted.
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let deadline = tokio::time::Instant::now() + self.inner.handshake_timeout;
        self.accept_until(io, deadline).await
    }

    /// [`accept`](Self::accept) with a deadline of the caller's: for a server that spent part
    /// of the handshake timeout already (waiting for a place under a handshake cap, say) and
    /// wants one deadline for the whole. A deadline already passed fails as a timeout.
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept).
    ///
    /// # Cancellation safety
    ///
    /// As [`accept`](Self::accept).
    pub async fn accept_until<IO>(
        &self,
        io: IO,
        deadline: tokio::time::Instant,
    ) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.ensure_watching();
        let timeout = self.inner.handshake_timeout;
        let result = match tokio::time::timeout_at(deadline, self.handshake(io)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(HandshakeError::timeout(timeout)),
        };
        match &result {
            Ok(stream) => {
                let resumed =
                    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                self.inner.metrics.handshake_completed(resumed);
            }
            Err(error) => {
                tracing::debug!(reason = error.reason().as_str(), %error, "TLS handshake failed");
                self.inner.metrics.handshake_failed(error.reason());
            }
        }
        result
    }

    async fn handshake<IO>(&self, io: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        // Read the ClientHello first, to know whether the server name will be refused.
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(|error| HandshakeError::io(HandshakeFailure::classify(&error), error))?;
        let refused = self
            .inner
            .resolver
            .lookup(start.client_hello().server_name())
            == Lookup::Refused;
        // A refused name still goes through rustls, which sends the client a fatal alert.
        start
            .into_stream(Arc::clone(&self.inner.config))
            .await
            .map_err(|error| {
                let reason = if refused {
                    HandshakeFailure::UnknownServerName
                } else {
                    HandshakeFailure::classify(&error)
                };
                HandshakeError::io(reason, error)
            })
    }

    /// The rustls configuration, for callers that run the handshake themselves (through
    /// `tokio_rustls::TlsAcceptor`, say). Such handshakes get no deadline and are not counted;
    /// reloads still apply to them.
    #[must_use]
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.inner.config)
    }

    /// The crypto provider in use, narrowed to the allowed cipher suites.
    #[must_use]
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    /// The handshake deadline.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        self.inner.handshake_timeout
    }

    /// Reads every file-backed pair again, validates it, and puts it in service.
    ///
    /// Each pair is validated before it replaces the one in service: the certificate parses,
    /// is within its validity period, and the key matches it. A pair that fails keeps its
    /// previous version in service; the other pairs are still swapped. Each call counts one
    /// success or one failure in [`RELOADS_TOTAL`](crate::metrics::RELOADS_TOTAL) and logs a
    /// failure. Pairs made from memory do not change. Connections in progress are not
    /// affected.
    ///
    /// This reads files and parses certificates on the calling thread (a few milliseconds):
    /// from async code, call it through `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// The first pair's [`TlsError`], naming its file, when any pair failed.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = {
            let _writer = self
                .inner
                .reload_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let current = self.inner.resolver.snapshot.load_full();
            let mut slots = current.slots.clone();
            let mut first_error = None;
            for (index, slot) in self.inner.slots.iter().enumerate() {
                let Source::Files { cert, key } = &slot.source else {
                    continue;
                };
                let loaded = pair::read_file(cert).and_then(|cert_pem| {
                    let key_pem = pair::read_file(key)?;
                    self.load(slot, &cert_pem, &key_pem)
                });
                match (loaded, slots.get_mut(index)) {
                    (Ok(loaded), Some(served)) => *served = Arc::new(loaded),
                    (Ok(_), None) => {}
                    (Err(error), _) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            self.inner
                .resolver
                .snapshot
                .store(Arc::new(Snapshot { slots }));
            first_error.map_or(Ok(()), Err)
        };
        self.finish_reload(&result, None);
        result
    }

    /// Validates `cert_pem`/`key_pem` for slot `index` and puts them in service, unless the
    /// pair in service is no longer the one with fingerprint `served_before` (another reload,
    /// a SIGHUP say, swapped in newer files since they were read): then nothing happens and
    /// the next poll looks again.
    pub(crate) fn reload_slot(
        &self,
        index: usize,
        cert_pem: &[u8],
        key_pem: &[u8],
        served_before: Option<u64>,
    ) -> Result<(), TlsError> {
        let result = match self.inner.slots.get(index) {
            Some(slot) => {
                let _writer = self
                    .inner
                    .reload_lock
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let served_now = self
                    .inner
                    .resolver
                    .snapshot
                    .load()
                    .slots
                    .get(index)
                    .map(|loaded| loaded.parsed.fingerprint);
                if served_now != served_before {
                    return Ok(());
                }
                self.load(slot, cert_pem, key_pem).map(|loaded| {
                    let current = self.inner.resolver.snapshot.load_full();
                    let mut slots = current.slots.clone();
                    if let Some(served) = slots.get_mut(index) {
                        *served = Arc::new(loaded);
                    }
                    self.inner
                        .resolver
                        .snapshot
                        .store(Arc::new(Snapshot { slots }));
                })
            }
            None => Ok(()),
        };
        self.finish_reload(&result, self.inner.slots.get(index));
        result
    }

    pub(crate) fn finish_reload(&self, result: &Result<(), TlsError>, slot: Option<&Slot>) {
        let certificate = slot.map_or("all", |slot| &slot.label);
        match result {
            Ok(()) => {
                tracing::info!(certificate, "TLS certificates reloaded");
            }
            Err(error) => {
                tracing::error!(
                    certificate,
                    %error,
                    "TLS certificate reload failed; the previous certificate stays in service"
                );
            }
        }
        self.inner.metrics.reloaded(result.is_ok());
        self.update_expiry();
        self.inner.status.send_modify(|status| {
            if result.is_ok() {
                status.successes += 1;
            } else {
                status.failures += 1;
            }
        });
    }

    fn load(&self, slot: &Slot, cert_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, TlsError> {
        let origin = slot.source.origin();
        let parsed = pair::parse(cert_pem, key_pem, origin, pair::unix_now())?;
        let certified = parsed.certify(&self.inner.provider, origin)?;
        Ok(Loaded {
            certified,
            parsed: Arc::new(parsed),
        })
    }

    /// Sets the expiry gauge of every served certificate to the seconds left from now. The
    /// gauge is looked up each time (at build, at each watcher poll and reload: rarely), so it
    /// reaches whatever recorder is installed by then.
    pub(crate) fn update_expiry(&self) {
        let snapshot = self.inner.resolver.snapshot.load();
        let now = pair::unix_now();
        for (slot, loaded) in self.inner.slots.iter().zip(snapshot.slots.iter()) {
            crate::metrics::expiry_gauge(&slot.label)
                .set(loaded.parsed.not_after.saturating_sub(now) as f64);
        }
    }

    /// Follows the reload counts; the receiver sees a change after every reload attempt,
    /// whatever triggered it.
    #[must_use]
    pub fn reload_status(&self) -> watch::Receiver<ReloadStatus> {
        self.inner.status.subscribe()
    }

    /// The end-entity certificate served for `server_name` now (`None`: a client without SNI),
    /// or `None` if that name would be refused.
    #[must_use]
    pub fn certificate_for(
        &self,
        server_name: Option<&str>,
    ) -> Option<rustls_pki_types::CertificateDer<'static>> {
        let snapshot = self.inner.resolver.snapshot.load();
        match self.inner.resolver.names.lookup(server_name, &snapshot) {
            Lookup::Slot(slot) => snapshot
                .slots
                .get(slot)
                .and_then(|loaded| loaded.parsed.chain.first().cloned()),
            Lookup::Refused => None,
        }
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self.inner.slots.iter().map(|s| &*s.label).collect();
        f.debug_struct("TlsAcceptor")
            .field("certificates", &labels)
            .field("handshake_timeout", &self.inner.handshake_timeout)
            .field("alpn_protocols", &self.inner.config.alpn_protocols)
            .field("reloads", &*self.inner.status.borrow())
            .finish()
    }
}
