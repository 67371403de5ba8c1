//! Adapts a tower service to hyper for one connection: request tracking, and panics and
//! errors turned into 500 answers.

use std::future::Future;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::Service;
use tower::util::Oneshot;

use portcullis_limit::metrics::{BAN_REJECTIONS_TOTAL, LABEL_AT};
use portcullis_limit::{Bans, PeerAddr, Strike};
use portcullis_tls::ClientCertificates;

use crate::BoxError;
use crate::HostProblem;
use crate::body::ResponseBody;
use crate::host::HostCache;
use crate::info::ConnInfo;
use crate::metrics::{CloseReason, ServerMetrics};
use crate::rate::{BodyRate, BodyShared, MinRate, RequestBody, ResponseRate, StreamWatch};
use crate::state::{ConnState, InFlight};
use portcullis_health::OverloadSignal;

const INTERNAL_ERROR_BODY: &[u8] = b"internal server error\n";
const BANNED_BODY: &[u8] = b"too many requests: this client is banned for a while\n";
const SLOW_BODY: &[u8] = b"request timeout: the request body arrived too slowly\n";
const SHED_BODY: &[u8] = b"service unavailable: the server is overloaded, retry shortly\n";

/// The `Retry-After` of a request shed under overload, in seconds: about the overload
/// manager's default hold, the least an action stays on.
pub(crate) const SHED_RETRY_AFTER: u64 = 1;

/// The bans as one connection applies them to its requests.
#[derive(Debug)]
pub(crate) struct ConnBans {
    pub(crate) bans: Bans,
    /// The connection's client (after a PROXY header), or the trusted proxy it came through.
    pub(crate) peer: IpAddr,
    /// Whether `peer` is a trusted proxy: each request names its client in a forwarding
    /// header, and a banned client gets 429 here (the proxy's connection stays open).
    pub(crate) forwarded: bool,
}

impl ConnBans {
    /// The client of a request on this connection: the peer, or the client a trusted
    /// proxy's forwarding header names.
    fn client_of(&self, headers: &http::HeaderMap) -> IpAddr {
        match self.forwarded {
            true => self.bans.client_of(self.peer, headers),
            false => self.peer,
        }
    }
}

/// The hyper service of one connection.
#[derive(Debug)]
pub(crate) struct ConnService<S> {
    inner: S,
    state: Arc<ConnState>,
    metrics: Arc<ServerMetrics>,
    info: Option<ConnInfo>,
    peer: Option<PeerAddr>,
    client_certificates: Option<ClientCertificates>,
    bans: Option<Arc<ConnBans>>,
    /// The connection's last valid `Host`.
    host: HostCache,
    /// The server's minimum body rate.
    min_body_rate: MinRate,
    /// The overload manager's actions: shed requests, no keep-alive.
    overload: OverloadSignal,
    /// axum's extension for `ConnectInfo<SocketAddr>` extractors: the client's address (the
    /// one a trusted PROXY header names, or the TCP peer), built once per connection.
    #[cfg(feature = "axum")]
    connect_info: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
}

impl<S> ConnService<S> {
    pub(crate) fn new(
        inner: S,
        state: Arc<ConnState>,
        metrics: Arc<ServerMetrics>,
        info: Option<ConnInfo>,
        peer: Option<PeerAddr>,
        client_certificates: Option<ClientCertificates>,
        overload: OverloadSignal,
    ) -> Self {
        Self {
            inner,
            state,
            metrics,
            info,
            peer,
            client_certificates,
            bans: None,
            host: HostCache::default(),
            min_body_rate: MinRate::OFF,
            overload,
            #[cfg(feature = "axum")]
            connect_info: None,
        }
    }

    /// Holds request bodies to `rate` (the responses' rate is the connection's, in its state).
    pub(crate) fn min_body_rate(mut self, rate: MinRate) -> Self {
        self.min_body_rate = rate;
        self
    }

    /// Applies `bans` to every request: answers with their status (or a [`Strike`]
    /// extension) count as refusals of the request's client.
    pub(crate) fn bans(mut self, bans: Option<ConnBans>) -> Self {
        self.bans = bans.map(Arc::new);
        self
    }

