//! The link to Redis: one multiplexed connection shared by every fleet limit of a [`Redis`],
//! the deadline on every call, the circuit breaker, and the task that brings the link back.
//!
//! # States
//!
//! | connection | breaker | checks |
//! |---|---|---|
//! | up | closed | one `EVALSHA` each, under the deadline; a miss or an error is decided locally |
//! | any | open | decided locally at once, no call made; the recovery task probes Redis |
//! | none | (open) | as open: losing the connection opens the breaker |
//!
//! The breaker opens after [`RedisConfig::breaker`]'s run of failed or late calls in a row,
//! or at once when the connection is lost. While it is open a single task (started on the
//! first need, holding only a [`Weak`]) probes every cooldown: connect if there is no
//! connection (loading the script), then one script call on a probe key under the deadline;
//! a connection that fails three probes in a row is replaced (a peer can vanish without a
//! reset, a failover can leave it on a read-only replica). Every call on a connection also ends after the connect timeout inside
//! the `redis` crate, so calls abandoned at their deadline do not pile up in its pipeline.
//! The first probe that succeeds closes the breaker. Checks never wait for a connection, a
//! probe or a reload: the only wait a request can see is one call's deadline.
//!
//! [`Redis`]: super::Redis
//! [`RedisConfig::breaker`]: super::RedisConfig::breaker

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};

use super::breaker::Breaker;
use super::{RedisConfig, Target};
use crate::limiter::Limited;
use crate::metrics::{
    FLEET_FALLBACK_ACTIVE, LABEL_OUTCOME, LABEL_REASON, REDIS_BREAKER_OPEN, REDIS_CALL_DURATION,
    REDIS_CALLS_TOTAL, REDIS_CONNECTED, REDIS_SCRIPT_LOADS_TOTAL,
};

/// The GCRA script (see its comments for the arguments and the reply).
pub(crate) const SCRIPT: &str = include_str!("gcra.lua");

/// What one check asked of Redis came to.
pub(crate) enum Outcome {
    /// Redis decided.
    Decided(Result<(), Limited>),
    /// No decision in time (a miss, an error): the caller decides locally.
    Failed,
}

/// A check's call to Redis, deadline included.
pub(crate) type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The shared connection: multiplexed (pipelined) either way, cheap to clone.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> Result<T, RedisError> {
        match self {
            Connection::Single(connection) => command.query_async(connection).await,
            Connection::Cluster(connection) => command.query_async(connection).await,
        }
    }
}

/// The metric handles of a link, resolved on first use.
struct Metrics {
    ok: metrics::Counter,
    error: metrics::Counter,
    timeout: metrics::Counter,
    duration: metrics::Histogram,
    loads_connect: metrics::Counter,
    loads_noscript: metrics::Counter,
    connected: metrics::Gauge,
    breaker_open: metrics::Gauge,
    fallback: metrics::Gauge,
}

impl Metrics {
    fn resolve() -> Self {
        let calls =
            |outcome: &'static str| metrics::counter!(REDIS_CALLS_TOTAL, LABEL_OUTCOME => outcome);
        let loads = |reason: &'static str| metrics::counter!(REDIS_SCRIPT_LOADS_TOTAL, LABEL_REASON => reason);
        Self {
            ok: calls("ok"),
            error: calls("error"),
            timeout: calls("timeout"),
            duration: metrics::histogram!(REDIS_CALL_DURATION),
            loads_connect: loads("connect"),
            loads_noscript: loads("noscript"),
            connected: metrics::gauge!(REDIS_CONNECTED),
            breaker_open: metrics::gauge!(REDIS_BREAKER_OPEN),
            fallback: metrics::gauge!(FLEET_FALLBACK_ACTIVE),
        }
    }
}

pub(crate) struct Link {
    pub(crate) config: RedisConfig,
    hash: String,
    connection: ArcSwapOption<Connection>,
    /// Open (checks local) or closed; starts open: nothing is known to answer until the first
    /// connection is made. Also the switch of the recovery task.
    breaker: Breaker,
    /// Probes in a row that failed on the current connection.
    failed_probes: AtomicU32,
    /// The runtime the first connection was made on: recovery runs there.
    runtime: OnceLock<tokio::runtime::Handle>,
    metrics: OnceLock<Metrics>,
}

impl Link {
    pub(crate) fn new(config: RedisConfig) -> Self {
        Self {
            hash: redis::Script::new(SCRIPT).get_hash().to_owned(),
            breaker: Breaker::new(config.failures.get()),
            config,
            connection: ArcSwapOption::empty(),
            failed_probes: AtomicU32::new(0),
            runtime: OnceLock::new(),
            metrics: OnceLock::new(),
        }
    }

    fn metrics(&self) -> &Metrics {
        self.metrics.get_or_init(|| {
            let metrics = Metrics::resolve();
            metrics.breaker_open.set(1.0);
            metrics.fallback.set(1.0);
            metrics.connected.set(0.0);
            metrics
        })
    }

