//! [`TlsConfig`]: the builder of a [`TlsAcceptor`], and [`ClientAuth`].

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::watch;

use crate::acceptor::{Inner, ReloadStatus, Slot, TlsAcceptor};
use crate::error::{TlsError, TlsErrorKind};
use crate::metrics::{DEFAULT_CERTIFICATE, Metrics};
use crate::pair::{self, CertKeyPair};
use crate::provider;
use crate::reload::AutoWatch;
use crate::resolver::{Loaded, Names, Resolver, Snapshot};

/// The default handshake deadline: 10 seconds.
///
/// A real client finishes a handshake in a few round trips, well under a second even across
/// continents; 10 seconds leaves room for a slow mobile network and TCP retransmissions, while a
/// client that stalls mid-handshake (the TLS flavour of slowloris) gives its connection back
/// quickly.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default session cache size: 1024 sessions.
///
/// The cache resumes clients that do not take session tickets. One entry holds a session's
/// secrets and parameters, a few hundred bytes (plus the client's certificate chain with
/// client authentication), so 1024 entries stay around a megabyte while covering the
/// returning clients of a busy server between two visits. Clients that use tickets, the
/// large majority, do not need it. The oldest entries make way for new ones.
pub const DEFAULT_SESSION_CACHE_SIZE: usize = 1024;

/// How often the file watcher of [`TlsAcceptor::watch`] looks at the files by default:
/// every 500 milliseconds.
///
/// A change is put in service once the files stay the same for one more poll, so within about
/// one second and surely within two; reading two small files twice a second costs nothing
/// measurable.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The ALPN protocols offered by default, in order of preference: `h2`, then `http/1.1`.
///
/// HTTP/2 first, so clients that speak both get one multiplexed connection; HTTP/1.1 for
/// everyone else. portcullis-server serves both on the same port.
pub const DEFAULT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Client certificate authentication (mutual TLS): the CA bundle client certificates are
/// verified against, and whether a certificate is required.
///
/// The bundle is read when the acceptor is built. Verification is rustls' WebPKI verifier:
/// the chain must lead to a certificate of the bundle, and be valid now for client
/// authentication.
#[derive(Clone)]
pub struct ClientAuth {
    ca: CaSource,
    required: bool,
}

#[derive(Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Arc<[u8]>),
}

impl ClientAuth {
    /// Every client must present a certificate that verifies against the CA bundle in
    /// `ca_file` (PEM, one or more certificates); others fail the handshake, counted as
    /// `bad_client_certificate`.
    #[must_use]
    pub fn required(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca: CaSource::File(ca_file.into()),
            required: true,
        }
    }

    /// Clients may present a certificate; if they do, it must verify against the CA bundle in
    /// `ca_file`. Clients without one are let through, and the application decides from
    /// [`ClientCertificates`](crate::ClientCertificates) being absent.
    #[must_use]
    pub fn optional(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca: CaSource::File(ca_file.into()),
            required: false,
        }
    }

    /// As [`ClientAuth::required`], with the CA bundle as PEM in memory.
    #[must_use]
    pub fn required_pem(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca: CaSource::Pem(ca_pem.into().into()),
            required: true,
        }
    }

    /// As [`ClientAuth::optional`], with the CA bundle as PEM in memory.
    #[must_use]
    pub fn optional_pem(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca: CaSource::Pem(ca_pem.into().into()),
            required: false,
        }
    }

    /// Whether clients must present a certificate.
    #[must_use]
    pub fn is_required(&self) -> bool {
        self.required
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let (pem, path, name) = match &self.ca {
            CaSource::File(path) => (
                pair::read_file(path)?,
                Some(path.as_path()),
                path.display().to_string(),
            ),
            CaSource::Pem(pem) => (pem.to_vec(), None, "CA bundle PEM (in memory)".to_owned()),
        };
        let certificates = pair::parse_certificates(&pem, path, &name)?;
        let mut roots = RootCertStore::empty();
        for (index, certificate) in certificates.into_iter().enumerate() {
            roots.add(certificate).map_err(|error| {
                TlsError::new(
                    TlsErrorKind::InvalidCertificate,
                    path,
                    format!(
                        "{name}: certificate {} cannot be used as a trust anchor: {error}",
                        index + 1
                    ),
                )
                .with_source(error)
            })?;
        }
        Ok(roots)
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ClientAuth");
        match &self.ca {
            CaSource::File(path) => s.field("ca_file", path),
            CaSource::Pem(pem) => s.field("ca_pem_len", &pem.len()),
        };
        s.field("required", &self.required).finish()
    }
}

