//! Blocks built before the process's exporter is installed still report to it (their metric
//! handles are resolved on first use). Its own test binary: it installs the global recorder.

mod common;
mod install_order;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_built_before_the_exporter_report_to_it() {
    install_order::blocks_report_to_the_exporter(true).await;
}