    /// Whether checks go to Redis now (connected, breaker closed).
    pub(crate) fn available(&self) -> bool {
        !self.breaker.is_open()
    }

    /// The call for one check of `key`, or `None` when the check must be decided locally
    /// (the breaker is open; the recovery task is started if it does not run).
    pub(crate) fn begin(
        self: &Arc<Self>,
        key: Vec<u8>,
        interval_nanos: u64,
        burst: u32,
    ) -> Option<Call> {
        if self.breaker.is_open() {
            self.ensure_recovering();
            return None;
        }
        let Some(connection) = self.connection.load_full() else {
            self.trip("no connection");
            return None;
        };
        let link = Arc::clone(self);
        Some(Box::pin(async move {
            let started = Instant::now();
            let call = link.eval(&connection, &key, interval_nanos, burst);
            let result = tokio::time::timeout(link.config.timeout, call).await;
            link.settle(result, &connection, started)
        }))
    }

    /// Runs the script: `EVALSHA`, and on `NOSCRIPT` (a restart, a failover, `SCRIPT FLUSH`)
    /// `EVAL` with the source, which loads it again, within the same deadline.
    async fn eval(
        &self,
        connection: &Connection,
        key: &[u8],
        interval_nanos: u64,
        burst: u32,
    ) -> Result<Result<(), Limited>, RedisError> {
        let mut connection = connection.clone();
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(&self.hash)
            .arg(1)
            .arg(key)
            .arg(interval_nanos)
            .arg(burst);
        let reply: Result<(i64, i64), RedisError> = connection.query(&evalsha).await;
        let reply = match reply {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.metrics().loads_noscript.increment(1);
                let mut eval = redis::cmd("EVAL");
                eval.arg(SCRIPT)
                    .arg(1)
                    .arg(key)
                    .arg(interval_nanos)
                    .arg(burst);
                connection.query(&eval).await
            }
            reply => reply,
        };
        let (allowed, wait_ms) = reply?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            let wait_ms = u64::try_from(wait_ms).unwrap_or(0).max(1);
            Err(Limited::new(Duration::from_millis(wait_ms)))
        })
    }

    /// Counts a call's result and moves the breaker.
    fn settle(
        self: &Arc<Self>,
        result: Result<Result<Result<(), Limited>, RedisError>, tokio::time::error::Elapsed>,
        connection: &Arc<Connection>,
        started: Instant,
    ) -> Outcome {
        let metrics = self.metrics();
        metrics.duration.record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(decided)) => {
                metrics.ok.increment(1);
                self.breaker.success();
                Outcome::Decided(decided)
            }
            Ok(Err(error)) => {
                metrics.error.increment(1);
                if replaces_connection(&error) {
                    // The connection is gone, or talks to a node that cannot take writes (a
                    // demoted primary after a failover): drop it, unless a newer one replaced
                    // it already (a late error of an old connection changes nothing), and let
                    // the recovery task make another.
                    if self.drop_connection(connection) {
                        self.trip_with(format_args!("connection lost: {error}"));
                    }
                } else {
                    self.failed(format_args!("{error}"));
                }
                Outcome::Failed
            }
            Err(_) => {
                metrics.timeout.increment(1);
                self.failed(format_args!("no answer within {:?}", self.config.timeout));
                Outcome::Failed
            }
        }
    }

    /// Drops `connection` if it is still the current one; `true` if it was.
    fn drop_connection(&self, connection: &Arc<Connection>) -> bool {
        let current = self.connection.load_full();
        let Some(current) = current.filter(|current| Arc::ptr_eq(current, connection)) else {
            return false;
        };
        let previous = self.connection.compare_and_swap(&Some(current), None);
        let dropped = previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, connection));
        if dropped {
            self.metrics().connected.set(0.0);
        }
        dropped
    }

    /// One failed call while closed: opens the breaker after enough in a row.
    fn failed(self: &Arc<Self>, why: std::fmt::Arguments<'_>) {
        self.breaker.failure(|failures| {
            self.report_open(format_args!(
                "{failures} calls in a row failed, the last: {why}"
            ));
        });
        if self.breaker.is_open() {
            self.ensure_recovering();
        }
    }

    fn trip(self: &Arc<Self>, why: &str) {
        self.trip_with(format_args!("{why}"));
    }

    /// Opens the breaker (reporting the transition once) and starts the recovery task.
    fn trip_with(self: &Arc<Self>, why: std::fmt::Arguments<'_>) {
        self.breaker.trip(|| self.report_open(why));
        self.ensure_recovering();
    }

    /// The gauges and the log line of the breaker opening (run under its transition lock).
    fn report_open(&self, why: std::fmt::Arguments<'_>) {
        let metrics = self.metrics();
        metrics.breaker_open.set(1.0);
        metrics.fallback.set(1.0);
        tracing::warn!(
            redis = %self.config.shown,
            "fleet rate limits fall back to local limiting (rate / fleet size): {why}"
        );
    }

    fn close(&self) {
        self.breaker.close(|| {
            let metrics = self.metrics();
            metrics.breaker_open.set(0.0);
            metrics.fallback.set(0.0);
            tracing::info!(redis = %self.config.shown, "fleet rate limits are shared in Redis again");
        });
    }

    /// Starts the recovery task unless it runs (needs a tokio runtime; without one the next
    /// check inside one starts it).
    pub(crate) fn ensure_recovering(self: &Arc<Self>) {
        if !self.breaker.start_recovery() {
            return;
        }
        // The runtime of the first connection (hardened's main runtime), so that under
        // per-core runtimes the connection's driver never lives on one busy core's thread.
        let runtime = match self.runtime.get() {
            Some(runtime) => runtime.clone(),
            None => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime,
                Err(_) => {
                    self.breaker.recovery_ended();
                    return;
                }
            },
        };
        self.metrics();
        let guard = Recovering(Arc::downgrade(self));
        runtime.spawn(recover(guard));
    }

    /// One attempt to connect now: a new connection, with the script loaded. It does not
    /// close the breaker: only a probe answered within the deadline does.
    pub(crate) async fn connect(&self) -> Result<(), RedisError> {
        // The gauges exist (the fallback active) from the first attempt on, whatever its end.
        let metrics = self.metrics();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.set(runtime);
        }
        let timeout = Some(self.config.connect_timeout);
        let mut connection = match &self.config.target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Connection::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.iter().cloned())
                    // Redirections are followed; errors are the breaker's to count.
                    .retries(1)
                    .connection_timeout(self.config.connect_timeout)
                    .response_timeout(self.config.connect_timeout)
                    .build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
        };
        // A cluster sends it to every primary.
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(SCRIPT);
        let _loaded: redis::Value = connection.query(&load).await?;
        metrics.loads_connect.increment(1);
        metrics.connected.set(1.0);
        self.failed_probes.store(0, Ordering::Relaxed);
        self.connection.store(Some(Arc::new(connection)));
        Ok(())
    }

    /// One probe while the breaker is open: a connection (made if there is none), then one
    /// script call on the probe key under the check's deadline. `Ok` closes the breaker: a
    /// Redis that answers, but slower than the deadline, stays behind an open breaker instead
    /// of costing every request the deadline.
    pub(crate) async fn probe(&self) -> Result<(), String> {
        let connection = match self.connection.load_full() {
            Some(connection) => connection,
            None => {
                match tokio::time::timeout(self.config.connect_timeout, self.connect()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error.to_string()),
                    Err(_) => {
                        return Err(format!(
                            "no connection within {:?}",
                            self.config.connect_timeout
                        ));
                    }
                }
                self.connection
                    .load_full()
                    .ok_or_else(|| "the new connection was lost at once".to_owned())?
            }
        };
        let mut key = self.config.prefix.replace(['{', '}'], "_").into_bytes();
        key.extend_from_slice(b":probe");
        let call = self.eval(&connection, &key, 1, u32::MAX);
        let error = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(_)) => {
                self.failed_probes.store(0, Ordering::Relaxed);
                self.close();
                return Ok(());
            }
            Ok(Err(error)) if replaces_connection(&error) => {
                self.drop_connection(&connection);
                return Err(error.to_string());
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", self.config.timeout),
        };
        // A connection that failed the last few probes may be dead without knowing it (a
        // peer gone without a reset), or stuck on a node in trouble: replace it.
        if self.failed_probes.fetch_add(1, Ordering::Relaxed) + 1 >= FAILED_PROBES {
            self.failed_probes.store(0, Ordering::Relaxed);
            self.drop_connection(&connection);
        }
        Err(error)
    }
}

