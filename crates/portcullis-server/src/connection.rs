//! One connection, from accept to close, as a sequence of stages:
//!
//! ```text
//! accepted ─▶ proxy_header ─▶ tls_handshake ─▶ http ─▶ closed
//!               (trusted        (TLS listeners)   (hyper-util auto, the deadlines of
//!                peers only)                       `driver`, the application's service)
//! ```
//!
//! Each stage either hands the next one what it needs or returns the reason the connection
//! closed; [`Closing`] books that reason (and the connection's end) even if a stage panics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::RequestBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::TokioIo;
use portcullis_limit::{BanReason, ConnPermit, PeerAddr};
use portcullis_listen::proxy::Prefixed;
use portcullis_listen::{Accepted, Addr, ListenerId};
use portcullis_shutdown::ShutdownPhase;
use portcullis_tls::ClientCertificates;
use tokio::time::Instant;
use tower::Service;

use crate::BoxError;
use crate::accept::Shared;
use crate::driver::Driver;
use crate::info::ConnInfo;
use crate::io::{Agreed, ConnIo, TrackedIo};
use crate::metrics::CloseReason;
use crate::service::{ConnBans, ConnService};
use crate::state::ConnState;

/// The stream a connection starts with, bytes read past a PROXY header included.
type Stream = Prefixed<portcullis_listen::Stream>;

/// Records how a connection ended when dropped, even if its task panicked.
struct Closing<'a, S> {
    shared: &'a Shared<S>,
    started: Instant,
    reason: CloseReason,
}

impl<S> Drop for Closing<'_, S> {
    fn drop(&mut self) {
        let shared = self.shared;
        let metrics = &shared.metrics;
        if self.reason == CloseReason::DrainForced {
            shared.forced.fetch_add(1, Ordering::Relaxed);
        } else if shared.lifecycle.phase().is_draining() {
            shared.drained.fetch_add(1, Ordering::Relaxed);
        }
        shared.open.fetch_sub(1, Ordering::Relaxed);
        metrics.closed(self.reason).increment(1);
        metrics.active.decrement(1.0);
        metrics
            .duration
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The connection's task: runs every stage and books how it ended.
pub(crate) async fn serve_connection<S, B>(
    shared: Arc<Shared<S>>,
    accepted: Accepted,
    permit: ConnPermit,
    started: Instant,
) where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    shared.open.fetch_add(1, Ordering::Relaxed);
    shared.metrics.active.increment(1.0);
    // Reports `Error` unless a stage returns: a panic anywhere below still closes the books
    // on this connection.
    let mut closing = Closing {
        shared: &shared,
        started,
        reason: CloseReason::Error,
    };
    closing.reason = match stages(&shared, accepted, permit).await {
        Ok(reason) | Err(reason) => reason,
    };
}

/// Every stage in order; `Err` is a close before HTTP.
async fn stages<S, B>(
    shared: &Arc<Shared<S>>,
    accepted: Accepted,
    mut permit: ConnPermit,
) -> Result<CloseReason, CloseReason>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Accepted {
        stream,
        peer,
        local,
        listener,
        ..
    } = accepted;
    let (stream, peer, proxied_by) = proxy_header(shared, stream, peer, &mut permit).await?;
    let (stream, agreed, client_certificates) =
        tls_handshake(shared, listener, stream, &peer).await?;
    let info = shared.conn.info.then(|| ConnInfo {
        peer: peer.clone(),
        local,
        listener,
        proxied_by,
    });
    Ok(http(
        shared,
        stream,
        agreed,
        permit,
        &peer,
        info,
        client_certificates,
    )
    .await)
}

/// Reads the PROXY protocol header of a connection from a trusted proxy: the client it names
/// becomes the peer (and is held to the per-client cap). Other connections pass as they are.
async fn proxy_header<S>(
    shared: &Shared<S>,
    stream: portcullis_listen::Stream,
    peer: Addr,
    permit: &mut ConnPermit,
) -> Result<(Stream, Addr, Option<Addr>), CloseReason> {
    let stream = Prefixed::new(stream);
    let Some(proxy) = shared.conn.proxy_for(&peer) else {
        return Ok((stream, peer, None));
    };
    // Bounded by the header deadline; a forced drain does not wait for it. On the heap, like
    // the TLS handshake: connections from no proxy should not carry room for it in their task.
    let read = Box::pin(async {
        tokio::select! {
            biased;
            () = shared.lifecycle.reached(ShutdownPhase::Forced) => None,
            read = proxy.read_header(stream.into_inner()) => Some(read),
        }
    });
    let read = read.await.ok_or(CloseReason::DrainForced)?;
    let (header, rest) = read.map_err(|error| {
        tracing::debug!(%peer, %error, "PROXY header refused; connection closed");
        CloseReason::Refused
    })?;
    let Some(source) = header.source else {
        return Ok((rest, peer, None)); // a LOCAL header: the proxy speaking for itself
    };
    if let Err(turned) = shared.conn.admit_client(permit, source.ip()) {
        tracing::debug!(%source, ?turned, "connection refused");
        return Err(CloseReason::Refused);
    }
    Ok((rest, Addr::Inet(source), Some(peer)))
}