    /// Inserts axum's `ConnectInfo(client)` into every request, for handlers written for
    /// `axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())`.
    #[cfg(feature = "axum")]
    pub(crate) fn connect_info(mut self, client: Option<std::net::SocketAddr>) -> Self {
        self.connect_info = client.map(axum::extract::ConnectInfo);
        self
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<S, B>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(problem) = crate::host::check_cached(&request, &self.host) {
            self.metrics.rejected(problem).increment(1);
            if let Some(conn) = &self.bans {
                let client = conn.client_of(request.headers());
                conn.bans
                    .strike(client, portcullis_limit::BanReason::MALFORMED);
            }
            return self.answer(Refusal::Host(problem));
        }
        let strike = match &self.bans {
            None => None,
            Some(conn) => {
                let client = conn.client_of(request.headers());
                // A banned client is answered here and the application never sees the
                // request: behind a trusted proxy (whose connection stays open for its other
                // clients), or on a connection it opened before its ban (which then closes).
                if let Some(left) = conn.bans.check(client) {
                    metrics::counter!(BAN_REJECTIONS_TOTAL, LABEL_AT => "request").increment(1);
                    let retry_after = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                    return self.answer(Refusal::Banned {
                        retry_after,
                        close: !conn.forwarded,
                    });
                }
                Some((Arc::clone(conn), client))
            }
        };
        // One atomic load while nothing is in force.
        let actions = self.overload.current();
        let http2 = request.version() == http::Version::HTTP_2;
        let close = actions.keep_alive_off() && !http2;
        if actions.shedding() {
            self.metrics.shed.increment(1);
            return self.answer(Refusal::Shed { close });
        }
        if let Some(info) = &self.info {
            request.extensions_mut().insert(info.clone());
        }
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        if let Some(certificates) = &self.client_certificates {
            request.extensions_mut().insert(certificates.clone());
        }
        #[cfg(feature = "axum")]
        if let Some(connect_info) = self.connect_info {
            request.extensions_mut().insert(connect_info);
        }
        let in_flight = self.state.request_started();
        // A request with a body gets its timing (and the handle `MinRateLayer` uses); one
        // without (most GETs) costs nothing more.
        let (request, body) = if request.body().is_end_stream() {
            (request.map(RequestBody::untracked), None)
        } else {
            self.state.body_started();
            let shared = BodyShared::new(Arc::clone(&self.state), self.min_body_rate);
            let mut request = request.map(|b| RequestBody::tracked(b, Arc::clone(&shared)));
            request
                .extensions_mut()
                .insert(BodyRate(Arc::clone(&shared)));
            (request, Some(shared))
        };
        let mut service = self.inner.clone();
        // Most services are always ready: ask once without a real waker and call at once,
        // so the future hyper stores is just the application's. A service that is not ready
        // is driven the usual way (`Oneshot` polls readiness with the real waker).
        let mut noop = Context::from_waker(Waker::noop());
        let call = match catch_unwind(AssertUnwindSafe(|| service.poll_ready(&mut noop))) {
            Ok(Poll::Ready(Ok(()))) => {
                match catch_unwind(AssertUnwindSafe(move || service.call(request))) {
                    Ok(future) => Call::Called { future },
                    Err(payload) => self.failed_by_panic(payload.as_ref()),
                }
            }
            Ok(Poll::Ready(Err(error))) => self.failed_by_error(error.into()),
            Ok(Poll::Pending) => Call::NotReady {
                oneshot: Box::pin(Oneshot::new(service, request)),
            },
            Err(payload) => self.failed_by_panic(payload.as_ref()),
        };
        ResponseFuture {
            call,
            in_flight: Some(in_flight),
            metrics: Arc::clone(&self.metrics),
            strike,
            body,
            wire: Wire::of(http2, close),
        }
    }
}

impl<S> ConnService<S> {
    /// A request the server answers itself, without calling the application.
    fn answer<B>(&self, refusal: Refusal) -> ResponseFuture<S, B>
    where
        S: Service<Request<RequestBody>, Response = Response<B>>,
    {
        ResponseFuture {
            call: Call::Refused { refusal },
            in_flight: Some(self.state.request_started()),
            metrics: Arc::clone(&self.metrics),
            strike: None,
            body: None,
            wire: Wire::Http1,
        }
    }