/// Whether `error` means the connection must be replaced: it is gone (I/O), the `redis` crate
/// says so, or the node behind it cannot take the script's write (`READONLY`: a primary
/// demoted by a failover behind one address; `MASTERDOWN`), or the handshake went wrong.
fn replaces_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Parse
        )
}

/// Failed probes in a row on one connection before it is replaced by a new one.
const FAILED_PROBES: u32 = 3;

/// Marks the recovery task as not running when it ends or its runtime drops it, so the next
/// check starts another.
struct Recovering(Weak<Link>);

impl Drop for Recovering {
    fn drop(&mut self) {
        if let Some(link) = self.0.upgrade() {
            link.breaker.recovery_ended();
        }
    }
}

/// Probes every cooldown until Redis answers or the last handle of the link is dropped.
async fn recover(guard: Recovering) {
    let mut logged = false;
    loop {
        let Some(link) = guard.0.upgrade() else {
            return;
        };
        if !link.breaker.is_open() {
            return;
        }
        match link.probe().await {
            Ok(()) => return,
            Err(error) if !logged => {
                logged = true;
                tracing::warn!(redis = %link.config.shown, %error, "Redis does not answer; probing every {:?}", link.config.cooldown);
            }
            Err(error) => tracing::debug!(redis = %link.config.shown, %error, "Redis probe failed"),
        }
        let pause = link.config.cooldown;
        drop(link);
        tokio::time::sleep(pause).await;
    }
}
