//! Shared test helpers: certificates made with rcgen, a loopback TLS echo server, clients,
//! and a metrics probe.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use portcullis_tls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use portcullis_tls::rustls::crypto::CryptoProvider;
use portcullis_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use portcullis_tls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use portcullis_tls::tokio_rustls::{TlsConnector, client};
use portcullis_tls::{
    ClientCertificates, HandshakeError, ReloadStatus, TlsAcceptor, TlsConfig, TlsError,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The bound on every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The crypto provider of the enabled feature, for test clients.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    {
        Arc::new(rustls::crypto::ring::default_provider())
    }
}

/// A test certificate authority.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) cert_pem: String,
    pub(crate) cert_der: CertificateDer<'static>,
}

/// A date: year, month, day.
pub(crate) type Ymd = (i32, u8, u8);

/// Series name and sorted labels.
type SeriesKey = (String, Vec<(String, String)>);

/// A certificate with its key, as PEM.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) cert_der: CertificateDer<'static>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        }
    }

    /// An ECDSA P-256 certificate for `names`, valid for server and client authentication.
    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, KeyPair::generate().expect("leaf key"), None)
    }

    /// A certificate with the given key, and optionally validity years (from, to).
    pub(crate) fn leaf_with(
        &self,
        names: &[&str],
        key: KeyPair,
        validity: Option<(Ymd, Ymd)>,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "portcullis-tls test");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("CA as root");
        roots
    }
}

impl Leaf {
    /// The certificate followed by the CA certificate, like a `fullchain.pem`.
    pub(crate) fn chain_pem(&self, ca: &Ca) -> String {
        format!("{}{}", self.cert_pem, ca.cert_pem)
    }

    pub(crate) fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).expect("write certificate");
        std::fs::write(key, &self.key_pem).expect("write key");
    }

    /// Replaces both files by rename, as certbot and most tools do.
    pub(crate) fn replace(&self, cert: &Path, key: &Path) {
        let cert_tmp = cert.with_extension("tmp-cert");
        let key_tmp = key.with_extension("tmp-key");
        std::fs::write(&key_tmp, &self.key_pem).expect("write key");
        std::fs::write(&cert_tmp, &self.cert_pem).expect("write certificate");
        std::fs::rename(&key_tmp, key).expect("rename key");
        std::fs::rename(&cert_tmp, cert).expect("rename certificate");
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

/// A fresh temporary directory, removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("portcullis-tls-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Client configuration trusting `ca`, offering `alpn`.
pub(crate) fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("client versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Client configuration presenting `leaf` as its client certificate.
pub(crate) fn client_config_with_cert(ca: &Ca, leaf: &Leaf) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("client versions")
        .with_root_certificates(ca.roots())
        .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.private_key())
        .expect("client certificate");
    Arc::new(config)
}

/// Client configuration that accepts any server certificate (signatures still checked), to
/// see which certificate the server picks for names the certificate does not cover.
pub(crate) fn client_config_any_cert(sni: bool) -> Arc<ClientConfig> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("client versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.enable_sni = sni;
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the server saw of a completed handshake.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) client_certificates: Option<ClientCertificates>,
    pub(crate) server_name: Option<String>,
}

/// A loopback TLS echo server reporting each handshake's outcome.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    results: mpsc::UnboundedReceiver<Result<Accepted, HandshakeError>>,
}

impl Server {
    pub(crate) async fn start(acceptor: TlsAcceptor) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let accepted = Accepted {
                                alpn: portcullis_tls::negotiated_alpn(&tls).map(<[u8]>::to_vec),
                                client_certificates: ClientCertificates::from_stream(&tls),
                                server_name: tls.get_ref().1.server_name().map(str::to_owned),
                            };
                            let _ = tx.send(Ok(accepted));
                            let mut buf = [0u8; 1024];
                            loop {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if tls.write_all(&buf[..n]).await.is_err()
                                            || tls.flush().await.is_err()
                                        {
                                            break;
                                        }
                                    }
                                }
                            }
                        }
                        Err(error) => {
                            let _ = tx.send(Err(error));
                        }
                    }
                });
            }
        });
        Server { addr, results }
    }

    /// The outcome of the next handshake.
    pub(crate) async fn next(&mut self) -> Result<Accepted, HandshakeError> {
        tokio::time::timeout(WAIT, self.results.recv())
            .await
            .expect("no handshake outcome in time")
            .expect("server task ended")
    }
}

