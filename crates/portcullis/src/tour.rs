//! A guided tour: from an axum router to a production server, one block at a time.
//!
//! Every step compiles (`cargo test --doc -p portcullis --all-features`); each adds one
//! block to the one before. The complete result is `examples/axum` in the repository.
//!
//! # 1. Logs first
//!
//! portcullis reports what it refuses and what fails (a rejected certificate reload, a core
//! that died, a drain cut short) through `tracing`. Install a subscriber before anything
//! else, with warnings visible by default, or those lines go nowhere:
//!
//! ```
//! use tracing_subscriber::EnvFilter;
//!
//! let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
//! tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
//! ```
//!
//! # 2. Serve a router
//!
//! [`Server::builder`](crate::server::Server::builder) binds addresses with safe socket options
//! and serves any tower service, an axum `Router` included. Every connection phase has a
//! deadline from the start (header 10 s, idle 60 s); `announce` prints the line a person or a
//! test harness waits for.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use portcullis::prelude::*;
//!
//! let app = Router::new().route("/", get(|| async { "hello\n" }));
//! let server = Server::builder().listen("127.0.0.1:8080")?;
//! server.announce(std::io::stdout())?; // listening on http://127.0.0.1:8080
//! server.serve(app).await?;
//! # Ok(()) }
//! ```
//!
//! # 3. Shut down gracefully
//!
//! [`Shutdown::from_signals`](crate::shutdown::Shutdown::from_signals) catches SIGTERM and
//! SIGINT (also as PID 1) and SIGHUP (a reload, never an exit). Call it before the server is
//! reachable. Readiness goes off first, the drain delay lets load balancers notice, then the
//! listeners close and connections drain under a deadline; a second signal forces it. The
//! report says whether the drain was clean, as an exit status.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use portcullis::prelude::*;
//!
//! let report = Server::builder()
//!     .graceful(Shutdown::from_signals()?.drain_delay(Duration::from_secs(5)))
//!     .systemd() // READY / STOPPING / STATUS / WATCHDOG under systemd, nothing elsewhere
//!     .listen("0.0.0.0:8080")?
//!     .serve(app)
//!     .await?;
//! Ok(report.exit_code()) // 0 clean, 1 forced
//! # }
//! ```
//!
//! # 4. Limit what one client can take
//!
//! Connection caps apply at accept, before a byte is read; the rate limit is a tower layer
//! that answers 429 with `Retry-After` and the IETF `RateLimit` fields. Both key on the
//! client address, which only trusted proxies can name. The limiter evicts idle clients by
//! itself.
//!
//! ```no_run
//! # async fn run(router: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use std::num::NonZeroU32;
//! use portcullis::prelude::*;
//!
//! const PER_CLIENT: NonZeroU32 = NonZeroU32::new(100).expect("not zero");
//! let app = router.layer(
//!     RateLimitLayer::per_client("100/s burst 20".parse()?)
//!         .trusted_proxies(["10.0.0.0/8".parse()?])
//!         .layer(),
//! );
//! Server::builder()
//!     .listen("0.0.0.0:8080")?
//!     .connection_limits(ConnLimits::new(10_000).per_client(PER_CLIENT))
//!     .serve(app)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # 5. Metrics and probes
//!
//! [`Builder::admin`](crate::server::Builder::admin) serves `/metrics`, `/livez` and `/readyz`
//! on a listener of its own, outside every limit, installs the Prometheus exporter and runs
//! its upkeep. The HTTP metrics layer labels by route template (inside the router it reads
//! axum's `MatchedPath`), so a scanner adds no series.
//!
//! ```no_run
//! # async fn run(router: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis::prelude::*;
//!
//! let app = router.layer(HttpMetricsLayer::new());
//! Server::builder()
//!     .listen("0.0.0.0:8080")?
//!     .admin("127.0.0.1:9090")?
//!     .serve(app)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # 6. TLS
//!
//! [`TlsConfig`](crate::tls::TlsConfig) loads PEM files with one clear error per bad file and
//! secure defaults (TLS 1.2/1.3, AEAD suites, ALPN h2 and http/1.1). The server watches the
//! files and reloads on SIGHUP; a bad new pair keeps the old one in service.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis::prelude::*;
//!
//! Server::builder()
//!     .graceful(Shutdown::from_signals()?) // SIGHUP reloads from here on
//!     .listen("0.0.0.0:8443")?
//!     .tls(TlsConfig::from_pem_files("cert.pem", "key.pem")?.build()?)
//!     .serve(app)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # 7. One configuration file
//!
//! With the `config` feature, [`ServerConfig`](crate::config::ServerConfig) reads every
//! setting above from one TOML file (keys as `examples/hardened`'s flags), checks it for
//! errors and dangerous combinations, and applies it to a builder.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis::config::ServerConfig;
//! use portcullis::prelude::*;
//!
//! let config = ServerConfig::from_file("server.toml")?;
//! for warning in &config.check().warnings {
//!     tracing::warn!(%warning, "configuration");
//! }
//! let server = config.apply(Server::builder().graceful(Shutdown::from_signals()?))?;
//! server.serve(app).await?;
//! # Ok(()) }
//! ```
//!
//! # Where to go next
//!
//! `docs/production-checklist.md` (what to verify before going live), `docs/tuning.md`
//! (kernel and process settings), `docs/coming-from-axum.md`, and `examples/hardened`, the
//! reference server with every flag.
