//! The smallest portcullis server: an axum router behind portcullis's hardened defaults.
//!
//! ```text
//! cargo run -p hello -- --listen 127.0.0.1:8080   # prints listening on http://127.0.0.1:8080
//! curl http://127.0.0.1:8080/                     # hello
//! RUST_LOG=debug cargo run -p hello               # more logs (default: warnings)
//! ```
//!
//! SIGTERM or Ctrl-C drains and exits; a second one forces.
use axum::{Router, routing::get};
use portcullis::prelude::*;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    // Warnings visible by default, RUST_LOG honoured.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let listen = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [flag, addr] if flag == "--listen" => addr.clone(),
        _ => "127.0.0.1:8080".to_owned(),
    };
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let server = Server::builder()
        .graceful(Shutdown::from_signals()?)
        .listen(listen.as_str())?;
    server.announce(std::io::stdout())?; // listening on http://IP:PORT
    Ok(server.serve(app).await?.exit_code())
}