/// The TLS settings of a server; [`TlsConfig::build`] turns them into a [`TlsAcceptor`].
///
/// Starts from a default certificate/key pair, served to clients whose server name matches no
/// other pair. Every other setting has a secure default:
///
/// | setting | default | why |
/// |---|---|---|
/// | protocol versions | TLS 1.3, TLS 1.2 | see [`PROTOCOL_VERSIONS`](crate::PROTOCOL_VERSIONS) |
/// | cipher suites | AEAD with ECDHE only | see [`ALLOWED_CIPHER_SUITES`](crate::ALLOWED_CIPHER_SUITES) |
/// | ALPN | `h2`, `http/1.1` | see [`DEFAULT_ALPN`] |
/// | session tickets | on, keys rotate every 6 hours | resumption saves a full handshake; see below |
/// | session cache | 1024 sessions | see [`DEFAULT_SESSION_CACHE_SIZE`] |
/// | 0-RTT early data | off | early data can be replayed by an attacker |
/// | client certificates | not asked for | see [`TlsConfig::client_auth`] |
/// | unknown server names | served the default pair | see [`TlsConfig::refuse_unknown_names`] |
/// | handshake deadline | 10 s | see [`DEFAULT_HANDSHAKE_TIMEOUT`] |
/// | crypto provider | from the crate feature | see [`TlsConfig::provider`] |
///
/// Session tickets are encrypted with the provider crate's `Ticketer`: a random key held only
/// in memory, replaced every 6 hours, the previous one still accepted, so a ticket is good
/// for at most 12 hours and a stolen key exposes at most that window. The keys are not shared
/// between processes: a client resumes only with the replica that issued its ticket (and
/// falls back to a full handshake elsewhere).
#[derive(Clone)]
pub struct TlsConfig {
    default: CertKeyPair,
    sni: Vec<(String, CertKeyPair)>,
    refuse_unknown_names: bool,
    alpn: Vec<Vec<u8>>,
    client_auth: Option<ClientAuth>,
    provider: Option<Arc<CryptoProvider>>,
    session_cache_size: usize,
    handshake_timeout: Duration,
    watch_interval: Duration,
}

impl TlsConfig {
    /// Settings serving `default` to every client, with the secure defaults.
    #[must_use]
    pub fn new(default: CertKeyPair) -> Self {
        Self {
            default,
            sni: Vec::new(),
            refuse_unknown_names: false,
            alpn: DEFAULT_ALPN.iter().map(|p| p.to_vec()).collect(),
            client_auth: None,
            provider: None,
            session_cache_size: DEFAULT_SESSION_CACHE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }

    /// Reads the default pair from PEM files; see [`CertKeyPair::from_pem_files`].
    ///
    /// # Errors
    ///
    /// As [`CertKeyPair::from_pem_files`]: one [`TlsError`] naming the file and the reason.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        CertKeyPair::from_pem_files(cert, key).map(Self::new)
    }

