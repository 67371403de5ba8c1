//! TLS through portcullis-server with client certificates: the verified chain reaches the handler
//! as a `ClientCertificates` extension; a client without a certificate is refused. Real
//! handshakes over loopback with certificates made by rcgen.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis_listen::Listener;
use portcullis_server::Server;
use portcullis_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use portcullis_tls::rustls::{ClientConfig, RootCertStore};
use portcullis_tls::tokio_rustls::TlsConnector;
use portcullis_tls::{ClientAuth, ClientCertificates, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Pem {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

fn ca() -> (Issuer<'static, KeyPair>, String, CertificateDer<'static>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA");
    (Issuer::new(params, key), cert.pem(), cert.der().clone())
}

fn leaf(issuer: &Issuer<'static, KeyPair>) -> Pem {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, issuer)
        .expect("leaf");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn provider() -> Arc<portcullis_tls::rustls::crypto::CryptoProvider> {
    Arc::new(portcullis_tls::rustls::crypto::aws_lc_rs::default_provider())
}

fn client(ca: &CertificateDer<'static>, identity: Option<&Pem>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(pem) => {
            use portcullis_tls::rustls::pki_types::pem::PemObject;
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(vec![pem.der.clone()], key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

#[tokio::test]
async fn the_verified_client_chain_reaches_the_handler() {
    let (issuer, ca_pem, ca_der) = ca();
    let server_pair = leaf(&issuer);
    let client_pair = leaf(&issuer);
    let acceptor = TlsConfig::from_pem(server_pair.cert.as_bytes(), server_pair.key.as_bytes())
        .expect("server pair")
        .client_auth(ClientAuth::required_pem(ca_pem.into_bytes()))
        .handshake_timeout(Duration::from_secs(5))
        .build()
        .expect("acceptor");
    let expected = client_pair.der.clone();
    let service = tower::service_fn(
        move |request: http::Request<portcullis_server::RequestBody>| {
            let expected = expected.clone();
            async move {
                let seen = request
                    .extensions()
                    .get::<ClientCertificates>()
                    .map(|c| (c.chain().len(), c.end_entity() == Some(&expected)));
                let body = match seen {
                    Some((n, true)) => format!("{n} certificate(s), the client's"),
                    Some((n, false)) => format!("{n} certificate(s), not the client's"),
                    None => "no certificates".to_owned(),
                };
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
            }
        },
    );
    let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().as_inet().expect("inet");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .listener(listener)
            .tls(acceptor)
            .shutdown(async {
                let _ = rx.await;
            })
            .serve(service),
    );

    let name = ServerName::try_from("localhost").expect("name");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut tls = TlsConnector::from(client(&ca_der, Some(&client_pair)))
        .connect(name.clone(), tcp)
        .await
        .expect("handshake with a client certificate");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut response))
        .await
        .expect("answer within 10 s")
        .ok();
    assert!(
        response.ends_with("1 certificate(s), the client's"),
        "{response}"
    );

    // Without a certificate the handshake (or the first read after it, in TLS 1.3) fails.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let refused = match TlsConnector::from(client(&ca_der, None))
        .connect(name, tcp)
        .await
    {
        Err(_) => true,
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await,
                Ok(Err(_)) | Ok(Ok(0))
            )
        }
    };
    assert!(refused, "a client without a certificate was served");
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

#[tokio::test]
async fn one_server_serves_a_plain_and_a_tls_listener() {
    let (issuer, _ca_pem, ca_der) = ca();
    let pair = leaf(&issuer);
    let acceptor = TlsConfig::from_pem(pair.cert.as_bytes(), pair.key.as_bytes())
        .expect("pair")
        .build()
        .expect("acceptor");
    let plain = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let secure = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let plain_addr = plain.local_addr().as_inet().expect("inet");
    let secure_addr = secure.local_addr().as_inet().expect("inet");
    let service = tower::service_fn(
        |_request: http::Request<portcullis_server::RequestBody>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .listener(plain)
            .tls_listeners([secure], acceptor)
            .shutdown(async {
                let _ = rx.await;
            })
            .serve(service),
    );
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    // Plain HTTP on the plain listener.
    let mut tcp = TcpStream::connect(plain_addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .expect("answer")
        .ok();
    assert!(response.ends_with("hello"), "{response}");
    // TLS on the other.
    let tcp = TcpStream::connect(secure_addr).await.expect("connect");
    let mut tls = TlsConnector::from(client(&ca_der, None))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    tls.write_all(request).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut response))
        .await
        .expect("answer")
        .ok();
    assert!(response.ends_with("hello"), "{response}");
    // And plain HTTP on the TLS listener is not served.
    let mut tcp = TcpStream::connect(secure_addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut response)).await;
    assert!(!String::from_utf8_lossy(&response).contains("hello"));
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