    fn failed_by_panic<C>(&self, payload: &(dyn std::any::Any + Send)) -> C
    where
        C: From<Failed>,
    {
        let message = panic_message(payload);
        tracing::error!(panic = message, "handler panicked; answering 500");
        self.metrics.panics.increment(1);
        C::from(Failed)
    }

    fn failed_by_error<C>(&self, error: BoxError) -> C
    where
        C: From<Failed>,
    {
        tracing::error!(%error, "service returned an error; answering 500");
        self.metrics.errors.increment(1);
        C::from(Failed)
    }
}

/// The request failed before the application produced a future; already counted and logged.
#[derive(Debug)]
pub(crate) struct Failed;

pin_project! {
    /// Where one request's call to the application stands.
    #[project = CallProj]
    pub(crate) enum Call<S>
    where
        S: Service<Request<RequestBody>>,
    {
        Called { #[pin] future: S::Future },
        // Rare (the service was not ready at once), so boxed: the common future stays small.
        NotReady { oneshot: Pin<Box<Oneshot<S, Request<RequestBody>>>> },
        Failed,
        // Answered by the server itself.
        Refused { refusal: Refusal },
    }
}

impl<S: Service<Request<RequestBody>>> From<Failed> for Call<S> {
    fn from(_: Failed) -> Self {
        Call::Failed
    }
}

pin_project! {
    /// Drives the application's future for one request.
    pub(crate) struct ResponseFuture<S, B>
    where
        S: Service<Request<RequestBody>, Response = Response<B>>,
    {
        #[pin]
        call: Call<S>,
        in_flight: Option<InFlight>,
        metrics: Arc<ServerMetrics>,
        // With bans: where a refusal of this request's client is counted.
        strike: Option<(Arc<ConnBans>, IpAddr)>,
        // A request with a body: its timing.
        body: Option<Arc<BodyShared>>,
        // How the response goes out (one byte: the future's size, and with it the moves of
        // the keep-alive path, is what it was before the overload manager's close).
        wire: Wire,
    }
}

/// How a response goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// HTTP/1, the connection kept alive as hyper decides.
    Http1,
    /// HTTP/1 under overload with keep-alive off: `Connection: close`.
    Http1Close,
    /// HTTP/2: the stream's response is held to the response rate by its task.
    Http2,
}

impl Wire {
    fn of(http2: bool, close: bool) -> Self {
        match (http2, close) {
            (true, _) => Wire::Http2,
            (false, true) => Wire::Http1Close,
            (false, false) => Wire::Http1,
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.in_flight.is_none() {
            // Polled after completion: a contract violation by the caller. Stay pending
            // rather than poll the finished call again.
            return Poll::Pending;
        }
        let polled = match this.call.as_mut().project() {
            CallProj::Called { future } => {
                catch_unwind(AssertUnwindSafe(|| future.poll(cx).map_err(Some)))
            }
            CallProj::NotReady { oneshot } => {
                catch_unwind(AssertUnwindSafe(|| oneshot.as_mut().poll(cx).map_err(Some)))
            }
            CallProj::Failed => Ok(Poll::Ready(Err(None))),
            CallProj::Refused { refusal } => {
                let refusal = *refusal;
                return match this.in_flight.take() {
                    Some(in_flight) => Poll::Ready(Ok(refusal.response(in_flight))),
                    None => Poll::Pending,
                };
            }
        };
        let outcome = match polled {
            Ok(Poll::Pending) => match this.body.as_ref() {
                // The body fell below its rate while the application waited: answer now,
                // and drop the application's future (and with it the body).
                Some(body) if body.poll_violated(cx.waker()) => {
                    this.call.set(Call::Failed);
                    Err(())
                }
                _ => return Poll::Pending,
            },
            Ok(Poll::Ready(Ok(response))) => Ok(response),
            Ok(Poll::Ready(Err(None))) => Err(()),
            Ok(Poll::Ready(Err(Some(error)))) => {
                let error: BoxError = error.into();
                tracing::error!(%error, "service returned an error; answering 500");
                this.metrics.errors.increment(1);
                Err(())
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::error!(panic = message, "handler panicked; answering 500");
                this.metrics.panics.increment(1);
                Err(())
            }
        };
        let Some(in_flight) = this.in_flight.take() else {
            return Poll::Pending;
        };
        if let Some(body) = this.body.as_ref().filter(|body| body.is_violated()) {
            return Poll::Ready(Ok(slow_body(
                body,
                in_flight,
                *this.wire == Wire::Http2,
                this.metrics,
            )));
        }
        Poll::Ready(Ok(match outcome {
            Ok(response) => {
                if let Some((conn, client)) = this.strike.take() {
                    let reason = response
                        .extensions()
                        .get::<Strike>()
                        .map(|strike| strike.0)
                        .or_else(|| conn.bans.status_reason(response.status().as_u16()));
                    if let Some(reason) = reason {
                        conn.bans.strike(client, reason);
                    }
                }
                let own_rate = response.extensions().get::<ResponseRate>().map(|r| r.0);
                // HTTP/1: the route's rate holds the connection's writes of this response. On
                // HTTP/2 it holds its stream only: the connection carries other streams.
                let http2 = *this.wire == Wire::Http2;
                if let (Some(rate), Some(state), false) = (own_rate, in_flight.state(), http2) {
                    state.override_write_rate(rate);
                }
                // HTTP/2: the stream's response is held to its rate by the stream's task.
                let stream = match (http2, in_flight.state()) {
                    (true, Some(state)) => StreamWatch::current().map(|watch| {
                        watch.bind(state);
                        (watch, own_rate.unwrap_or(state.response_rate()))
                    }),
                    _ => None,
                };
                let body = this.body.take();
                let mut response =
                    response.map(|inner| ResponseBody::rated(inner, in_flight, body, stream));
                if *this.wire == Wire::Http1Close {
                    closing(&mut response);
                }
                response
            }
            Err(()) => internal_error(in_flight),
        }))
    }
}

/// Adds `Connection: close` to an HTTP/1 response while the overload manager keeps no
/// connection alive. Out of line: the keep-alive path does not carry it.
#[cold]
#[inline(never)]
fn closing<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, crate::host::CLOSE);
}

