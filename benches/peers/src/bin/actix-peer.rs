//! The actix peer: actix-web with actix-governor's per-IP rate limit, the request metrics
//! recorded by a middleware into metrics-exporter-prometheus (served on the admin address),
//! and actix's own graceful shutdown on SIGTERM or SIGINT. What a user of those crates would
//! write from their documentation.
//!
//! actix-web has no per-IP connection limit and no hook that can refuse a connection by its
//! address before it is served, so this peer caps connections per worker
//! (`max_connections`, actix's own limit) at `--max-conns-per-ip` instead.
//!
//! ```text
//! cargo run --release --manifest-path benches/peers/Cargo.toml --bin actix-peer -- --listen 127.0.0.1:0 --workers 1
//! ```

use actix_governor::{Governor, GovernorConfigBuilder};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use portcullis_peers::{Args, Tracked};

fn main() -> std::io::Result<()> {
    let args = Args::from_env();
    actix_web::rt::System::new().block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let metrics = portcullis_peers::install_metrics();
    // actix-governor: `nanoseconds_per_request(n)` replenishes one request every n ns.
    let config = GovernorConfigBuilder::default()
        .nanoseconds_per_request((1_000_000_000 / args.rate).max(1))
        .burst_size(u32::try_from(args.rate).unwrap_or(u32::MAX))
        .finish()
        .unwrap_or_else(|| panic!("governor configuration"));

    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(track))
            .wrap(Governor::new(&config))
            .route(
                "/",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("text/plain")
                        .body("hello\n")
                }),
            )
            .default_service(web::to(HttpResponse::NotFound))
    })
    .workers(args.workers)
    .max_connections(args.max_conns_per_ip)
    .bind(args.listen)?;
    let admin = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let text = metrics.render();
                async move { HttpResponse::Ok().body(text) }
            }),
        )
    })
    .workers(1)
    .bind(args.admin)?;
    for addr in server.addrs() {
        println!("listening on http://{addr}");
    }
    for addr in admin.addrs() {
        println!("metrics on http://{addr}/metrics");
    }
    // Each stops at SIGTERM or SIGINT on its own.
    let (served, _) = tokio::join!(server.run(), admin.run());
    served
}

/// The request metrics, recorded as for the axum peer.
async fn track(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let tracked = Tracked::start(request.method().to_string(), route);
    let response = next.call(request).await;
    tracked.finish(response.as_ref().ok().map(|r| r.status().as_u16()));
    response
}
