//! What a completed handshake tells about the client: its certificates and its ALPN choice.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;

/// The certificate chain a client presented and the server verified (end-entity first).
///
/// portcullis-server inserts it as a request extension on every request of a connection whose client
/// presented a certificate; handlers read it with `request.extensions().get::<ClientCertificates>()`
/// (or axum's `Extension<ClientCertificates>`). Absent when client authentication is off, or
/// optional and the client sent none. Cloning is cheap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificates(pub Arc<[CertificateDer<'static>]>);

impl ClientCertificates {
    /// The verified client chain of an accepted connection, or `None` if the client presented
    /// no certificate.
    #[must_use]
    pub fn from_stream<IO>(stream: &TlsStream<IO>) -> Option<Self> {
        let certificates = stream.get_ref().1.peer_certificates()?;
        if certificates.is_empty() {
            return None;
        }
        Some(Self(
            certificates
                .iter()
                .map(|certificate| certificate.clone().into_owned())
                .collect(),
        ))
    }

    /// The client's own certificate, the first of the chain.
    #[must_use]
    pub fn end_entity(&self) -> Option<&CertificateDer<'static>> {
        self.0.first()
    }

    /// The whole chain, end-entity first.
    #[must_use]
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0
    }
}

/// The ALPN protocol agreed in the handshake (`b"h2"`, `b"http/1.1"`), if any. portcullis-server
/// uses it to pick HTTP/2 or HTTP/1.1 without sniffing the first bytes.
#[must_use]
pub fn negotiated_alpn<IO>(stream: &TlsStream<IO>) -> Option<&[u8]> {
    stream.get_ref().1.alpn_protocol()
}
