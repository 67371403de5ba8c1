//! The application's routes: a `service_fn` (`main` puts portcullis' layers around it).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use portcullis_metrics::Route;

/// The longest `/slow` wait a client may ask for.
const MAX_SLOW: Duration = Duration::from_secs(60);

/// `GET /`: `hello`; `GET /slow?ms=N`: `ok` after N ms (default 100); anything else 404.
pub(crate) async fn route<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (template, status, body) = match request.uri().path() {
        "/" => ("/", StatusCode::OK, "hello\n"),
        "/slow" => {
            let ms = request
                .uri()
                .query()
                .and_then(|query| query.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
            ("/slow", StatusCode::OK, "ok\n")
        }
        _ => ("unmatched", StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    // The route template for the metrics label: never the raw path (a scanner would make a
    // series per path it tries).
    if template != "unmatched" {
        response.extensions_mut().insert(Route::new(template));
    }
    Ok(response)
}
