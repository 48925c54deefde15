use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::error::{Redacted, StoreError};

/// Which database a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to one of the two supported databases. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How long a caller waits for a connection before the store counts as unavailable. Short,
/// so the webhook receiver can answer 503 well within Stripe's delivery timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled PostgreSQL connection idle at least this long is pinged before it is handed out.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(30);

/// sqlx pings every connection it hands out by default: a round trip before every statement,
/// which `make bench` profiled at a seventh of the ingest path's time. A connection in steady
/// use has just proved itself; one that sat idle may have been dropped (a firewall, a
/// PostgreSQL restart), so only that one is pinged, and a failed ping makes the pool open a
/// new connection instead of failing the caller's statement.
fn ping_if_idle(
    connection: &mut sqlx::PgConnection,
    metadata: sqlx::pool::PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if metadata.idle_for >= PING_WHEN_IDLE_FOR {
            sqlx::Connection::ping(connection).await?;
        }
        Ok(true)
    })
}

/// How often the WAL is copied back into the database file.
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Copies SQLite's write-ahead log back into the database file from a connection of its own,
/// every [`WAL_CHECKPOINT_INTERVAL`], until the pool closes.
///
/// SQLite's default is to checkpoint inside the commit that grows the WAL past 1,000 pages:
/// that commit then copies megabytes and syncs the database file while every webhook waits
/// behind it. `make bench` saw acknowledgements' p99 at 60 ms with ingest alone (5 ms once
/// checkpointed here, as the same insert alone) and 400-800 ms beside the worker (tens to
/// hundreds of milliseconds here, varying from run to run). A passive checkpoint takes no
/// lock that writers or readers wait for. If this process dies the WAL is only longer, and
/// the next connection recovers it.
async fn spawn_wal_checkpointer(
    pool: &SqlitePool,
    options: SqliteConnectOptions,
) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let mut connection = options.connect().await?;
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WAL_CHECKPOINT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                break;
            }
            if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut connection)
                .await
            {
                // Another process's checkpoint is running, or the file is gone: the next
                // tick tries again; the WAL only grows meanwhile.
                tracing::debug!(%error, "WAL checkpoint skipped");
            }
        }
        let _ = connection.close().await;
    });
    Ok(())
}

impl Database {
    /// The embedded default: a SQLite file in the working directory.
    pub const DEFAULT_URL: &'static str = "sqlite://subledger.db";

    /// Connects to `url`: `sqlite://path`, `sqlite::memory:`, or `postgres://…`, with no
    /// statement timeout.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, None).await
    }

    /// Connects to `url`. On PostgreSQL every statement is cancelled after
    /// `statement_timeout` (its `statement_timeout` setting): one hung statement must not hold
    /// the one task that writes the inbox, and with it every webhook, for ever. (SQLite has no
    /// such setting; its lock waits end after the busy timeout.)
    pub async fn connect_with(
        url: &str,
        statement_timeout: Option<Duration>,
    ) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // sqlx's parse errors can echo the URL, password included: never pass them on.
            let options = PgConnectOptions::from_str(url).map_err(|_| {
                StoreError::InvalidUrl(Redacted(
                    "expected postgres://user:password@host:port/database".to_owned(),
                ))
            })?;
            let options = match statement_timeout {
                Some(timeout) => options.options([(
                    "statement_timeout",
                    format!("{}ms", timeout.as_millis().max(1)),
                )]),
                None => options,
            };
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .before_acquire(ping_if_idle)
                .connect_with(options)
                .await?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(Redacted(e.to_string())))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a webhook is acknowledged only once its row is on disk for good.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // Checkpoints run beside the writer, not inside its commits (see
            // `spawn_wal_checkpointer`); an in-memory database has no WAL.
            let options = if in_memory {
                options
            } else {
                options.pragma("wal_autocheckpoint", "0")
            };
            // One connection. SQLite has one writer at a time, and a second connection that
            // finds the file locked waits in SQLite's busy handler, which sleeps up to 100 ms
            // between tries: with the worker committing batches beside ingest that made a
            // webhook's acknowledgement p99 several hundred milliseconds (`make bench`).
            // Queued in the pool instead, each waits only for the statement ahead of it.
            // Every read that matters for latency is served from memory, not from here.
            // (An in-memory database also lives and dies with its one connection.)
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(if in_memory { 1 } else { 0 })
                .idle_timeout(None::<Duration>)
                .max_lifetime(None::<Duration>)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // A file has no connection to lose; a ping would be a round trip to sqlx's
                // connection thread before every statement.
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await?;
            if !in_memory {
                spawn_wal_checkpointer(&pool, options).await?;
            }
            Ok(Self::Sqlite(pool))
        } else {
            Err(StoreError::InvalidUrl(Redacted(
                "expected a URL starting with sqlite: or postgres://".to_owned(),
            )))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the migrations in `migrations/<backend>` that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool) => sqlx::migrate!("../../migrations/sqlite").run(pool).await?,
            Self::Postgres(pool) => {
                // A migration may rightly take longer than any statement should (an index on
                // a large inbox): it runs on a connection of its own without the statement
                // timeout (a later `-c` option overrides an earlier one).
                let options = PgConnectOptions::clone(&pool.connect_options())
                    .options([("statement_timeout", "0")]);
                let migrations = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                let migrated = sqlx::migrate!("../../migrations/postgres")
                    .run(&migrations)
                    .await;
                migrations.close().await;
                migrated?
            }
        }
        Ok(())
    }

    /// The cqrs-es repository for SQLite, on the `events` table.
    pub fn sqlite_repository(pool: &SqlitePool) -> SqliteEventRepository {
        SqliteEventRepository::new(pool.clone()).with_tables("events", "snapshots")
    }

    /// The cqrs-es repository for PostgreSQL, on the `events` table.
    pub fn postgres_repository(pool: &PgPool) -> PostgresEventRepository {
        PostgresEventRepository::new(pool.clone()).with_tables("events", "snapshots")
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}