pub(crate) type ClientStream = client::TlsStream<TcpStream>;

/// Connects and completes the client side of the handshake.
pub(crate) async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(io::Error::other)?;
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::other("client handshake timed out"))?
}

/// Sends `message` and checks that it comes back.
pub(crate) async fn exchange(stream: &mut ClientStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message).await?;
    stream.flush().await?;
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::other("echo timed out"))??;
    if back != message {
        return Err(io::Error::other("echo differs"));
    }
    Ok(())
}

/// The end-entity certificate the server presented.
pub(crate) fn served_cert(stream: &ClientStream) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}

/// Waits until the acceptor's reload counts satisfy `done`.
pub(crate) async fn wait_reload(
    acceptor: &TlsAcceptor,
    limit: Duration,
    done: impl FnMut(&ReloadStatus) -> bool,
) -> ReloadStatus {
    let mut status = acceptor.reload_status();
    let seen = tokio::time::timeout(limit, status.wait_for(done))
        .await
        .expect("reload not seen in time")
        .expect("acceptor dropped");
    *seen
}

/// Collects what an acceptor emits through a recorder of its own.
pub(crate) struct MetricsProbe {
    snapshotter: Snapshotter,
    seen: Mutex<HashMap<SeriesKey, f64>>,
}

impl MetricsProbe {
    /// Builds `config` with a fresh debugging recorder.
    pub(crate) fn build(config: TlsConfig) -> Result<(TlsAcceptor, MetricsProbe), TlsError> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let config = with_test_provider(config);
        // Handles resolve at first use; resolve them here, inside the probe's recorder.
        let acceptor = metrics::with_local_recorder(&recorder, || {
            let acceptor = config.build()?;
            acceptor.resolve_metrics();
            Ok::<_, TlsError>(acceptor)
        })?;
        Ok((
            acceptor,
            MetricsProbe {
                snapshotter,
                seen: Mutex::new(HashMap::new()),
            },
        ))
    }

    fn collect(&self) {
        let mut seen = self.seen.lock().expect("probe lock");
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let entry = seen.entry((key.name().to_owned(), labels)).or_insert(0.0);
            match value {
                // A snapshot takes counters back to zero: add up.
                DebugValue::Counter(n) => *entry += n as f64,
                // ... and gauges too: keep the last value that was set.
                DebugValue::Gauge(v) if v.into_inner() != 0.0 => *entry = v.into_inner(),
                _ => {}
            }
        }
    }

    /// The value of the series `name{label=value}`, if it was ever emitted.
    pub(crate) fn value(&self, name: &str, label: &str, value: &str) -> Option<f64> {
        self.collect();
        let seen = self.seen.lock().expect("probe lock");
        seen.get(&(name.to_owned(), vec![(label.to_owned(), value.to_owned())]))
            .copied()
    }

    /// A counter's value (0 when never incremented).
    pub(crate) fn counter(&self, name: &str, label: &str, value: &str) -> u64 {
        self.value(name, label, value).unwrap_or(0.0) as u64
    }
}

/// `TlsConfig::build` for tests that are not about the provider choice: with both provider
/// features on (`cargo test --features ring`), the test provider is named explicitly, as an
/// application would have to.
pub(crate) trait TestBuild {
    fn build_for_test(self) -> Result<TlsAcceptor, TlsError>;
}

impl TestBuild for TlsConfig {
    fn build_for_test(self) -> Result<TlsAcceptor, TlsError> {
        with_test_provider(self).build()
    }
}

pub(crate) fn with_test_provider(config: TlsConfig) -> TlsConfig {
    if cfg!(all(feature = "aws-lc-rs", feature = "ring")) {
        config.provider(provider())
    } else {
        config
    }
}
