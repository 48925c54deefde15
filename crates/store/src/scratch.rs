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
    /// The URL another engine or process can use to reach the same data, except for
    /// [`ScratchDatabase::sqlite`]'s: `sqlite::memory:` opens a new, empty database each time
    /// (use [`ScratchDatabase::sqlite_file`] where two engines must share one).
    pub url: String,
    schema: Option<(String, String)>,
    /// The SQLite file this database lives in, removed by `cleanup`.
    file: Option<std::path::PathBuf>,
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
            file: None,
        })
    }

    /// A fresh SQLite database in a file of its own in the temporary directory, which two
    /// engines can share.
    pub async fn sqlite_file() -> Result<Self, StoreError> {
        let file = std::env::temp_dir().join(format!(
            "subledger-scratch-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let mut scratch = Self::sqlite_at(&format!("sqlite://{}", file.display())).await?;
        scratch.file = Some(file);
        Ok(scratch)
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
            file: None,
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
            file: None,
        })
    }

    /// Every configured backend, SQLite (in memory) first.
    pub async fn all() -> Result<Vec<Self>, StoreError> {
        Self::beside_postgres(Self::sqlite().await?).await
    }

    /// Every configured backend, SQLite first, each reachable by several engines at once
    /// through `url`.
    pub async fn shared() -> Result<Vec<Self>, StoreError> {
        Self::beside_postgres(Self::sqlite_file().await?).await
    }

    /// `sqlite`, and PostgreSQL if it is configured.
    async fn beside_postgres(sqlite: Self) -> Result<Vec<Self>, StoreError> {
        let mut databases = vec![sqlite];
        match Self::postgres().await? {
            Some(postgres) => databases.push(postgres),
            None => eprintln!("PostgreSQL skipped: {POSTGRES_URL_VAR} is not set"),
        }
        Ok(databases)
    }

    /// Drops the test's PostgreSQL schema, or removes its SQLite file.
    pub async fn cleanup(self) -> Result<(), StoreError> {
        self.database.close().await;
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = file.clone().into_os_string();
                path.push(suffix);
                // Already gone is as good as removed.
                let _ = std::fs::remove_file(path);
            }
        }
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
