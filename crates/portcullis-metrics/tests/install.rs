//! The exporter is installed once per process; a second install is an error, never a panic.
//! (Its own test binary: it installs the process-global recorder.)

use portcullis_metrics::PrometheusExporter;

#[test]
fn a_second_install_is_an_error_naming_the_problem() {
    let exporter = PrometheusExporter::install().expect("the first install");
    portcullis_metrics::describe();
    metrics::gauge!("portcullis_test_installed").set(1.0);
    assert!(exporter.render().contains("portcullis_test_installed 1"));

    let error = PrometheusExporter::install().expect_err("a second install");
    let message = error.to_string();
    assert!(
        message.contains("already installed"),
        "the message names the problem: {message}"
    );
    // The first recorder is still the one in place.
    metrics::gauge!("portcullis_test_installed").set(2.0);
    assert!(exporter.render().contains("portcullis_test_installed 2"));
}
