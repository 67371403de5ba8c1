//! Each shutdown phase transition on paused time: when it happens, and what moves it.
//! Paused time makes the timings exact: a phase that waits out its delay or deadline enters
//! the next one at that very instant, and one that waits for nothing does not wait at all.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis_listen::Listener;
use portcullis_server::{ServeReport, Server, ShutdownPhase};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

type Phases = mpsc::UnboundedReceiver<(ShutdownPhase, Instant)>;

type Answer = Result<http::Response<Full<Bytes>>, std::convert::Infallible>;

fn answer(_request: http::Request<portcullis_server::RequestBody>) -> std::future::Ready<Answer> {
    std::future::ready(Ok(http::Response::new(Full::new(Bytes::new()))))
}

/// A server with a recording phase hook; returns its triggers, the phases seen and the task.
#[allow(clippy::type_complexity)]
fn start(
    configure: impl FnOnce(portcullis_server::Builder) -> portcullis_server::Builder,
) -> (
    oneshot::Sender<()>,
    oneshot::Sender<()>,
    Phases,
    tokio::task::JoinHandle<ServeReport>,
) {
    let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let (force, force_rx) = oneshot::channel::<()>();
    let (seen, phases) = mpsc::unbounded_channel();
    let builder = configure(Server::builder().listener(listener))
        .on_phase(move |phase| {
            let _ = seen.send((phase, Instant::now()));
        })
        .shutdown(async {
            let _ = shutdown_rx.await;
        })
        .force(async {
            if force_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        });
    let server = tokio::spawn(async move {
        builder
            .serve(tower::service_fn(answer))
            .await
            .expect("serve")
    });
    (shutdown, force, phases, server)
}

async fn next(phases: &mut Phases) -> (ShutdownPhase, Instant) {
    phases.recv().await.expect("a phase")
}

#[tokio::test(start_paused = true)]
async fn running_delay_drain_done_each_at_its_moment() {
    let tasks = TaskTracker::new();
    // A background task that outlives any drain: the drain waits for it until the deadline.
    tasks.spawn(tokio::time::sleep(Duration::from_secs(3600)));
    let (shutdown, _force, mut phases, server) = start(|b| {
        b.drain_delay(Duration::from_secs(5))
            .drain_timeout(Duration::from_secs(10))
            .track_tasks(tasks.clone())
    });
    let (phase, _) = next(&mut phases).await;
    assert_eq!(phase, ShutdownPhase::Running);
    // Nothing moves without a trigger, however long it runs.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(phases.try_recv().is_err(), "still running");

    let triggered = Instant::now();
    shutdown.send(()).expect("trigger");
    let (phase, at) = next(&mut phases).await;
    assert_eq!((phase, at), (ShutdownPhase::Delay, triggered));
    let (phase, at) = next(&mut phases).await;
    assert_eq!(
        (phase, at - triggered),
        (ShutdownPhase::Drain, Duration::from_secs(5)),
        "the drain begins when the delay is over"
    );
    let (phase, done_at) = next(&mut phases).await;
    assert_eq!(
        (phase, done_at - at),
        (ShutdownPhase::Done, Duration::from_secs(10)),
        "done at the drain deadline"
    );
    let report = server.await.expect("server");
    assert_eq!(report.tasks_left, 1, "{report:?}");
    assert_eq!(report.delay_duration, Duration::from_secs(5));
    assert_eq!(report.drain_duration, Duration::from_secs(10));
    assert!(!report.is_clean());
}

#[tokio::test(start_paused = true)]
async fn without_anything_in_flight_the_drain_ends_at_once() {
    let (shutdown, _force, mut phases, server) =
        start(|b| b.drain_timeout(Duration::from_secs(30)));
    assert_eq!(next(&mut phases).await.0, ShutdownPhase::Running);
    let triggered = Instant::now();
    shutdown.send(()).expect("trigger");
    // No drain delay: straight to the drain, and done without waiting for the deadline.
    assert_eq!(next(&mut phases).await, (ShutdownPhase::Drain, triggered));
    assert_eq!(next(&mut phases).await, (ShutdownPhase::Done, triggered));
    let report = server.await.expect("server");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.drain_duration, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_force_during_the_delay_drains_and_finishes_at_once() {
    let tasks = TaskTracker::new();
    tasks.spawn(tokio::time::sleep(Duration::from_secs(3600)));
    let (shutdown, force, mut phases, server) = start(|b| {
        b.drain_delay(Duration::from_secs(60))
            .drain_timeout(Duration::from_secs(60))
            .track_tasks(tasks.clone())
    });
    assert_eq!(next(&mut phases).await.0, ShutdownPhase::Running);
    shutdown.send(()).expect("trigger");
    let (phase, delay_began) = next(&mut phases).await;
    assert_eq!(phase, ShutdownPhase::Delay);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let forced = Instant::now();
    force.send(()).expect("force");
    // Straight from the delay to forced: the drain is skipped, not waited for.
    assert_eq!(next(&mut phases).await, (ShutdownPhase::Forced, forced));
    assert_eq!(next(&mut phases).await, (ShutdownPhase::Done, forced));
    let report = server.await.expect("server");
    assert_eq!(report.delay_duration, forced - delay_began);
    assert_eq!(
        report.tasks_left, 1,
        "the task was still running: {report:?}"
    );
}
