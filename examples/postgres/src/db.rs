//! The database: a pool with deadlines, queries with deadlines, and the answers a client gets
//! when the database fails (never a hang).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// Histogram: how long each query took, seconds, by `query` (one of [`QUERIES`]).
pub(crate) const QUERY_DURATION: &str = "postgres_query_duration_seconds";
/// Counter: queries that failed, by `query` and `error` (`timeout`, `unavailable`, `query`).
pub(crate) const QUERY_ERRORS: &str = "postgres_query_errors_total";
/// The closed set of the `query` label.
const QUERIES: [&str; 5] = ["ping", "schema", "get_item", "create_item", "slow"];

/// Connections the pool keeps at most: enough for a small service; PostgreSQL's own default
/// `max_connections` is 100 for every client together.
const POOL_SIZE: usize = 16;
/// How long a request waits for a free connection, and for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(1);

/// Registers the units and help of the example's own metrics, and their series at 0.
pub(crate) fn describe() {
    metrics::describe_histogram!(
        QUERY_DURATION,
        metrics::Unit::Seconds,
        "How long each PostgreSQL query took, by query."
    );
    metrics::describe_counter!(
        QUERY_ERRORS,
        metrics::Unit::Count,
        "PostgreSQL queries that failed, by query and error (timeout, unavailable, query)."
    );
    for query in QUERIES {
        for error in ["timeout", "unavailable", "query"] {
            metrics::counter!(QUERY_ERRORS, "query" => query, "error" => error).increment(0);
        }
    }
}

/// The pool and the query deadline; cheap to clone.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    timeout: Duration,
    /// Whether the schema exists (made by the first successful check).
    schema: Arc<AtomicBool>,
}

/// Why a query gave no result.
#[derive(Debug)]
pub(crate) enum DbError {
    /// No answer within the query deadline: 504.
    Timeout,
    /// No connection (the database is down or the pool exhausted): 503 with `Retry-After`.
    Unavailable(String),
    /// The database refused the query: 500.
    Query(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("the database did not answer within the query timeout"),
            Self::Unavailable(why) => write!(f, "the database is unavailable: {why}"),
            Self::Query(why) => write!(f, "the query failed: {why}"),
        }
    }
}

impl DbError {
    fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Query(_) => "query",
        }
    }
}

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Query(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl Db {
    /// A pool for `url` (a libpq connection string or a `postgres://` URL) whose queries
    /// get `timeout` each. Connects lazily: the database need not be up yet.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|error| format!("--database-url {url:?}: {error}"))?;
        // The server stops a query at the same deadline the client gives up at.
        config.options(format!("-c statement_timeout={}", timeout.as_millis()));
        config.connect_timeout(POOL_WAIT);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection the database closed (a restart) is replaced, not handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| format!("cannot build the connection pool: {error}"))?;
        Ok(Self {
            pool,
            timeout,
            schema: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Closes the pool: its connections are closed and no new ones made.
    pub(crate) fn close(&self) {
        self.pool.close();
    }

    /// Runs `run` on a pooled connection under the query deadline, timed and counted as
    /// `query`; returns its result and how long the database took.
    async fn run<T, F>(&self, query: &'static str, run: F) -> Result<(T, Duration), DbError>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let client = self.pool.get().await.map_err(|error| match error {
                PoolError::Timeout(_) => {
                    DbError::Unavailable("no connection within the pool's deadline".to_owned())
                }
                other => DbError::Unavailable(other.to_string()),
            })?;
            run(&client)
                .await
                .map_err(|error| match error.as_db_error() {
                    // statement_timeout: the server gave up at the deadline.
                    Some(db) if db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED => {
                        DbError::Timeout
                    }
                    Some(db) => DbError::Query(db.message().to_owned()),
                    None if error.is_closed() => DbError::Unavailable(error.to_string()),
                    None => DbError::Unavailable(error.to_string()),
                })
        })
        .await
        .unwrap_or(Err(DbError::Timeout));
        let took = started.elapsed();
        metrics::histogram!(QUERY_DURATION, "query" => query).record(took.as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!(QUERY_ERRORS, "query" => query, "error" => error.label())
                .increment(1);
            tracing::debug!(query, %error, "query failed");
        }
        result.map(|value| (value, took))
    }

    /// The readiness check: makes the schema once, then `SELECT 1`.
    pub(crate) async fn ping(&self) -> Result<(), String> {
        if !self.schema.load(Ordering::Acquire) {
            self.run("schema", async |client| {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)",
                    )
                    .await
            })
            .await
            .map_err(|error| error.to_string())?;
            self.schema.store(true, Ordering::Release);
        }
        self.run("ping", async |client| {
            client.simple_query("SELECT 1").await.map(drop)
        })
        .await
        .map(drop)
        .map_err(|error| error.to_string())
    }
}

/// `Server-Timing: db;dur=MS`: the database's share of this request's latency, for the
/// browser's and the load balancer's timing panes.
fn with_db_timing(mut response: Response, took: Duration) -> Response {
    let value = format!("db;dur={:.1}", took.as_secs_f64() * 1000.0);
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

#[derive(serde::Serialize)]
pub(crate) struct Item {
    id: i64,
    name: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct NewItem {
    name: String,
}

/// `GET /items/{id}`: 200 with the item, 404 when there is none.
pub(crate) async fn get_item(
    State(db): State<Db>,
    Path(id): Path<i64>,
) -> Result<Response, DbError> {
    let (row, took) = db
        .run("get_item", async |client| {
            client
                .query_opt("SELECT id, name FROM items WHERE id = $1", &[&id])
                .await
        })
        .await?;
    let response = match row {
        Some(row) => Json(Item {
            id: row.get(0),
            name: row.get(1),
        })
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such item" })),
        )
            .into_response(),
    };
    Ok(with_db_timing(response, took))
}

/// `POST /items` with `{"name": ...}`: 201 with the new item.
pub(crate) async fn create_item(
    State(db): State<Db>,
    Json(new): Json<NewItem>,
) -> Result<Response, DbError> {
    let (row, took) = db
        .run("create_item", async |client| {
            client
                .query_one(
                    "INSERT INTO items (name) VALUES ($1) RETURNING id, name",
                    &[&new.name],
                )
                .await
        })
        .await?;
    let item = Item {
        id: row.get(0),
        name: row.get(1),
    };
    Ok(with_db_timing(
        (StatusCode::CREATED, Json(item)).into_response(),
        took,
    ))
}

#[derive(serde::Deserialize)]
pub(crate) struct SlowQuery {
    ms: Option<u64>,
}

/// `GET /slow?ms=N`: a query that takes N ms in the database (`pg_sleep`), default 100:
/// for the query deadline and the drain.
pub(crate) async fn slow(
    State(db): State<Db>,
    Query(query): Query<SlowQuery>,
) -> Result<Response, DbError> {
    let seconds = query.ms.unwrap_or(100).min(60_000) as f64 / 1000.0;
    let ((), took) = db
        .run("slow", async |client| {
            client
                .execute("SELECT pg_sleep($1)", &[&seconds])
                .await
                .map(drop)
        })
        .await?;
    Ok(with_db_timing("ok\n".into_response(), took))
}
