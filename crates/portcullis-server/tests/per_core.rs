//! One runtime per core: each thread serves its own share of the SO_REUSEPORT listeners.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis_listen::ListenerConfig;
use portcullis_server::Server;

/// `cores` SO_REUSEPORT listeners on one loopback port, created on a runtime that stays alive
/// (the listeners are moved off it by `serve_per_core`), and their address.
fn reuseport_listeners(
    cores: NonZeroUsize,
) -> (
    tokio::runtime::Runtime,
    Vec<portcullis_listen::Listener>,
    std::net::SocketAddr,
) {
    let setup = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listeners = setup.block_on(async {
        ListenerConfig::default()
            .acceptors(cores)
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind")
    });
    let addr = listeners[0].local_addr().as_inet().expect("inet");
    (setup, listeners, addr)
}

#[test]
fn per_core_threads_share_the_connections_and_drain_together() {
    let cores = NonZeroUsize::new(2).expect("2");
    let (setup, listeners, addr) = reuseport_listeners(cores);
    let builder = Server::builder().listeners(listeners);
    assert_eq!(builder.local_addrs().len(), 2);

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        builder
            .shutdown(async {
                let _ = rx.await;
            })
            .serve_per_core(cores, || {
                tower::service_fn(
                    |_request: http::Request<portcullis_server::RequestBody>| async {
                        let name = std::thread::current().name().unwrap_or("?").to_owned();
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(name),
                        )))
                    },
                )
            })
    });

    let mut threads = HashSet::new();
    for _ in 0..40 {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).expect("body").to_owned();
        threads.insert(body);
    }
    assert_eq!(
        threads,
        HashSet::from([
            "portcullis-core-0".to_owned(),
            "portcullis-core-1".to_owned()
        ]),
        "both cores served connections"
    );

    let _ = tx.send(());
    let report = server
        .join()
        .expect("server thread")
        .expect("serve_per_core");
    assert_eq!(report.connections, 40);
    assert!(report.is_clean());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listeners closed after the drain"
    );
    drop(setup);
}

#[test]
fn per_core_forced_drain_cuts_a_hung_request_on_every_core() {
    let cores = NonZeroUsize::new(2).expect("2");
    let (setup, listeners, addr) = reuseport_listeners(cores);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = std::sync::Mutex::new(entered_tx);
    let server = std::thread::spawn(move || {
        Server::builder()
            .listeners(listeners)
            .drain_timeout(Duration::from_millis(300))
            .shutdown(async {
                let _ = rx.await;
            })
            .serve_per_core(cores, move || {
                let entered = entered_tx.lock().expect("lock").clone();
                tower::service_fn(
                    move |_request: http::Request<portcullis_server::RequestBody>| {
                        let _ = entered.send(());
                        async {
                            // Hung handler: never answers by itself.
                            std::future::pending::<()>().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::new(),
                            )))
                        }
                    },
                )
            })
    });
    // Several hung requests, so that both cores very likely hold one.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        entered_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("request reached its handler");
        streams.push(stream);
    }
    let started = std::time::Instant::now();
    let _ = tx.send(());
    let report = server
        .join()
        .expect("server thread")
        .expect("serve_per_core");
    assert_eq!(report.forced, 8, "{report:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "forced at the 300 ms deadline, took {:?}",
        started.elapsed()
    );
    drop(setup);
}

#[test]
fn per_core_waits_for_tasks_handlers_spawned_on_their_core() {
    let cores = NonZeroUsize::new(2).expect("2");
    let (setup, listeners, addr) = reuseport_listeners(cores);
    let token = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (token, tasks, finished) = (token.clone(), tasks.clone(), finished.clone());
        std::thread::spawn(move || {
            Server::builder()
                .listeners(listeners)
                .shutdown_token(token.clone())
                .track_tasks(tasks.clone())
                .shutdown(async {
                    let _ = rx.await;
                })
                .serve_per_core(cores, move || {
                    let (token, tasks, finished) = (token.clone(), tasks.clone(), finished.clone());
                    tower::service_fn(
                        move |_request: http::Request<portcullis_server::RequestBody>| {
                            // A background job started by the handler, on this core's runtime,
                            // that needs 300 ms to finish once the shutdown begins.
                            let (token, finished) = (token.clone(), finished.clone());
                            tasks.spawn(async move {
                                token.cancelled().await;
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                finished.store(true, std::sync::atomic::Ordering::SeqCst);
                            });
                            async {
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        },
                    )
                })
        })
    };
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let _ = tx.send(());
    let report = server
        .join()
        .expect("server thread")
        .expect("serve_per_core");
    assert!(
        finished.load(std::sync::atomic::Ordering::SeqCst),
        "the task ran to its end before the core stopped"
    );
    assert_eq!(report.tasks_left, 0, "{report:?}");
    assert!(report.is_clean());
    drop(setup);
}