    /// Reads the default pair from PEM in memory; see [`CertKeyPair::from_pem`].
    ///
    /// # Errors
    ///
    /// As [`CertKeyPair::from_pem`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        CertKeyPair::from_pem(cert_pem, key_pem).map(Self::new)
    }

    /// Serves `pair` to clients asking for `name` (SNI).
    ///
    /// `name` is a DNS name (`api.example.com`) or a wildcard of one (`*.example.com`), which
    /// matches exactly one label: `a.example.com`, not `example.com` nor `a.b.example.com`.
    /// Case and a trailing dot do not matter. An exact name wins over a wildcard. The name,
    /// lowercased and without a trailing dot, is also the `certificate` label of the pair's
    /// expiry gauge. Invalid or repeated
    /// names fail [`build`](Self::build).
    #[must_use]
    pub fn sni(mut self, name: impl Into<String>, pair: CertKeyPair) -> Self {
        self.sni.push((name.into(), pair));
        self
    }

    /// Refuses handshakes for server names that are not configured (default: `false`, they
    /// get the default pair).
    ///
    /// A name is known when it matches a name given to [`sni`](Self::sni), or a DNS name of
    /// the default certificate itself. Refused handshakes end with a fatal `access_denied`
    /// alert and count as `unknown_server_name`. Clients that send no server name (those
    /// connecting by IP address) still get the default pair. Turn it on to keep scanners
    /// that probe by address or random names from learning which names the certificates
    /// cover.
    #[must_use]
    pub fn refuse_unknown_names(mut self, refuse: bool) -> Self {
        self.refuse_unknown_names = refuse;
        self
    }

    /// The ALPN protocols offered, most preferred first (default [`DEFAULT_ALPN`]). An empty
    /// list turns ALPN off. Each protocol is 1 to 255 bytes, or [`build`](Self::build) fails.
    #[must_use]
    pub fn alpn<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.alpn = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// Asks clients for a certificate (default: not asked). See [`ClientAuth`].
    #[must_use]
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = Some(client_auth);
        self
    }

    /// Uses this crypto provider (default: the one named by the enabled crate feature,
    /// `aws-lc-rs` or `ring`).
    ///
    /// Required when both features are enabled, or neither. Its cipher suites are narrowed to
    /// [`ALLOWED_CIPHER_SUITES`](crate::ALLOWED_CIPHER_SUITES); its key exchange groups are
    /// used as they are. The library never reads nor installs rustls' process-wide default
    /// provider.
    #[must_use]
    pub fn provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// How many sessions the server-side session cache keeps (default
    /// [`DEFAULT_SESSION_CACHE_SIZE`]); 0 turns the cache off, leaving tickets only.
    #[must_use]
    pub fn session_cache_size(mut self, sessions: usize) -> Self {
        self.session_cache_size = sessions;
        self
    }

    /// The deadline of a whole handshake in [`TlsAcceptor::accept`] (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How often [`TlsAcceptor::watch`] looks at the files (default
    /// [`DEFAULT_WATCH_INTERVAL`]). Must not be zero.
    #[must_use]
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
        self
    }

    /// Checks every setting and builds the acceptor.
    ///
    /// The metric handles are registered with the recorder installed at this moment.
    ///
    /// # Errors
    ///
    /// A [`TlsError`]: no or an ambiguous provider; an invalid or repeated server name; an
    /// invalid ALPN protocol or watch interval; a private key the provider cannot use or that
    /// does not match its certificate (naming both files); an unreadable or empty CA bundle.
    pub fn build(self) -> Result<TlsAcceptor, TlsError> {
        let provider = provider::restrict(&*provider::choose(self.provider)?)?;

        let mut names = Vec::with_capacity(self.sni.len());
        let mut seen = HashSet::new();
        for (name, _) in &self.sni {
            let normal = normalize_name(name)?;
            if !seen.insert(normal.clone()) {
                return Err(TlsError::new(
                    TlsErrorKind::DuplicateServerName,
                    None,
                    format!("server name `{name}` is configured twice"),
                ));
            }
            names.push(normal);
        }
        for protocol in &self.alpn {
            if protocol.is_empty() || protocol.len() > 255 {
                return Err(TlsError::new(
                    TlsErrorKind::InvalidConfig,
                    None,
                    format!(
                        "ALPN protocol {:?} must be 1 to 255 bytes long",
                        String::from_utf8_lossy(protocol)
                    ),
                ));
            }
        }
        if self.watch_interval.is_zero() {
            return Err(TlsError::new(
                TlsErrorKind::InvalidConfig,
                None,
                "the watch interval must be greater than zero".to_owned(),
            ));
        }

        let pairs = std::iter::once((DEFAULT_CERTIFICATE.to_owned(), self.default)).chain(
            names
                .iter()
                .cloned()
                .zip(self.sni.into_iter().map(|(_, pair)| pair)),
        );
        let mut slots = Vec::with_capacity(names.len() + 1);
        let mut loaded = Vec::with_capacity(names.len() + 1);
        for (label, pair) in pairs {
            let certified = pair.parsed.certify(&provider, pair.source.origin())?;
            loaded.push(Arc::new(Loaded {
                certified,
                parsed: Arc::clone(&pair.parsed),
            }));
            slots.push(Slot {
                label: label.into(),
                source: pair.source,
            });
        }

        let resolver = Arc::new(Resolver {
            names: Names::new(&names, self.refuse_unknown_names),
            snapshot: ArcSwap::from_pointee(Snapshot { slots: loaded }),
        });

        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(provider::PROTOCOL_VERSIONS)
            .map_err(|error| {
                TlsError::new(
                    TlsErrorKind::InvalidConfig,
                    None,
                    format!("the crypto provider cannot serve TLS 1.2 or 1.3: {error}"),
                )
                .with_source(error)
            })?;
        let builder = match &self.client_auth {
            Some(client_auth) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(client_auth.roots()?),
                    Arc::clone(&provider),
                );
                let verifier = if client_auth.required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier.build().map_err(|error| {
                    TlsError::new(
                        TlsErrorKind::InvalidConfig,
                        None,
                        format!("cannot build the client certificate verifier: {error}"),
                    )
                    .with_source(error)
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(
            Arc::clone(&resolver) as Arc<dyn rustls::server::ResolvesServerCert>
        );
        config.alpn_protocols = self.alpn;
        config.session_storage = if self.session_cache_size == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(self.session_cache_size)
        };
        if let Some(ticketer) = provider::ticketer()? {
            config.ticketer = ticketer;
        }
        // 0-RTT data can be replayed by an attacker; rustls' default is already off.
        config.max_early_data_size = 0;

        let (status, _) = watch::channel(ReloadStatus::default());
        let acceptor = TlsAcceptor {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                resolver,
                provider,
                slots,
                handshake_timeout: self.handshake_timeout,
                watch_interval: self.watch_interval,
                reload_lock: Mutex::new(()),
                status,
                metrics: Metrics::new(),
                auto_watch: AutoWatch::new(),
            }),
        };
        acceptor.update_expiry();
        acceptor.ensure_watching();
        Ok(acceptor)
    }
}

