//! A server on a Unix domain socket: same HTTP stack, `ConnInfo` names the socket path.

mod common;

use bytes::Bytes;
use common::Running;
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use portcullis::listen::ListenerConfig;

#[tokio::test]
async fn serves_http_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("portcullis-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("server.sock");
    let listener = ListenerConfig::default()
        .bind_unix(&path, Some(0o600))
        .expect("bind unix");
    let service = tower::service_fn(
        |request: http::Request<portcullis::server::RequestBody>| async move {
            let local = request
                .extensions()
                .get::<portcullis::server::ConnInfo>()
                .map(|info| info.local.to_string())
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(local))))
        },
    );
    let server = Running::start_on(listener, |b| b, service);

    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = http::Request::get("/")
        .header("host", "unix")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (status, body) = common::status_and_body(response).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("unix:{}", path.display()));

    drop(sender);
    server.stop().await;
    assert!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
