//! Real signals sent to this test process: the first completes the shutdown trigger, the next
//! the force trigger, and each is counted.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use portcullis_shutdown::Signals;
use portcullis_shutdown::metrics::SIGNALS_RECEIVED;

fn kill(signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn first_signal_shuts_down_the_next_forces_and_both_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (shutdown, force) = Signals::new().expect("handlers").into_triggers();
            let force = tokio::spawn(force);
            // Handlers are installed: this SIGTERM is caught, not fatal.
            kill("TERM");
            tokio::time::timeout(Duration::from_secs(10), shutdown)
                .await
                .expect("the first signal completes the shutdown trigger");
            assert!(!force.is_finished(), "one signal does not force");
            kill("INT");
            tokio::time::timeout(Duration::from_secs(10), force)
                .await
                .expect("the second signal completes the force trigger")
                .expect("task");
        });
    });
    let counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == SIGNALS_RECEIVED)
        .map(|(key, _, _, value)| {
            let label = key
                .key()
                .labels()
                .map(|l| l.value().to_owned())
                .collect::<String>();
            let count = match value {
                DebugValue::Counter(n) => n,
                _ => 0,
            };
            (label, count)
        })
        .collect();
    let mut counts = counts;
    counts.sort();
    assert_eq!(counts, [("int".to_owned(), 1), ("term".to_owned(), 1)]);
}