/// The answer to a request whose body fell below its rate: 408, then the connection closes
/// (HTTP/1) or the stream is reset (HTTP/2: the request's body is dropped unfinished once the
/// answer is sent).
fn slow_body<B>(
    body: &BodyShared,
    in_flight: InFlight,
    http2: bool,
    metrics: &ServerMetrics,
) -> Response<ResponseBody<B>> {
    tracing::debug!("request body below its minimum rate; answering 408");
    let mut response = Response::new(ResponseBody::fixed(SLOW_BODY, in_flight));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if http2 {
        metrics.streams_reset_body.increment(1);
    } else {
        headers.insert(http::header::CONNECTION, crate::host::CLOSE);
        body.conn.hint_close(CloseReason::MinBodyRate);
    }
    response
}

fn internal_error<B>(in_flight: InFlight) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::fixed(INTERNAL_ERROR_BODY, in_flight));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request the server answers itself.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    /// The request's client is banned: 429 with this many seconds in `Retry-After`, and the
    /// connection closed unless it is a trusted proxy's.
    Banned { retry_after: u64, close: bool },
    /// Its `Host` breaks RFC 9112: 400, and the connection closes.
    Host(HostProblem),
    /// The overload manager sheds requests: 503 with `Retry-After`; the connection closes
    /// when keep-alive is off too.
    Shed { close: bool },
}

impl Refusal {
    fn response<B>(self, in_flight: InFlight) -> Response<ResponseBody<B>> {
        let (status, body) = match self {
            Refusal::Banned { .. } => (StatusCode::TOO_MANY_REQUESTS, BANNED_BODY),
            Refusal::Host(problem) => (StatusCode::BAD_REQUEST, problem.message()),
            Refusal::Shed { .. } => (StatusCode::SERVICE_UNAVAILABLE, SHED_BODY),
        };
        let mut response = Response::new(ResponseBody::fixed(body, in_flight));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            Refusal::Banned { retry_after, close } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(retry_after.max(1)),
                );
                if close {
                    headers.insert(http::header::CONNECTION, crate::host::CLOSE);
                }
            }
            Refusal::Host(_) => {
                headers.insert(http::header::CONNECTION, crate::host::CLOSE);
            }
            Refusal::Shed { close } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(SHED_RETRY_AFTER),
                );
                if close {
                    headers.insert(http::header::CONNECTION, crate::host::CLOSE);
                }
            }
        }
        response
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}