/// Lowercases a configured server name, drops a trailing dot, and checks it.
fn normalize_name(name: &str) -> Result<String, TlsError> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let base = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !base.contains('*')
        && rustls_pki_types::DnsName::try_from(base).is_ok()
        && base.parse::<std::net::IpAddr>().is_err();
    if valid {
        Ok(lower)
    } else {
        Err(TlsError::new(
            TlsErrorKind::InvalidServerName,
            None,
            format!("server name `{name}` is neither a DNS name nor a `*.` wildcard of one"),
        ))
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("default", &self.default)
            .field("sni", &self.sni)
            .field("refuse_unknown_names", &self.refuse_unknown_names)
            .field(
                "alpn",
                &self
                    .alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect::<Vec<_>>(),
            )
            .field("client_auth", &self.client_auth)
            .field("provider", &self.provider.as_ref().map(|_| "explicit"))
            .field("session_cache_size", &self.session_cache_size)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("watch_interval", &self.watch_interval)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_normalized_and_checked() {
        assert_eq!(
            normalize_name("API.Example.com.").ok().as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            normalize_name("*.example.com").ok().as_deref(),
            Some("*.example.com")
        );
        for bad in [
            "",
            "*.",
            "a.*.example.com",
            "**.example.com",
            "exa mple.com",
            "127.0.0.1",
            "*",
        ] {
            let error = normalize_name(bad).err();
            assert_eq!(
                error.map(|e| e.kind()),
                Some(TlsErrorKind::InvalidServerName),
                "{bad:?}"
            );
        }
    }
}
