//! Fresh, migrated scratch databases, for tests and scenario runs, on every backend.
//!
//! SQLite in memory; on PostgreSQL a schema of its own on a given server, so runs never share
//! state and can go in parallel. Tests find their server in `SUBLEDGER_TEST_POSTGRES_URL`.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::database::Database;
use crate::error::StoreError;

/// The environment variable naming the PostgreSQL server tests may use.
pub const POSTGRES_URL_VAR: &str = "SUBLEDGER_TEST_POSTGRES_URL";

/// A migrated database that belongs to one test or scenario run.
#[derive(Debug)]
pub struct ScratchDatabase {
    pub name: &'static str,
    pub database: Database,
    /// The URL another process can use to reach the same data.
    pub url: String,
    schema: Option<(String, String)>,
}

impl ScratchDatabase {
    /// The PostgreSQL schema this database lives in; `None` on SQLite.
    pub fn schema_name(&self) -> Option<&str> {
        self.schema.as_ref().map(|(_, schema)| schema.as_str())
    }

    /// A fresh in-memory SQLite database.
    pub async fn sqlite() -> Result<Self, StoreError> {
        let database = Database::connect("sqlite::memory:").await?;
        database.migrate().await?;
        Ok(Self {
            name: "sqlite",
            database,
            url: "sqlite::memory:".to_owned(),
            schema: None,
        })
    }

    /// A SQLite database at `url` (a file the caller chose), migrated.
    pub async fn sqlite_at(url: &str) -> Result<Self, StoreError> {
        let database = Database::connect(url).await?;
        database.migrate().await?;
        Ok(Self {
            name: "sqlite",
            database,
            url: url.to_owned(),
            schema: None,
        })
    }

    /// A fresh schema on the PostgreSQL server of `SUBLEDGER_TEST_POSTGRES_URL`, or `None`
    /// when it is not set.
    pub async fn postgres() -> Result<Option<Self>, StoreError> {
        match std::env::var(POSTGRES_URL_VAR) {
            Ok(base_url) => Self::postgres_at(&base_url).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// A fresh schema on the PostgreSQL server at `base_url`.
    pub async fn postgres_at(base_url: &str) -> Result<Self, StoreError> {
        let base_url = base_url.to_owned();
        let schema = format!("subledger_scratch_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&base_url).await?;
        if let Database::Postgres(pool) = &admin {
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(pool)
                .await?;
        }
        admin.close().await;
        let options = PgConnectOptions::from_str(&base_url)
            .map_err(|_| {
                StoreError::InvalidUrl(crate::error::Redacted(
                    "expected postgres://user:password@host:port/database".to_owned(),
                ))
            })?
            .options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let database = Database::Postgres(pool);
        database.migrate().await?;
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options[search_path]={schema}");
        Ok(Self {
            name: "postgres",
            database,
            url,
            schema: Some((base_url, schema)),
        })
    }

    /// Every configured backend, SQLite first.
    pub async fn all() -> Result<Vec<Self>, StoreError> {
        let mut databases = vec![Self::sqlite().await?];
        match Self::postgres().await? {
            Some(postgres) => databases.push(postgres),
            None => eprintln!("PostgreSQL skipped: {POSTGRES_URL_VAR} is not set"),
        }
        Ok(databases)
    }

    /// Drops the test's PostgreSQL schema.
    pub async fn cleanup(self) -> Result<(), StoreError> {
        self.database.close().await;
        if let Some((base_url, schema)) = self.schema {
            let admin = Database::connect(&base_url).await?;
            if let Database::Postgres(pool) = &admin {
                sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(pool)
                    .await?;
            }
            admin.close().await;
        }
        Ok(())
    }
}
