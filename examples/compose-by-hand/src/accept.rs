//! The accept loop and the connection pipeline, by hand: what portcullis-server does for you
//! (with more: PROXY protocol, a handshake cap, per-phase deadlines for HTTP/2 too, minimum
//! data rates, bans, 500s for panics).
//!
//! ```text
//! Listener::accept            never fails, never exits (EMFILE-proof backoff)
//!  -> ConnLimiter::try_acquire  over a cap: closed at once, counted
//!  -> spawn                     the loop never awaits a handshake
//!  -> TlsAcceptor::accept       optional, under the handshake deadline
//!  -> hyper-util auto           HTTP/1.1 or HTTP/2, header read timeout, watched for the drain
//!  -> the tower service         a PeerAddr extension for the rate limit's client address
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use portcullis_limit::{ConnLimiter, PeerAddr};
use portcullis_listen::{Listener, Stream};
use portcullis_shutdown::{CancellationToken, Lifecycle, ShutdownPhase};
use portcullis_tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Service, ServiceBuilder};

/// An error a service or a body may end with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's HTTP/1.1 + HTTP/2 connection builder with the timer installed: without it the
/// header read timeout would not be enforced (and hyper would panic on a timeout it cannot
/// arm). hyper's header read timeout bounds each HTTP/1 request head, from the connection's
/// start or the previous response on, so it also closes idle keep-alive connections.
pub(crate) fn http(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100);
    builder
}

/// What every connection of a listener goes through.
pub(crate) struct Pipeline<S> {
    pub(crate) conns: ConnLimiter,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) http: auto::Builder<TokioExecutor>,
    pub(crate) service: S,
}

/// Accepts until the drain begins; then returns, dropping (closing) the listener so new
/// connections are refused. Every connection is watched by `graceful` so the drain can end
/// it gracefully.
pub(crate) async fn accept_loop<S, B>(
    mut listener: Listener,
    pipeline: Arc<Pipeline<S>>,
    lifecycle: Lifecycle,
    graceful: Arc<GracefulShutdown>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    loop {
        let accepted = tokio::select! {
            // Never an error: failures are counted, logged and backed off inside.
            accepted = listener.accept() => accepted,
            () = lifecycle.reached(ShutdownPhase::Drain) => return,
        };
        let Some(peer) = accepted.peer.as_inet() else {
            continue; // TCP only here; a Unix socket would use try_acquire_global.
        };
        // Right after accept, before a byte is read: over a cap, the connection is closed at
        // once (and counted) instead of waiting in the backlog.
        let permit = match pipeline.conns.try_acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(rejected) => {
                tracing::debug!(%peer, %rejected, "connection refused");
                continue;
            }
        };
        let pipeline = Arc::clone(&pipeline);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit; // the place under the caps, until the connection ends
            pipeline.serve(accepted.stream, peer, watcher).await;
        });
    }
}

impl<S, B> Pipeline<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn serve(&self, stream: Stream, peer: SocketAddr, watcher: Watcher) {
        match &self.tls {
            None => self.serve_http(stream, peer, watcher).await,
            // The handshake, under its deadline, in the connection's own task.
            Some(tls) => match tls.accept(stream).await {
                Ok(stream) => self.serve_http(stream, peer, watcher).await,
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            },
        }
    }

    async fn serve_http<I>(&self, io: I, peer: SocketAddr, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The rate limit keys by the client address; without portcullis-server nobody else
        // tells it (a request without one shares the bucket of 0.0.0.0, with a warning).
        let service = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request
            })
            .service(self.service.clone());
        let connection = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        // `watch` lets the drain end the connection gracefully: HTTP/1 closes after the
        // response in progress (at once when idle), HTTP/2 sends GOAWAY.
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

/// Serves the admin service on `listener` until `stop`: no caps, no rate limit (a scraper or a
/// probe must get through when the server is overloaded), not watched by the drain, so
/// `/readyz` answers 503 throughout it.
pub(crate) async fn admin_loop(
    mut listener: Listener,
    admin: portcullis_metrics::Admin,
    http: auto::Builder<TokioExecutor>,
    stop: CancellationToken,
) {
    let http = Arc::new(http);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (http, admin, stop) = (Arc::clone(&http), admin.clone(), stop.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(accepted.stream);
            let connection = http.serve_connection(io, TowerToHyperService::new(admin));
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
