use std::fmt;

/// A storage failure. `Unavailable` means the database could not be reached at all (the
/// webhook receiver answers 503 so Stripe retries); the rest are failures of a reachable store.
///
/// The driver's message is part of each variant's own message (so a log line with just the
/// error is complete), hence no `#[source]`: a chain would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(Redacted),
    #[error("the database did not answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            other => Self::Database(other),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migration(error)
    }
}

/// A message about a database URL with the URL's credentials left out.
#[derive(Debug)]
pub struct Redacted(pub String);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
