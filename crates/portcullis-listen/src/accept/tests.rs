//! Accept-loop tests over a scripted fake source, on paused tokio time.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::task::Waker;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::*;
use crate::metrics::{
    ACCEPT_ERROR_KINDS, ACCEPT_ERRORS_TOTAL, CONNECTIONS_ACCEPTED_TOTAL, CONNECTIONS_SHED_TOTAL,
};

/// One scripted result of `poll_accept`.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A connection with this id whose options apply fine.
    Conn(u32),
    /// A connection whose socket options fail to apply.
    BadOptions(u32),
    /// An accept error with this errno.
    Err(i32),
}

#[derive(Debug, Default)]
struct Fake {
    script: VecDeque<Step>,
    /// Time of every poll that consumed a step.
    polls: Vec<Instant>,
    /// Connections waiting in the "backlog" for `shed_one`.
    queued: usize,
    shed: usize,
}

impl Fake {
    fn new(script: impl IntoIterator<Item = Step>) -> Self {
        Self {
            script: script.into_iter().collect(),
            ..Self::default()
        }
    }
}

impl AcceptSource for Fake {
    type Conn = (u32, bool);

    fn poll_accept(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<(Self::Conn, Addr)>> {
        let Some(step) = self.script.pop_front() else {
            // The tests always end on a connection; an exhausted script is a test bug and
            // shows up as a hang-free "no wake-up" in the manual-poll tests.
            return Poll::Pending;
        };
        self.polls.push(Instant::now());
        let peer = Addr::Unix(None);
        Poll::Ready(match step {
            Step::Conn(id) => Ok(((id, true), peer)),
            Step::BadOptions(id) => Ok(((id, false), peer)),
            Step::Err(errno) => Err(io::Error::from_raw_os_error(errno)),
        })
    }

    fn configure(&self, conn: &Self::Conn) -> io::Result<()> {
        if conn.1 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    fn shed_one(&mut self) -> io::Result<()> {
        if self.queued == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.queued -= 1;
        self.shed += 1;
        Ok(())
    }
}

/// Builds a loop whose metric handles point at a fresh local recorder.
fn new_loop(fake: Fake, opener: ReserveOpener) -> (AcceptLoop<Fake>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let lp = metrics::with_local_recorder(&recorder, || {
        AcceptLoop::with_reserve(fake, ListenerId::next(), Addr::Unix(None), opener)
    });
    (lp, snapshotter)
}

async fn next(lp: &mut AcceptLoop<Fake>) -> u32 {
    poll_fn(|cx| lp.poll_accept(cx)).await.0.0
}

/// Counter values of one snapshot (snapshots reset counters), keyed by name and `kind` label.
struct Counts(HashMap<(String, String), u64>);

impl Counts {
    fn take(snapshotter: &Snapshotter) -> Self {
        let mut map = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let kind = key
                .labels()
                .find(|l| l.key() == "kind")
                .map_or(String::new(), |l| l.value().to_owned());
            if let DebugValue::Counter(v) = value {
                map.insert((key.name().to_owned(), kind), v);
            }
        }
        Self(map)
    }

    fn get(&self, name: &str, kind: &str) -> u64 {
        self.0
            .get(&(name.to_owned(), kind.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn errors(&self, kind: &str) -> u64 {
        self.get(ACCEPT_ERRORS_TOTAL, kind)
    }

    fn total_errors(&self) -> u64 {
        ACCEPT_ERROR_KINDS.iter().map(|k| self.errors(k)).sum()
    }
}

fn dev_null() -> io::Result<File> {
    File::open("/dev/null")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Gaps between consecutive polls of the source.
fn gaps(polls: &[Instant]) -> Vec<Duration> {
    polls.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_from_5ms_to_a_1s_cap() {
    let mut script = vec![Step::Err(libc::EMFILE); 11];
    script.push(Step::Conn(1));
    let (mut lp, snap) = new_loop(Fake::new(script), dev_null);
    let start = Instant::now();
    assert_eq!(next(&mut lp).await, 1);
    let want: Vec<Duration> = [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(gaps(&lp.source().polls), want);
    assert_eq!(start.elapsed(), want.iter().sum::<Duration>());
    let counts = Counts::take(&snap);
    assert_eq!(counts.errors("emfile"), 11);
    assert_eq!(counts.get(CONNECTIONS_ACCEPTED_TOTAL, ""), 1);
}

#[tokio::test(start_paused = true)]
async fn every_resource_error_kind_backs_off() {
    let cases = [
        (libc::EMFILE, "emfile"),
        (libc::ENFILE, "enfile"),
        (libc::ENOBUFS, "enobufs"),
        (libc::ENOMEM, "enomem"),
        (libc::EBADF, "other"),
        (libc::EINVAL, "other"),
    ];
    for (errno, kind) in cases {
        let script = [Step::Err(errno), Step::Err(errno), Step::Conn(7)];
        let (mut lp, snap) = new_loop(Fake::new(script), dev_null);
        let start = Instant::now();
        assert_eq!(next(&mut lp).await, 7, "{kind}");
        assert_eq!(start.elapsed(), ms(15), "{kind}");
        assert_eq!(gaps(&lp.source().polls), vec![ms(5), ms(10)], "{kind}");
        let counts = Counts::take(&snap);
        assert_eq!(counts.errors(kind), 2, "{kind}");
        assert_eq!(counts.total_errors(), 2, "{kind}");
    }
}

#[tokio::test(start_paused = true)]
async fn per_connection_errors_retry_at_once() {
    let cases = [
        (libc::ECONNABORTED, "connection_aborted"),
        (libc::ECONNRESET, "connection_reset"),
        (libc::EPROTO, "protocol"),
        (libc::EPERM, "permission"),
        (libc::EINTR, "interrupted"),
        (libc::EAGAIN, "would_block"),
        (libc::ETIMEDOUT, "timed_out"),
        (libc::EHOSTUNREACH, "unreachable"),
        (libc::ENETUNREACH, "unreachable"),
    ];
    let mut script: Vec<Step> = cases.iter().map(|&(errno, _)| Step::Err(errno)).collect();
    script.push(Step::Conn(3));
    let (mut lp, snap) = new_loop(Fake::new(script), dev_null);
    let start = Instant::now();
    assert_eq!(next(&mut lp).await, 3);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no sleep for per-connection errors"
    );
    let counts = Counts::take(&snap);
    for (_, kind) in cases {
        let want = if kind == "unreachable" { 2 } else { 1 };
        assert_eq!(counts.errors(kind), want, "{kind}");
    }
    assert_eq!(counts.total_errors(), cases.len() as u64);
    assert_eq!(counts.get(CONNECTIONS_SHED_TOTAL, ""), 0);
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_backoff() {
    let script = [
        Step::Err(libc::ENOBUFS),
        Step::Err(libc::ENOBUFS),
        Step::Err(libc::ENOBUFS),
        Step::Conn(1),
        Step::Err(libc::ENOBUFS),
        Step::Conn(2),
    ];
    let (mut lp, _snap) = new_loop(Fake::new(script), dev_null);
    let start = Instant::now();
    assert_eq!(next(&mut lp).await, 1);
    assert_eq!(start.elapsed(), ms(35));
    let second = Instant::now();
    assert_eq!(next(&mut lp).await, 2);
    assert_eq!(second.elapsed(), ms(5), "backoff restarted at 5ms");
}

#[tokio::test(start_paused = true)]
async fn failing_socket_options_drop_only_that_connection() {
    let script = [Step::BadOptions(1), Step::BadOptions(2), Step::Conn(3)];
    let (mut lp, snap) = new_loop(Fake::new(script), dev_null);
    let start = Instant::now();
    assert_eq!(next(&mut lp).await, 3);
    assert_eq!(start.elapsed(), Duration::ZERO);
    let counts = Counts::take(&snap);
    assert_eq!(counts.errors("socket_options"), 2);
    assert_eq!(counts.get(CONNECTIONS_ACCEPTED_TOTAL, ""), 1);
}

#[tokio::test(start_paused = true)]
async fn emfile_sheds_queued_connections_with_the_reserve() {
    let mut fake = Fake::new([Step::Err(libc::EMFILE), Step::Conn(1)]);
    fake.queued = 3;
    let (mut lp, snap) = new_loop(fake, dev_null);
    assert!(lp.has_reserve());
    assert_eq!(next(&mut lp).await, 1);
    assert_eq!(lp.source().shed, 3);
    assert_eq!(lp.source().queued, 0);
    assert!(lp.has_reserve(), "reserve re-opened after shedding");
    let counts = Counts::take(&snap);
    assert_eq!(counts.get(CONNECTIONS_SHED_TOTAL, ""), 3);
    assert_eq!(counts.errors("emfile"), 1);
}

#[tokio::test(start_paused = true)]
async fn enfile_sheds_too_but_enobufs_does_not() {
    let mut fake = Fake::new([
        Step::Err(libc::ENOBUFS),
        Step::Err(libc::ENFILE),
        Step::Conn(1),
    ]);
    fake.queued = 2;
    let (mut lp, snap) = new_loop(fake, dev_null);
    assert_eq!(next(&mut lp).await, 1);
    assert_eq!(lp.source().shed, 2);
    let polls = &lp.source().polls;
    assert_eq!(gaps(polls), vec![ms(5), ms(10)]);
    assert_eq!(Counts::take(&snap).get(CONNECTIONS_SHED_TOTAL, ""), 2);
}

#[tokio::test(start_paused = true)]
async fn shedding_is_bounded_per_episode() {
    let mut fake = Fake::new([
        Step::Err(libc::EMFILE),
        Step::Err(libc::EMFILE),
        Step::Conn(1),
    ]);
    fake.queued = SHED_MAX * 2 + 10;
    let (mut lp, snap) = new_loop(fake, dev_null);
    assert_eq!(next(&mut lp).await, 1);
    assert_eq!(lp.source().shed, SHED_MAX * 2);
    assert_eq!(lp.source().queued, 10);
    assert_eq!(
        Counts::take(&snap).get(CONNECTIONS_SHED_TOTAL, ""),
        (SHED_MAX * 2) as u64
    );
}

thread_local! {
    static RESERVE_OPENS: Cell<bool> = const { Cell::new(true) };
}

fn flaky_reserve() -> io::Result<File> {
    if RESERVE_OPENS.get() {
        File::open("/dev/null")
    } else {
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }
}

// current_thread runtime: the loop runs on this thread, so the thread-local steers it.
#[tokio::test(start_paused = true)]
async fn reserve_that_cannot_be_reopened_is_retried_later() {
    RESERVE_OPENS.set(true);
    let mut fake = Fake::new([Step::Err(libc::EMFILE), Step::Conn(1)]);
    fake.queued = 10;
    let (mut lp, snap) = new_loop(fake, flaky_reserve);
    assert!(lp.has_reserve());

    // Shedding gives the reserve back; re-opening it fails (still out of descriptors).
    RESERVE_OPENS.set(false);
    assert_eq!(next(&mut lp).await, 1);
    assert_eq!(lp.source().shed, 10);
    assert!(!lp.has_reserve());

    // Without a reserve nothing can be shed, but the loop still backs off and recovers.
    lp.source_mut().queued = 5;
    lp.source_mut()
        .script
        .extend([Step::Err(libc::EMFILE), Step::Conn(2)]);
    let start = Instant::now();
    assert_eq!(next(&mut lp).await, 2);
    assert_eq!(start.elapsed(), ms(5));
    assert_eq!(lp.source().shed, 10);
    assert!(!lp.has_reserve());

    // Descriptors are back: a successful accept re-opens the reserve, trying at most once
    // a second so a missing reserve costs no system call per accept.
    RESERVE_OPENS.set(true);
    lp.source_mut().script.push_back(Step::Conn(3));
    assert_eq!(next(&mut lp).await, 3);
    tokio::time::advance(RESERVE_RETRY).await;
    lp.source_mut().script.push_back(Step::Conn(4));
    assert_eq!(next(&mut lp).await, 4);
    assert!(
        lp.has_reserve(),
        "re-opened within a second of descriptors coming back"
    );
    assert_eq!(Counts::take(&snap).get(CONNECTIONS_SHED_TOTAL, ""), 10);
}

#[tokio::test(start_paused = true)]
async fn long_runs_of_retried_errors_yield_to_the_runtime() {
    let mut script = vec![Step::Err(libc::ECONNABORTED); RETRY_BUDGET + 10];
    script.push(Step::Conn(1));
    let (mut lp, snap) = new_loop(Fake::new(script), dev_null);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        lp.poll_accept(&mut cx).is_pending(),
        "yields after the budget"
    );
    assert_eq!(lp.source().script.len(), 11);
    assert_eq!(next(&mut lp).await, 1);
    assert_eq!(
        Counts::take(&snap).errors("connection_aborted"),
        (RETRY_BUDGET + 10) as u64
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_while_backing_off_loses_nothing() {
    let script = [
        Step::Err(libc::EMFILE),
        Step::Err(libc::EMFILE),
        Step::Conn(9),
    ];
    let (mut lp, _snap) = new_loop(Fake::new(script), dev_null);
    let start = Instant::now();
    // Cancel the accept in the middle of the first backoff.
    let cancelled = tokio::time::timeout(ms(3), next(&mut lp)).await;
    assert!(cancelled.is_err());
    // The backoff already in progress is kept, not restarted.
    assert_eq!(next(&mut lp).await, 9);
    assert_eq!(start.elapsed(), ms(15));
}

#[test]
fn classification_matches_the_documented_table() {
    let backoff = [
        (libc::EMFILE, ErrorKind::Emfile),
        (libc::ENFILE, ErrorKind::Enfile),
        (libc::ENOBUFS, ErrorKind::Enobufs),
        (libc::ENOMEM, ErrorKind::Enomem),
        (libc::EBADF, ErrorKind::Other),
        (libc::ENOTSOCK, ErrorKind::Other),
    ];
    for (errno, kind) in backoff {
        let got = ErrorKind::classify(&io::Error::from_raw_os_error(errno));
        assert_eq!(got, kind);
        assert!(!got.is_per_connection(), "{kind:?}");
    }
    let retry = [
        (libc::ECONNABORTED, ErrorKind::ConnectionAborted),
        (libc::ECONNRESET, ErrorKind::ConnectionReset),
        (libc::EPROTO, ErrorKind::Protocol),
        (libc::ENOPROTOOPT, ErrorKind::Protocol),
        (libc::EOPNOTSUPP, ErrorKind::Protocol),
        (libc::EPERM, ErrorKind::Permission),
        (libc::EINTR, ErrorKind::Interrupted),
        (libc::EAGAIN, ErrorKind::WouldBlock),
        (libc::ETIMEDOUT, ErrorKind::TimedOut),
        (libc::EHOSTUNREACH, ErrorKind::Unreachable),
        (libc::ENETUNREACH, ErrorKind::Unreachable),
        (libc::ENETDOWN, ErrorKind::Unreachable),
        (libc::EHOSTDOWN, ErrorKind::Unreachable),
    ];
    for (errno, kind) in retry {
        let got = ErrorKind::classify(&io::Error::from_raw_os_error(errno));
        assert_eq!(got, kind);
        assert!(got.is_per_connection(), "{kind:?}");
    }
    // Errors without an errno fall back to the io::ErrorKind.
    let e = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
    assert_eq!(ErrorKind::classify(&e), ErrorKind::ConnectionReset);
    let e = io::Error::other("mystery");
    assert_eq!(ErrorKind::classify(&e), ErrorKind::Other);
}

#[test]
fn kind_labels_are_the_published_closed_set() {
    let labels: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(labels, ACCEPT_ERROR_KINDS);
    for (i, kind) in ErrorKind::ALL.iter().enumerate() {
        assert_eq!(kind.index(), i);
    }
}

#[test]
fn backoff_schedule() {
    let mut b = Backoff::new();
    let got: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
    assert_eq!(got, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    b.reset();
    assert_eq!(b.next_delay(), ms(5));
}

#[test]
fn log_limiter_logs_first_then_once_per_second_with_suppressed_count() {
    let mut log = LogLimiter::new();
    let t0 = Instant::now();
    assert_eq!(log.check(ErrorKind::Emfile, t0), Some(0));
    assert_eq!(log.check(ErrorKind::Emfile, t0 + ms(100)), None);
    assert_eq!(log.check(ErrorKind::Emfile, t0 + ms(999)), None);
    // Another kind is independent.
    assert_eq!(log.check(ErrorKind::ConnectionReset, t0 + ms(500)), Some(0));
    assert_eq!(log.check(ErrorKind::Emfile, t0 + ms(1000)), Some(2));
    assert_eq!(log.check(ErrorKind::Emfile, t0 + ms(1500)), None);
    assert_eq!(log.check(ErrorKind::Emfile, t0 + ms(2000)), Some(1));
}

/// The real shed path: accept-and-close on a tokio listener, behind tokio's back, must close
/// queued clients and leave the listener able to accept normally afterwards.
#[tokio::test]
async fn real_listener_sheds_queued_connections_and_keeps_accepting() -> io::Result<()> {
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut source = crate::listener::Source::Tcp {
        listener,
        options: crate::ListenerConfig::default().accept_options(),
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::net::TcpStream::connect(addr).await?);
    }
    let mut shed = 0;
    // The handshakes completed (connect returned), but the kernel may still be moving them
    // to the accept queue; retry WouldBlock until all three are shed.
    while shed < 3 {
        match source.shed_one() {
            Ok(()) => shed += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
            Err(e) => return Err(e),
        }
    }
    assert_eq!(
        source.shed_one().map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock)
    );
    for mut client in clients {
        let mut buf = [0u8; 1];
        // Closed by the server: EOF (or a reset).
        match client.read(&mut buf).await {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
    }
    let (mut lp, _snap) = new_loop_real(source);
    let (client, accepted) = tokio::join!(
        tokio::net::TcpStream::connect(addr),
        poll_fn(|cx| lp.poll_accept(cx))
    );
    let client = client?;
    assert_eq!(accepted.1, Addr::Inet(client.local_addr()?));
    Ok(())
}

fn new_loop_real(
    source: crate::listener::Source,
) -> (AcceptLoop<crate::listener::Source>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let lp = metrics::with_local_recorder(&recorder, || {
        AcceptLoop::new(source, ListenerId::next(), Addr::Unix(None))
    });
    (lp, snapshotter)
}
