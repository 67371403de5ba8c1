//! The axum peer: axum on axum-server, tower_governor's per-IP rate limit, the request
//! metrics recorded by a middleware into metrics-exporter-prometheus (served on the admin
//! address), a per-IP connection limit in an axum-server acceptor, and a graceful shutdown on
//! SIGTERM or SIGINT. What a user of those crates would write from their documentation.
//!
//! ```text
//! cargo run --release --manifest-path benches/peers/Cargo.toml --bin axum-peer -- --listen 127.0.0.1:0 --workers 1
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::accept::{Accept, DefaultAcceptor};
use portcullis_peers::{Args, Counted, PerIp, Tracked};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

fn main() {
    let args = Args::from_env();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
        .block_on(serve(args));
}

async fn serve(args: Args) {
    let metrics = portcullis_peers::install_metrics();

    // tower_governor: `per_nanosecond(n)` replenishes one request every n ns.
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .per_nanosecond((1_000_000_000 / args.rate).max(1))
            .burst_size(u32::try_from(args.rate).unwrap_or(u32::MAX))
            .finish()
            .unwrap_or_else(|| panic!("governor configuration")),
    );
    // Its documentation has the user prune the limiter's map themselves.
    let limiter = Arc::clone(config.limiter());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limiter.retain_recent();
        }
    });

    let app = Router::new()
        .route(
            "/",
            get(|| async { ([("content-type", "text/plain")], "hello\n") }),
        )
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn(track))
        .layer(GovernorLayer { config });

    let admin = Router::new().route("/metrics", get(move || async move { metrics.render() }));
    let admin_listener = std::net::TcpListener::bind(args.admin)
        .unwrap_or_else(|e| panic!("bind {}: {e}", args.admin));
    let listener = std::net::TcpListener::bind(args.listen)
        .unwrap_or_else(|e| panic!("bind {}: {e}", args.listen));
    for socket in [&listener, &admin_listener] {
        socket
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("non-blocking: {e}"));
    }
    let local = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let admin_local = admin_listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"));

    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).unwrap_or_else(|e| panic!("{e}"));
        let mut int = signal(SignalKind::interrupt()).unwrap_or_else(|e| panic!("{e}"));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });

    tokio::spawn(
        axum_server::from_tcp(admin_listener)
            .handle(handle.clone())
            .serve(admin.into_make_service()),
    );
    let server = axum_server::from_tcp(listener)
        .handle(handle)
        .acceptor(PerIpAcceptor {
            open: PerIp::default(),
            max: args.max_conns_per_ip,
        });
    println!("listening on http://{local}");
    println!("metrics on http://{admin_local}/metrics");
    server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .unwrap_or_else(|e| panic!("serve: {e}"));
}

/// The request metrics, as axum's own metrics example records them.
async fn track(request: Request, next: Next) -> impl IntoResponse {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let tracked = Tracked::start(request.method().to_string(), route);
    let response: Response = next.run(request).await;
    tracked.finish(Some(response.status().as_u16()));
    response
}

/// axum-server's default acceptor behind a per-IP connection count.
#[derive(Clone)]
struct PerIpAcceptor {
    open: PerIp,
    max: usize,
}

impl<S: Send + 'static> Accept<TcpStream, S> for PerIpAcceptor {
    type Stream = CountedStream;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(CountedStream, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        // As the baseline and the reference server do.
        let _ = stream.set_nodelay(true);
        let admitted = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.open.admit(peer.ip(), self.max));
        Box::pin(async move {
            let Some(counted) = admitted else {
                return Err(io::Error::other("too many connections from this address"));
            };
            let (stream, service) = DefaultAcceptor.accept(stream, service).await?;
            Ok((
                CountedStream {
                    stream,
                    _counted: counted,
                },
                service,
            ))
        })
    }
}

/// A connection counted against its client IP until it is dropped.
struct CountedStream {
    stream: TcpStream,
    _counted: Counted,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
