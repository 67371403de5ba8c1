//! The smallest portcullis server: an axum router behind portcullis's hardened defaults.
//!
//! Run: `cargo run -p hello -- --listen 127.0.0.1:8080`, then `curl http://127.0.0.1:8080/`.
//! SIGTERM or Ctrl-C drains and exits; a second one forces.
use axum::{Router, routing::get};
use portcullis::prelude::*;

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
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
