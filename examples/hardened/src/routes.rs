//! The application the reference server serves: four routes, a 1 MiB body limit, 404 for the
//! rest. Plain tower + hyper types; an axum `Router` would slot in the same way.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::Either;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use portcullis::server::RequestBody;

/// Largest request body any route accepts.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest `/slow` delay accepted, so a request cannot ask to be held for days.
const MAX_SLOW_MS: u64 = 10 * 60 * 1000;
/// Most chunks `/stream` sends, and the longest pause between two.
const MAX_STREAM_CHUNKS: u64 = 100_000;
const MAX_STREAM_PAUSE_MS: u64 = 60 * 1000;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;
/// A response body: fixed bytes, or a stream of chunks.
pub(crate) type AppBody = http_body_util::Either<Full<Bytes>, StreamBody<ChunkStream>>;

/// What [`route`] returns: most answers are ready at once and stay small; only the routes
/// that wait (`/slow`, `/echo`, a body to drain) allocate a future. Keeping the common future
/// small matters: hyper moves it into place for every request.
pub(crate) type RouteFuture = Either<
    std::future::Ready<Result<Response<AppBody>, Infallible>>,
    Pin<Box<dyn Future<Output = Result<Response<AppBody>, Infallible>> + Send>>,
>;

/// The route template of a request for the metrics (`http_route`): the path of the four
/// routes, nothing (`unmatched`) for the rest, never the raw path of a 404.
pub(crate) fn template(_method: &Method, uri: &http::Uri) -> Option<&'static str> {
    match uri.path() {
        "/" => Some("/"),
        "/slow" => Some("/slow"),
        "/stream" => Some("/stream"),
        "/echo" => Some("/echo"),
        _ => None,
    }
}

/// Serves one request.
pub(crate) fn route(request: Request<RequestBody>) -> RouteFuture {
    if declared_length(&request).is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return ready(too_large());
    }
    if request.uri().path() == "/echo" {
        return match *request.method() {
            Method::POST => Either::Right(Box::pin(async move { Ok(echo(request).await) })),
            _ => ready(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")),
        };
    }
    // The other routes ignore bodies, but the limit holds for them too: a body is read and
    // discarded, and one that grows past the limit is refused.
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    if !body.is_end_stream() {
        return Either::Right(Box::pin(async move {
            match Limited::new(body, MAX_BODY_BYTES).collect().await {
                Ok(_) => respond(request).await,
                Err(error) if error.is::<LengthLimitError>() => Ok(too_large()),
                Err(_) => Ok(text(
                    StatusCode::BAD_REQUEST,
                    "request body could not be read\n",
                )),
            }
        }));
    }
    match slow_delay(&request) {
        Some(Ok(ms)) => Either::Right(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(text(StatusCode::OK, "ok\n"))
        })),
        Some(Err(message)) => ready(text(StatusCode::BAD_REQUEST, message)),
        None => ready(answer(&request)),
    }
}

/// The answer to a request whose body is gone, waiting for `/slow` if that is the route.
async fn respond(request: Request<()>) -> Result<Response<AppBody>, Infallible> {
    match slow_delay(&request) {
        Some(Ok(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(text(StatusCode::OK, "ok\n"))
        }
        Some(Err(message)) => Ok(text(StatusCode::BAD_REQUEST, message)),
        None => Ok(answer(&request)),
    }
}

/// For `GET /slow`: how long to wait, or why the query is wrong.
fn slow_delay(request: &Request<()>) -> Option<Result<u64, &'static str>> {
    (request.method() == Method::GET && request.uri().path() == "/slow")
        .then(|| query_u64(request, "ms", 100, MAX_SLOW_MS))
}

/// The answer for every route that needs no waiting.
fn answer(request: &Request<()>) -> Response<AppBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, "hello\n"),
        (&Method::GET, "/stream") => {
            let n = query_u64(request, "n", 10, MAX_STREAM_CHUNKS);
            let ms = query_u64(request, "ms", 100, MAX_STREAM_PAUSE_MS);
            match (n, ms) {
                (Ok(n), Ok(ms)) => stream(n, Duration::from_millis(ms)),
                (Err(message), _) | (_, Err(message)) => text(StatusCode::BAD_REQUEST, message),
            }
        }
        (_, "/" | "/slow" | "/stream") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn ready(response: Response<AppBody>) -> RouteFuture {
    Either::Left(std::future::ready(Ok(response)))
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn echo(request: Request<RequestBody>) -> Response<AppBody> {
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => {
            let mut response = Response::new(http_body_util::Either::Left(Full::new(
                collected.to_bytes(),
            )));
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(error) if error.is::<LengthLimitError>() => too_large(),
        Err(_) => text(StatusCode::BAD_REQUEST, "request body could not be read\n"),
    }
}

fn stream(chunks: u64, pause: Duration) -> Response<AppBody> {
    let body = futures_util::stream::unfold(0, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok(frame), i + 1))
    });
    let mut response = Response::new(http_body_util::Either::Right(StreamBody::new(
        Box::pin(body) as ChunkStream,
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn too_large() -> Response<AppBody> {
    text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
}

fn text(status: StatusCode, body: &'static str) -> Response<AppBody> {
    let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The query parameter `name` as a number no larger than `max`, or `default` when absent.
fn query_u64<B>(
    request: &Request<B>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, &'static str> {
    let value = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value);
    match value {
        None => Ok(default),
        Some(value) => match value.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err("query parameter out of range or not a number\n"),
        },
    }
}
