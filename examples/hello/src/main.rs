//! The smallest portcullis server: an axum router behind portcullis's hardened defaults.
//!
//! Run: `cargo run -p hello`, then `curl http://127.0.0.1:8080/`. Ctrl-C drains and exits.
use axum::{Router, routing::get};
use portcullis::prelude::*;

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let listener = Listener::bind("127.0.0.1:8080".parse()?)?;
    println!("listening on http://{}", listener.local_addr());
    let report = Server::builder()
        .listener(listener)
        .shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .serve(app)
        .await?;
    Ok(report.exit_code())
}