/// The TLS handshake on a TLS listener, under one deadline with the wait for a place under the
/// handshake cap. Returns the stream, the protocol ALPN agreed on, and a verified client chain.
async fn tls_handshake<S>(
    shared: &Shared<S>,
    listener: ListenerId,
    stream: Stream,
    peer: &Addr,
) -> Result<(ConnIo, Option<Agreed>, Option<ClientCertificates>), CloseReason> {
    let Some(tls) = shared.conn.tls_for(listener) else {
        return Ok((ConnIo::Left(stream), None, None));
    };
    let deadline = Instant::now() + tls.handshake_timeout();
    // On the heap, like the driver: rustls' state is large, and plain connections should not
    // carry room for it in their task.
    let handshake = Box::pin(async {
        // No place under the handshake cap in time: the server's overload, not the client's
        // fault (no strike).
        let _place = shared
            .conn
            .handshakes
            .acquire_within(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let accepted = tls.accept_until(stream, deadline).await.ok();
        if accepted.is_none()
            && let Some(client) = peer.ip()
        {
            shared.conn.strike(client, BanReason::TLS_HANDSHAKE);
        }
        accepted
    });
    // A forced drain does not wait for it.
    let accepted = tokio::select! {
        biased;
        () = shared.lifecycle.reached(ShutdownPhase::Forced) => return Err(CloseReason::DrainForced),
        accepted = handshake => accepted,
    };
    // Refused or failed: counted (and logged at debug) by the limiter or the acceptor.
    let stream = accepted.ok_or(CloseReason::Refused)?;
    let certificates = ClientCertificates::from_stream(&stream);
    // The protocol ALPN agreed on is the one the client must speak; without one it is told
    // from the first bytes.
    let agreed = match portcullis_tls::negotiated_alpn(&stream) {
        Some(b"h2") => Some(Agreed::Http2),
        Some(b"http/1.1") => Some(Agreed::Http1),
        // HTTP/2 over TLS needs ALPN (RFC 9113): a client that agreed on nothing speaks
        // HTTP/1.1, unless the server offers no ALPN at all.
        _ if tls.server_config().alpn_protocols.is_empty() => None,
        _ => Some(Agreed::Http1),
    };
    Ok((ConnIo::Right(Box::new(stream)), agreed, certificates))
}

/// HTTP/1.1 or HTTP/2 over hyper-util, under the connection's deadlines, in the peer's scope.
async fn http<S, B>(
    shared: &Arc<Shared<S>>,
    stream: ConnIo,
    agreed: Option<Agreed>,
    permit: ConnPermit,
    peer: &Addr,
    info: Option<ConnInfo>,
    client_certificates: Option<ClientCertificates>,
) -> CloseReason
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let scope = peer.as_inet();
    let peer_addr = scope.filter(|_| shared.conn.peer).map(PeerAddr);
    // The connection's own deadlines (greeting, header, idle) start now that PROXY and TLS
    // are done; the accept instant still dates the connection for its duration metric.
    let state = ConnState::with_response_rate(Instant::now(), shared.http.min_response_rate);
    // The caps' place travels with the I/O: an upgraded connection (a WebSocket, say) keeps
    // holding it after hyper hands the socket to the application.
    let io = TokioIo::new(
        TrackedIo::new(stream, Arc::clone(&state))
            .agreed(agreed)
            .holding(permit),
    );
    let bans = shared
        .conn
        .bans
        .as_ref()
        .zip(peer.ip())
        .map(|(bans, peer)| ConnBans {
            bans: bans.clone(),
            peer,
            forwarded: bans.forwards(peer),
        });
    let service = ConnService::new(
        shared.service.clone(),
        Arc::clone(&state),
        Arc::clone(&shared.metrics),
        info,
        peer_addr,
        client_certificates,
        shared.actions.clone(),
    )
    .min_body_rate(shared.http.min_body_rate)
    .bans(bans);
    // With `PeerAddr` (so not on the admin listener); a Unix socket's peer has no
    // `SocketAddr`, so its requests carry no `ConnectInfo`.
    #[cfg(feature = "axum")]
    let service = service.connect_info(peer_addr.map(|PeerAddr(addr)| addr));
    // Boxed as soon as it is built: hyper's connection is kilobytes large (room for HTTP/2
    // whatever the protocol), and every move of it, into the driver, into the task, would
    // copy all of it.
    let conn = Box::pin(shared.builder.serve_connection_with_upgrades(io, service));
    // Boxed too: a task's future is copied whole when it is spawned and when it completes, so
    // the connection's task holds only a pointer to the driver.
    let driver = Box::pin(Driver::new(
        conn,
        state,
        shared.http.header_timeout,
        shared.http.idle_timeout,
        shared.lifecycle.watch(),
        shared.actions.watch(),
    ));
    // The peer scope serves the rate limit layer without a per-request extension.
    let reason = match scope {
        Some(peer) => PeerAddr::scope(peer, driver).await,
        None => driver.await,
    };
    if reason == CloseReason::Malformed
        && let Some(client) = peer.ip()
    {
        shared.conn.strike(client, BanReason::MALFORMED);
    }
    reason
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Future, Ready};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::util::ServiceFn;

    use super::serve_connection;
    use crate::RequestBody;

    type App =
        ServiceFn<fn(Request<RequestBody>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>>;

    /// The size of the future an `async fn` of four arguments returns, without calling it.
    fn future_size<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// tokio copies a task's future whole when it spawns it and when it completes, so what a
    /// connection's task holds inline costs every connection; hyper's connection, the driver
    /// and the PROXY and TLS stages live on the heap.
    #[test]
    fn a_connection_task_holds_under_a_kib_inline() {
        let size = future_size(serve_connection::<App, Full<Bytes>>);
        assert!(size < 1024, "the connection's task future is {size} bytes");
    }
}
